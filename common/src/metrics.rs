//! The live metrics log of a stage: JSON lines appended to `<run dir>/<stage>.metrics.jsonl`
//! as training goes, and kept in memory so every checkpoint carries the log up to itself;
//! and the types of what stages record (`meta.metrics`, log lines, `evaluate --out`), which the
//! report reads back.
use crate::tasks::TaskReport;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends JSON lines to `<out>.metrics.jsonl` beside the checkpoint directory `out`.
pub struct MetricsLog {
    /// `None`: kept in memory only (ranks other than 0 of a data-parallel run).
    path: Option<PathBuf>,
    /// Every line so far (including those kept from a resumed run).
    pub lines: Vec<Value>,
}

impl MetricsLog {
    /// Starts the log of `out`, keeping the `previous` lines (of a resumed run) whose step is
    /// at most the resumed step; the file is rewritten to match.
    pub fn open(out: &Path, stage: &str, previous: Option<(u64, Vec<Value>)>) -> Result<Self> {
        let name = format!(
            "{}.metrics.jsonl",
            out.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| stage.into())
        );
        let path = out.with_file_name(name);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let lines: Vec<Value> = match previous {
            Some((step, lines)) => lines
                .into_iter()
                .filter(|l| l["step"].as_u64().is_none_or(|x| x <= step))
                .collect(),
            None => Vec::new(),
        };
        let mut text = String::new();
        for l in &lines {
            text.push_str(&serde_json::to_string(l)?);
            text.push('\n');
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(MetricsLog {
            path: Some(path),
            lines,
        })
    }

    /// A log kept in memory only, written nowhere.
    pub fn in_memory() -> Self {
        MetricsLog {
            path: None,
            lines: Vec::new(),
        }
    }

    /// Appends one line.
    pub fn push(&mut self, line: &impl Serialize) -> Result<()> {
        let line = serde_json::to_value(line)?;
        if let Some(path) = &self.path {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            writeln!(f, "{}", serde_json::to_string(&line)?).with_context(|| format!("writing {}", path.display()))?;
        }
        self.lines.push(line);
        Ok(())
    }
}

/// The lines of a JSONL file (unparsable lines skipped; a missing file is empty).
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// What stages record and `report` reads: one type each, so a renamed field fails to compile
// instead of printing "–".

/// Reads a number that JSON could only write as `null` (NaN or infinite) back as NaN.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Held-out loss of one source (`meta.metrics.heldout[source]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    /// Cross-entropy, nats per token.
    #[serde(deserialize_with = "f64_or_nan")]
    pub loss: f64,
    /// Bits per byte of text.
    #[serde(deserialize_with = "f64_or_nan")]
    pub bpb: f64,
    /// Tokens evaluated.
    pub tokens: i64,
    /// Entropy of the set's own token frequencies (the best unigram model's loss).
    #[serde(deserialize_with = "f64_or_nan")]
    pub unigram_loss: f64,
}

/// Held-out losses by source name.
pub type HeldOutBySource = BTreeMap<String, HeldOut>;

/// `meta.metrics.train` of a language-modelling stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmTrainMetrics {
    /// Loss of the last step (null when the run took no step).
    pub final_loss: Option<f64>,
    /// Tokens trained on.
    pub tokens: u64,
    /// Seconds spent training.
    pub secs: f64,
    /// Training throughput.
    pub tok_per_s: f64,
    /// Model FLOPs utilisation against the measured peak.
    #[serde(deserialize_with = "f64_or_nan")]
    pub mfu: f64,
    /// Measured peak GFLOP/s of the device.
    #[serde(deserialize_with = "f64_or_nan")]
    pub peak_gflops: f64,
    /// Share of the time spent waiting for data.
    pub data_fraction: f64,
    /// Tokens drawn from each source.
    pub consumed_per_source: BTreeMap<String, u64>,
    /// Document packing (SFT): conversations longer than a row, per source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlong: Option<OverlongDocs>,
}

/// `meta.metrics.train.overlong`: the documents of an SFT run longer than one packed row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverlongDocs {
    /// What was done with them (`data.overlong`).
    pub policy: crate::data::Overlong,
    /// Tokens of a row (`data.seq_len + 1`): longer documents were dropped or cut.
    pub row_tokens: u64,
    /// Documents read, cut and dropped, by source.
    pub per_source: BTreeMap<String, crate::data::DocCounts>,
}

