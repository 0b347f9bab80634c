//! A size-rotated, append-only line file shared by the application and audit logs.
//!
//! `app.log` grows until the next line would pass `max_bytes`; then `app.log.N-1` becomes
//! `app.log.N` (the oldest is dropped), ..., `app.log` becomes `app.log.1`, and a new
//! `app.log` is started. Each line is written with one `write` on an `O_APPEND` file so
//! lines never interleave, even with logrotate or another writer.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A log file that rotates by size.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    backups: u32,
    state: Mutex<Option<(File, u64)>>,
}

impl RotatingFile {
    /// Opens (creating its directory and the file, mode 0640) `path`.
    pub fn open(path: &Path, max_bytes: u64, backups: u32) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = Self::open_file(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { path: path.to_path_buf(), max_bytes, backups, state: Mutex::new(Some((file, size))) })
    }

    fn open_file(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).mode(0o640).open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (a newline is added).
    pub fn write_line(&self, line: &str) -> io::Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let mut guard = self.state.lock().map_err(|_| io::Error::other("log file lock poisoned"))?;
        let needs_rotation = match guard.as_ref() {
            Some((_, size)) => *size > 0 && size + buf.len() as u64 > self.max_bytes,
            None => true,
        };
        if needs_rotation {
            *guard = None;
            self.rotate()?;
            let file = Self::open_file(&self.path)?;
            let size = file.metadata()?.len();
            *guard = Some((file, size));
        }
        if let Some((file, size)) = guard.as_mut() {
            file.write_all(&buf)?;
            *size += buf.len() as u64;
        }
        Ok(())
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
            file.write_line(&format!("line number {i}")).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line number 4\n");
        assert_eq!(std::fs::read_to_string(backup_path(&path, 1)).unwrap(), "line number 3\n");
        assert_eq!(std::fs::read_to_string(backup_path(&path, 2)).unwrap(), "line number 2\n");
        assert!(!backup_path(&path, 3).exists());
    }
}
