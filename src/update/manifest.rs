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

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use semver::Version;
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest as _, Sha256};

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

const PUBLIC_KEY_SUFFIX: &str = "pub";
const SECRET_KEY_SUFFIX: &str = "secret";
/// Key files are one short line; reading stops well past that, so a huge file costs nothing.
const MAX_KEY_FILE_BYTES: u64 = 4096;
const MAX_NAME_LEN: usize = 64;
const MAX_VERSION_LEN: usize = 128;
const MAX_ARCH_LEN: usize = 32;
const MAX_URL_LEN: usize = 2048;
/// Debian knows a few dozen architectures; more entries than this is not a real manifest.
const MAX_ARTIFACTS: usize = 64;
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
                 to go back use manage.rollback"
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

/// What is wrong with the text of a key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFormatError {
    /// The file is not UTF-8 text.
    NotText,
    /// The file holds more than one line.
    NotOneLine,
    /// The line does not start with the expected word.
    WrongHeader { found: String, expected: &'static str },
    /// The key is for an algorithm other than Ed25519.
    WrongAlgorithm { found: String },
    /// The key is not valid base64.
    BadBase64,
    /// The key does not decode to 32 bytes.
    WrongLength { found: usize },
    /// The bytes are not an Ed25519 public key.
    NotAKey,
    /// The public key has small order, so signatures under it prove nothing.
    WeakKey,
}

impl fmt::Display for KeyFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFormatError::NotText => write!(f, "not a key file: it is not text"),
            KeyFormatError::NotOneLine => write!(f, "not a key file: a key file is a single line"),
            KeyFormatError::WrongHeader { found, expected } => {
                write!(f, "not a key file: it starts with {found:?} instead of {expected:?}")
            }
            KeyFormatError::WrongAlgorithm { found } => {
                write!(f, "the key is for algorithm {found:?}; only {ALGORITHM} keys are supported")
            }
            KeyFormatError::BadBase64 => write!(f, "the key is not valid base64; the file was damaged"),
            KeyFormatError::WrongLength { found } => {
                write!(f, "the key is {found} bytes long instead of 32; the file was damaged or truncated")
            }
            KeyFormatError::NotAKey => write!(f, "the bytes are not an {ALGORITHM} public key"),
            KeyFormatError::WeakKey => write!(f, "the key is a weak (small-order) key and is refused"),
        }
    }
}

impl std::error::Error for KeyFormatError {}

/// The id of a release key: the first 16 hex digits of the SHA-256 of the public key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    fn of(key: &VerifyingKey) -> KeyId {
        let digest = Sha256::digest(key.as_bytes());
        KeyId(hex(&digest[..8]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyId {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<KeyId, ManifestError> {
        if s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(KeyId(s.to_string()))
        } else {
            Err(ManifestError::InvalidKeyId { found: s.to_string() })
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A trusted release key, which verifies manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    fn new(key: VerifyingKey) -> PublicKey {
        PublicKey { id: KeyId::of(&key), key }
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Parses the text of a `.pub` file.
    pub fn parse(text: &str) -> Result<PublicKey, KeyFormatError> {
        let bytes = parse_key_line(text, PUBLIC_KEY_HEADER)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyFormatError::NotAKey)?;
        if key.is_weak() {
            return Err(KeyFormatError::WeakKey);
        }
        Ok(PublicKey::new(key))
    }

    /// Reads a `.pub` file.
    pub fn read(path: &Path) -> Result<PublicKey, ManifestError> {
        let text = read_key_file(path)?;
        PublicKey::parse(&text).map_err(|error| ManifestError::KeyFile { path: path.to_path_buf(), error })
    }

    /// The text of the key's `.pub` file.
    pub fn to_file_text(&self) -> String {
        format!("{PUBLIC_KEY_HEADER} {ALGORITHM} {}\n", BASE64.encode(self.key.as_bytes()))
    }
}

/// A release secret key, which signs manifests. Its `Debug` never shows the secret, and
/// the key material is wiped from memory when it is dropped.
pub struct SecretKey {
    key: SigningKey,
    id: KeyId,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).field("seed", &"<redacted>").finish()
    }
}

impl SecretKey {
    fn new(key: SigningKey) -> SecretKey {
        SecretKey { id: KeyId::of(&key.verifying_key()), key }
    }

    /// A new key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, ManifestError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| ManifestError::Random { reason: e.to_string() })?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(SecretKey::new(key))
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::new(self.key.verifying_key())
    }

    /// Parses the text of a `.secret` file.
    pub fn parse(text: &str) -> Result<SecretKey, KeyFormatError> {
        let mut seed = parse_key_line(text, SECRET_KEY_HEADER)?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(SecretKey::new(key))
    }

    /// Reads a `.secret` file, refusing one that others than its owner may read.
    pub fn read(path: &Path) -> Result<SecretKey, ManifestError> {
        let metadata = fs::metadata(path).map_err(io_err("read", path))?;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ManifestError::SecretKeyPermissions { path: path.to_path_buf(), mode });
        }
        let text = read_key_file(path)?;
        SecretKey::parse(&text).map_err(|error| ManifestError::KeyFile { path: path.to_path_buf(), error })
    }

    fn to_file_text(&self) -> String {
        format!("{SECRET_KEY_HEADER} {ALGORITHM} {}\n", BASE64.encode(self.key.as_bytes()))
    }
}

/// The 32 key bytes of a key file's line: `<header> ed25519 <base64>[ <comment>]`.
fn parse_key_line(text: &str, header: &'static str) -> Result<[u8; 32], KeyFormatError> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.contains(['\n', '\r']) {
        return Err(KeyFormatError::NotOneLine);
    }
    let mut words = line.splitn(4, ' ');
    let found = words.next().unwrap_or_default();
    if found != header {
        let found: String = found.chars().take(40).collect();
        return Err(KeyFormatError::WrongHeader { found, expected: header });
    }
    let algorithm = words.next().unwrap_or_default();
    if algorithm != ALGORITHM {
        return Err(KeyFormatError::WrongAlgorithm { found: algorithm.chars().take(40).collect() });
    }
    let encoded = words.next().unwrap_or_default();
    let decoded = BASE64.decode(encoded).map_err(|_| KeyFormatError::BadBase64)?;
    <[u8; 32]>::try_from(decoded.as_slice()).map_err(|_| KeyFormatError::WrongLength { found: decoded.len() })
}

fn read_key_file(path: &Path) -> Result<String, ManifestError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES).read_to_end(&mut bytes).map_err(io_err("read", path))?;
    String::from_utf8(bytes)
        .map_err(|_| ManifestError::KeyFile { path: path.to_path_buf(), error: KeyFormatError::NotText })
}

/// The files [`keygen`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    pub key_id: KeyId,
    pub public_path: PathBuf,
    pub secret_path: PathBuf,
}

/// Generates a release key into `out_dir`: `<id>.secret` (mode 0600) and `<id>.pub`
/// (mode 0644). Neither file is ever overwritten, and each appears whole or not at all.
pub fn keygen(out_dir: &Path) -> Result<GeneratedKey, ManifestError> {
    let secret = SecretKey::generate()?;
    let key_id = secret.id().clone();
    let secret_path = out_dir.join(format!("{key_id}.{SECRET_KEY_SUFFIX}"));
    let public_path = out_dir.join(format!("{key_id}.{PUBLIC_KEY_SUFFIX}"));
    create_file_exclusively(&secret_path, secret.to_file_text().as_bytes(), 0o600)?;
    if let Err(e) = create_file_exclusively(&public_path, secret.public_key().to_file_text().as_bytes(), 0o644) {
        // A secret without its public half is useless and would only be one more copy to guard.
        let _ = fs::remove_file(&secret_path);
        return Err(e);
    }
    Ok(GeneratedKey { key_id, public_path, secret_path })
}

