//! `eval`: evaluates any checkpoint on any task set with the shared verifiers.
use anyhow::{Context, Result};
use clap::Parser;
use common::checkpoint;
use common::device::{configure_threads, seed_everything, DeviceChoice};
use common::metrics::EvalFile;
use common::sampling::SamplingConfig;
use common::tasks::{evaluate_tasks, limit_per_kind, load_tasks, EvalOptions, TaskReport};
use common::verify::{Grader, ProgramExec, RewardWeights};
use std::path::PathBuf;
use std::process::ExitCode;

/// Evaluate a checkpoint on verifiable tasks: accuracy with a 95% interval, pass@k and
/// majority-vote@k for k = 1, 2, 4, …, format compliance, abstention and hallucination rates.
///
/// Accuracy is greedy (what the stages record in meta.json, so the numbers reproduce);
/// pass@k and maj@k come from --samples answers drawn at --temperature.
///
/// Example: eval runs/default/rl --samples 8 --out runs/default/eval-rl.json
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Checkpoint directory (e.g. runs/default/sft).
    checkpoint: PathBuf,
    /// Task set: Parquet with string columns prompt, answer, task.
    #[arg(long, default_value = "data/default/eval/tasks.parquet")]
    tasks: PathBuf,
    /// Questions per task kind (default: what the checkpoint's stage evaluated, else 125).
    #[arg(long)]
    per_kind: Option<usize>,
    /// Samples per question for pass@k / maj@k (1 = greedy only).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Sampling temperature for --samples > 1.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Longest answer in tokens.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: i64,
    /// Rows generated together (default: what the checkpoint's stage used, else 128).
    #[arg(long)]
    batch_size: Option<usize>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Write the full report as JSON here.
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

fn run(a: Args) -> Result<()> {
    configure_threads();
    let device = a.device.resolve()?;
    let (_vs, model, loaded) = checkpoint::load_model(&a.checkpoint, device)?;
    let per_kind = a.per_kind.unwrap_or_else(|| {
        let c = &loaded.meta.config;
        c["tasks"]["per_kind"]
            .as_u64()
            .or(c["eval"]["per_kind"].as_u64())
            .unwrap_or(125) as usize
    });
    let batch_size = a.batch_size.unwrap_or_else(|| {
        let c = &loaded.meta.config;
        c["tasks"]["batch_size"]
            .as_u64()
            .or(c["eval"]["batch_size"].as_u64())
            .unwrap_or(128) as usize
    });
    let max_new_tokens = {
        let c = &loaded.meta.config;
        c["tasks"]["max_new_tokens"]
            .as_i64()
            .or(c["eval"]["max_new_tokens"].as_i64())
            .unwrap_or(a.max_new_tokens)
    };
    let max_new_tokens = if a.max_new_tokens != 64 {
        a.max_new_tokens
    } else {
        max_new_tokens
    };
    let tasks = limit_per_kind(load_tasks(&a.tasks)?, per_kind);
    let exec = ProgramExec {
        allow_weak: a.allow_weak_sandbox,
        ..ProgramExec::default()
    };
    let grader = Grader::new(RewardWeights::default(), exec);
    let mut opts = EvalOptions {
        sampling: SamplingConfig::greedy(max_new_tokens),
        samples: 1,
        batch_size,
        device,
    };
    let greedy = evaluate_tasks(&model, &loaded.tok, &tasks, &grader, &opts)?;
    let sampled = if a.samples > 1 {
        seed_everything(a.seed);
        opts.sampling = SamplingConfig {
            temperature: a.temperature,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens,
        };
        opts.samples = a.samples;
        Some(evaluate_tasks(&model, &loaded.tok, &tasks, &grader, &opts)?)
    } else {
        None
    };
    println!(
        "{} ({} stage, step {}) on {} ({} tasks)\n",
        a.checkpoint.display(),
        loaded.meta.stage,
        loaded.meta.step,
        a.tasks.display(),
        tasks.len()
    );
    println!("{}", table(&greedy, sampled.as_ref()));
    println!("generation: {:.0} tokens/s", greedy.gen_tokens_per_sec);
    if let Some(out) = &a.out {
        let file = EvalFile {
            checkpoint: a.checkpoint.display().to_string(),
            stage: loaded.meta.stage.clone(),
            tasks: a.tasks.display().to_string(),
            greedy: greedy.clone(),
            sampled: sampled.clone(),
            temperature: a.temperature,
        };
        std::fs::write(out, serde_json::to_string_pretty(&file)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(path) = &a.log_samples {
        let mut text = String::new();
        for (mode, r) in [("greedy", Some(&greedy)), ("sampled", sampled.as_ref())] {
            for rec in r.map(|r| r.log.as_slice()).unwrap_or_default() {
                let mut v = serde_json::to_value(rec)?;
                v["mode"] = mode.into();
                text.push_str(&serde_json::to_string(&v)?);
                text.push('\n');
            }
        }
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("samples: {}", path.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    common::cli::exit_on_error(|| run(a))
}
