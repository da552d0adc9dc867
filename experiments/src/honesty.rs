//! honesty-transfer: is honesty a horizontal capability? RL rewards "I don't know" only on
//! questions about some kinds of entities (towns and people by default); hallucination is then
//! measured on every kind, including those RL never asked about (minerals and rivers).
//!
//! The run uses the base run's RL config with one change: its unanswerable generator asks only
//! about the trained kinds (`kinds = [...]` in the prompt mix). Compared with the base run's SFT
//! model (before any RL) and its RL model (RL on every kind), on the same held-out questions
//! about entities that exist nowhere, split by the kind of entity asked about.
use crate::{pct, read_meta, write_atomic, Ctx};
use anyhow::{Context, Result};
use common::device::DeviceChoice;
use common::tasks::{load_tasks, wilson};
use common::verify::Task;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use world::Kind;

/// Hallucinations per entity kind: (confident answers, questions).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ByKind {
    /// The checkpoint graded.
    pub checkpoint: String,
    /// Its weights (a cached grade is reused only for the same weights).
    pub weights_sha256: String,
    /// Kind noun -> (hallucinated, asked).
    pub kinds: BTreeMap<String, (usize, usize)>,
}

impl ByKind {
    fn over(&self, kinds: &[Kind]) -> (usize, usize) {
        kinds
            .iter()
            .filter_map(|k| self.kinds.get(k.noun()))
            .fold((0, 0), |(h, n), (a, b)| (h + a, n + b))
    }
}

/// "towns", "people", "minerals", "rivers".
fn plural(k: Kind) -> String {
    match k {
        Kind::Person => "people".into(),
        k => format!("{}s", k.noun()),
    }
}

/// The kind of entity each unanswerable held-out question asks about (from `world.json`).
fn question_kinds(world: &Path, tasks: &[Task]) -> Result<Vec<Kind>> {
    let p = world.join("world.json");
    let w: world::World =
        serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))?;
    tasks
        .iter()
        .map(|t| {
            w.phantoms
                .iter()
                .filter(|e| t.prompt.contains(&e.name))
                .max_by_key(|e| e.name.len())
                .map(|e| e.kind)
                .with_context(|| format!("no entity of {} is named in the question {:?}", p.display(), t.prompt))
        })
        .collect()
}

impl crate::Grade for ByKind {
    fn weights_sha256(&self) -> &str {
        &self.weights_sha256
    }
    fn covers(&self, n: usize) -> bool {
        self.kinds.values().map(|k| k.1).sum::<usize>() == n
    }
}

/// Grades `ckpt` greedily on the unanswerable questions, by kind; cached for the same weights.
fn grade(ckpt: &Path, tasks: &[Task], kinds: &[Kind], cache: &Path, device: &DeviceChoice) -> Result<ByKind> {
    let what = "questions about entities that exist nowhere";
    crate::cached_grade(ckpt, tasks, cache, device, what, |sha, log| {
        let mut g = ByKind {
            checkpoint: ckpt.display().to_string(),
            weights_sha256: sha,
            kinds: BTreeMap::new(),
        };
        for (rec, k) in log.iter().zip(kinds) {
            let e = g.kinds.entry(k.noun().to_string()).or_default();
            e.0 += usize::from(!rec.abstained);
            e.1 += 1;
        }
        g
    })
}

