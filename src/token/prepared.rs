//! Keys parsed once for jsonwebtoken: a provider's public keys when its key
//! set is fetched, portcullis's own signing key when it is loaded.
//!
//! Why: jsonwebtoken 12 keeps a `DecodingKey` as bytes and has aws-lc-rs
//! build a key from them on every verify (for RSA, from the modulus and
//! exponent: about a third of a 2048-bit verify), and parses an
//! `EncodingKey`'s PKCS#8 (checking the key pair, a scalar multiplication)
//! on every sign. Its extension point is the process-wide `CryptoProvider`,
//! whose factories are handed the algorithm and the key and nothing else.
//! So portcullis installs a provider that is aws-lc-rs's own except for one
//! case: while [`with_verifier`] (or [`with_signer`]) runs on this thread,
//! a verifier (signer) asked for *that very key* (the same `DecodingKey`,
//! by address, borrowed for the whole call) and *that algorithm* is the one
//! parsed earlier. Every other request goes to aws-lc-rs's default factory
//! unchanged. The signature check itself is aws-lc-rs's
//! (`ParsedPublicKey::verify_sig`), with the same algorithm parameters (key
//! sizes, padding, hash) that jsonwebtoken's aws-lc-rs verifiers use.
//!
//! A provider token with usual claims does not go through
//! `jsonwebtoken::decode` at all: `token::check_prepared` checks the
//! signature itself ([`PreparedVerifier::verifies_digest`] over the SHA-256
//! it computed for RS256, PS256 and ES256, [`PreparedVerifier::verifies`]
//! for the others) and the claims in one pass, by jsonwebtoken's rules.
//! The scoped provider above serves the tokens that still do (unusual
//! claim types, and the other callers of `jsonwebtoken::decode` with a
//! provider key).

use std::cell::RefCell;
use std::sync::{Arc, LazyLock, Once};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self as aws, EcdsaKeyPair, Ed25519KeyPair, ParsedPublicKey, RsaPublicKeyComponents,
};
use base64::Engine;
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::signature::{Error as SignatureError, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// A public key parsed for one algorithm.
#[derive(Clone)]
pub struct PreparedVerifier {
    alg: Algorithm,
    key: Arc<ParsedPublicKey>,
}

impl PreparedVerifier {
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Whether `signature` is this key's over `message`: the call
    /// jsonwebtoken makes through [`Verifier::verify`], for callers that
    /// check a token's parts themselves (`token::check_prepared`).
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key.verify_sig(message, signature).is_ok()
    }

    /// Whether the algorithm hashes its message with SHA-256 (RS256, PS256,
    /// ES256): then a caller may hash the message itself, check the
    /// signature over that digest ([`Self::verifies_digest`]) and keep
    /// hashing from there.
    pub fn hashes_with_sha256(&self) -> bool {
        matches!(
            self.alg,
            Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256
        )
    }

    /// Whether `signature` is this key's over the message `digest` is of:
    /// [`Self::verifies`] with the message hashed by the caller (false for a
    /// digest of another hash than the algorithm's).
    pub fn verifies_digest(&self, digest: &aws_lc_rs::digest::Digest, signature: &[u8]) -> bool {
        self.key.verify_digest_sig(digest, signature).is_ok()
    }
}

impl std::fmt::Debug for PreparedVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedVerifier")
            .field("alg", &self.alg)
            .finish()
    }
}

impl Verifier<Vec<u8>> for PreparedVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), SignatureError> {
        self.key
            .verify_sig(msg, signature)
            .map_err(SignatureError::from_source)
    }
}

impl JwtVerifier for PreparedVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// The aws-lc-rs RSA parameters jsonwebtoken's own aws-lc-rs verifiers use
/// for `alg` (2048 to 8192 bits), so a prepared key accepts exactly what the
/// per-token one did.
fn rsa_parameters(alg: Algorithm) -> Option<&'static aws::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &aws::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &aws::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &aws::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &aws::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &aws::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &aws::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn b64(member: &str, text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| format!("`{member}` is not base64url"))
}

/// The size of an RSA modulus in bits (big-endian bytes, leading zeros
/// not counted).
fn modulus_bits(n: &[u8]) -> u32 {
    let significant = n.iter().skip_while(|&&b| b == 0).count() as u32;
    match n.iter().find(|&&b| b != 0) {
        Some(first) => significant * 8 - first.leading_zeros(),
        None => 0,
    }
}

