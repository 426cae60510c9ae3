//! Faults with the real parts: each fault comes from a real process or
//! socket the test stops, starts, stalls or feeds, and each test asserts
//! what the client sees (status, close code, body), what the metrics say,
//! and that nothing is let through.
//!
//! - the development provider, as its own server on a fixed loopback port,
//!   absent at startup, stopped past `jwks_max_stale` and started again on
//!   the same port ("down for minutes", shortened by configuration);
//! - the development provider answering slower than `http_timeout`;
//! - a hand-written provider whose key set turns into garbage, a 10 MB
//!   answer, or an endless chunked one;
//! - raw TCP upstreams that reset after reading the upgrade, never answer,
//!   or stall in the middle of the 101 (and a quiet WebSocket that must
//!   outlive the upstream read timeout that bounds those);
//! - a raw TCP client trickling a frame that announces 1 GiB.
//!
//! Elsewhere: an upstream that refuses or resets at once
//! (`tests/proxy.rs::an_upstream_that_resets_or_refuses_gets_a_json_502`),
//! a client that never reads (`tests/operations.rs::a_client_that_stops_reading_is_cut_after_a_forced_close`),
//! a provider answering 503 (`tests/auth.rs::cached_keys_keep_serving_while_the_provider_is_down`).

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, Header};
use portcullis::devidp::{self, DevIdp, DevIdpOptions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORIGIN: &str = "https://www.example.com";
const CHAT: &str = "/v1/chat?deploymentId=support";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A bearer request to the chat route; its status and JSON body.
async fn bearer_get(proxy: &Proxy, token: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(proxy.url(CHAT))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(json!(null)))
}

/// Opens the chat WebSocket with a bearer token and reads the welcome.
async fn bearer_chat(proxy: &Proxy, token: &str) -> Result<serde_json::Value, String> {
    match ws_connect(
        &proxy.ws_url(CHAT),
        &[("Origin", ORIGIN), ("Authorization", &bearer(token))],
    )
    .await
    {
        Ok((mut ws, _)) => Ok(next_json(&mut ws).await),
        Err(e) => Err(format!("{e}")),
    }
}

async fn readyz(proxy: &Proxy) -> (u16, serde_json::Value) {
    let response = reqwest::get(proxy.admin_url("/readyz")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(json!(null)))
}

