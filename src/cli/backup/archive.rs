//! The backup archive: a `.tar.gz` holding one directory named after the archive, with the
//! saved files under an area each (`config/`, `state/`, `logs/`, `systemd/`), a
//! `system-info.txt`, and at the end `MANIFEST.json` (what was saved, from where, with
//! owner, group, mode, size and SHA-256 of each file) and `checksums.sha256` (the same
//! hashes in `sha256sum -c` form, for a person with only the shell).
//!
//! Reading one back extracts it into a private staging directory, hashing each file as it
//! is written; only once the whole archive has been read and every file matches the
//! manifest is anything else touched. A truncated, corrupt or foreign archive leaves the
//! system as it was.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::base::{hex, Hashing};

/// The product a backup belongs to, as its manifest says.
pub const PRODUCT: &str = "mcp-raspi";
/// The layout of the archive; a newer one is refused by an older program. Format 2 added
/// the metrics database (`state/metrics.db`), which a restore must put back with the
/// write-ahead log of the database it replaces removed: a program that reads only format 1
/// would not. An archive without it is still written in format 1, which every version reads.
pub const FORMAT: u32 = 2;
/// The format of an archive that holds no metrics database.
pub const FORMAT_WITHOUT_METRICS: u32 = 1;
pub const MANIFEST: &str = "MANIFEST.json";
pub const CHECKSUMS: &str = "checksums.sha256";
pub const SYSTEM_INFO: &str = "system-info.txt";

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub product: String,
    pub format: u32,
    /// The version of mcp-raspi that wrote it.
    pub written_by: String,
    pub created: String,
    pub hostname: String,
    /// The release that ran (version.json's current_version), if known.
    pub current_version: Option<String>,
    /// Where each area's files came from.
    pub areas: BTreeMap<String, PathBuf>,
    /// Directories and files, parents first, as `area/relative/path`.
    pub entries: Vec<Entry>,
    /// What was left out and why (e.g. a file that vanished while being read).
    #[serde(default)]
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
}

impl Manifest {
    /// `checksums.sha256`: `sha256sum -c` lines for every file, relative to the archive's
    /// top directory.
    pub fn checksums(&self) -> String {
        let mut text = String::new();
        for e in &self.entries {
            if let Some(sha) = &e.sha256 {
                text.push_str(&format!("{sha}  ./{}\n", e.path));
            }
        }
        text
    }

    pub fn files(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind == Kind::File)
    }
}

/// A path inside the archive that is safe to extract: relative, only normal components.
pub fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// An archive read back and checked, its files in a staging directory.
#[derive(Debug)]
pub struct Staged {
    pub manifest: Manifest,
    /// The staging directory: `area/relative/path` under it for each entry.
    pub dir: StagingDir,
}

impl Staged {
    pub fn path_of(&self, entry: &Entry) -> PathBuf {
        self.dir.path().join(&entry.path)
    }
}

/// A private directory (mode 0700) removed with everything in it when dropped.
#[derive(Debug)]
pub struct StagingDir(PathBuf);

impl StagingDir {
    pub fn create(parent: &Path) -> Result<StagingDir, String> {
        StagingDir::create_for(parent, "restore")
    }

