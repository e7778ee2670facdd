//! Positions: byte span ⇄ field path (`route[1].ttl`) ⇄ `LINE:COL`, and the one-line
//! [`ConfigError`] built from them.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::ConfigError;

/// 1-based `(line, column)` of a byte offset. Columns count characters, not bytes, so they match
/// what editors show; an offset past the end is clamped.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    // Count UTF-8 lead bytes only, so a multi-byte character is one column.
    let col = 1 + before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count();
    (line, col)
}

/// The document's shape with spans, from a structure-only parse: just enough to name the field
/// at a byte offset (for errors raised inside `toml`) and to find a field's position (for
/// errors raised during validation).
pub(super) struct SpanIndex {
    /// Every key and array element, in document order.
    pub(super) entries: Vec<Entry>,
}

pub(super) struct Entry {
    /// e.g. `route[1].ttl`
    path: String,
    /// `None` for array elements.
    key: Option<Range<usize>>,
    /// `None` for implicit tables.
    value: Option<Range<usize>>,
}

/// A TOML value reduced to its structure, with its span when `toml` knows it (implicit tables,
/// e.g. `server` in `server.listen = ...`, have none).
struct Node {
    span: Option<Range<usize>>,
    kind: Kind,
}

enum Kind {
    /// A scalar; `Some(text)` for strings (keys are read as nodes too).
    Leaf(Option<String>),
    Table(Vec<(Node, Node)>),
    Array(Vec<Node>),
}

/// `toml::Spanned`'s private protocol: asking for a struct with these names makes `toml` hand
/// over `{start, end, value}`. `toml::Spanned` itself fails on values without a span, so the
/// index speaks the protocol itself and falls back to "no span". If these names ever drift,
/// the `span_index_*` unit tests fail (no value would get a span).
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const SPANNED_FIELDS: &[&str] = &[
    "$__serde_spanned_private_start",
    "$__serde_spanned_private_end",
    "$__serde_spanned_private_value",
];

/// Deserializes a [`Node`]; `true` = ask for its span.
#[derive(Clone, Copy)]
struct NodeSeed(bool);

impl<'de> de::DeserializeSeed<'de> for NodeSeed {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        match self.0 {
            true => d.deserialize_struct(SPANNED, SPANNED_FIELDS, self),
            false => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for NodeSeed {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(leaf(None))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(leaf(None))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(leaf(None))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(leaf(None))
    }
    fn visit_str<E>(self, s: &str) -> Result<Node, E> {
        Ok(leaf(Some(s.to_owned())))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed(true))? {
            items.push(item);
        }
        Ok(Node {
            span: None,
            kind: Kind::Array(items),
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut fields = Vec::new();
        while let Some(key) = map.next_key_seed(NodeSeed(true))? {
            let protocol = key.span.is_none()
                && matches!(&key.kind, Kind::Leaf(Some(k)) if k == SPANNED_FIELDS[0]);
            if protocol {
                let start: usize = map.next_value()?;
                let _end_key = map.next_key_seed(NodeSeed(false))?;
                let end: usize = map.next_value()?;
                let _value_key = map.next_key_seed(NodeSeed(false))?;
                let mut value = map.next_value_seed(NodeSeed(false))?;
                value.span = Some(start..end);
                return Ok(value);
            }
            fields.push((key, map.next_value_seed(NodeSeed(true))?));
        }
        Ok(Node {
            span: None,
            kind: Kind::Table(fields),
        })
    }
}

fn leaf(text: Option<String>) -> Node {
    Node {
        span: None,
        kind: Kind::Leaf(text),
    }
}

impl SpanIndex {
    /// `None` when the text does not parse (the caller reports that error itself).
    pub(super) fn build(text: &str) -> Option<SpanIndex> {
        let root =
            de::DeserializeSeed::deserialize(NodeSeed(false), toml::de::Deserializer::new(text))
                .ok()?;
        let mut index = SpanIndex {
            entries: Vec::new(),
        };
        index.walk(String::new(), root);
        Some(index)
    }

    fn walk(&mut self, path: String, node: Node) {
        match node.kind {
            Kind::Leaf(_) => {}
            Kind::Table(fields) => {
                for (key, value) in fields {
                    let Kind::Leaf(Some(name)) = key.kind else {
                        continue;
                    };
                    let child = match path.is_empty() {
                        true => name,
                        false => format!("{path}.{name}"),
                    };
                    let (key, span) = (key.span, value.span.clone());
                    self.entries.push(Entry {
                        path: child.clone(),
                        key,
                        value: span,
                    });
                    self.walk(child, value);
                }
            }
            Kind::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    let child = format!("{path}[{i}]");
                    let value = item.span.clone();
                    self.entries.push(Entry {
                        path: child.clone(),
                        key: None,
                        value,
                    });
                    self.walk(child, item);
                }
            }
        }
    }

