//! The stage harness every training stage runs on (pretrain, midtrain, SFT, RL).
//!
//! [`Stage::open`] makes the decisions every stage makes, once: the output directory is
//! checked (no file, no files a save did not write) and locked (one run at a time, see
//! [`crate::outdir`]), then found fresh, to resume, or complete (nothing to do; a checkpoint
//! made with other settings needs `--force`); the model must fit in memory
//! ([`crate::memory`]); the weights come from this run's own
//! checkpoint (resume), from `--init`, or from scratch; LoRA adapters are attached (and
//! restored when resuming); the optimiser is built over what trains (and its state
//! restored); the metrics log is opened (keeping a resumed run's lines); Ctrl-C and SIGTERM
//! raise a flag. The stage's own loop then calls [`Stage::save`] for periodic checkpoints,
//! [`Stage::check_interrupt`] once per step, and [`Stage::finish`] at the end.
//!
//! What a stage keeps to resume (step, data cursor, prompt order, …) is its own
//! [`TrainerState`]; the harness writes it to `state/trainer.json` beside the optimiser.
use crate::checkpoint::{self, Contents, Meta, TrainState};
use crate::config::TrainSection;
use crate::device::{configure_threads, device_name, seed_everything};
use crate::lora::Adapters;
use crate::metrics::MetricsLog;
use crate::model::{Gpt, GptConfig};
use crate::optim::AdamW;
use crate::outdir::{OutRequest, OutState};
use crate::tokenizer::Tok;
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Instant;
use tch::{nn, Device};

/// What a stage saves to resume: serialised to `state/trainer.json`; its counters go into
/// `meta.json` (`step`, `tokens_seen`, `train_secs`).
pub trait TrainerState: Serialize + DeserializeOwned {
    /// Optimizer steps taken.
    fn step(&self) -> u64;
    /// Tokens consumed (LM stages) or sampled (RL).
    fn tokens(&self) -> u64;
    /// Wall-clock seconds spent training, across resumes.
    fn secs(&self) -> f64;
}

/// A model built from nothing: its tokenizer and architecture (weights are initialised from
/// the seed).
pub type Scratch = (Tok, GptConfig);

/// How to open a stage.
pub struct StageOptions<'a> {
    /// `pretrain`, `midtrain`, `sft` or `rl` (written into `meta.json`, checked on resume).
    pub stage: &'static str,
    /// The checkpoint directory to write.
    pub out: PathBuf,
    /// Checkpoint (or Hugging Face directory) to start from.
    pub init: Option<PathBuf>,
    /// `--resume`: continue a partial run in `out` (a complete one is left as is).
    pub resume: bool,
    /// `--force`: accept a checkpoint in `out` made with other settings (see
    /// [`crate::outdir::prepare_out`]).
    pub force: bool,
    /// What the run holds besides the model, for the memory check before the model is built
    /// (`lora` is filled in from `train`).
    pub workload: crate::memory::Workload,
    /// The shared training section: device, seed, precision, optimiser, LoRA.
    pub train: &'a TrainSection,
    /// The resolved configuration, saved in `meta.json`.
    pub config: Value,
    /// What `--init` usually is, for the error when it is missing (e.g. `runs/default/sft`).
    pub init_example: &'a str,
}

/// What [`Stage::open`] found.
pub enum Opened<S> {
    /// `out` already holds a complete checkpoint of this stage: nothing to do.
    Complete(Box<Meta>),
    /// A run to train: fresh (`resumed` is `None`) or continuing the saved state.
    Run {
        /// The harness.
        stage: Box<Stage>,
        /// The trainer state of the run being resumed.
        resumed: Option<S>,
    },
}

/// A running stage: the model, what trains it, and where it goes.
pub struct Stage {
    /// Stage name.
    pub name: &'static str,
    /// Checkpoint directory.
    pub out: PathBuf,
    /// Device it trains on.
    pub device: Device,
    /// libtorch's intra-op threads.
    pub threads: usize,
    /// The model's own weights (frozen under LoRA).
    pub vs: nn::VarStore,
    /// The model.
    pub model: Gpt,
    /// Its tokenizer.
    pub tok: Tok,
    /// The metadata written with every save (metrics go into `meta.metrics`).
    pub meta: Meta,
    /// LoRA adapters, when `train.lora_rank > 0`.
    pub adapters: Option<Adapters>,
    /// AdamW over what trains (the adapters, or every weight).
    pub opt: AdamW,
    /// The live metrics log (kept in memory only on ranks other than 0).
    pub log: MetricsLog,
    /// The ranks of a data-parallel run (world size 1 without torchrun).
    pub dist: &'static crate::dist::Dist,
    /// The lock on `out`, held while the stage runs (by rank 0 alone).
    _lock: Option<crate::outdir::OutLock>,
    /// When this process opened the stage, and the wall time of the runs before it (resumed):
    /// `meta.wall_secs` at each save.
    opened: Instant,
    wall_before: f64,
}

