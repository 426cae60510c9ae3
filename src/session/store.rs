//! Where sessions live. A trait, so that the embedded `memory` store (one
//! instance) and a shared `redis` store (several instances) are
//! interchangeable; every method is async and fallible because a shared
//! store is a network service. A store reports the ends it discovers by
//! itself (maximum lifetime, idle timeout) to an `EndObserver`, once per
//! session; ends that callers cause (logout, revocation) are theirs to report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::refresh::RefreshRecord;
use super::{EndReason, Session, SessionId};

/// Told of each session that a store found ended by time, once.
pub type EndObserver = Arc<dyn Fn(&Session, EndReason) + Send + Sync>;

/// A change to a stored session, applied by `SessionStore::update`. `Fn`,
/// not `FnOnce`: a shared store that finds the record changed by another
/// writer applies it again to the newer record.
pub type SessionChange = Box<dyn Fn(&mut Session) + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered nonsense; callers fail
    /// closed (no session) and readiness reports it.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The session's record (tokens and claims, which the provider
    /// controls) is larger than `MAX_SESSION_BYTES`: refused, never stored.
    #[error("session record of about {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
}

/// The largest session record a store keeps, in bytes (as
/// `Session::approximate_bytes` counts them). A session is mostly its ID
/// token, that token's claims decoded, and a refresh token: at the default
/// `max_token_bytes` (8 KiB) that is at most about 16 KiB, so this leaves
/// room four times over, while one login can never take more than a
/// sliver of the memory budget. A provider allowed larger ID tokens (above
/// about 36 KiB) can issue one whose session is refused as too large.
pub const MAX_SESSION_BYTES: usize = 64 * 1024;

/// What the memory store counts for each session beyond its record: the
/// cache's entry, its key, and the public-id index entry.
const ENTRY_OVERHEAD: usize = 256;

/// The weight of a session in the memory store's byte budget.
fn session_weight(session: &Session) -> usize {
    session.approximate_bytes() + ENTRY_OVERHEAD
}

/// Refuses a session too large to store.
pub fn check_size(session: &Session) -> Result<(), StoreError> {
    let bytes = session.approximate_bytes();
    if bytes > MAX_SESSION_BYTES {
        return Err(StoreError::TooLarge {
            bytes,
            limit: MAX_SESSION_BYTES,
        });
    }
    Ok(())
}

/// Which sessions `SessionStore::find` returns: those matching every field
/// that is set. `subject` or `provider_sid` must be set (a query for every
/// session is not offered: it would not scale in a shared store).
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionQuery<'a> {
    /// The provider's name in config; `None` matches any provider.
    pub provider: Option<&'a str>,
    /// The provider's `sub`.
    pub subject: Option<&'a str>,
    /// The provider's session id (the ID token's `sid` claim), as
    /// back-channel logout names it.
    pub provider_sid: Option<&'a str>,
}

impl SessionQuery<'_> {
    pub fn matches(&self, session: &Session) -> bool {
        (self.subject.is_some() || self.provider_sid.is_some())
            && self.provider.is_none_or(|p| p == session.provider)
            && self.subject.is_none_or(|s| s == session.subject)
            && self
                .provider_sid
                .is_none_or(|sid| session.provider_sid() == Some(sid))
    }
}

/// What a single-use marker (`SessionStore::first_use`) is for: each kind is
/// its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SingleUse {
    /// A login's `state`, claimed by its first callback.
    LoginState,
    /// A back-channel `logout_token`'s `jti` (with its issuer), claimed by
    /// its first delivery.
    LogoutTokenId,
}

impl SingleUse {
    pub fn label(self) -> &'static str {
        match self {
            SingleUse::LoginState => "login_state",
            SingleUse::LogoutTokenId => "logout_jti",
        }
    }
}

