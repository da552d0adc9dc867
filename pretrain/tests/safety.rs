//! What a run must never do, against the real binary: delete files it did not write, run
//! twice into one --out, silently reuse a checkpoint made with other settings, lose a save
//! to two kills in a row, die on SIGTERM without saving, hang on an empty source, or be
//! killed for memory without a word.
use anyhow::Result;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use testkit::{stderr, tiny_world};

fn bin() -> Command {
    testkit::bin(env!("CARGO_BIN_EXE_pretrain"))
}

/// `pretrain --config <world>/configs/pretrain.toml --out <out> <extra>`, with `env`.
fn pretrain(world: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let mut c = bin();
    c.arg("--config")
        .arg(world.join("configs/pretrain.toml"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .envs(env.iter().copied());
    Ok(c.output()?)
}

fn meta(out: &Path) -> Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(out.join("meta.json"))?)?)
}

/// Steps of the training lines of a metrics log.
fn logged_steps(path: &Path) -> Result<Vec<u64>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .filter_map(|v| v["step"].as_u64())
        .collect())
}

#[test]
fn user_files_in_out_are_never_deleted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    // An ordinary directory holding the user's notes: refused, the notes untouched.
    let out = d.join("mine");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("notes.txt"), "my notes")?;
    let o = pretrain(d, &out, &[], &[])?;
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("notes.txt") && e.contains("choose another --out"), "{e}");
    assert_eq!(std::fs::read_to_string(out.join("notes.txt"))?, "my notes");
    assert!(!d.join("mine.prev").exists() && !d.join("mine.partial").exists());
    // A file dropped into a finished checkpoint is refused too, even with --force.
    let ck = d.join("runs/x/pretrain");
    let o = pretrain(d, &ck, &["--steps", "2"], &[])?;
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(ck.join("notes.txt"), "mine")?;
    let o = pretrain(d, &ck, &["--steps", "2", "--force"], &[])?;
    assert!(
        !o.status.success() && stderr(&o).contains("notes.txt"),
        "{}",
        stderr(&o)
    );
    assert!(ck.join("notes.txt").exists());
    // --out that is a regular file: refused before any training (no log is even started).
    let file = d.join("runs/x/file");
    std::fs::write(&file, "data")?;
    let t0 = Instant::now();
    let o = pretrain(d, &file, &[], &[])?;
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("is a file, not a directory"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(std::fs::read_to_string(&file)?, "data");
    assert!(!d.join("runs/x/file.metrics.jsonl").exists());
    // An empty directory is fine.
    let empty = d.join("runs/y/pretrain");
    std::fs::create_dir_all(&empty)?;
    let o = pretrain(d, &empty, &["--steps", "2"], &[])?;
    assert!(o.status.success(), "{}", stderr(&o));
    Ok(())
}

#[test]
fn a_second_run_on_the_same_out_fails_at_once_and_a_killed_run_leaves_no_stale_lock() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let out = d.join("runs/x/pretrain");
    // A long run without periodic saves.
    let mut first = bin()
        .arg("--config")
        .arg(d.join("configs/pretrain.toml"))
        .arg("--out")
        .arg(&out)
        .args(["--steps", "1000000", "--save-every", "0"])
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let lock = d.join("runs/x/pretrain.lock");
    let t0 = Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.ends_with('\n')) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the first run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t1 = Instant::now();
    let o = pretrain(d, &out, &["--steps", "2", "--resume"], &[])?;
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("in use by another run") && e.contains(&format!("pid {}", first.id())) && e.contains("started 20"),
        "{e}"
    );
    assert!(t1.elapsed() < Duration::from_secs(30), "it fails at once");
    first.kill()?; // SIGKILL: no chance to unlock; the kernel releases the lock.
    first.wait()?;
    let o = pretrain(d, &out, &["--steps", "2", "--resume"], &[])?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(meta(&out)?["step"], 2);
    Ok(())
}

