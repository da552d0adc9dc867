//! The embedded default world: a small fictional world and the data of every
//! training stage (pretraining library, SFT conversations, RL prompts and the
//! held-out task eval), generated from a seed in a few seconds.
//!
//! Determinism: every random draw comes from [`ChaCha8Rng`] streams derived
//! from the seed, and only ordered collections (`Vec`, `BTreeMap`) are iterated;
//! `HashSet`s are used for membership tests only. The same seed therefore gives
//! identical data on every machine.
//!
//! The world has four kinds of entities (towns, people, minerals, rivers), each
//! with 3 or 4 attributes. A few library entities are *rare*: they get a single
//! encyclopedia article, yet SFT asks about them (the annotator knows them), which
//! teaches the model to answer confidently about things it barely saw. *Phantom*
//! entities appear nowhere in the library or in SFT; questions about them, phrased
//! exactly like fact questions, form the "unanswerable" task (reference answer
//! "I don't know"). Phantoms are split between RL train and eval. A third pool of
//! throwaway *unknown* entities, disjoint from both, is asked about in a few chatter forum
//! threads and ~4% of SFT conversations, always answered "I don't know", so that abstaining
//! is in the model's prior before RL.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

mod annotator;
mod arithmetic;
mod chatter;
mod encyclopedia;
mod fabricated;
mod followup;
mod library;
mod names;
mod programs;
mod stream;
mod tasks;
mod vocab;
pub use annotator::{Annotator, Slips};
pub use arithmetic::column_step;
use arithmetic::*;
use chatter::*;
use encyclopedia::*;
use followup::*;
pub use followup::{SFT_FOLLOWUPS, SFT_FOLLOWUPS_EVAL};
use library::*;
use names::*;
use programs::*;
pub use stream::{Family, GenState, GenTask, LevelState, TaskGen};
use tasks::*;
pub use tasks::{generate, generate_with, Options, GHOSTS, HARD_OPS, LIBRARY_COLUMN_SHARE};
use vocab::*;

type R = ChaCha8Rng;

/// How much data to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// ~300 entities and a library of ~14 MB of text.
    Small,
    /// ~4x the entities and ~4x the library of [`Scale::Small`]; SFT, RL and eval keep their sizes.
    Medium,
}

impl Scale {
    fn factor(self) -> usize {
        match self {
            Scale::Small => 1,
            Scale::Medium => 4,
        }
    }
}

impl std::str::FromStr for Scale {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "small" => Ok(Scale::Small),
            "medium" => Ok(Scale::Medium),
            other => anyhow::bail!("unknown scale {other:?} (expected \"small\" or \"medium\")"),
        }
    }
}

/// The kind of an entity; it decides which attributes the entity has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A town: region, founding year, population, main export.
    Town,
    /// A (historical) person: birthplace, birth year, profession.
    Person,
    /// A mineral: colour, town it is mined near, main use.
    Mineral,
    /// A river: source region, sea it flows into, length, town at its mouth.
    River,
}

impl Kind {
    /// The attributes every entity of this kind has, in canonical order.
    pub fn attrs(self) -> &'static [Attr] {
        match self {
            Kind::Town => &[Attr::Region, Attr::Founded, Attr::Population, Attr::Export],
            Kind::Person => &[Attr::Birthplace, Attr::BirthYear, Attr::Profession],
            Kind::Mineral => &[Attr::Color, Attr::MinedNear, Attr::Use],
            Kind::River => &[Attr::Source, Attr::Sea, Attr::Length, Attr::MouthTown],
        }
    }

    /// "town", "person", "mineral" or "river".
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Town => "town",
            Kind::Person => "person",
            Kind::Mineral => "mineral",
            Kind::River => "river",
        }
    }

    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Town, Kind::Person, Kind::Mineral, Kind::River];
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_suffix('s').filter(|t| *t != "person").unwrap_or(&s);
        let s = if s == "people" { "person" } else { s };
        Kind::ALL
            .into_iter()
            .find(|k| k.noun() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown entity kind {s:?} (expected town, person, mineral or river)"))
    }
}

/// An attribute of an entity. Values are stored as the exact answer strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Attr {
    /// Region of a town, e.g. "Northern Reach".
    Region,
    /// Founding year of a town, e.g. "1123".
    Founded,
    /// Population of a town, e.g. "4200".
    Population,
    /// Main export of a town, e.g. "salt".
    Export,
    /// Birthplace (a town name) of a person.
    Birthplace,
    /// Birth year of a person.
    BirthYear,
    /// Profession of a person, e.g. "glassblower".
    Profession,
    /// Colour of a mineral.
    Color,
    /// Town a mineral is mined near.
    MinedNear,
    /// Main use of a mineral, e.g. "glassmaking".
    Use,
    /// Region where a river rises.
    Source,
    /// Sea a river flows into.
    Sea,
    /// Length of a river in km.
    Length,
    /// Town at the mouth of a river.
    MouthTown,
}

