//! `logs.*`: the server's own application and audit logs, read back with filters.

use std::time::SystemTime;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::system::read_only_spec;
use super::{Cx, Tool, ToolError, ToolSpec};
use crate::config::{LogLevel, Role};
use crate::logs::{read_recent, LogFilter};

/// Parses `since`/`until`: an RFC 3339 time or a duration before now such as `15m`, `2h`, `7d`.
pub fn parse_time(arg: &str, value: &str) -> Result<SystemTime, ToolError> {
    if let Ok(t) = humantime::parse_rfc3339_weak(value) {
        return Ok(t);
    }
    match humantime::parse_duration(value) {
        Ok(d) => Ok(SystemTime::now().checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH)),
        Err(_) => Err(ToolError::invalid_argument(format!(
            "argument `{arg}`: {value:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration before now (30m, 2h, 7d)"
        ))),
    }
}

fn check_limit(limit: usize) -> Result<usize, ToolError> {
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ToolError::invalid_argument(format!("argument `limit`: {limit} is outside 1 to 1000")))
    }
}

fn default_limit() -> usize {
    100
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppLogArguments {
    /// Minimum level: trace, debug, info, warn or error.
    pub level: Option<LogLevel>,
    /// Only entries at or after this time: RFC 3339, or a duration before now (`30m`, `2h`, `7d`).
    pub since: Option<String>,
    /// Only entries before this time, in the same forms as `since`.
    pub until: Option<String>,
    /// Only entries containing this text (case-insensitive).
    pub text: Option<String>,
    /// Most entries to return, 1 to 1000 (default 100).
    #[serde(default = "default_limit")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LogEntries {
    /// Matching entries, newest first.
    pub entries: Vec<Map<String, Value>>,
    /// Number of entries returned.
    pub count: usize,
    /// The log file read (its rotated copies too).
    pub source: String,
}

fn read(path: &std::path::Path, backups: u32, filter: &LogFilter, limit: usize) -> Result<LogEntries, ToolError> {
    let entries = read_recent(path, backups, filter, limit)
        .map_err(|e| ToolError::unavailable(format!("cannot read {}: {e}", path.display())))?
        .into_iter()
        .filter_map(|v| match v {
            Value::Object(o) => Some(o),
            _ => None,
        })
        .collect::<Vec<_>>();
    Ok(LogEntries { count: entries.len(), entries, source: path.display().to_string() })
}

/// Reads the application log for a tool or resource.
pub fn app_entries(cx: &Cx, filter: &LogFilter, limit: usize) -> Result<LogEntries, ToolError> {
    let logging = &cx.app.config.logging;
    read(&logging.app_path, logging.file.backup_count, filter, limit)
}

/// Reads the audit log for a tool or resource.
pub fn audit_entries(cx: &Cx, filter: &LogFilter, limit: usize) -> Result<LogEntries, ToolError> {
    // Records waiting for a grouped write are part of the log as the caller knows it.
    cx.app.audit.flush();
    let logging = &cx.app.config.logging;
    read(cx.app.audit.path(), logging.file.backup_count, filter, limit)
}

pub struct RecentAppLogs;

impl Tool for RecentAppLogs {
    type Input = AppLogArguments;
    type Output = LogEntries;
    const SPEC: ToolSpec = read_only_spec(
        "logs.get_recent_app_logs",
        "Recent server logs",
        "The newest entries of mcp-raspi's application log, filtered by minimum level, time window and text.",
    );

    async fn call(cx: Cx, args: AppLogArguments) -> Result<LogEntries, ToolError> {
        let filter = LogFilter {
            level: args.level,
            since: args.since.as_deref().map(|s| parse_time("since", s)).transpose()?,
            until: args.until.as_deref().map(|s| parse_time("until", s)).transpose()?,
            text: args.text,
            ..Default::default()
        };
        app_entries(&cx, &filter, check_limit(args.limit)?)
    }
}

/// How an audited call ended.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeFilter {
    Ok,
    Error,
    Denied,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditLogArguments {
    /// Only calls at or after this time: RFC 3339, or a duration before now (`30m`, `2h`, `7d`).
    pub since: Option<String>,
    /// Only calls before this time, in the same forms as `since`.
    pub until: Option<String>,
    /// Only calls of this tool, e.g. `gpio.write_pin`.
    pub tool: Option<String>,
    /// Only calls by this identity.
    pub identity: Option<String>,
    /// Only calls that ended this way.
    pub outcome: Option<OutcomeFilter>,
    /// Only records containing this text (case-insensitive).
    pub text: Option<String>,
    /// Most records to return, 1 to 1000 (default 100).
    #[serde(default = "default_limit")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: usize,
}

pub struct RecentAuditLogs;

impl Tool for RecentAuditLogs {
    type Input = AuditLogArguments;
    type Output = LogEntries;
    const SPEC: ToolSpec = ToolSpec {
        min_role: Role::Admin,
        ..read_only_spec(
            "logs.get_recent_audit_logs",
            "Recent audit records",
            "The newest audit records (one per tool call, denied calls included: time, identity, role, tool, redacted arguments, outcome, duration), filtered by time, tool, identity, outcome and text. Admin only.",
        )
    };

    async fn call(cx: Cx, args: AuditLogArguments) -> Result<LogEntries, ToolError> {
        let filter = LogFilter {
            since: args.since.as_deref().map(|s| parse_time("since", s)).transpose()?,
            until: args.until.as_deref().map(|s| parse_time("until", s)).transpose()?,
            text: args.text,
            tool: args.tool,
            identity: args.identity,
            outcome: args.outcome.map(|o| {
                match o {
                    OutcomeFilter::Ok => "ok",
                    OutcomeFilter::Error => "error",
                    OutcomeFilter::Denied => "denied",
                }
                .to_string()
            }),
            ..Default::default()
        };
        audit_entries(&cx, &filter, check_limit(args.limit)?)
    }
}
