//! The `pretrain` binary as a user runs it: help, bad input, a tiny run end to end,
//! a kill at any moment, and resume equal to an uninterrupted run.
use anyhow::Result;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::{stderr, tiny_world};

fn bin() -> Command {
    testkit::bin(env!("CARGO_BIN_EXE_pretrain"))
}

fn losses(path: &Path) -> Result<Vec<(u64, f64)>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v.get("loss")?.as_f64()?)))
        .collect())
}

#[test]
fn help_runs_without_any_environment() -> Result<()> {
    let o = bin().arg("--help").env_clear().output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--config", "--init", "--out", "--device", "--seed", "--steps", "--resume",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    Ok(())
}

#[test]
fn bad_arguments_and_configs_exit_with_one_line_reasons() -> Result<()> {
    let o = bin().args(["--steps", "many"]).output()?;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("invalid value 'many' for '--steps"),
        "{}",
        stderr(&o)
    );
    let o = bin().args(["--device", "tpu"]).output()?;
    assert!(!o.status.success() && stderr(&o).contains("tpu"));
    let dir = tempfile::tempdir()?;
    let o = bin().args(["--config", "/no/such.toml"]).output()?;
    assert!(
        !o.status.success() && stderr(&o).contains("/no/such.toml"),
        "{}",
        stderr(&o)
    );
    tiny_world(dir.path())?;
    let cfg = dir.path().join("configs/pretrain.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&cfg)?.replace("seq_len = 32", "seq_len = 32\nsequence_length = 9"),
    )?;
    let o = bin().arg("--config").arg(&bad).output()?;
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("unknown field `sequence_length`") && e.contains("bad.toml:"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    let o = bin().arg("--config").arg(&cfg).args(["--lr", "7"]).output()?;
    assert!(
        !o.status.success() && stderr(&o).contains("train.lr must be in (0, 1]"),
        "{}",
        stderr(&o)
    );
    // --dry-run prints the resolved config with overrides applied.
    let o = bin()
        .arg("--config")
        .arg(&cfg)
        .args(["--steps", "11", "--dry-run"])
        .output()?;
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("steps = 11"));
    Ok(())
}

#[test]
fn tiny_run_end_to_end_writes_a_complete_checkpoint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    tiny_world(dir.path())?;
    let out = dir.path().join("runs/x/pretrain");
    let o = bin()
        .arg("--config")
        .arg(dir.path().join("configs/pretrain.toml"))
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(out.join("meta.json"))?)?;
    assert_eq!(meta["stage"], "pretrain");
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["step"], 6);
    for src in ["encyclopedia", "chatter"] {
        let end = meta["metrics"]["heldout"][src]["loss"].as_f64().unwrap_or(f64::NAN);
        let start = meta["metrics"]["heldout_start"][src]["loss"]
            .as_f64()
            .unwrap_or(f64::NAN);
        assert!(end < start, "{src}: held-out loss {start} -> {end} did not fall");
        assert!(meta["metrics"]["heldout"][src]["bpb"].as_f64().unwrap_or(0.0) > 0.0);
    }
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "metrics.jsonl",
        "state/optimizer.safetensors",
        "state/trainer.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(dir.path().join("runs/x/pretrain.metrics.jsonl").exists());
    // A second run into the same directory refuses without --resume, and is a no-op with it.
    let again = bin()
        .arg("--config")
        .arg(dir.path().join("configs/pretrain.toml"))
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(!again.status.success() && stderr(&again).contains("--resume"));
    let resumed = bin()
        .arg("--config")
        .arg(dir.path().join("configs/pretrain.toml"))
        .arg("--out")
        .arg(&out)
        .arg("--resume")
        .output()?;
    assert!(resumed.status.success() && stderr(&resumed).contains("nothing to do"));
    Ok(())
}

#[test]
fn killed_run_leaves_a_loadable_checkpoint_and_resume_equals_uninterrupted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let cfg = d.join("configs/pretrain.toml");
    let steps = ["--steps", "60"];
    let save = |c: &mut Command| {
        c.args(["--save-every", "5"]);
    };
    // Uninterrupted.
    let a = d.join("a/pretrain");
    let mut c = bin();
    save(&mut c);
    let o = c.arg("--config").arg(&cfg).args(steps).arg("--out").arg(&a).output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    // Killed with SIGKILL as soon as a first checkpoint exists, then resumed.
    let b = d.join("b/pretrain");
    let mut c = bin();
    save(&mut c);
    let mut child = c.arg("--config").arg(&cfg).args(steps).arg("--out").arg(&b).spawn()?;
    let t0 = Instant::now();
    while !b.join("meta.json").exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill()?;
    child.wait()?;
    // Whatever moment the kill hit, the last complete save loads.
    let loaded = common::checkpoint::load(&b)?;
    assert!(loaded.meta.step >= 5, "a checkpoint was saved before the kill");
    let (wall_before_kill, train_before_kill) = (loaded.meta.wall_secs, loaded.meta.train_secs);
    assert!(wall_before_kill >= train_before_kill && wall_before_kill > 0.0);
    // As if the killed run had been going for 1000 s: the resumed one counts on from there.
    let meta_path = b.join("meta.json");
    let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path)?)?;
    meta["wall_secs"] = (wall_before_kill + 1000.0).into();
    std::fs::write(&meta_path, serde_json::to_string(&meta)?)?;
    let wall_before_kill = wall_before_kill + 1000.0;
    let mut c = bin();
    save(&mut c);
    let t_resume = Instant::now();
    let o = c
        .arg("--config")
        .arg(&cfg)
        .args(steps)
        .arg("--out")
        .arg(&b)
        .arg("--resume")
        .output()?;
    let resumed_for = t_resume.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", stderr(&o));
    // The resumed run's wall time adds to the killed run's saved one: at least the resumed
    // part's training on top of it, at most the resumed process's whole life.
    let m = common::checkpoint::load(&b)?.meta;
    assert!(
        m.wall_secs >= wall_before_kill + (m.train_secs - train_before_kill)
            && m.wall_secs <= wall_before_kill + resumed_for,
        "wall {} s after the resume, {wall_before_kill} s saved before the kill, training {train_before_kill} -> {} s",
        m.wall_secs,
        m.train_secs
    );
    let la = losses(&a.join("metrics.jsonl"))?;
    let lb = losses(&b.join("metrics.jsonl"))?;
    assert_eq!(la.len(), 60);
    assert_eq!(
        la.iter().map(|x| x.0).collect::<Vec<_>>(),
        lb.iter().map(|x| x.0).collect::<Vec<_>>()
    );
    for ((s, x), (_, y)) in la.iter().zip(&lb) {
        // Same data, same optimiser state, same kernels: equal up to float noise.
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "step {s}: {x} vs {y}");
    }
    let mut wa = tch::Tensor::read_safetensors(a.join("model.safetensors"))?;
    let mut wb = tch::Tensor::read_safetensors(b.join("model.safetensors"))?;
    wa.sort_by(|x, y| x.0.cmp(&y.0));
    wb.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{na} differs by {diff}");
    }
    Ok(())
}
