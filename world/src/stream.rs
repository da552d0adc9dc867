//! An unbounded, seeded stream of fresh RL problems from the world's task families.
//!
//! [`TaskGen`] rebuilds the world of a seed and the keys its held-out eval reserves (the
//! same draws [`super::generate`] makes, without the library), then makes problems on
//! demand at a chosen difficulty level. A problem is never emitted twice while its level
//! has fresh problems left, and never one the eval holds: arithmetic expressions whose
//! numbers an eval problem uses, eval program sources, eval fact pairs and eval phantoms are
//! excluded by construction (the same rules as the fixed RL set). Arithmetic and programs
//! are practically unbounded; facts and unanswerable questions are finite pools of the
//! world (a few hundred), so a long run goes through them again, and [`TaskGen::passes`]
//! counts how often.

use super::*;
use std::collections::BTreeMap;

/// A task family of the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Expressions; level = number of operations (1-3 as in SFT, 4-6 beyond anything shown).
    Arithmetic,
    /// Questions about facts the library states; level 1 = common entities, 2 = rare ones.
    Facts,
    /// "What does this program print?"; one level.
    Program,
    /// Questions about entities that exist nowhere (answer: "I don't know"); one level.
    Unanswerable,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 4] = [Family::Arithmetic, Family::Facts, Family::Program, Family::Unanswerable];

    /// The task kind the graders know it by.
    pub fn kind(self) -> &'static str {
        match self {
            Family::Arithmetic => "arithmetic",
            Family::Facts => "facts",
            Family::Program => "program",
            Family::Unanswerable => "unanswerable",
        }
    }

    /// Its difficulty levels, easiest first.
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Family::Arithmetic => 1..=6,
            Family::Facts => 1..=2,
            Family::Program | Family::Unanswerable => 1..=1,
        }
    }

    /// Parses `arithmetic`, `facts`, `program` or `unanswerable`.
    pub fn parse(s: &str) -> anyhow::Result<Family> {
        Family::ALL.into_iter().find(|f| f.kind() == s).ok_or_else(|| {
            anyhow::anyhow!("unknown generator {s:?} (expected arithmetic, facts, program or unanswerable)")
        })
    }
}

/// One generated problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenTask {
    /// The user's question.
    pub prompt: String,
    /// The reference answer.
    pub answer: String,
    /// Family and level it was drawn from.
    pub family: Family,
    /// Difficulty level.
    pub level: u32,
}

/// Draws after which a level is taken as exhausted and its fresh set starts over.
const MAX_TRIES: usize = 2000;

/// The generator: the world of a seed plus what the held-out eval reserves.
pub struct TaskGen {
    ctx: Ctx,
    /// Keys of the problems emitted in the current pass over each level.
    seen: BTreeMap<(Family, u32), HashSet<u64>>,
    /// Completed passes over each level (0 while it has never run out of fresh problems).
    passes: BTreeMap<(Family, u32), u32>,
}

impl TaskGen {
    /// Rebuilds the world of `(seed, scale)` and its eval reservations (a fraction of a second).
    pub fn new(seed: u64, scale: Scale) -> TaskGen {
        let plan = Plan::new(scale);
        let mut master = R::seed_from_u64(seed);
        let mut r_world = sub_rng(&mut master);
        let mut r_split = sub_rng(&mut master);
        let mut r_eval = sub_rng(&mut master);
        // The library, held-out library, SFT and RL streams of `generate`, then the hard slice.
        for _ in 0..2 * SOURCES.len() + 2 {
            sub_rng(&mut master);
        }
        let mut r_hard = sub_rng(&mut master);
        let world = Arc::new(build_world(&mut r_world, &plan));
        let mut ctx = Ctx::new(&mut r_split, world);
        gen_eval(&mut r_eval, &mut ctx);
        gen_eval_hard(&mut r_hard, &mut ctx);
        TaskGen {
            ctx,
            seen: BTreeMap::new(),
            passes: BTreeMap::new(),
        }
    }

