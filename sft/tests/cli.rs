//! The `sft` binary: a tiny run that trains on assistant tokens and grades answers.
use anyhow::Result;
use serde_json::Value;
use testkit::{assert_same_weights, bin, sorted_weights as weights, tiny_checkpoint, tiny_world};

#[test]
fn help_runs() -> Result<()> {
    let o = bin(env!("CARGO_BIN_EXE_sft")).arg("--help").env_clear().output()?;
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("assistant"));
    Ok(())
}

#[test]
fn tiny_sft_run_reports_task_metrics_before_and_after() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    tiny_checkpoint(d, &d.join("runs/x/midtrain"), "midtrain")?;
    let out = d.join("runs/x/sft");
    let o = bin(env!("CARGO_BIN_EXE_sft"))
        .arg("--config")
        .arg(d.join("configs/sft.toml"))
        .arg("--init")
        .arg(d.join("runs/x/midtrain"))
        .arg("--out")
        .arg(&out)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(out.join("meta.json"))?)?;
    for key in ["tasks", "tasks_start"] {
        let t = &meta["metrics"][key];
        for kind in ["arithmetic", "facts", "program", "unanswerable"] {
            assert_eq!(t["per_kind"][kind]["n"], 3, "{key}/{kind}");
        }
        assert!(t["per_kind"]["unanswerable"]["hallucination_rate"].is_number());
        assert!(t["answerable"]["format_rate"].is_number());
    }
    assert!(meta["metrics"]["heldout"]["conversations"]["loss"].is_number());
    Ok(())
}

#[test]
fn lora_sft_trains_adapters_only_saves_merged_weights_and_resumes_exactly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let init = d.join("runs/x/midtrain");
    tiny_checkpoint(d, &init, "midtrain")?;
    let cfg = d.join("configs/sft-lora.toml");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(d.join("configs/sft.toml"))?.replace(
            "precision = \"bf16\"",
            "precision = \"bf16\"\nlora_rank = 2\nlora_alpha = 4.0\nschedule = \"constant\"",
        ),
    )?;
    let run = |out: &std::path::Path, extra: &[&str]| -> Result<std::process::Output> {
        Ok(bin(env!("CARGO_BIN_EXE_sft"))
            .arg("--config")
            .arg(&cfg)
            .arg("--init")
            .arg(&init)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()?)
    };
    let a = d.join("runs/a/sft");
    let o = run(&a, &[])?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("LoRA rank 2"), "{err}");
    let (wa, w0) = (weights(&a)?, weights(&init)?);
    assert_eq!(wa.len(), w0.len(), "a plain checkpoint: the model's own tensors only");
    let mut moved = Vec::new();
    for ((n, x), (_, y)) in wa.iter().zip(&w0) {
        if (x - y).abs().max().double_value(&[]) > 0.0 {
            moved.push(n.clone());
        }
    }
    // Only the adapted linear layers change; embeddings and norms stay frozen.
    assert!(moved.iter().any(|n| n.ends_with("mlp.down_proj.weight")), "{moved:?}");
    assert!(moved.iter().all(|n| n.contains("_proj.weight")), "{moved:?}");
    let state = tch::Tensor::read_safetensors(a.join("state/optimizer.safetensors"))?;
    assert!(state
        .iter()
        .any(|(k, _)| k == "adapter.model.layers.0.self_attn.q_proj.lora_A"));
    // Three steps, as if killed after the step-3 save, then resumed to six.
    let b = d.join("runs/b/sft");
    let o = run(&b, &["--steps", "3"])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta_path = b.join("meta.json");
    let mut meta: Value = serde_json::from_str(&std::fs::read_to_string(&meta_path)?)?;
    meta["complete"] = false.into();
    meta["config"]["train"]["steps"] = 6.into(); // the run it was a part of
    std::fs::write(&meta_path, serde_json::to_string(&meta)?)?;
    let o = run(&b, &["--resume"])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_weights(&wa, &weights(&b)?, 1e-5, "after resume");
    // LoRA needs a model to adapt.
    let scratch = d.join("configs/pretrain-lora.toml");
    std::fs::write(
        &scratch,
        std::fs::read_to_string(d.join("configs/pretrain.toml"))?.replace("[train]\n", "[train]\nlora_rank = 2\n"),
    )?;
    let o = bin(env!("CARGO_BIN_EXE_sft"))
        .arg("--config")
        .arg(&scratch)
        .arg("--out")
        .arg(d.join("runs/c"))
        .output()?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("lora_rank > 0 adapts an existing model"),
        "{e}"
    );
    Ok(())
}