    /// The innermost field whose key or value contains `span`.
    fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        let contains =
            |r: &Range<usize>| r.start <= span.start && span.end <= r.end.max(r.start + 1);
        self.entries
            .iter()
            .filter_map(|e| {
                let hit = [&e.key, &e.value]
                    .into_iter()
                    .flatten()
                    .find(|r| contains(r))?;
                Some((hit.len(), e.path.as_str()))
            })
            .min_by_key(|&(len, path)| (len, usize::MAX - path.len()))
            .map(|(_, path)| path)
    }

    /// Where `path` is written: its value, or its key for implicit tables.
    pub(super) fn offset_exact(&self, path: &str) -> Option<usize> {
        let e = self.entries.iter().find(|e| e.path == path)?;
        e.value.as_ref().or(e.key.as_ref()).map(|r| r.start)
    }

    /// Like [`SpanIndex::offset_exact`], falling back to the nearest enclosing field present.
    pub(super) fn offset_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(offset) = self.offset_exact(p) {
                return Some(offset);
            }
            p = &p[..p.rfind(['.', '['])?];
        }
    }
}

/// The text being loaded, for turning problems into positioned errors.
pub(super) struct Doc<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    /// Empty when the text is not valid TOML.
    pub(super) index: SpanIndex,
    pub(super) valid_toml: bool,
}

impl Doc<'_> {
    fn at(&self, offset: usize, path: Option<&str>, msg: &str) -> ConfigError {
        let (line, col) = line_col(self.text, offset);
        match path {
            Some(p) if !p.is_empty() => {
                ConfigError(format!("{}:{line}:{col}: {p}: {msg}", self.file))
            }
            _ => ConfigError(format!("{}:{line}:{col}: {msg}", self.file)),
        }
    }

    /// An error about `path`, placed at its value (or the nearest enclosing table present).
    pub(super) fn err(&self, path: &str, msg: impl fmt::Display) -> ConfigError {
        let offset = self.index.offset_of(path).unwrap_or(0);
        self.at(offset, Some(path), &msg.to_string())
    }

    /// A `toml` error (syntax, unknown field, wrong type, or one of ours from `units::Human`).
    pub(super) fn toml_err(&self, e: &toml::de::Error) -> ConfigError {
        // toml's messages may span lines ("expected ..."); keep one line.
        let msg = e.message().lines().map(str::trim).filter(|l| !l.is_empty());
        let mut msg = msg.collect::<Vec<_>>().join("; ");
        let path = e.span().and_then(|span| self.index.path_at(&span));
        let offset = e.span().map_or(0, |span| span.start);
        if msg.starts_with("missing field") && path.is_some_and(|p| p.starts_with("route")) {
            msg.push_str(" (every [[route]] needs `name` and `upstream`)");
        }
        // serde names Rust types; operators write TOML.
        for (rust, toml) in [
            ("usize", "a whole number"),
            ("i32", "an integer"),
            ("a sequence", "an array"),
        ] {
            msg = msg.replace(&format!("expected {rust}"), &format!("expected {toml}"));
        }
        if !self.valid_toml {
            msg = format!("TOML syntax error: {msg}");
        }
        self.at(offset, path, &msg)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn line_col_is_one_based_and_counts_chars() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // 'é' is two bytes but one column: the '=' after "bé " is column 4.
        assert_eq!(line_col(text, 10), (2, 4));
        assert_eq!(line_col(text, text.len()), (3, 1));
        assert_eq!(line_col(text, 10_000), (3, 1));
    }

    #[test]
    fn span_index_names_fields() {
        let text = "[server]\nlisten = \"x\"\n\n[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\nhosts = [\"h\", \"i\"]\n";
        let index = SpanIndex::build(text).unwrap();
        let at = |needle: &str| {
            let start = text.find(needle).unwrap();
            index.path_at(&(start..start + 1)).map(str::to_owned)
        };
        assert_eq!(at("\"x\"").as_deref(), Some("server.listen"));
        assert_eq!(at("listen").as_deref(), Some("server.listen"));
        assert_eq!(at("\"b\"").as_deref(), Some("route[1].name"));
        assert_eq!(at("\"i\"").as_deref(), Some("route[1].hosts[1]"));
        assert!(index.offset_of("route[1].ttl").is_some());
        assert_eq!(index.offset_of("server.listen"), text.find("\"x\""));
    }

    #[test]
    fn span_index_survives_implicit_tables() {
        // `server` and `route.x`'s parent have no span of their own in toml.
        let text = "server.listen = \"nope\"\n[cache.x]\ny = 1\n";
        let index = SpanIndex::build(text).unwrap();
        let value = text.find("\"nope\"").unwrap();
        assert_eq!(index.path_at(&(value..value + 6)), Some("server.listen"));
        assert_eq!(index.offset_exact("server.listen"), Some(value));
        assert_eq!(index.offset_exact("cache"), text.find("cache"));
        let err = Config::from_str(text, "f.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("f.toml:1:17: server.listen: invalid socket address"),
            "{err}"
        );
    }
}
