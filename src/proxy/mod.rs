//! The proxy pipeline: portcullis's implementation of Pingora's request
//! phases. Each phase method is short and calls plain functions over plain
//! data (`admit`, `route`, `origin`, `headers`, `frames`), which are tested
//! without sockets.
//!
//! ```text
//! request_filter ─┬─ the request's id (X-Request-Id: a trusted proxy's, else new)
//!                 ├─ /.auth/jwks.json ......................... answered here
//!                 ├─ check the target, route → deployment (400/404), inactive (403)
//!                 ├─ asks for an upgrade? a well-formed WebSocket handshake (400/426)
//!                 ├─ Origin allowed? (403; mandatory on WebSocket upgrades)
//!                 ├─ WebSocket upgrade: a slot under the connection ceilings (503)
//!                 ├─ authentication required? credential (header, subprotocol,
//!                 │   opt-in query) → verified token (cache, JWKS) → 401 / 503;
//!                 │   messenger `require` rules → 403
//!                 └─ refusal → one renderer: JSON body, status, metric label
//! upstream_peer .......... the deployment's upstream: round-robin over healthy
//!                          servers, skipping ones that already failed to connect
//! upgraded_tunnel_close .. upgrade? hand Pingora's tunnel loop the signal the
//!                          live-connection registry closes it with
//! upstream_request_filter  strip identity headers (any case, `_` as `-`)
//!                          and routing headers (X-Original-URL, method overrides…),
//!                          add the verified identity and its signed assertion
//!                          (auth disabled: X-Auth-Deployment only), remove
//!                          the credential carriers, set X-Forwarded-* and
//!                          X-Request-Id
//! response_filter ........ 101: never echo a token subprotocol; register the
//!                          live connection
//! response_body_filter ... follow frame boundaries; after a forced close,
//!                          append the close frame
//! logging ................ one log line, metrics, deregistration
//! ```

pub mod credential;
pub mod frames;
pub mod handshake;
pub mod headers;
pub mod origin;
pub mod refusal;
pub mod request_id;
pub mod route;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::Backend;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorSource;

use crate::config::model::BearerConnections;
use crate::connections::{
    ClientSocket, IdleClose, LiveGuard, NewConnection, SessionActivity, TunnelCloser,
};
use crate::endpoints;
use crate::identity::Rendered;
use crate::metrics::NO_DEPLOYMENT;
use crate::policy;
use crate::runtime::{DeploymentRt, IdentityKey, Runtime, State};
use crate::session::cookie::{cookie_pairs, CookiePolicy};
use crate::session::now;
use crate::session::recheck::Rechecker;
use crate::session::store::SessionStore;
use crate::session::{Session as LoginSession, SessionId};
use crate::token::messenger::{self, MessengerClaims};
use crate::token::{CachedToken, TokenError, TokenKind};
use request_id::RequestId;

use credential::{Carrier, Credential};
use frames::FrameTracker;
use refusal::{AuthFailure, Refusal};
use route::Target;

/// Decides whether a request may go upstream, and where. Pure: everything
/// it needs is in the runtime snapshot and the request header.
pub fn admit(runtime: &Runtime, req: &RequestHeader, is_upgrade: bool) -> Result<Target, Refusal> {
    let target = resolve(runtime, req)?;
    check_admission(&target, req, is_upgrade)?;
    Ok(target)
}

/// Which route and deployment the request is for.
pub fn resolve(runtime: &Runtime, req: &RequestHeader) -> Result<Target, Refusal> {
    let checked = route::check_target(req.raw_path(), &runtime.config.limits)?;
    if checked.path == "/.auth" || checked.path.starts_with("/.auth/") {
        // portcullis's own endpoints arrive with authentication.
        return Err(Refusal::NoRoute);
    }
    route::select(runtime, &checked)
}

/// Whether the resolved deployment accepts this request before any
/// credential is looked at: active, and the origin allowed.
pub fn check_admission(
    target: &Target,
    req: &RequestHeader,
    is_upgrade: bool,
) -> Result<(), Refusal> {
    if !target.deployment.is_active() {
        return Err(Refusal::DeploymentInactive);
    }
    handshake::check(req)?;
    let mut origins = req.headers.get_all("origin").iter();
    let origin = origins.next().map(|v| v.as_bytes());
    if origins.next().is_some() {
        return Err(Refusal::OriginNotAllowed);
    }
    origin::check(&target.deployment.config, origin, is_upgrade)
}

/// Who passed authentication, and with which credential.
pub struct Authenticated {
    pub rendered: Arc<Rendered>,
    pub credential: Credential,
    /// The portcullis session's public id, when a session authenticated
    /// (its cookie, or a messenger token naming it).
    pub session: Option<Arc<str>>,
    /// When a live connection it opens closes with 4001 (unix seconds):
    /// its session's maximum lifetime, or a bearer token's `exp`.
    pub closes_at: Option<u64>,
    /// A bearer connection allowed to outlive its token closes after this
    /// many seconds without a client data frame instead.
    pub idle_close_secs: Option<u64>,
    /// The session's idle clock, handed to the live connection if the
    /// request becomes one.
    pub session_idle: Option<SessionIdle>,
    /// The session, when it is due to be re-checked with its provider.
    pub due_for_recheck: Option<Box<LoginSession>>,
}

/// What a live connection needs to keep its session's idle clock.
#[derive(Debug, Clone)]
pub struct SessionIdle {
    pub id: SessionId,
    pub idle_timeout_secs: u64,
    pub last_seen: u64,
}

