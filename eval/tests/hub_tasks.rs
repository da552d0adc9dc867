//! Task files as the hub ships them, graded with no preprocessing: GSM8K (`question`, and an
//! `answer` whose number follows `####`), HumanEval (`prompt`, `canonical_solution`, `test`,
//! `entry_point`: graded by running the unit tests in the sandbox), and given completions
//! re-graded without a model.
use anyhow::Result;
use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use testkit::{bin, stderr, tiny_checkpoint, tiny_world, write_strings};

fn evaluate(args: &[&str]) -> Result<std::process::Output> {
    Ok(bin(env!("CARGO_BIN_EXE_evaluate")).args(args).output()?)
}

const GSM8K_Q: [&str; 3] = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty has 1,200 stamps and gives away 250. How many are left?",
];
const GSM8K_A: [&str; 3] = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    "1,200 - 250 = <<1200-250=950>>950 stamps are left.\n#### 950",
];

#[test]
fn gsm8k_layout_grades_its_gold_answers_at_100_percent_and_reads_completions_its_way() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("gsm8k-test.parquet");
    write_strings(&file, &[("question", GSM8K_Q.to_vec()), ("answer", GSM8K_A.to_vec())])?;
    let f = file.to_str().unwrap_or_default();
    let mapped = ["--tasks", f, "--columns", "prompt=question", "--kind", "gsm8k"];

    // With GSM8K's answer format, the reference answers grade themselves at 100%.
    let o = evaluate(&[&mapped[..], &["--answers", "gsm8k", "--gold"]].concat())?;
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("| gsm8k | 3 | 100.0%"), "{table}");

    // Without it, the first number of the reference (48) is not the answer (72): a clear error
    // naming the options, not a silent 2%.
    let o = evaluate(&[&mapped[..], &["--gold"]].concat())?;
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("--answers") && e.contains("not all"), "{e}");

    // Without the column mapping: the missing column and the flag that fixes it.
    let o = evaluate(&["--tasks", f, "--kind", "gsm8k", "--gold"])?;
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("prompt") && e.contains("--columns"),
        "{e}"
    );

    // A reference without the marker is named with its row and the option.
    let odd = dir.path().join("odd.parquet");
    write_strings(&odd, &[("question", vec!["What is 2 + 2?"]), ("answer", vec!["4"])])?;
    let o = evaluate(&[
        "--tasks",
        odd.to_str().unwrap_or_default(),
        "--columns",
        "prompt=question",
        "--kind",
        "gsm8k",
        "--answers",
        "gsm8k",
        "--gold",
    ])?;
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("row 0") && e.contains("reference"),
        "{e}"
    );

    // Given completions, read GSM8K's way; strict needs the marker and a finished answer.
    let completions = dir.path().join("completions.jsonl");
    let lines = [
        serde_json::json!({"prompt": GSM8K_Q[0], "completion": "48 + 24 = 72\n#### 72"}),
        serde_json::json!({"prompt": GSM8K_Q[1], "completion": "She earned 10 dollars.\n10"}),
        serde_json::json!({"prompt": GSM8K_Q[2], "completion": "1200 - 250 = 950\n#### 950", "finished": false}),
    ];
    std::fs::write(&completions, lines.iter().map(|l| format!("{l}\n")).collect::<String>())?;
    let c = completions.to_str().unwrap_or_default();
    let grade = |extra: &[&str]| -> Result<Value> {
        let out = dir.path().join("graded.json");
        let o = evaluate(
            &[
                &mapped[..],
                &["--answers", "gsm8k", "--responses", c, "--out"],
                &[out.to_str().unwrap_or_default()],
                extra,
            ]
            .concat(),
        )?;
        assert!(o.status.success(), "{}", stderr(&o));
        Ok(serde_json::from_str(&std::fs::read_to_string(&out)?)?)
    };
    let lenient = grade(&[])?;
    assert_eq!(lenient["per_kind"]["gsm8k"]["n"], 3);
    // Lenient: the unmarked answer falls back to its last line (10, right); the cut-off one counts.
    assert_eq!(lenient["per_kind"]["gsm8k"]["accuracy"], 1.0);
    let strict = grade(&["--strict"])?;
    // Strict: only the marked, finished completion is right.
    let acc = strict["per_kind"]["gsm8k"]["accuracy"].as_f64().unwrap_or(-1.0);
    assert!((acc - 1.0 / 3.0).abs() < 1e-9, "{strict}");
    Ok(())
}

