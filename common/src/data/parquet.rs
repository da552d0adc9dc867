//! Streaming Parquet reading: record batches of documents, never whole files.
use super::mix::{Format, ResolvedSource};
use crate::tokenizer::Message;
use anyhow::{anyhow, bail, Context, Result};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Rows read per record batch.
pub const BATCH_ROWS: usize = 1024;

/// One row of a source.
#[derive(Clone, Debug, PartialEq)]
pub enum Doc {
    /// A plain document.
    Text(String),
    /// A conversation (prompt/answer rows become a user and an assistant turn).
    Chat(Vec<Message>),
}

impl Doc {
    /// All the text of the document (for tokenizer training and decontamination).
    pub fn full_text(&self) -> String {
        match self {
            Doc::Text(t) => t.clone(),
            Doc::Chat(m) => m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
        }
    }
}

fn is_string(dt: &DataType) -> bool {
    matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Opens `path` as Parquet and checks that the mapped columns exist with usable types.
/// Returns the builder with a projection on those columns.
pub fn open_checked(
    path: &Path,
    format: Format,
    columns: &BTreeMap<String, String>,
) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let builder = open_builder(path)?;
    let schema = builder.schema().clone();
    let mut indices = Vec::new();
    for (logical, column) in columns {
        let Some((idx, field)) = schema.column_with_name(column) else {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            bail!(
                "{}: column `{column}` (for `{logical}`) not found; the file has columns: {}. Map it with columns = {{ {logical} = \"<name>\" }} in the mix",
                path.display(),
                have.join(", ")
            );
        };
        let ok = match (format, logical.as_str()) {
            (Format::Chat, "messages") | (_, "history") => is_message_list(field.data_type()),
            _ => is_string(field.data_type()),
        };
        if !ok {
            let want = if logical == "messages" || logical == "history" {
                "list<struct<role: string, content: string>>"
            } else {
                "string"
            };
            bail!(
                "{}: column `{column}` has type {}, expected {want}",
                path.display(),
                field.data_type()
            );
        }
        indices.push(idx);
    }
    for (logical, column) in columns {
        let string_column = !(format == Format::Chat && logical == "messages") && logical != "history";
        if string_column && logical != "input" && column_is_blank(builder.metadata(), column) == Some(true) {
            bail!(
                "{}: column `{column}` (for `{logical}`) is null or empty in every row; map another column with columns = {{ {logical} = \"<name>\" }} in the mix, or fix the file",
                path.display()
            );
        }
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    Ok(builder.with_projection(mask))
}

/// Whether the Parquet file at `path` has a column `name` (read from its footer).
pub fn has_column(path: &Path, name: &str) -> Result<bool> {
    Ok(open_builder(path)?.schema().column_with_name(name).is_some())
}

/// A reader of the Parquet file at `path` (its footer read), or an error naming the file.
fn open_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
        anyhow!(
            "{} is not a readable Parquet file ({e}); re-download or rebuild it",
            path.display()
        )
    })?;
    Ok(builder)
}

/// Rows of a Parquet file, from its footer.
pub fn row_count(builder: &ParquetRecordBatchReaderBuilder<File>) -> i64 {
    builder.metadata().file_metadata().num_rows()
}

/// Whether the string column `column` is null or empty in every row, from the column
/// statistics in the footer (no data read); `None` when the file has no rows or a row group
/// lacks statistics.
fn column_is_blank(meta: &parquet::file::metadata::ParquetMetaData, column: &str) -> Option<bool> {
    use parquet::file::statistics::Statistics;
    if meta.file_metadata().num_rows() == 0 {
        return None;
    }
    for rg in meta.row_groups() {
        let cc = rg
            .columns()
            .iter()
            .find(|c| c.column_path().parts().len() == 1 && c.column_path().parts()[0] == column)?;
        let stats = cc.statistics()?;
        let nulls = stats.null_count_opt()?;
        if nulls as i64 == rg.num_rows() {
            continue;
        }
        match stats {
            Statistics::ByteArray(b) => {
                if b.max_bytes_opt()?.is_empty() {
                    continue;
                }
                return Some(false);
            }
            _ => return None,
        }
    }
    Some(true)
}

fn is_message_list(dt: &DataType) -> bool {
    let inner = match dt {
        DataType::List(f) | DataType::LargeList(f) => f.data_type(),
        _ => return false,
    };
    match inner {
        DataType::Struct(fields) => ["role", "content"]
            .iter()
            .all(|n| fields.iter().any(|f| f.name() == n && is_string(f.data_type()))),
        _ => false,
    }
}

