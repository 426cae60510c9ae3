//! `load`: the load tool behind `scripts/bench-load.sh`. Not a criterion
//! benchmark, but a small CLI built as a bench target so that it is compiled
//! with the release profile and may use dev-dependencies.
//!
//! Servers (run until interrupted):
//!   backend     --listen ADDR [--threads N]                 the demo echo backend
//!   bare-proxy  --listen ADDR --upstream ADDR [--threads N] [--tls-cert PEM --tls-key PEM]
//!                 Pingora forwarding, nothing else (over TLS with a certificate)
//!   idp         --listen ADDR --token-file PATH [--alg RS256|ES256] [--user alice]
//!               [--fresh-file PATH --fresh-count N]
//!                 the development OpenID provider; writes an access token to PATH
//!                 (after N more, each with its own jti, to the fresh file)
//!
//! Clients (bounded in time and count; results on stdout as one line of
//! `key=value` pairs, the first error on stderr):
//!   login       --url http://PROXY --deployment D --cookie-file PATH [--user alice]
//!                 a browser login at portcullis and the development provider;
//!                 writes the session cookie (`name=value`) to PATH
//!   token-api   --url http://PROXY --admin http://ADMIN --provider http://IDP --deployment D
//!               --redirect-uri URI [--count N] [--jwt-file PATH] [--user alice]
//!                 N site logins at the development provider (not timed), each code
//!                 exchanged at portcullis's token API, then N refreshes in a chain;
//!                 latency as the client sees it and portcullis's own time (its
//!                 metric, which leaves out the provider's); writes the last
//!                 messenger token to PATH
//!   http        --url http://... [--concurrency C] [--duration SECS] [--header 'Name: value']...
//!   handshakes  --url ws://...   [--concurrency C] [--duration SECS] [--origin O] [--header 'Name: value']...
//!                 both take [--fresh-keys DIR [--fresh-alg RS256|ES256] | --fresh-file PATH]
//!                 [--fresh-count N]: N distinct access tokens minted with the provider's
//!                 keys in DIR before the clock starts (or read from PATH), one per
//!                 request or handshake (first-seen bearer tokens, never a cache hit);
//!                 the run ends when they run out
//!   mint        --fresh-keys DIR [--fresh-alg RS256|ES256] [--fresh-count N] --out PATH
//!                 those tokens, one a line, to PATH (for several runs' use)
//!                 both also take https:// and wss:// URLs with `--ca PEM` (the roots
//!                 to verify the server against; rustls on aws-lc-rs, no session
//!                 resumption, so every new connection is a full TLS handshake)
//!   certs       --dir DIR
//!                 a test CA (ca.pem) and a certificate for localhost and 127.0.0.1
//!                 it issued (server.crt, server.key) in DIR, for TLS runs
//!   hold        --url ws://...   --count N [--hold SECS] [--pid PID]... [--origin O] [--header 'Name: value']...
//!               [--forced-close http://ADMIN/admin/connections?... | --sigterm PID] [--release-file PATH]
//!                 with --sigterm, SIGTERM goes to PID (portcullis) and each socket's
//!                 close frame is timed from it: the drain's spread (`first_us`, p50, max)
//!                 with --release-file, the sockets are held until PATH exists (or
//!                 --hold runs out), so a background holder can span another
//!                 measurement; a socket the server closed meanwhile shows in the
//!                 closing line (`close_errors`, `unanswered_closes`)
//!                 with --forced-close, the held sockets are not closed by the client:
//!                 the tool sends DELETE to that admin URL and times each socket's
//!                 close frame from the moment the DELETE was sent; refused
//!                 handshakes are counted by status (`refused_503`, `bad_gateway_502`,
//!                 `other_errors`), so a run past the server's connection ceiling
//!                 says whether it refused cleanly
//!
//!   logout-close --url ws://PROXY --header 'Cookie: ...' --logout http://PROXY/... [--method GET|POST]
//!               [--origin O] [--wait SECS]
//!                 one WebSocket of the session, then its logout; when (whether) the
//!                 proxy closed the socket (benches/compare/run.sh)
//!
//!   compare-report --raw TSV --meta FILE --out DIR
//!                 results.md and chart.png of benches/compare/run.sh from its raw figures
//!
//! Several instances sharing a Redis session store (`scripts/bench-scale.sh`):
//!   logins        --url http://PROXY --deployment D --count N --cookie-file PATH [--user alice]
//!                 [--concurrency C]
//!                 N browser logins (N sessions); their cookies, one a line, to PATH
//!   revoke-close  --url ws://PROXY --cookie-file PATH --count N [--origin O] [--hold SECS]
//!                 (--revoke http://ADMIN/admin/subjects/SUB/sessions | --logout-at http://PROXY)
//!                 N WebSockets over the sessions of PATH (round robin); then either one
//!                 DELETE to the admin URL, each socket's close frame timed from it, or one
//!                 logout per session at another (or the same) instance, one at a time,
//!                 each timed from the logout request to its socket's close frame
//!   soak          --url http://PROXY --admin http://ADMIN --provider http://IDP --pid PID
//!                 --steady-deployment D --short-deployment S --redirect-uri URI --origin O
//!                 [--count 9000] [--duration 600] [--idle-timeout 60] ...
//!                 (benches/soak.sh) steady chats held for the whole run beside
//!                 trickles of logouts (must close 4002 at once), silent sessions
//!                 on S (must close 4001 at S's idle timeout) and refreshing
//!                 token-API clients on S (must stay); samples the server's RSS,
//!                 descriptors and live connections
//!   redis-ops     --redis 127.0.0.1:PORT --a http://A --admin-a http://ADMIN_A --b http://B
//!               --provider http://IDP --session-deployment D --messenger-deployment M
//!               --redirect-uri URI [--count N] [--origin O]
//!                 the Redis commands (counted with MONITOR) and memory (INFO memory,
//!                 MEMORY USAGE) of N logins, cold and warm handshakes, token exchanges,
//!                 refreshes, per-session revocations and one subject revocation
//!
//! Every address, listened on or connected to, must be loopback: this tool
//! generates load, and load aimed at someone else's server is an attack.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use async_trait::async_trait;
use clap::{CommandFactory, Parser, Subcommand};
use futures_util::{stream, StreamExt};
use jsonwebtoken::Algorithm;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use portcullis::devidp::{self, DevIdpOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use url::Url;

#[path = "load/chat.rs"]
mod chat;
#[path = "load/soak.rs"]
mod soak;

#[path = "load/compare.rs"]
mod compare;

#[path = "load/report.rs"]
mod report;

/// How long one request, handshake or close may take before it counts as an
/// error; keeps every run bounded even against a server that stalls.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed connection, so that a server that is down yields a
/// readable error count rather than a busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// How many WebSockets `hold` opens (and closes) at a time: enough to be
/// quick, few enough not to overflow the server's accept backlog.
const OPEN_PARALLELISM: usize = 200;
/// Descriptors `hold` keeps free for everything that is not a held socket.
const FD_MARGIN: u64 = 64;
/// The largest response head and body the HTTP client accepts.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;
/// Lifetime of the tokens `idp` mints: longer than any run of the script
/// (the provider's own default, 5 minutes, is not).
const IDP_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

#[derive(Parser)]
#[command(
    name = "load",
    about = "Load tool for comparing portcullis with a bare Pingora proxy (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the demo echo backend: JSON echo on any path, WebSocket echo on upgrade.
    Backend {
        #[arg(long)]
        listen: SocketAddr,
        /// Worker threads of the backend.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
    },
    /// Serve a Pingora proxy that only forwards to one upstream: the baseline.
    BareProxy {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        /// Serve TLS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Worker threads of the proxy service.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
    },
    /// Serve the development OpenID provider (issuer `http://ADDR`) and write
    /// one access token it signed, valid for an hour, to PATH.
    Idp {
        #[arg(long)]
        listen: SocketAddr,
        /// Where to write the access token (replaced atomically).
        #[arg(long)]
        token_file: PathBuf,
        /// The token's signing algorithm.
        #[arg(long, default_value = "RS256", value_parser = ["RS256", "ES256"])]
        alg: String,
        /// The token's subject, one of the provider's users (alice, bob, carol).
        #[arg(long, default_value = "alice")]
        user: String,
        /// Also write --fresh-count more access tokens of the same user and
        /// algorithm to this file, one a line, each with its own `jti`
        /// (first-seen bearer load: `http`/`handshakes --fresh-file`),
        /// minted on every CPU before the token file is written.
        #[arg(long, requires = "fresh_count")]
        fresh_file: Option<PathBuf>,
        #[arg(long, requires = "fresh_file", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        fresh_count: Option<u64>,
    },
    /// Log in through portcullis at the development provider, as a browser
    /// would, and write the session cookie (`name=value`) to PATH.
    Login {
        /// portcullis's base URL, e.g. http://127.0.0.1:18080.
        #[arg(long)]
        url: Url,
        #[arg(long)]
        deployment: String,
        #[arg(long)]
        cookie_file: PathBuf,
        /// One of the provider's users (alice, bob, carol).
        #[arg(long, default_value = "alice")]
        user: String,
    },
    /// Token API latency: N exchanges (each of a fresh site login), then N refreshes.
    TokenApi(Box<TokenApiRun>),
    /// Write a test CA and a localhost certificate it issued to DIR.
    Certs {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Keep-alive HTTP/1.1 GET requests from C connections for SECS seconds.
    Http {
        #[arg(long)]
        url: Url,
        /// Roots for an https:// URL (PEM).
        #[arg(long)]
        ca: Option<PathBuf>,
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=4096))]
        concurrency: u16,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
        duration: u64,
        /// An extra request header, `Name: value`; repeatable.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Worker threads of this client.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
        #[command(flatten)]
        fresh: compare::FreshTokenArgs,
    },
    /// Repeated WebSocket handshakes (connect, then close) from C tasks for SECS seconds.
    Handshakes {
        #[arg(long)]
        url: Url,
        /// Roots for a wss:// URL (PEM).
        #[arg(long)]
        ca: Option<PathBuf>,
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=4096))]
        concurrency: u16,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
        duration: u64,
        /// The `Origin` header to send.
        #[arg(long)]
        origin: Option<String>,
        /// An extra handshake header, `Name: value`; repeatable.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Worker threads of this client.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
        #[command(flatten)]
        fresh: compare::FreshTokenArgs,
    },
    /// Open N WebSockets, hold them idle, report the server's memory per connection.
    Hold {
        #[arg(long)]
        url: Url,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        count: u64,
        /// Seconds to hold every connection open before measuring again.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=7200))]
        hold: u64,
        /// Stop holding as soon as this file exists (at most --hold seconds).
        #[arg(long)]
        release_file: Option<PathBuf>,
        /// The server process whose resident memory (VmRSS) is measured;
        /// repeatable (a server of several processes: their sum).
        #[arg(long = "pid")]
        pids: Vec<u32>,
        /// The `Origin` header to send.
        #[arg(long)]
        origin: Option<String>,
        /// An extra handshake header, `Name: value`; repeatable.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// Worker threads of this client.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
        /// An admin URL whose DELETE closes the held sockets (e.g.
        /// /admin/connections?deployment=D): time how long each takes to close.
        #[arg(long, conflicts_with = "sigterm")]
        forced_close: Option<Url>,
        /// Send SIGTERM to this process (portcullis) instead of closing the
        /// sockets: time each one's close frame from the signal (its drain).
        #[arg(long)]
        sigterm: Option<u32>,
    },
    /// N browser logins (sessions) through portcullis; their cookies to PATH.
    Logins {
        /// portcullis's base URL, e.g. http://127.0.0.1:28080.
        #[arg(long)]
        url: Url,
        #[arg(long)]
        deployment: String,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        count: u64,
        /// Where to write the cookies (`name=value`), one a line.
        #[arg(long)]
        cookie_file: PathBuf,
        /// One of the provider's users (alice, bob, carol).
        #[arg(long, default_value = "alice")]
        user: String,
        /// Logins under way at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
    },
    /// Hold WebSockets of the sessions in a cookie file, end the sessions, time the closes.
    RevokeClose(Box<RevokeCloseRun>),
    /// Steady chats held for minutes beside trickles of logouts, idle expiries
    /// and refreshing token clients; every socket's end checked (benches/soak.sh).
    Soak(Box<soak::SoakRun>),
    /// Redis commands and memory per login, handshake, exchange, refresh and revocation.
    RedisOps(Box<RedisOpsRun>),
    /// One busy WebSocket: echo throughput, round trips and the proxy's CPU time.
    Chat(Box<chat::ChatRun>),
    /// Hold one WebSocket of a session, log the session out, time the socket's close.
    LogoutClose(Box<compare::LogoutCloseRun>),
    /// The cross-proxy benchmark's table and chart from its raw figures.
    CompareReport(report::ReportRun),
    /// Mint first-seen access tokens with a provider's keys, one a line, to a file.
    Mint(compare::MintRun),
}

