//! `mcp-raspi storage-check`: how full the root file system is, and what mcp-raspi keeps
//! on it (logs and their rotated copies, the metrics database, releases, downloads), each
//! against the setting that bounds it, with what to do when something is over.
//!
//! The runbook's capacity planning gives the thresholds: the root file system is a warning
//! past 80 % and critical past 90 %, where the largest files are listed too.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use serde::Serialize;

use super::{CliError, DEFAULT_CONFIG, DEFAULT_ROOT};
use crate::config::Config;
use crate::host::{disk, Roots};
use crate::metrics::store::WAL_LIMIT_BYTES;
use crate::metrics::DB_NAME;
use crate::update::activate::Installation;

/// Exit status when something is over its limit or the root file system is over 80 %.
pub const EXIT_OVER: u8 = 1;
/// Exit status when the check could not run (the configuration cannot be used).
pub const EXIT_CANNOT_CHECK: u8 = 2;
/// Root file system use past which the check warns, and past which it is critical.
const ROOT_WARNING: f64 = 80.0;
const ROOT_CRITICAL: f64 = 90.0;
/// How many of the largest files are listed when the root file system is critical.
const LARGEST: usize = 10;
/// Most directory entries looked at when looking for the largest files.
const MAX_WALK: usize = 100_000;
const MIB: u64 = 1024 * 1024;

#[derive(Debug, ClapArgs)]
#[command(after_help = "Exit status: 0 when everything is within its limit, 1 when something is over its \
    limit or the root file system is over 80 % full, 2 when the configuration cannot be used.")]
pub struct StorageCheckArgs {
    /// Configuration file: log paths and sizes (logging.*), state and install directories
    /// (paths.*), metrics.retention.max_size_mb, updates.keep_versions and
    /// updates.max_download_mb.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The root file system's use and how it is judged.
#[derive(Debug, Clone, Serialize)]
pub struct RootUse {
    pub mount_point: String,
    pub device: String,
    pub used_percent: f64,
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// `ok`, `warning` (over 80 %) or `critical` (over 90 %).
    pub state: &'static str,
}

/// A bound from the configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limit {
    /// `bytes`, or `releases` (a count).
    pub unit: &'static str,
    pub value: u64,
    /// The settings it comes from.
    pub setting: String,
}

/// One thing mcp-raspi keeps on disk.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub name: &'static str,
    /// The file or directory, or a pattern of the files counted.
    pub path: String,
    /// Files counted (for releases: releases installed).
    pub count: u64,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,
    pub over: bool,
    /// What else to know: nothing there yet, or why it could not be measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A file and its size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileSize {
    pub path: String,
    pub bytes: u64,
}

/// What `storage-check` found and thinks of it.
#[derive(Debug, Clone, Serialize)]
pub struct StorageReport {
    /// The root file system, unless it could not be measured (then `root_error` says why).
    pub root: Option<RootUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_error: Option<String>,
    pub items: Vec<Item>,
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
    pub suggestions: Vec<String>,
    /// Only when the root file system is over 90 %.
    pub largest_files: Vec<FileSize>,
    pub exit_status: u8,
}

/// The roots of the machine's pseudo file systems, as the configuration names them.
pub(super) fn roots_of(config: &Config) -> Roots {
    Roots {
        proc: config.platform.proc_root.clone(),
        sys: config.platform.sys_root.clone(),
        etc: config.platform.etc_root.clone(),
        fs: config.platform.fs_root.clone(),
    }
}

/// `1.2 MiB`: sizes in binary units with one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The size of a file, not following links; 0 for what is not a regular file.
fn file_size(path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    Ok(if meta.is_file() { meta.len() } else { 0 })
}

/// What the files of a log are: the log itself and the server's numbered copies
/// (`app.log.1`...), or logrotate's dated copies (`app.log-20261201`, `.gz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LogCopy {
    Numbered,
    Dated,
}

