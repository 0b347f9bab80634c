//! What every networked command shares (the fleet, its targets and the HTTP client), and
//! `exec`: one tool call on each chosen device.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::device::{Caller, Target};
use super::fanout;
use super::file::{Device, Fleet, Selection};
use super::render::{render, Rendered};
use super::{print, ExecArgs, FleetFailure, EXIT_DEVICES};

/// A command's view of the fleet.
pub struct Context<'a> {
    pub fleet: &'a Fleet,
    pub caller: Caller,
    pub json: bool,
    targets: Vec<Target>,
    /// Each device's configuration as the fleet file renders it, or why it cannot be.
    /// Rendered when a command first asks: listing or calling devices needs none of it.
    renders: OnceLock<Vec<Result<Rendered, String>>>,
}

impl<'a> Context<'a> {
    pub fn new(
        fleet: &'a Fleet,
        env: &dyn Fn(&str) -> Option<String>,
        json: bool,
    ) -> Result<Context<'a>, FleetFailure> {
        let caller = Caller::new(Duration::from_secs(fleet.connection.timeout_seconds))?;
        let targets = fleet.devices.iter().map(|d| Target::of(fleet, d, env)).collect();
        Ok(Context { fleet, caller, json, targets, renders: OnceLock::new() })
    }

    /// The configuration the fleet file renders for `device`.
    pub fn rendered(&self, device: &Device) -> &Result<Rendered, String> {
        let renders = self.renders.get_or_init(|| self.fleet.devices.iter().map(|d| render(self.fleet, d)).collect());
        &renders[self.index_of(device)]
    }

    fn index_of(&self, device: &Device) -> usize {
        self.fleet.devices.iter().position(|x| std::ptr::eq(x, device)).unwrap_or(0)
    }

    /// The chosen devices with their targets, in the fleet file's order.
    pub fn chosen(&self, selection: &Selection) -> Result<Vec<(&'a Device, &Target)>, FleetFailure> {
        let devices = self.fleet.select(selection)?;
        Ok(devices.into_iter().map(|d| (d, &self.targets[self.index_of(d)])).collect())
    }

    /// The target of the device `id`.
    pub fn target(&self, id: &str) -> Result<&Target, FleetFailure> {
        let device = self.fleet.device(id)?;
        Ok(&self.targets[self.index_of(device)])
    }

    /// The deadline of one device's work of `calls` calls made one after the other.
    pub fn deadline(&self, calls: u32) -> Duration {
        self.caller.timeout() * calls + Duration::from_secs(1)
    }

    pub fn concurrency(&self) -> usize {
        self.fleet.connection.concurrency
    }
}

/// The tool a runbook command string calls: `mcp-raspi-cli system get-health`,
/// `mcp-raspi system get-health` and `system get-health` all call
/// `system.get_health_snapshot`.
pub fn tool_of_command(command: &str) -> Result<&'static str, String> {
    let mut words: Vec<&str> = command.split_whitespace().collect();
    if words.first().is_some_and(|w| matches!(*w, "mcp-raspi-cli" | "mcp-raspi" | "sudo")) {
        words.remove(0);
    }
    if words.first().is_some_and(|w| matches!(*w, "mcp-raspi-cli" | "mcp-raspi")) {
        words.remove(0);
    }
    crate::cli::runbook_tool(&words.join(" ")).ok_or_else(|| {
        let known: Vec<String> =
            crate::cli::RUNBOOK_TOOLS.iter().map(|(c, _)| format!("\"mcp-raspi-cli {c}\"")).collect();
        format!(
            "{command:?} is not a command mcp-fleet can run: it runs tools, never a shell. The commands are {}; \
             any other tool with --tool NAME --args JSON",
            known.join(", ")
        )
    })
}

/// One device's answer to `exec`.
#[derive(Debug, Serialize)]
struct ExecResult<'a> {
    device: &'a str,
    ok: bool,
    milliseconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `mcp-fleet exec`.
pub async fn exec(cx: &Context<'_>, args: &ExecArgs, out: &mut dyn Write) -> Result<u8, FleetFailure> {
    let tool = match (&args.tool, &args.command) {
        (Some(tool), _) => tool.clone(),
        (None, Some(command)) => tool_of_command(command)?.to_string(),
        (None, None) => return Err(FleetFailure::from("give a command or --tool NAME".to_string())),
    };
    let arguments = match &args.args {
        None => Value::Object(Default::default()),
        Some(text) => crate::cli::tool_arguments(text)?,
    };
    let chosen = cx.chosen(&args.select.selection())?;
    let bar = fanout::bar(&tool, cx.json);
    let outcomes = fanout::each(chosen.len(), cx.concurrency(), cx.deadline(1), bar.as_ref(), |i| {
        let (target, tool, arguments) = (chosen[i].1, &tool, arguments.clone());
        async move { cx.caller.call(target, tool, arguments).await.map_err(|e| e.to_string()) }
    })
    .await;
    let results: Vec<ExecResult> = outcomes
        .into_iter()
        .map(|o| {
            let (result, error) = match o.result {
                Ok(value) => (Some(value), None),
                Err(e) => (None, Some(e)),
            };
            ExecResult {
                device: &chosen[o.index].0.id,
                ok: error.is_none(),
                milliseconds: o.elapsed.as_millis() as u64,
                result,
                error,
            }
        })
        .collect();
    let failed = results.iter().filter(|r| !r.ok).count();
    if cx.json {
        let report = serde_json::json!({"tool": tool, "devices": results.len(), "failed": failed, "results": results});
        print(out, &format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default()))?;
    } else {
        let mut text = String::new();
        for r in &results {
            match (&r.result, &r.error) {
                (Some(value), _) => {
                    text.push_str(&format!("== {}: ok ({} ms)\n", r.device, r.milliseconds));
                    let shown = crate::cli::render(value);
                    text.push_str(&shown);
                    if !shown.ends_with('\n') {
                        text.push('\n');
                    }
                }
                (None, Some(error)) => {
                    text.push_str(&format!("== {}: FAILED ({} ms): {error}\n", r.device, r.milliseconds))
                }
                (None, None) => {}
            }
        }
        text.push_str(&format!("{tool}: {} of {} devices ok\n", results.len() - failed, results.len()));
        print(out, &text)?;
    }
    Ok(if failed > 0 { EXIT_DEVICES } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runbooks_command_strings_map_to_tools_and_nothing_else_runs() {
        assert_eq!(tool_of_command("mcp-raspi-cli system get-health"), Ok("system.get_health_snapshot"));
        assert_eq!(tool_of_command("mcp-raspi-cli metrics get-snapshot"), Ok("metrics.get_snapshot"));
        assert_eq!(tool_of_command("sudo mcp-raspi system get-info"), Ok("system.get_info"));
        assert_eq!(tool_of_command("metrics  get-status"), Ok("metrics.get_status"));
        for shell in ["rm -rf /", "mcp-raspi-cli system get-health; reboot", "bash -c id", ""] {
            let e = tool_of_command(shell).unwrap_err();
            assert!(e.contains("never a shell") && e.contains("--tool NAME"), "{e}");
        }
    }
}
