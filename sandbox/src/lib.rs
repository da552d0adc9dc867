//! A sandbox for untrusted programs — the Python that a model writes during RL and that the
//! grader runs. Layers, strongest first (each one that the kernel allows unprivileged):
//!
//! - **Namespaces**: a new user namespace (uid 0 inside = the caller outside, no other uid),
//!   PID namespace (the program sees and can signal only its own processes; when the
//!   program exits or the deadline passes, its init exits and the kernel kills everything left),
//!   network namespace (no interface up: no network, not even 127.0.0.1), mount namespace
//!   (a private size-limited tmpfs as working directory, a fresh `/proc`), IPC and UTS.
//! - **Landlock**: read-only system folders and interpreter prefixes, read-write working
//!   directory, nothing else (no `/etc/shadow`, no home, no `/proc`); TCP denied; signals and
//!   abstract UNIX sockets scoped to the sandbox.
//! - **seccomp**: no sockets, ptrace, mounts, namespaces, keyrings, BPF, io_uring, modules...;
//!   by default no new processes either (threads allowed), which stops fork bombs even for root.
//! - **rlimits**: address space, CPU time, file size, open files, tasks (`RLIMIT_NPROC`, per run
//!   in its own user namespace; root is exempt, hence the seccomp rule and the per-namespace
//!   `pid_max`), no core dumps.
//! - **Process group and deadline**: the library kills the run's process group at the deadline
//!   and reads output with a deadline of its own, never waiting on a pipe to close.
//!
//! The restrictions are applied by the `sandbox-exec` wrapper binary of this crate (three
//! single-threaded exec'd stages), never between `fork` and `exec` of the caller, which may be
//! a multi-threaded trainer; see [`wrapper`]. [`Sandbox::new`] probes which layers the machine
//! gives and refuses to run when a guarantee is missing unless `allow_weak` is set.
//!
//! ```no_run
//! use sandbox::{Limits, Sandbox, SandboxOptions};
//! let sb = Sandbox::new(SandboxOptions::default())?;
//! eprintln!("sandbox: {}", sb.isolation());
//! let r = sb.run("print(6 * 7)", &Limits::default())?;
//! assert_eq!(r.stdout_text(), "42\n");
//! # anyhow::Ok(())
//! ```
pub mod policy;
mod run;
#[doc(hidden)]
pub mod wrapper;

pub use policy::{Exit, Isolation, Limits};
pub use run::{locate_exec, RunResult, Sandbox, SandboxOptions, EXEC_ENV, EXEC_NAME};
