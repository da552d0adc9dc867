//! Data-parallel SFT under `torchrun` (2 ranks on CPU, Gloo over loopback): the same losses and
//! weights as one process with the whole batch, with every weight trained and with LoRA
//! adapters; rank 0 alone grades the tasks and writes the checkpoint.
use anyhow::Result;
use serde_json::Value;
use std::path::Path;
use testkit::{stderr, tiny_checkpoint, tiny_world};

const SFT: &str = env!("CARGO_BIN_EXE_sft");

fn run(cfg: &Path, init: &Path, out: &Path, ranks: usize) -> Result<()> {
    let mut c = if ranks == 1 {
        let mut c = testkit::bin(SFT);
        c.env("L2E_THREADS", "1");
        c
    } else {
        testkit::torchrun(ranks, SFT)
    };
    let o = c
        .arg("--config")
        .arg(cfg)
        .arg("--init")
        .arg(init)
        .arg("--out")
        .arg(out)
        .output()?;
    assert!(o.status.success(), "{} ranks: {}", ranks, stderr(&o));
    Ok(())
}

#[test]
fn two_ranks_fine_tune_as_one_with_the_whole_batch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    tiny_world(d)?;
    let init = d.join("midtrain");
    tiny_checkpoint(d, &init, "midtrain")?;
    let full = d.join("configs/sft.toml");
    let lora = d.join("configs/sft-lora.toml");
    std::fs::write(
        &lora,
        std::fs::read_to_string(&full)?.replace("[train]\n", "[train]\nlora_rank = 4\n"),
    )?;
    for (cfg, what) in [(&full, "full"), (&lora, "lora")] {
        let (one, two) = (d.join(format!("{what}-1/sft")), d.join(format!("{what}-2/sft")));
        run(cfg, &init, &one, 1)?;
        run(cfg, &init, &two, 2)?;
        testkit::assert_same_run(&one, &two, 6, what)?;
        // The tasks graded at the end are the same (rank 0 graded them, with the same weights).
        let meta =
            |p: &Path| -> Result<Value> { Ok(serde_json::from_str(&std::fs::read_to_string(p.join("meta.json"))?)?) };
        let (m1, m2) = (meta(&one)?, meta(&two)?);
        for key in ["per_kind", "examples"] {
            assert_eq!(m1["metrics"]["tasks"][key], m2["metrics"]["tasks"][key], "{what}");
        }
        assert!(m2["metrics"]["tasks_multiturn"]["per_kind"]["arithmetic"]["n"].as_u64() > Some(0));
    }
    Ok(())
}
