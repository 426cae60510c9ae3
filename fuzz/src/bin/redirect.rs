//! Redirect validation: whatever `rd` is, the browser ends up on a path of
//! our own origin or on an allowed origin, as a URL parser (the WHATWG
//! rules browsers follow) reads the answer; never elsewhere.
fn main() {
    let own = "https://chat.example.com";
    let allowed = vec!["https://www.example.com".to_string()];
    let base = url::Url::parse(&format!("{own}/")).unwrap();
    afl::fuzz!(|data: &[u8]| {
        let Ok(rd) = std::str::from_utf8(data) else {
            return;
        };
        let target = portcullis::endpoints::redirect::safe_redirect(Some(rd), own, &allowed);
        let origin = base.join(&target).map(|u| u.origin().ascii_serialization());
        let ok = origin
            .as_deref()
            .is_ok_and(|o| o == own || allowed.iter().any(|a| a == o));
        assert!(ok, "{rd:?} redirected to {target:?} ({origin:?})");
    });
}
