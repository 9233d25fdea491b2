//! The mirror's side of the quota ([`crate::quota`]): recording uses, making room before a
//! pull, and the admin's eviction.
//!
//! Locks: `evicting` serialises evictions (a pull's and the admin's), so two pulls cannot
//! both count the same free room; `usage` is held only to read or change the bookkeeping,
//! never across the store's gc (the gateway touches it on every served GET).

use crate::quota::ObjectUse;
use crate::{Mirror, OBJECTS_FILE, lock, parse_full_id, policy, unix_now, write_atomic};
use hub_protocol::repo::RepoId;
use hub_store::Sha256;
use serde::Serialize;
use serde_json::json;

/// What an eviction did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Eviction {
    /// The quota it evicted down to (bytes).
    pub quota: u64,
    /// Objects removed (SHA-256, least recently used first).
    pub evicted: Vec<String>,
    /// Their bytes.
    pub evicted_bytes: u64,
    /// Bytes of block files the store deleted (less when chunks are shared with kept files).
    pub freed_bytes: u64,
    /// Objects that would have gone but were kept because a reader was streaming them.
    pub in_use: Vec<String>,
    /// Bytes of pulled content after the eviction.
    pub usage: u64,
}

/// One pulled object, for `GET /api/mirror`.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectRow {
    pub sha256: String,
    pub size: u64,
    pub repos: Vec<String>,
    /// Unix seconds of the last use.
    pub used_at: u64,
    pub pinned: bool,
}

/// The quota and what counts toward it.
#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    pub quota: Option<u64>,
    /// Bytes of LFS content pulled from the upstream and held here.
    pub bytes: u64,
    /// Of which pinned (never evicted).
    pub pinned_bytes: u64,
    /// Most recently used first.
    pub objects: Vec<ObjectRow>,
}

impl Mirror {
    /// The configured quota, if any.
    pub fn quota(&self) -> Option<u64> {
        self.inner.config.quota
    }

    /// Whether a repo (`type/ns/name`) is pinned by the policy.
    fn pinned_repo(&self, repo: &str) -> bool {
        parse_full_id(repo).is_some_and(|id| {
            matches!(self.verdict(&id), policy::Verdict::Allowed { pinned: true })
        })
    }

    fn pinned(&self, o: &ObjectUse) -> bool {
        o.repos.iter().any(|r| self.pinned_repo(r))
    }

    /// Marks a pulled object used now (it was served from the store).
    pub fn touch(&self, sha256: &Sha256) {
        lock(&self.inner.usage).touch(sha256, unix_now());
    }

    /// Records that `sha256` is stored for `id` (pulled, or adopted from the store).
    pub(crate) fn record_use(&self, id: &RepoId, sha256: &Sha256, size: u64) {
        lock(&self.inner.usage).record(sha256, size, &id.to_string(), unix_now());
        self.save_usage();
    }

    fn save_usage(&self) {
        let bytes = serde_json::to_vec_pretty(&*lock(&self.inner.usage)).unwrap_or_default();
        if let Err(error) = write_atomic(&self.inner.config.dir.join(OBJECTS_FILE), &bytes) {
            tracing::warn!(%error, "could not save the mirror's object list");
        }
    }

    /// The quota, the bytes counting toward it, and the objects (most recent first).
    pub fn usage(&self) -> UsageReport {
        let usage = lock(&self.inner.usage).clone();
        let mut report = UsageReport {
            quota: self.quota(),
            bytes: usage.bytes(),
            pinned_bytes: 0,
            objects: Vec::new(),
        };
        for (sha, o) in usage.objects() {
            let pinned = self.pinned(o);
            if pinned {
                report.pinned_bytes += o.size;
            }
            report.objects.push(ObjectRow {
                sha256: sha.to_string(),
                size: o.size,
                repos: o.repos.iter().cloned().collect(),
                used_at: o.used_at,
                pinned,
            });
        }
        report
    }

