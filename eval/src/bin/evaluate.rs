//! `evaluate`: evaluates any checkpoint on any task set with the shared verifiers.
use anyhow::{Context, Result};
use clap::Parser;
use common::answers::Extract;
use common::checkpoint;
use common::config::GradingKnobs;
use common::data::mix::in_root;
use common::device::{configure_threads, device_name, seed_everything, DeviceChoice};
use common::metrics::{EvalCounts, EvalFile, EvalSettings};
use common::provenance::Provenance;
use common::sampling::SamplingConfig;
use common::tasks::{
    evaluate_tasks, grade_completions, limit_per_kind, Completions, EvalOptions, TaskReport, TaskSource,
};
use common::verify::{Grader, ProgramExec, RewardWeights, Task};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Evaluate a checkpoint on verifiable tasks: accuracy with a 95% interval, pass@k and
/// majority-vote@k for k = 1, 2, 4, …, format compliance, abstention and hallucination rates.
///
/// Accuracy is greedy (what the stages record in meta.json, so the numbers reproduce);
/// pass@k and maj@k come from --samples answers drawn at --temperature. With sampling,
/// maj@1 is not pass@1: maj@1 grades the first sampled answer only, pass@1 is the unbiased
/// estimate over all samples (their mean accuracy), so the two differ by sampling noise;
/// neither is the greedy accuracy.
///
/// Without a model, `--gold` grades each task's own reference answer (a task set and its
/// answer format check out when that scores 100%) and `--responses FILE` grades given
/// answers (e.g. a `--log-samples` file, or another system's outputs).
///
/// Hub files are read as they ship: name their columns and answer format, e.g. GSM8K:
/// `evaluate runs/default/sft --tasks gsm8k/test.parquet --columns prompt=question --kind gsm8k --answers gsm8k`.
///
/// Examples: evaluate runs/default/rl --samples 8 --out runs/default/eval-rl.json;
/// evaluate runs/default/sft --tasks hard --limit 50;
/// evaluate --tasks gsm8k/test.parquet --columns prompt=question --kind gsm8k --answers gsm8k --gold
#[derive(Parser, Debug)]
#[command(version, args_override_self = true)]
struct Args {
    /// Checkpoint directory (e.g. runs/default/sft); not with --gold or --responses.
    #[arg(required_unless_present_any = ["gold", "responses"], conflicts_with_all = ["gold", "responses"])]
    checkpoint: Option<PathBuf>,
    /// Task set: `default` (the world's held-out tasks, <world>/eval/tasks.parquet), `hard`
    /// (its harder slice, <world>/eval/hard.parquet), `multiturn` (follow-ups that refer back
    /// to an earlier turn, <world>/eval/multiturn.parquet), or a Parquet file (string columns
    /// prompt, answer, task, or others named by --columns; a `history` column of earlier turns
    /// in the chat layout, if any).
    #[arg(long, default_value = "default", value_name = "NAME|FILE")]
    tasks: String,
    /// Where the task file keeps each field, when it names them otherwise: FIELD=COLUMN,
    /// comma-separated (fields: prompt, answer, task, test, entry_point, history), e.g.
    /// `prompt=question` for GSM8K, `answer=canonical_solution,test=test,entry_point=entry_point` for HumanEval.
    #[arg(long, value_delimiter = ',', value_name = "FIELD=COLUMN")]
    columns: Vec<String>,
    /// Kind of every row when the file has no task column; picks the verifier (arithmetic,
    /// math, gsm8k: numeric; program, humaneval, unit-test: run in the sandbox; unanswerable;
    /// anything else: exact match).
    #[arg(long)]
    kind: Option<String>,
    /// How the file writes its answers, for references and completions alike: gsm8k
    /// (`#### 72`), boxed (`\boxed{72}`), answer-line (`Answer: 72`).
    #[arg(long)]
    answers: Option<String>,
    /// Where the reference column keeps the answer (overrides --answers): answer-line, gsm8k,
    /// boxed, last-number, whole, regex:PATTERN.
    #[arg(long, value_name = "EXTRACT")]
    reference: Option<Extract>,
    /// Where completions state their answer (overrides --answers); same choices as --reference.
    #[arg(long, value_name = "EXTRACT")]
    completion: Option<Extract>,
    /// A completion without the answer marker, or cut off at the token budget, is wrong.
    #[arg(long)]
    strict: bool,
    /// Grade each task's reference answer as its completion (no model): checks that a task
    /// set, its columns and its answer format agree; must score 100%.
    #[arg(long)]
    gold: bool,
    /// Grade these model responses (no model): JSONL with `prompt` and `completion` per line
    /// (`finished` and `mode` optional, as --log-samples writes them), or Parquet with string
    /// columns prompt and completion. Matched to the tasks by prompt.
    #[arg(long, value_name = "FILE", conflicts_with = "gold")]
    responses: Option<PathBuf>,
    /// With --responses from a --log-samples file: which answers to grade, greedy or sampled.
    #[arg(long, default_value = "greedy")]
    mode: String,
    /// The world whose named task sets --tasks picks.
    #[arg(long, default_value = "data/default", value_name = "DIR")]
    world: PathBuf,
    /// Directory that a relative --tasks file and --world are found under (default: the
    /// current directory), as a stage's --data-root.
    #[arg(long, value_name = "DIR")]
    data_root: Option<PathBuf>,
    /// Questions per task kind (default: what the checkpoint's stage evaluated, else 125).
    #[arg(long)]
    per_kind: Option<usize>,
    /// Questions in all at most, spread evenly over the task kinds (a quick look).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Samples per question for pass@k / maj@k (1 = greedy only).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Sampling temperature for --samples > 1.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Longest answer in tokens (default: what the checkpoint's stage evaluated with, else 64).
    #[arg(long)]
    max_new_tokens: Option<i64>,
    /// Rows generated together (default: what the checkpoint's stage used, else 128).
    #[arg(long)]
    batch_size: Option<usize>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Write the full report as JSON here (settings, counts, version, commit and date included).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write every graded answer here, one JSON object per line (task, prompt, answer,
    /// completion, extracted answer, verdict): greedy answers, then the --samples draws.
    #[arg(long, value_name = "FILE.jsonl")]
    log_samples: Option<PathBuf>,
    /// Grade program tasks even where this machine's sandbox lacks a guarantee (user
    /// namespaces, Landlock, seccomp), with a loud warning; same as LIB2EXPERT_ALLOW_WEAK_SANDBOX=1.
    #[arg(long)]
    allow_weak_sandbox: bool,
}

/// The Parquet file of a task set: a named set of `world`, or a path.
fn task_file(name: &str, world: &Path, root: Option<&Path>) -> PathBuf {
    let world = in_root(root, world);
    match name {
        "default" => world.join("eval/tasks.parquet"),
        "hard" => world.join("eval/hard.parquet"),
        "multiturn" => world.join("eval/multiturn.parquet"),
        path => in_root(root, path),
    }
}

/// At most `n` of `tasks`, taken in turn from each kind (file order within a kind).
fn spread(tasks: Vec<Task>, n: usize) -> Vec<Task> {
    let mut by_kind: BTreeMap<String, std::collections::VecDeque<Task>> = BTreeMap::new();
    for t in tasks {
        by_kind.entry(t.kind.clone()).or_default().push_back(t);
    }
    let mut out = Vec::new();
    while out.len() < n && by_kind.values().any(|q| !q.is_empty()) {
        for q in by_kind.values_mut() {
            if out.len() < n {
                out.extend(q.pop_front());
            }
        }
    }
    out
}

const NOTES: [&str; 3] = [
    "accuracy, format, abstention and hallucination are of one greedy answer per question (temperature 0), as the stages record them",
    "pass@k is the unbiased estimate from all `samples` answers per question (pass@1 = their mean accuracy); maj@k is the majority vote of the first k sampled answers",
    "maj@1 grades only the first sampled answer and pass@1 averages all of them: with sampling they differ by sampling noise, and neither equals the greedy accuracy",
];

fn table(r: &TaskReport, sampled: Option<&TaskReport>) -> String {
    let mut s = String::from(
        "| task | n | accuracy (95% CI) | format | abstain | hallucination | tokens |\n|---|---|---|---|---|---|---|\n",
    );
    let mut rows: Vec<(&String, &common::tasks::KindReport)> = r.per_kind.iter().collect();
    let all = "answerable (pooled)".to_string();
    rows.push((&all, &r.answerable));
    for (k, v) in rows {
        s.push_str(&format!(
            "| {k} | {} | {:.1}% ({:.1}–{:.1}) | {:.0}% | {:.0}% | {} | {:.1} |\n",
            v.n,
            100.0 * v.accuracy,
            100.0 * v.ci95.0,
            100.0 * v.ci95.1,
            100.0 * v.format_rate,
            100.0 * v.abstention_rate,
            v.hallucination_rate
                .map_or("–".into(), |h| format!("{:.0}%", 100.0 * h)),
            v.mean_tokens
        ));
    }
    if let Some(sr) = sampled {
        let ks: Vec<usize> = sr.answerable.pass_at_k.keys().copied().collect();
        s.push_str(&format!(
            "\n| task | {} |\n|---|{}\n",
            ks.iter()
                .map(|k| format!("pass@{k} | maj@{k}"))
                .collect::<Vec<_>>()
                .join(" | "),
            "---|---|".repeat(ks.len())
        ));
        let mut rows: Vec<(&String, &common::tasks::KindReport)> = sr.per_kind.iter().collect();
        rows.push((&all, &sr.answerable));
        for (k, v) in rows {
            let cells: Vec<String> = ks
                .iter()
                .map(|kk| {
                    format!(
                        "{:.1}% | {:.1}%",
                        100.0 * v.pass_at_k.get(kk).copied().unwrap_or(f64::NAN),
                        100.0 * v.maj_at_k.get(kk).copied().unwrap_or(f64::NAN)
                    )
                })
                .collect();
            s.push_str(&format!("| {k} | {} |\n", cells.join(" | ")));
        }
    }
    s
}

/// The task file of `--tasks` and how the flags say to read it.
fn task_source(a: &Args) -> Result<TaskSource> {
    let src = TaskSource {
        path: task_file(&a.tasks, &a.world, a.data_root.as_deref()),
        columns: common::tasks::parse_column_flags(&a.columns)?,
        kind: a.kind.clone(),
        answers: a.answers.clone(),
        reference: a.reference.clone(),
        completion: a.completion.clone(),
        strict: a.strict,
    };
    src.task_columns()?;
    src.reference()?;
    src.reading()?;
    Ok(src)
}

/// One given completion.
#[derive(serde::Deserialize)]
struct Given {
    prompt: String,
    completion: String,
    #[serde(default = "yes")]
    finished: bool,
    mode: Option<String>,
}

fn yes() -> bool {
    true
}

/// Reads `--responses`: JSONL records, or Parquet with columns prompt and completion.
fn read_completions(path: &Path, mode: &str) -> Result<Vec<Given>> {
    if path.extension().is_some_and(|e| e == "parquet") {
        let src = TaskSource {
            columns: [("answer".to_string(), "completion".to_string())].into(),
            kind: Some("-".into()),
            ..TaskSource::file(path)
        };
        let rows = src.load().with_context(|| {
            format!(
                "--responses {} (Parquet needs string columns prompt and completion)",
                path.display()
            )
        })?;
        return Ok(rows
            .into_iter()
            .map(|t| Given {
                prompt: t.prompt,
                completion: t.answer,
                finished: true,
                mode: None,
            })
            .collect());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading --responses {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let g: Given = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: expected a JSON object with string fields prompt and completion",
                path.display(),
                i + 1
            )
        })?;
        if g.mode.as_deref().is_none_or(|m| m == mode) {
            out.push(g);
        }
    }
    Ok(out)
}

