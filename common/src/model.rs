//! The GPT: a decoder-only transformer in the Llama layout (RMSNorm, rotary position
//! embeddings, grouped-query attention through libtorch's `scaled_dot_product_attention`,
//! a SwiGLU MLP, optionally tied embeddings), with a pre-allocated KV cache.
//!
//! Parameter names are the Hugging Face Llama names, so `model.safetensors` is legible
//! by other tools:
//!
//! | name | shape |
//! | --- | --- |
//! | `model.embed_tokens.weight` | `[vocab, d]` |
//! | `model.layers.{i}.input_layernorm.weight` | `[d]` |
//! | `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight` | `[h*hd, d]`, `[kv*hd, d]`, `[kv*hd, d]`, `[d, h*hd]` |
//! | `model.layers.{i}.post_attention_layernorm.weight` | `[d]` |
//! | `model.layers.{i}.mlp.{gate,up,down}_proj.weight` | `[f, d]`, `[f, d]`, `[d, f]` |
//! | `model.norm.weight` | `[d]` |
//! | `lm_head.weight` | `[vocab, d]` (absent when embeddings are tied) |
//!
//! Imported Hugging Face models add what their family needs: `…{q,k,v}_proj.bias` (Qwen2),
//! `…o_proj.bias` and `…mlp.*.bias` (Llama's `attention_bias` / `mlp_bias`), a head
//! dimension other than `d / h`, and scaled rotary frequencies (`linear`, `llama3`).
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// Architecture of the GPT. Saved as `config.json` beside the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Size of the vocabulary (rows of the embedding and of the output head).
    pub vocab_size: i64,
    /// Number of transformer blocks.
    pub n_layer: i64,
    /// Number of query heads.
    pub n_head: i64,
    /// Number of key/value heads (grouped-query attention when smaller than `n_head`).
    pub n_kv_head: i64,
    /// Width of the residual stream.
    pub n_embd: i64,
    /// Hidden width of the SwiGLU MLP.
    pub intermediate_size: i64,
    /// Longest sequence the model is trained for (rotary tables and KV cache size).
    pub max_seq_len: i64,
    /// Base of the rotary position embedding frequencies.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Epsilon of RMSNorm.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Whether the output head shares the input embedding matrix.
    #[serde(default)]
    pub tie_embeddings: bool,
    /// Dimension of one attention head when it is not `n_embd / n_head` (some imported models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    /// Biases on the query, key and value projections (Qwen2; Llama with `attention_bias`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama with `attention_bias`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub o_bias: bool,
    /// Biases on the MLP projections (Llama with `mlp_bias`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub mlp_bias: bool,
    /// Scaling of the rotary frequencies (imported long-context models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How rotary frequencies are scaled, as Hugging Face `rope_scaling` / `rope_parameters` name it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RopeScaling {
    /// Positions divided by `factor` (every frequency divided by it).
    Linear {
        /// Divisor of the frequencies.
        factor: f64,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Context length the model was first trained with.
        original_max_position_embeddings: i64,
    },
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_norm_eps() -> f64 {
    1e-5
}

/// Named architecture presets; `vocab_size` is set from the tokenizer.
pub const PRESETS: &[&str] = &["tiny", "default", "long", "d8", "d6", "d12", "d20"];

impl GptConfig {
    /// A named preset: `tiny` (tests, ~50k parameters), `default` (`just pipeline` on a laptop
    /// CPU, ~5M), `long` (the default with a 1024-token context, for hub data such as GSM8K's
    /// worked solutions: same parameters, ~1.2x its FLOPs per token at full length, measured
    /// 8.1k against 8.7k tokens/s on a 2-core CPU), `d8` (the default's width at twice its
    /// depth, ~8M: twice its compute), `d6` (6 layers of width 384, ~14M: 2.6x the default's
    /// parameters and ~2.9x its compute per token, the largest CPU point of `experiment run
    /// rl-scaling`),
    /// `d12` (GPU, GPT-2-small-sized, ~110M), `d20` (GPU, ~500M).
    pub fn preset(name: &str, vocab_size: i64) -> Result<Self> {
        let (n_layer, n_head, n_kv_head, n_embd, inter, seq) = match name {
            "tiny" => (2, 2, 2, 32, 96, 128),
            "default" => (4, 4, 4, 256, 704, 256),
            "long" => (4, 4, 4, 256, 704, 1024),
            "d8" => (8, 4, 4, 256, 704, 256),
            "d6" => (6, 6, 6, 384, 1024, 256),
            "d12" => (12, 12, 12, 768, 2048, 1024),
            "d20" => (20, 10, 10, 1280, 3456, 2048),
            other => bail!("unknown model preset `{other}`: expected one of {}", PRESETS.join(", ")),
        };
        Ok(GptConfig {
            vocab_size,
            n_layer,
            n_head,
            n_kv_head,
            n_embd,
            intermediate_size: inter,
            max_seq_len: seq,
            rope_theta: default_rope_theta(),
            norm_eps: default_norm_eps(),
            tie_embeddings: false,
            head_dim: None,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            rope_scaling: None,
        })
    }

