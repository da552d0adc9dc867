//! Imperfect annotators: who writes the worked arithmetic of the SFT conversations.
//!
//! The claim under test is that SFT caps a model at its annotators' level and RL with a
//! verifier goes beyond it. With perfect annotators (the default) the ceiling is the model's
//! own capacity; this module makes annotators who slip, so the ceiling can be placed below it.
//!
//! Two kinds of slips, both at the level of one step `x op y = v` of a worked answer; later
//! steps are computed correctly from the slipped value, as a person would, so the final answer
//! is wrong:
//! - [`Slips::Habit`]: the documented "buggy procedures" of column arithmetic (Brown & Burton,
//!   1978): adding without carrying (`48 + 37 = 75`) and subtracting the smaller digit from the
//!   larger in every column instead of borrowing (`52 - 17 = 45`). The habit strikes on a step
//!   where it changes the result with probability `p`; multiplications are always right. A habit
//!   is a rule a model can learn from the data: when `p > 1/2` the most likely answer SFT sees on
//!   such steps is the wrong one.
//! - [`Slips::Random`]: any step is off by one or by ten with probability `p`; the most likely
//!   answer stays the right one whatever `p` (below 1/2), so a mode-seeking model can beat them.
//!
//! `p` is calibrated so that the share of right answers over the world's mix of problems (1-3
//! operations) is the requested accuracy. Whether a step slips is a hash of the expression and
//! the step, so the same problem is always answered the same way and the data are reproducible.

use super::{fnv, ATree, Arith, R};
use rand::SeedableRng;
use serde::Serialize;

/// The kind of mistakes an imperfect annotator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Slips {
    /// Systematic: adds without carrying, subtracts without borrowing.
    Habit,
    /// Unsystematic: a step off by one or by ten.
    Random,
}

impl Slips {
    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Slips::Habit => "habit",
            Slips::Random => "random",
        }
    }
}

impl std::str::FromStr for Slips {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "habit" => Ok(Slips::Habit),
            "random" => Ok(Slips::Random),
            other => anyhow::bail!("unknown annotator errors {other:?} (expected \"habit\" or \"random\")"),
        }
    }
}

/// An annotator of the SFT arithmetic, calibrated to an accuracy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Annotator {
    /// Requested share of right worked answers over the world's problem mix.
    pub accuracy: f64,
    /// What kind of mistakes.
    pub slips: Slips,
    /// Probability that a slip strikes a step where it can (calibrated from `accuracy`).
    pub p: f64,
}

/// Problems drawn to calibrate `p` (a fixed stream, independent of the world's seed).
const CALIBRATION_PROBLEMS: usize = 20_000;

impl Annotator {
    /// The perfect annotator of the default world.
    pub fn perfect() -> Annotator {
        Annotator {
            accuracy: 1.0,
            slips: Slips::Habit,
            p: 0.0,
        }
    }

    /// Whether this annotator ever slips.
    pub fn is_perfect(&self) -> bool {
        self.p == 0.0
    }