/// Which copy of the log `base` the file `name` is, if any.
pub(super) fn log_copy(base: &str, name: &str) -> Option<LogCopy> {
    let rest = name.strip_prefix(base)?;
    if rest.is_empty() {
        return Some(LogCopy::Numbered);
    }
    if let Some(n) = rest.strip_prefix('.') {
        return (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(LogCopy::Numbered);
    }
    (rest.len() > 1 && rest.starts_with('-')).then_some(LogCopy::Dated)
}

/// The files of the log at `path` of `kind`, sorted by name.
pub(super) fn log_files(path: &Path, kind: LogCopy) -> std::io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|b| b.to_str())) else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_str().and_then(|name| log_copy(base, name)) == Some(kind) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// An item counting `files` (with their sizes) against `limit`.
fn sized(name: &'static str, path: String, files: std::io::Result<Vec<PathBuf>>, limit: Option<Limit>) -> Item {
    let mut item = Item { name, path, count: 0, bytes: 0, limit, over: false, note: None };
    match files {
        Ok(files) => {
            for file in files {
                match file_size(&file) {
                    Ok(bytes) => {
                        item.count += 1;
                        item.bytes += bytes;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => item.note = Some(format!("cannot measure {}: {e}", file.display())),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => item.note = Some("not present".into()),
        Err(e) => item.note = Some(format!("cannot read: {e}")),
    }
    item.over = item.limit.as_ref().is_some_and(|l| l.unit == "bytes" && item.bytes > l.value);
    item
}

/// The regular files under `dir`, at most `depth` levels down, links not followed.
fn files_under(dir: &Path, depth: usize, seen: &mut usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        *seen += 1;
        if *seen > MAX_WALK {
            return Ok(());
        }
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_file() {
            out.push(entry.path());
        } else if kind.is_dir() && depth > 0 {
            // A directory that cannot be read is left out; the others still count.
            let _ = files_under(&entry.path(), depth - 1, seen, out);
        }
    }
    Ok(())
}

fn all_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    files_under(dir, 8, &mut 0, &mut out)?;
    Ok(out)
}

/// The items of `config`.
fn items(config: &Config) -> Vec<Item> {
    let file = &config.logging.file;
    let copies = u64::from(file.backup_count) + 1;
    let log_limit = Limit {
        unit: "bytes",
        value: file.max_size_mb.saturating_mul(MIB).saturating_mul(copies),
        setting: "logging.file.max_size_mb × (backup_count + 1)".into(),
    };
    let mut items = Vec::new();
    for (name, dated, path) in [
        ("app log", "app log, logrotate copies", &config.logging.app_path),
        ("audit log", "audit log, logrotate copies", &config.logging.audit_path),
    ] {
        let shown = path.display().to_string();
        let numbered = log_files(path, LogCopy::Numbered);
        items.push(sized(name, format!("{shown}[.N]"), numbered, Some(log_limit.clone())));
        items.push(sized(dated, format!("{shown}-*"), log_files(path, LogCopy::Dated), None));
    }
    items.extend(metrics_items(config));
    items.push(releases(config));
    let downloads = config.paths.state_dir.join("downloads");
    let limit = Limit {
        unit: "bytes",
        value: config.updates.max_download_mb.saturating_mul(MIB),
        setting: "updates.max_download_mb".into(),
    };
    items.push(sized("downloads", downloads.display().to_string(), all_files(&downloads), Some(limit)));
    items
}

/// The metrics database and its write-ahead log, against `metrics.retention.max_size_mb`,
/// and the damaged databases a recovery set aside (`metrics.db.corrupt-*`, with their own
/// write-ahead files), which nothing removes.
fn metrics_items(config: &Config) -> [Item; 2] {
    let state = &config.paths.state_dir;
    let db = state.join(DB_NAME);
    // The server trims the database's pages to the setting; the log beside it is cut back
    // to WAL_LIMIT_BYTES at each checkpoint and is about that size while the server runs,
    // so it is allowed on top. (The log's index, `-shm`, is a small map rebuilt from the log.)
    let limit = Limit {
        unit: "bytes",
        value: config.metrics.retention.max_size_mb.saturating_mul(MIB).saturating_add(WAL_LIMIT_BYTES),
        setting: format!("metrics.retention.max_size_mb + {} of write-ahead log", human_bytes(WAL_LIMIT_BYTES)),
    };
    let db_files = ["", "-wal"].iter().map(|s| PathBuf::from(format!("{}{s}", db.display()))).collect();
    let mut metrics = sized("metrics database", db.display().to_string(), Ok(db_files), Some(limit));
    if metrics.count == 0 && metrics.note.is_none() {
        metrics.note = Some("not present".into());
    }
    let prefix = format!("{DB_NAME}.corrupt-");
    let corrupt = std::fs::read_dir(state).map(|read| {
        let mut files: Vec<PathBuf> = read
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)))
            .map(|e| e.path())
            .collect();
        files.sort();
        files
    });
    let corrupt = match corrupt {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    };
    let mut damaged =
        sized("metrics database, damaged copies", format!("{}*", state.join(&prefix).display()), corrupt, None);
    if damaged.count > 0 && damaged.note.is_none() {
        damaged.note = Some("set aside when the server found the database damaged; delete them once looked at".into());
    }
    [metrics, damaged]
}

