//! MCP over Streamable HTTP on `/mcp`, plus `/healthz` for supervisors and `/metrics` for
//! Prometheus (see [`metrics`]).
//!
//! Order of checks on `/mcp`: Host and Origin (DNS rebinding), authentication, rate
//! limit, body size, JSON, JSON-RPC envelope, protocol era and version, session. Each
//! refusal is a JSON-RPC error body with the HTTP status the specification asks for.
//! `/healthz` checks none of them: supervisors and load balancers reach it by whatever name
//! they know the device by, and it tells only that the server is up and its version.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::future::{AbortHandle, Abortable, Aborted};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use warp::http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use warp::Filter;

use super::conn::{Limits, Peer};
use super::throttle::AuthThrottle;
use body::{read_limited, sse_reply, AbortOnDrop, BodyStream, ReadError, Untrack};
use guard::ProtectedResource;
use headers::{decode_header_value, host_of, host_part, is_loopback_name, Headers};

mod body;
mod guard;
mod headers;
mod metrics;
use super::{
    batch_response, dispatch, initialize_result, response, Call, Incoming, Json, Meta, Outgoing, Progress, RpcError,
    Session, Sessions, Version,
};
use crate::auth::Identity;
use crate::tools::App;

/// The HTTP transport's state.
pub struct HttpServer {
    app: Arc<App>,
    sessions: Sessions,
    /// Host names (lower case, no port) accepted in `Host`; empty accepts any.
    allowed_hosts: Vec<String>,
    /// Failed authentication per peer address.
    auth_failures: AuthThrottle,
    /// This server as an OAuth protected resource, when tokens come from an OIDC issuer.
    resource: Option<ProtectedResource>,
}

type Reply = warp::reply::Response;

