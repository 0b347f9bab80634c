//! `mcp-fleet update`: a rolling update of the fleet through each device's signed
//! self-update. Devices go in batches (a canary batch first when asked); a batch passes when
//! every device in it committed the release and its health verdict is not critical, and the
//! next batch starts only then. The first batch that does not pass halts the rollout: the
//! devices of that batch that did update are put back on the release they ran before, and
//! the report names the devices that updated, those rolled back and those untouched.
//!
//! The rollout's record is written (atomically) after every batch, beside the fleet file, so
//! that `--resume` continues a halted or interrupted rollout where it stopped.

mod device;
pub mod plan;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use self::device::Pace;
use self::plan::{Outcome, Request, Revert, Rollout, Standing, Status};
use super::run::Context;
use super::{fanout, print, FleetFailure, UpdateArgs, EXIT_DEVICES};

/// How often a device is asked how far its update got.
const POLL: Duration = Duration::from_secs(1);

/// Devices per batch unless told.
pub const DEFAULT_BATCH_SIZE: usize = 10;

/// Where a fleet file's rollout is recorded: `fleet-config.rollout.json` beside
/// `fleet-config.yml`.
pub fn default_state_path(fleet_file: &Path) -> PathBuf {
    let stem = fleet_file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "fleet".into());
    fleet_file.with_file_name(format!("{stem}.rollout.json"))
}

fn load(path: &Path) -> Result<Option<Rollout>, FleetFailure> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(
                format!("cannot read the rollout record {}: {}", path.display(), crate::cli::io_message(&e)).into()
            )
        }
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        format!(
            "the rollout record {} is not one mcp-fleet wrote ({e}); move it away to start a new rollout",
            path.display()
        )
        .into()
    })
}

fn save(path: &Path, rollout: &Rollout) -> Result<(), FleetFailure> {
    let text = format!("{}\n", serde_json::to_string_pretty(rollout).unwrap_or_default());
    crate::cli::write_atomically(path, text.as_bytes(), 0o644)
        .map_err(|e| FleetFailure::from(format!("cannot record the rollout: {e}")))
}

/// The rollout this run carries on: a new one, or the recorded one with `--resume`.
fn begin(cx: &Context<'_>, args: &UpdateArgs, path: &Path) -> Result<Rollout, FleetFailure> {
    let recorded = load(path)?;
    let shown = path.display();
    if args.resume {
        let Some(mut rollout) = recorded else {
            return Err(format!("there is no rollout to resume: {shown} does not exist").into());
        };
        if rollout.fleet != cx.fleet.id {
            return Err(format!("{shown} records a rollout of fleet {}, not {}", rollout.fleet, cx.fleet.id).into());
        }
        if rollout.status == Status::Completed {
            return Err(
                format!("the rollout of {} completed; there is nothing to resume", rollout.request.version).into()
            );
        }
        if let Some(v) = args.target.as_deref().filter(|v| *v != rollout.request.version) {
            return Err(format!(
                "--resume continues the rollout of {}, not {v}: leave --version out, or move {shown} away to roll out {v}",
                rollout.request.version
            )
            .into());
        }
        if let Some(missing) = rollout.devices.iter().find(|d| cx.fleet.device(&d.device).is_err()) {
            return Err(format!("device {} of the rollout is no longer in the fleet file", missing.device).into());
        }
        if let Some(n) = args.batch_size {
            rollout.request.batch_size = n;
        }
        if let Some(k) = args.max_unavailable {
            rollout.request.max_unavailable = k;
        }
        rollout.status = Status::Running;
        rollout.halted_batch.clear();
        return Ok(rollout);
    }
    if let Some(rollout) = recorded.filter(|r| r.status != Status::Completed) {
        let how = if rollout.status == Status::Halted { "halted" } else { "was interrupted" };
        return Err(format!(
            "the rollout of {} {how} ({shown}): continue it with --resume, or move the file away to start another",
            rollout.request.version
        )
        .into());
    }
    let version = match (&args.target, &cx.fleet.version) {
        (Some(v), _) | (None, Some(v)) => v.clone(),
        (None, None) => {
            return Err("name the release to roll out with --version (or fleet.version in the fleet file)"
                .to_string()
                .into())
        }
    };
    semver::Version::parse(&version)
        .map_err(|e| FleetFailure::from(format!("--version {version:?} is not a version such as 0.2.0: {e}")))?;
    let batch_size = args.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    let request = Request {
        version,
        batch_size,
        max_unavailable: args.max_unavailable.unwrap_or(batch_size),
        canary: args.canary.unwrap_or(0),
    };
    let chosen = cx.chosen(&args.select.selection())?;
    let ids: Vec<&str> = chosen.iter().map(|(d, _)| d.id.as_str()).collect();
    Ok(Rollout::new(&cx.fleet.id, request, &ids))
}

