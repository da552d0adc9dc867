//! Data-parallel training on PyTorch's distributed runtime (c10d: Gloo on CPU, NCCL on CUDA),
//! for processes started by `torchrun`.
//!
//! A plain start is world size 1 and touches none of this. Under `torchrun` (`WORLD_SIZE` > 1)
//! the process embeds the Python interpreter whose `torch` is the libtorch this binary runs on,
//! and calls `torch.distributed` there: `init_process_group` from torchrun's environment
//! (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, and the agent's store, which every rank
//! joins as a client), then `all_reduce`, `broadcast` and `barrier` on tensors that Python views
//! in place: the same memory, no copy (`__array_interface__`-style views of CPU memory,
//! `__cuda_array_interface__` of GPU memory).
//!
//! Why this way: tch does not wrap c10d, and the `torch` wheel ships no Gloo headers to build a
//! C++ bridge against. Embedding Python reuses the exact collective code PyTorch users run. The
//! interpreter is loaded with `dlopen` at the first collective, not linked: binaries keep no
//! dependency on libpython, and a single-process run never loads it. Tensors cross as raw
//! pointers rather than through `libtorch_python` (tch's `python-extension` feature), which
//! would make every binary need Python's symbols at start.
//!
//! Python is found as `$L2E_PYTHON`, else `python3` on `PATH`; it must import the same
//! libtorch this process loaded (checked, so two copies never share a process).
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// This process's place among the ranks of a data-parallel run.
pub struct Dist {
    /// Global rank (0 writes checkpoints and logs).
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Rank on this machine (picks the GPU).
    pub local_rank: usize,
    /// Ranks on this machine (share its cores).
    pub local_world: usize,
    py: Option<Python>,
}

/// Reductions of [`Dist::all_reduce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Elementwise sum.
    Sum,
    /// Elementwise maximum.
    Max,
}

static DIST: OnceLock<Dist> = OnceLock::new();
static SINGLE: Dist = Dist {
    rank: 0,
    world: 1,
    local_rank: 0,
    local_world: 1,
    py: None,
};

/// Ranks as torchrun's environment gives them; world size 1 without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranks {
    /// `RANK`.
    pub rank: usize,
    /// `WORLD_SIZE`.
    pub world: usize,
    /// `LOCAL_RANK`.
    pub local_rank: usize,
    /// `LOCAL_WORLD_SIZE`.
    pub local_world: usize,
}

impl Ranks {
    /// Reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE` through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Ranks> {
        let num = |k: &str, default: Option<usize>| -> Result<usize> {
            match get(k) {
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .with_context(|| format!("${k} = {v:?} is not a number")),
                None => default.ok_or_else(|| anyhow!("${k} is not set; start ranks with torchrun, which sets it")),
            }
        };
        let world = num("WORLD_SIZE", Some(1))?;
        if world <= 1 {
            return Ok(Ranks {
                rank: 0,
                world: 1,
                local_rank: 0,
                local_world: 1,
            });
        }
        let rank = num("RANK", None)?;
        let local_rank = num("LOCAL_RANK", Some(rank))?;
        let local_world = num("LOCAL_WORLD_SIZE", Some(world))?;
        if rank >= world || local_rank >= local_world {
            bail!("RANK {rank} / WORLD_SIZE {world}, LOCAL_RANK {local_rank} / LOCAL_WORLD_SIZE {local_world}: a rank out of range");
        }
        Ok(Ranks {
            rank,
            world,
            local_rank,
            local_world,
        })
    }

    /// From this process's environment.
    pub fn from_env() -> Result<Ranks> {
        Ranks::from_vars(|k| std::env::var(k).ok())
    }
}

/// The ranks of this process, read once from the environment (world size 1 without torchrun).
pub fn ranks() -> Ranks {
    static R: OnceLock<Ranks> = OnceLock::new();
    *R.get_or_init(|| {
        Ranks::from_env().unwrap_or(Ranks {
            rank: 0,
            world: 1,
            local_rank: 0,
            local_world: 1,
        })
    })
}

/// The process group of this run: world size 1 without torchrun, else joined once (Gloo on
/// CPU, NCCL on CUDA; `device` picks). Later calls return the same group.
pub fn init(device: Device) -> Result<&'static Dist> {
    if let Some(d) = DIST.get() {
        return Ok(d);
    }
    let r = Ranks::from_env()?;
    if r.world == 1 {
        return Ok(&SINGLE);
    }
    let backend = if device.is_cuda() { "nccl" } else { "gloo" };
    let py = Python::load()?;
    let timeout: u64 = std::env::var("L2E_DIST_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800);
    let gpu = match device {
        Device::Cuda(i) => i as i64,
        _ => -1,
    };
    py.exec(&format!("_l2e_init({backend:?}, {timeout}, {gpu})"))
        .with_context(|| {
            format!(
                "rank {} of {}: joining the process group ({backend}) at {}:{} failed",
                r.rank,
                r.world,
                std::env::var("MASTER_ADDR").unwrap_or_default(),
                std::env::var("MASTER_PORT").unwrap_or_default()
            )
        })?;
    let d = Dist {
        rank: r.rank,
        world: r.world,
        local_rank: r.local_rank,
        local_world: r.local_world,
        py: Some(py),
    };
    Ok(DIST.get_or_init(|| d))
}

