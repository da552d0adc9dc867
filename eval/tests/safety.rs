//! Hostile inputs to `eval` and `export`: an over-long prompt is skipped and counted, not
//! fatal; an export never writes over its source, into someone else's files, or with a
//! config.json that does not describe the weights.
use anyhow::Result;
use common::data::writer::write_tasks;
use common::verify::Task;
use serde_json::Value;
use testkit::{bin, stderr, tiny_checkpoint, tiny_world};

#[test]
fn an_overlong_prompt_is_skipped_and_counted_not_fatal() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let ck = d.join("run/sft");
    tiny_checkpoint(d, &ck, "sft")?;
    // Five short questions and one far beyond the tiny model's 128-token context.
    let mut tasks: Vec<Task> = (0..5)
        .map(|i| Task {
            prompt: format!("What is {i} + 1?"),
            answer: format!("{}", i + 1),
            kind: "arithmetic".into(),
            ..Task::default()
        })
        .collect();
    tasks.insert(
        2,
        Task {
            prompt: "Velmora trades salt. ".repeat(200),
            answer: "salt".into(),
            kind: "facts".into(),
            ..Task::default()
        },
    );
    write_tasks(&d.join("tasks.parquet"), &tasks)?;
    let out = d.join("eval.json");
    let o = bin(env!("CARGO_BIN_EXE_evaluate"))
        .arg(&ck)
        .arg("--tasks")
        .arg(d.join("tasks.parquet"))
        .args(["--samples", "2", "--batch-size", "4", "--out"])
        .arg(&out)
        .output()?;
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("skipped 1 of 6 tasks"), "{e}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    for mode in ["greedy", "sampled"] {
        assert_eq!(v[mode]["skipped_overlong"], 1, "{mode}");
        assert_eq!(
            v[mode]["per_kind"]["arithmetic"]["n"], 5,
            "{mode}: the others are all graded"
        );
        assert!(v[mode]["per_kind"].get("facts").is_none(), "{mode}");
    }
    Ok(())
}

#[test]
fn export_refuses_its_source_foreign_files_and_a_config_that_does_not_match() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let ck = d.join("run/sft");
    tiny_checkpoint(d, &ck, "sft")?;
    let export = |out: &std::path::Path| bin(env!("CARGO_BIN_EXE_export-hf")).arg(&ck).arg(out).output();
    let before = std::fs::read(ck.join("config.json"))?;
    // Into its own checkpoint (or a folder inside it): refused, the checkpoint untouched.
    for out in [ck.clone(), ck.join("hf")] {
        let o = export(&out)?;
        let e = stderr(&o);
        assert!(!o.status.success() && e.contains("over the source checkpoint"), "{e}");
    }
    assert_eq!(std::fs::read(ck.join("config.json"))?, before);
    assert!(common::checkpoint::load(&ck).is_ok());
    // Into a folder holding someone else's files: refused, the files untouched.
    let mine = d.join("mine");
    std::fs::create_dir_all(&mine)?;
    std::fs::write(mine.join("notes.txt"), "notes")?;
    let o = export(&mine)?;
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("notes.txt"), "{e}");
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt"))?, "notes");
    assert!(!mine.join("model.safetensors").exists());
    // A fresh folder works, and exporting again over a previous export replaces it.
    let hf = d.join("hf");
    for _ in 0..2 {
        let o = export(&hf)?;
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // A config.json whose shapes do not match the weights is never exported: here the same
    // parameter count in other shapes (tiny: 2 query + 2 key/value heads of 16; now 3 + 1,
    // so q_proj is [48, 32] instead of [32, 32] and k_proj [16, 32]).
    let mut cfg: Value = serde_json::from_slice(&before)?;
    assert_eq!((cfg["n_head"].as_i64(), cfg["n_embd"].as_i64()), (Some(2), Some(32)));
    cfg["n_head"] = 3.into();
    cfg["n_kv_head"] = 1.into();
    cfg["head_dim"] = 16.into();
    std::fs::write(ck.join("config.json"), cfg.to_string())?;
    let o = export(&d.join("hf2"))?;
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("does not match the model architecture") && e.contains("has shape"),
        "{e}"
    );
    assert!(!d.join("hf2/config.json").exists());
    Ok(())
}
