//! `metrics.db`: opening it (checked, migrated, recovered when damaged), writing a round,
//! and retention.

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode};

use super::chunk::{Chunk, SPAN_SECONDS};
use super::collect::{Reading, Unit};
use super::schema;

/// Why a round or a retention pass could not be written.
#[derive(Debug)]
pub enum WriteError {
    /// The file system is full.
    DiskFull(String),
    /// Another process holds the database (a backup, `sqlite3` in a shell).
    Busy(String),
    /// The database is damaged.
    Corrupt(String),
    Other(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::DiskFull(m) | WriteError::Busy(m) | WriteError::Corrupt(m) | WriteError::Other(m) => {
                f.write_str(m)
            }
        }
    }
}

impl From<rusqlite::Error> for WriteError {
    fn from(e: rusqlite::Error) -> WriteError {
        let message = e.to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => WriteError::DiskFull(message),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => WriteError::Busy(message),
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => WriteError::Corrupt(message),
            _ => WriteError::Other(message),
        }
    }
}

/// What the write-ahead log is cut back to after a checkpoint. SQLite checkpoints it at
/// about this size (1000 pages of 4 KiB), so a database in use keeps a log of about this
/// much at most beside it.
pub const WAL_LIMIT_BYTES: u64 = 4 * 1024 * 1024;

/// Sets a connection up: write-ahead log (readers never wait for the sampler), `NORMAL`
/// syncing (a power cut may lose the last rounds, never the database), a small page cache.
pub fn configure(conn: &Connection, busy: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -256;
         PRAGMA journal_size_limit = {WAL_LIMIT_BYTES};"
    ))
}

/// A damaged or foreign database that was moved aside and replaced by a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub moved_to: PathBuf,
    pub reason: String,
}

/// Counts kept up to date as rounds are written and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub samples: u64,
    /// Start of the oldest chunk kept.
    pub oldest: Option<i64>,
    /// Time of the newest sample.
    pub newest: Option<i64>,
}

/// What one retention pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub deleted_samples: u64,
    pub released_pages: u64,
    pub took: Duration,
}

/// The writer of `metrics.db`.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    series: HashMap<String, (i64, Unit)>,
    open: HashMap<i64, Chunk>,
    /// Bytes of a page, fixed when the database was made.
    page_size: u64,
    pub totals: Totals,
}

/// Seconds of a time, for file names: `20261203T134500Z`.
fn stamp() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    t.replace(['-', ':'], "")
}

/// Moves a database and its write-ahead files aside under `<name>.<what>-<stamp>`.
fn move_aside(path: &Path, what: &str) -> std::io::Result<PathBuf> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let aside = path.with_file_name(format!("{name}.{what}-{}", stamp()));
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            std::fs::rename(&side, PathBuf::from(format!("{}{suffix}", aside.display())))?;
        }
    }
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

/// Why a database could not be opened.
enum OpenError {
    /// It is damaged or not a database: it can be set aside.
    Damaged(String),
    /// It cannot be reached (permissions, a missing directory): setting it aside would not help.
    Unusable(String),
}

impl OpenError {
    fn from_sqlite(e: rusqlite::Error) -> OpenError {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => OpenError::Damaged(e.to_string()),
            _ => OpenError::Unusable(e.to_string()),
        }
    }

    fn message(self) -> String {
        match self {
            OpenError::Damaged(m) | OpenError::Unusable(m) => m,
        }
    }
}

/// Opens a database and checks it.
fn open_checked(path: &Path) -> Result<Connection, OpenError> {
    let conn = Connection::open(path).map_err(OpenError::from_sqlite)?;
    configure(&conn, Duration::from_secs(2)).map_err(OpenError::from_sqlite)?;
    let verdict: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(OpenError::from_sqlite)?;
    if verdict != "ok" {
        return Err(OpenError::Damaged(format!("integrity check: {verdict}")));
    }
    Ok(conn)
}

