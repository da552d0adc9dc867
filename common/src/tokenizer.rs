//! Byte-level BPE tokenizer (the Hugging Face `tokenizers` library) and the chat template.
//!
//! Numbers are split into single digits before merging, so arithmetic stays learnable.
//! `tokenizer.json` is the standard Hugging Face format: the Python `tokenizers` package
//! loads it and encodes identically.
//!
//! Chat template (special tokens are single ids, never produced by ordinary text):
//!
//! ```text
//! <|bos|><|system|>{system}<|end|><|user|>{user}<|end|><|assistant|>{answer}<|end|>…
//! ```
//!
//! A generation prompt ends with `<|assistant|>`; generation stops at `<|end|>`. In SFT
//! only the assistant's content and its closing `<|end|>` are trained on.
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper, ModelWrapper, PreTokenizerWrapper, Tokenizer};

/// Special tokens, in id order (they take ids `0..6`).
pub const SPECIAL_TOKENS: [&str; 6] = [
    "<|bos|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<|system|>",
    "<|pad|>",
];

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// How conversations become tokens.
#[derive(Clone)]
enum Chat {
    /// lib2expert's template with its own special tokens.
    Native { user: u32, assistant: u32, system: u32 },
    /// A Hugging Face Jinja `chat_template`, rendered with minijinja.
    Jinja(Arc<JinjaChat>),
    /// No chat template (a base model's tokenizer): text stages only.
    None,
}

/// A Jinja chat template with the special-token strings it may refer to, and the
/// `tokenizer_config.json` it came from (written back with checkpoints and exports).
struct JinjaChat {
    env: minijinja::Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    unk_token: Option<String>,
    config: serde_json::Value,
}

/// The project's tokenizer: a Hugging Face tokenizer, how it renders conversations, and
/// the ids the stages need.
#[derive(Clone)]
pub struct Tok {
    inner: Tokenizer,
    /// Starts every document in packed text (`<|bos|>`; for imported tokenizers their
    /// `bos_token`, else their `eos_token`, the usual document separator).
    pub bos: u32,
    /// Closes an assistant turn (`<|end|>`; for imported templates the token that ends
    /// an assistant message, e.g. `<|im_end|>` or `<|eot_id|>`).
    pub end: u32,
    /// Fills the left of shorter prompts and the tail of packed rows; never trained on.
    pub pad: u32,
    stops: Vec<u32>,
    chat: Chat,
    token_bytes: Vec<u32>,
}