/// Authenticates a request to a deployment that requires it: finds the
/// credential, verifies the token (cached), applies the messenger's rules.
pub async fn authenticate(
    runtime: &Runtime,
    sessions: &dyn SessionStore,
    target: &Target,
    req: &RequestHeader,
) -> Result<Authenticated, Refusal> {
    let deployment = &target.deployment;
    let Some(provider) = &deployment.provider else {
        // Validation makes an authenticating messenger name a provider.
        return Err(Refusal::ProviderUnavailable);
    };
    // SPEC §4 order: the Authorization header, then the session cookie, then
    // the subprotocol and query carriers (looked for only without a session:
    // a cookie request's query is not parsed again here).
    let from_header = credential::authorization_header(req);
    if !matches!(from_header, Ok(Some(_))) {
        // A cookie whose session the store cannot look up is answered
        // 503, never taken for "no session" (fail closed, and say why).
        if let Some(session) = session_for(runtime, sessions, req, provider.name())
            .await
            .map_err(|_| Refusal::StoreUnavailable)?
        {
            let cookie = Credential {
                token: String::new(),
                carrier: Carrier::Cookie,
            };
            return authenticate_session(runtime, sessions, deployment, session, cookie).await;
        }
    }
    let credential = match from_header {
        Ok(None) => credential::other_carriers(req, deployment.config.access_token_query),
        found => found,
    };
    let credential = match credential {
        Ok(Some(c)) => c,
        Ok(None) => return Err(Refusal::Unauthenticated(AuthFailure::NoCredentials)),
        Err(credential::Malformed) => {
            return Err(Refusal::Unauthenticated(AuthFailure::MalformedCredential))
        }
    };
    // portcullis's own tokens first, unless the token is a provider's
    // already verified (the cheapest question for the commonest case).
    let verified = match runtime.tokens.cached(provider, &credential.token) {
        Some(hit) => hit,
        None => match messenger_token(runtime, &credential.token, deployment) {
            MessengerToken::Claims(claims) => {
                let session = sessions
                    .load_public(&claims.sid, now())
                    .await
                    .map_err(|_| Refusal::StoreUnavailable)?
                    .filter(|s| s.deployment == claims.aud && s.provider == provider.name())
                    .ok_or(Refusal::Unauthenticated(AuthFailure::Token(
                        TokenError::SessionEnded,
                    )))?;
                return authenticate_session(runtime, sessions, deployment, session, credential)
                    .await;
            }
            MessengerToken::Refused(e) => {
                return Err(Refusal::Unauthenticated(AuthFailure::Token(e)))
            }
            MessengerToken::NotOurs => runtime
                .tokens
                .verify_uncached(provider, &credential.token)
                .await
                .map_err(|e| match e {
                    TokenError::ProviderUnavailable => Refusal::ProviderUnavailable,
                    other => Refusal::Unauthenticated(AuthFailure::Token(other)),
                })?,
        },
    };
    if verified.kind == TokenKind::Id {
        // An ID token outlives its session (and travels in URLs as
        // `id_token_hint`): only where the messenger opts in, and never
        // once its session has ended.
        if !deployment.messenger.authentication.accept_id_tokens {
            return Err(Refusal::Unauthenticated(AuthFailure::Token(
                TokenError::IdTokenNotAccepted,
            )));
        }
        if sessions
            .token_ended(&verified.digest())
            .await
            .map_err(|_| Refusal::StoreUnavailable)?
        {
            return Err(Refusal::Unauthenticated(AuthFailure::Token(
                TokenError::SessionEnded,
            )));
        }
    }
    let rendered = bearer_identity(runtime, deployment, &verified)?;
    let bearer_connections = deployment.messenger.authentication.bearer_connections;
    Ok(Authenticated {
        rendered,
        credential,
        session: None,
        closes_at: (bearer_connections == BearerConnections::CloseAtExp)
            .then_some(verified.expires_at),
        idle_close_secs: (bearer_connections == BearerConnections::UntilIdle)
            .then_some(deployment.messenger.session.idle_timeout.as_secs()),
        session_idle: None,
        due_for_recheck: None,
    })
}

/// The identity a verified provider token presents to `deployment`, once
/// the deployment's policy allowed it. The first deployment's is kept with
/// the token in the token cache, so the token's next request there is one
/// lookup; any other's is kept per token and deployment in `identities`.
/// Both caches live with the runtime, and a token's claims never change:
/// a kept identity stands for a policy check that would pass again, until
/// a reload (which may change the policy) starts both caches afresh.
fn bearer_identity(
    runtime: &Runtime,
    deployment: &DeploymentRt,
    verified: &CachedToken<Rendered>,
) -> Result<Arc<Rendered>, Refusal> {
    if let Some(kept) = verified.kept_for(&deployment.label) {
        return Ok(kept.clone());
    }
    policy::authorize(
        &deployment.messenger.authentication.require,
        &verified.claims,
    )
    .map_err(Refusal::Forbidden)?;
    // Sanitized values always make valid headers; fail closed if not.
    let render = || {
        runtime
            .render_identity(
                deployment,
                &verified.claims,
                verified.session_id.as_str().into(),
            )
            .map(Arc::new)
            .map_err(|_| Refusal::Unauthenticated(AuthFailure::Token(TokenError::Malformed)))
    };
    // A free slot (a token's first request, the usual case, or its first
    // since its cache entry was dropped and it was verified again) takes
    // this deployment's identity, and nothing else needs looking up: the
    // token's digest and `identities` are for a token already kept for
    // another deployment. Of two concurrent requests here, both keep the
    // first's, so that they share one assertion.
    let mut rendered = None;
    if !verified.is_kept() {
        let identity = render()?;
        if let Some(kept) = verified.keep_for(deployment.label.clone(), identity.clone()) {
            return Ok(kept.clone());
        }
        // A concurrent request kept another deployment's first: this one
        // is a second deployment's like any other, with its identity
        // already rendered.
        rendered = Some(identity);
    }
    // A second deployment's: rendered once however many of its requests
    // arrive at once.
    let key = (
        IdentityKey::Token(verified.digest()),
        deployment.label.clone(),
    );
    runtime
        .identities
        .try_get_with(key, || rendered.map_or_else(render, Ok))
        .map_err(|refusal| *refusal)
}

/// What a bearer token is, as far as portcullis's own tokens go.
enum MessengerToken {
    /// A valid messenger token for this deployment (its session is checked next).
    Claims(Arc<MessengerClaims>),
    /// Signed by portcullis, but not valid here.
    Refused(TokenError),
    /// Not signed by portcullis: the provider's, or junk.
    NotOurs,
}

