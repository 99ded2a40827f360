//! The implementation guide's condition syntax (`IF PID-7 LENGTH GREATER THAN 8`,
//! `IF PID-13.2 IS NOT VALUED`, `IF XAD.7 IN ("M", "SH")`, `AND`/`OR`/`NOT`, parentheses) and its
//! assignments (`"http://…"`, `XTN.6+" "+XTN.7`), compiled once at load into small trees that are
//! evaluated against a segment or a data-type value.

use std::borrow::Cow;

use super::value::trim;
use crate::hl7::Field;

/// Where a reference points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref {
    /// `PID-13.2.1`: a field of a segment (`None`: the segment the row is about). `comp` and
    /// `sub` are 0 for "the whole".
    Field {
        seg: Option<[u8; 3]>,
        field: u16,
        comp: u16,
        sub: u16,
    },
    /// `XTN.3`, `HD.2.1`: a component of the data-type value the row is about.
    Comp { comp: u16, sub: u16 },
    /// `ORC`: whether such a segment is present (message maps).
    Segment([u8; 3]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    fn holds(self, a: usize, b: usize) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Const(bool),
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Valued(Ref),
    In(Ref, Vec<String>),
    Length(Ref, Cmp, usize),
    Count(Ref, Cmp, usize),
    /// `IS NUMERIC`: the text is a decimal number the mapper writes as one (an NM sent as
    /// `<0.5` or `POS` is not).
    Numeric(Ref),
    /// `IS DATETIME`: the text is a v2 date or time (DT, DTM, a TS's first part), its zone
    /// included (`200202150730-0500`), as the mapper reads one.
    Time(Ref),
}

/// What a condition is evaluated against (the engine's view of the message).
pub trait Env {
    /// The decoded text of what `r` points at (empty when absent).
    fn text(&self, r: &Ref) -> Cow<'_, str>;
    /// Number of repetitions of the field `r` points at (0 when empty).
    fn count(&self, r: &Ref) -> usize;
    /// Whether `r` holds a value (the engine answers from the raw bytes, without decoding).
    fn valued(&self, r: &Ref) -> bool {
        !trim(&self.text(r)).is_empty()
    }
    /// The raw bytes of `r` when they are their own text (ASCII, no escapes), so comparisons
    /// need no decoding; `None` otherwise.
    fn plain(&self, _r: &Ref) -> Option<&[u8]> {
        None
    }
    /// What `r` points at in the message, so that its parts can be read as the sender split
    /// them (a key tells `H&X` from `H\\T\\X`); `None` where there is no message.
    fn field(&self, _r: &Ref) -> Option<Field<'_>> {
        None
    }
    /// [`Env::text`] without the empty components and subcomponents a sender left at its end
    /// (`98^` is the number 98), when its bytes were sent as they are: what a number, a time or
    /// an assignment reads.
    fn whole(&self, r: &Ref) -> Cow<'_, str> {
        self.text(r)
    }
}

impl Cond {
    /// Whether the condition compares something `at` picks out with codes (`EQUALS`, `IN`),
    /// anywhere in it: what a constant written under it stands for. (A length or `IS NUMERIC`
    /// says nothing of which value was sent.)
    pub fn compares(&self, at: &dyn Fn(&Ref) -> bool) -> bool {
        match self {
            Cond::Const(_) | Cond::Valued(_) | Cond::Count(..) => false,
            Cond::Length(..) | Cond::Numeric(_) | Cond::Time(_) => false,
            Cond::In(r, _) => at(r),
            Cond::All(cs) | Cond::Any(cs) => cs.iter().any(|c| c.compares(at)),
            Cond::Not(c) => c.compares(at),
        }
    }

    /// Whether the condition reads field `field` of segment `id`, the one it is asked about.
    pub fn reads_field(&self, id: [u8; 3], field: u16) -> bool {
        let mut found = false;
        self.refs(&mut |r| {
            found |= matches!(r, Ref::Field { seg, field: f, .. }
                if *f == field && seg.is_none_or(|s| s == id));
        });
        found
    }

    /// Every reference the condition reads.
    pub fn refs(&self, f: &mut dyn FnMut(&Ref)) {
        match self {
            Cond::Const(_) => {}
            Cond::Valued(r) | Cond::In(r, _) | Cond::Numeric(r) | Cond::Time(r) => f(r),
            Cond::Length(r, ..) | Cond::Count(r, ..) => f(r),
            Cond::All(cs) | Cond::Any(cs) => cs.iter().for_each(|c| c.refs(f)),
            Cond::Not(c) => c.refs(f),
        }
    }

