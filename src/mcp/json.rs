//! JSON texts serialized once and put together without being parsed again.
//!
//! A tool's output is serialized once; that one text is the structured content, is
//! escaped into the text block and is spliced into the JSON-RPC response, so answering a
//! call builds no `serde_json::Value` tree and never re-reads what it wrote. Every [`Json`]
//! is valid JSON by construction: it comes from serde, or from an [`Object`] or [`array`]
//! whose members are serde output or other [`Json`] texts.

use std::borrow::Borrow;
use std::fmt;

use serde::Serialize;

/// A serialized JSON value, sent as it is. Its bytes are UTF-8: they come from serde_json
/// and from `&str`s only, so they are not checked again on their way out.
#[derive(Clone, PartialEq, Eq)]
pub struct Json(Vec<u8>);

impl Json {
    /// Serializes `value`.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Json {
        Json::with_capacity(value, 128)
    }

    /// Serializes `value` into a buffer sized for about `capacity` bytes.
    pub fn with_capacity<T: Serialize + ?Sized>(value: &T, capacity: usize) -> Json {
        let mut buf = Vec::with_capacity(capacity);
        write_value(&mut buf, value);
        Json(buf)
    }

    /// This text without the spare capacity of its buffer, for one kept for long.
    pub fn shrunk(mut self) -> Json {
        self.0.shrink_to_fit();
        self
    }

    /// The text. (The fallbacks here and in [`Json::into_string`] keep the promise of valid
    /// JSON should the bytes ever not be UTF-8.)
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("null")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_string(self) -> String {
        String::from_utf8(self.0).unwrap_or_else(|_| "null".to_string())
    }

    /// The text's bytes, for a body that is sent as it is.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// An object of the members `head` writes and then `key`, whose value is this text.
    /// The object is built in this text's buffer: the members are written after the text
    /// and rotated in front of it, so a large text is moved once rather than copied into
    /// a new buffer.
    pub fn into_last_member(self, head: impl FnOnce(&mut Object), key: &str) -> Json {
        let len = self.0.len();
        let mut object = Object { buf: self.0, empty: true };
        object.buf.push(b'{');
        head(&mut object);
        object.key(key);
        let mut buf = object.buf;
        let members = buf.len() - len;
        buf.rotate_right(members);
        buf.push(b'}');
        Json(buf)
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Appends `value` to `buf`; a value serde cannot write (a map with non-string keys,
/// say) becomes `null` rather than a torn text.
fn write_value<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    let start = buf.len();
    if let Err(e) = serde_json::to_writer(Appender(&mut *buf), value) {
        log::error!("cannot encode a JSON value: {e}");
        buf.truncate(start);
        buf.extend_from_slice(b"null");
    }
}

/// What a byte of a string becomes inside a JSON string literal: 0 for itself, `u` for a
/// `\u00XX` escape, otherwise the letter after the backslash.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends the concatenation of `parts` (UTF-8 texts) as a JSON string literal, escaped as
/// serde_json escapes it. One pass byte by byte: JSON texts put in a text block escape
/// every few bytes, where writing the runs between escapes one by one costs more than
/// the bytes.
fn write_str(buf: &mut Vec<u8>, parts: &[&[u8]]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Pushes onto a local vector: its length stays in a register. Byte pushes rather than
    // slices: a two-byte slice costs a call to memcpy in a build optimized for size.
    let mut out = std::mem::take(buf);
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(len + len / 8 + 2);
    out.push(b'"');
    for part in parts {
        for &b in *part {
            match ESCAPE[b as usize] {
                0 => out.push(b),
                b'u' => {
                    for e in [b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]] {
                        out.push(e);
                    }
                }
                letter => {
                    out.push(b'\\');
                    out.push(letter);
                }
            }
        }
    }
    out.push(b'"');
    *buf = out;
}

/// A byte buffer for serde_json to write into. serde_json writes a text in many small
/// pieces (a quote, a key, a colon); appending those byte by byte, inline, costs less than
/// a call to memcpy for each, which is what `Vec<u8>`'s writer becomes in a build
/// optimized for size.
pub struct Appender<'a>(pub &'a mut Vec<u8>);

