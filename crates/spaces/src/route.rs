//! Which instance of a Space a request goes to, and what each instance still serves.
//!
//! A Space has one *current* instance (new visitors go there) and, for a bounded window after
//! a new commit took over, *draining* ones: an old instance keeps the requests already in
//! flight on it (a streamed answer, a websocket) and the sessions that started on it, so a
//! gradio session whose `queue/join` went to the old app also gets its `queue/data` stream
//! from it. The supervisor (`space.rs`) registers instances and retires a draining one when
//! nothing is in flight and its sessions have been quiet for the drain idle time, or when
//! the drain window ends, whichever comes first.
//!
//! Sessions are remembered by the key the proxy finds in a request (gradio's
//! `session_hash`), at most [`MAX_SESSIONS`] per Space; a session unseen for
//! [`SESSION_TTL`] is forgotten first when the table is full.

use crate::Target;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sessions remembered per Space.
pub const MAX_SESSIONS: usize = 4096;
/// A session unseen this long may be forgotten.
pub const SESSION_TTL: Duration = Duration::from_secs(3600);
/// Longest session key kept (gradio's are UUIDs or 11 characters).
pub const MAX_SESSION_KEY: usize = 128;

/// One registered instance: where it listens and what it is serving now.
#[derive(Debug)]
pub struct Route {
    pub(crate) id: u64,
    pub(crate) target: Target,
    active: AtomicUsize,
    last_used: Mutex<Instant>,
}

impl Route {
    fn new(id: u64, target: Target) -> Self {
        Self {
            id,
            target,
            active: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// Requests in flight on it now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// How long since a request was last routed to it.
    pub fn idle(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::AcqRel);
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        InFlight(self.clone())
    }
}

/// A request in flight on an instance: hold it until the answer (its body, its websocket)
/// ends; an instance with requests in flight is not retired before its drain window ends.
#[derive(Debug)]
pub struct InFlight(Arc<Route>);

impl InFlight {
    /// Where the instance listens.
    pub fn target(&self) -> &Target {
        &self.0.target
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        *self.0.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// The instances of one Space and its sessions.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    next_id: u64,
    live: HashMap<u64, Arc<Route>>,
    sessions: HashMap<String, (u64, Instant)>,
}

impl Routes {
    /// Registers an instance serving at `target`; returns its route.
    pub(crate) fn add(&mut self, target: Target) -> Arc<Route> {
        self.next_id += 1;
        let route = Arc::new(Route::new(self.next_id, target));
        self.live.insert(route.id, route.clone());
        route
    }

    /// Forgets an instance and its sessions (they go to the current instance from now on).
    pub(crate) fn remove(&mut self, id: u64) {
        self.live.remove(&id);
        self.sessions.retain(|_, (s, _)| *s != id);
    }

    pub(crate) fn clear(&mut self) {
        self.live.clear();
        self.sessions.clear();
    }

    /// The live instance `session` started on, if it is not `current`.
    pub(crate) fn elsewhere(&mut self, session: &str, current: Option<u64>) -> Option<InFlight> {
        let (id, seen) = self.sessions.get_mut(session)?;
        if Some(*id) == current {
            return None;
        }
        let route = self.live.get(id)?;
        *seen = Instant::now();
        Some(route.enter())
    }

    /// A request to the current instance `current`, binding `session` to it when the
    /// session is new (or its instance is gone).
    pub(crate) fn enter(&mut self, current: u64, session: Option<&str>) -> Option<InFlight> {
        let route = self.live.get(&current)?.clone();
        if let Some(session) = session {
            let now = Instant::now();
            if let Some(entry) = self.sessions.get_mut(session) {
                *entry = (current, now);
            } else {
                if self.sessions.len() >= MAX_SESSIONS {
                    let live = &self.live;
                    self.sessions.retain(|_, (id, seen)| {
                        live.contains_key(id) && seen.elapsed() < SESSION_TTL
                    });
                }
                if self.sessions.len() >= MAX_SESSIONS {
                    // Still full of recent sessions: drop the stalest one.
                    let oldest = self
                        .sessions
                        .iter()
                        .min_by_key(|(_, (_, seen))| *seen)
                        .map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        self.sessions.remove(&oldest);
                    }
                }
                self.sessions.insert(session.to_owned(), (current, now));
            }
        }
        Some(route.enter())
    }

    #[cfg(test)]
    fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

/// Whether `key` is usable as a session key (what gradio sends; anything else is ignored).
pub fn valid_session(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_SESSION_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(port: u16) -> Target {
        Target::App {
            port,
            keep_prefix: false,
        }
    }

    #[test]
    fn a_session_stays_on_the_instance_it_started_on() {
        let mut routes = Routes::default();
        let old = routes.add(app(1)).id;
        let a = routes.enter(old, Some("a")).expect("live");
        drop(a);
        // A new commit takes over.
        let new = routes.add(app(2)).id;
        let on_old = routes
            .elsewhere("a", Some(new))
            .expect("a started on the old one");
        assert_eq!(on_old.0.target, app(1));
        assert_eq!(on_old.0.active(), 1);
        // A new session goes to the current instance, and stays there.
        assert!(routes.elsewhere("b", Some(new)).is_none());
        let b = routes.enter(new, Some("b")).expect("live");
        assert_eq!(b.0.target, app(2));
        assert!(routes.elsewhere("b", Some(new)).is_none());
        drop(on_old);
        // Once the old one is retired its sessions move to the current one.
        routes.remove(old);
        assert!(routes.elsewhere("a", Some(new)).is_none());
        assert_eq!(routes.enter(new, Some("a")).expect("live").0.id, new);
    }

    #[test]
    fn in_flight_requests_are_counted_until_dropped() {
        let mut routes = Routes::default();
        let id = routes.add(app(1)).id;
        let route = routes.live[&id].clone();
        let (a, b) = (routes.enter(id, None), routes.enter(id, None));
        assert_eq!(route.active(), 2);
        drop(a);
        assert_eq!(route.active(), 1);
        drop(b);
        assert_eq!(route.active(), 0);
        assert!(route.idle() < Duration::from_secs(5));
        routes.remove(id);
        assert!(routes.enter(id, None).is_none());
    }

    #[test]
    fn the_session_table_is_bounded() {
        let mut routes = Routes::default();
        let id = routes.add(app(1)).id;
        for i in 0..MAX_SESSIONS + 100 {
            drop(routes.enter(id, Some(&format!("s{i}"))));
        }
        assert_eq!(routes.sessions(), MAX_SESSIONS);
        // The newest is kept.
        routes.add(app(2));
        let newest = format!("s{}", MAX_SESSIONS + 99);
        assert!(routes.elsewhere(&newest, Some(id + 1)).is_some());
    }

    #[test]
    fn session_keys_are_checked() {
        assert!(valid_session("a1b2c3d4e5f"));
        assert!(valid_session("0b6c1a8e-7f3d-4c59-9d3e-2f1a5b6c7d8e"));
        assert!(!valid_session(""));
        assert!(!valid_session("a b"));
        assert!(!valid_session(&"x".repeat(MAX_SESSION_KEY + 1)));
    }
}
