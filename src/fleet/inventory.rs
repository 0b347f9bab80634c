//! `list`, `status ID` and `health`: what the fleet file says, and what the devices say about
//! themselves (`manage.get_server_status` and `system.get_health_snapshot`).

use std::io::Write;

use serde::Serialize;
use serde_json::{json, Value};

use super::device::{DeviceError, Target};
use super::fanout;
use super::file::Selection;
use super::run::Context;
use super::table::table;
use super::{print, FleetFailure, EXIT_DEVICES};

/// A device's answers to the two status tools.
#[derive(Debug, Serialize)]
pub struct DeviceHealth {
    pub device: String,
    pub url: String,
    pub reachable: bool,
    /// Why the device could not be asked, or what it refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub version: Option<String>,
    pub previous_good_version: Option<String>,
    /// The last update's status, from and to versions, and times.
    pub last_update: Option<Value>,
    /// `ok`, `warning` or `critical`.
    pub verdict: Option<String>,
    pub reasons: Vec<String>,
    /// The hottest thermal zone, in °C.
    pub temperature_celsius: Option<f64>,
    /// SHA-256 of the configuration file the server runs with.
    pub config_sha256: Option<String>,
    /// Whether the configuration or release differs from the fleet file's (`None`: unknown).
    pub drifted: Option<bool>,
    /// What differs.
    pub drift: Vec<String>,
}

impl DeviceHealth {
    pub fn healthy(&self) -> bool {
        self.reachable && self.error.is_none() && self.verdict.as_deref() == Some("ok")
    }
}

/// Asks `target` for its server status and health snapshot, both at once.
pub async fn ask(cx: &Context<'_>, target: &Target) -> DeviceHealth {
    let no_arguments = || Value::Object(Default::default());
    let (status, health) = tokio::join!(
        cx.caller.call(target, "manage.get_server_status", no_arguments()),
        cx.caller.call(target, "system.get_health_snapshot", no_arguments()),
    );
    let reachable = !matches!((&status, &health), (Err(a), Err(b)) if !a.reachable() && !b.reachable());
    let error = [&status, &health].iter().find_map(|r| r.as_ref().err()).map(DeviceError::to_string);
    let status = status.unwrap_or_default();
    let health = health.unwrap_or_default();
    let text = |v: &Value| v.as_str().map(str::to_string);
    DeviceHealth {
        device: target.id.clone(),
        url: target.url.clone(),
        reachable,
        error,
        version: text(&status["version"]),
        previous_good_version: text(&status["previous_good_version"]),
        last_update: status.get("last_update").filter(|v| !v.is_null()).cloned(),
        verdict: text(&health["verdict"]),
        reasons: health["reasons"].as_array().map(|r| r.iter().filter_map(text).collect()).unwrap_or_default(),
        temperature_celsius: health["temperatures"]
            .as_array()
            .and_then(|zones| zones.iter().filter_map(|z| z["celsius"].as_f64()).reduce(f64::max)),
        config_sha256: text(&status["config"]["sha256"]),
        drifted: None,
        drift: Vec::new(),
    }
}

/// A device that could not be asked.
fn unreachable(target: &Target, error: String) -> DeviceHealth {
    DeviceHealth {
        device: target.id.clone(),
        url: target.url.clone(),
        reachable: false,
        error: Some(error),
        version: None,
        previous_good_version: None,
        last_update: None,
        verdict: None,
        reasons: Vec::new(),
        temperature_celsius: None,
        config_sha256: None,
        drifted: None,
        drift: Vec::new(),
    }
}

/// Flags what differs from the fleet file on a device that answered.
fn flag_drift(cx: &Context<'_>, device: &super::file::Device, health: &mut DeviceHealth) {
    if !health.reachable {
        return;
    }
    let drift = super::drift::compare(cx, device, health.config_sha256.as_deref(), health.version.as_deref());
    health.drifted = drift.config_matches.map(|_| drift.drifted());
    health.drift = drift.findings;
}

