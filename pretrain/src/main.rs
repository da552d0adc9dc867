//! `pretrain`: trains a GPT from scratch on the broad library mix (next-token prediction).
use clap::Parser;
use common::config::CommonArgs;
use std::process::ExitCode;

/// Pretrain a GPT from scratch on a broad mix ("read the whole library").
///
/// Reads configs/pretrain.toml unless --config is given; trains (or loads) the tokenizer,
/// builds the model preset, trains next-token prediction and writes a checkpoint to --out
/// (default runs/default/pretrain) with held-out loss and bits per byte per source in meta.json.
///
/// Example: pretrain --config configs/pretrain.toml --out runs/exp1/pretrain --steps 200
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| common::cli::run_lm_main(&pretrain::SPEC, &args.common))
}
