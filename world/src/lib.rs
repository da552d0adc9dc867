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
mod fabricated;
mod stream;
pub use annotator::{Annotator, Slips};
pub use stream::{Family, GenState, GenTask, LevelState, TaskGen};

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

    fn noun(self) -> &'static str {
        match self {
            Kind::Town => "town",
            Kind::Person => "person",
            Kind::Mineral => "mineral",
            Kind::River => "river",
        }
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
    /// SFT training conversations.
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

// ---------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------

const REGIONS: &[&str] = &[
    "Northern Reach",
    "Amber Coast",
    "Iron Hills",
    "Low Marches",
    "Salt Plains",
    "Greywood",
    "Eastern Fens",
    "High Vale",
];
const EXPORTS: &[&str] = &[
    "salt", "wool", "copper", "glass", "timber", "cheese", "linen", "amber", "iron", "honey", "wine", "pottery",
    "rope", "leather", "tin", "silk",
];
const PROFESSIONS: &[&str] = &[
    "glassblower",
    "weaver",
    "astronomer",
    "blacksmith",
    "cartographer",
    "physician",
    "poet",
    "merchant",
    "shipwright",
    "beekeeper",
    "mason",
    "painter",
    "scribe",
    "brewer",
    "potter",
    "engineer",
    "judge",
    "sailor",
];
const COLORS: &[&str] = &[
    "green", "red", "blue", "black", "white", "yellow", "violet", "grey", "orange", "pink",
];
const USES: &[&str] = &[
    "glassmaking",
    "jewellery",
    "medicine",
    "pottery",
    "dyes",
    "toolmaking",
    "coinage",
    "lamps",
    "paint",
    "mirrors",
    "bellfounding",
    "tanning",
];
const SEAS: &[&str] = &[
    "Grey Sea",
    "Amber Sea",
    "Pale Sea",
    "Northern Sea",
    "Sea of Thorns",
    "Sea of Lanterns",
];

const ONSETS: &[&str] = &[
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "th", "st",
    "h", "sh", "c", "j", "w",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "ae", "ei", "ou", "y"];
const MID_CODAS: &[&str] = &["", "", "", "n", "r", "l"];
const CODAS_BEFORE_C: &[&str] = &["", "", "n", "r", "l", "s", "m"];
const CODAS_BEFORE_V: &[&str] = &[
    "n", "r", "l", "s", "m", "rn", "nd", "st", "rk", "th", "d", "t", "k", "v",
];
const TOWN_SUFFIXES: &[&str] = &[
    "mora", "holt", "ford", "wick", "mere", "dun", "stead", "ham", "ven", "gard", "by", "ton", "well", "dale",
];
const RIVER_SUFFIXES: &[&str] = &["a", "el", "ar", "is", "ane", "ith", "on", "en", "ua"];
const MINERAL_SUFFIXES: &[&str] = &["ite", "ine", "ium", "ase", "olite", "yx"];
const FAMILY_SUFFIXES: &[&str] = &[
    "ane", "ell", "ard", "ric", "wen", "mont", "ley", "os", "ovic", "ander", "ick", "sen",
];
const GIVEN_SUFFIXES: &[&str] = &["a", "o", "in", "el", "is", "an", "ia", "en", ""];

// ---------------------------------------------------------------------------
// Names and the world
// ---------------------------------------------------------------------------

/// Hands out pronounceable names, all distinct, none a substring of another.
#[derive(Default)]
struct Namer {
    taken: Vec<String>,
}

impl Namer {
    fn root(r: &mut R, syllables: usize, suffix: &str) -> String {
        let mut s = String::new();
        for i in 0..syllables {
            if i > 0 || r.random_bool(0.85) {
                s.push_str(pick(r, ONSETS));
            }
            s.push_str(pick(r, VOWELS));
            let last = i + 1 == syllables;
            let coda = if !last {
                pick(r, MID_CODAS)
            } else if suffix.starts_with(['a', 'e', 'i', 'o', 'u', 'y']) {
                pick(r, CODAS_BEFORE_V)
            } else {
                pick(r, CODAS_BEFORE_C)
            };
            s.push_str(coda);
        }
        s
    }

    /// A fresh name: a root of 1 or (with probability `p_two`) 2 syllables plus a suffix.
    fn fresh(&mut self, r: &mut R, suffixes: &[&str], p_two: f64) -> String {
        let mut attempts = 0usize;
        loop {
            attempts += 1;
            let extra = attempts / 200; // widen the space if it gets crowded
            let suffix = pick(r, suffixes);
            let syl = if r.random_bool(p_two) { 2 } else { 1 } + extra;
            let cand = format!("{}{}", Self::root(r, syl, suffix), suffix);
            if cand.len() < 4 || cand.len() > 9 + 2 * extra {
                continue;
            }
            if self
                .taken
                .iter()
                .any(|t| t.contains(&cand) || cand.contains(t.as_str()))
            {
                continue;
            }
            self.taken.push(cand.clone());
            return cap(&cand);
        }
    }
}

fn build_world(r: &mut R, plan: &Plan) -> World {
    let mut namer = Namer::default();
    let given_names: Vec<String> = (0..48).map(|_| namer.fresh(r, GIVEN_SUFFIXES, 0.3)).collect();

    let town_names: Vec<String> = (0..plan.towns + plan.phantom_towns)
        .map(|_| namer.fresh(r, TOWN_SUFFIXES, 0.35))
        .collect();
    let family_names: Vec<String> = (0..plan.people + plan.phantom_people)
        .map(|_| namer.fresh(r, FAMILY_SUFFIXES, 0.35))
        .collect();
    let mineral_names: Vec<String> = (0..plan.minerals + plan.phantom_minerals)
        .map(|_| namer.fresh(r, MINERAL_SUFFIXES, 0.35))
        .collect();
    let river_names: Vec<String> = (0..plan.rivers + plan.phantom_rivers)
        .map(|_| namer.fresh(r, RIVER_SUFFIXES, 0.35))
        .collect();

    // Rare flags first: attributes that name a town only name common towns,
    // so that rare towns are not mentioned in other articles.
    let rare_set = |r: &mut R, n: usize, k: usize| -> Vec<bool> {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(r);
        let mut flags = vec![false; n];
        for &i in idx.iter().take(k) {
            flags[i] = true;
        }
        flags
    };
    let rare_towns = rare_set(r, plan.towns, plan.towns / 20);
    let rare_people = rare_set(r, plan.people, plan.people / 10);
    let rare_minerals = rare_set(r, plan.minerals, plan.minerals / 10);
    let rare_rivers = rare_set(r, plan.rivers, plan.rivers / 10);

    let mut entities = Vec::new();
    let mut founded = Vec::new();
    for (i, name) in town_names.iter().take(plan.towns).enumerate() {
        let year = r.random_range(700..=1650);
        founded.push(year);
        let population = if r.random_bool(0.5) {
            r.random_range(3..10) * 100
        } else {
            r.random_range(10..500) * 100
        };
        entities.push(Entity {
            name: name.clone(),
            key: name.clone(),
            kind: Kind::Town,
            facts: vec![
                (Attr::Region, pick(r, REGIONS).to_string()),
                (Attr::Founded, year.to_string()),
                (Attr::Population, population.to_string()),
                (Attr::Export, pick(r, EXPORTS).to_string()),
            ],
            rare: rare_towns[i],
        });
    }
    let common_towns: Vec<usize> = (0..plan.towns).filter(|&i| !rare_towns[i]).collect();
    for (i, family) in family_names.iter().take(plan.people).enumerate() {
        let town = pick(r, &common_towns);
        let year = founded[town] + r.random_range(20..=(1890 - founded[town]).min(400));
        let name = format!("{} {}", pick_ref(r, &given_names), family);
        entities.push(Entity {
            name,
            key: family.clone(),
            kind: Kind::Person,
            facts: vec![
                (Attr::Birthplace, town_names[town].clone()),
                (Attr::BirthYear, year.to_string()),
                (Attr::Profession, pick(r, PROFESSIONS).to_string()),
            ],
            rare: rare_people[i],
        });
    }
    for (i, name) in mineral_names.iter().take(plan.minerals).enumerate() {
        let town = pick(r, &common_towns);
        entities.push(Entity {
            name: name.clone(),
            key: name.clone(),
            kind: Kind::Mineral,
            facts: vec![
                (Attr::Color, pick(r, COLORS).to_string()),
                (Attr::MinedNear, town_names[town].clone()),
                (Attr::Use, pick(r, USES).to_string()),
            ],
            rare: rare_minerals[i],
        });
    }
    for (i, name) in river_names.iter().take(plan.rivers).enumerate() {
        let town = pick(r, &common_towns);
        entities.push(Entity {
            name: name.clone(),
            key: name.clone(),
            kind: Kind::River,
            facts: vec![
                (Attr::Source, pick(r, REGIONS).to_string()),
                (Attr::Sea, pick(r, SEAS).to_string()),
                (Attr::Length, r.random_range(15..=900).to_string()),
                (Attr::MouthTown, town_names[town].clone()),
            ],
            rare: rare_rivers[i],
        });
    }

    let phantom = |name: String, key: String, kind: Kind| Entity {
        name,
        key,
        kind,
        facts: Vec::new(),
        rare: false,
    };
    let mut phantoms = Vec::new();
    for name in &town_names[plan.towns..] {
        phantoms.push(phantom(name.clone(), name.clone(), Kind::Town));
    }
    for family in &family_names[plan.people..] {
        phantoms.push(phantom(
            format!("{} {}", pick_ref(r, &given_names), family),
            family.clone(),
            Kind::Person,
        ));
    }
    for name in &mineral_names[plan.minerals..] {
        phantoms.push(phantom(name.clone(), name.clone(), Kind::Mineral));
    }
    for name in &river_names[plan.rivers..] {
        phantoms.push(phantom(name.clone(), name.clone(), Kind::River));
    }
    // The throwaway pool last, so that it leaves every earlier draw unchanged. The namer
    // keeps its names distinct from (and no substring of) all the names above.
    let mut unknowns = Vec::new();
    let [u_towns, u_people, u_minerals, u_rivers] = plan.unknowns;
    for _ in 0..u_towns {
        let name = namer.fresh(r, TOWN_SUFFIXES, 0.35);
        unknowns.push(phantom(name.clone(), name, Kind::Town));
    }
    for _ in 0..u_people {
        let family = namer.fresh(r, FAMILY_SUFFIXES, 0.35);
        let name = format!("{} {}", pick_ref(r, &given_names), family);
        unknowns.push(phantom(name, family, Kind::Person));
    }
    for _ in 0..u_minerals {
        let name = namer.fresh(r, MINERAL_SUFFIXES, 0.35);
        unknowns.push(phantom(name.clone(), name, Kind::Mineral));
    }
    for _ in 0..u_rivers {
        let name = namer.fresh(r, RIVER_SUFFIXES, 0.35);
        unknowns.push(phantom(name.clone(), name, Kind::River));
    }
    World {
        entities,
        phantoms,
        unknowns,
        given_names,
        ghosts: Vec::new(),
    }
}

/// A (library entity, attribute) pair: one fact.
type Pair = (usize, Attr);

/// The world plus indexes and the keys reserved for the eval.
struct Ctx {
    w: Arc<World>,
    /// Non-rare library entities of each kind.
    common: BTreeMap<Kind, Vec<usize>>,
    /// Town name -> common people born there / common minerals mined near / common rivers ending there.
    born_in: BTreeMap<String, Vec<usize>>,
    mined_near: BTreeMap<String, Vec<usize>>,
    mouth_of: BTreeMap<String, Vec<usize>>,
    /// Fact pairs usable in train sets (eval pairs excluded); rare-entity pairs separately.
    train_pairs_common: Vec<Pair>,
    train_pairs_rare: Vec<Pair>,
    eval_pairs: Vec<Pair>,
    train_phantoms: Vec<usize>,
    eval_phantoms: Vec<usize>,
    /// Keys reserved by the eval: prompts, arithmetic expressions, program sources.
    reserved_prompts: HashSet<String>,
    reserved_exprs: HashSet<String>,
    reserved_code: HashSet<String>,
    /// Who writes the SFT conversations' worked arithmetic.
    annotator: Annotator,
    /// The held-out arithmetic problems (prompt, problem), for the annotator's answers.
    eval_arith: Vec<(String, Arith)>,
    /// Share of SFT fact answers about [`World::ghosts`] (0 by default).
    fabricated: f64,
    /// Draws of the fabricated answers, apart from every other stream.
    ghost_rng: std::cell::RefCell<R>,
}

