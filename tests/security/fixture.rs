//! What every family of the corpus shares: one portcullis with the
//! development provider and the echo backend behind a recording relay, raw
//! HTTP/1.1 exchanges, the refusal check, and the log scan.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis::devidp::{DevIdp, DevIdpOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::browser::{config_with_dev_provider, start_devidp};
use crate::common::{start_backend, Proxy};

/// The one origin the deployments allow, and a local one with a port.
pub const ORIGIN: &str = "https://www.example.com";
pub const LOCAL_ORIGIN: &str = "http://localhost:8080";
/// The client secret, distinctive so the log scan can look for it.
pub const CLIENT_SECRET: &str = "corpus-client-secret-7f3a9c1e5b";

/// Everything the backend ever received through the relay.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<u8>>>);

impl Received {
    /// How many bytes arrived so far.
    pub fn total(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// What arrived after the first `from` bytes, as text.
    pub fn since(&self, from: usize) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()[from..]).into_owned()
    }
}

/// A relay in front of `backend` that records every byte portcullis sends
/// it. Bytes rather than connections: portcullis reuses upstream
/// connections, so a request can reach the backend without a new one.
pub async fn start_recording_relay(backend: SocketAddr) -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let (mut from_proxy, mut to_proxy) = conn.into_split();
                let (mut from_backend, mut to_backend) = server.into_split();
                let upward = async move {
                    let mut buf = vec![0u8; 16384];
                    loop {
                        match from_proxy.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                sink.0.lock().unwrap().extend_from_slice(&buf[..n]);
                                if to_backend.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to_backend.shutdown().await;
                };
                // The backend's close goes on to portcullis, or its pool would
                // keep a connection whose other end is gone.
                let downward = async move {
                    let _ = tokio::io::copy(&mut from_backend, &mut to_proxy).await;
                    let _ = to_proxy.shutdown().await;
                };
                let _ = tokio::join!(upward, downward);
            });
        }
    });
    (addr, received)
}

/// An HTTP listener that only counts the connections made to it: an
/// attacker's `jku` / `x5u` address.
pub async fn start_counting_listener() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = conn
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    (addr, count)
}

/// One module's world: the provider, portcullis, and what the backend got.
pub struct Env {
    pub idp: DevIdp,
    pub proxy: Proxy,
    pub received: Received,
    /// Every secret the module used; none may appear in the log.
    pub secrets: Vec<String>,
    /// Cases whose outcome was not the expected one, with what happened.
    pub failures: Vec<String>,
}

/// The config of every module's portcullis: `support` (bearer tokens of the
/// development provider, ID tokens accepted, browser login), `open`
/// (no authentication), both allowing `ORIGIN` and `LOCAL_ORIGIN`.
pub fn config(idp: &DevIdp, upstream: SocketAddr) -> String {
    format!(
        r#"{preamble}    algorithms: [RS256, ES256]
    jwks_refetch_interval: 1h
rate_limits: {{per_client: {{per_minute: 100000, burst: 10000}}}}
messengers:
  support:
    authentication: {{enabled: true, provider: dev, accept_id_tokens: true}}
    assertion: true
  open:
    authentication: {{enabled: false}}
upstreams:
  chat: {{servers: ["{upstream}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allowed_origins: ["{ORIGIN}", "{LOCAL_ORIGIN}"]}}
  - {{id: open, messenger: open, upstream: chat, allowed_origins: ["{ORIGIN}", "{LOCAL_ORIGIN}"]}}
routes: [{{path_prefix: /v1}}]
"#,
        preamble = config_with_dev_provider(idp),
    )
}

pub fn provider_options() -> DevIdpOptions {
    DevIdpOptions {
        client_secret: CLIENT_SECRET.to_string(),
        ..DevIdpOptions::default()
    }
}

impl Env {
    pub async fn start() -> Env {
        let idp = start_devidp(provider_options()).await;
        let backend = start_backend().await;
        let (relay, received) = start_recording_relay(backend).await;
        let proxy =
            Proxy::start_with_env(&config(&idp, relay), &[("DEV_SECRET", CLIENT_SECRET)]).await;
        Env {
            idp,
            proxy,
            received,
            secrets: vec![CLIENT_SECRET.to_string()],
            failures: Vec::new(),
        }
    }

    /// Records a failed expectation of `case`.
    pub fn fail(&mut self, case: &str, what: String) {
        self.failures.push(format!("{case}: {what}"));
    }

    /// Checks that a refusal is `status` with `error` and `reason` in its
    /// JSON body, and that nothing reached the backend since `before`.
    pub fn expect_refusal(
        &mut self,
        case: &str,
        before: usize,
        got: (u16, &str),
        want: (u16, &str, &str),
    ) {
        let (status, body) = got;
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let (want_status, error, reason) = want;
        if status != want_status || json["error"] != error || json["reason"] != reason {
            self.fail(
                case,
                format!("expected {want_status} {error}/{reason}, got {status} {body}"),
            );
        }
        self.expect_untouched(case, before);
    }

    /// Checks that nothing reached the backend since `before`.
    pub fn expect_untouched(&mut self, case: &str, before: usize) {
        if self.received.total() != before {
            let got = self.received.since(before);
            self.fail(case, format!("the backend received {got:?}"));
        }
    }

    /// Waits for the log lines of the last requests (written after their
    /// responses), then fails every secret found in the log, and panics
    /// with every failure of the module.
    pub async fn finish(mut self, module: &str) {
        let lines = self.proxy.log_text();
        let settle = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut log = lines;
        while tokio::time::Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = self.proxy.log_text();
            if now.len() == log.len() {
                break;
            }
            log = now;
        }
        assert!(!log.is_empty(), "{module}: portcullis logged nothing");
        let secrets = std::mem::take(&mut self.secrets);
        for secret in secrets.iter().filter(|s| s.len() >= 16) {
            if let Some(line) = log.lines().find(|l| l.contains(secret.as_str())) {
                self.fail("log", format!("a secret ({secret}) in the log: {line}"));
            }
        }
        assert!(
            self.failures.is_empty(),
            "{module}: {} case(s) failed:\n{}\n--- portcullis log (tail) ---\n{}",
            self.failures.len(),
            self.failures.join("\n"),
            log.lines()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// A GET with `headers`; its status and body.
pub async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new().get(proxy.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// What a raw exchange came to.
#[derive(Debug)]
pub struct RawAnswer {
    /// The first response's status, or `None` when the connection closed
    /// (or stayed silent) without one.
    pub status: Option<u16>,
    /// Everything read, as text.
    pub text: String,
}

impl RawAnswer {
    /// The JSON body of the first response, if it has one.
    pub fn json(&self) -> serde_json::Value {
        self.text
            .split_once("\r\n\r\n")
            .and_then(|(_, body)| {
                let mut de = serde_json::Deserializer::from_str(body).into_iter();
                de.next().and_then(Result::ok)
            })
            .unwrap_or_default()
    }

    /// The value of the first response's header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Writes `request` as is to portcullis and reads what comes back until the
/// connection closes, the first response is complete, or 3 s of silence.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> RawAnswer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if first_response_complete(&got) {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok());
    RawAnswer { status, text }
}

/// Whether `got` holds a whole response head and its `Content-Length` body.
fn first_response_complete(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    if head.starts_with("HTTP/1.1 101") {
        return true;
    }
    let length = head.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|n| body.len() >= n)
}
