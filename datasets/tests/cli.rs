//! The `datasets` binary as a user runs it.
use anyhow::Result;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_datasets"))
}

#[test]
fn help_bad_arguments_build_inspect_and_decontaminate() -> Result<()> {
    let o = bin().arg("--help").env_clear().output()?;
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for cmd in ["build", "inspect", "decontaminate"] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
    let o = bin().args(["build", "--scale", "huge"]).output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("huge"), "{e}");

    let dir = tempfile::tempdir()?;
    let out = dir.path().join("world");
    let o = bin()
        .args(["build", "--seed", "3", "--vocab-size", "512", "--out"])
        .arg(&out)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("manifest.json").exists() && out.join("tokenizer.json").exists());

    // A directory holding the user's files is refused, not cleared; a second build over the first
    // replaces its files and leaves a file of the user's in a subfolder alone.
    let theirs = dir.path().join("notes");
    std::fs::create_dir_all(theirs.join("eval"))?;
    std::fs::write(theirs.join("eval/mine.txt"), "keep")?;
    let o = bin()
        .args(["build", "--vocab-size", "512", "--out"])
        .arg(&theirs)
        .output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("did not write"), "{e}");
    assert_eq!(std::fs::read_to_string(theirs.join("eval/mine.txt"))?, "keep");
    std::fs::write(out.join("eval/mine.txt"), "keep")?;
    let o = bin()
        .args(["build", "--seed", "3", "--vocab-size", "512", "--out"])
        .arg(&out)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(out.join("eval/mine.txt"))?, "keep");
    assert!(out.join("eval/tasks.parquet").exists() && out.join("manifest.json").exists());

    let o = bin()
        .arg("inspect")
        .arg(out.join("sft/train.parquet"))
        .arg("--tokenizer")
        .arg(out.join("tokenizer.json"))
        .output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("messages") && text.contains("rows 4000") && text.contains("tokens"),
        "{text}"
    );
    let o = bin().args(["inspect", "/no/such/file.parquet"]).output()?;
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("does not exist"));

    // Decontaminate an eval file against a mix that contains one of its questions verbatim.
    let planted = dir.path().join("planted.parquet");
    common::data::writer::write_text(
        &planted,
        &[
            "Some forum text. What is 5 * 12?".to_string(),
            "What is 5 * 12".to_string(),
        ],
    )?;
    let mix = dir.path().join("mix.toml");
    std::fs::write(
        &mix,
        format!(
            "[[source]]\nname = \"p\"\npath = \"{}\"\nformat = \"text\"\nweight = 1\n",
            planted.display()
        ),
    )?;
    let eval = dir.path().join("eval.parquet");
    common::data::writer::write_tasks(
        &eval,
        &[
            common::verify::Task {
                prompt: "What is 5 * 12?".into(),
                answer: "60".into(),
                kind: "arithmetic".into(),
                ..common::verify::Task::default()
            },
            common::verify::Task {
                prompt: "What is 7 * 3?".into(),
                answer: "21".into(),
                kind: "arithmetic".into(),
                ..common::verify::Task::default()
            },
        ],
    )?;
    let clean = dir.path().join("clean.parquet");
    let o = bin()
        .arg("decontaminate")
        .arg("--train")
        .arg(&mix)
        .arg("--eval")
        .arg(&eval)
        .arg("--write-clean")
        .arg(&clean)
        .output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("1 of 2 eval rows"), "{text}");
    assert_eq!(common::tasks::load_tasks(&clean)?.len(), 1);
    Ok(())
}
