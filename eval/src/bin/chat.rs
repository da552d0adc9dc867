//! `chat`: talk to any checkpoint in the terminal, or answer one `--prompt` for scripts.
use anyhow::{bail, Result};
use clap::Parser;
use common::checkpoint;
use common::device::{configure_threads, seed_everything, DeviceChoice};
use common::model::{Gpt, Positions};
use common::sampling::SamplingConfig;
use common::tokenizer::{Message, Tok};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tch::{Device, Tensor};

/// Chat with a checkpoint. Tokens stream as they are generated; the history is kept
/// within the model's context window (oldest turns are dropped first).
///
/// Interactive: `chat runs/default/rl` (empty line or Ctrl-D quits, /reset clears history).
/// One-shot: `chat runs/default/rl --prompt "What is 23 + 58?"`.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Checkpoint directory.
    checkpoint: PathBuf,
    /// Answer this one prompt and exit.
    #[arg(long)]
    prompt: Option<String>,
    /// A system message put before the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: i64,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Longest reply in tokens.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: i64,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

/// Streams one reply to `out`; returns its text.
fn reply(
    model: &Gpt,
    tok: &Tok,
    history: &mut Vec<Message>,
    sampling: &SamplingConfig,
    device: Device,
    out: &mut impl Write,
) -> Result<String> {
    let max_ctx = model.config().max_seq_len;
    let mut ids = tok.render_prompt(history)?;
    // Drop the oldest exchanges (keeping a system message) until prompt + reply fit.
    while ids.len() as i64 + sampling.max_new_tokens > max_ctx {
        let first = history.iter().position(|m| m.role != "system");
        match first {
            Some(i) if history.len() - i > 1 => {
                history.remove(i);
                ids = tok.render_prompt(history)?;
            }
            _ => break,
        }
    }
    if ids.len() as i64 >= max_ctx {
        bail!(
            "the prompt ({} tokens) does not fit the model's context of {max_ctx}",
            ids.len()
        );
    }
    let budget = sampling.max_new_tokens.min(max_ctx - ids.len() as i64);
    let _g = tch::no_grad_guard();
    let mut cache = model.new_cache(1, ids.len() as i64 + budget);
    let input = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>())
        .view([1, -1])
        .to_device(device);
    let logits = model.forward(&input, &Positions::CAUSAL, Some(&mut cache));
    let mut last = logits.select(1, ids.len() as i64 - 1);
    let mut gen: Vec<u32> = Vec::new();
    let mut shown = 0;
    for _ in 0..budget {
        let next = sampling.pick(&last).int64_value(&[0]) as u32;
        if tok.stops().contains(&next) {
            break;
        }
        gen.push(next);
        let text = tok.decode(&gen)?;
        // Print only whole characters: a token may end inside a multi-byte character.
        if !text.ends_with('\u{FFFD}') && text.len() > shown {
            write!(out, "{}", &text[shown..])?;
            out.flush()?;
            shown = text.len();
        }
        let t = Tensor::from_slice(&[next as i64]).view([1, 1]).to_device(device);
        last = model.forward(&t, &Positions::CAUSAL, Some(&mut cache)).select(1, 0);
    }
    let text = tok.decode(&gen)?;
    if text.len() > shown {
        write!(out, "{}", &text[shown..])?;
    }
    writeln!(out)?;
    Ok(text)
}

fn run(a: Args) -> Result<()> {
    configure_threads();
    let device = a.device.resolve()?;
    seed_everything(a.seed);
    let (_vs, model, loaded) = checkpoint::load_model(&a.checkpoint, device)?;
    let sampling = SamplingConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
    };
    sampling.validate()?;
    let mut history: Vec<Message> = a.system.iter().map(|s| Message::new("system", s.clone())).collect();
    let mut stdout = std::io::stdout();
    if let Some(p) = a.prompt {
        history.push(Message::new("user", p));
        reply(&model, &loaded.tok, &mut history, &sampling, device, &mut stdout)?;
        return Ok(());
    }
    eprintln!(
        "chatting with {} ({} stage, step {}); empty line or Ctrl-D quits, /reset clears",
        a.checkpoint.display(),
        loaded.meta.stage,
        loaded.meta.step
    );
    let stdin = std::io::stdin();
    loop {
        eprint!("you> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if line.trim() == "/reset" {
            history.retain(|m| m.role == "system");
            continue;
        }
        history.push(Message::new("user", line.trim().to_string()));
        eprint!("model> ");
        let text = reply(&model, &loaded.tok, &mut history, &sampling, device, &mut stdout)?;
        history.push(Message::new("assistant", text));
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    common::cli::exit_on_error(|| run(a))
}
