//! `GET /metrics` (and `HEAD`): the host's figures and the server's own counters in
//! Prometheus' text format, when `metrics.prometheus.enabled` is on.
//!
//! Who may read it: a caller on this machine that did not come through Cloudflare (its
//! address is loopback and the request has no `Cf-Ray`), without credentials, as a local
//! Prometheus or agent scrapes; anyone else with a credential of any role, checked,
//! throttled and audited as on `/mcp`. `Host` and `Origin` are checked as on `/mcp`.
//!
//! The page is read live at each scrape: the host's files, `version.json` and this
//! process's usage on the blocking pool, the agent's health from a check kept for a few
//! seconds (see [`crate::agent_client::AgentClient::is_up`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;
use warp::http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::{HttpServer, Reply};
use crate::host::Roots;
use crate::telemetry::text::{Exposition, Kind, CONTENT_TYPE};
use crate::tools::App;
use crate::update::state::{UpdateStatus, VersionState, STATE_FILE};

/// The answer while the export is off.
const DISABLED: &str = "The Prometheus export is off. Turn it on with `metrics: {prometheus: {enabled: true}}` in the \
configuration (or MCP_RASPI_METRICS__PROMETHEUS__ENABLED=true in the service's environment) and restart the server.\n";

fn text_reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(body.into().into());
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static(content_type));
    r
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    text_reply(status, "text/plain; charset=utf-8", body)
}

