//! Edge-of-competence curriculum: keep sampling the problems the model solves sometimes.
//!
//! Each *slot* (a difficulty level of a generator, or a task kind of a prompt file) keeps a
//! running estimate of its group success rate (the share of a group's samples that are
//! right). A slot whose estimate lies inside the band (default 0.2-0.8) is drawn at its
//! configured weight; one outside it (too easy or too hard: its groups mostly agree and
//! carry no gradient) at `explore` times that weight, so the estimate keeps being checked
//! and a level re-enters the band when the model improves. Unmeasured slots count as inside.
use anyhow::{bail, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// `[curriculum]` of a prompt mix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurriculumConfig {
    /// Draw slots by their success band (false: by configured weights alone).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Group success rates inside this range are at the edge of competence.
    #[serde(default = "default_band")]
    pub band: [f64; 2],
    /// Weight multiplier of slots outside the band (> 0 keeps measuring them).
    #[serde(default = "default_explore")]
    pub explore: f64,
    /// The success estimate averages about this many recent groups (exponential average).
    #[serde(default = "default_window")]
    pub window: u32,
}

fn yes() -> bool {
    true
}
fn default_band() -> [f64; 2] {
    [0.2, 0.8]
}
fn default_explore() -> f64 {
    0.1
}
fn default_window() -> u32 {
    32
}

impl Default for CurriculumConfig {
    fn default() -> Self {
        CurriculumConfig {
            enabled: true,
            band: default_band(),
            explore: default_explore(),
            window: default_window(),
        }
    }
}

impl CurriculumConfig {
    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let [lo, hi] = self.band;
        if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo >= hi {
            bail!("curriculum.band must be [low, high] with 0 <= low < high <= 1 (got [{lo}, {hi}])");
        }
        if !(self.explore > 0.0 && self.explore <= 1.0) {
            bail!("curriculum.explore must be in (0, 1] (got {})", self.explore);
        }
        if self.window == 0 {
            bail!("curriculum.window must be >= 1");
        }
        Ok(())
    }
}

/// One slot's running statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotStats {
    /// Name for logs ("arithmetic/3").
    pub name: String,
    /// Configured weight (a share of the prompts before the band acts).
    pub weight: f64,
    /// Running group success rate (None until a group has been graded).
    pub success: Option<f64>,
    /// Groups graded.
    pub groups: u64,
    /// Prompts drawn.
    pub drawn: u64,
}

/// The curriculum over a fixed list of slots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curriculum {
    /// Its configuration.
    pub cfg: CurriculumConfig,
    /// Slots in the order they were declared.
    pub slots: Vec<SlotStats>,
}

impl Curriculum {
    /// A curriculum over `(name, weight)` slots.
    pub fn new(cfg: CurriculumConfig, slots: Vec<(String, f64)>) -> Result<Self> {
        cfg.validate()?;
        if slots.is_empty() || slots.iter().all(|(_, w)| *w <= 0.0) {
            bail!("the prompt mix has no source with a positive weight");
        }
        Ok(Curriculum {
            cfg,
            slots: slots
                .into_iter()
                .map(|(name, weight)| SlotStats {
                    name,
                    weight,
                    success: None,
                    groups: 0,
                    drawn: 0,
                })
                .collect(),
        })
    }

    /// Whether a success rate lies inside the band.
    pub fn in_band(&self, success: f64) -> bool {
        success >= self.cfg.band[0] && success <= self.cfg.band[1]
    }

    /// Current sampling weight of each slot (not normalised).
    pub fn weights(&self) -> Vec<f64> {
        self.slots
            .iter()
            .map(|s| match s.success {
                Some(p) if self.cfg.enabled && !self.in_band(p) => s.weight * self.cfg.explore,
                _ => s.weight,
            })
            .collect()
    }

    /// Draws a slot index by the current weights.
    pub fn pick(&mut self, r: &mut impl Rng) -> usize {
        let w = self.weights();
        let total: f64 = w.iter().sum();
        let mut x = r.random::<f64>() * total;
        let mut chosen = w.len() - 1;
        for (i, wi) in w.iter().enumerate() {
            if x < *wi {
                chosen = i;
                break;
            }
            x -= wi;
        }
        // Never a zero-weight slot (x can land on the end through rounding).
        while w[chosen] <= 0.0 {
            chosen = (chosen + w.len() - 1) % w.len();
        }
        self.slots[chosen].drawn += 1;
        chosen
    }

