//! The language-modelling loop shared by pretrain, midtrain and SFT, on the [`Stage`]
//! harness: gradient accumulation to a token batch, global-norm clipping, a schedule,
//! held-out evaluation per source (and task grading, when `[tasks]` is set), periodic
//! checkpoints and a JSON-lines metrics log. Each stage crate gives its [`StageSpec`].
use crate::checkpoint::Meta;
use crate::config::{CommonArgs, LmConfig};
use crate::data::mix::{load_mix, ResolvedMix};
use crate::data::sampler::{Cursor, DocCounts, LmSampler, Overlong, PackMode, PackedBatch, SamplerOptions, IGNORE};
use crate::device::device_name;
use crate::meta::DataRecord;
use crate::metrics::{EvalLine, HeldOut, HeldOutBySource, LmStep, LmTrainMetrics, OverlongDocs, TrainMetrics};
use crate::model::{in_kind, Gpt};
use crate::optim::AdamW;
use crate::progress::{format_count, format_secs, Progress};
use crate::sampling::SamplingConfig;
use crate::stage::{Opened, Scratch, Stage, StageOptions, TrainerState};
use crate::tasks::{evaluate_tasks, limit_per_kind, summarize, EvalOptions, TaskReport};
use crate::tokenizer::Tok;
use crate::verify::{Grader, Task};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What a language-modelling stage asks of the shared loop.
pub struct StageSpec {
    /// `pretrain`, `midtrain` or `sft`.
    pub stage: &'static str,
    /// How documents become rows.
    pub pack: PackMode,
    /// Train only on assistant tokens of conversations.
    pub assistant_only: bool,
    /// Builds the tokenizer and architecture of a run without `--init` (pretrain); `None`:
    /// the stage starts from a checkpoint.
    pub scratch: Option<fn(&LmConfig) -> Result<Scratch>>,
    /// What `--init` usually is, for the error when it is missing.
    pub init_example: &'static str,
}

/// Trainer state saved in `state/trainer.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedState {
    step: u64,
    tokens_seen: u64,
    train_secs: f64,
    cursor: Cursor,
    seed: u64,
}

impl TrainerState for SavedState {
    fn step(&self) -> u64 {
        self.step
    }
    fn tokens(&self) -> u64 {
        self.tokens_seen
    }
    fn secs(&self) -> f64 {
        self.train_secs
    }
}

/// Held-out rows of one source, fixed for the whole run.
pub struct EvalSet {
    /// Source name.
    pub name: String,
    /// Packed rows.
    pub batches: Vec<PackedBatch>,
    /// Entropy (nats/token) of the set's own token frequencies: the loss of the best
    /// unigram model of it, a floor no unigram baseline beats.
    pub unigram_loss: f64,
}

/// How [`build_eval_sets`] cuts held-out rows.
#[derive(Clone, Copy, Debug)]
pub struct EvalSetOptions {
    /// Tokens per row.
    pub seq_len: usize,
    /// How documents become rows.
    pub pack: PackMode,
    /// Count only assistant tokens of conversations.
    pub assistant_only: bool,
    /// Trained targets per source (at most one pass over it).
    pub tokens: u64,
    /// Rows per batch.
    pub rows_per_batch: usize,
    /// Document packing: what to do with a document longer than a row.
    pub overlong: Overlong,
}

/// Builds the held-out sets of a mix: up to `opts.tokens` trained targets per source.
pub fn build_eval_sets(mix: &ResolvedMix, tok: &Tok, opts: &EvalSetOptions) -> Result<Vec<EvalSet>> {
    let mut out = Vec::new();
    for src in &mix.sources {
        let single = ResolvedMix {
            path: mix.path.clone(),
            description: String::new(),
            sources: vec![crate::data::ResolvedSource {
                share: 1.0,
                ..src.clone()
            }],
        };
        let mut sampler = LmSampler::new(
            &single,
            tok,
            SamplerOptions {
                seq_len: opts.seq_len,
                mode: opts.pack,
                assistant_only: opts.assistant_only,
                seed: 0,
                shuffle: false,
                overlong: opts.overlong,
            },
            None,
        )?;
        let mut batches = Vec::new();
        let mut seen = 0u64;
        let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
        while seen < opts.tokens && sampler.epochs(0) == 0 {
            let b = sampler.next_batch(opts.rows_per_batch)?;
            seen += b.trained_tokens as u64;
            let t: Vec<i64> = Vec::try_from(b.target.flatten(0, -1))?;
            for x in t.into_iter().filter(|&x| x != IGNORE) {
                *counts.entry(x).or_default() += 1;
            }
            batches.push(b);
        }
        for line in overlong_warnings("held-out set", &sampler) {
            eprintln!("{line}");
        }
        let total: u64 = counts.values().sum();
        let unigram_loss = counts
            .values()
            .map(|&c| {
                let p = c as f64 / total.max(1) as f64;
                -p * p.ln()
            })
            .sum();
        out.push(EvalSet {
            name: src.config.name.clone(),
            batches,
            unigram_loss,
        });
    }
    Ok(out)
}

