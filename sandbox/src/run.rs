//! The library side: find the wrapper, probe the interpreter and the isolation once, then run
//! programs (from any number of threads) and collect their output against a deadline.
use crate::policy::{Exit, Isolation, Limits, Policy, Status, PROGRAM_FILE, PROTOCOL, STATUS_FILE, WORK_DIR};
use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::Deserialize;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Environment variable naming the `sandbox-exec` binary (overrides the search next to the
/// current executable).
pub const EXEC_ENV: &str = "LIB2EXPERT_SANDBOX_EXEC";
/// File name of the wrapper binary.
pub const EXEC_NAME: &str = "sandbox-exec";
/// Time on top of a run's timeout for the sandbox's own set-up and tear-down before the library
/// kills the run's whole process group itself.
const GRACE: Duration = Duration::from_secs(3);
/// How long output is still drained after the run ended (its pipes normally close at once).
const DRAIN: Duration = Duration::from_millis(100);

/// How to build a [`Sandbox`].
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// The interpreter: a command (`python3`, looked up in `PATH`) or a path; resolved once,
    /// outside the sandbox, to the absolute `sys.executable` that runs inside.
    pub python: String,
    /// The `sandbox-exec` binary; `None`: `$LIB2EXPERT_SANDBOX_EXEC`, else next to the current
    /// executable (or its parent folder for test binaries in `target/*/deps/`).
    pub exec_path: Option<PathBuf>,
    /// Run even when some guarantee is missing on this machine (see [`Isolation::missing`]),
    /// with a loud warning on standard error. Off by default: such a sandbox is refused.
    pub allow_weak: bool,
    /// Let programs create processes (`fork`, `subprocess`). Off by default: seccomp denies it,
    /// which stops fork bombs for every user, root included. Threads are always allowed.
    pub allow_fork: bool,
    /// Folder for the per-run folders; `None`: the system temporary folder.
    pub scratch_dir: Option<PathBuf>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            python: "python3".into(),
            exec_path: None,
            allow_weak: false,
            allow_fork: false,
            scratch_dir: None,
        }
    }
}

/// What a run produced.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    /// How the program ended.
    pub exit: Exit,
    /// Standard output (at most [`Limits::stdout_bytes`]).
    pub stdout: Vec<u8>,
    /// Standard error (at most [`Limits::stderr_bytes`]).
    pub stderr: Vec<u8>,
    /// The program wrote more standard output than was kept.
    pub stdout_truncated: bool,
    /// The program wrote more standard error than was kept.
    pub stderr_truncated: bool,
    /// Wall-clock time of the whole run, sandbox set-up included.
    pub elapsed: Duration,
    /// The layers this run had.
    pub isolation: Isolation,
}

impl RunResult {
    /// The program exited with status 0.
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0)
    }
    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Standard error as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A sandbox for one interpreter: built once (it probes the machine), then shared by reference
/// across threads (`Send + Sync`); every [`Sandbox::run`] is independent.
#[derive(Debug)]
pub struct Sandbox {
    exec: PathBuf,
    python: PathBuf,
    read_paths: Vec<PathBuf>,
    isolation: Isolation,
    allow_fork: bool,
    scratch: Option<PathBuf>,
}

/// What the interpreter says about itself.
#[derive(Deserialize)]
struct Interpreter {
    executable: String,
    paths: Vec<String>,
}

const INTERPRETER_PROBE: &str = r#"
import json, os, sys
paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
         os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
paths.update(p for p in sys.path if os.path.isabs(p))
print(json.dumps({"executable": sys.executable,
                  "paths": sorted(p for p in paths if p and os.path.exists(p))}))
"#;

/// Finds the `sandbox-exec` binary: `explicit`, else `$LIB2EXPERT_SANDBOX_EXEC`, else next to
/// the current executable (`target/release/`), else one folder up (test binaries live in
/// `target/release/deps/`). The error lists every place tried.
pub fn locate_exec(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("the sandbox wrapper {} does not exist", p.display());
    }
    if let Some(p) = std::env::var_os(EXEC_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!("${EXEC_ENV} names {}, which does not exist", p.display());
    }
    let exe = std::env::current_exe().context("locating the current executable")?;
    let mut tried = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(EXEC_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate);
        dir = d.parent();
    }
    bail!(
        "cannot find the sandbox wrapper `{EXEC_NAME}` (tried {}); build it with `cargo build --release -p sandbox` \
         (`cargo build --release --workspace` and `cargo test --release --workspace` build it too), or name it in ${EXEC_ENV}",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}

