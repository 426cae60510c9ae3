//! Authorization: whether verified claims satisfy a messenger's `require`
//! rules. Pure functions over claims; every rule must hold.

use serde_json::Value;

use crate::config::Require;
use crate::token::Claims;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFailure {
    /// A `require.claims` entry is missing or has another value.
    ClaimMismatch,
    /// Not in any of `groups_any`, or not in every one of `groups_all`.
    Groups,
    /// No email, an ambiguous one, or one outside `email_domains`.
    EmailDomain,
    /// An email in an allowed domain that the provider does not say it
    /// verified (see `email_verified`), where the messenger demands that.
    EmailUnverified,
}

impl PolicyFailure {
    pub fn code(self) -> &'static str {
        match self {
            PolicyFailure::ClaimMismatch => "claim_mismatch",
            PolicyFailure::Groups => "group_mismatch",
            PolicyFailure::EmailDomain => "email_domain_not_allowed",
            PolicyFailure::EmailUnverified => "email_not_verified",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            PolicyFailure::ClaimMismatch => "a required claim is missing or has another value",
            PolicyFailure::Groups => "the user is not in a required group",
            PolicyFailure::EmailDomain => "the user's email domain is not allowed",
            PolicyFailure::EmailUnverified => {
                "the user's email address is not verified by the identity provider"
            }
        }
    }
}

pub fn authorize(require: &Require, claims: &Claims) -> Result<(), PolicyFailure> {
    for (name, expected) in &require.claims {
        if claims.get(name) != Some(expected) {
            return Err(PolicyFailure::ClaimMismatch);
        }
    }
    if !require.groups_any.is_empty() || !require.groups_all.is_empty() {
        let groups = groups(claims);
        let any_ok = require.groups_any.is_empty()
            || require
                .groups_any
                .iter()
                .any(|g| groups.contains(&g.as_str()));
        let all_ok = require
            .groups_all
            .iter()
            .all(|g| groups.contains(&g.as_str()));
        if !(any_ok && all_ok) {
            return Err(PolicyFailure::Groups);
        }
    }
    if !require.email_domains.is_empty() {
        let domain = claims
            .str("email")
            .and_then(email_domain)
            .ok_or(PolicyFailure::EmailDomain)?;
        if !require.email_domains.contains(&domain) {
            return Err(PolicyFailure::EmailDomain);
        }
        // A domain proves nothing about an address nobody confirmed: at many
        // providers anyone can sign up as `ceo@example.com`.
        if !require.allow_unverified_email && !email_verified(claims.get("email_verified")) {
            return Err(PolicyFailure::EmailUnverified);
        }
    }
    Ok(())
}

