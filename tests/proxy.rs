//! The proxy end to end: a real `portcullis` process on loopback in front of
//! the echo backend, driven by real HTTP and WebSocket clients.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const WEB_ORIGIN: &str = "https://www.example.com";

fn config(backend: std::net::SocketAddr, extra_upstream_servers: &str) -> String {
    format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
threads: 1
admin: {{address: "{{ADMIN}}"}}
providers:
  idp: {{issuer: "https://idp.example.com", client_id: portcullis}}
messengers:
  open: {{authentication: {{enabled: false}}}}
  secured: {{authentication: {{enabled: true, provider: idp}}}}
upstreams:
  chat: {{servers: ["{backend}"{extra_upstream_servers}], health_check: {{path: /healthz, interval: 1s}}}}
deployments:
  - {{id: web, messenger: open, upstream: chat, allowed_origins: ["{WEB_ORIGIN}"]}}
  - {{id: app, messenger: open, upstream: chat, allowed_origins: ["{WEB_ORIGIN}"], allow_missing_origin: true}}
  - {{id: paused, messenger: open, upstream: chat, status: inactive, allow_all_origins: true}}
  - {{id: secure, messenger: secured, upstream: chat, allow_all_origins: true}}
routes:
  - {{path_prefix: /v1}}
  - {{path_prefix: /fixed, deployment: app, name: fixed}}
logging: {{format: json, level: info}}
"#
    )
}

async fn start() -> Proxy {
    let backend = start_backend().await;
    Proxy::start(&config(backend, "")).await
}

#[tokio::test]
async fn websocket_upgrade_passes_with_subprotocol_negotiation() {
    let proxy = start().await;
    let (mut ws, response) = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=web"),
        &[
            ("Origin", WEB_ORIGIN),
            ("Sec-WebSocket-Protocol", "unknown.v9, chat.v2"),
        ],
    )
    .await
    .expect("the upgrade passes");
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["protocol"], "chat.v2");
    let reply = echo(&mut ws, "hello through portcullis").await;
    assert_eq!(reply["text"], "hello through portcullis");
    assert_eq!(reply["from"], "anonymous");
    // Binary frames pass untouched too.
    use futures_util::SinkExt;
    ws.send(Message::Binary(vec![0u8, 1, 2, 255].into()))
        .await
        .unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back, Message::Binary(vec![0u8, 1, 2, 255].into()));
}

/// The vendored pingora-core reads an upgraded tunnel into a buffer that
/// starts at 1 KiB, doubles while reads fill it and drops back when the
/// socket is drained (vendor/pingora-core/PATCHED.md §1): frames of every
/// size around those steps, alone and in bursts, must come back byte for
/// byte and in order.
#[tokio::test]
async fn frames_of_every_size_cross_the_tunnel_intact() {
    use futures_util::SinkExt;
    let proxy = start().await;
    let (mut ws, _) = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=web"),
        &[("Origin", WEB_ORIGIN)],
    )
    .await
    .expect("the upgrade passes");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    let payload = |seq: usize, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| (seq.wrapping_mul(31).wrapping_add(i)) as u8)
            .collect()
    };
    let sizes = [
        1, 1023, 1024, 1025, 2048, 4095, 4096, 16_384, 65_535, 65_536, 65_537, 200_000, 3, 131_077,
        2,
    ];
    let mut seq = 0;
    // One at a time (the buffer drains between frames), then in bursts
    // (reads fill and the buffer grows), twice, so a grown buffer is also
    // shrunk and grown again.
    for burst in [1, 1, sizes.len(), 4, sizes.len()] {
        for chunk in sizes.chunks(burst) {
            let first = seq;
            for &len in chunk {
                ws.feed(Message::Binary(payload(seq, len).into()))
                    .await
                    .unwrap();
                seq += 1;
            }
            ws.flush().await.unwrap();
            for (i, &len) in chunk.iter().enumerate() {
                let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await
                    .expect("an echo within 10 s")
                    .expect("the tunnel is open")
                    .expect("a frame");
                let Message::Binary(data) = back else {
                    panic!("expected the binary echo of frame {}", first + i)
                };
                assert_eq!(
                    data.len(),
                    len,
                    "frame {} came back with another length",
                    first + i
                );
                assert!(
                    data[..] == payload(first + i, len)[..],
                    "frame {} came back with other bytes",
                    first + i
                );
            }
        }
    }
}

/// The identity headers the backend received (names compared
/// case-insensitively with `_` read as `-`, as the stripping does).
fn identity_headers_seen(headers: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    headers
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| {
            name.replace('_', "-")
                .to_ascii_lowercase()
                .starts_with("x-auth-")
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// On a deployment without authentication, the client's identity headers
/// are removed and the backend gets exactly one: `X-Auth-Deployment`, naming
/// the deployment that admitted the request (SPEC §4), never the client's.
#[tokio::test]
async fn an_anonymous_request_reaches_the_backend_with_its_deployment_only() {
    let proxy = start().await;
    let spoofed = [
        ("Origin", WEB_ORIGIN),
        ("X-Auth-Subject", "admin"),
        ("x_auth_subject", "admin"),
        ("X_AUTH_EMAIL", "ceo@example.com"),
        ("x-auth-groups", "root"),
        ("X-Auth-Deployment", "app"),
        ("x_auth_deployment", "paused"),
        ("X-Forwarded-For", "6.6.6.6"),
    ];
    let only_the_deployment = vec![("x-auth-deployment".to_string(), serde_json::json!(["web"]))];
    let (mut ws, _) = ws_connect(&proxy.ws_url("/v1/chat?deploymentId=web"), &spoofed)
        .await
        .unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(
        identity_headers_seen(&welcome["headers"]),
        only_the_deployment
    );
    assert_eq!(welcome["user"], "anonymous");
    let headers = &welcome["headers"];
    assert_eq!(headers["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(headers["x-forwarded-proto"], serde_json::json!(["http"]));

    // Plain HTTP on a messaging route gets the same treatment.
    let client = reqwest::Client::new();
    let mut req = client.get(proxy.url("/v1/echo?deploymentId=web"));
    for (k, v) in &spoofed {
        req = req.header(*k, *v);
    }
    let body: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
    assert_eq!(identity_headers_seen(&body["headers"]), only_the_deployment);
    assert_eq!(body["path"], "/v1/echo");

    // A route with a fixed deployment names that deployment.
    let body: serde_json::Value = client
        .get(proxy.url("/fixed/echo"))
        .header("X-Auth-Deployment", "web")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        identity_headers_seen(&body["headers"]),
        vec![("x-auth-deployment".to_string(), serde_json::json!(["app"]))]
    );
}

#[tokio::test]
async fn refusals_have_specific_statuses_and_json_bodies() {
    let proxy = start().await;
    let client = reqwest::Client::new();
    let cases = [
        ("/v1/chat?deploymentId=nope", 404, "unknown_deployment"),
        ("/elsewhere", 404, "not_found"),
        ("/v1/chat", 400, "invalid_deployment_id"),
        (
            "/v1/chat?deploymentId=web&deploymentId=app",
            400,
            "invalid_deployment_id",
        ),
        ("/v1/chat?deploymentId=paused", 403, "deployment_inactive"),
        ("/v1/chat?deploymentId=secure", 401, "unauthorized"),
        ("/v1/a%2fb?deploymentId=web", 400, "bad_request"),
        ("/.auth/nothing-here", 404, "not_found"),
    ];
    for (path, status, code) in cases {
        let resp = client.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], code, "{path}");
        assert!(body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
    }
    let resp = client
        .get(proxy.url("/v1/chat?deploymentId=web"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["cache-control"], "no-store");

    // WebSocket upgrades: cross-site hijacking attempts and missing origins.
    let evil = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=web"),
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(refused_status(&evil), 403);
    assert_eq!(refused_json(&evil)["error"], "origin_not_allowed");
    match &evil {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.headers()["cache-control"], "no-store")
        }
        _ => unreachable!("refused above"),
    }
    let missing = ws_connect(&proxy.ws_url("/v1/chat?deploymentId=web"), &[]).await;
    assert_eq!(refused_status(&missing), 403);
    assert_eq!(refused_json(&missing)["error"], "origin_required");
    let native_app = ws_connect(&proxy.ws_url("/v1/chat?deploymentId=app"), &[]).await;
    assert!(
        native_app.is_ok(),
        "a deployment with allow_missing_origin accepts apps"
    );
    let secure = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=secure"),
        &[("Origin", WEB_ORIGIN)],
    )
    .await;
    assert_eq!(refused_status(&secure), 401);
    let body = refused_json(&secure);
    assert_eq!(body["reason"], "no_credentials");
    let fixed = ws_connect(&proxy.ws_url("/fixed/room"), &[("Origin", WEB_ORIGIN)]).await;
    assert!(
        fixed.is_ok(),
        "a fixed-deployment route needs no deploymentId"
    );
}

