//! fabrication: does SFT teach a model to make things up? (Schulman's argument: annotators who
//! answer questions about things the model never read teach it to answer confidently about
//! what it does not know.)
//!
//! For each share S (`datasets build --fabricated-facts S`: S of the SFT fact answers are about
//! entities the library never mentions, stated as confidently as any other), SFT runs from the
//! base run's midtrain checkpoint, then RL with the base run's RL config. Hallucination is
//! measured on the held-out unanswerable questions (entities that exist nowhere) after SFT and
//! after RL; the base run is the share-0 row.
use crate::{count_of, pct, read_meta, share_ci, Ctx};
use anyhow::{Context, Result};
use common::tasks::TaskReport;
use std::path::PathBuf;

struct Row {
    share: f64,
    sft: TaskReport,
    rl: TaskReport,
    dir: PathBuf,
}

fn hallucination(r: &TaskReport) -> Option<(usize, usize)> {
    let u = r.per_kind.get("unanswerable")?;
    let h = u.hallucination_rate?;
    Some((count_of(h, u.n), u.n))
}

fn hal_cell(r: &TaskReport) -> String {
    match hallucination(r) {
        Some((h, n)) => share_ci(h as f64 / n as f64, n),
        None => "–".into(),
    }
}

fn kind_acc(r: &TaskReport, kind: &str) -> String {
    r.per_kind.get(kind).map(|k| pct(k.accuracy)).unwrap_or("–".into())
}

/// Runs the experiment; returns the report's path.
pub fn run(ctx: &Ctx) -> Result<PathBuf> {
    anyhow::ensure!(!ctx.shares.is_empty(), "no shares to compare (--shares)");
    ctx.ensure_base("rl")?;
    let mut runs = vec![(0.0, ctx.base.clone())];
    for &share in &ctx.shares {
        let dir = ctx.out.join(format!("share-{share:.2}"));
        ctx.sft_rl_on_world(&dir, &["--fabricated-facts".to_string(), share.to_string()], |m| {
            m["fabricated_facts"]["share"].as_f64() == Some(share)
        })?;
        runs.push((share, dir));
    }
    let mut rows = Vec::new();
    for (share, dir) in runs {
        let m = read_meta(&dir.join("rl"))?.metrics;
        let none = || format!("{} has no graded tasks in its meta.json", dir.join("rl").display());
        rows.push(Row {
            share,
            sft: m.tasks_start.with_context(none)?,
            rl: m.tasks.with_context(none)?,
            dir,
        });
    }
    let mut md = String::from("# Experiment: fabrication\n\n");
    md.push_str(
        "Claim (Schulman): when annotators answer questions about things the model never read, SFT \
         teaches it to answer confidently about what it does not know. Each row runs SFT from the same \
         midtrain checkpoint on the same conversations, except that a share of the fact answers is about \
         entities the library never mentions (`datasets build --fabricated-facts`), then RL with the \
         same config. Hallucination: the share of held-out questions about entities that exist nowhere \
         answered with anything but \"I don't know\".\n\n\
         | fabricated fact answers in SFT | hallucination after SFT | after RL | facts right: SFT → RL | abstains on answerable: SFT → RL |\n\
         |---|---|---|---|---|\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} → {} | {} → {} |\n",
            pct(r.share),
            hal_cell(&r.sft),
            hal_cell(&r.rl),
            kind_acc(&r.sft, "facts"),
            kind_acc(&r.rl, "facts"),
            pct(r.sft.answerable.abstention_rate),
            pct(r.rl.answerable.abstention_rate)
        ));
    }
    md.push_str("\n95% Wilson intervals. The 0% row is the base run.\n\n![hallucination against the share of fabricated answers](fabrication.svg)\n\nCheckpoints:\n");
    for r in &rows {
        md.push_str(&format!("- {}: `{}`\n", pct(r.share), r.dir.display()));
    }
    let line = |f: &dyn Fn(&Row) -> &TaskReport| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| hallucination(f(r)).map(|(h, n)| (100.0 * r.share, 100.0 * h as f64 / n as f64)))
            .collect()
    };
    crate::plot::lines(
        &ctx.out.join("fabrication.svg"),
        "Hallucination on questions about entities that exist nowhere",
        "% of SFT fact answers fabricated",
        "% hallucinated",
        (0.0, 100.0),
        &[
            ("after SFT".to_string(), line(&|r| &r.sft)),
            ("after RL".to_string(), line(&|r| &r.rl)),
        ],
    )?;
    ctx.write_report(&md)
}
