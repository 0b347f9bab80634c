//! Identity for the internet: Cloudflare Access assertions and OIDC access tokens, checked
//! against a key set served on loopback, with the hostile tokens each refused for its reason.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::issuer::{now, sign, sign_hs256, Issuer, SigningKey};
use crate::support::{Response, Server, ADMIN_TOKEN};

const TEAM: &str = "team.example.com";
const AUD: &str = "0123456789abcdef-aud-tag";
const RESOURCE: &str = "https://pi.example.com/mcp";
const METADATA_URL: &str = "https://pi.example.com/.well-known/oauth-protected-resource/mcp";

const ROLE_MAPPINGS: &str = "  role_mappings:\n    - { jwt_claim: email, pattern: 'admin@example\\.com', role: admin }\n    - { jwt_claim: email, pattern: '.*@example\\.com', role: operator }\n    - { jwt_claim: groups, value: mcp-viewers, role: viewer }\n    - { jwt_claim: common_name, value: ci-runner.access, role: operator }\n";

/// Static tokens for the local command line plus Cloudflare Access for the tunnel.
fn cloudflare_server(issuer: &Issuer) -> Server {
    let security = format!(
        "security:\n  auth_mode: [token, cloudflare_access]\n  secrets_file: null\n  rate_limit:\n    requests_per_minute: 0\n  tokens:\n    - {{ identity: admin, role: admin, env: TEST_ADMIN_TOKEN }}\n  cloudflare_access:\n    enabled: true\n    team_domain: {TEAM}\n    audience_tag: {AUD}\n    jwt_algorithm: RS256\n    jwks_url: {}\n    jwks_cache_ttl_seconds: 3600\n{ROLE_MAPPINGS}",
        issuer.jwks_url()
    );
    started(issuer, &security)
}

/// Bearer tokens of an OIDC issuer found through its discovery document.
fn oidc_server(issuer: &Issuer) -> Server {
    let security = format!(
        "security:\n  auth_mode: oidc\n  secrets_file: null\n  rate_limit:\n    requests_per_minute: 0\n  oidc:\n    issuer: {}\n    resource: {RESOURCE}\n    algorithms: [RS256, ES256, EdDSA]\n    scopes_supported: [mcp]\n{ROLE_MAPPINGS}",
        issuer.url()
    );
    started(issuer, &security)
}