/// Summed cross-entropy (nats) of `model` over the trained targets of a batch on `device`.
///
/// The output head and the loss run over chunks of [`head_chunk_rows`] rows of trained targets,
/// as in training, so the `[tokens, vocab]` logits are never held whole (at the default model's
/// shape a 16-row batch's fp32 logits are 64 MB, with a GPT-2-sized vocabulary and 2048
/// positions several GB); rows whose target is masked are not computed. The log-probabilities
/// are taken in fp32 from the product in the model's compute precision, as the whole-batch
/// formula does. Differentiable (tests take gradients through it).
pub fn lm_loss_sum(model: &Gpt, b: &PackedBatch) -> Result<Tensor> {
    let rows = head_chunk_rows(model.config().vocab_size, b.input.device());
    loss_sum_chunked(model, b, rows)
}

/// The final hidden states `[rows, d]` of the batch's trained targets, and those targets; `Err`
/// with the whole batch's hidden states `[tokens, d]` when no target is trained.
fn trained_hidden(model: &Gpt, b: &PackedBatch) -> std::result::Result<(Tensor, Tensor, i64), Tensor> {
    let h = model.hidden(&b.input, &b.positions(), None);
    let d = h.size()[2];
    let h = h.view([-1, d]);
    let target = b.target.view([-1]);
    let keep = target.ne(IGNORE);
    let kept = keep.sum(Kind::Int64).int64_value(&[]);
    if kept == 0 {
        return Err(h);
    }
    if kept == target.size()[0] {
        return Ok((h, target, kept));
    }
    let idx = keep.nonzero().squeeze_dim(1);
    Ok((h.index_select(0, &idx), target.index_select(0, &idx), kept))
}

fn loss_sum_chunked(model: &Gpt, b: &PackedBatch, rows: i64) -> Result<Tensor> {
    let (h, target, kept) = match trained_hidden(model, b) {
        Ok(t) => t,
        // Nothing trained: zero, still connected to the parameters as the plain loss would be.
        Err(h) => return Ok(h.sum(Kind::Float) * 0.0),
    };
    let w = in_kind(model.head_weight(), h.kind());
    let mut loss = Tensor::zeros([], (Kind::Float, h.device()));
    let mut start = 0;
    while start < kept {
        let len = rows.min(kept - start);
        let lp = h
            .narrow(0, start, len)
            .linear::<Tensor>(&w, None)
            .log_softmax(1, Kind::Float);
        // A target outside the vocabulary is an error naming it, as the whole-batch loss gave.
        loss = loss
            - lp.f_gather(1, &target.narrow(0, start, len).unsqueeze(1), false)?
                .sum(Kind::Float);
        start += len;
    }
    Ok(loss)
}

/// Loss (nats/token) and bits per byte of `model` on each set.
pub fn evaluate(model: &Gpt, sets: &[EvalSet], device: Device) -> Result<HeldOutBySource> {
    let _guard = tch::no_grad_guard();
    let mut out = BTreeMap::new();
    for set in sets {
        let (mut nats, mut toks, mut bytes) = (0.0, 0i64, 0i64);
        for b in &set.batches {
            let b = b.to_device(device);
            let loss = lm_loss_sum(model, &b)?;
            nats += loss.double_value(&[]);
            toks += b.trained_tokens;
            bytes += b.trained_bytes;
        }
        let loss = nats / toks.max(1) as f64;
        let bpb = nats / std::f64::consts::LN_2 / bytes.max(1) as f64;
        out.insert(
            set.name.clone(),
            HeldOut {
                loss,
                bpb,
                tokens: toks,
                unigram_loss: set.unigram_loss,
            },
        );
    }
    Ok(out)
}

/// Runs a language-modelling stage end to end on the [`Stage`] harness and returns the final
/// metadata: open, build the data, evaluate the start, train, save, evaluate the end, finish.
pub fn run(spec: &StageSpec, cfg: &LmConfig, args: &CommonArgs) -> Result<Meta> {
    let scratch = spec.scratch.map(|f| move || f(cfg));
    let opts = stage_options(spec, cfg, args)?;
    let (mut stage, resumed) = match Stage::open::<SavedState>(opts, scratch.as_ref().map(|f| f as _))? {
        Opened::Complete(meta) => return Ok(*meta),
        Opened::Run { stage, resumed } => (stage, resumed),
    };
    let mix = load_mix(&cfg.data.mix, cfg.root())?;
    check_fits(&stage, cfg)?;
    let (accum, world) = (cfg.train.accum_steps(), stage.dist.world as i64);
    if world > accum {
        bail!(
            "{} ranks but {accum} micro-batches per step (train.batch_size {} / micro_batch_size {}): every rank needs one; \
             lower train.micro_batch_size to at most batch_size / {world}",
            world,
            cfg.train.batch_size(),
            cfg.train.micro_batch_size
        );
    }
    let cursor = resumed.as_ref().map(|s| s.cursor.clone());
    let mut data = LmData::new(spec, cfg, &stage.tok, &mix, cursor)?;
    stage.meta.mix = Some(DataRecord::Mix(mix));
    let mut st = resumed.unwrap_or_else(|| SavedState {
        step: 0,
        tokens_seen: 0,
        train_secs: 0.0,
        cursor: data.sampler.cursor(),
        seed: cfg.train.seed,
    });
    let speed = Speed::measure(&stage, cfg);
    print_header(&stage, cfg, &speed);
    if st.step == 0 {
        evaluate_start(&mut stage, cfg, &data)?;
    }
    let trained = train(&mut stage, cfg, &mut data, &mut st, &speed)?;
    // Save before evaluating: an evaluation crash must not lose the run.
    st.cursor = data.sampler.cursor();
    stage.save(&st)?;
    evaluate_end(&mut stage, cfg, &data, st.step)?;
    finish(stage, spec, &data, &st, &speed, &trained)
}

