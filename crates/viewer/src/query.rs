//! The viewer's queries over a table: `search` (rows whose text holds every word of the
//! query, case-insensitive) and `filter` (a small SQL-like `where` clause, with `orderby`).
//!
//! The `where` grammar (the Hub viewer's DuckDB subset that people type):
//!
//! ```text
//! expr    := and ("OR" and)*
//! and     := not ("AND" not)*
//! not     := "NOT" not | "(" expr ")" | column op literal | column "IS" ["NOT"] "NULL"
//! op      := = | == | != | <> | < | <= | > | >= | LIKE | ILIKE
//! column  := name | "quoted name"
//! literal := number | 'string' ('' escapes a quote) | true | false | null
//! ```
//!
//! `LIKE` takes `%` and `_`. Comparisons with null are false, as in SQL.

use crate::ViewerError;
use crate::table::{Row, Table};
use serde_json::Value;
use std::cmp::Ordering;
use std::ops::ControlFlow;

/// The longest `where` clause or search query.
pub const MAX_QUERY: usize = 4096;
/// The most matching rows `orderby` sorts in memory.
pub const MAX_SORTED: u64 = 100_000;

/// A page of matching rows: `(row index, row)`, and how many rows match in all.
#[derive(Debug, Clone, PartialEq)]
pub struct Matches {
    pub rows: Vec<(u64, Row)>,
    pub total: u64,
}

/// Rows whose string cells together hold every word of `query` (case-insensitive).
pub fn search(
    table: &Table,
    query: &str,
    offset: u64,
    length: usize,
) -> Result<Matches, ViewerError> {
    if query.len() > MAX_QUERY {
        return Err(ViewerError::Query("query too long".into()));
    }
    let words: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
    let matches = |row: &Row| {
        let text: String = row
            .values()
            .filter_map(|v| v.as_str())
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
            .join("\u{0}");
        words.iter().all(|w| text.contains(w.as_str()))
    };
    collect(table, &matches, None, offset, length)
}

/// Rows matching `where_clause` (all when empty), sorted by `orderby` (`col [ASC|DESC]`, row
/// order when empty).
pub fn filter(
    table: &Table,
    where_clause: &str,
    orderby: &str,
    offset: u64,
    length: usize,
) -> Result<Matches, ViewerError> {
    if where_clause.len() > MAX_QUERY || orderby.len() > MAX_QUERY {
        return Err(ViewerError::Query("clause too long".into()));
    }
    let expr = if where_clause.trim().is_empty() {
        None
    } else {
        Some(parse(where_clause)?)
    };
    let columns: Vec<&str> = table.features().iter().map(|f| f.name.as_str()).collect();
    if let Some(e) = &expr {
        e.check_columns(&columns)?;
    }
    let order = parse_order(orderby, &columns)?;
    let matches = |row: &Row| expr.as_ref().is_none_or(|e| e.eval(row));
    collect(table, &matches, order, offset, length)
}

fn collect(
    table: &Table,
    matches: &dyn Fn(&Row) -> bool,
    order: Option<(String, bool)>,
    offset: u64,
    length: usize,
) -> Result<Matches, ViewerError> {
    let mut total = 0u64;
    let mut rows = Vec::new();
    let mut too_many = false;
    table.scan(&mut |i, row| {
        if matches(&row) {
            if order.is_some() {
                if total >= MAX_SORTED {
                    too_many = true;
                    return ControlFlow::Break(());
                }
                rows.push((i, row));
            } else if total >= offset && rows.len() < length {
                rows.push((i, row));
            }
            total += 1;
        }
        ControlFlow::Continue(())
    })?;
    if too_many {
        return Err(ViewerError::TooManyRows(MAX_SORTED));
    }
    if let Some((column, descending)) = order {
        rows.sort_by(|(ia, a), (ib, b)| {
            let o = compare_for_sort(a.get(&column), b.get(&column));
            let o = if descending { o.reverse() } else { o };
            o.then(ia.cmp(ib))
        });
        rows = rows
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(length)
            .collect();
    }
    Ok(Matches { rows, total })
}

/// Nulls last; numbers, strings and booleans by value; other kinds by their JSON text.
fn compare_for_sort(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    let a = a.filter(|v| !v.is_null());
    let b = b.filter(|v| !v.is_null());
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => compare(a, b).unwrap_or_else(|| a.to_string().cmp(&b.to_string())),
    }
}