    /// Checks the architecture is buildable; the error names the offending field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_kv_head", self.n_kv_head),
            ("n_embd", self.n_embd),
            ("intermediate_size", self.intermediate_size),
            ("max_seq_len", self.max_seq_len),
        ];
        for (name, v) in positive {
            if v <= 0 {
                bail!("model.{name} must be positive, got {v}");
            }
        }
        if let Some(hd) = self.head_dim {
            if hd <= 0 || hd % 2 != 0 {
                bail!("model.head_dim must be positive and even for rotary embeddings, got {hd}");
            }
        } else if self.n_embd % self.n_head != 0 {
            bail!(
                "model.n_embd ({}) must be divisible by model.n_head ({})",
                self.n_embd,
                self.n_head
            );
        }
        if self.head_dim() % 2 != 0 {
            bail!(
                "head dimension n_embd/n_head = {} must be even for rotary embeddings",
                self.head_dim()
            );
        }
        if self.n_head % self.n_kv_head != 0 {
            bail!(
                "model.n_head ({}) must be a multiple of model.n_kv_head ({})",
                self.n_head,
                self.n_kv_head
            );
        }
        if !(self.rope_theta > 0.0) || !(self.norm_eps > 0.0) {
            bail!("model.rope_theta and model.norm_eps must be positive");
        }
        Ok(())
    }

    /// Dimension of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }

    /// Number of parameters in total.
    pub fn num_params(&self) -> i64 {
        let emb = self.vocab_size * self.n_embd;
        let head = if self.tie_embeddings { 0 } else { emb };
        emb + head + self.n_layer * self.block_params() + self.n_embd
    }

    /// [`Self::num_params`] computed in floating point, so that absurd dimensions (a corrupt
    /// or hostile `config.json`) give a huge number instead of an overflow.
    pub fn num_params_f64(&self) -> f64 {
        let f = |x: i64| x as f64;
        let (d, hd, i) = (f(self.n_embd), f(self.head_dim()), f(self.intermediate_size));
        let (h, kv) = (f(self.n_head), f(self.n_kv_head));
        let mut block = d * h * hd * 2.0 + d * kv * hd * 2.0 + 3.0 * d * i + 2.0 * d;
        if self.qkv_bias {
            block += (h + 2.0 * kv) * hd;
        }
        if self.o_bias {
            block += d;
        }
        if self.mlp_bias {
            block += 2.0 * i + d;
        }
        let emb = f(self.vocab_size) * d;
        emb * if self.tie_embeddings { 1.0 } else { 2.0 } + f(self.n_layer) * block + d
    }

    fn block_params(&self) -> i64 {
        self.block_matmul_params() + self.block_bias_params() + 2 * self.n_embd
    }

    fn block_matmul_params(&self) -> i64 {
        let d = self.n_embd;
        let hd = self.head_dim();
        d * self.n_head * hd * 2 + d * self.n_kv_head * hd * 2 + 3 * d * self.intermediate_size
    }

    fn block_bias_params(&self) -> i64 {
        let hd = self.head_dim();
        let mut n = 0;
        if self.qkv_bias {
            n += (self.n_head + 2 * self.n_kv_head) * hd;
        }
        if self.o_bias {
            n += self.n_embd;
        }
        if self.mlp_bias {
            n += 2 * self.intermediate_size + self.n_embd;
        }
        n
    }

    /// Parameters that take part in matrix products per token: every block's matrices and
    /// the output head, not the input embedding lookup, the norms nor the biases. This is
    /// the `N` of the `6·N` training FLOPs per token.
    pub fn matmul_params(&self) -> i64 {
        self.n_layer * self.block_matmul_params() + self.vocab_size * self.n_embd
    }

    /// Training FLOPs per token: `6·N` plus attention scores and values,
    /// `6 · n_layer · 2 · seq · d` (forward `2·2·seq·d`, backward twice that) for causal
    /// attention averaged over positions (`seq/2` keys each, so `6·L·2·(seq/2)·d·2`).
    pub fn train_flops_per_token(&self, seq_len: i64) -> f64 {
        6.0 * self.matmul_params() as f64 + 6.0 * (self.n_layer * seq_len * self.n_head * self.head_dim()) as f64
    }
}

/// Root-mean-square layer norm with a learned gain.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Gain initialised to one.
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        RmsNorm {
            weight: p.var("weight", &[dim], nn::Init::Const(1.0)),
            eps,
        }
    }

    /// `x` normalised, handed back in `kind`. From an fp32 residual stream into bf16 (mixed
    /// precision), the row scale is computed in fp32 and the gain applied in bf16: the same
    /// forward cost as normalising in fp32 and casting, but the backward pass runs on half the
    /// bytes (3.6-4.0 against 5.1-6.9 ms forward and backward at the default model's shape on a
    /// CPU, three rounds each); the output's error against fp64 is 3.0e-3 against 1.7e-3
    /// relative (one bf16 rounding more).
    pub fn forward_in(&self, x: &Tensor, kind: Kind) -> Tensor {
        if kind == x.kind() {
            return self.forward(x);
        }
        let inv_rms = x.square().mean_dim(-1, true, x.kind()).g_add_scalar(self.eps).rsqrt();
        (x * inv_rms).to_kind(kind) * in_kind(&self.weight, kind)
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let d = *x.size().last().unwrap_or(&1);
        if x.kind() == self.weight.kind() {
            x.rms_norm([d], Some(&self.weight), self.eps)
        } else {
            // Reduced-precision activations: normalise in fp32, hand back the input's precision.
            x.to_kind(self.weight.kind())
                .rms_norm([d], Some(&self.weight), self.eps)
                .to_kind(x.kind())
        }
    }
}

/// A linear layer (bias optional) that computes in the precision of its input: with bf16
/// activations the fp32 weight is cast on the fly (autograd flows back to the fp32 master).
#[derive(Debug)]
struct Linear {
    ws: Tensor,
    bs: Option<Tensor>,
    lora: Option<Lora>,
}

/// A low-rank adapter on a linear layer (LoRA): `y += scale · x Aᵀ Bᵀ`, with `A` `[r, in]`
/// and `B` `[out, r]` (zero at the start, so the adapted model starts as the base model).
#[derive(Debug)]
struct Lora {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

pub(crate) fn in_kind(t: &Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        // `linear` (as torch.nn.Linear): the bias is fused and the weight gradient comes out
        // in the weight's own layout.
        let bias = self.bs.as_ref().map(|b| in_kind(b, kind));
        let y = x.linear(&in_kind(&self.ws, kind), bias.as_ref());
        match &self.lora {
            None => y,
            Some(l) => {
                y + x
                    .linear::<Tensor>(&in_kind(&l.a, kind), None)
                    .linear::<Tensor>(&in_kind(&l.b, kind), None)
                    * l.scale
            }
        }
    }
}

/// Rows (tokens) from which linear layers that read the same input run as one matrix
/// product over their concatenated weights (q/k/v; gate/up) at inference (a prompt's
/// prefill). Not under autograd: there the split outputs' gradients must be concatenated
/// again, and training measured 4-8% slower fused on this CPU; nor while decoding, where
/// copying the weights would cost more than it saves.
const FUSE_MIN_ROWS: i64 = 256;

/// `x` through each of `layers` (same input width), as one product when worth it.
fn linear_many(layers: &[&Linear], x: &Tensor) -> Vec<Tensor> {
    let rows = x.numel() as i64 / x.size().last().copied().unwrap_or(1).max(1);
    let same_bias = layers.iter().all(|l| l.bs.is_some() == layers[0].bs.is_some());
    if rows < FUSE_MIN_ROWS || x.requires_grad() || !same_bias || layers.iter().any(|l| l.lora.is_some()) {
        return layers.iter().map(|l| l.forward(x)).collect();
    }
    let kind = x.kind();
    let ws: Vec<Tensor> = layers.iter().map(|l| in_kind(&l.ws, kind)).collect();
    let bs: Vec<Tensor> = layers
        .iter()
        .filter_map(|l| l.bs.as_ref())
        .map(|b| in_kind(b, kind))
        .collect();
    let bias = (!bs.is_empty()).then(|| Tensor::cat(&bs, 0));
    let y = x.linear(&Tensor::cat(&ws, 0), bias.as_ref());
    let sizes: Vec<i64> = layers.iter().map(|l| l.ws.size()[0]).collect();
    y.split_with_sizes(&sizes, -1)
}

fn linear(p: nn::Path, d_in: i64, d_out: i64, std: f64, bias: bool) -> Linear {
    Linear {
        ws: p.var("weight", &[d_out, d_in], nn::Init::Randn { mean: 0.0, stdev: std }),
        bs: bias.then(|| p.var("bias", &[d_out], nn::Init::Const(0.0))),
        lora: None,
    }
}

