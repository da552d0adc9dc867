//! `datasets split`: a train / held-out split of Parquet rows without overlap.
//!
//! Rows are split by document, not position: each row's identity is the SHA-256 of its
//! values (all columns, or the `--by` columns) in Arrow's row format, so identical documents
//! share one identity and land on the same side. The distinct identities are ordered by the
//! SHA-256 of seed and identity, and the first `round(share × distinct)` are held out: the
//! held-out share is exact in documents, the split is the same for the same seed and content
//! on any machine (and does not depend on row order), and no document is on both sides.
//! Every row is kept, duplicates included, on its document's side.
use anyhow::{bail, Context, Result};
use arrow::array::{BooleanArray, RecordBatch, RecordBatchReader};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The footer key that marks a file this command wrote (and may therefore replace).
const MARK: &str = "lib2expert.split";

/// What `datasets split` splits and how.
pub struct Options<'a> {
    /// The Parquet file(s) to split (a glob is allowed; files must share a schema).
    pub input: &'a str,
    /// Share of the distinct documents held out, in (0, 1).
    pub heldout: f64,
    /// Directory for `train.parquet` and `heldout.parquet`.
    pub out: &'a Path,
    /// Seed of which documents are held out.
    pub seed: u64,
    /// Columns that identify a document (empty: all of them).
    pub by: Vec<String>,
}

/// What a split did.
#[derive(Debug, PartialEq, Eq)]
pub struct Counts {
    /// Rows read.
    pub rows: usize,
    /// Distinct documents among them.
    pub documents: usize,
    /// Held-out documents.
    pub heldout_documents: usize,
    /// Rows written to `heldout.parquet`.
    pub heldout_rows: usize,
    /// Rows written to `train.parquet`.
    pub train_rows: usize,
}

/// Identity of a document: the first 16 bytes of a SHA-256.
type Id = [u8; 16];

fn sha16(parts: &[&[u8]]) -> Id {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

/// Calls `f` on every record batch of `files`, one file after another (never a whole file in
/// memory); the files must share a schema, which is returned.
fn each_batch(files: &[PathBuf], mut f: impl FnMut(&RecordBatch) -> Result<()>) -> Result<SchemaRef> {
    let mut schema: Option<SchemaRef> = None;
    for path in files {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| anyhow::anyhow!("{} is not a readable Parquet file ({e})", path.display()))?
            .build()?;
        let s = reader.schema();
        match &schema {
            None => schema = Some(s.clone()),
            Some(first) if first.fields() != s.fields() => bail!(
                "{} has another schema than {} ({s} vs {first}): split files of one layout together",
                path.display(),
                files[0].display()
            ),
            Some(_) => {}
        }
        for b in reader {
            f(&b.with_context(|| format!("decoding {} (corrupt file?)", path.display()))?)?;
        }
    }
    schema.context("no input files")
}

