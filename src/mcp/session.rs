//! Sessions of the handshake era: created by `initialize`, named by `Mcp-Session-Id`,
//! bound to the identity that created them, and dropped when idle.

use std::collections::HashMap;
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

/// Every open session.
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    max: usize,
    idle: Duration,
}

impl Sessions {
    pub fn new(max: usize, idle: Duration) -> Sessions {
        Sessions { map: Mutex::new(HashMap::new()), max, idle }
    }

    /// Opens a session; when full, the longest idle one is dropped first.
    pub fn create(&self, version: Version, identity: &str) -> Result<Arc<Session>, String> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a session id: {e}"))?;
        let session = Arc::new(Session {
            id: crate::config::hex(&bytes),
            version,
            identity: identity.to_string(),
            last_seen: Mutex::new(Instant::now()),
            log_level: Mutex::new(None),
            inflight: Mutex::new(HashMap::new()),
        });
        let mut map = self.map.lock().map_err(|_| "session table unavailable".to_string())?;
        let now = Instant::now();
        map.retain(|_, s| s.last_seen.lock().map(|t| now.duration_since(*t) < self.idle).unwrap_or(false));
        if map.len() >= self.max {
            let oldest =
                map.iter().min_by_key(|(_, s)| s.last_seen.lock().map(|t| *t).unwrap_or(now)).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(session.id.clone(), session.clone());
        Ok(session)
    }

    /// The live session `id` owned by `identity`.
    pub fn get(&self, id: &str, identity: &str) -> Option<Arc<Session>> {
        let map = self.map.lock().ok()?;
        let s = map.get(id)?;
        let mut seen = s.last_seen.lock().ok()?;
        if seen.elapsed() >= self.idle || s.identity != identity {
            return None;
        }
        *seen = Instant::now();
        Some(s.clone())
    }

    /// Ends a session; true when it existed.
    pub fn remove(&self, id: &str, identity: &str) -> bool {
        let Ok(mut map) = self.map.lock() else { return false };
        if map.get(id).is_some_and(|s| s.identity == identity) {
            map.remove(id);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_session_belongs_to_the_identity_that_opened_it() {
        let sessions = Sessions::new(4, Duration::from_secs(60));
        let s = sessions.create(Version::V2025_11_25, "alice").unwrap();
        assert_eq!(s.id.len(), 32);
        assert!(sessions.get(&s.id, "alice").is_some());
        assert!(sessions.get(&s.id, "mallory").is_none());
        assert!(!sessions.remove(&s.id, "mallory"));
        assert!(sessions.remove(&s.id, "alice"));
        assert!(sessions.get(&s.id, "alice").is_none());
    }

    #[test]
    fn the_table_never_grows_past_its_limit() {
        let sessions = Sessions::new(2, Duration::from_secs(60));
        let first = sessions.create(Version::V2025_11_25, "a").unwrap();
        std::thread::sleep(Duration::from_millis(2));
        sessions.create(Version::V2025_11_25, "a").unwrap();
        sessions.create(Version::V2025_11_25, "a").unwrap();
        assert!(sessions.get(&first.id, "a").is_none());
    }
}
