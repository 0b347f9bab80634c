//! `mcp-raspi healthcheck` (installed as `mcp-raspi-healthcheck` too): a check for Nagios,
//! Icinga and NRPE, written to the Monitoring Plugins Development Guidelines.
//!
//! It prints one status line, `MCP-RASPI <STATE> - <problems> (<values>) | <performance
//! data>`, then lines of detail, and exits with the status monitoring systems read: 0 OK,
//! 1 WARNING, 2 CRITICAL, 3 UNKNOWN. It reads the machine itself (units, the server's
//! `/healthz`, the agent's socket, /proc and /sys) instead of asking the server, because
//! the server being down is the case it exists for.
//!
//! Reading ([`gather`], here) and judging ([`evaluate`], in `verdict`) are apart, so that
//! the judgement is tested on readings made up for it.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Args as ClapArgs;

use super::client::io_message;
use super::{CliError, DEFAULT_CONFIG};
use crate::config::{Config, ConfigError};
use crate::host::{disk, memory, thermal, Roots};

mod verdict;

pub use verdict::{
    evaluate, plain, AgentProbe, ConfigSource, DiskUse, Limits, Readings, Report, Sensor, ServerProbe, State,
    Thresholds,
};

/// Exit status of a usage error: UNKNOWN, because clap's usual 2 would read as CRITICAL.
pub const USAGE_STATUS: u8 = 3;

/// Check the mcp-raspi services and the machine as a Nagios/Icinga plugin.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for a usage error). \
    A value above a WARNING or CRITICAL threshold raises that state; the worst state wins and the \
    status line names every problem. NRPE example: /usr/share/doc/mcp-raspi/examples/nrpe-mcp-raspi.cfg")]
pub struct HealthcheckArgs {
    /// Configuration file, for server.listen, ops_agent.socket_path and the /proc and /sys
    /// roots. When it cannot be read (NRPE's user may not read the packaged file, mode
    /// 0640), the defaults are used and the status line says so.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The server's HTTP address, instead of server.listen (a wildcard address is reached
    /// on loopback).
    #[arg(long, value_name = "IP:PORT")]
    pub address: Option<SocketAddr>,
    /// The ops agent's socket, instead of ops_agent.socket_path.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Check the use of the file system holding PATH instead of the root file system.
    #[arg(long, value_name = "PATH", default_value = "/")]
    pub mount: PathBuf,
    /// WARNING above this SoC temperature.
    #[arg(long, value_name = "CELSIUS", default_value_t = 75.0)]
    pub temp_warning: f64,
    /// CRITICAL above this SoC temperature.
    #[arg(long, value_name = "CELSIUS", default_value_t = 85.0)]
    pub temp_critical: f64,
    /// WARNING above this use of the file system, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 85.0)]
    pub disk_warning: f64,
    /// CRITICAL above this use of the file system, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 95.0)]
    pub disk_critical: f64,
    /// WARNING above this memory use (what is not available to new programs), in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 85.0)]
    pub memory_warning: f64,
    /// CRITICAL above this memory use, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 95.0)]
    pub memory_critical: f64,
    /// Seconds to wait for the server's /healthz answer.
    #[arg(short = 't', long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout: u64,
    /// Do not ask systemd whether mcp-raspi-server and raspi-ops-agent are active (for
    /// services run outside systemd). Without systemd running the machine they are not asked
    /// anyway.
    #[arg(long)]
    pub no_units: bool,
}