    /// Records the success rate of one graded group of `slot`.
    pub fn record(&mut self, slot: usize, success: f64) {
        let window = f64::from(self.cfg.window);
        let s = &mut self.slots[slot];
        s.groups += 1;
        // The first groups average exactly; later ones decay with the window.
        let alpha = 1.0 / (s.groups as f64).min(window);
        s.success = Some(match s.success {
            None => success,
            Some(p) => p + alpha * (success - p),
        });
    }

    /// Share of the weight that sits on slots inside the band (or unmeasured).
    pub fn share_in_band(&self) -> f64 {
        let w = self.weights();
        let total: f64 = w.iter().sum();
        let inside: f64 = self
            .slots
            .iter()
            .zip(&w)
            .filter(|(s, _)| s.success.is_none_or(|p| self.in_band(p)))
            .map(|(_, w)| w)
            .sum();
        inside / total.max(1e-12)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Toy success model: the model solves level `l` with probability `p[l]`; a group of 8.
    fn run(cfg: CurriculumConfig, p: &[f64], draws: usize) -> (Curriculum, Vec<u64>) {
        let slots = (0..p.len()).map(|i| (format!("level/{}", i + 1), 1.0)).collect();
        let mut c = Curriculum::new(cfg, slots).unwrap();
        let mut r = ChaCha8Rng::seed_from_u64(0);
        let mut late = vec![0u64; p.len()];
        for t in 0..draws {
            let i = c.pick(&mut r);
            let right = (0..8).filter(|_| r.random::<f64>() < p[i]).count();
            c.record(i, right as f64 / 8.0);
            if t >= draws / 2 {
                late[i] += 1;
            }
        }
        (c, late)
    }

    #[test]
    fn moves_toward_the_band() {
        // Levels the model always / never solves, two at the edge.
        let p = [0.98, 0.9, 0.5, 0.3, 0.02, 0.0];
        let (c, late) = run(CurriculumConfig::default(), &p, 4000);
        let total: u64 = late.iter().sum();
        let edge = (late[2] + late[3]) as f64 / total as f64;
        // Two in-band slots at weight 1 against four at 0.1: 2 / 2.4 = 83% expected.
        assert!(edge > 0.75, "share of draws at the edge {edge:.2}: {late:?}");
        for (s, &pi) in c.slots.iter().zip(&p) {
            let est = s.success.unwrap();
            // Every slot keeps being measured (explore), to within the noise of ~32 groups of 8.
            assert!((est - pi).abs() < 0.15, "{}: estimate {est:.2} vs {pi}", s.name);
        }
        // Without the band the draws stay uniform.
        let off = CurriculumConfig {
            enabled: false,
            ..CurriculumConfig::default()
        };
        let (_, late) = run(off, &p, 4000);
        let edge = (late[2] + late[3]) as f64 / late.iter().sum::<u64>() as f64;
        assert!((edge - 2.0 / 6.0).abs() < 0.05, "{edge:.2}");
    }

    #[test]
    fn a_level_reenters_the_band_when_the_model_improves() {
        let slots = vec![("easy".into(), 1.0), ("hard".into(), 1.0)];
        let mut c = Curriculum::new(CurriculumConfig::default(), slots).unwrap();
        for _ in 0..40 {
            c.record(0, 0.5);
            c.record(1, 0.0);
        }
        let w = c.weights();
        assert!((w[1] / w[0] - 0.1).abs() < 1e-12, "{w:?}");
        // The hard level becomes solvable half of the time.
        for _ in 0..40 {
            c.record(1, 0.5);
        }
        let w = c.weights();
        assert_eq!(w[0], w[1]);
        assert_eq!(c.share_in_band(), 1.0);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = CurriculumConfig {
            band: [0.8, 0.2],
            ..CurriculumConfig::default()
        };
        let e = Curriculum::new(bad, vec![("a".into(), 1.0)]).unwrap_err();
        assert!(e.to_string().contains("curriculum.band"), "{e}");
        let e = Curriculum::new(CurriculumConfig::default(), vec![("a".into(), 0.0)]).unwrap_err();
        assert!(e.to_string().contains("positive weight"), "{e}");
    }
}
