//! The database's schema and its migrations.
//!
//! `schema_version` lists the versions applied, as the operations specification describes.
//! Before a migration changes a database, a copy of it is kept as `metrics.db.backup`, so
//! that a rolled-back server finds the database of its own version again.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

/// One step of the schema.
pub struct Migration {
    pub version: u32,
    pub sql: &'static str,
}

/// The migrations of this build, in order; the last one's version is the current schema.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    // Series are named once and referred to by number; samples are packed by the hour
    // into chunks (src/metrics/chunk.rs) keyed by their start, so that a round appends at
    // the end of the table and retention removes from its beginning.
    sql: "CREATE TABLE series (
              id INTEGER PRIMARY KEY,
              name TEXT NOT NULL UNIQUE,
              unit TEXT NOT NULL
          );
          CREATE TABLE samples (
              start INTEGER NOT NULL,
              series INTEGER NOT NULL,
              n INTEGER NOT NULL,
              data BLOB NOT NULL,
              PRIMARY KEY (start, series)
          ) WITHOUT ROWID;",
}];

/// The schema version this build writes.
pub fn current() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The schema version of a database: 0 when it has none yet.
pub fn version_of(conn: &Connection) -> rusqlite::Result<u32> {
    let has_table: Option<String> = conn
        .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'", [], |r| r.get(0))
        .optional()?;
    if has_table.is_none() {
        return Ok(0);
    }
    let version: Option<i64> =
        conn.query_row("SELECT MAX(CAST(version AS INTEGER)) FROM schema_version", [], |r| r.get(0))?;
    Ok(version.and_then(|v| u32::try_from(v).ok()).unwrap_or(0))
}

/// What [`migrate`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Migrated {
    /// Already at the current version.
    Current,
    /// A new database: the schema was created.
    Created,
    /// Moved from this version, a copy of the database as it was kept at the backup path.
    From(u32),
}

/// Brings a database to the last of `migrations`, each step in a transaction of its own.
/// A database at a version newer than this build knows is an error: it is not touched.
pub fn migrate(conn: &mut Connection, migrations: &[Migration], backup: &Path) -> Result<Migrated, String> {
    let target = migrations.last().map_or(0, |m| m.version);
    let from = version_of(conn).map_err(|e| format!("cannot read its schema version: {e}"))?;
    if from > target {
        return Err(format!("its schema version {from} is newer than this build's ({target})"));
    }
    if from == target {
        return Ok(Migrated::Current);
    }
    if from > 0 {
        copy_to(conn, backup)
            .map_err(|e| format!("cannot keep a copy at {} before migrating: {e}", backup.display()))?;
    } else {
        // Freed pages go back to the file system a few at a time (see retention).
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
            .map_err(|e| format!("cannot set up the new database: {e}"))?;
    }
    for m in migrations.iter().filter(|m| m.version > from) {
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        if m.version == migrations[0].version {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_version (
                     version TEXT PRIMARY KEY,
                     applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
                 );",
            )
            .map_err(|e| e.to_string())?;
        }
        tx.execute_batch(m.sql).map_err(|e| format!("migration to schema version {}: {e}", m.version))?;
        tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [m.version.to_string()])
            .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| format!("migration to schema version {}: {e}", m.version))?;
    }
    Ok(if from == 0 { Migrated::Created } else { Migrated::From(from) })
}

/// Copies a live database to `dest` with SQLite's online backup, which reads a consistent
/// state while the database stays in use; the copy is written beside `dest` and renamed.
pub fn copy_to(conn: &Connection, dest: &Path) -> Result<(), String> {
    let partial = dest.with_extension(format!("{}.partial", dest.extension().and_then(|e| e.to_str()).unwrap_or("db")));
    let _ = std::fs::remove_file(&partial);
    let result = (|| {
        let mut out = Connection::open(&partial).map_err(|e| e.to_string())?;
        {
            let backup = rusqlite::backup::Backup::new(conn, &mut out).map_err(|e| e.to_string())?;
            backup.run_to_completion(256, std::time::Duration::from_millis(5), None).map_err(|e| e.to_string())?;
        }
        // The copy is a database of its own: one file, not a write-ahead log beside it.
        out.execute_batch("PRAGMA journal_mode = DELETE;").map_err(|e| e.to_string())?;
        // SQLite synced the file as it wrote it (synchronous is FULL on a new connection).
        out.close().map_err(|(_, e)| e.to_string())?;
        std::fs::rename(&partial, dest).map_err(|e| e.to_string())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NEXT: &[Migration] = &[
        Migration { version: 1, sql: MIGRATIONS[0].sql },
        Migration { version: 2, sql: "ALTER TABLE series ADD COLUMN description TEXT NOT NULL DEFAULT '';" },
    ];

    #[test]
    fn a_new_database_gets_the_schema_and_its_version_and_a_second_run_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("m.db")).unwrap();
        let backup = dir.path().join("m.db.backup");
        assert_eq!(migrate(&mut conn, MIGRATIONS, &backup), Ok(Migrated::Created));
        assert_eq!(version_of(&conn).unwrap(), current());
        assert_eq!(migrate(&mut conn, MIGRATIONS, &backup), Ok(Migrated::Current));
        assert!(!backup.exists(), "nothing to keep a copy of");
        let vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0)).unwrap();
        assert_eq!(vacuum, 2, "incremental");
    }

    #[test]
    fn a_migration_keeps_the_database_as_it_was_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let backup = dir.path().join("m.db.backup");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, MIGRATIONS, &backup).unwrap();
        conn.execute("INSERT INTO series (name, unit) VALUES ('cpu.percent', 'percent')", []).unwrap();
        assert_eq!(migrate(&mut conn, NEXT, &backup), Ok(Migrated::From(1)));
        assert_eq!(version_of(&conn).unwrap(), 2);
        let kept = Connection::open(&backup).unwrap();
        assert_eq!(version_of(&kept).unwrap(), 1);
        let name: String = kept.query_row("SELECT name FROM series", [], |r| r.get(0)).unwrap();
        assert_eq!(name, "cpu.percent");
        // This build, older than the database now, leaves it alone.
        let e = migrate(&mut conn, MIGRATIONS, &backup).unwrap_err();
        assert!(e.contains("schema version 2 is newer than this build's (1)"), "{e}");
    }
}
