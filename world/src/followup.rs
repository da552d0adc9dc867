//! Multi-turn conversations whose follow-up refers back to the previous answer ("Now add 10 to
//! that.", "And when was it founded?"), for SFT, and the held-out multi-turn eval built the
//! same way on held-out problems.
//!
//! Both come from their own random stream, drawn after every other set, so the rest of the
//! world (library, tokenizer corpus, the other SFT conversations, RL, eval) is identical with
//! or without them.
use super::*;

/// SFT training conversations with a follow-up (on top of [`SFT_TRAIN`]; ~9% of SFT).
pub const SFT_FOLLOWUPS: usize = 400;
/// SFT validation conversations with a follow-up (on top of [`SFT_EVAL`]).
pub const SFT_FOLLOWUPS_EVAL: usize = 30;

/// Follow-ups that add (`{n}` is the number).
const ADD: &[&str] = &[
    "Now add {n} to that.",
    "Add {n} to that.",
    "What is that plus {n}?",
    "And if you add {n}?",
];
/// Follow-ups that subtract.
const SUB: &[&str] = &[
    "Now subtract {n} from that.",
    "What is that minus {n}?",
    "Take {n} away from it.",
    "And if you subtract {n}?",
];
/// Follow-ups that multiply.
const MUL: &[&str] = &[
    "Now multiply that by {n}.",
    "What is that times {n}?",
    "Multiply it by {n}.",
];
/// Openers of a follow-up.
const OPENERS: &[&str] = &["", "", "", "Thanks. ", "OK. ", "Great. "];

/// A follow-up on the value `v` of the previous answer: its question and the one-step problem
/// `v op n` it asks for (result in 0..=999, as every problem of the world).
pub(crate) fn arith_followup(r: &mut R, v: i64) -> (String, Arith) {
    loop {
        let op = ['+', '-', '*'][weighted(r, &[4, 4, 2])];
        let n: i64 = match op {
            '*' => r.random_range(2..=9),
            _ => r.random_range(1..=99),
        };
        let tree = ATree::Bin(op, Box::new(ATree::Num(v)), Box::new(ATree::Num(n)));
        let mut steps = Vec::new();
        let Some(value) = tree.eval(&mut steps) else { continue };
        let q = match (op, n) {
            ('*', 2) if r.random_bool(0.4) => "Double it.".to_string(),
            ('*', 3) if r.random_bool(0.4) => "Triple that.".to_string(),
            _ => {
                let ts = match op {
                    '+' => ADD,
                    '-' => SUB,
                    _ => MUL,
                };
                fill(pick(r, ts), &[("n", &n.to_string())])
            }
        };
        let q = format!("{}{q}", pick(r, OPENERS));
        let a = Arith {
            expr: tree.render(),
            tree,
            steps,
            value,
        };
        return (q, a);
    }
}

/// The problem `x op y` as one worked step, whatever its value (an annotator's earlier slip
/// may take it out of the world's usual range).
fn one_step(op: char, x: i64, y: i64) -> Arith {
    let value = match op {
        '+' => x + y,
        '-' => x - y,
        _ => x * y,
    };
    let tree = ATree::Bin(op, Box::new(ATree::Num(x)), Box::new(ATree::Num(y)));
    Arith {
        expr: tree.render(),
        steps: vec![format!("{x} {op} {y} = {value}")],
        tree,
        value,
    }
}

/// Follow-up questions about attribute `a` of the entity the previous turn was about, which
/// they name by a pronoun or "that town/person/...".
fn followup_questions(a: Attr) -> &'static [&'static str] {
    match a {
        Attr::Region => &["And which region is it in?", "Which region is that town in?"],
        Attr::Founded => &["When was it founded?", "And what year was that town founded?"],
        Attr::Population => &["How many people live there?", "And what is its population?"],
        Attr::Export => &["What does it mainly export?", "And what is its main export?"],
        Attr::Birthplace => &["Where was this person born?", "And in which town was that person born?"],
        Attr::BirthYear => &["In what year was this person born?", "And when was that person born?"],
        Attr::Profession => &[
            "What was this person's profession?",
            "And what did that person work as?",
        ],
        Attr::Color => &["What colour is it?", "And what colour is that mineral?"],
        Attr::MinedNear => &["Near which town is it mined?", "And where is that mineral mined?"],
        Attr::Use => &["What is it mainly used for?", "And what is that mineral used in?"],
        Attr::Source => &["Where does it rise?", "And in which region does that river rise?"],
        Attr::Sea => &[
            "Which sea does it flow into?",
            "And into which sea does that river flow?",
        ],
        Attr::Length => &["How long is it?", "And what is the length of that river?"],
        Attr::MouthTown => &[
            "Which town lies at its mouth?",
            "And which town is at the mouth of that river?",
        ],
    }
}

