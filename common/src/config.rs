//! Configuration: TOML files validated once into resolved structs, with the common
//! knobs overridable from the command line.
//!
//! Unknown keys are errors that name the key (`#[serde(deny_unknown_fields)]`).
use crate::device::DeviceChoice;
use crate::model::GptConfig;
use crate::optim::AdamWConfig;
use crate::schedule::{Schedule, ScheduleKind};
use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Reads a TOML file into `T`; errors are one line: `file:line:col: message`.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    parse_toml(&text, &path.display().to_string())
}

/// Parses TOML text into `T`, naming `origin` in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(":{line}:{col}")
            })
            .unwrap_or_default();
        anyhow!("{origin}{at}: {}", e.message().trim())
    })
}

/// Flags every stage binary takes. Values given here override the config file.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CommonArgs {
    /// Stage configuration (TOML). Every key is documented in the default files under configs/.
    #[arg(long, short = 'c', value_name = "TOML")]
    pub config: Option<PathBuf>,
    /// Checkpoint directory to start from (e.g. runs/default/midtrain); overrides `init` in the config.
    #[arg(long, value_name = "DIR")]
    pub init: Option<PathBuf>,
    /// Where to write this stage's checkpoint (default: runs/default/<stage>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Device to train on: auto (CUDA when present), cpu or cuda.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceChoice>,
    /// Random seed (data order, initialisation, sampling).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of optimizer steps (overrides train.steps).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Peak learning rate of the schedule (overrides `lr` in the config's [train] section).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Data mix file (overrides `mix` in the config's [data] section).
    #[arg(long, value_name = "TOML")]
    pub mix: Option<PathBuf>,
    /// Directory that relative data paths (Parquet files and globs in the config and its mixes,
    /// task files, the tokenizer, a prompt mix's world) are found under; overrides `data_root`
    /// in the config (default: the current directory). Config and mix files themselves are
    /// found from the current directory.
    #[arg(long, value_name = "DIR")]
    pub data_root: Option<PathBuf>,
    /// Save a resumable checkpoint every N steps (overrides train.save_every).
    #[arg(long, value_name = "N")]
    pub save_every: Option<u64>,
    /// Continue from the state saved in --out if there is one (a complete run is left as is).
    #[arg(long)]
    pub resume: bool,
    /// Accept a checkpoint in --out made with other settings. With --resume: continue it
    /// under the new settings (more steps, another lr, ...), or start over when the model,
    /// tokenizer, data, --init or LoRA shape changed. Without --resume: replace it.
    #[arg(long)]
    pub force: bool,
    /// Print the resolved configuration and exit without training.
    #[arg(long)]
    pub dry_run: bool,
}

/// `[model]`: architecture for a run that starts from scratch.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Named preset: tiny, default, long, d8, d6, d12, d20.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Overrides of single fields of the preset.
    pub n_layer: Option<i64>,
    /// Query heads.
    pub n_head: Option<i64>,
    /// Key/value heads.
    pub n_kv_head: Option<i64>,
    /// Residual width.
    pub n_embd: Option<i64>,
    /// MLP hidden width.
    pub intermediate_size: Option<i64>,
    /// Context length.
    pub max_seq_len: Option<i64>,
    /// Share input and output embeddings.
    pub tie_embeddings: Option<bool>,
}

fn default_preset() -> String {
    "default".into()
}

impl ModelSection {
    /// The architecture for a tokenizer of `vocab_size` ids.
    pub fn resolve(&self, vocab_size: i64) -> Result<GptConfig> {
        let mut c = GptConfig::preset(&self.preset, vocab_size)?;
        if let Some(v) = self.n_layer {
            c.n_layer = v;
        }
        if let Some(v) = self.n_head {
            c.n_head = v;
            c.n_kv_head = v;
        }
        if let Some(v) = self.n_kv_head {
            c.n_kv_head = v;
        }
        if let Some(v) = self.n_embd {
            c.n_embd = v;
        }
        if let Some(v) = self.intermediate_size {
            c.intermediate_size = v;
        }
        if let Some(v) = self.max_seq_len {
            c.max_seq_len = v;
        }
        if let Some(v) = self.tie_embeddings {
            c.tie_embeddings = v;
        }
        c.validate()?;
        Ok(c)
    }
}

