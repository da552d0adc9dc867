//! `chat`: talk to any checkpoint in the terminal, or answer one `--prompt` for scripts.
//!
//! On a terminal the prompt is a line editor (rustyline: arrows, history across sessions,
//! Ctrl-R search); lines from a pipe are read one per turn. Commands start with `/` and never
//! reach the model. Ctrl-C stops a reply and returns to the prompt; nothing a turn does wrong
//! (a message longer than the context, a failed generation) ends the session.
use anyhow::{Context, Result};
use clap::Parser;
use common::checkpoint;
use common::device::{configure_threads, seed_everything, DeviceChoice};
use common::model::{Gpt, Positions};
use common::sampling::SamplingConfig;
use common::tokenizer::{Message, Tok};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{
    Cmd, ConditionalEventHandler, Editor, Event, EventContext, EventHandler, KeyEvent, Movement, RepeatCount,
};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tch::{Device, Tensor};

/// Chat with a checkpoint.
///
/// Tokens stream as they are generated. The conversation is kept; what the model sees is its
/// most recent turns that fit the context window (the oldest are left out first).
///
/// Interactive: `chat runs/default/rl`. Commands: /help, /reset (clear the conversation),
/// /quit (also /exit, /bye, Ctrl-D, or Ctrl-C at an empty prompt). Ctrl-C during a reply stops
/// it. An empty line does nothing.
///
/// Scripts: `chat runs/default/rl --prompt "What is 23 + 58?"` answers once; lines piped to
/// stdin are answered one turn each (`printf 'What is 2 + 3?\nAnd 4 + 4?\n' | chat runs/default/rl`).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Checkpoint directory (e.g. runs/default/rl).
    checkpoint: PathBuf,
    /// Answer this one prompt and exit.
    #[arg(long)]
    prompt: Option<String>,
    /// A system message put before the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: i64,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Longest reply in tokens.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: i64,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Keep no history file (default: $XDG_STATE_HOME/lib2expert/chat_history, else
    /// ~/.local/state/lib2expert/chat_history).
    #[arg(long)]
    no_history: bool,
}

const HELP: &str = "\
commands (never sent to the model):
  /help              this list
  /reset             clear the conversation (the --system message stays)
  /quit, /exit, /bye leave (also Ctrl-D, or Ctrl-C at an empty prompt)
keys: Ctrl-C stops a reply; on a terminal, arrows edit and recall earlier lines, Ctrl-R searches them
anything else is sent to the model; an empty line does nothing";

/// The model, its tokenizer and sampling settings: what a reply needs.
struct Chat {
    model: Gpt,
    tok: Tok,
    sampling: SamplingConfig,
    device: Device,
}

/// How a reply ended.
struct Reply {
    text: String,
    /// Ctrl-C stopped it.
    stopped: bool,
}

impl Chat {
    /// The prompt ids for `history`, leaving out the oldest exchanges (a system message stays)
    /// until prompt and reply fit the context. An error when the last message alone does not fit.
    fn fit(&self, history: &[Message]) -> Result<Vec<u32>> {
        let max_ctx = self.model.config().max_seq_len;
        let system: Vec<Message> = history.iter().filter(|m| m.role == "system").cloned().collect();
        let turns: Vec<&Message> = history.iter().filter(|m| m.role != "system").collect();
        let mut from = 0;
        loop {
            let mut window = system.clone();
            window.extend(turns[from..].iter().map(|m| (*m).clone()));
            let ids = self.tok.render_prompt(&window)?;
            if ids.len() as i64 + self.sampling.max_new_tokens <= max_ctx {
                return Ok(ids);
            }
            // Drop the oldest exchange: move to the next user message after the first.
            match (from + 1..turns.len()).find(|&i| turns[i].role == "user") {
                Some(next) => from = next,
                None if (ids.len() as i64) < max_ctx => return Ok(ids),
                None => anyhow::bail!(
                    "that message is too long: {} tokens, and the model's context is {max_ctx} tokens \
                     (prompt and reply together); shorten it",
                    ids.len()
                ),
            }
        }
    }

