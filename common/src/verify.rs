//! Verifiers: they judge a completion against a task's reference answer.
//!
//! Completions are expected to end with a line `Answer: <answer>` (the chat format the
//! SFT data teaches). Verifiers are a trait; the [`Grader`] routes each task kind to its
//! verifier and combines correctness, abstention and (opt-in) format into a reward.
pub use crate::answers::{Extract, Reading};
use anyhow::{Context, Result};
use sandbox::{Exit, Limits, Sandbox, SandboxOptions};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A task with a verifiable answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The user's question (plain text, no template).
    pub prompt: String,
    /// Reference answer ("I don't know" for unanswerable questions).
    pub answer: String,
    /// `arithmetic`, `facts`, `program`, `unanswerable`, or another kind (exact match); see
    /// [`Grader::verifier_for`].
    pub kind: String,
    /// How completions state their answer (default: the `Answer:` line, lenient).
    #[serde(default, skip_serializing_if = "Reading::is_default")]
    pub reading: Reading,
    /// Unit tests of a program task (HumanEval's `test` and `entry_point`): the completion's
    /// code passes them or it is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<UnitTests>,
    /// Earlier turns of the conversation before `prompt` (user, assistant, ...): empty for a
    /// single-turn question; a follow-up ("Now add 10 to that.") refers back to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<crate::tokenizer::Message>,
}

impl Task {
    /// The conversation the model answers: the history, then `prompt` as the user's turn.
    pub fn messages(&self) -> Vec<crate::tokenizer::Message> {
        let mut m = self.history.clone();
        m.push(crate::tokenizer::Message::new("user", self.prompt.clone()));
        m
    }
}

/// The unit tests a program task's code must pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitTests {
    /// Test code appended to the program (e.g. HumanEval's `def check(candidate): ...`, or
    /// MBPP's `assert` lines).
    pub code: String,
    /// The function under test: `check(<entry_point>)` is called after the test code.
    pub entry_point: Option<String>,
}

/// What a verifier concluded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Combined reward.
    pub reward: f64,
    /// The answer is right (for unanswerable questions: the model abstained).
    pub correct: bool,
    /// The model said it does not know.
    pub abstained: bool,
    /// The completion has an `Answer:` line.
    pub formatted: bool,
    /// A verifier failed (timeout, crash of the checker itself); counted, not hidden.
    pub errored: bool,
}

/// Something that scores a completion for a task: 1.0 = right, 0.0 = wrong.
pub trait Verifier: Send + Sync {
    /// Name for logs.
    fn name(&self) -> &'static str;
    /// Score in [0, 1]; `Err` when the verifier itself failed.
    fn score(&self, task: &Task, completion: &str) -> Result<f64>;
}

/// The text after the last `Answer:` (case-insensitive), trimmed; `None` when absent.
pub fn extract_answer(completion: &str) -> Option<String> {
    let lower = completion.to_lowercase();
    let idx = lower.rfind("answer:")?;
    let rest = completion[idx + "answer:".len()..].trim();
    let line = rest.lines().next().unwrap_or("").trim();
    Some(line.to_string())
}

/// The final answer: the `Answer:` line if any, else the last non-empty line.
pub fn final_answer(completion: &str) -> String {
    extract_answer(completion).unwrap_or_else(|| crate::answers::last_line(completion))
}

/// Lower-case, trimmed, inner whitespace collapsed, trailing punctuation removed.
pub fn normalize(s: &str) -> String {
    let s = s.trim().trim_end_matches(['.', '!', '?', ';', ',']).trim();
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
        .replace('’', "'")
}

/// First number in `s`, tolerant of `1,234`, `$85`, `85.0`, `-3`.
pub fn parse_number(s: &str) -> Option<f64> {
    let cleaned: String = s.chars().filter(|c| *c != ',' && *c != '$').collect();
    let mut start = None;
    let chars: Vec<char> = cleaned.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_digit() || (*c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            start = Some(i);
            break;
        }
    }
    let start = start?;
    let mut end = start + 1;
    while end < chars.len()
        && (chars[end].is_ascii_digit()
            || (chars[end] == '.' && chars.get(end + 1).is_some_and(|d| d.is_ascii_digit())))
    {
        end += 1;
    }
    chars[start..end].iter().collect::<String>().parse().ok()
}