/// The installed releases: over when pruning would remove some, as it does after an update
/// (the newest `keep_versions`, the current and the previous good one stay).
fn releases(config: &Config) -> Item {
    let keep = config.updates.keep_versions;
    let dir = config.paths.install_dir.join("releases");
    let limit = Limit { unit: "releases", value: keep as u64, setting: "updates.keep_versions".into() };
    let mut item = Item {
        name: "releases",
        path: dir.display().to_string(),
        count: 0,
        bytes: 0,
        limit: Some(limit),
        over: false,
        note: None,
    };
    if !dir.exists() {
        item.note = Some("not present".into());
        return item;
    }
    match Installation::new(&config.paths.install_dir, &config.paths.state_dir, None, keep).list() {
        Ok(list) => {
            item.count = list.len() as u64;
            item.bytes = list.iter().map(|r| r.size_bytes).sum();
            let old = list.len().saturating_sub(keep);
            let removable: Vec<&str> =
                list[..old].iter().filter(|r| !r.protected).map(|r| r.version.as_str()).collect();
            if !removable.is_empty() {
                item.over = true;
                item.note = Some(format!("pruning would remove {}", removable.join(", ")));
            }
        }
        Err(e) => item.note = Some(format!("cannot list: {e}")),
    }
    item
}

/// The largest files in the log and state directories, biggest first.
fn largest_files(config: &Config) -> Vec<FileSize> {
    let mut dirs: Vec<&Path> = [&config.logging.app_path, &config.logging.audit_path]
        .iter()
        .filter_map(|p| p.parent())
        .chain([config.paths.state_dir.as_path()])
        .collect();
    dirs.sort();
    dirs.dedup();
    let mut files: Vec<FileSize> = dirs
        .into_iter()
        .flat_map(|d| all_files(d).unwrap_or_default())
        .filter_map(|p| file_size(&p).ok().map(|bytes| FileSize { path: p.display().to_string(), bytes }))
        .collect();
    files.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path)));
    files.truncate(LARGEST);
    files
}

/// Judges the root file system and the items of `config`, and says what to do.
pub fn build_report(config: &Config, config_path: &Path, root: Result<disk::Mount, String>) -> StorageReport {
    let items = items(config);
    let mut problems = Vec::new();
    let root = root.map(|m| RootUse {
        state: if m.used_percent > ROOT_CRITICAL {
            "critical"
        } else if m.used_percent > ROOT_WARNING {
            "warning"
        } else {
            "ok"
        },
        mount_point: m.mount_point,
        device: m.device,
        used_percent: m.used_percent,
        used_bytes: m.used_bytes,
        total_bytes: m.total_bytes,
        available_bytes: m.available_bytes,
    });
    let (root, root_error) = match root {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e)),
    };
    let root_state = root.as_ref().map(|r| r.state).unwrap_or("ok");
    if let Some(r) = &root {
        if r.state != "ok" {
            let limit = if r.state == "critical" { ROOT_CRITICAL } else { ROOT_WARNING };
            problems.push(format!("the root file system is {:.1}% full (over {limit}%)", r.used_percent));
        }
    }
    for item in items.iter().filter(|i| i.over) {
        let limit = item.limit.as_ref().map(limit_text).unwrap_or_default();
        problems.push(format!("{} is over its limit: {} > {limit}", item.name, amount(item)));
    }
    let over = |name: &str| items.iter().any(|i| i.over && i.name.starts_with(name));
    let everything = root_state == "critical";
    let mut suggestions = Vec::new();
    if everything || over("metrics") {
        suggestions.push(format!(
            "Reduce metrics retention: metrics.retention.max_age_days (or MCP_RASPI_METRICS__RETENTION__MAX_AGE_DAYS) \
             and metrics.retention.max_size_mb in {}; the server trims the database to them as it samples",
            config_path.display()
        ));
    }
    if let Some(damaged) = items.iter().find(|i| i.name == "metrics database, damaged copies" && i.count > 0) {
        suggestions.push(format!(
            "Delete the damaged metrics databases set aside by a recovery ({}) once you have looked at them: \
             sudo rm {}",
            human_bytes(damaged.bytes),
            damaged.path
        ));
    }
    if everything || over("app log") || over("audit log") {
        suggestions.push(format!(
            "Reduce log retention: `rotate` in /etc/logrotate.d/mcp-raspi, and logging.file.max_size_mb and \
             logging.file.backup_count in {}",
            config_path.display()
        ));
    }
    if everything || over("releases") {
        let root = &config.paths.install_dir;
        let root = if root == Path::new(DEFAULT_ROOT) { String::new() } else { format!(" --root {}", root.display()) };
        suggestions.push(format!(
            "Remove old releases: sudo mcp-raspi release prune --keep {}{root}",
            config.updates.keep_versions
        ));
    }
    if over("downloads") {
        suggestions.push(format!(
            "Remove the leftover downloads in {} (while no update runs)",
            config.paths.state_dir.join("downloads").display()
        ));
    }
    let largest_files = if everything { largest_files(config) } else { Vec::new() };
    let exit_status = if problems.is_empty() { 0 } else { EXIT_OVER };
    StorageReport { root, root_error, items, problems, suggestions, largest_files, exit_status }
}

