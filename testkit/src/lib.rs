//! Helpers for the test suites of the workspace: a dev-dependency only, never compiled into
//! a release binary. One way to run a binary as a user would ([`bin`]), a miniature world
//! with stage configs ([`tiny_world`]), a tiny checkpoint, and weight comparisons.
use std::path::PathBuf;
use std::process::{Command, Output};

/// A command running the binary `exe` (`env!("CARGO_BIN_EXE_<name>")`) as a user would:
/// progress bars off, and no `LD_LIBRARY_PATH` (the rpath must find libtorch).
pub fn bin(exe: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(exe);
    c.env("L2E_PROGRESS", "quiet").env_remove("LD_LIBRARY_PATH");
    c
}

/// The standard error of a finished command, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The project's virtual environment Python (`./.venv/bin/python`), else `python3`.
pub fn venv_python() -> PathBuf {
    let root = workspace_root();
    let venv = root.join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// `torchrun --standalone --nproc-per-node N --no-python EXE` from the project's virtual
/// environment, as a user launches data-parallel ranks on one machine (progress quiet, one
/// thread per rank, the venv's Python for torch.distributed, no `LD_LIBRARY_PATH`).
pub fn torchrun(nproc: usize, exe: impl AsRef<std::ffi::OsStr>) -> Command {
    let py = venv_python();
    let t = py.with_file_name("torchrun");
    assert!(
        t.exists(),
        "{} is missing: `just setup` installs torch (and torchrun) into ./.venv",
        t.display()
    );
    let mut c = Command::new(t);
    c.args(["--standalone", "--nproc-per-node", &nproc.to_string(), "--no-python"])
        .arg(exe)
        .env("L2E_PROGRESS", "quiet")
        .env("L2E_PYTHON", &py)
        .env("OMP_NUM_THREADS", "1")
        .env_remove("LD_LIBRARY_PATH");
    c
}

/// Kills process `root` and every process below it with SIGKILL, as a power cut would
/// (torchrun's workers run in their own sessions: killing the launcher's process group alone
/// leaves them running).
pub fn kill_tree(root: u32) {
    let parent_of = |pid: &str| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces, so read after the last ')'.
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    let mut tree = vec![root];
    loop {
        let mut grew = false;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(pid) = name.parse::<u32>() else { continue };
            if !tree.contains(&pid) && parent_of(&name).is_some_and(|p| tree.contains(&p)) {
                tree.push(pid);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    let _ = Command::new("kill")
        .arg("-9")
        .args(tree.iter().map(u32::to_string))
        .status();
}

/// The `(step, loss)` lines of a checkpoint's `metrics.jsonl`.
pub fn logged_losses(dir: &Path) -> Result<Vec<(u64, f64)>> {
    Ok(std::fs::read_to_string(dir.join("metrics.jsonl"))?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v.get("loss")?.as_f64()?)))
        .collect())
}

/// Panics unless the runs in `a` and `b` logged the same `steps` losses (to float rounding)
/// and saved the same weights.
pub fn assert_same_run(a: &Path, b: &Path, steps: usize, what: &str) -> Result<()> {
    let (la, lb) = (logged_losses(a)?, logged_losses(b)?);
    assert_eq!(la.len(), steps, "{what}: {la:?}");
    assert_eq!(
        la.iter().map(|x| x.0).collect::<Vec<_>>(),
        lb.iter().map(|x| x.0).collect::<Vec<_>>(),
        "{what}"
    );
    for ((s, x), (_, y)) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{what}: step {s}: {x} vs {y}");
    }
    assert_same_weights(&sorted_weights(a)?, &sorted_weights(b)?, 1e-4, what);
    Ok(())
}

/// The root of the workspace (the folder holding the top `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

use anyhow::Result;
use common::checkpoint;
use common::data::writer::{write_chat, write_tasks, write_text};
use common::model::GptConfig;
use common::tokenizer::{Message, Tok};
use common::verify::Task;
use std::path::Path;

