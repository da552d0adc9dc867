//! Our exported checkpoint in Hugging Face `transformers`: same logits, same greedy generation,
//! same chat template rendering.
use anyhow::{Context, Result};
use common::model::Positions;
use common::sampling::{generate, SamplingConfig};
use common::tokenizer::Message;
use std::process::Command;
use tch::{Device, Tensor};
use testkit::{bin, tiny_checkpoint, tiny_world, venv_python};

const SCRIPT: &str = r#"
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, ids, prompt = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(d)
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0]
    gen = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
chat = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=True)
if isinstance(chat, dict) or hasattr(chat, "input_ids"):
    chat = chat["input_ids"]
print(json.dumps({"logits": logits.tolist(), "gen": gen[0, len(prompt):].tolist(), "chat": list(chat)}))
"#;

fn has_transformers() -> bool {
    Command::new(venv_python())
        .args(["-c", "import transformers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn exported_checkpoint_matches_in_transformers() -> Result<()> {
    // `just setup` installs transformers into .venv (requirements.txt).
    assert!(has_transformers(), "the venv has no `transformers`: run `just setup`");
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let ck = d.join("ck");
    tiny_checkpoint(d, &ck, "sft")?;
    let out = d.join("hf");
    let o = bin(env!("CARGO_BIN_EXE_export-hf")).arg(&ck).arg(&out).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (_vs, model, loaded) = common::checkpoint::load_model(&ck, Device::Cpu)?;
    let ids: Vec<i64> = (0..24).map(|i| (i * 37 + 5) % loaded.config.vocab_size).collect();
    let prompt: Vec<u32> = vec![loaded.tok.bos, 50, 60, 70, 80];
    let py = Command::new(venv_python())
        .args(["-c", SCRIPT])
        .arg(&out)
        .arg(serde_json::to_string(&ids)?)
        .arg(serde_json::to_string(&prompt)?)
        .output()
        .context("running transformers")?;
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let v: serde_json::Value = serde_json::from_slice(&py.stdout)?;

    let _g = tch::no_grad_guard();
    let ours = model
        .forward(&Tensor::from_slice(&ids).view([1, -1]), &Positions::CAUSAL, None)
        .squeeze_dim(0);
    let theirs: Vec<Vec<f64>> = serde_json::from_value(v["logits"].clone())?;
    let theirs = Tensor::from_slice(&theirs.concat())
        .view([ids.len() as i64, -1])
        .to_kind(tch::Kind::Float);
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    // fp32 on both sides, different kernels: agreement to 1e-4.
    assert!(diff < 1e-4, "max |ours - transformers| = {diff}");

    let gen = generate(
        &model,
        std::slice::from_ref(&prompt),
        &SamplingConfig::greedy(20),
        &[],
        loaded.tok.pad,
        Device::Cpu,
    )?;
    let theirs_gen: Vec<u32> = serde_json::from_value(v["gen"].clone())?;
    assert_eq!(gen.tokens[0], theirs_gen, "greedy generations differ");

    let chat: Vec<u32> = serde_json::from_value(v["chat"].clone())?;
    assert_eq!(
        chat,
        loaded.tok.render_prompt(&[Message::new("user", "What is 2 + 3?")])?,
        "chat templates differ"
    );
    Ok(())
}
