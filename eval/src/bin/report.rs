//! `report`: turns a run's checkpoints into `runs/<run>/report.md` with tables and plots.
use anyhow::{Context, Result};
use clap::Parser;
use plotters::prelude::*;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const STAGES: [&str; 4] = ["pretrain", "midtrain", "sft", "rl"];

/// Write the report card of a run: what each stage cost and what it bought.
///
/// Reads runs/<run>/<stage>/meta.json and metrics.jsonl for every stage present (and
/// runs/<run>/eval-rl.json from `eval --samples`, if present) and writes
/// runs/<run>/report.md with SVG plots beside it.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Run directory (e.g. runs/default).
    #[arg(default_value = "runs/default")]
    run: PathBuf,
}

struct Stage {
    name: &'static str,
    meta: Value,
    log: Vec<Value>,
}

fn load(run: &Path) -> Result<Vec<Stage>> {
    let mut out = Vec::new();
    for name in STAGES {
        let dir = run.join(name);
        let Ok(dir) = common::checkpoint::resolve_dir(&dir) else {
            continue;
        };
        let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)
            .with_context(|| format!("parsing {}/meta.json", dir.display()))?;
        let log = std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        out.push(Stage { name, meta, log });
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

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1}%", 100.0 * x))
}

fn plot_loss(stages: &[Stage], path: &Path) -> Result<()> {
    let mut series: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    let mut offset = 0.0;
    let mut bounds = Vec::new();
    for s in stages {
        if s.name == "rl" {
            continue;
        }
        let pts: Vec<(f64, f64)> = s
            .log
            .iter()
            .filter_map(|l| Some((offset + f(&l["step"])?, f(&l["loss"])?)))
            .collect();
        offset += s.meta["step"].as_f64().unwrap_or(0.0);
        bounds.push(offset);
        series.push((s.name, pts));
    }
    let ymax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(0.0f64, f64::max)
        .min(12.0);
    let root = SVGBackend::new(path, (820, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("training loss (nats/token) across stages", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..offset.max(1.0), 0.0..ymax.max(0.1) * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("optimizer step (stages back to back)")
        .y_desc("loss")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA];
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_lines(path: &Path, title: &str, xdesc: &str, xs: &[String], series: &[(String, Vec<f64>)]) -> Result<()> {
    let root = SVGBackend::new(path, (820, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = xs.len().max(2);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(-0.2..(n as f64 - 0.8), 0.0..100.0)?;
    let labels = xs.to_vec();
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| labels.get(x.round() as usize).cloned().unwrap_or_default())
        .x_desc(xdesc)
        .y_desc("%")
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, ys)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<(f64, f64)> = ys
            .iter()
            .enumerate()
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| (x as f64, 100.0 * y))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

fn run(a: Args) -> Result<()> {
    let stages = load(&a.run)?;
    let mut md = String::new();
    writeln!(md, "# lib2expert report: `{}`\n", a.run.display())?;
    writeln!(md, "From library to expert: each stage below starts from the checkpoint of the one before. All figures are measured on held-out data.\n")?;

    // Cost of each stage.
    writeln!(md, "## What each stage cost\n\n| stage | steps | tokens | time | tokens/s | MFU | device |\n|---|---|---|---|---|---|---|")?;
    for s in &stages {
        let t = &s.meta["metrics"]["train"];
        let secs = s.meta["train_secs"].as_f64().unwrap_or(0.0);
        let toks = s.meta["tokens_seen"].as_f64().unwrap_or(0.0);
        let rate = t["tok_per_s"].as_f64().or(t["sample_tok_per_s"].as_f64());
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            s.meta["step"],
            common::progress::format_count(toks) + if s.name == "rl" { " sampled" } else { "" },
            common::progress::format_secs(secs),
            rate.map_or("–".into(), common::progress::format_count) + if s.name == "rl" { " (sampling)" } else { "" },
            t["mfu"].as_f64().map_or("–".into(), |m| format!("{:.0}%", 100.0 * m)),
            s.meta["device"].as_str().unwrap_or("?")
        )?;
    }

    // Held-out bits per byte.
    let lm: Vec<&Stage> = stages
        .iter()
        .filter(|s| s.meta["metrics"]["heldout"].is_object() && s.name != "sft")
        .collect();
    if let Some(first) = lm.first() {
        let sources: Vec<String> = first.meta["metrics"]["heldout"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        writeln!(
            md,
            "\n## What pretraining and midtraining bought: held-out bits per byte\n"
        )?;
        write!(md, "| source | random init |")?;
        for s in &lm {
            write!(md, " {} |", s.name)?;
        }
        writeln!(md, " midtrain vs pretrain |\n|---|---|{}---|", "---|".repeat(lm.len()))?;
        for src in &sources {
            let init = f(&first.meta["metrics"]["heldout_start"][src]["bpb"]);
            write!(md, "| {src} | {} |", init.map_or("–".into(), |x| format!("{x:.3}")))?;
            let mut vals = Vec::new();
            for s in &lm {
                let v = f(&s.meta["metrics"]["heldout"][src]["bpb"]);
                vals.push(v);
                write!(md, " {} |", v.map_or("–".into(), |x| format!("{x:.3}")))?;
            }
            let change = match (vals.first().copied().flatten(), vals.get(1).copied().flatten()) {
                (Some(p), Some(m)) => format!("{:+.1}%", 100.0 * (m / p - 1.0)),
                _ => "–".into(),
            };
            writeln!(md, " {change} |")?;
        }
        writeln!(
            md,
            "\nUnigram floor (nats/token, entropy of each held-out set's own token frequencies): {}",
            sources
                .iter()
                .map(|s| format!(
                    "{s} {:.2}",
                    f(&first.meta["metrics"]["heldout"][s]["unigram_loss"]).unwrap_or(f64::NAN)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        writeln!(
            md,
            "; held-out loss after pretraining: {}.",
            sources
                .iter()
                .map(|s| format!(
                    "{s} {:.2}",
                    f(&first.meta["metrics"]["heldout"][s]["loss"]).unwrap_or(f64::NAN)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    plot_loss(&stages, &a.run.join("loss.svg"))?;
    writeln!(md, "\n![training loss](loss.svg)")?;

    // Task accuracy per stage: base = the checkpoint SFT started from.
    let mut cols: Vec<(String, Value)> = Vec::new();
    if let Some(sft) = stages.iter().find(|s| s.name == "sft") {
        if sft.meta["metrics"]["tasks_start"].is_object() {
            cols.push(("base (before SFT)".into(), sft.meta["metrics"]["tasks_start"].clone()));
        }
        if sft.meta["metrics"]["tasks"].is_object() {
            cols.push(("SFT".into(), sft.meta["metrics"]["tasks"].clone()));
        }
    }
    if let Some(rl) = stages.iter().find(|s| s.name == "rl") {
        if rl.meta["metrics"]["tasks"].is_object() {
            // RL's gain is read against its own starting point on the same questions (the SFT
            // stage may have graded a different number of them).
            if rl.meta["metrics"]["tasks_start"].is_object() {
                cols.push((
                    "before RL (same questions as RL)".into(),
                    rl.meta["metrics"]["tasks_start"].clone(),
                ));
            }
            cols.push(("RL".into(), rl.meta["metrics"]["tasks"].clone()));
        }
    }
    if !cols.is_empty() {
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
            write!(md, " {} |", v["per_kind"]["arithmetic"]["n"])?;
        }
        writeln!(md)?;
        let kinds: Vec<String> = cols[0].1["per_kind"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let mut series: Vec<(String, Vec<f64>)> = Vec::new();
        for k in &kinds {
            write!(md, "| {k} |")?;
            let mut ys = Vec::new();
            for (_, v) in &cols {
                let r = &v["per_kind"][k];
                ys.push(f(&r["accuracy"]).unwrap_or(f64::NAN));
                write!(
                    md,
                    " {} [{:.0}–{:.0}] |",
                    pct(f(&r["accuracy"])),
                    100.0 * f(&r["ci95"][0]).unwrap_or(0.0),
                    100.0 * f(&r["ci95"][1]).unwrap_or(0.0)
                )?;
            }
            writeln!(md)?;
            series.push((k.clone(), ys));
        }
        for (label, key) in [
            ("answerable, pooled", "accuracy"),
            ("format compliance", "format_rate"),
            ("abstention (answerable)", "abstention_rate"),
        ] {
            write!(md, "| {label} |")?;
            for (_, v) in &cols {
                write!(md, " {} |", pct(f(&v["answerable"][key])))?;
            }
            writeln!(md)?;
        }
        write!(
            md,
            "| **hallucination** (confident answers to unanswerable questions) |"
        )?;
        let mut hall = Vec::new();
        for (_, v) in &cols {
            let h = f(&v["per_kind"]["unanswerable"]["hallucination_rate"]);
            hall.push(h.unwrap_or(f64::NAN));
            write!(md, " {} |", pct(h))?;
        }
        writeln!(md)?;
        series.push(("hallucination".into(), hall));
        let xs: Vec<String> = cols.iter().map(|c| c.0.clone()).collect();
        plot_lines(
            &a.run.join("accuracy.svg"),
            "held-out accuracy per task, by stage",
            "stage",
            &xs,
            &series,
        )?;
        writeln!(md, "\n![accuracy by stage](accuracy.svg)")?;
        if let Some((_, last)) = cols.last() {
            writeln!(
                md,
                "\nExamples ({}):\n",
                cols.last().map(|c| c.0.as_str()).unwrap_or("")
            )?;
            for e in last["examples"].as_array().into_iter().flatten().take(8) {
                let q = e[0].as_str().unwrap_or("").replace('\n', " ");
                let ans = e[1].as_str().unwrap_or("").replace('\n', " ⏎ ");
                writeln!(
                    md,
                    "- {} **Q:** {} **A:** {}",
                    if e[2].as_bool() == Some(true) { "✅" } else { "❌" },
                    q.chars().take(140).collect::<String>(),
                    ans.chars().take(160).collect::<String>()
                )?;
            }
        }
    }

    // Memorisation or skill: RL on the prompts it trained on against held-out ones.
    if let Some(rl) = stages.iter().find(|s| s.name == "rl") {
        let m = &rl.meta["metrics"];
        if m["tasks_seen"].is_object() && m["tasks_seen_start"].is_object() && m["tasks_start"].is_object() {
            writeln!(
                md,
                "\n## RL: skill or memorisation? Its own training prompts against held-out questions\n\n\
                 A gain on the prompts RL practised that does not show on held-out questions is memorised, not learned.\n\n\
                 | task | trained-on prompts: before RL | after RL | change | held-out: before RL | after RL | change |\n|---|---|---|---|---|---|---|"
            )?;
            let kinds: Vec<String> = m["tasks"]["per_kind"]
                .as_object()
                .map(|o| o.keys().filter(|k| *k != "unanswerable").cloned().collect())
                .unwrap_or_default();
            let row = |label: &str, get: &dyn Fn(&Value) -> Option<f64>| -> String {
                let (s0, s1) = (get(&m["tasks_seen_start"]), get(&m["tasks_seen"]));
                let (h0, h1) = (get(&m["tasks_start"]), get(&m["tasks"]));
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
            for k in &kinds {
                writeln!(md, "{}", row(k, &|v: &Value| f(&v["per_kind"][k.as_str()]["accuracy"])))?;
            }
            writeln!(
                md,
                "{}",
                row("answerable, pooled", &|v: &Value| f(&v["answerable"]["accuracy"]))
            )?;
            writeln!(
                md,
                "\nQuestions per task: {} trained-on, {} held-out.",
                m["tasks_seen"]["per_kind"]["arithmetic"]["n"], m["tasks"]["per_kind"]["arithmetic"]["n"]
            )?;
        }
    }

    // RL dynamics.
    if let Some(rl) = stages.iter().find(|s| s.name == "rl") {
        let steps: Vec<&Value> = rl.log.iter().filter(|l| l.get("reward_mean").is_some()).collect();
        if !steps.is_empty() {
            writeln!(md, "\n## RL dynamics\n\n| step | reward | accuracy | abstain | length | zero-adv groups | clip | KL | sample tok/s |\n|---|---|---|---|---|---|---|---|---|")?;
            let every = (steps.len() / 8).max(1);
            for l in steps
                .iter()
                .enumerate()
                .filter(|(i, _)| i % every == 0 || *i + 1 == steps.len())
                .map(|(_, l)| l)
            {
                writeln!(
                    md,
                    "| {} | {:.3} | {} | {} | {:.1} | {} | {} | {:.4} | {:.0} |",
                    l["step"],
                    f(&l["reward_mean"]).unwrap_or(0.0),
                    pct(f(&l["accuracy"])),
                    pct(f(&l["abstention_rate"])),
                    f(&l["completion_len"]).unwrap_or(0.0),
                    pct(f(&l["zero_adv_groups"])),
                    pct(f(&l["clip_frac"])),
                    f(&l["kl"]).unwrap_or(0.0),
                    f(&l["sample_tok_per_s"]).unwrap_or(0.0)
                )?;
            }
        }
    }

    // Test-time compute.
    let ev = a.run.join("eval-rl.json");
    if let Ok(text) = std::fs::read_to_string(&ev) {
        let v: Value = serde_json::from_str(&text)?;
        let s = &v["sampled"]["answerable"];
        if let (Some(p), Some(m)) = (s["pass_at_k"].as_object(), s["maj_at_k"].as_object()) {
            let ks: Vec<String> = p.keys().cloned().collect();
            let mut ks_sorted: Vec<usize> = ks.iter().filter_map(|k| k.parse().ok()).collect();
            ks_sorted.sort();
            let xs: Vec<String> = ks_sorted.iter().map(|k| k.to_string()).collect();
            let pv: Vec<f64> = ks_sorted
                .iter()
                .map(|k| f(&p[&k.to_string()]).unwrap_or(f64::NAN))
                .collect();
            let mv: Vec<f64> = ks_sorted
                .iter()
                .map(|k| f(&m[&k.to_string()]).unwrap_or(f64::NAN))
                .collect();
            writeln!(md, "\n## Test-time compute: more samples, slowly more accuracy (final checkpoint, answerable tasks, T = {})\n", v["temperature"])?;
            writeln!(md, "| k | {} |\n|---|{}", xs.join(" | "), "---|".repeat(xs.len()))?;
            writeln!(
                md,
                "| pass@k | {} |",
                pv.iter().map(|x| pct(Some(*x))).collect::<Vec<_>>().join(" | ")
            )?;
            writeln!(
                md,
                "| maj@k | {} |",
                mv.iter().map(|x| pct(Some(*x))).collect::<Vec<_>>().join(" | ")
            )?;
            plot_lines(
                &a.run.join("passk.svg"),
                "pass@k and majority vote against k",
                "k (samples per question)",
                &xs,
                &[("pass@k".into(), pv), ("maj@k".into(), mv)],
            )?;
            writeln!(md, "\n![pass@k](passk.svg)")?;
        }
    }

    // Data mixes.
    writeln!(md, "\n## Data of each stage\n")?;
    for s in &stages {
        let mix = &s.meta["mix"];
        match mix["sources"].as_array() {
            Some(srcs) => {
                let consumed = &s.meta["metrics"]["train"]["consumed_per_source"];
                let parts: Vec<String> = srcs
                    .iter()
                    .map(|x| {
                        let name = x["config"]["name"].as_str().unwrap_or("?");
                        format!(
                            "{name} {:.0}% ({} tokens)",
                            100.0 * f(&x["share"]).unwrap_or(0.0),
                            common::progress::format_count(f(&consumed[name]).unwrap_or(0.0))
                        )
                    })
                    .collect();
                writeln!(
                    md,
                    "- **{}** ({}): {}",
                    s.name,
                    mix["path"].as_str().unwrap_or("?"),
                    parts.join(", ")
                )?;
            }
            None => writeln!(
                md,
                "- **{}**: prompts from {}",
                s.name,
                mix["prompts"].as_str().unwrap_or("?")
            )?,
        }
    }
    let out = a.run.join("report.md");
    std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("report: wrote {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    common::cli::exit_on_error(|| run(a))
}
