//! `mcp-raspi update server`, `mcp-raspi update pre-start`, `mcp-raspi manage rollback` and
//! `mcp-raspi manage versions`: self-update from the device's own command line.
//!
//! These run as root from the dpkg-owned `/usr/lib/mcp-raspi/bin/mcp-raspi` (never from
//! `/opt`), so they work when the services are stopped or broken (the spec's recovery
//! scenarios): root installs and switches releases itself through the same code the agent
//! uses, giving what it creates to the agent's user, and restarts the units with systemctl.
//! `update pre-start` is the agent unit's `ExecStartPre`: it runs as the agent's user before
//! each start and rolls back an update whose agent keeps failing to start.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, Subcommand};

use super::DEFAULT_CONFIG;
use crate::config::{Config, CHANNELS};
use crate::update::activate::Installation;
use crate::update::download::{FetchSettings, Fetcher, Progress};
use crate::update::install::{self, Download, InstallError, InstallRequest, Step};
use crate::update::manifest::Keyring;
use crate::update::release::Owner;
use crate::update::resolve::{self, Resolution, Target};
use crate::update::state::{UpdateStatus, VersionState};

/// `mcp-raspi update`.
#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Update mcp-raspi to the newest release of a channel (or to --version) from the signed
    /// update repository, restart the services and wait until the new release proves healthy
    /// or is rolled back.
    Server(ServerArgs),
    /// Before each start of the ops agent (its unit's ExecStartPre): count the starts of an
    /// update not yet proven healthy and roll it back past updates.max_failed_starts.
    PreStart {
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Debug, ClapArgs)]
pub struct ServerArgs {
    /// Configuration file (updates.server_url, keys_dir, paths).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Channel to take the newest release of (default: updates.channel).
    #[arg(long, value_name = "CHANNEL", conflicts_with = "target_version")]
    pub channel: Option<String>,
    /// An exact version to install.
    #[arg(long = "version", value_name = "VERSION")]
    pub target_version: Option<semver::Version>,
    /// Only check what would be installed.
    #[arg(long)]
    pub dry_run: bool,
    /// Return once the new release is installed and current, without waiting for its health
    /// check.
    #[arg(long)]
    pub no_wait: bool,
    /// Print one JSON object with the outcome instead of text and a progress bar.
    #[arg(long)]
    pub json: bool,
}

