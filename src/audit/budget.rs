//! How much of the audit trail one identity may fill.
//!
//! The trail is rotated by size, so a caller who could write without bound could push every
//! other record out of it. Each identity has a budget of bytes per hour
//! (`logging.audit_budget_mb_per_hour`). Within it, records are written in full (and each is
//! bounded, see [`super::redact`]). Past it, the records that matter most are still written,
//! compactly (denied, failed and state-changing calls: the tool, outcome, identity and time,
//! without the arguments), while those of successful read-only calls are counted per tool
//! and written as one summary record a minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Length of a budget window.
pub const WINDOW: Duration = Duration::from_secs(3600);
/// How often the counts of records not written are themselves written, at most.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// Identities tracked at once; past it, windows that ended are forgotten first.
const MAX_TRACKED: usize = 4096;

/// What to write of one record.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The whole record.
    Full,
    /// The record without its arguments: the identity is over its budget.
    Compact,
    /// Nothing now: counted, for a summary record.
    Counted,
}

/// Counts of records not written, for a summary record.
#[derive(Debug, PartialEq, Eq)]
pub struct Suppressed {
    pub since: SystemTime,
    pub calls: BTreeMap<String, u64>,
}

struct Usage {
    window_start: Instant,
    bytes: u64,
    counted: BTreeMap<String, u64>,
    counted_since: Option<SystemTime>,
    last_summary: Option<Instant>,
    /// Whether the operator was told that this window's budget is spent.
    warned: bool,
}

/// The budgets of every identity.
pub struct Budgets {
    bytes_per_window: u64,
    usage: Mutex<HashMap<String, Usage>>,
}

impl Budgets {
    /// `bytes_per_window` per identity and [`WINDOW`]; 0 is no limit.
    pub fn new(bytes_per_window: u64) -> Budgets {
        Budgets { bytes_per_window, usage: Mutex::new(HashMap::new()) }
    }

    /// Decides what to write of a record of `len` bytes by `identity` for `tool`, and charges
    /// what is written (`compact_len` when compact). `urgent` records (denied, failed,
    /// state-changing) are never only counted. The second value is a summary due now.
    pub fn admit(
        &self,
        identity: &str,
        tool: &str,
        len: usize,
        compact_len: usize,
        urgent: bool,
        now: Instant,
    ) -> (Verdict, Option<Suppressed>) {
        if self.bytes_per_window == 0 {
            return (Verdict::Full, None);
        }
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        if usage.len() >= MAX_TRACKED && !usage.contains_key(identity) {
            usage.retain(|_, u| now.duration_since(u.window_start) < WINDOW || !u.counted.is_empty());
        }
        // Every record passes here: the identity's name is copied only the first time.
        if !usage.contains_key(identity) {
            let fresh = Usage {
                window_start: now,
                bytes: 0,
                counted: BTreeMap::new(),
                counted_since: None,
                last_summary: None,
                warned: false,
            };
            usage.insert(identity.to_string(), fresh);
        }
        let Some(entry) = usage.get_mut(identity) else { return (Verdict::Full, None) };
        let mut summary = None;
        if now.duration_since(entry.window_start) >= WINDOW {
            entry.window_start = now;
            entry.bytes = 0;
            entry.warned = false;
            summary = take(entry, now);
        }
        let within = entry.bytes + len as u64 <= self.bytes_per_window;
        if !within && !entry.warned {
            entry.warned = true;
            log::warn!(
                "{identity:?} has written its audit budget of {} MB this hour (logging.audit_budget_mb_per_hour): \
                 its denied, failed and changing calls are recorded without arguments, its other calls counted",
                self.bytes_per_window / (1024 * 1024)
            );
        }
        let verdict = if within {
            entry.bytes += len as u64;
            Verdict::Full
        } else if urgent {
            entry.bytes += compact_len as u64;
            Verdict::Compact
        } else {
            *entry.counted.entry(tool.to_string()).or_default() += 1;
            entry.counted_since.get_or_insert_with(SystemTime::now);
            if entry.last_summary.is_none_or(|at| now.duration_since(at) >= SUMMARY_EVERY) {
                summary = summary.or_else(|| take(entry, now));
            }
            Verdict::Counted
        };
        (verdict, summary)
    }

    /// Every identity's counts not yet written (when the log is flushed or closed).
    pub fn drain(&self) -> Vec<(String, Suppressed)> {
        let now = Instant::now();
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        usage.iter_mut().filter_map(|(who, u)| take(u, now).map(|s| (who.clone(), s))).collect()
    }
}

fn take(usage: &mut Usage, now: Instant) -> Option<Suppressed> {
    if usage.counted.is_empty() {
        return None;
    }
    usage.last_summary = Some(now);
    Some(Suppressed {
        since: usage.counted_since.take().unwrap_or_else(SystemTime::now),
        calls: std::mem::take(&mut usage.counted),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_budget_everything_is_written_in_full() {
        let budgets = Budgets::new(1000);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(budgets.admit("viewer", "system.get_info", 100, 50, false, now), (Verdict::Full, None));
        }
        assert_eq!(budgets.admit("viewer", "system.get_info", 100, 50, false, now).0, Verdict::Counted);
        // Another identity has its own budget.
        assert_eq!(budgets.admit("admin", "gpio.set_mode", 100, 50, true, now), (Verdict::Full, None));
    }

    #[test]
    fn past_the_budget_urgent_records_are_compact_and_the_others_counted_into_a_summary_a_minute() {
        let budgets = Budgets::new(100);
        let start = Instant::now();
        assert_eq!(budgets.admit("v", "process.list", 100, 40, false, start).0, Verdict::Full);
        let (verdict, summary) = budgets.admit("v", "process.list", 100, 40, false, start);
        assert_eq!(verdict, Verdict::Counted);
        assert_eq!(summary.unwrap().calls, BTreeMap::from([("process.list".to_string(), 1)]));
        assert_eq!(budgets.admit("v", "manage.rollback", 100, 40, true, start), (Verdict::Compact, None));
        for _ in 0..5 {
            assert_eq!(budgets.admit("v", "process.list", 100, 40, false, start), (Verdict::Counted, None));
        }
        let (_, summary) = budgets.admit("v", "system.get_info", 100, 40, false, start + SUMMARY_EVERY);
        let calls = summary.unwrap().calls;
        assert_eq!(calls.get("process.list"), Some(&5));
        assert_eq!(calls.get("system.get_info"), Some(&1));
        // A new window starts over.
        assert_eq!(budgets.admit("v", "process.list", 100, 40, false, start + WINDOW).0, Verdict::Full);
        assert!(budgets.drain().is_empty());
    }

    #[test]
    fn zero_is_no_limit() {
        let budgets = Budgets::new(0);
        for _ in 0..100 {
            assert_eq!(budgets.admit("v", "t", 1 << 20, 1, false, Instant::now()), (Verdict::Full, None));
        }
    }
}