fn main() -> ExitCode {
    // `cargo bench` runs every bench target with `--bench` (and `cargo test
    // --benches` with no arguments at all); as a tool, not a benchmark, this
    // one then only explains itself instead of failing the whole run.
    let launched_by_cargo = std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let has_subcommand = args.get(1).is_some_and(|first| {
        Cli::command()
            .get_subcommands()
            .any(|s| s.get_name() == first)
    });
    if args.len() == 1 || (launched_by_cargo && !has_subcommand) {
        println!("load: a load tool, not a benchmark; see scripts/bench-load.sh\n");
        println!("{}", Cli::command().render_help());
        return ExitCode::SUCCESS;
    }
    match run(Cli::parse_from(args).command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Backend { listen, threads } => backend(listen, threads),
        Command::BareProxy {
            listen,
            upstream,
            threads,
            tls_cert,
            tls_key,
        } => bare_proxy(listen, upstream, threads, tls_cert.zip(tls_key)),
        Command::Certs { dir } => certs(&dir),
        Command::Idp {
            listen,
            token_file,
            alg,
            user,
            fresh_file,
            fresh_count,
        } => idp(
            listen,
            &token_file,
            &alg,
            &user,
            fresh_file.as_deref().zip(fresh_count),
        ),
        Command::Login {
            url,
            deployment,
            cookie_file,
            user,
        } => runtime(1)?.block_on(login(url, &deployment, &cookie_file, &user)),
        Command::TokenApi(run) => runtime(1)?.block_on(token_api(*run)),
        Command::Http {
            url,
            ca,
            concurrency,
            duration,
            headers,
            threads,
            fresh,
        } => {
            let fresh = compare::FreshTokens::mint(&fresh)?;
            runtime(threads)?.block_on(http(
                tls_client(ca.as_deref())?,
                url,
                concurrency,
                Duration::from_secs(duration),
                &headers,
                fresh.as_deref(),
            ))
        }
        Command::Handshakes {
            url,
            ca,
            concurrency,
            duration,
            origin,
            headers,
            threads,
            fresh,
        } => {
            let fresh = compare::FreshTokens::mint(&fresh)?;
            runtime(threads)?.block_on(handshakes(
                tls_client(ca.as_deref())?,
                url,
                origin,
                &headers,
                concurrency,
                Duration::from_secs(duration),
                fresh,
            ))
        }
        Command::Hold {
            url,
            count,
            hold: seconds,
            pids,
            origin,
            headers,
            threads,
            forced_close,
            sigterm,
            release_file,
        } => runtime(threads)?.block_on(hold(
            url,
            origin,
            &headers,
            count,
            HoldFor {
                at_most: Duration::from_secs(seconds),
                release_file,
            },
            &pids,
            forced_close
                .map(CloseTrigger::AdminDelete)
                .or(sigterm.map(CloseTrigger::Sigterm)),
        )),
        Command::Logins {
            url,
            deployment,
            count,
            cookie_file,
            user,
            concurrency,
        } => runtime(1)?.block_on(logins(
            url,
            &deployment,
            count,
            &cookie_file,
            &user,
            concurrency,
        )),
        Command::RevokeClose(run) => runtime(1)?.block_on(revoke_close(*run)),
        Command::Soak(run) => runtime(2)?.block_on(soak::soak(*run)),
        Command::Chat(run) => runtime(1)?.block_on(chat::chat(*run)),
        Command::RedisOps(run) => runtime(1)?.block_on(redis_ops(*run)),
        Command::LogoutClose(run) => runtime(1)?.block_on(compare::logout_close(*run)),
        Command::CompareReport(run) => report::compare_report(run),
        Command::Mint(run) => compare::mint(run),
    }
}

fn runtime(threads: u16) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(threads))
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn ensure_loopback(addr: SocketAddr) -> Result<()> {
    ensure!(
        addr.ip().is_loopback(),
        "{addr} is not a loopback address; this tool only listens on and loads this machine"
    );
    Ok(())
}

/// The loopback address `url` points at. The host is resolved once, and
/// every address it resolves to must be loopback, so that a name cannot
/// smuggle load to another machine.
async fn loopback_target(url: &Url, scheme: &str) -> Result<SocketAddr> {
    ensure!(
        url.scheme() == scheme,
        "{url}: expected a {scheme}:// URL here"
    );
    let host = url.host_str().context("the URL has no host")?;
    let port = url.port_or_known_default().context("the URL has no port")?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare_host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    ensure!(!addrs.is_empty(), "{host} resolves to no address");
    if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!("{url}: refusing a non-loopback target ({host} resolves to {remote}); this tool only loads this machine");
    }
    // Servers here listen on 127.0.0.1; `localhost` may list ::1 first.
    Ok(addrs
        .iter()
        .copied()
        .find(SocketAddr::is_ipv4)
        .unwrap_or(addrs[0]))
}

// ---------------------------------------------------------------- servers

