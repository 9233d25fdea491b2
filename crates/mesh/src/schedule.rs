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
//!
//! Swarming ([`Scheduler::swarming`], ADR 0016): providers may hold only part of the object
//! (they are fetching it too and serve the verified chunks they have). Each provider's
//! holdings ([`Holds`]) come from its answers to `BlockRequest::Have`; a batch goes only to
//! a provider that holds its first chunk, trimmed to the run it holds (the rest goes back).
//! The batch handed out is the *rarest* one (fewest usable providers hold it), ties broken at
//! random, so fetchers that start together ask the origin for different parts and then trade
//! them; among the idle holders of that batch, a peer (one that holds only part of the
//! object, or did during this fetch) is preferred to a seed (one that held it whole all
//! along: the origin), and a seed is asked only for what no usable peer holds, so the origin
//! is not asked for what others have.
//! The window is set by the caller (the whole object when verified batches go to a spool
//! rather than memory).
//!
//! Swarming batches are smaller ([`plan_swarming`]: at most [`SWARM_BATCH_CHUNKS`] chunks and
//! [`SWARM_BATCH_BYTES`] bytes, so up to [`SWARM_MAX_IN_FLIGHT`] of them fill the same
//! [`MAX_BYTES_IN_FLIGHT`]): a batch is what a peer must receive whole before it can pass it
//! on, and a link shared by a dozen requests serves a 4 MiB batch in tens of seconds. A
//! provider that is fetching the object also says which chunks it has asked for and not
//! received yet (`coming`, [`Scheduler::set_coming`]): a batch some usable partial provider
//! has coming is not asked of a whole holder (the origin) while this fetch has anything else
//! in flight, so the origin sends each part about once and the fetchers trade the rest. The
//! rarity of a batch counts its holders and those it is coming to; batches are taken span by
//! span ([`SWARM_SPAN_CHUNKS`]: lower spans first, the rarest within a span), so the import,
//! which needs the object in order, keeps up while the object arrives instead of reading
//! all of it at the end.

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
/// Pending batches a swarming scheduler looks at for each request (the lowest ones).
const MAX_SCANNED: usize = 4096;
/// Weight of the newest sample in the rate average.
const RATE_WEIGHT: f64 = 0.5;
/// Chunks in one swarming batch, at most (about 1 MiB of 64 KiB chunks).
pub(crate) const SWARM_BATCH_CHUNKS: u32 = 16;
/// Bytes in one swarming batch, at most (one chunk may be up to `MAX_CHUNK_LEN`, less).
pub(crate) const SWARM_BATCH_BYTES: usize = 1024 * 1024;
/// Swarming batches in flight at once for one object, over all its providers.
pub(crate) const SWARM_MAX_IN_FLIGHT: usize = MAX_BYTES_IN_FLIGHT / SWARM_BATCH_BYTES;
const _: () = assert!(
    SWARM_BATCH_BYTES >= hub_protocol::manifest::MAX_CHUNK_LEN as usize
        && SWARM_BATCH_CHUNKS <= MAX_CHUNKS_PER_REQUEST
        && SWARM_MAX_IN_FLIGHT > MAX_IN_FLIGHT
        && SWARM_MAX_IN_FLIGHT * SWARM_BATCH_BYTES <= MAX_BYTES_IN_FLIGHT
);
/// Swarming takes batches span by span: the rarest of the lowest span with one to ask for.
pub(crate) const SWARM_SPAN_CHUNKS: u32 = 1024;

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

/// What part of the object a provider holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Holds {
    /// All of it (assumed of providers nobody said otherwise of, outside swarming).
    #[default]
    All,
    /// The chunks whose flag is set (a prefix of the manifest's; missing ones are not held).
    Part(Vec<bool>),
}

