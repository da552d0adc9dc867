//! GRPO and its variants: group-relative advantages and the clipped policy-ratio loss.
//!
//! | variant | advantage | aggregation | clip | groups with equal rewards |
//! | --- | --- | --- | --- | --- |
//! | `grpo` | (r − mean) / std | mean over each sequence's tokens, then over sequences | symmetric | kept (zero gradient) |
//! | `dr_grpo` | r − mean | sum over tokens / `max_new_tokens`, mean over sequences | symmetric | kept |
//! | `dapo` | (r − mean) / std | sum over all tokens / all tokens (token level) | asymmetric (`clip_high` > `clip_low`) | dropped; overlong answers penalised |
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Loss variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// DeepSeekMath's GRPO: std-normalised advantages, per-sequence length normalisation.
    Grpo,
    /// Dr. GRPO: no std scaling, no per-sequence length normalisation (a constant instead).
    DrGrpo,
    /// DAPO: token-level aggregation, clip-higher, dynamic sampling, overlong shaping.
    Dapo,
}

/// Group-relative advantages: `rewards` are `[groups × group_size]` in group order.
/// Each reward minus its group's mean, divided by the group's (population) std when
/// `scale` and the std is non-zero.
pub fn advantages(rewards: &[f64], group_size: usize, scale: bool) -> Result<Vec<f64>> {
    if group_size == 0 || rewards.len() % group_size != 0 {
        bail!("{} rewards do not split into groups of {group_size}", rewards.len());
    }
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group_size) {
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let var = g.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / g.len() as f64;
        let std = var.sqrt();
        for r in g {
            let a = r - mean;
            out.push(if scale && std > 1e-8 { a / (std + 1e-6) } else { a });
        }
    }
    Ok(out)
}

/// Whether every reward in each group is equal (such groups carry no learning signal).
pub fn flat_groups(rewards: &[f64], group_size: usize) -> Vec<bool> {
    rewards
        .chunks(group_size)
        .map(|g| g.iter().all(|r| (r - g[0]).abs() < 1e-9))
        .collect()
}

/// Outputs of [`policy_loss`].
pub struct LossParts {
    /// The scalar to differentiate (already divided by the batch normaliser).
    pub loss: Tensor,
    /// Tokens where clipping removed the gradient, out of the counted tokens.
    pub clipped_tokens: f64,
    /// Counted tokens.
    pub tokens: f64,
    /// Sum over tokens of the k3 estimate of KL(policy ‖ reference).
    pub kl_sum: f64,
}

/// What [`policy_loss`] reads of a micro-batch: `[N, L]` log-probs of the taken tokens under
/// the current policy (with grad), the sampling policy and the reference; `mask` (1.0 on
/// completion tokens that count) and `[N]` advantages.
pub struct LossInputs<'a> {
    /// Current policy (with grad).
    pub logp: &'a Tensor,
    /// The policy that sampled.
    pub old_logp: &'a Tensor,
    /// The frozen reference, when KL is measured.
    pub ref_logp: Option<&'a Tensor>,
    /// 1.0 on completion tokens that count.
    pub mask: &'a Tensor,
    /// Advantages, one per row.
    pub adv: &'a Tensor,
}

/// The loss variant and its constants.
#[derive(Clone, Copy, Debug)]
pub struct LossSettings {
    /// grpo | dr_grpo | dapo.
    pub kind: LossKind,
    /// ε_low: the ratio is clipped at 1 − ε_low …
    pub clip_low: f64,
    /// … and at 1 + ε_high.
    pub clip_high: f64,
    /// Weight of the k3 KL term (needs `ref_logp`).
    pub kl_coef: f64,
    /// `dr_grpo`'s constant length normaliser.
    pub max_new_tokens: i64,
    /// The batch-level normaliser of the variant (see [`batch_normaliser`]); the micro-batch
    /// losses then sum to the batch loss.
    pub norm: f64,
}