/// Writes a new file at `path` with `mode`, never replacing an existing one: the content
/// goes to a fresh temporary file first, which is then hard-linked to its name, an atomic
/// step that fails if the name exists. A reader thus never sees a partial key.
fn create_file_exclusively(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ManifestError> {
    if path.symlink_metadata().is_ok() {
        return Err(ManifestError::KeyExists { path: path.to_path_buf() });
    }
    let name = path.file_name().ok_or_else(|| ManifestError::Io {
        action: "create",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| ManifestError::Random { reason: e.to_string() })?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), hex(&nonce)));
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may only have narrowed the mode; set it exactly before the content goes in.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ManifestError::Io { action: "write", path: path.to_path_buf(), source });
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(ManifestError::KeyExists { path: path.to_path_buf() })
        }
        Err(source) => Err(ManifestError::Io { action: "create", path: path.to_path_buf(), source }),
        Ok(()) => File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync", dir)),
    }
}

/// The release keys a device trusts.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: BTreeMap<KeyId, PublicKey>,
    dir: Option<PathBuf>,
    problems: Vec<ManifestError>,
}

impl Keyring {
    /// Loads every `*.pub` file of `dir`. Only an unreadable directory is an error; a key
    /// file that cannot be used is recorded in [`Keyring::problems`] and the others still
    /// load, so one damaged file cannot lock a device out of updates signed by a good key.
    pub fn load(dir: &Path) -> Result<Keyring, ManifestError> {
        let keys_dir_err = |source| ManifestError::KeysDir { path: dir.to_path_buf(), source };
        let mut paths = Vec::new();
        for entry in fs::read_dir(dir).map_err(keys_dir_err)? {
            let path = entry.map_err(keys_dir_err)?.path();
            if path.extension().is_some_and(|e| e == PUBLIC_KEY_SUFFIX) {
                paths.push(path);
            }
        }
        paths.sort();
        let mut keyring = Keyring { dir: Some(dir.to_path_buf()), ..Keyring::default() };
        for path in paths {
            match PublicKey::read(&path) {
                Ok(key) => {
                    keyring.keys.insert(key.id().clone(), key);
                }
                Err(problem) => keyring.problems.push(problem),
            }
        }
        Ok(keyring)
    }

    pub fn from_keys(keys: impl IntoIterator<Item = PublicKey>) -> Keyring {
        Keyring { keys: keys.into_iter().map(|k| (k.id().clone(), k)).collect(), ..Keyring::default() }
    }

    pub fn get(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The directory the keys were loaded from, if they were.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The key files of the directory that could not be used, each with why.
    pub fn problems(&self) -> &[ManifestError] {
        &self.problems
    }
}

/// One package of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Absolute, or relative to the manifest's URL: see [`artifact_url`].
    pub url: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl Artifact {
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

/// A release as a manifest describes it. On the wire, versions are semver strings and
/// times RFC 3339 strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireManifest", into = "WireManifest")]
pub struct Manifest {
    pub name: String,
    pub version: Version,
    pub channel: String,
    pub released_at: SystemTime,
    pub expires_at: SystemTime,
    pub min_upgrade_from: Option<Version>,
    /// By Debian architecture name.
    pub artifacts: BTreeMap<String, Artifact>,
}

impl Manifest {
    /// Parses `manifest.json` strictly. [`verify`] is the way to get a manifest that can be
    /// trusted; this alone checks nothing about who wrote it.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::OversizedManifest { size: bytes.len(), max: MAX_MANIFEST_BYTES });
        }
        parse_json(bytes).map_err(|reason| ManifestError::InvalidManifest { reason })
    }

    /// The `manifest.json` a publisher signs: pretty, keys in a fixed order, a final
    /// newline. Refuses a manifest that devices would refuse to parse.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, ManifestError> {
        self.validate().map_err(|reason| ManifestError::InvalidManifest { reason })?;
        let mut bytes = serde_json::to_vec_pretty(&WireManifest::from(self.clone()))
            .map_err(|e| ManifestError::InvalidManifest { reason: e.to_string() })?;
        bytes.push(b'\n');
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::OversizedManifest { size: bytes.len(), max: MAX_MANIFEST_BYTES });
        }
        Ok(bytes)
    }

    /// What the wire format demands beyond its syntax.
    fn validate(&self) -> Result<(), String> {
        check_word("name", &self.name, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))?;
        check_word("channel", &self.channel, |c| c.is_ascii_alphanumeric() || "._-".contains(c))?;
        for version in std::iter::once(&self.version).chain(&self.min_upgrade_from) {
            if version.to_string().len() > MAX_VERSION_LEN {
                return Err(format!("version {version} is longer than {MAX_VERSION_LEN} characters"));
            }
        }
        for (field, time) in [("released_at", self.released_at), ("expires_at", self.expires_at)] {
            if !writable_as_rfc3339(time) {
                return Err(format!("{field} is not between the years 1970 and 9999"));
            }
        }
        if self.expires_at <= self.released_at {
            return Err(format!(
                "it expires ({}) no later than it is released ({})",
                rfc3339(self.expires_at),
                rfc3339(self.released_at)
            ));
        }
        if self.artifacts.is_empty() {
            return Err("it lists no artifacts".to_string());
        }
        if self.artifacts.len() > MAX_ARTIFACTS {
            return Err(format!("it lists more than {MAX_ARTIFACTS} artifacts"));
        }
        for (architecture, artifact) in &self.artifacts {
            if architecture.is_empty()
                || architecture.len() > MAX_ARCH_LEN
                || !architecture.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(format!("{architecture:?} is not a Debian architecture name"));
            }
            check_url_text(&artifact.url)
                .map_err(|reason| format!("the {architecture} artifact's url {:?}: {reason}", artifact.url))?;
        }
        Ok(())
    }
}