/// A JSON reply; the message was serialized once and becomes the body as it is.
fn json_reply(status: u16, body: Json) -> Reply {
    let mut r = Response::new(Bytes::from(body.into_bytes()).into());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn error_reply(id: &Value, e: &RpcError) -> Reply {
    json_reply(e.http_status, response(id, Err(e.clone())))
}

fn empty(status: StatusCode) -> Reply {
    let mut r = Response::new(Bytes::new().into());
    *r.status_mut() = status;
    r
}

impl HttpServer {
    pub fn new(app: Arc<App>) -> Arc<HttpServer> {
        let server = &app.config.server;
        let listen = app.config.listen_addr();
        // Host checking defends loopback servers against DNS rebinding; a server on a LAN
        // address checks Host only when the operator lists the names it is reached by.
        let mut allowed_hosts: Vec<String> = server.allowed_hosts.iter().map(|h| host_part(h)).collect();
        if listen.ip().is_loopback() || !allowed_hosts.is_empty() {
            allowed_hosts.extend(["localhost".into(), "127.0.0.1".into(), "::1".into()]);
            if !listen.ip().is_unspecified() {
                allowed_hosts.push(listen.ip().to_string());
            }
        }
        let sessions = Sessions::new(
            server.max_sessions,
            server.max_sessions_per_identity,
            Duration::from_secs(server.session_idle_timeout_seconds.max(1)),
        );
        let resource = ProtectedResource::new(&app.config);
        Arc::new(HttpServer { app, sessions, allowed_hosts, auth_failures: AuthThrottle::default(), resource })
    }

    /// Checks `Host` and `Origin`; `Ok` holds the origin to answer CORS for, `Err` why the
    /// request is forbidden.
    fn check_origin(&self, headers: &Headers) -> Result<Option<String>, String> {
        let forbidden = |m: String| Err(m);
        if !self.allowed_hosts.is_empty() {
            let host = headers.host.map(host_of).unwrap_or_default();
            if !self.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                return forbidden(format!(
                    "Forbidden: Host {host:?} is not served here; add it to server.allowed_hosts if this is intended"
                ));
            }
        }
        let Some(origin) = headers.origin else { return Ok(None) };
        let cors = &self.app.config.server.cors;
        if cors.enabled && cors.allowed_origins.iter().any(|o| o == origin) {
            return Ok(Some(origin.to_string()));
        }
        let origin_host = origin.split_once("://").map(|(_, rest)| host_part(rest)).unwrap_or_default();
        let local = self.app.config.listen_addr().ip().is_loopback() && is_loopback_name(&origin_host);
        if local
            || (!origin_host.is_empty() && self.allowed_hosts.contains(&origin_host) && !self.allowed_hosts.is_empty())
        {
            Ok(None)
        } else {
            forbidden(format!("Forbidden: Origin {origin:?} is not allowed; list it in server.cors.allowed_origins"))
        }
    }

    async fn handle(
        self: Arc<Self>,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: BodyStream,
        peer: Option<SocketAddr>,
    ) -> Reply {
        match (path, method.clone()) {
            ("/healthz", Method::GET) => {
                // A release built to fail its health check, for the proof that a bad update
                // is rolled back (tests/package/prove.py); never part of a published package.
                if cfg!(feature = "proof-unhealthy") {
                    let body = json!({"status": "unhealthy", "version": crate::base::VERSION});
                    return json_reply(503, Json::of(&body));
                }
                return json_reply(200, Json::of(&json!({"status": "ok", "version": crate::base::VERSION})));
            }
            ("/mcp", _) => {}
            ("/metrics", _) => return self.metrics(&method, &headers, peer).await,
            (p, Method::GET)
                if p.strip_prefix(guard::METADATA_PREFIX)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')) =>
            {
                if let Some(resource) = &self.resource {
                    return resource.reply();
                }
                let body =
                    json!({"error": "this server is not an OAuth protected resource (security.auth_mode has no oidc)"});
                return json_reply(404, Json::of(&body));
            }
            _ => {
                let body = json!({"error": format!("no such endpoint {path}; MCP is served at /mcp")});
                return json_reply(404, Json::of(&body));
            }
        }
        let headers = Headers::read(&headers);
        let cors_origin = match self.check_origin(&headers) {
            Ok(o) => o,
            Err(m) => return error_reply(&Value::Null, &RpcError::invalid_request(m).status(403)),
        };
        let mut reply = match method {
            Method::OPTIONS => self.preflight(cors_origin.is_some()),
            Method::POST => self.post(&headers, body, peer).await,
            Method::DELETE => self.delete(&headers, peer).await,
            _ => {
                let mut r = error_reply(
                    &Value::Null,
                    &RpcError::invalid_request(
                        "Method not allowed: this server offers no standalone SSE stream; POST requests to /mcp",
                    )
                    .status(405),
                );
                r.headers_mut().insert("allow", HeaderValue::from_static("POST, DELETE"));
                r
            }
        };
        if let Some(origin) = cors_origin {
            let h = reply.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&origin) {
                h.insert("access-control-allow-origin", v);
            }
            h.insert("vary", HeaderValue::from_static("Origin"));
            h.insert(
                "access-control-expose-headers",
                HeaderValue::from_static("Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate"),
            );
        }
        reply
    }

    fn preflight(&self, allowed: bool) -> Reply {
        if !allowed {
            return empty(StatusCode::FORBIDDEN);
        }
        let mut r = empty(StatusCode::NO_CONTENT);
        let h = r.headers_mut();
        h.insert("access-control-allow-methods", HeaderValue::from_static("POST, DELETE, OPTIONS"));
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("authorization, content-type, accept, mcp-session-id, mcp-protocol-version, mcp-method, mcp-name, last-event-id"),
        );
        h.insert("access-control-max-age", HeaderValue::from_static("600"));
        r
    }

    async fn delete(&self, headers: &Headers<'_>, peer: Option<SocketAddr>) -> Reply {
        let identity = match self.authenticate(headers, peer).await {
            Ok(i) => i,
            Err(refused) => return *refused,
        };
        match headers.session_id {
            None => error_reply(
                &Value::Null,
                &RpcError::invalid_request("Bad request: DELETE needs the Mcp-Session-Id header").status(400),
            ),
            Some(id) => match self.sessions.remove(id, &identity.principal) {
                Ok(()) => empty(StatusCode::OK),
                Err(why) => {
                    error_reply(&Value::Null, &RpcError::invalid_request(why.message(self.sessions.idle())).status(404))
                }
            },
        }
    }

    async fn post(self: Arc<Self>, headers: &Headers<'_>, body: BodyStream, peer: Option<SocketAddr>) -> Reply {
        let identity = match self.authenticate(headers, peer).await {
            Ok(i) => i,
            Err(refused) => return *refused,
        };
        if let Some(ct) = headers.content_type {
            if !ct.as_bytes().get(..16).is_some_and(|t| t.eq_ignore_ascii_case(b"application/json")) {
                let e = RpcError::invalid_request(format!("Unsupported media type {ct:?}: send application/json"))
                    .status(415);
                return error_reply(&Value::Null, &e);
            }
        }
        let limit = self.app.config.server.max_request_bytes as usize;
        let bytes = match read_limited(body, limit).await {
            Ok(b) => b,
            Err(ReadError::TooLarge) => return too_large(limit as u64),
            Err(ReadError::Broken(m)) => {
                return error_reply(
                    &Value::Null,
                    &RpcError::invalid_request(format!("cannot read the body: {m}")).status(400),
                )
            }
        };
        // `Ok`: a well-formed request or notification; `Err`: anything else, as a tree.
        let message = match Incoming::from_slice(&bytes) {
            Some(msg) => Ok(msg),
            None => match serde_json::from_slice::<Value>(&bytes) {
                Ok(v) => Err(v),
                Err(e) => return error_reply(&Value::Null, &RpcError::parse_error(e)),
            },
        };
        if let Err(wait) = self.app.rate_limiter.check(&identity.principal) {
            let id = match &message {
                Ok(Incoming::Request { id, .. }) => id.clone(),
                Ok(_) => Value::Null,
                Err(value) => value.get("id").cloned().unwrap_or(Value::Null),
            };
            return self.rate_limited(&id, wait);
        }
        let accepts_sse = headers.accept.is_some_and(|a| a.contains("text/event-stream"));
        match message {
            Ok(msg) => self.single(identity, headers, msg, accepts_sse).await,
            Err(Value::Array(items)) => self.batch(identity, headers, items).await,
            Err(single) => match Incoming::parse(single) {
                Err((id, e)) => error_reply(&id, &e),
                Ok(msg) => self.single(identity, headers, msg, accepts_sse).await,
            },
        }
    }

    /// The 429 answer to a caller over its rate limit, who may retry in `wait` seconds.
    fn rate_limited(&self, id: &Value, wait: f64) -> Reply {
        self.app.telemetry.rate_limited.inc();
        let secs = wait.ceil().max(1.0) as u64;
        let e = RpcError::new(rmcp::model::ErrorCode(-32000), format!("Rate limit exceeded: retry in {secs} s"))
            .data(json!({"reason": "rate_limited", "retry_after_seconds": secs}))
            .status(429);
        let mut r = error_reply(id, &e);
        r.headers_mut().insert("retry-after", HeaderValue::from(secs));
        r
    }

    /// Finds the session named by the headers, checking the protocol version header.
    fn legacy_session(&self, headers: &Headers, identity: &Identity) -> Result<Arc<Session>, RpcError> {
        let Some(sid) = headers.session_id else {
            return Err(RpcError::invalid_request(
                "Bad request: missing Mcp-Session-Id header; send initialize first, or use protocol 2026-07-28 with _meta",
            )
            .status(400));
        };
        let session = self
            .sessions
            .get(sid, &identity.principal)
            .map_err(|why| RpcError::invalid_request(why.message(self.sessions.idle())).status(404))?;
        if let Some(hv) = headers.protocol_version {
            let v = Version::parse(hv).ok_or_else(|| RpcError::unsupported_version(hv))?;
            if v != session.version {
                return Err(RpcError::header_mismatch(format!(
                    "MCP-Protocol-Version {hv} differs from the session's negotiated version {}",
                    session.version.as_str()
                )));
            }
        }
        Ok(session)
    }

    async fn single(
        self: Arc<Self>,
        identity: Identity,
        headers: &Headers<'_>,
        msg: Incoming,
        accepts_sse: bool,
    ) -> Reply {
        let header_version = headers.protocol_version;
        let (id, method, params, meta) = match msg {
            Incoming::Response => return empty(StatusCode::ACCEPTED),
            Incoming::Notification { method, params, .. } => {
                // Notifications of a legacy session: cancellation is the one that matters.
                if let Ok(session) = self.legacy_session(headers, &identity) {
                    if method == "notifications/cancelled" {
                        if let Some(rid) = params.as_ref().and_then(|p| p.get("requestId")) {
                            session.cancel(&rid.to_string());
                        }
                    }
                }
                return empty(StatusCode::ACCEPTED);
            }
            Incoming::Request { id, method, params, meta } => (id, method, params, meta),
        };
        let counted = super::counted_method(&self.app, &method);
        self.app.telemetry.request(counted);
        let refuse = |e: &RpcError| {
            self.app.telemetry.request_error(counted);
            error_reply(&id, e)
        };
        let stateless = header_version == Some("2026-07-28") || meta.protocol_version.is_some();

        if method == "initialize" && !stateless {
            if let Some(hv) = header_version {
                if Version::parse(hv).is_none() {
                    return refuse(&RpcError::unsupported_version(hv));
                }
            }
            let requested = params.as_ref().and_then(|p| p.get("protocolVersion")).and_then(Value::as_str);
            let version = Version::negotiate(requested);
            let session = match self.sessions.create(version, &identity.principal) {
                Ok(s) => s,
                Err(e) => return refuse(&RpcError::internal(e)),
            };
            log::debug!("session {} opened by {} at protocol {}", &session.id[..8], identity.name, version.as_str());
            let mut r = json_reply(200, response(&id, Ok(initialize_result(version))));
            if let Ok(v) = HeaderValue::from_str(&session.id) {
                r.headers_mut().insert("mcp-session-id", v);
            }
            return r;
        }

        let (version, session) = if stateless {
            match self.check_stateless(headers, &method, params.as_ref(), &meta) {
                Ok(v) => (v, None),
                Err(e) => return refuse(&e),
            }
        } else {
            match self.legacy_session(headers, &identity) {
                Ok(s) => (s.version, Some(s)),
                Err(e) => return refuse(&e),
            }
        };
        let log_level = if version.is_stateless() {
            super::requested_log_level(&meta)
        } else {
            session.as_ref().and_then(|s| s.log_level())
        };
        let token = super::progress_token(&meta);
        let stream = accepts_sse && (token.is_some() || log_level.is_some());
        // Tracked in its session (if any) so that notifications/cancelled can abort it;
        // untracked however it ends, client disconnects included.
        let track = |abort: &AbortHandle| {
            session.clone().map(|s| {
                let key = id.to_string();
                s.track(key.clone(), abort.clone());
                Untrack(s, key)
            })
        };
        if stream {
            let (abort, registration) = AbortHandle::new_pair();
            let tracked = track(&abort);
            let app = self.app.clone();
            let (tx, rx) = mpsc::unbounded_channel();
            let progress = Progress::new(tx.clone(), token, log_level);
            let call = Call { identity, version, session, progress, transport: "http", request_id: id.clone() };
            tokio::spawn(Abortable::new(
                async move {
                    let result = dispatch(&app, &call, &method, params).await;
                    if result.is_err() {
                        app.telemetry.request_error(counted);
                    }
                    let _ = tx.send(Outgoing::Response(response(&call.request_id, result)));
                },
                registration,
            ));
            return sse_reply(rx, (AbortOnDrop(abort), tracked));
        }
        // Answered in place: dropping this future (the client went away) or aborting it
        // (notifications/cancelled) stops the work without a task of its own. Without a
        // session nothing can cancel it, so it need not be abortable.
        let abortable = session.is_some().then(|| {
            let (abort, registration) = AbortHandle::new_pair();
            (track(&abort), registration)
        });
        let call =
            Call { identity, version, session, progress: Progress::none(), transport: "http", request_id: id.clone() };
        let work = dispatch(&self.app, &call, &method, params);
        let outcome = match abortable {
            Some((tracked, registration)) => {
                let outcome = Abortable::new(work, registration).await;
                drop(tracked);
                outcome
            }
            None => Ok(work.await),
        };
        match outcome {
            Ok(Ok(result)) => json_reply(200, response(&id, Ok(result))),
            Ok(Err(e)) => refuse(&e),
            Err(Aborted) => refuse(&RpcError::new(rmcp::model::ErrorCode(-32800), "Request cancelled")),
        }
    }

    /// Checks the headers of a stateless request against its body: the version header
    /// must equal `_meta`'s version (compared before the version itself is judged), and
    /// the routing headers must be present and name the body's method and target.
    fn check_stateless(
        &self,
        headers: &Headers,
        method: &str,
        params: Option<&Value>,
        meta: &Meta,
    ) -> Result<Version, RpcError> {
        let meta_version = meta.protocol_version.as_ref().and_then(Value::as_str);
        match (headers.protocol_version, meta_version) {
            (None, _) => return Err(RpcError::header_mismatch("MCP-Protocol-Version header is required")),
            (Some(hv), Some(mv)) if hv != mv => {
                return Err(RpcError::header_mismatch(format!(
                    "MCP-Protocol-Version header {hv:?} differs from _meta protocolVersion {mv:?}"
                )))
            }
            _ => {}
        }
        let version = super::stateless_version(meta)?;
        match headers.method {
            None => return Err(RpcError::header_mismatch("Mcp-Method header is required")),
            Some(hm) if hm != method => {
                return Err(RpcError::header_mismatch(format!(
                    "Mcp-Method header {hm:?} differs from the body's method {method:?}"
                )))
            }
            Some(_) => {}
        }
        if matches!(method, "tools/call" | "resources/read" | "prompts/get") {
            let key = if method == "resources/read" { "uri" } else { "name" };
            let body_name = params.and_then(|p| p.get(key)).and_then(Value::as_str);
            match (headers.name, body_name) {
                (None, _) => {
                    return Err(RpcError::header_mismatch(format!("Mcp-Name header is required for {method}")))
                }
                (Some(hn), Some(bn)) if decode_header_value(hn).as_deref() == Some(bn) => {}
                (Some(hn), bn) => {
                    return Err(RpcError::header_mismatch(format!(
                        "Mcp-Name header {hn:?} differs from the body's {key} {:?}",
                        bn.unwrap_or("")
                    )))
                }
            }
        }
        Ok(version)
    }

    async fn batch(self: Arc<Self>, identity: Identity, headers: &Headers<'_>, items: Vec<Value>) -> Reply {
        if items.is_empty() {
            return error_reply(&Value::Null, &RpcError::invalid_request("Invalid request: an empty batch"));
        }
        let session = match self.legacy_session(headers, &identity) {
            Ok(s) => s,
            Err(e) => {
                let e = if headers.session_id.is_none() {
                    RpcError::invalid_request("Invalid request: batches are only allowed within a 2025-03-26 session; send initialize alone first").status(400)
                } else {
                    e
                };
                return error_reply(&Value::Null, &e);
            }
        };
        if !session.version.allows_batches() {
            let e = RpcError::invalid_request(format!(
                "Invalid request: JSON-RPC batches are not allowed in protocol version {}; send one message per request",
                session.version.as_str()
            ));
            return error_reply(&Value::Null, &e);
        }
        let mut replies = Vec::new();
        let calls = items.into_iter().map(|item| {
            let app = self.app.clone();
            let session = session.clone();
            let identity = identity.clone();
            async move {
                match Incoming::parse(item) {
                    Err((id, e)) => Some(response(&id, Err(e))),
                    Ok(Incoming::Request { id, method, .. }) if method == "initialize" => {
                        let counted = super::counted_method(&app, &method);
                        app.telemetry.request(counted);
                        app.telemetry.request_error(counted);
                        Some(response(
                            &id,
                            Err(RpcError::invalid_request("Invalid request: initialize must not be part of a batch")),
                        ))
                    }
                    Ok(Incoming::Request { id, method, params, .. }) => {
                        let counted = super::counted_method(&app, &method);
                        app.telemetry.request(counted);
                        let call = Call {
                            identity,
                            version: session.version,
                            session: Some(session),
                            progress: Progress::none(),
                            transport: "http",
                            request_id: id.clone(),
                        };
                        let result = dispatch(&app, &call, &method, params).await;
                        if result.is_err() {
                            app.telemetry.request_error(counted);
                        }
                        Some(response(&id, result))
                    }
                    Ok(Incoming::Notification { method, params, .. }) => {
                        if method == "notifications/cancelled" {
                            if let Some(rid) = params.as_ref().and_then(|p| p.get("requestId")) {
                                session.cancel(&rid.to_string());
                            }
                        }
                        None
                    }
                    Ok(Incoming::Response) => None,
                }
            }
        });
        for r in futures_util::future::join_all(calls).await.into_iter().flatten() {
            replies.push(r);
        }
        if replies.is_empty() {
            empty(StatusCode::ACCEPTED)
        } else {
            json_reply(200, batch_response(&replies))
        }
    }
}