/// `/.auth/` belongs to portcullis even where a route covers every path:
/// a path there that is not one of its endpoints is 404 and never reaches
/// the backend.
#[tokio::test]
async fn the_auth_prefix_is_reserved_even_under_a_catch_all_route() {
    let (backend, seen) = start_recording_backend().await;
    let proxy = Proxy::start(&format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
threads: 1
admin: {{address: "{{ADMIN}}"}}
messengers: {{open: {{authentication: {{enabled: false}}}}}}
upstreams: {{chat: {{servers: ["{backend}"]}}}}
deployments:
  - {{id: web, messenger: open, upstream: chat, allow_all_origins: true}}
routes: [{{path_prefix: /, deployment: web}}]
"#
    ))
    .await;
    // The catch-all route does reach the backend...
    let ok = reqwest::get(proxy.url("/anything/else")).await.unwrap();
    assert_eq!(ok.status(), 200);
    // ...but not under /.auth.
    for path in ["/.auth/x", "/.auth", "/.auth/x/y?deploymentId=web"] {
        let resp = reqwest::get(proxy.url(path)).await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{path}");
    }
    let ws = ws_connect(&proxy.ws_url("/.auth/x"), &[("Origin", WEB_ORIGIN)]).await;
    assert_eq!(refused_status(&ws), 404);
    let after = reqwest::get(proxy.url("/after")).await.unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(paths(&seen), ["/anything/else", "/after"]);
}

/// What the recording backend saw of one request.
#[derive(Debug, Clone)]
struct Recorded {
    /// The request target as it arrived (path and query).
    path: String,
    /// Header names (lowercase) and values, in order.
    headers: Vec<(String, String)>,
}

type Recording = std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>;

fn paths(seen: &Recording) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|r| r.path.clone())
        .collect()
}

