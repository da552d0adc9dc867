//! Rollouts: which prompts a step asks, a group of sampled answers to each, their grades,
//! rewards and group-relative advantages, and the token tensors the update trains on.
use crate::config::{Overlong, RlConfig};
use crate::grpo::{advantages, batch_normaliser, flat_groups, LossKind};
use anyhow::Result;
use common::device::seed_everything;
use common::sampling::{generate, Generation};
use common::stage::Stage;
use common::tasks::limit_per_kind;
use common::tokenizer::Message;
use common::verify::{Grader, Task, Verdict};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use tch::Tensor;

/// Where the prompt stream stands: saved with the trainer state, so a resumed run asks
/// the prompts an uninterrupted one would.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptCursor {
    /// Passes over the prompt set so far.
    pub epoch: u64,
    /// Next position in this pass's order.
    pub index: usize,
}

/// The prompts of each step: the prompt set in a seeded order, reshuffled every pass.
pub struct PromptOrder {
    tasks: Vec<Task>,
    seed: u64,
    order: Vec<usize>,
    cursor: PromptCursor,
}

impl PromptOrder {
    /// The order of `tasks` under `seed`, from `cursor`.
    pub fn new(tasks: Vec<Task>, seed: u64, cursor: PromptCursor) -> Self {
        let order = shuffled(tasks.len(), seed, cursor.epoch);
        PromptOrder {
            tasks,
            seed,
            order,
            cursor,
        }
    }

    /// Prompts in the set.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Where the stream stands.
    pub fn cursor(&self) -> PromptCursor {
        self.cursor
    }

    /// The next `n` prompts.
    pub fn next_batch(&mut self, n: usize) -> Vec<Task> {
        (0..n)
            .map(|_| {
                let i = self.next_index();
                self.tasks[i].clone()
            })
            .collect()
    }

    /// The position in the set of the next prompt.
    fn next_index(&mut self) -> usize {
        if self.cursor.index >= self.order.len() {
            self.cursor.epoch += 1;
            self.cursor.index = 0;
            self.order = shuffled(self.tasks.len(), self.seed, self.cursor.epoch);
        }
        self.cursor.index += 1;
        self.order[self.cursor.index - 1]
    }

    /// The distinct prompts a run of `steps × per_step` prompts from the start asks, first
    /// asked first, at most `per_kind` per task kind.
    pub fn seen(&self, steps: u64, per_step: usize, per_kind: usize) -> Vec<Task> {
        let mut from_start = PromptOrder::new(self.tasks.clone(), self.seed, PromptCursor::default());
        let mut firsts = HashSet::new();
        let mut list = Vec::new();
        for _ in 0..steps as usize * per_step {
            let i = from_start.next_index();
            if firsts.insert(i) {
                list.push(self.tasks[i].clone());
            }
        }
        limit_per_kind(list, per_kind)
    }
}

/// The positions `0..n` shuffled for pass `epoch`.
fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(
        seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    idx
}

/// One step's sampled groups, graded.
pub struct Rollout {
    /// Rendered prompts, one per completion (each repeated `group_size` times).
    pub prompts: Vec<Vec<u32>>,
    /// The completions.
    pub gen: Generation,
    /// Their verdicts.
    pub verdicts: Vec<Verdict>,
    /// Rewards (after the overlong policy).
    pub rewards: Vec<f64>,
    /// Group-relative advantages.
    pub adv: Vec<f64>,
    /// Per group: all rewards equal (no learning signal).
    pub flat: Vec<bool>,
    /// Per completion: run through the update (in the loss and able to move it).
    pub trained: Vec<bool>,
    /// What the micro-batch losses are divided by (see [`batch_normaliser`]).
    pub norm: f64,
}

