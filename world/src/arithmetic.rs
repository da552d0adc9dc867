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

/// The digits of `n`, ones first.
fn digits_rev(n: i64) -> Vec<i64> {
    let mut n = n;
    let mut d = vec![n % 10];
    while n >= 10 {
        n /= 10;
        d.push(n % 10);
    }
    d
}

/// Column working for the step `x op y = v` of a worked answer, as written by annotators who
/// work digit by digit: `48 + 37: 8+7=15, 4+3+1=8, so 85` (ones column first, a carried 1
/// written out), `52 - 17: 12-7=5, 5-1-1=3, so 35` (a borrowed ten written on the digit that
/// takes it, the 1 paid back on the next), `7 * 48: 7*8=56, 7*4+5=33, so 336` (the one-number
/// factor times each digit of the other, the carry added). Steps that are a single fact (both
/// numbers one digit, or a product of two numbers up to 12) and steps whose result is not
/// `x op y` (an annotator's slip) are written as they are: `x op y = v`.
pub fn column_step(x: i64, op: char, y: i64, v: i64) -> String {
    let direct = format!("{x} {op} {y} = {v}");
    let right = match op {
        '+' => x + y == v,
        '-' => x - y == v && v >= 0,
        '*' => x * y == v,
        _ => false,
    };
    if !right || x < 0 || y < 0 {
        return direct;
    }
    let mut cols: Vec<String> = Vec::new();
    match op {
        '+' | '-' => {
            if x < 10 && y < 10 {
                return direct;
            }
            let (dx, dy) = (digits_rev(x), digits_rev(y));
            let n = dx.len().max(dy.len());
            let mut carry = 0;
            for i in 0..n {
                let a = dx.get(i).copied().unwrap_or(0);
                let b = dy.get(i).copied().unwrap_or(0);
                if op == '+' {
                    let s = a + b + carry;
                    cols.push(if carry > 0 {
                        format!("{a}+{b}+1={s}")
                    } else {
                        format!("{a}+{b}={s}")
                    });
                    carry = s / 10;
                } else {
                    let borrow = a - carry < b;
                    let top = if borrow { a + 10 } else { a };
                    let d = top - carry - b;
                    cols.push(if carry > 0 {
                        format!("{top}-1-{b}={d}")
                    } else {
                        format!("{top}-{b}={d}")
                    });
                    carry = i64::from(borrow);
                }
            }
        }
        _ => {
            // The factor up to 12 multiplies each digit of the other.
            let (k, m) = if x <= 12 && (y > 12 || y >= x) { (x, y) } else { (y, x) };
            if m <= 12 || m < 10 {
                return direct;
            }
            let mut carry = 0;
            for d in digits_rev(m) {
                let p = k * d + carry;
                cols.push(if carry > 0 {
                    format!("{k}*{d}+{carry}={p}")
                } else {
                    format!("{k}*{d}={p}")
                });
                carry = p / 10;
            }
        }
    }
    format!("{x} {op} {y}: {}, so {v}", cols.join(", "))
}

/// One step `x op y = v` (as [`ATree::eval`] records it) in column working.
pub(crate) fn column_of(step: &str) -> String {
    let w: Vec<&str> = step.split(' ').collect();
    let num = |i: usize| w.get(i).and_then(|t| t.parse::<i64>().ok());
    match (
        num(0),
        w.get(1).and_then(|o| o.chars().next()),
        num(2),
        w.get(3),
        num(4),
    ) {
        (Some(x), Some(op), Some(y), Some(&"="), Some(v)) if w.len() == 5 => column_step(x, op, y, v),
        _ => step.to_string(),
    }
}

/// A worked answer with every step in column working (see [`column_step`]).
pub(crate) fn render_worked_columns(steps: &[String], value: i64) -> String {
    let cols: Vec<String> = steps.iter().map(|s| column_of(s)).collect();
    render_worked(&cols, value)
}

/// Whether the annotator of problem `expr` in the stream `what` works in columns, with
/// probability `share` (a hash, so the rest of the world's random draws are untouched).
pub(crate) fn works_in_columns(what: &str, expr: &str, share: f64) -> bool {
    share > 0.0 && annotator::unit(&format!("columns|{what}|{expr}")) < share
}