fn releases_text(n: u64) -> String {
    if n == 1 {
        "1 release".into()
    } else {
        format!("{n} releases")
    }
}

fn limit_text(limit: &Limit) -> String {
    match limit.unit {
        "bytes" => human_bytes(limit.value),
        _ => releases_text(limit.value),
    }
}

fn amount(item: &Item) -> String {
    match item.limit.as_ref().map(|l| l.unit) {
        Some("releases") => format!("{} ({})", releases_text(item.count), human_bytes(item.bytes)),
        _ => human_bytes(item.bytes),
    }
}

/// The report as a table with what to do under it.
fn write_table(report: &StorageReport, out: &mut dyn Write) -> std::io::Result<()> {
    match &report.root {
        Some(r) => writeln!(
            out,
            "Root file system ({}): {:.1}% used, {} of {}, {} available{}",
            r.device,
            r.used_percent,
            human_bytes(r.used_bytes),
            human_bytes(r.total_bytes),
            human_bytes(r.available_bytes),
            match r.state {
                "critical" => " - CRITICAL",
                "warning" => " - WARNING",
                _ => "",
            }
        )?,
        None => writeln!(out, "Root file system: unknown ({})", report.root_error.as_deref().unwrap_or("?"))?,
    }
    writeln!(out)?;
    let rows: Vec<[String; 6]> = report
        .items
        .iter()
        .map(|i| {
            let limit = i.limit.as_ref().map(limit_text);
            let status = if i.over { "OVER" } else { "ok" };
            let path = match &i.note {
                Some(note) => format!("{} ({note})", i.path),
                None => i.path.clone(),
            };
            [
                i.name.to_string(),
                i.count.to_string(),
                human_bytes(i.bytes),
                limit.unwrap_or("-".into()),
                status.into(),
                path,
            ]
        })
        .collect();
    let header = ["what", "count", "size", "limit", "status", "path"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let [what, files, size, limit, status, path] = row;
        let [w0, w1, w2, w3, w4, _] = widths;
        writeln!(out, "{what:<w0$}  {files:>w1$}  {size:>w2$}  {limit:<w3$}  {status:<w4$}  {path}")?;
    }
    // Where each limit comes from, once for the items that share it.
    let mut sources: Vec<(&str, Vec<&str>)> = Vec::new();
    for (item, limit) in report.items.iter().filter_map(|i| i.limit.as_ref().map(|l| (i, l))) {
        match sources.iter_mut().find(|(setting, _)| *setting == limit.setting) {
            Some((_, names)) => names.push(item.name),
            None => sources.push((&limit.setting, vec![item.name])),
        }
    }
    let sources: Vec<String> = sources.iter().map(|(s, names)| format!("{} from {s}", names.join(" and "))).collect();
    writeln!(out, "\nLimits: {}.", sources.join("; "))?;
    if !report.problems.is_empty() {
        writeln!(out, "\nProblems:")?;
        for p in &report.problems {
            writeln!(out, "  - {p}")?;
        }
    }
    if !report.largest_files.is_empty() {
        writeln!(out, "\nLargest files:")?;
        for f in &report.largest_files {
            writeln!(out, "  {:>10}  {}", human_bytes(f.bytes), f.path)?;
        }
    }
    if !report.suggestions.is_empty() {
        writeln!(out, "\nSuggested cleanup:")?;
        for s in &report.suggestions {
            writeln!(out, "  - {s}")?;
        }
    }
    Ok(())
}

/// Runs the check; returns its exit status.
pub fn run(args: StorageCheckArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let env = std::env::vars().collect();
    let config = Config::load(&args.config, &env).map_err(|e| CliError::new(EXIT_CANNOT_CHECK, e.to_string()))?.config;
    let roots = roots_of(&config);
    let root = disk::read_mounts(&roots).map_err(|e| e.to_string()).and_then(|mounts| {
        mounts.into_iter().find(|m| m.mount_point == "/").ok_or_else(|| "no storage file system at /".into())
    });
    let report = build_report(&config, &args.config, root);
    let written = if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from).and_then(|()| writeln!(out))
    } else {
        write_table(&report, out)
    };
    written.map_err(|e| CliError::new(EXIT_CANNOT_CHECK, format!("cannot write the report: {e}")))?;
    Ok(report.exit_status)
}

#[cfg(test)]
mod tests;
