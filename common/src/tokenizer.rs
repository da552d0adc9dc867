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
use std::path::Path;
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

/// The project's tokenizer: a Hugging Face tokenizer plus the ids of the chat tokens.
#[derive(Clone)]
pub struct Tok {
    inner: Tokenizer,
    /// `<|bos|>`: starts every document and conversation.
    pub bos: u32,
    /// `<|user|>`: opens a user turn.
    pub user: u32,
    /// `<|assistant|>`: opens an assistant turn.
    pub assistant: u32,
    /// `<|end|>`: closes a turn.
    pub end: u32,
    /// `<|system|>`: opens a system turn.
    pub system: u32,
    /// `<|pad|>`: padding, never trained on.
    pub pad: u32,
    token_bytes: Vec<u32>,
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
        Self::from_tokenizer(tok)
    }

    /// Loads a `tokenizer.json`; it must define the project's special tokens.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!("tokenizer file {} does not exist (train one with `pretrain`, or point [tokenizer] path at an existing tokenizer.json)", path.display());
        }
        let inner = Tokenizer::from_file(path).map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        Self::from_tokenizer(inner).with_context(|| format!("checking tokenizer {}", path.display()))
    }

    fn from_tokenizer(inner: Tokenizer) -> Result<Self> {
        let id = |s: &str| {
            inner.token_to_id(s).ok_or_else(|| {
                anyhow!(
                    "the tokenizer lacks the special token {s}; lib2expert's chat template needs {}",
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
        let n = inner.get_vocab_size(true);
        let mut token_bytes = vec![0u32; n];
        for (i, slot) in token_bytes.iter_mut().enumerate() {
            let i = i as u32;
            if [bos, user, assistant, end, system, pad].contains(&i) {
                continue;
            }
            // Byte-level BPE: one character of the token string per byte.
            *slot = inner.id_to_token(i).map_or(0, |t| t.chars().count() as u32);
        }
        Ok(Tok {
            inner,
            bos,
            user,
            assistant,
            end,
            system,
            pad,
            token_bytes,
        })
    }

    /// Writes `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(|e| anyhow!("writing tokenizer {}: {e}", path.display()))
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

    /// The conversation as ids, with a mask that is true on the tokens trained on
    /// (assistant content and its closing `<|end|>`).
    pub fn render_chat(&self, messages: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
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

    /// The conversation so far followed by `<|assistant|>`: the prompt to generate a reply.
    pub fn render_prompt(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let (mut ids, _) = self.render_chat(messages)?;
        ids.push(self.assistant);
        Ok(ids)
    }

    fn role_token(&self, role: &str) -> Result<(u32, bool)> {
        match role {
            "user" => Ok((self.user, false)),
            "assistant" => Ok((self.assistant, true)),
            "system" => Ok((self.system, false)),
            other => bail!("unknown chat role `{other}`: expected system, user or assistant"),
        }
    }
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
        assert_eq!((tok.bos, tok.user, tok.assistant, tok.end), (0, 1, 2, 3));
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
        assert_eq!(*prompt.last().unwrap_or(&0), tok.assistant);
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
        let python = crate::testing::venv_python();
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