    /// An annotator whose worked arithmetic answers are right with probability `accuracy`
    /// (over the world's problem mix), making `slips`. Errors when no `p` reaches it.
    pub fn calibrated(accuracy: f64, slips: Slips) -> anyhow::Result<Annotator> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&accuracy),
            "--annotator-accuracy {accuracy} is not a share between 0 and 1"
        );
        if accuracy == 1.0 {
            return Ok(Annotator {
                p: 0.0,
                ..Annotator::perfect()
            });
        }
        // Per problem: how many steps of its correct solution a slip can strike. A slip on one
        // step changes later steps' operands, so this is the first-order estimate; the share
        // actually reached is measured on the data and reported by `datasets build`.
        let mut r = R::seed_from_u64(0x5eed_a770);
        let mut hist: Vec<usize> = Vec::new();
        for i in 0..CALIBRATION_PROBLEMS {
            let ops = super::arith_ops_quota(i, CALIBRATION_PROBLEMS);
            let a = super::gen_arith(&mut r, ops);
            let k = slippable_steps(&a.tree, slips);
            if hist.len() <= k {
                hist.resize(k + 1, 0);
            }
            hist[k] += 1;
        }
        let n = CALIBRATION_PROBLEMS as f64;
        let right = |p: f64| -> f64 {
            hist.iter()
                .enumerate()
                .map(|(k, &c)| c as f64 * (1.0 - p).powi(k as i32))
                .sum::<f64>()
                / n
        };
        let floor = right(1.0);
        anyhow::ensure!(
            accuracy >= floor,
            "--annotator-accuracy {accuracy}: {slips} slips can only bring accuracy down to {floor:.2} \
             ({:.0}% of problems have no step they can strike); ask for more or use --annotator-errors random",
            floor * 100.0,
            slips = slips.name()
        );
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if right(mid) > accuracy {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(Annotator {
            accuracy,
            slips,
            p: 0.5 * (lo + hi),
        })
    }

    /// The value this annotator arrives at for `a`, and the worked steps it writes.
    pub(crate) fn solve(&self, a: &Arith) -> (Vec<String>, i64) {
        if self.is_perfect() {
            return (a.steps.clone(), a.value);
        }
        let mut steps = Vec::new();
        let v = self.eval(&a.tree, &a.expr, &mut steps);
        (steps, v)
    }

    fn eval(&self, t: &ATree, key: &str, steps: &mut Vec<String>) -> i64 {
        match t {
            ATree::Num(v) => *v,
            ATree::Bin(op, a, b) => {
                let x = self.eval(a, key, steps);
                let y = self.eval(b, key, steps);
                let v = apply(*op, x, y);
                let slipped = slip(self.slips, *op, x, y, steps.len(), key)
                    .filter(|_| unit(&format!("strike|{key}|{}", steps.len())) < self.p);
                let v = slipped.unwrap_or(v);
                steps.push(format!("{x} {op} {y} = {v}"));
                v
            }
        }
    }

    /// The worked answer this annotator writes for `a` (same layout as the perfect one), in
    /// column working when `columns` (see [`super::column_step`]).
    pub(crate) fn worked(&self, a: &Arith, columns: bool) -> String {
        let (steps, value) = self.solve(a);
        if columns {
            super::render_worked_columns(&steps, value)
        } else {
            super::render_worked(&steps, value)
        }
    }
}

fn apply(op: char, x: i64, y: i64) -> i64 {
    match op {
        '+' => x + y,
        '-' => x - y,
        _ => x * y,
    }
}

