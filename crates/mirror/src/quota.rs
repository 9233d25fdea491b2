//! The site's quota: what the mirror pulled, how much room it takes, and which of it goes
//! first when a pull would exceed `[mirror] quota` (least recently used, never pinned).
//!
//! The mirror tracks the LFS objects it pulled from the upstream (or adopted from the store
//! for another mirrored repo): size, the repos that reference them, and when each was last
//! used (pulled, or served from the store: [`hub_core::MeshPort::lfs_served`]). Only those
//! count toward the quota and only those are ever evicted: a file uploaded to this node or
//! imported from a bundle is the site's own. Usage is logical bytes (the objects' sizes), the
//! figure an admin sets a quota in; chunk dedup only makes the disk use lower.
//!
//! Eviction removes the objects from the chunk store through its gc
//! ([`hub_store::Store::remove_files`]), so chunks other files share stay, and a file a reader
//! is streaming ([`hub_store::Lease`]) stays until the reader is done. The repo's git data
//! stays: its pointers make an evicted object "missing content" again, which the next read
//! pulls from the upstream (same SHA-256, verified).
//!
//! This module is the bookkeeping only (no I/O): [`Usage`] is saved as `objects.json` by the
//! mirror. Recency is a logical clock (one tick per use) so that uses within one second keep
//! their order; the wall-clock time of the last use is kept for display.

use hub_store::Sha256;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One object the mirror pulled.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectUse {
    pub size: u64,
    /// The mirrored repos (`type/ns/name`) that reference it.
    pub repos: BTreeSet<String>,
    /// Logical time of the last use (larger: more recent).
    pub used: u64,
    /// Unix seconds of the last use.
    pub used_at: u64,
}

/// The objects the mirror pulled, by SHA-256 (hex).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    clock: u64,
    objects: BTreeMap<String, ObjectUse>,
    /// Bytes of pulls in flight, counted against the quota until they are recorded.
    #[serde(skip)]
    reserved: u64,
}

impl Usage {
    /// Records that `sha256` (of `size` bytes) is stored for `repo`, used now.
    pub fn record(&mut self, sha256: &Sha256, size: u64, repo: &str, now: u64) {
        self.clock += 1;
        let entry = self
            .objects
            .entry(sha256.to_string())
            .or_insert_with(|| ObjectUse {
                size,
                repos: BTreeSet::new(),
                used: 0,
                used_at: 0,
            });
        entry.repos.insert(repo.to_owned());
        entry.used = self.clock;
        entry.used_at = now;
    }

    /// Marks `sha256` used now; `false` when the mirror does not track it.
    pub fn touch(&mut self, sha256: &Sha256, now: u64) -> bool {
        let Some(entry) = self.objects.get_mut(&sha256.to_string()) else {
            return false;
        };
        self.clock += 1;
        entry.used = self.clock;
        entry.used_at = now;
        true
    }

    /// Stops tracking `sha256` (it was evicted).
    pub fn forget(&mut self, sha256: &Sha256) -> Option<ObjectUse> {
        self.objects.remove(&sha256.to_string())
    }

    pub fn get(&self, sha256: &Sha256) -> Option<&ObjectUse> {
        self.objects.get(&sha256.to_string())
    }

    /// Bytes of the tracked objects.
    pub fn bytes(&self) -> u64 {
        self.objects.values().map(|o| o.size).sum()
    }

    /// Bytes of the tracked objects plus the pulls in flight.
    pub fn committed(&self) -> u64 {
        self.bytes() + self.reserved
    }

    pub fn reserve(&mut self, size: u64) {
        self.reserved += size;
    }

    pub fn release(&mut self, size: u64) {
        self.reserved = self.reserved.saturating_sub(size);
    }

    /// The tracked objects, most recently used first.
    pub fn objects(&self) -> Vec<(Sha256, &ObjectUse)> {
        let mut out: Vec<(Sha256, &ObjectUse)> = self
            .objects
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
            .collect();
        out.sort_by_key(|(_, o)| std::cmp::Reverse(o.used));
        out
    }

    /// What to evict so that `need` more bytes fit under `quota`: the least recently used
    /// objects first, skipping those `keep` names (pinned, being read or fetched). May fall
    /// short when the kept ones alone are too many; the caller checks the result.
    pub fn victims(
        &self,
        quota: u64,
        need: u64,
        keep: impl Fn(&Sha256, &ObjectUse) -> bool,
    ) -> Vec<Sha256> {
        let mut total = self.committed().saturating_add(need);
        let mut out = Vec::new();
        let mut oldest = self.objects();
        oldest.reverse();
        for (sha, o) in oldest {
            if total <= quota {
                break;
            }
            if keep(&sha, o) {
                continue;
            }
            total -= o.size.min(total);
            out.push(sha);
        }
        out
    }
}

/// Parses a quota: a number of bytes, or a number with a unit (`B`, `KB`, `MB`, `GB`, `TB`
/// in powers of 1000, `KiB`, `MiB`, `GiB`, `TiB` in powers of 1024), e.g. `"20GiB"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    let bad = || format!("{text:?} is not a size (bytes, or e.g. \"500MB\", \"20GiB\")");
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(n: u8) -> Sha256 {
        Sha256([n; 32])
    }

    #[test]
    fn victims_are_the_least_recently_used_that_are_not_kept() {
        let mut u = Usage::default();
        u.record(&sha(1), 100, "models/a/one", 10);
        u.record(&sha(2), 100, "models/a/two", 11);
        u.record(&sha(3), 100, "models/a/pinned", 12);
        u.record(&sha(4), 100, "models/a/four", 13);
        // 1 is used again: 2 is now the oldest.
        assert!(u.touch(&sha(1), 14));
        assert!(!u.touch(&sha(9), 14));
        assert_eq!(u.bytes(), 400);
        let pinned = |_: &Sha256, o: &ObjectUse| o.repos.contains("models/a/pinned");
        // Room for 150 more under 400: two objects go, oldest first, the pinned one skipped.
        assert_eq!(u.victims(400, 150, pinned), vec![sha(2), sha(4)]);
        // Nothing to do under the quota.
        assert!(u.victims(500, 100, pinned).is_empty());
        // Everything but the pinned one is not enough for 350 under 400: all three, short.
        let v = u.victims(400, 350, pinned);
        assert_eq!(v, vec![sha(2), sha(4), sha(1)]);
        // In-flight pulls count.
        u.reserve(100);
        assert_eq!(u.victims(450, 0, pinned), vec![sha(2)]);
        u.release(100);
        assert_eq!(u.forget(&sha(2)).map(|o| o.size), Some(100));
        assert_eq!(u.bytes(), 300);
        let order: Vec<Sha256> = u.objects().into_iter().map(|(s, _)| s).collect();
        assert_eq!(order, vec![sha(1), sha(4), sha(3)]);
    }

    #[test]
    fn usage_survives_a_save() {
        let mut u = Usage::default();
        u.record(&sha(1), 7, "models/a/one", 10);
        u.record(&sha(1), 7, "datasets/a/two", 11);
        let back: Usage = serde_json::from_slice(&serde_json::to_vec(&u).unwrap()).unwrap();
        assert_eq!(back.get(&sha(1)), u.get(&sha(1)));
        assert_eq!(back.get(&sha(1)).unwrap().repos.len(), 2);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("1.5 MB"), Ok(1_500_000));
        assert_eq!(parse_size("12345"), Ok(12345));
        assert_eq!(parse_size("3mib"), Ok(3 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("").is_err());
    }
}