/// A server with this `security` section, once it has fetched `issuer`'s key set (its fetch
/// at start).
fn started(issuer: &Issuer, security: &str) -> Server {
    let fetches = issuer.jwks_fetches() + 1;
    let server = Server::with_config(None, security);
    for _ in 0..200 {
        if issuer.jwks_fetches() >= fetches {
            return server;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the server did not fetch the key set at start");
}

fn cf_claims(email: &str) -> Value {
    let t = now();
    json!({"iss": format!("https://{TEAM}"), "aud": [AUD], "email": email, "sub": "user-1",
           "iat": t, "nbf": t, "exp": t + 600, "type": "app", "identity_nonce": "n"})
}

fn oidc_claims(issuer: &Issuer, sub: &str, email: &str) -> Value {
    let t = now();
    json!({"iss": issuer.url(), "aud": RESOURCE, "sub": sub, "email": email, "iat": t, "exp": t + 600,
           "scope": "mcp"})
}

/// `check`'s answer once it has one, trying for up to 5 s.
fn eventually<T>(check: impl Fn() -> Option<T>) -> Option<T> {
    for _ in 0..100 {
        if let Some(v) = check() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A source address of its own for each request, so that the refusals are not throttled.
fn next_source() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(2);
    Ipv4Addr::new(127, 0, 1, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `system.get_capabilities` over stateless MCP with these headers (and no others' credentials).
fn get_info(server: &Server, headers: &[(&str, &str)]) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "system.get_capabilities", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let mut all = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "system.get_capabilities"),
    ];
    all.extend_from_slice(headers);
    server.request_from(next_source(), "POST", "/mcp", &all, body.to_string().as_bytes())
}

/// The caller's identity and role as `system.get_capabilities` reports them.
fn caller(r: &Response) -> (String, String) {
    assert_eq!(r.status, 200, "{}", r.text());
    let c = &r.json()["result"]["structuredContent"]["caller"];
    (c["identity"].as_str().unwrap().into(), c["role"].as_str().unwrap().into())
}

/// Asserts a 401 whose error names `cause`, with the challenge.
fn refused(r: &Response, cause: &str) -> String {
    assert_eq!(r.status, 401, "{cause}: {}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["data"]["cause"], cause, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_else(|| panic!("{cause}: no challenge"));
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    body["error"]["message"].as_str().unwrap().to_string()
}

#[test]
fn cloudflare_access_assertions_map_claims_to_roles_by_header_and_cookie() {
    let issuer = Issuer::start();
    let server = cloudflare_server(&issuer);
    let admin = issuer.token("rsa-1", &cf_claims("admin@example.com"));
    let r = get_info(&server, &[("Cf-Access-Jwt-Assertion", &admin)]);
    assert_eq!(caller(&r), ("admin@example.com".into(), "admin".into()));
    // The browser flow's cookie, among others.
    let cookie =
        format!("theme=dark; CF_Authorization={}; other=1", issuer.token("rsa-1", &cf_claims("bob@example.com")));
    assert_eq!(caller(&get_info(&server, &[("Cookie", &cookie)])), ("bob@example.com".into(), "operator".into()));
    // A group claim, and a service token (a common name, no email) mapped by configuration.
    let mut viewer = cf_claims("eve@elsewhere.org");
    viewer["groups"] = json!(["staff", "mcp-viewers"]);
    let r = get_info(&server, &[("Cf-Access-Jwt-Assertion", &issuer.token("rsa-1", &viewer))]);
    assert_eq!(caller(&r), ("eve@elsewhere.org".into(), "viewer".into()));
    let mut service = cf_claims("");
    service.as_object_mut().unwrap().remove("email");
    service["common_name"] = json!("ci-runner.access");
    service["sub"] = json!("");
    let r = get_info(&server, &[("Cf-Access-Jwt-Assertion", &issuer.token("rsa-1", &service))]);
    assert_eq!(caller(&r), ("ci-runner.access".into(), "operator".into()));
    // No mapping matches: authenticated, but denied.
    let r = get_info(&server, &[("Cf-Access-Jwt-Assertion", &issuer.token("rsa-1", &cf_claims("mallory@evil.org")))]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("mallory@evil.org") && r.text().contains("role_mappings"), "{}", r.text());
    // The static token still works for the local command line, beside the tunnel.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    assert_eq!(caller(&get_info(&server, &[("Authorization", &bearer)])), ("admin".into(), "admin".into()));
    // The audit names each caller (records of reads may wait a moment to be written).
    let names = ["admin@example.com", "bob@example.com", "eve@elsewhere.org", "ci-runner.access", "admin"];
    let audited = eventually(|| {
        let identities: Vec<String> = server
            .audit_records()
            .iter()
            .filter(|r| r["tool"] == "system.get_capabilities")
            .map(|r| r["identity"].as_str().unwrap().to_string())
            .collect();
        names.iter().all(|n| identities.iter().any(|i| i == n)).then_some(identities)
    });
    assert!(audited.is_some(), "the audit does not name every caller: {:?}", server.audit_records());
}

#[test]
fn every_hostile_token_is_refused_with_401_naming_the_reason() {
    let issuer = Issuer::start();
    let server = cloudflare_server(&issuer);
    let rsa = issuer.key("rsa-1");
    let header = json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"});
    let claims = cf_claims("admin@example.com");
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        change(&mut c);
        sign(rsa, &header, &c)
    };
    let valid = sign(rsa, &header, &claims);
    let b64 = crate::support::issuer::b64;
    let (head, rest) = valid.split_once('.').unwrap();
    let payload = rest.split('.').next().unwrap();
    let mut flipped = valid.clone().into_bytes();
    let last = flipped.len() - 3;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)), "alg_none"),
        (
            "HS256 signed with the public key as secret",
            sign_hs256(&rsa.public_bytes(), &json!({"alg": "HS256", "kid": "rsa-1"}), &claims),
            "alg_not_allowed",
        ),
        ("ES256 where only RS256 is allowed", issuer.token("ec-1", &claims), "alg_not_allowed"),
        (
            "an algorithm name made to break the challenge header",
            sign(rsa, &json!({"alg": "RS256\r\nX-Injected: \"1\"", "kid": "rsa-1"}), &claims),
            "alg_not_allowed",
        ),
        ("wrong aud", with(&|c| c["aud"] = json!(["someone-else"])), "wrong_audience"),
        ("wrong iss", with(&|c| c["iss"] = json!("https://evil.cloudflareaccess.com")), "wrong_issuer"),
        ("expired", with(&|c| c["exp"] = json!(now() - 120)), "token_expired"),
        ("nbf in the future", with(&|c| c["nbf"] = json!(now() + 600)), "token_not_yet_valid"),
        ("iat in the future", with(&|c| c["iat"] = json!(now() + 600)), "token_issued_in_future"),
        ("no exp", with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))), "missing_claim"),
        ("unknown kid", sign(rsa, &json!({"alg": "RS256", "kid": "nobody"}), &claims), "unknown_kid"),
        ("bad signature", String::from_utf8(flipped).unwrap(), "bad_signature"),
        ("signed by another key", sign(&SigningKey::rsa(), &header, &claims), "bad_signature"),
        ("truncated", format!("{head}.{payload}"), "token_malformed"),
        ("malformed", "not-a-jwt".to_string(), "token_malformed"),
        ("header not JSON", format!("{}.{payload}.AAAA", b64(b"alg=RS256")), "token_malformed"),
        ("oversized", format!("{head}.{}.{}", "A".repeat(17 * 1024), "B".repeat(300)), "token_too_large"),
    ];
    let count = cases.len();
    for (name, token, cause) in cases {
        let r = get_info(&server, &[("Cf-Access-Jwt-Assertion", &token)]);
        let message = refused(&r, cause);
        assert!(!message.contains(&token[..token.len().min(40)]), "{name}: the token is echoed: {message}");
        let challenge = r.header("www-authenticate").unwrap();
        assert!(challenge.contains("error=\"invalid_token\""), "{name}: {challenge}");
    }
    // The Access assertion in the wrong header, and a request through the tunnel without one.
    let r = get_info(&server, &[("Authorization", &format!("Bearer {valid}"))]);
    assert!(refused(&r, "wrong_header").contains("Cf-Access-Jwt-Assertion"));
    let r = get_info(&server, &[("Authorization", &format!("Bearer {ADMIN_TOKEN}")), ("Cf-Ray", "8a1b2c3d4e5f-LHR")]);
    refused(&r, "access_assertion_missing");
    let r = get_info(&server, &[]);
    refused(&r, "credentials_missing");
    // The valid token, after all of that.
    assert_eq!(caller(&get_info(&server, &[("Cf-Access-Jwt-Assertion", &valid)])).1, "admin");
    assert!(count >= 16);
    server.assert_alive();
}