    /// A fresh problem of `family` at `level` (clamped to the family's levels).
    pub fn sample(&mut self, r: &mut R, family: Family, level: u32) -> GenTask {
        self.sample_of(r, family, level, &[])
    }

    /// [`TaskGen::sample`] asking facts and unanswerable questions only about entities of
    /// `kinds` (empty: every kind; the other families ignore it).
    pub fn sample_of(&mut self, r: &mut R, family: Family, level: u32, kinds: &[Kind]) -> GenTask {
        let levels = family.levels();
        let level = level.clamp(*levels.start(), *levels.end());
        let slot = (family, level);
        // Enough draws to find the last fresh problem of a finite pool (miss chance < e^-20).
        let tries = MAX_TRIES.max(20 * self.pool_size(family, level, kinds));
        for _ in 0..tries {
            let (key, prompt, answer) = self.draw(r, family, level, kinds);
            if self.seen.entry(slot).or_default().insert(fnv(&key)) {
                return GenTask {
                    prompt,
                    answer,
                    family,
                    level,
                };
            }
        }
        // Every problem of the level has been emitted (facts and unanswerable questions are
        // finite pools): start a new pass.
        *self.passes.entry(slot).or_default() += 1;
        self.seen.remove(&slot);
        self.sample_of(r, family, level, kinds)
    }

    /// Whether the facts or unanswerable pool of `family` has questions about `kinds`.
    pub fn has_questions(&self, family: Family, kinds: &[Kind]) -> bool {
        (1..=2).any(|level| self.pool_size(family, level, kinds) > 0)
    }

    /// Completed passes over each level that ran out of fresh problems.
    pub fn passes(&self) -> &BTreeMap<(Family, u32), u32> {
        &self.passes
    }

    /// The generator's state (what it has emitted), for a resumable run.
    pub fn state(&self) -> GenState {
        GenState {
            levels: self
                .seen
                .iter()
                .map(|(&(family, level), keys)| {
                    let mut keys: Vec<u64> = keys.iter().copied().collect();
                    keys.sort_unstable();
                    LevelState {
                        family,
                        level,
                        passes: self.passes.get(&(family, level)).copied().unwrap_or(0),
                        keys,
                    }
                })
                .collect(),
        }
    }

    /// Restores what [`TaskGen::state`] saved.
    pub fn restore(&mut self, state: &GenState) {
        self.seen.clear();
        self.passes.clear();
        for l in &state.levels {
            self.seen.insert((l.family, l.level), l.keys.iter().copied().collect());
            if l.passes > 0 {
                self.passes.insert((l.family, l.level), l.passes);
            }
        }
    }

    /// The fact pairs of a facts level, about entities of `kinds` (empty: all).
    fn fact_pool(&self, level: u32, kinds: &[Kind]) -> Vec<Pair> {
        let ctx = &self.ctx;
        let pool = if level >= 2 && !ctx.train_pairs_rare.is_empty() {
            &ctx.train_pairs_rare
        } else {
            &ctx.train_pairs_common
        };
        pool.iter()
            .copied()
            .filter(|&(i, _)| kinds.is_empty() || kinds.contains(&ctx.w.entities[i].kind))
            .collect()
    }

    /// The RL phantoms of `kinds` (empty: all).
    fn phantom_pool(&self, kinds: &[Kind]) -> Vec<usize> {
        let ctx = &self.ctx;
        ctx.train_phantoms
            .iter()
            .copied()
            .filter(|&j| kinds.is_empty() || kinds.contains(&ctx.w.phantoms[j].kind))
            .collect()
    }

