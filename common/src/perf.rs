//! Throughput accounting: the machine's measured matmul peak and model FLOPs utilisation.
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Measured dense matmul throughput (GFLOP/s) of `kind` on `device`, through libtorch
/// on all its threads. Square matrices of side `n`, best of a few repetitions.
pub fn matmul_gflops(device: Device, kind: Kind, n: i64, reps: usize) -> f64 {
    let _guard = tch::no_grad_guard();
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let sync = |t: &Tensor| {
        // Reading one element waits for the device.
        let _ = t.get(0).get(0).double_value(&[]);
    };
    sync(&a.matmul(&b));
    let mut best = f64::MAX;
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        let c = a.matmul(&b);
        sync(&c);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

/// The peak MFU is reported against: `L2E_PEAK_GFLOPS` if set, else a quick measurement of
/// matmuls in the precision the model computes in (`kind`).
pub fn peak_gflops(device: Device, kind: Kind) -> f64 {
    if let Some(v) = std::env::var("L2E_PEAK_GFLOPS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        return v;
    }
    match device {
        Device::Cpu => matmul_gflops(device, kind, 1024, 5),
        _ => matmul_gflops(device, kind, 8192, 10),
    }
}