/// Reads `name` of a `tokenizer_config.json`: a string or an `AddedToken` object.
fn token_string(cfg: &serde_json::Value, name: &str) -> Option<String> {
    match &cfg[name] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl Tok {
    /// Trains a byte-level BPE with `vocab_size` entries (special tokens included) on `texts`.
    pub fn train<I, S>(texts: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if vocab_size < 256 + SPECIAL_TOKENS.len() + 1 {
            bail!(
                "tokenizer vocab_size must be at least {} (256 bytes + special tokens), got {vocab_size}",
                256 + SPECIAL_TOKENS.len() + 1
            );
        }
        let special: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|s| AddedToken::from(s.to_string(), true))
            .collect();
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(special)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        let mut tok = Tokenizer::new(ModelWrapper::BPE(BPE::default()));
        tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]))));
        tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
        tok.train(&mut trainer, texts)
            .map_err(|e| anyhow!("training the tokenizer: {e}"))?;
        Self::native(tok)
    }

    /// Loads a `tokenizer.json`. When a Hugging Face `tokenizer_config.json` (or
    /// `chat_template.jinja`) lies beside it with a chat template, that template renders
    /// conversations; otherwise the tokenizer must define lib2expert's special tokens, or
    /// it serves text stages only.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("tokenizer file {} does not exist (train one with `pretrain`, or point [tokenizer] path at an existing tokenizer.json)", path.display());
        }
        let inner = Tokenizer::from_file(path).map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok(Some(
                serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?,
            ))
        };
        let config = read_json("tokenizer_config.json")?;
        let template_file = dir.join("chat_template.jinja");
        let template = if template_file.exists() {
            Some(
                std::fs::read_to_string(&template_file)
                    .with_context(|| format!("reading {}", template_file.display()))?,
            )
        } else {
            config.as_ref().and_then(|c| match &c["chat_template"] {
                serde_json::Value::String(s) => Some(s.clone()),
                // A list of named templates: the one named "default".
                serde_json::Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(String::from),
                _ => None,
            })
        };
        let generation = read_json("generation_config.json")?;
        let has_native = SPECIAL_TOKENS.iter().all(|t| inner.token_to_id(t).is_some());
        let result = match (template, has_native) {
            (None, true) => Self::native(inner),
            (template, _) if template.is_some() || config.is_some() => {
                Self::hugging_face(inner, template, config.unwrap_or(serde_json::Value::Null), generation)
            }
            _ => Self::native(inner),
        };
        result.with_context(|| format!("checking tokenizer {}", path.display()))
    }

    fn native(inner: Tokenizer) -> Result<Self> {
        let id = |s: &str| {
            inner.token_to_id(s).ok_or_else(|| {
                anyhow!(
                    "the tokenizer lacks the special token {s}; lib2expert's chat template needs {} (or put a Hugging Face tokenizer_config.json with a chat_template beside tokenizer.json)",
                    SPECIAL_TOKENS.join(" ")
                )
            })
        };
        let (bos, user, assistant, end, system, pad) = (
            id("<|bos|>")?,
            id("<|user|>")?,
            id("<|assistant|>")?,
            id("<|end|>")?,
            id("<|system|>")?,
            id("<|pad|>")?,
        );
        let token_bytes = token_bytes(&inner);
        Ok(Tok {
            inner,
            bos,
            end,
            pad,
            stops: vec![end],
            chat: Chat::Native {
                user,
                assistant,
                system,
            },
            token_bytes,
        })
    }

    fn hugging_face(
        inner: Tokenizer,
        template: Option<String>,
        config: serde_json::Value,
        generation: Option<serde_json::Value>,
    ) -> Result<Self> {
        let id_of = |s: &Option<String>, name: &str| -> Result<Option<u32>> {
            match s {
                None => Ok(None),
                Some(t) => inner
                    .token_to_id(t)
                    .map(Some)
                    .ok_or_else(|| anyhow!("tokenizer_config.json names {name} `{t}`, which is not in tokenizer.json")),
            }
        };
        let bos_token = token_string(&config, "bos_token");
        let eos_token = token_string(&config, "eos_token");
        let pad_token = token_string(&config, "pad_token");
        let unk_token = token_string(&config, "unk_token");
        let bos_id = id_of(&bos_token, "bos_token")?;
        let eos_id = id_of(&eos_token, "eos_token")?;
        let pad_id = id_of(&pad_token, "pad_token")?;
        let mut stops: Vec<u32> = eos_id.into_iter().collect();
        if let Some(g) = &generation {
            let ids: Vec<u32> = match &g["eos_token_id"] {
                serde_json::Value::Number(n) => n.as_u64().map(|v| v as u32).into_iter().collect(),
                serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)).collect(),
                _ => vec![],
            };
            for i in ids {
                if !stops.contains(&i) {
                    stops.push(i);
                }
            }
        }
        let token_bytes = token_bytes(&inner);
        let mut tok = Tok {
            inner,
            bos: 0,
            end: 0,
            pad: 0,
            stops,
            chat: Chat::None,
            token_bytes,
        };
        if let Some(source) = template {
            let mut env = minijinja::Environment::new();
            env.set_trim_blocks(true);
            env.set_lstrip_blocks(true);
            env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
            env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            });
            env.add_function("strftime_now", |_fmt: String| -> String {
                // Rendering must be reproducible: a fixed date, as for a frozen eval.
                "26 Jul 2024".to_string()
            });
            env.add_template_owned("chat", source.clone())
                .map_err(|e| anyhow!("the chat template does not parse: {e}"))?;
            tok.chat = Chat::Jinja(Arc::new(JinjaChat {
                env,
                source,
                bos_token,
                eos_token,
                pad_token,
                unk_token,
                config,
            }));
            // The token that closes an assistant turn: the first special token after its content.
            let probe = [Message::new("user", "Hi"), Message::new("assistant", "PROBE")];
            let text = tok.render_text(&probe, false)?;
            let after = text
                .rfind("PROBE")
                .map(|i| &text[i + "PROBE".len()..])
                .ok_or_else(|| anyhow!("the chat template drops the assistant's message"))?;
            let ids = tok.encode(after)?;
            let special = tok.special_ids();
            if let Some(&t) = ids.iter().find(|i| special.contains(i)) {
                tok.stops.retain(|&s| s != t);
                tok.stops.insert(0, t);
            }
        }
        let Some(&end) = tok.stops.first() else {
            bail!("the tokenizer defines no end-of-turn token: set eos_token in tokenizer_config.json");
        };
        tok.end = end;
        tok.bos = bos_id.or(eos_id).unwrap_or(tok.end);
        tok.pad = pad_id.unwrap_or(tok.end);
        Ok(tok)
    }

    /// Ids of the special (added, `special: true`) tokens.
    fn special_ids(&self) -> HashSet<u32> {
        special_ids(&self.inner)
    }

    /// Trains a BPE of `vocab_size` tokens on up to `mb` megabytes of `mix`'s text, each source
    /// by its share: pretrain's `[tokenizer] train = true` and `datasets tokenizer` alike.
    pub fn train_on_mix(mix: &crate::data::ResolvedMix, vocab_size: usize, mb: usize) -> Result<Self> {
        let corpus = mix_corpus(mix, mb)?;
        if corpus.iter().all(|t| t.trim().is_empty()) {
            bail!("mix {} has no text to train a tokenizer on", mix.path.display());
        }
        Tok::train(corpus.iter(), vocab_size)
    }

    /// Writes `tokenizer.json` (and, for a Hugging Face chat template, its
    /// `tokenizer_config.json` and `generation_config.json` beside it).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(|e| anyhow!("writing tokenizer {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for (name, text) in self.sidecar_files()? {
            std::fs::write(dir.join(name), text).with_context(|| format!("writing {}", dir.join(name).display()))?;
        }
        Ok(())
    }

    /// Files that travel with `tokenizer.json`: for an imported chat template, its
    /// `tokenizer_config.json` (template included) and the stop ids in `generation_config.json`.
    pub fn sidecar_files(&self) -> Result<Vec<(&'static str, String)>> {
        let Chat::Jinja(j) = &self.chat else {
            return Ok(vec![]);
        };
        let mut cfg = match &j.config {
            serde_json::Value::Object(_) => j.config.clone(),
            _ => serde_json::json!({}),
        };
        cfg["chat_template"] = j.source.clone().into();
        let gen = serde_json::json!({ "eos_token_id": self.stops });
        Ok(vec![
            ("tokenizer_config.json", serde_json::to_string_pretty(&cfg)?),
            ("generation_config.json", serde_json::to_string_pretty(&gen)?),
        ])
    }

    /// The Jinja chat template, when the tokenizer came with one.
    pub fn chat_template(&self) -> Option<&str> {
        match &self.chat {
            Chat::Jinja(j) => Some(&j.source),
            _ => None,
        }
    }

    /// Whether this is lib2expert's own chat format (`<|user|>`, `<|assistant|>`, …).
    pub fn is_native(&self) -> bool {
        matches!(self.chat, Chat::Native { .. })
    }

    /// Ids that end a generated answer (`end` first).
    pub fn stops(&self) -> &[u32] {
        &self.stops
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The tokenizer as JSON text (what `save` writes).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| anyhow!("serialising tokenizer: {e}"))
    }

    /// Number of ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// UTF-8 bytes that each id stands for (0 for special tokens): the denominator of bits per byte.
    pub fn token_bytes(&self) -> &[u32] {
        &self.token_bytes
    }

    /// Ids of plain text (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Ids of many texts, tokenized in parallel across cores.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encs = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of ids; special tokens are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("decoding: {e}"))
    }

    /// The conversation as text, through the Jinja chat template.
    pub fn render_text(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let j = match &self.chat {
            Chat::Jinja(j) => j,
            _ => bail!("render_text needs a Jinja chat template"),
        };
        let tmpl = j.env.get_template("chat").map_err(|e| anyhow!("{e}"))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => j.bos_token,
            eos_token => j.eos_token,
            pad_token => j.pad_token,
            unk_token => j.unk_token,
        })
        .map_err(|e| anyhow!("rendering the chat template: {e:#}"))
    }

    /// The conversation as ids, with a mask that is true on the tokens trained on
    /// (assistant content and its closing `<|end|>`, or for a Jinja template the text an
    /// assistant message adds to the rendering).
    pub fn render_chat(&self, messages: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
        match &self.chat {
            Chat::Native { .. } => self.render_native(messages),
            Chat::Jinja(_) => self.render_jinja(messages),
            Chat::None => bail!("{NO_TEMPLATE}"),
        }
    }

    fn render_native(&self, messages: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
        let mut ids = vec![self.bos];
        let mut mask = vec![false];
        for m in messages {
            let (open, train) = self.role_token(&m.role)?;
            ids.push(open);
            mask.push(false);
            let content = self.encode(&m.content)?;
            mask.extend(std::iter::repeat_n(train, content.len() + 1));
            ids.extend(content);
            ids.push(self.end);
        }
        Ok((ids, mask))
    }

    /// Renders the whole conversation, then finds what each assistant message added: the
    /// rendering of the messages before it with a generation prompt is a prefix of the
    /// rendering through it; the bytes between are trained on.
    fn render_jinja(&self, messages: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
        let full = self.render_text(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.render_text(&messages[..i], true)?;
            let through = self.render_text(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                bail!(
                    "the chat template renders message {i} differently depending on what follows it, so the assistant's tokens cannot be located; SFT needs a template whose renderings of a conversation's prefixes are prefixes of its rendering"
                );
            }
            spans.push(before.len()..through.len());
        }
        let enc = self
            .inner
            .encode(full.as_str(), false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let mask = enc
            .get_offsets()
            .iter()
            .map(|&(a, b)| spans.iter().any(|s| b > s.start && a < s.end))
            .collect();
        Ok((enc.get_ids().to_vec(), mask))
    }

    /// The conversation so far followed by the assistant's opening: the prompt to generate a reply.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        match &self.chat {
            Chat::Native { assistant, .. } => {
                let (mut ids, _) = self.render_native(messages)?;
                ids.push(*assistant);
                Ok(ids)
            }
            Chat::Jinja(_) => self.encode(&self.render_text(messages, true)?),
            Chat::None => bail!("{NO_TEMPLATE}"),
        }
    }

    fn role_token(&self, role: &str) -> Result<(u32, bool)> {
        let Chat::Native {
            user,
            assistant,
            system,
        } = self.chat
        else {
            bail!("not a native chat tokenizer");
        };
        match role {
            "user" => Ok((user, false)),
            "assistant" => Ok((assistant, true)),
            "system" => Ok((system, false)),
            other => bail!("unknown chat role `{other}`: expected system, user or assistant"),
        }
    }
}

