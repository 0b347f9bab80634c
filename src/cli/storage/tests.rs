//! Tests of `storage-check` on installations laid out in temporary directories.

#![allow(clippy::unwrap_used)]

use super::*;

fn mount(used_percent: f64) -> disk::Mount {
    disk::Mount {
        device: "/dev/mmcblk0p2".into(),
        mount_point: "/".into(),
        fs_type: "ext4".into(),
        read_only: false,
        total_bytes: 1000 * MIB,
        used_bytes: (used_percent * 10.0) as u64 * MIB,
        available_bytes: 1000 * MIB - (used_percent * 10.0) as u64 * MIB,
        used_percent,
    }
}

/// A configuration with everything under `dir` and small limits: logs 1 MiB × 2,
/// downloads 1 MiB, one release kept.
fn config(dir: &Path) -> Config {
    config_with(dir, "")
}

/// [`config`] with more settings (YAML at the top level).
fn config_with(dir: &Path, more: &str) -> Config {
    let yaml = format!(
        "config_version: \"1.2\"\nlogging:\n  app_path: {0}/log/app.log\n  audit_path: {0}/log/audit.log\n  \
         file:\n    max_size_mb: 1\n    backup_count: 1\npaths:\n  state_dir: {0}/state\n  install_dir: {0}/opt\n\
         updates:\n  keep_versions: 1\n  max_download_mb: 1\n{more}",
        dir.display()
    );
    Config::from_yaml(&yaml, "test").unwrap()
}

fn write(path: &Path, bytes: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![b'x'; bytes as usize]).unwrap();
}

fn item<'a>(report: &'a StorageReport, name: &str) -> &'a Item {
    report.items.iter().find(|i| i.name == name).unwrap()
}

#[test]
fn the_copies_of_a_log_are_told_apart_by_name() {
    assert_eq!(log_copy("app.log", "app.log"), Some(LogCopy::Numbered));
    assert_eq!(log_copy("app.log", "app.log.12"), Some(LogCopy::Numbered));
    assert_eq!(log_copy("app.log", "app.log-20261201"), Some(LogCopy::Dated));
    assert_eq!(log_copy("app.log", "app.log-20261201.gz"), Some(LogCopy::Dated));
    for other in ["app.log.", "app.log.1.tmp", "app.logs", "app.log-", "audit.log", "xapp.log"] {
        assert_eq!(log_copy("app.log", other), None, "{other}");
    }
}

#[test]
fn a_fresh_installation_is_within_every_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let report = build_report(&config, Path::new("/etc/mcp-raspi/config.yml"), Ok(mount(41.0)));
    assert_eq!(report.exit_status, 0, "{:?}", report.problems);
    assert!(report.problems.is_empty() && report.suggestions.is_empty() && report.largest_files.is_empty());
    let names: Vec<&str> = report.items.iter().map(|i| i.name).collect();
    assert_eq!(
        names,
        [
            "app log",
            "app log, logrotate copies",
            "audit log",
            "audit log, logrotate copies",
            "metrics database",
            "metrics database, damaged copies",
            "releases",
            "downloads"
        ]
    );
    let metrics = item(&report, "metrics database");
    assert_eq!(metrics.note.as_deref(), Some("not present"));
    // The default metrics.retention.max_size_mb (100), and the write-ahead log's allowance.
    let limit = metrics.limit.as_ref().unwrap();
    assert_eq!(
        (limit.value, limit.setting.as_str()),
        (104 * MIB, "metrics.retention.max_size_mb + 4.0 MiB of write-ahead log")
    );
    let damaged = item(&report, "metrics database, damaged copies");
    assert_eq!((damaged.count, damaged.bytes, damaged.note.is_none()), (0, 0, true));
    assert_eq!(item(&report, "app log").limit.as_ref().unwrap().value, 2 * MIB);
}

