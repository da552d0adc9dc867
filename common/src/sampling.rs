//! Batched generation with the KV cache: prompts of different lengths are left-padded,
//! run through the model once, then extended one token at a time for every row together.
//! Sampling settings are a small struct (greedy, temperature, top-k, top-p); randomness
//! comes from libtorch's generator, seeded by the caller.
use crate::model::{Gpt, KvCache, Positions};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// 0 = greedy (argmax); otherwise logits are divided by it.
    #[serde(default = "one")]
    pub temperature: f64,
    /// Keep only the `top_k` most likely tokens (0 = all).
    #[serde(default)]
    pub top_k: i64,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    #[serde(default = "one")]
    pub top_p: f64,
    /// Most tokens generated per row.
    #[serde(default = "default_max_new")]
    pub max_new_tokens: i64,
}

fn one() -> f64 {
    1.0
}
fn default_max_new() -> i64 {
    64
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: default_max_new(),
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: i64) -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens,
        }
    }

    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0) {
            bail!("sampling.temperature must be >= 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bail!("sampling.top_p must be in (0, 1], got {}", self.top_p);
        }
        if self.top_k < 0 || self.max_new_tokens <= 0 {
            bail!("sampling.top_k must be >= 0 and sampling.max_new_tokens > 0");
        }
        Ok(())
    }

    /// Log-probabilities `[.., V]` of the distribution actually sampled from (temperature,
    /// top-k and top-p applied). RL recomputes log-probs through this same function, so the
    /// policy ratio is not biased by a mismatch between sampling and training settings.
    pub fn log_probs(&self, logits: &Tensor) -> Tensor {
        let logits = logits.to_kind(Kind::Float);
        let t = if self.temperature > 0.0 { self.temperature } else { 1.0 };
        let mut l = logits / t;
        if self.top_k > 0 && self.top_k < *l.size().last().unwrap_or(&0) {
            let (vals, _) = l.topk(self.top_k, -1, true, true);
            let kth = vals.narrow(-1, self.top_k - 1, 1);
            l = l.masked_fill(&l.lt_tensor(&kth), f64::NEG_INFINITY);
        }
        if self.top_p < 1.0 {
            let (sorted, idx) = l.sort(-1, true);
            let probs = sorted.softmax(-1, Kind::Float);
            let cum = probs.cumsum(-1, Kind::Float);
            // Drop a token when the tokens before it already reach top_p.
            let drop = (cum - &probs).gt(self.top_p);
            let drop = Tensor::zeros_like(&drop).scatter(-1, &idx, &drop);
            l = l.masked_fill(&drop, f64::NEG_INFINITY);
        }
        l.log_softmax(-1, Kind::Float)
    }

    /// Chooses the next token of each row of `logits` `[B, V]`.
    pub fn pick(&self, logits: &Tensor) -> Tensor {
        if self.temperature == 0.0 {
            return logits.argmax(-1, false);
        }
        self.log_probs(logits).exp().multinomial(1, true).squeeze_dim(-1)
    }
}

/// Whether a prompt of `prompt_len` tokens leaves room for at least one generated token in a
/// context of `max_seq_len`.
pub fn fits_context(prompt_len: usize, max_seq_len: i64) -> bool {
    (prompt_len as i64) < max_seq_len
}

/// Output of [`generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated ids per row, without the stop token.
    pub tokens: Vec<Vec<u32>>,
    /// Whether each row ended with a stop token (false = cut at `max_new_tokens`).
    pub finished: Vec<bool>,
    /// The stop token that ended each finished row.
    pub ended_with: Vec<Option<u32>>,
    /// Tokens generated per second over the whole batch.
    pub tokens_per_sec: f64,
    /// Seconds spent.
    pub secs: f64,
}

