//! Multi-source scheduling of one LFS object's chunk batches: which batch goes to which
//! provider, and what happens when one is slow, fails or lies.
//!
//! A plain state machine fed events and a clock (STYLE: sans-IO), driven by
//! `lfs::fetch_object`, which does the requests. The object's missing chunks are cut into
//! batches (runs of missing chunks, at most [`MAX_CHUNKS_PER_REQUEST`] chunks and
//! [`MAX_BATCH_BYTES`] bytes, so a provider answers each in full). Up to [`MAX_IN_FLIGHT`]
//! batches are in flight at once (so at most [`MAX_BYTES_IN_FLIGHT`] bytes), up to
//! [`MAX_PER_PROVIDER`] of them on one provider: pipelined, so a provider reads and sends the
//! next batch while the requester receives and verifies the last one. The lowest pending batch
//! goes to the provider with the best score per request it already has in flight, so idle
//! providers are asked first and a fast one then takes more. A provider's score is its
//! measured rate (bytes over the time from request to verified answer, an exponential moving
//! average, so latency counts) divided by `(1 + failures)²`; a provider not measured yet
//! scores [`UNMEASURED`], above any real rate, so every candidate is tried once and the fast
//! ones then win. A failure (no answer, `NotFound`, a transport error) counts against the
//! provider and puts the batch back; after [`MAX_FAILURES`] the provider is not asked again
//! for this object. A provider that sent a chunk that failed verification is dropped at once.
//! Batches are only handed out within [`WINDOW_CHUNKS`] of the import frontier (the first
//! chunk not yet passed on in order), which bounds the reorder buffer when one provider is
//! slower than the others.

use hub_protocol::blocks::{MAX_BATCH_BYTES, MAX_CHUNKS_PER_REQUEST};
use libp2p::PeerId;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Bytes of batches in flight at once for one object, at most (each batch holds at most
/// [`MAX_BATCH_BYTES`], see [`plan`]).
pub(crate) const MAX_BYTES_IN_FLIGHT: usize = 32 * 1024 * 1024;
/// Batches in flight at once for one object, over all its providers.
pub(crate) const MAX_IN_FLIGHT: usize = MAX_BYTES_IN_FLIGHT / MAX_BATCH_BYTES;
const _: () = assert!(MAX_IN_FLIGHT >= 1 && MAX_IN_FLIGHT * MAX_BATCH_BYTES <= MAX_BYTES_IN_FLIGHT);
/// Batches in flight at once on one provider for one object. A provider serves at most 8
/// requests of one peer at once (`replicate::MAX_SERVING_PER_PEER`), so up to four objects
/// can be fetched from it at the same time.
pub(crate) const MAX_PER_PROVIDER: u32 = 2;
/// How far past the import frontier batches are handed out, in chunks.
pub(crate) const WINDOW_CHUNKS: u32 = 8 * MAX_CHUNKS_PER_REQUEST;
/// Failures after which a provider is not asked again for this object.
pub(crate) const MAX_FAILURES: u32 = 3;
/// The score of a provider with no measured rate (bytes per second): higher than any real one.
pub(crate) const UNMEASURED: f64 = 1e15;
/// Weight of the newest sample in the rate average.
const RATE_WEIGHT: f64 = 0.5;

/// Chunks `first..first + count` of the object's manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    pub first: u32,
    pub count: u32,
}

/// A request to make: `batch` from `peer`, reported back with [`Scheduler::finish`] and `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Assignment {
    pub id: u64,
    pub peer: PeerId,
    pub batch: Batch,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The first `chunks` chunks of the batch arrived and verified (`bytes` in all); a short
    /// answer puts the rest back.
    Served { chunks: u32, bytes: u64 },
    /// No usable answer (unreachable, `NotFound`, timeout): counts against the provider.
    Failed,
    /// A chunk failed verification: the provider is dropped for this object.
    Bad,
}

#[derive(Debug, Clone, Default)]
struct Provider {
    rate: Option<f64>,
    failures: u32,
    bad: bool,
    /// Requests in flight on it.
    busy: u32,
}

impl Provider {
    fn usable(&self) -> bool {
        !self.bad && self.failures < MAX_FAILURES
    }

    fn score(&self) -> f64 {
        let penalty = f64::from(1 + self.failures);
        // Unmeasured: optimistic until it fails, then a last resort.
        let rate = match (self.rate, self.failures) {
            (Some(rate), _) => rate,
            (None, 0) => UNMEASURED,
            (None, _) => 1.0,
        };
        rate / (penalty * penalty)
    }