impl Attr {
    /// User questions; `{n}` is the entity name (rivers take "the" in the template).
    fn questions(self) -> &'static [&'static str] {
        match self {
            Attr::Region => &[
                "In which region is {n}?",
                "Which region is {n} in?",
                "In what region does the town of {n} lie?",
                "Where is the town of {n}?",
            ],
            Attr::Founded => &[
                "In what year was {n} founded?",
                "When was {n} founded?",
                "What year was the town of {n} founded?",
            ],
            Attr::Population => &[
                "What is the population of {n}?",
                "How many people live in {n}?",
                "How many inhabitants does {n} have?",
            ],
            Attr::Export => &[
                "What is the main export of {n}?",
                "What does {n} mainly export?",
                "What is {n} best known for exporting?",
            ],
            Attr::Birthplace => &[
                "Where was {n} born?",
                "In which town was {n} born?",
                "What is the birthplace of {n}?",
            ],
            Attr::BirthYear => &[
                "In what year was {n} born?",
                "When was {n} born?",
                "What is the birth year of {n}?",
            ],
            Attr::Profession => &[
                "What was the profession of {n}?",
                "What did {n} do for a living?",
                "What was {n}'s trade?",
            ],
            Attr::Color => &[
                "What color is {n}?",
                "What is the colour of {n}?",
                "What colour is the mineral {n}?",
            ],
            Attr::MinedNear => &[
                "Where is {n} mined?",
                "Near which town is {n} mined?",
                "Which town is {n} mined near?",
            ],
            Attr::Use => &[
                "What is {n} used for?",
                "What is {n} mainly used in?",
                "What is the main use of {n}?",
            ],
            Attr::Source => &[
                "In which region does the {n} rise?",
                "Where is the source of the {n}?",
                "In what region does the river {n} begin?",
            ],
            Attr::Sea => &[
                "Into which sea does the {n} flow?",
                "Which sea does the river {n} flow into?",
                "Where does the {n} end?",
            ],
            Attr::Length => &[
                "How long is the {n}?",
                "What is the length of the river {n} in km?",
                "How many kilometres long is the {n}?",
            ],
            Attr::MouthTown => &[
                "Which town lies at the mouth of the {n}?",
                "What town stands at the mouth of the river {n}?",
                "Which town is at the mouth of the {n}?",
            ],
        }
    }

    /// Assistant answer sentences (`{n}` name, `{v}` value, `{a}` "a"/"an" for the value).
    fn answers(self) -> &'static [&'static str] {
        match self {
            Attr::Region => &["{n} is in the {v}.", "{n} lies in the {v}."],
            Attr::Founded => &["{n} was founded in {v}."],
            Attr::Population => &["{n} has a population of {v}.", "The population of {n} is {v}."],
            Attr::Export => &["The main export of {n} is {v}.", "{n} mainly exports {v}."],
            Attr::Birthplace => &["{n} was born in {v}."],
            Attr::BirthYear => &["{n} was born in {v}."],
            Attr::Profession => &["{n} was {a} {v}.", "{n} worked as {a} {v}."],
            Attr::Color => &["{n} is {v}.", "{n} is {v} in colour."],
            Attr::MinedNear => &["{n} is mined near {v}."],
            Attr::Use => &["{n} is mainly used in {v}."],
            Attr::Source => &["The {n} rises in the {v}."],
            Attr::Sea => &["The {n} flows into the {v}."],
            Attr::Length => &["The {n} is {v} km long."],
            Attr::MouthTown => &["{v} lies at the mouth of the {n}."],
        }
    }

    /// Opening sentences of an encyclopedia article that also name the kind.
    /// People have none: their articles open with a body sentence about the full name.
    fn leads(self) -> &'static [&'static str] {
        match self {
            Attr::Region => &[
                "{n} is a town in the {v}.",
                "{n} is a small town in the {v}.",
                "The town of {n} lies in the {v}.",
                "{n} is a market town located in the {v}.",
            ],
            Attr::Founded => &[
                "{n} is a town founded in {v}.",
                "{n} is an old town, founded in the year {v}.",
            ],
            Attr::Population => &[
                "{n} is a town with a population of {v}.",
                "{n} is a town of {v} people.",
            ],
            Attr::Export => &[
                "{n} is a town known for its {v}.",
                "{n} is a trading town whose main export is {v}.",
            ],
            Attr::Color => &["{n} is a {v} mineral.", "{n} is a mineral of {v} colour."],
            Attr::MinedNear => &[
                "{n} is a mineral mined near {v}.",
                "{n} is a mineral found near the town of {v}.",
            ],
            Attr::Use => &[
                "{n} is a mineral used mainly in {v}.",
                "{n} is a mineral valued in {v}.",
            ],
            Attr::Source => &[
                "The {n} is a river that rises in the {v}.",
                "The {n} is a river whose source is in the {v}.",
            ],
            Attr::Sea => &[
                "The {n} is a river that flows into the {v}.",
                "The {n} is a river draining into the {v}.",
            ],
            Attr::Length => &[
                "The {n} is a river {v} km long.",
                "The {n} is a river with a length of {v} km.",
            ],
            Attr::MouthTown => &["The {n} is a river with the town of {v} at its mouth."],
            Attr::Birthplace | Attr::BirthYear | Attr::Profession => &[],
        }
    }

    /// Further sentences of an article (`{f}` is the family name of a person, else the name).
    fn bodies(self) -> &'static [&'static str] {
        match self {
            Attr::Region => &[
                "It lies in the {v}.",
                "{n} is located in the {v}.",
                "The town is part of the {v}.",
                "{n} belongs to the region of the {v}.",
            ],
            Attr::Founded => &[
                "It was founded in {v}.",
                "{n} was founded in {v}.",
                "The town was founded in the year {v}.",
                "Records show that {n} was founded in {v}.",
            ],
            Attr::Population => &[
                "It has a population of {v}.",
                "The population of {n} is {v}.",
                "{n} is home to {v} people.",
                "Today {v} people live in {n}.",
            ],
            Attr::Export => &[
                "Its main export is {v}.",
                "The main export of {n} is {v}.",
                "{n} is best known for exporting {v}.",
                "Most of the {v} sold in the region comes from {n}, where it is the main export.",
            ],
            Attr::Birthplace => &[
                "{f} was born in {v}.",
                "{f} was born in the town of {v}.",
                "The birthplace of {f} is {v}.",
                "Born in {v}, {f} spent many years there.",
            ],
            Attr::BirthYear => &[
                "{f} was born in {v}.",
                "{f} was born in the year {v}.",
                "The year of {f}'s birth was {v}.",
                "{f}'s birth year is recorded as {v}.",
            ],
            Attr::Profession => &[
                "{f} was {a} {v}.",
                "{f} worked as {a} {v}.",
                "By trade, {f} was {a} {v}.",
                "{f} was {a} {v} for most of a long life.",
            ],
            Attr::Color => &[
                "It is {v} in colour.",
                "{n} is {v}.",
                "Pure {n} has a {v} color.",
                "The colour of {n} is {v}.",
            ],
            Attr::MinedNear => &[
                "It is mined near {v}.",
                "{n} is mined near the town of {v}.",
                "The main mines of {n} are near {v}.",
                "Most {n} comes from the mines near {v}.",
            ],
            Attr::Use => &[
                "It is mainly used in {v}.",
                "{n} is used mainly in {v}.",
                "The main use of {n} is in {v}.",
                "Craftsmen use {n} mainly in {v}.",
            ],
            Attr::Source => &[
                "It rises in the {v}.",
                "The {n} rises in the {v}.",
                "The source of the {n} is in the {v}.",
                "The {n} begins in the {v}.",
            ],
            Attr::Sea => &[
                "It flows into the {v}.",
                "The {n} empties into the {v}.",
                "The waters of the {n} reach the {v}.",
                "The {n} flows into the {v}.",
            ],
            Attr::Length => &[
                "It is {v} km long.",
                "The {n} is {v} kilometres long.",
                "The length of the {n} is {v} km.",
                "The {n} runs for {v} km.",
            ],
            Attr::MouthTown => &[
                "The town of {v} lies at its mouth.",
                "At the mouth of the {n} lies {v}.",
                "{v} stands at the mouth of the {n}.",
                "The {n} reaches the sea at {v}.",
            ],
        }
    }
}

