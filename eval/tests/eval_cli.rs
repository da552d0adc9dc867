//! `evaluate` reproduces the task metrics a stage wrote into meta.json; `chat --prompt` answers;
//! `report` turns a run into a page.
use anyhow::Result;
use common::config::{CommonArgs, LmConfig};
use serde_json::Value;
use testkit::{bin, tiny_checkpoint, tiny_world};

#[test]
fn eval_reproduces_meta_and_chat_and_report_work() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    // The ladder's first two rungs as untrained checkpoints (the report reads every stage's meta).
    tiny_checkpoint(d, &d.join("run/pretrain"), "pretrain")?;
    tiny_checkpoint(d, &d.join("run/midtrain"), "midtrain")?;
    let args = CommonArgs {
        init: Some(d.join("run/midtrain")),
        out: Some(d.join("run/sft")),
        ..Default::default()
    };
    std::env::set_var("L2E_PROGRESS", "quiet");
    let cfg = LmConfig::load(&d.join("configs/sft.toml"), &args, "sft")?;
    let meta = common::lm::run(&sft::SPEC, &cfg, &args)?;
    let metrics = serde_json::to_value(&meta.metrics)?;
    // The multi-turn follow-ups of `[tasks] multiturn` are graded at the start and the end.
    for key in ["tasks_multiturn_start", "tasks_multiturn"] {
        for kind in ["arithmetic", "facts"] {
            assert_eq!(metrics[key]["per_kind"][kind]["n"], 3, "{key} {kind}: {metrics}");
        }
    }
    // `evaluate` grades them as SFT did (the history before each question), and logs the history.
    let mt = d.join("eval-multiturn.json");
    let o = bin(env!("CARGO_BIN_EXE_evaluate"))
        .arg(d.join("run/sft"))
        .arg("--tasks")
        .arg(d.join("eval/multiturn.parquet"))
        .args(["--per-kind", "3", "--out"])
        .arg(&mt)
        .arg("--log-samples")
        .arg(d.join("multiturn.jsonl"))
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&mt)?)?;
    for kind in ["arithmetic", "facts"] {
        assert_eq!(
            v["greedy"]["per_kind"][kind]["accuracy"], metrics["tasks_multiturn"]["per_kind"][kind]["accuracy"],
            "{kind}: multi-turn eval and meta.json disagree"
        );
    }
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(d.join("multiturn.jsonl"))?
            .lines()
            .next()
            .unwrap_or_default(),
    )?;
    assert_eq!(first["history"][1]["role"], "assistant", "{first}");

    let out = d.join("eval.json");
    let o = bin(env!("CARGO_BIN_EXE_evaluate"))
        .arg(d.join("run/sft"))
        .arg("--tasks")
        .arg(d.join("eval/tasks.parquet"))
        .args(["--samples", "4", "--out"])
        .arg(&out)
        .arg("--log-samples")
        .arg(d.join("samples.jsonl"))
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("| arithmetic |") && table.contains("pass@4"), "{table}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    for kind in ["arithmetic", "facts", "program", "unanswerable"] {
        assert_eq!(
            v["greedy"]["per_kind"][kind]["accuracy"], metrics["tasks"]["per_kind"][kind]["accuracy"],
            "{kind}: eval and meta.json disagree"
        );
        assert_eq!(
            v["greedy"]["per_kind"][kind]["abstention_rate"],
            metrics["tasks"]["per_kind"][kind]["abstention_rate"]
        );
    }
    // The sample log holds every graded answer; its greedy lines give back the accuracy.
    let log: Vec<Value> = std::fs::read_to_string(d.join("samples.jsonl"))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let greedy: Vec<&Value> = log.iter().filter(|r| r["mode"] == "greedy").collect();
    let n = v["greedy"]["per_kind"]["arithmetic"]["n"].as_u64().unwrap_or(0) as usize;
    let arith: Vec<&&Value> = greedy.iter().filter(|r| r["task"] == "arithmetic").collect();
    assert_eq!(arith.len(), n);
    let right = arith.iter().filter(|r| r["correct"] == true).count();
    assert_eq!(
        right as f64 / n as f64,
        v["greedy"]["per_kind"]["arithmetic"]["accuracy"]
            .as_f64()
            .unwrap_or(-1.0)
    );
    assert_eq!(log.len(), greedy.len() * 5, "1 greedy + 4 sampled answers per question");
    assert!(arith
        .iter()
        .all(|r| r["prompt"].is_string() && r["completion"].is_string()));
    // The file describes itself: settings as resolved, counts, version, commit, date.
    let st = &v["settings"];
    assert_eq!(st["samples"], 4);
    assert_eq!(st["task_set"], d.join("eval/tasks.parquet").display().to_string());
    // No --max-new-tokens: the SFT stage's own [tasks] max_new_tokens (8, tiny_world).
    assert_eq!(
        (st["max_new_tokens"].as_i64(), st["max_new_tokens_from"].as_str()),
        (Some(8), Some("checkpoint config"))
    );
    let questions = v["counts"]["questions"].as_u64().unwrap_or(0);
    assert!(
        questions > 0 && v["counts"]["per_kind"]["arithmetic"].as_u64() == Some(n as u64),
        "{v}"
    );
    assert_eq!(v["counts"]["answers_graded"].as_u64(), Some(questions * 5));
    let p = &v["provenance"];
    assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
    assert!(p["date"].as_str().is_some_and(|d| d.ends_with("UTC")), "{p}");
    assert!(
        p["machine"]["cores"].as_u64().unwrap_or(0) >= 1 && p["tch"].is_string(),
        "{p}"
    );
    assert!(v["notes"].to_string().contains("maj@1"), "the maj@1 / pass@1 note");
    let pk = &v["sampled"]["answerable"]["pass_at_k"];
    assert!(
        pk["1"].as_f64().unwrap_or(2.0) <= pk["4"].as_f64().unwrap_or(-1.0),
        "pass@k grows with k: {pk}"
    );

    // A named task set, --limit spread over the kinds, and an explicit --max-new-tokens 64 (the
    // old default value, once mistaken for "not given").
    let out2 = d.join("eval-limit.json");
    let o = bin(env!("CARGO_BIN_EXE_evaluate"))
        .arg(d.join("run/sft"))
        .args(["--tasks", "default", "--world"])
        .arg(d)
        .args(["--limit", "6", "--max-new-tokens", "64", "--out"])
        .arg(&out2)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v2: Value = serde_json::from_str(&std::fs::read_to_string(&out2)?)?;
    assert_eq!(v2["settings"]["max_new_tokens"], 64);
    assert_eq!(v2["settings"]["max_new_tokens_from"], "flag");
    assert_eq!(v2["settings"]["task_set"], "default");
    assert_eq!(v2["counts"]["questions"], 6);
    // 6 questions over 4 kinds: 2, 2, 1, 1 (in turn).
    let per: Vec<u64> = ["arithmetic", "facts", "program", "unanswerable"]
        .iter()
        .map(|k| v2["counts"]["per_kind"][k].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(per.iter().sum::<u64>(), 6);
    assert!(per.iter().all(|&c| c == 1 || c == 2), "{per:?}");
    assert!(v2["sampled"].is_null() && v2["counts"]["answers_graded"] == 6);

    let o = bin(env!("CARGO_BIN_EXE_chat"))
        .arg(d.join("run/sft"))
        .args(["--prompt", "What is 2 + 3?", "--max-new-tokens", "8"])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !String::from_utf8_lossy(&o.stdout).trim().is_empty(),
        "chat printed an answer"
    );

    // A short RL run on top, with the harder slice graded: the report reads its typed metrics.
    let rl_args = CommonArgs {
        init: Some(d.join("run/sft")),
        out: Some(d.join("run/rl")),
        ..Default::default()
    };
    let rl_cfg_path = d.join("configs/rl-report.toml");
    std::fs::write(
        &rl_cfg_path,
        std::fs::read_to_string(d.join("configs/rl.toml"))?.replace(
            "seen_per_kind = 2",
            &format!(
                "seen_per_kind = 2\nhard_tasks = {:?}\nmultiturn_tasks = {:?}\nmultiturn_per_kind = 2",
                d.join("eval/tasks.parquet").display().to_string(),
                d.join("eval/multiturn.parquet").display().to_string()
            ),
        ),
    )?;
    let rl_cfg = rl::config::RlConfig::load(&rl_cfg_path, &rl_args)?;
    rl::run(&rl_cfg, &rl_args)?;
    let rl_meta: Value = serde_json::from_str(&std::fs::read_to_string(d.join("run/rl/meta.json"))?)?;
    for key in ["tasks_multiturn_start", "tasks_multiturn"] {
        assert_eq!(rl_meta["metrics"][key]["per_kind"]["facts"]["n"], 2, "{key}");
    }

    let o = bin(env!("CARGO_BIN_EXE_report")).arg(d.join("run")).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(d.join("run/report.md"))?;
    // The header: date, commit (or why none), machine, software, model, wall time.
    for field in [
        "| written |",
        "| git commit |",
        "| machine (writing this report) |",
        "cores",
        "| software | lib2expert",
        "tch 0.24",
        "libtorch 2.",
        "| model | 2 layers x 32 wide",
        "parameters**",
        "| wall time of the stages |",
        "training steps alone",
        "| library to annotator level (pretrain + midtrain + SFT) |",
        "| trained on | cpu: ",
        "threads",
        "## Summary",
        "| sft |",
        "| rl |",
    ] {
        assert!(md.contains(field), "no {field:?} in the header: {md}");
    }
    assert!(
        md.find("## Summary") < md.find("## What each stage cost"),
        "the summary comes first"
    );
    // Each stage's meta.json holds its whole wall time (at least its training steps') and
    // the machine it ran on.
    for stage in ["sft", "rl"] {
        let m: common::meta::Meta =
            serde_json::from_str(&std::fs::read_to_string(d.join("run").join(stage).join("meta.json"))?)?;
        assert!(
            m.wall_secs >= m.train_secs && m.train_secs > 0.0,
            "{stage}: wall {} s, training {} s",
            m.wall_secs,
            m.train_secs
        );
        let machine = m.machine.as_ref().expect("the machine is recorded");
        assert!(!machine.cpu.is_empty() && machine.cores >= 1, "{machine:?}");
        assert!(m.threads.is_some_and(|t| t >= 1));
        assert!(
            md.contains(&machine.to_string()),
            "{stage}'s machine is in the report: {md}"
        );
    }
    assert!(!md.contains("counted by their training steps alone"), "{md}");
    // A checkpoint written before whole-stage times were recorded is counted by its training
    // steps, and the header says which.
    let sft_meta = d.join("run/sft/meta.json");
    let mut older: Value = serde_json::from_str(&std::fs::read_to_string(&sft_meta)?)?;
    older.as_object_mut().map(|o| o.remove("wall_secs"));
    std::fs::write(&sft_meta, serde_json::to_string(&older)?)?;
    let o = bin(env!("CARGO_BIN_EXE_report")).arg(d.join("run")).output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let older_md = std::fs::read_to_string(d.join("run/report.md"))?;
    assert!(
        older_md.contains("; sft counted by their training steps alone"),
        "{older_md}"
    );
    // No line that starts with a stray ";", and multi-line examples are fenced blocks.
    assert!(!md.lines().any(|l| l.starts_with(';')), "{md}");
    assert!(
        !md.contains("```python print"),
        "a program squashed into one line: {md}"
    );
    assert!(
        md.contains("  ````text\n  What does this program print?\n  ```python\n"),
        "{md}"
    );
    assert!(
        md.contains("What SFT and RL bought") && md.contains("hallucination"),
        "{md}"
    );
    for section in [
        "Multi-turn: follow-ups that refer back",
        "skill or memorisation",
        "a harder held-out slice",
        "RL prompts: the curriculum",
        "RL dynamics",
    ] {
        assert!(md.contains(section), "no {section:?} section: {md}");
    }
    // One curriculum row per task kind of the prompt file, with its prompts drawn.
    assert!(md.contains("| train/arithmetic |"), "{md}");
    // The data each stage read, as its meta.json records it (typed on both sides).
    let meta = |stage: &str| -> Result<common::meta::Meta> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            d.join("run").join(stage).join("meta.json"),
        )?)?)
    };
    let Some(common::meta::DataRecord::Mix(mix)) = meta("sft")?.mix else {
        panic!("SFT records its mix");
    };
    let src = &mix.sources[0];
    assert!(
        md.contains(&format!(
            "- **sft** ({}): {} {:.0}% (",
            mix.path.display(),
            src.config.name,
            100.0 * src.share
        )),
        "{md}"
    );
    let Some(common::meta::DataRecord::Prompts(p)) = meta("rl")?.mix else {
        panic!("RL records its prompts");
    };
    assert!(!p.slots.is_empty());
    assert!(md.contains(&format!("- **rl**: prompts from {}\n", p.prompts)), "{md}");
    for svg in [
        "accuracy.svg",
        "hallucination.svg",
        "loss.svg",
        "curriculum.svg",
        "rl.svg",
    ] {
        assert!(d.join("run").join(svg).exists(), "{svg} missing");
    }
    Ok(())
}
