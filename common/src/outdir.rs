//! What a stage may do with its `--out`: the user's files are never touched, one run at a
//! time writes there, and a checkpoint made with other settings is never silently reused.
//!
//! - [`check`]: `--out` must be a directory (or not exist) holding nothing but what a save
//!   writes: a save replaces the whole directory, so a foreign file (`notes.txt`) would be
//!   deleted. The same holds for its `.partial` and `.prev` siblings.
//! - [`lock`]: an exclusive `flock` on `<out>.lock`, released by the kernel when the process
//!   ends however it ends (a SIGKILLed run leaves no stale lock); the file names the holder.
//! - [`config_changes`]: what differs between the resolved configuration saved with a
//!   checkpoint and the one requested now.
//! - [`prepare_out`]: all of the above, then fresh, resume or complete.
//!
//! This module builds on [`crate::checkpoint`] (how a checkpoint is laid out, saved and
//! recovered); the checkpoint module knows nothing of it.
use crate::checkpoint::{load_state, read_meta, recover, resolve_dir, sibling, Meta, TrainState, CHECKPOINT_ENTRIES};
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Refuses an `--out` that is a regular file, or that (or whose `.partial` / `.prev`) holds
/// anything a save did not write. An empty directory is fine.
pub fn check(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!(
            "--out {} is a file, not a directory: a stage writes a checkpoint directory there. Choose another --out (e.g. {}-ckpt) or move the file away",
            out.display(),
            out.display()
        );
    }
    for dir in [out.to_path_buf(), sibling(out, ".partial"), sibling(out, ".prev")] {
        let foreign = foreign_entries(&dir)?;
        if !foreign.is_empty() {
            let shown: Vec<String> = foreign.iter().take(5).map(|p| p.display().to_string()).collect();
            bail!(
                "{} holds {} that no lib2expert save wrote ({}{}); a save replaces the whole directory, so this run refuses rather than delete them. Move them elsewhere or choose another --out",
                dir.display(),
                if foreign.len() == 1 { "a file" } else { "files" },
                shown.join(", "),
                if foreign.len() > 5 { ", …" } else { "" }
            );
        }
    }
    Ok(())
}

/// Entries of `dir` (and of its `state/`) that are not what a save writes.
fn foreign_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if !CHECKPOINT_ENTRIES.contains(&name.as_str()) {
            out.push(path);
        } else if name == "state" {
            if !path.is_dir() {
                out.push(path);
                continue;
            }
            for s in fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))? {
                let s = s?;
                let n = s.file_name();
                if n != "optimizer.safetensors" && n != "trainer.json" {
                    out.push(s.path());
                }
            }
        } else if path.is_dir() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// An exclusive lock on a stage's `--out`, held until dropped (or the process ends).
pub struct OutLock {
    _file: Flock<File>,
    /// The lock file (`<out>.lock`).
    pub path: PathBuf,
}

/// Takes the lock of `out` (`<out>.lock`), or fails at once naming the run that holds it.
pub fn lock(out: &Path) -> Result<OutLock> {
    let path = sibling(out, ".lock");
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((_, Errno::EWOULDBLOCK)) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            bail!(
                "{} is in use by another run ({}; lock file {}): wait for it to finish, stop it, or choose another --out",
                out.display(),
                if holder.is_empty() { "holder unknown" } else { holder },
                path.display()
            );
        }
        Err((_, e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    };
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "unknown host".into());
    let text = format!("pid {} on {}, started {}\n", std::process::id(), host.trim(), utc_now());
    file.set_len(0)?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()?;
    Ok(OutLock { _file: file, path })
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::provenance::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// What a stage's `--out` holds when the stage starts.
pub enum OutState {
    /// No checkpoint: start a new run.
    Fresh,
    /// A complete checkpoint of this stage: nothing to do.
    Complete(Box<Meta>),
    /// A partial run of this stage to continue.
    Resume {
        /// Directory holding it (may be the `.prev` fallback).
        dir: PathBuf,
        /// Its resumable state.
        state: TrainState,
        /// Its metrics log.
        log: Vec<serde_json::Value>,
    },
}

/// What a stage asks of its `--out`.
pub struct OutRequest<'a> {
    /// Stage name.
    pub stage: &'a str,
    /// `--resume`: continue the checkpoint there.
    pub resume: bool,
    /// `--force`: accept a checkpoint made with other settings (see [`prepare_out`]).
    pub force: bool,
    /// The resolved configuration requested now.
    pub config: &'a serde_json::Value,
    /// Steps requested now.
    pub steps: u64,
}

