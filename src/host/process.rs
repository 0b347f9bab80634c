//! Processes: one sample of each process's identity, owner, CPU time and memory.
//!
//! CPU usage of a process, like that of the machine, is a difference between two samples of
//! `cpu_ticks`; this module only takes samples. `/proc/<pid>/stat` is the compact source, but
//! its second field is the command name in parentheses, which a process may set to anything
//! (spaces and ')' included), so the fields are counted from the last ')'.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::Path;

use nix::unistd::{sysconf, SysconfVar};
use schemars::JsonSchema;
use serde::Serialize;

use super::{parse_error, read_optional_text, HostError, Result, Roots};

/// One process at the moment it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ProcSample {
    /// Process id.
    pub pid: u32,
    /// Parent process id (0 for the kernel's own first processes).
    pub ppid: u32,
    /// Command name as the kernel keeps it (at most 15 bytes, settable by the process).
    pub name: String,
    /// Scheduler state letter: R running, S sleeping, D uninterruptible (usually disk I/O),
    /// Z zombie, T stopped, t traced, I idle kernel thread, X dead.
    pub state: String,
    /// Real user id of the owner.
    pub uid: Option<u32>,
    /// Name of the owner, when the user database knows the uid.
    pub user: Option<String>,
    /// Command line, one argument per element; empty for kernel threads.
    pub cmdline: Vec<String>,
    /// CPU time used so far (user + system) in clock ticks; see clock_ticks_per_second.
    pub cpu_ticks: u64,
    /// Resident memory (RAM actually used).
    pub rss_bytes: u64,
    /// Virtual memory size (address space reserved, mostly not in RAM).
    pub vsz_bytes: u64,
    /// Number of threads.
    pub threads: u32,
    /// When the process started, in clock ticks after boot.
    pub start_ticks: u64,
}

/// Samples every process in `<proc>`, sorted by pid. Processes that exit while being read,
/// or whose files this user may not read, are left out.
pub fn list_processes(roots: &Roots) -> Result<Vec<ProcSample>> {
    let users = read_users(roots)?;
    let entries = fs::read_dir(&roots.proc).map_err(|source| HostError::Read { path: roots.proc.clone(), source })?;
    let mut samples = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        match read_sample(&entry.path(), &users) {
            Ok(sample) => samples.push(sample),
            Err(e) => log::debug!("skipping process {pid}: {e}"),
        }
    }
    samples.sort_by_key(|s| s.pid);
    Ok(samples)
}

/// Samples one process; [`HostError::NotFound`] when it does not exist (or just exited).
pub fn read_process(roots: &Roots, pid: u32) -> Result<ProcSample> {
    let users = read_users(roots)?;
    read_sample(&roots.proc.join(pid.to_string()), &users).map_err(|e| match e {
        HostError::Read { ref source, .. } if is_gone(source) => HostError::NotFound { what: format!("process {pid}") },
        other => other,
    })
}

/// ENOENT when the directory is gone; ESRCH when the process died after it was opened.
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ESRCH)
}

fn read_sample(dir: &Path, users: &HashMap<u32, String>) -> Result<ProcSample> {
    let stat_path = dir.join("stat");
    let stat = parse_pid_stat(&read_bytes_lossy(&stat_path)?, &stat_path)?;
    let status_path = dir.join("status");
    let status = parse_pid_status(&read_bytes_lossy(&status_path)?, &status_path)?;
    let cmdline = parse_cmdline(&read_bytes(&dir.join("cmdline"))?);
    let rss_bytes = status.vm_rss_bytes.unwrap_or_else(|| stat.rss_pages.saturating_mul(page_size()));
    Ok(ProcSample {
        pid: stat.pid,
        ppid: stat.ppid,
        name: stat.comm,
        state: stat.state,
        uid: status.uid,
        user: status.uid.and_then(|uid| users.get(&uid).cloned()),
        cmdline,
        cpu_ticks: stat.utime.saturating_add(stat.stime),
        rss_bytes,
        vsz_bytes: stat.vsize,
        threads: stat.threads,
        start_ticks: stat.start_ticks,
    })
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| HostError::Read { path: path.to_path_buf(), source })
}

/// A command name may hold any bytes, not only UTF-8.
fn read_bytes_lossy(path: &Path) -> Result<String> {
    Ok(String::from_utf8_lossy(&read_bytes(path)?).into_owned())
}

/// The fields of `/proc/<pid>/stat` this module uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PidStat {
    pid: u32,
    comm: String,
    state: String,
    ppid: u32,
    utime: u64,
    stime: u64,
    threads: u32,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

