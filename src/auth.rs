//! Who is calling and what they may do: bearer tokens mapped to roles, the development
//! `none` mode, and per-identity rate limits.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::config::{AuthMode, Config, RateLimitConfig, Role};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The name in the audit log; shared, as every request of a caller carries it.
    pub name: Arc<str>,
    pub role: Role,
}

/// Why a request was not authenticated. The messages never echo the presented token.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A header that is not a bearer token.
    Malformed,
    /// A bearer token that matches no configured token.
    Invalid,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::Missing => "authentication required: send `Authorization: Bearer <token>`",
            AuthError::Malformed => "the Authorization header must be `Bearer <token>`",
            AuthError::Invalid => "the bearer token is not valid",
        })
    }
}

/// Checks credentials presented over HTTP.
pub struct Authenticator {
    mode: AuthMode,
    /// Who callers are when `auth_mode` is `none`.
    anonymous: Identity,
    /// SHA-256 of each token: compared in constant time, and the tokens themselves are not
    /// kept in memory longer than start-up.
    tokens: Vec<([u8; 32], Identity)>,
    /// The digest of the one-time token of a self-check in progress (see [`Self::begin_probe`]).
    probe: std::sync::RwLock<Option<[u8; 32]>>,
}

/// The identity of the server's own check of itself after an update, in the audit log.
pub const PROBE_IDENTITY: &str = "update-health-check";

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("mode", &self.mode).field("tokens", &self.tokens.len()).finish()
    }
}

/// Tokens shorter than this are refused at start: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

