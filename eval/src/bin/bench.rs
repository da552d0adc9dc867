//! `bench`: how fast, against what, and how close to the machine's limit.
//!
//! Measures the machine's matmul peak, training throughput (tokens/s, MFU, peak memory) of
//! the default model and a larger preset, KV-cache sampling against full recomputation,
//! the data path, and the same training and sampling in the PyTorch reference
//! (`bench/reference.py`), serving under load with continuous batching against one request at a
//! time (`serve-bench`), side by side in one run, and writes a JSON results file.
//! Each measurement runs in its own process so peak memory is its own.
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use common::data::mix::{load_mix, ResolvedMix};
use common::data::sampler::{LmSampler, PackMode, SamplerOptions};
use common::device::{configure_threads, device_name, DeviceChoice};
use common::lm::lm_backward;
use common::model::{Gpt, GptConfig, Positions};
use common::optim::{AdamW, AdamWConfig};
use common::perf::matmul_gflops;
use common::sampling::{generate, SamplingConfig};
use common::tokenizer::Tok;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

#[path = "../ttq.rs"]
mod ttq;

/// Benchmark lib2expert against the machine's peak and a PyTorch reference.
///
/// Measures the machine's matmul peak; training throughput (tokens/s, MFU, peak memory) of the
/// default model and a larger preset; KV-cache sampling against full recomputation; the data
/// path; the same training and sampling in PyTorch (bench/reference.py); serving with
/// continuous batching against one request at a time (serve-bench); and time to quality (the
/// default pretraining to a fixed held-out bpb, ours against PyTorch). Writes a JSON results file.
///
/// Example: bench --out bench/results.json   (or: just bench)
#[derive(Parser, Debug)]
#[command(version, disable_help_subcommand = true)]
struct Args {
    #[command(subcommand)]
    one: Option<One>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto", global = true)]
    device: DeviceChoice,
    /// Results file.
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// Python with torch, for the reference.
    #[arg(long, default_value = ".venv/bin/python", global = true)]
    python: String,
    /// Also time torch.compile in the reference (slow to compile on CPU).
    #[arg(long, global = true)]
    compile: bool,
}

#[derive(Subcommand, Debug)]
enum One {
    /// (internal) one training measurement, printed as JSON.
    #[command(hide = true)]
    Train(TrainArgs),
    /// (internal) sampling measurements, printed as JSON.
    #[command(hide = true)]
    Sample {
        /// KV-cache sampling only (no full-recompute comparison): the paired rounds.
        #[arg(long)]
        cache_only: bool,
    },
    /// (internal) data path measurement, printed as JSON.
    #[command(hide = true)]
    Data,
    /// (internal) one rank of a data-parallel training measurement (under torchrun, or alone);
    /// rank 0 prints JSON.
    #[command(hide = true)]
    DistTrain(TrainArgs),
    /// Time to quality alone: ours (Muon and AdamW) and the PyTorch reference (AdamW; add
    /// --compile for torch.compile) pretraining the default model to the same held-out bpb;
    /// prints the JSON and the table rows (the full bench runs it too).
    Quality,
    /// (internal) writes the time-to-quality data into --dir; prints what the runs need.
    #[command(hide = true)]
    TtqData {
        #[arg(long)]
        dir: PathBuf,
    },
    /// (internal) one time-to-quality run of ours on data written by the bench, printed as JSON.
    #[command(hide = true)]
    Ttq {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        optimizer: String,
        #[arg(long, default_value_t = 10)]
        every: u64,
        /// Held-out bpb to reach (default: the bench's target).
        #[arg(long, default_value_t = ttq::TARGET_BPB)]
        target: f64,
    },
}

/// One training measurement: a model preset trained on batches of this shape.
#[derive(clap::Args, Debug)]
struct TrainArgs {
    #[arg(long)]
    preset: String,
    #[arg(long)]
    batch: i64,
    #[arg(long)]
    micro: i64,
    #[arg(long)]
    seq: i64,
    #[arg(long)]
    steps: usize,
    #[arg(long)]
    bf16: bool,
    /// Muon for the blocks' matrices (the LM stages' default), Newton–Schulz in bf16 with --bf16.
    #[arg(long)]
    muon: bool,
}

const VOCAB: i64 = 4096;

/// The median of some measurements (the upper one of an even count); `None` when there are none.
fn median(xs: &[f64]) -> Option<f64> {
    let mut r = xs.to_vec();
    r.sort_by(f64::total_cmp);
    r.get(r.len() / 2).copied()
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn tokenizer() -> Option<Tok> {
    Tok::load(std::path::Path::new("data/default/tokenizer.json")).ok()
}

/// The measured model of `t` (seeded), and AdamW over it with the training defaults.
fn bench_model(t: &TrainArgs, device: Device) -> Result<(GptConfig, nn::VarStore, Gpt, AdamW)> {
    let cfg = GptConfig::preset(&t.preset, VOCAB)?;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let mut model = Gpt::new(vs.root(), &cfg);
    if t.bf16 {
        // Mixed precision as in training (`precision = "bf16"`): fp32 masters, bf16 compute.
        model.set_compute_kind(Kind::BFloat16);
    }
    let opt = AdamW::new(
        &vs,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            muon: t.muon.then_some(common::optim::MuonConfig {
                lr_scale: 0.02 / 3e-3,
                momentum: 0.95,
                ns_steps: 5,
                ns_bf16: t.bf16,
            }),
        },
    );
    Ok((cfg, vs, model, opt))
}

