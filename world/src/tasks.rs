//! Tasks and conversations: the held-out eval, the SFT conversations, the RL prompts, and
//! [`generate`], which makes them all from a seed.
use super::*;

pub(crate) fn row(prompt: String, answer: String, task: &str) -> TaskRow {
    TaskRow {
        prompt,
        answer,
        task: task.to_string(),
        history: Vec::new(),
    }
}

pub(crate) fn msg(role: &str, content: String) -> Message {
    Message {
        role: role.to_string(),
        content,
    }
}

/// Operations of the harder held-out arithmetic slice (SFT and the library stop at 3).
pub const HARD_OPS: usize = 4;

/// The harder held-out slice ([`Generated::eval_hard`]); reserves its expressions in `ctx`.
pub(crate) fn gen_eval_hard(r: &mut R, ctx: &mut Ctx) -> Vec<TaskRow> {
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
pub(crate) fn gen_eval(r: &mut R, ctx: &mut Ctx) -> Vec<TaskRow> {
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
pub(crate) fn train_pair(r: &mut R, ctx: &Ctx, rare_p: f64) -> Pair {
    if !ctx.train_pairs_rare.is_empty() && r.random_bool(rare_p) {
        pick(r, &ctx.train_pairs_rare)
    } else {
        pick(r, &ctx.train_pairs_common)
    }
}

/// One (user, assistant) exchange of the given task kind (0 arithmetic, 1 facts, 2 program).
pub(crate) fn sft_exchange(r: &mut R, ctx: &Ctx, kind: usize) -> (String, String) {
    match kind {
        0 => {
            let ops = arith_ops(r);
            let a = gen_arith_train(r, ctx, ops);
            {
                let columns = works_in_columns("sft", &a.expr, ctx.column_sft);
                (arith_prompt(r, &a), ctx.annotator.worked(&a, columns))
            }
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

pub(crate) const SYSTEM_PROMPTS: &[&str] = &[
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly and end with a line 'Answer: <answer>'.",
];
pub(crate) const FOLLOW_UPS: &[&str] = &["", "Thanks. ", "Great. Another question: ", "OK. ", "And one more: "];

pub(crate) fn sft_conversation(r: &mut R, ctx: &Ctx) -> Vec<Message> {
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

pub(crate) fn first_user(conv: &[Message]) -> &str {
    conv.iter()
        .find(|m| m.role == "user")
        .map(|m| m.content.as_str())
        .unwrap_or_default()
}

pub(crate) fn gen_sft(r: &mut R, ctx: &Ctx, n: usize, exclude: &HashSet<String>) -> Vec<Vec<Message>> {
    collect_convs(r, ctx, n, exclude, sft_conversation)
}

/// `n` conversations drawn by `make` that ask no eval prompt and whose first question is
/// neither in `exclude` nor repeated.
pub(crate) fn collect_convs(
    r: &mut R,
    ctx: &Ctx,
    n: usize,
    exclude: &HashSet<String>,
    make: impl Fn(&mut R, &Ctx) -> Vec<Message>,
) -> Vec<Vec<Message>> {
    let mut out = Vec::with_capacity(n);
    let mut seen: HashSet<String> = HashSet::new();
    while out.len() < n {
        let conv = make(r, ctx);
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

pub(crate) fn gen_rl(r: &mut R, ctx: &Ctx) -> Vec<TaskRow> {
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
    /// Share of fact answers about entities the library never mentions ([`World::ghosts`]), in
    /// the conversations without follow-ups (those with follow-ups are never fabricated).
    pub fabricated_facts: f64,
    /// Share of the SFT conversations' worked arithmetic written in column working
    /// ([`column_step`]); when above 0 the library's worked answers are written in columns too,
    /// with share [`LIBRARY_COLUMN_SHARE`], so the library (and every checkpoint trained on it)
    /// differs from the default world's.
    pub column_share: f64,
}

/// Share of the library's worked arithmetic in column working when [`Options::column_share`]
/// is above 0: the textbooks teach the method the annotators use.
pub const LIBRARY_COLUMN_SHARE: f64 = 0.5;

impl Default for Options {
    fn default() -> Self {
        Options {
            annotator: Annotator::perfect(),
            fabricated_facts: 0.0,
            column_share: 0.0,
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
    let mut r_follow = sub_rng(&mut master);

    let mut world = build_world(&mut r_world, &plan);
    if opts.fabricated_facts > 0.0 {
        world.ghosts = fabricated::ghosts(&mut r_ghost, &world, GHOSTS);
    }
    let world = Arc::new(world);
    let mut ctx = Ctx::new(&mut r_split, world.clone());
    ctx.ghost_rng = std::cell::RefCell::new(r_ghost);
    if opts.column_share > 0.0 {
        ctx.column_library = LIBRARY_COLUMN_SHARE.max(opts.column_share);
    }
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
    ctx.column_sft = opts.column_share;
    let mut sft_train = gen_sft(&mut r_sft, &ctx, SFT_TRAIN, &no_prompts);
    let mut train_firsts: HashSet<String> = sft_train.iter().map(|c| first_user(c).to_string()).collect();
    let mut sft_eval = gen_sft(&mut r_sft, &ctx, SFT_EVAL, &train_firsts);
    // Conversations with follow-ups, from their own stream, after the others (which stay as
    // they were without them, and so does the tokenizer trained on the first of them).
    let eval_firsts: HashSet<String> = sft_eval.iter().map(|c| first_user(c).to_string()).collect();
    // Their first questions may repeat a training conversation's (not a validation one's).
    let follow = gen_sft_followups(&mut r_follow, &ctx, SFT_FOLLOWUPS, &eval_firsts);
    train_firsts.extend(follow.iter().map(|c| first_user(c).to_string()));
    train_firsts.extend(eval_firsts);
    sft_train.extend(follow);
    sft_eval.extend(gen_sft_followups(
        &mut r_follow,
        &ctx,
        SFT_FOLLOWUPS_EVAL,
        &train_firsts,
    ));
    ctx.annotator = Annotator::perfect();
    ctx.column_sft = 0.0;
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
    let eval_multiturn = gen_eval_multiturn(&mut r_follow, &ctx);

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
        eval_multiturn,
        annotator,
        eval_annotator,
    }
}
