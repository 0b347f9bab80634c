//! The signature checks behind `jsonwebtoken`, done with ring, the library rustls uses here,
//! so that the programs carry one cryptography library rather than two.
//!
//! Only the algorithms a key may verify here (`config::JwtAlgorithm`: RS256, ES256 and
//! EdDSA) are provided. Nothing in the programs signs a token, so every signing request is
//! refused, as are the JWK helpers that derive public keys from private ones.

use std::sync::Once;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_FIXED, ED25519,
    RSA_PKCS1_2048_8192_SHA256,
};
use sha2::Digest;

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(ErrorKind::InvalidAlgorithm.into()),
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::InvalidAlgorithm.into()),
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
        compute_digest: digest,
    },
};

/// Makes ring the provider of `jsonwebtoken` in this process; called before any token is
/// checked. Installing twice is harmless (the first installation stays).
pub fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Only fails when a provider is already installed, which can only be this one.
        let _ = PROVIDER.install_default();
    });
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Err(ErrorKind::InvalidAlgorithm.into())
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let family = match algorithm {
        Algorithm::RS256 => AlgorithmFamily::Rsa,
        Algorithm::ES256 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(RingVerifier { algorithm: *algorithm, key: key.clone() }))
}

/// A public key and the one algorithm it verifies.
struct RingVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl RingVerifier {
    fn ring_algorithm(&self) -> &'static dyn VerificationAlgorithm {
        match self.algorithm {
            Algorithm::ES256 => &ECDSA_P256_SHA256_FIXED,
            Algorithm::EdDSA => &ED25519,
            // `verifier` admits no other algorithm.
            _ => &RSA_PKCS1_2048_8192_SHA256,
        }
    }
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let checked = match self.key.kind() {
            // RSA keys of a JWK set come as their modulus and exponent.
            DecodingKeyKind::RsaModulusExponent { n, e } if self.algorithm == Algorithm::RS256 => {
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, message, sig)
            }
            DecodingKeyKind::RsaModulusExponent { .. } => return Err(signature::Error::new()),
            // An RSA key in PKCS#1 DER, an uncompressed P-256 point, or an Ed25519 key's 32 bytes.
            DecodingKeyKind::SecretOrDer(public) => {
                UnparsedPublicKey::new(self.ring_algorithm(), public).verify(message, sig)
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    Ok(match hash {
        ThumbprintHash::SHA256 => sha2::Sha256::digest(data).to_vec(),
        ThumbprintHash::SHA384 => sha2::Sha384::digest(data).to_vec(),
        ThumbprintHash::SHA512 => sha2::Sha512::digest(data).to_vec(),
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn check(algorithm: Algorithm, key: &DecodingKey, message: &[u8], sig: &[u8]) -> bool {
        install();
        let verifier = (CryptoProvider::try_get_default().unwrap().verifier_factory)(&algorithm, key).unwrap();
        verifier.verify(message, &sig.to_vec()).is_ok()
    }

    #[test]
    fn ed25519_and_p256_signatures_verify_and_altered_ones_do_not() {
        let rng = SystemRandom::new();
        let ed = Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
        let ed_key = DecodingKey::from_ed_der(ed.public_key().as_ref());
        let sig = ed.sign(b"header.claims");
        assert!(check(Algorithm::EdDSA, &ed_key, b"header.claims", sig.as_ref()));
        assert!(!check(Algorithm::EdDSA, &ed_key, b"header.claimz", sig.as_ref()));

        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let ec_key = DecodingKey::from_ec_der(ec.public_key().as_ref());
        let sig = ec.sign(&rng, b"header.claims").unwrap();
        assert!(check(Algorithm::ES256, &ec_key, b"header.claims", sig.as_ref()));
        let mut altered = sig.as_ref().to_vec();
        altered[10] ^= 1;
        assert!(!check(Algorithm::ES256, &ec_key, b"header.claims", &altered));
    }

    #[test]
    fn a_key_verifies_only_its_own_family_and_the_allowed_algorithms() {
        install();
        let provider = CryptoProvider::try_get_default().unwrap();
        let ed_key = DecodingKey::from_ed_der(&[7; 32]);
        let rsa_key = DecodingKey::from_rsa_raw_components(&[1; 256], &[1, 0, 1]);
        assert!((provider.verifier_factory)(&Algorithm::ES256, &ed_key).is_err());
        assert!((provider.verifier_factory)(&Algorithm::EdDSA, &rsa_key).is_err());
        for refused in [Algorithm::RS384, Algorithm::PS256, Algorithm::ES384, Algorithm::HS256] {
            assert!((provider.verifier_factory)(&refused, &rsa_key).is_err(), "{refused:?}");
        }
        assert!((provider.signer_factory)(&Algorithm::HS256, &EncodingKey::from_secret(b"s").unwrap()).is_err());
    }
}