/// Clipped policy-ratio loss of a micro-batch.
pub fn policy_loss(x: &LossInputs<'_>, s: &LossSettings) -> LossParts {
    let LossInputs {
        logp,
        old_logp,
        ref_logp,
        mask,
        adv,
    } = *x;
    let LossSettings {
        kind,
        clip_low,
        clip_high,
        kl_coef,
        max_new_tokens,
        norm,
    } = *s;
    let ratio = (logp - old_logp).exp();
    let a = adv.unsqueeze(1);
    let unclipped = -&a * &ratio;
    let clipped = -&a * ratio.clamp(1.0 - clip_low, 1.0 + clip_high);
    let per_token = unclipped.maximum(&clipped);
    // Clip is active where the clipped branch wins strictly (its gradient is zero there).
    let active = clipped.gt_tensor(&unclipped).to_kind(Kind::Float) * mask;
    let mut per_token = per_token;
    let mut kl_sum = 0.0;
    if let Some(r) = ref_logp {
        // k3 estimator: exp(r − p) − (r − p) − 1 ≥ 0.
        let d = r - logp;
        let kl = d.exp() - &d - 1.0;
        kl_sum = (&kl * mask).sum(Kind::Float).double_value(&[]);
        if kl_coef > 0.0 {
            per_token = per_token + kl * kl_coef;
        }
    }
    let masked = per_token * mask;
    let loss = match kind {
        LossKind::Grpo => {
            let lens = mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
            (masked.sum_dim_intlist(1, false, Kind::Float) / lens).sum(Kind::Float) / norm
        }
        LossKind::DrGrpo => masked.sum(Kind::Float) / (max_new_tokens as f64) / norm,
        LossKind::Dapo => masked.sum(Kind::Float) / norm,
    };
    LossParts {
        loss,
        clipped_tokens: active.sum(Kind::Float).double_value(&[]),
        tokens: mask.sum(Kind::Float).double_value(&[]),
        kl_sum,
    }
}

