//! Browser sessions: the server-side record (`Session`), where records live
//! (`store`), and the sealed cookies that carry only a session's id
//! (`cookie`). The login flow and the cookie carrier build on these.

pub mod cookie;
pub mod recheck;
pub mod redis;
pub mod refresh;
pub mod store;

/// Unix seconds now (0 if the clock is before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

use std::fmt;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// A session id: 128 random bits. It is a credential (whoever holds it is
/// the user), so it only ever travels sealed in a cookie; logs, metrics and
/// upstream headers get `public_id`, a hash that grants nothing.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// A fresh id from the system CSPRNG.
    pub fn random() -> Option<Self> {
        let mut bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut bytes).ok()?;
        Some(SessionId(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(SessionId)
    }

    /// The id's opaque public name: `s-` and 24 hex digits of its SHA-256.
    pub fn public_id(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.0);
        let hex: String = digest.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("s-{hex}")
    }

    /// The id as stored by name (e.g. a Redis key): base64url, no padding.
    pub fn encoded(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.public_id())
    }
}

/// Why a session ended, for metrics, logs and the close code of its
/// connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `session.max_lifetime` reached.
    Expired,
    /// Unused for `session.idle_timeout`.
    Idle,
    Logout,
    Revoked,
    /// Dropped by a full store to make room (raise its capacity).
    Evicted,
    /// The provider said its user logged out (back-channel logout).
    ProviderLogout,
}

impl EndReason {
    pub const ALL: [EndReason; 6] = [
        EndReason::Expired,
        EndReason::Idle,
        EndReason::Logout,
        EndReason::Revoked,
        EndReason::Evicted,
        EndReason::ProviderLogout,
    ];

    /// The reason a label names: `label` is also the wire form of a shared
    /// store's end events, so it must stay stable.
    pub fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.label() == label)
    }

    /// The WebSocket close code the session's connections get (SPEC §5):
    /// 4001 when it ran out of time, 4002 when something ended it.
    pub fn close_code(self) -> u16 {
        use crate::connections::close_code;
        match self {
            EndReason::Expired | EndReason::Idle => close_code::SESSION_EXPIRED,
            EndReason::Logout
            | EndReason::Revoked
            | EndReason::Evicted
            | EndReason::ProviderLogout => close_code::SESSION_REVOKED,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Idle => "idle",
            EndReason::Logout => "logout",
            EndReason::Revoked => "revoked",
            EndReason::Evicted => "evicted",
            EndReason::ProviderLogout => "provider_logout",
        }
    }
}

/// A server-side session. The browser holds only its sealed id; the
/// provider's tokens stay here and never leave portcullis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub deployment: String,
    pub provider: String,
    pub subject: String,
    /// The claims kept for identity headers, policy and `/.auth/me`.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Unix seconds.
    pub created_at: u64,
    pub last_seen: u64,
    /// `created_at + max_lifetime`: no activity extends it.
    pub expires_at: u64,
    pub idle_timeout_secs: u64,
    /// The provider's refresh token, for re-checking the user; kept server-side only.
    pub refresh_token: Option<String>,
    /// The provider's ID token, as `id_token_hint` at logout.
    pub id_token: Option<String>,
    /// When the provider last confirmed the user (login or refresh), unix seconds.
    #[serde(default)]
    pub checked_at: u64,
    /// How long the provider's access token lived at login (`expires_in`):
    /// the messenger tokens of this session never live longer.
    #[serde(default)]
    pub provider_token_lifetime_secs: Option<u64>,
}

impl Session {
    /// When the session ends if nothing happens: the earlier of its
    /// absolute expiry and its idle deadline.
    pub fn ends_at(&self) -> u64 {
        self.expires_at
            .min(self.last_seen.saturating_add(self.idle_timeout_secs))
    }

    /// About how many bytes the record takes in memory: its fixed part, its
    /// strings and its claims as JSON text. An estimate (allocator slack and
    /// the cache's own bookkeeping are not counted exactly), but it grows
    /// byte for byte with everything the provider controls: the ID token,
    /// the refresh token and the claims. Cheap enough for every write.
    pub fn approximate_bytes(&self) -> usize {
        std::mem::size_of::<Session>()
            + self.deployment.len()
            + self.provider.len()
            + self.subject.len()
            + self.refresh_token.as_ref().map_or(0, String::len)
            + self.id_token.as_ref().map_or(0, String::len)
            + json_map_bytes(&self.claims)
    }