/// The process group joined by [`init`], or world size 1.
pub fn current() -> &'static Dist {
    DIST.get().unwrap_or(&SINGLE)
}

impl Dist {
    /// Rank 0, which writes checkpoints, logs and reports.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// More than one rank.
    pub fn is_parallel(&self) -> bool {
        self.world > 1
    }

    fn py(&self) -> Option<&Python> {
        self.py.as_ref()
    }

    /// Reduces `t` (contiguous) across ranks in place.
    pub fn all_reduce(&self, t: &Tensor, op: Op) -> Result<()> {
        let Some(py) = self.py() else { return Ok(()) };
        let (ptr, numel, kind, dev) = raw(t)?;
        let op = match op {
            Op::Sum => 0,
            Op::Max => 1,
        };
        py.exec(&format!("_l2e_all_reduce({ptr}, {numel}, {kind}, {dev}, {op})"))
            .with_context(|| self.failed("all_reduce"))
    }

    /// Copies rank `src`'s `t` (contiguous) into every rank's `t`.
    pub fn broadcast(&self, t: &Tensor, src: usize) -> Result<()> {
        let Some(py) = self.py() else { return Ok(()) };
        let (ptr, numel, kind, dev) = raw(t)?;
        py.exec(&format!("_l2e_broadcast({ptr}, {numel}, {kind}, {dev}, {src})"))
            .with_context(|| self.failed("broadcast"))
    }

    /// Waits until every rank gets here.
    pub fn barrier(&self) -> Result<()> {
        let Some(py) = self.py() else { return Ok(()) };
        py.exec("_l2e_barrier()").with_context(|| self.failed("barrier"))
    }

    /// Rank 0's `bytes` on every rank (others pass anything, e.g. nothing).
    pub fn broadcast_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        if !self.is_parallel() {
            return Ok(bytes.to_vec());
        }
        let len = Tensor::from_slice(&[bytes.len() as i64]);
        self.broadcast(&len, 0)?;
        let n = len.int64_value(&[0]) as usize;
        let buf = if self.is_main() {
            Tensor::from_slice(bytes)
        } else {
            Tensor::zeros([n as i64], (Kind::Uint8, Device::Cpu))
        };
        if n > 0 {
            self.broadcast(&buf, 0)?;
        }
        Ok(Vec::<u8>::try_from(&buf)?)
    }

    /// Whether any rank says `flag` (e.g. "interrupted"): every rank gets the same answer.
    pub fn any(&self, flag: bool, device: Device) -> Result<bool> {
        if !self.is_parallel() {
            return Ok(flag);
        }
        let t = Tensor::from_slice(&[f32::from(u8::from(flag))]).to_device(device);
        self.all_reduce(&t, Op::Max)?;
        Ok(t.double_value(&[0]) > 0.0)
    }

    /// Sums the gradients of `vars` (trainable; zeros where this rank made none) and `extra` (e.g. a loss) over the
    /// ranks, in buckets of about 25 MB (one collective per bucket, as DDP): each bucket is
    /// flattened into one buffer, reduced, and copied back. Returns the summed `extra`.
    pub fn sum_grads(&self, vars: &[Tensor], extra: &[f64]) -> Result<Vec<f64>> {
        if !self.is_parallel() {
            return Ok(extra.to_vec());
        }
        // A variable no micro-batch of this rank reached has no gradient yet: give it zeros, so
        // that every rank reduces the same buffers and applies the same sum.
        for v in vars {
            if !v.grad().defined() {
                (v.sum(Kind::Float) * 0.0).backward();
            }
        }
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = vars.iter().map(Tensor::grad).collect();
        let device = grads.first().map_or(Device::Cpu, Tensor::device);
        let mut extra_t = Tensor::from_slice(extra).to_kind(Kind::Float).to_device(device);
        const BUCKET_BYTES: i64 = 25 << 20;
        let mut buckets: Vec<Vec<&Tensor>> = vec![Vec::new()];
        let mut bytes = 0;
        for g in &grads {
            let b = g.numel() as i64 * 4;
            if bytes > 0 && bytes + b > BUCKET_BYTES {
                buckets.push(Vec::new());
                bytes = 0;
            }
            buckets.last_mut().expect("a bucket").push(g);
            bytes += b;
        }
        for (i, bucket) in buckets.iter().enumerate() {
            let mut parts: Vec<Tensor> = bucket.iter().map(|g| g.to_kind(Kind::Float).reshape([-1])).collect();
            if i == 0 {
                parts.push(extra_t.shallow_clone());
            }
            if parts.is_empty() {
                continue;
            }
            let flat = Tensor::cat(&parts, 0);
            self.all_reduce(&flat, Op::Sum)?;
            let mut at = 0i64;
            for g in bucket {
                let n = g.numel() as i64;
                g.shallow_clone()
                    .view([-1])
                    .copy_(&flat.narrow(0, at, n).to_kind(g.kind()));
                at += n;
            }
            if i == 0 {
                extra_t.copy_(&flat.narrow(0, at, extra.len() as i64));
            }
        }
        Ok(Vec::<f64>::try_from(
            extra_t.to_kind(Kind::Double).to_device(Device::Cpu),
        )?)
    }

    /// Copies rank 0's values of `tensors` into every rank's (weights, optimiser state).
    pub fn sync_from_main(&self, tensors: &[Tensor]) -> Result<()> {
        if !self.is_parallel() {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        for t in tensors {
            if t.is_contiguous() {
                self.broadcast(t, 0)?;
            } else {
                let c = t.contiguous();
                self.broadcast(&c, 0)?;
                t.shallow_clone().copy_(&c);
            }
        }
        Ok(())
    }

    fn failed(&self, what: &str) -> String {
        let others = if self.world == 2 {
            format!("rank {}", 1 - self.rank)
        } else {
            "another rank".into()
        };
        format!(
            "rank {} of {}: {what} failed: {others} died or stopped answering (a closed connection, or no answer \
             within L2E_DIST_TIMEOUT_S; the Python traceback above has the details, and torchrun's summary names \
             the rank that exited first)",
            self.rank, self.world
        )
    }
}

