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

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderValue, CONTENT_RANGE, LOCATION, RANGE};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufWriter};
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// Most redirects followed for one request; release hosting needs one or two.
const MAX_REDIRECTS: usize = 5;
/// Progress is reported each time at least this many more bytes have arrived.
const PROGRESS_STEP: u64 = 64 * 1024;
/// Appended to the destination's name for the file being downloaded.
const PART_SUFFIX: &str = ".part";
/// The partial file holds an unverified package: readable by the group, not by everyone.
const PART_MODE: u32 = 0o640;
/// Write buffer in front of the partial file, so that small network chunks do not each cost a
/// write system call.
const WRITE_BUFFER: usize = 64 * 1024;
/// Read size when hashing the prefix of a resumed file.
const HASH_BUFFER: usize = 64 * 1024;

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

/// Carries the reason of a refused redirect through reqwest's error, to be found again by
/// [`redirect_refusal`].
#[derive(Debug)]
struct RedirectRefused(String);

impl fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for RedirectRefused {}

/// An HTTP(S) client for release files. Cheap to keep around; connections are reused.
pub struct Fetcher {
    settings: FetchSettings,
    client: OnceCell<reqwest::Client>,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher with these settings. Nothing is checked or loaded yet: the client is built
    /// by the first request, and a failure to build it is that request's error (a later
    /// request tries again, after the CA certificates have been installed for example).
    pub fn new(settings: FetchSettings) -> Fetcher {
        Fetcher { settings, client: OnceCell::new() }
    }