/// A miniature world for end-to-end tests, written under `dir`: library sources, held-out
/// sets, conversations, tasks, a tokenizer, and stage configs (`dir/configs/*.toml`) with a
/// tiny model and a handful of steps.
pub fn tiny_world(dir: &Path) -> Result<()> {
    let towns = ["Velmora", "Tarsk", "Orbel", "Quenn", "Dasho", "Lirra"];
    let regions = ["north", "south", "east", "west", "coast", "hills"];
    let mut enc = Vec::new();
    let mut chat = Vec::new();
    let mut arith = Vec::new();
    for i in 0..240usize {
        let t = towns[i % towns.len()];
        let r = regions[(i * 7 + i / 6) % regions.len()];
        enc.push(format!(
            "{t} is a town in the {r}. It was founded in year {}. {t} trades salt.",
            100 + i % 50
        ));
        chat.push(format!(
            "lol anyone been to {t}? click here for deals #{i}. cookies accepted."
        ));
        let (a, b) = (i % 17, (i * 3) % 13);
        arith.push(format!("{a} + {b} = {}", a + b));
    }
    let lib = dir.join("library");
    write_text(&lib.join("encyclopedia-00000.parquet"), &enc[..200])?;
    write_text(&lib.join("chatter-00000.parquet"), &chat[..200])?;
    write_text(&lib.join("arithmetic-00000.parquet"), &arith[..200])?;
    write_text(&dir.join("heldout/encyclopedia.parquet"), &enc[200..])?;
    write_text(&dir.join("heldout/chatter.parquet"), &chat[200..])?;
    let convs: Vec<Vec<Message>> = (0..120usize)
        .map(|i| {
            let (a, b) = (i % 9, (i * 5) % 7);
            vec![
                Message::new("user", format!("What is {a} + {b}?")),
                Message::new("assistant", format!("{a} + {b} = {}.\nAnswer: {}", a + b, a + b)),
            ]
        })
        .collect();
    write_chat(&dir.join("sft/train.parquet"), &convs[..100])?;
    write_chat(&dir.join("sft/eval.parquet"), &convs[100..])?;
    let tasks: Vec<Task> = (0..40usize)
        .map(|i| match i % 4 {
            0 => Task {
                prompt: format!("What is {} + {}?", i % 9, i % 5),
                answer: format!("{}", i % 9 + i % 5),
                kind: "arithmetic".into(),
                ..Task::default()
            },
            1 => Task {
                prompt: format!("In which region is {}?", towns[i % 6]),
                answer: regions[i % 6].into(),
                kind: "facts".into(),
                ..Task::default()
            },
            2 => Task {
                prompt: format!("What does this program print?\n```python\nprint({} * 2)\n```", i),
                answer: format!("{}", i * 2),
                kind: "program".into(),
                ..Task::default()
            },
            _ => Task {
                prompt: "In which region is Zorblax?".into(),
                answer: "I don't know".into(),
                kind: "unanswerable".into(),
                ..Task::default()
            },
        })
        .collect();
    write_tasks(&dir.join("rl/train.parquet"), &tasks[..32])?;
    write_tasks(&dir.join("eval/tasks.parquet"), &tasks)?;
    // Follow-ups that refer back to the turn before (given as history).
    let multiturn: Vec<Task> = (0..12usize)
        .map(|i| {
            let (a, b) = (i % 9, (i * 5) % 7);
            if i % 2 == 0 {
                Task {
                    prompt: format!("Now add {} to that.", i % 4 + 1),
                    answer: format!("{}", a + b + i % 4 + 1),
                    kind: "arithmetic".into(),
                    history: vec![
                        Message::new("user", format!("What is {a} + {b}?")),
                        Message::new("assistant", format!("{a} + {b} = {}.\nAnswer: {}", a + b, a + b)),
                    ],
                    ..Task::default()
                }
            } else {
                let t = towns[i % 6];
                Task {
                    prompt: "And which region is it in?".into(),
                    answer: regions[(i * 7 + i / 6) % regions.len()].into(),
                    kind: "facts".into(),
                    history: vec![
                        Message::new("user", format!("What does {t} trade?")),
                        Message::new("assistant", format!("{t} trades salt.\nAnswer: salt")),
                    ],
                    ..Task::default()
                }
            }
        })
        .collect();
    write_tasks(&dir.join("eval/multiturn.parquet"), &multiturn)?;
    let mut corpus: Vec<String> = enc.clone();
    corpus.extend(chat.iter().cloned());
    corpus.extend(arith.iter().cloned());
    let tok = Tok::train(corpus.iter(), 400)?;
    tok.save(&dir.join("tokenizer.json"))?;

    let d = dir.display();
    let cfgs = dir.join("configs");
    std::fs::create_dir_all(cfgs.join("mixes"))?;
    let src = |name: &str, path: String, format: &str, w: f64| {
        format!("[[source]]\nname = \"{name}\"\npath = \"{path}\"\nformat = \"{format}\"\nweight = {w}\n\n")
    };
    std::fs::write(
        cfgs.join("mixes/pretrain.toml"),
        src(
            "encyclopedia",
            format!("{d}/library/encyclopedia-*.parquet"),
            "text",
            0.4,
        ) + &src("chatter", format!("{d}/library/chatter-*.parquet"), "text", 0.4)
            + &src("arithmetic", format!("{d}/library/arithmetic-*.parquet"), "text", 0.2),
    )?;
    std::fs::write(
        cfgs.join("mixes/heldout.toml"),
        src("encyclopedia", format!("{d}/heldout/encyclopedia.parquet"), "text", 1.0)
            + &src("chatter", format!("{d}/heldout/chatter.parquet"), "text", 1.0),
    )?;
    std::fs::write(
        cfgs.join("mixes/sft.toml"),
        src("conversations", format!("{d}/sft/train.parquet"), "chat", 1.0),
    )?;
    std::fs::write(
        cfgs.join("mixes/sft-heldout.toml"),
        src("conversations", format!("{d}/sft/eval.parquet"), "chat", 1.0),
    )?;
    let train = "[train]\nsteps = 6\nbatch_size = 4\nmicro_batch_size = 2\nlr = 3e-3\nwarmup_steps = 2\nsave_every = 3\ndevice = \"cpu\"\n";
    std::fs::write(
        cfgs.join("pretrain.toml"),
        format!("[model]\npreset = \"tiny\"\n\n[tokenizer]\npath = \"{d}/tokenizer.json\"\n\n[data]\nmix = \"{d}/configs/mixes/pretrain.toml\"\nseq_len = 32\n\n{train}\n[eval]\nmix = \"{d}/configs/mixes/heldout.toml\"\nevery = 3\ntokens = 256\n"),
    )?;
    std::fs::write(
        cfgs.join("midtrain.toml"),
        format!("[data]\nmix = \"{d}/configs/mixes/pretrain.toml\"\nseq_len = 32\n\n{train}\n[eval]\nmix = \"{d}/configs/mixes/heldout.toml\"\ntokens = 256\n"),
    )?;
    std::fs::write(
        cfgs.join("sft.toml"),
        format!("[data]\nmix = \"{d}/configs/mixes/sft.toml\"\nseq_len = 64\n\n{train}precision = \"bf16\"\n\n[eval]\nmix = \"{d}/configs/mixes/sft-heldout.toml\"\ntokens = 256\n\n[tasks]\npath = \"{d}/eval/tasks.parquet\"\nper_kind = 3\nmax_new_tokens = 8\nbatch_size = 16\neval_start = true\nmultiturn = \"{d}/eval/multiturn.parquet\"\n"),
    )?;
    std::fs::write(
        cfgs.join("rl.toml"),
        format!("[data]\nprompts = \"{d}/rl/train.parquet\"\n\n[rl]\nprompts_per_step = 2\ngroup_size = 4\ninner_epochs = 2\nkl_coef = 0.05\n\n[train]\nsteps = 3\nmicro_batch_size = 4\nlr = 1e-3\nschedule = \"constant\"\nweight_decay = 0.0\nsave_every = 2\ndevice = \"cpu\"\n\n[sampling]\nmax_new_tokens = 8\n\n[eval]\ntasks = \"{d}/eval/tasks.parquet\"\nper_kind = 2\nmax_new_tokens = 8\nseen_per_kind = 2\n"),
    )?;
    Ok(())
}

/// Writes a randomly initialised `tiny` checkpoint of `stage` to `out`, using the tokenizer
/// of a [`tiny_world`] in `world`.
pub fn tiny_checkpoint(world: &Path, out: &Path, stage: &str) -> Result<()> {
    let tok = Tok::load(&world.join("tokenizer.json"))?;
    let cfg = GptConfig::preset("tiny", tok.vocab_size() as i64)?;
    checkpoint::save_random(out, &cfg, &tok, stage, 0)
}

/// The tensors of a checkpoint's `model.safetensors`, sorted by name.
pub fn sorted_weights(dir: &Path) -> Result<Vec<(String, tch::Tensor)>> {
    let mut w = tch::Tensor::read_safetensors(dir.join("model.safetensors"))?;
    w.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(w)
}

/// Panics unless `a` and `b` hold the same tensor names with values within `tol`.
pub fn assert_same_weights(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: different tensor counts");
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let diff = (ta - tb).abs().max().double_value(&[]);
        assert!(diff < tol, "{na} differs by {diff} {what}");
    }
}

/// A Parquet file of non-null string columns, as hub files are (`question`/`answer`, ...).
pub fn write_strings(path: &std::path::Path, cols: &[(&str, Vec<&str>)]) -> Result<()> {
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
