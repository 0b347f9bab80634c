//! The metrics history over MCP: the sampler's rounds read back with metrics.query, its
//! switch kept across a restart, a damaged database replaced at start, a full disk pausing
//! it, a database held by another process blocking no request, and the history saved by
//! `mcp-raspi backup` while the server writes it and brought back by `mcp-raspi restore`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// Sampling every second, on the fixture Pi (its readings do not move).
fn sampling_config() -> String {
    "metrics:\n  collection:\n    interval_seconds: 1\n".to_string()
}

fn fixture() -> std::path::PathBuf {
    repo().join("tests/fixtures/pi4")
}

fn status(server: &Server) -> Value {
    let r = server.call_tool("metrics.get_status", json!({}));
    assert_eq!(r["isError"], false, "{r}");
    r["structuredContent"].clone()
}

/// Waits until the status satisfies `ready`, for at most 20 s.
fn wait_for(server: &Server, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(server);
        if ready(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "waited 20 s for {what}: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_sampler_records_rounds_that_metrics_query_reads_back_and_its_switch_survives_a_restart() {
    let server = Server::with_config(Some(&fixture()), &sampling_config());
    let s = wait_for(&server, "two rounds", |s| s["series"].as_array().unwrap().iter().any(|n| n == "cpu.percent"));
    assert_eq!(s["state"], "sampling");
    assert_eq!(s["interval_seconds"], 1);
    assert_eq!(s["schema_version"], 1);
    assert!(s["database"].as_str().unwrap().ends_with("state/metrics.db"));
    assert!(s["size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(s["retention"], json!({"max_age_days": 30, "max_size_mb": 100}));

    let r = server.call_tool(
        "metrics.query",
        json!({"names": ["temperature", "disk_io.mmcblk0", "net.eth*"], "since": "10m", "step": "1", "aggregation": "max"}),
    );
    assert_eq!(r["isError"], false, "{r}");
    let series = r["structuredContent"]["series"].as_array().unwrap();
    let names: Vec<&str> = series.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"temperature.cpu-thermal.celsius"), "{names:?}");
    assert!(names.contains(&"disk_io.mmcblk0.read_bytes_per_second"), "{names:?}");
    assert!(names.contains(&"net.eth0.rx_bytes_per_second"), "{names:?}");
    let temperature = series.iter().find(|s| s["name"] == "temperature.cpu-thermal.celsius").unwrap();
    assert_eq!(temperature["unit"], "celsius");
    let live = server.call_tool("metrics.get_snapshot", json!({"sample_ms": 0}));
    let live_temperature = live["structuredContent"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "temperature.cpu-thermal.celsius")
        .unwrap()["value"]
        .clone();
    assert_eq!(temperature["points"][0][1], live_temperature, "the history keeps what the kernel reports");

    // The day at a glance, as a resource.
    let session = server.initialize("2025-11-25");
    let read = server.rpc(&session, "2025-11-25", "resources/read", json!({"uri": "raspi://metrics/last-24h"}));
    let text = read["result"]["contents"][0]["text"].as_str().unwrap();
    let day: Value = serde_json::from_str(text).unwrap();
    let t = day["series"].as_array().unwrap().iter().find(|s| s["name"] == "temperature.cpu-thermal.celsius").unwrap();
    assert_eq!((t["min"].clone(), t["max"].clone()), (live_temperature.clone(), live_temperature.clone()), "{t}");
    assert!(t["samples"].as_u64().unwrap() >= 2);

    // Too many points, or an unknown name: refused, saying what to ask instead.
    let r = server.call_tool("metrics.query", json!({"since": "30d", "step": "1"}));
    assert_eq!(r["isError"], true);
    assert!(r["content"][0]["text"].as_str().unwrap().contains("ask for a step of at least"), "{r}");
    let r = server.call_tool("metrics.query", json!({"names": ["gpu.percent"]}));
    assert!(r["content"][0]["text"].as_str().unwrap().contains("known series: cpu.core0.percent"), "{r}");

    // A viewer may not switch the sampler; an operator (here admin) may.
    let r = server.call_tool_as(VIEWER_TOKEN, "metrics.stop_sampling", json!({}));
    assert!(r["content"][0]["text"].as_str().unwrap().contains("permission_denied"), "{r}");
    let r = server.call_tool("metrics.stop_sampling", json!({}));
    assert_eq!(r["structuredContent"]["state"], "stopped", "{r}");
    assert_eq!(r["structuredContent"]["switched"]["by"], "admin");
    let samples = status(&server)["samples"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(status(&server)["samples"].as_u64().unwrap(), samples, "no rounds while stopped");

    let server = server.restart();
    let s = status(&server);
    assert_eq!((s["state"].clone(), s["enabled"].clone()), (json!("stopped"), json!(false)), "{s:#}");
    assert_eq!(s["samples"].as_u64().unwrap(), samples, "the history is still there");
    let r = server.call_tool("metrics.start_sampling", json!({}));
    assert_eq!(r["structuredContent"]["enabled"], true, "{r}");
    wait_for(&server, "a new round", |s| s["samples"].as_u64().unwrap() > samples);
    let audit = server.audit_records();
    assert!(audit.iter().any(|r| r["tool"] == "metrics.start_sampling" && r["identity"] == "admin"));
}

#[test]
fn a_damaged_database_is_moved_aside_at_start_and_the_server_keeps_serving() {
    let dir = temp_dir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("metrics.db"), b"SQLite format 3\0 torn by a power cut".repeat(100)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&state, Some(service_uid()), Some(service_uid())).unwrap();
        std::os::unix::fs::chown(state.join("metrics.db"), Some(service_uid()), Some(service_uid())).unwrap();
    }
    std::fs::write(dir.path().join("config.yml"), config_yaml(dir.path(), Some(&fixture()), &sampling_config()))
        .unwrap();
    let mut cmd = server_command();
    cmd.arg("--config").arg(dir.path().join("config.yml"));
    let server = Server::from_command(cmd, dir, None);
    let s = wait_for(&server, "a round in the new database", |s| s["samples"].as_u64().unwrap() > 0);
    let moved = s["recovered"]["moved_to"].as_str().unwrap().to_string();
    assert!(moved.contains("metrics.db.corrupt-"), "{s:#}");
    assert!(Path::new(&moved).exists());
    assert_eq!(s["state"], "sampling");
    let log = std::fs::read_to_string(server.log_dir().join("app.log")).unwrap();
    assert!(log.contains("moved it to") && log.contains("started a new database"), "{log}");
    server.assert_alive();
}

