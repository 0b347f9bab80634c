//! The judgement of `mcp-raspi healthcheck`: readings in, the plugin's state, status line
//! and performance data out. Nothing here reads the machine, so every verdict is tested
//! on readings made up for it.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A WARNING and a CRITICAL threshold: a value above one raises that state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub warning: f64,
    pub critical: f64,
}

/// The thresholds of the three measured values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub temperature: Thresholds,
    pub disk: Thresholds,
    pub memory: Thresholds,
}

impl Limits {
    /// The runbook's thresholds: 75/85 °C, 85/95 % disk, 85/95 % memory.
    pub const DEFAULT: Limits = Limits {
        temperature: Thresholds { warning: 75.0, critical: 85.0 },
        disk: Thresholds { warning: 85.0, critical: 95.0 },
        memory: Thresholds { warning: 85.0, critical: 95.0 },
    };
}

/// A plugin state, as its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }

    /// Rank when states are combined: a known problem outranks not knowing, and not
    /// knowing outranks OK.
    fn rank(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Unknown => 1,
            State::Warning => 2,
            State::Critical => 3,
        }
    }
}

/// Where the settings came from.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigSource {
    /// The file, read and valid.
    File(String),
    /// The file could not be read (missing, or not readable by this user): defaults.
    Defaults(String),
    /// The file is invalid: defaults, and the service will not start with that file.
    Invalid(String),
}

/// What the server answered on `/healthz`.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerProbe {
    /// An HTTP status and the version the body names, if any.
    Answered { address: SocketAddr, status: u16, version: Option<String> },
    /// No connection or no answer.
    Unreachable { address: SocketAddr, error: String },
    /// Nothing to ask (the address is not known).
    NotChecked(String),
}

/// What was found at the ops agent's socket.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentProbe {
    /// A connection was accepted.
    Listening(PathBuf),
    /// A socket is there; this user may not connect, so whether the agent listens is unknown.
    Present(PathBuf, String),
    /// A socket is there and nobody listens (the agent was killed).
    NotListening(PathBuf),
    Missing(PathBuf),
    NotASocket(PathBuf),
    Unreadable(PathBuf, String),
}

/// The SoC's temperature sensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Sensor {
    pub celsius: f64,
    pub name: String,
}

/// Use of the checked file system.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskUse {
    pub mount_point: String,
    pub used_percent: f64,
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// Everything read, before it is judged.
#[derive(Clone, Debug, PartialEq)]
pub struct Readings {
    pub config: ConfigSource,
    /// `systemctl is-active` of each unit; `None` when systemd was not asked.
    pub units: Option<Result<Vec<(String, String)>, String>>,
    pub server: ServerProbe,
    pub agent: AgentProbe,
    /// `Ok(None)` on a machine without a temperature sensor.
    pub temperature: Result<Option<Sensor>, String>,
    pub disk: Result<DiskUse, String>,
    pub memory: Result<f64, String>,
}

/// The verdict: the exit status, the status line and the lines of detail.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub state: State,
    pub line: String,
    pub details: Vec<String>,
}

/// One check's verdict: its state, what the status line says when it is not OK, and its
/// line of detail.
struct Finding {
    state: State,
    problem: String,
    detail: String,
}

impl Finding {
    fn ok(detail: String) -> Finding {
        Finding { state: State::Ok, problem: String::new(), detail }
    }

    fn bad(state: State, problem: String) -> Finding {
        Finding { state, detail: problem.clone(), problem }
    }
}

