//! Hugging Face model directories: import (any stage's `--init` accepts one) and the
//! `config.json` written by `export-hf`.
//!
//! Supported: the Llama architecture family as `transformers` saves it — `LlamaForCausalLM`
//! (Llama, SmolLM), `Qwen2ForCausalLM` (biases on q/k/v) and `MistralForCausalLM`:
//! grouped-query attention, RMSNorm, SwiGLU, rotary embeddings (plain, `linear` or `llama3`
//! scaling), tied or untied embeddings, weights in `model.safetensors` or shards listed in
//! `model.safetensors.index.json`, in fp32, fp16 or bf16 (loaded into fp32 master weights).
//! Anything else is refused with the field that makes it so.
use crate::meta::{Loaded, Meta};
use crate::model::{GptConfig, RopeScaling};
use crate::tokenizer::Tok;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use tch::Tensor;

/// Architectures (`config.json` `architectures[0]`) that load.
pub const ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"];

/// Whether `dir` looks like a Hugging Face model directory (a `config.json` with a
/// `model_type`, and no lib2expert `meta.json`).
pub fn is_hf_dir(dir: &Path) -> bool {
    if dir.join("meta.json").exists() {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return false;
    };
    serde_json::from_str::<Value>(&text)
        .map(|v| v.get("model_type").is_some() || v.get("architectures").is_some())
        .unwrap_or(false)
}

fn int(c: &Value, key: &str) -> Result<i64> {
    c[key]
        .as_i64()
        .ok_or_else(|| anyhow!("config.json: `{key}` is missing or not an integer"))
}

fn float_or(c: &Value, key: &str, default: f64) -> Result<f64> {
    match &c[key] {
        Value::Null => Ok(default),
        v => v
            .as_f64()
            .ok_or_else(|| anyhow!("config.json: `{key}` is not a number")),
    }
}

fn bool_or(c: &Value, key: &str, default: bool) -> Result<bool> {
    match &c[key] {
        Value::Null => Ok(default),
        v => v
            .as_bool()
            .ok_or_else(|| anyhow!("config.json: `{key}` is not true/false")),
    }
}

/// Rotary base and scaling, from `rope_parameters` (transformers ≥ 5) or the older
/// top-level `rope_theta` and `rope_scaling`.
fn rope(c: &Value) -> Result<(f64, Option<RopeScaling>)> {
    let (params, field) = match (&c["rope_parameters"], &c["rope_scaling"]) {
        (p @ Value::Object(_), _) => (p.clone(), "rope_parameters"),
        (_, s @ Value::Object(_)) => (s.clone(), "rope_scaling"),
        _ => (Value::Null, "rope_scaling"),
    };
    let theta = match params.get("rope_theta") {
        Some(t) => t
            .as_f64()
            .ok_or_else(|| anyhow!("config.json: `{field}.rope_theta` is not a number"))?,
        None => float_or(c, "rope_theta", 10_000.0)?,
    };
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| {
        params[k]
            .as_f64()
            .ok_or_else(|| anyhow!("config.json: `{field}.{k}` is missing or not a number"))
    };
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear { factor: num("factor")? }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as i64,
        }),
        other => bail!(
            "config.json: `{field}.rope_type` = \"{other}\" is not supported (supported: default, linear, llama3)"
        ),
    };
    if let Some(p) = params.get("partial_rotary_factor").and_then(Value::as_f64) {
        if p != 1.0 {
            bail!("config.json: `{field}.partial_rotary_factor` = {p} is not supported (only full rotary embeddings)");
        }
    }
    Ok((theta, scaling))
}