/// What a shared store tells every instance about sessions ended elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Another instance ended this session (by public id): close its live
    /// connections here, and forget any cached copy.
    Ended {
        public_id: String,
        reason: EndReason,
    },
    /// Events may have been missed (the store's connection was lost and is
    /// back): every live connection's session must be looked up again.
    Resync,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The session, if it exists and has not ended by `now`. Shared, not
    /// copied: this is on every session-authenticated request.
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError>;
    /// Creates or replaces a session.
    async fn save(&self, session: &Session) -> Result<(), StoreError>;
    /// Ends a session for `reason`; returns it if it existed. A shared
    /// store tells the other instances (`StoreEvent::Ended`).
    async fn remove(
        &self,
        id: &SessionId,
        reason: EndReason,
    ) -> Result<Option<Session>, StoreError>;
    /// Applies `change` to the session, atomically, if it exists and has not
    /// ended by `now`; the updated session, or `None`. Never brings back a
    /// session that was removed meanwhile, and never undoes another
    /// writer's change to fields `change` does not touch.
    async fn update(
        &self,
        id: &SessionId,
        now: u64,
        change: SessionChange,
    ) -> Result<Option<Arc<Session>>, StoreError>;
    /// Records activity at `now` (moving the idle deadline, never back); the
    /// updated session, or `None` if it is gone or has ended.
    async fn touch(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        self.update(
            id,
            now,
            Box::new(move |s: &mut Session| s.last_seen = s.last_seen.max(now)),
        )
        .await
    }
    /// The session whose public id (`SessionId::public_id`) is `public_id`,
    /// if it exists and has not ended by `now`: how a messenger token,
    /// which carries only the public id, finds its session.
    async fn load_public(
        &self,
        public_id: &str,
        now: u64,
    ) -> Result<Option<Arc<Session>>, StoreError>;
    /// Whether a provider token (by `TokenCache::key` digest) belonged to a
    /// session that has ended: its ID token stays refused as a credential
    /// until it expires, although its signature still verifies.
    async fn token_ended(&self, digest: &[u8; 32]) -> Result<bool, StoreError>;
    /// Stores a refresh token's record under the token's hash.
    async fn save_refresh(&self, hash: [u8; 32], record: RefreshRecord) -> Result<(), StoreError>;
    /// The record of a refresh token, if it is known and not past its expiry.
    async fn load_refresh(&self, hash: &[u8; 32]) -> Result<Option<RefreshRecord>, StoreError>;
    /// Marks a refresh token rotated at `now` unless it already was, atomically;
    /// returns the record as it was before (so exactly one caller sees it
    /// unrotated), or `None` for an unknown token.
    async fn rotate_refresh(
        &self,
        hash: &[u8; 32],
        now: u64,
    ) -> Result<Option<RefreshRecord>, StoreError>;
    /// The live sessions matching `query`, at most `limit` of them.
    async fn find(
        &self,
        query: &SessionQuery<'_>,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Session>>, StoreError>;
    /// Marks `key` used in `kind`'s namespace for `ttl`, atomically: true for
    /// the first caller, false while the mark lasts. Keys are digests, so
    /// the store never holds the value itself.
    async fn first_use(
        &self,
        kind: SingleUse,
        key: [u8; 32],
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// Removes a single-use mark, so that what claimed it can be tried
    /// again (a back-channel logout whose sessions could not all be ended).
    async fn forget_use(&self, kind: SingleUse, key: [u8; 32]) -> Result<(), StoreError>;
    /// Events from other instances (shared stores only): `None` for a store
    /// that only this process sees.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>> {
        None
    }
    /// About how many sessions are live (for the gauge), when the store can tell cheaply.
    fn approximate_count(&self) -> Option<u64>;
    /// Whether the store answers (for `/readyz`); an embedded store always does.
    fn reachable(&self) -> bool {
        true
    }
    /// Periodic housekeeping (the supervisor calls it every tick): a store
    /// whose entries expire on their own notices them here.
    async fn maintain(&self) {}
}

/// The embedded store: an in-memory map, bounded in bytes, whose entries
/// vanish when their session ends. Sessions weigh what their records do
/// (`session_weight`); past the budget the least used are evicted (and
/// reported `Evicted`). The bookkeeping beside them (public-id index,
/// refresh-token records, ended ID tokens) is fixed-size per entry, and each
/// holds at most as many entries as the budget could hold of the smallest
/// sessions.
pub struct MemoryStore {
    sessions: moka::future::Cache<SessionId, Arc<Session>>,
    /// Public id → id, for `load_public`; entries leave with their session.
    by_public: moka::sync::Cache<String, SessionId>,
    /// Refresh-token records by token hash, each until its session's maximum lifetime.
    refresh: moka::future::Cache<[u8; 32], RefreshRecord>,
    /// Digests of ended sessions' ID tokens, each until its `exp`.
    ended_tokens: moka::sync::Cache<[u8; 32], u64>,
    /// Single-use marks, each until its own deadline.
    used: moka::sync::Cache<(SingleUse, [u8; 32]), Instant>,
    on_end: Option<EndObserver>,
}

