//! Parquet writers: plain text, conversations (SmolTalk layout) and verifiable tasks.
//!
//! Files are Snappy-compressed, with one row group per [`ROW_GROUP_ROWS`] rows, and
//! deterministic (no timestamps: the same rows always give the same bytes). Each
//! file is written to `<path>.tmp` (precisely `path.with_extension("parquet.tmp")`)
//! and renamed into place, so a crash never leaves a truncated `.parquet` behind.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arrow::array::{ArrayRef, ListArray, StringArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::tokenizer::Message;
use crate::verify::Task;

/// Rows per row group (and per record batch).
pub const ROW_GROUP_ROWS: usize = 10_000;

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn string_array<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(values.map(Some).collect::<StringArray>())
}

/// Struct fields of one chat message: `role`, `content`.
fn message_fields() -> Fields {
    Fields::from(vec![utf8("role"), utf8("content")])
}

fn message_item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(message_fields()), false))
}

/// Schema of [`write_text`]: `text: Utf8`.
pub fn text_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![utf8("text")]))
}

/// Schema of [`write_chat`]: `messages: List<Struct<role: Utf8, content: Utf8>>`.
pub fn chat_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "messages",
        DataType::List(message_item_field()),
        false,
    )]))
}

/// Schema of [`write_tasks`]: `prompt: Utf8, answer: Utf8, task: Utf8`.
pub fn tasks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![utf8("prompt"), utf8("answer"), utf8("task")]))
}

/// Schema of [`write_tasks`] when rows have earlier turns: [`tasks_schema`] and
/// `history: List<Struct<role: Utf8, content: Utf8>>` (the chat layout).
pub fn tasks_history_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("prompt"),
        utf8("answer"),
        utf8("task"),
        Field::new("history", DataType::List(message_item_field()), false),
    ]))
}

/// Conversations as one `List<Struct<role, content>>` column.
fn message_list<'a>(convs: impl Iterator<Item = &'a [Message]> + Clone) -> anyhow::Result<ArrayRef> {
    let msgs = || convs.clone().flatten();
    let roles = string_array(msgs().map(|m| m.role.as_str()));
    let contents = string_array(msgs().map(|m| m.content.as_str()));
    let structs = StructArray::try_new(message_fields(), vec![roles, contents], None)?;
    let offsets = OffsetBuffer::<i32>::from_lengths(convs.map(<[Message]>::len));
    Ok(Arc::new(ListArray::try_new(
        message_item_field(),
        offsets,
        Arc::new(structs),
        None,
    )?))
}

/// Writes the batches produced by `batch(start, end)` for consecutive row ranges to `path`.
fn write_parquet(
    path: &Path,
    schema: SchemaRef,
    rows: usize,
    batch: impl Fn(usize, usize) -> anyhow::Result<RecordBatch>,
) -> anyhow::Result<()> {
    let tmp: PathBuf = path.with_extension("parquet.tmp");
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    }
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_size(ROW_GROUP_ROWS)
        .build();
    let mut writer = ArrowWriter::try_new(BufWriter::new(file), schema, Some(props))
        .with_context(|| format!("opening Parquet writer on {}", tmp.display()))?;
    let mut start = 0;
    while start < rows {
        let end = (start + ROW_GROUP_ROWS).min(rows);
        let b = batch(start, end).with_context(|| format!("building rows {start}..{end} of {}", path.display()))?;
        writer.write(&b).with_context(|| format!("writing {}", tmp.display()))?;
        writer.flush().with_context(|| format!("writing {}", tmp.display()))?;
        start = end;
    }
    let mut buf = writer
        .into_inner()
        .with_context(|| format!("finishing {}", tmp.display()))?;
    buf.flush().with_context(|| format!("writing {}", tmp.display()))?;
    let file = buf
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Writes documents as a Parquet file with one non-null `text: Utf8` column.
pub fn write_text(path: &Path, docs: &[String]) -> anyhow::Result<()> {
    let schema = text_schema();
    write_parquet(path, schema.clone(), docs.len(), |a, b| {
        let col = string_array(docs[a..b].iter().map(String::as_str));
        Ok(RecordBatch::try_new(schema.clone(), vec![col])?)
    })
}

/// Writes conversations as `messages: List<Struct<role: Utf8, content: Utf8>>` (the SmolTalk layout).
pub fn write_chat(path: &Path, convs: &[Vec<Message>]) -> anyhow::Result<()> {
    let schema = chat_schema();
    write_parquet(path, schema.clone(), convs.len(), |a, b| {
        let list = message_list(convs[a..b].iter().map(Vec::as_slice))?;
        Ok(RecordBatch::try_new(schema.clone(), vec![list])?)
    })
}

