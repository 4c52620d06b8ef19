//! Build steps of the engine:
//!
//! 1. Compiles `proto/sensor/v1/sensor.proto` (at the repository root) into
//!    Rust with protox, a protobuf compiler written in Rust, so building
//!    needs no system `protoc`. The encoded descriptor set is kept in
//!    `OUT_DIR` for gRPC server reflection.
//! 2. Embeds the built dashboard (`viz/dist`, or `$ENGINE_EMBED_WEB_DIR`) in
//!    the binary: a table of `include_bytes!` per file, so a copied `engine`
//!    serves it from any working directory. Without a build (no Node.js on
//!    this machine) the table is empty and the build still succeeds; `/`
//!    then says how to build the dashboard.

use std::path::{Path, PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    compile_proto(&manifest_dir, &out_dir)?;
    embed_dashboard(&manifest_dir, &out_dir)?;
    Ok(())
}

fn compile_proto(manifest_dir: &Path, out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = manifest_dir.join("../../proto");
    let proto_file = proto_root.join("sensor/v1/sensor.proto");
    println!("cargo:rerun-if-changed={}", proto_file.display());

    let descriptors = protox::compile([&proto_file], [&proto_root])?;
    std::fs::write(
        out_dir.join("sensor_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

/// Writes `web_assets.rs`: `WEB_ASSETS`, `(url path, bytes)` sorted by path.
fn embed_dashboard(manifest_dir: &Path, out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=ENGINE_EMBED_WEB_DIR");
    let viz = manifest_dir.join("../../viz");
    let dist = std::env::var_os("ENGINE_EMBED_WEB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| viz.join("dist"));
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        // A directory is watched recursively: any rebuilt file re-embeds.
        println!("cargo:rerun-if-changed={}", dist.display());
        collect(&dist, &dist, &mut files)?;
    } else if viz.is_dir() {
        // Watching a missing path would rerun this on every build; the
        // parent changes when `dist` appears.
        println!("cargo:rerun-if-changed={}", viz.display());
        println!(
            "cargo:warning=no dashboard build in {}: the binary serves none \
             (build it with `sh viz/scripts/ensure-built.sh` first)",
            dist.display()
        );
    }
    files.sort();
    let mut code = String::from(
        "/// The built dashboard's files: URL path and content, sorted by path.\n\
         pub static WEB_ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for (url, path) in &files {
        code.push_str(&format!(
            "    ({url:?}, include_bytes!({:?})),\n",
            path.canonicalize()?
        ));
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("web_assets.rs"), code)?;
    Ok(())
}

fn collect(
    root: &Path,
    dir: &Path,
    files: &mut Vec<(String, PathBuf)>,
) -> Result<(), Box<dyn std::error::Error>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, files)?;
        } else {
            let relative = path.strip_prefix(root)?;
            let url: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            files.push((format!("/{}", url.join("/")), path));
        }
    }
    Ok(())
}