struct UntilDeadline;

impl moka::Expiry<(SingleUse, [u8; 32]), Instant> for UntilDeadline {
    fn expire_after_create(
        &self,
        _key: &(SingleUse, [u8; 32]),
        deadline: &Instant,
        now: Instant,
    ) -> Option<Duration> {
        Some(deadline.saturating_duration_since(now))
    }
}

/// Ended sessions' ID tokens are remembered at most this long, whatever
/// their `exp` says.
const MAX_ENDED_TOKEN_SECS: u64 = 24 * 3600;

struct UntilTokenExpires;

impl moka::Expiry<[u8; 32], u64> for UntilTokenExpires {
    fn expire_after_create(&self, _: &[u8; 32], exp: &u64, _now: Instant) -> Option<Duration> {
        Some(Duration::from_secs(
            exp.saturating_sub(unix_now()).min(MAX_ENDED_TOKEN_SECS),
        ))
    }
}

/// Remembers the ID token of a session that ended.
fn remember_ended_token(ended: &moka::sync::Cache<[u8; 32], u64>, session: &Session) {
    if let Some(id_token) = &session.id_token {
        let exp = crate::token::recorded_expiry(id_token)
            .unwrap_or_else(|| unix_now() + MAX_ENDED_TOKEN_SECS);
        if exp > unix_now() {
            ended.insert(
                crate::token::TokenCache::key(&session.provider, id_token),
                exp,
            );
        }
    }
}

struct UntilRecordExpires;

impl moka::Expiry<[u8; 32], RefreshRecord> for UntilRecordExpires {
    fn expire_after_create(
        &self,
        _hash: &[u8; 32],
        record: &RefreshRecord,
        _now: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(
            record.expires_at.saturating_sub(unix_now()),
        ))
    }
}

struct UntilSessionEnds;

impl moka::Expiry<SessionId, Arc<Session>> for UntilSessionEnds {
    fn expire_after_create(
        &self,
        _id: &SessionId,
        session: &Arc<Session>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(remaining(session))
    }

    fn expire_after_update(
        &self,
        _id: &SessionId,
        session: &Arc<Session>,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining(session))
    }
}