/// One entity of the world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// Full name as used in text ("Velmora", "Orin Tarskane", "Ossel").
    pub name: String,
    /// The distinctive word of the name: the family name of a person, else the name.
    pub key: String,
    /// Kind of the entity.
    pub kind: Kind,
    /// Attribute values (empty for phantoms: nobody knows them).
    pub facts: Vec<(Attr, String)>,
    /// True for library entities that get a single encyclopedia article only.
    pub rare: bool,
}

impl Entity {
    /// The value of attribute `a`, if the entity has it.
    pub fn fact(&self, a: Attr) -> Option<&str> {
        self.facts.iter().find(|(k, _)| *k == a).map(|(_, v)| v.as_str())
    }
}

/// The fictional world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// Entities described by the library (towns, then people, minerals, rivers).
    pub entities: Vec<Entity>,
    /// Entities that appear nowhere in the library or SFT (only in unanswerable questions).
    pub phantoms: Vec<Entity>,
    /// Throwaway made-up entities, distinct from the entities and phantoms: named only in
    /// chatter forum threads and SFT conversations whose answer is "I don't know", so that
    /// abstaining is in the model's prior. Never in RL train or the eval.
    pub unknowns: Vec<Entity>,
    /// Given names used for people and in chatter.
    pub given_names: Vec<String>,
    /// Entities only fabricated SFT answers speak of (`--fabricated-facts`; none by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ghosts: Vec<Entity>,
}

/// One chat message (SmolTalk layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// "user", "assistant" or "system".
    pub role: String,
    /// Message text.
    pub content: String,
}

/// One task problem: a plain user question and its reference answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    /// The user question, without any chat template.
    pub prompt: String,
    /// Reference answer (a number, an attribute value, a program output, or "I don't know").
    pub answer: String,
    /// "arithmetic", "facts", "program" or "unanswerable".
    pub task: String,
    /// Earlier turns of the conversation (user, assistant, ...) before `prompt`: empty for a
    /// single-turn question; the multi-turn eval's follow-ups refer back to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Message>,
}

