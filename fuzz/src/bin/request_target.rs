//! The request-target check: any bytes, never a panic; what it accepts
//! has a path that starts with '/' and fits the limits.
fn main() {
    let limits = portcullis::config::Limits::default();
    afl::fuzz!(|data: &[u8]| {
        if let Ok(target) = portcullis::proxy::route::check_target(data, &limits) {
            let _ = portcullis::proxy::route::has_path_parameter(target.path);
        }
    });
}
