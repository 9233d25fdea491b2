//! Repository metadata that is not git: visibility, creation time, download counts.
//!
//! Kept in one redb database beside the repositories (`ROOT/meta.redb`), keyed by the repo id
//! (`type/ns/name`). Visibility and creation time are written in their own transaction when
//! they change (rare, acknowledged writes). Downloads are counted in memory and flushed in one
//! transaction by [`crate::Repos::flush_downloads`] (the node calls it every few seconds and at
//! shutdown): a download count is a statistic, not an acknowledged write, and a redb commit per
//! download request would put an fsync on the download path.
//!
//! Recent downloads (for "trending") are kept per day as well: each flush adds the pending
//! counts to today's bucket of each repo (UTC days since the epoch), and the first flush of a
//! day deletes buckets older than [`TRENDING_DAYS`], so the table holds at most
//! `TRENDING_DAYS` rows per repo downloaded in that window (bounded, and persisted: a restart
//! keeps the window). A repo's trending score is the window's counts, each halved per day of
//! age ([`MetaDb::trending_scores`]).

use hub_protocol::repo::RepoId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

const REPOS: TableDefinition<&str, &[u8]> = TableDefinition::new("repos");
const DOWNLOADS: TableDefinition<&str, u64> = TableDefinition::new("downloads");
/// (repo, UTC day since the epoch) → downloads that day, for the last [`TRENDING_DAYS`].
const DAILY: TableDefinition<(&str, u32), u64> = TableDefinition::new("downloads_by_day");
/// Days of downloads a trending score counts (today and the six before).
pub const TRENDING_DAYS: u32 = 7;
/// (repo, sha256) of every LFS object a repository may reference: uploaded to it, or stored
/// from content sent to it. See [`crate::Repos::add_lfs_objects`].
const LFS: TableDefinition<(&str, &[u8; 32]), ()> = TableDefinition::new("lfs_objects");

/// What the metadata database knows about one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RepoMeta {
    pub private: bool,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
}

impl RepoMeta {
    fn encode(self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[0] = u8::from(self.private);
        out[1..].copy_from_slice(&self.created_at.to_le_bytes());
        out
    }

    /// Decodes a record; `None` for bytes this version did not write.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let (flag, time) = bytes.split_first()?;
        Some(Self {
            private: *flag == 1,
            created_at: i64::from_le_bytes(time.try_into().ok()?),
        })
    }
}

#[derive(Debug)]
pub(crate) struct MetaDb {
    db: Database,
    pending: Mutex<HashMap<String, u64>>,
    /// The day old daily buckets were last deleted (0: not yet since opening).
    pruned: Mutex<u32>,
}

pub(crate) type MetaResult<T> = Result<T, redb::Error>;

impl MetaDb {
    pub(crate) fn open(path: &Path) -> Result<Self, redb::DatabaseError> {
        let db = Database::create(path)?;
        Ok(Self {
            db,
            pending: Mutex::new(HashMap::new()),
            pruned: Mutex::new(0),
        })
    }

    pub(crate) fn init(&self) -> MetaResult<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(REPOS)?;
        tx.open_table(DOWNLOADS)?;
        tx.open_table(DAILY)?;
        tx.open_table(LFS)?;
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn add_lfs(&self, id: &RepoId, objects: &[[u8; 32]]) -> MetaResult<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let key = id.to_string();
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(LFS)?;
            for sha in objects {
                table.insert((key.as_str(), sha), ())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn remove_lfs(&self, id: &RepoId, objects: &[[u8; 32]]) -> MetaResult<()> {
        let key = id.to_string();
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(LFS)?;
            for sha in objects {
                table.remove((key.as_str(), sha))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn has_lfs(&self, id: &RepoId, sha: &[u8; 32]) -> MetaResult<bool> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LFS)?;
        Ok(table.get((id.to_string().as_str(), sha))?.is_some())
    }

    /// Every LFS object of `from`, re-keyed to `to` (a rename), in one transaction.
    fn lfs_of(
        table: &impl ReadableTable<(&'static str, &'static [u8; 32]), ()>,
        key: &str,
    ) -> MetaResult<Vec<[u8; 32]>> {
        let mut out = Vec::new();
        for item in table.range((key, &[0u8; 32])..=(key, &[0xffu8; 32]))? {
            let (k, _) = item?;
            out.push(*k.value().1);
        }
        Ok(out)
    }

    pub(crate) fn get(&self, id: &RepoId) -> MetaResult<Option<RepoMeta>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(REPOS)?;
        Ok(table
            .get(id.to_string().as_str())?
            .and_then(|v| RepoMeta::decode(v.value())))
    }

    pub(crate) fn put(&self, id: &RepoId, meta: RepoMeta) -> MetaResult<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(REPOS)?
            .insert(id.to_string().as_str(), meta.encode().as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn remove(&self, id: &RepoId) -> MetaResult<()> {
        let key = id.to_string();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        let tx = self.db.begin_write()?;
        tx.open_table(REPOS)?.remove(key.as_str())?;
        tx.open_table(DOWNLOADS)?.remove(key.as_str())?;
        tx.open_table(DAILY)?
            .retain_in((key.as_str(), 0)..=(key.as_str(), u32::MAX), |_, _| false)?;
        {
            let mut lfs = tx.open_table(LFS)?;
            for sha in Self::lfs_of(&lfs, &key)? {
                lfs.remove((key.as_str(), &sha))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The LFS objects recorded for one repository.
    pub(crate) fn lfs_of_repo(&self, id: &RepoId) -> MetaResult<Vec<[u8; 32]>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LFS)?;
        Self::lfs_of(&table, &id.to_string())
    }

    /// Every LFS object any repository may reference, whichever repository.
    pub(crate) fn all_lfs(&self) -> MetaResult<Vec<[u8; 32]>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(LFS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, _) = item?;
            out.push(*k.value().1);
        }
        Ok(out)
    }