const HUMANEVAL_PROMPT: &str = "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n    \"\"\" Check if in given list of numbers, are any two numbers closer to each other than\n    given threshold.\n    \"\"\"\n";
const HUMANEVAL_SOLUTION: &str = "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n            if idx != idx2:\n                distance = abs(elem - elem2)\n                if distance < threshold:\n                    return True\n\n    return False\n";
const HUMANEVAL_TEST: &str = "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n";

#[test]
fn humaneval_layout_runs_the_unit_tests_in_the_sandbox() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("humaneval.parquet");
    write_strings(
        &file,
        &[
            ("task_id", vec!["HumanEval/0"]),
            ("prompt", vec![HUMANEVAL_PROMPT]),
            ("canonical_solution", vec![HUMANEVAL_SOLUTION]),
            ("test", vec![HUMANEVAL_TEST]),
            ("entry_point", vec!["has_close_elements"]),
        ],
    )?;
    let f = file.to_str().unwrap_or_default();
    let mapped = [
        "--tasks",
        f,
        "--columns",
        "answer=canonical_solution,test=test,entry_point=entry_point",
        "--kind",
        "humaneval",
        "--allow-weak-sandbox",
    ];
    // The canonical solution passes its own tests.
    let o = evaluate(&[&mapped[..], &["--gold"]].concat())?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("| humaneval | 1 | 100.0%"));
    // Completions: a stub fails; the body as a continuation passes; a whole function in a
    // fenced block (without the prompt's import) passes; a wrong one fails.
    let whole = format!("```python\ndef has_close_elements(numbers, threshold):\n{HUMANEVAL_SOLUTION}```");
    let wrong = "```python\ndef has_close_elements(numbers, threshold):\n    return True\n```";
    let mut graded = Vec::new();
    for completion in ["    return None\n", HUMANEVAL_SOLUTION, whole.as_str(), wrong] {
        let c = dir.path().join("c.jsonl");
        std::fs::write(
            &c,
            format!(
                "{}\n",
                serde_json::json!({"prompt": HUMANEVAL_PROMPT, "completion": completion})
            ),
        )?;
        let out = dir.path().join("g.json");
        let o = evaluate(
            &[
                &mapped[..],
                &[
                    "--responses",
                    c.to_str().unwrap_or_default(),
                    "--out",
                    out.to_str().unwrap_or_default(),
                ],
            ]
            .concat(),
        )?;
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
        graded.push(v["per_kind"]["humaneval"]["accuracy"].as_f64().unwrap_or(-1.0));
    }
    assert_eq!(
        graded,
        [0.0, 1.0, 1.0, 0.0],
        "stub, continuation, whole function, wrong"
    );
    Ok(())
}

#[test]
fn logged_samples_regrade_to_the_same_accuracy() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    tiny_checkpoint(d, &d.join("run/sft"), "sft")?;
    let tasks = d.join("eval/tasks.parquet");
    let (t, log, out) = (
        tasks.to_str().unwrap_or_default(),
        d.join("samples.jsonl"),
        d.join("eval.json"),
    );
    let o = evaluate(&[
        d.join("run/sft").to_str().unwrap_or_default(),
        "--tasks",
        t,
        "--out",
        out.to_str().unwrap_or_default(),
        "--log-samples",
        log.to_str().unwrap_or_default(),
        "--allow-weak-sandbox",
    ])?;
    assert!(o.status.success(), "{}", stderr(&o));
    let first: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let regraded = d.join("regraded.json");
    let o = evaluate(&[
        "--tasks",
        t,
        "--responses",
        log.to_str().unwrap_or_default(),
        "--out",
        regraded.to_str().unwrap_or_default(),
        "--allow-weak-sandbox",
    ])?;
    assert!(o.status.success(), "{}", stderr(&o));
    let again: Value = serde_json::from_str(&std::fs::read_to_string(&regraded)?)?;
    for kind in ["arithmetic", "facts", "program", "unanswerable"] {
        assert_eq!(
            first["greedy"]["per_kind"][kind]["accuracy"], again["per_kind"][kind]["accuracy"],
            "{kind}"
        );
        assert_eq!(first["greedy"]["per_kind"][kind]["n"], again["per_kind"][kind]["n"]);
    }
    // The world's own task file checks out: every reference answer is accepted.
    let o = evaluate(&["--tasks", t, "--gold", "--allow-weak-sandbox"])?;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("| answerable (pooled) |"));
    Ok(())
}