    /// Problems in a finite pool (0 for the practically unbounded families).
    fn pool_size(&self, family: Family, level: u32, kinds: &[Kind]) -> usize {
        let ctx = &self.ctx;
        match family {
            Family::Facts => self.fact_pool(level, kinds).len(),
            Family::Unanswerable => self
                .phantom_pool(kinds)
                .iter()
                .flat_map(|&j| ctx.w.phantoms[j].kind.attrs())
                .map(|a| a.questions().len())
                .sum(),
            Family::Arithmetic | Family::Program => 0,
        }
    }

    /// One candidate: (uniqueness key, prompt, answer).
    fn draw(&self, r: &mut R, family: Family, level: u32, kinds: &[Kind]) -> (String, String, String) {
        let ctx = &self.ctx;
        match family {
            Family::Arithmetic => {
                let a = gen_arith_train(r, ctx, level as usize);
                let prompt = arith_prompt(r, &a);
                (a.expr, prompt, a.value.to_string())
            }
            Family::Facts if !kinds.is_empty() => {
                let (i, a) = pick(r, &self.fact_pool(level, kinds));
                let e = &ctx.w.entities[i];
                let prompt = fact_question(r, e, a);
                (format!("{i}/{a:?}"), prompt, e.fact(a).unwrap_or_default().to_string())
            }
            Family::Facts => {
                let pool = if level >= 2 && !ctx.train_pairs_rare.is_empty() {
                    &ctx.train_pairs_rare
                } else {
                    &ctx.train_pairs_common
                };
                let (i, a) = pick(r, pool);
                let e = &ctx.w.entities[i];
                let prompt = fact_question(r, e, a);
                (format!("{i}/{a:?}"), prompt, e.fact(a).unwrap_or_default().to_string())
            }
            Family::Program => {
                let p = gen_program(r, ctx, false, false);
                let prompt = program_prompt(r, &p);
                (p.code.clone(), prompt, p.output())
            }
            Family::Unanswerable => {
                let e = if kinds.is_empty() {
                    &ctx.w.phantoms[pick(r, &ctx.train_phantoms)]
                } else {
                    &ctx.w.phantoms[pick(r, &self.phantom_pool(kinds))]
                };
                let a = pick(r, e.kind.attrs());
                let prompt = fact_question(r, e, a);
                (prompt.clone(), prompt, IDK.to_string())
            }
        }
    }

    /// Whether `prompt` is one the held-out eval (or its hard slice) reserves.
    pub fn is_reserved(&self, prompt: &str) -> bool {
        self.ctx.reserved_prompts.contains(prompt)
    }
}

/// What a [`TaskGen`] has emitted, per level.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GenState {
    /// One entry per level drawn from.
    pub levels: Vec<LevelState>,
}