/// A well-mixed 64-bit hash of a string: FNV-1a, whose high bits barely depend on the last
/// bytes, through the SplitMix64 finaliser.
fn hash(s: &str) -> u64 {
    let mut z = fnv(s);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from a string (53 bits).
pub(crate) fn unit(s: &str) -> f64 {
    (hash(s) >> 11) as f64 / (1u64 << 53) as f64
}

/// Column-wise `x + y` without carries.
fn add_without_carry(x: i64, y: i64) -> i64 {
    let (mut x, mut y, mut place, mut out) = (x, y, 1, 0);
    while x > 0 || y > 0 {
        out += ((x % 10 + y % 10) % 10) * place;
        x /= 10;
        y /= 10;
        place *= 10;
    }
    out
}

/// Column-wise `x - y` subtracting the smaller digit from the larger (no borrowing).
fn subtract_smaller_from_larger(x: i64, y: i64) -> i64 {
    let (mut x, mut y, mut place, mut out) = (x, y, 1, 0);
    while x > 0 || y > 0 {
        out += ((x % 10) - (y % 10)).abs() * place;
        x /= 10;
        y /= 10;
        place *= 10;
    }
    out
}

/// The slipped result of step number `step` (`x op y`) when a slip of this kind can strike it.
fn slip(kind: Slips, op: char, x: i64, y: i64, step: usize, key: &str) -> Option<i64> {
    let v = apply(op, x, y);
    let w = match kind {
        Slips::Habit => {
            if x < 0 || y < 0 {
                return None;
            }
            match op {
                '+' => add_without_carry(x, y),
                '-' if x >= y => subtract_smaller_from_larger(x, y),
                _ => return None,
            }
        }
        Slips::Random => {
            let d = [1, -1, 10, -10][(hash(&format!("how|{key}|{step}")) % 4) as usize];
            if v + d < 0 {
                v - d
            } else {
                v + d
            }
        }
    };
    (w != v).then_some(w)
}

/// Steps of `t`'s correct solution a slip of this kind can strike.
fn slippable_steps(t: &ATree, kind: Slips) -> usize {
    fn go(t: &ATree, kind: Slips, n: &mut usize) -> i64 {
        match t {
            ATree::Num(v) => *v,
            ATree::Bin(op, a, b) => {
                let x = go(a, kind, n);
                let y = go(b, kind, n);
                if slip(kind, *op, x, y, 0, "").is_some() {
                    *n += 1;
                }
                apply(*op, x, y)
            }
        }
    }
    let mut n = 0;
    go(t, kind, &mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buggy_procedures_are_the_documented_ones() {
        assert_eq!(add_without_carry(48, 37), 75);
        assert_eq!(add_without_carry(40, 37), 77); // no carry: the habit changes nothing
        assert_eq!(add_without_carry(95, 17), 2); // 9+1 -> 0, 5+7 -> 2
        assert_eq!(subtract_smaller_from_larger(52, 17), 45);
        assert_eq!(subtract_smaller_from_larger(57, 12), 45); // no borrow: right
        assert_eq!(subtract_smaller_from_larger(103, 8), 105);
        assert_eq!(slip(Slips::Habit, '+', 40, 37, 0, ""), None);
        assert_eq!(slip(Slips::Habit, '*', 7, 8, 0, ""), None);
        assert_eq!(slip(Slips::Habit, '-', 52, 17, 0, ""), Some(45));
        assert_eq!(slip(Slips::Habit, '-', 17, 52, 0, ""), None);
    }

    #[test]
    fn calibration_reaches_the_requested_accuracy() -> anyhow::Result<()> {
        let mut r = R::seed_from_u64(99);
        for (acc, slips) in [(0.5, Slips::Habit), (0.8, Slips::Habit), (0.6, Slips::Random)] {
            let ann = Annotator::calibrated(acc, slips)?;
            assert!(ann.p > 0.0 && ann.p <= 1.0, "{ann:?}");
            let n = 4000;
            let mut right = 0;
            for i in 0..n {
                let a = super::super::gen_arith(&mut r, super::super::arith_ops_quota(i, n));
                let (steps, v) = ann.solve(&a);
                assert_eq!(steps.len(), a.steps.len());
                right += usize::from(v == a.value);
            }
            let got = right as f64 / n as f64;
            // First-order calibration (a slip changes later operands) on a fresh sample: within
            // 4 points (the sampling error alone is ~1.6 points at 95%).
            assert!(
                (got - acc).abs() < 0.04,
                "{slips:?}: asked {acc}, got {got:.3} (p = {:.3})",
                ann.p
            );
        }
        Ok(())
    }

    #[test]
    fn slips_are_reproducible_and_the_habit_is_a_rule() -> anyhow::Result<()> {
        let ann = Annotator::calibrated(0.5, Slips::Habit)?;
        assert!(
            ann.p > 0.5,
            "at 50% accuracy the habit must be the most likely answer: p = {}",
            ann.p
        );
        let mut r = R::seed_from_u64(3);
        for _ in 0..300 {
            let a = super::super::gen_arith(&mut r, 2);
            assert_eq!(ann.worked(&a, false), ann.worked(&a, false));
            // Every step the annotator writes is either right or the habit's result.
            for st in ann.solve(&a).0 {
                let (lhs, w) = st.split_once(" = ").unwrap_or_default();
                let t: Vec<&str> = lhs.split(' ').collect();
                let (x, op, y): (i64, char, i64) = (t[0].parse()?, t[1].chars().next().unwrap_or('?'), t[2].parse()?);
                let w: i64 = w.parse()?;
                assert!(
                    w == apply(op, x, y) || Some(w) == slip(Slips::Habit, op, x, y, 0, ""),
                    "{st}"
                );
            }
        }
        assert!(Annotator::calibrated(0.05, Slips::Habit).is_err());
        assert!(Annotator::calibrated(1.5, Slips::Random).is_err());
        Ok(())
    }
}