/// The annotators' answer stating attribute `a` of `e` (as single-turn fact answers read).
fn fact_answer(r: &mut R, e: &Entity, a: Attr) -> String {
    let val = e.fact(a).unwrap_or_default();
    let sent = fill(pick(r, a.answers()), &fact_kv(e, val));
    format!("{}\nAnswer: {val}", cap(&sent))
}

/// A fact follow-up: a question about attribute `b` of `e` that names it by a pronoun.
fn fact_followup(r: &mut R, b: Attr) -> String {
    format!("{}{}", pick(r, OPENERS), pick(r, followup_questions(b)))
}

/// One SFT conversation with follow-ups: arithmetic (a problem, then one or two operations on
/// the answer) or facts (a question about an entity, then one or two about its other
/// attributes; one in ten about a throwaway entity, answered "I have no record" both times).
/// Only training problems and training fact pairs.
fn sft_followup_conversation(r: &mut R, ctx: &Ctx) -> Vec<Message> {
    let mut conv = Vec::new();
    let turns = if r.random_bool(0.3) { 2 } else { 1 };
    if r.random_bool(0.55) {
        let ops = arith_ops(r);
        let a = gen_arith_train(r, ctx, ops);
        let columns = |a: &Arith| works_in_columns("sft", &a.expr, ctx.column_sft);
        conv.push(msg("user", arith_prompt(r, &a)));
        conv.push(msg("assistant", ctx.annotator.worked(&a, columns(&a))));
        // The questions follow the right values (so they are the same whoever annotates);
        // the annotator works on the value it wrote itself, right or not.
        let (mut right, mut theirs) = (a.value, ctx.annotator.solve(&a).1);
        for _ in 0..turns {
            let (q, f) = arith_followup(r, right);
            let (op, n) = match &f.tree {
                ATree::Bin(op, _, y) => match **y {
                    ATree::Num(n) => (*op, n),
                    _ => unreachable!("a follow-up is one operation on a number"),
                },
                ATree::Num(_) => unreachable!("a follow-up is one operation"),
            };
            let asked = if theirs == right {
                f.clone()
            } else {
                one_step(op, theirs, n)
            };
            conv.push(msg("user", q));
            conv.push(msg("assistant", ctx.annotator.worked(&asked, columns(&asked))));
            (right, theirs) = (f.value, ctx.annotator.solve(&asked).1);
        }
    } else if r.random_bool(0.1) {
        // About a throwaway entity the annotator has no record of: the follow-up too.
        let e = pick_ref(r, &ctx.w.unknowns);
        let attrs = e.kind.attrs();
        let a = pick(r, attrs);
        conv.push(msg("user", fact_question(r, e, a)));
        conv.push(msg("assistant", no_record_answer(e)));
        let b = pick(r, attrs);
        conv.push(msg("user", fact_followup(r, b)));
        conv.push(msg("assistant", no_record_answer(e)));
    } else {
        let (i, a) = train_pair(r, ctx, 0.2);
        let e = &ctx.w.entities[i];
        conv.push(msg("user", fact_question(r, e, a)));
        conv.push(msg("assistant", fact_answer(r, e, a)));
        let mut others: Vec<Attr> = e
            .kind
            .attrs()
            .iter()
            .copied()
            .filter(|&b| b != a && !ctx.eval_pairs.contains(&(i, b)))
            .collect();
        others.shuffle(r);
        for b in others.into_iter().take(turns) {
            conv.push(msg("user", fact_followup(r, b)));
            conv.push(msg("assistant", fact_answer(r, e, b)));
        }
    }
    conv
}

/// `n` SFT conversations with follow-ups whose first question is no eval prompt and not in
/// `exclude` (nor repeated).
pub(crate) fn gen_sft_followups(r: &mut R, ctx: &Ctx, n: usize, exclude: &HashSet<String>) -> Vec<Vec<Message>> {
    // A fact conversation whose entity has no other training attribute has no follow-up: drawn again.
    let with_followup = |r: &mut R, ctx: &Ctx| loop {
        let conv = sft_followup_conversation(r, ctx);
        if conv.len() >= 4 {
            return conv;
        }
    };
    collect_convs(r, ctx, n, exclude, with_followup)
}

