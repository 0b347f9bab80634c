//! `fleet-config.yml`: the fleet, its devices, how to reach them, and the configuration
//! they share.
//!
//! The file of the deployment specification is accepted as it is written (`fleet.id`,
//! `region`, `devices` with `id`, `hostname`, `model`, `role`, `tags`, and
//! `config_template`). What it leaves open has defaults that can be set once for the fleet
//! under `fleet.connection` and changed per device: the MCP endpoint (a URL template,
//! `https://{hostname}/mcp`) and the credential, which the file only ever names (an
//! environment variable or a file), never holds. Per device, `config` overrides the shared
//! template.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

/// The endpoint of a device when neither the fleet nor the device names one: the server
/// behind a Cloudflare Tunnel or a TLS proxy, as the deployment specification exposes it.
pub const DEFAULT_URL: &str = "https://{hostname}/mcp";
/// The environment variable holding the bearer token when no credential is named.
pub const DEFAULT_TOKEN_ENV: &str = "MCP_FLEET_TOKEN";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    fleet: Fleet,
}

/// A fleet file, read and checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub id: String,
    #[serde(default)]
    pub region: Option<String>,
    /// The release every device should run; `drift` and `health` flag the others.
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub connection: Connection,
    pub devices: Vec<Device>,
    /// The configuration every device gets, before its own `config`.
    #[serde(default)]
    pub config_template: Option<Value>,
    /// The secret half of the fleet's configuration key (`mcp-fleet config keygen`; mode
    /// 0600), which signs what `config deploy` sends; relative to the fleet file.
    #[serde(default)]
    pub config_key_file: Option<std::path::PathBuf>,
}

/// How the fleet's devices are reached.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Connection {
    /// The MCP endpoint; `{hostname}` and `{id}` are replaced by the device's.
    pub url: String,
    pub credential: Option<Credential>,
    /// Seconds one device may take to answer one call.
    pub timeout_seconds: u64,
    /// Devices called at once.
    pub concurrency: usize,
}

impl Default for Connection {
    fn default() -> Self {
        Connection { url: DEFAULT_URL.into(), credential: None, timeout_seconds: 10, concurrency: 16 }
    }
}

/// Where a device's credential is: a bearer token (an MCP token of the server, or an
/// OIDC access token) or a Cloudflare Access service token. Only names are written here.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The environment variable holding a bearer token.
    pub token_env: Option<String>,
    /// A file holding a bearer token (and nothing else), readable only by its owner.
    pub token_file: Option<PathBuf>,
    /// A Cloudflare Access service token: its client id (not a secret) and where its secret is.
    pub cloudflare_service_token: Option<ServiceToken>,
    /// Refused with its own message: a secret written into the file.
    #[serde(default)]
    token: Option<serde::de::IgnoredAny>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceToken {
    pub client_id: String,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    client_secret: Option<serde::de::IgnoredAny>,
}

/// One device of the fleet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    pub id: String,
    pub hostname: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// This device's endpoint, instead of the fleet's.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub credential: Option<Credential>,
    /// What this device's configuration changes in the template.
    #[serde(default)]
    pub config: Option<Value>,
}

/// A fleet file that cannot be used; the message names the file, the device and the key.
#[derive(Debug, PartialEq, Eq)]
pub struct FleetError(pub String);

