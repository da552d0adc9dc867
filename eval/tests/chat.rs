//! The `chat` REPL as people use it: lines piped in, a pseudo-terminal (through `script`),
//! commands that never reach the model, a message longer than the context, and Ctrl-C
//! (SIGINT) during a reply, after which the session answers the next message.
use anyhow::{bail, Context, Result};
use common::checkpoint;
use common::model::GptConfig;
use common::tokenizer::Tok;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::{bin, tiny_checkpoint, tiny_world};

const CHAT: &str = env!("CARGO_BIN_EXE_chat");

/// A tiny world with a tiny random checkpoint in `d/ck`.
fn tiny(d: &Path) -> Result<PathBuf> {
    tiny_world(d)?;
    let ck = d.join("ck");
    tiny_checkpoint(d, &ck, "sft")?;
    Ok(ck)
}

/// A random model with a 2048-token context whose stop tokens never win the argmax (their
/// output rows are zero, the other logits of a random model are well above zero): its greedy
/// reply runs the whole --max-new-tokens budget: seconds even when the machine is idle, so an
/// interrupt sent once it streams always lands during the reply.
fn endless(d: &Path) -> Result<PathBuf> {
    tiny_world(d)?;
    let tok = Tok::load(&d.join("tokenizer.json"))?;
    let mut cfg = GptConfig::preset("tiny", tok.vocab_size() as i64)?;
    cfg.max_seq_len = 2048;
    let ck = d.join("endless");
    checkpoint::save_random(&ck, &cfg, &tok, "sft", 3)?;
    let file = ck.join("model.safetensors");
    let mut w = tch::Tensor::read_safetensors(&file)?;
    let head = if cfg.tie_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    let (_, t) = w
        .iter_mut()
        .find(|(n, _)| n == head)
        .with_context(|| format!("no {head}"))?;
    for &s in tok.stops() {
        let _ = t.get(s as i64).fill_(0.0);
    }
    tch::Tensor::write_safetensors(&w, &file)?;
    Ok(ck)
}

