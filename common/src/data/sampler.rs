//! The streaming mixture sampler: picks sources by their token shares, tokenizes record
//! batches in parallel, packs documents into fixed-length rows, and keeps a cursor from
//! which it resumes exactly.
//!
//! Source choice is deterministic "deficit" sampling: the next document comes from the
//! source furthest below its target share of the tokens taken so far, so a 3:1 mix is
//! 3:1 to within one document at any point. Document order within a source is shuffled
//! with a seeded RNG (files per epoch, rows per record batch).
use super::mix::{Format, ResolvedMix};
use super::parquet::{Doc, ReaderPos, SourceReader};
use crate::tokenizer::Tok;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Target id that contributes no loss.
pub const IGNORE: i64 = -100;

/// How documents become rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackMode {
    /// One continuous token stream cut into rows; attention crosses document boundaries
    /// (the usual pretraining setup).
    Stream,
    /// Whole documents packed into rows, never split; attention and positions are
    /// confined to each document (a block-diagonal causal mask). Used for conversations.
    Documents,
}

/// What document packing does with a document longer than one row (`seq_len + 1` tokens).
/// Stream packing never cuts: a long document continues in the next row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlong {
    /// Skip it (counted): every conversation trained on is whole, its final answer included.
    #[default]
    Drop,
    /// Keep its first `seq_len + 1` tokens (counted): the end of the conversation, often its
    /// answer, is never trained on.
    Cut,
}

impl Overlong {
    /// `drop` or `cut`, as the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            Overlong::Drop => "drop",
            Overlong::Cut => "cut",
        }
    }
}

/// Documents of one source read so far, and how many were longer than a row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocCounts {
    /// Documents read (cut and dropped ones included).
    pub documents: u64,
    /// Documents cut to one row ([`Overlong::Cut`]).
    pub cut: u64,
    /// Documents skipped ([`Overlong::Drop`]).
    pub dropped: u64,
}

/// A batch of packed rows.
pub struct PackedBatch {
    /// Inputs `[B, T]`.
    pub input: Tensor,
    /// Targets `[B, T]`, [`IGNORE`] where no loss is taken.
    pub target: Tensor,
    /// Positions `[B, T]` (document mode only).
    pub positions: Option<Tensor>,
    /// Attention mask `[B, 1, T, T]` (document mode only).
    pub mask: Option<Tensor>,
    /// Targets that count in the loss.
    pub trained_tokens: i64,
    /// Target tokens that count, per source (aligned with the mix).
    pub per_source: Vec<i64>,
    /// UTF-8 bytes of the trained targets (for bits per byte).
    pub trained_bytes: i64,
}

impl PackedBatch {
    /// Moves the batch to `device`.
    pub fn to_device(&self, device: Device) -> PackedBatch {
        PackedBatch {
            input: self.input.to_device(device),
            target: self.target.to_device(device),
            positions: self.positions.as_ref().map(|t| t.to_device(device)),
            mask: self.mask.as_ref().map(|t| t.to_device(device)),
            trained_tokens: self.trained_tokens,
            per_source: self.per_source.clone(),
            trained_bytes: self.trained_bytes,
        }
    }

    /// The batch's positions and attention mask, as the model's forward pass takes them.
    pub fn positions(&self) -> crate::model::Positions<'_> {
        crate::model::Positions {
            ids: self.positions.as_ref(),
            mask: self.mask.as_ref(),
        }
    }
}

/// A token of the packing buffer: id, whether it is trained on, the document it belongs to, its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot(pub u32, pub bool, pub u32, pub u16);

/// Everything needed to resume the sampler exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Position of each source's reader.
    pub readers: Vec<ReaderPos>,
    /// Tokens taken from each source.
    pub consumed: Vec<u64>,
    /// Tokens read but not yet emitted.
    pub buffer: Vec<Slot>,
    /// Documents started so far (for document ids).
    pub docs: u64,
    /// Documents read, cut and dropped, per source (empty in cursors saved before they were
    /// counted: counting starts from zero).
    #[serde(default)]
    pub counts: Vec<DocCounts>,
    /// The over-long policy the run started with (`None` in cursors saved before the policy
    /// existed, when over-long documents were cut).
    #[serde(default)]
    pub overlong: Option<Overlong>,
}

struct SourceState {
    reader: SourceReader,
    format: Format,
    max_epochs: Option<f64>,
    files: usize,
    cache_pos: Option<(u64, usize, usize)>,
    cache: Vec<(Vec<u32>, Vec<bool>)>,
    /// Documents dropped in a row (not saved: only to stop a source whose every document is
    /// too long from spinning forever).
    drop_run: u64,
}

