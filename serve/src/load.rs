//! A loopback load generator on plain blocking sockets (no HTTP client library): `clients`
//! threads each send `per_client` chat requests one after the other. Used by the tests and
//! by `serve-bench`.
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Sends one HTTP/1.1 request (`Connection: close`) and returns the status and body.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the response")?;
    parse_response(&raw)
}

/// Status and body of a raw HTTP/1.1 response (plain or chunked).
pub fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no complete response: {text:?}");
    };
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding: chunked"));
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    Ok((status, out))
}

/// A greedy chat request body.
pub fn chat_body(model: &str, prompt: &str, max_tokens: usize) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}],
        "temperature": 0, "max_tokens": max_tokens})
    .to_string()
}

/// What a load run saw.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The reply text of request `i` (client `i / per_client`), or the error.
    pub replies: Vec<Result<String, String>>,
    /// Wall-clock seconds of the whole run.
    pub secs: f64,
    /// Completion tokens summed from the `usage` blocks.
    pub completion_tokens: usize,
}

impl LoadReport {
    /// Requests answered with 200 and a reply.
    pub fn ok(&self) -> usize {
        self.replies.iter().filter(|r| r.is_ok()).count()
    }
}

/// `clients` threads, each sending `per_client` greedy chat requests in turn; request `i`
/// asks `prompts[i % prompts.len()]`.
pub fn run(
    addr: SocketAddr,
    model: &str,
    prompts: &[String],
    clients: usize,
    per_client: usize,
    max_tokens: usize,
) -> LoadReport {
    let t0 = Instant::now();
    let results: Vec<Vec<(Result<String, String>, usize)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                sc.spawn(move || {
                    (0..per_client)
                        .map(|k| {
                            let i = c * per_client + k;
                            let body = chat_body(model, &prompts[i % prompts.len()], max_tokens);
                            match request(addr, "POST", "/v1/chat/completions", &body) {
                                Ok((200, b)) => match serde_json::from_str::<Value>(&b) {
                                    Ok(v) => (
                                        v["choices"][0]["message"]["content"]
                                            .as_str()
                                            .map(String::from)
                                            .ok_or(b),
                                        v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
                                    ),
                                    Err(e) => (Err(format!("{e}: {b}")), 0),
                                },
                                Ok((status, b)) => (Err(format!("{status}: {b}")), 0),
                                Err(e) => (Err(format!("{e:#}")), 0),
                            }
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let flat: Vec<(Result<String, String>, usize)> = results.into_iter().flatten().collect();
    LoadReport {
        completion_tokens: flat.iter().map(|r| r.1).sum(),
        replies: flat.into_iter().map(|r| r.0).collect(),
        secs,
    }
}

/// A `serve` process started by [`spawn_server`]; killed when dropped.
pub struct ServerProcess {
    /// The process.
    pub child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the `serve` binary `exe` with `args` plus `--port 0`, and waits for its address.
pub fn spawn_server(exe: &std::path::Path, args: &[&str]) -> Result<ServerProcess> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(exe)
        .args(args)
        .args(["--host", "127.0.0.1", "--port", "0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut seen = String::new();
    let addr = loop {
        let Some(line) = lines.next() else {
            let _ = child.wait();
            bail!("serve exited before listening: {seen}");
        };
        let line = line?;
        if let Some(a) = line.split("http://").nth(1) {
            break a.trim_end_matches("/v1").parse::<SocketAddr>()?;
        }
        seen.push_str(&line);
        seen.push('\n');
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(ServerProcess { child, addr })
}
