//! The HTTP side: axum handlers for the OpenAI endpoints, and an accept loop on hyper with
//! a header timeout (slowloris), a body size and time limit, and a connection cap.
use crate::api::{now_secs, ApiError, ChatRequest, CompletionRequest, Sampling, Usage};
use crate::engine::{EngineHandle, Event, Finish};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use common::tokenizer::{Message, Tok};
use futures_util::stream::{self, Stream};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Semaphore;

/// Limits of the HTTP side.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Largest request body in bytes (413 beyond).
    pub max_body: usize,
    /// Time to send a whole body (408 beyond).
    pub body_timeout: Duration,
    /// Time to send the request line and headers (the connection is closed beyond).
    pub header_timeout: Duration,
    /// Most open connections; more are closed at once.
    pub max_connections: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_body: 1 << 20,
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// What every handler sees.
pub struct AppState {
    /// The engine.
    pub engine: EngineHandle,
    /// The name clients use for the model.
    pub model: String,
    /// HTTP limits.
    pub http: HttpOptions,
    ids: AtomicU64,
}

/// The routes of the OpenAI API plus `/health` and `/metrics`.
pub fn router(engine: EngineHandle, model: String, http: HttpOptions) -> Router {
    let state = Arc::new(AppState {
        engine,
        model,
        http,
        ids: AtomicU64::new(0),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(ApiError::invalid(None, "no such endpoint").with_status(404)) })
        .method_not_allowed_fallback(|| async {
            error(ApiError::invalid(None, "method not allowed on this endpoint").with_status(405))
        })
        .with_state(state)
}

/// Serves `app` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Router, http: HttpOptions) {
    let slots = Arc::new(Semaphore::new(http.max_connections));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                eprintln!("serve: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // over the connection cap: dropped, closed
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let header_timeout = http.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, &e.body())
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The body, within the size and time limits.
async fn read_body(s: &AppState, req: Request) -> Result<Bytes, ApiError> {
    let max = s.http.max_body;
    let too_large = || {
        ApiError::invalid(None, format!("the request body is larger than {max} bytes"))
            .with_status(413)
            .with_code("request_too_large")
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(s.http.body_timeout, axum::body::to_bytes(req.into_body(), max)).await {
        Err(_) => Err(ApiError::invalid(
            None,
            format!("the request body did not arrive within {:?}", s.http.body_timeout),
        )
        .with_status(408)
        .with_code("request_timeout")),
        // `to_bytes` wraps http-body-util's `LengthLimitError` when the limit is hit.
        Ok(Err(e)) if format!("{e:?}").contains("LengthLimitError") => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::invalid(None, format!("reading the request body: {e}"))),
        Ok(Ok(b)) => Ok(b),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_data() {
            "invalid request"
        } else {
            "malformed JSON"
        };
        ApiError::invalid(None, format!("{what}: {e}"))
    })
}

/// The token budget of a prompt of `prompt` tokens, or a context-length error.
fn budget(s: &AppState, prompt: usize, sampling: &Sampling) -> Result<usize, ApiError> {
    let ctx = s.engine.context;
    let over = |asked: usize| {
        ApiError::invalid(
            Some("messages"),
            format!(
                "this model's maximum context length is {ctx} tokens; the request needs {asked} \
                 ({prompt} in the prompt, {} for the completion)",
                asked - prompt
            ),
        )
        .with_code("context_length_exceeded")
    };
    if prompt >= ctx {
        return Err(over(prompt + 1));
    }
    match sampling.max_tokens {
        Some(m) if prompt + m as usize > ctx => Err(over(prompt + m as usize)),
        Some(m) => Ok(m as usize),
        None => Ok(ctx - prompt),
    }
}

/// Which API a request came through: decides the response's shape.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn endpoint(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Text => "completions",
        }
    }
}

async fn chat(State(s): State<Arc<AppState>>, req: Request) -> Response {
    respond(&s, Kind::Chat, req).await
}

async fn completions(State(s): State<Arc<AppState>>, req: Request) -> Response {
    respond(&s, Kind::Text, req).await
}

async fn respond(s: &Arc<AppState>, kind: Kind, req: Request) -> Response {
    let t0 = Instant::now();
    match start(s, kind, req).await {
        Ok(r) => r,
        Err(e) => {
            s.engine
                .metrics
                .request(kind.endpoint(), e.status, t0.elapsed().as_secs_f64());
            error(e)
        }
    }
}

