//! A command-line "mobile app" using portcullis's token API the way a native
//! messenger (the hosted product's mobile SDK) does: the app runs the login
//! at the deployment's OpenID provider itself, over an RFC 8252 loopback
//! redirect with PKCE, and trades the code for a messenger token.
//!
//! 1. `GET /.auth/deployments/{id}/config.json`: the provider's authorization
//!    endpoint, client id and scopes, and portcullis's endpoints.
//! 2. A listener on `127.0.0.1:<any port>`; `redirect_uri` is
//!    `http://127.0.0.1:<port>/callback` (the deployment registers
//!    `http://127.0.0.1/callback`; any port matches, RFC 8252 §7.3). PKCE S256
//!    verifier, `state` and `nonce` are fresh random values.
//! 3. `OPEN <authorize url>` on stdout: open it in a browser and log in. The
//!    provider sends the browser back to the listener with `code`, `state`
//!    and `iss` (RFC 9207).
//! 4. `POST /.auth/token` with the code, redirect URI, verifier, nonce and
//!    `iss` → `{"jwt", "refreshToken", "expiresIn"}`.
//! 5. The messaging WebSocket, the jwt in `Sec-WebSocket-Protocol:
//!    authorization.bearer.<jwt>, chat.v1` (portcullis removes that entry;
//!    the backend picks `chat.v1`), and no `Origin`: the deployment must set
//!    `allow_missing_origin: true`. The backend's welcome shows the identity.
//! 6. `POST /.auth/token/refresh` `--refreshes` times (the refresh token
//!    rotates), then `DELETE /.auth/token`: the session ends and the socket
//!    is closed with 4002.
//!
//! Progress is JSON lines on stdout (`{"step": ...}`); tokens are never
//! printed. Any failure prints `{"step":"failed",...}` and exits with 1.
//!
//! Against the demo (`portcullis demo`, which registers the loopback redirect
//! for its chat deployment), in a second terminal:
//!
//! ```sh
//! cargo run --example native_app -- --portcullis http://127.0.0.1:8080 \
//!     --deployment 6f2d3c1a-0b4e-4c5d-9e8f-7a6b5c4d3e2f
//! ```
//!
//! then open the printed URL in a browser on the same machine and pick a user.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "The native-app login flow of portcullis's token API")]
struct Args {
    /// portcullis's base URL, e.g. http://127.0.0.1:8080
    #[arg(long)]
    portcullis: String,
    /// The deployment id.
    #[arg(long)]
    deployment: String,
    /// What to send on the messaging WebSocket.
    #[arg(long, default_value = "hello from the native app")]
    user_message: String,
    /// How many times to refresh the token before revoking it.
    #[arg(long, default_value_t = 1)]
    refreshes: u32,
}

/// How long the user has to log in in the browser.
const LOGIN_WAIT: Duration = Duration::from_secs(300);
/// How long a WebSocket frame may take.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// Why the app stopped: printed as a `failed` step.
type Failure = Value;

fn step(value: Value) {
    println!("{value}");
}

fn failed(at: &str, message: impl std::fmt::Display) -> Failure {
    json!({"step": "failed", "at": at, "message": message.to_string()})
}