/// `[tokenizer]`: load an existing `tokenizer.json`, or train one on the mix.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSection {
    /// Path of a `tokenizer.json` to use (when `train` is false).
    pub path: Option<PathBuf>,
    /// Train a new BPE on the stage's mix.
    #[serde(default)]
    pub train: bool,
    /// Vocabulary size of a trained tokenizer.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Megabytes of text to train the tokenizer on.
    #[serde(default = "default_tok_mb")]
    pub train_mb: usize,
}

fn default_vocab() -> usize {
    4096
}
fn default_tok_mb() -> usize {
    8
}

/// `[data]`: what the stage reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Mix file (`configs/mixes/*.toml`).
    pub mix: PathBuf,
    /// Tokens per training sequence.
    #[serde(default = "default_seq_len")]
    pub seq_len: i64,
    /// SFT (document packing): a conversation longer than `seq_len + 1` tokens is dropped
    /// (`drop`, the default: every conversation trained on keeps its final answer) or cut to
    /// its first `seq_len + 1` tokens (`cut`). Both are counted, warned about and written to
    /// `meta.json`. Pretraining and midtraining stream documents across rows and cut nothing.
    #[serde(default)]
    pub overlong: crate::data::Overlong,
}

fn default_seq_len() -> i64 {
    256
}

/// Precision of the forward and backward passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// Mixed precision: fp32 master weights, optimiser and loss; bf16 activations and matmuls
    /// (1.7x faster on CPUs with AMX/AVX-512 bf16, standard on GPUs).
    Bf16,
}

impl Precision {
    /// The tensor kind activations are computed in.
    pub fn kind(self) -> tch::Kind {
        match self {
            Precision::Fp32 => tch::Kind::Float,
            Precision::Bf16 => tch::Kind::BFloat16,
        }
    }
}

/// `[train]`: optimisation, shared by every stage (RL's `[rl]` adds only its algorithm's knobs).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps.
    pub steps: u64,
    /// LM stages: sequences per optimizer step (the token batch is `batch_size · seq_len`;
    /// default 16). RL's batch is `rl.prompts_per_step × rl.group_size` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<i64>,
    /// Sequences per forward/backward pass; gradients accumulate over the passes of a step.
    #[serde(default = "default_batch")]
    pub micro_batch_size: i64,
    /// Peak learning rate.
    pub lr: f64,
    /// cosine | wsd | linear | constant.
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleKind,
    /// Linear warmup steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak.
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// WSD: fraction of steps spent decaying.
    #[serde(default = "default_decay_fraction")]
    pub decay_fraction: f64,
    /// Decoupled weight decay on matrices.
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    /// AdamW beta1.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// AdamW beta2.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// AdamW epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip gradients to this global L2 norm (0 = off).
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    /// Random seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// auto | cpu | cuda.
    #[serde(default)]
    pub device: DeviceChoice,
    /// Save a resumable checkpoint every this many steps (0 = only at the end).
    #[serde(default)]
    pub save_every: u64,
    /// fp32 | bf16 (mixed precision; weights and optimiser stay fp32).
    #[serde(default)]
    pub precision: Precision,
    /// LoRA rank: > 0 freezes the `--init` model and trains low-rank adapters on every linear
    /// layer of the blocks (merged into each saved checkpoint's weights); 0 = full training.
    #[serde(default)]
    pub lora_rank: i64,
    /// LoRA scale numerator: adapters are scaled by lora_alpha / lora_rank.
    #[serde(default = "crate::lora::default_alpha")]
    pub lora_alpha: f64,
    /// adamw | muon: Muon for the blocks' weight matrices, AdamW (at `lr`) for the rest.
    // Left out of saved configs at their defaults, so runs started before they existed resume.
    #[serde(default, skip_serializing_if = "Optimizer::is_adamw")]
    pub optimizer: Optimizer,
    /// Muon's peak learning rate (the schedule scales it as it scales `lr`).
    #[serde(default = "default_muon_lr", skip_serializing_if = "is_default_muon_lr")]
    pub muon_lr: f64,
    /// Muon's (Nesterov) momentum.
    #[serde(default = "default_muon_momentum", skip_serializing_if = "is_default_muon_momentum")]
    pub muon_momentum: f64,
}

