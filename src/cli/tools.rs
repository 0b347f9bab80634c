//! The runbook's tool-backed commands (`mcp-raspi-cli system get-info`, `system get-health`,
//! `metrics get-snapshot`) and `mcp-raspi call TOOL --args JSON` for any tool: each is one
//! call of the local server's tool, printed as text (or JSON with `--json`).

use std::io::{IsTerminal, Write};

use clap::{Args as ClapArgs, Subcommand};
use serde_json::Value;

use super::client::{progress_bar, Connection};
use super::render::render;
use super::CliError;

/// The runbook's command words and the tools they call. Fleet tooling maps the same strings.
pub const RUNBOOK_TOOLS: &[(&str, &str)] = &[
    ("system get-info", "system.get_info"),
    ("system get-health", "system.get_health_snapshot"),
    ("system get-capabilities", "system.get_capabilities"),
    ("system get-network-info", "system.get_network_info"),
    ("metrics get-snapshot", "metrics.get_snapshot"),
    ("metrics get-status", "metrics.get_status"),
    ("metrics start-sampling", "metrics.start_sampling"),
    ("metrics stop-sampling", "metrics.stop_sampling"),
];

/// The tool a runbook command (`system get-health`) calls.
pub fn runbook_tool(command: &str) -> Option<&'static str> {
    let words = command.split_whitespace().collect::<Vec<_>>().join(" ");
    RUNBOOK_TOOLS.iter().find(|(c, _)| *c == words).map(|(_, tool)| *tool)
}

/// `mcp-raspi system`: the runbook's words, hence the common prefix.
#[derive(Debug, Subcommand)]
#[allow(clippy::enum_variant_names)]
pub enum SystemCommand {
    /// Model, serial, SoC, memory, OS, kernel, uptime, hostname (system.get_info).
    GetInfo(Connection),
    /// CPU, load, memory, disks, temperature, throttling, services and a verdict
    /// (system.get_health_snapshot).
    GetHealth(Connection),
    /// Protocol, tools with their maturity, the agent's capabilities, enabled features
    /// (system.get_capabilities).
    GetCapabilities(Connection),
    /// Network interfaces, addresses, link state (system.get_network_info).
    GetNetworkInfo(Connection),
}

/// `mcp-raspi metrics`.
#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// CPU, memory, disk, network and temperature now (metrics.get_snapshot).
    GetSnapshot(Connection),
    /// Whether the sampler records, the series and samples kept, the database's size,
    /// retention, the last error (metrics.get_status).
    GetStatus(Connection),
    /// The history of some series over a range, downsampled (metrics.query).
    Query(QueryArgs),
    /// Switch the sampler on, and keep it on across restarts (metrics.start_sampling).
    StartSampling(Connection),
    /// Switch the sampler off, and keep it off across restarts (metrics.stop_sampling).
    StopSampling(Connection),
}

/// `mcp-raspi metrics query`.
#[derive(Debug, ClapArgs)]
pub struct QueryArgs {
    /// Series names or prefixes: cpu.percent, temperature, disk./boot, net.eth* (none: all).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Start: an RFC 3339 time or a duration before now (30m, 24h, 7d).
    #[arg(long, value_name = "WHEN", default_value = "1h")]
    pub since: String,
    /// End, in the same forms (default now).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Length of a step: 60, 5m, 1h (default: the range in about 300 steps).
    #[arg(long, value_name = "STEP")]
    pub step: Option<String>,
    /// avg, min, max or last.
    #[arg(long, value_name = "HOW", default_value = "avg")]
    pub aggregation: String,
    #[command(flatten)]
    pub connection: Connection,
}

/// `mcp-raspi call TOOL --args JSON`.
#[derive(Debug, ClapArgs)]
pub struct CallArgs {
    /// The tool's name, e.g. gpio.read_pin.
    #[arg(value_name = "TOOL")]
    pub tool: String,
    /// The tool's arguments as a JSON object, e.g. '{"pin": 17}'.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub args: String,
    #[command(flatten)]
    pub connection: Connection,
}

