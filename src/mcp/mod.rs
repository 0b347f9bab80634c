//! The Model Context Protocol, independent of transport.
//!
//! Two eras are served on one endpoint: the handshake era (2025-03-26, 2025-06-18,
//! 2025-11-25: `initialize`, then a session) and the stateless 2026-07-28 revision, where
//! every request carries its protocol version and client capabilities in `_meta` and
//! `server/discover` replaces the handshake. [`dispatch`] answers one request for a given
//! version; the HTTP and stdio transports decide the version and the session.

mod catalog;
pub mod conn;
pub mod http;
pub mod json;
mod session;
pub mod stdio;
mod throttle;

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::model::{
    ErrorCode, Implementation, InitializeResult, PromptsCapability, ProtocolVersion, ResourcesCapability,
    ServerCapabilities, ToolsCapability,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::auth::Identity;
use crate::base::LogLevel;
use crate::tools::App;
use crate::tools::{Cx, ToolResult};

pub use json::Json;
pub use session::{Session, Sessions};

/// Protocol versions this server speaks, newest first.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"];

/// A protocol version this server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V2025_03_26,
    V2025_06_18,
    V2025_11_25,
    V2026_07_28,
}

impl Version {
    /// The newest version negotiated through `initialize`.
    pub const LATEST_HANDSHAKE: Version = Version::V2025_11_25;

    pub fn parse(s: &str) -> Option<Version> {
        Some(match s {
            "2025-03-26" => Version::V2025_03_26,
            "2025-06-18" => Version::V2025_06_18,
            "2025-11-25" => Version::V2025_11_25,
            "2026-07-28" => Version::V2026_07_28,
            _ => return None,
        })
    }

    pub fn protocol(self) -> ProtocolVersion {
        match self {
            Version::V2025_03_26 => ProtocolVersion::V_2025_03_26,
            Version::V2025_06_18 => ProtocolVersion::V_2025_06_18,
            Version::V2025_11_25 => ProtocolVersion::V_2025_11_25,
            Version::V2026_07_28 => ProtocolVersion::V_2026_07_28,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V2025_03_26 => "2025-03-26",
            Version::V2025_06_18 => "2025-06-18",
            Version::V2025_11_25 => "2025-11-25",
            Version::V2026_07_28 => "2026-07-28",
        }
    }

    /// No handshake and no sessions: every request stands alone.
    pub fn is_stateless(self) -> bool {
        self == Version::V2026_07_28
    }

    /// Only 2025-03-26 allowed JSON-RPC batches.
    pub fn allows_batches(self) -> bool {
        self == Version::V2025_03_26
    }

    /// The version `initialize` settles on: the client's when supported, else our newest.
    pub fn negotiate(requested: Option<&str>) -> Version {
        match requested.and_then(Version::parse) {
            Some(v) if !v.is_stateless() => v,
            _ => Version::LATEST_HANDSHAKE,
        }
    }
}

/// `_meta` keys of the stateless revision.
pub mod meta {
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
    pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
    pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
}

/// The JSON-RPC requests this server answers, as `mcp_raspi_requests_total` counts them.
pub const METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "logging/setLevel",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "prompts/list",
    "prompts/get",
];

/// The counter of a request for `method`: a tool's name used as the method is the
/// `tools/call` it stands for, and any other name is `other`.
pub fn counted_method(app: &App, method: &str) -> crate::telemetry::MethodId {
    let t = &app.telemetry;
    t.method(method)
        .or_else(|| app.catalogue.get(method).and_then(|_| t.method("tools/call")))
        .unwrap_or_else(|| t.other_method())
}

