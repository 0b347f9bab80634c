//! The audit trail: one JSON line per tool call, denied calls included, kept apart from the
//! application log so that it can be shipped and retained on its own terms.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::{json, Value};

use crate::base::clip;
use crate::config::Role;
use crate::logs::GroupedFile;

mod budget;
mod redact;

pub use crate::logs::Urgency;
pub use budget::{Budgets, Suppressed, Verdict};
pub use redact::{looks_like_secret, redact_text, summarize, REDACTED};

/// Longest tool name or request id kept whole in a record.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest error message kept whole in a record.
pub const MAX_ERROR_BYTES: usize = 512;
/// Longest error message kept in a compact record.
const COMPACT_ERROR_BYTES: usize = 128;

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Error,
    Denied,
}

/// One audit record. What the caller chose (the tool name, the request id, the arguments
/// and the error that echoes them) is bounded when written: a record stays a few kilobytes
/// at most, whatever was sent.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    /// The JSON-RPC id, written as a string whether the client sent a string or a number.
    #[serde(serialize_with = "id_text")]
    pub request_id: &'a Value,
    pub identity: &'a str,
    pub role: Option<Role>,
    pub transport: &'a str,
    #[serde(serialize_with = "name_text")]
    pub tool: &'a str,
    /// As [`summarize`] keeps them.
    pub arguments: Value,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "error_text")]
    pub error: Option<&'a str>,
    pub duration_ms: f64,
    pub deprecated: bool,
    /// The peer's address, for records of requests that carry no identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<&'a str>,
}

impl<'a> Record<'a> {
    /// The record without its arguments, for an identity over its audit budget.
    fn compact(&self, error: Option<&'a str>) -> Record<'a> {
        Record {
            time: self.time,
            request_id: self.request_id,
            identity: self.identity,
            role: self.role,
            transport: self.transport,
            tool: self.tool,
            arguments: json!({"[cut]": "over this identity's audit budget (logging.audit_budget_mb_per_hour)"}),
            outcome: self.outcome,
            error_code: self.error_code,
            error,
            duration_ms: self.duration_ms,
            deprecated: self.deprecated,
            peer: self.peer,
        }
    }
}

/// Whether the record of a call may wait to be written together with others: only a call
/// that succeeded and changed nothing. The record of a call that changes the system, or
/// is denied, or fails, is in the file before the call answers.
pub fn urgency(outcome: Outcome, read_only: bool) -> Urgency {
    if outcome == Outcome::Ok && read_only {
        Urgency::MayWait
    } else {
        Urgency::Immediate
    }
}

/// Writes audit records.
///
/// With a non-zero `logging.audit_write_delay_ms`, records that may wait are written
/// together by the `audit-writer` thread at most that delay after the first of them (group
/// commit: a burst of read-only calls costs one `write`); any other record is written
/// before its call answers, after every record waiting before it. Waiting records are
/// written by [`AuditLog::flush`], which the server calls before reading the log back and
/// when it stops (SIGTERM, SIGINT, end of stdin), and when the log is dropped. A process
/// that dies otherwise loses them: release builds abort on panic, which runs no `Drop`,
/// and neither do `SIGKILL` or a power cut. That window, at most the delay and only for
/// records of successful read-only calls, is the accepted price of group commit.
pub struct AuditLog {
    file: GroupedFile,
    budgets: Budgets,
}

impl AuditLog {
    /// Opens (creating) the audit log; `write_delay` is how long a record may wait. No
    /// identity's budget is limited: see [`AuditLog::with_budget`].
    pub fn open(path: &Path, max_bytes: u64, backups: u32, write_delay: Duration) -> std::io::Result<AuditLog> {
        Ok(AuditLog {
            file: GroupedFile::open("audit", path, max_bytes, backups, write_delay)?,
            budgets: Budgets::new(0),
        })
    }

