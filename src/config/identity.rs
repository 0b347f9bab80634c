//! How callers prove who they are: the authentication modes, Cloudflare Access, an OIDC
//! issuer, and the mapping of token claims to roles.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Role;

/// One way of authenticating HTTP callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Bearer tokens from secrets, each mapped to a role.
    Token,
    /// Cloudflare Access: the signed assertion Cloudflare adds to each request it lets through.
    CloudflareAccess,
    /// Bearer JWTs (OAuth access tokens) of an OpenID Connect issuer.
    Oidc,
    /// No authentication: development only, refused unless listening on loopback.
    None,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Token => "token",
            AuthMode::CloudflareAccess => "cloudflare_access",
            AuthMode::Oidc => "oidc",
            AuthMode::None => "none",
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `security.auth_mode`: one mode (`token`) or several that combine (`[token,
/// cloudflare_access]`): a request is accepted by whichever mode its credentials belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthModes(Vec<AuthMode>);

impl AuthModes {
    pub fn one(mode: AuthMode) -> AuthModes {
        AuthModes(vec![mode])
    }

    pub fn contains(&self, mode: AuthMode) -> bool {
        self.0.contains(&mode)
    }

    pub fn iter(&self) -> impl Iterator<Item = AuthMode> + '_ {
        self.0.iter().copied()
    }

    /// Authentication is off.
    pub fn is_none(&self) -> bool {
        self.contains(AuthMode::None)
    }
}

impl fmt::Display for AuthModes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|m| m.as_str()).collect();
        f.write_str(&names.join("+"))
    }
}

impl<'de> Deserialize<'de> for AuthModes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(AuthMode),
            Many(Vec<AuthMode>),
        }
        let modes = match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected one of token, cloudflare_access, oidc, none, or a list of token, cloudflare_access and oidc",
            )
        })? {
            OneOrMany::One(m) => vec![m],
            OneOrMany::Many(list) => list,
        };
        if modes.is_empty() {
            return Err(serde::de::Error::custom("the list of modes is empty; name at least one"));
        }
        if modes.len() > 1 && modes.contains(&AuthMode::None) {
            return Err(serde::de::Error::custom(
                "none turns authentication off and cannot be combined with other modes",
            ));
        }
        let mut unique: Vec<AuthMode> = Vec::new();
        for m in modes {
            if unique.contains(&m) {
                return Err(serde::de::Error::custom(format!("{m} is listed twice")));
            }
            unique.push(m);
        }
        Ok(AuthModes(unique))
    }
}

impl Serialize for AuthModes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

/// A JWT signature algorithm this server verifies. There is deliberately no `none` and no
/// HMAC: a shared secret would let anyone who can verify tokens also mint them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum JwtAlgorithm {
    RS256,
    ES256,
    EdDSA,
}

impl JwtAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<JwtAlgorithm> {
        [JwtAlgorithm::RS256, JwtAlgorithm::ES256, JwtAlgorithm::EdDSA].into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for JwtAlgorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        JwtAlgorithm::parse(&s).ok_or_else(|| {
            let why = if s.eq_ignore_ascii_case("none") {
                "unsigned tokens are never accepted"
            } else if s.to_ascii_uppercase().starts_with("HS") {
                "HMAC algorithms are refused: their key is a shared secret that could also sign tokens"
            } else {
                "it is not supported"
            };
            serde::de::Error::custom(format!("{s:?}: {why}; use RS256, ES256 or EdDSA"))
        })
    }
}

/// `security.cloudflare_access`: the Access application in front of this server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudflareAccessConfig {
    /// Must be true when `auth_mode` names `cloudflare_access` (the runbook writes it).
    pub enabled: bool,
    /// The Zero Trust team domain, `<team>.cloudflareaccess.com`: the tokens' issuer.
    pub team_domain: String,
    /// The Access application's audience (AUD) tag.
    pub audience_tag: String,
    /// Cloudflare signs with RS256; nothing else is accepted.
    pub jwt_algorithm: JwtAlgorithm,
    /// Where the team's signing keys are; `https://<team_domain>/cdn-cgi/access/certs` if empty.
    pub jwks_url: Option<String>,
    pub jwks_cache_ttl_seconds: u64,
}

impl Default for CloudflareAccessConfig {
    fn default() -> Self {
        CloudflareAccessConfig {
            enabled: false,
            team_domain: String::new(),
            audience_tag: String::new(),
            jwt_algorithm: JwtAlgorithm::RS256,
            jwks_url: None,
            jwks_cache_ttl_seconds: 3600,
        }
    }
}