/// A tensor's memory as Python's side views it: address, elements, kind code, GPU (-1: CPU).
fn raw(t: &Tensor) -> Result<(usize, i64, u8, i64)> {
    if !t.is_contiguous() {
        bail!("a collective needs a contiguous tensor");
    }
    let kind = match t.kind() {
        Kind::Float => 0,
        Kind::Double => 1,
        Kind::BFloat16 => 2,
        Kind::Int64 => 3,
        Kind::Uint8 => 4,
        k => bail!("collectives on {k:?} tensors are not supported"),
    };
    let dev = match t.device() {
        Device::Cuda(i) => i as i64,
        Device::Cpu => -1,
        d => bail!("collectives on {d:?} are not supported"),
    };
    Ok((t.data_ptr() as usize, t.numel() as i64, kind, dev))
}

/// The Python side: views of our memory and the collectives on them.
const BRIDGE: &str = r#"
import ctypes as _ct, datetime as _dt
import torch as _torch, torch.distributed as _dist
_L2E_KINDS = {0: _torch.float32, 1: _torch.float64, 2: _torch.bfloat16, 3: _torch.int64, 4: _torch.uint8}
_L2E_CAI = {0: "<f4", 1: "<f8", 3: "<i8", 4: "|u1"}
def _l2e_view(ptr, numel, kind, dev):
    dtype = _L2E_KINDS[kind]
    if dev < 0:
        size = _torch.empty((), dtype=dtype).element_size()
        buf = (_ct.c_byte * (numel * size)).from_address(ptr)
        return _torch.frombuffer(buf, dtype=dtype, count=numel)
    class _Mem:
        pass
    m = _Mem()
    m.__cuda_array_interface__ = {"shape": (numel,), "typestr": _L2E_CAI[kind], "data": (ptr, False), "version": 2, "strides": None}
    return _torch.as_tensor(m, device="cuda:%d" % dev)
def _l2e_init(backend, timeout_s, gpu):
    if gpu >= 0:
        _torch.cuda.set_device(gpu)
    _dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s))
def _l2e_all_reduce(ptr, numel, kind, dev, op):
    t = _l2e_view(ptr, numel, kind, dev)
    _dist.all_reduce(t, op=_dist.ReduceOp.SUM if op == 0 else _dist.ReduceOp.MAX)
    if dev >= 0:
        _torch.cuda.current_stream().synchronize()
def _l2e_broadcast(ptr, numel, kind, dev, src):
    t = _l2e_view(ptr, numel, kind, dev)
    _dist.broadcast(t, src=src)
    if dev >= 0:
        _torch.cuda.current_stream().synchronize()
def _l2e_barrier():
    _dist.barrier()
"#;

/// What a Python interpreter reports about itself (see [`PROBE`]).
#[derive(Debug, Deserialize)]
struct Probe {
    home: String,
    exec_home: String,
    path: Vec<String>,
    version: String,
    libpython: Option<String>,
    torch_lib: Option<String>,
    torch_error: Option<String>,
}