/// A JSON-RPC error, with the HTTP status the Streamable HTTP transport answers with.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
    pub data: Option<Value>,
    pub http_status: u16,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RpcError { code: code.0, message: message.into(), data: None, http_status: 200 }
    }
    pub fn status(mut self, status: u16) -> Self {
        self.http_status = status;
        self
    }
    pub fn data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::PARSE_ERROR, format!("Parse error: the body is not valid JSON ({detail})")).status(400)
    }
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_REQUEST, message).status(400)
    }
    pub fn method_not_found(method: &str, version: Version) -> Self {
        // Methods the specification defines for a client to send, which a server may leave
        // out (its capabilities say which it offers): those this server does not offer.
        const OPTIONAL: [&str; 8] = [
            "completion/complete",
            "resources/subscribe",
            "resources/unsubscribe",
            "tasks/get",
            "tasks/list",
            "tasks/result",
            "tasks/cancel",
            "elicitation/create",
        ];
        let shown = crate::base::clip(method, 100);
        let message = if OPTIONAL.contains(&method) {
            format!("Method not found: this server does not support {shown} (its capabilities do not offer it)")
        } else {
            format!(
                "Method not found: {shown} is neither a method of MCP protocol version {} nor a tool of this server",
                version.as_str()
            )
        };
        let e = Self::new(ErrorCode::METHOD_NOT_FOUND, message);
        if version.is_stateless() {
            e.status(404)
        } else {
            e
        }
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_PARAMS, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INTERNAL_ERROR, message)
    }
    pub fn unsupported_version(requested: &str) -> Self {
        Self::new(
            ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
            format!(
                "Unsupported protocol version {requested:?}; this server supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        )
        .data(json!({"supported": SUPPORTED_VERSIONS, "requested": requested}))
        .status(400)
    }
    pub fn header_mismatch(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::HEADER_MISMATCH, message).status(400)
    }

    /// The JSON-RPC error object.
    pub fn to_json(&self) -> Json {
        let mut e = json::Object::with_capacity(self.message.len() + 64);
        e.value("code", &self.code).value("message", &self.message);
        if let Some(d) = &self.data {
            e.value("data", d);
        }
        e.finish()
    }
}

/// A JSON-RPC response to `id`: the result or error is spliced in as it was serialized.
pub fn response(id: &Value, result: Result<Json, RpcError>) -> Json {
    let head = |envelope: &mut json::Object| {
        envelope.value("jsonrpc", "2.0").value("id", id);
    };
    match result {
        Ok(result) => result.into_last_member(head, "result"),
        Err(e) => e.to_json().into_last_member(head, "error"),
    }
}

/// Several responses as one JSON-RPC batch reply.
pub fn batch_response(responses: &[Json]) -> Json {
    json::array(responses)
}

/// A message on its way to the client of one request: notifications while it runs, then
/// its response, the last message.
#[derive(Debug)]
pub enum Outgoing {
    Notification(Json),
    Response(Json),
}

impl Outgoing {
    pub fn into_json(self) -> Json {
        match self {
            Outgoing::Notification(m) | Outgoing::Response(m) => m,
        }
    }
}

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
    fn take_from(params: &mut Option<Value>) -> Meta {
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

/// Where a request's notifications go: progress (when the client sent a token) and log
/// messages (when the client asked for them).
#[derive(Clone, Default)]
pub struct Progress {
    sink: Option<mpsc::UnboundedSender<Outgoing>>,
    token: Option<Value>,
    log_level: Option<LogLevel>,
}

impl Progress {
    /// A sink that drops everything.
    pub fn none() -> Progress {
        Progress::default()
    }

    pub fn new(sink: mpsc::UnboundedSender<Outgoing>, token: Option<Value>, log_level: Option<LogLevel>) -> Progress {
        Progress { sink: Some(sink), token, log_level }
    }

    /// Whether anything would be sent: transports stream their answer only then.
    pub fn wants_stream(&self) -> bool {
        self.sink.is_some() && (self.token.is_some() || self.log_level.is_some())
    }

    /// Sends `notifications/progress` when the client asked for progress.
    pub fn report(&self, progress: f64, total: Option<f64>, message: &str) {
        if let (Some(sink), Some(token)) = (&self.sink, &self.token) {
            let mut params = json!({"progressToken": token, "progress": progress, "message": message});
            if let Some(total) = total {
                params["total"] = json!(total);
            }
            let message = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": params});
            let _ = sink.send(Outgoing::Notification(Json::of(&message)));
        }
    }

    /// Sends `notifications/message` when the client asked for messages at this level.
    pub fn log(&self, level: LogLevel, data: Value) {
        if let (Some(sink), Some(min)) = (&self.sink, self.log_level) {
            if level >= min {
                let level = match level {
                    LogLevel::Warn => "warning",
                    other => other.as_str(),
                };
                let message = json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/message",
                    "params": {"level": level, "logger": "mcp-raspi", "data": data},
                });
                let _ = sink.send(Outgoing::Notification(Json::of(&message)));
            }
        }
    }
}

