//! The signed release manifest of self-update: what a publisher writes next to the Debian
//! packages of a release, and what a device checks before it downloads any of them.
//!
//! Trust rests on one Ed25519 release key. The publisher keeps the secret half; devices
//! hold the public half in the trusted keys directory ([`DEFAULT_KEYS_DIR`]). A device
//! believes nothing in a manifest until its signature verifies against a trusted key, then
//! applies its own [`Policy`] (package, channel, expiry, no downgrade, architecture, size)
//! before it picks the one artifact to fetch; the artifact's SHA-256 then binds the
//! downloaded package to the signed manifest.
//!
//! # Formats
//!
//! These files are the contract between the publisher and the devices; changing them means
//! changing both.
//!
//! ## `manifest.json`
//!
//! A UTF-8 JSON object of at most [`MAX_MANIFEST_BYTES`]; unknown fields, duplicate fields
//! and duplicate architectures are refused:
//!
//! ```json
//! {
//!   "name": "mcp-raspi",
//!   "version": "0.2.0",
//!   "channel": "stable",
//!   "released_at": "2026-12-02T19:00:00Z",
//!   "expires_at": "2027-01-01T00:00:00Z",
//!   "min_upgrade_from": "0.1.0",
//!   "artifacts": {
//!     "arm64": {
//!       "url": "../pool/mcp-raspi_0.2.0_arm64.deb",
//!       "size": 3145728,
//!       "sha256": "<64 lowercase hex digits>"
//!     }
//!   }
//! }
//! ```
//!
//! - `name` is the Debian package name, [`PACKAGE_NAME`] for this program.
//! - `version` and `min_upgrade_from` are semantic versions; `min_upgrade_from` may be
//!   absent or `null`, meaning any installed version may upgrade.
//! - `channel` is a name such as `stable` or `beta` (letters, digits, `.`, `_`, `-`).
//! - `released_at` and `expires_at` are RFC 3339 UTC times (`Z` or `+00:00`), the
//!   expiry later than the release; a device refuses an expired manifest, so an attacker
//!   who can only replay old files cannot hold devices on an old release forever.
//! - `artifacts` maps Debian architecture names (`amd64`, `arm64`, `armhf`) to the package
//!   for that architecture: its `url`, absolute (`http`/`https`) or relative to the URL the
//!   manifest was fetched from (see [`artifact_url`]), its `size` in bytes and its `sha256`.
//!
//! ## `manifest.json.sig`
//!
//! ```json
//! {"key_id":"<16 lowercase hex digits>","algorithm":"ed25519","signature":"<base64>"}
//! ```
//!
//! The signature is Ed25519 over the exact bytes of `manifest.json`, base64 (standard
//! alphabet, padded) encoded; the manifest is never re-serialized before verifying, so what
//! is verified is what is parsed. The file is at most [`MAX_SIGNATURE_BYTES`].
//!
//! ## Keys
//!
//! A key id is the first 16 hex digits of the SHA-256 of the 32-byte public key. A device
//! computes it from the key itself; file names are only a convenience for people.
//!
//! - `<key id>.pub` holds one line, `mcp-raspi-release-key ed25519 <base64 of the 32-byte
//!   public key>`, optionally followed by a space and a comment. The trusted keys directory
//!   holds any number of them; files not ending in `.pub` are ignored.
//! - `<key id>.secret`, mode 0600, holds one line, `mcp-raspi-release-secret ed25519
//!   <base64 of the 32-byte seed>`. [`keygen`] never overwrites an existing file, and a
//!   secret readable by group or others is refused when read.
//!
//! [`Keyring::load`] does not let one unreadable key file hide the good ones: the keys that
//! parse are trusted, and every file that does not is kept in [`Keyring::problems`], for the
//! caller to report and for the "unknown key" error to mention, since a broken copy of the
//! right key is the likeliest reason a manifest's key is unknown.
//!
//! # Layout
//!
//! This file holds what every part shares: the constants of the formats, [`ManifestError`]
//! and a few helpers. Each part has its own file, and everything is re-exported here, so
//! callers name it all `manifest::...`:
//!
//! - `format`: [`Manifest`], [`Artifact`] and `manifest.json`;
//! - `signature`: [`sign`] and [`verify`], `manifest.json.sig`;
//! - `keys`: key ids, key files, [`keygen`] and the [`Keyring`];
//! - `policy`: the device's [`Policy`] and [`check`];
//! - `url`: [`artifact_url`];
//! - `publish`: [`build_manifest`] and [`file_digest`], for the publisher.

