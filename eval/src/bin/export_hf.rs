//! `export-hf`: writes a checkpoint as a Hugging Face model directory that
//! `transformers.AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
//! load without custom code (`LlamaForCausalLM`, or `Qwen2ForCausalLM` for an imported
//! Qwen2), with a chat template.
use anyhow::{bail, Context, Result};
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
    /// Output directory (created; it may hold only a previous export, which is replaced).
    out: PathBuf,
}

/// The chat template of `common::tokenizer`, in Jinja for `tokenizer.apply_chat_template`.
const CHAT_TEMPLATE: &str = "{{ '<|bos|>' }}{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

/// What an export writes; anything else in the output directory is someone else's.
const EXPORTED: &[&str] = &[
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Refuses an output that is the source checkpoint (or inside it), a file, or a directory
/// holding files an export does not write.
fn check_out(source: &Path, out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("{} is a file: give a directory for the export", out.display());
    }
    let src = std::fs::canonicalize(source).or_else(|_| std::path::absolute(source))?;
    let dst = std::path::absolute(out)?;
    let dst = std::fs::canonicalize(&dst).unwrap_or(dst);
    if dst.starts_with(&src) || src.starts_with(&dst) {
        bail!(
            "refusing to export {} into {}: that would write over the source checkpoint; choose an output directory outside it",
            source.display(),
            out.display()
        );
    }
    if out.is_dir() {
        let mut foreign: Vec<String> = std::fs::read_dir(out)
            .with_context(|| format!("listing {}", out.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| !EXPORTED.contains(&e.file_name().to_string_lossy().as_ref()) || e.path().is_dir())
            .map(|e| e.path().display().to_string())
            .collect();
        foreign.sort();
        if !foreign.is_empty() {
            bail!(
                "{} holds files an export does not write ({}); an export replaces its files, so it refuses rather than mix with or overwrite them. Choose an empty or new output directory",
                out.display(),
                foreign.join(", ")
            );
        }
    }
    Ok(())
}

fn export_hf(ckpt: &Path, out: &Path) -> Result<()> {
    // Building the model checks that config.json describes every tensor of the weights
    // (names and shapes), so a config that does not match is never exported.
    let (_vs, _model, loaded) = checkpoint::load_model(ckpt, tch::Device::Cpu)?;
    check_out(&loaded.dir, out)?;
    check_out(ckpt, out)?;
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
