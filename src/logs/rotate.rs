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

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// A log file that rotates by size.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    state: Mutex<State>,
}

struct State {
    /// The open file and its size; `None` after a failed rotation, to be retried.
    file: Option<(File, u64)>,
    /// Lines waiting for the thread that is writing.
    pending: Vec<u8>,
    /// Whether a thread is writing (it holds the file outside the lock meanwhile).
    writing: bool,
}

impl RotatingFile {
    /// Opens (creating its directory and the file, mode 0640) `path`.
    pub fn open(path: &Path, max_bytes: u64, backups: u32) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = Self::open_file(path)?;
        let size = file.metadata()?.len();
        let state = State { file: Some((file, size)), pending: Vec::new(), writing: false };
        Ok(RotatingFile { path: path.to_path_buf(), max_bytes, backups, state: Mutex::new(state) })
    }

    fn open_file(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).mode(0o640).open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| io::Error::other("log file lock poisoned"))
    }

    /// Appends one line (a newline is added). When another thread is writing, the line is
    /// handed to it and this returns at once; errors are then that thread's to report.
    pub fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut state = self.lock()?;
        state.pending.reserve(line.len() + 1);
        state.pending.extend_from_slice(line);
        state.pending.push(b'\n');
        if state.writing {
            return Ok(());
        }
        state.writing = true;
        let mut buf = Vec::new();
        let result = loop {
            std::mem::swap(&mut buf, &mut state.pending);
            state.pending.clear();
            if buf.is_empty() {
                break Ok(());
            }
            let (mut file, size) = match self.file_for(&mut state, buf.len() as u64) {
                Ok(file) => file,
                Err(e) => break Err(e),
            };
            drop(state);
            let written = file.write_all(&buf).map(|()| buf.len() as u64);
            state = self.lock()?;
            match written {
                Ok(n) => state.file = Some((file, size + n)),
                Err(e) => {
                    state.file = Some((file, size));
                    break Err(e);
                }
            }
        };
        state.writing = false;
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
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2000);
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), 2000, "every line once");
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
}
