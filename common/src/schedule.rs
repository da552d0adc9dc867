//! Learning-rate schedules, evaluated from the step number (so resuming needs no state).
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// Shape of the learning-rate curve after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Cosine from the peak to `min_lr_ratio · peak`.
    Cosine,
    /// Warmup-stable-decay: flat at the peak, then linear to `min_lr_ratio · peak` over the
    /// last `decay_fraction` of the steps.
    Wsd,
    /// Linear from the peak to `min_lr_ratio · peak` (set the ratio to 0 for decay to zero).
    Linear,
    /// Flat at the peak after warmup.
    Constant,
}

/// A resolved schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Curve after warmup.
    pub kind: ScheduleKind,
    /// Peak learning rate.
    pub peak_lr: f64,
    /// Linear warmup steps from 0.
    pub warmup_steps: u64,
    /// Total steps.
    pub total_steps: u64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// WSD only: fraction of the steps spent decaying.
    pub decay_fraction: f64,
}

impl Schedule {
    /// Checks the numbers; errors name the config key.
    pub fn validate(&self) -> Result<()> {
        if !(self.peak_lr > 0.0 && self.peak_lr <= 1.0) {
            bail!(
                "train.lr must be in (0, 1], got {} (typical: 1e-4 to 3e-3)",
                self.peak_lr
            );
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            bail!("train.min_lr_ratio must be in [0, 1], got {}", self.min_lr_ratio);
        }
        if !(0.0..=1.0).contains(&self.decay_fraction) {
            bail!("train.decay_fraction must be in [0, 1], got {}", self.decay_fraction);
        }
        if self.total_steps == 0 {
            bail!("train.steps must be at least 1");
        }
        if self.warmup_steps > self.total_steps {
            bail!(
                "train.warmup_steps ({}) exceeds train.steps ({})",
                self.warmup_steps,
                self.total_steps
            );
        }
        Ok(())
    }

    /// Learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let peak = self.peak_lr;
        let floor = peak * self.min_lr_ratio;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (self.total_steps - self.warmup_steps).max(1) as f64;
        let t = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
        match self.kind {
            ScheduleKind::Constant => peak,
            ScheduleKind::Linear => floor + (peak - floor) * (1.0 - t),
            ScheduleKind::Cosine => floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            ScheduleKind::Wsd => {
                let decay_start = 1.0 - self.decay_fraction;
                if t <= decay_start || self.decay_fraction == 0.0 {
                    peak
                } else {
                    let u = (t - decay_start) / self.decay_fraction;
                    floor + (peak - floor) * (1.0 - u)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            peak_lr: 1.0,
            warmup_steps: 10,
            total_steps: 110,
            min_lr_ratio: 0.1,
            decay_fraction: 0.2,
        }
    }

    #[test]
    fn warmup_then_shapes() {
        let c = sched(ScheduleKind::Cosine);
        assert!((c.lr(0) - 0.1).abs() < 1e-12);
        assert!((c.lr(9) - 1.0).abs() < 1e-12);
        assert!((c.lr(10) - 1.0).abs() < 1e-12);
        assert!(
            (c.lr(60) - 0.55).abs() < 1e-12,
            "midpoint of cosine = mean of peak and floor"
        );
        assert!((c.lr(110) - 0.1).abs() < 1e-12);
        let w = sched(ScheduleKind::Wsd);
        assert_eq!(w.lr(80), 1.0);
        assert!((w.lr(100) - 0.55).abs() < 1e-12);
        let l = Schedule {
            min_lr_ratio: 0.0,
            ..sched(ScheduleKind::Linear)
        };
        assert!((l.lr(60) - 0.5).abs() < 1e-12);
        assert_eq!(l.lr(110), 0.0);
    }

    #[test]
    fn rejects_out_of_range() {
        let mut s = sched(ScheduleKind::Cosine);
        s.peak_lr = 5.0;
        assert!(s.validate().unwrap_err().to_string().contains("train.lr"));
        s.peak_lr = 1e-3;
        s.warmup_steps = 500;
        assert!(s.validate().unwrap_err().to_string().contains("warmup_steps"));
    }
}