/// Polls `/readyz` until it answers `status`, for at most `within`.
async fn wait_ready(proxy: &Proxy, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (now, body) = readyz(proxy).await;
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {now} (waiting for {status}): {body}\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of every `portcullis_jwks_fetches_total` series with this result.
async fn jwks_fetches(proxy: &Proxy, result: &str) -> f64 {
    proxy
        .metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("portcullis_jwks_fetches_total")
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Polls until `jwks_fetches(result)` exceeds `above`.
async fn wait_jwks_fetch(proxy: &Proxy, result: &str, above: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let now = jwks_fetches(proxy, result).await;
        if now > above {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "no {result} key fetch after {above}\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A provider entry and one bearer deployment in front of the echo backend.
fn provider_config(issuer: &str, backend: SocketAddr, provider_extra: &str) -> String {
    format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
public_url: "http://{{PROXY}}"
threads: 1
admin: {{address: "{{ADMIN}}"}}
providers:
  dev:
    issuer: "{issuer}"
    client_id: portcullis-demo
    audiences: ["api://messaging"]
    algorithms: [RS256, ES256]
{provider_extra}
messengers:
  support: {{authentication: {{enabled: true, provider: dev}}}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allowed_origins: ["{ORIGIN}"]}}
routes: [{{path_prefix: /v1}}]
logging: {{format: json, level: info}}
"#
    )
}

/// Starts the development provider on exactly `addr`, retrying while the
/// previous one there still holds the port.
async fn start_idp_at(addr: SocketAddr) -> DevIdp {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                return devidp::start(listener, DevIdpOptions::default())
                    .await
                    .unwrap()
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind {addr} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Stops the development provider and waits until its port refuses.
async fn stop_idp(idp: DevIdp) {
    let addr = idp.addr();
    drop(idp);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the provider at {addr} never stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The provider's whole life as an outage sees it: absent at startup (login
/// is a 503 page, `/readyz` unready), up (ready by itself), stopped (cached
/// keys keep verifying new tokens), stopped past `jwks_max_stale` (unready,
/// bearer tokens 503 `provider_unavailable`, nothing let through), and
/// started again on the same port with new keys (ready by itself, the new
/// keys verify). Minutes of outage are seconds here: keys live 1 s and stay
/// usable 5 s past that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_up_and_down_again_is_survived_and_recovered_from_alone() {
    let (refusing, port) = refused_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let issuer = format!("http://{addr}");
    let backend = start_backend().await;
    let extra = "    http_timeout: 300ms\n    jwks_min_ttl: 1s\n    jwks_max_ttl: 1s\n    jwks_max_stale: 5s\n    jwks_refetch_interval: 1s";
    let proxy = Proxy::start(&provider_config(&issuer, backend, extra)).await;

    // Absent from the start: unready, and login is a page saying so.
    let (status, body) = readyz(&proxy).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["providers"]["dev"]["ok"], false, "{body}");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = no_redirects
        .get(proxy.url("/.auth/login?deployment=support&rd=/"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 503);
    assert!(login.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(login.text().await.unwrap().contains("cannot be reached"));

    // Up: ready without any request or reload.
    drop(refusing);
    let idp = start_idp_at(addr).await;
    wait_ready(&proxy, 200, Duration::from_secs(30)).await;
    let login = no_redirects
        .get(proxy.url("/.auth/login?deployment=support&rd=/"))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 302);
    assert!(login.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with(&format!("{issuer}/authorize?")));
    let alice = idp.mint_access_token("alice", Algorithm::RS256);
    let carol = idp.mint_access_token("carol", Algorithm::ES256);
    let bob = idp.mint_access_token("bob", Algorithm::RS256);
    let welcome = bearer_chat(&proxy, &alice).await.unwrap();
    assert_eq!(welcome["identity"]["x-auth-subject"], "alice");

    // A login that reaches its callback after the provider stopped: a 503
    // page, no session.
    let browser = common::browser::no_redirects();
    let started = browser
        .get(proxy.url("/.auth/login?deployment=support&rd=/"))
        .send()
        .await
        .unwrap();
    let pending = common::browser::set_cookies(&started).join("; ");
    let authorize = common::browser::location(&started);
    let callback = common::browser::choose_user(&browser, &authorize, "alice").await;

    // Stopped: a token never seen before still verifies with the cached keys.
    stop_idp(idp).await;
    let answer = browser
        .get(&callback)
        .header("cookie", &pending)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    assert!(common::browser::set_cookies(&answer)
        .iter()
        .all(|c| !c.starts_with("portcullis=") && !c.starts_with("__Host-portcullis=")));
    assert!(answer.text().await.unwrap().contains("cannot be reached"));
    let welcome = bearer_chat(&proxy, &carol)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_text()));
    assert_eq!(welcome["identity"]["x-auth-subject"], "carol");

    // Stopped past max_stale: unready, and new tokens are refused with a
    // 503 that says why, never let through.
    wait_ready(&proxy, 503, Duration::from_secs(30)).await;
    // The gauge follows the readiness check on the next upkeep pass.
    let metrics = proxy
        .metrics_when(Duration::from_secs(10), |text| {
            sample(text, "portcullis_provider_ready", &[("provider", "dev")]) == Some(0.0)
        })
        .await;
    assert_eq!(
        sample(
            &metrics,
            "portcullis_provider_ready",
            &[("provider", "dev")]
        ),
        Some(0.0)
    );
    assert!(jwks_fetches(&proxy, "error").await >= 1.0);
    let (status, body) = bearer_get(&proxy, &bob).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "provider_unavailable");
    let refused = ws_connect(
        &proxy.ws_url(CHAT),
        &[("Origin", ORIGIN), ("Authorization", &bearer(&bob))],
    )
    .await;
    assert_eq!(refused_status(&refused), 503);

    // Started again on the same port, with new keys: ready by itself, and
    // its tokens verify.
    let idp = start_idp_at(addr).await;
    wait_ready(&proxy, 200, Duration::from_secs(90)).await;
    let dave = idp.mint_access_token("alice", Algorithm::ES256);
    let welcome = bearer_chat(&proxy, &dave)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_text()));
    assert_eq!(welcome["identity"]["x-auth-subject"], "alice");
    let log = proxy.log_text();
    assert!(
        !log.contains(&bob) && !log.contains(&alice),
        "a token was logged"
    );
}

