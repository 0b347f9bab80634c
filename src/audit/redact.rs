//! What an audit record keeps of a call's arguments: secrets redacted, everything bounded.
//!
//! A record must stay small whatever a caller sends (a key of a megabyte, a deep tree), so
//! that one caller cannot fill the trail, and must never hold a secret: a value is redacted
//! when its key names a secret (`token`, `password`, `api_key`...) or when it looks like one
//! (a bearer token, a JWT, a long random-looking string), also inside free text.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::base::clip;

/// Longest key kept whole.
pub const MAX_KEY_BYTES: usize = 64;
/// Longest string value kept whole.
pub const MAX_STRING_BYTES: usize = 256;
/// Entries kept of one object or array.
pub const MAX_ENTRIES: usize = 32;
/// Levels of nesting kept.
pub const MAX_DEPTH: usize = 6;
/// Largest (approximate) size of the arguments in a record; larger ones are summarised.
pub const MAX_ARGUMENTS_BYTES: usize = 2048;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// Parts of a key name that mark its value as a secret.
const SECRET_WORDS: [&str; 10] =
    ["token", "secret", "passw", "passphrase", "key", "credential", "auth", "bearer", "cookie", "private"];

fn is_secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w))
}

/// The arguments as an audit record keeps them: secrets redacted, keys and strings cut
/// (with a marker giving the original length), at most [`MAX_ENTRIES`] entries per level and
/// [`MAX_DEPTH`] levels, and a summary instead when the result would still pass
/// [`MAX_ARGUMENTS_BYTES`].
pub fn summarize(arguments: &Value) -> Value {
    let mut size = 0;
    let kept = bounded(arguments, 0, &mut size);
    if size <= MAX_ARGUMENTS_BYTES {
        return kept;
    }
    let keys: Vec<Value> = match arguments {
        Value::Object(map) => map.keys().take(8).map(|k| Value::String(clip(k, MAX_KEY_BYTES).into_owned())).collect(),
        _ => Vec::new(),
    };
    serde_json::json!({"[cut]": format!("arguments of about {size} bytes, over the audit record's {MAX_ARGUMENTS_BYTES}"), "keys": keys})
}