/// Serves HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let server = HttpServer::new(app);
    let config = &server.app.config.server;
    let limit = config.max_request_bytes;
    let limits = Limits {
        max_connections: config.max_connections,
        header_read_timeout: Duration::from_secs(config.header_read_timeout_seconds),
        keep_alive_timeout: Duration::from_secs(config.keep_alive_timeout_seconds),
    };
    let routes = {
        let server = server.clone();
        warp::any()
            .and(warp::method())
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(warp::header::optional::<u64>("content-length"))
            .and(warp::ext::optional::<Peer>())
            .and(warp::body::stream())
            .then(
                move |method: Method,
                      path: warp::path::FullPath,
                      headers: HeaderMap,
                      length: Option<u64>,
                      peer: Option<Peer>,
                      body| {
                    let server = server.clone();
                    async move {
                        if length.is_some_and(|l| l > limit) {
                            return too_large(limit);
                        }
                        let body: BodyStream =
                            Box::pin(futures_util::stream::StreamExt::map(body, |r: Result<_, warp::Error>| {
                                r.map(|mut b: _| {
                                    let len = Buf::remaining(&b);
                                    Buf::copy_to_bytes(&mut b, len)
                                })
                            }));
                        server.handle(method, path.as_str(), headers, body, peer.map(|p| p.0)).await
                    }
                },
            )
    };
    let service = warp::service(routes);
    let handle = move |request: hyper::Request<hyper::body::Incoming>| {
        let mut service = service.clone();
        async move {
            match tower_service::Service::call(&mut service, request).await {
                Ok(reply) => reply,
                Err(never) => match never {},
            }
        }
    };
    super::conn::serve(listener, limits, handle, shutdown).await;
    server.flush_auth_failures();
}

/// The 413 answer. The connection is closed after it: the body that was not read would
/// otherwise be taken for the next request.
fn too_large(limit: u64) -> Reply {
    let e =
        RpcError::invalid_request(format!("Request too large: the limit is {limit} bytes (server.max_request_bytes)"))
            .status(413);
    let mut r = error_reply(&Value::Null, &e);
    r.headers_mut().insert("connection", HeaderValue::from_static("close"));
    r
}

/// Binds the listen address, naming it in the error.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))
}
