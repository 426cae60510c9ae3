//! Operating portcullis: the `check` command, the admin token, reloads by
//! API and by SIGHUP, shutdown, and cutting clients that stop reading.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;

fn config(backend: std::net::SocketAddr, status: &str, admin_extra: &str) -> String {
    format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
threads: 1
admin: {{address: "{{ADMIN}}"{admin_extra}}}
messengers:
  open: {{authentication: {{enabled: false}}}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: site, messenger: open, upstream: chat, status: {status}, allowed_origins: ["https://www.example.com"]}}
routes:
  - {{path_prefix: /v1}}
logging: {{format: text, level: info}}
"#
    )
}

fn portcullis(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("portcullis runs")
}

#[test]
fn check_prints_every_error_with_its_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        r#"
listen: [{address: "127.0.0.1:99999"}]
messengers: {m: {authentication: {enabled: true, provider: nowhere}}}
upstreams: {u: {servers: ["127.0.0.1:9000"]}}
deployments:
  - {id: d, messenger: m, upstream: u, allowed_origins: ["https://ok.example", "not an origin"]}
routes: [{path_prefix: /v1}]
colour: blue
"#,
    )
    .unwrap();
    let out = portcullis(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "listen[0].address: `127.0.0.1:99999` is not an address",
        "messengers.m.authentication.provider: unknown provider `nowhere`",
        "deployments[0].allowed_origins[1]: not an origin",
        "colour: unknown key",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        config("127.0.0.1:9000".parse().unwrap(), "active", ""),
    )
    .unwrap();
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("{PROXY}", "127.0.0.1:8080")
        .replace("{ADMIN}", "127.0.0.1:9090");
    std::fs::write(&good, text).unwrap();
    let out = portcullis(&["check", "-c", good.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A valid file with settings that take no effect: warned about, path
    // and all, and still valid.
    let idle = dir.path().join("idle.yaml");
    std::fs::write(
        &idle,
        std::fs::read_to_string(&good).unwrap().replace(
            "upstreams:\n",
            "upstreams:\n  spare: {servers: [\"127.0.0.1:9001\"]}\n",
        ),
    )
    .unwrap();
    let out = portcullis(&["check", "-c", idle.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("idle.yaml: warning: upstreams.spare: no deployment uses this upstream"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&portcullis(&["check", "-c", good.to_str().unwrap()]).stderr)
            .contains("warning"),
        "the good file has nothing to warn about"
    );

    let missing = portcullis(&["check", "-c", "/no/such/file.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /no/such/file.yaml"));

    // `run` refuses to start on an invalid file.
    let run = portcullis(&["run", "-c", bad.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("not starting"));
}

#[test]
fn version_prints_the_crate_version() {
    let out = portcullis(&["version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn an_admin_token_guards_everything_but_health() {
    let backend = start_backend().await;
    let proxy = Proxy::start_with_env(
        &config(backend, "active", ", token: {env: TEST_ADMIN_TOKEN}"),
        &[("TEST_ADMIN_TOKEN", "open-sesame")],
    )
    .await;
    let client = reqwest::Client::new();
    for path in ["/metrics", "/admin/connections"] {
        let resp = client.get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let wrong = client
            .get(proxy.admin_url(path))
            .bearer_auth("open-sesamE")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = client
            .get(proxy.admin_url(path))
            .bearer_auth("open-sesame")
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    let reload = client
        .post(proxy.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 401);
    for path in ["/healthz", "/readyz"] {
        let resp = client.get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    assert!(!proxy.log_text().contains("open-sesame"));
}

#[tokio::test]
async fn reload_applies_a_valid_file_and_rejects_an_invalid_one() {
    let backend = start_backend().await;
    let proxy = Proxy::start(&config(backend, "active", "")).await;
    let url = proxy.url("/v1/x?deploymentId=site");
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    let original = std::fs::read_to_string(&proxy.config_path).unwrap();

    let (mut ws, _) = proxy
        .open_chat("/v1/chat?deploymentId=site", "https://www.example.com")
        .await;

    // Deactivate the deployment through the admin API.
    std::fs::write(
        &proxy.config_path,
        original.replace("status: active", "status: inactive"),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let resp = client
        .post(proxy.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["reloaded"], true);
    assert_eq!(body["summary"]["closed_connections"], 1);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 403);
    // Its live connection was closed as revoked.
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((4002, "deployment deactivated".to_string()))
    );

    // An invalid file is refused; the previous config keeps serving.
    std::fs::write(
        &proxy.config_path,
        original.replace("status: active", "status: sometimes"),
    )
    .unwrap();
    let resp = client
        .post(proxy.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("deployments[0].status"),
        "{body}"
    );
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 403);

    // SIGHUP reloads too.
    std::fs::write(&proxy.config_path, &original).unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while reqwest::get(&url).await.unwrap().status() != 200 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        proxy
            .metric("portcullis_config_reloads_total", &[("result", "ok")])
            .await,
        Some(2.0)
    );
    assert_eq!(
        proxy
            .metric("portcullis_config_reloads_total", &[("result", "rejected")])
            .await,
        Some(1.0)
    );
}

/// SIGTERM drains (README, Command line): at once `/readyz` answers 503
/// `draining` and new WebSocket upgrades are refused with 503 and
/// `Retry-After`, while live chats and plain requests go on for
/// `shutdown.drain_grace`; then every live WebSocket gets 1001, the closes
/// spread over `shutdown.close_window` rather than all at once, and the
/// process exits cleanly.
#[tokio::test]
async fn sigterm_drains_then_closes_live_connections_spread_over_the_window() {
    let backend = start_backend().await;
    let config = format!(
        "{}shutdown: {{drain_grace: 2s, close_window: 2s}}\n",
        config(backend, "active", "")
    );
    let mut proxy = Proxy::start(&config).await;
    let mut chats = Vec::new();
    for _ in 0..20 {
        let (ws, _) = proxy
            .open_chat("/v1/chat?deploymentId=site", "https://www.example.com")
            .await;
        chats.push(ws);
    }
    assert_eq!(
        reqwest::get(proxy.admin_url("/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    proxy.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    let ready = loop {
        let ready = reqwest::get(proxy.admin_url("/readyz")).await.unwrap();
        if ready.status() == 503 {
            break ready.json::<serde_json::Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ready["status"], "draining", "{ready}");
    // Within the grace: a new chat is sent elsewhere, the rest is served.
    let refused = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=site"),
        &[("Origin", "https://www.example.com")],
    )
    .await;
    assert_eq!(refused_status(&refused), 503);
    assert_eq!(refused_json(&refused)["error"], "draining");
    let page = reqwest::get(proxy.url("/v1/page?deploymentId=site"))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(
        echo(&mut chats[0], "still here").await["text"],
        "still here"
    );

    // Then every chat closes with 1001, not all in the same instant.
    let started = Instant::now();
    let mut closed_at = Vec::new();
    for ws in &mut chats {
        assert_eq!(
            closed_with(ws, Duration::from_secs(15)).await,
            Some((1001, "server shutting down".to_string())),
            "{}",
            proxy.log_text()
        );
        closed_at.push(started.elapsed());
    }
    let spread = closed_at
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*closed_at.iter().min().unwrap());
    assert!(
        spread >= Duration::from_millis(500),
        "20 closes within {spread:?}: not spread over the 2 s window"
    );
    let status = proxy
        .wait_exit(Duration::from_secs(20))
        .expect("portcullis exits after SIGTERM");
    // A clean exit: status 0, not death by a signal (which has no code).
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", proxy.log_text());
}

/// SIGINT is the immediate stop (README, Command line): no grace period
/// for live connections, but still a clean exit of the process.
#[tokio::test]
async fn sigint_stops_the_process_cleanly() {
    let backend = start_backend().await;
    let mut proxy = Proxy::start(&config(backend, "active", "")).await;
    let (mut ws, _) = proxy
        .open_chat("/v1/chat?deploymentId=site", "https://www.example.com")
        .await;
    proxy.signal("INT");
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("portcullis exits after SIGINT");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", proxy.log_text());
    assert!(
        proxy.log_text().contains("SIGINT received"),
        "{}",
        proxy.log_text()
    );
    // The live connection ended with the process, and nothing listens any more.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the WebSocket outlived the process");
    assert!(std::net::TcpStream::connect(proxy.addr).is_err());
}

/// A reload that removes a deployment closes its live connections (as
/// `deployment deactivated`, README: Live connections) and makes its id
/// unknown; the other deployments keep serving, their connections too.
#[tokio::test]
async fn reload_removing_a_deployment_closes_it_and_forgets_its_id() {
    let backend = start_backend().await;
    let two = config(backend, "active", "").replace(
        "routes:",
        "  - {id: other, messenger: open, upstream: chat, allowed_origins: [\"https://www.example.com\"]}\nroutes:",
    );
    let proxy = Proxy::start(&two).await;
    let origin = "https://www.example.com";
    let (mut doomed, _) = proxy.open_chat("/v1/chat?deploymentId=site", origin).await;
    let (mut kept, _) = proxy.open_chat("/v1/chat?deploymentId=other", origin).await;

    let without_site: String = std::fs::read_to_string(&proxy.config_path)
        .unwrap()
        .lines()
        .filter(|l| !l.contains("id: site"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(without_site.contains("id: other"));
    std::fs::write(&proxy.config_path, without_site).unwrap();
    let resp = reqwest::Client::new()
        .post(proxy.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["summary"]["closed_connections"], 1, "{body}");

    assert_eq!(
        closed_with(&mut doomed, CLOSE_DEADLINE).await,
        Some((4002, "deployment deactivated".to_string()))
    );
    let gone = reqwest::get(proxy.url("/v1/x?deploymentId=site"))
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let body: serde_json::Value = gone.json().await.unwrap();
    assert_eq!(body["error"], "unknown_deployment");
    let refused = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=site"),
        &[("Origin", origin)],
    )
    .await;
    assert_eq!(refused_status(&refused), 404);

    assert_eq!(echo(&mut kept, "still here").await["text"], "still here");
    assert_eq!(
        reqwest::get(proxy.url("/v1/x?deploymentId=other"))
            .await
            .unwrap()
            .status(),
        200
    );
    // The closed connection leaves the registry once its request ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counts = proxy
            .admin_json(reqwest::Method::GET, "/admin/connections")
            .await;
        if counts["total"] == 1 && counts["by_deployment"]["site"].as_u64().unwrap_or(0) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{counts}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that never reads cannot keep a revoked connection alive: the
/// close frame cannot be written, so the client socket is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_a_forced_close() {
    let backend = start_backend().await;
    let proxy = Proxy::start(&config(backend, "active", "")).await;
    let mut stream = std::net::TcpStream::connect(proxy.addr).unwrap();
    write!(
        stream,
        "GET /v1/chat?deploymentId=site HTTP/1.1\r\nHost: x\r\nOrigin: https://www.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    // Send large masked frames and never read the echoes, until the
    // buffers between backend, proxy and client are full.
    stream.set_nonblocking(true).unwrap();
    let payload = vec![b'a'; 64 * 1024];
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the payload as is
    frame.extend_from_slice(&payload);
    let started = Instant::now();
    let mut stalled_since: Option<Instant> = None;
    let mut offset = 0;
    while started.elapsed() < Duration::from_secs(20) {
        match stream.write(&frame[offset..]) {
            Ok(n) if n > 0 => {
                offset = (offset + n) % frame.len();
                stalled_since = None;
            }
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                panic!(
                    "the connection broke while filling it: {e}\n{}",
                    proxy.log_text()
                );
            }
            _ => {
                // The pipe is full: the proxy no longer reads from us.
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(500) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let closed = proxy
        .admin_json(
            reqwest::Method::DELETE,
            "/admin/connections?deployment=site",
        )
        .await;
    assert_eq!(closed["closed"], 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts = proxy
            .admin_json(reqwest::Method::GET, "/admin/connections")
            .await;
        if counts["total"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled connection was never cut"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stream);
}

/// `portcullis completions SHELL` prints a script the shell accepts, naming
/// every subcommand; an unknown shell is a usage error.
#[test]
fn completions_are_valid_shell_naming_every_subcommand() {
    let out = portcullis(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for sub in ["run", "check", "demo", "schema", "version", "completions"] {
        assert!(script.contains(sub), "bash completion lacks {sub}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.bash");
    std::fs::write(&file, &script).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let unknown = portcullis(&["completions", "cmd.exe"]);
    assert_eq!(unknown.status.code(), Some(2));
}

/// A WebSocket admitted before SIGTERM whose upstream answers only after
/// the shutdown's close pass still gets its 1001: the pass cannot see it,
/// so it closes itself as it registers.
#[tokio::test]
async fn a_handshake_whose_101_comes_after_the_close_pass_still_gets_1001() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = start_backend().await;
    // A relay that tells the test when the proxy's request arrived, then
    // holds the backend's answer back for 2.5 s: past the drain grace (1 s)
    // and the close pass at its end, within the close window (2 s) that
    // the process still runs for.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut arrived_tx = Some(arrived_tx);
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(backend).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let mut first = vec![0u8; 4096];
            let n = client_read.read(&mut first).await.unwrap_or(0);
            let _ = server_write.write_all(&first[..n]).await;
            if let Some(tx) = arrived_tx.take() {
                let _ = tx.send(());
            }
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            });
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    let config = format!(
        "{}shutdown: {{drain_grace: 1s, close_window: 2s}}\n",
        config(relay, "active", "")
    );
    let mut proxy = Proxy::start(&config).await;
    let url = proxy.ws_url("/v1/chat?deploymentId=site");
    let handshake =
        tokio::spawn(
            async move { ws_connect(&url, &[("Origin", "https://www.example.com")]).await },
        );
    tokio::time::timeout(Duration::from_secs(10), arrived)
        .await
        .expect("the handshake reached the upstream")
        .unwrap();
    proxy.signal("TERM");
    let (mut ws, _) = handshake
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("admitted before SIGTERM: {e}\n{}", proxy.log_text()));
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((1001, "server shutting down".to_string())),
        "{}",
        proxy.log_text()
    );
    let status = proxy
        .wait_exit(Duration::from_secs(20))
        .expect("portcullis exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", proxy.log_text());
}
