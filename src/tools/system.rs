//! `system.*`: what the machine is, how healthy it is, what this server can do, and its
//! network.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Cx, Deprecation, Maturity, NoArguments, Tool, ToolError, ToolSpec};
use crate::config::{Role, Threshold};
use crate::host::{board, cpu, disk, memory, net, os, thermal};
use crate::platform::UnitName;

pub(super) const fn read_only_spec(name: &'static str, title: &'static str, description: &'static str) -> ToolSpec {
    ToolSpec {
        name,
        title,
        description,
        version: "1.0",
        min_role: Role::Viewer,
        maturity: Maturity::Stable,
        deprecation: None,
        read_only: true,
        destructive: false,
        idempotent: true,
        open_world: false,
        blocking: true,
    }
}

/// Which backend serves hardware tools, and why.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BackendInfo {
    /// `raspberry_pi` (real hardware) or `simulated` (in-memory stand-ins).
    pub name: &'static str,
    /// Why this backend was chosen.
    pub reason: Arc<str>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CpuSummary {
    /// CPU model name, when the kernel reports one.
    pub model_name: Option<Arc<str>>,
    /// Number of logical CPUs.
    pub cores: u32,
    /// Current frequency of CPU 0 in MHz.
    pub frequency_mhz: Option<f64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SystemInfo {
    pub hostname: Arc<str>,
    /// Board identity (model, revision, serial, SoC) from the device tree and cpuinfo.
    pub board: Arc<board::Board>,
    pub os: Arc<os::OsInfo>,
    pub cpu: CpuSummary,
    /// Usable memory as the kernel reports it, in bytes.
    pub memory_total_bytes: u64,
    pub uptime_seconds: f64,
    pub backend: BackendInfo,
    /// Version of mcp-raspi.
    pub server_version: &'static str,
}

pub struct GetInfo;

impl Tool for GetInfo {
    type Input = NoArguments;
    type Output = SystemInfo;
    const SPEC: ToolSpec = read_only_spec(
        "system.get_info",
        "System information",
        "Board model, serial, revision and SoC; OS and kernel; CPU and memory size; uptime; hostname; and whether hardware tools use the real Raspberry Pi backend or the simulated one.",
    );

    async fn call(cx: Cx, _: NoArguments) -> Result<SystemInfo, ToolError> {
        system_info(&cx)
    }
}

/// The parts of `system.get_info` that do not change while the machine runs.
#[derive(Debug, Clone)]
pub struct StaticInfo {
    pub board: Arc<board::Board>,
    pub os: Arc<os::OsInfo>,
    pub cpu_model: Option<Arc<str>>,
    pub cores: u32,
    pub memory_total_bytes: u64,
    /// Uptime when read, and when: later uptimes need no file read.
    pub uptime_seconds: f64,
    pub read_at: std::time::Instant,
}

impl StaticInfo {
    pub fn read(roots: &crate::host::Roots) -> Result<StaticInfo, ToolError> {
        let info = cpu::read_cpuinfo(roots)?;
        Ok(StaticInfo {
            board: Arc::new(board::read_board(roots)?),
            os: Arc::new(os::read_os(roots)?),
            cpu_model: info.model_name.map(Into::into),
            cores: info.cores,
            memory_total_bytes: memory::read_memory(roots)?.total_bytes,
            uptime_seconds: os::read_uptime_seconds(roots)?,
            read_at: std::time::Instant::now(),
        })
    }
}

/// The `system.get_info` result, shared with the `raspi://system/info` resource. Board,
/// OS and CPU identity are read once a minute (reading /proc/cpuinfo and the device tree
/// on every call would dominate its cost); uptime and frequency are read live.
pub fn system_info(cx: &Cx) -> Result<SystemInfo, ToolError> {
    let fixed = cx.app.static_info()?;
    Ok(SystemInfo {
        hostname: fixed.os.hostname.clone(),
        board: fixed.board.clone(),
        os: fixed.os.clone(),
        cpu: CpuSummary {
            model_name: fixed.cpu_model.clone(),
            cores: fixed.cores,
            frequency_mhz: cpu::read_live_cpu_freq_mhz(&cx.app.cpu_freq)?,
        },
        memory_total_bytes: fixed.memory_total_bytes,
        uptime_seconds: fixed.uptime_seconds + fixed.read_at.elapsed().as_secs_f64(),
        backend: BackendInfo { name: cx.app.platform.backend, reason: cx.app.platform.reason.clone() },
        server_version: crate::base::VERSION,
    })
}

/// How long to measure CPU usage for.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleArguments {
    /// Milliseconds over which CPU usage is measured (0 to 5000, default 200). Longer
    /// windows smooth out spikes; progress is reported while waiting.
    #[serde(default = "default_sample_ms")]
    #[schemars(range(min = 0, max = 5000))]
    pub sample_ms: u64,
}