/// Parses `jwk`'s public key for verifying `alg`. The caller has checked
/// that the key's type (and curve) fit `alg`; a mismatch here is an error.
pub fn verifier_for(jwk: &Jwk, alg: Algorithm) -> Result<PreparedVerifier, String> {
    let refused = |e: aws_lc_rs::error::KeyRejected| format!("aws-lc-rs refused the key: {e}");
    let key = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(rsa), _) => {
            let params =
                rsa_parameters(alg).ok_or_else(|| format!("an RSA key cannot verify {alg:?}"))?;
            let (n, e) = (b64("n", &rsa.n)?, b64("e", &rsa.e)?);
            // aws-lc-rs checks the size only when verifying; refuse here a
            // key that would fail every verification.
            let bits = modulus_bits(&n);
            if !(params.min_modulus_len()..=params.max_modulus_len()).contains(&bits) {
                return Err(format!(
                    "an RSA key of {bits} bits (verifiable: {} to {})",
                    params.min_modulus_len(),
                    params.max_modulus_len()
                ));
            }
            RsaPublicKeyComponents { n: &n, e: &e }
                .to_parsed_public_key(params)
                .map_err(refused)?
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256 | Algorithm::ES384) => {
            let mut point = vec![0x04];
            point.extend(b64("x", &ec.x)?);
            point.extend(b64("y", &ec.y)?);
            let params: &'static dyn aws::VerificationAlgorithm = if alg == Algorithm::ES256 {
                &aws::ECDSA_P256_SHA256_FIXED
            } else {
                &aws::ECDSA_P384_SHA384_FIXED
            };
            ParsedPublicKey::new(params, point).map_err(refused)?
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA)
            if okp.curve == EllipticCurve::Ed25519 =>
        {
            ParsedPublicKey::new(&aws::ED25519, b64("x", &okp.x)?).map_err(refused)?
        }
        _ => return Err(format!("the key's type cannot verify {alg:?}")),
    };
    Ok(PreparedVerifier {
        alg,
        key: Arc::new(key),
    })
}

/// A private key parsed once, for the one algorithm it signs.
#[derive(Clone)]
pub enum PreparedSigner {
    Es256(Arc<EcdsaKeyPair>),
    EdDsa(Arc<Ed25519KeyPair>),
}

impl PreparedSigner {
    fn alg(&self) -> Algorithm {
        match self {
            PreparedSigner::Es256(_) => Algorithm::ES256,
            PreparedSigner::EdDsa(_) => Algorithm::EdDSA,
        }
    }
}

impl Signer<Vec<u8>> for PreparedSigner {
    // As jsonwebtoken's aws-lc-rs signers do, with the key already parsed.
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, SignatureError> {
        match self {
            PreparedSigner::Es256(pair) => pair
                .sign(&SystemRandom::new(), msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(SignatureError::from_source),
            PreparedSigner::EdDsa(pair) => Ok(pair.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for PreparedSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg()
    }
}

/// The key prepared for this thread's current jsonwebtoken call, by the
/// address of the jsonwebtoken key it stands for.
struct Slot<T> {
    address: usize,
    alg: Algorithm,
    prepared: T,
}

thread_local! {
    static VERIFYING: RefCell<Option<Slot<PreparedVerifier>>> = const { RefCell::new(None) };
    static SIGNING: RefCell<Option<Slot<PreparedSigner>>> = const { RefCell::new(None) };
}

/// Restores a slot's previous content when the scope ends (also on unwind).
struct Restore<T: 'static> {
    slot: &'static std::thread::LocalKey<RefCell<Option<Slot<T>>>>,
    previous: Option<Slot<T>>,
}

impl<T: 'static> Drop for Restore<T> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        self.slot.with(|slot| *slot.borrow_mut() = previous);
    }
}

fn scoped<T: 'static, R>(
    slot: &'static std::thread::LocalKey<RefCell<Option<Slot<T>>>>,
    entry: Slot<T>,
    f: impl FnOnce() -> R,
) -> R {
    ensure_installed();
    let previous = slot.with(|s| s.borrow_mut().replace(entry));
    let _restore = Restore { slot, previous };
    f()
}

