//! The `sandbox-exec` wrapper: three small single-threaded stages of one binary, each set up by
//! the one before and each exec'd fresh, so no restriction is ever applied between `fork` and
//! `exec` of a multi-threaded process (no `pre_exec`, no `unsafe`).
//!
//! 1. `outer` (started by the library, in its own process group): unshares the user, mount,
//!    PID, network, IPC and UTS namespaces, mounts a size-limited tmpfs on the working
//!    directory, copies the program there, starts `init` and kills it at the deadline. It
//!    writes `status.json` into the run folder and exits.
//! 2. `init` (PID 1 of the new PID namespace): mounts a fresh `/proc`, caps `pid_max`, starts
//!    `exec`, reaps every orphan and exits as soon as the program exits; the kernel then kills
//!    whatever is left in the namespace, so nothing the program started outlives the run.
//! 3. `exec`: sets the rlimits, drops all capabilities, enforces Landlock and seccomp on
//!    itself, then execs the interpreter on `main.py` with a clean environment.
//!
//! Stages report through small JSON files in the run folder (outside the working directory,
//! so the program cannot reach them when Landlock is on).
use crate::policy::{
    Exit, Isolation, Limits, Policy, Status, MAIN_FILE, PROGRAM_FILE, PROTOCOL, STATUS_FILE, WORK_DIR,
};
use anyhow::{bail, Context, Result};
use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};
use nix::libc;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{getegid, geteuid, getuid, Pid};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Exit code of a stage whose set-up failed (the details are in the stage's report file).
const SETUP_FAILED: i32 = 125;
/// Report of the `init` stage, in the run folder.
const INIT_REPORT: &str = "init.json";
/// Report of the `exec` stage, in the run folder.
const EXEC_REPORT: &str = "exec.json";

/// Entry point of the `sandbox-exec` binary.
pub fn main() -> ! {
    let args: Vec<String> = std::env::args().collect();
    let code = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("--protocol"), _) => {
            println!("{PROTOCOL}");
            0
        }
        (Some("outer"), Some(policy)) => outer(policy),
        (Some("init"), Some(policy)) => init(policy, args.get(3)),
        (Some("exec"), Some(policy)) => exec(policy, args.get(3)),
        _ => {
            eprintln!(
                "sandbox-exec: the helper binary of lib2expert's `sandbox` crate; the library starts it, \
                 it is not meant to be run by hand (`sandbox-exec --protocol` prints its protocol version)"
            );
            2
        }
    };
    std::process::exit(code)
}

/// What `init` reports: the layers it added and how the program ended.
#[derive(Debug, Default, Serialize, Deserialize)]
struct InitReport {
    isolation: Isolation,
    exit: Option<Exit>,
    error: Option<String>,
}

/// What `exec` reports just before it execs the interpreter (or why it could not).
#[derive(Debug, Default, Serialize, Deserialize)]
struct ExecReport {
    isolation: Isolation,
    error: Option<String>,
}

