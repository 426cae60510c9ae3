//! The echo chat backend: what a messaging server looks like from behind
//! portcullis. It serves the chat page, answers WebSocket handshakes on any
//! path (echoing messages and telling the client which headers it received),
//! and answers other requests with a JSON description of the request.

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequest;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// The chat page.
pub const PAGE: &str = include_str!("../../web/demo.html");

/// Subprotocols the backend speaks, in order of preference.
pub const SUBPROTOCOLS: [&str; 2] = ["chat.v1", "chat.v2"];

pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(any_request)
}

/// Serves the backend on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Without TCP_NODELAY the welcome frame written right after the 101 waits
    // for the proxy's delayed ACK (40 ms) on a reused upstream connection.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router()).await
}

fn header_map_json(headers: &HeaderMap) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(serde_json::Value::Array(values)) => values.push(value.into()),
            _ => {
                map.insert(name.as_str().to_string(), json!([value]));
            }
        }
    }
    serde_json::Value::Object(map)
}

async fn any_request(req: Request<Body>) -> Response {
    let headers = req.headers().clone();
    let is_upgrade = headers
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if is_upgrade {
        return match WebSocketUpgrade::from_request(req, &()).await {
            Ok(ws) => {
                let ws = ws.protocols(SUBPROTOCOLS);
                let protocol = ws
                    .selected_protocol()
                    .and_then(|p| p.to_str().ok())
                    .map(str::to_string);
                ws.on_upgrade(move |socket| chat(socket, headers, protocol))
            }
            Err(rejection) => rejection.into_response(),
        };
    }
    let body = json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": header_map_json(&headers),
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// Greets the client with what the backend learned at the handshake, then
/// echoes every message.
async fn chat(mut socket: WebSocket, headers: HeaderMap, protocol: Option<String>) {
    let who = ["x-auth-name", "x-auth-email", "x-auth-subject"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .unwrap_or("anonymous")
        .to_string();
    let identity: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-auth-"))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            )
        })
        .collect();
    let welcome = json!({
        "type": "welcome",
        "protocol": protocol,
        "user": who,
        "identity": identity,
        "headers": header_map_json(&headers),
    });
    if socket
        .send(Message::Text(welcome.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(text) => Message::Text(
                json!({"type": "echo", "from": who, "text": text.as_str()})
                    .to_string()
                    .into(),
            ),
            Message::Binary(data) => Message::Binary(data),
            // The reply to a close is queued by the library and flushed by
            // the next receive, which then ends the loop.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
