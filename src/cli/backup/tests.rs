#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

/// An installation under a temporary directory: configuration with secrets, state (with a
/// metrics database of 10 rows, and the copies kept beside it), logs and a drop-in of the
/// server's unit.
pub(super) struct Install {
    dir: tempfile::TempDir,
}

/// A metrics database in write-ahead-log mode, as the server keeps it, with a table `t` of
/// `rows` rows; closed.
pub(super) fn metrics_db(path: &Path, rows: i64) {
    let conn = writer(path);
    conn.execute_batch("CREATE TABLE IF NOT EXISTS t (i INTEGER NOT NULL, pad TEXT NOT NULL)").unwrap();
    insert(&conn, 0..rows);
}

/// A connection to `path` set up as the server's.
pub(super) fn writer(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    crate::metrics::store::configure(&conn, std::time::Duration::from_secs(2)).unwrap();
    conn
}

/// Inserts rows `range` into `t`, committed.
pub(super) fn insert(conn: &rusqlite::Connection, range: std::ops::Range<i64>) {
    for i in range {
        conn.execute("INSERT INTO t (i, pad) VALUES (?1, ?2)", rusqlite::params![i, "x".repeat(200)]).unwrap();
    }
}

/// The rows of `t` in the database at `path`.
pub(super) fn rows(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap()
}