fn one_train(t: &TrainArgs, device: Device) -> Result<Value> {
    let (cfg, vs, model, mut opt) = bench_model(t, device)?;
    let mut sampler = real_data(t.seq)?;
    // Two warm-up steps, then the measured ones.
    let mut times = Vec::with_capacity(t.steps);
    for i in 0..t.steps + 2 {
        let step = timed_step(&model, &mut opt, &vs, sampler.as_mut(), t, i, device)?;
        if i >= 2 {
            times.push(step);
        }
    }
    Ok(train_summary(t, &cfg, &times, sampler.is_some()))
}

/// One rank of data-parallel training on random tokens: each rank runs its share of the step's
/// micro-batches, then the gradients are summed across ranks (`common::dist`), clipped and
/// stepped. Also times the gradient all-reduce alone. Rank 0 returns the JSON, others `None`.
fn one_dist_train(t: &TrainArgs, device: Device) -> Result<Option<Value>> {
    let dist = common::dist::init(device)?;
    let (_, _vs, model, mut opt) = bench_model(t, device)?;
    let accum = (t.batch / t.micro) as usize;
    let batches: Vec<_> = (0..accum).map(|_| random_batch(t.micro, t.seq)).collect();
    let trained: i64 = batches.iter().map(|b| b.trained_tokens).sum();
    let mine: Vec<_> = batches
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % dist.world == dist.rank)
        .map(|(_, b)| b)
        .collect();
    let (mut steps, mut reduces) = (Vec::new(), Vec::new());
    for i in 0..t.steps + 2 {
        dist.barrier()?;
        let t0 = Instant::now();
        let loss = lm_backward(&model, &mut opt, &mine, trained, device)?;
        let t1 = Instant::now();
        dist.sum_grads(&opt.vars(), &[loss])?;
        let t2 = Instant::now();
        opt.clip_grad_norm(1.0);
        opt.step(1e-3);
        if i >= 2 {
            steps.push(t0.elapsed().as_secs_f64());
            reduces.push((t2 - t1).as_secs_f64());
        }
    }
    // The all-reduce alone, the ranks in step.
    let mut alone = Vec::new();
    for _ in 0..10 {
        dist.barrier()?;
        let t0 = Instant::now();
        dist.sum_grads(&opt.vars(), &[0.0])?;
        alone.push(t0.elapsed().as_secs_f64());
    }
    let grad_mb = opt.vars().iter().map(|v| v.numel() as f64 * 4.0).sum::<f64>() / 1e6;
    let step = median(&steps).context("no distributed step was timed")?;
    Ok(dist.is_main().then(|| {
        json!({
            "ranks": dist.world, "threads_per_rank": tch::get_num_threads(), "preset": t.preset,
            "batch": t.batch, "micro": t.micro, "seq": t.seq,
            "tok_per_s": (t.batch * t.seq) as f64 / step, "step_secs": step,
            "allreduce_in_step_secs": median(&reduces), "allreduce_secs": median(&alone), "grad_mb": grad_mb,
        })
    }))
}

/// Data-parallel scaling on this machine's CPU: one process with one thread against
/// `torchrun` with 2 ranks of one thread each (Gloo over loopback), the same global batch.
fn distributed_bench(python: &str) -> Value {
    let run = || -> Result<Value> {
        let exe = std::env::current_exe()?;
        let torchrun = std::path::Path::new(python).with_file_name("torchrun");
        if !torchrun.exists() {
            bail!("{} not found (just setup installs it)", torchrun.display());
        }
        let args = [
            "dist-train",
            "--preset",
            "default",
            "--batch",
            "32",
            "--micro",
            "16",
            "--seq",
            "256",
            "--steps",
            "5",
            "--device",
            "cpu",
        ];
        let parse = |o: std::process::Output, what: &str| -> Result<Value> {
            if !o.status.success() {
                bail!("{what}: {}", String::from_utf8_lossy(&o.stderr).trim());
            }
            let text = String::from_utf8_lossy(&o.stdout);
            let line = text
                .lines()
                .rev()
                .find(|l| l.starts_with('{'))
                .context("no result line")?;
            Ok(serde_json::from_str(line)?)
        };
        let one = parse(
            Command::new(&exe).args(args).env("L2E_THREADS", "1").output()?,
            "1 rank",
        )?;
        let two = parse(
            Command::new(&torchrun)
                .args(["--standalone", "--nproc-per-node", "2", "--no-python"])
                .arg(&exe)
                .args(args)
                .env("OMP_NUM_THREADS", "1")
                .env("L2E_PYTHON", python)
                .output()?,
            "2 ranks under torchrun",
        )?;
        let eff = two["tok_per_s"].as_f64().unwrap_or(0.0) / (2.0 * one["tok_per_s"].as_f64().unwrap_or(f64::NAN));
        Ok(json!({"one_rank": one, "two_ranks": two, "scaling_efficiency": eff,
                  "allreduce_share_of_step": two["allreduce_in_step_secs"].as_f64().unwrap_or(0.0) / two["step_secs"].as_f64().unwrap_or(f64::NAN)}))
    };
    run().unwrap_or_else(|e| json!({"error": format!("{e:#}")}))
}

/// The training stream of the default world when it exists (so the data path is part of the
/// step); `None` otherwise (random tokens).
fn real_data(seq: i64) -> Result<Option<LmSampler>> {
    match (
        tokenizer(),
        load_mix(std::path::Path::new("configs/mixes/pretrain.toml"), None),
    ) {
        (Some(tok), Ok(mix)) if tok.vocab_size() as i64 <= VOCAB => Ok(Some(pretrain_stream(&mix, &tok, seq, 0)?)),
        _ => Ok(None),
    }
}