    /// The settings this fetcher was made with.
    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// Fetches a small document (a manifest, a signature) into memory. Fails with
    /// [`DownloadError::TooLarge`] as soon as more than `max_bytes` arrive, or before reading
    /// the body when `Content-Length` already says so; any status but 2xx is an error.
    pub async fn fetch_small(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, DownloadError> {
        let parsed = parse_url(url)?;
        let client = self.client().await?;
        let deadline = self.deadline();
        let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX);

        let mut response =
            self.within(deadline, url, client.get(parsed).send()).await?.map_err(|e| self.request_error(url, e))?;
        if !response.status().is_success() {
            return Err(unexpected_status(url, &response));
        }
        if let Some(announced) = response.content_length().filter(|&len| len > limit) {
            return Err(DownloadError::TooLarge { url: url.to_owned(), limit, announced: Some(announced) });
        }

        let mut body = Vec::new();
        loop {
            match self.within(deadline, url, response.chunk()).await? {
                Ok(Some(chunk)) => {
                    if body.len().saturating_add(chunk.len()) > max_bytes {
                        return Err(DownloadError::TooLarge { url: url.to_owned(), limit, announced: None });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) if e.is_timeout() => return Err(self.read_timeout(url)),
                Err(e) => return Err(DownloadError::Interrupted { url: url.to_owned(), detail: error_chain(&e) }),
            }
        }
    }

    /// Downloads `url` to `dest`, which must hold exactly `expected_size` bytes whose SHA-256
    /// is `expected_sha256` (both from the signed manifest).
    ///
    /// The bytes go to `dest` + `.part` (created with mode 0640); an existing `.part` is
    /// resumed with a `Range` request. The server may answer 206 with the matching
    /// `Content-Range` (continue), 200 (start again from zero) or 416 (the `.part` is dropped
    /// and the request made once more without a range). Only a complete file with the right
    /// digest is renamed to `dest`, after it and then its directory are synced to disk.
    ///
    /// `progress` is called every 64 KiB or so and once at the end.
    pub async fn download(
        &self,
        url: &str,
        dest: &Path,
        expected_size: u64,
        expected_sha256: [u8; 32],
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<(), DownloadError> {
        let parsed = parse_url(url)?;
        let client = self.client().await?;
        let deadline = self.deadline();
        let mut part = PartFile::open(part_path(dest)).await?;

        // A previous attempt may have left a prefix (resume it), too much (it cannot be right)
        // or everything, when it stopped between the last byte and the rename.
        if part.len > expected_size {
            part.restart().await?;
        } else if part.len > 0 {
            part.hash_existing().await?;
            if part.len == expected_size {
                if part.hasher.clone().finalize().as_slice() == expected_sha256 {
                    progress(Progress { done: part.len, total: expected_size });
                    return part.finish(dest).await;
                }
                part.restart().await?;
            }
        }

        let mut response = self.open_response(client, &parsed, url, deadline, &mut part, expected_size).await?;

        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, part.file);
        let mut done = part.len;
        let mut reported = done;
        if done > 0 {
            progress(Progress { done, total: expected_size });
        }
        loop {
            let next = match self.within(deadline, url, response.chunk()).await {
                Ok(next) => next,
                Err(timeout) => {
                    // Keep what arrived for the next attempt's resume.
                    let _ = writer.flush().await;
                    return Err(timeout);
                }
            };
            match next {
                Ok(Some(chunk)) => {
                    let len = chunk.len() as u64;
                    if done.saturating_add(len) > expected_size {
                        drop(response);
                        drop(writer);
                        remove_quietly(&part.path).await;
                        return Err(DownloadError::Oversized { url: url.to_owned(), expected: expected_size });
                    }
                    part.hasher.update(&chunk);
                    writer.write_all(&chunk).await.map_err(|e| io_error("write", &part.path, e))?;
                    done += len;
                    if done - reported >= PROGRESS_STEP {
                        progress(Progress { done, total: expected_size });
                        reported = done;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = writer.flush().await;
                    if e.is_timeout() {
                        return Err(self.read_timeout(url));
                    }
                    let detail = Some(error_chain(&e));
                    return Err(DownloadError::Truncated {
                        url: url.to_owned(),
                        got: done,
                        expected: expected_size,
                        detail,
                    });
                }
            }
        }
        writer.flush().await.map_err(|e| io_error("write", &part.path, e))?;
        part.file = writer.into_inner();
        part.len = done;
        if done < expected_size {
            return Err(DownloadError::Truncated {
                url: url.to_owned(),
                got: done,
                expected: expected_size,
                detail: None,
            });
        }
        progress(Progress { done, total: expected_size });

        let actual = part.hasher.clone().finalize();
        if actual.as_slice() != expected_sha256 {
            remove_quietly(&part.path).await;
            return Err(DownloadError::ChecksumMismatch {
                url: url.to_owned(),
                expected: hex(&expected_sha256),
                actual: hex(&actual),
            });
        }
        part.finish(dest).await
    }

    /// Asks for the rest of the file after what `part` holds and returns the response whose
    /// body continues it: a 206 for the right range, or a 200 after `part` was emptied. A 416
    /// or a 206 for another range empties `part` and asks once more for the whole file.
    async fn open_response(
        &self,
        client: &reqwest::Client,
        parsed: &Url,
        url: &str,
        deadline: Option<Instant>,
        part: &mut PartFile,
        expected_size: u64,
    ) -> Result<reqwest::Response, DownloadError> {
        let mut may_restart = true;
        loop {
            let mut request = client.get(parsed.clone());
            if part.len > 0 {
                request = request.header(RANGE, format!("bytes={}-", part.len));
            }
            let response = self.within(deadline, url, request.send()).await?.map_err(|e| self.request_error(url, e))?;
            let status = response.status();
            if status == StatusCode::PARTIAL_CONTENT && part.len > 0 {
                match content_range(response.headers().get(CONTENT_RANGE)) {
                    Some((_, Some(total))) if total != expected_size => {
                        return Err(DownloadError::SizeMismatch {
                            url: url.to_owned(),
                            announced: total,
                            expected: expected_size,
                        });
                    }
                    Some((start, _)) if start == part.len => {
                        check_announced(url, response.content_length(), expected_size - part.len, expected_size)?;
                        return Ok(response);
                    }
                    // A range other than the one asked for: start again from zero, once.
                    _ if may_restart => {
                        may_restart = false;
                        part.restart().await?;
                    }
                    _ => return Err(unexpected_status(url, &response)),
                }
            } else if status == StatusCode::OK {
                // The whole file, whether or not a range was asked for (servers may ignore it).
                check_announced(url, response.content_length(), expected_size, expected_size)?;
                if part.len > 0 {
                    part.restart().await?;
                }
                return Ok(response);
            } else if status == StatusCode::RANGE_NOT_SATISFIABLE && part.len > 0 && may_restart {
                may_restart = false;
                part.restart().await?;
            } else {
                return Err(unexpected_status(url, &response));
            }
        }
    }

    /// The client, built on first use.
    async fn client(&self) -> Result<&reqwest::Client, DownloadError> {
        self.client.get_or_try_init(|| async { self.build_client() }).await
    }

    fn build_client(&self) -> Result<reqwest::Client, DownloadError> {
        // Checked here so that the only other way for the build to fail is TLS, whose error
        // can then name the package to install.
        let user_agent = HeaderValue::from_str(&self.settings.user_agent)
            .map_err(|_| DownloadError::InvalidUserAgent { user_agent: self.settings.user_agent.clone() })?;
        reqwest::Client::builder()
            .user_agent(user_agent)
            .connect_timeout(self.settings.connect_timeout)
            .read_timeout(self.settings.read_timeout)
            .redirect(redirect_policy())
            .build()
            .map_err(|e| DownloadError::TlsSetup { detail: error_chain(&e) })
    }

    fn deadline(&self) -> Option<Instant> {
        self.settings.total_timeout.map(|timeout| Instant::now() + timeout)
    }

    /// Runs one step of a request under the total deadline, if there is one. The deadline
    /// is checked around each step rather than around the whole request so that a download
    /// can save what it received before giving up.
    async fn within<T>(
        &self,
        deadline: Option<Instant>,
        url: &str,
        step: impl Future<Output = T>,
    ) -> Result<T, DownloadError> {
        match (deadline, self.settings.total_timeout) {
            (Some(deadline), Some(timeout)) => tokio::time::timeout_at(deadline, step)
                .await
                .map_err(|_| DownloadError::TotalTimeout { url: url.to_owned(), timeout }),
            _ => Ok(step.await),
        }
    }

    fn read_timeout(&self, url: &str) -> DownloadError {
        DownloadError::ReadTimeout { url: url.to_owned(), timeout: self.settings.read_timeout }
    }

    /// Classifies an error of sending a request (up to the response headers).
    fn request_error(&self, url: &str, err: reqwest::Error) -> DownloadError {
        if let Some(reason) = redirect_refusal(&err) {
            DownloadError::Redirect { url: url.to_owned(), reason }
        } else if err.is_timeout() && err.is_connect() {
            DownloadError::ConnectTimeout { url: url.to_owned(), timeout: self.settings.connect_timeout }
        } else if err.is_timeout() {
            self.read_timeout(url)
        } else if err.is_connect() {
            DownloadError::Connect { url: url.to_owned(), detail: error_chain(&err) }
        } else if err.is_redirect() {
            DownloadError::Redirect { url: url.to_owned(), reason: error_chain(&err) }
        } else {
            DownloadError::Interrupted { url: url.to_owned(), detail: error_chain(&err) }
        }
    }
}

/// The partial file of a download, with the digest of what it holds so far.
struct PartFile {
    path: PathBuf,
    file: File,
    /// Bytes in the file, which is positioned at its end.
    len: u64,
    /// SHA-256 of the file's first `len` bytes, once [`PartFile::hash_existing`] ran.
    hasher: Sha256,
}

impl PartFile {
    async fn open(path: PathBuf) -> Result<PartFile, DownloadError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PART_MODE)
            .open(&path)
            .await
            .map_err(|e| io_error("open", &path, e))?;
        let len = file.seek(SeekFrom::End(0)).await.map_err(|e| io_error("read", &path, e))?;
        Ok(PartFile { path, file, len, hasher: Sha256::new() })
    }

