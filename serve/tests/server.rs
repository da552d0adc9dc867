//! The real `serve` binary on a loopback port with a tiny random model: the official
//! `openai` client (streaming and not) gets the same greedy reply as `chat --prompt`;
//! concurrent clients get the replies they would get alone; malformed and hostile requests
//! get OpenAI error JSON while other clients keep being served; a client that leaves
//! mid-stream frees its row; a full queue answers 429.
use anyhow::{Context, Result};
use common::checkpoint;
use common::model::GptConfig;
use common::tokenizer::Tok;
use serde_json::Value;
use serve::load::{self, chat_body, request, spawn_server, ServerProcess};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::{bin, tiny_world, venv_python, workspace_root};

const PROMPT: &str = "What is 2 + 3?";

/// A random model of `preset` with a 1024-token context, so that a long reply takes long
/// enough to leave in the middle of it.
fn random_model(d: &Path, preset: &str) -> Result<PathBuf> {
    tiny_world(d)?;
    let tok = Tok::load(&d.join("tokenizer.json"))?;
    let mut cfg = GptConfig::preset(preset, tok.vocab_size() as i64)?;
    cfg.max_seq_len = 1024;
    // Seeded under a lock (libtorch's generator is process-global and the tests run in
    // parallel): the same weights, so the same greedy replies, in every run.
    let out = d.join("ckpt");
    checkpoint::save_random(&out, &cfg, &tok, "sft", 0)?;
    Ok(out)
}

fn start(ckpt: &Path, extra: &[&str]) -> Result<ServerProcess> {
    let c = ckpt.display().to_string();
    let mut args = vec![c.as_str(), "--model-name", "tiny", "--device", "cpu"];
    args.extend_from_slice(extra);
    spawn_server(Path::new(env!("CARGO_BIN_EXE_serve")), &args)
}

/// What `chat --prompt` prints for `prompt` (greedy, `max` tokens), without the newline.
fn chat_reply(ckpt: &Path, prompt: &str, max: usize) -> Result<String> {
    let exe = Path::new(env!("CARGO_BIN_EXE_serve")).with_file_name("chat");
    assert!(
        exe.exists(),
        "{} is missing: `cargo build --release -p eval --bin chat` (cargo test --workspace builds it)",
        exe.display()
    );
    let o = bin(exe)
        .arg(ckpt)
        .args([
            "--prompt",
            prompt,
            "--device",
            "cpu",
            "--max-new-tokens",
            &max.to_string(),
        ])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8(o.stdout)?;
    Ok(s.strip_suffix('\n').unwrap_or(&s).to_string())
}

fn error_json(status: u16, body: &str, expect: u16) -> Value {
    assert_eq!(status, expect, "{body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: not JSON: {body}"));
    assert!(
        v["error"]["message"].is_string() && v["error"]["type"].is_string(),
        "{v}"
    );
    v
}

fn metric(addr: SocketAddr, name: &str) -> Result<f64> {
    let (_, text) = request(addr, "GET", "/metrics", "")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .with_context(|| format!("no {name} in {text}"))
}