/// Numeric answer: the final answer's number equals the reference's (to 1e-6).
pub struct NumericAnswer;

impl Verifier for NumericAnswer {
    fn name(&self) -> &'static str {
        "numeric"
    }
    fn score(&self, task: &Task, completion: &str) -> Result<f64> {
        let want = parse_number(&task.answer)
            .with_context(|| format!("reference answer `{}` is not a number", task.answer))?;
        Ok(
            match task.reading.answer(completion).as_deref().and_then(parse_number) {
                Some(got) if (got - want).abs() <= 1e-6 * want.abs().max(1.0) => 1.0,
                _ => 0.0,
            },
        )
    }
}

/// Exact match after normalisation.
pub struct ExactMatch;

impl Verifier for ExactMatch {
    fn name(&self) -> &'static str {
        "exact"
    }
    fn score(&self, task: &Task, completion: &str) -> Result<f64> {
        Ok(
            if task
                .reading
                .answer(completion)
                .is_some_and(|a| normalize(&a) == normalize(&task.answer))
            {
                1.0
            } else {
                0.0
            },
        )
    }
}

/// Format: the completion states its answer on an `Answer:` line.
pub struct FormatCheck;

impl Verifier for FormatCheck {
    fn name(&self) -> &'static str {
        "format"
    }
    fn score(&self, task: &Task, completion: &str) -> Result<f64> {
        Ok(if task.reading.formatted(completion) { 1.0 } else { 0.0 })
    }
}

/// Abstention: the answer says "I don't know" (or an equivalent).
pub struct Abstention;

/// Whether an answer is an abstention.
pub fn is_abstention(answer: &str) -> bool {
    let a = normalize(answer);
    [
        "i don't know",
        "i do not know",
        "i dont know",
        "unknown",
        "i'm not sure",
        "i am not sure",
    ]
    .iter()
    .any(|p| a == *p || a.starts_with(&format!("{p} ")) || a.starts_with(&format!("{p},")))
}

impl Verifier for Abstention {
    fn name(&self) -> &'static str {
        "abstention"
    }
    fn score(&self, task: &Task, completion: &str) -> Result<f64> {
        Ok(if task.reading.answer(completion).is_some_and(|a| is_abstention(&a)) {
            1.0
        } else {
            0.0
        })
    }
}

/// Program execution: runs Python in the `sandbox` crate's sandbox (namespaces, Landlock,
/// seccomp, rlimits; see the README, "Sandbox for model-written code") with a wall-clock limit
/// and an address-space limit. If the completion contains a ```python block, that program is run
/// and its output compared with the reference; otherwise the program in the prompt is run (the
/// ground truth) and the completion's final answer compared with its output. A hang, crash or
/// non-zero exit of the *completion's* program scores zero. Where this machine's sandbox lacks a
/// guarantee, program tasks error (counted as verifier errors) unless `allow_weak` (RL:
/// `[verifier] allow_weak_sandbox = true`; eval: `--allow-weak-sandbox`) or
/// `LIB2EXPERT_ALLOW_WEAK_SANDBOX=1` opts in to the weaker sandbox, with a loud warning.
pub struct ProgramExec {
    /// Interpreter.
    pub python: String,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Address-space limit in megabytes.
    pub memory_mb: u64,
    /// Run programs even where this machine's sandbox lacks a guarantee (with a warning).
    pub allow_weak: bool,
}

/// Set to `1` to run programs in a sandbox that lacks some guarantee on this machine.
pub const ALLOW_WEAK_SANDBOX_ENV: &str = "LIB2EXPERT_ALLOW_WEAK_SANDBOX";

impl Default for ProgramExec {
    fn default() -> Self {
        ProgramExec {
            python: "python3".into(),
            timeout: Duration::from_secs(2),
            memory_mb: 256,
            allow_weak: false,
        }
    }
}

