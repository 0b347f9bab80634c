//! `mcp-raspi config` (also installed as `mcp-raspi-config`): checking a configuration file
//! as the server would, and migrating it to the schema this build reads.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::DEFAULT_CONFIG;
use crate::config::migrate::{self, Plan};
use crate::config::{Config, ConfigError, CONFIG_VERSION};

/// Configuration files: check one, or migrate it to a newer schema version.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file as mcp-raspi-server does before it starts
    ///
    /// The same check as `mcp-raspi-server --check-config`: the YAML, every key and value,
    /// environment overrides (MCP_RASPI_<SECTION>__<KEY>), and that every token's secret is
    /// set in the environment or in security.secrets_file (run it as root to read that
    /// file). Prints `configuration OK: FILE (sha256 ...)`, and warnings on standard error
    /// (such as a feature name under experimental_features that turns nothing on). An error
    /// names the key, its line and what to change; the exit status is then 1.
    Validate {
        /// Configuration file to check.
        #[arg(value_name = "FILE", default_value = DEFAULT_CONFIG)]
        file: PathBuf,
    },
    /// Move a configuration file to a newer schema version (its config_version)
    ///
    /// 1.0 to 1.1 adds the gpio.pwm section (PWM limits, with the defaults). 1.1 to 1.2
    /// moves server.enable_cors and server.cors_origins into server.cors (enabled,
    /// allowed_origins), removes security.jwt_secret (this server has no such secret) and
    /// renames gpio.pwm.max_frequency to max_frequency_hz. This build reads 1.2. Comments
    /// and layout are kept; a file the line editor cannot change safely (a flow mapping
    /// such as `server: {enable_cors: true}`) is written out again without its comments, and
    /// the plan says so first.
    #[command(subcommand)]
    Migrate(MigrateCommand),
}