/// Decides what to do with `out` (the caller holds its [`lock`]): refuses a
/// file, foreign files, a checkpoint of another stage, or an existing checkpoint without
/// `--resume` / `--force`; finishes an interrupted save ([`recover`]); compares the saved
/// configuration with the requested one. Then:
/// - same settings: a complete checkpoint is reported (nothing to do), a partial one resumed;
/// - other settings: an error naming every difference (`key: old → new`), unless `--force`:
///   the run then continues from the saved step under the new settings (more steps, another
///   lr, ...), or restarts from step 0 when the architecture, tokenizer, data, `--init` or
///   LoRA shape changed or fewer steps than already taken are asked for;
/// - `--force` without `--resume`: restart from step 0 (the checkpoint is replaced by the
///   new run's first save).
pub fn prepare_out(out: &Path, req: &OutRequest<'_>) -> Result<OutState> {
    check(out)?;
    recover(out)?;
    let stage = req.stage;
    let Ok(dir) = resolve_dir(out) else {
        return Ok(OutState::Fresh);
    };
    let meta = read_meta(&dir)?;
    if meta.stage != stage {
        bail!(
            "{} holds a {} checkpoint, not {stage}: choose another --out",
            out.display(),
            meta.stage
        );
    }
    if !req.resume {
        if req.force {
            eprintln!(
                "{stage}: --force: starting over; the {} checkpoint in {} (step {}) is replaced at the first save",
                if meta.complete { "complete" } else { "partial" },
                out.display(),
                meta.step
            );
            return Ok(OutState::Fresh);
        }
        bail!(
            "{} already holds a {} checkpoint (step {}); pass --resume to continue it, --force to replace it, or choose another --out",
            out.display(),
            meta.stage,
            meta.step
        );
    }
    let changes = config_changes(&meta.config, req.config);
    if !changes.is_empty() {
        let list: Vec<String> = changes.iter().map(|c| format!("  {c}")).collect();
        let what = if meta.complete { "complete" } else { "partial" };
        if !req.force {
            bail!(
                "{} holds a {what} {stage} checkpoint (step {}) made with other settings:\n{}\nchoose a new --out for a run with these settings, or pass --force to continue this one under them (it restarts from step 0 when the model, tokenizer, data, init or LoRA shape changed)",
                out.display(),
                meta.step,
                list.join("\n")
            );
        }
        if changes.iter().any(Change::restarts) || req.steps < meta.step {
            eprintln!(
                "{stage}: --force: the settings changed in a way the saved state cannot continue; starting over from step 0 (the checkpoint in {} is replaced at the first save):\n{}",
                out.display(),
                list.join("\n")
            );
            return Ok(OutState::Fresh);
        }
        eprintln!(
            "{stage}: --force: continuing the {what} checkpoint in {} from step {} under the new settings:\n{}",
            out.display(),
            meta.step,
            list.join("\n")
        );
    } else if meta.complete {
        eprintln!(
            "{stage}: {} is complete (step {}/{}); nothing to do",
            out.display(),
            meta.step,
            meta.total_steps
        );
        return Ok(OutState::Complete(Box::new(meta)));
    }
    let state = load_state(&dir)?;
    let log = crate::metrics::read_jsonl(&dir.join("metrics.jsonl"));
    Ok(OutState::Resume { dir, state, log })
}

/// Keys of a stage's resolved configuration that do not change what the run computes, so a
/// difference there is not a different run: where the checkpoint lives, the device, how
/// often it saves.
const IGNORED: &[&str] = &["out", "train.device", "train.save_every"];

/// Keys whose change makes the saved state meaningless for the new settings (another
/// architecture, tokenizer, data or starting point, another adapter shape): `--force`
/// restarts from step 0 instead of continuing.
const RESTART: &[&str] = &[
    "model",
    "tokenizer",
    "init",
    "data",
    "data_root",
    "train.lora_rank",
    "train.lora_alpha",
];

/// One difference between a saved and a requested configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Dotted key (`train.lr`).
    pub key: String,
    /// Saved value.
    pub old: Value,
    /// Requested value (`None`: no longer set).
    pub new: Option<Value>,
}

impl Change {
    /// Whether this change means the saved state cannot be continued (see [`RESTART`]).
    pub fn restarts(&self) -> bool {
        RESTART
            .iter()
            .any(|p| self.key == *p || self.key.starts_with(&format!("{p}.")))
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let new = self.new.as_ref().map_or("(unset)".to_string(), Value::to_string);
        write!(f, "{}: {} → {}", self.key, self.old, new)
    }
}

fn flatten(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(x, &key, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// What differs between the configuration `saved` with a checkpoint and the `requested` one,
/// by dotted key, [`IGNORED`] keys left out. A key the saved configuration does not have at
/// all was added by a newer version of the program and is not a change.
pub fn config_changes(saved: &Value, requested: &Value) -> Vec<Change> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten(saved, "", &mut a);
    flatten(requested, "", &mut b);
    let ignored = |k: &str| IGNORED.iter().any(|p| k == *p || k.starts_with(&format!("{p}.")));
    let mut out = Vec::new();
    for (k, old) in &a {
        if ignored(k) {
            continue;
        }
        match b.get(k) {
            Some(new) if new == old => {}
            None if old.is_null() => {}
            new => out.push(Change {
                key: k.clone(),
                old: old.clone(),
                new: new.cloned(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_name_the_key_and_both_values() {
        let saved = json!({"out": "a", "train": {"lr": 0.001, "steps": 100, "device": "cpu"}, "model": {"preset": "tiny"}, "eval": {"every": 0}});
        let asked = json!({"out": "b", "train": {"lr": 0.002, "steps": 100, "device": "cuda", "new_knob": 3}, "model": {"preset": "tiny"}});
        let c = config_changes(&saved, &asked);
        let shown: Vec<String> = c.iter().map(ToString::to_string).collect();
        // `out` and `train.device` are not changes; `train.new_knob` is new in this version.
        assert_eq!(shown, ["eval.every: 0 → (unset)", "train.lr: 0.001 → 0.002"]);
        assert!(!c.iter().any(Change::restarts));
        let c = config_changes(
            &saved,
            &json!({"train": {"lr": 0.001, "steps": 100}, "model": {"preset": "d12"}, "eval": {"every": 0}}),
        );
        assert_eq!(c.len(), 1);
        assert!(c[0].restarts(), "another architecture restarts");
        assert!(config_changes(&saved, &saved).is_empty());
    }

    #[test]
    fn utc_time_is_formatted() {
        let t = utc_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