/// What one level has emitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LevelState {
    /// Family.
    pub family: Family,
    /// Level.
    pub level: u32,
    /// Completed passes over the level's pool.
    pub passes: u32,
    /// Keys of the problems emitted in the current pass.
    pub keys: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expression of an arithmetic prompt ("What is 3 + (4 * 5)?" -> "3 + (4 * 5)").
    fn expr_of(prompt: &str) -> &str {
        let start = prompt.find(|c: char| c.is_ascii_digit() || c == '(').unwrap();
        let end = prompt.rfind(|c: char| c.is_ascii_digit() || c == ')').unwrap();
        &prompt[start..=end]
    }

    fn operators(expr: &str) -> usize {
        expr.split_whitespace()
            .filter(|w| matches!(*w, "+" | "-" | "*"))
            .count()
    }

    #[test]
    fn never_repeats_never_an_eval_problem() {
        let g = generate(7, Scale::Small);
        let mut gen = TaskGen::new(7, Scale::Small);
        let evals = || g.eval.iter().chain(&g.eval_hard);
        let eval_prompts: HashSet<&str> = evals().map(|t| t.prompt.as_str()).collect();
        let eval_exprs: HashSet<String> = evals()
            .filter(|t| t.task == "arithmetic")
            .map(|t| expr_key(expr_of(&t.prompt)))
            .collect();
        assert_eq!(eval_exprs.len(), 2 * EVAL_PER_TASK, "the hard slice is reserved too");
        let eval_programs: HashSet<&str> = evals()
            .filter(|t| t.task == "program")
            .map(|t| t.prompt.split_once('\n').unwrap().1)
            .collect();
        let mut r = R::seed_from_u64(1);
        let mut problems: HashSet<String> = HashSet::new();
        for i in 0..3000 {
            let family = [Family::Arithmetic, Family::Program, Family::Unanswerable][i % 3];
            let level = 1 + (i / 3) as u32 % *family.levels().end();
            let t = gen.sample(&mut r, family, level);
            assert!(
                !eval_prompts.contains(t.prompt.as_str()),
                "eval prompt emitted: {}",
                t.prompt
            );
            assert!(!gen.is_reserved(&t.prompt));
            match family {
                Family::Arithmetic => {
                    let e = expr_of(&t.prompt);
                    assert_eq!(operators(e), level as usize, "{}", t.prompt);
                    assert!(!eval_exprs.contains(&expr_key(e)), "eval numbers: {}", t.prompt);
                    assert!(problems.insert(format!("a:{e}")), "repeated: {}", t.prompt);
                }
                Family::Program => {
                    let code = t.prompt.split_once('\n').unwrap().1;
                    assert!(!eval_programs.contains(code), "eval program: {}", t.prompt);
                    assert!(problems.insert(format!("p:{code}")), "repeated: {}", t.prompt);
                }
                _ => assert_eq!(t.answer, IDK),
            }
        }
        // 1,000 arithmetic problems over 6 levels and 1,000 programs: no level ran dry.
        assert!(
            !gen.passes().contains_key(&(Family::Arithmetic, 1)),
            "{:?}",
            gen.passes()
        );
        assert!(!gen.passes().contains_key(&(Family::Program, 1)), "{:?}", gen.passes());
    }

    #[test]
    fn fact_questions_come_from_train_pairs_only() {
        let g = generate(11, Scale::Small);
        let mut gen = TaskGen::new(11, Scale::Small);
        // An eval fact question and a generated one never name the same (entity, answer).
        let eval_facts: HashSet<(&str, &str)> = g
            .eval
            .iter()
            .filter(|t| t.task == "facts")
            .map(|t| (t.prompt.as_str(), t.answer.as_str()))
            .collect();
        let mut r = R::seed_from_u64(5);
        for i in 0..500 {
            let t = gen.sample(&mut r, Family::Facts, 1 + i % 2);
            assert!(
                !eval_facts.contains(&(t.prompt.as_str(), t.answer.as_str())),
                "{}",
                t.prompt
            );
            assert!(!t.answer.is_empty());
        }
    }

    #[test]
    fn finite_pools_start_over_and_count_passes() {
        let mut gen = TaskGen::new(5, Scale::Small);
        let mut r = R::seed_from_u64(3);
        let pool = gen.ctx.train_pairs_rare.len();
        assert!(pool > 0);
        for _ in 0..pool {
            gen.sample(&mut r, Family::Facts, 2);
        }
        assert!(gen.passes().is_empty(), "the first pass holds {pool} fresh problems");
        gen.sample(&mut r, Family::Facts, 2);
        assert_eq!(gen.passes().get(&(Family::Facts, 2)), Some(&1));
    }

    #[test]
    fn state_round_trips() {
        let mut a = TaskGen::new(9, Scale::Small);
        let mut r = R::seed_from_u64(4);
        for i in 0..50 {
            a.sample(&mut r, Family::ALL[i % 4], 1);
        }
        let mut b = TaskGen::new(9, Scale::Small);
        b.restore(&a.state());
        assert_eq!(a.state(), b.state());
        let mut r2 = r.clone();
        for i in 0..200 {
            let f = Family::ALL[i % 4];
            assert_eq!(a.sample(&mut r, f, 1), b.sample(&mut r2, f, 1));
        }
    }
}
