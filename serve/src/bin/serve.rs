//! `serve`: answer the OpenAI HTTP API from any checkpoint, with continuous batching.
use anyhow::{Context, Result};
use clap::Parser;
use common::device::{configure_threads, DeviceChoice};
use serve::engine::{self, EngineOptions};
use serve::metrics::Metrics;
use serve::server::{self, HttpOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Serve a checkpoint (ours or an imported Hugging Face directory) over the OpenAI API:
/// POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics.
///
/// Concurrent requests share one running batch: rows join and leave between decode steps.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Checkpoint directory.
    checkpoint: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 = any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Name clients give as `model` (default: the checkpoint path as given).
    #[arg(long)]
    model_name: Option<String>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Most sequences decoded together (1 = one request at a time).
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Most requests waiting for a row; beyond it, 429.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Seconds a client may take to send its request headers (then the connection closes).
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds a client may take to send its request body (408 beyond).
    #[arg(long, default_value_t = 10.0)]
    body_timeout: f64,
    /// Most open connections.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
}

fn run(a: Args) -> Result<()> {
    configure_threads();
    let opts = EngineOptions {
        checkpoint: a.checkpoint.clone(),
        device: a.device.resolve()?,
        max_batch: a.max_batch,
        queue: a.queue,
    };
    let http = HttpOptions {
        max_body: a.max_body,
        body_timeout: Duration::from_secs_f64(a.body_timeout),
        header_timeout: Duration::from_secs_f64(a.header_timeout),
        max_connections: a.max_connections,
    };
    let handle = engine::spawn(opts, Arc::new(Metrics::default()))?;
    let model = a.model_name.unwrap_or_else(|| a.checkpoint.display().to_string());
    let (host, port, max_batch) = (a.host, a.port, a.max_batch);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .with_context(|| format!("listening on {host}:{port}"))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "serve: {model} (context {} tokens, batch up to {}) on http://{addr}/v1",
            handle.context, max_batch
        );
        let app = server::router(handle, model, http.clone());
        server::serve(listener, app, http).await;
        Ok::<_, anyhow::Error>(())
    })
}

fn main() -> ExitCode {
    let a = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| run(a))
}
