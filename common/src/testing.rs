//! Helpers for the test suites of the workspace (not part of the stable API).
use std::path::PathBuf;

/// The project's virtual environment Python (`./.venv/bin/python`), else `python3`.
pub fn venv_python() -> PathBuf {
    let root = workspace_root();
    let venv = root.join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// The root of the workspace (the folder holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}
