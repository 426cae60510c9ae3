//! Sealed cookies: what portcullis puts in a browser is encrypted and
//! authenticated (AES-256-GCM with a random nonce, from aws-lc-rs), bound to
//! its purpose, and readable only with `sessions.keys.cookie_key` or one of
//! the previous keys still accepted during a rotation. A tampered, truncated,
//! foreign or old-key cookie opens to nothing, never to an error a client
//! could probe.
//!
//! Also here: the names and attributes of portcullis's cookies
//! (`CookiePolicy`) and reading cookies from a request, byte for byte.

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;
use pingora::http::RequestHeader;

/// Cookies longer than this are not even decoded.
pub const MAX_COOKIE_BYTES: usize = 4096;

pub struct CookieCodec {
    /// The first key seals; every key opens.
    keys: Vec<RandomizedNonceKey>,
    /// Derives keys for other purposes from the current key's material.
    derivation: aws_lc_rs::hmac::Key,
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
        let derivation = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            aws_lc_rs::hmac::sign(
                &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"portcullis derivation"),
                current.as_ref(),
            )
            .as_ref(),
        );
        Ok(CookieCodec { keys, derivation })
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

    /// An HMAC key for `purpose`, derived from the current cookie key: every
    /// instance sharing `sessions.keys.cookie_key` derives the same one, and
    /// no two purposes share a key.
    pub fn derived_key(&self, purpose: &str) -> aws_lc_rs::hmac::Key {
        aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            aws_lc_rs::hmac::sign(&self.derivation, purpose.as_bytes()).as_ref(),
        )
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

/// Cookie settings derived from the configuration.
pub struct CookiePolicy {
    pub secure: bool,
    pub session_name: String,
    pub pending_prefix: String,
    pub domain: Option<String>,
}

impl CookiePolicy {
    pub fn from_config(config: &crate::config::Config) -> Self {
        let sessions = &config.sessions;
        // Secure unless the public URL is plain http (allowed on loopback only).
        let secure = config
            .public_url
            .as_ref()
            .is_none_or(|u| u.scheme() == "https");
        // `__Host-` pins the cookie to this host and path `/`; it needs Secure and no Domain.
        let host_prefix = secure && sessions.cookie_domain.is_none();
        let base = if host_prefix {
            format!("__Host-{}", sessions.cookie_name)
        } else {
            sessions.cookie_name.clone()
        };
        CookiePolicy {
            secure,
            pending_prefix: format!("{base}-login-"),
            session_name: base,
            domain: sessions.cookie_domain.clone(),
        }
    }

    pub fn set_cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> String {
        let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if self.secure {
            cookie.push_str("; Secure");
        }
        if let Some(domain) = &self.domain {
            cookie.push_str(&format!("; Domain={domain}"));
        }
        if let Some(age) = max_age {
            cookie.push_str(&format!("; Max-Age={age}"));
        }
        cookie
    }

    pub fn clear_cookie(&self, name: &str) -> String {
        self.set_cookie(name, "", Some(0))
    }

    /// Whether a cookie of this name is portcullis's own, compared as
    /// bytes: a name that is not UTF-8 after an own prefix is still own.
    pub fn is_own_cookie(&self, name: &[u8]) -> bool {
        name == self.session_name.as_bytes() || name.starts_with(self.pending_prefix.as_bytes())
    }
}

/// Every cookie of every `Cookie` header as raw bytes: `(name, value,
/// the whole pair)`. Read per pair, not per header, so that one cookie of
/// the site's that is not UTF-8 hides none of the others.
pub fn cookie_pairs(req: &RequestHeader) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| split_at_semicolons(v.as_bytes()))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match memchr::memchr(b'=', pair) {
            Some(at) => (pair[..at].trim_ascii(), pair[at + 1..].trim_ascii(), pair),
            None => (pair, &b""[..], pair),
        })
}