fn backend(listen: SocketAddr, threads: u16) -> Result<()> {
    ensure_loopback(listen)?;
    runtime(threads)?.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        eprintln!("load: backend listening on {listen}");
        // An explicit handler: a shell starts background jobs with SIGINT
        // ignored, and scripts stop servers with it.
        // A fixed-size answer on /v1/ping: the echo on other paths grows with
        // the headers a proxy adds, which would charge the proxy for the
        // backend's extra work.
        let app = portcullis::demo::backend::router()
            .route("/v1/ping", axum::routing::get(|| async { "pong" }));
        tokio::select! {
            served = async { axum::serve(listener, app).await } => served.context("the backend stopped"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

/// The baseline: a Pingora proxy with no logic of its own.
struct Forward {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn bare_proxy(
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: u16,
    tls: Option<(PathBuf, PathBuf)>,
) -> Result<()> {
    ensure_loopback(listen)?;
    ensure_loopback(upstream)?;
    // The same crypto stack as portcullis (aws-lc-rs), or the comparison
    // would measure ring against aws-lc-rs.
    portcullis::install_crypto_provider();
    let conf = ServerConf {
        threads: usize::from(threads),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Forward { upstream });
    match &tls {
        None => proxy.add_tcp(&listen.to_string()),
        Some((cert, key)) => proxy
            .add_tls(
                &listen.to_string(),
                &cert.to_string_lossy(),
                &key.to_string_lossy(),
            )
            .context("cannot load the TLS certificate")?,
    }
    server.add_service(proxy);
    eprintln!("load: bare Pingora proxy listening on {listen}, forwarding to {upstream}");
    server.run_forever()
}

/// The development provider, for load through an authenticating deployment.
/// The token is written only once the provider answers (keys generated) and
/// the `fresh` tokens (a file and how many) are written, so a script that
/// waits for the file may use them all at once.
fn idp(
    listen: SocketAddr,
    token_file: &Path,
    alg: &str,
    user: &str,
    fresh: Option<(&Path, u64)>,
) -> Result<()> {
    ensure_loopback(listen)?;
    let alg = match alg {
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => bail!("--alg {other}: expected RS256 or ES256"),
    };
    let options = DevIdpOptions {
        token_lifetime: IDP_TOKEN_LIFETIME,
        ..DevIdpOptions::default()
    };
    ensure!(
        options.users.iter().any(|u| u.subject == user),
        "--user {user}: the development provider has no such user"
    );
    runtime(1)?.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let provider = devidp::start(listener, options)
            .await
            .context("cannot start the development provider")?;
        if let Some((path, count)) = fresh {
            mint_fresh(&provider, user, alg, count, path)?;
        }
        let token = provider.mint_access_token(user, alg);
        // Write beside the target, then rename: a reader never sees half a token.
        let partial = token_file.with_extension("partial");
        std::fs::write(&partial, &token)
            .and_then(|()| std::fs::rename(&partial, token_file))
            .with_context(|| format!("cannot write {}", token_file.display()))?;
        eprintln!(
            "load: development provider {} listening; {alg:?} access token for {user} in {}",
            provider.issuer(),
            token_file.display()
        );
        // An explicit handler, as for the backend: scripts stop servers with SIGINT.
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for SIGINT")?;
        drop(provider);
        Ok(())
    })
}

/// `count` access tokens for `user`, each with its own `jti`, one a line in
/// `path`, signed on every CPU this process may use.
fn mint_fresh(
    provider: &devidp::DevIdp,
    user: &str,
    alg: Algorithm,
    count: u64,
    path: &Path,
) -> Result<()> {
    let count = usize::try_from(count)?;
    let started = Instant::now();
    let tokens = compare::mint_on_every_cpu(count, |_| Ok(provider.mint_access_token(user, alg)))?;
    let mut lines = tokens.join("\n");
    lines.push('\n');
    std::fs::write(path, lines).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "load: minted {count} {alg:?} access tokens for {user} in {:.1}s to {}",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}

/// The four steps of a browser login: portcullis's login start, the
/// provider's form, the user's choice, portcullis's callback.
async fn login(url: Url, deployment: &str, cookie_file: &Path, user: &str) -> Result<()> {
    loopback_target(&url, "http").await?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(IO_TIMEOUT)
        .build()?;
    let location = |resp: &reqwest::Response| -> Result<String> {
        let value = resp.headers().get("location").with_context(|| {
            format!(
                "{} answered {} without a Location",
                resp.url(),
                resp.status()
            )
        })?;
        Ok(value.to_str()?.to_string())
    };
    let cookies = |resp: &reqwest::Response| -> Vec<String> {
        resp.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
            .collect()
    };
    let mut start_url = url.join("/.auth/login")?;
    start_url
        .query_pairs_mut()
        .append_pair("deployment", deployment)
        .append_pair("rd", "/");
    let start = client.get(start_url).send().await?;
    let pending = cookies(&start);
    let authorize = Url::parse(&location(&start)?)?;
    loopback_target(&authorize, "http").await?;
    let form = client.get(authorize.clone()).send().await?.text().await?;
    let request_id = form
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the provider's page has no login form")?;
    let chosen = client
        .post(authorize.join("/authorize/login")?)
        .form(&[("request", request_id), ("user", user)])
        .send()
        .await?;
    let callback = location(&chosen)?;
    let done = client
        .get(&callback)
        .header("cookie", pending.join("; "))
        .send()
        .await?;
    ensure!(
        done.status() == 302,
        "the callback answered {}: {}",
        done.status(),
        done.text().await.unwrap_or_default()
    );
    let session = cookies(&done)
        .into_iter()
        .find(|c| !c.contains("-login-") && !c.ends_with('='))
        .context("the callback set no session cookie")?;
    let partial = cookie_file.with_extension("partial");
    std::fs::write(&partial, &session)
        .and_then(|()| std::fs::rename(&partial, cookie_file))
        .with_context(|| format!("cannot write {}", cookie_file.display()))?;
    Ok(())
}

// ---------------------------------------------------------------- token API

#[derive(clap::Args)]
struct TokenApiRun {
    /// portcullis's base URL, e.g. http://127.0.0.1:18080.
    #[arg(long)]
    url: Url,
    /// portcullis's admin base URL, for its metrics.
    #[arg(long)]
    admin: Url,
    /// The development provider's issuer URL.
    #[arg(long)]
    provider: Url,
    #[arg(long)]
    deployment: String,
    /// A redirect URI the deployment registers (the provider's answer is not followed).
    #[arg(long)]
    redirect_uri: Url,
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    count: u64,
    /// Where to write the last messenger token.
    #[arg(long)]
    jwt_file: Option<PathBuf>,
    /// One of the provider's users (alice, bob, carol).
    #[arg(long, default_value = "alice")]
    user: String,
}

/// A site's login at the development provider (authorization code, PKCE,
/// nonce): what a site hands the token API.
struct SiteCode {
    code: String,
    verifier: String,
    nonce: String,
    iss: Option<String>,
}

async fn site_login(client: &reqwest::Client, run: &TokenApiRun) -> Result<SiteCode> {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let random = || -> Result<String> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
        Ok(b64(&bytes))
    };
    let (verifier, nonce, state) = (random()?, random()?, random()?);
    let challenge =
        b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()).as_ref());
    let mut authorize = run.provider.join("/authorize")?;
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "portcullis-demo")
        .append_pair("redirect_uri", run.redirect_uri.as_str())
        .append_pair("scope", "openid email profile offline_access")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let form = client.get(authorize.clone()).send().await?.text().await?;
    let request_id = form
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the provider's page has no login form")?;
    let chosen = client
        .post(authorize.join("/authorize/login")?)
        .form(&[("request", request_id), ("user", run.user.as_str())])
        .send()
        .await?;
    let back = chosen
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .with_context(|| {
            format!(
                "the provider answered {} without a Location",
                chosen.status()
            )
        })?;
    let back = Url::parse(back)?;
    let param = |name: &str| {
        back.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    ensure!(
        param("state").as_deref() == Some(state.as_str()),
        "the provider's answer has another state"
    );
    Ok(SiteCode {
        code: param("code").context("the provider's answer has no code")?,
        verifier,
        nonce,
        iss: param("iss"),
    })
}

