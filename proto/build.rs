//! Generates the gRPC code from `ferry/**/*.proto` with a vendored `protoc`, so builds need no
//! system protobuf compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "ferry/common/v1/common.proto",
        "ferry/importer/v1/importer.proto",
        "ferry/scheduler/v1/scheduler.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("ferry_descriptor.bin"))
        .compile_with_config(config, &protos, &["."])?;
    Ok(())
}