/// What rank 0 found in `--out`, sent to the other ranks (which never touch it).
#[derive(serde::Serialize, serde::Deserialize)]
enum Found {
    Fresh,
    Complete(Box<Meta>),
    Resume(Value),
}

static STOP: AtomicBool = AtomicBool::new(false);
static HANDLER: Once = Once::new();

/// Installs (once per process) the Ctrl-C / SIGTERM handler that raises the stop flag, and
/// lowers the flag.
fn install_stop_flag() {
    HANDLER.call_once(|| {
        // A process that already installed a handler of its own keeps it.
        let _ = ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst));
    });
    STOP.store(false, Ordering::SeqCst);
}

/// Where the weights of a run come from.
enum Source<'a> {
    /// This run's own checkpoint (`dir`), resumed.
    Own(&'a Path),
    /// A resumed LoRA run: the starting weights of `init` plus the adapters of `dir`
    /// (its saved weights have the adapters merged in).
    InitPlusOwn(&'a Path, &'a Path),
    /// A new run from `init`.
    Init(&'a Path),
    /// A new run from scratch.
    Scratch,
}

impl Stage {
    /// Opens the stage (see the module documentation). `scratch` builds a tokenizer and an
    /// architecture for a run without `--init`; stages that need a checkpoint pass `None`.
    pub fn open<S: TrainerState>(
        opts: StageOptions<'_>,
        scratch: Option<&dyn Fn() -> Result<Scratch>>,
    ) -> Result<Opened<S>> {
        let stage = opts.stage;
        let opened = Instant::now();
        let threads = configure_threads();
        let ranks = crate::dist::ranks();
        let device = match opts.train.device.resolve()? {
            // One GPU per rank of a machine.
            Device::Cuda(_) if ranks.world > 1 => Device::Cuda(ranks.local_rank),
            d => d,
        };
        let dist = crate::dist::init(device)?;
        // Rank 0 owns --out: checks, locks and reads it, and tells the other ranks what it found.
        let (lock, found) = if dist.is_main() {
            // A file, or files this run did not write, are refused before anything else.
            crate::outdir::check(&opts.out)?;
            // One run per --out at a time; the kernel drops the lock when this process ends.
            let lock = crate::outdir::lock(&opts.out)?;
            let request = OutRequest {
                stage,
                resume: opts.resume,
                force: opts.force,
                config: &opts.config,
                steps: opts.train.steps,
            };
            (Some(lock), Some(crate::outdir::prepare_out(&opts.out, &request)?))
        } else {
            (None, None)
        };
        let (resume_dir, resumed) = match found_on_every_rank(dist, found)? {
            (Found::Fresh, _) => (None, None),
            (Found::Complete(meta), _) => return Ok(Opened::Complete(meta)),
            (Found::Resume(json), own) => {
                let saved: S = serde_json::from_value(json)
                    .with_context(|| format!("reading the trainer state of {}", opts.out.display()))?;
                if dist.is_main() {
                    eprintln!("{stage}: resuming {} from step {}", opts.out.display(), saved.step());
                }
                match own {
                    Some((dir, state, log)) => (Some(dir), Some((saved, Some((state, log))))),
                    // Other ranks build the model as a new run would; rank 0's weights and
                    // optimiser state are copied in below.
                    None => (None, Some((saved, None))),
                }
            }
        };
        seed_everything(opts.train.seed);
        let lora = opts.train.lora()?;
        if lora.is_some() && opts.init.is_none() {
            bail!("train.lora_rank > 0 adapts an existing model: pass --init <checkpoint> (or set lora_rank = 0 to train from scratch)");
        }
        let source = match (&resume_dir, &opts.init) {
            (Some(dir), Some(init)) if lora.is_some() => Source::InitPlusOwn(init, dir),
            (Some(dir), _) => Source::Own(dir),
            (None, Some(init)) => Source::Init(init),
            (None, None) if scratch.is_some() => Source::Scratch,
            (None, None) => bail!(
                "{stage} starts from a checkpoint: pass --init <dir> (e.g. {}) or set `init` in the config",
                opts.init_example
            ),
        };
        let workload = crate::memory::Workload {
            lora: lora.is_some(),
            ..opts.workload
        };
        let fits = |cfg: &GptConfig| crate::memory::check_training(cfg, &workload, device, stage);
        let (mut vs, mut model, tok, meta) = load_weights(stage, source, device, scratch, &fits)?;
        model.set_compute_kind(opts.train.precision.kind());
        let saved = resumed
            .as_ref()
            .and_then(|(_, own)| own.as_ref())
            .zip(resume_dir.as_deref())
            .map(|((state, _), dir)| (state.tensors.as_slice(), dir));
        let adapters = crate::lora::setup(&mut model, &mut vs, lora, opts.train.seed, saved)?;
        let mut opt = AdamW::new(adapters.as_ref().map_or(&vs, |a| &a.vs), opts.train.adamw());
        let (resumed, previous_log) = match resumed {
            Some((saved, own)) => {
                let step = saved.step();
                let log = match own {
                    Some((state, log)) => {
                        opt.load_state_tensors(&state.tensors)?;
                        log
                    }
                    None => Vec::new(),
                };
                (Some(saved), Some((step, log)))
            }
            None => (None, None),
        };
        sync_weights(dist, &vs, adapters.as_ref(), &mut opt)?;
        let log = if dist.is_main() {
            MetricsLog::open(&opts.out, stage, previous_log)?
        } else {
            MetricsLog::in_memory()
        };
        let mut meta = meta;
        if resumed.is_some() && dist.is_main() {
            let before = meta.world_size.unwrap_or(1);
            if before != dist.world {
                eprintln!(
                    "{stage}: the checkpoint was saved by {before} rank(s) and resumes with {}: the same run goes on \
                     (train.batch_size is the global batch, shared out over the ranks; the data cursor is the same for any number)",
                    dist.world
                );
            }
        }
        meta.world_size = dist.is_parallel().then_some(dist.world);
        meta.stage = stage.to_string();
        // A run in progress is not complete (a complete run continued with --force neither).
        meta.complete = false;
        meta.total_steps = opts.train.steps;
        meta.device = device_name(device);
        meta.machine = Some(crate::provenance::Machine::detect());
        meta.threads = Some(threads);
        meta.config = opts.config;
        // A new run starts from 0 (its meta is new); a resumed one adds to its own.
        let wall_before = meta.wall_secs;
        install_stop_flag();
        let stage = Stage {
            name: stage,
            out: opts.out,
            device,
            threads,
            vs,
            model,
            tok,
            meta,
            adapters,
            opt,
            log,
            dist,
            _lock: lock,
            opened,
            wall_before,
        };
        Ok(Opened::Run {
            stage: Box::new(stage),
            resumed,
        })
    }

    /// The variables the optimiser trains: the adapters under LoRA, else the model's own.
    pub fn trainable(&self) -> &nn::VarStore {
        self.adapters.as_ref().map_or(&self.vs, |a| &a.vs)
    }

    /// One line about the adapters, when there are any (`LoRA rank r … trainable …`).
    pub fn describe_adapters(&self) {
        if let Some(a) = &self.adapters {
            eprintln!("{}: {}", self.name, a.describe(&self.vs));
        }
    }

    /// Writes a resumable checkpoint at `st` (weights with any adapters merged in, tokenizer,
    /// meta, metrics log, optimiser and trainer state).
    pub fn save<S: TrainerState>(&mut self, st: &S) -> Result<()> {
        if !self.dist.is_main() {
            // Rank 0 alone writes; the others hold the same weights.
            return Ok(());
        }
        self.meta.step = st.step();
        self.meta.tokens_seen = st.tokens();
        self.meta.train_secs = st.secs();
        self.meta.wall_secs = self.wall_before + self.opened.elapsed().as_secs_f64();
        let mut tensors = self.opt.state_tensors();
        let merged = crate::lora::save_parts(self.adapters.as_ref(), &self.vs, &self.model, &mut tensors)?;
        let state = TrainState {
            tensors,
            json: serde_json::to_value(st)?,
        };
        let contents = Contents {
            vs: merged.as_ref().unwrap_or(&self.vs),
            config: self.model.config(),
            tok: &self.tok,
            metrics_log: &self.log.lines,
            state: Some(&state),
        };
        checkpoint::save(&self.out, &contents, &mut self.meta)
    }

    /// After Ctrl-C or SIGTERM: saves `st` and returns the error that ends the run (it
    /// resumes with `--resume`). Otherwise does nothing.
    pub fn check_interrupt<S: TrainerState>(&mut self, st: &S) -> Result<()> {
        // Every rank stops at the same step when any of them was interrupted.
        if !self.dist.any(STOP.load(Ordering::SeqCst), self.device)? {
            return Ok(());
        }
        eprintln!(
            "{}: interrupted; saving step {} to {}",
            self.name,
            st.step(),
            self.out.display()
        );
        self.save(st)?;
        bail!(
            "interrupted at step {}; the checkpoint in {} resumes with --resume",
            st.step(),
            self.out.display()
        )
    }

    /// Marks the run complete, saves it with `st`, and returns its metadata.
    pub fn finish<S: TrainerState>(mut self, st: &S) -> Result<Meta> {
        self.meta.complete = true;
        self.save(st)?;
        Ok(self.meta)
    }
}

/// What rank 0 found in `--out` (`found`, on rank 0 only), on every rank: the decision, and
/// on rank 0 the resumed run's directory, state and log.
#[allow(clippy::type_complexity)]
fn found_on_every_rank(
    dist: &crate::dist::Dist,
    found: Option<OutState>,
) -> Result<(Found, Option<(PathBuf, TrainState, Vec<Value>)>)> {
    let (decision, own) = match found {
        Some(OutState::Fresh) => (Found::Fresh, None),
        Some(OutState::Complete(meta)) => (Found::Complete(meta), None),
        Some(OutState::Resume { dir, state, log }) => (Found::Resume(state.json.clone()), Some((dir, state, log))),
        // Not rank 0: filled in from rank 0's message.
        None => (Found::Fresh, None),
    };
    if !dist.is_parallel() {
        return Ok((decision, own));
    }
    let bytes = if dist.is_main() {
        serde_json::to_vec(&decision)?
    } else {
        Vec::new()
    };
    let decision: Found =
        serde_json::from_slice(&dist.broadcast_bytes(&bytes)?).context("rank 0's decision about --out")?;
    Ok((decision, own))
}

/// Copies rank 0's weights, adapters and optimiser state into every other rank's, so that all
/// start a data-parallel run from the same point (a new run, or rank 0's checkpoint).
fn sync_weights(
    dist: &crate::dist::Dist,
    vs: &nn::VarStore,
    adapters: Option<&Adapters>,
    opt: &mut AdamW,
) -> Result<()> {
    if !dist.is_parallel() {
        return Ok(());
    }
    let sorted = |vs: &nn::VarStore| {
        let mut v: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, t)| t).collect::<Vec<_>>()
    };
    let mut tensors = sorted(vs);
    if let Some(a) = adapters {
        tensors.extend(sorted(&a.vs));
    }
    dist.sync_from_main(&tensors)?;
    let state = opt.state_tensors();
    dist.sync_from_main(&state.iter().map(|(_, t)| t.shallow_clone()).collect::<Vec<_>>())?;
    opt.load_state_tensors(&state)
}

