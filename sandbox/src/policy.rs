//! What the library and the `sandbox-exec` wrapper tell each other: the policy of one run
//! (argv of the wrapper, JSON) and the status it leaves behind (a JSON file in the run folder).
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Version of the library ⇄ wrapper protocol. The wrapper refuses a policy of another version,
/// so a stale `sandbox-exec` next to a newer library is an error, not a silent weaker sandbox.
pub const PROTOCOL: u32 = 1;

/// Per-run resource limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock limit of the whole run; at the deadline every process of the run is killed.
    pub timeout: Duration,
    /// Address-space limit of each process (`RLIMIT_AS`), in MiB.
    pub memory_mb: u64,
    /// CPU-time limit of each process (`RLIMIT_CPU`), in seconds; `None`: the timeout rounded up, plus one.
    pub cpu_secs: Option<u64>,
    /// Largest file a process may write (`RLIMIT_FSIZE`), in MiB.
    pub file_size_mb: u64,
    /// Size of the private tmpfs that backs the working directory, in MiB (all files together).
    pub workdir_mb: u64,
    /// Open file descriptors per process (`RLIMIT_NOFILE`).
    pub open_files: u64,
    /// Tasks (processes and threads) of the run (`RLIMIT_NPROC` in the run's own user namespace,
    /// and the PID namespace's `pid_max`, which the kernel keeps at 301 or more).
    pub max_tasks: u64,
    /// Bytes of standard output kept; the rest is read and dropped.
    pub stdout_bytes: usize,
    /// Bytes of standard error kept; the rest is read and dropped.
    pub stderr_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(2),
            memory_mb: 256,
            cpu_secs: None,
            file_size_mb: 16,
            workdir_mb: 64,
            open_files: 64,
            max_tasks: 32,
            stdout_bytes: 1 << 20,
            stderr_bytes: 1 << 16,
        }
    }
}

impl Limits {
    /// The CPU-time limit in seconds.
    pub fn cpu_secs(&self) -> u64 {
        self.cpu_secs
            .unwrap_or_else(|| self.timeout.as_secs() + u64::from(self.timeout.subsec_nanos() > 0) + 1)
    }
}

/// Which isolation layers a run got. A [`crate::Sandbox`] probes them once at start-up
/// ([`crate::Sandbox::isolation`]) and then requires every later run to get at least as much.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// The caller runs as root (uid 0): `RLIMIT_NPROC` does not bind root.
    pub running_as_root: bool,
    /// A new user namespace (uid 0 inside mapped to the caller's uid; no other uid exists there).
    pub user_namespace: bool,
    /// A new PID namespace: the program cannot see or signal outside processes, and when its
    /// init (the wrapper) exits the kernel kills every process left in it.
    pub pid_namespace: bool,
    /// A new network namespace with no interfaces up: no network, not even loopback.
    pub net_namespace: bool,
    /// A new mount namespace (private mounts).
    pub mount_namespace: bool,
    /// New IPC and UTS namespaces (System V IPC and the host name are private).
    pub ipc_uts_namespace: bool,
    /// The working directory is a private size-limited tmpfs, gone when the run ends.
    pub tmpfs_workdir: bool,
    /// A fresh `/proc` for the PID namespace.
    pub fresh_proc: bool,
    /// `pid_max` of the PID namespace (0: not set).
    pub pid_max: u64,
    /// Landlock ABI in force (0: none).
    pub landlock_abi: u32,
    /// Landlock restricts the file system: read-only system and interpreter paths, read-write
    /// working directory, nothing else.
    pub landlock_fs: bool,
    /// Landlock denies TCP bind and connect.
    pub landlock_net: bool,
    /// Landlock scopes: no signals to, and no abstract UNIX sockets of, processes outside the sandbox.
    pub landlock_scopes: bool,
    /// A seccomp filter denies sockets, ptrace, mounts, namespaces, keyrings, BPF, io_uring,
    /// module loading and similar system calls.
    pub seccomp: bool,
    /// The seccomp filter also denies creating processes (threads stay allowed).
    pub no_fork: bool,
    /// `RLIMIT_NPROC` binds the run (caller not root, user namespace: counted per run).
    pub nproc_limit: bool,
    /// All capabilities (bounding set included) are dropped before the program starts.
    pub caps_dropped: bool,
}