fn strings(batch: &RecordBatch, column: &str) -> Result<Vec<Option<String>>> {
    let col = batch
        .column_by_name(column)
        .ok_or_else(|| anyhow!("column `{column}` vanished from batch"))?;
    string_values(col)
}

fn string_values(col: &ArrayRef) -> Result<Vec<Option<String>>> {
    let col = arrow::compute::cast(col, &DataType::Utf8)?;
    let arr = col.as_string::<i32>();
    Ok((0..arr.len())
        .map(|i| (!arr.is_null(i)).then(|| arr.value(i).to_string()))
        .collect())
}

fn messages(batch: &RecordBatch, column: &str) -> Result<Vec<Vec<Message>>> {
    let col = batch
        .column_by_name(column)
        .ok_or_else(|| anyhow!("column `{column}` vanished from batch"))?;
    let mut out = Vec::with_capacity(col.len());
    let rows: Vec<Option<ArrayRef>> = match col.data_type() {
        DataType::List(_) => {
            let l = col.as_list::<i32>();
            (0..l.len()).map(|i| (!l.is_null(i)).then(|| l.value(i))).collect()
        }
        DataType::LargeList(_) => {
            let l = col.as_list::<i64>();
            (0..l.len()).map(|i| (!l.is_null(i)).then(|| l.value(i))).collect()
        }
        other => bail!("column `{column}` has type {other}, expected a list of messages"),
    };
    for row in rows {
        let Some(values) = row else {
            out.push(Vec::new());
            continue;
        };
        let s = values.as_struct();
        let role = string_values(
            s.column_by_name("role")
                .ok_or_else(|| anyhow!("messages lack `role`"))?,
        )?;
        let content = string_values(
            s.column_by_name("content")
                .ok_or_else(|| anyhow!("messages lack `content`"))?,
        )?;
        out.push(
            role.into_iter()
                .zip(content)
                .map(|(r, c)| Message {
                    role: r.unwrap_or_default(),
                    content: c.unwrap_or_default(),
                })
                .collect(),
        );
    }
    Ok(out)
}

/// Converts a record batch into documents of `format`.
pub fn batch_docs(batch: &RecordBatch, format: Format, columns: &BTreeMap<String, String>) -> Result<Vec<Doc>> {
    let col = |k: &str| columns.get(k).map(String::as_str).unwrap_or(k).to_string();
    Ok(match format {
        Format::Text => strings(batch, &col("text"))?
            .into_iter()
            .map(|t| Doc::Text(t.unwrap_or_default()))
            .collect(),
        Format::Chat => messages(batch, &col("messages"))?.into_iter().map(Doc::Chat).collect(),
        Format::PromptAnswer => {
            let prompts = strings(batch, &col("prompt"))?;
            let answers = strings(batch, &col("answer"))?;
            let inputs = match columns.get("input") {
                Some(c) => strings(batch, c)?,
                None => vec![None; prompts.len()],
            };
            prompts
                .into_iter()
                .zip(answers)
                .zip(inputs)
                .map(|((p, a), i)| {
                    let mut user = p.unwrap_or_default();
                    if let Some(i) = i.filter(|i| !i.trim().is_empty()) {
                        user.push_str("\n\n");
                        user.push_str(&i);
                    }
                    Doc::Chat(vec![
                        Message::new("user", user),
                        Message::new("assistant", a.unwrap_or_default()),
                    ])
                })
                .collect()
        }
    })
}

/// Where a source reader stands: enough to reopen it at the same document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderPos {
    /// Completed passes over the source.
    pub epoch: u64,
    /// Index into this epoch's file order.
    pub file: usize,
    /// Record batch within the file.
    pub batch: usize,
    /// Row within the (shuffled) batch.
    pub row: usize,
}

/// Reads the documents of one source forever (epoch after epoch), in a seeded order:
/// files shuffled per epoch, rows shuffled within each record batch.
pub struct SourceReader {
    files: Vec<PathBuf>,
    format: Format,
    columns: BTreeMap<String, String>,
    seed: u64,
    shuffle: bool,
    pos: ReaderPos,
    reader: Option<ParquetRecordBatchReader>,
    docs: Vec<Doc>,
    /// Name of the source (for messages).
    pub name: String,
    /// Rows of all its files (from their footers).
    pub rows: u64,
}

