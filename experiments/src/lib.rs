//! Experiments: the field's claims about post-training, each run with one command from the
//! default run's checkpoints (`experiment run NAME`, `just experiment NAME`).
//!
//! An experiment drives the stage binaries (the same ones `just pipeline` runs, found beside
//! this one) into its own directory `runs/experiments/NAME/`, skipping every stage whose
//! checkpoint is already complete, so an interrupted experiment resumes where it stopped. It then
//! grades what it needs and writes `report.md` with a table, 95% intervals and a plot.
pub mod annotator;
pub mod confidence;
pub mod fabrication;
pub mod honesty;
mod plot;
pub mod scaling;
pub mod straight;

use anyhow::{bail, Context, Result};
use common::meta::Meta;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One experiment of the registry.
pub struct Experiment {
    /// Name on the command line.
    pub name: &'static str,
    /// The claim it measures, in one line.
    pub claim: &'static str,
    /// Runs it; returns the report's path.
    pub run: fn(&Ctx) -> Result<PathBuf>,
}

/// Every experiment, in the order `experiment list` shows them.
pub const EXPERIMENTS: &[Experiment] = &[
    Experiment {
        name: "annotator-ceiling",
        claim: "SFT caps a model at its annotators' level; RL with a verifier goes beyond it",
        run: annotator::run,
    },
    Experiment {
        name: "fabrication",
        claim: "SFT on answers about things the model never read teaches it to fabricate (Schulman)",
        run: fabrication::run,
    },
    Experiment {
        name: "honesty-transfer",
        claim: "Honesty is horizontal: rewarding \"I don't know\" on some subjects carries over to others",
        run: honesty::run,
    },
    Experiment {
        name: "straight-to-rl",
        claim: "RL straight from the base model (no SFT) is inefficient",
        run: straight::run,
    },
    Experiment {
        name: "confidence-targets",
        claim: "Scored with a penalty for confident errors, which stage earns most (right +1, I don't know 0, wrong -t/(1-t))",
        run: confidence::run,
    },
    Experiment {
        name: "rl-scaling",
        claim: "RL's held-out gain grows with model size, RL steps and fresh prompts (tiny, default, d6)",
        run: scaling::run,
    },
];

/// Finds an experiment by name.
pub fn find(name: &str) -> Result<&'static Experiment> {
    EXPERIMENTS.iter().find(|e| e.name == name).with_context(|| {
        let names: Vec<&str> = EXPERIMENTS.iter().map(|e| e.name).collect();
        format!("no experiment named {name:?} (known: {})", names.join(", "))
    })
}

/// Where an experiment reads and writes.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Directory holding the stage binaries (pretrain, sft, rl, datasets, ...).
    pub bin_dir: PathBuf,
    /// The run whose checkpoints the experiment starts from (built when missing).
    pub base: PathBuf,
    /// Directory of the stage configs (pretrain.toml, midtrain.toml, sft.toml, rl.toml).
    pub configs: PathBuf,
    /// The world the base run trained on (its manifest gives the seed and scale).
    pub world: PathBuf,
    /// This experiment's output directory.
    pub out: PathBuf,
    /// Device passed to every stage (None: the configs' choice).
    pub device: Option<String>,
    /// annotator-ceiling: the annotators to compare with the base run's perfect ones.
    pub annotators: Vec<(world::Slips, f64)>,
    /// fabrication: the shares of fabricated SFT fact answers to compare with the base run's 0.
    pub shares: Vec<f64>,
    /// honesty-transfer: the entity kinds RL asks unanswerable questions about.
    pub trained_kinds: Vec<world::Kind>,
    /// rl-scaling: the model presets compared.
    pub sizes: Vec<String>,
    /// rl-scaling: RL steps per size.
    pub rl_steps: u64,
    /// rl-scaling: held-out grading every this many RL steps.
    pub eval_every: u64,
}

impl Ctx {
    /// The stage binary `exe`, beside this one.
    pub fn exe(&self, exe: &str) -> PathBuf {
        self.bin_dir.join(exe)
    }

    /// Runs a stage binary to completion, its progress on this terminal; an error names the
    /// command line.
    pub fn stage(&self, exe: &str, args: &[OsString]) -> Result<()> {
        let path = self.exe(exe);
        anyhow::ensure!(
            path.exists(),
            "{} is missing: build the workspace first (just build)",
            path.display()
        );
        let mut args = args.to_vec();
        if let Some(d) = &self.device {
            if exe != "datasets" {
                args.extend(["--device".into(), d.into()]);
            }
        }
        let line = std::iter::once(path.display().to_string())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        eprintln!("experiment: $ {line}");
        let status = Command::new(&path)
            .args(&args)
            .status()
            .with_context(|| format!("starting {line}"))?;
        if !status.success() {
            bail!("{line} failed ({status})");
        }
        Ok(())
    }

