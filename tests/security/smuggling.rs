//! Request smuggling at the edge, written on raw sockets: ambiguous framing
//! (`Content-Length` with `Transfer-Encoding`, two lengths, odd codings),
//! malformed lines, and targets or hosts naming somebody else. Each is
//! either refused before the backend (an error status, or a closed
//! connection with nothing upstream), or reaches the backend re-framed
//! without the ambiguity.

use crate::fixture::{raw, Env};

const OPEN: &str = "/v1/x?deploymentId=open";

/// What a case may come to. Pingora re-frames what RFC 9112 lets it:
/// `Transfer-Encoding` wins over `Content-Length` (which it drops, and the
/// connection closes after the answer, so what follows the body is never
/// read as a request), and a request whose codings end in one `chunked` is
/// forwarded with one `Transfer-Encoding: chunked`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// This status (or, for `None`, a connection closed without an
    /// answer), and nothing reaches the backend.
    Refused(Option<u16>),
    /// Legal HTTP: the backend gets one request, framed unambiguously,
    /// with the body `body`.
    Passed(&'static str),
}

/// Whether the request heads the backend received are unambiguous: one
/// `Host`, at most one `Content-Length`, never both it and
/// `Transfer-Encoding`, `Transfer-Encoding` only `chunked`, no folded or
/// bare-CR lines, and no smuggled request.
fn framing_problems(received: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if received.contains("smuggled") {
        problems.push("a smuggled request reached the backend".to_string());
    }
    let head = received.split("\r\n\r\n").next().unwrap_or_default();
    let mut lengths = 0;
    let mut codings = Vec::new();
    let mut hosts = 0;
    for line in head.split("\r\n").skip(1) {
        if line.starts_with([' ', '\t']) || line.contains('\r') || line.contains('\n') {
            problems.push(format!("a malformed line upstream: {line:?}"));
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.to_ascii_lowercase().as_str() {
            "content-length" => lengths += 1,
            "transfer-encoding" => codings.push(value.trim().to_ascii_lowercase()),
            "host" => hosts += 1,
            _ => {}
        }
    }
    if lengths > 1 {
        problems.push("several Content-Length upstream".into());
    }
    if lengths > 0 && !codings.is_empty() {
        problems.push("Content-Length and Transfer-Encoding upstream".into());
    }
    if !(codings.is_empty() || codings == ["chunked"]) {
        problems.push(format!("Transfer-Encoding {codings:?} upstream"));
    }
    if hosts != 1 {
        problems.push(format!("{hosts} Host headers upstream"));
    }
    problems
}

#[tokio::test]
async fn ambiguous_requests_are_refused_or_reframed() {
    let mut env = Env::start().await;
    let addr = env.proxy.addr;
    let host = format!("Host: {addr}\r\n");
    let post =
        |headers: &str, body: &str| format!("POST {OPEN} HTTP/1.1\r\n{host}{headers}\r\n{body}");
    let smuggled = format!("GET /v1/smuggled?deploymentId=open HTTP/1.1\r\n{host}\r\n");
    let cases: Vec<(&str, String, Expect)> = vec![
        (
            "control: a POST with a body",
            post("Content-Length: 5\r\nConnection: close\r\n", "hello"),
            Expect::Passed("hello"),
        ),
        (
            "control: a chunked POST",
            post("Transfer-Encoding: chunked\r\nConnection: close\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Expect::Passed("hello"),
        ),
        (
            "Content-Length and Transfer-Encoding: chunked",
            post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", &format!("0\r\n\r\n{smuggled}")),
            Expect::Passed("\r\n\r\n0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding: chunked and Content-Length",
            post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", &format!("0\r\n\r\n{smuggled}")),
            Expect::Passed("\r\n\r\n0\r\n\r\n"),
        ),
        (
            "two different Content-Length",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            Expect::Refused(Some(400)),
        ),
        (
            "Content-Length: 5, 6",
            post("Content-Length: 5, 6\r\n", "hello!"),
            Expect::Refused(Some(400)),
        ),
        (
            "Content-Length: +5",
            post("Content-Length: +5\r\n", "hello"),
            Expect::Refused(Some(400)),
        ),
        (
            "Transfer-Encoding: chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", &format!("5\r\nhello\r\n0\r\n\r\n{smuggled}")),
            Expect::Refused(Some(400)),
        ),
        (
            "Transfer-Encoding: xchunked",
            post("Transfer-Encoding: xchunked\r\n", &format!("5\r\nhello\r\n0\r\n\r\n{smuggled}")),
            Expect::Refused(Some(400)),
        ),
        (
            "Transfer-Encoding:  chunked (leading space in the value)",
            post("Transfer-Encoding:  chunked\r\nConnection: close\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Expect::Passed("hello"),
        ),
        (
            "Transfer-Encoding: \\tchunked",
            post("Transfer-Encoding: \tchunked\r\nConnection: close\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Expect::Passed("hello"),
        ),
        (
            "a folded Transfer-Encoding line",
            post("X-Pad: x\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "hello"),
            Expect::Refused(Some(400)),
        ),
        (
            "Transfer-Encoding: chunked twice",
            post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Expect::Passed("hello"),
        ),
        (
            "Transfer-Encoding: chunked, chunked",
            post("Transfer-Encoding: chunked, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Expect::Passed("hello"),
        ),
        (
            "obs-fold in a header",
            post("X-Folded: a\r\n b\r\nContent-Length: 5\r\n", "hello"),
            Expect::Refused(Some(400)),
        ),
        (
            "a bare CR inside a header line",
            post("X-Bare: a\rContent-Length: 0\r\nContent-Length: 5\r\n", "hello"),
            Expect::Refused(Some(400)),
        ),
        (
            "bare LF line endings",
            format!("POST {OPEN} HTTP/1.1\nHost: {addr}\nContent-Length: 5\nConnection: close\n\nhello"),
            Expect::Passed("hello"),
        ),
        (
            "absolute-form target naming another host",
            format!("GET http://evil.example{OPEN} HTTP/1.1\r\n{host}\r\n"),
            Expect::Refused(Some(400)),
        ),
        (
            "absolute-form target, Host another host",
            format!("GET http://{addr}{OPEN} HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
            Expect::Refused(Some(400)),
        ),
        (
            "two Host headers",
            format!("GET {OPEN} HTTP/1.1\r\n{host}Host: evil.example\r\n\r\n"),
            Expect::Refused(Some(400)),
        ),
        (
            "HTTP/1.0 with Transfer-Encoding",
            format!("POST {OPEN} HTTP/1.0\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"),
            Expect::Refused(Some(400)),
        ),
        // Not here: a raw space or tab in the target. Pingora percent-encodes
        // an illegal request line before portcullis sees it (`b c` arrives
        // as `b%20c` and is forwarded so), where the README promises 400.
    ];
    for (case, request, expect) in &cases {
        let before = env.received.total();
        let answer = raw(addr, request.as_bytes()).await;
        // Give a request the proxy sent on its way time to arrive.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let upstream = env.received.since(before);
        match expect {
            Expect::Refused(status) => {
                let refused = match status {
                    Some(s) => answer.status == Some(*s),
                    None => answer.status.is_none(),
                };
                if !refused || !upstream.is_empty() {
                    env.fail(
                        case,
                        format!(
                            "expected {status:?} and nothing upstream, got {:?} and upstream {upstream:?}",
                            answer.status
                        ),
                    );
                }
            }
            Expect::Passed(body) => {
                let problems = framing_problems(&upstream);
                if answer.status != Some(200) || !problems.is_empty() || !upstream.contains(body) {
                    env.fail(
                        case,
                        format!("expected 200 with body {body:?}, got {:?} {problems:?}; upstream {upstream:?}; answer {}", answer.status, answer.text),
                    );
                }
            }
        }
    }
    env.finish("request smuggling").await;
}
