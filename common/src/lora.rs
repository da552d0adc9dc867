//! LoRA for the training stages: attach adapters to a loaded model (the model frozen), keep
//! them in the resumable state, and save checkpoints with the adapters merged into plain
//! weights so every other tool reads them like any other checkpoint.
use crate::model::{Gpt, LoraConfig};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn, Tensor};

/// Prefix of the adapters' tensors in a checkpoint's `state/optimizer.safetensors`.
const PREFIX: &str = "adapter.";

/// Adapters attached to a model: their own `VarStore` (what the optimiser trains).
pub struct Adapters {
    /// The adapters' parameters (`model.layers.N.<linear>.lora_A` / `lora_B`).
    pub vs: nn::VarStore,
    cfg: LoraConfig,
}

impl Adapters {
    /// Adds adapters to every linear layer of `model` (initialised from `seed`, so a resumed
    /// or repeated run starts alike) and freezes the model's own weights in `base`.
    pub fn attach(model: &mut Gpt, base: &mut nn::VarStore, cfg: LoraConfig, seed: u64) -> Result<Self> {
        let vs = nn::VarStore::new(base.device());
        crate::device::seed_everything(seed);
        model.add_lora(&vs.root(), cfg)?;
        base.freeze();
        Ok(Adapters { vs, cfg })
    }

    /// One line for the log: rank, alpha, trainable against frozen parameters.
    pub fn describe(&self, base: &nn::VarStore) -> String {
        let count = |vs: &nn::VarStore| vs.variables().values().map(|v| v.numel() as f64).sum::<f64>();
        format!(
            "LoRA rank {} (alpha {}) on every linear layer: {} trainable parameters, the model's {} frozen",
            self.cfg.rank,
            self.cfg.alpha,
            crate::progress::format_count(count(&self.vs)),
            crate::progress::format_count(count(base))
        )
    }

    /// The adapters as state tensors, to save next to the optimiser's.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.vs
            .variables()
            .into_iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.shallow_clone()))
            .collect()
    }

    /// Restores the adapters saved by [`Adapters::state_tensors`] in the checkpoint `dir`.
    pub fn restore(&mut self, tensors: &[(String, Tensor)], dir: &Path) -> Result<()> {
        let saved: BTreeMap<&str, &Tensor> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let _g = tch::no_grad_guard();
        for (name, mut var) in self.vs.variables() {
            let Some(t) = saved.get(format!("{PREFIX}{name}").as_str()) else {
                bail!(
                    "{} has no LoRA adapter {name} in its state: it was not saved by a run with lora_rank = {}",
                    dir.display(),
                    self.cfg.rank
                );
            };
            if t.size() != var.size() {
                bail!(
                    "LoRA adapter {name} in {} has shape {:?}, expected {:?} (another lora_rank?)",
                    dir.display(),
                    t.size(),
                    var.size()
                );
            }
            var.copy_(&t.to_device(var.device()));
        }
        Ok(())
    }

    /// A copy of the model's weights with each adapter's `scale · B A` added: what a
    /// checkpoint holds.
    pub fn merged(&self, base: &nn::VarStore, model: &Gpt) -> Result<nn::VarStore> {
        let mut merged = nn::VarStore::new(base.device());
        let _shape = Gpt::new(merged.root(), model.config());
        merged.copy(base)?;
        let vars = merged.variables();
        let _g = tch::no_grad_guard();
        for (name, delta) in model.lora_deltas() {
            let Some(w) = vars.get(&name) else {
                bail!("LoRA merge: the model has no weight {name}");
            };
            let _ = w.shallow_clone().g_add_(&delta.to_kind(w.kind()));
        }
        Ok(merged)
    }
}