/// What the harness needs to open an LM stage: its out dir, init, resume flags, the memory it
/// will use and the resolved config to save.
fn stage_options<'a>(spec: &'a StageSpec, cfg: &'a LmConfig, args: &CommonArgs) -> Result<StageOptions<'a>> {
    Ok(StageOptions {
        stage: spec.stage,
        out: cfg.out_dir(),
        init: cfg.init.clone(),
        resume: args.resume,
        force: args.force,
        workload: crate::memory::Workload {
            micro_batch: cfg.train.micro_batch_size,
            seq_len: Some(cfg.data.seq_len),
            held_rows: cfg.train.batch_size(),
            held_masks: spec.pack == PackMode::Documents,
            gen_rows: cfg.tasks.as_ref().map_or(0, |t| t.batch_size as i64),
            ..Default::default()
        },
        train: &cfg.train,
        config: serde_json::to_value(cfg)?,
        init_example: spec.init_example,
    })
}

/// What the training loop leaves for the final metrics.
struct Trained {
    /// The last step's loss (`None` if it was not finite).
    last_loss: Option<f64>,
    /// Seconds spent drawing batches.
    data_secs: f64,
}

/// The training loop: from `st.step` to the configured steps, each step logged, with the
/// periodic held-out evaluations and saves in between.
fn train(stage: &mut Stage, cfg: &LmConfig, data: &mut LmData, st: &mut SavedState, speed: &Speed) -> Result<Trained> {
    let schedule = cfg.train.schedule();
    let mut progress = Progress::new(stage.name, cfg.train.steps);
    progress.update(st.step, "");
    let mut trained = Trained {
        last_loss: None,
        data_secs: 0.0,
    };
    let mut warned_overlong = overlong_total(&data.sampler) > 0;
    while st.step < cfg.train.steps {
        st.cursor = data.sampler.cursor();
        stage.check_interrupt(&*st)?;
        let s = train_step(stage, cfg, &mut data.sampler, schedule.lr(st.step), st.step)?;
        st.step += 1;
        st.train_secs += s.secs;
        st.tokens_seen += s.tokens;
        trained.data_secs += s.data_secs;
        trained.last_loss = Some(s.loss).filter(|l| l.is_finite());
        if !warned_overlong && overlong_total(&data.sampler) > 0 {
            warned_overlong = true;
            progress.println(format!(
                "{}: warning: some conversations are longer than a row of {} tokens (data.seq_len + 1) and are {} (data.overlong = \"{}\"); counted per source at the end and in meta.json",
                stage.name,
                data.sampler.row_tokens(),
                past_tense(data.sampler.overlong()),
                data.sampler.overlong().name()
            ));
        }
        log_step(stage, &mut progress, speed, st, &s)?;
        if st.step < cfg.train.steps {
            between_steps(stage, cfg, data, st, &progress)?;
        }
    }
    progress.finish();
    for line in overlong_warnings("training set", &data.sampler) {
        eprintln!("{}: {line}", stage.name);
    }
    Ok(trained)
}

/// Logs a step to the metrics log and the progress bar.
fn log_step(stage: &mut Stage, progress: &mut Progress, speed: &Speed, st: &SavedState, s: &StepOutcome) -> Result<()> {
    let tps = speed.step_tokens / s.secs;
    let mfu = speed.mfu(tps);
    stage.log.push(&LmStep {
        stage: stage.name.into(),
        step: st.step,
        loss: s.loss,
        lr: s.lr,
        grad_norm: s.grad_norm,
        tokens: st.tokens_seen,
        tok_per_s: tps,
        mfu,
        step_secs: s.secs,
        data_secs: s.data_secs,
    })?;
    progress.update(
        st.step,
        format!(
            "loss {:.3} | lr {:.1e} | {}/s | mfu {:.0}%",
            s.loss,
            s.lr,
            format_count(tps),
            100.0 * mfu
        ),
    );
    Ok(())
}

