//! `midtrain`: continues a checkpoint on a mix that upweights high-density sources.
use clap::Parser;
use common::config::CommonArgs;
use std::process::ExitCode;

/// Midtrain a checkpoint on high-density sources ("reread the best books").
///
/// Reads configs/midtrain.toml unless --config is given; starts from --init (e.g.
/// runs/default/pretrain), trains on the reweighted mix with its own schedule, and writes a
/// checkpoint to --out (default runs/default/midtrain) with held-out metrics per source,
/// before and after, in meta.json.
///
/// Example: midtrain --init runs/default/pretrain --out runs/default/midtrain
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| common::cli::run_lm_main(&midtrain::SPEC, &args.common))
}