/// Which optimiser trains the weight matrices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// AdamW for every parameter.
    #[default]
    Adamw,
    /// Muon for the blocks' 2-D matrices, AdamW for embeddings, head and norms.
    Muon,
}

impl Optimizer {
    fn is_adamw(&self) -> bool {
        *self == Optimizer::Adamw
    }
}

fn default_muon_lr() -> f64 {
    0.02
}
fn is_default_muon_lr(x: &f64) -> bool {
    *x == default_muon_lr()
}
fn default_muon_momentum() -> f64 {
    0.95
}
fn is_default_muon_momentum(x: &f64) -> bool {
    *x == default_muon_momentum()
}

fn default_batch() -> i64 {
    16
}
fn default_schedule() -> ScheduleKind {
    ScheduleKind::Cosine
}
fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_decay_fraction() -> f64 {
    0.2
}
fn default_wd() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    1337
}

impl TrainSection {
    /// The learning-rate schedule.
    pub fn schedule(&self) -> Schedule {
        Schedule {
            kind: self.schedule,
            peak_lr: self.lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
            min_lr_ratio: self.min_lr_ratio,
            decay_fraction: self.decay_fraction,
        }
    }

    /// LoRA settings, when `lora_rank > 0`.
    pub fn lora(&self) -> Result<Option<crate::model::LoraConfig>> {
        crate::lora::from_section("train", self.lora_rank, self.lora_alpha)
    }

    /// AdamW hyper-parameters.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            muon: (self.optimizer == Optimizer::Muon).then(|| crate::optim::MuonConfig {
                lr_scale: self.muon_lr / self.lr,
                momentum: self.muon_momentum,
                ns_steps: 5,
                ns_bf16: self.precision == Precision::Bf16,
            }),
        }
    }

    /// Sequences per optimizer step of an LM stage.
    pub fn batch_size(&self) -> i64 {
        self.batch_size.unwrap_or_else(default_batch)
    }

    /// Gradient-accumulation passes per step.
    pub fn accum_steps(&self) -> i64 {
        self.batch_size() / self.micro_batch_size
    }

    /// Applies the command-line overrides of the training knobs.
    pub fn apply(&mut self, args: &CommonArgs) {
        if let Some(v) = args.device {
            self.device = v;
        }
        if let Some(v) = args.seed {
            self.seed = v;
        }
        if let Some(v) = args.steps {
            self.steps = v;
            self.warmup_steps = self.warmup_steps.min(v);
        }
        if let Some(v) = args.lr {
            self.lr = v;
        }
        if let Some(v) = args.save_every {
            self.save_every = v;
        }
    }

    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        self.schedule().validate()?;
        if self.batch_size() <= 0 || self.micro_batch_size <= 0 {
            bail!("train.batch_size and train.micro_batch_size must be positive");
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("train.{name} must be in [0, 1), got {b}");
            }
        }
        if !(self.weight_decay >= 0.0) || !(self.grad_clip >= 0.0) || !(self.eps > 0.0) {
            bail!("train.weight_decay and train.grad_clip must be >= 0 and train.eps > 0");
        }
        if self.optimizer == Optimizer::Muon {
            if !(self.muon_lr > 0.0) || !(0.0..1.0).contains(&self.muon_momentum) {
                bail!(
                    "train.muon_lr must be > 0 and train.muon_momentum in [0, 1), got {} and {}",
                    self.muon_lr,
                    self.muon_momentum
                );
            }
            if !(self.lr > 0.0) {
                bail!("train.optimizer = \"muon\" scales train.muon_lr with the schedule of train.lr: train.lr must be > 0");
            }
        }
        self.lora()?;
        Ok(())
    }
}

