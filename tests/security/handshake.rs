//! WebSocket handshake oddities, written raw: a request that asks for an
//! upgrade but is not a well-formed RFC 6455 opening handshake is refused at
//! the edge (400 `bad_handshake`; 426 with `Sec-WebSocket-Version: 13` for
//! a version other than 13), authenticated or not, before the backend.

use jsonwebtoken::Algorithm;

use crate::fixture::{raw, Env, ORIGIN};

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const VERSION: &str = "Sec-WebSocket-Version: 13\r\n";
const UPGRADE: &str = "Upgrade: websocket\r\n";
const CONNECTION: &str = "Connection: Upgrade\r\n";

#[tokio::test]
async fn malformed_handshakes_are_refused_at_the_edge() {
    let mut env = Env::start().await;
    let token = env.idp.mint_access_token("alice", Algorithm::ES256);
    env.secrets
        .push(token.rsplit('.').next().unwrap().to_string());
    let addr = env.proxy.addr;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("control", format!("{UPGRADE}{CONNECTION}{KEY}{VERSION}"), 101, ""),
        ("control: Connection: keep-alive, Upgrade", format!("{UPGRADE}Connection: keep-alive, Upgrade\r\n{KEY}{VERSION}"), 101, ""),
        ("no Sec-WebSocket-Key", format!("{UPGRADE}{CONNECTION}{VERSION}"), 400, "bad_handshake"),
        ("two Sec-WebSocket-Key", format!("{UPGRADE}{CONNECTION}{KEY}Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n{VERSION}"), 400, "bad_handshake"),
        ("two keys in one header", format!("{UPGRADE}{CONNECTION}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==, AAAAAAAAAAAAAAAAAAAAAA==\r\n{VERSION}"), 400, "bad_handshake"),
        ("a key that is not base64", format!("{UPGRADE}{CONNECTION}Sec-WebSocket-Key: not-base64-at-all!!\r\n{VERSION}"), 400, "bad_handshake"),
        ("a key of 15 bytes", format!("{UPGRADE}{CONNECTION}Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n{VERSION}"), 400, "bad_handshake"),
        ("a key of 17 bytes", format!("{UPGRADE}{CONNECTION}Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n{VERSION}"), 400, "bad_handshake"),
        ("an empty key", format!("{UPGRADE}{CONNECTION}Sec-WebSocket-Key: \r\n{VERSION}"), 400, "bad_handshake"),
        ("Sec-WebSocket-Version: 12", format!("{UPGRADE}{CONNECTION}{KEY}Sec-WebSocket-Version: 12\r\n"), 426, "unsupported_websocket_version"),
        ("Sec-WebSocket-Version: 13, 8", format!("{UPGRADE}{CONNECTION}{KEY}Sec-WebSocket-Version: 13, 8\r\n"), 426, "unsupported_websocket_version"),
        ("no Sec-WebSocket-Version", format!("{UPGRADE}{CONNECTION}{KEY}"), 400, "bad_handshake"),
        ("Sec-WebSocket-Version twice", format!("{UPGRADE}{CONNECTION}{KEY}{VERSION}{VERSION}"), 400, "bad_handshake"),
        ("Upgrade without Connection: upgrade", format!("{UPGRADE}{KEY}{VERSION}"), 400, "bad_handshake"),
        ("Upgrade with Connection: keep-alive", format!("{UPGRADE}Connection: keep-alive\r\n{KEY}{VERSION}"), 400, "bad_handshake"),
        ("Connection: upgrade without Upgrade", format!("{CONNECTION}{KEY}{VERSION}"), 400, "bad_handshake"),
        ("Upgrade: h2c", "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n".to_string(), 400, "bad_handshake"),
        ("Upgrade: websocket, h2c", format!("Upgrade: websocket, h2c\r\n{CONNECTION}{KEY}{VERSION}"), 400, "bad_handshake"),
        ("Upgrade twice", format!("{UPGRADE}Upgrade: h2c\r\n{CONNECTION}{KEY}{VERSION}"), 400, "bad_handshake"),
    ];
    for (case, headers, status, reason) in &cases {
        for (deployment, auth) in [
            ("support", format!("Authorization: Bearer {token}\r\n")),
            ("open", String::new()),
        ] {
            let case = format!("{case} ({deployment})");
            let request = format!(
                "GET /v1/chat?deploymentId={deployment} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {ORIGIN}\r\n{auth}{headers}\r\n"
            );
            let before = env.received.total();
            let answer = raw(addr, request.as_bytes()).await;
            if *status == 101 {
                if answer.status != Some(101) || env.received.total() == before {
                    env.fail(&case, format!("the handshake failed: {}", answer.text));
                }
                continue;
            }
            let body = answer.json().to_string();
            env.expect_refusal(
                &case,
                before,
                (answer.status.unwrap_or(0), &body),
                (*status, "bad_handshake", *reason),
            );
            if *status == 426 && answer.header("sec-websocket-version").as_deref() != Some("13") {
                env.fail(
                    &case,
                    format!("426 without Sec-WebSocket-Version: 13: {}", answer.text),
                );
            }
        }
    }

    // HTTP/1.0 cannot upgrade: a handshake spelled over it is refused too.
    let before = env.received.total();
    let request = format!(
        "GET /v1/chat?deploymentId=open HTTP/1.0\r\nHost: {addr}\r\nOrigin: {ORIGIN}\r\n{UPGRADE}{CONNECTION}{KEY}{VERSION}\r\n"
    );
    let answer = raw(addr, request.as_bytes()).await;
    let body = answer.json().to_string();
    env.expect_refusal(
        "HTTP/1.0 upgrade",
        before,
        (answer.status.unwrap_or(0), &body),
        (400, "bad_handshake", "bad_handshake"),
    );
    env.finish("WebSocket handshake").await;
}