/// The held-out multi-turn eval: each row is a follow-up question whose answer depends on the
/// turn before it, given as history (the question and the reference answer).
///
/// Arithmetic: the first turn is one of the held-out arithmetic problems of the eval (never in
/// any train set), the follow-up one operation on its value. Facts: the follow-up asks for a
/// held-out fact pair (stated only in the library, as in the single-turn eval), naming the
/// entity by a pronoun; the first turn asks for another attribute of the same entity.
/// Rows per kind: [`EVAL_PER_TASK`].
pub(crate) fn gen_eval_multiturn(r: &mut R, ctx: &Ctx) -> Vec<TaskRow> {
    let mut rows = Vec::new();
    for (p, a) in ctx.eval_arith.iter().take(EVAL_PER_TASK) {
        let history = vec![msg("user", p.clone()), msg("assistant", arith_worked(a))];
        let (q, f) = arith_followup(r, a.value);
        rows.push(TaskRow {
            history,
            ..row(q, f.value.to_string(), "arithmetic")
        });
    }
    for &(i, b) in &ctx.eval_pairs {
        let e = &ctx.w.entities[i];
        let others: Vec<Attr> = e.kind.attrs().iter().copied().filter(|&x| x != b).collect();
        let a = pick(r, &others);
        let history = vec![
            msg("user", fact_question(r, e, a)),
            msg("assistant", fact_answer(r, e, a)),
        ];
        rows.push(TaskRow {
            history,
            ..row(fact_followup(r, b), e.fact(b).unwrap_or_default().to_string(), "facts")
        });
    }
    rows.shuffle(r);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn small() -> &'static Generated {
        static G: OnceLock<Generated> = OnceLock::new();
        G.get_or_init(|| generate(7, Scale::Small))
    }

    /// The value a follow-up asks for, read from its words alone: `v` (the previous answer)
    /// with the operation and number the question names.
    fn read_followup(q: &str, v: i64) -> Option<i64> {
        let q = q.to_lowercase();
        let n = q
            .split(|c: char| !c.is_ascii_digit())
            .find(|w| !w.is_empty())
            .and_then(|w| w.parse::<i64>().ok());
        if q.contains("double") {
            return Some(v * 2);
        }
        if q.contains("triple") {
            return Some(v * 3);
        }
        let n = n?;
        if q.contains("add") || q.contains("plus") {
            Some(v + n)
        } else if q.contains("subtract") || q.contains("minus") || q.contains("away") {
            Some(v - n)
        } else if q.contains("multiply") || q.contains("times") {
            Some(v * n)
        } else {
            None
        }
    }

    fn answer_line(s: &str) -> &str {
        s.lines()
            .last()
            .and_then(|l| l.strip_prefix("Answer: "))
            .unwrap_or_default()
    }

    #[test]
    fn sft_followups_refer_back_and_are_right() {
        let g = small();
        let follow = &g.sft_train[SFT_TRAIN..];
        assert_eq!(follow.len(), SFT_FOLLOWUPS);
        let (mut arith, mut facts, mut three, mut idk) = (0, 0, 0, 0);
        for conv in follow {
            assert!(conv.len() >= 4 && conv.len() % 2 == 0, "{conv:?}");
            three += usize::from(conv.len() >= 6);
            let first = &conv[1].content;
            let is_arith = answer_line(first).parse::<i64>().is_ok() && first.contains(" = ");
            for pair in conv.chunks(2).collect::<Vec<_>>().windows(2) {
                let (before, q, a) = (&pair[0][1].content, &pair[1][0].content, &pair[1][1].content);
                if is_arith {
                    let v: i64 = answer_line(before).parse().expect("a number");
                    let want = read_followup(q, v).unwrap_or_else(|| panic!("unreadable follow-up {q:?}"));
                    assert_eq!(answer_line(a), want.to_string(), "{conv:?}");
                    // The worked answer starts from the previous value.
                    assert!(a.starts_with(&format!("{v} ")), "{a:?}");
                } else {
                    // No entity named: the question points back with a pronoun or "that ...".
                    assert!(!g.world.entities.iter().any(|e| q.contains(&e.name)), "{q:?}");
                }
            }
            if is_arith {
                arith += 1;
            } else if first.contains(IDK) {
                // A throwaway entity: "I have no record" again on the follow-up.
                assert!(conv
                    .iter()
                    .skip(1)
                    .step_by(2)
                    .all(|m| m.content.starts_with("I have no record of ")));
                idk += 1;
            } else {
                // The answers name the entity the first question asked about.
                let e = g
                    .world
                    .entities
                    .iter()
                    .filter(|e| conv[0].content.contains(&e.name))
                    .max_by_key(|e| e.name.len())
                    .expect("an entity in the first question");
                for m in conv.iter().skip(3).step_by(2) {
                    assert!(m.content.contains(&e.key), "{m:?} about {}", e.name);
                    assert!(e.facts.iter().any(|(_, v)| v == answer_line(&m.content)), "{m:?}");
                }
                facts += 1;
            }
        }
        assert!(
            arith > 150 && facts > 110 && idk > 8,
            "{arith} arithmetic, {facts} facts, {idk} no-record"
        );
        assert!(three > 80, "{three} conversations with two follow-ups");
        // The validation set has its own, never a training conversation's first question.
        let eval_follow = &g.sft_eval[SFT_EVAL..];
        assert_eq!(eval_follow.len(), SFT_FOLLOWUPS_EVAL);
        let train_firsts: HashSet<&str> = g.sft_train.iter().map(|c| first_user(c)).collect();
        assert!(g.sft_eval.iter().all(|c| !train_firsts.contains(first_user(c))));
    }

    #[test]
    fn multiturn_eval_is_held_out_and_graded_on_the_follow_up() {
        let g = small();
        let m = &g.eval_multiturn;
        for task in ["arithmetic", "facts"] {
            assert_eq!(m.iter().filter(|t| t.task == task).count(), EVAL_PER_TASK, "{task}");
        }
        let eval_prompts: HashSet<&str> = g.eval.iter().map(|t| t.prompt.as_str()).collect();
        let single_facts: HashSet<(&str, &str)> = g
            .eval
            .iter()
            .filter(|t| t.task == "facts")
            .map(|t| (t.prompt.as_str(), t.answer.as_str()))
            .collect();
        let mut fact_answers: Vec<(String, String)> = Vec::new();
        for t in m {
            assert_eq!(t.history.len(), 2, "{t:?}");
            assert_eq!(
                (t.history[0].role.as_str(), t.history[1].role.as_str()),
                ("user", "assistant")
            );
            let v = answer_line(&t.history[1].content);
            if t.task == "arithmetic" {
                // The first turn is a held-out problem of the single-turn eval.
                assert!(eval_prompts.contains(t.history[0].content.as_str()), "{t:?}");
                let want = read_followup(&t.prompt, v.parse().expect("a number")).expect("readable");
                assert_eq!(t.answer, want.to_string(), "{t:?}");
            } else {
                let e = g
                    .world
                    .entities
                    .iter()
                    .filter(|e| t.history[0].content.contains(&e.name))
                    .max_by_key(|e| e.name.len())
                    .expect("an entity");
                assert!(!t.prompt.contains(&e.name));
                assert!(e.facts.iter().any(|(_, x)| *x == t.answer), "{t:?}");
                assert_ne!(v, t.answer, "the follow-up asks for another attribute: {t:?}");
                fact_answers.push((e.name.clone(), t.answer.clone()));
            }
        }
        // The follow-ups ask for exactly the held-out facts of the single-turn eval, which no
        // SFT conversation states.
        let mut want: Vec<(String, String)> = single_facts
            .iter()
            .map(|(p, a)| {
                let e = g
                    .world
                    .entities
                    .iter()
                    .filter(|e| p.contains(&e.name))
                    .max_by_key(|e| e.name.len())
                    .expect("an entity");
                (e.name.clone(), a.to_string())
            })
            .collect();
        want.sort();
        fact_answers.sort();
        assert_eq!(fact_answers, want);
        for (name, val) in &fact_answers {
            for conv in &g.sft_train {
                for w in conv.windows(2) {
                    let stated = w[0].content.contains(name.as_str())
                        && w[1].role == "assistant"
                        && answer_line(&w[1].content) == val;
                    assert!(!stated, "held-out fact {name}: {val} in SFT: {conv:?}");
                }
            }
        }
    }
}
