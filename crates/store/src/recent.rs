//! Chunks this process verified on read a moment ago: the one case where a read skips the
//! BLAKE3 check (ADR 0001, "Serving").
//!
//! Every chunk a [`crate::FileReader`] returns is checked against its id, except one that the
//! same store handle read *from the same block* and found good less than
//! [`crate::StoreConfig::reverify_after`] ago. Many clients pulling the same weights at once
//! (a fleet of workers starting on one model) then cost one BLAKE3 pass per window, not one
//! per download. What is traded: a byte that rots on disk inside that window is served
//! unchecked until the window ends; the next read after it, a restart (the set lives in
//! memory only), and `fsck` (which never consults it) all catch it. Peers never rely on it:
//! the blob endpoint reads chunks unchecked and verifies them through their bao tree, and the
//! receiver checks every 16 KiB group again.
//!
//! The set is bounded ([`CAPACITY`] entries, about 7 MB): when it is full, expired entries
//! are dropped, and if none are, new ones are not remembered (those chunks are simply hashed
//! again next time).

use hub_protocol::manifest::Hash;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most chunks remembered at once: 64 Ki entries, 4 GiB of 64 KiB chunks.
pub const CAPACITY: usize = 1 << 16;

/// When each `(chunk id, block id)` was last verified.
#[derive(Debug)]
pub(crate) struct Recent {
    window: Duration,
    seen: Mutex<HashMap<(Hash, Hash), Instant>>,
}

impl Recent {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `chunk`, stored in `block`, was verified less than the window ago.
    pub(crate) fn fresh(&self, chunk: &Hash, block: &Hash) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.get(&(*chunk, *block))
            .is_some_and(|at| at.elapsed() < self.window)
    }

    /// Records that `chunk`, stored in `block`, was just hashed and found good.
    pub(crate) fn verified(&self, chunk: &Hash, block: &Hash) {
        if self.window.is_zero() {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() >= CAPACITY && !seen.contains_key(&(*chunk, *block)) {
            let window = self.window;
            seen.retain(|_, at| at.elapsed() < window);
            if seen.len() >= CAPACITY {
                return;
            }
        }
        seen.insert((*chunk, *block), Instant::now());
    }

    /// Forgets everything (after `fsck` moved blocks to quarantine, or `gc` deleted them).
    pub(crate) fn clear(&self) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_are_per_block_and_stay_bounded() {
        let r = Recent::new(Duration::from_millis(200));
        let (a, b, blk, other) = (Hash([1; 32]), Hash([2; 32]), Hash([3; 32]), Hash([4; 32]));
        assert!(!r.fresh(&a, &blk));
        r.verified(&a, &blk);
        assert!(r.fresh(&a, &blk));
        assert!(
            !r.fresh(&a, &other),
            "the same chunk in another block is not vouched for"
        );
        assert!(!r.fresh(&b, &blk));
        let t = Instant::now();
        while r.fresh(&a, &blk) {
            assert!(t.elapsed() < Duration::from_secs(5), "never expired");
            std::thread::yield_now();
        }
        assert!(t.elapsed() >= Duration::from_millis(100));

        let off = Recent::new(Duration::ZERO);
        off.verified(&a, &blk);
        assert!(!off.fresh(&a, &blk), "a zero window remembers nothing");

        let full = Recent::new(Duration::from_secs(3600));
        for i in 0..CAPACITY + 10 {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            full.verified(&Hash(id), &blk);
        }
        assert_eq!(full.seen.lock().unwrap().len(), CAPACITY);
        full.clear();
        assert!(full.seen.lock().unwrap().is_empty());
    }
}