/// Recognizes and verifies portcullis's own tokens (cached until `exp`).
fn messenger_token(runtime: &Runtime, token: &str, deployment: &DeploymentRt) -> MessengerToken {
    // A provider's token is told by its header's key id alone, before the
    // lookup below (where it could never be: only tokens under this
    // runtime's own keys are kept there).
    if messenger::kid_is_foreign(token, &runtime.keys) {
        return MessengerToken::NotOurs;
    }
    if let Some(claims) = runtime.messenger_tokens.get(token) {
        if claims.exp <= now() {
            return MessengerToken::Refused(TokenError::Expired);
        }
        if claims.aud != deployment.config.id {
            return MessengerToken::Refused(TokenError::WrongAudience);
        }
        return MessengerToken::Claims(claims);
    }
    match messenger::origin_by_full_header(token, &runtime.keys) {
        messenger::Origin::Foreign => MessengerToken::NotOurs,
        messenger::Origin::OtherOfOurs => MessengerToken::Refused(TokenError::WrongTokenType),
        messenger::Origin::Messenger => {
            match messenger::verify(
                token,
                &runtime.keys,
                &runtime.issuer,
                Some(&deployment.config.id),
            ) {
                Ok(claims) => {
                    let claims = Arc::new(claims);
                    runtime
                        .messenger_tokens
                        .insert(Arc::from(token), claims.clone());
                    MessengerToken::Claims(claims)
                }
                Err(e) => MessengerToken::Refused(e),
            }
        }
    }
}

/// Removes portcullis's own cookies from the upstream `Cookie` header (a
/// backend that saw them could replay them); the site's other cookies pass.
fn strip_own_cookies(req: &mut RequestHeader, policy: &CookiePolicy) -> Result<()> {
    if !cookie_pairs(req).any(|(name, _, _)| policy.is_own_cookie(name)) {
        return Ok(());
    }
    // The site's cookies pass byte for byte, whatever their encoding.
    let mut kept: Vec<u8> = Vec::new();
    for (_, _, pair) in cookie_pairs(req).filter(|(name, _, _)| !policy.is_own_cookie(name)) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    // Every `Cookie` line goes at once (`HeaderMap::remove` takes them all).
    req.remove_header(&http::header::COOKIE);
    if !kept.is_empty() {
        let value = http::HeaderValue::from_bytes(&kept)
            .or_else(|_| Error::e_explain(InvalidHTTPHeader, "rebuilt Cookie header"))?;
        req.insert_header(http::header::COOKIE, value)?;
    }
    Ok(())
}

/// Activity is written to the store at most this often per session.
pub const TOUCH_EVERY_SECS: u64 = 30;

/// The live session the request's cookie names, if it was made with this
/// provider; an error when the store cannot tell.
async fn session_for(
    runtime: &Runtime,
    sessions: &dyn SessionStore,
    req: &RequestHeader,
    provider: &str,
) -> Result<Option<Arc<LoginSession>>, crate::session::store::StoreError> {
    let policy = &runtime.cookie_policy;
    // Names compared as bytes; only the session cookie's value is read as text.
    let Some(id) = cookie_pairs(req)
        .filter(|(name, _, _)| *name == policy.session_name.as_bytes())
        .find_map(|(_, value, _)| std::str::from_utf8(value).ok())
        .and_then(|sealed| runtime.cookies.open(&policy.session_name, sealed))
        .and_then(|bytes| SessionId::from_bytes(&bytes))
    else {
        return Ok(None);
    };
    let session = sessions.load(&id, now()).await?;
    Ok(session.filter(|s| s.provider == provider))
}

async fn authenticate_session(
    runtime: &Runtime,
    sessions: &dyn SessionStore,
    deployment: &Arc<DeploymentRt>,
    session: Arc<LoginSession>,
    credential: Credential,
) -> Result<Authenticated, Refusal> {
    // The rendered identity is cached per session, deployment and claims
    // version (`checked_at` moves whenever a re-check may have changed the
    // claims), and only ever after the policy allowed them: a hit skips
    // both. The cache lives with the runtime, so a reload that changes the
    // policy starts afresh.
    let key = (
        IdentityKey::Session(*session.id.as_bytes(), session.checked_at),
        deployment.label.clone(),
    );
    let rendered = match runtime.identities.get(&key) {
        Some(r) => r,
        None => {
            let claims: Arc<crate::token::Claims> =
                Arc::new(session.claims.clone().into_iter().collect());
            policy::authorize(&deployment.messenger.authentication.require, &claims)
                .map_err(Refusal::Forbidden)?;
            let rendered = runtime
                .render_identity(deployment, &claims, session.id.public_id().into())
                .map(Arc::new)
                .map_err(|_| Refusal::Unauthenticated(AuthFailure::NoCredentials))?;
            runtime.identities.insert(key, rendered.clone());
            rendered
        }
    };
    let now = now();
    let mut last_seen = session.last_seen;
    // Short idle timeouts get more frequent writes, so that what the store
    // holds is never more than a quarter of the timeout behind.
    let touch_every = TOUCH_EVERY_SECS.min(session.idle_timeout_secs / 4).max(1);
    if now >= session.last_seen + touch_every {
        // A store hiccup must not end a session that is still valid.
        if let Ok(Some(touched)) = sessions.touch(&session.id, now).await {
            last_seen = touched.last_seen;
        }
    }
    Ok(Authenticated {
        session: Some(rendered.identity.session.clone()),
        rendered,
        credential,
        closes_at: Some(session.expires_at),
        idle_close_secs: None,
        session_idle: Some(SessionIdle {
            id: session.id.clone(),
            idle_timeout_secs: session.idle_timeout_secs,
            last_seen,
        }),
        due_for_recheck: Rechecker::due(&session, deployment, now)
            .then(|| Box::new(Arc::unwrap_or_clone(session))),
    })
}

/// Whether a refused request is a browser navigation that should be sent to
/// log in rather than answered 401: a top-level GET (Sec-Fetch-Mode
/// navigate, or without fetch metadata a GET accepting HTML), never a
/// WebSocket handshake or an XHR/fetch call.
pub fn is_browser_navigation(req: &RequestHeader, is_upgrade: bool) -> bool {
    if is_upgrade || req.method != http::Method::GET {
        return false;
    }
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    match header("sec-fetch-mode") {
        Some(mode) => mode == "navigate",
        None => header("accept").is_some_and(|a| a.contains("text/html")),
    }
}

