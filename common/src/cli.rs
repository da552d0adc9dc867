//! What every binary shares: parsing the command line (with `--completions <SHELL>`),
//! error reporting with a one-line reason and a non-zero exit, and the language-modelling
//! stage entry point.
use crate::config::{CommonArgs, LmConfig};
use crate::lm::StageSpec;
use anyhow::Result;
use clap::{Arg, ArgMatches, Command, Parser};
use clap_complete::Shell;
use std::path::PathBuf;
use std::process::ExitCode;

/// Parses the command line into `A`, as `A::parse()` does, with one more flag every binary
/// takes: `--completions <SHELL>` prints a completion script for bash, zsh, fish, elvish or
/// powershell and exits (`just completions bash` prints those of every binary).
pub fn parse<A: Parser>() -> A {
    parse_with(|c| c)
}

/// [`parse`], with the command adjusted by `edit` first (a binary that shares a flag struct
/// but gives one flag another meaning rewrites its help here).
pub fn parse_with<A: Parser>(edit: impl Fn(Command) -> Command) -> A {
    let matches = command::<A>(&edit).get_matches();
    if let Some(shell) = matches.get_one::<Shell>("completions") {
        let mut cmd = command::<A>(&edit);
        let name = cmd.get_name().to_string();
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut cmd, name, &mut script);
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
        std::process::exit(0);
    }
    from_matches(&matches)
}

/// The name the binary was run as (`evaluate`, not its crate's name `eval`).
fn bin_name() -> Option<String> {
    let arg0 = std::env::args_os().next()?;
    let name = std::path::Path::new(&arg0).file_name()?.to_str()?;
    Some(name.to_string())
}

fn command<A: Parser>(edit: &impl Fn(Command) -> Command) -> Command {
    let cmd = edit(A::command());
    let cmd = match bin_name() {
        Some(n) => cmd.name(n),
        None => cmd,
    };
    // `--completions` stands alone; a missing subcommand is then reported by `from_matches`.
    let cmd = if cmd.is_subcommand_required_set() {
        cmd.subcommand_required(false).arg_required_else_help(true)
    } else {
        cmd
    };
    cmd.arg(
        Arg::new("completions")
            .long("completions")
            .value_name("SHELL")
            .value_parser(clap::value_parser!(Shell))
            .exclusive(true)
            .help("Print a shell completion script (bash, zsh, fish, elvish, powershell) and exit"),
    )
}

fn from_matches<A: Parser>(m: &ArgMatches) -> A {
    A::from_arg_matches(m).unwrap_or_else(|e| e.format(&mut A::command()).exit())
}

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
