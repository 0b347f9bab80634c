//! Fetching a release manifest and a package over HTTP(S) for the self-update.
//!
//! Two operations, both bounded in size and time because their input comes from the network:
//!
//! - [`Fetcher::fetch_small`] reads a small document (the manifest and its signature) into
//!   memory and gives up as soon as it grows past a cap, whatever `Content-Length` claimed;
//! - [`Fetcher::download`] streams a package to `<dest>.part`, resumes an earlier partial file
//!   with a `Range` request, stops the moment the server sends more than the manifest's size,
//!   checks the SHA-256 of the whole file and only then renames it to `dest`. A file named
//!   `dest` is therefore always complete and verified; a `.part` is kept only when it can
//!   still be the prefix of the right file (a transfer cut short), and removed when it
//!   cannot (too long, wrong digest).
//!
//! Only `http` and `https` URLs are fetched, redirects stay on those schemes (never from
//! https down to http) and are limited to a few. TLS uses rustls with the system's CA
//! certificates. The client is built on first use rather than at construction: building it
//! loads the certificates, and a machine without them should fail the update with an error
//! naming the `ca-certificates` package, not fail to start the service. A proxy is taken from
//! the usual environment variables (`https_proxy`, `http_proxy`, `no_proxy`), as curl and apt
//! do.
//!
//! # Layout
//!
//! This file holds the settings, [`Progress`] and [`DownloadError`]; `fetcher` holds the
//! [`Fetcher`] and all that speaks HTTP, `part` the partial file a download writes to.

mod fetcher;
mod part;

#[cfg(test)]
mod tests;

/// The builder of every HTTP client of the programs (downloads, key sets, the CLI's calls to
/// the server). rustls is built with ring rather than its default library, aws-lc, which
/// would add about a megabyte of code to each program; ring must therefore be installed as
/// the process's provider before the first client is built.
pub fn http_client() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Only fails when a provider is already installed, which can only be this one.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
}

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;

pub use self::fetcher::Fetcher;

/// Timeouts and identity of the HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    /// Longest wait for a TCP connection (per address tried by the resolver's answer).
    pub connect_timeout: Duration,
    /// Longest wait without receiving a single byte, for the response headers and between
    /// parts of the body.
    pub read_timeout: Duration,
    /// Longest a whole request may take, headers and body; `None` for no limit, which suits
    /// slow links where only the idle timeout makes sense.
    pub total_timeout: Option<Duration>,
    /// The `User-Agent` header sent with every request.
    pub user_agent: String,
}

