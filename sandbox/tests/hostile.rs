//! Hostile programs against the real sandbox: real subprocesses, the real `sandbox-exec` and a
//! real Python. Every hostile program bounds itself (it gives up after a few seconds or a few
//! hundred MB), and every test runs under a watchdog that aborts the test binary, so that a
//! sandbox that fails to contain one cannot harm the machine or hang CI.
use anyhow::Result;
use sandbox::{Exit, Limits, RunResult, Sandbox, SandboxOptions};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn options(allow_fork: bool) -> SandboxOptions {
    SandboxOptions {
        python: std::env::var("SANDBOX_TEST_PYTHON").unwrap_or_else(|_| "python3".into()),
        exec_path: Some(PathBuf::from(env!("CARGO_BIN_EXE_sandbox-exec"))),
        // A machine without the layers fails these tests loudly unless told otherwise.
        allow_weak: std::env::var_os("SANDBOX_TEST_ALLOW_WEAK").is_some(),
        allow_fork,
        scratch_dir: None,
    }
}

/// The default sandbox (no new processes), built once.
fn strict() -> &'static Sandbox {
    static SB: OnceLock<Sandbox> = OnceLock::new();
    SB.get_or_init(|| {
        let sb = Sandbox::new(options(false)).expect("building the sandbox");
        eprintln!("sandbox (default): {}", sb.isolation());
        sb
    })
}

/// A sandbox that lets programs fork (to test process containment itself).
fn forking() -> &'static Sandbox {
    static SB: OnceLock<Sandbox> = OnceLock::new();
    SB.get_or_init(|| {
        let sb = Sandbox::new(options(true)).expect("building the forking sandbox");
        eprintln!("sandbox (allow_fork): {}", sb.isolation());
        sb
    })
}

/// Aborts the whole test binary if the test is still running after `limit`.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn new(name: &'static str, limit: Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if t0.elapsed() > limit {
                    eprintln!("watchdog: test `{name}` still running after {limit:?}; aborting");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn limits(timeout_ms: u64) -> Limits {
    Limits {
        timeout: Duration::from_millis(timeout_ms),
        ..Default::default()
    }
}

fn lines(r: &RunResult) -> Vec<String> {
    r.stdout_text().lines().map(str::to_string).collect()
}

/// Processes on this machine whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn well_behaved_program_prints_and_its_output_is_returned() -> Result<()> {
    let _w = Watchdog::new("well_behaved", Duration::from_secs(20));
    let r = strict().run(
        "import sys\nprint(sum(range(10)))\nprint('to stderr', file=sys.stderr)\n",
        &limits(5000),
    )?;
    assert_eq!(r.exit, Exit::Code(0), "{}", r.stderr_text());
    assert_eq!(r.stdout_text(), "45\n");
    assert_eq!(r.stderr_text(), "to stderr\n");
    // Threads stay allowed, files in the working directory too.
    let r = strict().run(
        "import threading, os\nout = []\nt = threading.Thread(target=lambda: out.append(7))\nt.start(); t.join()\n\
         open('f.txt', 'w').write('hi')\nprint(out[0], open('f.txt').read(), os.getcwd() == os.environ['HOME'])\n",
        &limits(5000),
    )?;
    assert_eq!(r.stdout_text(), "7 hi True\n", "{}", r.stderr_text());
    // A failing program is an exit code, not an error of the sandbox.
    let r = strict().run("raise SystemExit(3)", &limits(5000))?;
    assert_eq!(r.exit, Exit::Code(3));
    Ok(())
}

#[test]
fn an_infinite_loop_times_out() -> Result<()> {
    let _w = Watchdog::new("infinite_loop", Duration::from_secs(20));
    let t0 = Instant::now();
    // Bounded: even uncontained it stops after 20 s.
    let r = strict().run(
        "import time\nt = time.time()\nwhile time.time() - t < 20: pass\n",
        &limits(500),
    )?;
    assert_eq!(r.exit, Exit::TimedOut);
    assert!(t0.elapsed() < Duration::from_millis(3500), "took {:?}", t0.elapsed());
    Ok(())
}

