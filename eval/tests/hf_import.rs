//! Hugging Face model directories as `--init`: tiny random Llama (sharded fp32, GQA, llama3
//! rotary scaling, untied head) and Qwen2 (bf16, q/k/v biases, tied embeddings) made by
//! `transformers` load with the same logits, the same greedy generation and the same chat
//! template rendering; SFT and RL train an imported model, and its export loads back.
use anyhow::{Context, Result};
use common::checkpoint;
use common::model::Positions;
use common::sampling::{generate, SamplingConfig};
use common::tokenizer::Message;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};
use testkit::{tiny_world, venv_python, workspace_root};

/// A binary of another crate of the workspace (built by `cargo test --workspace`).
fn exe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_evaluate")).with_file_name(name)
}

fn script() -> PathBuf {
    workspace_root().join("eval/tests/hf/make_models.py")
}

fn make_models(out: &Path) -> Result<()> {
    let o = Command::new(venv_python())
        .arg(script())
        .arg("make")
        .arg(out)
        .output()
        .context("running make_models.py (needs `just setup`)")?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Ok(())
}

fn probe(dir: &Path, ids: &[i64], prompt: &[u32]) -> Result<Value> {
    let o = Command::new(venv_python())
        .arg(script())
        .arg("probe")
        .arg(dir)
        .arg(serde_json::to_string(ids)?)
        .arg(serde_json::to_string(prompt)?)
        .output()
        .context("running transformers")?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Ok(serde_json::from_slice(&o.stdout)?)
}

