//! Connection capacity: a live WebSocket holds exactly two descriptors (a
//! forced close needs no third), and handshakes beyond the process's or a
//! deployment's connection ceiling get a clean 503 while plain HTTP passes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const ORIGIN: &str = "https://www.example.com";

fn config(backend: std::net::SocketAddr, limits: &str, site_extra: &str) -> String {
    format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
threads: 1
admin: {{address: "{{ADMIN}}"}}
{limits}
messengers:
  open: {{authentication: {{enabled: false}}}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: site, messenger: open, upstream: chat, allowed_origins: ["{ORIGIN}"]{site_extra}}}
  - {{id: other, messenger: open, upstream: chat, allowed_origins: ["{ORIGIN}"]}}
routes:
  - {{path_prefix: /v1}}
logging: {{format: text, level: info}}
"#
    )
}

/// What the silent backend does once portcullis ends its side.
#[derive(Clone, Copy, PartialEq)]
enum OnEnd {
    /// Closes the connection, as a WebSocket server does.
    Close,
    /// Keeps the connection open (for a while), ignoring the end.
    Linger,
    /// Never reads after the 101 (and so never sees the end).
    Deaf,
}

/// A WebSocket server that answers every upgrade with a 101, sends nothing,
/// and reports on `ended` when portcullis ends the upstream connection.
async fn start_silent_backend(
    on_end: OnEnd,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ended, ends) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let reply = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if conn.write_all(reply).await.is_err() {
                    return;
                }
                if on_end == OnEnd::Deaf {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                // Read until portcullis ends its side of the connection.
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = ended.send(());
                if on_end == OnEnd::Linger {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    (addr, ends)
}

/// The socket descriptors a process holds.
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

/// The process's socket count once it stops changing (connections of the
/// start-up probes may still be closing), within a bounded wait.
async fn settled_sockets(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = sockets_of(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sockets_of(pid);
        if now == last || Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// Waits until the process holds `expected` sockets; the last count seen.
async fn sockets_become(pid: u32, expected: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = sockets_of(pid);
        if now == expected || Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw WebSocket handshake to portcullis; returns the client stream once
/// the 101 arrived.
async fn raw_upgrade(proxy: &Proxy) -> tokio::net::TcpStream {
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            format!(
                "GET /v1/chat?deploymentId=site HTTP/1.1\r\nHost: x\r\n\
                 Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {ORIGIN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), client.read(&mut buf))
            .await
            .expect("the 101 arrives")
            .unwrap();
        assert!(n > 0, "ended before the 101");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    client
}

/// Reads the client's side until the connection ends; the close code of the
/// close frame it got, if any.
async fn close_code_received(client: &mut tokio::net::TcpStream) -> Option<u16> {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(CLOSE_DEADLINE, async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    // An unmasked close frame: 0x88, length, code, reason.
    (received.len() >= 4 && received[0] == 0x88)
        .then(|| u16::from_be_bytes([received[2], received[3]]))
}

/// Each live WebSocket costs the portcullis process exactly its client and
/// upstream sockets; a forced close still delivers its code and ends the
/// upstream connection, and gives both descriptors back.
#[tokio::test]
async fn a_forced_close_holds_no_descriptor_and_ends_the_upstream() {
    const SOCKETS: usize = 20;
    let (backend, mut upstream_ends) = start_silent_backend(OnEnd::Close).await;
    let proxy = Proxy::start(&config(backend, "", "")).await;
    let pid = proxy.pid();
    let base = settled_sockets(pid).await;

    let mut clients = Vec::new();
    for _ in 0..SOCKETS {
        clients.push(raw_upgrade(&proxy).await);
    }
    let open = sockets_become(pid, base + 2 * SOCKETS).await;
    assert_eq!(
        open,
        base + 2 * SOCKETS,
        "{SOCKETS} live WebSockets over a base of {base} sockets"
    );

    let closed = proxy
        .admin_json(
            reqwest::Method::DELETE,
            "/admin/connections?deployment=site",
        )
        .await;
    assert_eq!(closed["closed"], SOCKETS);
    for client in &mut clients {
        assert_eq!(close_code_received(client).await, Some(4002));
    }
    for _ in 0..SOCKETS {
        tokio::time::timeout(CLOSE_DEADLINE, upstream_ends.recv())
            .await
            .expect("every upstream connection ends")
            .unwrap();
    }
    drop(clients);
    assert_eq!(sockets_become(pid, base).await, base);
}

/// An upstream that does not end its side after portcullis ended its own
/// cannot hold a forced close up: the tunnel ends without it after a grace
/// period, and the client still gets its close frame.
#[tokio::test]
async fn an_upstream_that_ignores_the_close_is_left_behind() {
    let (backend, mut upstream_ends) = start_silent_backend(OnEnd::Linger).await;
    let proxy = Proxy::start(&config(backend, "", "")).await;
    let mut client = raw_upgrade(&proxy).await;
    let closed = proxy
        .admin_json(
            reqwest::Method::DELETE,
            "/admin/connections?deployment=site",
        )
        .await;
    assert_eq!(closed["closed"], 1);
    tokio::time::timeout(CLOSE_DEADLINE, upstream_ends.recv())
        .await
        .expect("portcullis ends its side of the upstream connection")
        .unwrap();
    assert_eq!(close_code_received(&mut client).await, Some(4002));
}

/// An upstream that stops reading while the client keeps sending leaves
/// portcullis blocked writing to it; a forced close must not wait for that
/// write: the client still gets its close frame.
#[tokio::test]
async fn a_forced_close_does_not_wait_for_an_upstream_that_stopped_reading() {
    let (backend, _never) = start_silent_backend(OnEnd::Deaf).await;
    let proxy = Proxy::start(&config(backend, "", "")).await;
    let (mut reader, mut writer) = raw_upgrade(&proxy).await.into_split();
    // Large masked frames until nothing more is taken: the buffers between
    // the client, portcullis and the deaf upstream are full.
    let payload = vec![b'a'; 64 * 1024];
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&payload);
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = written.clone();
    let filling = tokio::spawn(async move {
        while writer.write_all(&frame).await.is_ok() {
            progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Stalled: no whole frame taken for half a second (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (usize::MAX, Instant::now());
    loop {
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(
            !filling.is_finished(),
            "the connection broke while filling it"
        );
        assert!(Instant::now() < deadline, "the buffers never filled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = proxy
        .admin_json(
            reqwest::Method::DELETE,
            "/admin/connections?deployment=site",
        )
        .await;
    assert_eq!(closed["closed"], 1);
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(CLOSE_DEADLINE, async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    filling.abort();
    assert!(
        received.len() >= 4 && received[0] == 0x88,
        "no close frame: {received:?}"
    );
    assert_eq!(u16::from_be_bytes([received[2], received[3]]), 4002);
}

/// The connection ceiling refuses the WebSocket past it with a 503 and
/// `Retry-After`, counts it, lets plain HTTP pass, and admits again once a
/// connection ends.
#[tokio::test]
async fn handshakes_past_the_ceiling_get_503_and_plain_http_passes() {
    let backend = start_backend().await;
    let proxy = Proxy::start(&config(backend, "limits: {max_connections: 3}", "")).await;
    let url = proxy.ws_url("/v1/chat?deploymentId=site");
    let mut held = Vec::new();
    for _ in 0..3 {
        let (ws, _) = proxy.open_chat("/v1/chat?deploymentId=site", ORIGIN).await;
        held.push(ws);
    }
    let refused = ws_connect(&url, &[("Origin", ORIGIN)]).await;
    assert_eq!(refused_status(&refused), 503);
    assert_eq!(refused_json(&refused)["error"], "connection_limit");
    match &refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert!(resp.headers().contains_key("retry-after"), "{resp:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Another deployment shares the process's ceiling.
    let other = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=other"),
        &[("Origin", ORIGIN)],
    )
    .await;
    assert_eq!(refused_status(&other), 503);
    assert_eq!(
        proxy
            .metric(
                "portcullis_connections_refused_total",
                &[("deployment", "site"), ("reason", "process_limit")]
            )
            .await,
        Some(1.0)
    );

    let plain = reqwest::get(proxy.url("/v1/x?deploymentId=site"))
        .await
        .unwrap();
    assert_eq!(plain.status(), 200, "plain HTTP is not refused");

    // Once one connection ends, a new one is admitted.
    let mut first = held.remove(0);
    first.send(Message::Close(None)).await.unwrap();
    while let Some(Ok(_)) = first.next().await {}
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ws_connect(&url, &[("Origin", ORIGIN)]).await {
            Ok((ws, _)) => {
                held.push(ws);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "no slot came back after a connection ended: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held.len(), 3);
}

/// A deployment's own ceiling refuses its handshakes beyond it and leaves
/// other deployments alone.
#[tokio::test]
async fn a_deployment_ceiling_is_its_own() {
    let backend = start_backend().await;
    let proxy = Proxy::start(&config(
        backend,
        "limits: {max_connections: 10}",
        ", max_connections: 1",
    ))
    .await;
    let (_site, _) = proxy.open_chat("/v1/chat?deploymentId=site", ORIGIN).await;
    let refused = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=site"),
        &[("Origin", ORIGIN)],
    )
    .await;
    assert_eq!(refused_status(&refused), 503);
    assert_eq!(refused_json(&refused)["error"], "connection_limit");
    let mut others = Vec::new();
    for _ in 0..3 {
        let (ws, _) = proxy.open_chat("/v1/chat?deploymentId=other", ORIGIN).await;
        others.push(ws);
    }
    let metrics = proxy.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "portcullis_connections_refused_total",
            &[("deployment", "site"), ("reason", "deployment_limit")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "portcullis_connections_refused_total",
            &[("deployment", "other")]
        ),
        None,
        "{metrics}"
    );
}

/// `check` refuses a ceiling of 0 and warns about one the descriptor limit
/// cannot hold (the running process would lower it).
#[test]
fn check_refuses_a_zero_ceiling_and_warns_about_one_too_high() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, limits: &str| {
        let path = dir.path().join(name);
        let text = config("127.0.0.1:9000".parse().unwrap(), limits, "")
            .replace("{PROXY}", "127.0.0.1:8080")
            .replace("{ADMIN}", "127.0.0.1:9090");
        std::fs::write(&path, text).unwrap();
        path
    };
    let check = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "-c"])
            .arg(path)
            .output()
            .unwrap()
    };
    let zero = check(&write("zero.yaml", "limits: {max_connections: 0}"));
    assert_eq!(zero.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&zero.stderr).contains("limits.max_connections"));

    let huge = check(&write("huge.yaml", "limits: {max_connections: 9000000}"));
    let stderr = String::from_utf8_lossy(&huge.stderr);
    assert_eq!(huge.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: limits.max_connections 9000000"),
        "{stderr}"
    );
}
