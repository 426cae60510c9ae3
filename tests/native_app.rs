//! The native-app flow of the token API end to end: `examples/native_app.rs`
//! as a child process against the real portcullis binary and the
//! development provider. The test plays the browser (the provider's login
//! form, then the redirect to the app's loopback listener) and reads the
//! app's JSON progress lines: code exchange, the WebSocket authenticated by
//! the subprotocol carrier without an Origin, refresh with rotation, revoke
//! closing the socket with 4002.

mod common;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::browser::*;
use common::*;
use portcullis::devidp::{DevIdp, DevIdpOptions};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

/// Every wait on the app is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

/// The loopback redirect URI a native app registers (any port matches).
const LOOPBACK: &str = "http://127.0.0.1/callback";

/// The example binary. `cargo test --all-targets` builds it before any test
/// runs; a run of this test alone (`cargo test --test native_app`) builds it
/// here when it is missing (run `cargo build --example native_app` first
/// after changing the example). Building here when it exists would change
/// the feature set cargo resolves and rebuild half the dependency tree.
fn example_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // target/<profile>/deps/<this test> → target/<profile>/examples/native_app
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let path = exe
                .parent()
                .and_then(|deps| deps.parent())
                .map(|profile| {
                    profile
                        .join("examples")
                        .join(format!("native_app{}", std::env::consts::EXE_SUFFIX))
                })
                .ok_or("no target directory above the test binary")?;
            if path.exists() {
                return Ok(path);
            }
            let mut child = std::process::Command::new(env!("CARGO"))
                .args(["build", "--example", "native_app"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cargo does not start: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(900);
            let status = loop {
                if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                    break status;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    return Err("cargo build --example native_app took too long".into());
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if !status.success() {
                let mut errors = String::new();
                let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut errors);
                return Err(format!(
                    "cargo build --example native_app failed:\n{errors}"
                ));
            }
            if path.exists() {
                Ok(path)
            } else {
                Err(format!("{} is missing after the build", path.display()))
            }
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The provider, the echo backend and portcullis with one deployment,
/// `mobile`, for native apps: the app's redirect URIs `redirect_uris`, no
/// Origin required, offline_access among the provider's scopes.
async fn setup(redirect_uris: &str) -> (DevIdp, Proxy) {
    let idp = start_devidp(DevIdpOptions::default()).await;
    let backend = start_backend().await;
    let config = format!(
        r#"{preamble}    scopes: [openid, email, profile, offline_access]
messengers:
  app:
    authentication: {{enabled: true, provider: dev}}
upstreams:
  chat: {{servers: ["{backend}"]}}
deployments:
  - id: mobile
    messenger: app
    upstream: chat
    allowed_origins: ["https://app.example"]
    allow_missing_origin: true
    redirect_uris: [{redirect_uris}]
routes: [{{path_prefix: /v1}}]
"#,
        preamble = config_with_dev_provider(&idp),
    );
    let proxy = Proxy::start_with_env(&config, &[("DEV_SECRET", "demo-secret")]).await;
    (idp, proxy)
}

/// The example app as a child process (killed when dropped), its stdout
/// read line by line.
struct App {
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl App {
    fn start(proxy: &Proxy, deployment: &str, extra: &[&str]) -> App {
        let mut child = tokio::process::Command::new(example_binary())
            .args(["--portcullis", &proxy.url(""), "--deployment", deployment])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the example starts");
        let (tx, lines) = mpsc::unbounded_channel();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sink, mut err) = (stderr.clone(), child.stderr.take().unwrap());
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text).await;
            sink.lock().unwrap().push_str(&text);
        });
        App {
            child,
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    /// What to show when an assertion fails.
    fn context(&self, proxy: &Proxy) -> String {
        format!(
            "app stdout:\n{}\napp stderr:\n{}\nproxy log:\n{}",
            self.stdout.join("\n"),
            self.stderr.lock().unwrap(),
            proxy.log_text()
        )
    }

    /// The next stdout line; `None` at the end of the output.
    async fn next_line(&mut self, proxy: &Proxy) -> Option<String> {
        match tokio::time::timeout(WAIT, self.lines.recv()).await {
            Ok(line) => {
                self.stdout.extend(line.clone());
                line
            }
            Err(_) => panic!(
                "the app printed nothing for {WAIT:?}\n{}",
                self.context(proxy)
            ),
        }
    }

    /// The authorization request the app asks the user to open.
    async fn authorize_url(&mut self, proxy: &Proxy) -> String {
        loop {
            match self.next_line(proxy).await {
                Some(line) if line.starts_with("OPEN ") => {
                    return line["OPEN ".len()..].to_string()
                }
                Some(_) => continue,
                None => panic!(
                    "the app ended without an OPEN line\n{}",
                    self.context(proxy)
                ),
            }
        }
    }

    /// Reads the output to its end and waits for the exit: the exit status
    /// and the JSON steps, keyed by `step`, in order.
    async fn finish(&mut self, proxy: &Proxy) -> (ExitStatus, Vec<Value>) {
        while self.next_line(proxy).await.is_some() {}
        let status = match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("the app did not exit\n{}", self.context(proxy)),
        };
        let steps = self
            .stdout
            .iter()
            .filter(|l| !l.starts_with("OPEN "))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|_| panic!("not a JSON line: {l}\n{}", self.context(proxy)))
            })
            .collect();
        (status, steps)
    }
}

