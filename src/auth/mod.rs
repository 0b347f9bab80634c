//! Who is calling and what they may do: bearer tokens mapped to roles, Cloudflare Access
//! assertions and OIDC access tokens whose claims map to roles, the development `none`
//! mode, and per-identity rate limits.

pub mod jwks;
pub mod jwt;
mod jwt_crypto;
mod verified;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::{AuthMode, AuthModes, Config, RateLimitConfig, Role};
use crate::update::download::{FetchSettings, Fetcher};
use jwks::{KeyCache, KeySource};
use jwt::{JwtError, RoleMap, Verifier};

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The name in the audit log; shared, as every request of a caller carries it.
    pub name: Arc<str>,
    pub role: Role,
    /// Who owns sessions and rate-limit buckets: the name qualified by how the caller
    /// authenticated, so that a token's `admin` and an issuer's `admin` are not one caller.
    pub principal: Arc<str>,
}

impl Identity {
    pub fn new(how: &str, name: &str, role: Role) -> Identity {
        Identity { name: name.into(), role, principal: format!("{how}:{name}").into() }
    }
}

/// Why a request was not authenticated. The messages never echo the presented token.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials at all.
    Missing,
    /// A header that is not a bearer token.
    Malformed,
    /// A bearer token that matches no configured token.
    Invalid,
    /// Credentials where this server's modes do not look for them.
    WrongHeader(&'static str),
    /// A request that came through Cloudflare without an Access assertion.
    NoAccessAssertion,
    /// A signed token that does not verify.
    Jwt(JwtError),
}

impl AuthError {
    /// A stable name for the reason, for clients and tests.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "credentials_missing",
            AuthError::Malformed => "authorization_malformed",
            AuthError::Invalid => "token_invalid",
            AuthError::WrongHeader(_) => "wrong_header",
            AuthError::NoAccessAssertion => "access_assertion_missing",
            AuthError::Jwt(e) => e.code(),
        }
    }

    /// A credential was presented (`error="invalid_token"` in the challenge).
    pub fn presented(&self) -> bool {
        !matches!(self, AuthError::Missing | AuthError::NoAccessAssertion)
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("authentication required: send `Authorization: Bearer <token>`"),
            AuthError::Malformed => f.write_str("the Authorization header must be `Bearer <token>`"),
            AuthError::Invalid => f.write_str("the bearer token is not valid"),
            AuthError::WrongHeader(hint) => f.write_str(hint),
            AuthError::NoAccessAssertion => f.write_str(
                "the request came through Cloudflare without a Cf-Access-Jwt-Assertion header: protect this \
                 hostname with a Cloudflare Access application",
            ),
            AuthError::Jwt(e) => e.fmt(f),
        }
    }
}

/// A caller the token checks accepted but no `role_mappings` entry matches: refused (403).
#[derive(Debug, PartialEq, Eq)]
pub struct NoRole {
    pub name: String,
}

impl fmt::Display for NoRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is authenticated but no security.role_mappings entry gives it a role", self.name)
    }
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Unauthenticated(AuthError),
    Forbidden(NoRole),
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Refusal {
        Refusal::Unauthenticated(e)
    }
}

/// The credentials a request carries, as read from its headers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Presented<'a> {
    pub authorization: Option<&'a str>,
    /// `Cf-Access-Jwt-Assertion`.
    pub access_assertion: Option<&'a str>,
    /// `Cookie` (Cloudflare Access's `CF_Authorization` is read from it).
    pub cookie: Option<&'a str>,
    /// Cloudflare's edge added its headers (`Cf-Ray`): the request came through a tunnel.
    pub via_cloudflare: bool,
}

impl<'a> Presented<'a> {
    /// A request with only an `Authorization` header (or none).
    #[cfg(test)]
    pub fn bearer(authorization: Option<&'a str>) -> Presented<'a> {
        Presented { authorization, ..Presented::default() }
    }

    /// The Access assertion: the header, else the `CF_Authorization` cookie.
    fn assertion(&self) -> Option<&'a str> {
        self.access_assertion.map(str::trim).filter(|a| !a.is_empty()).or_else(|| {
            self.cookie?.split(';').find_map(|c| c.trim().strip_prefix("CF_Authorization=")).filter(|v| !v.is_empty())
        })
    }
}

/// A token issuer whose JWTs are accepted: Cloudflare Access or an OIDC provider.
struct Issuer {
    mode: AuthMode,
    verifier: Verifier,
}

