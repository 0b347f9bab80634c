//! Who may use `/mcp`: authenticating a request from its headers, the refusals (401 with a
//! `WWW-Authenticate` challenge, 403 for a caller without a role, 429 for an address that
//! keeps failing), the audit of failures, and the OAuth protected-resource metadata (RFC
//! 9728) that tells MCP clients where to sign in.

use std::net::SocketAddr;

use serde_json::{json, Value};
use warp::http::HeaderValue;

use super::{error_reply, json_reply, HttpServer, Reply};
use crate::auth::{AuthError, Identity, Presented, Refusal};
use crate::config::{AuthMode, Config};
use crate::mcp::{Json, RpcError};

/// Where the metadata of a resource is, per RFC 9728 §3.1: the well-known prefix goes
/// between the host and the resource's path.
pub const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// This server as an OAuth protected resource (with `auth_mode` `oidc`).
pub struct ProtectedResource {
    /// The absolute URL of the metadata document, for challenges.
    metadata_url: String,
    /// The metadata document, serialized once.
    document: Json,
}

impl ProtectedResource {
    pub fn new(config: &Config) -> Option<ProtectedResource> {
        let security = &config.security;
        if !security.auth_mode.contains(AuthMode::Oidc) {
            return None;
        }
        let oidc = &security.oidc;
        let resource = oidc.resource.trim_end_matches('/');
        let (scheme, rest) = resource.split_once("://")?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let mut document = json!({
            "resource": oidc.resource,
            "authorization_servers": oidc.authorization_servers(),
            "bearer_methods_supported": ["header"],
            "resource_signing_alg_values_supported": oidc.algorithms,
            "resource_name": "mcp-raspi",
        });
        if !oidc.scopes_supported.is_empty() {
            document["scopes_supported"] = json!(oidc.scopes_supported);
        }
        Some(ProtectedResource {
            metadata_url: format!("{scheme}://{authority}{METADATA_PREFIX}{path}"),
            document: Json::of(&document),
        })
    }

    /// Answers `GET /.well-known/oauth-protected-resource[/<path>]`. Public information:
    /// any origin may read it.
    pub fn reply(&self) -> Reply {
        let mut r = json_reply(200, self.document.clone());
        let h = r.headers_mut();
        h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        h.insert("cache-control", HeaderValue::from_static("public, max-age=3600"));
        r
    }
}

/// The `WWW-Authenticate` challenge of a 401: where to find the metadata when this server is
/// a protected resource, and `invalid_token` with the reason when a credential was presented.
fn challenge(resource: Option<&ProtectedResource>, e: &AuthError) -> String {
    let mut c = String::from("Bearer realm=\"mcp-raspi\"");
    if let Some(r) = resource {
        c.push_str(&format!(", resource_metadata=\"{}\"", r.metadata_url));
    }
    if e.presented() {
        // Quoted-string content: the messages are ASCII without quotes or backslashes.
        let description: String =
            e.to_string().chars().filter(|c| (' '..='~').contains(c) && !matches!(c, '"' | '\\')).collect();
        c.push_str(&format!(", error=\"invalid_token\", error_description=\"{description}\""));
    }
    c
}

impl HttpServer {
    /// The caller's identity, or the answer refusing it: 401, 403 for an authenticated
    /// caller without a role, or 429 for an address that keeps failing (see
    /// [`crate::mcp::throttle`]). Failures are audited per address.
    pub(super) async fn authenticate(
        &self,
        headers: &super::headers::Headers<'_>,
        peer: Option<SocketAddr>,
    ) -> Result<Identity, Box<Reply>> {
        let presented = Presented {
            authorization: headers.authorization,
            access_assertion: headers.access_assertion,
            cookie: headers.cookie,
            via_cloudflare: headers.cf_ray.is_some(),
        };
        let e = match self.app.auth.authenticate_request(&presented).await {
            Ok(identity) => return Ok(identity),
            Err(Refusal::Forbidden(no_role)) => {
                log::warn!("refused {}: {no_role}", peer.map_or_else(String::new, |p| p.ip().to_string()));
                let e = RpcError::new(rmcp::model::ErrorCode(-32000), format!("Forbidden: {no_role}"))
                    .data(json!({"reason": "forbidden", "cause": "no_role"}))
                    .status(403);
                return Err(Box::new(error_reply(&Value::Null, &e)));
            }
            Err(Refusal::Unauthenticated(e)) => e,
        };
        // A request without credentials is how a client learns that it needs some.
        let (true, Some(peer)) = (e.presented(), peer) else {
            return Err(Box::new(self.unauthorized(&e)));
        };
        let failure = self.auth_failures.fail(peer.ip(), std::time::Instant::now());
        if let Some((count, since)) = failure.record {
            self.audit_auth_failures(peer.ip(), count, since, &e);
        }
        match failure.retry_after {
            None => Err(Box::new(self.unauthorized(&e))),
            Some(secs) => {
                self.app.telemetry.rate_limited.inc();
                let e = RpcError::new(
                    rmcp::model::ErrorCode(-32000),
                    format!("Too many failed authentications from {}: retry in {secs} s", peer.ip()),
                )
                .data(json!({"reason": "auth_throttled", "retry_after_seconds": secs}))
                .status(429);
                let mut r = error_reply(&Value::Null, &e);
                r.headers_mut().insert("retry-after", HeaderValue::from(secs));
                Err(Box::new(r))
            }
        }
    }