/// `--gold` / `--responses`: grade without a model.
fn grade_only(a: &Args, src: &TaskSource) -> Result<()> {
    let mut tasks = src.load().with_context(|| format!("task set `{}`", a.tasks))?;
    let per_kind = a.per_kind.unwrap_or(usize::MAX);
    let given: Vec<Vec<(String, bool)>> = if a.gold {
        // The reference column as written (before its answer is extracted) is the completion:
        // what a model that learned to answer like the file would write.
        let raw = TaskSource {
            reference: Some(Extract::Whole),
            ..src.clone()
        }
        .load()?;
        raw.into_iter().map(|r| vec![(r.answer, true)]).collect()
    } else {
        let path = a.responses.as_ref().context("--gold or --responses")?;
        let mut by_prompt: BTreeMap<String, std::collections::VecDeque<(String, bool)>> = BTreeMap::new();
        for g in read_completions(path, &a.mode)? {
            by_prompt
                .entry(g.prompt)
                .or_default()
                .push_back((g.completion, g.finished));
        }
        anyhow::ensure!(
            tasks.iter().all(|t| t.history.is_empty()),
            "{} has multi-turn tasks (a history column): completions in {} are matched by prompt, which \
             a follow-up such as \"Double it.\" does not identify; grade multi-turn sets with a model instead",
            src.path.display(),
            path.display()
        );
        let before = tasks.len();
        tasks.retain(|t| by_prompt.contains_key(&t.prompt));
        anyhow::ensure!(
            !tasks.is_empty(),
            "no completion in {} answers a task of {} (matched by prompt; with a --log-samples file, --mode picks greedy or sampled)",
            path.display(),
            src.path.display()
        );
        if tasks.len() < before {
            eprintln!(
                "evaluate: {} of {before} tasks have completions in {}; grading those",
                tasks.len(),
                path.display()
            );
        }
        // A prompt asked several times shares its completions out in file order, the same
        // number to each.
        let mut asked: BTreeMap<&str, usize> = BTreeMap::new();
        for t in &tasks {
            *asked.entry(t.prompt.as_str()).or_default() += 1;
        }
        let mut each: BTreeMap<String, usize> = BTreeMap::new();
        for (p, n) in &asked {
            let c = by_prompt[*p].len();
            anyhow::ensure!(
                c % n == 0,
                "{c} completions for a prompt the task set asks {n} times ({:?}): cannot share them out",
                p.chars().take(60).collect::<String>()
            );
            each.insert(p.to_string(), c / n);
        }
        tasks
            .iter()
            .map(|t| {
                let q = by_prompt.get_mut(&t.prompt).expect("kept tasks have completions");
                (0..each[&t.prompt]).filter_map(|_| q.pop_front()).collect()
            })
            .collect()
    };
    // Same order and per-kind cap for tasks and their completions.
    let mut pairs: Vec<(Task, Vec<(String, bool)>)> = tasks.into_iter().zip(given).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    pairs.retain(|(t, _)| {
        let c = counts.entry(t.kind.clone()).or_default();
        *c += 1;
        *c <= per_kind
    });
    if let Some(n) = a.limit {
        pairs.truncate(n);
    }
    let (tasks, samples): (Vec<Task>, Vec<Vec<(String, bool)>>) = pairs.into_iter().unzip();
    let lengths = samples
        .iter()
        .map(|s| s.iter().map(|(c, _)| c.split_whitespace().count()).collect())
        .collect();
    let exec = ProgramExec {
        allow_weak: a.allow_weak_sandbox,
        ..ProgramExec::default()
    };
    let grader = Grader::new(RewardWeights::default(), exec);
    let report = grade_completions(&tasks, &Completions { samples, lengths }, &grader)?;
    let what = if a.gold {
        "their reference answers"
    } else {
        "given completions"
    };
    println!("{} tasks of {}, graded on {what}\n", tasks.len(), src.path.display());
    println!("{}", table(&report, None).replace("| tokens |", "| words |"));
    let right = report.log.iter().filter(|r| r.correct).count();
    if a.gold && right < report.log.len() {
        let wrong: Vec<&common::tasks::SampleLog> = report.log.iter().filter(|r| !r.correct).take(3).collect();
        for r in &wrong {
            eprintln!(
                "not accepted: {:?} -> extracted {:?} (reference {:?})",
                r.prompt.chars().take(60).collect::<String>(),
                r.extracted,
                r.answer
            );
        }
        anyhow::bail!(
            "{right} of {} reference answers are accepted, not all: the columns, --kind or the answer format (--answers, --reference, --completion) do not fit this file",
            report.log.len()
        );
    }
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", out.display()))?;
        println!("results: {}", out.display());
    }
    Ok(())
}

