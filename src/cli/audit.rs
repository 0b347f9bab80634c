//! `mcp-raspi audit deprecated-usage`: who still calls deprecated tools, from the audit log.
//!
//! Every audit record carries a `deprecated` flag (see [`crate::audit::Record`]); this reads
//! the log and all its copies (the server's numbered `audit.log.1`..., logrotate's dated
//! `audit.log-20261201` and their `.gz`) and counts the flagged calls in a window, per tool
//! and identity, in the shape the runbook's deprecation policy shows. A bad line or an
//! unreadable copy is counted and reported, never fatal: a log that lost a line still says
//! who must migrate.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args as ClapArgs, Subcommand};
use serde::{Deserialize, Serialize};

use super::storage::{log_copy, LogCopy};
use super::{CliError, DEFAULT_CONFIG};
use crate::config::Config;

/// `mcp-raspi audit`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Count the calls of deprecated tools in the audit log and its rotated copies, per tool
    /// and identity, to see who must move to the replacements before the tools are removed.
    DeprecatedUsage(DeprecatedUsageArgs),
}

#[derive(Debug, ClapArgs)]
pub struct DeprecatedUsageArgs {
    /// The window: a duration before now (30d, 12h, 90m, 2w) or an RFC 3339 time
    /// (2026-01-31T00:00:00Z).
    #[arg(long, value_name = "DURATION|TIME", default_value = "30d", value_parser = Since::parse)]
    pub since: Since,
    /// Configuration file naming the audit log (logging.audit_path).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where the window starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Since {
    /// This long before now, and how it was written.
    Ago(Duration, String),
    /// At this time, and how it was written.
    At(SystemTime, String),
}

impl Since {
    pub fn parse(text: &str) -> Result<Since, String> {
        let text = text.trim();
        if let Ok(d) = humantime::parse_duration(text) {
            return Ok(Since::Ago(d, text.to_string()));
        }
        if let Ok(t) = humantime::parse_rfc3339_weak(text) {
            return Ok(Since::At(t, text.to_string()));
        }
        Err(format!("{text:?} is neither a duration (30d, 12h, 90m) nor an RFC 3339 time (2026-01-31T00:00:00Z)"))
    }

    /// The start of the window for a check made at `now`.
    pub fn start(&self, now: SystemTime) -> SystemTime {
        match self {
            // Longer ago than 1970 is all of the log.
            Since::Ago(d, _) => {
                now.checked_sub(*d).filter(|t| *t > SystemTime::UNIX_EPOCH).unwrap_or(SystemTime::UNIX_EPOCH)
            }
            Since::At(t, _) => *t,
        }
    }

    /// `last 30 days`, `since 2026-01-31T00:00:00Z`.
    pub fn describe(&self) -> String {
        match self {
            Since::At(_, text) => format!("since {text}"),
            Since::Ago(_, text) => {
                let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
                let (n, unit) = text.split_at(split);
                let unit = match unit.trim() {
                    "w" | "week" | "weeks" => "week",
                    "d" | "day" | "days" => "day",
                    "h" | "hr" | "hour" | "hours" => "hour",
                    "m" | "min" | "minute" | "minutes" => "minute",
                    "s" | "sec" | "second" | "seconds" => "second",
                    _ => return format!("last {text}"),
                };
                match n.parse::<u64>() {
                    Ok(1) => format!("last {unit}"),
                    Ok(n) => format!("last {n} {unit}s"),
                    Err(_) => format!("last {text}"),
                }
            }
        }
    }
}

/// What one copy of the log gave.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FileScan {
    pub path: String,
    /// Lines that are not audit records (not JSON, no time...).
    pub unreadable_lines: u64,
    /// Not read because its last write is older than the window.
    pub skipped: bool,
    /// Why reading stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The calls counted: tool → identity → calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub calls: BTreeMap<String, BTreeMap<String, u64>>,
    pub files: Vec<FileScan>,
}

impl Usage {
    pub fn unreadable_lines(&self) -> u64 {
        self.files.iter().map(|f| f.unreadable_lines).sum()
    }
}

