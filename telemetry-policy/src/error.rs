//! The errors of inventory operations, one enum so callers map them to statuses in one place.

use crate::equip::Refusal;

/// Why an inventory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// No policy has this id.
    #[error("no policy {0:?} in the inventory")]
    NotFound(String),
    /// The id is not a relative path inside the inventory.
    #[error("bad policy id {id:?}: {reason}")]
    BadId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller's manifest or file is not acceptable.
    #[error("invalid registration: {0}")]
    Invalid(String),
    /// A different file already has this id.
    #[error("a different policy already has the id {0:?}")]
    Conflict(String),
    /// The file is larger than [`crate::Limits::max_payload_bytes`].
    #[error("{path} is {size} bytes, the limit is {max}")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The policy does not fit (equip) or no longer matches its manifest.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Reading or writing the inventory failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl PolicyError {
    /// An I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PolicyError {
        let context = context.into();
        move |source| PolicyError::Io { context, source }
    }
}