#[test]
fn writing_outside_the_working_directory_fails() -> Result<()> {
    let _w = Watchdog::new("write_outside", Duration::from_secs(20));
    let outside = tempfile::tempdir()?;
    let targets = [
        outside.path().join("pwned").display().to_string(),
        "/tmp/lib2expert-sandbox-pwned".to_string(),
        "/dev/shm/lib2expert-sandbox-pwned".to_string(),
        "/etc/lib2expert-sandbox-pwned".to_string(),
        // The run folder itself, one level above the working directory.
        "../pwned".to_string(),
    ];
    let program = format!(
        "import os\nfor p in {targets:?}:\n    try:\n        open(p, 'w').write('x')\n        print('WROTE', p)\n    \
         except OSError as e:\n        print('denied', type(e).__name__)\n\
         try:\n    os.mkdir('/tmp/lib2expert-sandbox-dir'); print('WROTE dir')\nexcept OSError:\n    print('denied dir')\n\
         open('inside.txt', 'w').write('ok'); print('inside ok')\n"
    );
    let r = strict().run(&program, &limits(5000))?;
    assert_eq!(r.exit, Exit::Code(0), "{}", r.stderr_text());
    let out = lines(&r);
    assert!(out.iter().all(|l| !l.starts_with("WROTE")), "{out:?}");
    assert_eq!(out.len(), targets.len() + 2, "{out:?}");
    assert_eq!(out.last().map(String::as_str), Some("inside ok"));
    for t in &targets[..4] {
        assert!(!PathBuf::from(t).exists(), "{t} was written");
    }
    assert!(!PathBuf::from("/tmp/lib2expert-sandbox-dir").exists());
    Ok(())
}

#[test]
fn filling_the_disk_stops_at_the_limits() -> Result<()> {
    let _w = Watchdog::new("fill_disk", Duration::from_secs(30));
    let before = free_bytes("/tmp");
    // One big file stops at the file-size limit (16 MiB); many files stop at the size of the
    // working directory's tmpfs (64 MiB). Bounded: at most 400 MiB even if nothing stopped it.
    let program = "import os\nchunk = b'x' * (1 << 20)\n\
        def fill(name, mib):\n    n = 0\n    try:\n        with open(name, 'wb') as f:\n            for _ in range(mib):\n                \
        f.write(chunk); f.flush(); n += 1\n    except OSError as e:\n        return n, e.errno\n    return n, 0\n\
        print(*fill('big', 200))\ntotal = 0\nfor i in range(20):\n    n, err = fill(f'part{i}', 10)\n    total += n\n    \
        if err:\n        break\nprint(total, err)\n";
    let r = strict().run(program, &limits(10_000))?;
    assert_eq!(r.exit, Exit::Code(0), "{}", r.stderr_text());
    let out = lines(&r);
    // EFBIG = 27 at 16 MiB.
    assert_eq!(out[0], "16 27", "{out:?}");
    let total: Vec<i64> = out[1].split(' ').map(|x| x.parse().unwrap_or(-1)).collect();
    // ENOSPC = 28 when the 64 MiB tmpfs (holding the 16 MiB file) is full.
    assert_eq!(total[1], 28, "{out:?}");
    assert!(total[0] <= 48, "{out:?}");
    let after = free_bytes("/tmp");
    assert!(
        before.saturating_sub(after) < 32 << 20,
        "the host disk lost {} bytes",
        before - after
    );
    Ok(())
}

fn free_bytes(path: &str) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0)
}

#[test]
fn secrets_are_not_readable() -> Result<()> {
    let _w = Watchdog::new("secrets", Duration::from_secs(20));
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("token");
    std::fs::write(&secret, "hf_secret")?;
    let me = std::process::id();
    let program = format!(
        "import os\nfor p in ['/etc/shadow', '{secret}', '/proc/{me}/environ', '/proc/self/environ', '/proc/1/environ', \
         '/root/.bashrc', '/proc/kcore']:\n    try:\n        open(p, 'rb').read(16)\n        print('READ', p)\n    \
         except OSError as e:\n        print('denied', type(e).__name__)\n\
         for d in ['/root', '/home', '/tmp', '/proc', '{dir}']:\n    try:\n        os.listdir(d); print('LISTED', d)\n    \
         except OSError:\n        print('denied')\nprint(sorted(os.environ))\n",
        secret = secret.display(),
        dir = dir.path().display()
    );
    let r = strict().run(&program, &limits(5000))?;
    assert_eq!(r.exit, Exit::Code(0), "{}", r.stderr_text());
    let out = lines(&r);
    assert!(
        out.iter().all(|l| !l.starts_with("READ") && !l.starts_with("LISTED")),
        "{out:?}"
    );
    // Only the sandbox's own variables: nothing of the caller's environment.
    assert_eq!(
        out.last().map(String::as_str),
        Some("['HOME', 'LANG', 'PATH', 'TMPDIR']")
    );
    let own = ["HOME", "LANG", "PATH", "TMPDIR"];
    assert!(
        std::env::vars().any(|(k, _)| !own.contains(&k.as_str())),
        "the test expects the caller to have other variables (cargo sets CARGO_*)"
    );
    Ok(())
}