    /// A staging directory named after what it is for (`.mcp-raspi-backup-…`).
    pub fn create_for(parent: &Path, purpose: &str) -> Result<StagingDir, String> {
        use std::os::unix::fs::DirBuilderExt;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| format!("cannot name a staging directory: {e}"))?;
        let path = parent.join(format!(".mcp-raspi-{purpose}-{}", hex(&random)));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| format!("cannot create a staging directory in {}: {e}", parent.display()))?;
        Ok(StagingDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Why an archive was refused.
fn refused(archive: &Path, why: impl std::fmt::Display) -> String {
    format!("{} is not a usable mcp-raspi backup: {why}; nothing was changed", archive.display())
}

/// Reads `archive` into a new staging directory under `work` and checks it against its
/// manifest: every file listed, none unlisted, each of the listed size and SHA-256.
pub fn read_and_verify(archive: &Path, work: &Path) -> Result<Staged, String> {
    let file = fs::File::open(archive).map_err(|e| format!("cannot open {}: {e}", archive.display()))?;
    let dir = StagingDir::create(work)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    let mut top: Option<String> = None;
    let mut hashes: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut manifest_text = None;
    let mut checksums_text = None;
    let entries = tar.entries().map_err(|e| refused(archive, format!("it cannot be read as tar.gz ({e})")))?;
    for item in entries {
        let mut item = item.map_err(|e| refused(archive, format!("it is truncated or corrupt ({e})")))?;
        let raw = item.path().map_err(|e| refused(archive, e))?.to_string_lossy().into_owned();
        let Some(rel) = safe_relative(&raw) else {
            return Err(refused(archive, format!("it holds an unsafe path {raw:?}")));
        };
        let mut parts = rel.components();
        let first = parts.next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        match &top {
            None => top = Some(first.clone()),
            Some(t) if *t != first => return Err(refused(archive, "it holds more than one top directory")),
            Some(_) => {}
        }
        let inner: PathBuf = parts.collect();
        let inner_text = inner.to_string_lossy().into_owned();
        match item.header().entry_type() {
            tar::EntryType::Directory => {
                if !inner_text.is_empty() {
                    fs::create_dir_all(dir.path().join(&inner))
                        .map_err(|e| format!("cannot stage {inner_text}: {e}"))?;
                }
            }
            tar::EntryType::Regular => {
                if inner_text == MANIFEST || inner_text == CHECKSUMS {
                    let mut text = String::new();
                    item.read_to_string(&mut text)
                        .map_err(|e| refused(archive, format!("its {inner_text} is truncated or corrupt ({e})")))?;
                    if inner_text == MANIFEST {
                        manifest_text = Some(text);
                    } else {
                        checksums_text = Some(text);
                    }
                    continue;
                }
                if inner_text.is_empty() {
                    return Err(refused(archive, format!("it holds a file at its top, {raw:?}")));
                }
                let target = dir.path().join(&inner);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| format!("cannot stage {inner_text}: {e}"))?;
                }
                let mut out =
                    fs::OpenOptions::new().write(true).create_new(true).open(&target).map_err(|e| {
                        refused(archive, format!("cannot stage {inner_text} ({e}); is it listed twice?"))
                    })?;
                let mut reader = Hashing::new(&mut item);
                io::copy(&mut reader, &mut out)
                    .map_err(|e| refused(archive, format!("{inner_text} is truncated or corrupt ({e})")))?;
                out.flush().map_err(|e| format!("cannot stage {inner_text}: {e}"))?;
                hashes.insert(inner_text, (reader.count, hex(&reader.hasher.finalize())));
            }
            other => return Err(refused(archive, format!("it holds {raw:?} of type {other:?}, not a file"))),
        }
    }
    if top.is_none() {
        return Err(refused(archive, "it is empty"));
    }
    let manifest_text = manifest_text.ok_or_else(|| refused(archive, format!("it has no {MANIFEST}")))?;
    let manifest: Manifest = serde_json::from_str(&manifest_text)
        .map_err(|e| refused(archive, format!("its {MANIFEST} is not an mcp-raspi manifest ({e})")))?;
    if manifest.product != PRODUCT {
        return Err(refused(archive, format!("it belongs to {:?}", manifest.product)));
    }
    if manifest.format > FORMAT {
        return Err(refused(
            archive,
            format!(
                "it was written by mcp-raspi {} in format {}, newer than this program reads ({FORMAT})",
                manifest.written_by, manifest.format
            ),
        ));
    }
    if checksums_text.as_deref() != Some(manifest.checksums().as_str()) {
        return Err(refused(archive, format!("its {CHECKSUMS} does not match its {MANIFEST}")));
    }
    for entry in &manifest.entries {
        if safe_relative(&entry.path).is_none() {
            return Err(refused(archive, format!("its manifest names an unsafe path {:?}", entry.path)));
        }
        if entry.kind != Kind::File {
            continue;
        }
        match hashes.remove(&entry.path) {
            None => return Err(refused(archive, format!("{} is listed but missing", entry.path))),
            Some((size, sha)) if Some(&sha) != entry.sha256.as_ref() || size != entry.size => {
                return Err(refused(archive, format!("{} does not match its checksum", entry.path)))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = hashes.keys().next() {
        return Err(refused(archive, format!("{extra} is not in its manifest")));
    }
    Ok(Staged { manifest, dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_extracted() {
        assert_eq!(safe_relative("a/./b"), Some(PathBuf::from("a/b")));
        for bad in ["/etc/passwd", "a/../../b", "..", "", "."] {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
    }
}
