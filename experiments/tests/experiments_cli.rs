//! Each experiment, end to end on a small generated world and a tiny model: the real stage
//! binaries run, and the report's figures are checked against the checkpoints they came from.
use anyhow::Result;
use common::checkpoint;
use common::model::GptConfig;
use common::tokenizer::Tok;
use std::path::Path;
use testkit::{bin, stderr};

/// A binary of the workspace, beside `experiment` (`cargo test --workspace` builds them all;
/// the experiment finds its stages there too).
fn exe(name: &str) -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_experiment")).with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --release --workspace` first",
        p.display()
    );
    p
}

/// A real world (`datasets build`), a tiny random "pretrain" and "midtrain" base, and configs
/// with a handful of steps. The base run's SFT and RL are left for the experiment to build.
fn setup(root: &Path) -> Result<()> {
    let world = root.join("data");
    let o = bin(exe("datasets"))
        .args(["build", "--out"])
        .arg(&world)
        .args(["--vocab-size", "512"])
        .output()?;
    assert!(o.status.success(), "{}", stderr(&o));
    let tok = Tok::load(&world.join("tokenizer.json"))?;
    let cfg = GptConfig::preset("tiny", tok.vocab_size() as i64)?;
    for stage in ["pretrain", "midtrain"] {
        checkpoint::save_random(&root.join("runs/base").join(stage), &cfg, &tok, stage, 3)?;
    }
    let w = "data"; // relative to the experiment's working directory, as in the real configs
    let c = root.join("configs");
    std::fs::create_dir_all(c.join("mixes"))?;
    std::fs::write(
        c.join("mixes/sft.toml"),
        "[[source]]\nname = \"conversations\"\npath = \"data/sft/train.parquet\"\nformat = \"chat\"\nweight = 1.0\n",
    )?;
    // The ladder's first two stages, for rl-scaling's sizes other than the base model's.
    std::fs::write(
        c.join("mixes/library.toml"),
        "[[source]]\nname = \"encyclopedia\"\npath = \"data/library/encyclopedia-*.parquet\"\nformat = \"text\"\nweight = 1.0\n",
    )?;
    for stage in ["pretrain", "midtrain"] {
        std::fs::write(
            c.join(format!("{stage}.toml")),
            format!(
                "{}[data]\nmix = \"configs/mixes/library.toml\"\nseq_len = 64\n\n[train]\nsteps = 2\nbatch_size = 4\nmicro_batch_size = 4\nlr = 1e-3\nwarmup_steps = 1\ndevice = \"cpu\"\n",
                if stage == "pretrain" {
                    "[model]\npreset = \"tiny\"\n\n[tokenizer]\npath = \"data/tokenizer.json\"\n\n"
                } else {
                    ""
                }
            ),
        )?;
    }
    std::fs::write(
        c.join("mixes/rl.toml"),
        "world = \"data\"\n[[source]]\nname = \"arithmetic\"\ngenerator = \"arithmetic\"\nlevels = [1]\n[[source]]\nname = \"unanswerable\"\ngenerator = \"unanswerable\"\n",
    )?;
    std::fs::write(
        c.join("sft.toml"),
        format!(
            "[data]\nmix = \"{}\"\nseq_len = 64\n\n[train]\nsteps = 3\nbatch_size = 4\nmicro_batch_size = 4\nlr = 3e-3\nwarmup_steps = 1\ndevice = \"cpu\"\n\n[tasks]\npath = \"{w}/eval/tasks.parquet\"\nper_kind = 3\nmax_new_tokens = 8\nbatch_size = 16\neval_start = true\n",
            "configs/mixes/sft.toml"
        ),
    )?;
    std::fs::write(
        c.join("rl.toml"),
        format!("[data]\nprompts = \"configs/mixes/rl.toml\"\n\n[rl]\nprompts_per_step = 2\ngroup_size = 4\n\n[train]\nsteps = 2\nmicro_batch_size = 8\nlr = 1e-3\nschedule = \"constant\"\nsave_every = 1\ndevice = \"cpu\"\n\n[sampling]\nmax_new_tokens = 8\n\n[eval]\ntasks = \"{w}/eval/tasks.parquet\"\nper_kind = 4\nmax_new_tokens = 8\nseen_per_kind = 2\n"),
    )?;
    Ok(())
}

