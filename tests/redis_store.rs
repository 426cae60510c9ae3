//! The `redis` session store against a real Redis (tests/common/redis.rs
//! starts one per test): every `SessionStore` method's contract as the
//! memory store keeps it, the key layout (prefixed; refresh tokens only as
//! hashes), atomicity under concurrent callers, events between two store
//! instances, and what happens while Redis is down and after it is back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::{wait_for, RedisServer};
use portcullis::config::{Redis, RedisTarget, Secret};
use portcullis::metrics::Metrics;
use portcullis::session::redis::RedisStore;
use portcullis::session::refresh::{self, RefreshRecord};
use portcullis::session::store::{SessionQuery, SessionStore, SingleUse, StoreError, StoreEvent};
use portcullis::session::{EndReason, Session, SessionId};

const PREFIX: &str = "test:";

fn now() -> u64 {
    portcullis::session::now()
}

fn settings(server: &RedisServer, local_cache: Duration) -> Redis {
    Redis {
        target: RedisTarget::Url(Secret::new(server.url())),
        username: None,
        password: None,
        tls: false,
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
        key_prefix: PREFIX.into(),
        local_cache,
    }
}

fn store(server: &RedisServer) -> RedisStore {
    RedisStore::new(
        &settings(server, Duration::from_secs(5)),
        Arc::new(Metrics::new()),
        None,
    )
    .expect("a store")
}

/// A store whose local cache is off: every call reaches Redis.
fn uncached(server: &RedisServer) -> RedisStore {
    RedisStore::new(
        &settings(server, Duration::ZERO),
        Arc::new(Metrics::new()),
        None,
    )
    .expect("a store")
}

fn session(created: u64, max: u64, idle: u64) -> Session {
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
        refresh_token: Some("provider-refresh".into()),
        id_token: None,
        checked_at: created,
        provider_token_lifetime_secs: None,
    }
}

fn ttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query(&mut server.client())
        .unwrap()
}

/// Waits until the store's probe and subscription report it reachable.
async fn until_reachable(store: &RedisStore) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !store.reachable() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never became reachable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sessions_round_trip_under_prefixed_keys_that_expire_with_them() {
    let server = RedisServer::start();
    let store = uncached(&server);
    let s = session(now(), 3600, 600);
    store.save(&s).await.unwrap();
    assert_eq!(store.load(&s.id, now()).await.unwrap().as_deref(), Some(&s));
    assert_eq!(
        store
            .load_public(&s.id.public_id(), now())
            .await
            .unwrap()
            .as_deref(),
        Some(&s)
    );
    let keys = server.keys();
    assert!(keys.iter().all(|k| k.starts_with(PREFIX)), "{keys:?}");
    let session_key = store.keys().session(&s.id);
    assert_eq!(session_key, format!("{PREFIX}s:{}", s.id.encoded()));
    assert!(keys.contains(&session_key), "{keys:?}");
    // Expires when the session does: 600 s idle, not the 3600 s maximum.
    let left = ttl(&server, &session_key);
    assert!((595..=600).contains(&left), "TTL {left}");
    assert!(keys.contains(&store.keys().public(&s.id.public_id())));

    assert_eq!(
        store.remove(&s.id, EndReason::Logout).await.unwrap(),
        Some(s.clone())
    );
    assert_eq!(store.load(&s.id, now()).await.unwrap(), None);
    assert_eq!(
        store.load_public(&s.id.public_id(), now()).await.unwrap(),
        None
    );
    assert_eq!(store.remove(&s.id, EndReason::Logout).await.unwrap(), None);
    assert!(!server.keys().contains(&session_key));
}

