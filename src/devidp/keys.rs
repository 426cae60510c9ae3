//! Signing keys of the development provider: generation (aws-lc-rs), their
//! public JWKs, and the key ring that rotation and retirement act on.

use std::sync::Arc;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use serde_json::{json, Value};

/// Why a key pair could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating the {0} key pair failed")]
    Generate(&'static str),
    #[error("exporting the {0} key pair failed")]
    Export(&'static str),
    #[error("loading the RSA key into jsonwebtoken failed: {0}")]
    Load(#[from] jsonwebtoken::errors::Error),
}

/// The two key types the provider signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    Ec,
}

impl KeyKind {
    /// The key that signs `alg`, if the provider has one. The RSA key signs
    /// every RSA algorithm so that tests can present a token whose
    /// signature is genuine but whose algorithm is not allowed.
    pub(crate) fn for_algorithm(alg: Algorithm) -> Option<KeyKind> {
        match alg.family() {
            AlgorithmFamily::Rsa => Some(KeyKind::Rsa),
            AlgorithmFamily::Ec if alg == Algorithm::ES256 => Some(KeyKind::Ec),
            _ => None,
        }
    }

    /// The algorithm the key is published for (its JWK `alg`).
    pub(crate) fn algorithm(self) -> Algorithm {
        match self {
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::Ec => Algorithm::ES256,
        }
    }
}

/// One signing key: the private half for jsonwebtoken, the public half both
/// as a JWK (what relying parties see) and as a decoding key (what the
/// provider's own userinfo and end-session endpoints verify with).
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    pub(crate) kind: KeyKind,
    pub(crate) encoding: EncodingKey,
    pub(crate) decoding: DecodingKey,
    pub(crate) jwk: Value,
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 thumbprint of a JWK, given its required members already in
/// lexicographic order. Thumbprints make kids unique and deterministic.
fn thumbprint(canonical_json: &str) -> String {
    b64url(digest(&SHA256, canonical_json.as_bytes()).as_ref())
}

/// PKCS#8 DER as PEM: jsonwebtoken's `from_rsa_der` wants PKCS#1, which
/// aws-lc-rs does not export, while its PEM reader unwraps PKCS#8 itself.
fn pkcs8_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// A fresh RSA 2048 key for RS256.
pub(crate) fn generate_rsa() -> Result<SigningKey, KeyError> {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate("RSA"))?;
    let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
        .map_err(|_| KeyError::Export("RSA"))?;
    let encoding = EncodingKey::from_rsa_pem(pkcs8_pem(pkcs8.as_ref()).as_bytes())?;
    let public = pair.public_key();
    let n = b64url(public.modulus().big_endian_without_leading_zero());
    let e = b64url(public.exponent().big_endian_without_leading_zero());
    let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
    let decoding = DecodingKey::from_rsa_components(&n, &e)?;
    let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": e});
    Ok(SigningKey {
        kid,
        kind: KeyKind::Rsa,
        encoding,
        decoding,
        jwk,
    })
}

/// A fresh P-256 key for ES256.
pub(crate) fn generate_ec() -> Result<SigningKey, KeyError> {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| KeyError::Generate("EC"))?;
    let pkcs8 = pair.to_pkcs8v1().map_err(|_| KeyError::Export("EC"))?;
    let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
    // The public key is the uncompressed SEC1 point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    let (x, y) = match point {
        [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
        _ => return Err(KeyError::Export("EC")),
    };
    let (x, y) = (b64url(x), b64url(y));
    let kid = thumbprint(&format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#
    ));
    let decoding = DecodingKey::from_ec_components(&x, &y)?;
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "x": x, "y": y,
        "kid": kid, "use": "sig", "alg": "ES256",
    });
    Ok(SigningKey {
        kid,
        kind: KeyKind::Ec,
        encoding,
        decoding,
        jwk,
    })
}

/// The current signing keys plus every key still published in the JWKS.
pub(crate) struct KeyRing {
    rsa: Arc<SigningKey>,
    ec: Arc<SigningKey>,
    /// Newest first; always contains the current keys.
    published: Vec<Arc<SigningKey>>,
}

impl KeyRing {
    /// A key ring with one fresh key of each kind. Slow (RSA generation):
    /// call it off the async executor when possible.
    pub(crate) fn generate() -> Result<KeyRing, KeyError> {
        let (rsa, ec) = generate_pair()?;
        Ok(KeyRing {
            published: vec![rsa.clone(), ec.clone()],
            rsa,
            ec,
        })
    }

    /// Makes `rsa` and `ec` the signing keys; the old ones stay published
    /// so that tokens they signed keep verifying until retired.
    pub(crate) fn install(&mut self, rsa: Arc<SigningKey>, ec: Arc<SigningKey>) {
        self.published.insert(0, ec.clone());
        self.published.insert(0, rsa.clone());
        self.rsa = rsa;
        self.ec = ec;
    }

    /// Publishes only the current keys.
    pub(crate) fn retire_old(&mut self) {
        self.published = vec![self.rsa.clone(), self.ec.clone()];
    }

    pub(crate) fn current(&self, kind: KeyKind) -> &Arc<SigningKey> {
        match kind {
            KeyKind::Rsa => &self.rsa,
            KeyKind::Ec => &self.ec,
        }
    }

    /// A published key by kid.
    pub(crate) fn find(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.published.iter().find(|key| key.kid == kid)
    }

    /// The JWKS document.
    pub(crate) fn jwks(&self) -> Value {
        let keys: Vec<&Value> = self.published.iter().map(|key| &key.jwk).collect();
        json!({ "keys": keys })
    }
}

/// One fresh RSA and one fresh EC key.
pub(crate) fn generate_pair() -> Result<(Arc<SigningKey>, Arc<SigningKey>), KeyError> {
    Ok((Arc::new(generate_rsa()?), Arc::new(generate_ec()?)))
}
