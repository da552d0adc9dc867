//! straight-to-rl: RL from the midtrain checkpoint (no SFT) against RL from the SFT checkpoint,
//! the same RL config and budget: reward curve, held-out accuracy, format compliance.
use crate::{read_meta, share_ci, Ctx};
use anyhow::{Context, Result};
use common::metrics::{lines_of, read_jsonl, RlStep};
use common::tasks::TaskReport;
use std::path::{Path, PathBuf};

fn rewards(dir: &Path) -> Vec<(f64, f64)> {
    lines_of::<RlStep>(&read_jsonl(&dir.join("metrics.jsonl")))
        .iter()
        .map(|s| (s.step as f64, s.reward_mean))
        .collect()
}

fn mean(xs: &[(f64, f64)]) -> f64 {
    xs.iter().map(|p| p.1).sum::<f64>() / xs.len().max(1) as f64
}

/// Runs the experiment; returns the report's path.
pub fn run(ctx: &Ctx) -> Result<PathBuf> {
    ctx.ensure_base("rl")?;
    let straight = ctx.out.join("rl-from-midtrain");
    ctx.stage(
        "rl",
        &[
            "--config".into(),
            ctx.config("rl").into(),
            "--init".into(),
            ctx.base.join("midtrain").into(),
            "--out".into(),
            straight.clone().into(),
            "--resume".into(),
        ],
    )?;
    let runs = [
        ("midtrain → RL (no SFT)", straight),
        ("midtrain → SFT → RL (the base run)", ctx.base.join("rl")),
    ];
    let mut md = String::from("# Experiment: straight-to-rl\n\n");
    md.push_str(
        "Claim: RL straight from a base model is inefficient; SFT first gives RL a model that already \
         answers in the expected format, so its samples carry signal. Both runs use the same RL config \
         (steps, prompts, group size, learning rate) and are graded on the same held-out questions.\n\n\
         | run | held-out answerable: start → end | format: start → end | hallucination: start → end | reward, first 5 steps | reward, last 5 steps |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut series = Vec::new();
    for (name, dir) in &runs {
        let m = read_meta(dir)?.metrics;
        let none = || format!("{} has no graded tasks in its meta.json", dir.display());
        let (a, b): (&TaskReport, &TaskReport) = (
            m.tasks_start.as_ref().with_context(none)?,
            m.tasks.as_ref().with_context(none)?,
        );
        let hal = |r: &TaskReport| {
            r.per_kind
                .get("unanswerable")
                .and_then(|u| u.hallucination_rate.map(|h| share_ci(h, u.n)))
                .unwrap_or("–".into())
        };
        let acc = |r: &TaskReport| share_ci(r.answerable.accuracy, r.answerable.n);
        let formatted = |r: &TaskReport| share_ci(r.answerable.format_rate, r.answerable.n);
        let curve = rewards(dir);
        let first = &curve[..curve.len().min(5)];
        let last = &curve[curve.len().saturating_sub(5)..];
        md.push_str(&format!(
            "| {name} | {} → {} | {} → {} | {} → {} | {:.3} | {:.3} |\n",
            acc(a),
            acc(b),
            formatted(a),
            formatted(b),
            hal(a),
            hal(b),
            mean(first),
            mean(last)
        ));
        series.push((name.to_string(), curve));
    }
    md.push_str(
        "\n95% Wilson intervals (answerable questions for accuracy and format, unanswerable ones for \
         hallucination).\n\n![mean reward per RL step](straight-to-rl.svg)\n",
    );
    crate::plot::lines(
        &ctx.out.join("straight-to-rl.svg"),
        "Mean reward of the sampled answers per RL step",
        "RL step",
        "mean reward",
        (-0.4, 1.0),
        &series,
    )?;
    ctx.write_report(&md)
}
