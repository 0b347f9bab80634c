//! The parsed document: what a configuration says, independent of its layout.
//!
//! The migration decides its steps on this tree and applies them to it, and the text
//! editor's result must parse back to the same tree: that comparison is what makes editing
//! the text safe. It is also what is written out when the text cannot be edited.
//!
//! Scalars keep their source text (`yes`, `0x48`, `"1.1"`): serde reads `yes` as a boolean
//! in a mapping of unknown type but as the string "yes" in a `String` field, so comparing or
//! writing out values alone could change what the typed configuration reads.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A node of the document, with the line its value starts on (0 for nodes the migration
/// made).
#[derive(Clone, Debug)]
pub struct Node {
    pub kind: Kind,
    pub line: u64,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// Entries in the order the file has them (merge keys already applied).
    Map(Vec<(String, Node)>),
    Seq(Vec<Node>),
    Scalar(Scalar),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
}

#[derive(Clone, Debug)]
pub struct Scalar {
    pub value: Value,
    /// The scalar as written, quotes included, when it is on one line.
    pub raw: Option<String>,
}

impl Node {
    /// A scalar the migration writes, from its YAML text (`"1.2"`, `100`).
    pub fn new_scalar(raw: &str, value: Value) -> Node {
        Node { kind: Kind::Scalar(Scalar { value, raw: Some(raw.into()) }), line: 0 }
    }

    pub fn new_map(entries: Vec<(String, Node)>) -> Node {
        Node { kind: Kind::Map(entries), line: 0 }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar(Scalar { value: Value::Null, .. }))
    }

    /// The entry `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The node at `path` (keys of nested mappings).
    pub fn at(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |node, key| node.get(key))
    }

    pub fn at_mut(&mut self, path: &[&str]) -> Option<&mut Node> {
        path.iter().try_fold(self, |node, key| match &mut node.kind {
            Kind::Map(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        })
    }

    /// The entries of a mapping, turning a null node into an empty mapping first.
    pub fn entries_mut(&mut self) -> Option<&mut Vec<(String, Node)>> {
        if self.is_null() {
            self.kind = Kind::Map(Vec::new());
        }
        match &mut self.kind {
            Kind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value as a short text for messages: the source text of a scalar, `[...]` or
    /// `{...}` for a collection.
    pub fn brief(&self) -> String {
        match &self.kind {
            Kind::Map(_) => "{...}".into(),
            Kind::Seq(_) => "[...]".into(),
            Kind::Scalar(s) => match (&s.raw, &s.value) {
                (Some(raw), _) if !raw.is_empty() => raw.clone(),
                (_, Value::Null) => "null".into(),
                (_, Value::Str(text)) => format!("{text:?}"),
                (_, other) => format!("{other:?}"),
            },
        }
    }
}

/// Whether two nodes say the same: mappings compare regardless of order, scalars by their
/// source text when both have one on a line (else by value).
pub fn same(a: &Node, b: &Node) -> bool {
    match (&a.kind, &b.kind) {
        (Kind::Map(x), Kind::Map(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.iter().any(|(k2, v2)| k == k2 && same(v, v2)))
        }
        (Kind::Seq(x), Kind::Seq(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w)),
        (Kind::Scalar(x), Kind::Scalar(y)) => match (&x.raw, &y.raw) {
            (Some(r), Some(s)) if !r.is_empty() && !s.is_empty() => r == s,
            _ => x.value == y.value,
        },
        _ => false,
    }
}

/// Parses YAML text into a tree; the error is the parser's, with line and column.
pub fn parse(text: &str) -> Result<Node, String> {
    let parsed: Spanned<Parsed> = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(convert(text, parsed))
}

/// What the deserializer gives, with the place of every value.
enum Parsed {
    Map(Vec<(String, Spanned<Parsed>)>),
    Seq(Vec<Spanned<Parsed>>),
    Scalar(Value),
}

fn convert(text: &str, parsed: Spanned<Parsed>) -> Node {
    let line = parsed.referenced.line();
    let kind = match parsed.value {
        Parsed::Map(entries) => Kind::Map(entries.into_iter().map(|(k, v)| (k, convert(text, v))).collect()),
        Parsed::Seq(items) => Kind::Seq(items.into_iter().map(|v| convert(text, v)).collect()),
        Parsed::Scalar(value) => {
            // An alias's text is its anchor's node.
            let span = parsed.defined.span();
            let raw = span
                .byte_offset()
                .zip(span.byte_len())
                .and_then(|(at, len)| text.get(at as usize..(at + len) as usize))
                .filter(|raw| !raw.contains('\n'))
                .map(str::to_string);
            Kind::Scalar(Scalar { value, raw })
        }
    };
    Node { kind, line }
}

impl<'de> Deserialize<'de> for Parsed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParsedVisitor)
    }
}

struct ParsedVisitor;