/// Parses and checks a request, renders its prompt, queues it and answers.
async fn start(s: &Arc<AppState>, kind: Kind, req: Request) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let body = read_body(s, req).await?;
    let (fields, prompt) = match kind {
        Kind::Chat => {
            let r: ChatRequest = parse(&body)?;
            let messages = r.messages()?;
            (r.sampling, Prompt::Chat(messages))
        }
        Kind::Text => {
            let r: CompletionRequest = parse(&body)?;
            let text = r.prompt_text()?;
            (r.sampling, Prompt::Text(text))
        }
    };
    let include_usage = serde_json::from_slice::<Value>(&body)
        .map(|v| v["stream_options"]["include_usage"] == true)
        .unwrap_or(false);
    let sampling = fields.resolve(&s.model)?;
    let tok = s.engine.tok.clone();
    let prompt = tokio::task::spawn_blocking(move || prompt.ids(&tok))
        .await
        .map_err(|e| ApiError::server(format!("rendering the prompt: {e}")))?
        .map_err(|e| ApiError::invalid(Some("messages"), format!("rendering the prompt: {e:#}")))?;
    let budget = budget(s, prompt.len(), &sampling)?;
    let n = sampling.n;
    let prompt_tokens = prompt.len();
    let (job, rx) = s.engine.job(prompt, sampling, budget);
    s.engine.submit(job)?;
    let id = format!(
        "{}-{:x}",
        if kind == Kind::Chat { "chatcmpl" } else { "cmpl" },
        s.ids.fetch_add(1, Ordering::Relaxed)
    );
    let reply = Reply {
        s: s.clone(),
        kind,
        id,
        created: now_secs(),
        n,
        prompt_tokens,
        t0,
    };
    if fields.stream {
        Ok(reply.stream(rx, include_usage).into_response())
    } else {
        reply.collect(rx).await
    }
}

/// What to render into prompt ids.
enum Prompt {
    Chat(Vec<Message>),
    Text(String),
}

impl Prompt {
    /// Chat: the checkpoint's template with the assistant's opening; text: `bos` + the text.
    fn ids(&self, tok: &Tok) -> anyhow::Result<Vec<u32>> {
        match self {
            Prompt::Chat(m) => tok.render_prompt(m),
            Prompt::Text(t) => {
                let mut ids = vec![tok.bos];
                ids.extend(tok.encode(t)?);
                Ok(ids)
            }
        }
    }
}

/// One response being assembled.
struct Reply {
    s: Arc<AppState>,
    kind: Kind,
    id: String,
    created: u64,
    n: usize,
    prompt_tokens: usize,
    t0: Instant,
}

