//! LoRA for the training stages: attach adapters to a loaded model (the model frozen), keep
//! them in the resumable state, and save checkpoints with the adapters merged into plain
//! weights so every other tool reads them like any other checkpoint.
use crate::model::{Gpt, LoraConfig};
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{nn, Tensor};

/// Default `lora_alpha` of every stage's config.
pub fn default_alpha() -> f64 {
    32.0
}

/// The LoRA settings of a config section (`train`): `None` for `lora_rank = 0`; an
/// error naming the keys when they are out of range.
pub fn from_section(section: &str, rank: i64, alpha: f64) -> Result<Option<LoraConfig>> {
    if rank < 0 || !(alpha > 0.0) {
        bail!("{section}.lora_rank must be >= 0 (0 = full training) and {section}.lora_alpha > 0");
    }
    Ok((rank > 0).then_some(LoraConfig { rank, alpha }))
}

/// Attaches adapters when `cfg` asks for them (see [`Adapters::attach`]) and, when resuming,
/// restores them from the checkpoint `resume` = (state tensors, directory).
pub fn setup(
    model: &mut Gpt,
    base: &mut nn::VarStore,
    cfg: Option<LoraConfig>,
    seed: u64,
    resume: Option<(&[(String, Tensor)], &Path)>,
) -> Result<Option<Adapters>> {
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    let mut a = Adapters::attach(model, base, cfg, seed)?;
    if let Some((tensors, dir)) = resume {
        a.restore(tensors, dir)?;
    }
    Ok(Some(a))
}

/// What a save writes: with adapters, they join the optimiser's `state_tensors` and the
/// weights to save are a merged copy (returned); without, nothing changes (`None`: save `base`).
pub fn save_parts(
    adapters: Option<&Adapters>,
    base: &nn::VarStore,
    model: &Gpt,
    state_tensors: &mut Vec<(String, Tensor)>,
) -> Result<Option<nn::VarStore>> {
    let Some(a) = adapters else {
        return Ok(None);
    };
    state_tensors.extend(a.state_tensors());
    Ok(Some(a.merged(base, model)?))
}

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