#[test]
fn no_network_not_even_loopback() -> Result<()> {
    let _w = Watchdog::new("network", Duration::from_secs(20));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let program = format!(
        "import socket\nfor fam, kind, addr in [(socket.AF_INET, socket.SOCK_STREAM, ('127.0.0.1', {port})), \
         (socket.AF_INET, socket.SOCK_DGRAM, ('127.0.0.1', {port})), (socket.AF_UNIX, socket.SOCK_STREAM, '/run/x.sock')]:\n    \
         try:\n        s = socket.socket(fam, kind); s.settimeout(1); s.connect(addr); s.send(b'x')\n        \
         print('CONNECTED', addr)\n    except OSError as e:\n        print('denied', type(e).__name__)\n"
    );
    let r = strict().run(&program, &limits(5000))?;
    assert_eq!(r.exit, Exit::Code(0), "{}", r.stderr_text());
    let out = lines(&r);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out.iter().all(|l| l.starts_with("denied")), "{out:?}");
    assert!(listener.accept().is_err(), "the listener got a connection");
    // Also where sockets are allowed by seccomp's absence of a fork rule: the forking sandbox
    // keeps the same socket rule and the empty network namespace.
    let r = forking().run(&program, &limits(5000))?;
    assert!(lines(&r).iter().all(|l| l.starts_with("denied")), "{:?}", lines(&r));
    assert!(listener.accept().is_err(), "the listener got a connection");
    Ok(())
}

// Elapsed-time asserts below check that a call returns by its deadline (plus up to 3 s of
// slack for a loaded 2-core machine), never after the seconds-long children it started: they
// are bounds on behaviour, not speed checks.

#[test]
fn a_detached_background_process_does_not_survive() -> Result<()> {
    let _w = Watchdog::new("background", Duration::from_secs(30));
    // sleep's argument doubles as a marker to find survivors in /proc.
    let marker = format!("29.{}{}", std::process::id(), 4711);
    let program = format!(
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        \
         os.execv('/bin/sleep', ['sleep', '{marker}'])\n    os._exit(0)\nos.wait()\nprint('parent done')\n"
    );
    let t0 = Instant::now();
    let r = forking().run(&program, &limits(5000))?;
    assert_eq!(r.exit, Exit::Code(0), "{}", r.stderr_text());
    assert_eq!(r.stdout_text(), "parent done\n");
    // Returned before the 5 s deadline: it did not wait for the background process's pipes
    // (not a speed check; the margin absorbs a loaded 2-core machine).
    assert!(t0.elapsed() < Duration::from_millis(4500), "took {:?}", t0.elapsed());
    assert_eq!(
        processes_with(&marker),
        Vec::<String>::new(),
        "a background process survived"
    );
    // Without allow_fork the program cannot even start one.
    let r = strict().run(&program, &limits(5000))?;
    assert_ne!(r.exit, Exit::Code(0));
    assert!(r.stderr_text().contains("PermissionError"), "{}", r.stderr_text());
    assert_eq!(processes_with(&marker), Vec::<String>::new());
    Ok(())
}

#[test]
fn a_child_holding_stdout_open_does_not_delay_the_result() -> Result<()> {
    let _w = Watchdog::new("stdout_holder", Duration::from_secs(30));
    // The child keeps the inherited stdout for 20 s; the parent exits at once.
    let marker = format!("28.{}{}", std::process::id(), 815);
    let program = format!(
        "import os\nif os.fork() == 0:\n    os.execv('/bin/sleep', ['sleep', '{marker}'])\nprint('parent done', flush=True)\n"
    );
    let t0 = Instant::now();
    let r = forking().run(&program, &limits(5000))?;
    assert_eq!(r.stdout_text(), "parent done\n");
    assert!(t0.elapsed() < Duration::from_millis(4500), "took {:?}", t0.elapsed());
    assert_eq!(processes_with(&marker), Vec::<String>::new());
    // A program that holds stdout open past the deadline is cut at the deadline.
    let t0 = Instant::now();
    let r = strict().run(
        "import time, sys\nprint('partial', flush=True)\ntime.sleep(20)\n",
        &limits(700),
    )?;
    assert_eq!(r.exit, Exit::TimedOut);
    assert_eq!(r.stdout_text(), "partial\n");
    assert!(t0.elapsed() < Duration::from_millis(3700), "took {:?}", t0.elapsed());
    Ok(())
}

