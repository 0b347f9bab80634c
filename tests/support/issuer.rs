//! A token issuer for the identity tests: RSA, P-256 and Ed25519 keys made for the test,
//! their key set (JWKS) and an OpenID Connect discovery document served on 127.0.0.1, and
//! tokens signed with any header and claims, hostile ones included.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use base64::Engine;
use serde_json::{json, Value};

use super::file_server::FileServer;

/// The path of the key set on the issuer's server.
pub const JWKS_PATH: &str = "/certs";

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A signing key with its `kid`.
pub enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl SigningKey {
    pub fn rsa() -> SigningKey {
        SigningKey::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
    }

    pub fn ec() -> SigningKey {
        SigningKey::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }

    pub fn ed() -> SigningKey {
        SigningKey::Ed(Ed25519KeyPair::generate().unwrap())
    }

    pub fn alg(&self) -> &'static str {
        match self {
            SigningKey::Rsa(_) => "RS256",
            SigningKey::Ec(_) => "ES256",
            SigningKey::Ed(_) => "EdDSA",
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self, kid: &str) -> Value {
        match self {
            SigningKey::Rsa(k) => {
                let c = PublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&c.n), "e": b64(&c.e)})
            }
            SigningKey::Ec(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            SigningKey::Ed(k) => json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(k.public_key().as_ref())}),
        }
    }

    /// The DER of the RSA public key: what an algorithm-confusion attack uses as an HMAC
    /// secret.
    pub fn public_bytes(&self) -> Vec<u8> {
        match self {
            SigningKey::Rsa(k) => k.public_key().as_ref().to_vec(),
            SigningKey::Ec(k) => k.public_key().as_ref().to_vec(),
            SigningKey::Ed(k) => k.public_key().as_ref().to_vec(),
        }
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig).unwrap();
                sig
            }
            SigningKey::Ec(k) => k.sign(&SystemRandom::new(), message).unwrap().as_ref().to_vec(),
            SigningKey::Ed(k) => k.sign(message).as_ref().to_vec(),
        }
    }
}

/// A JWT with this header and these claims, signed by `key`.
pub fn sign(key: &SigningKey, header: &Value, claims: &Value) -> String {
    let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let signature = key.sign(message.as_bytes());
    format!("{message}.{}", b64(&signature))
}

/// A JWT signed with HMAC-SHA256 and `secret`.
pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    format!("{message}.{}", b64(aws_lc_rs::hmac::sign(&key, message.as_bytes()).as_ref()))
}

/// An issuer serving its keys (and discovery document) from a directory.
pub struct Issuer {
    dir: tempfile::TempDir,
    pub server: FileServer,
    /// The keys published, by `kid`.
    pub keys: Vec<(String, SigningKey)>,
}

impl Issuer {
    /// An issuer with an RSA (`rsa-1`), a P-256 (`ec-1`) and an Ed25519 (`ed-1`) key.
    pub fn start() -> Issuer {
        let dir = super::temp_dir();
        let server = FileServer::start(dir.path());
        let keys = vec![
            ("rsa-1".into(), SigningKey::rsa()),
            ("ec-1".into(), SigningKey::ec()),
            ("ed-1".into(), SigningKey::ed()),
        ];
        let issuer = Issuer { dir, server, keys };
        issuer.publish();
        let discovery = json!({"issuer": issuer.url(), "jwks_uri": issuer.jwks_url()});
        let well_known = issuer.dir.path().join(".well-known");
        std::fs::create_dir_all(&well_known).unwrap();
        std::fs::write(well_known.join("openid-configuration"), discovery.to_string()).unwrap();
        issuer
    }

    /// `http://127.0.0.1:<port>`: the OIDC issuer identifier.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.url())
    }

    /// Writes the key set of `self.keys` (atomically, as a rotation would appear).
    pub fn publish(&self) {
        let jwks = json!({"keys": self.keys.iter().map(|(kid, k)| k.jwk(kid)).collect::<Vec<_>>()});
        write_atomic(&self.dir.path().join(&JWKS_PATH[1..]), jwks.to_string().as_bytes());
    }

    /// Adds a key and publishes the new set.
    pub fn rotate_in(&mut self, kid: &str, key: SigningKey) {
        self.keys.push((kid.into(), key));
        self.publish();
    }

    pub fn key(&self, kid: &str) -> &SigningKey {
        &self.keys.iter().find(|(k, _)| k == kid).unwrap().1
    }

    /// A token signed by key `kid` with `claims`.
    pub fn token(&self, kid: &str, claims: &Value) -> String {
        let key = self.key(kid);
        sign(key, &json!({"alg": key.alg(), "kid": kid, "typ": "JWT"}), claims)
    }

    /// Key set requests served so far.
    pub fn jwks_fetches(&self) -> usize {
        self.server.served(JWKS_PATH).len()
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