/// `sum / count` of portcullis's `portcullis_token_api_duration_seconds`
/// for `operation`, from its metrics page.
async fn portcullis_time(
    client: &reqwest::Client,
    admin: &Url,
    operation: &str,
) -> Result<(f64, f64)> {
    let text = client
        .get(admin.join("/metrics")?)
        .send()
        .await?
        .text()
        .await?;
    let label = format!("operation=\"{operation}\"");
    let value = |suffix: &str| -> f64 {
        let name = format!("portcullis_token_api_duration_seconds_{suffix}{{");
        text.lines()
            .filter(|l| l.starts_with(&name) && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok((value("sum"), value("count")))
}

/// One timed token API call; the answer's JSON when it is a 200.
async fn token_call(
    client: &reqwest::Client,
    url: Url,
    body: &serde_json::Value,
    tally: &mut Tally,
) -> Option<serde_json::Value> {
    let started = Instant::now();
    let result = async {
        let resp = client.post(url).json(body).send().await?;
        let status = resp.status();
        let answer: serde_json::Value = resp.json().await?;
        ensure!(status == 200, "status {status}: {answer}");
        Ok::<_, anyhow::Error>(answer)
    }
    .await;
    match result {
        Ok(answer) => {
            tally.success(started);
            Some(answer)
        }
        Err(e) => {
            tally.error(e);
            None
        }
    }
}

async fn token_api(run: TokenApiRun) -> Result<()> {
    loopback_target(&run.url, "http").await?;
    loopback_target(&run.admin, "http").await?;
    loopback_target(&run.provider, "http").await?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(IO_TIMEOUT)
        .build()?;
    let exchange_url = run.url.join("/.auth/token")?;
    let refresh_url = run.url.join("/.auth/token/refresh")?;

    let before = portcullis_time(&client, &run.admin, "exchange").await?;
    let mut exchanges = Tally::default();
    let mut last = None;
    for _ in 0..run.count {
        let code = site_login(&client, &run).await?;
        let body = serde_json::json!({
            "deploymentId": run.deployment,
            "oauth": {
                "code": code.code,
                "redirectUri": run.redirect_uri.as_str(),
                "codeVerifier": code.verifier,
                "nonce": code.nonce,
                "iss": code.iss,
            }
        });
        if let Some(answer) = token_call(&client, exchange_url.clone(), &body, &mut exchanges).await
        {
            last = Some(answer);
        }
    }
    let after = portcullis_time(&client, &run.admin, "exchange").await?;
    let exchange_own = own_mean_us(before, after);

    let mut answer = last.context("no exchange succeeded")?;
    let before = portcullis_time(&client, &run.admin, "refresh").await?;
    let mut refreshes = Tally::default();
    for _ in 0..run.count {
        let refresh_token = answer["refreshToken"]
            .as_str()
            .context("an answer without refreshToken")?
            .to_string();
        let body =
            serde_json::json!({"deploymentId": run.deployment, "refreshToken": refresh_token});
        match token_call(&client, refresh_url.clone(), &body, &mut refreshes).await {
            Some(next) => answer = next,
            None => break, // the chain is broken: a rotated token cannot be used again
        }
    }
    let after = portcullis_time(&client, &run.admin, "refresh").await?;
    let refresh_own = own_mean_us(before, after);

    if let Some(path) = &run.jwt_file {
        let jwt = answer["jwt"].as_str().context("an answer without jwt")?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, jwt)
            .and_then(|()| std::fs::rename(&partial, path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    for (kind, tally, own) in [
        ("exchange", exchanges, exchange_own),
        ("refresh", refreshes, refresh_own),
    ] {
        let mean = mean_us(&tally.latencies_us);
        let total = Duration::from_micros(tally.latencies_us.iter().map(|&us| u64::from(us)).sum());
        tally.report(
            kind,
            "calls",
            total,
            &format!(" mean_us={mean:.0} portcullis_mean_us={own:.0}"),
        );
    }
    Ok(())
}

fn mean_us(samples: &[u32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().map(|&us| f64::from(us)).sum::<f64>() / samples.len() as f64
}

/// Mean of what was observed between two `(sum_s, count)` readings, in µs.
fn own_mean_us(before: (f64, f64), after: (f64, f64)) -> f64 {
    let count = after.1 - before.1;
    if count <= 0.0 {
        return 0.0;
    }
    (after.0 - before.0) / count * 1e6
}

// ---------------------------------------------------------------- results

/// What a group of client tasks observed.
#[derive(Default)]
struct Tally {
    /// Latency of every successful operation, in microseconds.
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    /// Closes we started that the server ended without its close frame.
    unanswered_closes: u64,
}

impl Tally {
    fn success(&mut self, started: Instant) {
        let us = started.elapsed().as_micros();
        self.latencies_us
            .push(u32::try_from(us).unwrap_or(u32::MAX));
    }

    fn error(&mut self, e: impl Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.unanswered_closes += other.unanswered_closes;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Prints the one result line: `<kind> <noun>=N errors=E <noun>_per_s=R
    /// p50_us=... p99_us=... max_us=...` followed by `extra`.
    fn report(mut self, kind: &str, noun: &str, elapsed: Duration, extra: &str) {
        self.latencies_us.sort_unstable();
        let ok = self.latencies_us.len();
        let rate = ok as f64 / elapsed.as_secs_f64();
        let p50 = percentile(&self.latencies_us, 0.50);
        let p99 = percentile(&self.latencies_us, 0.99);
        let max = self.latencies_us.last().copied().unwrap_or(0);
        println!(
            "{kind} {noun}={ok} errors={} {noun}_per_s={rate:.0} p50_us={p50} p99_us={p99} max_us={max}{extra}",
            self.errors
        );
        if let Some(e) = self.first_error {
            eprintln!("load: {kind}: first error: {e}");
        }
    }
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `concurrency` copies of `worker`, each given the deadline `run_for`
/// from now, and merges what they saw; returns the tally and the wall time
/// until the last one finished.
async fn drive<W, F>(concurrency: u16, run_for: Duration, worker: W) -> Result<(Tally, Duration)>
where
    W: Fn(Instant) -> F,
    F: std::future::Future<Output = Tally> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + run_for;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(deadline)))
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        tally.merge(task.await.context("a client task panicked")?);
    }
    Ok((tally, started.elapsed()))
}

// ---------------------------------------------------------------- http

/// One keep-alive HTTP/1.1 connection. The client is deliberately minimal
/// (a prebuilt request, httparse on the response, Content-Length bodies
/// only) so that it costs far less CPU than the servers it measures.
struct HttpConnection {
    stream: Conn,
    buf: Vec<u8>,
}

impl HttpConnection {
    async fn connect(addr: SocketAddr, tls: Option<&TlsTarget>) -> Result<Self> {
        let stream = Conn::connect(addr, tls).await?;
        Ok(HttpConnection {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends `request` and reads the whole response; returns its status and
    /// whether the connection may carry another request.
    async fn exchange(&mut self, request: &[u8]) -> Result<(u16, bool)> {
        self.stream.write_all(request).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            let head_len = match response.parse(&self.buf)? {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => {
                    ensure!(
                        self.buf.len() <= MAX_RESPONSE_HEAD,
                        "the response head is too large"
                    );
                    self.read_more().await?;
                    continue;
                }
            };
            let status = response.code.unwrap_or(0);
            let mut keep_alive = response.version == Some(1);
            let mut body_len = None;
            for h in response.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    let text = std::str::from_utf8(h.value).ok();
                    body_len = Some(
                        text.and_then(|t| t.trim().parse::<usize>().ok())
                            .context("a malformed Content-Length")?,
                    );
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("status {status}: a Transfer-Encoding response; this client reads Content-Length bodies only");
                } else if h.name.eq_ignore_ascii_case("connection") {
                    keep_alive &= !String::from_utf8_lossy(h.value)
                        .to_ascii_lowercase()
                        .contains("close");
                }
            }
            let body_len = match (status, body_len) {
                (204 | 304, _) => 0,
                (_, Some(n)) => n,
                (_, None) => bail!("status {status}: a response without Content-Length"),
            };
            ensure!(
                body_len <= MAX_RESPONSE_BODY,
                "the response body is too large"
            );
            let total = head_len + body_len;
            while self.buf.len() < total {
                self.read_more().await?;
            }
            self.buf.drain(..total);
            return Ok((status, keep_alive));
        }
    }

    async fn read_more(&mut self) -> Result<()> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            bail!("the server closed the connection mid-response");
        }
        Ok(())
    }
}

/// The bytes of the GET request for `url` with the extra `headers`.
fn get_request(url: &Url, headers: &[String]) -> Result<Vec<u8>> {
    let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let authority = &url[url::Position::BeforeHost..url::Position::AfterPort];
    let mut request =
        format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: portcullis-load\r\n");
    for header in headers {
        let (name, value) = parse_header(header)?;
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    Ok(request.into_bytes())
}

/// A `--header 'Name: value'` argument, checked and trimmed.
fn parse_header(header: &str) -> Result<(&str, &str)> {
    let (name, value) = header
        .split_once(':')
        .with_context(|| format!("--header {header:?}: expected 'Name: value'"))?;
    let name = name.trim();
    ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)),
        "--header {header:?}: not a header name"
    );
    ensure!(
        !value.contains(['\r', '\n']),
        "--header {header:?}: line breaks are not allowed"
    );
    Ok((name, value.trim()))
}

async fn http(
    tls: Option<Arc<rustls::ClientConfig>>,
    url: Url,
    concurrency: u16,
    run_for: Duration,
    headers: &[String],
    fresh: Option<&compare::FreshTokens>,
) -> Result<()> {
    let tls = TlsTarget::for_url(tls, &url, "https")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let addr = loopback_target(&url, scheme).await?;
    let requests = Arc::new(compare::Requests::new(&url, headers, fresh)?);
    let (tally, elapsed) = drive(concurrency, run_for, |deadline| {
        http_worker(addr, tls.clone(), requests.clone(), deadline)
    })
    .await?;
    tally.report("http", "requests", elapsed, "");
    Ok(())
}