impl SourceReader {
    /// A reader positioned at `pos`.
    pub fn new(src: &ResolvedSource, seed: u64, shuffle: bool, pos: ReaderPos) -> Result<Self> {
        let mut r = SourceReader {
            files: src.files.clone(),
            format: src.config.format,
            columns: src.columns.clone(),
            seed,
            shuffle,
            pos,
            reader: None,
            docs: Vec::new(),
            name: src.config.name.clone(),
            rows: 0,
        };
        // Check every file's schema up front, so a bad file fails at start-up. A file without
        // rows is skipped with a warning; a source without any row is an error (reading it
        // would never yield a document, and its share of the mix could not be met).
        let mut empty = Vec::new();
        for f in &r.files {
            let b = open_checked(f, r.format, &r.columns).with_context(|| format!("source `{}`", r.name))?;
            let rows = row_count(&b);
            if rows == 0 {
                empty.push(f.display().to_string());
            }
            r.rows += rows.max(0) as u64;
        }
        if empty.len() == r.files.len() {
            bail!(
                "source `{}`: {} {} no rows; remove the source from the mix or point it at files with data",
                r.name,
                empty.join(", "),
                if empty.len() == 1 { "has" } else { "have" }
            );
        }
        for f in &empty {
            eprintln!("warning: source `{}`: {f} has no rows; skipping it", r.name);
        }
        r.load_batch()?;
        Ok(r)
    }

    /// Position of the next document.
    pub fn pos(&self) -> &ReaderPos {
        &self.pos
    }

    fn file_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.files.len()).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            order.shuffle(&mut rng);
        }
        order
    }

    /// Opens the file of `pos` at its batch and decodes that batch.
    fn load_batch(&mut self) -> Result<()> {
        loop {
            let order = self.file_order(self.pos.epoch);
            if self.pos.file >= order.len() {
                self.pos = ReaderPos {
                    epoch: self.pos.epoch + 1,
                    ..Default::default()
                };
                self.reader = None;
                continue;
            }
            let path = &self.files[order[self.pos.file]];
            if self.reader.is_none() {
                let builder = open_checked(path, self.format, &self.columns)?;
                let builder = builder
                    .with_batch_size(BATCH_ROWS)
                    .with_offset(self.pos.batch * BATCH_ROWS);
                self.reader = Some(builder.build().with_context(|| format!("reading {}", path.display()))?);
            }
            let next = self.reader.as_mut().and_then(|r| r.next());
            match next {
                None => {
                    self.pos.file += 1;
                    self.pos.batch = 0;
                    self.pos.row = 0;
                    self.reader = None;
                }
                Some(batch) => {
                    let batch = batch.with_context(|| format!("decoding {} (corrupt file?)", path.display()))?;
                    let mut docs = batch_docs(&batch, self.format, &self.columns)
                        .with_context(|| format!("reading {}", path.display()))?;
                    if self.shuffle {
                        let salt = (self.pos.epoch << 40) ^ ((self.pos.file as u64) << 20) ^ self.pos.batch as u64;
                        let mut rng =
                            ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(salt.wrapping_mul(0x2545_F491_4F6C_DD1D)));
                        docs.shuffle(&mut rng);
                    }
                    if self.pos.row >= docs.len() {
                        self.pos.batch += 1;
                        self.pos.row = 0;
                        continue;
                    }
                    self.docs = docs;
                    return Ok(());
                }
            }
        }
    }

    /// The remaining documents of the current batch (at least one), without consuming them.
    pub fn peek_batch(&self) -> &[Doc] {
        &self.docs[self.pos.row..]
    }

    /// Consumes `n` documents of the current batch (n ≤ `peek_batch().len()`), loading the
    /// next batch when the current one is used up.
    pub fn advance(&mut self, n: usize) -> Result<()> {
        self.pos.row += n;
        if self.pos.row >= self.docs.len() {
            self.pos.batch += 1;
            self.pos.row = 0;
            self.load_batch()?;
        }
        Ok(())
    }
}

/// Reads every document of a source once, in file order (for held-out sets and inspection).
pub fn read_all(src: &ResolvedSource, limit: Option<usize>) -> Result<Vec<Doc>> {
    let mut out = Vec::new();
    for f in &src.files {
        let reader = open_checked(f, src.config.format, &src.columns)?
            .with_batch_size(BATCH_ROWS)
            .build()
            .with_context(|| format!("reading {}", f.display()))?;
        for batch in reader {
            let batch = batch.with_context(|| format!("decoding {} (corrupt file?)", f.display()))?;
            out.extend(batch_docs(&batch, src.config.format, &src.columns)?);
            if limit.is_some_and(|l| out.len() >= l) {
                out.truncate(limit.unwrap_or(usize::MAX));
                return Ok(out);
            }
        }
    }
    Ok(out)
}
