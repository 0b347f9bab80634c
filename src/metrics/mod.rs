//! The metrics history: a sampler thread that records the host's metrics into SQLite
//! (`metrics.db` in the state directory) every `metrics.collection.interval_seconds`,
//! keeps them within `metrics.retention`, and answers `metrics.query`.
//!
//! The sampler runs on a thread of its own, never on the async workers, and queries read
//! on a connection of their own: with SQLite's write-ahead log neither waits for the
//! other. A damaged database is moved aside and a new one created; a full disk pauses the
//! sampler until a round can be written again.

pub mod chunk;
pub mod collect;
pub mod query;
pub mod schema;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{Config, RetentionConfig};
use crate::host::Roots;
use collect::Collector;
pub use query::{Aggregation, Query, QueryError, Reader, Series, Summary, MAX_POINTS};
use store::{Store, WriteError};

/// The database's file name in the state directory.
pub const DB_NAME: &str = "metrics.db";
/// The file in the state directory that keeps `metrics.start_sampling` / `stop_sampling`.
pub const CHOICE_NAME: &str = "metrics-sampling.json";
/// Longest a retention pass may take in one round.
const RETENTION_BUDGET: Duration = Duration::from_millis(50);

/// Who switched sampling on or off at run time, and when; it wins over the configuration.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    pub enabled: bool,
    /// The identity that made the choice.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// Something that happened, and when.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Event {
    /// When (RFC 3339).
    pub at: String,
    pub message: String,
}

/// A damaged database found and replaced.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RecoveredReport {
    /// When (RFC 3339).
    pub at: String,
    /// Where the old database was moved.
    pub moved_to: String,
    pub reason: String,
}

/// What the sampler is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Opening and checking the database.
    Starting,
    Sampling,
    /// Switched off (configuration or `metrics.stop_sampling`).
    Stopped,
    /// The file system is full: rounds are retried until one can be written.
    Paused,
    /// The database cannot be opened; retried every interval.
    Unavailable,
}

/// The last retention pass that removed something.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RetentionReport {
    /// When (RFC 3339).
    pub at: String,
    pub deleted_samples: u64,
    /// Free pages given back to the file system.
    pub released_pages: u64,
    pub took_ms: f64,
}

/// `metrics.get_status`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Status {
    pub state: State,
    /// Whether sampling is switched on (it may still be paused).
    pub enabled: bool,
    /// The run-time switch, when someone used it; otherwise `metrics.collection.enabled` applies.
    pub switched: Option<Choice>,
    pub interval_seconds: u64,
    pub database: String,
    pub schema_version: u32,
    /// Series recorded, by name (the names `metrics.query` takes).
    pub series: Vec<String>,
    /// Samples kept.
    pub samples: u64,
    /// Bytes on disk: the database and its write-ahead log.
    pub size_bytes: u64,
    /// Oldest sample kept (RFC 3339).
    pub oldest: Option<String>,
    /// Newest sample (RFC 3339).
    pub newest: Option<String>,
    pub retention: RetentionConfig,
    pub last_round: Option<RoundReport>,
    pub last_retention: Option<RetentionReport>,
    pub last_error: Option<Event>,
    /// A damaged database replaced at start or while running.
    pub recovered: Option<RecoveredReport>,
}

/// The last round written.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RoundReport {
    /// When (RFC 3339).
    pub at: String,
    pub values: usize,
    /// Time to read and write it.
    pub took_ms: f64,
}

enum Control {
    Set(bool),
    Shutdown,
}

struct Shared {
    path: PathBuf,
    choice_path: PathBuf,
    interval: u64,
    retention: RetentionConfig,
    status: Mutex<Inner>,
    /// Bumped when the database file is replaced, so readers open the new one.
    generation: AtomicU64,
    reader: Mutex<Option<(u64, Reader)>>,
}