/// The held-out evaluation every `eval.every` steps and the save every `train.save_every`
/// (before the last step; the end evaluates and saves anyway).
fn between_steps(
    stage: &mut Stage,
    cfg: &LmConfig,
    data: &LmData,
    st: &mut SavedState,
    progress: &Progress,
) -> Result<()> {
    if stage.dist.is_main() && !data.eval_sets.is_empty() && cfg.eval.every > 0 && st.step % cfg.eval.every == 0 {
        let ev = evaluate(&stage.model, &data.eval_sets, stage.device)?;
        progress.println(format!(
            "{}: step {} held-out: {}",
            stage.name,
            st.step,
            summarize_eval(&ev)
        ));
        stage.log.push(&eval_line(stage.name, st.step, ev))?;
    }
    if cfg.train.save_every > 0 && st.step % cfg.train.save_every == 0 {
        st.cursor = data.sampler.cursor();
        stage.save(&*st)?;
    }
    Ok(())
}

/// The run's training metrics into its meta, then the harness's finish, and a last line.
fn finish(
    mut stage: Box<Stage>,
    spec: &StageSpec,
    data: &LmData,
    st: &SavedState,
    speed: &Speed,
    trained: &Trained,
) -> Result<Meta> {
    let throughput = st.tokens_seen as f64 / st.train_secs.max(1e-9);
    stage.meta.metrics.train = Some(TrainMetrics::Lm(LmTrainMetrics {
        final_loss: trained.last_loss,
        tokens: st.tokens_seen,
        secs: st.train_secs,
        tok_per_s: throughput,
        mfu: speed.mfu(throughput),
        peak_gflops: speed.peak,
        data_fraction: trained.data_secs / st.train_secs.max(1e-9),
        consumed_per_source: data.sampler.consumed().into_iter().collect(),
        overlong: (spec.pack == PackMode::Documents).then(|| OverlongDocs {
            policy: data.sampler.overlong(),
            row_tokens: data.sampler.row_tokens() as u64,
            per_source: data.sampler.doc_counts().into_iter().collect(),
        }),
    }));
    let (name, out, main) = (stage.name, stage.out.clone(), stage.dist.is_main());
    let meta = stage.finish(st)?;
    if !main {
        return Ok(meta);
    }
    eprintln!(
        "{name}: done: {} steps, {} tokens in {} ({}/s); checkpoint {}",
        st.step,
        format_count(st.tokens_seen as f64),
        format_secs(st.train_secs),
        format_count(throughput),
        out.display()
    );
    Ok(meta)
}

/// The data of an LM run: the training sampler, the held-out sets, the task list.
struct LmData {
    sampler: LmSampler,
    eval_sets: Vec<EvalSet>,
    tasks: Option<Vec<Task>>,
    multiturn: Option<Vec<Task>>,
}

impl LmData {
    fn new(spec: &StageSpec, cfg: &LmConfig, tok: &Tok, mix: &ResolvedMix, cursor: Option<Cursor>) -> Result<Self> {
        let seq_len = cfg.data.seq_len as usize;
        let sampler = LmSampler::new(
            mix,
            tok,
            SamplerOptions {
                seq_len,
                mode: spec.pack,
                assistant_only: spec.assistant_only,
                seed: cfg.train.seed,
                shuffle: true,
                overlong: cfg.data.overlong,
            },
            cursor,
        )?;
        let eval_sets = match &cfg.eval.mix {
            Some(p) => build_eval_sets(
                &load_mix(p, cfg.root())?,
                tok,
                &EvalSetOptions {
                    seq_len,
                    pack: spec.pack,
                    assistant_only: spec.assistant_only,
                    tokens: cfg.eval.tokens,
                    rows_per_batch: cfg.train.micro_batch_size as usize,
                    overlong: cfg.data.overlong,
                },
            )?,
            None => Vec::new(),
        };
        let tasks = match &cfg.tasks {
            Some(t) => Some(limit_per_kind(t.source(cfg.root()).load()?, t.per_kind)),
            None => None,
        };
        let multiturn = match cfg.tasks.as_ref().and_then(|t| t.multiturn.as_ref().map(|m| (t, m))) {
            Some((t, m)) => Some(limit_per_kind(m.under(cfg.root()).load()?, t.per_kind)),
            None => None,
        };
        Ok(LmData {
            sampler,
            eval_sets,
            tasks,
            multiturn,
        })
    }
}

/// Documents cut or dropped so far, over all sources.
fn overlong_total(sampler: &LmSampler) -> u64 {
    sampler.doc_counts().iter().map(|(_, c)| c.cut + c.dropped).sum()
}

fn past_tense(p: Overlong) -> &'static str {
    match p {
        Overlong::Drop => "dropped",
        Overlong::Cut => "cut",
    }
}

/// One warning per source of `sampler` with documents longer than a row: how many of those
/// read, their share, and the setting that changes it. `what`: "training set", "held-out set".
pub fn overlong_warnings(what: &str, sampler: &LmSampler) -> Vec<String> {
    let (policy, row) = (sampler.overlong(), sampler.row_tokens());
    sampler
        .doc_counts()
        .into_iter()
        .filter(|(_, c)| c.cut + c.dropped > 0)
        .map(|(name, c): (String, DocCounts)| {
            let n = c.cut + c.dropped;
            let fix = match policy {
                Overlong::Drop => format!(
                    "none of them was trained on; raise data.seq_len to keep them, or set data.overlong = \"cut\" to train on their first {row} tokens"
                ),
                Overlong::Cut => "their ends (often the final answer) were not trained on; raise data.seq_len, or set data.overlong = \"drop\" to skip them".to_string(),
            };
            format!(
                "warning: {what} source `{name}`: {n} of {} conversations read ({:.1}%) were longer than a row of {row} tokens (data.seq_len + 1) and were {}: {fix}",
                c.documents,
                100.0 * n as f64 / c.documents.max(1) as f64,
                past_tense(policy),
            )
        })
        .collect()
}

