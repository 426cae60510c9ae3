//! What `benches/compare/run.sh` (the cross-proxy benchmark) needs from the
//! load tool beyond the portcullis-only modes:
//!
//! - first-seen bearer tokens: `http` and `handshakes` with `--fresh-keys`
//!   (or `--fresh-file`) send a distinct access token on every request, each
//!   used once, so a proxy can never answer from a token cache. The tokens
//!   are minted here, before the clock starts, with the provider's own
//!   private keys (written by `benches/compare/idp.mjs`): asking the
//!   provider for tens of thousands of tokens would take longer than the
//!   measurement. `mint` writes them to a file instead, so that one slow
//!   RS256 batch serves two proxies (each has its own token cache);
//! - `logout-close`: how long after a logout a live WebSocket of that session
//!   is closed, or that it was not within the wait.

use super::*;

use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::{EncodingKey, Header};

/// `--fresh-keys DIR --fresh-alg ALG --fresh-count N`.
#[derive(clap::Args, Clone)]
pub(crate) struct FreshTokenArgs {
    /// A folder with the provider's signing keys (`RS256.pem`, `RS256.kid`,
    /// `ES256.pem`, `ES256.kid`, PKCS#8) and `issuer` and `audience`
    /// files: every request then carries its own newly minted access token
    /// (`Authorization: Bearer`), and the run ends when they are used up.
    #[arg(long, conflicts_with = "fresh_file")]
    fresh_keys: Option<PathBuf>,
    /// Tokens minted earlier (`load mint`), one a line: used like
    /// --fresh-keys' (the first --fresh-count of them).
    #[arg(long)]
    fresh_file: Option<PathBuf>,
    /// The fresh tokens' signing algorithm.
    #[arg(long, default_value = "RS256", value_parser = ["RS256", "ES256"])]
    fresh_alg: String,
    /// How many fresh tokens to mint (at most one request each).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    fresh_count: u64,
}

/// Distinct bearer tokens handed out once each, across all client tasks.
pub(crate) struct FreshTokens {
    tokens: Vec<String>,
    next: AtomicUsize,
}

impl FreshTokens {
    /// Mints (or reads) the tokens `args` asks for; none without
    /// `--fresh-keys` or `--fresh-file`.
    pub(crate) fn mint(args: &FreshTokenArgs) -> Result<Option<Arc<Self>>> {
        let count = usize::try_from(args.fresh_count)?;
        if let Some(path) = &args.fresh_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--fresh-file: cannot read {}", path.display()))?;
            let tokens: Vec<String> = text
                .lines()
                .filter(|l| !l.is_empty())
                .take(count)
                .map(str::to_string)
                .collect();
            ensure!(
                !tokens.is_empty(),
                "--fresh-file {}: no tokens",
                path.display()
            );
            return Ok(Some(Arc::new(FreshTokens {
                tokens,
                next: AtomicUsize::new(0),
            })));
        }
        let Some(dir) = &args.fresh_keys else {
            return Ok(None);
        };
        let read = |name: &str| -> Result<String> {
            let path = dir.join(name);
            Ok(std::fs::read_to_string(&path)
                .with_context(|| format!("--fresh-keys: cannot read {}", path.display()))?
                .trim()
                .to_string())
        };
        let alg = args.fresh_alg.as_str();
        let pem = read(&format!("{alg}.pem"))?;
        let (algorithm, key) = match alg {
            "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem.as_bytes())),
            _ => (Algorithm::ES256, EncodingKey::from_ec_pem(pem.as_bytes())),
        };
        let key = key.with_context(|| format!("--fresh-keys: {alg}.pem is not a {alg} key"))?;
        let mut header = Header::new(algorithm);
        header.kid = Some(read(&format!("{alg}.kid"))?);
        // What oidc-provider puts in its RFC 9068 access tokens.
        header.typ = Some("at+jwt".into());
        let issuer = read("issuer")?;
        let audience = read("audience")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        // A per-run prefix keeps two runs' token ids apart too.
        let run_id = format!("{:x}", now ^ u64::from(std::process::id()) << 20);
        let started = Instant::now();
        let tokens = mint_on_every_cpu(count, |i| {
            let claims = serde_json::json!({
                "iss": issuer,
                "aud": audience,
                "sub": "alice",
                "client_id": "portcullis",
                "scope": "messaging",
                "jti": format!("bench-{run_id}-{i}"),
                "iat": now,
                "exp": now + IDP_TOKEN_LIFETIME.as_secs(),
            });
            Ok(jsonwebtoken::encode(&header, &claims, &key)?)
        })?;
        eprintln!(
            "load: minted {count} {alg} tokens in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(Some(Arc::new(FreshTokens {
            tokens,
            next: AtomicUsize::new(0),
        })))
    }

    /// The next unused token, or `None` once all were handed out.
    pub(crate) fn take(&self) -> Option<&str> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.tokens.get(i).map(String::as_str)
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// `count` tokens, `mint(i)` the i-th, signed on every CPU this process
/// may use (RS256 signing is the slow part of a first-seen run's setup),
/// in order.
pub(crate) fn mint_on_every_cpu(
    count: usize,
    mint: impl Fn(usize) -> Result<String> + Sync,
) -> Result<Vec<String>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let mint = &mint;
                scope.spawn(move || {
                    (t * chunk..count.min((t + 1) * chunk))
                        .map(mint)
                        .collect::<Result<Vec<String>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for worker in workers {
            all.extend(
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a minting thread panicked"))??,
            );
        }
        Ok(all)
    })
}