    /// Hashes the bytes already in the file, so that the final digest covers them; leaves
    /// the file positioned at its end.
    async fn hash_existing(&mut self) -> Result<(), DownloadError> {
        let read_error = |e| io_error("read", &self.path, e);
        self.file.seek(SeekFrom::Start(0)).await.map_err(read_error)?;
        let mut buffer = vec![0; HASH_BUFFER];
        let mut hashed = 0;
        while hashed < self.len {
            let n = self.file.read(&mut buffer).await.map_err(read_error)?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buffer[..n]);
            hashed += n as u64;
        }
        // Another writer could have changed the file meanwhile; trust what was hashed.
        self.len = self.file.seek(SeekFrom::Start(hashed)).await.map_err(read_error)?;
        Ok(())
    }

    /// Empties the file to download from the first byte.
    async fn restart(&mut self) -> Result<(), DownloadError> {
        self.file.set_len(0).await.map_err(|e| io_error("truncate", &self.path, e))?;
        self.file.seek(SeekFrom::Start(0)).await.map_err(|e| io_error("truncate", &self.path, e))?;
        self.len = 0;
        self.hasher = Sha256::new();
        Ok(())
    }

    /// Makes the verified file `dest`: synced to disk, renamed, and the rename synced, so that
    /// after a crash `dest` is either absent or complete.
    async fn finish(self, dest: &Path) -> Result<(), DownloadError> {
        self.file.sync_all().await.map_err(|e| io_error("sync", &self.path, e))?;
        drop(self.file);
        tokio::fs::rename(&self.path, dest).await.map_err(|e| io_error("rename into place", &self.path, e))?;
        let dir = match dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let dir_file = File::open(dir).await.map_err(|e| io_error("open directory", dir, e))?;
        dir_file.sync_all().await.map_err(|e| io_error("sync directory", dir, e))
    }
}

/// Parses a URL and accepts only http and https.
fn parse_url(url: &str) -> Result<Url, DownloadError> {
    let parsed =
        Url::parse(url).map_err(|e| DownloadError::InvalidUrl { url: url.to_owned(), reason: e.to_string() })?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        scheme => Err(DownloadError::UnsupportedScheme { url: url.to_owned(), scheme: scheme.to_owned() }),
    }
}

/// Follows at most [`MAX_REDIRECTS`] redirects, to http or https only, and never from https
/// down to http: a manifest fetched over TLS should not be steered off it.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        // `previous` starts with the URL first asked for, then each redirect's target.
        let refusal = if attempt.previous().len() > MAX_REDIRECTS {
            Some(format!("too many redirects (more than {MAX_REDIRECTS}), the last to {}", attempt.url()))
        } else if !matches!(attempt.url().scheme(), "http" | "https") {
            Some(format!("redirect to {} refused: only http and https are fetched", attempt.url()))
        } else if attempt.url().scheme() == "http" && attempt.previous().iter().any(|url| url.scheme() == "https") {
            Some(format!("redirect from https to {} refused", attempt.url()))
        } else {
            None
        };
        match refusal {
            Some(reason) => attempt.error(RedirectRefused(reason)),
            None => attempt.follow(),
        }
    })
}

/// The reason given by [`redirect_policy`], if that is what failed the request.
fn redirect_refusal(err: &reqwest::Error) -> Option<String> {
    let mut source = err.source();
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<RedirectRefused>() {
            return Some(refused.0.clone());
        }
        source = cause.source();
    }
    None
}