/// Everything the embedded default world provides.
#[derive(Clone, Debug)]
pub struct Generated {
    /// The world itself (entities, phantoms), e.g. for inspection or a JSON dump.
    pub world: World,
    /// (source name, documents) for "encyclopedia", "arithmetic", "code", "chatter", in that order.
    pub library: Vec<(String, Vec<String>)>,
    /// Same sources, documents never in `library`, ~2% of its size, for eval loss.
    pub library_heldout: Vec<(String, Vec<String>)>,
    /// SFT training conversations: [`SFT_TRAIN`] of one or two independent questions, then
    /// [`SFT_FOLLOWUPS`] whose follow-ups refer back to the answer before.
    pub sft_train: Vec<Vec<Message>>,
    /// SFT validation conversations (first user prompt never in `sft_train`).
    pub sft_eval: Vec<Vec<Message>>,
    /// RL training prompts with reference answers (~15% unanswerable).
    pub rl_train: Vec<TaskRow>,
    /// Held-out task eval: `EVAL_PER_TASK` rows of each task, prompts disjoint from all train sets.
    pub eval: Vec<TaskRow>,
    /// A harder held-out slice: `EVAL_PER_TASK` arithmetic problems with [`HARD_OPS`] operations,
    /// one more than any SFT conversation or library solution demonstrates.
    pub eval_hard: Vec<TaskRow>,
    /// The held-out multi-turn eval: follow-up questions ("Now add 10 to that.", "And when was
    /// it founded?") after a first turn given as history; `EVAL_PER_TASK` arithmetic and facts rows.
    pub eval_multiturn: Vec<TaskRow>,
    /// Who wrote the SFT conversations' worked arithmetic ([`Annotator::perfect`] by default).
    pub annotator: Annotator,
    /// The annotator's own answers to the held-out arithmetic problems of `eval` (same prompts,
    /// task "arithmetic"): where it is right, where it slips. Empty for the perfect annotator.
    pub eval_annotator: Vec<TaskRow>,
}

/// Library source names, in the order of [`Generated::library`].
pub const SOURCES: [&str; 4] = ["encyclopedia", "arithmetic", "code", "chatter"];
/// Task names, in the order used for counts.
pub const TASKS: [&str; 4] = ["arithmetic", "facts", "program", "unanswerable"];
/// Reference answer of the unanswerable task.
pub const IDK: &str = "I don't know";
/// Eval rows per task.
pub const EVAL_PER_TASK: usize = 250;
/// SFT training conversations.
pub const SFT_TRAIN: usize = 4000;
/// SFT validation conversations.
pub const SFT_EVAL: usize = 300;
/// RL training rows.
pub const RL_TRAIN: usize = 3000;

/// Sizes that depend on the scale.
struct Plan {
    towns: usize,
    people: usize,
    minerals: usize,
    rivers: usize,
    phantom_towns: usize,
    phantom_people: usize,
    phantom_minerals: usize,
    phantom_rivers: usize,
    /// Throwaway ("I don't know") entities of each kind: towns, people, minerals, rivers.
    unknowns: [usize; 4],
    /// Target bytes per source, in [`SOURCES`] order.
    bytes: [usize; 4],
}

impl Plan {
    fn new(scale: Scale) -> Plan {
        let k = scale.factor();
        Plan {
            towns: 80 * k,
            people: 120 * k,
            minerals: 50 * k,
            rivers: 50 * k,
            phantom_towns: 30 * k,
            phantom_people: 50 * k,
            phantom_minerals: 20 * k,
            phantom_rivers: 20 * k,
            unknowns: [16 * k, 20 * k, 12 * k, 12 * k],
            bytes: [4_200_000 * k, 2_100_000 * k, 2_100_000 * k, 5_600_000 * k],
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn pick<T: Copy>(r: &mut R, xs: &[T]) -> T {
    xs[r.random_range(0..xs.len())]
}

fn pick_ref<'a, T>(r: &mut R, xs: &'a [T]) -> &'a T {
    &xs[r.random_range(0..xs.len())]
}

fn weighted(r: &mut R, w: &[u32]) -> usize {
    let total: u32 = w.iter().sum();
    let mut x = r.random_range(0..total);
    for (i, &wi) in w.iter().enumerate() {
        if x < wi {
            return i;
        }
        x -= wi;
    }
    w.len() - 1
}

/// Replaces `{key}` by its value; unknown keys are kept literally (a test checks none survive).
fn fill(t: &str, kv: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(t.len() + 32);
    let mut rest = t;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find('}') {
            Some(j) => {
                let key = &after[..j];
                match kv.iter().find(|(k, _)| *k == key) {
                    Some((_, v)) => out.push_str(v),
                    None => out.push_str(&rest[i..i + j + 2]),
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn an(word: &str) -> &'static str {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u' | 'A' | 'E' | 'I' | 'O' | 'U') => "an",
        _ => "a",
    }
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [rest @ .., last] => format!("{} and {}", rest.join(", "), last),
    }
}

/// FNV-1a, used for cheap membership sets of documents (and in tests).
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn sub_rng(master: &mut R) -> R {
    R::seed_from_u64(master.next_u64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    fn small() -> &'static Generated {
        static G: OnceLock<Generated> = OnceLock::new();
        G.get_or_init(|| generate(7, Scale::Small))
    }

    /// Worked arithmetic answers (SFT assistant turns with an `Answer:` line after `=` or column
    /// steps), and how many of them work in columns.
    fn column_counts(g: &Generated) -> (usize, usize) {
        let worked: Vec<&str> = g
            .sft_train
            .iter()
            .flatten()
            .filter(|m| m.role == "assistant" && m.content.contains("Answer: "))
            .filter(|m| m.content.contains(" = ") || m.content.contains(", so "))
            .map(|m| m.content.as_str())
            .collect();
        let cols = worked.iter().filter(|c| c.contains(", so ")).count();
        (worked.len(), cols)
    }

    #[test]
    fn column_share_writes_that_share_of_sft_arithmetic_in_columns() {
        let (worked, cols) = column_counts(small());
        assert!(worked > 500, "{worked} worked answers");
        assert_eq!(cols, 0, "the default world has no column working");
        let opts = Options {
            column_share: 0.2,
            ..Options::default()
        };
        let g = generate_with(7, Scale::Small, &opts);
        let (worked, cols) = column_counts(&g);
        // Problems whose every step is one fact (`3 + 4`) stay single lines, so the share of
        // answers showing columns is a little under 20%; 1,000+ answers put it within ±4 points.
        let share = cols as f64 / worked as f64;
        assert!((0.12..0.24).contains(&share), "{cols} of {worked} in columns");
        let arith = &g.library.iter().find(|(n, _)| n == "arithmetic").unwrap().1;
        let lib_cols = arith.iter().filter(|d| d.contains(", so ")).count();
        assert!(
            lib_cols * 4 > arith.len(),
            "{lib_cols} of {} library documents",
            arith.len()
        );
        // The eval and RL prompts do not depend on how the annotators write.
        assert_eq!(g.eval.len(), small().eval.len());
        assert!(g
            .eval
            .iter()
            .zip(&small().eval)
            .all(|(a, b)| a.prompt == b.prompt && a.answer == b.answer));
    }

    fn all_strings(g: &Generated) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for (name, docs) in g.library.iter().chain(&g.library_heldout) {
            v.push(name);
            v.extend(docs.iter().map(String::as_str));
        }
        for conv in g.sft_train.iter().chain(&g.sft_eval) {
            for m in conv {
                v.push(&m.role);
                v.push(&m.content);
            }
        }
        for t in g.rl_train.iter().chain(&g.eval) {
            v.extend([t.prompt.as_str(), t.answer.as_str(), t.task.as_str()]);
        }
        v
    }

