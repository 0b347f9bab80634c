//! A migration of a file on disk: reading it, checking that the result loads, showing the
//! diff, and writing the result with a backup.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{known_list, migrate_text, MigrateError, Migration, SchemaVersion};
use crate::config::{hex, Config, CONFIG_VERSION};

/// A migration of a file, checked and ready to apply.
#[derive(Debug)]
pub struct Plan {
    pub path: PathBuf,
    original: Vec<u8>,
    pub migration: Migration,
    /// Whether the result loads (migrated on to the version this build reads, when the
    /// target is older); the loader's error otherwise.
    pub loads: Result<(), String>,
}

/// Reads `path` and works out its migration to `to_version` (`1.2` or `1.2.0`).
pub fn plan(path: &Path, to_version: &str) -> Result<Plan, MigrateError> {
    let to = SchemaVersion::parse(to_version).filter(|v| v.is_known()).ok_or_else(|| {
        MigrateError::Target(format!(
            "--to-version {to_version:?} is not a version this build migrates to ({}; it reads {CONFIG_VERSION})",
            known_list()
        ))
    })?;
    let original = fs::read(path).map_err(|source| MigrateError::Read { path: path.to_path_buf(), source })?;
    let text = std::str::from_utf8(&original).map_err(|_| MigrateError::NotText { path: path.to_path_buf() })?;
    let migration = migrate_text(text, to).map_err(|e| match e {
        MigrateError::Parse { message, .. } => MigrateError::Parse { path: path.to_path_buf(), message },
        other => other,
    })?;
    let loads = if migration.steps.is_empty() { Ok(()) } else { check_loads(path, text, &migration) };
    Ok(Plan { path: path.to_path_buf(), original, migration, loads })
}

/// Whether the migrated text loads and validates with the real loader (environment
/// overrides and secrets aside: `mcp-raspi config validate` checks those).
fn check_loads(path: &Path, original: &str, migration: &Migration) -> Result<(), String> {
    let current = SchemaVersion::current();
    let (text, origin) = if migration.to == current {
        (migration.text.clone(), format!("{} as migrated to {current}", path.display()))
    } else {
        let onward = migrate_text(&migration.text, current).map_err(|e| e.to_string())?;
        (onward.text, format!("{} as migrated to {} and on to {current}", path.display(), migration.to))
    };
    let loaded = Config::from_yaml(&text, &origin).and_then(|c| c.validate());
    let Err(e) = loaded else { return Ok(()) };
    let mut message = e.to_string();
    // Line numbers of the loader's message are those of the migrated text.
    let line = serde_saphyr::from_str::<Config>(&text).err().and_then(|e| e.location()).map(|l| l.line() as usize);
    if let (Some(line), None) = (line, &migration.rewritten) {
        if migration.to == current {
            match original_line(original, &text, line) {
                Some(old) => message
                    .push_str(&format!("\n(line {line} of the migrated text is line {old} of {})", path.display())),
                None => message.push_str(&format!("\n(line {line} is a line the migration wrote)")),
            }
        }
    }
    Err(message)
}

/// The line (1-based) of `old` that line `line` of `new` was copied from.
fn original_line(old: &str, new: &str, line: usize) -> Option<usize> {
    let index = line.checked_sub(1)?;
    let diff = similar::TextDiff::from_lines(old, new);
    diff.ops().iter().find_map(|op| match *op {
        similar::DiffOp::Equal { old_index, new_index, len } if (new_index..new_index + len).contains(&index) => {
            Some(old_index + (index - new_index) + 1)
        }
        _ => None,
    })
}

impl Plan {
    /// A unified diff from the file to the migrated text; a removed secret's value is
    /// shown as `<redacted>`.
    pub fn diff(&self) -> String {
        let original = String::from_utf8_lossy(&self.original);
        let lines = &self.migration.secret_lines;
        let mut shown = String::new();
        for (i, line) in original.lines().enumerate() {
            match lines.first() {
                Some(first) if *first == i => match line.find("jwt_secret") {
                    Some(at) => shown.push_str(&format!("{}jwt_secret: <redacted>\n", &line[..at])),
                    None => shown.push_str("<redacted>\n"),
                },
                _ if lines.contains(&i) => {}
                _ => {
                    shown.push_str(line);
                    shown.push('\n');
                }
            }
        }
        let path = self.path.display();
        similar::TextDiff::from_lines(shown.as_str(), self.migration.text.as_str())
            .unified_diff()
            .context_radius(3)
            .header(&format!("{path} ({})", self.migration.from), &format!("{path} ({})", self.migration.to))
            .to_string()
    }
}

