//! What a checkpoint is, as data: its `meta.json` ([`Meta`]) and a checkpoint once loaded
//! ([`Loaded`]). Both readers of checkpoints build these — [`crate::checkpoint`] for this
//! project's directories, [`crate::hf`] for Hugging Face ones — so neither imports the other.
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
    /// Wall-clock seconds spent training in this stage (across resumes).
    pub train_secs: f64,
    /// Device it trained on.
    pub device: String,
    /// Checkpoint it started from.
    pub parent: Option<ParentRef>,
    /// SHA-256 of this checkpoint's `model.safetensors`.
    pub weights_sha256: String,
    /// The resolved stage configuration.
    pub config: serde_json::Value,
    /// The resolved data mix.
    pub mix: serde_json::Value,
    /// What the stage measured (held-out loss, tasks, training cost).
    #[serde(default)]
    pub metrics: crate::metrics::StageMetrics,
    /// lib2expert version that wrote it.
    pub version: String,
    /// Checkpoint layout version.
    pub format: u32,
}

impl Meta {
    /// Metadata for `stage` with everything else empty.
    pub fn new(stage: &str) -> Self {
        Meta {
            stage: stage.to_string(),
            step: 0,
            total_steps: 0,
            complete: false,
            tokens_seen: 0,
            train_secs: 0.0,
            device: "cpu".into(),
            parent: None,
            weights_sha256: String::new(),
            config: serde_json::Value::Null,
            mix: serde_json::Value::Null,
            metrics: Default::default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            format: FORMAT_VERSION,
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
