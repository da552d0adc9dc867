//! The RL stage: GRPO-style training against verifiers.
//!
//! Each step: take `prompts_per_step` tasks, sample `group_size` completions of each with
//! the batched KV-cache sampler, grade them, compute group-relative advantages, and update
//! the policy with the clipped ratio objective for `inner_epochs` optimizer steps, with an
//! optional KL penalty to the frozen starting model. Log-probs are always recomputed with
//! the sampling settings (temperature, top-k, top-p) so the ratio is unbiased.
use crate::checkpoint::{self, Meta, OutState, TrainState};
use crate::config::{load_toml, CommonArgs};
use crate::device::{configure_threads, device_name, seed_everything, DeviceChoice};
use crate::grpo::{advantages, batch_normaliser, flat_groups, policy_loss, LossKind};
use crate::metrics::MetricsLog;
use crate::model::{Gpt, Positions};
use crate::optim::{AdamW, AdamWConfig};
use crate::progress::{format_count, format_secs, Progress};
use crate::prompts::{Drawn, PromptMix, PromptStream, StreamState};
use crate::sampling::{generate, SamplingConfig};
use crate::schedule::{Schedule, ScheduleKind};
use crate::tasks::{evaluate_tasks, limit_per_kind, load_tasks, summarize};
use crate::tokenizer::{Message, Tok};
use crate::verify::{Grader, ProgramExec, RewardWeights, Task, Verdict};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

/// What to do with completions cut at `max_new_tokens` (they never reached `<|end|>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlong {
    /// Train on them like any other completion (their reward is usually zero).
    Keep,
    /// Leave them out of the loss.
    Mask,
    /// Subtract `overlong_penalty` from their reward.
    Penalty,
}

/// `[data]` of the RL config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlData {
    /// A prompt mix (`.toml`: generators and Parquet prompt sets, with a curriculum; see
    /// `common::prompts`) or one Parquet file of tasks (string columns prompt, answer, task).
    pub prompts: PathBuf,
}

/// `[rl]`: the algorithm and its optimisation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlSection {
    /// Policy updates (each on a fresh batch of samples).
    pub steps: u64,
    /// Distinct prompts per step.
    pub prompts_per_step: usize,
    /// Completions sampled per prompt (G). Sequences per step = prompts_per_step × group_size.
    pub group_size: usize,
    /// Optimizer steps on each batch of samples (the clip matters from the second on).
    #[serde(default = "one_u")]
    pub inner_epochs: usize,
    /// Sequences per forward/backward pass.
    #[serde(default = "default_rl_micro")]
    pub micro_batch_size: usize,
    /// grpo | dr_grpo | dapo.
    #[serde(default = "default_loss")]
    pub loss: LossKind,
    /// Lower clip range ε_low (ratio ≥ 1 − ε_low).
    #[serde(default = "default_clip")]
    pub clip_low: f64,
    /// Upper clip range ε_high (ratio ≤ 1 + ε_high); `dapo` uses a larger one (0.28).
    pub clip_high: Option<f64>,
    /// Weight of the KL penalty to the starting model (0 = no reference model is kept).
    #[serde(default)]
    pub kl_coef: f64,
    /// Dynamic sampling: up to this many extra sampling rounds per step replace groups whose
    /// rewards all agree (they carry no gradient), and such groups leave the update. 0 = off.
    #[serde(default)]
    pub resample_rounds: usize,
    /// Divide advantages by the group std (default: yes for grpo/dapo, no for dr_grpo).
    pub scale_rewards: Option<bool>,
    /// keep | mask | penalty (default: penalty for dapo, keep otherwise).
    pub overlong: Option<Overlong>,
    /// Reward subtracted from truncated completions under `overlong = "penalty"`.
    #[serde(default = "default_overlong_penalty")]
    pub overlong_penalty: f64,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup steps.
    #[serde(default)]
    pub warmup_steps: u64,
    /// constant | cosine | linear | wsd.
    #[serde(default = "default_rl_schedule")]
    pub schedule: ScheduleKind,
    /// Final learning rate as a fraction of the peak.
    #[serde(default = "one_f")]
    pub min_lr_ratio: f64,
    /// Decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Gradient clipping by global norm.
    #[serde(default = "one_f")]
    pub grad_clip: f64,
    /// Seed (prompt order and sampling).
    #[serde(default = "default_rl_seed")]
    pub seed: u64,
    /// auto | cpu | cuda.
    #[serde(default)]
    pub device: DeviceChoice,
    /// Save every this many steps (0 = at the end only).
    #[serde(default)]
    pub save_every: u64,
    /// fp32 | bf16 (mixed precision for sampling and updates; weights and optimiser stay fp32).
    #[serde(default)]
    pub precision: crate::config::Precision,
    /// LoRA rank: > 0 freezes the model and trains a low-rank adapter on every linear layer
    /// of the blocks (merged into the weights of each saved checkpoint); 0 = full fine-tuning.
    #[serde(default)]
    pub lora_rank: i64,
    /// LoRA scale numerator: adapters are scaled by lora_alpha / lora_rank.
    #[serde(default = "crate::lora::default_alpha")]
    pub lora_alpha: f64,
}

