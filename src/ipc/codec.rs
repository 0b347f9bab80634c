//! Framing for the agent socket: a big-endian `u32` byte count, then that many bytes of
//! JSON. A stream socket has no message boundaries of its own, and a length prefix lets
//! the reader refuse an oversized frame before it allocates or reads a byte of it.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::MAX_FRAME_BYTES;

/// Why a frame could not be written or read.
#[derive(Debug)]
pub enum FrameError {
    /// The socket itself failed.
    Io(std::io::Error),
    /// The frame's length is over the limit; nothing of its body was read or written.
    TooLarge { len: usize, max: usize },
    /// The peer closed the connection in the middle of a frame.
    Truncated,
    /// The frame is not JSON of the expected shape (or is empty).
    Malformed(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "the agent socket failed: {e}"),
            FrameError::TooLarge { len, max } => {
                write!(f, "a frame of {len} bytes is over the limit of {max} bytes; it was not sent or read")
            }
            FrameError::Truncated => f.write_str("the other side closed the connection in the middle of a frame"),
            FrameError::Malformed(m) => write!(f, "a frame did not hold a valid message: {m}"),
        }
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> FrameError {
        FrameError::Io(e)
    }
}

/// Writes `value` as one frame and flushes. A value whose JSON is over
/// [`MAX_FRAME_BYTES`] is refused before anything is written, so the stream stays usable.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, value: &T) -> Result<(), FrameError> {
    let body = serde_json::to_vec(value).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|_| body.len() <= MAX_FRAME_BYTES)
        .ok_or(FrameError::TooLarge { len: body.len(), max: MAX_FRAME_BYTES })?;
    // One buffer, one write: a prefix and body written separately could reach the peer as
    // two segments and cost it an extra wake-up for every frame.
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame and parses it as `T`. `Ok(None)` means the peer closed the connection
/// cleanly between frames; a close anywhere inside a frame is [`FrameError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match r.read(&mut prefix[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => filled += n,
        }
    }
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len == 0 {
        return Err(FrameError::Malformed("the frame is empty (length 0)".to_string()));
    }
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_BYTES });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    parse(&body).map(Some)
}

/// One frame as read by a side that answers a bad frame and carries on ([`read_or_skip`]).
#[derive(Debug)]
pub enum Read<T> {
    /// A valid message.
    Frame(T),
    /// A whole frame that is not a valid message (or is over the limit and was read past):
    /// the `id` it names, when it names one, and why it was refused.
    Bad { id: Option<u64>, error: FrameError },
    /// The peer closed the connection cleanly between frames.
    Closed,
}

/// Reads one frame for a peer that may send a bad one among good ones: a frame that does not
/// parse is reported with the id it names, one over the limit is read and thrown away, so the
/// stream stays in step and the other requests on it are unaffected. Only a socket error or
/// a close inside a frame is an `Err`.
pub async fn read_or_skip<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<Read<T>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match r.read(&mut prefix[filled..]).await? {
            0 if filled == 0 => return Ok(Read::Closed),
            0 => return Err(FrameError::Truncated),
            n => filled += n,
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Ok(Read::Bad { id: None, error: FrameError::Malformed("the frame is empty (length 0)".into()) });
    }
    if len > MAX_FRAME_BYTES {
        let skipped = tokio::io::copy(&mut (&mut *r).take(len as u64), &mut tokio::io::sink()).await?;
        if skipped < len as u64 {
            return Err(FrameError::Truncated);
        }
        return Ok(Read::Bad { id: None, error: FrameError::TooLarge { len, max: MAX_FRAME_BYTES } });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(match parse(&body) {
        Ok(value) => Read::Frame(value),
        Err(error) => {
            let id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
            Read::Bad { id, error }
        }
    })
}

/// Parses a frame body, naming where in the JSON it went wrong.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            FrameError::Malformed(e.into_inner().to_string())
        } else {
            FrameError::Malformed(format!("at {path}: {}", e.into_inner()))
        }
    })?;
    // Anything after the value means the two sides disagree about framing.
    de.end().map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(value)
}
