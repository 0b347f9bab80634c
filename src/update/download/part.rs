//! The partial file of a download, `<dest>.part`: opened or resumed, hashed as it grows,
//! emptied when it cannot be the prefix of the right file, and renamed to `dest` only once
//! complete and verified, so a file named `dest` is always whole.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{io_error, DownloadError};

/// Appended to the destination's name for the file being downloaded.
const PART_SUFFIX: &str = ".part";
/// The partial file holds an unverified package: readable by the group, not by everyone.
const PART_MODE: u32 = 0o640;
/// Read size when hashing the prefix of a resumed file.
const HASH_BUFFER: usize = 64 * 1024;

/// The partial file of a download, with the digest of what it holds so far.
pub(super) struct PartFile {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// Bytes in the file, which is positioned at its end.
    pub(super) len: u64,
    /// SHA-256 of the file's first `len` bytes, once [`PartFile::hash_existing`] ran.
    pub(super) hasher: Sha256,
}

impl PartFile {
    pub(super) async fn open(path: PathBuf) -> Result<PartFile, DownloadError> {
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
    pub(super) async fn hash_existing(&mut self) -> Result<(), DownloadError> {
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
    pub(super) async fn restart(&mut self) -> Result<(), DownloadError> {
        self.file.set_len(0).await.map_err(|e| io_error("truncate", &self.path, e))?;
        self.file.seek(SeekFrom::Start(0)).await.map_err(|e| io_error("truncate", &self.path, e))?;
        self.len = 0;
        self.hasher = Sha256::new();
        Ok(())
    }

    /// Makes the verified file `dest`: synced to disk, renamed, and the rename synced, so that
    /// after a crash `dest` is either absent or complete.
    pub(super) async fn finish(self, dest: &Path) -> Result<(), DownloadError> {
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

/// `dest` with [`PART_SUFFIX`] appended to its file name.
pub(super) fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(PART_SUFFIX);
    PathBuf::from(name)
}

/// Removes a partial file that cannot be resumed; failing to is harmless, because the next
/// attempt checks whatever it finds.
pub(super) async fn remove_quietly(path: &Path) {
    let _ = tokio::fs::remove_file(path).await;
}
