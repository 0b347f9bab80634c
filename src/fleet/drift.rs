//! Drift: a device whose configuration file is not the one the fleet file renders for it (a
//! hand edit, a deploy that did not reach it), or whose release is not `fleet.version`.
//! The device reports the SHA-256 of its file and its version (`manage.get_server_status`);
//! nothing of its configuration leaves it.

use std::io::Write;

use serde::Serialize;
use serde_json::{json, Value};

use super::file::{Device, Selection};
use super::run::Context;
use super::{fanout, print, FleetFailure, EXIT_DEVICES};

/// What differs on one device.
#[derive(Debug, Default, Serialize)]
pub struct Drift {
    /// Whether the device's configuration file is the rendered one (`None`: unknown).
    pub config_matches: Option<bool>,
    /// Whether it runs `fleet.version` (`None`: the fleet names no version, or unknown).
    pub version_matches: Option<bool>,
    /// One sentence per difference, or why it could not be told.
    pub findings: Vec<String>,
}

impl Drift {
    /// Whether anything differs.
    pub fn drifted(&self) -> bool {
        self.config_matches == Some(false) || self.version_matches == Some(false)
    }
}

/// Compares what `device` reported (its configuration digest and version; `None` when it did
/// not answer) with the fleet file.
pub fn compare(cx: &Context<'_>, device: &Device, sha256: Option<&str>, version: Option<&str>) -> Drift {
    let mut drift = Drift::default();
    match (cx.rendered(device), sha256) {
        (Err(e), _) => drift.findings.push(format!("the fleet file renders no configuration: {e}")),
        (Ok(_), None) => {}
        (Ok(rendered), Some(reported)) => {
            let matches = rendered.sha256 == reported;
            drift.config_matches = Some(matches);
            if !matches {
                drift.findings.push(format!(
                    "the configuration file (sha256 {}) is not the one the fleet file renders ({}): \
                     changed by hand, or not deployed yet",
                    short(reported),
                    short(&rendered.sha256)
                ));
            }
        }
    }
    if let (Some(wanted), Some(running)) = (&cx.fleet.version, version) {
        let matches = wanted == running;
        drift.version_matches = Some(matches);
        if !matches {
            drift.findings.push(format!("runs {running}, the fleet runs {wanted}"));
        }
    }
    drift
}

fn short(sha256: &str) -> &str {
    &sha256[..sha256.len().min(12)]
}

/// `mcp-fleet drift`.
pub async fn run(cx: &Context<'_>, selection: &Selection, out: &mut dyn Write) -> Result<u8, FleetFailure> {
    let chosen = cx.chosen(selection)?;
    let bar = fanout::bar("drift", cx.json);
    let outcomes = fanout::each(chosen.len(), cx.concurrency(), cx.deadline(1), bar.as_ref(), |i| {
        let target = chosen[i].1;
        async move { cx.caller.call(target, "manage.get_server_status", json!({})).await.map_err(|e| e.to_string()) }
    })
    .await;
    let mut rows = Vec::new();
    let mut results = Vec::new();
    let mut failing = 0;
    for outcome in outcomes {
        let device = chosen[outcome.index].0;
        let (drift, error) = match &outcome.result {
            Ok(status) => {
                let sha = status["config"]["sha256"].as_str();
                (compare(cx, device, sha, status["version"].as_str()), None)
            }
            Err(e) => (compare(cx, device, None, None), Some(e.clone())),
        };
        if drift.drifted() || error.is_some() || drift.config_matches.is_none() {
            failing += 1;
        }
        let word = |m: Option<bool>| match m {
            Some(true) => "same".to_string(),
            Some(false) => "DRIFTED".to_string(),
            None => "-".to_string(),
        };
        let version = outcome.result.as_ref().ok().and_then(|s| s["version"].as_str()).unwrap_or("-").to_string();
        rows.push(vec![device.id.clone(), word(drift.config_matches), version, word(drift.version_matches)]);
        results.push(json!({"device": device.id, "drifted": drift.drifted(), "error": error, "drift": drift}));
    }
    if cx.json {
        let drifted = results.iter().filter(|r| r["drifted"] == Value::Bool(true)).count();
        let report = json!({"fleet": cx.fleet.id, "version": cx.fleet.version, "devices": results.len(),
                            "drifted": drifted, "results": results});
        print(out, &format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default()))?;
    } else {
        let mut text = super::table::table(&["DEVICE", "CONFIG", "VERSION", "RELEASE"], &rows);
        for r in &results {
            let mut why: Vec<String> = Vec::new();
            if let Some(e) = r["error"].as_str() {
                why.push(e.to_string());
            }
            why.extend(
                r["drift"]["findings"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).map(String::from),
            );
            if !why.is_empty() {
                text.push_str(&format!("{}: {}\n", r["device"].as_str().unwrap_or(""), why.join("; ")));
            }
        }
        text.push_str(&format!("{} devices: {} drifted or unknown\n", results.len(), failing));
        print(out, &text)?;
    }
    Ok(if failing > 0 { EXIT_DEVICES } else { 0 })
}
