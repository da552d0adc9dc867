//! Build script shared by every binary crate of the workspace.
//!
//! It embeds an rpath to the libtorch the binaries are linked against, so that
//! `target/release/<stage>` runs without `LD_LIBRARY_PATH`. libtorch is found
//! the way `torch-sys` finds it: `$LIBTORCH/lib` when set, otherwise the
//! `torch/lib` folder of the active Python (`./.venv` after `just setup`).
use std::path::PathBuf;
use std::process::Command;

fn torch_lib_dir() -> Option<PathBuf> {
    if let Some(lib) = std::env::var_os("LIBTORCH_LIB") {
        return Some(PathBuf::from(lib).join("lib"));
    }
    if let Some(root) = std::env::var_os("LIBTORCH") {
        return Some(PathBuf::from(root).join("lib"));
    }
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() {
        "python"
    } else {
        "python3"
    };
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-changed=../tools/rpath.rs");
    match torch_lib_dir() {
        Some(dir) => {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
            // With CUDA builds of libtorch, keep libtorch_cuda as a dependency even though
            // no symbol of it is used directly: otherwise `--as-needed` drops it and CUDA
            // is reported unavailable at run time.
            if dir.join("libtorch_cuda.so").exists() {
                println!("cargo:rustc-link-search=native={}", dir.display());
                println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
            }
        }
        None => println!(
            "cargo:warning=libtorch not found (no LIBTORCH and no `torch` in the active Python); \
             run `just setup` or `source .venv/bin/activate` before building"
        ),
    }
}
