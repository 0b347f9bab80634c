//! Operating system identity, uptime and load average.
//!
//! The distribution comes from os-release, the kernel from `/proc/sys/kernel` (the same
//! strings `uname` prints, without a system call so fixtures can stand in for the machine).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;

use super::{parse_error, read_attr, read_optional_text, read_text, Result, Roots};

/// Distribution, kernel and host name.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct OsInfo {
    /// Human-readable distribution name, such as "Debian GNU/Linux 12 (bookworm)".
    pub pretty_name: Option<String>,
    /// Distribution identifier, such as "debian" (64-bit Raspberry Pi OS) or "raspbian" (32-bit).
    pub id: Option<String>,
    /// Distribution version, such as "12".
    pub version_id: Option<String>,
    /// Release code name, such as "bookworm".
    pub codename: Option<String>,
    /// Kernel release, as `uname -r` prints it, such as "6.6.31-v8+".
    pub kernel_release: String,
    /// Kernel build description, as `uname -v` prints it.
    pub kernel_version: Option<String>,
    /// Host name of the machine.
    pub hostname: Arc<str>,
    /// CPU architecture this server was built for, such as "aarch64" or "arm".
    pub architecture: String,
}

/// Reads os-release and the kernel's identity.
pub fn read_os(roots: &Roots) -> Result<OsInfo> {
    let release = read_optional_text(&roots.etc.join("os-release"))?.unwrap_or_default();
    let mut release = parse_os_release(&release);
    let kernel = roots.proc.join("sys/kernel");
    let release_path = kernel.join("osrelease");
    let hostname_path = kernel.join("hostname");
    Ok(OsInfo {
        pretty_name: release.remove("PRETTY_NAME"),
        id: release.remove("ID"),
        version_id: release.remove("VERSION_ID"),
        codename: release.remove("VERSION_CODENAME"),
        kernel_release: read_text(&release_path)?.trim().to_string(),
        kernel_version: read_attr(&kernel.join("version"))?.filter(|v| !v.is_empty()),
        hostname: read_text(&hostname_path)?.trim().into(),
        architecture: std::env::consts::ARCH.to_string(),
    })
}

/// Parses os-release (shell-style `KEY=value` assignments). Lines that are not assignments
/// are skipped, as the os-release specification asks of readers.
fn parse_os_release(text: &str) -> HashMap<String, String> {
    let mut values = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let value = unquote(raw.trim());
        if !value.is_empty() {
            values.insert(key.trim().to_string(), value);
        }
    }
    values
}

/// Removes shell quoting: single quotes are literal, double quotes honour backslash escapes.
fn unquote(raw: &str) -> String {
    if let Some(inner) = raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.to_string();
    }
    let inner = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')).unwrap_or(raw);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(escaped) = chars.next() {
                out.push(escaped);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds since boot, from `<proc>/uptime`.
pub fn read_uptime_seconds(roots: &Roots) -> Result<f64> {
    let path = roots.proc.join("uptime");
    parse_uptime(&read_text(&path)?, &path)
}

fn parse_uptime(text: &str, path: &Path) -> Result<f64> {
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| parse_error(path, format!("expected seconds since boot, found {text:?}")))
}

/// The kernel's run-queue averages and task counts.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct LoadAvg {
    /// Average number of runnable or uninterruptible tasks over the last minute; compare with
    /// the number of cores.
    pub one: f64,
    /// Same, over the last five minutes.
    pub five: f64,
    /// Same, over the last fifteen minutes.
    pub fifteen: f64,
    /// Tasks (threads) runnable right now.
    pub running: u32,
    /// Tasks (threads) that exist right now.
    pub total: u32,
}

/// Reads `<proc>/loadavg`.
pub fn read_loadavg(roots: &Roots) -> Result<LoadAvg> {
    let path = roots.proc.join("loadavg");
    parse_loadavg(&read_text(&path)?, &path)
}