impl Install {
    pub(super) fn new() -> Install {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in ["etc/keys", "state/downloads", "log", "units/mcp-raspi-server.service.d", "dest"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let config = format!(
            "config_version: \"1.2\"\npaths:\n  state_dir: {0}/state\n  install_dir: {0}/opt\nlogging:\n  app_path: {0}/log/app.log\n  audit_path: {0}/log/audit.log\n",
            root.display()
        );
        fs::write(root.join("etc/config.yml"), config).unwrap();
        fs::write(root.join("etc/secrets.env"), "MCP_RASPI_ADMIN_TOKEN=0123456789abcdef0123\n").unwrap();
        fs::set_permissions(root.join("etc/secrets.env"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(root.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(root.join("etc/keys/release.pub"), "key").unwrap();
        fs::write(root.join("state/version.json"), r#"{"current_version":"0.1.0"}"#).unwrap();
        fs::write(root.join("state/downloads/mcp-raspi.deb"), "not saved").unwrap();
        metrics_db(&root.join("state/metrics.db"), 10);
        fs::write(root.join("state/metrics.db.backup"), "kept before a migration").unwrap();
        fs::write(root.join("state/metrics.db.corrupt-20261203T134500Z"), "set aside by a recovery").unwrap();
        fs::write(root.join("log/audit.log"), "{\"tool\":\"a\"}\n").unwrap();
        fs::write(root.join("log/audit.log.1"), "{\"tool\":\"b\"}\n").unwrap();
        fs::write(root.join("log/app.log"), "{}\n").unwrap();
        fs::write(root.join("log/other.log"), "not ours\n").unwrap();
        fs::write(root.join("units/mcp-raspi-server.service.d/10-port.conf"), "[Service]\n").unwrap();
        fs::write(root.join("units/nginx.service"), "[Unit]\n").unwrap();
        Install { dir }
    }

    pub(super) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(super) fn config(&self) -> PathBuf {
        self.root().join("etc/config.yml")
    }

    pub(super) fn places(&self) -> Places {
        let config = load_config(&self.config()).unwrap();
        Places::of(&self.config(), &config, &self.root().join("units"))
    }

    pub(super) fn backup(&self) -> Written {
        write_backup(&self.places(), &self.root().join("dest"), 30).unwrap()
    }

    pub(super) fn restore(&self, archive: &Path, dry_run: bool) -> Result<String, CliError> {
        self.restore_only(archive, dry_run, None)
    }

    /// [`Install::restore`] of a part of the archive (`--only`).
    pub(super) fn restore_only(
        &self,
        archive: &Path,
        dry_run: bool,
        only: Option<restore::Part>,
    ) -> Result<String, CliError> {
        let args = RestoreArgs {
            only,
            archive: archive.to_path_buf(),
            dry_run,
            config: self.config(),
            units_dir: self.root().join("units"),
            no_restart: true,
            health_timeout: 1,
            json: false,
        };
        let mut out = Vec::new();
        run_restore(args, &mut out).map(|()| String::from_utf8(out).unwrap())
    }

    /// Every file under the installation but the backups, with its mode and contents.
    pub(super) fn snapshot(&self) -> Vec<(PathBuf, u32, Vec<u8>)> {
        let mut all = Vec::new();
        let mut stack = vec![self.root().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let meta = e.metadata().unwrap();
                if e.path().starts_with(self.root().join("dest")) {
                    continue;
                }
                let mode = meta.permissions().mode() & 0o7777;
                if meta.is_dir() {
                    stack.push(e.path());
                    all.push((e.path(), mode, Vec::new()));
                } else {
                    all.push((e.path(), mode, fs::read(e.path()).unwrap()));
                }
            }
        }
        all.sort();
        all
    }
}

pub(super) fn members(archive: &Path) -> Vec<String> {
    let file = fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

/// The archive with `edit` applied to the bytes of the member whose path ends with `name`.
fn tampered(archive: &Path, name: &str, edit: impl Fn(&mut Vec<u8>)) -> PathBuf {
    let file = fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let out = archive.with_file_name("tampered.tar.gz");
    let gz = flate2::write::GzEncoder::new(fs::File::create(&out).unwrap(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if path.to_string_lossy().ends_with(name) {
            edit(&mut data);
        }
        let mut header = entry.header().clone();
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, &path, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap().flush().unwrap();
    out
}

#[test]
fn a_backup_holds_configuration_secrets_state_logs_and_units_with_a_manifest() {
    let install = Install::new();
    let written = install.backup();
    let name = written.archive.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("mcp-raspi-") && name.ends_with(".tar.gz"), "{name}");
    assert_eq!(fs::metadata(&written.archive).unwrap().permissions().mode() & 0o777, 0o600, "it holds secrets");
    assert_eq!(written.current_version.as_deref(), Some("0.1.0"));
    let top = name.trim_end_matches(".tar.gz");
    let listed = members(&written.archive);
    for want in [
        "config/config.yml",
        "config/secrets.env",
        "config/keys/release.pub",
        "state/version.json",
        "state/metrics.db",
        "logs/audit.log",
        "logs/audit.log.1",
        "logs/app.log",
        "systemd/mcp-raspi-server.service.d/10-port.conf",
        "system-info.txt",
        "MANIFEST.json",
        "checksums.sha256",
    ] {
        assert!(listed.contains(&format!("{top}/{want}")), "{want} missing from {listed:?}");
    }
    for not in ["downloads", "metrics.db-", "metrics.db.", "other.log", "nginx.service"] {
        assert!(!listed.iter().any(|m| m.contains(not)), "{not} saved: {listed:?}");
    }
    // Nothing but the archive and the link to the newest one is left in the destination.
    let mut left: Vec<_> = fs::read_dir(install.root().join("dest")).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, vec![std::ffi::OsString::from(LATEST), written.archive.file_name().unwrap().to_os_string()]);
    let latest = install.root().join("dest").join(LATEST);
    assert_eq!(fs::canonicalize(&latest).unwrap(), fs::canonicalize(&written.archive).unwrap());
}

#[test]
fn a_restore_puts_back_what_was_lost_with_its_modes_and_a_dry_run_changes_nothing() {
    let install = Install::new();
    let before = install.snapshot();
    let written = install.backup();
    fs::remove_file(install.root().join("etc/secrets.env")).unwrap();
    fs::remove_dir_all(install.root().join("state")).unwrap();
    fs::write(install.root().join("log/audit.log"), "").unwrap();
    fs::set_permissions(install.root().join("etc"), fs::Permissions::from_mode(0o755)).unwrap();
    let damaged = install.snapshot();

    let plan = install.restore(&written.archive, true).unwrap();
    assert!(plan.starts_with("would restore"), "{plan}");
    assert!(plan.contains("secrets.env") && plan.contains("replace") && plan.contains("audit.log"), "{plan}");
    assert_eq!(install.snapshot(), damaged, "a dry run changed something");

    // The runbook's way: the newest backup by its link.
    let done = install.restore(&install.root().join("dest").join(LATEST), false).unwrap();
    assert!(done.starts_with("restored"), "{done}");
    let mut after = install.snapshot();
    // The downloads directory and the copies beside the metrics database were not saved; the
    // database itself comes back as a copy (one file, its own bytes), checked below.
    let db = install.root().join("state/metrics.db");
    let unsaved = |p: &PathBuf| p.to_string_lossy().contains("downloads") || p.to_string_lossy().contains("metrics.db");
    let db_mode = |files: &[(PathBuf, u32, Vec<u8>)]| files.iter().find(|(p, _, _)| *p == db).map(|(_, mode, _)| *mode);
    assert_eq!(db_mode(&after), db_mode(&before));
    after.retain(|(p, _, _)| !unsaved(p));
    let mut expected = before.clone();
    expected.retain(|(p, _, _)| !unsaved(p));
    // Staging directories are gone, nothing half-written is left beside the files.
    assert_eq!(after, expected);
    assert_eq!(rows(&db), 10);
    assert_eq!(metrics::integrity(&db), Ok(()));
}

#[test]
fn a_corrupt_truncated_or_foreign_archive_changes_nothing_and_says_why() {
    let install = Install::new();
    let written = install.backup();
    fs::write(install.root().join("etc/config.yml.local"), "mine").unwrap();
    let before = install.snapshot();

    let changed = tampered(&written.archive, "config/secrets.env", |d| d[0] ^= 1);
    let e = install.restore(&changed, false).unwrap_err();
    assert!(e.message.contains("config/secrets.env does not match its checksum"), "{e}");
    assert!(e.message.contains("nothing was changed"), "{e}");

    let listed_twice = tampered(&written.archive, "MANIFEST.json", |d| {
        let text =
            String::from_utf8(d.clone()).unwrap().replace("\"product\": \"mcp-raspi\"", "\"product\": \"other\"");
        *d = text.into_bytes();
    });
    let e = install.restore(&listed_twice, false).unwrap_err();
    assert!(e.message.contains("belongs to \"other\""), "{e}");

    let bytes = fs::read(&written.archive).unwrap();
    let truncated = install.root().join("dest/truncated.tar.gz");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = install.restore(&truncated, false).unwrap_err();
    assert!(e.message.contains("truncated or corrupt"), "{e}");

    let foreign = install.root().join("dest/foreign.tar.gz");
    let gz = flate2::write::GzEncoder::new(fs::File::create(&foreign).unwrap(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    builder.append_data(&mut header, "backup/etc/passwd", &b"x:1"[..]).unwrap();
    builder.into_inner().unwrap().finish().unwrap();
    let e = install.restore(&foreign, false).unwrap_err();
    assert!(e.message.contains("no MANIFEST.json"), "{e}");

    let e = install.restore(&install.root().join("dest/missing.tar.gz"), false).unwrap_err();
    assert!(e.message.contains("does not exist"), "{e}");
    let not_gzip = install.root().join("dest/text.tar.gz");
    fs::write(&not_gzip, "hello").unwrap();
    assert!(install.restore(&not_gzip, false).is_err());

    assert_eq!(install.snapshot(), before, "a refused archive changed something");
}

#[test]
fn backups_taken_within_one_second_get_names_of_their_own() {
    let install = Install::new();
    let names: Vec<PathBuf> = (0..3).map(|_| install.backup().archive).collect();
    assert!(names[0] != names[1] && names[1] != names[2] && names[0] != names[2], "{names:?}");
    let latest = fs::canonicalize(install.root().join("dest").join(LATEST)).unwrap();
    assert_eq!(latest, fs::canonicalize(&names[2]).unwrap());
}

#[test]
fn old_backups_are_removed_after_the_retention_period_and_others_files_are_left() {
    let install = Install::new();
    let dest = install.root().join("dest");
    let old = dest.join("mcp-raspi-pi-20200101-000000.tar.gz");
    let recent = dest.join("mcp-raspi-pi-20261201-000000.tar.gz");
    let foreign = dest.join("photos-20200101.tar.gz");
    for p in [&old, &recent, &foreign] {
        fs::write(p, "x").unwrap();
    }
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(40 * 86_400);
    for p in [&old, &foreign] {
        fs::File::options().write(true).open(p).unwrap().set_modified(long_ago).unwrap();
    }
    let written = install.backup();
    assert_eq!(written.removed, vec![old.clone()]);
    assert!(!old.exists() && recent.exists() && foreign.exists() && written.archive.exists());
    // 0 keeps everything.
    fs::write(&old, "x").unwrap();
    fs::File::options().write(true).open(&old).unwrap().set_modified(long_ago).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let kept = write_backup(&install.places(), &dest, 0).unwrap();
    assert!(kept.removed.is_empty() && old.exists());
}

#[test]
fn a_destination_without_space_keeps_no_partial_archive() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let install = Install::new();
    // A log larger than the destination, which is a 64 KiB tmpfs.
    let mut noise = vec![0u8; 512 * 1024];
    getrandom::fill(&mut noise).unwrap();
    fs::write(install.root().join("log/audit.log.2"), &noise).unwrap();
    let dest = install.root().join("small");
    fs::create_dir(&dest).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dest)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let result = write_backup(&install.places(), &dest, 30);
    let left: Vec<_> = fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name()).collect();
    let _ = std::process::Command::new("umount").arg(&dest).status();
    let e = result.unwrap_err();
    assert!(e.contains("no space left") && e.contains("--dest"), "{e}");
    assert!(left.is_empty(), "left behind: {left:?}");
}
