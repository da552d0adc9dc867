//! The midtrain stage: continue a checkpoint on a mix that upweights high-density sources,
//! with its own schedule, on the shared LM loop ([`common::lm`]).
use common::data::PackMode;
use common::lm::StageSpec;

/// What midtraining asks of the LM loop: every token of streamed documents, from `--init`.
pub const SPEC: StageSpec = StageSpec {
    stage: "midtrain",
    pack: PackMode::Stream,
    assistant_only: false,
    scratch: None,
    init_example: "runs/default/pretrain",
};