/// The checks a model and tokenizer must pass before training on `cfg`'s data.
fn check_fits(stage: &Stage, cfg: &LmConfig) -> Result<()> {
    let mcfg = stage.model.config();
    let seq_len = cfg.data.seq_len;
    if seq_len > mcfg.max_seq_len {
        bail!(
            "data.seq_len = {seq_len} exceeds the model's max_seq_len = {}: lower data.seq_len",
            mcfg.max_seq_len
        );
    }
    if stage.tok.vocab_size() as i64 > mcfg.vocab_size {
        bail!(
            "the tokenizer has {} tokens but the model only {}",
            stage.tok.vocab_size(),
            mcfg.vocab_size
        );
    }
    Ok(())
}

/// Tokens per step and the machine's measured peak, for throughput and MFU.
struct Speed {
    step_tokens: f64,
    flops_per_token: f64,
    peak: f64,
}

impl Speed {
    fn measure(stage: &Stage, cfg: &LmConfig) -> Self {
        Speed {
            step_tokens: (cfg.train.batch_size() * cfg.data.seq_len) as f64,
            flops_per_token: stage.model.config().train_flops_per_token(cfg.data.seq_len),
            peak: crate::perf::peak_gflops(stage.device, cfg.train.precision.kind()),
        }
    }

    /// Model FLOPs utilisation at `tokens_per_sec`.
    fn mfu(&self, tokens_per_sec: f64) -> f64 {
        self.flops_per_token * tokens_per_sec / (self.peak * 1e9)
    }
}

fn print_header(stage: &Stage, cfg: &LmConfig, speed: &Speed) {
    if !stage.dist.is_main() {
        return;
    }
    let mcfg = stage.model.config();
    let name = stage.name;
    eprintln!(
        "{name}: {} parameters ({} in matmuls), {} layers x {} wide, vocab {}, on {} ({} threads, {:?}, peak {:.0} GFLOP/s measured)",
        format_count(mcfg.num_params() as f64),
        format_count(mcfg.matmul_params() as f64),
        mcfg.n_layer,
        mcfg.n_embd,
        mcfg.vocab_size,
        device_name(stage.device),
        stage.threads,
        cfg.train.precision,
        speed.peak
    );
    stage.describe_adapters();
    eprintln!(
        "{name}: {} steps x {} sequences x {} tokens = {} tokens/step ({} micro-batches of {}), mix {}",
        cfg.train.steps,
        cfg.train.batch_size(),
        cfg.data.seq_len,
        format_count(speed.step_tokens),
        cfg.train.accum_steps(),
        cfg.train.micro_batch_size,
        cfg.data.mix.display()
    );
}

/// What one optimizer step did.
struct StepOutcome {
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens: u64,
    secs: f64,
    data_secs: f64,
}

/// One optimizer step: draw the micro-batches, accumulate the gradient, clip, step.
fn train_step(stage: &mut Stage, cfg: &LmConfig, sampler: &mut LmSampler, lr: f64, step: u64) -> Result<StepOutcome> {
    let name = stage.name;
    let t0 = Instant::now();
    let (accum, micro) = (cfg.train.accum_steps(), cfg.train.micro_batch_size);
    // Every rank draws the step's micro-batches from the same seeded stream and trains on its
    // share (micro-batch i on rank i mod world); the summed gradients are those of the whole
    // batch, so any world size follows the same run and resumes from the same cursor.
    let batches = (0..accum)
        .map(|_| sampler.next_batch(micro as usize))
        .collect::<Result<Vec<_>>>()?;
    let data_secs = t0.elapsed().as_secs_f64();
    let trained: i64 = batches.iter().map(|b| b.trained_tokens).sum();
    if trained == 0 {
        bail!(
            "step {step}: the batch has no trained tokens (all targets masked); check the mix format and data.seq_len"
        );
    }
    let dist = stage.dist;
    let mine: Vec<PackedBatch> = batches
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % dist.world == dist.rank)
        .map(|(_, b)| b)
        .collect();
    let loss = lm_backward(&stage.model, &mut stage.opt, &mine, trained, stage.device)?;
    // One all-reduce per step (after the last micro-batch), the loss carried with the gradients.
    let loss = dist.sum_grads(&stage.opt.vars(), &[loss])?[0];
    if !loss.is_finite() {
        bail!(
            "{name}: loss became {loss} at step {step} (lr {lr:.2e}); stopped without saving, so the last good checkpoint in {} is kept. Lower train.lr or raise train.warmup_steps",
            stage.out.display()
        );
    }
    let grad_norm = stage.opt.clip_grad_norm(cfg.train.grad_clip);
    if !grad_norm.is_finite() {
        bail!("{name}: gradient norm became {grad_norm} at step {step}; stopped without saving (last good checkpoint kept). Lower train.lr");
    }
    stage.opt.step(lr);
    Ok(StepOutcome {
        loss,
        lr,
        grad_norm,
        tokens: (accum * micro * cfg.data.seq_len) as u64,
        secs: t0.elapsed().as_secs_f64(),
        data_secs,
    })
}

