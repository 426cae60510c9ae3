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
