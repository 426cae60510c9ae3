//! Every live connection ends with its credential (SPEC §5): a handshake
//! that is still in flight when its session ends is closed as soon as the
//! upstream's 101 makes it live.

mod common;

use std::time::{Duration, Instant};

use common::browser::*;
use common::*;
use portcullis::devidp::DevIdpOptions;

const CHAT: &str = "/v1/chat?deploymentId=support";

fn config(preamble: &str, upstream: std::net::SocketAddr) -> String {
    format!(
        r#"{preamble}
messengers:
  support:
    authentication: {{enabled: true, provider: dev}}
upstreams:
  chat: {{servers: ["{upstream}"]}}
deployments:
  - {{id: support, messenger: support, upstream: chat, allowed_origins: ["http://{{PROXY}}"]}}
routes: [{{path_prefix: /v1}}]
"#
    )
}

#[tokio::test]
async fn a_handshake_in_flight_when_its_session_ends_closes_right_after_its_101() {
    let idp = start_devidp(DevIdpOptions::default()).await;
    // The backend answers every handshake 2 s late.
    let relay = start_delaying_relay(start_backend().await, Duration::from_secs(2)).await;
    let proxy = Proxy::start_with_env(
        &config(&config_with_dev_provider(&idp), relay),
        &[("DEV_SECRET", "demo-secret")],
    )
    .await;
    let (session, _) = login(&proxy, "support", "alice", "/").await.unwrap();
    let origin = format!("http://{}", proxy.addr);

    // The handshake passes authentication, then waits for its 101 ...
    let handshake = {
        let url = proxy.ws_url(CHAT);
        let (origin, session) = (origin.clone(), session.clone());
        tokio::spawn(
            async move { ws_connect(&url, &[("Origin", &origin), ("Cookie", &session)]).await },
        )
    };
    proxy
        .metrics_when(Duration::from_secs(5), |m| {
            sample(
                m,
                "portcullis_auth_decisions_total",
                &[("method", "cookie"), ("outcome", "allowed")],
            )
            .is_some_and(|n| n >= 1.0)
        })
        .await;
    // ... while the user logs out.
    let out = no_redirects()
        .post(proxy.url("/.auth/logout"))
        .header("origin", &origin)
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302);
    let (mut ws, _) = handshake
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the handshake was admitted before the logout: {e}"));
    let live = Instant::now();
    assert_eq!(
        closed_with(&mut ws, CLOSE_DEADLINE).await,
        Some((4002, "session ended".into())),
        "{}",
        proxy.log_text()
    );
    eprintln!("closed {:?} after the 101", live.elapsed());
    assert_eq!(
        proxy
            .metric(
                "portcullis_forced_closes_total",
                &[("deployment", "support"), ("reason", "logout")]
            )
            .await,
        Some(1.0)
    );
}

/// Logs `user` in and opens a chat with the session; the socket and the
/// session's public id as the backend saw it.
async fn chat_of(proxy: &Proxy, user: &str) -> (Ws, String, String) {
    let (cookie, _) = login(proxy, "support", user, "/").await.unwrap();
    let origin = format!("http://{}", proxy.addr);
    let (mut ws, _) = ws_connect(
        &proxy.ws_url(CHAT),
        &[("Origin", &origin), ("Cookie", &cookie)],
    )
    .await
    .unwrap_or_else(|e| panic!("{user}'s chat: {e}"));
    let welcome = next_json(&mut ws).await;
    let session = welcome["identity"]["x-auth-session"]
        .as_str()
        .unwrap()
        .to_string();
    (ws, session, cookie)
}

