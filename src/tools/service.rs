//! `service.*` and `logs.query_journal`: systemd units and their journal.
//!
//! Only the units on `services.allowed_units` can be read, controlled or have their journal
//! read — one rule for every tool, so a caller never learns about units it may not touch.
//! The list is checked here before the request goes to the ops agent, which alone can talk
//! to systemd and checks the list again.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::system::read_only_spec;
use super::{Cx, Deprecation, NoArguments, Tool, ToolError, ToolSpec};
use crate::config::Role;
use crate::ipc::{Request, Response};
use crate::platform::{JournalEntry, UnitAction, UnitName, UnitState};

const DEFAULT_JOURNAL_LINES: u32 = 100;
const MAX_JOURNAL_LINES: u32 = 1000;

fn unexpected(op: &str, response: &Response) -> ToolError {
    ToolError::internal(format!("unexpected answer from the ops agent to {op}: {}", response.kind()))
}

async fn unit_request(cx: &Cx, request: Request) -> Result<UnitState, ToolError> {
    let op = request.name();
    match cx.app.agent.call(request).await? {
        Response::Unit { state } => Ok(state),
        other => Err(unexpected(op, &other)),
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct UnitList {
    /// Each unit on services.allowed_units with its state, in the configuration's order.
    pub units: Vec<UnitState>,
}

pub struct List;

impl Tool for List {
    type Input = NoArguments;
    type Output = UnitList;
    const SPEC: ToolSpec = ToolSpec { blocking: false, ..read_only_spec(
        "service.list",
        "List services",
        "The systemd units this server may manage (services.allowed_units), each with its load, active and sub state, description and whether it is enabled.",
    ) };

    async fn call(cx: Cx, _: NoArguments) -> Result<UnitList, ToolError> {
        match cx.app.agent.call(Request::ServiceList).await? {
            Response::Units { units } => Ok(UnitList { units }),
            other => Err(unexpected("service_list", &other)),
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitArguments {
    /// A unit on services.allowed_units, e.g. `nginx.service`; a name without a suffix means
    /// `.service`.
    pub unit: UnitName,
}

pub struct GetStatus;

impl Tool for GetStatus {
    type Input = UnitArguments;
    type Output = UnitState;
    const SPEC: ToolSpec = ToolSpec { blocking: false, ..read_only_spec(
        "service.get_status",
        "Service status",
        "One unit's load, active and sub state, description and whether it is enabled. Only units on services.allowed_units can be read, as with every service tool: one list says which units callers may see and touch.",
    ) };

    async fn call(cx: Cx, args: UnitArguments) -> Result<UnitState, ToolError> {
        cx.app.config.services.check_unit(&args.unit)?;
        unit_request(&cx, Request::ServiceStatus { unit: args.unit }).await
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct UnitChange {
    /// What was done: `start`, `stop`, `restart`, `enable` or `disable`.
    pub action: UnitAction,
    /// The unit's state afterwards.
    pub state: UnitState,
}

async fn control(cx: &Cx, unit: UnitName, action: UnitAction) -> Result<UnitChange, ToolError> {
    cx.app.config.services.check_unit(&unit)?;
    let state = unit_request(cx, Request::ServiceControl { unit, action }).await?;
    Ok(UnitChange { action, state })
}

/// The declaration of a tool that changes a unit.
const fn control_spec(
    name: &'static str,
    title: &'static str,
    description: &'static str,
    destructive: bool,
    idempotent: bool,
) -> ToolSpec {
    ToolSpec {
        blocking: false,
        min_role: Role::Operator,
        read_only: false,
        destructive,
        idempotent,
        ..read_only_spec(name, title, description)
    }
}

pub struct Start;

impl Tool for Start {
    type Input = UnitArguments;
    type Output = UnitChange;
    const SPEC: ToolSpec = control_spec(
        "service.start",
        "Start a service",
        "Starts a unit on services.allowed_units (nothing happens if it runs already) and returns its state afterwards.",
        false,
        true,
    );

    async fn call(cx: Cx, args: UnitArguments) -> Result<UnitChange, ToolError> {
        control(&cx, args.unit, UnitAction::Start).await
    }
}

pub struct Stop;

impl Tool for Stop {
    type Input = UnitArguments;
    type Output = UnitChange;
    const SPEC: ToolSpec = control_spec(
        "service.stop",
        "Stop a service",
        "Stops a unit on services.allowed_units and returns its state afterwards. Whatever the unit provides is unavailable until it is started again.",
        true,
        true,
    );

    async fn call(cx: Cx, args: UnitArguments) -> Result<UnitChange, ToolError> {
        control(&cx, args.unit, UnitAction::Stop).await
    }
}

const RESTART_SPEC: ToolSpec = control_spec(
    "service.restart",
    "Restart a service",
    "Stops and starts a unit on services.allowed_units (starts it if it was stopped) and returns its state afterwards.",
    false,
    false,
);

pub struct Restart;

impl Tool for Restart {
    type Input = UnitArguments;
    type Output = UnitChange;
    const SPEC: ToolSpec = RESTART_SPEC;

    async fn call(cx: Cx, args: UnitArguments) -> Result<UnitChange, ToolError> {
        control(&cx, args.unit, UnitAction::Restart).await
    }
}

pub struct Enable;

impl Tool for Enable {
    type Input = UnitArguments;
    type Output = UnitChange;
    const SPEC: ToolSpec = control_spec(
        "service.enable",
        "Enable a service at boot",
        "Enables a unit on services.allowed_units so that it starts at boot (it is not started now) and returns its state afterwards.",
        false,
        true,
    );

    async fn call(cx: Cx, args: UnitArguments) -> Result<UnitChange, ToolError> {
        control(&cx, args.unit, UnitAction::Enable).await
    }
}

pub struct Disable;

impl Tool for Disable {
    type Input = UnitArguments;
    type Output = UnitChange;
    const SPEC: ToolSpec = control_spec(
        "service.disable",
        "Disable a service at boot",
        "Disables a unit on services.allowed_units so that it no longer starts at boot (it keeps running now) and returns its state afterwards.",
        true,
        true,
    );

    async fn call(cx: Cx, args: UnitArguments) -> Result<UnitChange, ToolError> {
        control(&cx, args.unit, UnitAction::Disable).await
    }
}

pub struct ForceRestart;

impl Tool for ForceRestart {
    type Input = UnitArguments;
    type Output = UnitChange;
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        name: "service.force_restart",
        title: "Restart a service (old name)",
        description: "service.restart under its old name: same arguments, same result.",
        deprecation: Some(Deprecation { replacement: "service.restart", since: "0.1.0", removal: "1.0.0" }),
        ..RESTART_SPEC
    };

    async fn call(cx: Cx, args: UnitArguments) -> Result<UnitChange, ToolError> {
        control(&cx, args.unit, UnitAction::Restart).await
    }
}

/// Checks the shape of a `since` value: `-N` then `h`, `m` or `d` (N of 1 to 6 digits),
/// `YYYY-MM-DD HH:MM:SS`, or RFC 3339 with an optional fraction and `Z` or an offset. The
/// agent parses it in full; this catches malformed values without a round trip.
fn check_since(s: &str) -> Result<(), ToolError> {
    let invalid = || {
        ToolError::invalid_argument(format!(
            "argument `since`: {s:?} is not a time: use RFC 3339 (2024-05-01T12:00:00Z), \"YYYY-MM-DD HH:MM:SS\", \
             or -Nh, -Nm, -Nd for a time before now"
        ))
    };
    let digits = |t: &[u8]| !t.is_empty() && t.iter().all(u8::is_ascii_digit);
    let b = s.as_bytes();
    if let Some(rest) = s.strip_prefix('-') {
        let (n, unit) = rest.as_bytes().split_at(rest.len().saturating_sub(1));
        return if digits(n) && n.len() <= 6 && matches!(unit, b"h" | b"m" | b"d") { Ok(()) } else { Err(invalid()) };
    }
    let shape = b"dddd-dd-ddxdd:dd:dd";
    let date_time = b.len() >= shape.len()
        && shape.iter().zip(b).all(|(want, got)| match want {
            b'd' => got.is_ascii_digit(),
            b'x' => *got == b' ' || *got == b'T',
            _ => want == got,
        });
    if !date_time {
        return Err(invalid());
    }
    let mut rest = &b[shape.len()..];
    if b[10] == b' ' {
        return if rest.is_empty() { Ok(()) } else { Err(invalid()) };
    }
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return Err(invalid());
        }
        rest = &fraction[n..];
    }
    let offset =
        |z: &[u8]| z.len() == 6 && matches!(z[0], b'+' | b'-') && digits(&z[1..3]) && z[3] == b':' && digits(&z[4..6]);
    if rest == b"Z" || offset(rest) {
        Ok(())
    } else {
        Err(invalid())
    }
}

fn check_lines(lines: u32) -> Result<(), ToolError> {
    if (1..=MAX_JOURNAL_LINES).contains(&lines) {
        Ok(())
    } else {
        Err(ToolError::invalid_argument(format!("argument `lines`: {lines} is outside 1 to {MAX_JOURNAL_LINES}")))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JournalArguments {
    /// A unit on services.allowed_units, e.g. `nginx.service`; a name without a suffix means
    /// `.service`.
    pub unit: UnitName,
    /// How many of the newest entries to return, 1 to 1000 (default 100).
    #[serde(default = "default_lines")]
    #[schemars(range(min = 1, max = 1000))]
    pub lines: u32,
    /// Only entries from this time on: RFC 3339 (`2024-05-01T12:00:00Z`), `YYYY-MM-DD HH:MM:SS`
    /// in the Pi's local time, or `-Nh`, `-Nm`, `-Nd` for N hours, minutes or days ago.
    #[serde(default)]
    pub since: Option<String>,
}

fn default_lines() -> u32 {
    DEFAULT_JOURNAL_LINES
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct JournalResult {
    pub unit: String,
    /// How many entries were returned.
    pub count: usize,
    /// The newest entries, oldest first.
    pub entries: Vec<JournalEntry>,
}

pub struct QueryJournal;

impl Tool for QueryJournal {
    type Input = JournalArguments;
    type Output = JournalResult;
    // Operator rather than viewer: service logs can hold details (paths, addresses, user
    // names) that a read-only dashboard token has no need for.
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        min_role: Role::Operator,
        ..read_only_spec(
            "logs.query_journal",
            "Query a service's journal",
            "The newest systemd journal entries of a unit on services.allowed_units, optionally only those since a time, each with time, priority and message.",
        )
    };

    async fn call(cx: Cx, args: JournalArguments) -> Result<JournalResult, ToolError> {
        check_lines(args.lines)?;
        if let Some(since) = &args.since {
            check_since(since)?;
        }
        cx.app.config.services.check_unit(&args.unit)?;
        let unit = args.unit.to_string();
        let request = Request::JournalQuery { unit: args.unit, lines: args.lines, since: args.since };
        match cx.app.agent.call(request).await? {
            Response::Journal { entries } => Ok(JournalResult { unit, count: entries.len(), entries }),
            other => Err(unexpected("journal_query", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn since_accepts_the_three_documented_forms() {
        for ok in [
            "-1h",
            "-30m",
            "-999999d",
            "2024-05-01 12:00:00",
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00.250Z",
            "2024-05-01T14:00:00+02:00",
            "2024-05-01T10:30:00-01:30",
        ] {
            assert!(check_since(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn since_refuses_anything_else() {
        for bad in [
            "",
            "-",
            "-h",
            "-1",
            "-1w",
            "-1234567h",
            "--help",
            "yesterday",
            "2024-05-01",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00.1234567890Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01T12:00:00+02:00 ",
            "2024-05-01x12:00:00Z",
            "２０２４-05-01T12:00:00Z",
        ] {
            let e = check_since(bad).unwrap_err();
            assert_eq!(e.code, "invalid_argument", "{bad}");
            assert!(e.message.contains("is not a time"), "{bad}");
        }
    }

    #[test]
    fn journal_lines_are_one_to_a_thousand() {
        assert!(check_lines(1).is_ok());
        assert!(check_lines(1000).is_ok());
        assert!(check_lines(0).is_err());
        assert!(check_lines(1001).unwrap_err().message.contains("outside 1 to 1000"));
    }

    #[test]
    fn stop_and_disable_are_the_destructive_service_changes() {
        for spec in [&Start::SPEC, &Stop::SPEC, &Restart::SPEC, &Enable::SPEC, &Disable::SPEC, &ForceRestart::SPEC] {
            assert_eq!(spec.min_role, Role::Operator, "{}", spec.name);
            assert!(!spec.read_only, "{}", spec.name);
            assert_eq!(spec.destructive, matches!(spec.name, "service.stop" | "service.disable"), "{}", spec.name);
        }
        let d = ForceRestart::SPEC.deprecation.unwrap();
        assert_eq!((d.replacement, d.since, d.removal), ("service.restart", "0.1.0", "1.0.0"));
    }
}
