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
    setup_full(DevIdpOptions::default(), provider_extra, support_extra, "").await
}

/// As `setup_with`, with the provider's `options`, and `edit` applied to
/// the config text before it is written (`""`: none): `public_url: https`
/// or `sessions` lines.
async fn setup_full(
    options: DevIdpOptions,
    provider_extra: &str,
    support_extra: &str,
    extra: &str,
) -> (DevIdp, Proxy) {
    let idp = start_devidp(options).await;
    let backend = start_backend().await;
    let config = format!(
        r#"{preamble}{provider_extra}
messengers:
  support:
    authentication: {{enabled: true, provider: dev}}
{support_extra}
  staff:
    authentication: {{enabled: true, provider: dev, require: {{groups_any: [staff]}}}}
    # Re-checked (with offline_access in the provider's scopes) as often as
    # setup_recheck's support messenger.
    session: {{token_lifetime: 5s}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allowed_origins: ["{ORIGIN_PLACEHOLDER}"]}}
  - {{id: staff, messenger: staff, upstream: chat, allowed_origins: ["{ORIGIN_PLACEHOLDER}"]}}
routes: [{{path_prefix: /v1}}]
{extra}
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
    let (idp, proxy) = setup().await;
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

    let hits = idp.token_hits();
    let (session, back_to) = login(&proxy, "support", "alice", "/v1/page?deploymentId=support")
        .await
        .unwrap();
    assert_eq!(
        idp.token_hits(),
        hits + 1,
        "one redemption: the replayed callback never reached the provider"
    );
    assert_eq!(back_to, "/v1/page?deploymentId=support");
    assert!(
        session.starts_with("portcullis="),
        "plain http on loopback: no __Host- prefix ({session})"
    );

    // HTTP with the cookie: the backend learns who, never sees our cookie.
    let cookie_value = session.split_once('=').unwrap().1.to_string();
    let page = |cookie: String| {
        let request = c
            .get(proxy.url("/v1/page?deploymentId=support"))
            .header("cookie", cookie);
        let cookie_value = cookie_value.clone();
        async move {
            let text = request.send().await.unwrap().text().await.unwrap();
            assert!(
                !text.contains(&cookie_value),
                "the session cookie's value never reaches the backend: {text}"
            );
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        }
    };
    let echoed = page(format!("{session}; site_pref=dark")).await;
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
    // The id names the session: the same on each of its requests, another
    // for another session (of the same user).
    let again = page(session.clone()).await;
    assert_eq!(again["headers"]["x-auth-session"][0], sid.as_str());
    let (other, _) = login(&proxy, "support", "alice", "/").await.unwrap();
    let other_sid = page(other).await["headers"]["x-auth-session"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(other_sid.starts_with("s-"));
    assert_ne!(other_sid, sid, "two sessions, two ids");

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
    assert_eq!(welcome["identity"]["x-auth-session"], sid.as_str());
    assert!(
        !welcome
            .to_string()
            .contains(session.split_once('=').unwrap().1),
        "the cookie's value never reaches the backend"
    );

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
async fn email_domains_refuse_unverified_addresses_unless_the_messenger_opts_out() {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    // alice@example.com is verified; bob@other.example is not.
    let config = format!(
        r#"{preamble}
messengers:
  mail:
    authentication: {{enabled: true, provider: dev, require: {{email_domains: [example.com, other.example]}}}}
  mail-any:
    authentication:
      enabled: true
      provider: dev
      require: {{email_domains: [example.com, other.example], allow_unverified_email: true}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: mail, messenger: mail, upstream: chat, allowed_origins: ["{ORIGIN_PLACEHOLDER}"]}}
  - {{id: mail-any, messenger: mail-any, upstream: chat, allowed_origins: ["{ORIGIN_PLACEHOLDER}"]}}
routes: [{{path_prefix: /v1}}]
"#,
        preamble = config_with_dev_provider(&idp),
    );
    let proxy = Proxy::start_with_env(&config, &[("DEV_SECRET", "demo-secret")]).await;
    let c = client();
    // What the backend and /.auth/me say about a session's email.
    let seen = |session: String, deployment: &'static str| {
        let c = c.clone();
        let page = proxy.url(&format!("/v1/page?deploymentId={deployment}"));
        let me = proxy.url("/.auth/me");
        async move {
            let echoed: serde_json::Value = c
                .get(page)
                .header("cookie", &session)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let me: serde_json::Value = c
                .get(me)
                .header("cookie", &session)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                echoed["headers"]["x-auth-email"].clone(),
                echoed["headers"]["x-auth-email-verified"].clone(),
                me["claims"]["email_verified"].clone(),
            )
        }
    };

    let refused = login(&proxy, "mail", "bob", "/").await.unwrap_err();
    assert_eq!(refused.0, 403, "{}", refused.1);
    assert!(refused.1.contains("not verified"), "{}", refused.1);
    assert_eq!(
        proxy
            .metric(
                "portcullis_logins_total",
                &[("deployment", "mail"), ("result", "email_not_verified")]
            )
            .await,
        Some(1.0)
    );
    let (alice, _) = login(&proxy, "mail", "alice", "/").await.unwrap();
    assert_eq!(
        seen(alice, "mail").await,
        (
            serde_json::json!(["alice@example.com"]),
            serde_json::json!(["true"]),
            serde_json::json!(true)
        )
    );

    // The opt-out admits bob, and the backend learns his address is unverified.
    let (bob, _) = login(&proxy, "mail-any", "bob", "/").await.unwrap();
    assert_eq!(
        seen(bob, "mail-any").await,
        (
            serde_json::json!(["bob@other.example"]),
            serde_json::json!(["false"]),
            serde_json::json!(false)
        )
    );

    // A provider that sends the string "true" verifies; /.auth/me says so
    // as the header does, with a boolean.
    idp.set_id_token_claims("bob", serde_json::json!({"email_verified": "true"}));
    let (bob, _) = login(&proxy, "mail", "bob", "/").await.unwrap();
    assert_eq!(
        seen(bob, "mail").await,
        (
            serde_json::json!(["bob@other.example"]),
            serde_json::json!(["true"]),
            serde_json::json!(true)
        )
    );
}

