//! Daily use from a shell: the justfile's recipes keep a quoted prompt one argument, every
//! binary prints shell completions, and `--help` lists what a user may type (not internals).
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::{bin, tiny_checkpoint, tiny_world, workspace_root};

/// The folder holding this build's binaries (the justfile's `bin`).
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_chat"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[test]
fn just_recipes_pass_a_quoted_prompt_as_one_argument() -> Result<()> {
    if Command::new("just").arg("--version").output().is_err() {
        eprintln!("skipped: `just` is not on PATH (python3 -m pip install rust-just)");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    tiny_checkpoint(d, &d.join("runs/t/sft"), "sft")?;
    // The recipe as a user runs it, minus its `build` dependency (this test's binaries are built).
    let just = |args: &[&str]| {
        let mut c = bin("just");
        c.arg("--justfile")
            .arg(workspace_root().join("justfile"))
            .arg("--working-directory")
            .arg(d)
            .args(["--no-deps", "--set", "bin"])
            .arg(bin_dir())
            .args(args);
        c.output()
    };
    // Before `set positional-arguments`, `{{flags}}` re-split this into `--prompt What is 23 …`
    // and chat refused the stray words.
    let o = just(&[
        "chat",
        "runs/t/sft",
        "--prompt",
        "What is 23 + 58?",
        "--system",
        "You're terse; answer \"N\".",
        "--max-new-tokens",
        "4",
    ])?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        !String::from_utf8_lossy(&o.stdout).trim().is_empty(),
        "no answer: {err}"
    );
    // The same for a stage-style recipe whose flags follow two parameters.
    let o = just(&[
        "evaluate",
        "runs/t/sft",
        "--tasks",
        "default",
        "--world",
        ".",
        "--limit",
        "4",
        "--samples",
        "1",
        "--max-new-tokens",
        "4",
        "--out",
        "eval with spaces.json",
    ])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.join("eval with spaces.json").exists());
    Ok(())
}

#[test]
fn every_binary_prints_completions_and_help_shows_no_internals() -> Result<()> {
    for name in ["chat", "evaluate", "report", "export-hf", "bench"] {
        let o = bin(bin_dir().join(name)).args(["--completions", "bash"]).output()?;
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        // The script completes this binary's own name and flags.
        assert!(
            script.contains(&format!("complete -F _{}", name.replace('-', "__"))) && script.contains("--help"),
            "{name}: {script}"
        );
    }
    let o = bin(env!("CARGO_BIN_EXE_chat"))
        .args(["--completions", "zsh"])
        .output()?;
    assert!(String::from_utf8_lossy(&o.stdout).contains("#compdef chat"));
    let o = bin(env!("CARGO_BIN_EXE_bench")).arg("--help").output()?;
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && help.contains("PyTorch"), "{help}");
    assert!(!help.contains("(internal)"), "bench --help shows internals: {help}");
    // The one command listed is the one a user runs alone: time to quality.
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap_or("")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(
        commands.len() == 1 && commands[0].trim_start().starts_with("quality "),
        "bench --help lists {commands:?}"
    );
    // `-h` describes the binary itself, not its crate.
    let o = bin(env!("CARGO_BIN_EXE_chat")).arg("-h").output()?;
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.starts_with("Chat with a checkpoint"), "{help}");
    // A missing checkpoint names no flag chat does not take.
    let o = bin(env!("CARGO_BIN_EXE_chat")).arg("/no/such/run").output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("does not exist") && !e.contains("--init"),
        "{e}"
    );
    Ok(())
}