fn one_u() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}
fn default_rl_micro() -> usize {
    32
}
fn default_loss() -> LossKind {
    LossKind::Grpo
}
fn default_clip() -> f64 {
    0.2
}
fn default_overlong_penalty() -> f64 {
    0.5
}
fn default_rl_schedule() -> ScheduleKind {
    ScheduleKind::Constant
}
fn default_rl_seed() -> u64 {
    1337
}

/// `[verifier]`: limits of program execution.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierSection {
    /// Wall-clock limit of a program, in milliseconds.
    #[serde(default = "default_timeout")]
    pub program_timeout_ms: u64,
    /// Address-space limit of a program, in megabytes.
    #[serde(default = "default_mem")]
    pub program_memory_mb: u64,
    /// Python interpreter.
    #[serde(default = "default_python")]
    pub python: String,
}

fn default_timeout() -> u64 {
    2000
}
fn default_mem() -> u64 {
    256
}
fn default_python() -> String {
    "python3".into()
}

impl Default for VerifierSection {
    fn default() -> Self {
        VerifierSection {
            program_timeout_ms: default_timeout(),
            program_memory_mb: default_mem(),
            python: default_python(),
        }
    }
}

/// `[eval]`: held-out task evaluation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlEval {
    /// Parquet file of held-out tasks.
    pub tasks: PathBuf,
    /// A harder held-out slice (e.g. `data/default/eval/hard.parquet`: one more operation
    /// than SFT ever showed), graded at the start and the end.
    pub hard_tasks: Option<PathBuf>,
    /// Questions per task kind.
    #[serde(default = "default_rl_per_kind")]
    pub per_kind: usize,
    /// Evaluate every this many steps (0 = start and end only).
    #[serde(default)]
    pub every: u64,
    /// Longest answer.
    #[serde(default = "default_eval_new")]
    pub max_new_tokens: i64,
    /// Rows generated together.
    #[serde(default = "default_eval_batch")]
    pub batch_size: usize,
    /// Also grade up to this many per task of the training prompts the run will sample, at
    /// the start and at the end (0 = off): a gain there but not on held-out questions means
    /// RL memorised answers instead of gaining skill.
    #[serde(default)]
    pub seen_per_kind: usize,
}

fn default_rl_per_kind() -> usize {
    250
}
fn default_eval_new() -> i64 {
    64
}
fn default_eval_batch() -> usize {
    128
}

/// The RL stage's configuration (`configs/rl.toml`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlConfig {
    /// Checkpoint to start from (the SFT model).
    pub init: Option<PathBuf>,
    /// Output checkpoint.
    pub out: Option<PathBuf>,
    /// Training prompts.
    pub data: RlData,
    /// Algorithm.
    pub rl: RlSection,
    /// Sampling during training (log-probs are recomputed with the same settings).
    #[serde(default)]
    pub sampling: SamplingConfig,
    /// Reward weights.
    #[serde(default)]
    pub rewards: RewardWeights,
    /// Program execution limits.
    #[serde(default)]
    pub verifier: VerifierSection,
    /// Held-out evaluation.
    pub eval: Option<RlEval>,
}