impl Reply {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn usage(&self, completion: usize) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: completion,
            total_tokens: self.prompt_tokens + completion,
        }
    }

    /// Waits for every choice and answers one JSON body.
    async fn collect(self, mut rx: UnboundedReceiver<Event>) -> Result<Response, ApiError> {
        let mut texts = vec![String::new(); self.n];
        let mut reasons: Vec<Option<Finish>> = vec![None; self.n];
        let mut completion = 0;
        while reasons.iter().any(Option::is_none) {
            match rx.recv().await {
                Some(Event::Text { choice, text }) => texts[choice].push_str(&text),
                Some(Event::Done { choice, reason, tokens }) => {
                    reasons[choice] = Some(reason);
                    completion += tokens;
                }
                Some(Event::Failed(msg)) => return Err(ApiError::server(format!("generation failed: {msg}"))),
                None => return Err(ApiError::server("the model engine dropped the request").with_status(503)),
            }
        }
        let choices: Vec<Value> = texts
            .into_iter()
            .zip(reasons)
            .enumerate()
            .map(|(i, (text, reason))| {
                let reason = reason.map(Finish::as_str);
                match self.kind {
                    Kind::Chat => json!({"index": i, "message": {"role": "assistant", "content": text},
                        "finish_reason": reason, "logprobs": null}),
                    Kind::Text => json!({"index": i, "text": text, "finish_reason": reason, "logprobs": null}),
                }
            })
            .collect();
        let body = json!({"id": self.id, "object": self.object(false), "created": self.created,
            "model": self.s.model, "choices": choices, "usage": self.usage(completion)});
        self.s
            .engine
            .metrics
            .request(self.kind.endpoint(), 200, self.t0.elapsed().as_secs_f64());
        Ok(json_response(StatusCode::OK, &body))
    }

    fn chunk(&self, choices: Value) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created,
            "model": self.s.model, "choices": choices})
    }

    fn text_chunk(&self, choice: usize, text: &str, reason: Option<Finish>) -> Value {
        let reason = reason.map(Finish::as_str);
        match self.kind {
            Kind::Chat => {
                let delta = if reason.is_some() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                self.chunk(json!([{"index": choice, "delta": delta, "finish_reason": reason, "logprobs": null}]))
            }
            Kind::Text => {
                self.chunk(json!([{"index": choice, "text": text, "finish_reason": reason, "logprobs": null}]))
            }
        }
    }

    /// Server-sent events: a chunk per piece of text, one per finished choice, then the
    /// usage (when asked for) and `[DONE]`. Dropping the stream (the client left) drops the
    /// receiver, which frees the rows.
    fn stream(
        self,
        rx: UnboundedReceiver<Event>,
        include_usage: bool,
    ) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
        let mut out = VecDeque::new();
        if self.kind == Kind::Chat {
            for i in 0..self.n {
                out.push_back(
                    self.chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""},
                    "finish_reason": null, "logprobs": null}]))
                        .to_string(),
                );
            }
        }
        let left = self.n;
        let st = StreamState {
            reply: self,
            rx,
            out,
            left,
            completion: 0,
            include_usage,
            finished: false,
        };
        Sse::new(stream::unfold(st, |mut st| async move {
            loop {
                if let Some(data) = st.out.pop_front() {
                    return Some((Ok(SseEvent::default().data(data)), st));
                }
                if st.finished {
                    return None;
                }
                let ev = st.rx.recv().await;
                st.handle(ev);
            }
        }))
    }
}

struct StreamState {
    reply: Reply,
    rx: UnboundedReceiver<Event>,
    out: VecDeque<String>,
    left: usize,
    completion: usize,
    include_usage: bool,
    finished: bool,
}

impl StreamState {
    fn handle(&mut self, ev: Option<Event>) {
        let r = &self.reply;
        match ev {
            Some(Event::Text { choice, text }) => self.out.push_back(r.text_chunk(choice, &text, None).to_string()),
            Some(Event::Done { choice, reason, tokens }) => {
                self.out.push_back(r.text_chunk(choice, "", Some(reason)).to_string());
                self.completion += tokens;
                self.left -= 1;
                if self.left == 0 {
                    if self.include_usage {
                        let mut c = r.chunk(json!([]));
                        c["usage"] = json!(r.usage(self.completion));
                        self.out.push_back(c.to_string());
                    }
                    self.out.push_back("[DONE]".into());
                    self.finished = true;
                    r.s.engine
                        .metrics
                        .request(r.kind.endpoint(), 200, r.t0.elapsed().as_secs_f64());
                }
            }
            Some(Event::Failed(msg)) if !self.finished => self.fail(&msg),
            None if !self.finished => self.fail("the model engine dropped the request"),
            _ => self.finished = true,
        }
    }
}

impl StreamState {
    /// Ends the stream with an error object (the status line has gone out already).
    fn fail(&mut self, msg: &str) {
        let r = &self.reply;
        let e = ApiError::server(format!("generation failed: {msg}"));
        self.out.push_back(e.body().to_string());
        self.finished = true;
        r.s.engine
            .metrics
            .request(r.kind.endpoint(), 500, r.t0.elapsed().as_secs_f64());
    }
}

async fn models(State(s): State<Arc<AppState>>) -> Response {
    s.engine.metrics.request("models", 200, 0.0);
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": s.model, "object": "model", "created": now_secs(),
            "owned_by": "lib2expert", "max_model_len": s.engine.context}]}),
    )
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.engine.is_alive() {
        json_response(StatusCode::OK, &json!({"status": "ok"}))
    } else {
        error(ApiError::server("the model engine has stopped").with_status(503))
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let mut r = Response::new(Body::from(s.engine.metrics.render()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
