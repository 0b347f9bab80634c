//! A size-rotated, append-only line file shared by the application and audit logs.
//!
//! `app.log` grows until the next line would pass `max_bytes`; then `app.log.N-1` becomes
//! `app.log.N` (the oldest is dropped), ..., `app.log` becomes `app.log.1`, and a new
//! `app.log` is started. Lines are written whole with one `write` on an `O_APPEND` file, so
//! they never interleave, even with logrotate or another writer.
//!
//! Writers do not queue behind each other's system calls: a line that arrives while
//! another thread is writing is appended to a pending buffer, and the writing thread
//! writes it (with any others that arrived) before it returns. Under load many lines go
//! out in one `write`; alone, a line is written at once by its own thread.
//!
//! [`GroupedFile`] adds group commit: a line that may wait stays in the pending buffer for
//! at most a delay, and a thread of the file's own writes everything that gathered there
//! in one `write`, so that a burst of such lines costs one system call instead of one
//! each. A line that may not wait is written at once and takes every line waiting before
//! it along, so the file keeps the order in which lines arrived.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes that may wait for a delayed write: the line that passes this writes them all at
/// once, so that a flood of lines neither grows memory nor delays one large write.
pub const MAX_WAITING_BYTES: usize = 64 * 1024;

/// Whether a line must be written before the call that writes it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// Written now, together with every line waiting before it.
    Immediate,
    /// May wait up to the file's delay to be written together with others.
    MayWait,
}

/// A log file that rotates by size.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    state: Mutex<State>,
    /// Wakes the delayed writer of a [`GroupedFile`]: a line started waiting, or it must stop.
    wake: Condvar,
    /// Wakes the threads that wait for the writing thread to finish.
    written: Condvar,
    /// Lines whose write failed, for monitoring (the errors themselves are returned).
    lost: AtomicU64,
}

struct State {
    /// The open file and its size; `None` after a failed rotation, to be retried.
    file: Option<(File, u64)>,
    /// Lines not written yet, in the order they arrived: handed to the thread that is
    /// writing, or waiting for the delayed write.
    pending: Vec<u8>,
    /// Whether a thread is writing (it holds the file outside the lock meanwhile).
    writing: bool,
    /// Whether the delayed writer was asked to write `pending` (it does so a delay later).
    due: bool,
    /// Whether the delayed writer must stop.
    stop: bool,
    /// Threads waiting for the writing thread to finish: in `flush`, or with an immediate
    /// line of a [`GroupedFile`].
    waiters: usize,
}

