//! Rate limits on the endpoints whose every call costs something real: the
//! token API (a call to the provider's token endpoint with the client
//! secret, a new session), `/.auth/login` and `/.auth/callback`. A flood of
//! junk codes must not turn portcullis into a hammer on the provider.
//!
//! Two token buckets (GCRA, from `governor`) are checked in turn: one per
//! client address, then one for the deployment as a whole. Keyed state is
//! trimmed by the supervisor so that a scan from many addresses does not
//! grow memory without bound.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{Rate, RateLimits};

/// Which bucket refused a request (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Client,
    Deployment,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Deployment => "deployment",
        }
    }
}

/// A refused request: which bucket, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    /// Whole seconds, at least 1 (the `Retry-After` value).
    pub retry_after: u64,
}

impl Limited {
    /// The `error_description` of the 429.
    pub fn description(&self) -> String {
        format!("too many requests; retry in {} s", self.retry_after)
    }
}

pub struct Limiters {
    config: RateLimits,
    per_client: DefaultKeyedRateLimiter<IpAddr>,
    per_deployment: DefaultKeyedRateLimiter<String>,
    /// When the buckets were last trimmed (`trim_if_due`).
    last_trim: parking_lot::Mutex<std::time::Instant>,
}

/// Buckets are trimmed at most this often: a pass walks every bucket.
const TRIM_EVERY: Duration = Duration::from_secs(10);

fn quota(rate: Rate) -> Quota {
    // Validation keeps both within 1..=1_000_000.
    let per_minute = NonZeroU32::new(rate.per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

impl Limiters {
    pub fn new(config: RateLimits) -> Self {
        Limiters {
            config,
            per_client: RateLimiter::keyed(quota(config.per_client)),
            per_deployment: RateLimiter::keyed(quota(config.per_deployment)),
            last_trim: parking_lot::Mutex::new(std::time::Instant::now()),
        }
    }

    pub fn config(&self) -> RateLimits {
        self.config
    }

    /// Takes one request from the client's bucket, then from the
    /// deployment's (when the request names a known one). A request refused
    /// by its client's bucket costs the deployment nothing, so one noisy
    /// client cannot use up everyone's budget.
    pub fn check(&self, client: Option<IpAddr>, deployment: Option<&str>) -> Result<(), Limited> {
        if let Some(ip) = client {
            self.check_client(ip)?;
        }
        if let Some(id) = deployment {
            self.check_deployment(id)?;
        }
        Ok(())
    }

    /// Takes one request from the client's bucket.
    pub fn check_client(&self, client: IpAddr) -> Result<(), Limited> {
        let now = DefaultClock::default().now();
        self.per_client
            .check_key(&client)
            .map_err(|not_until| Limited {
                scope: Scope::Client,
                retry_after: whole_seconds(not_until.wait_time_from(now)),
            })
    }

    /// Takes one request from the deployment's bucket.
    pub fn check_deployment(&self, deployment: &str) -> Result<(), Limited> {
        let now = DefaultClock::default().now();
        self.per_deployment
            .check_key(&deployment.to_string())
            .map_err(|not_until| Limited {
                scope: Scope::Deployment,
                retry_after: whole_seconds(not_until.wait_time_from(now)),
            })
    }

    /// Forgets buckets that are full again, so that a scan from many
    /// addresses leaves nothing behind once it stops.
    pub fn trim(&self) {
        self.per_client.retain_recent();
        self.per_client.shrink_to_fit();
        self.per_deployment.retain_recent();
        self.per_deployment.shrink_to_fit();
    }

    /// `trim`, unless it ran within `TRIM_EVERY` (the supervisor calls this
    /// on every tick).
    pub fn trim_if_due(&self) {
        let mut last = self.last_trim.lock();
        if last.elapsed() >= TRIM_EVERY {
            *last = std::time::Instant::now();
            drop(last);
            self.trim();
        }
    }

    /// Client buckets currently held.
    pub fn clients_tracked(&self) -> usize {
        self.per_client.len()
    }
}

fn whole_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(client: (u32, u32), deployment: (u32, u32)) -> Limiters {
        Limiters::new(RateLimits {
            per_client: Rate {
                per_minute: client.0,
                burst: client.1,
            },
            per_deployment: Rate {
                per_minute: deployment.0,
                burst: deployment.1,
            },
        })
    }

    #[test]
    fn each_client_has_its_own_bucket() {
        let l = limits((60, 3), (6000, 600));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.check(Some(a), Some("d")), Ok(()));
        }
        let refused = l.check(Some(a), Some("d")).unwrap_err();
        assert_eq!(refused.scope, Scope::Client);
        assert!(
            (1..=1).contains(&refused.retry_after),
            "{refused:?}: one request per second comes back"
        );
        assert_eq!(
            l.check(Some(b), Some("d")),
            Ok(()),
            "another client is not held up"
        );
    }

    #[test]
    fn the_deployment_bucket_holds_many_clients_together() {
        let l = limits((60, 10), (60, 5));
        for i in 0..5u8 {
            let ip = IpAddr::from([192, 0, 2, i]);
            assert_eq!(l.check(Some(ip), Some("d")), Ok(()));
        }
        let refused = l.check(Some(IpAddr::from([192, 0, 2, 99])), Some("d"));
        assert_eq!(refused.map_err(|l| l.scope), Err(Scope::Deployment));
        assert_eq!(
            l.check(Some(IpAddr::from([192, 0, 2, 99])), Some("other")),
            Ok(()),
            "another deployment has its own bucket"
        );
    }

    #[test]
    fn trimming_forgets_clients_whose_buckets_are_full_again() {
        // 1000 requests a second: a bucket of one refills within a millisecond.
        let l = limits((60_000, 1), (60_000, 1000));
        for i in 0..100u8 {
            assert_eq!(l.check_client(IpAddr::from([198, 51, 100, i])), Ok(()));
        }
        assert_eq!(l.clients_tracked(), 100);
        std::thread::sleep(Duration::from_millis(20));
        l.trim();
        assert_eq!(l.clients_tracked(), 0);
    }

    #[test]
    fn a_client_refused_by_its_own_bucket_costs_the_deployment_nothing() {
        let l = limits((60, 1), (60, 2));
        let noisy: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(l.check(Some(noisy), Some("d")), Ok(()));
        for _ in 0..50 {
            assert!(l.check(Some(noisy), Some("d")).is_err());
        }
        assert_eq!(
            l.check(Some("192.0.2.8".parse().unwrap()), Some("d")),
            Ok(())
        );
    }
}
