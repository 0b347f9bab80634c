//! Accepting and serving HTTP connections within limits.
//!
//! Every connection is a file descriptor and some memory, so a client that opens many and
//! sends nothing (or trickles its headers) could otherwise take them all and lock everyone
//! out. Connections are served by hyper's HTTP/1.1 server under these rules:
//!
//! - at most `server.max_connections` at once; when all are taken, the one that has waited
//!   longest without sending a request (or, failing that, has been idle longest between
//!   requests) is closed to make room, and when every one is busy the newcomer is refused;
//! - a connection must send a request's headers within `server.header_read_timeout_seconds`
//!   and is closed after `server.keep_alive_timeout_seconds` idle between requests;
//! - refusals and accept errors (such as running out of file descriptors, after which
//!   accepting pauses) are logged at a bounded rate;
//! - once a burst of connections has closed, the allocator gives their memory back.
//!
//! A connection is busy from a request's headers until its response body has been sent
//! (an event stream included), and is never closed to make room while busy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::logs::Throttled;

/// The address a request came from, in its extensions.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// The limits connections are served under (from `server.*`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
}

/// How often idle connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// At most one warning per this interval for each kind of trouble.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Longest pause after an accept error.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// How long a connection closed to make room, or at shutdown, may finish its response.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One served connection.
struct Slot {
    peer: SocketAddr,
    opened: Instant,
    /// Requests whose response has not been sent yet.
    busy: AtomicU32,
    /// Requests begun.
    requests: AtomicU64,
    /// Milliseconds after `opened` of the last request's end.
    last_active_ms: AtomicU64,
    close: Notify,
}

impl Slot {
    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    fn never_asked(&self) -> bool {
        self.requests.load(Ordering::Acquire) == 0
    }
}

/// Marks a connection busy while alive.
struct Busy(Arc<Slot>);

impl Busy {
    fn begin(slot: &Arc<Slot>) -> Busy {
        slot.requests.fetch_add(1, Ordering::AcqRel);
        slot.busy.fetch_add(1, Ordering::AcqRel);
        Busy(slot.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.0.opened.elapsed().as_millis() as u64;
        self.0.last_active_ms.store(now, Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection busy until it has been sent (or dropped).
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connections being served.
struct Table {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next: AtomicU64,
    limits: Limits,
    refused: Mutex<Throttled>,
    evicted: Mutex<Throttled>,
    /// Connection tasks running (a connection closed to make room runs until it has
    /// finished its response), the most since they were last all gone, and how many have
    /// ended since the memory was last given back.
    live: AtomicU64,
    peak: AtomicU64,
    ended: AtomicU64,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection from `peer`, closing another to make room when all are
    /// taken (and saying so, at a bounded rate); `None` when every connection is busy.
    fn admit(&self, peer: SocketAddr) -> Option<(u64, Arc<Slot>)> {
        let mut slots = self.lock();
        if slots.len() >= self.limits.max_connections {
            let victim = slots
                .iter()
                .filter(|(_, s)| !s.is_busy())
                .min_by_key(|(_, s)| (!s.never_asked(), s.idle_since()))
                .map(|(id, _)| *id)?;
            if let Some(slot) = slots.remove(&victim) {
                slot.close.notify_one();
                self.evicted.lock().unwrap_or_else(|p| p.into_inner()).warn(|| {
                    let what = if slot.never_asked() { "had sent no request" } else { "was idle longest" };
                    format!(
                        "all {} connections (server.max_connections) are taken: closed the one from {} that {what}",
                        self.limits.max_connections, slot.peer
                    )
                });
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            peer,
            opened: Instant::now(),
            busy: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_active_ms: AtomicU64::new(0),
            close: Notify::new(),
        });
        slots.insert(id, slot.clone());
        Some((id, slot))
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// A connection task starts.
    fn started(&self) {
        let live = self.live.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(live, Ordering::AcqRel);
    }

    /// A connection task has ended and dropped everything it held.
    fn ended(&self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.ended.fetch_add(1, Ordering::AcqRel);
    }

    /// After a burst (at least 64 connections at once), gives the memory of the ones that
    /// have ended back to the system, as they end and once more when all are gone.
    fn maybe_give_memory_back(&self) {
        let (live, peak, ended) =
            (self.live.load(Ordering::Acquire), self.peak.load(Ordering::Acquire), self.ended.load(Ordering::Acquire));
        if peak >= 64 && live * 4 <= peak && (ended >= 32 || (live == 0 && ended > 0)) {
            self.ended.store(0, Ordering::Release);
            if live == 0 {
                self.peak.store(0, Ordering::Release);
            }
            give_memory_back();
        }
    }

    /// Closes connections that sent no request in time or stayed idle too long, and gives
    /// memory back once a burst has gone.
    fn sweep(&self) {
        let now = Instant::now();
        let mut slots = self.lock();
        slots.retain(|_, s| {
            let expired = !s.is_busy()
                && if s.never_asked() {
                    now.duration_since(s.opened) >= self.limits.header_read_timeout
                } else {
                    now.duration_since(s.idle_since()) >= self.limits.keep_alive_timeout
                };
            if expired {
                s.close.notify_one();
            }
            !expired
        });
        drop(slots);
        self.maybe_give_memory_back();
    }

    fn close_all(&self) {
        for slot in self.lock().values() {
            slot.close.notify_one();
        }
    }
}

/// Returns the memory freed by closed connections to the system: glibc's allocator keeps
/// it otherwise, and a burst of thousands of connections would stay in the RSS.
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's heaps; it reads and
    // writes no memory of ours and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serves `listener` until `shutdown` completes, each request through `handle`, which gets
/// the request (with its [`Peer`] in the extensions). Connections still open at shutdown
/// get [`CLOSE_GRACE`] to finish the response they are sending.
pub async fn serve<H, F, R>(
    listener: TcpListener,
    limits: Limits,
    handle: H,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<R>> + Send + 'static,
    R: Body + Unpin + Send + 'static,
    R::Data: Send,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let table = Arc::new(Table {
        slots: Mutex::new(HashMap::new()),
        next: AtomicU64::new(0),
        limits,
        refused: Mutex::new(Throttled::new(WARN_EVERY)),
        evicted: Mutex::new(Throttled::new(WARN_EVERY)),
        live: AtomicU64::new(0),
        peak: AtomicU64::new(0),
        ended: AtomicU64::new(0),
    });
    let sweeper = {
        let table = table.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tick.tick().await;
                table.sweep();
            }
        })
    };
    let mut accept_errors = Throttled::new(WARN_EVERY);
    let mut pause = Duration::from_millis(10);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                pause = Duration::from_millis(10);
                pair
            }
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: accepting again at once would fail
                // again at once. Pause, longer each time, until a connection closes.
                accept_errors.warn(|| format!("cannot accept a connection: {e}; pausing {} ms", pause.as_millis()));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {},
                    () = &mut shutdown => break,
                }
                pause = (pause * 2).min(MAX_ACCEPT_PAUSE);
                continue;
            }
        };
        let Some((id, slot)) = table.admit(peer) else {
            table.refused.lock().unwrap_or_else(|p| p.into_inner()).warn(|| {
                format!(
                    "refused a connection from {peer}: all {} connections (server.max_connections) are busy",
                    limits.max_connections
                )
            });
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let table = table.clone();
        let handle = handle.clone();
        table.started();
        tokio::spawn(async move {
            serve_one(stream, peer, &slot, limits, handle).await;
            table.remove(id);
            table.ended();
        });
    }
    drop(listener);
    sweeper.abort();
    table.close_all();
    let deadline = Instant::now() + CLOSE_GRACE;
    while !table.lock().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves one connection until it ends or is told to close (then it may finish the
/// response it is sending). Everything the connection holds is dropped on return.
async fn serve_one<H, F, R>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: &Arc<Slot>,
    limits: Limits,
    handle: H,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = hyper::Response<R>> + Send + 'static,
    R: Body + Unpin + Send + 'static,
    R::Data: Send,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service_slot = slot.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let busy = Busy::begin(&service_slot);
        request.extensions_mut().insert(Peer(peer));
        let response = handle(request);
        async move {
            let response = response.await;
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let closed = tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                log::debug!("connection from {peer}: {e}");
            }
            false
        }
        () = slot.close.notified() => true,
    };
    if closed {
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
    }
}