#[test]
fn a_database_held_by_another_process_blocks_no_request_and_sampling_goes_on_after() {
    let server = Server::with_config(Some(&fixture()), &sampling_config());
    wait_for(&server, "a round", |s| s["samples"].as_u64().unwrap() > 0);
    let db = server.dir.path().join("state/metrics.db");
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE; INSERT INTO series (name, unit) VALUES ('held', 'count');").unwrap();
    let held_at = Instant::now();
    // While it is held, every tool answers, the history's included.
    while held_at.elapsed() < Duration::from_secs(3) {
        let started = Instant::now();
        let r = server.call_tool("metrics.query", json!({"names": ["memory"], "since": "5m"}));
        assert_eq!(r["isError"], false, "{r}");
        server.assert_alive();
        assert!(started.elapsed() < Duration::from_secs(2), "a request waited for the lock");
    }
    let s = wait_for(&server, "the sampler to meet the lock", |s| !s["last_error"].is_null());
    assert!(s["last_error"]["message"].as_str().unwrap().contains("database busy"), "{s:#}");
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    let samples = status(&server)["samples"].as_u64().unwrap();
    wait_for(&server, "rounds again", |s| s["samples"].as_u64().unwrap() > samples);
}

/// A real full disk: the state directory on a 2 MiB tmpfs in a mount namespace of the
/// server's own, filled through /proc/<pid>/root. Needs root (CI runs the tests as root).
#[test]
fn a_full_disk_pauses_sampling_while_every_tool_answers_and_it_resumes_when_space_returns() {
    if !is_root() {
        eprintln!("skipped: mounting a small file system needs root");
        return;
    }
    let dir = temp_dir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(&config, config_yaml(dir.path(), Some(&fixture()), &sampling_config())).unwrap();
    let uid = service_uid();
    let script = format!(
        "mount -t tmpfs -o size=2m,uid={uid},gid={uid},mode=0700 tmpfs \"$1\" && \
         exec setpriv --reuid={uid} --regid={uid} --clear-groups \"$2\" --config \"$3\""
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c", &script, "sh"])
        .arg(&state)
        .arg(server_bin())
        .arg(&config);
    let server = Server::from_command(cmd, dir, None);
    wait_for(&server, "a round", |s| s["samples"].as_u64().unwrap() > 0);

    // Fill the server's file system, as root would (tmpfs keeps nothing in reserve).
    let inside = Path::new("/proc").join(server.pid().to_string()).join("root").join(state.strip_prefix("/").unwrap());
    let filler = inside.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
    }
    let s = wait_for(&server, "the sampler to pause", |s| s["state"] == "paused");
    assert!(s["last_error"]["message"].as_str().unwrap().contains("disk full"), "{s:#}");
    // Every tool still answers, the history's too.
    server.assert_alive();
    let r = server.call_tool("metrics.query", json!({"names": ["load"], "since": "5m"}));
    assert_eq!(r["isError"], false, "{r}");
    assert!(!r["structuredContent"]["series"][0]["points"].as_array().unwrap().is_empty());

    std::fs::remove_file(&filler).unwrap();
    let samples = s["samples"].as_u64().unwrap();
    let s = wait_for(&server, "sampling to resume", |s| {
        s["state"] == "sampling" && s["samples"].as_u64().unwrap() > samples
    });
    assert_eq!(s["enabled"], true);
    let log = std::fs::read_to_string(server.log_dir().join("app.log")).unwrap();
    assert!(log.contains("is full") && log.contains("sampling paused"), "{log}");
    assert!(log.contains("sampling resumed"), "{log}");
}

