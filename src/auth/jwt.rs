//! Signed tokens (JWTs) of Cloudflare Access and OIDC issuers: checking one, and finding the
//! role its claims map to.
//!
//! The header is read here first, so that refusals can say exactly what was wrong (`alg:
//! none`, an HMAC algorithm, an unknown key) before any key is looked up; the signature and
//! the registered claims (`exp`, `nbf`, `iss`, `aud`) are then checked by `jsonwebtoken`,
//! and `iat` here. Each key verifies one algorithm only, so a token cannot choose how its
//! signature is checked.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::jwks::{Key, KeyCache, KeyError};
use crate::config::{JwtAlgorithm, Role, RoleMapping};

/// Tokens longer than this are refused unread.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Clock difference tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECONDS: u64 = 60;

/// Why a token was refused. The messages never echo the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtError {
    TooLarge(usize),
    Malformed(&'static str),
    AlgNone,
    AlgNotAllowed { alg: String, allowed: String },
    UnknownKid(String),
    NoKeys(String),
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongAudience,
    WrongIssuer,
    MissingClaim(String),
}

impl JwtError {
    /// A stable name for the reason, for clients and tests.
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::TooLarge(_) => "token_too_large",
            JwtError::Malformed(_) => "token_malformed",
            JwtError::AlgNone => "alg_none",
            JwtError::AlgNotAllowed { .. } => "alg_not_allowed",
            JwtError::UnknownKid(_) => "unknown_kid",
            JwtError::NoKeys(_) => "no_keys",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::IssuedInFuture => "token_issued_in_future",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::MissingClaim(_) => "missing_claim",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::TooLarge(n) => {
                write!(f, "the token is {n} bytes; tokens over {MAX_TOKEN_BYTES} bytes are refused")
            }
            JwtError::Malformed(what) => write!(f, "the token is not a well-formed JWT: {what}"),
            JwtError::AlgNone => f.write_str("the token is unsigned (alg \"none\"), which is never accepted"),
            JwtError::AlgNotAllowed { alg, allowed } => {
                write!(f, "the token's algorithm {alg:?} is not accepted here (accepted: {allowed})")
            }
            JwtError::UnknownKid(kid) => {
                write!(f, "the token names key {kid:?}, which the issuer's key set does not hold")
            }
            JwtError::NoKeys(why) => write!(f, "no signing keys to check the token with: {why}"),
            JwtError::BadSignature => f.write_str("the token's signature does not verify"),
            JwtError::Expired => f.write_str("the token has expired"),
            JwtError::NotYetValid => f.write_str("the token is not valid yet (nbf is in the future)"),
            JwtError::IssuedInFuture => f.write_str("the token was issued in the future (iat); check the clocks"),
            JwtError::WrongAudience => f.write_str("the token is for another audience (aud)"),
            JwtError::WrongIssuer => f.write_str("the token is from another issuer (iss)"),
            JwtError::MissingClaim(c) => write!(f, "the token has no {c:?} claim"),
        }
    }
}

/// Checks the tokens of one issuer.
pub struct Verifier {
    issuer: String,
    audience: String,
    algorithms: Vec<JwtAlgorithm>,
    /// The claim checks of each accepted algorithm, made once.
    validations: Vec<(JwtAlgorithm, Validation)>,
    keys: Arc<KeyCache>,
}

