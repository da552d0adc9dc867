//! n-gram decontamination: which eval rows share a word n-gram (or their whole text) with
//! the training sources of a mix.
use anyhow::{bail, Context, Result};
use arrow::array::{BooleanArray, RecordBatch};
use common::data::mix::load_mix;
use common::data::parquet::{read_all, Doc};
use common::data::Format;
use common::tasks::TaskSource;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde_json::json;
use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::Path;

/// Lower-cased alphanumeric words of `text`.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn hash_words(ws: &[String]) -> u64 {
    let mut h = DefaultHasher::new();
    ws.hash(&mut h);
    h.finish()
}

/// Hashes of every word n-gram of `text`.
pub fn ngrams(text: &str, n: usize) -> Vec<u64> {
    let w = words(text);
    if w.len() < n {
        return Vec::new();
    }
    w.windows(n).map(hash_words).collect()
}

/// The text units of a document: the whole text, and each message of a conversation.
fn units(d: &Doc) -> Vec<String> {
    match d {
        Doc::Text(t) => vec![t.clone()],
        Doc::Chat(m) => m.iter().map(|m| m.content.clone()).collect(),
    }
}

/// Index of the training side.
pub struct TrainIndex {
    n: usize,
    grams: HashSet<u64>,
    whole: HashSet<u64>,
}

impl TrainIndex {
    /// Indexes every document of every source of the mix (relative data paths under `root`).
    pub fn build(mix_path: &Path, n: usize, root: Option<&Path>) -> Result<Self> {
        let mix = load_mix(mix_path, root)?;
        let mut idx = TrainIndex {
            n,
            grams: HashSet::new(),
            whole: HashSet::new(),
        };
        for src in &mix.sources {
            for d in read_all(src, None)? {
                for u in units(&d) {
                    idx.add(&u);
                }
            }
        }
        Ok(idx)
    }

    /// Adds one training text.
    pub fn add(&mut self, text: &str) {
        self.grams.extend(ngrams(text, self.n));
        let w = words(text);
        if !w.is_empty() {
            self.whole.insert(hash_words(&w));
        }
    }

    /// Whether `text` is contaminated: an n-gram in common, or the whole text seen verbatim
    /// (word for word) as a training unit. `None` when the text is too short for an n-gram
    /// and not a verbatim copy (unchecked).
    pub fn check(&self, text: &str) -> Option<bool> {
        let w = words(text);
        if !w.is_empty() && self.whole.contains(&hash_words(&w)) {
            return Some(true);
        }
        if w.len() < self.n {
            return None;
        }
        Some(w.windows(self.n).any(|g| self.grams.contains(&hash_words(g))))
    }
}

/// Which column of an eval file holds the text that could leak.
enum Leaks {
    /// A task file's question column (`prompt`, or the column `--columns prompt=...` names).
    Prompt(String),
    /// The user turns of a `messages` column.
    Messages,
    /// A `text` column.
    Text,
}

/// Where `schema` keeps what could leak, by the task-source column mapping (`--columns`, as
/// the graders take it): a mapped prompt column, else `messages`, `prompt` or `text`.
fn leaks(path: &Path, schema: &arrow::datatypes::Schema, columns: &BTreeMap<String, String>) -> Result<Leaks> {
    let source = TaskSource {
        path: path.to_path_buf(),
        columns: columns.clone(),
        ..TaskSource::default()
    };
    let prompt = source.task_columns()?.prompt;
    let has = |c: &str| schema.column_with_name(c).is_some();
    let names = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(if columns.contains_key("prompt") {
        if !has(&prompt) {
            bail!(
                "{}: column `{prompt}` (--columns prompt={prompt}) not found; the file has columns: {}",
                path.display(),
                names()
            );
        }
        Leaks::Prompt(prompt)
    } else if has("messages") {
        Leaks::Messages
    } else if has("prompt") {
        Leaks::Prompt("prompt".into())
    } else if has("text") {
        Leaks::Text
    } else {
        bail!(
            "{}: no prompt, messages or text column (the file has columns: {}); name its question column with --columns prompt=<column> (GSM8K: --columns prompt=question)",
            path.display(),
            names()
        )
    })
}

