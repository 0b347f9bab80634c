//! Installing a downloaded release: what the ops agent (or root, through `mcp-raspi update`)
//! does with a package, or a delta, the network-facing server fetched.
//!
//! Nothing the server hands over is trusted. The manifest's signature is checked against
//! this side's own keys and the policy applied again. Under the update lock, the package
//! is copied into a private staging directory while its SHA-256 is computed, so that the
//! bytes checked are the bytes installed (the server can still write the file it
//! downloaded); its control fields must name the same package, version and architecture.
//! A delta (see [`super::delta`]) is checked the same way against the signed delta index,
//! which must be bound to the manifest's package, and applied to the installed release; the
//! tar it rebuilds must have the digest the delta promises. Only then does the install tree
//! change: the state records the update, the payload is extracted (from the package, or the
//! rebuilt tar, with the same defences), installed as `releases/<version>` and `current` is
//! switched. Every refusal before that point leaves the install tree and `version.json`
//! exactly as they were; a delta's refusals are [`InstallError::Delta`], after which the
//! caller can install the package instead.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::activate::{Installation, SwitchError};
use super::deb::{self, DebError, DebInfo};
use super::delta::{self, DeltaIndex};
use super::manifest::{self, Keyring, ManifestError, Policy};
use super::release::{self, ReleaseError};
use crate::base::hex;

/// A step of an install, reported as it completes (progress, and the seams at which the
/// tests stop the process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The manifest's signature and the policy were checked.
    Verified { version: String },
    /// The package (or the delta) was copied into the staging directory and its size and
    /// digest match.
    Copied { bytes: u64 },
    /// The delta was applied to the installed release: the payload, `bytes` long unpacked,
    /// is the one the delta promises.
    Patched { bytes: u64 },
    /// The package's control fields match, and the state records the update.
    Begun,
    /// Extracting the payload into the staging directory: archive entries read so far.
    Extracting { entries: usize },
    /// The payload was extracted into the staging directory.
    Extracted,
    /// `releases/<version>.partial` is complete and about to be renamed.
    Renaming,
    /// `releases/<version>` is complete.
    Installed,
    /// The state says `switching`; `current` is about to move.
    Switching,
    /// `current` names the new release.
    Switched,
}

/// Why a package was not installed.
#[derive(Debug)]
pub enum InstallError {
    /// The manifest, its signature or the policy refused it.
    Manifest(Box<ManifestError>),
    /// The package file is not the one the manifest describes.
    Package(String),
    /// The package's archive or control fields are wrong.
    Deb(Box<DebError>),
    /// The install tree or the state refused.
    Switch(Box<SwitchError>),
    /// The delta cannot be used (its index, the download, or the installed release it
    /// applies to); nothing was changed, and the whole package can be installed instead.
    Delta(String),
    /// Reading or writing the staging directory failed.
    Io { action: &'static str, path: PathBuf, source: io::Error },
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::Manifest(e) => e.fmt(f),
            InstallError::Package(m) => f.write_str(m),
            InstallError::Deb(e) => e.fmt(f),
            InstallError::Switch(e) => e.fmt(f),
            InstallError::Delta(m) => write!(f, "the delta update cannot be used: {m}"),
            InstallError::Io { action, path, source } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for InstallError {}

impl From<ManifestError> for InstallError {
    fn from(e: ManifestError) -> Self {
        InstallError::Manifest(Box::new(e))
    }
}

impl From<DebError> for InstallError {
    fn from(e: DebError) -> Self {
        InstallError::Deb(Box::new(e))
    }
}

impl From<SwitchError> for InstallError {
    fn from(e: SwitchError) -> Self {
        InstallError::Switch(Box::new(e))
    }
}

impl From<ReleaseError> for InstallError {
    fn from(e: ReleaseError) -> Self {
        InstallError::Switch(Box::new(SwitchError::Release(e)))
    }
}

/// What to install, and what it is checked against.
pub struct InstallRequest<'a> {
    /// The exact bytes of `manifest.json` and `manifest.json.sig`.
    pub manifest: &'a [u8],
    pub signature: &'a [u8],
    /// The download: the package, or a delta from the installed release.
    pub download: Download<'a>,
    /// This side's trusted keys.
    pub keyring: &'a Keyring,
    /// This side's policy (architecture, versions, expiry, size cap).
    pub policy: Policy,
    /// A directory only this process writes, for the package's copy and its payload.
    pub staging_dir: &'a Path,
    /// Who started the update (`mcp`, `cli`), for the state.
    pub source: &'a str,
}

/// What was downloaded for an install.
#[derive(Debug, Clone, Copy)]
pub enum Download<'a> {
    /// The release's package, as the manifest describes it.
    Package(&'a Path),
    /// A delta from the installed release, as the signed delta index describes it.
    Delta {
        /// The exact bytes of `deltas.json` and `deltas.json.sig`.
        index: &'a [u8],
        signature: &'a [u8],
        file: &'a Path,
    },
}

/// A release installed and switched to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub from: Option<String>,
    pub to: String,
}

