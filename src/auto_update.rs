//! Automatic updates (`updates.auto`, off by default): the server checks its channel every
//! `check_interval_hours` and installs a newer release inside the maintenance window, through
//! the same path as `manage.update_server` (signature, policy, download, the agent's checks,
//! the health check and the rollback). The services restart into the new release, which
//! ends this task with the old process.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Window;
use crate::mcp::Progress;
use crate::tools::App;
use crate::update::resolve::Target;

/// The first check waits this long after a start, so that a release that has just been
/// installed proves healthy before anything else happens.
const FIRST_CHECK_DELAY: Duration = Duration::from_secs(300);
/// After a failed check, the next one comes sooner than a whole interval.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(3600);

/// Seconds after midnight UTC.
fn time_of_day(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() % 86_400).unwrap_or(0)
}

/// How long to wait before installing a release found now: until the window opens.
fn wait_for_window(window: Option<Window>, now: SystemTime) -> Duration {
    Duration::from_secs(window.map_or(0, |w| w.wait_from(time_of_day(now))))
}

/// Runs for as long as the server does when automatic updates are enabled.
pub async fn run(app: Arc<App>) {
    let auto = &app.config.updates.auto;
    let window = match Window::parse(&auto.window) {
        Ok(w) => w,
        Err(e) => {
            log::error!("automatic updates are off: updates.auto.window: {e}");
            return;
        }
    };
    let interval = Duration::from_secs(auto.check_interval_hours.saturating_mul(3600));
    let target = Target::Channel(app.config.updates.channel.clone());
    log::info!(
        "automatic updates: checking {} every {} h, installing within {}",
        app.config.updates.channel,
        auto.check_interval_hours,
        if auto.window.is_empty() { "any time" } else { auto.window.as_str() }
    );
    let mut wait = FIRST_CHECK_DELAY;
    loop {
        tokio::time::sleep(wait).await;
        wait = match crate::tools::update(&app, &Progress::none(), target.clone(), true).await {
            Ok(status) if status.status == "available" => {
                let until = wait_for_window(window, SystemTime::now());
                if until.is_zero() {
                    log::info!("automatic update to {:?}: installing", status.target_version);
                    match crate::tools::update(&app, &Progress::none(), target.clone(), false).await {
                        Ok(status) => {
                            log::info!("automatic update: {}", status.message);
                            interval
                        }
                        Err(e) => {
                            log::error!("automatic update failed: {e}");
                            RETRY_AFTER_FAILURE.min(interval)
                        }
                    }
                } else {
                    log::info!(
                        "automatic update to {:?} waits {} min for the maintenance window",
                        status.target_version,
                        until.as_secs() / 60
                    );
                    until
                }
            }
            Ok(status) => {
                log::debug!("automatic update check: {}", status.message);
                interval
            }
            Err(e) => {
                log::warn!("automatic update check failed: {e}");
                RETRY_AFTER_FAILURE.min(interval)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(hours: u64, minutes: u64) -> SystemTime {
        // 2026-01-01T00:00:00Z plus the time of day.
        UNIX_EPOCH + Duration::from_secs(1_767_225_600 + hours * 3600 + minutes * 60)
    }

    #[test]
    fn a_release_found_inside_the_window_is_installed_at_once_and_outside_it_waits() {
        let window = Window::parse("03:00-05:00").unwrap();
        assert_eq!(wait_for_window(window, at(3, 30)), Duration::ZERO);
        assert_eq!(wait_for_window(window, at(1, 0)), Duration::from_secs(2 * 3600));
        assert_eq!(wait_for_window(window, at(5, 0)), Duration::from_secs(22 * 3600));
        assert_eq!(wait_for_window(None, at(12, 0)), Duration::ZERO);
    }

    #[test]
    fn a_window_may_wrap_past_midnight() {
        let window = Window::parse("23:30-01:00").unwrap().unwrap();
        assert!(window.contains(time_of_day(at(23, 45))) && window.contains(time_of_day(at(0, 30))));
        assert!(!window.contains(time_of_day(at(1, 0))) && !window.contains(time_of_day(at(12, 0))));
        assert_eq!(wait_for_window(Some(window), at(22, 30)), Duration::from_secs(3600));
    }

    #[test]
    fn windows_that_are_not_times_are_refused() {
        for bad in ["3-5", "03:00", "25:00-01:00", "03:00-03:00", "03:60-04:00", "03:00-04:00-05:00", "ab:cd-01:00"] {
            assert!(Window::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(Window::parse("").unwrap(), None);
    }
}
