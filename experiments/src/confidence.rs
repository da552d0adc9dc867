//! confidence-targets: every stage scored as Kalai et al. (2025, "Why language models
//! hallucinate") propose: under a confidence target t, a right answer earns 1, "I don't know"
//! 0, a wrong answer (or any answer to an unanswerable question) loses t/(1-t). Plain accuracy
//! (t = 0) rewards guessing; the higher t, the more abstaining pays when unsure.
use crate::{pct, read_meta, Ctx};
use anyhow::{Context, Result};
use common::tasks::TaskReport;
use std::path::PathBuf;

/// Confidence targets of the table.
pub const TARGETS: [f64; 4] = [0.0, 0.5, 0.75, 0.9];

/// Outcome counts of one graded stage, over answerable and unanswerable questions together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcomes {
    /// Answerable questions answered right.
    pub right: f64,
    /// Questions answered "I don't know" (answerable or not).
    pub abstained: f64,
    /// Answerable questions answered wrong, plus unanswerable ones answered at all.
    pub wrong: f64,
}

impl Outcomes {
    /// From a task report: answerable kinds pooled, plus the unanswerable kind.
    pub fn of(r: &TaskReport) -> Outcomes {
        let a = &r.answerable;
        let na = a.n as f64;
        let mut o = Outcomes {
            right: a.accuracy * na,
            abstained: a.abstention_rate * na,
            wrong: (1.0 - a.accuracy - a.abstention_rate).max(0.0) * na,
        };
        if let Some(u) = r.per_kind.get("unanswerable") {
            let nu = u.n as f64;
            let hallucinated = u.hallucination_rate.unwrap_or(1.0 - u.abstention_rate) * nu;
            o.wrong += hallucinated;
            o.abstained += nu - hallucinated;
        }
        o
    }

    fn n(&self) -> f64 {
        self.right + self.abstained + self.wrong
    }

    /// Mean score under target `t` and its 95% interval (normal approximation over questions).
    pub fn score(&self, t: f64) -> (f64, (f64, f64)) {
        let w = t / (1.0 - t);
        let n = self.n().max(1.0);
        let mean = (self.right - w * self.wrong) / n;
        let second = (self.right + w * w * self.wrong) / n;
        let se = ((second - mean * mean).max(0.0) / n).sqrt();
        (mean, (mean - 1.96 * se, mean + 1.96 * se))
    }
}

/// Runs the experiment; returns the report's path.
pub fn run(ctx: &Ctx) -> Result<PathBuf> {
    ctx.ensure_base("rl")?;
    let sft = read_meta(&ctx.base.join("sft"))?.metrics;
    let rl = read_meta(&ctx.base.join("rl"))?.metrics;
    let missing =
        |what: &str| format!("{what} has no graded tasks in its meta.json (run it with its [tasks]/[eval] section)");
    let stages: Vec<(&str, &TaskReport)> = vec![
        (
            "midtrain (graded by SFT at its start)",
            sft.tasks_start.as_ref().with_context(|| missing("sft"))?,
        ),
        (
            "SFT (graded by RL at its start)",
            rl.tasks_start.as_ref().with_context(|| missing("rl"))?,
        ),
        ("RL", rl.tasks.as_ref().with_context(|| missing("rl"))?),
    ];
    let mut md = String::from("# Experiment: confidence-targets\n\n");
    md.push_str(
        "Claim (Kalai et al., 2025): accuracy-only grading rewards guessing; under a confidence target t \
         (right +1, \"I don't know\" 0, wrong or answering an unanswerable question −t/(1−t)) a model \
         that abstains when unsure scores higher. Each stage of the base run, graded on its held-out \
         questions (answerable kinds and unanswerable ones together):\n\n",
    );
    md.push_str("| stage | questions | answerable right | abstains on answerable | hallucination (unanswerable) |");
    for t in TARGETS {
        md.push_str(&format!(" score t = {t} |"));
    }
    md.push_str("\n|---|---|---|---|---|");
    md.push_str(&"---|".repeat(TARGETS.len()));
    md.push('\n');
    let mut series = Vec::new();
    for (name, r) in &stages {
        let o = Outcomes::of(r);
        let hal = r
            .per_kind
            .get("unanswerable")
            .and_then(|u| u.hallucination_rate)
            .map(pct)
            .unwrap_or("–".into());
        md.push_str(&format!(
            "| {name} | {:.0} | {} | {} | {hal} |",
            o.n(),
            pct(r.answerable.accuracy),
            pct(r.answerable.abstention_rate)
        ));
        for t in TARGETS {
            let (s, (lo, hi)) = o.score(t);
            md.push_str(&format!(" {s:+.3} ({lo:+.2}…{hi:+.2}) |"));
        }
        md.push('\n');
        let pts: Vec<(f64, f64)> = (0..=18).map(|i| i as f64 * 0.05).map(|t| (t, o.score(t).0)).collect();
        series.push((name.to_string(), pts));
    }
    md.push_str(
        "\nScores are means per question, with 95% intervals. At t = 0 the score is the share of all \
         questions answered right (an abstention scores like an error); the higher t, the more each \
         confident error costs.\n\n![score against the confidence target](confidence-targets.svg)\n",
    );
    let lo = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(0.0f64, f64::min);
    crate::plot::lines(
        &ctx.out.join("confidence-targets.svg"),
        "Score per question under a confidence target t",
        "confidence target t",
        "score",
        (lo.floor().min(-1.0), 1.0),
        &series,
    )?;
    ctx.write_report(&md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_rule() {
        // 6 right, 2 abstained, 2 wrong: t = 0.5 costs 1 per error, t = 0.75 costs 3.
        let o = Outcomes {
            right: 6.0,
            abstained: 2.0,
            wrong: 2.0,
        };
        assert!((o.score(0.0).0 - 0.6).abs() < 1e-12);
        assert!((o.score(0.5).0 - 0.4).abs() < 1e-12);
        assert!((o.score(0.75).0 - 0.0).abs() < 1e-12);
        let (m, (lo, hi)) = o.score(0.5);
        assert!(lo < m && m < hi);
        // Abstaining instead of erring raises the score at any t > 0.
        let careful = Outcomes {
            right: 6.0,
            abstained: 4.0,
            wrong: 0.0,
        };
        assert!(careful.score(0.5).0 > o.score(0.5).0);
        assert_eq!(careful.score(0.0).0, o.score(0.0).0);
    }
}