/// Low-rank adaptation of every linear layer of the blocks (attention q/k/v/o, MLP
/// gate/up/down): the base weights stay frozen and only the adapters train.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank r of each adapter.
    pub rank: i64,
    /// The adapter's output is scaled by alpha / r.
    pub alpha: f64,
}

/// Per-layer key/value cache, pre-allocated to `capacity` positions.
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// An empty cache for `batch` rows and up to `capacity` positions.
    pub fn new(cfg: &GptConfig, batch: i64, capacity: i64, kind: Kind, device: Device) -> Self {
        let shape = [batch, cfg.n_kv_head, capacity, cfg.head_dim()];
        let layers = (0..cfg.n_layer)
            .map(|_| {
                (
                    Tensor::zeros(shape, (kind, device)),
                    Tensor::zeros(shape, (kind, device)),
                )
            })
            .collect();
        KvCache {
            layers,
            len: 0,
            capacity,
        }
    }

    /// Positions already held.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Keeps only the rows in `index` (e.g. to drop finished sequences).
    pub fn select_rows(&mut self, index: &Tensor) {
        for (k, v) in self.layers.iter_mut() {
            *k = k.index_select(0, index);
            *v = v.index_select(0, index);
        }
    }

    /// Puts the rows of `other` below these (a continuous batch admitting new sequences).
    /// The shorter cache is padded on the left with empty positions so that both end at the
    /// same column; the caller masks those positions out, as with left-padded prompts.
    /// Capacity becomes the larger of the two.
    pub fn append_rows(&mut self, other: &KvCache) {
        let len = self.len.max(other.len);
        let capacity = self.capacity.max(other.capacity);
        for ((k, v), (ok, ov)) in self.layers.iter_mut().zip(&other.layers) {
            let (a, b) = (self.len, other.len);
            *k = Tensor::cat(
                &[
                    shifted(k, 0, a, len - a, capacity),
                    shifted(ok, 0, b, len - b, capacity),
                ],
                0,
            );
            *v = Tensor::cat(
                &[
                    shifted(v, 0, a, len - a, capacity),
                    shifted(ov, 0, b, len - b, capacity),
                ],
                0,
            );
        }
        self.len = len;
        self.capacity = capacity;
    }

    /// Drops the first `n` positions of every row (positions no row attends any more, e.g.
    /// the left padding of rows that have left), making room at the end.
    pub fn drop_left(&mut self, n: i64) {
        let n = n.clamp(0, self.len);
        if n == 0 {
            return;
        }
        for (k, v) in self.layers.iter_mut() {
            *k = shifted(k, n, self.len - n, 0, self.capacity);
            *v = shifted(v, n, self.len - n, 0, self.capacity);
        }
        self.len -= n;
    }
}

/// A `[B, H, capacity, D]` copy of positions `from..from + len` of `t`, placed at `to`; zeros elsewhere.
fn shifted(t: &Tensor, from: i64, len: i64, to: i64, capacity: i64) -> Tensor {
    let mut shape = t.size();
    shape[2] = capacity;
    let out = Tensor::zeros(&shape, (t.kind(), t.device()));
    if len > 0 {
        out.narrow(2, to, len).copy_(&t.narrow(2, from, len));
    }
    out
}

/// Per-call position and masking information.
pub struct Positions<'a> {
    /// `[B, T]` positions (int64) when rows differ (left padding); `None` = `offset..offset+T`.
    pub ids: Option<&'a Tensor>,
    /// Boolean mask `[B, 1, T, T_keys]` (true = may attend); `None` = plain causal.
    pub mask: Option<&'a Tensor>,
}

impl Positions<'_> {
    /// Plain causal attention, positions counted from the cache length.
    pub const CAUSAL: Positions<'static> = Positions { ids: None, mask: None };
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_head: i64,
    n_kv_head: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &GptConfig) -> Self {
        let d = cfg.n_embd;
        let hd = cfg.head_dim();
        let std = 0.02;
        let out_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        Attention {
            q_proj: linear(&p / "q_proj", d, cfg.n_head * hd, std, cfg.qkv_bias),
            k_proj: linear(&p / "k_proj", d, cfg.n_kv_head * hd, std, cfg.qkv_bias),
            v_proj: linear(&p / "v_proj", d, cfg.n_kv_head * hd, std, cfg.qkv_bias),
            o_proj: linear(&p / "o_proj", cfg.n_head * hd, d, out_std, cfg.o_bias),
            n_head: cfg.n_head,
            n_kv_head: cfg.n_kv_head,
            head_dim: hd,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &(Tensor, Tensor),
        pos: &Positions,
        cache: Option<(&mut (Tensor, Tensor), i64)>,
        bias: &AttentionBias,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("attention input is [B, T, D]");
        let qkv = linear_many(&[&self.q_proj, &self.k_proj, &self.v_proj], x);
        let q = qkv[0].view([b, t, self.n_head, self.head_dim]).transpose(1, 2);
        let k = qkv[1].view([b, t, self.n_kv_head, self.head_dim]).transpose(1, 2);
        let v = qkv[2].view([b, t, self.n_kv_head, self.head_dim]).transpose(1, 2);
        let (cos, sin) = rope;
        let q = apply_rope(&q, cos, sin);
        let k = apply_rope(&k, cos, sin);
        let gqa = self.n_kv_head != self.n_head;
        let y = match cache {
            None => match cpu_training_attention(&q, &k, &v, pos.mask, self.n_head / self.n_kv_head, bias) {
                Some(y) => y,
                None => Tensor::scaled_dot_product_attention(&q, &k, &v, pos.mask, 0.0, pos.mask.is_none(), None, gqa),
            },
            Some(((kc, vc), offset)) => {
                kc.narrow(2, offset, t).copy_(&k);
                vc.narrow(2, offset, t).copy_(&v);
                let total = offset + t;
                let k_all = kc.narrow(2, 0, total);
                let v_all = vc.narrow(2, 0, total);
                // With a cache, queries sit at the end of the keys: causal from the bottom
                // right. SDPA's `is_causal` aligns top-left, which is the same thing when the
                // cache was empty (the prompt); otherwise build the mask unless the caller gave
                // one or a single query attends everything.
                let mask_owned;
                let (mask, is_causal) = match pos.mask {
                    Some(m) => (Some(m), false),
                    None if t == 1 => (None, false),
                    None if offset == 0 => (None, true),
                    None => {
                        mask_owned = causal_mask(t, total, x.device());
                        (Some(&mask_owned), false)
                    }
                };
                Tensor::scaled_dot_product_attention(&q, &k_all, &v_all, mask, 0.0, is_causal, None, gqa)
            }
        };
        let y = y.transpose(1, 2).contiguous().view([b, t, self.n_head * self.head_dim]);
        self.o_proj.forward(&y)
    }
}

/// The longest sequence for which [`cpu_training_attention`] beats libtorch's flash attention.
const CPU_ATTENTION_MAX_T: i64 = 384;

