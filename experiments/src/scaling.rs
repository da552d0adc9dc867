//! rl-scaling: from what model size on does RL buy held-out accuracy, and how does its gain grow
//! with the RL steps taken and the fresh prompts seen?
//!
//! For each model preset (`--sizes`, default `tiny,default,d6`: ~0.3M, ~5M and ~14M parameters,
//! d6 costing ~2.9x the default's compute per token), the ladder pretrain → midtrain → SFT runs with the
//! base run's configs and only the `[model]` preset changed (a preset identical to the base run's
//! model reuses the base run's checkpoints). RL then runs `--rl-steps` steps from each SFT model
//! with the base run's RL config (its prompt stream, curriculum and rewards), grading the held-out
//! problems every `--eval-every` steps. The table reads the gain at each point against the SFT
//! start, with the prompts RL had drawn by then; the final gain has a paired 95% interval (the
//! same problems, answered by the SFT and the RL model).
use crate::annotator::paired_gain;
use crate::{is_complete, pct, pct_ci, read_meta, write_atomic, Ctx};
use anyhow::{Context, Result};
use common::device::DeviceChoice;
use common::metrics::{lines_of, read_jsonl, EvalLine, RlStep};
use common::model::GptConfig;
use common::tasks::{limit_per_kind, load_tasks, wilson, TaskReport};
use std::path::{Path, PathBuf};

/// One model size's RL run, as measured.
struct Row {
    size: String,
    params: i64,
    sft: PathBuf,
    rl: PathBuf,
    /// Held-out answerable accuracy (and problems graded) at each graded RL step, step 0 first.
    curve: Vec<(u64, f64, usize)>,
    /// Prompts (groups) RL had drawn by each step.
    drawn: Vec<(u64, usize)>,
    /// Per held-out answerable problem: the SFT model right, the RL model right.
    paired: (Vec<bool>, Vec<bool>),
    start: TaskReport,
    end: TaskReport,
    seen: Option<(TaskReport, TaskReport)>,
    hard: Option<(TaskReport, TaskReport)>,
    /// Seconds: pretrain + midtrain + SFT, and RL.
    ladder_secs: f64,
    rl_secs: f64,
}

impl Row {
    /// Prompts RL had drawn by `step` (0 where the log has no such step).
    fn drawn_by(&self, step: u64) -> usize {
        self.drawn.iter().find(|d| d.0 == step).map_or(0, |d| d.1)
    }
}

/// Reads a TOML config as a value.
fn read_toml(path: &Path) -> Result<toml::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The table `key` of a config, created when absent.
fn table<'a>(cfg: &'a mut toml::Value, key: &str) -> Result<&'a mut toml::value::Table> {
    let root = cfg.as_table_mut().context("a config is a TOML table")?;
    root.entry(key)
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .with_context(|| format!("[{key}] is not a table"))
}

