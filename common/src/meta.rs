//! What a checkpoint is, as data: its `meta.json` ([`Meta`]) and a checkpoint once loaded
//! ([`Loaded`]). Both readers of checkpoints build these — [`crate::checkpoint`] for this
//! project's directories, [`crate::hf`] for Hugging Face ones — so neither imports the other.
use crate::data::mix::ResolvedMix;
use crate::model::GptConfig;
use crate::tokenizer::Tok;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::Tensor;

/// Version of the checkpoint layout.
pub const FORMAT_VERSION: u32 = 1;

/// A reference to the checkpoint a run started from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ParentRef {
    /// Directory of the parent checkpoint.
    pub path: String,
    /// Stage that wrote it.
    pub stage: String,
    /// SHA-256 of its `model.safetensors`.
    pub weights_sha256: String,
}

/// The data a stage read, as `meta.json` records it (`mix`). The stages write these types and
/// the report reads them, so a renamed field fails to compile; a record of any other shape
/// (an older version's) still loads, as [`DataRecord::Other`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DataRecord {
    /// An LM stage: its mix, resolved (files, shares).
    Mix(ResolvedMix),
    /// RL: its prompts.
    Prompts(PromptsRecord),
    /// A record this version does not know, kept as written.
    Other(serde_json::Value),
}

/// The prompts an RL run drew from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptsRecord {
    /// The prompt mix file (`[data] prompts`).
    pub prompts: String,
    /// The prompt mix as resolved (`null` in records written before it was kept).
    #[serde(default)]
    pub mix: serde_json::Value,
    /// The curriculum's slots, in the order its state lists them.
    #[serde(default)]
    pub slots: Vec<String>,
}

/// Contents of `meta.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Meta {
    /// `pretrain`, `midtrain`, `sft` or `rl`.
    pub stage: String,
    /// Optimizer steps taken in this stage.
    pub step: u64,
    /// Steps the stage was configured for.
    pub total_steps: u64,
    /// Whether the stage ran to its end (false for periodic and interrupted saves).
    pub complete: bool,
    /// Training tokens consumed in this stage.
    pub tokens_seen: u64,
    /// Wall-clock seconds spent training in this stage (across resumes): the optimiser steps
    /// and their data, not evaluations, task grading or saves.
    pub train_secs: f64,
    /// Wall-clock seconds of the whole stage (across resumes), from opening `--out` to the
    /// save: training and everything around it (evaluations, task grading, saves). 0 in
    /// checkpoints written before it was recorded.
    #[serde(default)]
    pub wall_secs: f64,
    /// Device it trained on.
    pub device: String,
    /// The machine it trained on (its last run, when resumed elsewhere); absent in
    /// checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<crate::provenance::Machine>,
    /// libtorch's intra-op threads per process (`L2E_THREADS`, else one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Checkpoint it started from.
    pub parent: Option<ParentRef>,
    /// SHA-256 of this checkpoint's `model.safetensors`.
    pub weights_sha256: String,
    /// The resolved stage configuration.
    pub config: serde_json::Value,
    /// The data the stage read (`null` where it read none: a random or imported checkpoint).
    #[serde(default)]
    pub mix: Option<DataRecord>,
    /// What the stage measured (held-out loss, tasks, training cost).
    #[serde(default)]
    pub metrics: crate::metrics::StageMetrics,
    /// lib2expert version that wrote it.
    pub version: String,
    /// Checkpoint layout version.
    pub format: u32,
    /// Data-parallel ranks that trained it last (absent: one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
}

impl Meta {
    /// [`Meta::wall_secs`] where it was recorded (`None` in checkpoints written before).
    pub fn recorded_wall_secs(&self) -> Option<f64> {
        (self.wall_secs > 0.0).then_some(self.wall_secs)
    }

    /// The stage's wall time: [`Meta::wall_secs`], or for checkpoints written before it was
    /// recorded the training steps' time (which leaves out evaluations, grading and saves).
    pub fn stage_secs(&self) -> f64 {
        self.recorded_wall_secs().unwrap_or(self.train_secs)
    }

    /// Metadata for `stage` with everything else empty.
    pub fn new(stage: &str) -> Self {
        Meta {
            stage: stage.to_string(),
            step: 0,
            total_steps: 0,
            complete: false,
            tokens_seen: 0,
            train_secs: 0.0,
            wall_secs: 0.0,
            device: "cpu".into(),
            machine: None,
            threads: None,
            parent: None,
            weights_sha256: String::new(),
            config: serde_json::Value::Null,
            mix: None,
            metrics: Default::default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            format: FORMAT_VERSION,
            world_size: None,
        }
    }
}

/// What a checkpoint holds once loaded.
pub struct Loaded {
    /// Directory it was read from (may be the `.prev` fallback).
    pub dir: PathBuf,
    /// Architecture.
    pub config: GptConfig,
    /// Tokenizer.
    pub tok: Tok,
    /// Metadata.
    pub meta: Meta,
    /// Weights, by name, on the CPU.
    pub weights: Vec<(String, Tensor)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `mix` as each version of the stages wrote it.
    #[test]
    fn data_records_of_every_version_load() -> anyhow::Result<()> {
        let meta = |mix: serde_json::Value| -> anyhow::Result<Meta> {
            let mut m = serde_json::to_value(Meta::new("sft"))?;
            m["mix"] = mix;
            Ok(serde_json::from_value(m)?)
        };
        assert!(meta(serde_json::Value::Null)?.mix.is_none());
        let lm = json!({"path": "configs/mixes/sft.toml", "description": "", "sources": [{
            "config": {"name": "conversations", "path": "data/sft/*.parquet", "format": "chat",
                       "columns": {}, "weight": 1.0, "tokens": null, "max_epochs": null},
            "files": ["data/sft/train.parquet"], "share": 1.0, "columns": {"messages": "messages"}}]});
        let Some(DataRecord::Mix(m)) = meta(lm.clone())?.mix else {
            panic!("an LM stage's mix reads as a mix");
        };
        assert_eq!(
            (m.sources[0].config.name.as_str(), m.sources[0].share),
            ("conversations", 1.0)
        );
        // Written back unchanged.
        assert_eq!(serde_json::to_value(DataRecord::Mix(m))?, lm);
        let rl = json!({"prompts": "configs/mixes/rl.toml", "mix": {"source": []}, "slots": ["arithmetic/1"]});
        let Some(DataRecord::Prompts(p)) = meta(rl.clone())?.mix else {
            panic!("RL's prompts read as prompts");
        };
        assert_eq!(p.slots, ["arithmetic/1"]);
        assert_eq!(serde_json::to_value(DataRecord::Prompts(p))?, rl);
        // RL before the curriculum: the prompt file and its row count.
        let old = json!({"prompts": "data/rl/prompts.parquet", "rows": 500});
        assert!(matches!(meta(old)?.mix, Some(DataRecord::Prompts(p)) if p.prompts == "data/rl/prompts.parquet"));
        let odd = json!({"something": "else"});
        assert!(matches!(meta(odd.clone())?.mix, Some(DataRecord::Other(v)) if v == odd));
        Ok(())
    }
}
