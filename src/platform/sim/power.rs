//! Simulated reboot and power-off: requests are recorded and never reach the machine, so
//! the power tools can be exercised on a workstation without turning it off.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::platform::{PlatformError, Power, PowerAction, PowerReceipt};

/// Records power requests instead of acting on them.
pub struct SimPower {
    requested: Mutex<Vec<PowerReceipt>>,
}

impl SimPower {
    pub fn new() -> Self {
        SimPower { requested: Mutex::new(Vec::new()) }
    }

    /// Every request so far, oldest first.
    #[cfg(test)]
    pub fn requested(&self) -> Vec<PowerReceipt> {
        self.requested.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Default for SimPower {
    fn default() -> Self {
        Self::new()
    }
}

impl Power for SimPower {
    fn schedule(&self, action: PowerAction, delay_seconds: u32) -> Result<PowerReceipt, PlatformError> {
        let when = SystemTime::now() + Duration::from_secs(u64::from(delay_seconds));
        let receipt = PowerReceipt {
            action,
            delay_seconds,
            scheduled_for: crate::logs::timestamp(when),
            method: "simulated".into(),
        };
        self.requested
            .lock()
            .map_err(|_| PlatformError::Failed("simulated power is unavailable".into()))?
            .push(receipt.clone());
        Ok(receipt)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn requests_are_recorded_in_order_with_their_time_and_the_simulated_method() {
        let power = SimPower::new();
        let before = SystemTime::now();
        let receipt = power.schedule(PowerAction::Reboot, 60).unwrap();
        power.schedule(PowerAction::Shutdown, 0).unwrap();
        assert_eq!(receipt.method, "simulated");
        assert_eq!((receipt.action, receipt.delay_seconds), (PowerAction::Reboot, 60));
        let when = humantime::parse_rfc3339(&receipt.scheduled_for).unwrap();
        assert!(when >= before + Duration::from_secs(59) && when <= SystemTime::now() + Duration::from_secs(61));
        let requested = power.requested();
        assert_eq!(requested.len(), 2);
        assert_eq!(requested[0], receipt);
        assert_eq!(requested[1].action, PowerAction::Shutdown);
    }
}