impl<'de> Visitor<'de> for ParsedVisitor {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Parsed, E> {
        Ok(Parsed::Scalar(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Parsed, E> {
        Ok(Parsed::Scalar(Value::Int(v.into())))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Parsed, E> {
        Ok(Parsed::Scalar(Value::Int(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Parsed, E> {
        Ok(Parsed::Scalar(Value::Int(v.into())))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Parsed, E> {
        i128::try_from(v).map(|v| Parsed::Scalar(Value::Int(v))).map_err(|_| E::custom("integer too large"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Parsed, E> {
        Ok(Parsed::Scalar(Value::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed, E> {
        Ok(Parsed::Scalar(Value::Str(v.into())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Parsed, E> {
        Ok(Parsed::Scalar(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Parsed, E> {
        Ok(Parsed::Scalar(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_any(ParsedVisitor)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            entries.push((key, map.next_value::<Spanned<Parsed>>()?));
        }
        Ok(Parsed::Map(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Parsed>>()? {
            items.push(item);
        }
        Ok(Parsed::Seq(items))
    }
}

/// Writes the tree as block YAML. Scalars keep their source text where they have one on a
/// line, so that every typed field reads what it read before.
pub fn emit(node: &Node) -> String {
    let mut out = String::new();
    match &node.kind {
        Kind::Map(entries) if !entries.is_empty() => emit_entries(entries, 0, &mut out),
        _ => {
            out.push_str(&inline(node));
            out.push('\n');
        }
    }
    out
}

fn emit_entries(entries: &[(String, Node)], indent: usize, out: &mut String) {
    for (i, (key, value)) in entries.iter().enumerate() {
        // The first entry of a mapping in a sequence follows its `- `.
        if i > 0 || indent == 0 || !out.ends_with("- ") {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&key_text(key));
        out.push(':');
        emit_value(value, indent, out);
    }
}

/// Writes what follows `key:` or `-`, and the line ends.
fn emit_value(value: &Node, indent: usize, out: &mut String) {
    match &value.kind {
        Kind::Map(entries) if !entries.is_empty() => {
            out.push('\n');
            emit_entries(entries, indent + 2, out);
        }
        Kind::Seq(items) if !items.is_empty() => {
            out.push('\n');
            for item in items {
                out.push_str(&" ".repeat(indent + 2));
                out.push('-');
                match &item.kind {
                    Kind::Map(entries) if !entries.is_empty() => {
                        out.push(' ');
                        emit_entries(entries, indent + 4, out);
                    }
                    _ => emit_value(item, indent + 2, out),
                }
            }
        }
        _ => {
            out.push(' ');
            out.push_str(&inline(value));
            out.push('\n');
        }
    }
}

/// A scalar or an empty collection on one line.
fn inline(node: &Node) -> String {
    match &node.kind {
        Kind::Map(_) => "{}".into(),
        Kind::Seq(_) => "[]".into(),
        Kind::Scalar(s) => match (&s.raw, &s.value) {
            (Some(raw), _) if !raw.is_empty() => raw.clone(),
            (_, Value::Null) => "null".into(),
            (_, Value::Bool(b)) => b.to_string(),
            (_, Value::Int(n)) => n.to_string(),
            (_, Value::Float(x)) if x.is_nan() => ".nan".into(),
            (_, Value::Float(x)) if x.is_infinite() => if *x > 0.0 { ".inf" } else { "-.inf" }.into(),
            (_, Value::Float(x)) => format!("{x:?}"),
            // A JSON string is a YAML double-quoted scalar with the same value.
            (_, Value::Str(text)) => serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into()),
        },
    }
}

/// A mapping key: plain when that cannot be read as anything but this string.
fn key_text(key: &str) -> String {
    let plain = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !["true", "false", "null", "yes", "no", "on", "off", "y", "n"].contains(&key.to_ascii_lowercase().as_str());
    if plain {
        key.to_string()
    } else {
        serde_json::to_string(key).unwrap_or_else(|_| "\"\"".into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scalars_keep_their_source_text_and_lines() {
        let tree = parse("a: yes\nb: 0x48\nc: \"1.1\"\nd:\n  - x\n  - 'it''s'\n").unwrap();
        let raw = |path: &[&str]| match &tree.at(path).unwrap().kind {
            Kind::Scalar(s) => s.raw.clone().unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(raw(&["a"]), "yes");
        assert_eq!(raw(&["b"]), "0x48");
        assert_eq!(raw(&["c"]), "\"1.1\"");
        assert_eq!(tree.at(&["c"]).unwrap().line, 3);
        assert!(matches!(&tree.at(&["d"]).unwrap().kind, Kind::Seq(items) if items.len() == 2));
    }

    #[test]
    fn the_same_values_written_differently_are_told_apart() {
        let a = parse("x: yes\ny: {k: 1, j: 2}\n").unwrap();
        assert!(same(&a, &parse("y:\n  j: 2\n  k: 1\nx: yes  # comment\n").unwrap()));
        assert!(
            !same(&a, &parse("x: true\ny: {k: 1, j: 2}\n").unwrap()),
            "yes is the string \"yes\" to a String field"
        );
        assert!(!same(&a, &parse("x: yes\ny: {k: 1}\n").unwrap()));
    }

    #[test]
    fn a_written_out_tree_reads_back_the_same() {
        let text = "config_version: \"1.2\"\nserver: {listen: \"127.0.0.1:8000\", cors: {enabled: yes, allowed_origins: []}}\n\
                    note: |\n  two\n  lines\ngpio:\n  pins:\n    - {pin: 17, modes: [input, output], label: led}\n    - pin: 18\n      modes: [pwm]\n\
                    empty: {}\nnothing:\nlist: [[1, 2], [], {a: b}]\n\"odd key\": 1\n";
        let tree = parse(text).unwrap();
        let written = emit(&tree);
        assert!(same(&tree, &parse(&written).unwrap()), "{written}");
        assert!(written.contains("enabled: yes"), "{written}");
    }
}