impl RotatingFile {
    /// Opens (creating its directory and the file, mode 0640) `path`.
    pub fn open(path: &Path, max_bytes: u64, backups: u32) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = Self::open_file(path)?;
        let size = file.metadata()?.len();
        let state = State {
            file: Some((file, size)),
            pending: Vec::new(),
            writing: false,
            due: false,
            stop: false,
            waiters: 0,
        };
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_bytes,
            backups,
            state: Mutex::new(state),
            wake: Condvar::new(),
            written: Condvar::new(),
            lost: AtomicU64::new(0),
        })
    }

    fn open_file(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).mode(0o640).open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines lost to failed writes since the file was opened (a full disk, a file that
    /// cannot be rotated).
    pub fn lost_lines(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| poisoned())
    }

    /// Appends one line (a newline is added). When another thread is writing, the line is
    /// handed to it and this returns at once; errors are then that thread's to report.
    pub fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut state = self.lock()?;
        push_line(&mut state.pending, line);
        if state.writing {
            return Ok(());
        }
        self.write_pending(state)
    }

    /// Appends one line that may wait for the delayed writer of a [`GroupedFile`], which
    /// the first line to wait wakes. Past [`MAX_WAITING_BYTES`] everything is written now.
    fn write_line_later(&self, line: &[u8]) -> io::Result<()> {
        let mut state = self.lock()?;
        push_line(&mut state.pending, line);
        if state.writing {
            return Ok(());
        }
        if state.pending.len() > MAX_WAITING_BYTES {
            return self.write_pending(state);
        }
        if !state.due {
            state.due = true;
            drop(state);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Appends one line and returns once it is written: a thread that is writing takes it
    /// along, and this waits for that thread to finish (whose errors are its to report).
    fn write_line_and_wait(&self, line: &[u8]) -> io::Result<()> {
        let mut state = self.lock()?;
        push_line(&mut state.pending, line);
        self.write_all_pending(state)
    }

    /// Writes every line waiting and returns once they are written, waiting for a thread
    /// that is writing to finish first.
    pub fn flush(&self) -> io::Result<()> {
        let state = self.lock()?;
        self.write_all_pending(state)
    }

    fn write_all_pending<'a>(&'a self, mut state: MutexGuard<'a, State>) -> io::Result<()> {
        while state.writing {
            state.waiters += 1;
            let woken = self.written.wait(state);
            state = woken.map_err(|_| poisoned())?;
            state.waiters -= 1;
        }
        if state.pending.is_empty() {
            return Ok(());
        }
        self.write_pending(state)
    }

    /// Writes `pending`, as the writing thread, until it stays empty: lines handed over
    /// while the file is written outside the lock go out in the next round. Every round is
    /// tried, so that one failed write does not strand lines handed over meanwhile; the
    /// first error is returned.
    fn write_pending<'a>(&'a self, mut state: MutexGuard<'a, State>) -> io::Result<()> {
        state.writing = true;
        let mut buf = Vec::new();
        let mut result = Ok(());
        loop {
            std::mem::swap(&mut buf, &mut state.pending);
            state.pending.clear();
            if buf.is_empty() {
                break;
            }
            let error = match self.file_for(&mut state, buf.len() as u64) {
                Ok((mut file, size)) => {
                    drop(state);
                    let written = file.write_all(&buf);
                    state = self.lock()?;
                    match written {
                        Ok(()) => {
                            state.file = Some((file, size + buf.len() as u64));
                            None
                        }
                        Err(e) => {
                            state.file = Some((file, size));
                            Some(e)
                        }
                    }
                }
                Err(e) => Some(e),
            };
            if let Some(e) = error {
                // Every line of the failed write is counted, though a write cut short by a
                // full disk may have stored the first of them.
                let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
                self.lost.fetch_add(lines, Ordering::Relaxed);
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        state.writing = false;
        if state.waiters > 0 {
            self.written.notify_all();
        }
        result
    }

    /// Takes the file out of `state` for a write of `len` bytes, rotating first when the
    /// write would take it past `max_bytes`.
    fn file_for(&self, state: &mut State, len: u64) -> io::Result<(File, u64)> {
        match state.file.take() {
            Some((file, size)) if size == 0 || size + len <= self.max_bytes => Ok((file, size)),
            _ => {
                self.rotate()?;
                let file = Self::open_file(&self.path)?;
                let size = file.metadata()?.len();
                Ok((file, size))
            }
        }
    }

    fn rotate(&self) -> io::Result<()> {
        if self.backups == 0 {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        for n in (1..self.backups).rev() {
            let from = backup_path(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, backup_path(&self.path, n + 1))?;
            }
        }
        if self.path.exists() {
            std::fs::rename(&self.path, backup_path(&self.path, 1))?;
        }
        Ok(())
    }
}

/// `app.log` → `app.log.N`.
pub fn backup_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn push_line(pending: &mut Vec<u8>, line: &[u8]) {
    pending.reserve(line.len() + 1);
    pending.extend_from_slice(line);
    pending.push(b'\n');
}

fn poisoned() -> io::Error {
    io::Error::other("log file lock poisoned")
}

/// A [`RotatingFile`] with group commit: lines that may wait are written together by a
/// thread of its own (`<name>-writer`) at most `delay` after the first of them arrived.
///
/// The thread sleeps on a condition variable while nothing waits, so an idle file costs
/// no wake-ups. Waiting lines live in memory only: [`GroupedFile::flush`] and dropping the
/// file write them, but a process that dies without either (a crash, `SIGKILL`, or a
/// panic in a build that aborts on panic) loses what waited, at most `delay` of lines.
pub struct GroupedFile {
    file: Arc<RotatingFile>,
    /// The delayed writer; `None` when the delay is zero and every line is written at once.
    writer: Option<JoinHandle<()>>,
    /// What the file is, in error messages: `audit` for "the audit log".
    name: &'static str,
}

impl GroupedFile {
    /// Opens `path` as [`RotatingFile::open`] does. With a non-zero `delay` the delayed
    /// writer is started; with zero, no line waits.
    pub fn open(
        name: &'static str,
        path: &Path,
        max_bytes: u64,
        backups: u32,
        delay: Duration,
    ) -> io::Result<GroupedFile> {
        let file = Arc::new(RotatingFile::open(path, max_bytes, backups)?);
        let writer = if delay.is_zero() {
            None
        } else {
            let shared = file.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-writer"))
                .spawn(move || write_later(&shared, delay, name))?;
            Some(thread)
        };
        Ok(GroupedFile { file, writer, name })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Appends one line. An immediate line is in the file, after every line waiting before
    /// it, when this returns; when a thread is writing, it takes the line along and this
    /// waits for it. Without a delay, lines are written as [`RotatingFile::write_line`]
    /// writes them.
    pub fn write_line(&self, line: &[u8], urgency: Urgency) -> io::Result<()> {
        match (urgency, &self.writer) {
            (_, None) => self.file.write_line(line),
            (Urgency::MayWait, Some(_)) => self.file.write_line_later(line),
            (Urgency::Immediate, Some(_)) => self.file.write_line_and_wait(line),
        }
    }

    /// Writes every line waiting, and returns once they are in the file.
    pub fn flush(&self) -> io::Result<()> {
        self.file.flush()
    }

    /// Lines lost to failed writes since the file was opened: see [`RotatingFile::lost_lines`].
    pub fn lost_lines(&self) -> u64 {
        self.file.lost_lines()
    }
}

impl Drop for GroupedFile {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            if let Ok(mut state) = self.file.lock() {
                state.stop = true;
            }
            self.file.wake.notify_all();
            if writer.join().is_err() {
                log::error!("the {} log writer thread failed", self.name);
            }
        }
        if let Err(e) = self.file.flush() {
            log::error!("cannot write the {} log {}: {e}", self.name, self.file.path.display());
        }
    }
}

