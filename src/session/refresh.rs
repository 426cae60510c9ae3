//! Refresh tokens of the token API (SPEC §3): opaque random values handed to
//! a client, stored only as their SHA-256, each bound to one session and one
//! deployment. On portcullis's own paths they rotate on every use; reusing a
//! rotated one ends the whole session (it was stolen, or copied), except
//! within a short grace window in which two tabs refreshing at once both get
//! the same successor.
//!
//! The successor of a token is derived from it with HMAC-SHA256 under a
//! server key rather than drawn at random, so a second presentation within
//! the grace window can be answered with the same new token without ever
//! storing that token: what the store holds stays a hash.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::SessionId;

/// Every refresh token starts with this, so that secret scanners and
/// people can tell what leaked.
pub const PREFIX: &str = "pcr_";
/// `PREFIX` and 32 bytes in unpadded base64url.
const TOKEN_LEN: usize = PREFIX.len() + 43;
/// How far a grace-window answer follows a chain of rotations.
const MAX_CHAIN: usize = 8;

/// A fresh refresh token from the system CSPRNG.
pub fn generate() -> Option<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(encode(&bytes))
}

fn encode(bytes: &[u8]) -> String {
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Whether `token` has the shape of one of ours: checked before any store
/// lookup, so junk costs nothing.
pub fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_LEN
        && token.starts_with(PREFIX)
        && token[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The name a token is stored under.
pub fn hash(token: &str) -> [u8; 32] {
    crate::token::sha256(token.as_bytes())
}

/// The token a rotation of `token` hands out.
pub fn successor(key: &aws_lc_rs::hmac::Key, token: &str) -> String {
    encode(aws_lc_rs::hmac::sign(key, token.as_bytes()).as_ref())
}

/// What the store keeps of one refresh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    pub session: SessionId,
    pub deployment: String,
    /// Issued on portcullis's own paths (rotates on use); the hosted
    /// product's paths issue tokens that stay the same, as its mobile SDK
    /// keeps using its first refresh token.
    pub rotates: bool,
    /// When this token was rotated (unix seconds): from then on only its
    /// successor is good.
    pub rotated_at: Option<u64>,
    /// The session's maximum lifetime: no refresh token outlives it.
    pub expires_at: u64,
}

/// What presenting a refresh token means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    /// Never rotated: rotate it now.
    Current,
    /// Rotated moments ago (another tab): answer with its successor.
    WithinGrace,
    /// Rotated long enough ago that only a copy could present it.
    Reused,
}

impl RefreshRecord {
    pub fn presented(&self, now: u64, grace_secs: u64) -> Presented {
        match self.rotated_at {
            None => Presented::Current,
            Some(at) if now < at.saturating_add(grace_secs) => Presented::WithinGrace,
            Some(_) => Presented::Reused,
        }
    }
}

/// The newest token of the chain that starts at `token`: each step derives
/// the successor and asks `rotated` whether that one was rotated too.
/// Bounded: a chain longer than `MAX_CHAIN` within one grace window is not
/// a pair of tabs, and answers with the last one derived.
pub async fn newest_successor<F, Fut>(key: &aws_lc_rs::hmac::Key, token: &str, rotated: F) -> String
where
    F: Fn([u8; 32]) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut current = successor(key, token);
    for _ in 0..MAX_CHAIN {
        if !rotated(hash(&current)).await {
            break;
        }
        current = successor(key, &current);
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> aws_lc_rs::hmac::Key {
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[7u8; 32])
    }

    #[test]
    fn tokens_are_random_well_formed_and_stored_as_hashes() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(well_formed(&a) && well_formed(&b));
        assert_ne!(hash(&a), hash(&b));
        for junk in [
            "",
            "pcr_",
            "pcr_short",
            &a[..a.len() - 1],
            &a.replace("pcr_", "xyz_"),
        ] {
            assert!(!well_formed(junk), "{junk:?}");
        }
        let mut non_ascii = a.clone();
        non_ascii.replace_range(10..11, "é");
        assert!(!well_formed(&non_ascii));
    }

    #[test]
    fn successors_are_deterministic_per_key_and_well_formed() {
        let t = generate().unwrap();
        let s1 = successor(&key(), &t);
        assert_eq!(s1, successor(&key(), &t));
        assert!(well_formed(&s1));
        assert_ne!(s1, t);
        let other = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[8u8; 32]);
        assert_ne!(s1, successor(&other, &t));
    }

    #[test]
    fn a_rotated_token_is_forgiven_only_within_the_grace_window() {
        let mut r = RefreshRecord {
            session: SessionId::random().unwrap(),
            deployment: "d".into(),
            rotates: true,
            rotated_at: None,
            expires_at: 10_000,
        };
        assert_eq!(r.presented(1000, 10), Presented::Current);
        r.rotated_at = Some(1000);
        assert_eq!(r.presented(1000, 10), Presented::WithinGrace);
        assert_eq!(r.presented(1009, 10), Presented::WithinGrace);
        assert_eq!(r.presented(1010, 10), Presented::Reused);
        assert_eq!(
            r.presented(1000, 0),
            Presented::Reused,
            "no grace: never forgiven"
        );
    }

    #[tokio::test]
    async fn the_grace_answer_follows_the_chain_to_its_newest_token() {
        let t0 = generate().unwrap();
        let t1 = successor(&key(), &t0);
        let t2 = successor(&key(), &t1);
        // t1 was rotated into t2 already; t2 is current.
        let rotated_hashes = [hash(&t1)];
        let newest = newest_successor(&key(), &t0, |h| {
            let hit = rotated_hashes.contains(&h);
            async move { hit }
        })
        .await;
        assert_eq!(newest, t2);
        // An endless chain stops after MAX_CHAIN steps.
        let newest = newest_successor(&key(), &t0, |_| async { true }).await;
        assert!(well_formed(&newest));
    }
}