/// `[eval]`: held-out evaluation during and after training.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Mix file listing the held-out sources (weights are ignored; each is reported alone).
    pub mix: Option<PathBuf>,
    /// Evaluate every this many steps (0 = only at the end).
    #[serde(default)]
    pub every: u64,
    /// Tokens evaluated per held-out source.
    #[serde(default = "default_eval_tokens")]
    pub tokens: u64,
}

fn default_eval_tokens() -> u64 {
    32_768
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            mix: None,
            every: 0,
            tokens: default_eval_tokens(),
        }
    }
}

/// `[tasks]`: generation-based evaluation on verifiable tasks (chat format).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksSection {
    /// Parquet file with string columns prompt, answer, task (or others, mapped by `columns`).
    pub path: PathBuf,
    /// Column of each field where the file names it otherwise: prompt, answer, task, test,
    /// entry_point (e.g. `{ prompt = "question" }` for GSM8K).
    // Options left unset are left out of saved configs, so runs started before they existed
    // resume with equal settings.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub columns: std::collections::BTreeMap<String, String>,
    /// Kind of every row when the file has no task column (e.g. `gsm8k`; picks the verifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// How the file writes its answers: `gsm8k`, `boxed` or `answer-line`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<String>,
    /// Where the reference column keeps the answer (overrides `answers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::answers::Extract>,
    /// Where completions state their answer (overrides `answers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<crate::answers::Extract>,
    /// A completion without the answer marker, or cut off, is wrong.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Questions evaluated per task kind.
    #[serde(default = "default_per_kind")]
    pub per_kind: usize,
    /// Longest answer generated.
    #[serde(default = "default_task_tokens")]
    pub max_new_tokens: i64,
    /// Rows generated together.
    #[serde(default = "default_task_batch")]
    pub batch_size: usize,
    /// Also evaluate the starting checkpoint, to show what the stage bought.
    #[serde(default)]
    pub eval_start: bool,
    /// Multi-turn follow-ups graded too (`per_kind` of each kind, at the start when
    /// `eval_start`, and at the end): a task file whose rows carry earlier turns in a `history`
    /// column, e.g. `data/default/eval/multiturn.parquet`; a path or a table like `path`'s
    /// options (see `common::tasks::TaskSource`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiturn: Option<crate::tasks::TaskSource>,
}

impl TasksSection {
    /// The task file (a relative path under the data root `root`) and how to read it.
    pub fn source(&self, root: Option<&Path>) -> crate::tasks::TaskSource {
        crate::tasks::TaskSource {
            path: crate::data::mix::in_root(root, &self.path),
            columns: self.columns.clone(),
            kind: self.kind.clone(),
            answers: self.answers.clone(),
            reference: self.reference.clone(),
            completion: self.completion.clone(),
            strict: self.strict,
        }
    }
}

/// How a stage graded tasks by generation, as its resolved config saves it: `[tasks]` in the LM
/// stages' ([`TasksSection`]), `[eval]` in RL's. `evaluate` reads it back to grade a checkpoint
/// as its stage did. Each section converts into this type (`From`), so renaming a field on
/// either side fails to compile; tests check that the saved keys read back equal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GradingKnobs {
    /// Questions per task kind.
    pub per_kind: Option<usize>,
    /// Longest answer generated.
    pub max_new_tokens: Option<i64>,
    /// Rows generated together.
    pub batch_size: Option<usize>,
}

