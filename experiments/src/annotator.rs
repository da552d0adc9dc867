//! annotator-ceiling: does SFT cap a model at its annotators' level, and does RL with a
//! verifier go beyond it?
//!
//! For each imperfect annotator (`datasets build --annotator-accuracy A --annotator-errors E`:
//! the same world, only the SFT conversations' worked arithmetic slips), SFT runs from the base
//! run's midtrain checkpoint on that annotator's conversations, then RL from that SFT model
//! with the base run's RL config. Every model answers the same held-out arithmetic problems the
//! annotator was also asked, so the table reads annotator vs SFT vs RL on one set. Where the
//! annotator slips, the table also counts how often a model gives the annotator's *exact* wrong
//! answer: inheritance, not just error. The base run (perfect annotators) is the first row and,
//! for that count, the control: a model never shown the slips.
use crate::{is_complete, pct, pct_ci, read_meta, Ctx};
use anyhow::Result;
use common::device::DeviceChoice;
use common::tasks::{load_tasks, wilson};
use common::verify::{Grader, ProgramExec, RewardWeights, Task};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A model's answers to the held-out arithmetic problems, against the gold answers and against
/// one annotator's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArithGrade {
    /// The checkpoint graded.
    pub checkpoint: String,
    /// Its weights (a cached grade is reused only for the same weights).
    pub weights_sha256: String,
    /// Problems.
    pub n: usize,
    /// Answered right.
    pub right: usize,
    /// Problems the annotator answers wrong.
    pub annotator_wrong: usize,
    /// Of those, how many the model answers with the annotator's exact wrong answer.
    pub repeats_slip: usize,
    /// Of those, how many the model answers right.
    pub right_where_annotator_wrong: usize,
    /// Per problem, in order: answered right.
    #[serde(default)]
    pub correct: Vec<bool>,
}

impl ArithGrade {
    fn accuracy(&self) -> f64 {
        self.right as f64 / self.n.max(1) as f64
    }

    fn repeat_rate(&self) -> f64 {
        self.repeats_slip as f64 / self.annotator_wrong.max(1) as f64
    }
}

impl crate::Grade for ArithGrade {
    fn weights_sha256(&self) -> &str {
        &self.weights_sha256
    }
    fn covers(&self, n: usize) -> bool {
        self.n == n && self.correct.len() == n
    }
}

/// Grades `ckpt` greedily on `gold` (arithmetic tasks), also against `annotator` (prompt ->
/// the annotator's answer). Cached in `cache` for the same weights.
fn grade(
    ckpt: &Path,
    gold: &[Task],
    annotator: &HashMap<String, String>,
    cache: &Path,
    device: &DeviceChoice,
) -> Result<ArithGrade> {
    let what = "held-out arithmetic problems";
    crate::cached_grade(ckpt, gold, cache, device, what, |sha, log| {
        let mut g = ArithGrade {
            checkpoint: ckpt.display().to_string(),
            weights_sha256: sha,
            n: gold.len(),
            right: 0,
            annotator_wrong: 0,
            repeats_slip: 0,
            right_where_annotator_wrong: 0,
            correct: Vec::with_capacity(gold.len()),
        };
        let grader = Grader::new(RewardWeights::default(), ProgramExec::default());
        for (task, rec) in gold.iter().zip(log) {
            g.right += usize::from(rec.correct);
            g.correct.push(rec.correct);
            let Some(theirs) = annotator.get(&task.prompt) else {
                continue;
            };
            if *theirs == task.answer {
                continue;
            }
            g.annotator_wrong += 1;
            g.right_where_annotator_wrong += usize::from(rec.correct);
            let as_theirs = Task {
                answer: theirs.clone(),
                ..task.clone()
            };
            g.repeats_slip += usize::from(grader.grade(&as_theirs, &rec.completion).correct);
        }
        g
    })
}

/// The mean of `b - a` over paired per-problem outcomes, with a 95% interval (normal
/// approximation of the paired difference: both models answered the same problems).
pub fn paired_gain(a: &[bool], b: &[bool]) -> (f64, (f64, f64)) {
    let n = a.len().min(b.len()).max(1) as f64;
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(u8::from(*y)) - f64::from(u8::from(*x)))
        .collect();
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let half = 1.96 * (var / n).sqrt();
    (mean, (mean - half, mean + half))
}

/// One annotator's row: its data, SFT and RL checkpoints and grades.
struct Row {
    label: String,
    annotator_right: usize,
    sft: ArithGrade,
    rl: ArithGrade,
    /// The perfect-annotator SFT model graded against this annotator (never shown its slips).
    control: Option<ArithGrade>,
    sft_dir: PathBuf,
    rl_dir: PathBuf,
}