/// The file name a release's package has in the downloads directory.
pub fn package_file_name(version: &str, architecture: &str) -> String {
    format!("{}_{version}_{architecture}.deb", manifest::PACKAGE_NAME)
}

/// Verifies, installs and switches to the release `request` describes, reporting each step
/// to `observe`. See the module documentation for what is checked before anything changes.
pub fn install(
    installation: &Installation,
    request: InstallRequest,
    observe: &mut dyn FnMut(&Step),
) -> Result<Installed, InstallError> {
    let manifest = manifest::verify(request.manifest, request.signature, request.keyring)?;
    let artifact = manifest::check(&manifest, &request.policy)?;
    let version = manifest.version.to_string();
    observe(&Step::Verified { version: version.clone() });

    if !request.staging_dir.is_dir() {
        fs::create_dir_all(request.staging_dir).map_err(io_err("create", request.staging_dir))?;
        fs::set_permissions(request.staging_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_err("set the mode of", request.staging_dir))?;
        if let Some(o) = installation.owner {
            std::os::unix::fs::chown(request.staging_dir, Some(o.uid), Some(o.gid))
                .map_err(io_err("change the owner of", request.staging_dir))?;
        }
    }
    let architecture = request.policy.architecture.clone();
    let limits = deb::Limits::for_download(request.policy.max_download_bytes);
    let payload = request.staging_dir.join(format!("{version}.payload"));
    let mut made: Vec<PathBuf> = Vec::new();
    let result = (|| {
        // Held from here on: no other install writes the staging directory meanwhile.
        let lock = installation.lock()?;
        remove_stale(request.staging_dir);
        // What the payload is extracted from, checked: the package, or the tar a delta rebuilt.
        let source = match request.download {
            Download::Package(package) => {
                let copy = request.staging_dir.join(package_file_name(&version, &architecture));
                made.push(copy.clone());
                let bytes = copy_checked(package, &copy, artifact.size, &artifact.sha256, "the manifest")?;
                observe(&Step::Copied { bytes });
                let expected =
                    DebInfo { package: manifest::PACKAGE_NAME.to_string(), version: version.clone(), architecture };
                let info = deb::read_info(&copy)?;
                if info != expected {
                    return Err(InstallError::Package(format!(
                        "the package is {} {} for {}, but the manifest describes {} {} for {}",
                        info.package,
                        info.version,
                        info.architecture,
                        expected.package,
                        expected.version,
                        expected.architecture
                    )));
                }
                Source::Package { copy, expected }
            }
            Download::Delta { index, signature, file } => {
                let tar = request.staging_dir.join(format!("{version}.payload.tar"));
                made.push(tar.clone());
                let delta = Delta { index, signature, file, tar: &tar };
                let (bytes, tar) =
                    prepare_delta(installation, &request, &manifest, artifact, delta, &mut made, observe).map_err(
                        |e| match e {
                            InstallError::Delta(_) => e,
                            other => InstallError::Delta(other.to_string()),
                        },
                    )?;
                observe(&Step::Patched { bytes });
                Source::Tar(tar)
            }
        };
        let begun = installation.begin(&lock, &version, request.source)?;
        observe(&Step::Begun);
        let from = begun.in_progress().and_then(|u| u.from.clone());
        let installed = (|| -> Result<Installed, InstallError> {
            remove_dir_if_present(&payload)?;
            let mut extracting = |entries| observe(&Step::Extracting { entries });
            match source {
                Source::Package { copy, expected } => {
                    deb::extract_payload_observed(&copy, &payload, &expected, limits, &mut extracting)?
                }
                Source::Tar(tar) => deb::extract_tar_payload(tar, &payload, limits, &mut extracting)?,
            }
            observe(&Step::Extracted);
            let root = &installation.install_root;
            release::install_release_observed(&payload, root, &version, installation.owner, &mut || {
                observe(&Step::Renaming)
            })?;
            observe(&Step::Installed);
            installation.switch_observed(&mut || observe(&Step::Switching))?;
            observe(&Step::Switched);
            Ok(Installed { from, to: version.clone() })
        })();
        if let Err(e) = &installed {
            // `current` has not moved (switching is the last step and reports its own
            // failure): the old release still runs.
            let _ = installation.fail(&e.to_string());
        }
        drop(lock);
        installed
    })();
    for path in &made {
        let _ = fs::remove_file(path);
    }
    let _ = remove_dir_if_present(&payload);
    result
}

