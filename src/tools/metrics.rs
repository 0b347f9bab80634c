//! `metrics.*`: live values read from /proc and /sys, as a flat list of named samples, and
//! the history the sampler keeps (src/metrics).

use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::logs::parse_time;
use super::system::{read_only_spec, sample_cpu, SampleArguments};
use super::{Cx, NoArguments, Tool, ToolError, ToolSpec};
use crate::config::Role;
use crate::host::{disk, memory, net, os, thermal};
use crate::metrics::{time_text, Aggregation, Query, QueryError, Series, Status};

#[derive(Debug, Serialize, JsonSchema)]
pub struct Sample {
    /// Dotted metric name, e.g. `cpu.percent`, `disk./.used_percent`, `net.eth0.rx_bytes`.
    pub name: String,
    pub value: f64,
    /// Unit of the value: `percent`, `bytes`, `celsius`, `seconds` or `count`.
    pub unit: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MetricsSnapshot {
    /// When the values were read (RFC 3339, UTC).
    pub timestamp: String,
    pub metrics: Vec<Sample>,
}

pub struct GetSnapshot;

impl Tool for GetSnapshot {
    type Input = SampleArguments;
    type Output = MetricsSnapshot;
    // Its sampling window waits on the workers; its reads go to the blocking pool.
    const SPEC: ToolSpec = ToolSpec { blocking: false, ..read_only_spec(
        "metrics.get_snapshot",
        "Metrics snapshot",
        "Current values of CPU (total and per core), load, memory, swap, disk use per mount, temperatures, throttling and network counters, read live from the kernel, as named samples with units.",
    ) };