#[tokio::test]
async fn touch_moves_activity_forward_only_and_the_expiry_with_it() {
    let server = RedisServer::start();
    let store = uncached(&server);
    let start = now();
    let s = session(start, 3600, 60);
    store.save(&s).await.unwrap();
    let touched = store.touch(&s.id, start + 30).await.unwrap().unwrap();
    assert_eq!(touched.last_seen, start + 30);
    let left = ttl(&server, &store.keys().session(&s.id));
    assert!(
        (85..=90).contains(&left),
        "the expiry moved with it: {left}"
    );
    let late = store.touch(&s.id, start + 10).await.unwrap().unwrap();
    assert_eq!(late.last_seen, start + 30, "never back");
    assert!(store.load(&s.id, start + 61).await.unwrap().is_some());
    // Seen from past its idle deadline: ended, and deleted from then on.
    assert_eq!(store.load(&s.id, start + 91).await.unwrap(), None);
    assert_eq!(store.load(&s.id, start + 31).await.unwrap(), None);
    let unknown = SessionId::random().unwrap();
    assert_eq!(store.touch(&unknown, start).await.unwrap(), None);
}

#[tokio::test]
async fn concurrent_updates_all_apply_and_a_removed_session_is_never_revived() {
    let server = RedisServer::start();
    let store = Arc::new(uncached(&server));
    let other = Arc::new(uncached(&server));
    let start = now();
    let s = session(start, 3600, 600);
    store.save(&s).await.unwrap();
    // Twenty writers on two instances each add one: none is lost.
    let mut writers = Vec::new();
    for i in 0..20 {
        let target = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let id = s.id.clone();
        writers.push(tokio::spawn(async move {
            target
                .update(&id, now(), Box::new(|s: &mut Session| s.checked_at += 1))
                .await
        }));
    }
    for w in writers {
        assert!(w.await.unwrap().unwrap().is_some());
    }
    let after = store.load(&s.id, now()).await.unwrap().unwrap();
    assert_eq!(after.checked_at, start + 20);
    // A touch and an update do not undo each other.
    store.touch(&s.id, start + 100).await.unwrap();
    let updated = store
        .update(
            &s.id,
            start + 101,
            Box::new(|s: &mut Session| s.subject = "renamed".into()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (updated.last_seen, updated.subject.as_str()),
        (start + 100, "renamed")
    );
    // Removed (logout) while someone was about to write: stays removed.
    store.remove(&s.id, EndReason::Logout).await.unwrap();
    let late = other
        .update(
            &s.id,
            start + 102,
            Box::new(|s: &mut Session| s.checked_at = 0),
        )
        .await
        .unwrap();
    assert_eq!(late, None);
    assert_eq!(other.touch(&s.id, start + 102).await.unwrap(), None);
    assert!(!server.keys().contains(&store.keys().session(&s.id)));

    // Removed between the update's read and its write: the change runs,
    // but the write finds the record gone and leaves it gone.
    let raced = session(start, 3600, 600);
    store.save(&raced).await.unwrap();
    let key = store.keys().session(&raced.id);
    let url = server.url();
    let remove_meanwhile = Box::new(move |s: &mut Session| {
        let mut con = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .unwrap();
        let _: i64 = redis::cmd("DEL").arg(&key).query(&mut con).unwrap();
        s.checked_at = 0;
    });
    assert_eq!(
        store
            .update(&raced.id, start + 1, remove_meanwhile)
            .await
            .unwrap(),
        None
    );
    assert!(
        !server.keys().contains(&store.keys().session(&raced.id)),
        "not revived"
    );
}

#[tokio::test]
async fn a_change_that_outgrows_the_limit_is_refused_and_not_applied() {
    let server = RedisServer::start();
    let store = uncached(&server);
    let s = session(now(), 3600, 600);
    store.save(&s).await.unwrap();
    let grown = store
        .update(
            &s.id,
            now(),
            Box::new(|s: &mut Session| s.refresh_token = Some("r".repeat(70 * 1024))),
        )
        .await;
    assert!(
        matches!(grown, Err(StoreError::TooLarge { .. })),
        "{grown:?}"
    );
    assert_eq!(store.load(&s.id, now()).await.unwrap().as_deref(), Some(&s));
}

#[tokio::test]
async fn refresh_records_are_stored_by_hash_and_rotate_exactly_once() {
    let server = RedisServer::start();
    let store = Arc::new(uncached(&server));
    let token = refresh::generate().unwrap();
    let hash = refresh::hash(&token);
    let record = RefreshRecord {
        session: SessionId::random().unwrap(),
        deployment: "d".into(),
        rotates: true,
        rotated_at: None,
        expires_at: now() + 300,
    };
    store.save_refresh(hash, record.clone()).await.unwrap();
    assert_eq!(
        store.load_refresh(&hash).await.unwrap(),
        Some(record.clone())
    );
    let keys = server.keys();
    let key = store.keys().refresh(&hash);
    assert!(keys.contains(&key), "{keys:?}");
    assert!(
        keys.iter().all(|k| !k.contains(&token[4..])),
        "no key holds the token itself: {keys:?}"
    );
    let dump: String = server
        .keys()
        .iter()
        .map(|k| {
            redis::cmd("DUMP")
                .arg(k)
                .query::<Vec<u8>>(&mut server.client())
                .map(|v| String::from_utf8_lossy(&v).to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(!dump.contains(&token[4..]), "nor any value");
    let left = ttl(&server, &key);
    assert!((295..=300).contains(&left), "TTL {left}");

    // Sixteen callers rotate at once: exactly one sees it unrotated.
    let mut callers = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        callers.push(tokio::spawn(async move {
            store.rotate_refresh(&hash, 1234).await
        }));
    }
    let mut unrotated = 0;
    for c in callers {
        let before = c.await.unwrap().unwrap().expect("a known token");
        if before.rotated_at.is_none() {
            unrotated += 1;
        } else {
            assert_eq!(before.rotated_at, Some(1234));
        }
    }
    assert_eq!(unrotated, 1);
    assert_eq!(
        store.load_refresh(&hash).await.unwrap().unwrap().rotated_at,
        Some(1234)
    );
    assert_eq!(store.rotate_refresh(&[9; 32], 1).await.unwrap(), None);
    assert_eq!(store.load_refresh(&[9; 32]).await.unwrap(), None);
    // An expired record is not returned.
    let old = RefreshRecord {
        expires_at: now() - 1,
        ..record
    };
    store.save_refresh([8; 32], old).await.unwrap();
    assert_eq!(store.load_refresh(&[8; 32]).await.unwrap(), None);
}

#[tokio::test]
async fn single_use_marks_are_first_come_per_kind_and_lapse() {
    let server = RedisServer::start();
    let store = uncached(&server);
    let other = uncached(&server);
    let key = [3u8; 32];
    let long = Duration::from_secs(60);
    assert!(store
        .first_use(SingleUse::LoginState, key, long)
        .await
        .unwrap());
    assert!(
        !other
            .first_use(SingleUse::LoginState, key, long)
            .await
            .unwrap(),
        "another instance sees the mark"
    );
    assert!(store
        .first_use(SingleUse::LogoutTokenId, key, long)
        .await
        .unwrap());
    assert!(server
        .keys()
        .contains(&format!("{PREFIX}once:login_state:{}", "03".repeat(32))));
    let brief = [4u8; 32];
    assert!(store
        .first_use(SingleUse::LoginState, brief, Duration::from_millis(50))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(store
        .first_use(SingleUse::LoginState, brief, long)
        .await
        .unwrap());
}

#[tokio::test]
async fn find_uses_the_subject_and_sid_indexes_and_prunes_ended_sessions() {
    let server = RedisServer::start();
    let store = uncached(&server);
    let mut a = session(now(), 3600, 600);
    a.claims.insert("sid".into(), "op-1".into());
    let mut b = session(now(), 3600, 600);
    b.claims.insert("sid".into(), "op-2".into());
    let mut bob = session(now(), 3600, 600);
    bob.subject = "bob".into();
    bob.claims.insert("sid".into(), "op-1".into());
    let mut elsewhere = session(now(), 3600, 600);
    elsewhere.provider = "other".into();
    for s in [&a, &b, &bob, &elsewhere] {
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
        sorted(vec![
            a.id.public_id(),
            b.id.public_id(),
            elsewhere.id.public_id()
        ])
    );
    let alice_at_p = SessionQuery {
        provider: Some("p"),
        ..alice
    };
    assert_eq!(
        ids(store.find(&alice_at_p, now(), 10).await.unwrap()),
        sorted(vec![a.id.public_id(), b.id.public_id()])
    );
    assert_eq!(store.find(&alice_at_p, now(), 1).await.unwrap().len(), 1);
    let by_sid = SessionQuery {
        provider_sid: Some("op-1"),
        ..Default::default()
    };
    assert_eq!(
        ids(store.find(&by_sid, now(), 10).await.unwrap()),
        sorted(vec![a.id.public_id(), bob.id.public_id()])
    );
    assert!(store
        .find(&SessionQuery::default(), now(), 10)
        .await
        .unwrap()
        .is_empty());
    // A removed session leaves its index on the next read.
    store.remove(&a.id, EndReason::Logout).await.unwrap();
    assert_eq!(
        ids(store.find(&by_sid, now(), 10).await.unwrap()),
        vec![bob.id.public_id()]
    );
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(store.keys().provider_sid("op-1"))
        .query(&mut server.client())
        .unwrap();
    assert_eq!(members, vec![bob.id.encoded()], "pruned");
    // Index keys are digests, not the provider's text.
    assert!(server
        .keys()
        .iter()
        .all(|k| !k.contains("alice") && !k.contains("op-1")));
}

/// An unsigned JWT-shaped token expiring at `exp` (the store reads only `exp`).
fn id_token(exp: u64) -> String {
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.sig",
        b64(serde_json::json!({"alg": "none"})),
        b64(serde_json::json!({"sub": "alice", "exp": exp}))
    )
}

#[tokio::test]
async fn an_ended_sessions_id_token_is_refused_until_it_expires() {
    let server = RedisServer::start();
    let store = uncached(&server);
    let mut s = session(now(), 3600, 600);
    s.id_token = Some(id_token(now() + 120));
    let digest = portcullis::token::TokenCache::key("p", s.id_token.as_ref().unwrap());
    store.save(&s).await.unwrap();
    assert!(!store.token_ended(&digest).await.unwrap(), "live session");
    assert!(!store.token_ended(&[1; 32]).await.unwrap(), "unknown token");
    store.remove(&s.id, EndReason::Logout).await.unwrap();
    assert!(store.token_ended(&digest).await.unwrap());
    let left = ttl(&server, &store.keys().id_token(&digest));
    assert!((115..=120).contains(&left), "until the token's exp: {left}");
    // A session that ends by time leaves its token refused too.
    let mut idle = session(now() - 59, 3600, 60);
    idle.id_token = Some(id_token(now() + 120));
    let digest = portcullis::token::TokenCache::key("p", idle.id_token.as_ref().unwrap());
    store.save(&idle).await.unwrap();
    assert!(wait_for(Duration::from_secs(5), || {
        !server.keys().contains(&store.keys().session(&idle.id))
    }));
    assert!(store.token_ended(&digest).await.unwrap());
}

#[tokio::test]
async fn ends_reach_every_other_instance_and_drop_their_cached_copies() {
    let server = RedisServer::start();
    let a = store(&server);
    let b = store(&server);
    until_reachable(&a).await;
    until_reachable(&b).await;
    let mut a_events = a.events().unwrap();
    let mut b_events = b.events().unwrap();
    let s = session(now(), 3600, 600);
    a.save(&s).await.unwrap();
    // B reads it once: now in B's local cache.
    assert!(b.load(&s.id, now()).await.unwrap().is_some());
    a.remove(&s.id, EndReason::Logout).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(2), b_events.recv())
        .await
        .expect("B hears of the end")
        .unwrap();
    assert_eq!(
        event,
        StoreEvent::Ended {
            public_id: s.id.public_id(),
            reason: EndReason::Logout
        }
    );
    assert_eq!(
        b.load(&s.id, now()).await.unwrap(),
        None,
        "B's cached copy is gone"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a_events.recv())
            .await
            .is_err(),
        "A does not hear its own end back"
    );
}

#[tokio::test]
async fn a_corrupt_record_is_absent_not_a_panic() {
    let server = RedisServer::start();
    let store = uncached(&server);
    let s = session(now(), 3600, 600);
    store.save(&s).await.unwrap();
    let key = store.keys().session(&s.id);
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("r")
        .arg("{not json")
        .query(&mut server.client())
        .unwrap();
    assert_eq!(store.load(&s.id, now()).await.unwrap(), None);
    assert_eq!(store.touch(&s.id, now()).await.unwrap(), None);
    // Another session's record under this id's key is corrupt too.
    let t = session(now(), 3600, 600);
    store.save(&t).await.unwrap();
    let moved: Vec<u8> = redis::cmd("HGET")
        .arg(store.keys().session(&t.id))
        .arg("r")
        .query(&mut server.client())
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("r")
        .arg(moved)
        .query(&mut server.client())
        .unwrap();
    assert_eq!(store.load(&s.id, now()).await.unwrap(), None);
    let _: () = redis::cmd("HSET")
        .arg(store.keys().refresh(&[5; 32]))
        .arg("rec")
        .arg("[]")
        .query(&mut server.client())
        .unwrap();
    assert_eq!(store.load_refresh(&[5; 32]).await.unwrap(), None);
}

#[tokio::test]
async fn while_redis_is_down_calls_fail_fast_cached_sessions_hold_and_it_recovers() {
    let mut server = RedisServer::start();
    let store = RedisStore::new(
        &settings(&server, Duration::from_secs(2)),
        Arc::new(Metrics::new()),
        None,
    )
    .unwrap();
    until_reachable(&store).await;
    let mut events = store.events().unwrap();
    let cached = session(now(), 3600, 600);
    let uncached_session = session(now(), 3600, 600);
    store.save(&cached).await.unwrap();
    server.stop();
    let started = std::time::Instant::now();
    let refused = store.load(&uncached_session.id, now()).await;
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by command_timeout"
    );
    if let Err(StoreError::Unavailable(message)) = &refused {
        assert!(!message.contains(&uncached_session.id.encoded()));
    }
    assert!(
        store.load(&cached.id, now()).await.unwrap().is_some(),
        "served from the local cache"
    );
    assert!(store.save(&uncached_session).await.is_err());
    assert!(store
        .first_use(SingleUse::LoginState, [1; 32], Duration::from_secs(5))
        .await
        .is_err());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.reachable() {
        assert!(tokio::time::Instant::now() < deadline, "still reachable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past local_cache, the cached session needs Redis too.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(store.load(&cached.id, now()).await.is_err());

    server.restart();
    until_reachable(&store).await;
    let resync = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(StoreEvent::Resync) = events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(resync.is_ok(), "a resync after the channel came back");
    // The restarted server kept nothing: the session is gone, not served stale.
    assert_eq!(store.load(&cached.id, now()).await.unwrap(), None);
    store.save(&uncached_session).await.unwrap();
    assert!(store
        .load(&uncached_session.id, now())
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn tls_settings_fail_as_unavailable_not_a_panic() {
    // A TLS handshake against a plain server fails; what matters is that
    // it fails as an answer (rustls found its crypto provider: ring is in
    // the tree too, through Pingora, so it must be named explicitly).
    let server = RedisServer::start();
    let mut tls = settings(&server, Duration::ZERO);
    tls.tls = true;
    let store = RedisStore::new(&tls, Arc::new(Metrics::new()), None).unwrap();
    let refused = store.load(&SessionId::random().unwrap(), now()).await;
    match refused {
        Err(StoreError::Unavailable(message)) => {
            assert!(!message.contains("task failed"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn commands_cut_off_while_the_subscription_stays_up_still_lead_to_a_resync() {
    // CLIENT PAUSE holds every command (the probe's PING times out) but
    // leaves the subscribed connection alone, as a partition would that
    // sends no reset on an idle connection.
    let server = RedisServer::start();
    let store = store(&server);
    until_reachable(&store).await;
    let mut events = store.events().unwrap();
    common::redis::command(server.port, "CLIENT PAUSE 1500 ALL").expect("paused");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.reachable() {
        assert!(tokio::time::Instant::now() < deadline, "never unreachable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resync = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(StoreEvent::Resync) = events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(
        resync.is_ok(),
        "ends published meanwhile may be lost: resync"
    );
    until_reachable(&store).await;
}
