//! `mcp-fleet config deploy [--dry-run]`: each device's configuration file, as the fleet file
//! renders it, checked by the device itself (`manage.check_config`: its own rules, and the
//! diff from the file it has), then, unless it is a dry run, signed with the fleet's
//! configuration key for exactly the file it replaces and handed to the device
//! (`manage.deploy_config`). The device's root unit installs it, restarts the services and
//! keeps it only if the new server answers; this command follows each device until it says
//! so (`manage.get_server_status`).
//!
//! A file the device refuses changes nothing there. Devices whose file is already the
//! rendered one are left alone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::device::{Caller, Target};
use super::file::Device;
use super::run::Context;
use super::{fanout, print, DeployArgs, FleetFailure, EXIT_DEVICES};
use crate::config::deploy::Deployment;
use crate::update::manifest::SecretKey;

/// How often a device is asked whether its new file is in use.
const POLL: Duration = Duration::from_secs(1);

/// What deploying came to on one device.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
enum Outcome {
    /// The device has the rendered file already.
    Unchanged,
    /// Dry run: the device accepts the file, and this is what would change.
    WouldChange { diff: String },
    /// Installed, and the restarted server runs it.
    Applied,
    /// The device did not take it: the file there is as it was.
    Refused { reason: String },
    /// Installed, but the new server did not answer: the old file is back.
    RolledBack { reason: String },
    /// It could not be asked, or stopped answering: what it runs is not known.
    Failed { reason: String },
}

impl Outcome {
    fn ok(&self) -> bool {
        matches!(self, Outcome::Unchanged | Outcome::WouldChange { .. } | Outcome::Applied)
    }

    fn label(&self) -> &'static str {
        match self {
            Outcome::Unchanged => "unchanged",
            Outcome::WouldChange { .. } => "would change",
            Outcome::Applied => "applied",
            Outcome::Refused { .. } => "REFUSED",
            Outcome::RolledBack { .. } => "ROLLED BACK",
            Outcome::Failed { .. } => "FAILED",
        }
    }
}

#[derive(Debug, Serialize)]
struct DeviceResult<'a> {
    device: &'a str,
    sha256: Option<String>,
    #[serde(flatten)]
    outcome: Outcome,
}

/// The fleet's configuration key, named by `fleet.config_key_file` (relative to the fleet
/// file), which only its owner may read.
fn signing_key(cx: &Context<'_>, fleet_file: &Path) -> Result<SecretKey, FleetFailure> {
    let Some(name) = &cx.fleet.config_key_file else {
        return Err("config deploy signs each file with the fleet's configuration key: create one with \
                    `mcp-fleet config keygen --out DIR`, put its .pub file in each device's updates.config.keys_dir, \
                    and name its .secret file as fleet.config_key_file in the fleet file"
            .to_string()
            .into());
    };
    let path: PathBuf = match fleet_file.parent() {
        Some(dir) if name.is_relative() => dir.join(name),
        _ => name.clone(),
    };
    super::device::check_private(&path, "the fleet's configuration key (fleet.config_key_file)")?;
    SecretKey::read(&path).map_err(|e| FleetFailure::from(format!("fleet.config_key_file: {e}")))
}

