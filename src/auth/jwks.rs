//! The signing keys of a token issuer (its JWKS), fetched with the self-update's HTTP client
//! and cached.
//!
//! Keys are kept for the configured TTL. A token naming a key the cache does not hold makes
//! the cache fetch the set again, but at most once every [`KID_REFETCH_EVERY`], so that a
//! flood of made-up `kid`s costs the issuer one request a minute. When the set cannot be
//! fetched, the keys already held keep working until their TTL runs out; after that,
//! requests are refused with the reason, and fetching is tried again every
//! [`RETRY_EVERY`]. One fetch runs at a time; requests whose key is cached never wait for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use serde_json::Value;

use crate::config::{is_trusted_url, JwtAlgorithm};
use crate::update::download::Fetcher;

/// Least time between two fetches caused by tokens naming an unknown key.
pub const KID_REFETCH_EVERY: Duration = Duration::from_secs(60);
/// Least time between two attempts while no usable keys are held.
pub const RETRY_EVERY: Duration = Duration::from_secs(10);
/// Longest a fetch (discovery and key set together) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest key set or discovery document read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Most keys kept from one set.
const MAX_KEYS: usize = 64;
/// How often the same fetch failure is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Where the keys are.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A key set URL given in the configuration.
    Url(String),
    /// The `jwks_uri` of the issuer's discovery document.
    Discovery { issuer: String },
}

