//! The typed protocol between the unprivileged MCP server and the privileged ops agent.
//!
//! The server runs as user `mcp` and cannot touch GPIO, buses, systemd or power itself;
//! it asks `raspi-ops-agent` (user `mcp-ops`, holding only the capabilities it needs) over
//! a Unix socket. Every operation the agent will ever perform is one [`Request`] variant
//! and every answer one [`Response`] variant, so the agent's attack surface is exactly this
//! file: nothing arrives as free-form commands. Frames are a big-endian `u32` length followed
//! by JSON (see [`codec`]); JSON keeps the wire readable in `socat` and pinnable in golden
//! files, and the agent refuses anything that does not parse into these types.
//!
//! Both processes come from the same package, so the first exchange is a
//! [`Request::Hello`] carrying both version numbers, checked with [`check_compatible`]:
//! a half-finished upgrade should fail loudly at connect time, not as odd errors later.

pub mod codec;

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::platform::camera::Video;
use crate::platform::{
    Capture, JournalEntry, Level, PinMode, PinNumber, PinState, PlatformError, PowerAction, PowerReceipt, Pull,
    PwmState, UnitAction, UnitName, UnitState, Upgradable, UpgradeStatus,
};
use crate::update::state::VersionState;

pub use codec::{read_frame, read_or_skip, write_frame, FrameError, Read};

/// The wire protocol's version, major.minor. Bump the minor for additions both sides of one
/// release understand, the major for anything an older peer would misread.
pub const IPC_VERSION: &str = "1.1";

