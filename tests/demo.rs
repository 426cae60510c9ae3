//! `portcullis demo` end to end: the real binary with a copy of
//! conf/demo.yaml moved to free loopback ports, then over real HTTP the page,
//! `/.auth/me`, the login at the development provider, and the chat
//! WebSocket authenticated by the session cookie.

mod common;

use std::time::{Duration, Instant};

use common::browser::*;
use common::*;

/// The chat deployment of conf/demo.yaml (the page's default).
const CHAT: &str = "6f2d3c1a-0b4e-4c5d-9e8f-7a6b5c4d3e2f";
/// The page deployment of conf/demo.yaml.
const PAGE: &str = "2b7e9d40-5c1f-4a6e-8d3b-9f0a1c2e4b6d";

/// A running `portcullis demo` (a `Proxy` started with `demo`), with the
/// address of its development provider.
struct Demo {
    proxy: Proxy,
    provider: String,
}

impl Demo {
    /// Starts the demo on free ports and waits until the proxy, its admin
    /// listener and the provider's discovery document answer.
    async fn start() -> Demo {
        let [backend, provider] = [free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/demo.yaml"),
        )
        .unwrap();
        let config = shipped
            .replace("127.0.0.1:8080", "{PROXY}")
            .replace("localhost:8080", "localhost:{PROXY_PORT}")
            .replace("127.0.0.1:8081", &backend)
            .replace("127.0.0.1:8082", &provider)
            .replace("127.0.0.1:9090", "{ADMIN}");
        for default in [":8080", ":8081", ":8082", ":9090"] {
            assert!(
                !config.contains(default),
                "conf/demo.yaml names {default} somewhere this test does not move"
            );
        }
        let demo = Demo {
            proxy: Proxy::start_demo(&config).await,
            provider: format!("http://{provider}"),
        };
        let discovery = format!("{}/.well-known/openid-configuration", demo.provider);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !reqwest::get(&discovery)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "the demo's provider did not start; its log:\n{}",
                demo.proxy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        demo
    }

    fn url(&self, path: &str) -> String {
        self.proxy.url(path)
    }

    fn ws_url(&self, path: &str) -> String {
        self.proxy.ws_url(path)
    }

    fn log_text(&self) -> String {
        self.proxy.log_text()
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
        &demo.proxy.admin_url("/metrics"),
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
    let origin = demo.url("").trim_end_matches('/').to_string();
    let chat = format!("/v1/chat?deploymentId={CHAT}");
    let anonymous = ws_connect(&demo.ws_url(&chat), &[("Origin", origin.as_str())]).await;
    assert_eq!(refused_status(&anonymous), 401);
    // The public page route is no way around the login: its deployment
    // refuses every WebSocket upgrade.
    for path in ["/chat".to_string(), format!("/v1/chat?deploymentId={PAGE}")] {
        let sneaky = ws_connect(&demo.ws_url(&path), &[("Origin", origin.as_str())]).await;
        assert_eq!(refused_status(&sneaky), 403, "{path}");
    }

    // The provider's page: development banner and the three users.
    let start = c
        .get(demo.url(&format!("/.auth/login?deployment={CHAT}&rd=%2F")))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302, "{}", demo.log_text());
    let authorize = location(&start);
    assert!(
        authorize.starts_with(&format!("{}/authorize?", demo.provider)),
        "{authorize}"
    );
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

    // Log in as alice, as the page's button does, and come back to the page.
    let (session, back_to) = login(&demo.proxy, CHAT, "alice", "/")
        .await
        .unwrap_or_else(|(status, page)| panic!("the login failed: {status} {page}"));
    assert_eq!(back_to, "/", "back to the page");
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
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE)
            .await
            .map(|(code, _)| code),
        Some(4002)
    );
    let me = c
        .get(demo.url("/.auth/me"))
        .header("cookie", session.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "the session is gone");

    // The metrics the banner points at.
    let metrics = demo.proxy.metrics().await;
    assert!(
        sample(
            &metrics,
            "portcullis_provider_ready",
            &[("provider", "demo-idp")]
        ) == Some(1.0),
        "the demo provider is ready:\n{metrics}"
    );
}
