//! The tool catalogue: every tool is declared once, as one `impl Tool`, and everything
//! else — `tools/list`, argument checking, role checks, audit, the capability report and
//! `docs/TOOLS.md` — derives from that declaration.

mod app;
mod bus;
mod camera;
mod config_deploy;
mod docs;
mod gpio;
mod i2c;
mod logs;
mod manage;
mod metrics;
mod os;
mod power;
mod process;
mod schema;
mod service;
mod system;
mod update;

pub use schema::{schema_for, Side};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use rmcp::model::{ContentBlock, JsonObject, ToolAnnotations};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::audit::{self, Outcome, Record};
use crate::auth::Identity;
use crate::config::Role;
use crate::mcp::{Json, Progress};
use crate::telemetry::ToolOutcome;

pub use app::App;
pub use docs::tools_markdown;
pub use logs::{app_entries, audit_entries};
pub use metrics::snapshot as metrics_snapshot;
pub use process::detail as process_detail;
pub use system::{system_info, SampleArguments, StaticInfo};
pub use update::update;

/// How settled a tool's interface is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Maturity {
    /// Covered by the compatibility promise.
    Stable,
    /// Complete, may still change in a minor release.
    Beta,
    /// Hidden from tools/list until enabled under `experimental_features`.
    Experimental,
}

/// A tool kept for old clients, and what to use instead.
#[derive(Clone, Copy, Debug, Serialize, JsonSchema)]
pub struct Deprecation {
    /// The tool to call instead.
    pub replacement: &'static str,
    /// The version that deprecated it.
    pub since: &'static str,
    /// The version that will remove it.
    pub removal: &'static str,
}

/// Everything about a tool except its types and code.
#[derive(Debug)]
pub struct ToolSpec {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// Version of the tool's interface, bumped when its schemas change.
    pub version: &'static str,
    pub min_role: Role,
    pub maturity: Maturity,
    pub deprecation: Option<Deprecation>,
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    /// True when the tool reaches beyond this machine.
    pub open_world: bool,
    /// True when the handler does blocking work itself (reads /proc, /sys or files, scans
    /// directories): it runs on the blocking pool, so that it never holds up the async
    /// workers that serve every other request. Tools that only ask the ops agent do not.
    /// Such a handler must not wait for another blocking job (`spawn_blocking`,
    /// `tokio::fs`): the pool is small, and a pool full of waiting handlers would not drain.
    pub blocking: bool,
}

/// A tool failure a model can act on: a short code and a sentence saying what to do.
#[derive(Debug, Clone)]
pub struct ToolError {
    pub code: &'static str,
    pub message: String,
}

impl ToolError {
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        ToolError { code: "invalid_argument", message: message.into() }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ToolError { code: "not_found", message: message.into() }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ToolError { code: "unavailable", message: message.into() }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ToolError { code: "internal", message: message.into() }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        ToolError { code: "permission_denied", message: message.into() }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<crate::host::HostError> for ToolError {
    fn from(e: crate::host::HostError) -> Self {
        match e {
            crate::host::HostError::NotFound { .. } => ToolError::not_found(e.to_string()),
            _ => ToolError::unavailable(e.to_string()),
        }
    }
}

/// An ops agent failure, with the code a model can act on.
impl From<crate::agent_client::AgentError> for ToolError {
    fn from(e: crate::agent_client::AgentError) -> ToolError {
        let message = e.to_string();
        match e {
            crate::agent_client::AgentError::Remote { code: crate::ipc::ErrorCode::Denied, .. } => {
                ToolError::forbidden(message)
            }
            crate::agent_client::AgentError::Remote {
                code: crate::ipc::ErrorCode::Invalid | crate::ipc::ErrorCode::BadRequest,
                ..
            } => ToolError::invalid_argument(message),
            crate::agent_client::AgentError::Remote { code: crate::ipc::ErrorCode::Failed, .. } => {
                ToolError { code: "failed", message }
            }
            crate::agent_client::AgentError::Timeout(_)
            | crate::agent_client::AgentError::Remote { code: crate::ipc::ErrorCode::Timeout, .. } => {
                ToolError { code: "timeout", message }
            }
            _ => ToolError::unavailable(message),
        }
    }
}

/// A refusal of the configuration's allowlists, with the code the ops agent would answer
/// the same refusal with.
impl From<crate::config::Denied> for ToolError {
    fn from(d: crate::config::Denied) -> Self {
        match d.kind {
            crate::config::DenialKind::Forbidden => ToolError::forbidden(d.message),
            crate::config::DenialKind::Invalid => ToolError::invalid_argument(d.message),
        }
    }
}

/// Runs blocking work (reading /proc, /sys or files) on the blocking pool: a whole handler
/// marked [`ToolSpec::blocking`], or the reads of one that runs on the async workers because
/// it also waits (a sampling window), so that the wait holds no thread of the small pool.
pub async fn off_worker<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ToolError> + Send + 'static,
) -> Result<T, ToolError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ToolError::internal(format!("blocking work stopped: {e}")))?
}

