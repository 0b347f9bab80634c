//! `mcp-raspi backup` and `mcp-raspi restore` (also installed as `mcp-raspi-backup` and
//! `mcp-raspi-restore`): what an operator needs to rebuild a Pi's mcp-raspi on a new SD
//! card, in one verified archive.
//!
//! A backup saves the configuration directory with its secrets and keys, the state files
//! (`version.json` and the other records at the top of the state directory), a consistent
//! copy of the metrics database (`metrics.rs`), the audit log with all its rotated copies,
//! the application logs of the last seven days, the administrator's units and drop-ins of
//! the product's services, and a description of the system. It is written under a temporary
//! name, read back and checked against its manifest, and only then given its name; old
//! backups are removed after the retention period.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Args as ClapArgs;
use sha2::{Digest, Sha256};

use super::{CliError, DEFAULT_CONFIG};
use crate::base::{hex, Hashing, VERSION};
use crate::config::Config;

pub mod archive;
mod metrics;
mod restore;
#[cfg(test)]
mod tests;

pub use restore::{run_restore, RestoreArgs};

use archive::{Entry, Kind, Manifest, CHECKSUMS, FORMAT, FORMAT_WITHOUT_METRICS, MANIFEST, PRODUCT, SYSTEM_INFO};

/// Where backups go unless told otherwise (Debian's place for them).
pub const DEFAULT_DEST: &str = "/var/backups/mcp-raspi";
/// Application logs older than this are left out; audit logs are all kept.
const APP_LOG_DAYS: u64 = 7;
/// The administrator's units and drop-ins.
pub const UNITS_DIR: &str = "/etc/systemd/system";

/// `mcp-raspi backup`.
#[derive(Debug, ClapArgs)]
pub struct BackupArgs {
    /// Configuration file: its directory is saved, and it says where state and logs are.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Directory the archive is written to (created, mode 0700, if missing).
    #[arg(long, value_name = "DIR", env = "BACKUP_BASE_DIR", default_value = DEFAULT_DEST)]
    pub dest: PathBuf,
    /// Remove backups of this program in DIR older than this many days; 0 keeps them all.
    #[arg(long, value_name = "DAYS", env = "RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u64,
    /// Directory of the administrator's systemd units and drop-ins.
    #[arg(long, value_name = "DIR", default_value = UNITS_DIR)]
    pub units_dir: PathBuf,
    /// Print one JSON object describing the backup instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The directories an installation keeps its files in, from its configuration.
#[derive(Debug, Clone)]
pub struct Places {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub app_log: String,
    pub audit_log: String,
    pub units_dir: PathBuf,
}

impl Places {
    pub fn of(config_path: &Path, config: &Config, units_dir: &Path) -> Places {
        let logging = &config.logging;
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Places {
            config_dir: config_path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
            state_dir: config.paths.state_dir.clone(),
            log_dir: logging.audit_path.parent().map(Path::to_path_buf).unwrap_or_default(),
            app_log: name(&logging.app_path),
            audit_log: name(&logging.audit_path),
            units_dir: units_dir.to_path_buf(),
        }
    }