/// Per-request state, created empty for every request.
#[derive(Default)]
pub struct RequestCtx {
    runtime: Option<Arc<Runtime>>,
    started: Option<Instant>,
    is_upgrade: bool,
    target: Option<Target>,
    refusal: Option<Refusal>,
    /// Servers that failed to connect for this request, skipped on retry.
    tried: Vec<Backend>,
    /// How an upgrade request's tunnel is closed once it is a live
    /// connection; created with the first upstream attempt.
    tunnel: Option<TunnelCloser>,
    live: Option<LiveGuard>,
    frames: FrameTracker,
    /// Frames of the client→upstream stream, whose data frames are activity.
    client_frames: FrameTracker,
    /// Time to the response header.
    response_after: Option<Duration>,
    /// The close code portcullis appended for the client, if any.
    close_sent: Option<u16>,
    /// Whether this upgrade request's outcome was counted already.
    handshake_counted: bool,
    /// An upgrade request's place under the connection ceilings, held until
    /// the request (and so its live connection) ends.
    slot: Option<crate::capacity::Slot>,
    /// Set once the request is authenticated.
    auth: Option<Authenticated>,
    /// Assigned first thing in `request_filter`.
    request_id: Option<RequestId>,
}

impl RequestCtx {
    /// The request's id; one is made if the request never reached
    /// `request_filter` (a failure before it still gets an id to quote).
    fn request_id(&mut self) -> &RequestId {
        self.request_id.get_or_insert_with(RequestId::generate)
    }

    /// The upstream server of the last attempt, for log lines (formatted
    /// only when one is written).
    fn upstream_server(&self) -> Option<String> {
        self.tried.last().map(|backend| backend.addr.to_string())
    }

    fn deployment_label(&self) -> &str {
        self.target
            .as_ref()
            .map(|t| t.deployment.label.as_ref())
            .unwrap_or(NO_DEPLOYMENT)
    }
}

pub struct Portcullis {
    state: Arc<State>,
}

impl Portcullis {
    pub fn new(state: Arc<State>) -> Self {
        Portcullis { state }
    }

    /// Counts a WebSocket handshake's outcome once, as soon as it is known:
    /// an upgraded connection may live for hours before its request ends.
    fn count_handshake(&self, ctx: &mut RequestCtx, outcome: &str) {
        if ctx.is_upgrade && !ctx.handshake_counted {
            ctx.handshake_counted = true;
            self.state
                .metrics
                .handshakes
                .with_label_values(&[ctx.deployment_label(), outcome])
                .inc();
        }
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: Refusal,
    ) -> Result<()> {
        ctx.refusal = Some(refusal);
        self.count_handshake(ctx, refusal.outcome());
        if let Some(location) = self.login_redirect(session, ctx, refusal) {
            let mut header = ResponseHeader::build(302, Some(3))?;
            header.insert_header("location", location)?;
            header.insert_header("cache-control", "no-store")?;
            header.insert_header("content-length", "0")?;
            header.insert_header(request_id::HEADER, ctx.request_id().header_value())?;
            return self.write_own(session, header, Bytes::new()).await;
        }
        let (mut header, body) = refusal.render();
        let body = request_id::stamp(&mut header, body, ctx.request_id());
        self.write_own(session, header, body).await
    }

    /// Writes one of portcullis's own responses (endpoints, refusals,
    /// error pages), with the listener's `Strict-Transport-Security` when
    /// it has one and the connection is TLS.
    async fn write_own(
        &self,
        session: &mut Session,
        mut header: ResponseHeader,
        body: Bytes,
    ) -> Result<()> {
        let local = session
            .as_downstream()
            .server_addr()
            .and_then(|a| a.as_inet())
            .copied();
        let tls = client_uses_tls(session.digest());
        if let Some(value) =
            crate::tls::hsts_header(&self.state.runtime().config.listeners, local, tls)
        {
            header.insert_header("strict-transport-security", value)?;
        }
        session
            .as_downstream_mut()
            .write_error_response(header, body)
            .await
    }

    /// A browser navigation without credentials is sent to log in, when
    /// login is configured; everything else gets the 401.
    fn login_redirect(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        refusal: Refusal,
    ) -> Option<String> {
        let runtime = ctx.runtime.as_ref()?;
        let target = ctx.target.as_ref()?;
        let wanted = refusal == Refusal::Unauthenticated(AuthFailure::NoCredentials)
            && runtime.config.public_url.is_some()
            && is_browser_navigation(session.req_header(), ctx.is_upgrade);
        if !wanted {
            return None;
        }
        let back = std::str::from_utf8(session.req_header().raw_path()).ok()?;
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("deployment", &target.deployment.config.id)
            .append_pair("rd", back)
            .finish();
        Some(format!("/.auth/login?{query}"))
    }
}

impl Portcullis {
    /// A WebSocket handshake takes a slot under the process's and its
    /// deployment's connection ceilings, or is refused (503) and counted.
    /// Plain HTTP requests pass: they hold their descriptors only briefly,
    /// out of the reserve the ceiling leaves.
    fn take_connection_slot(
        &self,
        runtime: &Runtime,
        target: &Target,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), Refusal> {
        if !ctx.is_upgrade {
            return Ok(());
        }
        let deployment = &target.deployment;
        match self.state.slots.try_take(
            &deployment.label,
            runtime.connection_ceiling.max_connections,
            deployment.config.max_connections,
        ) {
            Ok(slot) => {
                ctx.slot = Some(slot);
                Ok(())
            }
            Err(limit) => {
                self.state
                    .metrics
                    .connections_refused
                    .with_label_values(&[&deployment.label, limit.label()])
                    .inc();
                Err(Refusal::ConnectionLimit(limit))
            }
        }
    }

