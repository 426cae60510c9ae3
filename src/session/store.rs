//! Where sessions live. A trait, so that the embedded `memory` store (one
//! instance) and a shared `redis` store (several instances) are
//! interchangeable; every method is async and fallible because a shared
//! store is a network service.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Session, SessionId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered nonsense; callers fail
    /// closed (no session) and readiness reports it.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The session, if it exists and has not ended by `now`.
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Session>, StoreError>;
    /// Creates or replaces a session.
    async fn save(&self, session: &Session) -> Result<(), StoreError>;
    /// Ends a session; returns it if it existed.
    async fn remove(&self, id: &SessionId) -> Result<Option<Session>, StoreError>;
    /// Records activity at `now` (moving the idle deadline); the updated
    /// session, or `None` if it is gone or has ended.
    async fn touch(&self, id: &SessionId, now: u64) -> Result<Option<Session>, StoreError>;
    /// About how many sessions are live (for the gauge), when the store can tell cheaply.
    fn approximate_count(&self) -> Option<u64>;
}

/// The embedded store: a bounded in-memory map whose entries vanish when
/// their session ends.
pub struct MemoryStore {
    sessions: moka::future::Cache<SessionId, Arc<Session>>,
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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Duration::from_secs(session.ends_at().saturating_sub(now))
}

impl MemoryStore {
    pub fn new(capacity: u64) -> Self {
        MemoryStore {
            sessions: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilSessionEnds)
                .build(),
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
    async fn load(&self, id: &SessionId, now: u64) -> Result<Option<Session>, StoreError> {
        Ok(self
            .sessions
            .get(id)
            .await
            .filter(|s| s.check(now).is_ok())
            .map(|s| (*s).clone()))
    }

    async fn save(&self, session: &Session) -> Result<(), StoreError> {
        self.sessions
            .insert(session.id.clone(), Arc::new(session.clone()))
            .await;
        Ok(())
    }

    async fn remove(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.sessions.remove(id).await.map(|s| (*s).clone()))
    }

    async fn touch(&self, id: &SessionId, now: u64) -> Result<Option<Session>, StoreError> {
        let Some(current) = self.load(id, now).await? else {
            return Ok(None);
        };
        let mut updated = current;
        updated.last_seen = now;
        self.save(&updated).await?;
        Ok(Some(updated))
    }

    fn approximate_count(&self) -> Option<u64> {
        Some(self.sessions.entry_count())
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
    async fn sessions_round_trip_and_end() {
        let store = MemoryStore::new(100);
        let s = session(now(), 3600, 600);
        store.save(&s).await.unwrap();
        assert_eq!(store.load(&s.id, now()).await.unwrap(), Some(s.clone()));
        assert_eq!(store.remove(&s.id).await.unwrap(), Some(s.clone()));
        assert_eq!(store.load(&s.id, now()).await.unwrap(), None);
        assert_eq!(store.remove(&s.id).await.unwrap(), None);
    }

    #[tokio::test]
    async fn ended_sessions_are_not_returned_and_touch_extends_idle() {
        let store = MemoryStore::new(100);
        let start = now();
        let s = session(start, 3600, 60);
        store.save(&s).await.unwrap();
        // Seen from the future: idle past its timeout.
        assert_eq!(store.load(&s.id, start + 61).await.unwrap(), None);
        let touched = store.touch(&s.id, start + 30).await.unwrap().unwrap();
        assert_eq!(touched.last_seen, start + 30);
        assert!(
            store.load(&s.id, start + 61).await.unwrap().is_some(),
            "activity moved the deadline"
        );
        assert_eq!(
            store.load(&s.id, start + 3600).await.unwrap(),
            None,
            "never past max_lifetime"
        );
        let unknown = SessionId::random().unwrap();
        assert_eq!(store.touch(&unknown, start).await.unwrap(), None);
    }

    #[tokio::test]
    async fn the_store_is_bounded() {
        let store = MemoryStore::new(10);
        for _ in 0..100 {
            store.save(&session(now(), 3600, 600)).await.unwrap();
        }
        store.sessions.run_pending_tasks().await;
        assert!(store.len() <= 10, "{} sessions kept", store.len());
    }
}