/// The error for a response that is not the success asked for. A redirect reaches here only
/// when it was not followed, because its `Location` is not an http or https URL.
fn unexpected_status(url: &str, response: &reqwest::Response) -> DownloadError {
    let status = response.status();
    if status.is_redirection() {
        if let Some(location) = response.headers().get(LOCATION) {
            let location = String::from_utf8_lossy(location.as_bytes());
            let reason = format!("redirect ({status}) to {location:?} refused: only http and https are fetched");
            return DownloadError::Redirect { url: url.to_owned(), reason };
        }
    }
    DownloadError::Status { url: url.to_owned(), status }
}

/// Refuses a response whose `Content-Length` already says the file is not the manifest's
/// (`remaining` is what should still come, `expected` the file's whole size).
fn check_announced(url: &str, content_length: Option<u64>, remaining: u64, expected: u64) -> Result<(), DownloadError> {
    match content_length {
        Some(len) if len != remaining => {
            Err(DownloadError::SizeMismatch { url: url.to_owned(), announced: len + (expected - remaining), expected })
        }
        _ => Ok(()),
    }
}

/// Parses `Content-Range: bytes START-END/TOTAL` into START and TOTAL (`None` for `*`).
fn content_range(value: Option<&HeaderValue>) -> Option<(u64, Option<u64>)> {
    let range = value?.to_str().ok()?.trim().strip_prefix("bytes ")?;
    let (span, total) = range.split_once('/')?;
    let (start, end) = span.trim().split_once('-')?;
    let start: u64 = start.parse().ok()?;
    let end: u64 = end.parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((start, total))
}

/// `dest` with [`PART_SUFFIX`] appended to its file name.
fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(PART_SUFFIX);
    PathBuf::from(name)
}

