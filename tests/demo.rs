//! `portcullis demo` end to end: the real binary with a copy of
//! conf/demo.yaml moved to free loopback ports, then over real HTTP the page,
//! `/.auth/me`, the login at the development provider, and the chat
//! WebSocket authenticated by the session cookie.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::browser::*;
use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// The chat deployment of conf/demo.yaml (the page's default).
const CHAT: &str = "6f2d3c1a-0b4e-4c5d-9e8f-7a6b5c4d3e2f";
/// The page deployment of conf/demo.yaml.
const PAGE: &str = "2b7e9d40-5c1f-4a6e-8d3b-9f0a1c2e4b6d";

/// A running `portcullis demo`, killed when dropped.
struct Demo {
    child: Child,
    proxy: String,
    provider: String,
    admin: String,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    /// Starts the demo on free ports and waits until the proxy, its admin
    /// listener and the provider's discovery document answer.
    async fn start() -> Demo {
        let ports = [free_port(), free_port(), free_port(), free_port()];
        let [proxy, backend, provider, admin] = ports.map(|p| format!("127.0.0.1:{p}"));
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/demo.yaml"),
        )
        .unwrap();
        let config = shipped
            .replace("127.0.0.1:8080", &proxy)
            .replace("localhost:8080", &format!("localhost:{}", ports[0]))
            .replace("127.0.0.1:8081", &backend)
            .replace("127.0.0.1:8082", &provider)
            .replace("127.0.0.1:9090", &admin);
        for default in [":8080", ":8081", ":8082", ":9090"] {
            assert!(
                !config.contains(default),
                "conf/demo.yaml names {default} somewhere this test does not move"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.yaml");
        std::fs::write(&path, config).unwrap();
        let (child, log) = spawn_logged(
            Command::new(env!("CARGO_BIN_EXE_portcullis"))
                .args(["demo", "-c"])
                .arg(&path)
                // The demo provides its client secret itself.
                .env_remove("PORTCULLIS_DEMO_CLIENT_SECRET")
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        );
        let demo = Demo {
            child,
            proxy: format!("http://{proxy}"),
            provider: format!("http://{provider}"),
            admin: format!("http://{admin}"),
            log,
            _dir: dir,
        };
        demo.wait_until_serving().await;
        demo
    }

    async fn wait_until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ok = |url: String| async move {
            reqwest::get(url)
                .await
                .is_ok_and(|r| r.status().is_success())
        };
        loop {
            if ok(format!("{}/healthz", self.admin)).await
                && ok(format!(
                    "{}/.well-known/openid-configuration",
                    self.provider
                ))
                .await
                && tokio::net::TcpStream::connect(self.proxy.trim_start_matches("http://"))
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not start; its log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.proxy)
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.proxy.trim_start_matches("http://"))
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// What a browser does from the "Log in" button to the return to the page:
/// returns the session cookie (`name=value`).
async fn log_in(demo: &Demo, user: &str) -> String {
    let c = no_redirects();
    // The page's button: /.auth/login?deployment=<chat>&rd=/
    let start = c
        .get(demo.url(&format!("/.auth/login?deployment={CHAT}&rd=%2F")))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302, "{}", demo.log_text());
    let pending = set_cookies(&start);
    let authorize = location(&start);
    assert!(
        authorize.starts_with(&format!("{}/authorize?", demo.provider)),
        "{authorize}"
    );
    // The provider's page: development banner and the three users.
    let form = c
        .get(&authorize)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains("NOT FOR PRODUCTION"), "{form}");
    for name in ["alice", "bob", "carol"] {
        assert!(form.contains(name), "{name} is offered: {form}");
    }
    let callback = choose_user(&c, &authorize, user).await;
    assert!(
        callback.starts_with(&demo.url("/.auth/callback?")),
        "{callback}"
    );
    let done = return_to(&c, &callback, &pending).await;
    let status = done.status();
    let cookies = set_cookies(&done);
    let back_to = done.headers().get("location").cloned();
    assert_eq!(
        status,
        302,
        "the callback failed: {}\n{}",
        done.text().await.unwrap(),
        demo.log_text()
    );
    assert_eq!(back_to.unwrap(), "/", "back to the page");
    cookies
        .into_iter()
        .find(|c| !c.contains("-login-") && !c.ends_with('='))
        .expect("a session cookie")
}

/// The code of the close frame that ends the socket, skipping other frames.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the socket closes in time");
        match next {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code.into()),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test]