/// Pretraining's sampler over `mix`: documents streamed into rows of `seq` tokens, shuffled
/// with `seed`.
fn pretrain_stream(mix: &ResolvedMix, tok: &Tok, seq: i64, seed: u64) -> Result<LmSampler> {
    LmSampler::new(
        mix,
        tok,
        SamplerOptions {
            seq_len: seq as usize,
            mode: PackMode::Stream,
            assistant_only: false,
            seed,
            shuffle: true,
            overlong: Default::default(),
        },
        None,
    )
}

/// A batch of random tokens.
fn random_batch(micro: i64, seq: i64) -> common::data::sampler::PackedBatch {
    let t = Tensor::randint(VOCAB, [micro, seq + 1], (Kind::Int64, Device::Cpu));
    common::data::sampler::PackedBatch {
        input: t.narrow(1, 0, seq),
        // Contiguous: the loss flattens the targets with a view.
        target: t.narrow(1, 1, seq).contiguous(),
        positions: None,
        mask: None,
        trained_tokens: micro * seq,
        per_source: vec![],
        trained_bytes: 0,
    }
}

/// Seconds of each phase of one training step.
struct StepTime {
    data: f64,
    forward_backward: f64,
    clip: f64,
    optimizer: f64,
    /// The whole step, bookkeeping included.
    total: f64,
}

/// One training step as the real loop runs it (draw the micro-batches, forward and backward,
/// clip, step, a metrics line), each phase timed (on a GPU, after a synchronisation).
fn timed_step(
    model: &Gpt,
    opt: &mut AdamW,
    vs: &nn::VarStore,
    sampler: Option<&mut LmSampler>,
    t: &TrainArgs,
    i: usize,
    device: Device,
) -> Result<StepTime> {
    let t0 = Instant::now();
    let batches = match sampler {
        Some(s) => (0..t.batch / t.micro)
            .map(|_| s.next_batch(t.micro as usize))
            .collect::<Result<Vec<_>>>()?,
        None => (0..t.batch / t.micro).map(|_| random_batch(t.micro, t.seq)).collect(),
    };
    let t1 = Instant::now();
    let trained: i64 = batches.iter().map(|b| b.trained_tokens).sum();
    let sync = || {
        if device != Device::Cpu {
            let _ = vs
                .variables()
                .values()
                .next()
                .map(|v| v.sum(Kind::Float).double_value(&[]));
        }
    };
    let loss = lm_backward(model, opt, &batches, trained, device)?;
    sync();
    let t_fb = Instant::now();
    let _norm = opt.clip_grad_norm(1.0);
    sync();
    let t_clip = Instant::now();
    opt.step(1e-3);
    sync();
    let t2 = Instant::now();
    // Bookkeeping of the real loop: a metrics line as JSON.
    let _line = json!({"step": i, "loss": loss}).to_string();
    let t3 = Instant::now();
    Ok(StepTime {
        data: (t1 - t0).as_secs_f64(),
        forward_backward: (t_fb - t1).as_secs_f64(),
        clip: (t_clip - t_fb).as_secs_f64(),
        optimizer: (t2 - t_clip).as_secs_f64(),
        total: (t3 - t0).as_secs_f64(),
    })
}