    /// The score shared with the requests already in flight on it: who gets the next one.
    fn share(&self) -> f64 {
        self.score() / f64::from(1 + self.busy)
    }
}

/// Plans and tracks the batches of one object.
#[derive(Debug)]
pub(crate) struct Scheduler {
    /// Batches not assigned yet: first chunk → count.
    pending: BTreeMap<u32, u32>,
    in_flight: HashMap<u64, (PeerId, Batch, Instant)>,
    /// Providers in order of preference (ties go to the earlier one).
    providers: Vec<(PeerId, Provider)>,
    next_id: u64,
}

/// Cuts the chunks not held locally into batches a provider answers in full.
pub(crate) fn plan(lens: &[u32], local: &[bool]) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut current: Option<(Batch, usize)> = None;
    for (i, (&len, &have)) in lens.iter().zip(local).enumerate() {
        let i = i as u32;
        if have {
            out.extend(current.take().map(|(b, _)| b));
            continue;
        }
        match &mut current {
            Some((batch, bytes))
                if batch.count < MAX_CHUNKS_PER_REQUEST
                    && *bytes + len as usize <= MAX_BATCH_BYTES =>
            {
                batch.count += 1;
                *bytes += len as usize;
            }
            _ => {
                out.extend(current.take().map(|(b, _)| b));
                current = Some((Batch { first: i, count: 1 }, len as usize));
            }
        }
    }
    out.extend(current.map(|(b, _)| b));
    out
}

impl Scheduler {
    pub(crate) fn new(batches: &[Batch], providers: &[PeerId]) -> Self {
        let mut scheduler = Self {
            pending: batches.iter().map(|b| (b.first, b.count)).collect(),
            in_flight: HashMap::new(),
            providers: Vec::new(),
            next_id: 0,
        };
        for &peer in providers {
            scheduler.add_provider(peer);
        }
        scheduler
    }

    /// Adds a candidate (a no-op for one already known).
    pub(crate) fn add_provider(&mut self, peer: PeerId) {
        if !self.providers.iter().any(|(p, _)| *p == peer) {
            self.providers.push((peer, Provider::default()));
        }
    }