#[test]
fn openai_client_gets_the_greedy_reply_of_chat_streaming_and_not() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ckpt = random_model(dir.path(), "tiny")?;
    let srv = start(&ckpt, &[])?;
    let max = 24;
    let expect = chat_reply(&ckpt, PROMPT, max)?;
    let o = Command::new(venv_python())
        .arg(workspace_root().join("serve/tests/openai_client.py"))
        .arg(format!("http://{}/v1", srv.addr))
        .args([PROMPT, &max.to_string()])
        .output()
        .context("running the openai client (needs `just setup`)")?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["chat"], expect.as_str(), "serve and chat --prompt disagree");
    assert_eq!(v["chat_stream"], expect.as_str(), "streamed text differs");
    assert!(v["chat_stream_chunks"].as_u64().unwrap_or(0) > 1, "{v}");
    assert_eq!(v["chat_finish"], v["chat_stream_finish"]);
    let u = &v["chat_usage"];
    assert!(
        u["prompt_tokens"].as_u64() > Some(4) && u["completion_tokens"].as_u64() <= Some(max as u64),
        "{u}"
    );
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0))
    );
    assert_eq!(&v["chat_stream_usage"], u);
    if let Some(stop) = v["stop"].as_object() {
        let s = stop["stop"].as_str().unwrap_or_default();
        let cut = &expect[..expect.find(s).unwrap_or(expect.len())];
        assert_eq!(stop["text"], cut, "{v}");
        assert_eq!(stop["stream_text"], cut, "{v}");
        assert_eq!(stop["finish"], "stop");
    }
    let seeded = &v["seeded"];
    assert_eq!(seeded[0], seeded[1], "the same seed gave different texts");
    assert_eq!(seeded[0].as_array().map(Vec::len), Some(3));
    assert_eq!(v["completion"], v["completion_stream"]);
    let e = &v["errors"];
    assert_eq!(
        (
            e["unknown_model"]["status"].as_u64(),
            e["unknown_model"]["code"].as_str()
        ),
        (Some(404), Some("model_not_found")),
        "{e}"
    );
    assert_eq!(e["negative_max_tokens"]["status"], 400, "{e}");
    assert_eq!(e["too_long"]["code"], "context_length_exceeded", "{e}");
    Ok(())
}

#[test]
fn concurrent_clients_get_their_own_replies_while_hostile_ones_get_errors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ckpt = random_model(dir.path(), "tiny")?;
    let srv = start(
        &ckpt,
        &["--max-batch", "8", "--header-timeout", "1", "--body-timeout", "1"],
    )?;
    let addr = srv.addr;
    let prompts: Vec<String> = (0..6).map(|i| format!("What is {i} + {}?", 2 * i + 1)).collect();
    // Each prompt alone first: what batching must not change.
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            let (s, b) = request(addr, "POST", "/v1/chat/completions", &chat_body("tiny", p, 16))?;
            assert_eq!(s, 200, "{b}");
            let v: Value = serde_json::from_str(&b)?;
            Ok(v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string())
        })
        .collect::<Result<_>>()?;

    let load = std::thread::spawn({
        let prompts = prompts.clone();
        move || load::run(addr, "tiny", &prompts, 12, 4, 16)
    });
    // Hostile clients, all while the load runs.
    let t0 = Instant::now();
    let (s, b) = request(addr, "POST", "/v1/chat/completions", "{\"messages\": [")?;
    let v = error_json(s, &b, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("malformed JSON"),
        "{v}"
    );
    let (s, b) = request(addr, "POST", "/v1/chat/completions", "{\"model\": \"tiny\"}")?;
    error_json(s, &b, 400);
    let (s, b) = request(addr, "POST", "/v1/chat/completions", &chat_body("gpt-4o", PROMPT, 4))?;
    assert_eq!(error_json(s, &b, 404)["error"]["code"], "model_not_found");
    let long = "Velmora trades salt. ".repeat(400);
    let (s, b) = request(addr, "POST", "/v1/completions", &format!("{{\"prompt\": \"{long}\"}}"))?;
    assert_eq!(error_json(s, &b, 400)["error"]["code"], "context_length_exceeded");
    let (s, b) = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &chat_body("tiny", PROMPT, 4).replace("\"max_tokens\":4", "\"max_tokens\":-5"),
    )?;
    assert_eq!(error_json(s, &b, 400)["error"]["param"], "max_tokens");
    let (s, b) = request(addr, "GET", "/v1/nowhere", "")?;
    error_json(s, &b, 404);
    assert_eq!(big_body(addr)?, 413);
    let (s, b) = slow_body(addr)?;
    assert_eq!(error_json(s, &b, 408)["error"]["code"], "request_timeout");
    assert!(
        slowloris_is_cut(addr)?,
        "a client trickling its headers was not disconnected"
    );
    let hostile_secs = t0.elapsed().as_secs_f64();

    let report = load.join().map_err(|_| anyhow::anyhow!("load thread panicked"))?;
    assert_eq!(
        report.ok(),
        48,
        "lost requests: {:?}",
        report.replies.iter().find(|r| r.is_err())
    );
    for (i, r) in report.replies.iter().enumerate() {
        assert_eq!(
            r.as_deref().ok(),
            Some(alone[i % prompts.len()].as_str()),
            "request {i}: batching changed the reply"
        );
    }
    eprintln!(
        "48 requests in {:.2}s beside {hostile_secs:.2}s of hostile clients",
        report.secs
    );
    let (s, h) = request(addr, "GET", "/health", "")?;
    assert_eq!((s, h.contains("ok")), (200, true));
    assert!(
        metric(addr, "serve_decode_step_rows_total")? > metric(addr, "serve_decode_steps_total")?,
        "rows were never batched"
    );
    assert_eq!(
        metric(addr, "serve_requests_total{endpoint=\"chat\",status=\"200\"}")?,
        54.0
    );
    Ok(())
}