/// The text of each row of the eval file that could leak, and the file's record batches.
fn eval_texts(path: &Path, columns: &BTreeMap<String, String>) -> Result<(Vec<String>, Vec<RecordBatch>)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| anyhow::anyhow!("{} is not a readable Parquet file ({e})", path.display()))?;
    let (format, cols) = match leaks(path, builder.schema(), columns)? {
        Leaks::Prompt(c) => (Format::Text, BTreeMap::from([("text".to_string(), c)])),
        Leaks::Messages => (Format::Chat, BTreeMap::from([("messages".into(), "messages".into())])),
        Leaks::Text => (Format::Text, BTreeMap::from([("text".into(), "text".into())])),
    };
    let mut texts = Vec::new();
    let mut batches = Vec::new();
    for b in builder.build()? {
        let b = b.with_context(|| format!("decoding {}", path.display()))?;
        let docs = common::data::parquet::batch_docs(&b, format, &cols)
            .with_context(|| format!("reading {}", path.display()))?;
        for d in docs {
            // For question/answer rows the question is what leaks; conversations: the user turns.
            texts.push(match d {
                Doc::Text(t) => t,
                Doc::Chat(m) => m
                    .iter()
                    .filter(|m| m.role == "user")
                    .map(|m| m.content.clone())
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
        batches.push(b);
    }
    Ok((texts, batches))
}

/// What `datasets decontaminate` checks, and where it writes.
pub struct Options<'a> {
    /// Training mix.
    pub train: &'a Path,
    /// Eval file.
    pub eval: &'a Path,
    /// Its column mapping (`--columns FIELD=COLUMN`, as the graders take it).
    pub columns: BTreeMap<String, String>,
    /// n-gram length in words.
    pub n: usize,
    /// Write the clean rows here.
    pub write_clean: Option<&'a Path>,
    /// Write the JSON report here.
    pub report: Option<&'a Path>,
    /// Data root the mix's relative data paths are found under.
    pub root: Option<&'a Path>,
}

/// `datasets decontaminate`.
pub fn run(o: &Options<'_>) -> Result<()> {
    let (train, eval, n, write_clean, report) = (o.train, o.eval, o.n, o.write_clean, o.report);
    anyhow::ensure!(n >= 1, "--n must be at least 1");
    // The eval side's layout first: a wrong mapping fails before the training mix is indexed.
    let (texts, batches) = eval_texts(eval, &o.columns)?;
    let idx = TrainIndex::build(train, n, o.root)?;
    let verdicts: Vec<Option<bool>> = texts.iter().map(|t| idx.check(t)).collect();
    let contaminated: Vec<usize> = verdicts
        .iter()
        .enumerate()
        .filter(|(_, v)| **v == Some(true))
        .map(|(i, _)| i)
        .collect();
    let unchecked = verdicts.iter().filter(|v| v.is_none()).count();
    println!(
        "decontaminate: {} of {} eval rows share a {n}-gram or their full text with {} ({} rows shorter than {n} words were only checked for verbatim copies)",
        contaminated.len(),
        texts.len(),
        train.display(),
        unchecked
    );
    for &i in contaminated.iter().take(10) {
        println!(
            "  row {i}: {}",
            texts[i].chars().take(120).collect::<String>().replace('\n', " ")
        );
    }
    if let Some(p) = report {
        let j = json!({
            "train": train.display().to_string(), "eval": eval.display().to_string(), "n": n,
            "rows": texts.len(), "contaminated_rows": contaminated, "short_rows": unchecked,
        });
        std::fs::write(p, serde_json::to_string_pretty(&j)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(out) = write_clean {
        let schema = batches
            .first()
            .map(|b| b.schema())
            .context("the eval file has no rows")?;
        let tmp = out.with_extension("parquet.tmp");
        let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = ArrowWriter::try_new(file, schema, None)?;
        let mut row = 0;
        let mut kept = 0;
        for b in &batches {
            let keep: BooleanArray = (0..b.num_rows())
                .map(|i| Some(verdicts[row + i] != Some(true)))
                .collect();
            row += b.num_rows();
            let f = arrow::compute::filter_record_batch(b, &keep)?;
            kept += f.num_rows();
            w.write(&f)?;
        }
        w.close()?;
        std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
        println!("decontaminate: wrote {kept} clean rows to {}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_planted_overlap_and_nothing_on_disjoint_text() {
        let mut idx = TrainIndex {
            n: 5,
            grams: HashSet::new(),
            whole: HashSet::new(),
        };
        idx.add("Forum post: the river Tarsk flows north past the salt mines of Velmora every spring.");
        idx.add("What is 2 + 3?");
        // Planted: a 5-word run of the training text inside an eval question.
        assert_eq!(
            idx.check("Is it true that the salt mines of Velmora are old?"),
            Some(true)
        );
        // A short question copied verbatim is caught even below n words.
        assert_eq!(idx.check("what is 2 + 3"), Some(true));
        // Disjoint text.
        assert_eq!(
            idx.check("Which mineral is mined in the eastern hills near Orbel today?"),
            Some(false)
        );
        assert_eq!(idx.check("How old is Orbel?"), None, "too short to check");
    }
}