impl Verifier {
    pub fn new(issuer: String, audience: String, algorithms: Vec<JwtAlgorithm>, keys: Arc<KeyCache>) -> Verifier {
        super::jwt_crypto::install();
        let validations = algorithms
            .iter()
            .map(|&algorithm| {
                let mut validation = Validation::new(jwt_algorithm(algorithm));
                validation.leeway = LEEWAY_SECONDS;
                validation.validate_nbf = true;
                validation.set_issuer(&[&issuer]);
                validation.set_audience(&[&audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
                (algorithm, validation)
            })
            .collect();
        Verifier { issuer, audience, algorithms, validations, keys }
    }

    /// The issuer, audience and algorithms, for the log.
    pub fn describe(&self) -> String {
        let algorithms: Vec<&str> = self.algorithms.iter().map(|a| a.as_str()).collect();
        format!("issuer {}, audience {}, {}", self.issuer, self.audience, algorithms.join("/"))
    }

    pub fn keys(&self) -> &Arc<KeyCache> {
        &self.keys
    }

    /// The token's claims, if it is signed by one of the issuer's keys, for this audience,
    /// and valid now.
    pub async fn verify(&self, token: &str) -> Result<Map<String, Value>, JwtError> {
        let (algorithm, kid) = self.read_header(token)?;
        let keys = self.keys.keys_for(kid.as_deref(), algorithm).await.map_err(|e| match e {
            KeyError::UnknownKid(kid) => JwtError::UnknownKid(kid),
            KeyError::Unavailable(why) => JwtError::NoKeys(why),
        })?;
        self.check(token, algorithm, &keys)
    }

    /// [`Self::verify`] against `keys` rather than the issuer's key set: the same checks,
    /// without the network (the fuzz target of token parsing uses it).
    pub fn verify_with(&self, token: &str, keys: &[Arc<Key>]) -> Result<Map<String, Value>, JwtError> {
        let (algorithm, kid) = self.read_header(token)?;
        let keys: Vec<Arc<Key>> = keys.iter().filter(|k| k.fits(kid.as_deref(), algorithm)).cloned().collect();
        if keys.is_empty() {
            return Err(JwtError::UnknownKid(kid.unwrap_or_default()));
        }
        self.check(token, algorithm, &keys)
    }

    /// The signature (by one of `keys`) and the claims of a token whose header was read.
    fn check(&self, token: &str, algorithm: JwtAlgorithm, keys: &[Arc<Key>]) -> Result<Map<String, Value>, JwtError> {
        // read_header accepts only the algorithms these were made for.
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == algorithm) else {
            return Err(JwtError::BadSignature);
        };
        let mut last = JwtError::BadSignature;
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation) {
                Ok(data) => return check_issued_at(data.claims),
                Err(e) => {
                    last = convert(e.kind());
                    if last != JwtError::BadSignature {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// The algorithm and key id of a token, refusing what this verifier never accepts.
    fn read_header(&self, token: &str) -> Result<(JwtAlgorithm, Option<String>), JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLarge(token.len()));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed("a JWT has three parts separated by dots"));
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| JwtError::Malformed("the header is not base64url"))?;
        let header: Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed("the header is not a JSON object"))?;
        let alg = header.get("alg").and_then(Value::as_str).ok_or(JwtError::Malformed("the header has no alg"))?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(JwtError::AlgNone);
        }
        if header.contains_key("crit") {
            return Err(JwtError::Malformed("the header has critical extensions (crit), which are not supported"));
        }
        let algorithm = JwtAlgorithm::parse(alg).filter(|a| self.algorithms.contains(a)).ok_or_else(|| {
            let allowed: Vec<&str> = self.algorithms.iter().map(|a| a.as_str()).collect();
            // The name is the caller's: only its harmless characters are repeated.
            let alg = alg.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(16).collect();
            JwtError::AlgNotAllowed { alg, allowed: allowed.join(", ") }
        })?;
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) if kid.len() <= 256 => Some(kid.clone()),
            Some(_) => return Err(JwtError::Malformed("the header's kid is not a short string")),
        };
        Ok((algorithm, kid))
    }
}

fn jwt_algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn convert(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.chars().take(32).collect()),
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::InvalidClaimFormat(_) => JwtError::Malformed("a registered claim has the wrong type"),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => JwtError::Malformed("a part is not base64url"),
        ErrorKind::Json(_) => JwtError::Malformed("the claims are not a JSON object"),
        _ => JwtError::BadSignature,
    }
}

/// Refuses tokens issued in the future, beyond the leeway (`jsonwebtoken` leaves `iat` alone).
fn check_issued_at(claims: Map<String, Value>) -> Result<Map<String, Value>, JwtError> {
    match claims.get("iat") {
        None => Ok(claims),
        Some(Value::Number(n)) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            match n.as_f64() {
                Some(iat) if iat <= (now + LEEWAY_SECONDS) as f64 => Ok(claims),
                Some(_) => Err(JwtError::IssuedInFuture),
                None => Err(JwtError::Malformed("iat is not a number")),
            }
        }
        Some(_) => Err(JwtError::Malformed("iat is not a number")),
    }
}

/// The name of a token's caller in the audit log: its email, a Cloudflare service token's
/// common name, or its subject.
pub fn caller_name(claims: &Map<String, Value>) -> Option<String> {
    ["email", "common_name", "sub"]
        .iter()
        .filter_map(|c| claims.get(*c).and_then(Value::as_str))
        .map(|s| s.chars().filter(|c| !c.is_control()).take(256).collect::<String>())
        .find(|s| !s.is_empty())
}

/// `role_mappings` compiled: the first entry whose claim matches gives the role.
pub struct RoleMap {
    rules: Vec<(Vec<String>, Matcher, Role)>,
}

