//! What a browser does around a login, for the tests: a client that does not
//! follow redirects, cookie and `Location` helpers, the development
//! provider's login form, and starting that provider on loopback.

use portcullis::devidp::{self, DevIdp, DevIdpOptions};
use reqwest::redirect::Policy;

use super::Proxy;

/// A client that shows every redirect instead of following it.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

pub fn location(resp: &reqwest::Response) -> String {
    resp.headers()["location"].to_str().unwrap().to_string()
}

/// The `name=value` part of every Set-Cookie of a response.
pub fn set_cookies(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect()
}

/// Every Set-Cookie of a response, attributes included.
pub fn set_cookie_headers(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The Set-Cookie of the cookie `name`, attributes included.
pub fn set_cookie_named(resp: &reqwest::Response, name: &str) -> Option<String> {
    set_cookie_headers(resp).into_iter().find(|c| {
        c.split(';')
            .next()
            .and_then(|p| p.split_once('='))
            .is_some_and(|(n, _)| n == name)
    })
}

/// Whether the Set-Cookie `header` clears its cookie: empty value, `Max-Age=0`.
pub fn clears(header: &str) -> bool {
    let mut parts = header.split(';').map(str::trim);
    parts.next().is_some_and(|pair| pair.ends_with('='))
        && parts.any(|attr| attr.eq_ignore_ascii_case("Max-Age=0"))
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Back at portcullis's callback with the pending-login cookies `pending`,
/// as the browser arrives there from the provider.
pub async fn return_to(
    client: &reqwest::Client,
    callback: &str,
    pending: &[String],
) -> reqwest::Response {
    client
        .get(callback)
        .header("cookie", pending.join("; "))
        .send()
        .await
        .unwrap()
}

/// `url` with its query parameter `key` set to `value`, the others kept in
/// their order: a tampered or replayed step of a login.
pub fn with_query_param(url: &str, key: &str, value: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == key {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(&pairs);
    url.into()
}

/// Asserts that the callback's answer `done` refused the login: `status`, a
/// page that says `says`, no session cookie, and the refusal counted once
/// under `result` in `portcullis_logins_total` (deployment `support`).
pub async fn assert_login_refused(
    proxy: &Proxy,
    done: reqwest::Response,
    status: u16,
    says: &str,
    result: &str,
) {
    let got = done.status().as_u16();
    let no_session = set_cookies(&done)
        .iter()
        .all(|c| c.contains("-login-") || c.ends_with('='));
    let page = done.text().await.unwrap();
    assert_eq!(got, status, "{page}");
    assert!(page.contains(says), "{page}");
    assert!(no_session, "no session cookie is set");
    assert_eq!(
        proxy
            .metric(
                "portcullis_logins_total",
                &[("deployment", "support"), ("result", result)]
            )
            .await,
        Some(1.0)
    );
}

/// The top of a config whose provider `dev` is the development provider
/// `idp`, ending inside that provider's entry (more of its keys may follow,
/// indented four spaces). `client_secret` comes from `DEV_SECRET`.
pub fn config_with_dev_provider(idp: &DevIdp) -> String {
    format!(
        r#"
listen: [{{address: "{{PROXY}}"}}]
public_url: "http://{{PROXY}}"
threads: 1
admin: {{address: "{{ADMIN}}"}}
logging: {{format: json, level: info}}
providers:
  dev:
    issuer: "{issuer}"
    client_id: portcullis-demo
    client_secret: {{env: DEV_SECRET}}
    audiences: ["api://messaging"]
"#,
        issuer = idp.issuer()
    )
}

/// The development provider on a free loopback port.
pub async fn start_devidp(options: DevIdpOptions) -> DevIdp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    devidp::start(listener, options).await.unwrap()
}

/// At the development provider: opens `authorize` (its login form), checks
/// that the form offers `offered`, and submits it with `choice` (a `user`,
/// or `cancel`); the provider's answer.
pub async fn submit_login_form(
    client: &reqwest::Client,
    authorize: &str,
    offered: &str,
    choice: (&str, &str),
) -> reqwest::Response {
    let form = client
        .get(authorize)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains(offered), "{offered} is offered: {form}");
    let request_id = form
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the login form has a request id")
        .to_string();
    let provider = authorize.split("/authorize").next().unwrap();
    client
        .post(format!("{provider}/authorize/login"))
        .form(&[("request", request_id.as_str()), choice])
        .send()
        .await
        .unwrap()
}

/// At the development provider: picks `user` at the login form of
/// `authorize`, and returns where the provider sends the browser back (the
/// callback URL with code and state).
pub async fn choose_user(client: &reqwest::Client, authorize: &str, user: &str) -> String {
    let chosen = submit_login_form(client, authorize, user, ("user", user)).await;
    assert!(chosen.status().is_redirection(), "{}", chosen.status());
    location(&chosen)
}

/// Logs `user` in for `deployment`; returns the session cookie and where
/// the callback sent the browser. Panics with the page when it fails.
pub async fn login(
    proxy: &Proxy,
    deployment: &str,
    user: &str,
    rd: &str,
) -> Result<(String, String), (u16, String)> {
    let c = no_redirects();
    let start = c
        .get(proxy.url(&format!(
            "/.auth/login?deployment={deployment}&rd={}",
            urlencode(rd)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let pending = set_cookies(&start);
    assert_eq!(pending.len(), 1);
    let authorize = location(&start);
    assert!(authorize.contains("code_challenge_method=S256") && authorize.contains("nonce="));
    // The provider's login form, then the user's choice.
    let callback = choose_user(&c, &authorize, user).await;
    assert!(callback.contains("/.auth/callback?"), "{callback}");
    let done = return_to(&c, &callback, &pending).await;
    if done.status() != 302 {
        let status = done.status().as_u16();
        return Err((status, done.text().await.unwrap()));
    }
    let cookies = set_cookies(&done);
    let session = cookies
        .iter()
        .find(|c| !c.contains("-login-"))
        .expect("a session cookie")
        .clone();
    assert!(
        cookies
            .iter()
            .any(|c| c.contains("-login-") && c.ends_with('=')),
        "the pending cookie is cleared"
    );
    // The callback URL is single use: portcullis refuses the replay itself
    // (the provider would refuse the spent code anyway, so a 4xx alone
    // proves nothing), before its code reaches the provider.
    let labels = [("deployment", deployment), ("result", "state_reused")];
    let reused_before = proxy.metric("portcullis_logins_total", &labels).await;
    let replay = return_to(&c, &callback, &pending).await;
    assert_eq!(
        replay.status(),
        400,
        "a replayed callback is refused by portcullis"
    );
    assert!(replay.text().await.unwrap().contains("already used"));
    assert_eq!(
        proxy.metric("portcullis_logins_total", &labels).await,
        Some(reused_before.unwrap_or(0.0) + 1.0),
        "counted as state_reused"
    );
    Ok((session, location(&done)))
}

/// What a site's own login at the provider hands to the token API: the
/// code and what the site remembered for it.
pub struct SiteCode {
    pub code: String,
    pub iss: Option<String>,
    pub nonce: String,
    pub verifier: String,
    pub redirect_uri: String,
}

/// A site's own login at the development provider (portcullis is not
/// involved): PKCE S256, state, nonce and `offline_access`, `user` picked
/// at the form; returns the code from the redirect to `redirect_uri`,
/// which is not fetched.
pub async fn site_login(idp: &DevIdp, redirect_uri: &str, user: &str) -> SiteCode {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let random = || {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).unwrap();
        b64(&bytes)
    };
    let (verifier, nonce, state) = (random(), random(), random());
    let challenge =
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref());
    let mut authorize = url::Url::parse(&format!("{}/authorize", idp.issuer())).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &idp.options().client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "openid email profile offline_access")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let back = choose_user(&no_redirects(), authorize.as_str(), user).await;
    let back = url::Url::parse(&back).unwrap();
    assert!(back.as_str().starts_with(redirect_uri), "{back}");
    let param = |name: &str| {
        back.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    assert_eq!(param("state").as_deref(), Some(state.as_str()));
    SiteCode {
        code: param("code").expect("a code"),
        iss: param("iss"),
        nonce,
        verifier,
        redirect_uri: redirect_uri.to_string(),
    }
}