/// What the payload is extracted from.
enum Source {
    Package {
        copy: PathBuf,
        expected: DebInfo,
    },
    /// The tar a delta rebuilt, open.
    Tar(File),
}

/// The delta of a request, and where its rebuilt tar goes.
struct Delta<'a> {
    index: &'a [u8],
    signature: &'a [u8],
    file: &'a Path,
    tar: &'a Path,
}

/// Checks the delta index and the delta against the keys and the manifest, copies the delta
/// into the staging directory and applies it to the installed release (the policy's
/// installed version), writing the rebuilt payload tar to `delta.tar`. Returns the tar's
/// size and the open file. Nothing of the install tree or the state changes here.
fn prepare_delta(
    installation: &Installation,
    request: &InstallRequest,
    manifest: &manifest::Manifest,
    artifact: &manifest::Artifact,
    delta: Delta,
    made: &mut Vec<PathBuf>,
    observe: &mut dyn FnMut(&Step),
) -> Result<(u64, File), InstallError> {
    let index = DeltaIndex::verify(delta.index, delta.signature, request.keyring).map_err(InstallError::Delta)?;
    let (from, to) = (request.policy.installed.to_string(), manifest.version.to_string());
    let architecture = &request.policy.architecture;
    let entry = index
        .delta_for(&manifest.version, &artifact.sha256, architecture, &request.policy.installed)
        .map_err(InstallError::Delta)?
        .ok_or_else(|| {
            InstallError::Delta(format!("the delta index has no {architecture} delta from {from} to {to}"))
        })?;
    if entry.size > request.policy.max_download_bytes {
        return Err(InstallError::Delta(format!(
            "the delta is {} bytes, more than the {} allowed (updates.max_download_mb)",
            entry.size, request.policy.max_download_bytes
        )));
    }
    let copy = request.staging_dir.join(delta::delta_file_name(&from, &to, architecture));
    made.push(copy.clone());
    let bytes = copy_checked(delta.file, &copy, entry.size, &entry.sha256, "the delta index")?;
    observe(&Step::Copied { bytes });
    let limits = deb::Limits::for_download(request.policy.max_download_bytes);
    let expected = delta::Expected { architecture, from: &from, to: &to };
    let applied = delta::apply(&installation.install_root, &copy, &expected, delta.tar, limits);
    // Not needed any more: the staging directory holds the rebuilt tar and soon its payload.
    let _ = fs::remove_file(&copy);
    applied.map_err(|e| InstallError::Delta(e.to_string()))
}