/// Attention for a training step on the CPU in bf16, as three ops whose products run in bf16
/// (scores with the mask added, softmax, weighted values); `None` where libtorch's
/// `scaled_dot_product_attention` is the faster choice (another device or precision, no
/// gradient wanted, sequences longer than [`CPU_ATTENTION_MAX_T`]) or where a query may attend
/// no key (its softmax would be undefined). libtorch's CPU flash attention spends ~6x its forward
/// pass on the backward pass: at the default model's shape (16 x 4 heads x 256 x 64) forward and
/// backward took 8.8 ms this way against 16.8 ms (20 rounds each, 2 threads, Intel AMX); at 512
/// positions the two are even and at 1024 flash attention is 2x faster. The scores are rounded to
/// bf16 before the softmax (as under PyTorch's autocast without flash attention); the output's
/// error against fp64 is ~2 bf16 steps where flash attention's is ~1.
///
/// `bias` holds the additive mask once built: every layer of a forward pass attends under the
/// same mask, so the first layer builds it and the others reuse it.
fn cpu_training_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    rep: i64,
    bias: &AttentionBias,
) -> Option<Tensor> {
    let (b, h, t, d) = q.size4().ok()?;
    if q.device() != Device::Cpu || q.kind() != Kind::BFloat16 || !q.requires_grad() || t > CPU_ATTENTION_MAX_T {
        return None;
    }
    let kv = |x: &Tensor| {
        let x = if rep > 1 {
            x.repeat_interleave_self_int(rep, 1, None)
        } else {
            x.shallow_clone()
        };
        x.reshape([b * h, t, d])
    };
    let bias = bias
        .get_or_init(|| attention_bias(mask, [b, h, t], q.device()))
        .as_ref()?;
    let scores = bias.baddbmm(
        &q.reshape([b * h, t, d]),
        &kv(k).transpose(1, 2),
        1.0,
        1.0 / (d as f64).sqrt(),
    );
    Some(scores.softmax(-1, Kind::BFloat16).bmm(&kv(v)).view([b, h, t, d]))
}

/// The additive attention mask of [`cpu_training_attention`], built at most once per forward pass.
type AttentionBias = std::cell::OnceCell<Option<Tensor>>;

/// `0` where a query may attend a key, `-inf` elsewhere, in bf16: `[1, t, t]` (causal) or
/// `[b · h, t, t]` (from a `[b, 1, t, t]` mask); `None` for a mask of another shape or one under
/// which some query may attend no key.
fn attention_bias(mask: Option<&Tensor>, [b, h, t]: [i64; 3], device: Device) -> Option<Tensor> {
    let neg_inf = |shape: &[i64], blocked: &Tensor| {
        Tensor::zeros(shape, (Kind::BFloat16, device)).masked_fill_(blocked, f64::NEG_INFINITY)
    };
    match mask {
        Some(m) => {
            if m.size() != [b, 1, t, t] || m.any_dim(-1, false).all().int64_value(&[]) == 0 {
                return None;
            }
            Some(
                neg_inf(&[b, 1, t, t], &m.logical_not())
                    .expand([b, h, t, t], false)
                    .reshape([b * h, t, t]),
            )
        }
        None => Some(neg_inf(
            &[1, t, t],
            &causal_mask(t, t, device).view([1, t, t]).logical_not(),
        )),
    }
}

/// Boolean mask `[1, 1, t, total]` where query `i` (at position `total - t + i`) sees keys `<=` it.
pub fn causal_mask(t: i64, total: i64, device: Device) -> Tensor {
    let q = Tensor::arange_start(total - t, total, (Kind::Int64, device)).unsqueeze(1);
    let k = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
    k.le_tensor(&q).view([1, 1, t, total])
}