/// Sends 10 MB in the body; returns the status.
fn big_body(addr: SocketAddr) -> Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let n = 10 << 20;
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n")?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 16];
        for _ in 0..(n / chunk.len()) {
            if w.write_all(&chunk).is_err() {
                break; // the server answered and closed
            }
        }
    });
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let _ = writer.join();
    let (status, body) = load::parse_response(&raw)?;
    error_json(status, &body, 413);
    Ok(status)
}

/// Headers complete, then a body that never finishes.
fn slow_body(addr: SocketAddr) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"model\""
    )?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    load::parse_response(&raw)
}

/// Trickles header bytes slower than the header timeout allows; true when the server hangs up.
fn slowloris_is_cut(addr: SocketAddr) -> Result<bool> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if s.write_all(b"X").is_err() {
            return Ok(true);
        }
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => return Ok(true), // an answer instead of waiting forever is fine too
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Ok(true),
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    Ok(false)
}

#[test]
fn a_client_leaving_mid_stream_frees_its_row_and_a_full_queue_answers_429() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // The `default` preset (4 x 256): a step is slow enough that a 400-token reply is still
    // running when the client hangs up.
    let ckpt = random_model(dir.path(), "default")?;
    let srv = start(&ckpt, &["--max-batch", "1", "--queue", "2"])?;
    let addr = srv.addr;
    // A prompt whose greedy reply runs to 400 tokens (a random model may stop early on others).
    let long = (0..6)
        .map(|i| format!("Tell me about town {i}."))
        .find(|p| {
            let r = request(addr, "POST", "/v1/chat/completions", &chat_body("tiny", p, 400));
            r.is_ok_and(|(_, b)| b.contains("\"finish_reason\":\"length\""))
        })
        .context("no prompt with a 400-token greedy reply")?;
    let before = metric(addr, "serve_completion_tokens_total")?;
    // Stream it; read the first events and hang up.
    let mut s = TcpStream::connect(addr)?;
    let body = chat_body("tiny", &long, 400).replace("\"temperature\":0", "\"temperature\":0,\"stream\":true");
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
    let mut buf = [0u8; 512];
    let got = s.read(&mut buf)?;
    assert!(String::from_utf8_lossy(&buf[..got]).contains("200 OK"));
    drop(s);
    let t0 = Instant::now();
    while metric(addr, "serve_cancelled_rows_total")? < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the row was not freed: {} tokens, {} running",
            metric(addr, "serve_completion_tokens_total")?,
            metric(addr, "serve_running_rows")?
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let tokens = metric(addr, "serve_completion_tokens_total")? - before;
    assert!(tokens < 400.0, "the reply ran to the end ({tokens} tokens)");
    assert_eq!(metric(addr, "serve_running_rows")?, 0.0);

    // One row and two queue places: of 8 simultaneous long requests, some get 429.
    let r = load::run(addr, "tiny", &[PROMPT.to_string()], 8, 1, 100);
    let busy: Vec<&String> = r.replies.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!busy.is_empty() && r.ok() >= 1, "{:?}", r.replies);
    for e in busy {
        assert!(e.starts_with("429") && e.contains("rate_limit_error"), "{e}");
    }
    assert_eq!(metric(addr, "serve_queue_depth")?, 0.0);
    Ok(())
}
