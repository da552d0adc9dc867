//! The RL stage's configuration (`configs/rl.toml`): the shared `[train]` section, plus
//! `[rl]` (GRPO's own knobs), `[data]` (prompts), `[sampling]`, `[rewards]`, `[verifier]`
//! and `[eval]`.
use crate::grpo::LossKind;
use anyhow::{bail, Context, Result};
use common::config::{apply_paths, load_toml, CommonArgs, TrainSection};
use common::sampling::SamplingConfig;
use common::tasks::TaskSource;
use common::verify::RewardWeights;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What to do with completions cut at `max_new_tokens` (they never reached `<|end|>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlong {
    /// Train on them like any other completion (their reward is usually zero).
    Keep,
    /// Leave them out of the loss.
    Mask,
    /// Subtract `overlong_penalty` from their reward.
    Penalty,
}

/// `[data]` of the RL config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlData {
    /// A prompt mix (`.toml`: generators and Parquet prompt sets, with a curriculum; see
    /// `common::prompts`) or one Parquet file of tasks (string columns prompt, answer, task).
    pub prompts: PathBuf,
}

/// `[rl]`: the algorithm's own knobs (optimisation is in the shared `[train]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlSection {
    /// Distinct prompts per step.
    pub prompts_per_step: usize,
    /// Completions sampled per prompt (G). Sequences per step = prompts_per_step × group_size.
    pub group_size: usize,
    /// Optimizer steps on each batch of samples (the clip matters from the second on).
    #[serde(default = "one_u")]
    pub inner_epochs: usize,
    /// grpo | dr_grpo | dapo.
    #[serde(default = "default_loss")]
    pub loss: LossKind,
    /// Lower clip range ε_low (ratio ≥ 1 − ε_low).
    #[serde(default = "default_clip")]
    pub clip_low: f64,
    /// Upper clip range ε_high (ratio ≤ 1 + ε_high); `dapo` uses a larger one (0.28).
    pub clip_high: Option<f64>,
    /// Weight of the KL penalty to the starting model (0 = no reference model is kept).
    #[serde(default)]
    pub kl_coef: f64,
    /// Dynamic sampling: up to this many extra sampling rounds per step replace groups whose
    /// rewards all agree (they carry no gradient), and such groups leave the update. 0 = off.
    #[serde(default)]
    pub resample_rounds: usize,
    /// Divide advantages by the group std (default: yes for grpo/dapo, no for dr_grpo).
    pub scale_rewards: Option<bool>,
    /// keep | mask | penalty (default: penalty for dapo, keep otherwise).
    pub overlong: Option<Overlong>,
    /// Reward subtracted from truncated completions under `overlong = "penalty"`.
    #[serde(default = "default_overlong_penalty")]
    pub overlong_penalty: f64,
}

fn one_u() -> usize {
    1
}
fn default_loss() -> LossKind {
    LossKind::Grpo
}
fn default_clip() -> f64 {
    0.2
}
fn default_overlong_penalty() -> f64 {
    0.5
}

/// `[verifier]`: limits of program execution.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierSection {
    /// Wall-clock limit of a program, in milliseconds.
    #[serde(default = "default_timeout")]
    pub program_timeout_ms: u64,
    /// Address-space limit of a program, in megabytes.
    #[serde(default = "default_mem")]
    pub program_memory_mb: u64,
    /// Python interpreter.
    #[serde(default = "default_python")]
    pub python: String,
    /// Run model-written programs even where this machine's sandbox lacks a guarantee
    /// (unprivileged user namespaces, Landlock, seccomp): a loud warning instead of refusing.
    /// Same as `LIB2EXPERT_ALLOW_WEAK_SANDBOX=1`. Off: program tasks count as verifier errors.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_weak_sandbox: bool,
}

impl VerifierSection {
    /// The program-execution verifier these settings describe.
    pub fn program_exec(&self) -> common::verify::ProgramExec {
        common::verify::ProgramExec {
            python: self.python.clone(),
            timeout: std::time::Duration::from_millis(self.program_timeout_ms),
            memory_mb: self.program_memory_mb,
            allow_weak: self.allow_weak_sandbox,
        }
    }
}

fn default_timeout() -> u64 {
    2000
}
fn default_mem() -> u64 {
    256
}
fn default_python() -> String {
    "python3".into()
}

impl Default for VerifierSection {
    fn default() -> Self {
        VerifierSection {
            program_timeout_ms: default_timeout(),
            program_memory_mb: default_mem(),
            python: default_python(),
            allow_weak_sandbox: false,
        }
    }
}