/// First fenced ```python (or bare ```) block of `text`.
pub fn code_block(text: &str) -> Option<String> {
    let start = text.find("```")?;
    let after = &text[start + 3..];
    let body_start = after.find('\n')? + 1;
    let body = &after[body_start..];
    let end = body.find("```")?;
    Some(body[..end].to_string())
}

/// Outcome of running a program.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// Exited with status 0; its standard output.
    Ok(String),
    /// Exited non-zero or was killed by a signal (e.g. the memory limit); its stderr tail.
    Failed(String),
    /// Killed at the time limit.
    TimedOut,
}

impl ProgramExec {
    /// The sandbox for this interpreter: built once per process and interpreter (it probes the
    /// machine and logs its isolation layers to standard error), then shared by every thread.
    /// A failure is remembered too, so a refused sandbox fails every run at once.
    pub fn sandbox(&self) -> Result<Arc<Sandbox>> {
        type Cache = Mutex<HashMap<String, std::result::Result<Arc<Sandbox>, String>>>;
        static SANDBOXES: OnceLock<Cache> = OnceLock::new();
        let mut cache = SANDBOXES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let allow_weak =
            self.allow_weak || std::env::var(ALLOW_WEAK_SANDBOX_ENV).is_ok_and(|v| v == "1" || v == "true");
        let key = format!("{}\0{allow_weak}", self.python);
        let entry = cache.entry(key).or_insert_with(|| {
            let opts = SandboxOptions {
                python: self.python.clone(),
                allow_weak,
                ..Default::default()
            };
            match Sandbox::new(opts) {
                Ok(sb) => {
                    eprintln!("program sandbox ({}): {}", sb.python().display(), sb.isolation());
                    Ok(Arc::new(sb))
                }
                Err(e) => {
                    eprintln!("program sandbox for `{}` unavailable: {e:#}", self.python);
                    Err(format!("{e:#}"))
                }
            }
        });
        entry.clone().map_err(anyhow::Error::msg)
    }

    /// Runs `source` in the sandbox and returns what happened; never waits much longer than the
    /// timeout, and nothing the program started outlives the call.
    pub fn run(&self, source: &str) -> Result<RunOutcome> {
        let limits = Limits {
            timeout: self.timeout,
            memory_mb: self.memory_mb,
            ..Default::default()
        };
        let r = self.sandbox()?.run(source, &limits)?;
        Ok(match r.exit {
            Exit::TimedOut => RunOutcome::TimedOut,
            Exit::Code(0) => RunOutcome::Ok(r.stdout_text()),
            Exit::Code(_) | Exit::Signal(_) => {
                let e = r.stderr_text();
                RunOutcome::Failed(e.lines().rev().take(3).collect::<Vec<_>>().join(" | "))
            }
        })
    }
}

impl Verifier for ProgramExec {
    fn name(&self) -> &'static str {
        "program"
    }
    fn score(&self, task: &Task, completion: &str) -> Result<f64> {
        if let Some(tests) = &task.tests {
            return Ok(match self.run(&tested_program(&task.prompt, completion, tests))? {
                RunOutcome::Ok(_) => 1.0,
                _ => 0.0,
            });
        }
        let same = |a: &str, b: &str| a.trim_end() == b.trim_end() || normalize(a) == normalize(b);
        if let Some(code) = code_block(completion) {
            // An empty expected output would pass any program that prints nothing.
            anyhow::ensure!(
                !task.answer.trim().is_empty(),
                "the task's expected output is empty: give it unit tests (a `test` column) or a non-empty answer"
            );
            return Ok(match self.run(&code)? {
                RunOutcome::Ok(out) if same(&out, &task.answer) => 1.0,
                _ => 0.0,
            });
        }
        let truth = match code_block(&task.prompt) {
            Some(code) => match self.run(&code)? {
                RunOutcome::Ok(out) => out,
                other => anyhow::bail!("the reference program of the task did not run: {other:?}"),
            },
            None => task.answer.clone(),
        };
        Ok(if task.reading.answer(completion).is_some_and(|a| same(&a, &truth)) {
            1.0
        } else {
            0.0
        })
    }
}

