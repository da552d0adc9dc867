//! Checkpoints: one directory per stage run.
//!
//! ```text
//! <dir>/model.safetensors   weights (names documented in `model.rs`)
//! <dir>/config.json         architecture (`GptConfig`)
//! <dir>/tokenizer.json      Hugging Face tokenizers format
//! <dir>/meta.json           stage, step, tokens, parent + hash, resolved config, mix, metrics, version
//! <dir>/metrics.jsonl       the training log up to this checkpoint
//! <dir>/state/              optimiser moments + trainer state, for --resume
//! ```
//!
//! Writes are atomic: everything is written and fsynced into `<dir>.partial`, the previous
//! checkpoint is moved to `<dir>.prev`, the new one renamed into place, then `.prev` removed.
//! At every instant `<dir>` or `<dir>.prev` is a complete checkpoint, and loading falls back
//! to `.prev` when a kill left no `<dir>`.
use crate::model::{Gpt, GptConfig};
use crate::tokenizer::Tok;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

pub use crate::meta::{Loaded, Meta, ParentRef, FORMAT_VERSION};

/// Resumable state saved under `state/`.
pub struct TrainState {
    /// Tensors (optimiser moments), written to `state/optimizer.safetensors`.
    pub tensors: Vec<(String, Tensor)>,
    /// Everything else (schedule position, data cursor, RNG), written to `state/trainer.json`.
    pub json: serde_json::Value,
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {} (is the disk full?)", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

fn sync_dir(path: &Path) {
    // Best effort: directory fsync makes the rename durable on Linux.
    if let Ok(f) = fs::File::open(path) {
        let _ = f.sync_all();
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

/// What a checkpoint holds besides its `meta.json`.
pub struct Contents<'a> {
    /// Weights.
    pub vs: &'a nn::VarStore,
    /// Architecture.
    pub config: &'a GptConfig,
    /// Tokenizer.
    pub tok: &'a Tok,
    /// The training log up to this checkpoint.
    pub metrics_log: &'a [serde_json::Value],
    /// Resumable state, for `--resume`.
    pub state: Option<&'a TrainState>,
}

/// Writes a complete checkpoint of a model freshly initialised from `seed` (tests,
/// benchmarks). libtorch's generator is process-global, so concurrent callers are
/// serialised: the same seed always gives the same weights.
pub fn save_random(dir: &Path, cfg: &GptConfig, tok: &Tok, stage: &str, seed: i64) -> Result<()> {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let vs = {
        let _init = INIT.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = Gpt::new(vs.root(), cfg);
        vs
    };
    let mut meta = Meta::new(stage);
    meta.complete = true;
    let contents = Contents {
        vs: &vs,
        config: cfg,
        tok,
        metrics_log: &[],
        state: None,
    };
    save(dir, &contents, &mut meta)
}

/// Writes a checkpoint atomically into `dir`. `meta.weights_sha256` is filled in.
pub fn save(dir: &Path, contents: &Contents<'_>, meta: &mut Meta) -> Result<()> {
    let Contents {
        vs,
        config,
        tok,
        metrics_log,
        state,
    } = *contents;
    let partial = sibling(dir, ".partial");
    let prev = sibling(dir, ".prev");
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing stale {}", partial.display()))?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;

    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.to_device(Device::Cpu).detach()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let weights = partial.join("model.safetensors");
    Tensor::write_safetensors(&named, &weights)
        .with_context(|| format!("writing {} (is the disk full?)", weights.display()))?;
    sync_file(&weights)?;
    meta.weights_sha256 = sha256_file(&weights)?;
    meta.format = FORMAT_VERSION;
    meta.version = env!("CARGO_PKG_VERSION").to_string();

    write_synced(
        &partial.join("config.json"),
        serde_json::to_string_pretty(config)?.as_bytes(),
    )?;
    write_synced(&partial.join("tokenizer.json"), tok.to_json()?.as_bytes())?;
    for (name, text) in tok.sidecar_files()? {
        write_synced(&partial.join(name), text.as_bytes())?;
    }
    write_synced(
        &partial.join("meta.json"),
        serde_json::to_string_pretty(meta)?.as_bytes(),
    )?;
    let mut log = String::new();
    for line in metrics_log {
        log.push_str(&serde_json::to_string(line)?);
        log.push('\n');
    }
    write_synced(&partial.join("metrics.jsonl"), log.as_bytes())?;
    if let Some(state) = state {
        let sdir = partial.join("state");
        fs::create_dir_all(&sdir).with_context(|| format!("creating {}", sdir.display()))?;
        let opt = sdir.join("optimizer.safetensors");
        let cpu: Vec<(String, Tensor)> = state
            .tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.to_device(Device::Cpu)))
            .collect();
        Tensor::write_safetensors(&cpu, &opt)
            .with_context(|| format!("writing {} (is the disk full?)", opt.display()))?;
        sync_file(&opt)?;
        write_synced(
            &sdir.join("trainer.json"),
            serde_json::to_string_pretty(&state.json)?.as_bytes(),
        )?;
        sync_dir(&sdir);
    }
    sync_dir(&partial);