impl GradingKnobs {
    /// What a checkpoint's saved configuration says, key by key from `[tasks]` then `[eval]`;
    /// `None` where neither says (a pretrain checkpoint, or a section of another shape).
    pub fn saved_in(config: &serde_json::Value) -> Self {
        let section = |name: &str| {
            config
                .get(name)
                .and_then(|v| GradingKnobs::deserialize(v).ok())
                .unwrap_or_default()
        };
        let (tasks, eval) = (section("tasks"), section("eval"));
        GradingKnobs {
            per_kind: tasks.per_kind.or(eval.per_kind),
            max_new_tokens: tasks.max_new_tokens.or(eval.max_new_tokens),
            batch_size: tasks.batch_size.or(eval.batch_size),
        }
    }
}

impl From<&TasksSection> for GradingKnobs {
    fn from(t: &TasksSection) -> Self {
        GradingKnobs {
            per_kind: Some(t.per_kind),
            max_new_tokens: Some(t.max_new_tokens),
            batch_size: Some(t.batch_size),
        }
    }
}

fn default_per_kind() -> usize {
    100
}
fn default_task_tokens() -> i64 {
    64
}
fn default_task_batch() -> usize {
    64
}

/// Configuration of a language-modelling stage (pretrain, midtrain, SFT).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    /// Directory that relative data paths are found under (Parquet files of the mixes, task
    /// files, the tokenizer); default: the current directory. `--data-root` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_root: Option<PathBuf>,
    /// Checkpoint to start from (required by midtrain and SFT; pretrain starts from scratch without it).
    pub init: Option<PathBuf>,
    /// Where the checkpoint goes.
    pub out: Option<PathBuf>,
    /// Architecture, for runs from scratch.
    pub model: Option<ModelSection>,
    /// Tokenizer, for runs from scratch.
    pub tokenizer: Option<TokenizerSection>,
    /// Training data.
    pub data: DataSection,
    /// Optimisation.
    pub train: TrainSection,
    /// Held-out evaluation.
    #[serde(default)]
    pub eval: EvalSection,
    /// Task evaluation by generation (SFT).
    pub tasks: Option<TasksSection>,
}

impl LmConfig {
    /// Loads `path`, applies the command-line overrides and validates the result.
    pub fn load(path: &Path, args: &CommonArgs, stage: &str) -> Result<Self> {
        let mut cfg: LmConfig = load_toml(path)?;
        cfg.apply(args, stage);
        cfg.validate()
            .with_context(|| format!("invalid configuration {}", path.display()))?;
        Ok(cfg)
    }

    fn apply(&mut self, args: &CommonArgs, stage: &str) {
        apply_paths(&mut self.init, &mut self.out, args, stage);
        self.train.apply(args);
        if let Some(v) = &args.mix {
            self.data.mix = v.clone();
        }
        if let Some(v) = &args.data_root {
            self.data_root = Some(v.clone());
        }
    }

    /// The data root relative data paths are found under (`None`: the current directory).
    pub fn root(&self) -> Option<&Path> {
        self.data_root.as_deref()
    }

    /// Checks everything that can be checked before reading data.
    pub fn validate(&self) -> Result<()> {
        self.train.validate()?;
        let t = &self.train;
        if t.batch_size() % t.micro_batch_size != 0 {
            bail!(
                "train.batch_size ({}) must be a multiple of train.micro_batch_size ({})",
                t.batch_size(),
                t.micro_batch_size
            );
        }
        if self.data.seq_len < 2 {
            bail!("data.seq_len must be at least 2, got {}", self.data.seq_len);
        }
        if self.init.is_none() && self.model.is_none() {
            bail!("no [model] section and no init checkpoint: give --init <checkpoint> or a [model] section");
        }
        if let Some(t) = &self.tokenizer {
            if !t.train && t.path.is_none() {
                bail!("[tokenizer] needs either `path = \"…/tokenizer.json\"` or `train = true`");
            }
        }
        Ok(())
    }

    /// The checkpoint directory.
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| PathBuf::from("runs/default"))
    }
}