    pub fn eval(&self, env: &dyn Env) -> bool {
        match self {
            Cond::Const(b) => *b,
            Cond::All(v) => v.iter().all(|c| c.eval(env)),
            Cond::Any(v) => v.iter().any(|c| c.eval(env)),
            Cond::Not(c) => !c.eval(env),
            Cond::Valued(r) => match r {
                Ref::Segment(_) => env.count(r) > 0,
                _ => env.valued(r),
            },
            Cond::In(r, set) => matched(env, r, set).is_some(),
            Cond::Length(r, cmp, n) => cmp.holds(trim(&env.whole(r)).chars().count(), *n),
            Cond::Count(r, cmp, n) => cmp.holds(env.count(r), *n),
            Cond::Numeric(r) => super::value::is_decimal(&env.whole(r)),
            Cond::Time(r) => super::value::parse_v2_time(&env.whole(r)).is_ok(),
        }
    }
}

/// Which text of `set` the value at `r` is (trimmed), if any: `IN`'s comparison.
pub fn matched(env: &dyn Env, r: &Ref, set: &[String]) -> Option<usize> {
    if let Some(raw) = env.plain(r) {
        let raw = raw.trim_ascii();
        let found = set.iter().position(|s| s.as_bytes() == raw);
        // A value ending in a separator may have left empty parts (`POS^` is POS): asked
        // again without them; other values are settled by their bytes.
        if found.is_some() || !raw.last().is_some_and(u8::is_ascii_punctuation) {
            return found;
        }
    }
    let t = env.whole(r);
    let t = trim(&t);
    set.iter().position(|s| s == t)
}

/// Guards per map, and texts per guard, at most: a map's guard values are a small array,
/// and a row's allowed values one word.
pub const MAX_GUARDS: usize = 4;
const MAX_GUARD_TEXTS: usize = 63;

/// A comparison many rows of a map make on one value that is the same for all of them (an
/// OBX's rows each ask `OBX-2 EQUALS …` for their value type): the map asks it once per call,
/// and each row tests one bit instead of resolving and comparing the value again.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    pub r: Ref,
    /// Every text a row compares the value with; a value matching none is `texts.len()`.
    pub texts: Vec<String>,
}

/// A row's part of a guard: the conjunct `r IN (…)` or `r NOT IN (…)` split off its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowGuard {
    pub guard: u8,
    /// Bit `i`: the row may run when the value is `texts[i]` (bit `texts.len()`: none of them).
    pub allowed: u64,
}

impl Guard {
    /// The value's index among `texts` (`texts.len()` when none), as `RowGuard::admits` takes it.
    pub fn value(&self, env: &dyn Env) -> u8 {
        matched(env, &self.r, &self.texts).unwrap_or(self.texts.len()) as u8
    }
}

impl RowGuard {
    pub fn admits(self, values: &[u8; MAX_GUARDS]) -> bool {
        self.allowed >> values[self.guard as usize] & 1 == 1
    }
}

/// Splits guards off the conditions of one map's rows. `fixed(row, r)`: whether `r` reads the
/// same value for every row and repetition of a call, so that it can be asked once. A row keeps
/// what remains of its condition (`Const(true)` when nothing does, so that a condition still
/// decides and a row without a value still fires as before).
pub fn split_guards<R>(
    rows: &mut [R],
    cond: impl Fn(&mut R) -> &mut Option<Cond>,
    guard: impl Fn(&mut R) -> &mut Option<RowGuard>,
    fixed: impl Fn(&R, &Ref) -> bool,
) -> Vec<Guard> {
    let mut guards: Vec<Guard> = Vec::new();
    for row in rows.iter_mut() {
        let Some(c) = cond(row).take() else {
            continue;
        };
        let mut conjuncts = match c {
            Cond::All(v) => v,
            c => vec![c],
        };
        let pick = conjuncts.iter().position(|c| {
            let Some((r, set)) = in_list(c) else {
                return false;
            };
            if !fixed(row, r) {
                return false;
            }
            match guards.iter().position(|g| g.r == *r) {
                Some(i) => {
                    let texts = &guards[i].texts;
                    let new = set.iter().filter(|s| !texts.contains(s)).count();
                    texts.len() + new <= MAX_GUARD_TEXTS
                }
                None => guards.len() < MAX_GUARDS && set.len() <= MAX_GUARD_TEXTS,
            }
        });
        if let Some(i) = pick {
            let (negated, picked) = match conjuncts.remove(i) {
                Cond::Not(c) => (true, *c),
                c => (false, c),
            };
            let Cond::In(r, set) = picked else {
                unreachable!("picked as IN or NOT IN")
            };
            let g = match guards.iter().position(|g| g.r == r) {
                Some(g) => g,
                None => {
                    guards.push(Guard {
                        r,
                        texts: Vec::new(),
                    });
                    guards.len() - 1
                }
            };
            let texts = &mut guards[g].texts;
            let mut listed = 0u64;
            for s in set {
                let at = match texts.iter().position(|t| *t == s) {
                    Some(at) => at,
                    None => {
                        texts.push(s);
                        texts.len() - 1
                    }
                };
                listed |= 1 << at;
            }
            *guard(row) = Some(RowGuard {
                guard: g as u8,
                // A text added later by another row is never one this row listed: `NOT IN`
                // admits it through the complement, `IN` does not.
                allowed: if negated { !listed } else { listed },
            });
        }
        *cond(row) = Some(match conjuncts.len() {
            0 => Cond::Const(true),
            1 => conjuncts.pop().expect("one conjunct"),
            _ => Cond::All(conjuncts),
        });
    }
    guards
}