mod format;
mod keys;
mod policy;
mod publish;
mod signature;
mod url;

#[cfg(test)]
mod fixtures;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use semver::Version;

pub(crate) use self::format::{check_architecture, parse_sha256};
pub use self::format::{Artifact, Manifest};
pub use self::keys::{keygen, GeneratedKey, KeyFormatError, KeyId, Keyring, PublicKey, SecretKey};
pub use self::policy::{check, Policy};
pub use self::publish::{build_manifest, file_digest, FileDigest, PublishedDeb};
pub use self::signature::{sign, verify, verify_signature};
pub use self::url::artifact_url;
pub(crate) use self::url::check_url_text;
use crate::base::hex;

/// The Debian package that self-update installs.
pub const PACKAGE_NAME: &str = "mcp-raspi";
/// Where devices look for trusted release keys.
pub const DEFAULT_KEYS_DIR: &str = "/etc/mcp-raspi/keys";
/// The largest `manifest.json` accepted; real ones are a few hundred bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// The largest `manifest.json.sig` accepted; real ones are about 150 bytes.
pub const MAX_SIGNATURE_BYTES: usize = 1024;
/// How far ahead of this machine's clock a release time may be, for clocks a little off.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
/// The only signature algorithm.
pub const ALGORITHM: &str = "ed25519";
/// The first word of a public key file.
pub const PUBLIC_KEY_HEADER: &str = "mcp-raspi-release-key";
/// The first word of a secret key file.
pub const SECRET_KEY_HEADER: &str = "mcp-raspi-release-secret";

/// The first second of year 10000, which RFC 3339 cannot write.
const END_OF_RFC3339_SECS: u64 = 253_402_300_800;

/// The Debian architecture this program was built for, the key of its artifact in a
/// manifest. 32-bit ARM is taken to be `armhf`, which is what Raspberry Pi OS uses.
pub fn this_architecture() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "amd64"
    } else if cfg!(target_arch = "aarch64") {
        "arm64"
    } else if cfg!(target_arch = "arm") {
        "armhf"
    } else {
        std::env::consts::ARCH
    }
}