/// `mint --fresh-keys DIR [--fresh-alg ALG] [--fresh-count N] --out FILE`:
/// the tokens, one a line.
#[derive(clap::Args)]
pub(crate) struct MintRun {
    #[command(flatten)]
    tokens: FreshTokenArgs,
    /// Where to write them (replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn mint(run: MintRun) -> Result<()> {
    ensure!(run.tokens.fresh_keys.is_some(), "mint needs --fresh-keys");
    let tokens = FreshTokens::mint(&run.tokens)?.context("nothing minted")?;
    let mut text = tokens.tokens.join("\n");
    text.push('\n');
    let partial = run.out.with_extension("partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, &run.out))
        .with_context(|| format!("cannot write {}", run.out.display()))?;
    Ok(())
}

/// Where an HTTP worker gets its next request: always the same bytes, or a
/// request of its own for each fresh token (built before the clock starts).
pub(crate) enum Requests {
    Fixed(Arc<[u8]>),
    Fresh {
        requests: Vec<Vec<u8>>,
        next: AtomicUsize,
    },
}

impl Requests {
    pub(crate) fn new(url: &Url, headers: &[String], fresh: Option<&FreshTokens>) -> Result<Self> {
        let Some(fresh) = fresh else {
            return Ok(Requests::Fixed(get_request(url, headers)?.into()));
        };
        let mut requests = Vec::with_capacity(fresh.len());
        let mut with_token = headers.to_vec();
        with_token.push(String::new());
        while let Some(token) = fresh.take() {
            *with_token.last_mut().expect("pushed above") =
                format!("Authorization: Bearer {token}");
            requests.push(get_request(url, &with_token)?);
        }
        Ok(Requests::Fresh {
            requests,
            next: AtomicUsize::new(0),
        })
    }

    /// The next request to send, `None` when the fresh tokens ran out.
    pub(crate) fn next(&self) -> Option<&[u8]> {
        match self {
            Requests::Fixed(bytes) => Some(bytes),
            Requests::Fresh { requests, next } => requests
                .get(next.fetch_add(1, Ordering::Relaxed))
                .map(Vec::as_slice),
        }
    }
}

/// `logout-close`.
#[derive(clap::Args)]
pub(crate) struct LogoutCloseRun {
    /// The chat URL (ws://...) the session's WebSocket opens.
    #[arg(long)]
    url: Url,
    /// The `Origin` header of the handshake.
    #[arg(long)]
    origin: Option<String>,
    /// The session's credential, e.g. `Cookie: name=value`; sent with the
    /// handshake and with the logout request. Repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The proxy's logout URL (redirects are not followed).
    #[arg(long)]
    logout: Url,
    /// The logout request's method.
    #[arg(long, default_value = "GET", value_parser = ["GET", "POST"])]
    method: String,
    /// Seconds to wait for the socket to close after the logout.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    wait: u64,
}

/// How a held socket ended after the logout.
enum SocketEnd {
    /// A close frame with this code (1005: none in the frame).
    Frame(u16),
    /// The connection ended without a close frame.
    Dropped,
    /// Still open when the wait ran out.
    StillOpen,
}

/// Opens one WebSocket with the session, logs the session out, and prints
/// `logout-close status=S closed=0|1 close_ms=T code=C waited_s=W`.
pub(crate) async fn logout_close(run: LogoutCloseRun) -> Result<()> {
    loopback_target(&run.logout, "http").await?;
    let target = WsTarget::new(run.url.clone(), run.origin.clone(), &run.headers).await?;
    let mut ws = timeout(IO_TIMEOUT, target.open())
        .await
        .context("handshake timed out")??;
    // Let the proxy register the connection before the session ends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(IO_TIMEOUT)
        .build()?;
    let method = if run.method == "POST" {
        reqwest::Method::POST
    } else {
        reqwest::Method::GET
    };
    // A browser's same-origin logout: proxies refuse a cross-site one (CSRF).
    let mut request = client
        .request(method, run.logout.clone())
        .header("origin", run.logout.origin().ascii_serialization());
    for header in &run.headers {
        let (name, value) = parse_header(header)?;
        request = request.header(name, value);
    }
    let started = Instant::now();
    let status = request
        .send()
        .await
        .context("the logout request failed")?
        .status();
    ensure!(
        status.is_success() || status.is_redirection(),
        "the logout answered {status}"
    );
    let wait = Duration::from_secs(run.wait);
    let end = timeout(wait.saturating_sub(started.elapsed()), async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(frame)) => {
                    return SocketEnd::Frame(frame.map_or(1005, |f| u16::from(f.code)))
                }
                Ok(_) => {}
                Err(_) => return SocketEnd::Dropped,
            }
        }
        SocketEnd::Dropped
    })
    .await
    .unwrap_or(SocketEnd::StillOpen);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = status.as_u16();
    match end {
        SocketEnd::Frame(code) => println!(
            "logout-close status={status} closed=1 close_ms={elapsed_ms:.1} code={code} waited_s={}",
            run.wait
        ),
        SocketEnd::Dropped => println!(
            "logout-close status={status} closed=1 close_ms={elapsed_ms:.1} code=none waited_s={}",
            run.wait
        ),
        SocketEnd::StillOpen => {
            println!(
                "logout-close status={status} closed=0 close_ms=none code=none waited_s={}",
                run.wait
            );
            // An orderly end for the socket the proxy left open.
            let _ = close(ws).await;
        }
    }
    Ok(())
}