#[test]
fn a_new_kid_is_accepted_after_one_refetch_and_a_kid_flood_fetches_at_most_once() {
    let mut issuer = Issuer::start();
    let server = cloudflare_server(&issuer);
    assert_eq!(issuer.jwks_fetches(), 1);
    issuer.rotate_in("rsa-2", SigningKey::rsa());
    let rotated = issuer.token("rsa-2", &cf_claims("admin@example.com"));
    assert_eq!(caller(&get_info(&server, &[("Cf-Access-Jwt-Assertion", &rotated)])).1, "admin");
    assert_eq!(issuer.jwks_fetches(), 2, "one refetch for the new key");
    // The old key still works and costs nothing.
    let old = issuer.token("rsa-1", &cf_claims("admin@example.com"));
    assert_eq!(caller(&get_info(&server, &[("Cf-Access-Jwt-Assertion", &old)])).1, "admin");
    assert_eq!(issuer.jwks_fetches(), 2);

    // A fresh server: 1,000 tokens with random kids, from four threads.
    let flooded = cloudflare_server(&issuer);
    let before = issuer.jwks_fetches();
    let rsa = issuer.key("rsa-1");
    let claims = cf_claims("admin@example.com");
    let tokens: Vec<String> = (0..1000)
        .map(|i| sign(rsa, &json!({"alg": "RS256", "kid": format!("random-{i}-{}", now())}), &claims))
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .chunks(250)
            .map(|chunk| {
                let flooded = &flooded;
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|t| flooded.request("POST", "/mcp", &[("Cf-Access-Jwt-Assertion", t)], b"{}").status)
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.len(), 1000);
    // Refused, and throttled once this address has failed too often.
    assert!(statuses.iter().all(|&s| s == 401 || s == 429), "{statuses:?}");
    assert!(issuer.jwks_fetches() - before <= 1, "{} fetches for the flood", issuer.jwks_fetches() - before);
    // Valid tokens were never blocked by it.
    assert_eq!(caller(&get_info(&flooded, &[("Cf-Access-Jwt-Assertion", &old)])).1, "admin");
}

