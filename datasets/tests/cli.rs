//! The `datasets` binary as a user runs it.
use anyhow::Result;
use std::process::Command;
use testkit::write_strings;

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
        o.status.success() && text.contains("messages") && text.contains("rows 4400") && text.contains("tokens"),
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

/// The values of string column `col` of a Parquet file.
fn column(path: &std::path::Path, col: &str) -> Result<Vec<String>> {
    use arrow::array::{Array, AsArray};
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    for b in parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)?.build()? {
        let b = b?;
        let a = b.column_by_name(col).expect("column").as_string::<i32>().clone();
        out.extend((0..a.len()).map(|i| a.value(i).to_string()));
    }
    Ok(out)
}

#[test]
fn split_holds_out_whole_documents_deterministically_and_never_replaces_other_files() -> Result<()> {
    use std::collections::BTreeSet;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // 200 rows, 180 distinct documents: rows 180.. repeat rows 0..20.
    let docs: Vec<String> = (0..200)
        .map(|i| format!("document number {} about salt", i % 180))
        .collect();
    let input = d.join("corpus.parquet");
    common::data::writer::write_text(&input, &docs)?;
    let split = |out: &std::path::Path, seed: &str, extra: &[&str]| -> Result<std::process::Output> {
        Ok(bin()
            .args([
                "split",
                "--input",
                input.to_str().unwrap_or_default(),
                "--heldout",
                "0.1",
                "--seed",
                seed,
                "--out",
            ])
            .arg(out)
            .args(extra)
            .output()?)
    };
    let a = d.join("a");
    let o = split(&a, "3", &[])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (train, held) = (
        column(&a.join("train.parquet"), "text")?,
        column(&a.join("heldout.parquet"), "text")?,
    );
    assert_eq!(train.len() + held.len(), 200, "every row kept");
    let (t, h): (BTreeSet<&String>, BTreeSet<&String>) = (train.iter().collect(), held.iter().collect());
    assert!(t.is_disjoint(&h), "a document on both sides");
    assert_eq!(h.len(), 18, "round(0.1 x 180 distinct documents) held out");
    // Same seed: the same split (here into a second directory); another seed: another split.
    let b = d.join("b");
    assert!(split(&b, "3", &[])?.status.success());
    assert_eq!(column(&b.join("heldout.parquet"), "text")?, held);
    let c = d.join("c");
    assert!(split(&c, "4", &[])?.status.success());
    assert_ne!(column(&c.join("heldout.parquet"), "text")?, held);
    // Its own outputs are replaced on a rerun; a file it did not write is refused and kept.
    assert!(split(&a, "3", &[])?.status.success());
    let theirs = d.join("theirs");
    std::fs::create_dir_all(&theirs)?;
    std::fs::write(theirs.join("heldout.parquet"), "mine")?;
    let o = split(&theirs, "3", &[])?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("not written by `datasets split`"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(theirs.join("heldout.parquet"))?, "mine");
    assert!(!theirs.join("train.parquet").exists());
    // --by: one question with two answers is one document.
    let qa = d.join("qa.parquet");
    let questions: Vec<String> = (0..40).map(|i| format!("What is {} + 1?", i % 20)).collect();
    let answers: Vec<String> = (0..40).map(|i| format!("{} (take {})", i % 20 + 1, i / 20)).collect();
    write_strings(
        &qa,
        &[
            ("question", questions.iter().map(String::as_str).collect()),
            ("answer", answers.iter().map(String::as_str).collect()),
        ],
    )?;
    let q = d.join("q");
    let o = bin()
        .args([
            "split",
            "--input",
            qa.to_str().unwrap_or_default(),
            "--heldout",
            "0.25",
            "--by",
            "question",
            "--out",
        ])
        .arg(&q)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let held_q = column(&q.join("heldout.parquet"), "question")?;
    let train_q: BTreeSet<String> = column(&q.join("train.parquet"), "question")?.into_iter().collect();
    assert_eq!(held_q.len(), 10, "5 questions, both takes of each");
    assert!(held_q.iter().all(|x| !train_q.contains(x)));
    let o = bin()
        .args([
            "split",
            "--input",
            qa.to_str().unwrap_or_default(),
            "--heldout",
            "0.25",
            "--by",
            "problem",
            "--out",
        ])
        .arg(d.join("r"))
        .output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("--by problem") && e.contains("question, answer"),
        "{e}"
    );
    Ok(())
}

#[test]
fn tokenizer_trains_on_a_mix_alone_as_pretrain_would() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let docs: Vec<String> = (0..400)
        .map(|i| format!("The river Tarsk flows past {i} salt mines; 12 + {i} = {}.", 12 + i))
        .collect();
    std::fs::create_dir_all(d.join("data/web"))?;
    common::data::writer::write_text(&d.join("data/web/a.parquet"), &docs)?;
    // A relative data path, found under --data-root.
    let mix = d.join("mix.toml");
    std::fs::write(
        &mix,
        "[[source]]\nname = \"web\"\npath = \"web/*.parquet\"\nformat = \"text\"\nweight = 1\n",
    )?;
    let out = d.join("tok/tokenizer.json");
    let run = |extra: &[&str]| -> Result<std::process::Output> {
        Ok(bin()
            .arg("tokenizer")
            .arg("--mix")
            .arg(&mix)
            .args(["--vocab", "300", "--out"])
            .arg(&out)
            .arg("--data-root")
            .arg(d.join("data"))
            .args(extra)
            .output()?)
    };
    let o = run(&[])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tok = common::tokenizer::Tok::load(&out)?;
    assert!(
        tok.vocab_size() > 256 && tok.vocab_size() <= 300,
        "{}",
        tok.vocab_size()
    );
    // The function pretrain's `[tokenizer] train = true` calls gives the same tokenizer.
    let same =
        common::tokenizer::Tok::train_on_mix(&common::data::mix::load_mix(&mix, Some(&d.join("data")))?, 300, 8)?;
    let text = "The river Tarsk flows past 77 salt mines.";
    assert_eq!(tok.encode(text)?, same.encode(text)?);
    // An existing file is kept unless --force.
    let o = run(&[])?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--force"), "{e}");
    assert!(run(&["--force"])?.status.success());
    Ok(())
}