#[tokio::test]
async fn logout_ends_the_session_everywhere_and_resists_cross_site_requests() {
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
    let to = url::Url::parse(&location(&out)).unwrap();
    assert_eq!(
        to.as_str().split('?').next().unwrap(),
        format!("{}/end_session", idp.issuer())
    );
    let param = |name: &str| {
        to.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    // The documented return address: a same-origin `rd` returns to the
    // origin's root, the one address registered at the provider.
    assert_eq!(
        param("post_logout_redirect_uri").as_deref(),
        Some(format!("{origin}/").as_str()),
        "{to}"
    );
    assert_eq!(param("client_id").as_deref(), Some("portcullis-demo"));
    assert!(param("id_token_hint").is_some_and(|t| t.split('.').count() == 3));
    let cleared = set_cookie_named(&out, "portcullis").expect("the session cookie is set");
    assert!(clears(&cleared), "the session cookie is cleared: {cleared}");
    // Its live connection is closed as revoked.
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((4002, "logged out".to_string()))
    );
    assert_eq!(
        me(session.clone()).await,
        401,
        "the session is gone from the store"
    );
}

/// Polls `idp.token_hits()` until it exceeds `hits`, within `within`.
async fn provider_asked(idp: &DevIdp, hits: u64, within: std::time::Duration) -> u64 {
    let deadline = std::time::Instant::now() + within;
    while idp.token_hits() == hits {
        assert!(
            std::time::Instant::now() < deadline,
            "no re-check reached the provider"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    idp.token_hits()
}

/// Re-checks of a session with `token_lifetime: 5s` at the `offline_access`
/// development provider.
async fn setup_recheck() -> (DevIdp, Proxy) {
    setup_with(
        "    scopes: [openid, email, profile, offline_access]",
        "    session: {token_lifetime: 5s}",
    )
    .await
}

#[tokio::test]
async fn sessions_are_rechecked_with_the_provider_and_end_when_it_refuses() {
    let (idp, proxy) = setup_recheck().await;
    let (session, _) = login(&proxy, "support", "alice", "/").await.unwrap();
    let c = client();
    let get = || {
        c.get(proxy.url("/v1/x?deploymentId=support"))
            .header("cookie", session.as_str())
            .send()
    };
    // Due after 5 s: the next request triggers a re-check, which renews.
    // Twice: the second redeems the refresh token the first one got back
    // (the provider rotates them, and a replayed one would revoke them all).
    for round in 0..2 {
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        let hits = idp.token_hits();
        assert_eq!(get().await.unwrap().status(), 200);
        let asked = provider_asked(&idp, hits, std::time::Duration::from_secs(5)).await;
        assert_eq!(asked, hits + 1, "round {round}: one re-check");
        // Renewed: the session goes on, and is not due again for another
        // token lifetime, so further requests ask the provider nothing
        // (a re-check that renewed nothing would run on each of them).
        for _ in 0..10 {
            assert_eq!(
                get().await.unwrap().status(),
                200,
                "round {round}: a renewed session goes on"
            );
            tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        }
        assert_eq!(
            idp.token_hits(),
            asked,
            "round {round}: renewed until due again"
        );
    }
    assert_eq!(
        proxy
            .metric("portcullis_session_ends_total", &[("reason", "revoked")])
            .await,
        None
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
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((4002, "session revoked".to_string()))
    );
    assert_eq!(get().await.unwrap().status(), 401, "the session ended");
    assert_eq!(
        proxy
            .metric("portcullis_session_ends_total", &[("reason", "revoked")])
            .await,
        Some(1.0)
    );
}

/// Logs `user` in at `deployment`, opens a chat, lets `change` alter what
/// the provider says at the next refresh, waits until the session is due,
/// and asserts that the re-check ended the session: 4002, then 401.
async fn recheck_ends_the_session(user: &str, deployment: &str, change: impl FnOnce(&DevIdp)) {
    let (idp, proxy) = setup_recheck().await;
    let (session, _) = login(&proxy, deployment, user, "/").await.unwrap();
    let origin = format!("http://{}", proxy.addr);
    let chat = format!("/v1/chat?deploymentId={deployment}");
    let (mut ws, _) = ws_connect(
        &proxy.ws_url(&chat),
        &[("Origin", origin.as_str()), ("Cookie", session.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["identity"]["x-auth-subject"], user);
    change(&idp);
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let c = client();
    let get = || {
        c.get(proxy.url(&format!("/v1/x?deploymentId={deployment}")))
            .header("cookie", session.as_str())
            .send()
    };
    let hits = idp.token_hits();
    assert_eq!(
        get().await.unwrap().status(),
        200,
        "still valid until re-checked"
    );
    provider_asked(&idp, hits, std::time::Duration::from_secs(5)).await;
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((4002, "session revoked".to_string()))
    );
    assert_eq!(get().await.unwrap().status(), 401, "the session ended");
    assert_eq!(
        proxy
            .metric("portcullis_session_ends_total", &[("reason", "revoked")])
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_recheck_answered_with_an_id_token_for_another_subject_ends_the_session() {
    recheck_ends_the_session("alice", "support", |idp| {
        idp.set_id_token_claims("alice", serde_json::json!({"sub": "carol"}));
    })
    .await;
}

#[tokio::test]
async fn a_recheck_whose_claims_no_longer_meet_require_ends_the_session() {
    // carol is staff at login; the provider then drops her from the group.
    recheck_ends_the_session("carol", "staff", |idp| {
        idp.set_id_token_claims("carol", serde_json::json!({"groups": ["customers"]}));
    })
    .await;
}

/// A code that already logged somebody in, carried back with a fresh login's
/// state (a stolen or replayed callback URL). The provider here is careless
/// (it does not spend codes or check PKCE), so that the refusal is
/// portcullis's own: the ID token carries the first login's nonce.
#[tokio::test]
async fn a_replayed_code_under_a_fresh_state_is_refused() {
    let options = DevIdpOptions {
        reusable_codes: true,
        ..DevIdpOptions::default()
    };
    let (idp, proxy) = setup_full(options, "", "", "").await;
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

    // A second login, answered with the first login's code, which this
    // provider redeems again.
    let (pending, authorize) = start(c.clone(), login_url).await;
    let genuine = choose_user(&c, &authorize, "alice").await;
    let forged = with_query_param(&genuine, "code", &used_code);
    let hits = idp.token_hits();
    let done = return_to(&c, &forged, &pending).await;
    assert_eq!(
        idp.token_hits(),
        hits + 1,
        "the provider was asked, and answered"
    );
    assert_login_refused(
        &proxy,
        done,
        401,
        "does not belong to this login",
        "nonce_mismatch",
    )
    .await;
    assert!(
        !proxy.log_text().contains(&used_code),
        "codes are never logged"
    );
}

#[tokio::test]
async fn logout_at_a_provider_without_end_session_returns_to_rd() {
    let options = DevIdpOptions {
        end_session_endpoint: false,
        ..DevIdpOptions::default()
    };
    let (_idp, proxy) = setup_full(options, "", "", "").await;
    let (session, _) = login(&proxy, "support", "alice", "/").await.unwrap();
    let origin = format!("http://{}", proxy.addr);
    let out = client()
        .post(proxy.url("/.auth/logout?rd=/bye"))
        .header("origin", origin.as_str())
        .header("cookie", session.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302);
    assert_eq!(location(&out), "/bye");
    let cleared = set_cookie_named(&out, "portcullis").expect("the session cookie is set");
    assert!(clears(&cleared), "{cleared}");
    let me = client()
        .get(proxy.url("/.auth/me"))
        .header("cookie", session.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "the session is gone");
}

/// The attributes of a Set-Cookie header, lower-cased, without the pair.
fn attributes(header: &str) -> Vec<String> {
    header
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect()
}

/// A login at a portcullis whose `public_url` is https (it listens on plain
/// http here; the browser's https leg is not the point): the callback URL
/// the provider sends back is fetched over http instead. Returns the
/// pending login's Set-Cookie and the callback's response.
async fn login_behind_https(proxy: &Proxy) -> (String, reqwest::Response) {
    let c = client();
    let start = c
        .get(proxy.url("/.auth/login?deployment=support&rd=%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let pending_header = set_cookie_headers(&start).remove(0);
    let callback = choose_user(&c, &location(&start), "alice").await;
    let https_callback = format!("https://{}/.auth/callback?", proxy.addr);
    assert!(callback.starts_with(&https_callback), "{callback}");
    let callback = callback.replacen("https://", "http://", 1);
    let done = return_to(&c, &callback, &set_cookies(&start)).await;
    (pending_header, done)
}

#[tokio::test]
async fn an_https_public_url_gives_host_prefixed_secure_cookies() {
    let (_idp, proxy) = setup_https("public_url: \"https://{PROXY}\"", "").await;
    let (pending, done) = login_behind_https(&proxy).await;
    assert!(pending.starts_with("__Host-portcullis-login-"), "{pending}");
    assert!(
        attributes(&pending).contains(&"secure".to_string()),
        "{pending}"
    );
    assert_eq!(done.status(), 302, "{:?}", done.headers());
    let session = set_cookie_named(&done, "__Host-portcullis").expect("a __Host- session cookie");
    let attrs = attributes(&session);
    for wanted in ["secure", "httponly", "samesite=lax", "path=/"] {
        assert!(attrs.contains(&wanted.to_string()), "{wanted}: {session}");
    }
    assert!(
        !attrs.iter().any(|a| a.starts_with("domain")),
        "__Host- cookies have no Domain: {session}"
    );
    // The cookie is the credential under its prefixed name, and stays at
    // the edge.
    let pair = session.split(';').next().unwrap().to_string();
    let echoed: serde_json::Value = client()
        .get(proxy.url("/v1/x?deploymentId=support"))
        .header("cookie", format!("{pair}; site_pref=dark"))
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
    // Logout (from the https origin) clears that cookie.
    let out = client()
        .post(proxy.url("/.auth/logout"))
        .header("origin", format!("https://{}", proxy.addr))
        .header("cookie", pair.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302);
    let cleared = set_cookie_named(&out, "__Host-portcullis").expect("cleared by name");
    assert!(clears(&cleared) && attributes(&cleared).contains(&"secure".to_string()));
}

/// portcullis with `public_url` replaced by `public_url` and `extra` lines.
async fn setup_https(public_url: &str, extra: &str) -> (DevIdp, Proxy) {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let config = format!(
        r#"{preamble}
messengers:
  support:
    authentication: {{enabled: true, provider: dev}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allowed_origins: ["https://{{PROXY}}"]}}
routes: [{{path_prefix: /v1}}]
{extra}
"#,
        preamble =
            config_with_dev_provider(&idp).replace("public_url: \"http://{PROXY}\"", public_url),
    );
    assert!(config.contains(public_url));
    let proxy = Proxy::start_with_env(&config, &[("DEV_SECRET", "demo-secret")]).await;
    (idp, proxy)
}

#[tokio::test]
async fn cookie_domain_is_set_on_every_cookie_and_drops_the_host_prefix() {
    let (_idp, proxy) = setup_https(
        "public_url: \"https://{PROXY}\"",
        "sessions: {cookie: {name: chat, domain: example.test}}",
    )
    .await;
    let (pending, done) = login_behind_https(&proxy).await;
    assert!(pending.starts_with("chat-login-"), "{pending}");
    assert!(
        attributes(&pending).contains(&"domain=example.test".to_string()),
        "{pending}"
    );
    assert_eq!(done.status(), 302);
    let session = set_cookie_named(&done, "chat").expect("the session cookie, unprefixed");
    let attrs = attributes(&session);
    assert!(
        attrs.contains(&"domain=example.test".to_string()),
        "{session}"
    );
    assert!(attrs.contains(&"secure".to_string()), "{session}");
    let pair = session.split(';').next().unwrap();
    let me = client()
        .get(proxy.url("/.auth/me"))
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
}

#[tokio::test]
async fn a_provider_error_at_the_callback_is_shown_plainly() {
    let (idp, proxy) = setup().await;
    let c = client();
    let start = c
        .get(proxy.url("/.auth/login?deployment=support&rd=%2F"))
        .send()
        .await
        .unwrap();
    let pending = set_cookies(&start);
    // The user cancels at the provider, which answers with `error`.
    let cancelled = submit_login_form(&c, &location(&start), "alice", ("cancel", "1")).await;
    let callback = location(&cancelled);
    assert!(callback.contains("error=access_denied"), "{callback}");
    let hits = idp.token_hits();
    let done = return_to(&c, &callback, &pending).await;
    let pending_name = pending[0].split('=').next().unwrap().to_string();
    let cleared = set_cookie_named(&done, &pending_name).expect("the pending cookie is cleared");
    assert!(clears(&cleared), "{cleared}");
    assert_login_refused(
        &proxy,
        done,
        401,
        "The identity provider refused the login: access_denied. the user cancelled the login",
        "provider_error",
    )
    .await;
    assert_eq!(idp.token_hits(), hits, "nothing to redeem");

    // Whatever the answer carries is text on the page, never markup, and
    // the client secret appears nowhere.
    let start = c
        .get(proxy.url("/.auth/login?deployment=support&rd=%2F"))
        .send()
        .await
        .unwrap();
    let state = url::Url::parse(&location(&start))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let hostile = proxy.url(&format!(
        "/.auth/callback?state={state}&error=server_error&error_description={}",
        urlencode("<script>alert(1)</script>")
    ));
    let page = return_to(&c, &hostile, &set_cookies(&start)).await;
    assert_eq!(page.status(), 401);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let text = page.text().await.unwrap();
    assert!(text.contains("server_error"), "{text}");
    assert!(
        text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{text}"
    );
    assert!(!text.contains("<script>"), "{text}");
    assert!(!text.contains("demo-secret"));
    assert!(!proxy.log_text().contains("demo-secret"));
}

/// Sends `request` every 200 ms until the provider's token endpoint has
/// been asked more than `hits` times, within `within`: the requests that
/// find the session due start its re-check. The new count, and how long
/// the requests went on.
async fn rechecked_by_requests<F, R>(
    idp: &DevIdp,
    hits: u64,
    within: std::time::Duration,
    request: F,
) -> (u64, std::time::Duration)
where
    F: Fn() -> R,
    R: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let started = std::time::Instant::now();
    while idp.token_hits() == hits {
        assert!(
            started.elapsed() < within,
            "no re-check reached the provider within {within:?}: \
             still {hits} token requests"
        );
        assert_eq!(request().await.unwrap().status(), 200);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    (idp.token_hits(), started.elapsed())
}

#[tokio::test]
async fn a_provider_that_accepts_only_client_secret_post_gets_it() {
    let options = DevIdpOptions {
        client_secret_post_only: true,
        ..DevIdpOptions::default()
    };
    let (idp, proxy) = setup_full(
        options,
        "    scopes: [openid, email, profile, offline_access]",
        "    session: {token_lifetime: 5s}",
        "",
    )
    .await;
    let hits = idp.token_hits();
    let (session, _) = login(&proxy, "support", "alice", "/")
        .await
        .unwrap_or_else(|(status, page)| panic!("{status}: {page}"));
    assert_eq!(idp.token_hits(), hits + 1);
    // The refresh grant of a re-check authenticates the same way. Whether
    // the provider took it shows in when the session is due again: a
    // renewed one after `token_lifetime` (5 s), one whose re-check was
    // refused (invalid_client) only a minute later. So two rounds.
    let c = client();
    let get = || {
        c.get(proxy.url("/v1/x?deploymentId=support"))
            .header("cookie", session.as_str())
            .send()
    };
    let within = std::time::Duration::from_secs(8);
    let (asked, _) = rechecked_by_requests(&idp, hits + 1, within, get).await;
    assert_eq!(asked, hits + 2, "one re-check");
    // Not due again at once, either way.
    for _ in 0..5 {
        assert_eq!(get().await.unwrap().status(), 200);
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert_eq!(idp.token_hits(), hits + 2);
    // The second round: only a renewed session is due again this soon.
    let (asked, waited) = rechecked_by_requests(&idp, hits + 2, within, get).await;
    assert_eq!(asked, hits + 3, "the renewed session is re-checked again");
    assert!(
        waited >= std::time::Duration::from_secs(3),
        "not before its token lifetime: {waited:?}"
    );
    assert_eq!(get().await.unwrap().status(), 200, "and goes on");
    assert!(
        !proxy.log_text().contains("re-check postponed"),
        "{}",
        proxy.log_text()
    );
}

/// Browser login with `max_age`: the pending login keeps it, and the
/// callback refuses an ID token whose `auth_time` is older.
#[tokio::test]
async fn a_browser_login_older_than_its_max_age_is_refused() {
    // No clock skew forgiven, so that two seconds are older than one.
    let (idp, proxy) = setup_with("    clock_skew: 0s", "").await;
    let c = client();
    // Both logins at the provider, then both callbacks at least two whole
    // seconds after the provider's `auth_time`.
    let at_provider = |max_age: u64| {
        let c = &c;
        let url = proxy.url(&format!(
            "/.auth/login?deployment=support&rd=%2F&max_age={max_age}"
        ));
        async move {
            let start = c.get(url).send().await.unwrap();
            assert_eq!(start.status(), 302);
            let authorize = location(&start);
            assert!(
                authorize.contains(&format!("max_age={max_age}")),
                "the provider is told: {authorize}"
            );
            let callback = choose_user(c, &authorize, "alice").await;
            (callback, set_cookies(&start))
        }
    };
    let (stale, stale_pending) = at_provider(1).await;
    let (fresh, fresh_pending) = at_provider(3600).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;

    let hits = idp.token_hits();
    let done = return_to(&c, &stale, &stale_pending).await;
    let pending_name = stale_pending[0].split('=').next().unwrap().to_string();
    let cleared = set_cookie_named(&done, &pending_name).expect("the pending cookie is cleared");
    assert!(clears(&cleared), "{cleared}");
    assert_login_refused(
        &proxy,
        done,
        401,
        "The provider's login is older than requested.",
        "login_too_old",
    )
    .await;
    assert_eq!(
        idp.token_hits(),
        hits + 1,
        "refused after redeeming the code"
    );
    let ok = [("deployment", "support"), ("result", "ok")];
    assert_eq!(proxy.metric("portcullis_logins_total", &ok).await, None);

    // The control: as old a login, with room in max_age, is taken.
    let done = return_to(&c, &fresh, &fresh_pending).await;
    assert_eq!(done.status(), 302);
    assert_eq!(location(&done), "/");
    let session = set_cookies(&done)
        .into_iter()
        .find(|c| !c.contains("-login-"))
        .expect("a session cookie");
    let me = c
        .get(proxy.url("/.auth/me"))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    assert_eq!(
        proxy.metric("portcullis_logins_total", &ok).await,
        Some(1.0)
    );
}

#[tokio::test]
async fn at_most_four_pending_logins_are_kept_and_the_oldest_gives_way() {
    let (_idp, proxy) = setup().await;
    let c = client();
    let login_url = proxy.url("/.auth/login?deployment=support&rd=%2F");
    let start = |jar: Vec<String>| {
        let mut request = c.get(login_url.as_str());
        if !jar.is_empty() {
            request = request.header("cookie", jar.join("; "));
        }
        request.send()
    };
    // The browser's jar, oldest first (the order browsers send them in).
    let mut jar: Vec<String> = Vec::new();
    let mut authorizes = Vec::new();
    for _ in 0..4 {
        let resp = start(jar.clone()).await.unwrap();
        let headers = set_cookie_headers(&resp);
        assert_eq!(headers.len(), 1, "room for four: {headers:?}");
        jar.push(set_cookies(&resp).remove(0));
        authorizes.push(location(&resp));
    }
    let name = |pair: &str| pair.split('=').next().unwrap().to_string();
    let fifth = start(jar.clone()).await.unwrap();
    let cleared: Vec<String> = set_cookie_headers(&fifth)
        .iter()
        .filter(|h| clears(h))
        .map(|h| name(h))
        .collect();
    assert_eq!(cleared, vec![name(&jar[0])], "the oldest gives way");
    jar.remove(0);
    jar.push(set_cookies(&fifth).remove(0));
    assert_eq!(jar.len(), 4);

    // The oldest login, finished at the provider, has nothing to come back
    // to; the others still work.
    let first = choose_user(&c, &authorizes[0], "alice").await;
    let refused = return_to(&c, &first, &jar).await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("not started here"));
    let second = choose_user(&c, &authorizes[1], "alice").await;
    assert_eq!(return_to(&c, &second, &jar).await.status(), 302);
}

#[tokio::test]
async fn a_login_whose_claims_outgrow_the_session_limit_is_refused_and_stores_nothing() {
    // The provider allows ID tokens up to 64 KiB, so the session limit
    // (64 KiB of tokens and claims) is what refuses this one.
    let (idp, proxy) = setup_with("    max_token_bytes: 65536", "").await;
    idp.set_id_token_claims("alice", serde_json::json!({"bio": "x".repeat(36_000)}));
    // Refused at the callback: a page, no redirect, so no session cookie.
    let refused = login(&proxy, "support", "alice", "/").await.unwrap_err();
    assert_eq!(refused.0, 403, "{}", refused.1);
    assert!(
        refused.1.contains("larger than a session keeps"),
        "{}",
        refused.1
    );
    assert_eq!(
        proxy
            .metric(
                "portcullis_logins_total",
                &[("deployment", "support"), ("result", "session_too_large")]
            )
            .await,
        Some(1.0)
    );
    // Another user of the same provider logs in as usual.
    let (bob, _) = login(&proxy, "support", "bob", "/").await.unwrap();
    let me = client()
        .get(proxy.url("/.auth/me"))
        .header("cookie", &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
}