/// What a tool handler receives besides its arguments.
#[derive(Clone)]
pub struct Cx {
    pub app: Arc<App>,
    pub identity: Identity,
    pub progress: Progress,
}

/// One tool: its declaration, argument and result types, and handler.
pub trait Tool: Send + Sync + 'static {
    type Input: DeserializeOwned + JsonSchema + Send;
    type Output: Serialize + JsonSchema;
    const SPEC: ToolSpec;
    fn call(cx: Cx, input: Self::Input) -> impl Future<Output = Result<Self::Output, ToolError>> + Send + 'static;

    /// Content blocks shown besides the JSON text, such as an image of a capture.
    fn extra_content(_output: &Self::Output) -> Vec<ContentBlock> {
        Vec::new()
    }
}

/// A tool's answer before it becomes a [`ToolResult`].
pub struct Invoked {
    /// The output, serialized once: it is both the structured content and the text block.
    pub structured: Json,
    pub extra_content: Vec<ContentBlock>,
}

/// The answer of a tool call, the parts of MCP's `CallToolResult`: a text block (the
/// prefix followed by the structured content's JSON), the structured content kept as the
/// JSON it was serialized to, and further content blocks such as an image.
#[derive(Debug)]
pub struct ToolResult {
    /// Text before the JSON in the text block: a deprecation warning, or a failure's
    /// whole message.
    pub text_prefix: String,
    pub structured_content: Option<Json>,
    pub extra_content: Vec<ContentBlock>,
    pub is_error: bool,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The object-safe face of [`Tool`], so tools of different types share one list.
pub trait DynTool: Send + Sync {
    fn spec(&self) -> &'static ToolSpec;
    fn input_schema(&self) -> Value;
    fn output_schema(&self) -> Value;
    /// Parses `arguments` as [`invoke`](DynTool::invoke) does, without running the tool.
    fn check_arguments(&self, arguments: Value) -> Result<(), ToolError>;
    fn invoke(&self, cx: Cx, arguments: Value) -> BoxFuture<Result<Invoked, ToolError>>;
}

impl<T: Tool> DynTool for T {
    fn spec(&self) -> &'static ToolSpec {
        &T::SPEC
    }
    fn input_schema(&self) -> Value {
        schema_for::<T::Input>(Side::Input)
    }
    fn output_schema(&self) -> Value {
        schema_for::<T::Output>(Side::Output)
    }
    fn check_arguments(&self, arguments: Value) -> Result<(), ToolError> {
        parse_arguments::<T::Input>(arguments).map(drop)
    }
    fn invoke(&self, cx: Cx, arguments: Value) -> BoxFuture<Result<Invoked, ToolError>> {
        let input = parse_arguments::<T::Input>(arguments);
        Box::pin(async move {
            let output = T::call(cx, input?).await?;
            let extra_content = T::extra_content(&output);
            let structured = Json::with_capacity(&output, 1024);
            Ok(Invoked { structured, extra_content })
        })
    }
}

/// Every tool this build has, in catalogue order.
static TOOLS: &[&dyn DynTool] = &[
    &system::GetInfo,
    &system::GetHealthSnapshot,
    &system::GetCapabilities,
    &system::GetNetworkInfo,
    &power::Reboot,
    &power::Shutdown,
    &metrics::GetSnapshot,
    &metrics::QueryHistory,
    &metrics::GetStatus,
    &metrics::StartSampling,
    &metrics::StopSampling,
    &process::List,
    &process::GetInfo,
    &logs::RecentAppLogs,
    &logs::RecentAuditLogs,
    &service::QueryJournal,
    &service::List,
    &service::GetStatus,
    &service::Start,
    &service::Stop,
    &service::Restart,
    &service::Enable,
    &service::Disable,
    &service::ForceRestart,
    &gpio::ListPins,
    &gpio::ReadPin,
    &gpio::SetMode,
    &gpio::WritePin,
    &gpio::PwmEnable,
    &gpio::PwmDisable,
    &gpio::PwmStart,
    &i2c::ScanBus,
    &i2c::Read,
    &i2c::Write,
    &bus::SpiTransfer,
    &bus::UartRead,
    &bus::UartWrite,
    &camera::Capture,
    &camera::RecordVideo,
    &os::CheckUpdates,
    &os::ApplyUpdates,
    &manage::GetServerStatus,
    &config_deploy::CheckConfig,
    &config_deploy::DeployConfig,
    &update::UpdateServer,
    &update::Rollback,
    &update::ListVersions,
];

