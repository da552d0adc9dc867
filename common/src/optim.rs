//! AdamW whose state is ordinary tensors (saved with the checkpoint, unlike tch's own
//! optimisers), with parameter groups and global-norm gradient clipping.
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use tch::{nn, Kind, Tensor};

/// Hyper-parameters of AdamW.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (applied to matrices only).
    pub weight_decay: f64,
}

struct Param {
    name: String,
    var: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW over the variables of a `VarStore`.
///
/// Groups: 2-D weight matrices get weight decay; norms (1-D) and embeddings
/// (`embed_tokens`) do not.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
    step: u64,
}

/// Whether a parameter gets weight decay.
pub fn decays(name: &str, dims: usize) -> bool {
    dims >= 2 && !name.contains("embed_tokens")
}

impl AdamW {
    /// An optimiser over every trainable variable of `vs`, sorted by name.
    pub fn new(vs: &nn::VarStore, cfg: AdamWConfig) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .filter(|(_, v)| v.requires_grad())
            .map(|(name, var)| {
                let decay = decays(&name, var.dim());
                Param {
                    m: var.zeros_like(),
                    v: var.zeros_like(),
                    name,
                    var,
                    decay,
                }
            })
            .collect();
        AdamW { cfg, params, step: 0 }
    }

    /// The trained variables, in the optimiser's order (sorted by name: the same in every
    /// process, as collectives over them need).
    pub fn vars(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.var.shallow_clone()).collect()
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.var.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Global L2 norm of the gradients; when above `max_norm` (> 0), scales them down to it.
    /// Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.var.grad())
            .filter(|g| g.defined())
            .map(|g| g.to_kind(Kind::Float).norm().square())
            .collect();
        if norms.is_empty() {
            return 0.0;
        }
        let total = Tensor::stack(&norms, 0).sum(Kind::Float).sqrt().double_value(&[]);
        if max_norm > 0.0 && total.is_finite() && total > max_norm {
            let scale = max_norm / (total + 1e-6);
            for p in &self.params {
                let mut g = p.var.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        total
    }

    /// One AdamW update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        for p in &mut self.params {
            let g = p.var.grad();
            if !g.defined() {
                continue;
            }
            // The update of torch.optim.AdamW, in place with one temporary besides g·(1 − β2):
            // m ← lerp(m, g, 1 − β1); v ← β2·v + (1 − β2)·g²; θ ← θ·(1 − lr·wd);
            // θ ← θ − (lr / bc1) · m / (√v / √bc2 + ε), the step size folded into the divisor.
            let _ = p.m.lerp_(&g, 1.0 - beta1);
            let _ = p.v.g_mul_scalar_(beta2).addcmul_(&g, &g.g_mul_scalar(1.0 - beta2));
            if p.decay && weight_decay > 0.0 {
                let _ = p.var.g_mul_scalar_(1.0 - lr * weight_decay);
            }
            if lr == 0.0 {
                continue;
            }
            let mut denom = p.v.sqrt();
            let _ = denom
                .g_div_scalar_(bc2.sqrt())
                .g_add_scalar_(eps)
                .g_mul_scalar_(-bc1 / lr);
            let _ = p.var.addcdiv_(&p.m, &denom);
        }
    }

    /// Optimiser state as named tensors (`m.<param>`, `v.<param>`, `step`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for p in &self.params {
            out.push((format!("m.{}", p.name), p.m.shallow_clone()));
            out.push((format!("v.{}", p.name), p.v.shallow_clone()));
        }
        out.push(("step".into(), Tensor::from_slice(&[self.step as i64])));
        out
    }

    /// Restores state saved by [`AdamW::state_tensors`]; every moment must be present with
    /// its parameter's shape.
    pub fn load_state_tensors(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let map: BTreeMap<&str, &Tensor> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let _guard = tch::no_grad_guard();
        for p in &mut self.params {
            for (prefix, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{prefix}.{}", p.name);
                let Some(t) = map.get(key.as_str()) else {
                    bail!("optimiser state lacks {key}: it was saved for another architecture");
                };
                if t.size() != slot.size() {
                    bail!(
                        "optimiser state {key} has shape {:?}, parameter has {:?}",
                        t.size(),
                        slot.size()
                    );
                }
                slot.copy_(&t.to_device(slot.device()).to_kind(slot.kind()));
            }
        }
        self.step = match map.get("step") {
            Some(t) => t.int64_value(&[0]) as u64,
            None => bail!("optimiser state lacks its step counter"),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn matches_hand_computed_adamw_step() -> Result<()> {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[1, 2], nn::Init::Const(1.0));
        let n = vs.root().var("norm", &[2], nn::Init::Const(1.0));
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let mut opt = AdamW::new(&vs, cfg);
        let loss = (&w * Tensor::from_slice(&[2.0f32, -3.0]).view([1, 2])).sum(Kind::Float) + n.sum(Kind::Float);
        opt.zero_grad();
        loss.backward();
        opt.step(0.1);
        // First step: m̂ = g, v̂ = g², update = lr·g/|g| = ±lr; decay multiplies w by (1 − lr·wd) first.
        let wv: Vec<f32> = Vec::try_from(w.flatten(0, -1))?;
        let expected_w = [1.0 * (1.0 - 0.05) - 0.1, 1.0 * (1.0 - 0.05) + 0.1];
        for (a, b) in wv.iter().zip(expected_w) {
            assert!((*a as f64 - b).abs() < 1e-6, "{wv:?} vs {expected_w:?}");
        }
        // The norm gain has no weight decay: 1 − 0.1.
        let nv: Vec<f32> = Vec::try_from(n)?;
        assert!((nv[0] - 0.9).abs() < 1e-6, "{nv:?}");
        Ok(())
    }

    #[test]
    fn matches_a_scalar_adamw_over_several_steps() -> Result<()> {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[3, 2], nn::Init::Const(0.5));
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(&vs, cfg);
        // Reference in f64, element by element, as torch.optim.AdamW writes it.
        let mut theta = vec![0.5f64; 6];
        let (mut m, mut v) = (vec![0.0f64; 6], vec![0.0f64; 6]);
        let lrs = [0.1, 0.05, 0.02, 0.0, 0.01];
        for (t, &lr) in lrs.iter().enumerate() {
            let coef: Vec<f32> = (0..6)
                .map(|i| ((i as f32 + 1.0) * (t as f32 + 1.0)).sin() * 2.0)
                .collect();
            opt.zero_grad();
            (&w * &w * Tensor::from_slice(&coef).view([3, 2]))
                .sum(Kind::Float)
                .backward();
            opt.step(lr);
            let step = (t + 1) as i32;
            for i in 0..6 {
                let g = 2.0 * theta[i] * coef[i] as f64;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.95 * v[i] + 0.05 * g * g;
                theta[i] *= 1.0 - lr * 0.1;
                let denom = (v[i] / (1.0 - 0.95f64.powi(step))).sqrt() + 1e-8;
                theta[i] -= lr / (1.0 - 0.9f64.powi(step)) * m[i] / denom;
            }
            let ours: Vec<f32> = Vec::try_from(w.flatten(0, -1))?;
            for (a, b) in ours.iter().zip(&theta) {
                assert!((*a as f64 - b).abs() < 1e-5, "step {step}: {ours:?} vs {theta:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn clips_by_global_norm_and_state_round_trips() -> Result<()> {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2, 2], nn::Init::Const(0.0));
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = AdamW::new(&vs, cfg);
        (&w * 3.0).sum(Kind::Float).backward(); // grad = 3 everywhere, norm = 6
        let norm = opt.clip_grad_norm(1.5);
        assert!((norm - 6.0).abs() < 1e-5);
        let g: Vec<f32> = Vec::try_from(w.grad().flatten(0, -1))?;
        assert!(g.iter().all(|x| (x - 0.75).abs() < 1e-4), "{g:?}");
        opt.step(0.01);
        let saved = opt.state_tensors();
        let mut other = AdamW::new(&vs, cfg);
        other.load_state_tensors(&saved)?;
        assert_eq!(other.steps(), 1);
        let bad = vec![("m.w".to_string(), Tensor::zeros([3], (Kind::Float, Device::Cpu)))];
        assert!(other.load_state_tensors(&bad).unwrap_err().to_string().contains("m.w"));
        Ok(())
    }
}
