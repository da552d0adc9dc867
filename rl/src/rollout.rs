//! Rollouts: which prompts a step asks, a group of sampled answers to each, their grades,
//! rewards and group-relative advantages, and the token tensors the update trains on.
use crate::config::{Overlong, RlConfig};
use crate::grpo::{advantages, batch_normaliser, flat_groups, LossKind};
use anyhow::{bail, Result};
use common::device::seed_everything;
use common::prompts::{Drawn, PromptStream};
use common::sampling::{fits_context, generate, Generation};
use common::stage::Stage;
use common::verify::{Grader, Task, Verdict};
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// One sampled completion, for the step's statistics.
pub struct SampleStat {
    /// Its verdict.
    pub verdict: Verdict,
    /// Its reward (after the overlong policy).
    pub reward: f64,
    /// Whether it reached a stop token.
    pub finished: bool,
    /// Completion tokens.
    pub len: usize,
}

/// One step's graded groups: those kept for the update (flattened, group after group), and
/// statistics of everything sampled (replaced groups included).
#[derive(Default)]
pub struct Rollout {
    /// Rendered prompts, one per completion (each repeated `group_size` times).
    pub prompts: Vec<Vec<u32>>,
    /// The completions (without the stop token).
    pub tokens: Vec<Vec<u32>>,
    /// The stop token that ended each finished completion.
    pub ended_with: Vec<Option<u32>>,
    /// Rewards (after the overlong policy).
    pub rewards: Vec<f64>,
    /// Group-relative advantages.
    pub adv: Vec<f64>,
    /// Per completion: run through the update (in the loss and able to move it).
    pub trained: Vec<bool>,
    /// What the micro-batch losses are divided by (see [`batch_normaliser`]).
    pub norm: f64,
    /// Every completion sampled this step.
    pub all: Vec<SampleStat>,
    /// Groups sampled, and how many of them had equal rewards.
    pub groups_sampled: usize,
    /// Groups whose rewards all agree (no learning signal).
    pub flat_groups: usize,
    /// Seconds spent generating.
    pub gen_secs: f64,
    /// Prompts drawn and skipped because they leave no room in the model's context.
    pub skipped_overlong: usize,
}

