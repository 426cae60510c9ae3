//! How browser sessions end, against the real binary and the development
//! provider: the idle timeout (kept off by the client's chat frames), the
//! maximum lifetime, a re-check the provider cannot answer, a login whose
//! ID token carries the wrong nonce, and cookie-key rotation across a
//! reload.
//!
//! Session lifetimes are minutes at the least, so the clock tests run
//! portcullis under libfaketime (Debian `libfaketime`, installed by
//! scripts/setup.sh): its wall clock follows an offset file the test moves
//! forward, while its monotonic clock (timers, Pingora) stays real.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::browser::*;
use common::*;
use futures_util::SinkExt;
use portcullis::devidp::{DevIdp, DevIdpOptions};
use tokio_tungstenite::tungstenite::Message;

const ORIGIN: &str = "http://{PROXY}";
const CHAT: &str = "/v1/chat?deploymentId=support";

/// The multi-threaded libfaketime, wherever the distribution put it.
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketimeMT.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")])
        .find(|p| p.exists());
    found.expect("libfaketime is not installed (scripts/setup.sh installs the Debian package)")
}

/// Moves portcullis's wall clock: `offset` seconds ahead of real time.
struct Clock {
    file: PathBuf,
}

impl Clock {
    fn set(&self, offset_secs: u64) {
        std::fs::write(&self.file, format!("+{offset_secs}\n")).unwrap();
    }
}

/// The dev provider and portcullis with `session` as the support
/// messenger's lifetimes, its wall clock under the returned `Clock`.
async fn setup(session: &str) -> (DevIdp, Proxy, Clock, tempfile::TempDir) {
    setup_with(DevIdpOptions::default(), session, "").await
}

/// As `setup`, with the provider's `options` and `scopes` for the `dev`
/// provider entry (`""`: the default).
async fn setup_with(
    options: DevIdpOptions,
    session: &str,
    scopes: &str,
) -> (DevIdp, Proxy, Clock, tempfile::TempDir) {
    let idp = start_devidp(options).await;
    let backend = start_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock {
        file: dir.path().join("faketime"),
    };
    clock.set(0);
    let mut config = config(&idp, backend, session, "");
    if !scopes.is_empty() {
        let entry = "    audiences: [\"api://messaging\"]\n";
        assert!(config.contains(entry), "test bug: no provider entry");
        config = config.replacen(entry, &format!("{entry}    scopes: {scopes}\n"), 1);
    }
    let lib = libfaketime();
    let proxy = Proxy::start_with_env(
        &config,
        &[
            ("DEV_SECRET", "demo-secret"),
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", clock.file.to_str().unwrap()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await;
    (idp, proxy, clock, dir)
}

fn config(idp: &DevIdp, backend: std::net::SocketAddr, session: &str, keys: &str) -> String {
    format!(
        r#"{preamble}
messengers:
  support:
    authentication: {{enabled: true, provider: dev}}
    session: {session}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allowed_origins: ["{ORIGIN}"]}}
routes: [{{path_prefix: /v1}}]
sessions:
  keys: {keys}
"#,
        preamble = config_with_dev_provider(idp),
        keys = if keys.is_empty() { "{}" } else { keys },
    )
}

fn origin(proxy: &Proxy) -> String {
    proxy.url("").trim_end_matches('/').to_string()
}

async fn log_in(proxy: &Proxy) -> String {
    login(proxy, "support", "alice", "/")
        .await
        .unwrap_or_else(|(status, page)| panic!("login failed with {status}: {page}"))
        .0
}