fn parse_policy(json: &str) -> Result<Policy> {
    let p: Policy = serde_json::from_str(json).context("parsing the sandbox policy")?;
    if p.protocol != PROTOCOL {
        bail!(
            "the library speaks sandbox protocol {} but this sandbox-exec speaks {PROTOCOL}: rebuild it \
             (`cargo build --release -p sandbox`)",
            p.protocol
        );
    }
    Ok(p)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn exit_code(exit: Exit) -> i32 {
    match exit {
        Exit::Code(c) => c,
        Exit::Signal(s) => 128 + s,
        Exit::TimedOut => 124,
    }
}

/// A required layer that `got` lacks is an error.
fn require(policy: &Policy, what: &[(&str, bool, bool)]) -> Result<()> {
    for (name, needed, have) in what {
        if *needed && !*have {
            bail!(
                "isolation layer `{name}` was available when the sandbox started but not for this run: refusing to \
                 run weaker (caller uid {})",
                policy.uid
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Stage 1: outer.

fn outer(policy_json: &str) -> i32 {
    let policy = match parse_policy(policy_json) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sandbox-exec: {e:#}");
            return SETUP_FAILED;
        }
    };
    let mut isolation = Isolation {
        running_as_root: geteuid().is_root(),
        ..Default::default()
    };
    let result = outer_run(&policy, policy_json, &mut isolation);
    let status = match result {
        Ok(exit) => Status {
            protocol: PROTOCOL,
            isolation,
            exit: Some(exit),
            error: None,
        },
        Err(e) => Status {
            protocol: PROTOCOL,
            isolation,
            exit: None,
            error: Some(format!("{e:#}")),
        },
    };
    let code = status.exit.map(exit_code).unwrap_or(SETUP_FAILED);
    if let Err(e) = write_json(&policy.run_dir.join(STATUS_FILE), &status) {
        eprintln!("sandbox-exec: {e:#}");
        return SETUP_FAILED;
    }
    code
}

fn outer_run(policy: &Policy, policy_json: &str, iso: &mut Isolation) -> Result<Exit> {
    let start = Instant::now();
    let program = std::fs::read(policy.run_dir.join(PROGRAM_FILE)).context("reading the program")?;
    enter_namespaces(policy, iso)?;
    let work = policy.run_dir.join(WORK_DIR);
    if iso.mount_namespace {
        // Nothing mounted here may propagate back to the host.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .context("making the mount namespace private")?;
        let opts = format!("size={}m,nr_inodes=16384,mode=0700", policy.limits.workdir_mb.max(1));
        iso.tmpfs_workdir = mount(
            Some("tmpfs"),
            &work,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )
        .is_ok();
    }
    require(
        policy,
        &[("tmpfs_workdir", policy.require.tmpfs_workdir, iso.tmpfs_workdir)],
    )?;
    std::fs::write(work.join(MAIN_FILE), program).context("writing main.py into the working directory")?;

    let me = std::env::current_exe().context("locating sandbox-exec itself")?;
    let mut init = Command::new(&me)
        .arg("init")
        .arg(policy_json)
        .arg(serde_json::to_string(iso)?)
        .env_clear()
        .stdin(Stdio::null())
        .spawn()
        .context("starting the sandbox's init")?;
    let deadline = start + policy.limits.timeout;
    // Polls with a step that grows from 1 ms to 10 ms: short programs return quickly, long ones
    // cost few wake-ups (hundreds of runs may wait at once).
    let mut step = Duration::from_millis(1);
    let timed_out = loop {
        if init.try_wait()?.is_some() {
            break false;
        }
        let now = Instant::now();
        if now >= deadline {
            // init is PID 1 of the run's PID namespace: killing it kills every process in it.
            let _ = init.kill();
            let _ = init.wait();
            break true;
        }
        std::thread::sleep((deadline - now).min(step));
        step = (step * 2).min(Duration::from_millis(10));
    };
    if timed_out {
        // Every layer was in place before the program started: the exec stage reported them then.
        if let Ok(text) = std::fs::read_to_string(policy.run_dir.join(EXEC_REPORT)) {
            if let Ok(r) = serde_json::from_str::<ExecReport>(&text) {
                *iso = r.isolation;
            }
        }
        return Ok(Exit::TimedOut);
    }
    let text =
        std::fs::read_to_string(policy.run_dir.join(INIT_REPORT)).context("the sandbox's init left no report")?;
    let report: InitReport = serde_json::from_str(&text).context("parsing the init report")?;
    *iso = report.isolation;
    if let Some(e) = report.error {
        bail!(e);
    }
    report.exit.context("the init report has neither an exit nor an error")
}

fn enter_namespaces(policy: &Policy, iso: &mut Isolation) -> Result<()> {
    let rest = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    let (uid, gid) = (geteuid().as_raw(), getegid().as_raw());
    if unshare(CloneFlags::CLONE_NEWUSER | rest).is_ok() {
        // Map uid 0 inside to the caller; no other uid exists in the namespace.
        std::fs::write("/proc/self/setgroups", "deny").context("writing /proc/self/setgroups")?;
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).context("writing /proc/self/uid_map")?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).context("writing /proc/self/gid_map")?;
        iso.user_namespace = true;
        iso.mount_namespace = true;
        iso.pid_namespace = true;
        iso.net_namespace = true;
        iso.ipc_uts_namespace = true;
    } else if uid == 0 && unshare(rest).is_ok() {
        // Root without user namespaces (e.g. disabled by sysctl): the same namespaces, owned by root.
        iso.mount_namespace = true;
        iso.pid_namespace = true;
        iso.net_namespace = true;
        iso.ipc_uts_namespace = true;
    }
    let r = &policy.require;
    require(
        policy,
        &[
            ("user_namespace", r.user_namespace, iso.user_namespace),
            ("mount_namespace", r.mount_namespace, iso.mount_namespace),
            ("pid_namespace", r.pid_namespace, iso.pid_namespace),
            ("net_namespace", r.net_namespace, iso.net_namespace),
            ("ipc_uts_namespace", r.ipc_uts_namespace, iso.ipc_uts_namespace),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// Stage 2: init.

fn init(policy_json: &str, iso_json: Option<&String>) -> i32 {
    let policy = match parse_policy(policy_json) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sandbox-exec init: {e:#}");
            return SETUP_FAILED;
        }
    };
    let mut report = InitReport::default();
    if let Some(iso) = iso_json.and_then(|j| serde_json::from_str(j).ok()) {
        report.isolation = iso;
    }
    let code = match init_run(&policy, &mut report) {
        Ok(exit) => {
            report.exit = Some(exit);
            0
        }
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            SETUP_FAILED
        }
    };
    if let Err(e) = write_json(&policy.run_dir.join(INIT_REPORT), &report) {
        eprintln!("sandbox-exec init: {e:#}");
        return SETUP_FAILED;
    }
    // Exiting as PID 1 makes the kernel kill everything else left in the namespace.
    code
}

fn init_run(policy: &Policy, report: &mut InitReport) -> Result<Exit> {
    // If the outer stage dies (killed by the library at its hard deadline), take the namespace down too.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("setting the parent-death signal")?;
    let iso = &mut report.isolation;
    if iso.pid_namespace && iso.mount_namespace {
        // A /proc of this PID namespace: only the run's own processes are visible in it.
        iso.fresh_proc = mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .is_ok();
        if iso.fresh_proc {
            // Linux ≥ 6.14 keeps a pid_max per PID namespace (at least 301): a hard cap on tasks
            // that holds even for root, whom RLIMIT_NPROC does not bind.
            let want = (policy.limits.max_tasks + 3).max(301);
            let path = "/proc/sys/kernel/pid_max";
            if std::fs::write(path, want.to_string()).is_ok() {
                let got = std::fs::read_to_string(path).unwrap_or_default();
                if got.trim().parse::<u64>().ok() == Some(want) {
                    iso.pid_max = want;
                }
            }
        }
    }
    let r = &policy.require;
    require(
        policy,
        &[
            ("fresh_proc", r.fresh_proc, iso.fresh_proc),
            ("pid_max", r.pid_max > 0, iso.pid_max > 0),
        ],
    )?;
    let me = std::env::current_exe().context("locating sandbox-exec itself")?;
    let _ = std::fs::remove_file(policy.run_dir.join(EXEC_REPORT));
    let child = Command::new(&me)
        .arg("exec")
        .arg(serde_json::to_string(policy)?)
        .arg(serde_json::to_string(iso)?)
        .env_clear()
        .stdin(Stdio::null())
        .spawn()
        .context("starting the sandbox's exec stage")?;
    let program = Pid::from_raw(child.id() as i32);
    // Reap every process that ends up here (orphans are re-parented to PID 1) until the program exits.
    let exit = loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == program => break Exit::Code(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == program => break Exit::Signal(sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("waiting for the program: {e}"),
        }
    };
    let text = std::fs::read_to_string(policy.run_dir.join(EXEC_REPORT)).context("the exec stage left no report")?;
    let exec: ExecReport = serde_json::from_str(&text).context("parsing the exec report")?;
    *iso = exec.isolation;
    if let Some(e) = exec.error {
        bail!(e);
    }
    Ok(exit)
}

// ---------------------------------------------------------------------------------------------
// Stage 3: exec.

fn exec(policy_json: &str, iso_json: Option<&String>) -> i32 {
    let policy = match parse_policy(policy_json) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sandbox-exec exec: {e:#}");
            return SETUP_FAILED;
        }
    };
    let mut report = ExecReport::default();
    if let Some(iso) = iso_json.and_then(|j| serde_json::from_str(j).ok()) {
        report.isolation = iso;
    }
    // Opened before Landlock, close-on-exec: the interpreter never holds it.
    let path = policy.run_dir.join(EXEC_REPORT);
    let mut file = match std::fs::File::create(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sandbox-exec exec: creating {}: {e}", path.display());
            return SETUP_FAILED;
        }
    };
    let err = match restrict(&policy, &mut report.isolation) {
        Ok(mut cmd) => {
            if let Err(e) = serde_json::to_writer(&mut file, &report)
                .map_err(anyhow::Error::from)
                .and_then(|_| {
                    file.flush()?;
                    Ok(())
                })
            {
                eprintln!("sandbox-exec exec: writing {}: {e:#}", path.display());
                return SETUP_FAILED;
            }
            // Only returns on failure.
            let e = cmd.exec();
            anyhow::Error::from(e).context(format!("starting {}", policy.python.display()))
        }
        Err(e) => e,
    };
    report.error = Some(format!("{err:#}"));
    let _ = std::fs::write(&path, serde_json::to_string(&report).unwrap_or_default());
    SETUP_FAILED
}

/// Applies every per-process restriction to this process and returns the interpreter's command.
fn restrict(policy: &Policy, iso: &mut Isolation) -> Result<Command> {
    let work = policy.run_dir.join(WORK_DIR);
    let limits = &policy.limits;
    set_rlimits(limits)?;
    // RLIMIT_NPROC counts the tasks of the caller's uid *in this user namespace* (Linux ≥ 5.14),
    // so it is a per-run budget; root (uid 0 outside) is exempt from it.
    if iso.user_namespace && policy.uid != 0 {
        // outer, init and this stage count too.
        let n = limits.max_tasks + 3;
        setrlimit(Resource::RLIMIT_NPROC, n, n).context("setting RLIMIT_NPROC")?;
        iso.nproc_limit = true;
    }
    iso.caps_dropped = drop_capabilities();
    landlock(policy, &work, iso)?;
    seccomp(policy.allow_fork, iso)?;
    let r = &policy.require;
    require(
        policy,
        &[
            ("nproc_limit", r.nproc_limit, iso.nproc_limit),
            ("caps_dropped", r.caps_dropped, iso.caps_dropped),
            ("landlock_fs", r.landlock_fs, iso.landlock_fs),
            ("landlock_net", r.landlock_net, iso.landlock_net),
            ("landlock_scopes", r.landlock_scopes, iso.landlock_scopes),
            ("seccomp", r.seccomp, iso.seccomp),
            ("no_fork", r.no_fork, iso.no_fork),
        ],
    )?;
    if iso.landlock_abi < r.landlock_abi {
        bail!("Landlock ABI {} < {} required", iso.landlock_abi, r.landlock_abi);
    }
    let mut cmd = Command::new(&policy.python);
    cmd.arg("-I")
        .arg(MAIN_FILE)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &work)
        .env("TMPDIR", &work)
        .env("LANG", "C.UTF-8")
        .current_dir(&work);
    Ok(cmd)
}

