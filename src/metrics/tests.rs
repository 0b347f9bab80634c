#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rusqlite::Connection;

use super::collect::{Reading, Unit};
use super::query::{Aggregation, Query, QueryError, Reader};
use super::schema::{self, MIGRATIONS};
use super::store::{Store, WriteError};

const T0: i64 = 1_800_000_000;

fn reading(name: &str, unit: Unit, value: f64) -> Reading {
    Reading { name: name.into(), unit, value }
}

fn round(i: i64) -> Vec<Reading> {
    vec![
        reading("cpu.percent", Unit::Percent, (i % 100) as f64),
        reading("temperature.cpu-thermal.celsius", Unit::Celsius, 40.0 + (i % 10) as f64 / 2.0),
        reading("memory.used_bytes", Unit::Bytes, 512.0 * 1024.0 * 1024.0 + (i * 4096) as f64),
    ]
}

fn query(names: &[&str], since: i64, until: i64, step: i64, aggregation: Aggregation) -> Query {
    Query { names: names.iter().map(|s| s.to_string()).collect(), since, until, step, aggregation }
}

#[test]
fn rounds_are_kept_across_a_reopen_and_read_back_downsampled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let (mut store, recovered) = Store::open(&path, MIGRATIONS).unwrap();
    assert!(recovered.is_none());
    for i in 0..90 {
        store.append(T0 + i * 60, &round(i)).unwrap();
    }
    drop(store);
    let (mut store, _) = Store::open(&path, MIGRATIONS).unwrap();
    assert_eq!(store.totals.samples, 270);
    assert_eq!((store.totals.oldest, store.totals.newest), (Some(T0), Some(T0 + 89 * 60)));
    // The chunk open at the reopen goes on; the next hour starts a new one.
    for i in 90..120 {
        store.append(T0 + i * 60, &round(i)).unwrap();
    }
    let reader = Reader::open(&path).unwrap();
    let all = reader.query(&query(&["cpu"], T0, T0 + 7200, 60, Aggregation::Last)).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].points.len(), 120);
    assert_eq!(all[0].points[95], (T0 + 95 * 60, 95.0));
    assert_eq!(all[0].unit, "percent");
    // Hourly steps (aligned to the epoch) aggregate what falls in them.
    let hourly = reader.query(&query(&["cpu.percent"], T0, T0 + 7199, 3600, Aggregation::Max)).unwrap();
    let first_hour = T0.div_euclid(3600) * 3600;
    assert_eq!(hourly[0].points[0].0, first_hour);
    let expected_max = (0..120).filter(|i| T0 + i * 60 < first_hour + 3600).map(|i| i % 100).max().unwrap() as f64;
    assert_eq!(hourly[0].points[0].1, expected_max);
    let avg = reader.query(&query(&["temperature"], T0, T0 + 599, 600, Aggregation::Avg)).unwrap();
    assert_eq!(avg[0].points.len(), 2.min(avg[0].points.len()).max(1));
    let mem = reader.query(&query(&["memory.used_bytes"], T0 + 60, T0 + 60, 60, Aggregation::Last)).unwrap();
    assert_eq!(mem[0].points, [(T0 + 60, 512.0 * 1024.0 * 1024.0 + 4096.0)]);
}

