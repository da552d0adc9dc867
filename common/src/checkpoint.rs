//! Checkpoints: one directory per stage run.
//!
//! ```text
//! <dir>/model.safetensors   weights (names documented in `model.rs`)
//! <dir>/config.json         architecture (`GptConfig`)
//! <dir>/tokenizer.json      Hugging Face tokenizers format
//! <dir>/meta.json           stage, step, tokens, parent + hash, resolved config, mix, metrics, version
//! <dir>/metrics.jsonl       the training log up to this checkpoint
//! <dir>/state/              optimiser moments + trainer state, for --resume
//! <dir>/COMPLETE            completion marker: the size of every file above, written last
//! ```
//!
//! Writes survive any sequence of kills. A save writes and fsyncs everything into
//! `<dir>.partial`, then the completion marker `COMPLETE` (fsynced too); only then does the
//! swap begin: remove `<dir>.prev`, move `<dir>` to `<dir>.prev`, rename `<dir>.partial` to
//! `<dir>`, remove `<dir>.prev`. Recency is fixed by construction: a `.partial` whose marker
//! verifies is newer than `<dir>`, which is newer than `.prev`, so the newest complete
//! checkpoint is the first complete one of `.partial`, `<dir>`, `.prev` ([`resolve_dir`]).
//! At every instant of a save one of them is complete and nothing newer is ever deleted:
//! [`recover`] (run by every save and by a stage before it starts) finishes an interrupted
//! swap instead of discarding its `.partial`.
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

/// `dir` with `suffix` appended to its last component (`runs/x/sft` → `runs/x/sft.prev`).
pub fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

/// The completion marker, written last into a checkpoint being saved.
pub const COMPLETE_MARKER: &str = "COMPLETE";

/// Every name a save writes at the top of a checkpoint directory (`state` is a folder).
pub const CHECKPOINT_ENTRIES: &[&str] = &[
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "meta.json",
    "metrics.jsonl",
    "state",
    COMPLETE_MARKER,
];

/// Contents of the completion marker: the step saved and the size of every file written
/// before it (relative paths), so a truncated or half-written directory never passes.
#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    step: u64,
    files: BTreeMap<String, u64>,
}

/// Sizes of the files under `dir`, by path relative to it (the marker excluded).
fn file_sizes(dir: &Path) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let path = e.path();
            let md = e.metadata()?;
            if md.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                let rel = rel.to_string_lossy().into_owned();
                if rel != COMPLETE_MARKER {
                    out.insert(rel, md.len());
                }
            }
        }
    }
    Ok(out)
}

/// Writes the completion marker of `dir` (everything else already written and synced).
fn write_marker(dir: &Path, step: u64) -> Result<()> {
    let marker = Marker {
        step,
        files: file_sizes(dir)?,
    };
    write_synced(
        &dir.join(COMPLETE_MARKER),
        serde_json::to_string_pretty(&marker)?.as_bytes(),
    )?;
    sync_dir(dir);
    Ok(())
}

/// Whether `dir` holds a completion marker that its files match.
fn marker_verifies(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join(COMPLETE_MARKER)) else {
        return false;
    };
    let Ok(marker) = serde_json::from_str::<Marker>(&text) else {
        return false;
    };
    marker.files.contains_key("meta.json")
        && marker.files.contains_key("model.safetensors")
        && file_sizes(dir).is_ok_and(|now| now == marker.files)
}

/// Whether `dir` is a complete checkpoint. A `.partial` (`partial`) counts only when its
/// completion marker verifies; `<dir>` and `.prev` are only ever put in place by renaming a
/// verified `.partial` (or, before markers existed, a fully written one), so a `meta.json`
/// suffices there (a hand-edited `config.json` does not make a checkpoint incomplete).
fn is_complete(dir: &Path, partial: bool) -> bool {
    if partial {
        marker_verifies(dir)
    } else {
        dir.join("meta.json").is_file()
    }
}