fn set_rlimits(l: &Limits) -> Result<()> {
    let mib = |m: u64| m.saturating_mul(1 << 20);
    let cpu = l.cpu_secs();
    for (res, soft, hard, name) in [
        (Resource::RLIMIT_AS, mib(l.memory_mb), mib(l.memory_mb), "RLIMIT_AS"),
        (
            Resource::RLIMIT_FSIZE,
            mib(l.file_size_mb),
            mib(l.file_size_mb),
            "RLIMIT_FSIZE",
        ),
        // SIGXCPU at the soft limit, SIGKILL one second later.
        (Resource::RLIMIT_CPU, cpu, cpu + 1, "RLIMIT_CPU"),
        (Resource::RLIMIT_NOFILE, l.open_files, l.open_files, "RLIMIT_NOFILE"),
        (Resource::RLIMIT_CORE, 0, 0, "RLIMIT_CORE"),
        (Resource::RLIMIT_MEMLOCK, 0, 0, "RLIMIT_MEMLOCK"),
        (Resource::RLIMIT_MSGQUEUE, 0, 0, "RLIMIT_MSGQUEUE"),
    ] {
        setrlimit(res, soft, hard).with_context(|| format!("setting {name}"))?;
    }
    Ok(())
}

/// Drops every capability, the bounding set included, so that exec as (namespace) root gains none.
fn drop_capabilities() -> bool {
    use caps::CapSet;
    for cap in caps::all() {
        let _ = caps::drop(None, CapSet::Bounding, cap);
    }
    let _ = caps::clear(None, CapSet::Ambient);
    let _ = caps::clear(None, CapSet::Inheritable);
    let _ = caps::clear(None, CapSet::Effective);
    let _ = caps::clear(None, CapSet::Permitted);
    let empty = |set| caps::read(None, set).map(|s| s.is_empty()).unwrap_or(false);
    // Without uid 0 (outside a user namespace, as a normal user) exec grants nothing anyway.
    empty(CapSet::Permitted) && empty(CapSet::Effective) && (!getuid().is_root() || empty(CapSet::Bounding))
}

