//! Cookies and login state: a tampered, truncated, renamed or foreign
//! session cookie is no session (401 `no_credentials`, nothing upstream); a
//! callback is single-use and answers only to its own login's cookie, before
//! its code reaches the provider; unsafe `rd` return addresses end at `/`.

use crate::common::browser::{
    choose_user, location, login, no_redirects, return_to, set_cookies, urlencode,
};
use crate::common::{start_backend, Proxy};
use crate::fixture::{config, get, Env, CLIENT_SECRET};

const PATH: &str = "/v1/x?deploymentId=support";

/// A started login: its pending cookie (`name=value`) and where the
/// provider sends the browser back (code and state) once alice is chosen.
async fn start_login(proxy: &Proxy) -> (String, String) {
    let c = no_redirects();
    let start = c
        .get(proxy.url("/.auth/login?deployment=support&rd=%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let pending = set_cookies(&start).remove(0);
    let callback = choose_user(&c, &location(&start), "alice").await;
    (pending, callback)
}

fn value(cookie: &str) -> &str {
    cookie.split_once('=').unwrap().1
}

fn name(cookie: &str) -> &str {
    cookie.split_once('=').unwrap().0
}

fn code_of(callback: &str) -> String {
    url::Url::parse(callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned()
}

/// `text` with the character at `at` replaced by another base64url one.
fn flip(text: &str, at: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn tampered_cookies_and_replayed_logins_get_nothing() {
    let mut env = Env::start().await;
    let idp = env.idp.clone();
    let c = no_redirects();

    // A login, its replay, and the session it made.
    let (pending, callback) = start_login(&env.proxy).await;
    env.secrets.push(value(&pending).to_string());
    env.secrets.push(code_of(&callback));
    let done = return_to(&c, &callback, std::slice::from_ref(&pending)).await;
    assert_eq!(done.status(), 302, "the login completes");
    let session = set_cookies(&done)
        .into_iter()
        .find(|k| !k.contains("-login-"))
        .expect("a session cookie");
    env.secrets.push(value(&session).to_string());
    let hits = idp.token_hits();
    let replay = return_to(&c, &callback, std::slice::from_ref(&pending)).await;
    let status = replay.status().as_u16();
    let page = replay.text().await.unwrap();
    if status != 400 || !page.contains("already used") || idp.token_hits() != hits {
        env.fail("replayed callback", format!("{status} {page}"));
    }

    let before = env.received.total();
    let (status, body) = get(&env.proxy, PATH, &[("Cookie", &session)]).await;
    if status != 200 || env.received.total() == before {
        env.fail("control: the session cookie", format!("{status} {body}"));
    }

    // A session made by another portcullis (its own cookie key).
    let other_backend = start_backend().await;
    let other = Proxy::start_with_env(
        &config(&idp, other_backend),
        &[("DEV_SECRET", CLIENT_SECRET)],
    )
    .await;
    let (foreign, _) = login(&other, "support", "alice", "/").await.unwrap();
    env.secrets.push(value(&foreign).to_string());
    drop(other);

    let session_name = name(&session).to_string();
    let sealed = value(&session).to_string();
    let pending_value = value(&pending).to_string();
    let mid = sealed.len() / 2;
    let cases = [
        (
            "a flipped byte",
            format!("{session_name}={}", flip(&sealed, mid)),
        ),
        (
            "a flipped first byte",
            format!("{session_name}={}", flip(&sealed, 0)),
        ),
        (
            "a flipped last byte",
            format!("{session_name}={}", flip(&sealed, sealed.len() - 1)),
        ),
        (
            "truncated",
            format!("{session_name}={}", &sealed[..sealed.len() - 5]),
        ),
        (
            "truncated to half",
            format!("{session_name}={}", &sealed[..mid]),
        ),
        ("base64 padding added", format!("{session_name}={sealed}==")),
        (
            "standard base64 alphabet",
            format!(
                "{session_name}={}",
                sealed.replace('-', "+").replace('_', "/")
            ),
        ),
        ("quoted", format!("{session_name}=\"{sealed}\"")),
        (
            "the pending-login cookie's value as the session",
            format!("{session_name}={pending_value}"),
        ),
        (
            "the session's value under the pending-login name",
            format!("{}={sealed}", name(&pending)),
        ),
        (
            "the session's value under another name",
            format!("session={sealed}"),
        ),
        ("a session cookie of another portcullis", foreign.clone()),
    ];
    // A spelling that changes nothing (no `-` or `_` to swap) is no case.
    for (case, cookie) in cases.iter().filter(|(_, cookie)| *cookie != session) {
        let before = env.received.total();
        let (status, body) = get(&env.proxy, PATH, &[("Cookie", cookie)]).await;
        env.expect_refusal(
            case,
            before,
            (status, &body),
            (401, "unauthorized", "no_credentials"),
        );
    }

    // Callbacks answered with another login's cookie: refused before the
    // code is redeemed, and the right cookie still works afterwards.
    let (pending_a, callback_a) = start_login(&env.proxy).await;
    let (pending_b, _callback_b) = start_login(&env.proxy).await;
    env.secrets.extend([
        value(&pending_a).to_string(),
        value(&pending_b).to_string(),
        code_of(&callback_a),
    ]);
    let hits = idp.token_hits();
    for (case, cookie) in [
        ("another login's cookie", pending_b.clone()),
        (
            "another login's cookie value under this login's name",
            format!("{}={}", name(&pending_a), value(&pending_b)),
        ),
        (
            "the session cookie's value under this login's name",
            format!("{}={sealed}", name(&pending_a)),
        ),
        (
            "this login's cookie, a flipped byte",
            format!("{}={}", name(&pending_a), flip(value(&pending_a), 10)),
        ),
        ("no cookie", String::new()),
    ] {
        let answer = return_to(&c, &callback_a, &[cookie]).await;
        let status = answer.status().as_u16();
        let sets_session = set_cookies(&answer)
            .iter()
            .any(|k| k.starts_with(&format!("{session_name}=")) && !k.ends_with('='));
        let page = answer.text().await.unwrap();
        if status != 400 || !page.contains("was not started here") || sets_session {
            env.fail(&format!("callback with {case}"), format!("{status} {page}"));
        }
        if idp.token_hits() != hits {
            env.fail(
                &format!("callback with {case}"),
                "the code was redeemed".into(),
            );
        }
    }
    let done = return_to(&c, &callback_a, std::slice::from_ref(&pending_a)).await;
    if done.status() != 302 {
        env.fail(
            "callback with its own cookie after the refusals",
            format!("{}", done.status()),
        );
    }
    if let Some(s) = set_cookies(&done)
        .into_iter()
        .find(|k| !k.contains("-login-"))
    {
        env.secrets.push(value(&s).to_string());
    }

    // Open redirects through `rd`: the hardest of redirect.rs's corpus.
    for rd in [
        "//evil.com",
        "/\\evil.com",
        "/%2f%2fevil.com",
        "/%5cevil.com",
        "/\t/evil.com",
        "/%2e%2e//evil.com",
        "https:evil.com",
        "https://www.example.com@evil.com",
        "https://evil.com#@www.example.com",
        "https://www.example.com.evil.com",
        "https://www.example.com./page",
        "https://www.ex\u{430}mple.com/",
        "http://www.example.com/page",
        "https://www.example.com:8443",
        "javascript://www.example.com/%0aalert(1)",
        "/\u{3000}/evil.com",
    ] {
        match login(&env.proxy, "support", "alice", rd).await {
            Ok((cookie, back)) => {
                env.secrets.push(value(&cookie).to_string());
                if back != "/" {
                    env.fail(
                        &format!("rd {:?} ({})", rd, urlencode(rd)),
                        format!("Location {back}"),
                    );
                }
            }
            Err((status, page)) => env.fail(&format!("rd {rd:?}"), format!("{status} {page}")),
        }
    }
    env.finish("cookies and login state").await;
}