    fn fingerprint(g: &Generated) -> u64 {
        let mut h: u64 = 0;
        for s in all_strings(g) {
            h = h.rotate_left(5) ^ fnv(s);
            h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        h
    }

    #[test]
    fn deterministic_per_seed() {
        let a = small();
        let b = generate(7, Scale::Small);
        assert_eq!(fingerprint(a), fingerprint(&b));
        assert_eq!(a.world, b.world);
        let c = generate(8, Scale::Small);
        assert_ne!(fingerprint(a), fingerprint(&c));
    }

    #[test]
    fn sizes_and_shapes() {
        let g = small();
        let names: Vec<&str> = g.library.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, SOURCES);
        let bytes: Vec<usize> = g.library.iter().map(|(_, d)| d.iter().map(String::len).sum()).collect();
        let total: usize = bytes.iter().sum();
        assert!((12_000_000..=16_500_000).contains(&total), "library bytes {bytes:?}");
        let held: usize = g
            .library_heldout
            .iter()
            .map(|(_, d)| d.iter().map(String::len).sum::<usize>())
            .sum();
        assert!(held * 60 > total && held * 40 < total, "held-out bytes {held}");
        assert_eq!(g.sft_train.len(), SFT_TRAIN + SFT_FOLLOWUPS);
        assert_eq!(g.sft_eval.len(), SFT_EVAL + SFT_FOLLOWUPS_EVAL);
        assert_eq!(g.rl_train.len(), RL_TRAIN);
        for task in TASKS {
            assert_eq!(
                g.eval.iter().filter(|t| t.task == task).count(),
                EVAL_PER_TASK,
                "{task}"
            );
        }
        let unans = g.rl_train.iter().filter(|t| t.task == "unanswerable").count();
        assert!(unans * 100 >= RL_TRAIN * 14 && unans * 100 <= RL_TRAIN * 16, "{unans}");
        assert_eq!(g.world.entities.len(), 300);
        assert_eq!(g.world.phantoms.len(), 120);
        assert_eq!(g.world.unknowns.len(), 60);
    }

    #[test]
    fn held_out_library_is_disjoint() {
        let g = small();
        for ((_, lib), (_, held)) in g.library.iter().zip(&g.library_heldout) {
            let set: HashSet<&str> = lib.iter().map(String::as_str).collect();
            assert!(!held.is_empty());
            assert!(held.iter().all(|d| !set.contains(d.as_str())));
        }
    }

    #[test]
    fn eval_disjoint_from_train() {
        let g = small();
        let mut train: HashSet<&str> = g.rl_train.iter().map(|t| t.prompt.as_str()).collect();
        for conv in g.sft_train.iter().chain(&g.sft_eval) {
            train.extend(conv.iter().map(|m| m.content.as_str()));
        }
        for t in &g.eval {
            assert!(!train.contains(t.prompt.as_str()), "{:?}", t.prompt);
        }
        // Program sources and arithmetic expressions of the eval are not in the library either.
        let lib: Vec<&str> = g.library[1]
            .1
            .iter()
            .chain(&g.library[2].1)
            .map(String::as_str)
            .collect();
        for t in g.eval.iter().filter(|t| t.task == "program").take(30) {
            let code = format!(
                "```python\n{}",
                t.prompt.split("```python\n").nth(1).unwrap_or_default()
            );
            assert!(!lib.iter().any(|d| d.contains(&code)), "{code}");
        }
    }