/// `n` random bytes, base64url without padding.
fn random(n: usize) -> Result<String, Failure> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| failed("random", "no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

const SIGNED_IN_PAGE: &str = "<!doctype html><title>Signed in</title>\
    <p>You can close this window and return to the app.</p>";
const NOT_FOUND_PAGE: &str = "<!doctype html><title>Not found</title><p>Not found.</p>";

/// What the browser brought back to the loopback listener.
struct Callback {
    query: Vec<(String, String)>,
}

impl Callback {
    fn get(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Answers one loopback connection: the request line's `/callback?...` goes
/// to `found`; anything else (a favicon, a speculative connection) gets 404.
async fn serve_callback(mut stream: tokio::net::TcpStream, found: mpsc::Sender<Callback>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    });
    let _ = read.await;
    let line = String::from_utf8_lossy(&head);
    let target = line
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("");
    let callback = match target.split_once('?') {
        Some(("/callback", query)) => Some(Callback {
            query: url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        }),
        _ => None,
    };
    let (status, page) = match callback {
        Some(_) => ("200 OK", SIGNED_IN_PAGE),
        None => ("404 Not Found", NOT_FOUND_PAGE),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{page}",
        page.len()
    );
    // The page first: the app may stop as soon as it has the callback.
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
    if let Some(callback) = callback {
        let _ = found.send(callback).await;
    }
}

/// A token-API call's JSON answer, or its `{"error", "error_description"}`.
async fn api(at: &str, request: reqwest::RequestBuilder) -> Result<(u16, Value), Failure> {
    let resp = request.send().await.map_err(|e| failed(at, e))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| failed(at, e))?;
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|_| failed(at, format!("HTTP {status}, not JSON")))?
    };
    if !(200..300).contains(&status) {
        return Err(json!({"step": "failed", "at": at, "status": status,
            "error": body["error"], "error_description": body["error_description"]}));
    }
    Ok((status, body))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, parsed as JSON (pings are answered by the library).
async fn next_json(ws: &mut Ws) -> Result<Value, Failure> {
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(t.as_str()).map_err(|e| failed("websocket", e))
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => {
                return Err(failed(
                    "websocket",
                    format!("expected a text frame, got {other:?}"),
                ))
            }
            Err(_) => return Err(failed("websocket", "no frame in time")),
        }
    }
}

fn text(v: &Value, at: &str, field: &str) -> Result<String, Failure> {
    v[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| failed(at, format!("no `{field}` in the answer")))
}