impl Store {
    /// Opens `path`, creating it when missing. A database that fails its integrity check,
    /// or that SQLite cannot read, is moved aside and a new one created; one written by a
    /// newer build is replaced by the copy kept before its migration, when there is one.
    pub fn open(path: &Path, migrations: &[schema::Migration]) -> Result<(Store, Option<Recovered>), String> {
        let backup = backup_path(path);
        let mut recovered = None;
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|e| format!("cannot create the state directory {}: {e}", dir.display()))?;
        }
        let mut conn = match open_checked(path) {
            Ok(conn) => conn,
            Err(OpenError::Damaged(reason)) => {
                let moved_to = move_aside(path, "corrupt")
                    .map_err(|e| format!("{} is damaged ({reason}) and cannot be moved aside: {e}", path.display()))?;
                recovered = Some(Recovered { moved_to, reason });
                open_checked(path).map_err(OpenError::message)?
            }
            Err(OpenError::Unusable(reason)) => return Err(format!("cannot open {}: {reason}", path.display())),
        };
        let target = migrations.last().map_or(0, |m| m.version);
        if schema::version_of(&conn).map_err(|e| e.to_string())? > target {
            drop(conn);
            let older = open_checked(&backup).ok().filter(|c| schema::version_of(c).is_ok_and(|v| v <= target));
            let reason = format!("it was written by a newer version (schema newer than {target})");
            let moved_to =
                move_aside(path, "newer").map_err(|e| format!("cannot move {} aside: {e}", path.display()))?;
            if let Some(c) = older {
                drop(c);
                std::fs::rename(&backup, path).map_err(|e| format!("cannot restore {}: {e}", backup.display()))?;
            }
            recovered = Some(Recovered { moved_to, reason });
            conn = open_checked(path).map_err(OpenError::message)?;
        }
        schema::migrate(&mut conn, migrations, &backup)?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(|e| e.to_string())?;
        let mut store = Store {
            page_size: page_size.max(0) as u64,
            conn,
            path: path.to_path_buf(),
            series: HashMap::new(),
            open: HashMap::new(),
            totals: Totals::default(),
        };
        store.load().map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok((store, recovered))
    }

    /// Reads the series, the totals, and the chunks still open (started within the hour).
    fn load(&mut self) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare("SELECT id, name, unit FROM series")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        for row in rows {
            let (id, name, unit) = row?;
            if let Some(unit) = Unit::from_name(&unit) {
                self.series.insert(name, (id, unit));
            }
        }
        drop(stmt);
        let (samples, oldest, newest_start): (Option<i64>, Option<i64>, Option<i64>) =
            self.conn.query_row("SELECT SUM(n), MIN(start), MAX(start) FROM samples", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        self.totals = Totals { samples: samples.unwrap_or(0).max(0) as u64, oldest, newest: None };
        if let Some(newest_start) = newest_start {
            let mut stmt = self.conn.prepare("SELECT start, series, data FROM samples WHERE start > ?1")?;
            let rows = stmt.query_map([newest_start - SPAN_SECONDS], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Vec<u8>>(2)?))
            })?;
            for row in rows {
                let (start, series, data) = row?;
                // A damaged chunk is left as it is and a new one started after it.
                if let Ok(chunk) = Chunk::open(start, data) {
                    let last = chunk.last().map(|(t, _)| t);
                    self.totals.newest = self.totals.newest.max(last);
                    let keep = self.open.get(&series).is_none_or(|c| c.start < start);
                    if keep {
                        self.open.insert(series, chunk);
                    }
                }
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// The series' names, sorted.
    pub fn series_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.series.keys().cloned().collect();
        names.sort();
        names
    }

    /// Writes a round taken at `t` (seconds since the epoch) in one transaction. On failure
    /// nothing changes, in the database or here.
    pub fn append(&mut self, t: i64, readings: &[Reading]) -> Result<(), WriteError> {
        let tx = self.conn.transaction()?;
        let mut new_series = Vec::new();
        let mut updated = Vec::with_capacity(readings.len());
        {
            let mut add_series = tx.prepare("INSERT INTO series (name, unit) VALUES (?1, ?2)")?;
            let mut write =
                tx.prepare("INSERT OR REPLACE INTO samples (start, series, n, data) VALUES (?1, ?2, ?3, ?4)")?;
            for r in readings {
                let id = match self.series.get(&r.name) {
                    Some((id, _)) => *id,
                    None => match new_series.iter().find(|(name, _, _)| name == &r.name) {
                        Some((_, id, _)) => *id,
                        None => {
                            add_series.execute(params![r.name, r.unit.name()])?;
                            let id = tx.last_insert_rowid();
                            new_series.push((r.name.clone(), id, r.unit));
                            id
                        }
                    },
                };
                let unit = self.series.get(&r.name).map_or(r.unit, |(_, u)| *u);
                let mut chunk = match self.open.get(&id) {
                    Some(c) if c.takes(t) => c.clone(),
                    Some(c) if c.last().is_some_and(|(last, _)| t <= last) => continue,
                    _ => Chunk::new(t),
                };
                chunk.push(t, unit.to_stored(r.value));
                write.execute(params![chunk.start, id, chunk.count, chunk.data])?;
                updated.push((id, chunk));
            }
        }
        tx.commit()?;
        for (name, id, unit) in new_series {
            self.series.insert(name, (id, unit));
        }
        for (id, chunk) in updated {
            self.totals.oldest = Some(self.totals.oldest.map_or(chunk.start, |o| o.min(chunk.start)));
            self.open.insert(id, chunk);
            self.totals.samples += 1;
        }
        if !readings.is_empty() {
            self.totals.newest = Some(self.totals.newest.map_or(t, |n| n.max(t)));
        }
        Ok(())
    }

    /// The database's pages, and how many of them are free.
    fn pages(&self) -> rusqlite::Result<(u64, u64)> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self.conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        Ok((pages.max(0) as u64, free.max(0) as u64))
    }

    /// Bytes the database's pages hold, free pages left out (SQLite reuses them first).
    pub fn used_bytes(&self) -> rusqlite::Result<u64> {
        let (pages, free) = self.pages()?;
        Ok(pages.saturating_sub(free) * self.page_size)
    }

    /// Removes the oldest hour of chunks at a time while samples are older than `max_age`
    /// or the pages in use exceed `max_bytes`, for at most `budget`; then gives a few free
    /// pages back to the file system when the file holds more than it uses. Each step is
    /// short, so that a database far over its limits shrinks over several rounds without
    /// a long pause.
    pub fn enforce(
        &mut self,
        now: i64,
        max_age: Duration,
        max_bytes: u64,
        budget: Duration,
    ) -> Result<Retention, WriteError> {
        let started = Instant::now();
        let mut pass = Retention::default();
        let age_limit = now - i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        while started.elapsed() < budget {
            let Some(oldest) = self.totals.oldest else { break };
            let too_old = oldest + SPAN_SECONDS <= age_limit;
            if !too_old && self.used_bytes()? <= max_bytes {
                break;
            }
            let bound = oldest + SPAN_SECONDS;
            let tx = self.conn.transaction()?;
            let gone: Option<i64> =
                tx.query_row("SELECT SUM(n) FROM samples WHERE start < ?1", [bound], |r| r.get(0))?;
            tx.execute("DELETE FROM samples WHERE start < ?1", [bound])?;
            let next: Option<i64> = tx.query_row("SELECT MIN(start) FROM samples", [], |r| r.get(0))?;
            tx.commit()?;
            let gone = gone.unwrap_or(0).max(0) as u64;
            pass.deleted_samples += gone;
            self.totals.samples = self.totals.samples.saturating_sub(gone);
            self.totals.oldest = next;
            self.open.retain(|_, c| c.start >= bound);
            if next.is_none() {
                self.totals.newest = None;
            }
        }
        let (pages, free) = self.pages()?;
        // Free pages are reused by the next rounds; only a file well over what it uses, or
        // over the limit, gives some back (256 pages, 1 MiB, per round).
        if free > 0 && (free * 4 > pages || pages * self.page_size > max_bytes) {
            let released = free.min(256);
            // Stepped to completion: each step of this pragma frees one page.
            let mut vacuum = self.conn.prepare(&format!("PRAGMA incremental_vacuum({released})"))?;
            let mut rows = vacuum.query([])?;
            while rows.next()?.is_some() {}
            pass.released_pages = released;
        }
        pass.took = started.elapsed();
        Ok(pass)
    }

    /// Copies the database, consistent, to `dest` (SQLite's online backup).
    pub fn copy_to(&self, dest: &Path) -> Result<(), String> {
        schema::copy_to(&self.conn, dest)
    }

    /// Moves this damaged database aside and opens a new one in its place.
    pub fn recover(self, reason: String) -> Result<(Store, Recovered), String> {
        let path = self.path.clone();
        drop(self);
        let moved_to = move_aside(&path, "corrupt")
            .map_err(|e| format!("{} is damaged ({reason}) and cannot be moved aside: {e}", path.display()))?;
        let (store, _) = Store::open(&path, schema::MIGRATIONS)?;
        Ok((store, Recovered { moved_to, reason }))
    }
}

#[cfg(test)]
impl Store {
    /// Makes the database full at `pages` pages (SQLite answers SQLITE_FULL past it).
    pub fn limit_pages_for_test(&self, pages: i64) {
        let _: i64 = self.conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get(0)).unwrap_or(0);
    }

    pub fn set_busy_timeout_for_test(&self, d: Duration) {
        let _ = self.conn.busy_timeout(d);
    }
}

/// Where the copy made before a migration is kept: `metrics.db.backup`.
pub fn backup_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.backup", path.display()))
}

/// Bytes the database takes on disk: its file and write-ahead log.
pub fn size_on_disk(path: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", path.display())).ok())
        .map(|m| m.len())
        .sum()
}