/// What a request is answered in the context of.
pub struct Call {
    pub identity: Identity,
    pub version: Version,
    pub session: Option<Arc<Session>>,
    pub progress: Progress,
    /// `http` or `stdio`, for the audit log.
    pub transport: &'static str,
    pub request_id: Value,
}

fn server_info() -> Implementation {
    Implementation::new("mcp-raspi", crate::base::VERSION).with_title("mcp-raspi: Raspberry Pi inspection and control")
}

fn capabilities(version: Version) -> ServerCapabilities {
    let mut caps = ServerCapabilities::default();
    caps.tools = Some(ToolsCapability::default());
    caps.resources = Some(ResourcesCapability::default());
    caps.prompts = Some(PromptsCapability::default());
    if !version.is_stateless() {
        caps.logging = Some(Map::new());
    }
    caps
}

const INSTRUCTIONS: &str = "mcp-raspi inspects and controls this Raspberry Pi. Start with system.get_info and \
system.get_health_snapshot; the prompts daily_health_check and troubleshoot_service walk through common procedures.";

/// The result of `initialize` for the version negotiated from `requested`.
pub fn initialize_result(version: Version) -> Json {
    let result = InitializeResult::new(capabilities(version))
        .with_protocol_version(version.protocol())
        .with_server_info(server_info())
        .with_instructions(INSTRUCTIONS);
    Json::of(&result)
}

fn discover_result() -> Value {
    json!({
        "supportedVersions": SUPPORTED_VERSIONS,
        "capabilities": capabilities(Version::V2026_07_28),
        "instructions": INSTRUCTIONS,
    })
}

/// Methods whose results the stateless revision marks cacheable.
fn cacheable(method: &str) -> bool {
    matches!(
        method,
        "server/discover"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    )
}

/// `_meta` of every stateless result: the server's identity.
fn stateless_meta() -> &'static Value {
    static META: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    META.get_or_init(|| json!({ meta::SERVER_INFO: server_info() }))
}

/// [`stateless_meta`], serialized.
fn stateless_meta_json() -> &'static Json {
    static META: std::sync::OnceLock<Json> = std::sync::OnceLock::new();
    META.get_or_init(|| Json::of(stateless_meta()))
}

/// How long a stateless client may keep a listing, in milliseconds.
const LISTING_TTL_MS: u64 = 60_000;

