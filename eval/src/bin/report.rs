//! `report`: turns a run's checkpoints into `runs/<run>/report.md` with tables and plots.
use anyhow::{Context, Result};
use clap::Parser;
use common::checkpoint::Meta;
use common::data::Overlong;
use common::meta::DataRecord;
use common::metrics::{
    lines_of, read_jsonl, EvalFile, HeldOut, HeldOutBySource, LmStep, LmTrainMetrics, OverlongDocs, RlStep,
    StageMetrics, TrainMetrics,
};
use common::progress::{format_count, format_secs};
use common::provenance::Provenance;
use common::tasks::{KindReport, TaskReport};
use plotters::prelude::*;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const STAGES: [&str; 4] = ["pretrain", "midtrain", "sft", "rl"];

/// Write the report card of a run: what each stage cost and what it bought.
///
/// Reads runs/<run>/<stage>/meta.json and metrics.jsonl for every stage present (and
/// runs/<run>/eval-rl.json from `evaluate --samples`, if present) and writes
/// runs/<run>/report.md with SVG plots beside it.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Run directory (e.g. runs/default).
    #[arg(default_value = "runs/default")]
    run: PathBuf,
}

struct Stage {
    name: &'static str,
    /// The checkpoint directory (possibly the `.prev` fallback).
    dir: PathBuf,
    meta: Meta,
    log: Vec<Value>,
}

fn load(run: &Path) -> Result<Vec<Stage>> {
    let mut out = Vec::new();
    for name in STAGES {
        let dir = run.join(name);
        let Ok(dir) = common::checkpoint::resolve_dir(&dir) else {
            continue;
        };
        let meta: Meta = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)
            .with_context(|| format!("parsing {}/meta.json", dir.display()))?;
        let log = read_jsonl(&dir.join("metrics.jsonl"));
        let dir = dir.to_path_buf();
        out.push(Stage { name, dir, meta, log });
    }
    if out.is_empty() {
        anyhow::bail!(
            "{} holds no stage checkpoints (expected {}/pretrain/meta.json, …); run `just pipeline` first",
            run.display(),
            run.display()
        );
    }
    Ok(out)
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1}%", 100.0 * x))
}

/// `x` with three decimals, or "–".
fn num3(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.3}"))
}

const COLORS: [RGBColor; 8] = [
    BLUE,
    RED,
    GREEN,
    MAGENTA,
    CYAN,
    BLACK,
    RGBColor(255, 140, 0),
    RGBColor(128, 0, 128),
];

/// Width of the legend column to the right of a plot (legends never cover the data).
const LEGEND_W: u32 = 190;

/// Splits an 820 x 380 SVG into the plot area and a legend column on its right.
fn areas(
    path: &Path,
) -> Result<(
    DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
)> {
    let root = SVGBackend::new(path, (820, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root.split_horizontally(820 - LEGEND_W))
}

/// The legend: one coloured line and name per series, top to bottom.
fn legend(area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>, names: &[String]) -> Result<()> {
    for (i, name) in names.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let y = 48 + 22 * i as i32;
        area.draw(&PathElement::new(vec![(6, y), (28, y)], c.stroke_width(2)))?;
        area.draw(&Text::new(name.clone(), (34, y - 7), ("sans-serif", 13)))?;
    }
    Ok(())
}

/// Tick labels of a step axis: whole numbers only (no "2.5" steps).
fn whole(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{}", x.round() as i64)
    } else {
        String::new()
    }
}

