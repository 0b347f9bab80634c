//! The audit trail: one JSON line per tool call, denied calls included, kept apart from the
//! application log so that it can be shipped and retained on its own terms.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Role;
use crate::logs::{timestamp, RotatingFile};

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
    pub time: String,
    pub request_id: &'a str,
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

/// Writes audit records.
pub struct AuditLog {
    file: RotatingFile,
}

impl AuditLog {
    pub fn open(path: &Path, max_bytes: u64, backups: u32) -> std::io::Result<AuditLog> {
        Ok(AuditLog { file: RotatingFile::open(path, max_bytes, backups)? })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Appends a record. Audit failures are logged loudly but do not fail the call: the
    /// operator sees them in the application log and journald.
    pub fn write(&self, record: &Record<'_>) {
        // Records are a few hundred bytes: one buffer of that size, written to once.
        let mut line = Vec::with_capacity(512);
        match serde_json::to_writer(&mut line, record) {
            Ok(()) => {
                if let Err(e) = self.file.write_line(&line) {
                    log::error!("cannot write the audit log {}: {e}", self.file.path().display());
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

/// The current time as written in records.
pub fn now() -> String {
    timestamp(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