fn experiment(root: &Path, name: &str, extra: &[&str]) -> Result<String> {
    let o = bin(exe("experiment"))
        .current_dir(root)
        .args([
            "run",
            name,
            "--base",
            "runs/base",
            "--configs",
            "configs",
            "--world",
            "data",
            "--device",
            "cpu",
        ])
        .args(extra)
        .output()?;
    assert!(o.status.success(), "{name}: {}", stderr(&o));
    let report = std::fs::read_to_string(root.join("runs/experiments").join(name).join("report.md"))?;
    Ok(report)
}

fn cells<'a>(report: &'a str, row_start: &str) -> Vec<&'a str> {
    let line = report
        .lines()
        .find(|l| l.starts_with(&format!("| {row_start}")))
        .unwrap_or_else(|| panic!("no row {row_start:?} in\n{report}"));
    line.trim_matches('|').split('|').map(str::trim).collect()
}

#[test]
fn experiments_run_from_real_checkpoints() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    setup(root)?;

    let o = bin(exe("experiment")).arg("list").output()?;
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    for name in [
        "annotator-ceiling",
        "fabrication",
        "straight-to-rl",
        "confidence-targets",
        "rl-scaling",
    ] {
        assert!(list.contains(name), "{list}");
    }
    let o = bin(exe("experiment")).args(["run", "no-such"]).output()?;
    assert!(
        !o.status.success() && stderr(&o).contains("annotator-ceiling"),
        "{}",
        stderr(&o)
    );

    // annotator-ceiling: builds the base run's SFT and RL, then the annotator's world, SFT, RL.
    let report = experiment(root, "annotator-ceiling", &["--annotators", "habit:0.5"])?;
    let exp = root.join("runs/experiments/annotator-ceiling");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("habit-0.50/data/manifest.json"))?)?;
    let right = manifest["annotator"]["heldout_right"].as_u64().unwrap_or(0);
    let n = manifest["annotator"]["heldout_problems"].as_u64().unwrap_or(0);
    assert_eq!(n, 250);
    let row = cells(&report, "habit slips");
    assert!(
        row[1].starts_with(&format!("{:.1}%", 100.0 * right as f64 / n as f64)),
        "{row:?} vs {right}/{n}"
    );
    assert!(row[5].contains(&format!(" of {} (", n - right)), "{row:?}");
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(exp.join("habit-0.50/grade-sft.json"))?)?;
    assert_eq!(g["n"], 250);
    assert_eq!(g["annotator_wrong"].as_u64(), Some(n - right));
    assert!(
        row[2].starts_with(&format!("{:.1}%", 100.0 * g["right"].as_f64().unwrap_or(-1.0) / 250.0)),
        "{row:?} {g}"
    );
    // The annotator's SFT trained on its own conversations, from the base midtrain checkpoint.
    let sft: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(exp.join("habit-0.50/sft/meta.json"))?)?;
    assert!(
        sft["parent"]["path"]
            .as_str()
            .unwrap_or_default()
            .ends_with("runs/base/midtrain"),
        "{}",
        sft["parent"]
    );
    assert!(
        serde_json::to_string(&sft["mix"])?.contains("habit-0.50/data/sft/train.parquet"),
        "{}",
        sft["mix"]
    );
    assert!(root.join("runs/base/rl/meta.json").exists() && exp.join("habit-0.50/rl/meta.json").exists());
    assert!(cells(&report, "perfect")[1] == "100%");
    assert!(std::fs::read_to_string(exp.join("annotator-ceiling.svg"))?.contains("<svg"));
    // A second run resumes: every stage is complete, nothing retrains, the same table comes out.
    let again = experiment(root, "annotator-ceiling", &["--annotators", "habit:0.5"])?;
    assert_eq!(report, again);

    // fabrication: SFT and RL on a world whose fact answers are 30% about unread entities.
    let report = experiment(root, "fabrication", &["--shares", "0.3"])?;
    let exp = root.join("runs/experiments/fabrication");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("share-0.30/data/manifest.json"))?)?;
    assert!(
        m["fabricated_facts"]["sft_train_questions"].as_u64().unwrap_or(0) > 100,
        "{m}"
    );
    let rl: common::meta::Meta = serde_json::from_str(&std::fs::read_to_string(exp.join("share-0.30/rl/meta.json"))?)?;
    let u = &rl.metrics.tasks.as_ref().expect("rl graded").per_kind["unanswerable"];
    let row = cells(&report, "30.0%");
    assert!(
        row[2].starts_with(&format!("{:.1}%", 100.0 * u.hallucination_rate.unwrap_or(-1.0))),
        "{row:?}"
    );
    assert!(cells(&report, "0.0%").len() == 5);

    // honesty-transfer: RL asks unanswerable questions about towns and people only.
    let report = experiment(root, "honesty-transfer", &[])?;
    let exp = root.join("runs/experiments/honesty-transfer");
    let mix = std::fs::read_to_string(exp.join("rl-mix.toml"))?;
    assert!(mix.contains("kinds = [\"town\", \"person\"]"), "{mix}");
    let rl: common::meta::Meta = serde_json::from_str(&std::fs::read_to_string(exp.join("rl/meta.json"))?)?;
    assert!(serde_json::to_string(&rl.config)?.contains("rl-mix.toml"));
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(exp.join("grade-rl-some.json"))?)?;
    let count = |k: &str, i: usize| g["kinds"][k][i].as_u64().unwrap_or(0);
    assert_eq!(
        ["town", "person", "mineral", "river"]
            .iter()
            .map(|k| count(k, 1))
            .sum::<u64>(),
        250
    );
    let row = cells(&report, "RL on towns, people only");
    let trained = (
        count("town", 0) + count("person", 0),
        count("town", 1) + count("person", 1),
    );
    assert!(
        row[1].starts_with(&format!("{} of {}:", trained.0, trained.1)),
        "{row:?} {g}"
    );
    assert_eq!(cells(&report, "SFT (before RL)").len(), 7);

    // confidence-targets: from the base run's metas.
    let report = experiment(root, "confidence-targets", &[])?;
    let rl: common::meta::Meta = serde_json::from_str(&std::fs::read_to_string(root.join("runs/base/rl/meta.json"))?)?;
    let o = experiments::confidence::Outcomes::of(rl.metrics.tasks.as_ref().expect("rl graded"));
    let row = cells(&report, "RL");
    assert!(row[5].starts_with(&format!("{:+.3}", o.score(0.0).0)), "{row:?}");
    assert!(row[8].starts_with(&format!("{:+.3}", o.score(0.9).0)), "{row:?}");

    // straight-to-rl: RL from the midtrain checkpoint beside the base run's.
    let report = experiment(root, "straight-to-rl", &[])?;
    let straight_dir = root.join("runs/experiments/straight-to-rl/rl-from-midtrain");
    let straight: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(straight_dir.join("meta.json"))?)?;
    assert!(straight["parent"]["path"]
        .as_str()
        .unwrap_or_default()
        .ends_with("runs/base/midtrain"));
    // Every share cell is the run's own graded count over its questions with its 95% Wilson
    // interval, recomputed here from the meta.json (start → end).
    let share = |rate: f64, n: usize| {
        let (lo, hi) = common::tasks::wilson((rate * n as f64).round() as usize, n);
        format!("{:.1}% ({:.1}–{:.1})", 100.0 * rate, 100.0 * lo, 100.0 * hi)
    };
    for (row_start, dir) in [
        ("midtrain → RL (no SFT)", straight_dir),
        ("midtrain → SFT → RL", root.join("runs/base/rl")),
    ] {
        let m: common::meta::Meta = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)?;
        let (a, b) = (
            m.metrics.tasks_start.as_ref().expect("graded at the start"),
            m.metrics.tasks.as_ref().expect("graded at the end"),
        );
        let hal = |r: &common::tasks::TaskReport| {
            let u = &r.per_kind["unanswerable"];
            share(u.hallucination_rate.expect("unanswerable questions"), u.n)
        };
        let row = cells(&report, row_start);
        assert_eq!(row.len(), 6, "{report}");
        let (x, y) = (&a.answerable, &b.answerable);
        assert_eq!(
            row[1],
            format!("{} → {}", share(x.accuracy, x.n), share(y.accuracy, y.n))
        );
        assert_eq!(
            row[2],
            format!("{} → {}", share(x.format_rate, x.n), share(y.format_rate, y.n))
        );
        assert_eq!(row[3], format!("{} → {}", hal(a), hal(b)));
        // The accuracy interval is the one the stage itself recorded.
        assert!(row[1].ends_with(&format!("({:.1}–{:.1})", 100.0 * y.ci95.0, 100.0 * y.ci95.1)));
        let steps = common::metrics::lines_of::<common::metrics::RlStep>(&common::metrics::read_jsonl(
            &dir.join("metrics.jsonl"),
        ));
        let first = steps.iter().take(5).map(|s| s.reward_mean).sum::<f64>() / steps.len().clamp(1, 5) as f64;
        assert_eq!(row[4], format!("{first:.3}"), "{row:?}");
    }

    // rl-scaling: `tiny` is the base run's model (its SFT checkpoint is reused); `d8` trains
    // its own ladder with the base configs, only the preset changed.
    let args = ["--sizes", "tiny,d8", "--rl-steps", "2", "--eval-every", "1"];
    let report = experiment(root, "rl-scaling", &args)?;
    let exp = root.join("runs/experiments/rl-scaling");
    let d8: GptConfig = serde_json::from_str(&std::fs::read_to_string(exp.join("d8/pretrain/config.json"))?)?;
    assert_eq!((d8.n_layer, d8.n_embd), (8, 256));
    let parent = |p: &Path| -> Result<String> {
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p.join("meta.json"))?)?;
        Ok(m["parent"]["path"].as_str().unwrap_or_default().to_string())
    };
    assert!(parent(&exp.join("d8/sft"))?.ends_with("d8/midtrain"));
    assert!(parent(&exp.join("d8/rl"))?.ends_with("d8/sft"));
    assert!(parent(&exp.join("tiny/rl"))?.ends_with("runs/base/sft"));
    assert!(!exp.join("tiny/pretrain").exists(), "the base model's ladder is reused");
    for size in ["tiny", "d8"] {
        let row = cells(&report, &format!("`{size}`"));
        let cfg: GptConfig = serde_json::from_str(&std::fs::read_to_string(exp.join(size).join("rl/config.json"))?)?;
        assert_eq!(row[1], format!("{:.1}M", cfg.num_params() as f64 / 1e6), "{row:?}");
        let g: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(exp.join(size).join("grade-sft.json"))?)?;
        let c = g["correct"].as_array().expect("per-problem grades");
        let right = c.iter().filter(|x| x.as_bool() == Some(true)).count();
        assert!(
            row[2].starts_with(&format!("{:.1}%", 100.0 * right as f64 / c.len() as f64)),
            "{row:?} {g}"
        );
        // The curve: held-out grades at steps 0, 1 and 2, with the prompts drawn by step 1.
        let rl: common::meta::Meta =
            serde_json::from_str(&std::fs::read_to_string(exp.join(size).join("rl/meta.json"))?)?;
        let steps = common::metrics::read_jsonl(&exp.join(size).join("rl/metrics.jsonl"));
        let drawn = steps
            .iter()
            .find(|l| l["step"] == 1 && l.get("groups_sampled").is_some())
            .and_then(|l| l["groups_sampled"].as_u64())
            .expect("step 1 logged");
        // Step 0 is the paired SFT grade.
        let curve = cells(
            &report,
            &format!("`{size}` | {:.1}%", 100.0 * right as f64 / c.len() as f64),
        );
        assert_eq!(curve.len(), 4, "{curve:?}");
        assert!(curve[2].ends_with(&format!("; {drawn} prompts)")), "{curve:?}");
        let end = rl.metrics.tasks.as_ref().expect("graded").answerable.accuracy;
        assert!(curve[3].starts_with(&format!("{:.1}%", 100.0 * end)), "{curve:?}");
    }
    assert!(std::fs::read_to_string(exp.join("rl-scaling.svg"))?.contains("<svg"));
    let by_prompts = std::fs::read_to_string(exp.join("rl-scaling-prompts.svg"))?;
    assert!(
        by_prompts.contains("<svg") && by_prompts.contains("prompts drawn"),
        "{by_prompts}"
    );
    assert_eq!(
        report,
        experiment(root, "rl-scaling", &args)?,
        "a rerun resumes, same report"
    );
    Ok(())
}
