//! portcullis's own signing keys: the key that signs `X-Auth-Assertion`
//! (and, with the token API, portcullis JWTs), and the retired keys still
//! published at `/.auth/jwks.json` so that what they signed keeps verifying.
//!
//! Keys are ES256 (P-256) or EdDSA (Ed25519), read as PKCS#8 PEM. Without a
//! configured key one is generated at startup (with a warning: backends
//! verifying assertions must refetch the JWKS after every restart).

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::json;

use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};

use crate::config::Secret;
use crate::token::prepared::{self, PreparedSigner};

/// The `typ` of the `X-Auth-Assertion` portcullis hands backends: not a
/// credential anywhere (see `token::messenger`).
pub const ASSERTION_TYP: &str = "x-auth-assertion+jwt";

/// One signing key with its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The private key parsed once (`token::prepared`): jsonwebtoken would
    /// parse and check the PKCS#8 on every signature.
    prepared: PreparedSigner,
    /// The public half, for verifying what portcullis signed itself.
    pub decoding: jsonwebtoken::DecodingKey,
    pub public_jwk: serde_json::Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

fn decoding_key(jwk: &serde_json::Value) -> Result<jsonwebtoken::DecodingKey, String> {
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwk.clone()).map_err(|e| format!("unusable public key: {e}"))?;
    jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable public key: {e}"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 thumbprint of the required public members, as the key id: it
/// changes exactly when the key does.
fn thumbprint(required_members: &serde_json::Value) -> String {
    // serde_json sorts object keys, as RFC 7638 requires.
    let canonical = required_members.to_string();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    b64(&digest.as_ref()[..16])
}

impl SigningKey {
    /// Reads a PKCS#8 key: P-256 (ES256) or Ed25519 (EdDSA).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
            let point = pair.public_key().as_ref();
            // An uncompressed point: 0x04, then X and Y of 32 bytes each.
            if point.len() != 65 || point[0] != 4 {
                return Err("unexpected P-256 public key encoding".into());
            }
            let members = json!({"crv": "P-256", "kty": "EC", "x": b64(&point[1..33]), "y": b64(&point[33..])});
            let kid = thumbprint(&members);
            let mut jwk = members;
            jwk["kid"] = json!(kid);
            jwk["alg"] = json!("ES256");
            jwk["use"] = json!("sig");
            return Ok(SigningKey {
                kid,
                alg: Algorithm::ES256,
                encoding: EncodingKey::from_ec_der(der),
                prepared: PreparedSigner::Es256(Arc::new(pair)),
                decoding: decoding_key(&jwk)?,
                public_jwk: jwk,
            });
        }
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8(der) {
            let members =
                json!({"crv": "Ed25519", "kty": "OKP", "x": b64(pair.public_key().as_ref())});
            let kid = thumbprint(&members);
            let mut jwk = members;
            jwk["kid"] = json!(kid);
            jwk["alg"] = json!("EdDSA");
            jwk["use"] = json!("sig");
            return Ok(SigningKey {
                kid,
                alg: Algorithm::EdDSA,
                encoding: EncodingKey::from_ed_der(der),
                prepared: PreparedSigner::EdDsa(Arc::new(pair)),
                decoding: decoding_key(&jwk)?,
                public_jwk: jwk,
            });
        }
        Err("not a PKCS#8 P-256 or Ed25519 private key (convert with `openssl pkcs8 -topk8 -nocrypt`)".into())
    }

    pub fn from_pem(text: &str) -> Result<Self, String> {
        let block = pem::parse(text).map_err(|e| format!("not PEM: {e}"))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(format!(
                "a `{}` PEM block; expected `PRIVATE KEY` (PKCS#8; convert with `openssl pkcs8 -topk8 -nocrypt`)",
                block.tag()
            ));
        }
        Self::from_pkcs8(block.contents())
    }

    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, String> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| "key generation failed".to_string())?;
        let der = pair
            .to_pkcs8v1()
            .map_err(|_| "key export failed".to_string())?;
        Self::from_pkcs8(der.as_ref())
    }

    /// Signs `claims` as a JWT whose header says what it is (`typ`): each
    /// kind of token portcullis signs has its own, and each verifier checks it.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.into());
        prepared::with_signer(&self.encoding, &self.prepared, || {
            jsonwebtoken::encode(&header, claims, &self.encoding)
        })
        .map_err(|e| format!("signing failed: {e}"))
    }
}

