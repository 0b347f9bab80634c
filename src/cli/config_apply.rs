//! `mcp-raspi config-apply`: the program of `mcp-raspi-config-apply.service`, the root
//! one-shot unit that the ops agent starts (through polkit) once it has staged a signed
//! configuration deployment (manage.deploy_config).
//!
//! The network-facing server cannot change the configuration file it runs with: it only
//! relays a deployment, which this program, run by root from the dpkg-owned path, believes
//! only once it verifies against the keys in `updates.config.keys_dir`. It takes its settings
//! from the configuration file as it is (environment overrides ignored), refuses unless
//! `updates.config.enabled` is true, and installs the deployment as
//! [`config::deploy::apply`](crate::config::deploy::apply) says: checked, replaced atomically,
//! the services restarted, the old file put back when the new server does not answer.
//!
//! On a device with the simulated backend (no systemd), the ops agent runs this program
//! itself, as its own user; the restart is then left to whatever supervises the services.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;

use super::{CliError, DEFAULT_CONFIG, EXIT_FAILURE, EXIT_NOPERM};
use crate::config::deploy::{self, ApplyPaths, ApplyStatus, Services};
use crate::config::Config;

/// With the simulated backend, the time given to the services' supervisor to restart them.
const SUPERVISOR_RESTART: Duration = Duration::from_secs(1);

/// `mcp-raspi config-apply`.
#[derive(Debug, ClapArgs)]
pub struct ConfigApplyArgs {
    /// The configuration file to replace (its updates.config and paths.state_dir are used);
    /// environment overrides do not apply to this root program.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The device has no systemd (the simulated backend): leave the restart to whatever
    /// supervises the services, and run as the agent's user.
    #[arg(long, hide = true)]
    pub simulated: bool,
}

/// Installs the staged deployment, and says how it went.
pub fn run(args: ConfigApplyArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let config = Config::load(&args.config, &BTreeMap::new())
        .map_err(|e| CliError::new(EXIT_FAILURE, format!("nothing was changed: {e}")))?
        .config;
    let simulated = args.simulated;
    if !simulated && !nix::unistd::geteuid().is_root() {
        return Err(CliError::new(
            EXIT_NOPERM,
            "config-apply replaces the configuration file and runs only as root: it is the program of \
             mcp-raspi-config-apply.service (manage.deploy_config starts it)",
        ));
    }
    if !config.updates.config.enabled {
        return Err(CliError::new(
            EXIT_NOPERM,
            "nothing was changed: configuration deployments are off on this device (updates.config.enabled: false)",
        ));
    }
    let paths = ApplyPaths {
        config: args.config.clone(),
        keys_dir: config.updates.config.keys_dir.clone(),
        state_dir: config.paths.state_dir.clone(),
    };
    let timeout = Duration::from_secs(config.updates.config.health_timeout_seconds);
    let mut services = System { simulated, timeout, out: &mut *out };
    let record = deploy::apply(&paths, &mut services);
    let status = serde_json::to_value(record.status).ok().and_then(|v| v.as_str().map(str::to_string));
    let status = status.unwrap_or_default();
    let _ = match (&record.reason, &record.sha256) {
        (Some(reason), _) => writeln!(out, "configuration deployment {status}: {reason}"),
        (None, Some(sha)) => {
            writeln!(out, "configuration deployment {status}: {} is sha256 {sha}", args.config.display())
        }
        (None, None) => writeln!(out, "configuration deployment {status}"),
    };
    Ok(if record.status == ApplyStatus::Applied { 0 } else { EXIT_FAILURE })
}

/// systemd and the server, as this device has them.
struct System<'a> {
    simulated: bool,
    timeout: Duration,
    out: &'a mut dyn Write,
}

impl Services for System<'_> {
    fn restart(&mut self) -> Result<(), String> {
        if self.simulated {
            // No systemd: whatever supervises the services restarts them when the file
            // changes, which takes it well under this.
            let _ = writeln!(self.out, "simulated backend: the services' supervisor restarts them");
            std::thread::sleep(SUPERVISOR_RESTART);
            return Ok(());
        }
        let units = crate::platform::PRODUCT_UNITS;
        let _ = writeln!(self.out, "restarting {}", units.join(" and "));
        let output = std::process::Command::new("systemctl")
            .args(["--no-ask-password", "restart", "--"])
            .args(units)
            .output()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        if !output.status.success() {
            return Err(format!("systemctl restart failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
        }
        Ok(())
    }

    /// The restarted server answers `/healthz` on its address (loopback when it listens on
    /// all) within the timeout.
    fn healthy(&mut self, config: &Config) -> Result<(), String> {
        let started = Instant::now();
        let addr = crate::base::loopback_for(config.listen_addr());
        let mut last = String::from("no answer");
        while started.elapsed() < self.timeout {
            match super::client::get_healthz(addr, Duration::from_secs(2)) {
                Ok((200, _)) => return Ok(()),
                Ok((status, _)) => last = format!("/healthz on {addr} answered {status}"),
                Err(e) => last = format!("{e} on {addr}"),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("{last} within {} s", self.timeout.as_secs()))
    }
}