/// Checks credentials presented over HTTP.
pub struct Authenticator {
    modes: AuthModes,
    /// Who callers are when `auth_mode` is `none`.
    anonymous: Identity,
    /// SHA-256 of each token: compared in constant time, and the tokens themselves are not
    /// kept in memory longer than start-up.
    tokens: Vec<([u8; 32], Identity)>,
    cloudflare: Option<Issuer>,
    oidc: Option<Issuer>,
    roles: RoleMap,
    /// Tokens of issuers verified recently.
    verified: verified::Verified,
    /// The digest of the one-time token of a self-check in progress (see [`Self::begin_probe`]).
    probe: std::sync::RwLock<Option<[u8; 32]>>,
}

/// The identity of the server's own check of itself after an update, in the audit log.
pub const PROBE_IDENTITY: &str = "update-health-check";

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("modes", &self.modes).field("tokens", &self.tokens.len()).finish()
    }
}

/// Tokens shorter than this are refused at start: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

impl Authenticator {
    /// Resolves configured tokens from `secrets` (environment, then secrets file) and sets up
    /// the key caches of the token issuers (nothing is fetched yet: see [`Self::prefetch`]).
    pub fn new(config: &Config, secrets: &BTreeMap<String, String>) -> Result<Authenticator, String> {
        let security = &config.security;
        let mut tokens = Vec::new();
        if security.auth_mode.contains(AuthMode::Token) {
            for (i, t) in security.tokens.iter().enumerate() {
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
                tokens.push((digest(token), Identity::new("token", &t.identity, t.role)));
            }
        }
        // One client for both issuers: connections are built on first use and reused.
        let fetcher = Arc::new(Fetcher::new(FetchSettings::default()));
        let fetcher = || Arc::clone(&fetcher);
        let cloudflare = security.auth_mode.contains(AuthMode::CloudflareAccess).then(|| {
            let cf = &security.cloudflare_access;
            let ttl = Duration::from_secs(cf.jwks_cache_ttl_seconds);
            let keys = Arc::new(KeyCache::new(KeySource::Url(cf.jwks_url()), ttl, fetcher()));
            let verifier = Verifier::new(cf.issuer(), cf.audience_tag.clone(), vec![cf.jwt_algorithm], keys);
            Issuer { mode: AuthMode::CloudflareAccess, verifier }
        });
        let oidc = security.auth_mode.contains(AuthMode::Oidc).then(|| {
            let o = &security.oidc;
            let source = match &o.jwks_url {
                Some(url) => KeySource::Url(url.clone()),
                None => KeySource::Discovery { issuer: o.issuer.clone() },
            };
            let keys = Arc::new(KeyCache::new(source, Duration::from_secs(o.jwks_cache_ttl_seconds), fetcher()));
            let verifier = Verifier::new(o.issuer.clone(), o.resource.clone(), o.algorithms.clone(), keys);
            Issuer { mode: AuthMode::Oidc, verifier }
        });
        let roles = RoleMap::new(&security.role_mappings)?;
        let anonymous = Identity::new("anonymous", "anonymous", security.anonymous_role);
        Ok(Authenticator {
            modes: security.auth_mode.clone(),
            anonymous,
            tokens,
            cloudflare,
            oidc,
            roles,
            verified: verified::Verified::default(),
            probe: std::sync::RwLock::new(None),
        })
    }

    pub fn modes(&self) -> &AuthModes {
        &self.modes
    }