impl CloudflareAccessConfig {
    /// The issuer of the team's tokens.
    pub fn issuer(&self) -> String {
        format!("https://{}", self.team_domain)
    }

    pub fn jwks_url(&self) -> String {
        self.jwks_url.clone().unwrap_or_else(|| format!("https://{}/cdn-cgi/access/certs", self.team_domain))
    }
}

/// `security.oidc`: an OpenID Connect (OAuth 2.1) issuer whose access tokens are accepted.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer URL, exactly as in its tokens' `iss`.
    pub issuer: String,
    /// This server's resource URI (RFC 8707), e.g. `https://pi.example.com/mcp`: tokens must
    /// name it in `aud`, and it is the `resource` of the protected-resource metadata.
    pub resource: String,
    /// The issuer's key set; found through its discovery document when empty.
    pub jwks_url: Option<String>,
    /// Signature algorithms accepted, from RS256, ES256 and EdDSA.
    pub algorithms: Vec<JwtAlgorithm>,
    pub jwks_cache_ttl_seconds: u64,
    /// Authorization servers announced to clients; the issuer if empty.
    pub authorization_servers: Vec<String>,
    /// Scopes announced in the protected-resource metadata.
    pub scopes_supported: Vec<String>,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            resource: String::new(),
            jwks_url: None,
            algorithms: vec![JwtAlgorithm::RS256],
            jwks_cache_ttl_seconds: 3600,
            authorization_servers: Vec::new(),
            scopes_supported: Vec::new(),
        }
    }
}

impl OidcConfig {
    pub fn authorization_servers(&self) -> Vec<String> {
        if self.authorization_servers.is_empty() {
            vec![self.issuer.clone()]
        } else {
            self.authorization_servers.clone()
        }
    }
}

/// One entry of `security.role_mappings`: callers whose token claim matches get the role.
/// Entries are tried in order and the first match wins; a caller no entry matches is denied.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMapping {
    /// The claim, e.g. `email`, `groups`, `common_name` (a service token), or a dotted path
    /// into an object claim (`custom.groups`).
    pub jwt_claim: String,
    /// A regular expression the whole claim value must match (`.*@example\.com`).
    #[serde(default)]
    pub pattern: Option<String>,
    /// A value the claim must equal, or contain when it is a list (`groups`).
    #[serde(default)]
    pub value: Option<String>,
    pub role: Role,
}

impl RoleMapping {
    /// The pattern anchored at both ends: `admin@example.com` must not match
    /// `notadmin@example.com.evil`.
    pub fn anchored_pattern(&self) -> Option<String> {
        self.pattern.as_ref().map(|p| format!("^(?:{p})$"))
    }
}

