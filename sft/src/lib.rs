//! The SFT stage: imitate annotators' conversations, loss on the assistant's tokens only, on
//! the shared LM loop ([`common::lm`]); `[tasks]` grades the model before and after.
use common::data::PackMode;
use common::lm::StageSpec;

/// What SFT asks of the LM loop: one conversation per packed segment (attention confined
/// to it), trained on assistant tokens only, from `--init`.
pub const SPEC: StageSpec = StageSpec {
    stage: "sft",
    pack: PackMode::Documents,
    assistant_only: true,
    scratch: None,
    init_example: "runs/default/midtrain",
};