/// A SmolTalk-layout file (`messages: list<struct<content, role>>` beside a `source` column, as
/// the hub ships it): 24 conversations, every third longer than 257 tokens.
fn write_smoltalk(path: &Path) -> Result<()> {
    use arrow::array::{ListArray, StructArray};
    use arrow::buffer::OffsetBuffer;
    use arrow::datatypes::Fields;
    let (mut roles, mut contents, mut offsets) = (Vec::new(), Vec::new(), vec![0i32]);
    for i in 0..24usize {
        let answer = if i % 3 == 0 {
            format!(
                "Sure. {}",
                "The town of Velmora trades salt with Tarsk in the north. ".repeat(30)
            )
        } else {
            format!("{i} + 2 = {}.", i + 2)
        };
        roles.extend(["user", "assistant"]);
        contents.extend([format!("What is {i} + 2?"), answer]);
        offsets.push(roles.len() as i32);
    }
    let fields = Fields::from(vec![
        Field::new("content", DataType::Utf8, true),
        Field::new("role", DataType::Utf8, true),
    ]);
    let structs = StructArray::new(
        fields.clone(),
        vec![
            Arc::new(StringArray::from(contents)) as ArrayRef,
            Arc::new(StringArray::from(roles)) as ArrayRef,
        ],
        None,
    );
    let item = Arc::new(Field::new("element", DataType::Struct(fields), true));
    let messages = ListArray::new(item.clone(), OffsetBuffer::new(offsets.into()), Arc::new(structs), None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("messages", DataType::List(item), true),
        Field::new("source", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(messages),
            Arc::new(StringArray::from(vec!["smol-magpie-ultra"; 24])),
        ],
    )?;
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path)?, schema, None)?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

