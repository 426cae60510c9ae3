//! Sealed cookies: what portcullis puts in a browser is encrypted and
//! authenticated (AES-256-GCM with a random nonce, from aws-lc-rs), bound to
//! its purpose, and readable only with `sessions.keys.cookie_key` or one of
//! the previous keys still accepted during a rotation. A tampered, truncated,
//! foreign or old-key cookie opens to nothing, never to an error a client
//! could probe.

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;

/// Cookies longer than this are not even decoded.
pub const MAX_COOKIE_BYTES: usize = 4096;

pub struct CookieCodec {
    /// The first key seals; every key opens.
    keys: Vec<RandomizedNonceKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieKeyError {
    #[error("a cookie key must be at least 32 bytes")]
    TooShort,
    #[error("the cookie key could not be loaded")]
    Unusable,
}

impl CookieCodec {
    /// From raw key material: the current key first, then previous ones.
    /// Keys longer than 32 bytes are reduced to 32 by SHA-256.
    pub fn new<K: AsRef<[u8]>>(current: K, previous: &[K]) -> Result<Self, CookieKeyError> {
        let keys = std::iter::once(current.as_ref())
            .chain(previous.iter().map(AsRef::as_ref))
            .map(Self::key)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CookieCodec { keys })
    }

    fn key(material: &[u8]) -> Result<RandomizedNonceKey, CookieKeyError> {
        if material.len() < 32 {
            return Err(CookieKeyError::TooShort);
        }
        let digest;
        let bytes = if material.len() == 32 {
            material
        } else {
            digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, material);
            digest.as_ref()
        };
        RandomizedNonceKey::new(&AES_256_GCM, bytes).map_err(|_| CookieKeyError::Unusable)
    }

    /// A codec with a fresh random key, for a process without a configured key.
    pub fn random() -> Result<Self, CookieKeyError> {
        let mut material = [0u8; 32];
        aws_lc_rs::rand::fill(&mut material).map_err(|_| CookieKeyError::Unusable)?;
        Self::new(material, &[])
    }

    /// Seals `plaintext` for `purpose` (e.g. the cookie's name): the result
    /// opens only for the same purpose.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Option<String> {
        let mut buffer = plaintext.to_vec();
        let nonce = self.keys[0]
            .seal_in_place_append_tag(Aad::from(purpose.as_bytes()), &mut buffer)
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + buffer.len());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buffer);
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// Opens a sealed value; `None` for anything that is not intact and ours.
    pub fn open(&self, purpose: &str, value: &str) -> Option<Vec<u8>> {
        if value.len() > MAX_COOKIE_BYTES {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .ok()?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        self.keys.iter().find_map(|key| {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut buffer = sealed.to_vec();
            key.open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut buffer)
                .ok()
                .map(|plain| plain.to_vec())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(seed: u8) -> CookieCodec {
        CookieCodec::new([seed; 32], &[]).unwrap()
    }

    #[test]
    fn sealed_values_round_trip_for_their_purpose_only() {
        let c = codec(1);
        let sealed = c.seal("__Host-portcullis", b"session-id-123").unwrap();
        assert_eq!(
            c.open("__Host-portcullis", &sealed).as_deref(),
            Some(&b"session-id-123"[..])
        );
        assert_eq!(
            c.open("portcullis-login", &sealed),
            None,
            "bound to its purpose"
        );
        assert!(
            !sealed.contains("session-id"),
            "the content is not readable"
        );
        // Random nonces: sealing twice gives different cookies.
        assert_ne!(
            sealed,
            c.seal("__Host-portcullis", b"session-id-123").unwrap()
        );
    }

    #[test]
    fn tampered_truncated_and_foreign_cookies_open_to_nothing() {
        let c = codec(1);
        let sealed = c.seal("p", b"payload").unwrap();
        let mut bytes = sealed.clone().into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
        assert_eq!(c.open("p", std::str::from_utf8(&bytes).unwrap()), None);
        assert_eq!(c.open("p", &sealed[..sealed.len() - 4]), None);
        assert_eq!(c.open("p", "short"), None);
        assert_eq!(c.open("p", "not base64 !!!"), None);
        assert_eq!(c.open("p", &"A".repeat(MAX_COOKIE_BYTES + 1)), None);
        assert_eq!(
            codec(2).open("p", &sealed),
            None,
            "another key cannot open it"
        );
    }

    #[test]
    fn rotation_accepts_previous_keys_and_seals_with_the_current_one() {
        let old = codec(1);
        let sealed_before = old.seal("p", b"kept").unwrap();
        let rotated = CookieCodec::new([2u8; 32], &[[1u8; 32]]).unwrap();
        assert_eq!(
            rotated.open("p", &sealed_before).as_deref(),
            Some(&b"kept"[..])
        );
        let sealed_after = rotated.seal("p", b"new").unwrap();
        assert_eq!(
            old.open("p", &sealed_after),
            None,
            "new cookies use the new key"
        );
        assert_eq!(
            codec(2).open("p", &sealed_after).as_deref(),
            Some(&b"new"[..])
        );
    }

    #[test]
    fn keys_must_be_long_enough() {
        assert_eq!(
            CookieCodec::new([0u8; 16], &[]).err(),
            Some(CookieKeyError::TooShort)
        );
        assert!(CookieCodec::new([0u8; 64], &[]).is_ok());
        assert!(CookieCodec::random().is_ok());
    }
}
