//! How many live WebSockets one process may hold, and the admission slots
//! that keep WebSocket handshakes under that ceiling.
//!
//! A proxied WebSocket holds two descriptors (client and upstream socket),
//! so the process's descriptor limit (`RLIMIT_NOFILE`) sets how many fit.
//! Past it, `accept(2)` fails with `EMFILE` in a loop and handshakes fail
//! with 502 at random. portcullis raises its soft limit to the hard limit at
//! start, derives a ceiling from it with a reserve for everything else
//! (listeners, upstream pools, provider clients, the session store), and
//! refuses handshakes beyond the ceiling with a clean 503 instead.
//!
//! A slot is taken when a handshake is admitted, before authentication (it
//! spares the token checks when full), and given back when the request
//! ends, however it ends: an upgrade in flight already holds a client
//! socket and will soon hold an upstream one, so counting only registered
//! connections would let a burst of handshakes past the ceiling.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Descriptors each live WebSocket holds: its client and upstream sockets.
pub const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// Descriptors kept for everything that is not a live WebSocket: listeners,
/// plain HTTP requests in flight and the upstream connection pools, the
/// identity providers' and the session store's clients, log files.
pub const DESCRIPTOR_RESERVE: u64 = 1000;

/// Used when the descriptor limit cannot be read (it always can on Linux).
const ASSUMED_DESCRIPTOR_LIMIT: u64 = 1024;

/// The process's descriptor limits (`RLIMIT_NOFILE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimit {
    pub soft: u64,
    pub hard: u64,
}

/// The current descriptor limits, `None` when they cannot be read.
pub fn descriptor_limit() -> Option<DescriptorLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some(DescriptorLimit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Raises the soft descriptor limit to the hard one (an unlimited hard limit
/// to the kernel's `nr_open`). Returns the limits before and after.
pub fn raise_descriptor_limit() -> std::io::Result<(DescriptorLimit, DescriptorLimit)> {
    let before = descriptor_limit().ok_or_else(std::io::Error::last_os_error)?;
    let target = if before.hard == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20)
    } else {
        before.hard
    };
    if target > before.soft {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: before.hard,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let after = descriptor_limit().ok_or_else(std::io::Error::last_os_error)?;
    Ok((before, after))
}

/// How many live WebSockets fit under a soft descriptor limit of `descriptors`.
pub fn ceiling_for(descriptors: u64) -> usize {
    let usable = descriptors.saturating_sub(DESCRIPTOR_RESERVE) / DESCRIPTORS_PER_CONNECTION;
    usize::try_from(usable).unwrap_or(usize::MAX).max(1)
}

/// Where the process-wide connection ceiling comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeilingSource {
    /// `limits.max_connections`.
    Configured,
    /// Derived from the descriptor limit.
    DescriptorLimit,
    /// `limits.max_connections` was above what the descriptor limit allows
    /// and was lowered to that.
    Lowered { configured: usize },
}

/// The process-wide connection ceiling in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceiling {
    pub max_connections: usize,
    pub source: CeilingSource,
    /// The soft descriptor limit it was derived from or checked against.
    pub descriptors: u64,
}

impl Ceiling {
    /// The ceiling for `configured` (`limits.max_connections`) under a soft
    /// descriptor limit of `descriptors`: the configured value unless it
    /// would let descriptors run out, then the derived one.
    pub fn resolve(configured: Option<usize>, descriptors: u64) -> Self {
        let derived = ceiling_for(descriptors);
        let (max_connections, source) = match configured {
            None => (derived, CeilingSource::DescriptorLimit),
            Some(n) if n <= derived => (n, CeilingSource::Configured),
            Some(n) => (derived, CeilingSource::Lowered { configured: n }),
        };
        Ceiling {
            max_connections,
            source,
            descriptors,
        }
    }

    /// The ceiling for this process as it is now.
    pub fn current(configured: Option<usize>) -> Self {
        let descriptors = descriptor_limit().map_or(ASSUMED_DESCRIPTOR_LIMIT, |l| l.soft);
        Self::resolve(configured, descriptors)
    }

    /// Said once at start and by `portcullis check` when the configured
    /// ceiling had to be lowered.
    pub fn warning(&self) -> Option<String> {
        match self.source {
            CeilingSource::Lowered { configured } => Some(format!(
                "limits.max_connections {configured} needs more descriptors than the limit of {} \
                 allows ({} per connection plus {DESCRIPTOR_RESERVE} kept in reserve); \
                 using {} instead (raise the hard RLIMIT_NOFILE, `ulimit -Hn`, for more)",
                self.descriptors, DESCRIPTORS_PER_CONNECTION, self.max_connections
            )),
            _ => None,
        }
    }
}