/// `configs/examples/gsm8k` as a user runs it: GSM8K-layout files under data/gsm8k/ (the
/// examples' data root), SFT on the training split mixed with a SmolTalk-layout file, RL on
/// its questions, then evaluate on the test split and write the report; nothing preprocessed.
/// (A tiny random model and a few steps: this checks the path, not the skill.)
#[test]
fn gsm8k_example_configs_run_sft_rl_and_evaluate() -> Result<()> {
    use common::model::GptConfig;
    use common::tokenizer::Tok;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let row = |i: usize| -> (String, String) {
        let (a, b) = (3 + i % 17, 5 + i % 11);
        (
            format!("Tom has {a} apples and buys {b} more. How many apples does he have now?"),
            format!(
                "Tom has {a} + {b} = <<{a}+{b}={}>>{} apples now.\n#### {}",
                a + b,
                a + b,
                a + b
            ),
        )
    };
    std::fs::create_dir_all(d.join("data/gsm8k"))?;
    for (name, range) in [("train", 0..600), ("test", 1000..1008)] {
        let rows: Vec<(String, String)> = range.map(row).collect();
        write_strings(
            &d.join(format!("data/gsm8k/{name}.parquet")),
            &[
                ("question", rows.iter().map(|r| r.0.as_str()).collect()),
                ("answer", rows.iter().map(|r| r.1.as_str()).collect()),
            ],
        )?;
    }
    let ex = d.join("configs/examples/gsm8k");
    std::fs::create_dir_all(&ex)?;
    for f in std::fs::read_dir(testkit::workspace_root().join("configs/examples/gsm8k"))? {
        let f = f?;
        std::fs::copy(f.path(), ex.join(f.file_name()))?;
    }
    // SmolTalk-style conversations join the SFT mix, as the mix's commented example shows.
    write_smoltalk(&d.join("data/smoltalk/train-00000.parquet"))?;
    let mix = ex.join("sft-mix.toml");
    let text = std::fs::read_to_string(&mix)?;
    std::fs::write(
        &mix,
        format!("{text}\n[[source]]\nname = \"smoltalk\"\npath = \"smoltalk/train-*.parquet\"\nformat = \"chat\"\nweight = 0.5\n"),
    )?;
    // A tiny model with the examples' 256-token context, as the start of the ladder.
    let tok = Tok::load(&d.join("tokenizer.json"))?;
    let mut cfg = GptConfig::preset("tiny", tok.vocab_size() as i64)?;
    cfg.max_seq_len = 256;
    common::checkpoint::save_random(&d.join("runs/midtrain"), &cfg, &tok, "midtrain", 0)?;
    let stage = |exe: &str, args: &[&str]| -> Result<()> {
        let path = Path::new(env!("CARGO_BIN_EXE_evaluate")).with_file_name(exe);
        let o = bin(path)
            .current_dir(d)
            .env("L2E_PROGRESS", "quiet")
            .env("LIB2EXPERT_ALLOW_WEAK_SANDBOX", "1")
            .args(args)
            .output()?;
        assert!(o.status.success(), "{exe} {args:?}: {}", stderr(&o));
        Ok(())
    };
    stage(
        "sft",
        &[
            "--config",
            "configs/examples/gsm8k/sft.toml",
            "--init",
            "runs/midtrain",
            "--out",
            "runs/sft",
            "--steps",
            "2",
            "--device",
            "cpu",
        ],
    )?;
    let sft: common::meta::Meta = serde_json::from_str(&std::fs::read_to_string(d.join("runs/sft/meta.json"))?)?;
    let t = sft.metrics.tasks.as_ref().expect("SFT graded the GSM8K test split");
    assert_eq!(t.per_kind["gsm8k"].n, 8);
    assert!(sft.metrics.heldout.as_ref().is_some_and(|h| h.contains_key("gsm8k")));
    // The over-long SmolTalk conversations were dropped and counted; every GSM8K row fits.
    let Some(common::metrics::TrainMetrics::Lm(train)) = &sft.metrics.train else {
        panic!("SFT recorded its training metrics");
    };
    let overlong = train.overlong.as_ref().expect("SFT counts over-long conversations");
    assert_eq!(overlong.row_tokens, 257);
    let (smol, gsm) = (overlong.per_source["smoltalk"], overlong.per_source["gsm8k"]);
    assert!(smol.dropped > 0 && smol.dropped < smol.documents, "{smol:?}");
    assert_eq!((gsm.dropped, gsm.cut), (0, 0));
    stage(
        "rl",
        &[
            "--config",
            "configs/examples/gsm8k/rl.toml",
            "--init",
            "runs/sft",
            "--out",
            "runs/rl",
            "--steps",
            "1",
            "--device",
            "cpu",
        ],
    )?;
    let rl: common::meta::Meta = serde_json::from_str(&std::fs::read_to_string(d.join("runs/rl/meta.json"))?)?;
    assert_eq!(rl.metrics.tasks.as_ref().expect("RL graded").per_kind["gsm8k"].n, 8);
    let log = common::metrics::read_jsonl(&d.join("runs/rl/metrics.jsonl"));
    assert!(
        log.iter().any(|l| l["curriculum"].to_string().contains("gsm8k")),
        "RL drew its prompts from the GSM8K file"
    );
    let out = d.join("eval.json");
    let o = bin(env!("CARGO_BIN_EXE_evaluate"))
        .current_dir(d)
        .args([
            "runs/rl",
            "--data-root",
            "data",
            "--tasks",
            "gsm8k/test.parquet",
            "--columns",
            "prompt=question",
            "--kind",
            "gsm8k",
            "--answers",
            "gsm8k",
            "--out",
            out.to_str().unwrap_or_default(),
        ])
        .output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    assert_eq!(v["greedy"]["per_kind"]["gsm8k"]["n"], 8);
    // The report shows what SFT dropped.
    let o = bin(Path::new(env!("CARGO_BIN_EXE_report")))
        .arg(d.join("runs"))
        .output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(d.join("runs/report.md"))?;
    let line = md
        .lines()
        .find(|l| l.contains("conversations longer than a row of 257 tokens"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("smoltalk {} of {}", smol.dropped, smol.documents)) && !line.contains("gsm8k"),
        "{md}"
    );
    Ok(())
}