/// `mcp-fleet config deploy`.
pub async fn run(
    cx: &Context<'_>,
    args: &DeployArgs,
    fleet_file: &Path,
    out: &mut dyn Write,
) -> Result<u8, FleetFailure> {
    let key = if args.dry_run { None } else { Some(signing_key(cx, fleet_file)?) };
    let chosen = cx.chosen(&args.select.selection())?;
    let deadline = Duration::from_secs(args.device_timeout);
    let bar = fanout::bar(if args.dry_run { "config deploy --dry-run" } else { "config deploy" }, cx.json);
    let outcomes = fanout::each(chosen.len(), cx.concurrency(), deadline + cx.deadline(3), bar.as_ref(), |i| {
        let (device, target, key) = (chosen[i].0, chosen[i].1, key.as_ref());
        async move { Ok::<_, String>(deploy(cx, device, target, key, deadline).await) }
    })
    .await;
    let results: Vec<DeviceResult> = outcomes
        .into_iter()
        .map(|o| {
            let device = chosen[o.index].0;
            DeviceResult {
                device: &device.id,
                sha256: cx.rendered(device).as_ref().ok().map(|r| r.sha256.clone()),
                outcome: o.result.unwrap_or_else(|reason| Outcome::Failed { reason }),
            }
        })
        .collect();
    let failed = results.iter().filter(|r| !r.outcome.ok()).count();
    if cx.json {
        let report = json!({"dry_run": args.dry_run, "devices": results.len(), "failed": failed, "results": results});
        print(out, &format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default()))?;
    } else {
        print(out, &text_report(&results, args.dry_run))?;
    }
    Ok(if failed > 0 { EXIT_DEVICES } else { 0 })
}

fn text_report(results: &[DeviceResult], dry_run: bool) -> String {
    let mut text = String::new();
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for r in results {
        let label = r.outcome.label();
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => counts.push((label, 1)),
        }
        match &r.outcome {
            Outcome::Unchanged => {}
            Outcome::WouldChange { diff } => {
                text.push_str(&format!("== {}: would change\n{diff}", r.device));
                if !diff.ends_with('\n') {
                    text.push('\n');
                }
            }
            Outcome::Applied => text.push_str(&format!("== {}: applied\n", r.device)),
            Outcome::Refused { reason } | Outcome::RolledBack { reason } | Outcome::Failed { reason } => {
                text.push_str(&format!("== {}: {}: {reason}\n", r.device, r.outcome.label()))
            }
        }
    }
    let summary: Vec<String> = counts.iter().map(|(label, n)| format!("{n} {label}")).collect();
    let what = if dry_run { "config deploy --dry-run (nothing changed)" } else { "config deploy" };
    text.push_str(&format!("{what}: {} of {} devices\n", summary.join(", "), results.len()));
    text
}

/// Checks, and unless `key` is `None`, deploys `device`'s rendered file.
async fn deploy(
    cx: &Context<'_>,
    device: &Device,
    target: &Target,
    key: Option<&SecretKey>,
    deadline: Duration,
) -> Outcome {
    let started = Instant::now();
    let rendered = match cx.rendered(device) {
        Ok(r) => r,
        Err(e) => return Outcome::Refused { reason: format!("the fleet file renders no configuration: {e}") },
    };
    let check = match cx.caller.call(target, "manage.check_config", json!({"text": rendered.text})).await {
        Ok(v) => v,
        Err(e) => return Outcome::Failed { reason: e.to_string() },
    };
    if check["valid"] != true {
        let error = check["error"].as_str().unwrap_or("no reason given");
        return Outcome::Refused { reason: format!("the device's own check refuses it: {error}") };
    }
    if check["unchanged"] == true {
        return Outcome::Unchanged;
    }
    if check["deployments_enabled"] != true {
        return Outcome::Refused {
            reason: "configuration deployments are off there (updates.config.enabled: false)".into(),
        };
    }
    let Some(key) = key else {
        return Outcome::WouldChange { diff: check["diff"].as_str().unwrap_or_default().to_string() };
    };
    let Some(replaces) = check["current_sha256"].as_str() else {
        return Outcome::Failed { reason: "manage.check_config did not say which file the device has".into() };
    };
    let before = match status(&cx.caller, target).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed { reason: e },
    };
    let (bytes, signature) = Deployment::new(&rendered.text, replaces).sign(key);
    let arguments = json!({
        "deployment": String::from_utf8_lossy(&bytes),
        "signature": String::from_utf8_lossy(&signature),
        "confirm": true,
    });
    if let Err(e) = cx.caller.call(target, "manage.deploy_config", arguments).await {
        return Outcome::Refused { reason: e.to_string() };
    }
    follow(&cx.caller, target, &rendered.sha256, &before, started, deadline).await
}