/// Prompts left-padded with `pad` to `p_len`: token ids and positions (row-major `[B, P]`;
/// positions start at 0 on each prompt's first token) and each row's padding.
fn left_pad(prompts: &[Vec<u32>], p_len: i64, pad: u32) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let pads: Vec<i64> = prompts.iter().map(|p| p_len - p.len() as i64).collect();
    let mut ids = Vec::with_capacity(prompts.len() * p_len as usize);
    let mut pos = Vec::with_capacity(prompts.len() * p_len as usize);
    for (p, &np) in prompts.iter().zip(&pads) {
        for i in 0..p_len {
            ids.push(if i < np {
                pad as i64
            } else {
                p[(i - np) as usize] as i64
            });
            pos.push((i - np).max(0));
        }
    }
    (ids, pos, pads)
}

/// Key validity over the whole cache `[B, total]` (false on each row's left padding), and
/// the prefill's attention mask `[B, 1, P, P]` (causal, valid keys, and each query itself).
fn prefill_masks(pads: &[i64], p_len: i64, total: i64, device: Device) -> (Tensor, Tensor) {
    let pad_t = Tensor::from_slice(pads).to_device(device).view([pads.len() as i64, 1]);
    let key_idx = Tensor::arange(total, (Kind::Int64, device)).view([1, total]);
    let valid = key_idx.ge_tensor(&pad_t); // [B, total]
    let q_idx = Tensor::arange(p_len, (Kind::Int64, device)).view([p_len, 1]);
    let causal = key_idx.narrow(1, 0, p_len).le_tensor(&q_idx); // [P, P]
    let eye = Tensor::eye(p_len, (Kind::Bool, device));
    let prefill_mask = (causal.unsqueeze(0).logical_and(&valid.narrow(1, 0, p_len).unsqueeze(1)))
        .logical_or(&eye.unsqueeze(0))
        .unsqueeze(1);
    (valid, prefill_mask)
}

/// Generates a continuation of every prompt, batched, with the KV cache; stops a row at
/// any of `stops` (e.g. `<|end|>`). `pad` fills the left of shorter prompts. Each row has its
/// own answer budget, `max_new_tokens` or what its prompt leaves of the model's context,
/// whichever is smaller (a long prompt in the batch does not shorten the others'); a prompt
/// that leaves no room at all is an error (callers skip those, see [`fits_context`]).
pub fn generate(
    model: &Gpt,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    stops: &[u32],
    pad: u32,
    device: Device,
) -> Result<Generation> {
    cfg.validate()?;
    let _guard = tch::no_grad_guard();
    let t0 = Instant::now();
    let mut rows = Rows::new(prompts.len());
    if prompts.is_empty() {
        return Ok(rows.into_generation(0.0));
    }
    let max_len = model.config().max_seq_len;
    let (p_len, budget) = budgets(prompts, cfg, max_len)?;
    let new = budget.iter().copied().max().unwrap_or(0);
    let mut batch = Batch::prefill(model, prompts, p_len, p_len + new, pad, device);
    for step in 0..new {
        let mut next = cfg.pick(&batch.last);
        let picked: Vec<i64> = Vec::try_from(&next.to_device(Device::Cpu))?;
        rows.record(&picked, step, &budget, stops);
        if rows.all_done() || step == new - 1 {
            break;
        }
        if let Some(alive) = rows.drop_finished() {
            next = batch.keep(&alive, &next, device);
        }
        batch.step(model, &next, p_len + step, max_len);
    }
    Ok(rows.into_generation(t0.elapsed().as_secs_f64()))
}

/// The longest prompt's length, and each row's answer budget: `max_new_tokens` or what its
/// prompt leaves of the context, whichever is smaller.
fn budgets(prompts: &[Vec<u32>], cfg: &SamplingConfig, max_len: i64) -> Result<(i64, Vec<i64>)> {
    if prompts.iter().any(|p| p.is_empty()) {
        bail!("generation needs non-empty prompts");
    }
    let p_len = prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
    if !fits_context(p_len as usize, max_len) {
        bail!("a prompt of {p_len} tokens leaves no room in the model's context of {max_len}");
    }
    let budget: Vec<i64> = prompts
        .iter()
        .map(|p| cfg.max_new_tokens.min(max_len - p.len() as i64))
        .collect();
    if budget.iter().copied().max().unwrap_or(0) <= 0 {
        bail!("max_new_tokens must be positive, got {}", cfg.max_new_tokens);
    }
    Ok((p_len, budget))
}

