//! `deltas.json`: the signed list of a release's deltas, next to its `manifest.json`.
//!
//! ```json
//! {
//!   "format": "mcp-raspi deltas 1",
//!   "name": "mcp-raspi",
//!   "version": "0.2.0",
//!   "deltas": [
//!     {
//!       "architecture": "arm64",
//!       "from": "0.1.0",
//!       "package_sha256": "<64 lowercase hex digits>",
//!       "url": "../pool/mcp-raspi_0.1.0_to_0.2.0_arm64.delta",
//!       "size": 412345,
//!       "sha256": "<64 lowercase hex digits>"
//!     }
//!   ]
//! }
//! ```
//!
//! `deltas.json.sig` signs it exactly as `manifest.json.sig` signs the manifest, with the
//! same release key. The index is a file of its own rather than a field of the manifest so
//! that a device of a release that parses manifests strictly, and knows nothing of deltas,
//! goes on updating from a repository that publishes them. `format` says what the signed
//! bytes are (a manifest has no such field, and both are parsed refusing unknown fields, so
//! neither can pass for the other). `version` binds the index to the manifest's release,
//! and each delta's `package_sha256` to the package the manifest gives for its
//! architecture: the delta rebuilds that build of the release and no other. Unknown fields, a delta
//! listed twice for the same architecture and base, and a base not older than the release
//! are refused.

use std::collections::BTreeSet;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::base::hex;
use crate::update::manifest::{self, ManifestError, PACKAGE_NAME};

/// The index's file name, next to `manifest.json`.
pub const INDEX_FILE: &str = "deltas.json";
/// The value of `format`.
pub const INDEX_FORMAT: &str = "mcp-raspi deltas 1";
/// The largest index accepted: a few hundred deltas.
pub const MAX_INDEX_BYTES: usize = 64 * 1024;
const MAX_DELTAS: usize = 256;

