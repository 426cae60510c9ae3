//! The proxy end to end: a real `portcullis` process on loopback in front of
//! the echo backend, driven by real HTTP and WebSocket clients.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
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

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_backend() {
    let proxy = start().await;
    let spoofed = [
        ("Origin", WEB_ORIGIN),
        ("X-Auth-Subject", "admin"),
        ("x_auth_subject", "admin"),
        ("X_AUTH_EMAIL", "ceo@example.com"),
        ("x-auth-groups", "root"),
        ("X-Forwarded-For", "6.6.6.6"),
    ];
    let (mut ws, _) = ws_connect(&proxy.ws_url("/v1/chat?deploymentId=web"), &spoofed)
        .await
        .unwrap();
    let welcome = next_json(&mut ws).await;
    let headers = welcome["headers"].as_object().unwrap();
    for name in headers.keys() {
        let normalized = name.replace('_', "-").to_ascii_lowercase();
        assert!(
            !normalized.starts_with("x-auth-"),
            "{name} reached the backend"
        );
    }
    assert_eq!(welcome["user"], "anonymous");
    assert_eq!(headers["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(headers["x-forwarded-proto"], serde_json::json!(["http"]));

    // Plain HTTP on a messaging route is stripped the same way.
    let client = reqwest::Client::new();
    let mut req = client.get(proxy.url("/v1/echo?deploymentId=web"));
    for (k, v) in &spoofed {
        req = req.header(*k, *v);
    }
    let body: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
    let headers = body["headers"].as_object().unwrap();
    assert!(
        headers
            .keys()
            .all(|k| !k.replace('_', "-").starts_with("x-auth-")),
        "{headers:?}"
    );
    assert_eq!(body["path"], "/v1/echo");
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

    // WebSocket upgrades: cross-site hijacking attempts and missing origins.
    let evil = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=web"),
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(refused_status(&evil), 403);
    assert_eq!(refused_json(&evil)["error"], "origin_not_allowed");
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

    // The idle client gets a close frame with 4002 well within a second.
    let frame = tokio::time::timeout(Duration::from_secs(1), ws.next())
        .await
        .expect("the close frame arrives within 1 s")
        .expect("a frame, not end of stream")
        .expect("a valid frame");
    let elapsed = requested.elapsed();
    match frame {
        Message::Close(Some(close)) => {
            assert_eq!(close.code, CloseCode::from(4002));
            assert_eq!(close.reason.as_str(), "session revoked");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    eprintln!("forced close delivered after {elapsed:?}");
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
    match tokio::time::timeout(Duration::from_secs(1), bystander.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(close.code, CloseCode::from(4002)),
        other => panic!("expected a close frame, got {other:?}"),
    }
    let resp = client
        .delete(proxy.admin_url(&format!("/admin/connections/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn a_forced_close_waits_for_a_frame_boundary_during_traffic() {
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
    // Every frame the client receives is well-formed: echoes, then a close
    // (or, if the cut fell inside a frame, a bare end of stream).
    let mut saw_close = None;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
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

#[tokio::test]
async fn a_dead_server_is_skipped_and_health_checks_report_it() {
    let backend = start_backend().await;
    let dead = format!("127.0.0.1:{}", free_port());
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

#[tokio::test]
async fn an_upstream_that_resets_or_refuses_gets_a_json_502_or_503() {
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
    let refused = format!("127.0.0.1:{}", free_port());
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
        let status = resp.status().as_u16();
        assert!(status == 502 || status == 503, "{deployment}: {status}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body["error"] == "upstream_failed" || body["error"] == "no_healthy_upstream",
            "{body}"
        );
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
    let status = refused_status(&ws);
    assert!(status == 502 || status == 503, "{status}");
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
    // Counters are written in the logging phase, just after the response.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = proxy.metrics().await;
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
    reqwest::get(proxy.url("/v1/secretpath?deploymentId=web&access_token=SHOULD-NOT-BE-LOGGED"))
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
    assert_eq!(lines[1]["outcome"], "unknown_deployment");
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