    /// One line saying how callers authenticate, for the log at start.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for mode in self.modes.iter() {
            parts.push(match mode {
                AuthMode::Token => format!("token ({} configured)", self.tokens.len()),
                AuthMode::None => "none (AUTHENTICATION IS OFF)".into(),
                AuthMode::CloudflareAccess | AuthMode::Oidc => {
                    let issuer = if mode == AuthMode::Oidc { &self.oidc } else { &self.cloudflare };
                    match issuer {
                        Some(i) => format!("{mode} ({})", i.verifier.describe()),
                        None => mode.to_string(),
                    }
                }
            });
        }
        parts.join(" + ")
    }

    /// Fetches the issuers' keys in the background, so that the first request finds them.
    pub fn prefetch(&self) {
        for issuer in [&self.cloudflare, &self.oidc].into_iter().flatten() {
            let keys = Arc::clone(issuer.verifier.keys());
            tokio::spawn(async move { keys.prefetch().await });
        }
    }

    /// Authenticates the value of an `Authorization` header alone.
    #[cfg(test)]
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, Refusal> {
        self.authenticate_request(&Presented::bearer(authorization)).await
    }

    /// Authenticates a request by the credentials it carries.
    ///
    /// With Cloudflare Access on, a request that carries an Access assertion is judged by it
    /// alone, and one that came through Cloudflare must carry one: static tokens are for
    /// callers on this machine or network, not for the tunnel.
    pub async fn authenticate_request(&self, p: &Presented<'_>) -> Result<Identity, Refusal> {
        if self.modes.is_none() {
            return Ok(self.anonymous.clone());
        }
        if let Some(cf) = &self.cloudflare {
            if let Some(assertion) = p.assertion() {
                return self.by_claims(cf, assertion).await;
            }
            if p.via_cloudflare {
                return Err(AuthError::NoAccessAssertion.into());
            }
        }
        let Some(header) = p.authorization else {
            if p.assertion().is_some() {
                return Err(AuthError::WrongHeader(
                    "Cf-Access-Jwt-Assertion is read only when security.auth_mode includes cloudflare_access; \
                     send `Authorization: Bearer <token>`",
                )
                .into());
            }
            return Err(AuthError::Missing.into());
        };
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(AuthError::Malformed.into());
        }
        let presented = digest(token);
        // Check every entry so the time taken does not reveal which one matched.
        let mut found = None;
        for (hash, identity) in &self.tokens {
            if constant_time_eq(hash, &presented) {
                found = Some(identity);
            }
        }
        if let Some(identity) = found.cloned().or_else(|| self.probe_identity(&presented)) {
            return Ok(identity);
        }
        let looks_like_jwt = token.bytes().filter(|&b| b == b'.').count() == 2;
        match (&self.oidc, &self.cloudflare) {
            (Some(oidc), _) if looks_like_jwt || !self.modes.contains(AuthMode::Token) => {
                self.by_claims(oidc, token).await
            }
            (None, Some(_)) if looks_like_jwt => Err(AuthError::WrongHeader(
                "a JWT in the Authorization header: Cloudflare Access assertions are read from the \
                 Cf-Access-Jwt-Assertion header (or the CF_Authorization cookie)",
            )
            .into()),
            _ => Err(AuthError::Invalid.into()),
        }
    }

    /// The identity of a verified token, with the role its claims map to.
    async fn by_claims(&self, issuer: &Issuer, token: &str) -> Result<Identity, Refusal> {
        // Keyed by the mode too: the same token is not both issuers' at once.
        let mut key = Sha256::new();
        key.update(issuer.mode.as_str());
        key.update([0]);
        key.update(token.as_bytes());
        let key: [u8; 32] = key.finalize().into();
        if let Some(identity) = self.verified.get(&key) {
            return Ok(identity);
        }
        let claims: Map<String, Value> = issuer.verifier.verify(token).await.map_err(AuthError::Jwt)?;
        let name = jwt::caller_name(&claims)
            .ok_or(AuthError::Jwt(JwtError::MissingClaim("email, common_name or sub".into())))?;
        match self.roles.role(&claims) {
            Some((_, role)) => {
                let identity = Identity::new(issuer.mode.as_str(), &name, role);
                self.verified.insert(key, &identity, &claims);
                Ok(identity)
            }
            None => Err(Refusal::Forbidden(NoRole { name })),
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
        constant_time_eq(hash, presented).then(|| Identity::new("probe", PROBE_IDENTITY, Role::Viewer))
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

    #[tokio::test]
    async fn each_token_maps_to_its_identity_and_role() {
        let auth = Authenticator::new(&token_config(), &secrets()).unwrap();
        let alice = auth.authenticate(Some("Bearer alice-0123456789abcdef")).await.unwrap();
        assert_eq!((&*alice.name, alice.role), ("alice", Role::Operator));
        assert_eq!(auth.authenticate(Some("bearer bob-0123456789abcdef")).await.unwrap().role, Role::Viewer);
    }

    #[tokio::test]
    async fn missing_malformed_and_wrong_tokens_are_refused() {
        let auth = Authenticator::new(&token_config(), &secrets()).unwrap();
        assert_eq!(auth.authenticate(None).await, Err(AuthError::Missing.into()));
        assert_eq!(auth.authenticate(Some("Basic abc")).await, Err(AuthError::Malformed.into()));
        assert_eq!(auth.authenticate(Some("Bearer nope-0123456789abcdef")).await, Err(AuthError::Invalid.into()));
    }

    #[tokio::test]
    async fn the_probe_token_is_a_viewer_only_while_the_probe_lasts() {
        let auth = Authenticator::new(&token_config(), &secrets()).unwrap();
        let token = auth.begin_probe().unwrap();
        let header = format!("Bearer {token}");
        let probe = auth.authenticate(Some(&header)).await.unwrap();
        assert_eq!((&*probe.name, probe.role), (PROBE_IDENTITY, Role::Viewer));
        assert_eq!(auth.authenticate(Some("Bearer alice-0123456789abcdef")).await.unwrap().role, Role::Operator);
        auth.end_probe();
        assert_eq!(auth.authenticate(Some(&header)).await, Err(AuthError::Invalid.into()));
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