/// Draws `prompts_per_step` prompts from the stream, samples `group_size` answers to each
/// (seeded per step and round, so a resumed run samples what an uninterrupted one would),
/// grades them and feeds each group's success rate to the curriculum. With
/// `rl.resample_rounds > 0` (DAPO's dynamic sampling), groups whose rewards all agree are
/// replaced by fresh prompts for up to that many more rounds and left out of the update.
/// The first `practise_per_kind` prompts of each task kind are recorded in `practised`.
pub fn rollout(
    stage: &Stage,
    grader: &Grader,
    stream: &mut PromptStream,
    cfg: &RlConfig,
    step: u64,
    practised: &mut Practised,
) -> Result<Rollout> {
    let tok = &stage.tok;
    let g = cfg.rl.group_size;
    let resample = cfg.rl.resample_rounds > 0;
    let overlong = cfg.overlong();
    let mut out = Rollout::default();
    let mut finished = Vec::new();
    for round in 0..=cfg.rl.resample_rounds {
        let need = cfg.rl.prompts_per_step - out.rewards.len() / g;
        if need == 0 {
            break;
        }
        let (drawn, prompts) = draw_fitting(stage, stream, need, g, &mut out.skipped_overlong)?;
        for d in &drawn {
            practised.record(&d.task);
        }
        let dist = stage.dist;
        // Data-parallel ranks sample and grade whole groups (group j on rank j mod world), each
        // from its own seed, and share the results: every rank then holds the whole step.
        seed_everything(
            cfg.train
                .seed
                .wrapping_add(step * 7919)
                .wrapping_add(round as u64 * 104_729)
                .wrapping_add(dist.rank as u64 * 1_000_003),
        );
        let mine: Vec<usize> = (0..prompts.len())
            .filter(|i| (i / g) % dist.world == dist.rank)
            .collect();
        let my_prompts: Vec<Vec<u32>> = mine.iter().map(|&i| prompts[i].clone()).collect();
        let my_gen = generate(
            &stage.model,
            &my_prompts,
            &cfg.sampling,
            tok.stops(),
            tok.pad,
            stage.device,
        )?;
        out.gen_secs += my_gen.secs;
        let my_texts: Vec<String> = my_gen.tokens.iter().map(|t| tok.decode(t)).collect::<Result<_>>()?;
        let items: Vec<(&Task, &str, bool)> = my_texts
            .iter()
            .zip(&mine)
            .enumerate()
            .map(|(k, (c, &i))| (&drawn[i / g].task, c.as_str(), my_gen.finished[k]))
            .collect();
        let my_verdicts = grader.grade_all(&items);
        let (gen, verdicts) = share_groups(
            dist,
            prompts.len(),
            &mine,
            my_gen,
            my_verdicts,
            cfg.sampling.max_new_tokens,
        )?;
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
        let flat = flat_groups(&rewards, g);
        for (j, d) in drawn.iter().enumerate() {
            let rows = j * g..(j + 1) * g;
            let right = verdicts[rows.clone()].iter().filter(|v| v.correct).count();
            stream.curriculum.record(d.slot, right as f64 / g as f64);
            out.groups_sampled += 1;
            out.flat_groups += usize::from(flat[j]);
            for i in rows.clone() {
                out.all.push(SampleStat {
                    verdict: verdicts[i],
                    reward: rewards[i],
                    finished: gen.finished[i],
                    len: gen.tokens[i].len(),
                });
            }
            if resample && flat[j] {
                continue;
            }
            for i in rows {
                out.prompts.push(prompts[i].clone());
                out.tokens.push(gen.tokens[i].clone());
                out.ended_with.push(gen.ended_with[i]);
                out.rewards.push(rewards[i]);
                finished.push(gen.finished[i]);
            }
        }
        if !resample {
            break;
        }
    }
    let rewards = &out.rewards;
    out.adv = advantages(rewards, g, cfg.scale_rewards())?;
    let flat = flat_groups(rewards, g);
    let in_loss: Vec<bool> = (0..rewards.len())
        .map(|i| {
            let dropped = cfg.rl.loss == LossKind::Dapo && flat[i / g];
            let masked = overlong == Overlong::Mask && !finished[i];
            !dropped && !masked
        })
        .collect();
    // The batch normaliser counts every sequence in the loss (grpo/dr_grpo: sequences,
    // dapo: their tokens, the stop token included) ...
    let counted: Vec<usize> = (0..rewards.len()).filter(|&i| in_loss[i]).collect();
    let loss_tokens: f64 = counted
        .iter()
        .map(|&i| (out.tokens[i].len() + usize::from(out.ended_with[i].is_some())) as f64)
        .sum();
    out.norm = batch_normaliser(cfg.rl.loss, counted.len(), loss_tokens);
    // ... but without a KL term a sequence whose advantage is zero adds exactly nothing to
    // the gradient, so it is not run through the model (in half the groups or more of a
    // step every answer gets the same reward).
    out.trained = (0..rewards.len())
        .map(|i| in_loss[i] && (cfg.rl.kl_coef > 0.0 || out.adv[i] != 0.0))
        .collect();
    Ok(out)
}

