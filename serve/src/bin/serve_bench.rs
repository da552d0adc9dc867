//! `serve-bench`: throughput of `serve` under a bounded loopback load, continuous batching
//! against one request at a time, measured back to back in one run; every reply is checked
//! against the one-at-a-time reply to the same prompt (greedy), and none may be lost.
use anyhow::{Context, Result};
use clap::Parser;
use common::checkpoint;
use common::device::DeviceChoice;
use common::model::GptConfig;
use common::tokenizer::Tok;
use serde_json::{json, Value};
use serve::load::{self, LoadReport};
use std::path::PathBuf;
use std::process::ExitCode;

/// Load-test `serve` on a random model: N clients x M greedy chat requests, with continuous
/// batching and with one request at a time, and print the throughput ratio.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Tokenizer of the model (the default world's).
    #[arg(long, default_value = "data/default/tokenizer.json")]
    tokenizer: PathBuf,
    /// Model preset (random weights: throughput does not depend on what was learned).
    #[arg(long, default_value = "default")]
    preset: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Requests each client sends, one after the other.
    #[arg(long, default_value_t = 8)]
    per_client: usize,
    /// Tokens per reply (`max_tokens`; a random model seldom stops early).
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Print the results as JSON only (what `bench` reads).
    #[arg(long)]
    json: bool,
}

fn summary(r: &LoadReport) -> Value {
    json!({"secs": r.secs, "requests_ok": r.ok(), "completion_tokens": r.completion_tokens,
        "tok_per_s": r.completion_tokens as f64 / r.secs, "req_per_s": r.ok() as f64 / r.secs})
}

fn run(a: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ckpt = dir.path().join("model");
    let tok =
        Tok::load(&a.tokenizer).with_context(|| format!("run `just datasets` first ({})", a.tokenizer.display()))?;
    let cfg = GptConfig::preset(&a.preset, tok.vocab_size() as i64)?;
    checkpoint::save_random(&ckpt, &cfg, &tok, "bench", 0)?;

    let exe = std::env::current_exe()?.with_file_name("serve");
    let prompts: Vec<String> = (0..a.clients * a.per_client)
        .map(|i| format!("What is {} + {}?", i % 97, (i * 7) % 89))
        .collect();
    let ckpt_s = ckpt.display().to_string();
    let queue = (a.clients * a.per_client).to_string();
    let device = a.device.to_string();
    let mut runs = Vec::new();
    for batch in [1, a.clients] {
        let b = batch.to_string();
        let srv = load::spawn_server(
            &exe,
            &[
                ckpt_s.as_str(),
                "--model-name",
                "bench",
                "--max-batch",
                b.as_str(),
                "--queue",
                queue.as_str(),
                "--device",
                device.as_str(),
            ],
        )?;
        // One request first: the process is warm before the clock starts.
        load::request(
            srv.addr,
            "POST",
            "/v1/chat/completions",
            &load::chat_body("bench", "hi", 4),
        )?;
        runs.push(load::run(
            srv.addr,
            "bench",
            &prompts,
            a.clients,
            a.per_client,
            a.max_tokens,
        ));
    }
    let (one, many) = (&runs[0], &runs[1]);
    let lost = (one.replies.len() - one.ok()) + (many.replies.len() - many.ok());
    let mismatched = one
        .replies
        .iter()
        .zip(&many.replies)
        .filter(|(x, y)| x.is_ok() && y.is_ok() && x != y)
        .count();
    let ratio = (many.completion_tokens as f64 / many.secs) / (one.completion_tokens as f64 / one.secs).max(1e-9);
    let out = json!({
        "preset": a.preset, "params": cfg.num_params(), "clients": a.clients, "per_client": a.per_client,
        "max_tokens": a.max_tokens, "one_at_a_time": summary(one), "continuous_batching": summary(many),
        "batched_over_one_at_a_time": ratio, "lost": lost, "mismatched_replies": mismatched,
        "first_error": runs.iter().flat_map(|r| r.replies.iter()).find_map(|r| r.as_ref().err().cloned()),
    });
    if a.json {
        println!("{out}");
    } else {
        println!(
            "| serve, {} clients x {} requests, {} tokens each | tok/s | requests/s |\n|---|---|---|",
            a.clients, a.per_client, a.max_tokens
        );
        for (name, r) in [("one request at a time", one), ("continuous batching", many)] {
            println!(
                "| {name} | {:.0} | {:.1} |",
                r.completion_tokens as f64 / r.secs,
                r.ok() as f64 / r.secs
            );
        }
        println!("| ratio | {ratio:.2} | |");
        println!("lost: {lost}, replies differing from one-at-a-time: {mismatched}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| run(a))
}