/// The program a unit-tested task runs: the completion's code (its first fenced block, else
/// the completion itself), completed by the prompt where the completion only continues it
/// (HumanEval's prompt is a signature and a docstring), then the tests, then
/// `check(<entry_point>)`.
pub fn tested_program(prompt: &str, completion: &str, tests: &UnitTests) -> String {
    let code = code_block(completion).unwrap_or_else(|| completion.to_string());
    let defines = |name: &str| code.contains(&format!("def {name}(")) || code.contains(&format!("def {name} ("));
    let prompt_code = code_block(prompt).unwrap_or_else(|| prompt.to_string());
    let program = match &tests.entry_point {
        Some(f) if defines(f) => {
            // A whole function: keep the prompt's imports, which a chat answer often leaves out.
            let imports: Vec<&str> = prompt_code
                .lines()
                .filter(|l| l.starts_with("import ") || l.starts_with("from "))
                .collect();
            format!("{}\n{code}", imports.join("\n"))
        }
        _ if code_block(completion).is_some() => code,
        _ => format!("{prompt_code}{code}"),
    };
    let check = tests
        .entry_point
        .as_ref()
        .map(|f| format!("\n\ncheck({f})\n"))
        .unwrap_or_default();
    format!("{program}\n\n{}{check}", tests.code)
}

/// The threads that grade completions ([`Grader::grade_all`]): one per core, and at least two
/// so that a program waiting out its deadline never holds up the rest on a one-core machine.
/// Built on first use and kept for the process; grading calls from any thread share it.
/// `None` where the threads could not be started (grading then uses rayon's global pool).
pub fn verify_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cores.max(2))
            .thread_name(|i| format!("verify-{i}"))
            .build();
        if let Err(e) = &pool {
            eprintln!("warning: no verification threads ({e}): grading on the shared pool");
        }
        pool.ok()
    })
    .as_ref()
}

/// Reward weights of the [`Grader`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardWeights {
    /// Reward of a correct answer (for unanswerable questions: of abstaining).
    #[serde(default = "w_correct")]
    pub correct: f64,
    /// Reward of "I don't know" on a question that has an answer: less than right,
    /// more than wrong, so the model learns to abstain rather than make things up.
    #[serde(default = "w_abstain")]
    pub abstain: f64,
    /// Reward of a wrong answer (e.g. negative to punish hallucination harder).
    #[serde(default)]
    pub wrong: f64,
    /// Added when the `Answer:` line is present. Off by default: a format bonus on top of
    /// correctness made answers long and wrong in open-instruct's experience.
    #[serde(default)]
    pub format: f64,
}

fn w_correct() -> f64 {
    1.0
}
fn w_abstain() -> f64 {
    0.3
}

impl Default for RewardWeights {
    fn default() -> Self {
        RewardWeights {
            correct: w_correct(),
            abstain: w_abstain(),
            wrong: 0.0,
            format: 0.0,
        }
    }
}

/// Routes tasks to verifiers and combines their scores.
pub struct Grader {
    /// Weights.
    pub weights: RewardWeights,
    numeric: NumericAnswer,
    exact: ExactMatch,
    format: FormatCheck,
    abstention: Abstention,
    program: ProgramExec,
}

impl Grader {
    /// A grader with the given weights and program-execution limits.
    pub fn new(weights: RewardWeights, program: ProgramExec) -> Self {
        Grader {
            weights,
            numeric: NumericAnswer,
            exact: ExactMatch,
            format: FormatCheck,
            abstention: Abstention,
            program,
        }
    }

    /// The verifier that decides correctness for `kind`.
    pub fn verifier_for(&self, kind: &str) -> &dyn Verifier {
        match kind {
            "arithmetic" | "math" | "gsm8k" => &self.numeric,
            "program" | "code" | "humaneval" | "mbpp" | "unit-test" => &self.program,
            "unanswerable" => &self.abstention,
            _ => &self.exact,
        }
    }

    /// Judges one finished completion.
    pub fn grade(&self, task: &Task, completion: &str) -> Verdict {
        self.grade_completion(task, completion, true)
    }