fn parse_order(orderby: &str, columns: &[&str]) -> Result<Option<(String, bool)>, ViewerError> {
    let tokens = lex(orderby)?;
    let (column, rest) = match tokens.as_slice() {
        [] => return Ok(None),
        [Token::Ident(c), rest @ ..] => (c.clone(), rest),
        _ => return Err(ViewerError::Query("orderby needs a column".into())),
    };
    if !columns.contains(&column.as_str()) {
        return Err(ViewerError::Query(format!("no column {column:?}")));
    }
    let descending = match rest {
        [] => false,
        [Token::Ident(d)] if d.eq_ignore_ascii_case("asc") => false,
        [Token::Ident(d)] if d.eq_ignore_ascii_case("desc") => true,
        _ => return Err(ViewerError::Query("orderby is `column [ASC|DESC]`".into())),
    };
    Ok(Some((column, descending)))
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Quoted(String),
    Str(String),
    Num(f64),
    Op(&'static str),
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<Token>, ViewerError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push(Token::Open);
            i += 1;
        } else if c == ')' {
            out.push(Token::Close);
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut text = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(ViewerError::Query("unterminated quote".into())),
                    Some(&q) if q == c => {
                        if chars.get(i + 1) == Some(&c) {
                            text.push(c);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(&ch) => {
                        text.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(if c == '\'' {
                Token::Str(text)
            } else {
                Token::Quoted(text)
            });
        } else if let Some(op) = ["<=", ">=", "!=", "<>", "==", "=", "<", ">"]
            .into_iter()
            .find(|op| chars[i..].iter().take(op.len()).copied().eq(op.chars()))
        {
            out.push(Token::Op(op));
            i += op.len();
        } else if c.is_ascii_digit() || c == '-' || c == '.' {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || chars[i] == '-'
                    || chars[i] == '+')
            {
                if (chars[i] == '-' || chars[i] == '+') && !matches!(chars[i - 1], 'e' | 'E') {
                    break;
                }
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Token::Num(text.parse().map_err(|_| {
                ViewerError::Query(format!("bad number {text:?}"))
            })?));
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else {
            return Err(ViewerError::Query(format!("unexpected {c:?}")));
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(String, &'static str, Value),
    Like(String, String, bool),
    IsNull(String, bool),
}

/// Parses a `where` clause (see the module docs).
fn parse(s: &str) -> Result<Expr, ViewerError> {
    let tokens = lex(s)?;
    let mut p = Parser {
        tokens,
        at: 0,
        depth: 0,
    };
    let e = p.or()?;
    if p.at != p.tokens.len() {
        return Err(ViewerError::Query(format!(
            "unexpected {:?}",
            p.tokens[p.at]
        )));
    }
    Ok(e)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn keyword(&mut self, k: &str) -> bool {
        if let Some(Token::Ident(w)) = self.tokens.get(self.at)
            && w.eq_ignore_ascii_case(k)
        {
            self.at += 1;
            return true;
        }
        false
    }

    fn or(&mut self) -> Result<Expr, ViewerError> {
        let mut e = self.and()?;
        while self.keyword("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, ViewerError> {
        let mut e = self.not()?;
        while self.keyword("and") {
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr, ViewerError> {
        self.depth += 1;
        if self.depth > 64 {
            return Err(ViewerError::Query("clause nested too deeply".into()));
        }
        let e = self.term();
        self.depth -= 1;
        e
    }

    fn term(&mut self) -> Result<Expr, ViewerError> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        if self.tokens.get(self.at) == Some(&Token::Open) {
            self.at += 1;
            let e = self.or()?;
            if self.tokens.get(self.at) != Some(&Token::Close) {
                return Err(ViewerError::Query("missing )".into()));
            }
            self.at += 1;
            return Ok(e);
        }
        let column = match self.tokens.get(self.at) {
            Some(Token::Ident(c) | Token::Quoted(c)) => c.clone(),
            other => {
                return Err(ViewerError::Query(format!(
                    "expected a column, found {other:?}"
                )));
            }
        };
        self.at += 1;
        if self.keyword("is") {
            let negated = self.keyword("not");
            if !self.keyword("null") {
                return Err(ViewerError::Query("IS needs NULL".into()));
            }
            return Ok(Expr::IsNull(column, negated));
        }
        for (word, insensitive) in [("like", false), ("ilike", true)] {
            if self.keyword(word) {
                return match self.tokens.get(self.at) {
                    Some(Token::Str(p)) => {
                        self.at += 1;
                        Ok(Expr::Like(column, p.clone(), insensitive))
                    }
                    _ => Err(ViewerError::Query("LIKE needs a 'pattern'".into())),
                };
            }
        }
        let op = match self.tokens.get(self.at) {
            Some(Token::Op(op)) => *op,
            other => {
                return Err(ViewerError::Query(format!(
                    "expected an operator, found {other:?}"
                )));
            }
        };
        self.at += 1;
        let value = match self.tokens.get(self.at) {
            Some(Token::Str(s)) => Value::String(s.clone()),
            Some(Token::Num(n)) => serde_json::Number::from_f64(*n)
                .map(Value::Number)
                .ok_or_else(|| ViewerError::Query("bad number".into()))?,
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("true") => Value::Bool(true),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("false") => Value::Bool(false),
            Some(Token::Ident(w)) if w.eq_ignore_ascii_case("null") => Value::Null,
            other => {
                return Err(ViewerError::Query(format!(
                    "expected a value, found {other:?}"
                )));
            }
        };
        self.at += 1;
        Ok(Expr::Cmp(column, op, value))
    }
}

impl Expr {
    fn check_columns(&self, columns: &[&str]) -> Result<(), ViewerError> {
        match self {
            Expr::Or(a, b) | Expr::And(a, b) => {
                a.check_columns(columns)?;
                b.check_columns(columns)
            }
            Expr::Not(e) => e.check_columns(columns),
            Expr::Cmp(c, ..) | Expr::Like(c, ..) | Expr::IsNull(c, _) => {
                if columns.contains(&c.as_str()) {
                    Ok(())
                } else {
                    Err(ViewerError::Query(format!("no column {c:?}")))
                }
            }
        }
    }

    fn eval(&self, row: &Row) -> bool {
        match self {
            Expr::Or(a, b) => a.eval(row) || b.eval(row),
            Expr::And(a, b) => a.eval(row) && b.eval(row),
            Expr::Not(e) => !e.eval(row),
            Expr::IsNull(c, negated) => row.get(c).is_none_or(Value::is_null) != *negated,
            Expr::Like(c, pattern, insensitive) => match row.get(c) {
                Some(Value::String(s)) => {
                    if *insensitive {
                        like(&s.to_lowercase(), &pattern.to_lowercase())
                    } else {
                        like(s, pattern)
                    }
                }
                _ => false,
            },
            Expr::Cmp(c, op, value) => {
                let Some(cell) = row.get(c).filter(|v| !v.is_null()) else {
                    return false;
                };
                let Some(o) = compare(cell, value) else {
                    return false;
                };
                match *op {
                    "=" | "==" => o == Ordering::Equal,
                    "!=" | "<>" => o != Ordering::Equal,
                    "<" => o == Ordering::Less,
                    "<=" => o != Ordering::Greater,
                    ">" => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                }
            }
        }
    }
}

/// Compares a cell with a value of the same kind (numbers with numbers, …); `None` otherwise.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// SQL `LIKE`: `%` any run, `_` one character.
fn like(s: &str, pattern: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    // Iterative matching with one backtrack point (linear in practice, no recursion).
    let (mut i, mut j) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while i < s.len() {
        if j < p.len() && (p[j] == '_' || p[j] == s[i]) {
            i += 1;
            j += 1;
        } else if j < p.len() && p[j] == '%' {
            star = Some(j);
            mark = i;
            j += 1;
        } else if let Some(st) = star {
            j = st + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    while j < p.len() && p[j] == '%' {
        j += 1;
    }
    j == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemSource;
    use crate::table::Format;
    use std::sync::Arc;

    fn table() -> Table {
        let csv = "name,age,city\nada,36,London\nalan,41,Wilmslow\ngrace,85,\nlinus,,Helsinki\n";
        Table::open(
            Format::Csv,
            Arc::new(MemSource::new(csv.as_bytes().to_vec())),
        )
        .unwrap()
    }

    fn names(m: &Matches) -> Vec<&str> {
        m.rows
            .iter()
            .map(|(_, r)| r["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn where_clauses() {
        let t = table();
        let m = filter(&t, "age > 40 AND city IS NOT NULL", "", 0, 10).unwrap();
        assert_eq!(names(&m), ["alan"]);
        let m = filter(
            &t,
            "age >= 85 OR (name = 'ada' AND NOT city = 'Paris')",
            "",
            0,
            10,
        )
        .unwrap();
        assert_eq!(names(&m), ["ada", "grace"]);
        let m = filter(&t, "\"age\" IS NULL", "", 0, 10).unwrap();
        assert_eq!(names(&m), ["linus"]);
        let m = filter(&t, "name LIKE 'a%'", "age DESC", 0, 10).unwrap();
        assert_eq!(names(&m), ["alan", "ada"]);
        assert_eq!(m.total, 2);
        let m = filter(&t, "", "age", 1, 2).unwrap();
        assert_eq!(names(&m), ["alan", "grace"]);
        assert_eq!(m.total, 4);
    }

    #[test]
    fn bad_clauses_are_errors() {
        let t = table();
        for bad in [
            "age >",
            "nope = 1",
            "age = 'x",
            "(age = 1",
            "age = 1 AND",
            "age ~ 3",
            &"(".repeat(200),
        ] {
            assert!(filter(&t, bad, "", 0, 10).is_err(), "{bad}");
        }
        assert!(filter(&t, "", "nope", 0, 10).is_err());
        assert!(filter(&t, "", "age sideways", 0, 10).is_err());
    }

    #[test]
    fn search_matches_every_word_case_insensitively() {
        let t = table();
        assert_eq!(names(&search(&t, "LONDON", 0, 10).unwrap()), ["ada"]);
        assert_eq!(
            names(&search(&t, "l", 0, 10).unwrap()),
            ["ada", "alan", "linus"]
        );
        assert_eq!(names(&search(&t, "a l", 0, 10).unwrap()), ["ada", "alan"]);
        let m = search(&t, "a l", 1, 1).unwrap();
        assert_eq!(names(&m), ["alan"]);
        assert_eq!(m.total, 2);
        assert!(search(&t, "zzz", 0, 10).unwrap().rows.is_empty());
    }

    #[test]
    fn like_patterns() {
        assert!(like("hello", "h%o"));
        assert!(like("hello", "_ello"));
        assert!(like("hello", "%"));
        assert!(!like("hello", "h_o"));
        assert!(like("abcabc", "%abc"));
    }
}