/// The architecture of a checkpoint (its `config.json`).
fn model_config(ckpt: &Path) -> Result<GptConfig> {
    let p = ckpt.join("config.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// Pretrain (the base run's pretrain config with `[model] preset = size`), midtrain and SFT
/// (the base run's configs) into `dir`; returns the SFT checkpoint. Complete stages are skipped.
fn ladder(ctx: &Ctx, size: &str, dir: &Path) -> Result<PathBuf> {
    let mut cfg = read_toml(&ctx.config("pretrain"))?;
    let seq_len = cfg
        .get("data")
        .and_then(|d| d.get("seq_len"))
        .and_then(|s| s.as_integer());
    let preset = GptConfig::preset(size, 1)?;
    let model = table(&mut cfg, "model")?;
    model.clear();
    model.insert("preset".into(), size.into());
    if let Some(s) = seq_len.filter(|s| *s > preset.max_seq_len) {
        // The tiny preset's context (128) is shorter than the stages' sequences.
        model.insert("max_seq_len".into(), s.into());
    }
    let pretrain_cfg = dir.join("pretrain.toml");
    let text = format!(
        "# {}'s pretrain config with the model preset `{size}` (written by experiment rl-scaling)\n{}",
        ctx.config("pretrain").display(),
        toml::to_string(&cfg)?
    );
    if std::fs::read_to_string(&pretrain_cfg).ok().as_deref() != Some(text.as_str()) {
        write_atomic(&pretrain_cfg, &text)?;
    }
    let mut previous: Option<PathBuf> = None;
    for stage in ["pretrain", "midtrain", "sft"] {
        let out = dir.join(stage);
        let config = if stage == "pretrain" {
            pretrain_cfg.clone()
        } else {
            ctx.config(stage)
        };
        if !is_complete(&out) {
            let mut args = vec!["--config".into(), config.into()];
            if let Some(p) = &previous {
                args.extend(["--init".into(), p.clone().into()]);
            }
            args.extend(["--out".into(), out.clone().into(), "--resume".into()]);
            ctx.stage(stage, &args)?;
        }
        previous = Some(out);
    }
    Ok(dir.join("sft"))
}

/// The base run's RL config with `train.steps` and `eval.every` set, written into `dir`.
fn rl_config(ctx: &Ctx, dir: &Path) -> Result<PathBuf> {
    let src = ctx.config("rl");
    let mut cfg = read_toml(&src)?;
    anyhow::ensure!(
        cfg.get("eval").is_some(),
        "{} has no [eval] section: rl-scaling reads RL's held-out grading",
        src.display()
    );
    table(&mut cfg, "train")?.insert("steps".into(), (ctx.rl_steps as i64).into());
    table(&mut cfg, "eval")?.insert("every".into(), (ctx.eval_every as i64).into());
    let path = dir.join("rl.toml");
    let text = format!(
        "# {}'s RL config, {} steps, held-out grading every {} (written by experiment rl-scaling)\n{}",
        src.display(),
        ctx.rl_steps,
        ctx.eval_every,
        toml::to_string(&cfg)?
    );
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        write_atomic(&path, &text)?;
    }
    Ok(path)
}

/// Right or wrong per task, in order, for the weights graded.
#[derive(serde::Serialize, serde::Deserialize)]
struct Correct {
    weights_sha256: String,
    prompts: usize,
    correct: Vec<bool>,
}

impl crate::Grade for Correct {
    fn weights_sha256(&self) -> &str {
        &self.weights_sha256
    }
    fn covers(&self, n: usize) -> bool {
        self.prompts == n && self.correct.len() == n
    }
}

/// Grades `ckpt` greedily on `tasks`, cached in `cache` for the same weights: right or wrong
/// per task, in order.
fn correct(ckpt: &Path, tasks: &[common::verify::Task], cache: &Path, device: &DeviceChoice) -> Result<Vec<bool>> {
    let what = "held-out answerable problems";
    let c = crate::cached_grade(ckpt, tasks, cache, device, what, |sha, log| Correct {
        weights_sha256: sha,
        prompts: tasks.len(),
        correct: log.iter().map(|r| r.correct).collect(),
    })?;
    Ok(c.correct)
}

fn stage_secs(dir: &Path) -> f64 {
    read_meta(dir).map(|m| m.stage_secs()).unwrap_or(0.0)
}

/// Runs the experiment; returns the report's path.
pub fn run(ctx: &Ctx) -> Result<PathBuf> {
    anyhow::ensure!(!ctx.sizes.is_empty(), "no model sizes to compare (--sizes)");
    anyhow::ensure!(
        ctx.rl_steps > 0 && ctx.eval_every > 0,
        "--rl-steps and --eval-every must be above 0"
    );
    for s in &ctx.sizes {
        GptConfig::preset(s, 1).with_context(|| format!("--sizes {s}"))?;
    }
    let device: DeviceChoice = ctx.device.as_deref().unwrap_or("auto").parse()?;
    ctx.ensure_base("sft")?;
    let base_model = model_config(&ctx.base.join("sft"))?;
    let rl_cfg = read_toml(&ctx.config("rl"))?;
    let eval = rl_cfg.get("eval").context("the RL config has no [eval] section")?;
    let tasks_path = PathBuf::from(
        eval.get("tasks")
            .and_then(|t| t.as_str())
            .context("the RL config's [eval] has no tasks")?,
    );
    let per_kind = eval.get("per_kind").and_then(|p| p.as_integer()).unwrap_or(250) as usize;
    // RL's own held-out selection, answerable kinds only: the paired comparison.
    let answerable: Vec<_> = limit_per_kind(load_tasks(&tasks_path)?, per_kind)
        .into_iter()
        .filter(|t| t.kind != "unanswerable")
        .collect();
    anyhow::ensure!(
        !answerable.is_empty(),
        "{} has no answerable tasks",
        tasks_path.display()
    );
    let mut rows = Vec::new();
    for size in &ctx.sizes {
        let dir = ctx.out.join(size);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let preset = GptConfig::preset(size, base_model.vocab_size)?;
        let reuse = GptConfig {
            max_seq_len: base_model.max_seq_len,
            ..preset.clone()
        } == base_model;
        let sft = if reuse {
            ctx.base.join("sft")
        } else {
            ladder(ctx, size, &dir)?
        };
        let ladder_dirs: Vec<PathBuf> = ["pretrain", "midtrain", "sft"]
            .iter()
            .map(|s| sft.with_file_name(s))
            .collect();
        let rl = dir.join("rl");
        let cfg = rl_config(ctx, &dir)?;
        ctx.stage(
            "rl",
            &[
                "--config".into(),
                cfg.into(),
                "--init".into(),
                sft.clone().into(),
                "--out".into(),
                rl.clone().into(),
                "--resume".into(),
            ],
        )?;
        let meta = read_meta(&rl)?;
        let m = &meta.metrics;
        let log = read_jsonl(&rl.join("metrics.jsonl"));
        let paired = (
            correct(&sft, &answerable, &dir.join("grade-sft.json"), &device)?,
            correct(&rl, &answerable, &dir.join("grade-rl.json"), &device)?,
        );
        // Step 0 is the SFT model as this experiment grades it (the paired baseline); later
        // points are RL's own held-out grades, logged as it trained.
        let share = |c: &[bool]| c.iter().filter(|x| **x).count() as f64 / c.len().max(1) as f64;
        let curve: Vec<(u64, f64, usize)> = std::iter::once((0, share(&paired.0), paired.0.len()))
            .chain(
                lines_of::<EvalLine<TaskReport>>(&log)
                    .iter()
                    .filter(|l| l.step > 0)
                    .map(|l| (l.step, l.eval.answerable.accuracy, l.eval.answerable.n)),
            )
            .collect();
        let mut total = 0;
        let drawn: Vec<(u64, usize)> = lines_of::<RlStep>(&log)
            .iter()
            .map(|s| {
                total += s.groups_sampled;
                (s.step, total)
            })
            .collect();
        let none = || format!("{} has no held-out grades in its meta.json", rl.display());
        let rl_secs = meta.stage_secs();
        rows.push(Row {
            size: size.clone(),
            params: model_config(&sft)?.num_params(),
            paired,
            start: m.tasks_start.clone().with_context(none)?,
            end: m.tasks.clone().with_context(none)?,
            seen: m.tasks_seen_start.clone().zip(m.tasks_seen.clone()),
            hard: m.tasks_hard_start.clone().zip(m.tasks_hard.clone()),
            ladder_secs: ladder_dirs.iter().map(|d| stage_secs(d)).sum(),
            rl_secs,
            curve,
            drawn,
            sft,
            rl,
        });
    }
    write_report(ctx, &rows, answerable.len())
}

fn hallucination(r: &TaskReport) -> String {
    r.per_kind
        .get("unanswerable")
        .and_then(|u| u.hallucination_rate)
        .map(pct)
        .unwrap_or_else(|| "–".into())
}

fn fmt_secs(s: f64) -> String {
    if s >= 90.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

fn write_report(ctx: &Ctx, rows: &[Row], n: usize) -> Result<PathBuf> {
    let mut md = String::from("# Experiment: rl-scaling\n\n");
    md.push_str(&format!(
        "Question: from what model size on does RL with a verifier buy accuracy on held-out problems, \
         and how does the gain grow with RL steps and fresh prompts? Each size trains the whole ladder \
         (pretrain → midtrain → SFT) on the same world with the same configs, only the model preset \
         changed; RL then runs {} steps from its SFT model with the base run's RL config (prompt \
         stream, curriculum, rewards, learning rate), its held-out problems graded greedily every {} \
         steps.\n\n",
        ctx.rl_steps, ctx.eval_every
    ));
    md.push_str(
        "| model | parameters | SFT: held-out answerable | RL: held-out answerable | RL − SFT (paired 95%) | practised prompts: SFT → RL | harder slice: SFT → RL | hallucination: SFT → RL | ladder / RL time |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let right = |c: &[bool]| c.iter().filter(|x| **x).count();
        let (g, (lo, hi)) = paired_gain(&r.paired.0, &r.paired.1);
        let pair = |p: &Option<(TaskReport, TaskReport)>| {
            p.as_ref()
                .map(|(a, b)| format!("{} → {}", pct(a.answerable.accuracy), pct(b.answerable.accuracy)))
                .unwrap_or_else(|| "–".into())
        };
        md.push_str(&format!(
            "| `{}` | {:.1}M | {} | {} | {:+.1} ({:+.1}…{:+.1}) | {} | {} | {} → {} | {} / {} |\n",
            r.size,
            r.params as f64 / 1e6,
            pct_ci(right(&r.paired.0) as f64 / n as f64, wilson(right(&r.paired.0), n)),
            pct_ci(right(&r.paired.1) as f64 / n as f64, wilson(right(&r.paired.1), n)),
            100.0 * g,
            100.0 * lo,
            100.0 * hi,
            pair(&r.seen),
            pair(&r.hard),
            hallucination(&r.start),
            hallucination(&r.end),
            fmt_secs(r.ladder_secs),
            fmt_secs(r.rl_secs),
        ));
    }
    md.push_str(&format!(
        "\n{n} held-out answerable problems (arithmetic, facts, programs; the same for every size), \
         graded greedily; 95% Wilson intervals; RL − SFT is the mean paired difference on those \
         problems. *Practised prompts*: the first training prompts RL asked, graded before and after \
         (a gain there that held-out problems do not show is memorised). *Harder slice*: problems \
         with more operations than any SFT conversation shows.\n\n"
    ));
    md.push_str("## The gain as RL goes on\n\nHeld-out answerable accuracy at each graded step (points gained over the SFT start), and the prompts RL had drawn by then (one group of samples each; fresh unless the run's metadata lists repeats). Step 0 is the SFT model graded by this experiment (the paired baseline above); later steps are RL's own greedy grades of the same problems, logged as it trained.\n\n");
    let steps: Vec<u64> = {
        let mut s: Vec<u64> = rows.iter().flat_map(|r| r.curve.iter().map(|c| c.0)).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    md.push_str("| model |");
    for s in &steps {
        md.push_str(&format!(" step {s} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(steps.len()));
    md.push('\n');
    for r in rows {
        let start = r.curve.first().map(|c| c.1).unwrap_or(0.0);
        md.push_str(&format!("| `{}` |", r.size));
        for s in &steps {
            let cell = r.curve.iter().find(|c| c.0 == *s).map(|c| {
                let drawn = r.drawn_by(*s);
                if *s == 0 {
                    pct(c.1)
                } else {
                    format!("{} ({:+.1}; {drawn} prompts)", pct(c.1), 100.0 * (c.1 - start))
                }
            });
            md.push_str(&format!(" {} |", cell.unwrap_or_else(|| "–".into())));
        }
        md.push('\n');
    }
    md.push_str(
        "\n![held-out gain over the SFT start against RL steps, per model size](rl-scaling.svg)\n\n\
         ![held-out gain over the SFT start against the prompts RL had drawn, per model size](rl-scaling-prompts.svg)\n\n\
         Checkpoints:\n",
    );
    for r in rows {
        md.push_str(&format!(
            "- `{}`: `{}`, `{}`\n",
            r.size,
            r.sft.display(),
            r.rl.display()
        ));
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .map(|r| {
            let start = r.curve.first().map(|c| c.1).unwrap_or(0.0);
            (
                format!("{} ({:.1}M)", r.size, r.params as f64 / 1e6),
                r.curve.iter().map(|c| (c.0 as f64, 100.0 * (c.1 - start))).collect(),
            )
        })
        .collect();
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((-2.0f64, 2.0f64), |(a, b), y| (a.min(y), b.max(y)));
    let y_range = (lo.floor() - 1.0, hi.ceil() + 1.0);
    // The same points against the prompts drawn by then (a group of samples each).
    let by_prompts: Vec<(String, Vec<(f64, f64)>)> = rows
        .iter()
        .zip(&series)
        .map(|(r, (name, pts))| {
            let pts = r
                .curve
                .iter()
                .zip(pts)
                .map(|(c, p)| (r.drawn_by(c.0) as f64, p.1))
                .collect();
            (name.clone(), pts)
        })
        .collect();
    for (file, title, x, lines) in [
        (
            "rl-scaling.svg",
            "RL's held-out gain over its SFT start, by model size",
            "RL steps",
            &series,
        ),
        (
            "rl-scaling-prompts.svg",
            "RL's held-out gain over its SFT start, against fresh prompts drawn",
            "prompts drawn (one group of samples each)",
            &by_prompts,
        ),
    ] {
        crate::plot::lines(
            &ctx.out.join(file),
            title,
            x,
            "points (held-out answerable)",
            y_range,
            lines,
        )?;
    }
    ctx.write_report(&md)
}
