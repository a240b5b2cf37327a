//! Compiles the .proto files with protox (pure Rust), so no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["ds/sync/v1/sync.proto", "ds/runner/v1/runner.proto"];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    Ok(())
}