/// The batch being run: its KV cache, which cache slots each row may attend to, each row's
/// next position, and the logits of its last step.
struct Batch {
    cache: KvCache,
    /// Key validity `[rows, total]` (false on each row's left padding).
    valid: Tensor,
    /// Position of each row's next token `[rows]`.
    next_pos: Tensor,
    /// Logits of each row's last token `[rows, vocab]`.
    last: Tensor,
    /// Whether any prompt was left-padded. Without padding (e.g. an RL group of one prompt),
    /// plain causal attention from the cache is exact and lets SDPA take its fast, mask-free
    /// path.
    padded: bool,
}

impl Batch {
    /// Runs the left-padded prompts through the model once, filling a cache of `total` slots.
    fn prefill(model: &Gpt, prompts: &[Vec<u32>], p_len: i64, total: i64, pad: u32, device: Device) -> Self {
        let (ids, pos, pads) = left_pad(prompts, p_len, pad);
        let bi = prompts.len() as i64;
        let ids = Tensor::from_slice(&ids).view([bi, p_len]).to_device(device);
        let pos_t = Tensor::from_slice(&pos).view([bi, p_len]).to_device(device);
        let (valid, prefill_mask) = prefill_masks(&pads, p_len, total, device);
        let mut cache = model.new_cache(bi, total);
        let padded = pads.iter().any(|&p| p > 0);
        let prefill = if padded {
            Positions {
                ids: Some(&pos_t),
                mask: Some(&prefill_mask),
            }
        } else {
            Positions::CAUSAL
        };
        let logits = model.forward(&ids, &prefill, Some(&mut cache));
        let next_pos =
            Tensor::from_slice(&prompts.iter().map(|p| p.len() as i64).collect::<Vec<_>>()).to_device(device);
        Batch {
            cache,
            valid,
            next_pos,
            last: logits.select(1, p_len - 1),
            padded,
        }
    }

    /// Keeps only the batch rows `alive` (in the cache and every per-row tensor); returns
    /// `next` cut the same way.
    fn keep(&mut self, alive: &[i64], next: &Tensor, device: Device) -> Tensor {
        let idx = Tensor::from_slice(alive).to_device(device);
        self.cache.select_rows(&idx);
        self.valid = self.valid.index_select(0, &idx);
        self.next_pos = self.next_pos.index_select(0, &idx);
        next.index_select(0, &idx)
    }

    /// Feeds each row's token `next` at cache slot `cur` and keeps the new logits.
    fn step(&mut self, model: &Gpt, next: &Tensor, cur: i64, max_len: i64) {
        let rows = self.next_pos.size()[0];
        let mask = self.valid.narrow(1, 0, cur + 1).view([rows, 1, 1, cur + 1]);
        let posn = self.next_pos.view([rows, 1]);
        let step_pos = if self.padded {
            Positions {
                ids: Some(&posn),
                mask: Some(&mask),
            }
        } else {
            Positions::CAUSAL
        };
        let logits = model.forward(&next.view([rows, 1]), &step_pos, Some(&mut self.cache));
        self.last = logits.select(1, 0);
        // A row that is done but still in the batch (until a quarter has finished) keeps
        // stepping; its output is ignored, but its position must stay inside the context.
        self.next_pos = (&self.next_pos + 1).clamp_max(max_len - 1);
    }
}

/// Per prompt: the tokens generated so far, and whether and how it ended.
struct Rows {
    out: Vec<Vec<u32>>,
    done: Vec<bool>,
    finished: Vec<bool>,
    ended_with: Vec<Option<u32>>,
    generated: usize,
    /// Row `j` of the batch being run is prompt `active[j]`.
    active: Vec<usize>,
}

impl Rows {
    fn new(b: usize) -> Self {
        Rows {
            out: vec![Vec::new(); b],
            done: vec![false; b],
            finished: vec![false; b],
            ended_with: vec![None; b],
            generated: 0,
            active: (0..b).collect(),
        }
    }