    pub fn area_dir(&self, area: &str) -> Option<&Path> {
        match area {
            "config" => Some(&self.config_dir),
            "state" => Some(&self.state_dir),
            "logs" => Some(&self.log_dir),
            "systemd" => Some(&self.units_dir),
            _ => None,
        }
    }
}

pub(super) use crate::cli::update::load as load_config;

/// The configuration of a file that sets nothing: every place at its default.
pub fn default_config() -> Config {
    let text = format!("config_version: \"{}\"\n", crate::config::CONFIG_VERSION);
    Config::from_yaml(&text, "defaults").unwrap_or_else(|_| unreachable!("the defaults load"))
}

/// Whether a unit file or drop-in directory in the units directory is the product's.
fn is_product_unit(name: &str) -> bool {
    name.starts_with("mcp-raspi") || name.starts_with("raspi-ops-agent")
}

/// Whether a file of the state directory is saved as it is: the records at its top. The
/// metrics database is saved apart, as a consistent copy (a copy of the live files can be
/// torn); its write-ahead files and the copies kept beside it are not saved.
fn is_saved_state(name: &str) -> bool {
    !name.starts_with('.') && !name.starts_with("metrics.db")
}

fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

/// A file or directory to save: where it is, and its entry in the manifest.
struct Source {
    path: PathBuf,
    /// Seconds since the epoch of its last change, as the tar header keeps it.
    mtime: u64,
    entry: Entry,
}

fn source(path: &Path, archived: String, meta: &fs::Metadata) -> Source {
    Source {
        path: path.to_path_buf(),
        mtime: meta.mtime().max(0) as u64,
        entry: Entry {
            path: archived,
            kind: if meta.is_dir() { Kind::Dir } else { Kind::File },
            mode: meta.mode() & 0o7777,
            owner: user_name(meta.uid()),
            group: group_name(meta.gid()),
            size: if meta.is_dir() { 0 } else { meta.len() },
            sha256: None,
        },
    }
}

/// Adds `dir` (as `area/rel`) and, recursively, the files and directories under it that
/// `keep` accepts (by name, metadata, depth). Symlinks and special files are skipped.
fn collect(
    dir: &Path,
    archived: &str,
    depth: usize,
    keep: &dyn Fn(&str, &fs::Metadata, usize) -> bool,
    out: &mut Vec<Source>,
    skipped: &mut Vec<String>,
) -> Result<(), String> {
    let mut names: Vec<_> = match fs::read_dir(dir) {
        Ok(read) => read.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        let inner = format!("{archived}/{name}");
        if !keep(&name, &meta, depth) {
            continue;
        }
        if meta.is_dir() {
            out.push(source(&path, inner.clone(), &meta));
            collect(&path, &inner, depth + 1, keep, out, skipped)?;
        } else if meta.is_file() {
            out.push(source(&path, inner, &meta));
        } else {
            skipped.push(format!("{}: not a regular file", path.display()));
        }
    }
    Ok(())
}

/// Everything a backup of `places` saves, parents before children.
fn sources(places: &Places, skipped: &mut Vec<String>) -> Result<Vec<Source>, String> {
    let mut out = Vec::new();
    let area = |out: &mut Vec<Source>, name: &str, dir: &Path| -> Result<bool, String> {
        match fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {
                out.push(source(dir, name.to_string(), &meta));
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    if !area(&mut out, "config", &places.config_dir)? {
        return Err(format!("the configuration directory {} does not exist", places.config_dir.display()));
    }
    collect(&places.config_dir, "config", 0, &|_, _, _| true, &mut out, skipped)?;
    if area(&mut out, "state", &places.state_dir)? {
        let keep = |name: &str, meta: &fs::Metadata, _: usize| meta.is_file() && is_saved_state(name);
        collect(&places.state_dir, "state", 0, &keep, &mut out, skipped)?;
    }
    if area(&mut out, "logs", &places.log_dir)? {
        let week = SystemTime::now() - Duration::from_secs(APP_LOG_DAYS * 86_400);
        let (audit, app) = (places.audit_log.clone(), places.app_log.clone());
        let keep = move |name: &str, meta: &fs::Metadata, _: usize| {
            meta.is_file()
                && ((!audit.is_empty() && name.starts_with(&audit))
                    || (!app.is_empty() && name.starts_with(&app) && meta.modified().is_ok_and(|m| m >= week)))
        };
        collect(&places.log_dir, "logs", 0, &keep, &mut out, skipped)?;
    }
    if area(&mut out, "systemd", &places.units_dir)? {
        // The product's unit files and drop-in directories, and everything inside those.
        let keep = |name: &str, _: &fs::Metadata, depth: usize| depth > 0 || is_product_unit(name);
        collect(&places.units_dir, "systemd", 0, &keep, &mut out, skipped)?;
    }
    Ok(out)
}

/// A description of the machine, for the person restoring onto another one.
fn system_info(current: Option<&str>) -> String {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let model = read("/proc/device-tree/model").trim_end_matches('\0').trim().to_string();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_default();
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let or_unknown = |s: String| if s.is_empty() { "unknown".to_string() } else { s };
    format!(
        "Hostname: {}\nModel: {}\nOS: {}\nKernel: {}\nBackup Date: {}\nMCP Version: {}\nWritten by: mcp-raspi {VERSION}\n",
        hostname(),
        or_unknown(model),
        or_unknown(os),
        or_unknown(kernel),
        humantime::format_rfc3339_seconds(SystemTime::now()),
        current.unwrap_or("unknown"),
    )
}

pub fn hostname() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.nodename().to_string_lossy().into_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `20261203-051500` for now, in UTC.
fn stamp() -> String {
    let text = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    // 2026-12-03T05:15:00Z
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    format!("{}-{}", &digits[..8.min(digits.len())], &digits[8.min(digits.len())..])
}

/// Removes the partial archive unless it was kept.
struct Partial<'a>(&'a Path, bool);

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if !self.1 {
            let _ = fs::remove_file(self.0);
        }
    }
}

