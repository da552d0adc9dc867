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
    /// Muon for the hidden weight matrices (`None`: AdamW for every parameter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muon: Option<MuonConfig>,
}

/// Muon (momentum orthogonalised by Newton–Schulz iterations, as in modded-nanogpt and
/// nanochat) for the 2-D weight matrices of the transformer blocks; the embeddings, the output
/// head and the norms stay on AdamW.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MuonConfig {
    /// Muon's learning rate over AdamW's: the schedule's rate times this (e.g. 0.02 / 3e-3).
    pub lr_scale: f64,
    /// Momentum (Nesterov).
    pub momentum: f64,
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
    /// Run the iterations in bf16 (as Keller Jordan's published Muon does; ~4x cheaper on a
    /// CPU with bf16 matrix units, and on GPUs) instead of fp32. On with `precision = "bf16"`.
    #[serde(default)]
    pub ns_bf16: bool,
}

/// Whether Muon trains a parameter: a 2-D matrix inside the blocks (not the embeddings, the
/// output head, norms or LoRA adapters).
pub fn muon_trains(name: &str, dims: usize) -> bool {
    dims == 2 && name.contains("layers.") && !name.contains("lora")
}

/// The orthogonalisation of Muon: about `U Vᵀ` of `g = U S Vᵀ`, by `steps` quintic
/// Newton–Schulz iterations with the coefficients (3.4445, −4.7750, 2.0315) of Keller
/// Jordan's Muon, on the matrix scaled to unit Frobenius norm (in fp32).
pub fn newton_schulz(g: &Tensor, steps: usize) -> Tensor {
    newton_schulz_batched(&g.unsqueeze(0), steps, Kind::Float).squeeze_dim(0)
}

/// [`newton_schulz`] of each matrix of a stack `[n, rows, cols]` at once (batched products:
/// one call for all same-shaped matrices of a model), computed in `kind`; the result is in
/// `kind`.
pub fn newton_schulz_batched(g: &Tensor, steps: usize, kind: Kind) -> Tensor {
    let (a, b, c) = (3.4445, -4.7750, 2.0315);
    let size = g.size();
    let tall = size[1] > size[2];
    let mut x = g.to_kind(kind);
    if tall {
        x = x.transpose(1, 2);
    }
    let norm = x
        .to_kind(Kind::Float)
        .norm_scalaropt_dim(2.0, [1, 2], true)
        .g_add_scalar(1e-7)
        .to_kind(kind);
    x = &x / norm;
    for _ in 0..steps {
        let xa = x.bmm(&x.transpose(1, 2));
        let xb = xa.baddbmm(&xa, &xa, b, c);
        x = x.baddbmm(&xb, &x, a, 1.0);
    }
    if tall {
        x = x.transpose(1, 2);
    }
    x
}