    async fn call(cx: Cx, args: SampleArguments) -> Result<MetricsSnapshot, ToolError> {
        snapshot(&cx, args).await
    }
}

/// The `metrics.get_snapshot` result, shared with the `raspi://metrics/snapshot` resource.
/// Runs on the async workers: the sampling window waits there, the reads go to the
/// blocking pool.
pub async fn snapshot(cx: &Cx, args: SampleArguments) -> Result<MetricsSnapshot, ToolError> {
    let cpu = sample_cpu(cx, args.window()?).await?;
    let roots = cx.app.roots.clone();
    super::off_worker(move || samples(&roots, cpu)).await
}

/// The samples around a CPU sample: blocking reads.
fn samples(roots: &crate::host::Roots, cpu: super::system::CpuUsage) -> Result<MetricsSnapshot, ToolError> {
    let mut out = Vec::new();
    let mut push = |name: String, value: f64, unit: &str| out.push(Sample { name, value, unit: unit.into() });
    push("cpu.percent".into(), cpu.percent, "percent");
    for (i, p) in cpu.per_core_percent.iter().enumerate() {
        push(format!("cpu.core{i}.percent"), *p, "percent");
    }
    let load = os::read_loadavg(roots)?;
    push("load.1m".into(), load.one, "count");
    push("load.5m".into(), load.five, "count");
    push("load.15m".into(), load.fifteen, "count");
    let m = memory::read_memory(roots)?;
    push("memory.used_percent".into(), m.used_percent, "percent");
    push("memory.used_bytes".into(), m.used_bytes as f64, "bytes");
    push("memory.available_bytes".into(), m.available_bytes as f64, "bytes");
    push("memory.cached_bytes".into(), m.cached_bytes as f64, "bytes");
    push("swap.used_bytes".into(), m.swap_total_bytes.saturating_sub(m.swap_free_bytes) as f64, "bytes");
    for d in disk::read_mounts(roots)? {
        push(format!("disk.{}.used_percent", d.mount_point), d.used_percent, "percent");
        push(format!("disk.{}.available_bytes", d.mount_point), d.available_bytes as f64, "bytes");
    }
    for t in thermal::read_temperatures(roots)? {
        push(format!("temperature.{}.celsius", t.kind), t.celsius, "celsius");
    }
    if let Some(t) = thermal::read_throttling(roots)? {
        push("throttling.under_voltage_now".into(), f64::from(u8::from(t.under_voltage_now)), "count");
        push("throttling.throttled_now".into(), f64::from(u8::from(t.throttled_now)), "count");
    }
    for i in net::read_interfaces(roots)? {
        push(format!("net.{}.rx_bytes", i.name), i.rx_bytes as f64, "bytes");
        push(format!("net.{}.tx_bytes", i.name), i.tx_bytes as f64, "bytes");
    }
    push("uptime".into(), os::read_uptime_seconds(roots)?, "seconds");
    Ok(MetricsSnapshot { timestamp: crate::logs::timestamp(std::time::SystemTime::now()), metrics: out })
}

/// Longest list of names one query takes.
const MAX_NAMES: usize = 64;
/// Steps a query has when none is given.
const DEFAULT_STEPS: i64 = 300;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryArguments {
    /// Series to read: full names (`cpu.percent`), dotted prefixes (`cpu`, `disk./boot`,
    /// `temperature`) or prefixes ending in `*` (`net.eth*`). Empty or absent: every series.
    /// `metrics.get_status` lists the series recorded.
    #[serde(default)]
    pub names: Vec<String>,
    /// Start of the range: an RFC 3339 time or a duration before now (`30m`, `24h`, `7d`).
    /// Default `1h`.
    pub since: Option<String>,
    /// End of the range, in the same forms; default now.
    pub until: Option<String>,
    /// Length of a step: a duration (`1m`, `15m`, `1h`) or a number of seconds. Default:
    /// the range in about 300 steps, and never shorter than the sampling interval. Steps
    /// start at multiples of their length since the epoch, so that steps of several Pis
    /// line up.
    pub step: Option<String>,
    /// How the samples of a step become its value: `avg` (default), `min`, `max` or `last`.
    #[serde(default)]
    pub aggregation: Aggregation,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct QueryResult {
    /// Start of the range (RFC 3339).
    pub since: String,
    /// End of the range (RFC 3339).
    pub until: String,
    pub step_seconds: i64,
    pub aggregation: Aggregation,
    pub series: Vec<Series>,
}

pub struct QueryHistory;

impl Tool for QueryHistory {
    type Input = QueryArguments;
    type Output = QueryResult;
    const SPEC: ToolSpec = read_only_spec(
        "metrics.query",
        "Query the metrics history",
        "Reads the metrics the sampler recorded (CPU per core, load, memory, disk use and I/O, network per interface, temperature, throttling) over a time range, downsampled into steps with avg, min, max or last. Name series or prefixes; metrics.get_status lists them.",
    );

    async fn call(cx: Cx, args: QueryArguments) -> Result<QueryResult, ToolError> {
        let history = &cx.app.metrics;
        let query = plan(args, history.interval_seconds(), history.max_age_days())?;
        let series = history.query(&query).map_err(|e| match e {
            QueryError::Invalid(m) => ToolError::invalid_argument(m),
            QueryError::Unavailable(m) => ToolError::unavailable(format!(
                "{m}. metrics.get_status says what the sampler is doing; when the database is damaged the server sets it aside and starts a new one"
            )),
        })?;
        Ok(QueryResult {
            since: time_text(query.since),
            until: time_text(query.until),
            step_seconds: query.step,
            aggregation: query.aggregation,
            series,
        })
    }
}

fn seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Checks a query's arguments and fills in what was left out.
fn plan(args: QueryArguments, interval: u64, max_age_days: u64) -> Result<Query, ToolError> {
    if args.names.len() > MAX_NAMES {
        return Err(ToolError::invalid_argument(format!(
            "argument `names`: {} names, more than {MAX_NAMES}; use prefixes such as `cpu` or `net.eth*`",
            args.names.len()
        )));
    }
    if let Some(bad) = args.names.iter().find(|n| n.is_empty() || n.len() > 200 || n.chars().any(char::is_control)) {
        return Err(ToolError::invalid_argument(format!(
            "argument `names`: {:?} is not a series name or prefix",
            crate::base::clip(bad, 60)
        )));
    }
    let since = seconds(parse_time("since", args.since.as_deref().unwrap_or("1h"))?);
    let until = match args.until.as_deref() {
        Some(u) => seconds(parse_time("until", u)?),
        None => seconds(SystemTime::now()),
    };
    if since >= until {
        return Err(ToolError::invalid_argument(format!(
            "argument `since` ({}) must be before `until` ({})",
            time_text(since),
            time_text(until)
        )));
    }
    let kept = i64::try_from(max_age_days.saturating_mul(86_400)).unwrap_or(i64::MAX);
    if until - since > kept + 86_400 {
        return Err(ToolError::invalid_argument(format!(
            "the range is {} days, but metrics are kept {max_age_days} days (metrics.retention.max_age_days): ask for at most {max_age_days}d",
            (until - since) / 86_400
        )));
    }
    let step = match args.step.as_deref() {
        Some(s) => parse_step(s)?,
        None => ((until - since) / DEFAULT_STEPS).max(interval as i64).max(1),
    };
    Ok(Query { names: args.names, since, until, step, aggregation: args.aggregation })
}

/// A step: a whole number of seconds, or a duration such as `5m`.
fn parse_step(s: &str) -> Result<i64, ToolError> {
    let seconds = match s.trim().parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => humantime::parse_duration(s.trim()).ok().map(|d| d.as_secs()),
    };
    match seconds {
        Some(n @ 1..=31_536_000) => Ok(n as i64),
        _ => Err(ToolError::invalid_argument(format!(
            "argument `step`: {:?} is not a step from 1 s to 365 d; write seconds (60) or a duration (5m, 1h)",
            crate::base::clip(s, 40)
        ))),
    }
}

pub struct GetStatus;

impl Tool for GetStatus {
    type Input = NoArguments;
    type Output = Status;
    const SPEC: ToolSpec = read_only_spec(
        "metrics.get_status",
        "Metrics sampler status",
        "Whether the sampler is recording (and if not, why), its interval, the series and samples kept, the database's size and schema version, the oldest and newest sample, retention, the last round, error and recovery.",
    );