/// The measurement as JSON: median step throughput, median phases, the data path's share.
fn train_summary(t: &TrainArgs, cfg: &GptConfig, times: &[StepTime], real_data: bool) -> Value {
    let med = |f: &dyn Fn(&StepTime) -> f64| {
        let mut v: Vec<f64> = times.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Median step time: robust to a step slowed by another process on a shared machine.
    let tps = (t.batch * t.seq) as f64 / med(&|s| s.total);
    let data_s: f64 = times.iter().map(|s| s.data).sum();
    let compute_s: f64 = times.iter().map(|s| s.forward_backward + s.clip + s.optimizer).sum();
    let total_s: f64 = times.iter().map(|s| s.total).sum();
    let phase_secs = json!({"forward_backward": med(&|s| s.forward_backward), "clip": med(&|s| s.clip), "optimizer": med(&|s| s.optimizer)});
    json!({
        "preset": t.preset, "params": cfg.num_params(), "matmul_params": cfg.matmul_params(), "bf16": t.bf16, "muon": t.muon,
        "batch": t.batch, "micro_batch": t.micro, "seq_len": t.seq, "tok_per_s": tps,
        "flops_per_token": cfg.train_flops_per_token(t.seq), "peak_rss_mb": peak_rss_mb(),
        "data_fraction": data_s / total_s, "outside_libtorch_fraction": (total_s - compute_s) / total_s,
        "real_data": real_data, "phase_secs": phase_secs,
    })
}

fn one_sample(device: Device, cache_only: bool) -> Result<Value> {
    let cfg = GptConfig::preset("default", VOCAB)?;
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = Gpt::new(vs.root(), &cfg);
    let (prompt, new) = (32usize, 64i64);
    let g = SamplingConfig::greedy(new);
    let mut out = serde_json::Map::new();
    for b in [1usize, 8, 64] {
        let prompts: Vec<Vec<u32>> = (0..b)
            .map(|r| (0..prompt).map(|i| ((i * 7 + r) % 4000) as u32 + 10).collect())
            .collect();
        let _ = generate(&model, &prompts, &g, &[], 0, device)?; // warm-up
                                                                 // Best of three: the machine is shared and noisy; the reference does the same.
        let mut best = 0.0f64;
        for _ in 0..3 {
            best = best.max(generate(&model, &prompts, &g, &[], 0, device)?.tokens_per_sec);
        }
        out.insert(format!("cache_b{b}"), json!(best));
    }
    if cache_only {
        return Ok(Value::Object(out));
    }
    // Without a cache: recompute the whole sequence for every new token (batch 8).
    let _guard = tch::no_grad_guard();
    let b = 8i64;
    let mut seq = Tensor::randint(4000, [b, prompt as i64], (Kind::Int64, device));
    let t0 = Instant::now();
    for _ in 0..new {
        let logits = model.forward(&seq, &Positions::CAUSAL, None);
        let next = logits.select(1, -1).argmax(-1, true);
        seq = Tensor::cat(&[seq, next], 1);
    }
    let _ = seq.sum(Kind::Int64).int64_value(&[]);
    out.insert(
        "no_cache_b8".into(),
        json!((b * new) as f64 / t0.elapsed().as_secs_f64()),
    );
    Ok(Value::Object(out))
}

fn one_data() -> Result<Value> {
    let tok = tokenizer().context("data/default/tokenizer.json is missing: run `just datasets` first")?;
    let mix = load_mix(std::path::Path::new("configs/mixes/pretrain.toml"), None)?;
    let t0 = Instant::now();
    let mut s = pretrain_stream(&mix, &tok, 256, 0)?;
    let mut tokens = 0i64;
    while tokens < 1_000_000 {
        tokens += s.next_batch(32)?.trained_tokens;
    }
    Ok(json!({"tok_per_s": tokens as f64 / t0.elapsed().as_secs_f64(), "tokens": tokens}))
}

fn sub(args: &[&str], device: DeviceChoice) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let o = Command::new(exe)
        .args(args)
        .args(["--device", &device.to_string()])
        .output()?;
    if !o.status.success() {
        bail!(
            "bench {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&o.stdout)?)
}

/// Serving under load (`serve-bench`, built beside this binary): continuous batching against
/// one request at a time, back to back.
fn serve_bench(device: DeviceChoice) -> Value {
    let exe = match std::env::current_exe() {
        Ok(e) => e.with_file_name("serve-bench"),
        Err(e) => return json!({"error": e.to_string()}),
    };
    let o = Command::new(&exe)
        .args(["--json", "--device", &device.to_string()])
        .output();
    match o {
        Ok(o) if o.status.success() => {
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| json!({"error": e.to_string()}))
        }
        Ok(o) => json!({"error": String::from_utf8_lossy(&o.stderr).trim().to_string()}),
        Err(e) => json!({"error": format!("{}: {e}", exe.display())}),
    }
}

fn run_reference(python: &str, cfg: &GptConfig, extra: Value) -> Result<Value> {
    let mut c = serde_json::to_value(cfg)?;
    if let (Some(m), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    // The reference runs under the allocator settings our binaries set for themselves
    // (`hostmem`), so the comparison is of the training code, not of malloc's defaults.
    let o = Command::new(python)
        .arg("bench/reference.py")
        .arg(c.to_string())
        .env("GLIBC_TUNABLES", hostmem::GLIBC_TUNABLES)
        .output()
        .with_context(|| format!("running {python} bench/reference.py"))?;
    if !o.status.success() {
        bail!(
            "PyTorch reference failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&o.stdout)?)
}

/// PyTorch eager training tokens/s of the default model alone (no sampling, no compile).
fn reference_train(python: &str, cfg: &GptConfig, threads: usize, steps: usize) -> Result<Option<f64>> {
    let r = run_reference(
        python,
        cfg,
        json!({"threads": threads, "batch_size": 32, "micro_batch_size": 16, "seq_len": 256, "steps": steps,
               "compile": false, "sample": false}),
    )?;
    Ok(r["train_tok_per_s"].as_f64())
}

fn run_all(a: &Args) -> Result<()> {
    let threads = configure_threads();
    let device = a.device.resolve()?;
    let t_all = Instant::now();
    let cpu = device == Device::Cpu;
    let peaks = Peaks::measure(device, threads);
    let dflt = default_train(cpu);
    let ours = measure_ours(a, &dflt, cpu)?;
    let cfg = GptConfig::preset("default", VOCAB)?;
    let reference = if cpu {
        run_reference(
            &a.python,
            &cfg,
            json!({"threads": threads, "batch_size": 32, "micro_batch_size": 16, "seq_len": 256, "steps": 9,
                   "compile": a.compile, "sample": true, "prompt_len": 32, "new_tokens": 64, "sample_batches": [1, 8, 64]}),
        )
        .unwrap_or_else(|e| json!({"error": e.to_string()}))
    } else {
        json!({"skipped": "the reference runs on the CPU only"})
    };
    let paired = paired_rounds(a, &cfg, threads, &dflt, &reference)?;
    eprintln!("bench: serving under load (continuous batching vs one request at a time)");
    let serving = serve_bench(a.device);
    let distributed = if cpu {
        eprintln!("bench: data-parallel training, 1 rank against 2 under torchrun (Gloo, one thread each)");
        distributed_bench(&a.python)
    } else {
        json!({"skipped": "measured on the CPU (Gloo); NCCL across GPUs needs a machine with several"})
    };
    let machine = Machine {
        device: device_name(device),
        threads,
        peaks,
    };
    let quality = time_to_quality(a, threads, cpu);
    let mut results = results_json(&machine, &ours, &reference, &paired, serving, t_all);
    results["distributed"] = distributed;
    results["time_to_quality"] = quality;
    if let Some(p) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", a.out.display()))?;
    print_table(&results, cpu);
    eprintln!(
        "bench: results in {} ({:.0}s)",
        a.out.display(),
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Time to quality: ours (Muon, the default, and AdamW) against the PyTorch reference's AdamW
/// (eager; `torch.compile` with `--compile`) reaching the same held-out bpb from the same
/// weights on the same batches (see `ttq.rs`).
fn time_to_quality(a: &Args, threads: usize, cpu: bool) -> Value {
    let dir = std::env::temp_dir().join(format!("lib2expert-ttq-{}", std::process::id()));
    let run = || -> Result<Value> {
        eprintln!(
            "bench: time to quality: pretraining the default model to {} held-out bpb (at most {} steps)",
            ttq::TARGET_BPB,
            ttq::STEPS
        );
        let mut data = ttq::write_data(&dir)?;
        let d = dir.to_string_lossy().to_string();
        let ours = |opt: &str| {
            sub(&["ttq", "--dir", &d, "--optimizer", opt, "--every", "10"], a.device)
                .unwrap_or_else(|e| json!({"error": format!("{e:#}")}))
        };
        let muon = ours("muon");
        let adamw = ours("adamw");
        let mut reference = |compile: bool| -> Value {
            if !cpu {
                return json!({"skipped": "the reference runs on the CPU only"});
            }
            data["ttq"] = json!(true);
            data["dir"] = json!(d);
            data["every"] = json!(10);
            data["threads"] = json!(threads);
            data["compile"] = json!(compile);
            let cfg = GptConfig::preset("default", VOCAB).expect("preset");
            run_reference(&a.python, &cfg, data.clone()).unwrap_or_else(|e| json!({"error": format!("{e:#}")}))
        };
        let eager = reference(false);
        // Both sides start from the same weights: their first held-out figure must agree.
        let start = |v: &Value| v["curve"][0][2].as_f64();
        if let (Some(o), Some(r)) = (start(&muon), start(&eager)) {
            if (o - r).abs() > 1e-3 * o.abs() {
                bail!("the reference model is not ours at step 0 (held-out {r:.4} bpb against our {o:.4}): bench/reference.py's architecture or weight mapping drifted");
            }
        }
        let compiled = if a.compile {
            reference(true)
        } else {
            json!({"skipped": "run with --compile"})
        };
        let secs = |v: &Value| v["secs"].as_f64().filter(|_| v["reached"].as_bool() == Some(true));
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => json!(x / y),
            _ => Value::Null,
        };
        Ok(json!({
            "target_bpb": ttq::TARGET_BPB, "max_steps": ttq::STEPS,
            "ours_muon": muon, "ours_adamw": adamw, "pytorch_adamw_eager": eager, "pytorch_adamw_compiled": compiled,
            "pytorch_eager_over_ours_muon": ratio(secs(&eager), secs(&muon)),
            "pytorch_eager_over_ours_adamw": ratio(secs(&eager), secs(&adamw)),
            "pytorch_compiled_over_ours_muon": ratio(secs(&compiled), secs(&muon)),
            "ours_adamw_over_ours_muon": ratio(secs(&adamw), secs(&muon)),
        }))
    };
    let out = run().unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The machine's measured matmul peaks (GFLOP/s), and the one MFU is measured against.
struct Peaks {
    fp32: f64,
    bf16: f64,
    used: f64,
}

impl Peaks {
    fn measure(device: Device, threads: usize) -> Self {
        let cpu = device == Device::Cpu;
        let n = if cpu { 1024 } else { 8192 };
        let fp32 = matmul_gflops(device, Kind::Float, n, 10);
        let bf16 = matmul_gflops(device, Kind::BFloat16, n, 10);
        eprintln!(
            "bench: matmul fp32 {fp32:.0} GFLOP/s, bf16 {bf16:.0} GFLOP/s on {} ({threads} threads)",
            device_name(device)
        );
        Peaks {
            fp32,
            bf16,
            used: if cpu { fp32 } else { bf16 },
        }
    }
}

/// The default model's training measurement (arguments of `bench train`).
fn default_train(cpu: bool) -> [&'static str; 11] {
    [
        "train",
        "--preset",
        "default",
        "--batch",
        "32",
        "--micro",
        "16",
        "--seq",
        "256",
        "--steps",
        if cpu { "9" } else { "20" },
    ]
}

/// This project's measurements, each in its own process.
struct Ours {
    default_fp32: Value,
    default_bf16: Value,
    d12_fp32: Value,
    sample: Value,
    data: Value,
}

fn measure_ours(a: &Args, dflt: &[&str], cpu: bool) -> Result<Ours> {
    let default_fp32 = sub(dflt, a.device)?;
    eprintln!(
        "bench: default fp32 {:.0} tok/s",
        default_fp32["tok_per_s"].as_f64().unwrap_or(0.0)
    );
    let default_bf16 = sub(&[dflt, &["--bf16"]].concat(), a.device)?;
    let (b_big, s_big) = if cpu { (4, 256) } else { (32, 1024) };
    let d12_fp32 = sub(
        &[
            "train",
            "--preset",
            "d12",
            "--batch",
            &b_big.to_string(),
            "--micro",
            &b_big.to_string(),
            "--seq",
            &s_big.to_string(),
            "--steps",
            "3",
        ],
        a.device,
    )?;
    eprintln!("bench: d12 {:.0} tok/s", d12_fp32["tok_per_s"].as_f64().unwrap_or(0.0));
    Ok(Ours {
        default_fp32,
        default_bf16,
        d12_fp32,
        sample: sub(&["sample"], a.device)?,
        data: sub(&["data"], a.device).unwrap_or_else(|e| json!({"error": e.to_string()})),
    })
}

/// Where the bench ran.
struct Machine {
    device: String,
    threads: usize,
    peaks: Peaks,
}

/// Everything measured, with the ratios the README quotes; `t_all`: when the bench started.
fn results_json(m: &Machine, o: &Ours, reference: &Value, paired: &Paired, serving: Value, t_all: Instant) -> Value {
    let peaks = &m.peaks;
    let mfu = |r: &Value, p: f64| {
        r["tok_per_s"].as_f64().unwrap_or(0.0) * r["flops_per_token"].as_f64().unwrap_or(0.0) / (p * 1e9)
    };
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => json!(x / y),
        _ => Value::Null,
    };
    let (ours, ours_bf16, big, sample, data) = (&o.default_fp32, &o.default_bf16, &o.d12_fp32, &o.sample, &o.data);
    let (rounds, sample_rounds) = (&paired.0, &paired.1);
    let sample_paired: Vec<Option<f64>> = sample_rounds.iter().map(|r| median(r)).collect();
    let host = common::provenance::Machine::detect();
    json!({
        "date": common::provenance::utc_now().get(..10),
        "device": m.device, "threads": m.threads,
        "cpu": host.cpu, "bf16_matmul": host.bf16_matmul, "cores": host.cores, "gpu": host.gpu,
        "matmul_gflops": {"fp32": peaks.fp32, "bf16": peaks.bf16},
        "mfu_formula": "MFU = tokens/s x (6 N + 6 L T d) / measured peak; N = parameters in matrix products (blocks + output head, not the embedding lookup), L layers, T sequence length, d width",
        "train": {
            "default_fp32": ours, "default_bf16": ours_bf16, "d12_fp32": big,
            "mfu": {"default_fp32": mfu(ours, peaks.fp32), "default_bf16_vs_bf16_peak": mfu(ours_bf16, peaks.bf16), "d12_fp32": mfu(big, peaks.fp32)},
        },
        "sampling": sample,
        "data": data,
        "serving": serving,
        "reference": reference,
        "ratios": {
            "train_ours_over_pytorch": ratio(ours["tok_per_s"].as_f64(), reference["train_tok_per_s"].as_f64()),
            "train_ours_over_pytorch_paired_median": median(rounds), "train_paired_rounds": rounds,
            "train_ours_over_pytorch_compiled": ratio(ours["tok_per_s"].as_f64(), reference["train_tok_per_s_compiled"].as_f64()),
            "sample_b1_ours_over_pytorch": ratio(sample["cache_b1"].as_f64(), reference["sample_tok_per_s"]["1"].as_f64()),
            "sample_b8_ours_over_pytorch": ratio(sample["cache_b8"].as_f64(), reference["sample_tok_per_s"]["8"].as_f64()),
            "sample_b64_ours_over_pytorch": ratio(sample["cache_b64"].as_f64(), reference["sample_tok_per_s"]["64"].as_f64()),
            "sample_paired_median": {"1": sample_paired[0], "8": sample_paired[1], "64": sample_paired[2]},
            "sample_paired_rounds": {"1": sample_rounds[0], "8": sample_rounds[1], "64": sample_rounds[2]},
            "cache_over_no_cache_b8": ratio(sample["cache_b8"].as_f64(), sample["no_cache_b8"].as_f64()),
            "data_path_over_training": ratio(data["tok_per_s"].as_f64(), ours["tok_per_s"].as_f64()),
            "bf16_over_fp32_training": ratio(ours_bf16["tok_per_s"].as_f64(), ours["tok_per_s"].as_f64()),
            "serve_batched_over_one_at_a_time": serving["batched_over_one_at_a_time"],
        },
        "peak_gflops_used": peaks.used,
        "bench_secs": t_all.elapsed().as_secs_f64(),
    })
}

/// Paired rounds: ours/PyTorch ratios for training, and for sampling at batch 1, 8 and 64.
type Paired = (Vec<f64>, Vec<Vec<f64>>);

/// Paired rounds, on the CPU when the reference ran: ours then PyTorch, back to back, three
/// times, for training and for KV-cache sampling at batch 1, 8 and 64 (ratios ours/PyTorch).
fn paired_rounds(a: &Args, cfg: &GptConfig, threads: usize, dflt: &[&str], reference: &Value) -> Result<Paired> {
    let cpu = a.device.resolve()? == Device::Cpu;
    // Paired rounds: ours then PyTorch, back to back, three times; the median of the three
    // ratios is robust to a slow spell of this shared machine hitting one side only.
    let mut rounds: Vec<f64> = Vec::new();
    if cpu && reference["train_tok_per_s"].is_number() {
        let short: Vec<&str> = dflt.iter().map(|s| if *s == "9" { "5" } else { s }).collect();
        for _ in 0..3 {
            let o = sub(&short, a.device)?;
            let t = reference_train(&a.python, cfg, threads, 5)?;
            if let (Some(o), Some(t)) = (o["tok_per_s"].as_f64(), t) {
                rounds.push(o / t);
            }
        }
        eprintln!("bench: paired rounds ours/PyTorch {rounds:.3?}");
    }
    // The same for KV-cache sampling at each batch size: ours then PyTorch, three times.
    let batches = ["1", "8", "64"];
    let mut sample_rounds: Vec<Vec<f64>> = vec![Vec::new(); batches.len()];
    if cpu && reference["sample_tok_per_s"].is_object() {
        for _ in 0..3 {
            let o = sub(&["sample", "--cache-only"], a.device)?;
            let t = run_reference(
                &a.python,
                cfg,
                json!({"threads": threads, "train": false, "sample": true, "prompt_len": 32, "new_tokens": 64,
                       "sample_batches": [1, 8, 64]}),
            )?;
            for (i, b) in batches.iter().enumerate() {
                if let (Some(o), Some(t)) = (o[format!("cache_b{b}")].as_f64(), t["sample_tok_per_s"][b].as_f64()) {
                    sample_rounds[i].push(o / t);
                }
            }
        }
        eprintln!("bench: paired sampling rounds ours/PyTorch (batch 1, 8, 64) {sample_rounds:.3?}");
    }
    Ok((rounds, sample_rounds))
}

/// The results as a Markdown table (what the README quotes).
fn print_table(results: &Value, cpu: bool) {
    let (b_big, s_big) = if cpu { (4, 256) } else { (32, 1024) };
    let train = &results["train"];
    let (ours, ours_bf16, big) = (&train["default_fp32"], &train["default_bf16"], &train["d12_fp32"]);
    let (reference, sample, data) = (&results["reference"], &results["sampling"], &results["data"]);
    let serving = &results["serving"];
    let fp32 = results["matmul_gflops"]["fp32"].as_f64().unwrap_or(f64::NAN);
    let bf16 = results["matmul_gflops"]["bf16"].as_f64().unwrap_or(f64::NAN);
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => json!(x / y),
        _ => Value::Null,
    };
    let floats = |v: &Value| -> Vec<f64> { v.as_array().into_iter().flatten().filter_map(Value::as_f64).collect() };
    let r = &results["ratios"];
    let paired = r["train_ours_over_pytorch_paired_median"].as_f64();
    let rounds = floats(&r["train_paired_rounds"]);
    let batches = ["1", "8", "64"];
    let sample_paired: Vec<Option<f64>> = batches.iter().map(|b| r["sample_paired_median"][*b].as_f64()).collect();
    let sample_rounds: Vec<Vec<f64>> = batches.iter().map(|b| floats(&r["sample_paired_rounds"][*b])).collect();
    let mfu_of = |k: &str| train["mfu"][k].as_f64().unwrap_or(f64::NAN);
    let fmt = |v: &Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.2}"));
    let tf = |v: &Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.0}"));
    println!("| measure | lib2expert | PyTorch eager | ratio |\n|---|---|---|---|");
    println!("| matmul fp32 / bf16 (GFLOP/s) | {fp32:.0} / {bf16:.0} | | |");
    println!(
        "| train default fp32 (tok/s) | {} (MFU {:.0}%) | {} | {} |",
        tf(&ours["tok_per_s"]),
        100.0 * mfu_of("default_fp32"),
        tf(&reference["train_tok_per_s"]),
        fmt(&r["train_ours_over_pytorch"])
    );
    if reference["train_tok_per_s_compiled"].is_number() {
        println!(
            "| train default fp32, torch.compile (tok/s) | {} | {} | {} |",
            tf(&ours["tok_per_s"]),
            tf(&reference["train_tok_per_s_compiled"]),
            fmt(&r["train_ours_over_pytorch_compiled"])
        );
    }
    if let Some(p) = paired {
        println!(
            "| train default fp32, 3 paired rounds (median ratio; rounds {}) | | | {p:.2} |",
            rounds.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
        );
    }
    for (name, key) in [
        ("forward + backward", "forward_backward"),
        ("grad-norm clip", "clip"),
        ("AdamW step", "optimizer"),
    ] {
        let o = ours["phase_secs"][key].as_f64();
        let t = reference["phase_secs"][key].as_f64();
        println!(
            "| — of which {name} (ms per step, median) | {} | {} | {} |",
            o.map_or("n/a".into(), |x| format!("{:.1}", 1e3 * x)),
            t.map_or("n/a".into(), |x| format!("{:.1}", 1e3 * x)),
            // Time ratio PyTorch / ours: above 1 means this phase is faster here.
            fmt(&ratio(t, o))
        );
    }
    println!(
        "| train default bf16 (tok/s) | {} (x{} of fp32) | | |",
        tf(&ours_bf16["tok_per_s"]),
        fmt(&r["bf16_over_fp32_training"])
    );
    println!(
        "| train d12 fp32 (tok/s, batch {b_big}x{s_big}) | {} (MFU {:.0}%) | | |",
        tf(&big["tok_per_s"]),
        100.0 * mfu_of("d12_fp32")
    );
    println!(
        "| peak memory default / d12 (MB) | {} / {} | | |",
        tf(&ours["peak_rss_mb"]),
        tf(&big["peak_rss_mb"])
    );
    for (i, b) in batches.iter().enumerate() {
        println!(
            "| sampling, KV cache, batch {b} (tok/s) | {} | {} | {} |",
            tf(&sample[format!("cache_b{b}")]),
            tf(&reference["sample_tok_per_s"][*b]),
            fmt(&r[format!("sample_b{b}_ours_over_pytorch")])
        );
        if let Some(p) = sample_paired[i] {
            println!(
                "| sampling batch {b}, 3 paired rounds (median ratio; rounds {}) | | | {p:.2} |",
                sample_rounds[i]
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    println!(
        "| sampling without cache, batch 8 (tok/s) | {} | | cache is x{} |",
        tf(&sample["no_cache_b8"]),
        fmt(&r["cache_over_no_cache_b8"])
    );
    println!(
        "| data path: Parquet + tokenize + pack (tok/s) | {} | | x{} of training |",
        tf(&data["tok_per_s"]),
        fmt(&r["data_path_over_training"])
    );
    println!(
        "| serve, {} clients x {} requests: continuous batching / one at a time (tok/s) | {} / {} | | x{} (lost {}, wrong {}) |",
        serving["clients"],
        serving["per_client"],
        tf(&serving["continuous_batching"]["tok_per_s"]),
        tf(&serving["one_at_a_time"]["tok_per_s"]),
        fmt(&r["serve_batched_over_one_at_a_time"]),
        serving["lost"],
        serving["mismatched_replies"]
    );
    println!(
        "| time outside libtorch per step (data + bookkeeping) | {:.2}% | | |",
        100.0 * ours["outside_libtorch_fraction"].as_f64().unwrap_or(f64::NAN)
    );
    print_quality(&results["time_to_quality"]);
    let dp = &results["distributed"];
    if dp["two_ranks"].is_object() {
        println!(
            "| data-parallel, default fp32, 1 thread per rank: 1 rank / 2 ranks (tok/s) | {} / {} | | scaling efficiency {:.0}% |",
            tf(&dp["one_rank"]["tok_per_s"]),
            tf(&dp["two_ranks"]["tok_per_s"]),
            100.0 * dp["scaling_efficiency"].as_f64().unwrap_or(f64::NAN)
        );
        println!(
            "| — gradient all-reduce, {:.1} MB over Gloo (ms; share of the 2-rank step) | {:.1} ({:.1}%) | | |",
            dp["two_ranks"]["grad_mb"].as_f64().unwrap_or(f64::NAN),
            1e3 * dp["two_ranks"]["allreduce_secs"].as_f64().unwrap_or(f64::NAN),
            100.0 * dp["allreduce_share_of_step"].as_f64().unwrap_or(f64::NAN)
        );
    } else {
        println!("| data-parallel | {} | | |", dp);
    }
}

/// The time-to-quality rows of the results table.
fn print_quality(q: &Value) {
    let fmt = |v: &Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.2}"));
    let row = |name: &str, v: &Value| {
        let cell = if v["reached"].as_bool() == Some(true) {
            format!(
                "{:.0} s ({} steps, median step {:.2} s)",
                v["secs"].as_f64().unwrap_or(f64::NAN),
                v["steps"],
                v["median_step_secs"].as_f64().unwrap_or(f64::NAN)
            )
        } else if v["reached"].as_bool() == Some(false) {
            format!("not reached in {} steps", q["max_steps"])
        } else {
            v.get("error")
                .or(v.get("skipped"))
                .map_or("n/a".into(), |e| e.to_string())
        };
        println!("| time to {} held-out bpb, {name} | {cell} | | |", q["target_bpb"]);
    };
    row("ours, Muon (the default)", &q["ours_muon"]);
    row("ours, AdamW", &q["ours_adamw"]);
    row("PyTorch eager, AdamW", &q["pytorch_adamw_eager"]);
    row("PyTorch torch.compile, AdamW", &q["pytorch_adamw_compiled"]);
    println!(
        "| — time to quality, PyTorch eager AdamW / ours Muon | | | {} |",
        fmt(&q["pytorch_eager_over_ours_muon"])
    );
    println!(
        "| — time to quality, PyTorch eager AdamW / ours AdamW (implementation alone) | | | {} |",
        fmt(&q["pytorch_eager_over_ours_adamw"])
    );
    println!(
        "| — time to quality, PyTorch torch.compile AdamW / ours Muon | | | {} |",
        fmt(&q["pytorch_compiled_over_ours_muon"])
    );
}

fn main() -> ExitCode {
    let a = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| {
        configure_threads();
        let device = a.device.resolve()?;
        match &a.one {
            Some(One::Train(t)) => {
                println!("{}", one_train(t, device)?);
                Ok(())
            }
            Some(One::Sample { cache_only }) => {
                println!("{}", one_sample(device, *cache_only)?);
                Ok(())
            }
            Some(One::Data) => {
                println!("{}", one_data()?);
                Ok(())
            }
            Some(One::DistTrain(t)) => {
                if let Some(v) = one_dist_train(t, device)? {
                    println!("{v}");
                }
                Ok(())
            }
            Some(One::Ttq {
                dir,
                optimizer,
                every,
                target,
            }) => {
                let opt = match optimizer.as_str() {
                    "adamw" => common::config::Optimizer::Adamw,
                    "muon" => common::config::Optimizer::Muon,
                    other => bail!("--optimizer {other}: expected adamw or muon"),
                };
                println!("{}", ttq::run_ours(dir, opt, *every, *target, device)?);
                Ok(())
            }
            Some(One::TtqData { dir }) => {
                println!("{}", ttq::write_data(dir)?);
                Ok(())
            }
            Some(One::Quality) => {
                let threads = configure_threads();
                let q = time_to_quality(&a, threads, device == Device::Cpu);
                println!("{}", serde_json::to_string_pretty(&q)?);
                print_quality(&q);
                Ok(())
            }
            None => run_all(&a),
        }
    })
}
