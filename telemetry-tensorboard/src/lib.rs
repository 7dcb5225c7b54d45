//! # telemetry-tensorboard
//!
//! Brings TensorBoard logs into gym-telemetry. Training code written against TensorBoard
//! (`tensorboardX`, `torch.utils.tensorboard`, `tf.summary`, CleanRL's `SummaryWriter` calls)
//! writes its learning curves to `events.out.tfevents.*` files, not to our shim. This crate
//! reads those files and stores their scalars in a run through the daemon's ordinary `Ingest`
//! API, so the curves sit beside the run's steps and episodes (viewer, `ReadScalars`, `dump
//! --scalars`) without touching the training code. It is the successor of the predecessor's
//! "sidecar tailer": it can follow the files while the run writes them.
//!
//! - [`tfevents`]: the file format (TFRecord frames, `Event` protos, the two scalar forms),
//!   pure and bounded, with typed errors; the part to fuzz.
//! - [`import`]: files → scalars → daemon: deterministic producer identities per file, resume
//!   from the daemon's watermark, bounded batches, and the follow loop.
//!
//! `gym-telemetry-daemon import-tensorboard` is the command-line shell over [`import`].

pub mod import;
pub mod tfevents;

pub use import::{import_once, ImportConfig, ImportError, ImportReport, Importer};
