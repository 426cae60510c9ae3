//! Request ids: each request gets one, sent upstream and back to the
//! client as `X-Request-Id`, written in the access line and in every error
//! body or page portcullis renders, so that a user can quote it and an
//! operator can find the line.
//!
//! An incoming `X-Request-Id` is kept only when the request comes from a
//! trusted proxy (`forwarding.trusted_proxies`, the same trust that lets
//! `X-Forwarded-For` through) and the value is well-formed; otherwise, and
//! always for a client on the open internet, portcullis makes a new one and
//! the client's value is overwritten upstream. A client could otherwise
//! choose ids that collide with other people's lines in the logs.

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

pub const HEADER: &str = "x-request-id";
/// [`HEADER`], parsed.
pub static HEADER_NAME: http::HeaderName = http::HeaderName::from_static(HEADER);

/// Sets the response's `X-Request-Id` to `id`, replacing any the upstream
/// sent, with the name parsed once for every response.
pub fn set_on_response(header: &mut ResponseHeader, id: &RequestId) -> pingora::Result<()> {
    header.insert_parsed_header(
        &HEADER_NAME,
        Bytes::from_static(HEADER.as_bytes()),
        id.header_value(),
    )
}

/// The longest id kept from a trusted proxy.
const MAX_LEN: usize = 128;

/// One request's id: 1 to 128 characters of `A-Z a-z 0-9 . _ : -`, so it is
/// safe in a header, a log field, JSON and HTML as it is. Kept as the header
/// value it is sent as, so that sending it upstream and back to the client
/// copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(http::HeaderValue);

/// Random bytes drawn from the system's CSPRNG (aws-lc) a block at a time,
/// handed out 16 per id: one draw per 64 requests rather than one per
/// request, which was a tenth of the proxy's own work on a plain request.
/// The bytes are as unpredictable as a draw per id; each worker thread has
/// its own block, filled on its first request (after any fork).
struct RandomBlock {
    bytes: [u8; 1024],
    used: usize,
}

impl RandomBlock {
    fn take16(&mut self) -> Option<[u8; 16]> {
        if self.used + 16 > self.bytes.len() {
            aws_lc_rs::rand::fill(&mut self.bytes).ok()?;
            self.used = 0;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.bytes[self.used..self.used + 16]);
        // Spent bytes are not kept around.
        self.bytes[self.used..self.used + 16].fill(0);
        self.used += 16;
        Some(id)
    }
}

thread_local! {
    static RANDOM: std::cell::RefCell<RandomBlock> = const {
        std::cell::RefCell::new(RandomBlock { bytes: [0; 1024], used: usize::MAX / 2 })
    };
}