    if prev.exists() {
        fs::remove_dir_all(&prev).with_context(|| format!("removing {}", prev.display()))?;
    }
    if dir.exists() {
        fs::rename(dir, &prev).with_context(|| format!("moving {} aside", dir.display()))?;
    }
    fs::rename(&partial, dir).with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent);
    }
    if prev.exists() {
        fs::remove_dir_all(&prev).with_context(|| format!("removing {}", prev.display()))?;
    }
    Ok(())
}

/// The directory holding the last complete checkpoint written to `dir`: `dir` itself, or
/// `dir.prev` when a kill happened between the two renames of a save.
pub fn resolve_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join("meta.json").exists() {
        return Ok(dir.to_path_buf());
    }
    let prev = sibling(dir, ".prev");
    if prev.join("meta.json").exists() {
        eprintln!(
            "note: {} is missing; using the previous complete save {}",
            dir.display(),
            prev.display()
        );
        return Ok(prev);
    }
    if dir.exists() {
        bail!("{} is not a lib2expert checkpoint (no meta.json) nor a Hugging Face model directory (no config.json with a model_type); expected a directory written by a stage (e.g. runs/<run>/pretrain) or by transformers' save_pretrained", dir.display());
    }
    bail!(
        "checkpoint {} does not exist; run the stage that writes it first (`just pipeline` writes runs/default/<stage>), or name another checkpoint directory",
        dir.display()
    )
}