struct Inner {
    state: State,
    enabled: bool,
    switched: Option<Choice>,
    schema_version: u32,
    series: Vec<String>,
    totals: store::Totals,
    last_round: Option<RoundReport>,
    last_retention: Option<RetentionReport>,
    last_error: Option<Event>,
    recovered: Option<RecoveredReport>,
}

/// The sampler and the history it writes.
pub struct History {
    shared: Arc<Shared>,
    control: Mutex<mpsc::Sender<Control>>,
}

fn now_text() -> String {
    crate::logs::timestamp(SystemTime::now())
}

/// A time in seconds since the epoch, as RFC 3339.
pub fn time_text(seconds: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(seconds.max(0) as u64);
    crate::logs::timestamp(t)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the run-time switch; a missing file is no choice, a damaged one is logged and
/// ignored (the configuration applies).
fn read_choice(path: &Path) -> Option<Choice> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(choice) => Some(choice),
        Err(e) => {
            log::warn!("metrics: ignoring {}: {e}; metrics.collection.enabled applies", path.display());
            None
        }
    }
}

impl History {
    /// Starts the sampler thread for `config`, reading the host under `roots`.
    pub fn start(config: &Config, roots: Roots) -> Result<History, String> {
        let state_dir = &config.paths.state_dir;
        let choice_path = state_dir.join(CHOICE_NAME);
        let switched = read_choice(&choice_path);
        let enabled = switched.as_ref().map_or(config.metrics.collection.enabled, |c| c.enabled);
        let shared = Arc::new(Shared {
            path: state_dir.join(DB_NAME),
            choice_path,
            interval: config.metrics.collection.interval_seconds,
            retention: config.metrics.retention.clone(),
            status: Mutex::new(Inner {
                state: State::Starting,
                enabled,
                switched,
                schema_version: 0,
                series: Vec::new(),
                totals: store::Totals::default(),
                last_round: None,
                last_retention: None,
                last_error: None,
                recovered: None,
            }),
            generation: AtomicU64::new(0),
            reader: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("metrics-sampler".into())
            .spawn(move || Sampler::new(thread_shared, roots, enabled).run(&rx))
            .map_err(|e| format!("cannot start the metrics sampler: {e}"))?;
        Ok(History { shared, control: Mutex::new(tx) })
    }

    /// Switches sampling on or off for `by`, and keeps the choice for the next start.
    pub fn set_sampling(&self, enabled: bool, by: &str) -> Result<(), String> {
        let choice = Choice { enabled, by: by.to_string(), at: now_text() };
        let bytes = serde_json::to_vec_pretty(&choice).map_err(|e| e.to_string())?;
        crate::update::state::write_atomically(&self.shared.choice_path, &bytes, 0o640, None)
            .map_err(|e| format!("cannot keep the choice: {e}"))?;
        {
            let mut inner = lock(&self.shared.status);
            inner.enabled = enabled;
            inner.switched = Some(choice);
            if !enabled {
                inner.state = State::Stopped;
            } else if inner.state == State::Stopped {
                inner.state = State::Sampling;
            }
        }
        lock(&self.control).send(Control::Set(enabled)).map_err(|_| "the metrics sampler has stopped".to_string())
    }

    pub fn status(&self) -> Status {
        let inner = lock(&self.shared.status);
        Status {
            state: inner.state,
            enabled: inner.enabled,
            switched: inner.switched.clone(),
            interval_seconds: self.shared.interval,
            database: self.shared.path.display().to_string(),
            schema_version: inner.schema_version,
            series: inner.series.clone(),
            samples: inner.totals.samples,
            size_bytes: store::size_on_disk(&self.shared.path),
            oldest: inner.totals.oldest.map(time_text),
            newest: inner.totals.newest.map(time_text),
            retention: self.shared.retention.clone(),
            last_round: inner.last_round.clone(),
            last_retention: inner.last_retention.clone(),
            last_error: inner.last_error.clone(),
            recovered: inner.recovered.clone(),
        }
    }

    pub fn interval_seconds(&self) -> u64 {
        self.shared.interval
    }

    pub fn max_age_days(&self) -> u64 {
        self.shared.retention.max_age_days
    }

    /// Whether there is a database to read: the sampler has opened (and migrated) it.
    fn written(&self) -> bool {
        lock(&self.shared.status).state != State::Starting && self.shared.path.exists()
    }

    /// Every series' minimum, average, maximum and last value over the last `seconds`.
    pub fn summary(&self, seconds: i64) -> Result<Vec<Summary>, QueryError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        if !self.written() {
            return Ok(Vec::new());
        }
        self.with_reader(|r| r.summary(now - seconds, now))
    }

    /// Runs `read` on the reading connection (opened on first use, and again after the
    /// database was replaced or failed).
    fn with_reader<T>(&self, read: impl FnOnce(&Reader) -> Result<T, QueryError>) -> Result<T, QueryError> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        let mut reader = lock(&self.shared.reader);
        if reader.as_ref().is_none_or(|(g, _)| *g != generation) {
            *reader = Some((generation, Reader::open(&self.shared.path)?));
        }
        let Some((_, r)) = reader.as_ref() else { return Err(QueryError::Unavailable("no reader".into())) };
        let result = read(r);
        if matches!(result, Err(QueryError::Unavailable(_))) {
            *reader = None;
        }
        result
    }