/// Grades the model on the `[tasks]` list (greedy answers); `None` without one.
fn run_tasks(stage: &Stage, cfg: &LmConfig, data: &LmData) -> Result<Option<TaskReport>> {
    grade_list(stage, cfg, data.tasks.as_ref(), "tasks")
}

/// Grades the model on the multi-turn follow-ups of `[tasks] multiturn`; `None` without them.
fn run_multiturn(stage: &Stage, cfg: &LmConfig, data: &LmData) -> Result<Option<TaskReport>> {
    grade_list(stage, cfg, data.multiturn.as_ref(), "multi-turn follow-ups")
}

/// Grades `list` with the `[tasks]` settings (greedy answers).
fn grade_list(stage: &Stage, cfg: &LmConfig, list: Option<&Vec<Task>>, what: &str) -> Result<Option<TaskReport>> {
    let (Some(t), Some(list)) = (&cfg.tasks, list) else {
        return Ok(None);
    };
    let grader = Grader::new(Default::default(), Default::default());
    let opts = EvalOptions {
        sampling: SamplingConfig::greedy(t.max_new_tokens),
        samples: 1,
        batch_size: t.batch_size,
        device: stage.device,
        progress: None,
    };
    let r = evaluate_tasks(&stage.model, &stage.tok, list, &grader, &opts)?;
    eprintln!("{}: {what}: {}", stage.name, summarize(&r));
    Ok(Some(r))
}

/// The starting checkpoint's tasks (when `tasks.eval_start`) and held-out loss (rank 0).
fn evaluate_start(stage: &mut Stage, cfg: &LmConfig, data: &LmData) -> Result<()> {
    if !stage.dist.is_main() {
        return Ok(());
    }
    if cfg.tasks.as_ref().is_some_and(|t| t.eval_start) {
        stage.meta.metrics.tasks_start = run_tasks(stage, cfg, data)?;
        stage.meta.metrics.tasks_multiturn_start = run_multiturn(stage, cfg, data)?;
    }
    if !data.eval_sets.is_empty() {
        let ev = evaluate(&stage.model, &data.eval_sets, stage.device)?;
        eprintln!("{}: held-out at start: {}", stage.name, summarize_eval(&ev));
        stage.log.push(&eval_line(stage.name, 0, ev.clone()))?;
        stage.meta.metrics.heldout_start = Some(ev);
    }
    Ok(())
}

/// The trained model's held-out loss and tasks (rank 0).
fn evaluate_end(stage: &mut Stage, cfg: &LmConfig, data: &LmData, step: u64) -> Result<()> {
    if !stage.dist.is_main() {
        return Ok(());
    }
    if !data.eval_sets.is_empty() {
        let ev = evaluate(&stage.model, &data.eval_sets, stage.device)?;
        eprintln!("{}: held-out at end: {}", stage.name, summarize_eval(&ev));
        stage.log.push(&eval_line(stage.name, step, ev.clone()))?;
        stage.meta.metrics.heldout = Some(ev);
    }
    if let Some(r) = run_tasks(stage, cfg, data)? {
        stage.meta.metrics.tasks = Some(r);
    }
    if let Some(r) = run_multiturn(stage, cfg, data)? {
        stage.meta.metrics.tasks_multiturn = Some(r);
    }
    Ok(())
}

/// Zeroes the gradients and accumulates the gradient of the mean loss over the trained
/// tokens of all `batches` (micro-batches of one optimizer step); returns that loss.
pub fn lm_backward(model: &Gpt, opt: &mut AdamW, batches: &[PackedBatch], trained: i64, device: Device) -> Result<f64> {
    opt.zero_grad();
    let scale = 1.0 / trained.max(1) as f64;
    let mut loss_sum = 0.0;
    for b in batches {
        let b = b.to_device(device);
        loss_sum += lm_loss_sum_backward(model, &b, scale)? * scale;
    }
    Ok(loss_sum)
}

/// Chunks of [`head_chunk_rows`] whose gradients feed one pair of products in
/// [`lm_loss_sum_backward`].
const HEAD_GROUP: i64 = 4;

/// Rows of logits computed at a time by [`lm_loss_sum_backward`]: about a million logits
/// (4 MB in fp32, so a chunk's softmax stays in the CPU's cache) on a CPU, 16M on a GPU,
/// where fewer, larger kernels pay.
fn head_chunk_rows(vocab: i64, device: Device) -> i64 {
    let logits = if device.is_cuda() { 1 << 24 } else { 1 << 20 };
    (logits / vocab.max(1)).clamp(32, 8192)
}