/// Errors of one connection that went away before it was accepted: nothing to wait for.
fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PEER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 1));

    fn table(max: usize) -> Table {
        Table {
            slots: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            limits: Limits {
                max_connections: max,
                header_read_timeout: Duration::from_millis(50),
                keep_alive_timeout: Duration::from_millis(100),
            },
            refused: Mutex::new(Throttled::new(WARN_EVERY)),
            evicted: Mutex::new(Throttled::new(WARN_EVERY)),
            live: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            ended: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_full_table_closes_a_connection_that_never_asked_before_an_idle_one_and_never_a_busy_one() {
        let t = table(3);
        let (asked_id, asked) = t.admit(PEER).unwrap();
        drop(Busy::begin(&asked));
        let (_, busy) = t.admit(PEER).unwrap();
        let _working = Busy::begin(&busy);
        let (silent_id, _) = t.admit(PEER).unwrap();
        let (_, newer) = t.admit(PEER).unwrap();
        assert!(!t.lock().contains_key(&silent_id), "the silent one made room");
        assert!(t.lock().contains_key(&asked_id));
        let _w2 = Busy::begin(&newer);
        // Then the one idle between requests.
        let (_, newest) = t.admit(PEER).unwrap();
        assert!(!t.lock().contains_key(&asked_id), "the idle one made room");
        let _w3 = Busy::begin(&newest);
        // Every connection is busy: the newcomer is refused.
        assert!(t.admit(PEER).is_none());
        assert_eq!(t.lock().len(), 3);
    }

    #[test]
    fn the_sweep_closes_silent_and_idle_connections_but_not_busy_ones() {
        let t = table(10);
        let (silent, _) = t.admit(PEER).unwrap();
        let (idle, idle_slot) = t.admit(PEER).unwrap();
        drop(Busy::begin(&idle_slot));
        let (working, working_slot) = t.admit(PEER).unwrap();
        let _busy = Busy::begin(&working_slot);
        std::thread::sleep(Duration::from_millis(60));
        t.sweep();
        let open = |id| t.lock().contains_key(&id);
        assert!(!open(silent) && open(idle) && open(working));
        std::thread::sleep(Duration::from_millis(60));
        t.sweep();
        assert!(!open(idle) && open(working));
    }
}