impl RlConfig {
    /// Loads, applies the command line, validates.
    pub fn load(path: &Path, args: &CommonArgs) -> Result<Self> {
        let mut c: RlConfig = load_toml(path)?;
        if let Some(v) = &args.init {
            c.init = Some(v.clone());
        }
        c.out = Some(
            args.out
                .clone()
                .or(c.out)
                .unwrap_or_else(|| crate::config::default_out("rl")),
        );
        if let Some(v) = args.device {
            c.rl.device = v;
        }
        if let Some(v) = args.seed {
            c.rl.seed = v;
        }
        if let Some(v) = args.steps {
            c.rl.steps = v;
            c.rl.warmup_steps = c.rl.warmup_steps.min(v);
        }
        if let Some(v) = args.lr {
            c.rl.lr = v;
        }
        if let Some(v) = args.save_every {
            c.rl.save_every = v;
        }
        if args.mix.is_some() {
            bail!("rl reads prompts from [data] prompts, not a mix: drop --mix");
        }
        c.validate()
            .with_context(|| format!("invalid configuration {}", path.display()))?;
        Ok(c)
    }

    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let r = &self.rl;
        self.schedule()
            .validate()
            .map_err(|e| anyhow::anyhow!(e.to_string().replace("train.", "rl.")))?;
        if r.prompts_per_step == 0 || r.group_size < 2 {
            bail!(
                "rl.prompts_per_step must be >= 1 and rl.group_size >= 2 (advantages compare samples within a group)"
            );
        }
        if r.inner_epochs == 0 || r.micro_batch_size == 0 {
            bail!("rl.inner_epochs and rl.micro_batch_size must be >= 1");
        }
        if !(r.clip_low > 0.0 && r.clip_low < 1.0) || self.clip_high() <= 0.0 {
            bail!("rl.clip_low must be in (0, 1) and rl.clip_high > 0");
        }
        if r.kl_coef < 0.0 {
            bail!("rl.kl_coef must be >= 0");
        }
        crate::lora::from_section("rl", r.lora_rank, r.lora_alpha)?;
        self.sampling.validate()?;
        if self.sampling.temperature == 0.0 {
            bail!("sampling.temperature = 0 gives identical samples in a group (no learning signal); use about 1.0");
        }
        Ok(())
    }

    /// ε_high.
    pub fn clip_high(&self) -> f64 {
        self.rl.clip_high.unwrap_or(if self.rl.loss == LossKind::Dapo {
            0.28
        } else {
            self.rl.clip_low
        })
    }

    /// Whether advantages are divided by the group std.
    pub fn scale_rewards(&self) -> bool {
        self.rl.scale_rewards.unwrap_or(self.rl.loss != LossKind::DrGrpo)
    }

    /// Overlong policy.
    pub fn overlong(&self) -> Overlong {
        self.rl.overlong.unwrap_or(if self.rl.loss == LossKind::Dapo {
            Overlong::Penalty
        } else {
            Overlong::Keep
        })
    }

    fn schedule(&self) -> Schedule {
        Schedule {
            kind: self.rl.schedule,
            peak_lr: self.rl.lr,
            warmup_steps: self.rl.warmup_steps,
            total_steps: self.rl.steps,
            min_lr_ratio: self.rl.min_lr_ratio,
            decay_fraction: 0.2,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RlState {
    step: u64,
    tokens_sampled: u64,
    train_secs: f64,
    /// The prompt stream (random position, curriculum, cursors).
    stream: StreamState,
    /// The first prompts practised per task kind (graded before/after at the end).
    practised: Vec<Task>,
}

/// Log-probs `[N, L]` of `targets` under `model` with the sampling settings.
fn token_logps(model: &Gpt, input: &Tensor, targets: &Tensor, sampling: &SamplingConfig) -> Tensor {
    let logits = model.forward(input, &Positions::CAUSAL, None);
    let lp = sampling.log_probs(&logits);
    lp.gather(2, &targets.clamp_min(0).unsqueeze(2), false).squeeze_dim(2)
}

/// One step's rollouts, flattened to `[N, L]` tensors.
struct Rollouts {
    input: Tensor,
    target: Tensor,
    mask: Tensor,
    adv: Vec<f64>,
    keep: Vec<usize>,
}

fn build_rollouts(
    prompts: &[Vec<u32>],
    completions: &[Vec<u32>],
    ended_with: &[Option<u32>],
    pad: u32,
    loss_mask: &[bool],
    adv: Vec<f64>,
) -> Rollouts {
    let keep: Vec<usize> = (0..prompts.len()).filter(|&i| loss_mask[i]).collect();
    let seqs: Vec<(Vec<u32>, usize)> = keep
        .iter()
        .map(|&i| {
            let mut s = prompts[i].clone();
            let start = s.len();
            s.extend(&completions[i]);
            // The stop token the policy sampled is part of its answer (it learns to stop).
            if let Some(stop) = ended_with[i] {
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
    Rollouts {
        input: Tensor::from_slice(&input).view(shape),
        target: Tensor::from_slice(&target).view(shape),
        mask: Tensor::from_slice(&mask).view(shape),
        adv: keep.iter().map(|&i| adv[i]).collect(),
        keep,
    }
}

fn micro_ranges(n: usize, micro: usize) -> Vec<(i64, i64)> {
    (0..n)
        .step_by(micro.max(1))
        .map(|s| (s as i64, (micro.min(n - s)) as i64))
        .collect()
}

/// What [`sample_step`] needs besides the stream.
struct SampleOpts<'a> {
    cfg: &'a RlConfig,
    model: &'a Gpt,
    tok: &'a Tok,
    grader: &'a Grader,
    device: tch::Device,
    /// Practised prompts recorded per task kind.
    seen_per_kind: usize,
}

/// One sampled completion, for the step's statistics.
struct SampleStat {
    verdict: Verdict,
    reward: f64,
    finished: bool,
    len: usize,
}

/// One step's graded groups: those kept for the update (flattened, group after group), and
/// statistics of everything sampled.
#[derive(Default)]
struct Sampled {
    prompts: Vec<Vec<u32>>,
    tokens: Vec<Vec<u32>>,
    finished: Vec<bool>,
    ended_with: Vec<Option<u32>>,
    rewards: Vec<f64>,
    verdicts: Vec<Verdict>,
    all: Vec<SampleStat>,
    groups_sampled: usize,
    flat_groups: usize,
    gen_secs: f64,
}

/// Draws `prompts_per_step` prompts, samples a group for each, grades it and feeds each
/// group's success to the curriculum. With `resample_rounds > 0`, groups whose rewards all
/// agree are replaced by fresh prompts for up to that many more rounds (DAPO's dynamic
/// sampling) and left out of the update.
fn sample_step(o: &SampleOpts, stream: &mut PromptStream, step: u64, practised: &mut Vec<Task>) -> Result<Sampled> {
    let cfg = o.cfg;
    let g = cfg.rl.group_size;
    let resample = cfg.rl.resample_rounds > 0;
    let overlong = cfg.overlong();
    let mut out = Sampled::default();
    for round in 0..=cfg.rl.resample_rounds {
        let need = cfg.rl.prompts_per_step - out.rewards.len() / g;
        if need == 0 {
            break;
        }
        let drawn: Vec<Drawn> = (0..need).map(|_| stream.next()).collect();
        for d in &drawn {
            let kind_count = practised.iter().filter(|t| t.kind == d.task.kind).count();
            if kind_count < o.seen_per_kind {
                practised.push(d.task.clone());
            }
        }
        let mut prompts = Vec::with_capacity(need * g);
        for d in &drawn {
            let p = o.tok.render_prompt(&[Message::new("user", d.task.prompt.clone())])?;
            prompts.extend(std::iter::repeat_n(p, g));
        }
        // Seeded per step and round, so a resumed run samples what an uninterrupted one would.
        seed_everything(
            cfg.rl
                .seed
                .wrapping_add(step * 7919)
                .wrapping_add(round as u64 * 104_729),
        );
        let gen = generate(o.model, &prompts, &cfg.sampling, o.tok.stops(), o.tok.pad, o.device)?;
        out.gen_secs += gen.secs;
        let texts: Vec<String> = gen.tokens.iter().map(|t| o.tok.decode(t)).collect::<Result<_>>()?;
        let verdicts: Vec<Verdict> = texts
            .par_iter()
            .enumerate()
            .map(|(i, c)| o.grader.grade(&drawn[i / g].task, c))
            .collect();
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
                out.finished.push(gen.finished[i]);
                out.ended_with.push(gen.ended_with[i]);
                out.rewards.push(rewards[i]);
                out.verdicts.push(verdicts[i]);
            }
        }
        if !resample {
            break;
        }
    }
    Ok(out)
}

/// Runs the RL stage; returns the final metadata.
pub fn run_rl(cfg: &RlConfig, args: &CommonArgs) -> Result<Meta> {
    let out = cfg.out.clone().unwrap_or_else(|| crate::config::default_out("rl"));
    configure_threads();
    let device = cfg.rl.device.resolve()?;
    let mut resume: Option<(RlState, TrainState, PathBuf, Vec<Value>)> = None;
    match checkpoint::prepare_out(&out, "rl", args.resume)? {
        OutState::Fresh => {}
        OutState::Complete(meta) => return Ok(meta),
        OutState::Resume { dir, state, log } => {
            let s: RlState = serde_json::from_value(state.json.clone()).context("reading the RL trainer state")?;
            eprintln!("rl: resuming {} from step {}", out.display(), s.step);
            resume = Some((s, state, dir, log));
        }
    }
    let init = cfg
        .init
        .clone()
        .context("rl starts from a checkpoint: pass --init <dir> (e.g. runs/default/sft)")?;
    let lora = crate::lora::from_section("rl", cfg.rl.lora_rank, cfg.rl.lora_alpha)?;
    // A LoRA run resumes from its starting weights plus the adapters kept in the state (the
    // saved weights have the adapters merged in).
    let (mut vs, model, loaded) = match &resume {
        Some((_, _, dir, _)) if lora.is_none() => checkpoint::load_model(dir, device)?,
        _ => checkpoint::load_model(&init, device).with_context(|| format!("loading --init {}", init.display()))?,
    };
    let mut model = model;
    model.set_compute_kind(cfg.rl.precision.kind());
    let saved = resume
        .as_ref()
        .map(|(_, state, dir, _)| (state.tensors.as_slice(), dir.as_path()));
    let adapters = crate::lora::setup(&mut model, &mut vs, lora, cfg.rl.seed, saved)?;
    let trainable = adapters.as_ref().map_or(&vs, |a| &a.vs);
    // A resumed LoRA run loaded its weights from --init; its tokenizer and metadata are its own.
    let own = match &resume {
        Some((_, _, dir, _)) if lora.is_some() => Some(checkpoint::load(dir)?),
        _ => None,
    };
    let tok: Tok = own.as_ref().map_or_else(|| loaded.tok.clone(), |o| o.tok.clone());
    let mut meta = match &resume {
        Some(_) => own.map_or_else(|| loaded.meta.clone(), |o| o.meta),
        None => {
            let mut m = Meta::new("rl");
            m.parent = Some(checkpoint::parent_ref(&loaded.dir, &loaded.meta));
            m
        }
    };
    let reference = if cfg.rl.kl_coef > 0.0 {
        let (rvs, mut rmodel, _) = checkpoint::load_model(&init, device)?;
        rmodel.set_compute_kind(cfg.rl.precision.kind());
        Some((rvs, rmodel))
    } else {
        None
    };
    let mix = PromptMix::open(&cfg.data.prompts)?;
    let mut stream = PromptStream::open(&mix, cfg.rl.seed)
        .with_context(|| format!("opening the RL prompts {}", cfg.data.prompts.display()))?;
    let eval_tasks = match &cfg.eval {
        Some(e) => Some(limit_per_kind(load_tasks(&e.tasks)?, e.per_kind)),
        None => None,
    };
    let hard_tasks = match cfg.eval.as_ref().and_then(|e| e.hard_tasks.as_ref()) {
        Some(p) => Some(load_tasks(p)?),
        None => None,
    };
    let grader = Grader::new(
        cfg.rewards,
        ProgramExec {
            python: cfg.verifier.python.clone(),
            timeout: Duration::from_millis(cfg.verifier.program_timeout_ms),
            memory_mb: cfg.verifier.program_memory_mb,
        },
    );
    let schedule = cfg.schedule();
    let mut opt = AdamW::new(
        trainable,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: cfg.rl.weight_decay,
        },
    );
    let mut st = RlState {
        step: 0,
        tokens_sampled: 0,
        train_secs: 0.0,
        stream: stream.state(),
        practised: Vec::new(),
    };
    let mut previous_log = None;
    if let Some((s, state, _, lines)) = resume.take() {
        opt.load_state_tensors(&state.tensors)?;
        stream.restore(&s.stream)?;
        previous_log = Some((s.step, lines));
        st = s;
    }
    let resumed = previous_log.is_some();
    let mut log = MetricsLog::open(&out, "rl", previous_log)?;

    meta.stage = "rl".into();
    meta.total_steps = cfg.rl.steps;
    meta.device = device_name(device);
    meta.config = serde_json::to_value(cfg)?;
    meta.mix = json!({"prompts": cfg.data.prompts.display().to_string(), "mix": mix, "slots": stream.slot_names()});
    let g = cfg.rl.group_size;
    let n_prompts = cfg.rl.prompts_per_step;
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
        device_name(device)
    );
    if let Some(a) = &adapters {
        eprintln!("rl: {}", a.describe(&vs));
    }

    let eval_on = |model: &Gpt, list: Option<&Vec<Task>>, what: &str| -> Result<Option<Value>> {
        let (Some(e), Some(list)) = (&cfg.eval, list) else {
            return Ok(None);
        };
        let r = evaluate_tasks(
            model,
            &tok,
            list,
            &grader,
            &SamplingConfig::greedy(e.max_new_tokens),
            1,
            e.batch_size,
            device,
        )?;
        eprintln!("rl: {what}: {}", summarize(&r));
        Ok(Some(serde_json::to_value(&r)?))
    };
    let eval = |model: &Gpt| eval_on(model, eval_tasks.as_ref(), "held-out tasks");
    let eval_hard = |model: &Gpt| eval_on(model, hard_tasks.as_ref(), "harder held-out slice");
    let save = |meta: &mut Meta, lines: &[Value], opt: &AdamW, st: &mut RlState, stream: &PromptStream| -> Result<()> {
        st.stream = stream.state();
        meta.step = st.step;
        meta.tokens_seen = st.tokens_sampled;
        meta.train_secs = st.train_secs;
        let mut tensors = opt.state_tensors();
        let merged = crate::lora::save_parts(adapters.as_ref(), &vs, &model, &mut tensors)?;
        let state = TrainState {
            tensors,
            json: serde_json::to_value(st)?,
        };
        checkpoint::save(
            &out,
            merged.as_ref().unwrap_or(&vs),
            model.config(),
            &tok,
            meta,
            lines,
            Some(&state),
        )
    };
    if !resumed {
        if let Some(r) = eval(&model)? {
            log.push(json!({"stage": "rl", "step": 0, "eval": r.clone()}))?;
            meta.metrics.insert("tasks_start".into(), r);
        }
        if let Some(r) = eval_hard(&model)? {
            meta.metrics.insert("tasks_hard_start".into(), r);
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let mut progress = Progress::new("rl", cfg.rl.steps);
    progress.update(st.step, "");
    while st.step < cfg.rl.steps {
        if stop.load(Ordering::SeqCst) {
            save(&mut meta, &log.lines, &opt, &mut st, &stream)?;
            bail!(
                "interrupted at step {}; the checkpoint in {} resumes with --resume",
                st.step,
                out.display()
            );
        }
        let t0 = Instant::now();
        let sopts = SampleOpts {
            cfg,
            model: &model,
            tok: &tok,
            grader: &grader,
            device,
            seen_per_kind: cfg.eval.as_ref().map_or(0, |e| e.seen_per_kind),
        };
        let smp = sample_step(&sopts, &mut stream, st.step, &mut st.practised)?;
        let Sampled {
            prompts,
            tokens: gen_tokens,
            finished,
            ended_with,
            rewards,
            verdicts: _,
            ..
        } = &smp;
        let overlong = cfg.overlong();
        let adv = advantages(rewards, g, cfg.scale_rewards())?;
        let flat = flat_groups(rewards, g);
        let loss_mask: Vec<bool> = (0..rewards.len())
            .map(|i| {
                let dropped = cfg.rl.loss == LossKind::Dapo && flat[i / g];
                let masked = overlong == Overlong::Mask && !finished[i];
                !dropped && !masked
            })
            .collect();
        // The batch normaliser counts every sequence in the loss (grpo/dr_grpo: sequences,
        // dapo: their tokens, the stop token included) ...
        let in_loss: Vec<usize> = (0..rewards.len()).filter(|&i| loss_mask[i]).collect();
        let loss_tokens: f64 = in_loss
            .iter()
            .map(|&i| (gen_tokens[i].len() + usize::from(ended_with[i].is_some())) as f64)
            .sum();
        let norm = batch_normaliser(cfg.rl.loss, in_loss.len(), loss_tokens);
        // ... but without a KL term a sequence whose advantage is zero adds exactly nothing to
        // the gradient, so it is not run through the model (in half the groups or more of a
        // step every answer gets the same reward).
        let trained: Vec<bool> = (0..rewards.len())
            .map(|i| loss_mask[i] && (cfg.rl.kl_coef > 0.0 || adv[i] != 0.0))
            .collect();
        let sample_secs = t0.elapsed().as_secs_f64();

        // Update.
        let t1 = Instant::now();
        let lr = schedule.lr(st.step);
        let roll = build_rollouts(prompts, gen_tokens, ended_with, tok.pad, &trained, adv);
        let n = roll.keep.len();
        let (mut clipped, mut counted, mut kl_sum, mut grad_norm, mut loss_val) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let train_tokens = roll.mask.sum(Kind::Float).double_value(&[]);
        if n > 0 {
            let input = roll.input.to_device(device);
            let target = roll.target.to_device(device);
            let mask = roll.mask.to_device(device);
            let adv_t = Tensor::from_slice(&roll.adv.iter().map(|&a| a as f32).collect::<Vec<_>>()).to_device(device);
            let ranges = micro_ranges(n, cfg.rl.micro_batch_size);
            let (old, refl) = {
                let _g = tch::no_grad_guard();
                let old: Vec<Tensor> = ranges
                    .iter()
                    .map(|&(s, l)| token_logps(&model, &input.narrow(0, s, l), &target.narrow(0, s, l), &cfg.sampling))
                    .collect();
                let refl: Option<Vec<Tensor>> = reference.as_ref().map(|(_, r)| {
                    ranges
                        .iter()
                        .map(|&(s, l)| token_logps(r, &input.narrow(0, s, l), &target.narrow(0, s, l), &cfg.sampling))
                        .collect()
                });
                (old, refl)
            };
            for epoch in 0..cfg.rl.inner_epochs {
                opt.zero_grad();
                let mut total = 0.0;
                for (j, &(s, l)) in ranges.iter().enumerate() {
                    let logp = token_logps(&model, &input.narrow(0, s, l), &target.narrow(0, s, l), &cfg.sampling);
                    let parts = policy_loss(
                        cfg.rl.loss,
                        &logp,
                        &old[j],
                        refl.as_ref().map(|r| &r[j]),
                        &mask.narrow(0, s, l),
                        &adv_t.narrow(0, s, l),
                        cfg.rl.clip_low,
                        cfg.clip_high(),
                        cfg.rl.kl_coef,
                        cfg.sampling.max_new_tokens,
                        norm,
                    );
                    parts.loss.backward();
                    total += parts.loss.double_value(&[]);
                    if epoch + 1 == cfg.rl.inner_epochs {
                        clipped += parts.clipped_tokens;
                        counted += parts.tokens;
                        kl_sum += parts.kl_sum;
                    }
                }
                if !total.is_finite() {
                    bail!("rl: loss became {total} at step {}; stopped without saving (last good checkpoint kept). Lower rl.lr", st.step);
                }
                grad_norm = opt.clip_grad_norm(cfg.rl.grad_clip);
                opt.step(lr);
                loss_val = total;
            }
        }
        let train_secs = t1.elapsed().as_secs_f64();
        st.step += 1;
        let step_secs = t0.elapsed().as_secs_f64();
        st.train_secs += step_secs;
        // Statistics of everything sampled this step (replaced groups included).
        let all = &smp.all;
        let sampled: usize = all.iter().map(|a| a.len).sum();
        st.tokens_sampled += sampled as u64;
        let nf = all.len() as f64;
        let mean = all.iter().map(|a| a.reward).sum::<f64>() / nf;
        let std = (all.iter().map(|a| (a.reward - mean).powi(2)).sum::<f64>() / nf).sqrt();
        let frac = |f: &dyn Fn(&SampleStat) -> bool| all.iter().filter(|a| f(a)).count() as f64 / nf;
        let line = json!({
            "stage": "rl", "step": st.step, "lr": lr, "loss": loss_val,
            "reward_mean": mean, "reward_std": std,
            "accuracy": frac(&|a| a.verdict.correct),
            "abstention_rate": frac(&|a| a.verdict.abstained),
            "format_rate": frac(&|a| a.verdict.formatted),
            "verifier_errors": frac(&|a| a.verdict.errored),
            "truncation_rate": frac(&|a| !a.finished),
            "completion_len": sampled as f64 / nf,
            "kl": if counted > 0.0 { kl_sum / counted } else { 0.0 },
            "clip_frac": if counted > 0.0 { clipped / counted } else { 0.0 },
            "zero_adv_groups": smp.flat_groups as f64 / smp.groups_sampled.max(1) as f64,
            "groups_sampled": smp.groups_sampled, "groups_trained": rewards.len() / g,
            "trained_sequences": n, "grad_norm": grad_norm,
            "sample_tok_per_s": sampled as f64 / smp.gen_secs.max(1e-9), "train_tok_per_s": train_tokens * cfg.rl.inner_epochs as f64 / train_secs.max(1e-9),
            "sample_secs": sample_secs, "train_secs": train_secs,
            "curriculum": stream.curriculum.slots.iter().map(|s| json!({"slot": s.name, "success": s.success, "drawn": s.drawn})).collect::<Vec<_>>(),
            "in_band": stream.curriculum.share_in_band(),
        });
        progress.update(
            st.step,
            format!(
                "reward {mean:.3} | acc {:.0}% | idk {:.0}% | len {:.0} | flat {}/{} | sample {}/s",
                100.0 * line["accuracy"].as_f64().unwrap_or(0.0),
                100.0 * line["abstention_rate"].as_f64().unwrap_or(0.0),
                line["completion_len"].as_f64().unwrap_or(0.0),
                smp.flat_groups,
                smp.groups_sampled,
                format_count(line["sample_tok_per_s"].as_f64().unwrap_or(0.0))
            ),
        );
        log.push(line)?;
        let last = st.step == cfg.rl.steps;
        if let Some(e) = &cfg.eval {
            if e.every > 0 && st.step % e.every == 0 && !last {
                if let Some(r) = eval(&model)? {
                    log.push(json!({"stage": "rl", "step": st.step, "eval": r}))?;
                }
            }
        }
        if cfg.rl.save_every > 0 && st.step % cfg.rl.save_every == 0 && !last {
            save(&mut meta, &log.lines, &opt, &mut st, &stream)?;
        }
    }
    progress.finish();
    save(&mut meta, &log.lines, &opt, &mut st, &stream)?;
    if let Some(r) = eval(&model)? {
        log.push(json!({"stage": "rl", "step": st.step, "eval": r.clone()}))?;
        meta.metrics.insert("tasks".into(), r);
    }
    if let Some(r) = eval_hard(&model)? {
        meta.metrics.insert("tasks_hard".into(), r);
    }
    // Practised prompts, graded now and by the starting model: a gain there that held-out
    // questions do not show is memorised, not learned.
    if !st.practised.is_empty() {
        let practised = Some(st.practised.clone());
        if let Some(r) = eval_on(&model, practised.as_ref(), "practised prompts, after")? {
            meta.metrics.insert("tasks_seen".into(), r);
        }
        let (_, start_model, _) = checkpoint::load_model(&init, device)?;
        if let Some(r) = eval_on(&start_model, practised.as_ref(), "practised prompts, before")? {
            meta.metrics.insert("tasks_seen_start".into(), r);
        }
    }
    meta.metrics.insert("prompt_repeats".into(), json!(stream.repeats()));
    meta.metrics.insert("curriculum".into(), json!(stream.curriculum.slots));
    let rl_lines: Vec<&Value> = log.lines.iter().filter(|l| l.get("reward_mean").is_some()).collect();
    let avg = |k: &str| rl_lines.iter().filter_map(|l| l[k].as_f64()).sum::<f64>() / rl_lines.len().max(1) as f64;
    meta.metrics.insert(
        "train".into(),
        json!({
            "secs": st.train_secs, "tokens_sampled": st.tokens_sampled,
            "sample_tok_per_s": avg("sample_tok_per_s"), "train_tok_per_s": avg("train_tok_per_s"),
            "sample_time_fraction": avg("sample_secs") / (avg("sample_secs") + avg("train_secs")).max(1e-9),
            "first_reward": rl_lines.first().and_then(|l| l["reward_mean"].as_f64()),
            "last_reward": rl_lines.last().and_then(|l| l["reward_mean"].as_f64()),
        }),
    );
    meta.complete = true;
    save(&mut meta, &log.lines, &opt, &mut st, &stream)?;
    eprintln!(
        "rl: done: {} steps in {}; checkpoint {}",
        st.step,
        format_secs(st.train_secs),
        out.display()
    );
    Ok(meta)
}
