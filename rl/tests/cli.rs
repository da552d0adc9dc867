//! The `rl` binary: a tiny GRPO run end to end, with every per-step figure logged.
use anyhow::Result;
use serde_json::Value;
use testkit::{assert_same_weights, bin, sorted_weights as weights, tiny_checkpoint, tiny_world};

#[test]
fn help_and_bad_config() -> Result<()> {
    let o = bin(env!("CARGO_BIN_EXE_rl")).arg("--help").env_clear().output()?;
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--init"));
    let dir = tempfile::tempdir()?;
    tiny_world(dir.path())?;
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(dir.path().join("configs/rl.toml"))?.replace("group_size = 4", "group_size = 1"),
    )?;
    let o = bin(env!("CARGO_BIN_EXE_rl"))
        .arg("--config")
        .arg(&bad)
        .args(["--init", "x"])
        .output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("rl.group_size >= 2"), "{e}");
    Ok(())
}

/// `rl --help` offers --mix and --lr; both do what it says (they once were offered and then
/// refused, or described another stage's keys).
#[test]
fn help_is_true_mix_and_lr_override_the_config() -> Result<()> {
    let o = bin(env!("CARGO_BIN_EXE_rl")).arg("--help").output()?;
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("overrides `prompts` in the config's [data] section"),
        "{help}"
    );
    assert!(
        help.contains("overrides `lr` in the config's [train] section"),
        "{help}"
    );
    let dir = tempfile::tempdir()?;
    tiny_world(dir.path())?;
    let prompts = dir.path().join("eval/tasks.parquet");
    let o = bin(env!("CARGO_BIN_EXE_rl"))
        .arg("--config")
        .arg(dir.path().join("configs/rl.toml"))
        .args(["--init", "x", "--lr", "3e-5", "--dry-run", "--mix"])
        .arg(&prompts)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resolved: toml::Value = toml::from_str(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
            .as_str(),
    )?;
    assert_eq!(resolved["train"]["lr"].as_float(), Some(3e-5));
    assert_eq!(
        resolved["data"]["prompts"].as_str(),
        Some(prompts.display().to_string().as_str())
    );
    Ok(())
}

#[test]
fn tiny_grpo_run_end_to_end() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    tiny_checkpoint(d, &d.join("runs/x/sft"), "sft")?;
    let out = d.join("runs/x/rl");
    let o = bin(env!("CARGO_BIN_EXE_rl"))
        .arg("--config")
        .arg(d.join("configs/rl.toml"))
        .arg("--init")
        .arg(d.join("runs/x/sft"))
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(out.join("meta.json"))?)?;
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["step"], 3);
    assert!(meta["metrics"]["tasks"]["answerable"]["accuracy"].is_number());
    assert!(meta["metrics"]["tasks_start"]["per_kind"]["unanswerable"]["hallucination_rate"].is_number());
    // The prompts the run sampled, graded before and after (3 steps x 2 prompts: at most 2 per task).
    for key in ["tasks_seen_start", "tasks_seen"] {
        let n: u64 = meta["metrics"][key]["per_kind"]
            .as_object()
            .map(|o| o.values().filter_map(|v| v["n"].as_u64()).sum())
            .unwrap_or(0);
        assert!((1..=6).contains(&n), "{key}: {n} prompts graded");
    }
    let log = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    let steps: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("reward_mean").is_some())
        .collect();
    assert_eq!(steps.len(), 3);
    for key in [
        "reward_mean",
        "reward_std",
        "accuracy",
        "abstention_rate",
        "completion_len",
        "kl",
        "clip_frac",
        "zero_adv_groups",
        "sample_tok_per_s",
        "train_tok_per_s",
        "truncation_rate",
        "verifier_errors",
    ] {
        assert!(steps[2][key].is_number(), "{key} not logged");
    }
    Ok(())
}

/// Runs `rl --config cfg --init init --out out` plus `extra`; returns its output.
fn rl_from(
    cfg: &std::path::Path,
    init: &std::path::Path,
    out: &std::path::Path,
    extra: &[&str],
) -> Result<std::process::Output> {
    let mut a: Vec<&std::ffi::OsStr> = vec![
        "--config".as_ref(),
        cfg.as_os_str(),
        "--init".as_ref(),
        init.as_os_str(),
    ];
    a.extend(["--out".as_ref(), out.as_os_str()]);
    a.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    rl(&a)
}

