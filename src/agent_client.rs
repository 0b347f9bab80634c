//! The server's side of the agent socket: connects lazily, shakes hands once per
//! connection, multiplexes concurrent requests over it by id, times each out, and after a
//! failure reconnects with backoff — failing fast in between, so that privileged tools
//! answer at once with a clear error while the agent is down and every other tool keeps
//! working.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::config::OpsAgentConfig;
use crate::ipc::{self, AgentCapabilities, ErrorCode, Request, RequestFrame, Response, ResponseFrame};

/// Why a request to the agent did not get an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentError {
    /// The agent is not running or not reachable.
    Unavailable(String),
    /// The agent did not answer in time.
    Timeout(Duration),
    /// Server and agent are of incompatible versions.
    VersionMismatch(String),
    /// The agent answered with an error.
    Remote { code: ErrorCode, message: String },
    /// The agent answered something this server does not understand.
    Protocol(String),
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::Unavailable(m) => write!(f, "the ops agent is unavailable: {m}"),
            AgentError::Timeout(d) => write!(f, "the ops agent did not answer within {} ms", d.as_millis()),
            AgentError::VersionMismatch(m) => write!(f, "{m}"),
            AgentError::Remote { message, .. } => f.write_str(message),
            AgentError::Protocol(m) => write!(f, "unexpected answer from the ops agent: {m}"),
        }
    }
}

impl AgentError {
    /// The description without the "unavailable" preamble, for status reports and for
    /// repeating in a fail-fast answer.
    fn detail(&self) -> String {
        match self {
            AgentError::Unavailable(m) => m.clone(),
            other => other.to_string(),
        }
    }
}