/// Why a manifest, a signature or a key was refused, or a key could not be written.
#[derive(Debug)]
pub enum ManifestError {
    /// `manifest.json` is larger than [`MAX_MANIFEST_BYTES`].
    OversizedManifest { size: usize, max: usize },
    /// `manifest.json.sig` is larger than [`MAX_SIGNATURE_BYTES`].
    OversizedSignature { size: usize, max: usize },
    /// `manifest.json.sig` is not a well-formed signature file.
    InvalidSignatureFile { reason: String },
    /// The signature file names an algorithm other than Ed25519.
    WrongAlgorithm { found: String },
    /// The signing key is not among the trusted keys.
    UnknownKey {
        key_id: KeyId,
        /// The directory the trusted keys were loaded from, if any.
        keys_dir: Option<PathBuf>,
        known: Vec<KeyId>,
        /// Key files of that directory that could not be used, as messages.
        broken: Vec<String>,
    },
    /// The signature does not match the manifest's bytes under the named key.
    BadSignature { key_id: KeyId },
    /// The manifest (verified, or about to be published) is not valid.
    InvalidManifest { reason: String },
    /// A string is not a key id (16 lowercase hex digits).
    InvalidKeyId { found: String },
    /// A key file does not hold a usable key.
    KeyFile { path: PathBuf, error: KeyFormatError },
    /// The trusted keys directory cannot be read.
    KeysDir { path: PathBuf, source: io::Error },
    /// A secret key file may be read by users other than its owner.
    SecretKeyPermissions { path: PathBuf, mode: u32 },
    /// A key file to be created already exists.
    KeyExists { path: PathBuf },
    /// A filesystem operation failed.
    Io { action: &'static str, path: PathBuf, source: io::Error },
    /// The operating system's random source failed.
    Random { reason: String },
    /// The manifest describes another package.
    WrongPackage { found: String },
    /// The manifest is for another channel than the one asked for.
    WrongChannel { found: String, wanted: String },
    /// The manifest offers another version than the one asked for.
    WrongTargetVersion { found: Version, wanted: Version },
    /// The manifest's expiry time has passed.
    Expired { expires_at: SystemTime, now: SystemTime },
    /// The manifest's release time is further in the future than clock skew explains.
    ReleasedInFuture { released_at: SystemTime, now: SystemTime },
    /// The manifest offers the version that is running.
    AlreadyInstalled { version: Version },
    /// The manifest offers a version older than the one running.
    Downgrade { offered: Version, installed: Version },
    /// The manifest offers a version not newer than the highest ever installed here.
    NotNewerThanHighest { offered: Version, highest: Version },
    /// The running version is too old to upgrade straight to the offered one.
    TooOldToUpgrade { installed: Version, min_upgrade_from: Version, offered: Version },
    /// The manifest has no package for this machine's architecture.
    NoArtifact { architecture: String, available: Vec<String> },
    /// The package for this architecture is listed with size 0.
    EmptyArtifact { architecture: String },
    /// The package for this architecture is larger than the download limit.
    ArtifactTooLarge { architecture: String, size: u64, max: u64 },
    /// A URL is malformed, not http(s), or cannot be resolved.
    InvalidUrl { url: String, reason: String },
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::OversizedManifest { size, max } => write!(
                f,
                "oversized manifest: {size} bytes, at most {max} are accepted; \
                 the URL probably does not point at a manifest.json"
            ),
            ManifestError::OversizedSignature { size, max } => write!(
                f,
                "oversized signature file: {size} bytes, at most {max} are accepted; \
                 the URL probably does not point at a manifest.json.sig"
            ),
            ManifestError::InvalidSignatureFile { reason } => write!(
                f,
                "the manifest's signature file is not valid ({reason}); \
                 fetch it again, and if it stays so, the publisher must sign the manifest again"
            ),
            ManifestError::WrongAlgorithm { found } => write!(
                f,
                "the manifest is signed with algorithm {found:?}, but only {ALGORITHM} is accepted; \
                 the publisher must sign it with an {ALGORITHM} release key"
            ),
            ManifestError::UnknownKey { key_id, keys_dir, known, broken } => {
                write!(f, "the manifest is signed by key {key_id}, which is not trusted here")?;
                match keys_dir {
                    Some(dir) => write!(f, " (no usable key with that id in {})", dir.display())?,
                    None => write!(f, " (not among the trusted keys)")?,
                }
                if known.is_empty() {
                    write!(f, "; no key is trusted at all")?;
                } else {
                    let known: Vec<&str> = known.iter().map(KeyId::as_str).collect();
                    write!(f, "; trusted keys: {}", known.join(", "))?;
                }
                if !broken.is_empty() {
                    write!(f, "; key files that could not be used: {}", broken.join("; "))?;
                }
                write!(f, "; install the publisher's {key_id}.pub there if you trust it")
            }
            ManifestError::BadSignature { key_id } => write!(
                f,
                "the manifest's signature does not verify with key {key_id}: the manifest was altered \
                 or damaged after signing, or signed with another key of the same id; do not install it, \
                 and ask the publisher to publish a freshly signed manifest"
            ),
            ManifestError::InvalidManifest { reason } => write!(f, "invalid manifest: {reason}"),
            ManifestError::InvalidKeyId { found } => {
                write!(f, "{found:?} is not a key id (16 lowercase hexadecimal digits)")
            }
            ManifestError::KeyFile { path, error } => write!(f, "{}: {error}", path.display()),
            ManifestError::KeysDir { path, source } => write!(
                f,
                "cannot read the trusted keys directory {}: {source}; create it and put the release \
                 public key (a <key id>.pub file) in it",
                path.display()
            ),
            ManifestError::SecretKeyPermissions { path, mode } => write!(
                f,
                "{} has mode {mode:04o}, so users other than its owner may read the release secret key; \
                 run chmod 600 on it (and consider the key exposed if others could read it)",
                path.display()
            ),
            ManifestError::KeyExists { path } => write!(
                f,
                "{} already exists and is never overwritten; move it away first if you mean to replace it",
                path.display()
            ),
            ManifestError::Io { action, path, source } => {
                write!(f, "cannot {action} {}: {source}", path.display())
            }
            ManifestError::Random { reason } => {
                write!(f, "the operating system's random number source failed: {reason}")
            }
            ManifestError::WrongPackage { found } => write!(
                f,
                "the manifest is for package {found:?}, not {PACKAGE_NAME}; \
                 point the update URL at {PACKAGE_NAME}'s own manifest"
            ),
            ManifestError::WrongChannel { found, wanted } => write!(
                f,
                "the manifest is for channel {found:?}, but channel {wanted:?} was asked for; \
                 use the manifest URL of channel {wanted:?}, or ask for channel {found:?}"
            ),
            ManifestError::WrongTargetVersion { found, wanted } => write!(
                f,
                "the manifest offers version {found}, but version {wanted} was asked for; \
                 ask for {found}, or use a manifest URL that offers {wanted}"
            ),
            ManifestError::Expired { expires_at, now } => write!(
                f,
                "the manifest expired at {} (the time here is {}); the publisher must sign a fresh one, \
                 or, if this machine's clock is wrong, set it right (timedatectl, NTP)",
                rfc3339(*expires_at),
                rfc3339(*now)
            ),
            ManifestError::ReleasedInFuture { released_at, now } => write!(
                f,
                "the manifest says it was released at {}, later than the time here ({}) by more than {} \
                 minutes; this machine's clock is probably behind: set it right (timedatectl, NTP)",
                rfc3339(*released_at),
                rfc3339(*now),
                CLOCK_SKEW_ALLOWANCE.as_secs() / 60
            ),
            ManifestError::AlreadyInstalled { version } => {
                write!(f, "{version} is the version running here; there is nothing to update")
            }
            ManifestError::Downgrade { offered, installed } => write!(
                f,
                "{offered} is older than {installed}, the version running here; \
                 updates never go back, to go back use manage.rollback"
            ),
            ManifestError::NotNewerThanHighest { offered, highest } => write!(
                f,
                "{offered} is not newer than {highest}, the highest version ever installed here; \
                 to go back use manage.rollback, to try {highest} again name it as target_version"
            ),
            ManifestError::TooOldToUpgrade { installed, min_upgrade_from, offered } => write!(
                f,
                "{offered} can only be installed over {min_upgrade_from} or later, and {installed} runs here; \
                 first update to a release between {min_upgrade_from} and {offered}"
            ),
            ManifestError::NoArtifact { architecture, available } => write!(
                f,
                "the manifest has no package for architecture {architecture} (it has: {}); \
                 the publisher must build and list one",
                if available.is_empty() { "none".to_string() } else { available.join(", ") }
            ),
            ManifestError::EmptyArtifact { architecture } => write!(
                f,
                "the manifest lists the {architecture} package with size 0; the publisher must rebuild the manifest"
            ),
            ManifestError::ArtifactTooLarge { architecture, size, max } => write!(
                f,
                "the {architecture} package is {size} bytes, over the download limit of {max} bytes; \
                 raise the limit in the configuration if that size is expected"
            ),
            ManifestError::InvalidUrl { url, reason } => write!(f, "invalid URL {url:?}: {reason}"),
        }
    }
}

impl std::error::Error for ManifestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ManifestError::Io { source, .. } | ManifestError::KeysDir { source, .. } => Some(source),
            ManifestError::KeyFile { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Parses one JSON value, naming where in it a problem is.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("at {path}: {}", e.into_inner())
        }
    })?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ManifestError + 'a {
    move |source| ManifestError::Io { action, path: path.to_path_buf(), source }
}

fn writable_as_rfc3339(time: SystemTime) -> bool {
    time.duration_since(UNIX_EPOCH).is_ok_and(|d| d.as_secs() < END_OF_RFC3339_SECS)
}

/// RFC 3339 for times the format can hold; the formatter would panic on any other.
fn rfc3339(time: SystemTime) -> String {
    if writable_as_rfc3339(time) {
        humantime::format_rfc3339(time).to_string()
    } else {
        format!("{time:?}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn this_architecture_is_the_debian_name_of_the_build_target() {
        let expected = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "arm" => "armhf",
            other => other,
        };
        assert_eq!(this_architecture(), expected);
    }
}