async fn run(args: Args) -> Result<(), Failure> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| failed("http", e))?;
    let base = args.portcullis.trim_end_matches('/');
    let id = args.deployment.as_str();
    let escaped: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();

    // 1. The deployment's public configuration.
    let (_, config) = api(
        "config",
        http.get(format!("{base}/.auth/deployments/{escaped}/config.json")),
    )
    .await?;
    let oidc = &config["oidc"];
    let authorize = oidc["authorizationEndpoint"].as_str().ok_or_else(|| {
        failed(
            "config",
            "no authentication (or the provider is not reachable yet)",
        )
    })?;
    let scopes: Vec<&str> = oidc["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let scope = if scopes.is_empty() {
        "openid".to_string()
    } else {
        scopes.join(" ")
    };
    let endpoint = |name: &str| text(&config["endpoints"], "config", name);
    let (token_url, refresh_url, revoke_url) = (
        endpoint("token")?,
        endpoint("refresh")?,
        endpoint("revoke")?,
    );
    let messaging = text(&config, "config", "messagingEndpoint")?;
    step(
        json!({"step": "config", "status": config["status"], "issuer": oidc["issuer"], "scope": scope}),
    );

    // 2. Loopback listener, PKCE, state and nonce.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| failed("listen", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| failed("listen", e))?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let verifier = random(32)?;
    let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ));
    let (state, nonce) = (random(16)?, random(16)?);
    let mut url = url::Url::parse(authorize).map_err(|e| failed("config", e))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", oidc["clientId"].as_str().unwrap_or_default())
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", &scope)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    // 3. The user logs in in a browser.
    println!("OPEN {url}");
    std::io::Write::flush(&mut std::io::stdout()).map_err(|e| failed("stdout", e))?;
    let (found, mut callbacks) = mpsc::channel(1);
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_callback(stream, found.clone()));
        }
    });
    let callback = tokio::time::timeout(LOGIN_WAIT, callbacks.recv())
        .await
        .ok()
        .flatten();
    server.abort();
    let callback = callback.ok_or_else(|| failed("callback", "no login came back in time"))?;
    if let Some(error) = callback.get("error") {
        return Err(json!({"step": "failed", "at": "callback", "error": error,
            "error_description": callback.get("error_description")}));
    }
    if callback.get("state") != Some(state.as_str()) {
        return Err(failed(
            "callback",
            "the state does not match: not our login",
        ));
    }
    let code = callback
        .get("code")
        .ok_or_else(|| failed("callback", "no code"))?;
    let iss = callback.get("iss");
    step(json!({"step": "callback", "iss": iss}));

    // 4. The code for a messenger token.
    let mut oauth = json!({"code": code, "redirectUri": redirect_uri, "codeVerifier": verifier, "nonce": nonce});
    if let Some(iss) = iss {
        oauth["iss"] = iss.into();
    }
    let (_, tokens) = api(
        "exchange",
        http.post(&token_url)
            .json(&json!({"deploymentId": id, "oauth": oauth})),
    )
    .await?;
    let mut jwt = text(&tokens, "exchange", "jwt")?;
    let mut refresh_token = text(&tokens, "exchange", "refreshToken")?;
    step(json!({"step": "exchanged", "expiresIn": tokens["expiresIn"]}));

    // 5. The messaging WebSocket, authenticated by the subprotocol carrier.
    let mut request = messaging
        .as_str()
        .into_client_request()
        .map_err(|e| failed("websocket", e))?;
    let protocols = http::HeaderValue::from_str(&format!("authorization.bearer.{jwt}, chat.v1"))
        .map_err(|_| failed("websocket", "the jwt is not a header value"))?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols);
    let (mut ws, response) = match tokio::time::timeout(
        FRAME_WAIT,
        tokio_tungstenite::connect_async(request),
    )
    .await
    {
        Err(_) => return Err(failed("websocket", "the handshake timed out")),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            return Err(
                json!({"step": "failed", "at": "websocket", "status": resp.status().as_u16(), "body": body}),
            );
        }
        Ok(Err(e)) => return Err(failed("websocket", e)),
        Ok(Ok(connected)) => connected,
    };
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let welcome = next_json(&mut ws).await?;
    let identity = &welcome["identity"];
    step(
        json!({"step": "welcome", "protocol": protocol, "subject": identity["x-auth-subject"],
        "email": identity["x-auth-email"], "deployment": identity["x-auth-deployment"],
        "tokenReachedBackend": welcome.to_string().contains(&jwt)}),
    );
    ws.send(Message::Text(args.user_message.clone().into()))
        .await
        .map_err(|e| failed("websocket", e))?;
    let echo = next_json(&mut ws).await?;
    step(json!({"step": "echo", "text": echo["text"], "from": echo["from"]}));

    // 6. Refreshes: each answer carries the next refresh token.
    for n in 1..=args.refreshes {
        let body = json!({"refreshToken": refresh_token, "deploymentId": id});
        let (_, tokens) = api("refresh", http.post(&refresh_url).json(&body)).await?;
        jwt = text(&tokens, "refresh", "jwt")?;
        let next = text(&tokens, "refresh", "refreshToken")?;
        step(
            json!({"step": "refreshed", "n": n, "rotated": next != refresh_token, "expiresIn": tokens["expiresIn"]}),
        );
        refresh_token = next;
    }

    // 7. Logout: the session ends, and with it the live socket.
    let (status, _) = api("revoke", http.delete(&revoke_url).bearer_auth(&jwt)).await?;
    let close_code = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Close(close)) => {
                    return Some(close.map_or(1005, |c| u16::from(c.code)))
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    step(json!({"step": "revoked", "status": status, "close_code": close_code}));
    let after = http
        .post(&refresh_url)
        .json(&json!({"refreshToken": refresh_token, "deploymentId": id}))
        .send()
        .await;
    step(
        json!({"step": "refresh_after_revoke", "status": after.map(|r| r.status().as_u16()).ok()}),
    );
    if close_code.is_none() {
        return Err(failed(
            "revoke",
            "the WebSocket was not closed after the revoke",
        ));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => {
            step(failure);
            std::process::ExitCode::FAILURE
        }
    }
}