    /// Answers a query on the reading connection (opened on first use, and again after
    /// the database was replaced). Blocking: call it off the async workers.
    pub fn query(&self, q: &Query) -> Result<Vec<Series>, QueryError> {
        if !self.written() {
            return match q.names.first() {
                None => Ok(Vec::new()),
                Some(name) => Err(QueryError::Invalid(format!(
                    "no series is recorded yet, {name:?} neither: the sampler is starting or has not written a round (metrics.get_status)"
                ))),
            };
        }
        self.with_reader(|r| r.query(q))
    }
}

impl Drop for History {
    fn drop(&mut self) {
        let _ = lock(&self.control).send(Control::Shutdown);
    }
}

/// The sampler thread's state.
struct Sampler {
    shared: Arc<Shared>,
    roots: Roots,
    enabled: bool,
    store: Option<Store>,
    collector: Collector,
    /// Whether the last write failed because another process held the database.
    busy: bool,
}

impl Sampler {
    fn new(shared: Arc<Shared>, roots: Roots, enabled: bool) -> Sampler {
        Sampler { shared, roots, enabled, store: None, collector: Collector::default(), busy: false }
    }

    fn set_state(&self, state: State) {
        lock(&self.shared.status).state = state;
    }

    fn error(&self, message: String) {
        lock(&self.shared.status).last_error = Some(Event { at: now_text(), message });
    }