#[test]
fn changed_settings_are_named_and_force_continues_or_restarts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let out = d.join("runs/x/pretrain");
    let o = pretrain(d, &out, &["--resume"], &[])?;
    assert!(o.status.success(), "{}", stderr(&o));
    let weights = std::fs::read(out.join("model.safetensors"))?;
    // The same command again (what `just pipeline` does): nothing to do.
    let o = pretrain(d, &out, &["--resume"], &[])?;
    assert!(
        o.status.success() && stderr(&o).contains("nothing to do"),
        "{}",
        stderr(&o)
    );
    // Other settings: refused, every difference named, the checkpoint untouched.
    let o = pretrain(d, &out, &["--resume", "--steps", "9", "--lr", "1e-3"], &[])?;
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("made with other settings")
            && e.contains("train.steps: 6 → 9")
            && e.contains("train.lr: 0.003 → 0.001"),
        "{e}"
    );
    assert!(e.contains("--force") && e.contains("new --out"), "{e}");
    assert_eq!(std::fs::read(out.join("model.safetensors"))?, weights);
    // --force with more steps continues from step 6 under the new settings.
    let o = pretrain(d, &out, &["--resume", "--force", "--steps", "9"], &[])?;
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("continuing the complete checkpoint") && e.contains("from step 6"),
        "{e}"
    );
    let m = meta(&out)?;
    assert_eq!((m["step"].as_u64(), m["complete"].as_bool()), (Some(9), Some(true)));
    assert_eq!(m["config"]["train"]["steps"], 9);
    assert_eq!(logged_steps(&out.join("metrics.jsonl"))?, (1..=9).collect::<Vec<_>>());
    // Unchanged since: complete stages are still skipped.
    let o = pretrain(d, &out, &["--resume", "--steps", "9"], &[])?;
    assert!(
        o.status.success() && stderr(&o).contains("nothing to do"),
        "{}",
        stderr(&o)
    );
    // Another architecture cannot continue the saved state: --force starts over.
    let cfg = d.join("configs/pretrain-1layer.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(d.join("configs/pretrain.toml"))?
            .replace("preset = \"tiny\"", "preset = \"tiny\"\nn_layer = 1"),
    )?;
    let mut c = bin();
    let o = c
        .arg("--config")
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .args(["--resume", "--force", "--steps", "9"])
        .output()?;
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("model.n_layer: null → 1") && e.contains("starting over from step 0"),
        "{e}"
    );
    let m = meta(&out)?;
    assert_eq!(m["step"], 9);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json"))?)?;
    assert_eq!(config["n_layer"], 1);
    // --force without --resume replaces the checkpoint.
    let o = pretrain(d, &out, &["--force", "--steps", "3"], &[])?;
    assert!(
        o.status.success() && stderr(&o).contains("starting over"),
        "{}",
        stderr(&o)
    );
    assert_eq!(meta(&out)?["step"], 3);
    Ok(())
}

#[test]
fn kills_at_any_point_of_saves_lose_no_saved_step() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let out = d.join("runs/x/pretrain");
    let args = ["--steps", "12", "--save-every", "2", "--resume"];
    // Each run is SIGKILLed by the save's test hook at the given point; after each, the
    // newest complete save is the step given, wherever it lies (.partial, dir or .prev). A
    // resumed run first finishes what the kill before it interrupted (the renames of that
    // recovery count as its first renames), then says which step it resumes from.
    let kills: [(&str, u64, Option<u64>); 5] = [
        // The 2nd save (step 4) is killed after moving step 2 aside: only .prev and .partial.
        ("after-first-rename@2", 4, None),
        // Killed while putting that .partial in place, before resuming.
        ("after-first-rename@1", 4, None),
        // Resumes from step 4 (not 2, not 0); its first save (step 6) killed after moving
        // step 4 aside.
        ("after-first-rename@1", 6, Some(4)),
        // Resumes from step 6; its first save (step 8) killed with the .partial complete.
        ("before-swap", 8, Some(6)),
        // Killed between the two renames of putting the step-8 .partial in place.
        ("after-second-rename", 8, None),
    ];
    for (i, (point, step, resumed)) in kills.iter().enumerate() {
        let o = pretrain(d, &out, &args, &[("LIB2EXPERT_TEST_KILL_AT", point)])?;
        let e = stderr(&o);
        assert!(
            !o.status.success() && e.contains("killing this process at"),
            "run {i}: {e}"
        );
        if let Some(r) = resumed {
            assert!(e.contains(&format!("from step {r}\n")), "run {i}: {e}");
        }
        let loaded = common::checkpoint::load(&out)?;
        assert_eq!(
            loaded.meta.step,
            *step,
            "run {i} (killed at {point}) left {}",
            loaded.dir.display()
        );
    }
    // The next resume continues from step 8, not from 0, and ends with every step logged once.
    let o = pretrain(d, &out, &args, &[])?;
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("resuming") && e.contains("from step 8"), "{e}");
    assert_eq!(logged_steps(&out.join("metrics.jsonl"))?, (1..=12).collect::<Vec<_>>());
    for s in [".partial", ".prev"] {
        assert!(
            !PathBuf::from(format!("{}{s}", out.display())).exists(),
            "{s} left behind"
        );
    }
    Ok(())
}