impl OverlongDocs {
    /// Documents read, cut and dropped over all sources.
    pub fn total(&self) -> crate::data::DocCounts {
        let mut t = crate::data::DocCounts::default();
        for c in self.per_source.values() {
            t.documents += c.documents;
            t.cut += c.cut;
            t.dropped += c.dropped;
        }
        t
    }
}

/// `meta.metrics.train` of the RL stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RlTrainMetrics {
    /// Seconds spent training (sampling included).
    pub secs: f64,
    /// Completion tokens sampled.
    pub tokens_sampled: u64,
    /// Mean sampling throughput.
    pub sample_tok_per_s: f64,
    /// Mean update throughput.
    pub train_tok_per_s: f64,
    /// Share of a step spent sampling.
    pub sample_time_fraction: f64,
    /// Mean reward of the first step.
    pub first_reward: Option<f64>,
    /// Mean reward of the last step.
    pub last_reward: Option<f64>,
    /// Prompts skipped over the run because they do not fit the model's context.
    #[serde(default)]
    pub skipped_overlong: usize,
}

/// `meta.metrics.train`: what training cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TrainMetrics {
    /// pretrain, midtrain, SFT.
    Lm(LmTrainMetrics),
    /// RL.
    Rl(RlTrainMetrics),
}

impl TrainMetrics {
    /// Tokens per second: of training (LM stages) or of sampling (RL).
    pub fn tok_per_s(&self) -> f64 {
        match self {
            TrainMetrics::Lm(m) => m.tok_per_s,
            TrainMetrics::Rl(m) => m.sample_tok_per_s,
        }
    }
}

/// `meta.metrics`: everything a stage measured. Absent entries are left out of the file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageMetrics {
    /// Held-out loss per source of the starting model (LM stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_start: Option<HeldOutBySource>,
    /// Held-out loss per source at the end (LM stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout: Option<HeldOutBySource>,
    /// Held-out tasks graded on the starting model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_start: Option<TaskReport>,
    /// Held-out tasks graded at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TaskReport>,
    /// RL: training prompts the run asks, graded on the starting model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_seen_start: Option<TaskReport>,
    /// RL: the same prompts graded at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_seen: Option<TaskReport>,
    /// RL: the harder held-out slice (`[eval] hard_tasks`) graded on the starting model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_hard_start: Option<TaskReport>,
    /// RL: the harder held-out slice graded at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_hard: Option<TaskReport>,
    /// Multi-turn held-out follow-ups (SFT's `[tasks] multiturn`, RL's `[eval] multiturn_tasks`)
    /// graded on the starting model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_multiturn_start: Option<TaskReport>,
    /// The multi-turn follow-ups graded at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks_multiturn: Option<TaskReport>,
    /// RL: the curriculum's slots at the end (success estimate, prompts drawn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curriculum: Option<Vec<SlotLog>>,
    /// RL: completed passes over finite prompt pools, by slot (empty: every prompt was fresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_repeats: Option<BTreeMap<String, u64>>,
    /// What training cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainMetrics>,
}

/// A training-step line of an LM stage's metrics log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LmStep {
    /// Stage name.
    pub stage: String,
    /// Steps taken.
    pub step: u64,
    /// Mean loss over the step's trained tokens.
    #[serde(deserialize_with = "f64_or_nan")]
    pub loss: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Gradient norm before clipping.
    #[serde(deserialize_with = "f64_or_nan")]
    pub grad_norm: f64,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// Throughput of the step.
    pub tok_per_s: f64,
    /// Model FLOPs utilisation.
    #[serde(deserialize_with = "f64_or_nan")]
    pub mfu: f64,
    /// Seconds of the step.
    pub step_secs: f64,
    /// Of which waiting for data.
    pub data_secs: f64,
}

