//! Configuration of the privileged side: the ops agent, the allowlists of pins, buses,
//! ports and units, the camera, power and OS updates.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::pwm::PwmConfig;
use crate::platform::{PinMode, PinNumber, UnitName, UpgradeMode};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsAgentConfig {
    /// Unix socket of the privileged ops agent.
    pub socket_path: PathBuf,
    /// Group owning the socket (mode 0660): the server's group.
    pub socket_group: String,
    /// Users whose processes may talk to the agent (checked with SO_PEERCRED).
    pub allowed_users: Vec<String>,
    /// How long the server waits for one agent answer.
    pub request_timeout_ms: u64,
}

impl Default for OpsAgentConfig {
    fn default() -> Self {
        OpsAgentConfig {
            socket_path: PathBuf::from("/run/mcp-raspi/ops-agent.sock"),
            socket_group: "mcp".into(),
            allowed_users: vec!["mcp".into(), "root".into()],
            request_timeout_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PinRule {
    pub pin: PinNumber,
    /// What the pin may be used as.
    pub modes: Vec<PinMode>,
    /// A name for the pin shown by gpio.list_pins (e.g. "relay-1").
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpioConfig {
    /// The pins tools may touch; every other pin is refused.
    pub pins: Vec<PinRule>,
    /// Limits of PWM on the pins that allow it.
    pub pwm: PwmConfig,
}

impl GpioConfig {
    pub fn rule(&self, pin: PinNumber) -> Option<&PinRule> {
        self.pins.iter().find(|r| r.pin == pin)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct I2cBusRule {
    pub bus: u8,
    /// 7-bit device addresses that may be read and written (scanning is allowed on the bus).
    pub addresses: Vec<u8>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct I2cConfig {
    pub buses: Vec<I2cBusRule>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpiDeviceRule {
    pub bus: u8,
    pub chip_select: u8,
    pub max_speed_hz: u32,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpiConfig {
    pub devices: Vec<SpiDeviceRule>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UartPortRule {
    /// Device name under /dev, e.g. `serial0` or `ttyAMA0`.
    pub port: String,
    pub baud_rates: Vec<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UartConfig {
    pub ports: Vec<UartPortRule>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    pub enabled: bool,
    /// Where captures and videos are written (owned by the agent's user).
    pub media_dir: PathBuf,
    /// The oldest captures and videos are deleted past these limits.
    pub max_files: u32,
    pub max_total_mb: u64,
    pub max_width: u32,
    pub max_height: u32,
    /// The longest video camera.record_video may record, in seconds.
    pub max_video_seconds: u32,
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            enabled: true,
            media_dir: PathBuf::from("/var/lib/mcp-raspi/media"),
            max_files: 100,
            max_total_mb: 500,
            max_width: 4056,
            max_height: 3040,
            max_video_seconds: 60,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// Units that may be started, stopped, restarted, enabled, disabled and whose journal
    /// may be read.
    pub allowed_units: Vec<UnitName>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerConfig {
    pub reboot_enabled: bool,
    pub shutdown_enabled: bool,
    pub max_delay_seconds: u32,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig { reboot_enabled: true, shutdown_enabled: true, max_delay_seconds: 3600 }
    }
}

/// Updates of mcp-raspi itself (signed releases from `server_url`) and of the OS packages.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdatesConfig {
    /// Base URL of the update repository (`<url>/<channel>/manifest.json`); empty turns
    /// self-update off.
    pub server_url: String,
    /// Channel followed when none is asked for: `stable` or `beta`.
    pub channel: String,
    /// Directory of the trusted release keys (`*.pub`); an update never brings its own.
    pub keys_dir: PathBuf,
    /// Installed releases kept under releases/ (the current and the previous good one
    /// always are).
    pub keep_versions: usize,
    /// Largest package a manifest may announce, in megabytes.
    pub max_download_mb: u64,
    /// Seconds a new release has to prove healthy before it is rolled back.
    pub health_timeout_seconds: u64,
    /// Starts of the ops agent an update not yet committed may take; past that it is rolled back.
    pub max_failed_starts: u32,
    /// manage.update_server and manage.rollback may be used over MCP. Switch off while
    /// investigating a failed update; `mcp-raspi update` and `mcp-raspi manage rollback`
    /// (root, on the device) keep working.
    pub remote_enabled: bool,
    /// Checking for and installing updates by themselves.
    pub auto: AutoUpdateConfig,
    pub os: OsUpdatesConfig,
    /// Configuration files deployed by the fleet's operator (`mcp-fleet config deploy`).
    pub config: ConfigUpdatesConfig,
}

/// Automatic updates: the server checks the channel every `check_interval_hours` and
/// installs a newer release inside the maintenance window.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoUpdateConfig {
    pub enabled: bool,
    pub check_interval_hours: u64,
    /// `HH:MM-HH:MM` in UTC (it may wrap past midnight); empty for any time.
    pub window: String,
}

impl Default for AutoUpdateConfig {
    fn default() -> Self {
        AutoUpdateConfig { enabled: false, check_interval_hours: 24, window: "03:00-05:00".into() }
    }
}

/// A daily maintenance window, in seconds after midnight UTC: `start` inclusive, `end`
/// exclusive; `start > end` wraps past midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Window {
    /// Parses `HH:MM-HH:MM`; `None` for an empty text (any time).
    pub fn parse(text: &str) -> Result<Option<Window>, String> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let minute = |t: &str| -> Option<u64> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.trim().len() == 5).then_some((h * 60 + m) * 60)
        };
        let parsed = text.split_once('-').and_then(|(a, b)| Some(Window { start: minute(a)?, end: minute(b)? }));
        match parsed {
            Some(w) if w.start != w.end => Ok(Some(w)),
            _ => Err(format!(
                "{text:?} is not a window such as \"03:00-05:00\" (UTC, HH:MM-HH:MM, start and end differ)"
            )),
        }
    }

    /// Whether `seconds` after midnight is inside the window.
    pub fn contains(&self, seconds: u64) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&seconds)
        } else {
            seconds >= self.start || seconds < self.end
        }
    }

    /// Seconds from `seconds` after midnight until the window opens (0 inside it).
    pub fn wait_from(&self, seconds: u64) -> u64 {
        if self.contains(seconds) {
            0
        } else if seconds < self.start {
            self.start - seconds
        } else {
            86_400 - seconds + self.start
        }
    }
}

impl Default for UpdatesConfig {
    fn default() -> Self {
        UpdatesConfig {
            server_url: String::new(),
            channel: "stable".into(),
            keys_dir: PathBuf::from("/etc/mcp-raspi/keys"),
            keep_versions: 3,
            max_download_mb: 20,
            health_timeout_seconds: 90,
            max_failed_starts: 3,
            remote_enabled: true,
            auto: AutoUpdateConfig::default(),
            os: OsUpdatesConfig::default(),
            config: ConfigUpdatesConfig::default(),
        }
    }
}

/// Configuration deployments: a configuration file signed with a key of `keys_dir`, which
/// the root one-shot `apply_unit` checks, installs and proves healthy, or puts back.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigUpdatesConfig {
    /// manage.deploy_config may stage a signed configuration and start `apply_unit`.
    pub enabled: bool,
    /// Directory of the keys (`*.pub`) a deployment must be signed with: the fleet's, not the
    /// release keys.
    pub keys_dir: PathBuf,
    /// The root one-shot unit that installs a staged configuration (shipped by the package).
    pub apply_unit: UnitName,
    /// Seconds the restarted server has to answer /healthz before the old file is put back.
    pub health_timeout_seconds: u64,
}

impl Default for ConfigUpdatesConfig {
    fn default() -> Self {
        ConfigUpdatesConfig {
            enabled: false,
            keys_dir: PathBuf::from("/etc/mcp-raspi/config-keys"),
            apply_unit: UnitName::parse("mcp-raspi-config-apply.service").unwrap_or_else(|_| unreachable!()),
            health_timeout_seconds: 60,
        }
    }
}

/// Channels a release can be published on.
pub const CHANNELS: [&str; 2] = ["stable", "beta"];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OsUpdatesConfig {
    /// os.check_updates may list upgradable packages.
    pub check_enabled: bool,
    /// os.apply_updates may start the upgrade unit.
    pub apply_enabled: bool,
    /// The root one-shot unit that runs the upgrade (shipped by the package).
    pub upgrade_unit: UnitName,
    /// The upgrade refreshes the package lists (`apt-get update`) first, rather than using
    /// them as the system's daily refresh left them.
    pub refresh_lists: bool,
    /// How far the upgrade may change the set of installed packages.
    pub upgrade_mode: UpgradeMode,
}

impl Default for OsUpdatesConfig {
    fn default() -> Self {
        OsUpdatesConfig {
            check_enabled: true,
            apply_enabled: false,
            upgrade_unit: UnitName::parse("mcp-raspi-os-upgrade.service").unwrap_or_else(|_| unreachable!()),
            refresh_lists: true,
            upgrade_mode: UpgradeMode::default(),
        }
    }
}