/// The fields of an audit record this reads; the others are skipped unparsed.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow, default)]
    tool: Cow<'a, str>,
    #[serde(borrow, default)]
    identity: Cow<'a, str>,
    #[serde(default)]
    deprecated: bool,
}

/// The audit log at `path` and every copy of it: logrotate's dated ones, then the log and
/// its numbered ones.
pub fn audit_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| format!("{} names no file", path.display()))?;
    let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(path),
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot read {}: permission denied (run as root, or as a member of the group mcp)", dir.display())
        }
        _ => format!("cannot read {}: {e}", dir.display()),
    })?;
    let mut files: Vec<(u8, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str().map(str::to_string)?;
            // Only the report's order of files depends on this: every record is counted.
            let rank = match log_copy(base, &name)? {
                LogCopy::Dated => 0,
                LogCopy::Numbered => 1,
            };
            Some((rank, e.path()))
        })
        .collect();
    if files.is_empty() {
        return Err(missing(path));
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

fn missing(path: &Path) -> String {
    format!(
        "no audit log at {} (logging.audit_path): is mcp-raspi-server installed, and is this its --config?",
        path.display()
    )
}

/// Counts the deprecated calls at or after `since` in `files`.
pub fn scan(files: &[PathBuf], since: SystemTime) -> Usage {
    let mut usage = Usage::default();
    for path in files {
        let mut scan = FileScan { path: path.display().to_string(), ..FileScan::default() };
        match open(path, since) {
            Ok(Some(reader)) => {
                if let Err(e) = count(reader, since, &mut usage.calls, &mut scan.unreadable_lines) {
                    scan.error = Some(e);
                }
            }
            Ok(None) => scan.skipped = true,
            Err(e) => scan.error = Some(e),
        }
        usage.files.push(scan);
    }
    usage
}

/// The lines of `path`, gunzipped when it is gzip; `None` when its last write is older than
/// `since` (so are all its records, which were written before it).
fn open(path: &Path, since: SystemTime) -> Result<Option<Box<dyn BufRead>>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    if file.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < since) {
        return Ok(None);
    }
    let mut reader = BufReader::new(file);
    let gzip = reader.fill_buf().map_err(|e| format!("cannot read: {e}"))?.starts_with(&[0x1f, 0x8b]);
    Ok(Some(if gzip {
        Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(reader)))
    } else {
        Box::new(reader)
    }))
}

/// Adds the deprecated calls of `reader` to `calls`, and its bad lines to `unreadable`.
fn count(
    mut reader: Box<dyn BufRead>,
    since: SystemTime,
    calls: &mut BTreeMap<String, BTreeMap<String, u64>>,
    unreadable: &mut u64,
) -> Result<(), String> {
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => number += 1,
            Err(e) => return Err(format!("cannot read past line {number}: {e}")),
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(entry) = serde_json::from_slice::<Entry>(&line) else {
            *unreadable += 1;
            continue;
        };
        let Ok(time) = humantime::parse_rfc3339_weak(&entry.time) else {
            *unreadable += 1;
            continue;
        };
        if entry.deprecated && time >= since {
            let per_identity = calls.entry(entry.tool.into_owned()).or_default();
            *per_identity.entry(entry.identity.into_owned()).or_default() += 1;
        }
    }
}

/// One deprecated tool's calls, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct ToolUsage {
    pub tool: String,
    pub calls: u64,
    /// Identities by calls, most first.
    pub identities: Vec<IdentityCalls>,
    /// What to call instead, and when the tool goes, when this version still knows the tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deprecated_since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removal: Option<String>,
}

/// One identity's calls of a tool.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IdentityCalls {
    pub identity: String,
    pub calls: u64,
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    window: String,
    since: String,
    tools: &'a [ToolUsage],
    unreadable_lines: u64,
    files: &'a [FileScan],
}