/// One verification key of the set.
pub struct Key {
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub algorithm: JwtAlgorithm,
    pub decoding: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token of `algorithm` naming `kid` (any key of the
    /// algorithm when the token names none).
    pub fn fits(&self, kid: Option<&str>, algorithm: JwtAlgorithm) -> bool {
        self.algorithm == algorithm && (kid.is_none() || self.kid.as_deref() == kid)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

/// Why no key could be found for a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    /// The set, fresh, has no key with this `kid` (and no refetch is due).
    UnknownKid(String),
    /// No usable key is held: the reason the set could not be fetched.
    Unavailable(String),
}

#[derive(Default)]
struct State {
    keys: Vec<Arc<Key>>,
    /// When `keys` were fetched.
    fetched: Option<Instant>,
    /// When a fetch last ended, successful or not, and how many have.
    attempted: Option<Instant>,
    attempts: u64,
    /// When an unknown `kid` last caused a fetch.
    kid_refetch: Option<Instant>,
    /// The last fetch's failure.
    error: Option<String>,
    /// The key set URL found through discovery.
    discovered: Option<String>,
    logged: Option<Instant>,
}

/// The cached key set of one issuer.
pub struct KeyCache {
    source: KeySource,
    ttl: Duration,
    fetcher: Arc<Fetcher>,
    state: RwLock<State>,
    fetching: tokio::sync::Mutex<()>,
    /// Requests made for key sets and discovery documents, since start.
    requests: AtomicU64,
}

enum Due {
    UnknownKid,
    Stale,
}

impl KeyCache {
    pub fn new(source: KeySource, ttl: Duration, fetcher: Arc<Fetcher>) -> KeyCache {
        KeyCache {
            source,
            ttl,
            fetcher,
            state: RwLock::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
            requests: AtomicU64::new(0),
        }
    }

    /// Requests made to the issuer so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Fetches the set now unless fresh keys are held (at start, so that the first request
    /// does not wait).
    pub async fn prefetch(&self) {
        let _ = self.keys_for(None, JwtAlgorithm::RS256).await;
    }

    /// The keys that may verify a token with this `kid` (all keys of the algorithm when the
    /// token names none).
    pub async fn keys_for(&self, kid: Option<&str>, algorithm: JwtAlgorithm) -> Result<Vec<Arc<Key>>, KeyError> {
        let (due, seen) = {
            let state = self.read();
            match self.evaluate(&state, kid, algorithm, Instant::now()) {
                Ok(keys) => return Ok(keys),
                Err((None, e)) => return Err(e),
                Err((Some(due), _)) => (due, state.attempts),
            }
        };
        let _one_at_a_time = self.fetching.lock().await;
        let attempts = self.read().attempts;
        if attempts != seen {
            // Another request fetched while this one waited: use what it found.
            let state = self.read();
            return self.evaluate(&state, kid, algorithm, Instant::now()).map_err(|(_, e)| e);
        }
        if let Due::UnknownKid = due {
            self.write().kid_refetch = Some(Instant::now());
        }
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())),
        };
        let now = Instant::now();
        let mut state = self.write();
        state.attempted = Some(now);
        state.attempts += 1;
        match result {
            Ok(keys) => {
                log::info!("{} signing key(s) loaded from {}", keys.len(), self.describe(&state));
                state.keys = keys;
                state.fetched = Some(now);
                state.error = None;
            }
            Err(e) => {
                let message = format!("the key set of {} could not be fetched: {e}", self.describe(&state));
                if state.logged.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
                    state.logged = Some(now);
                    log::warn!("{message}");
                }
                if matches!(self.source, KeySource::Discovery { .. }) {
                    state.discovered = None;
                }
                state.error = Some(message);
            }
        }
        self.evaluate(&state, kid, algorithm, now).map_err(|(_, e)| e)
    }

    /// What the cache can answer now: the keys, or the error and whether a fetch is due.
    fn evaluate(
        &self,
        state: &State,
        kid: Option<&str>,
        algorithm: JwtAlgorithm,
        now: Instant,
    ) -> Result<Vec<Arc<Key>>, (Option<Due>, KeyError)> {
        let fresh = state.fetched.is_some_and(|t| now.duration_since(t) < self.ttl);
        if !fresh {
            // Failures are retried every RETRY_EVERY; keys that merely expired are fetched now.
            let due = state.error.is_none() || state.attempted.is_none_or(|t| now.duration_since(t) >= RETRY_EVERY);
            let why = match (&state.error, state.fetched) {
                (Some(e), _) => e.clone(),
                (None, Some(_)) => "the cached keys expired".to_string(),
                (None, None) => "the key set has not been fetched yet".to_string(),
            };
            return Err((due.then_some(Due::Stale), KeyError::Unavailable(why)));
        }
        let keys: Vec<Arc<Key>> = state.keys.iter().filter(|k| k.fits(kid, algorithm)).cloned().collect();
        if !keys.is_empty() {
            return Ok(keys);
        }
        let due = state.kid_refetch.is_none_or(|t| now.duration_since(t) >= KID_REFETCH_EVERY);
        let kid = kid.map_or_else(|| format!("(none, algorithm {algorithm})"), str::to_string);
        Err((due.then_some(Due::UnknownKid), KeyError::UnknownKid(kid)))
    }

    fn describe(&self, state: &State) -> String {
        match (&self.source, &state.discovered) {
            (KeySource::Url(url), _) => url.clone(),
            (KeySource::Discovery { issuer }, Some(url)) => format!("{issuer} ({url})"),
            (KeySource::Discovery { issuer }, None) => issuer.clone(),
        }
    }

    async fn fetch(&self) -> Result<Vec<Arc<Key>>, String> {
        let url = match &self.source {
            KeySource::Url(url) => url.clone(),
            KeySource::Discovery { issuer } => match self.discovered() {
                Some(url) => url,
                None => {
                    let url = self.discover(issuer).await?;
                    self.write().discovered = Some(url.clone());
                    url
                }
            },
        };
        let body = self.get(&url).await?;
        parse_key_set(&body)
    }

    /// The `jwks_uri` of the issuer's OpenID Connect discovery document.
    async fn discover(&self, issuer: &str) -> Result<String, String> {
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let body = self.get(&url).await?;
        let doc: Value = serde_json::from_slice(&body).map_err(|e| format!("{url} is not JSON: {e}"))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err(format!("{url} names another issuer than {issuer:?}"));
        }
        let jwks = doc.get("jwks_uri").and_then(Value::as_str).ok_or_else(|| format!("{url} has no jwks_uri"))?;
        if !is_trusted_url(jwks) {
            return Err(format!("{url} gives jwks_uri {jwks:?}, which is not https"));
        }
        Ok(jwks.to_string())
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.fetcher.fetch_small(url, MAX_DOCUMENT_BYTES).await.map_err(|e| e.to_string())
    }

    fn discovered(&self) -> Option<String> {
        self.read().discovered.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The signature keys of a JWKS document. Keys this server cannot or must not use are left
/// out: encryption keys, shared secrets (`oct`), other curves, and keys whose declared
/// algorithm is not one it verifies.
pub fn parse_key_set(body: &[u8]) -> Result<Vec<Arc<Key>>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("the key set is not JSON: {e}"))?;
    let entries = doc.get("keys").and_then(Value::as_array).ok_or("the key set has no \"keys\" list")?;
    let keys: Vec<Arc<Key>> = entries.iter().filter_map(|v| key_of(v).map(Arc::new)).take(MAX_KEYS).collect();
    if keys.is_empty() {
        return Err(format!("the key set holds no usable signature key ({} entries)", entries.len()));
    }
    Ok(keys)
}