/// `r IN (…)` or `r NOT IN (…)`: the reference and the list.
fn in_list(c: &Cond) -> Option<(&Ref, &[String])> {
    match c {
        Cond::In(r, set) => Some((r, set)),
        Cond::Not(c) => match &**c {
            Cond::In(r, set) => Some((r, set)),
            _ => None,
        },
        _ => None,
    }
}

/// An assignment: literals and references joined with `+`.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Lit(String),
    Ref(Ref),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr(pub Vec<Term>);

impl Expr {
    /// Whether the assignment reads the message (else it writes a constant).
    pub fn reads_message(&self) -> bool {
        self.0.iter().any(|t| matches!(t, Term::Ref(_)))
    }

    /// The assigned text; `None` when a referenced part is empty (`"urn:oid:"+HD.2` without an
    /// HD.2 must not write `urn:oid:`).
    pub fn eval<'a>(&'a self, env: &'a dyn Env) -> Option<Cow<'a, str>> {
        // Most assignments are one literal or one reference: those are borrowed, not copied.
        let one = |t: &'a Term| -> Option<Cow<'a, str>> {
            match t {
                Term::Lit(l) => Some(Cow::Borrowed(l.as_str())),
                Term::Ref(r) => {
                    let v = match env.whole(r) {
                        Cow::Borrowed(v) => Cow::Borrowed(trim(v)),
                        Cow::Owned(v) => Cow::Owned(trim(&v).to_string()),
                    };
                    (!v.is_empty()).then_some(v)
                }
            }
        };
        if let [t] = self.0.as_slice() {
            return one(t);
        }
        let mut s = String::new();
        for t in &self.0 {
            match t {
                Term::Lit(l) => s.push_str(l),
                Term::Ref(r) => {
                    let v = env.whole(r);
                    let v = trim(&v);
                    if v.is_empty() {
                        return None;
                    }
                    s.push_str(v);
                }
            }
        }
        Some(Cow::Owned(s))
    }

    /// The literal, when the expression is one.
    pub fn literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Term::Lit(l)] => Some(l),
            _ => None,
        }
    }
}

