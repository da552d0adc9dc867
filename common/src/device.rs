//! Device selection (`--device auto|cpu|cuda`), seeding and thread settings.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tch::Device;

/// Where tensors live, as the user asks for it on the command line or in a config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when a GPU is visible, otherwise the CPU.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// The first CUDA GPU; an error when none is visible.
    Cuda,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        })
    }
}

impl FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            other => bail!("unknown device `{other}`: expected one of auto, cpu, cuda"),
        }
    }
}

impl DeviceChoice {
    /// Resolves the choice against what this machine has.
    pub fn resolve(self) -> Result<Device> {
        self.resolve_with(tch::Cuda::is_available())
    }

    /// Resolves the choice given whether CUDA is available (split out for tests).
    pub fn resolve_with(self, cuda_available: bool) -> Result<Device> {
        match (self, cuda_available) {
            (DeviceChoice::Cpu, _) | (DeviceChoice::Auto, false) => Ok(Device::Cpu),
            (DeviceChoice::Auto, true) | (DeviceChoice::Cuda, true) => Ok(Device::Cuda(0)),
            (DeviceChoice::Cuda, false) => bail!(
                "--device cuda was asked for but libtorch sees no CUDA GPU; \
                 check `nvidia-smi` and that the binary was built against a CUDA build of \
                 libtorch, or use --device cpu"
            ),
        }
    }
}

/// Human name of a device, as written into metadata and reports.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Seeds libtorch's global generator (model initialisation, dropout) on every device.
pub fn seed_everything(seed: u64) {
    tch::manual_seed(seed as i64);
}

/// Sets libtorch's intra-op threads from `L2E_THREADS`, else leaves libtorch's default
/// (one per physical core), and has the C allocator keep the memory tensors free for the next
/// ones ([`hostmem::keep_freed_memory`]: ~10x fewer page faults, ~8% less CPU time in a training
/// step on a 2-core CPU; `GLIBC_TUNABLES` or `MALLOC_*` in the environment take precedence).
/// Every binary that runs libtorch calls it first. Returns the number of threads in use.
pub fn configure_threads() -> usize {
    hostmem::keep_freed_memory();
    if let Some(n) = std::env::var("L2E_THREADS").ok().and_then(|v| v.parse::<i32>().ok()) {
        if n > 0 {
            tch::set_num_threads(n);
        }
    }
    tch::get_num_threads().max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_cpu_and_cuda_errors_without_gpu() -> Result<()> {
        assert_eq!(DeviceChoice::Auto.resolve_with(false)?, Device::Cpu);
        assert_eq!(DeviceChoice::Auto.resolve_with(true)?, Device::Cuda(0));
        assert_eq!(DeviceChoice::Cpu.resolve_with(true)?, Device::Cpu);
        let err = DeviceChoice::Cuda.resolve_with(false).unwrap_err().to_string();
        assert!(err.contains("no CUDA GPU"), "{err}");
        assert!(err.contains("--device cpu"), "the fix is named: {err}");
        Ok(())
    }

    #[test]
    fn parses_device_names() -> Result<()> {
        assert_eq!("CUDA".parse::<DeviceChoice>()?, DeviceChoice::Cuda);
        assert_eq!("cpu".parse::<DeviceChoice>()?, DeviceChoice::Cpu);
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("`tpu`") && err.contains("auto, cpu, cuda"), "{err}");
        Ok(())
    }

    #[test]
    fn this_machine_resolves_auto() -> Result<()> {
        // Whatever the machine, `auto` never fails.
        let d = DeviceChoice::Auto.resolve()?;
        assert!(matches!(d, Device::Cpu | Device::Cuda(_)));
        Ok(())
    }
}