/// Our model on `dir` against `transformers` on `hf_dir` (the same model): logits to 1e-4,
/// 20 greedy tokens, and the chat template's ids.
fn check_parity(dir: &Path, hf_dir: &Path) -> Result<()> {
    let (_vs, model, loaded) = checkpoint::load_model(dir, Device::Cpu)?;
    let vocab = loaded.tok.vocab_size() as i64;
    let ids: Vec<i64> = (0..40).map(|i| (i * 37 + 11) % vocab).collect();
    let prompt: Vec<u32> = loaded.tok.encode("The town of Velmora 12 exports")?;
    let v = probe(hf_dir, &ids, &prompt)?;

    let _g = tch::no_grad_guard();
    let ours = model
        .forward(&Tensor::from_slice(&ids).view([1, -1]), &Positions::CAUSAL, None)
        .squeeze_dim(0);
    let theirs: Vec<Vec<f64>> = serde_json::from_value(v["logits"].clone())?;
    let theirs = Tensor::from_slice(&theirs.concat())
        .view([ids.len() as i64, -1])
        .to_kind(Kind::Float);
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    eprintln!("{}: max |ours - transformers| = {diff:.2e}", dir.display());
    assert!(diff < 1e-4, "{}: max |ours - transformers| = {diff}", dir.display());

    let gen = generate(
        &model,
        std::slice::from_ref(&prompt),
        &SamplingConfig::greedy(20),
        &[],
        loaded.tok.pad,
        Device::Cpu,
    )?;
    let theirs_gen: Vec<u32> = serde_json::from_value(v["gen"].clone())?;
    assert_eq!(
        gen.tokens[0],
        theirs_gen,
        "{}: greedy generations differ",
        dir.display()
    );

    let conv = [
        Message::new("user", "What is 2 + 3?"),
        Message::new("assistant", "2 + 3 = 5\nAnswer: 5"),
    ];
    let chat_prompt: Vec<u32> = serde_json::from_value(v["chat_prompt"].clone())?;
    assert_eq!(
        loaded.tok.render_prompt(&conv[..1])?,
        chat_prompt,
        "generation prompts differ"
    );
    let chat_full: Vec<u32> = serde_json::from_value(v["chat_full"].clone())?;
    let (full, mask) = loaded.tok.render_chat(&conv)?;
    assert_eq!(full, chat_full, "rendered conversations differ");
    // Trained on: the assistant's answer and the token closing its turn, nothing before.
    let trained: Vec<u32> = full.iter().zip(&mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
    assert!(trained.contains(&loaded.tok.end), "the end-of-turn token is trained on");
    let text = loaded.tok.decode(&trained)?;
    assert!(text.trim() == "2 + 3 = 5\nAnswer: 5", "trained text: {text:?}");
    let first = mask.iter().position(|&m| m).unwrap_or(0);
    assert_eq!(
        full[..first],
        loaded.tok.render_prompt(&conv[..1])?[..],
        "mask starts after the prompt"
    );
    Ok(())
}

#[test]
fn imported_llama_and_qwen2_match_transformers_and_train() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    make_models(d)?;
    for name in ["llama", "qwen2"] {
        check_parity(&d.join(name), &d.join(name))?;
    }
    let qwen = checkpoint::load(&d.join("qwen2"))?;
    assert!(qwen.config.qkv_bias && qwen.config.tie_embeddings && !qwen.config.o_bias);
    assert_eq!(
        qwen.tok.token_id("<|im_end|>"),
        Some(qwen.tok.end),
        "ChatML turns end at <|im_end|>"
    );
    let llama = checkpoint::load(&d.join("llama"))?;
    assert!(llama.config.rope_scaling.is_some() && llama.config.n_kv_head == 2);
    assert_eq!(llama.tok.token_id("<|eot_id|>"), Some(llama.tok.end));

    // SFT then RL on the imported Qwen2, with the tiny world's data.
    tiny_world(d)?;
    let run = |exe: PathBuf, args: &[&str]| -> Result<()> {
        let o = testkit::bin(&exe).args(args).output()?;
        assert!(
            o.status.success(),
            "{} {args:?}: {}",
            exe.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(())
    };
    let p = |x: &str| d.join(x).display().to_string();
    // Qwen2's template (a default system turn) and its small byte-level vocabulary make the tiny
    // world's conversations longer than the tiny world's 64-token rows; SFT drops conversations
    // that do not fit, so the rows take the imported model's whole context.
    std::fs::write(
        d.join("configs/sft-qwen2.toml"),
        std::fs::read_to_string(d.join("configs/sft.toml"))?.replace("seq_len = 64", "seq_len = 256"),
    )?;
    run(
        exe("sft"),
        &[
            "--config",
            &p("configs/sft-qwen2.toml"),
            "--init",
            &p("qwen2"),
            "--out",
            &p("run/sft"),
        ],
    )?;
    let meta = checkpoint::read_meta(&d.join("run/sft"))?;
    assert_eq!(meta.parent.as_ref().map(|r| r.stage.as_str()), Some("hf"));
    assert!(
        serde_json::to_value(&meta.metrics)?["tasks"]["per_kind"]["arithmetic"]["n"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    // The chat template travels with the checkpoint.
    assert!(d.join("run/sft/tokenizer_config.json").exists());
    // RL with LoRA adapters (q/k/v carry biases here, the head is tied): the checkpoint must
    // still be a plain Qwen2 once the adapters are merged.
    let lora_cfg = std::fs::read_to_string(d.join("configs/rl.toml"))?
        .replace("device = \"cpu\"", "device = \"cpu\"\nlora_rank = 2");
    assert!(lora_cfg.contains("lora_rank = 2"));
    std::fs::write(d.join("configs/rl-lora.toml"), lora_cfg)?;
    run(
        exe("rl"),
        &[
            "--config",
            &p("configs/rl-lora.toml"),
            "--init",
            &p("run/sft"),
            "--out",
            &p("run/rl"),
        ],
    )?;
    let rl = checkpoint::load(&d.join("run/rl"))?;
    assert!(rl.config.qkv_bias && rl.tok.chat_template().is_some());

    // Export the trained Qwen2 and compare in transformers.
    run(exe("export-hf"), &[&p("run/rl"), &p("out-qwen2")])?;
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(d.join("out-qwen2/config.json"))?)?;
    assert_eq!(cfg["architectures"][0], "Qwen2ForCausalLM");
    check_parity(&d.join("run/rl"), &d.join("out-qwen2"))?;
    Ok(())
}

#[test]
fn bad_model_directories_are_explained() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    make_models(d)?;
    tiny_world(d)?;
    let err_of = |init: &Path| -> Result<String> {
        let o = testkit::bin(exe("sft"))
            .arg("--config")
            .arg(d.join("configs/sft.toml"))
            .arg("--out")
            .arg(d.join("never"))
            .arg("--init")
            .arg(init)
            .output()?;
        assert!(!o.status.success(), "{} should be refused", init.display());
        Ok(String::from_utf8_lossy(&o.stderr).to_string())
    };
    let edit = |name: &str, f: &dyn Fn(&mut Value)| -> Result<PathBuf> {
        let to = d.join(name);
        let o = Command::new("cp").arg("-r").arg(d.join("qwen2")).arg(&to).output()?;
        assert!(o.status.success());
        let path = to.join("config.json");
        let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        f(&mut c);
        std::fs::write(&path, serde_json::to_string(&c)?)?;
        Ok(to)
    };
    let gpt2 = edit("gpt2", &|c| c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]))?;
    let e = err_of(&gpt2)?;
    assert!(e.contains("architectures") && e.contains("GPT2LMHeadModel"), "{e}");
    let gelu = edit("gelu", &|c| c["hidden_act"] = "gelu".into())?;
    assert!(err_of(&gelu)?.contains("hidden_act"));
    let small = edit("small-vocab", &|c| c["vocab_size"] = 100.into())?;
    let e = err_of(&small)?;
    assert!(e.contains("vocab_size") && e.contains("tokenizer"), "{e}");
    let no_tok = edit("no-tok", &|_| {})?;
    std::fs::remove_file(no_tok.join("tokenizer.json"))?;
    assert!(err_of(&no_tok)?.contains("tokenizer.json"));
    let no_weights = edit("no-weights", &|_| {})?;
    std::fs::remove_file(no_weights.join("model.safetensors"))?;
    assert!(err_of(&no_weights)?.contains("model.safetensors"));
    let shard = d.join("llama-missing-shard");
    Command::new("cp").arg("-r").arg(d.join("llama")).arg(&shard).output()?;
    std::fs::remove_file(shard.join("model-00002-of-00007.safetensors"))?;
    assert!(err_of(&shard)?.contains("model-00002-of-00007.safetensors"));
    Ok(())
}