/// Removes a partial file that cannot be resumed; failing to is harmless, because the next
/// attempt checks whatever it finds.
async fn remove_quietly(path: &Path) {
    let _ = tokio::fs::remove_file(path).await;
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> DownloadError {
    DownloadError::Io { action, path: path.to_owned(), source }
}

/// The error's causes, joined, for a message. reqwest's own top line repeats the URL, which
/// the caller's message already names, so the causes are enough when there are some.
fn error_chain(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// What the test server was asked.
    #[derive(Debug, Clone)]
    struct Seen {
        path: String,
        range: Option<String>,
    }

    /// What the test server does on a connection, in order; it closes the connection after
    /// the last step (or as soon as a write fails because the client went away).
    enum Step {
        Send(Vec<u8>),
        /// Sends the bytes `chunk` at a time, pausing between chunks.
        Trickle {
            data: Vec<u8>,
            chunk: usize,
            pause: Duration,
        },
        Pause(Duration),
    }

    /// An HTTP/1.1 server on 127.0.0.1 whose answers are scripted byte for byte.
    struct Server {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
        /// Body and header bytes the kernel accepted from the server.
        sent: Arc<AtomicU64>,
        /// Connections the server is done with.
        finished: Arc<AtomicUsize>,
    }

    impl Server {
        async fn start(handler: impl Fn(&Seen) -> Vec<Step> + Send + Sync + 'static) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sent = Arc::new(AtomicU64::new(0));
            let finished = Arc::new(AtomicUsize::new(0));
            let handler = Arc::new(handler);
            let (seen2, sent2, finished2) = (seen.clone(), sent.clone(), finished.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (handler, seen, sent, finished) =
                        (handler.clone(), seen2.clone(), sent2.clone(), finished2.clone());
                    tokio::spawn(async move {
                        serve_one(stream, &*handler, &seen, &sent).await;
                        finished.fetch_add(1, Ordering::SeqCst);
                    });
                }
            });
            Server { addr, seen, sent, finished }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }

        /// Waits (boundedly) until the server is done with `n` connections.
        async fn wait_finished(&self, n: usize) {
            for _ in 0..500 {
                if self.finished.load(Ordering::SeqCst) >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the test server did not finish {n} connections");
        }
    }

    async fn serve_one(
        mut stream: TcpStream,
        handler: &(dyn Fn(&Seen) -> Vec<Step> + Send + Sync),
        seen: &Mutex<Vec<Seen>>,
        sent: &AtomicU64,
    ) {
        let _ = stream.set_nodelay(true);
        let mut head = Vec::new();
        let mut buffer = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 && head.len() < 16 * 1024 => head.extend_from_slice(&buffer[..n]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let range = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("range").then(|| value.trim().to_owned())
        });
        let request = Seen { path, range };
        seen.lock().unwrap().push(request.clone());
        for step in handler(&request) {
            match step {
                Step::Send(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                    sent.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                }
                Step::Trickle { data, chunk, pause } => {
                    for piece in data.chunks(chunk) {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                        sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
                        tokio::time::sleep(pause).await;
                    }
                }
                Step::Pause(duration) => tokio::time::sleep(duration).await,
            }
        }
        let _ = stream.shutdown().await;
    }

    /// A response head; every response closes its connection, so each request is a new one.
    fn head(status: &str, headers: &[(&str, String)]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn ok_with_length(body: &[u8]) -> Vec<Step> {
        let mut bytes = head("200 OK", &[("Content-Length", body.len().to_string())]);
        bytes.extend_from_slice(body);
        vec![Step::Send(bytes)]
    }

    /// Answers a `Range: bytes=N-` request with 206 and the rest, anything else with 200.
    fn honouring_range(body: &[u8], request: &Seen) -> Vec<Step> {
        let start = request.range.as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok());
        match start {
            Some(start) if start < body.len() => {
                let rest = &body[start..];
                let mut bytes = head(
                    "206 Partial Content",
                    &[
                        ("Content-Length", rest.len().to_string()),
                        ("Content-Range", format!("bytes {start}-{}/{}", body.len() - 1, body.len())),
                    ],
                );
                bytes.extend_from_slice(rest);
                vec![Step::Send(bytes)]
            }
            _ => ok_with_length(body),
        }
    }

    fn status_only(status: &str) -> Vec<Step> {
        vec![Step::Send(head(status, &[("Content-Length", "0".to_owned())]))]
    }

    /// A body whose bytes differ from place to place, so that a misplaced byte changes the digest.
    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// Short timeouts, so that every test is over in a few seconds whatever the server does.
    fn fetcher() -> Fetcher {
        fetcher_with(Duration::from_secs(2), Some(Duration::from_secs(10)))
    }

    fn fetcher_with(read_timeout: Duration, total_timeout: Option<Duration>) -> Fetcher {
        Fetcher::new(FetchSettings {
            connect_timeout: Duration::from_secs(2),
            read_timeout,
            total_timeout,
            user_agent: "mcp-raspi-test".to_owned(),
        })
    }

    struct Run {
        result: Result<(), DownloadError>,
        progress: Vec<Progress>,
    }

    async fn download(fetcher: &Fetcher, url: &str, dest: &Path, expected: &[u8]) -> Run {
        download_expecting(fetcher, url, dest, expected.len() as u64, sha(expected)).await
    }

    async fn download_expecting(fetcher: &Fetcher, url: &str, dest: &Path, size: u64, digest: [u8; 32]) -> Run {
        let mut progress = Vec::new();
        let result = fetcher.download(url, dest, size, digest, &mut |p| progress.push(p)).await;
        Run { result, progress }
    }

    fn dest_in(dir: &tempfile::TempDir) -> (PathBuf, PathBuf) {
        let dest = dir.path().join("mcp-raspi_1.2.3_arm64.deb");
        let part = part_path(&dest);
        (dest, part)
    }

    #[tokio::test]
    async fn a_full_download_with_the_right_digest_lands_at_dest_with_progress() {
        let content = body(300 * 1024);
        let served = content.clone();
        let server = Server::start(move |_| ok_with_length(&served)).await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);

        let run = download(&fetcher(), &server.url("/pkg.deb"), &dest, &content).await;

        run.result.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), content);
        assert!(!part.exists());
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o007, 0, "the package is not world-readable: {mode:o}");
        let total = content.len() as u64;
        assert_eq!(run.progress.last(), Some(&Progress { done: total, total }));
        assert!(run.progress.len() >= 4 && run.progress.len() <= 8, "{:?}", run.progress);
        assert!(run.progress.windows(2).all(|w| w[0].done <= w[1].done));
        assert_eq!(server.seen()[0].range, None);
    }

    #[tokio::test]
    async fn a_half_downloaded_part_is_resumed_with_a_range_request() {
        let content = body(200 * 1024);
        let served = content.clone();
        let server = Server::start(move |request| honouring_range(&served, request)).await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        let half = content.len() / 2;
        std::fs::write(&part, &content[..half]).unwrap();

        let run = download(&fetcher(), &server.url("/pkg.deb"), &dest, &content).await;

        run.result.unwrap();
        assert_eq!(server.seen()[0].range.as_deref(), Some(format!("bytes={half}-").as_str()));
        assert_eq!(std::fs::read(&dest).unwrap(), content);
        assert!(!part.exists());
        assert_eq!(run.progress[0].done, half as u64);
    }

    #[tokio::test]
    async fn a_server_that_ignores_range_makes_the_download_start_again_from_zero() {
        let content = body(100 * 1024);
        let served = content.clone();
        let server = Server::start(move |_| ok_with_length(&served)).await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        // Wrong bytes: only a true restart (truncated file, fresh digest) gives the right result.
        std::fs::write(&part, vec![0xAA; 30 * 1024]).unwrap();

        let run = download(&fetcher(), &server.url("/pkg.deb"), &dest, &content).await;

        run.result.unwrap();
        assert_eq!(server.seen()[0].range.as_deref(), Some("bytes=30720-"));
        assert_eq!(std::fs::read(&dest).unwrap(), content);
    }

    #[tokio::test]
    async fn a_416_answer_to_the_range_drops_the_part_and_asks_once_more_without_it() {
        let content = body(10 * 1024);
        let served = content.clone();
        let server = Server::start(move |request| match request.range {
            Some(_) => status_only("416 Range Not Satisfiable"),
            None => ok_with_length(&served),
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        std::fs::write(&part, &content[..100]).unwrap();

        download(&fetcher(), &server.url("/pkg.deb"), &dest, &content).await.result.unwrap();

        let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range).collect();
        assert_eq!(ranges, vec![Some("bytes=100-".to_owned()), None]);
        assert_eq!(std::fs::read(&dest).unwrap(), content);
    }

    #[tokio::test]
    async fn a_206_for_another_range_than_asked_makes_the_download_start_again() {
        let content = body(10 * 1024);
        let served = content.clone();
        let server = Server::start(move |request| match request.range {
            Some(_) => {
                let mut bytes = head(
                    "206 Partial Content",
                    &[("Content-Length", "10".to_owned()), ("Content-Range", format!("bytes 0-9/{}", served.len()))],
                );
                bytes.extend_from_slice(&served[..10]);
                vec![Step::Send(bytes)]
            }
            None => ok_with_length(&served),
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        std::fs::write(&part, &content[..500]).unwrap();

        download(&fetcher(), &server.url("/pkg.deb"), &dest, &content).await.result.unwrap();

        assert_eq!(server.seen().len(), 2);
        assert_eq!(std::fs::read(&dest).unwrap(), content);
    }

    #[tokio::test]
    async fn a_part_larger_than_the_manifest_size_is_discarded_and_not_resumed() {
        let content = body(10 * 1024);
        let served = content.clone();
        let server = Server::start(move |request| honouring_range(&served, request)).await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        std::fs::write(&part, body(20 * 1024)).unwrap();

        download(&fetcher(), &server.url("/pkg.deb"), &dest, &content).await.result.unwrap();

        assert_eq!(server.seen()[0].range, None);
        assert_eq!(std::fs::read(&dest).unwrap(), content);
    }

    #[tokio::test]
    async fn a_complete_part_left_before_the_rename_is_verified_without_a_request() {
        let content = body(10 * 1024);
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        std::fs::write(&part, &content).unwrap();
        // Nothing listens there: a request would fail.
        let url = format!("http://{}/pkg.deb", closed_port().await);

        let run = download(&fetcher(), &url, &dest, &content).await;

        run.result.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), content);
        assert!(!part.exists());
        assert_eq!(run.progress, vec![Progress { done: content.len() as u64, total: content.len() as u64 }]);
    }

    #[tokio::test]
    async fn a_server_sending_more_than_the_manifest_size_is_stopped_while_streaming() {
        let expected = 128 * 1024;
        let offered = body(10 * expected);
        // No Content-Length: the body runs until the server closes, so only counting stops it.
        let server = Server::start(move |_| {
            vec![
                Step::Send(head("200 OK", &[])),
                Step::Trickle { data: offered.clone(), chunk: 16 * 1024, pause: Duration::from_millis(3) },
            ]
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);

        let run = download_expecting(&fetcher(), &server.url("/pkg.deb"), &dest, expected as u64, [0; 32]).await;

        let err = run.result.unwrap_err();
        assert!(matches!(err, DownloadError::Oversized { expected: 131072, .. }), "{err:?}");
        assert!(err.to_string().contains("more than the manifest's 131072 bytes"), "{err}");
        assert!(!err.is_retryable());
        assert!(!part.exists());
        assert!(!dest.exists());
        server.wait_finished(1).await;
        let sent = server.sent.load(Ordering::SeqCst);
        // Kernel buffers take some bytes the client never reads; far less than the whole body.
        assert!(sent < 5 * expected as u64, "the server got {sent} bytes out");
    }

    #[tokio::test]
    async fn a_content_length_above_the_manifest_size_is_refused_before_the_body() {
        let content = body(1000);
        let server = Server::start(move |_| ok_with_length(&body(5000))).await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, _) = dest_in(&dir);

        let err = download(&fetcher(), &server.url("/pkg.deb"), &dest, &content).await.result.unwrap_err();

        assert!(matches!(err, DownloadError::SizeMismatch { announced: 5000, expected: 1000, .. }), "{err:?}");
        assert!(!dest.exists());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_truncated_keeps_the_part_and_a_later_attempt_resumes_it() {
        let content = body(100 * 1024);
        let served = content.clone();
        let cut = 40 * 1024;
        let server = Server::start(move |request| {
            if request.range.is_some() {
                return honouring_range(&served, request);
            }
            let mut bytes = head("200 OK", &[("Content-Length", served.len().to_string())]);
            bytes.extend_from_slice(&served[..cut]);
            vec![Step::Send(bytes)]
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        let fetcher = fetcher();

        let err = download(&fetcher, &server.url("/pkg.deb"), &dest, &content).await.result.unwrap_err();

        assert!(matches!(err, DownloadError::Truncated { got: 40960, expected: 102400, .. }), "{err:?}");
        assert!(err.to_string().contains("truncated: got 40960 of 102400 bytes"), "{err}");
        assert!(err.is_retryable());
        assert_eq!(std::fs::read(&part).unwrap(), &content[..cut]);
        assert!(!dest.exists());

        download(&fetcher, &server.url("/pkg.deb"), &dest, &content).await.result.unwrap();
        assert_eq!(server.seen()[1].range.as_deref(), Some("bytes=40960-"));
        assert_eq!(std::fs::read(&dest).unwrap(), content);
    }

    #[tokio::test]
    async fn a_body_without_length_that_ends_early_is_truncated() {
        let content = body(10 * 1024);
        let served = content.clone();
        let server = Server::start(move |_| {
            let mut bytes = head("200 OK", &[]);
            bytes.extend_from_slice(&served[..3000]);
            vec![Step::Send(bytes)]
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);

        let err = download(&fetcher(), &server.url("/pkg.deb"), &dest, &content).await.result.unwrap_err();

        assert!(matches!(err, DownloadError::Truncated { got: 3000, expected: 10240, .. }), "{err:?}");
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 3000);
    }

    #[tokio::test]
    async fn a_digest_mismatch_leaves_neither_dest_nor_part() {
        let content = body(10 * 1024);
        let served = content.clone();
        let server = Server::start(move |_| ok_with_length(&served)).await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        let wrong = sha(b"another release");

        let run = download_expecting(&fetcher(), &server.url("/pkg.deb"), &dest, content.len() as u64, wrong).await;

        let err = run.result.unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&hex(&wrong)) && message.contains(&hex(&sha(&content))), "{message}");
        assert!(!err.is_retryable());
        assert!(!dest.exists());
        assert!(!part.exists());
    }

    #[tokio::test]
    async fn a_404_names_the_status_and_url_and_is_not_retryable() {
        let server = Server::start(|_| status_only("404 Not Found")).await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, _) = dest_in(&dir);
        let url = server.url("/missing.deb");

        let err = download(&fetcher(), &url, &dest, b"x").await.result.unwrap_err();

        assert!(matches!(err, DownloadError::Status { status: StatusCode::NOT_FOUND, .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("404") && message.contains(&url), "{message}");
        assert!(!err.is_retryable());
        let err = fetcher().fetch_small(&url, 1024).await.unwrap_err();
        assert!(matches!(err, DownloadError::Status { status: StatusCode::NOT_FOUND, .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_500_is_retryable_and_keeps_the_part_for_a_resume() {
        let server = Server::start(|_| status_only("500 Internal Server Error")).await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        let content = body(1000);
        std::fs::write(&part, &content[..10]).unwrap();

        let err = download(&fetcher(), &server.url("/pkg.deb"), &dest, &content).await.result.unwrap_err();

        assert!(matches!(err, DownloadError::Status { status: StatusCode::INTERNAL_SERVER_ERROR, .. }), "{err:?}");
        assert!(err.is_retryable());
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 10);
        let err = fetcher().fetch_small(&server.url("/manifest.json"), 1024).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_with_the_read_timeout_and_keeps_what_arrived() {
        let content = body(10 * 1024);
        let served = content.clone();
        let server = Server::start(move |_| {
            let mut bytes = head("200 OK", &[("Content-Length", served.len().to_string())]);
            bytes.extend_from_slice(&served[..4096]);
            vec![Step::Send(bytes), Step::Pause(Duration::from_secs(3))]
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        let fetcher = fetcher_with(Duration::from_millis(200), Some(Duration::from_secs(10)));
        let url = server.url("/pkg.deb");

        let started = Instant::now();
        let err = download(&fetcher, &url, &dest, &content).await.result.unwrap_err();

        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, DownloadError::ReadTimeout { .. }), "{err:?}");
        assert!(err.is_retryable());
        let message = err.to_string();
        assert!(message.contains(&url) && message.contains("200ms"), "{message}");
        assert_eq!(std::fs::metadata(&part).unwrap().len(), 4096);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_fails_with_the_read_timeout() {
        let server = Server::start(|_| vec![Step::Pause(Duration::from_secs(3))]).await;
        let fetcher = fetcher_with(Duration::from_millis(200), Some(Duration::from_secs(10)));

        let started = Instant::now();
        let err = fetcher.fetch_small(&server.url("/manifest.json"), 1024).await.unwrap_err();

        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, DownloadError::ReadTimeout { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_transfer_slower_than_the_total_timeout_fails_with_it() {
        let content = body(1000);
        let served = content.clone();
        let server = Server::start(move |_| {
            vec![
                Step::Send(head("200 OK", &[("Content-Length", served.len().to_string())])),
                Step::Trickle { data: served.clone(), chunk: 10, pause: Duration::from_millis(50) },
            ]
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        let fetcher = fetcher_with(Duration::from_secs(1), Some(Duration::from_millis(300)));

        let started = Instant::now();
        let err = download(&fetcher, &server.url("/pkg.deb"), &dest, &content).await.result.unwrap_err();

        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, DownloadError::TotalTimeout { .. }), "{err:?}");
        assert!(err.to_string().contains("300ms"), "{err}");
        assert!(err.is_retryable());
        let kept = std::fs::metadata(&part).unwrap().len();
        assert!(kept > 0 && kept < 1000, "{kept}");
    }

    /// An address on which nothing listens (bound, then released).
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_is_a_connect_error_naming_the_url() {
        let url = format!("http://{}/manifest.json", closed_port().await);

        let err = fetcher().fetch_small(&url, 1024).await.unwrap_err();

        assert!(matches!(err, DownloadError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains(&url), "{err}");
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn fetch_small_returns_a_body_within_the_cap() {
        let server = Server::start(|_| ok_with_length(b"{\"version\":\"1.2.3\"}")).await;

        let got = fetcher().fetch_small(&server.url("/manifest.json"), 19).await.unwrap();

        assert_eq!(got, b"{\"version\":\"1.2.3\"}");
    }

    #[tokio::test]
    async fn fetch_small_refuses_a_content_length_over_the_cap_before_the_body() {
        let server = Server::start(|_| {
            vec![
                Step::Send(head("200 OK", &[("Content-Length", "1000000".to_owned())])),
                Step::Pause(Duration::from_secs(3)),
            ]
        })
        .await;

        let err = fetcher().fetch_small(&server.url("/manifest.json"), 64 * 1024).await.unwrap_err();

        assert!(matches!(err, DownloadError::TooLarge { limit: 65536, announced: Some(1_000_000), .. }), "{err:?}");
    }

    #[tokio::test]
    async fn fetch_small_stops_reading_a_body_without_length_at_the_cap() {
        let cap = 64 * 1024;
        let server = Server::start(move |_| {
            vec![
                Step::Send(head("200 OK", &[])),
                Step::Trickle { data: body(20 * cap), chunk: 8 * 1024, pause: Duration::from_millis(3) },
            ]
        })
        .await;

        let err = fetcher().fetch_small(&server.url("/manifest.json"), cap).await.unwrap_err();

        assert!(matches!(err, DownloadError::TooLarge { limit: 65536, announced: None, .. }), "{err:?}");
        server.wait_finished(1).await;
        let sent = server.sent.load(Ordering::SeqCst);
        assert!(sent < 10 * cap as u64, "the server got {sent} bytes out");
    }

    #[tokio::test]
    async fn schemes_other_than_http_and_https_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (dest, part) = dest_in(&dir);
        let fetcher = fetcher();

        for url in ["file:manifest.json", "ftp://127.0.0.1/manifest.json"] {
            let err = fetcher.fetch_small(url, 1024).await.unwrap_err();
            assert!(matches!(err, DownloadError::UnsupportedScheme { .. }), "{err:?}");
            assert!(err.to_string().contains("http or https"), "{err}");
            let err = download(&fetcher, url, &dest, b"x").await.result.unwrap_err();
            assert!(matches!(err, DownloadError::UnsupportedScheme { .. }), "{err:?}");
        }
        let err = fetcher.fetch_small("not a url", 1024).await.unwrap_err();
        assert!(matches!(err, DownloadError::InvalidUrl { .. }), "{err:?}");
        assert!(!part.exists());
    }

    #[tokio::test]
    async fn redirects_are_followed_within_http_but_not_to_other_schemes_nor_forever() {
        let server = Server::start(|request| {
            let to = match request.path.as_str() {
                "/moved" => "/manifest.json".to_owned(),
                "/to-file" => "file:manifest.json".to_owned(),
                "/to-ftp" => "ftp://127.0.0.1/manifest.json".to_owned(),
                "/loop" => "/loop".to_owned(),
                _ => return ok_with_length(b"manifest"),
            };
            vec![Step::Send(head("302 Found", &[("Location", to), ("Content-Length", "0".to_owned())]))]
        })
        .await;
        let fetcher = fetcher();

        assert_eq!(fetcher.fetch_small(&server.url("/moved"), 1024).await.unwrap(), b"manifest");

        for path in ["/to-file", "/to-ftp"] {
            let err = fetcher.fetch_small(&server.url(path), 1024).await.unwrap_err();
            assert!(matches!(err, DownloadError::Redirect { .. }), "{err:?}");
            assert!(err.to_string().contains("only http and https"), "{err}");
        }

        let before = server.seen().len();
        let err = fetcher.fetch_small(&server.url("/loop"), 1024).await.unwrap_err();
        assert!(matches!(err, DownloadError::Redirect { .. }), "{err:?}");
        assert_eq!(server.seen().len() - before, MAX_REDIRECTS + 1);
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        let parse = |s: &'static str| content_range(Some(&HeaderValue::from_static(s)));
        assert_eq!(parse("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(parse("bytes 100-199/*"), Some((100, None)));
        assert_eq!(parse("bytes 5-4/200"), None);
        assert_eq!(parse("bytes */200"), None);
        assert_eq!(parse("items 1-2/3"), None);
        assert_eq!(content_range(None), None);
    }

    const NO_CA_CHILD: &str = "MCP_RASPI_TEST_NO_CA_CHILD";

    /// Runs itself again in a child process whose certificate paths lead nowhere, since the
    /// system's paths cannot be emptied from inside this process without touching the others.
    #[test]
    fn without_ca_certificates_the_first_request_fails_naming_the_package() {
        if std::env::var_os(NO_CA_CHILD).is_some() {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let err = runtime.block_on(fetcher().fetch_small("https://127.0.0.1:9/manifest.json", 1024)).unwrap_err();
            assert!(matches!(err, DownloadError::TlsSetup { .. }), "{err:?}");
            assert!(err.to_string().contains("install the ca-certificates package"), "{err}");
            return;
        }
        let empty = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "update::download::tests::without_ca_certificates_the_first_request_fails_naming_the_package",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(NO_CA_CHILD, "1")
            .env("SSL_CERT_FILE", empty.path().join("none.pem"))
            .env("SSL_CERT_DIR", empty.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
}
