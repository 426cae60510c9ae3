//! Helpers shared by the fuzz targets: turning fuzz bytes into a request.

use pingora_http::RequestHeader;

/// A GET request whose headers come from `data`, one `name: value` per line
/// (lines that are not a valid header are skipped).
pub fn request_with_headers(path: &str, data: &str) -> Option<RequestHeader> {
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).ok()?;
    for line in data.lines() {
        if let Some((name, value)) = line.split_once(':') {
            let _ = req.append_header(name.trim().to_string(), value.trim());
        }
    }
    Some(req)
}
