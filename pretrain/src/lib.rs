//! The pretrain stage: next-token prediction from scratch on a broad mix. Its one part of its
//! own is the model it starts from when there is no `--init`: a tokenizer (trained on the
//! mix, or loaded) and an architecture from `[model]`. The loop is the shared LM loop
//! ([`common::lm`]).
use anyhow::{bail, Context, Result};
use common::config::LmConfig;
use common::data::mix::{in_root, load_mix};
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
            Tok::train_on_mix(&load_mix(&cfg.data.mix, cfg.root())?, t.vocab_size, t.train_mb)?
        }
        Some(t) => Tok::load(&in_root(
            cfg.root(),
            t.path.as_deref().unwrap_or(Path::new("tokenizer.json")),
        ))?,
        None => bail!("a run from scratch needs a [tokenizer] section (a path, or train = true)"),
    };
    let section = cfg
        .model
        .as_ref()
        .context("a run from scratch needs a [model] section")?;
    let mcfg = section.resolve(tok.vocab_size() as i64)?;
    Ok((tok, mcfg))
}
