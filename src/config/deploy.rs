//! Configuration deployments: how the fleet's operator replaces a device's configuration file
//! without the network-facing server ever being able to rewrite it.
//!
//! A [`Deployment`] is the new file's text, the SHA-256 of the file it replaces and when it
//! was made, signed (ed25519, as the release manifests) with the fleet's configuration key.
//! The server only relays it: the ops agent stages it in the state directory and starts the
//! root one-shot unit (`updates.config.apply_unit`), whose program is the dpkg-owned
//! `mcp-raspi config-apply`, which runs [`apply`]:
//!
//! 1. the signature must verify against a key of `updates.config.keys_dir` (root's);
//! 2. the file must still be the one the deployment replaces, so that a deployment applies
//!    once, to the file it was made from (and the diff the operator saw is the one applied);
//! 3. the new text must load as the server would load it;
//! 4. the old file is kept as `config.yml.previous`, the new one replaces it atomically with
//!    the same mode and owner, the services restart, and the restarted server must answer
//!    `/healthz` within `updates.config.health_timeout_seconds`; otherwise the old file is
//!    put back and the services restart again.
//!
//! Each step's outcome is recorded in `config-apply.json` in the state directory, which
//! `manage.get_server_status` reports.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{hex, Config, ConfigError};
use crate::update::manifest::{self, Keyring, SecretKey};
use crate::update::release::Owner;
use crate::update::state::{now, write_atomically};

/// The `format` of a deployment.
pub const FORMAT: &str = "mcp-raspi-config-deployment/1";
/// The directory of the state directory where the agent stages a deployment.
pub const STAGED_DIR: &str = "config-deploy";
pub const DEPLOYMENT_FILE: &str = "deployment.json";
pub const SIGNATURE_FILE: &str = "deployment.json.sig";
/// The record of the last deployment, in the state directory.
pub const RECORD_FILE: &str = "config-apply.json";
/// The largest configuration file deployed.
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;
/// The largest deployment file read (the text, escaped, and a little more).
const MAX_DEPLOYMENT_BYTES: u64 = 2 * MAX_CONFIG_BYTES as u64 + 4096;

/// A configuration file for one device, made against the file it replaces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub format: String,
    /// SHA-256 of the file this one replaces.
    pub replaces: String,
    /// SHA-256 of `text`.
    pub sha256: String,
    /// When it was made (RFC 3339, UTC).
    pub made_at: String,
    pub text: String,
}

/// SHA-256 of `bytes`, in hexadecimal.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl Deployment {
    /// `text` to replace the file whose SHA-256 is `replaces`.
    pub fn new(text: &str, replaces: &str) -> Deployment {
        Deployment {
            format: FORMAT.to_string(),
            replaces: replaces.to_string(),
            sha256: sha256(text.as_bytes()),
            made_at: now(),
            text: text.to_string(),
        }
    }

    /// The deployment's bytes and their signature by `key`.
    pub fn sign(&self, key: &SecretKey) -> (Vec<u8>, Vec<u8>) {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let signature = manifest::sign(&bytes, key);
        (bytes, signature)
    }

    /// The deployment `bytes` hold, once `signature` verifies against `keyring`.
    pub fn verify(bytes: &[u8], signature: &[u8], keyring: &Keyring) -> Result<Deployment, String> {
        if bytes.len() as u64 > MAX_DEPLOYMENT_BYTES {
            return Err(format!("the deployment is larger than {MAX_DEPLOYMENT_BYTES} bytes"));
        }
        manifest::verify_signature(bytes, signature, keyring)
            .map_err(|e| format!("the deployment's signature: {e}"))?;
        let deployment: Deployment =
            serde_json::from_slice(bytes).map_err(|e| format!("the deployment is not one mcp-fleet makes: {e}"))?;
        if deployment.format != FORMAT {
            return Err(format!("the deployment's format {:?} is not {FORMAT:?}", deployment.format));
        }
        if deployment.text.len() > MAX_CONFIG_BYTES {
            return Err(format!("the configuration is larger than {MAX_CONFIG_BYTES} bytes"));
        }
        if sha256(deployment.text.as_bytes()) != deployment.sha256 {
            return Err("the deployment's text does not have the SHA-256 it names".into());
        }
        Ok(deployment)
    }
}