/// A step line of the RL stage's metrics log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RlStep {
    /// Stage name.
    pub stage: String,
    /// Steps taken.
    pub step: u64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Policy loss (last inner epoch).
    #[serde(deserialize_with = "f64_or_nan")]
    pub loss: f64,
    /// Mean reward.
    pub reward_mean: f64,
    /// Reward standard deviation.
    pub reward_std: f64,
    /// Share of correct answers.
    pub accuracy: f64,
    /// Share of "I don't know".
    pub abstention_rate: f64,
    /// Share with an `Answer:` line.
    pub format_rate: f64,
    /// Share the verifier failed on.
    pub verifier_errors: f64,
    /// Share cut at `max_new_tokens`.
    pub truncation_rate: f64,
    /// Mean completion length, tokens.
    pub completion_len: f64,
    /// k3 KL to the reference, per token.
    pub kl: f64,
    /// Share of tokens where the clip removed the gradient.
    pub clip_frac: f64,
    /// Share of groups whose rewards are all equal.
    pub zero_adv_groups: f64,
    /// Sequences run through the update.
    pub trained_sequences: usize,
    /// Gradient norm before clipping.
    #[serde(deserialize_with = "f64_or_nan")]
    pub grad_norm: f64,
    /// Sampling throughput.
    pub sample_tok_per_s: f64,
    /// Update throughput.
    pub train_tok_per_s: f64,
    /// Seconds sampling and grading.
    pub sample_secs: f64,
    /// Seconds updating.
    pub train_secs: f64,
    /// Groups sampled this step (more than `prompts_per_step` when flat groups were replaced).
    #[serde(default)]
    pub groups_sampled: usize,
    /// The curriculum after the step: each slot's success estimate and prompts drawn so far.
    #[serde(default)]
    pub curriculum: Vec<SlotLog>,
    /// Share of the curriculum's weight on slots inside the success band.
    #[serde(default)]
    pub in_band: f64,
    /// Prompts drawn this step and skipped because they do not fit the model's context.
    #[serde(default)]
    pub skipped_overlong: usize,
}

/// One curriculum slot (a generator level or a task kind of a prompt file) in the logs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotLog {
    /// Slot name ("arithmetic/3").
    pub slot: String,
    /// Running group success rate (None until graded).
    pub success: Option<f64>,
    /// Prompts drawn from it so far.
    pub drawn: u64,
}

/// An evaluation line of a metrics log (`eval`: held-out losses or a task report).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalLine<T> {
    /// Stage name.
    pub stage: String,
    /// Steps taken when evaluated.
    pub step: u64,
    /// The evaluation.
    pub eval: T,
}

/// The lines of `lines` that are `T` (step lines of one kind, say).
pub fn lines_of<T: serde::de::DeserializeOwned>(lines: &[Value]) -> Vec<T> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_value(l.clone()).ok())
        .collect()
}

/// What `evaluate --out` writes (`runs/<run>/eval-rl.json`, read by the report). The fields
/// after `temperature` describe the file itself; files written before them read as `None`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalFile {
    /// Checkpoint evaluated.
    pub checkpoint: String,
    /// Its stage.
    pub stage: String,
    /// Task file.
    pub tasks: String,
    /// One greedy answer per question.
    pub greedy: TaskReport,
    /// `samples` answers per question at `temperature` (pass@k, maj@k), when samples > 1.
    pub sampled: Option<TaskReport>,
    /// Sampling temperature.
    pub temperature: f64,
    /// How to read the figures (greedy accuracy, pass@1 and maj@1 are three different things).
    #[serde(default)]
    pub notes: Vec<String>,
    /// The settings the evaluation ran with.
    pub settings: Option<EvalSettings>,
    /// How many questions and answers were graded.
    pub counts: Option<EvalCounts>,
    /// When, by which version and commit, on which machine.
    pub provenance: Option<crate::provenance::Provenance>,
}

/// The settings of one `evaluate` run, as resolved (flags, else the checkpoint's stage config,
/// else the defaults).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSettings {
    /// The task set as asked for: a named set (`default`, `hard`) or a path.
    pub task_set: String,
    /// Questions per task kind at most.
    pub per_kind: usize,
    /// Questions in all at most (`--limit`), spread over the kinds.
    pub limit: Option<usize>,
    /// Answers sampled per question for pass@k / maj@k (1 = greedy only).
    pub samples: usize,
    /// Temperature of the sampled answers.
    pub temperature: f64,
    /// Longest answer in tokens.
    pub max_new_tokens: i64,
    /// Where `max_new_tokens` came from: `flag`, `checkpoint config` or `default`.
    pub max_new_tokens_from: String,
    /// Rows generated together.
    pub batch_size: usize,
    /// Seed of the sampled answers.
    pub seed: u64,
    /// Device the model ran on.
    pub device: String,
}

/// What an `evaluate` run graded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalCounts {
    /// Questions.
    pub questions: usize,
    /// Questions per task kind.
    pub per_kind: BTreeMap<String, usize>,
    /// Answers graded: one greedy per question, plus `samples` per question when sampling.
    pub answers_graded: usize,
}
