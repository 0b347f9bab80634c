//! Prometheus' text exposition format, version 0.0.4: `# HELP` and `# TYPE` lines, then one
//! line per sample, label values escaped.
//!
//! A family is announced with [`Exposition::family`] and written only when its first sample
//! is: a source that has nothing to report (a board without throttling flags, a reader that
//! failed) leaves no empty family behind.

use std::fmt::Write;

/// The `Content-Type` of this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's type, as `# TYPE` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: integers are written exactly, floats in their shortest form, with
/// `NaN`, `+Inf` and `-Inf` spelt as the format wants them.
pub trait SampleValue {
    fn write_to(&self, out: &mut String);
}

impl SampleValue for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for u32 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

impl SampleValue for bool {
    fn write_to(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

/// A family announced but not written yet: its header waits for its first sample.
struct Pending {
    name: &'static str,
    kind: Kind,
    help: &'static str,
}

/// A page of the text format being written.
pub struct Exposition {
    out: String,
    pending: Option<Pending>,
}

impl Exposition {
    pub fn with_capacity(bytes: usize) -> Exposition {
        Exposition { out: String::with_capacity(bytes), pending: None }
    }

    /// Starts the family `name`: its samples follow. Names and help texts are the program's
    /// own, never a caller's.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) -> &mut Self {
        debug_assert!(valid_name(name), "{name}");
        self.pending = Some(Pending { name, kind, help });
        self
    }

    /// One sample of the current family. `le` is not a label of these: histograms are
    /// written by [`Self::histogram`].
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl SampleValue) -> &mut Self {
        debug_assert!(labels.iter().all(|(label, _)| valid_name(label) && *label != "le"), "{labels:?}");
        self.line(name, labels, None, &value);
        self
    }

    /// One series of the current histogram family: `counts[i]` observations fell at or
    /// below `bounds[i]` and above the bound before it, and `counts[bounds.len()]` above the
    /// last bound. Writes the cumulative `_bucket` lines, `+Inf` included, then `_sum` and
    /// `_count` (which equals the `+Inf` bucket).
    pub fn histogram(&mut self, name: &'static str, labels: &[(&str, &str)], bounds: &[f64], counts: &[u64], sum: f64) {
        debug_assert_eq!(counts.len(), bounds.len() + 1);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        let mut le = String::with_capacity(8);
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative = cumulative.saturating_add(*count);
            le.clear();
            bound.write_to(&mut le);
            self.line(&bucket, labels, Some(&le), &cumulative);
        }
        cumulative = cumulative.saturating_add(counts.get(bounds.len()).copied().unwrap_or(0));
        self.line(&bucket, labels, Some("+Inf"), &cumulative);
        self.line(&format!("{name}_sum"), labels, None, &sum);
        self.line(&format!("{name}_count"), labels, None, &cumulative);
    }

    /// Writes one line, after the family's header when it is the family's first; `le` is
    /// a histogram bucket's bound, the last label.
    fn line(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>, value: &dyn SampleValue) {
        if let Some(p) = self.pending.take() {
            self.out.push_str("# HELP ");
            self.out.push_str(p.name);
            self.out.push(' ');
            escape_help(&mut self.out, p.help);
            self.out.push_str("\n# TYPE ");
            self.out.push_str(p.name);
            self.out.push(' ');
            self.out.push_str(p.kind.as_str());
            self.out.push('\n');
        }
        self.out.push_str(name);
        if !labels.is_empty() || le.is_some() {
            self.out.push('{');
            let le = le.map(|le| ("le", le));
            for (i, (label, value)) in labels.iter().chain(le.iter()).enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(label);
                self.out.push_str("=\"");
                escape_label_value(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write_to(&mut self.out);
        self.out.push('\n');
    }

    /// The page.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A metric or label name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Help texts escape backslash and line feed.
fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_is_written_with_its_help_and_type_before_its_first_sample_only() {
        let mut out = Exposition::with_capacity(0);
        out.family("empty_total", Kind::Counter, "Never sampled.");
        out.family("up", Kind::Gauge, "Whether it is up.").sample("up", &[], true).sample("up", &[("a", "b")], 0u64);
        assert_eq!(out.finish(), "# HELP up Whether it is up.\n# TYPE up gauge\nup 1\nup{a=\"b\"} 0\n");
    }

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed_and_keep_the_rest() {
        let mut out = Exposition::with_capacity(0);
        out.family("x", Kind::Gauge, "A \\ backslash\nand a line.");
        out.sample("x", &[("mountpoint", "/media/pi/USB STICK"), ("name", "a\\b\"c\nd é")], 1u64);
        assert_eq!(
            out.finish(),
            "# HELP x A \\\\ backslash\\nand a line.\n# TYPE x gauge\nx{mountpoint=\"/media/pi/USB STICK\",name=\"a\\\\b\\\"c\\nd é\"} 1\n"
        );
    }

    #[test]
    fn values_are_integers_exactly_and_floats_in_their_shortest_form() {
        let mut out = Exposition::with_capacity(0);
        out.family("v", Kind::Gauge, "v");
        for value in [0.5, 1.0, 1e-7, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            out.sample("v", &[], value);
        }
        out.sample("v", &[], u64::MAX).sample("v", &[], 7u32);
        let text = out.finish();
        let values: Vec<&str> = text.lines().skip(2).map(|l| l.rsplit(' ').next().unwrap_or("")).collect();
        assert_eq!(values, ["0.5", "1", "0.0000001", "NaN", "+Inf", "-Inf", "18446744073709551615", "7"]);
    }

    #[test]
    fn a_histogram_writes_cumulative_buckets_then_inf_sum_and_count() {
        let mut out = Exposition::with_capacity(0);
        out.family("d_seconds", Kind::Histogram, "Durations.");
        // 2 at or below 0.1, 0 in (0.1, 1], 3 in (1, 2.5], 1 above 2.5.
        out.histogram("d_seconds", &[("tool", "a.b")], &[0.1, 1.0, 2.5], &[2, 0, 3, 1], 9.25);
        assert_eq!(
            out.finish(),
            "# HELP d_seconds Durations.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{tool=\"a.b\",le=\"0.1\"} 2\n\
             d_seconds_bucket{tool=\"a.b\",le=\"1\"} 2\n\
             d_seconds_bucket{tool=\"a.b\",le=\"2.5\"} 5\n\
             d_seconds_bucket{tool=\"a.b\",le=\"+Inf\"} 6\n\
             d_seconds_sum{tool=\"a.b\"} 9.25\n\
             d_seconds_count{tool=\"a.b\"} 6\n"
        );
    }

    #[test]
    fn a_histogram_without_labels_puts_le_alone_in_braces() {
        let mut out = Exposition::with_capacity(0);
        out.family("h", Kind::Histogram, "h").histogram("h", &[], &[1.0], &[0, 0], 0.0);
        assert_eq!(
            out.finish(),
            "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n"
        );
    }

    #[test]
    fn names_follow_the_formats_grammar() {
        assert!(valid_name("mcp_raspi_requests_total") && valid_name("_x:y1"));
        assert!(!valid_name("") && !valid_name("1x") && !valid_name("a-b") && !valid_name("a b"));
    }
}
