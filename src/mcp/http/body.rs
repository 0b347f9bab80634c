//! Bodies in and out: a request's body read within its limit, and a request's messages
//! streamed back as server-sent events for as long as its client listens.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::AbortHandle;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use warp::http::HeaderValue;

use super::Reply;
use crate::mcp::{Outgoing, Session};

/// Aborts a request's task when the client goes away before it finishes.
pub(super) struct AbortOnDrop(pub(super) AbortHandle);

/// Removes a request from its session's table of running requests.
pub(super) struct Untrack(pub(super) Arc<Session>, pub(super) String);

impl Drop for Untrack {
    fn drop(&mut self) {
        self.0.untrack(&self.1);
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Streams a request's notifications and then its response as server-sent events.
/// `guards` live as long as the stream: dropping it (the client went away) aborts the
/// request and untracks it.
pub(super) fn sse_reply<G: Send + Sync + 'static>(rx: mpsc::UnboundedReceiver<Outgoing>, guards: G) -> Reply {
    let events = futures_util::stream::unfold((rx, Some(guards)), |(mut rx, guards)| async move {
        guards.as_ref()?;
        let msg = rx.recv().await?;
        // The response is the last event: end the stream after it.
        let last = matches!(msg, Outgoing::Response(_));
        let event = warp::sse::Event::default().event("message").data(msg.into_json().into_string());
        Some((Ok::<_, Infallible>(event), (rx, if last { None } else { guards })))
    });
    let mut r = warp::reply::Reply::into_response(warp::sse::reply(events));
    r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

pub(super) type BodyStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, warp::Error>> + Send>>;

pub(super) enum ReadError {
    TooLarge,
    Broken(String),
}

/// Reads the body, refusing more than `limit` bytes. A body that arrives in one chunk, as
/// small ones do, is returned as it came, without a copy.
pub(super) async fn read_limited(mut body: BodyStream, limit: usize) -> Result<Bytes, ReadError> {
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut len = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ReadError::Broken(e.to_string()))?;
        len += chunk.len();
        if len > limit {
            return Err(ReadError::TooLarge);
        }
        // From the second chunk on, the chunks are joined.
        if let Some(earlier) = first.take() {
            joined.extend_from_slice(&earlier);
        }
        if joined.is_empty() {
            first = Some(chunk);
        } else {
            joined.extend_from_slice(&chunk);
        }
    }
    Ok(first.unwrap_or_else(|| joined.freeze()))
}