async fn me_status(proxy: &Proxy, cookie: &str) -> u16 {
    no_redirects()
        .get(proxy.url("/.auth/me"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_admin_finds_a_users_sessions_and_ends_one_or_all_of_them() {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let proxy = Proxy::start_with_env(
        &config(&config_with_dev_provider(&idp), start_backend().await),
        &[("DEV_SECRET", "demo-secret")],
    )
    .await;
    let (mut first, first_id, first_cookie) = chat_of(&proxy, "alice").await;
    let (mut second, second_id, second_cookie) = chat_of(&proxy, "alice").await;
    let (mut bob, _, bob_cookie) = chat_of(&proxy, "bob").await;
    let subject = payload_sub(&idp);

    // A page re-pointed at loopback (DNS rebinding) is not served, and
    // ends nothing.
    let rebound = reqwest::Client::new()
        .delete(proxy.admin_url(&format!("/admin/subjects/{subject}/sessions")))
        .header("host", "rebind.evil.example:9090")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    assert_eq!(me_status(&proxy, &first_cookie).await, 200);

    let listed = proxy
        .admin_json(
            reqwest::Method::GET,
            &format!("/admin/sessions?sub={subject}&provider=dev"),
        )
        .await;
    let mut ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![first_id.as_str(), second_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected, "{listed}");
    assert_eq!(listed["sessions"][0]["live_connections_here"], 1);
    assert_eq!(listed["sessions"][0]["subject"], subject);
    assert!(
        !listed
            .to_string()
            .contains(&first_cookie[first_cookie.find('=').unwrap() + 1..]),
        "no cookie in the listing"
    );

    // One session: its chat closes, the other stays.
    let one = proxy
        .admin_json(
            reqwest::Method::DELETE,
            &format!("/admin/sessions/{first_id}"),
        )
        .await;
    assert_eq!(one["revoked"], 1, "{one}");
    assert_eq!(
        closed_with(&mut first, CLOSE_DEADLINE).await,
        Some((4002, "session revoked".into()))
    );
    assert_eq!(me_status(&proxy, &first_cookie).await, 401);
    assert_eq!(me_status(&proxy, &second_cookie).await, 200);
    assert_eq!(echo(&mut second, "still here").await["text"], "still here");
    let again = reqwest::Client::new()
        .delete(proxy.admin_url(&format!("/admin/sessions/{first_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "an ended session is not found");

    // Every session of the subject; bob's is untouched.
    let all = proxy
        .admin_json(
            reqwest::Method::DELETE,
            &format!("/admin/subjects/{subject}/sessions"),
        )
        .await;
    assert_eq!(all["revoked"], 1, "{all}");
    assert_eq!(
        closed_with(&mut second, CLOSE_DEADLINE).await,
        Some((4002, "session revoked".into()))
    );
    assert_eq!(me_status(&proxy, &second_cookie).await, 401);
    assert_eq!(me_status(&proxy, &bob_cookie).await, 200);
    assert_eq!(echo(&mut bob, "still here").await["text"], "still here");

    let counted = |action: &'static str, result: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(
                    "portcullis_admin_actions_total",
                    &[("action", action), ("result", result)],
                )
                .await
        }
    };
    assert_eq!(counted("revoke_session", "ok").await, Some(1.0));
    assert_eq!(counted("revoke_session", "not_found").await, Some(1.0));
    assert_eq!(counted("revoke_subject", "ok").await, Some(1.0));
    assert_eq!(
        proxy
            .metric("portcullis_session_ends_total", &[("reason", "revoked")])
            .await,
        Some(2.0)
    );
}

/// Alice's `sub` at the development provider.
fn payload_sub(idp: &portcullis::devidp::DevIdp) -> String {
    use base64::Engine;
    let token = idp.mint_id_token("alice", jsonwebtoken::Algorithm::RS256, None);
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sub"].as_str().unwrap().to_string()
}

/// A logout token for the dev provider's client, signed by `idp`, with
/// `claims` over the defaults (`Value::Null` removes one).
fn logout_token(idp: &portcullis::devidp::DevIdp, claims: serde_json::Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut token = serde_json::json!({
        "iss": idp.issuer(),
        "aud": "portcullis-demo",
        "iat": now,
        "exp": now + 120,
        "jti": format!("jti-{}", rand_suffix()),
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    });
    for (k, v) in claims.as_object().unwrap() {
        if v.is_null() {
            token.as_object_mut().unwrap().remove(k);
        } else {
            token[k] = v.clone();
        }
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.typ = Some("logout+jwt".into());
    idp.sign(header, &token)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Delivers `token` as a provider would; the status and the JSON body.
async fn deliver(proxy: &Proxy, token: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(proxy.url("/.auth/backchannel-logout"))
        .form(&[("logout_token", token)])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn a_back_channel_logout_ends_the_named_sessions_once_and_refuses_everything_else() {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let proxy = Proxy::start_with_env(
        &config(&config_with_dev_provider(&idp), start_backend().await),
        &[("DEV_SECRET", "demo-secret")],
    )
    .await;
    let subject = payload_sub(&idp);
    // Two logins of alice at the provider (two provider sessions), one of bob.
    idp.set_id_token_claims("alice", serde_json::json!({"sid": "op-session-1"}));
    let (mut first, _, first_cookie) = chat_of(&proxy, "alice").await;
    idp.set_id_token_claims("alice", serde_json::json!({"sid": "op-session-2"}));
    let (mut second, _, second_cookie) = chat_of(&proxy, "alice").await;
    let (mut bob, _, bob_cookie) = chat_of(&proxy, "bob").await;

    // What is not a logout token, or not for us, changes nothing.
    let id_token = idp.mint_id_token("alice", jsonwebtoken::Algorithm::RS256, None);
    let sid_only = serde_json::json!({"sid": "op-session-1"});
    // The first signature character changed to another one (it carries six
    // whole bits, so any letter is canonical base64url; the last one carries
    // padding bits, and changing it can make the token malformed instead).
    let token = logout_token(&idp, sid_only.clone());
    let at = token.rfind('.').unwrap() + 1;
    let first_char = token.as_bytes()[at];
    let mut tampered = token.clone();
    tampered.replace_range(at..at + 1, if first_char == b'A' { "B" } else { "A" });
    let refusals = [
        (id_token, "not_a_logout_token"),
        (
            logout_token(&idp, serde_json::json!({"sub": subject, "nonce": "n"})),
            "nonce_not_allowed",
        ),
        (
            logout_token(&idp, serde_json::json!({"sub": null, "sid": null})),
            "no_sub_or_sid",
        ),
        (
            logout_token(&idp, serde_json::json!({"sub": subject, "jti": null})),
            "missing_jti",
        ),
        (
            logout_token(
                &idp,
                serde_json::json!({"sub": subject, "aud": "someone-else"}),
            ),
            "unknown_issuer",
        ),
        (
            logout_token(
                &idp,
                serde_json::json!({"sub": subject, "iss": "https://elsewhere.example"}),
            ),
            "unknown_issuer",
        ),
        (tampered, "bad_signature"),
        ("not.a.jwt".to_string(), "token_malformed"),
    ];
    for (token, code) in &refusals {
        let (status, body) = deliver(&proxy, token).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(*code)),
            "{body}"
        );
        assert!(!body.to_string().contains(token.as_str()));
    }
    let not_a_form = reqwest::Client::new()
        .post(proxy.url("/.auth/backchannel-logout"))
        .json(&serde_json::json!({"logout_token": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(not_a_form.status(), 400);
    let get = reqwest::get(proxy.url("/.auth/backchannel-logout"))
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    for cookie in [&first_cookie, &second_cookie, &bob_cookie] {
        assert_eq!(me_status(&proxy, cookie).await, 200);
    }

    // By the provider's session id: only that session ends.
    let by_sid = logout_token(&idp, sid_only);
    assert_eq!(deliver(&proxy, &by_sid).await.0, 200);
    assert_eq!(
        closed_with(&mut first, CLOSE_DEADLINE).await,
        Some((4002, "logged out at the provider".into()))
    );
    assert_eq!(me_status(&proxy, &first_cookie).await, 401);
    assert_eq!(me_status(&proxy, &second_cookie).await, 200);
    // The same token again is a replay.
    let (status, body) = deliver(&proxy, &by_sid).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("token_replayed"))
    );

    // By subject: every session of alice, not bob's.
    let by_sub = logout_token(&idp, serde_json::json!({"sub": subject}));
    assert_eq!(deliver(&proxy, &by_sub).await.0, 200);
    assert_eq!(
        closed_with(&mut second, CLOSE_DEADLINE).await,
        Some((4002, "logged out at the provider".into()))
    );
    assert_eq!(me_status(&proxy, &second_cookie).await, 401);
    assert_eq!(me_status(&proxy, &bob_cookie).await, 200);
    assert_eq!(echo(&mut bob, "still here").await["text"], "still here");

    let counted = |result: &'static str| {
        let proxy = &proxy;
        async move {
            proxy
                .metric(
                    "portcullis_backchannel_logouts_total",
                    &[("result", result)],
                )
                .await
        }
    };
    assert_eq!(counted("ok").await, Some(2.0));
    assert_eq!(counted("token_replayed").await, Some(1.0));
    assert_eq!(
        proxy
            .metric(
                "portcullis_session_ends_total",
                &[("reason", "provider_logout")]
            )
            .await,
        Some(2.0)
    );
    let log = proxy.log_text();
    assert!(
        !log.contains(&by_sub[by_sub.rfind('.').unwrap()..]),
        "no token in the log"
    );
}

/// Pingora cuts an upgraded connection whose client sends nothing for 60 s
/// (its default downstream read timeout), without a close frame. A chat
/// whose user only reads must last as long as its session does.
#[tokio::test]
async fn a_silent_chat_outlives_pingoras_read_timeout() {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let proxy = Proxy::start_with_env(
        &config(&config_with_dev_provider(&idp), start_backend().await),
        &[("DEV_SECRET", "demo-secret")],
    )
    .await;
    let (mut ws, _, _) = chat_of(&proxy, "alice").await;
    tokio::time::sleep(Duration::from_secs(70)).await;
    let echoed = echo(&mut ws, "still here").await;
    assert_eq!(echoed["text"], "still here", "{echoed}");
}