/// Rotary embedding in the "rotate half" layout: `x·cos + [-x₂, x₁]·sin`, computed as
/// `x·cos + roll(x)·sin±` with the sign folded into the table (`sin±` = `[-sin, sin]`, see
/// [`rope_tables`]): two ops fewer than negating and concatenating the halves, the same values
/// bit for bit, ~1.35x faster forward and backward at the default model's shape on a CPU.
fn apply_rope(x: &Tensor, cos: &Tensor, signed_sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    (x * cos).addcmul(&x.roll([half], [-1]), signed_sin)
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn new(p: nn::Path, cfg: &GptConfig) -> Self {
        let out_std = 0.02 / (2.0 * cfg.n_layer as f64).sqrt();
        Mlp {
            gate_proj: linear(&p / "gate_proj", cfg.n_embd, cfg.intermediate_size, 0.02, cfg.mlp_bias),
            up_proj: linear(&p / "up_proj", cfg.n_embd, cfg.intermediate_size, 0.02, cfg.mlp_bias),
            down_proj: linear(
                &p / "down_proj",
                cfg.intermediate_size,
                cfg.n_embd,
                out_std,
                cfg.mlp_bias,
            ),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let gu = linear_many(&[&self.gate_proj, &self.up_proj], x);
        self.down_proj.forward(&(gu[0].silu() * &gu[1]))
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

const LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl Block {
    fn linears(&self) -> [(&'static str, &Linear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        let l = [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ];
        std::array::from_fn(|i| (LINEARS[i], l[i]))
    }

    fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        let [q, k, v, o] = [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj];
        let [g, u, d] = [&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj];
        let mut it = [q, k, v, o, g, u, d].into_iter();
        std::array::from_fn(|i| (LINEARS[i], it.next().expect("seven linear layers")))
    }
}

/// The GPT. Build it in a `VarStore` (`Gpt::new(vs.root(), &cfg)`), then call `forward`.
pub struct Gpt {
    cfg: GptConfig,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Tensor>,
    rope_cos: Tensor,
    /// Sines with the first half negated ([`rope_tables`]).
    rope_sin: Tensor,
    compute: Kind,
}

impl Gpt {
    /// Creates the parameters under `p` (use `vs.root()`), initialised GPT-2 style.
    pub fn new(p: nn::Path, cfg: &GptConfig) -> Self {
        let model = &p / "model";
        let embed_tokens = (&model / "embed_tokens").var(
            "weight",
            &[cfg.vocab_size, cfg.n_embd],
            nn::Init::Randn { mean: 0.0, stdev: 0.02 },
        );
        let layers = (0..cfg.n_layer)
            .map(|i| {
                let lp = &model / "layers" / i;
                Block {
                    input_layernorm: RmsNorm::new(&lp / "input_layernorm", cfg.n_embd, cfg.norm_eps),
                    self_attn: Attention::new(&lp / "self_attn", cfg),
                    post_attention_layernorm: RmsNorm::new(&lp / "post_attention_layernorm", cfg.n_embd, cfg.norm_eps),
                    mlp: Mlp::new(&lp / "mlp", cfg),
                }
            })
            .collect();
        let norm = RmsNorm::new(&model / "norm", cfg.n_embd, cfg.norm_eps);
        let lm_head = (!cfg.tie_embeddings).then(|| {
            (&p / "lm_head").var(
                "weight",
                &[cfg.vocab_size, cfg.n_embd],
                nn::Init::Randn { mean: 0.0, stdev: 0.02 },
            )
        });
        let (rope_cos, rope_sin) = rope_tables(cfg, p.device());
        let compute = embed_tokens.kind();
        Gpt {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope_cos,
            rope_sin,
            compute,
        }
    }

    /// Computes in `kind` (e.g. `Kind::BFloat16`) while the weights stay in their own
    /// precision (mixed precision: fp32 master weights, bf16 matmuls). Logits are fp32.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = kind;
    }

    /// The precision activations are computed in.
    pub fn compute_kind(&self) -> Kind {
        self.compute
    }

    /// The architecture.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// Logits `[B, T, vocab]` for tokens `[B, T]`. With a cache, the tokens continue what the
    /// cache holds (prompt first, then one token at a time) and the cache is extended.
    pub fn forward(&self, tokens: &Tensor, pos: &Positions, cache: Option<&mut KvCache>) -> Tensor {
        let h = self.hidden(tokens, pos, cache);
        self.logits(&h)
    }

    /// Final hidden states `[B, T, d]` (after the last norm).
    pub fn hidden(&self, tokens: &Tensor, pos: &Positions, mut cache: Option<&mut KvCache>) -> Tensor {
        let (_, t) = tokens.size2().expect("tokens are [B, T]");
        let offset = cache.as_ref().map_or(0, |c| c.len);
        let rope = match pos.ids {
            Some(ids) => (
                self.rope_cos
                    .index_select(0, &ids.flatten(0, -1))
                    .view([ids.size()[0], 1, t, -1]),
                self.rope_sin
                    .index_select(0, &ids.flatten(0, -1))
                    .view([ids.size()[0], 1, t, -1]),
            ),
            None => (self.rope_cos.narrow(0, offset, t), self.rope_sin.narrow(0, offset, t)),
        };
        // Rotary tables follow the weights' precision (bf16 models stay bf16 end to end).
        let kind = self.compute;
        let rope = if rope.0.kind() == kind {
            rope
        } else {
            (rope.0.to_kind(kind), rope.1.to_kind(kind))
        };
        // The residual stream stays in the weights' precision (fp32 under mixed precision, as
        // autocast keeps it): each block reads a normalised copy in the compute precision and
        // adds its output back. A bf16 residual stream lost ~12% of the progress per step (the
        // default pretraining took 170 steps to a held-out bpb that PyTorch's autocast reached in
        // 150).
        let mut x = self.embed_tokens.embedding(tokens);
        let bias = AttentionBias::new();
        for (i, block) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| (&mut c.layers[i], offset));
            let a = block
                .self_attn
                .forward(&block.input_layernorm.forward_in(&x, kind), &rope, pos, c, &bias);
            x = x + a;
            let m = block.mlp.forward(&block.post_attention_layernorm.forward_in(&x, kind));
            x = x + m;
        }
        if let Some(c) = cache {
            c.len = offset + t;
        }
        self.norm.forward_in(&x, kind)
    }

    /// The output head's weight `[vocab, d]` (the embedding when tied), in its own precision.
    pub fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Output head applied to hidden states.
    pub fn logits(&self, h: &Tensor) -> Tensor {
        let w = self.head_weight();
        if h.kind() == w.kind() {
            h.linear::<Tensor>(w, None)
        } else {
            h.linear::<Tensor>(&w.to_kind(h.kind()), None).to_kind(w.kind())
        }
    }

    /// Adds a LoRA adapter to every linear layer of the blocks, its parameters created under
    /// `p` (a separate `VarStore`, so an optimiser can take the adapters alone) with PEFT's
    /// names (`model.layers.0.self_attn.q_proj.lora_A`, `[r, in]`; `lora_B`, `[out, r]`).
    pub fn add_lora(&mut self, p: &nn::Path, cfg: LoraConfig) -> Result<()> {
        if cfg.rank < 1 || !(cfg.alpha > 0.0) {
            bail!(
                "LoRA needs rank >= 1 and alpha > 0 (got rank {}, alpha {})",
                cfg.rank,
                cfg.alpha
            );
        }
        for (i, block) in self.layers.iter_mut().enumerate() {
            for (name, lin) in block.linears_mut() {
                if lin.lora.is_some() {
                    bail!("layer {i} {name} already has a LoRA adapter");
                }
                let (d_out, d_in) = lin.ws.size2()?;
                let mut lp = p / "model" / "layers" / i;
                for part in name.split('.') {
                    lp = &lp / part;
                }
                // A as PEFT initialises it (Kaiming-uniform, bound 1/sqrt(in)); B zero.
                let bound = 1.0 / (d_in as f64).sqrt();
                let a = lp.var("lora_A", &[cfg.rank, d_in], nn::Init::Uniform { lo: -bound, up: bound });
                let b = lp.var("lora_B", &[d_out, cfg.rank], nn::Init::Const(0.0));
                lin.lora = Some(Lora {
                    a,
                    b,
                    scale: cfg.alpha / cfg.rank as f64,
                });
            }
        }
        Ok(())
    }

    /// What the adapters add to each base weight, `scale · B A`, by the weight's name
    /// (e.g. `model.layers.0.mlp.down_proj.weight`); empty without adapters.
    pub fn lora_deltas(&self) -> Vec<(String, Tensor)> {
        let _g = tch::no_grad_guard();
        let mut out = Vec::new();
        for (i, block) in self.layers.iter().enumerate() {
            for (name, lin) in block.linears() {
                if let Some(l) = &lin.lora {
                    out.push((format!("model.layers.{i}.{name}.weight"), l.b.matmul(&l.a) * l.scale));
                }
            }
        }
        out
    }

    /// A fresh cache sized for this model.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        KvCache::new(&self.cfg, batch, capacity, self.compute, self.embed_tokens.device())
    }
}

trait EmbeddingExt {
    fn embedding(&self, tokens: &Tensor) -> Tensor;
}

impl EmbeddingExt for Tensor {
    fn embedding(&self, tokens: &Tensor) -> Tensor {
        Tensor::embedding(self, tokens, -1, false, false)
    }
}

/// Rotary inverse frequencies, `head_dim / 2` of them, scaled as configured (the
/// formulas of Hugging Face `modeling_rope_utils`).
pub fn rope_inv_freq(cfg: &GptConfig) -> Vec<f64> {
    let hd = cfg.head_dim();
    let base: Vec<f64> = (0..hd / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64))
        .collect();
    match &cfg.rope_scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// Rotary tables `[max_seq_len, head_dim]` (Hugging Face "rotate half" layout): the cosines,
/// and the sines with their first half negated (the sign of the rotated half, for
/// [`apply_rope`]).
fn rope_tables(cfg: &GptConfig, device: Device) -> (Tensor, Tensor) {
    let inv_freq: Vec<f32> = rope_inv_freq(cfg).into_iter().map(|f| f as f32).collect();
    let inv_freq = Tensor::from_slice(&inv_freq);
    let t = Tensor::arange(cfg.max_seq_len, (Kind::Float, Device::Cpu));
    let freqs = t.outer(&inv_freq);
    let emb = Tensor::cat(&[&freqs, &freqs], 1);
    let sin = freqs.sin();
    (
        emb.cos().to_device(device),
        Tensor::cat(&[&sin.neg(), &sin], 1).to_device(device),
    )
}