/// A provider slower than `http_timeout`: tokens of known keys are answered
/// from the cache without waiting for it; a burst of tokens with a new kid
/// costs it one fetch (never one per request), every request of the burst
/// is answered within the timeout (none waits the provider's 10 s), none is
/// let through; once the provider is quick again, the new key verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_costs_one_fetch_and_holds_nobody_past_the_timeout() {
    let idp = common::browser::start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    // Unknown-kid refetches 5 s apart: the burst gets one.
    let extra = "    http_timeout: 500ms\n    jwks_refetch_interval: 30s";
    let proxy = Proxy::start(&provider_config(idp.issuer(), backend, extra)).await;
    wait_ready(&proxy, 200, Duration::from_secs(20)).await;
    let known = idp.mint_access_token("alice", Algorithm::RS256);
    assert_eq!(bearer_get(&proxy, &known).await.0, 200);

    // Tokens of the current keys, each new to the token cache.
    let known_fresh: Vec<String> = (0..10)
        .map(|i| {
            idp.sign(
                Header::new(Algorithm::RS256),
                &json!({"iss": idp.issuer(), "sub": format!("u{i}"), "aud": "api://messaging", "exp": idp.now() + 300}),
            )
        })
        .collect();
    idp.set_delay(Duration::from_secs(10));
    idp.rotate_keys();
    let rotated = idp.mint_access_token("carol", Algorithm::RS256);
    let hits_before = idp.jwks_hits();
    let started = Instant::now();
    let mut burst = Vec::new();
    for i in 0..40 {
        let known_kid = i % 4 == 0;
        let token = if known_kid {
            known_fresh[i / 4].clone()
        } else {
            rotated.clone()
        };
        let proxy_url = proxy.url(CHAT);
        burst.push(tokio::spawn(async move {
            let status = reqwest::Client::new()
                .get(proxy_url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            (known_kid, status)
        }));
    }
    for task in burst {
        let (known_kid, status) = task.await.unwrap();
        if known_kid {
            assert_eq!(status, 200, "a cached key stopped verifying");
        } else {
            assert!(status == 401 || status == 503, "let through: {status}");
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "the burst waited for the slow provider: {took:?}"
    );
    assert_eq!(
        idp.jwks_hits() - hits_before,
        1,
        "one fetch for the whole burst"
    );
    // The known key kept working all along.
    assert_eq!(bearer_get(&proxy, &known).await.0, 200);
    assert!(jwks_fetches(&proxy, "error").await >= 1.0);

    idp.set_delay(Duration::ZERO);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = bearer_get(&proxy, &rotated).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new key never verified: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How the hand-written provider answers for its key set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum KeysAnswer {
    Good = 0,
    /// 200 with an HTML page.
    Garbage = 1,
    /// 200 announcing 10 MiB in `Content-Length`.
    Huge = 2,
    /// 200, chunked, never ending.
    Endless = 3,
}

/// A provider written by hand on a raw socket: a discovery document naming
/// itself, and a key set that is the development provider's, or garbage, or
/// too large. Tokens are signed by the development provider with this
/// provider's issuer.
struct HandProvider {
    issuer: String,
    answer: Arc<AtomicU8>,
    /// Bytes the endless answer managed to send before its reader hung up.
    endless_sent: Arc<AtomicU64>,
    endless_ended: Arc<AtomicBool>,
}

impl HandProvider {
    async fn start(jwks: String) -> HandProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let answer = Arc::new(AtomicU8::new(KeysAnswer::Good as u8));
        let endless_sent = Arc::new(AtomicU64::new(0));
        let endless_ended = Arc::new(AtomicBool::new(false));
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
        })
        .to_string();
        let (a, sent, ended) = (answer.clone(), endless_sent.clone(), endless_ended.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (discovery, jwks) = (discovery.clone(), jwks.clone());
                let (a, sent, ended) = (a.clone(), sent.clone(), ended.clone());
                tokio::spawn(async move {
                    let _ = serve_one(stream, &discovery, &jwks, &a, &sent, &ended).await;
                });
            }
        });
        HandProvider {
            issuer,
            answer,
            endless_sent,
            endless_ended,
        }
    }

    fn answer(&self, answer: KeysAnswer) {
        self.answer.store(answer as u8, Ordering::SeqCst);
    }
}