/// Builds the model, tokenizer and metadata of a run from its `source`; `fits` checks the
/// architecture against the memory available before the model is allocated.
fn load_weights(
    stage: &str,
    source: Source<'_>,
    device: Device,
    scratch: Option<&dyn Fn() -> Result<Scratch>>,
    fits: &dyn Fn(&GptConfig) -> Result<()>,
) -> Result<(nn::VarStore, Gpt, Tok, Meta)> {
    let build = |loaded: &checkpoint::Loaded| -> Result<(nn::VarStore, Gpt)> {
        fits(&loaded.config)?;
        checkpoint::build_model(loaded, device)
    };
    match source {
        Source::Own(dir) => {
            let loaded = checkpoint::load(dir)?;
            let (vs, model) = build(&loaded)?;
            Ok((vs, model, loaded.tok, loaded.meta))
        }
        Source::InitPlusOwn(init, dir) => {
            let ctx = || format!("loading --init {} (a LoRA run resumes from it)", init.display());
            let loaded = checkpoint::load(init).with_context(ctx)?;
            let (vs, model) = build(&loaded).with_context(ctx)?;
            let own = checkpoint::load(dir)?;
            Ok((vs, model, own.tok, own.meta))
        }
        Source::Init(init) => {
            let ctx = || format!("loading --init {}", init.display());
            let loaded = checkpoint::load(init).with_context(ctx)?;
            let (vs, model) = build(&loaded).with_context(ctx)?;
            let mut meta = Meta::new(stage);
            meta.parent = Some(checkpoint::parent_ref(&loaded.dir, &loaded.meta));
            Ok((vs, model, loaded.tok, meta))
        }
        Source::Scratch => {
            let build = scratch.context("no way to build a model from scratch")?;
            let (tok, cfg) = build()?;
            fits(&cfg)?;
            let vs = nn::VarStore::new(device);
            let model = Gpt::new(vs.root(), &cfg);
            Ok((vs, model, tok, Meta::new(stage)))
        }
    }
}
