//! Compiles every `.proto` file under `proto/` into Rust with tonic. protoc comes from
//! the `protoc-bin-vendored` crate so a fresh machine needs no system package.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let dir = PathBuf::from("proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed=proto");
    // The parameter server's byte fields as `bytes::Bytes`: decoding slices the
    // received buffer instead of copying it, and a retried request clones a refcount.
    tonic_prost_build::configure()
        .bytes(".odl.ps")
        .compile_protos(&files, &[dir])?;
    Ok(())
}
