//! The pre-login state cookie: arbitrary values opened under the pending
//! login's purpose never open; and what was sealed opens only unchanged.
fn main() {
    let codec = portcullis::session::cookie::CookieCodec::new([9u8; 32], &[]).unwrap();
    afl::fuzz!(|data: &[u8]| {
        let purpose = "portcullis-login-abcdefgh";
        if let Ok(text) = std::str::from_utf8(data) {
            assert!(
                codec.open(purpose, text).is_none(),
                "a forged login state opened"
            );
        }
        if let Some(sealed) = codec.seal(purpose, data) {
            assert_eq!(codec.open(purpose, &sealed).as_deref(), Some(data));
            assert!(codec.open("another-purpose", &sealed).is_none());
        }
    });
}