/// Every rank's sampled rows and verdicts on every rank: this rank's rows (`mine`, of `n`) are
/// written into zeroed buffers that are summed across ranks. World size 1: as given.
fn share_groups(
    dist: &common::dist::Dist,
    n: usize,
    mine: &[usize],
    gen: Generation,
    verdicts: Vec<Verdict>,
    max_new: i64,
) -> Result<(Generation, Vec<Verdict>)> {
    if !dist.is_parallel() {
        return Ok((gen, verdicts));
    }
    let width = gen
        .tokens
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(max_new as usize)
        .max(1);
    // Per row: tokens (+1, 0 = none), then length, finished, stop token + 1 (0 = none).
    let cols = width + 3;
    let mut ints = vec![0i64; n * cols];
    // Per row: reward, correct, abstained, formatted, errored.
    let mut floats = vec![0f64; n * 5];
    for (k, &i) in mine.iter().enumerate() {
        let row = &mut ints[i * cols..(i + 1) * cols];
        for (j, &t) in gen.tokens[k].iter().enumerate() {
            row[j] = i64::from(t) + 1;
        }
        row[width] = gen.tokens[k].len() as i64;
        row[width + 1] = i64::from(gen.finished[k]);
        row[width + 2] = gen.ended_with[k].map_or(0, |t| i64::from(t) + 1);
        let v = &verdicts[k];
        let f = &mut floats[i * 5..(i + 1) * 5];
        f.copy_from_slice(&[
            v.reward,
            f64::from(u8::from(v.correct)),
            f64::from(u8::from(v.abstained)),
            f64::from(u8::from(v.formatted)),
            f64::from(u8::from(v.errored)),
        ]);
    }
    let (ti, tf) = (Tensor::from_slice(&ints), Tensor::from_slice(&floats));
    dist.all_reduce(&ti, common::dist::Op::Sum)?;
    dist.all_reduce(&tf, common::dist::Op::Sum)?;
    let (ints, floats) = (Vec::<i64>::try_from(&ti)?, Vec::<f64>::try_from(&tf)?);
    let mut all = Generation {
        tokens: Vec::with_capacity(n),
        finished: Vec::with_capacity(n),
        ended_with: Vec::with_capacity(n),
        tokens_per_sec: gen.tokens_per_sec,
        secs: gen.secs,
    };
    let mut vs = Vec::with_capacity(n);
    for i in 0..n {
        let row = &ints[i * cols..(i + 1) * cols];
        let len = row[width] as usize;
        all.tokens.push(row[..len].iter().map(|&t| (t - 1) as u32).collect());
        all.finished.push(row[width + 1] != 0);
        all.ended_with
            .push((row[width + 2] > 0).then(|| (row[width + 2] - 1) as u32));
        let f = &floats[i * 5..(i + 1) * 5];
        vs.push(Verdict {
            reward: f[0],
            correct: f[1] > 0.5,
            abstained: f[2] > 0.5,
            formatted: f[3] > 0.5,
            errored: f[4] > 0.5,
        });
    }
    Ok((all, vs))
}

/// Draws `need` prompts that fit the model's context, each rendered and repeated `g` times;
/// prompts too long to leave room for an answer are skipped and counted in `skipped`.
fn draw_fitting(
    stage: &Stage,
    stream: &mut PromptStream,
    need: usize,
    g: usize,
    skipped: &mut usize,
) -> Result<(Vec<Drawn>, Vec<Vec<u32>>)> {
    let max_len = stage.model.config().max_seq_len;
    let (mut drawn, mut prompts) = (Vec::with_capacity(need), Vec::with_capacity(need * g));
    let mut in_a_row = 0;
    while drawn.len() < need {
        let d = stream.draw();
        let p = stage.tok.render_prompt(&d.task.messages())?;
        if !fits_context(p.len(), max_len) {
            *skipped += 1;
            in_a_row += 1;
            if in_a_row >= 1000 {
                bail!("the last 1000 prompts drawn were all longer than the model's context of {max_len} tokens: check data.prompts");
            }
            continue;
        }
        in_a_row = 0;
        prompts.extend(std::iter::repeat_n(p, g));
        drawn.push(d);
    }
    Ok((drawn, prompts))
}

/// The first prompts a run practises, up to `per_kind` of each task kind (graded by the
/// final and the starting model at the end: a gain there that held-out questions do not
/// show is memorised, not learned).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Practised {
    /// Prompts kept per kind.
    pub per_kind: usize,
    /// The prompts, first practised first.
    pub tasks: Vec<Task>,
}

impl Practised {
    /// Keeps `t` if its kind has fewer than `per_kind` prompts.
    pub fn record(&mut self, t: &Task) {
        if self.tasks.iter().filter(|x| x.kind == t.kind).count() < self.per_kind {
            self.tasks.push(t.clone());
        }
    }
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
                s.extend(&self.tokens[i]);
                // The stop token the policy sampled is part of its answer (it learns to stop).
                if let Some(stop) = self.ended_with[i] {
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
