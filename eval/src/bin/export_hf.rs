//! `export-hf`: writes a checkpoint as a Hugging Face model directory that
//! `transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
//! load without custom code (`LlamaForCausalLM`, or `Qwen2ForCausalLM` for an imported
//! Qwen2), with a chat template.
use anyhow::{Context, Result};
use clap::Parser;
use common::checkpoint;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Export a checkpoint as a Hugging Face `transformers` model directory.
///
/// The directory loads with `AutoModelForCausalLM.from_pretrained` and
/// `AutoTokenizer.from_pretrained` without custom code, chat template included.
///
/// Example: export-hf runs/default/rl exported/rl
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Checkpoint directory.
    checkpoint: PathBuf,
    /// Output directory (created; existing files are replaced).
    out: PathBuf,
}

/// The chat template of `common::tokenizer`, in Jinja for `tokenizer.apply_chat_template`.
const CHAT_TEMPLATE: &str = "{{ '<|bos|>' }}{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

fn export_hf(ckpt: &Path, out: &Path) -> Result<()> {
    let loaded = checkpoint::load(ckpt)?;
    let c = &loaded.config;
    let tok = &loaded.tok;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // Tensor names are already the Llama names; only the dtype is made explicit.
    let tensors: Vec<(String, tch::Tensor)> = loaded
        .weights
        .iter()
        .map(|(k, v)| (k.clone(), v.to_kind(tch::Kind::Float).contiguous()))
        .collect();
    tch::Tensor::write_safetensors(&tensors, out.join("model.safetensors"))
        .with_context(|| format!("writing {}", out.join("model.safetensors").display()))?;
    let config = common::hf::config_to_hf(c, tok)?;
    std::fs::write(out.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    // The tokenizer, with its chat template: an imported template travels as it came;
    // lib2expert's own is written out in Jinja.
    tok.save(&out.join("tokenizer.json"))?;
    if tok.chat_template().is_none() {
        std::fs::write(
            out.join("generation_config.json"),
            serde_json::to_string_pretty(
                &json!({"bos_token_id": tok.bos, "eos_token_id": tok.end, "pad_token_id": tok.pad}),
            )?,
        )?;
        let tok_cfg = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<|bos|>",
            "eos_token": "<|end|>",
            "pad_token": "<|pad|>",
            "model_max_length": c.max_seq_len,
            "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": false,
        });
        std::fs::write(
            out.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&tok_cfg)?,
        )?;
        std::fs::write(
            out.join("special_tokens_map.json"),
            serde_json::to_string_pretty(
                &json!({"bos_token": "<|bos|>", "eos_token": "<|end|>", "pad_token": "<|pad|>"}),
            )?,
        )?;
    }
    eprintln!(
        "export-hf: wrote a {} directory to {} (from {} step {})",
        config["architectures"][0].as_str().unwrap_or("?"),
        out.display(),
        loaded.meta.stage,
        loaded.meta.step
    );
    Ok(())
}

fn main() -> ExitCode {
    let a = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| export_hf(&a.checkpoint, &a.out))
}