/// Builds the annotator's world, then SFT and RL on it (complete stages are skipped).
fn train_variant(ctx: &Ctx, slips: world::Slips, accuracy: f64) -> Result<PathBuf> {
    let dir = ctx.out.join(format!("{}-{accuracy:.2}", slips.name()));
    let args = [
        "--annotator-accuracy".to_string(),
        accuracy.to_string(),
        "--annotator-errors".into(),
        slips.name().into(),
    ];
    ctx.sft_rl_on_world(&dir, &args, |m| {
        m["annotator"]["slips"] == slips.name() && m["annotator"]["accuracy"].as_f64() == Some(accuracy)
    })?;
    Ok(dir)
}

/// The held-out arithmetic problems of a world.
fn heldout_arithmetic(world: &Path) -> Result<Vec<Task>> {
    let tasks = load_tasks(&world.join("eval/tasks.parquet"))?;
    Ok(tasks.into_iter().filter(|t| t.kind == "arithmetic").collect())
}

/// Runs the experiment; returns the report's path.
pub fn run(ctx: &Ctx) -> Result<PathBuf> {
    anyhow::ensure!(!ctx.annotators.is_empty(), "no annotators to compare (--annotators)");
    ctx.ensure_base("rl")?;
    let device: DeviceChoice = ctx.device.as_deref().unwrap_or("auto").parse()?;
    let gold = heldout_arithmetic(&ctx.world)?;
    anyhow::ensure!(
        !gold.is_empty(),
        "{} has no arithmetic problems",
        ctx.world.join("eval/tasks.parquet").display()
    );
    let perfect: HashMap<String, String> = gold.iter().map(|t| (t.prompt.clone(), t.answer.clone())).collect();
    let base_dir = ctx.out.join("perfect");
    let (base_sft, base_rl) = (ctx.base.join("sft"), ctx.base.join("rl"));
    let mut rows = vec![Row {
        label: "perfect (the base run)".into(),
        annotator_right: gold.len(),
        sft: grade(&base_sft, &gold, &perfect, &base_dir.join("grade-sft.json"), &device)?,
        rl: grade(&base_rl, &gold, &perfect, &base_dir.join("grade-rl.json"), &device)?,
        control: None,
        sft_dir: base_sft.clone(),
        rl_dir: base_rl,
    }];
    for &(slips, accuracy) in &ctx.annotators {
        let dir = train_variant(ctx, slips, accuracy)?;
        let data = dir.join("data");
        let theirs: HashMap<String, String> = load_tasks(&data.join("eval/annotator.parquet"))?
            .into_iter()
            .map(|t| (t.prompt, t.answer))
            .collect();
        let variant_gold = heldout_arithmetic(&data)?;
        anyhow::ensure!(
            variant_gold
                .iter()
                .map(|t| &t.prompt)
                .eq(gold.iter().map(|t| &t.prompt)),
            "{} and {} hold different held-out problems: was the annotator's world built from another seed?",
            data.display(),
            ctx.world.display()
        );
        let annotator_right = gold.iter().filter(|t| theirs.get(&t.prompt) == Some(&t.answer)).count();
        let (sft_dir, rl_dir) = (dir.join("sft"), dir.join("rl"));
        anyhow::ensure!(is_complete(&rl_dir), "{} did not complete", rl_dir.display());
        rows.push(Row {
            label: format!("{} slips, asked {:.0}% right", slips.name(), 100.0 * accuracy),
            annotator_right,
            sft: grade(&sft_dir, &gold, &theirs, &dir.join("grade-sft.json"), &device)?,
            rl: grade(&rl_dir, &gold, &theirs, &dir.join("grade-rl.json"), &device)?,
            control: Some(grade(
                &base_sft,
                &gold,
                &theirs,
                &dir.join("grade-control.json"),
                &device,
            )?),
            sft_dir,
            rl_dir,
        });
    }
    write_report(ctx, &rows, gold.len())
}