async fn open_chat(proxy: &Proxy, cookie: &str) -> Ws {
    let (mut ws, _) = ws_connect(
        &proxy.ws_url(CHAT),
        &[("Origin", &origin(proxy)), ("Cookie", cookie)],
    )
    .await
    .expect("the session opens the chat");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    ws
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

async fn session_ends(proxy: &Proxy, reason: &str) -> Option<f64> {
    proxy
        .metric("portcullis_session_ends_total", &[("reason", reason)])
        .await
}

async fn forced_closes(proxy: &Proxy, reason: &str) -> Option<f64> {
    proxy
        .metric(
            "portcullis_forced_closes_total",
            &[("deployment", "support"), ("reason", reason)],
        )
        .await
}

async fn chat_refused_with(proxy: &Proxy, cookie: &str) -> u16 {
    let attempt = ws_connect(
        &proxy.ws_url(CHAT),
        &[("Origin", &origin(proxy)), ("Cookie", cookie)],
    )
    .await;
    refused_status(&attempt)
}

#[tokio::test]
async fn an_idle_session_ends_and_closes_its_chat_unless_the_client_keeps_talking() {
    let (_idp, proxy, clock, _dir) =
        setup("{max_lifetime: 1h, idle_timeout: 1m, token_lifetime: 15m}").await;
    let cookie = log_in(&proxy).await;
    let mut talking = open_chat(&proxy, &cookie).await;

    // 50 s on, the client sends a chat message: activity at +50 s.
    clock.set(50);
    let reply = echo(&mut talking, "still here").await;
    assert_eq!(reply["text"], "still here");
    // At +100 s the login is 100 s old but the last message only 50 s:
    // the session lives on, and so does the socket.
    clock.set(100);
    assert_eq!(
        closed_with(&mut talking, Duration::from_millis(1500)).await,
        None,
        "a session with recent chat frames must not go idle"
    );
    assert_eq!(session_ends(&proxy, "idle").await, None);

    // Past +110 s (the message plus the 60 s idle timeout), with nothing
    // said: closed with 4001 within a second or so, and the session is over.
    clock.set(112);
    assert_eq!(
        closed_with(&mut talking, CLOSE_DEADLINE).await,
        Some((4001, "session idle".to_string()))
    );
    assert_eq!(chat_refused_with(&proxy, &cookie).await, 401);
    assert_eq!(me_status(&proxy, &cookie).await, 401);
    assert_eq!(
        session_ends(&proxy, "idle").await,
        Some(1.0),
        "ended once, counted once"
    );
    assert_eq!(forced_closes(&proxy, "idle").await, Some(1.0));
}

/// A message soon after the store last heard of the session (too soon for
/// the regular 30 s write) still reaches the store before the store would
/// judge the session idle.
#[tokio::test]
async fn a_message_soon_after_the_last_recorded_activity_still_counts() {
    let (_idp, proxy, clock, _dir) =
        setup("{max_lifetime: 1h, idle_timeout: 1m, token_lifetime: 15m}").await;
    let cookie = log_in(&proxy).await;
    let mut ws = open_chat(&proxy, &cookie).await;
    clock.set(20);
    echo(&mut ws, "a quick question").await;
    // +75 s: 75 s since login, only 55 s since the message.
    clock.set(58);
    tokio::time::sleep(Duration::from_millis(600)).await;
    clock.set(75);
    assert_eq!(
        me_status(&proxy, &cookie).await,
        200,
        "the store heard of the message at +20 s before its own deadline"
    );
    assert_eq!(
        closed_with(&mut ws, Duration::from_millis(1500)).await,
        None,
        "the message at +20 s keeps the session until +80 s"
    );
    clock.set(82);
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((4001, "session idle".to_string()))
    );
}

#[tokio::test]
async fn a_session_ends_at_its_maximum_lifetime_however_active() {
    let (_idp, proxy, clock, _dir) =
        setup("{max_lifetime: 15m, idle_timeout: 15m, token_lifetime: 15m}").await;
    let cookie = log_in(&proxy).await;
    let mut ws = open_chat(&proxy, &cookie).await;
    clock.set(890);
    echo(&mut ws, "ten seconds left").await;
    assert_eq!(me_status(&proxy, &cookie).await, 200);

    clock.set(901);
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((4001, "session expired".to_string()))
    );
    assert_eq!(chat_refused_with(&proxy, &cookie).await, 401);
    assert_eq!(me_status(&proxy, &cookie).await, 401);
    assert_eq!(session_ends(&proxy, "expired").await, Some(1.0));
}