/// Writes task rows as `prompt: Utf8, answer: Utf8, task: Utf8` (all non-null), and
/// `history` (the chat layout) when any row has earlier turns.
pub fn write_tasks(path: &Path, rows: &[Task]) -> anyhow::Result<()> {
    let with_history = rows.iter().any(|t| !t.history.is_empty());
    let schema = if with_history {
        tasks_history_schema()
    } else {
        tasks_schema()
    };
    write_parquet(path, schema.clone(), rows.len(), |a, b| {
        let chunk = &rows[a..b];
        let mut cols = vec![
            string_array(chunk.iter().map(|t| t.prompt.as_str())),
            string_array(chunk.iter().map(|t| t.answer.as_str())),
            string_array(chunk.iter().map(|t| t.kind.as_str())),
        ];
        if with_history {
            cols.push(message_list(chunk.iter().map(|t| t.history.as_slice()))?);
        }
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }

    fn convs(n: usize) -> Vec<Vec<Message>> {
        (0..n)
            .map(|i| {
                let mut c = vec![
                    msg("user", &format!("What is {i} + 1?")),
                    msg("assistant", &format!("Answer: {}", i + 1)),
                ];
                if i % 3 == 0 {
                    c.insert(0, msg("system", "You are a helpful assistant."));
                }
                c
            })
            .collect()
    }

    fn read_all(path: &Path) -> (SchemaRef, Vec<RecordBatch>, usize) {
        let file = File::open(path).expect("open parquet");
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader");
        let groups = builder.metadata().num_row_groups();
        let schema = builder.schema().clone();
        let batches = builder
            .build()
            .expect("build")
            .collect::<Result<Vec<_>, _>>()
            .expect("batches");
        (schema, batches, groups)
    }

    #[test]
    fn chat_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("chat.parquet");
        let data = convs(25_000);
        write_chat(&path, &data).expect("write");
        assert!(!path.with_extension("parquet.tmp").exists());
        let (schema, batches, groups) = read_all(&path);
        assert_eq!(schema, chat_schema());
        assert_eq!(groups, 3);
        let mut back: Vec<Vec<Message>> = Vec::new();
        for b in &batches {
            let list = b.column(0).as_list::<i32>();
            for i in 0..list.len() {
                let item = list.value(i);
                let s = item.as_struct();
                let roles = s.column_by_name("role").expect("role").as_string::<i32>();
                let contents = s.column_by_name("content").expect("content").as_string::<i32>();
                back.push((0..s.len()).map(|j| msg(roles.value(j), contents.value(j))).collect());
            }
        }
        assert_eq!(back, data);
    }

    #[test]
    fn text_and_tasks_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let docs: Vec<String> = (0..123).map(|i| format!("doc {i}\nwith two lines")).collect();
        let p = dir.path().join("text.parquet");
        write_text(&p, &docs).expect("write text");
        let (schema, batches, _) = read_all(&p);
        assert_eq!(schema, text_schema());
        let back: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|s| s.unwrap_or_default().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(back, docs);

        let rows: Vec<Task> = (0..50)
            .map(|i| Task {
                prompt: format!("What is {i} + {i}?"),
                answer: (2 * i).to_string(),
                kind: "arithmetic".into(),
                ..Task::default()
            })
            .collect();
        let p = dir.path().join("tasks.parquet");
        write_tasks(&p, &rows).expect("write tasks");
        let (schema, batches, groups) = read_all(&p);
        assert_eq!(schema, tasks_schema());
        assert_eq!(groups, 1);
        let b = &batches[0];
        assert_eq!(b.num_rows(), 50);
        assert_eq!(b.column(1).as_string::<i32>().value(7), "14");
        assert_eq!(b.column(2).as_string::<i32>().value(7), "arithmetic");
    }

    #[test]
    fn writing_twice_is_byte_identical() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = convs(12_345);
        let a = dir.path().join("a.parquet");
        let b = dir.path().join("b.parquet");
        write_chat(&a, &data).expect("write a");
        write_chat(&b, &data).expect("write b");
        let (ba, bb) = (std::fs::read(&a).expect("read a"), std::fs::read(&b).expect("read b"));
        assert_eq!(ba, bb);
        write_chat(&a, &data).expect("overwrite a");
        assert_eq!(std::fs::read(&a).expect("read a"), bb);
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").expect("write");
        let bad = blocker.join("out.parquet");
        let err = write_text(&bad, &["a".to_string()]).expect_err("must fail");
        assert!(format!("{err:#}").contains(&blocker.display().to_string()), "{err:#}");
    }
}
