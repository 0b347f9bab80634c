//! The metrics database in backups and restores, on installations in temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use std::os::unix::fs::PermissionsExt;

use crate::cli::backup::archive;
use crate::cli::backup::tests::{insert, members, metrics_db, rows, writer, Install};
use crate::cli::backup::{restore, run_backup, BackupArgs, Written};

fn state(install: &Install) -> PathBuf {
    install.root().join("state")
}

/// The archive read back, and the path of its metrics database when it holds one.
fn read_back(written: &Written, work: &Path) -> (archive::Staged, Option<PathBuf>) {
    let staged = archive::read_and_verify(&written.archive, work).unwrap();
    let db = staged.manifest.files().find(|e| e.path == ARCHIVED).map(|e| staged.path_of(e));
    (staged, db)
}

/// The names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn journal_mode(path: &Path) -> String {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap()
}

/// Damages a b-tree page of a closed database (its cell pointers), as a bad sector would.
fn damage_page(path: &Path, page: u64) {
    let mut bytes = fs::read(path).unwrap();
    let at = ((page - 1) * 4096) as usize;
    assert!(bytes.len() >= at + 4096, "the database has no page {page}");
    for b in &mut bytes[at + 8..at + 64] {
        *b = 0xff;
    }
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_backup_of_a_live_database_holds_every_committed_row_even_those_only_in_the_write_ahead_log() {
    let install = Install::new();
    let db = state(&install).join(DB_NAME);
    let live = writer(&db);
    // No checkpoint: what is committed from here on stays in metrics.db-wal.
    live.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
    insert(&live, 10..60);
    let raw = install.root().join("raw.db");
    fs::copy(&db, &raw).unwrap();
    assert_eq!(rows(&raw), 10, "the rows are in the log only, not in the file");
    // A round being written, not committed, while the backup runs.
    live.execute_batch("BEGIN IMMEDIATE").unwrap();
    insert(&live, 60..70);
    let beside = names(&state(&install));

    let written = install.backup();
    live.execute_batch("COMMIT").unwrap();

    let saved = written.metrics_db.as_ref().expect("the database is saved");
    assert_eq!(saved.archived, "state/metrics.db");
    assert!(written.skipped.is_empty(), "{:?}", written.skipped);
    let work = tempfile::tempdir().unwrap();
    let (staged, copy) = read_back(&written, work.path());
    let copy = copy.unwrap();
    assert_eq!(rows(&copy), 60, "every committed row, none of the uncommitted ones");
    assert_eq!(integrity(&copy), Ok(()));
    assert_eq!(journal_mode(&copy), "delete", "one file, no log beside it");
    assert_eq!(fs::metadata(&copy).unwrap().len(), saved.bytes);
    let entry = staged.manifest.files().find(|e| e.path == ARCHIVED).unwrap();
    assert_eq!(entry.size, saved.bytes);
    assert!(entry.sha256.is_some());
    let live_mode = fs::metadata(&db).unwrap().permissions().mode() & 0o7777;
    assert_eq!(entry.mode, live_mode, "saved with the live file's mode");
    assert!(staged.manifest.checksums().contains("./state/metrics.db\n"));
    assert_eq!(staged.manifest.format, archive::FORMAT);
    let listed = members(&written.archive);
    assert_eq!(listed.iter().filter(|m| m.contains("metrics.db")).count(), 1, "{listed:?}");
    // The backup wrote nothing beside the database, and its private copy is gone.
    assert_eq!(names(&state(&install)), beside);
    assert_eq!(names(&install.root().join("dest")).len(), 2, "{:?}", names(&install.root().join("dest")));
}

#[test]
fn a_stopped_servers_database_is_copied_without_leaving_files_beside_it_even_from_a_read_only_directory() {
    let install = Install::new();
    let state = state(&install);
    let beside = names(&state);
    assert!(!beside.iter().any(|n| n.ends_with("-wal")), "{beside:?}");
    let written = install.backup();
    assert_eq!(names(&state), beside, "no log or index was created beside the database");
    assert!(written.metrics_db.is_some(), "{:?}", written.skipped);

    // The backup unit sees the state directory read-only (ProtectSystem=strict).
    let read_only = if nix::unistd::geteuid().is_root() {
        let mount = |args: &[&str]| std::process::Command::new("mount").args(args).arg(&state).arg(&state).status();
        let bound = mount(&["--bind"]).is_ok_and(|s| s.success());
        bound && {
            let ro = std::process::Command::new("mount").args(["-o", "remount,bind,ro"]).arg(&state).status();
            ro.is_ok_and(|s| s.success())
        }
    } else {
        fs::set_permissions(&state, fs::Permissions::from_mode(0o555)).unwrap();
        true
    };
    let unprotect = || {
        if nix::unistd::geteuid().is_root() {
            let _ = std::process::Command::new("umount").arg(&state).status();
        } else {
            let _ = fs::set_permissions(&state, fs::Permissions::from_mode(0o755));
        }
    };
    if !read_only {
        unprotect();
        eprintln!("skipped the read-only part: cannot mount here");
        return;
    }
    assert!(fs::write(state.join("probe"), "x").is_err(), "the state directory is not read-only");
    let result = write_backup_of(&install);
    unprotect();
    let written = result.unwrap();
    assert!(written.skipped.is_empty(), "{:?}", written.skipped);
    let work = tempfile::tempdir().unwrap();
    let (_staged, copy) = read_back(&written, work.path());
    assert_eq!(rows(&copy.unwrap()), 10);
}

fn write_backup_of(install: &Install) -> Result<Written, String> {
    crate::cli::backup::write_backup(&install.places(), &install.root().join("dest"), 30)
}

#[test]
fn a_database_that_cannot_be_read_or_fails_its_integrity_check_is_left_out_and_the_rest_is_saved() {
    let install = Install::new();
    let db = state(&install).join(DB_NAME);
    fs::write(&db, "this is not a database, but a file of the same name").unwrap();
    let written = install.backup();
    assert!(written.metrics_db.is_none());
    let why = written.skipped.join("\n");
    assert!(why.contains(&format!("{}: the metrics database cannot be read", db.display())), "{why}");
    assert!(why.contains("it was left out"), "{why}");
    let work = tempfile::tempdir().unwrap();
    let (staged, copy) = read_back(&written, work.path());
    assert!(copy.is_none());
    assert!(staged.manifest.files().any(|e| e.path == "state/version.json"), "the rest is saved");
    assert_eq!(staged.manifest.skipped, written.skipped, "the manifest says why too");
    assert_eq!(staged.manifest.format, archive::FORMAT_WITHOUT_METRICS, "readable by older versions");

    // A database whose pages are damaged opens, but its copy does not pass.
    fs::remove_file(&db).unwrap();
    metrics_db(&db, 200);
    damage_page(&db, 3);
    let mut out = Vec::new();
    let args = BackupArgs {
        config: install.config(),
        dest: install.root().join("dest"),
        retention_days: 30,
        units_dir: install.root().join("units"),
        json: true,
    };
    run_backup(args, &mut out).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(json["metrics_db"].is_null(), "{json}");
    let skipped = json["skipped"].to_string();
    assert!(skipped.contains("fails SQLite's integrity check"), "{json}");
    let archive = PathBuf::from(json["archive"].as_str().unwrap());
    assert!(!members(&archive).iter().any(|m| m.contains("metrics.db")));
    // No private copy is left in the destination.
    assert!(!names(&install.root().join("dest")).iter().any(|n| n.starts_with('.')));
    assert!(db.exists(), "the damaged database is left for the server to deal with");

    // The text output says so too, and how big the database was when it is saved.
    fs::remove_file(&db).unwrap();
    metrics_db(&db, 20);
    let mut out = Vec::new();
    let args = BackupArgs {
        config: install.config(),
        dest: install.root().join("dest"),
        retention_days: 30,
        units_dir: install.root().join("units"),
        json: false,
    };
    run_backup(args, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let line = text.lines().find(|l| l.contains("metrics database: ")).unwrap_or_default();
    assert!(
        line.ends_with(" KiB, a consistent copy that passed SQLite's integrity check (state/metrics.db)"),
        "{text}"
    );
}

#[test]
fn a_restore_puts_the_database_back_and_removes_the_stale_write_ahead_log_of_the_one_it_replaces() {
    let install = Install::new();
    let db = state(&install).join(DB_NAME);
    let written = install.backup();
    // Rows written after the backup, still in the log when the server stopped: the log and
    // its index are left beside the database, as after a power cut.
    let live = writer(&db);
    live.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
    insert(&live, 10..15);
    let stale_wal = fs::read(side_file(&db, "-wal")).unwrap();
    let stale_shm = fs::read(side_file(&db, "-shm")).unwrap();
    assert!(!stale_wal.is_empty());
    drop(live);
    fs::write(side_file(&db, "-wal"), &stale_wal).unwrap();
    fs::write(side_file(&db, "-shm"), &stale_shm).unwrap();

    // What the stale log would do to the restored file if it stayed: the rows written after
    // the backup come back (or the file is damaged).
    let work = tempfile::tempdir().unwrap();
    let (_staged, copy) = read_back(&written, work.path());
    let would_be = work.path().join("would-be.db");
    fs::copy(copy.unwrap(), &would_be).unwrap();
    fs::write(side_file(&would_be, "-wal"), &stale_wal).unwrap();
    let conn = Connection::open(&would_be).unwrap();
    let count: rusqlite::Result<i64> = conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0));
    assert!(count.as_ref().ok() != Some(&10), "the stale log was not applied: {count:?}");
    drop(conn);

    let done = install.restore(&written.archive, false).unwrap();
    assert!(done.contains(&format!("replace  {}", db.display())), "{done}");
    for suffix in SIDE_FILES {
        assert!(!side_file(&db, suffix).exists(), "{suffix} is left beside the restored database");
    }
    assert_eq!(integrity(&db), Ok(()));
    assert_eq!(rows(&db), 10, "the database as it was backed up");
    assert!(!names(&state(&install)).iter().any(|n| n.starts_with('.')), "a temporary file is left");
    // The server opens it as it opens its own.
    let reopened = writer(&db);
    insert(&reopened, 10..12);
    drop(reopened);
    assert_eq!(rows(&db), 12);
}

