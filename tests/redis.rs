//! Several portcullis instances sharing sessions through Redis, end to end
//! against the real binary, the development provider and a real Redis
//! (tests/common/redis.rs): a login on one instance works on the other, a
//! logout on one closes the chat held by the other, messenger tokens
//! refresh anywhere, an outage fails closed and heals by itself, and a
//! Sentinel failover keeps the sessions saved before it.

mod common;

use std::time::{Duration, Instant};

use common::browser::*;
use common::redis::{wait_for, RedisServer, Sentinel};
use common::*;
use portcullis::devidp::{DevIdp, DevIdpOptions};

const CHAT: &str = "/v1/chat?deploymentId=support";
const SITE: &str = "http://127.0.0.1:7001";
const CALLBACK: &str = "http://127.0.0.1:7001/chat/callback";

/// Keys every instance shares: the cookie key (so a cookie sealed by one
/// opens on another) and the signing key (so a messenger token one issued
/// verifies on another).
struct SharedKeys {
    dir: tempfile::TempDir,
}

impl SharedKeys {
    fn new() -> Self {
        use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cookie"),
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        )
        .unwrap();
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let der = pair.to_pkcs8v1().unwrap();
        std::fs::write(
            dir.path().join("signing.pem"),
            pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec())),
        )
        .unwrap();
        SharedKeys { dir }
    }

    fn yaml(&self) -> String {
        format!(
            "{{cookie_key: {{file: \"{}\"}}, signing_key: {{file: \"{}\"}}}}",
            self.dir.path().join("cookie").display(),
            self.dir.path().join("signing.pem").display()
        )
    }
}

/// A config for one instance whose sessions live in Redis as `redis` says.
fn config(idp: &DevIdp, backend: std::net::SocketAddr, redis: &str, keys: &SharedKeys) -> String {
    format!(
        r#"{preamble}    scopes: [openid, email, profile, offline_access]
messengers:
  support:
    authentication: {{enabled: true, provider: dev}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allow_all_origins: true, redirect_uris: ["{CALLBACK}"]}}
routes: [{{path_prefix: /v1}}]
rate_limits: {{per_client: {{per_minute: 100000, burst: 10000}}}}
sessions:
  store: redis
  redis: {redis}
  keys: {keys}
"#,
        preamble = config_with_dev_provider(idp),
        keys = keys.yaml(),
    )
}

struct Cluster {
    idp: DevIdp,
    a: Proxy,
    b: Proxy,
    _keys: SharedKeys,
}

/// Two instances on one Redis (`redis` is the `sessions.redis` block),
/// each its own `public_url` (browser logins return to the instance that
/// started them).
async fn two_instances(redis: &str) -> Cluster {
    two_instances_at(redis, None).await
}

/// As `two_instances`; with `public_url`, both instances share it, as
/// instances behind one load balancer do (the issuer of messenger tokens).
async fn two_instances_at(redis: &str, public_url: Option<&str>) -> Cluster {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let keys = SharedKeys::new();
    let mut text = config(&idp, backend, redis, &keys);
    if let Some(url) = public_url {
        let own = "public_url: \"http://{PROXY}\"";
        assert!(text.contains(own), "test bug: no public_url line");
        text = text.replacen(own, &format!("public_url: \"{url}\""), 1);
    }
    let env = [("DEV_SECRET", "demo-secret")];
    let a = Proxy::start_with_env(&text, &env).await;
    let b = Proxy::start_with_env(&text, &env).await;
    Cluster {
        idp,
        a,
        b,
        _keys: keys,
    }
}

fn origin(proxy: &Proxy) -> String {
    format!("http://{}", proxy.addr)
}

async fn log_in(proxy: &Proxy) -> String {
    login(proxy, "support", "alice", "/")
        .await
        .unwrap_or_else(|(status, page)| panic!("login failed with {status}: {page}"))
        .0
}

