//! The RL stage: GRPO-style training against verifiers, read top to bottom.
//!
//! - [`config`]: `configs/rl.toml` (the shared `[train]` section plus `[rl]`'s own knobs).
//! - [`rollout`]: each step takes `prompts_per_step` prompts, samples `group_size`
//!   completions of each with the batched KV-cache sampler, grades them, and computes
//!   rewards and group-relative advantages.
//! - [`grpo`]: advantages and the clipped policy-ratio loss of each variant.
//! - [`run`] (here): the loop. On the [`Stage`] harness, it grades the start, then per step:
//!   rollout, [`update`] (`inner_epochs` optimizer steps with the clipped ratio objective and
//!   an optional KL penalty to the frozen starting model), log, save; and grades the end.
//!
//! Log-probs are always recomputed with the sampling settings (temperature, top-k, top-p),
//! so the ratio is unbiased.
pub mod config;
pub mod grpo;
pub mod rollout;

use crate::config::RlConfig;
use crate::grpo::{policy_loss, LossInputs, LossSettings};
use crate::rollout::{rollout, Practised, Rollout, SampleStat};
use anyhow::{bail, Context, Result};
use common::checkpoint::{self, Meta};
use common::config::CommonArgs;
use common::curriculum::Curriculum;
use common::device::device_name;
use common::meta::{DataRecord, PromptsRecord};
use common::metrics::{lines_of, EvalLine, RlStep, RlTrainMetrics, SlotLog, TrainMetrics};
use common::model::{Gpt, Positions};
use common::progress::{format_count, format_secs, Progress};
use common::prompts::{PromptMix, PromptStream, StreamState};
use common::sampling::SamplingConfig;
use common::stage::{Opened, Stage, StageOptions, TrainerState};
use common::tasks::{evaluate_tasks, limit_per_kind, summarize, EvalOptions, TaskReport};
use common::verify::{Grader, Task};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Trainer state saved in `state/trainer.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RlState {
    step: u64,
    tokens_sampled: u64,
    train_secs: f64,
    /// The prompt stream (random position, curriculum, cursors, what generators emitted).
    stream: StreamState,
    /// The first prompts practised per task kind.
    practised: Practised,
}

impl TrainerState for RlState {
    fn step(&self) -> u64 {
        self.step
    }
    fn tokens(&self) -> u64 {
        self.tokens_sampled
    }
    fn secs(&self) -> f64 {
        self.train_secs
    }
}

/// Runs the RL stage; returns the final metadata.
pub fn run(cfg: &RlConfig, args: &CommonArgs) -> Result<Meta> {
    let (mut stage, resumed) = match Stage::open::<RlState>(stage_options(cfg, args)?, None)? {
        Opened::Complete(meta) => return Ok(*meta),
        Opened::Run { stage, resumed } => (stage, resumed),
    };
    let reference = reference_model(cfg, stage.device)?;
    let is_resumed = resumed.is_some();
    let (mut prompts, mut st) = open_prompts(&mut stage, cfg, resumed)?;
    let grader = Grader::new(cfg.rewards, cfg.verifier.program_exec());
    let grading = Grading::new(cfg, stage.device)?;
    print_header(&stage, cfg)?;
    if !is_resumed {
        grading.start(&mut stage, &grader)?;
    }
    let mut progress = Progress::new("rl", cfg.train.steps);
    progress.update(st.step, "");
    let schedule = cfg.train.schedule();
    while st.step < cfg.train.steps {
        stage.check_interrupt(&st)?;
        let lr = schedule.lr(st.step);
        let (line, roll) = step(&mut stage, reference.as_ref(), &grader, &mut prompts, cfg, &mut st, lr)?;
        show_step(&mut progress, &line, &roll);
        stage.log.push(&line)?;
        if st.step < cfg.train.steps {
            between_steps(&mut stage, cfg, &grader, &grading, &st)?;
        }
    }
    progress.finish();
    // Save before evaluating: an evaluation crash must not lose the run.
    stage.save(&st)?;
    finish(stage, cfg, &grader, &grading, &prompts, &st)
}

/// What the harness needs to open the RL stage: out dir, init, resume flags, the memory it
/// will use (sampling rows, frozen copies) and the resolved config to save.
fn stage_options<'a>(cfg: &'a RlConfig, args: &CommonArgs) -> Result<StageOptions<'a>> {
    Ok(StageOptions {
        stage: "rl",
        out: cfg.out_dir(),
        init: cfg.init.clone(),
        resume: args.resume,
        force: args.force,
        workload: common::memory::Workload {
            micro_batch: cfg.train.micro_batch_size,
            seq_len: None,
            gen_rows: (cfg.rl.prompts_per_step * cfg.rl.group_size) as i64,
            // The KL reference, and the starting model graded again at the end.
            frozen_copies: i64::from(cfg.rl.kl_coef > 0.0) + 1,
            ..Default::default()
        },
        train: &cfg.train,
        config: serde_json::to_value(cfg)?,
        init_example: "runs/default/sft",
    })
}

/// The prompt source (generators and prompt sets, drawn by the curriculum), recorded in the
/// meta, and the trainer state: the resumed one with the stream restored, or a fresh one.
fn open_prompts(stage: &mut Stage, cfg: &RlConfig, resumed: Option<RlState>) -> Result<(PromptStream, RlState)> {
    let mix = PromptMix::open(&cfg.data.prompts, cfg.root())?;
    let mut prompts = PromptStream::open(&mix, cfg.train.seed)
        .with_context(|| format!("opening the RL prompts {}", cfg.data.prompts.display()))?;
    stage.meta.mix = Some(DataRecord::Prompts(PromptsRecord {
        prompts: cfg.data.prompts.display().to_string(),
        mix: serde_json::to_value(&mix)?,
        slots: prompts.slot_names(),
    }));
    let st = match resumed {
        Some(st) => {
            prompts.restore(&st.stream)?;
            st
        }
        None => RlState {
            step: 0,
            tokens_sampled: 0,
            train_secs: 0.0,
            stream: prompts.state(),
            practised: Practised {
                per_kind: cfg.eval.as_ref().map_or(0, |e| e.seen_per_kind),
                tasks: Vec::new(),
            },
        },
    };
    Ok((prompts, st))
}

/// One RL step: rollout, update, and the step's log line.
fn step(
    stage: &mut Stage,
    reference: Option<&(tch::nn::VarStore, Gpt)>,
    grader: &Grader,
    prompts: &mut PromptStream,
    cfg: &RlConfig,
    st: &mut RlState,
    lr: f64,
) -> Result<(RlStep, Rollout)> {
    let t0 = Instant::now();
    let roll = rollout(stage, grader, prompts, cfg, st.step, &mut st.practised)?;
    st.stream = prompts.state();
    let sample_secs = t0.elapsed().as_secs_f64();
    let upd = update(stage, reference, &roll, cfg, lr).with_context(|| format!("rl step {}", st.step))?;
    st.step += 1;
    st.train_secs += t0.elapsed().as_secs_f64();
    let sampled: usize = roll.all.iter().map(|a| a.len).sum();
    st.tokens_sampled += sampled as u64;
    let mut line = step_line(&roll, &upd, st.step, lr, sample_secs);
    line.curriculum = slot_logs(&prompts.curriculum);
    line.in_band = prompts.curriculum.share_in_band();
    Ok((line, roll))
}

/// A step on the progress bar, and a warning where prompts were skipped.
fn show_step(progress: &mut Progress, line: &RlStep, roll: &Rollout) {
    progress.update(
        line.step,
        format!(
            "reward {:.3} | acc {:.0}% | idk {:.0}% | len {:.0} | flat {}/{} | sample {}/s",
            line.reward_mean,
            100.0 * line.accuracy,
            100.0 * line.abstention_rate,
            line.completion_len,
            roll.flat_groups,
            roll.groups_sampled,
            format_count(line.sample_tok_per_s)
        ),
    );
    if roll.skipped_overlong > 0 {
        progress.warn(format!(
            "warning: rl step {}: skipped {} prompt(s) longer than the model's context",
            line.step, roll.skipped_overlong
        ));
    }
}

/// The held-out grading every `eval.every` steps and the save every `train.save_every`
/// (before the last step; the end grades and saves anyway).
fn between_steps(stage: &mut Stage, cfg: &RlConfig, grader: &Grader, grading: &Grading, st: &RlState) -> Result<()> {
    if let Some(e) = &cfg.eval {
        if e.every > 0 && st.step % e.every == 0 {
            grading.held_out(stage, grader, st.step)?;
        }
    }
    if cfg.train.save_every > 0 && st.step % cfg.train.save_every == 0 {
        stage.save(st)?;
    }
    Ok(())
}

/// Grades the end and the practised prompts, records the run's metrics, and finishes.
fn finish(
    mut stage: Box<Stage>,
    cfg: &RlConfig,
    grader: &Grader,
    grading: &Grading,
    prompts: &PromptStream,
    st: &RlState,
) -> Result<Meta> {
    grading.end(&mut stage, grader, st.step)?;
    grading.practised(&mut stage, grader, cfg, &st.practised.tasks)?;
    stage.meta.metrics.prompt_repeats = Some(prompts.repeats());
    stage.meta.metrics.curriculum = Some(slot_logs(&prompts.curriculum));
    stage.meta.metrics.train = Some(TrainMetrics::Rl(train_summary(&stage.log.lines, st)));
    let (out, main) = (stage.out.clone(), stage.dist.is_main());
    let meta = stage.finish(st)?;
    if !main {
        return Ok(meta);
    }
    eprintln!(
        "rl: done: {} steps in {}; checkpoint {}",
        st.step,
        format_secs(st.train_secs),
        out.display()
    );
    Ok(meta)
}

/// The frozen starting model the KL term measures against (`rl.kl_coef > 0`).
fn reference_model(cfg: &RlConfig, device: tch::Device) -> Result<Option<(tch::nn::VarStore, Gpt)>> {
    if cfg.rl.kl_coef <= 0.0 {
        return Ok(None);
    }
    let init = cfg
        .init
        .as_ref()
        .context("rl.kl_coef > 0 measures KL to the starting model: pass --init <dir>")?;
    let (rvs, mut rmodel, _) = checkpoint::load_model(init, device)?;
    rmodel.set_compute_kind(cfg.train.precision.kind());
    Ok(Some((rvs, rmodel)))
}

fn print_header(stage: &Stage, cfg: &RlConfig) -> Result<()> {
    if !stage.dist.is_main() {
        return Ok(());
    }
    let (n_prompts, g) = (cfg.rl.prompts_per_step, cfg.rl.group_size);
    eprintln!(
        "rl: {} loss, {} prompts x {} samples = {} completions per step, {} inner epoch(s), clip [{}, {}], kl {}, rewards correct {} / abstain {} / wrong {} / format {}, overlong {:?}, on {}",
        serde_json::to_value(cfg.rl.loss)?.as_str().unwrap_or("?"),
        n_prompts,
        g,
        n_prompts * g,
        cfg.rl.inner_epochs,
        cfg.rl.clip_low,
        cfg.clip_high(),
        cfg.rl.kl_coef,
        cfg.rewards.correct,
        cfg.rewards.abstain,
        cfg.rewards.wrong,
        cfg.rewards.format,
        cfg.overlong(),
        device_name(stage.device)
    );
    stage.describe_adapters();
    Ok(())
}

/// Greedy grading of the held-out tasks (`[eval] tasks`) and the harder slice
/// (`[eval] hard_tasks`) at the start and at the end, and of the practised prompts.
struct Grading {
    held_out: Option<Vec<Task>>,
    hard: Option<Vec<Task>>,
    multiturn: Option<Vec<Task>>,
    opts: Option<EvalOptions>,
}

impl Grading {
    fn new(cfg: &RlConfig, device: tch::Device) -> Result<Self> {
        let Some(e) = &cfg.eval else {
            return Ok(Grading {
                held_out: None,
                hard: None,
                multiturn: None,
                opts: None,
            });
        };
        Ok(Grading {
            held_out: Some(limit_per_kind(e.tasks.under(cfg.root()).load()?, e.per_kind)),
            hard: e.hard_tasks.as_ref().map(|t| t.under(cfg.root()).load()).transpose()?,
            multiturn: e
                .multiturn_tasks
                .as_ref()
                .map(|t| Ok::<_, anyhow::Error>(limit_per_kind(t.under(cfg.root()).load()?, e.multiturn_per_kind)))
                .transpose()?,
            opts: Some(EvalOptions {
                sampling: SamplingConfig::greedy(e.max_new_tokens),
                samples: 1,
                batch_size: e.batch_size,
                device,
                progress: None,
            }),
        })
    }

    fn grade(
        &self,
        model: &Gpt,
        stage: &Stage,
        grader: &Grader,
        list: Option<&Vec<Task>>,
        what: &str,
    ) -> Result<Option<TaskReport>> {
        let (Some(opts), Some(list)) = (&self.opts, list) else {
            return Ok(None);
        };
        // Rank 0 alone grades a data-parallel run.
        if !stage.dist.is_main() {
            return Ok(None);
        }
        let r = evaluate_tasks(model, &stage.tok, list, grader, opts)?;
        eprintln!("rl: {what}: {}", summarize(&r));
        Ok(Some(r))
    }

    /// Grades the held-out tasks, and logs the result at `step`.
    fn held_out(&self, stage: &mut Stage, grader: &Grader, step: u64) -> Result<Option<TaskReport>> {
        let r = self.grade(&stage.model, stage, grader, self.held_out.as_ref(), "held-out tasks")?;
        if let Some(r) = &r {
            stage.log.push(&EvalLine {
                stage: "rl".into(),
                step,
                eval: r,
            })?;
        }
        Ok(r)
    }

    fn hard(&self, stage: &Stage, grader: &Grader) -> Result<Option<TaskReport>> {
        self.grade(&stage.model, stage, grader, self.hard.as_ref(), "harder held-out slice")
    }

    fn multiturn(&self, stage: &Stage, grader: &Grader) -> Result<Option<TaskReport>> {
        self.grade(
            &stage.model,
            stage,
            grader,
            self.multiturn.as_ref(),
            "multi-turn follow-ups",
        )
    }

    fn start(&self, stage: &mut Stage, grader: &Grader) -> Result<()> {
        stage.meta.metrics.tasks_start = self.held_out(stage, grader, 0)?;
        stage.meta.metrics.tasks_hard_start = self.hard(stage, grader)?;
        stage.meta.metrics.tasks_multiturn_start = self.multiturn(stage, grader)?;
        Ok(())
    }

    fn end(&self, stage: &mut Stage, grader: &Grader, step: u64) -> Result<()> {
        stage.meta.metrics.tasks = self.held_out(stage, grader, step)?;
        stage.meta.metrics.tasks_hard = self.hard(stage, grader)?;
        stage.meta.metrics.tasks_multiturn = self.multiturn(stage, grader)?;
        Ok(())
    }

    /// The practised prompts graded by the final model and by the starting one (loaded
    /// again from `--init`): a gain there that held-out questions do not show is memorised.
    fn practised(&self, stage: &mut Stage, grader: &Grader, cfg: &RlConfig, tasks: &[Task]) -> Result<()> {
        let Some(init) = cfg.init.as_ref().filter(|_| !tasks.is_empty() && stage.dist.is_main()) else {
            return Ok(());
        };
        let list = Some(tasks.to_vec());
        stage.meta.metrics.tasks_seen =
            self.grade(&stage.model, stage, grader, list.as_ref(), "practised prompts, after")?;
        let (_vs, start, _) = checkpoint::load_model(init, stage.device)?;
        stage.meta.metrics.tasks_seen_start =
            self.grade(&start, stage, grader, list.as_ref(), "practised prompts, before")?;
        Ok(())
    }
}

/// The curriculum's slots as logged.
fn slot_logs(c: &Curriculum) -> Vec<SlotLog> {
    c.slots
        .iter()
        .map(|s| SlotLog {
            slot: s.name.clone(),
            success: s.success,
            drawn: s.drawn,
        })
        .collect()
}

/// What an update did (figures of its last inner epoch).
#[derive(Default)]
struct UpdateStats {
    loss: f64,
    grad_norm: f64,
    clipped: f64,
    counted: f64,
    kl_sum: f64,
    trained_sequences: usize,
    /// Completion tokens run through the update, over all inner epochs.
    train_tokens: f64,
    secs: f64,
}

/// Log-probs `[N, L]` of `targets` under `model` with the sampling settings, where `mask` is
/// set (0 elsewhere). The output head and the softmax over the vocabulary run on the masked
/// positions alone: the completions are a fraction of a padded rollout (prompts, padding), and
/// the head's fp32 logits were the largest tensors of the update.
fn token_logps(model: &Gpt, input: &Tensor, targets: &Tensor, mask: &Tensor, sampling: &SamplingConfig) -> Tensor {
    let h = model.hidden(input, &Positions::CAUSAL, None);
    let (n, l, d) = h.size3().expect("hidden states are [N, L, d]");
    let idx = mask.reshape([-1]).gt(0.0).nonzero().squeeze_dim(1);
    let lp = sampling.log_probs(&model.logits(&h.reshape([-1, d]).index_select(0, &idx)));
    let t = targets.reshape([-1]).index_select(0, &idx).clamp_min(0);
    let picked = lp.gather(1, &t.unsqueeze(1), false).squeeze_dim(1);
    Tensor::zeros([n * l], (Kind::Float, h.device()))
        .index_put(&[Some(idx)], &picked, false)
        .view([n, l])
}

/// `(start, len)` of each micro-batch of `n` rows.
fn micro_ranges(n: usize, micro: usize) -> Vec<(i64, i64)> {
    (0..n)
        .step_by(micro.max(1))
        .map(|s| (s as i64, (micro.min(n - s)) as i64))
        .collect()
}

/// The policy update on one rollout: `inner_epochs` optimizer steps of the clipped ratio
/// objective against the log-probs of the sampling policy (and the reference's, for KL).
fn update(
    stage: &mut Stage,
    reference: Option<&(tch::nn::VarStore, Gpt)>,
    roll: &Rollout,
    cfg: &RlConfig,
    lr: f64,
) -> Result<UpdateStats> {
    let t1 = Instant::now();
    let device = stage.device;
    let seqs = roll.sequences(stage.tok.pad);
    let mut stats = UpdateStats {
        trained_sequences: seqs.n,
        train_tokens: seqs.mask.sum(Kind::Float).double_value(&[]) * cfg.rl.inner_epochs as f64,
        ..Default::default()
    };
    if seqs.n > 0 {
        let input = seqs.input.to_device(device);
        let target = seqs.target.to_device(device);
        let mask = seqs.mask.to_device(device);
        let adv = Tensor::from_slice(&seqs.adv.iter().map(|&a| a as f32).collect::<Vec<_>>()).to_device(device);
        // Data-parallel ranks each run their share of the micro-batches (all hold the whole
        // rollout); the gradients are summed before every optimiser step.
        let dist = stage.dist;
        let ranges: Vec<(i64, i64)> = micro_ranges(seqs.n, cfg.train.micro_batch_size as usize)
            .into_iter()
            .enumerate()
            .filter(|(j, _)| j % dist.world == dist.rank)
            .map(|(_, r)| r)
            .collect();
        let logps_of = |m: &Gpt| -> Vec<Tensor> {
            ranges
                .iter()
                .map(|&(s, l)| {
                    let (i, t, k) = (input.narrow(0, s, l), target.narrow(0, s, l), mask.narrow(0, s, l));
                    token_logps(m, &i, &t, &k, &cfg.sampling)
                })
                .collect()
        };
        let (old, refl) = {
            let _g = tch::no_grad_guard();
            (logps_of(&stage.model), reference.map(|(_, r)| logps_of(r)))
        };
        let settings = LossSettings {
            kind: cfg.rl.loss,
            clip_low: cfg.rl.clip_low,
            clip_high: cfg.clip_high(),
            kl_coef: cfg.rl.kl_coef,
            max_new_tokens: cfg.sampling.max_new_tokens,
            norm: roll.norm,
        };
        for epoch in 0..cfg.rl.inner_epochs {
            stage.opt.zero_grad();
            let mut total = 0.0;
            for (j, &(s, l)) in ranges.iter().enumerate() {
                let m = mask.narrow(0, s, l);
                let logp = token_logps(
                    &stage.model,
                    &input.narrow(0, s, l),
                    &target.narrow(0, s, l),
                    &m,
                    &cfg.sampling,
                );
                let inputs = LossInputs {
                    logp: &logp,
                    old_logp: &old[j],
                    ref_logp: refl.as_ref().map(|r| &r[j]),
                    mask: &m,
                    adv: &adv.narrow(0, s, l),
                };
                let parts = policy_loss(&inputs, &settings);
                parts.loss.backward();
                total += parts.loss.double_value(&[]);
                if epoch + 1 == cfg.rl.inner_epochs {
                    stats.clipped += parts.clipped_tokens;
                    stats.counted += parts.tokens;
                    stats.kl_sum += parts.kl_sum;
                }
            }
            let (clipped, counted, kl) = (stats.clipped, stats.counted, stats.kl_sum);
            let summed = dist.sum_grads(&stage.opt.vars(), &[total, clipped, counted, kl])?;
            total = summed[0];
            if epoch + 1 == cfg.rl.inner_epochs {
                (stats.clipped, stats.counted, stats.kl_sum) = (summed[1], summed[2], summed[3]);
            }
            if !total.is_finite() {
                bail!("rl: loss became {total}; stopped without saving (last good checkpoint kept). Lower train.lr");
            }
            stats.grad_norm = stage.opt.clip_grad_norm(cfg.train.grad_clip);
            stage.opt.step(lr);
            stats.loss = total;
        }
    }
    stats.secs = t1.elapsed().as_secs_f64();
    Ok(stats)
}

/// The metrics-log line of a step.
fn step_line(roll: &Rollout, upd: &UpdateStats, step: u64, lr: f64, sample_secs: f64) -> RlStep {
    // Statistics of everything sampled this step (replaced groups included).
    let all = &roll.all;
    let nf = all.len().max(1) as f64;
    let mean = all.iter().map(|a| a.reward).sum::<f64>() / nf;
    let std = (all.iter().map(|a| (a.reward - mean).powi(2)).sum::<f64>() / nf).sqrt();
    let frac = |f: &dyn Fn(&SampleStat) -> bool| all.iter().filter(|a| f(a)).count() as f64 / nf;
    let sampled: usize = all.iter().map(|a| a.len).sum();
    let per_token = |x: f64| if upd.counted > 0.0 { x / upd.counted } else { 0.0 };
    RlStep {
        stage: "rl".into(),
        step,
        lr,
        loss: upd.loss,
        reward_mean: mean,
        reward_std: std,
        accuracy: frac(&|a| a.verdict.correct),
        abstention_rate: frac(&|a| a.verdict.abstained),
        format_rate: frac(&|a| a.verdict.formatted),
        verifier_errors: frac(&|a| a.verdict.errored),
        truncation_rate: frac(&|a| !a.finished),
        completion_len: sampled as f64 / nf,
        kl: per_token(upd.kl_sum),
        clip_frac: per_token(upd.clipped),
        zero_adv_groups: roll.flat_groups as f64 / roll.groups_sampled.max(1) as f64,
        trained_sequences: upd.trained_sequences,
        grad_norm: upd.grad_norm,
        sample_tok_per_s: sampled as f64 / roll.gen_secs.max(1e-9),
        train_tok_per_s: upd.train_tokens / upd.secs.max(1e-9),
        sample_secs,
        train_secs: upd.secs,
        groups_sampled: roll.groups_sampled,
        curriculum: Vec::new(),
        in_band: 0.0,
        skipped_overlong: roll.skipped_overlong,
    }
}

/// `meta.metrics.train` of an RL run: averages over the step lines of the log.
fn train_summary(lines: &[Value], st: &RlState) -> RlTrainMetrics {
    let steps: Vec<RlStep> = lines_of(lines);
    let avg = |k: fn(&RlStep) -> f64| steps.iter().map(k).sum::<f64>() / steps.len().max(1) as f64;
    let (sample, train) = (avg(|l| l.sample_secs), avg(|l| l.train_secs));
    RlTrainMetrics {
        secs: st.train_secs,
        tokens_sampled: st.tokens_sampled,
        sample_tok_per_s: avg(|l| l.sample_tok_per_s),
        train_tok_per_s: avg(|l| l.train_tok_per_s),
        sample_time_fraction: sample / (sample + train).max(1e-9),
        first_reward: steps.first().map(|l| l.reward_mean),
        last_reward: steps.last().map(|l| l.reward_mean),
        skipped_overlong: steps.iter().map(|l| l.skipped_overlong).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::model::GptConfig;

    /// The head on the completion positions alone gives the log-probs (and gradients) of the
    /// full-logits computation there, and 0 elsewhere, under every sampling transform.
    #[test]
    fn token_logps_on_masked_rows_equal_the_full_logits_path() -> Result<()> {
        tch::manual_seed(7);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let model = Gpt::new(vs.root(), &GptConfig::preset("tiny", 61)?);
        let input = Tensor::randint(61, [3, 9], (Kind::Int64, tch::Device::Cpu));
        // The tokens a policy sampled lie inside its top-k / top-p set: the most likely ones do.
        let mut target = tch::no_grad(|| model.forward(&input, &Positions::CAUSAL, None)).argmax(-1, false);
        let mask = Tensor::from_slice(&[
            0f32, 0., 0., 1., 1., 1., 1., 0., 0., //
            0., 0., 0., 0., 0., 0., 1., 1., 1., //
            0., 1., 1., 1., 1., 1., 1., 1., 1.,
        ])
        .view([3, 9]);
        let _ = target.masked_fill_(&mask.eq(0.0), -100);
        let weights = Tensor::randn([3, 9], (Kind::Float, tch::Device::Cpu));
        for sampling in [
            SamplingConfig::default(),
            SamplingConfig {
                temperature: 0.7,
                top_k: 5,
                top_p: 0.9,
                ..SamplingConfig::default()
            },
        ] {
            let grads = |lp: &Tensor| -> Vec<Tensor> {
                for v in vs.trainable_variables() {
                    let mut g = v.grad();
                    if g.defined() {
                        let _ = g.zero_();
                    }
                }
                (lp * &mask * &weights).sum(Kind::Float).backward();
                vs.trainable_variables().iter().map(|v| v.grad().copy()).collect()
            };
            let full = sampling
                .log_probs(&model.forward(&input, &Positions::CAUSAL, None))
                .gather(2, &target.clamp_min(0).unsqueeze(2), false)
                .squeeze_dim(2);
            let on = mask.gt(0.0);
            // Outside the completions the full path may hold -inf (a padding target outside top-k).
            let full = full.masked_fill(&on.logical_not(), 0.0);
            let full_grads = grads(&full);
            let rows = token_logps(&model, &input, &target, &mask, &sampling);
            let row_grads = grads(&rows);
            let diff = (rows.masked_select(&on) - full.masked_select(&on))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-5, "log-probs differ by {diff}");
            assert_eq!(
                rows.masked_select(&on.logical_not())
                    .abs()
                    .sum(Kind::Float)
                    .double_value(&[]),
                0.0
            );
            for (a, b) in full_grads.iter().zip(&row_grads) {
                let d = (a - b).abs().max().double_value(&[]);
                assert!(d < 1e-5, "gradients differ by {d}");
            }
        }
        Ok(())
    }
}