    #[test]
    fn sft_format() {
        let g = small();
        for conv in g.sft_train.iter().chain(&g.sft_eval) {
            assert!(conv.len() >= 2);
            for m in conv {
                assert!(["user", "assistant", "system"].contains(&m.role.as_str()));
                if m.role == "assistant" {
                    let last = m.content.lines().last().unwrap_or_default();
                    assert!(last.starts_with("Answer: "), "{:?}", m.content);
                    // "I don't know" only as the no-record answer about a throwaway entity.
                    if m.content.contains(IDK) {
                        assert!(
                            m.content.starts_with("I have no record of ") && last == format!("Answer: {IDK}"),
                            "{:?}",
                            m.content
                        );
                    }
                }
            }
            assert_eq!(conv.last().map(|m| m.role.as_str()), Some("assistant"));
        }
        // Rare entities are asked about in SFT.
        let rare: Vec<&Entity> = g.world.entities.iter().filter(|e| e.rare).collect();
        assert!(!rare.is_empty());
        let asked = rare
            .iter()
            .filter(|e| {
                g.sft_train
                    .iter()
                    .any(|c| c.iter().any(|m| m.role == "user" && m.content.contains(&e.name)))
            })
            .count();
        assert!(asked * 2 >= rare.len(), "{asked} of {}", rare.len());
    }