/// `mcp-fleet update`.
pub async fn run(
    cx: &Context<'_>,
    args: &UpdateArgs,
    fleet_file: &Path,
    out: &mut dyn Write,
) -> Result<u8, FleetFailure> {
    if args.batch_size == Some(0) || args.max_unavailable == Some(0) {
        return Err("--batch-size and --max-unavailable must be at least 1".to_string().into());
    }
    if args.resume && (args.select.all || args.select.tag.is_some() || !args.select.device.is_empty()) {
        return Err("--resume continues with the rollout's own devices: leave --all, --tag and --device out"
            .to_string()
            .into());
    }
    let path = args.state.clone().unwrap_or_else(|| default_state_path(fleet_file));
    let mut rollout = begin(cx, args, &path)?;
    save(&path, &rollout)?;
    let pace = Pace { deadline: Duration::from_secs(args.device_timeout), poll: POLL };
    let version = rollout.request.version.clone();
    let batches = rollout.batches();
    let bar = fanout::bar(&format!("update to {version}"), cx.json);
    if let Some(bar) = &bar {
        bar.set_length(batches.iter().map(Vec::len).sum::<usize>() as u64);
    }
    let ids: Vec<String> = rollout.devices.iter().map(|d| d.device.clone()).collect();
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    for (n, batch) in batches.iter().enumerate() {
        let names: Vec<&str> = batch.iter().map(|&i| all[i]).collect();
        let label = format!("batch {} of {} ({})", n + 1, batches.len(), plan::ranges(&all, &names));
        if let Some(bar) = &bar {
            bar.set_message(format!("update to {version}: {label}"));
        }
        let targets: Vec<_> = batch.iter().map(|&i| cx.target(all[i])).collect::<Result<_, _>>()?;
        let at_once = rollout.request.max_unavailable.min(batch.len());
        let slack = cx.deadline(2);
        let outcomes = fanout::each(batch.len(), at_once, pace.deadline + slack, None, |k| {
            let (target, version, bar) = (targets[k], version.as_str(), bar.as_ref());
            async move {
                let outcome = device::update(&cx.caller, target, version, pace).await;
                if let Some(bar) = bar {
                    bar.inc(1);
                }
                Ok::<_, String>(outcome)
            }
        })
        .await;
        let results: Vec<(usize, Outcome)> = outcomes
            .into_iter()
            .map(|o| (batch[o.index], o.result.unwrap_or_else(|reason| Outcome::Lost { reason })))
            .collect();
        let passed = rollout.record_batch(results);
        save(&path, &rollout)?;
        if !cx.json {
            let failed = batch.iter().filter(|&&i| rollout.devices[i].outcome.failed()).count();
            let line = match failed {
                0 => format!("{label}: healthy\n"),
                _ => format!("{label}: {failed} of {} devices failed; halting\n", batch.len()),
            };
            print_above(bar.as_ref(), out, &line)?;
        }
        if !passed {
            revert_batch(cx, &mut rollout, pace).await;
            save(&path, &rollout)?;
            break;
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    rollout.complete();
    save(&path, &rollout)?;
    report(cx, &rollout, &path, out)?;
    Ok(if rollout.status == Status::Completed { 0 } else { EXIT_DEVICES })
}

/// Puts the halted batch's updated devices back on the releases they ran before.
async fn revert_batch(cx: &Context<'_>, rollout: &mut Rollout, pace: Pace) {
    let to_revert = rollout.to_revert();
    let targets: Vec<_> = to_revert.iter().map(|(i, _)| cx.target(&rollout.devices[*i].device)).collect();
    let outcomes =
        fanout::each(to_revert.len(), rollout.request.max_unavailable, pace.deadline + cx.deadline(2), None, |k| {
            let (target, to) = (&targets[k], to_revert[k].1.as_str());
            async move {
                match target {
                    Ok(target) => device::revert(&cx.caller, target, to, pace).await,
                    Err(e) => Err(e.message.clone()),
                }
            }
        })
        .await;
    for o in outcomes {
        let (i, to) = &to_revert[o.index];
        rollout.devices[*i].reverted = Some(Revert { to: to.clone(), error: o.result.err() });
    }
}

/// Writes a line above the progress bar, or to `out` when there is none.
fn print_above(bar: Option<&indicatif::ProgressBar>, out: &mut dyn Write, line: &str) -> Result<(), FleetFailure> {
    match bar {
        Some(bar) => {
            bar.println(line.trim_end());
            Ok(())
        }
        None => print(out, line),
    }
}

fn report(cx: &Context<'_>, rollout: &Rollout, path: &Path, out: &mut dyn Write) -> Result<(), FleetFailure> {
    if cx.json {
        let report = json!({
            "fleet": rollout.fleet,
            "version": rollout.request.version,
            "status": rollout.status,
            "updated": rollout.in_standing(Standing::Updated),
            "rolled_back": rollout.in_standing(Standing::RolledBack),
            "not_updated": rollout.in_standing(Standing::NotUpdated),
            "unknown": rollout.in_standing(Standing::Unknown),
            "untouched": rollout.in_standing(Standing::Untouched),
            "failed": rollout.failed().iter().map(|d| d.device.as_str()).collect::<Vec<_>>(),
            "halted_batch": rollout.halted_batch,
            "devices": rollout.devices,
            "record": path,
        });
        return print(out, &format!("{}\n", serde_json::to_string_pretty(&report).unwrap_or_default()));
    }
    let mut text = rollout.report();
    if rollout.status != Status::Completed {
        text.push_str(&format!(
            "the record is {}; after fixing what failed, continue with: mcp-fleet update --resume\n",
            path.display()
        ));
    }
    print(out, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_lives_beside_the_fleet_file() {
        assert_eq!(default_state_path(Path::new("/srv/fleet/plant.yml")), Path::new("/srv/fleet/plant.rollout.json"));
        assert_eq!(default_state_path(Path::new("fleet-config.yml")), Path::new("fleet-config.rollout.json"));
    }
}
