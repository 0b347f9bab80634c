//! `mcp-raspi`: the operator's command line, also installed under the runbook's names
//! (`mcp-raspi-cli`, `mcp-raspi-update`, `mcp-raspi-config`, `mcp-raspi-backup`,
//! `mcp-raspi-restore`, `mcp-raspi-healthcheck`), dispatched on the name it is called by.
//!
//! It holds the runbook's commands: the local server's tools over MCP (`tools`),
//! self-update and rollback (`update`), backup and restore (`backup`), the monitoring
//! checks (`healthcheck`, `storage`, `audit`) and the configuration's lifecycle
//! (`config`). And what the package needs at install time, in Rust rather than in shell
//! so that it is tested and shared with the self-update: installing a release and flipping
//! `current` (`releases`), the polkit rule generated from the configuration's unit
//! allowlist (the allowlist lives in the configuration, so the rule can only be written at
//! configure time), and the man pages and shell completions of the three programs,
//! generated from their clap definitions so that they cannot drift from the options.
//!
//! The package's maintainer scripts run this program as root from the dpkg-owned
//! `/usr/lib/mcp-raspi/bin`, never from `/opt/mcp-raspi`, which the agent's user can write.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::base::VERSION;
use crate::config::Config;

mod audit;
mod backup;
pub mod call;
mod client;
pub(crate) use client::error_chain;
pub use client::{io_message, progress_bar_drawn};
mod config;
mod config_apply;
mod healthcheck;
mod os_upgrade;
mod publish;
mod releases;
mod render;
mod storage;
mod tools;
mod update;

pub use releases::ReleaseCommand;
pub use render::render;
pub use tools::{runbook_tool, tool_arguments, RUNBOOK_TOOLS};
pub use update::{ManageCommand, UpdateCommand};

/// Default install root of releases and the `current` symlink.
const DEFAULT_ROOT: &str = "/opt/mcp-raspi";
/// Default configuration file.
const DEFAULT_CONFIG: &str = "/etc/mcp-raspi/config.yml";
/// Names the program is also installed under (the runbook's), each standing for a
/// subcommand: `mcp-raspi-update server ...` is `mcp-raspi update server ...`.
const ALIASES: [(&str, Option<&str>); 6] = [
    ("mcp-raspi-cli", None),
    ("mcp-raspi-update", Some("update")),
    ("mcp-raspi-config", Some("config")),
    ("mcp-raspi-backup", Some("backup")),
    ("mcp-raspi-restore", Some("restore")),
    ("mcp-raspi-healthcheck", Some("healthcheck")),
];

/// Exit status of a command that failed for a reason of its own (a bad argument, a refused
/// operation, a tool's error).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status when the local server cannot be reached (sysexits' EX_UNAVAILABLE), so that
/// scripts can tell "the server is down" from "the server said no".
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit status when the server refused the credentials (sysexits' EX_NOPERM).
pub const EXIT_NOPERM: u8 = 77;

/// Why a command failed, and the exit status that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub fn new(code: u8, message: impl Into<String>) -> CliError {
        CliError { message: message.into(), code }
    }
}

impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError { message, code: EXIT_FAILURE }
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> CliError {
        CliError::from(message.to_string())
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Operator command line of mcp-raspi: the runbook's commands (the local server's tools,
/// self-update and rollback, backup and restore, checks, configuration), releases, the ops
/// agent's polkit rule, man pages and shell completions.
#[derive(Debug, Parser)]
#[command(name = "mcp-raspi", version = VERSION)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// What `mcp-raspi` does.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask the local server about the system (its system.* tools).
    #[command(subcommand)]
    System(tools::SystemCommand),
    /// Ask the local server for metrics (its metrics.* tools).
    #[command(subcommand)]
    Metrics(tools::MetricsCommand),
    /// Call any tool of the local server: mcp-raspi call gpio.read_pin --args '{"pin": 17}'.
    Call(tools::CallArgs),
    /// Save configuration, secrets, state, audit and recent logs, and units in one verified
    /// archive; old archives are removed after the retention period.
    Backup(backup::BackupArgs),
    /// Put a backup back: verify it, stop the services, restore the files with their owners
    /// and modes, reconcile version.json, start the services and check their health.
    Restore(backup::RestoreArgs),
    /// Install releases under the install root and choose the one the services run.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Update mcp-raspi itself from the signed update repository.
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Roll back to an installed release, list the installed releases.
    #[command(subcommand)]
    Manage(ManageCommand),
    /// Check the services and the machine as a Nagios/Icinga plugin (also installed as
    /// mcp-raspi-healthcheck): one status line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Show how full the root file system is and what mcp-raspi keeps on it (logs, metrics,
    /// releases, downloads) against the configured limits; exit 1 when something is over.
    StorageCheck(storage::StorageCheckArgs),
    /// Read the audit log: who still calls deprecated tools.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Check a configuration file as the server would, or migrate it to a newer schema
    /// version (also installed as mcp-raspi-config).
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print the polkit rule that lets the ops agent start, stop and restart the units on
    /// services.allowed_units (and reboot or power off when the power section allows it).
    PolkitRules {
        /// Configuration file whose allowlist the rule admits (in a source checkout:
        /// etc/config.example.yml).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Use the embedded development configuration's allowlist instead of a file.
        #[arg(long, conflicts_with = "config")]
        dev: bool,
        /// User the ops agent runs as.
        #[arg(long, value_name = "USER", default_value = "mcp-ops")]
        agent_user: String,
        /// Write the rule to this file (atomically, mode 0644) instead of printing it, e.g.
        /// /etc/polkit-1/rules.d/50-mcp-raspi.rules.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Upgrade the OS packages as updates.os allows, as root (the program of
    /// mcp-raspi-os-upgrade.service, which os.apply_updates starts), recording the outcome
    /// in the state directory.
    OsUpgrade(os_upgrade::OsUpgradeArgs),
    /// Install the configuration deployment the ops agent staged, as root (the program of
    /// mcp-raspi-config-apply.service, which manage.deploy_config starts): checked against
    /// updates.config.keys_dir, loaded, swapped in, proven healthy or put back.
    ConfigApply(config_apply::ConfigApplyArgs),
    /// Write the man pages of mcp-raspi, mcp-raspi-server and raspi-ops-agent.
    Man {
        /// Directory that receives the pages (section 1).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Write bash, zsh and fish completions of mcp-raspi, mcp-raspi-server and
    /// raspi-ops-agent into DIR/bash, DIR/zsh and DIR/fish.
    Completions {
        /// Directory that receives one subdirectory per shell.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let argv = with_alias(std::env::args_os().collect());
    let args = match Args::try_parse_from(&argv) {
        Ok(args) => args,
        // A plugin's usage error is UNKNOWN (3): clap's 2 would read as CRITICAL.
        Err(e) if e.use_stderr() && argv.get(1).is_some_and(|a| a == "healthcheck") => {
            return ExitCode::from(healthcheck::usage_error(&e))
        }
        Err(e) => e.exit(),
    };
    let mut stdout = std::io::stdout().lock();
    match run_command(args.command, &mut stdout) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let _ = stdout.flush();
            let _ = writeln!(std::io::stderr(), "mcp-raspi: {e}");
            ExitCode::from(e.code)
        }
    }
}

/// The arguments as `mcp-raspi` takes them: a program called by one of its other names
/// gets that name's subcommand put in front.
fn with_alias(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let called = args.first().and_then(|a| Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());
    if let Some((_, sub)) = ALIASES.iter().find(|(name, _)| called.as_deref() == Some(*name)) {
        args[0] = "mcp-raspi".into();
        if let Some(sub) = sub {
            args.insert(1, (*sub).into());
        }
    }
    args
}

/// Runs one command, writing its answer to `out`; returns its exit status (commands such as
/// `healthcheck` have statuses of their own besides success and failure).
pub fn run_command(command: Command, out: &mut dyn Write) -> Result<u8, CliError> {
    match command {
        Command::System(command) => tools::run_system(command, out).map(|()| 0),
        Command::Metrics(command) => tools::run_metrics(command, out).map(|()| 0),
        Command::Call(args) => tools::run_call(args, out).map(|()| 0),
        Command::Backup(args) => backup::run_backup(args, out).map(|()| 0),
        Command::Restore(args) => backup::run_restore(args, out).map(|()| 0),
        Command::Healthcheck(args) => healthcheck::run(args, out),
        Command::StorageCheck(args) => storage::run(args, out),
        Command::Audit(command) => audit::run(command, out),
        // A refusal (77) has its own status, apart from a failed upgrade (1).
        Command::OsUpgrade(args) => os_upgrade::run(args, out).map(|()| 0),
        Command::ConfigApply(args) => config_apply::run(args, out),
        other => run(other, out).map(|()| 0).map_err(CliError::from),
    }
}

/// Runs one of the commands that either succeed or fail with a message.
fn run(command: Command, out: &mut dyn Write) -> Result<(), String> {
    let print = |out: &mut dyn Write, text: &str| out.write_all(text.as_bytes()).map_err(|e| e.to_string());
    match command {
        Command::Release(command) => releases::run_release(command, out),
        Command::Update(command) => update::run_update(command, out),
        Command::Manage(command) => update::run_manage(command, out),
        Command::Config(command) => config::run_config(command, out),
        Command::PolkitRules { config, dev, agent_user, output } => {
            let text = if dev {
                let loaded = Config::dev(&crate::server::dev_home(), &BTreeMap::new()).map_err(|e| e.to_string())?;
                polkit_rules_of(&loaded.config, &agent_user)
            } else {
                polkit_rules_for(&config, &agent_user)?
            };
            match output {
                None => print(out, &text),
                Some(path) => write_atomically(&path, text.as_bytes(), 0o644),
            }
        }
        Command::Man { out: dir } => write_man_pages(&dir),
        Command::Completions { out: dir } => write_completions(&dir),
        Command::System(_)
        | Command::Metrics(_)
        | Command::Call(_)
        | Command::Backup(_)
        | Command::Restore(_)
        | Command::Healthcheck(_)
        | Command::StorageCheck(_)
        | Command::Audit(_)
        | Command::OsUpgrade(_)
        | Command::ConfigApply(_) => Err("this command has an exit status of its own: run it with run_command".into()),
    }
}

/// The polkit rule for the configuration at `path`: its allowlisted units, plus the OS
/// upgrade unit when upgrades may be applied, the configuration deployment's unit when
/// deployments are on, and power actions when either is enabled.
/// Environment overrides are ignored: the rule must not depend on who runs the generator.
pub fn polkit_rules_for(path: &Path, agent_user: &str) -> Result<String, String> {
    let config = match Config::load(path, &BTreeMap::new()) {
        Ok(loaded) => loaded.config,
        Err(e @ crate::config::ConfigError::Read { .. }) => {
            return Err(format!("{e}; name a configuration with --config FILE, or use --dev"))
        }
        Err(e) => return Err(e.to_string()),
    };
    Ok(polkit_rules_of(&config, agent_user))
}

/// The polkit rule for `config` (see [`polkit_rules_for`]).
fn polkit_rules_of(config: &Config, agent_user: &str) -> String {
    let mut units = config.services.allowed_units.clone();
    if config.updates.os.apply_enabled && !units.contains(&config.updates.os.upgrade_unit) {
        units.push(config.updates.os.upgrade_unit.clone());
    }
    if config.updates.config.enabled && !units.contains(&config.updates.config.apply_unit) {
        units.push(config.updates.config.apply_unit.clone());
    }
    let allow_power = config.power.reboot_enabled || config.power.shutdown_enabled;
    crate::platform::polkit_rules(agent_user, &units, allow_power)
}

/// Writes `bytes` to `path` atomically (see [`crate::update::state::write_atomically`]).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    crate::update::state::write_atomically(path, bytes, mode, None).map_err(|e| e.to_string())
}

