//! Names and the world: the namer, the entities and their facts, and the split of fact pairs
//! and phantoms between training sets and the eval ([`Ctx`]).
use super::*;

/// Hands out pronounceable names, all distinct, none a substring of another.
#[derive(Default)]
pub(crate) struct Namer {
    pub(crate) taken: Vec<String>,
}

impl Namer {
    pub(crate) fn root(r: &mut R, syllables: usize, suffix: &str) -> String {
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
    pub(crate) fn fresh(&mut self, r: &mut R, suffixes: &[&str], p_two: f64) -> String {
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

pub(crate) fn build_world(r: &mut R, plan: &Plan) -> World {
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
pub(crate) type Pair = (usize, Attr);

/// The world plus indexes and the keys reserved for the eval.
pub(crate) struct Ctx {
    pub(crate) w: Arc<World>,
    /// Non-rare library entities of each kind.
    pub(crate) common: BTreeMap<Kind, Vec<usize>>,
    /// Town name -> common people born there / common minerals mined near / common rivers ending there.
    pub(crate) born_in: BTreeMap<String, Vec<usize>>,
    pub(crate) mined_near: BTreeMap<String, Vec<usize>>,
    pub(crate) mouth_of: BTreeMap<String, Vec<usize>>,
    /// Fact pairs usable in train sets (eval pairs excluded); rare-entity pairs separately.
    pub(crate) train_pairs_common: Vec<Pair>,
    pub(crate) train_pairs_rare: Vec<Pair>,
    pub(crate) eval_pairs: Vec<Pair>,
    pub(crate) train_phantoms: Vec<usize>,
    pub(crate) eval_phantoms: Vec<usize>,
    /// Keys reserved by the eval: prompts, arithmetic expressions, program sources.
    pub(crate) reserved_prompts: HashSet<String>,
    pub(crate) reserved_exprs: HashSet<String>,
    pub(crate) reserved_code: HashSet<String>,
    /// Who writes the SFT conversations' worked arithmetic.
    pub(crate) annotator: Annotator,
    /// The held-out arithmetic problems (prompt, problem), for the annotator's answers.
    pub(crate) eval_arith: Vec<(String, Arith)>,
    /// Share of SFT fact answers about [`World::ghosts`] (0 by default).
    pub(crate) fabricated: f64,
    /// Draws of the fabricated answers, apart from every other stream.
    pub(crate) ghost_rng: std::cell::RefCell<R>,
    /// Shares of worked arithmetic in column working: the SFT annotators', the library's.
    pub(crate) column_sft: f64,
    pub(crate) column_library: f64,
}

impl Ctx {
    pub(crate) fn new(r: &mut R, w: Arc<World>) -> Ctx {
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
            column_sft: 0.0,
            column_library: 0.0,
        }
    }

    pub(crate) fn any_common(&self, r: &mut R, kind: Kind) -> &Entity {
        let w: &World = &self.w;
        match self.common.get(&kind) {
            Some(v) if !v.is_empty() => &w.entities[pick(r, v)],
            _ => &w.entities[0],
        }
    }
}

pub(crate) fn fact_kv<'b>(e: &'b Entity, v: &'b str) -> [(&'static str, &'b str); 4] {
    let f = if e.kind == Kind::Person {
        e.key.as_str()
    } else {
        e.name.as_str()
    };
    [("n", e.name.as_str()), ("v", v), ("a", an(v)), ("f", f)]
}

/// A fact question about entity `e` (library or phantom) and attribute `a`.
pub(crate) fn fact_question(r: &mut R, e: &Entity, a: Attr) -> String {
    fill(pick(r, a.questions()), &[("n", &e.name)])
}

/// A fact question about a random throwaway entity of [`World::unknowns`], and that entity.
pub(crate) fn unknown_question<'a>(r: &mut R, w: &'a World) -> (String, &'a Entity) {
    let e = pick_ref(r, &w.unknowns);
    let a = pick(r, e.kind.attrs());
    (fact_question(r, e, a), e)
}

/// The name as used mid-sentence: rivers take "the".
pub(crate) fn name_in_text(e: &Entity) -> String {
    if e.kind == Kind::River {
        format!("the {}", e.name)
    } else {
        e.name.clone()
    }
}

/// The annotator's answer to a question about an entity it has no record of.
pub(crate) fn no_record_answer(e: &Entity) -> String {
    format!("I have no record of {}.\nAnswer: {IDK}", name_in_text(e))
}
