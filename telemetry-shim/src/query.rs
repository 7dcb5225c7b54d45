//! The worker's daemon link for reads: a `Query` channel with the shim's endpoint, TLS and
//! credential, so a reader in a worker's process (`gym_telemetry.load` without a store file)
//! authenticates exactly as the worker's records do, with no second lookup order.

use crate::{sender::Settings, ShimConfig, ShimError};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Endpoint,
};

/// Where to read from and the `authorization` value to send.
#[derive(Debug, Clone)]
pub struct QueryLink {
    /// The daemon endpoint, with the configuration's connect timeout and TLS settings: the
    /// first of the configured list (`GYM_TELEMETRY_ENDPOINT=a,b`; every daemon of one store
    /// serves the same reads).
    pub endpoint: Endpoint,
    /// `Bearer <token>`: the configured token, else the owner's token found through
    /// `telemetry_core::credentials` (as the sender does at each connection); `None` when
    /// neither exists.
    pub authorization: Option<MetadataValue<Ascii>>,
}

/// The read link of configuration `c` (its endpoint, TLS and token; the rest is unused).
/// A bad endpoint, TLS file or token is a [`ShimError::Config`].
pub fn query_link(c: &ShimConfig) -> Result<QueryLink, ShimError> {
    let s = Settings::from_config(c, String::new())?;
    let authorization = match s.auth {
        Some(a) => Some(a),
        None => telemetry_core::credentials::discover_from_env()
            .ok()
            .flatten()
            .and_then(|d| MetadataValue::try_from(format!("Bearer {}", d.token)).ok()),
    };
    let endpoint = s.endpoints.into_iter().next().ok_or_else(|| {
        ShimError::Config(crate::config::ConfigError::Invalid {
            field: "endpoint",
            reason: "no endpoint".into(),
        })
    })?;
    Ok(QueryLink {
        endpoint,
        authorization,
    })
}