async fn http_worker(
    addr: SocketAddr,
    tls: Option<Arc<TlsTarget>>,
    requests: Arc<compare::Requests>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut connection: Option<HttpConnection> = None;
    while Instant::now() < deadline {
        let conn = match connection.take() {
            Some(c) => c,
            None => {
                match timeout(IO_TIMEOUT, HttpConnection::connect(addr, tls.as_deref())).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tally.error(e);
                        tokio::time::sleep(ERROR_BACKOFF).await;
                        continue;
                    }
                    Err(_) => {
                        tally.error("connect timed out");
                        continue;
                    }
                }
            }
        };
        let conn = connection.insert(conn);
        let Some(request) = requests.next() else {
            break;
        };
        let started = Instant::now();
        match timeout(IO_TIMEOUT, conn.exchange(request)).await {
            Ok(Ok((status, keep_alive))) => {
                if (200..300).contains(&status) {
                    tally.success(started);
                } else {
                    tally.error(format!("status {status}"));
                }
                if !keep_alive {
                    connection = None;
                }
            }
            Ok(Err(e)) => {
                tally.error(e);
                connection = None;
            }
            Err(_) => {
                tally.error("request timed out");
                connection = None;
            }
        }
    }
    tally
}

// ---------------------------------------------------------------- TLS

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// The client side of a TLS run: the roots from `--ca`, on aws-lc-rs,
/// without session resumption (every new connection is a full handshake,
/// the cost a proxy pays for a client it has not seen).
fn tls_client(ca: Option<&Path>) -> Result<Option<Arc<rustls::ClientConfig>>> {
    let Some(ca) = ca else { return Ok(None) };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("{}: not PEM", ca.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Some(Arc::new(config)))
}

/// Where a TLS connection goes: the client config and the name to verify.
struct TlsTarget {
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl TlsTarget {
    /// TLS for a `tls_scheme` URL (which then needs `--ca`), none otherwise.
    fn for_url(
        config: Option<Arc<rustls::ClientConfig>>,
        url: &Url,
        tls_scheme: &str,
    ) -> Result<Option<Arc<Self>>> {
        if url.scheme() != tls_scheme {
            return Ok(None);
        }
        let config = config.with_context(|| format!("{url}: a {tls_scheme}:// URL needs --ca"))?;
        let host = url.host_str().context("the URL has no host")?;
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Some(Arc::new(TlsTarget {
            connector: tokio_rustls::TlsConnector::from(config),
            name: rustls::pki_types::ServerName::try_from(bare_host.to_string())
                .with_context(|| format!("{host}: not a TLS server name"))?,
        })))
    }
}

/// A client connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    async fn connect(addr: SocketAddr, tls: Option<&TlsTarget>) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        match tls {
            None => Ok(Conn::Plain(stream)),
            Some(t) => Ok(Conn::Tls(Box::new(
                t.connector
                    .connect(t.name.clone(), stream)
                    .await
                    .context("TLS handshake failed")?,
            ))),
        }
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// `certs --dir DIR`: a CA and a certificate for localhost it issued.
fn certs(dir: &Path) -> Result<()> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis load CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?
            .signed_by(&key, &ca)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("server.crt"), cert.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(())
}

// ---------------------------------------------------------------- websockets

/// Where and how to open WebSockets.
struct WsTarget {
    url: Url,
    addr: SocketAddr,
    tls: Option<Arc<TlsTarget>>,
    origin: Option<HeaderValue>,
    /// Extra handshake headers, `--header`.
    headers: Vec<(HeaderName, HeaderValue)>,
}

type Ws = WebSocketStream<Conn>;

impl WsTarget {
    async fn new(url: Url, origin: Option<String>, headers: &[String]) -> Result<Arc<Self>> {
        Self::with_tls(None, url, origin, headers).await
    }

    async fn with_tls(
        tls: Option<Arc<rustls::ClientConfig>>,
        url: Url,
        origin: Option<String>,
        headers: &[String],
    ) -> Result<Arc<Self>> {
        let tls = TlsTarget::for_url(tls, &url, "wss")?;
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let addr = loopback_target(&url, scheme).await?;
        let origin = origin
            .map(|o| {
                HeaderValue::from_str(&o)
                    .with_context(|| format!("--origin {o:?}: not a header value"))
            })
            .transpose()?;
        let headers = headers
            .iter()
            .map(|header| {
                let (name, value) = parse_header(header)?;
                Ok((
                    HeaderName::from_bytes(name.as_bytes())
                        .with_context(|| format!("--header {header:?}: not a header name"))?,
                    HeaderValue::from_str(value)
                        .with_context(|| format!("--header {header:?}: not a header value"))?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Arc::new(WsTarget {
            url,
            addr,
            tls,
            origin,
            headers,
        }))
    }

    /// Connects and completes the handshake (any answer but 101 is an error).
    async fn open(&self) -> Result<Ws> {
        self.open_with_token(None).await
    }

    /// `open`, with `Authorization: Bearer <token>` when a token is given.
    async fn open_with_token(&self, bearer: Option<&str>) -> Result<Ws> {
        let stream = Conn::connect(self.addr, self.tls.as_deref()).await?;
        // A fresh request each time: each handshake needs its own key.
        let mut request = self.url.as_str().into_client_request()?;
        if let Some(origin) = &self.origin {
            request.headers_mut().insert("origin", origin.clone());
        }
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        if let Some(token) = bearer {
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}"))?,
            );
        }
        let (ws, _response) = tokio_tungstenite::client_async(request, stream)
            .await
            .context("handshake failed")?;
        Ok(ws)
    }
}

/// Closes `ws` the orderly way: a close frame, then reading (and
/// discarding anything the server sent, like the backend's greeting) until
/// the stream ends. Returns whether the server answered with its own close
/// frame, as RFC 6455 asks; a server that just hangs up instead is counted
/// apart from errors, since the connection did end.
async fn close(mut ws: Ws) -> Result<bool> {
    let closing = async {
        ws.close(None).await?;
        let mut answered = false;
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(_)) => answered = true,
                Ok(_) => {}
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                    return Ok(false)
                }
                Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(false)
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::Ok(answered)
    };
    timeout(IO_TIMEOUT, closing)
        .await
        .context("close timed out")?
}

async fn handshakes(
    tls: Option<Arc<rustls::ClientConfig>>,
    url: Url,
    origin: Option<String>,
    headers: &[String],
    concurrency: u16,
    run_for: Duration,
    fresh: Option<Arc<compare::FreshTokens>>,
) -> Result<()> {
    let target = WsTarget::with_tls(tls, url, origin, headers).await?;
    let (tally, elapsed) = drive(concurrency, run_for, |deadline| {
        handshake_worker(target.clone(), fresh.clone(), deadline)
    })
    .await?;
    let unanswered = format!(" unanswered_closes={}", tally.unanswered_closes);
    tally.report("handshakes", "handshakes", elapsed, &unanswered);
    Ok(())
}

/// Handshakes in a loop; the latency is the handshake's alone, the close
/// is part of the cycle but not of the measurement.
async fn handshake_worker(
    target: Arc<WsTarget>,
    fresh: Option<Arc<compare::FreshTokens>>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let bearer = match &fresh {
            None => None,
            Some(tokens) => match tokens.take() {
                Some(token) => Some(token),
                None => break,
            },
        };
        let started = Instant::now();
        match timeout(IO_TIMEOUT, target.open_with_token(bearer)).await {
            Ok(Ok(ws)) => {
                tally.success(started);
                match close(ws).await {
                    Ok(true) => {}
                    Ok(false) => tally.unanswered_closes += 1,
                    Err(e) => tally.error(e),
                }
            }
            Ok(Err(e)) => {
                tally.error(e);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
            Err(_) => tally.error("handshake timed out"),
        }
    }
    tally
}

// ---------------------------------------------------------------- hold

/// How long `hold` holds: `at_most`, or until `release_file` exists.
struct HoldFor {
    at_most: Duration,
    release_file: Option<PathBuf>,
}