    /// Records the tokens `picked` at `step` for the batch's rows: a row ends at a stop token
    /// (finished) or at its own budget (cut, not finished).
    fn record(&mut self, picked: &[i64], step: i64, budget: &[i64], stops: &[u32]) {
        for (j, &t) in picked.iter().enumerate() {
            let r = self.active[j];
            if self.done[r] {
                continue;
            }
            self.generated += 1;
            if stops.contains(&(t as u32)) {
                self.done[r] = true;
                self.finished[r] = true;
                self.ended_with[r] = Some(t as u32);
            } else {
                self.out[r].push(t as u32);
                self.done[r] = step + 1 >= budget[r];
            }
        }
    }

    fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    /// Once a quarter of the batch has finished, the batch rows still generating (and they
    /// become the batch): answers of very different lengths, as in an RL group, then stop
    /// paying for the longest one. `None` while fewer have finished.
    fn drop_finished(&mut self) -> Option<Vec<i64>> {
        let alive: Vec<i64> = (0..self.active.len())
            .filter(|&j| !self.done[self.active[j]])
            .map(|j| j as i64)
            .collect();
        if 4 * alive.len() > 3 * self.active.len() {
            return None;
        }
        self.active = alive.iter().map(|&j| self.active[j as usize]).collect();
        Some(alive)
    }

