//! Reading a client's message: one JSON-RPC request, notification or response, with its
//! `params._meta` read into a [`Meta`] as the envelope is parsed, and what a stateless
//! request's `_meta` says (its version, log level and progress token).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{meta, RpcError, Version};
use crate::base::LogLevel;

/// What a request's `params._meta` tells this server; its other members are not read.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Meta {
    /// The stateless revision's protocol version; `Some` whatever its type, so that a
    /// version that is not a string is refused rather than taken for a session request.
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", default, deserialize_with = "present")]
    pub protocol_version: Option<Value>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities", default)]
    pub client_capabilities: Option<Value>,
    #[serde(rename = "io.modelcontextprotocol/logLevel", default)]
    pub log_level: Option<Value>,
    #[serde(rename = "progressToken", default)]
    pub progress_token: Option<Value>,
}

impl Meta {
    /// Takes `_meta` out of `params`; `_meta` that is not an object says nothing.
    pub(super) fn take_from(params: &mut Option<Value>) -> Meta {
        match params.as_mut().and_then(Value::as_object_mut).and_then(|p| p.remove("_meta")) {
            Some(meta) => serde_json::from_value(meta).unwrap_or_default(),
            None => Meta::default(),
        }
    }
}

/// A member's value, `Some(Value::Null)` when it is `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `params` read in one pass: `_meta` into a [`Meta`], the other members into a tree.
/// Anything but an object or an array is refused, as is a key with escapes (the tree
/// reader then takes the whole message).
struct Params {
    rest: Value,
    meta: Meta,
}

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Params, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Params;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object or an array")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Params, A::Error> {
                let mut rest = Map::new();
                let mut meta = None;
                while let Some(key) = map.next_key::<&'de str>()? {
                    if key == "_meta" {
                        meta = Some(map.next_value()?);
                    } else {
                        rest.insert(key.to_owned(), map.next_value()?);
                    }
                }
                Ok(Params { rest: Value::Object(rest), meta: meta.unwrap_or_default() })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Params, A::Error> {
                let items = Vec::<Value>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Params { rest: Value::Array(items), meta: Meta::default() })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// One parsed JSON-RPC message from a client. `params` comes without its `_meta`, which
/// is read into `meta`.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Option<Value>,
        meta: Meta,
    },
    Notification {
        method: String,
        params: Option<Value>,
        meta: Meta,
    },
    /// A response to a server request; this server sends none, so these are dropped.
    Response,
}

impl Incoming {
    /// The common case, read without building a tree of the envelope: a well-formed
    /// request or notification. `None` for anything else — not JSON, a batch, a response,
    /// an envelope [`Incoming::parse`] refuses, duplicate members — which is then parsed
    /// into a `Value` and judged by [`Incoming::parse`], as if this had not been tried.
    pub fn from_slice(bytes: &[u8]) -> Option<Incoming> {
        /// `params`, refused when `null`.
        fn params<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Params>, D::Error> {
            Params::deserialize(d).map(Some)
        }
        #[derive(Deserialize)]
        struct Envelope<'a> {
            #[serde(borrow)]
            jsonrpc: Cow<'a, str>,
            #[serde(default, deserialize_with = "present")]
            id: Option<Value>,
            #[serde(borrow)]
            method: Cow<'a, str>,
            #[serde(default, deserialize_with = "params")]
            params: Option<Params>,
        }
        // A struct would also be read from an array of its members' values.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return None;
        }
        // serde_json skips the members it ignores without checking that they are UTF-8: a
        // body that is not is no JSON, and the tree reader refuses it as such.
        let text = std::str::from_utf8(bytes).ok()?;
        let e: Envelope = serde_json::from_str(text).ok()?;
        let id_ok = e.id.as_ref().is_none_or(|id| id.is_string() || id.is_i64() || id.is_u64());
        if e.jsonrpc != "2.0" || !id_ok {
            return None;
        }
        let method = e.method.into_owned();
        let (params, meta) = match e.params {
            Some(Params { rest, meta }) => (Some(rest), meta),
            None => (None, Meta::default()),
        };
        Some(match e.id {
            Some(id) => Incoming::Request { id, method, params, meta },
            None => Incoming::Notification { method, params, meta },
        })
    }

    /// Checks the JSON-RPC 2.0 envelope.
    pub fn parse(v: Value) -> Result<Incoming, (Value, RpcError)> {
        let Value::Object(mut obj) = v else {
            return Err((
                Value::Null,
                RpcError::invalid_request("Invalid request: a JSON-RPC message must be an object"),
            ));
        };
        let id = obj.remove("id");
        let id_for_error = id.clone().unwrap_or(Value::Null);
        let bad = |m: &str| Err((id_for_error.clone(), RpcError::invalid_request(format!("Invalid request: {m}"))));
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return bad("\"jsonrpc\" must be \"2.0\"");
        }
        if let Some(id) = &id {
            if !(id.is_string() || id.is_i64() || id.is_u64()) {
                return bad("\"id\" must be a string or an integer");
            }
        }
        let mut params = obj.remove("params");
        if let Some(p) = &params {
            if !(p.is_object() || p.is_array()) {
                return bad("\"params\" must be an object");
            }
        }
        let meta = Meta::take_from(&mut params);
        match (obj.remove("method"), id) {
            (Some(Value::String(method)), Some(id)) => Ok(Incoming::Request { id, method, params, meta }),
            (Some(Value::String(method)), None) => Ok(Incoming::Notification { method, params, meta }),
            (Some(_), _) => bad("\"method\" must be a string"),
            (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => Ok(Incoming::Response),
            (None, _) => bad("a request needs a \"method\""),
        }
    }
}

/// Checks the `_meta` of a stateless request and returns its version.
pub fn stateless_version(meta: &Meta) -> Result<Version, RpcError> {
    let requested = meta.protocol_version.as_ref().and_then(Value::as_str);
    let Some(requested) = requested else {
        return Err(RpcError::invalid_params(format!(
            "Invalid params: _meta[\"{}\"] is required (or send initialize first for a session)",
            meta::PROTOCOL_VERSION
        ))
        .status(400));
    };
    let version = Version::parse(requested).ok_or_else(|| RpcError::unsupported_version(requested))?;
    if !version.is_stateless() {
        return Err(RpcError::unsupported_version(requested));
    }
    if meta.client_capabilities.as_ref().is_none_or(|c| !c.is_object()) {
        return Err(RpcError::invalid_params(format!(
            "Invalid params: _meta[\"{}\"] is required (an object; {{}} when the client has none)",
            meta::CLIENT_CAPABILITIES
        ))
        .status(400));
    }
    Ok(version)
}

/// The log level a stateless request asked for in `_meta`.
pub fn requested_log_level(meta: &Meta) -> Option<LogLevel> {
    let level = meta.log_level.as_ref()?.as_str()?;
    Some(match level {
        "debug" => LogLevel::Debug,
        "info" | "notice" => LogLevel::Info,
        "warning" => LogLevel::Warn,
        _ => LogLevel::Error,
    })
}

/// The progress token of a request, if it asked for progress.
pub fn progress_token(meta: &Meta) -> Option<Value> {
    meta.progress_token.as_ref().filter(|t| t.is_string() || t.is_number()).cloned()
}