fn parse_loadavg(text: &str, path: &Path) -> Result<LoadAvg> {
    let bad = || parse_error(path, format!("expected \"1m 5m 15m running/total last-pid\", found {text:?}"));
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [one, five, fifteen, tasks, ..] = fields.as_slice() else {
        return Err(bad());
    };
    let average = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(bad);
    let (running, total) = tasks.split_once('/').ok_or_else(bad)?;
    Ok(LoadAvg {
        one: average(one)?,
        five: average(five)?,
        fifteen: average(fifteen)?,
        running: running.parse().map_err(|_| bad())?,
        total: total.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::{fixture, HostError};

    #[test]
    fn reads_raspberry_pi_os_bookworm_on_a_pi4() {
        let os = read_os(&fixture("pi4")).unwrap();
        assert_eq!(os.pretty_name.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(os.id.as_deref(), Some("debian"));
        assert_eq!(os.version_id.as_deref(), Some("12"));
        assert_eq!(os.codename.as_deref(), Some("bookworm"));
        assert_eq!(os.kernel_release, "6.6.31-v8+");
        assert_eq!(os.kernel_version.as_deref(), Some("#1774 SMP PREEMPT Mon Jun 10 13:42:25 BST 2024"));
        assert_eq!(&*os.hostname, "raspi4");
        assert_eq!(os.architecture, std::env::consts::ARCH);
    }

    #[test]
    fn reads_the_kernel_of_a_pi5() {
        let os = read_os(&fixture("pi5")).unwrap();
        assert_eq!(os.kernel_release, "6.12.25+rpt-rpi-2712");
        assert_eq!(&*os.hostname, "raspi5");
    }

    #[test]
    fn leaves_the_distribution_empty_without_os_release() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("proc/sys/kernel");
        std::fs::create_dir_all(&kernel).unwrap();
        std::fs::write(kernel.join("osrelease"), "6.1.0\n").unwrap();
        std::fs::write(kernel.join("hostname"), "box\n").unwrap();
        let os = read_os(&Roots::under(dir.path())).unwrap();
        assert_eq!((os.pretty_name, os.id, os.kernel_version), (None, None, None));
        assert_eq!(os.kernel_release, "6.1.0");
    }

    #[test]
    fn unquotes_os_release_values() {
        let values = parse_os_release(
            "# comment\nNAME='Single Quoted'\nPRETTY_NAME=\"Say \\\"hi\\\" \\$HOME\"\n\
             ID=plain\nnot an assignment\nEMPTY=\"\"\n",
        );
        assert_eq!(values["NAME"], "Single Quoted");
        assert_eq!(values["PRETTY_NAME"], "Say \"hi\" $HOME");
        assert_eq!(values["ID"], "plain");
        assert!(!values.contains_key("EMPTY"));
    }

    #[test]
    fn reads_uptime_of_pi4_and_pi5() {
        assert_eq!(read_uptime_seconds(&fixture("pi4")).unwrap(), 86754.32);
        assert_eq!(read_uptime_seconds(&fixture("pi5")).unwrap(), 3600.75);
        let err = parse_uptime("soon", Path::new("/p/uptime")).unwrap_err();
        assert!(matches!(err, HostError::Parse { .. }));
        assert!(parse_uptime("", Path::new("uptime")).is_err());
    }

    #[test]
    fn reads_the_load_average_of_pi4_and_pi5() {
        let load = read_loadavg(&fixture("pi4")).unwrap();
        assert_eq!(load, LoadAvg { one: 0.08, five: 0.12, fifteen: 0.10, running: 1, total: 213 });
        let load = read_loadavg(&fixture("pi5")).unwrap();
        assert_eq!((load.one, load.running, load.total), (1.25, 3, 287));
    }

    #[test]
    fn rejects_malformed_load_averages_naming_the_file() {
        for text in ["", "0.1 0.2", "0.1 0.2 0.3 4", "a 0.2 0.3 1/2 3", "0.1 0.2 0.3 x/2 3", "0.1 0.2 0.3 1/y 3"] {
            let err = parse_loadavg(text, Path::new("/p/loadavg")).unwrap_err();
            assert!(err.to_string().contains("/p/loadavg"), "{text}: {err}");
        }
    }

    #[test]
    fn reads_the_os_of_this_machine() {
        let roots = Roots::system();
        let os = read_os(&roots).unwrap();
        assert!(!os.kernel_release.is_empty());
        assert!(!os.hostname.is_empty());
        assert!(read_uptime_seconds(&roots).unwrap() > 0.0);
        let load = read_loadavg(&roots).unwrap();
        assert!(load.total >= 1);
    }
}
