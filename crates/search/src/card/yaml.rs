//! YAML (one document) to JSON, from `saphyr-parser` events, with bounded depth and size.
//!
//! We build the JSON ourselves instead of using a YAML DOM crate because a DOM loader expands
//! aliases by cloning without limit (a few hundred bytes of nested aliases become gigabytes)
//! and may recurse once per nesting level. Here the tree is built with an explicit stack
//! ([`MAX_DEPTH`] levels at most, so the recursive `Clone`/`Drop`/serialisation of the result
//! stay shallow and serde_json's own 128-level limit is never hit when a stored document is
//! read back), and every node, string byte and alias expansion is charged to a budget of
//! [`MAX_COST`].
//!
//! Scalars are resolved as in YAML 1.2's core schema (what the Hub's metadata tooling sees):
//! unquoted `null`/`~`/empty, `true`/`false`, integers (also `0x`, `0o`) and floats become
//! JSON null, booleans and numbers; quoted scalars and `!!str` stay strings. `.inf` and `.nan`
//! have no JSON form and stay strings. Mapping keys are the key's text; a key that is itself a
//! list or mapping is written as compact JSON. A repeated key keeps its last value.

use saphyr_parser::{Event, Parser, ScalarStyle, Tag};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// Deepest nesting of lists and mappings accepted.
pub(super) const MAX_DEPTH: usize = 64;

/// Budget for the JSON built: one unit per node plus one per string byte, aliases included.
pub(super) const MAX_COST: usize = 8 << 20;

/// Why YAML was rejected; `line` is 1-based within the YAML text, `column` 1-based.
#[derive(Debug)]
pub(super) struct YamlError {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
        cost_at_start: usize,
    },
    Map {
        map: Map<String, Value>,
        key: Option<String>,
        anchor: usize,
        cost_at_start: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    /// Anchored values and what each costs to copy.
    anchors: HashMap<usize, (Value, usize)>,
    cost: usize,
    root: Option<Value>,
}

/// Parses the first YAML document in `text`; `None` when there is none (empty text, comments).
pub(super) fn to_json(text: &str) -> Result<Option<Value>, YamlError> {
    let mut builder = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        cost: 0,
        root: None,
    };
    let mut line = 1;
    let mut column = 1;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError {
            message: e.info().to_owned(),
            line: e.marker().line(),
            column: e.marker().col() + 1,
        })?;
        line = span.start.line();
        column = span.start.col() + 1;
        let at = |message: String| YamlError {
            message,
            line,
            column,
        };
        match event {
            Event::DocumentEnd | Event::StreamEnd => {
                if builder.root.is_some() || matches!(event, Event::StreamEnd) {
                    break;
                }
            }
            other => builder.event(other).map_err(at)?,
        }
    }
    if !builder.stack.is_empty() {
        return Err(YamlError {
            message: "unexpected end of YAML".to_owned(),
            line,
            column,
        });
    }
    Ok(builder.root)
}

impl Builder {
    fn event(&mut self, event: Event<'_>) -> Result<(), String> {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.charge(1 + text.len())?;
                // A scalar in key position keeps its text as the key.
                if let Some(Frame::Map {
                    key: key @ None, ..
                }) = self.stack.last_mut()
                {
                    *key = Some(text.into_owned());
                    if anchor > 0 {
                        let value = Value::String(key.clone().unwrap_or_default());
                        let cost = 1 + text_len(&value);
                        self.anchors.insert(anchor, (value, cost));
                    }
                    return Ok(());
                }
                let value = resolve_scalar(&text, style, tag.as_deref());
                if anchor > 0 {
                    self.anchors.insert(anchor, (value.clone(), 1 + text.len()));
                }
                self.push(value)
            }
            Event::Alias(id) => {
                let cost = self
                    .anchors
                    .get(&id)
                    .map(|(_, cost)| *cost)
                    .ok_or_else(|| "alias refers to an unknown anchor".to_owned())?;
                // Charged before copying, so the copy stays within the budget.
                self.charge(cost)?;
                let value = self.anchors.get(&id).map(|(v, _)| v.clone());
                self.push(value.unwrap_or_default())
            }
            Event::SequenceStart(anchor, _) => {
                self.open()?;
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    anchor,
                    cost_at_start: self.cost,
                });
                Ok(())
            }
            Event::MappingStart(anchor, _) => {
                self.open()?;
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    key: None,
                    anchor,
                    cost_at_start: self.cost,
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor, cost_at_start) = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        anchor,
                        cost_at_start,
                    }) => (Value::Array(items), anchor, cost_at_start),
                    Some(Frame::Map {
                        map,
                        anchor,
                        cost_at_start,
                        ..
                    }) => (Value::Object(map), anchor, cost_at_start),
                    None => return Err("unbalanced end of collection".to_owned()),
                };
                if anchor > 0 {
                    let cost = 1 + self.cost - cost_at_start;
                    self.anchors.insert(anchor, (value.clone(), cost));
                }
                self.push(value)
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => Ok(()),
        }
    }

    fn open(&mut self) -> Result<(), String> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(format!(
                "YAML is nested too deep (more than {MAX_DEPTH} levels)"
            ));
        }
        self.charge(1)
    }

    fn charge(&mut self, cost: usize) -> Result<(), String> {
        charge(&mut self.cost, cost)
    }

    /// Places a finished value in its parent, or makes it the root.
    fn push(&mut self, value: Value) -> Result<(), String> {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(value);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => match key.take() {
                Some(k) => {
                    map.insert(k, value);
                }
                None => {
                    // A complex key (a list, a mapping or an alias): its compact JSON.
                    let text = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    charge(&mut self.cost, text.len())?;
                    *key = Some(text);
                }
            },
        }
        Ok(())
    }
}

fn charge(total: &mut usize, cost: usize) -> Result<(), String> {
    *total = total.saturating_add(cost);
    if *total > MAX_COST {
        return Err("YAML expands to a value too large (check anchors and aliases)".to_owned());
    }
    Ok(())
}

fn text_len(value: &Value) -> usize {
    value.as_str().map_or(0, str::len)
}

fn resolve_scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    if tag.is_some_and(|tag| tag.is_yaml_core_schema() && tag.suffix == "str") {
        return Value::String(text.to_owned());
    }
    if style != ScalarStyle::Plain {
        return Value::String(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(number) = resolve_number(text) {
        return Value::Number(number);
    }
    Value::String(text.to_owned())
}

fn resolve_number(text: &str) -> Option<Number> {
    if let Some(hex) = text.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok().map(Number::from);
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return u64::from_str_radix(oct, 8).ok().map(Number::from);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Some(Number::from(i));
        }
        if let (false, Ok(u)) = (text.starts_with('-'), digits.parse::<u64>()) {
            return Some(Number::from(u));
        }
    }
    // YAML 1.2 core floats: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    let looks_like_float = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if looks_like_float {
        let f = text.parse::<f64>().ok()?;
        return Number::from_f64(f);
    }
    None
}