async fn a_person_opens_the_page_logs_in_as_alice_chats_and_logs_out() {
    let demo = Demo::start().await;
    let c = no_redirects();

    // The banner says where everything is.
    let banner = demo.log_text();
    for expected in [
        demo.url("/").as_str(),
        demo.provider.as_str(),
        "DEVELOPMENT OpenID provider",
        "alice",
        "bob",
        "carol",
        &format!("{}/metrics", demo.admin),
    ] {
        assert!(banner.contains(expected), "{expected} in:\n{banner}");
    }

    // The page loads before login.
    let page = c.get(demo.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("/.auth/me") && html.contains(CHAT), "{html}");
    assert!(html.contains(r#"action="/.auth/logout?rd=/""#));

    // Nobody is logged in yet: /.auth/me is 401 and the chat refuses.
    let me = c.get(demo.url("/.auth/me")).send().await.unwrap();
    assert_eq!(me.status(), 401);
    let origin = demo.proxy.clone();
    let chat = format!("/v1/chat?deploymentId={CHAT}");
    let anonymous = ws_connect(&demo.ws_url(&chat), &[("Origin", origin.as_str())]).await;
    assert_eq!(refused_status(&anonymous), 401);
    // The public page route is no way around the login: its deployment
    // refuses every WebSocket upgrade.
    for path in ["/chat".to_string(), format!("/v1/chat?deploymentId={PAGE}")] {
        let sneaky = ws_connect(&demo.ws_url(&path), &[("Origin", origin.as_str())]).await;
        assert_eq!(refused_status(&sneaky), 403, "{path}");
    }

    // Log in as alice.
    let session = log_in(&demo, "alice").await;
    let me: serde_json::Value = c
        .get(demo.url("/.auth/me"))
        .header("cookie", session.as_str())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["subject"], "alice");
    assert_eq!(me["claims"]["name"], "Alice Example");
    assert_eq!(me["claims"]["email"], "alice@example.com");
    assert_eq!(me["deployment"], CHAT);

    // The page's WebSocket: the cookie authenticates it, the backend learns
    // who is there.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            demo.ws_url(&chat),
        )
        .unwrap();
    for (name, value) in [
        ("origin", origin.as_str()),
        ("cookie", session.as_str()),
        ("sec-websocket-protocol", "chat.v1"),
    ] {
        request
            .headers_mut()
            .insert(name, http::HeaderValue::from_str(value).unwrap());
    }
    let (mut ws, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .expect("the handshake finishes in time")
    .unwrap_or_else(|e| panic!("the chat upgrade failed: {e}\n{}", demo.log_text()));
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["protocol"], "chat.v1");
    assert_eq!(welcome["user"], "Alice Example");
    assert_eq!(welcome["identity"]["x-auth-subject"], "alice");
    assert_eq!(welcome["identity"]["x-auth-email"], "alice@example.com");
    assert_eq!(welcome["identity"]["x-auth-deployment"], CHAT);
    assert!(
        welcome["identity"]["x-auth-assertion"].is_string(),
        "assertion: true sends a signed assertion: {welcome}"
    );
    assert!(
        welcome["headers"].get("cookie").is_none(),
        "the session cookie stays at the edge: {welcome}"
    );
    let echoed = echo(&mut ws, "hello").await;
    assert_eq!(echoed["from"], "Alice Example");
    assert_eq!(echoed["text"], "hello");

    // The page's "Log out" form: a same-origin POST. The session ends, its
    // socket closes with 4002, and the browser goes through the provider's
    // end_session back to the page.
    let logout = c
        .post(demo.url("/.auth/logout?rd=/"))
        .header("origin", origin.as_str())
        .header("cookie", session.as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 302, "{}", demo.log_text());
    assert!(
        set_cookies(&logout)
            .iter()
            .any(|c| c.starts_with("portcullis=") && c.ends_with('=')),
        "the session cookie is cleared"
    );
    let end_session = location(&logout);
    assert!(
        end_session.starts_with(&format!("{}/end_session?", demo.provider)),
        "{end_session}"
    );
    let back = c.get(&end_session).send().await.unwrap();
    assert!(back.status().is_redirection(), "{}", back.status());
    assert!(
        location(&back).starts_with(&demo.url("/")),
        "{}",
        location(&back)
    );
    assert_eq!(close_code(&mut ws).await, Some(4002));
    let me = c
        .get(demo.url("/.auth/me"))
        .header("cookie", session.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "the session is gone");

    // The metrics the banner points at.
    let metrics = reqwest::get(format!("{}/metrics", demo.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        sample(
            &metrics,
            "portcullis_provider_ready",
            &[("provider", "demo-idp")]
        ) == Some(1.0),
        "the demo provider is ready:\n{metrics}"
    );
}