/// The columns that identify a document (`by`, or all) and the converter of their values to
/// comparable bytes.
fn key_of(schema: &arrow::datatypes::Schema, by: &[String]) -> Result<(Vec<usize>, RowConverter)> {
    let columns: Vec<usize> = if by.is_empty() {
        (0..schema.fields().len()).collect()
    } else {
        by.iter()
            .map(|c| {
                schema.index_of(c).map_err(|_| {
                    let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                    anyhow::anyhow!("--by {c}: no such column (the file has {})", have.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )
    .context("these columns cannot identify a document; name others with --by")?;
    Ok((columns, converter))
}

/// Refuses to write `path` when it exists and this command did not write it.
fn check_ours(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let ours = std::fs::File::open(path)
        .ok()
        .and_then(|f| ParquetRecordBatchReaderBuilder::try_new(f).ok())
        .is_some_and(|b| {
            b.metadata()
                .file_metadata()
                .key_value_metadata()
                .is_some_and(|kv| kv.iter().any(|k| k.key == MARK))
        });
    if !ours {
        bail!(
            "{} exists and was not written by `datasets split`: choose another --out, or move the file",
            path.display()
        );
    }
    Ok(())
}

/// A Parquet file being written through a temporary name, marked as this command's.
struct Side {
    path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<std::fs::File>,
    rows: usize,
}

impl Side {
    fn create(path: PathBuf, schema: SchemaRef, note: &str) -> Result<Self> {
        let tmp = path.with_extension("parquet.tmp");
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![KeyValue::new(MARK.to_string(), note.to_string())]))
            .build();
        let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let writer = ArrowWriter::try_new(file, schema, Some(props))?;
        Ok(Side {
            path,
            tmp,
            writer,
            rows: 0,
        })
    }

    /// Writes the rows of `b` that `keep` selects.
    fn write(&mut self, b: &RecordBatch, keep: impl Iterator<Item = bool>) -> Result<()> {
        let mask: BooleanArray = keep.map(Some).collect();
        let f = arrow::compute::filter_record_batch(b, &mask)?;
        self.rows += f.num_rows();
        self.writer.write(&f)?;
        Ok(())
    }

    /// Closes the file and renames it into place; returns its rows.
    fn finish(self) -> Result<usize> {
        self.writer.close()?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.path.display()))?;
        Ok(self.rows)
    }
}

/// Splits `opts.input` into `opts.out/train.parquet` and `opts.out/heldout.parquet`.
pub fn run(opts: &Options<'_>) -> Result<Counts> {
    if !(opts.heldout > 0.0 && opts.heldout < 1.0) {
        bail!("--heldout {} is not a share between 0 and 1 (e.g. 0.05)", opts.heldout);
    }
    let files = common::data::mix::expand(opts.input)?;
    let (train_path, heldout_path) = (opts.out.join("train.parquet"), opts.out.join("heldout.parquet"));
    for out in [&train_path, &heldout_path] {
        let same = |f: &PathBuf| std::fs::canonicalize(f).ok() == std::fs::canonicalize(out).ok();
        if files.iter().any(same) {
            bail!(
                "--input {} is also an output of the split: choose another --out",
                out.display()
            );
        }
        check_ours(out)?;
    }
    // First pass: the identity of every row.
    let mut ids: Vec<Id> = Vec::new();
    let mut key: Option<(Vec<usize>, RowConverter)> = None;
    let schema = each_batch(&files, |b| {
        if key.is_none() {
            key = Some(key_of(&b.schema(), &opts.by)?);
        }
        let Some((columns, converter)) = &key else {
            return Ok(());
        };
        let cols: Vec<_> = columns.iter().map(|&i| b.column(i).clone()).collect();
        let rows = converter.convert_columns(&cols)?;
        ids.extend(rows.iter().map(|r| sha16(&[r.as_ref()])));
        Ok(())
    })?;
    let distinct: HashSet<Id> = ids.iter().copied().collect();
    if distinct.len() < 2 {
        bail!(
            "{} holds {} distinct document(s): nothing to split",
            opts.input,
            distinct.len()
        );
    }
    // The first round(share × distinct) identities in the seeded order are held out (at least
    // one document on each side).
    let seed = opts.seed.to_le_bytes();
    let mut order: Vec<(Id, Id)> = distinct.iter().map(|id| (sha16(&[&seed, id]), *id)).collect();
    order.sort_unstable();
    let n_held = ((opts.heldout * distinct.len() as f64).round() as usize).clamp(1, distinct.len() - 1);
    let held: HashSet<Id> = order[..n_held].iter().map(|(_, id)| *id).collect();
    let is_held: Vec<bool> = ids.iter().map(|id| held.contains(id)).collect();
    std::fs::create_dir_all(opts.out).with_context(|| format!("creating {}", opts.out.display()))?;
    let note = serde_json::json!({
        "input": opts.input, "heldout": opts.heldout, "seed": opts.seed, "by": opts.by,
    })
    .to_string();
    // Second pass: each row to its document's side.
    let mut train = Side::create(train_path, schema.clone(), &note)?;
    let mut heldout = Side::create(heldout_path, schema, &note)?;
    let mut row = 0;
    each_batch(&files, |b| {
        let side = &is_held[row..row + b.num_rows()];
        row += b.num_rows();
        heldout.write(b, side.iter().copied())?;
        train.write(b, side.iter().map(|h| !h))
    })?;
    let (train_rows, heldout_rows) = (train.finish()?, heldout.finish()?);
    Ok(Counts {
        rows: ids.len(),
        documents: distinct.len(),
        heldout_documents: n_held,
        heldout_rows,
        train_rows,
    })
}
