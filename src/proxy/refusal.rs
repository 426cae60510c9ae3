//! Every way portcullis turns a request away, and the one renderer that
//! turns a refusal into a response and a metric label, so that statuses,
//! bodies and metrics can never disagree.

use bytes::Bytes;
use pingora::http::ResponseHeader;

use crate::capacity::LimitReached;
use crate::policy::PolicyFailure;
use crate::token::TokenError;

/// Why a request could not be authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No carrier holds a credential.
    NoCredentials,
    /// A carrier is empty or repeated.
    MalformedCredential,
    Token(TokenError),
}

impl AuthFailure {
    pub fn code(self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "no_credentials",
            AuthFailure::MalformedCredential => "malformed_credential",
            AuthFailure::Token(e) => e.code(),
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "authentication is required",
            AuthFailure::MalformedCredential => "the credential is empty or given more than once",
            AuthFailure::Token(e) => e.description(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No route matches the path.
    NoRoute,
    /// The request target is malformed or ambiguous (dot segments, encoded
    /// slashes, invalid UTF-8, over-long).
    BadTarget(&'static str),
    /// The path carries a `;` parameter (raw or `%3B`), which Java backends
    /// cut off before routing: `/public/..;/support/x` reaches
    /// `/support/x`. A `bad_request` with its own reason.
    PathParameter,
    /// The deployment id is missing, repeated or malformed.
    BadDeploymentId(&'static str),
    /// The query spells the deployment id parameter another way
    /// (`DeploymentId`, `deploymentId[]`, encoded twice, after a `;`) that a
    /// backend may read instead of the real one. An `invalid_deployment_id`
    /// with its own reason.
    DeploymentIdVariant,
    /// A request asking for an upgrade that is not a well-formed WebSocket
    /// handshake (RFC 6455 §4.2.1): no or a repeated key, a key that is not
    /// 16 bytes, no or a repeated version, `Upgrade` without `Connection:
    /// upgrade` or the other way round, another protocol than `websocket`.
    BadHandshake(&'static str),
    /// A WebSocket handshake for a version other than 13: 426 with
    /// `Sec-WebSocket-Version: 13` (RFC 6455 §4.4).
    UnsupportedWebSocketVersion,
    UnknownDeployment,
    DeploymentInactive,
    OriginNotAllowed,
    /// A WebSocket upgrade without `Origin` on a deployment that requires one.
    OriginMissing,
    /// No valid credential (401).
    Unauthenticated(AuthFailure),
    /// Authenticated, but the messenger's `require` rules say no (403).
    Forbidden(PolicyFailure),
    /// The identity provider's keys cannot be had right now (503).
    ProviderUnavailable,
    /// The session store cannot be reached to check a session (503).
    StoreUnavailable,
    /// No upstream server is healthy.
    NoHealthyUpstream,
    /// The upstream could not be reached or broke the exchange.
    UpstreamFailed,
    /// The instance is draining (SIGTERM): new WebSocket upgrades go to
    /// another instance (503 with `Retry-After`).
    Draining,
    /// A WebSocket handshake past a connection ceiling (503): the process
    /// holds as many as its descriptors allow, or the deployment its share.
    ConnectionLimit(LimitReached),
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::NoRoute | Refusal::UnknownDeployment => 404,
            Refusal::BadTarget(_)
            | Refusal::PathParameter
            | Refusal::BadDeploymentId(_)
            | Refusal::DeploymentIdVariant
            | Refusal::BadHandshake(_) => 400,
            Refusal::UnsupportedWebSocketVersion => 426,
            Refusal::DeploymentInactive | Refusal::OriginNotAllowed | Refusal::OriginMissing => 403,
            Refusal::Unauthenticated(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::ProviderUnavailable
            | Refusal::StoreUnavailable
            | Refusal::ConnectionLimit(_) => 503,
            Refusal::UpstreamFailed => 502,
            Refusal::NoHealthyUpstream | Refusal::Draining => 503,
        }
    }

    /// The metric outcome label: the `error` code, or for authentication and
    /// policy refusals the precise reason (`token_expired`, `group_mismatch`…).
    pub fn outcome(self) -> &'static str {
        match self {
            Refusal::Unauthenticated(why) => why.code(),
            Refusal::Forbidden(why) => why.code(),
            Refusal::PathParameter => "path_parameter",
            Refusal::DeploymentIdVariant => "deployment_id_variant",
            Refusal::UnsupportedWebSocketVersion => "unsupported_websocket_version",
            other => other.code(),
        }
    }

    /// The `error` field of the JSON body (RFC 6750 names for token errors).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::NoRoute => "not_found",
            Refusal::BadTarget(_) | Refusal::PathParameter => "bad_request",
            Refusal::BadDeploymentId(_) | Refusal::DeploymentIdVariant => "invalid_deployment_id",
            Refusal::BadHandshake(_) | Refusal::UnsupportedWebSocketVersion => "bad_handshake",
            Refusal::UnknownDeployment => "unknown_deployment",
            Refusal::DeploymentInactive => "deployment_inactive",
            Refusal::OriginNotAllowed => "origin_not_allowed",
            Refusal::OriginMissing => "origin_required",
            Refusal::Unauthenticated(AuthFailure::NoCredentials) => "unauthorized",
            Refusal::Unauthenticated(AuthFailure::MalformedCredential) => "invalid_request",
            Refusal::Unauthenticated(AuthFailure::Token(_)) => "invalid_token",
            Refusal::Forbidden(_) => "access_denied",
            Refusal::ProviderUnavailable => "provider_unavailable",
            Refusal::StoreUnavailable => "session_store_unavailable",
            Refusal::NoHealthyUpstream => "no_healthy_upstream",
            Refusal::UpstreamFailed => "upstream_failed",
            Refusal::Draining => "draining",
            Refusal::ConnectionLimit(_) => "connection_limit",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Refusal::NoRoute => "no messaging route matches this path",
            Refusal::BadTarget(why) | Refusal::BadDeploymentId(why) | Refusal::BadHandshake(why) => {
                why
            }
            Refusal::UnsupportedWebSocketVersion => "only WebSocket version 13 is supported",
            Refusal::PathParameter => {
                "';' path parameters (raw or %3B) are not allowed in the path"
            }
            Refusal::DeploymentIdVariant => {
                "the deployment id parameter appears under another spelling (case, brackets, encoding or ';')"
            }
            Refusal::UnknownDeployment => "no deployment has this id",
            Refusal::DeploymentInactive => "this deployment is inactive",
            Refusal::OriginNotAllowed => "this Origin is not allowed for the deployment",
            Refusal::OriginMissing => {
                "a WebSocket upgrade must carry an Origin header for this deployment"
            }
            Refusal::Unauthenticated(why) => why.description(),
            Refusal::Forbidden(why) => why.description(),
            Refusal::ProviderUnavailable => {
                "the identity provider cannot be reached; try again shortly"
            }
            Refusal::StoreUnavailable => "the session store cannot be reached; try again shortly",
            Refusal::NoHealthyUpstream => "no healthy upstream server is available",
            Refusal::UpstreamFailed => "the upstream server could not be reached",
            Refusal::Draining => {
                "this instance is shutting down; connect again (the load balancer sends you elsewhere)"
            }
            Refusal::ConnectionLimit(LimitReached::Process) => {
                "this instance holds as many live connections as it can; try again shortly"
            }
            Refusal::ConnectionLimit(LimitReached::Deployment) => {
                "this deployment holds as many live connections as it may; try again shortly"
            }
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750 §3): no error
    /// attribute when no credential was sent, else the error and its reason.
    pub fn challenge(self) -> Option<String> {
        match self {
            Refusal::Unauthenticated(AuthFailure::NoCredentials) => {
                Some(r#"Bearer realm="portcullis""#.into())
            }
            Refusal::Unauthenticated(why) => Some(format!(
                r#"Bearer realm="portcullis", error="{}", error_description="{}""#,
                self.code(),
                why.description()
            )),
            _ => None,
        }
    }

    /// The response: status, JSON `{"error", "error_description", "reason"}`,
    /// no caching; a challenge on 401 and `Retry-After` on 503.
    pub fn render(self) -> (ResponseHeader, Bytes) {
        let body = serde_json::json!({
            "error": self.code(),
            "error_description": self.description(),
            "reason": self.outcome(),
        });
        let body = Bytes::from(body.to_string());
        let mut header = ResponseHeader::build(self.status(), Some(4)).expect("valid status");
        // Inserting static names and values cannot fail.
        let _ = header.insert_header("content-type", "application/json");
        let _ = header.insert_header("content-length", body.len().to_string());
        let _ = header.insert_header("cache-control", "no-store");
        let _ = header.insert_header("x-content-type-options", "nosniff");
        if let Some(challenge) = self.challenge() {
            let _ = header.insert_header("www-authenticate", challenge);
        }
        if self.status() == 503 {
            let _ = header.insert_header("retry-after", "5");
        }
        if self == Refusal::UnsupportedWebSocketVersion {
            let _ = header.insert_header("upgrade", "websocket");
            let _ =
                header.insert_header("sec-websocket-version", super::handshake::WEBSOCKET_VERSION);
        }
        (header, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_status_body_and_label_agree() {
        for r in [
            Refusal::NoRoute,
            Refusal::BadTarget("dot segments are not allowed"),
            Refusal::PathParameter,
            Refusal::DeploymentIdVariant,
            Refusal::BadHandshake("Sec-WebSocket-Key must be sent once"),
            Refusal::UnsupportedWebSocketVersion,
            Refusal::BadDeploymentId("deploymentId is required"),
            Refusal::UnknownDeployment,
            Refusal::DeploymentInactive,
            Refusal::OriginNotAllowed,
            Refusal::OriginMissing,
            Refusal::Unauthenticated(AuthFailure::NoCredentials),
            Refusal::Unauthenticated(AuthFailure::Token(TokenError::Expired)),
            Refusal::Forbidden(PolicyFailure::Groups),
            Refusal::ProviderUnavailable,
            Refusal::NoHealthyUpstream,
            Refusal::UpstreamFailed,
            Refusal::Draining,
            Refusal::ConnectionLimit(LimitReached::Process),
            Refusal::ConnectionLimit(LimitReached::Deployment),
        ] {
            let (header, body) = r.render();
            assert_eq!(header.status.as_u16(), r.status());
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"], r.code());
            assert_eq!(json["error_description"], r.description());
            assert_eq!(json["reason"], r.outcome());
            assert_eq!(
                header
                    .headers
                    .get("content-length")
                    .unwrap()
                    .to_str()
                    .unwrap(),
                body.len().to_string()
            );
        }
    }

    #[test]
    fn unauthenticated_refusals_carry_a_bearer_challenge() {
        let (none, _) = Refusal::Unauthenticated(AuthFailure::NoCredentials).render();
        assert_eq!(none.status.as_u16(), 401);
        assert_eq!(
            none.headers.get("www-authenticate").unwrap(),
            r#"Bearer realm="portcullis""#
        );
        let expired = Refusal::Unauthenticated(AuthFailure::Token(TokenError::Expired));
        let (header, body) = expired.render();
        let challenge = header
            .headers
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            challenge.contains(r#"error="invalid_token""#) && challenge.contains("expired"),
            "{challenge}"
        );
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["reason"], "token_expired");
        let (header, _) = Refusal::ProviderUnavailable.render();
        assert_eq!(header.headers.get("retry-after").unwrap(), "5");
        let (header, _) = Refusal::ConnectionLimit(LimitReached::Process).render();
        assert_eq!(header.status.as_u16(), 503);
        assert_eq!(header.headers.get("retry-after").unwrap(), "5");
        assert!(Refusal::Forbidden(PolicyFailure::Groups)
            .challenge()
            .is_none());
    }
}
