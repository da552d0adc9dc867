//! The engine: one thread owns the model and runs a continuous batch over the KV cache.
//!
//! Requests arrive through a bounded channel. Between two decode steps the engine admits
//! waiting requests while the batch has free rows: their prompts are run together
//! (left-padded, as in `sampling::generate`) into a cache of their own, which is appended
//! below the running one ([`KvCache::append_rows`]: the shorter side is padded on the left).
//! Each row remembers the first cache column it holds; the decode step masks the columns
//! before it and gives every row its own position. Rows leave as soon as they finish (stop
//! token, stop string, token budget) or their client goes away ([`KvCache::select_rows`]),
//! and when the cache is full the columns no row holds any more are dropped
//! ([`KvCache::drop_left`]). libtorch runs on this thread only; the async handlers talk to it
//! through channels.
use crate::api::{ApiError, Sampling};
use crate::metrics::Metrics;
use anyhow::{bail, Context, Result};
use common::checkpoint;
use common::model::{Gpt, KvCache, Positions};
use common::sampling::SamplingConfig;
use common::tokenizer::Tok;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use tch::{Device, Kind, Tensor};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Checkpoint (ours or an imported Hugging Face directory).
    pub checkpoint: PathBuf,
    /// Where the model runs.
    pub device: Device,
    /// Most rows decoded together (1 = one request at a time).
    pub max_batch: usize,
    /// Most requests waiting for a row; beyond it, 429.
    pub queue: usize,
}

/// Why a choice ended (OpenAI's `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or stop string.
    Stop,
    /// The token budget (`max_tokens` or the context).
    Length,
}

impl Finish {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What the engine tells a request's handler.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// New text of choice `choice` (whole characters; text that may begin a stop string is held back).
    Text { choice: usize, text: String },
    /// Choice `choice` ended after sampling `tokens` tokens.
    Done {
        choice: usize,
        reason: Finish,
        tokens: usize,
    },
    /// The engine could not run the request.
    Failed(String),
}

/// One request for the engine.
pub struct Job {
    /// Prompt ids (non-empty, shorter than the context).
    pub prompt: Vec<u32>,
    /// Checked sampling settings.
    pub sampling: Sampling,
    /// Most tokens per choice (already capped by the context).
    pub budget: usize,
    /// Where events go; the handler dropping its end cancels the request.
    pub events: UnboundedSender<Event>,
}

/// The async side's handle: submits jobs, knows the model's tokenizer and context.
#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Job>,
    queue: usize,
    alive: Arc<AtomicBool>,
    /// The model's tokenizer (prompts are rendered and counted on the async side).
    pub tok: Tok,
    /// The model's context in tokens.
    pub context: usize,
    /// Counters shared with the HTTP side.
    pub metrics: Arc<Metrics>,
}

impl EngineHandle {
    /// Queues a job, or answers 429 when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => ApiError::busy(self.queue),
                    TrySendError::Disconnected(_) => ApiError::server("the model engine has stopped").with_status(503),
                })
            }
        }
    }

    /// Whether the engine thread still runs.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// A job for `prompt` and the channel its events arrive on.
    pub fn job(&self, prompt: Vec<u32>, sampling: Sampling, budget: usize) -> (Job, UnboundedReceiver<Event>) {
        let (events, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Job {
                prompt,
                sampling,
                budget,
                events,
            },
            rx,
        )
    }
}

/// Starts the engine thread: loads the checkpoint there and returns once it is ready.
pub fn spawn(opts: EngineOptions, metrics: Arc<Metrics>) -> Result<EngineHandle> {
    if opts.max_batch == 0 || opts.queue == 0 {
        bail!("--max-batch and --queue must be at least 1");
    }
    let (tx, rx) = sync_channel::<Job>(opts.queue);
    let (ready_tx, ready_rx) = sync_channel::<Result<(Tok, usize)>>(1);
    let alive = Arc::new(AtomicBool::new(true));
    let (alive2, metrics2, opts2) = (alive.clone(), metrics.clone(), opts.clone());
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let loaded = checkpoint::load_model(&opts2.checkpoint, opts2.device);
            match loaded {
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
                Ok((_vs, model, loaded)) => {
                    let context = model.config().max_seq_len as usize;
                    let _ = ready_tx.send(Ok((loaded.tok.clone(), context)));
                    Engine::new(model, loaded.tok, opts2, metrics2).run(rx);
                }
            }
            alive2.store(false, Ordering::Relaxed);
        })
        .context("starting the engine thread")?;
    let (tok, context) = ready_rx
        .recv()
        .context("the engine thread ended while loading")?
        .with_context(|| format!("loading {}", opts.checkpoint.display()))?;
    Ok(EngineHandle {
        tx,
        queue: opts.queue,
        alive,
        tok,
        context,
        metrics,
    })
}