async fn hold(
    url: Url,
    origin: Option<String>,
    headers: &[String],
    count: u64,
    hold_for: HoldFor,
    pids: &[u32],
    closed_by: Option<CloseTrigger>,
) -> Result<()> {
    if let Some(CloseTrigger::AdminDelete(admin)) = &closed_by {
        loopback_target(admin, "http").await?;
    }
    let fd_limit = raise_fd_limit()?;
    ensure!(
        count + FD_MARGIN <= fd_limit,
        "--count {count} needs {} descriptors, but this process may open only {fd_limit} (RLIMIT_NOFILE hard limit)",
        count + FD_MARGIN
    );
    let target = WsTarget::new(url, origin, headers).await?;
    let rss_before = rss_sum_kib(pids)?;

    let started = Instant::now();
    let attempts: Vec<Result<Ws>> = stream::iter(0..count)
        .map(|_| {
            let target = target.clone();
            async move {
                timeout(IO_TIMEOUT, target.open())
                    .await
                    .context("handshake timed out")?
            }
        })
        .buffer_unordered(OPEN_PARALLELISM)
        .collect()
        .await;
    let open_time = started.elapsed();
    let mut tally = Tally::default();
    let mut held = Vec::with_capacity(attempts.len());
    let (mut refused_503, mut bad_gateway_502) = (0u64, 0u64);
    for attempt in attempts {
        match attempt {
            Ok(ws) => held.push(ws),
            Err(e) => {
                match refusal_status(&e) {
                    Some(503) => refused_503 += 1,
                    Some(502) => bad_gateway_502 += 1,
                    _ => {}
                }
                tally.error(e);
            }
        }
    }

    let held_until = started + open_time + hold_for.at_most;
    match hold_for.release_file {
        None => tokio::time::sleep(hold_for.at_most).await,
        Some(path) => {
            while Instant::now() < held_until && !path.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let rss_after = rss_sum_kib(pids)?;
    let memory = match (rss_before, rss_after) {
        (Some(before), Some(after)) if !held.is_empty() => {
            let per_connection = (after as f64 - before as f64) / held.len() as f64;
            format!(
                " rss_before_kib={before} rss_after_kib={after} kib_per_conn={per_connection:.1}"
            )
        }
        _ => String::new(),
    };
    println!(
        "hold opened={} errors={} refused_503={refused_503} bad_gateway_502={bad_gateway_502} \
         other_errors={} open_s={:.2}{memory}",
        held.len(),
        tally.errors,
        tally.errors - refused_503 - bad_gateway_502,
        open_time.as_secs_f64()
    );
    if let Some(e) = &tally.first_error {
        eprintln!("load: hold: first error: {e}");
    }

    if let Some(trigger) = closed_by {
        return forced_closes(held, trigger).await;
    }
    let closes: Vec<Result<bool>> = stream::iter(held)
        .map(close)
        .buffer_unordered(OPEN_PARALLELISM)
        .collect()
        .await;
    let answered = closes.iter().filter(|c| matches!(c, Ok(true))).count();
    let unanswered = closes.iter().filter(|c| matches!(c, Ok(false))).count();
    println!(
        "hold closed={answered} unanswered_closes={unanswered} close_errors={}",
        closes.len() - answered - unanswered
    );
    if let Some(Err(e)) = closes.iter().find(|c| c.is_err()) {
        eprintln!("load: hold: first close error: {e:#}");
    }
    Ok(())
}

/// The HTTP status that answered a handshake instead of 101, if that is
/// what failed it.
fn refusal_status(e: &anyhow::Error) -> Option<u16> {
    e.chain()
        .find_map(|cause| match cause.downcast_ref::<WsError>() {
            Some(WsError::Http(response)) => Some(response.status().as_u16()),
            _ => None,
        })
}

/// Sends DELETE to `admin` and waits for every held socket's close frame:
/// prints how long they took, counted from the moment the DELETE was sent,
/// and the close codes seen.
/// What ends the held sockets in a forced-close measurement.
enum CloseTrigger {
    /// A DELETE to an admin URL (`--forced-close`).
    AdminDelete(Url),
    /// SIGTERM to the server process (`--sigterm`): its drain.
    Sigterm(u32),
}

/// How long a socket may wait for its close frame after the trigger: a
/// drain waits out `shutdown.drain_grace` and `shutdown.close_window` first.
const DRAIN_WAIT: Duration = Duration::from_secs(120);

async fn forced_closes(held: Vec<Ws>, trigger: CloseTrigger) -> Result<()> {
    let count = held.len();
    let (kind, wait) = match trigger {
        CloseTrigger::AdminDelete(_) => ("forced-close", IO_TIMEOUT),
        CloseTrigger::Sigterm(_) => ("drain-close", DRAIN_WAIT),
    };
    let started = Instant::now();
    let waits = stream::iter(held)
        .map(|mut ws| async move {
            let waited = timeout(wait, async {
                while let Some(message) = ws.next().await {
                    if let Ok(Message::Close(frame)) = message {
                        return Some(frame.map_or(1005, |f| u16::from(f.code)));
                    }
                    message.ok()?;
                }
                None
            })
            .await;
            (waited.ok().flatten(), started.elapsed())
        })
        .buffer_unordered(count.max(1))
        .collect::<Vec<_>>();
    let trigger = async {
        match trigger {
            CloseTrigger::AdminDelete(admin) => {
                let resp = reqwest::Client::new()
                    .delete(admin)
                    .timeout(IO_TIMEOUT)
                    .send()
                    .await?;
                ensure!(
                    resp.status().is_success(),
                    "the admin close answered {}",
                    resp.status()
                );
            }
            CloseTrigger::Sigterm(pid) => {
                let pid = libc::pid_t::try_from(pid).context("--sigterm: not a process id")?;
                // SAFETY: kill takes plain integers and touches no memory of ours.
                if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .context("cannot send SIGTERM to --sigterm's process");
                }
            }
        }
        anyhow::Ok(())
    };
    let (outcomes, triggered) = tokio::join!(waits, trigger);
    triggered?;
    let mut tally = Tally::default();
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    let mut first = Duration::MAX;
    for (code, elapsed) in outcomes {
        match code {
            Some(code) => {
                *codes.entry(code).or_default() += 1;
                first = first.min(elapsed);
                tally
                    .latencies_us
                    .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
            }
            None => tally.error("no close frame in time"),
        }
    }
    let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
    let first_us = if first == Duration::MAX {
        0
    } else {
        first.as_micros()
    };
    tally.report(
        kind,
        "closed",
        started.elapsed(),
        &format!(" codes={} first_us={first_us}", codes.join(",")),
    );
    Ok(())
}

/// Raises this process's soft open-files limit to the hard limit, since every
/// held WebSocket is a descriptor; returns the limit now in force.
fn raise_fd_limit() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass, which we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(limit.rlim_cur)
}

/// The summed resident set size of `pids`, `None` for no process.
fn rss_sum_kib(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter()
        .map(|&pid| rss_kib(pid))
        .sum::<Result<u64>>()
        .map(Some)
}

/// The resident set size of process `pid`, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path} has no VmRSS line"))
}

// ---------------------------------------------------------------- several instances

/// `count` browser logins of `user` through portcullis at `url`, at most
/// `concurrency` at a time: their cookies, and a tally of their latencies.
async fn many_logins(
    url: &Url,
    deployment: &str,
    user: &str,
    count: u64,
    concurrency: u16,
) -> Result<(Vec<String>, Tally)> {
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let results: Vec<Result<(String, Duration)>> = stream::iter(0..count)
        .map(|i| {
            let path = dir.path().join(format!("cookie-{i}"));
            let url = url.clone();
            async move {
                let started = Instant::now();
                login(url, deployment, &path, user).await?;
                let elapsed = started.elapsed();
                let cookie = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok((cookie, elapsed))
            }
        })
        .buffer_unordered(usize::from(concurrency))
        .collect()
        .await;
    let mut tally = Tally::default();
    let mut cookies = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok((cookie, elapsed)) => {
                tally
                    .latencies_us
                    .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                cookies.push(cookie);
            }
            Err(e) => tally.error(e),
        }
    }
    Ok((cookies, tally))
}

async fn logins(
    url: Url,
    deployment: &str,
    count: u64,
    cookie_file: &Path,
    user: &str,
    concurrency: u16,
) -> Result<()> {
    let started = Instant::now();
    let (cookies, tally) = many_logins(&url, deployment, user, count, concurrency).await?;
    ensure!(
        !cookies.is_empty(),
        "no login succeeded: {}",
        tally.first_error.as_deref().unwrap_or("?")
    );
    let partial = cookie_file.with_extension("partial");
    std::fs::write(&partial, cookies.join("\n") + "\n")
        .and_then(|()| std::fs::rename(&partial, cookie_file))
        .with_context(|| format!("cannot write {}", cookie_file.display()))?;
    tally.report("logins", "logins", started.elapsed(), "");
    Ok(())
}

/// The cookies of a `logins` cookie file.
fn read_cookies(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cookies: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    ensure!(!cookies.is_empty(), "{} holds no cookie", path.display());
    Ok(cookies)
}

#[derive(clap::Args)]
struct RevokeCloseRun {
    /// The chat URL of the instance that holds the sockets (ws://...).
    #[arg(long)]
    url: Url,
    /// Session cookies, one a line (`load logins`).
    #[arg(long)]
    cookie_file: PathBuf,
    /// WebSockets to hold, spread over the sessions round robin.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    count: u64,
    /// The `Origin` header of the handshakes.
    #[arg(long)]
    origin: Option<String>,
    /// Seconds to hold the sockets before ending the sessions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=600))]
    hold: u64,
    /// An admin URL whose DELETE ends every session at once, e.g.
    /// http://ADMIN/admin/subjects/bob/sessions.
    #[arg(
        long,
        conflicts_with = "logout_at",
        required_unless_present = "logout_at"
    )]
    revoke: Option<Url>,
    /// A portcullis base URL where each session logs out (POST
    /// /.auth/logout), one session at a time.
    #[arg(long)]
    logout_at: Option<Url>,
}

