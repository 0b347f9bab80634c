//! `mcp-raspi restore FILE`: puts a backup back. The archive is read and checked completely
//! before anything changes; then the services are stopped, each file is written atomically
//! with its saved mode and its owner and group looked up by name (user ids differ between
//! installations), `version.json` is reconciled with the `current` link, and the services
//! are started again and must answer their health check. The metrics database is put back
//! with its old write-ahead files removed, and only when no process has it open
//! (`metrics.rs`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::archive::{self, Entry, Kind, Staged};
use super::{default_config, load_config, metrics, Places, UNITS_DIR};
use crate::base::hex;
use crate::cli::{CliError, DEFAULT_CONFIG};
use crate::config::Config;
use crate::update::release::Owner;
use crate::update::state::write_atomically_from;

/// `mcp-raspi restore`.
#[derive(Debug, ClapArgs)]
pub struct RestoreArgs {
    /// The archive written by `mcp-raspi backup`.
    #[arg(value_name = "FILE")]
    pub archive: PathBuf,
    /// Check the archive and list what would change, changing nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// This installation's configuration file: its directory receives the saved one.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Directory of the administrator's systemd units and drop-ins.
    #[arg(long, value_name = "DIR", default_value = UNITS_DIR)]
    pub units_dir: PathBuf,
    /// Restore the files without stopping and starting the services.
    #[arg(long)]
    pub no_restart: bool,
    /// Seconds to wait for the started server to answer its health check.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub health_timeout: u64,
    /// Print one JSON object describing the restore instead of text.
    #[arg(long)]
    pub json: bool,
    /// Put back only this part of the backup, leaving everything else as it is here:
    /// `metrics`, the metrics database (into the state directory of this installation's
    /// configuration; the services are stopped and started around it as for a whole restore).
    #[arg(long, value_name = "PART", value_enum)]
    pub only: Option<Part>,
}

/// A part of a backup that can be restored alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The metrics database.
    Metrics,
}

/// What happens to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    New,
    Replace,
    Same,
}

#[derive(Debug, Serialize)]
struct Step {
    path: PathBuf,
    change: Change,
    #[serde(skip)]
    entry: Entry,
}

/// What a restore did (or, dry, would do).
#[derive(Debug, Serialize)]
struct Report {
    archive: PathBuf,
    backup_of: String,
    created: String,
    backup_version: Option<String>,
    dry_run: bool,
    new: Vec<PathBuf>,
    replaced: Vec<PathBuf>,
    unchanged: usize,
    notes: Vec<String>,
    version: Option<String>,
    healthy: Option<bool>,
    seconds: f64,
}

/// Where each saved area goes on this system: the configuration directory of this
/// installation, and the state and log directories the restored configuration names (or,
/// when the configuration is not restored, this installation's).
fn places_for(args: &RestoreArgs, staged: &Staged, notes: &mut Vec<String>) -> Places {
    if args.only.is_some() {
        let config = load_config(&args.config).unwrap_or_else(|e| {
            notes
                .push(format!("{} does not load ({e}): the state directory is the default one", args.config.display()));
            default_config()
        });
        return Places::of(&args.config, &config, &args.units_dir);
    }
    let config_name = args.config.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "config.yml".into());
    let restored = staged.dir.path().join("config").join(&config_name);
    let config = match load_config(&restored) {
        Ok(c) => c,
        Err(e) => {
            notes.push(format!("the saved configuration does not load here ({e}): state and logs go where this installation's configuration says"));
            load_config(&args.config).unwrap_or_else(|_| default_config())
        }
    };
    Places::of(&args.config, &config, &args.units_dir)
}

fn sha256_of(path: &Path) -> Option<String> {
    let mut file = fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).ok()?;
    Some(hex(&hasher.finalize()))
}

fn plan(staged: &Staged, places: &Places) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for entry in &staged.manifest.entries {
        let Some(rel) = archive::safe_relative(&entry.path) else { continue };
        let mut parts = rel.components();
        let area = parts.next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        let Some(dir) = places.area_dir(&area) else { continue };
        let rest = parts.as_path();
        let path = if rest.as_os_str().is_empty() { dir.to_path_buf() } else { dir.join(rest) };
        let change = match (entry.kind, fs::symlink_metadata(&path)) {
            (_, Err(_)) => Change::New,
            (Kind::Dir, Ok(meta)) if meta.is_dir() => Change::Same,
            (Kind::File, Ok(meta)) if meta.is_file() && sha256_of(&path) == entry.sha256 => Change::Same,
            (_, Ok(meta)) if meta.is_dir() != (entry.kind == Kind::Dir) => {
                return Err(format!(
                    "{} is a {} here but a {} in the backup; move it away first; nothing was changed",
                    path.display(),
                    if meta.is_dir() { "directory" } else { "file" },
                    if entry.kind == Kind::Dir { "directory" } else { "file" }
                ))
            }
            _ => Change::Replace,
        };
        steps.push(Step { path, change, entry: entry.clone() });
    }
    Ok(steps)
}