/// A request admitted to the batch; its choices are rows.
struct Request {
    events: UnboundedSender<Event>,
    stop: Vec<String>,
}

/// One choice being generated.
struct Row {
    req: Arc<Request>,
    choice: usize,
    tokens: Vec<u32>,
    budget: usize,
    /// First cache column this row holds (the columns before it are padding).
    start: i64,
    /// Temperature and top-p; `None` = greedy.
    sampler: Option<(SamplingConfig, ChaCha8Rng)>,
    /// Bytes of text already sent.
    sent: usize,
}

struct Engine {
    model: Gpt,
    tok: Tok,
    device: Device,
    max_batch: usize,
    /// Cache positions: the context plus room so that dropping stale columns is rare.
    capacity: i64,
    metrics: Arc<Metrics>,
    rows: Vec<Row>,
    cache: Option<KvCache>,
    /// Logits `[rows, V]` of each row's next token.
    last: Option<Tensor>,
    /// A job taken from the queue that did not fit the batch yet.
    held: Option<Job>,
}

impl Engine {
    fn new(model: Gpt, tok: Tok, opts: EngineOptions, metrics: Arc<Metrics>) -> Self {
        let ctx = model.config().max_seq_len;
        Engine {
            model,
            tok,
            device: opts.device,
            max_batch: opts.max_batch,
            capacity: ctx + ctx / 2,
            metrics,
            rows: Vec::new(),
            cache: None,
            last: None,
            held: None,
        }
    }