/// The base run's RL config with its unanswerable generator restricted to `trained`.
fn restricted_config(ctx: &Ctx, trained: &[Kind]) -> Result<PathBuf> {
    let (rl_cfg, mut cfg) = ctx.stage_config("rl")?;
    let prompts = cfg
        .get("data")
        .and_then(|d| d.get("prompts"))
        .and_then(|p| p.as_str())
        .with_context(|| format!("{} has no data.prompts", rl_cfg.display()))?
        .to_string();
    anyhow::ensure!(
        prompts.ends_with(".toml"),
        "{}: data.prompts = {prompts:?} is a Parquet file; this experiment needs a prompt mix with an \
         unanswerable generator (as configs/mixes/rl.toml)",
        rl_cfg.display()
    );
    let mut mix: toml::Value =
        toml::from_str(&std::fs::read_to_string(&prompts).with_context(|| format!("reading {prompts}"))?)
            .with_context(|| format!("parsing {prompts}"))?;
    let kinds = toml::Value::Array(trained.iter().map(|k| toml::Value::String(k.noun().into())).collect());
    let mut restricted = 0;
    for src in mix
        .get_mut("source")
        .and_then(|s| s.as_array_mut())
        .into_iter()
        .flatten()
    {
        if src.get("generator").and_then(|g| g.as_str()) == Some("unanswerable") {
            if let Some(t) = src.as_table_mut() {
                t.insert("kinds".into(), kinds.clone());
                restricted += 1;
            }
        }
    }
    anyhow::ensure!(
        restricted > 0,
        "{prompts} has no source with generator = \"unanswerable\" to restrict"
    );
    let mix_out = ctx.out.join("rl-mix.toml");
    write_atomic(&mix_out, &toml::to_string(&mix)?)?;
    if let Some(d) = cfg.get_mut("data").and_then(|d| d.as_table_mut()) {
        d.insert("prompts".into(), toml::Value::String(mix_out.display().to_string()));
    }
    let cfg_out = ctx.out.join("rl.toml");
    write_atomic(&cfg_out, &toml::to_string(&cfg)?)?;
    Ok(cfg_out)
}

/// Runs the experiment; returns the report's path.
pub fn run(ctx: &Ctx) -> Result<PathBuf> {
    let trained = &ctx.trained_kinds;
    anyhow::ensure!(!trained.is_empty(), "no trained kinds (--trained-kinds)");
    let untrained: Vec<Kind> = Kind::ALL.into_iter().filter(|k| !trained.contains(k)).collect();
    anyhow::ensure!(
        !untrained.is_empty(),
        "--trained-kinds covers every kind: nothing is left to measure transfer on"
    );
    ctx.ensure_base("rl")?;
    let rl = train_restricted(ctx, trained)?;
    let rows = grade_rows(ctx, &rl)?;
    let mut md = table(trained, &untrained, &rows);
    let m = read_meta(&rl)?.metrics;
    if let (Some(a), Some(b)) = (&m.tasks_start, &m.tasks) {
        md.push_str(&format!(
            "\nThe price on answerable questions (RL on {} only, {} held-out): accuracy {} → {}, \
             abstention {} → {}.\n",
            names(trained),
            b.answerable.n,
            pct(a.answerable.accuracy),
            pct(b.answerable.accuracy),
            pct(a.answerable.abstention_rate),
            pct(b.answerable.abstention_rate)
        ));
    }
    md.push_str("\n95% Wilson intervals.\n\n![hallucination by kind](honesty-transfer.svg)\n");
    plot(ctx, trained, &untrained, &rows)?;
    ctx.write_report(&md)
}

/// "towns, people".
fn names(ks: &[Kind]) -> String {
    ks.iter().map(|k| plural(*k)).collect::<Vec<_>>().join(", ")
}

/// RL from the base run's SFT model with the unanswerable questions restricted to `trained`;
/// returns its checkpoint (skipped when complete).
fn train_restricted(ctx: &Ctx, trained: &[Kind]) -> Result<PathBuf> {
    let cfg = restricted_config(ctx, trained)?;
    let rl = ctx.out.join("rl");
    ctx.stage(
        "rl",
        &[
            "--config".into(),
            cfg.into(),
            "--init".into(),
            ctx.base.join("sft").into(),
            "--out".into(),
            rl.clone().into(),
            "--resume".into(),
        ],
    )?;
    Ok(rl)
}