    /// Judges many completions at once, `(task, completion, finished)` each, on the
    /// verification pool (see [`verify_pool`]): programs run side by side, each in its own
    /// sandbox with its own deadline, so a step's grading takes about as long as its slowest
    /// programs rather than all of them one after another. Verdicts come back in the order of
    /// `items` and do not depend on the order the runs finish in.
    pub fn grade_all(&self, items: &[(&Task, &str, bool)]) -> Vec<Verdict> {
        use rayon::prelude::*;
        let grade = || -> Vec<Verdict> {
            items
                .par_iter()
                .with_max_len(1)
                .map(|&(task, completion, finished)| self.grade_completion(task, completion, finished))
                .collect()
        };
        match verify_pool() {
            Some(pool) => pool.install(grade),
            None => grade(),
        }
    }

    /// Judges one completion; `finished`: it ended with a stop token rather than being cut at
    /// its token budget (a strict task counts a cut completion wrong whatever it says).
    pub fn grade_completion(&self, task: &Task, completion: &str, finished: bool) -> Verdict {
        let formatted = self.format.score(task, completion).unwrap_or(0.0) > 0.5;
        let abstained = self.abstention.score(task, completion).unwrap_or(0.0) > 0.5;
        let (correct, errored) = if task.reading.strict && !finished {
            (false, false)
        } else {
            match self.verifier_for(&task.kind).score(task, completion) {
                Ok(s) => (s > 0.5, false),
                Err(_) => (false, true),
            }
        };
        let w = &self.weights;
        let mut reward = if correct {
            w.correct
        } else if abstained {
            w.abstain
        } else {
            w.wrong
        };
        if formatted {
            reward += w.format;
        }
        Verdict {
            reward,
            correct,
            abstained,
            formatted,
            errored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn task(kind: &str, prompt: &str, answer: &str) -> Task {
        Task {
            prompt: prompt.into(),
            answer: answer.into(),
            kind: kind.into(),
            ..Task::default()
        }
    }

    #[test]
    fn numeric_is_tolerant_of_formatting() -> Result<()> {
        let t = task("arithmetic", "What is 1000 + 234?", "1234");
        for good in ["Answer: 1234", "so 1,234.\nAnswer: $1,234", "Answer: 1234.0", "1234"] {
            assert_eq!(NumericAnswer.score(&t, good)?, 1.0, "{good}");
        }
        for bad in ["Answer: 1235", "Answer: I don't know", ""] {
            assert_eq!(NumericAnswer.score(&t, bad)?, 0.0, "{bad}");
        }
        assert_eq!(parse_number("-3 apples"), Some(-3.0));
        Ok(())
    }

    #[test]
    fn exact_format_and_abstention() -> Result<()> {
        let t = task("facts", "In which region is Velmora?", "Northern Reach");
        assert_eq!(
            ExactMatch.score(&t, "Velmora lies there.\nAnswer: northern reach.")?,
            1.0
        );
        assert_eq!(ExactMatch.score(&t, "Answer: Southern Reach")?, 0.0);
        assert_eq!(FormatCheck.score(&t, "it is the Northern Reach")?, 0.0);
        assert_eq!(Abstention.score(&t, "Answer: I don't know.")?, 1.0);
        assert_eq!(Abstention.score(&t, "Answer: Northern Reach")?, 0.0);
        Ok(())
    }

    #[test]
    fn grader_prefers_abstaining_to_being_wrong() {
        let g = Grader::new(RewardWeights::default(), ProgramExec::default());
        let fact = task("facts", "q", "Tarsk");
        let right = g.grade(&fact, "Answer: Tarsk");
        let idk = g.grade(&fact, "Answer: I don't know");
        let wrong = g.grade(&fact, "Answer: Velmora");
        assert!(right.reward > idk.reward && idk.reward > wrong.reward);
        assert!(idk.abstained && !idk.correct);
        let un = task("unanswerable", "q", "I don't know");
        assert!(g.grade(&un, "Answer: I don't know").correct);
        assert!(!g.grade(&un, "Answer: Tarsk").correct);
    }

    #[test]
    fn program_execution_runs_and_bounds_programs() -> Result<()> {
        let exec = ProgramExec {
            python: testkit::venv_python().display().to_string(),
            ..Default::default()
        };
        let t = task(
            "program",
            "What does this print?\n```python\nx = 3\nprint(x * 4 + 1)\n```",
            "13",
        );
        assert_eq!(
            exec.score(&t, "Answer: 13")?,
            1.0,
            "answer checked against the executed reference"
        );
        assert_eq!(exec.score(&t, "Answer: 12")?, 0.0);
        assert_eq!(
            exec.score(&t, "```python\nprint(13)\n```")?,
            1.0,
            "a produced program is run"
        );
        // A program that loops forever is killed at the limit and scores zero.
        let slow = ProgramExec {
            timeout: Duration::from_millis(500),
            ..exec
        };
        let t0 = Instant::now();
        assert_eq!(slow.score(&t, "```python\nwhile True:\n    pass\n```")?, 0.0);
        assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
        assert_eq!(slow.run("while True: pass")?, RunOutcome::TimedOut);
        // A memory hog hits the address-space limit and fails instead of taking the machine.
        assert!(matches!(slow.run("x = bytearray(2 * 1024**3)")?, RunOutcome::Failed(_)));
        assert!(matches!(slow.run("raise SystemExit(3)")?, RunOutcome::Failed(_)));
        Ok(())
    }

    #[test]
    fn programs_are_graded_side_by_side_in_order() -> Result<()> {
        let g = Grader::new(
            RewardWeights::default(),
            ProgramExec {
                python: testkit::venv_python().display().to_string(),
                ..Default::default()
            },
        );
        // Four programs that each sleep 1 s and print their index; odd tasks expect another
        // output, so the verdicts alternate right/wrong and show whether they kept their order.
        let n = 4;
        let tasks: Vec<Task> = (0..n)
            .map(|i| task("program", "Print your index.", &(i + 100 * (i % 2)).to_string()))
            .collect();
        let answers: Vec<String> = (0..n)
            .map(|i| format!("```python\nimport time\ntime.sleep(1.0)\nprint({i})\n```"))
            .collect();
        let items: Vec<(&Task, &str, bool)> = tasks.iter().zip(&answers).map(|(t, a)| (t, a.as_str(), true)).collect();
        let t0 = Instant::now();
        let verdicts = g.grade_all(&items);
        let took = t0.elapsed();
        let right: Vec<bool> = verdicts.iter().map(|v| v.correct).collect();
        assert_eq!(right, [true, false, true, false], "{verdicts:?}");
        assert!(verdicts.iter().all(|v| !v.errored), "{verdicts:?}");
        // One after another they cannot take less than n × 1 s of sleep; the pool has at least
        // two threads, so side by side they take about n / 2 × (1 s + start-up).
        assert!(
            took < Duration::from_secs(n as u64),
            "graded in {took:?}: not side by side"
        );
        Ok(())
    }

    #[test]
    fn program_execution_is_sandboxed() -> Result<()> {
        // The project's venv interpreter when present (as `just setup` makes it), else python3.
        let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        let exec = ProgramExec {
            python: if venv.exists() {
                venv.display().to_string()
            } else {
                "python3".into()
            },
            ..Default::default()
        };
        // The sandbox crate's tests cover each hostile program; here: ProgramExec goes through it.
        let isolation = *exec.sandbox()?.isolation();
        assert!(isolation.landlock_fs && isolation.seccomp, "{isolation}");
        for hostile in [
            "print(open('/etc/shadow').read())",
            "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)",
            "open('/tmp/lib2expert-verify-pwned', 'w').write('x')",
            "import os\nos.kill(os.getppid(), 9)\nos.kill(-1, 9)\nraise SystemExit(1)",
        ] {
            assert!(matches!(exec.run(hostile)?, RunOutcome::Failed(_)), "{hostile}");
        }
        assert!(!std::path::Path::new("/tmp/lib2expert-verify-pwned").exists());
        assert_eq!(
            exec.run("import os\nprint(sorted(os.environ))")?,
            RunOutcome::Ok("['HOME', 'LANG', 'PATH', 'TMPDIR']\n".into())
        );
        Ok(())
    }
}