/// The tools of `usage`, most called first, with their deprecations from `lookup`.
pub fn summarize(usage: &Usage, lookup: impl Fn(&str) -> Option<crate::tools::Deprecation>) -> Vec<ToolUsage> {
    let mut tools: Vec<ToolUsage> = usage
        .calls
        .iter()
        .map(|(tool, by)| {
            let mut identities: Vec<IdentityCalls> =
                by.iter().map(|(i, n)| IdentityCalls { identity: i.clone(), calls: *n }).collect();
            identities.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.identity.cmp(&b.identity)));
            let deprecation = lookup(tool);
            ToolUsage {
                tool: tool.clone(),
                calls: by.values().sum(),
                identities,
                replacement: deprecation.map(|d| d.replacement.to_string()),
                deprecated_since: deprecation.map(|d| d.since.to_string()),
                removal: deprecation.map(|d| d.removal.to_string()),
            }
        })
        .collect();
    tools.sort_by(|a, b| b.calls.cmp(&a.calls).then_with(|| a.tool.cmp(&b.tool)));
    tools
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The runbook's text report.
pub fn write_text(window: &str, tools: &[ToolUsage], usage: &Usage, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "Deprecated tool usage ({window}):")?;
    if tools.is_empty() {
        writeln!(out, "  no calls of deprecated tools")?;
    }
    for t in tools {
        let by = match t.identities.as_slice() {
            [one] => one.identity.clone(),
            many => many.iter().map(|i| format!("{}: {}", i.identity, i.calls)).collect::<Vec<_>>().join(", "),
        };
        writeln!(out, "  {}: {} (by {by})", t.tool, plural(t.calls, "call"))?;
    }
    if !tools.is_empty() {
        let first_removal = tools
            .iter()
            .filter_map(|t| t.removal.as_deref())
            .min_by(|a, b| crate::update::release::compare_versions(a, b));
        match first_removal {
            Some(version) => writeln!(out, "\nMigration recommended before v{version} upgrade:")?,
            None => writeln!(out, "\nMigration recommended before these tools are removed:")?,
        }
        for t in tools {
            match (&t.replacement, &t.deprecated_since, &t.removal) {
                (Some(r), Some(since), Some(removal)) => {
                    writeln!(out, "  {}: use {r} instead (deprecated since {since}, removed in {removal})", t.tool)?
                }
                _ => writeln!(out, "  {}: no longer part of this version", t.tool)?,
            }
        }
    }
    let unreadable = usage.unreadable_lines();
    if unreadable > 0 {
        let per_file: Vec<String> = usage
            .files
            .iter()
            .filter(|f| f.unreadable_lines > 0)
            .map(|f| format!("{}: {}", f.path, f.unreadable_lines))
            .collect();
        writeln!(out, "\nSkipped {} ({}).", plural(unreadable, "unreadable line"), per_file.join(", "))?;
    }
    for f in usage.files.iter().filter(|f| f.error.is_some()) {
        writeln!(out, "Could not read all of {}: {}", f.path, f.error.as_deref().unwrap_or(""))?;
    }
    Ok(())
}

