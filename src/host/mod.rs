//! Unprivileged readers of the machine: /proc, /sys and /etc.
//!
//! Everything here reads files below a configurable [`Roots`], so the same code reads the
//! real machine in production and fixture trees of a Raspberry Pi 4 or 5 in tests. Nothing
//! here needs a privilege: the server (user `mcp`, no capabilities) calls it directly.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod board;
pub mod cpu;
pub mod disk;
pub mod diskio;
pub mod memory;
pub mod net;
pub mod os;
pub mod process;
pub mod thermal;

/// Where the machine's pseudo file systems and configuration are found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots {
    /// The procfs mount, normally `/proc`.
    pub proc: PathBuf,
    /// The sysfs mount, normally `/sys`.
    pub sys: PathBuf,
    /// The system configuration directory, normally `/etc` (for os-release and passwd).
    pub etc: PathBuf,
    /// Prefix joined to mount points before `statvfs`, normally `/`.
    pub fs: PathBuf,
}

impl Roots {
    /// The roots of the running machine.
    pub fn system() -> Self {
        Roots {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
            etc: PathBuf::from("/etc"),
            fs: PathBuf::from("/"),
        }
    }

    /// A fixture tree laid out as `<dir>/proc`, `<dir>/sys`, `<dir>/etc` and `<dir>/fs`.
    pub fn under(dir: &Path) -> Self {
        Roots { proc: dir.join("proc"), sys: dir.join("sys"), etc: dir.join("etc"), fs: dir.join("fs") }
    }
}

/// Why reading the machine failed.
#[derive(Debug)]
pub enum HostError {
    /// A file could not be read (missing, permission, I/O).
    Read { path: PathBuf, source: io::Error },
    /// A file was read but its content was not what the kernel writes there.
    Parse { path: PathBuf, what: String },
    /// The thing asked about does not exist (for example a process that has exited).
    NotFound { what: String },
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            HostError::Parse { path, what } => {
                write!(f, "unexpected content in {}: {what}", path.display())
            }
            HostError::NotFound { what } => write!(f, "{what} not found"),
        }
    }
}

impl std::error::Error for HostError {}

pub type Result<T> = std::result::Result<T, HostError>;

/// Reads a whole text file, naming the path on failure.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| HostError::Read { path: path.to_path_buf(), source })
}

/// Reads a one-line sysfs/procfs attribute, trimmed; `None` when the file does not exist.
pub fn read_attr(path: &Path) -> Result<Option<String>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            Ok(Some(text.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostError::Read { path: path.to_path_buf(), source }),
    }
}

/// A sysfs attribute read again and again, such as the current CPU frequency. The file
/// stays open and each read is one `pread` at offset 0, which makes sysfs produce the
/// current value. An absent attribute (no cpufreq driver, say) is looked for again after
/// [`LiveAttr::RETRY`], so a driver loaded later is noticed.
#[derive(Debug)]
pub struct LiveAttr {
    path: PathBuf,
    state: Mutex<AttrState>,
}

#[derive(Debug)]
enum AttrState {
    Unopened,
    Open(Arc<File>),
    Absent(Instant),
}

impl LiveAttr {
    pub const RETRY: Duration = Duration::from_secs(10);

    pub fn new(path: PathBuf) -> LiveAttr {
        LiveAttr { path, state: Mutex::new(AttrState::Unopened) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The attribute's current value, trimmed; `None` while it does not exist.
    pub fn read(&self) -> Result<Option<String>> {
        let read_error = |source| HostError::Read { path: self.path.clone(), source };
        let file = {
            let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match &*state {
                AttrState::Open(file) => file.clone(),
                AttrState::Absent(since) if since.elapsed() < Self::RETRY => return Ok(None),
                AttrState::Unopened | AttrState::Absent(_) => match File::open(&self.path) {
                    Ok(file) => {
                        let file = Arc::new(file);
                        *state = AttrState::Open(file.clone());
                        file
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        *state = AttrState::Absent(Instant::now());
                        return Ok(None);
                    }
                    Err(e) => return Err(read_error(e)),
                },
            }
        };
        // Attributes are one value of at most a page; the read happens outside the lock.
        let mut buf = [0u8; 4096];
        let n = match file.read_at(&mut buf, 0) {
            Ok(n) => n,
            Err(e) => {
                // The device went away or the file was replaced: open it afresh next time.
                *self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = AttrState::Unopened;
                return Err(read_error(e));
            }
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        Ok(Some(text.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_string()))
    }
}

/// Builds a parse error for `path`.
pub fn parse_error(path: &Path, what: impl Into<String>) -> HostError {
    HostError::Parse { path: path.to_path_buf(), what: what.into() }
}

/// Reads a whole text file; `None` when it does not exist (optional files such as os-release).
pub fn read_optional_text(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostError::Read { path: path.to_path_buf(), source }),
    }
}

/// `part` as a percentage of `whole`, rounded to two decimals so JSON stays readable; 0 for an
/// empty whole rather than NaN.
pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    let exact = part as f64 * 100.0 / whole as f64;
    (exact * 100.0).round() / 100.0
}

/// The committed fixture tree of a machine, `tests/fixtures/<name>`.
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> Roots {
    Roots::under(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name))
}
