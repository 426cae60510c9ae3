//! Browser login end to end over real HTTP: portcullis, the development
//! provider's login form, the callback, the session cookie on HTTP and
//! WebSocket requests, and what goes upstream.

mod common;

use common::browser::*;
use common::*;
use portcullis::devidp::{DevIdp, DevIdpOptions};

const ORIGIN_PLACEHOLDER: &str = "http://{PROXY}";

async fn setup() -> (DevIdp, Proxy) {
    setup_with("", "").await
}

/// `provider_extra` and `support_extra`: YAML lines added to the `dev`
/// provider and to the `support` messenger.
async fn setup_with(provider_extra: &str, support_extra: &str) -> (DevIdp, Proxy) {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let config = format!(
        r#"{preamble}{provider_extra}
messengers:
  support:
    authentication: {{enabled: true, provider: dev}}
{support_extra}
  staff:
    authentication: {{enabled: true, provider: dev, require: {{groups_any: [staff]}}}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allowed_origins: ["{ORIGIN_PLACEHOLDER}"]}}
  - {{id: staff, messenger: staff, upstream: chat, allowed_origins: ["{ORIGIN_PLACEHOLDER}"]}}
routes: [{{path_prefix: /v1}}]
"#,
        preamble = config_with_dev_provider(&idp),
    );
    let proxy = Proxy::start_with_env(&config, &[("DEV_SECRET", "demo-secret")]).await;
    (idp, proxy)
}

fn client() -> reqwest::Client {
    no_redirects()
}

#[tokio::test]
async fn a_browser_logs_in_and_its_session_authenticates_http_and_websockets() {
    let (_idp, proxy) = setup().await;
    let c = client();
    // A navigation without a session is sent to log in; an API call gets 401.
    let nav = c
        .get(proxy.url("/v1/page?deploymentId=support"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(nav.status(), 302);
    let to_login = location(&nav);
    assert!(
        to_login.starts_with("/.auth/login?deployment=support&rd=%2Fv1%2Fpage"),
        "{to_login}"
    );
    let api = c
        .get(proxy.url("/v1/page?deploymentId=support"))
        .header("sec-fetch-mode", "cors")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);

    let (session, back_to) = login(&proxy, "support", "alice", "/v1/page?deploymentId=support")
        .await
        .unwrap();
    assert_eq!(back_to, "/v1/page?deploymentId=support");
    assert!(
        session.starts_with("portcullis="),
        "plain http on loopback: no __Host- prefix ({session})"
    );

    // HTTP with the cookie: the backend learns who, never sees our cookie.
    let echoed: serde_json::Value = c
        .get(proxy.url("/v1/page?deploymentId=support"))
        .header("cookie", format!("{session}; site_pref=dark"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        echoed["headers"]["x-auth-subject"],
        serde_json::json!(["alice"])
    );
    assert_eq!(
        echoed["headers"]["cookie"],
        serde_json::json!(["site_pref=dark"])
    );
    let sid = echoed["headers"]["x-auth-session"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sid.starts_with("s-"));
    assert!(!sid.contains(session.split('=').nth(1).unwrap()));

    // A WebSocket with the cookie.
    let origin = format!("http://{}", proxy.addr);
    let (mut ws, _) = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=support"),
        &[("Origin", origin.as_str()), ("Cookie", session.as_str())],
    )
    .await
    .unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["identity"]["x-auth-subject"], "alice");
    assert_eq!(welcome["identity"]["x-auth-email"], "alice@example.com");

    // /.auth/me
    let me: serde_json::Value = c
        .get(proxy.url("/.auth/me"))
        .header("cookie", session.as_str())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["subject"], "alice");
    assert_eq!(me["claims"]["email"], "alice@example.com");
    assert_eq!(me["session"], sid.as_str());
    let anonymous = c.get(proxy.url("/.auth/me")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // A tampered or foreign cookie is simply no session.
    let (name, value) = session.split_once('=').unwrap();
    let mut bytes = value.as_bytes().to_vec();
    let last = bytes.len() - 2;
    bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
    let tampered = format!("{name}={}", String::from_utf8(bytes).unwrap());
    let resp = c
        .get(proxy.url("/v1/page?deploymentId=support"))
        .header("cookie", tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        !proxy.log_text().contains(value),
        "the cookie never reaches the log"
    );
}