    fn run(mut self, control: &mpsc::Receiver<Control>) {
        self.open();
        let interval = self.shared.interval.max(1);
        // The first round at once; then on multiples of the interval, so that the samples
        // of a fleet line up.
        let mut due = Instant::now();
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            match control.recv_timeout(wait) {
                Ok(Control::Set(enabled)) => {
                    if enabled && !self.enabled {
                        log::info!("metrics: sampling switched on");
                        due = Instant::now();
                    } else if !enabled && self.enabled {
                        log::info!("metrics: sampling switched off");
                    }
                    self.enabled = enabled;
                    continue;
                }
                Ok(Control::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.store.is_none() {
                self.open();
            }
            if self.enabled && self.store.is_some() {
                self.round();
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let into = now.as_secs() % interval;
            let next = Duration::from_secs(interval - into)
                .saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos())));
            due = Instant::now() + next.max(Duration::from_millis(1));
        }
    }

    /// Opens the database, recovering a damaged one.
    fn open(&mut self) {
        match Store::open(&self.shared.path, schema::MIGRATIONS) {
            Ok((store, recovered)) => {
                if let Some(r) = recovered {
                    self.recovered(r);
                }
                self.publish(&store);
                self.set_state(if self.enabled { State::Sampling } else { State::Stopped });
                self.store = Some(store);
            }
            Err(e) => {
                let was = lock(&self.shared.status).state;
                if was != State::Unavailable {
                    log::error!("metrics: {e}; retrying every interval");
                }
                self.set_state(State::Unavailable);
                self.error(e);
            }
        }
    }

    /// Says that a damaged (or newer) database was set aside for a new one, in the log and
    /// the status, and sends readers to the new file.
    fn recovered(&self, r: store::Recovered) {
        log::error!(
            "metrics: {} could not be used ({}); moved it to {} and started a new database",
            self.shared.path.display(),
            r.reason,
            r.moved_to.display()
        );
        lock(&self.shared.status).recovered =
            Some(RecoveredReport { at: now_text(), moved_to: r.moved_to.display().to_string(), reason: r.reason });
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Copies what the status reports from the store.
    fn publish(&self, store: &Store) {
        let mut inner = lock(&self.shared.status);
        inner.totals = store.totals;
        inner.schema_version = schema::current();
        if inner.series.len() != store.series_count() {
            inner.series = store.series_names();
        }
    }

    fn round(&mut self) {
        let started = Instant::now();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let (readings, errors) = self.collector.round(&self.roots, now.as_secs_f64());
        for e in &errors {
            log::debug!("metrics: {e}");
        }
        let Some(store) = self.store.as_mut() else { return };
        let t = now.as_secs() as i64;
        let written = store.append(t, &readings).and_then(|()| {
            let r = &self.shared.retention;
            store.enforce(
                t,
                Duration::from_secs(r.max_age_days.saturating_mul(86_400)),
                r.max_size_mb.saturating_mul(1024 * 1024),
                RETENTION_BUDGET,
            )
        });
        match written {
            Ok(retention) => {
                let paused = lock(&self.shared.status).state == State::Paused;
                if paused {
                    log::info!("metrics: a round was written again; sampling resumed");
                }
                if self.busy {
                    log::info!("metrics: the database is free again");
                    self.busy = false;
                }
                if let Some(store) = self.store.as_ref() {
                    self.publish(store);
                }
                let mut inner = lock(&self.shared.status);
                inner.state = State::Sampling;
                inner.last_round =
                    Some(RoundReport { at: now_text(), values: readings.len(), took_ms: millis(started.elapsed()) });
                if retention.deleted_samples > 0 || retention.released_pages > 0 {
                    inner.last_retention = Some(RetentionReport {
                        at: now_text(),
                        deleted_samples: retention.deleted_samples,
                        released_pages: retention.released_pages,
                        took_ms: millis(retention.took),
                    });
                }
            }
            Err(WriteError::DiskFull(e)) => {
                let was = lock(&self.shared.status).state;
                if was != State::Paused {
                    log::warn!(
                        "metrics: the file system of {} is full ({e}); sampling paused until a round can be written",
                        self.shared.path.display()
                    );
                }
                self.set_state(State::Paused);
                self.error(format!("disk full: {e}"));
            }
            Err(WriteError::Busy(e)) => {
                if !self.busy {
                    log::warn!("metrics: the database is held by another process ({e}); this round is not kept");
                }
                self.busy = true;
                self.error(format!("database busy, round not kept: {e}"));
            }
            Err(WriteError::Corrupt(e)) => {
                let Some(store) = self.store.take() else { return };
                match store.recover(e) {
                    Ok((store, r)) => {
                        self.recovered(r);
                        self.publish(&store);
                        self.store = Some(store);
                    }
                    Err(e) => {
                        log::error!("metrics: {e}");
                        self.set_state(State::Unavailable);
                        self.error(e);
                    }
                }
            }
            Err(WriteError::Other(e)) => {
                log::warn!("metrics: a round could not be written: {e}");
                self.error(e);
            }
        }
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