    /// A config file of `--configs`.
    pub fn config(&self, stage: &str) -> PathBuf {
        self.configs.join(format!("{stage}.toml"))
    }

    /// Makes sure the base run has complete checkpoints up to `upto` (pretrain, midtrain, sft
    /// or rl), running the missing stages exactly as `just pipeline` does.
    pub fn ensure_base(&self, upto: &str) -> Result<()> {
        const LADDER: [&str; 4] = ["pretrain", "midtrain", "sft", "rl"];
        let last = LADDER
            .iter()
            .position(|s| *s == upto)
            .with_context(|| format!("unknown stage {upto}"))?;
        if !self.world.join("manifest.json").exists() {
            self.stage("datasets", &["build".into(), "--out".into(), self.world.clone().into()])?;
        }
        for (i, stage) in LADDER.iter().enumerate().take(last + 1) {
            let out = self.base.join(stage);
            if is_complete(&out) {
                continue;
            }
            let mut args: Vec<OsString> = vec!["--config".into(), self.config(stage).into()];
            if i > 0 {
                args.extend(["--init".into(), self.base.join(LADDER[i - 1]).into()]);
            }
            args.extend(["--out".into(), out.into(), "--resume".into()]);
            self.stage(stage, &args)?;
        }
        Ok(())
    }
}

impl Ctx {
    /// Writes the experiment's `report.md`; returns its path.
    pub fn write_report(&self, md: &str) -> Result<PathBuf> {
        let path = self.out.join("report.md");
        write_atomic(&path, md)?;
        Ok(path)
    }

    /// A stage config of `--configs` (`stage.toml`), parsed; with its path.
    pub fn stage_config(&self, stage: &str) -> Result<(PathBuf, toml::Value)> {
        let path = self.config(stage);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let cfg = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok((path, cfg))
    }

