//! `load soak`: one portcullis instance under a long, bounded, mixed load,
//! checking that every live connection lasts exactly as long as its
//! credential:
//!
//! - steady chats (many sockets per browser session, default session
//!   lifetimes) that talk now and then and must stay open, every message
//!   echoed, for the whole run;
//! - a trickle of browser logins whose socket is logged out after a few
//!   seconds and must close with 4002 at once;
//! - a trickle of silent browser sessions on a deployment with a short
//!   `idle_timeout`, whose socket must close with 4001 when it runs out, not
//!   before;
//! - token-API clients on that same deployment, holding a socket opened with
//!   their messenger token and refreshing (rotating) it before the idle
//!   timeout: their sockets must stay open although the socket is silent and
//!   each token lives shorter than the run;
//!
//! while the server's resident memory, open descriptors and live-connection
//! gauge are sampled. Prints `soak …` summary lines and `sample …` lines.

use super::*;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use futures_util::SinkExt;

#[derive(clap::Args)]
pub(crate) struct SoakRun {
    /// portcullis's base URL, e.g. http://127.0.0.1:28090.
    #[arg(long)]
    url: Url,
    /// portcullis's admin base URL, for its live-connection gauge.
    #[arg(long)]
    admin: Url,
    /// The development provider's issuer URL (token-API clients sign in there).
    #[arg(long)]
    provider: Url,
    /// The deployment of the steady chats and of the logout trickle.
    #[arg(long)]
    steady_deployment: String,
    /// A deployment whose messenger's `idle_timeout` is --idle-timeout and
    /// that registers --redirect-uri: expiring chats and token-API clients.
    #[arg(long)]
    short_deployment: String,
    #[arg(long)]
    redirect_uri: Url,
    /// The short deployment's `idle_timeout`, in seconds.
    #[arg(long, default_value_t = 60)]
    idle_timeout: u64,
    /// Path and query of the chat endpoint, without the deployment id.
    #[arg(long, default_value = "/v1/chat")]
    chat_path: String,
    #[arg(long)]
    origin: String,
    /// The portcullis process, for its memory and descriptors.
    #[arg(long)]
    pid: u32,
    /// Steady chats.
    #[arg(long, default_value_t = 9000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    count: u64,
    /// Steady chats per browser session.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    chats_per_session: u64,
    /// Seconds the steady chats are held.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(30..=7200))]
    duration: u64,
    /// Seconds between two messages of one steady chat (each chat starts at a
    /// random point of the period).
    #[arg(long, default_value_t = 30)]
    message_every: u64,
    /// Seconds between two starts of each trickle (a logout, an expiry).
    #[arg(long, default_value_t = 2)]
    trickle_every: u64,
    /// Token-API clients, each with one socket.
    #[arg(long, default_value_t = 20)]
    refreshing_clients: u64,
    /// Seconds between two samples of the server.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
}

/// A logout must close its socket within this long to count as on time.
const LOGOUT_CLOSE_BOUND: Duration = Duration::from_secs(2);
/// An idle expiry is on time from this long before `idle_timeout` after the
/// login (clock granularity: the session's times are whole seconds) ...
const EXPIRY_EARLY_SLACK: Duration = Duration::from_secs(2);
/// ... to this long after it (the sweep and the keeper's pass).
const EXPIRY_LATE_SLACK: Duration = Duration::from_secs(35);

#[derive(Default)]
struct Counters {
    steady_dropped: AtomicU64,
    messages: AtomicU64,
    echoes: AtomicU64,
    echo_missing: AtomicU64,
    steady_closed_answered: AtomicU64,
    steady_close_unanswered: AtomicU64,
    refreshes: AtomicU64,
    refresh_errors: AtomicU64,
    refreshing_dropped: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// What one trickle case ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    OnTime,
    Early,
    Late,
    OtherCode(u16),
    NotClosed,
    Error,
}

impl Outcome {
    fn label(self) -> String {
        match self {
            Outcome::OnTime => "on_time".into(),
            Outcome::Early => "early".into(),
            Outcome::Late => "late".into(),
            Outcome::OtherCode(code) => format!("code_{code}"),
            Outcome::NotClosed => "not_closed".into(),
            Outcome::Error => "error".into(),
        }
    }
}