fn check_word(field: &str, value: &str, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_NAME_LEN || !value.chars().all(allowed) {
        let shown: String = value.chars().take(MAX_NAME_LEN).collect();
        return Err(format!("{field} {shown:?} is empty, too long or holds characters it may not"));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireManifest {
    name: String,
    version: String,
    channel: String,
    released_at: String,
    expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_upgrade_from: Option<String>,
    #[serde(deserialize_with = "distinct_artifacts")]
    artifacts: BTreeMap<String, WireArtifact>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireArtifact {
    url: String,
    size: u64,
    sha256: String,
}

/// A JSON parser keeps the last of duplicate keys; in a signed document a key listed twice
/// can only be a mistake or an attempt to have two readers see different things.
fn distinct_artifacts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, WireArtifact>, D::Error> {
    struct ArtifactsVisitor;
    impl<'de> Visitor<'de> for ArtifactsVisitor {
        type Value = BTreeMap<String, WireArtifact>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of artifacts by architecture")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut artifacts = BTreeMap::new();
            while let Some((architecture, artifact)) = map.next_entry::<String, WireArtifact>()? {
                if artifacts.contains_key(&architecture) {
                    return Err(A::Error::custom(format!("architecture {architecture:?} is listed twice")));
                }
                if artifacts.len() == MAX_ARTIFACTS {
                    return Err(A::Error::custom(format!("more than {MAX_ARTIFACTS} artifacts")));
                }
                artifacts.insert(architecture, artifact);
            }
            Ok(artifacts)
        }
    }
    deserializer.deserialize_map(ArtifactsVisitor)
}

impl TryFrom<WireManifest> for Manifest {
    type Error = String;

    fn try_from(wire: WireManifest) -> Result<Manifest, String> {
        let version = |field: &str, text: &str| {
            if text.len() > MAX_VERSION_LEN {
                return Err(format!("{field} is longer than {MAX_VERSION_LEN} characters"));
            }
            Version::parse(text).map_err(|e| format!("{field} {text:?} is not a semantic version: {e}"))
        };
        let time = |field: &str, text: &str| {
            humantime::parse_rfc3339(text)
                .map_err(|e| format!("{field} {text:?} is not an RFC 3339 UTC time such as 2026-12-02T19:00:00Z: {e}"))
        };
        let mut artifacts = BTreeMap::new();
        for (architecture, artifact) in wire.artifacts {
            let sha256 = parse_sha256(&artifact.sha256)
                .ok_or_else(|| format!("the sha256 of the {architecture} artifact is not 64 lowercase hex digits"))?;
            artifacts.insert(architecture, Artifact { url: artifact.url, size: artifact.size, sha256 });
        }
        let manifest = Manifest {
            name: wire.name,
            version: version("version", &wire.version)?,
            channel: wire.channel,
            released_at: time("released_at", &wire.released_at)?,
            expires_at: time("expires_at", &wire.expires_at)?,
            min_upgrade_from: wire.min_upgrade_from.map(|v| version("min_upgrade_from", &v)).transpose()?,
            artifacts,
        };
        manifest.validate()?;
        Ok(manifest)
    }
}

impl From<Manifest> for WireManifest {
    fn from(manifest: Manifest) -> WireManifest {
        WireManifest {
            name: manifest.name,
            version: manifest.version.to_string(),
            channel: manifest.channel,
            released_at: rfc3339(manifest.released_at),
            expires_at: rfc3339(manifest.expires_at),
            min_upgrade_from: manifest.min_upgrade_from.map(|v| v.to_string()),
            artifacts: manifest
                .artifacts
                .into_iter()
                .map(|(arch, a)| (arch, WireArtifact { url: a.url, size: a.size, sha256: hex(&a.sha256) }))
                .collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSignature {
    key_id: String,
    algorithm: String,
    signature: String,
}

/// Signs the exact bytes of a `manifest.json`; returns the content of `manifest.json.sig`.
pub fn sign(manifest_bytes: &[u8], secret: &SecretKey) -> Vec<u8> {
    let signature = secret.key.sign(manifest_bytes);
    // Every value is hex or base64, which JSON needs no escaping for.
    format!(
        "{{\"key_id\":\"{}\",\"algorithm\":\"{ALGORITHM}\",\"signature\":\"{}\"}}\n",
        secret.id,
        BASE64.encode(signature.to_bytes())
    )
    .into_bytes()
}

/// Checks that `sig_bytes` is a signature of `manifest_bytes` by a key of `keyring`, and
/// only then parses the manifest. The manifest still has to pass [`check`].
pub fn verify(manifest_bytes: &[u8], sig_bytes: &[u8], keyring: &Keyring) -> Result<Manifest, ManifestError> {
    if manifest_bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::OversizedManifest { size: manifest_bytes.len(), max: MAX_MANIFEST_BYTES });
    }
    if sig_bytes.len() > MAX_SIGNATURE_BYTES {
        return Err(ManifestError::OversizedSignature { size: sig_bytes.len(), max: MAX_SIGNATURE_BYTES });
    }
    let wire: WireSignature = parse_json(sig_bytes).map_err(|reason| ManifestError::InvalidSignatureFile { reason })?;
    if wire.algorithm != ALGORITHM {
        return Err(ManifestError::WrongAlgorithm { found: wire.algorithm.chars().take(40).collect() });
    }
    let key_id: KeyId = wire
        .key_id
        .parse()
        .map_err(|e: ManifestError| ManifestError::InvalidSignatureFile { reason: format!("key_id: {e}") })?;
    let decoded = BASE64.decode(&wire.signature).map_err(|e| ManifestError::InvalidSignatureFile {
        reason: format!("the signature is not valid base64: {e}"),
    })?;
    let bytes = <[u8; 64]>::try_from(decoded.as_slice()).map_err(|_| ManifestError::InvalidSignatureFile {
        reason: format!("the signature is {} bytes long instead of 64", decoded.len()),
    })?;
    let Some(key) = keyring.get(&key_id) else {
        return Err(ManifestError::UnknownKey {
            key_id,
            keys_dir: keyring.dir.clone(),
            known: keyring.ids().cloned().collect(),
            broken: keyring.problems.iter().map(ToString::to_string).collect(),
        });
    };
    // verify_strict also refuses malleable signatures and weak keys, which the plain check
    // lets through.
    key.key
        .verify_strict(manifest_bytes, &Signature::from_bytes(&bytes))
        .map_err(|_| ManifestError::BadSignature { key_id })?;
    Manifest::from_json_bytes(manifest_bytes)
}

/// What this device accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Debian architecture of this machine, usually [`this_architecture`].
    pub architecture: String,
    /// The version running now.
    pub installed: Version,
    /// The highest version ever installed here, which may be above `installed` after a
    /// rollback.
    pub highest_installed: Option<Version>,
    /// The channel the manifest must be for, if any.
    pub channel: Option<String>,
    /// The exact version the manifest must offer, if any.
    pub target_version: Option<Version>,
    pub now: SystemTime,
    pub max_download_bytes: u64,
}

/// Checks a verified manifest against this device's policy and returns the artifact to
/// download.
pub fn check<'m>(manifest: &'m Manifest, policy: &Policy) -> Result<&'m Artifact, ManifestError> {
    if manifest.name != PACKAGE_NAME {
        return Err(ManifestError::WrongPackage { found: manifest.name.clone() });
    }
    if let Some(wanted) = &policy.channel {
        if &manifest.channel != wanted {
            return Err(ManifestError::WrongChannel { found: manifest.channel.clone(), wanted: wanted.clone() });
        }
    }
    let offered = &manifest.version;
    if let Some(wanted) = &policy.target_version {
        if offered.cmp_precedence(wanted).is_ne() {
            return Err(ManifestError::WrongTargetVersion { found: offered.clone(), wanted: wanted.clone() });
        }
    }
    if policy.now >= manifest.expires_at {
        return Err(ManifestError::Expired { expires_at: manifest.expires_at, now: policy.now });
    }
    if manifest.released_at.duration_since(policy.now).is_ok_and(|ahead| ahead > CLOCK_SKEW_ALLOWANCE) {
        return Err(ManifestError::ReleasedInFuture { released_at: manifest.released_at, now: policy.now });
    }
    // Build metadata does not order versions (semver §10), so 0.2.0+a is not newer than 0.2.0.
    match offered.cmp_precedence(&policy.installed) {
        std::cmp::Ordering::Equal => return Err(ManifestError::AlreadyInstalled { version: offered.clone() }),
        std::cmp::Ordering::Less => {
            return Err(ManifestError::Downgrade { offered: offered.clone(), installed: policy.installed.clone() })
        }
        std::cmp::Ordering::Greater => {}
    }
    if let Some(highest) = &policy.highest_installed {
        if offered.cmp_precedence(highest).is_le() {
            return Err(ManifestError::NotNewerThanHighest { offered: offered.clone(), highest: highest.clone() });
        }
    }
    if let Some(min) = &manifest.min_upgrade_from {
        if policy.installed.cmp_precedence(min).is_lt() {
            return Err(ManifestError::TooOldToUpgrade {
                installed: policy.installed.clone(),
                min_upgrade_from: min.clone(),
                offered: offered.clone(),
            });
        }
    }
    let architecture = policy.architecture.clone();
    let Some(artifact) = manifest.artifacts.get(&architecture) else {
        return Err(ManifestError::NoArtifact {
            architecture,
            available: manifest.artifacts.keys().cloned().collect(),
        });
    };
    if artifact.size == 0 {
        return Err(ManifestError::EmptyArtifact { architecture });
    }
    if artifact.size > policy.max_download_bytes {
        return Err(ManifestError::ArtifactTooLarge {
            architecture,
            size: artifact.size,
            max: policy.max_download_bytes,
        });
    }
    Ok(artifact)
}

