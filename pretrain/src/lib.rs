//! The pretrain stage: next-token prediction from scratch on a broad mix. Its one part of its
//! own is the model it starts from when there is no `--init`: a tokenizer (trained on the
//! mix, or loaded) and an architecture from `[model]`. The loop is the shared LM loop
//! ([`common::lm`]).
use anyhow::{bail, Context, Result};
use common::config::LmConfig;
use common::data::mix::{load_mix, ResolvedMix};
use common::data::parquet::read_all;
use common::data::PackMode;
use common::lm::StageSpec;
use common::stage::Scratch;
use common::tokenizer::Tok;
use std::path::Path;

/// What pretraining asks of the LM loop: every token of streamed documents, from scratch
/// unless `--init` is given.
pub const SPEC: StageSpec = StageSpec {
    stage: "pretrain",
    pack: PackMode::Stream,
    assistant_only: false,
    scratch: Some(from_scratch),
    init_example: "runs/default/pretrain",
};

/// The tokenizer (`[tokenizer]`: trained on the mix, or loaded) and architecture (`[model]`)
/// of a run from scratch.
pub fn from_scratch(cfg: &LmConfig) -> Result<Scratch> {
    let tok = match &cfg.tokenizer {
        Some(t) if t.train => {
            eprintln!(
                "pretrain: training a {}-token BPE on {} MB of the mix",
                t.vocab_size, t.train_mb
            );
            let corpus = tokenizer_corpus(&load_mix(&cfg.data.mix)?, t.train_mb)?;
            Tok::train(corpus.iter(), t.vocab_size)?
        }
        Some(t) => Tok::load(t.path.as_deref().unwrap_or(Path::new("tokenizer.json")))?,
        None => bail!("a run from scratch needs a [tokenizer] section (a path, or train = true)"),
    };
    let section = cfg
        .model
        .as_ref()
        .context("a run from scratch needs a [model] section")?;
    let mcfg = section.resolve(tok.vocab_size() as i64)?;
    Ok((tok, mcfg))
}

/// Reads up to `mb` megabytes of text from the mix, by share, to train a tokenizer.
pub fn tokenizer_corpus(mix: &ResolvedMix, mb: usize) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for src in &mix.sources {
        let budget = (src.share * (mb * 1_000_000) as f64) as usize;
        let mut bytes = 0;
        for d in read_all(src, Some(200_000))? {
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