/// The summed cross-entropy (nats) of `model` over the trained targets of `b`, with the
/// backward pass of `scale` x that sum run at once (gradients accumulate in the parameters).
///
/// Same result as `lm_loss_sum(model, b)? * scale` followed by `backward()`, computed
/// without ever holding the `[tokens, vocab]` logits: the output head and the loss run over
/// chunks of rows, each chunk's gradient `softmax - onehot` is formed in place while it is in
/// cache, and groups of chunks are multiplied back into gradients of the hidden states and of
/// the head weight; the rest of the network is back-propagated from those (the output head and
/// loss took ~30% of a training step of the default model on a CPU: a 64 MB fp32 logits
/// tensor written, cast, normalised, zero-filled and read again by separate ops).
/// Rows whose target is masked cost nothing.
pub fn lm_loss_sum_backward(model: &Gpt, b: &PackedBatch, scale: f64) -> Result<f64> {
    let rows = head_chunk_rows(model.config().vocab_size, b.input.device());
    loss_sum_backward_chunked(model, b, scale, rows)
}

fn loss_sum_backward_chunked(model: &Gpt, b: &PackedBatch, scale: f64, rows: i64) -> Result<f64> {
    let (h, target, _) = match trained_hidden(model, b) {
        Ok(t) => t,
        Err(h) => {
            // Nothing trained in this micro-batch: zero gradients still reach every parameter,
            // as the plain loss's backward pass would give them.
            (h.sum(Kind::Float) * 0.0).backward();
            return Ok(0.0);
        }
    };
    let w = model.head_weight();
    let train_head = w.requires_grad();
    let (loss, grad_h, grad_w) = {
        let _guard = tch::no_grad_guard();
        let hd = h.detach();
        let kind = hd.kind();
        let wc = if w.kind() == kind { w.detach() } else { w.to_kind(kind) };
        let (n, vocab) = (hd.size()[0], wc.size()[0]);
        let mut loss = Tensor::zeros([], (Kind::Float, hd.device()));
        let mut grad_h = Vec::new();
        let mut grad_w = train_head.then(|| Tensor::zeros(w.size(), (Kind::Float, w.device())));
        // Chunks of `rows` are normalised one at a time (their fp32 log-probabilities stay in
        // cache); their gradients are gathered, in the compute precision, in a buffer of
        // HEAD_GROUP chunks that feeds one product for the hidden states' gradient and one for
        // the head's, so the fp32 head gradient is cast and accumulated once per group rather
        // than once per chunk (1.12-1.15x on the head at the default model's shape on a CPU).
        let group_rows = (rows * HEAD_GROUP).min(n);
        let buf = Tensor::empty([group_rows, vocab], (kind, hd.device()));
        let minus_one = Tensor::full([rows.min(n), 1], -1.0, (Kind::Float, hd.device()));
        let mut g0 = 0;
        while g0 < n {
            let glen = group_rows.min(n - g0);
            let mut start = 0;
            while start < glen {
                let len = rows.min(glen - start);
                let hc = hd.narrow(0, g0 + start, len);
                let tc = target.narrow(0, g0 + start, len).unsqueeze(1);
                // log p = logits - logsumexp, in fp32 from the bf16 product.
                let mut lp = hc.linear::<Tensor>(&wc, None).log_softmax(1, Kind::Float);
                loss -= lp.gather(1, &tc, false).sum(Kind::Float);
                // d(loss)/d(logits) = softmax - onehot, formed in place (scaled below).
                let _ = lp.exp_();
                let _ = lp.scatter_add_(1, &tc, &minus_one.narrow(0, 0, len));
                let mut dst = buf.narrow(0, start, len);
                dst.copy_(&lp);
                start += len;
            }
            let g = buf.narrow(0, 0, glen);
            grad_h.push(g.mm(&wc));
            if let Some(gw) = grad_w.as_mut() {
                *gw += g.tr().mm(&hd.narrow(0, g0, glen)).to_kind(Kind::Float);
            }
            g0 += glen;
        }
        let grad_h = Tensor::cat(&grad_h, 0).g_mul_scalar_(scale);
        (loss, grad_h, grad_w.map(|mut gw| gw.g_mul_scalar_(scale)))
    };
    // Back-propagate the chunks' gradients: d/dh of sum(h * grad_h) is grad_h, and likewise
    // for the head weight, so one backward pass carries both into the network.
    let mut surrogate = (&h * &grad_h).sum(Kind::Float);
    if let Some(gw) = grad_w {
        surrogate = surrogate + (w * gw.to_kind(w.kind())).sum(Kind::Float);
    }
    surrogate.backward();
    Ok(loss.double_value(&[]))
}

