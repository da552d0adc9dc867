//! Programs: a tiny Python subset, rendered and interpreted in Rust, and the library's code
//! documents.
use super::*;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val {
    Int(i64),
    Str(String),
    List(Vec<i64>),
}

impl Val {
    /// Python `str()`.
    pub(crate) fn show(&self) -> String {
        match self {
            Val::Int(v) => v.to_string(),
            Val::Str(s) => s.clone(),
            Val::List(v) => format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }

    /// Python `repr()`.
    pub(crate) fn repr(&self) -> String {
        match self {
            Val::Str(s) => format!("'{s}'"),
            other => other.show(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum POp {
    Add,
    Sub,
    Mul,
    FDiv,
    Mod,
}

impl POp {
    pub(crate) fn sym(self) -> &'static str {
        match self {
            POp::Add => "+",
            POp::Sub => "-",
            POp::Mul => "*",
            POp::FDiv => "//",
            POp::Mod => "%",
        }
    }

    pub(crate) fn prec(self) -> u8 {
        match self {
            POp::Add | POp::Sub => 1,
            _ => 2,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Cmp {
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Ne,
}

impl Cmp {
    pub(crate) fn sym(self) -> &'static str {
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
pub(crate) enum PEx {
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
pub(crate) struct Cond(PEx, Cmp, PEx);

#[derive(Clone, Debug)]
pub(crate) enum PSt {
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

pub(crate) fn v(name: &str) -> PEx {
    PEx::Var(name.to_string())
}

pub(crate) fn int(x: i64) -> PEx {
    PEx::Int(x)
}

pub(crate) fn bin(op: POp, a: PEx, b: PEx) -> PEx {
    PEx::Bin(op, Box::new(a), Box::new(b))
}

pub(crate) fn assign(name: &str, e: PEx) -> PSt {
    PSt::Assign(name.to_string(), e)
}

pub(crate) fn print1(e: PEx) -> PSt {
    PSt::Print(vec![e])
}

impl PEx {
    pub(crate) fn prec(&self) -> u8 {
        match self {
            PEx::Bin(op, _, _) => op.prec(),
            _ => 3,
        }
    }

    pub(crate) fn render(&self) -> String {
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

pub(crate) fn render_stmts(stmts: &[PSt], indent: usize, out: &mut String) {
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

pub(crate) const VALUE_LIMIT: i64 = 100_000;
pub(crate) const STEP_LIMIT: usize = 5_000;

/// Interpreter of the subset, with Python semantics for everything the generators emit.
#[derive(Default)]
pub(crate) struct Interp {
    pub(crate) vars: BTreeMap<String, Val>,
    pub(crate) funcs: BTreeMap<String, (String, PEx)>,
    pub(crate) out: Vec<String>,
    pub(crate) trace: Vec<(String, Val)>,
    pub(crate) steps: usize,
}

pub(crate) fn binop(op: POp, a: Val, b: Val) -> Option<Val> {
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

pub(crate) fn py_index(len: usize, i: i64) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let j = if i < 0 { len + i } else { i };
    (0..len).contains(&j).then_some(j as usize)
}

impl Interp {
    pub(crate) fn eval(&self, e: &PEx, local: Option<(&str, &Val)>) -> Option<Val> {
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

    pub(crate) fn cond(&self, c: &Cond) -> Option<bool> {
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

    pub(crate) fn tick(&mut self) -> Option<()> {
        self.steps += 1;
        (self.steps <= STEP_LIMIT).then_some(())
    }

    pub(crate) fn exec(&mut self, stmts: &[PSt], depth: usize) -> Option<()> {
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
pub(crate) struct Program {
    pub(crate) code: String,
    /// Printed lines.
    pub(crate) out: Vec<String>,
    /// Top-level assignments in order, for straight-line programs only (else empty).
    pub(crate) trace: Vec<(String, Val)>,
}

impl Program {
    pub(crate) fn output(&self) -> String {
        self.out.join("\n")
    }
}

pub(crate) fn run_program(stmts: &[PSt]) -> Option<Program> {
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

pub(crate) const VAR_SETS: &[[&str; 3]] = &[
    ["x", "y", "z"],
    ["a", "b", "c"],
    ["p", "q", "r"],
    ["m", "n", "k"],
    ["price", "count", "total"],
    ["width", "height", "area"],
    ["base", "step", "result"],
    ["apples", "pears", "fruit"],
];

pub(crate) fn small_op(r: &mut R) -> POp {
    [POp::Add, POp::Sub, POp::Mul, POp::FDiv, POp::Mod][weighted(r, &[5, 4, 4, 1, 1])]
}

pub(crate) fn const_for(r: &mut R, op: POp) -> i64 {
    match op {
        POp::Mul => r.random_range(2..=6),
        POp::FDiv | POp::Mod => r.random_range(2..=5),
        _ => r.random_range(1..=20),
    }
}

/// An expression over the given variables and small constants.
pub(crate) fn small_expr(r: &mut R, vars: &[&str]) -> PEx {
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

pub(crate) fn cmp_op(r: &mut R) -> Cmp {
    pick(r, &[Cmp::Lt, Cmp::Gt, Cmp::Le, Cmp::Ge, Cmp::Eq, Cmp::Ne])
}

/// Builds the statements of one program; `multi` allows several printed lines.
pub(crate) fn program_stmts(r: &mut R, ctx: &Ctx, multi: bool) -> Vec<PSt> {
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
pub(crate) fn gen_program(r: &mut R, ctx: &Ctx, multi: bool, allow_reserved: bool) -> Program {
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

pub(crate) const PROGRAM_PROMPTS: &[&str] = &[
    "What does this program print?",
    "What is the output of this Python program?",
    "What will this code print?",
    "Run this Python code in your head. What does it print?",
];

pub(crate) fn program_prompt(r: &mut R, p: &Program) -> String {
    format!("{}\n```python\n{}```", pick(r, PROGRAM_PROMPTS), p.code)
}

pub(crate) fn program_answer(p: &Program) -> String {
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
pub(crate) fn code_doc(r: &mut R, ctx: &Ctx) -> String {
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