/// Runs `f` (a `jsonwebtoken::decode` with `key`) with `prepared` standing
/// in for `key` when jsonwebtoken asks for a verifier of `key` for the
/// prepared algorithm. Without a prepared key, `f` runs as it would anyway.
pub fn with_verifier<R>(
    key: &DecodingKey,
    prepared: Option<&PreparedVerifier>,
    f: impl FnOnce() -> R,
) -> R {
    match prepared {
        Some(p) => scoped(
            &VERIFYING,
            Slot {
                address: key as *const DecodingKey as usize,
                alg: p.alg,
                prepared: p.clone(),
            },
            f,
        ),
        None => f(),
    }
}

/// As [`with_verifier`], for a `jsonwebtoken::encode` with `key`.
pub fn with_signer<R>(key: &EncodingKey, prepared: &PreparedSigner, f: impl FnOnce() -> R) -> R {
    scoped(
        &SIGNING,
        Slot {
            address: key as *const EncodingKey as usize,
            alg: prepared.alg(),
            prepared: prepared.clone(),
        },
        f,
    )
}

/// What `slot` holds for this very `key` object and `alg`, if anything.
fn slotted<K, T: Clone + 'static>(
    slot: &'static std::thread::LocalKey<RefCell<Option<Slot<T>>>>,
    alg: Algorithm,
    key: &K,
) -> Option<T> {
    let address = key as *const K as usize;
    slot.with(|slot| {
        slot.borrow()
            .as_ref()
            .filter(|s| s.address == address && s.alg == alg)
            .map(|s| s.prepared.clone())
    })
}

fn prepared_verifier(alg: Algorithm, key: &DecodingKey) -> Option<PreparedVerifier> {
    slotted(&VERIFYING, alg, key)
}

fn prepared_signer(alg: Algorithm, key: &EncodingKey) -> Option<PreparedSigner> {
    slotted(&SIGNING, alg, key)
}

fn new_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    match prepared_verifier(*alg, key) {
        Some(prepared) => Ok(Box::new(prepared)),
        None => (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    }
}

fn new_signer(
    alg: &Algorithm,
    key: &EncodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    match prepared_signer(*alg, key) {
        Some(prepared) => Ok(Box::new(prepared)),
        None => (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.signer_factory)(alg, key),
    }
}

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER
        .key_utils
        .clone(),
});

/// Makes portcullis's provider jsonwebtoken's process-wide one. It must run
/// before jsonwebtoken first signs or verifies (which fixes the default);
/// `install_crypto_provider` calls it at startup and every prepared call
/// makes sure. If another provider got there first, prepared keys are not
/// used (every call takes the per-token path, correct but slower), and a
/// warning says so once.
pub fn ensure_installed() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let ours: &'static CryptoProvider = &PROVIDER;
        let _ = CryptoProvider::install_default(ours);
        if !is_installed() {
            tracing::warn!("jsonwebtoken's crypto provider was set before portcullis's: keys are parsed per token (slower, not less safe)");
        }
    });
}

