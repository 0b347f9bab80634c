//! Sessions of the handshake era: created by `initialize`, named by `Mcp-Session-Id`,
//! bound to the identity that created them, and dropped when idle.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::AbortHandle;

use super::Version;
use crate::base::LogLevel;

/// One client's session.
pub struct Session {
    pub id: String,
    pub version: Version,
    /// The identity that created it; no other may use it.
    pub identity: String,
    last_seen: Mutex<Instant>,
    log_level: Mutex<Option<LogLevel>>,
    /// Requests still running, by JSON-encoded request id, so they can be cancelled.
    inflight: Mutex<HashMap<String, AbortHandle>>,
}

impl Session {
    pub fn log_level(&self) -> Option<LogLevel> {
        self.log_level.lock().ok().and_then(|l| *l)
    }

    pub fn set_log_level(&self, level: LogLevel) {
        if let Ok(mut l) = self.log_level.lock() {
            *l = Some(level);
        }
    }

    pub fn track(&self, id: String, handle: AbortHandle) {
        if let Ok(mut m) = self.inflight.lock() {
            m.insert(id, handle);
        }
    }

    pub fn untrack(&self, id: &str) {
        if let Ok(mut m) = self.inflight.lock() {
            m.remove(id);
        }
    }

    /// Aborts a running request; true when there was one.
    pub fn cancel(&self, id: &str) -> bool {
        let handle = self.inflight.lock().ok().and_then(|mut m| m.remove(id));
        handle.map(|h| h.abort()).is_some()
    }
}

/// Why a session id names no live session, as far as the server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Never opened here (or opened before the server restarted, or by another identity).
    Unknown,
    /// Dropped after being idle longer than the idle timeout.
    Expired,
    /// Ended by its client (`DELETE /mcp`).
    Closed,
    /// Dropped to make room for a newer session when the table was full.
    Evicted,
}

impl Missing {
    /// The answer's message: what happened and what to do.
    pub fn message(self, idle: Duration) -> String {
        match self {
            Missing::Unknown => {
                "Unknown session: this server did not open it (or has restarted since); send initialize to open one"
                    .into()
            }
            Missing::Expired => format!(
                "Session expired: idle for more than {} s (server.session_idle_timeout_seconds); initialize again",
                idle.as_secs()
            ),
            Missing::Closed => "Session closed: its client ended it with DELETE; initialize again".into(),
            Missing::Evicted => "Session ended to make room for newer sessions (server.max_sessions, \
                                  server.max_sessions_per_identity); initialize again"
                .into(),
        }
    }
}

/// How many ended sessions are remembered (per live slot), to say why an id is gone.
const ENDED_PER_SLOT: usize = 4;

/// Every open session, and a bounded memory of the ones that ended.
pub struct Sessions {
    table: Mutex<Table>,
    max: usize,
    per_identity: usize,
    idle: Duration,
}

struct Table {
    live: HashMap<String, Arc<Session>>,
    /// How many ended sessions are remembered.
    remembered: usize,
    /// Ended sessions: id to (identity, why), oldest first in `order`.
    ended: HashMap<String, (String, Missing)>,
    order: VecDeque<String>,
}

impl Table {
    fn end(&mut self, id: String, identity: String, why: Missing) {
        while self.order.len() >= self.remembered {
            if let Some(old) = self.order.pop_front() {
                self.ended.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.ended.insert(id, (identity, why));
    }
}

impl Sessions {
    /// A table of at most `max` sessions, `per_identity` of them for any one identity.
    pub fn new(max: usize, per_identity: usize, idle: Duration) -> Sessions {
        let table = Table {
            live: HashMap::new(),
            remembered: max.saturating_mul(ENDED_PER_SLOT).max(1),
            ended: HashMap::new(),
            order: VecDeque::new(),
        };
        Sessions { table: Mutex::new(table), max, per_identity: per_identity.clamp(1, max.max(1)), idle }
    }

    /// The idle timeout after which a session expires.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves the table consistent: every change is one
        // insert or remove.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_idle(&self, s: &Session, now: Instant) -> bool {
        s.last_seen.lock().map(|t| now.duration_since(*t) >= self.idle).unwrap_or(true)
    }

    /// Opens a session. When `identity` already holds its share, its own longest idle
    /// session makes room; when the table is full, the longest idle session of the identity
    /// holding the most does: one identity cannot push out another's sessions unless that
    /// one holds as many.
    pub fn create(&self, version: Version, identity: &str) -> Result<Arc<Session>, String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a session id: {e}"))?;
        let session = Arc::new(Session {
            id: crate::base::hex(&bytes),
            version,
            identity: identity.to_string(),
            last_seen: Mutex::new(Instant::now()),
            log_level: Mutex::new(None),
            inflight: Mutex::new(HashMap::new()),
        });
        let mut table = self.lock();
        let now = Instant::now();
        let idle: Vec<String> =
            table.live.iter().filter(|(_, s)| self.is_idle(s, now)).map(|(k, _)| k.clone()).collect();
        for id in idle {
            if let Some(s) = table.live.remove(&id) {
                table.end(id, s.identity.clone(), Missing::Expired);
            }
        }
        let held = table.live.values().filter(|s| s.identity == identity).count();
        let from = if held >= self.per_identity {
            Some(identity.to_string())
        } else if table.live.len() >= self.max {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for s in table.live.values() {
                *counts.entry(s.identity.as_str()).or_default() += 1;
            }
            counts.into_iter().max_by_key(|(_, n)| *n).map(|(who, _)| who.to_string())
        } else {
            None
        };
        if let Some(owner) = from {
            let oldest = table
                .live
                .iter()
                .filter(|(_, s)| s.identity == owner)
                .min_by_key(|(_, s)| s.last_seen.lock().map(|t| *t).unwrap_or(now))
                .map(|(k, _)| k.clone());
            if let Some(s) = oldest.and_then(|k| table.live.remove(&k)) {
                table.end(s.id.clone(), s.identity.clone(), Missing::Evicted);
            }
        }
        table.live.insert(session.id.clone(), session.clone());
        Ok(session)
    }