pub(crate) async fn soak(run: SoakRun) -> Result<()> {
    loopback_target(&run.url, "http").await?;
    loopback_target(&run.admin, "http").await?;
    loopback_target(&run.provider, "http").await?;
    let fd_limit = raise_fd_limit()?;
    let trickle_peak = 2 * (run.idle_timeout + 40) / run.trickle_every.max(1);
    ensure!(
        run.count + run.refreshing_clients + trickle_peak + FD_MARGIN <= fd_limit,
        "--count {} needs more descriptors than this process may open ({fd_limit})",
        run.count
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(run.duration);
    let counters = Arc::new(Counters::default());
    let run = Arc::new(run);

    // Steady chats: sessions first, then their sockets.
    let sessions = run.count.div_ceil(run.chats_per_session);
    let (cookies, login_tally) =
        many_logins(&run.url, &run.steady_deployment, "alice", sessions, 8).await?;
    ensure!(
        login_tally.errors == 0,
        "steady logins failed: {}",
        login_tally.first_error.as_deref().unwrap_or("?")
    );
    let steady_url = chat_url(&run, &run.steady_deployment)?;
    let mut targets = Vec::new();
    for cookie in &cookies {
        targets.push(
            WsTarget::new(
                steady_url.clone(),
                Some(run.origin.clone()),
                &[format!("Cookie: {cookie}")],
            )
            .await?,
        );
    }
    let opening = Instant::now();
    let attempts: Vec<Result<Ws>> = stream::iter(0..run.count)
        .map(|i| {
            let target = targets[usize::try_from(i / run.chats_per_session).unwrap_or(0)].clone();
            async move {
                timeout(IO_TIMEOUT, target.open())
                    .await
                    .context("handshake timed out")?
            }
        })
        .buffer_unordered(OPEN_PARALLELISM)
        .collect()
        .await;
    let mut open_errors = Tally::default();
    let mut steady = Vec::with_capacity(attempts.len());
    for attempt in attempts {
        match attempt {
            Ok(ws) => steady.push(ws),
            Err(e) => open_errors.error(e),
        }
    }
    println!(
        "soak opened steady={} sessions={sessions} errors={} open_s={:.1}",
        steady.len(),
        open_errors.errors,
        opening.elapsed().as_secs_f64()
    );
    if let Some(e) = &open_errors.first_error {
        eprintln!("load: soak: first open error: {e}");
    }
    let period = Duration::from_secs(run.message_every.max(1));
    let steady_tasks: Vec<_> = steady
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            // Spread the chats' messages evenly over the period.
            let offset = period.mul_f64(i as f64 / run.count as f64);
            tokio::spawn(steady_chat(ws, offset, period, deadline, counters.clone()))
        })
        .collect();

    // Token-API clients.
    let mut refreshing = Vec::new();
    for i in 0..run.refreshing_clients {
        refreshing.push(tokio::spawn(refreshing_client(
            run.clone(),
            deadline,
            counters.clone(),
            i,
        )));
    }

    // Trickles stop starting early enough for their last case to end in time.
    let trickle_end = deadline
        .checked_sub(Duration::from_secs(run.idle_timeout) + EXPIRY_LATE_SLACK)
        .unwrap_or(started);
    let logouts = tokio::spawn(trickle(run.clone(), trickle_end, logout_case));
    let expiries = tokio::spawn(trickle(run.clone(), trickle_end, expiry_case));
    let sampler = tokio::spawn(sample(run.clone(), deadline));

    for task in steady_tasks {
        task.await.context("a steady chat panicked")?;
    }
    for task in refreshing {
        task.await.context("a token-API client panicked")?;
    }
    let logouts = logouts.await.context("the logout trickle panicked")?;
    let expiries = expiries.await.context("the expiry trickle panicked")?;
    let samples = sampler.await.context("the sampler panicked")?;

    let c = &counters;
    println!(
        "soak steady chats={} dropped={} messages={} echoes={} echo_missing={} closed_answered={} close_unanswered={}",
        run.count - open_errors.errors,
        c.steady_dropped.load(Relaxed),
        c.messages.load(Relaxed),
        c.echoes.load(Relaxed),
        c.echo_missing.load(Relaxed),
        c.steady_closed_answered.load(Relaxed),
        c.steady_close_unanswered.load(Relaxed),
    );
    report_trickle("logout", &logouts);
    report_trickle("expiry", &expiries);
    println!(
        "soak refresh clients={} refreshes={} errors={} dropped={}",
        run.refreshing_clients,
        c.refreshes.load(Relaxed),
        c.refresh_errors.load(Relaxed),
        c.refreshing_dropped.load(Relaxed),
    );
    for s in &samples {
        println!(
            "sample t_s={} rss_kib={} fds={} live={}",
            s.at_s, s.rss_kib, s.fds, s.live
        );
    }
    Ok(())
}