/// Which ceiling turned a handshake away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReached {
    /// The process-wide ceiling (`limits.max_connections`, or derived).
    Process,
    /// The deployment's own `max_connections`.
    Deployment,
}

impl LimitReached {
    /// Metric label of `portcullis_connections_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            LimitReached::Process => "process_limit",
            LimitReached::Deployment => "deployment_limit",
        }
    }
}

#[derive(Default)]
struct Held {
    total: usize,
    by_deployment: HashMap<Arc<str>, usize>,
}

/// Admission slots for WebSockets: live ones and handshakes in flight, in
/// total and per deployment. Kept across reloads; the ceilings are read
/// from the configuration in effect at each handshake.
#[derive(Default)]
pub struct Slots {
    held: Mutex<Held>,
}

impl Slots {
    pub fn new() -> Arc<Self> {
        Arc::new(Slots::default())
    }

    /// Takes a slot for a WebSocket of `deployment`, unless that would pass
    /// `process_max` in total or `deployment_max` for the deployment.
    pub fn try_take(
        self: &Arc<Self>,
        deployment: &Arc<str>,
        process_max: usize,
        deployment_max: Option<usize>,
    ) -> Result<Slot, LimitReached> {
        let mut held = self.held.lock();
        if held.total >= process_max {
            return Err(LimitReached::Process);
        }
        let of_deployment = held.by_deployment.get(deployment).copied().unwrap_or(0);
        if deployment_max.is_some_and(|max| of_deployment >= max) {
            return Err(LimitReached::Deployment);
        }
        held.total += 1;
        held.by_deployment
            .insert(deployment.clone(), of_deployment + 1);
        Ok(Slot {
            slots: self.clone(),
            deployment: deployment.clone(),
        })
    }

    /// Slots held in total.
    pub fn held(&self) -> usize {
        self.held.lock().total
    }

    fn give_back(&self, deployment: &Arc<str>) {
        let mut held = self.held.lock();
        held.total = held.total.saturating_sub(1);
        if let Some(count) = held.by_deployment.get_mut(deployment) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.by_deployment.remove(deployment);
            }
        }
    }
}

/// One WebSocket's place under the ceilings; given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    deployment: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.give_back(&self.deployment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_leaves_a_reserve_and_two_descriptors_per_connection() {
        assert_eq!(ceiling_for(20_000), 9_500);
        assert_eq!(ceiling_for(1_024), 12);
        assert_eq!(ceiling_for(100), 1, "never zero");
        let derived = Ceiling::resolve(None, 20_000);
        assert_eq!(derived.max_connections, 9_500);
        assert_eq!(derived.source, CeilingSource::DescriptorLimit);
        assert!(derived.warning().is_none());
        let configured = Ceiling::resolve(Some(5_000), 20_000);
        assert_eq!(configured.max_connections, 5_000);
        assert_eq!(configured.source, CeilingSource::Configured);
        let lowered = Ceiling::resolve(Some(12_000), 20_000);
        assert_eq!(lowered.max_connections, 9_500);
        assert_eq!(
            lowered.source,
            CeilingSource::Lowered { configured: 12_000 }
        );
        let warning = lowered.warning().unwrap();
        assert!(
            warning.contains("12000") && warning.contains("9500"),
            "{warning}"
        );
    }

    #[test]
    fn slots_count_in_total_and_per_deployment_and_come_back_when_dropped() {
        let slots = Slots::new();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let a1 = slots.try_take(&a, 3, Some(2)).unwrap();
        let _a2 = slots.try_take(&a, 3, Some(2)).unwrap();
        assert_eq!(
            slots.try_take(&a, 3, Some(2)).err(),
            Some(LimitReached::Deployment)
        );
        let _b1 = slots.try_take(&b, 3, None).unwrap();
        assert_eq!(
            slots.try_take(&b, 3, None).err(),
            Some(LimitReached::Process)
        );
        assert_eq!(slots.held(), 3);
        drop(a1);
        assert_eq!(slots.held(), 2);
        let _a3 = slots.try_take(&a, 3, Some(2)).unwrap();
    }

    #[test]
    fn raising_the_limit_reaches_the_hard_limit() {
        let (before, after) = raise_descriptor_limit().unwrap();
        assert!(after.soft >= before.soft);
        if before.hard != libc::RLIM_INFINITY {
            assert_eq!(after.soft, before.hard);
        }
    }
}