fn default_sample_ms() -> u64 {
    200
}

impl SampleArguments {
    pub fn window(&self) -> Result<Duration, ToolError> {
        if self.sample_ms > 5000 {
            return Err(ToolError::invalid_argument(format!(
                "argument `sample_ms`: {} is more than 5000; use 0 to 5000 milliseconds",
                self.sample_ms
            )));
        }
        Ok(Duration::from_millis(self.sample_ms))
    }
}

/// Overall state: the worst of the individual checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    Warning,
    Critical,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CpuUsage {
    /// Busy share of all CPUs over the sample window, 0-100.
    pub percent: f64,
    /// Busy share of each CPU, 0-100.
    pub per_core_percent: Vec<f64>,
    /// The window measured, in milliseconds.
    pub sample_ms: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ServiceHealth {
    pub unit: String,
    /// `active`, `inactive`, `failed`, ... or null when the state could not be read.
    pub active_state: Option<String>,
    pub sub_state: Option<String>,
    /// Why the state could not be read.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HealthSnapshot {
    /// `ok`, `warning` or `critical`: the worst of the checks below.
    pub verdict: Verdict,
    /// One sentence for each check that is not ok.
    pub reasons: Vec<String>,
    pub cpu: CpuUsage,
    pub load: os::LoadAvg,
    pub memory: memory::Memory,
    pub disks: Vec<disk::Mount>,
    pub temperatures: Vec<thermal::Temperature>,
    /// Firmware throttling flags; null on hardware that has none (not a Raspberry Pi).
    pub throttling: Option<thermal::Throttling>,
    pub network: Vec<NetCounters>,
    pub services: Vec<ServiceHealth>,
    pub uptime_seconds: f64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct NetCounters {
    pub interface: String,
    pub up: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
}

pub struct GetHealthSnapshot;

impl Tool for GetHealthSnapshot {
    type Input = SampleArguments;
    type Output = HealthSnapshot;
    // Its sampling window waits on the workers; its reads go to the blocking pool.
    const SPEC: ToolSpec = ToolSpec {
        blocking: false,
        ..read_only_spec(
            "system.get_health_snapshot",
            "Health snapshot",
            "CPU usage, load, memory, disk use per mount, temperatures, firmware throttling (under-voltage, frequency capping), network counters and service states, with an ok/warning/critical verdict and the reasons for it.",
        )
    };

    async fn call(cx: Cx, args: SampleArguments) -> Result<HealthSnapshot, ToolError> {
        let cpu = sample_cpu(&cx, args.window()?).await?;
        super::off_worker(move || health_snapshot(&cx, cpu)).await
    }
}

/// The health snapshot around a CPU sample: blocking reads.
fn health_snapshot(cx: &Cx, cpu: CpuUsage) -> Result<HealthSnapshot, ToolError> {
    let roots = &cx.app.roots;
    let health = &cx.app.config.health;
    let memory = memory::read_memory(roots)?;
    let disks = disk::read_mounts(roots)?;
    let temperatures = thermal::read_temperatures(roots)?;
    let throttling = thermal::read_throttling(roots)?;
    let network = net::read_interfaces(roots)?
        .into_iter()
        .map(|i| NetCounters {
            interface: i.name,
            up: i.up,
            rx_bytes: i.rx_bytes,
            tx_bytes: i.tx_bytes,
            rx_errors: i.rx_errors,
            tx_errors: i.tx_errors,
        })
        .collect();
    let services = service_states(cx, &health.services);

    let mut checks: Vec<(Verdict, String)> = Vec::new();
    let mut check = |what: String, value: f64, unit: &str, t: Threshold| {
        if value >= t.critical {
            checks.push((Verdict::Critical, format!("{what} is {value:.1}{unit} (critical at {}{unit})", t.critical)));
        } else if value >= t.warning {
            checks.push((Verdict::Warning, format!("{what} is {value:.1}{unit} (warning at {}{unit})", t.warning)));
        }
    };
    check("CPU usage".into(), cpu.percent, "%", health.cpu_percent);
    check("memory use".into(), memory.used_percent, "%", health.memory_percent);
    for d in &disks {
        check(format!("disk use of {}", d.mount_point), d.used_percent, "%", health.disk_percent);
    }
    if let Some(hottest) = temperatures.iter().max_by(|a, b| a.celsius.total_cmp(&b.celsius)) {
        check(format!("temperature ({})", hottest.kind), hottest.celsius, "°C", health.temperature_celsius);
    }
    if let Some(t) = &throttling {
        if t.under_voltage_now || t.throttled_now {
            checks
                .push((Verdict::Critical, format!("the firmware reports under-voltage or throttling now ({})", t.raw)));
        } else if t.arm_frequency_capped_now || t.soft_temperature_limit_now {
            checks.push((Verdict::Warning, format!("the firmware is capping the CPU frequency now ({})", t.raw)));
        } else if t.under_voltage_occurred || t.throttled_occurred {
            checks.push((
                Verdict::Warning,
                format!("under-voltage or throttling occurred since boot ({}): check the power supply", t.raw),
            ));
        }
    }
    for s in &services {
        match s.active_state.as_deref() {
            Some("failed") => checks.push((Verdict::Critical, format!("{} has failed", s.unit))),
            Some("active") | None => {}
            Some(other) => checks.push((Verdict::Warning, format!("{} is {other}", s.unit))),
        }
    }
    let verdict = checks.iter().map(|(v, _)| *v).max().unwrap_or(Verdict::Ok);
    Ok(HealthSnapshot {
        verdict,
        reasons: checks.into_iter().map(|(_, r)| r).collect(),
        cpu,
        load: os::read_loadavg(roots)?,
        memory,
        disks,
        temperatures,
        throttling,
        network,
        services,
        uptime_seconds: os::read_uptime_seconds(roots)?,
    })
}

/// Measures CPU usage over `window`, reporting progress while it waits.
/// CPU usage over `window`. Runs on the async workers: the reads go to the blocking pool,
/// the wait between them holds no thread.
pub async fn sample_cpu(cx: &Cx, window: Duration) -> Result<CpuUsage, ToolError> {
    let read = || {
        let roots = cx.app.roots.clone();
        super::off_worker(move || cpu::read_cpu_times(&roots).map_err(ToolError::from))
    };
    let before = read().await?;
    let steps = (window.as_millis() / 100).max(1) as u64;
    if !window.is_zero() {
        for step in 1..=steps {
            tokio::time::sleep(window / steps as u32).await;
            cx.progress.report(step as f64, Some(steps as f64), "measuring CPU usage");
        }
    }
    let after = read().await?;
    // With no window, usage is the average since the previous snapshot (or since boot).
    let before = if window.is_zero() {
        let mut last = cx.app.last_cpu.lock().map_err(|_| ToolError::internal("CPU sample state is unavailable"))?;
        let prev = last.take().map(|(_, t)| t).unwrap_or(before);
        *last = Some((std::time::Instant::now(), after.clone()));
        prev
    } else {
        before
    };
    Ok(CpuUsage {
        percent: round1(cpu::cpu_percent(&before.total, &after.total)),
        per_core_percent: before.cores.iter().zip(&after.cores).map(|(b, a)| round1(cpu::cpu_percent(b, a))).collect(),
        sample_ms: window.as_millis() as u64,
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The states of `units`. The health snapshot runs on the blocking pool (its spec says so),
/// so this asks systemd directly: waiting here for another blocking job could, with the pool
/// full of snapshots, wait forever.
fn service_states(cx: &Cx, units: &[String]) -> Vec<ServiceHealth> {
    let services = &cx.app.platform.services;
    units
        .iter()
        .map(|u| {
            match UnitName::parse(u)
                .map_err(|e| e.to_string())
                .and_then(|n| services.status(&n).map_err(|e| e.to_string()))
            {
                Ok(s) => ServiceHealth {
                    unit: s.unit,
                    active_state: Some(s.active_state),
                    sub_state: Some(s.sub_state),
                    error: None,
                },
                Err(e) => ServiceHealth { unit: u.clone(), active_state: None, sub_state: None, error: Some(e) },
            }
        })
        .collect()
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ToolCapability {
    pub name: String,
    /// Interface version of the tool.
    pub version: String,
    pub maturity: Maturity,
    /// The least role that may call it.
    pub min_role: Role,
    /// Whether the caller's role allows calling it.
    pub callable_by_you: bool,
    pub read_only: bool,
    pub destructive: bool,
    /// Whether the tool is offered: stable and beta tools always, experimental ones when
    /// experimental_features turns them on.
    pub enabled: bool,
    /// Set when the tool is kept only for old clients.
    pub deprecation: Option<Deprecation>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Capabilities {
    pub server_version: String,
    /// MCP protocol versions this server speaks, newest first.
    pub protocol_versions: Vec<String>,
    pub tools: Vec<ToolCapability>,
    /// The privileged ops agent, as found when this call reached for it: whether it is
    /// connected, its version, user, groups and capability sets, or the last connection error.
    pub agent: crate::agent_client::AgentStatus,
    /// Your identity and role.
    pub caller: Caller,
    /// Authentication modes: `token`, `cloudflare_access`, `oidc` or `none`; modes that
    /// combine are joined by `+` (`token+cloudflare_access`).
    pub auth_mode: String,
    /// The experimental features: the master switch, each feature name this build knows
    /// (whether it is on, and what it turns on), and the configured entries.
    pub experimental_features: crate::config::ExperimentalReport,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Caller {
    pub identity: Arc<str>,
    pub role: Role,
}

pub struct GetCapabilities;

impl Tool for GetCapabilities {
    type Input = NoArguments;
    type Output = Capabilities;
    // 1.1: each tool says whether it is enabled, and the experimental features are reported.
    const SPEC: ToolSpec = ToolSpec {
        version: "1.1",
        ..read_only_spec(
        "system.get_capabilities",
        "Server capabilities",
        "Protocol versions, every tool with its version, maturity, deprecation, required role (and whether you may call it) and whether it is enabled, the privileged agent's capability set, the authentication mode, and the experimental features: each feature name, whether it is on and what it turns on.",
    )
    };

    async fn call(cx: Cx, _: NoArguments) -> Result<Capabilities, ToolError> {
        let tools = cx
            .app
            .catalogue
            .entries()
            .iter()
            .map(|e| {
                let s = e.tool.spec();
                ToolCapability {
                    name: s.name.into(),
                    version: s.version.into(),
                    maturity: s.maturity,
                    min_role: s.min_role,
                    callable_by_you: cx.identity.role >= s.min_role,
                    read_only: s.read_only,
                    destructive: s.destructive,
                    enabled: cx.app.tool_enabled(s),
                    deprecation: s.deprecation,
                }
            })
            .collect();
        Ok(Capabilities {
            server_version: crate::base::VERSION.into(),
            protocol_versions: crate::mcp::SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
            tools,
            agent: cx.app.agent.refresh().await,
            caller: Caller { identity: cx.identity.name.clone(), role: cx.identity.role },
            auth_mode: cx.app.auth.modes().to_string(),
            experimental_features: cx.app.config.experimental_features.report(&super::tool_names()),
        })
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct NetworkInfo {
    pub hostname: Arc<str>,
    pub interfaces: Vec<net::Interface>,
}

pub struct GetNetworkInfo;

impl Tool for GetNetworkInfo {
    type Input = NoArguments;
    type Output = NetworkInfo;
    const SPEC: ToolSpec = read_only_spec(
        "system.get_network_info",
        "Network interfaces",
        "Each network interface with its MAC, IPv4 and IPv6 addresses, link state, speed, MTU, traffic and error counters, and Wi-Fi link quality and signal strength.",
    );

    async fn call(cx: Cx, _: NoArguments) -> Result<NetworkInfo, ToolError> {
        let roots = &cx.app.roots;
        Ok(NetworkInfo { hostname: os::read_os(roots)?.hostname, interfaces: net::read_interfaces(roots)? })
    }
}