/// The current key and the retired ones still published.
#[derive(Debug)]
pub struct KeyRing {
    pub current: SigningKey,
    pub previous: Vec<SigningKey>,
    /// True when no key was configured and `current` was generated.
    pub generated: bool,
}

impl KeyRing {
    /// From the configured keys; without one, the `fallback` (a key generated
    /// earlier in this process, kept across reloads) or a new one.
    pub fn from_config(
        signing_key: Option<&Secret>,
        previous: &[Secret],
        fallback: Option<&KeyRing>,
    ) -> Result<KeyRing, String> {
        let previous = previous
            .iter()
            .enumerate()
            .map(|(i, s)| {
                SigningKey::from_pem(s.expose())
                    .map_err(|e| format!("sessions.keys.previous_signing_keys[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (current, generated) = match (signing_key, fallback.filter(|f| f.generated)) {
            (Some(secret), _) => (
                SigningKey::from_pem(secret.expose())
                    .map_err(|e| format!("sessions.keys.signing_key: {e}"))?,
                false,
            ),
            (None, Some(earlier)) => (Self::copy_of(&earlier.current)?, true),
            (None, None) => {
                tracing::warn!("no sessions.keys.signing_key configured: generated a signing key for this process; assertions it signs stop verifying after a restart");
                (SigningKey::generate()?, true)
            }
        };
        Ok(KeyRing {
            current,
            previous,
            generated,
        })
    }

    fn copy_of(key: &SigningKey) -> Result<SigningKey, String> {
        Ok(SigningKey {
            kid: key.kid.clone(),
            alg: key.alg,
            encoding: key.encoding.clone(),
            prepared: key.prepared.clone(),
            decoding: key.decoding.clone(),
            public_jwk: key.public_jwk.clone(),
        })
    }

    /// The key, current or previous, whose id is `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&SigningKey> {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| k.kid == kid)
    }

    /// The public JWK set served at `/.auth/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<&serde_json::Value> = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .map(|k| &k.public_jwk)
            .collect();
        json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_tokens_their_published_jwk_verifies() {
        let key = SigningKey::generate().unwrap();
        assert_eq!(key.alg, Algorithm::ES256);
        let token = key
            .sign(
                "JWT",
                &json!({"sub": "alice", "exp": 4_000_000_000u64, "iss": "portcullis"}),
            )
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.public_jwk.clone()).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.set_issuer(&["portcullis"]);
        let data =
            jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert!(
            key.public_jwk.get("d").is_none(),
            "no private member is published"
        );
    }

    #[test]
    fn keys_load_from_pkcs8_pem_and_the_kid_is_stable() {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
        let a = SigningKey::from_pem(&pem_text).unwrap();
        let b = SigningKey::from_pem(&pem_text).unwrap();
        assert_eq!(a.kid, b.kid);
        let ed = Ed25519KeyPair::generate().unwrap().to_pkcs8v1().unwrap();
        let ed_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", ed.as_ref().to_vec()));
        assert_eq!(SigningKey::from_pem(&ed_pem).unwrap().alg, Algorithm::EdDSA);
        let sec1 = pem::encode(&pem::Pem::new("EC PRIVATE KEY", vec![1, 2, 3]));
        assert!(SigningKey::from_pem(&sec1).unwrap_err().contains("PKCS#8"));
        assert!(SigningKey::from_pem("garbage").is_err());
    }

    #[test]
    fn the_ring_publishes_current_and_previous_keys() {
        let old_pem = {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
            pem::encode(&pem::Pem::new(
                "PRIVATE KEY",
                pair.to_pkcs8v1().unwrap().as_ref().to_vec(),
            ))
        };
        let old_kid = SigningKey::from_pem(&old_pem).unwrap().kid;
        let ring = KeyRing::from_config(None, &[Secret::new(old_pem)], None).unwrap();
        assert!(ring.generated);
        assert_ne!(ring.current.kid, old_kid, "a new key signs");
        let published_kids = |ring: &KeyRing| -> Vec<String> {
            ring.jwks()["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            published_kids(&ring),
            vec![ring.current.kid.clone(), old_kid.clone()],
            "the current key and the previous one are both published"
        );
        assert_eq!(ring.by_kid(&old_kid).unwrap().kid, old_kid);
        // A reload without a configured key keeps the generated one.
        let again = KeyRing::from_config(None, &[], Some(&ring)).unwrap();
        assert_eq!(again.current.kid, ring.current.kid);
        assert_eq!(published_kids(&again), vec![ring.current.kid.clone()]);
    }
}
