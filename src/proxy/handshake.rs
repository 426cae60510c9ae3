//! The WebSocket opening handshake (RFC 6455 §4.1, §4.2.1), checked at the
//! edge: a request that asks for an upgrade must be a well-formed WebSocket
//! handshake before anything reaches the backend. Pingora tunnels any
//! request with an `Upgrade` header once the upstream answers 101, so
//! without this check a backend would be the one to judge a malformed
//! handshake (or accept another protocol, such as `h2c`, whose later
//! requests portcullis would never see).

use base64::Engine;
use pingora::http::RequestHeader;

use super::refusal::Refusal;

/// The one WebSocket version (RFC 6455 §4.1).
pub const WEBSOCKET_VERSION: &str = "13";

/// Whether the request asks for a protocol switch: an `Upgrade` header, or
/// `upgrade` listed in `Connection`.
pub fn asks_for_upgrade(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::UPGRADE) || connection_lists_upgrade(req)
}

fn connection_lists_upgrade(req: &RequestHeader) -> bool {
    req.headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The one value of header `name`, if it is present exactly once.
fn single<'a>(req: &'a RequestHeader, name: &str) -> Result<Option<&'a [u8]>, ()> {
    let mut values = req.headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(v.as_bytes())),
        (Some(_), Some(_)) => Err(()),
    }
}

/// Checks a request that asks for an upgrade: HTTP/1.1 `GET`, one
/// `Upgrade: websocket`, `Connection` listing `upgrade`, one
/// `Sec-WebSocket-Key` that is the base64 of 16 bytes, one
/// `Sec-WebSocket-Version` that is `13` (another version is refused with
/// `Refusal::UnsupportedWebSocketVersion`, a 426). Other requests pass.
pub fn check(req: &RequestHeader) -> Result<(), Refusal> {
    if !asks_for_upgrade(req) {
        return Ok(());
    }
    let bad = Refusal::BadHandshake;
    if req.version != http::Version::HTTP_11 {
        return Err(bad("a WebSocket handshake needs HTTP/1.1"));
    }
    if req.method != http::Method::GET {
        return Err(bad("a WebSocket handshake is a GET"));
    }
    match single(req, "upgrade") {
        Ok(Some(v)) if v.eq_ignore_ascii_case(b"websocket") => {}
        _ => return Err(bad("Upgrade must be websocket, once")),
    }
    if !connection_lists_upgrade(req) {
        return Err(bad("Connection must list upgrade"));
    }
    let key = match single(req, "sec-websocket-key") {
        Ok(Some(key)) => key,
        _ => return Err(bad("Sec-WebSocket-Key must be sent once")),
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if !decoded.is_ok_and(|k| k.len() == 16) {
        return Err(bad("Sec-WebSocket-Key must be the base64 of 16 bytes"));
    }
    match single(req, "sec-websocket-version") {
        Ok(Some(v)) if v == WEBSOCKET_VERSION.as_bytes() => Ok(()),
        Ok(Some(_)) => Err(Refusal::UnsupportedWebSocketVersion),
        _ => Err(bad("Sec-WebSocket-Version must be sent once")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/v1/chat?deploymentId=d", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn browser(except: &str, extra: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut headers: Vec<(&str, &str)> = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
        .into_iter()
        .filter(|(k, _)| *k != except)
        .collect();
        headers.extend_from_slice(extra);
        request(&headers)
    }

    fn refused(req: &RequestHeader) -> bool {
        matches!(check(req), Err(Refusal::BadHandshake(_)))
    }

    #[test]
    fn well_formed_handshakes_and_plain_requests_pass() {
        assert_eq!(check(&browser("", &[])), Ok(()));
        let firefox = request(&[
            ("Upgrade", "WebSocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]);
        assert_eq!(check(&firefox), Ok(()));
        assert_eq!(check(&request(&[("Connection", "keep-alive")])), Ok(()));
        assert_eq!(check(&request(&[])), Ok(()));
    }

    #[test]
    fn malformed_handshakes_are_bad_handshakes() {
        for missing in [
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "Connection",
            "Upgrade",
        ] {
            assert!(refused(&browser(missing, &[])), "without {missing}");
        }
        for extra in [
            ("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA=="),
            ("Sec-WebSocket-Version", "13"),
            ("Upgrade", "h2c"),
        ] {
            assert!(refused(&browser("", &[extra])), "a second {}", extra.0);
        }
        for key in [
            "",
            "AAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAA=",
            "not base64!",
            "dGhlIHNhbXBsZSBub25jZQ",
        ] {
            assert!(
                refused(&browser("Sec-WebSocket-Key", &[("Sec-WebSocket-Key", key)])),
                "key {key:?}"
            );
        }
        assert!(refused(&browser("Upgrade", &[("Upgrade", "h2c")])));
        assert!(refused(&browser(
            "Upgrade",
            &[("Upgrade", "websocket, h2c")]
        )));
        assert!(refused(&browser(
            "Connection",
            &[("Connection", "keep-alive")]
        )));
        let mut post = browser("", &[]);
        post.set_method(http::Method::POST);
        assert!(refused(&post));
        let mut old = browser("", &[]);
        old.set_version(http::Version::HTTP_10);
        assert!(refused(&old));
    }

    #[test]
    fn another_version_is_answered_with_the_one_spoken() {
        for version in ["12", "8", "13, 8", " 13x"] {
            let req = browser(
                "Sec-WebSocket-Version",
                &[("Sec-WebSocket-Version", version)],
            );
            assert_eq!(
                check(&req),
                Err(Refusal::UnsupportedWebSocketVersion),
                "{version}"
            );
        }
        let (header, body) = Refusal::UnsupportedWebSocketVersion.render();
        assert_eq!(header.status.as_u16(), 426);
        assert_eq!(header.headers.get("sec-websocket-version").unwrap(), "13");
        assert_eq!(header.headers.get("upgrade").unwrap(), "websocket");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"], "bad_handshake");
        assert_eq!(json["reason"], "unsupported_websocket_version");
    }
}