/// What the micro-batch losses are divided by so they add up to the batch loss:
/// sequences for `grpo` and `dr_grpo`, tokens for `dapo`.
pub fn batch_normaliser(kind: LossKind, sequences: usize, tokens: f64) -> f64 {
    match kind {
        LossKind::Grpo | LossKind::DrGrpo => sequences.max(1) as f64,
        LossKind::Dapo => tokens.max(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    /// The loss of `logp` against `old` (and `refp`) under the given settings.
    fn loss(x: (&Tensor, &Tensor, Option<&Tensor>), mask: &Tensor, adv: &Tensor, s: LossSettings) -> LossParts {
        let inputs = LossInputs {
            logp: x.0,
            old_logp: x.1,
            ref_logp: x.2,
            mask,
            adv,
        };
        policy_loss(&inputs, &s)
    }

    /// Settings: `kind`, clip `(low, high)`, `kl_coef`, `max_new_tokens`, `norm`.
    fn settings(kind: LossKind, clip: (f64, f64), kl_coef: f64, max_new_tokens: i64, norm: f64) -> LossSettings {
        LossSettings {
            kind,
            clip_low: clip.0,
            clip_high: clip.1,
            kl_coef,
            max_new_tokens,
            norm,
        }
    }

    #[test]
    fn advantages_by_hand() -> Result<()> {
        // Group [1, 0, 0, 1]: mean 0.5, std 0.5 → ±1 (scaled) or ±0.5 (unscaled).
        let a = advantages(&[1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3], 4, true)?;
        for (x, e) in a.iter().zip([1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0]) {
            assert!((x - e).abs() < 1e-5, "{a:?}");
        }
        let u = advantages(&[1.0, 0.0, 0.0], 3, false)?;
        assert!((u[0] - 2.0 / 3.0).abs() < 1e-12 && (u[1] + 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            flat_groups(&[1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3], 4),
            vec![false, true]
        );
        assert!(advantages(&[1.0, 2.0, 3.0], 2, true).is_err());
        Ok(())
    }

    #[test]
    fn clip_is_active_exactly_where_it_should_be() {
        // Positive advantage: clip bites when ratio > 1 + high. Negative: when ratio < 1 − low.
        let old = t(&[0.0, 0.0, 0.0, 0.0], &[2, 2]);
        let r = |x: f32| x.ln();
        let logp = t(&[r(1.5), r(1.1), r(0.5), r(0.9)], &[2, 2]);
        let mask = Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu));
        let adv = t(&[1.0, -1.0], &[2]);
        let p = loss(
            (&logp, &old, None),
            &mask,
            &adv,
            settings(LossKind::Dapo, (0.2, 0.28), 0.0, 8, 4.0),
        );
        // Row 0 (adv +1): ratio 1.5 clipped (> 1.28), 1.1 not. Row 1 (adv −1): 0.5 clipped (< 0.8), 0.9 not.
        assert_eq!(p.clipped_tokens, 2.0);
        // Loss = mean of [−1.28, −1.1, +0.8, +0.9] = −0.17.
        assert!(
            (p.loss.double_value(&[]) + 0.17).abs() < 1e-6,
            "{}",
            p.loss.double_value(&[])
        );
    }

    #[test]
    fn variants_aggregate_differently() {
        // Two sequences, lengths 1 and 3, ratio 1, advantages 1 and 1: token losses all −1.
        let z = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
        let mask = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[2, 3]);
        let adv = t(&[1.0, 1.0], &[2]);
        let run = |k| {
            loss(
                (&z, &z, None),
                &mask,
                &adv,
                settings(k, (0.2, 0.2), 0.0, 4, batch_normaliser(k, 2, 4.0)),
            )
            .loss
            .double_value(&[])
        };
        // grpo: each sequence's mean (−1, −1), mean over 2 sequences = −1.
        assert!((run(LossKind::Grpo) + 1.0).abs() < 1e-6);
        // dr_grpo: token sums (−1, −3) / max_new_tokens 4, mean over 2 = −0.5.
        assert!((run(LossKind::DrGrpo) + 0.5).abs() < 1e-6);
        // dapo: all 4 tokens / 4 = −1; the long sequence weighs 3x the short one.
        assert!((run(LossKind::Dapo) + 1.0).abs() < 1e-6);
        let mask2 = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[2, 3]);
        let adv2 = t(&[1.0, 0.0], &[2]);
        let d = loss(
            (&z, &z, None),
            &mask2,
            &adv2,
            settings(LossKind::Dapo, (0.2, 0.2), 0.0, 4, 4.0),
        )
        .loss
        .double_value(&[]);
        let g = loss(
            (&z, &z, None),
            &mask2,
            &adv2,
            settings(LossKind::Grpo, (0.2, 0.2), 0.0, 4, 2.0),
        )
        .loss
        .double_value(&[]);
        assert!((d + 0.25).abs() < 1e-6, "token level: 1 of 4 tokens carries −1");
        assert!((g + 0.5).abs() < 1e-6, "sequence level: 1 of 2 sequences carries −1");
    }

    #[test]
    fn kl_is_zero_at_the_reference_and_positive_away() {
        let mask = Tensor::ones([1, 2], (Kind::Float, tch::Device::Cpu));
        let adv = t(&[0.0], &[1]);
        let lp = t(&[-1.0, -2.0], &[1, 2]);
        let s = settings(LossKind::Grpo, (0.2, 0.2), 0.1, 4, 1.0);
        let same = loss((&lp, &lp, Some(&lp)), &mask, &adv, s);
        assert!(same.kl_sum.abs() < 1e-9);
        let other = t(&[-1.5, -1.0], &[1, 2]);
        let away = loss((&lp, &lp, Some(&other)), &mask, &adv, s);
        assert!(away.kl_sum > 0.0 && away.loss.double_value(&[]) > 0.0);
    }
}