/// An I/O error while writing the archive, with what to do about a full disk.
fn write_error(dest: &Path, e: &io::Error) -> String {
    if e.raw_os_error() == Some(nix::libc::ENOSPC) {
        format!(
            "no space left in {}: the backup was not written (nothing was kept of it); free some space or name another directory with --dest DIR",
            dest.display()
        )
    } else {
        format!("cannot write the backup in {}: {e}", dest.display())
    }
}

/// What a backup did.
#[derive(Debug, serde::Serialize)]
pub struct Written {
    pub archive: PathBuf,
    pub bytes: u64,
    pub files: usize,
    pub current_version: Option<String>,
    pub removed: Vec<PathBuf>,
    pub skipped: Vec<String>,
    /// The copy of the metrics database saved, if any (when it was left out, `skipped` says why).
    pub metrics_db: Option<metrics::SavedDb>,
}

pub fn run_backup(args: BackupArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let (config, warning) = match load_config(&args.config) {
        Ok(c) => (c, None),
        // A broken configuration is when a backup of it matters most: saved with the
        // default places of state and logs.
        Err(e) => (
            default_config(),
            Some(format!("the configuration does not load ({e}); state and logs are taken from their default places")),
        ),
    };
    if let Some(w) = &warning {
        writeln!(io::stderr(), "mcp-raspi: warning: {w}").ok();
    }
    let places = Places::of(&args.config, &config, &args.units_dir);
    let written = write_backup(&places, &args.dest, args.retention_days)?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&written).unwrap_or_default()).map_err(|e| e.to_string())?;
        return Ok(());
    }
    let mut text = format!(
        "backup written and verified: {} ({} files, {:.1} MB, version {})\n",
        written.archive.display(),
        written.files,
        written.bytes as f64 / 1e6,
        written.current_version.as_deref().unwrap_or("unknown")
    );
    if let Some(db) = &written.metrics_db {
        text.push_str(&format!(
            "  metrics database: {}, a consistent copy that passed SQLite's integrity check ({})\n",
            crate::cli::storage::human_bytes(db.bytes),
            db.archived
        ));
    }
    for s in &written.skipped {
        text.push_str(&format!("  left out: {s}\n"));
    }
    for r in &written.removed {
        text.push_str(&format!("  removed old backup {}\n", r.display()));
    }
    out.write_all(text.as_bytes()).map_err(|e| CliError::from(e.to_string()))
}

