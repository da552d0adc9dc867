//! `datasets`: builds the embedded default world as Parquet, inspects files and mixes,
//! checks eval sets for contamination by training data, splits a corpus into train and
//! held-out files, and trains a tokenizer on a mix.
mod decontaminate;
mod split;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use common::data::mix::{expand, glob_in_root, in_root, load_mix, Format, ResolvedSource, SourceConfig};
use common::data::parquet::{read_all, Doc};
use common::data::writer::{write_chat, write_tasks, write_text};
use common::tokenizer::{Message, Tok};
use common::verify::Task;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Build, inspect, decontaminate and split lib2expert's datasets, and train tokenizers.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate the default world (library, SFT, RL, eval sets, tokenizer, manifest) from a seed.
    Build {
        /// Seed of the world; the same seed gives byte-identical files.
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        /// Output directory.
        #[arg(long, default_value = "data/default")]
        out: PathBuf,
        /// small (~14 MB library, seconds) or medium (~4x).
        #[arg(long, default_value = "small")]
        scale: String,
        /// Vocabulary size of the tokenizer trained on the library.
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Share of the SFT conversations' worked arithmetic answers that are right (1 = perfect
        /// annotators). Everything else stays identical to the perfect world of the same seed;
        /// eval/annotator.parquet gets the annotator's own answers to the held-out problems.
        #[arg(long, default_value_t = 1.0, value_name = "SHARE")]
        annotator_accuracy: f64,
        /// The annotator's mistakes: habit (adds without carrying, subtracts without borrowing:
        /// systematic) or random (a step off by one or ten).
        #[arg(long, default_value = "habit", value_name = "KIND")]
        annotator_errors: String,
        /// Share of the SFT fact answers about entities the library never mentions (made-up
        /// "ghost" entities the annotators answer about as confidently as any other), to
        /// measure whether SFT teaches fabrication. 0 = none (the default world).
        #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
        fabricated_facts: f64,
        /// Share of the SFT conversations' worked arithmetic written in column working
        /// (`48 + 37: 8+7=15, 4+3+1=8, so 85`) instead of one line per step (`48 + 37 = 85`).
        /// Above 0, half the library's worked arithmetic is written in columns too.
        #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
        column_share: f64,
    },
    /// Show schema, row and token counts and a few samples of a Parquet file or a mix (.toml).
    Inspect {
        /// A .parquet file (globs allowed) or a mix .toml.
        target: String,
        /// Tokenizer for token counts.
        #[arg(long, default_value = "data/default/tokenizer.json")]
        tokenizer: PathBuf,
        /// Samples shown per source.
        #[arg(long, default_value_t = 2)]
        samples: usize,
        /// Format of a bare Parquet file: text, chat or prompt_answer (guessed from columns when omitted).
        #[arg(long)]
        format: Option<String>,
        /// Directory that the mix's relative data paths (or a relative TARGET file) are found
        /// under, as a stage's --data-root (default: the current directory).
        #[arg(long, value_name = "DIR")]
        data_root: Option<PathBuf>,
    },
    /// Report eval rows that share an n-gram with any training source of a mix.
    Decontaminate {
        /// Training mix (.toml).
        #[arg(long)]
        train: PathBuf,
        /// Eval file (.parquet): a task file (its `prompt` column is checked), text or messages.
        #[arg(long)]
        eval: PathBuf,
        /// Where a task file keeps its question, when it names it otherwise: FIELD=COLUMN as
        /// `evaluate --columns` takes it (e.g. `prompt=question` for GSM8K); only the prompt is
        /// checked, other fields are accepted and ignored.
        #[arg(long, value_delimiter = ',', value_name = "FIELD=COLUMN")]
        columns: Vec<String>,
        /// n-gram length in words.
        #[arg(long, default_value_t = 13)]
        n: usize,
        /// Write the eval rows that are clean to this Parquet file (same schema).
        #[arg(long)]
        write_clean: Option<PathBuf>,
        /// Write the report (JSON) here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Directory that the mix's relative data paths and a relative --eval file are found
        /// under, as a stage's --data-root (default: the current directory).
        #[arg(long, value_name = "DIR")]
        data_root: Option<PathBuf>,
    },
    /// Train a byte-level BPE tokenizer on a mix alone (what pretrain's `[tokenizer] train =
    /// true` does before it trains), e.g. for several runs or stages to share.
    Tokenizer {
        /// Mix (.toml) whose sources the tokenizer learns from, each by its share.
        #[arg(long, value_name = "TOML")]
        mix: PathBuf,
        /// Vocabulary size, special tokens included.
        #[arg(long, default_value_t = 4096, value_name = "N")]
        vocab: usize,
        /// Megabytes of text to train on.
        #[arg(long, default_value_t = 8, value_name = "MB")]
        train_mb: usize,
        /// The tokenizer.json to write (its directory is created).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace an existing --out file.
        #[arg(long)]
        force: bool,
        /// Directory that the mix's relative data paths are found under, as a stage's
        /// --data-root (default: the current directory).
        #[arg(long, value_name = "DIR")]
        data_root: Option<PathBuf>,
    },
    /// Split a Parquet file into train.parquet and heldout.parquet without overlap: by
    /// document (identical rows, or rows equal in the --by columns, land on one side),
    /// deterministic for a seed. Files in --out that this command did not write are never
    /// replaced.
    Split {
        /// Parquet file to split (a glob of files with one schema is allowed).
        #[arg(long, value_name = "FILE")]
        input: String,
        /// Share of the distinct documents held out (e.g. 0.05).
        #[arg(long, value_name = "SHARE")]
        heldout: f64,
        /// Directory for train.parquet and heldout.parquet.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Seed of which documents are held out.
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        /// Columns that identify a document, comma-separated (default: all columns), e.g.
        /// `question` so that one question with two answers stays on one side.
        #[arg(long, value_delimiter = ',', value_name = "COLUMN")]
        by: Vec<String>,
    },
}

