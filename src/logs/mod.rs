//! The application log and reading logs back.
//!
//! The application log is JSON lines in `logging.app_path` (size-rotated), plus journald
//! when started by systemd or stderr otherwise. The same files are read back, newest
//! first, by the `logs.*` tools and resources.

mod reader;
mod rotate;
mod throttled;

use std::io::Write;
use std::sync::Arc;
use std::time::SystemTime;

use std::path::Path;

use crate::base::{LogLevel, Tristate};

pub use reader::{read_recent, LogFilter};
pub use rotate::{backup_path, GroupedFile, RotatingFile, Urgency};
pub use throttled::Throttled;

/// RFC 3339 UTC time with milliseconds, as written in every log line.
pub fn timestamp(t: SystemTime) -> String {
    rfc3339(t).to_string()
}

/// [`timestamp`] before it becomes a string, for writers that take text piece by piece.
pub fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_millis(t)
}

/// Where application log records go.
struct AppLogger {
    file: Option<Arc<RotatingFile>>,
    journal: Option<systemd_journal_logger::JournalLog>,
    stderr: bool,
    level: log::LevelFilter,
}

impl log::Log for AppLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
            && !metadata.target().starts_with("hyper")
            && !metadata.target().starts_with("warp")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let level = LogLevel::from_level(record.level()).as_str();
        if let Some(file) = &self.file {
            let line = serde_json::json!({
                "time": timestamp(SystemTime::now()),
                "level": level,
                "target": record.target(),
                "message": message,
            });
            // A log that cannot be written must not take the server down with it.
            let _ = file.write_line(&serde_json::to_vec(&line).unwrap_or_default());
        }
        if let Some(journal) = &self.journal {
            journal.log(record);
        }
        if self.stderr {
            let _ = writeln!(std::io::stderr().lock(), "{level:>5} {message}");
        }
    }

    fn flush(&self) {}
}

/// Whether this process was started by systemd with its output connected to the journal.
pub fn under_systemd() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some()
}

/// Where the application log goes: a size-rotated file, and journald as `journald` says.
#[derive(Debug, Clone, Copy)]
pub struct AppLogSettings<'a> {
    pub path: &'a Path,
    pub max_bytes: u64,
    pub backup_count: u32,
    pub level: LogLevel,
    pub journald: Tristate,
}

/// Installs the global logger. Returns an error naming the file when it cannot be opened.
pub fn init(settings: AppLogSettings) -> Result<(), String> {
    let AppLogSettings { path, max_bytes, backup_count, level, journald } = settings;
    let file = RotatingFile::open(path, max_bytes, backup_count)
        .map_err(|e| format!("cannot open the application log {}: {e}", path.display()))?;
    let journald = match journald {
        Tristate::On => true,
        Tristate::Off => false,
        Tristate::Auto => under_systemd(),
    };
    let journal = if journald { systemd_journal_logger::JournalLog::new().ok() } else { None };
    let logger = AppLogger { file: Some(Arc::new(file)), stderr: journal.is_none(), journal, level: level.to_filter() };
    log::set_boxed_logger(Box::new(logger)).map_err(|e| format!("cannot install the logger: {e}"))?;
    log::set_max_level(level.to_filter());
    Ok(())
}

/// Installs a logger to journald (when started by systemd, or `journald: on`) or stderr:
/// for the agent, whose log is the journal.
pub fn init_console(level: LogLevel, journald: Tristate) {
    let use_journal = match journald {
        Tristate::On => true,
        Tristate::Off => false,
        Tristate::Auto => under_systemd(),
    };
    let journal = if use_journal { systemd_journal_logger::JournalLog::new().ok() } else { None };
    let logger = AppLogger { file: None, stderr: journal.is_none(), journal, level: level.to_filter() };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level.to_filter());
    }
}