/// Writes a verified backup of `places` into `dest` and applies the retention.
pub fn write_backup(places: &Places, dest: &Path, retention_days: u64) -> Result<Written, String> {
    let mut skipped = Vec::new();
    let mut sources = sources(places, &mut skipped)?;
    let current = crate::update::state::VersionState::load(&places.state_dir.join("version.json"))
        .ok()
        .flatten()
        .and_then(|s| s.current_version);
    if !dest.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dest)
            .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    }
    // The metrics database: a copy made and checked beside the archive, saved with the owner
    // and mode of the live file, after the other state files.
    let mut db = if places.state_dir.is_dir() {
        metrics::copy(&places.state_dir, dest).unwrap_or_else(|why| {
            skipped.push(why);
            None
        })
    } else {
        None
    };
    let live = db.as_ref().map(|snapshot| fs::metadata(&snapshot.source));
    match (live, &db) {
        (Some(Ok(meta)), Some(snapshot)) => {
            let mut saved = source(&snapshot.path, metrics::ARCHIVED.into(), &meta);
            saved.entry.size = snapshot.bytes;
            let in_state = |s: &Source| s.entry.path == "state" || s.entry.path.starts_with("state/");
            let at = sources.iter().rposition(in_state).map_or(sources.len(), |i| i + 1);
            sources.insert(at, saved);
        }
        (Some(Err(e)), Some(snapshot)) => {
            skipped.push(format!("{}: {e} after it was copied; it was left out", snapshot.source.display()));
            db = None;
        }
        _ => {}
    }
    // Named by the second it was taken; a second backup within that second gets a suffix.
    let base = format!("mcp-raspi-{}-{}", hostname(), stamp());
    let taken = |name: &str| dest.join(format!("{name}.tar.gz")).exists();
    let Some(name) =
        std::iter::once(base.clone()).chain((2..100).map(|n| format!("{base}-{n}"))).find(|name| !taken(name))
    else {
        return Err(format!("{} holds a hundred backups named {base}: try again in a second", dest.display()));
    };
    let archive = dest.join(format!("{name}.tar.gz"));
    let partial_path = dest.join(format!(".{name}.tar.gz.partial"));
    let mut partial = Partial(&partial_path, false);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial_path)
        .map_err(|e| write_error(dest, &e))?;
    let total: u64 = sources.iter().map(|s| s.entry.size).sum();
    let bar = progress(total);
    let gz = flate2::write::GzEncoder::new(BufWriter::new(file), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut entries = Vec::new();
    for s in &mut sources {
        let member = format!("{name}/{}", s.entry.path);
        let mut header = tar::Header::new_gnu();
        header.set_mode(s.entry.mode);
        header.set_mtime(s.mtime);
        header.set_username(&s.entry.owner).ok();
        header.set_groupname(&s.entry.group).ok();
        match s.entry.kind {
            Kind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &member, io::empty()).map_err(|e| write_error(dest, &e))?;
            }
            Kind::File => {
                let mut file = match fs::File::open(&s.path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        skipped.push(format!("{}: removed while the backup ran", s.path.display()));
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                        return Err(format!("cannot read {}: {e}; run the backup as root (sudo)", s.path.display()))
                    }
                    Err(e) => return Err(format!("cannot read {}: {e}", s.path.display())),
                };
                // A log may grow while it is read: what it held when the backup looked is saved.
                let size =
                    file.metadata().map(|m| m.len()).map_err(|e| format!("cannot read {}: {e}", s.path.display()))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                let mut reader = Hashing::new((&mut file).take(size));
                tar.append_data(&mut header, &member, &mut reader).map_err(|e| write_error(dest, &e))?;
                if reader.count != size {
                    return Err(format!("{} shrank while it was saved; run the backup again", s.path.display()));
                }
                s.entry.size = size;
                s.entry.sha256 = Some(hex(&reader.hasher.finalize()));
                if let Some(bar) = &bar {
                    bar.inc(size);
                }
            }
        }
        entries.push(s.entry.clone());
    }
    let info = system_info(current.as_deref());
    entries.push(Entry {
        path: SYSTEM_INFO.into(),
        kind: Kind::File,
        mode: 0o644,
        owner: "root".into(),
        group: "root".into(),
        size: info.len() as u64,
        sha256: Some(hex(&Sha256::digest(info.as_bytes()))),
    });
    let areas: BTreeMap<String, PathBuf> = ["config", "state", "logs", "systemd"]
        .iter()
        .filter_map(|a| places.area_dir(a).map(|d| (a.to_string(), d.to_path_buf())))
        .collect();
    let manifest = Manifest {
        product: PRODUCT.into(),
        format: if entries.iter().any(|e| e.path == metrics::ARCHIVED) { FORMAT } else { FORMAT_WITHOUT_METRICS },
        written_by: VERSION.into(),
        created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        hostname: hostname(),
        current_version: current.clone(),
        areas,
        entries,
        skipped: skipped.clone(),
    };
    let manifest_text = serde_json::to_string_pretty(&manifest).map_err(|e| e.to_string())?;
    for (member, text) in
        [(SYSTEM_INFO, info.as_str()), (MANIFEST, manifest_text.as_str()), (CHECKSUMS, manifest.checksums().as_str())]
    {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(text.len() as u64);
        header.set_mtime(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, format!("{name}/{member}"), text.as_bytes()).map_err(|e| write_error(dest, &e))?;
    }
    let gz = tar.into_inner().map_err(|e| write_error(dest, &e))?;
    let buffered = gz.finish().map_err(|e| write_error(dest, &e))?;
    let file = buffered.into_inner().map_err(|e| write_error(dest, e.error()))?;
    file.sync_all().map_err(|e| write_error(dest, &e))?;
    drop(file);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    // Read back as a restore would, before it counts as a backup.
    let staged = archive::read_and_verify(&partial_path, dest)
        .map_err(|e| format!("the backup did not verify after writing: {e}"))?;
    if staged.manifest != manifest {
        return Err("the backup did not verify after writing: its manifest reads back differently".into());
    }
    drop(staged);
    let metrics_db = db.as_ref().map(metrics::Snapshot::saved);
    drop(db);
    fs::rename(&partial_path, &archive).map_err(|e| write_error(dest, &e))?;
    partial.1 = true;
    fs::File::open(dest).and_then(|d| d.sync_all()).map_err(|e| write_error(dest, &e))?;
    point_latest_at(dest, &archive).map_err(|e| write_error(dest, &e))?;
    let bytes = fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    let removed = apply_retention(dest, retention_days, &archive);
    Ok(Written {
        archive,
        bytes,
        files: manifest.files().count(),
        current_version: current,
        removed,
        skipped,
        metrics_db,
    })
}

