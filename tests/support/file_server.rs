//! A static HTTP/1.1 file server on 127.0.0.1 for the self-update tests: it serves a
//! directory (with `Range: bytes=N-` for resumed downloads), can misbehave on chosen paths
//! (a status, a body cut short, longer than announced, a stall), and records what it sent
//! to whom, so that a test can tell that a client hung up early.
//!
//! One thread accepts; each connection gets a thread of its own, at most [`MAX_CONNECTIONS`]
//! at a time, and every wait is bounded. Dropping the server stops it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Connections served at once; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 32;
/// Longest wait for a request's head, and for a client to take the next piece of a body.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 64 * 1024;

/// How a path misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answers with this status and a short body.
    Status(u16),
    /// Announces the whole file's length, sends only its first `keep` bytes and closes.
    Truncate { keep: u64 },
    /// Sends the file and then `extra` more bytes: chunked, so that no length announces
    /// them, or with a `Content-Length` that does.
    Longer { extra: u64, announced: bool },
    /// Announces the whole file, sends `after` bytes, then nothing for `pause` (or until the
    /// server stops), then closes.
    Stall { after: u64, pause: Duration },
}

/// One request, as the server saw it.
#[derive(Debug, Clone)]
pub struct Served {
    pub path: String,
    pub status: u16,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// Body bytes the client accepted.
    pub sent: u64,
    /// Body bytes the server meant to send.
    pub meant: u64,
    /// The client closed the connection before the whole body was sent.
    pub client_left: bool,
}

#[derive(Default)]
struct Shared {
    faults: Mutex<HashMap<String, Fault>>,
    served: Mutex<Vec<Served>>,
    active: AtomicUsize,
}

/// A running server; stopped when dropped.
pub struct FileServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Serves the files under `root`.
    pub fn start(root: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (shared, stop, root) = (shared.clone(), stop.clone(), root.to_path_buf());
            std::thread::spawn(move || accept_loop(&listener, &root, &shared, &stop))
        };
        FileServer { addr, shared, stop, acceptor: Some(acceptor) }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes `path` (`/pool/x.deb`) misbehave from now on.
    pub fn fault(&self, path: &str, fault: Fault) {
        self.shared.faults.lock().unwrap().insert(path.to_string(), fault);
    }

    /// Makes `path` behave again.
    pub fn clear_fault(&self, path: &str) {
        self.shared.faults.lock().unwrap().remove(path);
    }

    /// The requests answered so far for `path`, oldest first.
    pub fn served(&self, path: &str) -> Vec<Served> {
        self.shared.served.lock().unwrap().iter().filter(|s| s.path == path).cloned().collect()
    }

    /// Waits (at most `limit`) until no connection is being served, so that what a client
    /// that has exited did is all recorded.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let start = Instant::now();
        while self.shared.active.load(Ordering::SeqCst) > 0 {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, root: &Path, shared: &Arc<Shared>, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if shared.active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    continue;
                }
                shared.active.fetch_add(1, Ordering::SeqCst);
                let (shared, stop, root) = (shared.clone(), stop.clone(), root.to_path_buf());
                std::thread::spawn(move || {
                    serve(stream, &root, &shared, &stop);
                    shared.active.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// The request line's path and the `Range` header of one request head.
fn read_head(stream: &mut TcpStream) -> Option<(String, Option<String>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let mut request = lines.next()?.split(' ');
    let (method, path) = (request.next()?, request.next()?);
    if method != "GET" {
        return Some((String::new(), None));
    }
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("range"))
        .map(|(_, value)| value.trim().to_string());
    Some((path.to_string(), range))
}

/// The file `path` names under `root`, refusing anything that would leave it.
fn file_for(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let file = root.join(rel);
    file.is_file().then_some(file)
}

fn serve(mut stream: TcpStream, root: &Path, shared: &Shared, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Some((path, range)) = read_head(&mut stream) else { return };
    let fault = shared.faults.lock().unwrap().get(&path).cloned();
    let mut record =
        Served { path: path.clone(), status: 200, range: range.clone(), sent: 0, meant: 0, client_left: false };

    let body = file_for(root, &path).map(|f| std::fs::read(f).unwrap());
    match (fault, body) {
        (Some(Fault::Status(status)), _) => {
            record.status = status;
            let text = format!("status {status} for this test\n");
            let head = format!(
                "HTTP/1.1 {status} Test\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                text.len()
            );
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(text.as_bytes()));
        }
        (_, None) => {
            record.status = 404;
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        (Some(Fault::Longer { extra, announced }), Some(body)) => {
            record.meant = body.len() as u64 + extra;
            let framing = if announced {
                format!("Content-Length: {}", record.meant)
            } else {
                "Transfer-Encoding: chunked".to_string()
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{framing}\r\nConnection: close\r\n\r\n"
            );
            if stream.write_all(head.as_bytes()).is_ok() {
                let filler = vec![0u8; CHUNK];
                let mut pieces = body.chunks(CHUNK).collect::<Vec<_>>();
                let mut left = extra;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    pieces.push(&filler[..n]);
                    left -= n as u64;
                }
                for piece in pieces {
                    let written = if announced {
                        stream.write_all(piece)
                    } else {
                        stream
                            .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                            .and_then(|()| stream.write_all(piece))
                            .and_then(|()| stream.write_all(b"\r\n"))
                    };
                    if written.is_err() {
                        record.client_left = true;
                        break;
                    }
                    record.sent += piece.len() as u64;
                }
                if !record.client_left && !announced {
                    let _ = stream.write_all(b"0\r\n\r\n");
                }
            }
        }
        (fault, Some(body)) => {
            let total = body.len() as u64;
            let start = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.strip_suffix('-'))
            {
                Some(n) => n.parse::<u64>().ok().filter(|&n| n < total),
                None => None,
            };
            let (status, from) = match start {
                Some(n) => (206, n),
                None => (200, 0),
            };
            record.status = status;
            record.meant = total - from;
            let mut head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n",
                if status == 206 { "Partial Content" } else { "OK" },
                total - from
            );
            if status == 206 {
                head.push_str(&format!("Content-Range: bytes {from}-{}/{total}\r\n", total - 1));
            }
            head.push_str("\r\n");
            let (send_until, pause) = match fault {
                Some(Fault::Truncate { keep }) => (keep.min(total), None),
                Some(Fault::Stall { after, pause }) => (after.min(total), Some(pause)),
                _ => (total, None),
            };
            if stream.write_all(head.as_bytes()).is_ok() {
                for piece in body[from.min(send_until) as usize..send_until as usize].chunks(CHUNK) {
                    if stream.write_all(piece).is_err() {
                        record.client_left = true;
                        break;
                    }
                    record.sent += piece.len() as u64;
                }
                let _ = stream.flush();
                if let Some(pause) = pause {
                    let until = Instant::now() + pause;
                    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
    }
    shared.served.lock().unwrap().push(record);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
