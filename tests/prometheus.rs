//! `GET /metrics`: off by default, open to loopback callers that did not come through
//! Cloudflare, closed to others without a credential, and a page `promtool check metrics`
//! accepts, whose label values no client can add to.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::support::issuer::{now, Issuer};
use crate::support::{repo, Response, Server, ADMIN_TOKEN, VIEWER_TOKEN};

const ENABLED: &str = "metrics:\n  prometheus:\n    enabled: true\n";

/// Every family the page must have with the pi4 fixture tree and nothing set up, in order of
/// the list in the README.
const FAMILIES: &[&str] = &[
    "raspi_cpu_seconds_total counter",
    "raspi_load1 gauge",
    "raspi_load5 gauge",
    "raspi_load15 gauge",
    "raspi_memory_total_bytes gauge",
    "raspi_memory_available_bytes gauge",
    "raspi_memory_used_bytes gauge",
    "raspi_memory_cached_bytes gauge",
    "raspi_swap_total_bytes gauge",
    "raspi_swap_used_bytes gauge",
    "raspi_filesystem_size_bytes gauge",
    "raspi_filesystem_avail_bytes gauge",
    "raspi_disk_read_bytes_total counter",
    "raspi_disk_written_bytes_total counter",
    "raspi_network_receive_bytes_total counter",
    "raspi_network_transmit_bytes_total counter",
    "raspi_temperature_celsius gauge",
    "raspi_throttled gauge",
    "raspi_uptime_seconds gauge",
    "mcp_raspi_build_info gauge",
    "mcp_raspi_start_time_seconds gauge",
    "mcp_raspi_requests_total counter",
    "mcp_raspi_request_errors_total counter",
    "mcp_raspi_tool_calls_total counter",
    "mcp_raspi_tool_duration_seconds histogram",
    "mcp_raspi_rate_limited_total counter",
    "mcp_raspi_auth_failures_total counter",
    "mcp_raspi_audit_write_failures_total counter",
    "mcp_raspi_agent_up gauge",
    "mcp_raspi_update_consecutive_failures gauge",
    "mcp_raspi_rollbacks_total counter",
    "mcp_raspi_last_update_timestamp_seconds gauge",
    "mcp_raspi_update_status gauge",
    "process_resident_memory_bytes gauge",
    "process_cpu_seconds_total counter",
    "process_open_fds gauge",
    "process_start_time_seconds gauge",
];

/// A loopback source address of its own for each request that must not share the
/// per-address throttle of failed authentication with the others.
fn next_source() -> Ipv4Addr {
    static NEXT: AtomicU8 = AtomicU8::new(2);
    Ipv4Addr::new(127, 0, 2, NEXT.fetch_add(1, Ordering::Relaxed))
}

fn scrape(server: &Server, headers: &[(&str, &str)]) -> Response {
    server.request_from(next_source(), "GET", "/metrics", headers, b"")
}

/// The page of a loopback scrape without credentials, checked to be one.
fn page(server: &Server) -> String {
    let r = scrape(server, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    r.text()
}

/// The value of one series (`name{labels}` exactly as written).
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The series of a page: every sample line without its value.
fn series(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

/// Series names and the label names each of their samples carries.
fn labels_by_name(page: &str) -> BTreeMap<String, BTreeSet<Vec<String>>> {
    let mut names: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let end = line.find(['{', ' ']).unwrap();
        let mut labels = Vec::new();
        if line[end..].starts_with('{') {
            // name="value" pairs, the values escaped: read up to each unescaped quote.
            let mut rest = &line[end + 1..];
            while !rest.starts_with('}') {
                let (label, value) = rest.split_once("=\"").unwrap();
                labels.push(label.trim_start_matches(',').to_string());
                let mut escaped = false;
                let close = value
                    .char_indices()
                    .find(|&(_, c)| {
                        let quote = c == '"' && !escaped;
                        escaped = c == '\\' && !escaped;
                        quote
                    })
                    .unwrap()
                    .0;
                rest = value[close + 1..].trim_start_matches(',');
            }
        }
        labels.sort();
        names.entry(line[..end].to_string()).or_default().insert(labels);
    }
    names
}

/// Runs `promtool check metrics` on `page`; fails when promtool is missing (`make unit`
/// installs it) or says anything at all, lint warnings included.
fn promtool_check(page: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "promtool is needed to check the page ({e}); `make unit` installs it (Debian: apt-get install prometheus)"
        ),
    };
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {}\n{said}\n{page}", out.status);
}

