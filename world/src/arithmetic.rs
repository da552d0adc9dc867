//! Arithmetic: expression trees, worked answers ("Step i: a op b = c"), and the library's
//! arithmetic documents.
use super::*;

#[derive(Clone, Debug)]
pub(crate) enum ATree {
    Num(i64),
    Bin(char, Box<ATree>, Box<ATree>),
}

pub(crate) fn prec(op: char) -> u8 {
    if op == '*' {
        2
    } else {
        1
    }
}

impl ATree {
    pub(crate) fn prec(&self) -> u8 {
        match self {
            ATree::Num(_) => 3,
            ATree::Bin(op, _, _) => prec(*op),
        }
    }

    pub(crate) fn render(&self) -> String {
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
    pub(crate) fn eval(&self, steps: &mut Vec<String>) -> Option<i64> {
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
pub(crate) struct Arith {
    pub(crate) tree: ATree,
    pub(crate) expr: String,
    pub(crate) steps: Vec<String>,
    pub(crate) value: i64,
}

pub(crate) fn arith_leaf(r: &mut R, parent: char) -> ATree {
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

pub(crate) fn arith_op(r: &mut R) -> char {
    ['+', '-', '*'][weighted(r, &[4, 4, 2])]
}

/// A random expression tree with `ops` operations: 1 to 3 in the shapes of the SFT data, more
/// by adding or subtracting a number to a tree of one operation fewer.
pub(crate) fn arith_tree(r: &mut R, ops: usize) -> ATree {
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
pub(crate) fn gen_arith(r: &mut R, ops: usize) -> Arith {
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
pub(crate) fn expr_key(expr: &str) -> String {
    expr.split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A random expression not reserved by the eval.
pub(crate) fn gen_arith_train(r: &mut R, ctx: &Ctx, ops: usize) -> Arith {
    loop {
        let a = gen_arith(r, ops);
        if !ctx.reserved_exprs.contains(&expr_key(&a.expr)) {
            return a;
        }
    }
}

pub(crate) const ARITH_PROMPTS: &[&str] = &[
    "What is {e}?",
    "Compute {e}.",
    "Calculate {e}.",
    "What does {e} equal?",
    "Work out {e}.",
    "Evaluate {e}.",
    "{e} = ?",
];

pub(crate) fn arith_prompt(r: &mut R, a: &Arith) -> String {
    fill(pick(r, ARITH_PROMPTS), &[("e", &a.expr)])
}

/// The short worked answer used in SFT (and the library's "Step" format).
pub(crate) fn arith_worked(a: &Arith) -> String {
    render_worked(&a.steps, a.value)
}

/// "a op b = c" alone for one step, "Step i: ..." lines for more, then "Answer: n".
pub(crate) fn render_worked(steps: &[String], value: i64) -> String {
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
pub(crate) const ARITH_OPS_PCT: [u32; 3] = [45, 35, 20];

/// A random number of operations, following [`ARITH_OPS_PCT`].
pub(crate) fn arith_ops(r: &mut R) -> usize {
    1 + weighted(r, &ARITH_OPS_PCT)
}

/// The number of operations of the `i`-th of `n` problems: exact [`ARITH_OPS_PCT`] quotas
/// (callers shuffle the rows afterwards).
pub(crate) fn arith_ops_quota(i: usize, n: usize) -> usize {
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
pub(crate) fn column_problem(r: &mut R) -> String {
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
pub(crate) fn word_problem(r: &mut R, ctx: &Ctx) -> String {
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
pub(crate) fn arithmetic_doc(r: &mut R, ctx: &Ctx) -> String {
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
