//! The metrics database (`metrics.db` in the state directory) in a backup and a restore.
//!
//! The server keeps it in SQLite's write-ahead-log mode, so the file alone is not the
//! database: committed rounds may be only in `metrics.db-wal` still, and a file copied while
//! a round is written can be torn. A backup therefore takes a consistent copy with SQLite's
//! online backup API into a private directory, as a single file (no log beside it), checks
//! the copy with `PRAGMA integrity_check`, and archives it as `state/metrics.db`. A database
//! that cannot be read, or whose copy does not pass, is left out with the reason and the
//! rest of the backup goes on.
//!
//! A restore checks the staged copy the same way, and puts it back through a temporary file
//! beside the old one; the old database's write-ahead log and index are removed just before
//! the rename, because SQLite would apply a stale log to the restored file and damage it.
//! So the database must not be open while it is replaced: [`in_use`] tells.
//!
//! `metrics.db.backup` (kept before a schema migration) and `metrics.db.corrupt-*` (set
//! aside by a recovery) are not saved.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::archive::StagingDir;
use crate::metrics::{schema, DB_NAME};
use crate::update::release::Owner;
use crate::update::state::{write_atomically_then, StateError};

/// Where the copy is in the archive.
pub const ARCHIVED: &str = "state/metrics.db";

/// Files beside a database that belong to it: its write-ahead log and index, and the
/// journal of a rollback-mode transaction.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

fn side_file(db: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", db.display()))
}

/// A checked copy of the metrics database, in a private directory removed when dropped.
#[derive(Debug)]
pub struct Snapshot {
    /// The database it is a copy of.
    pub source: PathBuf,
    /// The copy.
    pub path: PathBuf,
    pub bytes: u64,
    _dir: StagingDir,
}

/// What the backup output says about the metrics database.
#[derive(Debug, Clone, Serialize)]
pub struct SavedDb {
    /// The copy's path in the archive.
    pub archived: String,
    pub source: PathBuf,
    pub bytes: u64,
}

impl Snapshot {
    pub fn saved(&self) -> SavedDb {
        SavedDb { archived: ARCHIVED.into(), source: self.source.clone(), bytes: self.bytes }
    }
}

/// A path as an SQLite URI: `file:` and the path, its bytes other than letters, digits and
/// `/-_.~` percent-encoded (`?`, `#` and `%` would be read as parts of the URI).
fn uri_of(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02x}"));
        }
    }
    uri
}

/// A file's size and modification time (seconds, nanoseconds), to tell whether it changed.
type Stamp = (u64, i64, i64);

fn stamp_of(path: &Path) -> Option<Stamp> {
    fs::metadata(path).ok().map(|m| (m.len(), m.mtime(), m.mtime_nsec()))
}

/// Opens the live database for reading, without writing anything beside it.
///
/// While the server runs, its write-ahead log and the log's index are beside the file,
/// and a reader goes through them (and sees every committed round). When there is no log,
/// the last connection closed cleanly and the file is the whole database; a reader would
/// create an empty log and index there and leave them behind, or fail in a read-only state
/// directory (the backup unit's `ProtectSystem=strict`). So then the file is read as
/// immutable, and [`copy`] checks afterwards that no log appeared and the file did not
/// change while it was read. Returns the connection and, when immutable, the file's stamp.
fn open_source(db: &Path) -> Result<(Connection, Option<Stamp>), String> {
    let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let (conn, before) = if side_file(db, "-wal").exists() {
        (Connection::open_with_flags(db, read_only), None)
    } else {
        let before = stamp_of(db).unwrap_or_default();
        let uri = format!("{}?immutable=1", uri_of(db));
        (Connection::open_with_flags(uri, read_only | OpenFlags::SQLITE_OPEN_URI), Some(before))
    };
    let conn = conn.map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(|e| e.to_string())?;
    // Opening is lazy: the first read finds out whether the database can be read.
    schema::version_of(&conn).map_err(|e| e.to_string())?;
    Ok((conn, before))
}

/// `PRAGMA integrity_check` of the database at `path`: `Ok` when SQLite answers "ok",
/// else what it found (its first lines).
pub fn integrity(path: &Path) -> Result<(), String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(|e| e.to_string())?;
    let rows: Vec<String> =
        stmt.query_map([], |r| r.get(0)).and_then(Iterator::collect).map_err(|e: rusqlite::Error| e.to_string())?;
    if rows == ["ok"] {
        return Ok(());
    }
    let mut found: Vec<&str> = rows.iter().map(String::as_str).take(3).collect();
    if rows.len() > 3 {
        found.push("…");
    }
    Err(found.join("; "))
}

