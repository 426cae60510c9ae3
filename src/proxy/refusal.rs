//! Every way portcullis turns a request away, and the one renderer that
//! turns a refusal into a response and a metric label, so that statuses,
//! bodies and metrics can never disagree.

use bytes::Bytes;
use pingora::http::ResponseHeader;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No route matches the path.
    NoRoute,
    /// The request target is malformed or ambiguous (dot segments, encoded
    /// slashes, invalid UTF-8, over-long).
    BadTarget(&'static str),
    /// The deployment id is missing, repeated or malformed.
    BadDeploymentId(&'static str),
    UnknownDeployment,
    DeploymentInactive,
    OriginNotAllowed,
    /// A WebSocket upgrade without `Origin` on a deployment that requires one.
    OriginMissing,
    /// The deployment needs authentication, which this build cannot do yet.
    AuthenticationUnavailable,
    /// No upstream server is healthy.
    NoHealthyUpstream,
    /// The upstream could not be reached or broke the exchange.
    UpstreamFailed,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::NoRoute | Refusal::UnknownDeployment => 404,
            Refusal::BadTarget(_) | Refusal::BadDeploymentId(_) => 400,
            Refusal::DeploymentInactive | Refusal::OriginNotAllowed | Refusal::OriginMissing => 403,
            Refusal::AuthenticationUnavailable => 501,
            Refusal::UpstreamFailed => 502,
            Refusal::NoHealthyUpstream => 503,
        }
    }

    /// The `error` field of the JSON body, and the metric outcome label.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::NoRoute => "not_found",
            Refusal::BadTarget(_) => "bad_request",
            Refusal::BadDeploymentId(_) => "invalid_deployment_id",
            Refusal::UnknownDeployment => "unknown_deployment",
            Refusal::DeploymentInactive => "deployment_inactive",
            Refusal::OriginNotAllowed => "origin_not_allowed",
            Refusal::OriginMissing => "origin_required",
            Refusal::AuthenticationUnavailable => "authentication_unavailable",
            Refusal::NoHealthyUpstream => "no_healthy_upstream",
            Refusal::UpstreamFailed => "upstream_failed",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Refusal::NoRoute => "no messaging route matches this path",
            Refusal::BadTarget(why) | Refusal::BadDeploymentId(why) => why,
            Refusal::UnknownDeployment => "no deployment has this id",
            Refusal::DeploymentInactive => "this deployment is inactive",
            Refusal::OriginNotAllowed => "this Origin is not allowed for the deployment",
            Refusal::OriginMissing => "a WebSocket upgrade must carry an Origin header for this deployment",
            Refusal::AuthenticationUnavailable => "authentication not built yet: this deployment requires authentication, which this version of portcullis cannot perform",
            Refusal::NoHealthyUpstream => "no healthy upstream server is available",
            Refusal::UpstreamFailed => "the upstream server could not be reached",
        }
    }

    /// The response: status, JSON `{"error", "error_description"}`, no caching.
    pub fn render(self) -> (ResponseHeader, Bytes) {
        let body = serde_json::json!({
            "error": self.code(),
            "error_description": self.description(),
        });
        let body = Bytes::from(body.to_string());
        let mut header = ResponseHeader::build(self.status(), Some(4)).expect("valid status");
        // Inserting static names and values cannot fail.
        let _ = header.insert_header("content-type", "application/json");
        let _ = header.insert_header("content-length", body.len().to_string());
        let _ = header.insert_header("cache-control", "no-store");
        let _ = header.insert_header("x-content-type-options", "nosniff");
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
            Refusal::BadDeploymentId("deploymentId is required"),
            Refusal::UnknownDeployment,
            Refusal::DeploymentInactive,
            Refusal::OriginNotAllowed,
            Refusal::OriginMissing,
            Refusal::AuthenticationUnavailable,
            Refusal::NoHealthyUpstream,
            Refusal::UpstreamFailed,
        ] {
            let (header, body) = r.render();
            assert_eq!(header.status.as_u16(), r.status());
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"], r.code());
            assert_eq!(json["error_description"], r.description());
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
    fn authentication_unavailable_is_501_and_says_so() {
        let r = Refusal::AuthenticationUnavailable;
        assert_eq!(r.status(), 501);
        assert!(r.description().contains("authentication not built yet"));
    }
}
