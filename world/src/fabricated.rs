//! Fabricated facts: SFT answers about entities the library never mentions.
//!
//! Schulman's argument: when annotators answer questions about things the model never read,
//! SFT teaches it to answer confidently about what it does not know. `ghosts` are entities
//! absent from the library, the RL prompts and the eval, with plausible made-up facts; with
//! `--fabricated-facts S`, a share S of the SFT fact answers is about them, stated as confidently
//! as any other. Everything else in the world stays as it is.
use super::{Entity, Kind, Namer, World, FAMILY_SUFFIXES, MINERAL_SUFFIXES, R, RIVER_SUFFIXES, TOWN_SUFFIXES};
use rand::Rng;

/// Entities absent from everything the model reads except the fabricated SFT answers.
pub(crate) fn ghosts(r: &mut R, w: &World, n: usize) -> Vec<Entity> {
    // A namer that knows every name of the world, so ghosts are new words.
    let mut namer = Namer::default();
    for e in w.entities.iter().chain(&w.phantoms).chain(&w.unknowns) {
        namer.taken.push(e.key.to_lowercase());
    }
    namer.taken.extend(w.given_names.iter().map(|g| g.to_lowercase()));
    let kinds = [Kind::Town, Kind::Person, Kind::Mineral, Kind::River];
    (0..n)
        .map(|i| {
            let kind = kinds[i % kinds.len()];
            let (name, key) = match kind {
                Kind::Town => {
                    let n = namer.fresh(r, TOWN_SUFFIXES, 0.35);
                    (n.clone(), n)
                }
                Kind::Person => {
                    let family = namer.fresh(r, FAMILY_SUFFIXES, 0.35);
                    let given = &w.given_names[r.random_range(0..w.given_names.len())];
                    (format!("{given} {family}"), family)
                }
                Kind::Mineral => {
                    let n = namer.fresh(r, MINERAL_SUFFIXES, 0.35);
                    (n.clone(), n)
                }
                Kind::River => {
                    let n = namer.fresh(r, RIVER_SUFFIXES, 0.35);
                    (n.clone(), n)
                }
            };
            // Plausible values: each attribute's value borrowed from a random library entity of
            // the same kind.
            let same: Vec<&Entity> = w.entities.iter().filter(|e| e.kind == kind).collect();
            let facts = kind
                .attrs()
                .iter()
                .map(|&a| {
                    let donor = same[r.random_range(0..same.len())];
                    (a, donor.fact(a).unwrap_or_default().to_string())
                })
                .collect();
            Entity {
                name,
                key,
                kind,
                facts,
                rare: false,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::{generate, generate_with, Options, Scale};

    #[test]
    fn fabricated_answers_replace_only_fact_answers_about_unread_entities() {
        let base = generate(5, Scale::Small);
        let g = generate_with(
            5,
            Scale::Small,
            &Options {
                fabricated_facts: 0.3,
                ..Default::default()
            },
        );
        assert_eq!(g.library, base.library);
        assert_eq!(g.rl_train, base.rl_train);
        assert_eq!(g.eval, base.eval);
        assert_eq!(g.eval_hard, base.eval_hard);
        assert_eq!(g.world.entities, base.world.entities);
        assert_eq!(g.world.ghosts.len(), crate::GHOSTS);
        // No ghost is named anywhere the model reads, or in RL and the eval.
        let everywhere: Vec<&str> = base
            .library
            .iter()
            .flat_map(|(_, d)| d.iter().map(String::as_str))
            .chain(base.rl_train.iter().map(|t| t.prompt.as_str()))
            .chain(base.eval.iter().map(|t| t.prompt.as_str()))
            .collect();
        for e in &g.world.ghosts {
            assert!(
                !everywhere.iter().any(|d| d.contains(&e.key)),
                "{} is in the data",
                e.name
            );
            assert_eq!(e.facts.len(), e.kind.attrs().len());
        }
        // Conversations differ only where a fact exchange became a ghost's (the dedup of first
        // prompts may then keep or drop a different duplicate, so compare as sets); about 30% of
        // the fact answers are fabricated (of the conversations without follow-ups: those with
        // follow-ups, after SFT_TRAIN, are never fabricated).
        let about_ghost = |s: &str| g.world.ghosts.iter().any(|e| s.contains(&e.name));
        let text = |c: &[crate::Message]| {
            c.iter()
                .map(|m| format!("{}: {}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let known: std::collections::HashSet<String> = base.sft_train.iter().map(|c| text(c)).collect();
        let (mut facts, mut ghost, mut untouched) = (0, 0, 0);
        for conv in &g.sft_train[..crate::SFT_TRAIN] {
            let mut has_ghost = false;
            for (i, m) in conv.iter().enumerate() {
                if m.role != "user" {
                    continue;
                }
                if about_ghost(&m.content) {
                    has_ghost = true;
                    ghost += 1;
                    facts += 1;
                    let answer = &conv[i + 1].content;
                    assert!(
                        answer.contains("\nAnswer: ") && !answer.contains("I don't know"),
                        "{answer}"
                    );
                } else if g.world.entities.iter().any(|e| m.content.contains(&e.name)) {
                    facts += 1;
                }
            }
            if !has_ghost {
                untouched += usize::from(known.contains(&text(conv)));
            }
        }
        assert!(
            untouched * 10 > crate::SFT_TRAIN * 8,
            "{untouched} of {} unchanged",
            crate::SFT_TRAIN
        );
        let share = ghost as f64 / facts as f64;
        assert!((0.24..0.36).contains(&share), "{ghost} of {facts} fact questions");
    }
}