#[tokio::test]
async fn require_rules_refuse_at_the_callback_and_bad_states_are_clear_errors() {
    let (_idp, proxy) = setup().await;
    let refused = login(&proxy, "staff", "alice", "/").await.unwrap_err();
    assert_eq!(refused.0, 403, "{}", refused.1);
    assert!(refused.1.contains("not allowed"));
    assert!(
        login(&proxy, "staff", "carol", "/").await.is_ok(),
        "carol is staff"
    );

    // A callback without a matching pending login.
    let c = client();
    let resp = c
        .get(proxy.url("/.auth/callback?code=x&state=abcdefghijkl"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // A state that is not ours at all (a multi-byte character where the
    // pending cookie's name is cut) is the same clear error, not a crash.
    let odd = c
        .get(proxy.url("/.auth/callback?code=x&state=abcdefg%C3%A9xyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 400);
    assert!(odd.text().await.unwrap().contains("carries no state"));
    assert_eq!(
        proxy
            .metric(
                "portcullis_logins_total",
                &[("deployment", "-"), ("result", "bad_state")]
            )
            .await,
        Some(2.0),
        "both refusals counted"
    );
    // Unsafe return addresses fall back to "/".
    let (_, back) = login(&proxy, "support", "alice", "//evil.example/x")
        .await
        .unwrap();
    assert_eq!(back, "/");
    let (_, back) = login(&proxy, "support", "alice", "https://evil.example/")
        .await
        .unwrap();
    assert_eq!(back, "/");
    let unknown = c
        .get(proxy.url("/.auth/login?deployment=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn logout_ends_the_session_everywhere_and_resists_cross_site_requests() {
    use futures_util::StreamExt;
    let (idp, proxy) = setup().await;
    let (session, _) = login(&proxy, "support", "alice", "/").await.unwrap();
    let origin = format!("http://{}", proxy.addr);
    let (mut ws, _) = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=support"),
        &[("Origin", origin.as_str()), ("Cookie", session.as_str())],
    )
    .await
    .unwrap();
    next_json(&mut ws).await;
    let c = client();
    let me = |cookie: String| {
        let c = c.clone();
        let url = proxy.url("/.auth/me");
        async move {
            c.get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    // Cross-site attempts change nothing.
    let forged = c
        .post(proxy.url("/.auth/logout"))
        .header("origin", "https://evil.example")
        .header("cookie", session.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let image_tag = c
        .get(proxy.url("/.auth/logout"))
        .header("cookie", session.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(image_tag.status(), 200, "a confirmation page, not a logout");
    assert!(image_tag.text().await.unwrap().contains("method=\"post\""));
    assert_eq!(me(session.clone()).await, 200);

    // The real thing, from our own page.
    let out = c
        .post(proxy.url("/.auth/logout?rd=/bye"))
        .header("origin", origin.as_str())
        .header("cookie", session.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302);
    let to = location(&out);
    assert!(
        to.starts_with(&format!("{}/end_session?", idp.issuer())),
        "{to}"
    );
    assert!(
        to.contains("id_token_hint=") && to.contains(&urlencode(&format!("{origin}/"))),
        "{to}"
    );
    assert!(
        set_cookies(&out).iter().any(|c| c.ends_with('=')),
        "the cookie is cleared"
    );
    // Its live connection is closed as revoked.
    match tokio::time::timeout(std::time::Duration::from_secs(1), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4002);
            assert_eq!(frame.reason.as_str(), "logged out");
        }
        other => panic!("expected a 4002 close, got {other:?}"),
    }
    assert_eq!(
        me(session.clone()).await,
        401,
        "the session is gone from the store"
    );
}

#[tokio::test]
async fn sessions_are_rechecked_with_the_provider_and_end_when_it_refuses() {
    use futures_util::StreamExt;
    let (idp, proxy) = setup_with(
        "    scopes: [openid, email, profile, offline_access]",
        "    session: {token_lifetime: 5s}",
    )
    .await;
    let (session, _) = login(&proxy, "support", "alice", "/").await.unwrap();
    let c = client();
    let get = || {
        c.get(proxy.url("/v1/x?deploymentId=support"))
            .header("cookie", session.as_str())
            .send()
    };
    // Due after 5 s: the next request triggers a re-check, which renews.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let hits = idp.token_hits();
    assert_eq!(get().await.unwrap().status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while idp.token_hits() == hits {
        assert!(
            std::time::Instant::now() < deadline,
            "no re-check reached the provider"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        get().await.unwrap().status(),
        200,
        "a renewed session goes on"
    );

    // The provider revokes the user's grants: the next re-check ends the
    // session and closes its connection.
    let origin = format!("http://{}", proxy.addr);
    let (mut ws, _) = ws_connect(
        &proxy.ws_url("/v1/chat?deploymentId=support"),
        &[("Origin", origin.as_str()), ("Cookie", session.as_str())],
    )
    .await
    .unwrap();
    next_json(&mut ws).await;
    assert!(idp.revoke_refresh_tokens("alice") > 0);
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    get().await.unwrap();
    match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 4002);
        }
        other => panic!("expected a 4002 close, got {other:?}"),
    }
    assert_eq!(get().await.unwrap().status(), 401, "the session ended");
    assert_eq!(
        proxy
            .metric("portcullis_session_ends_total", &[("reason", "revoked")])
            .await,
        Some(1.0)
    );
}

/// A code that already logged somebody in, carried back with a fresh login's
/// state (a stolen or replayed callback URL): the provider refuses it and no
/// session is made.
#[tokio::test]
async fn a_replayed_code_under_a_fresh_state_is_refused() {
    let (_idp, proxy) = setup().await;
    let c = client();
    let start = |c: reqwest::Client, url: String| async move {
        let resp = c.get(url).send().await.unwrap();
        (set_cookies(&resp), location(&resp))
    };
    let login_url = proxy.url("/.auth/login?deployment=support&rd=%2F");
    // The first login runs to its callback, which logs alice in.
    let (first_pending, first_authorize) = start(c.clone(), login_url.clone()).await;
    let first_callback = choose_user(&c, &first_authorize, "alice").await;
    assert_eq!(
        return_to(&c, &first_callback, &first_pending)
            .await
            .status(),
        302
    );
    let used_code = url::Url::parse(&first_callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();

    // A second login, answered with the first login's code.
    let (pending, authorize) = start(c.clone(), login_url).await;
    let genuine = choose_user(&c, &authorize, "alice").await;
    let forged = with_query_param(&genuine, "code", &used_code);
    let done = return_to(&c, &forged, &pending).await;
    assert_login_refused(
        &proxy,
        done,
        401,
        "did not accept the login",
        "code_refused",
    )
    .await;
    assert!(
        !proxy.log_text().contains(&used_code),
        "codes are never logged"
    );
}
