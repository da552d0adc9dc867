//! Memory estimates, checked before a model is built: a run that cannot fit fails at once
//! with a message naming what to lower, instead of being killed by the kernel's OOM killer
//! minutes later with no message at all.
//!
//! The estimate is deliberately rough (within a factor of about two of what libtorch
//! allocates): it exists to catch settings that are off by orders of magnitude
//! (`batch_size = 400000000`, a `config.json` with absurd dimensions), not to pack memory
//! tightly. On the CPU it is compared with `MemAvailable` of `/proc/meminfo`; on CUDA only the
//! part that lives in host memory (the batches of a step) is checked, as libtorch reports no
//! device total. `LIB2EXPERT_SKIP_MEMORY_CHECK=1` skips the check.
use crate::model::GptConfig;
use anyhow::{bail, Result};
use std::path::Path;
use tch::Device;

/// Set to `1` to skip the memory check (an estimate that is wrong for some machine).
pub const SKIP_ENV: &str = "LIB2EXPERT_SKIP_MEMORY_CHECK";

/// What a training run holds besides the model.
#[derive(Clone, Copy, Debug, Default)]
pub struct Workload {
    /// Sequences per forward/backward pass.
    pub micro_batch: i64,
    /// Tokens per sequence (`None`: the model's `max_seq_len`).
    pub seq_len: Option<i64>,
    /// Sequences of one optimizer step held in host memory at once (the LM loop draws every
    /// micro-batch of a step before the first forward pass).
    pub held_rows: i64,
    /// Whether held rows carry a `[T, T]` attention mask (document packing).
    pub held_masks: bool,
    /// Rows generated together with a KV cache (RL groups, task grading); 0 = none.
    pub gen_rows: i64,
    /// Frozen copies of the model kept beside it (RL: the KL reference, the starting model).
    pub frozen_copies: i64,
    /// Only LoRA adapters train: no full gradients or optimiser moments.
    pub lora: bool,
}

/// An estimate, in bytes, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    /// fp32 weights of the model and of its frozen copies.
    pub weights: f64,
    /// Gradients and AdamW's two moments.
    pub optimizer: f64,
    /// Activations kept for the backward pass of one micro-batch, logits included.
    pub activations: f64,
    /// The token batches of one step (host memory on every device).
    pub data: f64,
    /// KV cache and logits of generation.
    pub generation: f64,
}

impl Estimate {
    /// Everything.
    pub fn total(&self) -> f64 {
        self.weights + self.optimizer + self.activations + self.data + self.generation
    }

    /// The part that must fit in host memory on `device`.
    pub fn host(&self, device: Device) -> f64 {
        match device {
            Device::Cpu => self.total(),
            _ => self.data,
        }
    }
}