/// `[eval]`: held-out task evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlEval {
    /// Held-out tasks: a Parquet file in this project's layout, or a table naming its
    /// columns and answer format (`{ path = "...", columns = { prompt = "question" }, kind =
    /// "gsm8k", answers = "gsm8k" }`, see `common::tasks::TaskSource`).
    pub tasks: TaskSource,
    /// A harder held-out slice (e.g. `data/default/eval/hard.parquet`: one more operation
    /// than SFT ever showed), graded at the start and the end; a path or a table like `tasks`.
    pub hard_tasks: Option<TaskSource>,
    /// Multi-turn follow-ups (e.g. `data/default/eval/multiturn.parquet`: questions that refer
    /// back to an earlier turn, given as history), graded at the start and the end,
    /// `multiturn_per_kind` of each kind: does RL on single questions keep the model's
    /// multi-turn skill? A path or a table like `tasks`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiturn_tasks: Option<TaskSource>,
    /// Multi-turn follow-ups graded per kind.
    #[serde(
        default = "default_multiturn_per_kind",
        skip_serializing_if = "is_default_multiturn_per_kind"
    )]
    pub multiturn_per_kind: usize,
    /// Questions per task kind.
    #[serde(default = "default_rl_per_kind")]
    pub per_kind: usize,
    /// Evaluate every this many steps (0 = start and end only).
    #[serde(default)]
    pub every: u64,
    /// Longest answer.
    #[serde(default = "default_eval_new")]
    pub max_new_tokens: i64,
    /// Rows generated together.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Also grade up to this many per task of the training prompts the run will sample, at
    /// the start and at the end (0 = off): a gain there but not on held-out questions means
    /// RL memorised answers instead of gaining skill.
    #[serde(default)]
    pub seen_per_kind: usize,
}

impl From<&RlEval> for common::config::GradingKnobs {
    fn from(e: &RlEval) -> Self {
        common::config::GradingKnobs {
            per_kind: Some(e.per_kind),
            max_new_tokens: Some(e.max_new_tokens),
            batch_size: Some(e.batch_size),
        }
    }
}

fn default_rl_per_kind() -> usize {
    250
}
fn default_multiturn_per_kind() -> usize {
    100
}
// Left out of saved configs at its default, so runs started before it existed resume.
fn is_default_multiturn_per_kind(n: &usize) -> bool {
    *n == default_multiturn_per_kind()
}
fn default_eval_new() -> i64 {
    64
}
fn default_eval_batch() -> usize {
    128
}

/// The RL stage's configuration (`configs/rl.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlConfig {
    /// Directory that relative data paths are found under (a Parquet prompt file, the files
    /// and world of a prompt mix, the eval task files); default: the current directory.
    /// `--data-root` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_root: Option<PathBuf>,
    /// Checkpoint to start from (the SFT model).
    pub init: Option<PathBuf>,
    /// Output checkpoint.
    pub out: Option<PathBuf>,
    /// Training prompts.
    pub data: RlData,
    /// Optimisation, shared with the LM stages.
    pub train: TrainSection,
    /// The algorithm.
    pub rl: RlSection,
    /// Sampling during training (log-probs are recomputed with the same settings).
    #[serde(default)]
    pub sampling: SamplingConfig,
    /// Reward weights.
    #[serde(default)]
    pub rewards: RewardWeights,
    /// Program execution limits.
    #[serde(default)]
    pub verifier: VerifierSection,
    /// Held-out evaluation.
    pub eval: Option<RlEval>,
}