enum Matcher {
    Pattern(regex_lite::Regex),
    Value(String),
}

impl RoleMap {
    pub fn new(mappings: &[RoleMapping]) -> Result<RoleMap, String> {
        let mut rules = Vec::new();
        for (i, m) in mappings.iter().enumerate() {
            let path = m.jwt_claim.split('.').map(str::to_string).collect();
            let matcher = match (m.anchored_pattern(), &m.value) {
                (Some(p), None) => Matcher::Pattern(
                    regex_lite::Regex::new(&p).map_err(|e| format!("security.role_mappings[{i}].pattern: {e}"))?,
                ),
                (None, Some(v)) => Matcher::Value(v.clone()),
                _ => return Err(format!("security.role_mappings[{i}]: give exactly one of pattern or value")),
            };
            rules.push((path, matcher, m.role));
        }
        Ok(RoleMap { rules })
    }

    /// The role of the first entry that matches these claims, with the entry's index.
    pub fn role(&self, claims: &Map<String, Value>) -> Option<(usize, Role)> {
        self.rules.iter().enumerate().find_map(|(i, (path, matcher, role))| {
            let mut value = claims.get(path.first()?)?;
            for step in &path[1..] {
                value = value.get(step)?;
            }
            let matches = |s: &str| match matcher {
                Matcher::Pattern(re) => re.is_match(s),
                Matcher::Value(v) => s == v,
            };
            let hit = match value {
                Value::String(s) => matches(s),
                Value::Array(items) => items.iter().filter_map(Value::as_str).any(matches),
                _ => false,
            };
            hit.then_some((i, *role))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn mapping(claim: &str, pattern: Option<&str>, value: Option<&str>, role: Role) -> RoleMapping {
        RoleMapping { jwt_claim: claim.into(), pattern: pattern.map(Into::into), value: value.map(Into::into), role }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn role_mappings_first_match_wins_and_no_match_is_none() {
        let map = RoleMap::new(&[
            mapping("email", Some("admin@example\\.com"), None, Role::Admin),
            mapping("email", Some(".*@example\\.com"), None, Role::Operator),
            mapping("groups", None, Some("mcp-viewers"), Role::Viewer),
            mapping("common_name", None, Some("ci.access"), Role::Operator),
            mapping("custom.team", None, Some("ops"), Role::Operator),
        ])
        .unwrap();
        let table: [(Value, Option<(usize, Role)>); 10] = [
            (json!({"email": "admin@example.com"}), Some((0, Role::Admin))),
            (json!({"email": "bob@example.com"}), Some((1, Role::Operator))),
            // Patterns match whole values: neither a prefix nor a suffix is enough.
            (json!({"email": "notadmin@example.com.evil.org"}), None),
            (json!({"email": "xadmin@example.com"}), Some((1, Role::Operator))),
            (json!({"email": "eve@evil.org", "groups": ["staff", "mcp-viewers"]}), Some((2, Role::Viewer))),
            (json!({"email": "eve@evil.org", "groups": "mcp-viewers"}), Some((2, Role::Viewer))),
            (json!({"email": "eve@evil.org", "groups": ["mcp-viewers-not"]}), None),
            (json!({"common_name": "ci.access", "sub": ""}), Some((3, Role::Operator))),
            (json!({"custom": {"team": "ops"}}), Some((4, Role::Operator))),
            (json!({"sub": "someone", "email": 42}), None),
        ];
        for (c, expected) in table {
            assert_eq!(map.role(&claims(c.clone())), expected, "{c}");
        }
    }

    #[test]
    fn the_caller_is_named_by_email_then_common_name_then_subject() {
        assert_eq!(caller_name(&claims(json!({"email": "a@b.c", "sub": "1"}))).unwrap(), "a@b.c");
        assert_eq!(
            caller_name(&claims(json!({"email": "", "common_name": "x.access", "sub": ""}))).unwrap(),
            "x.access"
        );
        assert_eq!(caller_name(&claims(json!({"sub": "42"}))).unwrap(), "42");
        assert_eq!(caller_name(&claims(json!({"sub": ""}))), None);
    }

    #[test]
    fn iat_in_the_future_beyond_the_leeway_is_refused() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(check_issued_at(claims(json!({"iat": now + 30}))).is_ok());
        assert_eq!(check_issued_at(claims(json!({"iat": now + 600}))), Err(JwtError::IssuedInFuture));
        assert!(check_issued_at(claims(json!({"iat": "soon"}))).is_err());
    }
}