/// `value.split(|b| *b == b';')`, found with `memchr`: a sealed cookie is
/// a hundred bytes or more, scanned on every request that carries it.
fn split_at_semicolons(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let current = rest?;
        match memchr::memchr(b';', current) {
            Some(at) => {
                rest = Some(&current[at + 1..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// The `name=value` pairs of every `Cookie` header that are text.
pub fn cookies(req: &RequestHeader) -> impl Iterator<Item = (&str, &str)> {
    cookie_pairs(req).filter_map(|(name, value, _)| {
        Some((
            std::str::from_utf8(name).ok()?,
            std::str::from_utf8(value).ok()?,
        ))
    })
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

/// Property tests (issue 13 item 10): hostile cookies.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn codec() -> CookieCodec {
        CookieCodec::new([7u8; 32], &[]).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_values_never_open(purpose in "[ -~]{0,16}", value in "\\PC{0,200}") {
            prop_assert_eq!(codec().open(&purpose, &value), None);
        }

        /// Well-formed base64 of the right length is no better than noise.
        #[test]
        fn arbitrary_well_formed_values_never_open(raw in prop::collection::vec(any::<u8>(), 0..120)) {
            let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
            prop_assert_eq!(codec().open("p", &value), None);
        }

        #[test]
        fn seal_then_open_round_trips(purpose in "[ -~]{0,24}", plain in prop::collection::vec(any::<u8>(), 0..256)) {
            let c = codec();
            let sealed = c.seal(&purpose, &plain).unwrap();
            prop_assert!(sealed.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(c.open(&purpose, &sealed), Some(plain.clone()));
            // A rotated codec that keeps this key as a previous one opens it too.
            let rotated = CookieCodec::new([8u8; 32], &[[7u8; 32]]).unwrap();
            prop_assert_eq!(rotated.open(&purpose, &sealed), Some(plain));
        }

        #[test]
        fn sealed_under_one_name_never_opens_under_another(
            a in "[ -~]{0,24}", b in "[ -~]{0,24}", plain in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            prop_assume!(a != b);
            let c = codec();
            let sealed = c.seal(&a, &plain).unwrap();
            prop_assert_eq!(c.open(&b, &sealed), None);
            prop_assert_eq!(CookieCodec::new([9u8; 32], &[]).unwrap().open(&a, &sealed), None);
        }

        /// Any one flipped bit, or any truncation, and it opens to nothing.
        #[test]
        fn tampered_values_never_open(plain in prop::collection::vec(any::<u8>(), 0..64), bit: usize, cut: usize) {
            let c = codec();
            let sealed = c.seal("p", &plain).unwrap();
            let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&sealed).unwrap();
            let bit = bit % (raw.len() * 8);
            raw[bit / 8] ^= 1 << (bit % 8);
            let flipped = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
            prop_assert_eq!(c.open("p", &flipped), None);
            raw[bit / 8] ^= 1 << (bit % 8);
            let cut = cut % raw.len();
            let truncated = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..cut]);
            prop_assert_eq!(c.open("p", &truncated), None);
        }

        /// Arbitrary `Cookie` bytes: every pair is trimmed, holds no `;`,
        /// and its name holds no `=`.
        #[test]
        fn cookie_headers_split_into_clean_pairs(headers in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3)) {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            for h in &headers {
                if let Ok(v) = http::HeaderValue::from_bytes(h) {
                    req.append_header("Cookie", v).unwrap();
                }
            }
            for (name, value, pair) in cookie_pairs(&req) {
                prop_assert!(!pair.is_empty() && !pair.contains(&b';'));
                prop_assert!(!name.contains(&b'=') && !name.contains(&b';') && !value.contains(&b';'));
                prop_assert_eq!(name, name.trim_ascii());
                prop_assert_eq!(value, value.trim_ascii());
            }
        }

        /// The memchr split gives exactly the pieces `split` gives, on any
        /// bytes (empty pieces, leading and trailing `;` included).
        #[test]
        fn semicolon_split_is_the_slice_split(value in prop::collection::vec(prop::sample::select(vec![b';', b'=', b' ', b'a', 0xff]), 0..40)) {
            let ours: Vec<&[u8]> = split_at_semicolons(&value).collect();
            let std: Vec<&[u8]> = value.split(|b| *b == b';').collect();
            prop_assert_eq!(ours, std);
        }

        /// Well-formed cookies come back exactly, in order, across headers.
        #[test]
        fn well_formed_cookies_read_back(pairs in prop::collection::vec(("[A-Za-z0-9_-]{1,8}", "[A-Za-z0-9_=-]{0,8}"), 0..6), split: usize) {
            let texts: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
            let at = if texts.is_empty() { 0 } else { split % texts.len() };
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            for part in [&texts[..at], &texts[at..]] {
                if !part.is_empty() {
                    req.append_header("Cookie", part.join("; ")).unwrap();
                }
            }
            let got: Vec<(String, String)> = cookies(&req).map(|(n, v)| (n.into(), v.into())).collect();
            prop_assert_eq!(got, pairs);
        }
    }
}