impl std::io::Write for Appender<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    #[inline(always)]
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.len() <= 16 {
            self.0.reserve(16);
            for &b in bytes {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
        write_str(&mut self.buf, &[key.as_bytes()]);
        self.buf.push(b':');
    }

    /// Adds a member whose value is the string `text`.
    pub fn string(&mut self, key: &str, text: &str) -> &mut Object {
        self.key(key);
        write_str(&mut self.buf, &[text.as_bytes()]);
        self
    }

    /// Adds a member whose value is a string: `prefix` followed by the text of `json`.
    pub fn string_of(&mut self, key: &str, prefix: &str, json: &Json) -> &mut Object {
        self.key(key);
        write_str(&mut self.buf, &[prefix.as_bytes(), json.as_bytes()]);
        self
    }

    /// Adds a member that is an array: an object written by `first`, then `rest`
    /// serialized.
    pub fn objects<T: Serialize>(&mut self, key: &str, first: impl FnOnce(&mut Object), rest: &[T]) -> &mut Object {
        self.key(key);
        self.buf.push(b'[');
        let mut inner = Object { buf: std::mem::take(&mut self.buf), empty: true };
        inner.buf.push(b'{');
        first(&mut inner);
        inner.buf.push(b'}');
        self.buf = inner.buf;
        for item in rest {
            self.buf.push(b',');
            write_value(&mut self.buf, item);
        }
        self.buf.push(b']');
        self
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
        self.buf.extend_from_slice(value.as_bytes());
        self
    }

    pub fn finish(mut self) -> Json {
        self.buf.push(b'}');
        Json(self.buf)
    }
}

/// A JSON array of serialized values (`Json`s or references to them).
pub fn array<J: Borrow<Json>>(items: &[J]) -> Json {
    let mut buf = Vec::with_capacity(items.iter().map(|j| j.borrow().len() + 1).sum::<usize>() + 2);
    buf.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(item.borrow().as_bytes());
    }
    buf.push(b']');
    Json(buf)
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
    fn strings_are_escaped_as_serde_escapes_them() {
        let mut texts: Vec<String> = (0u8..0x80).map(|b| format!("a{}b", b as char)).collect();
        texts.push(String::new());
        texts.push("\u{e9}t\u{e9} \u{1f600} \u{7f} \u{2028}".into());
        texts.push(Json::of(&json!({"k": "say \"hi\"\\n", "n": null})).into_string());
        for text in texts {
            let mut ours = Vec::new();
            write_str(&mut ours, &[text.as_bytes()]);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn an_array_of_objects_holds_the_built_object_then_the_rest() {
        let mut o = Object::with_capacity(8);
        o.objects(
            "content",
            |first| {
                first.string("type", "text").string("text", "{\"a\":1}");
            },
            &[json!({"type": "image"})],
        )
        .value("isError", &false);
        let text = o.finish();
        assert_eq!(
            parse(&text),
            json!({"content": [{"type": "text", "text": "{\"a\":1}"}, {"type": "image"}], "isError": false})
        );
        let mut o = Object::with_capacity(8);
        o.objects::<Value>("content", |_| {}, &[]);
        assert_eq!(o.finish().as_str(), r#"{"content":[{}]}"#);
    }

    #[test]
    fn a_text_becomes_the_last_member_of_an_object_written_around_it() {
        let inner = Json::of(&json!({"content": [{"type": "text", "text": "x"}], "isError": false}));
        let wrapped = inner.clone().into_last_member(
            |o| {
                o.value("jsonrpc", "2.0").value("id", &json!("a\"b"));
            },
            "result",
        );
        assert_eq!(parse(&wrapped), json!({"jsonrpc": "2.0", "id": "a\"b", "result": parse(&inner)}));
        assert!(wrapped.as_str().ends_with(&format!(",\"result\":{inner}}}")));
        assert_eq!(Json::of(&1).into_last_member(|_| {}, "only").as_str(), r#"{"only":1}"#);
    }

    #[test]
    fn arrays_join_their_items() {
        assert_eq!(array::<Json>(&[]).as_str(), "[]");
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
