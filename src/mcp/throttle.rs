//! Failed authentication, per peer address: throttled after a burst, and recorded at a
//! bounded rate.
//!
//! Each address may fail [`BURST`] times, then once per [`REFILL`]; past that its failures
//! are answered 429 with `Retry-After`. A correct token is never slowed or refused by this:
//! clients behind one proxy or tunnel share its address, and one of them guessing must not
//! lock the others out (tokens are long random secrets, so throttling is about the noise
//! and work of a flood, not about making a guess less likely). Failures are audited per
//! address, as one record counting them at most every [`RECORD_EVERY`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Failures an address may make at once.
pub const BURST: f64 = 10.0;
/// Time for one more failure to be allowed.
pub const REFILL: Duration = Duration::from_secs(6);
/// How often one address's failures are recorded, at most.
pub const RECORD_EVERY: Duration = Duration::from_secs(60);
/// Addresses tracked at once; past it, those that have been quiet longest are forgotten.
const MAX_PEERS: usize = 4096;

struct Peer {
    /// Failures still allowed (fractional, refilled over time).
    allowance: f64,
    updated: Instant,
    /// Failures not yet recorded, since `first`.
    unrecorded: u64,
    first: SystemTime,
    last_record: Option<Instant>,
}

/// What to do about one failure.
#[derive(Debug, PartialEq)]
pub struct Failure {
    /// `Some(seconds)` when the address is over its allowance: answer 429.
    pub retry_after: Option<u64>,
    /// `Some((failures, since))` when a record of this address's failures is due now.
    pub record: Option<(u64, SystemTime)>,
}

/// Failed authentications by address.
pub struct AuthThrottle {
    peers: Mutex<HashMap<IpAddr, Peer>>,
}

impl Default for AuthThrottle {
    fn default() -> Self {
        AuthThrottle { peers: Mutex::new(HashMap::new()) }
    }
}

impl AuthThrottle {
    /// Counts a failure of `addr`.
    pub fn fail(&self, addr: IpAddr, now: Instant) -> Failure {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(&addr) {
            let oldest = peers.iter().min_by_key(|(_, p)| p.updated).map(|(a, _)| *a);
            if let Some(a) = oldest {
                peers.remove(&a);
            }
        }
        let peer = peers.entry(addr).or_insert_with(|| Peer {
            allowance: BURST,
            updated: now,
            unrecorded: 0,
            first: SystemTime::now(),
            last_record: None,
        });
        refill(peer, now);
        let retry_after = if peer.allowance >= 1.0 {
            peer.allowance -= 1.0;
            None
        } else {
            Some(wait_for_one(peer))
        };
        if peer.unrecorded == 0 {
            peer.first = SystemTime::now();
        }
        peer.unrecorded += 1;
        let record = if peer.last_record.is_none_or(|at| now.duration_since(at) >= RECORD_EVERY) {
            peer.last_record = Some(now);
            Some((std::mem::take(&mut peer.unrecorded), peer.first))
        } else {
            None
        };
        Failure { retry_after, record }
    }

    /// Every address's failures not recorded yet (when the server stops).
    pub fn drain(&self) -> Vec<(IpAddr, u64, SystemTime)> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .iter_mut()
            .filter(|(_, p)| p.unrecorded > 0)
            .map(|(a, p)| (*a, std::mem::take(&mut p.unrecorded), p.first))
            .collect()
    }
}

fn refill(peer: &mut Peer, now: Instant) {
    let earned = now.duration_since(peer.updated).as_secs_f64() / REFILL.as_secs_f64();
    peer.allowance = (peer.allowance + earned).min(BURST);
    peer.updated = now;
}

fn wait_for_one(peer: &Peer) -> u64 {
    ((1.0 - peer.allowance) * REFILL.as_secs_f64()).ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn an_address_is_throttled_after_its_burst_and_allowed_again_over_time() {
        let t = AuthThrottle::default();
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(t.fail(A, start).retry_after, None);
        }
        assert_eq!(t.fail(A, start).retry_after, Some(6));
        assert_eq!(t.fail(A, start + REFILL / 2).retry_after, Some(3));
        assert_eq!(t.fail(B, start).retry_after, None, "other addresses are not affected");
        assert_eq!(t.fail(A, start + REFILL).retry_after, None, "one more failure is allowed after REFILL");
        assert_eq!(t.fail(A, start + REFILL).retry_after, Some(6));
    }

    #[test]
    fn failures_are_recorded_at_most_once_a_minute_with_their_count() {
        let t = AuthThrottle::default();
        let start = Instant::now();
        assert_eq!(t.fail(A, start).record.map(|r| r.0), Some(1));
        for _ in 0..999 {
            assert_eq!(t.fail(A, start).record, None);
        }
        assert_eq!(t.fail(A, start + RECORD_EVERY).record.map(|r| r.0), Some(1000));
        t.fail(A, start + RECORD_EVERY);
        assert_eq!(t.drain().iter().map(|d| d.1).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn the_table_of_addresses_is_bounded() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 100) {
            t.fail(IpAddr::V4(std::net::Ipv4Addr::from(i)), now);
        }
        assert_eq!(t.peers.lock().unwrap_or_else(|p| p.into_inner()).len(), MAX_PEERS);
    }
}