    /// Every batch arrived.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn is_done(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The next request to make, if a batch within the window and an idle usable provider
    /// are both there. Call until `None`.
    pub(crate) fn next(&mut self, now: Instant, frontier: u32) -> Option<Assignment> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let (&first, &count) = self.pending.iter().next()?;
        if first >= frontier.saturating_add(WINDOW_CHUNKS) {
            return None;
        }
        let (peer, provider) = self
            .providers
            .iter_mut()
            .filter(|(_, p)| p.usable() && p.busy < MAX_PER_PROVIDER)
            // The first of equal scores wins: `max_by` keeps the last, so compare reversed.
            .rev()
            .max_by(|(_, a), (_, b)| a.share().total_cmp(&b.share()))?;
        provider.busy += 1;
        let peer = *peer;
        self.pending.remove(&first);
        let batch = Batch { first, count };
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.insert(id, (peer, batch, now));
        Some(Assignment { id, peer, batch })
    }

    /// Records how request `id` ended; unknown ids are ignored.
    pub(crate) fn finish(&mut self, id: u64, now: Instant, outcome: Outcome) {
        let Some((peer, batch, started)) = self.in_flight.remove(&id) else {
            return;
        };
        let Some((_, provider)) = self.providers.iter_mut().find(|(p, _)| *p == peer) else {
            return;
        };
        provider.busy = provider.busy.saturating_sub(1);
        match outcome {
            Outcome::Served { chunks, bytes } if chunks > 0 => {
                let elapsed = now
                    .saturating_duration_since(started)
                    .max(Duration::from_millis(1));
                let sample = bytes as f64 / elapsed.as_secs_f64();
                provider.rate = Some(match provider.rate {
                    Some(rate) => rate * (1.0 - RATE_WEIGHT) + sample * RATE_WEIGHT,
                    None => sample,
                });
                let chunks = chunks.min(batch.count);
                if chunks < batch.count {
                    self.pending
                        .insert(batch.first + chunks, batch.count - chunks);
                }
            }
            Outcome::Served { .. } | Outcome::Failed => {
                provider.failures += 1;
                self.pending.insert(batch.first, batch.count);
            }
            Outcome::Bad => {
                provider.bad = true;
                self.pending.insert(batch.first, batch.count);
            }
        }
    }

    /// Whether no request can be made now or later: batches remain, none is in flight, and
    /// no provider is usable. (New providers make it false again.)
    pub(crate) fn is_stuck(&self) -> bool {
        !self.pending.is_empty()
            && self.in_flight.is_empty()
            && !self.providers.iter().any(|(_, p)| p.usable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn batches(n: u32) -> Vec<Batch> {
        (0..n)
            .map(|i| Batch {
                first: i * 64,
                count: 64,
            })
            .collect()
    }

    #[test]
    fn plan_skips_local_chunks_and_bounds_batches() {
        let lens = vec![65_536u32; 200];
        let mut local = vec![false; 200];
        local[10..20].fill(true);
        let planned = plan(&lens, &local);
        assert_eq!(
            planned,
            [
                Batch {
                    first: 0,
                    count: 10
                },
                Batch {
                    first: 20,
                    count: 64
                },
                Batch {
                    first: 84,
                    count: 64
                },
                Batch {
                    first: 148,
                    count: 52
                },
            ]
        );
        // Big chunks: the byte bound cuts first (4 MiB / 128 KiB = 32 chunks).
        let big = plan(&[131_072; 40], &[false; 40]);
        assert_eq!(
            big[0],
            Batch {
                first: 0,
                count: 32
            }
        );
        assert_eq!(
            big[1],
            Batch {
                first: 32,
                count: 8
            }
        );
        assert!(plan(&[1, 2], &[true, true]).is_empty());
    }

    #[test]
    fn batches_spread_over_idle_providers_up_to_the_limit() {
        let t = Instant::now();
        let ps = peers(6);
        let mut s = Scheduler::new(&batches(20), &ps);
        let got: Vec<Assignment> = std::iter::from_fn(|| s.next(t, 0)).collect();
        assert_eq!(got.len(), MAX_IN_FLIGHT);
        // Every idle provider first, in preference order, then a second request each.
        let used: Vec<PeerId> = got.iter().map(|a| a.peer).collect();
        assert_eq!(used[..6], ps[..]);
        assert_eq!(used[6..], ps[..MAX_IN_FLIGHT - 6]);
        assert_eq!(got[0].batch.first, 0);
        assert_eq!(got[2].batch.first, 128);
    }

    #[test]
    fn one_provider_is_pipelined_up_to_its_limit() {
        let t = Instant::now();
        let ps = peers(1);
        let mut s = Scheduler::new(&batches(10), &ps);
        let got: Vec<Assignment> = std::iter::from_fn(|| s.next(t, 0)).collect();
        assert_eq!(got.len(), MAX_PER_PROVIDER as usize);
        assert!(got.iter().all(|a| a.peer == ps[0]));
        assert_eq!(s.in_flight(), MAX_PER_PROVIDER as usize);
        // Each answer frees one place, and the next batch in order takes it.
        let served = Outcome::Served {
            chunks: 64,
            bytes: 4 << 20,
        };
        s.finish(got[0].id, t + Duration::from_millis(5), served);
        let next = s.next(t, 0).unwrap();
        assert_eq!(next.batch.first, 64 * MAX_PER_PROVIDER);
        assert_eq!(s.next(t, 0), None);
        // A failure also frees its place; the batch goes back and is asked for again first.
        s.finish(got[1].id, t, Outcome::Failed);
        assert_eq!(s.next(t, 0).unwrap().batch, got[1].batch);
    }

    #[test]
    fn a_fast_provider_takes_a_second_request_before_a_slow_one_is_idle() {
        let t = Instant::now();
        let ps = peers(3);
        let mut s = Scheduler::new(&batches(20), &ps);
        let first: Vec<Assignment> = (0..3).map(|_| s.next(t, 0).unwrap()).collect();
        // Measure: peer 0 at 400 MB/s, peer 1 at 40 MB/s, peer 2 at 100 MB/s.
        for (a, ms) in first.iter().zip([10, 100, 40]) {
            s.finish(
                a.id,
                t + Duration::from_millis(ms),
                Outcome::Served {
                    chunks: 64,
                    bytes: 4_000_000,
                },
            );
        }
        let order: Vec<PeerId> = std::iter::from_fn(|| s.next(t, 192))
            .map(|a| a.peer)
            .collect();
        // 400, then 400/2 = 200 before 100, then 100, then 100/2 = 50 before 40, then 40s.
        assert_eq!(order, [ps[0], ps[0], ps[2], ps[2], ps[1], ps[1]]);
    }

    #[test]
    fn the_faster_provider_gets_more_batches() {
        let t = Instant::now();
        let ps = peers(2);
        let mut s = Scheduler::new(&batches(40), &ps);
        let mut served = HashMap::<PeerId, u32>::new();
        let mut now = t;
        // Peer 0 answers in 10 ms, peer 1 in 100 ms; a virtual clock orders completions.
        let mut flying: Vec<(Instant, Assignment)> = Vec::new();
        while !s.is_done() {
            while let Some(a) = s.next(now, u32::MAX - WINDOW_CHUNKS) {
                let ms = if a.peer == ps[0] { 10 } else { 100 };
                flying.push((now + Duration::from_millis(ms), a));
            }
            flying.sort_by_key(|(at, _)| *at);
            let (at, a) = flying.remove(0);
            now = at;
            *served.entry(a.peer).or_default() += 1;
            s.finish(
                a.id,
                now,
                Outcome::Served {
                    chunks: a.batch.count,
                    bytes: 4 << 20,
                },
            );
        }
        assert!(served[&ps[0]] > 4 * served[&ps[1]], "{served:?}");
        assert!(served[&ps[1]] >= 1);
    }

    #[test]
    fn failures_and_bad_chunks_move_the_batch_elsewhere() {
        let t = Instant::now();
        let ps = peers(3);
        let mut s = Scheduler::new(&batches(2), &ps);
        let a = s.next(t, 0).unwrap();
        let b = s.next(t, 0).unwrap();
        assert_eq!((a.peer, b.peer), (ps[0], ps[1]));
        // Peer 0 sends a bad chunk: its batch goes to peer 2, and peer 0 is never asked again.
        s.finish(a.id, t, Outcome::Bad);
        let retry = s.next(t, 0).unwrap();
        assert_eq!((retry.peer, retry.batch), (ps[2], a.batch));
        assert_eq!(s.next(t, 0), None, "every usable provider is busy");
        // Peer 1 fails (unreachable); its batch waits for an idle provider: peer 2 first.
        s.finish(b.id, t, Outcome::Failed);
        s.finish(
            retry.id,
            t,
            Outcome::Served {
                chunks: 64,
                bytes: 1 << 20,
            },
        );
        let again = s.next(t, 0).unwrap();
        assert_eq!((again.peer, again.batch), (ps[2], b.batch));
        s.finish(
            again.id,
            t,
            Outcome::Served {
                chunks: 64,
                bytes: 1 << 20,
            },
        );
        assert!(s.is_done());
    }

    #[test]
    fn short_answers_requeue_the_rest_and_dead_providers_end_the_fetch() {
        let t = Instant::now();
        let ps = peers(1);
        let mut s = Scheduler::new(&batches(1), &ps);
        let a = s.next(t, 0).unwrap();
        s.finish(
            a.id,
            t,
            Outcome::Served {
                chunks: 40,
                bytes: 1,
            },
        );
        let rest = s.next(t, 0).unwrap();
        assert_eq!(
            rest.batch,
            Batch {
                first: 40,
                count: 24
            }
        );
        for _ in 0..MAX_FAILURES {
            assert!(!s.is_stuck());
            let id = s.next(t, 0).map_or(rest.id, |x| x.id);
            s.finish(id, t, Outcome::Failed);
        }
        assert!(s.is_stuck());
        assert_eq!(s.next(t, 0), None);
        // A new provider (from the DHT, say) un-sticks it.
        let fresh = PeerId::random();
        s.add_provider(fresh);
        assert!(!s.is_stuck());
        assert_eq!(s.next(t, 0).unwrap().peer, fresh);
    }

    #[test]
    fn batches_beyond_the_window_wait_for_the_frontier() {
        let t = Instant::now();
        let ps = peers(3);
        let far = Batch {
            first: WINDOW_CHUNKS + 5,
            count: 1,
        };
        let mut s = Scheduler::new(&[far], &ps);
        assert_eq!(s.next(t, 0), None);
        assert_eq!(s.next(t, 6).unwrap().batch, far);
    }
}