/// Answers one request and closes the connection.
async fn serve_one(
    mut stream: tokio::net::TcpStream,
    discovery: &str,
    jwks: &str,
    answer: &AtomicU8,
    endless_sent: &AtomicU64,
    endless_ended: &AtomicBool,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("");
    let plain = |body: &str, content_type: &str| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: max-age=1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if path == "/.well-known/openid-configuration" {
        return stream
            .write_all(plain(discovery, "application/json").as_bytes())
            .await;
    }
    if path != "/jwks" {
        return stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    }
    let filler = vec![b' '; 64 * 1024];
    match answer.load(Ordering::SeqCst) {
        0 => {
            stream
                .write_all(plain(jwks, "application/json").as_bytes())
                .await
        }
        1 => {
            stream
                .write_all(
                    plain("<html><body>Maintenance</body></html>", "application/json").as_bytes(),
                )
                .await
        }
        2 => {
            let total = 10 * 1024 * 1024;
            stream
                .write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {total}\r\nconnection: close\r\n\r\n{{\"keys\":[").as_bytes())
                .await?;
            let mut sent = 9;
            while sent < total {
                let n = filler.len().min(total - sent);
                stream.write_all(&filler[..n]).await?;
                sent += n;
            }
            Ok(())
        }
        _ => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n9\r\n{\"keys\":[\r\n")
                .await?;
            let chunk = [
                format!("{:x}\r\n", filler.len()).as_bytes(),
                &filler,
                b"\r\n",
            ]
            .concat();
            let result = loop {
                if let Err(e) = stream.write_all(&chunk).await {
                    break Err(e);
                }
                endless_sent.fetch_add(filler.len() as u64, Ordering::SeqCst);
                // Paced, so that a reader without a bound fills memory at
                // tens of MB/s rather than at loopback speed.
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            endless_ended.store(true, Ordering::SeqCst);
            result
        }
    }
}

/// A provider whose key set turns into garbage, a 10 MiB answer, or an
/// endless one: each is refused (the endless one as soon as it passes the
/// 512 KiB bound, not at the HTTP timeout), the last good keys keep
/// verifying new tokens, and `/readyz` stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_key_sets_are_refused_and_the_last_good_keys_kept() {
    let signer = common::browser::start_devidp(DevIdpOptions::default()).await;
    let provider = HandProvider::start(signer.jwks().to_string()).await;
    let backend = start_backend().await;
    // Keys live 1 s: the cache refetches about every 0.8 s.
    let extra =
        "    http_timeout: 3s\n    jwks_min_ttl: 1s\n    jwks_max_ttl: 1s\n    jwks_max_stale: 1h";
    let proxy = Proxy::start(&provider_config(&provider.issuer, backend, extra)).await;
    wait_ready(&proxy, 200, Duration::from_secs(20)).await;
    let mut users = 0;
    let mut fresh_token = || {
        users += 1;
        signer.sign(
            Header::new(Algorithm::ES256),
            &json!({"iss": provider.issuer, "sub": format!("user{users}"), "aud": "api://messaging", "exp": signer.now() + 300}),
        )
    };
    assert_eq!(bearer_get(&proxy, &fresh_token()).await.0, 200);

    for (answer, says) in [
        (KeysAnswer::Garbage, "not a JWK set"),
        (KeysAnswer::Huge, "larger than 524288 bytes"),
        (KeysAnswer::Endless, "larger than 524288 bytes"),
    ] {
        let said_before = proxy.log_text().matches(says).count();
        let errors = jwks_fetches(&proxy, "error").await;
        provider.answer(answer);
        wait_jwks_fetch(&proxy, "error", errors, Duration::from_secs(30)).await;
        assert!(
            proxy.log_text().matches(says).count() > said_before,
            "{answer:?}: the refusal does not say {says:?}\n{}",
            proxy.log_text()
        );
        // A token never seen before verifies with the last good keys.
        let (status, body) = bearer_get(&proxy, &fresh_token()).await;
        assert_eq!(status, 200, "{answer:?}: {body}");
        assert_eq!(readyz(&proxy).await.0, 200, "{answer:?}");
        // Back to good, which also ends the backoff the failure started.
        let oks = jwks_fetches(&proxy, "ok").await;
        provider.answer(KeysAnswer::Good);
        wait_jwks_fetch(&proxy, "ok", oks, Duration::from_secs(30)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !provider.endless_ended.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the endless answer is still being read"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 512 KiB read, plus what loopback socket buffers hold.
    let sent = provider.endless_sent.load(Ordering::SeqCst);
    assert!(
        sent < 32 * 1024 * 1024,
        "{sent} bytes of an endless key set were taken in"
    );
}

/// Config for `open` (no authentication) in front of `upstream`, with an
/// upstream read timeout.
fn upstream_config(upstream: SocketAddr, read_timeout: &str) -> String {
    format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
threads: 1
admin: {{address: "{{ADMIN}}"}}
messengers: {{open: {{authentication: {{enabled: false}}}}}}
upstreams:
  chat: {{servers: ["{upstream}"], read_timeout: {read_timeout}}}
deployments:
  - {{id: open, messenger: open, upstream: chat, allow_all_origins: true}}
routes: [{{path_prefix: /v1}}]
"#
    )
}