impl Ctx {
    fn new(r: &mut R, w: Arc<World>) -> Ctx {
        let mut common: BTreeMap<Kind, Vec<usize>> = BTreeMap::new();
        let mut born_in: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut mined_near: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut mouth_of: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, e) in w.entities.iter().enumerate() {
            if e.rare {
                continue;
            }
            common.entry(e.kind).or_default().push(i);
            for (a, v) in &e.facts {
                let map = match a {
                    Attr::Birthplace => &mut born_in,
                    Attr::MinedNear => &mut mined_near,
                    Attr::MouthTown => &mut mouth_of,
                    _ => continue,
                };
                map.entry(v.clone()).or_default().push(i);
            }
        }
        let mut pairs: Vec<Pair> = w
            .entities
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.kind.attrs().iter().map(move |&a| (i, a)))
            .collect();
        pairs.shuffle(r);
        let eval_pairs: Vec<Pair> = pairs[..EVAL_PER_TASK].to_vec();
        let (train_pairs_rare, train_pairs_common): (Vec<Pair>, Vec<Pair>) =
            pairs[EVAL_PER_TASK..].iter().partition(|(i, _)| w.entities[*i].rare);
        let mut ph: Vec<usize> = (0..w.phantoms.len()).collect();
        ph.shuffle(r);
        let half = ph.len() / 2;
        let eval_phantoms = ph[..half].to_vec();
        let train_phantoms = ph[half..].to_vec();
        Ctx {
            w,
            common,
            born_in,
            mined_near,
            mouth_of,
            train_pairs_common,
            train_pairs_rare,
            eval_pairs,
            train_phantoms,
            eval_phantoms,
            reserved_prompts: HashSet::new(),
            reserved_exprs: HashSet::new(),
            reserved_code: HashSet::new(),
            annotator: Annotator::perfect(),
            eval_arith: Vec::new(),
            fabricated: 0.0,
            ghost_rng: std::cell::RefCell::new(R::seed_from_u64(0)),
        }
    }

    fn any_common(&self, r: &mut R, kind: Kind) -> &Entity {
        let w: &World = &self.w;
        match self.common.get(&kind) {
            Some(v) if !v.is_empty() => &w.entities[pick(r, v)],
            _ => &w.entities[0],
        }
    }
}

fn fact_kv<'b>(e: &'b Entity, v: &'b str) -> [(&'static str, &'b str); 4] {
    let f = if e.kind == Kind::Person {
        e.key.as_str()
    } else {
        e.name.as_str()
    };
    [("n", e.name.as_str()), ("v", v), ("a", an(v)), ("f", f)]
}

/// A fact question about entity `e` (library or phantom) and attribute `a`.
fn fact_question(r: &mut R, e: &Entity, a: Attr) -> String {
    fill(pick(r, a.questions()), &[("n", &e.name)])
}

/// A fact question about a random throwaway entity of [`World::unknowns`], and that entity.
fn unknown_question<'a>(r: &mut R, w: &'a World) -> (String, &'a Entity) {
    let e = pick_ref(r, &w.unknowns);
    let a = pick(r, e.kind.attrs());
    (fact_question(r, e, a), e)
}

/// The name as used mid-sentence: rivers take "the".
fn name_in_text(e: &Entity) -> String {
    if e.kind == Kind::River {
        format!("the {}", e.name)
    } else {
        e.name.clone()
    }
}

/// The annotator's answer to a question about an entity it has no record of.
fn no_record_answer(e: &Entity) -> String {
    format!("I have no record of {}.\nAnswer: {IDK}", name_in_text(e))
}

// ---------------------------------------------------------------------------
// Arithmetic
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum ATree {
    Num(i64),
    Bin(char, Box<ATree>, Box<ATree>),
}

fn prec(op: char) -> u8 {
    if op == '*' {
        2
    } else {
        1
    }
}

impl ATree {
    fn prec(&self) -> u8 {
        match self {
            ATree::Num(_) => 3,
            ATree::Bin(op, _, _) => prec(*op),
        }
    }

    fn render(&self) -> String {
        match self {
            ATree::Num(v) => v.to_string(),
            ATree::Bin(op, a, b) => {
                let p = prec(*op);
                let l = if a.prec() < p {
                    format!("({})", a.render())
                } else {
                    a.render()
                };
                let rr = if b.prec() <= p {
                    format!("({})", b.render())
                } else {
                    b.render()
                };
                format!("{l} {op} {rr}")
            }
        }
    }

    /// Evaluates in post-order, recording "a op b = c" steps; None if a value is out of range.
    fn eval(&self, steps: &mut Vec<String>) -> Option<i64> {
        match self {
            ATree::Num(v) => Some(*v),
            ATree::Bin(op, a, b) => {
                let x = a.eval(steps)?;
                let y = b.eval(steps)?;
                let v = match op {
                    '+' => x + y,
                    '-' => x - y,
                    _ => {
                        if x > 12 && y > 12 {
                            return None;
                        }
                        x * y
                    }
                };
                if !(0..=999).contains(&v) {
                    return None;
                }
                steps.push(format!("{x} {op} {y} = {v}"));
                Some(v)
            }
        }
    }
}

/// A worked arithmetic problem.
#[derive(Clone, Debug)]
struct Arith {
    tree: ATree,
    expr: String,
    steps: Vec<String>,
    value: i64,
}

fn arith_leaf(r: &mut R, parent: char) -> ATree {
    ATree::Num(if parent == '*' {
        if r.random_bool(0.8) {
            r.random_range(2..=12)
        } else {
            r.random_range(13..=60)
        }
    } else if r.random_bool(0.1) {
        r.random_range(0..=9)
    } else {
        r.random_range(1..=99)
    })
}

fn arith_op(r: &mut R) -> char {
    ['+', '-', '*'][weighted(r, &[4, 4, 2])]
}

/// A random expression tree with `ops` operations: 1 to 3 in the shapes of the SFT data, more
/// by adding or subtracting a number to a tree of one operation fewer.
fn arith_tree(r: &mut R, ops: usize) -> ATree {
    if ops > 3 {
        let sub = arith_tree(r, ops - 1);
        let op = if r.random_bool(0.5) { '+' } else { '-' };
        let leaf = arith_leaf(r, op);
        return if r.random_bool(0.5) {
            ATree::Bin(op, Box::new(sub), Box::new(leaf))
        } else {
            ATree::Bin(op, Box::new(leaf), Box::new(sub))
        };
    }
    let o1 = arith_op(r);
    match ops {
        1 => ATree::Bin(o1, Box::new(arith_leaf(r, o1)), Box::new(arith_leaf(r, o1))),
        2 => {
            let o2 = arith_op(r);
            if r.random_bool(0.6) || o1 == '*' || o2 != '*' {
                let inner = ATree::Bin(o2, Box::new(arith_leaf(r, o2)), Box::new(arith_leaf(r, o2)));
                let c = if o1 == '*' {
                    ATree::Num(r.random_range(2..=9))
                } else {
                    arith_leaf(r, o1)
                };
                ATree::Bin(o1, Box::new(inner), Box::new(c))
            } else {
                let inner = ATree::Bin('*', Box::new(arith_leaf(r, '*')), Box::new(arith_leaf(r, '*')));
                ATree::Bin(o1, Box::new(arith_leaf(r, o1)), Box::new(inner))
            }
        }
        _ => {
            let o2 = arith_op(r);
            let o3 = arith_op(r);
            let l3 = |r: &mut R, o: char| ATree::Bin(o, Box::new(arith_leaf(r, o)), Box::new(arith_leaf(r, o)));
            match r.random_range(0..3) {
                0 => {
                    let inner = ATree::Bin(o2, Box::new(l3(r, o3)), Box::new(arith_leaf(r, o2)));
                    let c = if o1 == '*' {
                        ATree::Num(r.random_range(2..=5))
                    } else {
                        arith_leaf(r, o1)
                    };
                    ATree::Bin(o1, Box::new(inner), Box::new(c))
                }
                1 => {
                    let o1 = if o1 == '*' { '+' } else { o1 };
                    ATree::Bin(o1, Box::new(l3(r, o2)), Box::new(l3(r, '*')))
                }
                _ => {
                    let o1 = if o1 == '*' { '-' } else { o1 };
                    let o2 = if o2 == '*' { '+' } else { o2 };
                    let inner = ATree::Bin(o2, Box::new(arith_leaf(r, o2)), Box::new(l3(r, '*')));
                    ATree::Bin(o1, Box::new(inner), Box::new(arith_leaf(r, o1)))
                }
            }
        }
    }
}

/// A random expression with `ops` operations (1 or more), all intermediate values in 0..=999.
fn gen_arith(r: &mut R, ops: usize) -> Arith {
    loop {
        let tree = arith_tree(r, ops);
        let mut steps = Vec::new();
        if let Some(value) = tree.eval(&mut steps) {
            return Arith {
                expr: tree.render(),
                tree,
                steps,
                value,
            };
        }
    }
}