/// Applies `--init` and `--out` (default `runs/default/<stage>`) to a stage's paths.
pub fn apply_paths(init: &mut Option<PathBuf>, out: &mut Option<PathBuf>, args: &CommonArgs, stage: &str) {
    if let Some(v) = &args.init {
        *init = Some(v.clone());
    }
    *out = Some(
        args.out
            .clone()
            .or_else(|| out.clone())
            .unwrap_or_else(|| default_out(stage)),
    );
}

/// `runs/default/<stage>`.
pub fn default_out(stage: &str) -> PathBuf {
    PathBuf::from("runs/default").join(stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[model]
preset = "tiny"
[tokenizer]
train = true
vocab_size = 512
[data]
mix = "configs/mixes/pretrain.toml"
seq_len = 64
[train]
steps = 10
lr = 1e-3
batch_size = 8
micro_batch_size = 4
"#;

    #[test]
    fn grading_reads_back_from_a_saved_config() -> Result<()> {
        // Pretraining grades no tasks: its `[eval]` (held-out loss) says nothing about grading.
        let cfg: LmConfig = parse_toml(GOOD, "good.toml")?;
        assert_eq!(
            GradingKnobs::saved_in(&serde_json::to_value(&cfg)?),
            GradingKnobs::default()
        );
        let text = format!("{GOOD}[tasks]\npath = \"t.parquet\"\nper_kind = 3\nmax_new_tokens = 8\n");
        let cfg: LmConfig = parse_toml(&text, "sft.toml")?;
        let tasks = cfg.tasks.as_ref().expect("a [tasks] section");
        let saved = GradingKnobs::saved_in(&serde_json::to_value(&cfg)?);
        assert_eq!(saved, GradingKnobs::from(tasks));
        assert_eq!(
            (saved.per_kind, saved.max_new_tokens, saved.batch_size),
            (Some(3), Some(8), Some(default_task_batch()))
        );
        Ok(())
    }

    #[test]
    fn good_config_parses_and_cli_overrides_apply() -> Result<()> {
        let mut cfg: LmConfig = parse_toml(GOOD, "good.toml")?;
        let args = CommonArgs {
            steps: Some(3),
            lr: Some(2e-3),
            seed: Some(7),
            ..Default::default()
        };
        cfg.apply(&args, "pretrain");
        cfg.validate()?;
        assert_eq!(cfg.train.steps, 3);
        assert_eq!(cfg.train.lr, 2e-3);
        assert_eq!(cfg.train.seed, 7);
        assert_eq!(cfg.train.accum_steps(), 2);
        assert_eq!(cfg.out_dir(), PathBuf::from("runs/default/pretrain"));
        let model = cfg.model.as_ref().map(|m| m.resolve(512)).transpose()?;
        assert_eq!(model.map(|m| m.n_layer), Some(2));
        Ok(())
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let bad = GOOD.replace("seq_len = 64", "seq_len = 64\nseqlen = 3");
        let err = parse_toml::<LmConfig>(&bad, "bad.toml").unwrap_err().to_string();
        assert!(err.contains("unknown field `seqlen`"), "{err}");
        assert!(err.starts_with("bad.toml:10:"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn wrong_types_and_ranges_are_explained() {
        let bad = GOOD.replace("lr = 1e-3", "lr = \"fast\"");
        let err = parse_toml::<LmConfig>(&bad, "t.toml").unwrap_err().to_string();
        assert!(err.contains("t.toml:") && err.contains("string"), "{err}");
        let mut cfg: LmConfig = parse_toml(GOOD, "g").unwrap_or_else(|e| panic!("{e}"));
        cfg.train.batch_size = Some(6);
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("multiple of train.micro_batch_size"));
        cfg.train.batch_size = Some(8);
        cfg.train.lr = 3.0;
        assert!(cfg.validate().unwrap_err().to_string().contains("train.lr"));
        cfg.train.lr = 1e-3;
        cfg.model = None;
        assert!(cfg.validate().unwrap_err().to_string().contains("--init"));
    }

    #[test]
    fn missing_file_is_named() {
        let err = load_toml::<LmConfig>(Path::new("no/such.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("no/such.toml"));
    }
}
