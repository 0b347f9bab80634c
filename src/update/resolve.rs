//! Finding and fetching an update: the signed manifest of a channel (or of one version)
//! from the update repository, checked against the trusted keys and this device's policy,
//! and the package it names, downloaded into the state directory's `downloads/`.
//!
//! The repository's layout, as `make update-repo` builds it:
//!
//! ```text
//! <server_url>/stable/manifest.json        <server_url>/stable/manifest.json.sig
//! <server_url>/beta/manifest.json          <server_url>/beta/manifest.json.sig
//! <server_url>/versions/<v>/manifest.json  <server_url>/versions/<v>/manifest.json.sig
//! <server_url>/pool/mcp-raspi_<v>_<arch>.deb
//! ```
//!
//! A release may also have deltas (see [`super::delta`]): `deltas.json` and
//! `deltas.json.sig` next to each of its manifests, and the deltas in the pool,
//! `mcp-raspi_<from>_to_<v>_<arch>.delta`. A device that has `updates.delta` on looks for
//! one from the release it runs ([`find_delta`]) and falls back to the package when there is
//! none or it cannot be used.
//!
//! The server and `mcp-raspi update` share this code; the installer checks everything again.

use std::fmt;
use std::path::{Path, PathBuf};

use super::delta::{self, index::MAX_INDEX_BYTES, DeltaEntry, DeltaIndex, INDEX_FILE};
use super::download::{DownloadError, Fetcher, Progress};
use super::install::package_file_name;
use super::manifest::{
    self, Artifact, Keyring, Manifest, ManifestError, Policy, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES,
};

/// What to update to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The release a channel offers now.
    Channel(String),
    /// One version.
    Version(semver::Version),
}

impl Target {
    /// The manifest's URL under the repository at `server_url`.
    pub fn manifest_url(&self, server_url: &str) -> String {
        let base = server_url.trim_end_matches('/');
        match self {
            Target::Channel(channel) => format!("{base}/{channel}/manifest.json"),
            Target::Version(version) => format!("{base}/versions/{version}/manifest.json"),
        }
    }
}

/// Why no update could be resolved or fetched.
#[derive(Debug)]
pub enum ResolveError {
    /// Fetching the manifest, its signature or the package failed.
    Download(Box<DownloadError>),
    /// The manifest was refused.
    Manifest(Box<ManifestError>),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Download(e) => e.fmt(f),
            ResolveError::Manifest(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ResolveError {}

impl From<DownloadError> for ResolveError {
    fn from(e: DownloadError) -> Self {
        ResolveError::Download(Box::new(e))
    }
}

impl From<ManifestError> for ResolveError {
    fn from(e: ManifestError) -> Self {
        ResolveError::Manifest(Box::new(e))
    }
}

/// A manifest that passed the signature and policy checks.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub manifest_url: String,
    /// The exact bytes fetched, which the installer verifies again.
    pub manifest_bytes: Vec<u8>,
    pub signature_bytes: Vec<u8>,
    pub manifest: Manifest,
    pub artifact: Artifact,
    /// The package's absolute URL.
    pub artifact_url: String,
}

/// What the repository offers.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// The channel offers nothing newer than what is installed.
    UpToDate { offered: semver::Version },
    /// A newer release this device accepts.
    Available(Box<Resolved>),
}

/// Fetches and checks the manifest for `target`. A channel that offers the running version
/// or an older one is up to date; an explicit version that is not newer is refused, since
/// it could only be a downgrade (which is what a rollback is for).
pub async fn resolve(
    fetcher: &Fetcher,
    server_url: &str,
    target: &Target,
    keyring: &Keyring,
    policy: &Policy,
) -> Result<Resolution, ResolveError> {
    let manifest_url = target.manifest_url(server_url);
    let manifest_bytes = fetcher.fetch_small(&manifest_url, MAX_MANIFEST_BYTES).await?;
    let signature_url = format!("{manifest_url}.sig");
    let signature_bytes = fetcher.fetch_small(&signature_url, MAX_SIGNATURE_BYTES).await?;
    let manifest = manifest::verify(&manifest_bytes, &signature_bytes, keyring)?;
    let mut policy = policy.clone();
    match target {
        Target::Channel(channel) => policy.channel = Some(channel.clone()),
        Target::Version(version) => policy.target_version = Some(version.clone()),
    }
    let artifact = match manifest::check(&manifest, &policy) {
        Ok(artifact) => artifact.clone(),
        Err(ManifestError::AlreadyInstalled { version } | ManifestError::Downgrade { offered: version, .. })
            if matches!(target, Target::Channel(_)) =>
        {
            return Ok(Resolution::UpToDate { offered: version });
        }
        Err(e) => return Err(e.into()),
    };
    let artifact_url = manifest::artifact_url(&manifest_url, &artifact.url)?;
    Ok(Resolution::Available(Box::new(Resolved {
        manifest_url,
        manifest_bytes,
        signature_bytes,
        manifest,
        artifact,
        artifact_url,
    })))
}