impl std::fmt::Display for FleetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Fleet {
    /// Reads and checks the fleet file at `path`.
    pub fn load(path: &Path) -> Result<Fleet, FleetError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            FleetError(format!("cannot read the fleet file {}: {}", path.display(), crate::cli::io_message(&e)))
        })?;
        Fleet::parse(&text, &path.display().to_string())
    }

    /// Parses and checks fleet YAML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Fleet, FleetError> {
        let document: Document = serde_saphyr::from_str(text).map_err(|e| FleetError(format!("{origin}: {e}")))?;
        let fleet = document.fleet;
        fleet.check().map_err(|e| FleetError(format!("{origin}: {e}")))?;
        Ok(fleet)
    }

    fn check(&self) -> Result<(), String> {
        name("fleet.id", &self.id)?;
        if let Some(version) = &self.version {
            semver::Version::parse(version)
                .map_err(|e| format!("fleet.version: {version:?} is not a release version such as 0.1.4 ({e})"))?;
        }
        if self.devices.is_empty() {
            return Err("fleet.devices: the fleet has no devices; list them with id and hostname".into());
        }
        url_template("fleet.connection.url", &self.connection.url)?;
        if self.connection.timeout_seconds == 0 || self.connection.timeout_seconds > 3600 {
            return Err(format!(
                "fleet.connection.timeout_seconds: {} is out of range; give 1 to 3600",
                self.connection.timeout_seconds
            ));
        }
        if self.connection.concurrency == 0 || self.connection.concurrency > 1024 {
            return Err(format!(
                "fleet.connection.concurrency: {} is out of range; give 1 to 1024",
                self.connection.concurrency
            ));
        }
        if let Some(credential) = &self.connection.credential {
            credential.check("fleet.connection.credential")?;
        }
        mapping("fleet.config_template", self.config_template.as_ref())?;
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, device) in self.devices.iter().enumerate() {
            let at = format!("fleet.devices[{i}]");
            name(&format!("{at}.id"), &device.id)?;
            if let Some(first) = seen.insert(&device.id, i) {
                return Err(format!(
                    "{at}.id: {:?} is also the id of fleet.devices[{first}]; each device needs its own id",
                    device.id
                ));
            }
            let at = format!("device {} ({at})", device.id);
            if device.hostname.is_empty() || device.hostname.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(format!("{at}.hostname: {:?} is not a host name", device.hostname));
            }
            for tag in &device.tags {
                name(&format!("{at}.tags"), tag)?;
            }
            if let Some(url) = &device.url {
                url_template(&format!("{at}.url"), url)?;
            }
            if let Some(credential) = &device.credential {
                credential.check(&format!("{at}.credential"))?;
            }
            mapping(&format!("{at}.config"), device.config.as_ref())?;
            // The endpoint must be a URL once the device's names are in it.
            let url = self.url_of(device);
            reqwest::Url::parse(&url).map_err(|e| format!("{at}: the endpoint {url:?} is not a URL ({e})"))?;
        }
        Ok(())
    }

    /// Every tag of the fleet's devices.
    pub fn tags(&self) -> BTreeSet<&str> {
        self.devices.iter().flat_map(|d| d.tags.iter().map(String::as_str)).collect()
    }

    /// The devices a command names: all, those with a tag, or by id. An unknown tag or id is
    /// an error that lists what exists.
    pub fn select(&self, selection: &Selection) -> Result<Vec<&Device>, FleetError> {
        match selection {
            Selection::All => Ok(self.devices.iter().collect()),
            Selection::Tag(tag) => {
                let chosen: Vec<&Device> = self.devices.iter().filter(|d| d.tags.contains(tag)).collect();
                if chosen.is_empty() {
                    let tags: Vec<&str> = self.tags().into_iter().collect();
                    return Err(FleetError(format!(
                        "no device of fleet {} has the tag {tag:?}; the tags are: {}",
                        self.id,
                        if tags.is_empty() { "(none)".to_string() } else { tags.join(", ") }
                    )));
                }
                Ok(chosen)
            }
            Selection::Ids(ids) => ids.iter().map(|id| self.device(id)).collect(),
        }
    }

    /// The device `id`, or an error naming the ids there are.
    pub fn device(&self, id: &str) -> Result<&Device, FleetError> {
        self.devices.iter().find(|d| d.id == id).ok_or_else(|| {
            let ids: Vec<&str> = self.devices.iter().map(|d| d.id.as_str()).take(20).collect();
            let more = if self.devices.len() > ids.len() { ", …" } else { "" };
            FleetError(format!("fleet {} has no device {id:?}; its devices are {}{more}", self.id, ids.join(", ")))
        })
    }

    /// The MCP endpoint of `device`.
    pub fn url_of(&self, device: &Device) -> String {
        let template = device.url.as_deref().unwrap_or(&self.connection.url);
        template.replace("{hostname}", &device.hostname).replace("{id}", &device.id)
    }

    /// Where the credential of `device` is.
    pub fn credential_of(&self, device: &Device) -> Credential {
        device
            .credential
            .clone()
            .or_else(|| self.connection.credential.clone())
            .unwrap_or_else(|| Credential { token_env: Some(DEFAULT_TOKEN_ENV.into()), ..Credential::default() })
    }

    /// The configuration `device` should run: the template with the device's `config` merged
    /// over it (mappings merge key by key; anything else replaces).
    pub fn config_of(&self, device: &Device) -> Value {
        let mut config = self.config_template.clone().unwrap_or_else(|| Value::Object(Map::new()));
        if let Some(overrides) = &device.config {
            merge(&mut config, overrides);
        }
        config
    }
}

