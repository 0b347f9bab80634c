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
mod incoming;
pub mod json;
mod session;
pub mod stdio;
mod throttle;

use std::sync::Arc;

use rmcp::model::{
    ErrorCode, Implementation, InitializeResult, PromptsCapability, ProtocolVersion, ResourcesCapability,
    ServerCapabilities, ToolsCapability,
};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::auth::Identity;
use crate::base::LogLevel;
use crate::tools::App;
use crate::tools::{Cx, ToolResult};

pub use incoming::{progress_token, requested_log_level, stateless_version, Incoming, Meta};
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

#[cfg(test)]
mod tests;