/// Resolves an artifact's URL against the URL its manifest was fetched from, as RFC 3986
/// §5.2 resolves references: `x.deb` and `../pool/x.deb` are taken from the manifest's
/// directory, `/pool/x.deb` from its host, `//host/x.deb` keeps its scheme, and an
/// absolute URL stands as it is. Both URLs must be http or https; the fragment, which no
/// HTTP client sends, is dropped.
pub fn artifact_url(manifest_url: &str, artifact_url: &str) -> Result<String, ManifestError> {
    let invalid = |url: &str, reason: String| ManifestError::InvalidUrl { url: url.to_string(), reason };
    check_url_text(manifest_url).map_err(|r| invalid(manifest_url, r))?;
    check_url_text(artifact_url).map_err(|r| invalid(artifact_url, r))?;
    let base = UrlParts::parse(manifest_url).map_err(|r| invalid(manifest_url, r))?;
    let Some(base_scheme) = base.scheme else {
        return Err(invalid(manifest_url, "the manifest's URL must be absolute (http:// or https://)".to_string()));
    };
    check_scheme(base_scheme).map_err(|r| invalid(manifest_url, r))?;
    if base.authority.is_none_or(str::is_empty) {
        return Err(invalid(manifest_url, "the URL names no host".to_string()));
    }
    let reference = UrlParts::parse(artifact_url).map_err(|r| invalid(artifact_url, r))?;

    let (scheme, authority, path, query);
    if let Some(ref_scheme) = reference.scheme {
        check_scheme(ref_scheme).map_err(|r| invalid(artifact_url, r))?;
        scheme = ref_scheme;
        authority = reference.authority;
        path = remove_dot_segments(reference.path);
        query = reference.query;
    } else {
        scheme = base_scheme;
        if reference.authority.is_some() {
            authority = reference.authority;
            path = remove_dot_segments(reference.path);
            query = reference.query;
        } else {
            authority = base.authority;
            if reference.path.is_empty() {
                path = base.path.to_string();
                query = reference.query.or(base.query);
            } else {
                path = if reference.path.starts_with('/') {
                    remove_dot_segments(reference.path)
                } else {
                    remove_dot_segments(&merge_paths(&base, reference.path))
                };
                query = reference.query;
            }
        }
    }
    let Some(authority) = authority.filter(|a| !a.is_empty()) else {
        return Err(invalid(artifact_url, "the URL names no host".to_string()));
    };
    let mut resolved = format!("{}://{authority}{path}", scheme.to_ascii_lowercase());
    if let Some(query) = query {
        resolved.push('?');
        resolved.push_str(query);
    }
    Ok(resolved)
}

/// A URL reference split as RFC 3986 appendix B splits it.
struct UrlParts<'a> {
    scheme: Option<&'a str>,
    authority: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
}

impl<'a> UrlParts<'a> {
    fn parse(url: &'a str) -> Result<UrlParts<'a>, String> {
        let mut rest = url.split_once('#').map_or(url, |(before, _)| before);
        let mut scheme = None;
        if let Some(colon) = rest.find(':') {
            if !rest[..colon].contains(['/', '?']) {
                let candidate = &rest[..colon];
                let valid = candidate.starts_with(|c: char| c.is_ascii_alphabetic())
                    && candidate.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
                if !valid {
                    return Err("a relative path whose first segment holds ':' must start with './'".to_string());
                }
                scheme = Some(candidate);
                rest = &rest[colon + 1..];
            }
        }
        let mut authority = None;
        if let Some(after) = rest.strip_prefix("//") {
            let end = after.find(['/', '?']).unwrap_or(after.len());
            authority = Some(&after[..end]);
            rest = &after[end..];
        }
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        Ok(UrlParts { scheme, authority, path, query })
    }
}

fn check_scheme(scheme: &str) -> Result<(), String> {
    if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
        Ok(())
    } else {
        Err(format!("scheme {scheme:?} is not supported; use http or https"))
    }
}

/// Refuses what is never part of a well-formed URL, which is also what could make one
/// mean different things to different readers.
fn check_url_text(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("it is empty".to_string());
    }
    if url.len() > MAX_URL_LEN {
        return Err(format!("it is longer than {MAX_URL_LEN} characters"));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return Err("it holds spaces, control, non-ASCII or backslash characters; percent-encode them".to_string());
    }
    Ok(())
}

/// RFC 3986 §5.2.3: the reference's path appended to the base's directory.
fn merge_paths(base: &UrlParts<'_>, reference: &str) -> String {
    if base.authority.is_some() && base.path.is_empty() {
        return format!("/{reference}");
    }
    match base.path.rfind('/') {
        Some(slash) => format!("{}{reference}", &base.path[..=slash]),
        None => reference.to_string(),
    }
}

/// RFC 3986 §5.2.4: `.` and `..` segments resolved; `..` never climbs above the root.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut output = String::with_capacity(path.len());
    let pop_segment = |output: &mut String| {
        let cut = output.rfind('/').unwrap_or(0);
        output.truncate(cut);
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../").or_else(|| input.strip_prefix("./")) {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            pop_segment(&mut output);
        } else if input == "/.." {
            input = "/";
            pop_segment(&mut output);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

/// A package to list in a manifest being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedDeb {
    /// Debian architecture name.
    pub architecture: String,
    /// The URL devices will fetch it from, absolute or relative to the manifest's URL.
    pub url: String,
    /// The package file, read for its size and SHA-256.
    pub path: PathBuf,
}

/// Builds the manifest of a release of [`PACKAGE_NAME`] from its package files.
pub fn build_manifest(
    version: Version,
    channel: &str,
    released_at: SystemTime,
    expires_at: SystemTime,
    min_upgrade_from: Option<Version>,
    debs: &[PublishedDeb],
) -> Result<Manifest, ManifestError> {
    let mut artifacts = BTreeMap::new();
    for deb in debs {
        if artifacts.contains_key(&deb.architecture) {
            return Err(ManifestError::InvalidManifest {
                reason: format!("two packages are given for architecture {}", deb.architecture),
            });
        }
        let digest = file_digest(&deb.path)?;
        artifacts.insert(
            deb.architecture.clone(),
            Artifact { url: deb.url.clone(), size: digest.size, sha256: digest.sha256 },
        );
    }
    let manifest = Manifest {
        name: PACKAGE_NAME.to_string(),
        version,
        channel: channel.to_string(),
        released_at,
        expires_at,
        min_upgrade_from,
        artifacts,
    };
    manifest.validate().map_err(|reason| ManifestError::InvalidManifest { reason })?;
    Ok(manifest)
}

/// The size and SHA-256 of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    pub sha256: [u8; 32],
}

/// Reads a file through once, in pieces, for its size and SHA-256; the same numbers a
/// device compares a downloaded package with.
pub fn file_digest(path: &Path) -> Result<FileDigest, ManifestError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                size += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(ManifestError::Io { action: "read", path: path.to_path_buf(), source }),
        }
    }
    Ok(FileDigest { size, sha256: hasher.finalize().into() })
}

