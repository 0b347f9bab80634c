//! The HTTP(S) side of downloading: the [`Fetcher`], its reqwest client built on first use,
//! the redirect policy, timeouts, and the classification of what the network did into a
//! [`DownloadError`]. What the bytes are written to is the partial file of `part`.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::path::Path;

use reqwest::header::{HeaderValue, CONTENT_RANGE, LOCATION, RANGE};
use reqwest::{StatusCode, Url};
use sha2::Digest;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::part::{part_path, remove_quietly, PartFile};
use super::{io_error, DownloadError, FetchSettings, Progress};
pub(super) use crate::base::hex;

/// Most redirects followed for one request; release hosting needs one or two.
pub(super) const MAX_REDIRECTS: usize = 5;
/// Progress is reported each time at least this many more bytes have arrived.
const PROGRESS_STEP: u64 = 64 * 1024;
/// Write buffer in front of the partial file, so that small network chunks do not each cost a
/// write system call.
const WRITE_BUFFER: usize = 64 * 1024;

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
        crate::update::download::http_client()
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
pub(super) fn content_range(value: Option<&HeaderValue>) -> Option<(u64, Option<u64>)> {
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