/// Paths every Python needs to start: system libraries and a few files of `/etc` (not all of
/// it: `/etc/shadow` and the like stay out even where the uid could read them).
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/os-release",
    "/etc/alternatives",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
];

fn landlock(policy: &Policy, work: &Path, iso: &mut Isolation) -> Result<()> {
    // The newest ABI this crate knows; the crate keeps what the running kernel supports.
    let abi = ABI::V10;
    let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir("/etc") {
        // Distribution Python configuration (e.g. Debian's /etc/python3.11/sitecustomize.py).
        read.extend(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
                .map(|e| e.path()),
        );
    }
    read.extend(policy.read_paths.iter().cloned());
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(&read, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(["/dev/null"], AccessFs::from_all(abi)))?
        .add_rules(path_beneath_rules([work], AccessFs::from_all(abi)))?
        .restrict_self()
        .context("enforcing Landlock")?;
    if let LandlockStatus::Available { effective_abi, .. } = status.landlock {
        let v = effective_abi as u32;
        iso.landlock_abi = v;
        iso.landlock_fs = v >= 1 && status.ruleset != landlock::RulesetStatus::NotEnforced;
        iso.landlock_net = v >= 4 && iso.landlock_fs;
        iso.landlock_scopes = v >= 6 && iso.landlock_fs;
    }
    Ok(())
}