/// The clap definitions of the three programs.
fn programs() -> [clap::Command; 3] {
    [Args::command(), crate::server::Args::command(), crate::agent::Args::command()]
}

/// Writes NAME.1 for each program and NAME-SUBCOMMAND.1 for each of their subcommands.
pub fn write_man_pages(dir: &Path) -> Result<(), String> {
    write_man_pages_of(programs(), dir)?;
    // The other names of mcp-raspi: `mcp-raspi-backup` is the page of `mcp-raspi backup`,
    // which has that name already; `mcp-raspi-cli` shows the page of the whole program.
    for (alias, _) in ALIASES {
        let path = dir.join(format!("{alias}.1"));
        if !path.exists() {
            fs::write(&path, ".so man1/mcp-raspi.1\n").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Writes NAME.1 for each of `commands` and NAME-SUBCOMMAND.1 for each of their subcommands.
pub fn write_man_pages_of(commands: impl IntoIterator<Item = clap::Command>, dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for command in commands {
        let name = command.get_name().to_string();
        clap_mangen::generate_to(command, dir).map_err(|e| format!("cannot write the man pages of {name}: {e}"))?;
    }
    Ok(())
}

/// Writes DIR/bash/NAME, DIR/zsh/_NAME and DIR/fish/NAME.fish for each program: the names
/// and places bash-completion, zsh and fish load completions from.
pub fn write_completions(dir: &Path) -> Result<(), String> {
    write_completions_of(programs(), dir)
}

/// [`write_completions`] for `commands`.
pub fn write_completions_of(commands: impl IntoIterator<Item = clap::Command>, dir: &Path) -> Result<(), String> {
    use clap_complete::Shell;
    for mut command in commands {
        let name = command.get_name().to_string();
        for (shell, sub, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let shell_dir = dir.join(sub);
            fs::create_dir_all(&shell_dir).map_err(|e| format!("cannot create {}: {e}", shell_dir.display()))?;
            let mut buffer = Vec::new();
            clap_complete::generate(shell, &mut command, &name, &mut buffer);
            let path = shell_dir.join(file);
            fs::write(&path, buffer).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn run_args(args: &[&str]) -> Result<String, String> {
        let parsed = Args::try_parse_from(std::iter::once("mcp-raspi").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        run(parsed.command, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_three_command_lines_are_well_formed() {
        for command in programs() {
            command.debug_assert();
        }
    }

    #[test]
    fn the_runbooks_names_of_the_program_stand_for_its_subcommands() {
        let args = |list: &[&str]| list.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let update = with_alias(args(&["/usr/bin/mcp-raspi-update", "server", "--channel", "stable"]));
        assert_eq!(update, args(&["mcp-raspi", "update", "server", "--channel", "stable"]));
        let parsed = Args::try_parse_from(update).unwrap();
        assert!(
            matches!(parsed.command, Command::Update(UpdateCommand::Server(ref a)) if a.channel.as_deref() == Some("stable"))
        );
        let rollback = with_alias(args(&["mcp-raspi-cli", "manage", "rollback"]));
        assert!(matches!(
            Args::try_parse_from(rollback).unwrap().command,
            Command::Manage(ManageCommand::Rollback { .. })
        ));
        assert_eq!(with_alias(args(&["mcp-raspi", "release", "list"])), args(&["mcp-raspi", "release", "list"]));
    }

    #[test]
    fn activating_with_a_state_directory_records_the_install_in_version_json() {
        let dir = tempfile::tempdir().unwrap();
        let payload = dir.path().join("payload");
        fs::create_dir_all(payload.join("bin")).unwrap();
        fs::write(payload.join("bin/mcp-raspi-server"), "x").unwrap();
        let (root, state) = (dir.path().join("opt"), dir.path().join("state"));
        fs::create_dir_all(&state).unwrap();
        let (p, r, s) = (payload.to_str().unwrap(), root.to_str().unwrap(), state.to_str().unwrap());
        for v in ["0.1.0", "0.2.0"] {
            run_args(&["release", "install", "--payload", p, "--root", r, "--version", v]).unwrap();
            run_args(&["release", "activate", "--root", r, "--version", v, "--state-dir", s, "--keep", "3"]).unwrap();
        }
        let text = fs::read_to_string(state.join("version.json")).unwrap();
        let recorded: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(recorded["current_version"], "0.2.0");
        assert_eq!(recorded["previous_good_version"], "0.1.0");
        assert_eq!(recorded["last_update"]["source"], "package");
        let versions = run_args(&["manage", "versions", "--config", "/nonexistent.yml"]).unwrap_err();
        assert!(versions.contains("nonexistent"), "{versions}");
    }

    #[test]
    fn each_program_has_its_own_man_page_name_line() {
        let dir = tempfile::tempdir().unwrap();
        write_man_pages(dir.path()).unwrap();
        let name_line = |program: &str| {
            let page = fs::read_to_string(dir.path().join(format!("{program}.1"))).unwrap();
            let mut lines = page.lines().skip_while(|l| !l.starts_with(".SH NAME"));
            lines.nth(1).unwrap().to_string()
        };
        let lines: Vec<String> = ["mcp-raspi", "mcp-raspi-server", "raspi-ops-agent"].map(name_line).into();
        assert!(lines[1].contains("MCP server"), "{lines:?}");
        assert!(lines[2].contains("agent"), "{lines:?}");
        assert!(lines[0] != lines[1] && lines[1] != lines[2] && lines[0] != lines[2], "{lines:?}");
    }

    #[test]
    fn polkit_rules_for_development_and_a_clear_error_without_a_configuration() {
        let rule = run_args(&["polkit-rules", "--dev"]).unwrap();
        assert!(rule.contains("polkit.addRule"), "{rule}");
        let err = run_args(&["polkit-rules", "--config", "/nonexistent/config.yml"]).unwrap_err();
        assert!(err.contains("--config FILE") && err.contains("--dev"), "{err}");
        assert!(run_args(&["polkit-rules", "--dev", "--config", "x.yml"]).is_err());
    }

    #[test]
    fn listing_releases_of_a_root_with_none_installed_lists_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("opt");
        assert_eq!(run_args(&["release", "list", "--root", missing.to_str().unwrap()]).unwrap(), "");
    }

    #[test]
    fn version_prints_the_package_version() {
        let err = Args::try_parse_from(["mcp-raspi", "--version"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(err.to_string().trim(), format!("mcp-raspi {VERSION}"));
    }

    #[test]
    fn release_install_activate_current_list_and_prune_work_together() {
        let dir = tempfile::tempdir().unwrap();
        let payload = dir.path().join("payload");
        fs::create_dir_all(payload.join("bin")).unwrap();
        fs::write(payload.join("bin/mcp-raspi-server"), "x").unwrap();
        let root = dir.path().join("opt");
        let (p, r) = (payload.to_str().unwrap(), root.to_str().unwrap());
        let installed = run_args(&["release", "install", "--payload", p, "--root", r, "--version", "0.1.0"]).unwrap();
        assert_eq!(installed.trim(), root.join("releases/0.1.0").display().to_string());
        assert!(run_args(&["release", "current", "--root", r]).unwrap_err().contains("no release is active"));
        assert_eq!(run_args(&["release", "activate", "--root", r, "--version", "0.1.0"]).unwrap(), "current: 0.1.0\n");
        run_args(&["release", "install", "--payload", p, "--root", r, "--version", "0.2.0"]).unwrap();
        let flipped = run_args(&["release", "activate", "--root", r, "--version", "0.2.0"]).unwrap();
        assert_eq!(flipped, "current: 0.2.0 (was 0.1.0)\n");
        assert_eq!(run_args(&["release", "current", "--root", r]).unwrap(), "0.2.0\n");
        assert_eq!(run_args(&["release", "list", "--root", r]).unwrap(), "0.1.0\n0.2.0 (current)\n");
        assert_eq!(run_args(&["release", "prune", "--root", r, "--keep", "1"]).unwrap(), "removed 0.1.0\n");
        let err = run_args(&["release", "activate", "--root", r, "--version", "0.1.0"]).unwrap_err();
        assert!(err.contains("not installed"), "{err}");
    }

    #[test]
    fn an_unknown_owner_is_refused_before_anything_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("payload/bin")).unwrap();
        let (p, r) = (dir.path().join("payload"), dir.path().join("opt"));
        let args =
            ["release", "install", "--payload", p.to_str().unwrap(), "--root", r.to_str().unwrap(), "--version", "1.0"];
        let err = run_args(&[&args[..], &["--owner", "no-such-user-here"]].concat()).unwrap_err();
        assert!(err.contains("no user named"), "{err}");
        assert!(!r.join("releases/1.0").exists());
    }

    const CONFIG: &str = "config_version: \"1.2\"\n\
        services:\n  allowed_units: [nginx.service, mcp-raspi-pkgtest.service]\n\
        power:\n  reboot_enabled: false\n  shutdown_enabled: false\n";

    #[test]
    fn the_polkit_rule_admits_the_allowlisted_units_for_the_agent_user() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        fs::write(&config, CONFIG).unwrap();
        let text = run_args(&["polkit-rules", "--config", config.to_str().unwrap()]).unwrap();
        assert!(text.contains("\"mcp-ops\""), "{text}");
        assert!(text.contains("\"nginx.service\"") && text.contains("\"mcp-raspi-pkgtest.service\""), "{text}");
        assert!(!text.contains("mcp-raspi-os-upgrade") && !text.contains("login1"), "{text}");
    }

    #[test]
    fn the_polkit_rule_adds_the_upgrade_unit_only_when_upgrades_may_be_applied() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        fs::write(&config, format!("{CONFIG}updates:\n  os:\n    apply_enabled: true\n")).unwrap();
        let out = dir.path().join("rules.d/50-mcp-raspi.rules");
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        let (c, o) = (config.to_str().unwrap(), out.to_str().unwrap());
        assert_eq!(run_args(&["polkit-rules", "--config", c, "--agent-user", "ops", "--output", o]).unwrap(), "");
        let text = fs::read_to_string(&out).unwrap();
        assert!(text.contains("\"mcp-raspi-os-upgrade.service\"") && text.contains("\"ops\""), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_dir(out.parent().unwrap()).unwrap().count(), 1, "a temporary file was left behind");
    }

    #[test]
    fn the_shipped_example_configuration_admits_no_unit_but_allows_power_actions() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/config.example.yml");
        let text = polkit_rules_for(&path, "mcp-ops").unwrap();
        assert!(text.contains("var units = [\n        ]"), "{text}");
        assert!(text.contains("org.freedesktop.login1.reboot"), "{text}");
    }

    #[test]
    fn a_configuration_that_does_not_load_is_reported_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        fs::write(&config, "config_version: \"1.2\"\nservices:\n  allowed_units: [\"-x\"]\n").unwrap();
        assert!(run_args(&["polkit-rules", "--config", config.to_str().unwrap()]).is_err());
        assert!(run_args(&["polkit-rules", "--config", "/nonexistent/config.yml"]).is_err());
    }

    #[test]
    fn man_pages_are_written_for_the_three_programs_and_the_subcommands() {
        let dir = tempfile::tempdir().unwrap();
        run_args(&["man", "--out", dir.path().to_str().unwrap()]).unwrap();
        for page in ["mcp-raspi.1", "mcp-raspi-server.1", "raspi-ops-agent.1", "mcp-raspi-release-install.1"] {
            let text = fs::read_to_string(dir.path().join(page)).unwrap();
            assert!(text.contains(".SH NAME"), "{page}: {text}");
        }
        let server = fs::read_to_string(dir.path().join("mcp-raspi-server.1")).unwrap();
        assert!(server.contains("check\\-config"), "{server}");
    }

    #[test]
    fn completions_are_written_for_three_shells_and_three_programs() {
        let dir = tempfile::tempdir().unwrap();
        run_args(&["completions", "--out", dir.path().to_str().unwrap()]).unwrap();
        for name in ["mcp-raspi", "mcp-raspi-server", "raspi-ops-agent"] {
            for file in [format!("bash/{name}"), format!("zsh/_{name}"), format!("fish/{name}.fish")] {
                let text = fs::read_to_string(dir.path().join(&file)).unwrap();
                assert!(text.contains(name), "{file}");
            }
        }
        let bash = fs::read_to_string(dir.path().join("bash/mcp-raspi")).unwrap();
        assert!(bash.contains("polkit-rules") && bash.contains("--payload"), "{bash}");
    }
}
