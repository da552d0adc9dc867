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

/// A Parquet file of string columns (as hub files are).
fn write_strings(path: &std::path::Path, cols: &[(&str, Vec<&str>)]) -> Result<()> {
    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, _)| Field::new(*n, DataType::Utf8, false))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = cols
        .iter()
        .map(|(_, v)| Arc::new(StringArray::from(v.clone())) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path)?, schema, None)?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

#[test]
fn decontaminate_reads_a_gsm8k_layout_through_the_column_mapping() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // The training text quotes the second test question word for word.
    let leaked = "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?";
    let train = d.join("train.parquet");
    common::data::writer::write_text(
        &train,
        &[format!("A forum post: {leaked} Someone answered ten dollars.")],
    )?;
    let mix = d.join("mix.toml");
    std::fs::write(
        &mix,
        format!(
            "[[source]]\nname = \"web\"\npath = \"{}\"\nformat = \"text\"\nweight = 1\n",
            train.display()
        ),
    )?;
    let eval = d.join("gsm8k-test.parquet");
    let questions = vec![
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether?",
        leaked,
        "Betty has 1,200 stamps and gives away 250. How many stamps does Betty have left now?",
    ];
    // The first answer quotes the leaked question: only the question column is checked.
    let answers = vec![leaked, "#### 10", "#### 950"];
    write_strings(&eval, &[("question", questions), ("answer", answers)])?;
    let run = |extra: &[&str]| -> Result<std::process::Output> {
        Ok(bin()
            .arg("decontaminate")
            .arg("--train")
            .arg(&mix)
            .arg("--eval")
            .arg(&eval)
            .args(extra)
            .output()?)
    };
    // Without the mapping: the columns the file has, and the flag that fixes it.
    let o = run(&[])?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("question, answer") && e.contains("--columns prompt=question"),
        "{e}"
    );
    // A mapping to a column the file lacks names the column and the flag.
    let o = run(&["--columns", "prompt=problem"])?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("`problem`") && e.contains("--columns"),
        "{e}"
    );
    // With it (and the rest of evaluate's GSM8K mapping, accepted as is): row 1 leaks, and the
    // clean file keeps the other two rows with the file's own columns.
    let clean = d.join("clean.parquet");
    let report = d.join("report.json");
    let o = run(&[
        "--columns",
        "prompt=question,answer=answer",
        "--write-clean",
        clean.to_str().unwrap_or_default(),
        "--report",
        report.to_str().unwrap_or_default(),
    ])?;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("1 of 3 eval rows"),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    assert_eq!(r["contaminated_rows"], serde_json::json!([1]));
    let source = common::tasks::TaskSource {
        path: clean.clone(),
        columns: [("prompt".to_string(), "question".to_string())].into(),
        kind: Some("gsm8k".into()),
        ..Default::default()
    };
    let kept: Vec<String> = source.load()?.into_iter().map(|t| t.prompt).collect();
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|q| q != leaked), "{kept:?}");
    Ok(())
}