/// The largest frame either side writes or accepts. A camera preview is the biggest
/// payload and stays far below this; the limit exists so a corrupt or hostile length
/// prefix cannot make the reader allocate gigabytes.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// One operation the server asks the agent to perform.
///
/// The agent re-checks every argument against its own configuration: a request here is a
/// wish, not an authorisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Request {
    /// The first request on every connection: who is speaking, in which protocol.
    Hello {
        package_version: String,
        ipc_version: String,
    },
    /// The agent's uid, groups, capability sets and backend, for diagnostics.
    #[serde(deserialize_with = "no_arguments")]
    GetCapabilities,
    GpioRead {
        pin: PinNumber,
    },
    GpioSetMode {
        pin: PinNumber,
        mode: PinMode,
        pull: Pull,
    },
    GpioWrite {
        pin: PinNumber,
        level: Level,
    },
    GpioPwmEnable {
        pin: PinNumber,
        pwm: PwmState,
    },
    GpioPwmDisable {
        pin: PinNumber,
    },
    I2cScan {
        bus: u8,
    },
    I2cRead {
        bus: u8,
        address: u8,
        register: Option<u8>,
        length: u16,
    },
    I2cWrite {
        bus: u8,
        address: u8,
        register: Option<u8>,
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    SpiTransfer {
        bus: u8,
        chip_select: u8,
        mode: u8,
        speed_hz: u32,
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    UartRead {
        port: String,
        baud: u32,
        max_bytes: u32,
        timeout_ms: u32,
    },
    UartWrite {
        port: String,
        baud: u32,
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// A still into the agent's media directory; the agent chooses the path.
    CameraCapture {
        width: u32,
        height: u32,
        quality: u8,
    },
    /// A Motion JPEG video into the agent's media directory; the agent chooses the path. The
    /// answer comes once the recording is over, so the request's deadline must cover it.
    CameraRecord {
        duration_ms: u32,
        width: u32,
        height: u32,
        framerate: u32,
    },
    ServiceStatus {
        unit: UnitName,
    },
    /// States of the units the agent's allowlist names.
    #[serde(deserialize_with = "no_arguments")]
    ServiceList,
    ServiceControl {
        unit: UnitName,
        action: UnitAction,
    },
    JournalQuery {
        unit: UnitName,
        lines: u32,
        since: Option<String>,
    },
    Power {
        action: PowerAction,
        delay_seconds: u32,
    },
    #[serde(deserialize_with = "no_arguments")]
    OsListUpgradable,
    #[serde(deserialize_with = "no_arguments")]
    OsStartUpgrade,
    #[serde(deserialize_with = "no_arguments")]
    OsUpgradeStatus,
    /// Install the release that `manifest` describes from the package the server downloaded
    /// into the state directory's `downloads/`, switch `current` to it and restart the
    /// services. The agent trusts neither the manifest nor the file: it checks the
    /// signature against its own keys, the policy, and the package's size and SHA-256 again.
    UpdateApply {
        /// The exact bytes of `manifest.json`.
        manifest: String,
        /// The exact bytes of `manifest.json.sig`.
        signature: String,
        /// Install from the downloaded delta from the installed release instead of the
        /// package (`updates.delta`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta: Option<DeltaIndexFiles>,
    },
    /// Move `current` back to `to_version` (an installed release) or to the previous good
    /// version, and restart the services.
    UpdateRollback {
        to_version: Option<String>,
        reason: String,
    },
    /// Stage a configuration deployment signed with the fleet's key and start the root unit
    /// that installs it (`updates.config.apply_unit`). The agent checks the signature and
    /// the text first; the unit's program checks everything again.
    ConfigDeploy {
        /// The exact bytes of the deployment (JSON).
        deployment: String,
        /// The exact bytes of its signature file.
        signature: String,
    },
    /// The server's report, after a start into a release under update, of its own check:
    /// `/healthz` and a `tools/call` answered over its HTTP listener.
    UpdateHealth {
        version: String,
        healthy: bool,
        detail: String,
    },
}

impl Request {
    /// The `Hello` this build sends.
    pub fn hello() -> Request {
        Request::Hello { package_version: crate::base::VERSION.to_string(), ipc_version: IPC_VERSION.to_string() }
    }

    /// The operation's wire name, the same string as the `op` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::GetCapabilities => "get_capabilities",
            Request::GpioRead { .. } => "gpio_read",
            Request::GpioSetMode { .. } => "gpio_set_mode",
            Request::GpioWrite { .. } => "gpio_write",
            Request::GpioPwmEnable { .. } => "gpio_pwm_enable",
            Request::GpioPwmDisable { .. } => "gpio_pwm_disable",
            Request::I2cScan { .. } => "i2c_scan",
            Request::I2cRead { .. } => "i2c_read",
            Request::I2cWrite { .. } => "i2c_write",
            Request::SpiTransfer { .. } => "spi_transfer",
            Request::UartRead { .. } => "uart_read",
            Request::UartWrite { .. } => "uart_write",
            Request::CameraCapture { .. } => "camera_capture",
            Request::CameraRecord { .. } => "camera_record",
            Request::ServiceStatus { .. } => "service_status",
            Request::ServiceList => "service_list",
            Request::ServiceControl { .. } => "service_control",
            Request::JournalQuery { .. } => "journal_query",
            Request::Power { .. } => "power",
            Request::OsListUpgradable => "os_list_upgradable",
            Request::OsStartUpgrade => "os_start_upgrade",
            Request::OsUpgradeStatus => "os_upgrade_status",
            Request::UpdateApply { .. } => "update_apply",
            Request::UpdateRollback { .. } => "update_rollback",
            Request::UpdateHealth { .. } => "update_health",
            Request::ConfigDeploy { .. } => "config_deploy",
        }
    }

    /// A one-line summary for logs. Bytes bound for a bus or serial port may be secrets
    /// (keys written to a secure element, passwords typed into a console), so only their
    /// length appears; strings are quoted so that a newline cannot forge a log line.
    pub fn as_safe_string(&self) -> String {
        let mut s = self.name().to_string();
        // Writing into a String cannot fail; the results are ignored for that reason.
        let _ = match self {
            Request::Hello { package_version, ipc_version } => {
                write!(s, " package_version={package_version:?} ipc_version={ipc_version:?}")
            }
            Request::GetCapabilities
            | Request::ServiceList
            | Request::OsListUpgradable
            | Request::OsStartUpgrade
            | Request::OsUpgradeStatus => Ok(()),
            Request::GpioRead { pin } | Request::GpioPwmDisable { pin } => write!(s, " pin={pin}"),
            Request::GpioSetMode { pin, mode, pull } => write!(s, " pin={pin} mode={mode:?} pull={pull:?}"),
            Request::GpioWrite { pin, level } => write!(s, " pin={pin} level={level:?}"),
            Request::GpioPwmEnable { pin, pwm } => {
                write!(s, " pin={pin} frequency_hz={} duty_cycle={}", pwm.frequency_hz, pwm.duty_cycle)
            }
            Request::I2cScan { bus } => write!(s, " bus={bus}"),
            Request::I2cRead { bus, address, register, length } => {
                write!(s, " bus={bus} address={address:#04x} register={} length={length}", register_text(*register))
            }
            Request::I2cWrite { bus, address, register, data } => write!(
                s,
                " bus={bus} address={address:#04x} register={} data=<{} bytes>",
                register_text(*register),
                data.len()
            ),
            Request::SpiTransfer { bus, chip_select, mode, speed_hz, data } => write!(
                s,
                " bus={bus} chip_select={chip_select} mode={mode} speed_hz={speed_hz} data=<{} bytes>",
                data.len()
            ),
            Request::UartRead { port, baud, max_bytes, timeout_ms } => {
                write!(s, " port={port:?} baud={baud} max_bytes={max_bytes} timeout_ms={timeout_ms}")
            }
            Request::UartWrite { port, baud, data } => {
                write!(s, " port={port:?} baud={baud} data=<{} bytes>", data.len())
            }
            Request::CameraCapture { width, height, quality } => {
                write!(s, " width={width} height={height} quality={quality}")
            }
            Request::CameraRecord { duration_ms, width, height, framerate } => {
                write!(s, " duration_ms={duration_ms} width={width} height={height} framerate={framerate}")
            }
            Request::ServiceStatus { unit } => write!(s, " unit={unit}"),
            Request::ServiceControl { unit, action } => write!(s, " unit={unit} action={}", action.as_str()),
            Request::JournalQuery { unit, lines, since } => match since {
                Some(since) => write!(s, " unit={unit} lines={lines} since={since:?}"),
                None => write!(s, " unit={unit} lines={lines}"),
            },
            Request::Power { action, delay_seconds } => write!(s, " action={action:?} delay_seconds={delay_seconds}"),
            Request::UpdateApply { manifest, signature, delta } => write!(
                s,
                " manifest=<{} bytes> signature=<{} bytes>{}",
                manifest.len(),
                signature.len(),
                if delta.is_some() { " delta" } else { "" }
            ),
            Request::UpdateRollback { to_version, reason } => write!(s, " to_version={to_version:?} reason={reason:?}"),
            Request::UpdateHealth { version, healthy, detail } => {
                write!(s, " version={version:?} healthy={healthy} detail={detail:?}")
            }
            Request::ConfigDeploy { deployment, signature } => {
                write!(s, " deployment=<{} bytes> signature=<{} bytes>", deployment.len(), signature.len())
            }
        };
        s
    }
}