    /// One audit record (and one warning) for `count` failed authentications from `peer`,
    /// with the reason of the latest.
    fn audit_auth_failures(
        &self,
        peer: std::net::IpAddr,
        count: u64,
        since: std::time::SystemTime,
        latest: &dyn std::fmt::Display,
    ) {
        let peer = peer.to_string();
        let latest = latest.to_string();
        log::warn!("{count} failed authentication(s) from {peer} since {} ({latest})", crate::logs::rfc3339(since));
        self.app.audit.write(&crate::audit::Record {
            time: std::time::SystemTime::now(),
            request_id: &Value::Null,
            identity: "(unauthenticated)",
            role: None,
            transport: "http",
            tool: "(authentication)",
            arguments: json!({"failures": count, "since": crate::logs::rfc3339(since).to_string()}),
            outcome: crate::audit::Outcome::Denied,
            error_code: Some("unauthorized"),
            error: Some(&latest),
            duration_ms: 0.0,
            deprecated: false,
            peer: Some(&peer),
        });
    }

    /// Records the failed authentications not recorded yet (when the server stops).
    pub(super) fn flush_auth_failures(&self) {
        for (peer, count, since) in self.auth_failures.drain() {
            self.audit_auth_failures(peer, count, since, &"invalid credentials");
        }
    }

    fn unauthorized(&self, e: &AuthError) -> Reply {
        self.app.telemetry.auth_failures.inc();
        let error = RpcError::new(rmcp::model::ErrorCode(-32000), e.to_string())
            .data(json!({"reason": "unauthorized", "cause": e.code()}))
            .status(401);
        let mut r = error_reply(&Value::Null, &error);
        if let Ok(v) = HeaderValue::from_str(&challenge(self.resource.as_ref(), e)) {
            r.headers_mut().insert("www-authenticate", v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::jwt::JwtError;

    fn oidc_config(resource: &str) -> Config {
        let yaml = format!(
            "config_version: \"1.2\"\nsecurity:\n  auth_mode: oidc\n  secrets_file: null\n  oidc:\n    issuer: https://id.example.com\n    resource: \"{resource}\"\n  role_mappings:\n    - {{jwt_claim: sub, pattern: \".*\", role: viewer}}\n"
        );
        Config::from_yaml(&yaml, "test").unwrap()
    }

    #[test]
    fn the_metadata_url_puts_the_well_known_prefix_before_the_resource_path() {
        let r = ProtectedResource::new(&oidc_config("https://pi.example.com/mcp")).unwrap();
        assert_eq!(r.metadata_url, "https://pi.example.com/.well-known/oauth-protected-resource/mcp");
        let r = ProtectedResource::new(&oidc_config("https://pi.example.com:8443")).unwrap();
        assert_eq!(r.metadata_url, "https://pi.example.com:8443/.well-known/oauth-protected-resource");
        let doc: Value = serde_json::from_str(r.document.as_str()).unwrap();
        assert_eq!(doc["authorization_servers"], json!(["https://id.example.com"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }

    #[test]
    fn challenges_point_at_the_metadata_and_name_the_reason() {
        let r = ProtectedResource::new(&oidc_config("https://pi.example.com/mcp")).unwrap();
        let missing = challenge(Some(&r), &AuthError::Missing);
        assert_eq!(
            missing,
            "Bearer realm=\"mcp-raspi\", resource_metadata=\"https://pi.example.com/.well-known/oauth-protected-resource/mcp\""
        );
        let expired = challenge(Some(&r), &AuthError::Jwt(JwtError::Expired));
        assert!(
            expired.ends_with(", error=\"invalid_token\", error_description=\"the token has expired\""),
            "{expired}"
        );
        let alg = challenge(None, &AuthError::Jwt(JwtError::AlgNone));
        assert!(!alg.contains("resource_metadata") && !alg.contains("\"none\"") && alg.contains("alg none"), "{alg}");
    }
}