/// Reads `meta.json` only.
pub fn read_meta(dir: &Path) -> Result<Meta> {
    let dir = resolve_dir(dir)?;
    let path = dir.join("meta.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Loads and checks a checkpoint: architecture, tokenizer against vocabulary, tensor
/// names, shapes and dtypes. Weights stay on the CPU until [`load_into`]. A Hugging Face
/// model directory loads too (see [`crate::hf`]), as a checkpoint of stage `hf`.
pub fn load(dir: &Path) -> Result<Loaded> {
    if crate::hf::is_hf_dir(dir) {
        return crate::hf::load(dir);
    }
    let dir = resolve_dir(dir)?;
    let config = crate::model::read_config(&dir.join("config.json"))?;
    let tok = Tok::load(&dir.join("tokenizer.json"))?;
    if tok.vocab_size() as i64 > config.vocab_size {
        bail!(
            "{}: tokenizer.json has {} tokens but the model's vocab_size is {}: the tokenizer does not belong to this model",
            dir.display(),
            tok.vocab_size(),
            config.vocab_size
        );
    }
    let meta_path = dir.join("meta.json");
    let meta: Meta = serde_json::from_str(
        &fs::read_to_string(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?,
    )
    .with_context(|| format!("parsing {}", meta_path.display()))?;
    let wpath = dir.join("model.safetensors");
    if !wpath.exists() {
        bail!("{} is missing: the checkpoint is incomplete", wpath.display());
    }
    let weights = Tensor::read_safetensors(&wpath)
        .with_context(|| format!("reading {} (corrupt or truncated?)", wpath.display()))?;
    Ok(Loaded {
        dir,
        config,
        tok,
        meta,
        weights,
    })
}

/// Copies loaded weights into a model's `VarStore`, checking every name, shape and dtype.
pub fn load_into(vs: &mut nn::VarStore, weights: &[(String, Tensor)], source: &Path) -> Result<()> {
    let vars = vs.variables();
    let given: BTreeMap<&str, &Tensor> = weights.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut problems = Vec::new();
    for (name, var) in &vars {
        match given.get(name.as_str()) {
            None => problems.push(format!("missing tensor {name} (model expects shape {:?})", var.size())),
            Some(t) if t.size() != var.size() => problems.push(format!(
                "tensor {name} has shape {:?} in the file but the model expects {:?}",
                t.size(),
                var.size()
            )),
            Some(t) if t.kind() != var.kind() && !t.is_floating_point() => problems.push(format!(
                "tensor {name} has dtype {:?}, expected a float dtype",
                t.kind()
            )),
            _ => {}
        }
    }
    for name in given.keys() {
        if !vars.contains_key(*name) {
            problems.push(format!("unexpected tensor {name} (not part of this architecture)"));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(8);
        bail!(
            "{} does not match the model architecture ({n} problem(s)):\n  {}",
            source.display(),
            problems.join("\n  ")
        );
    }
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vars {
        let src = given[name.as_str()];
        var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
    }
    Ok(())
}

/// Builds the model of a checkpoint on `device` with its weights.
pub fn load_model(dir: &Path, device: Device) -> Result<(nn::VarStore, Gpt, Loaded)> {
    let loaded = load(dir)?;
    let mut vs = nn::VarStore::new(device);
    let model = Gpt::new(vs.root(), &loaded.config);
    load_into(&mut vs, &loaded.weights, &loaded.dir.join("model.safetensors"))?;
    Ok((vs, model, loaded))
}

/// Reads `state/` of a checkpoint: optimiser tensors and trainer JSON.
pub fn load_state(dir: &Path) -> Result<TrainState> {
    let dir = resolve_dir(dir)?;
    let sdir = dir.join("state");
    let opt = sdir.join("optimizer.safetensors");
    let json_path = sdir.join("trainer.json");
    if !json_path.exists() {
        bail!(
            "{} has no resumable state ({} is missing)",
            dir.display(),
            json_path.display()
        );
    }
    let tensors = Tensor::read_safetensors(&opt).with_context(|| format!("reading {}", opt.display()))?;
    let json = serde_json::from_str(
        &fs::read_to_string(&json_path).with_context(|| format!("reading {}", json_path.display()))?,
    )
    .with_context(|| format!("parsing {}", json_path.display()))?;
    Ok(TrainState { tensors, json })
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

/// Decides what to do with `out` for `stage`: refuses an existing checkpoint without
/// `--resume` or of another stage, reports a complete one, loads the state of a partial one.
pub fn prepare_out(out: &Path, stage: &str, resume: bool) -> Result<OutState> {
    let Ok(dir) = resolve_dir(out) else {
        return Ok(OutState::Fresh);
    };
    let meta = read_meta(&dir)?;
    if !resume {
        bail!(
            "{} already holds a {} checkpoint (step {}); pass --resume to continue it, or choose another --out",
            out.display(),
            meta.stage,
            meta.step
        );
    }
    if meta.stage != stage {
        bail!(
            "{} holds a {} checkpoint, not {stage}: choose another --out",
            out.display(),
            meta.stage
        );
    }
    if meta.complete {
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

/// A reference to `dir` as a parent of a new run.
pub fn parent_ref(dir: &Path, meta: &Meta) -> ParentRef {
    ParentRef {
        path: dir.display().to_string(),
        stage: meta.stage.clone(),
        weights_sha256: meta.weights_sha256.clone(),
    }
}