impl RequestId {
    /// A new random id: 32 hex digits (128 bits from the system's CSPRNG).
    pub fn generate() -> Self {
        let bytes = RANDOM
            .with(|block| block.borrow_mut().take16())
            .unwrap_or_else(|| {
                // Never seen in practice; a duplicate id is harmless, an
                // unanswered request is not.
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default()
                    .to_le_bytes()
            });
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 32];
        for (i, b) in bytes.into_iter().enumerate() {
            text[2 * i] = HEX[usize::from(b >> 4)];
            text[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        RequestId(http::HeaderValue::from_bytes(&text).expect("hex digits are a header value"))
    }

    /// `text` as an id, if it is well-formed.
    pub fn parse(text: &str) -> Option<Self> {
        let ok = !text.is_empty()
            && text.len() <= MAX_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        ok.then(|| http::HeaderValue::from_str(text).ok().map(RequestId))
            .flatten()
    }

    /// The request's id: the incoming one when its sender is trusted and it
    /// is well-formed, else a new one.
    pub fn assign(req: &RequestHeader, from_trusted_proxy: bool) -> Self {
        let incoming = || {
            let mut values = req.headers.get_all(HEADER).iter();
            // Two values: which one is meant is anybody's guess.
            match (values.next(), values.next()) {
                (Some(v), None) => v.to_str().ok().and_then(Self::parse),
                _ => None,
            }
        };
        from_trusted_proxy
            .then(incoming)
            .flatten()
            .unwrap_or_else(Self::generate)
    }

    pub fn as_str(&self) -> &str {
        // Every id is checked (or made) to be ASCII.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as the header value it is sent as (a cheap clone).
    pub fn header_value(&self) -> http::HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Marks a response portcullis wrote itself with the request's id: the
/// `X-Request-Id` header always; in an error (status 400 and up), also the
/// body: a JSON object gains `"request_id"`, an HTML page a line quoting it.
pub fn stamp(header: &mut ResponseHeader, body: Bytes, id: &RequestId) -> Bytes {
    let _ = set_on_response(header, id);
    if header.status.as_u16() < 400 {
        return body;
    }
    let content_type = header
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let stamped = if content_type.starts_with("application/json") {
        stamp_json(&body, id)
    } else if content_type.starts_with("text/html") {
        stamp_html(&body, id)
    } else {
        None
    };
    match stamped {
        Some(new_body) => {
            let _ = header.insert_header("content-length", new_body.len().to_string());
            new_body
        }
        None => body,
    }
}

fn stamp_json(body: &[u8], id: &RequestId) -> Option<Bytes> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .as_object_mut()?
        .insert("request_id".into(), id.as_str().into());
    Some(Bytes::from(value.to_string()))
}

fn stamp_html(body: &[u8], id: &RequestId) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.rfind("</body>")?;
    // The id's alphabet has no character HTML treats specially.
    Some(Bytes::from(format!(
        "{}<p><small>Request id: <code>{id}</code></small></p>{}",
        &text[..at],
        &text[at..]
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ids: &[&str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/v1", None).unwrap();
        for id in ids {
            req.append_header(HEADER, *id).unwrap();
        }
        req
    }

    #[test]
    fn generated_ids_are_distinct_hex() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(RequestId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn ids_stay_distinct_across_refills_of_the_random_block() {
        // 1 000 ids take 16 000 bytes: the 1 KiB block is refilled 15 times.
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| RequestId::generate().as_str().to_string())
            .collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&"0".repeat(32)));
    }

    #[test]
    fn only_a_trusted_proxy_chooses_the_id() {
        let req = request(&["lb-7f3a:42"]);
        assert_eq!(RequestId::assign(&req, true).as_str(), "lb-7f3a:42");
        assert_ne!(RequestId::assign(&req, false).as_str(), "lb-7f3a:42");
    }

    #[test]
    fn malformed_or_repeated_incoming_ids_are_replaced() {
        let long = "a".repeat(129);
        for ids in [
            vec!["has space"],
            vec!["<script>"],
            vec!["a\"b"],
            vec![""],
            vec![long.as_str()],
            vec!["one", "two"],
        ] {
            let assigned = RequestId::assign(&request(&ids), true);
            assert!(!ids.contains(&assigned.as_str()), "{ids:?}");
            assert_eq!(assigned.as_str().len(), 32);
        }
        let longest = "a".repeat(128);
        assert_eq!(
            RequestId::assign(&request(&[&longest]), true).as_str(),
            longest
        );
    }

    fn response(status: u16, content_type: &str) -> ResponseHeader {
        let mut header = ResponseHeader::build(status, None).unwrap();
        header.insert_header("content-type", content_type).unwrap();
        header
    }

    #[test]
    fn errors_quote_the_id_in_their_body() {
        let id = RequestId::parse("abc-123").unwrap();
        let mut header = response(403, "application/json");
        let body = stamp(
            &mut header,
            Bytes::from_static(br#"{"error":"origin_not_allowed"}"#),
            &id,
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["request_id"], "abc-123");
        assert_eq!(json["error"], "origin_not_allowed");
        assert_eq!(header.headers[HEADER], "abc-123");
        assert_eq!(header.headers["content-length"], body.len().to_string());

        let mut header = response(400, "text/html; charset=utf-8");
        let body = stamp(
            &mut header,
            Bytes::from_static(b"<html><body><h1>No</h1></body></html>"),
            &id,
        );
        let text = std::str::from_utf8(&body).unwrap();
        assert!(
            text.contains("Request id: <code>abc-123</code></small></p></body>"),
            "{text}"
        );
        assert_eq!(header.headers["content-length"], body.len().to_string());
    }

    #[test]
    fn successes_carry_the_id_in_the_header_only() {
        let id = RequestId::generate();
        let mut header = response(200, "application/json");
        let body = stamp(&mut header, Bytes::from_static(br#"{"ok":true}"#), &id);
        assert_eq!(&body[..], br#"{"ok":true}"#);
        assert_eq!(header.headers[HEADER], id.as_str());
        // A body that is not a JSON object is left as it is.
        let mut header = response(502, "application/json");
        let body = stamp(&mut header, Bytes::from_static(b"[1]"), &id);
        assert_eq!(&body[..], b"[1]");
    }
}