/// What the server last learned about the agent.
#[derive(Clone, Debug, Default, serde::Serialize, schemars::JsonSchema)]
pub struct AgentStatus {
    /// Whether a handshaken connection is open now.
    pub connected: bool,
    pub socket_path: String,
    /// The agent's package version, from the last handshake.
    pub agent_version: Option<String>,
    /// The agent's user, groups and capability sets, from the last handshake.
    pub capabilities: Option<AgentCapabilities>,
    /// The last connection or handshake error.
    pub last_error: Option<String>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// One open connection: frames go out through `tx`; answers come back to `pending`.
struct Connection {
    tx: mpsc::UnboundedSender<RequestFrame>,
    pending: Pending,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

struct State {
    connection: Option<Arc<Connection>>,
    /// Earliest time of the next connection attempt after a failure, and the delay after it.
    retry_at: Option<Instant>,
    delay: Duration,
}

/// Client of the ops agent, shared by all requests.
pub struct AgentClient {
    socket: PathBuf,
    /// What to do when nothing listens on the socket (it differs in development).
    start_hint: &'static str,
    timeout: Duration,
    next_id: AtomicU64,
    state: tokio::sync::Mutex<State>,
    status: Mutex<AgentStatus>,
    /// The last answer of [`AgentClient::is_up`], and when it was found.
    probed: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// How long [`AgentClient::is_up`] waits for an answer, and how long it keeps one.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const PROBE_MAX_AGE: Duration = Duration::from_secs(5);

impl AgentClient {
    /// A client of the agent on `config.socket_path`; `start_hint` says how to start an agent
    /// that is not running.
    pub fn new(config: &OpsAgentConfig, start_hint: &'static str) -> AgentClient {
        AgentClient {
            socket: config.socket_path.clone(),
            start_hint,
            timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
            next_id: AtomicU64::new(1),
            state: tokio::sync::Mutex::new(State { connection: None, retry_at: None, delay: FIRST_RETRY }),
            status: Mutex::new(AgentStatus {
                socket_path: config.socket_path.display().to_string(),
                ..AgentStatus::default()
            }),
            probed: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether the agent answers a request (its capabilities, which cost it nothing) within
    /// half a second, for monitoring. The answer is kept for five seconds: scrapes never
    /// wait long on a stuck agent, nor ask a healthy one more often than that. Concurrent
    /// callers share one check.
    pub async fn is_up(&self) -> bool {
        let mut probed = self.probed.lock().await;
        if let Some((at, up)) = *probed {
            if at.elapsed() < PROBE_MAX_AGE {
                return up;
            }
        }
        let asked = self.call_with_timeout(Request::GetCapabilities, PROBE_TIMEOUT);
        let up = matches!(tokio::time::timeout(PROBE_TIMEOUT, asked).await, Ok(Ok(_)));
        *probed = Some((Instant::now(), up));
        up
    }

    /// What is known about the agent, without contacting it.
    pub fn status(&self) -> AgentStatus {
        let mut s = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        if s.connected && self.state.try_lock().is_ok_and(|st| st.connection.as_ref().is_none_or(|c| !c.is_alive())) {
            s.connected = false;
        }
        s
    }

    /// Connects if needed (reporting what the agent said), so status reflects the agent now.
    pub async fn refresh(&self) -> AgentStatus {
        let _ = self.connection().await;
        self.status()
    }

    /// Sends one request and waits for its answer (at most `request_timeout_ms`).
    pub async fn call(&self, request: Request) -> Result<Response, AgentError> {
        self.call_with_timeout(request, self.timeout).await
    }

    /// Sends one request that may take up to `timeout` (installing a release).
    pub async fn call_with_timeout(&self, request: Request, timeout: Duration) -> Result<Response, AgentError> {
        let conn = self.connection().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = conn.pending.lock() {
            p.insert(id, tx);
        }
        let frame = RequestFrame::with_timeout(id, request, timeout);
        if conn.tx.send(frame).is_err() {
            self.forget(&conn);
            return Err(AgentError::Unavailable("the connection to the agent closed".into()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Response::Error { code, message })) => Err(AgentError::Remote { code, message }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(AgentError::Unavailable("the agent closed the connection before answering".into())),
            Err(_) => {
                if let Ok(mut p) = conn.pending.lock() {
                    p.remove(&id);
                }
                Err(AgentError::Timeout(timeout))
            }
        }
    }

    fn forget(&self, conn: &Arc<Connection>) {
        conn.alive.store(false, Ordering::Relaxed);
        if let Ok(mut s) = self.status.lock() {
            s.connected = false;
        }
    }

    /// The live connection, or a new one unless a recent failure says to wait.
    async fn connection(&self) -> Result<Arc<Connection>, AgentError> {
        let mut state = self.state.lock().await;
        if let Some(c) = &state.connection {
            if c.is_alive() {
                return Ok(c.clone());
            }
            state.connection = None;
        }
        if let Some(at) = state.retry_at {
            if Instant::now() < at {
                let last = self.status().last_error.unwrap_or_else(|| "not connected".into());
                return Err(AgentError::Unavailable(format!(
                    "{last} (next attempt in {} ms)",
                    at.saturating_duration_since(Instant::now()).as_millis()
                )));
            }
        }
        match tokio::time::timeout(self.timeout, self.connect()).await.unwrap_or(Err(AgentError::Timeout(self.timeout)))
        {
            Ok((conn, version, capabilities)) => {
                state.connection = Some(conn.clone());
                state.retry_at = None;
                state.delay = FIRST_RETRY;
                if let Ok(mut s) = self.status.lock() {
                    s.connected = true;
                    s.agent_version = Some(version);
                    s.capabilities = Some(capabilities);
                    s.last_error = None;
                }
                log::info!("connected to the ops agent at {}", self.socket.display());
                Ok(conn)
            }
            Err(e) => {
                state.retry_at = Some(Instant::now() + state.delay);
                state.delay = (state.delay * 2).min(MAX_RETRY);
                if let Ok(mut s) = self.status.lock() {
                    s.connected = false;
                    s.last_error = Some(e.detail());
                }
                log::warn!("{e}");
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<(Arc<Connection>, String, AgentCapabilities), AgentError> {
        let path = &self.socket;
        let mut stream = UnixStream::connect(path).await.map_err(|e| {
            AgentError::Unavailable(match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                    "raspi-ops-agent is not running (nothing listens on {}); privileged tools need it: {}",
                    path.display(),
                    self.start_hint
                ),
                std::io::ErrorKind::PermissionDenied => {
                    format!("permission denied on {}: the server's user must be in the socket's group", path.display())
                }
                _ => format!("cannot connect to {}: {e}", path.display()),
            })
        })?;
        let hello = RequestFrame::with_timeout(0, Request::hello(), self.timeout);
        ipc::write_frame(&mut stream, &hello).await.map_err(|e| AgentError::Unavailable(e.to_string()))?;
        let answer: Option<ResponseFrame> =
            ipc::read_frame(&mut stream).await.map_err(|e| AgentError::Protocol(e.to_string()))?;
        let (version, capabilities) = match answer.map(|f| f.response) {
            Some(Response::Hello { package_version, ipc_version, capabilities }) => {
                ipc::check_compatible(crate::base::VERSION, ipc::IPC_VERSION, &package_version, &ipc_version)
                    .map_err(AgentError::VersionMismatch)?;
                (package_version, capabilities)
            }
            Some(Response::Error { code: ErrorCode::VersionMismatch, message }) => {
                return Err(AgentError::VersionMismatch(message))
            }
            Some(Response::Error { message, .. }) => return Err(AgentError::Unavailable(message)),
            Some(other) => return Err(AgentError::Protocol(format!("handshake answered with {}", other.kind()))),
            None => return Err(AgentError::Unavailable("the agent closed the connection during the handshake".into())),
        };
        let (mut reader, mut writer) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (tx, mut rx) = mpsc::unbounded_channel::<RequestFrame>();
        let writer_alive = alive.clone();
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if let Err(e) = ipc::write_frame(&mut writer, &frame).await {
                    log::warn!("writing to the ops agent failed: {e}");
                    break;
                }
            }
            writer_alive.store(false, Ordering::Relaxed);
        });
        let reader_pending = pending.clone();
        let reader_alive = alive.clone();
        tokio::spawn(async move {
            loop {
                match ipc::read_frame::<_, ResponseFrame>(&mut reader).await {
                    Ok(Some(frame)) => {
                        let waiter = reader_pending.lock().ok().and_then(|mut p| p.remove(&frame.id));
                        if let Some(w) = waiter {
                            let _ = w.send(frame.response);
                        }
                    }
                    Ok(None) => {
                        log::warn!("the ops agent closed the connection");
                        break;
                    }
                    Err(e) => {
                        log::warn!("reading from the ops agent failed: {e}");
                        break;
                    }
                }
            }
            reader_alive.store(false, Ordering::Relaxed);
            // Dropping the senders wakes every waiter with an error at once.
            if let Ok(mut p) = reader_pending.lock() {
                p.clear();
            }
        });
        Ok((Arc::new(Connection { tx, pending, alive }), version, capabilities))
    }
}

impl Connection {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}