/// Downloads the package of `resolved` into `downloads_dir` (resuming an earlier partial
/// download), checking its size while it streams and its SHA-256 at the end. Returns the
/// file's path.
pub async fn download(
    fetcher: &Fetcher,
    resolved: &Resolved,
    downloads_dir: &Path,
    architecture: &str,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<PathBuf, ResolveError> {
    let name = package_file_name(&resolved.manifest.version.to_string(), architecture);
    let artifact = &resolved.artifact;
    fetch_into(fetcher, &resolved.artifact_url, downloads_dir, &name, artifact.size, artifact.sha256, progress).await
}

/// Downloads `url` as `downloads_dir/name`, checking its size and SHA-256, readable by the
/// group (the ops agent's) and nobody else.
async fn fetch_into(
    fetcher: &Fetcher,
    url: &str,
    downloads_dir: &Path,
    name: &str,
    size: u64,
    sha256: [u8; 32],
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<PathBuf, ResolveError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| ResolveError::Manifest(Box::new(ManifestError::Io { action, path, source }))
    };
    std::fs::create_dir_all(downloads_dir).map_err(io("create", downloads_dir))?;
    // The ops agent reads the download through the group (the server's umask is 0077).
    std::fs::set_permissions(downloads_dir, std::fs::Permissions::from_mode(0o750))
        .map_err(io("set the mode of", downloads_dir))?;
    let dest = downloads_dir.join(name);
    fetcher.download(url, &dest, size, sha256, progress).await?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o640)).map_err(io("set the mode of", &dest))?;
    Ok(dest)
}

/// A delta to the release of a [`Resolved`] from the release this device runs.
#[derive(Debug, Clone)]
pub struct ResolvedDelta {
    /// The exact bytes of `deltas.json` and its signature, which the installer verifies again.
    pub index_bytes: Vec<u8>,
    pub signature_bytes: Vec<u8>,
    pub entry: DeltaEntry,
    /// The delta's absolute URL.
    pub url: String,
}

/// Looks for a delta from the installed release (`policy.installed`) to `resolved`'s, for
/// this architecture, in the signed index next to the manifest. `Ok(None)` when the release
/// publishes no index or the index has no such delta, or when the delta would not be
/// smaller than the package; an error when the index is there but cannot be trusted (the
/// caller then downloads the package, and says why).
pub async fn find_delta(
    fetcher: &Fetcher,
    resolved: &Resolved,
    keyring: &Keyring,
    policy: &Policy,
) -> Result<Option<ResolvedDelta>, String> {
    let index_url = manifest::artifact_url(&resolved.manifest_url, INDEX_FILE).map_err(|e| e.to_string())?;
    let index_bytes = match fetcher.fetch_small(&index_url, MAX_INDEX_BYTES).await {
        Ok(bytes) => bytes,
        Err(DownloadError::Status { status, .. }) if status == reqwest::StatusCode::NOT_FOUND => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let signature_bytes =
        fetcher.fetch_small(&format!("{index_url}.sig"), MAX_SIGNATURE_BYTES).await.map_err(|e| e.to_string())?;
    let index = DeltaIndex::verify(&index_bytes, &signature_bytes, keyring)?;
    let (version, package) = (&resolved.manifest.version, &resolved.artifact.sha256);
    let found = index.delta_for(version, package, &policy.architecture, &policy.installed);
    let Some(entry) = found.map_err(|e| format!("{index_url}: {e}"))? else { return Ok(None) };
    if entry.size >= resolved.artifact.size || entry.size > policy.max_download_bytes {
        return Ok(None);
    }
    let url = manifest::artifact_url(&index_url, &entry.url).map_err(|e| e.to_string())?;
    let entry = entry.clone();
    Ok(Some(ResolvedDelta { index_bytes, signature_bytes, entry, url }))
}

/// Downloads the delta into `downloads_dir` (resuming, checking size and SHA-256 against the
/// signed index) under the name the installer looks for. Returns the file's path.
pub async fn download_delta(
    fetcher: &Fetcher,
    resolved: &Resolved,
    found: &ResolvedDelta,
    downloads_dir: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<PathBuf, ResolveError> {
    let name = delta::delta_file_name(
        &found.entry.from.to_string(),
        &resolved.manifest.version.to_string(),
        &found.entry.architecture,
    );
    fetch_into(fetcher, &found.url, downloads_dir, &name, found.entry.size, found.entry.sha256, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_and_a_version_have_their_own_manifest() {
        let channel = Target::Channel("stable".into());
        assert_eq!(channel.manifest_url("https://u.example/r/"), "https://u.example/r/stable/manifest.json");
        let version = Target::Version(semver::Version::new(0, 2, 0));
        assert_eq!(version.manifest_url("http://127.0.0.1:9/r"), "http://127.0.0.1:9/r/versions/0.2.0/manifest.json");
    }
}