fn plot_loss(stages: &[Stage], path: &Path) -> Result<()> {
    let mut series: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    let mut offset = 0.0;
    let mut bounds = Vec::new();
    for s in stages {
        if s.name == "rl" {
            continue;
        }
        let pts: Vec<(f64, f64)> = lines_of::<LmStep>(&s.log)
            .iter()
            .map(|l| (offset + l.step as f64, l.loss))
            .collect();
        offset += s.meta.step as f64;
        bounds.push(offset);
        series.push((s.name, pts));
    }
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(0.0f64, f64::max)
        .min(12.0);
    let (plot, side) = areas(path)?;
    let mut chart = ChartBuilder::on(&plot)
        .caption("training loss (nats/token) across stages", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..offset.max(1.0), 0.0..ymax.max(0.1) * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step (stages back to back; RL: see rl.svg)")
        .x_label_formatter(&whole)
        .y_desc("loss")
        .draw()?;
    for (i, (_, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart.draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?;
    }
    legend(&side, &series.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>())?;
    plot.present()?;
    Ok(())
}

/// Titles of a percent plot.
struct LinePlot<'a> {
    title: &'a str,
    xdesc: &'a str,
    ydesc: &'a str,
}

/// Lines of percentages against categories `xs` (stages, k, steps), a legend beside them.
fn plot_lines(path: &Path, o: &LinePlot<'_>, xs: &[String], series: &[(String, Vec<f64>)]) -> Result<()> {
    let (plot, side) = areas(path)?;
    let n = xs.len().max(2);
    let ymax = series
        .iter()
        .flat_map(|(_, ys)| ys.iter().copied().filter(|y| y.is_finite()))
        .fold(0.0f64, f64::max);
    // Percent axes end at 100 unless every value is small (then they zoom in).
    let top = if ymax > 0.5 {
        100.0
    } else {
        (100.0 * ymax * 1.2).max(5.0)
    };
    let mut chart = ChartBuilder::on(&plot)
        .caption(o.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(-0.2..(n as f64 - 0.8), 0.0..top)?;
    let labels = xs.to_vec();
    chart
        .configure_mesh()
        .x_labels(n.min(12))
        .x_label_formatter(&|x| {
            // Categories sit on whole numbers; ticks between them stay blank.
            if (x - x.round()).abs() < 1e-6 {
                labels.get(x.round() as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc(o.xdesc)
        .y_desc(o.ydesc)
        .draw()?;
    for (i, (_, ys)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = ys
            .iter()
            .enumerate()
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| (x as f64, 100.0 * y))
            .collect();
        chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
    }
    legend(&side, &series.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>())?;
    plot.present()?;
    Ok(())
}

/// RL's sampled groups per step: reward and accuracy (left axis, 0–1 in percent) against
/// whole-number steps.
fn plot_rl(steps: &[RlStep], path: &Path) -> Result<()> {
    let (plot, side) = areas(path)?;
    let last = steps.last().map_or(1, |l| l.step) as f64;
    let first = steps.first().map_or(0, |l| l.step) as f64;
    let lo = steps.iter().map(|l| l.reward_mean).fold(0.0f64, f64::min);
    let mut chart = ChartBuilder::on(&plot)
        .caption("RL: the sampled groups, step by step", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(first..last.max(first + 1.0), (lo * 100.0).min(0.0)..100.0)?;
    chart
        .configure_mesh()
        .x_desc("RL step")
        .x_label_formatter(&whole)
        .y_desc("% (reward x 100)")
        .draw()?;
    type Get = fn(&RlStep) -> f64;
    let series: [(&str, Get); 3] = [
        ("reward (mean, x100)", |l| l.reward_mean),
        ("accuracy", |l| l.accuracy),
        ("abstention", |l| l.abstention_rate),
    ];
    for (i, (_, get)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = steps.iter().map(|l| (l.step as f64, 100.0 * get(l))).collect();
        chart.draw_series(LineSeries::new(pts, c.stroke_width(2)))?;
    }
    legend(&side, &series.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>())?;
    plot.present()?;
    Ok(())
}

fn run(a: Args) -> Result<()> {
    let stages = load(&a.run)?;
    let eval_rl = read_eval(&a.run)?;
    let mut md = String::new();
    writeln!(md, "# lib2expert report: `{}`\n", a.run.display())?;
    writeln!(md, "From library to expert: each stage below starts from the checkpoint of the one before. All figures are measured on held-out data.\n")?;
    header(&mut md, &stages, &a.run)?;
    summary(&mut md, &stages, eval_rl.as_ref())?;
    cost_table(&mut md, &stages)?;
    heldout_table(&mut md, &stages)?;
    plot_loss(&stages, &a.run.join("loss.svg"))?;
    writeln!(md, "\n![training loss](loss.svg)")?;
    task_table(&mut md, &stages, &a.run)?;
    multiturn_section(&mut md, &stages)?;
    let rl = stages.iter().find(|s| s.name == "rl");
    if let Some(rl) = rl {
        skill_table(&mut md, &rl.meta.metrics)?;
        hard_slice(&mut md, &rl.meta.metrics)?;
        curriculum_section(&mut md, rl, &a.run)?;
        rl_dynamics(&mut md, rl, &a.run)?;
    }
    if let Some(v) = &eval_rl {
        test_time_compute(&mut md, v, &a.run)?;
    }
    data_section(&mut md, &stages)?;
    let out = a.run.join("report.md");
    std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("report: wrote {}", out.display());
    Ok(())
}

/// `runs/<run>/eval-rl.json` (from `evaluate --samples`), when present.
fn read_eval(run: &Path) -> Result<Option<EvalFile>> {
    let path = run.join("eval-rl.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let v = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some(v))
}

/// When, from which commit, on what machine and software, which model, and how long it took.
fn header(md: &mut String, stages: &[Stage], run: &Path) -> Result<()> {
    // The commit of the checkout the run lives in, else of the one the report is written from.
    let mut p = Provenance::collect(run);
    if p.git_commit.is_none() {
        p.git_commit = common::provenance::git_commit(Path::new("."));
    }
    writeln!(md, "| | |\n|---|---|")?;
    writeln!(md, "| written | {} |", p.date)?;
    writeln!(
        md,
        "| git commit | {} |",
        p.git_commit.as_deref().unwrap_or("– (not in a git checkout)")
    )?;
    writeln!(md, "| machine (writing this report) | {} |", p.machine)?;
    writeln!(
        md,
        "| software | lib2expert {}, tch {}, libtorch {} |",
        p.version,
        p.tch,
        p.libtorch.as_deref().unwrap_or("?")
    )?;
    if let Some(last) = stages.last() {
        let cfg = common::model::read_config(&last.dir.join("config.json"))?;
        writeln!(
            md,
            "| model | {} layers x {} wide, {} heads ({} key/value), context {}, vocabulary {}, {} embeddings: **{} parameters** |",
            cfg.n_layer,
            cfg.n_embd,
            cfg.n_head,
            cfg.n_kv_head,
            cfg.max_seq_len,
            cfg.vocab_size,
            if cfg.tie_embeddings { "tied" } else { "untied" },
            format_count(cfg.num_params() as f64)
        )?;
    }
    let total: f64 = stages.iter().map(|s| s.meta.stage_secs()).sum();
    let steps: f64 = stages.iter().map(|s| s.meta.train_secs).sum();
    let parts: Vec<String> = stages
        .iter()
        .map(|s| format!("{} {}", s.name, format_secs(s.meta.stage_secs())))
        .collect();
    writeln!(
        md,
        "| wall time of the stages | **{}** ({}; training steps alone {}{}) |",
        format_secs(total),
        parts.join(", "),
        format_secs(steps),
        steps_only(stages)
    )?;
    let ladder: Vec<&Stage> = stages
        .iter()
        .filter(|s| matches!(s.name, "pretrain" | "midtrain" | "sft"))
        .collect();
    if ladder.len() == 3 {
        writeln!(
            md,
            "| library to annotator level (pretrain + midtrain + SFT) | {}{} |",
            format_secs(ladder.iter().map(|s| s.meta.stage_secs()).sum()),
            steps_only(ladder.iter().copied())
        )?;
    }
    // Where each stage trained: device, machine and threads, each distinct value once (a
    // checkpoint that took no step, such as an imported or random one, trained nowhere).
    let mut trained_on: Vec<String> = Vec::new();
    for s in stages.iter().filter(|s| s.meta.step > 0) {
        let m = &s.meta;
        let mut where_ = m.device.clone();
        if let Some(machine) = &m.machine {
            where_ += &format!(": {machine}");
        }
        if let Some(t) = m.threads {
            where_ += &format!(", {t} thread{}", if t == 1 { "" } else { "s" });
        }
        if let Some(w) = m.world_size {
            where_ += &format!(" x {w} ranks");
        }
        if !trained_on.contains(&where_) {
            trained_on.push(where_);
        }
    }
    if trained_on.is_empty() {
        trained_on.push("– (no stage of this run took a training step)".into());
    }
    writeln!(md, "| trained on | {} |", trained_on.join("; "))?;
    Ok(())
}

/// `; … counted by their training steps alone (…)` naming the trained stages whose checkpoints
/// predate whole-stage wall times (their evaluations, grading and saves are not in the sums).
fn steps_only<'a>(stages: impl IntoIterator<Item = &'a Stage>) -> String {
    let older: Vec<&str> = stages
        .into_iter()
        .filter(|s| s.meta.step > 0 && s.meta.recorded_wall_secs().is_none())
        .map(|s| s.name)
        .collect();
    if older.is_empty() {
        return String::new();
    }
    format!(
        "; {} counted by their training steps alone (written before whole-stage times were recorded)",
        older.join(", ")
    )
}

/// Mean held-out bits per byte over a stage's sources.
fn mean_bpb(h: &HeldOutBySource) -> Option<f64> {
    (!h.is_empty()).then(|| h.values().map(|x| x.bpb).sum::<f64>() / h.len() as f64)
}

/// One row per stage with its headline held-out figures.
fn summary(md: &mut String, stages: &[Stage], eval_rl: Option<&EvalFile>) -> Result<()> {
    writeln!(
        md,
        "\n## Summary\n\n| stage | steps | wall time | held-out bits/byte (mean of sources) | answerable accuracy (greedy) | hallucination | format |\n|---|---|---|---|---|---|---|"
    )?;
    // "start → end" when the stage graded its starting checkpoint too.
    let change = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{} → {}", pct(Some(a)), pct(Some(b))),
        (None, b) => pct(b),
        (a, None) => pct(a),
    };
    let hall = |t: Option<&TaskReport>| {
        t.and_then(|t| t.per_kind.get("unanswerable"))
            .and_then(|r| r.hallucination_rate)
    };
    for s in stages {
        let m = &s.meta.metrics;
        let bpb = match s.name {
            "pretrain" | "midtrain" => m.heldout.as_ref().and_then(mean_bpb),
            _ => None,
        };
        let (t0, t1) = (m.tasks_start.as_ref(), m.tasks.as_ref());
        let acc = |t: Option<&TaskReport>| t.map(|t| t.answerable.accuracy);
        let fmt = |t: Option<&TaskReport>| t.map(|t| t.answerable.format_rate);
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            s.meta.step,
            format_secs(s.meta.stage_secs()),
            num3(bpb),
            change(acc(t0), acc(t1)),
            change(hall(t0), hall(t1)),
            change(fmt(t0), fmt(t1))
        )?;
    }
    if let Some(s) = eval_rl.and_then(|v| v.sampled.as_ref()) {
        let a = &s.answerable;
        let kmax = a.pass_at_k.keys().max().copied().unwrap_or(1);
        writeln!(
            md,
            "\nSampling the final checkpoint ({} answers per question at T = {}): pass@1 {}, pass@{kmax} {}, maj@{kmax} {}.",
            s.samples,
            eval_rl.map_or(f64::NAN, |v| v.temperature),
            pct(a.pass_at_k.get(&1).copied()),
            pct(a.pass_at_k.get(&kmax).copied()),
            pct(a.maj_at_k.get(&kmax).copied())
        )?;
    }
    writeln!(
        md,
        "\nAccuracy, hallucination and format: \"a → b\" is the stage's starting checkpoint and its result on the same questions.\n"
    )?;
    Ok(())
}

/// What each stage cost: steps, tokens, time, throughput, MFU, device.
fn cost_table(md: &mut String, stages: &[Stage]) -> Result<()> {
    writeln!(md, "## What each stage cost\n\n| stage | steps | tokens | training steps | whole stage | tokens/s | MFU | device |\n|---|---|---|---|---|---|---|---|")?;
    for s in stages {
        let t = s.meta.metrics.train.as_ref();
        let rl = s.name == "rl";
        let mfu = match t {
            Some(TrainMetrics::Lm(m)) => Some(m.mfu),
            _ => None,
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            s.meta.step,
            format_count(s.meta.tokens_seen as f64) + if rl { " sampled" } else { "" },
            format_secs(s.meta.train_secs),
            s.meta.recorded_wall_secs().map_or("–".into(), format_secs),
            t.map_or("–".into(), |t| format_count(t.tok_per_s())) + if rl { " (sampling)" } else { "" },
            mfu.map_or("–".into(), |m| format!("{:.0}%", 100.0 * m)),
            s.meta.device
        )?;
    }
    Ok(())
}

/// Held-out bits per byte of pretraining and midtraining, per source.
fn heldout_table(md: &mut String, stages: &[Stage]) -> Result<()> {
    let lm: Vec<(&Stage, &HeldOutBySource)> = stages
        .iter()
        .filter(|s| s.name != "sft")
        .filter_map(|s| Some((s, s.meta.metrics.heldout.as_ref()?)))
        .collect();
    let Some(&(first, first_end)) = lm.first() else {
        return Ok(());
    };
    let sources: Vec<&String> = first_end.keys().collect();
    writeln!(
        md,
        "\n## What pretraining and midtraining bought: held-out bits per byte\n"
    )?;
    write!(md, "| source | random init |")?;
    for (s, _) in &lm {
        write!(md, " {} |", s.name)?;
    }
    writeln!(md, " midtrain vs pretrain |\n|---|---|{}---|", "---|".repeat(lm.len()))?;
    let start = first.meta.metrics.heldout_start.as_ref();
    for src in &sources {
        let init = start.and_then(|h| h.get(*src)).map(|h| h.bpb);
        write!(md, "| {src} | {} |", num3(init))?;
        let vals: Vec<Option<f64>> = lm.iter().map(|(_, h)| h.get(*src).map(|h| h.bpb)).collect();
        for v in &vals {
            write!(md, " {} |", num3(*v))?;
        }
        let change = match (vals.first().copied().flatten(), vals.get(1).copied().flatten()) {
            (Some(p), Some(m)) => format!("{:+.1}%", 100.0 * (m / p - 1.0)),
            _ => "–".into(),
        };
        writeln!(md, " {change} |")?;
    }
    let list = |get: fn(&HeldOut) -> f64| {
        sources
            .iter()
            .map(|s| format!("{s} {:.2}", first_end.get(*s).map_or(f64::NAN, get)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(
        md,
        "\nUnigram floor (nats/token, entropy of each held-out set's own token frequencies): {}; \
         held-out loss after pretraining: {}.",
        list(|h| h.unigram_loss),
        list(|h| h.loss)
    )?;
    Ok(())
}

/// Questions of task `kind` in `r`, or "–".
fn questions(r: &TaskReport, kind: &str) -> String {
    r.per_kind.get(kind).map_or("–".into(), |k| k.n.to_string())
}

/// The task columns: base (what SFT started from), SFT, before RL (same questions as RL), RL.
fn task_columns(stages: &[Stage]) -> Vec<(String, &TaskReport)> {
    let mut cols = Vec::new();
    if let Some(sft) = stages.iter().find(|s| s.name == "sft") {
        if let Some(t) = &sft.meta.metrics.tasks_start {
            cols.push(("base (before SFT)".into(), t));
        }
        if let Some(t) = &sft.meta.metrics.tasks {
            cols.push(("SFT".into(), t));
        }
    }
    if let Some(rl) = stages.iter().find(|s| s.name == "rl") {
        if let Some(t) = &rl.meta.metrics.tasks {
            // RL's gain is read against its own starting point on the same questions (the SFT
            // stage may have graded a different number of them).
            if let Some(t0) = &rl.meta.metrics.tasks_start {
                cols.push(("before RL (same questions as RL)".into(), t0));
            }
            cols.push(("RL".into(), t));
        }
    }
    cols
}

/// Held-out task accuracy per stage, with a plot and a few examples.
fn task_table(md: &mut String, stages: &[Stage], run: &Path) -> Result<()> {
    let cols = task_columns(stages);
    if cols.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "\n## What SFT and RL bought: held-out task accuracy (greedy answers, graded by verifiers)\n"
    )?;
    write!(md, "| task |")?;
    for (c, _) in &cols {
        write!(md, " {c} |")?;
    }
    writeln!(md, "\n|---|{}", "---|".repeat(cols.len()))?;
    write!(md, "| questions per task |")?;
    for (_, v) in &cols {
        write!(md, " {} |", questions(v, "arithmetic"))?;
    }
    writeln!(md)?;
    let mut series: Vec<(String, Vec<f64>)> = Vec::new();
    for k in cols[0].1.per_kind.keys() {
        write!(md, "| {k} |")?;
        let mut ys = Vec::new();
        for (_, v) in &cols {
            let r = v.per_kind.get(k);
            ys.push(r.map_or(f64::NAN, |r| r.accuracy));
            let (lo, hi) = r.map_or((0.0, 0.0), |r| r.ci95);
            write!(
                md,
                " {} [{:.0}–{:.0}] |",
                pct(r.map(|r| r.accuracy)),
                100.0 * lo,
                100.0 * hi
            )?;
        }
        writeln!(md)?;
        series.push((k.clone(), ys));
    }
    type Getter = fn(&KindReport) -> f64;
    let pooled: [(&str, Getter); 3] = [
        ("answerable, pooled", |r| r.accuracy),
        ("format compliance", |r| r.format_rate),
        ("abstention (answerable)", |r| r.abstention_rate),
    ];
    for (label, get) in pooled {
        write!(md, "| {label} |")?;
        for (_, v) in &cols {
            write!(md, " {} |", pct(Some(get(&v.answerable))))?;
        }
        writeln!(md)?;
    }
    write!(
        md,
        "| **hallucination** (confident answers to unanswerable questions) |"
    )?;
    let mut hall = Vec::new();
    for (_, v) in &cols {
        let h = v.per_kind.get("unanswerable").and_then(|r| r.hallucination_rate);
        hall.push(h.unwrap_or(f64::NAN));
        write!(md, " {} |", pct(h))?;
    }
    writeln!(md)?;
    let xs: Vec<String> = cols.iter().map(|c| short_column(&c.0)).collect();
    plot_lines(
        &run.join("accuracy.svg"),
        &LinePlot {
            title: "held-out accuracy per task, by stage",
            xdesc: "stage",
            ydesc: "% right",
        },
        &xs,
        &series,
    )?;
    // Hallucination is a rate of the unanswerable questions, not an accuracy: its own plot.
    plot_lines(
        &run.join("hallucination.svg"),
        &LinePlot {
            title: "hallucination: confident answers to unanswerable questions",
            xdesc: "stage",
            ydesc: "% of unanswerable questions",
        },
        &xs,
        &[("hallucination".into(), hall)],
    )?;
    writeln!(
        md,
        "\n![accuracy by stage](accuracy.svg)\n\n![hallucination by stage](hallucination.svg)"
    )?;
    if let Some((label, last)) = cols.last() {
        writeln!(md, "\nExamples ({label}):\n")?;
        for (q, ans, correct) in last.examples.iter().take(8) {
            example(md, q, ans, *correct)?;
        }
    }
    Ok(())
}

/// "before RL (same questions as RL)" → "before RL": x labels of the plots.
fn short_column(c: &str) -> String {
    c.split(" (").next().unwrap_or(c).to_string()
}

/// One graded example as a list item: short text inline (a line break shown as ⏎), programs
/// and longer text in fenced blocks, so a program keeps its lines and its own ``` fences.
fn example(md: &mut String, q: &str, ans: &str, correct: bool) -> Result<()> {
    let mark = if correct { "✅" } else { "❌" };
    let clip = |t: &str, n: usize| -> String {
        let mut c: String = t.chars().take(n).collect();
        if t.chars().count() > n {
            c.push('…');
        }
        c
    };
    let block = |md: &mut String, t: &str| -> Result<()> {
        writeln!(md, "\n  ````text")?;
        for line in t.lines() {
            writeln!(md, "  {line}")?;
        }
        writeln!(md, "  ````\n")?;
        Ok(())
    };
    let (q, ans) = (clip(q.trim(), 400), clip(ans.trim(), 400));
    let fenced = |t: &str| t.contains("```") || t.lines().count() > 2;
    let inline = |t: &str| t.replace('\n', " ⏎ ");
    if !fenced(&q) && !fenced(&ans) {
        writeln!(md, "- {mark} **Q:** {} **A:** {}", inline(&q), inline(&ans))?;
        return Ok(());
    }
    write!(md, "- {mark} **Q:**")?;
    if fenced(&q) {
        block(md, &q)?;
    } else {
        writeln!(md, " {}\n", inline(&q))?;
    }
    write!(md, "  **A:**")?;
    if fenced(&ans) {
        block(md, &ans)?;
    } else {
        writeln!(md, " {}\n", inline(&ans))?;
    }
    Ok(())
}

/// Memorisation or skill: RL on the prompts it trained on against held-out ones.
fn skill_table(md: &mut String, m: &StageMetrics) -> Result<()> {
    let (Some(seen0), Some(seen1), Some(held0), Some(held1)) =
        (&m.tasks_seen_start, &m.tasks_seen, &m.tasks_start, &m.tasks)
    else {
        return Ok(());
    };
    writeln!(
        md,
        "\n## RL: skill or memorisation? Its own training prompts against held-out questions\n\n\
         A gain on the prompts RL practised that does not show on held-out questions is memorised, not learned.\n\n\
         | task | trained-on prompts: before RL | after RL | change | held-out: before RL | after RL | change |\n|---|---|---|---|---|---|---|"
    )?;
    let row = |label: &str, get: &dyn Fn(&TaskReport) -> Option<f64>| -> String {
        let (s0, s1) = (get(seen0), get(seen1));
        let (h0, h1) = (get(held0), get(held1));
        let d = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:+.1}", 100.0 * (b - a)),
            _ => "–".into(),
        };
        format!(
            "| {label} | {} | {} | {} | {} | {} | {} |",
            pct(s0),
            pct(s1),
            d(s0, s1),
            pct(h0),
            pct(h1),
            d(h0, h1)
        )
    };
    for k in held1.per_kind.keys().filter(|k| *k != "unanswerable") {
        writeln!(
            md,
            "{}",
            row(k, &|v: &TaskReport| v.per_kind.get(k).map(|r| r.accuracy))
        )?;
    }
    writeln!(
        md,
        "{}",
        row("answerable, pooled", &|v: &TaskReport| Some(v.answerable.accuracy))
    )?;
    writeln!(
        md,
        "\nQuestions per task: {} trained-on, {} held-out.",
        questions(seen1, "arithmetic"),
        questions(held1, "arithmetic")
    )?;
    Ok(())
}

/// Accuracy with its 95% interval, as "58.4% [52–64]".
fn pct_ci(r: &KindReport) -> String {
    format!(
        "{} [{:.0}–{:.0}]",
        pct(Some(r.accuracy)),
        100.0 * r.ci95.0,
        100.0 * r.ci95.1
    )
}

/// Multi-turn follow-ups per kind: before the first stage that graded them, after each such
/// stage, and the same model's single-turn accuracy on the kind for comparison.
fn multiturn_section(md: &mut String, stages: &[Stage]) -> Result<()> {
    let mut cols: Vec<(String, &TaskReport)> = Vec::new();
    for st in stages {
        let m = &st.meta.metrics;
        if cols.is_empty() {
            if let Some(r) = &m.tasks_multiturn_start {
                cols.push((format!("before {}", st.name), r));
            }
        }
        if let Some(r) = &m.tasks_multiturn {
            cols.push((format!("after {}", st.name), r));
        }
    }
    let Some((_, last)) = cols.last() else {
        return Ok(());
    };
    // The single-turn column: the stage that first graded the follow-ups, at its end.
    let single = stages
        .iter()
        .find(|st| st.meta.metrics.tasks_multiturn.is_some())
        .and_then(|st| st.meta.metrics.tasks.as_ref().map(|t| (st.name, t)));
    writeln!(
        md,
        "\n## Multi-turn: follow-ups that refer back\n\n\
         Each question needs the turn before it, given as history with its reference answer: arithmetic works on \
         the previous answer (\"Now add 10 to that.\"), facts ask for a held-out fact of the entity the previous \
         question named (\"And when was it founded?\"). Greedy answers; 95% intervals. The last column is the same \
         model asked single questions of that kind (facts: the very same held-out facts, with the entity named).\n"
    )?;
    write!(md, "| follow-up | questions |")?;
    for (c, _) in &cols {
        write!(md, " {c} |")?;
    }
    if let Some((name, _)) = single {
        write!(md, " single-turn, after {name} |")?;
    }
    writeln!(
        md,
        "\n|---|---|{}{}",
        "---|".repeat(cols.len()),
        if single.is_some() { "---|" } else { "" }
    )?;
    for (k, r) in &last.per_kind {
        write!(md, "| {k} | {} |", r.n)?;
        for (_, rep) in &cols {
            write!(md, " {} |", rep.per_kind.get(k).map_or("–".into(), pct_ci))?;
        }
        if let Some((_, t)) = single {
            write!(md, " {} |", t.per_kind.get(k).map_or("–".into(), pct_ci))?;
        }
        writeln!(md)?;
    }
    Ok(())
}

/// The harder held-out slice (one more operation than SFT showed), before and after RL.
fn hard_slice(md: &mut String, m: &StageMetrics) -> Result<()> {
    let (Some(h0), Some(h1)) = (&m.tasks_hard_start, &m.tasks_hard) else {
        return Ok(());
    };
    writeln!(
        md,
        "\n## RL beyond the demonstrations: a harder held-out slice\n\n\
         Problems with one more operation than any SFT conversation or library solution shows.\n\n\
         | slice | questions | before RL | after RL |\n|---|---|---|---|"
    )?;
    for (k, r1) in &h1.per_kind {
        if let Some(r0) = h0.per_kind.get(k) {
            writeln!(md, "| {k} | {} | {} | {} |", r1.n, pct_ci(r0), pct_ci(r1))?;
        }
    }
    Ok(())
}

/// The curriculum: each slot's group success rate over training (first and last logged
/// estimate, prompts drawn), and a plot of the estimates against steps.
fn curriculum_section(md: &mut String, rl: &Stage, run: &Path) -> Result<()> {
    let steps: Vec<RlStep> = lines_of(&rl.log);
    let Some(last) = steps.last().filter(|l| !l.curriculum.is_empty()) else {
        return Ok(());
    };
    writeln!(
        md,
        "\n## RL prompts: the curriculum\n\n\
         Each slot is a generator level or a task kind of a prompt file; its success is the running share of a \
         group's samples that are right (at the sampling temperature). Slots outside the band are drawn less.\n\n\
         | slot | success, early (after 16 prompts) | success, end | prompts drawn | share of prompts |\n|---|---|---|---|---|"
    )?;
    let total: u64 = last.curriculum.iter().map(|s| s.drawn).sum();
    for s in &last.curriculum {
        // The estimate once the slot has ~16 groups behind it (a single group's rate is noise).
        let first = steps.iter().find_map(|l| {
            l.curriculum
                .iter()
                .find(|x| x.slot == s.slot && x.drawn >= 16)
                .and_then(|x| x.success)
        });
        writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            s.slot,
            pct(first),
            pct(s.success),
            s.drawn,
            pct(Some(s.drawn as f64 / total.max(1) as f64))
        )?;
    }
    let groups: usize = steps.iter().map(|l| l.groups_sampled).sum();
    let fresh = match &rl.meta.metrics.prompt_repeats {
        Some(r) if r.is_empty() => "every prompt was fresh".to_string(),
        Some(r) => format!(
            "finite pools went through again: {}",
            r.iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "–".into(),
    };
    writeln!(
        md,
        "\n{groups} groups sampled over {} steps ({fresh}); share of weight in the band at the end: {}.",
        steps.len(),
        pct(Some(last.in_band))
    )?;
    let xs: Vec<String> = steps.iter().map(|l| l.step.to_string()).collect();
    let series: Vec<(String, Vec<f64>)> = last
        .curriculum
        .iter()
        .map(|s| {
            let ys = steps
                .iter()
                .map(|l| {
                    l.curriculum
                        .iter()
                        .find(|x| x.slot == s.slot)
                        .and_then(|x| x.success)
                        .unwrap_or(f64::NAN)
                })
                .collect();
            (s.slot.clone(), ys)
        })
        .collect();
    plot_lines(
        &run.join("curriculum.svg"),
        &LinePlot {
            title: "group success rate per curriculum slot",
            xdesc: "RL step",
            ydesc: "% of a group's samples right",
        },
        &xs,
        &series,
    )?;
    writeln!(md, "\n![curriculum](curriculum.svg)")?;
    Ok(())
}

/// Every eighth RL step line (and the last).
fn rl_dynamics(md: &mut String, rl: &Stage, run: &Path) -> Result<()> {
    let steps: Vec<RlStep> = lines_of(&rl.log);
    if steps.is_empty() {
        return Ok(());
    }
    plot_rl(&steps, &run.join("rl.svg"))?;
    writeln!(md, "\n## RL dynamics\n\n![RL steps](rl.svg)")?;
    writeln!(md, "\n| step | reward | accuracy | abstain | length | zero-adv groups | clip | KL | sample tok/s |\n|---|---|---|---|---|---|---|---|---|")?;
    let every = (steps.len() / 8).max(1);
    for (_, l) in steps
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0 || *i + 1 == steps.len())
    {
        writeln!(
            md,
            "| {} | {:.3} | {} | {} | {:.1} | {} | {} | {:.4} | {:.0} |",
            l.step,
            l.reward_mean,
            pct(Some(l.accuracy)),
            pct(Some(l.abstention_rate)),
            l.completion_len,
            pct(Some(l.zero_adv_groups)),
            pct(Some(l.clip_frac)),
            l.kl,
            l.sample_tok_per_s
        )?;
    }
    Ok(())
}

/// pass@k and maj@k of the final checkpoint, from `evaluate --samples` (`eval-rl.json`).
fn test_time_compute(md: &mut String, v: &EvalFile, run: &Path) -> Result<()> {
    let Some(s) = v.sampled.as_ref().map(|s| &s.answerable) else {
        return Ok(());
    };
    if s.pass_at_k.is_empty() {
        return Ok(());
    }
    let ks: Vec<usize> = s.pass_at_k.keys().copied().collect();
    let xs: Vec<String> = ks.iter().map(|k| k.to_string()).collect();
    let pv: Vec<f64> = ks.iter().map(|k| s.pass_at_k[k]).collect();
    let mv: Vec<f64> = ks
        .iter()
        .map(|k| s.maj_at_k.get(k).copied().unwrap_or(f64::NAN))
        .collect();
    writeln!(
        md,
        "\n## Test-time compute: more samples, slowly more accuracy (final checkpoint, answerable tasks, T = {:?})\n",
        v.temperature
    )?;
    writeln!(md, "| k | {} |\n|---|{}", xs.join(" | "), "---|".repeat(xs.len()))?;
    let row = |v: &[f64]| v.iter().map(|x| pct(Some(*x))).collect::<Vec<_>>().join(" | ");
    writeln!(md, "| pass@k | {} |", row(&pv))?;
    writeln!(md, "| maj@k | {} |", row(&mv))?;
    plot_lines(
        &run.join("passk.svg"),
        &LinePlot {
            title: "pass@k and majority vote against k",
            xdesc: "k (samples per question)",
            ydesc: "% of questions",
        },
        &xs,
        &[("pass@k".into(), pv), ("maj@k".into(), mv)],
    )?;
    writeln!(
        md,
        "\npass@k is the unbiased estimate from all samples of a question (pass@1 = their mean accuracy); \
         maj@k is the majority vote of the first k samples, so maj@1 grades one sample and differs from pass@1 \
         by sampling noise. Neither is the greedy accuracy of the tables above."
    )?;
    writeln!(md, "\n![pass@k](passk.svg)")?;
    Ok(())
}

/// The data each stage read: its mix's sources with their shares and the tokens consumed,
/// or RL's prompt file.
fn data_section(md: &mut String, stages: &[Stage]) -> Result<()> {
    writeln!(md, "\n## Data of each stage\n")?;
    for s in stages {
        let mix = &s.meta.mix;
        let consumed = match &s.meta.metrics.train {
            Some(TrainMetrics::Lm(m)) => Some(&m.consumed_per_source),
            _ => None,
        };
        match mix {
            Some(DataRecord::Mix(mix)) => {
                let parts: Vec<String> = mix
                    .sources
                    .iter()
                    .map(|x| {
                        let name = &x.config.name;
                        let tokens = consumed.and_then(|c| c.get(name)).copied().unwrap_or(0);
                        format!(
                            "{name} {:.0}% ({} tokens)",
                            100.0 * x.share,
                            format_count(tokens as f64)
                        )
                    })
                    .collect();
                writeln!(md, "- **{}** ({}): {}", s.name, mix.path.display(), parts.join(", "))?;
            }
            Some(DataRecord::Prompts(p)) => writeln!(md, "- **{}**: prompts from {}", s.name, p.prompts)?,
            Some(DataRecord::Other(_)) | None => writeln!(md, "- **{}**: prompts from ?", s.name)?,
        }
        if let Some(TrainMetrics::Lm(LmTrainMetrics { overlong: Some(o), .. })) = &s.meta.metrics.train {
            overlong_line(md, o)?;
        }
    }
    Ok(())
}

/// The conversations an SFT run dropped or cut for being longer than a row, when there were any.
fn overlong_line(md: &mut String, o: &OverlongDocs) -> Result<()> {
    let total = o.total();
    if total.cut + total.dropped == 0 {
        return Ok(());
    }
    let what = match o.policy {
        Overlong::Drop => "dropped, never trained on",
        Overlong::Cut => "cut to their first tokens, their ends never trained on",
    };
    let parts: Vec<String> = o
        .per_source
        .iter()
        .filter(|(_, c)| c.cut + c.dropped > 0)
        .map(|(name, c)| {
            let n = c.cut + c.dropped;
            format!(
                "{name} {n} of {} ({:.1}%)",
                c.documents,
                100.0 * n as f64 / c.documents.max(1) as f64
            )
        })
        .collect();
    writeln!(
        md,
        "  - conversations longer than a row of {} tokens ({what}; `data.overlong = \"{}\"`): {}",
        o.row_tokens,
        o.policy.name(),
        parts.join(", ")
    )?;
    Ok(())
}

fn main() -> ExitCode {
    let a = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| run(a))
}