fn main() -> ExitCode {
    let args = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| match args.cmd {
        Cmd::Build {
            seed,
            out,
            scale,
            vocab_size,
            annotator_accuracy,
            annotator_errors,
            fabricated_facts,
            column_share,
        } => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&fabricated_facts),
                "--fabricated-facts {fabricated_facts} is not a share between 0 and 1"
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(&column_share),
                "--column-share {column_share} is not a share between 0 and 1"
            );
            let opts = world::Options {
                annotator: world::Annotator::calibrated(annotator_accuracy, annotator_errors.parse()?)?,
                fabricated_facts,
                column_share,
            };
            build(seed, &out, &scale, vocab_size, &opts)
        }
        Cmd::Inspect {
            target,
            tokenizer,
            samples,
            format,
            data_root,
        } => inspect(&target, &tokenizer, samples, format.as_deref(), data_root.as_deref()),
        Cmd::Decontaminate {
            train,
            eval,
            columns,
            n,
            write_clean,
            report,
            data_root,
        } => decontaminate::run(&decontaminate::Options {
            train: &train,
            eval: &in_root(data_root.as_deref(), &eval),
            columns: common::tasks::parse_column_flags(&columns)?,
            n,
            write_clean: write_clean.as_deref(),
            report: report.as_deref(),
            root: data_root.as_deref(),
        }),
        Cmd::Tokenizer {
            mix,
            vocab,
            train_mb,
            out,
            force,
            data_root,
        } => tokenizer(&mix, vocab, train_mb, &out, force, data_root.as_deref()),
        Cmd::Split {
            input,
            heldout,
            out,
            seed,
            by,
        } => {
            let t0 = Instant::now();
            let c = split::run(&split::Options {
                input: &input,
                heldout,
                out: &out,
                seed,
                by,
            })?;
            println!(
                "split: {} rows, {} distinct documents ({} rows repeat another); held out {} documents in {} rows ({:.2}% of rows), train {} rows; wrote {} and {} in {:.1}s",
                c.rows,
                c.documents,
                c.rows - c.documents,
                c.heldout_documents,
                c.heldout_rows,
                100.0 * c.heldout_rows as f64 / c.rows.max(1) as f64,
                c.train_rows,
                out.join("train.parquet").display(),
                out.join("heldout.parquet").display(),
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
    })
}