#[test]
fn an_unreachable_key_set_keeps_cached_keys_and_without_keys_the_401_says_why() {
    let issuer = Issuer::start();
    let server = cloudflare_server(&issuer);
    let token = issuer.token("rsa-1", &cf_claims("admin@example.com"));
    issuer.server.fault(crate::support::issuer::JWKS_PATH, crate::support::file_server::Fault::Status(503));
    // Cached keys keep working; an unknown kid tries once, fails, and says the kid is unknown.
    let unknown = sign(issuer.key("rsa-1"), &json!({"alg": "RS256", "kid": "rsa-9"}), &cf_claims("admin@example.com"));
    refused(&get_info(&server, &[("Cf-Access-Jwt-Assertion", &unknown)]), "unknown_kid");
    assert_eq!(caller(&get_info(&server, &[("Cf-Access-Jwt-Assertion", &token)])).1, "admin");

    // A server that never got its keys: a clear reason, and it keeps serving.
    let down = Issuer::start();
    down.server.fault(crate::support::issuer::JWKS_PATH, crate::support::file_server::Fault::Status(503));
    let server = cloudflare_server(&down);
    let r = get_info(&server, &[("Cf-Access-Jwt-Assertion", &down.token("rsa-1", &cf_claims("admin@example.com")))]);
    let message = refused(&r, "no_keys");
    assert!(message.contains("503") && message.contains(&down.jwks_url()), "{message}");
    let r = server.request("GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
    for _ in 0..3 {
        refused(
            &get_info(&server, &[("Cf-Access-Jwt-Assertion", &down.token("rsa-1", &cf_claims("a@example.com")))]),
            "no_keys",
        );
    }
    let app_log = || std::fs::read_to_string(server.log_dir().join("app.log")).unwrap_or_default();
    let fetch_warnings = || {
        app_log().lines().filter(|l| l.contains("mcp_raspi::auth::jwks") && l.contains("could not be fetched")).count()
    };
    assert!(eventually(|| (fetch_warnings() > 0).then_some(())).is_some(), "no log line: {}", app_log());
    assert_eq!(fetch_warnings(), 1, "one log line however many refusals: {}", app_log());
    // It recovers by itself once the issuer is back (retried every 10 s at most).
    down.server.clear_fault(crate::support::issuer::JWKS_PATH);
    let fresh = down.token("rsa-1", &cf_claims("admin@example.com"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = get_info(&server, &[("Cf-Access-Jwt-Assertion", &fresh)]);
        if r.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never recovered: {}", r.text());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_session_created_by_one_identity_is_refused_to_another() {
    let issuer = Issuer::start();
    let server = cloudflare_server(&issuer);
    let alice = issuer.token("rsa-1", &cf_claims("alice@example.com"));
    let bob = issuer.token("rsa-1", &cf_claims("bob@example.com"));
    let session = server.initialize_with("2025-11-25", &[("Cf-Access-Jwt-Assertion", &alice)]);
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string();
    let with = |headers: &[(&str, &str)]| {
        let mut all = vec![
            ("Content-Type", "application/json"),
            ("Mcp-Session-Id", session.as_str()),
            ("MCP-Protocol-Version", "2025-11-25"),
        ];
        all.extend_from_slice(headers);
        server.request("POST", "/mcp", &all, ping.as_bytes())
    };
    assert_eq!(with(&[("Cf-Access-Jwt-Assertion", &alice)]).status, 200);
    assert_eq!(with(&[("Cf-Access-Jwt-Assertion", &bob)]).status, 404);
    assert_eq!(with(&[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))]).status, 404);
}

#[test]
fn oidc_tokens_are_checked_against_the_discovered_keys_and_401s_point_at_the_metadata() {
    let issuer = Issuer::start();
    let server = oidc_server(&issuer);
    assert_eq!(issuer.server.served("/.well-known/openid-configuration").len(), 1);
    for kid in ["rsa-1", "ec-1", "ed-1"] {
        let token = issuer.token(kid, &oidc_claims(&issuer, &format!("user-{kid}"), "bob@example.com"));
        let r = get_info(&server, &[("Authorization", &format!("Bearer {token}"))]);
        assert_eq!(caller(&r), ("bob@example.com".into(), "operator".into()), "{kid}");
    }
    // A token for another resource (RFC 8707), and an HMAC one.
    let mut other = oidc_claims(&issuer, "u", "bob@example.com");
    other["aud"] = json!("https://other.example.com/mcp");
    let r = get_info(&server, &[("Authorization", &format!("Bearer {}", issuer.token("rsa-1", &other)))]);
    refused(&r, "wrong_audience");
    let hs = sign_hs256(b"secret", &json!({"alg": "HS256"}), &oidc_claims(&issuer, "u", "bob@example.com"));
    refused(&get_info(&server, &[("Authorization", &format!("Bearer {hs}"))]), "alg_not_allowed");
    // Without a token: where to sign in.
    let r = get_info(&server, &[]);
    refused(&r, "credentials_missing");
    let challenge = r.header("www-authenticate").unwrap();
    assert_eq!(challenge, format!("Bearer realm=\"mcp-raspi\", resource_metadata=\"{METADATA_URL}\""));
    let r = get_info(&server, &[("Authorization", "Bearer not.a.jwt")]);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.contains(METADATA_URL) && challenge.contains("error=\"invalid_token\""), "{challenge}");
    // The metadata, at both well-known paths, without credentials.
    for path in ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"] {
        let r = server.request("GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(
            r.json(),
            json!({"resource": RESOURCE, "authorization_servers": [issuer.url()], "bearer_methods_supported": ["header"],
                   "resource_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"], "resource_name": "mcp-raspi",
                   "scopes_supported": ["mcp"]})
        );
    }
}