#[test]
fn logs_releases_and_downloads_over_their_limits_are_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let log = dir.path().join("log");
    write(&log.join("app.log"), 3 * MIB / 2);
    write(&log.join("app.log.1"), MIB);
    write(&log.join("app.log-20261124.gz"), 1000);
    write(&log.join("audit.log"), 10);
    write(&log.join("audit.log-20261201"), 20);
    write(&dir.path().join("state/metrics.db"), 4096);
    write(&dir.path().join("state/metrics.db-wal"), 100);
    write(&dir.path().join("state/downloads/mcp-raspi_0.4.0_arm64.deb.part"), 2 * MIB);
    for version in ["0.1.0", "0.2.0", "0.3.0"] {
        write(&dir.path().join(format!("opt/releases/{version}/bin/mcp-raspi-server")), 1000);
    }
    let report = build_report(&config, Path::new("/etc/mcp-raspi/config.yml"), Ok(mount(50.0)));
    assert_eq!(report.exit_status, EXIT_OVER);
    let app = item(&report, "app log");
    assert_eq!((app.count, app.bytes, app.over), (2, 5 * MIB / 2, true));
    let dated = item(&report, "app log, logrotate copies");
    assert_eq!((dated.count, dated.bytes, dated.over, dated.limit.is_none()), (1, 1000, false, true));
    assert_eq!((item(&report, "audit log").bytes, item(&report, "audit log, logrotate copies").bytes), (10, 20));
    let metrics = item(&report, "metrics database");
    assert_eq!((metrics.count, metrics.bytes, metrics.over), (2, 4196, false));
    let releases = item(&report, "releases");
    assert_eq!((releases.count, releases.bytes, releases.over), (3, 3000, true));
    assert_eq!(releases.note.as_deref(), Some("pruning would remove 0.1.0, 0.2.0"));
    assert!(item(&report, "downloads").over);
    assert_eq!(
        report.problems,
        [
            "app log is over its limit: 2.5 MiB > 2.0 MiB",
            "releases is over its limit: 3 releases (2.9 KiB) > 1 release",
            "downloads is over its limit: 2.0 MiB > 1.0 MiB",
        ]
    );
    let suggestions = report.suggestions.join("\n");
    assert!(suggestions.contains("/etc/logrotate.d/mcp-raspi"), "{suggestions}");
    assert!(suggestions.contains(&format!("release prune --keep 1 --root {}/opt", dir.path().display())));
    assert!(suggestions.contains("leftover downloads") && !suggestions.contains("METRICS"), "{suggestions}");
    let mut table = Vec::new();
    write_table(&report, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.starts_with("Root file system (/dev/mmcblk0p2): 50.0% used, 500.0 MiB of 1000.0 MiB"), "{table}");
    assert!(table.contains("\nwhat ") && table.contains("OVER") && table.contains("Suggested cleanup:"), "{table}");
}

#[test]
fn the_metrics_database_and_its_log_are_held_to_metrics_retention_max_size_mb() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB, and 4 MiB of write-ahead log on top: 5 MiB.
    let config = config_with(dir.path(), "metrics:\n  retention:\n    max_size_mb: 1\n");
    let state = dir.path().join("state");
    write(&state.join("metrics.db"), 4 * MIB);
    write(&state.join("metrics.db-wal"), MIB);
    // The log's index is not data the setting bounds.
    write(&state.join("metrics.db-shm"), 32 * 1024);
    let report = build_report(&config, Path::new("/etc/mcp-raspi/config.yml"), Ok(mount(50.0)));
    let metrics = item(&report, "metrics database");
    assert_eq!((metrics.count, metrics.bytes, metrics.over), (2, 5 * MIB, false));
    assert_eq!(metrics.limit.as_ref().unwrap().value, 5 * MIB);
    assert_eq!(report.exit_status, 0, "{:?}", report.problems);
    assert!(report.suggestions.is_empty(), "{:?}", report.suggestions);

    write(&state.join("metrics.db"), 6 * MIB);
    let report = build_report(&config, Path::new("/etc/mcp-raspi/config.yml"), Ok(mount(50.0)));
    let metrics = item(&report, "metrics database");
    assert_eq!((metrics.bytes, metrics.over), (7 * MIB, true));
    assert_eq!(
        (report.exit_status, report.problems.as_slice()),
        (EXIT_OVER, &["metrics database is over its limit: 7.0 MiB > 5.0 MiB".to_string()][..])
    );
    let suggestion = report.suggestions.join("\n");
    for named in [
        "metrics.retention.max_size_mb",
        "metrics.retention.max_age_days",
        "MCP_RASPI_METRICS__RETENTION__MAX_AGE_DAYS",
        "/etc/mcp-raspi/config.yml",
    ] {
        assert!(suggestion.contains(named), "{named} missing from {suggestion}");
    }
    let mut table = Vec::new();
    write_table(&report, &mut table).unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(
        table.contains("metrics database from metrics.retention.max_size_mb + 4.0 MiB of write-ahead log"),
        "{table}"
    );
}