/// Checks a configuration file's text as the server loads it (environment overrides apart).
pub fn check_text(text: &str, origin: &str) -> Result<Config, ConfigError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::Parse {
            origin: origin.to_string(),
            message: format!("the file is larger than {MAX_CONFIG_BYTES} bytes"),
        });
    }
    let config = Config::from_yaml(text, origin)?;
    config.validate()?;
    Ok(config)
}

/// How the last deployment went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApplyStatus {
    /// Being applied.
    Running,
    /// Installed, and the restarted server answered.
    Applied,
    /// Not installed: the file is as it was.
    Refused,
    /// Installed, but the restarted server did not answer: the old file is back.
    RolledBack,
}

/// The record of the last deployment (`config-apply.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApplyRecord {
    pub status: ApplyStatus,
    /// SHA-256 of the deployed file, when the deployment could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// SHA-256 of the file it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_sha256: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why it was refused or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ApplyRecord {
    /// The record at `path`, when there is one that reads.
    pub fn load(path: &Path) -> Option<ApplyRecord> {
        let bytes = read_bounded(path, 64 * 1024).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Where [`apply`] reads and writes.
#[derive(Clone, Debug)]
pub struct ApplyPaths {
    /// The configuration file replaced.
    pub config: PathBuf,
    /// The keys a deployment must be signed with.
    pub keys_dir: PathBuf,
    /// The state directory: the staged deployment and the record.
    pub state_dir: PathBuf,
}

impl ApplyPaths {
    pub fn staged(&self) -> PathBuf {
        self.state_dir.join(STAGED_DIR)
    }

    pub fn record(&self) -> PathBuf {
        self.state_dir.join(RECORD_FILE)
    }

    /// The keys a deployment may be signed with; none is an error that says where they go.
    fn trusted_keys(&self) -> Result<Keyring, String> {
        let keyring = Keyring::load(&self.keys_dir).map_err(|e| e.to_string())?;
        if keyring.is_empty() {
            return Err(format!(
                "{} holds no key (*.pub): put the fleet's configuration key there",
                self.keys_dir.display()
            ));
        }
        Ok(keyring)
    }

    /// The file kept beside the configuration while a new one is tried, and after.
    pub fn previous(&self) -> PathBuf {
        let mut name = self.config.file_name().unwrap_or_default().to_os_string();
        name.push(".previous");
        self.config.with_file_name(name)
    }
}

/// What [`apply`] asks of the system: restart the services (returning once they restarted),
/// and tell whether the server that `config` starts answers.
pub trait Services {
    fn restart(&mut self) -> Result<(), String>;
    fn healthy(&mut self, config: &Config) -> Result<(), String>;
}

/// Installs the staged deployment (see the module's documentation), records and returns how
/// it went. The staged files are removed in every case.
pub fn apply(paths: &ApplyPaths, services: &mut dyn Services) -> ApplyRecord {
    let mut record = ApplyRecord {
        status: ApplyStatus::Running,
        sha256: None,
        previous_sha256: None,
        started_at: now(),
        finished_at: None,
        reason: None,
    };
    let staged = paths.staged();
    let read = read_bounded(&staged.join(DEPLOYMENT_FILE), MAX_DEPLOYMENT_BYTES)
        .and_then(|bytes| read_bounded(&staged.join(SIGNATURE_FILE), 4096).map(|sig| (bytes, sig)));
    let _ = fs::remove_file(staged.join(DEPLOYMENT_FILE));
    let _ = fs::remove_file(staged.join(SIGNATURE_FILE));
    let outcome = read.and_then(|(bytes, signature)| Deployment::verify(&bytes, &signature, &paths.trusted_keys()?));
    let deployment = match outcome {
        Ok(d) => d,
        Err(reason) => return finish(paths, record, ApplyStatus::Refused, Some(reason)),
    };
    record.sha256 = Some(deployment.sha256.clone());
    let current = match read_bounded(&paths.config, MAX_DEPLOYMENT_BYTES) {
        Ok(bytes) => bytes,
        Err(reason) => return finish(paths, record, ApplyStatus::Refused, Some(reason)),
    };
    record.previous_sha256 = Some(sha256(&current));
    if sha256(&current) != deployment.replaces {
        let reason = format!(
            "{} is no longer the file the deployment was made from (sha256 {}, not {}): render and deploy again",
            paths.config.display(),
            short(&sha256(&current)),
            short(&deployment.replaces)
        );
        return finish(paths, record, ApplyStatus::Refused, Some(reason));
    }
    if sha256(&current) == deployment.sha256 {
        return finish(paths, record, ApplyStatus::Applied, None);
    }
    let config = match check_text(&deployment.text, &paths.config.display().to_string()) {
        Ok(config) => config,
        Err(e) => return finish(paths, record, ApplyStatus::Refused, Some(format!("the new file does not load: {e}"))),
    };
    let meta = match fs::metadata(&paths.config) {
        Ok(meta) => meta,
        Err(e) => return finish(paths, record, ApplyStatus::Refused, Some(format!("{}: {e}", paths.config.display()))),
    };
    let mode = meta.permissions().mode() & 0o7777;
    let owner = Some(Owner { uid: meta.uid(), gid: meta.gid() }).filter(|_| nix::unistd::geteuid().is_root());
    record_now(paths, &record);
    if let Err(e) = write_atomically(&paths.previous(), &current, mode, owner) {
        return finish(paths, record, ApplyStatus::Refused, Some(format!("cannot keep the old file: {e}")));
    }
    if let Err(e) = write_atomically(&paths.config, deployment.text.as_bytes(), mode, owner) {
        return finish(paths, record, ApplyStatus::Refused, Some(format!("cannot write the new file: {e}")));
    }
    let proved = services.restart().and_then(|()| services.healthy(&config));
    match proved {
        Ok(()) => finish(paths, record, ApplyStatus::Applied, None),
        Err(reason) => {
            let put_back = write_atomically(&paths.config, &current, mode, owner).map_err(|e| e.to_string());
            let restarted = put_back.clone().and_then(|()| services.restart());
            let reason = match restarted {
                Ok(()) => format!("the new configuration did not prove healthy ({reason}); the old file is back"),
                Err(e) => format!(
                    "the new configuration did not prove healthy ({reason}), and putting the old one back failed: {e}"
                ),
            };
            finish(paths, record, ApplyStatus::RolledBack, Some(reason))
        }
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn finish(paths: &ApplyPaths, mut record: ApplyRecord, status: ApplyStatus, reason: Option<String>) -> ApplyRecord {
    record.status = status;
    record.reason = reason;
    record.finished_at = Some(now());
    record_now(paths, &record);
    record
}

fn record_now(paths: &ApplyPaths, record: &ApplyRecord) {
    let text = format!("{}\n", serde_json::to_string_pretty(record).unwrap_or_default());
    if let Err(e) = write_atomically(&paths.record(), text.as_bytes(), 0o644, None) {
        log::error!("cannot record the configuration deployment: {e}");
    }
}

/// Reads at most `max` bytes of a regular file, never through a symbolic link (the staged
/// files are written by a user that is not root).
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open {shown}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.len() > max {
        return Err(format!("{shown} is larger than {max} bytes"));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read {shown}: {e}"))?;
    Ok(bytes)
}

/// Stages a signed deployment for [`apply`] (the agent's part): checked first, so that
/// nothing is staged that the root program would refuse for its signature or its text.
pub fn stage(paths: &ApplyPaths, bytes: &[u8], signature: &[u8]) -> Result<Deployment, String> {
    let deployment = Deployment::verify(bytes, signature, &paths.trusted_keys()?)?;
    check_text(&deployment.text, "the deployed file").map_err(|e| format!("the new file does not load: {e}"))?;
    let staged = paths.staged();
    fs::create_dir_all(&staged).map_err(|e| format!("cannot create {}: {e}", staged.display()))?;
    let _ = fs::set_permissions(&staged, fs::Permissions::from_mode(0o750));
    write_atomically(&staged.join(SIGNATURE_FILE), signature, 0o640, None).map_err(|e| e.to_string())?;
    write_atomically(&staged.join(DEPLOYMENT_FILE), bytes, 0o640, None).map_err(|e| e.to_string())?;
    Ok(deployment)
}

#[cfg(test)]
mod tests;
