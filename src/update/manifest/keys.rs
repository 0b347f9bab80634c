//! Release keys: key ids, the public keys devices trust and the secret key a publisher
//! signs with, their one-line key files, [`keygen`], and the [`Keyring`] of a trusted keys
//! directory.
//!
//! Both sides use this: the publisher generates and signs with a secret key, a device
//! loads the public keys it trusts. The key file formats are described in the parent
//! module, under `## Keys`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use super::{hex, io_err, ManifestError, ALGORITHM, PUBLIC_KEY_HEADER, SECRET_KEY_HEADER};

const PUBLIC_KEY_SUFFIX: &str = "pub";
const SECRET_KEY_SUFFIX: &str = "secret";
/// Key files are one short line; reading stops well past that, so a huge file costs nothing.
const MAX_KEY_FILE_BYTES: u64 = 4096;

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
    pub(super) key: VerifyingKey,
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
    pub(super) key: SigningKey,
    pub(super) id: KeyId,
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
    pub(super) dir: Option<PathBuf>,
    pub(super) problems: Vec<ManifestError>,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::update::manifest::fixtures::manifest;
    use crate::update::manifest::{sign, verify};

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
}