#[test]
fn a_restore_refuses_to_replace_a_database_that_is_open_and_changes_nothing() {
    let install = Install::new();
    let db = state(&install).join(DB_NAME);
    let written = install.backup();
    insert(&writer(&db), 10..20);
    let before = install.snapshot();

    // As a running server holds it (in this process; see `in_use`).
    let live = writer(&db);
    live.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap();
    assert!(in_use(&db).unwrap());
    drop(live);
    assert!(!in_use(&db).unwrap());

    let live = writer(&db);
    live.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap();
    let e = install.restore(&written.archive, false).unwrap_err();
    assert!(e.message.contains(&format!("{} is open (is mcp-raspi-server running?)", db.display())), "{e}");
    assert!(
        e.message.contains("sudo systemctl stop mcp-raspi-server") && e.message.contains("nothing was changed"),
        "{e}"
    );
    let count: i64 = live.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 20);
    drop(live);
    assert_eq!(install.snapshot(), before, "a refused restore changed something");

    let live = writer(&db);
    live.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap();
    let plan = install.restore(&written.archive, true).unwrap();
    assert!(plan.contains("is open (is mcp-raspi-server running?)"), "{plan}");
    drop(live);

    // Closed, it is replaced.
    install.restore(&written.archive, false).unwrap();
    assert_eq!(rows(&db), 10);
    assert!(!in_use(&Path::new("/nonexistent").join(DB_NAME)).unwrap());
}

