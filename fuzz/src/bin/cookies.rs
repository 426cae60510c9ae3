//! Cookie decoding: the Cookie header split into pairs, and every value
//! opened as a sealed session cookie; never a panic, never opened.
fn main() {
    let codec = portcullis::session::cookie::CookieCodec::new([7u8; 32], &[]).unwrap();
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let header = format!("cookie: {}", text.replace(['\r', '\n'], ""));
        if let Some(req) = portcullis_fuzz::request_with_headers("/", &header) {
            for (name, value) in portcullis::session::cookie::cookies(&req) {
                assert!(codec.open(name, value).is_none(), "a forged cookie opened");
            }
            for _ in portcullis::session::cookie::cookie_pairs(&req) {}
        }
    });
}