#[test]
fn damaged_metrics_databases_left_by_a_recovery_are_counted_with_what_to_do_about_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let state = dir.path().join("state");
    write(&state.join("metrics.db"), 8192);
    write(&state.join("metrics.db.corrupt-20261203T134500Z"), 3000);
    write(&state.join("metrics.db.corrupt-20261203T134500Z-wal"), 100);
    // The copy kept before a migration is not a damaged one.
    write(&state.join("metrics.db.backup"), 500);
    let report = build_report(&config, Path::new("/etc/mcp-raspi/config.yml"), Ok(mount(50.0)));
    let damaged = item(&report, "metrics database, damaged copies");
    assert_eq!((damaged.count, damaged.bytes, damaged.over, damaged.limit.is_none()), (2, 3100, false, true));
    assert_eq!(damaged.path, format!("{}/metrics.db.corrupt-*", state.display()));
    assert!(damaged.note.as_deref().unwrap().contains("delete them once looked at"), "{:?}", damaged.note);
    assert_eq!(item(&report, "metrics database").bytes, 8192);
    // Nothing is over a limit, but the leftovers are worth a line.
    assert_eq!(report.exit_status, 0);
    assert_eq!(report.suggestions.len(), 1, "{:?}", report.suggestions);
    assert!(
        report.suggestions[0].contains(&format!("sudo rm {}/metrics.db.corrupt-*", state.display())),
        "{:?}",
        report.suggestions
    );
    let json = serde_json::to_value(&report).unwrap();
    let listed =
        json["items"].as_array().unwrap().iter().find(|i| i["name"] == "metrics database, damaged copies").unwrap();
    assert_eq!(listed["bytes"], 3100);
}

#[test]
fn the_root_file_system_warns_past_80_percent_and_lists_the_largest_files_past_90() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    write(&dir.path().join("log/app.log"), 300);
    write(&dir.path().join("state/metrics.db"), 900);
    let at = |percent| build_report(&config, Path::new("c.yml"), Ok(mount(percent)));
    assert_eq!(at(80.0).exit_status, 0);
    let warning = at(80.1);
    assert_eq!((warning.exit_status, warning.root.as_ref().unwrap().state), (EXIT_OVER, "warning"));
    assert_eq!(warning.problems, ["the root file system is 80.1% full (over 80%)"]);
    assert!(warning.largest_files.is_empty() && warning.suggestions.is_empty());
    let critical = at(90.5);
    assert_eq!(critical.root.as_ref().unwrap().state, "critical");
    let largest: Vec<(String, u64)> = critical.largest_files.iter().map(|f| (f.path.clone(), f.bytes)).collect();
    let under = |p: &str| dir.path().join(p).display().to_string();
    assert_eq!(largest, [(under("state/metrics.db"), 900), (under("log/app.log"), 300)]);
    // All of the runbook's suggestions.
    assert_eq!(critical.suggestions.len(), 3, "{:?}", critical.suggestions);
    assert!(critical.suggestions[0].contains("MCP_RASPI_METRICS__RETENTION__MAX_AGE_DAYS"));
    let json = serde_json::to_value(&critical).unwrap();
    assert_eq!(json["root"]["state"], "critical");
    assert_eq!(json["exit_status"], 1);
    assert_eq!(json["items"][0]["limit"]["unit"], "bytes");
    let unknown = build_report(&config, Path::new("c.yml"), Err("no storage file system at /".into()));
    assert_eq!(serde_json::to_value(&unknown).unwrap()["root_error"], "no storage file system at /");
}

#[test]
fn sizes_are_written_in_binary_units() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1023), "1023 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(5 * MIB / 2), "2.5 MiB");
    assert_eq!(human_bytes(3 << 30), "3.0 GiB");
}