async fn me_status(proxy: &Proxy, cookie: &str) -> u16 {
    no_redirects()
        .get(proxy.url("/.auth/me"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn ready_status(proxy: &Proxy) -> u16 {
    reqwest::get(proxy.admin_url("/readyz"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `status` until it is `want` or `within` passes; the last status.
async fn until_status<F, Fut>(within: Duration, want: u16, status: F) -> u16
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u16>,
{
    let deadline = Instant::now() + within;
    loop {
        let got = status().await;
        if got == want || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn open_chat(proxy: &Proxy, cookie: &str) -> Ws {
    let (mut ws, _) = ws_connect(
        &proxy.ws_url(CHAT),
        &[("Origin", &origin(proxy)), ("Cookie", cookie)],
    )
    .await
    .expect("the session opens the chat");
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    ws
}

async fn logout(proxy: &Proxy, cookie: &str) -> u16 {
    no_redirects()
        .post(proxy.url("/.auth/logout"))
        .header("origin", origin(proxy))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn post(proxy: &Proxy, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(proxy.url(path))
        .header("origin", SITE)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

async fn exchange(idp: &DevIdp, proxy: &Proxy) -> (u16, serde_json::Value) {
    let code = site_login(idp, CALLBACK, "alice").await;
    let body = serde_json::json!({
        "deploymentId": "support",
        "oauth": {
            "code": code.code,
            "redirectUri": code.redirect_uri,
            "codeVerifier": code.verifier,
            "nonce": code.nonce,
            "iss": code.iss,
        }
    });
    post(proxy, "/.auth/token", &body).await
}

async fn refresh(proxy: &Proxy, token: &str) -> (u16, serde_json::Value) {
    post(
        proxy,
        "/.auth/token/refresh",
        &serde_json::json!({"refreshToken": token, "deploymentId": "support"}),
    )
    .await
}

async fn chat_with_token(proxy: &Proxy, jwt: &str) -> Handshake {
    let protocols = format!("authorization.bearer.{jwt}, chat.v1");
    ws_connect(
        &proxy.ws_url(CHAT),
        &[("Origin", SITE), ("Sec-WebSocket-Protocol", &protocols)],
    )
    .await
}

#[tokio::test]
async fn a_login_on_one_instance_works_on_the_other_and_its_logout_closes_chats_everywhere() {
    let redis = RedisServer::start();
    let c = two_instances(&format!("{{url: \"{}\"}}", redis.url())).await;
    let cookie = log_in(&c.a).await;
    assert_eq!(me_status(&c.b, &cookie).await, 200, "B knows A's session");
    let mut on_b = open_chat(&c.b, &cookie).await;
    assert_eq!(echo(&mut on_b, "hello").await["text"], "hello");

    assert_eq!(logout(&c.a, &cookie).await, 302);
    let started = Instant::now();
    let closed = closed_with(&mut on_b, Duration::from_secs(2)).await;
    assert_eq!(
        closed.map(|(code, _)| code),
        Some(4002),
        "B's chat closes within 2 s of the logout on A"
    );
    eprintln!("closed on B {:?} after the logout on A", started.elapsed());
    assert_eq!(me_status(&c.b, &cookie).await, 401);
    assert_eq!(me_status(&c.a, &cookie).await, 401);
    let again = ws_connect(
        &c.b.ws_url(CHAT),
        &[("Origin", &origin(&c.b)), ("Cookie", &cookie)],
    )
    .await;
    assert_eq!(refused_status(&again), 401);
    let received =
        c.b.metric(
            "portcullis_session_store_events_total",
            &[("store", "redis"), ("direction", "received")],
        )
        .await;
    assert_eq!(received, Some(1.0));
    let published =
        c.a.metric(
            "portcullis_session_store_events_total",
            &[("store", "redis"), ("direction", "published")],
        )
        .await;
    assert_eq!(published, Some(1.0));
    assert_eq!(
        c.b.metric("portcullis_session_ends_total", &[("reason", "logout")])
            .await,
        None,
        "the end is counted once, where it happened"
    );
}

#[tokio::test]
async fn a_messenger_token_refreshed_on_one_instance_is_good_on_the_other() {
    let redis = RedisServer::start();
    let c = two_instances_at(
        &format!("{{url: \"{}\"}}", redis.url()),
        Some("https://chat.example.com"),
    )
    .await;
    let (status, tokens) = exchange(&c.idp, &c.a).await;
    assert_eq!(status, 200, "{tokens}");
    let first = tokens["refreshToken"].as_str().unwrap().to_string();
    let (status, refreshed) = refresh(&c.a, &first).await;
    assert_eq!(status, 200, "{refreshed}");
    let jwt = refreshed["jwt"].as_str().unwrap();
    let second = refreshed["refreshToken"].as_str().unwrap().to_string();
    let (mut ws, _) = chat_with_token(&c.b, jwt)
        .await
        .expect("A's token opens the chat on B");
    next_json(&mut ws).await;
    // The rotation is shared: B refreshes the new token, and the first
    // one (rotated on A, past no grace yet) gets A's successor on B.
    let (status, again) = refresh(&c.b, &second).await;
    assert_eq!(status, 200, "{again}");
    let (status, grace) = refresh(&c.b, &first).await;
    assert_eq!(status, 200, "{grace}");
    assert_eq!(
        grace["refreshToken"], again["refreshToken"],
        "within the grace window, B answers with the newest token of the chain"
    );
    // Revoked on B: A's knowledge of the session ends too.
    let revoked = reqwest::Client::new()
        .delete(c.b.url("/.auth/token"))
        .header("origin", SITE)
        .bearer_auth(again["jwt"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await.map(|(c, _)| c),
        Some(4002)
    );
    let (status, _) = refresh(&c.a, again["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_redis_outage_fails_closed_and_both_instances_recover_by_themselves() {
    let mut redis = RedisServer::start();
    let c = two_instances(&format!(
        "{{url: \"{}\", local_cache: 3s, command_timeout: 300ms}}",
        redis.url()
    ))
    .await;
    assert_eq!(
        until_status(Duration::from_secs(10), 200, || ready_status(&c.a)).await,
        200
    );
    let cached = log_in(&c.a).await;
    let uncached = log_in(&c.a).await;
    let (status, tokens) = exchange(&c.idp, &c.a).await;
    assert_eq!(status, 200, "{tokens}");
    let mut chat = open_chat(&c.b, &cached).await;
    assert_eq!(me_status(&c.b, &cached).await, 200, "now cached on B");

    redis.stop();
    let stopped = Instant::now();
    assert_eq!(
        me_status(&c.b, &cached).await,
        200,
        "served from B's local cache"
    );
    // A session B never looked up cannot be checked: 503, never 200 or a
    // redirect to a login that would fail too.
    assert_eq!(me_status(&c.b, &uncached).await, 503);
    let attempt = ws_connect(
        &c.b.ws_url(CHAT),
        &[("Origin", &origin(&c.b)), ("Cookie", &uncached)],
    )
    .await;
    assert_eq!(refused_status(&attempt), 503);
    assert_eq!(
        refused_json(&attempt)["reason"],
        "session_store_unavailable"
    );
    // New logins and token exchanges cannot be stored: 503.
    match login(&c.a, "support", "alice", "/").await {
        Err((status, _)) => assert_eq!(status, 503),
        Ok(_) => panic!("a login succeeded without a session store"),
    }
    let (status, body) = exchange(&c.idp, &c.a).await;
    assert_eq!(status, 503, "{body}");
    // Logout cannot promise an end it cannot store.
    assert_eq!(logout(&c.b, &uncached).await, 503);
    // Nor can the token API refresh or revoke.
    let (status, body) = refresh(&c.a, tokens["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, 503, "{body}");
    let revoked = reqwest::Client::new()
        .delete(c.a.url("/.auth/token"))
        .header("origin", SITE)
        .bearer_auth(tokens["jwt"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 503);
    // The session B cached keeps working, but only within local_cache.
    let mut last = 200;
    let deadline = Instant::now() + Duration::from_secs(10);
    while last == 200 && Instant::now() < deadline {
        last = me_status(&c.b, &cached).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last, 503,
        "the cached session is refused once its time is up"
    );
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "it was served from the cache meanwhile"
    );
    for proxy in [&c.a, &c.b] {
        assert_eq!(
            until_status(Duration::from_secs(5), 503, || ready_status(proxy)).await,
            503
        );
        let up = proxy
            .metric("portcullis_session_store_up", &[("store", "redis")])
            .await;
        assert_eq!(up, Some(0.0));
    }
    // The chat open on B is not cut for the outage itself.
    assert_eq!(
        closed_with(&mut chat, Duration::from_millis(300)).await,
        None
    );

    redis.restart();
    for proxy in [&c.a, &c.b] {
        assert_eq!(
            until_status(Duration::from_secs(10), 200, || ready_status(proxy)).await,
            200,
            "recovers by itself"
        );
    }
    // Redis came back empty: the resync closes the chat whose session is gone.
    assert_eq!(
        closed_with(&mut chat, CLOSE_DEADLINE).await.map(|(c, _)| c),
        Some(4002)
    );
    assert_eq!(me_status(&c.b, &cached).await, 401);
    let fresh = log_in(&c.a).await;
    assert_eq!(me_status(&c.b, &fresh).await, 200);
    assert!(c
        .b
        .metric(
            "portcullis_session_store_resyncs_total",
            &[("store", "redis")]
        )
        .await
        .is_some_and(|n| n >= 1.0));
}

#[tokio::test]
async fn sessions_saved_before_a_sentinel_failover_still_load_after_it() {
    let primary = RedisServer::start();
    let replica = RedisServer::replica_of(primary.port);
    let sentinel = Sentinel::start(primary.port);
    assert!(
        wait_for(Duration::from_secs(10), || {
            common::redis::command(replica.port, "INFO replication")
                .is_some_and(|info| info.contains("master_link_status:up"))
        }),
        "the replica syncs"
    );
    // The sentinel must know the replica before it can promote it.
    assert!(
        wait_for(Duration::from_secs(15), || {
            common::redis::command(
                sentinel.port,
                &format!("SENTINEL replicas {}", Sentinel::MASTER),
            )
            .is_some_and(|answer| answer.contains(&replica.port.to_string()))
        }),
        "the sentinel discovers the replica"
    );
    let mut primary = primary;
    let c = two_instances(&format!(
        "{{sentinel: {{master: {}, nodes: [\"127.0.0.1:{}\"]}}, local_cache: 0s}}",
        Sentinel::MASTER,
        sentinel.port
    ))
    .await;
    assert_eq!(
        until_status(Duration::from_secs(10), 200, || ready_status(&c.a)).await,
        200
    );
    let cookie = log_in(&c.a).await;
    assert_eq!(me_status(&c.b, &cookie).await, 200);
    // Replicated before the primary goes.
    assert!(
        wait_for(Duration::from_secs(5), || {
            common::redis::command(replica.port, "DBSIZE")
                .is_some_and(|n| n.trim_start_matches(':').trim().parse::<u64>().unwrap_or(0) > 0)
        }),
        "the session reached the replica"
    );

    primary.stop();
    assert!(
        wait_for(Duration::from_secs(20), || sentinel.primary_port()
            == Some(replica.port)),
        "the sentinel promotes the replica"
    );
    for proxy in [&c.a, &c.b] {
        assert_eq!(
            until_status(Duration::from_secs(15), 200, || me_status(proxy, &cookie)).await,
            200,
            "the session saved before the failover loads from the new primary"
        );
    }
    let fresh = log_in(&c.b).await;
    assert_eq!(
        me_status(&c.a, &fresh).await,
        200,
        "and new sessions are saved"
    );
}

#[tokio::test]
async fn the_store_is_chosen_at_start_and_a_reload_that_changes_it_says_so() {
    let redis = RedisServer::start();
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let keys = SharedKeys::new();
    let block = format!("{{url: \"{}\"}}", redis.url());
    let text = config(&idp, backend, &block, &keys);
    let proxy = Proxy::start_with_env(&text, &[("DEV_SECRET", "demo-secret")]).await;
    let cookie = log_in(&proxy).await;
    let reload = |text: String| {
        std::fs::write(&proxy.config_path, text).unwrap();
        let admin = proxy.admin_url("/admin/reload");
        async move {
            let resp = reqwest::Client::new().post(admin).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<serde_json::Value>().await.unwrap()["summary"]["restart_required_for"]
                .clone()
        }
    };
    let changed = text.replacen(
        &block,
        &format!("{{url: \"{}\", key_prefix: \"other:\"}}", redis.url()),
        1,
    );
    // As the test helper wrote the file: the chosen addresses filled in.
    let own = |t: &str| {
        t.replace("{PROXY}", &proxy.addr.to_string())
            .replace("{ADMIN}", &proxy.admin.to_string())
    };
    assert_eq!(
        reload(own(&changed)).await,
        serde_json::json!(["sessions.redis"])
    );
    let memory = text.replacen(
        &format!("  store: redis\n  redis: {block}\n"),
        "  store: memory\n",
        1,
    );
    assert_ne!(memory, text, "test bug: the store lines were not replaced");
    assert_eq!(
        reload(own(&memory)).await,
        serde_json::json!(["sessions.store"])
    );
    // Still the store it started with: the session lives on.
    assert_eq!(me_status(&proxy, &cookie).await, 200);
}