fn uid_of(name: &str) -> Option<u32> {
    name.parse().ok().or_else(|| nix::unistd::User::from_name(name).ok().flatten().map(|u| u.uid.as_raw()))
}

fn gid_of(name: &str) -> Option<u32> {
    name.parse().ok().or_else(|| nix::unistd::Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw()))
}

/// Writes one entry in place: a directory created or given its mode, a file through a
/// temporary file beside it, synced and renamed over the old one.
fn apply(step: &Step, staged: &Staged, as_root: bool, notes: &mut Vec<String>) -> Result<(), String> {
    let e = &step.entry;
    let (uid, gid) = (uid_of(&e.owner), gid_of(&e.group));
    if as_root && (uid.is_none() || gid.is_none()) {
        notes.push(format!("{}: no user {:?} or group {:?} here; left to root", step.path.display(), e.owner, e.group));
    }
    let give = |path: &Path| -> Result<(), String> {
        if as_root {
            std::os::unix::fs::lchown(path, uid.or(Some(0)), gid.or(Some(0)))
                .map_err(|err| format!("cannot give {} to {}:{}: {err}", path.display(), e.owner, e.group))?;
        }
        Ok(())
    };
    match e.kind {
        Kind::Dir => {
            if step.change == Change::New {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(e.mode)
                    .create(&step.path)
                    .map_err(|err| format!("cannot create {}: {err}", step.path.display()))?;
            }
            give(&step.path)?;
            fs::set_permissions(&step.path, fs::Permissions::from_mode(e.mode))
                .map_err(|err| format!("cannot set the mode of {}: {err}", step.path.display()))
        }
        Kind::File => {
            let owner = as_root.then(|| Owner { uid: uid.unwrap_or(0), gid: gid.unwrap_or(0) });
            if e.path == metrics::ARCHIVED {
                return metrics::put_back(&step.path, &staged.path_of(e), e.mode, owner);
            }
            let from =
                fs::File::open(staged.path_of(e)).map_err(|err| format!("cannot read the staged {}: {err}", e.path))?;
            write_atomically_from(&step.path, from, e.mode, owner).map_err(|err| err.to_string())
        }
    }
}

fn systemctl(args: &[&str]) -> Result<(), String> {
    match Command::new("systemctl").args(args).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("systemctl {} failed ({s})", args.join(" "))),
        Err(e) => Err(format!("cannot run systemctl: {e}")),
    }
}