impl HealthcheckArgs {
    /// The thresholds, or the usage error that makes them unusable.
    pub fn limits(&self) -> Result<Limits, String> {
        let pair = |name: &str, warning: f64, critical: f64, max: f64| {
            for (which, value) in [("warning", warning), ("critical", critical)] {
                if !value.is_finite() || !(0.0..=max).contains(&value) {
                    return Err(format!("--{name}-{which} {value} is outside 0 to {max}"));
                }
            }
            if warning > critical {
                return Err(format!("--{name}-warning ({warning}) must not be above --{name}-critical ({critical})"));
            }
            Ok(Thresholds { warning, critical })
        };
        if !self.mount.is_absolute() {
            return Err(format!("--mount {} is not an absolute path", self.mount.display()));
        }
        Ok(Limits {
            temperature: pair("temp", self.temp_warning, self.temp_critical, 200.0)?,
            disk: pair("disk", self.disk_warning, self.disk_critical, 100.0)?,
            memory: pair("memory", self.memory_warning, self.memory_critical, 100.0)?,
        })
    }
}

/// The configuration, or the defaults and why; `Err` only if the defaults themselves do
/// not load, which would be a bug.
fn settings(path: &Path) -> Result<(Config, ConfigSource), String> {
    let env = std::env::vars().collect();
    match Config::load(path, &env) {
        Ok(loaded) => Ok((loaded.config, ConfigSource::File(loaded.origin))),
        Err(e) => {
            let source = match e {
                ConfigError::Read { .. } => ConfigSource::Defaults(e.to_string()),
                _ => ConfigSource::Invalid(e.to_string()),
            };
            let defaults = format!("config_version: \"{}\"\n", crate::config::CONFIG_VERSION);
            let config = Config::from_yaml(&defaults, "defaults").map_err(|e| format!("the defaults: {e}"))?;
            Ok((config, source))
        }
    }
}

/// Reads everything [`evaluate`] judges.
pub fn gather(args: &HealthcheckArgs) -> Result<Readings, String> {
    let (config, source) = settings(&args.config)?;
    let roots = super::storage::roots_of(&config);
    // systemd creates this directory early at boot, and nothing else does.
    let units = (!args.no_units && super::update::under_systemd()).then(unit_states);
    let address = crate::selfcheck::loopback_for(args.address.unwrap_or(config.listen_addr()));
    let socket = args.socket.clone().unwrap_or_else(|| config.ops_agent.socket_path.clone());
    Ok(Readings {
        config: source,
        units,
        server: probe_server(address, Duration::from_secs(args.timeout)),
        agent: probe_agent(&socket, &config.ops_agent.allowed_users),
        temperature: soc_temperature(&roots),
        disk: disk_use(&roots, &args.mount),
        memory: memory::read_memory(&roots).map(|m| m.used_percent).map_err(|e| e.to_string()),
    })
}

/// `systemctl is-active` of the product's units, one state each.
fn unit_states() -> Result<Vec<(String, String)>, String> {
    let units = crate::platform::PRODUCT_UNITS;
    let output = Command::new("systemctl")
        .args(["is-active", "--"])
        .args(units)
        .env("LANG", "C")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    // It exits non-zero when a unit is not active, and prints one state per unit either way.
    let text = String::from_utf8_lossy(&output.stdout);
    let states: Vec<&str> = text.lines().map(str::trim).collect();
    if states.len() != units.len() {
        return Err(format!("systemctl is-active printed {:?} ({})", text.trim(), output.status));
    }
    Ok(units.iter().zip(states).map(|(u, s)| (u.to_string(), s.to_string())).collect())
}

/// `GET /healthz` on `address`, within `timeout` in all.
fn probe_server(address: SocketAddr, timeout: Duration) -> ServerProbe {
    if address.port() == 0 {
        return ServerProbe::NotChecked(format!(
            "the listen address {address} has port 0 (chosen when the server starts): name it with --address"
        ));
    }
    match super::client::get_healthz(address, timeout) {
        Ok((status, body)) => {
            let version = body.get("version").and_then(|v| v.as_str()).map(str::to_string);
            ServerProbe::Answered { address, status, version }
        }
        Err(error) => ServerProbe::Unreachable { address, error },
    }
}

/// Whether the agent would take a connection from this process: otherwise connecting
/// would only make it log a refusal, every time the check runs.
fn may_connect(allowed_users: &[String]) -> bool {
    let uid = nix::unistd::geteuid();
    allowed_users.iter().any(|name| match name.parse::<u32>() {
        Ok(n) => n == uid.as_raw(),
        Err(_) => nix::unistd::User::from_name(name).ok().flatten().is_some_and(|u| u.uid == uid),
    })
}