fn remaining(session: &Session) -> Duration {
    Duration::from_secs(session.ends_at().saturating_sub(unix_now()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl MemoryStore {
    /// A store whose sessions take at most about `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self::with_end_observer(max_bytes, None)
    }

    /// A store that tells `on_end` of every session it finds ended by time:
    /// when a lookup meets one, or when the cache lets one expire.
    pub fn with_end_observer(max_bytes: u64, on_end: Option<EndObserver>) -> Self {
        let smallest = (std::mem::size_of::<Session>() + ENTRY_OVERHEAD) as u64;
        let capacity = (max_bytes / smallest).max(1);
        let by_public: moka::sync::Cache<String, SessionId> =
            moka::sync::Cache::builder().max_capacity(capacity).build();
        let index = by_public.clone();
        let ended_tokens: moka::sync::Cache<[u8; 32], u64> = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .expire_after(UntilTokenExpires)
            .build();
        let ended = ended_tokens.clone();
        let observer = on_end.clone();
        let sessions = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_id: &SessionId, session: &Arc<Session>| {
                u32::try_from(session_weight(session)).unwrap_or(u32::MAX)
            })
            .expire_after(UntilSessionEnds)
            .eviction_listener(move |_id, session: Arc<Session>, cause| {
                use moka::notification::RemovalCause;
                if cause != RemovalCause::Replaced {
                    index.invalidate(&session.id.public_id());
                    remember_ended_token(&ended, &session);
                }
                let Some(observer) = &observer else {
                    return;
                };
                // Explicit removals and replacements are the callers' doing
                // (a lookup that finds an ended session reports it itself).
                match cause {
                    RemovalCause::Expired => {
                        let reason = session
                            .check(unix_now())
                            .err()
                            .unwrap_or(EndReason::Expired);
                        observer(&session, reason);
                    }
                    RemovalCause::Size => observer(&session, EndReason::Evicted),
                    RemovalCause::Explicit | RemovalCause::Replaced => {}
                }
            })
            .build();
        MemoryStore {
            sessions,
            by_public,
            refresh: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilRecordExpires)
                .build(),
            ended_tokens,
            used: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilDeadline)
                .build(),
            on_end,
        }
    }

    pub fn len(&self) -> u64 {
        self.sessions.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Arc<Session>>, StoreError> {
        let Some(session) = self.sessions.get(id).await else {
            return Ok(None);
        };
        match session.check(now) {
            Ok(()) => Ok(Some(session)),
            Err(reason) => {
                // Whoever removes it reports it: one report per session.
                if self.sessions.remove(id).await.is_some() {
                    if let Some(on_end) = &self.on_end {
                        on_end(&session, reason);
                    }
                }
                Ok(None)
            }
        }
    }

    async fn save(&self, session: &Session) -> Result<(), StoreError> {
        check_size(session)?;
        self.by_public
            .insert(session.id.public_id(), session.id.clone());
        self.sessions
            .insert(session.id.clone(), Arc::new(session.clone()))
            .await;
        Ok(())
    }

    async fn remove(
        &self,
        id: &SessionId,
        _reason: EndReason,
    ) -> Result<Option<Session>, StoreError> {
        Ok(self.sessions.remove(id).await.map(|s| (*s).clone()))
    }

    async fn update(
        &self,
        id: &SessionId,
        now: u64,
        change: SessionChange,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        use moka::ops::compute::{CompResult, Op};
        let mut ended = None;
        let mut too_large = None;
        let result = self
            .sessions
            .entry(id.clone())
            .and_compute_with(|current| {
                let op = match current.map(|entry| entry.into_value()) {
                    None => Op::Nop,
                    Some(session) => match session.check(now) {
                        Ok(()) => {
                            let mut updated = (*session).clone();
                            change(&mut updated);
                            // A change that outgrows the limit is not applied.
                            match check_size(&updated) {
                                Ok(()) => Op::Put(Arc::new(updated)),
                                Err(e) => {
                                    too_large = Some(e);
                                    Op::Nop
                                }
                            }
                        }
                        Err(reason) => {
                            ended = Some((session, reason));
                            Op::Remove
                        }
                    },
                };
                std::future::ready(op)
            })
            .await;
        if let Some(e) = too_large {
            return Err(e);
        }
        match result {
            CompResult::ReplacedWith(entry) => Ok(Some(entry.into_value())),
            CompResult::Removed(_) => {
                if let (Some((session, reason)), Some(on_end)) = (ended, &self.on_end) {
                    on_end(&session, reason);
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    async fn load_public(
        &self,
        public_id: &str,
        now: u64,
    ) -> Result<Option<Arc<Session>>, StoreError> {
        match self.by_public.get(public_id) {
            Some(id) => self.load(&id, now).await,
            None => Ok(None),
        }
    }

    async fn token_ended(&self, digest: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self.ended_tokens.contains_key(digest))
    }

    async fn save_refresh(&self, hash: [u8; 32], record: RefreshRecord) -> Result<(), StoreError> {
        self.refresh.insert(hash, record).await;
        Ok(())
    }

    async fn load_refresh(&self, hash: &[u8; 32]) -> Result<Option<RefreshRecord>, StoreError> {
        Ok(self
            .refresh
            .get(hash)
            .await
            .filter(|r| r.expires_at > unix_now()))
    }

    async fn rotate_refresh(
        &self,
        hash: &[u8; 32],
        now: u64,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        use moka::ops::compute::Op;
        let mut before = None;
        self.refresh
            .entry(*hash)
            .and_compute_with(|current| {
                let op = match current.map(|entry| entry.into_value()) {
                    Some(record) if record.expires_at > unix_now() => {
                        let mut rotated = record.clone();
                        rotated.rotated_at.get_or_insert(now);
                        before = Some(record);
                        Op::Put(rotated)
                    }
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        Ok(before)
    }

    async fn find(
        &self,
        query: &SessionQuery<'_>,
        now: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Session>>, StoreError> {
        // A scan: the memory store serves one instance, and its callers
        // (admin, back-channel logout) are rare next to requests.
        Ok(self
            .sessions
            .iter()
            .map(|(_, session)| session)
            .filter(|s| query.matches(s) && s.check(now).is_ok())
            .take(limit)
            .collect())
    }

    async fn first_use(
        &self,
        kind: SingleUse,
        key: [u8; 32],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self
            .used
            .entry((kind, key))
            .or_insert(Instant::now() + ttl)
            .is_fresh())
    }

    async fn forget_use(&self, kind: SingleUse, key: [u8; 32]) -> Result<(), StoreError> {
        self.used.invalidate(&(kind, key));
        Ok(())
    }

    fn approximate_count(&self) -> Option<u64> {
        Some(self.sessions.entry_count())
    }

    async fn maintain(&self) {
        self.sessions.run_pending_tasks().await;
        self.refresh.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::session;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[tokio::test]
    async fn find_matches_subject_provider_and_provider_sid_of_live_sessions() {
        let store = MemoryStore::new(1 << 20);
        let mut a = session(now(), 3600, 600);
        a.claims.insert("sid".into(), "op-1".into());
        let mut b = session(now(), 3600, 600);
        b.claims.insert("sid".into(), "op-2".into());
        let mut other = session(now(), 3600, 600);
        other.subject = "bob".into();
        other.claims.insert("sid".into(), "op-1".into());
        let mut ended = session(now() - 4000, 3600, 600);
        ended.claims.insert("sid".into(), "op-1".into());
        for s in [&a, &b, &other, &ended] {
            store.save(s).await.unwrap();
        }
        let ids = |found: Vec<Arc<Session>>| {
            let mut ids: Vec<_> = found.iter().map(|s| s.id.public_id()).collect();
            ids.sort();
            ids
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let alice = SessionQuery {
            subject: Some("alice"),
            ..Default::default()
        };
        assert_eq!(
            ids(store.find(&alice, now(), 10).await.unwrap()),
            sorted(vec![a.id.public_id(), b.id.public_id()]),
            "alice's live sessions, not bob's, not the ended one"
        );
        assert_eq!(store.find(&alice, now(), 1).await.unwrap().len(), 1);
        let by_sid = SessionQuery {
            provider: Some("p"),
            provider_sid: Some("op-1"),
            ..Default::default()
        };
        assert_eq!(
            ids(store.find(&by_sid, now(), 10).await.unwrap()),
            sorted(vec![a.id.public_id(), other.id.public_id()])
        );
        let both = SessionQuery {
            subject: Some("alice"),
            provider_sid: Some("op-1"),
            ..Default::default()
        };
        assert_eq!(
            ids(store.find(&both, now(), 10).await.unwrap()),
            vec![a.id.public_id()]
        );
        let elsewhere = SessionQuery {
            provider: Some("other"),
            ..alice
        };
        assert!(store.find(&elsewhere, now(), 10).await.unwrap().is_empty());
        assert!(
            store
                .find(&SessionQuery::default(), now(), 10)
                .await
                .unwrap()
                .is_empty(),
            "an empty query finds nothing"
        );
    }

    #[tokio::test]
    async fn single_use_marks_are_first_come_per_kind_and_lapse() {
        let store = MemoryStore::new(1 << 20);
        let key = [3u8; 32];
        let long = Duration::from_secs(60);
        assert!(store
            .first_use(SingleUse::LoginState, key, long)
            .await
            .unwrap());
        assert!(!store
            .first_use(SingleUse::LoginState, key, long)
            .await
            .unwrap());
        assert!(
            store
                .first_use(SingleUse::LogoutTokenId, key, long)
                .await
                .unwrap(),
            "another kind is another namespace"
        );
        // A forgotten mark can be claimed again (a logout to retry).
        store
            .forget_use(SingleUse::LogoutTokenId, key)
            .await
            .unwrap();
        assert!(store
            .first_use(SingleUse::LogoutTokenId, key, long)
            .await
            .unwrap());
        assert!(!store
            .first_use(SingleUse::LoginState, key, long)
            .await
            .unwrap());
        let brief = [4u8; 32];
        assert!(store
            .first_use(SingleUse::LoginState, brief, Duration::from_millis(50))
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            store
                .first_use(SingleUse::LoginState, brief, long)
                .await
                .unwrap(),
            "a mark lapses after its time"
        );
    }

    #[tokio::test]
    async fn sessions_round_trip_and_end() {
        let store = MemoryStore::new(1 << 20);
        let s = session(now(), 3600, 600);
        store.save(&s).await.unwrap();
        assert_eq!(store.load(&s.id, now()).await.unwrap().as_deref(), Some(&s));
        assert_eq!(
            store.remove(&s.id, EndReason::Logout).await.unwrap(),
            Some(s.clone())
        );
        assert_eq!(store.load(&s.id, now()).await.unwrap(), None);
        assert_eq!(store.remove(&s.id, EndReason::Logout).await.unwrap(), None);
    }

    #[tokio::test]
    async fn ended_sessions_are_not_returned_and_touch_extends_idle() {
        let store = MemoryStore::new(1 << 20);
        let start = now();
        let s = session(start, 3600, 60);
        store.save(&s).await.unwrap();
        let touched = store.touch(&s.id, start + 30).await.unwrap().unwrap();
        assert_eq!(touched.last_seen, start + 30);
        assert!(
            store.load(&s.id, start + 61).await.unwrap().is_some(),
            "activity moved the deadline"
        );
        // Seen from later: idle past its timeout, and gone from then on.
        assert_eq!(store.load(&s.id, start + 91).await.unwrap(), None);
        assert_eq!(store.load(&s.id, start + 31).await.unwrap(), None);
        let mut long = session(start, 3600, 3600);
        store.save(&long).await.unwrap();
        long.last_seen = start + 3599;
        store.save(&long).await.unwrap();
        assert_eq!(
            store.load(&long.id, start + 3600).await.unwrap(),
            None,
            "never past max_lifetime"
        );
        let unknown = SessionId::random().unwrap();
        assert_eq!(store.touch(&unknown, start).await.unwrap(), None);
    }

    type RecordedEnds = Arc<parking_lot::Mutex<Vec<(String, EndReason)>>>;

    fn recording_store() -> (MemoryStore, RecordedEnds) {
        let ends = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = ends.clone();
        let observer: EndObserver = Arc::new(move |s: &Session, reason| {
            sink.lock().push((s.subject.clone(), reason));
        });
        (
            MemoryStore::with_end_observer(1 << 20, Some(observer)),
            ends,
        )
    }

    #[tokio::test]
    async fn ends_found_by_a_lookup_are_reported_once_with_their_reason() {
        let (store, ends) = recording_store();
        let start = now();
        let mut idle = session(start, 3600, 60);
        idle.subject = "idle".into();
        let mut expired = session(start, 3600, 3600);
        expired.subject = "expired".into();
        store.save(&idle).await.unwrap();
        store.save(&expired).await.unwrap();
        assert_eq!(store.load(&idle.id, start + 61).await.unwrap(), None);
        assert_eq!(store.load(&idle.id, start + 62).await.unwrap(), None);
        assert_eq!(store.load(&expired.id, start + 3600).await.unwrap(), None);
        assert_eq!(store.touch(&expired.id, start + 3601).await.unwrap(), None);
        assert_eq!(
            *ends.lock(),
            vec![
                ("idle".to_string(), EndReason::Idle),
                ("expired".to_string(), EndReason::Expired)
            ]
        );
    }

    #[tokio::test]
    async fn explicit_removals_and_live_sessions_are_not_reported() {
        let (store, ends) = recording_store();
        let s = session(now(), 3600, 600);
        store.save(&s).await.unwrap();
        assert!(store.load(&s.id, now()).await.unwrap().is_some());
        store.remove(&s.id, EndReason::Logout).await.unwrap();
        store.maintain().await;
        assert!(ends.lock().is_empty());
    }

    #[tokio::test]
    async fn sessions_the_cache_lets_expire_are_reported_by_maintenance() {
        let (store, ends) = recording_store();
        // Ends one second from now: nobody looks it up again.
        let mut s = session(now() - 59, 3600, 60);
        s.subject = "quiet".into();
        store.save(&s).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ends.lock().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.maintain().await;
        }
        assert_eq!(*ends.lock(), vec![("quiet".to_string(), EndReason::Idle)]);
    }

    #[tokio::test]
    async fn updates_apply_to_the_current_record_only_and_never_revive_it() {
        let (store, ends) = recording_store();
        let start = now();
        let s = session(start, 3600, 600);
        store.save(&s).await.unwrap();
        // Two writers: activity, then a re-check's fields; neither undoes the other.
        store.touch(&s.id, start + 100).await.unwrap();
        let renewed = store
            .update(
                &s.id,
                start + 101,
                Box::new(|s: &mut Session| s.checked_at += 7),
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (renewed.last_seen, renewed.checked_at),
            (start + 100, start + 7)
        );
        // Activity recorded late never moves last_seen back.
        let touched = store.touch(&s.id, start + 50).await.unwrap().unwrap();
        assert_eq!(touched.last_seen, start + 100);
        // Removed (logout) while someone was about to write: stays removed.
        store.remove(&s.id, EndReason::Logout).await.unwrap();
        assert_eq!(store.touch(&s.id, start + 102).await.unwrap(), None);
        let late = store
            .update(
                &s.id,
                start + 102,
                Box::new(|s: &mut Session| s.checked_at = 0),
            )
            .await
            .unwrap();
        assert_eq!(late, None);
        assert_eq!(store.load(&s.id, start + 102).await.unwrap(), None);
        assert!(ends.lock().is_empty(), "a logout is not an end by time");
        // An update that finds the session ended reports and removes it.
        let idle = session(start, 3600, 60);
        store.save(&idle).await.unwrap();
        assert_eq!(store.touch(&idle.id, start + 61).await.unwrap(), None);
        assert_eq!(ends.lock().len(), 1);
        assert_eq!(ends.lock()[0].1, EndReason::Idle);
    }

    /// A session of about `bytes` in the store's budget, mostly ID token.
    fn session_weighing(bytes: usize) -> Session {
        let mut s = session(now(), 3600, 600);
        s.id_token = Some(String::new());
        let padding = bytes - session_weight(&s);
        s.id_token = Some("t".repeat(padding));
        assert_eq!(session_weight(&s), bytes);
        s
    }

    #[tokio::test]
    async fn the_store_is_bounded_and_reports_what_it_drops() {
        let ends = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = ends.clone();
        let observer: EndObserver = Arc::new(move |_: &Session, reason| sink.lock().push(reason));
        // Room for ten sessions of 4 KiB.
        let store = MemoryStore::with_end_observer(10 * 4096, Some(observer));
        for _ in 0..100 {
            store.save(&session_weighing(4096)).await.unwrap();
            store.maintain().await;
        }
        store.maintain().await;
        assert!(store.len() <= 10, "{} sessions kept", store.len());
        let ends = ends.lock();
        assert!(
            ends.len() as u64 + store.len() >= 100 && ends.iter().all(|r| *r == EndReason::Evicted),
            "every session is kept or reported evicted: {} kept, {:?}",
            store.len(),
            *ends
        );
    }

    #[tokio::test]
    async fn the_budget_is_in_bytes_so_larger_sessions_fit_fewer() {
        let budget = 256 * 1024;
        for size in [1024, 8 * 1024, 32 * 1024] {
            let store = MemoryStore::new(budget);
            for _ in 0..200 {
                store.save(&session_weighing(size)).await.unwrap();
                store.maintain().await;
            }
            store.maintain().await;
            let fits = budget / size as u64;
            assert!(
                store.len() <= fits && store.len() * 2 >= fits,
                "a budget of {budget} bytes holds about {fits} sessions of {size} bytes, not {}",
                store.len()
            );
            assert!(store.sessions.weighted_size() <= budget);
        }
    }

    #[tokio::test]
    async fn a_session_over_the_size_limit_is_refused_not_stored() {
        let store = MemoryStore::new(64 << 20);
        let at_limit = session_weighing(MAX_SESSION_BYTES + ENTRY_OVERHEAD);
        store.save(&at_limit).await.unwrap();
        assert!(store.load(&at_limit.id, now()).await.unwrap().is_some());

        let mut huge = session(now(), 3600, 600);
        huge.claims.insert(
            "groups".into(),
            serde_json::json!(vec!["g".repeat(100); 1000]),
        );
        let refused = store.save(&huge).await.unwrap_err();
        assert!(
            matches!(refused, StoreError::TooLarge { bytes, limit: MAX_SESSION_BYTES } if bytes > MAX_SESSION_BYTES),
            "{refused:?}"
        );
        assert_eq!(store.load(&huge.id, now()).await.unwrap(), None);
        assert_eq!(
            store
                .load_public(&huge.id.public_id(), now())
                .await
                .unwrap(),
            None
        );

        // A change that would outgrow the limit is refused and not applied.
        let small = session(now(), 3600, 600);
        store.save(&small).await.unwrap();
        let grown = store
            .update(
                &small.id,
                now(),
                Box::new(|s: &mut Session| s.refresh_token = Some("r".repeat(MAX_SESSION_BYTES))),
            )
            .await;
        assert!(
            matches!(grown, Err(StoreError::TooLarge { .. })),
            "{grown:?}"
        );
        assert_eq!(
            store.load(&small.id, now()).await.unwrap().as_deref(),
            Some(&small)
        );
    }
}