/// Which references a file may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Segment and message maps: `PID-7`, `ORC`.
    Segment,
    /// Data-type maps: `XTN.3`.
    Datatype,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Comma,
    Op(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(&c) = it.peek() {
        match c {
            c if c.is_whitespace() => {
                it.next();
            }
            '(' => {
                it.next();
                out.push(Tok::Open);
            }
            ')' => {
                it.next();
                out.push(Tok::Close);
            }
            ',' => {
                it.next();
                out.push(Tok::Comma);
            }
            '"' | '\'' | '\u{201c}' => {
                it.next();
                let close = if c == '\u{201c}' { '\u{201d}' } else { c };
                let mut lit = String::new();
                loop {
                    match it.next() {
                        Some(x) if x == close => break,
                        Some(x) => lit.push(x),
                        None => return Err("a quoted text is not closed".into()),
                    }
                }
                out.push(Tok::Str(lit));
            }
            '=' | '!' | '<' | '>' => {
                it.next();
                let eq = it.peek() == Some(&'=');
                if eq {
                    it.next();
                }
                out.push(Tok::Op(match (c, eq) {
                    ('=', _) => "=",
                    ('!', true) => "!=",
                    ('<', false) => "<",
                    ('<', true) => "<=",
                    ('>', false) => ">",
                    ('>', true) => ">=",
                    _ => return Err("`!` must be followed by `=`".into()),
                }));
            }
            c if c.is_alphanumeric() || c == '-' || c == '.' || c == '_' => {
                let mut w = String::new();
                while let Some(&x) = it.peek() {
                    if x.is_alphanumeric() || x == '-' || x == '.' || x == '_' {
                        w.push(x);
                        it.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Word(w));
            }
            other => return Err(format!("unexpected character `{other}`")),
        }
    }
    Ok(out)
}

/// Parses a reference such as `PID-13.2`, `XTN.3` or `ORC`.
pub fn parse_ref(w: &str, scope: Scope) -> Result<Ref, String> {
    let bad =
        || format!("`{w}` is not a field reference (e.g. PID-13.2, or XTN.3 in data-type maps)");
    let num = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(bad()),
        }
    };
    let seg_id = |s: &str| -> Option<[u8; 3]> {
        let b = s.as_bytes();
        (b.len() == 3
            && b[0].is_ascii_uppercase()
            && b.iter()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
        .then(|| [b[0], b[1], b[2]])
    };
    if let Some((seg, rest)) = w.split_once('-') {
        if scope != Scope::Segment {
            return Err(format!(
                "`{w}`: a data-type map refers to its own components (e.g. XTN.3), not to segment fields"
            ));
        }
        let seg = seg_id(seg).ok_or_else(bad)?;
        let mut parts = rest.split('.');
        let field = num(parts.next().unwrap_or_default())?;
        let comp = parts.next().map(num).transpose()?.unwrap_or(0);
        let sub = parts.next().map(num).transpose()?.unwrap_or(0);
        if parts.next().is_some() {
            return Err(bad());
        }
        return Ok(Ref::Field {
            seg: Some(seg),
            field,
            comp,
            sub,
        });
    }
    if let Some((ty, rest)) = w.split_once('.') {
        if scope != Scope::Datatype {
            return Err(format!(
                "`{w}`: segment and message maps refer to fields as SEG-n.c (e.g. PID-13.2)"
            ));
        }
        if ty.is_empty()
            || !ty
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Err(bad());
        }
        let mut parts = rest.split('.');
        let comp = num(parts.next().unwrap_or_default())?;
        let sub = parts.next().map(num).transpose()?.unwrap_or(0);
        if parts.next().is_some() {
            return Err(bad());
        }
        return Ok(Ref::Comp { comp, sub });
    }
    if scope == Scope::Segment {
        if let Some(s) = seg_id(w) {
            return Ok(Ref::Segment(s));
        }
    }
    Err(bad())
}

/// How deep `NOT` and parentheses may nest in one condition. The guide's deepest is three;
/// the parser, the evaluator and the drop of a condition recurse once per level, so a file of
/// 50,000 `NOT`s overflowed the stack of `serve` and `lint`.
const MAX_NESTING: usize = 32;

struct Parser<'a> {
    toks: &'a [Tok],
    pos: usize,
    scope: Scope,
    /// `NOT`s and open parentheses around the current token.
    depth: usize,
}