/// `mcp-fleet list`: the fleet file's devices; nothing is asked of them.
pub fn list(cx: &Context<'_>, selection: &Selection, out: &mut dyn Write) -> Result<u8, FleetFailure> {
    let chosen = cx.chosen(selection)?;
    if cx.json {
        let devices: Vec<Value> = chosen
            .iter()
            .map(|(d, t)| {
                json!({"id": d.id, "hostname": d.hostname, "model": d.model, "role": d.role, "tags": d.tags, "url": t.url})
            })
            .collect();
        let region = &cx.fleet.region;
        let report = json!({"fleet": cx.fleet.id, "region": region, "devices": devices});
        print(out, &format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default()))?;
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = chosen
        .iter()
        .map(|(d, t)| {
            vec![
                d.id.clone(),
                d.hostname.clone(),
                d.model.clone().unwrap_or_default(),
                d.role.clone().unwrap_or_default(),
                d.tags.join(","),
                t.url.clone(),
            ]
        })
        .collect();
    let mut text = table(&["DEVICE", "HOST", "MODEL", "ROLE", "TAGS", "ENDPOINT"], &rows);
    let region = cx.fleet.region.as_deref().map(|r| format!(", region {r}")).unwrap_or_default();
    text.push_str(&format!("fleet {}{region}: {} devices\n", cx.fleet.id, rows.len()));
    print(out, &text)?;
    Ok(0)
}

/// `mcp-fleet status ID`.
pub async fn status(cx: &Context<'_>, id: &str, out: &mut dyn Write) -> Result<u8, FleetFailure> {
    let (device, target) = cx.chosen(&Selection::Ids(vec![id.to_string()]))?.remove(0);
    let mut health = tokio::time::timeout(cx.deadline(1), ask(cx, target)).await.unwrap_or_else(|_| {
        unreachable(target, format!("unreachable: no answer within {} s", cx.deadline(1).as_secs()))
    });
    flag_drift(cx, device, &mut health);
    if cx.json {
        print(out, &format!("{}\n", serde_json::to_string_pretty(&health).unwrap_or_default()))?;
    } else {
        let none = || "-".to_string();
        let mut text =
            format!("device: {}\nendpoint: {}\nreachable: {}\n", health.device, health.url, health.reachable);
        if let Some(error) = &health.error {
            text.push_str(&format!("error: {error}\n"));
        }
        text.push_str(&format!(
            "version: {}\nprevious good version: {}\nlast update: {}\nhealth: {}\ntemperature: {}\nconfig sha256: {}\n",
            health.version.clone().unwrap_or_else(none),
            health.previous_good_version.clone().unwrap_or_else(none),
            health.last_update.as_ref().map(last_update).unwrap_or_else(none),
            health.verdict.clone().unwrap_or_else(none),
            health.temperature_celsius.map(|c| format!("{c:.1} °C")).unwrap_or_else(none),
            health.config_sha256.clone().unwrap_or_else(none),
        ));
        for reason in &health.reasons {
            text.push_str(&format!("  - {reason}\n"));
        }
        let drift = match health.drifted {
            Some(true) => format!("yes: {}", health.drift.join("; ")),
            Some(false) => "no".to_string(),
            None if health.drift.is_empty() => "-".to_string(),
            None => health.drift.join("; "),
        };
        text.push_str(&format!("drift: {drift}\n"));
        print(out, &text)?;
    }
    Ok(if health.healthy() { 0 } else { EXIT_DEVICES })
}