/// Runs `mcp-raspi audit ...`.
pub fn run(command: AuditCommand, out: &mut dyn Write) -> Result<u8, CliError> {
    let AuditCommand::DeprecatedUsage(args) = command;
    let env = std::env::vars().collect();
    let config = Config::load(&args.config, &env).map_err(|e| e.to_string())?.config;
    let since = args.since.start(SystemTime::now());
    let usage = scan(&audit_files(&config.logging.audit_path)?, since);
    let catalogue = crate::tools::Catalogue::new();
    let tools = summarize(&usage, |name| catalogue.get(name).and_then(|e| e.tool.spec().deprecation));
    let window = args.since.describe();
    let written = if args.json {
        let report = JsonReport {
            window,
            since: crate::logs::timestamp(since),
            tools: &tools,
            unreadable_lines: usage.unreadable_lines(),
            files: &usage.files,
        };
        serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from).and_then(|()| writeln!(out))
    } else {
        write_text(&window, &tools, &usage, out)
    };
    written.map_err(|e| format!("cannot write the report: {e}"))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;

    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    fn record(time: &str, tool: &str, identity: &str, deprecated: bool) -> String {
        format!(
            r#"{{"time":"{time}","request_id":"1","identity":"{identity}","role":"admin","transport":"http","tool":"{tool}","arguments":{{}},"outcome":"ok","duration_ms":1.5,"deprecated":{deprecated}}}"#
        )
    }

    fn gzip(lines: &str) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(lines.as_bytes()).unwrap();
        encoder.finish().unwrap()
    }

    fn calls(usage: &Usage) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for (tool, by) in &usage.calls {
            for (identity, n) in by {
                out.push((tool.clone(), identity.clone(), *n));
            }
        }
        out
    }

    #[test]
    fn since_takes_durations_and_rfc_3339_times() {
        let now = at("2026-03-31T12:00:00Z");
        let thirty = Since::parse("30d").unwrap();
        assert_eq!(thirty.start(now), at("2026-03-01T12:00:00Z"));
        assert_eq!(thirty.describe(), "last 30 days");
        assert_eq!(Since::parse("12h").unwrap().describe(), "last 12 hours");
        assert_eq!(Since::parse("90m").unwrap().start(now), at("2026-03-31T10:30:00Z"));
        assert_eq!(Since::parse("1d").unwrap().describe(), "last day");
        assert_eq!(Since::parse("1d 12h").unwrap().describe(), "last 1d 12h");
        let time = Since::parse("2026-01-31T00:00:00Z").unwrap();
        assert_eq!(
            (time.start(now), time.describe()),
            (at("2026-01-31T00:00:00Z"), "since 2026-01-31T00:00:00Z".into())
        );
        assert!(Since::parse("last tuesday").unwrap_err().contains("30d"));
        assert_eq!(Since::parse("100000000000d").unwrap().start(now), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn every_copy_of_the_log_is_read_plain_or_gzip_and_counted_in_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let since = at("2026-01-01T00:00:00Z");
        let lines = |records: &[String]| records.join("\n") + "\n";
        std::fs::write(
            &log,
            lines(&[
                record("2026-01-20T10:00:00.000Z", "gpio.pwm_start", "user@example.com", true),
                record("2026-01-20T10:00:01.000Z", "gpio.pwm_enable", "user@example.com", false),
                record("2026-01-20T10:00:02.000Z", "service.force_restart", "admin@example.com", true),
            ]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("audit.log.1"),
            lines(&[
                // Exactly at the start of the window: counted. A millisecond before: not.
                record("2026-01-01T00:00:00.000Z", "gpio.pwm_start", "user@example.com", true),
                record("2025-12-31T23:59:59.999Z", "gpio.pwm_start", "user@example.com", true),
                "{not json".into(),
                r#"{"tool":"gpio.pwm_start","deprecated":true}"#.into(),
                record("yesterday", "gpio.pwm_start", "user@example.com", true),
                String::new(),
            ]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("audit.log-20260112.gz"),
            gzip(&lines(&[
                record("2026-01-10T08:00:00.000Z", "gpio.pwm_start", "ci-bot", true),
                record("2026-01-10T08:00:00.000Z", "gpio.pwm_start", "user@example.com", true),
            ])),
        )
        .unwrap();
        std::fs::write(dir.path().join("audit.log-20260105"), b"\xff\xfe binary\n").unwrap();
        std::fs::write(dir.path().join("app.log"), record("2026-01-20T10:00:00Z", "gpio.pwm_start", "x", true))
            .unwrap();
        let files = audit_files(&log).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into()).collect();
        assert_eq!(names, ["audit.log-20260105", "audit.log-20260112.gz", "audit.log", "audit.log.1"]);
        let usage = scan(&files, since);
        assert_eq!(
            calls(&usage),
            [
                ("gpio.pwm_start".into(), "ci-bot".into(), 1),
                ("gpio.pwm_start".into(), "user@example.com".into(), 3),
                ("service.force_restart".into(), "admin@example.com".into(), 1),
            ]
        );
        assert_eq!(usage.unreadable_lines(), 4);
        let per_file: Vec<u64> = usage.files.iter().map(|f| f.unreadable_lines).collect();
        assert_eq!(per_file, [1, 0, 0, 3]);
        assert!(usage.files.iter().all(|f| f.error.is_none() && !f.skipped));
    }

    #[test]
    fn copies_older_than_the_window_are_skipped_and_a_truncated_gzip_keeps_what_it_gave() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        std::fs::write(&log, record("2026-02-01T00:00:00Z", "gpio.pwm_start", "a", true) + "\n").unwrap();
        let old = dir.path().join("audit.log.1");
        std::fs::write(&old, record("2026-02-01T00:00:00Z", "gpio.pwm_start", "b", true) + "\n").unwrap();
        // Last written long before the window: nothing in it can be in the window.
        let file = std::fs::File::options().write(true).open(&old).unwrap();
        file.set_modified(at("2025-06-01T00:00:00Z")).unwrap();
        let mut many = String::new();
        for _ in 0..2000 {
            many.push_str(&record("2026-02-01T00:00:00Z", "service.force_restart", "c", true));
            many.push('\n');
        }
        let packed = gzip(&many);
        std::fs::write(dir.path().join("audit.log-20260201.gz"), &packed[..packed.len() / 2]).unwrap();
        let usage = scan(&audit_files(&log).unwrap(), at("2026-01-01T00:00:00Z"));
        let by_tool: Vec<(&str, u64)> = usage.calls.iter().map(|(t, by)| (t.as_str(), by.values().sum())).collect();
        assert_eq!(by_tool[0], ("gpio.pwm_start", 1));
        assert!(by_tool[1].0 == "service.force_restart" && (1..2000).contains(&by_tool[1].1), "{by_tool:?}");
        let truncated = usage.files.iter().find(|f| f.path.ends_with(".gz")).unwrap();
        assert!(truncated.error.as_deref().unwrap().starts_with("cannot read past line"), "{truncated:?}");
        assert!(usage.files.iter().find(|f| f.path.ends_with(".1")).unwrap().skipped);
    }

    #[test]
    fn a_missing_audit_log_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = audit_files(&dir.path().join("audit.log")).unwrap_err();
        assert!(err.contains(&dir.path().join("audit.log").display().to_string()) && err.contains("--config"), "{err}");
        let err = audit_files(&dir.path().join("nowhere/audit.log")).unwrap_err();
        assert!(err.starts_with("no audit log at"), "{err}");
    }

    #[test]
    fn the_report_has_the_runbooks_shape() {
        let mut usage = Usage::default();
        usage.calls.entry("gpio.pwm_start".into()).or_default().insert("user@example.com".into(), 150);
        let force = usage.calls.entry("service.force_restart".into()).or_default();
        force.insert("admin@example.com".into(), 3);
        force.insert("ops@example.com".into(), 2);
        usage.files.push(FileScan {
            path: "/var/log/mcp-raspi/audit.log.2".into(),
            unreadable_lines: 2,
            ..FileScan::default()
        });
        let deprecation = |replacement| crate::tools::Deprecation { replacement, since: "0.1.0", removal: "1.0.0" };
        let tools = summarize(&usage, |tool| match tool {
            "gpio.pwm_start" => Some(deprecation("gpio.pwm_enable")),
            _ => None,
        });
        let mut out = Vec::new();
        write_text("last 30 days", &tools, &usage, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Deprecated tool usage (last 30 days):\n\
             \x20 gpio.pwm_start: 150 calls (by user@example.com)\n\
             \x20 service.force_restart: 5 calls (by admin@example.com: 3, ops@example.com: 2)\n\
             \n\
             Migration recommended before v1.0.0 upgrade:\n\
             \x20 gpio.pwm_start: use gpio.pwm_enable instead (deprecated since 0.1.0, removed in 1.0.0)\n\
             \x20 service.force_restart: no longer part of this version\n\
             \n\
             Skipped 2 unreadable lines (/var/log/mcp-raspi/audit.log.2: 2).\n"
        );
        let mut out = Vec::new();
        write_text("last 12 hours", &[], &Usage::default(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Deprecated tool usage (last 12 hours):\n  no calls of deprecated tools\n"
        );
    }
}