    /// Authenticates, records the decision (metrics, timing) and keeps the identity.
    async fn authenticate_request(
        &self,
        runtime: &Runtime,
        target: &Target,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), Refusal> {
        let started = Instant::now();
        let result = authenticate(runtime, self.state.sessions.as_ref(), target, req).await;
        let carrier = match &result {
            Ok(a) => Some(a.credential.carrier),
            Err(Refusal::Unauthenticated(AuthFailure::NoCredentials)) => None,
            Err(_) => credential::extract(req, target.deployment.config.access_token_query)
                .ok()
                .flatten()
                .map(|c| c.carrier),
        };
        // The metric slot and `method` label; "none" sits after the carriers.
        let (slot, method) = carrier.map_or((Carrier::COUNT, "none"), |c| (c.slot(), c.label()));
        let metrics = &self.state.metrics;
        match &result {
            Ok(_) => target
                .deployment
                .allowed_counter(slot, method, metrics)
                .inc(),
            Err(refusal) => metrics
                .auth_decisions
                .with_label_values(&[&*target.deployment.label, method, refusal.outcome()])
                .inc(),
        }
        metrics
            .auth_duration_of(slot, method)
            .observe(started.elapsed().as_secs_f64());
        let mut authenticated = result?;
        if let Some(session) = authenticated.due_for_recheck.take() {
            // The request goes on with the session as it is; the re-check
            // runs beside it and ends the session if the provider says so.
            self.state
                .rechecks
                .spawn(self.state.clone(), *session, target.deployment.clone());
        }
        ctx.auth = Some(authenticated);
        Ok(())
    }
}

impl Portcullis {
    /// Answers one of portcullis's own endpoints: rate limits first, then
    /// the body (bounded, and only where the endpoint takes one).
    async fn answer_endpoint(
        &self,
        session: &mut Session,
        runtime: &Runtime,
        endpoint: &endpoints::Endpoint,
    ) -> endpoints::Response {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let client = headers::client_address(
            session.req_header(),
            peer,
            &runtime.config.forwarding.trusted_proxies,
        );
        if endpoint.rate_limited() {
            let deployment = match endpoint {
                endpoints::Endpoint::Login => {
                    endpoints::query_param(session.req_header(), "deployment")
                        .filter(|d| runtime.deployment(d).is_some())
                }
                _ => None,
            };
            if let Err(limited) = runtime.limiters.check(client, deployment.as_deref()) {
                // The body is left unread: this connection is not reused.
                session.set_keepalive(None);
                return self.rate_limited(endpoint, limited);
            }
        }
        let body = match read_body(session, endpoint.body_limit()).await {
            Ok(body) => body,
            Err((status, code, description)) => {
                session.set_keepalive(None);
                return endpoints::error(status, code, description);
            }
        };
        let request = endpoints::Request {
            header: session.req_header(),
            body,
            client,
        };
        endpoints::answer(&self.state, runtime, endpoint, &request).await
    }

    fn rate_limited(
        &self,
        endpoint: &endpoints::Endpoint,
        limited: crate::ratelimit::Limited,
    ) -> endpoints::Response {
        let label = match endpoint {
            endpoints::Endpoint::Login => "login",
            endpoints::Endpoint::Callback => "callback",
            _ => "token_api",
        };
        self.state
            .metrics
            .rate_limited
            .with_label_values(&[label, limited.scope.label()])
            .inc();
        tracing::warn!(
            endpoint = label,
            scope = limited.scope.label(),
            "rate limited"
        );
        endpoints::error_retry_after(
            429,
            "rate_limited",
            &limited.description(),
            limited.retry_after,
        )
    }
}

/// How long a client may take to send an endpoint's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a WebSocket client without a credential may send nothing
/// before its tunnel is cut (no close frame: Pingora's read timeout).
pub const ANONYMOUS_CLIENT_SILENCE: Duration = Duration::from_secs(30 * 60);

/// The downstream read timeout of an upgraded connection. Pingora's own
/// default (60 s) would cut every chat whose user reads without typing for
/// a minute, without a close frame. A connection whose credential gives it
/// an end (a session's idle timeout and lifetime, a bearer token's `exp`,
/// an idle close) is closed by portcullis with 4001/4002: no timeout. One
/// without (an auth-disabled deployment) ends after
/// `ANONYMOUS_CLIENT_SILENCE` of client silence.
pub fn client_silence_limit(ends_with_credential: bool) -> Option<Duration> {
    (!ends_with_credential).then_some(ANONYMOUS_CLIENT_SILENCE)
}

/// Reads the request body up to `limit` bytes (none when `limit` is 0):
/// a declared or actual size over the limit, a slow or broken body is a
/// clear error, never a partial read.
async fn read_body(
    session: &mut Session,
    limit: usize,
) -> std::result::Result<Bytes, (u16, &'static str, &'static str)> {
    if limit == 0 {
        return Ok(Bytes::new());
    }
    let too_large = (
        413,
        "body_too_large",
        "the request body is larger than allowed",
    );
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    let mut body = BytesMut::new();
    let read = async {
        while let Some(chunk) = session.read_request_body().await.map_err(|_| ())? {
            if body.len() + chunk.len() > limit {
                return Ok(Err(too_large));
            }
            body.extend_from_slice(&chunk);
        }
        Ok::<_, ()>(Ok(()))
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(Ok(()))) => Ok(body.freeze()),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(())) => Err((400, "invalid_request", "the request body could not be read")),
        Err(_) => Err((408, "request_timeout", "the request body took too long")),
    }
}

/// Whether connecting failed in the TLS handshake (an untrusted or
/// misnamed certificate among other causes), not in reaching the server.
fn is_tls_handshake_failure(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError
    )
}

/// Whether the request's immediate peer is one of `forwarding.trusted_proxies`,
/// whose `X-Forwarded-For` and `X-Request-Id` are believed.
fn from_trusted_proxy(session: &Session, runtime: &Runtime) -> bool {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .is_some_and(|ip| {
            runtime
                .config
                .forwarding
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&ip))
        })
}

fn client_uses_tls(digest: Option<&Digest>) -> bool {
    digest.is_some_and(|d| d.ssl_digest.is_some())
}

