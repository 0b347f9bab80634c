//! A rolling update's plan and record: which devices go in which batch, what each device's
//! update came to, and the report that says exactly which devices changed, which were rolled
//! back and which were not touched. The record is what `--resume` reads back.

use serde::{Deserialize, Serialize};

/// What a rollout asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: String,
    /// Devices per batch.
    pub batch_size: usize,
    /// Devices of a batch updating (and so restarting) at once.
    pub max_unavailable: usize,
    /// Devices updated first, in a batch of their own.
    pub canary: usize,
}

/// What updating one device came to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Not attempted.
    Untouched,
    /// It ran the version already.
    AlreadyCurrent,
    /// Updated, committed, and its health verdict is not critical.
    Updated { from: String },
    /// Updated and committed, but its health verdict is critical.
    Unhealthy { from: String, reason: String },
    /// The device did not keep the release: it rolled itself back (its new server did not
    /// prove healthy) or the update failed there.
    RolledBack { reason: String },
    /// The device refused or could not start the update: it is unchanged.
    NotUpdated { reason: String },
    /// It stopped answering during the update: what it runs is not known.
    Lost { reason: String },
}

impl Outcome {
    /// Whether the device fails its batch.
    pub fn failed(&self) -> bool {
        matches!(
            self,
            Outcome::Unhealthy { .. } | Outcome::RolledBack { .. } | Outcome::NotUpdated { .. } | Outcome::Lost { .. }
        )
    }

    /// Why it failed.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Unhealthy { reason, .. }
            | Outcome::RolledBack { reason }
            | Outcome::NotUpdated { reason }
            | Outcome::Lost { reason } => Some(reason),
            Outcome::Untouched | Outcome::AlreadyCurrent | Outcome::Updated { .. } => None,
        }
    }

    /// The version it ran before this rollout changed it, when it did.
    pub fn changed_from(&self) -> Option<&str> {
        match self {
            Outcome::Updated { from } | Outcome::Unhealthy { from, .. } => Some(from),
            _ => None,
        }
    }
}

/// A device put back on its earlier release because its batch halted the rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revert {
    pub to: String,
    /// Why it could not be put back; `None` when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One device of the rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub device: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted: Option<Revert>,
}

/// Where a device stands at the end of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// On the new version.
    Updated,
    /// Back on the version it ran before (by itself, or put back).
    RolledBack,
    /// Attempted, refused or never started: unchanged.
    NotUpdated,
    /// Not known: it stopped answering, or could not be put back.
    Unknown,
    Untouched,
}

impl DeviceRecord {
    pub fn standing(&self) -> Standing {
        match (&self.outcome, &self.reverted) {
            (_, Some(Revert { error: None, .. })) => Standing::RolledBack,
            (_, Some(Revert { error: Some(_), .. })) => Standing::Unknown,
            (Outcome::Untouched, None) => Standing::Untouched,
            (Outcome::AlreadyCurrent | Outcome::Updated { .. } | Outcome::Unhealthy { .. }, None) => Standing::Updated,
            (Outcome::RolledBack { .. }, None) => Standing::RolledBack,
            (Outcome::NotUpdated { .. }, None) => Standing::NotUpdated,
            (Outcome::Lost { .. }, None) => Standing::Unknown,
        }
    }

    /// Whether a run still has work on this device.
    pub fn to_do(&self) -> bool {
        self.standing() != Standing::Updated || self.outcome.failed()
    }
}

/// Whether a rollout is under way, stopped at a bad batch, or over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Halted,
    Completed,
}

/// A rollout: what was asked, its devices in order, and how far it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub fleet: String,
    #[serde(flatten)]
    pub request: Request,
    pub status: Status,
    /// Batches that passed, over all runs.
    pub batches_passed: usize,
    /// The batch that halted the rollout, by device ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub halted_batch: Vec<String>,
    pub devices: Vec<DeviceRecord>,
}

impl Rollout {
    /// A rollout of `request` over `devices` (in order), none of them touched yet.
    pub fn new(fleet: &str, request: Request, devices: &[&str]) -> Rollout {
        let devices = devices
            .iter()
            .map(|d| DeviceRecord { device: d.to_string(), outcome: Outcome::Untouched, reverted: None })
            .collect();
        Rollout {
            fleet: fleet.to_string(),
            request,
            status: Status::Running,
            batches_passed: 0,
            halted_batch: Vec::new(),
            devices,
        }
    }