    /// The provider's own id of the login session (the ID token's `sid`),
    /// which back-channel logout names.
    pub fn provider_sid(&self) -> Option<&str> {
        self.claims.get("sid").and_then(|v| v.as_str())
    }

    /// Whether the session is still alive at `now`, and if not, why.
    pub fn check(&self, now: u64) -> Result<(), EndReason> {
        if now >= self.expires_at {
            Err(EndReason::Expired)
        } else if now >= self.last_seen.saturating_add(self.idle_timeout_secs) {
            Err(EndReason::Idle)
        } else {
            Ok(())
        }
    }
}

/// About the length of `map` as JSON text, without writing it.
fn json_map_bytes(map: &serde_json::Map<String, serde_json::Value>) -> usize {
    2 + map
        .iter()
        .map(|(k, v)| k.len() + 4 + json_bytes(v))
        .sum::<usize>()
}

fn json_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 20,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| json_bytes(v) + 1).sum::<usize>(),
        Value::Object(map) => json_map_bytes(map),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn session(created: u64, max: u64, idle: u64) -> Session {
        Session {
            id: SessionId::random().unwrap(),
            deployment: "d".into(),
            provider: "p".into(),
            subject: "alice".into(),
            claims: serde_json::Map::new(),
            created_at: created,
            last_seen: created,
            expires_at: created + max,
            idle_timeout_secs: idle,
            refresh_token: Some("refresh".into()),
            id_token: None,
            checked_at: created,
            provider_token_lifetime_secs: None,
        }
    }

    #[test]
    fn end_reasons_read_back_from_their_labels() {
        for reason in EndReason::ALL {
            assert_eq!(EndReason::from_label(reason.label()), Some(reason));
        }
        assert_eq!(EndReason::from_label("nonsense"), None);
        // Every variant is listed (the match fails to compile when one is
        // added, reminding to list it in ALL too).
        for reason in EndReason::ALL {
            match reason {
                EndReason::Expired
                | EndReason::Idle
                | EndReason::Logout
                | EndReason::Revoked
                | EndReason::Evicted
                | EndReason::ProviderLogout => {}
            }
        }
        assert_eq!(
            EndReason::from_label("provider_logout"),
            Some(EndReason::ProviderLogout)
        );
    }

    #[test]
    fn sessions_end_at_the_earlier_of_absolute_and_idle_expiry() {
        let mut s = session(1000, 3600, 600);
        assert_eq!(s.ends_at(), 1600);
        assert_eq!(s.check(1599), Ok(()));
        assert_eq!(s.check(1600), Err(EndReason::Idle));
        // Activity moves the idle deadline, never the absolute one.
        s.last_seen = 4200;
        assert_eq!(s.ends_at(), 4600);
        assert_eq!(s.check(4599), Ok(()));
        assert_eq!(s.check(4600), Err(EndReason::Expired));
        assert_eq!(s.check(10_000), Err(EndReason::Expired));
    }

    #[test]
    fn a_sessions_size_follows_its_tokens_and_claims() {
        let mut s = session(1000, 3600, 600);
        let base = s.approximate_bytes();
        assert!(base >= std::mem::size_of::<Session>());
        s.id_token = Some("x".repeat(10_000));
        s.claims
            .insert("groups".into(), serde_json::json!(["y".repeat(5_000)]));
        let grown = s.approximate_bytes() - base;
        let json = serde_json::to_string(&s.claims).unwrap().len();
        assert!(
            (10_000 + json - 8..=10_000 + json + 8).contains(&grown),
            "{grown} bytes for a 10000-byte token and {json} bytes of claims"
        );
    }

    #[test]
    fn ids_are_random_and_their_public_names_reveal_nothing() {
        let a = SessionId::random().unwrap();
        let b = SessionId::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(SessionId::from_bytes(a.as_bytes()), Some(a.clone()));
        assert_eq!(SessionId::from_bytes(&[1, 2, 3]), None);
        let public = a.public_id();
        assert!(public.starts_with("s-") && public.len() == 26);
        assert!(!public.contains(&a.encoded()));
        assert!(
            !format!("{a:?}").contains(&a.encoded()),
            "Debug shows only the public id"
        );
    }
}