    /// The live session `id` owned by `identity`, or why there is none. A session of
    /// another identity is [`Missing::Unknown`] to this one.
    pub fn get(&self, id: &str, identity: &str) -> Result<Arc<Session>, Missing> {
        self.find(&mut self.lock(), id, identity)
    }

    /// Ends a session of `identity`; `Err` says why there was none.
    pub fn remove(&self, id: &str, identity: &str) -> Result<(), Missing> {
        let mut table = self.lock();
        self.find(&mut table, id, identity)?;
        table.live.remove(id);
        table.end(id.to_string(), identity.to_string(), Missing::Closed);
        Ok(())
    }

    /// [`Sessions::get`] on the locked table: an idle session found expires here.
    fn find(&self, table: &mut Table, id: &str, identity: &str) -> Result<Arc<Session>, Missing> {
        if let Some(s) = table.live.get(id).cloned() {
            if s.identity != identity {
                return Err(Missing::Unknown);
            }
            if self.is_idle(&s, Instant::now()) {
                table.live.remove(id);
                table.end(id.to_string(), s.identity.clone(), Missing::Expired);
                return Err(Missing::Expired);
            }
            if let Ok(mut seen) = s.last_seen.lock() {
                *seen = Instant::now();
            }
            return Ok(s);
        }
        match table.ended.get(id) {
            Some((owner, why)) if owner == identity => Err(*why),
            _ => Err(Missing::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_session_belongs_to_the_identity_that_opened_it() {
        let sessions = Sessions::new(4, 4, Duration::from_secs(60));
        let s = sessions.create(Version::V2025_11_25, "alice").unwrap();
        assert_eq!(s.id.len(), 32);
        assert!(sessions.get(&s.id, "alice").is_ok());
        assert_eq!(sessions.get(&s.id, "mallory").err(), Some(Missing::Unknown));
        assert_eq!(sessions.remove(&s.id, "mallory"), Err(Missing::Unknown));
        assert_eq!(sessions.remove(&s.id, "alice"), Ok(()));
        assert_eq!(sessions.get(&s.id, "alice").err(), Some(Missing::Closed));
        // Another identity learns nothing about it, not even that it was closed.
        assert_eq!(sessions.get(&s.id, "mallory").err(), Some(Missing::Unknown));
    }

    #[test]
    fn the_table_never_grows_past_its_limit() {
        let sessions = Sessions::new(2, 2, Duration::from_secs(60));
        let first = sessions.create(Version::V2025_11_25, "a").unwrap();
        std::thread::sleep(Duration::from_millis(2));
        sessions.create(Version::V2025_11_25, "a").unwrap();
        sessions.create(Version::V2025_11_25, "a").unwrap();
        assert_eq!(sessions.get(&first.id, "a").err(), Some(Missing::Evicted));
    }

    #[test]
    fn one_identity_cannot_push_out_anothers_session() {
        let sessions = Sessions::new(8, 4, Duration::from_secs(60));
        let admin = sessions.create(Version::V2025_11_25, "admin").unwrap();
        let viewer: Vec<Arc<Session>> =
            (0..300).map(|_| sessions.create(Version::V2025_11_25, "viewer").unwrap()).collect();
        assert!(sessions.get(&admin.id, "admin").is_ok(), "the admin's session survives");
        assert_eq!(sessions.lock().live.len(), 5, "the viewer holds its share, 4");
        assert!(sessions.get(&viewer[299].id, "viewer").is_ok());
        assert_eq!(sessions.get(&viewer[290].id, "viewer").err(), Some(Missing::Evicted));
        // A full table makes room from the identity holding the most.
        let others: Vec<Arc<Session>> =
            ["a", "b", "c", "d"].iter().map(|who| sessions.create(Version::V2025_11_25, who).unwrap()).collect();
        assert!(sessions.get(&admin.id, "admin").is_ok());
        assert!(others.iter().all(|s| sessions.get(&s.id, &s.identity).is_ok()));
        let table = sessions.lock();
        assert_eq!(table.live.len(), 8);
        assert_eq!(table.live.values().filter(|s| s.identity == "viewer").count(), 3);
    }

    #[test]
    fn an_id_never_issued_is_unknown_and_an_idle_one_expired() {
        let sessions = Sessions::new(4, 4, Duration::from_millis(20));
        assert_eq!(sessions.get("00112233445566778899aabbccddeeff", "a").err(), Some(Missing::Unknown));
        let s = sessions.create(Version::V2025_11_25, "a").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(sessions.get(&s.id, "a").err(), Some(Missing::Expired));
        assert_eq!(sessions.get(&s.id, "a").err(), Some(Missing::Expired));
        assert!(Missing::Expired.message(sessions.idle()).contains("session_idle_timeout_seconds"));
        assert!(Missing::Unknown.message(sessions.idle()).starts_with("Unknown session"));
    }

    #[test]
    fn the_memory_of_ended_sessions_is_bounded() {
        let sessions = Sessions::new(1, 1, Duration::from_secs(60));
        let ids: Vec<String> =
            (0..10).map(|_| sessions.create(Version::V2025_11_25, "a").unwrap().id.clone()).collect();
        assert!(sessions.lock().ended.len() <= ENDED_PER_SLOT);
        assert_eq!(sessions.get(&ids[0], "a").err(), Some(Missing::Unknown));
        assert_eq!(sessions.get(&ids[8], "a").err(), Some(Missing::Evicted));
    }
}