/// The request header as it goes upstream: what the client may not say
/// (identity headers, `forwarding.strip_headers`, portcullis's own cookies,
/// the credential's carriers unless `forward_token`) removed, then what
/// portcullis vouches for added: the request id, the identity (or, for a
/// deployment without authentication, only the deployment), and
/// `X-Forwarded-*` from what it saw of the client.
pub fn prepare_upstream_request(
    upstream_request: &mut RequestHeader,
    runtime: &Runtime,
    target: Option<&Target>,
    auth: Option<&Authenticated>,
    id: &RequestId,
    client: headers::ClientInfo,
    from_trusted_proxy: bool,
) -> Result<()> {
    // Read before the strips: an identity prefix or a `strip_headers`
    // entry that matches `X-Forwarded-*` (a prefix of `X-`, say) removes
    // what the client sent, and a trusted proxy's chain must survive that.
    let fwd = headers::forwarded(upstream_request, client, from_trusted_proxy);
    headers::strip_identity_headers(upstream_request, &runtime.strip);
    headers::strip_listed_headers(upstream_request, &runtime.strip.listed);
    // Room for what is added below to the header maps (request id,
    // assertion, `X-Forwarded-*`), so that each map's index table is
    // rebuilt at most once. The identity headers go beside the maps, their
    // lines written once per identity (`set_prewritten_headers`).
    let assertion = auth.is_some() && target.is_some_and(|t| t.deployment.messenger.assertion);
    upstream_request.reserve_headers(ADDED_HEADERS + usize::from(assertion))?;
    // After the strips (an identity prefix such as `X-` would match it):
    // whatever the client sent is replaced by the id this request was given.
    headers::insert_static(
        upstream_request,
        &request_id::HEADER_NAME,
        id.header_value(),
    )?;
    strip_own_cookies(upstream_request, &runtime.cookie_policy)?;
    match (auth, target) {
        (Some(auth), Some(target)) => {
            add_identity(runtime, target, auth, upstream_request)?;
            credential::strip_carriers(
                upstream_request,
                Some(&auth.credential),
                target.deployment.config.forward_token,
            )
            .or_else(|credential::RewriteFailed| {
                Error::e_explain(InternalError, "could not remove the credential carriers")
            })?;
        }
        // A deployment without authentication still tells the backend
        // which deployment admitted the request (SPEC §4), and nothing else.
        (None, Some(target)) => {
            upstream_request.set_prewritten_headers(target.deployment.deployment_header.clone())
        }
        (_, None) => {}
    }
    headers::apply_forwarded(upstream_request, &fwd);
    Ok(())
}

/// Headers `prepare_upstream_request` adds besides the identity's: the
/// request id and up to three `X-Forwarded-*`.
const ADDED_HEADERS: usize = 4;