impl Authenticator {
    /// Resolves configured tokens from `secrets` (environment, then secrets file).
    pub fn new(config: &Config, secrets: &BTreeMap<String, String>) -> Result<Authenticator, String> {
        let mut tokens = Vec::new();
        if config.security.auth_mode == AuthMode::Token {
            for (i, t) in config.security.tokens.iter().enumerate() {
                let Some(token) = secrets.get(&t.env).filter(|v| !v.is_empty()) else {
                    return Err(format!(
                        "security.tokens[{i}] ({}): the secret {} is not set; put `{}=<random token>` in the secrets file or the environment",
                        t.identity, t.env, t.env
                    ));
                };
                if token.len() < MIN_TOKEN_LEN {
                    return Err(format!(
                        "security.tokens[{i}] ({}): the secret {} is shorter than {MIN_TOKEN_LEN} characters; use a long random token",
                        t.identity, t.env
                    ));
                }
                tokens.push((digest(token), Identity { name: t.identity.as_str().into(), role: t.role }));
            }
        }
        let anonymous = Identity { name: "anonymous".into(), role: config.security.anonymous_role };
        Ok(Authenticator { mode: config.security.auth_mode, anonymous, tokens, probe: std::sync::RwLock::new(None) })
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Authenticates the value of an `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, AuthError> {
        if self.mode == AuthMode::None {
            return Ok(self.anonymous.clone());
        }
        let header = authorization.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Malformed);
        }
        let presented = digest(token.trim());
        // Check every entry so the time taken does not reveal which one matched.
        let mut found = None;
        for (hash, identity) in &self.tokens {
            if constant_time_eq(hash, &presented) {
                found = Some(identity);
            }
        }
        match found {
            Some(identity) => Ok(identity.clone()),
            None => self.probe_identity(&presented).ok_or(AuthError::Invalid),
        }
    }

    /// Creates a random one-time token with the viewer role, valid until [`Self::end_probe`]:
    /// the server's check of its own HTTP listener after an update, which must pass whatever
    /// the authentication mode. The token exists only in this process's memory.
    pub fn begin_probe(&self) -> Result<String, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a probe token: {e}"))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if let Ok(mut probe) = self.probe.write() {
            *probe = Some(digest(&token));
        }
        Ok(token)
    }

    /// Withdraws the probe token.
    pub fn end_probe(&self) {
        if let Ok(mut probe) = self.probe.write() {
            *probe = None;
        }
    }

    fn probe_identity(&self, presented: &[u8; 32]) -> Option<Identity> {
        let probe = self.probe.read().ok()?;
        let hash = probe.as_ref()?;
        constant_time_eq(hash, presented).then(|| Identity { name: PROBE_IDENTITY.into(), role: Role::Viewer })
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Token-bucket rate limits per identity.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<Arc<str>, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> RateLimiter {
        RateLimiter {
            per_second: f64::from(cfg.requests_per_minute) / 60.0,
            burst: f64::from(cfg.burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `identity`'s bucket; `Err(seconds)` says when to retry.
    pub fn check(&self, identity: &Arc<str>) -> Result<(), f64> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        if buckets.len() > 10_000 {
            // Identities are configured, so this only grows under misuse: start afresh.
            buckets.clear();
        }
        let (tokens, last) = buckets.entry(Arc::clone(identity)).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::TokenConfig;

    fn token_config() -> Config {
        let mut c = Config::from_yaml("config_version: \"1.2\"\n", "test").unwrap();
        c.security.tokens = vec![
            TokenConfig { identity: "alice".into(), role: Role::Operator, env: "ALICE_TOKEN".into() },
            TokenConfig { identity: "bob".into(), role: Role::Viewer, env: "BOB_TOKEN".into() },
        ];
        c
    }

    fn secrets() -> BTreeMap<String, String> {
        [("ALICE_TOKEN", "alice-0123456789abcdef"), ("BOB_TOKEN", "bob-0123456789abcdef")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_token_maps_to_its_identity_and_role() {
        let auth = Authenticator::new(&token_config(), &secrets()).unwrap();
        let alice = auth.authenticate(Some("Bearer alice-0123456789abcdef")).unwrap();
        assert_eq!((&*alice.name, alice.role), ("alice", Role::Operator));
        assert_eq!(auth.authenticate(Some("bearer bob-0123456789abcdef")).unwrap().role, Role::Viewer);
    }

    #[test]
    fn missing_malformed_and_wrong_tokens_are_refused() {
        let auth = Authenticator::new(&token_config(), &secrets()).unwrap();
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(auth.authenticate(Some("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(auth.authenticate(Some("Bearer nope-0123456789abcdef")), Err(AuthError::Invalid));
    }

    #[test]
    fn the_probe_token_is_a_viewer_only_while_the_probe_lasts() {
        let auth = Authenticator::new(&token_config(), &secrets()).unwrap();
        let token = auth.begin_probe().unwrap();
        let header = format!("Bearer {token}");
        let probe = auth.authenticate(Some(&header)).unwrap();
        assert_eq!((&*probe.name, probe.role), (PROBE_IDENTITY, Role::Viewer));
        assert_eq!(auth.authenticate(Some("Bearer alice-0123456789abcdef")).unwrap().role, Role::Operator);
        auth.end_probe();
        assert_eq!(auth.authenticate(Some(&header)), Err(AuthError::Invalid));
        // A new probe gets a new token.
        assert_ne!(auth.begin_probe().unwrap(), token);
    }

    #[test]
    fn a_missing_or_short_secret_is_a_start_up_error_naming_the_variable() {
        let mut s = secrets();
        s.remove("BOB_TOKEN");
        let err = Authenticator::new(&token_config(), &s).unwrap_err();
        assert!(err.contains("BOB_TOKEN"), "{err}");
        s.insert("BOB_TOKEN".into(), "short".into());
        assert!(Authenticator::new(&token_config(), &s).unwrap_err().contains("shorter"));
    }

    #[test]
    fn the_rate_limiter_allows_the_burst_then_asks_to_wait() {
        let limiter = RateLimiter::new(&RateLimitConfig { requests_per_minute: 60, burst: 3 });
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert!((0..3).all(|_| limiter.check(&a).is_ok()));
        let wait = limiter.check(&a).unwrap_err();
        assert!(wait > 0.0 && wait <= 1.0, "{wait}");
        assert!(limiter.check(&b).is_ok());
    }
}