async fn revoke_close(run: RevokeCloseRun) -> Result<()> {
    if let Some(url) = run.revoke.as_ref().or(run.logout_at.as_ref()) {
        loopback_target(url, "http").await?;
    }
    let fd_limit = raise_fd_limit()?;
    ensure!(
        run.count + FD_MARGIN <= fd_limit,
        "--count {} needs {} descriptors, but this process may open only {fd_limit}",
        run.count,
        run.count + FD_MARGIN
    );
    let cookies = read_cookies(&run.cookie_file)?;
    let mut targets = Vec::with_capacity(cookies.len());
    for cookie in &cookies {
        targets.push(
            WsTarget::new(
                run.url.clone(),
                run.origin.clone(),
                &[format!("Cookie: {cookie}")],
            )
            .await?,
        );
    }
    let sessions = cookies.len();
    let started = Instant::now();
    let attempts: Vec<(usize, Result<Ws>)> = stream::iter(0..run.count)
        .map(|i| {
            let session = usize::try_from(i).unwrap_or(0) % sessions;
            let target = targets[session].clone();
            async move {
                let opened = timeout(IO_TIMEOUT, target.open())
                    .await
                    .context("handshake timed out")
                    .and_then(|r| r);
                (session, opened)
            }
        })
        .buffer_unordered(OPEN_PARALLELISM)
        .collect()
        .await;
    let open_time = started.elapsed();
    let mut tally = Tally::default();
    let mut by_session: Vec<Vec<Ws>> = (0..sessions).map(|_| Vec::new()).collect();
    for (session, attempt) in attempts {
        match attempt {
            Ok(ws) => by_session[session].push(ws),
            Err(e) => tally.error(e),
        }
    }
    let opened: usize = by_session.iter().map(Vec::len).sum();
    println!(
        "hold opened={opened} errors={} open_s={:.2} sessions={sessions}",
        tally.errors,
        open_time.as_secs_f64()
    );
    if let Some(e) = &tally.first_error {
        eprintln!("load: revoke-close: first error: {e}");
    }
    tokio::time::sleep(Duration::from_secs(run.hold)).await;
    match (run.revoke, run.logout_at) {
        (Some(admin), _) => {
            forced_closes(
                by_session.into_iter().flatten().collect(),
                CloseTrigger::AdminDelete(admin),
            )
            .await
        }
        (None, Some(base)) => logout_closes(by_session, &cookies, &base).await,
        (None, None) => bail!("--revoke or --logout-at is required"),
    }
}

/// The close code of `ws`'s close frame and when it came, counted from
/// `started`; `None` if none came within the I/O timeout.
async fn close_frame(ws: Ws, started: Instant) -> Option<(u16, Duration)> {
    close_frame_within(ws, started, IO_TIMEOUT).await
}

/// `close_frame`, waiting up to `wait` instead of the I/O timeout.
async fn close_frame_within(
    mut ws: Ws,
    started: Instant,
    wait: Duration,
) -> Option<(u16, Duration)> {
    let code = timeout(wait, async {
        while let Some(message) = ws.next().await {
            if let Ok(Message::Close(frame)) = message {
                return Some(frame.map_or(1005, |f| u16::from(f.code)));
            }
            message.ok()?;
        }
        None
    })
    .await
    .ok()
    .flatten()?;
    Some((code, started.elapsed()))
}

/// One session at a time: logs it out at `base` and times each of its
/// sockets from the logout request to the socket's close frame.
async fn logout_closes(by_session: Vec<Vec<Ws>>, cookies: &[String], base: &Url) -> Result<()> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(IO_TIMEOUT)
        .build()?;
    let logout = base.join("/.auth/logout")?;
    let origin = base.origin().ascii_serialization();
    let mut tally = Tally::default();
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    let all_started = Instant::now();
    for (sockets, cookie) in by_session.into_iter().zip(cookies) {
        if sockets.is_empty() {
            continue;
        }
        let started = Instant::now();
        let waits =
            futures_util::future::join_all(sockets.into_iter().map(|ws| close_frame(ws, started)));
        let post = async {
            let resp = client
                .post(logout.clone())
                .header("origin", &origin)
                .header("cookie", cookie)
                .send()
                .await?;
            ensure!(
                resp.status() == 302,
                "the logout answered {}",
                resp.status()
            );
            anyhow::Ok(())
        };
        let (outcomes, posted) = tokio::join!(waits, post);
        if let Err(e) = posted {
            tally.error(e);
        }
        for outcome in outcomes {
            match outcome {
                Some((code, elapsed)) => {
                    *codes.entry(code).or_default() += 1;
                    tally
                        .latencies_us
                        .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
                }
                None => tally.error("no close frame within the I/O timeout"),
            }
        }
    }
    let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
    tally.report(
        "logout-close",
        "closed",
        all_started.elapsed(),
        &format!(" codes={}", codes.join(",")),
    );
    Ok(())
}

// ---------------------------------------------------------------- redis ops

#[derive(clap::Args)]
struct RedisOpsRun {
    /// The Redis server the instances share (loopback).
    #[arg(long)]
    redis: SocketAddr,
    /// Instance A's base URL (handshakes, token API, revocations).
    #[arg(long)]
    a: Url,
    /// Instance A's chat URL (ws://A/v1/chat?deploymentId=D, D the session deployment).
    #[arg(long)]
    ws_a: Url,
    /// Instance A's admin base URL.
    #[arg(long)]
    admin_a: Url,
    /// Instance B's base URL (the browser logins).
    #[arg(long)]
    b: Url,
    /// The development provider's issuer URL.
    #[arg(long)]
    provider: Url,
    #[arg(long)]
    session_deployment: String,
    #[arg(long)]
    messenger_deployment: String,
    /// A redirect URI the messenger deployment registers.
    #[arg(long)]
    redirect_uri: Url,
    /// Operations of each kind.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1000))]
    count: u64,
    /// The `Origin` header of the handshakes.
    #[arg(long)]
    origin: Option<String>,
    /// The instances' `sessions.redis.key_prefix`.
    #[arg(long, default_value = "portcullis:")]
    key_prefix: String,
}

/// Commands MONITOR showed, by name: sent by clients (each a round trip,
/// or part of a pipeline) and run inside scripts.
#[derive(Default)]
struct CommandCounts {
    client: std::collections::BTreeMap<String, u64>,
    script: std::collections::BTreeMap<String, u64>,
}

/// Commands left out of the counts: the instances' reachability probes
/// (PING every 500 ms each) and this tool's own reads and marks.
const UNCOUNTED: &[&str] = &[
    "PING", "ECHO", "INFO", "MEMORY", "SCAN", "SCARD", "CLIENT", "HELLO", "SELECT",
];

impl CommandCounts {
    /// Counts one MONITOR line: `+<time> [<db> <addr>|lua] "CMD" "arg"...`.
    fn add(&mut self, line: &str) {
        let Some((source, rest)) = line.split_once("] \"") else {
            return;
        };
        let name = rest.split('"').next().unwrap_or("").to_ascii_uppercase();
        if name.is_empty() || UNCOUNTED.contains(&name.as_str()) {
            return;
        }
        let counts = if source.ends_with(" lua") {
            &mut self.script
        } else {
            &mut self.client
        };
        *counts.entry(name).or_default() += 1;
    }

    fn total(map: &std::collections::BTreeMap<String, u64>) -> u64 {
        map.values().sum()
    }

    fn list(map: &std::collections::BTreeMap<String, u64>) -> String {
        let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(",")
        }
    }
}

/// A MONITOR connection, read up to marks this tool sets with ECHO, so that
/// each phase's commands are told apart exactly.
struct Monitor {
    lines: tokio::io::Lines<tokio::io::BufReader<TcpStream>>,
    control: redis::aio::MultiplexedConnection,
    marks: u64,
}

