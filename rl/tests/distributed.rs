//! Data-parallel RL under `torchrun` (2 ranks on CPU, Gloo over loopback): each rank samples
//! and grades whole groups, every rank sees the whole step (groups, rewards, advantages), the
//! summed gradients keep the ranks' weights equal, and a 2-rank run killed after a save resumes
//! to the same end as an uninterrupted one.
use anyhow::Result;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::{stderr, tiny_checkpoint, tiny_world};

const RL: &str = env!("CARGO_BIN_EXE_rl");

fn two_ranks(cfg: &Path, init: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = testkit::torchrun(2, RL);
    c.arg("--config")
        .arg(cfg)
        .arg("--init")
        .arg(init)
        .arg("--out")
        .arg(out)
        .args(["--steps", "6", "--save-every", "2"])
        .args(extra);
    c
}

fn steps_logged(dir: &Path) -> Result<Vec<Value>> {
    Ok(std::fs::read_to_string(dir.join("metrics.jsonl"))?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("reward_mean").is_some())
        .collect())
}

#[test]
fn two_ranks_share_whole_groups_and_resume_after_a_kill() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let init = d.join("sft");
    tiny_checkpoint(d, &init, "sft")?;
    let cfg = d.join("configs/rl.toml");

    let a = d.join("a/rl");
    let o = two_ranks(&cfg, &init, &a, &[]).output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(a.join("meta.json"))?)?;
    assert_eq!(
        (meta["complete"].as_bool(), meta["step"].as_u64()),
        (Some(true), Some(6))
    );
    // Rank 0 graded the held-out tasks at the start and the end.
    assert!(
        meta["metrics"]["tasks"]["per_kind"]["arithmetic"]["n"].as_u64() > Some(0),
        "{meta}"
    );
    // Every step holds both ranks' groups: 2 prompts x 4 samples, whole.
    let lines = steps_logged(&a)?;
    assert_eq!(lines.len(), 6);
    for l in &lines {
        assert_eq!(l["groups_sampled"], 2, "{l}");
    }

    // Killed (launcher and ranks) once a checkpoint exists, then resumed: the same end.
    let b = d.join("b/rl");
    let mut c = two_ranks(&cfg, &init, &b, &[]);
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let t0 = Instant::now();
    while !b.join("meta.json").exists() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    testkit::kill_tree(child.id());
    child.wait()?;
    let step = common::checkpoint::load(&b)?.meta.step;
    assert!((2..6).contains(&step), "killed at step {step}");
    let o = two_ranks(&cfg, &init, &b, &["--resume"]).output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("resuming {} from step {step}", b.display())),
        "{}",
        stderr(&o)
    );
    let (la, lb) = (steps_logged(&a)?, steps_logged(&b)?);
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["reward_mean"], y["reward_mean"], "step {}", x["step"]);
    }
    testkit::assert_same_weights(
        &testkit::sorted_weights(&a)?,
        &testkit::sorted_weights(&b)?,
        1e-4,
        "resumed against uninterrupted",
    );
    Ok(())
}