async fn status(caller: &Caller, target: &Target) -> Result<Value, String> {
    caller.call(target, "manage.get_server_status", json!({})).await.map_err(|e| e.to_string())
}

/// Asks the device until its deployment of `sha256` ended and, when applied, its restarted
/// server runs the new file.
async fn follow(
    caller: &Caller,
    target: &Target,
    sha256: &str,
    before: &Value,
    started: Instant,
    deadline: Duration,
) -> Outcome {
    let earlier = before["config_deploy"]["started_at"].clone();
    let mut last_seen = String::from("no answer yet");
    while started.elapsed() < deadline {
        tokio::time::sleep(POLL).await;
        let now = match status(caller, target).await {
            Ok(now) => now,
            Err(e) => {
                last_seen = e;
                continue;
            }
        };
        let record = &now["config_deploy"];
        if record.is_null() || record["started_at"] == earlier {
            last_seen = "the deployment has not started".into();
            continue;
        }
        let reason = record["reason"].as_str().unwrap_or("no reason given").to_string();
        match record["status"].as_str() {
            Some("applied") if now["config"]["sha256"] == sha256 => return Outcome::Applied,
            Some("applied") => last_seen = "applied; the server has not restarted on it yet".into(),
            Some("refused") => return Outcome::Refused { reason },
            Some("rolled_back") => return Outcome::RolledBack { reason },
            _ => last_seen = "being applied".into(),
        }
    }
    Outcome::Failed { reason: format!("no end of the deployment within {} s ({last_seen})", deadline.as_secs()) }
}

/// `mcp-fleet config keygen --out DIR`.
pub fn keygen(dir: &Path, json: bool, out: &mut dyn Write) -> Result<u8, FleetFailure> {
    let key = crate::update::manifest::keygen(dir).map_err(|e| FleetFailure::from(e.to_string()))?;
    if json {
        let report = json!({"key_id": key.key_id.to_string(), "public": key.public_path, "secret": key.secret_path});
        print(out, &format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default()))?;
    } else {
        print(
            out,
            &format!(
                "the fleet's configuration key {}:\n  {} (secret: name it as fleet.config_key_file, keep it here)\n  \
                 {} (public: put it in each device's updates.config.keys_dir, /etc/mcp-raspi/config-keys)\n",
                key.key_id,
                key.secret_path.display(),
                key.public_path.display()
            ),
        )?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(device: &str, outcome: Outcome) -> DeviceResult<'_> {
        DeviceResult { device, sha256: None, outcome }
    }

    #[test]
    fn the_report_shows_diffs_and_reasons_and_counts_every_device() {
        let results = vec![
            result("pi-a", Outcome::Unchanged),
            result("pi-b", Outcome::WouldChange { diff: "-  level: debug\n+  level: info\n".into() }),
            result("pi-c", Outcome::Refused { reason: "the device's own check refuses it: server.listen".into() }),
            result("pi-d", Outcome::Unchanged),
        ];
        let text = text_report(&results, true);
        assert_eq!(
            text,
            "== pi-b: would change\n-  level: debug\n+  level: info\n\
             == pi-c: REFUSED: the device's own check refuses it: server.listen\n\
             config deploy --dry-run (nothing changed): 2 unchanged, 1 would change, 1 REFUSED of 4 devices\n"
        );
        let applied = text_report(&[result("pi-a", Outcome::Applied)], false);
        assert_eq!(applied, "== pi-a: applied\nconfig deploy: 1 applied of 1 devices\n");
        let json = serde_json::to_value(&results[2]).unwrap();
        assert_eq!(json["outcome"], "refused");
        assert!(json["reason"].as_str().unwrap().contains("server.listen"));
    }
}
