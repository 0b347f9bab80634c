//! Configuration deployments, the agent's part: check a signed deployment the server relays,
//! stage it in the state directory, and start the root unit that installs it. The agent
//! cannot write the configuration file (root's, in root's directory) and does not try: the
//! unit's program, `mcp-raspi config-apply`, does, once it has checked everything again.

use std::path::Path;
use std::process::{Command, Stdio};

use super::dispatch::AgentState;
use crate::config::deploy::{self, ApplyPaths};
use crate::ipc::{ErrorCode, Response};

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error { code, message: message.into() }
}

// The error side of these results is the answer itself, as in `dispatch`.
#[allow(clippy::result_large_err)]
impl AgentState {
    /// Stages `deployment` (with its `signature`) and starts the unit that applies it.
    pub(super) fn config_deploy(&self, deployment: &str, signature: &str) -> Result<Response, Response> {
        let settings = &self.config.updates.config;
        if !settings.enabled {
            return Err(error(
                ErrorCode::Denied,
                "configuration deployments are off on this device (updates.config.enabled: false); an \
                 administrator turns them on and puts the fleet's key in updates.config.keys_dir",
            ));
        }
        let Some(config_path) = &self.config_path else {
            return Err(error(
                ErrorCode::Failed,
                "this agent runs the built-in development configuration (--dev), which is no file to replace",
            ));
        };
        let paths = ApplyPaths {
            config: config_path.clone(),
            keys_dir: settings.keys_dir.clone(),
            state_dir: self.config.paths.state_dir.clone(),
        };
        let staged = deploy::stage(&paths, deployment.as_bytes(), signature.as_bytes())
            .map_err(|e| error(ErrorCode::Invalid, format!("nothing was changed: {e}")))?;
        log::info!("configuration {} staged; starting {}", staged.sha256, settings.apply_unit);
        if self.platform.backend == "simulated" {
            run_apply_program(config_path).map_err(|e| error(ErrorCode::Failed, e))?;
        } else {
            self.platform
                .services
                .start_without_waiting(&settings.apply_unit)
                .map_err(|e| Response::from_platform_error(&e))?;
        }
        Ok(Response::Done)
    }
}

/// With the simulated backend there is no systemd to start the unit: the agent runs the
/// unit's program itself, in a process group of its own so that it outlives the restart of
/// the services it asks for.
fn run_apply_program(config: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let program = exe.with_file_name("mcp-raspi");
    let mut child = Command::new(&program)
        .args(["config-apply", "--simulated", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    std::thread::spawn(move || child.wait());
    Ok(())
}