/// A chat file where every fourth conversation is longer than a row (seq_len 64 + 1 tokens):
/// only those say "zebra", and each ends with its own answer line.
fn mixed_lengths(path: &std::path::Path) -> Result<()> {
    use common::tokenizer::Message;
    let convs: Vec<Vec<Message>> = (0..40usize)
        .map(|i| {
            let answer = if i % 4 == 0 {
                format!("zebra {}Answer: {i}", "The town of Velmora trades salt. ".repeat(10))
            } else {
                format!("{i} + 1 = {}.\nAnswer: {}", i + 1, i + 1)
            };
            vec![
                Message::new("user", format!("What is {i} + 1?")),
                Message::new("assistant", answer),
            ]
        })
        .collect();
    common::data::writer::write_chat(path, &convs)
}

#[test]
fn overlong_conversations_are_dropped_by_default_counted_in_meta_or_cut() -> Result<()> {
    use common::data::{mix::load_mix, LmSampler, Overlong, PackMode, SamplerOptions};
    use common::metrics::{OverlongDocs, TrainMetrics};
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let init = d.join("runs/x/midtrain");
    tiny_checkpoint(d, &init, "midtrain")?;
    mixed_lengths(&d.join("sft/mixed.parquet"))?;
    let mix = d.join("configs/mixes/mixed.toml");
    std::fs::write(
        &mix,
        format!(
            "[[source]]\nname = \"mixed\"\npath = \"{}/sft/mixed.parquet\"\nformat = \"chat\"\nweight = 1.0\n",
            d.display()
        ),
    )?;
    let base = std::fs::read_to_string(d.join("configs/sft.toml"))?;
    // No task grading: this test is about the data.
    let base = base[..base.find("[tasks]").unwrap_or(base.len())].replace("mixes/sft.toml", "mixes/mixed.toml");
    let run = |name: &str, data_extra: &str| -> Result<(std::process::Output, Option<OverlongDocs>)> {
        let cfg = d.join(format!("configs/sft-{name}.toml"));
        std::fs::write(
            &cfg,
            base.replace("seq_len = 64\n", &format!("seq_len = 64\n{data_extra}")),
        )?;
        let out = d.join(format!("runs/{name}/sft"));
        let o = bin(env!("CARGO_BIN_EXE_sft"))
            .arg("--config")
            .arg(&cfg)
            .arg("--init")
            .arg(&init)
            .arg("--out")
            .arg(&out)
            .output()?;
        let meta = std::fs::read_to_string(out.join("meta.json"))
            .ok()
            .map(|t| serde_json::from_str::<common::meta::Meta>(&t))
            .transpose()?;
        let overlong = match meta.and_then(|m| m.metrics.train) {
            Some(TrainMetrics::Lm(m)) => m.overlong,
            _ => None,
        };
        Ok((o, overlong))
    };

    // The default drops them: counted in meta.json, warned about with count and share.
    let (o, got) = run("drop", "")?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let got = got.expect("meta.json counts over-long conversations");
    assert_eq!((got.policy, got.row_tokens), (Overlong::Drop, 65));
    let c = got.per_source["mixed"];
    assert!(c.dropped > 0 && c.cut == 0 && c.documents > c.dropped, "{c:?}");
    assert!(
        err.contains(&format!(
            "source `mixed`: {} of {} conversations read",
            c.dropped, c.documents
        )) && err.contains("were dropped"),
        "{err}"
    );
    // Replaying the run's sampler (same mix, seed and packing; 6 steps of 2 micro-batches of 2
    // rows) reads the same documents, and no dropped conversation reaches a trained target.
    let tok = common::tokenizer::Tok::load(&d.join("tokenizer.json"))?;
    let opts = SamplerOptions {
        seq_len: 64,
        mode: PackMode::Documents,
        assistant_only: true,
        seed: 1337,
        shuffle: true,
        overlong: Overlong::Drop,
    };
    let mut s = LmSampler::new(&load_mix(&mix, None)?, &tok, opts, None)?;
    let mut trained = String::new();
    for _ in 0..12 {
        let t: Vec<i64> = Vec::try_from(s.next_batch(2)?.target.flatten(0, -1))?;
        let ids: Vec<u32> = t.iter().filter(|&&x| x >= 0).map(|&x| x as u32).collect();
        trained.push_str(&tok.decode(&ids)?);
    }
    assert_eq!(s.doc_counts(), vec![("mixed".to_string(), c)]);
    assert!(trained.contains("Answer:") && !trained.contains("zebra"), "{trained}");

    // `cut` keeps their first 65 tokens instead, counted the same way.
    let (o, got) = run("cut", "overlong = \"cut\"\n")?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let c = got.expect("counted").per_source["mixed"];
    assert!(c.cut > 0 && c.dropped == 0, "{c:?}");
    assert!(err.contains("were cut"), "{err}");

    // Anything else is an error naming the choices.
    let (o, _) = run("bad", "overlong = \"trim\"\n")?;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("`drop`") && err.contains("`cut`"),
        "{err}"
    );
    Ok(())
}

