//! Running one piece of work on many devices: at most `concurrency` at once, each within its
//! own deadline, so that an unreachable or slow device costs its own time and nobody else's.
//! On a terminal a progress bar counts the devices done.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

/// What the work on one device gave, and how long it took.
#[derive(Debug)]
pub struct Outcome<T> {
    pub index: usize,
    pub result: Result<T, String>,
    pub elapsed: Duration,
}

/// Runs `work` for each of `count` devices (by index), `concurrency` at a time, each given at
/// most `deadline`. The outcomes come back in the devices' order.
pub async fn each<T, F, Fut>(
    count: usize,
    concurrency: usize,
    deadline: Duration,
    bar: Option<&indicatif::ProgressBar>,
    work: F,
) -> Vec<Outcome<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    if let Some(bar) = bar {
        bar.set_length(count as u64);
        bar.set_position(0);
    }
    let mut outcomes: Vec<Outcome<T>> = stream::iter(0..count)
        .map(|index| {
            let started = Instant::now();
            let run = work(index);
            async move {
                let result = match tokio::time::timeout(deadline, run).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("unreachable: no answer within {} s", deadline.as_secs_f64().ceil())),
                };
                Outcome { index, result, elapsed: started.elapsed() }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .inspect(|_| {
            if let Some(bar) = bar {
                bar.inc(1);
            }
        })
        .collect()
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    outcomes.sort_by_key(|o| o.index);
    outcomes
}

/// A progress bar of devices on a terminal; nothing when stderr is not one, or for `--json`.
pub fn bar(what: &str, json: bool) -> Option<indicatif::ProgressBar> {
    if json {
        return None;
    }
    let bar = crate::cli::progress_bar_drawn("{spinner} {msg} [{bar:30}] {pos}/{len} devices")?;
    bar.set_message(what.to_string());
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_device_costs_its_own_deadline_and_outcomes_keep_the_devices_order() {
        let started = Instant::now();
        // Device 1 never answers; the others answer at once, three at a time.
        let outcomes = each(7, 3, Duration::from_millis(300), None, |i| async move {
            if i == 1 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(i * 10)
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert_eq!(outcomes.iter().map(|o| o.index).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(outcomes[0].result, Ok(0));
        assert_eq!(outcomes[6].result, Ok(60));
        let e = outcomes[1].result.as_ref().unwrap_err();
        assert!(e.contains("no answer within 1 s"), "{e}");
    }

    #[tokio::test]
    async fn no_more_than_the_concurrency_run_at_once() {
        let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let outcomes = each(20, 4, Duration::from_secs(5), None, |_| {
            let (running, most) = (running.clone(), most.clone());
            async move {
                let now = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, String>(())
            }
        })
        .await;
        assert_eq!(outcomes.len(), 20);
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 4);
    }
}