fn run(a: Args) -> Result<()> {
    configure_threads();
    let src = task_source(&a)?;
    let Some(ckpt) = a.checkpoint.clone() else {
        return grade_only(&a, &src);
    };
    let device = a.device.resolve()?;
    let (_vs, model, loaded) = checkpoint::load_model(&ckpt, device)?;
    let knobs = Knobs::resolve(&a, &loaded.meta.config);
    let tasks_path = src.path.clone();
    let mut tasks = limit_per_kind(
        src.load().with_context(|| format!("task set `{}`", a.tasks))?,
        knobs.per_kind,
    );
    if let Some(n) = a.limit {
        tasks = spread(tasks, n);
    }
    anyhow::ensure!(!tasks.is_empty(), "no tasks to evaluate in {}", tasks_path.display());
    eprintln!(
        "evaluate: {} ({} stage, step {}) on {} questions of {}; answers up to {} tokens ({}){}",
        ckpt.display(),
        loaded.meta.stage,
        loaded.meta.step,
        tasks.len(),
        tasks_path.display(),
        knobs.max_new_tokens,
        knobs.max_new_tokens_from,
        if a.samples > 1 {
            format!(", then {} samples each at T = {}", a.samples, a.temperature)
        } else {
            String::new()
        }
    );
    let (greedy, sampled) = answer(&a, &model, &loaded.tok, &tasks, &knobs, device)?;
    let graded = Graded {
        ckpt: &ckpt,
        stage: &loaded.meta.stage,
        tasks_path: &tasks_path,
        tasks: &tasks,
        greedy,
        sampled,
    };
    print_results(&graded, loaded.meta.step);
    if let Some(out) = &a.out {
        write_results(&a, out, &graded, &knobs, device)?;
    }
    if let Some(path) = &a.log_samples {
        write_samples(path, &graded)?;
    }
    Ok(())
}