/// Removes what an install killed before its own cleanup left in the staging directory:
/// other package and delta copies, payloads, and the tars a delta rebuilds (a later install
/// of the same version replaces them, but an update that went on to another version would
/// leave them for good). Called with the update lock held, before this install writes
/// anything there: every install writes the staging directory under that lock only.
fn remove_stale(staging_dir: &Path) {
    let Ok(entries) = fs::read_dir(staging_dir) else { return };
    let prefix = format!("{}_", manifest::PACKAGE_NAME);
    for entry in entries.flatten() {
        let (path, name) = (entry.path(), entry.file_name());
        let name = name.to_string_lossy();
        if name.ends_with(".payload") {
            let _ = remove_dir_if_present(&path);
        } else if (name.starts_with(&prefix) && (name.ends_with(".deb") || name.ends_with(".delta")))
            || name.ends_with(".payload.tar")
            || name.ends_with(".payload.tar.base")
        {
            let _ = fs::remove_file(&path);
        }
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InstallError + 'a {
    move |source| InstallError::Io { action, path: path.to_path_buf(), source }
}

fn remove_dir_if_present(path: &Path) -> Result<(), InstallError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Copies `from` (a regular file, never through a symlink) to `to` (created afresh, 0600)
/// while hashing it, reading at most one byte more than `size`; the copy must be exactly
/// `size` bytes with digest `sha256`, as `what` (the manifest, the delta index) gives them.
/// Returns the size.
fn copy_checked(from: &Path, to: &Path, size: u64, sha256: &[u8; 32], what: &str) -> Result<u64, InstallError> {
    let source = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(from)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => {
                InstallError::Package(format!("{} is a symlink; the downloaded package must be a file", from.display()))
            }
            _ => io_err("open the downloaded package", from)(e),
        })?;
    let meta = source.metadata().map_err(io_err("read", from))?;
    if !meta.is_file() {
        return Err(InstallError::Package(format!("{} is not a regular file", from.display())));
    }
    let _ = fs::remove_file(to);
    let mut target = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(to)
        .map_err(io_err("create", to))?;
    let mut hasher = Sha256::new();
    let mut copied = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut limited = source.take(size.saturating_add(1));
    loop {
        let n = limited.read(&mut buffer).map_err(io_err("read", from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        target.write_all(&buffer[..n]).map_err(io_err("write", to))?;
        copied += n as u64;
    }
    if copied != size {
        let _ = fs::remove_file(to);
        let larger = if copied > size { "larger" } else { "smaller" };
        return Err(InstallError::Package(format!(
            "{} is {larger} than the {size} bytes {what} gives (read {copied}); download it again",
            from.display()
        )));
    }
    let digest: [u8; 32] = hasher.finalize().into();
    if &digest != sha256 {
        let _ = fs::remove_file(to);
        return Err(InstallError::Package(format!(
            "{} has SHA-256 {}, not {} as {what} says; it was altered or damaged",
            from.display(),
            hex(&digest),
            hex(sha256)
        )));
    }
    target.sync_all().map_err(io_err("sync", to))?;
    Ok(copied)
}

/// Reads a whole small file, refusing one larger than `max` bytes.
pub fn read_small(path: &Path, max: usize) -> Result<Vec<u8>, InstallError> {
    let file = File::open(path).map_err(io_err("read", path))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes).map_err(io_err("read", path))?;
    if bytes.len() > max {
        return Err(InstallError::Package(format!("{} is larger than {max} bytes", path.display())));
    }
    Ok(bytes)
}

/// What this device accepts: the release `current` names as the installed version (the
/// package's own version when there is none yet), the highest version ever installed from
/// the state, this machine's architecture, and the download cap.
pub fn device_policy(installation: &Installation, max_download_bytes: u64) -> Result<Policy, String> {
    let state = installation.state().map_err(|e| e.to_string())?;
    let current = installation.current().map_err(|e| e.to_string())?;
    let running = current.as_deref().unwrap_or(crate::base::VERSION);
    let parse = |v: &str| {
        semver::Version::parse(v).map_err(|e| format!("the installed version {v:?} is not a semantic version: {e}"))
    };
    Ok(Policy {
        architecture: manifest::this_architecture().to_string(),
        installed: parse(running)?,
        highest_installed: state.highest_installed.as_deref().map(parse).transpose()?,
        channel: None,
        target_version: None,
        now: std::time::SystemTime::now(),
        max_download_bytes,
    })
}