    /// Adds `from`'s daily download buckets to `to`'s (a rename keeps its trending score).
    pub(crate) fn copy_daily(&self, from: &RepoId, to: &RepoId) -> MetaResult<()> {
        let (from, to) = (from.to_string(), to.to_string());
        let tx = self.db.begin_write()?;
        {
            let mut daily = tx.open_table(DAILY)?;
            let mut days = Vec::new();
            for item in daily.range((from.as_str(), 0)..=(from.as_str(), u32::MAX))? {
                let (k, v) = item?;
                days.push((k.value().1, v.value()));
            }
            for (day, n) in days {
                let old = daily.get((to.as_str(), day))?.map_or(0, |v| v.value());
                daily.insert((to.as_str(), day), old.saturating_add(n))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Copies `from`'s LFS objects to `to` (before `from`'s records are removed on a rename).
    pub(crate) fn copy_lfs(&self, from: &RepoId, to: &RepoId) -> MetaResult<()> {
        let (from, to) = (from.to_string(), to.to_string());
        let tx = self.db.begin_write()?;
        {
            let mut lfs = tx.open_table(LFS)?;
            for sha in Self::lfs_of(&lfs, &from)? {
                lfs.insert((to.as_str(), &sha), ())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn count_download(&self, id: &RepoId) {
        *self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_string())
            .or_default() += 1;
    }

    pub(crate) fn downloads(&self, id: &RepoId) -> MetaResult<u64> {
        let key = id.to_string();
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied()
            .unwrap_or(0);
        let tx = self.db.begin_read()?;
        let stored = tx
            .open_table(DOWNLOADS)?
            .get(key.as_str())?
            .map_or(0, |v| v.value());
        Ok(stored.saturating_add(pending))
    }

    /// Adds `n` to a repo's stored count (used when a repo is renamed).
    pub(crate) fn add_downloads(&self, id: &RepoId, n: u64) -> MetaResult<()> {
        if n == 0 {
            return Ok(());
        }
        let key = id.to_string();
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(DOWNLOADS)?;
            let old = table.get(key.as_str())?.map_or(0, |v| v.value());
            table.insert(key.as_str(), old.saturating_add(n))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes the pending counts in one transaction, to the totals and to `today`'s bucket
    /// (and, on the first flush of a day, deletes buckets that left the window); returns how
    /// many repos changed.
    pub(crate) fn flush(&self, today: u32) -> MetaResult<usize> {
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if pending.is_empty() {
            return Ok(0);
        }
        let result = (|| {
            let tx = self.db.begin_write()?;
            {
                let mut table = tx.open_table(DOWNLOADS)?;
                let mut daily = tx.open_table(DAILY)?;
                for (key, n) in &pending {
                    let old = table.get(key.as_str())?.map_or(0, |v| v.value());
                    table.insert(key.as_str(), old.saturating_add(*n))?;
                    let old = daily.get((key.as_str(), today))?.map_or(0, |v| v.value());
                    daily.insert((key.as_str(), today), old.saturating_add(*n))?;
                }
                let mut pruned = self.pruned.lock().unwrap_or_else(PoisonError::into_inner);
                if *pruned != today {
                    daily.retain(|(_, day), _| day.saturating_add(TRENDING_DAYS) > today)?;
                    *pruned = today;
                }
            }
            tx.commit()?;
            Ok(pending.len())
        })();
        if result.is_err() {
            // Keep the counts for the next flush rather than losing them.
            let mut guard = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, n) in pending {
                *guard.entry(key).or_default() += n;
            }
        }
        result
    }
}

impl MetaDb {
    /// Each repo's trending score on `today`: its downloads of the last [`TRENDING_DAYS`]
    /// days, each day's halved per day of age (counts not flushed yet count as today's).
    pub(crate) fn trending_scores(&self, ids: &[RepoId], today: u32) -> MetaResult<Vec<f64>> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let tx = self.db.begin_read()?;
        let daily = tx.open_table(DAILY)?;
        let first = today.saturating_sub(TRENDING_DAYS - 1);
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let key = id.to_string();
            let mut score = pending.get(&key).copied().unwrap_or(0) as f64;
            for item in daily.range((key.as_str(), first)..=(key.as_str(), today))? {
                let (k, v) = item?;
                let age = today.saturating_sub(k.value().1);
                score += v.value() as f64 / f64::from(1u32 << age.min(31));
            }
            out.push(score);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trip_and_garbage() {
        let m = RepoMeta {
            private: true,
            created_at: 1_700_000_000,
        };
        assert_eq!(RepoMeta::decode(&m.encode()), Some(m));
        assert_eq!(RepoMeta::decode(&[]), None);
        assert_eq!(RepoMeta::decode(&[1, 2, 3]), None);
    }
}