    /// Limits each identity to `bytes_per_hour` of full records (0: no limit).
    pub fn with_budget(mut self, bytes_per_hour: u64) -> AuditLog {
        self.budgets = Budgets::new(bytes_per_hour);
        self
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Records that could not be written since the log was opened (each failure is also
    /// in the application log).
    pub fn unwritten_records(&self) -> u64 {
        self.file.lost_lines()
    }

    /// Appends a record before returning, after every record waiting before it. Audit
    /// failures are logged loudly but do not fail the call: the operator sees them in the
    /// application log and journald.
    pub fn write(&self, record: &Record<'_>) {
        self.with(Urgency::Immediate).write(record);
    }

    /// Writes with `urgency`: `log.with(urgency).write(&record)`.
    #[must_use = "nothing is written until `write` is called"]
    pub fn with(&self, urgency: Urgency) -> AuditWrite<'_> {
        AuditWrite { log: self, urgency }
    }

    /// Writes every record waiting, and the counts of records not written, and returns
    /// once they are in the file.
    pub fn flush(&self) {
        for (identity, suppressed) in self.budgets.drain() {
            self.write_summary(&identity, suppressed);
        }
        if let Err(e) = self.file.flush() {
            log::error!("cannot write the audit log {}: {e}", self.file.path().display());
        }
    }
}

impl AuditLog {
    /// The record of calls not written for `identity`, over its budget.
    fn write_summary(&self, identity: &str, suppressed: Suppressed) {
        let record = Record {
            time: SystemTime::now(),
            request_id: &Value::Null,
            identity,
            role: None,
            transport: "-",
            tool: "audit.suppressed",
            arguments: json!({
                "since": crate::logs::rfc3339(suppressed.since).to_string(),
                "calls": suppressed.calls,
                "why": "successful read-only calls over this identity's audit budget (logging.audit_budget_mb_per_hour), counted instead of written"
            }),
            outcome: Outcome::Ok,
            error_code: None,
            error: None,
            duration_ms: 0.0,
            deprecated: false,
            peer: None,
        };
        self.write_line(&encode(&record), Urgency::Immediate);
    }

    fn write_line(&self, line: &[u8], urgency: Urgency) {
        if let Err(e) = self.file.write_line(line, urgency) {
            log::error!("cannot write the audit log {}: {e}", self.path().display());
        }
    }
}

/// One record as a line (without its newline).
fn encode(record: &Record<'_>) -> Vec<u8> {
    // Records are a few hundred bytes: one buffer of that size, written to once.
    let mut line = Vec::with_capacity(512);
    if let Err(e) = serde_json::to_writer(crate::mcp::json::Appender(&mut line), record) {
        log::error!("cannot encode an audit record: {e}");
    }
    line
}

/// A write to the audit log with its urgency chosen, from [`AuditLog::with`].
pub struct AuditWrite<'a> {
    log: &'a AuditLog,
    urgency: Urgency,
}

impl AuditWrite<'_> {
    /// Appends a record, at once or (when the urgency allows) within the write delay.
    /// Failures are logged, as [`AuditLog::write`] does.
    pub fn write(self, record: &Record<'_>) {
        let line = encode(record);
        if line.is_empty() {
            return;
        }
        let urgent = self.urgency == Urgency::Immediate;
        // A compact record is about the full one less its arguments and most of its error.
        let compact_len = line.len().min(384);
        let (verdict, summary) =
            self.log.budgets.admit(record.identity, record.tool, line.len(), compact_len, urgent, Instant::now());
        if let Some(suppressed) = summary {
            self.log.write_summary(record.identity, suppressed);
        }
        match verdict {
            Verdict::Full => self.log.write_line(&line, self.urgency),
            Verdict::Compact => {
                let error = record.error.map(|e| crate::base::prefix(e, COMPACT_ERROR_BYTES));
                self.log.write_line(&encode(&record.compact(error)), self.urgency)
            }
            Verdict::Counted => {}
        }
    }
}