/// Runs `rl` with `args`; returns its output.
fn rl(args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    Ok(bin(env!("CARGO_BIN_EXE_rl")).args(args).output()?)
}

#[test]
fn lora_run_saves_merged_weights_and_resumes_like_an_uninterrupted_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let init = d.join("runs/x/sft");
    tiny_checkpoint(d, &init, "sft")?;
    // Long random answers: some reach the end token, some are cut and penalised, so groups
    // differ and the adapters get gradients.
    let cfg = d.join("configs/rl-lora.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(d.join("configs/rl.toml"))?
            .replace("kl_coef = 0.05", "overlong = \"penalty\"")
            .replace("device = \"cpu\"", "device = \"cpu\"\nlora_rank = 2\nlora_alpha = 4.0")
            .replace("steps = 3", "steps = 6")
            .replace("[sampling]\nmax_new_tokens = 8", "[sampling]\nmax_new_tokens = 32"),
    )?;
    let run = |out: &std::path::Path, extra: &[&str]| rl_from(&cfg, &init, out, extra);
    let a = d.join("runs/a/rl");
    let o = run(&a, &[])?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("LoRA rank 2"), "{err}");
    // The checkpoint is a plain model (adapters merged in) that moved away from the start.
    let (wa, w0) = (weights(&a)?, weights(&init)?);
    assert_eq!(wa.len(), w0.len(), "only the model's own tensors are saved");
    let moved: f64 = wa
        .iter()
        .zip(&w0)
        .map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(moved > 0.0, "no update reached the saved weights");
    let embed = wa.iter().zip(&w0).find(|((n, _), _)| n == "model.embed_tokens.weight");
    let ((_, ea), (_, e0)) = embed.expect("embedding saved");
    assert_eq!(
        (ea - e0).abs().max().double_value(&[]),
        0.0,
        "the frozen embedding moved"
    );
    common::checkpoint::load_model(&a, tch::Device::Cpu)?;
    // Stopped after 4 steps, then resumed to 6: the same weights as the uninterrupted run.
    let b = d.join("runs/b/rl");
    let o = run(&b, &["--steps", "4"])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta_path = b.join("meta.json");
    let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&meta_path)?)?;
    meta["complete"] = false.into(); // as a kill after the step-4 save leaves it
    meta["config"]["train"]["steps"] = 6.into(); // of a 6-step run
    std::fs::write(&meta_path, serde_json::to_string(&meta)?)?;
    let o = run(&b, &["--resume"])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_weights(&wa, &weights(&b)?, 1e-5, "after resume");
    Ok(())
}

