//! Self-update end to end with the real programs: an MCP client asks the server to update,
//! the server downloads a signed release from a loopback repository, the ops agent installs
//! it and switches `current`, and, with the test standing in for systemd (restarting both
//! programs from `current/bin`), the new release checks itself and the agent commits it, or
//! rolls it back when the new server never reports.
//!
//! The releases' programs are scripts that run this build's binaries, so that the update
//! goes from a release labelled 0.0.1 into one labelled with the programs' own version.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::deb::DebSpec;
use crate::support::update_repo::{arch, chown_tree, Scene};
use crate::support::{config_yaml, is_root, Server, UNPRIVILEGED};

const OLD: &str = "0.0.1";
const NEW: &str = env!("CARGO_PKG_VERSION");

/// The directory of this build's programs.
fn programs() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_mcp-raspi-server")).parent().unwrap().to_path_buf()
}

/// A device running release 0.0.1 with release NEW published, and the configuration of
/// its server and agent.
fn device(health_timeout_seconds: u64) -> (Scene, PathBuf) {
    let (scene, config, _) = device_with(0, health_timeout_seconds, false);
    (scene, config)
}

/// [`device`] with `padding` bytes of the same data in both releases (programs that did not
/// change), and the experimental feature updates.delta on when `delta` is. Returns NEW's
/// package too.
fn device_with(padding: usize, health_timeout_seconds: u64, delta: bool) -> (Scene, PathBuf, PathBuf) {
    let scene = Scene::starting_with(DebSpec::new(OLD, arch()).running(&programs()).padded(padding));
    let deb = scene.pool_deb(&DebSpec::new(NEW, arch()).running(&programs()).padded(padding));
    scene.publish(&scene.manifest(NEW, &deb));
    let base = scene.dir.path();
    let paths = format!(
        "paths:\n  state_dir: {}\n  install_dir: {}\n",
        scene.state_dir.display(),
        scene.install_root.display()
    );
    let updates = format!(
        "updates:\n  server_url: \"{}\"\n  keys_dir: {}\n  health_timeout_seconds: {health_timeout_seconds}\n",
        scene.server.url(),
        scene.keys_dir.display()
    );
    // The test configuration has an `updates` section already (its OS updates): extend it.
    let mut text = config_yaml(base, None, &paths).replacen("updates:\n", &updates, 1);
    if delta {
        let gpio = "    - { name: gpio, enabled: true, acknowledged_risks: true }\n";
        let both = format!("{gpio}    - {{ name: updates.delta, enabled: true, acknowledged_risks: true }}\n");
        text = text.replacen(gpio, &both, 1);
    }
    let config = base.join("daemons.yml");
    std::fs::write(&config, text).unwrap();
    if is_root() {
        chown_tree(base, UNPRIVILEGED);
    }
    (scene, config, deb)
}

fn state(scene: &Scene) -> Value {
    serde_json::from_slice(&std::fs::read(scene.state_dir.join("version.json")).unwrap()).unwrap()
}

