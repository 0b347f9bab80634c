//! The audit trail: one JSON line per tool call, denied calls included, kept apart from the
//! application log so that it can be shipped and retained on its own terms.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Role;
use crate::logs::GroupedFile;

pub use crate::logs::Urgency;

/// Replaces the value of every argument whose name looks like a secret.
pub fn redact(arguments: &Value) -> Value {
    const SECRET_WORDS: [&str; 7] = ["token", "secret", "password", "passwd", "key", "credential", "authorization"];
    match arguments {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    if SECRET_WORDS.iter().any(|w| lower.contains(w)) {
                        (k.clone(), Value::String("[redacted]".into()))
                    } else {
                        (k.clone(), redact(v))
                    }
                })
                .collect::<Map<_, _>>(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Error,
    Denied,
}

/// One audit record.
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
    pub tool: &'a str,
    pub arguments: Value,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    pub duration_ms: f64,
    pub deprecated: bool,
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
}

impl AuditLog {
    /// Opens (creating) the audit log; `write_delay` is how long a record may wait.
    pub fn open(path: &Path, max_bytes: u64, backups: u32, write_delay: Duration) -> std::io::Result<AuditLog> {
        Ok(AuditLog { file: GroupedFile::open("audit", path, max_bytes, backups, write_delay)? })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
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

    /// Writes every record waiting, and returns once they are in the file.
    pub fn flush(&self) {
        if let Err(e) = self.file.flush() {
            log::error!("cannot write the audit log {}: {e}", self.file.path().display());
        }
    }
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
        // Records are a few hundred bytes: one buffer of that size, written to once.
        let mut line = Vec::with_capacity(512);
        match serde_json::to_writer(crate::mcp::json::Appender(&mut line), record) {
            Ok(()) => {
                if let Err(e) = self.log.file.write_line(&line, self.urgency) {
                    log::error!("cannot write the audit log {}: {e}", self.log.path().display());
                }
            }
            Err(e) => log::error!("cannot encode an audit record: {e}"),
        }
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
        Value::String(text) => s.serialize_str(text),
        other => s.collect_str(other),
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
    fn with_no_delay_every_record_is_written_before_write_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, u64::MAX, 1, Duration::ZERO).unwrap();
        log.with(Urgency::MayWait).write(&record("system.get_info", Outcome::Ok));
        assert_eq!(tools_in(&path), ["system.get_info"]);
    }

    #[test]
    fn secrets_are_redacted_at_any_depth_and_other_arguments_are_kept() {
        let got =
            redact(&json!({"pin": 17, "api_token": "abc", "nested": {"Password": "x", "list": [{"secret_key": 1}]}}));
        assert_eq!(
            got,
            json!({"pin": 17, "api_token": "[redacted]", "nested": {"Password": "[redacted]", "list": [{"secret_key": "[redacted]"}]}})
        );
    }
}