    async fn call(cx: Cx, _: NoArguments) -> Result<Status, ToolError> {
        Ok(cx.app.metrics.status())
    }
}

const fn switch_spec(name: &'static str, title: &'static str, description: &'static str) -> ToolSpec {
    ToolSpec { min_role: Role::Operator, read_only: false, ..read_only_spec(name, title, description) }
}

fn switch(cx: &Cx, enabled: bool) -> Result<Status, ToolError> {
    cx.app.metrics.set_sampling(enabled, &cx.identity.name).map_err(ToolError::unavailable)?;
    Ok(cx.app.metrics.status())
}

pub struct StartSampling;

impl Tool for StartSampling {
    type Input = NoArguments;
    type Output = Status;
    const SPEC: ToolSpec = switch_spec(
        "metrics.start_sampling",
        "Start metrics sampling",
        "Switches the metrics sampler on (a round is taken at once) and keeps that choice across restarts, over metrics.collection.enabled. Returns the sampler's status.",
    );

    async fn call(cx: Cx, _: NoArguments) -> Result<Status, ToolError> {
        switch(&cx, true)
    }
}

pub struct StopSampling;

impl Tool for StopSampling {
    type Input = NoArguments;
    type Output = Status;
    const SPEC: ToolSpec = switch_spec(
        "metrics.stop_sampling",
        "Stop metrics sampling",
        "Switches the metrics sampler off and keeps that choice across restarts; the history is kept and can still be queried. Returns the sampler's status.",
    );

    async fn call(cx: Cx, _: NoArguments) -> Result<Status, ToolError> {
        switch(&cx, false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn args(since: Option<&str>, until: Option<&str>, step: Option<&str>) -> QueryArguments {
        QueryArguments {
            names: vec![],
            since: since.map(Into::into),
            until: until.map(Into::into),
            step: step.map(Into::into),
            aggregation: Aggregation::Avg,
        }
    }

    #[test]
    fn a_query_defaults_to_the_last_hour_in_steps_no_shorter_than_the_interval() {
        let q = plan(args(None, None, None), 60, 30).unwrap();
        assert_eq!((q.until - q.since, q.step), (3600, 60));
        let q = plan(args(Some("24h"), None, None), 60, 30).unwrap();
        assert_eq!(q.step, 288);
        let q = plan(args(Some("2026-12-01T00:00:00Z"), Some("2026-12-02T00:00:00Z"), Some("1h")), 60, 30).unwrap();
        assert_eq!((q.until - q.since, q.step), (86_400, 3600));
        assert_eq!(plan(args(None, None, Some("90")), 60, 30).unwrap().step, 90);
    }

    #[test]
    fn a_bad_range_or_step_is_refused_with_what_to_ask_instead() {
        let e = plan(args(Some("1h"), Some("2h"), None), 60, 30).unwrap_err();
        assert!(e.message.contains("must be before"), "{e}");
        let e = plan(args(Some("90d"), None, None), 60, 30).unwrap_err();
        assert!(e.message.contains("kept 30 days") && e.message.contains("at most 30d"), "{e}");
        for step in ["0", "soon", "400d"] {
            let e = plan(args(None, None, Some(step)), 60, 30).unwrap_err();
            assert!(e.message.contains("argument `step`"), "{e}");
        }
        let mut many = args(None, None, None);
        many.names = (0..65).map(|i| format!("s{i}")).collect();
        assert!(plan(many, 60, 30).unwrap_err().message.contains("more than 64"));
    }
}