/// Waits for the server's `/healthz`; returns the version it reports.
fn wait_healthy(config: &Config, timeout: Duration) -> Result<String, String> {
    let addr = crate::selfcheck::loopback_for(config.listen_addr());
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match crate::cli::client::get_healthz(addr, Duration::from_secs(3)) {
            Ok((200, v)) => return Ok(v["version"].as_str().unwrap_or("").to_string()),
            Ok((status, _)) => last = format!("/healthz answered {status}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!("the server at {addr} did not answer /healthz within {} s: {last}", timeout.as_secs()))
}

pub fn run_restore(args: RestoreArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let started = Instant::now();
    if !args.archive.is_file() {
        return Err(CliError::from(format!(
            "{} does not exist or is not a file; nothing was changed",
            args.archive.display()
        )));
    }
    let staged = archive::read_and_verify(&args.archive, &std::env::temp_dir())?;
    let mut notes = Vec::new();
    let places = places_for(&args, &staged, &mut notes);
    let systemd = !args.no_restart && crate::cli::update::under_systemd();
    // Asked before anything else here opens the file (see `in_use`).
    let db = places.state_dir.join(crate::metrics::DB_NAME);
    let db_open = staged.manifest.files().any(|e| e.path == metrics::ARCHIVED) && db_in_use(&db)?;
    let mut steps = plan(&staged, &places)?;
    if args.only == Some(Part::Metrics) {
        // The database, and its directory should it be missing.
        steps.retain(|s| s.entry.path == metrics::ARCHIVED || s.entry.path == "state");
        if !steps.iter().any(|s| s.entry.path == metrics::ARCHIVED) {
            let why = staged.manifest.skipped.iter().find(|s| s.contains(crate::metrics::DB_NAME));
            return Err(CliError::from(format!(
                "{} holds no metrics database ({}); nothing was changed",
                args.archive.display(),
                why.map_or("it was written before backups saved it, or there was none".into(), |w| format!(
                    "it was left out: {w}"
                ))
            )));
        }
    }
    vet_metrics_db(&staged, &mut steps, &mut notes);
    let replaces_db = steps.iter().any(|s| s.entry.path == metrics::ARCHIVED);
    if args.only.is_some() && !replaces_db {
        return Err(CliError::from(format!("{}; nothing was changed", notes.join("; "))));
    }
    if replaces_db && db_open {
        if args.dry_run {
            notes.push(format!("{} is open (is mcp-raspi-server running?): {}", db.display(), stop_first(systemd)));
        } else if !systemd {
            return Err(CliError::from(format!(
                "{} is open (is mcp-raspi-server running?): {}; nothing was changed",
                db.display(),
                stop_first(false)
            )));
        }
    }
    let list = |c: Change| steps.iter().filter(|s| s.change == c).map(|s| s.path.clone()).collect::<Vec<_>>();
    let mut report = Report {
        archive: args.archive.clone(),
        backup_of: staged.manifest.hostname.clone(),
        created: staged.manifest.created.clone(),
        backup_version: staged.manifest.current_version.clone(),
        dry_run: args.dry_run,
        new: list(Change::New),
        replaced: list(Change::Replace),
        unchanged: steps.iter().filter(|s| s.change == Change::Same).count(),
        notes: Vec::new(),
        version: None,
        healthy: None,
        seconds: 0.0,
    };
    if !args.dry_run {
        let as_root = nix::unistd::geteuid().is_root();
        if systemd {
            systemctl(&["stop", "mcp-raspi-server.service", "raspi-ops-agent.service"]).map_err(|e| {
                CliError::from(format!(
                    "{e}: is mcp-raspi installed? Install the version of the backup first (apt install mcp-raspi={}); nothing was changed",
                    staged.manifest.current_version.as_deref().unwrap_or("VERSION")
                ))
            })?;
            // Something else than the services may hold the metrics database.
            if replaces_db && db_in_use(&db)? {
                let started = systemctl(&["start", "raspi-ops-agent.service", "mcp-raspi-server.service"]);
                return Err(CliError::from(format!(
                    "{} is still open with the services stopped (another program, such as sqlite3?): close it and \
                     run the restore again; nothing was changed{}",
                    db.display(),
                    started.err().map(|e| format!(", but the services did not start again: {e}")).unwrap_or_default()
                )));
            }
        }
        for step in &steps {
            apply(step, &staged, as_root, &mut notes)?;
        }
        // A part restored alone changed nothing else: no configuration, version, units or
        // rule to bring in line.
        let whole = args.only.is_none();
        let config = load_config(&args.config).unwrap_or_else(|e| {
            if whole {
                notes.push(format!("the restored configuration does not load: {e}"));
            }
            default_config()
        });
        if whole {
            report.version = reconcile(&config, &staged, &mut notes);
        }
        if systemd {
            if whole {
                // Units and drop-ins may have come back, or changed with the package
                // reinstalled before the restore: systemd reads them again before the start.
                systemctl(&["daemon-reload"])?;
                refresh_polkit_rule(&args.config, &mut notes);
            }
            systemctl(&["start", "raspi-ops-agent.service", "mcp-raspi-server.service"])?;
            match wait_healthy(&config, Duration::from_secs(args.health_timeout)) {
                Ok(version) => {
                    report.healthy = Some(true);
                    report.version = Some(version);
                }
                Err(e) => {
                    report.healthy = Some(false);
                    notes.push(e);
                }
            }
        } else if !args.no_restart {
            notes.push("systemd is not running here: start raspi-ops-agent and mcp-raspi-server yourself".into());
        }
    }
    report.notes = notes;
    report.seconds = (started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
    print_report(&report, args.json, out)?;
    if report.healthy == Some(false) {
        return Err(CliError::from("the files were restored, but the server is not healthy: see above"));
    }
    Ok(())
}

/// Whether the metrics database is open in some process, as a restore error.
fn db_in_use(db: &Path) -> Result<bool, CliError> {
    metrics::in_use(db).map_err(|e| {
        CliError::from(format!("cannot tell whether {} is in use: {e}; nothing was changed", db.display()))
    })
}

/// What to do when the metrics database is open and the restore would replace it.
fn stop_first(systemd: bool) -> &'static str {
    if systemd {
        "the restore stops the services first, and refuses if it is still open then"
    } else {
        "replacing it under the server would lose what the server writes and may damage it; stop the server \
         (sudo systemctl stop mcp-raspi-server) and run the restore again"
    }
}

/// Checks the metrics database of the archive before anything changes: one that fails
/// SQLite's integrity check is not put back (the one here is left as it is), and a newer
/// schema than this version's is noted.
fn vet_metrics_db(staged: &Staged, steps: &mut Vec<Step>, notes: &mut Vec<String>) {
    let Some(i) = steps.iter().position(|s| s.entry.path == metrics::ARCHIVED) else { return };
    match metrics::check_staged(&staged.path_of(&steps[i].entry)) {
        Ok(None) => {}
        Ok(Some(note)) => notes.push(note),
        Err(found) => {
            notes.push(format!(
                "{} of the backup fails SQLite's integrity check ({found}): it is not restored, and {} is left as it is",
                metrics::ARCHIVED,
                steps[i].path.display()
            ));
            steps.remove(i);
        }
    }
}

/// Brings version.json in line with the `current` link (which names the release that is
/// installed here): the backup may be of another version, or of a moment during an update.
fn reconcile(config: &Config, staged: &Staged, notes: &mut Vec<String>) -> Option<String> {
    let inst = match crate::cli::update::installation(config) {
        Ok(i) => i,
        Err(e) => {
            notes.push(format!("version.json was not reconciled: {e}"));
            return None;
        }
    };
    match inst.reconcile() {
        Ok((found, state)) => {
            if !matches!(found, crate::update::state::Reconciled::Consistent) {
                notes.push(format!("version.json reconciled with current: {found:?}"));
            }
            let runs = state.current_version.clone();
            if runs.is_some() && runs != staged.manifest.current_version {
                notes.push(format!(
                    "the backup was taken with {} and this system runs {}; version.json follows what runs",
                    staged.manifest.current_version.as_deref().unwrap_or("an unknown version"),
                    runs.as_deref().unwrap_or("?")
                ));
            }
            runs
        }
        Err(e) => {
            notes.push(format!("version.json was not reconciled: {e}"));
            None
        }
    }
}

/// The polkit rule follows the restored configuration's unit allowlist.
fn refresh_polkit_rule(config: &Path, notes: &mut Vec<String>) {
    let rules = Path::new("/etc/polkit-1/rules.d");
    if !rules.is_dir() {
        return;
    }
    match crate::cli::polkit_rules_for(config, "mcp-ops") {
        Ok(text) => {
            if let Err(e) = crate::cli::write_atomically(&rules.join("50-mcp-raspi.rules"), text.as_bytes(), 0o644) {
                notes.push(format!("the polkit rule was not rewritten: {e}"));
            }
        }
        Err(e) => notes.push(format!("the polkit rule was not rewritten: {e}")),
    }
}

fn print_report(report: &Report, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let text = if json {
        format!("{}\n", serde_json::to_string(report).unwrap_or_default())
    } else {
        let mut t = format!(
            "{} {} (backup of {} at {}, version {})\n",
            if report.dry_run { "would restore" } else { "restored" },
            report.archive.display(),
            report.backup_of,
            report.created,
            report.backup_version.as_deref().unwrap_or("unknown"),
        );
        t.push_str(&format!(
            "  {} new, {} replaced, {} unchanged\n",
            report.new.len(),
            report.replaced.len(),
            report.unchanged
        ));
        for p in &report.new {
            t.push_str(&format!("  new      {}\n", p.display()));
        }
        for p in &report.replaced {
            t.push_str(&format!("  replace  {}\n", p.display()));
        }
        for n in &report.notes {
            t.push_str(&format!("  note: {n}\n"));
        }
        match (report.healthy, &report.version) {
            (Some(true), Some(v)) => t.push_str(&format!("  services started; the server is healthy, version {v}\n")),
            (_, Some(v)) if !report.dry_run => t.push_str(&format!("  version {v}\n")),
            _ => {}
        }
        if !report.dry_run {
            t.push_str(&format!("  took {:.1} s\n", report.seconds));
        }
        t
    };
    out.write_all(text.as_bytes()).map_err(|e| CliError::from(e.to_string()))
}