impl Isolation {
    /// The guarantees this isolation does not give, in words; empty when it gives them all.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if !self.landlock_fs {
            m.push("file system confinement (writes outside the working directory, reading secrets)");
        }
        if !(self.net_namespace || self.seccomp) {
            m.push("no network");
        }
        if !(self.pid_namespace || self.landlock_scopes) {
            m.push("no signals to the caller");
        }
        if !(self.pid_namespace || self.no_fork) {
            m.push("no surviving background processes");
        }
        if !self.tmpfs_workdir {
            m.push("bounded disk use (a size-limited tmpfs working directory)");
        }
        if !(self.no_fork || self.nproc_limit || self.pid_max > 0) {
            m.push("a bound on the number of processes (fork bombs)");
        }
        m
    }

    /// Some guarantee is missing (at worst only rlimits and the process group are left).
    pub fn is_weak(&self) -> bool {
        !self.missing().is_empty()
    }

    /// Every layer `self` requires is present in `other`.
    pub fn satisfied_by(&self, other: &Isolation) -> bool {
        let layers = |i: &Isolation| {
            [
                i.user_namespace,
                i.pid_namespace,
                i.net_namespace,
                i.mount_namespace,
                i.ipc_uts_namespace,
                i.tmpfs_workdir,
                i.fresh_proc,
                i.pid_max > 0,
                i.landlock_fs,
                i.landlock_net,
                i.landlock_scopes,
                i.seccomp,
                i.no_fork,
                i.nproc_limit,
                i.caps_dropped,
            ]
        };
        layers(self).iter().zip(layers(other)).all(|(need, got)| !need || got)
            && other.landlock_abi >= self.landlock_abi
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |b: bool| if b { "on" } else { "OFF" };
        write!(
            f,
            "namespaces: user {} pid {} net {} mount {} ipc/uts {}; tmpfs workdir {}; fresh /proc {}; pid_max {}; \
             landlock abi {} (fs {} net {} scopes {}); seccomp {} (no fork {}); RLIMIT_NPROC binding {}; caps dropped {}; \
             rlimits on; process group on; as root {}",
            on(self.user_namespace),
            on(self.pid_namespace),
            on(self.net_namespace),
            on(self.mount_namespace),
            on(self.ipc_uts_namespace),
            on(self.tmpfs_workdir),
            on(self.fresh_proc),
            self.pid_max,
            self.landlock_abi,
            on(self.landlock_fs),
            on(self.landlock_net),
            on(self.landlock_scopes),
            on(self.seccomp),
            on(self.no_fork),
            on(self.nproc_limit),
            on(self.caps_dropped),
            self.running_as_root,
        )?;
        let missing = self.missing();
        if !missing.is_empty() {
            write!(f, "; MISSING: {}", missing.join(", "))?;
        }
        Ok(())
    }
}

/// Everything the wrapper needs for one run (passed as one JSON argument).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Policy {
    /// Must equal [`PROTOCOL`].
    pub protocol: u32,
    /// The run folder (the library's, private): holds `program.py`, `status.json` and `work/`.
    pub run_dir: PathBuf,
    /// The interpreter (absolute path, as the interpreter reports it in `sys.executable`).
    pub python: PathBuf,
    /// Paths the program may read and execute besides the system folders (interpreter prefixes).
    pub read_paths: Vec<PathBuf>,
    /// Limits.
    pub limits: Limits,
    /// Allow creating processes (otherwise seccomp denies fork/clone of processes).
    pub allow_fork: bool,
    /// Layers that must be present; a run that cannot get one of them fails instead of running weaker.
    pub require: Isolation,
    /// The caller's effective uid and gid (mapped to 0 in the run's user namespace).
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
}

/// How the program ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal (e.g. 9 after `RLIMIT_CPU`, 11 on a crash).
    Signal(i32),
    /// Still running at the deadline; every process of the run was killed.
    TimedOut,
}

/// What the wrapper leaves in `status.json` of the run folder.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// The wrapper's [`PROTOCOL`].
    pub protocol: u32,
    /// Layers the run got.
    pub isolation: Isolation,
    /// How the program ended (`None` with `error`).
    pub exit: Option<Exit>,
    /// The sandbox itself failed (set-up, a required layer missing): the program did not run.
    pub error: Option<String>,
}

/// Relative name of the folder inside the run folder that becomes the working directory.
pub const WORK_DIR: &str = "work";
/// Relative name of the program file inside the run folder.
pub const PROGRAM_FILE: &str = "program.py";
/// Relative name of the status file inside the run folder.
pub const STATUS_FILE: &str = "status.json";
/// Name of the program inside the working directory.
pub const MAIN_FILE: &str = "main.py";