/// The sampler over a mix.
pub struct LmSampler {
    tok: Tok,
    seq_len: usize,
    mode: PackMode,
    assistant_only: bool,
    overlong: Overlong,
    sources: Vec<SourceState>,
    shares: Vec<f64>,
    names: Vec<String>,
    consumed: Vec<u64>,
    buffer: Vec<Slot>,
    docs: u64,
    counts: Vec<DocCounts>,
}

/// How an [`LmSampler`] reads and packs.
#[derive(Clone, Copy, Debug)]
pub struct SamplerOptions {
    /// Inputs per row.
    pub seq_len: usize,
    /// How documents become rows.
    pub mode: PackMode,
    /// Train only on assistant tokens of conversations.
    pub assistant_only: bool,
    /// Seed of the file and row order.
    pub seed: u64,
    /// Shuffle files per epoch and rows per record batch (false: read in order).
    pub shuffle: bool,
    /// Document packing: what to do with a document longer than one row.
    pub overlong: Overlong,
}

impl LmSampler {
    /// A sampler over `mix` yielding rows of `opts.seq_len` inputs. `cursor` resumes a saved
    /// position.
    pub fn new(mix: &ResolvedMix, tok: &Tok, opts: SamplerOptions, cursor: Option<Cursor>) -> Result<Self> {
        let SamplerOptions {
            seq_len,
            mode,
            assistant_only,
            seed,
            shuffle,
            overlong,
        } = opts;
        let n = mix.sources.len();
        let mut cursor = cursor.unwrap_or_else(|| Cursor {
            readers: vec![ReaderPos::default(); n],
            consumed: vec![0; n],
            buffer: Vec::new(),
            docs: 0,
            counts: vec![DocCounts::default(); n],
            overlong: Some(overlong),
        });
        if cursor.counts.is_empty() {
            cursor.counts = vec![DocCounts::default(); n];
        }
        if cursor.readers.len() != n || cursor.consumed.len() != n || cursor.counts.len() != n {
            bail!(
                "the saved data cursor has {} sources but the mix has {n}: resume with the mix the run started with",
                cursor.readers.len()
            );
        }
        let overlong = match cursor.overlong {
            Some(saved) if saved != overlong => bail!(
                "the run started with data.overlong = \"{}\"; resume it with that setting",
                saved.name()
            ),
            Some(_) => overlong,
            // A run from before the policy existed cut over-long documents: it goes on as it began.
            None => Overlong::Cut,
        };
        let mut sources = Vec::with_capacity(n);
        for (i, (src, pos)) in mix.sources.iter().zip(cursor.readers).enumerate() {
            let reader = SourceReader::new(src, seed.wrapping_add(1_000_003 * i as u64), shuffle, pos)?;
            sources.push(SourceState {
                reader,
                format: src.config.format,
                max_epochs: src.config.max_epochs,
                files: src.files.len(),
                cache_pos: None,
                cache: Vec::new(),
                drop_run: 0,
            });
        }
        Ok(LmSampler {
            tok: tok.clone(),
            seq_len,
            mode,
            assistant_only,
            overlong,
            sources,
            shares: mix.sources.iter().map(|s| s.share).collect(),
            names: mix.sources.iter().map(|s| s.config.name.clone()).collect(),
            consumed: cursor.consumed,
            buffer: cursor.buffer,
            docs: cursor.docs,
            counts: cursor.counts,
        })
    }

