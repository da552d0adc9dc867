//! The `sft` binary: a tiny run that trains on assistant tokens and grades answers.
use anyhow::Result;
use common::testing::{tiny_checkpoint, tiny_world};
use serde_json::Value;
use std::process::Command;

#[test]
fn help_runs() -> Result<()> {
    let o = Command::new(env!("CARGO_BIN_EXE_sft"))
        .arg("--help")
        .env_clear()
        .output()?;
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("assistant"));
    Ok(())
}

#[test]
fn tiny_sft_run_reports_task_metrics_before_and_after() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    tiny_checkpoint(d, &d.join("runs/x/midtrain"), "midtrain")?;
    let out = d.join("runs/x/sft");
    let o = Command::new(env!("CARGO_BIN_EXE_sft"))
        .env("L2E_PROGRESS", "quiet")
        .arg("--config")
        .arg(d.join("configs/sft.toml"))
        .arg("--init")
        .arg(d.join("runs/x/midtrain"))
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(out.join("meta.json"))?)?;
    for key in ["tasks", "tasks_start"] {
        let t = &meta["metrics"][key];
        for kind in ["arithmetic", "facts", "program", "unanswerable"] {
            assert_eq!(t["per_kind"][kind]["n"], 3, "{key}/{kind}");
        }
        assert!(t["per_kind"]["unanswerable"]["hallucination_rate"].is_number());
        assert!(t["answerable"]["format_rate"].is_number());
    }
    assert!(meta["metrics"]["heldout"]["conversations"]["loss"].is_number());
    Ok(())
}