/// `value` bounded, adding the size of what is kept to `size`.
fn bounded(value: &Value, depth: usize, size: &mut usize) -> Value {
    match value {
        Value::Object(map) => {
            if depth >= MAX_DEPTH {
                *size += 16;
                return Value::String(format!("[cut: an object of {} entries]", map.len()));
            }
            let mut out = Map::new();
            for (k, v) in map.iter().take(MAX_ENTRIES) {
                let key = clip(k, MAX_KEY_BYTES).into_owned();
                *size += key.len() + 4;
                let kept = if is_secret_key(k) { Value::String(REDACTED.into()) } else { bounded(v, depth + 1, size) };
                out.insert(key, kept);
            }
            if map.len() > MAX_ENTRIES {
                out.insert("[cut]".into(), Value::String(format!("{} more entries", map.len() - MAX_ENTRIES)));
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            if depth >= MAX_DEPTH {
                *size += 16;
                return Value::String(format!("[cut: an array of {} items]", items.len()));
            }
            let mut out: Vec<Value> = items.iter().take(MAX_ENTRIES).map(|v| bounded(v, depth + 1, size)).collect();
            if items.len() > MAX_ENTRIES {
                out.push(Value::String(format!("[cut: {} more items]", items.len() - MAX_ENTRIES)));
            }
            Value::Array(out)
        }
        Value::String(text) => {
            let redacted = redact_text(text);
            let kept = clip(&redacted, MAX_STRING_BYTES).into_owned();
            *size += kept.len() + 2;
            Value::String(kept)
        }
        other => {
            *size += 8;
            other.clone()
        }
    }
}

/// `text` with every secret-looking part replaced by [`REDACTED`]: the whole text when it is
/// one; in free text, the word after `Bearer` or `Basic`, JWT-shaped and long random-looking
/// words, and the value of `password=...` or `token: ...`.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    if looks_like_secret(text.trim()) || starts_with_scheme(text.trim()) {
        return Cow::Borrowed(REDACTED);
    }
    let mut out = String::new();
    let mut changed = false;
    let mut previous_is_scheme = false;
    let mut previous_is_secret_key = false;
    for piece in text.split_inclusive(char::is_whitespace) {
        let word = piece.trim_end();
        let gap = &piece[word.len()..];
        let bare = word.trim_matches(|c: char| "\"'(),;[]{}<>".contains(c));
        if word.is_empty() {
            out.push_str(piece);
            continue;
        }
        let replaced = if previous_is_scheme || previous_is_secret_key || looks_like_secret(bare) {
            Some(REDACTED.to_string())
        } else {
            secret_assignment(word)
        };
        previous_is_scheme = ["bearer", "basic"].iter().any(|s| bare.eq_ignore_ascii_case(s));
        // `password: hunter2`, `token = x`: the key ends the word (or the word is `=`).
        previous_is_secret_key = (word.ends_with(':') || word.ends_with('='))
            && is_secret_key(word.trim_end_matches([':', '=']))
            || (word == "=" && previous_is_secret_key);
        match replaced {
            Some(r) => {
                changed = true;
                out.push_str(&r);
            }
            None => out.push_str(word),
        }
        out.push_str(gap);
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

fn starts_with_scheme(text: &str) -> bool {
    let lower = text.get(..7).map(str::to_ascii_lowercase).unwrap_or_default();
    lower.starts_with("bearer ") || lower.starts_with("basic ")
}

/// `key=value` or `key:value` in one word, with a secret key: the key kept, the value redacted.
fn secret_assignment(word: &str) -> Option<String> {
    let at = word.find(['=', ':'])?;
    let (key, value) = (&word[..at], &word[at + 1..]);
    (!value.is_empty() && is_secret_key(key.trim_start_matches(['-', '"', '\''])))
        .then(|| format!("{}{REDACTED}", &word[..=at]))
}

/// A JWT (three base64url parts, the first a JSON header) or a long random-looking token:
/// 32 or more token characters mixing upper case, lower case and digits.
pub fn looks_like_secret(word: &str) -> bool {
    is_jwt(word) || is_random_token(word)
}

fn is_jwt(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && parts[0].starts_with("eyJ")
        && parts[..2].iter().all(|p| p.len() >= 4)
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

fn is_random_token(word: &str) -> bool {
    word.len() >= 32
        && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_+/=.~".contains(&b))
        && word.bytes().any(|b| b.is_ascii_uppercase())
        && word.bytes().any(|b| b.is_ascii_lowercase())
        && word.bytes().any(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

    #[test]
    fn values_under_secret_key_names_are_redacted_at_any_depth() {
        let got = summarize(&json!({
            "pin": 17, "api_token": "abc", "Password": "x", "bearer": "t0k", "ssh_key": "k",
            "nested": {"client_secret": "s", "list": [{"privateKey": 1}, {"Authorization": "Basic eA=="}]}
        }));
        assert_eq!(
            got,
            json!({
                "pin": 17, "api_token": REDACTED, "Password": REDACTED, "bearer": REDACTED, "ssh_key": REDACTED,
                "nested": {"client_secret": REDACTED, "list": [{"privateKey": REDACTED}, {"Authorization": REDACTED}]}
            })
        );
    }

    #[test]
    fn secret_looking_values_are_redacted_whatever_their_key_and_inside_free_text() {
        let got = summarize(&json!({
            "unit": "nginx.service",
            "header": "Bearer abc.def-123",
            "jwt": JWT,
            "random": "AbCdEfGh1234567890IjKlMnOpQrStUv",
            "note": format!("please use Bearer hunter2 or {JWT}, then password=swordfish and token: s3cr3t; ok"),
        }));
        assert_eq!(got["unit"], "nginx.service");
        assert_eq!(got["header"], REDACTED);
        assert_eq!(got["jwt"], REDACTED);
        assert_eq!(got["random"], REDACTED);
        assert_eq!(
            got["note"],
            "please use Bearer [redacted] or [redacted] then password=[redacted] and token: [redacted] ok"
        );
    }

    #[test]
    fn ordinary_values_are_kept_as_they_are() {
        for text in
            ["nginx.service", "0x48 0x01 0xff", "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef", "error: disk full", "a:b"]
        {
            assert_eq!(summarize(&json!({ "v": text }))["v"], text, "{text}");
        }
    }

    #[test]
    fn keys_strings_entries_and_depth_are_bounded_with_markers() {
        let long_key = "k".repeat(1_000_000);
        let got = summarize(&json!({ long_key.clone(): 1 }));
        let line = serde_json::to_string(&got).unwrap();
        assert!(line.len() < 300, "{} bytes", line.len());
        assert!(line.contains("[cut, 1000000 bytes]"), "{line}");

        let got = summarize(&json!({"text": "x".repeat(10_000)}));
        let text = got["text"].as_str().unwrap();
        assert!(text.len() < MAX_STRING_BYTES + 32 && text.ends_with("[cut, 10000 bytes]"), "{text}");

        let many: serde_json::Map<String, Value> = (0..1000).map(|i| (format!("k{i}"), json!(i))).collect();
        let got = summarize(&Value::Object(many));
        assert_eq!(got.as_object().unwrap().len(), MAX_ENTRIES + 1);
        assert_eq!(got["[cut]"], "968 more entries");

        let mut deep = json!(1);
        for _ in 0..100 {
            deep = json!({ "d": deep });
        }
        let line = serde_json::to_string(&summarize(&deep)).unwrap();
        assert!(line.contains("[cut: an object of 1 entries]") && line.len() < 200, "{line}");
    }

    #[test]
    fn arguments_still_too_large_are_summarised_by_their_size_and_first_keys() {
        let wide: serde_json::Map<String, Value> =
            (0..32).map(|i| (format!("{i:0>60}"), Value::String("y".repeat(250)))).collect();
        let got = summarize(&Value::Object(wide));
        let line = serde_json::to_string(&got).unwrap();
        assert!(line.len() < 1000, "{line}");
        assert!(got["[cut]"].as_str().unwrap().starts_with("arguments of about"), "{got}");
        assert_eq!(got["keys"].as_array().unwrap().len(), 8);
    }
}