    /// Streams one reply to `history` into `out`; stops early when `stop` is raised.
    fn reply(&self, history: &[Message], out: &mut impl Write, stop: &AtomicBool) -> Result<Reply> {
        let ids = self.fit(history)?;
        let max_ctx = self.model.config().max_seq_len;
        let budget = self.sampling.max_new_tokens.min(max_ctx - ids.len() as i64);
        let _g = tch::no_grad_guard();
        let mut cache = self.model.new_cache(1, ids.len() as i64 + budget);
        let input = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .view([1, -1])
            .to_device(self.device);
        let logits = self.model.forward(&input, &Positions::CAUSAL, Some(&mut cache));
        let mut last = logits.select(1, ids.len() as i64 - 1);
        let mut gen: Vec<u32> = Vec::new();
        let mut shown = 0;
        let mut stopped = false;
        for _ in 0..budget {
            if stop.load(Ordering::SeqCst) {
                stopped = true;
                break;
            }
            let next = self.sampling.pick(&last).int64_value(&[0]) as u32;
            if self.tok.stops().contains(&next) {
                break;
            }
            gen.push(next);
            let text = self.tok.decode(&gen)?;
            // Print only whole characters: a token may end inside a multi-byte character.
            if !text.ends_with('\u{FFFD}') && text.len() > shown {
                write!(out, "{}", &text[shown..])?;
                out.flush()?;
                shown = text.len();
            }
            let t = Tensor::from_slice(&[next as i64]).view([1, 1]).to_device(self.device);
            last = self
                .model
                .forward(&t, &Positions::CAUSAL, Some(&mut cache))
                .select(1, 0);
        }
        let text = self.tok.decode(&gen)?;
        if text.len() > shown && !stopped {
            write!(out, "{}", &text[shown..])?;
        }
        writeln!(out)?;
        out.flush()?;
        Ok(Reply { text, stopped })
    }
}

/// Where the lines of an interactive session come from.
enum Input {
    /// A terminal: a line editor with history.
    Editor {
        editor: Box<Editor<(), FileHistory>>,
        history: Option<PathBuf>,
    },
    /// A pipe or file: one line per turn.
    Lines(std::io::StdinLock<'static>),
}

/// Ctrl-C on a line with text clears it; on an empty line it quits (rustyline's default).
struct ClearOrQuit;

impl ConditionalEventHandler for ClearOrQuit {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext) -> Option<Cmd> {
        (!ctx.line().is_empty()).then_some(Cmd::Kill(Movement::WholeLine))
    }
}

fn history_file() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(state.join("lib2expert/chat_history"))
}

impl Input {
    fn open(keep_history: bool) -> Result<Self> {
        if !std::io::stdin().is_terminal() {
            return Ok(Input::Lines(std::io::stdin().lock()));
        }
        let mut editor: Editor<(), FileHistory> = Editor::new().context("opening the line editor")?;
        editor.bind_sequence(KeyEvent::ctrl('C'), EventHandler::Conditional(Box::new(ClearOrQuit)));
        let history = keep_history.then(history_file).flatten();
        if let Some(h) = &history {
            let _ = editor.load_history(h); // absent on first use
        }
        Ok(Input::Editor {
            editor: Box::new(editor),
            history,
        })
    }

    /// The next line; `None` at the end (Ctrl-D, Ctrl-C at an empty prompt, end of input).
    fn next(&mut self) -> Result<Option<String>> {
        match self {
            Input::Editor { editor, history } => match editor.readline("you> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                        if let Some(h) = history {
                            if let Some(dir) = h.parent() {
                                let _ = std::fs::create_dir_all(dir);
                            }
                            let _ = editor.save_history(h);
                        }
                    }
                    Ok(Some(line))
                }
                Err(ReadlineError::Interrupted | ReadlineError::Eof) => Ok(None),
                Err(e) => Err(e).context("reading the terminal"),
            },
            Input::Lines(stdin) => {
                eprint!("you> ");
                let mut line = String::new();
                if stdin.read_line(&mut line).context("reading stdin")? == 0 {
                    eprintln!();
                    return Ok(None);
                }
                Ok(Some(line))
            }
        }
    }
}

/// What a line of the session asks for.
#[derive(Debug, PartialEq)]
enum Turn {
    /// Nothing (an empty line).
    Nothing,
    Help,
    Reset,
    Quit,
    /// A `/word` that is no command.
    Unknown(String),
    /// A message for the model.
    Say(String),
}