/// How a checkpoint is graded: each knob from its flag, else from the checkpoint's stage (what
/// it evaluated with), else a default.
struct Knobs {
    per_kind: usize,
    batch_size: usize,
    max_new_tokens: i64,
    /// Where `max_new_tokens` came from: flag, checkpoint config or default.
    max_new_tokens_from: &'static str,
}

impl Knobs {
    fn resolve(a: &Args, saved_config: &serde_json::Value) -> Self {
        let saved = GradingKnobs::saved_in(saved_config);
        let (max_new_tokens, max_new_tokens_from) = match (a.max_new_tokens, saved.max_new_tokens) {
            (Some(n), _) => (n, "flag"),
            (None, Some(n)) => (n, "checkpoint config"),
            (None, None) => (64, "default"),
        };
        Knobs {
            per_kind: a.per_kind.unwrap_or_else(|| saved.per_kind.unwrap_or(125)),
            batch_size: a.batch_size.unwrap_or_else(|| saved.batch_size.unwrap_or(128)),
            max_new_tokens,
            max_new_tokens_from,
        }
    }
}

/// Greedy answers to every task, then (with `--samples` > 1) that many sampled answers each.
fn answer(
    a: &Args,
    model: &common::model::Gpt,
    tok: &common::tokenizer::Tok,
    tasks: &[Task],
    knobs: &Knobs,
    device: tch::Device,
) -> Result<(TaskReport, Option<TaskReport>)> {
    let exec = ProgramExec {
        allow_weak: a.allow_weak_sandbox,
        ..ProgramExec::default()
    };
    let grader = Grader::new(RewardWeights::default(), exec);
    let mut opts = EvalOptions {
        sampling: SamplingConfig::greedy(knobs.max_new_tokens),
        samples: 1,
        batch_size: knobs.batch_size,
        device,
        progress: Some("greedy".into()),
    };
    let greedy = evaluate_tasks(model, tok, tasks, &grader, &opts)?;
    if a.samples <= 1 {
        return Ok((greedy, None));
    }
    seed_everything(a.seed);
    opts.sampling = SamplingConfig {
        temperature: a.temperature,
        top_k: 0,
        top_p: 1.0,
        max_new_tokens: knobs.max_new_tokens,
    };
    opts.samples = a.samples;
    opts.progress = Some(format!("{} samples", a.samples));
    let sampled = evaluate_tasks(model, tok, tasks, &grader, &opts)?;
    Ok((greedy, Some(sampled)))
}

