//! Reads JSON-line log files back, newest first, without loading whole files: each file is
//! read backwards in blocks, so asking for the last 50 lines of a 50 MB log costs a few
//! kilobytes of reading.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

use super::backup_path;
use crate::base::LogLevel;

/// Which entries to return.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    /// Minimum level (app log entries only; audit entries have none).
    pub level: Option<LogLevel>,
    /// Entries at or after this time.
    pub since: Option<SystemTime>,
    /// Entries before this time.
    pub until: Option<SystemTime>,
    /// Case-insensitive text to find anywhere in the entry.
    pub text: Option<String>,
    /// Exact `tool` field (audit entries).
    pub tool: Option<String>,
    /// Exact `identity` field (audit entries).
    pub identity: Option<String>,
    /// Exact `outcome` field (audit entries).
    pub outcome: Option<String>,
}

impl LogFilter {
    fn accepts(&self, entry: &Value, raw: &str) -> bool {
        let field = |k: &str| entry.get(k).and_then(Value::as_str);
        if let Some(min) = self.level {
            let level = field("level").and_then(|l| serde_json::from_value::<LogLevel>(Value::String(l.into())).ok());
            if level.is_none_or(|l| l < min) {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = field("time").and_then(|t| humantime::parse_rfc3339_weak(t).ok()) else { return false };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t >= u) {
                return false;
            }
        }
        if let Some(text) = &self.text {
            if !raw.to_lowercase().contains(&text.to_lowercase()) {
                return false;
            }
        }
        let exact = |want: &Option<String>, key: &str| want.as_deref().is_none_or(|w| field(key) == Some(w));
        exact(&self.tool, "tool") && exact(&self.identity, "identity") && exact(&self.outcome, "outcome")
    }

    /// True when `entry` is older than `since`, so older files need not be read.
    fn before_window(&self, entry: &Value) -> bool {
        match (self.since, entry.get("time").and_then(Value::as_str)) {
            (Some(since), Some(t)) => humantime::parse_rfc3339_weak(t).is_ok_and(|t| t < since),
            _ => false,
        }
    }
}

/// Up to `limit` entries matching `filter` from `path` and its `backups` rotated files,
/// newest first. Lines that are not JSON objects are skipped.
pub fn read_recent(path: &Path, backups: u32, filter: &LogFilter, limit: usize) -> io::Result<Vec<Value>> {
    let mut out = Vec::new();
    for n in 0..=backups {
        let file_path = if n == 0 { path.to_path_buf() } else { backup_path(path, n) };
        let file = match File::open(&file_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut done = false;
        for_each_line_backwards(file, |line| {
            let Ok(entry) = serde_json::from_str::<Value>(line) else { return true };
            if !entry.is_object() {
                return true;
            }
            if filter.before_window(&entry) {
                done = true;
                return false;
            }
            if filter.accepts(&entry, line) {
                out.push(entry);
            }
            if out.len() >= limit {
                done = true;
                return false;
            }
            true
        })?;
        if done {
            break;
        }
    }
    Ok(out)
}

/// Calls `f` with each line from the end of the file; stops when `f` returns false.
fn for_each_line_backwards(mut file: File, mut f: impl FnMut(&str) -> bool) -> io::Result<()> {
    const BLOCK: u64 = 64 * 1024;
    let mut pos = file.seek(SeekFrom::End(0))?;
    // Bytes after the last newline seen so far (a partial line at the front of `tail`).
    let mut tail: Vec<u8> = Vec::new();
    while pos > 0 {
        let start = pos.saturating_sub(BLOCK);
        let mut block = vec![0u8; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&tail);
        pos = start;
        let mut end = block.len();
        while let Some(nl) = block[..end].iter().rposition(|&b| b == b'\n') {
            let line = &block[nl + 1..end];
            if !line.is_empty() && !f(&String::from_utf8_lossy(line)) {
                return Ok(());
            }
            end = nl;
        }
        tail = block[..end].to_vec();
    }
    if !tail.is_empty() {
        f(&String::from_utf8_lossy(&tail));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn write(path: &Path, lines: &[String]) {
        let mut f = File::create(path).unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }

    fn entry(i: usize, level: &str) -> String {
        format!(r#"{{"time":"2026-01-01T00:{:02}:00Z","level":"{level}","message":"event {i}"}}"#, i % 60)
    }

    #[test]
    fn recent_entries_come_newest_first_across_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        write(&backup_path(&path, 1), &(0..3).map(|i| entry(i, "info")).collect::<Vec<_>>());
        write(&path, &(3..6).map(|i| entry(i, "info")).collect::<Vec<_>>());
        let got = read_recent(&path, 2, &LogFilter::default(), 4).unwrap();
        let messages: Vec<&str> = got.iter().map(|e| e["message"].as_str().unwrap()).collect();
        assert_eq!(messages, ["event 5", "event 4", "event 3", "event 2"]);
    }

    #[test]
    fn filters_by_level_text_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let lines: Vec<String> =
            (0..10).map(|i| entry(i, if i % 2 == 0 { "warn" } else { "debug" })).chain(["not json".into()]).collect();
        write(&path, &lines);
        let filter = LogFilter {
            level: Some(LogLevel::Info),
            since: Some(humantime::parse_rfc3339("2026-01-01T00:03:00Z").unwrap()),
            text: Some("EVENT".into()),
            ..Default::default()
        };
        let got = read_recent(&path, 0, &filter, 100).unwrap();
        let messages: Vec<&str> = got.iter().map(|e| e["message"].as_str().unwrap()).collect();
        assert_eq!(messages, ["event 8", "event 6", "event 4"]);
    }

    #[test]
    fn long_files_are_read_across_block_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let lines: Vec<String> = (0..5000).map(|i| entry(i, "info")).collect();
        write(&path, &lines);
        let got = read_recent(&path, 0, &LogFilter::default(), 5000).unwrap();
        assert_eq!(got.len(), 5000);
        assert_eq!(got[4999]["message"], "event 0");
    }
}