pub fn run_system(command: SystemCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let (words, connection) = match command {
        SystemCommand::GetInfo(c) => ("system get-info", c),
        SystemCommand::GetHealth(c) => ("system get-health", c),
        SystemCommand::GetCapabilities(c) => ("system get-capabilities", c),
        SystemCommand::GetNetworkInfo(c) => ("system get-network-info", c),
    };
    call_runbook(words, &connection, out)
}

pub fn run_metrics(command: MetricsCommand, out: &mut dyn Write) -> Result<(), CliError> {
    let (words, connection) = match command {
        MetricsCommand::GetSnapshot(c) => ("metrics get-snapshot", c),
        MetricsCommand::GetStatus(c) => ("metrics get-status", c),
        MetricsCommand::StartSampling(c) => ("metrics start-sampling", c),
        MetricsCommand::StopSampling(c) => ("metrics stop-sampling", c),
        MetricsCommand::Query(q) => {
            let mut arguments = serde_json::json!({"names": q.names, "since": q.since, "aggregation": q.aggregation});
            if let Some(until) = q.until {
                arguments["until"] = until.into();
            }
            if let Some(step) = q.step {
                arguments["step"] = step.into();
            }
            return call("metrics.query", arguments, &q.connection, out);
        }
    };
    call_runbook(words, &connection, out)
}

fn call_runbook(words: &str, connection: &Connection, out: &mut dyn Write) -> Result<(), CliError> {
    let tool = runbook_tool(words).ok_or_else(|| CliError::from(format!("no tool for {words:?}")))?;
    call(tool, Value::Object(Default::default()), connection, out)
}

pub fn run_call(args: CallArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let arguments = tool_arguments(&args.args).map_err(CliError::from)?;
    call(&args.tool, arguments, &args.connection, out)
}

/// A tool's arguments as `--args` gives them: a JSON object, or an error that says so.
pub fn tool_arguments(text: &str) -> Result<Value, String> {
    let arguments: Value = serde_json::from_str(text)
        .map_err(|e| format!("--args is not JSON ({e}); pass an object, e.g. --args '{{\"pin\": 17}}'"))?;
    if !arguments.is_object() {
        return Err(format!(
            "--args must be a JSON object of the tool's arguments, e.g. '{{\"pin\": 17}}', not {arguments}"
        ));
    }
    Ok(arguments)
}

/// Calls `tool` and prints its result; a tool's error is the command's error.
fn call(tool: &str, arguments: Value, connection: &Connection, out: &mut dyn Write) -> Result<(), CliError> {
    let endpoint = connection.endpoint()?;
    // Progress only where someone watches it.
    let bar = if connection.json || !std::io::stdout().is_terminal() { None } else { progress_bar() };
    let mut show = |progress: f64, total: Option<f64>, message: Option<&str>| {
        if let Some(bar) = &bar {
            bar.set_length(total.unwrap_or(0.0) as u64);
            bar.set_position(progress as u64);
            bar.set_message(message.unwrap_or("").to_string());
        }
    };
    let answer = endpoint.call_tool(tool, arguments, if bar.is_some() { Some(&mut show) } else { None });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let answer = answer?;
    if answer.is_error {
        return Err(CliError::from(format!("{tool}: {}", answer.text)));
    }
    let write = |out: &mut dyn Write, text: &str| out.write_all(text.as_bytes()).map_err(|e| e.to_string());
    match (&answer.structured, connection.json) {
        (Some(value), true) => write(out, &format!("{}\n", serde_json::to_string_pretty(value).unwrap_or_default()))?,
        (Some(value), false) => write(out, &render(value))?,
        (None, true) => write(out, &format!("{}\n", Value::String(answer.text)))?,
        (None, false) => write(out, &format!("{}\n", answer.text))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runbooks_commands_name_tools_of_the_catalogue() {
        let catalogue = crate::tools::Catalogue::new();
        for (words, tool) in RUNBOOK_TOOLS {
            assert!(catalogue.get(tool).is_some(), "{words}: {tool} is not a tool");
        }
        assert_eq!(runbook_tool("system  get-health"), Some("system.get_health_snapshot"));
        assert_eq!(runbook_tool("system reboot"), None);
    }
}