/// Estimates what training `cfg` on `w` needs.
pub fn estimate(cfg: &GptConfig, w: &Workload) -> Estimate {
    let f = |x: i64| x as f64;
    let params = cfg.num_params_f64();
    let seq = f(w.seq_len.unwrap_or(cfg.max_seq_len));
    let (d, inter, layers, heads, vocab) = (
        f(cfg.n_embd),
        f(cfg.intermediate_size),
        f(cfg.n_layer),
        f(cfg.n_head),
        f(cfg.vocab_size),
    );
    let tokens = f(w.micro_batch) * seq;
    // Per layer and token: norms, q/k/v/o, attention output, residuals (~12 d), the SwiGLU
    // MLP's gate, up, activation and product (~5 intermediate), and attention scores and
    // probabilities (2 per head and key); then the logits, their log-softmax and gradient.
    let per_token = layers * (12.0 * d + 5.0 * inter + 2.0 * heads * seq) + 3.0 * vocab;
    let kv = 2.0 * f(cfg.n_kv_head) * f(cfg.head_dim()) * layers;
    let held = f(w.held_rows) * seq;
    Estimate {
        weights: 4.0 * params * (1.0 + f(w.frozen_copies)),
        optimizer: if w.lora { 0.0 } else { 12.0 * params },
        activations: 4.0 * tokens * per_token,
        data: held * if w.held_masks { 24.0 + seq } else { 16.0 },
        generation: 4.0 * f(w.gen_rows) * (seq * kv + vocab),
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes (`None` where there is no such file).
pub fn available_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// `3.2 GiB`.
pub fn format_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v >= 10_000.0 {
        format!("{v:.2e} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn skipped() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| v == "1" || v == "true")
}

/// Fails when training `cfg` on `w` cannot fit in the memory available on `device`; the
/// error gives the estimate by part and what to lower. `what` names the run (`pretrain`).
pub fn check_training(cfg: &GptConfig, w: &Workload, device: Device, what: &str) -> Result<()> {
    let Some(avail) = available_bytes() else {
        return Ok(());
    };
    let e = estimate(cfg, w);
    let need = e.host(device);
    if need <= avail || skipped() {
        return Ok(());
    }
    let seq = w.seq_len.unwrap_or(cfg.max_seq_len);
    bail!(
        "{what} needs about {} of {} memory but {} is available (MemAvailable in /proc/meminfo): weights {} ({:.3e} parameters{}), gradients and AdamW moments {}, activations of {} sequences x {seq} tokens {}, the {} sequences of one step {}, generation {}. Lower train.batch_size, train.micro_batch_size or the sequence length, or use a smaller model (set {SKIP_ENV}=1 if this estimate is wrong for your machine)",
        format_bytes(need),
        if device == Device::Cpu { "host" } else { "host (batch)" },
        format_bytes(avail),
        format_bytes(e.weights),
        cfg.num_params_f64(),
        if w.frozen_copies > 0 { format!(" x {} copies", 1 + w.frozen_copies) } else { String::new() },
        format_bytes(e.optimizer),
        w.micro_batch,
        format_bytes(e.activations),
        w.held_rows,
        format_bytes(e.data),
        format_bytes(e.generation),
    )
}

/// Fails when the fp32 weights of `cfg`, read from `source`, cannot be built on the CPU.
pub fn check_inference(cfg: &GptConfig, device: Device, source: &Path) -> Result<()> {
    if device != Device::Cpu || skipped() {
        return Ok(());
    }
    let Some(avail) = available_bytes() else {
        return Ok(());
    };
    let need = 4.0 * cfg.num_params_f64();
    if need > avail {
        bail!(
            "{}: the model's {:.3e} parameters need {} but {} is available (MemAvailable in /proc/meminfo); check its config.json, or run on a larger machine",
            source.display(),
            cfg.num_params_f64(),
            format_bytes(need),
            format_bytes(avail)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_grows_with_the_batch_and_lora_drops_the_optimizer() -> anyhow::Result<()> {
        let cfg = GptConfig::preset("tiny", 400)?;
        let w = Workload {
            micro_batch: 2,
            seq_len: Some(32),
            held_rows: 4,
            ..Default::default()
        };
        let small = estimate(&cfg, &w);
        // 4 rows x 32 tokens x (input + target, 8 bytes each).
        assert_eq!(small.data, 4.0 * 32.0 * 16.0);
        assert_eq!(small.optimizer, 12.0 * cfg.num_params() as f64);
        let big = estimate(
            &cfg,
            &Workload {
                held_rows: 400_000_000,
                ..w
            },
        );
        assert!(big.total() > 1e11, "{}", format_bytes(big.total()));
        let lora = estimate(&cfg, &Workload { lora: true, ..w });
        assert_eq!(lora.optimizer, 0.0);
        assert_eq!(format_bytes(3.5 * 1024.0 * 1024.0 * 1024.0), "3.5 GiB");
        assert!(available_bytes().is_some_and(|b| b > 0.0), "Linux has /proc/meminfo");
        Ok(())
    }
}
