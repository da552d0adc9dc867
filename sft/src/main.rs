//! `sft`: supervised fine-tuning on conversations, loss on the assistant's tokens only.
use clap::Parser;
use common::config::CommonArgs;
use std::process::ExitCode;

/// Fine-tune a checkpoint on annotator conversations ("imitate the annotators").
///
/// Reads configs/sft.toml unless --config is given; starts from --init (e.g.
/// runs/default/midtrain). Conversations (`chat` sources with a `messages` column, or
/// `prompt_answer` sources such as GSM8K or Alpaca layouts) are rendered with the chat
/// template and packed several to a row without attention crossing between them; only
/// assistant tokens are trained on. After training, the model answers the held-out task
/// sets and verifiers grade them; accuracy per task, format compliance and hallucination
/// rate go into meta.json, beside the same figures for the starting checkpoint.
///
/// Example: sft --init runs/default/midtrain --out runs/default/sft
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| common::cli::run_lm_main(&sft::SPEC, &args.common))
}