/// Holds `page` to `packaging/prometheus/metric-names.txt`, which the alerting rules and
/// dashboards are held to: every series listed is on the page with exactly the labels
/// listed, and every series of the page is listed.
fn check_against_the_list(page: &str) {
    // Series Prometheus adds to every scrape itself.
    const PROMETHEUS_OWN: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];
    let text = std::fs::read_to_string(repo().join("packaging/prometheus/metric-names.txt")).unwrap();
    let mut listed = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let name = fields.next().unwrap();
        let mut labels: Vec<String> =
            fields.next().map(|l| l.split(',').map(String::from).collect()).unwrap_or_default();
        labels.sort();
        if !PROMETHEUS_OWN.contains(&name) {
            listed.insert(name.to_string(), labels);
        }
    }
    let exported = labels_by_name(page);
    for (name, labels) in &listed {
        let found = exported.get(name).unwrap_or_else(|| panic!("{name} is listed but not exported:\n{page}"));
        assert_eq!(found, &BTreeSet::from([labels.clone()]), "{name}: labels exported against those listed");
    }
    let unlisted: Vec<&String> = exported.keys().filter(|n| !listed.contains_key(*n)).collect();
    assert!(unlisted.is_empty(), "exported but not in metric-names.txt: {unlisted:?}");
}

#[test]
fn the_export_is_off_by_default_and_the_404_says_how_to_turn_it_on() {
    let server = Server::start();
    let r = scrape(&server, &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("MCP_RASPI_METRICS__PROMETHEUS__ENABLED=true"), "{}", r.text());
    assert!(r.text().contains("prometheus: {enabled: true}"), "{}", r.text());
}

