//! TLS end to end: a real `portcullis` process serving certificates made by
//! a CA each test generates (rcgen), driven by rustls clients. Certificates
//! chosen by SNI, reloaded on SIGHUP and `POST /admin/reload` while a
//! WebSocket through the listener keeps passing frames, a broken reload
//! refused; upstream verification against a `ca_file`; HSTS; admin TLS.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const WEB_ORIGIN: &str = "https://www.example.com";

/// A certificate issued by `ca` for `names`: (certificate PEM, key PEM).
fn issue(ca: &TestCa, names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A rustls client trusting only `ca`, on aws-lc-rs.
fn client_config(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(&ca.pem())).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type TlsClient = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A verified TLS connection to `addr` asking for `server_name`.
async fn tls_connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
) -> std::io::Result<TlsClient> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from(server_name.to_string()).unwrap(), tcp)
        .await
}

/// The certificate the listener presents to a client asking for `server_name`.
async fn served_certificate(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
) -> CertificateDer<'static> {
    let tls = tls_connect(config, addr, server_name)
        .await
        .unwrap_or_else(|e| panic!("handshake for {server_name}: {e}"));
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Waits (bounded) until the listener serves `expected` for `server_name`.
async fn await_served(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    expected: &CertificateDer<'static>,
    proxy: &Proxy,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_certificate(config, addr, server_name).await != *expected {
        assert!(
            Instant::now() < deadline,
            "{server_name}: the new certificate was not served; log:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type TlsWs = tokio_tungstenite::WebSocketStream<TlsClient>;

async fn tls_ws_next_json(ws: &mut TlsWs) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("the stream is open")
            .expect("a valid frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

async fn tls_ws_echo(ws: &mut TlsWs, text: &str) -> serde_json::Value {
    ws.send(Message::Text(text.into())).await.unwrap();
    tls_ws_next_json(ws).await
}

/// A certificate per SNI name with a default for everything else; both
/// replaced on SIGHUP while a WebSocket through the listener stays open and
/// keeps passing frames; a reload with a key that is not the certificate's
/// is refused (reload answer, metric, log line) and the listener keeps the
/// certificates it had. Portcullis's own pages carry the listener's HSTS
/// over TLS, and a plain listener's never do.
#[tokio::test]
async fn sni_certificates_reload_while_a_websocket_stays_open() {
    let ca = test_ca();
    let client = client_config(&ca);
    let dir = tempfile::tempdir().unwrap();
    let (default_pem, default_key) = issue(&ca, &["localhost"]);
    let (chat_pem, chat_key) = issue(&ca, &["chat.example.com"]);
    let default_cert = write(dir.path(), "default.crt", &default_pem);
    let default_key_file = write(dir.path(), "default.key", &default_key);
    let chat_cert = write(dir.path(), "chat.crt", &chat_pem);
    let chat_key_file = write(dir.path(), "chat.key", &chat_key);
    let backend = start_backend().await;
    let plain = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::start(&format!(
        r#"
listen:
  - address: "{{PROXY}}"
    tls:
      cert: "{default_cert}"
      key: "{default_key_file}"
      sni: [{{names: [chat.example.com], cert: "{chat_cert}", key: "{chat_key_file}"}}]
    hsts: {{max_age: 1d, include_subdomains: true}}
  - address: "{plain}"
threads: 1
admin: {{address: "{{ADMIN}}"}}
messengers: {{open: {{authentication: {{enabled: false}}}}}}
upstreams: {{chat: {{servers: ["{backend}"]}}}}
deployments:
  - {{id: web, messenger: open, upstream: chat, allowed_origins: ["{WEB_ORIGIN}"]}}
routes: [{{path_prefix: /v1}}]
"#
    ))
    .await;
    let addr = proxy.addr;

    // SNI picks the certificate; any other name, or none, gets the default.
    assert_eq!(
        served_certificate(&client, addr, "chat.example.com").await,
        der(&chat_pem)
    );
    assert_eq!(
        served_certificate(&client, addr, "localhost").await,
        der(&default_pem)
    );
    {
        // An IP address sends no SNI: the default answers (and a client
        // verifying for `chat.example.com` would refuse it, so use the
        // default's own name to check the chain is the default's).
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut unverified = (*client).clone();
        unverified.enable_sni = false;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(unverified))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("a handshake without SNI gets the default certificate");
        assert_eq!(
            tls.get_ref().1.peer_certificates().unwrap()[0],
            der(&default_pem)
        );
    }

    // A WebSocket through the TLS listener, by SNI name.
    let tls = tls_connect(&client, addr, "chat.example.com")
        .await
        .unwrap();
    let mut request = format!(
        "wss://chat.example.com:{}/v1/chat?deploymentId=web",
        addr.port()
    )
    .into_client_request()
    .unwrap();
    request
        .headers_mut()
        .insert("origin", WEB_ORIGIN.parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::client_async(request, tls)
        .await
        .unwrap_or_else(|e| panic!("upgrade over TLS: {e}\n{}", proxy.log_text()));
    assert_eq!(response.status(), 101);
    assert_eq!(tls_ws_next_json(&mut ws).await["type"], "welcome");
    assert_eq!(tls_ws_echo(&mut ws, "before").await["text"], "before");

    // New certificates on disk, then SIGHUP: new handshakes get them.
    let (chat_pem2, chat_key2) = issue(&ca, &["chat.example.com"]);
    let (default_pem2, default_key2) = issue(&ca, &["localhost"]);
    write(dir.path(), "chat.crt", &chat_pem2);
    write(dir.path(), "chat.key", &chat_key2);
    write(dir.path(), "default.crt", &default_pem2);
    write(dir.path(), "default.key", &default_key2);
    proxy.signal("HUP");
    await_served(&client, addr, "chat.example.com", &der(&chat_pem2), &proxy).await;
    await_served(&client, addr, "localhost", &der(&default_pem2), &proxy).await;
    // The WebSocket opened before the reload still passes frames both ways.
    assert_eq!(
        tls_ws_echo(&mut ws, "after sighup").await["text"],
        "after sighup"
    );
    let reloads = proxy
        .metrics_when(Duration::from_secs(5), |m| {
            sample(
                m,
                "portcullis_tls_certificate_reloads_total",
                &[("result", "ok")],
            )
            .is_some()
        })
        .await;
    assert_eq!(
        sample(
            &reloads,
            "portcullis_tls_certificate_reloads_total",
            &[("result", "ok")]
        ),
        Some(1.0)
    );
    assert!(
        reloads.contains("portcullis_tls_certificate_expiry_timestamp_seconds{"),
        "{reloads}"
    );

    // The same through the admin endpoint, with a third certificate.
    let (chat_pem3, chat_key3) = issue(&ca, &["chat.example.com"]);
    write(dir.path(), "chat.crt", &chat_pem3);
    write(dir.path(), "chat.key", &chat_key3);
    let answer = proxy
        .admin_json(reqwest::Method::POST, "/admin/reload")
        .await;
    assert_eq!(answer["reloaded"], true, "{answer}");
    assert_eq!(answer["summary"]["tls_listeners_reloaded"], 1, "{answer}");
    assert!(
        answer["summary"]["restart_required_for"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{answer}"
    );
    assert_eq!(
        served_certificate(&client, addr, "chat.example.com").await,
        der(&chat_pem3)
    );
    assert_eq!(
        tls_ws_echo(&mut ws, "after admin").await["text"],
        "after admin"
    );

    // A key that is not the certificate's: refused, the old one kept.
    let (chat_pem4, _) = issue(&ca, &["chat.example.com"]);
    write(dir.path(), "chat.crt", &chat_pem4);
    let answer = proxy
        .admin_json(reqwest::Method::POST, "/admin/reload")
        .await;
    assert_eq!(answer["reloaded"], false, "{answer}");
    let error = answer["error_description"].as_str().unwrap();
    assert!(
        error.contains("listen[0].tls.sni[0].key") && error.contains("is not the key"),
        "{answer}"
    );
    assert!(!error.contains("PRIVATE KEY"), "{answer}");
    assert_eq!(
        served_certificate(&client, addr, "chat.example.com").await,
        der(&chat_pem3)
    );
    assert_eq!(
        tls_ws_echo(&mut ws, "after refusal").await["text"],
        "after refusal"
    );
    assert_eq!(
        proxy
            .metric(
                "portcullis_tls_certificate_reloads_total",
                &[("result", "rejected")]
            )
            .await,
        Some(1.0)
    );
    assert!(
        proxy.log_text().contains("TLS certificates not reloaded"),
        "{}",
        proxy.log_text()
    );

    // HSTS on portcullis's own pages over TLS (here a refusal and an
    // `/.auth/*` endpoint), never on the plain listener.
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .resolve("chat.example.com", addr)
        .build()
        .unwrap();
    for path in ["/v1/echo?deploymentId=nope", "/.auth/sdk.js"] {
        let resp = https
            .get(format!("https://chat.example.com:{}{path}", addr.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap().to_string()),
            Some("max-age=86400; includeSubDomains".to_string()),
            "{path}: {}",
            resp.status()
        );
        let resp = reqwest::get(format!("http://{plain}{path}")).await.unwrap();
        assert!(
            resp.headers().get("strict-transport-security").is_none(),
            "{path} over plain HTTP"
        );
    }
}

/// A TLS server for `backend` on a loopback port with `cert`/`key`,
/// relaying what it decrypts.
async fn start_tls_front(backend: SocketAddr, cert: &str, key: &str) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der(cert)],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

/// Upstream TLS is verified by default: against `ca_file` when given (the
/// test's CA is in no system store), for the `sni` name. A server whose
/// certificate names another host is refused with 502 and a log line
/// saying why; one whose CA is not the configured file's is refused too.
#[tokio::test]
async fn upstream_certificates_are_verified_against_the_ca_file_and_name() {
    let ca = test_ca();
    let other_ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "upstream-ca.pem", &ca.pem());
    let backend = start_backend().await;
    let (good_cert, good_key) = issue(&ca, &["chat.internal"]);
    let (misnamed_cert, misnamed_key) = issue(&ca, &["other.internal"]);
    let (foreign_cert, foreign_key) = issue(&other_ca, &["chat.internal"]);
    let good = start_tls_front(backend, &good_cert, &good_key).await;
    let misnamed = start_tls_front(backend, &misnamed_cert, &misnamed_key).await;
    let foreign = start_tls_front(backend, &foreign_cert, &foreign_key).await;
    let proxy = Proxy::start(&format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
threads: 1
admin: {{address: "{{ADMIN}}"}}
messengers: {{open: {{authentication: {{enabled: false}}}}}}
upstreams:
  good: {{servers: ["{good}"], tls: true, sni: chat.internal, ca_file: "{ca_file}"}}
  misnamed: {{servers: ["{misnamed}"], tls: true, sni: chat.internal, ca_file: "{ca_file}"}}
  foreign: {{servers: ["{foreign}"], tls: true, sni: chat.internal, ca_file: "{ca_file}"}}
  system: {{servers: ["{good}"], tls: true, sni: chat.internal}}
deployments:
  - {{id: good, messenger: open, upstream: good, allow_all_origins: true}}
  - {{id: misnamed, messenger: open, upstream: misnamed, allow_all_origins: true}}
  - {{id: foreign, messenger: open, upstream: foreign, allow_all_origins: true}}
  - {{id: system, messenger: open, upstream: system, allow_all_origins: true}}
routes: [{{path_prefix: /v1}}]
logging: {{format: json, level: info}}
"#
    ))
    .await;
    let resp = reqwest::get(proxy.url("/v1/echo?deploymentId=good"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", proxy.log_text());
    // `system` names the same server and SNI name as `good`, but trusts
    // only the system roots: it must not reuse the pooled connection that
    // `good` verified against its `ca_file`.
    let resp = reqwest::get(proxy.url("/v1/echo?deploymentId=system"))
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        502,
        "pooled connection reused: {}",
        proxy.log_text()
    );
    // WebSockets go through the verified connection too.
    let (mut ws, welcome) = proxy
        .open_chat("/v1/chat?deploymentId=good", WEB_ORIGIN)
        .await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(echo(&mut ws, "over tls").await["text"], "over tls");
    // Without ca_file the system roots apply, which do not know this CA.
    for deployment in ["misnamed", "foreign", "system"] {
        let resp = reqwest::get(proxy.url(&format!("/v1/echo?deploymentId={deployment}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 502, "{deployment}: {}", proxy.log_text());
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "upstream_failed", "{deployment}: {body}");
    }
    let log = proxy.log_text();
    for upstream in ["misnamed", "foreign", "system"] {
        assert!(
            log.lines()
                .any(|l| l.contains("upstream TLS handshake failed")
                    && l.contains(&format!("\"upstream\":\"{upstream}\""))),
            "no TLS failure line for {upstream}:\n{log}"
        );
    }
    assert!(
        proxy
            .metric(
                "portcullis_upstream_errors_total",
                &[("upstream", "misnamed"), ("kind", "tls")]
            )
            .await
            .is_some_and(|n| n >= 1.0),
        "{}",
        proxy.metrics().await
    );
}

/// The admin listener serves TLS with the same options: HTTPS answers,
/// plain HTTP does not.
#[tokio::test]
async fn the_admin_listener_serves_tls() {
    let ca = test_ca();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = issue(&ca, &["localhost"]);
    let cert = write(dir.path(), "admin.crt", &cert);
    let key = write(dir.path(), "admin.key", &key);
    let proxy_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let backend = start_backend().await;
    let config = write(
        dir.path(),
        "portcullis.yaml",
        &format!(
            r#"
listen: [{{address: "{proxy_addr}"}}]
threads: 1
admin: {{address: "{admin}", tls: {{cert: "{cert}", key: "{key}"}}}}
messengers: {{open: {{authentication: {{enabled: false}}}}}}
upstreams: {{chat: {{servers: ["{backend}"]}}}}
deployments: [{{id: web, messenger: open, upstream: chat, allow_all_origins: true}}]
routes: [{{path_prefix: /v1}}]
"#
        ),
    );
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["run", "-c", &config])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let (mut child, log) = spawn_logged(&mut command);
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/healthz", admin.port());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        match https.get(&url).send().await {
            Ok(resp) => break resp.status(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => {
                let _ = child.kill();
                panic!("{e}: {}", log.lock().unwrap().join("\n"));
            }
        }
    };
    let plain = reqwest::get(format!("http://{admin}/healthz")).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
    assert!(plain.is_err_and(|e| !e.is_status()), "plain HTTP answered");
}