/// The architecture of a Hugging Face `config.json`, or an error naming the field that
/// makes it unsupported.
pub fn config_from_hf(c: &Value) -> Result<GptConfig> {
    let arch = c["architectures"]
        .get(0)
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| {
            c["model_type"].as_str().map(|m| match m {
                "llama" => "LlamaForCausalLM".into(),
                "qwen2" => "Qwen2ForCausalLM".into(),
                "mistral" => "MistralForCausalLM".into(),
                other => other.to_string(),
            })
        })
        .ok_or_else(|| anyhow!("config.json names no `architectures` nor `model_type`"))?;
    if !ARCHITECTURES.contains(&arch.as_str()) {
        bail!(
            "config.json: `architectures` = {arch} is not supported; lib2expert loads {}",
            ARCHITECTURES.join(", ")
        );
    }
    if c.get("quantization_config").is_some_and(|q| !q.is_null()) {
        bail!("config.json: `quantization_config` is set: quantized weights are not supported; use the model's bf16/fp32 release");
    }
    let act = c["hidden_act"].as_str().unwrap_or("silu");
    if act != "silu" {
        bail!("config.json: `hidden_act` = \"{act}\" is not supported (the SwiGLU MLP uses silu)");
    }
    let n_head = int(c, "num_attention_heads")?;
    let n_embd = int(c, "hidden_size")?;
    let n_kv_head = match &c["num_key_value_heads"] {
        Value::Null => n_head,
        _ => int(c, "num_key_value_heads")?,
    };
    let head_dim = match &c["head_dim"] {
        Value::Null => None,
        _ => Some(int(c, "head_dim")?).filter(|&hd| hd * n_head != n_embd),
    };
    let qwen = arch == "Qwen2ForCausalLM";
    if qwen && bool_or(c, "use_sliding_window", false)? {
        bail!("config.json: `use_sliding_window` = true is not supported (attention is full causal)");
    }
    let attention_bias = bool_or(c, "attention_bias", false)?;
    let (rope_theta, rope_scaling) = rope(c)?;
    let mut max_seq_len = int(c, "max_position_embeddings")?;
    // Mistral's sliding window equals full attention on sequences no longer than it.
    if let Some(w) = c["sliding_window"].as_i64().filter(|_| !qwen) {
        max_seq_len = max_seq_len.min(w);
    }
    let cfg = GptConfig {
        vocab_size: int(c, "vocab_size")?,
        n_layer: int(c, "num_hidden_layers")?,
        n_head,
        n_kv_head,
        n_embd,
        intermediate_size: int(c, "intermediate_size")?,
        max_seq_len,
        rope_theta,
        norm_eps: float_or(c, "rms_norm_eps", 1e-6)?,
        tie_embeddings: bool_or(c, "tie_word_embeddings", false)?,
        head_dim,
        qkv_bias: qwen || attention_bias,
        o_bias: !qwen && attention_bias,
        mlp_bias: bool_or(c, "mlp_bias", false)?,
        rope_scaling,
    };
    cfg.validate().context("config.json")?;
    Ok(cfg)
}

/// The `config.json` of `cfg` for `transformers`: `Qwen2ForCausalLM` when only q/k/v have
/// biases, `LlamaForCausalLM` otherwise.
pub fn config_to_hf(cfg: &GptConfig, tok: &Tok) -> Result<Value> {
    let qwen = cfg.qkv_bias && !cfg.o_bias;
    if !cfg.qkv_bias && cfg.o_bias {
        bail!("no transformers architecture has a bias on o_proj but not on q/k/v");
    }
    let mut c = json!({
        "architectures": [if qwen { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": if qwen { "qwen2" } else { "llama" },
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim(),
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": tok.bos,
        "eos_token_id": tok.end,
        "pad_token_id": tok.pad,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
    });
    if qwen {
        c["use_sliding_window"] = false.into();
    } else {
        c["attention_bias"] = cfg.qkv_bias.into();
        c["mlp_bias"] = cfg.mlp_bias.into();
    }
    if cfg.mlp_bias && qwen {
        bail!("Qwen2 has no MLP biases; this model cannot be exported as transformers Qwen2");
    }
    if let Some(s) = &cfg.rope_scaling {
        c["rope_scaling"] = serde_json::to_value(s)?;
    }
    Ok(c)
}

/// Reads the weights of a model directory: `model.safetensors`, or every shard of
/// `model.safetensors.index.json`.
pub fn read_weights(dir: &Path) -> Result<Vec<(String, Tensor)>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if single.exists() {
        vec![single]
    } else if index.exists() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| anyhow!("{}: no `weight_map`", index.display()))?;
        let shards: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else if dir.join("pytorch_model.bin").exists() || dir.join("pytorch_model.bin.index.json").exists() {
        bail!(
            "{} holds pytorch_model.bin weights; lib2expert reads safetensors only: convert with `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`",
            dir.display()
        );
    } else {
        bail!(
            "{} has no model.safetensors nor model.safetensors.index.json",
            dir.display()
        );
    };
    let mut out = Vec::new();
    for f in files {
        if !f.exists() {
            bail!("{} is listed in the shard index but missing", f.display());
        }
        let part =
            Tensor::read_safetensors(&f).with_context(|| format!("reading {} (corrupt or truncated?)", f.display()))?;
        out.extend(part);
    }
    Ok(out)
}

