//! The status page (`GET /admin/`) of a running instance: what it shows,
//! that it shows no secret, and that it is guarded like the rest of the
//! admin API.

mod common;

use std::time::{Duration, Instant};

use common::browser::*;
use common::*;
use portcullis::devidp::DevIdpOptions;

const ADMIN_TOKEN: &str = "admin-token-never-shown";
const CLIENT_SECRET: &str = "client-secret-never-shown";
const COOKIE_KEY: &str = "Y29va2llLWtleS1mb3ItdGhlLXN0YXR1cy1wYWdlLTMyYnl0ZXM=";

async fn page(proxy: &Proxy) -> reqwest::Response {
    reqwest::Client::new()
        .get(proxy.admin_url("/admin/"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}

/// The page once `ready` holds for it (the provider is discovered in the
/// background after start).
async fn page_when(proxy: &Proxy, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = page(proxy).await.text().await.unwrap();
        if ready(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never ready:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_status_page_shows_the_set_up_and_no_secret() {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let config = format!(
        r#"{preamble}
messengers:
  support:
    authentication:
      enabled: true
      provider: dev
      require: {{groups_any: [customers]}}
  public: {{authentication: {{enabled: false}}}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: support-site, name: "<script>alert('name')</script>", messenger: support, upstream: chat, allowed_origins: ["https://www.example.com"]}}
  - {{id: open-site, messenger: public, upstream: chat, allow_all_origins: true}}
  - {{id: paused-site, messenger: public, upstream: chat, status: inactive, allow_all_origins: true}}
routes: [{{path_prefix: /v1}}]
sessions:
  keys: {{cookie_key: {{env: COOKIE_KEY}}}}
"#,
        preamble = config_with_dev_provider(&idp).replace(
            r#"admin: {address: "{ADMIN}"}"#,
            r#"admin: {address: "{ADMIN}", token: {env: ADMIN_TOKEN}}"#
        ),
    );
    let proxy = Proxy::start_with_env(
        &config,
        &[
            ("DEV_SECRET", CLIENT_SECRET),
            ("COOKIE_KEY", COOKIE_KEY),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    let client = reqwest::Client::new();

    // Guarded like the rest of the admin API.
    let resp = client.get(proxy.admin_url("/admin/")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .get(proxy.admin_url("/admin/"))
        .bearer_auth(ADMIN_TOKEN)
        .header("Host", "rebound.evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // A live chat, so that the page has a connection to count.
    let (_ws, _) = proxy
        .open_chat("/v1/chat?deploymentId=open-site", "https://any.example")
        .await;

    let resp = page(&proxy).await;
    assert_eq!(resp.status(), 200);
    let headers = resp.headers();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["cache-control"], "no-store");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(
        !csp.contains("script-src") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");

    let issuer = idp.issuer();
    let text = page_when(&proxy, |t| t.contains("usable</span>, fetched")).await;
    for shown in [
        issuer,
        "portcullis-demo",
        "in any group of: customers",
        "support-site",
        "https://www.example.com",
        "any origin",
        "inactive",
        &backend.to_string(),
        &format!(
            "href=\"http://{}/.auth/deployments/support-site/snippet\"",
            proxy.addr
        ),
        "No reload since start.",
    ] {
        assert!(text.contains(shown), "{shown:?} missing from\n{text}");
    }
    // The deployment with the chat counts one live connection.
    let open_row = text
        .split("<tr>")
        .find(|row| row.contains("<code>open-site</code>"))
        .unwrap();
    assert!(open_row.contains("<td>1</td>"), "{open_row}");
    // A hostile name is text, not markup.
    assert!(!text.contains("<script"), "{text}");
    assert!(text.contains("&lt;script&gt;alert('name')&lt;/script&gt;"));
    for secret in [ADMIN_TOKEN, CLIENT_SECRET, COOKIE_KEY] {
        assert!(!text.contains(secret), "{secret} shown");
    }

    // A rejected reload is shown, with why.
    let original = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        original.replace("upstream: chat, status", "upstream: nowhere, status"),
    )
    .unwrap();
    let resp = client
        .post(proxy.admin_url("/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let text = page(&proxy).await.text().await.unwrap();
    assert!(text.contains("rejected"), "{text}");
    assert!(text.contains("nowhere"), "{text}");
}