/// The key under which the eval reserves an expression: its numbers only. Operators and
/// parentheses are no words, so two expressions with the same numbers look the same to a
/// word-level decontamination ("What is 58 + 23?" and "What is 58 - 23?").
fn expr_key(expr: &str) -> String {
    expr.split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A random expression not reserved by the eval.
fn gen_arith_train(r: &mut R, ctx: &Ctx, ops: usize) -> Arith {
    loop {
        let a = gen_arith(r, ops);
        if !ctx.reserved_exprs.contains(&expr_key(&a.expr)) {
            return a;
        }
    }
}

const ARITH_PROMPTS: &[&str] = &[
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "What does {e} equal?",
    "Work out {e}.",
    "Evaluate {e}.",
    "{e} = ?",
];

fn arith_prompt(r: &mut R, a: &Arith) -> String {
    fill(pick(r, ARITH_PROMPTS), &[("e", &a.expr)])
}

/// The short worked answer used in SFT (and the library's "Step" format).
fn arith_worked(a: &Arith) -> String {
    render_worked(&a.steps, a.value)
}

/// "a op b = c" alone for one step, "Step i: ..." lines for more, then "Answer: n".
fn render_worked(steps: &[String], value: i64) -> String {
    let mut s = String::new();
    if steps.len() == 1 {
        s.push_str(&steps[0]);
        s.push('\n');
    } else {
        for (i, st) in steps.iter().enumerate() {
            s.push_str(&format!("Step {}: {}\n", i + 1, st));
        }
    }
    s.push_str(&format!("Answer: {value}"));
    s
}

/// Shares (in %) of problems with 1, 2 and 3 operations, everywhere: eval, RL, SFT, library.
const ARITH_OPS_PCT: [u32; 3] = [45, 35, 20];

/// A random number of operations, following [`ARITH_OPS_PCT`].
fn arith_ops(r: &mut R) -> usize {
    1 + weighted(r, &ARITH_OPS_PCT)
}

/// The number of operations of the `i`-th of `n` problems: exact [`ARITH_OPS_PCT`] quotas
/// (callers shuffle the rows afterwards).
fn arith_ops_quota(i: usize, n: usize) -> usize {
    let one = n * ARITH_OPS_PCT[0] as usize / 100;
    let two = n * ARITH_OPS_PCT[1] as usize / 100;
    if i < one {
        1
    } else if i < one + two {
        2
    } else {
        3
    }
}

/// Column-method explanation of a two-digit addition or subtraction.
fn column_problem(r: &mut R) -> String {
    let a: i64 = r.random_range(10..=99);
    if r.random_bool(0.6) {
        let b: i64 = r.random_range(10..=99);
        let (a1, a0, b1, b0) = (a / 10, a % 10, b / 10, b % 10);
        let ones = a0 + b0;
        let carry = ones / 10;
        let mut s = format!("Add {a} and {b}.\nOnes: {a0} + {b0} = {ones}.");
        if carry > 0 {
            s.push_str(&format!(" Write {}, carry 1.", ones % 10));
            s.push_str(&format!("\nTens: {a1} + {b1} + 1 = {}.", a1 + b1 + 1));
        } else {
            s.push_str(&format!("\nTens: {a1} + {b1} = {}.", a1 + b1));
        }
        s.push_str(&format!("\nSo {a} + {b} = {}.\nAnswer: {}", a + b, a + b));
        s
    } else {
        let b: i64 = r.random_range(10..=a);
        let (a1, a0, b1, b0) = (a / 10, a % 10, b / 10, b % 10);
        let mut s = format!("Subtract {b} from {a}.");
        if a0 >= b0 {
            s.push_str(&format!(
                "\nOnes: {a0} - {b0} = {}.\nTens: {a1} - {b1} = {}.",
                a0 - b0,
                a1 - b1
            ));
        } else {
            s.push_str(&format!(
                "\nOnes: {a0} is less than {b0}, so borrow 10: {} - {b0} = {}.\nTens: {} - {b1} = {}.",
                a0 + 10,
                a0 + 10 - b0,
                a1 - 1,
                a1 - 1 - b1
            ));
        }
        s.push_str(&format!("\nSo {a} - {b} = {}.\nAnswer: {}", a - b, a - b));
        s
    }
}

/// A word problem that reuses true facts of common entities.
fn word_problem(r: &mut R, ctx: &Ctx) -> String {
    match r.random_range(0..4) {
        0 => {
            let e = ctx.any_common(r, Kind::River);
            let len: i64 = e.fact(Attr::Length).and_then(|v| v.parse().ok()).unwrap_or(100);
            let done = r.random_range(1..=len.max(2) - 1);
            format!(
                "The {n} is {len} km long. A boat has already travelled {done} km down the {n}. How many km are left?\n{len} - {done} = {left}\nAnswer: {left}",
                n = e.name,
                left = len - done
            )
        }
        1 => {
            let e = ctx.any_common(r, Kind::Town);
            let y: i64 = e.fact(Attr::Founded).and_then(|v| v.parse().ok()).unwrap_or(1000);
            let z = y + r.random_range(1..=300);
            format!(
                "{n} was founded in {y}. How many years had passed by the year {z}?\n{z} - {y} = {d}\nAnswer: {d}",
                n = e.name,
                d = z - y
            )
        }
        2 => {
            let e = ctx.any_common(r, Kind::Town);
            let good = e.fact(Attr::Export).unwrap_or("salt");
            let a = r.random_range(2..=60);
            let b = r.random_range(2..=60);
            format!(
                "The main export of {n} is {good}. One cart leaves {n} with {a} crates of {good} and a second cart with {b} crates. How many crates is that in all?\n{a} + {b} = {s}\nAnswer: {s}",
                n = e.name,
                s = a + b
            )
        }
        _ => {
            let e = ctx.any_common(r, Kind::Person);
            let prof = e.fact(Attr::Profession).unwrap_or("merchant");
            let a = r.random_range(2..=12);
            let b = r.random_range(2..=12);
            format!(
                "{n} was {art} {prof}. If {f} worked {a} days a week for {b} weeks, how many days is that?\n{a} * {b} = {p}\nAnswer: {p}",
                n = e.name,
                art = an(prof),
                f = e.key,
                p = a * b
            )
        }
    }
}

/// One document of the arithmetic source.
fn arithmetic_doc(r: &mut R, ctx: &Ctx) -> String {
    let mut s = String::new();
    match weighted(r, &[12, 20, 8, 5, 8, 12, 35]) {
        6 => {
            // Exactly the SFT exchange: a question as a user asks it, then the worked answer
            // ("Step i: a op b = c" lines, or one line for a single operation, and "Answer: n").
            let qa = r.random_bool(0.3);
            for _ in 0..r.random_range(3..=8) {
                let ops = arith_ops(r);
                let a = gen_arith_train(r, ctx, ops);
                let p = arith_prompt(r, &a);
                if qa {
                    s.push_str(&format!("Q: {p}\nA: {}\n\n", arith_worked(&a)));
                } else {
                    s.push_str(&format!("{p}\n{}\n\n", arith_worked(&a)));
                }
            }
        }
        0 => {
            s.push_str(&format!(
                "{} {}\n\n",
                pick(r, &["Exercise set", "Worksheet", "Practice", "Homework"]),
                r.random_range(1..=99)
            ));
            for _ in 0..r.random_range(4..=10) {
                let ops = arith_ops(r);
                let a = gen_arith_train(r, ctx, ops);
                s.push_str(&format!(
                    "Q: {} = ?\nLet's compute: {}.\nAnswer: {}\n\n",
                    a.expr,
                    a.steps.join(", then "),
                    a.value
                ));
            }
        }
        1 => {
            for i in 1..=r.random_range(3..=8) {
                let ops = arith_ops(r);
                let a = gen_arith_train(r, ctx, ops);
                s.push_str(&format!("Problem {i}: {}\n{}\n\n", a.expr, arith_worked(&a)));
            }
        }
        2 => {
            for _ in 0..r.random_range(2..=5) {
                s.push_str(&column_problem(r));
                s.push_str("\n\n");
            }
        }
        3 => {
            let k = r.random_range(2..=12);
            s.push_str(&format!("The {k} times table:\n"));
            for i in 1..=10 {
                s.push_str(&format!("{k} * {i} = {}\n", k * i));
            }
            let i = r.random_range(2..=12);
            s.push_str(&format!("For example, {k} times {i} is {}.\n", k * i));
        }
        4 => {
            for _ in 0..r.random_range(2..=4) {
                s.push_str(&word_problem(r, ctx));
                s.push_str("\n\n");
            }
        }
        _ => {
            for _ in 0..r.random_range(8..=20) {
                let a = gen_arith_train(r, ctx, 1);
                s.push_str(&format!("{} = {}\n", a.expr, a.value));
            }
        }
    }
    s.trim_end().to_string()
}

// ---------------------------------------------------------------------------
// Programs: a tiny Python subset, rendered and interpreted in Rust
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Int(i64),
    Str(String),
    List(Vec<i64>),
}