/// Loads a Hugging Face model directory as a checkpoint of stage `hf`.
pub fn load(dir: &Path) -> Result<Loaded> {
    let cpath = dir.join("config.json");
    let text = std::fs::read_to_string(&cpath).with_context(|| format!("reading {}", cpath.display()))?;
    let raw: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", cpath.display()))?;
    let config = config_from_hf(&raw).with_context(|| format!("importing {}", dir.display()))?;
    let tpath = dir.join("tokenizer.json");
    if !tpath.exists() {
        bail!(
            "{} has no tokenizer.json (the fast-tokenizer file); save the tokenizer with transformers' `AutoTokenizer.save_pretrained`",
            dir.display()
        );
    }
    let tok = Tok::load(&tpath)?;
    if tok.vocab_size() as i64 > config.vocab_size {
        bail!(
            "{}: tokenizer.json has {} tokens but config.json `vocab_size` is {}: the tokenizer does not belong to this model",
            dir.display(),
            tok.vocab_size(),
            config.vocab_size
        );
    }
    let mut weights = read_weights(dir)?;
    // Buffers some exporters keep, and a tied head stored anyway.
    let dropped = |k: &str| k.ends_with("rotary_emb.inv_freq") || (config.tie_embeddings && k == "lm_head.weight");
    weights.retain(|(k, _)| !dropped(k));
    let mut meta = Meta::new("hf");
    meta.complete = true;
    meta.config = raw;
    meta.weights_sha256 = "n/a (imported)".into();
    Ok(Loaded {
        dir: dir.to_path_buf(),
        config,
        tok,
        meta,
        weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 300, "hidden_size": 64,
               "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "hidden_act": "silu", "rope_theta": 50000.0})
    }

    #[test]
    fn reads_both_rope_layouts() -> Result<()> {
        let mut v4 = llama();
        v4["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        let c = config_from_hf(&v4)?;
        assert_eq!(c.rope_theta, 50000.0);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
        let mut v5 = llama();
        v5.as_object_mut().map(|o| o.remove("rope_theta"));
        v5["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 1e6});
        let c = config_from_hf(&v5)?;
        assert_eq!((c.rope_theta, c.rope_scaling.is_none()), (1e6, true));
        assert_eq!((c.n_kv_head, c.head_dim), (2, None));
        Ok(())
    }

    #[test]
    fn unsupported_fields_are_named() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"architectures": ["GPT2LMHeadModel"]}), "architectures"),
            (
                {
                    let mut c = llama();
                    c["hidden_act"] = "gelu".into();
                    c
                },
                "hidden_act",
            ),
            (
                {
                    let mut c = llama();
                    c["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
                    c
                },
                "rope_scaling.rope_type",
            ),
            (
                {
                    let mut c = llama();
                    c["quantization_config"] = json!({"bits": 4});
                    c
                },
                "quantization_config",
            ),
            (
                {
                    let mut c = llama();
                    c.as_object_mut().map(|o| o.remove("hidden_size"));
                    c
                },
                "hidden_size",
            ),
            (
                {
                    let mut c = llama();
                    c["architectures"] = json!(["Qwen2ForCausalLM"]);
                    c["use_sliding_window"] = true.into();
                    c
                },
                "use_sliding_window",
            ),
        ];
        for (c, field) in cases {
            let err = config_from_hf(&c).map(|_| ()).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(field), "{field}: {msg}");
        }
    }
}