#[test]
fn only_the_metrics_database_is_restored_with_only_metrics_and_nothing_else_changes() {
    let install = Install::new();
    let db = state(&install).join(DB_NAME);
    let written = install.backup();
    // Since the backup: more rounds, a new audit record, a changed configuration.
    insert(&writer(&db), 10..30);
    fs::write(install.root().join("log/audit.log"), "{\"tool\":\"a\"}\n{\"tool\":\"c\"}\n").unwrap();
    let config = fs::read_to_string(install.config()).unwrap() + "# changed since\n";
    fs::write(install.config(), &config).unwrap();
    let mut others = install.snapshot();
    others.retain(|(p, _, _)| !p.starts_with(state(&install)));

    let plan = install.restore_only(&written.archive, true, Some(restore::Part::Metrics)).unwrap();
    assert!(plan.contains("0 new, 1 replaced, 1 unchanged") && plan.contains("replace  "), "{plan}");
    let done = install.restore_only(&written.archive, false, Some(restore::Part::Metrics)).unwrap();
    assert!(done.contains(&format!("replace  {}", db.display())), "{done}");
    assert_eq!(rows(&db), 10);
    let mut after = install.snapshot();
    after.retain(|(p, _, _)| !p.starts_with(state(&install)));
    assert_eq!(after, others, "something else than the metrics database was restored");
    assert_eq!(fs::read_to_string(state(&install).join("version.json")).unwrap(), r#"{"current_version":"0.1.0"}"#);

    // A backup that left the database out has none to restore.
    fs::write(&db, "not a database").unwrap();
    let without = install.backup();
    let e = install.restore_only(&without.archive, false, Some(restore::Part::Metrics)).unwrap_err();
    assert!(e.message.contains("holds no metrics database (it was left out: "), "{e}");
    assert!(e.message.ends_with("nothing was changed"), "{e}");
}

#[test]
fn a_staged_copy_is_checked_before_a_restore_puts_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    metrics_db(&good, 5);
    assert_eq!(check_staged(&good), Ok(None));
    let damaged = dir.path().join("damaged.db");
    metrics_db(&damaged, 200);
    damage_page(&damaged, 3);
    let e = check_staged(&damaged).unwrap_err();
    assert!(!e.is_empty() && e != "ok", "{e}");
    // A database of a newer version than this one: the server will set it aside.
    let newer = dir.path().join("newer.db");
    let conn = Connection::open(&newer).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE schema_version (version TEXT PRIMARY KEY); INSERT INTO schema_version VALUES ('{}')",
        schema::current() + 1
    ))
    .unwrap();
    drop(conn);
    let note = check_staged(&newer).unwrap().unwrap();
    assert!(note.contains("newer than this version's") && note.contains("metrics.db.newer-"), "{note}");
}

#[test]
fn paths_are_escaped_in_sqlite_uris() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a?b#c%d e");
    fs::create_dir(&state).unwrap();
    metrics_db(&state.join(DB_NAME), 3);
    let snapshot = copy(&state, dir.path()).unwrap().expect("copied through its URI");
    assert_eq!(rows(&snapshot.path), 3);
    assert_eq!(uri_of(Path::new("/var/lib/mcp-raspi/metrics.db")), "file:/var/lib/mcp-raspi/metrics.db");
    assert_eq!(uri_of(Path::new("/tmp/a?b#c%d e/é")), "file:/tmp/a%3fb%23c%25d%20e/%c3%a9");
}