#[test]
fn generator_prompt_mix_with_curriculum_resumes_like_an_uninterrupted_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let init = d.join("runs/x/sft");
    tiny_checkpoint(d, &init, "sft")?;
    // A world to generate from (the generator rebuilds it from the manifest's seed), the tiny
    // world's own prompt file beside it, and dynamic sampling.
    let world = d.join("world");
    std::fs::create_dir_all(&world)?;
    std::fs::write(world.join("manifest.json"), r#"{"seed": 5, "scale": "small"}"#)?;
    let mix = d.join("configs/mixes/rl.toml");
    std::fs::write(
        &mix,
        format!(
            "world = {:?}\n[curriculum]\nband = [0.2, 0.8]\n[[source]]\nname = \"arith\"\ngenerator = \"arithmetic\"\nlevels = [1, 4]\nweight = 2\n[[source]]\nname = \"idk\"\ngenerator = \"unanswerable\"\n[[source]]\nname = \"file\"\npath = {:?}\n",
            world.display().to_string(),
            d.join("rl/train.parquet").display().to_string()
        ),
    )?;
    let cfg = d.join("configs/rl-gen.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(d.join("configs/rl.toml"))?
            .replace(
                &format!("prompts = \"{}\"", d.join("rl/train.parquet").display()),
                &format!("prompts = {:?}", mix.display().to_string()),
            )
            .replace(
                "kl_coef = 0.05",
                "kl_coef = 0.05\nresample_rounds = 1\noverlong = \"penalty\"",
            )
            .replace("steps = 3", "steps = 5")
            .replace("[sampling]\nmax_new_tokens = 8", "[sampling]\nmax_new_tokens = 16"),
    )?;
    let run = |out: &std::path::Path, extra: &[&str]| rl_from(&cfg, &init, out, extra);
    let a = d.join("runs/a/rl");
    let o = run(&a, &[])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(a.join("meta.json"))?)?;
    let slots: Vec<&str> = meta["mix"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(slots[..3], ["arith/1", "arith/4", "idk/1"], "{slots:?}");
    // Every step logs the curriculum: each slot's success estimate and draws.
    let log = std::fs::read_to_string(a.join("metrics.jsonl"))?;
    let steps: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("reward_mean").is_some())
        .collect();
    assert_eq!(steps.len(), 5);
    let drawn: u64 = steps[4]["curriculum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["drawn"].as_u64())
        .sum();
    let sampled: u64 = steps.iter().filter_map(|s| s["groups_sampled"].as_u64()).sum();
    assert_eq!(drawn, sampled, "every sampled group was drawn from a slot");
    assert!(sampled >= 10, "2 prompts x 5 steps at least: {sampled}");
    // Killed after step 3's save, resumed to 5: the same weights as the uninterrupted run.
    let b = d.join("runs/b/rl");
    let o = run(&b, &["--steps", "3"])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta_path = b.join("meta.json");
    let mut meta: Value = serde_json::from_str(&std::fs::read_to_string(&meta_path)?)?;
    meta["complete"] = false.into();
    meta["config"]["train"]["steps"] = 5.into(); // of a 5-step run
    std::fs::write(&meta_path, serde_json::to_string(&meta)?)?;
    let o = run(&b, &["--resume"])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_weights(&weights(&a)?, &weights(&b)?, 1e-5, "after resume");
    Ok(())
}

#[test]
fn the_shipped_config_and_prompt_mix_validate() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = bin(env!("CARGO_BIN_EXE_rl"))
        .current_dir(&root)
        .args(["--config", "configs/rl.toml", "--init", "runs/default/sft", "--dry-run"])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mix: common::prompts::PromptMix =
        toml::from_str(&std::fs::read_to_string(root.join("configs/mixes/rl.toml"))?)?;
    assert!(mix.source.iter().any(|s| s.generator.is_some()));
    mix.curriculum.validate()?;
    Ok(())
}

#[test]
fn overlong_prompts_are_skipped_and_counted_not_fatal() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let init = d.join("runs/x/sft");
    tiny_checkpoint(d, &init, "sft")?;
    // Every other prompt is far beyond the tiny model's 128-token context.
    let tasks: Vec<common::verify::Task> = (0..16)
        .map(|i| common::verify::Task {
            prompt: if i % 2 == 0 {
                format!("What is {i} + 1?")
            } else {
                "Velmora trades salt. ".repeat(200)
            },
            answer: format!("{}", i + 1),
            kind: if i % 2 == 0 { "arithmetic" } else { "long" }.into(),
            ..common::verify::Task::default()
        })
        .collect();
    common::data::writer::write_tasks(&d.join("prompts.parquet"), &tasks)?;
    let cfg = d.join("configs/rl-long.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(d.join("configs/rl.toml"))?.replace(
            &format!("prompts = \"{}/rl/train.parquet\"", d.display()),
            &format!("prompts = \"{}/prompts.parquet\"", d.display()),
        ),
    )?;
    let out = d.join("runs/x/rl");
    let o = rl_from(&cfg, &init, &out, &[])?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(out.join("meta.json"))?)?;
    let skipped = meta["metrics"]["train"]["skipped_overlong"].as_u64().unwrap_or(0);
    // 3 steps x 2 prompts drawn from a curriculum over both kinds: some long ones come up.
    assert!(
        skipped >= 1,
        "no overlong prompt was drawn: {}",
        meta["metrics"]["train"]
    );
    assert!(e.contains("longer than the model's context"), "{e}");
    let logged: u64 = std::fs::read_to_string(out.join("metrics.jsonl"))?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["skipped_overlong"].as_u64())
        .sum();
    assert_eq!(logged, skipped, "the per-step counts add up to the run's");
    Ok(())
}