fn key_of(value: &Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
        return None;
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => JwtAlgorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => JwtAlgorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => JwtAlgorithm::EdDSA,
        _ => return None,
    };
    if let Some(declared) = &jwk.common.key_algorithm {
        if format!("{declared:?}") != algorithm.as_str() {
            return None;
        }
    }
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key { kid: jwk.common.key_id.clone(), algorithm, decoding })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    /// A key set server on 127.0.0.1 answering every request with the set, or with 503
    /// while `down` is set; counts the requests.
    struct Served {
        url: String,
        down: Arc<std::sync::atomic::AtomicBool>,
        requests: Arc<AtomicU64>,
    }

    fn serve_key_set() -> Served {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/certs", listener.local_addr().unwrap());
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let (d, r) = (down.clone(), requests.clone());
        let body = serde_json::json!({"keys": [{"kty": "RSA", "kid": "a", "n": RSA_N, "e": "AQAB"}]}).to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(50) {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                r.fetch_add(1, Ordering::SeqCst);
                let (status, body) =
                    if d.load(Ordering::SeqCst) { ("503 Down", "down") } else { ("200 OK", body.as_str()) };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Served { url, down, requests }
    }

    #[tokio::test]
    async fn cached_keys_outlive_an_outage_until_their_ttl_and_refetches_are_bounded() {
        let served = serve_key_set();
        let ttl = Duration::from_millis(400);
        let fetcher = Arc::new(Fetcher::new(crate::update::download::FetchSettings::default()));
        let cache = KeyCache::new(KeySource::Url(served.url.clone()), ttl, fetcher);
        let fetches = || served.requests.load(Ordering::SeqCst);
        assert_eq!(cache.keys_for(Some("a"), JwtAlgorithm::RS256).await.unwrap().len(), 1);
        assert_eq!(fetches(), 1);
        // Unknown kids: one refetch, then refused without asking again.
        assert_eq!(cache.keys_for(Some("b"), JwtAlgorithm::RS256).await.unwrap_err(), KeyError::UnknownKid("b".into()));
        assert_eq!(cache.keys_for(Some("c"), JwtAlgorithm::RS256).await.unwrap_err(), KeyError::UnknownKid("c".into()));
        assert_eq!(fetches(), 2);
        // The issuer goes down: the cached key still works until the TTL.
        served.down.store(true, Ordering::SeqCst);
        assert!(cache.keys_for(Some("a"), JwtAlgorithm::RS256).await.is_ok());
        assert_eq!(fetches(), 2);
        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        let KeyError::Unavailable(why) = cache.keys_for(Some("a"), JwtAlgorithm::RS256).await.unwrap_err() else {
            panic!("expected the keys to be unavailable");
        };
        assert!(why.contains("503") && why.contains(&served.url), "{why}");
        assert_eq!(fetches(), 3);
        // No new attempt before RETRY_EVERY, however many requests come.
        for _ in 0..20 {
            assert!(matches!(cache.keys_for(Some("a"), JwtAlgorithm::RS256).await, Err(KeyError::Unavailable(_))));
        }
        assert_eq!(fetches(), 3);
        assert_eq!(cache.requests(), 3);
    }

    #[test]
    fn signature_keys_are_kept_and_others_left_out() {
        let set = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "a", "n": RSA_N, "e": "AQAB", "alg": "RS256", "use": "sig"},
            {"kty": "RSA", "kid": "enc", "n": RSA_N, "e": "AQAB", "use": "enc"},
            {"kty": "RSA", "kid": "ps", "n": RSA_N, "e": "AQAB", "alg": "PS256"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "weird"}
        ]});
        let keys = parse_key_set(set.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["a"]);
        assert_eq!(keys[0].algorithm, JwtAlgorithm::RS256);
    }

    #[test]
    fn a_set_without_usable_keys_is_an_error() {
        assert!(parse_key_set(b"{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}")
            .unwrap_err()
            .contains("no usable"));
        assert!(parse_key_set(b"[]").unwrap_err().contains("no \"keys\""));
        assert!(parse_key_set(b"{").unwrap_err().contains("not JSON"));
    }
}
