//! What every stage binary shares: error reporting with a one-line reason and a
//! non-zero exit, and the language-modelling stage entry point.
use crate::config::{CommonArgs, LmConfig};
use crate::lm::StageSpec;
use anyhow::Result;
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs `f`, printing `error: <reason: cause: …>` and exiting with 1 on failure.
pub fn exit_on_error(f: impl FnOnce() -> Result<()>) -> ExitCode {
    match f() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config file to read: `--config`, else `configs/<stage>.toml`.
pub fn config_path(args: &CommonArgs, stage: &str) -> PathBuf {
    args.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("configs/{stage}.toml")))
}

/// Entry point of pretrain, midtrain and SFT: load + validate the config, print it, train.
pub fn run_lm_main(spec: &StageSpec, args: &CommonArgs) -> Result<()> {
    let path = config_path(args, spec.stage);
    let cfg = LmConfig::load(&path, args, spec.stage)?;
    let resolved = toml::to_string(&cfg)?;
    if args.dry_run {
        println!(
            "# resolved configuration of {} (from {})\n{resolved}",
            spec.stage,
            path.display()
        );
        return Ok(());
    }
    eprintln!(
        "{}: config {} (resolved config is saved in meta.json)",
        spec.stage,
        path.display()
    );
    crate::lm::run(spec, &cfg, args)?;
    Ok(())
}