/// Checks a staged copy before a restore puts it back: `Err` with what SQLite's integrity
/// check found; `Ok(Some(note))` when its schema is newer than this version's.
pub fn check_staged(path: &Path) -> Result<Option<String>, String> {
    integrity(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let version = Connection::open_with_flags(path, flags)
        .and_then(|conn| schema::version_of(&conn))
        .map_err(|e| e.to_string())?;
    let ours = schema::current();
    Ok((version > ours).then(|| {
        format!(
            "the metrics database of the backup has schema version {version}, newer than this version's ({ours}): \
             the server sets it aside (metrics.db.newer-*) when it starts, and goes on with metrics.db.backup or a \
             new database"
        )
    }))
}

/// Copies the database of `state_dir` into a new private directory under `work` and checks
/// the copy. `Ok(None)`: there is no database; `Err`: why it is left out of the backup.
pub fn copy(state_dir: &Path, work: &Path) -> Result<Option<Snapshot>, String> {
    let db = state_dir.join(DB_NAME);
    match fs::symlink_metadata(&db) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: cannot read it ({e}); it was left out", db.display())),
        Ok(meta) if !meta.is_file() => return Err(format!("{}: not a regular file; it was left out", db.display())),
        Ok(_) => {}
    }
    let left_out = |why: String| format!("{}: {why}; it was left out", db.display());
    let (conn, immutable) =
        open_source(&db).map_err(|e| left_out(format!("the metrics database cannot be read ({e})")))?;
    let dir = StagingDir::create_for(work, "backup").map_err(left_out)?;
    let path = dir.path().join(DB_NAME);
    schema::copy_to(&conn, &path).map_err(|e| left_out(format!("the metrics database cannot be copied ({e})")))?;
    drop(conn);
    if let Some(before) = immutable {
        if side_file(&db, "-wal").exists() || stamp_of(&db) != Some(before) {
            return Err(left_out(
                "the metrics database changed while it was copied (the server started?); the next backup saves it"
                    .into(),
            ));
        }
    }
    integrity(&path).map_err(|found| {
        left_out(format!(
            "the copy of the metrics database fails SQLite's integrity check ({found}); the server checks the \
             database when it starts and sets a damaged one aside"
        ))
    })?;
    let bytes = fs::metadata(&path).map(|m| m.len()).map_err(|e| left_out(format!("cannot read the copy ({e})")))?;
    Ok(Some(Snapshot { source: db, path, bytes, _dir: dir }))
}

/// Whether a process has the database at `db` open. SQLite holds a read lock on bytes
/// 0x40000002 to 0x400001ff of the file for as long as a connection in write-ahead-log
/// mode is open (and while a transaction runs in the other modes); asking whether a write
/// lock of that range would be granted, as an open file description lock, finds it, even
/// one held in this process.
///
/// This opens and closes the file: POSIX locks of this process on it are dropped when any
/// of its descriptors is closed, so it must be asked before this process opens the file
/// in any other way.
pub fn in_use(db: &Path) -> io::Result<bool> {
    use nix::fcntl::{fcntl, FcntlArg};
    let file = match fs::File::open(db) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    // SQLite's lock bytes: PENDING, RESERVED, then the 510 SHARED bytes.
    const PENDING_BYTE: i64 = 0x4000_0000;
    let mut lock = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as _,
        l_whence: nix::libc::SEEK_SET as _,
        l_start: PENDING_BYTE as _,
        l_len: 512,
        l_pid: 0,
    };
    fcntl(&file, FcntlArg::F_OFD_GETLK(&mut lock)).map_err(io::Error::from)?;
    Ok(i32::from(lock.l_type) != nix::libc::F_UNLCK)
}

/// Puts the staged copy `from` back as the database `db` (with `mode` and `owner`): written
/// beside it and synced, the old database's write-ahead log, index and journal removed,
/// then renamed over it.
pub fn put_back(db: &Path, from: &Path, mode: u32, owner: Option<Owner>) -> Result<(), String> {
    let data = fs::File::open(from).map_err(|e| format!("cannot read the staged {ARCHIVED}: {e}"))?;
    let remove_side_files = || {
        for suffix in SIDE_FILES {
            let side = side_file(db, suffix);
            match fs::remove_file(&side) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(StateError::Io { action: "remove the old database's", path: side, source: e })
                }
                _ => {}
            }
        }
        Ok(())
    };
    write_atomically_then(db, data, mode, owner, remove_side_files)
        .map_err(|e| format!("{e}; {} was not replaced", db.display()))
}

#[cfg(test)]
mod tests;