/// Whether the provider says it verified `email`, given its
/// `email_verified` claim: JSON `true`, or the string `"true"` (Amazon
/// Cognito and some others send strings). Anything else is unverified, a
/// missing claim included: fail closed (Microsoft Entra ID sends no such
/// claim, so its messengers need `allow_unverified_email`).
pub fn email_verified(claim: Option<&Value>) -> bool {
    match claim {
        Some(Value::Bool(verified)) => *verified,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// The `groups` claim as a list: a JSON array of strings, or one string of
/// names separated by spaces or commas.
pub fn groups(claims: &Claims) -> Vec<&str> {
    match claims.get("groups") {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(s)) => s.split([' ', ',']).filter(|g| !g.is_empty()).collect(),
        _ => Vec::new(),
    }
}

/// The lowercase domain of an address with exactly one `@` and a non-empty
/// local part: `a@b@example.com` has no domain, whatever its tail says.
pub fn email_domain(email: &str) -> Option<String> {
    let (local, domain) = email.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return None;
    }
    let valid = domain
        .split('.')
        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    valid.then(|| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Claims {
        serde_json::from_value(v).unwrap()
    }

    fn require(v: Value) -> Require {
        let r: crate::config::raw::RawRequire = serde_json::from_value(v).unwrap();
        Require {
            claims: r.claims,
            groups_any: r.groups_any,
            groups_all: r.groups_all,
            email_domains: r.email_domains,
            allow_unverified_email: r.allow_unverified_email,
        }
    }

    #[test]
    fn claims_must_match_exactly() {
        let r = require(json!({"claims": {"email_verified": true}}));
        assert_eq!(
            authorize(&r, &claims(json!({"email_verified": true}))),
            Ok(())
        );
        for bad in [
            json!({"email_verified": false}),
            json!({"email_verified": "true"}),
            json!({}),
        ] {
            assert_eq!(
                authorize(&r, &claims(bad)),
                Err(PolicyFailure::ClaimMismatch)
            );
        }
    }

    #[test]
    fn groups_any_and_all_accept_arrays_and_strings() {
        let any = require(json!({"groups_any": ["customers", "staff"]}));
        assert_eq!(
            authorize(&any, &claims(json!({"groups": ["x", "staff"]}))),
            Ok(())
        );
        assert_eq!(
            authorize(&any, &claims(json!({"groups": "x, customers"}))),
            Ok(())
        );
        assert_eq!(
            authorize(&any, &claims(json!({"groups": "customers-old"}))),
            Err(PolicyFailure::Groups)
        );
        assert_eq!(
            authorize(&any, &claims(json!({}))),
            Err(PolicyFailure::Groups)
        );
        let all = require(json!({"groups_all": ["a", "b"]}));
        assert_eq!(authorize(&all, &claims(json!({"groups": "a b c"}))), Ok(()));
        assert_eq!(
            authorize(&all, &claims(json!({"groups": ["a"]}))),
            Err(PolicyFailure::Groups)
        );
    }

    #[test]
    fn email_domains_resist_multi_at_and_lookalikes() {
        let r = require(json!({"email_domains": ["example.com"]}));
        assert_eq!(
            authorize(
                &r,
                &claims(json!({"email": "alice@Example.COM", "email_verified": true}))
            ),
            Ok(())
        );
        for bad in [
            "alice@evil.com@example.com",
            "alice@example.com@evil.com",
            "alice@example.com.evil.com",
            "alice@sub.example.com",
            "alice@evilexample.com",
            "@example.com",
            "alice@",
            "alice",
            "alice@example.com ",
        ] {
            assert_eq!(
                authorize(&r, &claims(json!({"email": bad, "email_verified": true}))),
                Err(PolicyFailure::EmailDomain),
                "{bad}"
            );
        }
        assert_eq!(
            authorize(&r, &claims(json!({"email": 42, "email_verified": true}))),
            Err(PolicyFailure::EmailDomain)
        );
    }

    #[test]
    fn email_domains_need_a_verified_address_unless_the_messenger_opts_out() {
        let strict = require(json!({"email_domains": ["example.com"]}));
        let lenient = require(json!({
            "email_domains": ["example.com"], "allow_unverified_email": true
        }));
        let with = |verified: Option<Value>| {
            let mut c = json!({"email": "alice@example.com"});
            if let Some(v) = verified {
                c["email_verified"] = v;
            }
            claims(c)
        };
        // Verified: a JSON true, or the string some providers send.
        for yes in [json!(true), json!("true")] {
            assert_eq!(
                authorize(&strict, &with(Some(yes.clone()))),
                Ok(()),
                "{yes}"
            );
            assert!(email_verified(with(Some(yes)).get("email_verified")));
        }
        // Anything else is unverified, a missing claim included.
        let mut unverified: Vec<Option<Value>> = [
            json!(false),
            json!("false"),
            json!("TRUE"),
            json!("yes"),
            json!(1),
            json!(null),
            json!([true]),
        ]
        .into_iter()
        .map(Some)
        .collect();
        unverified.push(None);
        for no in unverified {
            let c = with(no.clone());
            assert!(!email_verified(c.get("email_verified")), "{no:?}");
            assert_eq!(
                authorize(&strict, &c),
                Err(PolicyFailure::EmailUnverified),
                "{no:?}"
            );
            assert_eq!(authorize(&lenient, &c), Ok(()), "{no:?}");
        }
        // The opt-out relaxes verification only, never the domain.
        assert_eq!(
            authorize(&lenient, &claims(json!({"email": "eve@evil.com"}))),
            Err(PolicyFailure::EmailDomain)
        );
        // A foreign domain is reported as such, verified or not.
        assert_eq!(
            authorize(
                &strict,
                &claims(json!({"email": "eve@evil.com", "email_verified": false}))
            ),
            Err(PolicyFailure::EmailDomain)
        );
        // Without email_domains, email_verified is nobody's business but
        // `claims` rules'.
        assert_eq!(
            authorize(&require(json!({})), &with(Some(json!(false)))),
            Ok(())
        );
    }
}
