//! Tests of fetching and downloading against a scripted local HTTP server: resumes,
//! restarts, sizes, digests, timeouts and redirects.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::header::HeaderValue;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::fetcher::{content_range, hex, MAX_REDIRECTS};
use super::part::part_path;
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