/// One delta of the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaEntry {
    pub architecture: String,
    /// The release it applies to.
    pub from: Version,
    /// The SHA-256 of the package of the release (this architecture) it stands for.
    pub package_sha256: [u8; 32],
    /// Absolute, or relative to the index's URL.
    pub url: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// The deltas that lead to one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaIndex {
    pub version: Version,
    pub deltas: Vec<DeltaEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIndex {
    format: String,
    name: String,
    version: String,
    deltas: Vec<WireEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEntry {
    architecture: String,
    from: String,
    package_sha256: String,
    url: String,
    size: u64,
    sha256: String,
}

impl DeltaIndex {
    /// Checks `sig_bytes` against `keyring` and only then parses the index.
    pub fn verify(bytes: &[u8], sig_bytes: &[u8], keyring: &manifest::Keyring) -> Result<DeltaIndex, String> {
        if bytes.len() > MAX_INDEX_BYTES {
            return Err(format!("{INDEX_FILE} is {} bytes, more than the {MAX_INDEX_BYTES} accepted", bytes.len()));
        }
        manifest::verify_signature(bytes, sig_bytes, keyring)
            .map_err(|e: ManifestError| format!("{INDEX_FILE}.sig: {e}"))?;
        DeltaIndex::from_json_bytes(bytes)
    }

    /// Parses `deltas.json` strictly; trusts nothing about who wrote it.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<DeltaIndex, String> {
        let wire: WireIndex = manifest::parse_json(bytes).map_err(|e| format!("{INDEX_FILE} is not valid: {e}"))?;
        let invalid = |reason: String| format!("{INDEX_FILE} is not valid: {reason}");
        if wire.format != INDEX_FORMAT {
            return Err(invalid(format!("its format is {:?}, not {INDEX_FORMAT:?}", wire.format)));
        }
        if wire.name != PACKAGE_NAME {
            return Err(invalid(format!("it lists deltas of {:?}, not {PACKAGE_NAME}", wire.name)));
        }
        let version = Version::parse(&wire.version)
            .map_err(|e| invalid(format!("version {:?} is not a semantic version: {e}", wire.version)))?;
        if wire.deltas.len() > MAX_DELTAS {
            return Err(invalid(format!("it lists more than {MAX_DELTAS} deltas")));
        }
        let mut seen = BTreeSet::new();
        let mut deltas = Vec::with_capacity(wire.deltas.len());
        for entry in wire.deltas {
            let from = Version::parse(&entry.from)
                .map_err(|e| invalid(format!("from {:?} is not a semantic version: {e}", entry.from)))?;
            let shown = format!("the {} delta from {from}", entry.architecture);
            manifest::check_architecture(&entry.architecture).map_err(invalid)?;
            if from >= version {
                return Err(invalid(format!("{shown} is from a release not older than {version}")));
            }
            if !seen.insert((entry.architecture.clone(), from.clone())) {
                return Err(invalid(format!("{shown} is listed twice")));
            }
            manifest::check_url_text(&entry.url).map_err(|reason| invalid(format!("{shown}: url: {reason}")))?;
            if entry.size == 0 {
                return Err(invalid(format!("{shown} has size 0")));
            }
            let sha256 = manifest::parse_sha256(&entry.sha256)
                .ok_or_else(|| invalid(format!("{shown}: sha256 is not 64 lowercase hex digits")))?;
            let package_sha256 = manifest::parse_sha256(&entry.package_sha256)
                .ok_or_else(|| invalid(format!("{shown}: package_sha256 is not 64 lowercase hex digits")))?;
            deltas.push(DeltaEntry {
                architecture: entry.architecture,
                from,
                package_sha256,
                url: entry.url,
                size: entry.size,
                sha256,
            });
        }
        Ok(DeltaIndex { version, deltas })
    }

    /// The index as the publisher signs it: pretty, in a stable order, a final newline.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, String> {
        let mut deltas: Vec<&DeltaEntry> = self.deltas.iter().collect();
        deltas.sort_by(|a, b| (&a.architecture, &a.from).cmp(&(&b.architecture, &b.from)));
        let wire = WireIndex {
            format: INDEX_FORMAT.to_string(),
            name: PACKAGE_NAME.to_string(),
            version: self.version.to_string(),
            deltas: deltas
                .into_iter()
                .map(|d| WireEntry {
                    architecture: d.architecture.clone(),
                    from: d.from.to_string(),
                    package_sha256: hex(&d.package_sha256),
                    url: d.url.clone(),
                    size: d.size,
                    sha256: hex(&d.sha256),
                })
                .collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&wire).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        // What a device would refuse is not written.
        DeltaIndex::from_json_bytes(&bytes)?;
        Ok(bytes)
    }

    /// The delta this device can use: for its architecture, from the release it runs.
    pub fn find(&self, architecture: &str, installed: &Version) -> Option<&DeltaEntry> {
        self.deltas.iter().find(|d| d.architecture == architecture && &d.from == installed)
    }

    /// The delta a device of `architecture` running `installed` can take to the release
    /// `version`, whose package for that architecture has SHA-256 `package_sha256` (as its
    /// manifest says): `Ok(None)` when the index lists none; an error when the index belongs
    /// to another release, or to another build of this one.
    pub fn delta_for(
        &self,
        version: &Version,
        package_sha256: &[u8; 32],
        architecture: &str,
        installed: &Version,
    ) -> Result<Option<&DeltaEntry>, String> {
        if &self.version != version {
            return Err(format!("the delta index is for {}, but the manifest offers {version}", self.version));
        }
        let Some(entry) = self.find(architecture, installed) else { return Ok(None) };
        if &entry.package_sha256 != package_sha256 {
            return Err(format!(
                "the delta stands for the package with SHA-256 {}, but the manifest's is {}: the index belongs \
                 to another build of {version}",
                hex(&entry.package_sha256),
                hex(package_sha256)
            ));
        }
        Ok(Some(entry))
    }
}
