//! Validated configuration values: each checks itself while the YAML is read, so a bad
//! value is reported with its line.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The socket address the HTTP server listens on (`127.0.0.1:8000`, `[::1]:8000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(SocketAddr);

impl ListenAddr {
    pub fn addr(self) -> SocketAddr {
        self.0
    }
}

impl Default for ListenAddr {
    fn default() -> Self {
        ListenAddr(SocketAddr::from((Ipv4Addr::LOCALHOST, 8000)))
    }
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<SocketAddr>().map(ListenAddr).map_err(|_| {
            format!("{s:?} is not an address and port; write for example \"127.0.0.1:8000\" or \"[::1]:8000\"")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// What a caller may do: each role includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads state: information, metrics, logs.
    Viewer,
    /// Changes device state: pins, buses, services.
    Operator,
    /// Everything, including reboot, updates and the audit log.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest an audit record may wait for a grouped write, in milliseconds.
pub const MAX_AUDIT_WRITE_DELAY_MS: u64 = 1000;

/// Checks `logging.audit_write_delay_ms`.
pub fn check_audit_write_delay_ms(ms: u64) -> Result<u64, String> {
    if ms <= MAX_AUDIT_WRITE_DELAY_MS {
        Ok(ms)
    } else {
        Err(audit_write_delay_out_of_range(ms))
    }
}

fn audit_write_delay_out_of_range(ms: impl fmt::Display) -> String {
    format!("{ms} is outside the allowed range 0 to {MAX_AUDIT_WRITE_DELAY_MS} (milliseconds)")
}

/// Reads `logging.audit_write_delay_ms`, so that a value out of range is reported with its
/// line. Negative numbers are read too, to get the same message rather than a type error.
pub fn audit_write_delay_ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let ms = i64::deserialize(d)?;
    u64::try_from(ms)
        .map_err(|_| audit_write_delay_out_of_range(ms))
        .and_then(check_audit_write_delay_ms)
        .map_err(|message| serde::de::Error::custom(format!("logging.audit_write_delay_ms: {message}")))
}