    /// The batches of this run, as indices into `devices`: the devices with work left, the
    /// canary batch first when no batch has passed yet, then `batch_size` at a time.
    pub fn batches(&self) -> Vec<Vec<usize>> {
        let left: Vec<usize> = (0..self.devices.len()).filter(|&i| self.devices[i].to_do()).collect();
        let mut batches = Vec::new();
        let mut rest = left.as_slice();
        let canary = if self.batches_passed == 0 { self.request.canary.min(rest.len()) } else { 0 };
        if canary > 0 {
            let (first, others) = rest.split_at(canary);
            batches.push(first.to_vec());
            rest = others;
        }
        batches.extend(rest.chunks(self.request.batch_size.max(1)).map(<[usize]>::to_vec));
        batches
    }

    /// Records what a batch came to; returns whether it passed. A batch fails when any of its
    /// devices failed.
    pub fn record_batch(&mut self, results: Vec<(usize, Outcome)>) -> bool {
        let batch: Vec<usize> = results.iter().map(|(i, _)| *i).collect();
        for (i, outcome) in results {
            self.devices[i].outcome = outcome;
            self.devices[i].reverted = None;
        }
        let passed = batch.iter().all(|&i| !self.devices[i].outcome.failed());
        if passed {
            self.batches_passed += 1;
        } else {
            self.status = Status::Halted;
            self.halted_batch = batch.iter().map(|&i| self.devices[i].device.clone()).collect();
        }
        passed
    }

    /// The devices of the halted batch that this rollout changed, to put back: (index, the
    /// version each ran before).
    pub fn to_revert(&self) -> Vec<(usize, String)> {
        (0..self.devices.len())
            .filter(|&i| self.halted_batch.contains(&self.devices[i].device))
            .filter_map(|i| self.devices[i].outcome.changed_from().map(|from| (i, from.to_string())))
            .collect()
    }

    /// Ends a run that no batch halted.
    pub fn complete(&mut self) {
        if self.status == Status::Running {
            self.status = Status::Completed;
            self.halted_batch.clear();
        }
    }

    /// The devices in `standing`, by id.
    pub fn in_standing(&self, standing: Standing) -> Vec<&str> {
        self.devices.iter().filter(|d| d.standing() == standing).map(|d| d.device.as_str()).collect()
    }

    /// The devices that failed their update, by id.
    pub fn failed(&self) -> Vec<&DeviceRecord> {
        self.devices.iter().filter(|d| d.outcome.failed()).collect()
    }

    /// The report: what happened to which devices, with ranges of ids in the rollout's order.
    pub fn report(&self) -> String {
        let ids: Vec<&str> = self.devices.iter().map(|d| d.device.as_str()).collect();
        let mut text = match self.status {
            Status::Completed => format!("rollout of {} to fleet {}: completed\n", self.request.version, self.fleet),
            Status::Halted => format!(
                "rollout of {} to fleet {}: HALTED at the batch {}, which did not prove healthy\n",
                self.request.version,
                self.fleet,
                ranges(&ids, &self.halted_batch.iter().map(String::as_str).collect::<Vec<_>>())
            ),
            Status::Running => format!("rollout of {} to fleet {}: interrupted\n", self.request.version, self.fleet),
        };
        let failed: Vec<&str> = self.failed().iter().map(|d| d.device.as_str()).collect();
        for (label, standing) in [
            ("updated", Standing::Updated),
            ("rolled back", Standing::RolledBack),
            ("not updated", Standing::NotUpdated),
            ("unknown", Standing::Unknown),
            ("untouched", Standing::Untouched),
        ] {
            let these = self.in_standing(standing);
            if these.is_empty() {
                continue;
            }
            let mut line = format!("  {label:<12} {:>4}  {}", these.len(), ranges(&ids, &these));
            let failing: Vec<&str> = these.iter().copied().filter(|d| failed.contains(d)).collect();
            if !failing.is_empty() && standing != Standing::NotUpdated {
                line.push_str(&format!(" ({} failed)", ranges(&ids, &failing)));
            }
            text.push_str(&line);
            text.push('\n');
        }
        for d in &self.devices {
            if let Some(reason) = d.outcome.reason() {
                text.push_str(&format!("  {}: {reason}\n", d.device));
            }
            if let Some(Revert { to, error: Some(e) }) = &d.reverted {
                text.push_str(&format!("  {}: could not be put back on {to}: {e}\n", d.device));
            }
        }
        text
    }
}