impl Sandbox {
    /// Finds the wrapper, resolves the interpreter, runs a self-test program inside the sandbox
    /// and records which isolation layers this machine gives (see [`Sandbox::isolation`]). Refuses
    /// when a guarantee is missing unless `opts.allow_weak`, which warns on standard error instead.
    pub fn new(opts: SandboxOptions) -> Result<Sandbox> {
        let exec = locate_exec(opts.exec_path.as_deref())?;
        let out = Command::new(&exec)
            .arg("--protocol")
            .output()
            .with_context(|| format!("running {}", exec.display()))?;
        let theirs = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if theirs != PROTOCOL.to_string() {
            bail!(
                "{} speaks sandbox protocol `{theirs}`, this library {PROTOCOL}: rebuild it (`cargo build --release -p sandbox`)",
                exec.display()
            );
        }
        let out = Command::new(&opts.python)
            .args(["-I", "-c", INTERPRETER_PROBE])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting the interpreter `{}`", opts.python))?;
        if !out.status.success() {
            bail!(
                "the interpreter `{}` failed to describe itself: {}",
                opts.python,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let interp: Interpreter = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing what `{}` says about itself", opts.python))?;
        let python = PathBuf::from(&interp.executable);
        if !python.is_absolute() || !python.is_file() {
            bail!(
                "the interpreter `{}` reports no usable sys.executable (`{}`)",
                opts.python,
                interp.executable
            );
        }
        let read_paths: Vec<PathBuf> = interp.paths.iter().map(PathBuf::from).collect();
        if let Some(root) = read_paths.iter().find(|p| p.parent().is_none()) {
            bail!(
                "the interpreter `{}` lives at {}: the sandbox would expose the whole file system",
                opts.python,
                root.display()
            );
        }
        let mut sandbox = Sandbox {
            exec,
            python,
            read_paths,
            isolation: Isolation::default(),
            allow_fork: opts.allow_fork,
            scratch: opts.scratch_dir,
        };
        let probe = sandbox
            .run("print('ok')", &Limits::default())
            .context("self-test of the sandbox")?;
        if probe.exit != Exit::Code(0) || probe.stdout != b"ok\n" {
            bail!(
                "self-test of the sandbox: `print('ok')` gave {:?}, stdout {:?}, stderr {:?}",
                probe.exit,
                probe.stdout_text(),
                probe.stderr_text()
            );
        }
        sandbox.isolation = probe.isolation;
        let missing = sandbox.isolation.missing();
        if !missing.is_empty() {
            if !opts.allow_weak {
                bail!(
                    "refusing to run untrusted programs: on this machine the sandbox lacks {} ({}). Fix the machine \
                     (unprivileged user namespaces, Landlock, seccomp) or opt in with allow_weak",
                    missing.join(", "),
                    sandbox.isolation
                );
            }
            eprintln!(
                "WARNING: sandbox for untrusted programs is WEAK on this machine (allow_weak is set): it lacks {}. \
                 A hostile program may damage this machine or read its secrets. Layers: {}",
                missing.join(", "),
                sandbox.isolation
            );
        }
        Ok(sandbox)
    }

    /// The isolation layers this machine gives (probed once by [`Sandbox::new`]; every run is
    /// required to get at least these). Log it once at start-up.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// The interpreter that runs inside (absolute path).
    pub fn python(&self) -> &Path {
        &self.python
    }

    /// Runs `source` as `main.py` in a fresh empty working directory, under `limits`. Returns
    /// by the deadline (plus the sandbox's few milliseconds of set-up), whatever the program does;
    /// no process it started survives. `Err` only when the sandbox itself failed.
    pub fn run(&self, source: &str, limits: &Limits) -> Result<RunResult> {
        let start = Instant::now();
        let mut builder = tempfile::Builder::new();
        builder.prefix("lib2expert-sandbox-");
        let run_dir = match &self.scratch {
            Some(d) => builder.tempdir_in(d),
            None => builder.tempdir(),
        }
        .context("creating the run folder")?;
        let work = run_dir.path().join(WORK_DIR);
        std::fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
        std::fs::write(run_dir.path().join(PROGRAM_FILE), source).context("writing the program")?;
        let policy = Policy {
            protocol: PROTOCOL,
            run_dir: run_dir.path().to_path_buf(),
            python: self.python.clone(),
            read_paths: self.read_paths.clone(),
            limits: limits.clone(),
            allow_fork: self.allow_fork,
            require: self.isolation,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let mut child = Command::new(&self.exec)
            .arg("outer")
            .arg(serde_json::to_string(&policy)?)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: the library can kill the whole run with one signal.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.exec.display()))?;
        let collected = collect(&mut child, limits, start + limits.timeout + GRACE);
        if collected.is_err() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        }
        let reaped = child.wait();
        let status_text = std::fs::read_to_string(run_dir.path().join(STATUS_FILE));
        remove_run_dir(run_dir)?;
        let (out, err, hard_timeout) = collected?;
        reaped.context("waiting for the sandbox wrapper")?;
        let status: Status = match status_text {
            Ok(text) => serde_json::from_str(&text).context("parsing the sandbox status")?,
            Err(_) if hard_timeout => Status {
                protocol: PROTOCOL,
                exit: Some(Exit::TimedOut),
                ..Default::default()
            },
            Err(_) => bail!(
                "the sandbox wrapper left no status (stderr: {})",
                String::from_utf8_lossy(&err.bytes).trim()
            ),
        };
        if let Some(e) = status.error {
            bail!("sandbox: {e}");
        }
        let exit = status.exit.context("the sandbox status has no exit")?;
        if exit != Exit::TimedOut && !self.isolation.satisfied_by(&status.isolation) {
            bail!(
                "sandbox: the run got weaker isolation ({}) than required ({})",
                status.isolation,
                self.isolation
            );
        }
        Ok(RunResult {
            exit,
            stdout: out.bytes,
            stderr: err.bytes,
            stdout_truncated: out.truncated,
            stderr_truncated: err.truncated,
            elapsed: start.elapsed(),
            isolation: status.isolation,
        })
    }