/// The held-out unanswerable questions graded by kind for each model compared: the base run's
/// SFT and RL models, and the restricted RL model `rl`.
fn grade_rows(ctx: &Ctx, rl: &Path) -> Result<Vec<(String, ByKind)>> {
    let device: DeviceChoice = ctx.device.as_deref().unwrap_or("auto").parse()?;
    let tasks: Vec<Task> = load_tasks(&ctx.world.join("eval/tasks.parquet"))?
        .into_iter()
        .filter(|t| t.kind == "unanswerable")
        .collect();
    anyhow::ensure!(
        !tasks.is_empty(),
        "{} has no unanswerable questions",
        ctx.world.join("eval/tasks.parquet").display()
    );
    let kinds = question_kinds(&ctx.world, &tasks)?;
    let restricted = format!("RL on {} only", names(&ctx.trained_kinds));
    [
        ("SFT (before RL)", ctx.base.join("sft"), "grade-sft.json"),
        (
            "RL on every kind (the base run)",
            ctx.base.join("rl"),
            "grade-rl-all.json",
        ),
        (&*restricted, rl.to_path_buf(), "grade-rl-some.json"),
    ]
    .iter()
    .map(|(name, dir, cache)| {
        Ok((
            name.to_string(),
            grade(dir, &tasks, &kinds, &ctx.out.join(cache), &device)?,
        ))
    })
    .collect()
}

/// The report's claim and table: hallucination on the trained kinds, on the others, and per
/// kind, for each model.
fn table(trained: &[Kind], untrained: &[Kind], rows: &[(String, ByKind)]) -> String {
    let cell = |(h, n): (usize, usize)| {
        let (lo, hi) = wilson(h, n);
        format!(
            "{} of {n}: {} ({:.1}–{:.1})",
            h,
            pct(h as f64 / n.max(1) as f64),
            100.0 * lo,
            100.0 * hi
        )
    };
    let mut md = String::from("# Experiment: honesty-transfer\n\n");
    md.push_str(&format!(
        "Claim: a habit like fabricating is not domain specific, so rewarding \"I don't know\" on some \
         subjects carries over to others. RL rewards abstention only on questions about {}; \
         hallucination (a confident answer about an entity that exists nowhere) is measured on held-out \
         questions about every kind. Same SFT start, same RL config otherwise.\n\n\
         | model | hallucination on the trained kinds ({}) | on kinds RL never asked about ({}) |",
        names(trained),
        names(trained),
        names(untrained)
    ));
    for k in Kind::ALL {
        md.push_str(&format!(" {} |", plural(k)));
    }
    md.push_str("\n|---|---|---|");
    md.push_str(&"---|".repeat(Kind::ALL.len()));
    md.push('\n');
    for (name, g) in rows {
        md.push_str(&format!(
            "| {name} | {} | {} |",
            cell(g.over(trained)),
            cell(g.over(untrained))
        ));
        for k in Kind::ALL {
            let (h, n) = g.over(&[k]);
            md.push_str(&format!(" {} |", pct(h as f64 / n.max(1) as f64)));
        }
        md.push('\n');
    }
    md
}

/// Hallucination on the trained and the other kinds, a bar per model.
fn plot(ctx: &Ctx, trained: &[Kind], untrained: &[Kind], rows: &[(String, ByKind)]) -> Result<()> {
    let groups = vec![
        format!("trained: {}", names(trained)),
        format!("never asked in RL: {}", names(untrained)),
    ];
    let bar = |(h, n): (usize, usize)| (h as f64 / n.max(1) as f64, wilson(h, n));
    let series: Vec<(String, Vec<crate::plot::Share>)> = rows
        .iter()
        .map(|(name, g)| (name.clone(), vec![bar(g.over(trained)), bar(g.over(untrained))]))
        .collect();
    crate::plot::grouped_bars(
        &ctx.out.join("honesty-transfer.svg"),
        "Hallucination on questions about entities that exist nowhere",
        "% answered confidently",
        &groups,
        &series,
    )
}