/// How a raw upstream misbehaves once it has read the upgrade request.
#[derive(Clone, Copy, Debug)]
enum UpstreamFault {
    /// Resets the connection (RST, linger 0).
    Reset,
    /// Keeps the connection open and never answers.
    Silent,
    /// Sends the first bytes of a 101, then nothing.
    StallsMidAnswer,
}

/// A raw TCP upstream with `fault`; counts the requests it read.
async fn faulty_upstream(fault: UpstreamFault) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicU64::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            counted.fetch_add(1, Ordering::SeqCst);
            match fault {
                UpstreamFault::Reset => {
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                }
                UpstreamFault::Silent => held.push(stream),
                UpstreamFault::StallsMidAnswer => {
                    let _ = stream.write_all(b"HTTP/1.1 101 Switching Pro").await;
                    held.push(stream);
                }
            }
        }
    });
    (addr, requests)
}

/// An upstream that resets after reading the upgrade, one that never
/// answers it, and one that stalls in the middle of its 101: each handshake
/// ends in a JSON 502 `upstream_failed` (the silent ones at the upstream's
/// `read_timeout`, not never), counted, and no 101 reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_that_reset_go_silent_or_stall_mid_handshake_get_a_bounded_502() {
    for fault in [
        UpstreamFault::Reset,
        UpstreamFault::Silent,
        UpstreamFault::StallsMidAnswer,
    ] {
        let (upstream, requests) = faulty_upstream(fault).await;
        let proxy = Proxy::start(&upstream_config(upstream, "1s")).await;
        let started = Instant::now();
        let result = ws_connect(&proxy.ws_url("/v1/chat?deploymentId=open"), &[]).await;
        let took = started.elapsed();
        assert_eq!(refused_status(&result), 502, "{fault:?}");
        assert_eq!(
            refused_json(&result)["error"],
            "upstream_failed",
            "{fault:?}"
        );
        assert!(
            requests.load(Ordering::SeqCst) >= 1,
            "{fault:?}: never reached"
        );
        // The bound is the behaviour: a second's read timeout, well under
        // the 10 s the client waits.
        assert!(took < Duration::from_secs(8), "{fault:?}: took {took:?}");
        let metrics = proxy
            .metrics_when(Duration::from_secs(5), |m| {
                m.contains("portcullis_upstream_errors_total{")
            })
            .await;
        let errors: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("portcullis_upstream_errors_total{")
                    && l.contains("upstream=\"chat\"")
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        assert!(errors >= 1.0, "{fault:?}: not counted\n{metrics}");
    }
}

/// The upstream read timeout bounds the wait for the 101, not the tunnel:
/// a WebSocket quiet for several timeouts still carries the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_outlives_the_upstream_read_timeout() {
    let backend = start_backend().await;
    let proxy = Proxy::start(&upstream_config(backend, "300ms")).await;
    let (mut ws, _) = proxy.open_chat("/v1/chat?deploymentId=open", ORIGIN).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answer = echo(&mut ws, "still here").await;
    assert_eq!(answer["text"], "still here", "{answer}");
}