const NO_TEMPLATE: &str = "this tokenizer has no chat template, so conversations cannot be rendered: add a `chat_template` (Jinja, e.g. ChatML) to tokenizer_config.json beside tokenizer.json, or start from a chat model";

/// Ids of the tokenizer's special (added, `special: true`) tokens.
fn special_ids(inner: &Tokenizer) -> HashSet<u32> {
    inner
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(&i, _)| i)
        .collect()
}

/// Bytes of text per id (0 for special tokens). Byte-level BPE stores one character per
/// byte; SentencePiece-style vocabularies write `▁` for a space and `<0xNN>` for a raw byte.
fn token_bytes(inner: &Tokenizer) -> Vec<u32> {
    let n = inner.get_vocab_size(true);
    let byte_level = ByteLevel::alphabet()
        .iter()
        .all(|c| inner.token_to_id(&c.to_string()).is_some());
    let special = special_ids(inner);
    (0..n as u32)
        .map(|i| {
            if special.contains(&i) {
                return 0;
            }
            let Some(t) = inner.id_to_token(i) else {
                return 0;
            };
            if byte_level {
                t.chars().count() as u32
            } else if t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
                1
            } else {
                t.replace('\u{2581}', " ").len() as u32
            }
        })
        .collect()
}

/// Up to `mb` megabytes of text from `mix`, each source by its share (at most 200,000 documents
/// per source), to train a tokenizer on.
pub fn mix_corpus(mix: &crate::data::ResolvedMix, mb: usize) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for src in &mix.sources {
        let budget = (src.share * (mb * 1_000_000) as f64) as usize;
        let mut bytes = 0;
        for d in crate::data::parquet::read_all(src, Some(200_000))? {
            let t = d.full_text();
            bytes += t.len();
            texts.push(t);
            if bytes >= budget {
                break;
            }
        }
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        (0..400)
            .map(|i| {
                format!(
                    "The town of Velmora {i} exports salt. 12 + {i} = {} and the river flows north.",
                    12 + i
                )
            })
            .collect()
    }

    #[test]
    fn trains_splits_digits_and_round_trips() -> Result<()> {
        let texts = corpus();
        let tok = Tok::train(texts.iter(), 400)?;
        assert!(tok.vocab_size() <= 400);
        assert_eq!((tok.bos, tok.end, tok.pad), (0, 3, 5));
        let s = "Velmora exports 1234 salt.";
        let ids = tok.encode(s)?;
        assert_eq!(tok.decode(&ids)?, s);
        // Each digit is its own token.
        let digits = tok.encode("1234")?;
        assert_eq!(digits.len(), 4);
        let bytes: u32 = ids.iter().map(|&i| tok.token_bytes()[i as usize]).sum();
        assert_eq!(bytes as usize, s.len());
        Ok(())
    }

    #[test]
    fn chat_mask_covers_assistant_only() -> Result<()> {
        let tok = Tok::train(corpus().iter(), 300)?;
        let msgs = vec![Message::new("user", "2 + 2?"), Message::new("assistant", "Answer: 4")];
        let (ids, mask) = tok.render_chat(&msgs)?;
        assert_eq!(ids.len(), mask.len());
        let trained: Vec<u32> = ids.iter().zip(&mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
        assert_eq!(*trained.last().unwrap_or(&0), tok.end);
        assert_eq!(tok.decode(&trained)?, "Answer: 4");
        let prompt = tok.render_prompt(&msgs[..1])?;
        assert_eq!(*prompt.last().unwrap_or(&0), tok.token_id("<|assistant|>").unwrap_or(0));
        assert!(tok
            .render_chat(&[Message::new("robot", "x")])
            .unwrap_err()
            .to_string()
            .contains("robot"));
        Ok(())
    }

    #[test]
    fn python_tokenizers_encodes_identically() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let tok = Tok::train(corpus().iter(), 350)?;
        let path = dir.path().join("tokenizer.json");
        tok.save(&path)?;
        let sample = "Velmora 2024: the salt of the river, 37 + 48 = 85.";
        let ours = tok.encode(sample)?;
        let python = testkit::venv_python();
        let out = std::process::Command::new(&python)
            .args([
                "-c",
                "import sys, tokenizers; t = tokenizers.Tokenizer.from_file(sys.argv[1]); print(' '.join(map(str, t.encode(sys.argv[2], add_special_tokens=False).ids)))",
            ])
            .arg(&path)
            .arg(sample)
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<u32> = String::from_utf8(out.stdout)?
            .split_whitespace()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        assert_eq!(ours, theirs);
        Ok(())
    }

    #[test]
    fn missing_or_foreign_tokenizer_is_explained() -> Result<()> {
        let err = Tok::load(Path::new("/nonexistent/tokenizer.json"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("/nonexistent/tokenizer.json") && err.contains("does not exist"),
            "{err}"
        );
        // A tokenizer without our special tokens.
        let dir = tempfile::tempdir()?;
        let mut plain = Tokenizer::new(ModelWrapper::BPE(BPE::default()));
        plain.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
        let path = dir.path().join("tokenizer.json");
        plain.save(&path, false).map_err(|e| anyhow!("{e}"))?;
        let err = Tok::load(&path).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains("lacks the special token <|bos|>"), "{err}");
        Ok(())
    }
}