#[test]
fn token_servers_are_not_protected_resources() {
    let server = Server::start();
    let r = server.request("GET", "/.well-known/oauth-protected-resource", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = server.request("POST", "/mcp", &[("Content-Type", "application/json")], b"{}");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"mcp-raspi\""));
}

#[test]
fn cors_answers_preflights_and_requests_of_allowed_origins_only() {
    let server = Server::with_config(
        None,
        "server:\n  listen: \"127.0.0.1:0\"\n  cors:\n    enabled: true\n    allowed_origins: [\"https://console.example.com\"]\n",
    );
    let preflight = |origin: &str| {
        server.request(
            "OPTIONS",
            "/mcp",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "authorization, content-type, mcp-protocol-version"),
            ],
            b"",
        )
    };
    let r = preflight("https://console.example.com");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("https://console.example.com"));
    assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
    let allowed = r.header("access-control-allow-headers").unwrap();
    for h in ["authorization", "content-type", "mcp-protocol-version", "mcp-session-id"] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    assert_eq!(r.header("vary"), Some("Origin"));
    // A request from the allowed origin gets the headers a browser needs to read the answer.
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let session = server.initialize("2025-11-25");
    let r = server.post(
        &ping,
        &[
            ("Origin", "https://console.example.com"),
            ("Mcp-Session-Id", &session),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("https://console.example.com"));
    assert!(r.header("access-control-expose-headers").unwrap().contains("Mcp-Session-Id"));
    // A refusal the browser can read too (the 401 and its challenge).
    let r = server.request("POST", "/mcp", &[("Origin", "https://console.example.com")], b"{}");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://console.example.com"));
    // Other origins: refused, preflight and request alike, and no CORS headers.
    for origin in ["https://evil.example.com", "https://console.example.com.evil.org", "null"] {
        let r = preflight(origin);
        assert_eq!(r.status, 403, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), None);
        let r = server.post(&ping, &[("Origin", origin), ("Mcp-Session-Id", &session)]);
        assert_eq!(r.status, 403, "{origin}: {}", r.text());
    }
}