fn write_report(ctx: &Ctx, rows: &[Row], n: usize) -> Result<PathBuf> {
    let mut md = String::from("# Experiment: annotator-ceiling\n\n");
    md.push_str(
        "Claim: SFT caps a model at its annotators' level; RL with a verifier goes beyond it.\n\n\
         Each row trains SFT from the same midtrain checkpoint on the same conversations, except that \
         the annotators who wrote the worked arithmetic slip (`datasets build --annotator-accuracy`): \
         *habit* slips are systematic (adding without carrying, subtracting the smaller digit from the \
         larger), *random* slips put one step off by one or ten. RL then runs with the same config from \
         each SFT model. Everything is graded greedily on the same held-out arithmetic problems, which \
         the annotators were asked too.\n\n",
    );
    md.push_str(
        "| annotators | annotators right | SFT | RL | RL − SFT | where annotators slip: SFT gives their wrong answer | RL gives it | SFT right there | RL right there |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    for r in rows {
        let a = r.annotator_right as f64 / n as f64;
        let (slip_cols, ann) = match &r.control {
            None => ("– | – | – | –".to_string(), "100%".to_string()),
            Some(_) => (
                format!(
                    "{} of {} ({}) | {} ({}) | {} | {}",
                    r.sft.repeats_slip,
                    r.sft.annotator_wrong,
                    pct(r.sft.repeat_rate()),
                    r.rl.repeats_slip,
                    pct(r.rl.repeat_rate()),
                    pct(r.sft.right_where_annotator_wrong as f64 / r.sft.annotator_wrong.max(1) as f64),
                    pct(r.rl.right_where_annotator_wrong as f64 / r.rl.annotator_wrong.max(1) as f64),
                ),
                pct_ci(a, wilson(r.annotator_right, n)),
            ),
        };
        let (gain, (lo, hi)) = paired_gain(&r.sft.correct, &r.rl.correct);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:+.1} ({:+.1}…{:+.1}) | {} |\n",
            r.label,
            ann,
            pct_ci(r.sft.accuracy(), wilson(r.sft.right, n)),
            pct_ci(r.rl.accuracy(), wilson(r.rl.right, n)),
            100.0 * gain,
            100.0 * lo,
            100.0 * hi,
            slip_cols
        ));
    }
    md.push_str(&format!(
        "\n{n} held-out arithmetic problems (1-3 operations); 95% Wilson intervals.\n"
    ));
    for r in rows.iter().filter(|r| r.control.is_some()) {
        if let Some(c) = &r.control {
            md.push_str(&format!(
                "Control for *{}*: the perfect-annotator SFT model, never shown these slips, gives the \
                 annotators' wrong answer on {} of the {} problems where they slip ({}).\n",
                r.label,
                c.repeats_slip,
                c.annotator_wrong,
                pct(c.repeat_rate())
            ));
        }
    }
    md.push_str("\n![annotators, SFT and RL on the held-out arithmetic](annotator-ceiling.svg)\n\n");
    md.push_str("## Everything else RL measured (from each RL checkpoint's meta.json)\n\n");
    md.push_str("| annotators | answerable: SFT → RL | hallucination: SFT → RL | 4-operation slice: SFT → RL |\n|---|---|---|---|\n");
    for r in rows {
        let m = read_meta(&r.rl_dir)?.metrics;
        let ans = |t: &Option<common::tasks::TaskReport>| {
            t.as_ref().map(|t| pct(t.answerable.accuracy)).unwrap_or("–".into())
        };
        let hal = |t: &Option<common::tasks::TaskReport>| {
            t.as_ref()
                .and_then(|t| t.per_kind.get("unanswerable"))
                .and_then(|k| k.hallucination_rate)
                .map(pct)
                .unwrap_or("–".into())
        };
        md.push_str(&format!(
            "| {} | {} → {} | {} → {} | {} → {} |\n",
            r.label,
            ans(&m.tasks_start),
            ans(&m.tasks),
            hal(&m.tasks_start),
            hal(&m.tasks),
            ans(&m.tasks_hard_start),
            ans(&m.tasks_hard)
        ));
    }
    md.push_str("\nCheckpoints:\n");
    for r in rows {
        md.push_str(&format!(
            "- {}: `{}`, `{}`\n",
            r.label,
            r.sft_dir.display(),
            r.rl_dir.display()
        ));
    }
    let groups: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let bar = |right: usize| (right as f64 / n as f64, wilson(right, n));
    let series = vec![
        (
            "annotators".to_string(),
            rows.iter().map(|r| bar(r.annotator_right)).collect(),
        ),
        ("SFT".to_string(), rows.iter().map(|r| bar(r.sft.right)).collect()),
        ("RL".to_string(), rows.iter().map(|r| bar(r.rl.right)).collect()),
    ];
    crate::plot::grouped_bars(
        &ctx.out.join("annotator-ceiling.svg"),
        "Held-out arithmetic: annotators, SFT on their answers, RL after it",
        "% right",
        &groups,
        &series,
    )?;
    ctx.write_report(&md)
}

#[cfg(test)]
mod tests {
    use super::paired_gain;

    #[test]
    fn paired_gain_counts_flips() {
        // 10 problems: 3 flip to right, 1 flips to wrong, 6 unchanged: +20 points.
        let a = [false, false, false, true, true, true, false, false, true, false];
        let b = [true, true, true, false, true, true, false, false, true, false];
        let (g, (lo, hi)) = paired_gain(&a, &b);
        assert!((g - 0.2).abs() < 1e-12);
        assert!(lo < 0.2 && hi > 0.2 && lo > -0.3 && hi < 0.7, "{lo} {hi}");
        assert_eq!(paired_gain(&a, &a).1, (0.0, 0.0));
    }
}
