//! `system.reboot` and `system.shutdown`: the two tools that take the whole machine away.
//!
//! Each needs the admin role, an explicit `confirm: true` (so that a model cannot reboot a
//! Pi by filling in arguments loosely), and the action turned on under `power`; all of it is
//! checked here before the ops agent, which holds the privilege, is asked.

use schemars::JsonSchema;
use serde::Deserialize;

use super::system::read_only_spec;
use super::{Cx, Tool, ToolError, ToolSpec};
use crate::config::{PowerConfig, Role};
use crate::ipc::{Request, Response};
use crate::platform::{PowerAction, PowerReceipt};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerArguments {
    /// Must be true: the action is carried out only when asked for explicitly.
    #[serde(default)]
    pub confirm: bool,
    /// Seconds to wait first, 0 (default: now) to power.max_delay_seconds (3600 unless changed).
    #[serde(default)]
    pub delay_seconds: u32,
}

/// Checks that `action` is turned on, the delay allowed and the action confirmed.
fn check(power: &PowerConfig, action: PowerAction, args: &PowerArguments) -> Result<(), ToolError> {
    power.check_action(action)?;
    power.check_delay(args.delay_seconds)?;
    if !args.confirm {
        let verb = match action {
            PowerAction::Reboot => "reboot",
            PowerAction::Shutdown => "shut down",
        };
        return Err(ToolError::invalid_argument(format!(
            "nothing was done: to {verb} the machine, call again with confirm: true"
        )));
    }
    Ok(())
}

async fn schedule(cx: &Cx, action: PowerAction, args: PowerArguments) -> Result<PowerReceipt, ToolError> {
    check(&cx.app.config.power, action, &args)?;
    match cx.app.agent.call(Request::Power { action, delay_seconds: args.delay_seconds }).await? {
        Response::Power { receipt } => Ok(receipt),
        other => Err(ToolError::internal(format!("unexpected answer from the ops agent to power: {}", other.kind()))),
    }
}

const POWER_SPEC: ToolSpec = ToolSpec {
    blocking: false,
    min_role: Role::Admin,
    read_only: false,
    destructive: true,
    idempotent: false,
    ..read_only_spec("", "", "")
};

pub struct Reboot;

impl Tool for Reboot {
    type Input = PowerArguments;
    type Output = PowerReceipt;
    const SPEC: ToolSpec = ToolSpec {
        name: "system.reboot",
        title: "Reboot the machine",
        description: "Reboots the Pi now or after delay_seconds; needs confirm: true, and power.reboot_enabled on the server. Every connection, this server included, drops until the Pi is back. Returns when and how the reboot was scheduled.",
        ..POWER_SPEC
    };

    async fn call(cx: Cx, args: PowerArguments) -> Result<PowerReceipt, ToolError> {
        schedule(&cx, PowerAction::Reboot, args).await
    }
}

pub struct Shutdown;

impl Tool for Shutdown {
    type Input = PowerArguments;
    type Output = PowerReceipt;
    const SPEC: ToolSpec = ToolSpec {
        name: "system.shutdown",
        title: "Shut the machine down",
        description: "Powers the Pi off now or after delay_seconds; needs confirm: true, and power.shutdown_enabled on the server. It stays off until someone restores its power by hand. Returns when and how the shutdown was scheduled.",
        ..POWER_SPEC
    };

    async fn call(cx: Cx, args: PowerArguments) -> Result<PowerReceipt, ToolError> {
        schedule(&cx, PowerAction::Shutdown, args).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(confirm: bool, delay_seconds: u32) -> PowerArguments {
        PowerArguments { confirm, delay_seconds }
    }

    #[test]
    fn nothing_happens_without_confirm_true() {
        let e = check(&PowerConfig::default(), PowerAction::Reboot, &args(false, 0)).unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        assert!(e.message.contains("confirm: true"), "{}", e.message);
        assert!(check(&PowerConfig::default(), PowerAction::Shutdown, &args(true, 0)).is_ok());
    }

    #[test]
    fn the_delay_is_limited_by_the_configuration() {
        let power = PowerConfig { max_delay_seconds: 60, ..PowerConfig::default() };
        assert!(check(&power, PowerAction::Reboot, &args(true, 60)).is_ok());
        let e = check(&power, PowerAction::Reboot, &args(true, 61)).unwrap_err();
        assert!(e.message.contains("power.max_delay_seconds"), "{}", e.message);
    }

    #[test]
    fn a_disabled_action_is_refused_naming_its_switch_even_when_confirmed() {
        let power = PowerConfig { reboot_enabled: false, shutdown_enabled: true, max_delay_seconds: 10 };
        let e = check(&power, PowerAction::Reboot, &args(true, 0)).unwrap_err();
        assert_eq!(e.code, "permission_denied");
        assert!(e.message.contains("power.reboot_enabled"), "{}", e.message);
        assert!(check(&power, PowerAction::Shutdown, &args(true, 0)).is_ok());
        let power = PowerConfig { shutdown_enabled: false, ..power };
        assert!(check(&power, PowerAction::Shutdown, &args(true, 0)).unwrap_err().message.contains("shutdown_enabled"));
    }

    #[test]
    fn reboot_and_shutdown_are_destructive_admin_tools() {
        for spec in [&Reboot::SPEC, &Shutdown::SPEC] {
            assert_eq!(spec.min_role, Role::Admin);
            assert!(spec.destructive && !spec.read_only && !spec.idempotent);
        }
    }
}