/// Which devices a command is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    All,
    Tag(String),
    Ids(Vec<String>),
}

impl Credential {
    fn check(&self, at: &str) -> Result<(), String> {
        if self.token.is_some() {
            return Err(format!(
                "{at}.token: a secret is never written in the fleet file; name the variable that holds it \
                 (token_env: NAME) or a file only you can read (token_file: PATH)"
            ));
        }
        let kinds = [self.token_env.is_some(), self.token_file.is_some(), self.cloudflare_service_token.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(format!("{at}: give exactly one of token_env, token_file and cloudflare_service_token"));
        }
        if let Some(env) = &self.token_env {
            env_name(&format!("{at}.token_env"), env)?;
        }
        if let Some(service) = &self.cloudflare_service_token {
            let at = format!("{at}.cloudflare_service_token");
            if service.client_secret.is_some() {
                return Err(format!(
                    "{at}.client_secret: a secret is never written in the fleet file; use client_secret_env: NAME \
                     or client_secret_file: PATH"
                ));
            }
            if service.client_id.trim().is_empty() {
                return Err(format!("{at}.client_id: the service token's client id is empty"));
            }
            match (&service.client_secret_env, &service.client_secret_file) {
                (Some(env), None) => env_name(&format!("{at}.client_secret_env"), env)?,
                (None, Some(_)) => {}
                _ => return Err(format!("{at}: give exactly one of client_secret_env and client_secret_file")),
            }
        }
        Ok(())
    }
}

/// Ids, tags and the fleet's name: letters, digits, `.`, `_` and `-`.
fn name(key: &str, value: &str) -> Result<(), String> {
    let fine = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if fine {
        Ok(())
    } else {
        Err(format!("{key}: {value:?} is not a name; use letters, digits, '.', '_' and '-' (at most 128)"))
    }
}

fn env_name(key: &str, value: &str) -> Result<(), String> {
    let fine = !value.is_empty()
        && !value.starts_with(|c: char| c.is_ascii_digit())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if fine {
        Ok(())
    } else {
        Err(format!("{key}: {value:?} is not an environment variable's name"))
    }
}

fn url_template(key: &str, url: &str) -> Result<(), String> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("{key}: {url:?} must start with https:// or http://"));
    }
    let mut rest = url;
    while let Some(open) = rest.find('{') {
        let close =
            rest[open..].find('}').map(|c| open + c).ok_or_else(|| format!("{key}: {url:?} has an unclosed '{{'"))?;
        let placeholder = &rest[open + 1..close];
        if placeholder != "hostname" && placeholder != "id" {
            return Err(format!("{key}: {{{placeholder}}} is not a placeholder; use {{hostname}} or {{id}}"));
        }
        rest = &rest[close + 1..];
    }
    Ok(())
}

fn mapping(key: &str, value: Option<&Value>) -> Result<(), String> {
    match value {
        None | Some(Value::Object(_)) => Ok(()),
        Some(other) => Err(format!("{key}: must be a mapping of configuration keys, not {}", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Merges `overrides` into `base`: mappings key by key, anything else replaced.
fn merge(base: &mut Value, overrides: &Value) {
    match (base, overrides) {
        (Value::Object(base), Value::Object(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, overrides) => *base = overrides.clone(),
    }
}

#[cfg(test)]
mod tests;