/// The name of the newest backup in a destination, a symlink (`mcp-raspi-restore
/// /var/backups/mcp-raspi/latest.tar.gz`, as the runbook writes it).
pub const LATEST: &str = "latest.tar.gz";

/// Points `dest/latest.tar.gz` at `archive`, replacing the old link atomically.
fn point_latest_at(dest: &Path, archive: &Path) -> io::Result<()> {
    let name = archive.file_name().unwrap_or_default();
    let tmp = dest.join(format!(".{LATEST}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)?;
    fs::rename(&tmp, dest.join(LATEST)).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn progress(total: u64) -> Option<indicatif::ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template("saving [{bar:30}] {bytes}/{total_bytes}") {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

/// Removes this program's backups in `dest` older than `days` (never `keep`).
fn apply_retention(dest: &Path, days: u64, keep: &Path) -> Vec<PathBuf> {
    if days == 0 {
        return Vec::new();
    }
    let Some(limit) = SystemTime::now().checked_sub(Duration::from_secs(days.saturating_mul(86_400))) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    let Ok(read) = fs::read_dir(dest) else { return removed };
    for entry in read.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if !name.starts_with("mcp-raspi-") || !name.ends_with(".tar.gz") || path == keep {
            continue;
        }
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|m| m < limit);
        if old && fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    removed.sort();
    removed
}