const PROBE: &str = r#"
import json, os, sys, sysconfig
d = {"home": sys.base_prefix, "exec_home": sys.base_exec_prefix, "path": [p for p in sys.path if p], "version": sys.version.split()[0]}
libdir = sysconfig.get_config_var("LIBDIR") or ""
names = [n for n in (sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LDLIBRARY")) if n and ".so" in n]
dirs = [libdir, os.path.join(libdir, sysconfig.get_config_var("MULTIARCH") or ""), os.path.join(sys.base_prefix, "lib")]
d["libpython"] = next((os.path.join(x, n) for n in names for x in dirs if os.path.exists(os.path.join(x, n))), None)
try:
    import torch
    d["torch_lib"] = os.path.join(os.path.dirname(torch.__file__), "lib")
except Exception as e:
    d["torch_lib"] = None
    d["torch_error"] = repr(e)
print(json.dumps(d))
"#;

/// The embedded interpreter with the bridge loaded.
struct Python {
    interp: pyembed::Interpreter,
}

impl Python {
    fn load() -> Result<Python> {
        let exe = std::env::var("L2E_PYTHON").unwrap_or_else(|_| "python3".into());
        let out = std::process::Command::new(&exe)
            .args(["-c", PROBE])
            .output()
            .with_context(|| {
                format!("running {exe} (data-parallel ranks call torch.distributed in the Python whose torch this binary uses; set L2E_PYTHON to it)")
            })?;
        if !out.status.success() {
            bail!("{exe} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let p: Probe =
            serde_json::from_slice(&out.stdout).with_context(|| format!("reading what {exe} says about itself"))?;
        let Some(torch_lib) = &p.torch_lib else {
            bail!(
                "{exe} (Python {}) cannot import torch ({}): set L2E_PYTHON to the Python whose torch this binary was built against (e.g. .venv/bin/python)",
                p.version,
                p.torch_error.as_deref().unwrap_or("?")
            );
        };
        let ours = loaded_libtorch_dir()?;
        if !same_dir(Path::new(torch_lib), &ours) {
            bail!(
                "{exe} imports torch from {torch_lib}, but this process runs the libtorch in {}: two copies cannot share a process. \
                 Set L2E_PYTHON to the Python that owns {} (e.g. .venv/bin/python)",
                ours.display(),
                ours.display()
            );
        }
        let Some(libpython) = &p.libpython else {
            bail!(
                "{exe} (Python {}) has no shared libpython to embed (built without --enable-shared?); use a Python that has one \
                 (Debian: apt install libpython3-dev; pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared) and set L2E_PYTHON",
                p.version
            );
        };
        let interp = pyembed::Interpreter::start(Path::new(libpython), &format!("{}:{}", p.home, p.exec_home))?;
        let py = Python { interp };
        py.exec(&format!(
            "import sys\nsys.path[:] = {}",
            serde_json::to_string(&p.path)?
        ))?;
        py.exec(BRIDGE)
            .context("loading torch.distributed in the embedded Python")?;
        Ok(py)
    }

    fn exec(&self, code: &str) -> Result<()> {
        self.interp.exec(code)
    }
}

/// The directory of the libtorch this process has loaded (from `/proc/self/maps`).
fn loaded_libtorch_dir() -> Result<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libtorch_cpu"))
        })
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
        .context("this process has no libtorch_cpu loaded")
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_come_from_torchrun_variables() -> Result<()> {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(Ranks::from_vars(env(&[]))?.world, 1);
        assert_eq!(Ranks::from_vars(env(&[("WORLD_SIZE", "1")]))?.world, 1);
        let r = Ranks::from_vars(env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
        ]))?;
        assert_eq!((r.rank, r.world, r.local_rank, r.local_world), (3, 4, 1, 2));
        let err = Ranks::from_vars(env(&[("WORLD_SIZE", "2")])).unwrap_err().to_string();
        assert!(err.contains("RANK") && err.contains("torchrun"), "{err}");
        let err = Ranks::from_vars(env(&[("WORLD_SIZE", "2"), ("RANK", "2")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
        Ok(())
    }

    #[test]
    fn a_single_process_reduces_nothing() -> Result<()> {
        let d = current();
        assert!(d.is_main() && !d.is_parallel());
        let t = Tensor::from_slice(&[1.0f32, 2.0]);
        d.all_reduce(&t, Op::Sum)?;
        assert_eq!(Vec::<f32>::try_from(&t)?, vec![1.0, 2.0]);
        assert_eq!(d.sum_grads(&[], &[3.0])?, vec![3.0]);
        assert_eq!(d.broadcast_bytes(b"abc")?, b"abc".to_vec());
        Ok(())
    }
}