fn register_text(register: Option<u8>) -> String {
    register.map_or_else(|| "none".to_string(), |r| format!("{r:#04x}"))
}

/// Who the agent runs as and what it may do: the answer to "why was this denied?" on a
/// misconfigured host.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct AgentCapabilities {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary group names, e.g. `gpio`, `i2c`, `spi`, `dialout`, `video`.
    pub groups: Vec<String>,
    /// Capability names such as `CAP_SYS_BOOT`, per set.
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
    pub bounding: Vec<String>,
    /// Whether the agent can never gain privileges through exec.
    pub no_new_privs: bool,
    /// The platform backend in use: `raspberry_pi` or `simulated`.
    pub backend: String,
    /// Why that backend was chosen.
    pub backend_reason: String,
}

/// The signed delta index of an update, as fetched: the exact bytes of `deltas.json` and
/// `deltas.json.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaIndexFiles {
    pub index: String,
    pub signature: String,
}

/// Why the agent refused or failed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The agent's own policy forbids it (a pin, bus or unit outside its allowlist).
    Denied,
    /// The request does not fit the hardware or the rules for its arguments.
    Invalid,
    /// The host cannot do this (no such device, no systemd, not a Pi).
    Unavailable,
    /// The operation ran and failed.
    Failed,
    /// The request's deadline passed before it finished.
    Timeout,
    /// The two sides come from incompatible releases.
    VersionMismatch,
    /// The frame was not a request the agent understands, or came before `Hello`.
    BadRequest,
    /// The agent is at its limit of requests in flight.
    Busy,
    /// The delta of an update cannot be used; nothing changed, and the whole package can be
    /// installed instead.
    DeltaUnusable,
}