/// One decimal, as values are shown and compared, so that what is shown is what was judged.
fn tenths(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn judge(value: f64, t: Thresholds) -> State {
    if value > t.critical {
        State::Critical
    } else if value > t.warning {
        State::Warning
    } else {
        State::Ok
    }
}

/// `what value > threshold` for a value past one.
fn exceeded(what: &str, value: f64, unit: &str, state: State, t: Thresholds) -> String {
    let limit = if state == State::Critical { t.critical } else { t.warning };
    format!("{what} {value:.1}{unit} > {limit}{unit}")
}

fn measured(what: &str, value: f64, unit: &str, t: Thresholds, detail: String) -> Finding {
    let value = tenths(value);
    match judge(value, t) {
        State::Ok => Finding::ok(detail),
        state => Finding { state, problem: exceeded(what, value, unit, state, t), detail },
    }
}

/// Judges `readings` against `limits`.
pub fn evaluate(readings: &Readings, limits: &Limits) -> Report {
    let mut findings = Vec::new();
    let mut note = None;
    match &readings.config {
        ConfigSource::File(path) => findings.push(Finding::ok(format!("configuration: {path}"))),
        ConfigSource::Defaults(why) => {
            note = Some("defaults used, configuration not readable");
            findings.push(Finding::ok(format!("configuration: defaults used ({why})")));
        }
        ConfigSource::Invalid(why) => {
            findings.push(Finding::bad(State::Unknown, format!("configuration invalid, defaults used: {why}")))
        }
    }
    match &readings.units {
        None => findings.push(Finding::ok("units: not asked (systemd does not run this machine)".into())),
        Some(Err(e)) => findings.push(Finding::bad(State::Unknown, format!("cannot ask systemd: {e}"))),
        Some(Ok(units)) => {
            for (unit, active) in units {
                findings.push(match active.as_str() {
                    "active" | "reloading" => Finding::ok(format!("{unit}: {active}")),
                    "activating" | "deactivating" => Finding::bad(State::Warning, format!("{unit} {active}")),
                    _ => Finding::bad(State::Critical, format!("{unit} {active}")),
                });
            }
        }
    }
    findings.push(match &readings.server {
        ServerProbe::Answered { address, status: 200, version } => {
            let version = version.as_deref().map(|v| format!(" (version {v})")).unwrap_or_default();
            Finding::ok(format!("server: /healthz on {address} answered 200{version}"))
        }
        ServerProbe::Answered { address, status, .. } => {
            Finding::bad(State::Critical, format!("server unhealthy: /healthz on {address} answered {status}"))
        }
        ServerProbe::Unreachable { address, error } => {
            Finding::bad(State::Critical, format!("server not answering on {address}: {error}"))
        }
        ServerProbe::NotChecked(why) => Finding::bad(State::Unknown, format!("server not checked: {why}")),
    });
    findings.push(match &readings.agent {
        AgentProbe::Listening(p) => Finding::ok(format!("ops agent: listening on {}", p.display())),
        AgentProbe::Present(p, why) => {
            Finding::ok(format!("ops agent: socket {} present (not connected: {why})", p.display()))
        }
        AgentProbe::NotListening(p) => {
            Finding::bad(State::Critical, format!("ops agent not listening on {}", p.display()))
        }
        // Without systemd the socket is the one sign of the agent, so its absence is as
        // bad as the agent being stopped: privileged tools cannot work.
        AgentProbe::Missing(p) => Finding::bad(State::Critical, format!("ops agent socket {} missing", p.display())),
        AgentProbe::NotASocket(p) => Finding::bad(State::Critical, format!("{} is not a socket", p.display())),
        AgentProbe::Unreadable(p, e) => {
            Finding::bad(State::Unknown, format!("ops agent socket {} unknown: {e}", p.display()))
        }
    });
    let t = limits.temperature;
    findings.push(match &readings.temperature {
        Ok(Some(s)) => {
            measured("temperature", s.celsius, "°C", t, format!("temperature: {:.1}°C ({})", tenths(s.celsius), s.name))
        }
        Ok(None) => Finding::ok("temperature: unknown (no temperature sensor)".into()),
        Err(e) => Finding::bad(State::Unknown, format!("temperature unknown: {e}")),
    });
    findings.push(match &readings.disk {
        Ok(d) => measured(
            &format!("disk {}", d.mount_point),
            d.used_percent,
            "%",
            limits.disk,
            format!(
                "disk: {} {:.1}% used ({} of {})",
                d.mount_point,
                tenths(d.used_percent),
                crate::cli::storage::human_bytes(d.used_bytes),
                crate::cli::storage::human_bytes(d.total_bytes)
            ),
        ),
        Err(e) => Finding::bad(State::Unknown, format!("disk use unknown: {e}")),
    });
    findings.push(match &readings.memory {
        Ok(m) => measured("memory", *m, "%", limits.memory, format!("memory: {:.1}% used", tenths(*m))),
        Err(e) => Finding::bad(State::Unknown, format!("memory use unknown: {e}")),
    });

    let state = findings.iter().map(|f| f.state).max_by_key(|s| s.rank()).unwrap_or(State::Ok);
    let mut problems: Vec<&Finding> = findings.iter().filter(|f| f.state != State::Ok).collect();
    problems.sort_by_key(|f| std::cmp::Reverse(f.state.rank()));
    let summary = if problems.is_empty() {
        "all checks passed".to_string()
    } else {
        problems.iter().map(|f| f.problem.as_str()).collect::<Vec<_>>().join("; ")
    };
    let temp = readings.temperature.as_ref().ok().and_then(Option::as_ref).map(|s| tenths(s.celsius));
    let disk = readings.disk.as_ref().ok().map(|d| tenths(d.used_percent));
    let memory = readings.memory.as_ref().ok().map(|m| tenths(*m));
    let shown = |v: Option<f64>, unit: &str| v.map_or("unknown".to_string(), |v| format!("{v:.1}{unit}"));
    let mut values = format!("temp {}, disk {}, memory {}", shown(temp, "°C"), shown(disk, "%"), shown(memory, "%"));
    if let Some(note) = note {
        values.push_str("; ");
        values.push_str(note);
    }
    let perf = [
        perfdata("temp", temp, "", limits.temperature, None),
        perfdata("disk", disk, "%", limits.disk, Some((0.0, 100.0))),
        perfdata("memory", memory, "%", limits.memory, Some((0.0, 100.0))),
    ]
    .join(" ");
    let line = format!("MCP-RASPI {} - {} ({values}) | {perf}", state.label(), plain(&summary));
    let details = findings
        .into_iter()
        .map(|f| match f.state {
            State::Ok => plain(&f.detail),
            state => format!("{}: {}", state.label(), plain(&f.detail)),
        })
        .collect();
    Report { state, line, details }
}

/// One performance value as the guidelines write it: `label=value[UOM];warn;crit[;min;max]`,
/// with `U` for a value that could not be determined.
fn perfdata(label: &str, value: Option<f64>, uom: &str, t: Thresholds, range: Option<(f64, f64)>) -> String {
    let value = value.map_or("U".to_string(), |v| format!("{v:.1}{uom}"));
    let range = range.map(|(min, max)| format!(";{min};{max}")).unwrap_or_default();
    format!("{label}={value};{};{}{range}", t.warning, t.critical)
}

/// Text safe in plugin output: `|` starts performance data, and a newline ends the line.
pub fn plain(text: &str) -> String {
    text.replace('|', "/").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn address() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8000))
    }

    /// A healthy machine: what each test then spoils.
    fn healthy() -> Readings {
        Readings {
            config: ConfigSource::File("/etc/mcp-raspi/config.yml".into()),
            units: None,
            server: ServerProbe::Answered { address: address(), status: 200, version: Some("0.1.0".into()) },
            agent: AgentProbe::Listening("/run/mcp-raspi/ops-agent.sock".into()),
            temperature: Ok(Some(Sensor { celsius: 48.3, name: "cpu-thermal, thermal_zone0".into() })),
            disk: Ok(DiskUse {
                mount_point: "/".into(),
                used_percent: 41.0,
                used_bytes: 41 << 20,
                total_bytes: 100 << 20,
            }),
            memory: Ok(32.04),
        }
    }

    fn judged(readings: &Readings) -> Report {
        evaluate(readings, &Limits::DEFAULT)
    }

    #[test]
    fn a_healthy_machine_gives_one_ok_line_with_performance_data() {
        let report = judged(&healthy());
        assert_eq!(report.state, State::Ok);
        assert_eq!(
            report.line,
            "MCP-RASPI OK - all checks passed (temp 48.3°C, disk 41.0%, memory 32.0%) | \
             temp=48.3;75;85 disk=41.0%;85;95;0;100 memory=32.0%;85;95;0;100"
        );
        assert!(report.details.contains(&"server: /healthz on 127.0.0.1:8000 answered 200 (version 0.1.0)".into()));
        assert!(report.details.contains(&"disk: / 41.0% used (41.0 MiB of 100.0 MiB)".into()), "{:?}", report.details);
        assert!(report.details.iter().all(|d| !d.contains('|') && !d.contains('\n')));
    }

    #[test]
    fn the_worst_state_wins_and_the_line_names_every_problem_worst_first() {
        let readings = Readings {
            memory: Err("cannot read /proc/meminfo: permission denied".into()),
            temperature: Ok(Some(Sensor { celsius: 80.0, name: "cpu-thermal".into() })),
            server: ServerProbe::Unreachable { address: address(), error: "connection refused".into() },
            ..healthy()
        };
        let report = judged(&readings);
        assert_eq!(report.state, State::Critical);
        assert_eq!(report.state as u8, 2);
        let summary = report.line.split(" (temp").next().unwrap();
        assert_eq!(
            summary,
            "MCP-RASPI CRITICAL - server not answering on 127.0.0.1:8000: connection refused; \
             temperature 80.0°C > 75°C; memory use unknown: cannot read /proc/meminfo: permission denied"
        );
        assert!(report.line.ends_with("memory=U;85;95;0;100"), "{}", report.line);
        assert!(report.details.contains(&"WARNING: temperature: 80.0°C (cpu-thermal)".into()), "{:?}", report.details);
    }

    #[test]
    fn a_value_past_a_threshold_raises_its_state_and_one_equal_to_it_does_not() {
        let at = |celsius: f64, percent: f64| {
            let readings = Readings {
                temperature: Ok(Some(Sensor { celsius, name: "cpu-thermal".into() })),
                memory: Ok(percent),
                ..healthy()
            };
            judged(&readings).state
        };
        assert_eq!(at(75.0, 85.0), State::Ok);
        // Judged as shown, to one decimal: 75.04 shows as 75.0.
        assert_eq!(at(75.04, 10.0), State::Ok);
        assert_eq!(at(75.06, 10.0), State::Warning);
        assert_eq!(at(85.1, 10.0), State::Critical);
        assert_eq!(at(40.0, 85.1), State::Warning);
        assert_eq!(at(40.0, 95.1), State::Critical);
        let disk = Readings {
            disk: Ok(DiskUse { mount_point: "/srv".into(), used_percent: 96.0, used_bytes: 96, total_bytes: 100 }),
            ..healthy()
        };
        let report = judged(&disk);
        assert_eq!(report.state, State::Critical);
        assert!(report.line.starts_with("MCP-RASPI CRITICAL - disk /srv 96.0% > 95% (temp"), "{}", report.line);
    }

    #[test]
    fn thresholds_given_on_the_command_line_are_used_and_shown_in_the_performance_data() {
        let limits = Limits { temperature: Thresholds { warning: 40.0, critical: 60.5 }, ..Limits::DEFAULT };
        let report = evaluate(&healthy(), &limits);
        assert_eq!(report.state, State::Warning);
        assert!(report.line.starts_with("MCP-RASPI WARNING - temperature 48.3°C > 40°C ("), "{}", report.line);
        assert!(report.line.contains("| temp=48.3;40;60.5 disk="), "{}", report.line);
    }

    #[test]
    fn a_machine_without_a_temperature_sensor_reports_the_temperature_unknown_not_as_a_failure() {
        let report = judged(&Readings { temperature: Ok(None), ..healthy() });
        assert_eq!(report.state, State::Ok);
        assert!(report.line.contains("(temp unknown, disk 41.0%"), "{}", report.line);
        assert!(report.line.contains("| temp=U;75;85 "), "{}", report.line);
        // A sensor that exists but cannot be read is another matter.
        let unreadable = judged(&Readings { temperature: Err("cannot read temp".into()), ..healthy() });
        assert_eq!(unreadable.state, State::Unknown);
    }

    #[test]
    fn an_unreadable_configuration_means_defaults_said_in_the_line_and_an_invalid_one_is_unknown() {
        let defaults = ConfigSource::Defaults("cannot read configuration /etc/mcp-raspi/config.yml: denied".into());
        let report = judged(&Readings { config: defaults, ..healthy() });
        assert_eq!(report.state, State::Ok);
        assert!(report.line.contains("memory 32.0%; defaults used, configuration not readable) |"), "{}", report.line);
        assert!(report.details[0].starts_with("configuration: defaults used (cannot read"), "{:?}", report.details);
        let invalid = ConfigSource::Invalid("invalid configuration: server.page_size: 0 is outside 1 to 500".into());
        let report = judged(&Readings { config: invalid, ..healthy() });
        assert_eq!(report.state, State::Unknown);
        assert!(report.line.starts_with("MCP-RASPI UNKNOWN - configuration invalid, defaults used: invalid"));
    }

    #[test]
    fn units_that_are_not_active_are_critical_and_starting_ones_a_warning() {
        let units = |states: [&str; 2]| {
            let units = ["mcp-raspi-server.service", "raspi-ops-agent.service"]
                .iter()
                .zip(states)
                .map(|(u, s)| (u.to_string(), s.to_string()))
                .collect();
            judged(&Readings { units: Some(Ok(units)), ..healthy() })
        };
        assert_eq!(units(["active", "active"]).state, State::Ok);
        let report = units(["failed", "activating"]);
        assert_eq!(report.state, State::Critical);
        assert!(report.line.contains(" - mcp-raspi-server.service failed; raspi-ops-agent.service activating ("));
        assert_eq!(units(["active", "deactivating"]).state, State::Warning);
        let broken = judged(&Readings { units: Some(Err("cannot run systemctl".into())), ..healthy() });
        assert_eq!(broken.state, State::Unknown);
    }

    #[test]
    fn the_agent_and_server_probes_map_to_states() {
        let sock = PathBuf::from("/run/mcp-raspi/ops-agent.sock");
        let agent = |probe| judged(&Readings { agent: probe, ..healthy() });
        assert_eq!(agent(AgentProbe::Present(sock.clone(), "uid 1 is not allowed".into())).state, State::Ok);
        let stale = agent(AgentProbe::NotListening(sock.clone()));
        assert_eq!(stale.state, State::Critical);
        assert!(stale.line.contains(" - ops agent not listening on /run/mcp-raspi/ops-agent.sock ("));
        assert_eq!(agent(AgentProbe::Missing(sock.clone())).state, State::Critical);
        assert_eq!(agent(AgentProbe::NotASocket(sock.clone())).state, State::Critical);
        assert_eq!(agent(AgentProbe::Unreadable(sock, "permission denied".into())).state, State::Unknown);
        let server = |probe| judged(&Readings { server: probe, ..healthy() });
        let unhealthy = server(ServerProbe::Answered { address: address(), status: 503, version: None });
        assert_eq!(unhealthy.state, State::Critical);
        assert!(unhealthy.line.contains("server unhealthy: /healthz on 127.0.0.1:8000 answered 503"));
        assert_eq!(server(ServerProbe::NotChecked("port 0".into())).state, State::Unknown);
    }

    #[test]
    fn a_problem_outranks_not_knowing_and_not_knowing_outranks_ok() {
        let unknown = Readings { memory: Err("x".into()), ..healthy() };
        assert_eq!(judged(&unknown).state, State::Unknown);
        let warning = Readings { memory: Ok(90.0), temperature: Err("y".into()), ..unknown };
        assert_eq!(judged(&warning).state, State::Warning);
    }

    #[test]
    fn text_that_would_break_the_plugin_output_is_made_plain() {
        let readings =
            Readings { server: ServerProbe::NotChecked("a | b\nc".into()), memory: Err("x|y".into()), ..healthy() };
        let report = judged(&readings);
        assert_eq!(report.line.matches('|').count(), 1, "{}", report.line);
        assert!(!report.line.contains('\n'));
        assert!(report.line.contains("server not checked: a / b c"), "{}", report.line);
    }
}