impl super::SecurityConfig {
    /// Checks the keys of the modes `auth_mode` names: `Err((key, message))`.
    pub(super) fn validate_identity(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: String| Err((key.to_string(), message));
        if self.auth_mode.contains(AuthMode::Token) && self.tokens.is_empty() {
            return invalid("security.tokens", "auth_mode token needs at least one token entry".into());
        }
        let cf = &self.cloudflare_access;
        if self.auth_mode.contains(AuthMode::CloudflareAccess) {
            if !cf.enabled {
                return invalid(
                    "security.cloudflare_access.enabled",
                    "auth_mode names cloudflare_access, so this must be true".into(),
                );
            }
            let domain = &cf.team_domain;
            if domain.is_empty() || domain.contains("://") || domain.contains(['/', ' ', '"', '\\']) {
                return invalid(
                    "security.cloudflare_access.team_domain",
                    format!("{domain:?} is not a host name; write the team domain alone, e.g. \"myteam.cloudflareaccess.com\""),
                );
            }
            if cf.audience_tag.trim().is_empty() {
                return invalid(
                    "security.cloudflare_access.audience_tag",
                    "is empty; copy the Application Audience (AUD) tag of the Access application".into(),
                );
            }
            if cf.jwt_algorithm != JwtAlgorithm::RS256 {
                return invalid(
                    "security.cloudflare_access.jwt_algorithm",
                    format!("{}: Cloudflare Access signs with RS256 only", cf.jwt_algorithm),
                );
            }
            check_url("security.cloudflare_access.jwks_url", &cf.jwks_url())?;
            check_ttl("security.cloudflare_access.jwks_cache_ttl_seconds", cf.jwks_cache_ttl_seconds)?;
        } else if cf.enabled {
            return invalid(
                "security.cloudflare_access.enabled",
                format!(
                    "is true, but auth_mode ({}) does not name cloudflare_access; add it to auth_mode",
                    self.auth_mode
                ),
            );
        }
        if self.auth_mode.contains(AuthMode::Oidc) {
            let oidc = &self.oidc;
            check_url("security.oidc.issuer", &oidc.issuer)?;
            if !oidc.resource.starts_with("https://") && !is_trusted_url(&oidc.resource) {
                return invalid(
                    "security.oidc.resource",
                    format!(
                        "{:?} is not this server's https:// URL; write the URL clients use, e.g. \"https://pi.example.com/mcp\"",
                        oidc.resource
                    ),
                );
            }
            if oidc.resource.contains('#') {
                return invalid("security.oidc.resource", "a resource URI has no fragment (#)".into());
            }
            if let Some(url) = &oidc.jwks_url {
                check_url("security.oidc.jwks_url", url)?;
            }
            if oidc.algorithms.is_empty() {
                return invalid("security.oidc.algorithms", "list at least one of RS256, ES256, EdDSA".into());
            }
            for server in &oidc.authorization_servers {
                check_url("security.oidc.authorization_servers", server)?;
            }
            check_ttl("security.oidc.jwks_cache_ttl_seconds", oidc.jwks_cache_ttl_seconds)?;
        }
        let jwt_modes = self.auth_mode.contains(AuthMode::CloudflareAccess) || self.auth_mode.contains(AuthMode::Oidc);
        if jwt_modes && self.role_mappings.is_empty() {
            return invalid(
                "security.role_mappings",
                "is empty, so every caller with a token would be denied; map claims to roles (see config.example.yml)"
                    .into(),
            );
        }
        for (i, m) in self.role_mappings.iter().enumerate() {
            let key = format!("security.role_mappings[{i}]");
            if m.jwt_claim.is_empty() || m.jwt_claim.split('.').any(str::is_empty) {
                return invalid(&format!("{key}.jwt_claim"), format!("{:?} is not a claim name", m.jwt_claim));
            }
            match (&m.pattern, &m.value) {
                (Some(_), Some(_)) | (None, None) => {
                    return invalid(&key, "give exactly one of pattern (a regular expression) or value".into())
                }
                (Some(_), None) => {
                    if let Some(Err(e)) = m.anchored_pattern().map(|p| regex_lite::Regex::new(&p)) {
                        return invalid(&format!("{key}.pattern"), format!("not a regular expression: {e}"));
                    }
                }
                (None, Some(_)) => {}
            }
        }
        Ok(())
    }
}

fn check_url(key: &str, url: &str) -> Result<(), (String, String)> {
    if is_trusted_url(url) {
        Ok(())
    } else {
        Err((key.to_string(), format!("{url:?} must be an https:// URL (http:// only to this machine)")))
    }
}

fn check_ttl(key: &str, ttl: u64) -> Result<(), (String, String)> {
    if (60..=86_400).contains(&ttl) {
        Ok(())
    } else {
        Err((key.to_string(), format!("{ttl} is outside 60 to 86400 (seconds)")))
    }
}

/// Whether `url` may serve keys or discovery documents: https, or http to this machine only.
pub fn is_trusted_url(url: &str) -> bool {
    if url.starts_with("https://") {
        return url.len() > "https://".len();
    }
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_https_or_loopback_http_may_serve_keys() {
        assert!(is_trusted_url("https://team.cloudflareaccess.com/cdn-cgi/access/certs"));
        assert!(is_trusted_url("http://127.0.0.1:9000/certs"));
        assert!(is_trusted_url("http://[::1]:9000/certs"));
        assert!(is_trusted_url("http://localhost/certs"));
        assert!(!is_trusted_url("http://example.com/certs"));
        assert!(!is_trusted_url("http://127.0.0.1.example.com/certs"));
        assert!(!is_trusted_url("ftp://127.0.0.1/certs"));
        assert!(!is_trusted_url("https://"));
    }

    #[test]
    fn the_anchored_pattern_matches_whole_values_only() {
        let m = RoleMapping { jwt_claim: "email".into(), pattern: Some("a|b".into()), value: None, role: Role::Admin };
        assert_eq!(m.anchored_pattern().unwrap(), "^(?:a|b)$");
    }
}