impl ErrorCode {
    /// The wire name, for logs and MCP error data.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Denied => "denied",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Failed => "failed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Busy => "busy",
            ErrorCode::DeltaUnusable => "delta_unusable",
        }
    }
}

impl From<&PlatformError> for ErrorCode {
    fn from(e: &PlatformError) -> ErrorCode {
        match e {
            PlatformError::Unavailable(_) => ErrorCode::Unavailable,
            PlatformError::Invalid(_) => ErrorCode::Invalid,
            PlatformError::Failed(_) => ErrorCode::Failed,
        }
    }
}

/// The agent's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    Hello {
        package_version: String,
        ipc_version: String,
        capabilities: AgentCapabilities,
    },
    Capabilities(AgentCapabilities),
    /// GPIO reads and changes: the pin's state afterwards.
    Pin {
        state: PinState,
    },
    /// I2C scan: addresses that acknowledged.
    Addresses {
        addresses: Vec<u8>,
    },
    /// Bytes read from I2C or UART, or clocked in by SPI.
    Bytes {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// I2C and UART writes: how many bytes went out.
    Written {
        bytes: u64,
    },
    Capture {
        capture: Capture,
    },
    /// A finished recording.
    Video {
        video: Video,
    },
    Unit {
        state: UnitState,
    },
    Units {
        units: Vec<UnitState>,
    },
    Journal {
        entries: Vec<JournalEntry>,
    },
    Power {
        receipt: PowerReceipt,
    },
    Upgradable {
        packages: Vec<Upgradable>,
    },
    Upgrade {
        status: UpgradeStatus,
    },
    /// A release was installed and `current` switched to it; the services restart after
    /// `restart_in_ms`, and the new release's health check then commits or rolls back.
    UpdateApplied {
        from: Option<String>,
        to: String,
        restart_in_ms: u32,
    },
    /// `version.json` after a rollback.
    VersionState {
        state: VersionState,
    },
    /// The request was done and has nothing to report.
    Done,
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    /// The variant's wire name, the same string as the `kind` tag, for logs (a response's
    /// bytes never belong in one).
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Hello { .. } => "hello",
            Response::Capabilities(_) => "capabilities",
            Response::Pin { .. } => "pin",
            Response::Addresses { .. } => "addresses",
            Response::Bytes { .. } => "bytes",
            Response::Written { .. } => "written",
            Response::Capture { .. } => "capture",
            Response::Video { .. } => "video",
            Response::Unit { .. } => "unit",
            Response::Units { .. } => "units",
            Response::Journal { .. } => "journal",
            Response::Power { .. } => "power",
            Response::Upgradable { .. } => "upgradable",
            Response::Upgrade { .. } => "upgrade",
            Response::UpdateApplied { .. } => "update_applied",
            Response::VersionState { .. } => "version_state",
            Response::Done => "done",
            Response::Error { .. } => "error",
        }
    }

    /// The error response for a failed platform call. The message is the error's own text
    /// without [`PlatformError`]'s display prefix, so that the server can rebuild the same
    /// error from code and message.
    pub fn from_platform_error(e: &PlatformError) -> Response {
        let message = match e {
            PlatformError::Unavailable(m) | PlatformError::Invalid(m) | PlatformError::Failed(m) => m.clone(),
        };
        Response::Error { code: ErrorCode::from(e), message }
    }
}

/// The answer to a request the configuration refuses: `denied` for what it does not allow,
/// `invalid` for a value beyond one of its limits; the server's tools refuse the same
/// request with the same words.
impl From<crate::config::Denied> for Response {
    fn from(d: crate::config::Denied) -> Response {
        let code = match d.kind {
            crate::config::DenialKind::Forbidden => ErrorCode::Denied,
            crate::config::DenialKind::Invalid => ErrorCode::Invalid,
        };
        Response::Error { code, message: d.message }
    }
}

