//! Read leases: a reader's hold on a stored file that `gc` and [`Store::remove_files`] honour.
//!
//! A [`FileReader`](crate::FileReader) resolves its chunks to block locations when it opens,
//! but opens the block files only as it reaches them: a `gc` that removed the file meanwhile
//! would delete blocks the reader still needs, and a download being streamed would end short.
//! Every reader therefore holds a [`Lease`] on its file (taken by [`Store::open_file`] before
//! it reads the index), and a whole-store pass keeps every leased file as if it were a root.
//! Other code that must keep a file while it works (a mirror deciding what to evict, a copy
//! to another store) takes one with [`Store::lease`].
//!
//! Synchronisation: the lease table is one mutex. `gc` holds it from the moment it decides
//! what to keep until its block files are deleted, so a lease is taken either before (and the
//! file is kept) or after (and the reader finds the file gone, [`StoreError::NotFound`]),
//! never in between. Taking a lease never waits for the maintenance lock: an import holding
//! that lock shared may open files (compose does) while a `gc` waits for it exclusively.

use crate::{Inner, Store};
use hub_protocol::manifest::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// How many leases each file has.
#[derive(Debug, Default)]
pub(crate) struct Leases(Mutex<HashMap<Sha256, usize>>);

impl Leases {
    /// The table, locked: `gc` keeps it locked while it removes anything.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<Sha256, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A hold on one stored file: while it lives, `gc` and [`Store::remove_files`] keep the file
/// and every block it needs. Dropping it releases the hold. A lease on a file the store does
/// not hold (yet) is allowed: it keeps the file from the moment it is stored.
#[derive(Debug)]
#[must_use = "the file is protected only while the lease lives"]
pub struct Lease {
    inner: Arc<Inner>,
    sha256: Sha256,
}

impl Lease {
    /// The leased file.
    pub fn sha256(&self) -> Sha256 {
        self.sha256
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut table = self.inner.leases.lock();
        if let Some(n) = table.get_mut(&self.sha256) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.sha256);
            }
        }
    }
}

impl Store {
    /// Leases `sha256`: the file stays until the lease is dropped, whatever `gc` or
    /// [`Store::remove_files`] are asked to remove. Waits only while such a pass is removing.
    pub fn lease(&self, sha256: &Sha256) -> Lease {
        lease(&self.inner, sha256)
    }

    /// Whether some reader or caller holds a lease on `sha256` now.
    pub fn is_leased(&self, sha256: &Sha256) -> bool {
        self.inner.leases.lock().contains_key(sha256)
    }
}

pub(crate) fn lease(inner: &Arc<Inner>, sha256: &Sha256) -> Lease {
    *inner.leases.lock().entry(*sha256).or_default() += 1;
    Lease {
        inner: inner.clone(),
        sha256: *sha256,
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreError};
    use std::io::Read;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_reader_in_progress_keeps_its_file_through_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes = data(3 << 20, 1);
        let info = store.import_reader(&bytes[..]).unwrap();
        let mut reader = store.open_file(&info.sha256).unwrap();
        let mut head = vec![0u8; 100_000];
        reader.read_exact(&mut head).unwrap();

        let report = store.remove_files(&[info.sha256]).unwrap();
        assert_eq!((report.files_removed, report.files_leased), (0, 1));
        assert!(store.has(&info.sha256).unwrap());

        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        head.extend(rest);
        assert!(head == bytes, "the file is delivered whole");
        drop(reader);

        let report = store.remove_files(&[info.sha256]).unwrap();
        assert_eq!(report.files_removed, 1);
        assert!(report.bytes_freed > 0);
        assert!(!store.has(&info.sha256).unwrap());
        assert!(matches!(
            store.open_file(&info.sha256),
            Err(StoreError::NotFound { .. })
        ));
        assert!(store.fsck(|_| {}).unwrap().is_clean());
    }

    #[test]
    fn gc_keeps_leased_files_and_leases_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let info = store.import_reader(&data(200_000, 2)[..]).unwrap();
        let (a, b) = (store.lease(&info.sha256), store.lease(&info.sha256));
        assert!(store.is_leased(&info.sha256));
        assert_eq!(store.gc(&[]).unwrap().files_removed, 0);
        drop(a);
        assert_eq!(store.gc(&[]).unwrap().files_removed, 0);
        drop(b);
        assert!(!store.is_leased(&info.sha256));
        assert_eq!(store.gc(&[]).unwrap().files_removed, 1);
    }

    #[test]
    fn removing_a_file_keeps_the_chunks_other_files_share() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let shared = data(2 << 20, 3);
        let mut other = shared.clone();
        other.extend(data(1 << 20, 4));
        let a = store.import_reader(&shared[..]).unwrap();
        let b = store.import_reader(&other[..]).unwrap();
        let report = store.remove_files(&[a.sha256]).unwrap();
        assert_eq!(report.files_removed, 1);
        let mut back = Vec::new();
        store
            .open_file(&b.sha256)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == other);
        assert!(store.fsck(|_| {}).unwrap().is_clean());
    }
}
