//! `mcp-fleet update`: a rolling update of simulated Pis through their signed self-update,
//! which halts at the first batch that does not prove healthy, puts that batch's updated
//! devices back, reports exactly who changed, and continues with `--resume` once what failed
//! is fixed.
//!
//! `MCP_RASPI_FLEET_DEVICES` sets the fleet's size (10 by default; `make fleet-proof` runs
//! 100, in batches of 10 with devices 35–37 broken); with `MCP_RASPI_FLEET_FIGURES` set, the
//! run's times are written there as JSON.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::fleet_lab::{wait_until, Lab, NEW, OLD};

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The fleet's shape: devices, batch size, canary, devices of a batch at once, broken devices.
struct Shape {
    devices: usize,
    batch_size: usize,
    canary: usize,
    max_unavailable: usize,
    broken: Vec<usize>,
}

impl Shape {
    fn for_devices(devices: usize) -> Shape {
        if devices >= 100 {
            Shape { devices, batch_size: 10, canary: 0, max_unavailable: 10, broken: vec![35, 36, 37] }
        } else {
            Shape { devices, batch_size: 3, canary: 1, max_unavailable: 2, broken: vec![5] }
        }
    }

    /// The devices of each batch, by index.
    fn batches(&self) -> Vec<Vec<usize>> {
        let mut batches = Vec::new();
        if self.canary > 0 {
            batches.push((0..self.canary).collect());
        }
        let rest: Vec<usize> = (self.canary..self.devices).collect();
        batches.extend(rest.chunks(self.batch_size).map(<[usize]>::to_vec));
        batches
    }
}

fn ids(lab: &Lab, indices: impl IntoIterator<Item = usize>) -> Vec<String> {
    indices.into_iter().map(|i| lab.devices[i].id.clone()).collect()
}

fn listed(report: &Value, key: &str) -> Vec<String> {
    report[key].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

#[test]
fn a_rolling_update_halts_at_the_first_unhealthy_batch_puts_it_back_and_resumes_once_fixed() {
    let count = std::env::var("MCP_RASPI_FLEET_DEVICES").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let shape = Shape::for_devices(count);
    let started = Instant::now();
    let lab = Lab::start(count, &shape.broken);
    let start_seconds = started.elapsed().as_secs_f64();

    // The first run halts at the batch holding the broken devices.
    let halting = shape.batches().into_iter().position(|b| b.iter().any(|i| shape.broken.contains(i))).unwrap();
    let batch = shape.batches()[halting].clone();
    let (batch_size, canary, max_unavailable) =
        (shape.batch_size.to_string(), shape.canary.to_string(), shape.max_unavailable.to_string());
    let args = [
        "update",
        "--version",
        NEW,
        "--strategy",
        "rolling",
        "--batch-size",
        &batch_size,
        "--canary",
        &canary,
        "--max-unavailable",
        &max_unavailable,
        "--device-timeout",
        "60",
    ];
    let started = Instant::now();
    let out = lab.fleet(&args);
    let halted_seconds = started.elapsed().as_secs_f64();
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report} {}", text(&out.stderr));
    println!("{report}");

    let first_changed = batch[0];
    let updated = ids(&lab, 0..first_changed);
    let rolled_back = ids(&lab, batch.iter().copied());
    let failed = ids(&lab, shape.broken.iter().copied());
    let untouched = ids(&lab, batch.last().unwrap() + 1..count);
    let record: Value =
        serde_json::from_slice(&std::fs::read(lab.fleet_file.with_file_name("fleet-config.rollout.json")).unwrap())
            .unwrap();
    assert_eq!(record["status"], "halted", "{record}");
    assert_eq!(record["halted_batch"], json!(rolled_back));
    let range = |v: &[String]| format!("{}–{}", v[0], v[v.len() - 1]);
    assert!(report.contains(&format!("HALTED at the batch {}", range(&rolled_back))), "{report}");
    assert!(report.contains(&format!("updated      {:>4}  {}\n", updated.len(), range(&updated))), "{report}");
    let failed_range = if failed.len() == 1 { failed[0].clone() } else { range(&failed) };
    assert!(
        report.contains(&format!(
            "rolled back  {:>4}  {} ({failed_range} failed)\n",
            rolled_back.len(),
            range(&rolled_back)
        )),
        "{report}"
    );
    assert!(report.contains(&format!("untouched    {:>4}  {}\n", untouched.len(), range(&untouched))), "{report}");
    assert!(report.contains("continue with: mcp-fleet update --resume"), "{report}");
    // What the devices themselves say.
    for (i, device) in lab.devices.iter().enumerate() {
        let state = device.state();
        let expected = if i < first_changed { NEW } else { OLD };
        assert_eq!(device.current(), expected, "{}: {state}", device.id);
        if shape.broken.contains(&i) {
            assert_eq!(state["last_update"]["status"], "rolled_back", "{}: {state}", device.id);
            let reason = state["last_update"]["reason"].as_str().unwrap();
            assert!(reason.contains("did not report"), "{}: {reason}", device.id);
            assert!(report.contains(&format!("{}: {NEW} did not prove healthy", device.id)), "{report}");
        } else if batch.contains(&i) {
            assert_eq!(state["last_update"]["source"], "rollback", "{}: {state}", device.id);
        } else if i > *batch.last().unwrap() {
            assert!(state["last_update"].is_null() || state["last_update"]["to"] != NEW, "{}: {state}", device.id);
        }
    }

    // A new rollout is refused while this one is halted.
    let refused = lab.fleet(&["update", "--version", NEW]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused.stderr).contains("--resume"), "{}", text(&refused.stderr));

    // Fixed: the broken devices can run the release now; the rollout goes on from the
    // halted batch, and every device ends on the new release, healthy.
    for &i in &shape.broken {
        lab.devices[i].set_broken(false);
    }
    let started = Instant::now();
    let out = lab.fleet(&["update", "--resume", "--json"]);
    let resumed_seconds = started.elapsed().as_secs_f64();
    let resumed: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", text(&out.stdout), text(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{resumed}");
    assert_eq!(resumed["status"], "completed");
    assert_eq!(listed(&resumed, "updated"), ids(&lab, 0..count), "{resumed}");
    for key in ["rolled_back", "not_updated", "unknown", "untouched", "failed"] {
        assert!(listed(&resumed, key).is_empty(), "{key}: {resumed}");
    }
    for device in &lab.devices {
        assert!(wait_until(Duration::from_secs(10), || device.current() == NEW), "{}", device.id);
        assert_eq!(device.state()["last_update"]["status"], "succeeded", "{}", device.id);
    }
    let done = lab.fleet(&["update", "--resume"]);
    assert_eq!(done.status.code(), Some(2));
    assert!(text(&done.stderr).contains("nothing to resume"), "{}", text(&done.stderr));

    if let Ok(path) = std::env::var("MCP_RASPI_FLEET_FIGURES") {
        let figures = json!({
            "devices": count, "batch_size": shape.batch_size, "broken": failed, "start_seconds": start_seconds,
            "halted_seconds": halted_seconds, "resumed_seconds": resumed_seconds, "halted_report": report,
            "batches_before_halt": halting, "batches_after_resume": shape.batches().len() - halting,
        });
        std::fs::write(path, serde_json::to_string_pretty(&figures).unwrap()).unwrap();
    }
}