/// A request with its correlation id and the time after which the server no longer waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFrame {
    /// Chosen by the server, echoed in the response; unique per connection.
    pub id: u64,
    /// Milliseconds since the Unix epoch; the agent drops work whose deadline has passed
    /// rather than doing it for nobody.
    pub deadline_unix_ms: u64,
    pub request: Request,
}

impl RequestFrame {
    /// A frame whose deadline is `timeout` from now.
    pub fn with_timeout(id: u64, request: Request, timeout: Duration) -> RequestFrame {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        RequestFrame { id, deadline_unix_ms: unix_ms_now().saturating_add(timeout_ms), request }
    }

    /// Time left before the deadline; `None` once it has passed.
    pub fn time_left(&self) -> Option<Duration> {
        let left = self.deadline_unix_ms.checked_sub(unix_ms_now())?;
        (left > 0).then(|| Duration::from_millis(left))
    }
}

/// The agent's answer, carrying the id of the request it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub response: Response,
}

/// Milliseconds since the Unix epoch; 0 if the clock reads before 1970.
pub fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether this process (`local_*`) and its peer across the socket (`remote_*`) can talk:
/// package versions must agree in major.minor (patch releases only fix bugs) and the IPC
/// versions must agree in major.minor. The error names both sides' versions and what to do.
pub fn check_compatible(
    local_package: &str,
    local_ipc: &str,
    remote_package: &str,
    remote_ipc: &str,
) -> Result<(), String> {
    let local_pkg = major_minor(local_package, 3, "package version", "this side")?;
    let local_ipc_v = major_minor(local_ipc, 2, "IPC version", "this side")?;
    let remote_pkg = major_minor(remote_package, 3, "package version", "the other side")?;
    let remote_ipc_v = major_minor(remote_ipc, 2, "IPC version", "the other side")?;
    let sides = format!(
        "mcp-raspi {local_package} (IPC {local_ipc}) on this side and \
         {remote_package} (IPC {remote_ipc}) on the other side of the agent socket"
    );
    let remedy = "install the same mcp-raspi release for both the server and the agent \
                  (apt install --reinstall mcp-raspi) and restart both services \
                  (systemctl restart mcp-raspi-server raspi-ops-agent)";
    if local_pkg != remote_pkg {
        return Err(format!("{sides} differ in major.minor: {remedy}"));
    }
    if local_ipc_v != remote_ipc_v {
        return Err(format!("{sides} speak different IPC versions: {remedy}"));
    }
    Ok(())
}

/// The major and minor numbers of a version with exactly `parts` numeric parts
/// (`MAJOR.MINOR.PATCH` or `MAJOR.MINOR`), ignoring a pre-release (`-rc1`) or build
/// (`+git`) suffix, which does not change compatibility.
fn major_minor(s: &str, parts: usize, what: &str, side: &str) -> Result<(u64, u64), String> {
    // The peer's string goes into error messages and logs verbatim once accepted, so only
    // the characters a version can hold are allowed, and only a version's length of them.
    let plain = s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b));
    let core = s.split(['-', '+']).next().unwrap_or_default();
    let numbers: Option<Vec<u64>> = core
        .split('.')
        .map(|p| if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) { p.parse().ok() } else { None })
        .collect();
    match numbers.filter(|n| plain && n.len() == parts).as_deref() {
        Some(&[major, minor, ..]) => Ok((major, minor)),
        _ => {
            let example = if parts == 3 { "0.1.0" } else { "1.0" };
            let shown: String = s.chars().take(64).collect();
            Err(format!("malformed {what} {shown:?} on {side}: expected numbers separated by dots, such as {example}"))
        }
    }
}

/// Deserializes the arguments of an operation that takes none. serde ignores extra fields
/// beside the tag of a unit variant even under `deny_unknown_fields`, and a request the
/// agent half-understood is one it should refuse.
fn no_arguments<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    struct NoFields;

    impl<'de> serde::de::Visitor<'de> for NoFields {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("no arguments")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
            Ok(())
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            match map.next_key::<String>()? {
                Some(key) => Err(serde::de::Error::unknown_field(&key, &[])),
                None => Ok(()),
            }
        }
    }

    d.deserialize_any(NoFields)
}

/// Byte payloads travel as standard base64 strings: JSON has no bytes, and an array of
/// numbers is four times larger and unreadable in a packet dump.
pub(crate) mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