/// What is at the agent's socket. A connection is opened and closed at once when the agent
/// would accept this user, which tells a listening agent from the socket a killed one left.
fn probe_agent(path: &Path, allowed_users: &[String]) -> AgentProbe {
    let owned = path.to_path_buf();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return AgentProbe::Missing(owned),
        Err(e) => return AgentProbe::Unreadable(owned, io_message(&e)),
        Ok(meta) if !meta.file_type().is_socket() => return AgentProbe::NotASocket(owned),
        Ok(_) => {}
    }
    if !may_connect(allowed_users) {
        let why = format!("uid {} is not on ops_agent.allowed_users", nix::unistd::geteuid());
        return AgentProbe::Present(owned, why);
    }
    match UnixStream::connect(path) {
        Ok(_) => AgentProbe::Listening(owned),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => AgentProbe::NotListening(owned),
        Err(e) => AgentProbe::Present(owned, io_message(&e)),
    }
}

/// The SoC's sensor (`cpu-thermal` on a Raspberry Pi), else the hottest; none without sensors.
fn soc_temperature(roots: &Roots) -> Result<Option<Sensor>, String> {
    let zones = thermal::read_temperatures(roots).map_err(|e| e.to_string())?;
    let soc = zones
        .iter()
        .find(|t| t.kind == "cpu-thermal")
        .or_else(|| zones.iter().max_by(|a, b| a.celsius.total_cmp(&b.celsius)));
    Ok(soc.map(|t| {
        let name = if t.kind.is_empty() { t.zone.clone() } else { format!("{}, {}", t.kind, t.zone) };
        Sensor { celsius: t.celsius, name }
    }))
}

/// Use of the storage file system holding `path`: the mount with the longest mount point
/// that contains it.
fn disk_use(roots: &Roots, path: &Path) -> Result<DiskUse, String> {
    let mounts = disk::read_mounts(roots).map_err(|e| e.to_string())?;
    let holding = mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| Path::new(&m.mount_point).components().count())
        .ok_or_else(|| format!("no storage file system is mounted at or above {}", path.display()))?;
    Ok(DiskUse {
        mount_point: holding.mount_point.clone(),
        used_percent: holding.used_percent,
        used_bytes: holding.used_bytes,
        total_bytes: holding.total_bytes,
    })
}

/// Runs the check, printing the status line and details; returns the plugin's status.
pub fn run(args: HealthcheckArgs, out: &mut dyn Write) -> Result<u8, CliError> {
    let written = |e: std::io::Error| CliError::new(State::Unknown as u8, format!("cannot write the report: {e}"));
    let limits = match args.limits() {
        Ok(limits) => limits,
        Err(message) => {
            writeln!(out, "MCP-RASPI UNKNOWN - usage: {}", plain(&message)).map_err(written)?;
            return Ok(USAGE_STATUS);
        }
    };
    let report = match gather(&args) {
        Ok(readings) => evaluate(&readings, &limits),
        Err(e) => Report { state: State::Unknown, line: format!("MCP-RASPI UNKNOWN - {}", plain(&e)), details: vec![] },
    };
    writeln!(out, "{}", report.line).map_err(written)?;
    for detail in &report.details {
        writeln!(out, "{detail}").map_err(written)?;
    }
    Ok(report.state as u8)
}

