//! The `rl` binary: a tiny GRPO run end to end, with every per-step figure logged.
use anyhow::Result;
use common::testing::{tiny_checkpoint, tiny_world};
use serde_json::Value;
use std::process::Command;

#[test]
fn help_and_bad_config() -> Result<()> {
    let o = Command::new(env!("CARGO_BIN_EXE_rl"))
        .arg("--help")
        .env_clear()
        .output()?;
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--init"));
    let dir = tempfile::tempdir()?;
    tiny_world(dir.path())?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(dir.path().join("configs/rl.toml"))?.replace("group_size = 4", "group_size = 1"),
    )?;
    let o = Command::new(env!("CARGO_BIN_EXE_rl"))
        .arg("--config")
        .arg(&bad)
        .args(["--init", "x"])
        .output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("rl.group_size >= 2"), "{e}");
    Ok(())
}

#[test]
fn tiny_grpo_run_end_to_end() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    tiny_checkpoint(d, &d.join("runs/x/sft"), "sft")?;
    let out = d.join("runs/x/rl");
    let o = Command::new(env!("CARGO_BIN_EXE_rl"))
        .env("L2E_PROGRESS", "quiet")
        .arg("--config")
        .arg(d.join("configs/rl.toml"))
        .arg("--init")
        .arg(d.join("runs/x/sft"))
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(out.join("meta.json"))?)?;
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["step"], 3);
    assert!(meta["metrics"]["tasks"]["answerable"]["accuracy"].is_number());
    assert!(meta["metrics"]["tasks_start"]["per_kind"]["unanswerable"]["hallucination_rate"].is_number());
    let log = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    let steps: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("reward_mean").is_some())
        .collect();
    assert_eq!(steps.len(), 3);
    for key in [
        "reward_mean",
        "reward_std",
        "accuracy",
        "abstention_rate",
        "completion_len",
        "kl",
        "clip_frac",
        "zero_adv_groups",
        "sample_tok_per_s",
        "train_tok_per_s",
        "truncation_rate",
        "verifier_errors",
    ] {
        assert!(steps[2][key].is_number(), "{key} not logged");
    }
    Ok(())
}