/// The verified identity as headers, plus the signed assertion when the
/// messenger asks for one.
fn add_identity(
    runtime: &Runtime,
    target: &Target,
    auth: &Authenticated,
    req: &mut RequestHeader,
) -> Result<()> {
    let messenger = &target.deployment.messenger;
    // Every name here starts with the identity prefix, so the client's
    // copies are gone (`strip_identity_headers`), and none is one that
    // portcullis adds itself (`check` refuses those).
    req.set_prewritten_headers(auth.rendered.headers.clone());
    if messenger.assertion {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let assertion = auth
            .rendered
            .assertion(
                now,
                &runtime.keys.current,
                &runtime.issuer,
                &target.deployment.upstream.config.name,
            )
            .or_else(|e| Error::e_explain(InternalError, e))?;
        target
            .deployment
            .identity_names
            .assertion
            .insert_into(req, assertion)?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Portcullis {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    /// Decides the request's fate before anything reaches an upstream:
    /// route, deployment, origin, authentication. A refusal is answered here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.started = Some(Instant::now());
        let runtime = self.state.runtime();
        ctx.request_id = Some(RequestId::assign(
            session.req_header(),
            from_trusted_proxy(session, &runtime),
        ));
        ctx.is_upgrade = session.is_upgrade_req();
        if let Some(endpoint) = endpoints::Endpoint::of(&runtime, session.req_header()) {
            let (mut header, body) = self.answer_endpoint(session, &runtime, &endpoint).await;
            let body = request_id::stamp(&mut header, body, ctx.request_id());
            ctx.runtime = Some(runtime);
            self.write_own(session, header, body).await?;
            return Ok(true);
        }
        // Draining: upgrades that would pass are sent to another instance.
        let drain = match ctx.is_upgrade && self.state.is_draining() {
            true => Err(Refusal::Draining),
            false => Ok(()),
        };
        let admitted = resolve(&runtime, session.req_header()).and_then(|target| {
            let admitted =
                check_admission(&target, session.req_header(), ctx.is_upgrade).and(drain);
            // Kept even when refused, so metrics and logs name the deployment.
            ctx.target = Some(target);
            admitted
        });
        let decision = match (admitted, &ctx.target) {
            (Ok(()), Some(target)) => {
                let target = target.clone();
                match self.take_connection_slot(&runtime, &target, ctx) {
                    Ok(()) if target.deployment.requires_authentication() => {
                        self.authenticate_request(&runtime, &target, session.req_header(), ctx)
                            .await
                    }
                    other => other,
                }
            }
            (result, _) => result,
        };
        ctx.runtime = Some(runtime);
        match decision {
            Ok(()) => {
                if ctx.is_upgrade {
                    ctx.tunnel = Some(TunnelCloser::default());
                }
                Ok(false)
            }
            Err(refusal) => {
                self.refuse(session, ctx, refusal).await?;
                Ok(true)
            }
        }
    }

    /// Picks a healthy server of the deployment's upstream, round-robin,
    /// skipping servers that already failed to connect for this request.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(target) = &ctx.target else {
            return Error::e_explain(InternalError, "upstream_peer without an admitted target");
        };
        let upstream = &target.deployment.upstream;
        let tried = &ctx.tried;
        let backend = upstream
            .balancer
            .select_with(b"", 256, |b, healthy| healthy && !tried.contains(b));
        let Some(backend) = backend else {
            ctx.refusal = Some(if ctx.tried.is_empty() {
                Refusal::NoHealthyUpstream
            } else {
                Refusal::UpstreamFailed
            });
            return Error::e_explain(HTTPStatus(503), "no healthy upstream server");
        };
        // Room for this one only: retries are rare, and the request (a tunnel's for its whole
        // life) would otherwise hold a first allocation of four backends.
        ctx.tried.reserve_exact(1);
        ctx.tried.push(backend.clone());
        let config = &upstream.config;
        let mut peer = HttpPeer::new(&backend, config.tls, config.sni.clone());
        peer.options.connection_timeout = Some(config.connect_timeout);
        // Verification stays on (Pingora's default): the certificate must
        // chain to these roots (else the system's) and name `sni`.
        peer.options.ca = upstream.roots.clone();
        peer.group_key = upstream.roots_key;
        // Bounds an upstream that accepts and then never answers (or stalls
        // mid-answer); the vendored pingora-proxy lifts it once a tunnel is
        // upgraded (vendor/pingora-proxy/PATCHED.md §3).
        peer.options.read_timeout = Some(config.read_timeout);
        Ok(Box::new(peer))
    }

    /// A server that refuses the connection is skipped and the next one
    /// tried, while untried servers remain.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(target) = &ctx.target {
            let upstream = &target.deployment.upstream;
            let tls_refused = is_tls_handshake_failure(&e);
            if tls_refused {
                // The server's certificate did not chain to the trusted
                // roots, did not name `sni`, or the handshake failed
                // otherwise: the request never reaches it (no bypass).
                tracing::warn!(
                    upstream = %upstream.config.name,
                    server = ctx.upstream_server().as_deref().unwrap_or("-"),
                    sni = %upstream.config.sni,
                    error = %e,
                    "upstream TLS handshake failed: its certificate is not trusted or not issued for the SNI name"
                );
            }
            self.state
                .metrics
                .upstream_errors
                .with_label_values(&[
                    upstream.config.name.as_str(),
                    if tls_refused { "tls" } else { "connect" },
                ])
                .inc();
            let servers = upstream.balancer.backends().get_backend().len();
            if ctx.tried.len() < servers {
                e.set_retry(true);
            }
        }
        e
    }

    /// An upgrade request's tunnel gets a close signal, which the live
    /// connection it may become is closed with (registered on its 101).
    fn upgraded_tunnel_close(
        &self,
        _session: &Session,
        ctx: &Self::CTX,
    ) -> Option<futures_util::future::BoxFuture<'static, Duration>> {
        ctx.tunnel.as_ref().map(TunnelCloser::signal)
    }

    /// Removes every identity header the client sent and the headers
    /// backends trust for routing (`forwarding.strip_headers`), adds the verified
    /// identity (or, on a deployment without authentication, only
    /// `X-Auth-Deployment`), and sets `X-Forwarded-*` from what portcullis
    /// saw itself.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let id = ctx.request_id().clone();
        let Some(runtime) = &ctx.runtime else {
            return Error::e_explain(InternalError, "no runtime snapshot");
        };
        let client = headers::ClientInfo {
            peer: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            tls: client_uses_tls(session.digest()),
        };
        let trusted = from_trusted_proxy(session, runtime);
        prepare_upstream_request(
            upstream_request,
            runtime,
            ctx.target.as_ref(),
            ctx.auth.as_ref(),
            &id,
            client,
            trusted,
        )
    }

    /// On a 101, the request became a live WebSocket: register it so it can
    /// be closed on demand. A connection portcullis could not close later is
    /// not allowed to open.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        ctx.response_after = ctx.started.map(|s| s.elapsed());
        request_id::set_on_response(upstream_response, ctx.request_id())?;
        if !ctx.is_upgrade {
            return Ok(());
        }
        let echoes_token = upstream_response
            .headers
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .is_some_and(credential::is_token_subprotocol);
        if echoes_token {
            upstream_response.remove_header(&http::header::SEC_WEBSOCKET_PROTOCOL);
        }
        if upstream_response.status.as_u16() != 101 {
            self.count_handshake(ctx, "upstream_declined");
            return Ok(());
        }
        self.count_handshake(ctx, "upgraded");
        let (Some(target), Some(tunnel)) = (&ctx.target, ctx.tunnel.clone()) else {
            return Error::e_explain(InternalError, "upgrade without a tunnel close signal");
        };
        // Only now, with the 101: until the upgrade is done the request is
        // an ordinary one and keeps Pingora's read timeout.
        let ends_with_credential = ctx.auth.as_ref().is_some_and(|a| {
            a.session.is_some() || a.closes_at.is_some() || a.idle_close_secs.is_some()
        });
        session.set_read_timeout(client_silence_limit(ends_with_credential));
        let client = session
            .as_downstream()
            .stream()
            .and_then(|s| ClientSocket::identify(s.id()));
        ctx.live = Some(
            self.state.connections.register(NewConnection {
                deployment: target.deployment.label.clone(),
                route: target.route.label.clone(),
                session: ctx.auth.as_ref().and_then(|a| a.session.clone()),
                expires_at: ctx.auth.as_ref().and_then(|a| a.closes_at),
                idle_close: ctx
                    .auth
                    .as_ref()
                    .and_then(|a| a.idle_close_secs)
                    .map(|secs| IdleClose::new(secs, now())),
                activity: ctx
                    .auth
                    .as_ref()
                    .and_then(|a| a.session_idle.clone())
                    .map(|i| SessionActivity::new(i.id, i.idle_timeout_secs, i.last_seen, now())),
                claims: ctx
                    .auth
                    .as_ref()
                    .map(|a| a.rendered.identity.claims.clone()),
                tunnel,
                client,
            }),
        );
        // Past the 101 no retry sends the request again, so the credential's
        // own copy of a bearer token (up to `max_token_bytes`) is dropped
        // rather than kept for the connection's life. The request head that
        // Pingora keeps until the tunnel ends still holds the token.
        if let Some(auth) = ctx.auth.as_mut() {
            drop(std::mem::take(&mut auth.credential.token));
        }
        // The session may have ended while the handshake was in flight: the
        // pass that closed its connections did not see this one.
        if let Some(live) = &ctx.live {
            self.state.closes_if_ended(live.connection());
            // Likewise a handshake admitted before the shutdown's close pass.
            if self
                .state
                .closing_for_shutdown
                .load(std::sync::atomic::Ordering::Acquire)
            {
                self.state.connections.close(
                    live.connection().id,
                    crate::connections::close_code::GOING_AWAY,
                    "server shutting down",
                    "shutdown",
                );
            }
        }
        // A reload between this request's admission and its 101 has already
        // judged the connections it found; judge this one by the new rules.
        let current = self.state.runtime();
        if let (Some(live), Some(used)) = (&ctx.live, &ctx.runtime) {
            if !Arc::ptr_eq(&current, used) {
                let conn = live.connection();
                if let Some(reason) = current.no_longer_admits(conn) {
                    self.state.connections.close(
                        conn.id,
                        crate::connections::close_code::SESSION_REVOKED,
                        reason,
                        "reload",
                    );
                }
            }
        }
        Ok(())
    }

    /// On a live connection, the client's data frames keep its session from
    /// going idle.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (Some(live), Some(chunk)) = (&ctx.live, body.as_deref()) {
            if ctx.client_frames.observe(chunk) {
                let conn = live.connection();
                if let Some(activity) = &conn.activity {
                    activity.note_frame(now());
                }
                if let Some(idle) = &conn.idle_close {
                    idle.note_frame(now());
                }
            }
        }
        Ok(())
    }

    /// Follows frame boundaries of the upgraded stream; when the upstream side
    /// ended because portcullis closed the connection, appends the close frame.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        let Some(live) = &ctx.live else {
            return Ok(None);
        };
        if let Some(chunk) = body.as_deref() {
            ctx.frames.observe(chunk);
        }
        if !end_of_stream || ctx.close_sent.is_some() {
            return Ok(None);
        }
        let Some(close) = live.connection().close_request() else {
            return Ok(None);
        };
        if ctx.frames.at_boundary() {
            let mut out = BytesMut::new();
            if let Some(chunk) = body.take() {
                out.extend_from_slice(&chunk);
            }
            out.extend_from_slice(&frames::close_frame(close.code, &close.reason));
            *body = Some(out.freeze());
            ctx.close_sent = Some(close.code);
        } else {
            tracing::warn!(
                connection = live.connection().id,
                "forced close arrived in the middle of an upstream frame; closing without a close frame"
            );
        }
        Ok(None)
    }

    /// Answers proxy failures with the same JSON shape as every refusal.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let refusal = match (ctx.refusal, e.esource()) {
            (Some(r), _) => Some(r),
            (None, ErrorSource::Upstream) => Some(Refusal::UpstreamFailed),
            (None, ErrorSource::Downstream) => None,
            (None, _) => Some(Refusal::UpstreamFailed),
        };
        if let (Some(target), Some(Refusal::UpstreamFailed | Refusal::NoHealthyUpstream)) =
            (&ctx.target, refusal)
        {
            let kind = if refusal == Some(Refusal::NoHealthyUpstream) {
                "no_healthy_server"
            } else {
                "proxy"
            };
            self.state
                .metrics
                .upstream_errors
                .with_label_values(&[&target.deployment.upstream.config.name, kind])
                .inc();
        }
        let mut code = 0;
        if let Some(r) = refusal {
            ctx.refusal = Some(r);
            self.count_handshake(ctx, r.outcome());
            code = r.status();
            let (mut header, body) = r.render();
            let body = request_id::stamp(&mut header, body, ctx.request_id());
            if let Err(write_error) = self.write_own(session, header, body).await {
                tracing::debug!(error = %write_error, "could not write the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// One log line and the metrics of the request; ends its live connection.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let live = ctx.live.take();
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let outcome = match (ctx.refusal, e) {
            (Some(r), _) => r.outcome(),
            (None, Some(_)) if status == 0 => "client_aborted",
            (None, _) => "allowed",
        };
        self.count_handshake(ctx, outcome);
        let deployment = ctx.deployment_label();
        let route = ctx
            .target
            .as_ref()
            .map(|t| t.route.label.as_ref())
            .unwrap_or(NO_DEPLOYMENT);
        let metrics = &self.state.metrics;
        metrics
            .requests
            .with_label_values(&[deployment, route, outcome, status_label(status)])
            .inc();
        let latency = ctx
            .response_after
            .or_else(|| ctx.started.map(|s| s.elapsed()))
            .unwrap_or_default();
        let kind = if ctx.is_upgrade { "websocket" } else { "http" };
        metrics
            .request_duration
            .with_label_values(&[kind])
            .observe(latency.as_secs_f64());
        if tracing::enabled!(target: "portcullis::access", tracing::Level::INFO) {
            let req = session.req_header();
            let path = std::str::from_utf8(req.raw_path())
                .ok()
                .map(|p| p.split('?').next().unwrap_or(""))
                .filter(|p| p.len() <= 256 && p.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or("<unprintable>");
            let connection_seconds = live
                .as_ref()
                .map(|l| l.connection().started_at.elapsed().as_secs_f64());
            let forced_close = live
                .as_ref()
                .and_then(|l| l.connection().close_request().map(|c| c.label));
            let client = session.client_addr().map(|a| a.to_string());
            let user_agent = req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(printable_field);
            tracing::info!(
                target: "portcullis::access",
                request_id = ctx.request_id.as_ref().map(RequestId::as_str),
                method = %req.method,
                path,
                client,
                user_agent,
                upstream = ctx.upstream_server().as_deref(),
                deployment,
                route,
                outcome,
                status,
                latency_ms = latency.as_secs_f64() * 1000.0,
                websocket = ctx.is_upgrade,
                auth = ctx.auth.as_ref().map(|a| a.credential.carrier.label()),
                subject = ctx.auth.as_ref().map(|a| a.rendered.identity.subject.as_str()),
                connection_seconds,
                forced_close,
                close_code = ctx.close_sent,
                "request"
            );
        }
        drop(live);
    }

    /// What Pingora's own error log lines show of a request: never the query,
    /// which may carry a token.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        let req = session.req_header();
        let path = std::str::from_utf8(req.raw_path())
            .ok()
            .and_then(|p| p.split('?').next())
            .unwrap_or("<non-utf8 path>");
        format!(
            "{} {}",
            req.method,
            path.chars().take(256).collect::<String>()
        )
    }
}

/// Status codes as static label values (a bounded set).
fn status_label(status: u16) -> &'static str {
    const LABELS: [&str; 6] = ["0", "1xx", "2xx", "3xx", "4xx", "5xx"];
    match status {
        101 => "101",
        200 => "200",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        429 => "429",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        s => LABELS[(s / 100).min(5) as usize],
    }
}

#[cfg(test)]
mod tests;

/// A client-supplied header value as a log field: printable ASCII and
/// spaces only (anything else becomes `?`), at most 256 characters, so a
/// client cannot forge log lines or fill them.
fn printable_field(value: &str) -> String {
    value
        .chars()
        .take(256)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}