/// Reports a command line clap refused as a plugin does: one UNKNOWN line on stdout (what
/// NRPE passes on), clap's message on stderr. Returns the exit status.
pub fn usage_error(error: &clap::Error) -> u8 {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or("").trim_start_matches("error: ");
    println!("MCP-RASPI UNKNOWN - usage: {}", plain(first));
    let _ = error.print();
    USAGE_STATUS
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Read;
    use std::net::TcpListener;
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    use clap::Parser;

    use super::*;
    use crate::cli::{Args, Command};

    fn parse(args: &[&str]) -> HealthcheckArgs {
        let argv = std::iter::once("mcp-raspi-healthcheck").chain(args.iter().copied()).map(Into::into).collect();
        match Args::try_parse_from(crate::cli::with_alias(argv)).unwrap().command {
            Command::Healthcheck(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_healthcheck_name_of_the_program_runs_the_check_with_the_runbooks_thresholds() {
        assert_eq!(parse(&[]).limits().unwrap(), Limits::DEFAULT);
        let args = parse(&["--temp-warning", "60", "--disk-critical", "99", "-t", "2", "--mount", "/srv"]);
        let limits = args.limits().unwrap();
        assert_eq!(limits.temperature, Thresholds { warning: 60.0, critical: 85.0 });
        assert_eq!(limits.disk, Thresholds { warning: 85.0, critical: 99.0 });
        assert_eq!((args.timeout, args.mount), (2, PathBuf::from("/srv")));
    }

    #[test]
    fn thresholds_that_cannot_work_are_usage_errors() {
        let err = parse(&["--memory-warning", "96"]).limits().unwrap_err();
        assert_eq!(err, "--memory-warning (96) must not be above --memory-critical (95)");
        assert!(parse(&["--disk-critical", "101"]).limits().unwrap_err().contains("outside 0 to 100"));
        assert!(parse(&["--temp-warning=-1"]).limits().unwrap_err().contains("outside"));
        assert!(parse(&["--temp-warning", "NaN"]).limits().is_err());
        assert!(parse(&["--mount", "srv"]).limits().unwrap_err().contains("absolute"));
        let mut out = Vec::new();
        assert_eq!(run(parse(&["--memory-warning", "96"]), &mut out).unwrap(), USAGE_STATUS);
        assert!(String::from_utf8(out).unwrap().starts_with("MCP-RASPI UNKNOWN - usage: --memory-warning (96)"));
    }

    #[test]
    fn the_server_probe_reads_the_status_and_version_of_healthz() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).unwrap();
            let body = r#"{"status":"ok","version":"9.8.7"}"#;
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            stream.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&request[..n]).to_string()
        });
        let probe = probe_server(address, Duration::from_secs(5));
        assert_eq!(probe, ServerProbe::Answered { address, status: 200, version: Some("9.8.7".into()) });
        assert!(server.join().unwrap().starts_with("GET /healthz HTTP/1.1\r\n"));
    }

    #[test]
    fn a_server_that_is_down_or_silent_is_unreachable_and_port_zero_is_not_checked() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let ServerProbe::Unreachable { error, .. } = probe_server(closed, Duration::from_secs(2)) else { panic!() };
        assert_eq!(error, "connection refused");
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        let probe = probe_server(silent.local_addr().unwrap(), Duration::from_secs(1));
        assert!(matches!(probe, ServerProbe::Unreachable { ref error, .. } if error == "no answer within 1 s"));
        assert!(started.elapsed() < Duration::from_secs(3));
        let zero = SocketAddr::from(([127, 0, 0, 1], 0));
        assert!(
            matches!(probe_server(zero, Duration::from_secs(1)), ServerProbe::NotChecked(ref m) if m.contains("--address"))
        );
    }

    #[test]
    fn the_agent_probe_tells_a_listening_agent_from_a_stale_or_missing_socket() {
        let dir = tempfile::tempdir().unwrap();
        let me = vec![nix::unistd::geteuid().to_string()];
        let path = dir.path().join("ops-agent.sock");
        assert_eq!(probe_agent(&path, &me), AgentProbe::Missing(path.clone()));
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(probe_agent(&path, &me), AgentProbe::Listening(path.clone()));
        // A user the agent would refuse does not connect: only the socket's presence is known.
        let other = vec!["no-such-user-mcp-raspi-test".to_string()];
        assert!(matches!(probe_agent(&path, &other), AgentProbe::Present(_, ref why) if why.contains("allowed_users")));
        // The socket a killed agent leaves behind.
        drop(listener);
        assert_eq!(probe_agent(&path, &me), AgentProbe::NotListening(path.clone()));
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert_eq!(probe_agent(&file, &me), AgentProbe::NotASocket(file));
    }

    #[test]
    fn the_soc_sensor_and_the_file_system_holding_a_path_are_found() {
        let pi4 = crate::host::fixture("pi4");
        let sensor = soc_temperature(&pi4).unwrap().unwrap();
        assert_eq!((sensor.celsius, sensor.name.as_str()), (48.686, "cpu-thermal, thermal_zone0"));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(soc_temperature(&Roots::under(empty.path())).unwrap(), None);
        assert_eq!(disk_use(&pi4, Path::new("/")).unwrap().mount_point, "/");
        assert_eq!(disk_use(&pi4, Path::new("/var/log")).unwrap().mount_point, "/");
        let stick = disk_use(&pi4, Path::new("/media/pi/USB STICK/photos")).unwrap();
        assert_eq!(stick.mount_point, "/media/pi/USB STICK");
        assert!(disk_use(&Roots::under(empty.path()), Path::new("/")).is_err());
    }

    #[test]
    fn a_missing_configuration_means_defaults_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (config, source) = settings(&dir.path().join("missing.yml")).unwrap();
        assert!(matches!(source, ConfigSource::Defaults(ref why) if why.contains("missing.yml")));
        assert_eq!(config.listen_addr(), SocketAddr::from(([127, 0, 0, 1], 8000)));
        let broken = dir.path().join("broken.yml");
        std::fs::write(&broken, "config_version: \"1.2\"\nserver: [\n").unwrap();
        assert!(matches!(settings(&broken).unwrap().1, ConfigSource::Invalid(ref why) if why.contains("broken.yml")));
    }

    #[test]
    fn a_check_of_a_fixture_machine_with_everything_down_is_critical_and_names_both_services() {
        let dir = tempfile::tempdir().unwrap();
        let pi4 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pi4");
        let config = dir.path().join("config.yml");
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (fixture, socket) = (pi4.display(), dir.path().join("none.sock"));
        let yaml = format!(
            "config_version: \"1.2\"\nserver:\n  listen: \"{closed}\"\nops_agent:\n  socket_path: {}\n\
             platform:\n  proc_root: {fixture}/proc\n  sys_root: {fixture}/sys\n  etc_root: {fixture}/etc\n  \
             fs_root: {fixture}/fs\n",
            socket.display()
        );
        std::fs::write(&config, yaml).unwrap();
        let args = parse(&[
            "--config",
            config.to_str().unwrap(),
            "--no-units",
            "--disk-warning",
            "100",
            "--disk-critical",
            "100",
        ]);
        let mut out = Vec::new();
        assert_eq!(run(args, &mut out).unwrap(), State::Critical as u8);
        let text = String::from_utf8(out).unwrap();
        let line = text.lines().next().unwrap();
        assert!(line.starts_with(&format!("MCP-RASPI CRITICAL - server not answering on {closed}")), "{text}");
        assert!(line.contains("ops agent socket") && line.contains("temp 48.7°C") && line.contains("memory 15.6%"));
        assert!(text.lines().any(|l| l == "units: not asked (systemd does not run this machine)"), "{text}");
    }

    #[test]
    fn the_installed_name_has_the_man_page_of_the_check_with_its_options() {
        let dir = tempfile::tempdir().unwrap();
        crate::cli::write_man_pages(dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("mcp-raspi-healthcheck.1")).unwrap();
        assert!(page.contains("\\-\\-temp\\-warning") && page.contains("UNKNOWN"), "{page}");
        let cli = std::fs::read_to_string(dir.path().join("mcp-raspi-cli.1")).unwrap();
        assert_eq!(cli, ".so man1/mcp-raspi.1\n");
    }
}