struct Param {
    name: String,
    var: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
    /// Trained by Muon (`m` is its momentum; `v` stays zero).
    muon: bool,
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
                    muon: cfg.muon.is_some() && muon_trains(&name, var.dim()),
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
            muon,
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.step as i32);
        let bc2 = 1.0 - beta2.powi(self.step as i32);
        // Muon's directions, grouped by shape: each group is orthogonalised in one batched call.
        let mut muon_dirs: BTreeMap<Vec<i64>, Vec<(usize, Tensor)>> = BTreeMap::new();
        for (i, p) in self.params.iter_mut().enumerate() {
            let g = p.var.grad();
            if !g.defined() {
                continue;
            }
            if let (true, Some(mu)) = (p.muon, muon) {
                // Muon: m ← μ·m + g; the Nesterov direction g + μ·m (orthogonalised below).
                let _ = p.m.g_mul_scalar_(mu.momentum).g_add_(&g);
                let dir = g.g_add(&p.m.g_mul_scalar(mu.momentum));
                muon_dirs.entry(p.var.size()).or_default().push((i, dir));
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
        let Some(mu) = muon else { return };
        // The directions orthogonalised, scaled by √max(1, rows/cols); decoupled weight decay as
        // AdamW's.
        let lr = lr * mu.lr_scale;
        let kind = if mu.ns_bf16 { Kind::BFloat16 } else { Kind::Float };
        for (size, dirs) in muon_dirs {
            let stack = Tensor::stack(&dirs.iter().map(|(_, d)| d).collect::<Vec<_>>(), 0);
            let orth = newton_schulz_batched(&stack, mu.ns_steps, kind);
            let scale = (size[0] as f64 / size[1] as f64).max(1.0).sqrt();
            for (j, (i, _)) in dirs.iter().enumerate() {
                let p = &mut self.params[*i];
                if p.decay && weight_decay > 0.0 {
                    let _ = p.var.g_mul_scalar_(1.0 - lr * weight_decay);
                }
                let o = orth.get(j as i64).to_kind(p.var.kind());
                let _ = p.var.g_add_(&o.g_mul_scalar(-lr * scale));
            }
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

    /// Singular values of `x` (fp64).
    fn singular_values(x: &Tensor) -> Vec<f64> {
        let (_, s, _) = x.to_kind(Kind::Double).svd(true, false);
        Vec::try_from(s).unwrap_or_default()
    }

    #[test]
    fn newton_schulz_orthogonalises() -> Result<()> {
        tch::manual_seed(3);
        for shape in [[24i64, 40], [40, 24]] {
            // An ill-conditioned matrix: singular values from 0.01 to 1 ...
            let (u, _, v) = Tensor::randn(shape, (Kind::Double, Device::Cpu)).svd(true, true);
            let k = shape[0].min(shape[1]);
            let s = Tensor::logspace(-2.0, 0.0, k, 10.0, (Kind::Double, Device::Cpu));
            let g = u.matmul(&s.diag(0)).matmul(&v.tr());
            // ... comes out with all of them near 1 (the quintic's band, about 0.7 to 1.2),
            // the same singular vectors, and its own shape.
            let o = newton_schulz(&g, 5);
            assert_eq!(o.size(), shape.to_vec());
            let sv = singular_values(&o);
            assert!(sv.iter().all(|x| (0.6..1.25).contains(x)), "{shape:?}: {sv:?}");
            let aligned = (u.tr().matmul(&o.to_kind(Kind::Double)).matmul(&v)).diagonal(0, 0, 1);
            let aligned: Vec<f64> = Vec::try_from(aligned)?;
            assert!(aligned.iter().all(|x| *x > 0.5), "{aligned:?}");
        }
        Ok(())
    }

    /// The batched bf16 iteration (what `precision = "bf16"` runs) orthogonalises a stack of
    /// tall and of wide matrices as the fp32 one does each matrix alone, to bf16's precision.
    #[test]
    fn batched_bf16_newton_schulz_matches_fp32() {
        tch::manual_seed(5);
        for shape in [[3i64, 48, 32], [2, 32, 48]] {
            let g = Tensor::randn(shape, (Kind::Float, Device::Cpu));
            let batched = newton_schulz_batched(&g, 5, Kind::BFloat16).to_kind(Kind::Float);
            assert_eq!(batched.size(), shape.to_vec());
            for i in 0..shape[0] {
                let one = newton_schulz(&g.get(i), 5);
                let rel = (&one - batched.get(i)).norm().double_value(&[]) / one.norm().double_value(&[]);
                assert!(rel < 0.05, "{shape:?}[{i}]: bf16 batched differs from fp32 by {rel}");
            }
        }
    }

    /// Two Muon steps in this optimiser against the same two steps computed by PyTorch from
    /// Keller Jordan's published algorithm (the venv's torch), on a tall and a wide matrix; the
    /// embedding beside them stays on AdamW.
    #[test]
    fn muon_matches_a_pytorch_reference() -> Result<()> {
        let dir = tempfile::tempdir()?;
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        // Named as the model names them (model.layers.0.mlp.up_proj, ...): a tall and a wide one.
        let block = &root / "model" / "layers" / 0;
        let shapes = [("mlp", "up_proj", [48i64, 32]), ("self_attn", "o_proj", [32, 48])];
        let vars: Vec<Tensor> = shapes
            .iter()
            .map(|(m, n, s)| (&block / *m).var(n, s, nn::Init::Randn { mean: 0.0, stdev: 0.1 }))
            .collect();
        let emb = (&root / "model").var("embed_tokens", &[10, 4], nn::Init::Const(0.5));
        let mu = MuonConfig {
            lr_scale: 10.0,
            momentum: 0.95,
            ns_steps: 5,
            ns_bf16: false,
        };
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            muon: Some(mu),
        };
        let mut opt = AdamW::new(&vs, cfg);
        let mut saved: Vec<(String, Tensor)> = Vec::new();
        for (i, v) in vars.iter().enumerate() {
            saved.push((format!("w{i}"), v.detach().copy()));
        }
        let lr = 0.002;
        for step in 0..2 {
            let grads: Vec<Tensor> = shapes
                .iter()
                .map(|(_, _, s)| Tensor::randn(*s, (Kind::Float, Device::Cpu)))
                .collect();
            let loss = vars
                .iter()
                .zip(&grads)
                .map(|(v, g)| (v * g).sum(Kind::Float))
                .fold(emb.sum(Kind::Float), |a, b| a + b);
            opt.zero_grad();
            loss.backward();
            opt.step(lr);
            for (i, g) in grads.iter().enumerate() {
                saved.push((format!("g{step}_{i}"), g.copy()));
            }
        }
        for (i, v) in vars.iter().enumerate() {
            saved.push((format!("out{i}"), v.detach().copy()));
        }
        let input = dir.path().join("in.safetensors");
        Tensor::write_safetensors(&saved, &input)?;
        let script = r#"
import sys, torch
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1])
lr, wd, mom = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
def zeropower_via_newtonschulz5(G, steps):
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.float()
    if G.size(0) > G.size(1):
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(0) > G.size(1):
        X = X.T
    return X
out = {}
for i in range(2):
    w = t[f"w{i}"].clone()
    buf = torch.zeros_like(w)
    for step in range(2):
        g = t[f"g{step}_{i}"]
        buf.mul_(mom).add_(g)
        u = zeropower_via_newtonschulz5(g.add(buf, alpha=mom), 5)
        w.mul_(1 - lr * wd)
        w.add_(u, alpha=-lr * max(1, w.size(0) / w.size(1)) ** 0.5)
    out[f"ref{i}"] = w
save_file(out, sys.argv[5])
"#;
        let output = dir.path().join("ref.safetensors");
        let o = std::process::Command::new(testkit::venv_python())
            .args(["-c", script])
            .arg(&input)
            .args([format!("{}", lr * mu.lr_scale), "0.1".into(), "0.95".into()])
            .arg(&output)
            .output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let refs: BTreeMap<String, Tensor> = Tensor::read_safetensors(&output)?.into_iter().collect();
        for (i, v) in vars.iter().enumerate() {
            let diff = (v - &refs[&format!("ref{i}")]).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "matrix {i} differs from PyTorch's by {diff}");
            // Muon moved it (by about lr · scale per step, not by AdamW's ±lr per element).
            let moved = (v - &saved[i].1).abs().max().double_value(&[]);
            assert!(moved > 1e-3, "matrix {i} moved {moved}");
        }
        // The embedding stayed on AdamW: two steps of ±lr, no decay on embeddings.
        let e: Vec<f32> = Vec::try_from(emb.flatten(0, -1))?;
        assert!(e.iter().all(|x| (*x as f64 - (0.5 - 2.0 * lr)).abs() < 1e-5), "{e:?}");
        Ok(())
    }

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
            muon: None,
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
            muon: None,
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
            muon: None,
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