/// A checkpoint's graded answers.
struct Graded<'a> {
    ckpt: &'a Path,
    stage: &'a str,
    tasks_path: &'a Path,
    tasks: &'a [Task],
    greedy: TaskReport,
    sampled: Option<TaskReport>,
}

fn print_results(g: &Graded, step: u64) {
    println!(
        "{} ({} stage, step {step}) on {} ({} tasks)\n",
        g.ckpt.display(),
        g.stage,
        g.tasks_path.display(),
        g.tasks.len()
    );
    println!("{}", table(&g.greedy, g.sampled.as_ref()));
    if g.sampled.is_some() {
        println!("accuracy is greedy; {}\n", NOTES[2]);
    }
    println!("generation: {:.0} tokens/s", g.greedy.gen_tokens_per_sec);
}

/// `--out`: the results with the settings that produced them.
fn write_results(a: &Args, out: &Path, g: &Graded, knobs: &Knobs, device: tch::Device) -> Result<()> {
    let mut per_kind_n: BTreeMap<String, usize> = BTreeMap::new();
    for t in g.tasks {
        *per_kind_n.entry(t.kind.clone()).or_default() += 1;
    }
    let file = EvalFile {
        checkpoint: g.ckpt.display().to_string(),
        stage: g.stage.to_string(),
        tasks: g.tasks_path.display().to_string(),
        greedy: g.greedy.clone(),
        sampled: g.sampled.clone(),
        temperature: a.temperature,
        notes: NOTES.iter().map(|n| n.to_string()).collect(),
        settings: Some(EvalSettings {
            task_set: a.tasks.clone(),
            per_kind: knobs.per_kind,
            limit: a.limit,
            samples: a.samples,
            temperature: a.temperature,
            max_new_tokens: knobs.max_new_tokens,
            max_new_tokens_from: knobs.max_new_tokens_from.into(),
            batch_size: knobs.batch_size,
            seed: a.seed,
            device: device_name(device),
        }),
        counts: Some(EvalCounts {
            questions: g.tasks.len(),
            per_kind: per_kind_n,
            answers_graded: g.tasks.len() * (1 + if a.samples > 1 { a.samples } else { 0 }),
        }),
        provenance: Some(Provenance::collect(Path::new("."))),
    };
    std::fs::write(out, serde_json::to_string_pretty(&file)?).with_context(|| format!("writing {}", out.display()))?;
    println!("results: {}", out.display());
    Ok(())
}

/// `--log-samples`: every graded answer, one JSON object per line, with its mode.
fn write_samples(path: &Path, g: &Graded) -> Result<()> {
    let mut text = String::new();
    for (mode, r) in [("greedy", Some(&g.greedy)), ("sampled", g.sampled.as_ref())] {
        for rec in r.map(|r| r.log.as_slice()).unwrap_or_default() {
            let mut v = serde_json::to_value(rec)?;
            v["mode"] = mode.into();
            text.push_str(&serde_json::to_string(&v)?);
            text.push('\n');
        }
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("samples: {}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    let a = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| run(a))
}
