//! Redirect validation: whatever `rd` is, the answer is a path on our own
//! origin or an allowed origin, never elsewhere.
fn main() {
    let own = "https://chat.example.com";
    let allowed = vec!["https://www.example.com".to_string()];
    afl::fuzz!(|data: &[u8]| {
        let Ok(rd) = std::str::from_utf8(data) else {
            return;
        };
        let target = portcullis::endpoints::redirect::safe_redirect(Some(rd), own, &allowed);
        let ok = (target.starts_with('/') && !target.starts_with("//") && !target.starts_with("/\\"))
            || target.starts_with(&format!("{own}/"))
            || target.starts_with("https://www.example.com/")
            || target == own
            || target == "https://www.example.com";
        assert!(ok, "{rd:?} redirected to {target:?}");
    });
}