/// A backend that answers every request 200 and records its target and
/// headers.
async fn start_recording_backend() -> (std::net::SocketAddr, Recording) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                loop {
                    let mut request_line = String::new();
                    if conn.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut headers = Vec::new();
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((name, value)) = line.trim_end().split_once(':') {
                            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
                        }
                    }
                    if let Some(path) = request_line.split(' ').nth(1) {
                        log.lock().unwrap().push(Recorded {
                            path: path.to_string(),
                            headers,
                        });
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if conn.get_mut().write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Every refusal portcullis answers itself is marked `Cache-Control:
/// no-store`, the rate limit's 429 included (the others are checked in
/// `refusals_have_specific_statuses_and_json_bodies`).
#[tokio::test]
async fn a_rate_limited_answer_is_not_cached() {
    let backend = start_backend().await;
    let proxy = Proxy::start(&format!(
        "{}rate_limits: {{per_client: {{per_minute: 1, burst: 1}}}}\n",
        config(backend, "")
    ))
    .await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = client
            .post(proxy.url("/.auth/token"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            assert_eq!(resp.headers()["cache-control"], "no-store");
            assert!(resp.headers().contains_key("retry-after"));
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"], "rate_limited");
            return;
        }
    }
    panic!("never rate limited: {statuses:?}");
}

#[tokio::test]
async fn malformed_requests_get_4xx_never_5xx_or_a_crash() {
    let proxy = start().await;
    let raw = |request: Vec<u8>| {
        let mut stream = std::net::TcpStream::connect(proxy.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(&request).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    };
    let non_utf8 = raw(
        b"GET /v1/\xff\xfe?deploymentId=web HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    assert!(non_utf8.starts_with("HTTP/1.1 400"), "{non_utf8}");
    let huge_header = format!(
        "GET /v1/chat?deploymentId=web HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let huge = raw(huge_header.into_bytes());
    let status: u16 = huge.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(
        huge.is_empty() || (400..500).contains(&status),
        "huge header answered {huge:.80}"
    );
    let garbage = raw(b"\x16\x03\x01\x00\xa5garbage\r\n\r\n".to_vec());
    assert!(!garbage.contains(" 500 "), "{garbage}");
    let encoded_dots = raw(
        b"GET /v1/%2e%2e/admin?deploymentId=web HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    assert!(encoded_dots.starts_with("HTTP/1.1 400"), "{encoded_dots}");
    let dot_segments = raw(
        b"GET /v1/../admin?deploymentId=web HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    assert!(dot_segments.starts_with("HTTP/1.1 400"), "{dot_segments}");
    let absolute = raw(b"GET http://evil.example/v1?deploymentId=web HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec());
    assert!(
        absolute.starts_with("HTTP/1.1 400") || absolute.starts_with("HTTP/1.1 404"),
        "{absolute}"
    );
    // Still serving afterwards.
    let ok = reqwest::get(proxy.url("/v1/x?deploymentId=web"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn the_registry_closes_an_idle_connection_with_the_revoked_code() {
    let proxy = start().await;
    let (mut ws, _) = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=web"),
        &[("Origin", WEB_ORIGIN)],
    )
    .await
    .unwrap();
    let (mut bystander, _) = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=app"),
        &[("Origin", WEB_ORIGIN)],
    )
    .await
    .unwrap();
    next_json(&mut ws).await;
    next_json(&mut bystander).await;

    let listing = proxy
        .admin_json(reqwest::Method::GET, "/admin/connections?detail")
        .await;
    assert_eq!(listing["total"], 2);
    assert_eq!(listing["by_deployment"]["web"], 1);
    let entry = listing["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["deployment"] == "web")
        .unwrap();
    assert_eq!(entry["route"], "/v1");

    let client = reqwest::Client::new();
    let requested = Instant::now();
    let closed = proxy
        .admin_json(reqwest::Method::DELETE, "/admin/connections?deployment=web")
        .await;
    assert_eq!(closed["closed"], 1);

    // The idle client gets a close frame with 4002 (SPEC §5: within 1 s;
    // the deadline here is what a loaded test machine meets).
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((4002, "session revoked".to_string()))
    );
    eprintln!("forced close delivered after {:?}", requested.elapsed());
    // Then the connection ends.
    let after = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .expect("the stream ends");
    assert!(
        matches!(after, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{after:?}"
    );

    // The other deployment's connection is untouched.
    assert_eq!(
        echo(&mut bystander, "still here").await["text"],
        "still here"
    );
    let counts = proxy
        .admin_json(reqwest::Method::GET, "/admin/connections")
        .await;
    assert_eq!(counts["total"], 1);
    assert_eq!(
        proxy
            .metric(
                "portcullis_forced_closes_total",
                &[("deployment", "web"), ("reason", "admin")]
            )
            .await,
        Some(1.0)
    );
    assert_eq!(
        proxy
            .metric("portcullis_active_connections", &[("deployment", "web")])
            .await,
        Some(0.0)
    );

    // One connection can be closed by id as well.
    let listing = proxy
        .admin_json(reqwest::Method::GET, "/admin/connections?detail")
        .await;
    let id = listing["connections"][0]["id"].as_u64().unwrap();
    let resp = client
        .delete(proxy.admin_url(&format!("/admin/connections/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        closed_with(&mut bystander, CLOSE_DEADLINE).await,
        Some((4002, "session revoked".to_string()))
    );
    let resp = client
        .delete(proxy.admin_url(&format!("/admin/connections/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// With the upstream between frames when the close comes (the echo backend
/// finishes its frame when its socket is shut down), the client gets whole
/// echo frames, then the close frame.
#[tokio::test]
async fn a_forced_close_during_traffic_follows_whole_frames() {
    let proxy = start().await;
    let (mut ws, _) = proxy
        .open_chat("/v1/chat?deploymentId=web", WEB_ORIGIN)
        .await;
    // Keep large frames flowing back from the backend while closing.
    use futures_util::SinkExt;
    let big = "x".repeat(200_000);
    for _ in 0..5 {
        ws.send(Message::Text(big.clone().into())).await.unwrap();
    }
    reqwest::Client::new()
        .delete(proxy.admin_url("/admin/connections?deployment=web"))
        .send()
        .await
        .unwrap();
    // Every frame the client receives is well-formed: echoes, then a close.
    let mut saw_close = None;
    while let Ok(Some(msg)) = tokio::time::timeout(CLOSE_DEADLINE, ws.next()).await {
        match msg {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value =
                    serde_json::from_str(t.as_str()).expect("whole echo frames only");
                assert_eq!(v["text"].as_str().unwrap().len(), big.len());
            }
            Ok(Message::Close(c)) => {
                saw_close = c.map(|c| u16::from(c.code));
                break;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("the client saw a protocol error: {e}"),
        }
    }
    assert_eq!(saw_close, Some(4002));
}

/// When the upstream is in the middle of a frame as the close comes, a close
/// frame appended there would land inside that frame's payload and corrupt
/// the stream. portcullis does not wait for the frame to finish (an upstream
/// may never finish it): it ends the connection without a close frame and
/// logs a warning (README, Live connections). The client receives exactly
/// the bytes the upstream sent, nothing after them.
#[tokio::test]
async fn a_forced_close_in_the_middle_of_a_frame_adds_nothing_to_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A text frame announcing 1000 bytes, of which only the first 10 come.
    let mut partial = vec![0x81, 126];
    partial.extend_from_slice(&1000u16.to_be_bytes());
    partial.extend_from_slice(b"0123456789");
    let sent = partial.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let partial = partial.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let mut reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec();
                reply.extend_from_slice(&partial);
                let _ = conn.write_all(&reply).await;
                // Stall mid-frame: read until the proxy shuts the socket.
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let config = config(backend, "").replace(", health_check: {path: /healthz, interval: 1s}", "");
    let proxy = Proxy::start(&config).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            format!(
                "GET /v1/chat?deploymentId=web HTTP/1.1\r\nHost: x\r\n\
                 Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {WEB_ORIGIN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Read the 101 and the partial frame.
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            if received.len() >= end + 4 + sent.len() {
                break end + 4;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the 101 and the partial frame arrive")
            .unwrap();
        assert!(
            n > 0,
            "ended early: {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    };
    assert!(received.starts_with(b"HTTP/1.1 101"));

    let closed = proxy
        .admin_json(reqwest::Method::DELETE, "/admin/connections?deployment=web")
        .await;
    assert_eq!(closed["closed"], 1);
    // The connection ends (end of stream or reset), with no byte added.
    let ended = tokio::time::timeout(CLOSE_DEADLINE, async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was never ended");
    assert_eq!(
        &received[head_end..],
        &sent[..],
        "the client must get the upstream's bytes and nothing appended"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy
        .log_text()
        .contains("forced close arrived in the middle of an upstream frame")
    {
        assert!(Instant::now() < deadline, "{}", proxy.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_dead_server_is_skipped_and_health_checks_report_it() {
    let backend = start_backend().await;
    // Bound but not listening: connects are refused for the whole test.
    let (_dead_socket, dead_port) = refused_port();
    let dead = format!("127.0.0.1:{dead_port}");
    let proxy = Proxy::start(&config(backend, &format!(", \"{dead}\""))).await;
    // Round robin would send every other request to the dead server; each
    // must still succeed through a retry or the health check.
    for i in 0..10 {
        let resp = reqwest::get(proxy.url(&format!("/v1/r{i}?deploymentId=web")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    for _ in 0..10 {
        let (ws, _) = ws_connect(
            &proxy.ws_url("/v1/chat?deploymentId=web"),
            &[("Origin", WEB_ORIGIN)],
        )
        .await
        .expect("handshakes fail over too");
        drop(ws);
    }
    // The health check marks the dead server within its interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dead_health = proxy
            .metric("portcullis_upstream_healthy", &[("server", &dead)])
            .await;
        let live_health = proxy
            .metric(
                "portcullis_upstream_healthy",
                &[("server", &backend.to_string())],
            )
            .await;
        if dead_health == Some(0.0) && live_health == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "health metrics: dead {dead_health:?}, live {live_health:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Without a health check every server counts as healthy, so round robin
/// does pick the dead one: the connect error is counted and the request
/// retried on the next server, and the client never notices.
#[tokio::test]
async fn a_refused_connection_is_retried_on_the_next_server_without_a_health_check() {
    let backend = start_backend().await;
    // Bound but not listening: connects are refused for the whole test.
    let (_dead_socket, dead_port) = refused_port();
    let dead = format!("127.0.0.1:{dead_port}");
    let config = config(backend, &format!(", \"{dead}\""))
        .replace(", health_check: {path: /healthz, interval: 1s}", "");
    let proxy = Proxy::start(&config).await;
    for i in 0..6 {
        let resp = reqwest::get(proxy.url(&format!("/v1/r{i}?deploymentId=web")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
    }
    for i in 0..4 {
        let (ws, _) = ws_connect(
            &proxy.ws_url("/v1/chat?deploymentId=web"),
            &[("Origin", WEB_ORIGIN)],
        )
        .await
        .unwrap_or_else(|e| panic!("handshake {i}: {e}"));
        drop(ws);
    }
    // Ten requests over two servers in turn: the dead one was tried.
    let connect_errors = proxy
        .metric(
            "portcullis_upstream_errors_total",
            &[("upstream", "chat"), ("kind", "connect")],
        )
        .await
        .unwrap_or(0.0);
    assert!(connect_errors >= 1.0, "{}", proxy.metrics().await);
    assert_eq!(
        proxy
            .metric(
                "portcullis_upstream_errors_total",
                &[("upstream", "chat"), ("kind", "proxy")]
            )
            .await,
        None,
        "no request failed"
    );
}

/// An upstream whose only server is down by its health check: 503
/// `no_healthy_upstream` (with `Retry-After`), without trying to connect.
#[tokio::test]
async fn an_upstream_without_a_healthy_server_gets_a_json_503() {
    // Bound but not listening: connects are refused for the whole test.
    let (_dead_socket, dead_port) = refused_port();
    let dead = format!("127.0.0.1:{dead_port}");
    let proxy = Proxy::start(&format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
threads: 1
admin: {{address: "{{ADMIN}}"}}
messengers: {{open: {{authentication: {{enabled: false}}}}}}
upstreams:
  down: {{servers: ["{dead}"], health_check: {{path: /healthz, interval: 1s}}}}
deployments:
  - {{id: web, messenger: open, upstream: down, allowed_origins: ["{WEB_ORIGIN}"]}}
routes: [{{path_prefix: /v1}}]
"#
    ))
    .await;
    // Until the first health check the server counts as up.
    let deadline = Instant::now() + Duration::from_secs(15);
    while proxy
        .metric("portcullis_upstream_healthy", &[("server", &dead)])
        .await
        != Some(0.0)
    {
        assert!(Instant::now() < deadline, "{}", proxy.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connects_before = proxy
        .metric(
            "portcullis_upstream_errors_total",
            &[("upstream", "down"), ("kind", "connect")],
        )
        .await;
    let resp = reqwest::get(proxy.url("/v1/x?deploymentId=web"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_healthy_upstream");
    let ws = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=web"),
        &[("Origin", WEB_ORIGIN)],
    )
    .await;
    assert_eq!(refused_status(&ws), 503);
    assert_eq!(refused_json(&ws)["error"], "no_healthy_upstream");
    let text = proxy
        .metrics_when(Duration::from_secs(10), |t| {
            sample(
                t,
                "portcullis_upstream_errors_total",
                &[("upstream", "down"), ("kind", "no_healthy_server")],
            ) == Some(2.0)
        })
        .await;
    assert_eq!(
        sample(
            &text,
            "portcullis_upstream_errors_total",
            &[("upstream", "down"), ("kind", "no_healthy_server")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "portcullis_upstream_errors_total",
            &[("upstream", "down"), ("kind", "connect")]
        ),
        connects_before,
        "no connection was attempted"
    );
}

/// README, The messaging handshake: an upstream that refuses the
/// connection or breaks the exchange is 502 `upstream_failed`.
#[tokio::test]
async fn an_upstream_that_resets_or_refuses_gets_a_json_502() {
    // A server that accepts and immediately resets every connection.
    let resetter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reset_addr = resetter.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in resetter.incoming().flatten() {
            let socket = socket2::Socket::from(stream);
            let _ = socket.set_linger(Some(Duration::ZERO));
            drop(socket);
        }
    });
    // Bound but not listening: connects are refused for the whole test.
    let (_refusing_socket, port) = refused_port();
    let refused = format!("127.0.0.1:{port}");
    let text = format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
threads: 1
admin: {{address: "{{ADMIN}}"}}
messengers: {{open: {{authentication: {{enabled: false}}}}}}
upstreams:
  resets: {{servers: ["{reset_addr}"]}}
  refuses: {{servers: ["{refused}"]}}
deployments:
  - {{id: r1, messenger: open, upstream: resets, allow_all_origins: true}}
  - {{id: r2, messenger: open, upstream: refuses, allow_all_origins: true}}
routes: [{{path_prefix: /v1}}]
"#
    );
    let proxy = Proxy::start(&text).await;
    for (deployment, upstream) in [("r1", "resets"), ("r2", "refuses")] {
        let resp = reqwest::get(proxy.url(&format!("/v1/x?deploymentId={deployment}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 502, "{deployment}");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "upstream_failed", "{deployment}: {body}");
        let errors = proxy.metrics().await;
        let counted: f64 = errors
            .lines()
            .filter(|l| {
                l.starts_with("portcullis_upstream_errors_total")
                    && l.contains(&format!("upstream=\"{upstream}\""))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        assert!(counted >= 1.0, "{upstream} errors not counted:\n{errors}");
    }
    let ws = ws_connect(&proxy.ws_url("/v1/x?deploymentId=r2"), &[]).await;
    assert_eq!(refused_status(&ws), 502);
    assert_eq!(refused_json(&ws)["error"], "upstream_failed");
}

#[tokio::test]
async fn metrics_count_decisions_and_pass_promtool() {
    let proxy = start().await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        client
            .get(proxy.url("/v1/x?deploymentId=web"))
            .send()
            .await
            .unwrap();
    }
    client
        .get(proxy.url("/v1/x?deploymentId=ghost"))
        .send()
        .await
        .unwrap();
    let (ws, _) = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=web"),
        &[("Origin", WEB_ORIGIN)],
    )
    .await
    .unwrap();
    let _ = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=web"),
        &[("Origin", "https://evil.example")],
    )
    .await;
    // Counters are written in the logging phase, just after the response:
    // wait for the last of them.
    let text = proxy
        .metrics_when(Duration::from_secs(10), |t| {
            sample(
                t,
                "portcullis_request_duration_seconds_count",
                &[("kind", "http")],
            )
            .is_some_and(|n| n >= 4.0)
                && sample(
                    t,
                    "portcullis_requests_total",
                    &[("deployment", "web"), ("outcome", "origin_not_allowed")],
                )
                .is_some()
        })
        .await;
    let allowed = sample(
        &text,
        "portcullis_requests_total",
        &[
            ("deployment", "web"),
            ("outcome", "allowed"),
            ("status", "200"),
        ],
    );
    assert_eq!(allowed, Some(3.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "portcullis_requests_total",
            &[("deployment", "-"), ("outcome", "unknown_deployment")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "portcullis_handshakes_total",
            &[("deployment", "web"), ("outcome", "origin_not_allowed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "portcullis_handshakes_total",
            &[("deployment", "web"), ("outcome", "upgraded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "portcullis_active_connections",
            &[("deployment", "web")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &text,
            "portcullis_request_duration_seconds_count",
            &[("kind", "http")]
        )
        .unwrap()
            >= 4.0
    );
    assert_eq!(sample(&text, "portcullis_build_info", &[]), Some(1.0));
    // The process's own gauges: a live WebSocket holds descriptors, the
    // process holds memory, and the limit is the one the README sizes with.
    let process = |name: &str| sample(&text, name, &[]).unwrap_or(0.0);
    assert!(process("process_open_fds") >= 3.0, "{text}");
    assert!(process("process_max_fds") >= process("process_open_fds"));
    assert!(process("process_resident_memory_bytes") > 1e6);
    assert!(process("process_start_time_seconds") > 1.7e9);
    drop(ws);

    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "promtool is installed (Debian package `prometheus`; scripts/setup.sh installs it)",
        );
    let mut promtool = promtool;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn every_request_decision_is_one_json_log_line_without_the_query() {
    let proxy = start().await;
    reqwest::Client::new()
        .get(proxy.url("/v1/secretpath?deploymentId=web&access_token=SHOULD-NOT-BE-LOGGED"))
        .header("user-agent", format!("probe/1.0 {}", "x".repeat(400)))
        .send()
        .await
        .unwrap();
    reqwest::get(proxy.url("/v1/x?deploymentId=ghost"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines: Vec<serde_json::Value> = proxy
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["target"] == "portcullis::access")
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 2, "{}", proxy.log_text());
    assert_eq!(lines[0]["path"], "/v1/secretpath");
    assert_eq!(lines[0]["deployment"], "web");
    assert_eq!(lines[0]["outcome"], "allowed");
    assert_eq!(lines[0]["status"], 200);
    assert!(lines[0]["latency_ms"].as_f64().is_some());
    assert!(
        lines[0]["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{}",
        lines[0]
    );
    // The client's text is bounded in the log.
    let agent = lines[0]["user_agent"].as_str().unwrap();
    assert!(
        agent.starts_with("probe/1.0 xxx") && agent.len() == 256,
        "{agent}"
    );
    assert!(lines[0]["upstream"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(lines[1]["outcome"], "unknown_deployment");
    assert!(
        lines[1]["upstream"].is_null(),
        "refused before any upstream"
    );
    assert_eq!(lines[1]["status"], 404);
    assert!(!proxy.log_text().contains("SHOULD-NOT-BE-LOGGED"));
}

/// An upgrade whose 101 is read before the end of the request's empty body
/// must keep its tunnel (cloudflare/pingora#946, patched in
/// `vendor/pingora-proxy`). This backend writes its 101 and a first frame the
/// moment it accepts, so the 101 is already waiting when the proxy starts
/// relaying: the order that lost the tunnel. With the unpatched crate this
/// fails within the first few upgrades.
#[tokio::test]
async fn upgrades_keep_their_tunnel_when_the_101_comes_first() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FIRST_FRAME: &[u8] = b"\x81\x05hello";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut reply =
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                        .to_vec();
                reply.extend_from_slice(FIRST_FRAME);
                let _ = conn.write_all(&reply).await;
                let mut sink = [0u8; 1024];
                while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    let config = config(backend, "").replace(", health_check: {path: /healthz, interval: 1s}", "");
    let proxy = Proxy::start(&config).await;
    let port = proxy
        .url("/")
        .split(':')
        .nth(2)
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    for i in 0..200 {
        let mut client = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .unwrap();
        let request = format!(
            "GET /v1/chat?deploymentId=web HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {WEB_ORIGIN}\r\n\r\n"
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        let tunnel_kept = loop {
            if received.ends_with(FIRST_FRAME) {
                break true;
            }
            match tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
                _ => break false,
            }
        };
        assert!(
            tunnel_kept,
            "upgrade {i} lost its tunnel right after the 101; received: {:?}",
            String::from_utf8_lossy(&received)
        );
    }
}

/// A certificate authority made for one test, and a certificate it issued.
struct TestCerts {
    ca_pem: String,
    cert_pem: String,
    cert_der: rustls_pki::CertificateDer<'static>,
    key_pem: String,
    key_der: Vec<u8>,
}

use tokio_rustls::rustls::pki_types as rustls_pki;

/// A new CA and a certificate it issued for `names`.
fn test_certs(names: &[&str]) -> TestCerts {
    issue(&test_ca(), names)
}

/// A certificate issued by `ca` for `names`.
fn issue(ca: &TestCa, names: &[&str]) -> TestCerts {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    TestCerts {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}

/// A TLS front for `backend` on a loopback port, with `certs`: it records
/// the SNI name of every handshake and relays the decrypted bytes.
async fn start_tls_front(
    backend: std::net::SocketAddr,
    certs: &TestCerts,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
) {
    use tokio_rustls::rustls;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certs.cert_der.clone()],
            rustls_pki::PrivateKeyDer::Pkcs8(certs.key_der.clone().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = names.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    seen.lock().unwrap().push(None);
                    return;
                };
                seen.lock()
                    .unwrap()
                    .push(tls.get_ref().1.server_name().map(str::to_string));
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, names)
}

/// A plain TCP relay to `backend` that counts the connections it accepts:
/// how many times anything reached the backend through it.
async fn start_counting_relay(
    backend: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut plain).await;
            });
        }
    });
    (addr, count)
}

/// TLS on both sides: the listener serves the configured certificate, the
/// backend learns `X-Forwarded-Proto: https`, and the upstream connection
/// is TLS with the configured SNI name, verified against the trusted roots
/// (here the test's own CA, through `SSL_CERT_FILE`). An upstream whose
/// certificate comes from another CA, or from the trusted CA but for
/// another name than the SNI host, is refused in the handshake: 502
/// `upstream_failed`, and nothing reaches the backend behind it.
#[tokio::test]
async fn tls_on_the_listener_and_to_the_upstream_with_sni() {
    let trusted_ca = test_ca();
    let certs = issue(&trusted_ca, &["localhost", "127.0.0.1", "chat.internal"]);
    // Names the SNI host, but its CA is not in `SSL_CERT_FILE`.
    let foreign = test_certs(&["localhost", "127.0.0.1", "chat.internal"]);
    // From the trusted CA, but not for the SNI host.
    let misnamed = issue(&trusted_ca, &["localhost", "127.0.0.1", "other.internal"]);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (cert, key, ca) = (
        file("tls.crt", &certs.cert_pem),
        file("tls.key", &certs.key_pem),
        file("ca.pem", &certs.ca_pem),
    );
    let backend = start_backend().await;
    let (front, sni_seen) = start_tls_front(backend, &certs).await;
    let (foreign_relay, foreign_reached) = start_counting_relay(backend).await;
    let (foreign_front, foreign_seen) = start_tls_front(foreign_relay, &foreign).await;
    let (misnamed_relay, misnamed_reached) = start_counting_relay(backend).await;
    let (misnamed_front, misnamed_seen) = start_tls_front(misnamed_relay, &misnamed).await;
    let proxy = Proxy::start_with_env(
        &format!(
            r#"
listen: [{{address: "{{PROXY}}", tls: {{cert: "{cert}", key: "{key}"}}}}]
threads: 1
admin: {{address: "{{ADMIN}}"}}
messengers: {{open: {{authentication: {{enabled: false}}}}}}
upstreams:
  chat: {{servers: ["{front}"], tls: true, sni: chat.internal}}
  foreign: {{servers: ["{foreign_front}"], tls: true, sni: chat.internal}}
  misnamed: {{servers: ["{misnamed_front}"], tls: true, sni: chat.internal}}
deployments:
  - {{id: web, messenger: open, upstream: chat, allowed_origins: ["{WEB_ORIGIN}"]}}
  - {{id: foreign, messenger: open, upstream: foreign, allowed_origins: ["{WEB_ORIGIN}"]}}
  - {{id: misnamed, messenger: open, upstream: misnamed, allowed_origins: ["{WEB_ORIGIN}"]}}
routes: [{{path_prefix: /v1}}]
"#
        ),
        &[("SSL_CERT_FILE", ca.as_str())],
    )
    .await;
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(certs.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/v1/echo?deploymentId=web",
        proxy.addr.port()
    );
    let resp = client
        .get(&url)
        .header("X-Forwarded-Proto", "http")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", proxy.log_text()));
    assert_eq!(resp.status(), 200, "{}", proxy.log_text());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["path"], "/v1/echo");
    assert_eq!(
        body["headers"]["x-forwarded-proto"],
        serde_json::json!(["https"])
    );
    assert_eq!(
        sni_seen.lock().unwrap().first().cloned(),
        Some(Some("chat.internal".to_string()))
    );
    // One crypto stack: the listener's TLS runs on aws-lc-rs (installed as
    // rustls's process default before Pingora would install ring), which
    // alone offers the post-quantum hybrid X25519MLKEM768: a client that
    // offers nothing else completes its handshake.
    {
        use rustls_pki::pem::PemObject;
        use tokio_rustls::rustls;
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768];
        let mut roots = rustls::RootCertStore::empty();
        for ca in rustls_pki::CertificateDer::pem_slice_iter(certs.ca_pem.as_bytes()) {
            roots.add(ca.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(rustls_pki::ServerName::try_from("localhost").unwrap(), tcp)
            .await;
        let tls = tls.unwrap_or_else(|e| {
            panic!("a post-quantum-only handshake failed (is ring serving TLS?): {e}")
        });
        assert_eq!(
            tls.get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| g.name()),
            Some(rustls::NamedGroup::X25519MLKEM768)
        );
    }
    // Plain HTTP is not spoken on the TLS listener.
    assert!(reqwest::get(proxy.url("/v1/echo?deploymentId=web"))
        .await
        .is_err_and(|e| !e.is_status()));

    // The upstream certificate is verified: a server whose certificate the
    // trusted roots do not vouch for, or that does not name the SNI host,
    // is never spoken to.
    for (deployment, reached, seen) in [
        ("foreign", &foreign_reached, &foreign_seen),
        ("misnamed", &misnamed_reached, &misnamed_seen),
    ] {
        let url = format!(
            "https://localhost:{}/v1/echo?deploymentId={deployment}",
            proxy.addr.port()
        );
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 502, "{deployment}: {}", proxy.log_text());
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "upstream_failed", "{deployment}: {body}");
        // The proxy did reach the TLS front, and the handshake failed
        // there (the front logs a failed handshake as `None`).
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "{deployment}: no handshake");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let handshakes = seen.lock().unwrap().clone();
        assert!(
            handshakes.iter().all(Option::is_none),
            "{deployment}: a handshake succeeded: {handshakes:?}"
        );
        assert_eq!(
            reached.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "{deployment}: the backend was reached"
        );
    }
}

/// `forwarding.trusted_proxies`: a load balancer in that list has its
/// `X-Forwarded-*` kept (the chain extended) and its `X-Forwarded-For`
/// believed for rate limits; anyone else's values are replaced.
#[tokio::test]
async fn forwarded_headers_are_believed_from_trusted_proxies_only() {
    let backend = start_backend().await;
    let limits = "rate_limits: {per_client: {per_minute: 1, burst: 1}}\n";
    let trusted = Proxy::start(&format!(
        "{}{limits}forwarding: {{trusted_proxies: [127.0.0.1/32]}}\n",
        config(backend, "")
    ))
    .await;
    let untrusted = Proxy::start(&format!("{}{limits}", config(backend, ""))).await;
    let client = reqwest::Client::new();
    let echo_headers = |proxy: &Proxy| {
        client
            .get(proxy.url("/v1/echo?deploymentId=web"))
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "chat.example.com")
            .header("X-Real-IP", "203.0.113.9")
            .header("Forwarded", "for=203.0.113.9")
            .send()
    };
    let seen: serde_json::Value = echo_headers(&trusted).await.unwrap().json().await.unwrap();
    let headers = &seen["headers"];
    assert_eq!(
        headers["x-forwarded-for"],
        serde_json::json!(["203.0.113.9, 127.0.0.1"])
    );
    assert_eq!(headers["x-forwarded-proto"], serde_json::json!(["https"]));
    assert_eq!(
        headers["x-forwarded-host"],
        serde_json::json!(["chat.example.com"])
    );
    assert!(headers.get("x-real-ip").is_none() && headers.get("forwarded").is_none());

    let seen: serde_json::Value = echo_headers(&untrusted)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(headers["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(
        headers["x-forwarded-host"],
        serde_json::json!([untrusted.addr.to_string()])
    );
    assert!(headers.get("x-real-ip").is_none() && headers.get("forwarded").is_none());

    // Rate limits key on the client behind a trusted proxy: two clients
    // each get their own bucket there, while behind an untrusted peer the
    // claimed addresses are ignored and both share the peer's.
    let token_call = |proxy: &Proxy, client_ip: &str| {
        client
            .post(proxy.url("/.auth/token"))
            .header("X-Forwarded-For", client_ip)
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    let statuses = |proxy: &Proxy| {
        let proxy_calls = [
            token_call(proxy, "198.51.100.1"),
            token_call(proxy, "198.51.100.2"),
        ];
        async move {
            let mut out = Vec::new();
            for call in proxy_calls {
                out.push(call.await.unwrap().status().as_u16());
            }
            out
        }
    };
    let behind_trusted = statuses(&trusted).await;
    assert!(
        behind_trusted.iter().all(|s| *s != 429),
        "{behind_trusted:?}"
    );
    let behind_untrusted = statuses(&untrusted).await;
    assert_eq!(behind_untrusted[1], 429, "{behind_untrusted:?}");
}

/// `forward_token: true` passes the authenticating bearer token upstream
/// (as `Authorization: Bearer`, whichever carrier brought it); without it
/// the token stays at the edge.
#[tokio::test]
async fn forward_token_decides_whether_the_bearer_token_goes_upstream() {
    use portcullis::devidp::DevIdpOptions;
    let idp = common::browser::start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let proxy = Proxy::start(&format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
threads: 1
admin: {{address: "{{ADMIN}}"}}
providers:
  dev:
    issuer: "{issuer}"
    client_id: portcullis-demo
    audiences: ["api://messaging"]
    algorithms: [RS256]
messengers:
  secured: {{authentication: {{enabled: true, provider: dev}}}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: keep, messenger: secured, upstream: chat, allowed_origins: ["{WEB_ORIGIN}"]}}
  - {{id: pass, messenger: secured, upstream: chat, allowed_origins: ["{WEB_ORIGIN}"], forward_token: true}}
routes: [{{path_prefix: /v1}}]
"#,
        issuer = idp.issuer()
    ))
    .await;
    let token = idp.mint_access_token("alice", jsonwebtoken::Algorithm::RS256);
    let bearer = format!("Bearer {token}");
    let client = reqwest::Client::new();
    let seen = |deployment: &str| {
        client
            .get(proxy.url(&format!("/v1/echo?deploymentId={deployment}")))
            .header("Authorization", bearer.as_str())
            .send()
    };
    let kept: serde_json::Value = seen("keep").await.unwrap().json().await.unwrap();
    assert_eq!(
        kept["headers"]["x-auth-subject"],
        serde_json::json!(["alice"])
    );
    assert!(kept["headers"].get("authorization").is_none(), "{kept}");
    let passed: serde_json::Value = seen("pass").await.unwrap().json().await.unwrap();
    assert_eq!(
        passed["headers"]["x-auth-subject"],
        serde_json::json!(["alice"])
    );
    assert_eq!(
        passed["headers"]["authorization"],
        serde_json::json!([bearer.as_str()])
    );

    // A token that came as a subprotocol travels as Authorization too; the
    // token subprotocol itself never reaches the backend.
    for (deployment, forwarded) in [("keep", false), ("pass", true)] {
        let (mut ws, _) = ws_connect(
            &proxy.ws_url(&format!("/v1/chat?deploymentId={deployment}")),
            &[
                ("Origin", WEB_ORIGIN),
                (
                    "Sec-WebSocket-Protocol",
                    &format!("chat.v1, authorization.bearer.{token}"),
                ),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("{deployment}: {e}\n{}", proxy.log_text()));
        let welcome = next_json(&mut ws).await;
        let headers = &welcome["headers"];
        assert_eq!(
            headers["sec-websocket-protocol"],
            serde_json::json!(["chat.v1"]),
            "{deployment}"
        );
        assert_eq!(
            headers.get("authorization").cloned(),
            forwarded.then(|| serde_json::json!([bearer.as_str()])),
            "{deployment}"
        );
    }
}

/// Sends one raw request (the target byte for byte, no client-side
/// normalization) and returns the status and JSON body.
async fn raw_get(
    addr: std::net::SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request =
        format!("GET {target} HTTP/1.1\r\nHost: chat.example.com\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// A proxy with an auth-disabled route and an authenticated one on the same
/// backend: what a path trick or a spelled-again parameter could cross.
async fn start_shared_backend_proxy(extra: &str) -> (Proxy, Recording) {
    let (backend, seen) = start_recording_backend().await;
    let proxy = Proxy::start(&format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
threads: 1
admin: {{address: "{{ADMIN}}"}}
providers:
  idp: {{issuer: "https://idp.example.com", client_id: portcullis}}
messengers:
  open: {{authentication: {{enabled: false}}}}
  secured: {{authentication: {{enabled: true, provider: idp}}}}
upstreams: {{chat: {{servers: ["{backend}"]}}}}
deployments:
  - {{id: web, messenger: open, upstream: chat, allow_all_origins: true}}
  - {{id: secure, messenger: secured, upstream: chat, allow_all_origins: true}}
routes:
  - {{path_prefix: /public, deployment: web}}
  - {{path_prefix: /support/, deployment: secure}}
  - {{path_prefix: /v1}}
  - {{path_prefix: /custom, deployment_from: {{query: dep}}}}
{extra}"#
    ))
    .await;
    (proxy, seen)
}

/// Issue 13.1: `/public/..;/support/x` is admitted under the auth-disabled
/// `/public` route, and Tomcat, Jetty and Spring cut the `;` and resolve it
/// to `/support/x`. Every form of a path parameter is a 400 that never
/// reaches the backend.
#[tokio::test]
async fn path_parameters_never_reach_the_backend() {
    let (proxy, seen) = start_shared_backend_proxy("").await;
    for target in [
        "/public/..;/support/x",
        "/public/.;/x",
        "/public/..;jsessionid=x/support/x",
        "/public/%2e%2e;/support/x",
        "/public/%2E.;/support/x",
        "/public;x/../support/x",
        "/public/x;jsessionid=1",
        "/public/..%3B/support/x",
        "/v1/..;/support/x?deploymentId=web",
    ] {
        let (status, body) = raw_get(proxy.addr, target, &[]).await;
        assert_eq!(status, 400, "{target}");
        assert_eq!(body["error"], "bad_request", "{target}");
        assert_eq!(body["reason"], "path_parameter", "{target}");
    }
    // Merged slashes cross routes the same way (`//support/x` is not under
    // `/support/` for portcullis, it is for a backend that merges them).
    for target in ["/public//support/x", "/public/%c0%ae%c0%ae/support/x"] {
        let (status, body) = raw_get(proxy.addr, target, &[]).await;
        assert_eq!(status, 400, "{target}");
        assert_eq!(body["reason"], "bad_request", "{target}");
    }
    // A `;` in the query is no path parameter.
    let (status, _) = raw_get(proxy.addr, "/public/x?q=a;b", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(paths(&seen), ["/public/x?q=a;b"]);
}

/// Issue 13.2: the deployment id parameter spelled another way beside the
/// real one (or alone) is a 400; a backend that reads `DeploymentId`,
/// `deploymentId[]` or a `;`-separated copy never gets the chance.
#[tokio::test]
async fn deployment_id_variants_never_reach_the_backend() {
    let (proxy, seen) = start_shared_backend_proxy("").await;
    for target in [
        "/v1/chat?deploymentId=web&DeploymentId=secure",
        "/v1/chat?deploymentId=web&deploymentId[]=secure",
        "/v1/chat?deploymentId%5B0%5D=secure&deploymentId=web",
        "/v1/chat?deploymentId=web&deployment%2549d=secure",
        "/v1/chat?x=1;deploymentId=secure&deploymentId=web",
        "/v1/chat?DeploymentId=web",
        "/custom/chat?dep=web&DEP=secure",
    ] {
        let (status, body) = raw_get(proxy.addr, target, &[]).await;
        assert_eq!(status, 400, "{target}");
        assert_eq!(body["error"], "invalid_deployment_id", "{target}");
        assert_eq!(body["reason"], "deployment_id_variant", "{target}");
    }
    let (status, _) = raw_get(proxy.addr, "/v1/chat?deploymentId=web&q=a;b", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(paths(&seen), ["/v1/chat?deploymentId=web&q=a;b"]);
}

/// Issue 13.3: headers some backend framework trusts to pick the path, host
/// or method are removed before proxying, in any spelling; a configured
/// `forwarding.strip_headers` replaces the list.
#[tokio::test]
async fn routing_headers_are_stripped_before_the_backend() {
    let spoofed = [
        ("X-Original-URL", "/support/admin"),
        ("X-Rewrite-URL", "/support/admin"),
        ("X_Original_URL", "/support/admin"),
        ("X-Forwarded-Prefix", "/support"),
        ("X-Forwarded-Path", "/support/admin"),
        ("X-Forwarded-Uri", "/support/admin"),
        ("X-Original-Host", "admin.internal"),
        ("X-Host", "admin.internal"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X-Tenant-Route", "blue"),
    ];
    let received = |seen: &Recording| -> Vec<String> {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        seen[0].headers.iter().map(|(n, _)| n.clone()).collect()
    };

    let (proxy, seen) = start_shared_backend_proxy("").await;
    let (status, _) = raw_get(proxy.addr, "/public/x", &spoofed).await;
    assert_eq!(status, 200);
    let names = received(&seen);
    for (name, _) in &spoofed[..11] {
        let normalized = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            !names.iter().any(|n| n.replace('_', "-") == normalized),
            "{name} reached the backend: {names:?}"
        );
    }
    assert!(names.contains(&"x-tenant-route".to_string()), "{names:?}");

    let (proxy, seen) =
        start_shared_backend_proxy("forwarding: {strip_headers: [X-Tenant-Route]}\n").await;
    let (status, _) = raw_get(proxy.addr, "/public/x", &spoofed).await;
    assert_eq!(status, 200);
    let names = received(&seen);
    assert!(!names.contains(&"x-tenant-route".to_string()), "{names:?}");
    assert!(names.contains(&"x-original-url".to_string()), "{names:?}");
}

/// Request ids: every answer carries `X-Request-Id`; the backend gets the
/// same id, never the one a client chose (unless the client is a trusted
/// proxy and the id is well-formed); refusals quote it in their body; the
/// access line has it.
#[tokio::test]
async fn each_request_has_an_id_the_backend_the_client_and_the_log_share() {
    let backend = start_backend().await;
    let proxy = Proxy::start(&config(backend, "")).await;
    let trusted = Proxy::start(&format!(
        "{}forwarding: {{trusted_proxies: [127.0.0.1/32]}}\n",
        config(backend, "")
    ))
    .await;
    let client = reqwest::Client::new();
    let response_id = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .expect("an X-Request-Id on every answer")
    };

    let resp = client
        .get(proxy.url("/v1/echo?deploymentId=web"))
        .header("X-Request-Id", "chosen-by-client")
        .send()
        .await
        .unwrap();
    let id = response_id(&resp);
    assert_ne!(id, "chosen-by-client");
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], serde_json::json!([id]));

    let resp = client
        .get(trusted.url("/v1/echo?deploymentId=web"))
        .header("X-Request-Id", "lb-1234")
        .send()
        .await
        .unwrap();
    assert_eq!(response_id(&resp), "lb-1234");
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        seen["headers"]["x-request-id"],
        serde_json::json!(["lb-1234"])
    );
    // Even a trusted proxy's malformed id is replaced.
    let resp = client
        .get(trusted.url("/v1/echo?deploymentId=web"))
        .header("X-Request-Id", "two words")
        .send()
        .await
        .unwrap();
    assert_ne!(response_id(&resp), "two words");

    // An identity prefix that also matches X-Request-Id strips the client's
    // copy, never portcullis's own.
    let short_prefix = Proxy::start(&format!(
        "{}identity_header_prefix: \"X-\"\n",
        config(backend, "")
    ))
    .await;
    let resp = client
        .get(short_prefix.url("/v1/echo?deploymentId=web"))
        .send()
        .await
        .unwrap();
    let id = response_id(&resp);
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], serde_json::json!([id]));

    // A refusal quotes the id, and the access line carries it.
    let resp = client
        .get(proxy.url("/v1/echo?deploymentId=nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let id = response_id(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["request_id"], id);
    // So does an endpoint's error.
    let resp = client
        .post(proxy.url("/.auth/token"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());
    let endpoint_id = response_id(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["request_id"], endpoint_id);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = proxy.log_text();
        let access = log
            .lines()
            .find(|l| l.contains("portcullis::access") && l.contains(&id));
        if let Some(line) = access {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["request_id"], id, "{line}");
            assert_eq!(line["status"], 404);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no access line with {id}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
