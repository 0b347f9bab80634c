//! What the fuzz targets in `fuzz/` run: one function per parser that reads bytes from
//! outside, fed the way the programs feed it.
//!
//! Each function takes any bytes and returns; a panic is a bug, whether in the parser or in
//! a promise checked here (the fast JSON-RPC reader takes only what the tree reader takes
//! alike, what a device accepts the publisher can write, and so on). The functions live in
//! the library, not in `fuzz/`, so that `cargo test` replays every seed and regression of
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` without the fuzzer. A new target
//! is a function here, an entry in [`TARGETS`] and a file in `fuzz/fuzz_targets/`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::config::Config;
use crate::ipc::{self, Read, RequestFrame, ResponseFrame};
use crate::mcp::{self, Incoming, RpcError, Version};
use crate::update::delta::{self, DeltaIndex};
use crate::update::manifest::{self, Keyring, Manifest, ManifestError, Policy, SecretKey};

/// A fuzz target: takes any bytes, and panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its file in `fuzz/fuzz_targets/` and of its directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("jsonrpc", jsonrpc),
    ("tool_arguments", tool_arguments),
    ("config", config),
    ("ipc_frame", ipc_frame),
    ("update_manifest", update_manifest),
    ("jwt", jwt),
];

/// A body of `POST /mcp` (or a line of stdio), read as the transports read it: the fast
/// envelope reader, else a tree judged by `Incoming::parse`, item by item for a batch.
pub fn jsonrpc(data: &[u8]) {
    let fast = Incoming::from_slice(data);
    let tree = match serde_json::from_slice::<Value>(data) {
        Ok(tree) => tree,
        Err(e) => {
            assert!(fast.is_none(), "the fast reader took a body that is not JSON");
            show(RpcError::parse_error(e).to_json());
            return;
        }
    };
    if let Some(fast) = &fast {
        let judged = Incoming::parse(tree.clone());
        assert!(judged.as_ref().is_ok_and(|tree| tree == fast), "the readers differ: {fast:?} {judged:?}");
    }
    let items = match tree {
        Value::Array(items) => items,
        single => vec![single],
    };
    for item in items {
        match Incoming::parse(item) {
            Ok(Incoming::Request { id, method, meta, .. }) => {
                let _ = (mcp::stateless_version(&meta), mcp::requested_log_level(&meta), mcp::progress_token(&meta));
                let _ = mcp::response(&id, Err(RpcError::method_not_found(&method, Version::V2026_07_28)));
            }
            Ok(_) => {}
            Err((id, e)) => {
                let _ = mcp::response(&id, Err(e));
            }
        }
    }
}

/// The params of a `tools/call` (`{"name": ..., "arguments": ...}`) through what happens
/// before the tool runs: the lookup by name, the audit summary and the parse of the
/// arguments into the tool's input type. No tool runs.
pub fn tool_arguments(data: &[u8]) {
    static CATALOGUE: OnceLock<crate::tools::Catalogue> = OnceLock::new();
    let Ok(Value::Object(mut params)) = serde_json::from_slice::<Value>(data) else { return };
    let arguments = params.remove("arguments").unwrap_or(Value::Null);
    let name = params.get("name").and_then(Value::as_str).unwrap_or_default();
    let Some(entry) = CATALOGUE.get_or_init(crate::tools::Catalogue::new).get(name) else { return };
    let _ = crate::audit::summarize(&arguments);
    if let Err(e) = entry.tool.check_arguments(arguments) {
        show(e);
    }
}

/// A configuration file through `--check-config`: the YAML, an environment override (which
/// takes the configuration through JSON and back), the checks across keys, and the tokens.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = match Config::from_yaml(text, "fuzz.yml") {
        Ok(parsed) => parsed,
        Err(e) => return show(e),
    };
    let valid = parsed.validate().is_ok();
    // Overriding a key with the value it has changes nothing, and so cannot fail.
    let same_size = BTreeMap::from([("MCP_RASPI_SERVER__PAGE_SIZE".to_string(), parsed.server.page_size.to_string())]);
    let config = match parsed.with_env_overrides(&same_size) {
        Ok(config) => config,
        Err(e) => {
            assert!(!valid, "a valid configuration fails an override that changes nothing: {e}");
            return;
        }
    };
    if let Err(e) = config.validate() {
        assert!(!valid, "a valid configuration is invalid once overridden: {e}");
        return;
    }
    let values = config.security.tokens.iter().map(|t| (t.env.clone(), "t".repeat(32))).collect();
    let loaded = crate::config::Loaded { config, origin: "fuzz.yml".into(), sha256: String::new() };
    let _ = crate::server::check_config(&loaded, &crate::server::Secrets { values, unreadable: None });
}

/// A stream of frames on the agent socket, read by the agent (a hello, then requests) and by
/// the server (responses); and the bytes as one frame's body. A message that is read must
/// be read again once written.
pub fn ipc_frame(data: &[u8]) {
    let framed = [&(data.len() as u32).to_be_bytes()[..], data].concat();
    for stream in [data, &framed] {
        let mut agent = stream;
        if let Some(Ok(Some(hello))) = ready(ipc::read_frame::<_, RequestFrame>(&mut agent)) {
            if let ipc::Request::Hello { package_version, ipc_version } = &hello.request {
                let _ = ipc::check_compatible("0.1.0", ipc::IPC_VERSION, package_version, ipc_version);
            }
            while let Some(Ok(read)) = ready(ipc::read_or_skip::<_, RequestFrame>(&mut agent)) {
                match read {
                    Read::Frame(frame) => {
                        let _ = (frame.request.as_safe_string(), frame.time_left());
                        assert_eq!(again(&frame).map(|f| f.id), Some(frame.id));
                    }
                    Read::Bad { error, .. } => show(error),
                    Read::Closed => break,
                }
            }
        }
        let mut server = stream;
        while let Some(Ok(Some(frame))) = ready(ipc::read_frame::<_, ResponseFrame>(&mut server)) {
            assert_eq!(again(&frame).map(|f| (f.id, f.response.kind())), Some((frame.id, frame.response.kind())));
        }
    }
}

/// `frame` written and read back.
fn again<T: serde::Serialize + serde::de::DeserializeOwned>(frame: &T) -> Option<T> {
    let mut bytes = Vec::new();
    ready(ipc::write_frame(&mut bytes, frame))?.ok()?;
    ready(ipc::read_frame(&mut bytes.as_slice()))?.ok()?
}

/// Runs a future that never waits, as reading from and writing to memory never does.
fn ready<F: Future>(future: F) -> Option<F::Output> {
    match std::pin::pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// A delta file when it starts as one (its header); otherwise `manifest.json` and
/// `deltas.json` through what a device does with them, signed by a fixed key that the
/// device trusts, or, when a NUL byte follows them, with the bytes after it as the signature
/// file. What a device accepts, the publisher must be able to write.
pub fn update_manifest(data: &[u8]) {
    if data.starts_with(delta::MAGIC) {
        if let Err(e) = delta::read_header(&mut &data[..], Path::new("fuzz.delta")) {
            show(e);
        }
        return;
    }
    /// A key for fuzzing only, its seed 32 bytes of 7: known to all, trusted by no device.
    const SECRET: &str = "mcp-raspi-release-secret ed25519 BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    static KEY: OnceLock<Option<(SecretKey, Keyring)>> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let secret = SecretKey::parse(SECRET).ok()?;
        let keyring = Keyring::from_keys([secret.public_key()]);
        Some((secret, keyring))
    });
    let Some((secret, keyring)) = key else { return };
    let (bytes, signature) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], data[nul + 1..].to_vec()),
        None => (data, manifest::sign(data, secret)),
    };
    let installed = semver::Version::new(0, 1, 0);
    let url = "https://updates.example.org/stable/manifest.json";
    let policy = Policy {
        architecture: "arm64".into(),
        installed: installed.clone(),
        highest_installed: Some(installed.clone()),
        channel: Some("stable".into()),
        target_version: None,
        now: UNIX_EPOCH + Duration::from_secs(1_796_904_000),
        max_download_bytes: 64 << 20,
    };
    match manifest::verify(bytes, &signature, keyring) {
        Ok(manifest) => {
            let written = manifest.to_json_bytes().map(|w| Manifest::from_json_bytes(&w).ok());
            assert!(written.is_ok_and(|m| m.as_ref() == Some(&manifest)), "cannot write {manifest:?}");
            match manifest::check(&manifest, &policy) {
                Ok(artifact) => drop(manifest::artifact_url(url, &artifact.url).map_err(show)),
                Err(e) => show(e),
            }
        }
        Err(e) => {
            let signed_here = bytes.len() == data.len();
            let refused = matches!(e, ManifestError::BadSignature { .. } | ManifestError::UnknownKey { .. });
            assert!(!(signed_here && refused), "a manifest signed by the trusted key is refused: {e}");
            show(e);
        }
    }
    match DeltaIndex::verify(bytes, &signature, keyring) {
        Err(e) => show(e),
        Ok(index) => {
            assert!(index.to_json_bytes().is_ok(), "cannot write {index:?}");
            let package = index.find("arm64", &installed).map_or([0; 32], |d| d.package_sha256);
            match index.delta_for(&index.version, &package, "arm64", &installed) {
                Ok(Some(entry)) => drop(manifest::artifact_url(url, &entry.url).map_err(show)),
                Ok(None) => {}
                Err(e) => show(e),
            }
        }
    }
}

/// A token of an issuer (a Cloudflare Access assertion or an OIDC access token) through
/// what the server does with it: the header checks, the choice of key, the signature and
/// the claims, and the role mappings; and the bytes as a key set (JWKS). Input with one dot
/// (`header.claims`) is signed first with a fixed Ed25519 key the verifier trusts, so that
/// the checks past the signature are reached too; a token so signed whose claims are
/// acceptable must be accepted.
pub fn jwt(data: &[u8]) {
    use crate::auth::jwks::{self, Key};
    use crate::auth::jwt::{self as token, RoleMap, Verifier};
    use crate::config::{JwtAlgorithm, Role, RoleMapping};
    use base64::Engine;
    use ed25519_dalek::Signer;

    struct Fixture {
        verifier: Verifier,
        keys: Vec<std::sync::Arc<Key>>,
        signer: ed25519_dalek::SigningKey,
        roles: RoleMap,
    }
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    let fixture = FIXTURE.get_or_init(|| {
        // A key for fuzzing only, its seed 32 bytes of 9: known to all, trusted by no server.
        let signer = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let public = signer.verifying_key().to_bytes();
        let decoding = jsonwebtoken::DecodingKey::from_ed_der(&public);
        let keys =
            vec![std::sync::Arc::new(Key { kid: Some("fuzz".into()), algorithm: JwtAlgorithm::EdDSA, decoding })];
        let fetcher = std::sync::Arc::new(crate::update::download::Fetcher::new(Default::default()));
        let source = jwks::KeySource::Url("https://fuzz.invalid/certs".into());
        let cache = std::sync::Arc::new(jwks::KeyCache::new(source, Duration::from_secs(60), fetcher));
        let algorithms = vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256, JwtAlgorithm::EdDSA];
        let verifier = Verifier::new("https://fuzz.invalid".into(), "fuzz-audience".into(), algorithms, cache);
        let mapping = |claim: &str, pattern: Option<&str>, value: Option<&str>, role| RoleMapping {
            jwt_claim: claim.into(),
            pattern: pattern.map(Into::into),
            value: value.map(Into::into),
            role,
        };
        let roles = RoleMap::new(&[
            mapping("email", Some("admin@example\\.com"), None, Role::Admin),
            mapping("custom.groups", None, Some("ops"), Role::Operator),
            mapping("groups", None, Some("viewers"), Role::Viewer),
        ])
        .ok()?;
        Some(Fixture { verifier, keys, signer, roles })
    });
    let Some(f) = fixture else { return };
    let _ = jwks::parse_key_set(data).map_err(show);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let check = |token: &str| match f.verifier.verify_with(token, &f.keys) {
        Ok(claims) => {
            let _ = (token::caller_name(&claims), f.roles.role(&claims));
            true
        }
        Err(e) => {
            show(&e);
            false
        }
    };
    check(text);
    if text.matches('.').count() == 1 && text.len() <= token::MAX_TOKEN_BYTES / 2 {
        let signature = f.signer.sign(text.as_bytes()).to_bytes();
        let signed = format!("{text}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature));
        let accepted = check(&signed);
        // Accepted means every check passed: then the claims are the issuer's, for us, and current.
        if accepted {
            let claims =
                text.split('.').nth(1).and_then(|c| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).ok());
            let claims: Option<serde_json::Map<String, Value>> = claims.and_then(|c| serde_json::from_slice(&c).ok());
            let claims = claims.unwrap_or_default();
            assert_eq!(claims.get("iss").and_then(Value::as_str), Some("https://fuzz.invalid"), "accepted: {text}");
        }
    }
    if let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(data) {
        let _ = (token::caller_name(&claims), f.roles.role(&claims));
    }
}

/// Writes an error's message, as the programs do when they refuse the input.
fn show(error: impl std::fmt::Display) {
    std::hint::black_box(error.to_string());
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
    }

    /// The files of `fuzz/<kind>/<target>/`, checking that every target directory names a target.
    fn inputs(kind: &str) -> Vec<(Target, PathBuf)> {
        let mut found = Vec::new();
        let Ok(dirs) = std::fs::read_dir(fuzz_dir().join(kind)) else { return found };
        for dir in dirs {
            let dir = dir.unwrap().path();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let Some((_, target)) = TARGETS.iter().find(|(n, _)| *n == name) else {
                panic!("fuzz/{kind}/{name} names no fuzz target; the targets are those of fuzzing::TARGETS")
            };
            for file in std::fs::read_dir(&dir).unwrap() {
                found.push((*target, file.unwrap().path()));
            }
        }
        found
    }

    #[test]
    fn every_seed_and_every_regression_passes_through_its_target() {
        let (seeds, regressions) = (inputs("seeds"), inputs("regressions"));
        for (name, _) in TARGETS {
            assert!(fuzz_dir().join("seeds").join(name).is_dir(), "fuzz/seeds/{name} is missing");
        }
        for (target, path) in seeds.iter().chain(&regressions) {
            eprintln!("{}", path.display());
            target(&std::fs::read(path).unwrap());
        }
    }

    #[test]
    fn every_target_has_its_file_in_the_fuzz_crate_and_every_file_a_target() {
        let mut files: Vec<String> = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
            .unwrap()
            .map(|f| f.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(files, names);
    }
}