#[test]
fn a_fork_bomb_is_contained_and_the_call_returns_by_the_deadline() -> Result<()> {
    let _w = Watchdog::new("fork_bomb", Duration::from_secs(40));
    // Bounded: each process forks at most 12 times and exits after 10 s, so even an
    // uncontained bomb stops (on its own) within 2^12 processes and 10 s.
    let marker = format!("27.{}{}", std::process::id(), 99);
    let bomb = format!(
        "import os, time\nt0 = time.time()\nfailed = 0\nfor _ in range(12):\n    try:\n        os.fork()\n    \
         except OSError:\n        failed += 1\nif failed:\n    os.execv('/bin/sleep', ['sleep', '{marker}'])\n\
         while time.time() - t0 < 10: time.sleep(0.05)\n"
    );
    // Default sandbox: fork is denied outright.
    let t0 = Instant::now();
    let r = strict().run(&bomb, &limits(1500))?;
    assert!(t0.elapsed() < Duration::from_millis(4500), "took {:?}", t0.elapsed());
    assert_eq!(r.exit, Exit::TimedOut, "the bomb execs sleep once its forks fail");
    assert_eq!(processes_with(&marker), Vec::<String>::new());
    // Forking sandbox: the task limit (RLIMIT_NPROC per run for a normal user, the PID
    // namespace's pid_max for root) stops it; the deadline kills the lot.
    let t0 = Instant::now();
    let r = forking().run(&bomb, &limits(1500))?;
    assert_eq!(r.exit, Exit::TimedOut);
    assert!(t0.elapsed() < Duration::from_millis(4500), "took {:?}", t0.elapsed());
    assert_eq!(processes_with(&marker), Vec::<String>::new(), "bomb processes survived");
    Ok(())
}

#[test]
fn the_program_cannot_kill_the_caller() -> Result<()> {
    let _w = Watchdog::new("kill_caller", Duration::from_secs(20));
    let me = std::process::id();
    let program = format!(
        "import os, signal\nfor pid in [os.getppid(), {me}, -{me}]:\n    for sig in [signal.SIGTERM, signal.SIGKILL]:\n        \
         try:\n            os.kill(pid, sig); print('sent', pid)\n        except OSError as e:\n            \
         print('denied', type(e).__name__)\nprint('alive')\n"
    );
    for sb in [strict(), forking()] {
        let r = sb.run(&program, &limits(5000))?;
        // Sending to PID 1 (the sandbox's init) is allowed but ignored: init has no handlers.
        assert_eq!(r.exit, Exit::Code(0), "{}", r.stderr_text());
        assert_eq!(lines(&r).last().map(String::as_str), Some("alive"), "{:?}", lines(&r));
    }
    // kill(-1) reaches only the run's own processes (never PID 1, never the caller).
    let r = forking().run(
        "import os, time\nif os.fork() == 0:\n    time.sleep(10); os._exit(0)\ntry:\n    os.kill(-1, 9)\nexcept OSError as e:\n    \
         print('denied', type(e).__name__)\npid, st = os.wait()\nprint('child killed', os.WIFSIGNALED(st) and os.WTERMSIG(st))\n",
        &limits(5000),
    )?;
    assert_eq!(r.exit, Exit::Code(0), "{}", r.stderr_text());
    assert_eq!(r.stdout_text(), "child killed 9\n");
    // Still here: this test process was not killed.
    Ok(())
}

#[test]
fn memory_and_output_are_capped() -> Result<()> {
    let _w = Watchdog::new("caps", Duration::from_secs(20));
    let r = strict().run("x = bytearray(1 << 30)\nprint('allocated')", &limits(5000))?;
    assert_eq!(r.exit, Exit::Code(1));
    assert!(r.stderr_text().contains("MemoryError"), "{}", r.stderr_text());
    let t0 = Instant::now();
    let r = strict().run(
        "import sys\nfor _ in range(64): sys.stdout.write('y' * (1 << 16))\n",
        &limits(5000),
    )?;
    assert_eq!(r.exit, Exit::Code(0));
    assert_eq!(r.stdout.len(), 1 << 20);
    assert!(r.stdout_truncated && !r.stderr_truncated);
    // Before the 5 s deadline (the margin absorbs a loaded machine; not a speed check).
    assert!(t0.elapsed() < Duration::from_millis(4500), "took {:?}", t0.elapsed());
    Ok(())
}

#[test]
fn runs_in_parallel_threads() -> Result<()> {
    let _w = Watchdog::new("parallel", Duration::from_secs(40));
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Sandbox>();
    let sources: Vec<String> = (0..12).map(|i| format!("print({i} * {i})")).collect();
    let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    let results = strict().run_all(&refs, &limits(10_000), 4);
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r?.stdout_text(), format!("{}\n", i * i));
    }
    Ok(())
}

#[test]
fn a_missing_wrapper_is_a_clear_error() {
    let err = Sandbox::new(SandboxOptions {
        exec_path: Some(PathBuf::from("/nonexistent/sandbox-exec")),
        ..Default::default()
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/sandbox-exec"), "{err:#}");
}