fn to_messages(conv: &[world::Message]) -> Vec<Message> {
    conv.iter().map(|m| Message::new(&m.role, m.content.clone())).collect()
}

fn to_tasks(rows: &[world::TaskRow]) -> Vec<Task> {
    rows.iter()
        .map(|r| Task {
            prompt: r.prompt.clone(),
            answer: r.answer.clone(),
            kind: r.task.clone(),
            history: to_messages(&r.history),
            ..Task::default()
        })
        .collect()
}

/// Documents per library shard.
const SHARD_DOCS: usize = 4096;

fn build(seed: u64, out: &Path, scale: &str, vocab_size: usize, opts: &world::Options) -> Result<()> {
    let t0 = Instant::now();
    let scale: world::Scale = scale.parse()?;
    let g = world::generate_with(seed, scale, opts);
    clear_earlier_build(out)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let sft_train: Vec<Vec<Message>> = g.sft_train.iter().map(|c| to_messages(c)).collect();
    let files = write_world(out, &g, &sft_train)?;
    let gen_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let tok = train_tokenizer(&g, &sft_train, vocab_size)?;
    tok.save(&out.join("tokenizer.json"))?;
    let tok_secs = t1.elapsed().as_secs_f64();
    let (entries, totals) = describe_files(out, &files, &tok)?;
    std::fs::write(out.join("world.json"), serde_json::to_string_pretty(&g.world)?)?;
    let mut manifest = json!({
        "generator": "lib2expert datasets build",
        "version": env!("CARGO_PKG_VERSION"),
        "seed": seed,
        "scale": format!("{scale:?}").to_lowercase(),
        "tokenizer": {"path": "tokenizer.json", "vocab_size": tok.vocab_size()},
        "entities": g.world.entities.len(),
        "phantom_entities": g.world.phantoms.len(),
        "tokens_by_group": totals,
        "files": entries,
    });
    if let Some(a) = annotator_summary(&g) {
        eprintln!(
            "datasets: annotator {} slips, p = {:.3}: right on {:.1}% of the {} held-out arithmetic problems (asked {:.0}%)",
            a["slips"].as_str().unwrap_or_default(),
            a["p"].as_f64().unwrap_or_default(),
            a["heldout_accuracy"].as_f64().unwrap_or_default() * 100.0,
            a["heldout_problems"],
            a["accuracy"].as_f64().unwrap_or_default() * 100.0,
        );
        manifest["annotator"] = a;
    }
    if opts.fabricated_facts > 0.0 {
        manifest["fabricated_facts"] = fabricated_summary(&g, opts, &sft_train);
    }
    if opts.column_share > 0.0 {
        manifest["column_share"] = json!({
            "sft": opts.column_share,
            "library": world::LIBRARY_COLUMN_SHARE.max(opts.column_share),
        });
    }
    std::fs::write(out.join("manifest.json"), serde_json::to_string_pretty(&manifest)?)?;
    eprintln!(
        "datasets: wrote {} files to {} (library {} tokens) in {:.1}s (generate {:.1}s, tokenizer {:.1}s)",
        files.len(),
        out.display(),
        common::progress::format_count(*totals.get("library").unwrap_or(&0) as f64),
        t0.elapsed().as_secs_f64(),
        gen_secs,
        tok_secs
    );
    Ok(())
}

