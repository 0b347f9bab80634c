//! The manifest document: [`Manifest`] and its [`Artifact`]s, and their JSON form,
//! `manifest.json`, parsed strictly and written in a stable order.
//!
//! The wire types, the manifest as strings exactly as the JSON holds them, stay private to
//! this file: the rest of the crate sees only [`Manifest`], with versions and times parsed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use semver::Version;
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::url::check_url_text;
use super::{hex, parse_json, rfc3339, writable_as_rfc3339, ManifestError, MAX_MANIFEST_BYTES};

const MAX_NAME_LEN: usize = 64;
const MAX_VERSION_LEN: usize = 128;
const MAX_ARCH_LEN: usize = 32;
/// Debian knows a few dozen architectures; more entries than this is not a real manifest.
const MAX_ARTIFACTS: usize = 64;

/// One package of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Absolute, or relative to the manifest's URL: see [`artifact_url`](super::artifact_url).
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
    /// Parses `manifest.json` strictly. [`verify`](super::verify) is the way to get a manifest that can be
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
    pub(super) fn validate(&self) -> Result<(), String> {
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
            check_architecture(architecture)?;
            check_url_text(&artifact.url)
                .map_err(|reason| format!("the {architecture} artifact's url {:?}: {reason}", artifact.url))?;
        }
        Ok(())
    }
}

/// Checks that `architecture` can be a Debian architecture name (`arm64`, `armhf`).
pub(crate) fn check_architecture(architecture: &str) -> Result<(), String> {
    if architecture.is_empty()
        || architecture.len() > MAX_ARCH_LEN
        || !architecture.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!("{architecture:?} is not a Debian architecture name"));
    }
    Ok(())
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

pub(crate) fn parse_sha256(text: &str) -> Option<[u8; 32]> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::update::manifest::fixtures::{at, manifest, signed, v, without_min_upgrade};
    use crate::update::manifest::verify;
    use std::time::{Duration, UNIX_EPOCH};

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
}
