//! `metrics.*`: live values read from /proc and /sys, as a flat list of named samples.

use schemars::JsonSchema;
use serde::Serialize;

use super::system::{read_only_spec, sample_cpu, SampleArguments};
use super::{Cx, Tool, ToolError, ToolSpec};
use crate::host::{disk, memory, net, os, thermal};

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
