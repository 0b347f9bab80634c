//! `metrics:`: the sampler of the metrics history, how long its samples are kept, and
//! the Prometheus export.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub collection: CollectionConfig,
    pub retention: RetentionConfig,
    pub prometheus: PrometheusConfig,
}

/// How often the sampler records the host's metrics into `metrics.db`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectionConfig {
    /// Whether sampling is on when nobody has switched it with `metrics.start_sampling` or
    /// `metrics.stop_sampling` (whose choice is kept in the state directory and wins).
    pub enabled: bool,
    /// Seconds between two samples, 1 to 3600 (300 suits a metered link).
    pub interval_seconds: u64,
}

impl Default for CollectionConfig {
    fn default() -> Self {
        CollectionConfig { enabled: true, interval_seconds: 60 }
    }
}

/// What the sampler keeps: samples older than `max_age_days` go, and the oldest go first
/// while the database is over `max_size_mb`.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub max_age_days: u64,
    pub max_size_mb: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { max_age_days: 30, max_size_mb: 100 }
    }
}

/// `GET /metrics` in Prometheus' text format.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Off by default: on, loopback callers read it without a token and others with a
    /// credential of any role.
    pub enabled: bool,
}

impl MetricsConfig {
    /// Checks the ranges, as `(key, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let interval = self.collection.interval_seconds;
        if !(1..=3600).contains(&interval) {
            return Err(("metrics.collection.interval_seconds", format!("{interval} is outside 1 to 3600")));
        }
        let days = self.retention.max_age_days;
        if !(1..=3650).contains(&days) {
            return Err(("metrics.retention.max_age_days", format!("{days} is outside 1 to 3650")));
        }
        let mb = self.retention.max_size_mb;
        if !(1..=100_000).contains(&mb) {
            return Err(("metrics.retention.max_size_mb", format!("{mb} is outside 1 to 100000")));
        }
        Ok(())
    }
}
