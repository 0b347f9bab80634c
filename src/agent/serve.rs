//! The agent's socket: accepting peers, the handshake, and answering requests.
//!
//! Each allowed peer gets one connection on which requests are answered concurrently, in
//! whatever order they finish. The connection survives anything one request does wrong: a
//! frame that does not parse is answered with an error for that request (an oversized one is
//! read past), and an answer too large for a frame becomes an error answer. A peer must say
//! hello within [`HELLO_TIMEOUT`]; accept errors (such as running out of file descriptors)
//! pause accepting, longer each time, and are logged at a bounded rate.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::AgentState;
use crate::base::VERSION;
use crate::ipc::{self, ErrorCode, FrameError, Read, Request, RequestFrame, Response, ResponseFrame};
use crate::logs::Throttled;

/// How long a peer may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause after an accept error.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// At most one warning per this interval for each kind of trouble.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` completes; each is served concurrently.
pub async fn serve(
    state: Arc<AgentState>,
    listener: UnixListener,
    allowed_uids: Vec<u32>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut accept_errors = Throttled::new(WARN_EVERY);
    let mut refusals = Throttled::new(WARN_EVERY);
    let mut pause = Duration::from_millis(10);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    pause = Duration::from_millis(10);
                    stream
                }
                Err(e) => {
                    // Out of file descriptors, most likely: accepting again at once would
                    // fail again at once. Pause, longer each time, until one is closed.
                    accept_errors.warn(|| format!("accept failed: {e}; pausing {} ms", pause.as_millis()));
                    tokio::select! {
                        _ = &mut shutdown => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(MAX_ACCEPT_PAUSE);
                    continue;
                }
            },
        };
        let peer = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                refusals.warn(|| format!("refused a connection: cannot read its credentials: {e}"));
                continue;
            }
        };
        if !allowed_uids.contains(&peer.uid()) {
            refusals.warn(|| {
                format!(
                    "refused a connection from uid {} (pid {:?}): not on ops_agent.allowed_users",
                    peer.uid(),
                    peer.pid()
                )
            });
            continue;
        }
        log::debug!("connection from uid {} (pid {:?})", peer.uid(), peer.pid());
        tokio::spawn(connection(state.clone(), stream, peer.uid()));
    }
}

/// Writes the answers of one connection as they come. An answer too large for a frame is
/// not written (so the stream stays in step) and the request gets an error answer instead;
/// any other write failure ends the connection.
async fn send_answers<W: tokio::io::AsyncWrite + Unpin>(
    mut writer: W,
    mut answers: mpsc::UnboundedReceiver<ResponseFrame>,
    uid: u32,
) {
    while let Some(frame) = answers.recv().await {
        let id = frame.id;
        match ipc::write_frame(&mut writer, &frame).await {
            Ok(()) => {}
            Err(FrameError::TooLarge { len, max }) => {
                log::warn!("uid {uid}: request {id}: its answer of {len} bytes is over the frame limit");
                let error = Response::Error {
                    code: ErrorCode::Failed,
                    message: format!(
                        "the answer ({len} bytes) is over the agent socket's limit of {max} bytes: ask for less \
                         (a lower limit, a shorter time range)"
                    ),
                };
                if ipc::write_frame(&mut writer, &ResponseFrame { id, response: error }).await.is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
}

async fn connection(state: Arc<AgentState>, stream: UnixStream, uid: u32) {
    let (mut reader, mut writer) = stream.into_split();
    let hello: Option<RequestFrame> = match tokio::time::timeout(HELLO_TIMEOUT, ipc::read_frame(&mut reader)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            log::warn!("uid {uid}: bad first frame: {e}");
            return;
        }
        Err(_) => {
            log::warn!("uid {uid}: closing a connection that sent no hello within {} s", HELLO_TIMEOUT.as_secs());
            return;
        }
    };
    let Some(hello) = hello else { return };
    let answer = match &hello.request {
        Request::Hello { package_version, ipc_version } => {
            match ipc::check_compatible(VERSION, ipc::IPC_VERSION, package_version, ipc_version) {
                Ok(()) => Response::Hello {
                    package_version: VERSION.into(),
                    ipc_version: ipc::IPC_VERSION.into(),
                    capabilities: state.capabilities.clone(),
                },
                Err(message) => {
                    log::warn!("uid {uid}: {message}");
                    Response::Error { code: ErrorCode::VersionMismatch, message }
                }
            }
        }
        other => Response::Error {
            code: ErrorCode::BadRequest,
            message: format!("the first request must be hello, not {}", other.name()),
        },
    };
    let refused = matches!(answer, Response::Error { .. });
    if ipc::write_frame(&mut writer, &ResponseFrame { id: hello.id, response: answer }).await.is_err() || refused {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel::<ResponseFrame>();
    let write_task = tokio::spawn(send_answers(writer, rx, uid));
    loop {
        let frame: RequestFrame = match ipc::read_or_skip(&mut reader).await {
            Ok(Read::Frame(f)) => f,
            Ok(Read::Closed) => break,
            Ok(Read::Bad { id, error }) => {
                log::warn!(
                    "uid {uid}: refused a bad request{}: {error}",
                    id.map(|i| format!(" {i}")).unwrap_or_default()
                );
                if let Some(id) = id {
                    let response = Response::Error { code: ErrorCode::BadRequest, message: error.to_string() };
                    let _ = tx.send(ResponseFrame { id, response });
                }
                continue;
            }
            Err(e) => {
                log::warn!("uid {uid}: closing the connection: {e}");
                break;
            }
        };
        let state = state.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let id = frame.id;
            log::debug!("uid {uid}: request {id}: {}", frame.request.as_safe_string());
            let response = match frame.time_left() {
                None => Response::Error { code: ErrorCode::Timeout, message: "the request's deadline passed".into() },
                Some(left) => {
                    let request = frame.request;
                    let work = tokio::task::spawn_blocking(move || state.execute(request));
                    match tokio::time::timeout(left, work).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => {
                            Response::Error { code: ErrorCode::Failed, message: format!("the operation failed: {e}") }
                        }
                        Err(_) => Response::Error {
                            code: ErrorCode::Timeout,
                            message: format!("the operation did not finish within {} ms", left.as_millis()),
                        },
                    }
                }
            };
            if let Response::Error { code, message } = &response {
                log::info!("uid {uid}: request {id} refused or failed ({}): {message}", code.as_str());
            }
            let _ = tx.send(ResponseFrame { id, response });
        });
    }
    drop(tx);
    let _ = write_task.await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn an_answer_over_the_frame_limit_becomes_an_error_and_the_next_one_still_goes() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(send_answers(ours, rx, 1000));
        let huge = "x".repeat(ipc::MAX_FRAME_BYTES + 1);
        tx.send(ResponseFrame { id: 1, response: Response::Error { code: ErrorCode::Failed, message: huge } }).unwrap();
        tx.send(ResponseFrame { id: 2, response: Response::Addresses { addresses: vec![0x48] } }).unwrap();
        drop(tx);
        let mut theirs = theirs;
        let first: ResponseFrame = ipc::read_frame(&mut theirs).await.unwrap().unwrap();
        assert_eq!(first.id, 1);
        match first.response {
            Response::Error { code: ErrorCode::Failed, message } => {
                assert!(message.contains("over the agent socket's limit"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let second: ResponseFrame = ipc::read_frame(&mut theirs).await.unwrap().unwrap();
        assert_eq!((second.id, second.response), (2, Response::Addresses { addresses: vec![0x48] }));
        writer.await.unwrap();
    }
}