fn chat_url(run: &SoakRun, deployment: &str) -> Result<Url> {
    let mut url = run.url.join(&run.chat_path)?;
    url.set_scheme("ws")
        .map_err(|()| anyhow::anyhow!("cannot make a ws:// URL of {}", run.url))?;
    url.query_pairs_mut()
        .append_pair("deploymentId", deployment);
    Ok(url)
}

/// A steady chat: a message every `period` (after `offset`), each echoed
/// within the I/O timeout; closed by the client at `deadline`. Anything
/// else ending it counts as dropped.
async fn steady_chat(
    mut ws: Ws,
    offset: Duration,
    period: Duration,
    deadline: Instant,
    counters: Arc<Counters>,
) {
    let mut next = Instant::now() + offset;
    let mut sent = 0u64;
    loop {
        let wake = next.min(deadline);
        // Read (the backend's greeting, stray frames) while waiting.
        let ended = tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => false,
            message = ws.next() => !matches!(message, Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_) | Message::Pong(_)))),
        };
        if ended {
            bump(&counters.steady_dropped);
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        if Instant::now() < next {
            continue;
        }
        next += period;
        sent += 1;
        let text = format!("soak {sent}");
        bump(&counters.messages);
        if ws.send(Message::Text(text.clone().into())).await.is_err() {
            bump(&counters.steady_dropped);
            return;
        }
        match timeout(IO_TIMEOUT, echo_of(&mut ws, &text)).await {
            Ok(true) => bump(&counters.echoes),
            Ok(false) => {
                bump(&counters.steady_dropped);
                return;
            }
            Err(_) => bump(&counters.echo_missing),
        }
    }
    match close(ws).await {
        Ok(true) => bump(&counters.steady_closed_answered),
        Ok(false) => bump(&counters.steady_close_unanswered),
        Err(_) => bump(&counters.steady_dropped),
    }
}

/// Reads until the backend's echo of `text`; false if the socket ended.
async fn echo_of(ws: &mut Ws, text: &str) -> bool {
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Text(got)) if got.as_str().contains(text) => return true,
            Ok(Message::Close(_)) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    false
}