#[test]
fn loopback_reads_every_family_without_a_token_and_promtool_accepts_the_page() {
    let server = Server::with_config(Some(&repo().join("tests/fixtures/pi4")), ENABLED);
    // An update that was rolled back, as version.json records it.
    let state_dir = server.dir.path().join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(
        state_dir.join("version.json"),
        json!({"current_version": "0.1.0", "previous_good_version": null, "rollbacks": 1, "consecutive_failures": 1,
               "last_update": {"status": "rolled_back", "from": "0.1.0", "to": "0.2.0", "source": "mcp",
                               "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:01:00Z"}})
        .to_string(),
    )
    .unwrap();
    let before = page(&server);
    // Tools over MCP: one that succeeds, one the viewer may not call, one that does not exist.
    assert_eq!(server.call_tool("system.get_info", json!({}))["isError"], false);
    let session = server.initialize_as("2025-11-25", VIEWER_TOKEN);
    let as_viewer = |tool: &str| {
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
        let auth = format!("Bearer {VIEWER_TOKEN}");
        let headers = [
            ("Content-Type", "application/json"),
            ("Authorization", auth.as_str()),
            ("Mcp-Session-Id", session.as_str()),
            ("MCP-Protocol-Version", "2025-11-25"),
        ];
        server.request("POST", "/mcp", &headers, body.to_string().as_bytes()).json()
    };
    let denied = as_viewer("system.reboot");
    assert_eq!(denied["result"]["isError"], true, "{denied}");
    let unknown = as_viewer("no.such_tool");
    assert!(unknown.get("error").is_some(), "{unknown}");
    let text = page(&server);
    for family in FAMILIES {
        assert!(text.contains(&format!("# TYPE {family}\n")), "{family} is missing:\n{text}");
    }
    let count = |series: &str| value(&text, series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
    let was = |series: &str| value(&before, series).unwrap_or_else(|| panic!("no {series} before:\n{before}"));
    assert_eq!(count("mcp_raspi_tool_calls_total{tool=\"system.get_info\",outcome=\"ok\"}"), 1.0);
    assert_eq!(count("mcp_raspi_tool_calls_total{tool=\"system.reboot\",outcome=\"denied\"}"), 1.0);
    assert_eq!(count("mcp_raspi_tool_calls_total{tool=\"unknown\",outcome=\"error\"}"), 1.0);
    assert_eq!(count("mcp_raspi_tool_duration_seconds_count{tool=\"system.get_info\"}"), 1.0);
    assert_eq!(count("mcp_raspi_tool_duration_seconds_bucket{tool=\"system.get_info\",le=\"+Inf\"}"), 1.0);
    assert_eq!(count("mcp_raspi_requests_total{method=\"initialize\"}"), 2.0);
    assert_eq!(count("mcp_raspi_requests_total{method=\"tools/call\"}"), 3.0);
    assert_eq!(count("mcp_raspi_request_errors_total{method=\"tools/call\"}"), 1.0, "the unknown tool");
    assert_eq!(count("mcp_raspi_build_info{version=\"0.1.0\",backend=\"simulated\"}"), 1.0);
    assert_eq!(count("mcp_raspi_agent_up"), 0.0, "no agent runs");
    assert_eq!(count("mcp_raspi_rollbacks_total"), 1.0);
    assert_eq!(count("mcp_raspi_update_consecutive_failures"), 1.0);
    assert_eq!(count("mcp_raspi_update_status{status=\"rolled_back\"}"), 1.0);
    assert_eq!(count("mcp_raspi_last_update_timestamp_seconds"), 1767225660.0);
    assert_eq!(count("raspi_network_receive_bytes_total{interface=\"eth0\"}"), 918273645.0);
    assert_eq!(
        count("raspi_temperature_celsius{sensor=\"cpu-thermal\"}"),
        was("raspi_temperature_celsius{sensor=\"cpu-thermal\"}")
    );
    assert!(count("raspi_filesystem_size_bytes{mountpoint=\"/\"}") > 0.0);
    assert!(count("process_resident_memory_bytes") > 1e6);
    promtool_check(&text);
    check_against_the_list(&text);
    // HEAD: the same answer without the page.
    let r = server.request_from(next_source(), "HEAD", "/metrics", &[], b"");
    assert_eq!(
        (r.status, r.header("content-type"), r.body.len()),
        (200, Some("text/plain; version=0.0.4; charset=utf-8"), 0)
    );
    let r = server.request_from(next_source(), "POST", "/metrics", &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
}

#[test]
fn a_request_through_cloudflare_needs_a_credential_of_any_role_and_failures_are_counted_and_audited() {
    let server = Server::with_config(None, ENABLED);
    let through_tunnel = ("Cf-Ray", "8a1b2c3d4e5f-LHR");
    let r = scrape(&server, &[through_tunnel]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer realm=\"mcp-raspi\""));
    let source = next_source();
    let wrong = server.request_from(
        source,
        "GET",
        "/metrics",
        &[through_tunnel, ("Authorization", "Bearer wrong-token-0123456789abcdef")],
        b"",
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    for token in [VIEWER_TOKEN, ADMIN_TOKEN] {
        let r = scrape(&server, &[through_tunnel, ("Authorization", &format!("Bearer {token}"))]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("# TYPE mcp_raspi_requests_total counter"));
    }
    assert_eq!(value(&page(&server), "mcp_raspi_auth_failures_total"), Some(2.0));
    // Audited as the failures on /mcp are: one record per address, with its peer.
    let peer = source.to_string();
    let mut audited = false;
    for _ in 0..100 {
        audited = server.audit_records().iter().any(|r| r["tool"] == "(authentication)" && r["peer"] == peer.as_str());
        if audited {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(audited, "{:?}", server.audit_records());
    // A Host this server is not reached by is refused before anything else.
    let r = scrape(&server, &[("Host", "evil.example")]);
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn behind_cloudflare_access_an_assertion_is_the_credential_and_a_static_token_is_not() {
    let issuer = Issuer::start();
    let security = format!(
        "security:\n  auth_mode: [token, cloudflare_access]\n  secrets_file: null\n  rate_limit:\n    requests_per_minute: 0\n  tokens:\n    - {{ identity: admin, role: admin, env: TEST_ADMIN_TOKEN }}\n  cloudflare_access:\n    enabled: true\n    team_domain: team.example.com\n    audience_tag: aud-tag-0123456789\n    jwks_url: {}\n  role_mappings:\n    - {{ jwt_claim: groups, value: monitoring, role: viewer }}\n",
        issuer.jwks_url()
    );
    let server = Server::with_config(None, &format!("{security}{ENABLED}"));
    let t = now();
    let claims = json!({"iss": "https://team.example.com", "aud": ["aud-tag-0123456789"], "sub": "prometheus",
                        "common_name": "prometheus.access", "groups": ["monitoring"], "iat": t, "nbf": t, "exp": t + 600});
    let assertion = issuer.token("rsa-1", &claims);
    let through_tunnel = ("Cf-Ray", "8a1b2c3d4e5f-LHR");
    let r = scrape(&server, &[through_tunnel, ("Cf-Access-Jwt-Assertion", &assertion)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = scrape(&server, &[through_tunnel, ("Authorization", &format!("Bearer {ADMIN_TOKEN}"))]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["data"]["cause"], "access_assertion_missing");
}

#[test]
fn a_flood_of_unknown_methods_and_tool_names_adds_to_other_and_unknown_but_no_series() {
    let server = Server::with_config(Some(&repo().join("tests/fixtures/pi4")), ENABLED);
    let session = server.initialize("2025-11-25");
    let before = page(&server);
    let flood = 150;
    for i in 0..flood {
        let r = server.rpc_response(&session, "2025-11-25", &format!("evil/method-{i}\n\"{{}}"), json!({}));
        assert_eq!(r.error_code(), -32601, "{}", r.text());
        let r = server.rpc_response(
            &session,
            "2025-11-25",
            "tools/call",
            json!({"name": format!("evil.tool_{i}\"}} 1\n# TYPE x counter"), "arguments": {}}),
        );
        assert_eq!(r.error_code(), -32602, "{}", r.text());
    }
    let after = page(&server);
    assert_eq!(series(&before), series(&after), "a series appeared or went");
    let grew = |series: &str| value(&after, series).unwrap() - value(&before, series).unwrap();
    assert_eq!(grew("mcp_raspi_requests_total{method=\"other\"}"), f64::from(flood));
    assert_eq!(grew("mcp_raspi_request_errors_total{method=\"other\"}"), f64::from(flood));
    assert_eq!(grew("mcp_raspi_tool_calls_total{tool=\"unknown\",outcome=\"error\"}"), f64::from(flood));
    assert!(!after.contains("evil"), "a caller's name reached the page");
    promtool_check(&after);
}

#[test]
fn the_agent_is_up_while_it_answers_and_down_soon_after_it_stops() {
    let mut server = Server::with_agent_and_config(ENABLED);
    assert_eq!(value(&page(&server), "mcp_raspi_agent_up"), Some(1.0));
    server.kill_agent();
    // The answer is kept for 5 s; then the check finds nothing listening.
    let mut up = Some(1.0);
    for _ in 0..60 {
        up = value(&page(&server), "mcp_raspi_agent_up");
        if up == Some(0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(up, Some(0.0));
}