fn turn(line: &str) -> Turn {
    let line = line.trim();
    match line {
        "" => Turn::Nothing,
        "/help" | "/?" => Turn::Help,
        "/reset" | "/clear" => Turn::Reset,
        "/quit" | "/exit" | "/bye" => Turn::Quit,
        _ if line.starts_with('/') && !line.contains(char::is_whitespace) => Turn::Unknown(line.to_string()),
        _ => Turn::Say(line.to_string()),
    }
}

/// The read–reply loop. Every error of a turn is printed and the session goes on.
fn session(chat: &Chat, system: Vec<Message>, input: &mut Input) -> Result<()> {
    // SIGINT: while a reply runs, it raises `stop` (the reply ends, the session goes on);
    // while waiting for a line it ends the session (a terminal's editor takes Ctrl-C as a key).
    let stop = Arc::new(AtomicBool::new(false));
    let waiting = Arc::new(AtomicBool::new(true));
    signal_hook::flag::register_conditional_shutdown(signal_hook::consts::SIGINT, 130, waiting.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let mut history = system.clone();
    let mut stdout = std::io::stdout();
    loop {
        waiting.store(true, Ordering::SeqCst);
        let Some(line) = input.next()? else {
            return Ok(());
        };
        match turn(&line) {
            Turn::Nothing => {}
            Turn::Help => eprintln!("{HELP}"),
            Turn::Quit => return Ok(()),
            Turn::Reset => {
                history = system.clone();
                eprintln!("(conversation cleared)");
            }
            Turn::Unknown(c) => eprintln!("unknown command {c}; /help lists the commands"),
            Turn::Say(text) => {
                history.push(Message::new("user", text));
                if let Err(e) = chat.fit(&history) {
                    history.pop();
                    eprintln!("error: {e:#}\n(nothing was sent; the conversation is as it was)");
                    continue;
                }
                stop.store(false, Ordering::SeqCst);
                waiting.store(false, Ordering::SeqCst);
                eprint!("model> ");
                match chat.reply(&history, &mut stdout, &stop) {
                    Ok(r) => {
                        if r.stopped {
                            eprintln!("(reply stopped)");
                        }
                        history.push(Message::new("assistant", r.text));
                    }
                    Err(e) => {
                        history.pop();
                        eprintln!("\nerror: {e:#}\n(the conversation is as it was before that message)");
                    }
                }
            }
        }
    }
}

fn run(a: Args) -> Result<()> {
    configure_threads();
    let device = a.device.resolve()?;
    seed_everything(a.seed);
    let (_vs, model, loaded) = checkpoint::load_model(&a.checkpoint, device)?;
    let sampling = SamplingConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
    };
    sampling.validate()?;
    let chat = Chat {
        model,
        tok: loaded.tok,
        sampling,
        device,
    };
    let system: Vec<Message> = a.system.iter().map(|s| Message::new("system", s.clone())).collect();
    if let Some(p) = a.prompt {
        let mut history = system;
        history.push(Message::new("user", p));
        chat.reply(&history, &mut std::io::stdout(), &AtomicBool::new(false))?;
        return Ok(());
    }
    let mut input = Input::open(!a.no_history)?;
    eprintln!(
        "chatting with {} ({} stage, step {}); /help lists the commands, Ctrl-D quits",
        a.checkpoint.display(),
        loaded.meta.stage,
        loaded.meta.step
    );
    session(&chat, system, &mut input)
}

fn main() -> ExitCode {
    let a = common::cli::parse::<Args>();
    common::cli::exit_on_error(|| run(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_never_messages() {
        assert_eq!(turn("   \n"), Turn::Nothing);
        assert_eq!(turn("/help\n"), Turn::Help);
        for q in ["/quit", "/exit", "/bye"] {
            assert_eq!(turn(q), Turn::Quit);
        }
        assert_eq!(turn("/reset"), Turn::Reset);
        assert_eq!(turn("/frobnicate"), Turn::Unknown("/frobnicate".into()));
        // A path or a fraction is a message, not a command.
        assert_eq!(turn("/usr/bin is where?"), Turn::Say("/usr/bin is where?".into()));
        assert_eq!(turn(" What is 2 + 3? "), Turn::Say("What is 2 + 3?".into()));
    }
}
