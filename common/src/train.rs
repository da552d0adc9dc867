//! The language-modelling training loop shared by pretrain, midtrain and SFT:
//! gradient accumulation to a token batch, global-norm clipping, a schedule, held-out
//! evaluation per source, periodic atomic checkpoints, `--resume`, Ctrl-C saves, and a
//! JSON-lines metrics log.
use crate::checkpoint::{self, Meta, OutState, TrainState};
use crate::config::{CommonArgs, LmConfig};
use crate::data::mix::{load_mix, ResolvedMix};
use crate::data::parquet::read_all;
use crate::data::sampler::{Cursor, LmSampler, PackMode, PackedBatch, IGNORE};
use crate::device::{configure_threads, device_name, seed_everything};
use crate::metrics::MetricsLog;
use crate::model::{Gpt, GptConfig, Positions};
use crate::optim::AdamW;
use crate::progress::{format_count, format_secs, Progress};
use crate::tokenizer::Tok;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Kind, Reduction, Tensor};

/// What a stage asks of the shared loop.
pub struct StageSpec {
    /// `pretrain`, `midtrain` or `sft`.
    pub stage: &'static str,
    /// How documents become rows.
    pub pack: PackMode,
    /// Train only on assistant tokens of conversations.
    pub assistant_only: bool,
    /// Whether the stage needs `--init`.
    pub needs_init: bool,
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

/// Builds the held-out sets of a mix: up to `tokens` trained targets per source.
pub fn build_eval_sets(
    mix: &ResolvedMix,
    tok: &Tok,
    seq_len: usize,
    pack: PackMode,
    assistant_only: bool,
    tokens: u64,
    rows_per_batch: usize,
) -> Result<Vec<EvalSet>> {
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
        let mut sampler = LmSampler::new(&single, tok, seq_len, pack, assistant_only, 0, false, None)?;
        let mut batches = Vec::new();
        let mut seen = 0u64;
        let mut counts: BTreeMap<i64, u64> = BTreeMap::new();
        while seen < tokens && sampler.epochs(0) == 0 {
            let b = sampler.next_batch(rows_per_batch)?;
            seen += b.trained_tokens as u64;
            let t: Vec<i64> = Vec::try_from(b.target.flatten(0, -1))?;
            for x in t.into_iter().filter(|&x| x != IGNORE) {
                *counts.entry(x).or_default() += 1;
            }
            batches.push(b);
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
pub fn lm_loss_sum(model: &Gpt, b: &PackedBatch) -> Result<Tensor> {
    let pos = Positions {
        ids: b.positions.as_ref(),
        mask: b.mask.as_ref(),
    };
    let logits = model.forward(&b.input, &pos, None);
    let v = logits.size()[2];
    Ok(logits
        .view([-1, v])
        .to_kind(Kind::Float)
        .f_cross_entropy_loss::<Tensor>(&b.target.view([-1]), None, Reduction::Sum, IGNORE, 0.0)?)
}

/// Loss (nats/token) and bits per byte of `model` on each set.
pub fn evaluate(model: &Gpt, sets: &[EvalSet], device: Device) -> Result<BTreeMap<String, Value>> {
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
            json!({"loss": loss, "bpb": bpb, "tokens": toks, "unigram_loss": set.unigram_loss}),
        );
    }
    Ok(out)
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

/// Runs a language-modelling stage end to end and returns the final metadata.
pub fn run_lm_stage(spec: &StageSpec, cfg: &LmConfig, args: &CommonArgs) -> Result<Meta> {
    let stage = spec.stage;
    let out = cfg.out_dir();
    let threads = configure_threads();
    let device = cfg.train.device.resolve()?;
    // Where the weights come from: this run's own state (resume), an init checkpoint, or scratch.
    let mut resume_state: Option<(SavedState, TrainState, PathBuf, Vec<Value>)> = None;
    match checkpoint::prepare_out(&out, stage, args.resume)? {
        OutState::Fresh => {}
        OutState::Complete(meta) => return Ok(meta),
        OutState::Resume { dir, state, log } => {
            let saved: SavedState = serde_json::from_value(state.json.clone())
                .with_context(|| format!("reading the trainer state of {}", dir.display()))?;
            eprintln!("{stage}: resuming {} from step {}", out.display(), saved.step);
            resume_state = Some((saved, state, dir, log));
        }
    }

    let mix = load_mix(&cfg.data.mix)?;
    seed_everything(cfg.train.seed);
    let lora = cfg.train.lora()?;
    if lora.is_some() && cfg.init.is_none() {
        bail!("train.lora_rank > 0 adapts an existing model: pass --init <checkpoint> (or set lora_rank = 0 to train from scratch)");
    }
    let (mut vs, model, tok, mut meta) = if let Some((_, _, dir, _)) = &resume_state {
        if let (Some(_), Some(init)) = (lora, &cfg.init) {
            // A LoRA run resumes from its starting weights plus the adapters in its state
            // (the saved weights have the adapters merged in).
            let (vs, model, _) = checkpoint::load_model(init, device)
                .with_context(|| format!("loading --init {} (a LoRA run resumes from it)", init.display()))?;
            let own = checkpoint::load(dir)?;
            (vs, model, own.tok, own.meta)
        } else {
            let (vs, model, loaded) = checkpoint::load_model(dir, device)?;
            (vs, model, loaded.tok, loaded.meta)
        }
    } else if let Some(init) = &cfg.init {
        let (vs, model, loaded) =
            checkpoint::load_model(init, device).with_context(|| format!("loading --init {}", init.display()))?;
        let mut meta = Meta::new(stage);
        meta.parent = Some(checkpoint::parent_ref(&loaded.dir, &loaded.meta));
        (vs, model, loaded.tok, meta)
    } else {
        if spec.needs_init {
            bail!("{stage} starts from a checkpoint: pass --init <dir> (e.g. runs/default/midtrain) or set `init` in the config");
        }
        let tok = match &cfg.tokenizer {
            Some(t) if t.train => {
                eprintln!(
                    "{stage}: training a {}-token BPE on {} MB of the mix",
                    t.vocab_size, t.train_mb
                );
                let corpus = tokenizer_corpus(&mix, t.train_mb)?;
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
        let vs = nn::VarStore::new(device);
        let model = Gpt::new(vs.root(), &mcfg);
        (vs, model, tok, Meta::new(stage))
    };
    let mut model = model;
    model.set_compute_kind(cfg.train.precision.kind());
    let saved = resume_state
        .as_ref()
        .map(|(_, state, dir, _)| (state.tensors.as_slice(), dir.as_path()));
    let adapters = crate::lora::setup(&mut model, &mut vs, lora, cfg.train.seed, saved)?;
    let mcfg: GptConfig = model.config().clone();
    let seq_len = cfg.data.seq_len;
    if seq_len > mcfg.max_seq_len {
        bail!(
            "data.seq_len = {seq_len} exceeds the model's max_seq_len = {}: lower data.seq_len",
            mcfg.max_seq_len
        );
    }
    if tok.vocab_size() as i64 > mcfg.vocab_size {
        bail!(
            "the tokenizer has {} tokens but the model only {}",
            tok.vocab_size(),
            mcfg.vocab_size
        );
    }

    let cursor = resume_state.as_ref().map(|(s, ..)| s.cursor.clone());
    let mut sampler = LmSampler::new(
        &mix,
        &tok,
        seq_len as usize,
        spec.pack,
        spec.assistant_only,
        cfg.train.seed,
        true,
        cursor,
    )?;
    let eval_sets = match &cfg.eval.mix {
        Some(p) => {
            let emix = load_mix(p)?;
            build_eval_sets(
                &emix,
                &tok,
                seq_len as usize,
                spec.pack,
                spec.assistant_only,
                cfg.eval.tokens,
                cfg.train.micro_batch_size as usize,
            )?
        }
        None => Vec::new(),
    };

    let mut opt = AdamW::new(adapters.as_ref().map_or(&vs, |a| &a.vs), cfg.train.adamw());
    let (mut step, mut tokens_seen, mut train_secs) = (0u64, 0u64, 0.0f64);
    let mut previous_log = None;
    if let Some((saved, state, _, log)) = resume_state {
        opt.load_state_tensors(&state.tensors)?;
        step = saved.step;
        tokens_seen = saved.tokens_seen;
        train_secs = saved.train_secs;
        previous_log = Some((saved.step, log));
    }
    let mut log = MetricsLog::open(&out, stage, previous_log)?;

    meta.stage = stage.to_string();
    meta.total_steps = cfg.train.steps;
    meta.device = device_name(device);
    meta.config = serde_json::to_value(cfg)?;
    meta.mix = serde_json::to_value(&mix)?;
    let schedule = cfg.train.schedule();
    let accum = cfg.train.accum_steps();
    let micro = cfg.train.micro_batch_size;
    let step_tokens = (cfg.train.batch_size * seq_len) as f64;
    let flops_per_token = mcfg.train_flops_per_token(seq_len);
    let peak = crate::perf::peak_gflops(device, cfg.train.precision.kind());

    eprintln!(
        "{stage}: {} parameters ({} in matmuls), {} layers x {} wide, vocab {}, on {} ({threads} threads, {:?}, peak {:.0} GFLOP/s measured)",
        format_count(mcfg.num_params() as f64),
        format_count(mcfg.matmul_params() as f64),
        mcfg.n_layer,
        mcfg.n_embd,
        mcfg.vocab_size,
        device_name(device),
        cfg.train.precision,
        peak
    );
    if let Some(a) = &adapters {
        eprintln!("{stage}: {}", a.describe(&vs));
    }
    eprintln!(
        "{stage}: {} steps x {} sequences x {} tokens = {} tokens/step ({} micro-batches of {}), mix {}",
        cfg.train.steps,
        cfg.train.batch_size,
        seq_len,
        format_count(step_tokens),
        accum,
        micro,
        cfg.data.mix.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Only the first handler registration in a process succeeds; tests may run several stages.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }

    let save = |vs: &nn::VarStore,
                meta: &mut Meta,
                log: &MetricsLog,
                opt: &AdamW,
                sampler: &LmSampler,
                step: u64,
                tokens_seen: u64,
                train_secs: f64|
     -> Result<()> {
        meta.step = step;
        meta.tokens_seen = tokens_seen;
        meta.train_secs = train_secs;
        let saved = SavedState {
            step,
            tokens_seen,
            train_secs,
            cursor: sampler.cursor(),
            seed: cfg.train.seed,
        };
        let mut tensors = opt.state_tensors();
        let merged = crate::lora::save_parts(adapters.as_ref(), vs, &model, &mut tensors)?;
        let state = TrainState {
            tensors,
            json: serde_json::to_value(saved)?,
        };
        checkpoint::save(
            &out,
            merged.as_ref().unwrap_or(vs),
            &mcfg,
            &tok,
            meta,
            &log.lines,
            Some(&state),
        )
    };

    let tasks = match &cfg.tasks {
        Some(t) => Some(crate::tasks::limit_per_kind(
            crate::tasks::load_tasks(&t.path)?,
            t.per_kind,
        )),
        None => None,
    };
    let run_tasks = |model: &Gpt| -> Result<Option<Value>> {
        let (Some(t), Some(list)) = (&cfg.tasks, &tasks) else {
            return Ok(None);
        };
        let grader = crate::verify::Grader::new(Default::default(), Default::default());
        let sampling = crate::sampling::SamplingConfig::greedy(t.max_new_tokens);
        let r = crate::tasks::evaluate_tasks(model, &tok, list, &grader, &sampling, 1, t.batch_size, device)?;
        eprintln!("{stage}: tasks: {}", crate::tasks::summarize(&r));
        Ok(Some(serde_json::to_value(&r)?))
    };
    if step == 0 && cfg.tasks.as_ref().is_some_and(|t| t.eval_start) {
        if let Some(r) = run_tasks(&model)? {
            meta.metrics.insert("tasks_start".into(), r);
        }
    }
    if !eval_sets.is_empty() && step == 0 {
        let ev = evaluate(&model, &eval_sets, device)?;
        eprintln!("{stage}: held-out at start: {}", summarize_eval(&ev));
        meta.metrics.insert("heldout_start".into(), serde_json::to_value(&ev)?);
        log.push(json!({"stage": stage, "step": 0, "eval": ev}))?;
    }

    let mut progress = Progress::new(stage, cfg.train.steps);
    progress.update(step, "");
    let mut last_loss = f64::NAN;
    let mut data_secs = 0.0;
    while step < cfg.train.steps {
        if stop.load(Ordering::SeqCst) {
            progress.println(format!("{stage}: interrupted; saving step {step} to {}", out.display()));
            save(&vs, &mut meta, &log, &opt, &sampler, step, tokens_seen, train_secs)?;
            bail!(
                "interrupted at step {step}; the checkpoint in {} resumes with --resume",
                out.display()
            );
        }
        let t0 = Instant::now();
        let lr = schedule.lr(step);
        let batches = (0..accum)
            .map(|_| sampler.next_batch(micro as usize))
            .collect::<Result<Vec<_>>>()?;
        let t_data = t0.elapsed().as_secs_f64();
        let trained: i64 = batches.iter().map(|b| b.trained_tokens).sum();
        if trained == 0 {
            bail!("step {step}: the batch has no trained tokens (all targets masked); check the mix format and data.seq_len");
        }
        let loss_sum = lm_backward(&model, &mut opt, &batches, trained, device)?;
        if !loss_sum.is_finite() {
            bail!(
                "{stage}: loss became {loss_sum} at step {step} (lr {lr:.2e}); stopped without saving, so the last good checkpoint in {} is kept. Lower train.lr or raise train.warmup_steps",
                out.display()
            );
        }
        let grad_norm = opt.clip_grad_norm(cfg.train.grad_clip);
        if !grad_norm.is_finite() {
            bail!("{stage}: gradient norm became {grad_norm} at step {step}; stopped without saving (last good checkpoint kept). Lower train.lr");
        }
        opt.step(lr);
        step += 1;
        let dt = t0.elapsed().as_secs_f64();
        train_secs += dt;
        data_secs += t_data;
        tokens_seen += (accum * micro * seq_len) as u64;
        last_loss = loss_sum;
        let tps = step_tokens / dt;
        let mfu = flops_per_token * tps / (peak * 1e9);
        log.push(json!({
            "stage": stage, "step": step, "loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
            "tokens": tokens_seen, "tok_per_s": tps, "mfu": mfu, "step_secs": dt, "data_secs": t_data,
        }))?;
        progress.update(
            step,
            format!(
                "loss {loss_sum:.3} | lr {lr:.1e} | {}/s | mfu {:.0}%",
                format_count(tps),
                100.0 * mfu
            ),
        );

        let last = step == cfg.train.steps;
        if !eval_sets.is_empty() && cfg.eval.every > 0 && step % cfg.eval.every == 0 && !last {
            let ev = evaluate(&model, &eval_sets, device)?;
            progress.println(format!("{stage}: step {step} held-out: {}", summarize_eval(&ev)));
            log.push(json!({"stage": stage, "step": step, "eval": ev}))?;
        }
        if cfg.train.save_every > 0 && step % cfg.train.save_every == 0 && !last {
            save(&vs, &mut meta, &log, &opt, &sampler, step, tokens_seen, train_secs)?;
        }
    }
    progress.finish();

    // Save before evaluating: an evaluation crash must not lose the run.
    save(&vs, &mut meta, &log, &opt, &sampler, step, tokens_seen, train_secs)?;
    let mut metrics = BTreeMap::new();
    if !eval_sets.is_empty() {
        let ev = evaluate(&model, &eval_sets, device)?;
        eprintln!("{stage}: held-out at end: {}", summarize_eval(&ev));
        log.push(json!({"stage": stage, "step": step, "eval": ev}))?;
        metrics.insert("heldout".to_string(), serde_json::to_value(&ev)?);
    }
    if let Some(r) = run_tasks(&model)? {
        metrics.insert("tasks".to_string(), r);
    }
    let throughput = tokens_seen as f64 / train_secs.max(1e-9);
    metrics.insert(
        "train".into(),
        json!({
            "final_loss": last_loss,
            "tokens": tokens_seen,
            "secs": train_secs,
            "tok_per_s": throughput,
            "mfu": flops_per_token * throughput / (peak * 1e9),
            "peak_gflops": peak,
            "data_fraction": data_secs / train_secs.max(1e-9),
            "consumed_per_source": sampler.consumed().into_iter().collect::<BTreeMap<_, _>>(),
        }),
    );
    meta.metrics.extend(metrics);
    meta.complete = true;
    save(&vs, &mut meta, &log, &opt, &sampler, step, tokens_seen, train_secs)?;
    eprintln!(
        "{stage}: done: {} steps, {} tokens in {} ({}/s); checkpoint {}",
        step,
        format_count(tokens_seen as f64),
        format_secs(train_secs),
        format_count(throughput),
        out.display()
    );
    Ok(meta)
}

/// Zeroes the gradients and accumulates the gradient of the mean loss over the trained
/// tokens of all `batches` (micro-batches of one optimizer step); returns that loss.
pub fn lm_backward(model: &Gpt, opt: &mut AdamW, batches: &[PackedBatch], trained: i64, device: Device) -> Result<f64> {
    opt.zero_grad();
    let mut loss_sum = 0.0;
    for b in batches {
        let b = b.to_device(device);
        let loss = lm_loss_sum(model, &b)? / trained.max(1) as f64;
        loss.backward();
        loss_sum += loss.double_value(&[]);
    }
    Ok(loss_sum)
}

/// `encyclopedia 2.31 (1.10 bpb) | chatter …`
pub fn summarize_eval(ev: &BTreeMap<String, Value>) -> String {
    ev.iter()
        .map(|(k, v)| {
            format!(
                "{k} {:.3} ({:.3} bpb)",
                v["loss"].as_f64().unwrap_or(f64::NAN),
                v["bpb"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}