/// What a child wrote so far on one stream, collected by a thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn collect(mut r: impl Read + Send + 'static) -> Self {
        let c = Captured::default();
        let buf = c.0.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = r.read(&mut b) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&b[..n]);
            }
        });
        c
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits until `pred` holds on the text (60 s at most: the machine may be loaded).
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
        let t0 = Instant::now();
        loop {
            let t = self.text();
            if pred(&t) {
                return Ok(t);
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("timed out waiting for {what}; so far: {t:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits for the child to exit (60 s at most), killing it on a timeout.
fn finish(child: &mut Child) -> Result<std::process::ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            bail!("chat did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn send(stdin: &mut ChildStdin, text: &str) -> Result<()> {
    stdin.write_all(text.as_bytes())?;
    stdin.flush()?;
    Ok(())
}

#[test]
fn piped_lines_commands_and_an_overlong_message_keep_the_session() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ck = tiny(dir.path())?;
    // The tiny model's context is 128 tokens: this message alone is far longer.
    let long = "Velmora trades salt and Tarsk trades iron. ".repeat(40);
    let input = format!(
        "\n   \n/help\nWhat is 2 + 3?\n{long}\n/frobnicate\nAnd 4 + 4?\n/reset\nWhat is 1 + 1?\n/bye\nWhat is 9 + 9?\n"
    );
    let mut child = bin(CHAT)
        .arg(&ck)
        .args(["--max-new-tokens", "8", "--no-history"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    send(&mut stdin, &input)?;
    drop(stdin);
    let o = child.wait_with_output()?;
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{err}");
    // Empty lines re-prompt; /help lists the commands.
    assert!(err.contains("/reset") && err.contains("/quit"), "{err}");
    assert!(err.contains("too long") && err.contains("128 tokens"), "{err}");
    assert!(err.contains("unknown command /frobnicate"), "{err}");
    assert!(err.contains("conversation cleared"), "{err}");
    // Three messages answered (before and after the over-long one, and after /reset); the
    // over-long one, the commands and everything after /bye never reached the model.
    assert_eq!(err.matches("model> ").count(), 3, "{err}");
    assert!(!out.trim().is_empty(), "the replies are on stdout");
    Ok(())
}

#[test]
fn sigint_during_a_reply_stops_it_and_the_session_answers_the_next_message() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ck = endless(dir.path())?;
    let mut child = bin(CHAT)
        .arg(&ck)
        .args(["--max-new-tokens", "2000", "--no-history"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let out = Captured::collect(child.stdout.take().context("stdout")?);
    let err = Captured::collect(child.stderr.take().context("stderr")?);
    // SIGINT, as Ctrl-C on a terminal sends, once the reply streams.
    let interrupt = |child: &Child| -> Result<()> {
        let k = std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()?;
        assert!(k.success());
        Ok(())
    };
    send(&mut stdin, "Tell me about Velmora.\n")?;
    out.wait("the reply to start", |t| t.len() > 16)?;
    interrupt(&child)?;
    err.wait("the reply to stop", |t| t.contains("(reply stopped)"))?;
    // The reply (and its closing newline) is written before the note on stderr.
    let first = out.text().len();
    // The session is alive: it answers the next message (stopped too, to keep the test short),
    // then quits on /quit.
    send(&mut stdin, "What is 2 + 3?\n")?;
    out.wait("the second reply", |t| t.len() > first + 16)?;
    interrupt(&child)?;
    err.wait("the second reply to stop", |t| {
        t.matches("(reply stopped)").count() == 2
    })?;
    send(&mut stdin, "/quit\n")?;
    let status = finish(&mut child)?;
    assert!(status.success(), "{}", err.text());
    let err = err.text();
    assert_eq!(err.matches("model> ").count(), 2, "{err}");
    assert!(out.text().ends_with('\n'), "each reply ends its line");
    Ok(())
}

/// `script` (util-linux) runs chat on a pseudo-terminal: the line editor, Ctrl-C as a key
/// during a reply (the terminal sends SIGINT), an empty line, /help and Ctrl-D.
#[test]
fn on_a_terminal_empty_lines_help_ctrl_c_and_ctrl_d() -> Result<()> {
    if std::process::Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: `script` (util-linux) is not installed, so no pseudo-terminal");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let ck = endless(dir.path())?;
    // `exec`, under a known shell: chat itself is the terminal's foreground process. (A shell
    // left in between gets the terminal's SIGINT too, and dash then exits 130 after chat.)
    let cmd = format!("exec {CHAT} {} --max-new-tokens 2000 --no-history", ck.display());
    let mut child = bin("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut tty = child.stdin.take().context("stdin")?;
    let screen = Captured::collect(child.stdout.take().context("stdout")?);
    // Each key goes in once the editor shows a prompt after what the previous key printed
    // (keys typed while a reply runs are the terminal's, not the editor's).
    let prompt_after = |mark: &'static str| move |t: &str| t.rfind("you> ") > t.find(mark);
    screen.wait("the first prompt", |t| t.contains("you> "))?;
    send(&mut tty, "\r")?; // an empty line re-prompts
    screen.wait("a second prompt", |t| t.matches("you> ").count() >= 2)?;
    send(&mut tty, "/help\r")?;
    screen.wait("the help", |t| t.contains("never sent to the model"))?;
    screen.wait("a prompt after the help", prompt_after("never sent to the model"))?;
    send(&mut tty, "Tell me about Velmora.\r")?;
    let before = screen.wait("the reply", |t| t.contains("model> "))?.len();
    screen.wait("the reply to stream", |t| t.len() > before + 32)?;
    send(&mut tty, "\x03")?; // Ctrl-C during the reply: the terminal sends SIGINT
    screen.wait("the reply to stop", |t| t.contains("(reply stopped)"))?;
    screen.wait("the next prompt", prompt_after("(reply stopped)"))?;
    send(&mut tty, "\x04")?; // Ctrl-D at an empty prompt quits
    let status = finish(&mut child)?;
    assert!(status.success(), "exit {status:?}\n{}", screen.text());
    Ok(())
}