/// Whether portcullis's provider is jsonwebtoken's process-wide one.
pub fn is_installed() -> bool {
    CryptoProvider::try_get_default().is_some_and(|p| std::ptr::eq(p, &*PROVIDER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    /// A P-256 key: its PKCS#8, its public JWK and the JWK's `DecodingKey`.
    fn ec_key() -> (Vec<u8>, Jwk, DecodingKey) {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]),
        }))
        .unwrap();
        let decoding = DecodingKey::from_jwk(&jwk).unwrap();
        (pair.to_pkcs8v1().unwrap().as_ref().to_vec(), jwk, decoding)
    }

    fn signed_by(pkcs8: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).unwrap();
        let message = b"header.payload".to_vec();
        let signature = pair.sign(&SystemRandom::new(), &message).unwrap();
        (message, signature.as_ref().to_vec())
    }

    /// `check_prepared` checks RS256, PS256 and ES256 over a SHA-256 it
    /// computed itself: that check must say what the check over the message
    /// says, for a good signature, a tampered one, and a message that is not
    /// the one signed; and a digest of another hash never verifies.
    #[test]
    fn the_digest_check_agrees_with_the_message_check() {
        use aws_lc_rs::digest::{digest, SHA256, SHA384};
        use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let rsa = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
        let parts: PublicKeyComponents<Vec<u8>> = rsa.public_key().into();
        let rsa_jwk: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA", "n": b64(&parts.n), "e": b64(&parts.e),
        }))
        .unwrap();
        let message = b"header.payload";
        let rsa_signed = |padding: &'static dyn aws::RsaEncoding| {
            let mut signature = vec![0; rsa.public_modulus_len()];
            rsa.sign(padding, &SystemRandom::new(), message, &mut signature)
                .unwrap();
            signature
        };
        let (ec_private, ec_jwk, _) = ec_key();
        let cases = [
            (
                Algorithm::RS256,
                &rsa_jwk,
                rsa_signed(&aws::RSA_PKCS1_SHA256),
            ),
            (Algorithm::PS256, &rsa_jwk, rsa_signed(&aws::RSA_PSS_SHA256)),
            (Algorithm::ES256, &ec_jwk, signed_by(&ec_private).1),
        ];
        for (alg, jwk, signature) in cases {
            let verifier = verifier_for(jwk, alg).unwrap();
            assert!(verifier.hashes_with_sha256(), "{alg:?}");
            let mut tampered = signature.clone();
            tampered[9] ^= 1;
            for (text, signature, good) in [
                (&message[..], &signature, true),
                (&message[..], &tampered, false),
                (&b"header.payloaD"[..], &signature, false),
            ] {
                assert_eq!(verifier.verifies(text, signature), good, "{alg:?}");
                assert_eq!(
                    verifier.verifies_digest(&digest(&SHA256, text), signature),
                    good,
                    "{alg:?}"
                );
            }
            assert!(
                !verifier.verifies_digest(&digest(&SHA384, message), &signature),
                "{alg:?}: a SHA-384 digest"
            );
        }
        let rs384 = verifier_for(&rsa_jwk, Algorithm::RS384).unwrap();
        assert!(!rs384.hashes_with_sha256());
    }

    #[test]
    fn a_prepared_key_stands_in_only_for_its_own_key_and_algorithm() {
        let (a_private, _, a) = ec_key();
        let (_, b_jwk, _) = ec_key();
        let (message, signature) = signed_by(&a_private);
        let verifies = |key: &DecodingKey, alg: Algorithm| {
            new_verifier(&alg, key).is_ok_and(|v| v.verify(&message, &signature).is_ok())
        };
        assert!(verifies(&a, Algorithm::ES256), "the default path");
        // B's parsed key standing in for A: A's signature fails, which shows
        // the prepared key, not the DecodingKey, did the check.
        let b_prepared = verifier_for(&b_jwk, Algorithm::ES256).unwrap();
        with_verifier(&a, Some(&b_prepared), || {
            assert!(!verifies(&a, Algorithm::ES256), "the prepared key is used");
            let other = a.clone();
            assert!(
                verifies(&other, Algorithm::ES256),
                "another DecodingKey (even an equal one) takes the default path"
            );
            assert!(
                new_verifier(&Algorithm::HS256, &a).is_err(),
                "never for another algorithm: HMAC with a public key is refused as before"
            );
        });
        assert!(verifies(&a, Algorithm::ES256), "the scope ended");
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_verifier(&a, Some(&b_prepared), || panic!("inside the scope"))
        }));
        assert!(unwound.is_err());
        assert!(verifies(&a, Algorithm::ES256), "a panic ends the scope too");
    }

    #[test]
    fn a_key_is_parsed_only_for_an_algorithm_of_its_type() {
        let (_, jwk, _) = ec_key();
        assert!(verifier_for(&jwk, Algorithm::ES256).is_ok());
        for alg in [Algorithm::RS256, Algorithm::EdDSA, Algorithm::HS256] {
            assert!(verifier_for(&jwk, alg).is_err(), "{alg:?}");
        }
    }

    #[test]
    fn a_prepared_signer_signs_for_its_own_key_only() {
        let (a_private, _, a_public) = ec_key();
        let (b_private, _, b_public) = ec_key();
        let a = EncodingKey::from_ec_der(&a_private);
        let b_prepared = PreparedSigner::Es256(Arc::new(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &b_private).unwrap(),
        ));
        let sign = |key: &EncodingKey| new_signer(&Algorithm::ES256, key).unwrap().try_sign(b"m");
        let verifies = |public: &DecodingKey, signature: &Vec<u8>| {
            new_verifier(&Algorithm::ES256, public)
                .unwrap()
                .verify(b"m", signature)
                .is_ok()
        };
        let by_b = with_signer(&a, &b_prepared, || sign(&a)).unwrap();
        assert!(verifies(&b_public, &by_b), "the prepared key signed");
        assert!(!verifies(&a_public, &by_b));
        let by_a = sign(&a).unwrap();
        assert!(
            verifies(&a_public, &by_a),
            "outside the scope: the default path"
        );
    }
}
