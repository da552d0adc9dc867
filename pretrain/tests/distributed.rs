//! Data-parallel pretraining under `torchrun` (2 ranks on CPU, Gloo over loopback): the same
//! losses and weights as one process with the whole batch, a killed 2-rank run that one process
//! resumes to the same end, and a rank that dies making the other exit with an error instead of
//! hanging.
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::{stderr, tiny_world, venv_python};

const PRETRAIN: &str = env!("CARGO_BIN_EXE_pretrain");

/// The tests of this file run one at a time. Each starts a process group on a port the OS
/// found free. Run side by side, a CI run once failed both together: `torchrun`'s rank 0
/// trained all its steps and exited while its own rank 1 still waited at the start-up
/// broadcast, and the hand-started ranks never trained, which is what a rank of one run
/// joining the other's group through a port handed out to both would do.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding the lock leaves it poisoned; the next may still run.
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// `torchrun` with 2 ranks of `pretrain ARGS --out OUT`.
fn two_ranks(args: &[&str], out: &Path) -> Command {
    let mut c = testkit::torchrun(2, PRETRAIN);
    c.args(args).arg("--out").arg(out);
    c
}

fn one_rank(args: &[&str], out: &Path) -> Command {
    let mut c = testkit::bin(PRETRAIN);
    c.args(args).arg("--out").arg(out).env("L2E_THREADS", "1");
    c
}

fn assert_same_run(a: &Path, b: &Path, steps: usize) -> Result<()> {
    testkit::assert_same_run(a, b, steps, "2 ranks against 1")
}

#[test]
fn two_ranks_train_as_one_with_the_whole_batch_and_resume_after_a_kill() -> Result<()> {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let cfg = d.join("configs/pretrain.toml");
    let cfg = cfg.to_str().context("utf-8 path")?;
    // 4 sequences per step in micro-batches of 2: one micro-batch per rank.
    let args = ["--config", cfg, "--steps", "12", "--save-every", "2"];

    let one = d.join("one/pretrain");
    let o = one_rank(&args, &one).output()?;
    assert!(o.status.success(), "{}", stderr(&o));

    let two = d.join("two/pretrain");
    let o = two_ranks(&args, &two).output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_run(&one, &two, 12)?;
    // Rank 0 alone wrote the checkpoint and its log; the meta is complete.
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(two.join("meta.json"))?)?;
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["step"], 12);

    // Killed (the launcher and both ranks) as soon as a checkpoint exists, then resumed.
    let killed = d.join("killed/pretrain");
    let mut c = two_ranks(&args, &killed);
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let t0 = Instant::now();
    while !killed.join("meta.json").exists() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    testkit::kill_tree(child.id());
    child.wait()?;
    let step = common::checkpoint::load(&killed)?.meta.step;
    assert!((2..12).contains(&step), "killed at step {step}");
    // Resumed by one process: the same run goes on, and it says the rank count changed.
    let mut resume: Vec<&str> = args.to_vec();
    resume.push("--resume");
    let o = one_rank(&resume, &killed).output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("saved by 2 rank(s) and resumes with 1"),
        "{}",
        stderr(&o)
    );
    assert_same_run(&one, &killed, 12)?;
    Ok(())
}

#[test]
fn a_rank_that_dies_ends_the_other_with_an_error() -> Result<()> {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let cfg = d.join("configs/pretrain.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    // Two ranks started by hand, as torchrun would (rank 0 hosts the store): rank 1 is killed
    // once training runs; rank 0, waiting for its gradients, must fail, not hang.
    let rank = |r: usize| -> Result<std::process::Child> {
        Ok(testkit::bin(PRETRAIN)
            .arg("--config")
            .arg(&cfg)
            .args(["--steps", "100000"])
            .arg("--out")
            .arg(d.join(format!("r{r}")))
            .envs([
                ("RANK", r.to_string()),
                ("LOCAL_RANK", r.to_string()),
                ("WORLD_SIZE", "2".into()),
                ("LOCAL_WORLD_SIZE", "2".into()),
                ("MASTER_ADDR", "127.0.0.1".into()),
                ("MASTER_PORT", port.to_string()),
                ("L2E_DIST_TIMEOUT_S", "60".into()),
                ("OMP_NUM_THREADS", "1".into()),
            ])
            .env("L2E_PYTHON", venv_python())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?)
    };
    let r0 = rank(0)?;
    let mut r1 = rank(1)?;
    // Training has started once rank 0 logged a step.
    let log = d.join("r0.metrics.jsonl");
    let t0 = Instant::now();
    while losses_in(&log).is_empty() && t0.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!losses_in(&log).is_empty(), "the two ranks never started training");
    r1.kill()?;
    r1.wait()?;
    let t1 = Instant::now();
    let o = r0.wait_with_output()?;
    let waited = t1.elapsed();
    assert!(!o.status.success());
    assert!(waited < Duration::from_secs(90), "rank 0 took {waited:?} to notice");
    let err = stderr(&o);
    assert!(err.contains("rank 0 of 2") && err.contains("rank 1 died"), "{err}");
    Ok(())
}

fn losses_in(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}
