//! `rl`: reinforcement learning with verifiable rewards (GRPO and variants).
use clap::Parser;
use common::config::CommonArgs;
use rl::config::RlConfig;
use std::process::ExitCode;

/// Train a checkpoint against verifiers with GRPO ("try, and keep what works").
///
/// Reads configs/rl.toml unless --config is given; starts from --init (e.g.
/// runs/default/sft). Each step samples a group of answers per prompt, grades them with
/// verifiers (numeric answer, exact match, abstention, program execution in a sandboxed
/// subprocess), and reinforces the better ones. Held-out task accuracy and hallucination
/// rate, before and after, go into meta.json.
///
/// Example: rl --init runs/default/sft --out runs/default/rl --steps 40
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    // The flags are every stage's; two of them mean something RL-specific here.
    let args: Args = common::cli::parse_with(|c| {
        c.mut_arg("mix", |a| {
            a.help("Prompts: a prompt mix (.toml) or one Parquet file of tasks (overrides `prompts` in the config's [data] section)")
        })
        .mut_arg("lr", |a| {
            a.help("Learning rate after warmup (overrides `lr` in the config's [train] section; configs/rl.toml keeps it constant)")
        })
    });
    common::cli::exit_on_error(|| {
        let path = common::cli::config_path(&args.common, "rl");
        let cfg = RlConfig::load(&path, &args.common)?;
        if args.common.dry_run {
            println!(
                "# resolved configuration of rl (from {})\n{}",
                path.display(),
                toml::to_string(&cfg)?
            );
            return Ok(());
        }
        rl::run(&cfg, &args.common)?;
        Ok(())
    })
}