#[test]
fn relative_data_paths_resolve_under_the_data_root_flag_over_the_config_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let init = d.join("runs/x/midtrain");
    tiny_checkpoint(d, &init, "midtrain")?;
    // A mix and a task file named relative to the data root (the tiny world's directory); the
    // held-out mix keeps its absolute paths, which the root leaves alone.
    let mix = d.join("configs/mixes/relative.toml");
    std::fs::write(
        &mix,
        "[[source]]\nname = \"conversations\"\npath = \"sft/train.parquet\"\nformat = \"chat\"\nweight = 1.0\n",
    )?;
    let base = std::fs::read_to_string(d.join("configs/sft.toml"))?;
    let cfg = d.join("configs/sft-relative.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_root = \"nowhere\"\n{}",
            base.replace(
                &format!("{}/configs/mixes/sft.toml", d.display()),
                &mix.display().to_string()
            )
            .replace(&format!("{}/eval/tasks.parquet", d.display()), "eval/tasks.parquet")
        ),
    )?;
    let run = |out: &str, extra: &[&std::ffi::OsStr]| -> Result<std::process::Output> {
        Ok(bin(env!("CARGO_BIN_EXE_sft"))
            .current_dir(d.join("runs"))
            .arg("--config")
            .arg(&cfg)
            .arg("--init")
            .arg(&init)
            .arg("--out")
            .arg(d.join(out))
            .args(["--steps", "1"])
            .args(extra)
            .output()?)
    };
    // The config's root does not hold the data: the error names the path it looked for.
    let o = run("runs/a/sft", &[])?;
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("nowhere/sft/train.parquet"), "{e}");
    // --data-root overrides it; the run reads the world's files, from another directory.
    let o = run("runs/b/sft", &["--data-root".as_ref(), d.as_os_str()])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(d.join("runs/b/sft/meta.json"))?)?;
    assert_eq!(meta["config"]["data_root"], d.display().to_string());
    assert_eq!(meta["metrics"]["tasks"]["per_kind"]["arithmetic"]["n"], 3);
    assert_eq!(
        meta["mix"]["sources"][0]["files"][0],
        d.join("sft/train.parquet").display().to_string()
    );
    Ok(())
}
