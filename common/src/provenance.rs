//! Where a result came from: the date, the git commit of the checkout, the machine, and the
//! versions of lib2expert, tch and the libtorch actually loaded. The report card's header and
//! `evaluate`'s JSON carry these, so a number can be traced back to what produced it.
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::process::Command;

/// The tch crate this build links (pinned exactly in the workspace's Cargo.toml).
pub const TCH_VERSION: &str = "0.24.0";

/// Everything that identifies the run of a program.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// UTC time, `2026-11-25 16:23 UTC`.
    pub date: String,
    /// lib2expert version of the binary.
    pub version: String,
    /// `git rev-parse --short=12 HEAD` of the working directory's checkout, `-dirty` appended
    /// when tracked files differ from it; absent outside a git checkout.
    pub git_commit: Option<String>,
    /// The machine.
    pub machine: Machine,
    /// tch crate version.
    pub tch: String,
    /// Version of the libtorch loaded into this process (from its `version.py` or
    /// `build-version` file), when found.
    pub libtorch: Option<String>,
}

/// CPU model and cores, and the GPU when one is visible.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo.
    pub cpu: String,
    /// The CPU's fastest instructions for bf16 matrix products, from /proc/cpuinfo's flags
    /// ([`bf16_matrix_unit`]): two CPUs of the same name can differ here, and it sets a CPU's
    /// training speed more than anything else (2-core machines measured ~1650 GFLOP/s in bf16
    /// with AMX, ~420 with AVX-512 bf16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16_matmul: Option<String>,
    /// Logical cores available to this process.
    pub cores: usize,
    /// CUDA devices (count and name of the first), when any.
    pub gpu: Option<String>,
}

impl Provenance {
    /// Collects everything, for the checkout holding `dir` (usually `.`).
    pub fn collect(dir: &Path) -> Self {
        Provenance {
            date: utc_now(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: git_commit(dir),
            machine: Machine::detect(),
            tch: TCH_VERSION.to_string(),
            libtorch: libtorch_version(),
        }
    }
}

impl Machine {
    /// Reads /proc/cpuinfo and asks libtorch for CUDA devices.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        // The first processor's `name: value` line (every processor lists the same).
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let cpu = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let bf16_matmul = field("flags")
            .and_then(|f| bf16_matrix_unit(&f.split_whitespace().collect::<Vec<_>>()).map(str::to_string));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let gpu = tch::Cuda::is_available().then(|| {
            let n = tch::Cuda::device_count();
            format!("{n} x {}", crate::device::device_name(tch::Device::Cuda(0)))
        });
        Machine {
            cpu,
            bf16_matmul,
            cores,
            gpu,
        }
    }
}

/// What a CPU with these /proc/cpuinfo `flags` computes bf16 matrix products with: `AMX`,
/// `AVX-512 bf16` (no AMX), `AVX-512` (no bf16 instructions) or `AVX2`; `None` for none of
/// these (another architecture).
pub fn bf16_matrix_unit(flags: &[&str]) -> Option<&'static str> {
    let has = |f: &str| flags.contains(&f);
    if has("amx_bf16") {
        Some("AMX")
    } else if has("avx512_bf16") {
        Some("AVX-512 bf16, no AMX")
    } else if has("avx512f") {
        Some("AVX-512, no bf16")
    } else if has("avx2") {
        Some("AVX2")
    } else {
        None
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.cpu)?;
        if let Some(u) = &self.bf16_matmul {
            write!(f, " (bf16 products: {u})")?;
        }
        write!(f, ", {} cores", self.cores)?;
        match &self.gpu {
            Some(g) => write!(f, "; GPU: {g}"),
            None => write!(f, "; no GPU"),
        }
    }
}

/// The short commit of the git checkout holding `dir`, `-dirty` when tracked files changed.
pub fn git_commit(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).filter(|c| !c.is_empty())?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{commit}-dirty") } else { commit })
}

/// The version of the libtorch mapped into this process: `torch/version.py` beside a PyTorch
/// wheel's `lib/`, or a standalone libtorch's `build-version`.
pub fn libtorch_version() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("libtorch_cpu."))?;
    let root = Path::new(lib).parent()?.parent()?;
    if let Ok(v) = std::fs::read_to_string(root.join("version.py")) {
        let line = v.lines().find(|l| l.starts_with("__version__"))?;
        return Some(line.split(['\'', '"']).nth(1)?.to_string());
    }
    std::fs::read_to_string(root.join("build-version"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The current UTC time, `2026-11-25 16:23 UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// `secs` since the Unix epoch as a UTC date and time (proleptic Gregorian calendar).
pub fn utc(secs: u64) -> String {
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

/// The date (year, month, day) `days` after 1970-01-01: Howard Hinnant's `civil_from_days`.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(mo <= 2), mo, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bf16_matrix_unit_is_the_best_the_flags_offer() {
        let unit = |f: &str| bf16_matrix_unit(&f.split_whitespace().collect::<Vec<_>>());
        // The two machine kinds this project is measured on (their /proc/cpuinfo flags, abridged).
        assert_eq!(
            unit("fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"),
            Some("AMX")
        );
        assert_eq!(
            unit("fpu avx2 avx512f avx512_bf16 avx512_vnni"),
            Some("AVX-512 bf16, no AMX")
        );
        assert_eq!(unit("fpu avx2 avx512f avx512bw"), Some("AVX-512, no bf16"));
        assert_eq!(unit("fpu sse4_2 avx2 fma"), Some("AVX2"));
        // A flag that only starts like one does not count; other architectures name none.
        assert_eq!(unit("fpu avx2 avx512_bf16x"), Some("AVX2"));
        assert_eq!(unit("fp asimd bf16"), None);
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        // Reference values from `date -u -d @SECS`.
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_795_623_780), "2026-11-25 16:23 UTC");
    }

    #[test]
    fn the_pinned_tch_is_the_one_named() -> anyhow::Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let text = std::fs::read_to_string(root)?;
        assert!(
            text.contains(&format!("tch = \"={TCH_VERSION}\"")),
            "update TCH_VERSION"
        );
        Ok(())
    }

    #[test]
    fn the_loaded_libtorch_is_found() {
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        let v = libtorch_version().unwrap_or_default();
        assert!(v.starts_with("2."), "libtorch version {v:?}");
    }
}