    /// Admits, samples and steps until every handle is gone.
    fn run(mut self, rx: Receiver<Job>) {
        let _guard = tch::no_grad_guard();
        loop {
            let Some(joiners) = self.take_jobs(&rx) else {
                return;
            };
            let step = catch_unwind(AssertUnwindSafe(|| self.step(joiners)));
            let failure = match step {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(p) => Some(
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "libtorch panicked".into()),
                ),
            };
            if let Some(msg) = failure {
                // The batch's state is unknown: fail its requests and start afresh.
                eprintln!("serve: engine step failed: {msg}");
                for r in self.rows.drain(..) {
                    let _ = r.req.events.send(Event::Failed(msg.clone()));
                }
                self.cache = None;
                self.last = None;
            }
            self.metrics
                .running_rows
                .store(self.rows.len() as i64, Ordering::Relaxed);
        }
    }

    /// Jobs to admit now, blocking while idle; `None` when the channel is closed.
    fn take_jobs(&mut self, rx: &Receiver<Job>) -> Option<Vec<Job>> {
        let mut room = self.max_batch.saturating_sub(self.rows.len());
        let mut jobs = Vec::new();
        if let Some(j) = self.held.take() {
            if j.sampling.n <= room || self.rows.is_empty() {
                room = room.saturating_sub(j.sampling.n);
                jobs.push(j);
            } else {
                self.held = Some(j);
                return Some(jobs);
            }
        }
        while room > 0 {
            let job = if self.rows.is_empty() && jobs.is_empty() {
                rx.recv().ok()?
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.rows.is_empty() && jobs.is_empty() => return None,
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            if job.events.is_closed() {
                // The client left while queued: its rows are freed before they start.
                self.metrics
                    .cancelled_rows
                    .fetch_add(job.sampling.n as u64, Ordering::Relaxed);
                continue;
            }
            // A request with more choices than the batch has rows runs alone, in full.
            if job.sampling.n > room && !(self.rows.is_empty() && jobs.is_empty()) {
                self.held = Some(job);
                break;
            }
            room = room.saturating_sub(job.sampling.n);
            jobs.push(job);
        }
        Some(jobs)
    }

    /// Admits `joiners`, samples one token for every row, retires finished rows and runs
    /// the next decode step.
    fn step(&mut self, joiners: Vec<Job>) -> Result<()> {
        if !joiners.is_empty() {
            self.admit(joiners)?;
        }
        let Some(last) = self.last.take() else {
            return Ok(());
        };
        let picks = self.sample(&last)?;
        let mut keep = Vec::with_capacity(self.rows.len());
        for (j, &t) in picks.iter().enumerate() {
            if self.advance(j, t)? {
                keep.push(j as i64);
            }
        }
        if keep.len() < self.rows.len() {
            let mut alive = vec![false; self.rows.len()];
            keep.iter().for_each(|&j| alive[j as usize] = true);
            let mut it = alive.into_iter();
            self.rows.retain(|_| it.next().unwrap_or(false));
            if self.rows.is_empty() {
                self.cache = None;
                return Ok(());
            }
            if let Some(c) = self.cache.as_mut() {
                c.select_rows(&Tensor::from_slice(&keep).to_device(self.device));
            }
        }
        let next: Vec<i64> = keep.iter().map(|&j| picks[j as usize] as i64).collect();
        self.decode(&next)
    }

    /// Runs the prompts of `jobs` (left-padded together) and appends them to the batch.
    fn admit(&mut self, jobs: Vec<Job>) -> Result<()> {
        let p_len = jobs.iter().map(|j| j.prompt.len()).max().unwrap_or(0) as i64;
        if p_len == 0 || p_len >= self.model.config().max_seq_len {
            bail!("a prompt of {p_len} tokens does not fit the context");
        }
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut pads = Vec::new();
        let mut rows = Vec::new();
        for job in jobs {
            let s = &job.sampling;
            let req = Arc::new(Request {
                events: job.events,
                stop: s.stop.clone(),
            });
            self.metrics
                .prompt_tokens
                .fetch_add((job.prompt.len() * s.n) as u64, Ordering::Relaxed);
            let pad = p_len - job.prompt.len() as i64;
            for choice in 0..s.n {
                for i in 0..p_len {
                    ids.push(if i < pad {
                        self.tok.pad as i64
                    } else {
                        job.prompt[(i - pad) as usize] as i64
                    });
                    pos.push((i - pad).max(0));
                }
                pads.push(pad);
                let sampler = (s.temperature > 0.0).then(|| {
                    let mut rng = match s.seed {
                        Some(seed) => ChaCha8Rng::seed_from_u64(seed),
                        None => ChaCha8Rng::from_rng(&mut rand::rng()),
                    };
                    rng.set_stream(choice as u64);
                    let cfg = SamplingConfig {
                        temperature: s.temperature,
                        top_k: 0,
                        top_p: s.top_p,
                        max_new_tokens: 1,
                    };
                    (cfg, rng)
                });
                rows.push(Row {
                    req: req.clone(),
                    choice,
                    tokens: Vec::new(),
                    budget: job.budget,
                    start: pad,
                    sampler,
                    sent: 0,
                });
            }
        }
        let b = rows.len() as i64;
        let d = self.device;
        let ids = Tensor::from_slice(&ids).view([b, p_len]).to_device(d);
        let mut cache = self.model.new_cache(b, self.capacity);
        let logits = if pads.iter().any(|&p| p > 0) {
            let pos = Tensor::from_slice(&pos).view([b, p_len]).to_device(d);
            let pad_t = Tensor::from_slice(&pads).view([b, 1]).to_device(d);
            let key = Tensor::arange(p_len, (Kind::Int64, d)).view([1, p_len]);
            let valid = key.ge_tensor(&pad_t); // [B, P]
            let causal = key.le_tensor(&key.view([p_len, 1])); // [P, P]
            let eye = Tensor::eye(p_len, (Kind::Bool, d));
            // A padding query attends itself only, so no row of the softmax is empty.
            let mask = causal
                .unsqueeze(0)
                .logical_and(&valid.unsqueeze(1))
                .logical_or(&eye.unsqueeze(0))
                .unsqueeze(1);
            let p = Positions {
                ids: Some(&pos),
                mask: Some(&mask),
            };
            self.model.forward(&ids, &p, Some(&mut cache))
        } else {
            self.model.forward(&ids, &Positions::CAUSAL, Some(&mut cache))
        };
        let first = logits.select(1, p_len - 1).to_kind(Kind::Float);
        if let Some(running) = self.cache.as_mut() {
            let (old, new) = (running.len(), cache.len());
            let len = old.max(new);
            running.append_rows(&cache);
            self.rows.iter_mut().for_each(|r| r.start += len - old);
            rows.iter_mut().for_each(|r| r.start += len - new);
            self.last = Some(match self.last.take() {
                Some(l) => Tensor::cat(&[l, first], 0),
                None => first,
            });
        } else {
            self.cache = Some(cache);
            self.last = Some(first);
        }
        self.rows.extend(rows);
        Ok(())
    }

    /// The next token of every row: argmax for greedy rows, the row's own seeded generator
    /// over the temperature/top-p distribution for the others.
    fn sample(&mut self, last: &Tensor) -> Result<Vec<u32>> {
        let greedy: Vec<i64> = Vec::try_from(&last.argmax(-1, false).to_device(Device::Cpu))?;
        let mut picks: Vec<u32> = greedy.iter().map(|&t| t as u32).collect();
        for (j, row) in self.rows.iter_mut().enumerate() {
            if let Some((cfg, rng)) = row.sampler.as_mut() {
                let probs = cfg.log_probs(&last.narrow(0, j as i64, 1)).exp().to_device(Device::Cpu);
                let probs: Vec<f32> = Vec::try_from(&probs.view([-1]))?;
                let mut u = rng.random::<f32>() * probs.iter().sum::<f32>();
                let mut pick = probs.iter().rposition(|&p| p > 0.0).unwrap_or(0);
                for (t, &p) in probs.iter().enumerate() {
                    if u < p {
                        pick = t;
                        break;
                    }
                    u -= p;
                }
                picks[j] = pick as u32;
            }
        }
        Ok(picks)
    }

    /// Adds token `t` to row `j` and sends its new text; false when the row is finished.
    fn advance(&mut self, j: usize, t: u32) -> Result<bool> {
        let row = &mut self.rows[j];
        if row.req.events.is_closed() {
            self.metrics.cancelled_rows.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        self.metrics.completion_tokens.fetch_add(1, Ordering::Relaxed);
        let sampled = row.tokens.len() + 1;
        let mut finish = None;
        if self.tok.stops().contains(&t) {
            finish = Some(Finish::Stop);
        } else {
            row.tokens.push(t);
        }
        let mut text = self.tok.decode(&row.tokens)?;
        if let Some(at) = row.req.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(at);
            finish = Some(Finish::Stop);
        }
        if finish.is_none() && sampled >= row.budget {
            finish = Some(Finish::Length);
        }
        // Send whole characters only, and hold back a tail that may begin a stop string.
        let safe = if finish.is_some() {
            text.len()
        } else {
            let mut end = text.trim_end_matches('\u{FFFD}').len();
            for s in &row.req.stop {
                for k in (1..s.len()).rev() {
                    if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                        end = end.min(text.len() - k);
                        break;
                    }
                }
            }
            end
        };
        if safe > row.sent && text.is_char_boundary(row.sent) && text.is_char_boundary(safe) {
            let delta = text[row.sent..safe].to_string();
            row.sent = safe;
            let _ = row.req.events.send(Event::Text {
                choice: row.choice,
                text: delta,
            });
        }
        if let Some(reason) = finish {
            let _ = row.req.events.send(Event::Done {
                choice: row.choice,
                reason,
                tokens: sampled,
            });
            return Ok(false);
        }
        Ok(true)
    }

    /// Feeds each row's newest token (`next`, one per row) and keeps the logits.
    fn decode(&mut self, next: &[i64]) -> Result<()> {
        let Some(cache) = self.cache.as_mut() else {
            return Ok(());
        };
        if cache.len() >= cache.capacity() {
            let stale = self.rows.iter().map(|r| r.start).min().unwrap_or(0);
            cache.drop_left(stale);
            self.rows.iter_mut().for_each(|r| r.start -= stale);
            if cache.len() >= cache.capacity() {
                bail!("the KV cache is full ({} positions)", cache.capacity());
            }
        }
        let n = self.rows.len() as i64;
        let len = cache.len();
        let d = self.device;
        let toks = Tensor::from_slice(next).view([n, 1]).to_device(d);
        let logits = if self.rows.iter().all(|r| r.start == 0) {
            self.model.forward(&toks, &Positions::CAUSAL, Some(cache))
        } else {
            let starts: Vec<i64> = self.rows.iter().map(|r| r.start).collect();
            let ids: Vec<i64> = starts.iter().map(|s| len - s).collect();
            let ids = Tensor::from_slice(&ids).view([n, 1]).to_device(d);
            let starts = Tensor::from_slice(&starts).view([n, 1]).to_device(d);
            let mask = Tensor::arange(len + 1, (Kind::Int64, d))
                .view([1, len + 1])
                .ge_tensor(&starts)
                .view([n, 1, 1, len + 1]);
            let p = Positions {
                ids: Some(&ids),
                mask: Some(&mask),
            };
            self.model.forward(&toks, &p, Some(cache))
        };
        self.last = Some(logits.select(1, 0).to_kind(Kind::Float));
        self.metrics.steps.fetch_add(1, Ordering::Relaxed);
        self.metrics.step_rows.fetch_add(n as u64, Ordering::Relaxed);
        self.metrics.running_rows.store(n, Ordering::Relaxed);
        Ok(())
    }
}