    /// Before a pull of `need` bytes (blocking): evicts what the quota requires and reserves
    /// the room, or says why there is none (what is left is pinned or being read).
    pub(crate) fn make_room(&self, sha256: &Sha256, need: u64) -> Result<(), String> {
        let Some(quota) = self.quota() else {
            return Ok(());
        };
        let _one = lock(&self.inner.evicting);
        self.evict_locked(quota, need, "node")?;
        let mut usage = lock(&self.inner.usage);
        let held = usage.committed();
        if held.saturating_add(need) > quota {
            return Err(format!(
                "the mirror's quota of {quota} bytes has no room for {sha256} ({need} bytes): \
                 {held} bytes are pinned, being read or arriving; retry when reads end, or \
                 raise [mirror] quota"
            ));
        }
        usage.reserve(need);
        Ok(())
    }

    /// Evicts the least recently used content that is not pinned until the pulled content
    /// fits `quota` (default: the configured one); blocking. What `POST /api/mirror/evict`
    /// runs.
    pub fn evict(&self, quota: Option<u64>, actor: &str) -> Result<Eviction, String> {
        let quota = quota
            .or(self.quota())
            .ok_or("this mirror has no quota ([mirror] quota), and none was given")?;
        let _one = lock(&self.inner.evicting);
        self.evict_locked(quota, 0, actor)
    }

    /// Whether a repo this node did not pull (uploaded here, or from a bundle) holds
    /// `sha256` in its LFS set: then it is the site's own content and never evicted.
    fn held_locally(&self, sha256: &Sha256) -> bool {
        let repos = &self.inner.repos;
        hub_protocol::repo::RepoType::ALL.into_iter().any(|kind| {
            repos.list(kind).map_or(true, |ids| {
                ids.iter().any(|id| {
                    !self.is_mirrored(id) && repos.has_lfs_object(id, &sha256.0).unwrap_or(true)
                })
            })
        })
    }

    fn evict_locked(&self, quota: u64, need: u64, actor: &str) -> Result<Eviction, String> {
        let store = &self.inner.store;
        // Chosen on a copy: the checks read the repos' metadata, and the gateway touches the
        // usage on every GET.
        let usage = lock(&self.inner.usage).clone();
        // Objects that would go but a reader holds (skipped, reported).
        let leased = std::cell::RefCell::new(Vec::new());
        let victims = usage.victims(quota, need, |sha, o| {
            if lock(&self.inner.flights).contains_key(sha)
                || self.pinned(o)
                || self.held_locally(sha)
            {
                return true;
            }
            let held = store.is_leased(sha);
            if held {
                leased.borrow_mut().push(sha.to_string());
            }
            held
        });
        // Pulled objects are GC roots (adopted by their repos): the eviction lifts that.
        for sha in &victims {
            store
                .remove_root(sha)
                .map_err(|e| format!("evict from the store: {e}"))?;
        }
        let mut out = Eviction {
            quota,
            in_use: leased.into_inner(),
            ..Eviction::default()
        };
        if !victims.is_empty() {
            let report = store
                .remove_files(&victims)
                .map_err(|e| format!("evict from the store: {e}"))?;
            out.freed_bytes = report.bytes_freed;
            let mut usage = lock(&self.inner.usage);
            for sha in &victims {
                if store.has(sha).unwrap_or(true) {
                    // Kept for a reader: a root again, as its repo adopted it.
                    if let Err(error) = store.add_root(sha) {
                        tracing::warn!(%sha, %error, "could not restore a GC root");
                    }
                    out.in_use.push(sha.to_string());
                } else if let Some(o) = usage.forget(sha) {
                    out.evicted_bytes += o.size;
                    out.evicted.push(sha.to_string());
                }
            }
            drop(usage);
            self.save_usage();
        }
        out.usage = lock(&self.inner.usage).bytes();
        if !out.evicted.is_empty() {
            tracing::info!(
                objects = out.evicted.len(),
                bytes = out.evicted_bytes,
                quota,
                "evicted pulled content for the quota"
            );
            self.inner.audit.record(
                actor,
                "evict",
                None,
                json!({"quota": quota, "objects": out.evicted, "bytes": out.evicted_bytes}),
            );
        }
        Ok(out)
    }
}