/// `chosen` (a subset of `all`, each once) written as runs of neighbours in `all`'s order:
/// `dev-00–dev-29, dev-35`.
pub fn ranges(all: &[&str], chosen: &[&str]) -> String {
    let mut positions: Vec<usize> = chosen.iter().filter_map(|c| all.iter().position(|a| a == c)).collect();
    positions.sort_unstable();
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for p in positions {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == p => *end = p,
            _ => runs.push((p, p)),
        }
    }
    let runs: Vec<String> = runs
        .into_iter()
        .map(|(start, end)| match end - start {
            0 => all[start].to_string(),
            1 => format!("{}, {}", all[start], all[end]),
            _ => format!("{}–{}", all[start], all[end]),
        })
        .collect();
    runs.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("dev-{i:02}")).collect()
    }

    fn rollout(n: usize, batch_size: usize, canary: usize) -> Rollout {
        let ids = ids(n);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let request = Request { version: "0.2.0".into(), batch_size, max_unavailable: batch_size, canary };
        Rollout::new("lab", request, &refs)
    }

    fn updated() -> Outcome {
        Outcome::Updated { from: "0.1.0".into() }
    }

    #[test]
    fn batches_are_the_canary_then_batch_size_devices_in_order() {
        let r = rollout(7, 3, 1);
        assert_eq!(r.batches(), [vec![0], vec![1, 2, 3], vec![4, 5, 6]]);
        assert_eq!(rollout(7, 3, 0).batches(), [vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        assert_eq!(rollout(2, 5, 4).batches(), [vec![0, 1]]);
    }

    #[test]
    fn the_first_failing_batch_halts_and_the_report_names_every_device() {
        let mut r = rollout(100, 10, 0);
        let batches = r.batches();
        for batch in &batches[..3] {
            assert!(r.record_batch(batch.iter().map(|&i| (i, updated())).collect()));
        }
        let fourth: Vec<(usize, Outcome)> = batches[3]
            .iter()
            .map(|&i| match i {
                35..=37 => (i, Outcome::RolledBack { reason: "0.2.0 did not prove healthy".into() }),
                _ => (i, updated()),
            })
            .collect();
        assert!(!r.record_batch(fourth));
        assert_eq!(r.status, Status::Halted);
        let revert = r.to_revert();
        assert_eq!(revert.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [30, 31, 32, 33, 34, 38, 39]);
        for (i, to) in revert {
            r.devices[i].reverted = Some(Revert { to, error: None });
        }
        let report = r.report();
        assert!(report.contains("HALTED at the batch dev-30–dev-39"), "{report}");
        assert!(report.contains("updated        30  dev-00–dev-29\n"), "{report}");
        assert!(report.contains("rolled back    10  dev-30–dev-39 (dev-35–dev-37 failed)\n"), "{report}");
        assert!(report.contains("untouched      60  dev-40–dev-99\n"), "{report}");
        assert!(report.contains("dev-36: 0.2.0 did not prove healthy"), "{report}");

        // Resuming takes the halted batch again, then the rest; no canary any more.
        let resumed = r.batches();
        assert_eq!(resumed.len(), 7);
        assert_eq!(resumed[0], (30..40).collect::<Vec<_>>());
        assert_eq!(resumed[6], (90..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_device_that_could_not_be_put_back_or_stopped_answering_is_unknown() {
        let mut r = rollout(4, 4, 0);
        let results = vec![
            (0, updated()),
            (1, Outcome::Lost { reason: "no answer within 600 s".into() }),
            (2, Outcome::NotUpdated { reason: "refused".into() }),
            (3, Outcome::AlreadyCurrent),
        ];
        assert!(!r.record_batch(results));
        assert_eq!(r.to_revert(), [(0, "0.1.0".to_string())]);
        r.devices[0].reverted = Some(Revert { to: "0.1.0".into(), error: Some("unreachable".into()) });
        assert_eq!(r.in_standing(Standing::Unknown), ["dev-00", "dev-01"]);
        assert_eq!(r.in_standing(Standing::NotUpdated), ["dev-02"]);
        assert_eq!(r.in_standing(Standing::Updated), ["dev-03"]);
        assert_eq!(r.batches(), [vec![0, 1, 2]]);
    }

    #[test]
    fn the_record_reads_back_as_it_was_written() {
        let mut r = rollout(3, 2, 1);
        r.record_batch(vec![(0, Outcome::Unhealthy { from: "0.1.0".into(), reason: "critical".into() })]);
        r.devices[0].reverted = Some(Revert { to: "0.1.0".into(), error: None });
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""outcome":"unhealthy""#), "{text}");
        assert_eq!(serde_json::from_str::<Rollout>(&text).unwrap(), r);
    }

    #[test]
    fn ranges_join_neighbours() {
        let all = ["a", "b", "c", "d", "e", "f"];
        assert_eq!(ranges(&all, &["a", "b", "c", "e"]), "a–c, e");
        assert_eq!(ranges(&all, &["f", "e"]), "e, f");
        assert_eq!(ranges(&all, &[]), "");
    }
}