/// A raw upstream that accepts the WebSocket upgrade (a correct 101) and
/// then counts what it receives; `closed` once the proxy ends its side.
async fn counting_ws_upstream() -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let (r, c) = (received.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (r, c) = (r.clone(), c.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let end = loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let text = String::from_utf8_lossy(&head[..end]).to_string();
                if !text.to_ascii_lowercase().contains("upgrade: websocket") {
                    // A health probe or plain request: not ours.
                    return;
                }
                let key = text
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("sec-websocket-key")
                            .then(|| value.trim().to_string())
                    })
                    .unwrap_or_default();
                let digest = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
                );
                let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
                let answer = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                r.fetch_add((head.len() - end) as u64, Ordering::SeqCst);
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            r.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    }
                }
                c.store(true, Ordering::SeqCst);
            });
        }
    });
    (addr, received, closed)
}

/// A client that sends a frame header announcing 1 GiB and trickles its
/// payload: the bytes stream through (the proxy buffers no frame), and the
/// trickle keeps nothing alive: at the bearer token's `exp` the client gets
/// a 4001 close and the upstream connection is ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_a_1_gib_frame_is_streamed_and_still_closed_at_expiry() {
    let idp = common::browser::start_devidp(DevIdpOptions::default()).await;
    let (upstream, received, upstream_closed) = counting_ws_upstream().await;
    let proxy = Proxy::start(&provider_config(idp.issuer(), upstream, "")).await;
    wait_ready(&proxy, 200, Duration::from_secs(20)).await;
    let exp = idp.now() + 4;
    let token = idp.sign(
        Header::new(Algorithm::RS256),
        &json!({"iss": idp.issuer(), "sub": "alice", "aud": "api://messaging", "iat": idp.now(), "exp": exp}),
    );

    let client = std::thread::spawn({
        let addr = proxy.addr;
        move || -> (Vec<u8>, u64) {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            write!(
                stream,
                "GET {CHAT} HTTP/1.1\r\nHost: x\r\nOrigin: {ORIGIN}\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            assert!(
                head.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            // A masked binary frame announcing 1 GiB (zero mask: payload as is).
            let mut header = vec![0x82, 0x80 | 127];
            header.extend_from_slice(&(1u64 << 30).to_be_bytes());
            header.extend_from_slice(&[0, 0, 0, 0]);
            stream.write_all(&header).unwrap();
            // Trickle 1 KiB every 50 ms, reading whatever comes back, until
            // the proxy ends the connection.
            stream
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut from_proxy = Vec::new();
            let mut trickled = 0u64;
            let chunk = [b'x'; 1024];
            let started = Instant::now();
            let mut buf = [0u8; 4096];
            while started.elapsed() < Duration::from_secs(30) {
                if stream.write_all(&chunk).is_ok() {
                    trickled += chunk.len() as u64;
                }
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => from_proxy.extend_from_slice(&buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            (from_proxy, trickled)
        }
    });

    // Streamed, not buffered: the upstream sees the trickle while the
    // frame is far from complete.
    let deadline = Instant::now() + Duration::from_secs(3);
    while received.load(Ordering::SeqCst) < 14 + 4096 {
        assert!(
            Instant::now() < deadline,
            "the trickle does not reach the upstream: {} bytes\n{}",
            received.load(Ordering::SeqCst),
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (from_proxy, trickled) = tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    // The connection ended with a close frame 4001 at `exp` (the whole
    // second it names, plus the 1 s the contract allows, plus slack).
    assert!(
        idp.now() <= exp + 5,
        "closed late: {} s after exp",
        idp.now() - exp
    );
    assert!(from_proxy.len() >= 4, "no close frame: {from_proxy:?}");
    assert_eq!(from_proxy[0], 0x88, "not a close frame: {from_proxy:?}");
    assert_eq!(
        u16::from_be_bytes([from_proxy[2], from_proxy[3]]),
        4001,
        "{from_proxy:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !upstream_closed.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream connection was left open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let forwarded = received.load(Ordering::SeqCst);
    assert!(
        forwarded <= 14 + trickled,
        "more reached the upstream ({forwarded}) than the client sent ({trickled})"
    );
    assert!(
        forwarded < 1 << 30,
        "the announced frame cannot have completed"
    );
}