/// A token-API client: signs in at the provider, exchanges the code,
/// opens a socket with its messenger token and refreshes (rotating) every
/// third of the idle timeout until `deadline`; its socket must stay open.
async fn refreshing_client(run: Arc<SoakRun>, deadline: Instant, counters: Arc<Counters>, i: u64) {
    let outcome = async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(IO_TIMEOUT)
            .build()?;
        let site = TokenApiRun {
            url: run.url.clone(),
            admin: run.admin.clone(),
            provider: run.provider.clone(),
            deployment: run.short_deployment.clone(),
            redirect_uri: run.redirect_uri.clone(),
            count: 1,
            jwt_file: None,
            user: if i % 2 == 0 { "carol" } else { "bob" }.into(),
        };
        let code = site_login(&client, &site).await?;
        let body = serde_json::json!({
            "deploymentId": run.short_deployment,
            "oauth": {
                "code": code.code,
                "redirectUri": run.redirect_uri.as_str(),
                "codeVerifier": code.verifier,
                "nonce": code.nonce,
                "iss": code.iss,
            }
        });
        let mut tally = Tally::default();
        let mut answer = token_call(&client, run.url.join("/.auth/token")?, &body, &mut tally)
            .await
            .with_context(|| {
                format!(
                    "the exchange failed: {}",
                    tally.first_error.as_deref().unwrap_or("?")
                )
            })?;
        let jwt = answer["jwt"].as_str().context("no jwt")?.to_string();
        let target = WsTarget::new(
            chat_url(&run, &run.short_deployment)?,
            Some(run.origin.clone()),
            &[format!("Authorization: Bearer {jwt}")],
        )
        .await?;
        let mut ws = timeout(IO_TIMEOUT, target.open())
            .await
            .context("handshake timed out")??;
        let every = Duration::from_secs((run.idle_timeout / 3).max(1));
        let refresh_url = run.url.join("/.auth/token/refresh")?;
        let mut next = Instant::now() + every;
        loop {
            let wake = next.min(deadline);
            let ended = tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => false,
                message = ws.next() => !matches!(message, Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_) | Message::Pong(_)))),
            };
            if ended {
                bump(&counters.refreshing_dropped);
                return anyhow::Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            if Instant::now() < next {
                continue;
            }
            next += every;
            let body = serde_json::json!({
                "deploymentId": run.short_deployment,
                "refreshToken": answer["refreshToken"].as_str().context("no refreshToken")?,
            });
            let mut tally = Tally::default();
            match token_call(&client, refresh_url.clone(), &body, &mut tally).await {
                Some(next_answer) => {
                    bump(&counters.refreshes);
                    answer = next_answer;
                }
                None => {
                    bump(&counters.refresh_errors);
                    if let Some(e) = tally.first_error {
                        eprintln!("load: soak: refresh failed: {e}");
                    }
                }
            }
        }
        let _ = close(ws).await;
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        bump(&counters.refreshing_dropped);
        eprintln!("load: soak: token-API client {i}: {e:#}");
    }
}

/// Starts `case` every `trickle_every` seconds until `end`; what each
/// ended as, with its latency (logouts) or lifetime (expiries).
async fn trickle<F, Fut>(run: Arc<SoakRun>, end: Instant, case: F) -> Vec<(Outcome, Duration)>
where
    F: Fn(Arc<SoakRun>) -> Fut,
    Fut: std::future::Future<Output = (Outcome, Duration)> + Send + 'static,
{
    let mut cases = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(run.trickle_every.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        cases.push(tokio::spawn(case(run.clone())));
    }
    let mut outcomes = Vec::with_capacity(cases.len());
    for case in cases {
        outcomes.push(case.await.unwrap_or((Outcome::Error, Duration::ZERO)));
    }
    outcomes
}

/// One browser login of bob, name and cookie.
async fn login_cookie(run: &SoakRun, deployment: &str, user: &str) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cookie");
    login(run.url.clone(), deployment, &path, user).await?;
    Ok(std::fs::read_to_string(&path)?.trim().to_string())
}

