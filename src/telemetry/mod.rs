//! The server's own counters (requests, tool calls and their durations, refusals), and the
//! Prometheus text format that `GET /metrics` exports them and the host's figures in.
//!
//! Counting costs a request next to nothing: every counter is an atomic, and every label
//! value is known when the registry is built (the JSON-RPC methods the server answers, the
//! tools of its catalogue), so a request finds its counter by index. Whatever method or tool
//! name a client sends, it can only add to `other` or `unknown`, never create a series.
//!
//! It depends on nothing of the server's but the readers of the host (`crate::host`), so
//! that the transports, the catalogue and authentication can all count into it.

pub mod host;
pub mod text;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use text::{Exposition, Kind};

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds, in seconds, of the buckets of tool durations: from a cached read (a few
/// milliseconds) to a camera capture or an OS update check (tens of seconds).
pub const DURATION_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Durations in the buckets of [`DURATION_BUCKETS`] (and one past the last), and their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative: one increment per observation. The last
    /// slot holds those above the last bound.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// The sum in microseconds: an integer adds atomically, a float would need a loop.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let seconds = d.as_secs_f64();
        let slot = DURATION_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(DURATION_BUCKETS.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The observations per bucket (not cumulative) and their sum in seconds.
    pub fn read(&self) -> ([u64; DURATION_BUCKETS.len() + 1], f64) {
        let counts = std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        (counts, self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6)
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

/// How a tool call ended, as the audit log says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolOutcome {
    Ok,
    Error,
    Denied,
}

const OUTCOMES: [(ToolOutcome, &str); 3] =
    [(ToolOutcome::Ok, "ok"), (ToolOutcome::Error, "error"), (ToolOutcome::Denied, "denied")];

/// A JSON-RPC method as counted: one of the registry's methods, or `other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodId(usize);

/// The label of methods outside the registry's list.
pub const OTHER_METHOD: &str = "other";
/// The label of tool names outside the catalogue.
pub const UNKNOWN_TOOL: &str = "unknown";

/// The server's counters.
pub struct Telemetry {
    methods: &'static [&'static str],
    /// Per method, `other` last.
    requests: Box<[Counter]>,
    request_errors: Box<[Counter]>,
    tools: Box<[&'static str]>,
    /// Per tool and outcome (in the order of [`OUTCOMES`]), `unknown` last.
    tool_calls: Box<[[Counter; 3]]>,
    /// Per tool of the catalogue.
    tool_durations: Box<[Histogram]>,
    /// Requests refused for going over a rate limit or an address's authentication
    /// failures (429).
    pub rate_limited: Counter,
    /// Requests refused for their credentials (401).
    pub auth_failures: Counter,
}

impl Telemetry {
    /// Counters for `methods` (the JSON-RPC methods the server answers) and `tools` (the
    /// catalogue, in its order: a tool is counted by its index there).
    pub fn new(methods: &'static [&'static str], tools: Vec<&'static str>) -> Telemetry {
        let per = |n: usize| (0..n).map(|_| Counter::default()).collect::<Box<[Counter]>>();
        Telemetry {
            methods,
            requests: per(methods.len() + 1),
            request_errors: per(methods.len() + 1),
            tool_calls: (0..=tools.len()).map(|_| Default::default()).collect(),
            tool_durations: (0..tools.len()).map(|_| Histogram::default()).collect(),
            tools: tools.into_boxed_slice(),
            rate_limited: Counter::default(),
            auth_failures: Counter::default(),
        }
    }

    /// The method `name` when it is one of the registry's.
    pub fn method(&self, name: &str) -> Option<MethodId> {
        self.methods.iter().position(|m| *m == name).map(MethodId)
    }

    /// The method of names outside the registry's list.
    pub fn other_method(&self) -> MethodId {
        MethodId(self.methods.len())
    }

    /// Counts a JSON-RPC request.
    pub fn request(&self, method: MethodId) {
        if let Some(c) = self.requests.get(method.0) {
            c.inc();
        }
    }

    /// Counts a JSON-RPC error answering a request.
    pub fn request_error(&self, method: MethodId) {
        if let Some(c) = self.request_errors.get(method.0) {
            c.inc();
        }
    }

    /// Counts a tool call: `tool` is its index in the catalogue, `None` for a name that is
    /// not there (whose duration is not recorded: nothing ran).
    pub fn tool_call(&self, tool: Option<usize>, outcome: ToolOutcome, took: Duration) {
        let row = tool.filter(|&i| i < self.tools.len()).unwrap_or(self.tools.len());
        let column = OUTCOMES.iter().position(|(o, _)| *o == outcome).unwrap_or(1);
        if let Some(c) = self.tool_calls.get(row).and_then(|r| r.get(column)) {
            c.inc();
        }
        if let Some(h) = tool.and_then(|i| self.tool_durations.get(i)) {
            h.observe(took);
        }
    }

    /// Writes the request, tool and refusal families.
    pub fn write(&self, out: &mut Exposition) {
        let method_names = self.methods.iter().copied().chain([OTHER_METHOD]);
        out.family(
            "mcp_raspi_requests_total",
            Kind::Counter,
            "JSON-RPC requests answered, by method (methods this server does not know are counted as other).",
        );
        for (method, c) in method_names.clone().zip(self.requests.iter()) {
            out.sample("mcp_raspi_requests_total", &[("method", method)], c.get());
        }
        out.family(
            "mcp_raspi_request_errors_total",
            Kind::Counter,
            "JSON-RPC requests answered with an error, by method.",
        );
        for (method, c) in method_names.zip(self.request_errors.iter()) {
            out.sample("mcp_raspi_request_errors_total", &[("method", method)], c.get());
        }
        out.family(
            "mcp_raspi_tool_calls_total",
            Kind::Counter,
            "Tool calls by tool and outcome (ok, error, denied); names not in the catalogue are counted as unknown.",
        );
        let tool_names = self.tools.iter().copied().chain([UNKNOWN_TOOL]);
        for (tool, row) in tool_names.zip(self.tool_calls.iter()) {
            for ((_, outcome), c) in OUTCOMES.iter().zip(row) {
                out.sample("mcp_raspi_tool_calls_total", &[("tool", tool), ("outcome", outcome)], c.get());
            }
        }
        // A tool's histogram appears with its first call: 41 tools of 15 lines each would
        // be most of the page, for tools most devices never call.
        out.family(
            "mcp_raspi_tool_duration_seconds",
            Kind::Histogram,
            "How long tool calls took (role check, arguments and handler), by tool.",
        );
        for (tool, h) in self.tools.iter().zip(self.tool_durations.iter()) {
            if h.count() == 0 {
                continue;
            }
            let (counts, sum) = h.read();
            out.histogram("mcp_raspi_tool_duration_seconds", &[("tool", tool)], &DURATION_BUCKETS, &counts, sum);
        }
        out.family("mcp_raspi_rate_limited_total", Kind::Counter, "Requests refused with 429: over the rate limit of their identity, or from an address that failed authentication too often.");
        out.sample("mcp_raspi_rate_limited_total", &[], self.rate_limited.get());
        out.family(
            "mcp_raspi_auth_failures_total",
            Kind::Counter,
            "Requests refused with 401: no credentials, or credentials that do not verify.",
        );
        out.sample("mcp_raspi_auth_failures_total", &[], self.auth_failures.get());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const METHODS: &[&str] = &["initialize", "tools/call"];

    fn page(t: &Telemetry) -> String {
        let mut out = Exposition::with_capacity(0);
        t.write(&mut out);
        out.finish()
    }

    fn value_of<'a>(page: &'a str, series: &str) -> Option<&'a str> {
        page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn every_known_method_and_tool_has_its_series_from_the_start_and_nothing_else() {
        let t = Telemetry::new(METHODS, vec!["a.one", "b.two"]);
        let page = page(&t);
        for series in [
            "mcp_raspi_requests_total{method=\"initialize\"}",
            "mcp_raspi_requests_total{method=\"other\"}",
            "mcp_raspi_request_errors_total{method=\"tools/call\"}",
            "mcp_raspi_tool_calls_total{tool=\"b.two\",outcome=\"denied\"}",
            "mcp_raspi_tool_calls_total{tool=\"unknown\",outcome=\"error\"}",
            "mcp_raspi_rate_limited_total",
            "mcp_raspi_auth_failures_total",
        ] {
            assert_eq!(value_of(&page, series), Some("0"), "{series}\n{page}");
        }
        assert!(!page.contains("mcp_raspi_tool_duration_seconds"), "no histogram before a call:\n{page}");
        assert_eq!(page.lines().filter(|l| !l.starts_with('#')).count(), 3 + 3 + 3 * 3 + 2);
    }

    #[test]
    fn requests_tools_and_refusals_are_counted_where_they_belong() {
        let t = Telemetry::new(METHODS, vec!["a.one", "b.two"]);
        let call = t.method("tools/call").unwrap();
        t.request(call);
        t.request(call);
        t.request_error(call);
        assert_eq!(t.method("no/such"), None);
        t.request(t.other_method());
        t.tool_call(Some(1), ToolOutcome::Ok, Duration::from_millis(20));
        t.tool_call(Some(1), ToolOutcome::Denied, Duration::from_micros(40));
        t.tool_call(None, ToolOutcome::Error, Duration::from_secs(99));
        t.tool_call(Some(7), ToolOutcome::Error, Duration::ZERO);
        t.rate_limited.inc();
        t.auth_failures.inc();
        let page = page(&t);
        let v = |series: &str| value_of(&page, series).unwrap_or_else(|| panic!("{series}\n{page}")).to_string();
        assert_eq!(v("mcp_raspi_requests_total{method=\"tools/call\"}"), "2");
        assert_eq!(v("mcp_raspi_request_errors_total{method=\"tools/call\"}"), "1");
        assert_eq!(v("mcp_raspi_requests_total{method=\"other\"}"), "1");
        assert_eq!(v("mcp_raspi_tool_calls_total{tool=\"b.two\",outcome=\"ok\"}"), "1");
        assert_eq!(v("mcp_raspi_tool_calls_total{tool=\"b.two\",outcome=\"denied\"}"), "1");
        assert_eq!(v("mcp_raspi_tool_calls_total{tool=\"unknown\",outcome=\"error\"}"), "2", "index 7 is no tool");
        assert_eq!(v("mcp_raspi_tool_duration_seconds_bucket{tool=\"b.two\",le=\"0.005\"}"), "1");
        assert_eq!(v("mcp_raspi_tool_duration_seconds_bucket{tool=\"b.two\",le=\"0.025\"}"), "2");
        assert_eq!(v("mcp_raspi_tool_duration_seconds_bucket{tool=\"b.two\",le=\"+Inf\"}"), "2");
        assert_eq!(v("mcp_raspi_tool_duration_seconds_count{tool=\"b.two\"}"), "2");
        assert_eq!(v("mcp_raspi_tool_duration_seconds_sum{tool=\"b.two\"}"), "0.02004");
        assert!(!page.contains("tool=\"a.one\",le="), "a tool never called has no histogram");
        assert_eq!((v("mcp_raspi_rate_limited_total"), v("mcp_raspi_auth_failures_total")), ("1".into(), "1".into()));
    }

    #[test]
    fn a_duration_past_the_last_bucket_is_counted_in_inf_only() {
        let h = Histogram::default();
        h.observe(Duration::from_secs(31));
        h.observe(Duration::from_secs(30));
        let (counts, sum) = h.read();
        assert_eq!((counts[DURATION_BUCKETS.len() - 1], counts[DURATION_BUCKETS.len()], sum), (1, 1, 61.0));
    }
}