    /// Runs every program of `sources` with up to `threads` runs at a time; results in order.
    pub fn run_all(&self, sources: &[&str], limits: &Limits, threads: usize) -> Vec<Result<RunResult>> {
        let next = AtomicUsize::new(0);
        let mut results: Vec<Option<Result<RunResult>>> = (0..sources.len()).map(|_| None).collect();
        let slots: Vec<std::sync::Mutex<&mut Option<Result<RunResult>>>> =
            results.iter_mut().map(std::sync::Mutex::new).collect();
        std::thread::scope(|s| {
            for _ in 0..threads.clamp(1, sources.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(src) = sources.get(i) else { break };
                    let r = self.run(src, limits);
                    if let Ok(mut slot) = slots[i].lock() {
                        **slot = Some(r);
                    }
                });
            }
        });
        drop(slots);
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("run did not complete"))))
            .collect()
    }
}

/// Output kept from one stream.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Captured {
    fn push(&mut self, chunk: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.truncated |= chunk.len() > room;
    }
}

/// Reads both pipes until the wrapper exits (then drains briefly) or `hard_deadline` passes (then
/// kills the run's process group). Never waits on a pipe to close: a process that keeps one
/// open cannot hold the caller. Returns the output and whether the hard deadline was hit.
fn collect(
    child: &mut std::process::Child,
    limits: &Limits,
    hard_deadline: Instant,
) -> Result<(Captured, Captured, bool)> {
    let pgid = Pid::from_raw(child.id() as i32);
    let mut out = child.stdout.take().context("no stdout pipe")?;
    let mut err = child.stderr.take().context("no stderr pipe")?;
    let (mut cap_out, mut cap_err) = (Captured::default(), Captured::default());
    let (mut out_open, mut err_open) = (true, true);
    let mut ended: Option<Instant> = None;
    let mut hard_timeout = false;
    let mut buf = vec![0u8; 64 * 1024];
    // Longest wait between checks of the wrapper: grows from 1 ms to 10 ms while nothing happens.
    let mut step = Duration::from_millis(1);
    loop {
        let now = Instant::now();
        if ended.is_none() {
            // WNOWAIT: the wrapper stays a zombie, so its PID (the process group's id) cannot be
            // reused before the group is killed below.
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let exited = !matches!(waitid(Id::Pid(pgid), flags), Ok(WaitStatus::StillAlive));
            if exited || now >= hard_deadline {
                hard_timeout = !exited;
                // Anything of the run still in the group (only possible without a PID namespace).
                let _ = killpg(pgid, Signal::SIGKILL);
                ended = Some(now);
            }
        }
        if let Some(t) = ended {
            if (!out_open && !err_open) || now >= t + DRAIN {
                break;
            }
        }
        let wait = match ended {
            Some(t) => (t + DRAIN).saturating_duration_since(now),
            None => hard_deadline.saturating_duration_since(now),
        }
        .min(step);
        step = (step * 2).min(Duration::from_millis(10));
        let mut fds = Vec::with_capacity(2);
        if out_open {
            fds.push(PollFd::new(out.as_fd(), PollFlags::POLLIN));
        }
        if err_open {
            fds.push(PollFd::new(err.as_fd(), PollFlags::POLLIN));
        }
        if fds.is_empty() {
            std::thread::sleep(wait);
            continue;
        }
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO);
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => step = Duration::from_millis(1),
            Err(e) => bail!("polling the program's output: {e}"),
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        let mut i = 0;
        if out_open {
            if ready[i] {
                out_open = read_some(&mut out, &mut buf, &mut cap_out, limits.stdout_bytes);
            }
            i += 1;
        }
        if err_open && ready[i] {
            err_open = read_some(&mut err, &mut buf, &mut cap_err, limits.stderr_bytes);
        }
    }
    Ok((cap_out, cap_err, hard_timeout))
}

/// One read from a ready pipe; false at end of file (or on an error).
fn read_some(r: &mut impl Read, buf: &mut [u8], cap: &mut Captured, limit: usize) -> bool {
    match r.read(buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            cap.push(&buf[..n], limit);
            true
        }
    }
}

/// Removes the run folder, even where the program left folders without permissions.
fn remove_run_dir(dir: tempfile::TempDir) -> Result<()> {
    let path = dir.path().to_path_buf();
    if dir.close().is_ok() {
        return Ok(());
    }
    fn open_up(p: &Path) {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::symlink_metadata(p) {
            if meta.is_dir() {
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
                if let Ok(entries) = std::fs::read_dir(p) {
                    for e in entries.flatten() {
                        open_up(&e.path());
                    }
                }
            }
        }
    }
    open_up(&path);
    std::fs::remove_dir_all(&path).with_context(|| format!("removing the run folder {}", path.display()))
}
