//! The `midtrain` binary: continues a checkpoint and records its parent.
use anyhow::Result;
use serde_json::Value;
use std::process::Command;
use testkit::{tiny_checkpoint, tiny_world};

fn bin() -> Command {
    testkit::bin(env!("CARGO_BIN_EXE_midtrain"))
}

#[test]
fn help_and_missing_init() -> Result<()> {
    let o = bin().arg("--help").env_clear().output()?;
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--init"));
    let dir = tempfile::tempdir()?;
    tiny_world(dir.path())?;
    let o = bin()
        .arg("--config")
        .arg(dir.path().join("configs/midtrain.toml"))
        .arg("--out")
        .arg(dir.path().join("m"))
        .output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--init"), "{e}");
    let o = bin()
        .arg("--config")
        .arg(dir.path().join("configs/midtrain.toml"))
        .args(["--init", "/no/such/checkpoint", "--out"])
        .arg(dir.path().join("m"))
        .output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("/no/such/checkpoint") && e.contains("does not exist"),
        "{e}"
    );
    Ok(())
}

#[test]
fn continues_a_checkpoint_and_links_its_parent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    tiny_checkpoint(d, &d.join("runs/x/pretrain"), "pretrain")?;
    let out = d.join("runs/x/midtrain");
    let o = bin()
        .arg("--config")
        .arg(d.join("configs/midtrain.toml"))
        .arg("--init")
        .arg(d.join("runs/x/pretrain"))
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(out.join("meta.json"))?)?;
    let parent: Value = serde_json::from_str(&std::fs::read_to_string(d.join("runs/x/pretrain/meta.json"))?)?;
    assert_eq!(meta["parent"]["stage"], "pretrain");
    assert_eq!(meta["parent"]["weights_sha256"], parent["weights_sha256"]);
    assert!(
        meta["metrics"]["heldout"]["encyclopedia"]["loss"]
            .as_f64()
            .unwrap_or(99.0)
            < meta["metrics"]["heldout_start"]["encyclopedia"]["loss"]
                .as_f64()
                .unwrap_or(0.0)
    );
    Ok(())
}
