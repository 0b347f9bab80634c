//! JSON texts serialized once and put together without being parsed again.
//!
//! A tool's output is serialized once; that one text is the structured content, is
//! escaped into the text block and is spliced into the JSON-RPC response, so answering a
//! call builds no `serde_json::Value` tree and never re-reads what it wrote. Every [`Json`]
//! is valid JSON by construction: it comes from serde, or from an [`Object`] or [`array`]
//! whose members are serde output or other [`Json`] texts.

use std::fmt;

use serde::Serialize;

/// A serialized JSON value, sent as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct Json(String);

impl Json {
    /// Serializes `value`.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Json {
        Json::with_capacity(value, 128)
    }

    /// Serializes `value` into a buffer sized for about `capacity` bytes.
    pub fn with_capacity<T: Serialize + ?Sized>(value: &T, capacity: usize) -> Json {
        let mut buf = Vec::with_capacity(capacity);
        write_value(&mut buf, value);
        Json::from_buf(buf)
    }

    fn from_buf(buf: Vec<u8>) -> Json {
        // serde_json writes UTF-8 only; the fallback keeps the promise of valid JSON.
        Json(String::from_utf8(buf).unwrap_or_else(|_| "null".to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Appends `value` to `buf`; a value serde cannot write (a map with non-string keys,
/// say) becomes `null` rather than a torn text.
fn write_value<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    let start = buf.len();
    if let Err(e) = serde_json::to_writer(&mut *buf, value) {
        log::error!("cannot encode a JSON value: {e}");
        buf.truncate(start);
        buf.extend_from_slice(b"null");
    }
}

/// A JSON object written member by member.
pub struct Object {
    buf: Vec<u8>,
    empty: bool,
}

impl Object {
    /// An object whose text will be about `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Object {
        let mut buf = Vec::with_capacity(capacity);
        buf.push(b'{');
        Object { buf, empty: true }
    }

    fn key(&mut self, key: &str) {
        if !self.empty {
            self.buf.push(b',');
        }
        self.empty = false;
        write_value(&mut self.buf, key);
        self.buf.push(b':');
    }

    /// Adds a member serialized from `value`.
    pub fn value<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> &mut Object {
        self.key(key);
        write_value(&mut self.buf, value);
        self
    }

    /// Adds a member whose value is already serialized.
    pub fn json(&mut self, key: &str, value: &Json) -> &mut Object {
        self.key(key);
        self.buf.extend_from_slice(value.as_str().as_bytes());
        self
    }

    pub fn finish(mut self) -> Json {
        self.buf.push(b'}');
        Json::from_buf(self.buf)
    }
}

/// A JSON array of serialized values.
pub fn array(items: &[Json]) -> Json {
    let mut buf = Vec::with_capacity(items.iter().map(|j| j.len() + 1).sum::<usize>() + 2);
    buf.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(item.as_str().as_bytes());
    }
    buf.push(b']');
    Json::from_buf(buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use super::*;

    fn parse(j: &Json) -> Value {
        serde_json::from_str(j.as_str()).unwrap()
    }

    #[test]
    fn objects_hold_serialized_and_spliced_members_in_order() {
        let inner = Json::of(&json!({"a": [1, 2], "b": "x\"y"}));
        let mut o = Object::with_capacity(16);
        o.value("id", &7).json("result", &inner).value("note", "line\nbreak \u{e9}");
        let text = o.finish();
        assert_eq!(parse(&text), json!({"id": 7, "result": {"a": [1, 2], "b": "x\"y"}, "note": "line\nbreak \u{e9}"}));
        assert!(text.as_str().starts_with(r#"{"id":7,"result":"#));
        assert_eq!(Object::with_capacity(0).finish().as_str(), "{}");
    }

    #[test]
    fn arrays_join_their_items() {
        assert_eq!(array(&[]).as_str(), "[]");
        let items = [Json::of(&1), Json::of("two"), Json::of(&json!({"three": 3}))];
        assert_eq!(parse(&array(&items)), json!([1, "two", {"three": 3}]));
    }

    #[test]
    fn a_value_serde_cannot_write_becomes_null_and_the_text_stays_valid() {
        let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
        assert_eq!(Json::of(&bad).as_str(), "null");
        let mut o = Object::with_capacity(8);
        o.value("bad", &bad).value("good", &true);
        assert_eq!(parse(&o.finish()), json!({"bad": null, "good": true}));
    }
}