/// `plan` shows a migration, `apply` makes it.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Show what migrating the file would change; changes nothing
    ///
    /// Prints each step with what it changes, a unified diff of the file (a removed secret's
    /// value shown as <redacted>), and whether the result loads. Exits 0 when there is
    /// nothing to migrate, 1 when the result would not load or the file cannot be migrated.
    Plan(MigrateArgs),
    /// Migrate the file, keeping a backup beside it
    ///
    /// Checks that the result loads (nothing is written otherwise), copies the file as it
    /// was to FILE.bak (FILE.<UTC time>.bak when that exists) and replaces the file
    /// atomically with the same mode (and owner, as root). Prints the steps and the backup's
    /// name. A file already at the version asked for is left alone.
    Apply(MigrateArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Schema version to migrate to: 1.1 or 1.2 (1.2.0 means 1.2). This build reads 1.2.
    #[arg(long, value_name = "VERSION")]
    pub to_version: String,
    /// Configuration file to migrate.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// Runs a `config` command: the answer to `out`, warnings to standard error.
pub fn run_config(command: ConfigCommand, out: &mut dyn Write) -> Result<(), String> {
    run_config_to(command, out, &mut std::io::stderr())
}

fn write_error(e: std::io::Error) -> String {
    format!("cannot write the answer: {e}")
}

/// [`run_config`] with standard error given, for tests.
fn run_config_to(command: ConfigCommand, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), String> {
    match command {
        ConfigCommand::Validate { file } => {
            let env: BTreeMap<String, String> = std::env::vars().collect();
            let warnings = validate(&file, &env, out)?;
            for warning in warnings {
                writeln!(err, "mcp-raspi: warning: {warning}").map_err(write_error)?;
            }
            Ok(())
        }
        ConfigCommand::Migrate(MigrateCommand::Plan(args)) => {
            let plan = migrate::plan(&args.config, &args.to_version).map_err(|e| e.to_string())?;
            show_plan(&plan, out).map_err(write_error)?;
            plan.loads.clone().map_err(|e| format!("the migrated file would not load:\n{e}"))
        }
        ConfigCommand::Migrate(MigrateCommand::Apply(args)) => {
            let plan = migrate::plan(&args.config, &args.to_version).map_err(|e| e.to_string())?;
            let m = &plan.migration;
            if m.steps.is_empty() {
                return writeln!(out, "already at {}: nothing to migrate", m.to).map_err(write_error);
            }
            let applied = migrate::apply(&plan).map_err(|e| e.to_string())?;
            show_steps(&plan, out).map_err(write_error)?;
            let path = plan.path.display();
            writeln!(out, "backup: {} (the file as it was)", applied.backup.display()).map_err(write_error)?;
            writeln!(out, "migrated {path} from {} to {} (sha256 {})", m.from, m.to, applied.sha256)
                .map_err(write_error)?;
            if m.to.to_string() == CONFIG_VERSION {
                writeln!(
                    out,
                    "Check it with `mcp-raspi-config validate {path}`, then restart the server to use it \
                     (`sudo systemctl restart mcp-raspi-server`)."
                )
            } else {
                writeln!(out, "{}", older_target_note(&plan))
            }
            .map_err(write_error)
        }
    }
}

/// Loads `file` as the server would and checks its secrets; prints the OK line and returns
/// the warnings.
fn validate(file: &Path, env: &BTreeMap<String, String>, out: &mut dyn Write) -> Result<Vec<String>, String> {
    let loaded = Config::load(file, env).map_err(|e| match e {
        ConfigError::Read { ref source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            format!("{e}; run the check as root (sudo) or as a member of the file's group")
        }
        e => e.to_string(),
    })?;
    let secrets = crate::server::Secrets::read(&loaded.config, env);
    let warnings = crate::server::check_config(&loaded, &secrets)?;
    writeln!(out, "configuration OK: {} (sha256 {})", loaded.origin, loaded.sha256).map_err(write_error)?;
    Ok(warnings)
}

fn older_target_note(plan: &Plan) -> String {
    format!(
        "This build reads {CONFIG_VERSION}: the server will not start with a {} file until it is migrated on \
         (`mcp-raspi-config migrate apply --to-version {CONFIG_VERSION} --config {}`).",
        plan.migration.to,
        plan.path.display()
    )
}

/// The steps of a migration and whether comments were kept.
fn show_steps(plan: &Plan, out: &mut dyn Write) -> std::io::Result<()> {
    let m = &plan.migration;
    for step in &m.steps {
        writeln!(out, "{} → {}:", step.from, step.to)?;
        for change in &step.changes {
            writeln!(out, "  - {change}")?;
        }
    }
    match &m.rewritten {
        None => writeln!(out, "Comments and layout are kept."),
        Some(why) => writeln!(
            out,
            "COMMENTS ARE NOT KEPT: {why}; the file is written out again from its parsed content (the file as it \
             was stays in the backup)."
        ),
    }
}

fn show_plan(plan: &Plan, out: &mut dyn Write) -> std::io::Result<()> {
    let m = &plan.migration;
    let path = plan.path.display();
    if m.steps.is_empty() {
        return writeln!(out, "already at {}: nothing to migrate", m.to);
    }
    writeln!(out, "Migration of {path} from {} to {} (a plan: nothing is changed)\n", m.from, m.to)?;
    show_steps(plan, out)?;
    writeln!(out)?;
    out.write_all(plan.diff().as_bytes())?;
    writeln!(out)?;
    if plan.loads.is_ok() {
        if m.to.to_string() == CONFIG_VERSION {
            writeln!(out, "The result loads as a {CONFIG_VERSION} configuration.")?;
        } else {
            writeln!(out, "The result, migrated on to {CONFIG_VERSION}, loads. {}", older_target_note(plan))?;
        }
        let config = if path.to_string() == DEFAULT_CONFIG { String::new() } else { format!(" --config {path}") };
        writeln!(out, "To make the change: mcp-raspi-config migrate apply --to-version {}{config}", m.to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cli::{with_alias, Args as Cli, Command};
    use clap::Parser;

    const V1_1: &str = include_str!("../../tests/fixtures/config/v1.1.yml");
    const V1_2: &str = include_str!("../../tests/fixtures/config/v1.2.yml");

    /// Runs `mcp-raspi-config ARGS...`: its output, its warnings, or its error.
    fn config(args: &[&str]) -> (Result<String, String>, String) {
        let argv = std::iter::once("mcp-raspi-config").chain(args.iter().copied()).map(Into::into).collect();
        let Command::Config(command) = Cli::try_parse_from(with_alias(argv)).unwrap().command else {
            unreachable!("mcp-raspi-config runs `config`")
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = run_config_to(command, &mut out, &mut err);
        (result.map(|()| String::from_utf8(out).unwrap()), String::from_utf8(err).unwrap())
    }

    #[test]
    fn validate_prints_the_file_and_its_hash_and_warns_of_unknown_feature_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        std::fs::write(
            &path,
            "config_version: \"1.2\"\nsecurity:\n  auth_mode: none\n  secrets_file: null\n\
             experimental_features:\n  enabled: true\n  features:\n    - {name: gpio.pwn, enabled: true, acknowledged_risks: true}\n",
        )
        .unwrap();
        let (out, err) = config(&["validate", path.to_str().unwrap()]);
        let out = out.unwrap();
        assert!(out.starts_with(&format!("configuration OK: {} (sha256 ", path.display())), "{out}");
        assert!(err.contains("warning: experimental_features.features[0].name: \"gpio.pwn\""), "{err}");
        assert!(err.contains("gpio.pwm, camera.video_recording, updates.delta"), "{err}");
    }

    #[test]
    fn validate_names_a_missing_token_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        let yaml = "config_version: \"1.2\"\nsecurity:\n  secrets_file: null\n  tokens:\n    - {identity: ops, role: operator, env: MCP_RASPI_TEST_UNSET_TOKEN}\n";
        std::fs::write(&path, yaml).unwrap();
        let (out, _) = config(&["validate", path.to_str().unwrap()]);
        let e = out.unwrap_err();
        assert!(e.contains("security.tokens[0] (ops): the secret MCP_RASPI_TEST_UNSET_TOKEN is not set"), "{e}");
    }

    #[test]
    fn validate_of_an_older_file_names_the_command_that_migrates_it_and_that_command_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        std::fs::write(&path, V1_1).unwrap();
        let e = config(&["validate", path.to_str().unwrap()]).0.unwrap_err();
        let command = e.split('`').nth(1).unwrap();
        assert!(command.starts_with("mcp-raspi-config migrate plan --to-version 1.2.0 --config"), "{e}");
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        let plan = config(&args).0.unwrap();
        assert!(plan.contains("The result loads as a 1.2 configuration."), "{plan}");
        let apply = e.split('`').nth(3).unwrap();
        assert!(apply.starts_with("mcp-raspi-config migrate apply --to-version 1.2.0 --config"), "{e}");
        let args: Vec<&str> = apply.split_whitespace().skip(1).collect();
        config(&args).0.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), V1_2);
    }

    #[test]
    fn plan_prints_the_steps_and_a_diff_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        std::fs::write(&path, V1_1).unwrap();
        let (out, _) = config(&["migrate", "plan", "--to-version", "1.2", "--config", path.to_str().unwrap()]);
        let out = out.unwrap();
        assert!(out.contains("1.1 → 1.2:\n  - server.enable_cors (line 8) → server.cors.enabled\n"), "{out}");
        assert!(out.contains("Comments and layout are kept."), "{out}");
        assert!(out.contains("@@ ") && out.contains("+    allowed_origins:"), "{out}");
        assert!(out.contains("To make the change: mcp-raspi-config migrate apply --to-version 1.2 --config"), "{out}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), V1_1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn apply_says_where_the_backup_is_and_a_second_apply_has_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        std::fs::write(&path, V1_1).unwrap();
        let p = path.to_str().unwrap();
        let out = config(&["migrate", "apply", "--to-version", "1.2.0", "--config", p]).0.unwrap();
        assert!(out.contains(&format!("backup: {p}.bak (the file as it was)")), "{out}");
        assert!(out.contains(&format!("migrated {p} from 1.1 to 1.2 (sha256 ")), "{out}");
        let out = config(&["migrate", "apply", "--to-version", "1.2", "--config", p]).0.unwrap();
        assert_eq!(out, "already at 1.2: nothing to migrate\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no second backup");
    }

    #[test]
    fn man_mcp_raspi_config_shows_the_config_commands() {
        let dir = tempfile::tempdir().unwrap();
        crate::cli::write_man_pages(dir.path()).unwrap();
        let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let config = page("mcp-raspi-config.1");
        assert!(config.contains("validate") && config.contains("migrate"), "{config}");
        let plan = page("mcp-raspi-config-migrate-plan.1");
        assert!(plan.contains("to\\-version") && plan.contains("changes nothing"), "{plan}");
        assert!(page("mcp-raspi-config-validate.1").contains("check\\-config"));
        assert_eq!(page("mcp-raspi-cli.1"), ".so man1/mcp-raspi.1\n");
    }

    #[test]
    fn the_runbooks_command_line_is_accepted() {
        let argv = ["mcp-raspi-config", "migrate", "apply", "--to-version", "1.2.0"].map(Into::into).to_vec();
        let Command::Config(ConfigCommand::Migrate(MigrateCommand::Apply(args))) =
            Cli::try_parse_from(with_alias(argv)).unwrap().command
        else {
            unreachable!()
        };
        assert_eq!((args.to_version.as_str(), args.config.to_str()), ("1.2.0", Some(DEFAULT_CONFIG)));
    }
}
