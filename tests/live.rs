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