/// The delayed writer of a [`GroupedFile`]: sleeps until a line waits, lets `delay` pass
/// so that others can join it, and writes them all (unless a thread writing meanwhile
/// took them along).
fn write_later(file: &RotatingFile, delay: Duration, name: &str) {
    let stopped = || log::error!("the {name} log writer stopped: its lock is poisoned");
    let mut state = match file.lock() {
        Ok(state) => state,
        Err(_) => return stopped(),
    };
    loop {
        while !state.due && !state.stop {
            state = match file.wake.wait(state) {
                Ok(state) => state,
                Err(_) => return stopped(),
            };
        }
        if state.stop {
            return;
        }
        state = match file.wake.wait_timeout_while(state, delay, |s| !s.stop) {
            Ok((state, _)) => state,
            Err(_) => return stopped(),
        };
        if state.stop {
            // Dropping the file writes what waits.
            return;
        }
        state.due = false;
        if state.writing || state.pending.is_empty() {
            continue;
        }
        if let Err(e) = file.write_pending(state) {
            log::error!("cannot write the {name} log {}: {e}", file.path.display());
        }
        state = match file.lock() {
            Ok(state) => state,
            Err(_) => return stopped(),
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_full_file_is_rotated_and_the_oldest_backup_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/app.log");
        let file = RotatingFile::open(&path, 20, 2).unwrap();
        for i in 0..5 {
            file.write_line(format!("line number {i}").as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line number 4\n");
        assert_eq!(std::fs::read_to_string(backup_path(&path, 1)).unwrap(), "line number 3\n");
        assert_eq!(std::fs::read_to_string(backup_path(&path, 2)).unwrap(), "line number 2\n");
        assert!(!backup_path(&path, 3).exists());
    }

    #[test]
    fn lines_written_from_many_threads_all_arrive_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = std::sync::Arc::new(RotatingFile::open(&path, u64::MAX, 1).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let file = file.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        file.write_line(format!("thread {t} line {i} {}", "x".repeat(i % 50)).as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_every_line_once(&text, 2000);
        for t in 0..4 {
            // Each thread's lines keep their order.
            let mine: Vec<usize> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .map(|l| l.split(' ').nth(3).unwrap().parse().unwrap())
                .collect();
            assert_eq!(mine, (0..500).collect::<Vec<_>>());
        }
    }

    use std::time::Instant;

    /// How long a line that may wait is allowed to take beyond the delay before a test
    /// calls it lost: generous, for a loaded machine.
    const MARGIN: Duration = Duration::from_secs(3);
    /// A delay no test waits out: lines stay waiting until something else writes them.
    const FOREVER: Duration = Duration::from_secs(600);

    /// Asserts that `text` holds `count` lines, none twice.
    fn assert_every_line_once(text: &str, count: usize) {
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), count);
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), count, "every line once");
    }

    /// A grouped `audit.log` in a new temporary directory, never rotated.
    fn grouped(delay: Duration) -> (tempfile::TempDir, PathBuf, GroupedFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = GroupedFile::open("audit", &path, u64::MAX, 1, delay).unwrap();
        (dir, path, file)
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Polls `path` until it holds `lines` lines; returns how long that took.
    fn wait_for_lines(path: &Path, lines: usize, timeout: Duration) -> Duration {
        let started = Instant::now();
        while read(path).lines().count() < lines {
            assert!(started.elapsed() < timeout, "{lines} lines did not arrive within {timeout:?}: {:?}", read(path));
            std::thread::sleep(Duration::from_millis(2));
        }
        started.elapsed()
    }

    #[test]
    fn lines_that_may_wait_are_written_together_within_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let delay = Duration::from_millis(100);
        let file = GroupedFile::open("audit", &path, u64::MAX, 1, delay).unwrap();
        let first = Instant::now();
        for i in 0..3 {
            file.write_line(format!("line {i}").as_bytes(), Urgency::MayWait).unwrap();
        }
        let seen = read(&path);
        // The delayed write cannot have happened before `delay` passed since the first line.
        if first.elapsed() < delay {
            assert_eq!(seen, "", "written before the delay");
        }
        wait_for_lines(&path, 3, delay + MARGIN);
        assert_eq!(read(&path), "line 0\nline 1\nline 2\n");
        assert!(first.elapsed() >= delay, "written after {:?}, before the delay", first.elapsed());
    }

    #[test]
    fn an_immediate_line_first_writes_the_lines_waiting_before_it() {
        let (_dir, path, file) = grouped(FOREVER);
        file.write_line(b"read 1", Urgency::MayWait).unwrap();
        file.write_line(b"read 2", Urgency::MayWait).unwrap();
        assert_eq!(read(&path), "");
        file.write_line(b"change 3", Urgency::Immediate).unwrap();
        assert_eq!(read(&path), "read 1\nread 2\nchange 3\n");
        file.write_line(b"read 4", Urgency::MayWait).unwrap();
        file.write_line(b"change 5", Urgency::Immediate).unwrap();
        assert_eq!(read(&path), "read 1\nread 2\nchange 3\nread 4\nchange 5\n");
    }

    #[test]
    fn an_immediate_line_handed_to_a_thread_that_is_writing_waits_until_that_thread_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = std::sync::Arc::new(GroupedFile::open("audit", &path, u64::MAX, 1, FOREVER).unwrap());
        // This thread plays the one that is writing.
        file.file.lock().unwrap().writing = true;
        let (done, finished) = std::sync::mpsc::channel();
        let writer = {
            let file = file.clone();
            std::thread::spawn(move || {
                file.write_line(b"change", Urgency::Immediate).unwrap();
                done.send(()).unwrap();
            })
        };
        let returned_early = finished.recv_timeout(Duration::from_millis(200)).is_ok();
        // Finish the write before asserting, so that a failure does not leave the file
        // "being written" forever.
        let mut state = file.file.lock().unwrap();
        let handed_over = state.pending == b"change\n";
        state.writing = false;
        file.file.write_pending(state).unwrap();
        assert!(handed_over, "the line was handed over");
        assert!(!returned_early, "returned before the line was written");
        finished.recv_timeout(MARGIN).unwrap();
        writer.join().unwrap();
        assert_eq!(read(&path), "change\n");
    }

    #[test]
    fn flush_writes_every_line_waiting() {
        let (_dir, path, file) = grouped(FOREVER);
        file.write_line(b"one", Urgency::MayWait).unwrap();
        file.write_line(b"two", Urgency::MayWait).unwrap();
        assert_eq!(read(&path), "");
        file.flush().unwrap();
        assert_eq!(read(&path), "one\ntwo\n");
        // Nothing waits: a second flush writes nothing more.
        file.flush().unwrap();
        assert_eq!(read(&path), "one\ntwo\n");
    }

    #[test]
    fn with_no_delay_every_line_is_written_before_write_line_returns() {
        let (_dir, path, file) = grouped(Duration::ZERO);
        assert!(file.writer.is_none(), "no thread without a delay");
        file.write_line(b"may wait", Urgency::MayWait).unwrap();
        assert_eq!(read(&path), "may wait\n");
        file.write_line(b"immediate", Urgency::Immediate).unwrap();
        assert_eq!(read(&path), "may wait\nimmediate\n");
    }

    #[test]
    fn the_line_that_passes_64_kib_of_waiting_lines_writes_them_all_at_once() {
        let (_dir, path, file) = grouped(FOREVER);
        let line = [b'x'; 999];
        // 1000 bytes a line with its newline: 65 lines stay within the bound, the 66th passes it.
        let within = MAX_WAITING_BYTES / 1000;
        for _ in 0..within {
            file.write_line(&line, Urgency::MayWait).unwrap();
        }
        assert_eq!(read(&path), "", "{within} lines are within the bound");
        file.write_line(&line, Urgency::MayWait).unwrap();
        let text = read(&path);
        assert_eq!(text.lines().count(), within + 1);
        assert!(text.lines().all(|l| l.len() == 999));
    }

    #[test]
    fn dropping_the_file_writes_what_waits_without_waiting_for_the_delay() {
        let (_dir, path, file) = grouped(FOREVER);
        file.write_line(b"last words", Urgency::MayWait).unwrap();
        let started = Instant::now();
        drop(file);
        assert!(started.elapsed() < MARGIN, "the writer thread was not woken: {:?}", started.elapsed());
        assert_eq!(read(&path), "last words\n");
    }

    #[test]
    fn threads_mixing_waiting_and_immediate_lines_lose_none_and_keep_each_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file =
            std::sync::Arc::new(GroupedFile::open("audit", &path, u64::MAX, 1, Duration::from_millis(1)).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let file = file.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        let urgency = if i % 3 == 0 { Urgency::Immediate } else { Urgency::MayWait };
                        file.write_line(format!("thread {t} line {i} {}", "x".repeat(i % 50)).as_bytes(), urgency)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // No flush: the delayed writer must get the last lines out by itself.
        wait_for_lines(&path, 2000, MARGIN);
        let text = read(&path);
        assert_every_line_once(&text, 2000);
        for t in 0..4 {
            let mine: Vec<(usize, usize)> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .map(|l| {
                    let fields: Vec<&str> = l.split(' ').collect();
                    (fields[3].parse().unwrap(), fields.get(4).map_or(0, |x| x.len()))
                })
                .collect();
            // Whole lines, each thread's in the order it wrote them.
            assert_eq!(mine, (0..500).map(|i| (i, i % 50)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn lines_that_waited_are_rotated_by_size_like_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = GroupedFile::open("audit", &path, 40, 2, Duration::from_millis(20)).unwrap();
        let (a, b, c, d) = ("a".repeat(30), "b".repeat(10), "c".repeat(10), "d".repeat(20));
        file.write_line(a.as_bytes(), Urgency::Immediate).unwrap();
        file.write_line(b.as_bytes(), Urgency::MayWait).unwrap();
        file.write_line(c.as_bytes(), Urgency::MayWait).unwrap();
        // 31 bytes in the file and 22 waiting: the write of both lines rotates first.
        file.flush().unwrap();
        assert_eq!(read(&backup_path(&path, 1)), format!("{a}\n"));
        assert_eq!(read(&path), format!("{b}\n{c}\n"));
        // The same through the delayed writer.
        file.write_line(d.as_bytes(), Urgency::MayWait).unwrap();
        let started = Instant::now();
        while read(&path) != format!("{d}\n") {
            assert!(started.elapsed() < MARGIN, "not rotated: {:?}", read(&path));
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(read(&backup_path(&path, 1)), format!("{b}\n{c}\n"));
        assert_eq!(read(&backup_path(&path, 2)), format!("{a}\n"));
    }
}