/// `encyclopedia 2.31 (1.10 bpb) | chatter …`
pub fn summarize_eval(ev: &HeldOutBySource) -> String {
    ev.iter()
        .map(|(k, v)| format!("{k} {:.3} ({:.3} bpb)", v.loss, v.bpb))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The metrics-log line of a held-out evaluation at `step`.
fn eval_line(stage: &str, step: u64, eval: HeldOutBySource) -> EvalLine<HeldOutBySource> {
    EvalLine {
        stage: stage.into(),
        step,
        eval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GptConfig;
    use tch::{nn, Reduction};

    fn batch(ignore_every: i64) -> PackedBatch {
        tch::manual_seed(7);
        let input = Tensor::randint(64, [3, 16], (Kind::Int64, Device::Cpu));
        let mut target = Tensor::randint(64, [3, 16], (Kind::Int64, Device::Cpu));
        if ignore_every > 0 {
            let idx = Tensor::arange_start_step(0, 48, ignore_every, (Kind::Int64, Device::Cpu));
            let _ = target.view([-1]).index_fill_(0, &idx, IGNORE);
        }
        if ignore_every == 1 {
            let _ = target.fill_(IGNORE);
        }
        let trained = target.ne(IGNORE).sum(Kind::Int64).int64_value(&[]);
        PackedBatch {
            input,
            target,
            positions: None,
            mask: None,
            trained_tokens: trained,
            per_source: vec![trained],
            trained_bytes: trained,
        }
    }

    fn grads(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        let mut out: Vec<_> = vs
            .variables()
            .into_iter()
            .map(|(k, v)| {
                let g = v.grad();
                let g = if g.defined() { g.copy() } else { v.zeros_like() };
                (k, g)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The whole-batch formula: full logits, fp32, libtorch's cross-entropy.
    fn plain_loss_sum(model: &Gpt, b: &PackedBatch) -> Tensor {
        let logits = model.forward(&b.input, &b.positions(), None);
        let v = logits.size()[2];
        logits.view([-1, v]).to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
            &b.target.view([-1]),
            None,
            Reduction::Sum,
            IGNORE,
            0.0,
        )
    }

    fn zero(vs: &nn::VarStore) {
        for (_, v) in vs.variables() {
            let mut g = v.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The chunked head + loss gives the plain autograd loss and gradients, with masked
    /// targets, several chunks, fp32 and mixed bf16: the training path (`heldout` false:
    /// backward pass run inside) or the held-out loss (autograd through it).
    fn chunked_matches_plain(heldout: bool, bf16: bool, ignore_every: i64, tie: bool) {
        let mut cfg = GptConfig::preset("tiny", 64).unwrap();
        cfg.tie_embeddings = tie;
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut model = Gpt::new(vs.root(), &cfg);
        if bf16 {
            model.set_compute_kind(Kind::BFloat16);
        }
        let b = batch(ignore_every);
        let scale = 1.0 / 48.0;
        let plain = plain_loss_sum(&model, &b);
        (&plain * scale).backward();
        let plain = plain.double_value(&[]);
        let want = grads(&vs);
        zero(&vs);
        let got_loss = if heldout {
            let loss = loss_sum_chunked(&model, &b, 5).unwrap();
            (&loss * scale).backward();
            loss.double_value(&[])
        } else {
            loss_sum_backward_chunked(&model, &b, scale, 5).unwrap()
        };
        if ignore_every == 1 {
            assert_eq!(got_loss, 0.0);
        }
        let got = grads(&vs);
        let tol = if bf16 { 2e-2 } else { 1e-5 };
        assert!(
            (plain - got_loss).abs() <= tol * plain.abs().max(1.0),
            "loss {plain} vs {got_loss}"
        );
        for ((k, a), (_, g)) in want.iter().zip(&got) {
            let diff = (a - g).norm().double_value(&[]);
            let norm = a.norm().double_value(&[]);
            assert!(diff <= tol * norm.max(1e-6), "{k}: |diff| {diff} vs |grad| {norm}");
            if ignore_every != 1 && !k.contains("norm") {
                assert!(norm > 0.0, "{k} got no gradient");
            }
        }
    }

    #[test]
    fn fused_head_loss_equals_plain_fp32() {
        chunked_matches_plain(false, false, 0, false);
        chunked_matches_plain(false, false, 3, false);
        chunked_matches_plain(false, false, 3, true);
    }

    #[test]
    fn fused_head_loss_equals_plain_bf16() {
        chunked_matches_plain(false, true, 3, false);
    }

    #[test]
    fn fused_head_loss_with_every_target_masked_is_zero() {
        chunked_matches_plain(false, false, 1, false);
    }

    /// A target outside the model's vocabulary is an error that says so, not a crash.
    #[test]
    fn heldout_loss_with_a_target_outside_the_vocabulary_is_an_error() {
        let cfg = GptConfig::preset("tiny", 64).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Gpt::new(vs.root(), &cfg);
        let b = batch(0);
        let _ = b.target.view([-1]).narrow(0, 40, 1).fill_(100);
        let err = lm_loss_sum(&model, &b).expect_err("target 100 in a vocabulary of 64");
        assert!(format!("{err:#}").contains("out of bounds"), "{err:#}");
    }

    /// The held-out loss over chunks (partial last chunk, masked targets, tied head, bf16)
    /// equals the whole-batch formula, and so do its gradients.
    #[test]
    fn chunked_heldout_loss_equals_plain() {
        chunked_matches_plain(true, false, 0, false);
        chunked_matches_plain(true, false, 3, false);
        chunked_matches_plain(true, false, 3, true);
        chunked_matches_plain(true, true, 3, false);
        chunked_matches_plain(true, false, 1, false);
    }
}