impl Default for FetchSettings {
    fn default() -> Self {
        FetchSettings {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            total_timeout: None,
            user_agent: concat!("mcp-raspi/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// How far a download is: `done` of `total` bytes are in the partial file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes received so far, a resumed prefix included.
    pub done: u64,
    /// The size the manifest announces.
    pub total: u64,
}

/// Why a fetch or a download failed. Each message names the URL (or file) and says what to
/// do where there is something to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum DownloadError {
    /// The URL does not parse.
    InvalidUrl { url: String, reason: String },
    /// The URL's scheme is neither `http` nor `https`.
    UnsupportedScheme { url: String, scheme: String },
    /// The configured `User-Agent` cannot be sent as a header.
    InvalidUserAgent { user_agent: String },
    /// The HTTP client could not be built; with rustls this means that no CA certificate
    /// could be loaded from the system.
    TlsSetup { detail: String },
    /// No connection could be made: refused, name not resolved, TLS handshake or certificate
    /// rejected.
    Connect { url: String, detail: String },
    /// The connection was not established within the connect timeout.
    ConnectTimeout { url: String, timeout: Duration },
    /// Nothing arrived for the read timeout, while waiting for the headers or in the body.
    ReadTimeout { url: String, timeout: Duration },
    /// The whole request took longer than the total timeout.
    TotalTimeout { url: String, timeout: Duration },
    /// A redirect was refused: to another scheme, from https to http, or too many of them.
    Redirect { url: String, reason: String },
    /// The server answered with a status other than the expected success.
    Status { url: String, status: StatusCode },
    /// The connection broke before a complete answer arrived.
    Interrupted { url: String, detail: String },
    /// A small document is larger than its cap. `announced` is the `Content-Length` when
    /// that is what gave it away before any byte of the body was read.
    TooLarge { url: String, limit: u64, announced: Option<u64> },
    /// The server sent more bytes than the manifest's size; the partial file was removed.
    Oversized { url: String, expected: u64 },
    /// The server announced (in `Content-Length` or `Content-Range`) a size other than the
    /// manifest's: it does not serve the file the manifest describes.
    SizeMismatch { url: String, announced: u64, expected: u64 },
    /// The body ended before the manifest's size; the partial file is kept for a resume.
    Truncated { url: String, got: u64, expected: u64, detail: Option<String> },
    /// The file's SHA-256 differs from the manifest's; the partial file was removed.
    ChecksumMismatch { url: String, expected: String, actual: String },
    /// A local file operation failed.
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

impl DownloadError {
    /// Whether trying the same request again later may succeed: timeouts, a transfer cut
    /// short (a download then resumes where it stopped), and server-side failures (5xx, 408
    /// Request Timeout, 429 Too Many Requests). Refused connections, 4xx, wrong sizes and
    /// digests need a person or a new release, not another try.
    pub fn is_retryable(&self) -> bool {
        match self {
            DownloadError::ConnectTimeout { .. }
            | DownloadError::ReadTimeout { .. }
            | DownloadError::TotalTimeout { .. }
            | DownloadError::Interrupted { .. }
            | DownloadError::Truncated { .. } => true,
            DownloadError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
            DownloadError::InvalidUrl { .. }
            | DownloadError::UnsupportedScheme { .. }
            | DownloadError::InvalidUserAgent { .. }
            | DownloadError::TlsSetup { .. }
            | DownloadError::Connect { .. }
            | DownloadError::Redirect { .. }
            | DownloadError::TooLarge { .. }
            | DownloadError::Oversized { .. }
            | DownloadError::SizeMismatch { .. }
            | DownloadError::ChecksumMismatch { .. }
            | DownloadError::Io { .. } => false,
        }
    }
}

impl fmt::Display for DownloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownloadError::InvalidUrl { url, reason } => write!(f, "invalid URL {url:?}: {reason}"),
            DownloadError::UnsupportedScheme { url, scheme } => {
                write!(f, "refusing to fetch {url}: scheme {scheme:?} is not supported, use an http or https URL")
            }
            DownloadError::InvalidUserAgent { user_agent } => {
                write!(f, "the user agent {user_agent:?} cannot be sent in an HTTP header (printable ASCII only)")
            }
            DownloadError::TlsSetup { detail } => write!(
                f,
                "cannot set up the HTTPS client: {detail}; the system's CA certificates are needed to verify \
                 servers: install the ca-certificates package"
            ),
            DownloadError::Connect { url, detail } => write!(f, "cannot connect for {url}: {detail}"),
            DownloadError::ConnectTimeout { url, timeout } => {
                write!(
                    f,
                    "no connection for {url} within the connect timeout of {}",
                    humantime::format_duration(*timeout)
                )
            }
            DownloadError::ReadTimeout { url, timeout } => write!(
                f,
                "{url}: nothing received for {} (read timeout); the server or the network stalled, try again later",
                humantime::format_duration(*timeout)
            ),
            DownloadError::TotalTimeout { url, timeout } => write!(
                f,
                "{url}: not finished within the total timeout of {}; try again later or raise the timeout",
                humantime::format_duration(*timeout)
            ),
            DownloadError::Redirect { url, reason } => write!(f, "{url}: {reason}"),
            DownloadError::Status { url, status } => {
                write!(f, "{url}: the server answered {status}")?;
                if status.is_server_error() {
                    write!(f, "; the server failed, try again later")
                } else if *status == StatusCode::NOT_FOUND {
                    write!(f, "; check the release URL")
                } else {
                    Ok(())
                }
            }
            DownloadError::Interrupted { url, detail } => {
                write!(f, "{url}: the connection broke: {detail}; try again later")
            }
            DownloadError::TooLarge { url, limit, announced: Some(announced) } => {
                write!(f, "{url}: the server announces {announced} bytes, more than the {limit} allowed")
            }
            DownloadError::TooLarge { url, limit, announced: None } => {
                write!(f, "{url}: the server sent more than the {limit} bytes allowed")
            }
            DownloadError::Oversized { url, expected } => write!(
                f,
                "{url}: the server sent more than the manifest's {expected} bytes; it does not serve the file \
                 the manifest describes, the partial file was removed"
            ),
            DownloadError::SizeMismatch { url, announced, expected } => write!(
                f,
                "{url}: the server announces {announced} bytes but the manifest says {expected}; it does not \
                 serve the file the manifest describes"
            ),
            DownloadError::Truncated { url, got, expected, detail } => {
                write!(f, "{url}: truncated: got {got} of {expected} bytes")?;
                if let Some(detail) = detail {
                    write!(f, " ({detail})")?;
                }
                write!(f, "; the partial file is kept and the next attempt resumes it")
            }
            DownloadError::ChecksumMismatch { url, expected, actual } => write!(
                f,
                "{url}: SHA-256 mismatch: the manifest says {expected}, the file has {actual}; the file was removed"
            ),
            DownloadError::Io { action, path, source } => {
                write!(f, "cannot {action} {}: {source}", path.display())
            }
        }
    }
}

impl StdError for DownloadError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            DownloadError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> DownloadError {
    DownloadError::Io { action, path: path.to_owned(), source }
}