impl RlConfig {
    /// Loads, applies the command line, validates.
    pub fn load(path: &Path, args: &CommonArgs) -> Result<Self> {
        let mut c: RlConfig = load_toml(path)?;
        apply_paths(&mut c.init, &mut c.out, args, "rl");
        c.train.apply(args);
        if let Some(p) = &args.mix {
            // RL's data is its prompts: a prompt mix, or one Parquet file of tasks.
            c.data.prompts = p.clone();
        }
        if let Some(r) = &args.data_root {
            c.data_root = Some(r.clone());
        }
        c.validate()
            .with_context(|| format!("invalid configuration {}", path.display()))?;
        Ok(c)
    }

    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        if self.train.batch_size.is_some() {
            bail!("train.batch_size is the LM stages' batch; RL's is rl.prompts_per_step x rl.group_size: drop it");
        }
        let r = &self.rl;
        if r.prompts_per_step == 0 || r.group_size < 2 {
            bail!(
                "rl.prompts_per_step must be >= 1 and rl.group_size >= 2 (advantages compare samples within a group)"
            );
        }
        if r.inner_epochs == 0 {
            bail!("rl.inner_epochs must be >= 1");
        }
        if !(r.clip_low > 0.0 && r.clip_low < 1.0) || self.clip_high() <= 0.0 {
            bail!("rl.clip_low must be in (0, 1) and rl.clip_high > 0");
        }
        if r.kl_coef < 0.0 {
            bail!("rl.kl_coef must be >= 0");
        }
        self.sampling.validate()?;
        if self.sampling.temperature == 0.0 {
            bail!("sampling.temperature = 0 gives identical samples in a group (no learning signal); use about 1.0");
        }
        Ok(())
    }

    /// The checkpoint directory.
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| common::config::default_out("rl"))
    }

    /// The data root relative data paths are found under (`None`: the current directory).
    pub fn root(&self) -> Option<&Path> {
        self.data_root.as_deref()
    }

    /// ε_high.
    pub fn clip_high(&self) -> f64 {
        self.rl.clip_high.unwrap_or(if self.rl.loss == LossKind::Dapo {
            0.28
        } else {
            self.rl.clip_low
        })
    }

    /// Whether advantages are divided by the group std.
    pub fn scale_rewards(&self) -> bool {
        self.rl.scale_rewards.unwrap_or(self.rl.loss != LossKind::DrGrpo)
    }

    /// Overlong policy.
    pub fn overlong(&self) -> Overlong {
        self.rl.overlong.unwrap_or(if self.rl.loss == LossKind::Dapo {
            Overlong::Penalty
        } else {
            Overlong::Keep
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_loads_with_its_knobs() -> Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/rl.toml");
        let cfg = RlConfig::load(&path, &CommonArgs::default())?;
        // configs/rl.toml: 16 prompts x 8 samples in micro-batches of 64, LoRA rank 8 at 1e-4,
        // no weight decay (RL's default before the shared section).
        assert_eq!((cfg.rl.prompts_per_step, cfg.rl.group_size), (16, 8));
        assert_eq!(cfg.train.micro_batch_size, 64);
        assert_eq!(
            (cfg.train.lora_rank, cfg.train.lr, cfg.train.weight_decay),
            (8, 1e-4, 0.0)
        );
        assert_eq!((cfg.train.beta1, cfg.train.beta2, cfg.train.eps), (0.9, 0.95, 1e-8));
        let args = CommonArgs {
            steps: Some(2),
            lr: Some(3e-5),
            ..Default::default()
        };
        let cfg = RlConfig::load(&path, &args)?;
        assert_eq!((cfg.train.steps, cfg.train.warmup_steps, cfg.train.lr), (2, 2, 3e-5));
        Ok(())
    }

    #[test]
    fn allow_weak_sandbox_is_a_config_key_that_reaches_the_verifier() -> Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/rl.toml");
        let cfg = RlConfig::load(&path, &CommonArgs::default())?;
        assert!(!cfg.verifier.allow_weak_sandbox, "off in the shipped config");
        assert!(!cfg.verifier.program_exec().allow_weak);
        let dir = tempfile::tempdir()?;
        let weak = dir.path().join("rl.toml");
        std::fs::write(
            &weak,
            std::fs::read_to_string(&path)?.replace("allow_weak_sandbox = false", "allow_weak_sandbox = true"),
        )?;
        let cfg = RlConfig::load(&weak, &CommonArgs::default())?;
        let exec = cfg.verifier.program_exec();
        assert!(exec.allow_weak, "the key opts the verifier in");
        assert_eq!(exec.timeout, std::time::Duration::from_millis(2000));
        Ok(())
    }

    #[test]
    fn grading_reads_back_from_the_saved_config() -> Result<()> {
        // `evaluate` grades an RL checkpoint as its `[eval]` did: what a run saves in meta.json.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/rl.toml");
        let cfg = RlConfig::load(&path, &CommonArgs::default())?;
        let eval = cfg.eval.as_ref().expect("the shipped config grades held-out tasks");
        let saved = common::config::GradingKnobs::saved_in(&serde_json::to_value(&cfg)?);
        assert_eq!(saved, common::config::GradingKnobs::from(eval));
        assert!(saved.per_kind.is_some() && saved.max_new_tokens.is_some() && saved.batch_size.is_some());
        Ok(())
    }

    #[test]
    fn an_lm_batch_size_is_refused() -> Result<()> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/rl.toml");
        let mut cfg = RlConfig::load(&path, &CommonArgs::default())?;
        cfg.train.batch_size = Some(32);
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("rl.prompts_per_step x rl.group_size"), "{e}");
        Ok(())
    }
}