impl Parser<'_> {
    fn peek_word(&self, k: usize) -> Option<String> {
        match self.toks.get(self.pos + k) {
            Some(Tok::Word(w)) => Some(w.to_ascii_uppercase()),
            _ => None,
        }
    }
    fn is_word(&self, k: usize, w: &str) -> bool {
        self.peek_word(k).as_deref() == Some(w)
    }
    fn eat_word(&mut self, w: &str) -> bool {
        if self.is_word(0, w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_word(&mut self, w: &str) -> Result<(), String> {
        if self.eat_word(w) {
            Ok(())
        } else {
            Err(format!("expected `{w}` {}", self.here()))
        }
    }
    fn here(&self) -> String {
        match self.toks.get(self.pos) {
            None => "at the end".into(),
            Some(Tok::Word(w)) => format!("at `{w}`"),
            Some(Tok::Str(s)) => format!("at \"{s}\""),
            Some(Tok::Open) => "at `(`".into(),
            Some(Tok::Close) => "at `)`".into(),
            Some(Tok::Comma) => "at `,`".into(),
            Some(Tok::Op(o)) => format!("at `{o}`"),
        }
    }

    fn or(&mut self) -> Result<Cond, String> {
        let mut v = vec![self.and()?];
        while self.eat_word("OR") {
            self.eat_word("IF");
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.pop().expect("one")
        } else {
            Cond::Any(v)
        })
    }

    fn and(&mut self) -> Result<Cond, String> {
        let mut v = vec![self.unary()?];
        while self.eat_word("AND") {
            self.eat_word("IF");
            v.push(self.unary()?);
        }
        Ok(if v.len() == 1 {
            v.pop().expect("one")
        } else {
            Cond::All(v)
        })
    }

    fn unary(&mut self) -> Result<Cond, String> {
        let nests = self.is_word(0, "NOT") || self.toks.get(self.pos) == Some(&Tok::Open);
        if nests {
            if self.depth == MAX_NESTING {
                return Err(format!(
                    "NOT and parentheses nest deeper than {MAX_NESTING} {}",
                    self.here()
                ));
            }
            self.depth += 1;
        }
        let c = self.nested();
        if nests {
            self.depth -= 1;
        }
        match c {
            Some(c) => c,
            None => self.constant_or_predicate(),
        }
    }

    /// A `NOT …` or `( … )`, if one starts here.
    fn nested(&mut self) -> Option<Result<Cond, String>> {
        if self.eat_word("NOT") {
            return Some(self.unary().map(|c| Cond::Not(Box::new(c))));
        }
        if self.toks.get(self.pos) != Some(&Tok::Open) {
            return None;
        }
        self.pos += 1;
        self.eat_word("IF");
        Some(self.or().and_then(|c| {
            if self.toks.get(self.pos) != Some(&Tok::Close) {
                return Err(format!("expected `)` {}", self.here()));
            }
            self.pos += 1;
            Ok(c)
        }))
    }

    fn constant_or_predicate(&mut self) -> Result<Cond, String> {
        if self.eat_word("NEVER") || self.eat_word("FALSE") {
            return Ok(Cond::Const(false));
        }
        if self.eat_word("TRUE") || self.eat_word("ALWAYS") {
            return Ok(Cond::Const(true));
        }
        self.predicate()
    }

    fn literal(&mut self) -> Result<String, String> {
        match self.toks.get(self.pos) {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(s.clone())
            }
            _ => Err(format!("expected a quoted value {}", self.here())),
        }
    }

    fn list(&mut self) -> Result<Vec<String>, String> {
        if self.toks.get(self.pos) != Some(&Tok::Open) {
            return Err(format!("expected `(` {}", self.here()));
        }
        self.pos += 1;
        let mut v = Vec::new();
        loop {
            v.push(self.literal()?);
            match self.toks.get(self.pos) {
                Some(Tok::Comma) => self.pos += 1,
                Some(Tok::Close) => {
                    self.pos += 1;
                    return Ok(v);
                }
                _ => return Err(format!("expected `,` or `)` {}", self.here())),
            }
        }
    }

    fn number(&mut self) -> Result<usize, String> {
        match self.toks.get(self.pos) {
            Some(Tok::Word(w)) => match w.parse() {
                Ok(n) => {
                    self.pos += 1;
                    Ok(n)
                }
                Err(_) => Err(format!("expected a number {}", self.here())),
            },
            _ => Err(format!("expected a number {}", self.here())),
        }
    }

    fn cmp(&mut self) -> Result<Cmp, String> {
        if let Some(Tok::Op(o)) = self.toks.get(self.pos) {
            self.pos += 1;
            return Ok(match *o {
                "=" => Cmp::Eq,
                ">" => Cmp::Gt,
                ">=" => Cmp::Ge,
                "<" => Cmp::Lt,
                "<=" => Cmp::Le,
                _ => return Err("`!=` cannot compare a length or count".into()),
            });
        }
        if self.eat_word("EQUALS") || self.eat_word("EQUAL") {
            self.eat_word("TO");
            return Ok(Cmp::Eq);
        }
        let greater = if self.eat_word("GREATER") {
            true
        } else if self.eat_word("LESS") {
            false
        } else {
            return Err(format!(
                "expected EQUALS, GREATER THAN or LESS THAN {}",
                self.here()
            ));
        };
        self.expect_word("THAN")?;
        // `LESS THAN OR EQUALS 1`: the OR belongs to the comparison, not to the condition.
        if self.is_word(0, "OR") && (self.is_word(1, "EQUALS") || self.is_word(1, "EQUAL")) {
            self.pos += 2;
            self.eat_word("TO");
            return Ok(if greater { Cmp::Ge } else { Cmp::Le });
        }
        Ok(if greater { Cmp::Gt } else { Cmp::Lt })
    }

    fn predicate(&mut self) -> Result<Cond, String> {
        let r = match self.toks.get(self.pos) {
            Some(Tok::Word(w)) => {
                let r = parse_ref(w, self.scope)?;
                self.pos += 1;
                r
            }
            _ => return Err(format!("expected a field reference {}", self.here())),
        };
        let is_seg = matches!(r, Ref::Segment(_));
        // Words that end a predicate: the reference alone means "is valued" only for a bare
        // segment id (`IF ORC VALUED` / `IF ORC`).
        if self.pos >= self.toks.len()
            || self.toks.get(self.pos) == Some(&Tok::Close)
            || self.is_word(0, "AND")
            || self.is_word(0, "OR")
        {
            if is_seg {
                return Ok(Cond::Valued(r));
            }
            return Err(format!(
                "a condition on a field needs VALUED, EQUALS, IN … after it {}",
                self.here()
            ));
        }
        if let Some(Tok::Op(o)) = self.toks.get(self.pos) {
            let o = *o;
            if o == "=" || o == "!=" {
                self.pos += 1;
                let lit = self.literal()?;
                let c = Cond::In(r, vec![lit]);
                return Ok(if o == "=" { c } else { Cond::Not(Box::new(c)) });
            }
        }
        if self.eat_word("LENGTH") {
            let cmp = self.cmp()?;
            return Ok(Cond::Length(r, cmp, self.number()?));
        }
        if self.eat_word("LST.COUNT") || self.eat_word("COUNT") {
            let cmp = self.cmp()?;
            return Ok(Cond::Count(r, cmp, self.number()?));
        }
        self.eat_word("IS");
        let negated = self.eat_word("NOT") || self.eat_word("DOES");
        if negated {
            self.eat_word("NOT");
        }
        let wrap = |c: Cond| if negated { Cond::Not(Box::new(c)) } else { c };
        if self.eat_word("VALUED") || self.eat_word("EXIST") || self.eat_word("EXISTS") {
            return Ok(wrap(Cond::Valued(r)));
        }
        if self.eat_word("EMPTY") {
            return Ok(if negated {
                Cond::Valued(r)
            } else {
                Cond::Not(Box::new(Cond::Valued(r)))
            });
        }
        if self.eat_word("IN") {
            return Ok(wrap(Cond::In(r, self.list()?)));
        }
        if self.eat_word("NUMERIC") {
            return Ok(wrap(Cond::Numeric(r)));
        }
        if self.eat_word("DATETIME") {
            return Ok(wrap(Cond::Time(r)));
        }
        if self.eat_word("EQUALS") || self.eat_word("EQUAL") {
            self.eat_word("TO");
            return Ok(wrap(Cond::In(r, vec![self.literal()?])));
        }
        if let Some(Tok::Op("=")) = self.toks.get(self.pos) {
            self.pos += 1;
        }
        if let Some(Tok::Str(_)) = self.toks.get(self.pos) {
            return Ok(wrap(Cond::In(r, vec![self.literal()?])));
        }
        Err(format!(
            "expected VALUED, EQUALS \"…\", IN (…), NUMERIC, DATETIME, LENGTH or LST.COUNT {}",
            self.here()
        ))
    }
}