/// Test hook: with `LIB2EXPERT_TEST_KILL_AT=<point>` (or `<point>@<n>`, the n-th time this
/// process reaches it), the process SIGKILLs itself at that point of a save, as a power cut
/// or the OOM killer would. Points: `before-swap` (the `.partial` is complete),
/// `after-remove-prev`, `after-first-rename`, `after-second-rename`.
fn kill_point(point: &str) {
    static SEEN: std::sync::Mutex<BTreeMap<String, u32>> = std::sync::Mutex::new(BTreeMap::new());
    let Ok(spec) = std::env::var("LIB2EXPERT_TEST_KILL_AT") else {
        return;
    };
    let (want, nth) = match spec.split_once('@') {
        Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
        None => (spec, 1),
    };
    if want != point {
        return;
    }
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let n = seen.entry(want).or_default();
    *n += 1;
    if *n == nth {
        eprintln!("LIB2EXPERT_TEST_KILL_AT: killing this process at {point}");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// The renames of one swap, counted for [`kill_point`].
#[derive(Default)]
struct Swap {
    renames: u32,
}

impl Swap {
    fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
        if let Some(parent) = to.parent() {
            sync_dir(parent);
        }
        self.renames += 1;
        match self.renames {
            1 => kill_point("after-first-rename"),
            2 => kill_point("after-second-rename"),
            _ => {}
        }
        Ok(())
    }

    /// Puts the complete `.partial` of `dir` in place. Safe at every instant: until the
    /// rename `.partial` → `dir`, the `.partial` is the newest complete checkpoint and is
    /// found first; after it, `dir` is.
    fn partial_into_place(&mut self, dir: &Path) -> Result<()> {
        let (partial, prev) = (sibling(dir, ".partial"), sibling(dir, ".prev"));
        if prev.exists() {
            fs::remove_dir_all(&prev).with_context(|| format!("removing {}", prev.display()))?;
            kill_point("after-remove-prev");
        }
        if dir.exists() {
            self.rename(dir, &prev)?;
        }
        self.rename(&partial, dir)?;
        if prev.exists() {
            fs::remove_dir_all(&prev).with_context(|| format!("removing {}", prev.display()))?;
        }
        Ok(())
    }
}

/// Finishes whatever a kill interrupted in `dir`'s saves, so that `dir` itself holds the
/// newest complete checkpoint: a verified `.partial` is swapped in, an unverified one (a save
/// killed while writing: never complete) removed, and a lone `.prev` renamed back. Safe to
/// run again after a kill at any point of it.
pub fn recover(dir: &Path) -> Result<()> {
    let (partial, prev) = (sibling(dir, ".partial"), sibling(dir, ".prev"));
    let mut swap = Swap::default();
    if is_complete(&partial, true) {
        eprintln!(
            "note: {} is a complete save that a kill left unswapped; putting it in place",
            partial.display()
        );
        return swap.partial_into_place(dir);
    }
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing the unfinished {}", partial.display()))?;
    }
    if !dir.exists() && is_complete(&prev, false) {
        swap.rename(&prev, dir)?;
    }
    Ok(())
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
    if let Some(parent) = dir.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    // Finish an interrupted swap first: a complete `.partial` may be the newest checkpoint.
    recover(dir)?;
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
    // The marker goes last: from here on the `.partial` is a complete checkpoint.
    write_marker(&partial, meta.step)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent);
    }
    kill_point("before-swap");
    Swap::default().partial_into_place(dir)
}

/// The directory holding the newest complete checkpoint written to `dir`: a `dir.partial`
/// whose completion marker verifies (a kill hit the swap of its save), else `dir` itself, else
/// `dir.prev` (a kill between the renames of a save). Reads only; [`recover`] tidies up.
pub fn resolve_dir(dir: &Path) -> Result<PathBuf> {
    let partial = sibling(dir, ".partial");
    if is_complete(&partial, true) {
        eprintln!(
            "note: using {}, a complete save whose swap into {} a kill interrupted",
            partial.display(),
            dir.display()
        );
        return Ok(partial);
    }
    if is_complete(dir, false) {
        return Ok(dir.to_path_buf());
    }
    let prev = sibling(dir, ".prev");
    if is_complete(&prev, false) {
        eprintln!(
            "note: {} is missing or incomplete; using the previous complete save {}",
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
    // A config.json that does not describe these weights (edited, or copied from another
    // model) must fail here, before a model of its dimensions is allocated.
    let held: f64 = weights.iter().map(|(_, t)| t.numel() as f64).sum();
    let described = config.num_params_f64();
    if (held - described).abs() > 0.5 {
        bail!(
            "{}: config.json describes a model of {described:.0} parameters but model.safetensors holds {held:.0}: the config does not belong to these weights (restore the config.json saved with them)",
            dir.display()
        );
    }
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
    let (vs, model) = build_model(&loaded, device)?;
    Ok((vs, model, loaded))
}

/// Builds the model of a loaded checkpoint on `device` (after checking that it fits in
/// memory) and copies its weights in, checking every name, shape and dtype.
pub fn build_model(loaded: &Loaded, device: Device) -> Result<(nn::VarStore, Gpt)> {
    crate::memory::check_inference(&loaded.config, device, &loaded.dir)?;
    let mut vs = nn::VarStore::new(device);
    let model = Gpt::new(vs.root(), &loaded.config);
    load_into(&mut vs, &loaded.weights, &loaded.dir.join("model.safetensors"))?;
    Ok((vs, model))
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

/// A reference to `dir` as a parent of a new run.
pub fn parent_ref(dir: &Path, meta: &Meta) -> ParentRef {
    ParentRef {
        path: dir.display().to_string(),
        stage: meta.stage.clone(),
        weights_sha256: meta.weights_sha256.clone(),
    }
}