impl Holds {
    /// From a `Have` bitmap (bit `i % 8` of byte `i / 8`) of an object of `chunks` chunks.
    pub(crate) fn from_bitmap(bits: &[u8], chunks: usize) -> Self {
        let held: Vec<bool> = (0..chunks)
            .map(|i| bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
            .collect();
        if held.iter().all(|&h| h) {
            Self::All
        } else {
            Self::Part(held)
        }
    }

    fn has(&self, chunk: u32) -> bool {
        match self {
            Self::All => true,
            Self::Part(held) => held.get(chunk as usize).copied().unwrap_or(false),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Provider {
    rate: Option<f64>,
    failures: u32,
    bad: bool,
    /// Requests in flight on it.
    busy: u32,
    holds: Holds,
    /// Chunks it said it has asked some peer for (swarming; empty otherwise).
    coming: Vec<bool>,
    /// It said it held only part of the object at some point (it was fetching it): a peer
    /// that finished, not a seed such as the origin.
    was_partial: bool,
}

impl Provider {
    fn usable(&self) -> bool {
        !self.bad && self.failures < MAX_FAILURES
    }

    /// Holds the whole object and never said otherwise: the origin, or a node that stored
    /// it before this fetch began. Swarming asks it only for what no peer can pass on.
    fn is_seed(&self) -> bool {
        self.holds == Holds::All && !self.was_partial
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
    /// How far past the frontier batches are handed out, in chunks.
    window: u32,
    /// Swarming: rarest batch first, ties broken by this generator (xorshift64); `None`:
    /// lowest batch first.
    rarest: Option<u64>,
    /// Requests in flight at once, at most.
    max_in_flight: usize,
}

/// Cuts the chunks not held locally into batches a provider answers in full.
pub(crate) fn plan(lens: &[u32], local: &[bool]) -> Vec<Batch> {
    plan_within(lens, local, MAX_CHUNKS_PER_REQUEST, MAX_BATCH_BYTES)
}

/// [`plan`] for a swarming fetch: batches of at most [`SWARM_BATCH_CHUNKS`] chunks and
/// [`SWARM_BATCH_BYTES`] bytes.
pub(crate) fn plan_swarming(lens: &[u32], local: &[bool]) -> Vec<Batch> {
    plan_within(lens, local, SWARM_BATCH_CHUNKS, SWARM_BATCH_BYTES)
}

fn plan_within(lens: &[u32], local: &[bool], max_chunks: u32, max_bytes: usize) -> Vec<Batch> {
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
                if batch.count < max_chunks && *bytes + len as usize <= max_bytes =>
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
            window: WINDOW_CHUNKS,
            rarest: None,
            max_in_flight: MAX_IN_FLIGHT,
        };
        for &peer in providers {
            scheduler.add_provider(peer);
        }
        scheduler
    }

    /// A scheduler for swarming: providers hold nothing until [`Scheduler::set_holds`] says
    /// otherwise, the rarest batch goes first (ties broken with `seed`), and batches are
    /// handed out up to `window` chunks past the frontier. `batches` come from
    /// [`plan_swarming`] (up to [`SWARM_MAX_IN_FLIGHT`] of them are in flight at once).
    pub(crate) fn swarming(
        batches: &[Batch],
        providers: &[PeerId],
        seed: u64,
        window: u32,
    ) -> Self {
        let mut scheduler = Self::new(batches, providers);
        for (_, p) in &mut scheduler.providers {
            p.holds = Holds::Part(Vec::new());
        }
        scheduler.window = window;
        scheduler.max_in_flight = SWARM_MAX_IN_FLIGHT;
        // splitmix64 of the seed: xorshift's first outputs from a small state grow with it.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        scheduler.rarest = Some((z ^ (z >> 31)) | 1);
        scheduler
    }

    /// What `peer` holds now (a no-op for a peer that is not a provider).
    pub(crate) fn set_holds(&mut self, peer: PeerId, holds: Holds) {
        if let Some((_, p)) = self.providers.iter_mut().find(|(p, _)| *p == peer) {
            p.was_partial |= holds != Holds::All;
            p.holds = holds;
        }
    }

    /// Which chunks `peer` has asked some peer for and not received yet (from its `Have`
    /// answer): a whole holder is not asked for them while this fetch has other requests in
    /// flight (a no-op for a peer that is not a provider).
    pub(crate) fn set_coming(&mut self, peer: PeerId, coming: Vec<bool>) {
        if let Some((_, p)) = self.providers.iter_mut().find(|(p, _)| *p == peer) {
            p.coming = coming;
        }
    }

    /// Usable providers not known to hold the whole object: whose holdings to ask about.
    pub(crate) fn partial_providers(&self) -> Vec<PeerId> {
        self.providers
            .iter()
            .filter(|(_, p)| p.usable() && p.holds != Holds::All)
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Providers that may still be asked (not dropped, not failed too often).
    pub(crate) fn usable_providers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.providers
            .iter()
            .filter(|(_, p)| p.usable())
            .map(|(peer, _)| *peer)
    }

    fn random(&mut self) -> u64 {
        let x = self.rarest.get_or_insert(1);
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// Adds a candidate (a no-op for one already known).
    pub(crate) fn add_provider(&mut self, peer: PeerId) {
        if !self.providers.iter().any(|(p, _)| *p == peer) {
            let holds = match self.rarest {
                Some(_) => Holds::Part(Vec::new()),
                None => Holds::All,
            };
            self.providers.push((
                peer,
                Provider {
                    holds,
                    ..Provider::default()
                },
            ));
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
    /// that holds it are both there. Call until `None`.
    pub(crate) fn next(&mut self, now: Instant, frontier: u32) -> Option<Assignment> {
        if self.in_flight.len() >= self.max_in_flight {
            return None;
        }
        let limit = frontier.saturating_add(self.window);
        let (first, count) = match self.rarest {
            None => {
                let (&first, &count) = self.pending.iter().next()?;
                (first, count)
            }
            Some(_) => self.rarest_batch(limit)?,
        };
        if first >= limit {
            return None;
        }
        let idle = |p: &Provider| p.usable() && p.busy < MAX_PER_PROVIDER && p.holds.has(first);
        // Outside swarming every provider is a seed; in it, a peer (one that holds part of
        // the object, or held part of it during this fetch) goes before a seed (the origin).
        let peer_idle = self.providers.iter().any(|(_, p)| idle(p) && !p.is_seed());
        let (peer, provider) = self
            .providers
            .iter_mut()
            .filter(|(_, p)| idle(p) && (!peer_idle || !p.is_seed()))
            // The first of equal scores wins: `max_by` keeps the last, so compare reversed.
            .rev()
            .max_by(|(_, a), (_, b)| a.share().total_cmp(&b.share()))?;
        // Only the run it holds from `first` on; the rest stays pending.
        let held = (first..first + count)
            .take_while(|&i| provider.holds.has(i))
            .count() as u32;
        provider.busy += 1;
        let peer = *peer;
        self.pending.remove(&first);
        if held < count {
            self.pending.insert(first + held, count - held);
        }
        let batch = Batch { first, count: held };
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.insert(id, (peer, batch, now));
        Some(Assignment { id, peer, batch })
    }

    /// Swarming: among the pending batches below `limit` that an idle usable provider may
    /// be asked for, one of the lowest span ([`SWARM_SPAN_CHUNKS`]) that the fewest usable
    /// providers hold or have coming (ties at random), if any. A seed (the origin) may be
    /// asked only for a batch no usable peer holds or has coming: the others wait for the
    /// peers, unless nothing is in flight here (so a false claim can slow a fetch, never
    /// stop it).
    fn rarest_batch(&mut self, limit: u32) -> Option<(u32, u32)> {
        let mut best: Option<(u32, usize, u64, u32, u32)> = None;
        let idle_here = self.in_flight.is_empty();
        let candidates: Vec<(u32, u32)> = self
            .pending
            .range(..limit)
            .take(MAX_SCANNED)
            .map(|(&f, &c)| (f, c))
            .collect();
        for (first, count) in candidates {
            let span = first / SWARM_SPAN_CHUNKS;
            if best.is_some_and(|(s, ..)| s < span) {
                // `pending` is in order: every later batch is in a later span.
                break;
            }
            let (mut holders, mut peers, mut coming) = (0, 0, 0);
            let (mut idle_peer, mut idle_seed) = (false, false);
            for (_, p) in self.providers.iter().filter(|(_, p)| p.usable()) {
                if p.holds.has(first) {
                    holders += 1;
                    let idle = p.busy < MAX_PER_PROVIDER;
                    if p.is_seed() {
                        idle_seed |= idle;
                    } else {
                        peers += 1;
                        idle_peer |= idle;
                    }
                } else if p.coming.get(first as usize).copied().unwrap_or(false) {
                    coming += 1;
                }
            }
            if !(idle_peer || idle_seed && (peers + coming == 0 || idle_here)) {
                continue;
            }
            let tie = self.random();
            let key = (span, holders + coming, tie);
            if best.is_none_or(|(s, r, t, _, _)| key < (s, r, t)) {
                best = Some((span, holders + coming, tie, first, count));
            }
        }
        best.map(|(_, _, _, first, count)| (first, count))
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

    fn part(n: usize, held: std::ops::Range<usize>) -> Holds {
        let mut bits = vec![false; n];
        bits[held].fill(true);
        Holds::Part(bits)
    }

    #[test]
    fn a_have_bitmap_reads_as_holdings() {
        assert_eq!(Holds::from_bitmap(&[0xff, 0x03], 10), Holds::All);
        let some = Holds::from_bitmap(&[0b0000_0101], 10);
        assert_eq!(
            some,
            Holds::Part(vec![
                true, false, true, false, false, false, false, false, false, false
            ])
        );
        // A short bitmap (or a NotFound, read as empty) holds nothing past its end.
        assert_eq!(Holds::from_bitmap(&[], 2), Holds::Part(vec![false, false]));
    }

    #[test]
    fn swarming_asks_only_holders_and_trims_to_the_run_they_hold() {
        let t = Instant::now();
        let ps = peers(2);
        let mut s = Scheduler::swarming(&batches(2), &ps, 7, u32::MAX);
        // Nobody said what it holds: nothing is asked.
        assert_eq!(s.next(t, 0), None);
        assert!(!s.is_stuck(), "holdings may still come");
        // Peer 0 holds chunks 0..40 only, peer 1 nothing.
        s.set_holds(ps[0], part(128, 0..40));
        s.set_holds(ps[1], part(128, 0..0));
        let a = s.next(t, 0).unwrap();
        assert_eq!(
            (a.peer, a.batch),
            (
                ps[0],
                Batch {
                    first: 0,
                    count: 40
                }
            )
        );
        assert_eq!(s.next(t, 0), None, "nobody holds 40..128");
        // Peer 1 gets the rest; the trimmed remainder and the second batch go to it.
        s.set_holds(ps[1], part(128, 40..128));
        let mut got: Vec<Batch> = std::iter::from_fn(|| s.next(t, 0))
            .map(|a| a.batch)
            .collect();
        // Equally rare: in the seed's order.
        got.sort_by_key(|b| b.first);
        assert_eq!(
            got,
            [
                Batch {
                    first: 40,
                    count: 24
                },
                Batch {
                    first: 64,
                    count: 64
                }
            ]
        );
        assert_eq!(s.partial_providers(), ps);
        s.set_holds(ps[0], Holds::All);
        assert_eq!(s.partial_providers(), [ps[1]]);
    }

    #[test]
    fn swarming_takes_the_rarest_batch_and_spares_the_origin() {
        let t = Instant::now();
        let ps = peers(3);
        let (origin, a, b) = (ps[0], ps[1], ps[2]);
        let mut s = Scheduler::swarming(&batches(4), &ps, 11, u32::MAX);
        s.set_holds(origin, Holds::All);
        // Batches 0 and 1 are held by a and b too, batch 2 by a, batch 3 by the origin only.
        s.set_holds(a, part(256, 0..192));
        s.set_holds(b, part(256, 0..128));
        // The rarest first: batch 3 (one holder, the origin), then batch 2 (two holders),
        // from `a` rather than the origin, then batches 0 and 1 (three), from `b` and `a`.
        let got: Vec<(PeerId, u32)> = std::iter::from_fn(|| s.next(t, 0))
            .map(|x| (x.peer, x.batch.first))
            .collect();
        assert_eq!(got[0], (origin, 192));
        assert_eq!(got[1], (a, 128));
        assert_eq!(got.len(), 4);
        assert!(got[2..].iter().all(|&(p, _)| p != origin), "{got:?}");
    }

    #[test]
    fn equally_rare_batches_are_taken_in_a_different_order_per_seed() {
        let t = Instant::now();
        let ps = peers(1);
        let order = |seed| {
            let mut s = Scheduler::swarming(&batches(16), &ps, seed, u32::MAX);
            s.set_holds(ps[0], Holds::All);
            s.next(t, 0).unwrap().batch.first
        };
        let firsts: std::collections::BTreeSet<u32> = (1..20).map(order).collect();
        assert!(firsts.len() > 3, "{firsts:?}");
    }

    #[test]
    fn a_corrupt_partial_holder_is_dropped_and_its_batch_goes_to_an_honest_one() {
        let t = Instant::now();
        let ps = peers(2);
        let (origin, liar) = (ps[0], ps[1]);
        let mut s = Scheduler::swarming(&batches(1), &ps, 3, u32::MAX);
        s.set_holds(origin, Holds::All);
        s.set_holds(liar, part(64, 0..64));
        // The partial holder goes first (the origin is spared), and lies.
        let a = s.next(t, 0).unwrap();
        assert_eq!(a.peer, liar);
        s.finish(a.id, t, Outcome::Bad);
        // Never asked again, whatever it claims to hold; the origin gets the batch.
        s.set_holds(liar, Holds::All);
        let b = s.next(t, 0).unwrap();
        assert_eq!((b.peer, b.batch), (origin, a.batch));
        assert_eq!(s.partial_providers(), Vec::<PeerId>::new());
        s.finish(
            b.id,
            t,
            Outcome::Served {
                chunks: 64,
                bytes: 1,
            },
        );
        assert!(s.is_done());
    }

    fn small(n: u32) -> Vec<Batch> {
        plan_swarming(
            &vec![65_536; (n * SWARM_BATCH_CHUNKS) as usize],
            &vec![false; (n * SWARM_BATCH_CHUNKS) as usize],
        )
    }

    #[test]
    fn swarming_batches_are_small_and_each_provider_s_pipeline_is_bounded() {
        // 1 MiB batches of 64 KiB chunks; 128 KiB chunks: eight to a batch.
        let planned = small(4);
        assert_eq!(planned.len(), 4);
        assert!(planned.iter().all(|b| b.count == SWARM_BATCH_CHUNKS));
        let big = plan_swarming(&[131_072; 20], &[false; 20]);
        assert_eq!(big.iter().map(|b| b.count).collect::<Vec<_>>(), [8, 8, 4]);
        // More small batches fly at once than big ones, each provider at most
        // `MAX_PER_PROVIDER` deep, the object at most `MAX_BYTES_IN_FLIGHT`.
        let t = Instant::now();
        let ps = peers(40);
        let mut s = Scheduler::swarming(&small(100), &ps, 5, u32::MAX);
        for &p in &ps {
            s.set_holds(p, part(1600, 0..1600));
        }
        let got: Vec<Assignment> = std::iter::from_fn(|| s.next(t, 0)).collect();
        assert_eq!(got.len(), SWARM_MAX_IN_FLIGHT);
        let mut s = Scheduler::swarming(&small(100), &ps[..3], 5, u32::MAX);
        for &p in &ps[..3] {
            s.set_holds(p, Holds::All);
        }
        let got: Vec<Assignment> = std::iter::from_fn(|| s.next(t, 0)).collect();
        assert_eq!(got.len(), 3 * MAX_PER_PROVIDER as usize);
        for &p in &ps[..3] {
            let depth = got.iter().filter(|a| a.peer == p).count();
            assert_eq!(depth, MAX_PER_PROVIDER as usize);
        }
    }

    #[test]
    fn what_a_peer_has_coming_is_not_asked_of_the_origin_while_anything_else_flies() {
        let t = Instant::now();
        let ps = peers(2);
        let (origin, peer) = (ps[0], ps[1]);
        let batches = small(3);
        let mut s = Scheduler::swarming(&batches, &ps, 9, u32::MAX);
        s.set_holds(origin, Holds::All);
        // The peer holds nothing yet and has batches 0 and 2 coming (from the origin).
        s.set_holds(peer, part(48, 0..0));
        let mut coming = vec![false; 48];
        coming[0..16].fill(true);
        coming[32..48].fill(true);
        s.set_coming(peer, coming);
        // Only batch 1 is the origin's to send here; the others are left to the peer.
        let a = s.next(t, 0).unwrap();
        assert_eq!((a.peer, a.batch), (origin, batches[1]));
        assert_eq!(s.next(t, 0), None);
        // Once the peer holds batch 0, it is asked for it (not the origin).
        s.set_holds(peer, part(48, 0..16));
        let b = s.next(t, 0).unwrap();
        assert_eq!((b.peer, b.batch), (peer, batches[0]));
        assert_eq!(s.next(t, 0), None, "batch 2 still waits for the peer");
        // With nothing in flight, a claim alone does not hold the fetch up: the origin is
        // asked for batch 2 after all.
        let served = Outcome::Served {
            chunks: 16,
            bytes: 1 << 20,
        };
        s.finish(a.id, t, served);
        s.finish(b.id, t, served);
        let c = s.next(t, 0).unwrap();
        assert_eq!((c.peer, c.batch), (origin, batches[2]));
    }

    #[test]
    fn swarming_takes_the_lowest_span_first_and_the_rarest_within_it() {
        let t = Instant::now();
        let ps = peers(3);
        let (origin, a, b) = (ps[0], ps[1], ps[2]);
        let n = 2 * SWARM_SPAN_CHUNKS / SWARM_BATCH_CHUNKS;
        let batches = small(n);
        let chunks = (n * SWARM_BATCH_CHUNKS) as usize;
        let span = SWARM_SPAN_CHUNKS as usize;
        let mut s = Scheduler::swarming(&batches, &ps, 13, u32::MAX);
        s.set_holds(origin, Holds::All);
        // The first span is held by a and b too except its last batch, held by a; the
        // second span by the origin only (rarer, but later).
        s.set_holds(a, part(chunks, 0..span));
        s.set_holds(b, part(chunks, 0..span - 16));
        let first = s.next(t, 0).unwrap();
        assert_eq!((first.peer, first.batch.first), (a, SWARM_SPAN_CHUNKS - 16));
        let rest: Vec<Assignment> = std::iter::from_fn(|| s.next(t, 0)).collect();
        // The first span is drawn from a and b; once they are busy, the origin sends the
        // second span (nothing of it is coming elsewhere).
        for x in &rest {
            if x.batch.first < SWARM_SPAN_CHUNKS {
                assert_ne!(x.peer, origin, "{x:?}");
            } else {
                assert_eq!(x.peer, origin, "{x:?}");
            }
        }
        assert_eq!(
            rest.iter().filter(|x| x.peer == origin).count(),
            MAX_PER_PROVIDER as usize
        );
    }
}