/// `mcp-raspi manage`.
#[derive(Debug, Subcommand)]
pub enum ManageCommand {
    /// Switch back to the previous good release (or --to), also with the services stopped;
    /// running services are restarted into it.
    Rollback {
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// An installed release to go back to.
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Print the version state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the installed releases: current, previous good, protected from pruning.
    Versions {
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// The configuration at `path`, with the environment's overrides, as the services load it.
pub(super) fn load(path: &Path) -> Result<Config, String> {
    let env = std::env::vars().collect();
    Config::load(path, &env).map(|l| l.config).map_err(|e| e.to_string())
}

/// The installation. What root creates there is given to the owner of the install root
/// (the agent's user, `mcp-ops`, on an installed system), so that the agent can go on
/// managing it.
pub(super) fn installation(config: &Config) -> Result<Installation, String> {
    use std::os::unix::fs::MetadataExt;
    let root = &config.paths.install_dir;
    let owner = match std::fs::metadata(root) {
        Ok(meta) if nix::unistd::geteuid().is_root() => Some(Owner { uid: meta.uid(), gid: meta.gid() }),
        Ok(_) => None,
        Err(e) => return Err(format!("cannot read the install root {}: {e}", root.display())),
    };
    Ok(Installation::new(root, &config.paths.state_dir, owner, config.updates.keep_versions))
}

/// Whether systemd manages this machine (it does on a Pi; it does not in a container
/// without it, or in tests).
pub(super) fn under_systemd() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Restarts the product's units that are running (`try-restart`: a stopped unit stays
/// stopped), without waiting. Returns whether any was running, so that the new release is
/// starting, and what was done, for the operator.
fn restart_running_units() -> (bool, String) {
    if !under_systemd() {
        return (false, "systemd is not running here: restart mcp-raspi-server and raspi-ops-agent yourself".into());
    }
    let running = crate::platform::PRODUCT_UNITS.iter().any(|unit| {
        Command::new("systemctl").args(["--quiet", "is-active", "--", unit]).status().is_ok_and(|s| s.success())
    });
    if !running {
        return (
            false,
            "the services are stopped; start them with `sudo systemctl start raspi-ops-agent mcp-raspi-server`".into(),
        );
    }
    let mut args = vec!["--no-ask-password", "--no-block", "try-restart", "--"];
    args.extend(crate::platform::PRODUCT_UNITS);
    match Command::new("systemctl").args(&args).status() {
        Ok(s) if s.success() => (true, "the running services are restarting".into()),
        Ok(s) => (false, format!("systemctl try-restart failed ({s}); restart the services yourself")),
        Err(e) => (false, format!("cannot run systemctl ({e}); restart the services yourself")),
    }
}

pub fn run_update(command: UpdateCommand, out: &mut dyn Write) -> Result<(), String> {
    match command {
        UpdateCommand::Server(args) => server(args, out),
        UpdateCommand::PreStart { config } => pre_start(&load(&config)?, out),
    }
}

pub fn run_manage(command: ManageCommand, out: &mut dyn Write) -> Result<(), String> {
    match command {
        ManageCommand::Rollback { config, to, json } => {
            let config = load(&config)?;
            let inst = installation(&config)?;
            let state = inst
                .rollback(to.as_deref(), "rolled back with mcp-raspi manage rollback", "cli")
                .map_err(|e| e.to_string())?;
            let (_, restarted) = restart_running_units();
            if json {
                return writeln!(out, "{}", serde_json::to_string(&state).unwrap_or_default())
                    .map_err(|e| e.to_string());
            }
            let from = state.last_update.as_ref().and_then(|u| u.from.clone()).unwrap_or_else(|| "?".into());
            let to = state.current_version.clone().unwrap_or_default();
            writeln!(out, "current: {to} (was {from}); {restarted}").map_err(|e| e.to_string())
        }
        ManageCommand::Versions { config, json } => {
            let config = load(&config)?;
            let list = installation(&config)?.list().map_err(|e| e.to_string())?;
            if json {
                return writeln!(out, "{}", serde_json::to_string(&list).unwrap_or_default())
                    .map_err(|e| e.to_string());
            }
            for r in list {
                let mut marks = Vec::new();
                if r.current {
                    marks.push("current");
                }
                if r.previous_good {
                    marks.push("previous good");
                }
                let marks = if marks.is_empty() { String::new() } else { format!(" ({})", marks.join(", ")) };
                writeln!(out, "{} {} bytes{marks}", r.version, r.size_bytes).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

/// The agent unit's ExecStartPre. It never stops the agent from starting: problems are
/// printed (to the journal) and the start goes on.
fn pre_start(config: &Config, out: &mut dyn Write) -> Result<(), String> {
    if let Err(e) = count_and_judge_start(config, out) {
        let _ = writeln!(out, "cannot check the update state before the start: {e}");
    }
    Ok(())
}

fn count_and_judge_start(config: &Config, out: &mut dyn Write) -> Result<(), String> {
    let inst =
        Installation::new(&config.paths.install_dir, &config.paths.state_dir, None, config.updates.keep_versions);
    let (_, state) = inst.reconcile().map_err(|e| e.to_string())?;
    let Some(update) = state.in_progress().cloned() else { return Ok(()) };
    let starts = inst.count_start().map_err(|e| e.to_string())?;
    let max = config.updates.max_failed_starts;
    if starts <= max {
        let _ =
            writeln!(out, "start {starts} of at most {max} of the ops agent of {} before it proves healthy", update.to);
        return Ok(());
    }
    let reason =
        format!("the ops agent of {} started {} times without the update proving healthy", update.to, starts - 1);
    let state = inst.rollback(None, &reason, "pre_start").map_err(|e| e.to_string())?;
    let _ = writeln!(out, "{reason}: rolled back to {}", state.current_version.unwrap_or_default());
    // The server still runs the failed release; the agent is starting into the good one.
    if under_systemd() {
        let _ = Command::new("systemctl")
            .args(["--no-ask-password", "--no-block", "try-restart", "--", "mcp-raspi-server.service"])
            .status();
    }
    Ok(())
}

/// What `update server` reports.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    status: String,
    from: Option<String>,
    to: Option<String>,
    reason: Option<String>,
}

/// Shows progress on a terminal (a bar while downloading, a line per step); nothing for
/// scripts (`--json`, or output that is not a terminal).
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
}

impl Reporter {
    fn new(json: bool) -> Reporter {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar
        });
        Reporter { bar }
    }

    fn step(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.println(message);
        }
    }

    fn bytes(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message("download");
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn server(args: ServerArgs, out: &mut dyn Write) -> Result<(), String> {
    let config = load(&args.config)?;
    if config.updates.server_url.is_empty() {
        return Err(format!(
            "self-update is not configured: set updates.server_url in {} to the update repository",
            args.config.display()
        ));
    }
    let target = match (args.target_version, args.channel) {
        (Some(v), _) => Target::Version(v),
        (None, channel) => {
            let channel = channel.unwrap_or_else(|| config.updates.channel.clone());
            if !CHANNELS.contains(&channel.as_str()) {
                return Err(format!("--channel {channel:?} is not one of {}", CHANNELS.join(", ")));
            }
            Target::Channel(channel)
        }
    };
    let inst = installation(&config)?;
    let max_bytes = config.updates.max_download_mb.saturating_mul(1024 * 1024);
    let policy = install::device_policy(&inst, max_bytes)?;
    let keyring = Keyring::load(&config.updates.keys_dir).map_err(|e| e.to_string())?;
    for problem in keyring.problems() {
        eprintln!("mcp-raspi: warning: {problem}");
    }
    let reporter = Reporter::new(args.json);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let fetcher = Fetcher::new(FetchSettings::default());
    reporter.step(&format!("resolve {}", target.manifest_url(&config.updates.server_url)));
    let resolution = runtime
        .block_on(resolve::resolve(&fetcher, &config.updates.server_url, &target, &keyring, &policy))
        .map_err(|e| e.to_string())?;
    let current = inst.current().map_err(|e| e.to_string())?;
    let resolved = match resolution {
        Resolution::UpToDate { offered } => {
            let outcome = Outcome {
                status: "up_to_date".into(),
                from: current.clone(),
                to: Some(offered.to_string()),
                reason: None,
            };
            return report(out, args.json, &outcome, &format!("up to date: the newest release offered is {offered}"));
        }
        Resolution::Available(resolved) => resolved,
    };
    let version = resolved.manifest.version.to_string();
    if args.dry_run {
        let outcome = Outcome { status: "available".into(), from: current, to: Some(version.clone()), reason: None };
        let text = format!("{version} can be installed ({} bytes); nothing was downloaded", resolved.artifact.size);
        return report(out, args.json, &outcome, &text);
    }
    // Not the server's downloads/: what root creates there the server could not resume.
    let downloads = config.paths.state_dir.join("staging").join("root-downloads");
    let staging_dir = config.paths.state_dir.join("staging");
    let install_from = |download: Download<'_>| {
        let request = InstallRequest {
            manifest: &resolved.manifest_bytes,
            signature: &resolved.signature_bytes,
            download,
            keyring: &keyring,
            policy: policy.clone(),
            staging_dir: &staging_dir,
            source: "cli",
        };
        install::install(&inst, request, &mut |step| reporter.step(&describe(step)))
    };
    let from_delta = if config.experimental_features.feature_enabled("updates.delta") {
        let download = |found: &resolve::ResolvedDelta| {
            let mut progress = |p: Progress| reporter.bytes(p.done, p.total);
            let file = resolve::download_delta(&fetcher, &resolved, found, &downloads, &mut progress);
            let file = runtime.block_on(file).map_err(|e| e.to_string());
            reporter.finish();
            file
        };
        let found = runtime.block_on(resolve::find_delta(&fetcher, &resolved, &keyring, &policy));
        install_from_delta(found, &resolved, &reporter, download, install_from)?
    } else {
        None
    };
    // How the release came, for the last line: said only when a delta was used.
    let (installed, via) = match from_delta {
        Some(done) => done,
        None => {
            let package = runtime
                .block_on(resolve::download(&fetcher, &resolved, &downloads, &policy.architecture, &mut |p| {
                    reporter.bytes(p.done, p.total)
                }))
                .map_err(|e| e.to_string())?;
            reporter.finish();
            let installed = install_from(Download::Package(&package));
            let _ = std::fs::remove_file(&package);
            (installed.map_err(|e| e.to_string())?, String::new())
        }
    };
    let (restarting, restarted) = restart_running_units();
    reporter.step(&restarted);
    // Nothing to wait for when the services are not starting into the release: its health
    // check runs when they start.
    if args.no_wait || !restarting {
        let outcome = Outcome {
            status: "in_progress".into(),
            from: installed.from,
            to: Some(installed.to.clone()),
            reason: None,
        };
        let text =
            format!("{} is installed and current{via}; {restarted}; its health check decides the rest", installed.to);
        return report(out, args.json, &outcome, &text);
    }
    reporter.step(&format!("health check: up to {} s", config.updates.health_timeout_seconds));
    let waited = Duration::from_secs(config.updates.health_timeout_seconds + 30);
    let state = wait_for_end(&inst, waited)?;
    let last = state.last_update.clone();
    let status = last.as_ref().map_or(UpdateStatus::InProgress, |u| u.status);
    let reason = last.as_ref().and_then(|u| u.reason.clone());
    let outcome =
        Outcome { status: status.as_str().into(), from: installed.from, to: Some(installed.to.clone()), reason };
    match status {
        UpdateStatus::Succeeded => {
            report(out, args.json, &outcome, &format!("{} is running and healthy{via}", installed.to))
        }
        UpdateStatus::InProgress => {
            report(out, args.json, &outcome, "")?;
            Err(format!(
                "{} has not proven healthy within {} s; check `systemctl status raspi-ops-agent mcp-raspi-server`",
                installed.to,
                waited.as_secs()
            ))
        }
        _ => {
            report(out, args.json, &outcome, "")?;
            Err(format!(
                "the update to {} was {}: {}",
                installed.to,
                status.as_str(),
                outcome.reason.unwrap_or_default()
            ))
        }
    }
}

/// Installs from `found`, the delta from the installed release, fetched with `download`
/// and installed with `install_from`: the release and how it came. `None`, after saying
/// why, when there is no delta or it cannot be used: the package is installed instead.
fn install_from_delta(
    found: Result<Option<resolve::ResolvedDelta>, String>,
    resolved: &resolve::Resolved,
    reporter: &Reporter,
    download: impl FnOnce(&resolve::ResolvedDelta) -> Result<std::path::PathBuf, String>,
    install_from: impl FnOnce(Download<'_>) -> Result<install::Installed, InstallError>,
) -> Result<Option<(install::Installed, String)>, String> {
    let found = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            reporter.step("download: no delta from this release is published");
            return Ok(None);
        }
        Err(e) => {
            eprintln!("mcp-raspi: warning: the delta index cannot be used ({e}); downloading the whole package");
            return Ok(None);
        }
    };
    let (size, from) = (found.entry.size, &found.entry.from);
    reporter.step(&format!("download: the delta from {from} ({size} bytes instead of {})", resolved.artifact.size));
    let file = match download(&found) {
        Ok(file) => file,
        Err(e) => {
            reporter.step(&format!("the delta's download failed ({e}); downloading the whole package"));
            return Ok(None);
        }
    };
    let installed =
        install_from(Download::Delta { index: &found.index_bytes, signature: &found.signature_bytes, file: &file });
    let _ = std::fs::remove_file(&file);
    match installed {
        Ok(installed) => {
            let via = format!(
                " (from the {size}-byte delta of {from} instead of the {}-byte package)",
                resolved.artifact.size
            );
            Ok(Some((installed, via)))
        }
        Err(e @ InstallError::Delta(_)) => {
            eprintln!("mcp-raspi: warning: {e}; downloading the whole package instead");
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Verified { version } => format!("verify: the manifest of {version} is signed by a trusted key"),
        Step::Copied { bytes } => format!("verify: the download's {bytes} bytes match the signed size and SHA-256"),
        Step::Patched { bytes } => format!("verify: the delta rebuilt the release's {bytes}-byte payload exactly"),
        Step::Begun => "install: started".into(),
        Step::Extracting { entries } => format!("install: extracting ({entries} entries)"),
        Step::Extracted => "install: payload extracted".into(),
        Step::Renaming => "install: release written".into(),
        Step::Installed => "install: release complete".into(),
        Step::Switching => "switch: moving current".into(),
        Step::Switched => "switch: current names the new release".into(),
    }
}

/// Waits until the update under way ends (committed or rolled back by the new agent).
fn wait_for_end(inst: &Installation, limit: Duration) -> Result<VersionState, String> {
    let start = Instant::now();
    loop {
        let state = inst.state().map_err(|e| e.to_string())?;
        if state.in_progress().is_none() || start.elapsed() >= limit {
            return Ok(state);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn report(out: &mut dyn Write, json: bool, outcome: &Outcome, text: &str) -> Result<(), String> {
    let line = if json { serde_json::to_string(outcome).unwrap_or_default() } else { text.to_string() };
    if line.is_empty() {
        return Ok(());
    }
    writeln!(out, "{line}").map_err(|e| e.to_string())
}
