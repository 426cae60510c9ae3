//! In-memory grant state: pending authorization requests, authorization
//! codes and refresh tokens. Everything is one-time and keyed by an
//! unguessable random string.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use url::Url;

/// How long the login form stays usable.
pub(crate) const PENDING_LIFETIME: Duration = Duration::from_secs(600);
/// How long an authorization code can be redeemed (RFC 6749 advises at
/// most 10 minutes; a minute is what real providers use).
pub(crate) const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// How long spent codes and rotated refresh tokens are remembered, so that
/// their replay revokes what they produced.
const REPLAY_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// 256 random bits, base64url: request ids, codes, refresh tokens, jtis.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The system RNG failing is not recoverable; a fixed value would be a
    // security bug even in a development provider.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An /authorize request waiting for the user to pick an account.
#[derive(Debug, Clone)]
pub(crate) struct PendingAuthorization {
    pub(crate) client_id: String,
    /// As sent: the token request must repeat it byte for byte.
    pub(crate) redirect_uri_raw: String,
    pub(crate) redirect_uri: Url,
    pub(crate) state: Option<String>,
    pub(crate) nonce: Option<String>,
    pub(crate) scope: String,
    pub(crate) code_challenge: String,
    pub(crate) created: Instant,
}

/// What an authorization code stands for.
#[derive(Debug, Clone)]
pub(crate) struct IssuedCode {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) code_challenge: String,
    pub(crate) nonce: Option<String>,
    pub(crate) scope: String,
    pub(crate) subject: String,
    pub(crate) auth_time: u64,
    pub(crate) issued: Instant,
}

/// What a refresh token stands for. Tokens rotated from one another share
/// a family, so that replaying any of them revokes all of them.
#[derive(Debug, Clone)]
pub(crate) struct RefreshGrant {
    pub(crate) client_id: String,
    pub(crate) subject: String,
    pub(crate) scope: String,
    pub(crate) auth_time: u64,
    pub(crate) family: String,
}

/// Why a code or refresh token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    Unknown,
    Expired,
    /// Used before: the grant family it belongs to has now been revoked.
    Replayed,
}

#[derive(Default)]
pub(crate) struct Store {
    pending: HashMap<String, PendingAuthorization>,
    codes: HashMap<String, IssuedCode>,
    /// Redeemed code → the refresh-token family it started, and when.
    spent_codes: HashMap<String, (Option<String>, Instant)>,
    refresh: HashMap<String, RefreshGrant>,
    /// Rotated refresh token → its family, and when it was rotated.
    spent_refresh: HashMap<String, (String, Instant)>,
}

impl Store {
    /// Drops what can no longer be used, so a long demo does not grow
    /// without bound.
    fn prune(&mut self) {
        let now = Instant::now();
        self.pending
            .retain(|_, p| now.duration_since(p.created) < PENDING_LIFETIME);
        self.codes
            .retain(|_, c| now.duration_since(c.issued) < CODE_LIFETIME);
        self.spent_codes
            .retain(|_, (_, at)| now.duration_since(*at) < REPLAY_MEMORY);
        self.spent_refresh
            .retain(|_, (_, at)| now.duration_since(*at) < REPLAY_MEMORY);
    }

    pub(crate) fn add_pending(&mut self, pending: PendingAuthorization) -> String {
        self.prune();
        let id = random_token();
        self.pending.insert(id.clone(), pending);
        id
    }

    /// The pending request, if it exists and has not expired.
    pub(crate) fn pending(&self, id: &str) -> Option<&PendingAuthorization> {
        self.pending
            .get(id)
            .filter(|p| p.created.elapsed() < PENDING_LIFETIME)
    }

    pub(crate) fn take_pending(&mut self, id: &str) -> Option<PendingAuthorization> {
        self.pending
            .remove(id)
            .filter(|p| p.created.elapsed() < PENDING_LIFETIME)
    }

    pub(crate) fn add_code(&mut self, code: IssuedCode) -> String {
        self.prune();
        let id = random_token();
        self.codes.insert(id.clone(), code);
        id
    }

    /// Takes a code out for redemption. A code is spent by the attempt,
    /// successful or not; a second attempt revokes the refresh tokens the
    /// first one produced (RFC 6749 section 4.1.2).
    pub(crate) fn redeem_code(&mut self, code: &str) -> Result<IssuedCode, Refusal> {
        if let Some((family, _)) = self.spent_codes.get(code) {
            if let Some(family) = family.clone() {
                self.revoke_family(&family);
            }
            return Err(Refusal::Replayed);
        }
        let issued = self.codes.remove(code).ok_or(Refusal::Unknown)?;
        self.spent_codes
            .insert(code.to_string(), (None, Instant::now()));
        if issued.issued.elapsed() >= CODE_LIFETIME {
            return Err(Refusal::Expired);
        }
        Ok(issued)
    }

    /// A code as issued, left unspent (`DevIdpOptions::reusable_codes`).
    pub(crate) fn peek_code(&self, code: &str) -> Result<IssuedCode, Refusal> {
        let issued = self.codes.get(code).ok_or(Refusal::Unknown)?;
        if issued.issued.elapsed() >= CODE_LIFETIME {
            return Err(Refusal::Expired);
        }
        Ok(issued.clone())
    }

    /// Records which refresh-token family a redeemed code started.
    pub(crate) fn link_code_family(&mut self, code: &str, family: &str) {
        if let Some((slot, _)) = self.spent_codes.get_mut(code) {
            *slot = Some(family.to_string());
        }
    }

    pub(crate) fn add_refresh(&mut self, grant: RefreshGrant) -> String {
        let token = random_token();
        self.refresh.insert(token.clone(), grant);
        token
    }

    /// Takes a refresh token out for rotation. Presenting a rotated token
    /// again revokes its whole family (OAuth 2.0 Security BCP, refresh
    /// token rotation).
    pub(crate) fn take_refresh(&mut self, token: &str) -> Result<RefreshGrant, Refusal> {
        if let Some((family, _)) = self.spent_refresh.get(token) {
            let family = family.clone();
            self.revoke_family(&family);
            return Err(Refusal::Replayed);
        }
        let grant = self.refresh.remove(token).ok_or(Refusal::Unknown)?;
        self.prune();
        self.spent_refresh
            .insert(token.to_string(), (grant.family.clone(), Instant::now()));
        Ok(grant)
    }

    /// Puts back a refresh token taken by a request that then failed for a
    /// reason that is not the token's fault (e.g. a wrong scope).
    pub(crate) fn restore_refresh(&mut self, token: &str, grant: RefreshGrant) {
        self.spent_refresh.remove(token);
        self.refresh.insert(token.to_string(), grant);
    }

    fn revoke_family(&mut self, family: &str) {
        self.refresh.retain(|_, grant| grant.family != family);
    }

    /// Revokes every refresh token of `subject`; returns how many.
    pub(crate) fn revoke_subject(&mut self, subject: &str) -> usize {
        let before = self.refresh.len();
        self.refresh.retain(|_, grant| grant.subject != subject);
        before - self.refresh.len()
    }
}
