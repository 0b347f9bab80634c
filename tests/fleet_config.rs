//! `mcp-fleet drift` and `config deploy` on simulated Pis: configuration files changed by hand
//! are found, shown with a dry run, and brought back by a deployment signed with the fleet's
//! key, which each device's own apply program installs and keeps only when the restarted
//! server answers; a file whose server does not come up is put back.
//!
//! `MCP_RASPI_FLEET_DEVICES` sets the fleet's size (10 by default); with
//! `MCP_RASPI_FLEET_CONFIG_FIGURES` set, the commands' times are written there as JSON.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::fleet_lab::{wait_until, Lab};

fn json(lab: &Lab, args: &[&str]) -> (i32, Value) {
    let out = lab.fleet(&[args, &["--json"]].concat());
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap_or(-1), value)
}

/// The devices `drift` reports as drifted.
fn drifted(lab: &Lab) -> Vec<String> {
    let (_, report) = json(lab, &["drift"]);
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["drifted"] == true)
        .map(|r| r["device"].as_str().unwrap().to_string())
        .collect()
}

fn outcomes(report: &Value) -> Vec<(String, String)> {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["device"].as_str().unwrap().to_string(), r["outcome"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn drift_finds_files_changed_by_hand_and_config_deploy_brings_them_back() {
    let count = std::env::var("MCP_RASPI_FLEET_DEVICES").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    let lab = Lab::start(count, &[]);
    assert_eq!(drifted(&lab), Vec::<String>::new());

    // Three operators tune a device each by hand, and restart it.
    let edited = [2, 5, 7];
    let config = |i: usize| lab.devices[i].layout.state_dir.parent().unwrap().join("config.yml");
    let rendered: Vec<String> = (0..count).map(|i| std::fs::read_to_string(config(i)).unwrap()).collect();
    for &i in &edited {
        let tuned = rendered[i].replace("level: debug", "level: warning");
        assert_ne!(tuned, rendered[i]);
        std::fs::write(config(i), tuned).unwrap();
    }
    let names: Vec<String> = edited.iter().map(|&i| lab.devices[i].id.clone()).collect();
    assert!(wait_until(Duration::from_secs(30), || drifted(&lab) == names), "drifted: {:?}", drifted(&lab));

    // The dry run shows those three diffs and changes nothing.
    let started = Instant::now();
    let (_, _) = json(&lab, &["drift"]);
    let drift_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (code, report) = json(&lab, &["config", "deploy", "--dry-run"]);
    let dry_run_seconds = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{report}");
    for (device, outcome) in outcomes(&report) {
        let wanted = if names.contains(&device) { "would_change" } else { "unchanged" };
        assert_eq!(outcome, wanted, "{device}: {report}");
    }
    let diff = report["results"][edited[0]]["diff"].as_str().unwrap();
    assert!(diff.contains("-  level: warning") && diff.contains("+  level: debug"), "{diff}");
    for &i in &edited {
        assert!(std::fs::read_to_string(config(i)).unwrap().contains("level: warning"));
    }

    // The deployment puts the rendered files back, and the devices run them.
    let started = Instant::now();
    let (code, report) = json(&lab, &["config", "deploy"]);
    let deploy_seconds = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{report}");
    for (device, outcome) in outcomes(&report) {
        let wanted = if names.contains(&device) { "applied" } else { "unchanged" };
        assert_eq!(outcome, wanted, "{device}: {report}");
    }
    for (i, text) in rendered.iter().enumerate() {
        assert_eq!(&std::fs::read_to_string(config(i)).unwrap(), text, "{}", lab.devices[i].id);
    }
    let previous = config(edited[0]).with_file_name("config.yml.previous");
    assert!(std::fs::read_to_string(previous).unwrap().contains("level: warning"));
    assert_eq!(drifted(&lab), Vec::<String>::new());

    // A file whose server cannot come up (its port is taken) is put back on that device;
    // the others take theirs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let text = std::fs::read_to_string(&lab.fleet_file).unwrap();
    let first = &lab.devices[0];
    let edited_fleet =
        text.replacen(&format!("\"listen\":\"{}\"", first.addr), &format!("\"listen\":\"127.0.0.1:{taken_port}\""), 1);
    assert_ne!(edited_fleet, text);
    std::fs::write(&lab.fleet_file, edited_fleet).unwrap();
    let (code, report) = json(&lab, &["config", "deploy", "--device", &first.id]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["results"][0]["outcome"], "rolled_back", "{report}");
    let reason = report["results"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("did not prove healthy") && reason.contains("the old file is back"), "{reason}");
    assert_eq!(std::fs::read_to_string(config(0)).unwrap(), rendered[0]);
    drop(taken);
    let (code, status) = json(&lab, &["status", &first.id]);
    assert_eq!(code, 0, "the device answers on its old file again: {status}");

    if let Ok(path) = std::env::var("MCP_RASPI_FLEET_CONFIG_FIGURES") {
        let figures = json!({
            "devices": count, "edited": names, "drift_seconds": drift_seconds, "dry_run_seconds": dry_run_seconds,
            "deploy_seconds": deploy_seconds,
        });
        std::fs::write(path, serde_json::to_string_pretty(&figures).unwrap()).unwrap();
    }
}
