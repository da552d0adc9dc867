//! n-gram decontamination: which eval rows share a word n-gram (or their whole text) with
//! the training sources of a mix.
use anyhow::{Context, Result};
use arrow::array::{BooleanArray, RecordBatch};
use common::data::mix::load_mix;
use common::data::parquet::{read_all, Doc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde_json::json;
use std::collections::hash_map::DefaultHasher;
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
    /// Indexes every document of every source of the mix.
    pub fn build(mix_path: &Path, n: usize) -> Result<Self> {
        let mix = load_mix(mix_path)?;
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

fn eval_texts(path: &Path) -> Result<(Vec<String>, Vec<RecordBatch>)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| anyhow::anyhow!("{} is not a readable Parquet file ({e})", path.display()))?
        .build()?;
    let mut texts = Vec::new();
    let mut batches = Vec::new();
    for b in reader {
        let b = b.with_context(|| format!("decoding {}", path.display()))?;
        let schema = b.schema();
        let has = |c: &str| schema.column_with_name(c).is_some();
        let format = if has("messages") {
            common::data::Format::Chat
        } else if has("prompt") {
            common::data::Format::PromptAnswer
        } else if has("text") {
            common::data::Format::Text
        } else {
            anyhow::bail!("{}: needs a prompt, messages or text column", path.display());
        };
        let mut cols = std::collections::BTreeMap::new();
        for (c, req) in format.columns() {
            if *req {
                cols.insert(c.to_string(), c.to_string());
            }
        }
        for d in common::data::parquet::batch_docs(&b, format, &cols)? {
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

/// `datasets decontaminate`.
pub fn run(train: &Path, eval: &Path, n: usize, write_clean: Option<&Path>, report: Option<&Path>) -> Result<()> {
    anyhow::ensure!(n >= 1, "--n must be at least 1");
    let idx = TrainIndex::build(train, n)?;
    let (texts, batches) = eval_texts(eval)?;
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
