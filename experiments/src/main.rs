//! `experiment`: the field's claims about post-training, one command each.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use experiments::{find, Ctx, EXPERIMENTS};
use std::path::PathBuf;
use std::process::ExitCode;

/// Run the field's claims about post-training as experiments on the default run's checkpoints.
///
/// Each experiment starts from the base run's checkpoints (building any that are missing, as
/// `just pipeline` does), trains only what it needs into runs/experiments/NAME/, skips stages
/// that are already complete (so it resumes after an interruption), and writes
/// runs/experiments/NAME/report.md with a table, 95% intervals and a plot.
///
/// Example: experiment run annotator-ceiling
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List the experiments and the claim each measures.
    List,
    /// Run one experiment (complete stages are skipped) and write its report.
    Run(Box<RunArgs>),
}

/// What `experiment run` takes.
#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Experiment name (see `experiment list`).
    name: String,
    /// The run whose checkpoints the experiment starts from.
    #[arg(long, default_value = "runs/default")]
    base: PathBuf,
    /// Directory of the stage configs the base run used.
    #[arg(long, default_value = "configs")]
    configs: PathBuf,
    /// The world the base run trained on.
    #[arg(long, default_value = "data/default")]
    world: PathBuf,
    /// Output directory (default: runs/experiments/NAME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Device for every stage: auto, cpu or cuda (default: the configs' choice).
    #[arg(long)]
    device: Option<String>,
    /// annotator-ceiling: the imperfect annotators, as ERRORS:ACCURACY (errors: habit or
    /// random; accuracy: share of worked answers right), comma-separated.
    #[arg(long, default_value = "habit:0.5,random:0.5", value_delimiter = ',')]
    annotators: Vec<String>,
    /// fabrication: shares of the SFT fact answers about entities the library never
    /// mentions, comma-separated (the base run is share 0).
    #[arg(long, default_value = "0.1,0.3", value_delimiter = ',')]
    shares: Vec<f64>,
    /// honesty-transfer: entity kinds RL asks unanswerable questions about (town, person,
    /// mineral, river), comma-separated; the others measure transfer.
    #[arg(long, default_value = "town,person", value_delimiter = ',')]
    trained_kinds: Vec<String>,
    /// rl-scaling: model presets to compare (tiny, default, d8, d6, d12, d20), comma-separated.
    #[arg(long, default_value = "tiny,default,d6", value_delimiter = ',')]
    sizes: Vec<String>,
    /// rl-scaling: RL steps for each size.
    #[arg(long, default_value_t = 80)]
    rl_steps: u64,
    /// rl-scaling: grade the held-out problems every this many RL steps.
    #[arg(long, default_value_t = 20)]
    eval_every: u64,
}

fn parse_annotator(s: &str) -> Result<(world::Slips, f64)> {
    let (e, a) = s
        .split_once(':')
        .with_context(|| format!("--annotators {s:?}: expected ERRORS:ACCURACY, e.g. habit:0.5"))?;
    let acc: f64 = a
        .parse()
        .with_context(|| format!("--annotators {s:?}: {a:?} is not a number"))?;
    world::Annotator::calibrated(acc, e.parse()?)?;
    Ok((e.parse()?, acc))
}

fn run(args: Args) -> Result<()> {
    match args.cmd {
        Cmd::List => {
            for e in EXPERIMENTS {
                println!("{:<20} {}", e.name, e.claim);
            }
            Ok(())
        }
        Cmd::Run(run) => {
            let RunArgs {
                name,
                base,
                configs,
                world,
                out,
                device,
                annotators,
                shares,
                trained_kinds,
                sizes,
                rl_steps,
                eval_every,
            } = *run;
            for s in &shares {
                anyhow::ensure!(
                    (0.0..=1.0).contains(s) && *s > 0.0,
                    "--shares {s}: a share above 0 and at most 1"
                );
            }
            let exp = find(&name)?;
            let exe = std::env::current_exe().context("locating this binary")?;
            let ctx = Ctx {
                bin_dir: exe.parent().map(PathBuf::from).unwrap_or_default(),
                base,
                configs,
                world,
                out: out.unwrap_or_else(|| PathBuf::from("runs/experiments").join(&name)),
                device,
                annotators: annotators.iter().map(|s| parse_annotator(s)).collect::<Result<_>>()?,
                shares,
                trained_kinds: trained_kinds.iter().map(|k| k.parse()).collect::<Result<_>>()?,
                sizes,
                rl_steps,
                eval_every,
            };
            std::fs::create_dir_all(&ctx.out).with_context(|| format!("creating {}", ctx.out.display()))?;
            let report = (exp.run)(&ctx)?;
            println!("{}", std::fs::read_to_string(&report)?);
            eprintln!("experiment: report {}", report.display());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| run(args))
}