impl Monitor {
    async fn start(addr: SocketAddr) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        ensure_loopback(addr)?;
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to Redis at {addr}"))?;
        stream.write_all(b"MONITOR\r\n").await?;
        let mut lines = tokio::io::BufReader::new(stream).lines();
        let first = timeout(IO_TIMEOUT, lines.next_line())
            .await
            .context("MONITOR did not answer")??;
        ensure!(
            first.as_deref() == Some("+OK"),
            "MONITOR answered {first:?}"
        );
        let control = redis::Client::open(format!("redis://{addr}/0"))?
            .get_multiplexed_async_connection()
            .await
            .context("cannot connect to Redis")?;
        let mut monitor = Monitor {
            lines,
            control,
            marks: 0,
        };
        monitor.mark().await?;
        Ok(monitor)
    }

    /// The commands run since the previous mark.
    async fn mark(&mut self) -> Result<CommandCounts> {
        self.marks += 1;
        let token = format!("portcullis-load-mark-{}", self.marks);
        let _: String = redis::cmd("ECHO")
            .arg(&token)
            .query_async(&mut self.control)
            .await?;
        let mut counts = CommandCounts::default();
        loop {
            let line = timeout(IO_TIMEOUT, self.lines.next_line())
                .await
                .context("MONITOR fell silent")??
                .context("MONITOR connection closed")?;
            if line.contains(&token) {
                return Ok(counts);
            }
            counts.add(&line);
        }
    }

    async fn used_memory(&mut self) -> Result<i64> {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut self.control)
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .context("INFO memory has no used_memory")
    }

    /// One key matching `pattern`, its `MEMORY USAGE` (all samples) and,
    /// for a set, its members.
    async fn key_usage(&mut self, pattern: &str) -> Result<Option<(i64, Option<i64>)>> {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut self.control)
                .await?;
            if let Some(key) = keys.first() {
                let bytes: i64 = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(&mut self.control)
                    .await?;
                let kind: String = redis::cmd("TYPE")
                    .arg(key)
                    .query_async(&mut self.control)
                    .await?;
                let members = if kind == "set" {
                    Some(
                        redis::cmd("SCARD")
                            .arg(key)
                            .query_async(&mut self.control)
                            .await?,
                    )
                } else {
                    None
                };
                return Ok(Some((bytes, members)));
            }
            if next == 0 {
                return Ok(None);
            }
            cursor = next;
        }
    }
}

/// Prints one phase's line: `ops phase=P count=N client_per_op=X
/// script_per_op=Y client=CMD:n,... script=CMD:n,...`.
fn report_ops(phase: &str, count: u64, counts: &CommandCounts, extra: &str) {
    let per = |n: u64| n as f64 / count.max(1) as f64;
    println!(
        "ops phase={phase} count={count} client_per_op={:.2} script_per_op={:.2} client={} script={}{extra}",
        per(CommandCounts::total(&counts.client)),
        per(CommandCounts::total(&counts.script)),
        CommandCounts::list(&counts.client),
        CommandCounts::list(&counts.script),
    );
}

async fn report_key(monitor: &mut Monitor, kind: &str, pattern: &str) -> Result<()> {
    if let Some((bytes, members)) = monitor.key_usage(pattern).await? {
        let members = members.map_or(String::new(), |m| format!(" members={m}"));
        println!("key kind={kind} memory_usage_bytes={bytes}{members}");
    }
    Ok(())
}

/// One handshake (then an orderly close) per cookie, one at a time.
async fn handshake_each(url: &Url, origin: &Option<String>, cookies: &[String]) -> Result<Tally> {
    let mut tally = Tally::default();
    for cookie in cookies {
        let target =
            WsTarget::new(url.clone(), origin.clone(), &[format!("Cookie: {cookie}")]).await?;
        let started = Instant::now();
        match timeout(IO_TIMEOUT, target.open()).await {
            Ok(Ok(ws)) => {
                tally.success(started);
                if let Err(e) = close(ws).await {
                    tally.error(e);
                }
            }
            Ok(Err(e)) => tally.error(e),
            Err(_) => tally.error("handshake timed out"),
        }
    }
    Ok(tally)
}

async fn redis_ops(run: RedisOpsRun) -> Result<()> {
    for url in [&run.a, &run.admin_a, &run.b, &run.provider] {
        loopback_target(url, "http").await?;
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(IO_TIMEOUT)
        .build()?;
    let count = run.count;
    let prefix = &run.key_prefix;
    let mut monitor = Monitor::start(run.redis).await?;
    let ensure_clean = |phase: &str, tally: &Tally| -> Result<()> {
        ensure!(
            tally.errors == 0,
            "{phase}: {} errors, the first: {}",
            tally.errors,
            tally.first_error.as_deref().unwrap_or("?")
        );
        Ok(())
    };

    // Browser logins at B: sessions of alice.
    let before = monitor.used_memory().await?;
    monitor.mark().await?;
    let (cookies, tally) = many_logins(&run.b, &run.session_deployment, "alice", count, 1).await?;
    let counts = monitor.mark().await?;
    ensure_clean("login", &tally)?;
    let after = monitor.used_memory().await?;
    report_ops(
        "login",
        count,
        &counts,
        &format!(" used_memory_per_op={}", (after - before) / count as i64),
    );
    report_key(&mut monitor, "session", &format!("{prefix}s:*")).await?;
    report_key(&mut monitor, "public_id", &format!("{prefix}p:*")).await?;
    report_key(&mut monitor, "subject_index", &format!("{prefix}sub:*")).await?;
    report_key(
        &mut monitor,
        "provider_sid_index",
        &format!("{prefix}sid:*"),
    )
    .await?;

    // Handshakes at A, which has not seen these sessions, then again while
    // they are in its local cache.
    for phase in ["handshake_cold", "handshake_warm"] {
        monitor.mark().await?;
        let tally = handshake_each(&run.ws_a, &run.origin, &cookies).await?;
        let counts = monitor.mark().await?;
        ensure_clean(phase, &tally)?;
        report_ops(phase, count, &counts, "");
    }

    // Token API exchanges at A: sessions of carol (the site logins at the
    // provider touch no Redis).
    let token_run = TokenApiRun {
        url: run.a.clone(),
        admin: run.admin_a.clone(),
        provider: run.provider.clone(),
        deployment: run.messenger_deployment.clone(),
        redirect_uri: run.redirect_uri.clone(),
        count,
        jwt_file: None,
        user: "carol".into(),
    };
    let exchange_url = run.a.join("/.auth/token")?;
    let refresh_url = run.a.join("/.auth/token/refresh")?;
    let before = monitor.used_memory().await?;
    monitor.mark().await?;
    let mut tally = Tally::default();
    let mut last = None;
    for _ in 0..count {
        let code = site_login(&client, &token_run).await?;
        let body = serde_json::json!({
            "deploymentId": run.messenger_deployment,
            "oauth": {
                "code": code.code,
                "redirectUri": run.redirect_uri.as_str(),
                "codeVerifier": code.verifier,
                "nonce": code.nonce,
                "iss": code.iss,
            }
        });
        if let Some(answer) = token_call(&client, exchange_url.clone(), &body, &mut tally).await {
            last = Some(answer);
        }
    }
    let counts = monitor.mark().await?;
    ensure_clean("exchange", &tally)?;
    let after = monitor.used_memory().await?;
    report_ops(
        "exchange",
        count,
        &counts,
        &format!(" used_memory_per_op={}", (after - before) / count as i64),
    );
    report_key(&mut monitor, "refresh_record", &format!("{prefix}r:*")).await?;

    // A chain of refreshes of the last messenger token.
    let mut answer = last.context("no exchange succeeded")?;
    monitor.mark().await?;
    let mut tally = Tally::default();
    for _ in 0..count {
        let refresh_token = answer["refreshToken"]
            .as_str()
            .context("an answer without refreshToken")?
            .to_string();
        let body = serde_json::json!({"deploymentId": run.messenger_deployment, "refreshToken": refresh_token});
        match token_call(&client, refresh_url.clone(), &body, &mut tally).await {
            Some(next) => answer = next,
            None => break,
        }
    }
    let counts = monitor.mark().await?;
    ensure_clean("refresh", &tally)?;
    report_ops("refresh", count, &counts, "");

    // alice's sessions revoked one by one through A's admin endpoint.
    let listed: serde_json::Value = client
        .get(run.admin_a.join("/admin/sessions?sub=alice")?)
        .send()
        .await?
        .json()
        .await?;
    let ids: Vec<String> = listed["sessions"]
        .as_array()
        .context("the session list has no sessions")?
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_string))
        .collect();
    ensure!(
        ids.len() as u64 == count,
        "A lists {} sessions of alice, {count} expected",
        ids.len()
    );
    let before = monitor.used_memory().await?;
    monitor.mark().await?;
    let mut tally = Tally::default();
    for id in &ids {
        let started = Instant::now();
        match client
            .delete(run.admin_a.join(&format!("/admin/sessions/{id}"))?)
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => tally.success(started),
            Ok(resp) => tally.error(format!("status {}", resp.status())),
            Err(e) => tally.error(e),
        }
    }
    let counts = monitor.mark().await?;
    ensure_clean("revoke_session", &tally)?;
    let after = monitor.used_memory().await?;
    report_ops(
        "revoke_session",
        count,
        &counts,
        &format!(" used_memory_per_op={}", (after - before) / count as i64),
    );
    report_key(&mut monitor, "ended_id_token", &format!("{prefix}t:*")).await?;

    // carol's sessions, all at once by subject through A.
    monitor.mark().await?;
    let resp = client
        .delete(run.admin_a.join("/admin/subjects/carol/sessions")?)
        .send()
        .await?;
    let counts = monitor.mark().await?;
    ensure!(
        resp.status().is_success(),
        "the subject revoke answered {}",
        resp.status()
    );
    let answer: serde_json::Value = resp.json().await?;
    let revoked = answer["revoked"].as_u64().unwrap_or(0);
    report_ops(
        "revoke_subject",
        revoked,
        &counts,
        &format!(" sessions={revoked}"),
    );
    Ok(())
}
