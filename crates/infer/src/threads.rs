//! The engine's thread budget: the pool every forward pass runs on.
//!
//! A decode step is a few dozen matrix products of a few hundred µs each (hub-quant's kernels
//! and candle's ops, both on rayon). Run on rayon's global pool they would share it with
//! anything else in the process that uses rayon (embedders, hashing), and a second loaded model
//! would double the runnable threads. So the serving engines run each step inside
//! [`rayon::ThreadPool::install`] of one dedicated pool of `threads` workers, shared by every
//! engine of the process that asks for the same count ([`engine_pool`]): however many models
//! are loaded, at most `threads` cores compute forward passes at once. The engine threads
//! themselves only wait while a step runs, and tokio's workers (HTTP, the blob plane) mostly
//! wait on I/O, so the default is one worker per core, as llama.cpp's `-t` default on a
//! machine that serves one model; a node that also hashes or serves heavy traffic sets
//! `[inference] threads` lower.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// One worker per core the process may use (`available_parallelism`, which honours CPU
/// affinity and cgroup quotas), at least one.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// The process's engine pool of `threads` workers (`0`: [`default_threads`]), created on first
/// use and shared while any engine holds it; its threads exit when the last holder drops it.
pub fn engine_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>, rayon::ThreadPoolBuildError> {
    static POOLS: Mutex<Option<HashMap<usize, Weak<rayon::ThreadPool>>>> = Mutex::new(None);
    let threads = if threads == 0 {
        default_threads()
    } else {
        threads
    };
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    let pools = pools.get_or_insert_with(HashMap::new);
    pools.retain(|_, p| p.strong_count() > 0);
    if let Some(pool) = pools.get(&threads).and_then(Weak::upgrade) {
        return Ok(pool);
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hub-infer-{i}"))
            .build()?,
    );
    pools.insert(threads, Arc::downgrade(&pool));
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_shared_per_thread_count_and_sized_as_asked() {
        let a = engine_pool(3).unwrap();
        let b = engine_pool(3).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 3);
        assert_eq!(a.install(rayon::current_num_threads), 3);
        let c = engine_pool(1).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.install(rayon::current_num_threads), 1);
        assert_eq!(
            engine_pool(0).unwrap().current_num_threads(),
            default_threads()
        );
        // Dropped by every holder: the next request builds a new pool.
        let weak = Arc::downgrade(&c);
        drop(c);
        assert!(weak.upgrade().is_none());
    }
}