/// What `apply` did.
#[derive(Debug)]
pub struct Applied {
    /// The file as it was.
    pub backup: PathBuf,
    /// SHA-256 of the new file.
    pub sha256: String,
}

/// Writes a planned migration: checks that the file is still what was planned and that the
/// result loads, keeps a backup beside it, then replaces it atomically with the same mode
/// (and owner, where the user running it may give it).
pub fn apply(plan: &Plan) -> Result<Applied, MigrateError> {
    plan.loads.clone().map_err(MigrateError::WouldNotLoad)?;
    let io = |what: &str, path: &Path, e: std::io::Error| {
        MigrateError::Write(format!("cannot {what} {}: {e}; the file is as it was", path.display()))
    };
    // Through a symbolic link, the file it points at is replaced, not the link.
    let target =
        fs::canonicalize(&plan.path).map_err(|source| MigrateError::Read { path: plan.path.clone(), source })?;
    let meta = fs::metadata(&target).map_err(|source| MigrateError::Read { path: target.clone(), source })?;
    let now = fs::read(&target).map_err(|source| MigrateError::Read { path: target.clone(), source })?;
    if now != plan.original {
        return Err(MigrateError::Changed { path: plan.path.clone() });
    }
    let mode = meta.permissions().mode() & 0o7777;
    let owner = keepable_owner(meta.uid(), meta.gid());
    let backup =
        write_backup(&target, &plan.original, mode, owner).map_err(|(path, e)| io("write the backup", &path, e))?;
    crate::update::state::write_atomically(&target, plan.migration.text.as_bytes(), mode, owner)
        .map_err(|e| MigrateError::Write(format!("{e}; the file is as it was (backup: {})", backup.display())))?;
    Ok(Applied { backup, sha256: hex(&Sha256::digest(plan.migration.text.as_bytes())) })
}

/// The owner to give the new file and the backup: the file's, when the user running this
/// may give it (root; or the file's owner, when its group is one of the user's). Otherwise
/// the new file is the user's own, as any file they write.
fn keepable_owner(uid: u32, gid: u32) -> Option<crate::update::release::Owner> {
    use nix::unistd::{getegid, geteuid, getgroups, Gid};
    let keep = geteuid().is_root()
        || (geteuid().as_raw() == uid
            && (getegid().as_raw() == gid || getgroups().is_ok_and(|groups| groups.contains(&Gid::from_raw(gid)))));
    keep.then_some(crate::update::release::Owner { uid, gid })
}

/// Writes `bytes` as `FILE.bak` beside `path`, or `FILE.<UTC time>.bak` when that exists;
/// never over an existing file.
fn write_backup(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<crate::update::release::Owner>,
) -> Result<PathBuf, (PathBuf, std::io::Error)> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let candidates = std::iter::once(format!("{name}.bak"))
        .chain(std::iter::once(format!("{name}.{stamp}.bak")))
        .chain((2..100).map(|n| format!("{name}.{stamp}-{n}.bak")));
    for candidate in candidates {
        let backup = path.with_file_name(candidate);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&backup);
        let mut file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err((backup, e)),
        };
        let written = (|| {
            file.write_all(bytes)?;
            if let Some(o) = owner {
                std::os::unix::fs::fchown(&file, Some(o.uid), Some(o.gid))?;
            }
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.sync_all()?;
            let dir = backup.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            fs::File::open(dir).and_then(|d| d.sync_all())
        })();
        return match written {
            Ok(()) => Ok(backup),
            Err(e) => {
                let _ = fs::remove_file(&backup);
                Err((backup, e))
            }
        };
    }
    Err((path.with_file_name(format!("{name}.bak")), std::io::Error::other("every backup name is taken")))
}