/// Parses one JSON value, naming where in it a problem is.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
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

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
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

    const MANIFEST_URL: &str = "https://releases.example.org/mcp-raspi/stable/manifest.json";

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    fn manifest() -> Manifest {
        let artifact = |arch: &str, fill: u8| {
            (
                arch.to_string(),
                Artifact { url: format!("../pool/mcp-raspi_0.2.0_{arch}.deb"), size: 3_145_728, sha256: [fill; 32] },
            )
        };
        Manifest {
            name: PACKAGE_NAME.to_string(),
            version: v("0.2.0"),
            channel: "stable".to_string(),
            released_at: at("2026-12-02T19:00:00Z"),
            expires_at: at("2027-01-01T00:00:00Z"),
            min_upgrade_from: Some(v("0.1.0")),
            artifacts: [artifact("amd64", 1), artifact("arm64", 2), artifact("armhf", 3)].into_iter().collect(),
        }
    }

    fn policy() -> Policy {
        Policy {
            architecture: "arm64".to_string(),
            installed: v("0.1.0"),
            highest_installed: Some(v("0.1.0")),
            channel: Some("stable".to_string()),
            target_version: None,
            now: at("2026-12-10T12:00:00Z"),
            max_download_bytes: 64 * 1024 * 1024,
        }
    }

    /// A signed manifest, its signature and a keyring trusting its key.
    fn signed(manifest_bytes: &[u8]) -> (Vec<u8>, Keyring) {
        let secret = SecretKey::generate().unwrap();
        let sig = sign(manifest_bytes, &secret);
        (sig, Keyring::from_keys([secret.public_key()]))
    }

    fn signature_file(key_id: &str, algorithm: &str, signature: &str) -> Vec<u8> {
        format!("{{\"key_id\":\"{key_id}\",\"algorithm\":\"{algorithm}\",\"signature\":\"{signature}\"}}").into_bytes()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_generated_key_signs_manifests_that_verify_against_the_keys_directory() {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen(dir.path()).unwrap();
        assert_eq!(generated.secret_path, dir.path().join(format!("{}.secret", generated.key_id)));
        assert_eq!(generated.public_path, dir.path().join(format!("{}.pub", generated.key_id)));

        let secret = SecretKey::read(&generated.secret_path).unwrap();
        assert_eq!(secret.id(), &generated.key_id);
        let bytes = manifest().to_json_bytes().unwrap();
        let sig = sign(&bytes, &secret);

        let keyring = Keyring::load(dir.path()).unwrap();
        assert!(keyring.problems().is_empty());
        assert_eq!(keyring.ids().collect::<Vec<_>>(), [&generated.key_id]);
        assert_eq!(verify(&bytes, &sig, &keyring).unwrap(), manifest());
    }

    #[test]
    fn keygen_writes_the_secret_with_mode_0600_and_the_public_key_with_mode_0644() {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen(dir.path()).unwrap();
        assert_eq!(mode_of(&generated.secret_path), 0o600);
        assert_eq!(mode_of(&generated.public_path), 0o644);
        let secret_text = fs::read_to_string(&generated.secret_path).unwrap();
        assert!(secret_text.starts_with("mcp-raspi-release-secret ed25519 "));
        assert!(secret_text.ends_with('\n') && secret_text.lines().count() == 1);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temporary file is left behind: {names:?}");
    }

    #[test]
    fn an_existing_key_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0123456789abcdef.secret");
        fs::write(&path, "the old key\n").unwrap();
        let err = create_file_exclusively(&path, b"a new key\n", 0o600).unwrap_err();
        assert!(matches!(err, ManifestError::KeyExists { .. }), "{err}");
        assert!(err.to_string().contains("never overwritten"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "the old key\n");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_dangling_symlink_in_place_of_a_key_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.secret");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        let err = create_file_exclusively(&path, b"key\n", 0o600).unwrap_err();
        assert!(matches!(err, ManifestError::KeyExists { .. }), "{err}");
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn the_key_id_is_the_start_of_the_sha256_of_the_public_key() {
        let secret =
            SecretKey::parse(&format!("mcp-raspi-release-secret ed25519 {}\n", BASE64.encode([7u8; 32]))).unwrap();
        let public = secret.public_key();
        let digest = Sha256::digest(public.key.as_bytes());
        assert_eq!(public.id().as_str(), &hex(&digest)[..16]);
        assert_eq!(secret.id(), public.id());
    }

    #[test]
    fn a_public_key_survives_its_file_text() {
        let public = SecretKey::generate().unwrap().public_key();
        let text = public.to_file_text();
        assert!(text.starts_with("mcp-raspi-release-key ed25519 ") && text.ends_with('\n'));
        assert_eq!(PublicKey::parse(&text).unwrap(), public);
    }

    #[test]
    fn a_key_id_is_sixteen_lowercase_hex_digits() {
        assert!("0123456789abcdef".parse::<KeyId>().is_ok());
        for bad in ["0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg", ""] {
            assert!(matches!(bad.parse::<KeyId>(), Err(ManifestError::InvalidKeyId { .. })), "{bad:?}");
        }
    }

    #[test]
    fn the_debug_of_a_secret_key_does_not_show_the_secret() {
        let seed = [42u8; 32];
        let secret = SecretKey::parse(&format!("mcp-raspi-release-secret ed25519 {}", BASE64.encode(seed))).unwrap();
        let debug = format!("{secret:?} {secret:#?}");
        assert!(!debug.contains(&BASE64.encode(seed)));
        assert!(!debug.contains("42"));
        assert!(debug.contains(secret.id().as_str()));
    }

    #[test]
    fn a_secret_key_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let generated = keygen(dir.path()).unwrap();
        fs::set_permissions(&generated.secret_path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = SecretKey::read(&generated.secret_path).unwrap_err();
        assert!(matches!(err, ManifestError::SecretKeyPermissions { mode: 0o640, .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn a_key_file_with_an_optional_comment_and_no_final_newline_parses() {
        let key = BASE64.encode(SecretKey::generate().unwrap().public_key().key.as_bytes());
        assert!(PublicKey::parse(&format!("mcp-raspi-release-key ed25519 {key} release key 2026\n")).is_ok());
        assert!(PublicKey::parse(&format!("mcp-raspi-release-key ed25519 {key}")).is_ok());
    }

    #[test]
    fn key_files_that_are_damaged_are_refused_with_the_reason() {
        let key = BASE64.encode(SecretKey::generate().unwrap().public_key().key.as_bytes());
        let cases = [
            (format!("ssh-ed25519 {key}\n"), "instead of"),
            (format!("mcp-raspi-release-secret ed25519 {key}\n"), "instead of"),
            (format!("mcp-raspi-release-key rsa {key}\n"), "only ed25519"),
            ("mcp-raspi-release-key ed25519 not*base64\n".to_string(), "not valid base64"),
            (format!("mcp-raspi-release-key ed25519 {}\n", BASE64.encode([9u8; 31])), "31 bytes"),
            (format!("mcp-raspi-release-key ed25519 {}\n", BASE64.encode([9u8; 33])), "33 bytes"),
            (format!("mcp-raspi-release-key ed25519 {key}\nmcp-raspi-release-key ed25519 {key}\n"), "single line"),
            ("mcp-raspi-release-key ed25519\n".to_string(), "0 bytes"),
            ("".to_string(), "instead of"),
        ];
        for (text, reason) in cases {
            let err = PublicKey::parse(&text).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_weak_public_key_is_refused() {
        // The identity point: small order, so it "verifies" forged signatures.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let text = format!("mcp-raspi-release-key ed25519 {}\n", BASE64.encode(identity));
        assert_eq!(PublicKey::parse(&text).unwrap_err(), KeyFormatError::WeakKey);
    }

    #[test]
    fn a_broken_key_file_is_reported_without_hiding_the_good_keys() {
        let dir = tempfile::tempdir().unwrap();
        let good = SecretKey::generate().unwrap();
        // The id comes from the content, so a misleading file name changes nothing.
        fs::write(dir.path().join("ffffffffffffffff.pub"), good.public_key().to_file_text()).unwrap();
        fs::write(dir.path().join("broken.pub"), "mcp-raspi-release-key ed25519 !!!\n").unwrap();
        fs::write(dir.path().join("notes.txt"), "not a key, and not read\n").unwrap();
        fs::write(dir.path().join("old.pub.disabled"), "not a key either\n").unwrap();

        let keyring = Keyring::load(dir.path()).unwrap();
        assert_eq!(keyring.ids().collect::<Vec<_>>(), [good.id()]);
        assert_eq!(keyring.problems().len(), 1);
        let problem = keyring.problems()[0].to_string();
        assert!(problem.contains("broken.pub") && problem.contains("base64"), "{problem}");

        let bytes = manifest().to_json_bytes().unwrap();
        assert!(verify(&bytes, &sign(&bytes, &good), &keyring).is_ok());

        let stranger = SecretKey::generate().unwrap();
        let err = verify(&bytes, &sign(&bytes, &stranger), &keyring).unwrap_err().to_string();
        assert!(err.contains("broken.pub"), "the unknown key error points at the broken file: {err}");
    }

    #[test]
    fn a_missing_keys_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("keys");
        let err = Keyring::load(&missing).unwrap_err();
        assert!(matches!(err, ManifestError::KeysDir { .. }));
        assert!(err.to_string().contains(&missing.display().to_string()));
    }

    #[test]
    fn a_manifest_signed_by_an_unknown_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path()).unwrap();
        let keyring = Keyring::load(dir.path()).unwrap();
        let stranger = SecretKey::generate().unwrap();
        let bytes = manifest().to_json_bytes().unwrap();
        let err = verify(&bytes, &sign(&bytes, &stranger), &keyring).unwrap_err();
        assert!(matches!(&err, ManifestError::UnknownKey { key_id, .. } if key_id == stranger.id()));
        let message = err.to_string();
        assert!(message.contains(stranger.id().as_str()), "{message}");
        assert!(message.contains(&dir.path().display().to_string()), "{message}");
    }

    #[test]
    fn a_tampered_manifest_byte_is_refused() {
        let bytes = manifest().to_json_bytes().unwrap();
        let (sig, keyring) = signed(&bytes);
        for index in [0, bytes.len() / 2, bytes.len() - 1] {
            let mut tampered = bytes.clone();
            tampered[index] ^= 0x01;
            let err = verify(&tampered, &sig, &keyring).unwrap_err();
            assert!(matches!(err, ManifestError::BadSignature { .. }), "byte {index}: {err}");
        }
    }

    #[test]
    fn a_tampered_signature_is_refused() {
        let bytes = manifest().to_json_bytes().unwrap();
        let secret = SecretKey::generate().unwrap();
        let keyring = Keyring::from_keys([secret.public_key()]);
        let mut raw = secret.key.sign(&bytes).to_bytes();
        raw[10] ^= 0x80;
        let sig = signature_file(secret.id().as_str(), "ed25519", &BASE64.encode(raw));
        assert!(matches!(verify(&bytes, &sig, &keyring), Err(ManifestError::BadSignature { .. })));
    }

    #[test]
    fn a_truncated_manifest_is_refused() {
        let bytes = manifest().to_json_bytes().unwrap();
        let (sig, keyring) = signed(&bytes);
        let truncated = &bytes[..bytes.len() / 2];
        assert!(matches!(verify(truncated, &sig, &keyring), Err(ManifestError::BadSignature { .. })));
        // Even signed, half a manifest is no manifest.
        let (sig, keyring) = signed(truncated);
        assert!(matches!(verify(truncated, &sig, &keyring), Err(ManifestError::InvalidManifest { .. })));
    }

    #[test]
    fn a_signature_with_another_algorithm_is_refused() {
        let bytes = manifest().to_json_bytes().unwrap();
        let secret = SecretKey::generate().unwrap();
        let keyring = Keyring::from_keys([secret.public_key()]);
        let good: serde_json::Value = serde_json::from_slice(&sign(&bytes, &secret)).unwrap();
        let sig = signature_file(secret.id().as_str(), "rsa-sha256", good["signature"].as_str().unwrap());
        let err = verify(&bytes, &sig, &keyring).unwrap_err();
        assert!(matches!(&err, ManifestError::WrongAlgorithm { found } if found == "rsa-sha256"), "{err}");
    }

    #[test]
    fn a_truncated_or_malformed_signature_file_is_refused() {
        let bytes = manifest().to_json_bytes().unwrap();
        let secret = SecretKey::generate().unwrap();
        let keyring = Keyring::from_keys([secret.public_key()]);
        let sig = sign(&bytes, &secret);
        let id = secret.id().as_str();
        let cases = [
            sig[..sig.len() / 2].to_vec(),
            Vec::new(),
            signature_file(id, "ed25519", &BASE64.encode([0u8; 63])),
            signature_file(id, "ed25519", &BASE64.encode([0u8; 65])),
            signature_file(id, "ed25519", "not base64!"),
            signature_file("ABCDEF0123456789", "ed25519", &BASE64.encode([0u8; 64])),
            format!("{{\"key_id\":\"{id}\",\"algorithm\":\"ed25519\",\"signature\":\"\",\"extra\":1}}").into_bytes(),
        ];
        for case in cases {
            let err = verify(&bytes, &case, &keyring).unwrap_err();
            assert!(
                matches!(err, ManifestError::InvalidSignatureFile { .. }),
                "{}: {err}",
                String::from_utf8_lossy(&case)
            );
        }
    }

    #[test]
    fn an_oversized_manifest_or_signature_is_refused() {
        let (sig, keyring) = signed(b"{}");
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        let err = verify(&huge, &sig, &keyring).unwrap_err();
        assert!(matches!(err, ManifestError::OversizedManifest { .. }));
        assert!(err.to_string().contains("oversized manifest"));
        assert!(matches!(Manifest::from_json_bytes(&huge), Err(ManifestError::OversizedManifest { .. })));

        let mut long_sig = sig.clone();
        long_sig.resize(MAX_SIGNATURE_BYTES + 1, b' ');
        assert!(matches!(verify(b"{}", &long_sig, &keyring), Err(ManifestError::OversizedSignature { .. })));
    }

    #[test]
    fn the_example_manifest_of_the_documentation_parses() {
        let sha = "ab".repeat(32);
        let text = format!(
            r#"{{"name":"mcp-raspi","version":"0.2.0","channel":"stable",
               "released_at":"2026-12-02T19:00:00Z","expires_at":"2027-01-01T00:00:00Z",
               "min_upgrade_from":"0.1.0",
               "artifacts":{{"amd64":{{"url":"../pool/mcp-raspi_0.2.0_amd64.deb","size":3145728,"sha256":"{sha}"}},
                            "arm64":{{"url":"https://cdn.example.org/mcp-raspi_0.2.0_arm64.deb","size":1,"sha256":"{sha}"}}}}}}"#
        );
        let parsed = Manifest::from_json_bytes(text.as_bytes()).unwrap();
        assert_eq!(parsed.version, v("0.2.0"));
        assert_eq!(parsed.min_upgrade_from, Some(v("0.1.0")));
        assert_eq!(parsed.released_at, at("2026-12-02T19:00:00Z"));
        assert_eq!(parsed.artifacts["amd64"].sha256, [0xab; 32]);
        assert_eq!(parsed.artifacts["amd64"].sha256_hex(), sha);
        let without_min = text.replace(r#""min_upgrade_from":"0.1.0""#, r#""min_upgrade_from":null"#);
        assert_eq!(Manifest::from_json_bytes(without_min.as_bytes()).unwrap().min_upgrade_from, None);
    }

    #[test]
    fn a_manifest_survives_its_json_bytes_which_are_stable() {
        let bytes = manifest().to_json_bytes().unwrap();
        assert!(bytes.ends_with(b"}\n"));
        assert_eq!(Manifest::from_json_bytes(&bytes).unwrap(), manifest());
        assert_eq!(Manifest::from_json_bytes(&bytes).unwrap().to_json_bytes().unwrap(), bytes);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.find("\"name\"").unwrap() < text.find("\"artifacts\"").unwrap());
        assert!(text.contains("\"released_at\": \"2026-12-02T19:00:00Z\""), "{text}");
    }

    fn without_min_upgrade() -> Manifest {
        Manifest { min_upgrade_from: None, ..manifest() }
    }

    #[test]
    fn an_absent_min_upgrade_from_is_left_out_of_the_json() {
        let bytes = without_min_upgrade().to_json_bytes().unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("min_upgrade_from"));
        assert_eq!(Manifest::from_json_bytes(&bytes).unwrap(), without_min_upgrade());
    }

    /// The JSON of the sample manifest with `edit` applied to its value.
    fn edited(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut value: serde_json::Value = serde_json::from_slice(&manifest().to_json_bytes().unwrap()).unwrap();
        edit(&mut value);
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn a_signed_manifest_that_breaks_the_format_is_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (edited(|m| m["extra"] = 1.into()), "unknown field"),
            (edited(|m| m["artifacts"]["arm64"]["mirror"] = "x".into()), "unknown field"),
            (edited(|m| m["version"] = "0.2".into()), "semantic version"),
            (edited(|m| m["min_upgrade_from"] = "one".into()), "semantic version"),
            (edited(|m| m["released_at"] = "2026-12-02 19:00".into()), "RFC 3339"),
            (edited(|m| m["expires_at"] = "2026-12-01T00:00:00Z".into()), "no later than"),
            (edited(|m| m["artifacts"]["arm64"]["sha256"] = "AB".repeat(32).into()), "sha256"),
            (edited(|m| m["artifacts"]["arm64"]["sha256"] = "ab".into()), "sha256"),
            (edited(|m| m["artifacts"]["arm64"]["size"] = (-1).into()), "size"),
            (edited(|m| m["artifacts"]["arm64"]["url"] = "a b.deb".into()), "percent-encode"),
            (edited(|m| m["artifacts"] = serde_json::json!({})), "no artifacts"),
            (edited(|m| m["artifacts"]["ARM 64"] = m["artifacts"]["arm64"].clone()), "Debian architecture"),
            (edited(|m| m["channel"] = "".into()), "channel"),
            (edited(|m| m.as_object_mut().unwrap().remove("expires_at").map(|_| ()).unwrap()), "expires_at"),
            (b"[]".to_vec(), "expected"),
            (b"\xff\xfe".to_vec(), ""),
        ];
        for (bytes, reason) in cases {
            let (sig, keyring) = signed(&bytes);
            let err = verify(&bytes, &sig, &keyring).unwrap_err();
            assert!(matches!(err, ManifestError::InvalidManifest { .. }), "{err}");
            assert!(err.to_string().contains(reason), "{reason}: {err}");
        }
    }

    #[test]
    fn an_architecture_listed_twice_is_refused() {
        let text = manifest().to_json_bytes().unwrap();
        let text = String::from_utf8(text).unwrap();
        let arm64 = &text[text.find("\"arm64\"").unwrap()..text.find("\"armhf\"").unwrap()];
        let doubled = text.replacen(arm64, &format!("{arm64}{arm64}"), 1);
        let err = Manifest::from_json_bytes(doubled.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }

    #[test]
    fn a_manifest_that_devices_would_refuse_is_not_written() {
        let bad = Manifest { expires_at: UNIX_EPOCH - Duration::from_secs(1), ..manifest() };
        assert!(matches!(bad.to_json_bytes(), Err(ManifestError::InvalidManifest { .. })));
        let bad = Manifest { channel: "stable\"".to_string(), ..manifest() };
        assert!(matches!(bad.to_json_bytes(), Err(ManifestError::InvalidManifest { .. })));
    }

    #[test]
    fn a_manifest_that_passes_the_policy_yields_this_architectures_artifact() {
        let manifest = manifest();
        let artifact = check(&manifest, &policy()).unwrap();
        assert_eq!(artifact, &manifest.artifacts["arm64"]);
        let loose = Policy { channel: None, highest_installed: None, target_version: Some(v("0.2.0")), ..policy() };
        assert!(check(&manifest, &loose).is_ok());
    }

    #[test]
    fn a_manifest_for_another_package_is_refused() {
        let other = Manifest { name: "mcp-other".to_string(), ..manifest() };
        let err = check(&other, &policy()).unwrap_err();
        assert!(matches!(err, ManifestError::WrongPackage { .. }));
        assert!(err.to_string().contains("mcp-other"));
    }

    #[test]
    fn a_manifest_of_another_channel_is_refused_when_a_channel_is_asked_for() {
        let beta = Manifest { channel: "beta".to_string(), ..manifest() };
        let err = check(&beta, &policy()).unwrap_err();
        assert!(matches!(err, ManifestError::WrongChannel { .. }));
        assert!(err.to_string().contains("\"beta\"") && err.to_string().contains("\"stable\""));
        assert!(check(&beta, &Policy { channel: None, ..policy() }).is_ok());
    }

    #[test]
    fn a_manifest_offering_another_version_than_the_target_is_refused() {
        let err = check(&manifest(), &Policy { target_version: Some(v("0.3.0")), ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::WrongTargetVersion { .. }));
        assert!(err.to_string().contains("0.3.0"));
    }

    #[test]
    fn an_expired_manifest_is_refused() {
        let err = check(&manifest(), &Policy { now: at("2027-01-01T00:00:00Z"), ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::Expired { .. }));
        assert!(err.to_string().contains("2027-01-01T00:00:00Z"), "{err}");
    }

    #[test]
    fn a_manifest_released_in_the_future_is_refused_beyond_five_minutes_of_skew() {
        let released = at("2026-12-02T19:00:00Z");
        let slightly_behind = Policy { now: released - Duration::from_secs(5 * 60), ..policy() };
        assert!(check(&manifest(), &slightly_behind).is_ok());
        let far_behind = Policy { now: released - Duration::from_secs(5 * 60 + 1), ..policy() };
        let err = check(&manifest(), &far_behind).unwrap_err();
        assert!(matches!(err, ManifestError::ReleasedInFuture { .. }));
        assert!(err.to_string().contains("clock"));
    }

    #[test]
    fn a_downgrade_is_refused() {
        let err =
            check(&manifest(), &Policy { installed: v("0.3.0"), highest_installed: None, ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::Downgrade { .. }));
        assert!(err.to_string().contains("manage.rollback"));
    }

    #[test]
    fn the_running_version_is_not_installed_again() {
        let err = check(&manifest(), &Policy { installed: v("0.2.0"), ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::AlreadyInstalled { .. }), "{err}");
        let rebuilt = Manifest { version: v("0.2.0+build.7"), ..manifest() };
        let err = check(&rebuilt, &Policy { installed: v("0.2.0"), ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::AlreadyInstalled { .. }), "build metadata is no newer: {err}");
    }

    #[test]
    fn a_version_below_the_highest_ever_installed_is_refused() {
        let after_rollback = Policy { installed: v("0.1.0"), highest_installed: Some(v("0.2.0")), ..policy() };
        let err = check(&manifest(), &after_rollback).unwrap_err();
        assert!(matches!(err, ManifestError::NotNewerThanHighest { .. }));
        assert_eq!(
            err.to_string(),
            "0.2.0 is not newer than 0.2.0, the highest version ever installed here; to go back use manage.rollback"
        );
        let higher = Policy { highest_installed: Some(v("0.3.0")), ..after_rollback };
        assert!(matches!(check(&manifest(), &higher), Err(ManifestError::NotNewerThanHighest { .. })));
    }

    #[test]
    fn an_installed_version_below_min_upgrade_from_is_refused() {
        let manifest = Manifest { min_upgrade_from: Some(v("0.1.5")), ..manifest() };
        let err = check(&manifest, &policy()).unwrap_err();
        assert!(matches!(err, ManifestError::TooOldToUpgrade { .. }));
        assert!(err.to_string().contains("0.1.5"));
        assert!(check(&manifest, &Policy { installed: v("0.1.5"), highest_installed: None, ..policy() }).is_ok());
        assert!(check(&without_min_upgrade(), &Policy { installed: v("0.0.1"), ..policy() }).is_ok());
    }

    #[test]
    fn a_manifest_without_this_architecture_is_refused() {
        let err = check(&manifest(), &Policy { architecture: "riscv64".to_string(), ..policy() }).unwrap_err();
        assert!(matches!(err, ManifestError::NoArtifact { .. }));
        assert!(err.to_string().contains("riscv64") && err.to_string().contains("amd64, arm64, armhf"));
    }

    #[test]
    fn an_artifact_of_size_zero_or_over_the_download_limit_is_refused() {
        let mut empty = manifest();
        empty.artifacts.get_mut("arm64").unwrap().size = 0;
        assert!(matches!(check(&empty, &policy()), Err(ManifestError::EmptyArtifact { .. })));

        let limit = Policy { max_download_bytes: 3_145_727, ..policy() };
        let err = check(&manifest(), &limit).unwrap_err();
        assert!(matches!(err, ManifestError::ArtifactTooLarge { size: 3_145_728, max: 3_145_727, .. }));
        assert!(check(&manifest(), &Policy { max_download_bytes: 3_145_728, ..policy() }).is_ok());
    }

    #[test]
    fn relative_artifact_urls_resolve_against_the_manifests_url() {
        let cases = [
            (
                "../pool/mcp-raspi_0.2.0_arm64.deb",
                "https://releases.example.org/mcp-raspi/pool/mcp-raspi_0.2.0_arm64.deb",
            ),
            ("mcp-raspi.deb", "https://releases.example.org/mcp-raspi/stable/mcp-raspi.deb"),
            ("./a/./b/../c.deb", "https://releases.example.org/mcp-raspi/stable/a/c.deb"),
            ("../../../../../x.deb", "https://releases.example.org/x.deb"),
            ("/pool/x.deb", "https://releases.example.org/pool/x.deb"),
            ("/pool/../x.deb", "https://releases.example.org/x.deb"),
            ("//cdn.example.net/x.deb", "https://cdn.example.net/x.deb"),
            ("http://cdn.example.net/a/../x.deb?v=2", "http://cdn.example.net/x.deb?v=2"),
            ("HTTPS://cdn.example.net/x.deb#part", "https://cdn.example.net/x.deb"),
            ("pool/a:b.deb", "https://releases.example.org/mcp-raspi/stable/pool/a:b.deb"),
            ("x.deb?token=1", "https://releases.example.org/mcp-raspi/stable/x.deb?token=1"),
            ("..", "https://releases.example.org/mcp-raspi/"),
        ];
        for (reference, expected) in cases {
            assert_eq!(artifact_url(MANIFEST_URL, reference).unwrap(), expected, "{reference}");
        }
        assert_eq!(
            artifact_url("https://h.example:8443/m.json?sig=1", "x.deb").unwrap(),
            "https://h.example:8443/x.deb"
        );
        assert_eq!(artifact_url("http://h.example", "x.deb").unwrap(), "http://h.example/x.deb");
    }

    #[test]
    fn urls_that_are_not_http_or_are_malformed_are_refused() {
        let refused = [
            (MANIFEST_URL, "ftp://example.org/x.deb"),
            (MANIFEST_URL, "file:///tmp/x.deb"),
            (MANIFEST_URL, "x y.deb"),
            (MANIFEST_URL, "caf\u{e9}.deb"),
            (MANIFEST_URL, ""),
            (MANIFEST_URL, "a_b:c.deb"),
            (MANIFEST_URL, "https:///x.deb"),
            (MANIFEST_URL, "\\\\host\\x.deb"),
            ("file:///srv/manifest.json", "x.deb"),
            ("/srv/manifest.json", "x.deb"),
            ("https:///manifest.json", "x.deb"),
        ];
        for (base, reference) in refused {
            let err = artifact_url(base, reference).unwrap_err();
            assert!(matches!(err, ManifestError::InvalidUrl { .. }), "{base} {reference}: {err}");
        }
    }

    #[test]
    fn a_built_manifest_lists_each_packages_size_and_sha256_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let mut debs = Vec::new();
        for (arch, len) in [("amd64", 200_000usize), ("arm64", 5)] {
            let path = dir.path().join(format!("mcp-raspi_0.2.0_{arch}.deb"));
            fs::write(&path, vec![b'x'; len]).unwrap();
            debs.push(PublishedDeb {
                architecture: arch.to_string(),
                url: format!("../pool/mcp-raspi_0.2.0_{arch}.deb"),
                path,
            });
        }
        let built =
            build_manifest(v("0.2.0"), "stable", at("2026-12-02T19:00:00Z"), at("2027-01-01T00:00:00Z"), None, &debs)
                .unwrap();
        assert_eq!(built.name, PACKAGE_NAME);
        assert_eq!(built.artifacts["amd64"].size, 200_000);
        assert_eq!(built.artifacts["amd64"].sha256, <[u8; 32]>::from(Sha256::digest(vec![b'x'; 200_000])));
        assert_eq!(built.artifacts["arm64"].sha256_hex(), hex(&Sha256::digest(b"xxxxx")));

        let bytes = built.to_json_bytes().unwrap();
        let (sig, keyring) = signed(&bytes);
        let verified = verify(&bytes, &sig, &keyring).unwrap();
        assert_eq!(verified, built);
        assert_eq!(check(&verified, &policy()).unwrap().size, 5);
    }

    #[test]
    fn building_a_manifest_refuses_a_missing_package_or_an_architecture_given_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.deb");
        let deb = |arch: &str, path: &Path| PublishedDeb {
            architecture: arch.to_string(),
            url: "a.deb".to_string(),
            path: path.to_path_buf(),
        };
        let build = |debs: &[PublishedDeb]| {
            build_manifest(v("0.2.0"), "stable", at("2026-12-02T19:00:00Z"), at("2027-01-01T00:00:00Z"), None, debs)
        };
        assert!(matches!(build(&[deb("arm64", &path)]), Err(ManifestError::Io { .. })));
        fs::write(&path, b"deb").unwrap();
        let twice = build(&[deb("arm64", &path), deb("arm64", &path)]).unwrap_err();
        assert!(twice.to_string().contains("two packages"), "{twice}");
        assert!(matches!(build(&[]), Err(ManifestError::InvalidManifest { .. })));
    }

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