/// Writes a tool name bounded by [`MAX_NAME_BYTES`].
fn name_text<S: serde::Serializer>(name: &&str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&clip(name, MAX_NAME_BYTES))
}

/// Writes an error message bounded by [`MAX_ERROR_BYTES`].
fn error_text<S: serde::Serializer>(error: &Option<&str>, s: S) -> Result<S::Ok, S::Error> {
    match error {
        Some(e) => s.serialize_str(&clip(e, MAX_ERROR_BYTES)),
        None => s.serialize_none(),
    }
}

/// Milliseconds with microsecond precision, for `duration_ms`.
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Writes a time as [`crate::logs::timestamp`] does, without building a string first.
fn rfc3339_millis<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&crate::logs::rfc3339(*time))
}

/// Writes a JSON-RPC id as text: a string as it is, a number in its decimal form.
fn id_text<S: serde::Serializer>(id: &&Value, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Value::String(text) => s.serialize_str(&clip(text, MAX_NAME_BYTES)),
        other => s.collect_str(&clip(&other.to_string(), MAX_NAME_BYTES)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn record(tool: &'static str, outcome: Outcome) -> Record<'static> {
        Record {
            time: SystemTime::now(),
            request_id: Box::leak(Box::new(json!("1"))),
            identity: "admin",
            role: Some(Role::Admin),
            transport: "http",
            tool,
            arguments: json!({}),
            outcome,
            error_code: None,
            error: None,
            duration_ms: 0.1,
            deprecated: false,
            peer: None,
        }
    }

    fn tools_in(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["tool"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn records_write_the_time_in_rfc3339_and_the_request_id_as_text() {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        for (id, text) in [(json!(7), "7"), (json!("a\"b"), "a\"b"), (json!(-3), "-3")] {
            let r = Record { time: at, request_id: &id, ..record("system.get_info", Outcome::Ok) };
            let line: Value = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
            assert_eq!(line["request_id"], text);
            assert_eq!(line["time"], crate::logs::timestamp(at));
            assert_eq!(line["time"], "2023-11-14T22:13:20.123Z");
        }
    }

    #[test]
    fn only_successful_read_only_calls_may_wait() {
        assert_eq!(urgency(Outcome::Ok, true), Urgency::MayWait);
        assert_eq!(urgency(Outcome::Ok, false), Urgency::Immediate);
        for outcome in [Outcome::Error, Outcome::Denied] {
            assert_eq!(urgency(outcome, true), Urgency::Immediate);
            assert_eq!(urgency(outcome, false), Urgency::Immediate);
        }
    }

    #[test]
    fn a_denied_call_is_written_at_once_after_the_reads_waiting_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, u64::MAX, 1, Duration::from_secs(600)).unwrap();
        log.with(urgency(Outcome::Ok, true)).write(&record("system.get_info", Outcome::Ok));
        log.with(urgency(Outcome::Ok, true)).write(&record("metrics.get_snapshot", Outcome::Ok));
        assert!(tools_in(&path).is_empty(), "successful reads wait");
        log.with(urgency(Outcome::Denied, true)).write(&record("logs.get_recent_audit_logs", Outcome::Denied));
        assert_eq!(tools_in(&path), ["system.get_info", "metrics.get_snapshot", "logs.get_recent_audit_logs"]);
        log.with(urgency(Outcome::Ok, false)).write(&record("gpio.write_pin", Outcome::Ok));
        log.write(&record("no.such_tool", Outcome::Error));
        assert_eq!(tools_in(&path).len(), 5, "changes and unknown tools are written at once");
    }

    #[test]
    fn flush_writes_the_records_waiting_and_dropping_the_log_does_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, u64::MAX, 1, Duration::from_secs(600)).unwrap();
        log.with(Urgency::MayWait).write(&record("system.get_info", Outcome::Ok));
        assert!(tools_in(&path).is_empty());
        log.flush();
        assert_eq!(tools_in(&path), ["system.get_info"]);
        log.with(Urgency::MayWait).write(&record("process.list", Outcome::Ok));
        drop(log);
        assert_eq!(tools_in(&path), ["system.get_info", "process.list"]);
    }

    #[test]
    fn records_that_cannot_be_written_are_counted_whether_written_at_once_or_after_waiting() {
        // Every write to /dev/full fails with ENOSPC, as on a full disk.
        for delay in [Duration::ZERO, Duration::from_millis(1)] {
            let log = AuditLog::open(Path::new("/dev/full"), u64::MAX, 1, delay).unwrap();
            assert_eq!(log.unwritten_records(), 0);
            log.write(&record("gpio.write_pin", Outcome::Ok));
            for _ in 0..3 {
                log.with(Urgency::MayWait).write(&record("system.get_info", Outcome::Ok));
            }
            log.flush();
            assert_eq!(log.unwritten_records(), 4, "{delay:?}");
        }
    }

    #[test]
    fn with_no_delay_every_record_is_written_before_write_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, u64::MAX, 1, Duration::ZERO).unwrap();
        log.with(Urgency::MayWait).write(&record("system.get_info", Outcome::Ok));
        assert_eq!(tools_in(&path), ["system.get_info"]);
    }

    #[test]
    fn a_record_stays_small_whatever_the_caller_sent() {
        let key = "k".repeat(1_000_000);
        let id = json!("i".repeat(100_000));
        let error = format!("unknown field `{key}`");
        let tool = "t".repeat(100_000);
        let r = Record {
            request_id: &id,
            tool: &tool,
            arguments: summarize(&json!({ key.clone(): 1 })),
            error: Some(&error),
            ..record("x", Outcome::Error)
        };
        let line = encode(&r);
        assert!(line.len() < 2000, "{} bytes", line.len());
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert!(v["error"].as_str().unwrap().ends_with("[cut, 1000016 bytes]"), "{v}");
        assert!(v["tool"].as_str().unwrap().ends_with("[cut, 100000 bytes]"));
    }

    #[test]
    fn one_identity_over_its_budget_cannot_push_anothers_records_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // Rotation at 1 MiB with one backup, and a budget of 16 KiB an hour. Unbounded, the
        // viewer's 1000 records below would be 20 MB and rotate the admin's out.
        let log = AuditLog::open(&path, 1024 * 1024, 1, Duration::ZERO).unwrap().with_budget(16 * 1024);
        log.with(Urgency::Immediate).write(&Record { identity: "admin", ..record("gpio.set_mode", Outcome::Ok) });
        let big = summarize(&json!({ "k".repeat(10_000): "v".repeat(10_000) }));
        for i in 0..1000 {
            let outcome = if i % 2 == 0 { Outcome::Ok } else { Outcome::Denied };
            let urgency = urgency(outcome, true);
            log.with(urgency).write(&Record {
                identity: "viewer",
                arguments: big.clone(),
                ..record("process.list", outcome)
            });
        }
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(records[0]["tool"], "gpio.set_mode", "the admin's record is still in audit.log");
        let denied = records.iter().filter(|r| r["outcome"] == "denied").count();
        assert_eq!(denied, 500, "every denied call is recorded");
        let counted: u64 = records
            .iter()
            .filter(|r| r["tool"] == "audit.suppressed")
            .map(|r| r["arguments"]["calls"]["process.list"].as_u64().unwrap())
            .sum();
        let written_ok = records.iter().filter(|r| r["tool"] == "process.list" && r["outcome"] == "ok").count() as u64;
        assert_eq!(written_ok + counted, 500, "every successful call is written or counted");
        // The full records within the budget, compact ones for the denied calls past it.
        assert!(text.len() < 16 * 1024 + 500 * 400 + 4096, "{} bytes", text.len());
    }
}