impl HttpServer {
    /// Answers a request for `/metrics`.
    pub(super) async fn metrics(&self, method: &Method, headers: &HeaderMap, peer: Option<SocketAddr>) -> Reply {
        if method != Method::GET && method != Method::HEAD {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "/metrics answers GET and HEAD\n");
            r.headers_mut().insert("allow", HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        if !self.app.config.metrics.prometheus.enabled {
            return plain(StatusCode::NOT_FOUND, DISABLED);
        }
        let headers = super::headers::Headers::read(headers);
        if let Err(why) = self.check_origin(&headers) {
            return plain(StatusCode::FORBIDDEN, format!("{why}\n"));
        }
        let local = peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) && headers.cf_ray.is_none();
        if !local {
            let identity = match self.authenticate(&headers, peer).await {
                Ok(identity) => identity,
                Err(refused) => return *refused,
            };
            if let Err(wait) = self.app.rate_limiter.check(&identity.principal) {
                return self.rate_limited(&Value::Null, wait);
            }
        }
        if method == Method::HEAD {
            return text_reply(StatusCode::OK, CONTENT_TYPE, Bytes::new());
        }
        match render(&self.app).await {
            Ok(page) => text_reply(StatusCode::OK, CONTENT_TYPE, page),
            Err(e) => {
                log::error!("metrics: {e}");
                plain(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
            }
        }
    }
}

/// Scrapes written at once. The loopback needs no credential and has no rate limit: a
/// flood of scrapes from any local user waits here, on the async side, instead of taking
/// the blocking pool's threads from the tools.
static RENDERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The page, read and written on the blocking pool.
pub async fn render(app: &Arc<App>) -> Result<String, String> {
    let agent_up = app.agent.is_up().await;
    let _turn = RENDERING.acquire().await.map_err(|e| format!("the page could not be written: {e}"))?;
    let app = app.clone();
    tokio::task::spawn_blocking(move || page(&app, agent_up))
        .await
        .map_err(|e| format!("the page could not be written: {e}"))
}

/// Every family: the host's, the server's, the update state's and this process's.
fn page(app: &App, agent_up: bool) -> String {
    let mut out = Exposition::with_capacity(16 * 1024);
    crate::telemetry::host::write_host(&mut out, &app.roots);
    const BUILD: &str = "mcp_raspi_build_info";
    out.family(BUILD, Kind::Gauge, "Always 1: the server's version and the hardware backend it uses.").sample(
        BUILD,
        &[("version", crate::base::VERSION), ("backend", app.platform.backend)],
        1u64,
    );
    const START: &str = "mcp_raspi_start_time_seconds";
    out.family(START, Kind::Gauge, "When the server started, in seconds since the Unix epoch.").sample(
        START,
        &[],
        epoch_seconds(app.started_at),
    );
    app.telemetry.write(&mut out);
    const AUDIT: &str = "mcp_raspi_audit_write_failures_total";
    out.family(
        AUDIT,
        Kind::Counter,
        "Audit records that could not be written (each failure is in the application log too).",
    )
    .sample(AUDIT, &[], app.audit.unwritten_records());
    const AGENT: &str = "mcp_raspi_agent_up";
    out.family(
        AGENT,
        Kind::Gauge,
        "1 when the ops agent answered over its socket within 0.5 s (checked at most every 5 s).",
    )
    .sample(AGENT, &[], agent_up);
    write_update_state(&mut out, &app.config.paths.state_dir);
    crate::telemetry::host::write_process(&mut out, &Roots::system());
    out.finish()
}

fn epoch_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

const STATUSES: [UpdateStatus; 4] =
    [UpdateStatus::InProgress, UpdateStatus::Succeeded, UpdateStatus::Failed, UpdateStatus::RolledBack];

/// The families of `version.json` in `state_dir`. Without the file (or with one that cannot
/// be read) only the rollbacks are written, as 0.
fn write_update_state(out: &mut Exposition, state_dir: &Path) {
    let state = match VersionState::load(&state_dir.join(STATE_FILE)) {
        Ok(state) => state,
        Err(e) => {
            log::debug!("metrics: the update state left out: {e}");
            None
        }
    };
    const ROLLBACKS: &str = "mcp_raspi_rollbacks_total";
    out.family(ROLLBACKS, Kind::Counter, "Rollbacks recorded in version.json, automatic and by an operator.").sample(
        ROLLBACKS,
        &[],
        state.as_ref().map_or(0, |s| s.rollbacks),
    );
    let Some(state) = state else { return };
    const FAILURES: &str = "mcp_raspi_update_consecutive_failures";
    out.family(FAILURES, Kind::Gauge, "Updates in a row that failed or were rolled back; 0 once one succeeds.").sample(
        FAILURES,
        &[],
        state.consecutive_failures,
    );
    let Some(last) = &state.last_update else { return };
    let when = last.finished_at.as_deref().unwrap_or(&last.started_at);
    match humantime::parse_rfc3339_weak(when) {
        Ok(t) => {
            const LAST: &str = "mcp_raspi_last_update_timestamp_seconds";
            out.family(
                LAST,
                Kind::Gauge,
                "When the last update ended (or started, while it runs), in seconds since the Unix epoch.",
            )
            .sample(LAST, &[], epoch_seconds(t));
        }
        Err(e) => log::debug!("metrics: the last update's time {when:?} left out: {e}"),
    }
    const STATUS: &str = "mcp_raspi_update_status";
    out.family(
        STATUS,
        Kind::Gauge,
        "1 for the status of the last update (in_progress, succeeded, failed, rolled_back), 0 for the others.",
    );
    for status in STATUSES {
        out.sample(STATUS, &[("status", status.as_str())], status == last.status);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::update::state::LastUpdate;

    fn update_page(dir: &Path) -> String {
        let mut out = Exposition::with_capacity(0);
        write_update_state(&mut out, dir);
        out.finish()
    }

    fn samples(page: &str) -> Vec<&str> {
        page.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn without_version_json_only_the_rollbacks_are_written_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(samples(&update_page(dir.path())), ["mcp_raspi_rollbacks_total 0"]);
        std::fs::write(dir.path().join(STATE_FILE), "not json").unwrap();
        assert_eq!(samples(&update_page(dir.path())), ["mcp_raspi_rollbacks_total 0"]);
    }

    #[test]
    fn the_last_update_gives_its_time_and_one_status_set_among_all() {
        let dir = tempfile::tempdir().unwrap();
        let state = VersionState {
            current_version: Some("0.1.0".into()),
            last_update: Some(LastUpdate {
                status: UpdateStatus::RolledBack,
                from: Some("0.1.0".into()),
                to: "0.2.0".into(),
                source: "mcp".into(),
                phase: None,
                started_at: "2026-01-01T00:00:00Z".into(),
                finished_at: Some("2026-01-01T00:01:30Z".into()),
                reason: Some("unhealthy".into()),
            }),
            rollbacks: 2,
            consecutive_failures: 1,
            ..VersionState::default()
        };
        state.store(&dir.path().join(STATE_FILE), None).unwrap();
        assert_eq!(
            samples(&update_page(dir.path())),
            [
                "mcp_raspi_rollbacks_total 2",
                "mcp_raspi_update_consecutive_failures 1",
                "mcp_raspi_last_update_timestamp_seconds 1767225690",
                "mcp_raspi_update_status{status=\"in_progress\"} 0",
                "mcp_raspi_update_status{status=\"succeeded\"} 0",
                "mcp_raspi_update_status{status=\"failed\"} 0",
                "mcp_raspi_update_status{status=\"rolled_back\"} 1",
            ]
        );
    }
}
