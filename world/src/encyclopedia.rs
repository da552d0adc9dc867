//! Encyclopedia articles about the entities (full, short and list articles).
use super::*;

pub(crate) const TOWN_FILLER: &[&str] = &[
    "The town has a market square and a stone bridge.",
    "A fair is held there every autumn.",
    "The streets of the old quarter are narrow and winding.",
    "Its town hall was rebuilt after a fire.",
    "Travellers often stop there on the way to the coast.",
    "The local inn is said to be very old.",
];
pub(crate) const PERSON_FILLER: &[&str] = &[
    "Several letters written by {f} survive today.",
    "Little is known about the early years of {f}.",
    "{f} travelled widely and kept a diary.",
    "A portrait of {f} hangs in a small museum.",
    "{f} is still remembered in local songs.",
];
pub(crate) const MINERAL_FILLER: &[&str] = &[
    "Collectors prize good samples of {n}.",
    "{n} forms in thin layers of rock.",
    "Crystals of {n} can be quite large.",
    "{n} was first described by travelling miners.",
];
pub(crate) const RIVER_FILLER: &[&str] = &[
    "The {n} is popular with anglers.",
    "Several old mills stand along its banks.",
    "Willows line the banks of the {n}.",
    "In spring the {n} often floods the fields nearby.",
];

/// One encyclopedia article about entity `idx`; `full` states every fact.
pub(crate) fn entity_article(r: &mut R, ctx: &Ctx, idx: usize, full: bool) -> String {
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
pub(crate) fn list_article(r: &mut R, ctx: &Ctx) -> String {
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