/// A library document's worked answer: in column working with the library's share of it.
fn library_worked(ctx: &Ctx, a: &Arith) -> String {
    if works_in_columns("library", &a.expr, ctx.column_library) {
        render_worked_columns(&a.steps, a.value)
    } else {
        arith_worked(a)
    }
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
                    s.push_str(&format!("Q: {p}\nA: {}\n\n", library_worked(ctx, &a)));
                } else {
                    s.push_str(&format!("{p}\n{}\n\n", library_worked(ctx, &a)));
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
                s.push_str(&format!("Problem {i}: {}\n{}\n\n", a.expr, library_worked(ctx, &a)));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluates a column `a+b+1=s` / `a-1-b=d` / `k*d+c=p`: its operands, and its written result.
    fn column(c: &str) -> (i64, i64) {
        let (lhs, rhs) = c.split_once('=').unwrap();
        let mut v = 0;
        let mut sign = 1;
        let mut prod: Option<i64> = None;
        let mut num = String::new();
        let flush = |num: &mut String, prod: &mut Option<i64>, v: &mut i64, sign: i64| {
            let n: i64 = num.parse().unwrap();
            num.clear();
            match prod.take() {
                Some(k) => *v += sign * k * n,
                None => *v += sign * n,
            }
        };
        for ch in lhs.chars() {
            match ch {
                '0'..='9' => num.push(ch),
                '*' => {
                    prod = Some(num.parse().unwrap());
                    num.clear();
                }
                '+' | '-' => {
                    flush(&mut num, &mut prod, &mut v, sign);
                    sign = if ch == '+' { 1 } else { -1 };
                }
                _ => unreachable!("{c}"),
            }
        }
        flush(&mut num, &mut prod, &mut v, sign);
        (v, rhs.parse().unwrap())
    }

    #[test]
    fn column_working_is_right_and_assembles_the_result() {
        let mut expanded = 0;
        for x in 0..=300i64 {
            for y in (0..=300i64).step_by(7) {
                for op in ['+', '-', '*'] {
                    let v = match op {
                        '+' => x + y,
                        '-' => x - y,
                        _ => x * y,
                    };
                    if !(0..=999).contains(&v) || (op == '*' && x > 12 && y > 12) {
                        continue;
                    }
                    let s = column_step(x, op, y, v);
                    let Some((head, rest)) = s.split_once(": ") else {
                        assert_eq!(s, format!("{x} {op} {y} = {v}"));
                        continue;
                    };
                    expanded += 1;
                    assert_eq!(head, format!("{x} {op} {y}"));
                    let (cols, result) = rest.split_once(", so ").unwrap();
                    assert_eq!(result, v.to_string(), "{s}");
                    let vals: Vec<i64> = cols
                        .split(", ")
                        .map(|c| {
                            let (lhs, written) = column(c);
                            assert_eq!(lhs, written, "a column's own sum is right: {s}");
                            written
                        })
                        .collect();
                    // The result is read off the columns: every column's ones digit, and the last
                    // column whole (sums and products) or its digit (differences).
                    let mut back = 0;
                    let mut scale = 1;
                    for (i, c) in vals.iter().enumerate() {
                        let last = i + 1 == vals.len() && op != '-';
                        back += scale * if last { *c } else { c % 10 };
                        scale *= 10;
                    }
                    assert_eq!(back, v, "{s}");
                }
            }
        }
        assert!(expanded > 10_000, "{expanded} steps in columns");
        assert_eq!(column_step(48, '+', 37, 85), "48 + 37: 8+7=15, 4+3+1=8, so 85");
        assert_eq!(column_step(52, '-', 17, 35), "52 - 17: 12-7=5, 5-1-1=3, so 35");
        assert_eq!(column_step(7, '*', 48, 336), "7 * 48: 7*8=56, 7*4+5=33, so 336");
        assert_eq!(column_step(3, '+', 4, 7), "3 + 4 = 7", "one fact: no columns");
        assert_eq!(column_step(7, '*', 12, 84), "7 * 12 = 84", "a times-table fact");
        assert_eq!(
            column_step(48, '+', 37, 75),
            "48 + 37 = 75",
            "a slip is written as it is"
        );
    }
}