fn parse_pid_stat(text: &str, path: &Path) -> Result<PidStat> {
    let bad = |what: &str| parse_error(path, format!("{what} in {:?}", text.trim_end()));
    let open = text.find('(').ok_or_else(|| bad("no '(' before the command name"))?;
    let close = text.rfind(')').filter(|&c| c > open).ok_or_else(|| bad("no ')' after the command name"))?;
    let pid = text[..open].trim().parse::<u32>().map_err(|_| bad("bad pid"))?;
    let comm = text[open + 1..close].to_string();
    // Fields after the command name, numbered from 3 as in proc(5).
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied().ok_or_else(|| bad(&format!("no field {n}")));
    let number = |n: usize| field(n)?.parse::<u64>().map_err(|_| bad(&format!("field {n} is not a number")));
    let small = |n: usize| u32::try_from(number(n)?).map_err(|_| bad(&format!("field {n} is out of range")));
    Ok(PidStat {
        pid,
        comm,
        state: field(3)?.to_string(),
        ppid: small(4)?,
        utime: number(14)?,
        stime: number(15)?,
        threads: small(20)?,
        start_ticks: number(22)?,
        vsize: number(23)?,
        rss_pages: number(24)?,
    })
}

/// The fields of `/proc/<pid>/status` this module uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct PidStatus {
    uid: Option<u32>,
    /// VmRSS is in kB whatever the page size (the Pi 5 kernel uses 16 KiB pages), and is
    /// absent for kernel threads.
    vm_rss_bytes: Option<u64>,
}

fn parse_pid_status(text: &str, path: &Path) -> Result<PidStatus> {
    let mut status = PidStatus::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let first = || value.split_whitespace().next().unwrap_or("");
        match key {
            "Uid" => {
                let uid = first().parse::<u32>().map_err(|_| parse_error(path, format!("bad Uid line {line:?}")))?;
                status.uid = Some(uid);
            }
            "VmRSS" => {
                let kb = first().parse::<u64>().map_err(|_| parse_error(path, format!("bad VmRSS line {line:?}")))?;
                status.vm_rss_bytes = Some(kb.saturating_mul(1024));
            }
            _ => {}
        }
    }
    Ok(status)
}

/// Splits the NUL-separated argument vector; a process that rewrote its title without NULs
/// yields a single element.
fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|&b| b == 0).map(|arg| String::from_utf8_lossy(arg).into_owned()).collect()
}

/// User names by uid from `<etc>/passwd`; empty when the file is absent. Malformed lines
/// (such as NIS `+` entries) are skipped: they name no local user.
fn read_users(roots: &Roots) -> Result<HashMap<u32, String>> {
    let text = read_optional_text(&roots.etc.join("passwd"))?.unwrap_or_default();
    Ok(parse_passwd(&text))
}

fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut users = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_password), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse::<u32>() {
            // The first entry for a uid is the one `ls` and `ps` show.
            users.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    users
}

/// What this process has used so far, for its own `process_*` metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnUsage {
    /// CPU time (user + system) in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    /// When it started, in clock ticks after boot.
    pub start_ticks: u64,
}

/// Reads `<proc>/self/stat`: one small file, cheap enough for every scrape.
pub fn read_own_usage(proc: &Path) -> Result<OwnUsage> {
    let path = proc.join("self/stat");
    let stat = parse_pid_stat(&read_bytes_lossy(&path)?, &path)?;
    Ok(OwnUsage {
        cpu_ticks: stat.utime.saturating_add(stat.stime),
        rss_bytes: stat.rss_pages.saturating_mul(page_size()),
        start_ticks: stat.start_ticks,
    })
}

/// How many file descriptors this process has open (the directory being read included).
pub fn count_own_fds(proc: &Path) -> Result<u64> {
    let path = proc.join("self/fd");
    let entries = fs::read_dir(&path).map_err(|source| HostError::Read { path: path.clone(), source })?;
    Ok(entries.count() as u64)
}

/// Clock ticks per second (USER_HZ) that `cpu_ticks` and `start_ticks` count; 100 when the
/// system does not say, the value Linux has used on every architecture for decades.
pub fn clock_ticks_per_second() -> u64 {
    positive_sysconf(SysconfVar::CLK_TCK).unwrap_or(100)
}

/// Memory page size in bytes (4096 on most machines, 16384 with the Pi 5's default kernel).
pub fn page_size() -> u64 {
    positive_sysconf(SysconfVar::PAGE_SIZE).unwrap_or(4096)
}

