//! The rules of a configuration that span several keys, checked after it is parsed and
//! its environment overrides applied.

use super::*;

impl Config {
    /// Checks rules that span several keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| Err(ConfigError::Invalid { key: key.into(), message });
        if self.security.auth_mode.is_none() && !self.server.listen.addr().ip().is_loopback() {
            return invalid(
                "security.auth_mode",
                format!(
                    "\"none\" is only allowed when server.listen is a loopback address, not {}; use auth_mode \"token\"",
                    self.server.listen
                ),
            );
        }
        if let Err((key, message)) = self.security.validate_identity() {
            return invalid(&key, message);
        }
        for (i, t) in self.security.tokens.iter().enumerate() {
            if t.identity.is_empty() || !t.identity.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
                return invalid(
                    &format!("security.tokens[{i}].identity"),
                    format!("{:?} must be non-empty letters, digits, '-', '_', '.' or '@'", t.identity),
                );
            }
            if !is_env_name(&t.env) {
                return invalid(
                    &format!("security.tokens[{i}].env"),
                    format!("{:?} is not an environment variable name (A-Z, 0-9, _)", t.env),
                );
            }
        }
        if self.server.max_request_bytes < 1024 || self.server.max_request_bytes > 64 * 1024 * 1024 {
            return invalid("server.max_request_bytes", "must be between 1024 and 67108864".into());
        }
        if self.server.max_sessions == 0 {
            return invalid("server.max_sessions", "must be at least 1".into());
        }
        if !(1..=self.server.max_sessions).contains(&self.server.max_sessions_per_identity) {
            return invalid(
                "server.max_sessions_per_identity",
                format!("{} is outside 1 to server.max_sessions", self.server.max_sessions_per_identity),
            );
        }
        if !(8..=MAX_CONNECTIONS).contains(&self.server.max_connections) {
            return invalid(
                "server.max_connections",
                format!(
                    "{} is outside 8 to {MAX_CONNECTIONS} (each connection is a file descriptor: keep it well \
                     below the service's LimitNOFILE)",
                    self.server.max_connections
                ),
            );
        }
        if !(1..=300).contains(&self.server.header_read_timeout_seconds) {
            return invalid(
                "server.header_read_timeout_seconds",
                format!("{} is outside 1 to 300", self.server.header_read_timeout_seconds),
            );
        }
        if !(1..=3600).contains(&self.server.keep_alive_timeout_seconds) {
            return invalid(
                "server.keep_alive_timeout_seconds",
                format!("{} is outside 1 to 3600", self.server.keep_alive_timeout_seconds),
            );
        }
        if !(1..=500).contains(&self.server.page_size) {
            return invalid("server.page_size", format!("{} is outside 1 to 500", self.server.page_size));
        }
        if let Err(message) = values::check_audit_write_delay_ms(self.logging.audit_write_delay_ms) {
            return invalid("logging.audit_write_delay_ms", message);
        }
        if self.logging.audit_budget_mb_per_hour > 100_000 {
            return invalid(
                "logging.audit_budget_mb_per_hour",
                format!("{} is over 100000 (0 turns the budget off)", self.logging.audit_budget_mb_per_hour),
            );
        }
        if self.logging.file.max_size_mb == 0 {
            return invalid("logging.file.max_size_mb", "must be at least 1".into());
        }
        for origin in &self.server.cors.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) || origin.ends_with('/') {
                return invalid(
                    "server.cors.allowed_origins",
                    format!("{origin:?} is not an origin; write scheme://host[:port] without a path"),
                );
            }
        }
        for (key, t) in [
            ("health.cpu_percent", self.health.cpu_percent),
            ("health.memory_percent", self.health.memory_percent),
            ("health.disk_percent", self.health.disk_percent),
            ("health.temperature_celsius", self.health.temperature_celsius),
        ] {
            // `.inf` and `.nan` are YAML numbers, but JSON has no such numbers: an environment
            // override, which takes the configuration through JSON, would fail on them.
            for (which, value) in [("warning", t.warning), ("critical", t.critical)] {
                if !value.is_finite() {
                    return invalid(&format!("{key}.{which}"), format!("{value} is not a finite number"));
                }
            }
            if t.warning.partial_cmp(&t.critical) != Some(std::cmp::Ordering::Less) {
                return invalid(key, format!("warning ({}) must be below critical ({})", t.warning, t.critical));
            }
        }
        if let Err((key, message)) = self.gpio.pwm.validate() {
            return invalid(key, message);
        }
        let mut pins = std::collections::BTreeSet::new();
        for (i, rule) in self.gpio.pins.iter().enumerate() {
            if !pins.insert(rule.pin) {
                return invalid(&format!("gpio.pins[{i}]"), format!("{} is listed twice", rule.pin));
            }
            if rule.modes.is_empty() {
                return invalid(&format!("gpio.pins[{i}].modes"), "list at least one of input, output, pwm".into());
            }
        }
        for (i, bus) in self.i2c.buses.iter().enumerate() {
            if let Some(a) = bus.addresses.iter().find(|a| !(0x03..=0x77).contains(*a)) {
                return invalid(
                    &format!("i2c.buses[{i}].addresses"),
                    format!("{a:#04x} is not a 7-bit device address (0x03 to 0x77)"),
                );
            }
        }
        for (i, port) in self.uart.ports.iter().enumerate() {
            if port.port.is_empty() || !port.port.chars().all(|c| c.is_ascii_alphanumeric()) {
                return invalid(
                    &format!("uart.ports[{i}].port"),
                    format!("{:?} is not a device name under /dev such as serial0 or ttyAMA0", port.port),
                );
            }
        }
        if self.camera.max_files == 0 || self.camera.max_width == 0 || self.camera.max_height == 0 {
            return invalid("camera", "max_files, max_width and max_height must be at least 1".into());
        }
        if self.ops_agent.request_timeout_ms == 0 {
            return invalid("ops_agent.request_timeout_ms", "must be at least 1".into());
        }
        let updates = &self.updates;
        let url = &updates.server_url;
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            return invalid(
                "updates.server_url",
                format!(
                    "{:?} is not an http:// or https:// URL (leave it empty to turn self-update off)",
                    updates.server_url
                ),
            );
        }
        if !devices::CHANNELS.contains(&updates.channel.as_str()) {
            return invalid(
                "updates.channel",
                format!("{:?} is not one of {}", updates.channel, devices::CHANNELS.join(", ")),
            );
        }
        if !(1..=20).contains(&updates.keep_versions) {
            return invalid("updates.keep_versions", format!("{} is outside 1 to 20", updates.keep_versions));
        }
        if !(1..=1024).contains(&updates.max_download_mb) {
            return invalid("updates.max_download_mb", format!("{} is outside 1 to 1024", updates.max_download_mb));
        }
        if !(5..=3600).contains(&updates.health_timeout_seconds) {
            return invalid(
                "updates.health_timeout_seconds",
                format!("{} is outside 5 to 3600", updates.health_timeout_seconds),
            );
        }
        if !(5..=3600).contains(&updates.config.health_timeout_seconds) {
            return invalid(
                "updates.config.health_timeout_seconds",
                format!("{} is outside 5 to 3600", updates.config.health_timeout_seconds),
            );
        }
        if !(1..=720).contains(&updates.auto.check_interval_hours) {
            return invalid(
                "updates.auto.check_interval_hours",
                format!("{} is outside 1 to 720", updates.auto.check_interval_hours),
            );
        }
        if let Err(message) = devices::Window::parse(&updates.auto.window) {
            return invalid("updates.auto.window", message);
        }
        if updates.auto.enabled && updates.server_url.is_empty() {
            return invalid("updates.auto.enabled", "automatic updates need updates.server_url".into());
        }
        if !(1..=20).contains(&updates.max_failed_starts) {
            return invalid("updates.max_failed_starts", format!("{} is outside 1 to 20", updates.max_failed_starts));
        }
        if let Err((key, message)) = self.metrics.validate() {
            return invalid(key, message);
        }
        for unit in &self.health.services {
            if !crate::platform::UnitName::is_valid(unit) {
                return invalid("health.services", format!("{unit:?} is not a systemd unit name"));
            }
        }
        Ok(())
    }
}