/// `mcp-fleet health`: every chosen device, at once within the fleet's concurrency.
pub async fn health(cx: &Context<'_>, selection: &Selection, out: &mut dyn Write) -> Result<u8, FleetFailure> {
    let chosen = cx.chosen(selection)?;
    let bar = fanout::bar("health", cx.json);
    let outcomes = fanout::each(chosen.len(), cx.concurrency(), cx.deadline(1), bar.as_ref(), |i| {
        let target = chosen[i].1;
        async move { Ok(ask(cx, target).await) }
    })
    .await;
    let devices: Vec<DeviceHealth> = outcomes
        .into_iter()
        .map(|o| {
            let (device, target) = chosen[o.index];
            let mut health = o.result.unwrap_or_else(|error| unreachable(target, error));
            flag_drift(cx, device, &mut health);
            health
        })
        .collect();
    let count = |f: &dyn Fn(&DeviceHealth) -> bool| devices.iter().filter(|d| f(d)).count();
    let unreachable = count(&|d| !d.reachable);
    let verdict = |v: &str| count(&|d| d.reachable && d.verdict.as_deref() == Some(v));
    let (ok, warning, critical) = (verdict("ok"), verdict("warning"), verdict("critical"));
    let healthy = count(&DeviceHealth::healthy);
    let drifted = count(&|d| d.drifted == Some(true));
    if cx.json {
        let summary = json!({"devices": devices.len(), "healthy": healthy, "ok": ok, "warning": warning,
                             "critical": critical, "unreachable": unreachable, "drifted": drifted});
        let report = json!({"fleet": cx.fleet.id, "summary": summary, "results": devices});
        print(out, &format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default()))?;
    } else {
        let dash = || "-".to_string();
        let rows: Vec<Vec<String>> = devices
            .iter()
            .map(|d| {
                vec![
                    d.device.clone(),
                    if d.reachable { "yes".into() } else { "NO".into() },
                    d.version.clone().unwrap_or_else(dash),
                    d.previous_good_version.clone().unwrap_or_else(dash),
                    d.last_update.as_ref().map(last_update).unwrap_or_else(dash),
                    d.verdict.clone().map(|v| if v == "ok" { v } else { v.to_uppercase() }).unwrap_or_else(dash),
                    d.temperature_celsius.map(|c| format!("{c:.1}")).unwrap_or_else(dash),
                    d.config_sha256.as_deref().map(|h| h.chars().take(12).collect()).unwrap_or_else(dash),
                    match d.drifted {
                        Some(true) => "YES".into(),
                        Some(false) => "no".into(),
                        None => dash(),
                    },
                ]
            })
            .collect();
        let mut text = table(
            &["DEVICE", "REACHABLE", "VERSION", "PREVIOUS", "LAST UPDATE", "HEALTH", "TEMP °C", "CONFIG", "DRIFT"],
            &rows,
        );
        for d in &devices {
            let mut why: Vec<String> = d.error.iter().cloned().collect();
            if d.error.is_none() && !d.healthy() {
                why.extend(d.reasons.iter().cloned());
            }
            if d.drifted == Some(true) {
                why.extend(d.drift.iter().map(|f| format!("drift: {f}")));
            }
            if !why.is_empty() {
                text.push_str(&format!("{}: {}\n", d.device, why.join("; ")));
            }
        }
        text.push_str(&format!(
            "{} devices: {ok} ok, {warning} warning, {critical} critical, {unreachable} unreachable, {drifted} drifted\n",
            devices.len()
        ));
        print(out, &text)?;
    }
    Ok(if healthy == devices.len() { 0 } else { EXIT_DEVICES })
}

/// "succeeded 0.1.3→0.1.4" from a `last_update`.
fn last_update(update: &Value) -> String {
    let status = update["status"].as_str().unwrap_or("?");
    let to = update["to"].as_str().unwrap_or("?");
    match update["from"].as_str() {
        Some(from) => format!("{status} {from}→{to}"),
        None => format!("{status} →{to}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_update_reads_as_status_and_versions() {
        assert_eq!(
            last_update(&json!({"status": "rolled_back", "from": "0.1.3", "to": "0.1.4"})),
            "rolled_back 0.1.3→0.1.4"
        );
        assert_eq!(last_update(&json!({"status": "succeeded", "to": "0.1.4"})), "succeeded →0.1.4");
    }
}
