//! Generated protobuf types and gRPC stubs.
//!
//! Generated code is not held to our lint rules (missing docs, etc.), so each package is
//! included inside a module that relaxes them.

/// gym-telemetry's own API (`proto/gym_telemetry/v1/telemetry.proto`, `policy.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("gym_telemetry.v1");
}

/// The predecessor's API (`proto/gymgui/trainer/trainer.proto`), served for compatibility.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod legacy {
    tonic::include_proto!("gymgui.trainer");
}

/// The encoded `FileDescriptorSet` of every proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

pub use v1::*;