    /// The position to save.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            readers: self.sources.iter().map(|s| s.reader.pos().clone()).collect(),
            consumed: self.consumed.clone(),
            buffer: self.buffer.clone(),
            docs: self.docs,
            counts: self.counts.clone(),
            overlong: Some(self.overlong),
        }
    }

    /// Documents read, cut and dropped per source so far, with the source names.
    pub fn doc_counts(&self) -> Vec<(String, DocCounts)> {
        self.names.iter().cloned().zip(self.counts.iter().copied()).collect()
    }

    /// What happens to a document longer than [`Self::row_tokens`].
    pub fn overlong(&self) -> Overlong {
        self.overlong
    }

    /// Tokens of one packed row (`seq_len + 1`): the longest document packed whole.
    pub fn row_tokens(&self) -> usize {
        self.seq_len + 1
    }

    /// Tokens taken from each source so far, with the source names.
    pub fn consumed(&self) -> Vec<(String, u64)> {
        self.names.iter().cloned().zip(self.consumed.iter().copied()).collect()
    }

    /// Completed passes over source `i`.
    pub fn epochs(&self, i: usize) -> u64 {
        self.sources[i].reader.pos().epoch
    }

    fn pick_source(&self) -> usize {
        let total: u64 = self.consumed.iter().sum();
        let mut best = 0;
        let mut best_deficit = f64::NEG_INFINITY;
        for (i, (&share, &used)) in self.shares.iter().zip(&self.consumed).enumerate() {
            if share <= 0.0 {
                continue;
            }
            let deficit = share * (total + 1) as f64 - used as f64;
            if deficit > best_deficit {
                best_deficit = deficit;
                best = i;
            }
        }
        best
    }

    fn tokenize(&self, docs: &[Doc], format: Format) -> Result<Vec<(Vec<u32>, Vec<bool>)>> {
        match format {
            Format::Text => {
                let texts: Vec<&str> = docs
                    .iter()
                    .map(|d| match d {
                        Doc::Text(t) => t.as_str(),
                        Doc::Chat(_) => "",
                    })
                    .collect();
                let ids = self.tok.encode_batch(&texts)?;
                Ok(ids
                    .into_iter()
                    .map(|mut v| {
                        v.insert(0, self.tok.bos);
                        let n = v.len();
                        (v, vec![true; n])
                    })
                    .collect())
            }
            Format::Chat | Format::PromptAnswer => docs
                .iter()
                .map(|d| {
                    let msgs = match d {
                        Doc::Chat(m) => m.clone(),
                        Doc::Text(t) => vec![crate::tokenizer::Message::new("user", t.clone())],
                    };
                    let (ids, mask) = self.tok.render_chat(&msgs)?;
                    let mask = if self.assistant_only {
                        mask
                    } else {
                        vec![true; ids.len()]
                    };
                    Ok((ids, mask))
                })
                .collect(),
        }
    }

    /// Reads the next document of source `i` (tokenized), counting it.
    fn take_doc(&mut self, i: usize) -> Result<(Vec<u32>, Vec<bool>)> {
        let s = &self.sources[i];
        let p = s.reader.pos();
        let key = (p.epoch, p.file, p.batch);
        if s.cache_pos != Some(key) {
            // Tokenize the whole remaining record batch at once (parallel across cores).
            let docs = s.reader.peek_batch().to_vec();
            let row0 = p.row;
            let toks = self.tokenize(&docs, s.format)?;
            let s = &mut self.sources[i];
            s.cache = vec![(Vec::new(), Vec::new()); row0];
            s.cache.extend(toks);
            s.cache_pos = Some(key);
        }
        let s = &mut self.sources[i];
        let row = s.reader.pos().row;
        let doc = std::mem::take(&mut s.cache[row]);
        s.reader.advance(1)?;
        if let Some(max) = s.max_epochs {
            let p = s.reader.pos();
            let progress = p.epoch as f64 + p.file as f64 / s.files.max(1) as f64;
            if progress > max {
                bail!(
                    "source `{}` was read {progress:.2} times, more than its max_epochs = {max}: lower its weight or the number of steps, add data, or raise max_epochs",
                    self.names[i]
                );
            }
        }
        self.counts[i].documents += 1;
        Ok(doc)
    }

    /// Takes the next document of the mix as slots. In document packing, a document longer
    /// than a row is dropped (and the next one taken) or cut, by the over-long policy.
    fn next_doc(&mut self) -> Result<Vec<Slot>> {
        let limit = (self.mode == PackMode::Documents).then_some(self.seq_len + 1);
        let (i, ids, mask) = loop {
            let i = self.pick_source();
            let (mut ids, mut mask) = self.take_doc(i)?;
            if let Some(limit) = limit.filter(|&l| ids.len() > l) {
                match self.overlong {
                    Overlong::Cut => {
                        ids.truncate(limit);
                        mask.truncate(limit);
                        self.counts[i].cut += 1;
                    }
                    Overlong::Drop => {
                        self.counts[i].dropped += 1;
                        let s = &mut self.sources[i];
                        s.drop_run += 1;
                        if s.drop_run >= s.reader.rows {
                            bail!(
                                "source `{}`: every document is longer than a row of {limit} tokens (data.seq_len + 1), so data.overlong = \"drop\" skips them all: raise data.seq_len, or set data.overlong = \"cut\" to train on their first {limit} tokens",
                                self.names[i]
                            );
                        }
                        continue;
                    }
                }
            }
            self.sources[i].drop_run = 0;
            break (i, ids, mask);
        };
        self.consumed[i] += ids.len() as u64;
        let doc = self.docs as u32;
        self.docs += 1;
        Ok(ids
            .into_iter()
            .zip(mask)
            .map(|(t, m)| Slot(t, m, doc, i as u16))
            .collect())
    }

    /// Builds one row of `seq_len + 1` slots.
    fn next_row(&mut self) -> Result<Vec<Slot>> {
        let need = self.seq_len + 1;
        match self.mode {
            PackMode::Stream => {
                while self.buffer.len() < need {
                    let d = self.next_doc()?;
                    self.buffer.extend(d);
                }
                let row = self.buffer[..need].to_vec();
                // Keep the last token: it is the first input of the next row.
                self.buffer.drain(..self.seq_len);
                Ok(row)
            }
            PackMode::Documents => {
                let mut row: Vec<Slot> = Vec::with_capacity(need);
                loop {
                    if self.buffer.is_empty() {
                        // At most `need` slots: longer documents were dropped or cut.
                        self.buffer = self.next_doc()?;
                    }
                    if row.len() + self.buffer.len() <= need {
                        row.append(&mut self.buffer);
                        if row.len() == need {
                            return Ok(row);
                        }
                    } else if row.is_empty() {
                        unreachable!("documents longer than a row are dropped or cut");
                    } else {
                        let pad = Slot(self.tok.pad, false, u32::MAX, u16::MAX);
                        row.resize(need, pad);
                        return Ok(row);
                    }
                }
            }
        }
    }

    /// The next `rows` rows as tensors on the CPU.
    pub fn next_batch(&mut self, rows: usize) -> Result<PackedBatch> {
        let mut data = Vec::with_capacity(rows);
        for _ in 0..rows {
            data.push(self.next_row()?);
        }
        Ok(pack(
            &data,
            self.seq_len,
            self.mode,
            self.tok.token_bytes(),
            self.shares.len(),
        ))
    }
}