/// The steps named `name`.
fn steps<'a>(all: &'a [Value], name: &str) -> Vec<&'a Value> {
    all.iter().filter(|s| s["step"] == name).collect()
}

/// The app's loopback listener, as the browser reaches it after the login.
async fn back_to_app(location: &str) -> reqwest::Response {
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");
    tokio::time::timeout(WAIT, reqwest::Client::new().get(location).send())
        .await
        .expect("the app's listener answers in time")
        .expect("the app's listener answers")
}

#[tokio::test]
async fn a_native_app_logs_in_over_a_loopback_redirect_chats_refreshes_and_revokes() {
    example_binary();
    let (_idp, proxy) = setup(&format!("\"{LOOPBACK}\"")).await;
    let message = "hello from the test";
    let mut app = App::start(
        &proxy,
        "mobile",
        &["--user-message", message, "--refreshes", "2"],
    );
    let authorize = app.authorize_url(&proxy).await;
    let query: Vec<(String, String)> = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let param = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(param("code_challenge_method"), Some("S256"), "{authorize}");
    assert_eq!(param("scope"), Some("openid email profile offline_access"));
    assert!(param("redirect_uri")
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    assert!(param("state").is_some() && param("nonce").is_some());

    // The browser: the provider's login form, then back to the app.
    let browser = no_redirects();
    let location = tokio::time::timeout(WAIT, choose_user(&browser, &authorize, "alice"))
        .await
        .expect("the provider answers in time");
    assert!(
        location.contains("/callback?") && location.contains("code="),
        "{location}"
    );
    let page = back_to_app(&location).await;
    assert_eq!(page.status(), 200);
    assert!(page
        .text()
        .await
        .unwrap()
        .contains("You can close this window"));

    let (status, all) = app.finish(&proxy).await;
    let context = app.context(&proxy);
    assert!(status.success(), "{status}\n{context}");
    let one = |name: &str| {
        let found = steps(&all, name);
        assert_eq!(found.len(), 1, "one `{name}` step\n{context}");
        found[0].clone()
    };
    assert_eq!(one("config")["status"], "Active", "{context}");
    assert!(
        one("callback")["iss"].is_string(),
        "RFC 9207 iss came back\n{context}"
    );
    let expires_in = one("exchanged")["expiresIn"].as_u64().unwrap_or(0);
    assert!((1..=900).contains(&expires_in), "{context}");
    let welcome = one("welcome");
    assert_eq!(
        welcome["subject"], "alice",
        "the identity reached the backend\n{context}"
    );
    assert_eq!(welcome["email"], "alice@example.com", "{context}");
    assert_eq!(
        welcome["protocol"], "chat.v1",
        "the backend chose chat.v1\n{context}"
    );
    assert_eq!(
        welcome["tokenReachedBackend"], false,
        "the jwt stays at the edge\n{context}"
    );
    let echo = one("echo");
    assert_eq!(echo["text"], message, "{context}");
    let refreshed = steps(&all, "refreshed");
    assert_eq!(refreshed.len(), 2, "{context}");
    for r in &refreshed {
        assert_eq!(r["rotated"], true, "the refresh token rotates\n{context}");
        assert!(r["expiresIn"].as_u64().is_some_and(|s| s > 0), "{context}");
    }
    let revoked = one("revoked");
    assert_eq!(revoked["status"], 204, "{context}");
    assert_eq!(
        revoked["close_code"], 4002,
        "the live socket closed as revoked\n{context}"
    );
    assert_eq!(
        one("refresh_after_revoke")["status"],
        401,
        "the session is gone\n{context}"
    );
    assert!(steps(&all, "failed").is_empty(), "{context}");

    // The tokens never appear in what the app prints.
    let printed = app.stdout.join("\n");
    println!("{printed}");
    assert!(!printed.contains("eyJ"), "a JWT was printed\n{context}");
    assert!(
        !printed.contains("pcr_"),
        "a refresh token was printed\n{context}"
    );
    for (operation, count) in [("exchange", 1.0), ("refresh", 2.0), ("revoke", 1.0)] {
        assert_eq!(
            proxy
                .metric(
                    "portcullis_token_api_requests_total",
                    &[("operation", operation), ("result", "ok")]
                )
                .await,
            Some(count),
            "{operation}\n{context}"
        );
    }
}

#[tokio::test]
async fn a_cancelled_login_ends_the_app_with_the_providers_error() {
    example_binary();
    let (_idp, proxy) = setup(&format!("\"{LOOPBACK}\"")).await;
    let mut app = App::start(&proxy, "mobile", &[]);
    let authorize = app.authorize_url(&proxy).await;
    let cancelled = submit_login_form(&no_redirects(), &authorize, "alice", ("cancel", "1")).await;
    assert!(
        cancelled.status().is_redirection(),
        "{}",
        cancelled.status()
    );
    assert_eq!(back_to_app(&location(&cancelled)).await.status(), 200);

    let (status, all) = app.finish(&proxy).await;
    let context = app.context(&proxy);
    assert!(!status.success(), "{context}");
    let failed = steps(&all, "failed");
    assert_eq!(failed.len(), 1, "{context}");
    assert_eq!(failed[0]["at"], "callback", "{context}");
    assert_eq!(failed[0]["error"], "access_denied", "{context}");
    assert!(steps(&all, "exchanged").is_empty(), "{context}");
}

#[tokio::test]
async fn an_unregistered_redirect_uri_is_refused_at_the_exchange() {
    example_binary();
    // Only a web callback is registered: the loopback redirect is not.
    let (_idp, proxy) = setup("\"https://app.example/callback\"").await;
    let mut app = App::start(&proxy, "mobile", &[]);
    let authorize = app.authorize_url(&proxy).await;
    let location = tokio::time::timeout(WAIT, choose_user(&no_redirects(), &authorize, "alice"))
        .await
        .expect("the provider answers in time");
    assert_eq!(back_to_app(&location).await.status(), 200);

    let (status, all) = app.finish(&proxy).await;
    let context = app.context(&proxy);
    assert!(!status.success(), "{context}");
    let failed = steps(&all, "failed");
    assert_eq!(failed.len(), 1, "{context}");
    assert_eq!(failed[0]["at"], "exchange", "{context}");
    assert_eq!(failed[0]["status"], 400, "{context}");
    assert_eq!(failed[0]["error"], "invalid_redirect_uri", "{context}");
    assert!(failed[0]["error_description"].is_string(), "{context}");
    assert!(steps(&all, "exchanged").is_empty(), "{context}");
}
