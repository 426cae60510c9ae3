//! The `Origin` check: the defence against cross-site WebSocket hijacking.
//! Browsers always send `Origin` on WebSocket handshakes and on cross-site
//! requests, so a listed origin is the only way a page may reach a deployment.

use crate::config::{Deployment, OriginPolicy};

use super::refusal::Refusal;

/// Decides whether a request with this `Origin` header may reach the
/// deployment. Comparison is ASCII case-insensitive against the normalized
/// configured origins; browsers send origins already serialized.
pub fn check(
    deployment: &Deployment,
    origin: Option<&[u8]>,
    is_upgrade: bool,
) -> Result<(), Refusal> {
    match (&deployment.origins, origin) {
        (OriginPolicy::Any, _) => Ok(()),
        (OriginPolicy::List(_), None) if is_upgrade && !deployment.allow_missing_origin => {
            Err(Refusal::OriginMissing)
        }
        // Non-browser clients and same-origin navigations send no Origin.
        (OriginPolicy::List(_), None) => Ok(()),
        (OriginPolicy::List(allowed), Some(origin)) => {
            if allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(origin))
            {
                Ok(())
            } else {
                Err(Refusal::OriginNotAllowed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeploymentStatus;

    fn deployment(origins: OriginPolicy, allow_missing_origin: bool) -> Deployment {
        Deployment {
            id: "d".into(),
            name: None,
            messenger: "m".into(),
            status: DeploymentStatus::Active,
            origins,
            allow_missing_origin,
            upstream: "u".into(),
            access_token_query: false,
            forward_token: false,
            redirect_uris: vec![],
            max_connections: None,
        }
    }

    fn listed() -> OriginPolicy {
        OriginPolicy::List(vec![
            "https://www.example.com".into(),
            "http://localhost:8080".into(),
        ])
    }

    #[test]
    fn listed_origins_pass_others_are_refused() {
        let d = deployment(listed(), false);
        assert_eq!(check(&d, Some(b"https://www.example.com"), true), Ok(()));
        assert_eq!(check(&d, Some(b"HTTPS://WWW.EXAMPLE.COM"), true), Ok(()));
        assert_eq!(check(&d, Some(b"http://localhost:8080"), false), Ok(()));
        for bad in [
            &b"https://evil.example"[..],
            b"https://www.example.com.evil.com",
            b"https://evil.www.example.com",
            b"http://www.example.com",
            b"https://www.example.com:8443",
            b"null",
            b"",
        ] {
            assert_eq!(
                check(&d, Some(bad), true),
                Err(Refusal::OriginNotAllowed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert_eq!(check(&d, Some(bad), false), Err(Refusal::OriginNotAllowed));
        }
    }

    #[test]
    fn a_missing_origin_is_refused_on_upgrades_unless_allowed() {
        assert_eq!(
            check(&deployment(listed(), false), None, true),
            Err(Refusal::OriginMissing)
        );
        assert_eq!(check(&deployment(listed(), true), None, true), Ok(()));
        assert_eq!(check(&deployment(listed(), false), None, false), Ok(()));
    }

    #[test]
    fn allow_all_origins_allows_any_and_none() {
        let d = deployment(OriginPolicy::Any, false);
        assert_eq!(check(&d, Some(b"https://anything.test"), true), Ok(()));
        assert_eq!(check(&d, None, true), Ok(()));
    }
}