/// Adapts a result to the version: the stateless revision wants `resultType`, server info
/// and caching hints; older versions have no `resultType`.
fn finish(version: Version, method: &str, mut result: Value) -> Value {
    let Some(obj) = result.as_object_mut() else { return result };
    if version.is_stateless() {
        obj.insert("resultType".into(), json!("complete"));
        let meta = obj.entry("_meta").or_insert_with(|| json!({}));
        if let (Some(meta), Some(ours)) = (meta.as_object_mut(), stateless_meta().as_object()) {
            meta.extend(ours.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if cacheable(method) {
            // Listings depend on the caller's role, so they are private to the caller.
            let ttl = if method == "resources/read" { 0 } else { LISTING_TTL_MS };
            obj.insert("ttlMs".into(), json!(ttl));
            obj.insert("cacheScope".into(), json!("private"));
        }
    } else {
        obj.remove("resultType");
    }
    result
}

/// Answers one request (not `initialize`, which the transports handle because it creates
/// a session). The result comes back serialized: tool results, the hot path, are written
/// once, straight from the tool's output.
pub async fn dispatch(app: &Arc<App>, call: &Call, method: &str, params: Option<Value>) -> Result<Json, RpcError> {
    let version = call.version;
    let params = params.unwrap_or_else(|| json!({}));
    let result = match method {
        "ping" if !version.is_stateless() => Ok(json!({})),
        "server/discover" => Ok(discover_result()),
        "logging/setLevel" if !version.is_stateless() => set_level(call, &params),
        "tools/list" => return catalog::list_tools(app, version, &params),
        "tools/call" => {
            let mut params = params;
            let arguments = params.as_object_mut().and_then(|p| p.remove("arguments")).unwrap_or(Value::Null);
            let name = params.get("name").and_then(Value::as_str).ok_or_else(|| {
                RpcError::invalid_params("Invalid params: tools/call needs \"name\", the tool to call")
            })?;
            return call_tool(app, call, name, arguments).await;
        }
        "resources/list" => catalog::list_resources(call),
        "resources/templates/list" => catalog::list_resource_templates(),
        "resources/read" => catalog::read_resource(app, call, &params).await,
        "prompts/list" => catalog::list_prompts(),
        "prompts/get" => catalog::get_prompt(&params),
        other if app.catalogue.get(other).is_some() => {
            // The spec's examples call tools as methods; their params are the arguments.
            return call_tool(app, call, other, params).await;
        }
        other => Err(RpcError::method_not_found(other, version)),
    }?;
    Ok(Json::of(&finish(version, method, result)))
}

async fn call_tool(app: &Arc<App>, call: &Call, name: &str, arguments: Value) -> Result<Json, RpcError> {
    let cx = Cx { app: app.clone(), identity: call.identity.clone(), progress: call.progress.clone() };
    let result =
        app.catalogue.call(cx, &call.request_id, call.transport, name, arguments).await.ok_or_else(|| {
            RpcError::invalid_params(format!("Unknown tool: {name}. Call tools/list to see the tools."))
        })?;
    Ok(call_tool_reply(call.version, &result))
}

/// `CallToolResult` as written on the wire, with what [`finish`] adds for the stateless
/// revision (tool results are never cacheable). Written into one buffer: the structured
/// content is escaped into the text block and spliced in straight from its one
/// serialization.
fn call_tool_reply(version: Version, result: &ToolResult) -> Json {
    let structured = result.structured_content.as_ref();
    // The text escapes the JSON's quotes: about a quarter longer than the JSON.
    let text_len = result.text_prefix.len() + structured.map_or(0, Json::len);
    let size = text_len * 5 / 4 + structured.map_or(0, Json::len) + 256;
    let mut reply = json::Object::with_capacity(size);
    reply.objects(
        "content",
        |block| {
            block.string("type", "text");
            match structured {
                Some(json) => block.string_of("text", &result.text_prefix, json),
                None => block.string("text", &result.text_prefix),
            };
        },
        &result.extra_content,
    );
    if let Some(structured) = structured {
        reply.json("structuredContent", structured);
    }
    reply.value("isError", &result.is_error);
    if version.is_stateless() {
        reply.value("resultType", "complete").json("_meta", stateless_meta_json());
    }
    reply.finish()
}

fn set_level(call: &Call, params: &Value) -> Result<Value, RpcError> {
    let level = params.get("level").and_then(Value::as_str).unwrap_or("");
    let level = match level {
        "debug" => LogLevel::Debug,
        "info" | "notice" => LogLevel::Info,
        "warning" => LogLevel::Warn,
        "error" | "critical" | "alert" | "emergency" => LogLevel::Error,
        other => {
            return Err(RpcError::invalid_params(format!(
                "Invalid params: level {other:?} is not one of debug, info, notice, warning, error, critical, alert, emergency"
            )))
        }
    };
    if let Some(session) = &call.session {
        session.set_log_level(level);
    }
    Ok(json!({}))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialize_echoes_a_supported_handshake_version_and_otherwise_offers_the_newest() {
        assert_eq!(Version::negotiate(Some("2025-03-26")), Version::V2025_03_26);
        assert_eq!(Version::negotiate(Some("2025-06-18")), Version::V2025_06_18);
        assert_eq!(Version::negotiate(Some("2025-11-25")), Version::V2025_11_25);
        assert_eq!(Version::negotiate(Some("2024-11-05")), Version::V2025_11_25);
        assert_eq!(Version::negotiate(Some("2026-07-28")), Version::V2025_11_25);
        assert_eq!(Version::negotiate(None), Version::V2025_11_25);
    }

    #[test]
    fn every_supported_version_round_trips_through_its_name_and_rmcp_constant() {
        for name in SUPPORTED_VERSIONS {
            let v = Version::parse(name).unwrap_or_else(|| unreachable!("{name}"));
            assert_eq!(v.as_str(), name);
            assert_eq!(v.protocol().to_string(), name);
        }
    }

    #[test]
    fn the_fast_envelope_reader_takes_what_the_tree_reader_takes_and_leaves_the_rest_to_it() {
        let cases = [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":"a\"b","method":"p\u0069ng"}"#,
            r#"{"method":"notifications/initialized","jsonrpc":"2.0"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","extra":{"x":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","_meta":{"progressToken":"p",
                "io.modelcontextprotocol/protocolVersion":"2026-07-28","other":[{"a":1}],
                "io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/logLevel":"debug"}}}"#,
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3,"_meta":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"n\u0061me":"x","_meta":{"progressToken":1}}}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":null}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":3}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            r#" ["2.0", 1, "ping"]"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping""#,
        ];
        let fast: Vec<bool> = cases.iter().map(|c| Incoming::from_slice(c.as_bytes()).is_some()).collect();
        assert_eq!(fast, [[true; 7].as_slice(), &[false; 12]].concat());
        for case in &cases[..7] {
            let fast = Incoming::from_slice(case.as_bytes()).unwrap_or_else(|| unreachable!());
            let tree =
                Incoming::parse(serde_json::from_str(case).unwrap_or_default()).unwrap_or_else(|_| unreachable!());
            assert_eq!(format!("{fast:?}"), format!("{tree:?}"), "{case}");
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_left_to_the_tree_reader_even_in_a_member_nobody_reads() {
        let body = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"extra\":{\"\xff\":1}}";
        assert!(Incoming::from_slice(body).is_none());
        assert!(serde_json::from_slice::<Value>(body).is_err());
    }

    #[test]
    fn meta_is_read_out_of_the_params_by_both_readers() {
        let Some(Incoming::Request { params, meta, .. }) = Incoming::from_slice(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1},
                "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","progressToken":7,
                "io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/logLevel":"info"}}}"#,
        ) else {
            unreachable!()
        };
        assert_eq!(params, Some(json!({"name": "x", "arguments": {"a": 1}})));
        assert_eq!(stateless_version(&meta), Ok(Version::V2026_07_28));
        assert_eq!(progress_token(&meta), Some(json!(7)));
        assert_eq!(requested_log_level(&meta), Some(LogLevel::Info));
        // `_meta` that is not an object says nothing; the rest of the params stay.
        let tree = json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"n": 1, "_meta": 5}});
        let Ok(Incoming::Request { params, meta, .. }) = Incoming::parse(tree) else { unreachable!() };
        assert_eq!((params, meta), (Some(json!({"n": 1})), Meta::default()));
    }

    #[test]
    fn the_envelope_is_checked_before_anything_else() {
        assert!(matches!(
            Incoming::parse(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
            Ok(Incoming::Request { .. })
        ));
        assert!(matches!(Incoming::parse(json!({"jsonrpc": "2.0", "method": "x"})), Ok(Incoming::Notification { .. })));
        for bad in [
            json!([]),
            json!({"id": 1, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 3}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": 3}),
        ] {
            let Err((_, e)) = Incoming::parse(bad.clone()) else { unreachable!("{bad} parsed") };
            assert_eq!(e.code, -32600, "{bad}");
        }
    }

    #[test]
    fn stateless_requests_need_their_version_and_capabilities_in_meta() {
        let meta_of = |params: Value| Meta::take_from(&mut Some(params));
        let ok = meta_of(json!({"_meta": {meta::PROTOCOL_VERSION: "2026-07-28", meta::CLIENT_CAPABILITIES: {}}}));
        assert_eq!(stateless_version(&ok), Ok(Version::V2026_07_28));
        let missing_caps = meta_of(json!({"_meta": {meta::PROTOCOL_VERSION: "2026-07-28"}}));
        assert_eq!(stateless_version(&missing_caps).map_err(|e| e.code), Err(-32602));
        let future = meta_of(json!({"_meta": {meta::PROTOCOL_VERSION: "2099-01-01", meta::CLIENT_CAPABILITIES: {}}}));
        assert_eq!(stateless_version(&future).map_err(|e| e.code), Err(-32022));
        let not_text = meta_of(json!({"_meta": {meta::PROTOCOL_VERSION: 20260728, meta::CLIENT_CAPABILITIES: {}}}));
        assert!(not_text.protocol_version.is_some(), "a version of the wrong type still marks the request stateless");
        assert_eq!(stateless_version(&not_text).map_err(|e| e.code), Err(-32602));
    }

    fn tool_result(prefix: &str, structured: Option<Value>, is_error: bool) -> ToolResult {
        ToolResult {
            text_prefix: prefix.into(),
            structured_content: structured.as_ref().map(Json::of),
            extra_content: Vec::new(),
            is_error,
        }
    }

    fn parsed(j: &Json) -> Value {
        serde_json::from_str(j.as_str()).unwrap_or_else(|e| unreachable!("{e}: {j}"))
    }

    #[test]
    fn a_tool_result_carries_its_output_as_structured_content_and_as_text() {
        let output = json!({"name": "a \"quoted\" name", "n": 1.5, "list": [1, 2]});
        let r = parsed(&call_tool_reply(Version::V2025_11_25, &tool_result("", Some(output.clone()), false)));
        assert_eq!(r["structuredContent"], output);
        assert_eq!(r["content"][0]["type"], "text");
        let text = r["content"][0]["text"].as_str().unwrap_or_default();
        assert_eq!(serde_json::from_str::<Value>(text).ok(), Some(output));
        assert_eq!(r["isError"], false);
        assert!(r.get("resultType").is_none() && r.get("_meta").is_none());
    }

    #[test]
    fn warnings_precede_the_text_and_failures_are_text_only() {
        let r = parsed(&call_tool_reply(Version::V2025_06_18, &tool_result("Warning: old.\n", Some(json!({})), false)));
        assert_eq!(r["content"][0]["text"], "Warning: old.\n{}");
        let r = parsed(&call_tool_reply(Version::V2025_06_18, &tool_result("Error (busy): try later", None, true)));
        assert_eq!(r, json!({"content": [{"type": "text", "text": "Error (busy): try later"}], "isError": true}));
    }

    #[test]
    fn stateless_tool_results_say_who_answered() {
        let r = parsed(&call_tool_reply(Version::V2026_07_28, &tool_result("", Some(json!({"a": 1})), false)));
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["_meta"][meta::SERVER_INFO]["name"], "mcp-raspi");
        assert!(r.get("ttlMs").is_none(), "tool results are not cacheable");
    }

    #[test]
    fn responses_splice_the_result_and_write_errors_with_their_data() {
        let ok = parsed(&response(&json!("r-1"), Ok(Json::of(&json!({"x": [1]})))));
        assert_eq!(ok, json!({"jsonrpc": "2.0", "id": "r-1", "result": {"x": [1]}}));
        let e = RpcError::invalid_params("bad").data(json!({"why": "test"}));
        let err = parsed(&response(&json!(7), Err(e)));
        assert_eq!(
            err,
            json!({"jsonrpc": "2.0", "id": 7, "error": {"code": -32602, "message": "bad", "data": {"why": "test"}}})
        );
        assert_eq!(parsed(&batch_response(&[Json::of(&1), Json::of(&2)])), json!([1, 2]));
    }

    #[test]
    fn stateless_results_carry_result_type_and_cache_hints_and_older_ones_do_not() {
        let r = finish(Version::V2026_07_28, "tools/list", json!({"tools": [], "resultType": "complete"}));
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["cacheScope"], "private");
        assert!(r["_meta"][meta::SERVER_INFO]["name"].is_string());
        let r = finish(Version::V2025_06_18, "tools/call", json!({"content": [], "resultType": "complete"}));
        assert!(r.get("resultType").is_none());
    }
}