/// Turns rows of `seq_len + 1` slots into a batch.
pub fn pack(rows: &[Vec<Slot>], seq_len: usize, mode: PackMode, token_bytes: &[u32], n_sources: usize) -> PackedBatch {
    let b = rows.len();
    let t = seq_len;
    let mut input = Vec::with_capacity(b * t);
    let mut target = Vec::with_capacity(b * t);
    let mut per_source = vec![0i64; n_sources];
    let mut trained = 0i64;
    let mut bytes = 0i64;
    let doc_mode = mode == PackMode::Documents;
    let mut positions = Vec::with_capacity(if doc_mode { b * t } else { 0 });
    let mut docs = Vec::with_capacity(if doc_mode { b * t } else { 0 });
    for row in rows {
        let mut pos = 0i64;
        for i in 0..t {
            let cur = row[i];
            let next = row[i + 1];
            input.push(cur.0 as i64);
            let same_doc = !doc_mode || cur.2 == next.2;
            if next.1 && same_doc {
                target.push(next.0 as i64);
                trained += 1;
                bytes += token_bytes.get(next.0 as usize).copied().unwrap_or(0) as i64;
                if (next.3 as usize) < n_sources {
                    per_source[next.3 as usize] += 1;
                }
            } else {
                target.push(IGNORE);
            }
            if doc_mode {
                if i > 0 && row[i - 1].2 != cur.2 {
                    pos = 0;
                }
                positions.push(pos);
                // Padding gets a distinct id per position so it never attends to a document.
                docs.push(if cur.2 == u32::MAX {
                    -(i as i64) - 1
                } else {
                    cur.2 as i64
                });
                pos += 1;
            }
        }
    }
    let shape = [b as i64, t as i64];
    let (positions, mask) = if doc_mode {
        let d = Tensor::from_slice(&docs).view(shape);
        let same = d.unsqueeze(2).eq_tensor(&d.unsqueeze(1));
        let causal = Tensor::ones([t as i64, t as i64], (Kind::Bool, Device::Cpu)).tril(0);
        let mask = same.logical_and(&causal).unsqueeze(1);
        (Some(Tensor::from_slice(&positions).view(shape)), Some(mask))
    } else {
        (None, None)
    };
    PackedBatch {
        input: Tensor::from_slice(&input).view(shape),
        target: Tensor::from_slice(&target).view(shape),
        positions,
        mask,
        trained_tokens: trained,
        per_source,
        trained_bytes: bytes,
    }
}