/// The names of all tools, experimental ones included.
pub fn tool_names() -> Vec<&'static str> {
    TOOLS.iter().map(|tool| tool.spec().name).collect()
}

/// Deserializes tool arguments, naming the argument at fault.
fn parse_arguments<T: DeserializeOwned>(arguments: Value) -> Result<T, ToolError> {
    let arguments = if arguments.is_null() { Value::Object(Default::default()) } else { arguments };
    if !arguments.is_object() {
        return Err(ToolError::invalid_argument("arguments must be a JSON object"));
    }
    serde_path_to_error::deserialize(arguments).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            ToolError::invalid_argument(format!("invalid arguments: {inner}"))
        } else {
            ToolError::invalid_argument(format!("argument `{path}`: {inner}"))
        }
    })
}

/// A tool with its MCP listing computed once.
pub struct Entry {
    pub tool: &'static dyn DynTool,
    /// The tool as `tools/list` shows it (name, description, schemas, annotations), kept as
    /// its JSON text: the 45 listings are 120 KB of text, where as `serde_json` trees they
    /// held about a megabyte of the server's memory for as long as it ran.
    pub listed: Json,
}

/// The catalogue of tools, with listings computed once at start.
pub struct Catalogue {
    entries: Vec<Entry>,
}

fn as_object(v: Value) -> Arc<JsonObject> {
    Arc::new(match v {
        Value::Object(o) => o,
        _ => JsonObject::new(),
    })
}

impl Catalogue {
    pub fn new() -> Catalogue {
        let entries = TOOLS
            .iter()
            .map(|tool| {
                let spec = tool.spec();
                let annotations = ToolAnnotations::with_title(spec.title)
                    .read_only(spec.read_only)
                    .destructive(spec.destructive)
                    .idempotent(spec.idempotent)
                    .open_world(spec.open_world);
                let mut description = spec.description.to_string();
                if let Some(d) = spec.deprecation {
                    description = format!(
                        "DEPRECATED since {}: use {} instead (removal in {}). {description}",
                        d.since, d.replacement, d.removal
                    );
                }
                let listed = rmcp::model::Tool::new(spec.name, description, as_object(tool.input_schema()))
                    .with_title(spec.title)
                    .with_raw_output_schema(as_object(tool.output_schema()))
                    .with_annotations(annotations);
                // Through a `Value`, whose members are sorted, as every other answer's are.
                let listed = Json::of(&serde_json::to_value(&listed).unwrap_or_default()).shrunk();
                Entry { tool: *tool, listed }
            })
            .collect();
        Catalogue { entries }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.find(name).map(|(_, e)| e)
    }

    /// The tool `name` with its index in the catalogue (which is [`tool_names`]' order).
    fn find(&self, name: &str) -> Option<(usize, &Entry)> {
        self.entries.iter().enumerate().find(|(_, e)| e.tool.spec().name == name)
    }