/// Requests to the provider that a re-check makes (discovery, token).
fn provider_requests(idp: &DevIdp) -> u64 {
    idp.token_hits() + idp.discovery_hits()
}

/// Makes requests with `cookie` for about a second, each answered 200;
/// then asserts the provider heard nothing more than `requests`.
async fn requests_ask_the_provider_nothing(
    proxy: &Proxy,
    idp: &DevIdp,
    cookie: &str,
    requests: u64,
    why: &str,
) {
    for _ in 0..8 {
        let status = no_redirects()
            .get(proxy.url("/v1/x?deploymentId=support"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{why}");
        tokio::time::sleep(Duration::from_millis(125)).await;
    }
    assert_eq!(provider_requests(idp), requests, "{why}");
}

/// Waits until the provider has heard more than `requests`.
async fn provider_asked(idp: &DevIdp, requests: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while provider_requests(idp) == requests {
        assert!(
            std::time::Instant::now() < deadline,
            "the provider was not asked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    provider_requests(idp)
}

#[tokio::test]
async fn a_recheck_the_provider_cannot_answer_keeps_the_session_and_is_retried_a_minute_later() {
    // ID tokens outlive the clock jumps below.
    let options = DevIdpOptions {
        token_lifetime: Duration::from_secs(7200),
        ..DevIdpOptions::default()
    };
    let (idp, proxy, clock, _dir) = setup_with(
        options,
        "{max_lifetime: 24h, idle_timeout: 1h, token_lifetime: 15m}",
        "[openid, email, profile, offline_access]",
    )
    .await;
    let cookie = log_in(&proxy).await;
    let mut ws = open_chat(&proxy, &cookie).await;
    let get = || {
        no_redirects()
            .get(proxy.url("/v1/x?deploymentId=support"))
            .header("cookie", cookie.as_str())
            .send()
    };

    // Due (15 min later) while the provider is down: asked once, and the
    // session goes on.
    idp.set_down(true);
    clock.set(16 * 60);
    let before = provider_requests(&idp);
    assert_eq!(get().await.unwrap().status(), 200);
    let asked = provider_asked(&idp, before).await;
    requests_ask_the_provider_nothing(
        &proxy,
        &idp,
        &cookie,
        asked,
        "postponed, not retried per request",
    )
    .await;
    assert_eq!(echo(&mut ws, "still here").await["text"], "still here");
    assert_eq!(me_status(&proxy, &cookie).await, 200);

    // Back up, but within the minute: not asked yet.
    idp.set_down(false);
    clock.set(16 * 60 + 30);
    requests_ask_the_provider_nothing(&proxy, &idp, &cookie, asked, "the retry waits a minute")
        .await;

    // A minute after the failure: asked again, and renewed.
    clock.set(16 * 60 + 65);
    let tokens = idp.token_hits();
    assert_eq!(get().await.unwrap().status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while idp.token_hits() == tokens {
        assert!(
            std::time::Instant::now() < deadline,
            "no retry reached the token endpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewed = provider_requests(&idp);
    requests_ask_the_provider_nothing(&proxy, &idp, &cookie, renewed, "renewed for another 15 min")
        .await;
    assert_eq!(echo(&mut ws, "and still").await["text"], "and still");
    assert_eq!(session_ends(&proxy, "revoked").await, None);
    assert_eq!(forced_closes(&proxy, "revoked").await, None);
}

#[tokio::test]
async fn an_id_token_with_another_nonce_is_refused_at_the_callback() {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let proxy = Proxy::start_with_env(
        &config(&idp, backend, "{}", ""),
        &[("DEV_SECRET", "demo-secret")],
    )
    .await;
    let c = no_redirects();
    let start = c
        .get(proxy.url("/.auth/login?deployment=support&rd=%2F"))
        .send()
        .await
        .unwrap();
    let pending = set_cookies(&start);
    // The authorization request reaches the provider with another nonce (an
    // injected or replayed request): the ID token then carries that nonce.
    let authorize = with_query_param(&location(&start), "nonce", "nonce-of-somebody-else");
    let callback = choose_user(&c, &authorize, "alice").await;
    let done = return_to(&c, &callback, &pending).await;
    assert_login_refused(
        &proxy,
        done,
        401,
        "does not belong to this login",
        "nonce_mismatch",
    )
    .await;
    let log = proxy.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("login refused") && l.contains("nonce_mismatch")),
        "one log line says why: {log}"
    );
    assert!(!log.contains("nonce-of-somebody-else"));
}

#[tokio::test]
async fn cookies_sealed_with_a_previous_key_open_until_that_key_is_dropped() {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = |name: &str, byte: u8| {
        use base64::Engine;
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            base64::engine::general_purpose::STANDARD.encode([byte; 32]),
        )
        .unwrap();
        format!("{{file: \"{}\"}}", path.display())
    };
    let (old_key, new_key) = (key_file("old", 1), key_file("new", 2));
    let proxy = Proxy::start_with_env(
        &config(&idp, backend, "{}", &format!("{{cookie_key: {old_key}}}")),
        &[("DEV_SECRET", "demo-secret")],
    )
    .await;
    let sealed_with_old = log_in(&proxy).await;
    assert_eq!(me_status(&proxy, &sealed_with_old).await, 200);

    let reload_with = |keys: String| {
        let text = std::fs::read_to_string(&proxy.config_path).unwrap();
        let start = text.find("  keys: ").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        std::fs::write(
            &proxy.config_path,
            format!("{}  keys: {keys}{}", &text[..start], &text[end..]),
        )
        .unwrap();
        let admin = proxy.admin_url("/admin/reload");
        async move {
            let resp = reqwest::Client::new().post(admin).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        }
    };

    // Rotation: new cookies get the new key, old ones still open.
    reload_with(format!(
        "{{cookie_key: {new_key}, previous_cookie_keys: [{old_key}]}}"
    ))
    .await;
    assert_eq!(me_status(&proxy, &sealed_with_old).await, 200);
    let sealed_with_new = log_in(&proxy).await;
    assert_eq!(me_status(&proxy, &sealed_with_new).await, 200);

    // The old key retired: its cookies are no session; the new ones are.
    reload_with(format!("{{cookie_key: {new_key}}}")).await;
    assert_eq!(me_status(&proxy, &sealed_with_old).await, 401);
    assert_eq!(me_status(&proxy, &sealed_with_new).await, 200);
    assert_eq!(chat_refused_with(&proxy, &sealed_with_old).await, 401);
    let mut ws = open_chat(&proxy, &sealed_with_new).await;
    ws.send(Message::Close(None)).await.unwrap();
}

#[tokio::test]
async fn a_reload_that_tightens_the_policy_closes_the_chats_it_would_now_refuse() {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let proxy = Proxy::start_with_env(
        &config(&idp, backend, "{}", ""),
        &[("DEV_SECRET", "demo-secret")],
    )
    .await;
    // alice is a customer; carol is a customer and staff.
    let alice = login(&proxy, "support", "alice", "/").await.unwrap().0;
    let carol = login(&proxy, "support", "carol", "/").await.unwrap().0;
    let mut alice_chat = open_chat(&proxy, &alice).await;
    let mut carol_chat = open_chat(&proxy, &carol).await;

    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let tightened = text.replacen(
        "authentication: {enabled: true, provider: dev}",
        "authentication: {enabled: true, provider: dev, require: {groups_any: [staff]}}",
        1,
    );
    assert_ne!(
        text, tightened,
        "test bug: the messenger line was not found"
    );
    std::fs::write(&proxy.config_path, tightened).unwrap();
    let summary: serde_json::Value = reqwest::Client::new()
        .post(proxy.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["summary"]["closed_connections"], 1, "{summary}");

    assert_eq!(
        closed_with(&mut alice_chat, CLOSE_DEADLINE).await,
        Some((4002, "policy changed".to_string()))
    );
    let reply = echo(&mut carol_chat, "still allowed").await;
    assert_eq!(reply["text"], "still allowed");
    assert_eq!(chat_refused_with(&proxy, &alice).await, 403);
    assert_eq!(forced_closes(&proxy, "reload").await, Some(1.0));
}