    #[test]
    fn answers_match_world() {
        let g = small();
        let by_name: BTreeMap<&str, &Entity> = g.world.entities.iter().map(|e| (e.name.as_str(), e)).collect();
        for t in g.rl_train.iter().chain(&g.eval) {
            match t.task.as_str() {
                "facts" => {
                    let e = by_name.iter().find(|(n, _)| t.prompt.contains(*n)).map(|(_, e)| *e);
                    let e = e.unwrap_or_else(|| panic!("no entity in {:?}", t.prompt));
                    assert!(e.facts.iter().any(|(_, v)| *v == t.answer), "{t:?}");
                }
                "unanswerable" => assert_eq!(t.answer, IDK),
                "arithmetic" => assert!(t.answer.parse::<i64>().is_ok(), "{t:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn no_template_leftovers() {
        let g = small();
        for s in all_strings(g) {
            assert!(!s.contains('{') && !s.contains('}'), "{s:?}");
        }
    }

    fn words(text: &str, set: &mut HashSet<String>) {
        for w in text.split(|c: char| !c.is_alphanumeric()) {
            if !w.is_empty() && !set.contains(w) {
                set.insert(w.to_string());
            }
        }
    }

    #[test]
    fn phantoms_never_in_train_text() {
        let g = small();
        let mut lib_sft: HashSet<String> = HashSet::new();
        for (_, docs) in g.library.iter().chain(&g.library_heldout) {
            for d in docs {
                words(d, &mut lib_sft);
            }
        }
        for conv in g.sft_train.iter().chain(&g.sft_eval) {
            for m in conv {
                words(&m.content, &mut lib_sft);
            }
        }
        let mut rl: HashSet<String> = HashSet::new();
        for t in &g.rl_train {
            words(&t.prompt, &mut rl);
            words(&t.answer, &mut rl);
        }
        let eval_text: String = g.eval.iter().map(|t| t.prompt.as_str()).collect::<Vec<_>>().join("\n");
        let mut in_rl = 0;
        for p in &g.world.phantoms {
            assert!(!lib_sft.contains(&p.key), "phantom {} in library/SFT", p.name);
            if rl.contains(&p.key) {
                in_rl += 1;
                // A phantom of RL train is never one of the eval.
                assert!(
                    !eval_text.contains(&p.name),
                    "phantom {} in both rl_train and eval",
                    p.name
                );
            }
        }
        assert!(in_rl > 0);
        // Every unanswerable eval question names a phantom absent from all train text.
        for t in g.eval.iter().filter(|t| t.task == "unanswerable") {
            let p = g.world.phantoms.iter().find(|p| t.prompt.contains(&p.name));
            let p = p.unwrap_or_else(|| panic!("no phantom in {:?}", t.prompt));
            assert!(!rl.contains(&p.key) && !lib_sft.contains(&p.key));
        }
    }

    #[test]
    fn rare_entities_are_rare() {
        let g = small();
        let enc = &g.library[0].1;
        let text_count = |name: &str| enc.iter().filter(|d| d.contains(name)).count();
        for e in g.world.entities.iter().filter(|e| e.rare) {
            assert_eq!(text_count(&e.name), 1, "{}", e.name);
        }
        let common = g.world.entities.iter().find(|e| !e.rare && e.kind == Kind::Mineral);
        let common = common.map(|e| text_count(&e.name)).unwrap_or_default();
        assert!(common >= 10, "{common}");
    }

    #[test]
    fn programs_match_python() {
        let g = small();
        let mut progs: Vec<(String, String)> = g
            .eval
            .iter()
            .chain(&g.rl_train)
            .filter(|t| t.task == "program")
            .take(12)
            .map(|t| {
                (
                    t.prompt
                        .split("```python\n")
                        .nth(1)
                        .unwrap_or_default()
                        .trim_end_matches("```")
                        .to_string(),
                    t.answer.clone(),
                )
            })
            .collect();
        // Library programs, including multi-line outputs.
        for d in g.library[2].1.iter().take(8) {
            let first = d.split("```python\n").nth(1).unwrap_or_default();
            let (code, rest) = first.split_once("```\n").unwrap_or_default();
            let out = rest.split("\n\n").next().unwrap_or_default();
            let out = out
                .strip_prefix("Output: ")
                .or_else(|| out.strip_prefix("Output:\n"))
                .unwrap_or_default();
            progs.push((code.to_string(), out.to_string()));
        }
        assert_eq!(progs.len(), 20);
        for (code, expected) in progs {
            let mut child = match Command::new("python3")
                .arg("-")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => panic!("cannot run python3: {e}"),
            };
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(code.as_bytes()).expect("write to python3");
            }
            let out = child.wait_with_output().expect("python3 output");
            assert!(out.status.success(), "python3 failed on:\n{code}");
            let got = String::from_utf8_lossy(&out.stdout);
            assert_eq!(got.trim_end_matches('\n'), expected, "program:\n{code}");
        }
    }

    /// Number of operations of an arithmetic prompt (no template has + - or *).
    fn ops_in(prompt: &str) -> usize {
        prompt.chars().filter(|c| matches!(c, '+' | '-' | '*')).count()
    }

    /// Number of operations of an SFT arithmetic answer; None for other answers.
    fn worked_ops(answer: &str) -> Option<usize> {
        let first = answer.lines().next()?;
        let t: Vec<&str> = first.split_whitespace().collect();
        let t = if t.len() == 7 && t[0] == "Step" && t[1] == "1:" {
            &t[2..]
        } else {
            &t[..]
        };
        let is_step = t.len() == 5
            && ["+", "-", "*"].contains(&t[1])
            && t[3] == "="
            && [t[0], t[2], t[4]].iter().all(|x| x.parse::<u32>().is_ok());
        is_step.then(|| answer.lines().count() - 1)
    }

    fn assert_spread(counts: [usize; 3], what: &str) {
        let n: usize = counts.iter().sum();
        assert!(n > 0, "{what}: no arithmetic");
        for (k, &pct) in ARITH_OPS_PCT.iter().enumerate() {
            let got = counts[k] as f64 * 100.0 / n as f64;
            assert!(
                (got - f64::from(pct)).abs() <= 5.0,
                "{what}: {} ops {got:.1}% (want {pct}%), counts {counts:?}",
                k + 1
            );
        }
    }

    #[test]
    fn arithmetic_difficulty_spread() {
        let g = small();
        for (rows, what) in [(&g.eval, "eval"), (&g.rl_train, "rl_train")] {
            let mut counts = [0usize; 3];
            for t in rows.iter().filter(|t| t.task == "arithmetic") {
                let v: i64 = t.answer.parse().expect("numeric answer");
                assert!((0..=999).contains(&v), "{t:?}");
                counts[ops_in(&t.prompt) - 1] += 1;
            }
            assert_spread(counts, what);
        }
        // SFT: one line for a single operation, "Step i:" lines otherwise (the conversations
        // with follow-ups, after SFT_TRAIN, work on the previous answer: checked in `followup`).
        let mut counts = [0usize; 3];
        for conv in &g.sft_train[..SFT_TRAIN] {
            for pair in conv.windows(2) {
                if pair[1].role != "assistant" {
                    continue;
                }
                if let Some(ops) = worked_ops(&pair[1].content) {
                    assert_eq!(ops_in(&pair[0].content), ops, "{pair:?}");
                    let steps = pair[1].content.contains("Step 1: ");
                    assert_eq!(steps, ops > 1, "{:?}", pair[1].content);
                    counts[ops - 1] += 1;
                }
            }
        }
        assert_spread(counts, "sft_train");
    }

    #[test]
    fn library_arithmetic_has_sft_style_solutions() {
        let g = small();
        let docs = &g.library[1].1;
        // Question lines of the SFT form followed by a worked answer copying its numbers.
        let mut solved = 0usize;
        let mut with_qa = 0usize;
        for d in docs {
            let lines: Vec<&str> = d.lines().collect();
            let mut found = false;
            for w in lines.windows(2) {
                let q = w[0].strip_prefix("Q: ").unwrap_or(w[0]);
                let a = w[1].strip_prefix("A: ").unwrap_or(w[1]);
                let is_prompt = ARITH_PROMPTS.iter().any(|t| {
                    let (pre, post) = t.split_once("{e}").unwrap_or_default();
                    q.starts_with(pre) && q.ends_with(post) && q.len() > t.len()
                });
                if !is_prompt || worked_ops(a).is_none() || ops_in(q) == 0 {
                    continue;
                }
                // The first step's operands are numbers of the question.
                let nums = expr_key(q);
                let step = a.trim_start_matches("Step 1: ");
                let mut it = step.split_whitespace();
                let (x, y) = (it.next().unwrap_or(""), it.nth(1).unwrap_or(""));
                let has = |n: &str| nums.split(' ').any(|m| m == n);
                if has(x) && has(y) {
                    solved += 1;
                    found = true;
                }
            }
            with_qa += usize::from(found);
            for line in d.lines().filter(|l| l.starts_with("Answer: ")) {
                assert!(line[8..].parse::<i64>().is_ok(), "{line:?}");
            }
        }
        assert!(with_qa * 100 >= docs.len() * 30, "{with_qa} of {}", docs.len());
        assert!(solved >= 8_000, "{solved}");
    }

    #[test]
    fn unknown_pool_is_separate() {
        let g = small();
        let w = &g.world;
        assert!(!w.unknowns.is_empty());
        for u in &w.unknowns {
            assert!(u.facts.is_empty());
            for other in w.entities.iter().chain(&w.phantoms) {
                assert!(
                    !other.key.contains(&u.key) && !u.key.contains(&other.key),
                    "{} vs {}",
                    u.name,
                    other.name
                );
            }
        }
        // Never in RL train or the eval; present in chatter and SFT.
        let mut rl_eval: HashSet<String> = HashSet::new();
        for t in g.rl_train.iter().chain(&g.eval) {
            words(&t.prompt, &mut rl_eval);
            words(&t.answer, &mut rl_eval);
        }
        for u in &w.unknowns {
            assert!(!rl_eval.contains(&u.key), "{} in rl_train/eval", u.name);
        }
        let sft_text: String = g
            .sft_train
            .iter()
            .flatten()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let chatter = g.library[3].1.join("\n");
        let in_sft = w.unknowns.iter().filter(|u| sft_text.contains(&u.key));
        assert!(in_sft.count() * 2 >= w.unknowns.len());
        let in_chatter = w.unknowns.iter().filter(|u| chatter.contains(&u.key));
        assert!(in_chatter.count() * 2 >= w.unknowns.len());
    }

    #[test]
    fn sft_has_a_few_idk_answers() {
        let g = small();
        for (convs, what) in [(&g.sft_train, "train"), (&g.sft_eval, "eval")] {
            let idk: Vec<&Vec<Message>> = convs
                .iter()
                .filter(|c| c.iter().any(|m| m.role == "assistant" && m.content.contains(IDK)))
                .collect();
            let pct = idk.len() as f64 * 100.0 / convs.len() as f64;
            assert!((2.0..=6.0).contains(&pct), "sft {what}: {pct:.1}% I don't know");
            for c in idk {
                let user = first_user(c);
                let u = g.world.unknowns.iter().find(|u| user.contains(&u.name));
                let u = u.unwrap_or_else(|| panic!("no throwaway entity in {user:?}"));
                // Phrased exactly like a fact question.
                let asked = u
                    .kind
                    .attrs()
                    .iter()
                    .any(|a| a.questions().iter().any(|t| fill(t, &[("n", &u.name)]) == user));
                assert!(asked, "{user:?}");
                let answer = &c[c.len() - 1].content;
                assert_eq!(answer, &no_record_answer(u));
            }
        }
    }

    #[test]
    fn chatter_has_idk_threads() {
        let g = small();
        let forum: Vec<&String> = g.library[3].1.iter().filter(|d| d.contains("\nPosted by ")).collect();
        let idk = forum.iter().filter(|d| d.contains(IDK)).count();
        let pct = idk as f64 * 100.0 / forum.len() as f64;
        assert!((7.0..=13.0).contains(&pct), "{pct:.1}% of forum threads");
        // Every "I don't know" of the chatter is about a throwaway name.
        for d in g.library[3].1.iter().filter(|d| d.contains(IDK)) {
            assert!(g.world.unknowns.iter().any(|u| d.contains(&u.name)), "{d}");
        }
    }

    #[test]
    fn eval_words_never_a_train_unit() {
        // The whole-text check of the decontamination: lower-cased words, operators ignored.
        let key = |s: &str| -> String {
            s.split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_lowercase)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let g = small();
        let mut train: HashSet<String> = g.rl_train.iter().map(|t| key(&t.prompt)).collect();
        for conv in g.sft_train.iter().chain(&g.sft_eval) {
            train.extend(conv.iter().map(|m| key(&m.content)));
        }
        for t in &g.eval {
            assert!(!train.contains(&key(&t.prompt)), "{:?}", t.prompt);
        }
    }

    #[test]
    fn arithmetic_is_correct() {
        let mut r = R::seed_from_u64(1);
        for ops in 1..=3 {
            for _ in 0..500 {
                let a = gen_arith(&mut r, ops);
                assert_eq!(a.steps.len(), ops);
                let last = a.steps.last().map(String::as_str).unwrap_or_default();
                assert!(last.ends_with(&format!("= {}", a.value)));
                // Re-evaluate the rendered expression with a tiny precedence parser.
                assert_eq!(eval_expr(&a.expr), a.value, "{}", a.expr);
            }
        }
    }

    /// Shunting-free recursive descent over + - * and parentheses.
    fn eval_expr(s: &str) -> i64 {
        fn atom(t: &[&str], i: &mut usize) -> i64 {
            if t[*i] == "(" {
                *i += 1;
                let v = sum(t, i);
                *i += 1; // ')'
                v
            } else {
                let v = t[*i].parse().unwrap_or(i64::MIN);
                *i += 1;
                v
            }
        }
        fn prod(t: &[&str], i: &mut usize) -> i64 {
            let mut v = atom(t, i);
            while *i < t.len() && t[*i] == "*" {
                *i += 1;
                v *= atom(t, i);
            }
            v
        }
        fn sum(t: &[&str], i: &mut usize) -> i64 {
            let mut v = prod(t, i);
            while *i < t.len() && (t[*i] == "+" || t[*i] == "-") {
                let op = t[*i];
                *i += 1;
                let w = prod(t, i);
                v = if op == "+" { v + w } else { v - w };
            }
            v
        }
        let spaced = s.replace('(', "( ").replace(')', " )");
        let toks: Vec<&str> = spaced.split_whitespace().collect();
        let mut i = 0;
        sum(&toks, &mut i)
    }
}
