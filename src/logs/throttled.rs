//! A warning logged at a bounded rate: a flood of the same trouble (refused connections,
//! accept errors) must not flood the log too.

use std::time::{Duration, Instant};

/// At most one warning per interval, saying how many were held back since the last one.
pub struct Throttled {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttled {
    pub const fn new(every: Duration) -> Throttled {
        Throttled { every, last: None, held: 0 }
    }

    /// Logs `message()` unless a warning was logged less than the interval ago (the message
    /// is only built when it is logged); true when it was.
    pub fn warn(&mut self, message: impl FnOnce() -> String) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|at| now.duration_since(at) < self.every) {
            self.held += 1;
            return false;
        }
        let held = std::mem::take(&mut self.held);
        self.last = Some(now);
        if held > 0 {
            log::warn!("{} ({held} more like it in the last {} s)", message(), self.every.as_secs());
        } else {
            log::warn!("{}", message());
        }
        true
    }

    /// Warnings held back since the last one logged.
    pub fn held(&self) -> u64 {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_held_back_within_their_interval() {
        let mut w = Throttled::new(Duration::from_secs(60));
        let said = (0..1000).filter(|_| w.warn(String::new)).count();
        assert_eq!(said, 1);
        assert_eq!(w.held(), 999);
    }
}