/// A sysconf value when the system gives a positive one (its width is the target's `long`).
fn positive_sysconf(variable: SysconfVar) -> Option<u64> {
    let value = sysconf(variable).ok().flatten()?;
    u64::try_from(value).ok().filter(|&v| v > 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host::fixture;

    #[test]
    fn lists_the_processes_of_a_pi4() {
        let processes = list_processes(&fixture("pi4")).unwrap();
        let pids: Vec<_> = processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![1, 2, 812]);

        let init = &processes[0];
        assert_eq!((init.name.as_str(), init.state.as_str(), init.ppid), ("systemd", "S", 0));
        assert_eq!((init.uid, init.user.as_deref()), (Some(0), Some("root")));
        assert_eq!(init.cmdline, vec!["/sbin/init", "splash"]);
        assert_eq!(init.cpu_ticks, 236 + 418);
        assert_eq!(init.rss_bytes, 12280 * 1024);
        assert_eq!(init.vsz_bytes, 171806720);

        let kthreadd = &processes[1];
        assert!(kthreadd.cmdline.is_empty());
        assert_eq!(kthreadd.rss_bytes, 0);
    }

    #[test]
    fn reads_a_server_whose_command_name_has_spaces_and_parentheses() {
        let server = read_process(&fixture("pi4"), 812).unwrap();
        assert_eq!(server.name, "mcp-raspi (srv)");
        assert_eq!(server.state, "S");
        assert_eq!(server.ppid, 1);
        assert_eq!((server.uid, server.user.as_deref()), (Some(996), Some("mcp")));
        assert_eq!(server.cmdline, vec!["/usr/bin/mcp-raspi-server", "--config", "/etc/mcp-raspi/config.yaml"]);
        assert_eq!(server.cpu_ticks, 5230 + 1875);
        assert_eq!(server.rss_bytes, 18432 * 1024);
        assert_eq!(server.vsz_bytes, 312475648);
        assert_eq!(server.threads, 6);
        assert_eq!(server.start_ticks, 1534);
    }

    #[test]
    fn is_not_fooled_by_a_command_name_that_mimics_stat_fields_on_a_pi5() {
        let server = read_process(&fixture("pi5"), 1047).unwrap();
        assert_eq!(server.name, "mcp) Z 7 (srv");
        assert_eq!((server.state.as_str(), server.ppid), ("R", 1));
        // 16 MiB resident, counted in kB so the Pi 5's 16 KiB pages do not matter.
        assert_eq!(server.rss_bytes, 16384 * 1024);
        assert_eq!(server.threads, 5);
    }

    #[test]
    fn reports_a_missing_process_as_not_found() {
        let err = read_process(&fixture("pi5"), 4242).unwrap_err();
        assert!(matches!(err, HostError::NotFound { ref what } if what == "process 4242"), "{err}");
    }

    #[test]
    fn rejects_malformed_stat_lines_naming_the_file() {
        let path = Path::new("/p/7/stat");
        for text in ["", "7 comm S 1", "x (a) S 1", "7 (a) S", "7 (a) S 1 2 3 4 5 6 7 8 9 10 x 12"] {
            let err = parse_pid_stat(text, path).unwrap_err();
            assert!(matches!(err, HostError::Parse { path: ref p, .. } if p == path), "{text:?}");
        }
        assert!(parse_pid_status("Uid:\tnobody\n", path).is_err());
        assert!(parse_pid_status("VmRSS:\t lots kB\n", path).is_err());
    }

    #[test]
    fn splits_command_lines_at_nul() {
        assert_eq!(parse_cmdline(b"a\0b c\0\0d\0"), vec!["a", "b c", "", "d"]);
        assert_eq!(parse_cmdline(b"nginx: worker process"), vec!["nginx: worker process"]);
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn skips_passwd_lines_without_a_uid() {
        let users = parse_passwd("+::::::\nroot:x:0:0::/root:/bin/sh\ntoor:x:0:0::/:/bin/sh\nbroken\n");
        assert_eq!(users.len(), 1);
        assert_eq!(users[&0], "root");
    }

    #[test]
    fn finds_this_test_process_on_this_machine() {
        let roots = Roots::system();
        let me = std::process::id();
        let processes = list_processes(&roots).unwrap();
        assert!(processes.iter().any(|p| p.pid == me));
        let sample = read_process(&roots, me).unwrap();
        assert_eq!(sample.pid, me);
        assert!(sample.rss_bytes > 0);
        assert!(sample.threads >= 1);
        assert_eq!(sample.uid, Some(nix::unistd::getuid().as_raw()));
        assert!(clock_ticks_per_second() >= 1);
        assert!(page_size() >= 4096);
    }
}