/// `mcp-raspi backup` or `restore` with `args`, on the test server's configuration.
fn operator(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mcp-raspi"))
        .args(args)
        .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TEST_VIEWER_TOKEN", VIEWER_TOKEN)
        .output()
        .unwrap()
}

/// The samples of the metrics database at `path`, after SQLite's integrity check passed.
fn checked_samples(path: &Path) -> u64 {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(verdict, "ok");
    let samples: i64 = conn.query_row("SELECT COALESCE(SUM(n), 0) FROM samples", [], |r| r.get(0)).unwrap();
    samples as u64
}

#[test]
fn a_backup_taken_while_the_server_samples_holds_its_history_and_a_restore_brings_it_back() {
    let mut server = Server::with_config(Some(&fixture()), &sampling_config());
    let before = wait_for(&server, "rounds", |s| s["samples"].as_u64().unwrap() > 0)["samples"].as_u64().unwrap();
    let config = server.config_path();
    let units = server.dir.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let backups = tempfile::tempdir().unwrap();
    let place = |p: &Path| p.to_str().unwrap().to_string();
    let (config, units, dest) = (place(&config), place(&units), place(backups.path()));

    // The server goes on sampling while the backup copies its database.
    let out = operator(&["backup", "--config", &config, "--dest", &dest, "--units-dir", &units, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(written["skipped"], json!([]), "{written}");
    assert_eq!(written["metrics_db"]["archived"], "state/metrics.db", "{written}");
    let after = status(&server)["samples"].as_u64().unwrap();
    let archive = Path::new(written["archive"].as_str().unwrap()).to_path_buf();
    let extracted = tempfile::tempdir().unwrap();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap());
    tar::Archive::new(gz).unpack(extracted.path()).unwrap();
    let top = archive.file_name().unwrap().to_str().unwrap().trim_end_matches(".tar.gz");
    let copy = extracted.path().join(top).join("state/metrics.db");
    assert!(!extracted.path().join(top).join("state/metrics.db-wal").exists());
    let saved = checked_samples(&copy);
    assert!((before..=after).contains(&saved), "{before} <= {saved} <= {after}");

    // Not under the running server: its database is open.
    let out = operator(&["restore", &place(&archive), "--config", &config, "--units-dir", &units, "--no-restart"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is open (is mcp-raspi-server running?)") && err.contains("nothing was changed"), "{err}");
    server.assert_alive();

    // The server stopped and its database lost: the restore brings back the saved rounds.
    assert!(server.terminate().is_some(), "the server did not stop");
    let state = server.dir.path().join("state");
    for name in ["metrics.db", "metrics.db-wal", "metrics.db-shm"] {
        let _ = std::fs::remove_file(state.join(name));
    }
    let out = operator(&["restore", &place(&archive), "--config", &config, "--units-dir", &units, "--no-restart"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("new      {}", state.join("metrics.db").display())), "{text}");
    assert_eq!(checked_samples(&state.join("metrics.db")), saved);
    let server = server.restart();
    let s = wait_for(&server, "a round in the restored database", |s| s["samples"].as_u64().unwrap() > saved);
    assert!(s["recovered"].is_null(), "the restored database was set aside: {s:#}");
}

/// The backup unit sees the state directory read-only (`ProtectSystem=strict`): the copy of
/// the running server's database is made all the same, through its write-ahead log and
/// index as they are. Needs root (a mount namespace of the backup's own).
#[test]
fn a_backup_that_sees_the_state_directory_read_only_as_the_unit_does_saves_the_running_servers_history() {
    if !is_root() {
        eprintln!("skipped: a read-only view of the state directory needs root");
        return;
    }
    let server = Server::with_config(Some(&fixture()), &sampling_config());
    let before = wait_for(&server, "rounds", |s| s["samples"].as_u64().unwrap() > 0)["samples"].as_u64().unwrap();
    let state = server.dir.path().join("state");
    let units = server.dir.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let backups = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && ! touch \"$1/probe\" 2>/dev/null && \
             shift && exec \"$@\"",
        )
        .arg("sh")
        .arg(&state)
        .arg(env!("CARGO_BIN_EXE_mcp-raspi"))
        .args(["backup", "--json", "--config"])
        .arg(server.config_path())
        .arg("--dest")
        .arg(backups.path())
        .arg("--units-dir")
        .arg(&units)
        .env("TEST_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TEST_VIEWER_TOKEN", VIEWER_TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(written["skipped"], json!([]), "{written}");
    let archive = Path::new(written["archive"].as_str().unwrap()).to_path_buf();
    let extracted = tempfile::tempdir().unwrap();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap());
    tar::Archive::new(gz).unpack(extracted.path()).unwrap();
    let top = archive.file_name().unwrap().to_str().unwrap().trim_end_matches(".tar.gz");
    assert!(checked_samples(&extracted.path().join(top).join("state/metrics.db")) >= before);
    server.assert_alive();
}
