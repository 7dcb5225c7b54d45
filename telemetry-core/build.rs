//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so building needs no system
//! `protoc`. The file descriptor set is also written out for gRPC reflection.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = [
        root.join("gym_telemetry/v1/telemetry.proto"),
        root.join("gym_telemetry/v1/frames.proto"),
        root.join("gym_telemetry/v1/policy.proto"),
        root.join("gymgui/trainer/trainer.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