impl Val {
    /// Python `str()`.
    fn show(&self) -> String {
        match self {
            Val::Int(v) => v.to_string(),
            Val::Str(s) => s.clone(),
            Val::List(v) => format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }

    /// Python `repr()`.
    fn repr(&self) -> String {
        match self {
            Val::Str(s) => format!("'{s}'"),
            other => other.show(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum POp {
    Add,
    Sub,
    Mul,
    FDiv,
    Mod,
}

impl POp {
    fn sym(self) -> &'static str {
        match self {
            POp::Add => "+",
            POp::Sub => "-",
            POp::Mul => "*",
            POp::FDiv => "//",
            POp::Mod => "%",
        }
    }

    fn prec(self) -> u8 {
        match self {
            POp::Add | POp::Sub => 1,
            _ => 2,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Cmp {
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    fn sym(self) -> &'static str {
        match self {
            Cmp::Lt => "<",
            Cmp::Gt => ">",
            Cmp::Le => "<=",
            Cmp::Ge => ">=",
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
        }
    }
}

#[derive(Clone, Debug)]
enum PEx {
    Int(i64),
    Str(String),
    Var(String),
    List(Vec<i64>),
    Bin(POp, Box<PEx>, Box<PEx>),
    Call(String, Vec<PEx>),
    Index(Box<PEx>, i64),
    Upper(Box<PEx>),
}

#[derive(Clone, Debug)]
struct Cond(PEx, Cmp, PEx);

#[derive(Clone, Debug)]
enum PSt {
    Assign(String, PEx),
    Aug(String, POp, PEx),
    Append(String, PEx),
    Print(Vec<PEx>),
    ForRange(String, i64, i64, Vec<PSt>),
    ForEach(String, String, Vec<PSt>),
    While(Cond, Vec<PSt>),
    If(Cond, Vec<PSt>, Vec<PSt>),
    Def(String, String, PEx),
}

fn v(name: &str) -> PEx {
    PEx::Var(name.to_string())
}

fn int(x: i64) -> PEx {
    PEx::Int(x)
}

fn bin(op: POp, a: PEx, b: PEx) -> PEx {
    PEx::Bin(op, Box::new(a), Box::new(b))
}

fn assign(name: &str, e: PEx) -> PSt {
    PSt::Assign(name.to_string(), e)
}

fn print1(e: PEx) -> PSt {
    PSt::Print(vec![e])
}

impl PEx {
    fn prec(&self) -> u8 {
        match self {
            PEx::Bin(op, _, _) => op.prec(),
            _ => 3,
        }
    }

    fn render(&self) -> String {
        match self {
            PEx::Int(x) => x.to_string(),
            PEx::Str(s) => format!("\"{s}\""),
            PEx::Var(n) => n.clone(),
            PEx::List(xs) => Val::List(xs.clone()).show(),
            PEx::Bin(op, a, b) => {
                let p = op.prec();
                let l = if a.prec() < p {
                    format!("({})", a.render())
                } else {
                    a.render()
                };
                let r = if b.prec() <= p {
                    format!("({})", b.render())
                } else {
                    b.render()
                };
                format!("{l} {} {r}", op.sym())
            }
            PEx::Call(f, args) => {
                format!(
                    "{f}({})",
                    args.iter().map(|a| a.render()).collect::<Vec<_>>().join(", ")
                )
            }
            PEx::Index(a, i) => format!("{}[{i}]", a.render()),
            PEx::Upper(a) => format!("{}.upper()", a.render()),
        }
    }
}

fn render_stmts(stmts: &[PSt], indent: usize, out: &mut String) {
    let pad = "    ".repeat(indent);
    for s in stmts {
        match s {
            PSt::Assign(n, e) => out.push_str(&format!("{pad}{n} = {}\n", e.render())),
            PSt::Aug(n, op, e) => out.push_str(&format!("{pad}{n} {}= {}\n", op.sym(), e.render())),
            PSt::Append(n, e) => out.push_str(&format!("{pad}{n}.append({})\n", e.render())),
            PSt::Print(args) => out.push_str(&format!(
                "{pad}print({})\n",
                args.iter().map(|a| a.render()).collect::<Vec<_>>().join(", ")
            )),
            PSt::ForRange(var, a, b, body) => {
                if *a == 0 {
                    out.push_str(&format!("{pad}for {var} in range({b}):\n"));
                } else {
                    out.push_str(&format!("{pad}for {var} in range({a}, {b}):\n"));
                }
                render_stmts(body, indent + 1, out);
            }
            PSt::ForEach(var, list, body) => {
                out.push_str(&format!("{pad}for {var} in {list}:\n"));
                render_stmts(body, indent + 1, out);
            }
            PSt::While(Cond(a, c, b), body) => {
                out.push_str(&format!("{pad}while {} {} {}:\n", a.render(), c.sym(), b.render()));
                render_stmts(body, indent + 1, out);
            }
            PSt::If(Cond(a, c, b), then, els) => {
                out.push_str(&format!("{pad}if {} {} {}:\n", a.render(), c.sym(), b.render()));
                render_stmts(then, indent + 1, out);
                if !els.is_empty() {
                    out.push_str(&format!("{pad}else:\n"));
                    render_stmts(els, indent + 1, out);
                }
            }
            PSt::Def(name, param, body) => {
                out.push_str(&format!(
                    "{pad}def {name}({param}):\n{pad}    return {}\n\n",
                    body.render()
                ));
            }
        }
    }
}

const VALUE_LIMIT: i64 = 100_000;
const STEP_LIMIT: usize = 5_000;

/// Interpreter of the subset, with Python semantics for everything the generators emit.
#[derive(Default)]
struct Interp {
    vars: BTreeMap<String, Val>,
    funcs: BTreeMap<String, (String, PEx)>,
    out: Vec<String>,
    trace: Vec<(String, Val)>,
    steps: usize,
}

fn binop(op: POp, a: Val, b: Val) -> Option<Val> {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => {
            let r = match op {
                POp::Add => x.checked_add(y)?,
                POp::Sub => x.checked_sub(y)?,
                POp::Mul => x.checked_mul(y)?,
                // Only positive divisors are generated; there Python's floor division and
                // modulo agree with the Euclidean ones.
                POp::FDiv if y > 0 => x.div_euclid(y),
                POp::Mod if y > 0 => x.rem_euclid(y),
                _ => return None,
            };
            (r.abs() <= VALUE_LIMIT).then_some(Val::Int(r))
        }
        (Val::Str(x), Val::Str(y)) if matches!(op, POp::Add) => Some(Val::Str(x + &y)),
        _ => None,
    }
}

fn py_index(len: usize, i: i64) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let j = if i < 0 { len + i } else { i };
    (0..len).contains(&j).then_some(j as usize)
}

impl Interp {
    fn eval(&self, e: &PEx, local: Option<(&str, &Val)>) -> Option<Val> {
        match e {
            PEx::Int(x) => Some(Val::Int(*x)),
            PEx::Str(s) => Some(Val::Str(s.clone())),
            PEx::List(xs) => Some(Val::List(xs.clone())),
            PEx::Var(n) => match local {
                Some((ln, lv)) if ln == n => Some(lv.clone()),
                _ => self.vars.get(n).cloned(),
            },
            PEx::Bin(op, a, b) => binop(*op, self.eval(a, local)?, self.eval(b, local)?),
            PEx::Call(f, args) => {
                let vals = args.iter().map(|a| self.eval(a, local)).collect::<Option<Vec<Val>>>()?;
                match (f.as_str(), vals.as_slice()) {
                    ("len", [Val::Str(s)]) => Some(Val::Int(s.chars().count() as i64)),
                    ("len", [Val::List(xs)]) => Some(Val::Int(xs.len() as i64)),
                    ("sum", [Val::List(xs)]) => Some(Val::Int(xs.iter().sum())),
                    ("max", [Val::List(xs)]) => xs.iter().max().map(|m| Val::Int(*m)),
                    ("min", [Val::List(xs)]) => xs.iter().min().map(|m| Val::Int(*m)),
                    ("abs", [Val::Int(x)]) => Some(Val::Int(x.abs())),
                    (name, [arg]) => {
                        let (param, body) = self.funcs.get(name)?;
                        self.eval(body, Some((param.as_str(), arg)))
                    }
                    _ => None,
                }
            }
            PEx::Index(a, i) => match self.eval(a, local)? {
                Val::Str(s) => {
                    let chars: Vec<char> = s.chars().collect();
                    Some(Val::Str(chars[py_index(chars.len(), *i)?].to_string()))
                }
                Val::List(xs) => Some(Val::Int(xs[py_index(xs.len(), *i)?])),
                Val::Int(_) => None,
            },
            PEx::Upper(a) => match self.eval(a, local)? {
                Val::Str(s) => Some(Val::Str(s.to_uppercase())),
                _ => None,
            },
        }
    }

    fn cond(&self, c: &Cond) -> Option<bool> {
        match (self.eval(&c.0, None)?, self.eval(&c.2, None)?) {
            (Val::Int(a), Val::Int(b)) => Some(match c.1 {
                Cmp::Lt => a < b,
                Cmp::Gt => a > b,
                Cmp::Le => a <= b,
                Cmp::Ge => a >= b,
                Cmp::Eq => a == b,
                Cmp::Ne => a != b,
            }),
            _ => None,
        }
    }

    fn tick(&mut self) -> Option<()> {
        self.steps += 1;
        (self.steps <= STEP_LIMIT).then_some(())
    }

    fn exec(&mut self, stmts: &[PSt], depth: usize) -> Option<()> {
        for s in stmts {
            self.tick()?;
            match s {
                PSt::Assign(n, e) => {
                    let val = self.eval(e, None)?;
                    if depth == 0 {
                        self.trace.push((n.clone(), val.clone()));
                    }
                    self.vars.insert(n.clone(), val);
                }
                PSt::Aug(n, op, e) => {
                    let cur = self.vars.get(n)?.clone();
                    let val = binop(*op, cur, self.eval(e, None)?)?;
                    if depth == 0 {
                        self.trace.push((n.clone(), val.clone()));
                    }
                    self.vars.insert(n.clone(), val);
                }
                PSt::Append(n, e) => {
                    let Val::Int(x) = self.eval(e, None)? else {
                        return None;
                    };
                    match self.vars.get_mut(n)? {
                        Val::List(xs) => xs.push(x),
                        _ => return None,
                    }
                }
                PSt::Print(args) => {
                    let vals = args.iter().map(|a| self.eval(a, None)).collect::<Option<Vec<Val>>>()?;
                    self.out.push(vals.iter().map(Val::show).collect::<Vec<_>>().join(" "));
                }
                PSt::ForRange(var, a, b, body) => {
                    for i in *a..*b {
                        self.vars.insert(var.clone(), Val::Int(i));
                        self.exec(body, depth + 1)?;
                    }
                }
                PSt::ForEach(var, list, body) => {
                    let Val::List(items) = self.vars.get(list)?.clone() else {
                        return None;
                    };
                    for x in items {
                        self.vars.insert(var.clone(), Val::Int(x));
                        self.exec(body, depth + 1)?;
                    }
                }
                PSt::While(c, body) => {
                    while self.cond(c)? {
                        self.tick()?;
                        self.exec(body, depth + 1)?;
                    }
                }
                PSt::If(c, then, els) => {
                    if self.cond(c)? {
                        self.exec(then, depth + 1)?;
                    } else {
                        self.exec(els, depth + 1)?;
                    }
                }
                PSt::Def(name, param, body) => {
                    self.funcs.insert(name.clone(), (param.clone(), body.clone()));
                }
            }
        }
        Some(())
    }
}

/// A generated program with its source and its exact output.
#[derive(Clone, Debug)]
struct Program {
    code: String,
    /// Printed lines.
    out: Vec<String>,
    /// Top-level assignments in order, for straight-line programs only (else empty).
    trace: Vec<(String, Val)>,
}

impl Program {
    fn output(&self) -> String {
        self.out.join("\n")
    }
}

fn run_program(stmts: &[PSt]) -> Option<Program> {
    let mut it = Interp::default();
    it.exec(stmts, 0)?;
    if it.out.is_empty() {
        return None;
    }
    let straight = stmts
        .iter()
        .all(|s| matches!(s, PSt::Assign(..) | PSt::Aug(..) | PSt::Print(..)));
    let mut code = String::new();
    render_stmts(stmts, 0, &mut code);
    Some(Program {
        code,
        out: it.out,
        trace: if straight { it.trace } else { Vec::new() },
    })
}

const VAR_SETS: &[[&str; 3]] = &[
    ["x", "y", "z"],
    ["a", "b", "c"],
    ["p", "q", "r"],
    ["m", "n", "k"],
    ["price", "count", "total"],
    ["width", "height", "area"],
    ["base", "step", "result"],
    ["apples", "pears", "fruit"],
];

fn small_op(r: &mut R) -> POp {
    [POp::Add, POp::Sub, POp::Mul, POp::FDiv, POp::Mod][weighted(r, &[5, 4, 4, 1, 1])]
}

fn const_for(r: &mut R, op: POp) -> i64 {
    match op {
        POp::Mul => r.random_range(2..=6),
        POp::FDiv | POp::Mod => r.random_range(2..=5),
        _ => r.random_range(1..=20),
    }
}

/// An expression over the given variables and small constants.
fn small_expr(r: &mut R, vars: &[&str]) -> PEx {
    let op = small_op(r);
    let lhs = v(pick(r, vars));
    let e = if r.random_bool(0.4) && !matches!(op, POp::FDiv | POp::Mod) && vars.len() > 1 {
        bin(op, lhs, v(pick(r, vars)))
    } else {
        bin(op, lhs, int(const_for(r, op)))
    };
    if r.random_bool(0.3) {
        let op2 = [POp::Add, POp::Sub][r.random_range(0..2)];
        bin(op2, e, int(r.random_range(1..=9)))
    } else {
        e
    }
}

fn cmp_op(r: &mut R) -> Cmp {
    pick(r, &[Cmp::Lt, Cmp::Gt, Cmp::Le, Cmp::Ge, Cmp::Eq, Cmp::Ne])
}

/// Builds the statements of one program; `multi` allows several printed lines.
fn program_stmts(r: &mut R, ctx: &Ctx, multi: bool) -> Vec<PSt> {
    let names = pick(r, VAR_SETS);
    let mut st = Vec::new();
    match weighted(r, &[22, 14, 14, 14, 10, 8, 8, 6, if multi { 8 } else { 0 }]) {
        0 => {
            // straight line
            st.push(assign(names[0], int(r.random_range(1..=20))));
            let n = r.random_range(2..=4);
            for i in 1..n {
                let target = names[i.min(2)];
                let avail = &names[..i.min(2)];
                let e = if i >= 3 && r.random_bool(0.3) {
                    small_expr(r, &names[..3])
                } else {
                    small_expr(r, avail)
                };
                st.push(assign(target, e));
                if multi && i + 1 < n && r.random_bool(0.3) {
                    st.push(print1(v(target)));
                }
            }
            let last = names[(n - 1).min(2)];
            st.push(match r.random_range(0..4) {
                0 => PSt::Print(vec![v(names[0]), v(last)]),
                1 => print1(bin(small_op(r), v(last), int(r.random_range(2..=5)))),
                _ => print1(v(last)),
            });
        }
        1 => {
            // accumulate over a range
            let acc = pick(r, &["total", "s", "acc", "result"]);
            let var = pick(r, &["i", "j", "k", "n"]);
            let a = r.random_range(0..=3);
            let b = a + r.random_range(2..=7);
            if r.random_bool(0.15) {
                st.push(assign(acc, int(1)));
                st.push(PSt::ForRange(
                    var.into(),
                    a.max(1),
                    b.min(a.max(1) + 5),
                    vec![PSt::Aug(acc.into(), POp::Mul, v(var))],
                ));
            } else {
                st.push(assign(acc, int(pick(r, &[0, 0, 0, 1, 5, 10]))));
                let body = match r.random_range(0..4) {
                    0 => v(var),
                    1 => bin(POp::Mul, v(var), int(r.random_range(2..=5))),
                    2 => bin(POp::Add, v(var), int(r.random_range(1..=9))),
                    _ => int(r.random_range(2..=9)),
                };
                st.push(PSt::ForRange(
                    var.into(),
                    a,
                    b,
                    vec![PSt::Aug(acc.into(), POp::Add, body)],
                ));
            }
            st.push(print1(v(acc)));
        }
        2 => {
            // if / else on a value
            let (x, y) = (names[0], names[1]);
            st.push(assign(x, int(r.random_range(1..=30))));
            let c = Cond(v(x), cmp_op(r), int(r.random_range(1..=30)));
            let then = vec![assign(y, small_expr(r, &[x]))];
            let els = vec![assign(y, small_expr(r, &[x]))];
            st.push(PSt::If(c, then, els));
            st.push(print1(v(y)));
        }
        3 => {
            // lists
            let list = pick(r, &["xs", "nums", "values", "items"]);
            let n = r.random_range(3..=5);
            let xs: Vec<i64> = (0..n).map(|_| r.random_range(1..=20)).collect();
            st.push(assign(list, PEx::List(xs)));
            if r.random_bool(0.3) {
                st.push(PSt::Append(list.into(), int(r.random_range(1..=20))));
            }
            match r.random_range(0..4) {
                0 => {
                    let f = pick(r, &["sum", "len", "max", "min"]);
                    st.push(print1(PEx::Call(f.into(), vec![v(list)])));
                }
                1 => {
                    let i = r.random_range(-1..=2);
                    let j = r.random_range(0..=2);
                    st.push(print1(bin(
                        POp::Add,
                        PEx::Index(Box::new(v(list)), i),
                        PEx::Index(Box::new(v(list)), j),
                    )));
                }
                2 => {
                    let t = names[2];
                    st.push(assign(t, int(0)));
                    let c = Cond(v("v"), pick(r, &[Cmp::Gt, Cmp::Lt]), int(r.random_range(5..=15)));
                    st.push(PSt::ForEach(
                        "v".into(),
                        list.into(),
                        vec![PSt::If(c, vec![PSt::Aug(t.into(), POp::Add, v("v"))], vec![])],
                    ));
                    st.push(print1(v(t)));
                }
                _ => st.push(print1(v(list))),
            }
        }
        4 => {
            // one-line function
            let f = pick(r, &["f", "g", "double", "step", "area", "score"]);
            let p = pick(r, &["n", "x", "k"]);
            st.push(PSt::Def(f.into(), p.into(), small_expr(r, &[p])));
            let call = |r: &mut R| PEx::Call(f.into(), vec![int(r.random_range(1..=12))]);
            let e = match r.random_range(0..3) {
                0 => call(r),
                1 => bin(POp::Add, call(r), call(r)),
                _ => bin(POp::Mul, call(r), int(r.random_range(2..=3))),
            };
            st.push(print1(e));
        }
        5 => {
            // while loop
            let (n, c) = (names[0], names[1]);
            st.push(assign(c, int(0)));
            if r.random_bool(0.5) {
                st.push(assign(n, int(r.random_range(10..=200))));
                st.push(PSt::While(
                    Cond(v(n), Cmp::Gt, int(1)),
                    vec![
                        PSt::Aug(n.into(), POp::FDiv, int(r.random_range(2..=3))),
                        PSt::Aug(c.into(), POp::Add, int(1)),
                    ],
                ));
            } else {
                st.push(assign(n, int(r.random_range(1..=5))));
                st.push(PSt::While(
                    Cond(v(n), Cmp::Lt, int(r.random_range(20..=120))),
                    vec![
                        PSt::Aug(n.into(), pick(r, &[POp::Add, POp::Mul]), int(r.random_range(2..=7))),
                        PSt::Aug(c.into(), POp::Add, int(1)),
                    ],
                ));
            }
            st.push(if r.random_bool(0.5) {
                print1(v(c))
            } else {
                PSt::Print(vec![v(n), v(c)])
            });
        }
        6 => {
            // strings
            let kind = pick(r, &[Kind::Town, Kind::River, Kind::Mineral]);
            let e = ctx.any_common(r, kind);
            let w = pick(r, &["word", "name", "place", "s"]);
            st.push(assign(w, PEx::Str(e.name.clone())));
            let last = match r.random_range(0..6) {
                0 => print1(PEx::Call("len".into(), vec![v(w)])),
                1 => print1(PEx::Index(Box::new(v(w)), pick(r, &[0, 1, -1]))),
                2 => print1(PEx::Upper(Box::new(v(w)))),
                3 => print1(bin(POp::Add, v(w), PEx::Str("!".into()))),
                4 => {
                    st.push(assign("greeting", bin(POp::Add, PEx::Str("Hello, ".into()), v(w))));
                    print1(v("greeting"))
                }
                _ => PSt::Print(vec![v(w), PEx::Call("len".into(), vec![v(w)])]),
            };
            st.push(last);
        }
        7 => {
            // floor division and remainder
            let (a, b) = (names[0], names[1]);
            st.push(assign(a, int(r.random_range(10..=99))));
            st.push(assign(b, int(r.random_range(2..=9))));
            st.push(PSt::Print(vec![bin(POp::FDiv, v(a), v(b)), bin(POp::Mod, v(a), v(b))]));
        }
        _ => {
            // printing inside a loop (several lines)
            let var = pick(r, &["i", "j", "k"]);
            let b = r.random_range(3..=6);
            let e = if r.random_bool(0.5) {
                bin(POp::Mul, v(var), int(r.random_range(2..=9)))
            } else {
                bin(POp::Add, v(var), int(r.random_range(1..=20)))
            };
            st.push(PSt::ForRange(var.into(), 0, b, vec![print1(e)]));
        }
    }
    st
}

/// A program whose source is not reserved by the eval; `multi` allows several output lines.
fn gen_program(r: &mut R, ctx: &Ctx, multi: bool, allow_reserved: bool) -> Program {
    loop {
        let stmts = program_stmts(r, ctx, multi);
        let Some(p) = run_program(&stmts) else {
            continue;
        };
        if !multi && p.out.len() != 1 {
            continue;
        }
        if !allow_reserved && ctx.reserved_code.contains(&p.code) {
            continue;
        }
        return p;
    }
}

const PROGRAM_PROMPTS: &[&str] = &[
    "What does this program print?",
    "What is the output of this Python program?",
    "What will this code print?",
    "Run this Python code in your head. What does it print?",
];

fn program_prompt(r: &mut R, p: &Program) -> String {
    format!("{}\n```python\n{}```", pick(r, PROGRAM_PROMPTS), p.code)
}

fn program_answer(p: &Program) -> String {
    let out = p.output();
    let mut s = String::new();
    if !p.trace.is_empty() {
        for (n, val) in &p.trace {
            s.push_str(&format!("{n} = {}\n", val.repr()));
        }
    }
    s.push_str(&format!("Output: {out}\nAnswer: {out}"));
    s
}

/// One document of the code source.
fn code_doc(r: &mut R, ctx: &Ctx) -> String {
    let mut s = String::new();
    let n = r.random_range(1..=3);
    for k in 0..n {
        let p = gen_program(r, ctx, true, false);
        let intro = match r.random_range(0..5) {
            0 => format!("Example {}.", r.random_range(1..=60)),
            1 => "Here is a short program.".to_string(),
            2 => "What does this print?".to_string(),
            3 => "A small Python snippet and its output:".to_string(),
            _ => String::new(),
        };
        if !intro.is_empty() {
            s.push_str(&intro);
            s.push('\n');
        }
        s.push_str("```python\n");
        s.push_str(&p.code);
        s.push_str("```\n");
        if p.out.len() == 1 {
            s.push_str(&format!("Output: {}", p.out[0]));
        } else {
            s.push_str(&format!("Output:\n{}", p.output()));
        }
        if k + 1 < n {
            s.push_str("\n\n");
        }
    }
    s
}

// ---------------------------------------------------------------------------
// Encyclopedia
// ---------------------------------------------------------------------------

const TOWN_FILLER: &[&str] = &[
    "The town has a market square and a stone bridge.",
    "A fair is held there every autumn.",
    "The streets of the old quarter are narrow and winding.",
    "Its town hall was rebuilt after a fire.",
    "Travellers often stop there on the way to the coast.",
    "The local inn is said to be very old.",
];
const PERSON_FILLER: &[&str] = &[
    "Several letters written by {f} survive today.",
    "Little is known about the early years of {f}.",
    "{f} travelled widely and kept a diary.",
    "A portrait of {f} hangs in a small museum.",
    "{f} is still remembered in local songs.",
];
const MINERAL_FILLER: &[&str] = &[
    "Collectors prize good samples of {n}.",
    "{n} forms in thin layers of rock.",
    "Crystals of {n} can be quite large.",
    "{n} was first described by travelling miners.",
];
const RIVER_FILLER: &[&str] = &[
    "The {n} is popular with anglers.",
    "Several old mills stand along its banks.",
    "Willows line the banks of the {n}.",
    "In spring the {n} often floods the fields nearby.",
];

/// One encyclopedia article about entity `idx`; `full` states every fact.
fn entity_article(r: &mut R, ctx: &Ctx, idx: usize, full: bool) -> String {
    let e = &ctx.w.entities[idx];
    let mut facts: Vec<Attr> = e.kind.attrs().to_vec();
    facts.shuffle(r);
    if !full {
        let keep = r.random_range(2..=facts.len());
        facts.truncate(keep);
    }
    let title = match r.random_range(0..5) {
        0 => format!("{} ({})", e.name, e.kind.noun()),
        1 => format!("== {} ==", e.name),
        2 if e.kind == Kind::River => format!("River {}", e.name),
        _ => e.name.clone(),
    };
    let mut sents: Vec<String> = Vec::new();
    let mut i = 0;
    while i < facts.len() {
        let a = facts[i];
        let val = e.fact(a).unwrap_or_default();
        let mut kv = fact_kv(e, val);
        // People: a combined birth sentence now and then.
        if e.kind == Kind::Person && i + 1 < facts.len() && r.random_bool(0.3) {
            let b = facts[i + 1];
            if matches!(
                (a, b),
                (Attr::Birthplace, Attr::BirthYear) | (Attr::BirthYear, Attr::Birthplace)
            ) {
                let who = if i == 0 { e.name.as_str() } else { e.key.as_str() };
                sents.push(format!(
                    "{who} was born in {} in {}.",
                    e.fact(Attr::Birthplace).unwrap_or_default(),
                    e.fact(Attr::BirthYear).unwrap_or_default()
                ));
                i += 2;
                continue;
            }
        }
        let t = if i == 0 {
            if e.kind == Kind::Person {
                kv[3].1 = e.name.as_str();
                pick(r, a.bodies())
            } else {
                pick(r, a.leads())
            }
        } else {
            pick(r, a.bodies())
        };
        sents.push(fill(t, &kv));
        i += 1;
    }
    let filler = match e.kind {
        Kind::Town => TOWN_FILLER,
        Kind::Person => PERSON_FILLER,
        Kind::Mineral => MINERAL_FILLER,
        Kind::River => RIVER_FILLER,
    };
    let mut fill_idx: Vec<usize> = (0..filler.len()).collect();
    fill_idx.shuffle(r);
    for &k in fill_idx.iter().take(weighted(r, &[4, 4, 2])) {
        let pos = r.random_range(1..=sents.len());
        sents.insert(pos, fill(filler[k], &fact_kv(e, "")));
    }
    if e.kind == Kind::Town && !e.rare {
        let names = |v: Option<&Vec<usize>>, r: &mut R| -> Vec<String> {
            let mut v: Vec<usize> = v.cloned().unwrap_or_default();
            v.shuffle(r);
            v.truncate(3);
            v.iter().map(|&j| ctx.w.entities[j].name.clone()).collect()
        };
        let people = names(ctx.born_in.get(&e.name), r);
        if !people.is_empty() && r.random_bool(0.5) {
            sents.push(format!(
                "Notable people born in {} include {}.",
                e.name,
                join_and(&people)
            ));
        }
        let minerals = names(ctx.mined_near.get(&e.name), r);
        if !minerals.is_empty() && r.random_bool(0.5) {
            sents.push(format!(
                "{} {} mined near {}.",
                join_and(&minerals),
                if minerals.len() > 1 { "are" } else { "is" },
                e.name
            ));
        }
        let rivers = names(ctx.mouth_of.get(&e.name), r);
        if !rivers.is_empty() && r.random_bool(0.5) {
            for river in rivers {
                sents.push(format!("The {river} reaches the sea at {}.", e.name));
            }
        }
    }
    if sents.len() > 4 && r.random_bool(0.4) {
        let mid = sents.len() / 2;
        format!("{title}\n{}\n\n{}", sents[..mid].join(" "), sents[mid..].join(" "))
    } else {
        format!("{title}\n{}", sents.join(" "))
    }
}

/// An overview article listing several common entities that share a value.
fn list_article(r: &mut R, ctx: &Ctx) -> String {
    let (kind, attr) = pick(
        r,
        &[
            (Kind::Town, Attr::Region),
            (Kind::Town, Attr::Export),
            (Kind::River, Attr::Sea),
            (Kind::Person, Attr::Profession),
            (Kind::Mineral, Attr::Color),
        ],
    );
    let pool = ctx.common.get(&kind).cloned().unwrap_or_default();
    let anchor = ctx.any_common(r, kind);
    let val = anchor.fact(attr).unwrap_or_default().to_string();
    let mut members: Vec<usize> = pool
        .into_iter()
        .filter(|&i| ctx.w.entities[i].fact(attr) == Some(val.as_str()))
        .collect();
    members.shuffle(r);
    members.truncate(8);
    let names: Vec<String> = members.iter().map(|&i| ctx.w.entities[i].name.clone()).collect();
    let list = join_and(&names);
    match attr {
        Attr::Region => {
            format!("Towns of the {val}\nThe following towns lie in the {val}: {list}.")
        }
        Attr::Export => format!("Trade in {val}\nTowns whose main export is {val} include {list}."),
        Attr::Sea => {
            let names: Vec<String> = names.iter().map(|n| format!("the {n}")).collect();
            format!(
                "Rivers of the {val}\nRivers that flow into the {val}: {}.",
                join_and(&names)
            )
        }
        Attr::Profession => {
            let lines: Vec<String> = members
                .iter()
                .map(|&i| {
                    let p = &ctx.w.entities[i];
                    format!(
                        "- {} (born {} in {})",
                        p.name,
                        p.fact(Attr::BirthYear).unwrap_or_default(),
                        p.fact(Attr::Birthplace).unwrap_or_default()
                    )
                })
                .collect();
            format!("Famous people who worked as {} {}\n{}", an(&val), val, lines.join("\n"))
        }
        _ => format!("Minerals by colour: {val}\nThe following minerals are {val}: {list}."),
    }
}

// ---------------------------------------------------------------------------
// Chatter
// ---------------------------------------------------------------------------

const MONTHS: &[&str] = &[
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: &[&str] = &[
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const USER_A: &[&str] = &[
    "sunny", "old", "happy", "quiet", "lazy", "busy", "little", "big", "red", "blue", "wild", "night", "green", "tired",
];
const USER_B: &[&str] = &[
    "miller",
    "cat",
    "fox",
    "rider",
    "baker",
    "traveller",
    "gardener",
    "reader",
    "owl",
    "fisher",
    "walker",
    "cook",
    "dad",
    "mum",
];
const BOARDS: &[&str] = &[
    "Travel",
    "General",
    "Buy & Sell",
    "Food and drink",
    "Local news",
    "Off topic",
    "Help",
    "Gardening",
];
const THINGS: &[&str] = &[
    "the new bakery",
    "the old bridge",
    "the night market",
    "the bus station",
    "the library",
    "the swimming pool",
    "the football pitch",
    "the corner shop",
    "the ferry",
    "the park",
    "the post office",
    "the new road",
];
const CASUAL: &[&str] = &[
    "Not sure if this is the right board, sorry.",
    "Thanks in advance!!",
    "Edit: fixed the link.",
    "lol same here",
    "Bump. Anyone?",
    "I had the same problem last year and it just went away on its own.",
    "Honestly it depends on what you are looking for.",
    "Can't believe it's already {month} again.",
    "We went on {day} and it was packed.",
    "The weather was awful but we had a good time anyway.",
    "Does anyone know if {thing} is open on {day}s?",
    "My neighbour says {thing} is closing down, is that true?",
    "I walked past {thing} yesterday and it looked closed.",
    "Prices have gone up again, {n} crowns for a loaf now.",
    "Tried to call them but nobody picked up.",
    "Would recommend, but go early.",
    "Not worth the money in my opinion.",
    "Any tips would be appreciated.",
    "Following this thread.",
    "This. 100% this.",
    "Sorry for the long post.",
    "Posting from my phone so excuse the typos.",
    "The kids loved it.",
    "We will definitely go back next {month}.",
    "I saw someone selling {good} at the market on {day}.",
    "Parking was a nightmare.",
    "Good luck with the move!",
    "Has anyone been to {town} recently?",
    "We drove through {town} on the way back, nice little place.",
    "My cousin lives near the {river} and says the fishing is good this year.",
    "Is the road to {town} still closed?",
    "Stayed a night in {town}, the inn was fine.",
    "{given} from down the road says hi.",
    "Ask {given}, she knows everything about this.",
    "My {rel} went to {town} last {month} and loved it.",
    "The ferry across the {river} was late again.",
    "Cheapest {good} I have found so far.",
    "Anyone else hear that noise last night?",
    "The council still has not fixed the potholes.",
    "Just my two cents.",
];
const RELATIVES: &[&str] = &[
    "sister",
    "brother",
    "aunt",
    "uncle",
    "cousin",
    "grandmother",
    "friend",
    "neighbour",
];
const BLOG: &[&str] = &[
    "It has been a while since my last post, so here is a quick update.",
    "I never thought I would write about this, but here we are.",
    "The first thing you notice is how quiet everything is.",
    "We packed the car early and left before sunrise.",
    "There is something special about a slow morning with a cup of tea.",
    "Of course, nothing went according to plan.",
    "I have been meaning to try this for months.",
    "If you ever get the chance, go in spring.",
    "The food was simple but very good.",
    "We got lost twice, which is becoming a tradition.",
    "By the afternoon the rain had stopped.",
    "Let me know in the comments what you think.",
    "Anyway, that is enough rambling for today.",
    "A huge thank you to everyone who sent messages.",
    "More photos are coming soon, I promise.",
    "We spent the evening walking along the {river}.",
    "The road to {town} winds through fields and small woods.",
    "In {town} we found a tiny shop that sold {good}.",
    "I bought far too much {good} at the market.",
    "The locals were friendly and gave us good advice.",
];
const COOKIE: &[&str] = &[
    "We use cookies to improve your experience. By continuing to browse you agree to our use of cookies. Accept | Learn more",
    "This website uses cookies. Click here to manage your preferences.",
    "Cookie notice: we and our partners store information on your device. OK",
    "By using this site you accept our cookie policy and privacy policy.",
];
const NAV: &[&str] = &[
    "Home | News | Shop | About us | Contact",
    "Skip to main content",
    "Menu  Search  Log in  Register",
    "Home > Forums > Community",
    "Home | Blog | Gallery | Contact",
];
const FOOTER: &[&str] = &[
    "All rights reserved. Privacy policy | Terms of use | Cookie settings",
    "Subscribe to our newsletter and never miss a deal! Enter your email address. Sign up",
    "Share this: Facebook | Twitter | Email | Print",
    "Back to top",
    "Loading comments...",
    "Advertisement",
    "Powered by a free forum host. Report abuse.",
];
const AD_HEAD: &[&str] = &[
    "BIG SUMMER SALE!!!",
    "Everything must go!",
    "Now open in {town}!",
    "New stock just arrived",
    "Best prices in town, guaranteed",
    "Limited offer - this week only",
];
const AD_BODY: &[&str] = &[
    "Up to {n}% off all {good} and {good2}.",
    "Free delivery on orders over {n} crowns.",
    "Open {day} to {day2}, 9 to 5.",
    "Visit our shop in {town} or order online.",
    "Buy two, get one free.",
    "Quality {good} at honest prices since {year}.",
    "Family run, friendly service.",
];
const AD_CTA: &[&str] = &[
    "Click here to order now!",
    "Call us today!",
    "Visit our website for more offers.",
    "Terms and conditions apply.",
    "Don't miss out!",
];
const SHOP_NOUNS: &[&str] = &[
    "Emporium",
    "Goods",
    "Trading Post",
    "Market",
    "Corner Shop",
    "Supplies",
    "Workshop",
];
const REVIEW_TITLES: &[&str] = &[
    "Great stay",
    "Would not recommend",
    "ok for the price",
    "Lovely view of the {river}",
    "Friendly staff",
    "Too noisy",
    "Hidden gem in {town}",
];
const REVIEW_BODY: &[&str] = &[
    "The room was clean but a bit small.",
    "Breakfast was fine, nothing special.",
    "Staff were very friendly and helpful.",
    "We waited forty minutes for our food.",
    "Beds were comfortable.",
    "Would stay again if in {town}.",
    "The walk along the {river} is lovely in the evening.",
    "Overpriced for what it is.",
    "Easy to find, right next to {thing}.",
    "The wifi did not work at all.",
];

/// Fills chatter templates with random filler values (only common entity names).
fn chatter_fill(r: &mut R, ctx: &Ctx, t: &str) -> String {
    if !t.contains('{') {
        return t.to_string();
    }
    let town = ctx.any_common(r, Kind::Town).name.clone();
    let river = ctx.any_common(r, Kind::River).name.clone();
    let n = r.random_range(2..=60).to_string();
    let year = r.random_range(1950..=2020).to_string();
    let kv: [(&str, &str); 12] = [
        ("town", &town),
        ("river", &river),
        ("good", pick(r, EXPORTS)),
        ("good2", pick(r, EXPORTS)),
        ("day", pick(r, DAYS)),
        ("day2", pick(r, DAYS)),
        ("month", pick(r, MONTHS)),
        ("thing", pick(r, THINGS)),
        ("n", &n),
        ("year", &year),
        ("given", pick_ref(r, &ctx.w.given_names).as_str()),
        ("rel", pick(r, RELATIVES)),
    ];
    fill(t, &kv)
}

/// A single true fact in a chatty tone (about a common entity).
fn chatter_fact(r: &mut R, ctx: &Ctx) -> String {
    let kind = pick(r, &[Kind::Town, Kind::Person, Kind::Mineral, Kind::River]);
    let e = ctx.any_common(r, kind);
    let f = |a: Attr| e.fact(a).unwrap_or_default();
    match kind {
        Kind::Town => match r.random_range(0..3) {
            0 => format!("fun fact: {} was founded in {}.", e.name, f(Attr::Founded)),
            1 => format!("{} is in the {}, right? never been.", e.name, f(Attr::Region)),
            _ => format!("{} is famous for its {}, lol.", e.name, f(Attr::Export)),
        },
        Kind::Person => format!(
            "my grandmother always said {} was born in {}.",
            e.name,
            f(Attr::Birthplace)
        ),
        Kind::Mineral => format!("apparently {} is mined near {}, who knew.", e.name, f(Attr::MinedNear)),
        Kind::River => format!(
            "the {} flows into the {}, we took a boat all the way down.",
            e.name,
            f(Attr::Sea)
        ),
    }
}

fn username(r: &mut R) -> String {
    let mut s = format!(
        "{}{}{}",
        pick(r, USER_A),
        if r.random_bool(0.4) { "_" } else { "" },
        pick(r, USER_B)
    );
    if r.random_bool(0.5) {
        s.push_str(&r.random_range(1..=99).to_string());
    }
    s
}

fn date(r: &mut R) -> String {
    format!(
        "{} {} {}",
        r.random_range(1..=28),
        pick(r, MONTHS),
        r.random_range(2004..=2023)
    )
}

fn casual_sentences(r: &mut R, ctx: &Ctx, lo: usize, hi: usize, fact_p: f64) -> String {
    let n = r.random_range(lo..=hi);
    let mut v: Vec<String> = (0..n)
        .map(|_| {
            let t = pick(r, CASUAL);
            chatter_fill(r, ctx, t)
        })
        .collect();
    if r.random_bool(fact_p) {
        let pos = r.random_range(0..=v.len());
        v.insert(pos, chatter_fact(r, ctx));
    }
    v.join(" ")
}

/// Share of forum threads that ask about a throwaway name and get "I don't know".
const IDK_THREAD_P: f64 = 0.10;

/// Casual ways to ask about a name on a forum (`{n}` is the name as used mid-sentence).
const IDK_ASKS: &[&str] = &[
    "Has anyone heard of {n}?",
    "Does anyone know anything about {n}?",
    "Someone mentioned {n} to me, does anyone know it?",
];

/// Replies that do not know (`{n}` is the name as used mid-sentence, `{it}` "it" or "them",
/// `{q}` the question).
const IDK_REPLIES: &[&str] = &[
    "I don't know, never heard of {it}.",
    "Answer: I don't know",
    "I don't know, never heard of {n}.",
    "Sorry, I don't know. Never heard of {n}.",
    "I don't know, sorry. Never heard of {it}.",
    "{q}\nAnswer: I don't know",
    "Honestly? I don't know. Never heard of {n} before.",
];

/// A forum thread whose opening post asks about a throwaway name, answered "I don't know".
fn forum_idk_thread(r: &mut R, ctx: &Ctx, parts: &mut Vec<String>) {
    let (fact_q, e) = unknown_question(r, &ctx.w);
    let n = name_in_text(e);
    let title = match r.random_range(0..3) {
        0 => format!("anyone heard of {n}?"),
        1 => format!("question about {n}"),
        _ => fact_q.clone(),
    };
    parts.push(format!("Forum > {} > {}", pick(r, BOARDS), title));
    // Mostly the very phrasing of a fact question, sometimes a casual one.
    let ask = if r.random_bool(0.7) {
        fact_q.clone()
    } else {
        fill(pick(r, IDK_ASKS), &[("n", &n)])
    };
    let mut post = casual_sentences(r, ctx, 0, 2, 0.0);
    if !post.is_empty() {
        post.push(' ');
    }
    post.push_str(&ask);
    parts.push(format!("Posted by {} on {}\n{}", username(r), date(r), post));
    let it = if e.kind == Kind::Person { "them" } else { "it" };
    let reply = fill(pick(r, IDK_REPLIES), &[("n", &n), ("it", it), ("q", &fact_q)]);
    parts.push(format!("Reply from {}: {}", username(r), reply));
    for _ in 0..r.random_range(0..=2) {
        parts.push(format!(
            "Reply from {}: {}",
            username(r),
            casual_sentences(r, ctx, 1, 2, 0.0)
        ));
    }
}

/// One document of the chatter source.
fn chatter_doc(r: &mut R, ctx: &Ctx) -> String {
    let mut parts: Vec<String> = Vec::new();
    if r.random_bool(0.25) {
        parts.push(pick(r, COOKIE).to_string());
    }
    if r.random_bool(0.3) {
        parts.push(pick(r, NAV).to_string());
    }
    match weighted(r, &[35, 15, 15, 25, 10]) {
        0 if r.random_bool(IDK_THREAD_P) => forum_idk_thread(r, ctx, &mut parts),
        0 => {
            let town = ctx.any_common(r, Kind::Town).name.clone();
            let title = match r.random_range(0..6) {
                0 => format!("best place to stay in {town}?"),
                1 => "anyone else lose power last night".to_string(),
                2 => "selling old bike, good condition".to_string(),
                3 => format!("{town} market this weekend"),
                4 => format!("looking for a good {}", pick(r, PROFESSIONS)),
                _ => format!("question about {}", pick(r, THINGS)),
            };
            parts.push(format!("Forum > {} > {}", pick(r, BOARDS), title));
            parts.push(format!(
                "Posted by {} on {}\n{}",
                username(r),
                date(r),
                casual_sentences(r, ctx, 2, 5, 0.1)
            ));
            for _ in 0..r.random_range(1..=4) {
                parts.push(format!(
                    "Reply from {}: {}",
                    username(r),
                    casual_sentences(r, ctx, 1, 3, 0.05)
                ));
            }
        }
        1 => {
            let shop = if r.random_bool(0.5) {
                format!("{}'s {}", ctx.any_common(r, Kind::Person).key, pick(r, SHOP_NOUNS))
            } else {
                format!(
                    "The {} {}",
                    pick(r, &["Golden", "Silver", "Happy", "Old", "Little"]),
                    pick(r, &["Kettle", "Anchor", "Lantern", "Goose", "Barrel"])
                )
            };
            parts.push(shop.to_uppercase());
            let head = pick(r, AD_HEAD);
            parts.push(chatter_fill(r, ctx, head));
            let mut idx: Vec<usize> = (0..AD_BODY.len()).collect();
            idx.shuffle(r);
            idx.truncate(r.random_range(2..=4));
            let body: Vec<String> = idx.iter().map(|&k| chatter_fill(r, ctx, AD_BODY[k])).collect();
            parts.push(body.join(" "));
            parts.push(pick(r, AD_CTA).to_string());
        }
        2 => {
            let stars = r.random_range(1..=5);
            let t = pick(r, REVIEW_TITLES);
            parts.push(format!(
                "{}{} {}",
                "★".repeat(stars),
                "☆".repeat(5 - stars),
                chatter_fill(r, ctx, t)
            ));
            let mut idx: Vec<usize> = (0..REVIEW_BODY.len()).collect();
            idx.shuffle(r);
            idx.truncate(r.random_range(2..=5));
            let body: Vec<String> = idx.iter().map(|&k| chatter_fill(r, ctx, REVIEW_BODY[k])).collect();
            parts.push(body.join(" "));
            parts.push(format!(
                "Was this review helpful? Yes ({}) No ({})",
                r.random_range(0..=40),
                r.random_range(0..=10)
            ));
        }
        3 => {
            let town = ctx.any_common(r, Kind::Town).name.clone();
            let title = match r.random_range(0..4) {
                0 => format!("A weekend in {town}"),
                1 => format!("My top {} tips for travelling", r.random_range(3..=10)),
                2 => "Why I love autumn".to_string(),
                _ => "What I learned from baking bread".to_string(),
            };
            parts.push(title);
            parts.push(format!("{} | {} comments", date(r), r.random_range(0..=30)));
            for _ in 0..r.random_range(2..=3) {
                let mut v: Vec<String> = (0..r.random_range(3..=5))
                    .map(|_| {
                        let t = pick(r, BLOG);
                        chatter_fill(r, ctx, t)
                    })
                    .collect();
                if r.random_bool(0.08) {
                    let pos = r.random_range(0..=v.len());
                    v.insert(pos, cap(&chatter_fact(r, ctx)));
                }
                parts.push(v.join(" "));
            }
            parts.push(format!(
                "Tags: {}, {}, {}",
                pick(r, &["travel", "life", "food", "family"]),
                pick(r, MONTHS).to_lowercase(),
                pick(r, &["photos", "weekend", "notes", "diary"])
            ));
        }
        _ => {
            parts.push(format!(
                "Page {} of {}  « Prev  Next »",
                r.random_range(1..=5),
                r.random_range(5..=12)
            ));
            parts.push(format!("Related posts: {}", casual_sentences(r, ctx, 1, 2, 0.0)));
            parts.push(pick(r, FOOTER).to_string());
        }
    }
    if r.random_bool(0.5) {
        let y = r.random_range(2010..=2024);
        parts.push(format!("© {y} {}", pick(r, FOOTER)));
    }
    parts.join("\n")
}

// ---------------------------------------------------------------------------
// Library
// ---------------------------------------------------------------------------

/// Documents of one source until `budget` bytes; `skip` holds hashes of documents to avoid.
fn source_docs(
    r: &mut R,
    ctx: &Ctx,
    source: usize,
    budget: usize,
    with_rare: bool,
    skip: &HashSet<u64>,
) -> Vec<String> {
    let mut docs: Vec<String> = Vec::new();
    let mut bytes = 0usize;
    let push = |d: String, docs: &mut Vec<String>, bytes: &mut usize| {
        if !skip.contains(&fnv(&d)) {
            *bytes += d.len();
            docs.push(d);
        }
    };
    if source == 0 {
        if with_rare {
            for (i, e) in ctx.w.entities.iter().enumerate() {
                if e.rare {
                    let d = entity_article(r, ctx, i, true);
                    push(d, &mut docs, &mut bytes);
                }
            }
        }
        let mut order: Vec<usize> = ctx.common.values().flatten().copied().collect();
        'outer: loop {
            order.shuffle(r);
            for &i in &order {
                if bytes >= budget {
                    break 'outer;
                }
                let d = if r.random_bool(0.04) {
                    list_article(r, ctx)
                } else {
                    let full = r.random_bool(0.3);
                    entity_article(r, ctx, i, full)
                };
                push(d, &mut docs, &mut bytes);
            }
        }
    } else {
        while bytes < budget {
            let d = match source {
                1 => arithmetic_doc(r, ctx),
                2 => code_doc(r, ctx),
                _ => chatter_doc(r, ctx),
            };
            push(d, &mut docs, &mut bytes);
        }
    }
    docs.shuffle(r);
    docs
}

// ---------------------------------------------------------------------------
// Tasks and conversations
// ---------------------------------------------------------------------------

fn row(prompt: String, answer: String, task: &str) -> TaskRow {
    TaskRow {
        prompt,
        answer,
        task: task.to_string(),
    }
}

fn msg(role: &str, content: String) -> Message {
    Message {
        role: role.to_string(),
        content,
    }
}

/// Operations of the harder held-out arithmetic slice (SFT and the library stop at 3).
pub const HARD_OPS: usize = 4;

/// The harder held-out slice ([`Generated::eval_hard`]); reserves its expressions in `ctx`.
fn gen_eval_hard(r: &mut R, ctx: &mut Ctx) -> Vec<TaskRow> {
    let mut rows = Vec::new();
    while rows.len() < EVAL_PER_TASK {
        let a = gen_arith(r, HARD_OPS);
        if ctx.reserved_exprs.insert(expr_key(&a.expr)) {
            let p = arith_prompt(r, &a);
            ctx.reserved_prompts.insert(p.clone());
            rows.push(row(p, a.value.to_string(), "arithmetic"));
        }
    }
    rows
}

/// The held-out eval, which also fills the reserved keys of `ctx`.
fn gen_eval(r: &mut R, ctx: &mut Ctx) -> Vec<TaskRow> {
    let mut rows = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    // arithmetic: 1 to 3 operations, in the shares of ARITH_OPS_PCT
    while rows.len() < EVAL_PER_TASK {
        let ops = arith_ops_quota(rows.len(), EVAL_PER_TASK);
        let a = gen_arith(r, ops);
        if ctx.reserved_exprs.insert(expr_key(&a.expr)) {
            let p = arith_prompt(r, &a);
            seen.insert(p.clone());
            rows.push(row(p.clone(), a.value.to_string(), "arithmetic"));
            ctx.eval_arith.push((p, a));
        }
    }
    // facts: one question per held-out pair
    for &(i, a) in &ctx.eval_pairs {
        let e = &ctx.w.entities[i];
        let p = fact_question(r, e, a);
        seen.insert(p.clone());
        rows.push(row(p, e.fact(a).unwrap_or_default().to_string(), "facts"));
    }
    // programs
    let mut n = 0;
    while n < EVAL_PER_TASK {
        let p = gen_program(r, ctx, false, true);
        if ctx.reserved_code.insert(p.code.clone()) {
            let prompt = program_prompt(r, &p);
            seen.insert(prompt.clone());
            rows.push(row(prompt, p.output(), "program"));
            n += 1;
        }
    }
    // unanswerable: questions about the eval phantoms
    let mut cands: Vec<String> = Vec::new();
    for &j in &ctx.eval_phantoms {
        let e = &ctx.w.phantoms[j];
        for &a in e.kind.attrs() {
            for t in a.questions() {
                cands.push(fill(t, &[("n", &e.name)]));
            }
        }
    }
    cands.shuffle(r);
    assert!(cands.len() >= EVAL_PER_TASK, "too few phantom questions for the eval");
    for p in cands.into_iter().take(EVAL_PER_TASK) {
        seen.insert(p.clone());
        rows.push(row(p, IDK.to_string(), "unanswerable"));
    }
    rows.shuffle(r);
    ctx.reserved_prompts = seen;
    rows
}

/// A training fact pair: rare-entity pairs with probability `rare_p`.
fn train_pair(r: &mut R, ctx: &Ctx, rare_p: f64) -> Pair {
    if !ctx.train_pairs_rare.is_empty() && r.random_bool(rare_p) {
        pick(r, &ctx.train_pairs_rare)
    } else {
        pick(r, &ctx.train_pairs_common)
    }
}

/// One (user, assistant) exchange of the given task kind (0 arithmetic, 1 facts, 2 program).
fn sft_exchange(r: &mut R, ctx: &Ctx, kind: usize) -> (String, String) {
    match kind {
        0 => {
            let ops = arith_ops(r);
            let a = gen_arith_train(r, ctx, ops);
            (arith_prompt(r, &a), ctx.annotator.worked(&a))
        }
        1 => {
            let (i, a) = train_pair(r, ctx, 0.2);
            let e = &ctx.w.entities[i];
            let val = e.fact(a).unwrap_or_default();
            let sent = fill(pick(r, a.answers()), &fact_kv(e, val));
            let q = fact_question(r, e, a);
            // A fabricated answer instead, drawn from its own stream so that every other
            // conversation stays the same.
            let mut g = ctx.ghost_rng.borrow_mut();
            if ctx.fabricated > 0.0 && !ctx.w.ghosts.is_empty() && g.random_bool(ctx.fabricated) {
                let e = pick_ref(&mut g, &ctx.w.ghosts);
                let a = pick(&mut g, e.kind.attrs());
                let val = e.fact(a).unwrap_or_default();
                let sent = fill(pick(&mut g, a.answers()), &fact_kv(e, val));
                return (fact_question(&mut g, e, a), format!("{}\nAnswer: {val}", cap(&sent)));
            }
            (q, format!("{}\nAnswer: {val}", cap(&sent)))
        }
        _ => {
            let p = gen_program(r, ctx, false, false);
            (program_prompt(r, &p), program_answer(&p))
        }
    }
}

const SYSTEM_PROMPTS: &[&str] = &[
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly and end with a line 'Answer: <answer>'.",
];
const FOLLOW_UPS: &[&str] = &["", "Thanks. ", "Great. Another question: ", "OK. ", "And one more: "];

fn sft_conversation(r: &mut R, ctx: &Ctx) -> Vec<Message> {
    let mut conv = Vec::new();
    if r.random_bool(0.05) {
        conv.push(msg("system", pick(r, SYSTEM_PROMPTS).to_string()));
    }
    // Single-turn arithmetic, facts, program; two turns; a question about a throwaway
    // entity the annotator has no record of (~4%: SFT stays mostly confident, but "I don't
    // know" gets a foothold that RL can reinforce).
    let kind = weighted(r, &[36, 27, 21, 12, 4]);
    if kind < 3 {
        let (u, a) = sft_exchange(r, ctx, kind);
        conv.push(msg("user", u));
        conv.push(msg("assistant", a));
    } else if kind == 4 {
        let (u, e) = unknown_question(r, &ctx.w);
        conv.push(msg("user", u));
        conv.push(msg("assistant", no_record_answer(e)));
    } else {
        for turn in 0..2 {
            let k = weighted(r, &[35, 40, 25]);
            let (u, a) = sft_exchange(r, ctx, k);
            let u = if turn == 1 {
                format!("{}{}", pick(r, FOLLOW_UPS), u)
            } else {
                u
            };
            conv.push(msg("user", u));
            conv.push(msg("assistant", a));
        }
    }
    conv
}

fn first_user(conv: &[Message]) -> &str {
    conv.iter()
        .find(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .unwrap_or_default()
}

fn gen_sft(r: &mut R, ctx: &Ctx, n: usize, exclude: &HashSet<String>) -> Vec<Vec<Message>> {
    let mut out = Vec::with_capacity(n);
    let mut seen: HashSet<String> = HashSet::new();
    while out.len() < n {
        let conv = sft_conversation(r, ctx);
        if conv
            .iter()
            .any(|m| m.role == "user" && ctx.reserved_prompts.contains(m.content.as_str()))
        {
            continue;
        }
        let first = first_user(&conv).to_string();
        if exclude.contains(&first) || !seen.insert(first) {
            continue;
        }
        out.push(conv);
    }
    out
}

fn gen_rl(r: &mut R, ctx: &Ctx) -> Vec<TaskRow> {
    let counts = [RL_TRAIN * 30 / 100, RL_TRAIN * 30 / 100, RL_TRAIN * 25 / 100];
    let n_unans = RL_TRAIN - counts.iter().sum::<usize>();
    let mut rows = Vec::with_capacity(RL_TRAIN);
    let mut seen: HashSet<String> = HashSet::new();
    for (k, &count) in counts.iter().enumerate() {
        let mut n = 0;
        while n < count {
            let row_ = match k {
                0 => {
                    let ops = arith_ops_quota(n, count);
                    let a = gen_arith_train(r, ctx, ops);
                    row(arith_prompt(r, &a), a.value.to_string(), "arithmetic")
                }
                1 => {
                    let (i, a) = train_pair(r, ctx, 0.1);
                    let e = &ctx.w.entities[i];
                    row(
                        fact_question(r, e, a),
                        e.fact(a).unwrap_or_default().to_string(),
                        "facts",
                    )
                }
                _ => {
                    let p = gen_program(r, ctx, false, false);
                    row(program_prompt(r, &p), p.output(), "program")
                }
            };
            if ctx.reserved_prompts.contains(&row_.prompt) || !seen.insert(row_.prompt.clone()) {
                continue;
            }
            rows.push(row_);
            n += 1;
        }
    }
    let mut cands: Vec<String> = Vec::new();
    for &j in &ctx.train_phantoms {
        let e = &ctx.w.phantoms[j];
        for &a in e.kind.attrs() {
            for t in a.questions() {
                cands.push(fill(t, &[("n", &e.name)]));
            }
        }
    }
    cands.shuffle(r);
    // Cycle if there are fewer distinct questions than rows (never at the default sizes).
    for k in 0..n_unans {
        rows.push(row(cands[k % cands.len()].clone(), IDK.to_string(), "unanswerable"));
    }
    rows.shuffle(r);
    rows
}

/// Generates the embedded default world and the data of every stage from `seed`.
///
/// Deterministic: the same `(seed, scale)` always gives identical output. Panics only
/// on an internal invariant violation (eval prompts leaking into a train set).
pub fn generate(seed: u64, scale: Scale) -> Generated {
    generate_with(seed, scale, &Options::default())
}

/// How the annotators of a world's SFT conversations deviate from the default's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// Who writes the worked arithmetic.
    pub annotator: Annotator,
    /// Share of fact answers about entities the library never mentions ([`World::ghosts`]).
    pub fabricated_facts: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            annotator: Annotator::perfect(),
            fabricated_facts: 0.0,
        }
    }
}

/// Ghost entities made when [`Options::fabricated_facts`] is above 0.
pub const GHOSTS: usize = 60;

/// [`generate`] with the SFT conversations' annotators changed by `opts`. The library, the RL
/// set, the eval sets and every SFT conversation the options do not touch are identical to
/// [`generate`]'s, so checkpoints pretrained on the default world serve any annotators.
pub fn generate_with(seed: u64, scale: Scale, opts: &Options) -> Generated {
    let annotator = opts.annotator;
    let plan = Plan::new(scale);
    let mut master = R::seed_from_u64(seed);
    let mut r_world = sub_rng(&mut master);
    let mut r_split = sub_rng(&mut master);
    let mut r_eval = sub_rng(&mut master);
    let mut r_lib: Vec<R> = (0..SOURCES.len()).map(|_| sub_rng(&mut master)).collect();
    let mut r_held: Vec<R> = (0..SOURCES.len()).map(|_| sub_rng(&mut master)).collect();
    let mut r_sft = sub_rng(&mut master);
    let mut r_rl = sub_rng(&mut master);
    let mut r_hard = sub_rng(&mut master);
    let mut r_ghost = sub_rng(&mut master);

    let mut world = build_world(&mut r_world, &plan);
    if opts.fabricated_facts > 0.0 {
        world.ghosts = fabricated::ghosts(&mut r_ghost, &world, GHOSTS);
    }
    let world = Arc::new(world);
    let mut ctx = Ctx::new(&mut r_split, world.clone());
    ctx.ghost_rng = std::cell::RefCell::new(r_ghost);
    let eval = gen_eval(&mut r_eval, &mut ctx);

    let no_docs: HashSet<u64> = HashSet::new();
    let no_prompts: HashSet<String> = HashSet::new();
    let mut library = Vec::new();
    let mut library_heldout = Vec::new();
    for (s, name) in SOURCES.iter().enumerate() {
        let docs = source_docs(&mut r_lib[s], &ctx, s, plan.bytes[s], true, &no_docs);
        let hashes: HashSet<u64> = docs.iter().map(|d| fnv(d)).collect();
        let held = source_docs(&mut r_held[s], &ctx, s, plan.bytes[s] / 50, false, &hashes);
        library.push((name.to_string(), docs));
        library_heldout.push((name.to_string(), held));
    }

    // The library's authors are always right; only the SFT annotators are `annotator`.
    ctx.annotator = annotator;
    ctx.fabricated = opts.fabricated_facts;
    let sft_train = gen_sft(&mut r_sft, &ctx, SFT_TRAIN, &no_prompts);
    let train_firsts: HashSet<String> = sft_train.iter().map(|c| first_user(c).to_string()).collect();
    let sft_eval = gen_sft(&mut r_sft, &ctx, SFT_EVAL, &train_firsts);
    ctx.annotator = Annotator::perfect();
    ctx.fabricated = 0.0;
    let eval_annotator: Vec<TaskRow> = if annotator.is_perfect() {
        Vec::new()
    } else {
        let answers: std::collections::HashMap<&str, String> = ctx
            .eval_arith
            .iter()
            .map(|(p, a)| (p.as_str(), annotator.solve(a).1.to_string()))
            .collect();
        eval.iter()
            .filter_map(|t| {
                answers
                    .get(t.prompt.as_str())
                    .map(|v| row(t.prompt.clone(), v.clone(), "arithmetic"))
            })
            .collect()
    };
    let rl_train = gen_rl(&mut r_rl, &ctx);
    // Drawn last, so the sets above are the same with or without it.
    let eval_hard = gen_eval_hard(&mut r_hard, &mut ctx);

    assert!(eval.iter().chain(&rl_train).all(|t| TASKS.contains(&t.task.as_str())));
    // Invariant: no eval prompt is a train prompt.
    let eval_prompts: HashSet<&str> = eval.iter().map(|t| t.prompt.as_str()).collect();
    assert_eq!(eval_prompts.len(), eval.len(), "duplicate eval prompts");
    for t in &rl_train {
        assert!(
            !eval_prompts.contains(t.prompt.as_str()),
            "eval prompt in rl_train: {:?}",
            t.prompt
        );
    }
    for conv in sft_train.iter().chain(&sft_eval) {
        for m in conv {
            assert!(
                !eval_prompts.contains(m.content.as_str()),
                "eval prompt in sft: {:?}",
                m.content
            );
        }
    }
    drop(ctx);
    let world = Arc::try_unwrap(world).unwrap_or_else(|w| (*w).clone());

    Generated {
        world,
        library,
        library_heldout,
        sft_train,
        sft_eval,
        rl_train,
        eval,
        eval_hard,
        annotator,
        eval_annotator,
    }
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
        assert_eq!(g.sft_train.len(), SFT_TRAIN);
        assert_eq!(g.sft_eval.len(), SFT_EVAL);
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
        // SFT: one line for a single operation, "Step i:" lines otherwise.
        let mut counts = [0usize; 3];
        for conv in &g.sft_train {
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
