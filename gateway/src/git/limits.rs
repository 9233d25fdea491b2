//! How many git processes run at once, for whom, and for how long.
//!
//! Every git request that runs a process (`git http-backend` for fetches, `git index-pack`
//! for pushes) first takes a [`Slot`] from the [`Limiter`]: at most
//! [`GitLimits::max_processes`] at once, at most [`GitLimits::max_per_client`] for one
//! client address. A request that finds no slot is answered at once, never queued: 429 when
//! its client holds its share, 503 when the node is full, both with `Retry-After`.
//!
//! A git request that moves no byte in either direction for [`GitLimits::idle_timeout`]
//! is ended and its process group killed (see [`Activity`] and `supervise` in the parent
//! module), so stalled clients cannot hold processes for long. None of this blocks a thread:
//! the processes' pipes are async, so git traffic never starves the blocking pool the API
//! uses (that starvation, not the processes themselves, is what made the API time out).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default of [`GitLimits::max_processes`].
pub const DEFAULT_MAX_GIT_PROCESSES: usize = 64;
/// Default of [`GitLimits::max_per_client`].
pub const DEFAULT_MAX_GIT_PER_CLIENT: usize = 8;
/// Default of [`GitLimits::idle_timeout`]: git sends keep-alives every 5 s while it
/// prepares a pack, so a minute of silence is a stalled client, not a slow server.
pub const DEFAULT_GIT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bounds on the git processes of the smart HTTP routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitLimits {
    /// Most git processes the node runs at once; more requests get 503.
    pub max_processes: usize,
    /// Most git processes one client address may hold; more requests get 429.
    pub max_per_client: usize,
    /// A git request with no bytes in either direction for this long is ended.
    pub idle_timeout: Duration,
}

impl Default for GitLimits {
    fn default() -> Self {
        Self {
            max_processes: DEFAULT_MAX_GIT_PROCESSES,
            max_per_client: DEFAULT_MAX_GIT_PER_CLIENT,
            idle_timeout: DEFAULT_GIT_IDLE_TIMEOUT,
        }
    }
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The node runs `max_processes` already.
    Full,
    /// This client holds `max_per_client` already.
    Client,
}

/// Hands out [`Slot`]s within [`GitLimits`]. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    limits: GitLimits,
    held: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    /// Slots per client; a client holding none has no entry.
    per_client: HashMap<Option<IpAddr>, usize>,
}

impl Limiter {
    pub(crate) fn new(limits: GitLimits) -> Self {
        Self {
            limits,
            held: Arc::default(),
        }
    }

    pub(crate) fn limits(&self) -> &GitLimits {
        &self.limits
    }

    /// Takes a slot for `client` (its address; `None` when unknown, e.g. in-process tests:
    /// those share one bucket). The client's share is checked first, so one client filling
    /// its share is told to slow down (429) rather than that the node is full.
    pub(crate) fn acquire(&self, client: Option<IpAddr>) -> Result<Slot, Refused> {
        // IPv4 clients on a dual-stack socket arrive as `::ffff:a.b.c.d`: one client.
        let client = client.map(|ip| ip.to_canonical());
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let mine = held.per_client.get(&client).copied().unwrap_or(0);
        if mine >= self.limits.max_per_client {
            return Err(Refused::Client);
        }
        if held.total >= self.limits.max_processes {
            return Err(Refused::Full);
        }
        held.total += 1;
        *held.per_client.entry(client).or_default() += 1;
        Ok(Slot {
            held: self.held.clone(),
            client: Some(client),
        })
    }

    /// Takes a slot that counts only towards `max_processes`, for a request whose client
    /// address is not at hand (file downloads that stream a large git blob).
    pub(crate) fn acquire_shared(&self) -> Result<Slot, Refused> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.total >= self.limits.max_processes {
            return Err(Refused::Full);
        }
        held.total += 1;
        Ok(Slot {
            held: self.held.clone(),
            client: None,
        })
    }
}

/// One running git process's place within the limits; given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    held: Arc<Mutex<Held>>,
    /// The client share it counts towards, if any.
    client: Option<Option<IpAddr>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.total = held.total.saturating_sub(1);
        let Some(client) = self.client else {
            return;
        };
        if let Some(n) = held.per_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                held.per_client.remove(&client);
            }
        }
    }
}

/// When a git request last moved a byte (either way), and whether it was ended for
/// moving none. Cheap to clone; the clones share the clock.
#[derive(Debug, Clone)]
pub(crate) struct Activity {
    inner: Arc<ActivityInner>,
}

#[derive(Debug)]
struct ActivityInner {
    start: Instant,
    /// Milliseconds after `start` of the last byte moved.
    last_ms: AtomicU64,
    timed_out: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(ActivityInner {
                start: Instant::now(),
                last_ms: AtomicU64::new(0),
                timed_out: AtomicBool::new(false),
            }),
        }
    }

    /// Bytes moved now.
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.inner.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since bytes last moved.
    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.inner.last_ms.load(Ordering::Relaxed));
        self.inner.start.elapsed().saturating_sub(last)
    }

    pub(crate) fn set_timed_out(&self) {
        self.inner.timed_out.store(true, Ordering::Relaxed);
    }

    pub(crate) fn timed_out(&self) -> bool {
        self.inner.timed_out.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_processes: usize, max_per_client: usize) -> Limiter {
        Limiter::new(GitLimits {
            max_processes,
            max_per_client,
            idle_timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn bounds_per_client_then_overall_and_gives_back_on_drop() {
        let l = limiter(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "::ffff:10.0.0.3".parse().unwrap();
        let a1 = l.acquire(Some(a)).unwrap();
        let _a2 = l.acquire(Some(a)).unwrap();
        assert_eq!(l.acquire(Some(a)).unwrap_err(), Refused::Client);
        let _b1 = l.acquire(Some(b)).unwrap();
        assert_eq!(l.acquire(Some(c)).unwrap_err(), Refused::Full);
        // A client at its share hears about its share even when the node is full.
        assert_eq!(l.acquire(Some(a)).unwrap_err(), Refused::Client);
        drop(a1);
        let _c1 = l.acquire(Some("10.0.0.3".parse().unwrap())).unwrap();
        // `::ffff:10.0.0.3` and `10.0.0.3` are one client.
        let held = l.held.lock().unwrap();
        assert_eq!(held.total, 3);
        assert_eq!(held.per_client[&Some("10.0.0.3".parse().unwrap())], 1);
        drop(held);
        // A shared slot counts towards the total only.
        assert_eq!(l.acquire_shared().unwrap_err(), Refused::Full);
        drop(_b1);
        let shared = l.acquire_shared().unwrap();
        assert_eq!(l.held.lock().unwrap().per_client.len(), 2);
        drop(shared);
        assert_eq!(l.held.lock().unwrap().total, 2);
    }

    #[test]
    fn activity_measures_idleness() {
        let act = Activity::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(act.idle_for() >= Duration::from_millis(20));
        act.touch();
        assert!(act.idle_for() < Duration::from_millis(20));
        assert!(!act.timed_out());
        act.set_timed_out();
        assert!(act.clone().timed_out());
    }
}