/// Writes the generated world's data as Parquet under `out`; returns each file with its group
/// and row layout, for the manifest.
fn write_world(
    out: &Path,
    g: &world::Generated,
    sft_train: &[Vec<Message>],
) -> Result<Vec<(PathBuf, &'static str, Format)>> {
    let mut files: Vec<(PathBuf, &'static str, Format)> = Vec::new();
    for (name, docs) in &g.library {
        for (i, shard) in docs.chunks(SHARD_DOCS).enumerate() {
            let p = out.join(format!("library/{name}-{i:05}.parquet"));
            write_text(&p, shard)?;
            files.push((p, "library", Format::Text));
        }
    }
    for (name, docs) in &g.library_heldout {
        let p = out.join(format!("heldout/{name}.parquet"));
        write_text(&p, docs)?;
        files.push((p, "heldout", Format::Text));
    }
    let sft_eval: Vec<Vec<Message>> = g.sft_eval.iter().map(|c| to_messages(c)).collect();
    for (p, convs) in [
        (out.join("sft/train.parquet"), sft_train),
        (out.join("sft/eval.parquet"), &sft_eval[..]),
    ] {
        write_chat(&p, convs)?;
        files.push((p, "sft", Format::Chat));
    }
    let mut tasks = vec![
        ("rl/train.parquet", "rl", &g.rl_train),
        ("eval/tasks.parquet", "eval", &g.eval),
        ("eval/hard.parquet", "eval", &g.eval_hard),
        ("eval/multiturn.parquet", "eval", &g.eval_multiturn),
    ];
    if !g.eval_annotator.is_empty() {
        tasks.push(("eval/annotator.parquet", "eval", &g.eval_annotator));
    }
    for (name, group, rows) in tasks {
        let p = out.join(name);
        write_tasks(&p, &to_tasks(rows))?;
        files.push((p, group, Format::PromptAnswer));
    }
    Ok(files)
}

/// The tokenizer of the default world: a byte-level BPE trained on a sample of the library
/// (about 1.5 MB of each source) and the first 1,000 SFT conversations.
fn train_tokenizer(g: &world::Generated, sft_train: &[Vec<Message>], vocab_size: usize) -> Result<Tok> {
    let mut corpus: Vec<&str> = Vec::new();
    for (_, docs) in &g.library {
        let mut bytes = 0;
        for d in docs {
            corpus.push(d);
            bytes += d.len();
            if bytes > 1_500_000 {
                break;
            }
        }
    }
    for c in sft_train.iter().take(1000) {
        for m in c {
            corpus.push(&m.content);
        }
    }
    Tok::train(corpus.iter(), vocab_size)
}

/// The manifest's entry of every file (schema, rows, tokens, bytes), and the tokens per group.
fn describe_files(
    out: &Path,
    files: &[(PathBuf, &str, Format)],
    tok: &Tok,
) -> Result<(Vec<serde_json::Value>, BTreeMap<String, u64>)> {
    let mut entries = Vec::new();
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for (path, group, format) in files {
        let src = single_source(path, *format)?;
        let docs = read_all(&src, None)?;
        let tokens = count_tokens(tok, &docs)?;
        *totals.entry((*group).to_string()).or_default() += tokens;
        entries.push(json!({
            "path": path.strip_prefix(out).unwrap_or(path).display().to_string(),
            "group": group,
            "format": format,
            "schema": schema_string(path)?,
            "rows": docs.len(),
            "tokens": tokens,
            "bytes": std::fs::metadata(path)?.len(),
        }));
    }
    Ok((entries, totals))
}

/// `--fabricated-facts`: how many SFT questions are about entities the library never mentions.
fn fabricated_summary(g: &world::Generated, opts: &world::Options, sft_train: &[Vec<Message>]) -> serde_json::Value {
    let ghost_answers = sft_train
        .iter()
        .flatten()
        .filter(|m| m.role == "user" && g.world.ghosts.iter().any(|e| m.content.contains(&e.name)))
        .count();
    eprintln!(
        "datasets: {ghost_answers} SFT questions about {} entities the library never mentions, answered confidently",
        g.world.ghosts.len()
    );
    json!({
        "share": opts.fabricated_facts,
        "ghost_entities": g.world.ghosts.len(),
        "sft_train_questions": ghost_answers,
    })
}

/// Makes `out` ready for a build: a new or empty directory, or one an earlier build wrote, whose
/// files (those its manifest lists, and nothing else) are removed so that globs match only the new
/// build's shards. Anything else in `out` is the user's: the build refuses instead of deleting it.
fn clear_earlier_build(out: &Path) -> Result<()> {
    if out.is_file() {
        bail!("--out {} is a file: give a directory for the world", out.display());
    }
    let Ok(entries) = std::fs::read_dir(out) else {
        return Ok(()); // does not exist yet
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let manifest = out.join("manifest.json");
    let old: Option<serde_json::Value> = std::fs::read_to_string(&manifest)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let Some(old) = old.filter(|m| m["generator"] == "lib2expert datasets build") else {
        bail!(
            "--out {} already holds files that `datasets build` did not write (e.g. {}): give a new or empty directory",
            out.display(),
            names[0]
        );
    };
    let mut ours: Vec<PathBuf> = old["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["path"].as_str())
        .filter(|p| !p.contains("..") && !Path::new(p).is_absolute())
        .map(|p| out.join(p))
        .collect();
    ours.extend(["tokenizer.json", "world.json", "manifest.json"].map(|f| out.join(f)));
    for f in ours.iter().filter(|f| f.is_file()) {
        std::fs::remove_file(f).with_context(|| format!("removing {} of the earlier build", f.display()))?;
    }
    for sub in ["library", "heldout", "sft", "rl", "eval"] {
        // Only if the earlier build's files were all it held.
        let _ = std::fs::remove_dir(out.join(sub));
    }
    Ok(())
}

/// The annotator of an imperfect world: its settings and its accuracy on the held-out
/// arithmetic problems (`None` for the perfect annotator).
fn annotator_summary(g: &world::Generated) -> Option<serde_json::Value> {
    if g.annotator.is_perfect() {
        return None;
    }
    let gold: std::collections::HashMap<&str, &str> =
        g.eval.iter().map(|t| (t.prompt.as_str(), t.answer.as_str())).collect();
    let right = g
        .eval_annotator
        .iter()
        .filter(|t| gold.get(t.prompt.as_str()) == Some(&t.answer.as_str()))
        .count();
    let n = g.eval_annotator.len().max(1);
    Some(json!({
        "accuracy": g.annotator.accuracy,
        "slips": g.annotator.slips,
        "p": g.annotator.p,
        "heldout_problems": g.eval_annotator.len(),
        "heldout_right": right,
        "heldout_accuracy": right as f64 / n as f64,
        "answers": "eval/annotator.parquet",
    }))
}

fn single_source(path: &Path, format: Format) -> Result<ResolvedSource> {
    let cfg = SourceConfig {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.display().to_string(),
        format,
        columns: BTreeMap::new(),
        weight: Some(1.0),
        tokens: None,
        max_epochs: None,
    };
    let columns = format
        .columns()
        .iter()
        .filter(|(_, req)| *req)
        .map(|(c, _)| (c.to_string(), c.to_string()))
        .collect();
    Ok(ResolvedSource {
        files: expand(&cfg.path)?,
        share: 1.0,
        columns,
        config: cfg,
    })
}

fn count_tokens(tok: &Tok, docs: &[Doc]) -> Result<u64> {
    let mut total = 0u64;
    for chunk in docs.chunks(2048) {
        let texts: Vec<String> = chunk.iter().map(Doc::full_text).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        total += tok.encode_batch(&refs)?.iter().map(|v| v.len() as u64).sum::<u64>();
    }
    Ok(total)
}

fn schema_string(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
    Ok(b.schema()
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", "))
}

fn guess_format(path: &Path) -> Result<Format> {
    let s = schema_string(path)?;
    let has = |c: &str| s.split(", ").any(|f| f.starts_with(&format!("{c}: ")));
    Ok(if has("messages") {
        Format::Chat
    } else if has("text") {
        Format::Text
    } else if has("prompt") && has("answer") {
        Format::PromptAnswer
    } else {
        bail!(
            "{}: cannot tell the format from its columns ({s}); pass --format",
            path.display()
        )
    })
}

/// `datasets tokenizer`: a BPE trained on a mix, written to `out`.
fn tokenizer(mix: &Path, vocab: usize, train_mb: usize, out: &Path, force: bool, root: Option<&Path>) -> Result<()> {
    let out = if out.is_dir() {
        out.join("tokenizer.json")
    } else {
        out.to_path_buf()
    };
    if out.exists() && !force {
        bail!(
            "{} exists: pass --force to replace it, or choose another --out",
            out.display()
        );
    }
    let t0 = Instant::now();
    let mix = load_mix(mix, root)?;
    let tok = Tok::train_on_mix(&mix, vocab, train_mb)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    tok.save(&out)?;
    eprintln!(
        "datasets: trained a {}-token BPE on up to {train_mb} MB of {} ({} sources) in {:.1}s; wrote {}",
        tok.vocab_size(),
        mix.path.display(),
        mix.sources.len(),
        t0.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

fn inspect(target: &str, tokenizer: &Path, samples: usize, format: Option<&str>, root: Option<&Path>) -> Result<()> {
    let tok = if tokenizer.exists() {
        Some(Tok::load(tokenizer)?)
    } else {
        None
    };
    let sources: Vec<ResolvedSource> = if target.ends_with(".toml") {
        load_mix(Path::new(target), root)?.sources
    } else {
        let files = expand(&glob_in_root(root, target))?;
        let format = match format {
            Some(f) => {
                common::config::parse_toml::<BTreeMap<String, Format>>(&format!("f = \"{f}\""), "--format")?["f"]
            }
            None => guess_format(&files[0])?,
        };
        let mut s = single_source(&files[0], format)?;
        s.files = files;
        vec![s]
    };
    for src in &sources {
        println!(
            "== {} ({:?}, share {:.1}%)",
            src.config.name,
            src.config.format,
            100.0 * src.share
        );
        for f in &src.files {
            println!("   {}  [{}]", f.display(), schema_string(f)?);
        }
        let docs = read_all(src, None)?;
        let bytes: usize = docs.iter().map(|d| d.full_text().len()).sum();
        print!("   rows {}  bytes {}", docs.len(), bytes);
        match &tok {
            Some(t) => println!("  tokens {}", count_tokens(t, &docs)?),
            None => println!("  (no tokenizer at {}: token counts skipped)", tokenizer.display()),
        }
        for d in docs.iter().take(samples) {
            let text = match d {
                Doc::Text(t) => t.clone(),
                Doc::Chat(m) => m
                    .iter()
                    .map(|m| format!("[{}] {}", m.role, m.content))
                    .collect::<Vec<_>>()
                    .join("\n"),
            };
            let short: String = text.chars().take(400).collect();
            println!("   ---\n   {}", short.replace('\n', "\n   "));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_is_byte_identical_for_a_seed_and_loads_back() -> Result<()> {
        let a = tempfile::tempdir()?;
        let b = tempfile::tempdir()?;
        build(7, a.path(), "small", 512, &world::Options::default())?;
        build(7, b.path(), "small", 512, &world::Options::default())?;
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(a.path().join("manifest.json"))?)?;
        let files = manifest["files"].as_array().cloned().unwrap_or_default();
        assert!(files.len() >= 10);
        for f in &files {
            let rel = f["path"].as_str().unwrap_or("");
            assert_eq!(
                std::fs::read(a.path().join(rel))?,
                std::fs::read(b.path().join(rel))?,
                "{rel} differs between two builds"
            );
            assert!(f["rows"].as_u64().unwrap_or(0) > 0 && f["tokens"].as_u64().unwrap_or(0) > 0);
        }
        assert_eq!(manifest["seed"], 7);
        // Every file reads back through the project's own loaders.
        let tasks = common::tasks::load_tasks(&a.path().join("eval/tasks.parquet"))?;
        assert!(tasks.len() >= 1000);
        Ok(())
    }

    /// An imperfect annotator changes the SFT arithmetic answers and nothing else, and its own
    /// answers to the held-out problems are written beside the gold ones.
    #[test]
    fn imperfect_annotators_change_only_sft_arithmetic() -> Result<()> {
        let a = tempfile::tempdir()?;
        let b = tempfile::tempdir()?;
        build(7, a.path(), "small", 512, &world::Options::default())?;
        let annotator = world::Annotator::calibrated(0.5, world::Slips::Habit)?;
        build(
            7,
            b.path(),
            "small",
            512,
            &world::Options {
                annotator,
                ..Default::default()
            },
        )?;
        assert!(!a.path().join("eval/annotator.parquet").exists());
        for rel in [
            "library/arithmetic-00000.parquet",
            "heldout/code.parquet",
            "rl/train.parquet",
            "eval/tasks.parquet",
            "eval/hard.parquet",
        ] {
            assert_eq!(
                std::fs::read(a.path().join(rel))?,
                std::fs::read(b.path().join(rel))?,
                "{rel}"
            );
        }
        let read_chat = |dir: &Path| -> Result<Vec<Vec<Message>>> {
            let src = single_source(&dir.join("sft/train.parquet"), Format::Chat)?;
            Ok(read_all(&src, None)?
                .into_iter()
                .filter_map(|d| match d {
                    Doc::Chat(m) => Some(m),
                    _ => None,
                })
                .collect())
        };
        let (pa, pb) = (read_chat(a.path())?, read_chat(b.path())?);
        assert_eq!(pa.len(), pb.len());
        let (mut arith, mut changed) = (0, 0);
        for (ca, cb) in pa.iter().zip(&pb) {
            assert_eq!(ca.len(), cb.len());
            for (ma, mb) in ca.iter().zip(cb) {
                assert_eq!(ma.role, mb.role);
                if ma.role != "assistant" {
                    assert_eq!(ma.content, mb.content, "prompts are the same");
                } else if ma.content.contains(" = ") && !ma.content.contains("Output:") {
                    arith += 1;
                    changed += usize::from(ma.content != mb.content);
                } else {
                    assert_eq!(ma.content, mb.content, "only arithmetic answers change");
                }
            }
        }
        // Asked for 50% right: about half the worked answers carry a slip.
        assert!(
            arith > 1000 && (0.35..0.65).contains(&(changed as f64 / arith as f64)),
            "{changed}/{arith}"
        );
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(b.path().join("manifest.json"))?)?;
        let held = manifest["annotator"]["heldout_accuracy"].as_f64().unwrap_or(-1.0);
        assert!((0.4..0.6).contains(&held), "{held}");
        let mine = common::tasks::load_tasks(&b.path().join("eval/annotator.parquet"))?;
        let gold = common::tasks::load_tasks(&b.path().join("eval/tasks.parquet"))?;
        let gold_arith: Vec<_> = gold.iter().filter(|t| t.kind == "arithmetic").collect();
        assert_eq!(mine.len(), gold_arith.len());
        let right = mine
            .iter()
            .zip(&gold_arith)
            .filter(|(m, g)| m.prompt == g.prompt && m.answer == g.answer)
            .count();
        assert_eq!(
            right,
            manifest["annotator"]["heldout_right"].as_u64().unwrap_or(0) as usize
        );
        Ok(())
    }
}
