//! Checkpoints: bit-identical round trips, and a clear message for each mismatch.
use anyhow::Result;
use common::checkpoint::{self, Meta};
use common::model::{Gpt, GptConfig};
use tch::{nn, Device, Kind, Tensor};
use testkit::{tiny_checkpoint, tiny_world};

fn err(r: Result<impl Sized>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn save_then_load_is_bit_identical() -> Result<()> {
    let dir = tempfile::tempdir()?;
    tiny_world(dir.path())?;
    let ck = dir.path().join("ck");
    tiny_checkpoint(dir.path(), &ck, "pretrain")?;
    let (vs, _m, loaded) = checkpoint::load_model(&ck, Device::Cpu)?;
    let original = Tensor::read_safetensors(ck.join("model.safetensors"))?;
    let vars = vs.variables();
    for (name, t) in &original {
        assert!(t.equal(&vars[name]), "{name} changed in the round trip");
    }
    assert_eq!(
        loaded.meta.weights_sha256,
        checkpoint::sha256_file(&ck.join("model.safetensors"))?
    );
    // Saving the loaded model again gives the same bytes.
    let ck2 = dir.path().join("ck2");
    let mut meta = loaded.meta.clone();
    let contents = checkpoint::Contents {
        vs: &vs,
        config: &loaded.config,
        tok: &loaded.tok,
        metrics_log: &[],
        state: None,
    };
    checkpoint::save(&ck2, &contents, &mut meta)?;
    assert_eq!(
        std::fs::read(ck.join("model.safetensors"))?,
        std::fs::read(ck2.join("model.safetensors"))?
    );
    Ok(())
}

#[test]
fn each_mismatch_is_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let ck = d.join("ck");
    tiny_checkpoint(d, &ck, "pretrain")?;
    let loaded = checkpoint::load(&ck)?;

    // Another architecture: a wider model cannot take these weights.
    let mut wide = loaded.config.clone();
    wide.n_embd = 64;
    wide.intermediate_size = 128;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _m = Gpt::new(vs.root(), &wide);
    let e = err(checkpoint::load_into(
        &mut vs,
        &loaded.weights,
        &ck.join("model.safetensors"),
    ));
    assert!(
        e.contains("does not match the model architecture") && e.contains("has shape [") && e.contains("expects"),
        "{e}"
    );

    // Missing and unexpected tensors.
    let mut fewer = loaded
        .weights
        .iter()
        .map(|(k, v)| (k.clone(), v.shallow_clone()))
        .collect::<Vec<_>>();
    fewer.retain(|(k, _)| k != "model.norm.weight");
    fewer.push((
        "model.extra.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _m = Gpt::new(vs.root(), &loaded.config);
    let e = err(checkpoint::load_into(&mut vs, &fewer, &ck.join("model.safetensors")));
    assert!(
        e.contains("missing tensor model.norm.weight") && e.contains("unexpected tensor model.extra.weight"),
        "{e}"
    );

    // A tokenizer bigger than the model's vocabulary.
    let small = d.join("small-vocab");
    let mut cfg: GptConfig = loaded.config.clone();
    cfg.vocab_size = 100;
    let vs = nn::VarStore::new(Device::Cpu);
    let _m = Gpt::new(vs.root(), &cfg);
    let contents = checkpoint::Contents {
        vs: &vs,
        config: &cfg,
        tok: &loaded.tok,
        metrics_log: &[],
        state: None,
    };
    checkpoint::save(&small, &contents, &mut Meta::new("pretrain"))?;
    let e = err(checkpoint::load(&small));
    assert!(
        e.contains("tokenizer.json has") && e.contains("vocab_size is 100"),
        "{e}"
    );

    // Corrupt weights, broken config, missing directory.
    let bad = d.join("bad");
    std::fs::create_dir_all(&bad)?;
    for f in ["config.json", "tokenizer.json", "meta.json"] {
        std::fs::copy(ck.join(f), bad.join(f))?;
    }
    std::fs::write(bad.join("model.safetensors"), b"not a safetensors file")?;
    let e = err(checkpoint::load(&bad));
    assert!(
        e.contains("model.safetensors") && e.contains("corrupt or truncated"),
        "{e}"
    );
    std::fs::write(bad.join("config.json"), "{\"vocab_size\": 10}")?;
    let e = err(checkpoint::load(&bad));
    assert!(e.contains("config.json") && e.contains("missing field"), "{e}");
    let e = err(checkpoint::load(&d.join("nope")));
    assert!(e.contains("does not exist"), "{e}");
    Ok(())
}

#[test]
fn interrupted_swap_falls_back_to_the_previous_save() -> Result<()> {
    let dir = tempfile::tempdir()?;
    tiny_world(dir.path())?;
    let ck = dir.path().join("run/pretrain");
    tiny_checkpoint(dir.path(), &ck, "pretrain")?;
    // Simulate a kill between "move the old checkpoint aside" and "rename the new one in".
    std::fs::rename(&ck, dir.path().join("run/pretrain.prev"))?;
    std::fs::create_dir_all(dir.path().join("run/pretrain.partial"))?;
    let loaded = checkpoint::load(&ck)?;
    assert!(loaded.dir.ends_with("pretrain.prev"));
    Ok(())
}

/// A complete save of the tiny checkpoint at `step` into `dir` (with its completion marker).
fn save_at(ck: &std::path::Path, dir: &std::path::Path, step: u64) -> Result<()> {
    let (vs, _m, loaded) = checkpoint::load_model(ck, Device::Cpu)?;
    let mut meta = loaded.meta.clone();
    meta.step = step;
    let contents = checkpoint::Contents {
        vs: &vs,
        config: &loaded.config,
        tok: &loaded.tok,
        metrics_log: &[],
        state: None,
    };
    checkpoint::save(dir, &contents, &mut meta)
}

#[test]
fn a_verified_partial_is_the_newest_save_and_an_unverified_one_never_is() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let ck = d.join("run/pretrain");
    let (partial, prev) = (d.join("run/pretrain.partial"), d.join("run/pretrain.prev"));
    tiny_checkpoint(d, &ck, "pretrain")?;
    assert!(
        ck.join(checkpoint::COMPLETE_MARKER).exists(),
        "saves end with the marker"
    );
    // A kill after the marker of a newer save, before its swap: the .partial is the newest.
    save_at(&ck, &d.join("newer"), 7)?;
    std::fs::rename(d.join("newer"), &partial)?;
    let loaded = checkpoint::load(&ck)?;
    assert_eq!((loaded.meta.step, loaded.dir.clone()), (7, partial.clone()));
    // ... and a kill after the first rename of that swap: still the .partial, not .prev.
    std::fs::rename(&ck, &prev)?;
    assert_eq!(checkpoint::load(&ck)?.meta.step, 7);
    // Recovery puts it in place and drops the older one.
    checkpoint::recover(&ck)?;
    assert_eq!(checkpoint::load(&ck)?.dir, ck);
    assert_eq!(checkpoint::load(&ck)?.meta.step, 7);
    assert!(!partial.exists() && !prev.exists());
    // A .partial whose files do not match its marker (truncated weights) is never used, and
    // recovery removes it; one without a marker (a save killed while writing) neither.
    for damage in ["truncate", "no-marker"] {
        save_at(&ck, &d.join("newer"), 9)?;
        std::fs::rename(d.join("newer"), &partial)?;
        match damage {
            "truncate" => {
                let w = partial.join("model.safetensors");
                let bytes = std::fs::read(&w)?;
                std::fs::write(&w, &bytes[..bytes.len() - 1])?;
            }
            _ => std::fs::remove_file(partial.join(checkpoint::COMPLETE_MARKER))?,
        }
        assert_eq!(checkpoint::load(&ck)?.meta.step, 7, "{damage}");
        checkpoint::recover(&ck)?;
        assert!(!partial.exists(), "{damage}");
        assert_eq!(checkpoint::load(&ck)?.meta.step, 7, "{damage}");
    }
    Ok(())
}

#[test]
fn a_config_json_that_does_not_describe_the_weights_is_refused_before_building() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let ck = d.join("ck");
    tiny_checkpoint(d, &ck, "sft")?;
    // Huge dimensions: refused from the parameter count, nothing of that size is allocated.
    let text = std::fs::read_to_string(ck.join("config.json"))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text)?;
    cfg["n_embd"] = 1_048_576.into();
    cfg["intermediate_size"] = 4_194_304.into();
    cfg["n_layer"] = 512.into();
    std::fs::write(ck.join("config.json"), cfg.to_string())?;
    let e = err(checkpoint::load_model(&ck, Device::Cpu));
    assert!(
        e.contains("config.json describes a model of") && e.contains("does not belong to these weights"),
        "{e}"
    );
    Ok(())
}