    /// Calls a tool for `cx.identity`: checks the role, parses the arguments, runs the
    /// handler and writes the audit record. `None` when there is no such tool (audited too).
    pub async fn call(
        &self,
        cx: Cx,
        request_id: &Value,
        transport: &str,
        name: &str,
        arguments: Value,
    ) -> Option<ToolResult> {
        let started = Instant::now();
        let audited_args = audit::summarize(&arguments);
        let Some((index, entry)) = self.find(name) else {
            cx.app.telemetry.tool_call(None, ToolOutcome::Error, started.elapsed());
            cx.app.audit.write(&Record {
                time: std::time::SystemTime::now(),
                request_id,
                identity: &cx.identity.name,
                role: Some(cx.identity.role),
                transport,
                tool: name,
                arguments: audited_args,
                outcome: Outcome::Error,
                error_code: Some("unknown_tool"),
                error: Some("no such tool"),
                duration_ms: audit::millis(started.elapsed()),
                deprecated: false,
                peer: None,
            });
            return None;
        };
        let spec = entry.tool.spec();
        let identity = cx.identity.clone();
        let app = cx.app.clone();
        let result = if identity.role < spec.min_role {
            Err(ToolError::forbidden(format!(
                "{name} needs the {} role; you are {} with role {}. Ask an administrator for a token with that role.",
                spec.min_role, identity.name, identity.role
            )))
        } else if !app.tool_enabled(spec) {
            // The spec's feature name, when the tool belongs to one, is what an operator expects to write.
            let feature = crate::config::FEATURES.iter().find(|f| f.tools.contains(&name)).map(|f| f.name);
            let entry = match feature {
                Some(feature) => format!("{feature:?} (or {name:?})"),
                None => format!("{name:?}"),
            };
            Err(ToolError::forbidden(format!(
                "{name} is experimental and not enabled on this server: an administrator enables it under \
                 experimental_features (enabled: true, and a feature {entry} with acknowledged_risks: true)"
            )))
        } else if spec.blocking {
            let (tool, runtime) = (entry.tool, tokio::runtime::Handle::current());
            off_worker(move || runtime.block_on(tool.invoke(cx, arguments))).await
        } else {
            entry.tool.invoke(cx, arguments).await
        };
        let (outcome, error) = match &result {
            Ok(_) => (Outcome::Ok, None),
            Err(e) if e.code == "permission_denied" => (Outcome::Denied, Some(e)),
            Err(e) => (Outcome::Error, Some(e)),
        };
        let counted = match outcome {
            Outcome::Ok => ToolOutcome::Ok,
            Outcome::Error => ToolOutcome::Error,
            Outcome::Denied => ToolOutcome::Denied,
        };
        app.telemetry.tool_call(Some(index), counted, started.elapsed());
        app.audit.with(audit::urgency(outcome, spec.read_only)).write(&Record {
            time: std::time::SystemTime::now(),
            request_id,
            identity: &identity.name,
            role: Some(identity.role),
            transport,
            tool: name,
            arguments: audited_args,
            outcome,
            error_code: error.map(|e| e.code),
            error: error.map(|e| e.message.as_str()),
            duration_ms: audit::millis(started.elapsed()),
            deprecated: spec.deprecation.is_some(),
            peer: None,
        });
        Some(match result {
            Ok(Invoked { structured, extra_content }) => ToolResult {
                text_prefix: spec
                    .deprecation
                    .map(|d| {
                        format!(
                            "Warning: {name} is deprecated since {} and will be removed in {}; use {} instead.\n",
                            d.since, d.removal, d.replacement
                        )
                    })
                    .unwrap_or_default(),
                structured_content: Some(structured),
                extra_content,
                is_error: false,
            },
            Err(e) => ToolResult {
                text_prefix: format!("Error ({}): {}", e.code, e.message),
                structured_content: None,
                extra_content: Vec::new(),
                is_error: true,
            },
        })
    }
}

impl Default for Catalogue {
    fn default() -> Self {
        Self::new()
    }
}

/// Arguments of a tool that takes none.
#[derive(Debug, Default, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArguments {}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{CameraConfig, GpioConfig};
    use crate::platform::{PinMode, PinNumber};

    #[test]
    fn an_allowlist_refusal_is_permission_denied_and_a_limit_invalid_argument_in_the_same_words() {
        let denied = GpioConfig::default().check_mode(PinNumber::new(5).unwrap(), PinMode::Output).unwrap_err();
        let e = ToolError::from(denied.clone());
        assert_eq!((e.code, e.message), ("permission_denied", denied.message));
        let denied = CameraConfig::default().check_size(0, 480).unwrap_err();
        let e = ToolError::from(denied.clone());
        assert_eq!((e.code, e.message), ("invalid_argument", denied.message));
    }

    #[test]
    fn every_tool_a_feature_turns_on_is_an_experimental_tool_of_the_catalogue() {
        let catalogue = Catalogue::new();
        for feature in crate::config::FEATURES {
            for tool in feature.tools {
                let spec = catalogue.get(tool).map(|e| e.tool.spec());
                assert_eq!(spec.map(|s| s.maturity), Some(Maturity::Experimental), "{}: {tool}", feature.name);
            }
            assert!(catalogue.get(feature.name).is_none(), "{} is also a tool name", feature.name);
        }
    }
}