/// Samples `group_size` answers to each prompt of `batch` (seeded per step, so a resumed
/// run samples what an uninterrupted one would), grades them, and computes rewards,
/// advantages and which completions the update trains on.
pub fn rollout(stage: &Stage, grader: &Grader, batch: &[Task], cfg: &RlConfig, step: u64) -> Result<Rollout> {
    let tok = &stage.tok;
    let g = cfg.rl.group_size;
    let mut prompts = Vec::with_capacity(batch.len() * g);
    for t in batch {
        let p = tok.render_prompt(&[Message::new("user", t.prompt.clone())])?;
        prompts.extend(std::iter::repeat_n(p, g));
    }
    seed_everything(cfg.train.seed.wrapping_add(step * 7919));
    let gen = generate(
        &stage.model,
        &prompts,
        &cfg.sampling,
        tok.stops(),
        tok.pad,
        stage.device,
    )?;
    let texts: Vec<String> = gen.tokens.iter().map(|t| tok.decode(t)).collect::<Result<_>>()?;
    let verdicts: Vec<Verdict> = texts
        .par_iter()
        .enumerate()
        .map(|(i, c)| grader.grade(&batch[i / g], c))
        .collect();
    let overlong = cfg.overlong();
    let rewards: Vec<f64> = verdicts
        .iter()
        .zip(&gen.finished)
        .map(|(v, &fin)| {
            if !fin && overlong == Overlong::Penalty {
                v.reward - cfg.rl.overlong_penalty
            } else {
                v.reward
            }
        })
        .collect();
    let adv = advantages(&rewards, g, cfg.scale_rewards())?;
    let flat = flat_groups(&rewards, g);
    let in_loss: Vec<bool> = (0..rewards.len())
        .map(|i| {
            let dropped = cfg.rl.loss == LossKind::Dapo && flat[i / g];
            let masked = overlong == Overlong::Mask && !gen.finished[i];
            !dropped && !masked
        })
        .collect();
    // The batch normaliser counts every sequence in the loss (grpo/dr_grpo: sequences,
    // dapo: their tokens, the stop token included) ...
    let counted: Vec<usize> = (0..rewards.len()).filter(|&i| in_loss[i]).collect();
    let loss_tokens: f64 = counted
        .iter()
        .map(|&i| (gen.tokens[i].len() + usize::from(gen.ended_with[i].is_some())) as f64)
        .sum();
    let norm = batch_normaliser(cfg.rl.loss, counted.len(), loss_tokens);
    // ... but without a KL term a sequence whose advantage is zero adds exactly nothing to
    // the gradient, so it is not run through the model (in half the groups or more of a
    // step every answer gets the same reward).
    let trained: Vec<bool> = (0..rewards.len())
        .map(|i| in_loss[i] && (cfg.rl.kl_coef > 0.0 || adv[i] != 0.0))
        .collect();
    Ok(Rollout {
        prompts,
        gen,
        verdicts,
        rewards,
        adv,
        flat,
        trained,
        norm,
    })
}

/// The trained completions of a rollout as `[N, L]` tensors (on the CPU).
pub struct Sequences {
    /// Prompt + completion tokens, shifted (inputs).
    pub input: Tensor,
    /// Next tokens; `-100` outside completions.
    pub target: Tensor,
    /// 1.0 on completion tokens.
    pub mask: Tensor,
    /// Advantage of each row.
    pub adv: Vec<f64>,
    /// Rows.
    pub n: usize,
}

impl Rollout {
    /// The completions marked `trained`, padded with `pad` into tensors.
    pub fn sequences(&self, pad: u32) -> Sequences {
        let keep: Vec<usize> = (0..self.prompts.len()).filter(|&i| self.trained[i]).collect();
        let seqs: Vec<(Vec<u32>, usize)> = keep
            .iter()
            .map(|&i| {
                let mut s = self.prompts[i].clone();
                let start = s.len();
                s.extend(&self.gen.tokens[i]);
                // The stop token the policy sampled is part of its answer (it learns to stop).
                if let Some(stop) = self.gen.ended_with[i] {
                    s.push(stop);
                }
                (s, start)
            })
            .collect();
        let l = seqs.iter().map(|(s, _)| s.len() - 1).max().unwrap_or(1).max(1);
        let n = seqs.len();
        let mut input = vec![pad as i64; n * l];
        let mut target = vec![-100i64; n * l];
        let mut mask = vec![0f32; n * l];
        for (r, (s, start)) in seqs.iter().enumerate() {
            for i in 0..s.len() - 1 {
                input[r * l + i] = s[i] as i64;
                if i + 1 >= *start {
                    target[r * l + i] = s[i + 1] as i64;
                    mask[r * l + i] = 1.0;
                }
            }
        }
        let shape = [n as i64, l as i64];
        Sequences {
            input: Tensor::from_slice(&input).view(shape),
            target: Tensor::from_slice(&target).view(shape),
            mask: Tensor::from_slice(&mask).view(shape),
            adv: keep.iter().map(|&i| self.adv[i]).collect(),
            n,
        }
    }
}