    /// SFT from the base run's midtrain checkpoint on the conversations of a variant of the
    /// base world (`datasets build <world_args>` into `dir/data`, same seed and scale), then RL
    /// from that SFT model with the base run's RL config: `dir/sft`, `dir/rl`. `built` says
    /// whether an existing `dir/data/manifest.json` already has these settings. Complete stages
    /// are skipped.
    pub fn sft_rl_on_world(
        &self,
        dir: &Path,
        world_args: &[String],
        built: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<()> {
        let data = dir.join("data");
        let ready = std::fs::read_to_string(data.join("manifest.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|m| built(&m));
        if !ready {
            let (seed, scale) = world_seed(&self.world)?;
            let mut args: Vec<OsString> = vec![
                "build".into(),
                "--seed".into(),
                seed.to_string().into(),
                "--scale".into(),
                scale.into(),
            ];
            args.extend(world_args.iter().map(OsString::from));
            args.extend(["--out".into(), data.clone().into()]);
            self.stage("datasets", &args)?;
        }
        // The SFT config's mix, reading this world's conversations instead of the base world's.
        let (sft_cfg, cfg) = self.stage_config("sft")?;
        let mix = cfg
            .get("data")
            .and_then(|d| d.get("mix"))
            .and_then(|m| m.as_str())
            .with_context(|| format!("{} has no data.mix", sft_cfg.display()))?;
        let text = std::fs::read_to_string(mix)
            .with_context(|| format!("reading {mix} (data.mix of {})", sft_cfg.display()))?;
        // Paths in the mix as written: `path = "data/default/sft/train.parquet"`.
        let from = format!("\"{}/sft/", self.world.display());
        anyhow::ensure!(
            text.contains(&from),
            "the SFT mix {mix} reads no file under {}/sft/: this experiment swaps the world's \
             conversations for other annotators', so the mix must read them (or pass --world)",
            self.world.display()
        );
        let mix_out = dir.join("sft-mix.toml");
        write_atomic(&mix_out, &text.replace(&from, &format!("\"{}/sft/", data.display())))?;
        let sft = dir.join("sft");
        self.stage(
            "sft",
            &[
                "--config".into(),
                sft_cfg.into(),
                "--mix".into(),
                mix_out.into(),
                "--init".into(),
                self.base.join("midtrain").into(),
                "--out".into(),
                sft.clone().into(),
                "--resume".into(),
            ],
        )?;
        self.stage(
            "rl",
            &[
                "--config".into(),
                self.config("rl").into(),
                "--init".into(),
                sft.into(),
                "--out".into(),
                dir.join("rl").into(),
                "--resume".into(),
            ],
        )
    }
}

/// A grade of a checkpoint's greedy answers, cached beside an experiment's report so that a
/// rerun grades only what changed.
pub trait Grade: serde::Serialize + serde::de::DeserializeOwned {
    /// The weights graded (`model.safetensors`' SHA-256).
    fn weights_sha256(&self) -> &str;
    /// Whether it grades exactly `n` tasks.
    fn covers(&self, n: usize) -> bool;
}

/// Checkpoint `ckpt`'s greedy answers to `tasks` (see [`greedy_answers`]), summarised by
/// `summarise` (given the weights' SHA-256 and one record per task, in order). The grade is
/// cached in `cache` and reused while the weights and the number of tasks are the same.
pub fn cached_grade<G: Grade>(
    ckpt: &Path,
    tasks: &[common::verify::Task],
    cache: &Path,
    device: &common::device::DeviceChoice,
    what: &str,
    summarise: impl FnOnce(String, &[common::tasks::SampleLog]) -> G,
) -> Result<G> {
    let sha = read_meta(ckpt)?.weights_sha256;
    if let Some(g) = std::fs::read_to_string(cache)
        .ok()
        .and_then(|t| serde_json::from_str::<G>(&t).ok())
        .filter(|g| g.weights_sha256() == sha && g.covers(tasks.len()))
    {
        return Ok(g);
    }
    let log = greedy_answers(ckpt, tasks, device, what)?;
    let g = summarise(sha, &log);
    write_atomic(cache, &serde_json::to_string_pretty(&g)?)?;
    Ok(g)
}

/// Greedy answers of checkpoint `ckpt` to `tasks` (64 tokens at most, as RL's held-out eval),
/// graded by the shared verifiers: one record per task, in order.
pub fn greedy_answers(
    ckpt: &Path,
    tasks: &[common::verify::Task],
    device: &common::device::DeviceChoice,
    what: &str,
) -> Result<Vec<common::tasks::SampleLog>> {
    use common::verify::{Grader, ProgramExec, RewardWeights};
    eprintln!("experiment: grading {} on {} {what}", ckpt.display(), tasks.len());
    let device = device.resolve()?;
    let (_vs, model, loaded) = common::checkpoint::load_model(ckpt, device)?;
    let grader = Grader::new(RewardWeights::default(), ProgramExec::default());
    let opts = common::tasks::EvalOptions {
        sampling: common::sampling::SamplingConfig::greedy(64),
        samples: 1,
        batch_size: 125,
        device,
        progress: Some("grading".into()),
    };
    let log = common::tasks::evaluate_tasks(&model, &loaded.tok, tasks, &grader, &opts)?.log;
    anyhow::ensure!(
        log.len() == tasks.len() && log.iter().zip(tasks).all(|(r, t)| r.prompt == t.prompt),
        "graded answers out of order"
    );
    Ok(log)
}

/// Whether `dir` holds a checkpoint that ran to its end.
pub fn is_complete(dir: &Path) -> bool {
    read_meta(dir).is_ok_and(|m| m.complete)
}

/// A checkpoint's `meta.json`.
pub fn read_meta(dir: &Path) -> Result<Meta> {
    let p = dir.join("meta.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// The seed and scale a world was built with (from its `manifest.json`).
pub fn world_seed(world: &Path) -> Result<(u64, String)> {
    let p = world.join("manifest.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let m: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    let seed = m["seed"]
        .as_u64()
        .with_context(|| format!("{} has no seed: not written by `datasets build`", p.display()))?;
    Ok((seed, m["scale"].as_str().unwrap_or("small").to_string()))
}

/// `x` as a percentage with one decimal.
pub fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// `x% (lo–hi)` for a share and its 95% interval.
pub fn pct_ci(x: f64, ci: (f64, f64)) -> String {
    format!("{:.1}% ({:.1}–{:.1})", 100.0 * x, 100.0 * ci.0, 100.0 * ci.1)
}

/// A share `rate` of `n` questions back as a count (rates in meta.json are counts over `n`).
pub fn count_of(rate: f64, n: usize) -> usize {
    (rate * n as f64).round() as usize
}

/// `x% (lo–hi)` for a share `rate` of `n` questions and its 95% Wilson interval.
pub fn share_ci(rate: f64, n: usize) -> String {
    pct_ci(rate, common::tasks::wilson(count_of(rate, n), n))
}

/// Writes `text` to `path` through a temporary file and a rename (never half a report).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