#[test]
fn sigterm_and_sigint_save_before_exiting() -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    for (name, sig) in [("term", Signal::SIGTERM), ("int", Signal::SIGINT)] {
        let out = d.join(format!("runs/{name}/pretrain"));
        let child = bin()
            .arg("--config")
            .arg(d.join("configs/pretrain.toml"))
            .arg("--out")
            .arg(&out)
            .args(["--steps", "1000000", "--save-every", "0"])
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let log = d.join(format!("runs/{name}/pretrain.metrics.jsonl"));
        let t0 = Instant::now();
        while logged_steps(&log).map_or(0, |s| s.len()) < 3 {
            assert!(t0.elapsed() < Duration::from_secs(120), "{name}: no training steps");
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(Pid::from_raw(child.id() as i32), sig)?;
        let o = child.wait_with_output()?;
        let e = stderr(&o);
        assert!(!o.status.success(), "{name}: {e}");
        assert!(e.contains("interrupted; saving step"), "{name}: {e}");
        let m = meta(&out)?;
        assert!(
            m["step"].as_u64().unwrap_or(0) >= 3 && m["complete"] == false,
            "{name}: {m}"
        );
        // The save holds everything up to its step.
        let steps = logged_steps(&out.join("metrics.jsonl"))?;
        assert_eq!(steps.last().copied(), m["step"].as_u64(), "{name}");
    }
    Ok(())
}

#[test]
fn impossible_memory_needs_fail_with_a_message_not_the_oom_killer() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let base = std::fs::read_to_string(d.join("configs/pretrain.toml"))?;
    for (name, edit) in [
        // 400M sequences per step: the batches of one step alone are terabytes.
        ("batch", base.replace("batch_size = 4\n", "batch_size = 400000000\n")),
        // A model of ~10^13 parameters.
        (
            "model",
            base.replace("preset = \"tiny\"", "preset = \"tiny\"\nn_embd = 262144\nn_layer = 64"),
        ),
    ] {
        assert_ne!(edit, base, "{name}: the edit applies");
        let cfg = d.join(format!("configs/{name}.toml"));
        std::fs::write(&cfg, edit)?;
        let t0 = Instant::now();
        let o = bin()
            .arg("--config")
            .arg(&cfg)
            .arg("--out")
            .arg(d.join(format!("runs/{name}/pretrain")))
            .output()?;
        let e = stderr(&o);
        assert!(!o.status.success(), "{name}: {e}");
        assert!(
            e.contains("needs about") && e.contains("MemAvailable") && e.contains("Lower train.batch_size"),
            "{name}: {e}"
        );
        assert!(t0.elapsed() < Duration::from_secs(60), "{name}: fails before training");
    }
    Ok(())
}

#[test]
fn an_empty_source_fails_naming_the_file_instead_of_hanging() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    common::data::writer::write_text(&d.join("library/empty.parquet"), &[])?;
    let mix = d.join("configs/mixes/with-empty.toml");
    std::fs::write(
        &mix,
        std::fs::read_to_string(d.join("configs/mixes/pretrain.toml"))?
            + &format!(
                "[[source]]\nname = \"empty\"\npath = \"{}/library/empty.parquet\"\nformat = \"text\"\nweight = 0.1\n",
                d.display()
            ),
    )?;
    let mut child = bin()
        .arg("--config")
        .arg(d.join("configs/pretrain.toml"))
        .arg("--mix")
        .arg(&mix)
        .arg("--out")
        .arg(d.join("runs/x/pretrain"))
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let t0 = Instant::now();
    while child.try_wait()?.is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill()?;
            panic!("pretrain hung on an empty source");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output()?;
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("empty.parquet") && e.contains("no rows"), "{e}");
    Ok(())
}
