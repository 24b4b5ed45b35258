//! Generates the contract's Rust types from `proto/` without a system
//! `protoc`: protox compiles the files in pure Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["compute_driver.proto", "options.proto"], ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(files)?;
    Ok(())
}