/// System calls a graded program never needs and that widen the kernel surface or reach out of
/// the sandbox: all sockets (socketpair stays), tracing, mounts, namespaces, keyrings, BPF,
/// io_uring, modules, clocks, reboot...
fn denied_syscalls() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_socket,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_syslog,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_fanotify_init,
        libc::SYS_kcmp,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_pidfd_getfd,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    v
}

fn seccomp(allow_fork: bool, iso: &mut Isolation) -> Result<()> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).context("seccomp does not know this architecture")?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = denied_syscalls().into_iter().map(|s| (s, vec![])).collect();
    if !allow_fork {
        // clone without CLONE_THREAD makes a process; with it, a thread (still allowed).
        let no_thread = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            seccompiler::SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )?;
        rules.insert(libc::SYS_clone, vec![SeccompRule::new(vec![no_thread])?]);
        #[cfg(target_arch = "x86_64")]
        {
            rules.insert(libc::SYS_fork, vec![]);
            rules.insert(libc::SYS_vfork, vec![]);
        }
    }
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let deny: BpfProgram = deny.try_into()?;
    if !allow_fork {
        // clone3 passes its flags in memory, out of seccomp's sight: ENOSYS makes libc fall back
        // to clone, whose flags the filter above checks.
        let clone3 = SeccompFilter::new(
            [(libc::SYS_clone3, vec![])].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?;
        let clone3: BpfProgram = clone3.try_into()?;
        seccompiler::apply_filter(&clone3).context("installing the clone3 seccomp filter")?;
    }
    seccompiler::apply_filter(&deny).context("installing the seccomp filter")?;
    iso.seccomp = true;
    iso.no_fork = !allow_fork;
    Ok(())
}