    fn into_generation(self, secs: f64) -> Generation {
        Generation {
            tokens: self.out,
            finished: self.finished,
            ended_with: self.ended_with,
            tokens_per_sec: self.generated as f64 / secs.max(1e-9),
            secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GptConfig;
    use tch::nn;

    #[test]
    fn batched_left_padded_greedy_equals_one_by_one_and_full_recompute() -> Result<()> {
        tch::manual_seed(3);
        let cfg = GptConfig::preset("tiny", 50)?;
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Gpt::new(vs.root(), &cfg);
        let prompts = vec![vec![5u32, 6, 7, 8, 9], vec![11u32, 12], vec![20u32, 21, 22]];
        let g = SamplingConfig::greedy(6);
        // Stop id 49 may or may not occur; compare raw greedy paths.
        let batch = generate(&m, &prompts, &g, &[49], 0, Device::Cpu)?;
        for (i, p) in prompts.iter().enumerate() {
            let single = generate(&m, std::slice::from_ref(p), &g, &[49], 0, Device::Cpu)?;
            assert_eq!(
                batch.tokens[i], single.tokens[0],
                "row {i}: batching changed the output"
            );
            // Full recomputation without a cache, argmax each step.
            let mut seq: Vec<i64> = p.iter().map(|&x| x as i64).collect();
            let mut expect = Vec::new();
            let _g = tch::no_grad_guard();
            for _ in 0..single.tokens[0].len() {
                let t = Tensor::from_slice(&seq).view([1, -1]);
                let logits = m.forward(&t, &Positions::CAUSAL, None);
                let next = logits
                    .select(1, seq.len() as i64 - 1)
                    .argmax(-1, false)
                    .int64_value(&[0]);
                expect.push(next as u32);
                seq.push(next);
            }
            assert_eq!(single.tokens[0], expect, "row {i}: cache and recomputation disagree");
        }
        Ok(())
    }

    #[test]
    fn rows_that_stop_early_leave_the_batch_without_changing_the_others() -> Result<()> {
        tch::manual_seed(5);
        let cfg = GptConfig::preset("tiny", 50)?;
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Gpt::new(vs.root(), &cfg);
        let prompts: Vec<Vec<u32>> = (0..8u32)
            .map(|r| (0..(3 + r % 4)).map(|i| (i * 5 + r * 3) % 45 + 1).collect())
            .collect();
        let g = SamplingConfig::greedy(12);
        let free = generate(&m, &prompts, &g, &[], 0, Device::Cpu)?;
        // Stop at the first token of rows 0..3: those rows end at once (3 of 8 rows, enough
        // to compact the batch), others end wherever those tokens first appear, or never.
        let stops: Vec<u32> = free.tokens[..3].iter().map(|t| t[0]).collect();
        let batch = generate(&m, &prompts, &g, &stops, 0, Device::Cpu)?;
        for (r, p) in prompts.iter().enumerate() {
            let single = generate(&m, std::slice::from_ref(p), &g, &stops, 0, Device::Cpu)?;
            assert_eq!(batch.tokens[r], single.tokens[0], "row {r}");
            assert_eq!(batch.ended_with[r], single.ended_with[0], "row {r}");
            let cut = free.tokens[r].iter().position(|t| stops.contains(t));
            let expect = &free.tokens[r][..cut.unwrap_or(free.tokens[r].len())];
            assert_eq!(
                batch.tokens[r], expect,
                "row {r}: not the unstopped answer up to its stop"
            );
            assert_eq!(batch.finished[r], cut.is_some(), "row {r}");
        }
        assert!(batch.finished[..3].iter().all(|&f| f));
        assert!(batch.tokens[..3].iter().all(Vec::is_empty));
        Ok(())
    }

    #[test]
    fn each_row_has_its_own_budget_and_a_long_prompt_does_not_shrink_the_others() -> Result<()> {
        tch::manual_seed(11);
        let cfg = GptConfig::preset("tiny", 50)?; // context of 128 tokens
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Gpt::new(vs.root(), &cfg);
        let long: Vec<u32> = (0..120u32).map(|i| i % 45 + 1).collect();
        let short = vec![5u32, 6, 7];
        let g = SamplingConfig::greedy(20);
        let batch = generate(&m, &[long.clone(), short.clone()], &g, &[], 0, Device::Cpu)?;
        // No stop tokens: each row is cut at its own budget, 128 - 120 = 8 and 20.
        assert_eq!(batch.tokens[0].len(), 8);
        assert_eq!(batch.tokens[1].len(), 20, "the long prompt used to cut this row to 8");
        assert!(!batch.finished[0] && !batch.finished[1]);
        let alone = generate(&m, std::slice::from_ref(&short), &g, &[], 0, Device::Cpu)?;
        assert_eq!(batch.tokens[1], alone.tokens[0], "batching changed the short row");
        let alone = generate(&m, std::slice::from_ref(&long), &g, &[], 0, Device::Cpu)?;
        assert_eq!(batch.tokens[0], alone.tokens[0], "batching changed the long row");
        // With four more rows the long one, done after 8 tokens, stays in the batch while the
        // others go on: its position must not run past the context (it used to panic there).
        let mut five = vec![long.clone()];
        five.extend(std::iter::repeat_n(short.clone(), 4));
        let batch = generate(&m, &five, &g, &[], 0, Device::Cpu)?;
        assert_eq!(batch.tokens[0], alone.tokens[0]);
        assert!(batch.tokens[1..].iter().all(|t| *t == batch.tokens[1] && t.len() == 20));
        // A prompt that fills the context leaves no room: an error callers avoid with fits_context.
        let full: Vec<u32> = (0..128u32).map(|i| i % 45 + 1).collect();
        assert!(!fits_context(full.len(), cfg.max_seq_len) && fits_context(127, cfg.max_seq_len));
        assert!(generate(&m, &[full, short], &g, &[], 0, Device::Cpu).is_err());
        Ok(())
    }

    #[test]
    fn top_k_and_top_p_restrict_support() {
        let logits = Tensor::from_slice(&[3.0f32, 2.0, 1.0, 0.0]).view([1, 4]);
        let k = SamplingConfig {
            top_k: 2,
            ..Default::default()
        }
        .log_probs(&logits)
        .exp();
        let kv: Vec<f32> = Vec::try_from(k.view([-1])).unwrap_or_default();
        assert!(
            kv[2] == 0.0 && kv[3] == 0.0 && (kv[0] + kv[1] - 1.0).abs() < 1e-6,
            "{kv:?}"
        );
        // softmax([3,2,1,0]) = [.644, .237, .087, .032]: top_p 0.8 keeps the first two.
        let p = SamplingConfig {
            top_p: 0.8,
            ..Default::default()
        }
        .log_probs(&logits)
        .exp();
        let pv: Vec<f32> = Vec::try_from(p.view([-1])).unwrap_or_default();
        assert!(pv[0] > 0.0 && pv[1] > 0.0 && pv[2] == 0.0 && pv[3] == 0.0, "{pv:?}");
        assert!(SamplingConfig {
            top_p: 0.0,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
