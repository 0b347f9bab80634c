//! `manifest.json.sig`: [`sign`] for the publisher, [`verify`] for the device, which
//! believes nothing in a manifest until its signature verifies against a trusted key.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _};
use serde::Deserialize;

use super::{
    parse_json, KeyId, Keyring, Manifest, ManifestError, SecretKey, ALGORITHM, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES,
};

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
/// only then parses the manifest. The manifest still has to pass [`check`](super::check).
pub fn verify(manifest_bytes: &[u8], sig_bytes: &[u8], keyring: &Keyring) -> Result<Manifest, ManifestError> {
    if manifest_bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::OversizedManifest { size: manifest_bytes.len(), max: MAX_MANIFEST_BYTES });
    }
    verify_signature(manifest_bytes, sig_bytes, keyring)?;
    Manifest::from_json_bytes(manifest_bytes)
}

/// Checks that `sig_bytes` is a signature of `bytes` by a key of `keyring`: the check of
/// [`verify`], for the other signed files of a release (the delta index).
pub fn verify_signature(bytes: &[u8], sig_bytes: &[u8], keyring: &Keyring) -> Result<(), ManifestError> {
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
    let signature = <[u8; 64]>::try_from(decoded.as_slice()).map_err(|_| ManifestError::InvalidSignatureFile {
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
    key.key.verify_strict(bytes, &Signature::from_bytes(&signature)).map_err(|_| ManifestError::BadSignature { key_id })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::update::manifest::fixtures::{manifest, signed};
    use crate::update::manifest::keygen;

    fn signature_file(key_id: &str, algorithm: &str, signature: &str) -> Vec<u8> {
        format!("{{\"key_id\":\"{key_id}\",\"algorithm\":\"{algorithm}\",\"signature\":\"{signature}\"}}").into_bytes()
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
}