#[test]
fn a_query_names_what_is_unknown_and_refuses_too_many_points_with_the_step_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let (mut store, _) = Store::open(&path, MIGRATIONS).unwrap();
    store.append(T0, &round(0)).unwrap();
    let reader = Reader::open(&path).unwrap();
    match reader.query(&query(&["gpu"], T0, T0 + 60, 60, Aggregation::Avg)) {
        Err(QueryError::Invalid(m)) => assert!(m.contains("\"gpu\"") && m.contains("cpu.percent"), "{m}"),
        other => panic!("{other:?}"),
    }
    match reader.query(&query(&[], T0 - 30 * 86_400, T0, 60, Aggregation::Avg)) {
        Err(QueryError::Invalid(m)) => assert!(m.contains("3 series") && m.contains("step of at least 156 s"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(reader.query(&query(&[], T0 - 30 * 86_400, T0, 156, Aggregation::Avg)).is_ok());
}

#[test]
fn retention_removes_the_oldest_hours_by_age_and_by_size_and_gives_pages_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let (mut store, _) = Store::open(&path, MIGRATIONS).unwrap();
    // Three days of 40 series at one minute.
    let many = |i: i64| -> Vec<Reading> {
        (0..40).map(|s| reading(&format!("s.{s}"), Unit::Count, ((i * 7 + s * 13) % 1000) as f64)).collect()
    };
    for i in 0..3 * 1440 {
        store.append(T0 + i * 60, &many(i)).unwrap();
    }
    let newest = T0 + (3 * 1440 - 1) * 60;
    let before = store.totals.samples;
    assert_eq!(before, 3 * 1440 * 40);
    // Keep two days: the first day's hours go (whole hours, nothing newer).
    let pass = store.enforce(newest, Duration::from_secs(2 * 86_400), u64::MAX, Duration::from_secs(10)).unwrap();
    assert!(pass.deleted_samples >= 1380 * 40 && pass.deleted_samples <= 1440 * 40, "{pass:?}");
    assert!(store.totals.oldest.unwrap() + 3600 > newest - 2 * 86_400);
    assert_eq!(store.totals.samples, before - pass.deleted_samples);
    // Then a size limit of half what is used: the oldest go until it fits.
    let used = store.used_bytes().unwrap();
    let limit = used / 2;
    let mut passes = 0;
    while store.used_bytes().unwrap() > limit {
        store.enforce(newest, Duration::from_secs(2 * 86_400), limit, Duration::from_millis(50)).unwrap();
        passes += 1;
        assert!(passes < 100);
    }
    // And the file shrinks towards it, a little each round.
    for _ in 0..50 {
        store.enforce(newest, Duration::from_secs(2 * 86_400), limit, Duration::from_millis(50)).unwrap();
    }
    // The file shrinks when the write-ahead log is copied back into it.
    Connection::open(&path).unwrap().execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let file = std::fs::metadata(&path).unwrap().len();
    assert!(file <= limit + 64 * 1024, "file {file}, limit {limit}");
    // What is left reads back.
    let reader = Reader::open(&path).unwrap();
    let left = reader.query(&query(&["s.1"], newest - 3600, newest, 60, Aggregation::Last)).unwrap();
    assert_eq!(left[0].points.len(), 61);
}

#[test]
fn a_damaged_file_is_moved_aside_and_a_new_database_takes_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    std::fs::write(&path, b"this is not a database, it was a torn copy".repeat(200)).unwrap();
    let (mut store, recovered) = Store::open(&path, MIGRATIONS).unwrap();
    let recovered = recovered.unwrap();
    assert!(recovered.moved_to.file_name().unwrap().to_string_lossy().starts_with("metrics.db.corrupt-"));
    assert!(recovered.reason.contains("not a database"), "{}", recovered.reason);
    assert!(std::fs::read(&recovered.moved_to).unwrap().starts_with(b"this is not"));
    store.append(T0, &round(0)).unwrap();
    assert_eq!(store.totals.samples, 3);
}

#[test]
fn a_database_of_a_newer_build_is_set_aside_and_the_copy_from_before_its_migration_restored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let (mut store, _) = Store::open(&path, MIGRATIONS).unwrap();
    store.append(T0, &round(0)).unwrap();
    drop(store);
    // A newer build migrates it (keeping metrics.db.backup), then the server is rolled back.
    let newer = [
        schema::Migration { version: 1, sql: MIGRATIONS[0].sql },
        schema::Migration { version: 2, sql: "CREATE TABLE notes (text TEXT);" },
    ];
    let (mut store, _) = Store::open(&path, &newer).unwrap();
    store.append(T0 + 60, &round(1)).unwrap();
    drop(store);
    let (store, recovered) = Store::open(&path, MIGRATIONS).unwrap();
    let recovered = recovered.unwrap();
    assert!(recovered.moved_to.to_string_lossy().contains("metrics.db.newer-"), "{recovered:?}");
    assert_eq!(store.totals.samples, 3, "the database as it was before the migration");
    assert!(!super::store::backup_path(&path).exists(), "the copy became the database");
    let conn = Connection::open(&path).unwrap();
    assert_eq!(schema::version_of(&conn).unwrap(), 1);
}

#[test]
fn a_full_database_fails_the_round_as_disk_full_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let (mut store, _) = Store::open(&path, MIGRATIONS).unwrap();
    store.append(T0, &round(0)).unwrap();
    let pages: i64 = Connection::open(&path).unwrap().query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    // SQLite's own limit on pages answers as a full disk does (SQLITE_FULL).
    store.limit_pages_for_test(pages);
    let names: Vec<Reading> =
        (0..400).map(|s| reading(&format!("new.series.with.a.long.name.{s}"), Unit::Count, 1.0)).collect();
    let e = store.append(T0 + 60, &names).unwrap_err();
    assert!(matches!(e, WriteError::DiskFull(_)), "{e:?}");
    assert_eq!(store.totals.samples, 3);
    assert_eq!(store.series_count(), 3);
    store.limit_pages_for_test(1_000_000);
    store.append(T0 + 60, &names).unwrap();
    assert_eq!(store.series_count(), 403);
}

#[test]
fn a_database_locked_by_another_process_fails_the_round_as_busy_and_readers_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.db");
    let (mut store, _) = Store::open(&path, MIGRATIONS).unwrap();
    store.append(T0, &round(0)).unwrap();
    let holder = Connection::open(&path).unwrap();
    holder.busy_timeout(Duration::ZERO).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE; INSERT INTO series (name, unit) VALUES ('held', 'count');").unwrap();
    store.set_busy_timeout_for_test(Duration::from_millis(50));
    let e = store.append(T0 + 60, &round(1)).unwrap_err();
    assert!(matches!(e, WriteError::Busy(_)), "{e:?}");
    let reader = Reader::open(&path).unwrap();
    let points = reader.query(&query(&["cpu.percent"], T0, T0 + 60, 60, Aggregation::Last)).unwrap();
    assert_eq!(points[0].points.len(), 1);
    holder.execute_batch("ROLLBACK").unwrap();
    store.append(T0 + 60, &round(1)).unwrap();
}