/// Waits until `version.json`'s last update ends, at most `limit`.
fn wait_for_end(scene: &Scene, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let state = state(scene);
        if state["last_update"]["status"] != "in_progress" || start.elapsed() > limit {
            return state;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn structured(result: &Value) -> &Value {
    assert_eq!(result["isError"], false, "{result}");
    &result["structuredContent"]
}

/// Asks the running server for the update and checks what it answers at the restart.
fn update_over_mcp(server: &Server) {
    let answer = server.call_tool("manage.update_server", json!({"channel": "stable"}));
    let status = structured(&answer);
    assert_eq!(status["status"], "in_progress", "{status}");
    assert_eq!(status["current_version"], OLD);
    assert_eq!(status["target_version"], NEW);
    assert_eq!(status["phase"], "restarting");
}

#[test]
fn an_update_over_mcp_is_installed_proves_healthy_after_the_restart_and_is_committed() {
    let (scene, config) = device(30);
    let current = scene.install_root.join("current/bin");
    let server = Server::from_release(&current, &config);
    let dry = server.call_tool("manage.update_server", json!({"dry_run": true}));
    assert_eq!(structured(&dry)["status"], "available", "{dry}");
    update_over_mcp(&server);
    let during = state(&scene);
    assert_eq!(during["last_update"]["status"], "in_progress");
    assert_eq!(during["current_version"], NEW);
    assert_eq!(std::fs::read_link(scene.install_root.join("current")).unwrap(), Path::new("releases").join(NEW));

    // systemd restarts both programs into the release `current` names now.
    drop(server);
    let server = Server::from_release(&current, &config);
    let after = wait_for_end(&scene, Duration::from_secs(30));
    assert_eq!(after["last_update"]["status"], "succeeded", "{after}");
    assert_eq!(after["previous_good_version"], OLD);
    let status = server.call_tool("manage.get_server_status", json!({}));
    let status = structured(&status);
    assert_eq!(status["version"], NEW);
    assert_eq!(status["current_release"], NEW);
    assert_eq!(status["last_update"]["status"], "succeeded");
    assert_eq!(status["last_update"]["from"], OLD);
    let versions = server.call_tool("manage.list_versions", json!({}));
    let versions = structured(&versions);
    let listed: Vec<(String, bool, bool)> = versions["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["version"].as_str().unwrap().to_string(), r["current"] == true, r["previous_good"] == true))
        .collect();
    assert_eq!(listed, [(OLD.to_string(), false, true), (NEW.to_string(), true, false)]);
    // The new server's own check went through HTTP, authentication and the audit trail.
    let audit = std::fs::read_to_string(scene.dir.path().join("log/audit.log")).unwrap();
    let checked = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|r| r["tool"] == "system.get_info" && r["identity"] == "update-health-check" && r["outcome"] == "ok");
    assert!(checked, "{audit}");

    // The same release again is nothing to do; going back is a rollback.
    let again = server.call_tool("manage.update_server", json!({}));
    assert_eq!(structured(&again)["status"], "up_to_date", "{again}");
    let refused = server.call_tool("manage.rollback", json!({}));
    assert_eq!(refused["isError"], true, "{refused}");
    let rolled = server.call_tool("manage.rollback", json!({"confirm": true}));
    let rolled = structured(&rolled);
    assert_eq!(rolled["state"]["current_version"], OLD);
    assert_eq!(rolled["state"]["last_update"]["status"], "rolled_back");
    assert_eq!(std::fs::read_link(scene.install_root.join("current")).unwrap(), Path::new("releases").join(OLD));
}

#[test]
fn a_release_whose_server_never_reports_is_rolled_back_by_the_new_agent() {
    let (scene, config) = device(5);
    let current = scene.install_root.join("current/bin");
    let server = Server::from_release(&current, &config);
    update_over_mcp(&server);
    drop(server);
    // Only the agent comes back: the new server never starts (as if it crashed at once).
    let agent = crate::support::start_agent_program(&current.join("raspi-ops-agent"), &config);
    let after = wait_for_end(&scene, Duration::from_secs(20));
    let mut agent = agent;
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(after["last_update"]["status"], "rolled_back", "{after}");
    let reason = after["last_update"]["reason"].as_str().unwrap();
    assert!(reason.contains("did not report") && reason.contains("5 s"), "{reason}");
    assert_eq!(after["current_version"], OLD);
    assert_eq!(std::fs::read_link(scene.install_root.join("current")).unwrap(), Path::new("releases").join(OLD));
    // The failed release stays installed, and a later update must go above it.
    assert_eq!(after["highest_installed"], NEW);
}

#[test]
fn an_agent_that_keeps_failing_to_start_is_rolled_back_before_its_next_start() {
    let (scene, config) = device(30);
    let current = scene.install_root.join("current/bin");
    let server = Server::from_release(&current, &config);
    update_over_mcp(&server);
    drop(server);
    // systemd restarts the agent after each crash; its ExecStartPre runs before each start.
    let pre_start = || {
        let mut cmd = crate::support::program_command(Path::new(env!("CARGO_BIN_EXE_mcp-raspi")));
        cmd.args(["update", "pre-start", "--config"]).arg(&config);
        let out = crate::support::update_repo::run_bounded(cmd, Duration::from_secs(20));
        assert!(out.status.success(), "pre-start must never stop a start: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for start in 1..=3 {
        let said = pre_start();
        assert!(said.contains(&format!("start {start} of at most 3")), "{said}");
        assert_eq!(state(&scene)["last_update"]["status"], "in_progress");
    }
    let said = pre_start();
    assert!(said.contains("rolled back to 0.0.1"), "{said}");
    let after = state(&scene);
    assert_eq!(after["last_update"]["status"], "rolled_back", "{after}");
    assert!(after["last_update"]["reason"].as_str().unwrap().contains("started 3 times"), "{after}");
    assert_eq!(std::fs::read_link(scene.install_root.join("current")).unwrap(), Path::new("releases").join(OLD));
    // The next start finds nothing to count.
    assert_eq!(pre_start(), "");
}

#[test]
fn a_new_server_that_starts_before_its_agent_reports_once_the_agent_is_there() {
    let (scene, config) = device(30);
    let current = scene.install_root.join("current/bin");
    let server = Server::from_release(&current, &config);
    update_over_mcp(&server);
    drop(server);
    // The new server starts first and checks itself; its agent comes a moment later.
    let _server = Server::from_release_alone(&current, &config);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(state(&scene)["last_update"]["status"], "in_progress");
    let mut agent = crate::support::start_agent_program(&current.join("raspi-ops-agent"), &config);
    let after = wait_for_end(&scene, Duration::from_secs(20));
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(after["last_update"]["status"], "succeeded", "{after}");
    assert_eq!(after["current_version"], NEW);
}

fn pool_file(path: &Path) -> String {
    format!("/pool/{}", path.file_name().unwrap().to_string_lossy())
}

#[test]
fn with_updates_delta_the_server_downloads_the_delta_and_the_agent_rebuilds_the_release_from_it() {
    let (scene, config, deb) = device_with(256 * 1024, 30, true);
    let old_deb = scene.dir.path().join("publisher").join(crate::support::update_repo::deb_name(OLD, arch()));
    let delta = scene.publish_delta(&old_deb, &deb, NEW);
    if is_root() {
        chown_tree(scene.dir.path(), UNPRIVILEGED);
    }
    let delta_size = std::fs::metadata(&delta).unwrap().len();
    let current = scene.install_root.join("current/bin");
    let server = Server::from_release(&current, &config);
    let answer = server.call_tool("manage.update_server", json!({"channel": "stable"}));
    let status = structured(&answer);
    assert_eq!(status["status"], "in_progress", "{status}");
    assert_eq!(status["download_bytes"], delta_size, "{status}");
    assert!(scene.server.served(&pool_file(&deb)).is_empty(), "the package was not downloaded");
    assert!(scene.server.served(&pool_file(&delta)).iter().any(|s| s.status == 200));
    assert_eq!(state(&scene)["current_version"], NEW);
    drop(server);
    let _server = Server::from_release(&current, &config);
    let after = wait_for_end(&scene, Duration::from_secs(30));
    assert_eq!(after["last_update"]["status"], "succeeded", "{after}");
    let padding = std::fs::read(scene.install_root.join("releases").join(NEW).join("share/padding.bin")).unwrap();
    assert_eq!(padding.len(), 256 * 1024);
}

#[test]
fn a_delta_the_agent_cannot_use_makes_the_server_download_the_package() {
    let (scene, config, deb) = device_with(256 * 1024, 30, true);
    let old_deb = scene.dir.path().join("publisher").join(crate::support::update_repo::deb_name(OLD, arch()));
    let delta = scene.publish_delta(&old_deb, &deb, NEW);
    // The installed release is no longer the one the delta was built from.
    std::fs::write(scene.install_root.join("releases").join(OLD).join("share/padding.bin"), b"edited").unwrap();
    if is_root() {
        chown_tree(scene.dir.path(), UNPRIVILEGED);
    }
    let current = scene.install_root.join("current/bin");
    let server = Server::from_release(&current, &config);
    let answer = server.call_tool("manage.update_server", json!({"channel": "stable"}));
    let status = structured(&answer);
    assert_eq!(status["status"], "in_progress", "{status}");
    assert_eq!(status["download_bytes"], std::fs::metadata(&deb).unwrap().len(), "{status}");
    assert!(scene.server.served(&pool_file(&delta)).iter().any(|s| s.status == 200));
    assert!(scene.server.served(&pool_file(&deb)).iter().any(|s| s.status == 200));
    assert_eq!(state(&scene)["current_version"], NEW);
    let log = std::fs::read_to_string(scene.dir.path().join("log/app.log")).unwrap_or_default();
    assert!(log.contains("not the one the delta was built from"), "{log}");
    let staging: Vec<_> =
        std::fs::read_dir(scene.state_dir.join("staging")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(staging.is_empty(), "the staging directory keeps {staging:?}");
}
