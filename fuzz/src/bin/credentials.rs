//! Credential carriers: the bearer header, the WebSocket subprotocol and the
//! query parameter, read from arbitrary headers and query; never a panic.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let (query, headers) = text.split_once('\n').unwrap_or((text, ""));
        let path = format!("/v1/chat?{}", query.trim());
        if let Some(req) = portcullis_fuzz::request_with_headers(&path, headers) {
            let _ = portcullis::proxy::credential::extract(&req, true);
            let _ = portcullis::proxy::credential::extract(&req, false);
        }
        let _ = portcullis::proxy::credential::is_token_subprotocol(text);
    });
}