/// Log in, open a socket, chat once, log out: the socket must close with
/// 4002 within `LOGOUT_CLOSE_BOUND` of the logout request.
async fn logout_case(run: Arc<SoakRun>) -> (Outcome, Duration) {
    let case = async {
        let cookie = login_cookie(&run, &run.steady_deployment, "bob").await?;
        let target = WsTarget::new(
            chat_url(&run, &run.steady_deployment)?,
            Some(run.origin.clone()),
            &[format!("Cookie: {cookie}")],
        )
        .await?;
        let mut ws = timeout(IO_TIMEOUT, target.open())
            .await
            .context("handshake timed out")??;
        ws.send(Message::Text("before logout".into())).await?;
        ensure!(
            timeout(IO_TIMEOUT, echo_of(&mut ws, "before logout"))
                .await
                .unwrap_or(false),
            "no echo before the logout"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(IO_TIMEOUT)
            .build()?;
        let origin = run.url.origin().ascii_serialization();
        let started = Instant::now();
        let logout = client
            .post(run.url.join("/.auth/logout")?)
            .header("origin", origin)
            .header("cookie", &cookie)
            .send();
        let (closed, answer) = tokio::join!(close_frame(ws, started), logout);
        ensure!(
            answer?.status() == 302,
            "the logout was not answered with 302"
        );
        Ok(closed)
    };
    match case.await {
        Ok(Some((4002, took))) if took <= LOGOUT_CLOSE_BOUND => (Outcome::OnTime, took),
        Ok(Some((4002, took))) => (Outcome::Late, took),
        Ok(Some((code, took))) => (Outcome::OtherCode(code), took),
        Ok(None) => (Outcome::NotClosed, Duration::ZERO),
        Err(e) => {
            eprintln!("load: soak: logout case: {e:#}");
            (Outcome::Error, Duration::ZERO)
        }
    }
}

/// Log in on the short deployment, open a socket and stay silent: it must
/// close with 4001 about `idle_timeout` after the login.
async fn expiry_case(run: Arc<SoakRun>) -> (Outcome, Duration) {
    let idle = Duration::from_secs(run.idle_timeout);
    let case = async {
        let logged_in = Instant::now();
        let cookie = login_cookie(&run, &run.short_deployment, "carol").await?;
        let target = WsTarget::new(
            chat_url(&run, &run.short_deployment)?,
            Some(run.origin.clone()),
            &[format!("Cookie: {cookie}")],
        )
        .await?;
        let ws = timeout(IO_TIMEOUT, target.open())
            .await
            .context("handshake timed out")??;
        let wait = idle + EXPIRY_LATE_SLACK + IO_TIMEOUT;
        anyhow::Ok(close_frame_within(ws, logged_in, wait).await)
    };
    match case.await {
        Ok(Some((4001, lived))) if lived + EXPIRY_EARLY_SLACK < idle => (Outcome::Early, lived),
        Ok(Some((4001, lived))) if lived > idle + EXPIRY_LATE_SLACK => (Outcome::Late, lived),
        Ok(Some((4001, lived))) => (Outcome::OnTime, lived),
        Ok(Some((code, lived))) => (Outcome::OtherCode(code), lived),
        Ok(None) => (Outcome::NotClosed, Duration::ZERO),
        Err(e) => {
            eprintln!("load: soak: expiry case: {e:#}");
            (Outcome::Error, Duration::ZERO)
        }
    }
}

fn report_trickle(kind: &str, outcomes: &[(Outcome, Duration)]) {
    let mut by_outcome = std::collections::BTreeMap::<Outcome, usize>::new();
    for (outcome, _) in outcomes {
        *by_outcome.entry(*outcome).or_default() += 1;
    }
    let mut closes_ms: Vec<u32> = outcomes
        .iter()
        .filter(|(o, _)| matches!(o, Outcome::OnTime | Outcome::Late | Outcome::Early))
        .map(|(_, d)| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
        .collect();
    closes_ms.sort_unstable();
    let counts: Vec<String> = by_outcome
        .iter()
        .map(|(o, n)| format!("{}={n}", o.label()))
        .collect();
    println!(
        "soak {kind} cases={} {} p50_ms={} p99_ms={} min_ms={} max_ms={}",
        outcomes.len(),
        counts.join(" "),
        percentile(&closes_ms, 0.5),
        percentile(&closes_ms, 0.99),
        closes_ms.first().copied().unwrap_or(0),
        closes_ms.last().copied().unwrap_or(0),
    );
}

struct Sample {
    at_s: u64,
    rss_kib: u64,
    fds: usize,
    live: i64,
}

async fn sample(run: Arc<SoakRun>, deadline: Instant) -> Vec<Sample> {
    let started = Instant::now();
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(run.sample_every.max(1)));
    loop {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let live = async {
            let text = client
                .get(run.admin.join("/metrics").ok()?)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            Some(
                text.lines()
                    .filter(|l| l.starts_with("portcullis_active_connections{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as i64,
            )
        }
        .await
        .unwrap_or(-1);
        samples.push(Sample {
            at_s: started.elapsed().as_secs(),
            rss_kib: rss_kib(run.pid).unwrap_or(0),
            fds: std::fs::read_dir(format!("/proc/{}/fd", run.pid)).map_or(0, |d| d.count()),
            live,
        });
    }
    samples
}