/// Checks a token id tensor against the vocabulary with a clear error.
pub fn check_tokens(tokens: &Tensor, vocab_size: i64) -> Result<()> {
    if tokens.numel() == 0 {
        return Ok(());
    }
    let max = tokens.max().int64_value(&[]);
    let min = tokens.min().int64_value(&[]);
    if min < 0 || max >= vocab_size {
        bail!("token ids span [{min}, {max}] but the model's vocabulary has {vocab_size} entries: tokenizer and model do not match");
    }
    Ok(())
}

/// Reads a `config.json` written by [`GptConfig`] serialisation.
pub fn read_config(path: &std::path::Path) -> Result<GptConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: GptConfig = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    cfg.validate().with_context(|| format!("checking {}", path.display()))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GptConfig {
        let mut c = GptConfig::preset("tiny", 61).unwrap_or_else(|e| panic!("{e}"));
        c.n_head = 4;
        c.n_kv_head = 2;
        c
    }

    #[test]
    fn lora_starts_as_the_base_trains_alone_and_merges_exactly() -> Result<()> {
        use crate::optim::{AdamW, AdamWConfig};
        tch::manual_seed(7);
        let cfg = tiny();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let mut m = Gpt::new(vs.root(), &cfg);
        let tokens = Tensor::randint(cfg.vocab_size, [2, 24], (Kind::Int64, Device::Cpu));
        let before = tch::no_grad(|| m.forward(&tokens, &Positions::CAUSAL, None));
        let base: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, v)| (k, v.copy())).collect();
        let adapters = nn::VarStore::new(Device::Cpu);
        m.add_lora(&adapters.root(), LoraConfig { rank: 2, alpha: 4.0 })?;
        vs.freeze();
        let names: Vec<String> = adapters.variables().into_keys().collect();
        assert_eq!(names.len(), 2 * 7 * cfg.n_layer as usize);
        assert!(
            names.contains(&"model.layers.0.self_attn.q_proj.lora_A".to_string()),
            "{names:?}"
        );
        assert_eq!(
            adapters.variables()["model.layers.1.mlp.down_proj.lora_B"].size(),
            vec![cfg.n_embd, 2]
        );
        // B = 0: the adapted model is the base model, bit for bit.
        let start = tch::no_grad(|| m.forward(&tokens, &Positions::CAUSAL, None));
        assert_eq!((&start - &before).abs().max().double_value(&[]), 0.0);
        assert!(m
            .add_lora(&adapters.root(), LoraConfig { rank: 2, alpha: 4.0 })
            .is_err());
        // Two optimiser steps on the adapters: the base does not move, the output does.
        let mut opt = AdamW::new(
            &adapters,
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.0,
                muon: None,
            },
        );
        for _ in 0..2 {
            opt.zero_grad();
            let loss = m
                .forward(&tokens.narrow(1, 0, 23), &Positions::CAUSAL, None)
                .view([-1, cfg.vocab_size])
                .cross_entropy_for_logits(&tokens.narrow(1, 1, 23).reshape([-1]));
            loss.backward();
            opt.step(1e-2);
        }
        for (k, v) in &base {
            assert_eq!((&vs.variables()[k] - v).abs().max().double_value(&[]), 0.0, "{k} moved");
        }
        let adapted = tch::no_grad(|| m.forward(&tokens, &Positions::CAUSAL, None));
        assert!((&adapted - &before).abs().max().double_value(&[]) > 1e-3);
        // Merging scale·BA into a plain model gives the adapted model's logits.
        let mut merged = nn::VarStore::new(Device::Cpu);
        let plain = Gpt::new(merged.root(), &cfg);
        merged.copy(&vs)?;
        let vars = merged.variables();
        let deltas = m.lora_deltas();
        assert_eq!(deltas.len(), 7 * cfg.n_layer as usize);
        tch::no_grad(|| {
            for (name, d) in &deltas {
                let _ = vars[name].shallow_clone().g_add_(d);
            }
        });
        let again = tch::no_grad(|| plain.forward(&tokens, &Positions::CAUSAL, None));
        let diff = (&again - &adapted).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "merged vs adapted logits differ by {diff}");
        Ok(())
    }

    #[test]
    fn fused_inference_products_match_the_training_path() -> Result<()> {
        tch::manual_seed(11);
        let mut cfg = tiny();
        cfg.qkv_bias = true;
        cfg.mlp_bias = true;
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Gpt::new(vs.root(), &cfg);
        {
            let _g = tch::no_grad_guard();
            for (_, v) in vs.variables() {
                let _ = v.shallow_clone().g_add_(&(v.randn_like() * 0.02)); // non-zero biases too
            }
        }
        // 4 x 80 = 320 rows: at or above FUSE_MIN_ROWS, so inference takes the fused path.
        let tokens = Tensor::randint(cfg.vocab_size, [4, 80], (Kind::Int64, Device::Cpu));
        const { assert!(4 * 80 >= FUSE_MIN_ROWS) };
        let fused = tch::no_grad(|| m.forward(&tokens, &Positions::CAUSAL, None));
        let separate = m.forward(&tokens, &Positions::CAUSAL, None); // under autograd: not fused
        assert!(separate.requires_grad());
        let diff = (&fused - &separate.detach()).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "fused vs separate products differ by {diff}");
        Ok(())
    }

    #[test]
    fn parameter_names_and_count() -> Result<()> {
        let cfg = tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = Gpt::new(vs.root(), &cfg);
        let vars = vs.variables();
        assert!(vars.contains_key("model.layers.1.self_attn.k_proj.weight"));
        assert!(vars.contains_key("lm_head.weight"));
        assert_eq!(vars["model.layers.0.self_attn.k_proj.weight"].size(), vec![16, 32]);
        let total: i64 = vars.values().map(|t| t.numel() as i64).sum();
        assert_eq!(total, cfg.num_params());
        Ok(())
    }

    #[test]
    fn kv_cache_matches_full_recompute() -> Result<()> {
        tch::manual_seed(0);
        let cfg = tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Gpt::new(vs.root(), &cfg);
        let _g = tch::no_grad_guard();
        let tokens = Tensor::randint(cfg.vocab_size, [3, 12], (Kind::Int64, Device::Cpu));
        let full = m.forward(&tokens, &Positions::CAUSAL, None);
        let mut cache = m.new_cache(3, 16);
        // Prompt of 5, then a chunk of 3, then one token at a time.
        let mut parts = vec![m.forward(&tokens.narrow(1, 0, 5), &Positions::CAUSAL, Some(&mut cache))];
        parts.push(m.forward(&tokens.narrow(1, 5, 3), &Positions::CAUSAL, Some(&mut cache)));
        for i in 8..12 {
            parts.push(m.forward(&tokens.narrow(1, i, 1), &Positions::CAUSAL, Some(&mut cache)));
        }
        let cached = Tensor::cat(&parts, 1);
        let diff = (&full - &cached).abs().max().double_value(&[]);
        // fp32, same kernels up to summation order: agreement to ~1e-6.
        assert!(diff < 1e-5, "max |full - cached| = {diff}");
        assert_eq!(cache.len(), 12);
        Ok(())
    }

    #[test]
    fn rows_joining_and_leaving_a_running_cache_match_full_recompute() -> Result<()> {
        tch::manual_seed(2);
        let cfg = tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Gpt::new(vs.root(), &cfg);
        let _g = tch::no_grad_guard();
        // Four sequences; each row is (tokens, next index to feed, first cache column it holds).
        let seqs: Vec<Tensor> = (0..4)
            .map(|_| Tensor::randint(cfg.vocab_size, [1, 16], (Kind::Int64, Device::Cpu)))
            .collect();
        let full: Vec<Tensor> = seqs.iter().map(|s| m.forward(s, &Positions::CAUSAL, None)).collect();
        let mut rows: Vec<(usize, i64, i64)> = Vec::new();
        let mut cache = m.new_cache(0, 24);
        let mut worst = 0f64;
        // Prompts of 4 and 4 tokens start; one of 7 joins (longer: the running rows get padded),
        // later one of 2 (shorter: it gets padded); the first row leaves midway.
        let join = |cache: &mut KvCache, rows: &mut Vec<(usize, i64, i64)>, s: usize, p: i64| {
            let mut c = m.new_cache(1, 24);
            let _ = m.forward(&seqs[s].narrow(1, 0, p), &Positions::CAUSAL, Some(&mut c));
            let grow = (p - cache.len()).max(0);
            rows.iter_mut().for_each(|r| r.2 += grow);
            let len = cache.len().max(p);
            cache.append_rows(&c);
            rows.push((s, p, len - p));
        };
        join(&mut cache, &mut rows, 0, 4);
        join(&mut cache, &mut rows, 1, 4);
        for step in 0..8 {
            match step {
                1 => join(&mut cache, &mut rows, 2, 7),
                3 => join(&mut cache, &mut rows, 3, 2),
                5 => {
                    cache.select_rows(&Tensor::from_slice(&[1i64, 2, 3]));
                    rows.remove(0);
                    let drop = rows.iter().map(|r| r.2).min().unwrap_or(0);
                    cache.drop_left(drop);
                    rows.iter_mut().for_each(|r| r.2 -= drop);
                }
                _ => {}
            }
            let (n, len) = (rows.len() as i64, cache.len());
            let toks = Tensor::cat(&rows.iter().map(|r| seqs[r.0].narrow(1, r.1, 1)).collect::<Vec<_>>(), 0);
            let ids = Tensor::from_slice(&rows.iter().map(|r| len - r.2).collect::<Vec<_>>()).view([n, 1]);
            let starts = Tensor::from_slice(&rows.iter().map(|r| r.2).collect::<Vec<_>>()).view([n, 1]);
            let mask = Tensor::arange(len + 1, (Kind::Int64, Device::Cpu))
                .view([1, len + 1])
                .ge_tensor(&starts)
                .view([n, 1, 1, len + 1]);
            let pos = Positions {
                ids: Some(&ids),
                mask: Some(&mask),
            };
            let out = m.forward(&toks, &pos, Some(&mut cache));
            for (j, r) in rows.iter_mut().enumerate() {
                let expect = full[r.0].narrow(1, r.1, 1);
                worst = worst.max((out.narrow(0, j as i64, 1) - expect).abs().max().double_value(&[]));
                r.1 += 1;
            }
        }
        assert_eq!(rows.iter().map(|r| r.1).collect::<Vec<_>>(), vec![12, 14, 7]);
        // fp32, the same kernels up to masking and summation order: agreement to ~1e-6.
        assert!(worst < 1e-5, "max |full - cached| = {worst}");
        Ok(())
    }

    #[test]
    fn bf16_compute_tracks_fp32_and_keeps_fp32_masters() -> Result<()> {
        tch::manual_seed(1);
        let cfg = tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let mut m = Gpt::new(vs.root(), &cfg);
        let tokens = Tensor::randint(cfg.vocab_size, [2, 16], (Kind::Int64, Device::Cpu));
        let full = m.forward(&tokens, &Positions::CAUSAL, None);
        m.set_compute_kind(Kind::BFloat16);
        let half = m.forward(&tokens, &Positions::CAUSAL, None);
        assert_eq!(half.kind(), Kind::Float, "logits come back in fp32");
        let diff = (&full - &half).abs().max().double_value(&[]);
        // bf16 has 8 bits of mantissa: logits of a tiny random model agree to ~1e-2.
        assert!(diff < 5e-2, "bf16 vs fp32 logits differ by {diff}");
        half.sum(Kind::Float).backward();
        let g = vs.variables()["model.layers.0.mlp.up_proj.weight"].grad();
        assert_eq!(g.kind(), Kind::Float, "gradients reach the fp32 master weights");
        assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // Generation with the cache runs in the compute precision too.
        let _g = tch::no_grad_guard();
        let mut cache = m.new_cache(2, 20);
        let a = m.forward(&tokens.narrow(1, 0, 8), &Positions::CAUSAL, Some(&mut cache));
        let b = m.forward(&tokens.narrow(1, 8, 1), &Positions::CAUSAL, Some(&mut cache));
        assert_eq!((a.size()[1], b.size()[1]), (8, 1));
        Ok(())
    }

    #[test]
    fn tied_embeddings_have_no_head() {
        let mut cfg = tiny();
        cfg.tie_embeddings = true;
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = Gpt::new(vs.root(), &cfg);
        assert!(!vs.variables().contains_key("lm_head.weight"));
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = tiny();
        cfg.n_head = 3;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("n_head"), "{err}");
        assert!(GptConfig::preset("huge", 10).unwrap_err().to_string().contains("tiny"));
    }

    #[test]
    fn long_preset_is_the_default_with_a_1024_token_context() -> anyhow::Result<()> {
        let (d, l) = (GptConfig::preset("default", 4096)?, GptConfig::preset("long", 4096)?);
        assert_eq!((d.max_seq_len, l.max_seq_len), (256, 1024));
        // Rotary positions: a longer context adds no weights.
        assert_eq!(l.num_params(), d.num_params());
        Ok(())
    }

    #[test]
    fn d6_is_two_to_four_times_the_default() -> anyhow::Result<()> {
        // The largest CPU point of the RL sweep: the issue asks for a preset 2-4x the default.
        let (d, w) = (GptConfig::preset("default", 4096)?, GptConfig::preset("d6", 4096)?);
        w.validate()?;
        let ratio = w.num_params() as f64 / d.num_params() as f64;
        assert!((2.0..=4.0).contains(&ratio), "d6 / default parameters = {ratio:.2}");
        assert_eq!(w.n_embd / w.n_head, 64, "head dimension");
        Ok(())
    }
    #[test]
    fn cpu_training_attention_matches_sdpa_in_values_and_gradients() -> Result<()> {
        // Causal and block-diagonal (packed documents) masks, grouped-query heads: the bf16
        // three-op attention against libtorch's own attention in fp32 on the same values.
        tch::manual_seed(3);
        let (b, h, kvh, t, d) = (3, 4, 2, 40, 16);
        let docs = Tensor::from_slice(&(0..b * t).map(|i| (i % t) / 13 + i / t).collect::<Vec<_>>()).view([b, t]);
        let same = docs.unsqueeze(2).eq_tensor(&docs.unsqueeze(1));
        let doc_mask = same
            .logical_and(&causal_mask(t, t, Device::Cpu).view([1, t, t]))
            .unsqueeze(1);
        for mask in [None, Some(&doc_mask)] {
            let leaves: Vec<Tensor> = [h, kvh, kvh]
                .iter()
                .map(|&n| (Tensor::randn([b, n, t, d], (Kind::Float, Device::Cpu)) * 2.0).to_kind(Kind::BFloat16))
                .collect();
            let ours: Vec<Tensor> = leaves.iter().map(|x| x.detach().set_requires_grad(true)).collect();
            let theirs: Vec<Tensor> = leaves
                .iter()
                .map(|x| x.to_kind(Kind::Float).set_requires_grad(true))
                .collect();
            let grad = Tensor::randn([b, h, t, d], (Kind::Float, Device::Cpu));
            let y = cpu_training_attention(&ours[0], &ours[1], &ours[2], mask, h / kvh, &AttentionBias::new())
                .expect("the bf16 CPU path");
            let want = Tensor::scaled_dot_product_attention(
                &theirs[0],
                &theirs[1],
                &theirs[2],
                mask,
                0.0,
                mask.is_none(),
                None,
                true,
            );
            (&y * grad.to_kind(Kind::BFloat16)).sum(Kind::Float).backward();
            (&want * &grad).sum(Kind::Float).backward();
            let rel = |a: &Tensor, w: &Tensor| {
                (a.to_kind(Kind::Float) - w).norm().double_value(&[]) / w.norm().double_value(&[])
            };
            let mut errs = vec![rel(&y, &want)];
            errs.extend(ours.iter().zip(&theirs).map(|(a, w)| rel(&a.grad(), &w.grad())));
            // bf16 keeps 8 bits of mantissa (a relative step of 0.4%).
            assert!(
                errs.iter().all(|e| *e < 0.03),
                "output, dq, dk, dv relative errors {errs:?}"
            );
        }
        // Where libtorch's own attention is used: fp32, no gradient, long sequences, and a
        // query that may attend nothing.
        let x = |t: i64, kind: Kind| Tensor::randn([1, 2, t, 8], (kind, Device::Cpu));
        let grad_bf16 = |t: i64| x(t, Kind::BFloat16).set_requires_grad(true);
        let q = x(8, Kind::Float).set_requires_grad(true);
        assert!(cpu_training_attention(&q, &q, &q, None, 1, &AttentionBias::new()).is_none());
        let q = x(8, Kind::BFloat16);
        assert!(cpu_training_attention(&q, &q, &q, None, 1, &AttentionBias::new()).is_none());
        let q = grad_bf16(CPU_ATTENTION_MAX_T + 1);
        assert!(cpu_training_attention(&q, &q, &q, None, 1, &AttentionBias::new()).is_none());
        let q = grad_bf16(8);
        let blind = causal_mask(8, 8, Device::Cpu)
            .view([1, 1, 8, 8])
            .index_fill(2, &Tensor::from_slice(&[3i64]), 0);
        assert!(cpu_training_attention(&q, &q, &q, Some(&blind), 1, &AttentionBias::new()).is_none());
        assert!(cpu_training_attention(
            &q,
            &q,
            &q,
            Some(&causal_mask(8, 8, Device::Cpu)),
            1,
            &AttentionBias::new()
        )
        .is_some());
        Ok(())
    }
    #[test]
    fn rope_and_mixed_precision_norm_match_their_plain_formulas() {
        tch::manual_seed(5);
        let cfg = GptConfig::preset("tiny", 61).unwrap_or_else(|e| panic!("{e}"));
        let (cos, signed_sin) = rope_tables(&cfg, Device::Cpu);
        let (t, hd) = (20, cfg.head_dim());
        let (cos, signed_sin) = (cos.narrow(0, 0, t), signed_sin.narrow(0, 0, t));
        let x = Tensor::randn([2, 3, t, hd], (Kind::Float, Device::Cpu));
        // Hugging Face's rotate_half: x·cos + [-x₂, x₁]·sin, with sin = [s, s].
        let (x1, x2) = (x.narrow(3, 0, hd / 2), x.narrow(3, hd / 2, hd / 2));
        let sin = signed_sin.narrow(1, hd / 2, hd / 2).repeat([1, 2]);
        let want = &x * &cos + Tensor::cat(&[x2.neg(), x1], 3) * &sin;
        let got = apply_rope(&x, &cos, &signed_sin);
        assert!((got - want).abs().max().double_value(&[]) < 1e-6);
        // The norm into bf16 from fp32: within a bf16 rounding of the fp32 norm, gradients too.
        let vs = nn::VarStore::new(Device::Cpu);
        let norm = RmsNorm::new(vs.root() / "n", 48, 1e-5);
        let _ = tch::no_grad(|| norm.weight.shallow_clone().uniform_(0.5, 1.5));
        let x = (Tensor::randn([4, 7, 48], (Kind::Float, Device::Cpu)) * 3.0).set_requires_grad(true);
        let g = Tensor::randn([4, 7, 48], (Kind::Float, Device::Cpu));
        let plain = norm.forward(&x);
        let (gx, gw) = {
            let grads = Tensor::run_backward(&[(&plain * &g).sum(Kind::Float)], &[&x, &norm.weight], false, false);
            (grads[0].copy(), grads[1].copy())
        };
        let mixed = norm.forward_in(&x, Kind::BFloat16);
        assert_eq!(mixed.kind(), Kind::BFloat16);
        let grads = Tensor::run_backward(
            &[(&mixed * g.to_kind(Kind::BFloat16)).sum(Kind::Float)],
            &[&x, &norm.weight],
            false,
            false,
        );
        let rel =
            |a: &Tensor, w: &Tensor| (a.to_kind(Kind::Float) - w).norm().double_value(&[]) / w.norm().double_value(&[]);
        let errs = [rel(&mixed, &plain), rel(&grads[0], &gx), rel(&grads[1], &gw)];
        assert!(
            errs.iter().all(|e| *e < 1e-2),
            "output, dx, dgain relative errors {errs:?}"
        );
        // Same precision in and out: the plain norm.
        assert!(
            (norm.forward_in(&x, Kind::Float) - &plain)
                .abs()
                .max()
                .double_value(&[])
                == 0.0
        );
    }
}