/// Compiles a condition (`IF …`; the leading IF is optional).
pub fn parse_cond(s: &str, scope: Scope) -> Result<Cond, String> {
    let toks = tokenize(s)?;
    let mut p = Parser {
        toks: &toks,
        pos: 0,
        scope,
        depth: 0,
    };
    p.eat_word("IF");
    let c = p.or()?;
    if p.pos != toks.len() {
        return Err(format!("unexpected {}", p.here()));
    }
    Ok(c)
}

/// Compiles an assignment: `"text"`, or literals and references joined with `+`.
pub fn parse_expr(s: &str, scope: Scope) -> Result<Expr, String> {
    let mut terms = Vec::new();
    let mut rest = s.trim();
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('"') {
            let end = r
                .find('"')
                .ok_or_else(|| "a quoted text is not closed".to_string())?;
            terms.push(Term::Lit(r[..end].to_string()));
            rest = &r[end + 1..];
        } else {
            let end = rest.find('+').unwrap_or(rest.len());
            let w = rest[..end].trim();
            if w.is_empty() {
                return Err("an empty term in an assignment".into());
            }
            terms.push(Term::Ref(parse_ref(w, scope)?));
            rest = &rest[end..];
        }
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        rest = rest
            .strip_prefix('+')
            .ok_or_else(|| format!("expected `+` at `{rest}`"))?;
    }
    if terms.is_empty() {
        return Err("an empty assignment".into());
    }
    Ok(Expr(terms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<String, String>);
    impl Env for Map {
        fn text(&self, r: &Ref) -> Cow<'_, str> {
            let k = format!("{r:?}");
            Cow::Borrowed(self.0.get(&k).map(String::as_str).unwrap_or(""))
        }
        fn count(&self, r: &Ref) -> usize {
            let t = self.text(r);
            if t.is_empty() {
                0
            } else {
                t.split('~').count()
            }
        }
    }
    fn env(pairs: &[(&str, &str)], scope: Scope) -> Map {
        Map(pairs
            .iter()
            .map(|(r, v)| (format!("{:?}", parse_ref(r, scope).unwrap()), v.to_string()))
            .collect())
    }

    #[test]
    fn a_guard_split_off_decides_as_the_whole_condition_did() {
        let s = Scope::Segment;
        let conds = [
            r#"IF OBX-2 EQUALS "NM""#,
            r#"IF OBX-2 IN ("NM", "NA")"#,
            r#"IF OBX-2 EQUALS "SN" AND OBX-5.3 EQUALS "-""#,
            r#"IF OBX-5.3 VALUED AND OBX-2 NOT IN ("ST", "TX")"#,
            r#"IF OBX-2 NOT EQUALS "CWE""#,
            r#"IF OBX-2 EQUALS "ST" OR OBX-11 EQUALS "F""#,
            r#"IF OBX-5 EQUALS "x""#,
            r#"IF OBX-11 IN ("F", "C")"#,
            r#"IF OBX-3 EQUALS "a""#,
            r#"IF OBX-4 EQUALS "a""#,
            r#"IF OBX-6 EQUALS "a""#,
        ];
        let whole: Vec<Cond> = conds.iter().map(|c| parse_cond(c, s).unwrap()).collect();
        let mut rows: Vec<(Option<Cond>, Option<RowGuard>)> =
            whole.iter().map(|c| (Some(c.clone()), None)).collect();
        // OBX-5 stands for the field a row iterates: never asked once for all rows.
        let own = parse_ref("OBX-5", s).unwrap();
        let guards = split_guards(&mut rows, |r| &mut r.0, |r| &mut r.1, |_, r| *r != own);
        let guarded: Vec<bool> = rows.iter().map(|r| r.1.is_some()).collect();
        assert_eq!(
            guarded,
            [true, true, true, true, true, false, false, true, true, true, false],
            "OR and the iterated field keep their condition whole; a fifth value is not guarded"
        );
        assert_eq!(guards.len(), MAX_GUARDS);
        assert_eq!(guards[0].texts, ["NM", "NA", "SN", "ST", "TX", "CWE"]);
        for obx2 in [
            "NM", "NA", "SN", " SN ", "ST", "TX", "CWE", "CE", "", "\"\"",
        ] {
            for obx11 in ["F", "X"] {
                let e = env(
                    &[
                        ("OBX-2", obx2),
                        ("OBX-5.3", "-"),
                        ("OBX-11", obx11),
                        ("OBX-3", "a"),
                    ],
                    s,
                );
                let mut values = [0; MAX_GUARDS];
                for (v, g) in values.iter_mut().zip(&guards) {
                    *v = g.value(&e);
                }
                for (i, (row, c)) in rows.iter().zip(&whole).enumerate() {
                    let split =
                        row.1.is_none_or(|g| g.admits(&values)) && row.0.as_ref().unwrap().eval(&e);
                    assert_eq!(split, c.eval(&e), "{} with OBX-2 {obx2:?}", conds[i]);
                }
            }
        }
    }

    #[test]
    fn parses_the_guides_forms() {
        let s = Scope::Segment;
        let e = env(
            &[
                ("PID-7", "198808181126"),
                ("PID-11", "a~b"),
                ("PID-13.2", ""),
                ("PID-9", "<0.5"),
                ("PID-29", "200202150730-0500"),
            ],
            s,
        );
        for (c, want) in [
            ("IF PID-7 IS NUMERIC", true),
            ("IF PID-9 IS NUMERIC", false),
            ("IF PID-9 IS NOT NUMERIC", true),
            ("IF PID-13.2 NUMERIC", false),
            ("IF PID-7 IS DATETIME", true),
            ("IF PID-7 IS NOT DATETIME", false),
            ("IF PID-9 IS DATETIME", false),
            // A time with its zone is a time, and no number.
            ("IF PID-29 IS DATETIME", true),
            ("IF PID-29 IS NUMERIC", false),
            ("IF PID-7 LENGTH GREATER THAN 8", true),
            ("IF PID-7 VALUED", true),
            ("IF PID-8 NOT VALUED", true),
            ("IF PID-13.2 IS NOT VALUED", true),
            ("IF PID-11 LST.COUNT GREATER THAN 1", true),
            ("IF PID-11 LST.COUNT EQUALS 1", false),
            (
                "IF PID-11 LST.count LESS THAN OR EQUALS 2 OR PID-7 IS \"x\"",
                true,
            ),
            ("IF PID-8 IS VALUED OR PID-7 IS VALUED", true),
            ("IF PID-8 IS VALUED AND IF PID-7 IS VALUED", false),
            (
                "IF (PID-8 IS VALUED OR PID-7 IS VALUED) AND PID-10 NOT VALUED",
                true,
            ),
            ("IF PID-7 IN (\"1\", \"198808181126\")", true),
            ("IF PID-7 NOT IN (\"1\", \"198808181126\")", false),
            ("IF PID-7 EQUALS \"198808181126\"", true),
            ("IF PID-7 NOT EQUALS \"198808181126\"", false),
            ("IF PID-7 = \"198808181126\"", true),
            ("IF PID-7 != \"1\"", true),
            ("IF PID-7 IS NOT \"1\"", true),
            ("IF PID-11 COUNT>1", true),
            ("IF PID-8 IS EMPTY", true),
            ("NEVER", false),
            ("IF PID IS VALUED", false),
        ] {
            let cond = parse_cond(c, s).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert_eq!(cond.eval(&e), want, "{c}");
        }
        let d = Scope::Datatype;
        let e = env(&[("XTN.3", "Internet"), ("XTN.4", "a@b")], d);
        assert!(parse_cond("IF XTN.3 IN (\"Internet\", \"X.400\")", d)
            .unwrap()
            .eval(&e));
        assert!(parse_cond("IF XTN.3 NOT VALUED AND XTN.4 VALUED", d)
            .unwrap()
            .eval(&Map(HashMap::new()))
            .eq(&false));
    }

    #[test]
    fn rejects_what_it_cannot_read_with_a_reason() {
        for bad in [
            "IF PID-7",
            "IF PID-7 LENGTH GREATER 8",
            "IF XTN.3 VALUED",
            "IF PID-7 IN (\"a\"",
            "IF PID-0 VALUED",
            "IF PID-7 VALUED EXTRA",
            "IF PID-7 EQUALS \"open",
        ] {
            assert!(parse_cond(bad, Scope::Segment).is_err(), "{bad}");
        }
        assert!(parse_cond("IF PID-7 VALUED", Scope::Datatype).is_err());
    }

    #[test]
    fn nesting_is_bounded_not_a_stack_overflow() {
        let s = Scope::Segment;
        let nots = |n: usize| format!("IF {}PID-8 VALUED", "NOT ".repeat(n));
        assert!(parse_cond(&nots(MAX_NESTING), s).is_ok());
        let e = parse_cond(&nots(MAX_NESTING + 1), s).unwrap_err();
        assert!(e.contains("nest deeper than 32"), "{e}");
        // A file's worth, as the attack sent it: refused, not an abort.
        for deep in [
            format!("IF {}PID-8 VALUED", "NOT ".repeat(50_000)),
            format!(
                "IF {}PID-8 VALUED{}",
                "(".repeat(200_000),
                ")".repeat(200_000)
            ),
            format!("IF {}PID-8 VALUED{}", "(NOT ".repeat(17), ")".repeat(17)),
        ] {
            let e = parse_cond(&deep, s).unwrap_err();
            assert!(e.contains("nest deeper than 32"), "{e}");
        }
        let mixed = format!("IF {}PID-8 VALUED{}", "(NOT ".repeat(16), ")".repeat(16));
        assert!(parse_cond(&mixed, s).is_ok());
    }

    #[test]
    fn assignments_concatenate_and_need_their_parts() {
        let d = Scope::Datatype;
        let x = parse_expr("\"+\"+XTN.5+\" \"+XTN.6", d).unwrap();
        assert_eq!(
            x.eval(&env(&[("XTN.5", "1"), ("XTN.6", "555")], d)),
            Some("+1 555".into())
        );
        assert_eq!(x.eval(&env(&[("XTN.5", "1")], d)), None);
        assert_eq!(
            parse_expr("\"http://x\"", d).unwrap().literal(),
            Some("http://x")
        );
        assert!(parse_expr("\"a\" \"b\"", d).is_err());
    }
}
