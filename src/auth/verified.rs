//! Tokens already verified, so that a client sending the same token with every request
//! pays for its signature check once. An entry is keyed by the SHA-256 of the whole token,
//! is kept at most [`KEEP_AT_MOST`] (so that a key withdrawn from the issuer's set stops
//! working within that time) and never past the token's own expiry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use super::jwt::LEEWAY_SECONDS;
use super::Identity;

/// Longest an entry is trusted without checking the token again.
pub const KEEP_AT_MOST: Duration = Duration::from_secs(60);
/// Entries kept at once; the table starts afresh when full.
const CAPACITY: usize = 1024;

#[derive(Default)]
pub struct Verified {
    entries: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
}

impl Verified {
    /// The identity of a token verified before and still valid.
    pub fn get(&self, digest: &[u8; 32]) -> Option<Identity> {
        let mut entries = self.entries.lock().ok()?;
        match entries.get(digest) {
            Some((identity, until)) if Instant::now() < *until => Some(identity.clone()),
            Some(_) => {
                entries.remove(digest);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token's identity until its `exp` (with the leeway the check
    /// allowed) or [`KEEP_AT_MOST`], whichever comes first.
    pub fn insert(&self, digest: [u8; 32], identity: &Identity, claims: &Map<String, Value>) {
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else { return };
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let left = Duration::from_secs(exp.saturating_add(LEEWAY_SECONDS).saturating_sub(now_unix));
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(digest, (identity.clone(), Instant::now() + left.min(KEEP_AT_MOST)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Role;
    use serde_json::json;

    fn claims(exp: u64) -> Map<String, Value> {
        json!({"exp": exp}).as_object().unwrap().clone()
    }

    #[test]
    fn entries_last_until_the_token_expires_and_never_longer_than_a_minute() {
        let cache = Verified::default();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let alice = Identity::new("oidc", "alice", Role::Viewer);
        cache.insert([1; 32], &alice, &claims(now + 3600));
        assert_eq!(cache.get(&[1; 32]), Some(alice.clone()));
        assert_eq!(cache.get(&[2; 32]), None);
        // Expired beyond the leeway: not kept at all.
        cache.insert([3; 32], &alice, &claims(now - LEEWAY_SECONDS - 1));
        assert_eq!(cache.get(&[3; 32]), None);
        let until = cache.entries.lock().unwrap()[&[1u8; 32]].1;
        assert!(until <= Instant::now() + KEEP_AT_MOST);
        // No exp: never remembered.
        cache.insert([4; 32], &alice, &Map::new());
        assert_eq!(cache.get(&[4; 32]), None);
    }
}
