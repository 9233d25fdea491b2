//! A model's files: which files of a commit a model needs ([`model_files`]), writing them into
//! the model cache ([`materialize`]) and finding the weights this node lacks
//! ([`missing_weights`]) and fetching them for a cold start ([`fetch_model`]).
//!
//! Owns the layout of the model cache, `<cache_dir>/<ns>--<name>/<commit>/`. A model is
//! written into a `.partial-<pid>-<seq>` directory renamed when complete, so a crash never
//! leaves a half-written model that looks whole, and two loads of one model never write into
//! one directory (the first rename wins). Depends on hub-repo, hub-store and hub-core's
//! `lfs_objects` (only the repo's own LFS objects are served); nothing above.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;
use std::time::Instant;

use hub_core::MeshPort;
use hub_protocol::repo::RepoId;
use hub_repo::{EntryKind, Repos, TreeEntry};
use hub_store::{Sha256, Store};

use crate::error::{FetchError, LoadFailure};

/// The files of a commit a model needs: root `*.json` and `*.jinja`, one `*.gguf` or else the
/// `*.safetensors`, and module configs one level down (`1_Pooling/config.json`, listed
/// recursively for sentence-transformers).
pub fn model_files(
    repos: &Repos,
    id: &RepoId,
    commit: &str,
) -> Result<Vec<TreeEntry>, hub_repo::RepoError> {
    let files: Vec<_> = repos
        .list_tree(id, commit, "", true)?
        .into_iter()
        .filter(|e| e.kind == EntryKind::File)
        .collect();
    let gguf = files
        .iter()
        .filter(|e| e.path.ends_with(".gguf") && !e.path.contains('/'))
        .map(|e| e.path.clone())
        .min();
    let wanted = |p: &str| {
        let depth = p.matches('/').count();
        if depth > 0 {
            return depth == 1 && p.ends_with("/config.json");
        }
        p.ends_with(".json")
            || p.ends_with(".jinja")
            || match &gguf {
                Some(g) => p == g,
                None => p.ends_with(".safetensors"),
            }
    };
    Ok(files.into_iter().filter(|e| wanted(&e.path)).collect())
}

/// Blocking: writes the files a model needs into the cache (see the module docs); returns the
/// directory. Weights not in this node's store (or not the repo's own) are
/// [`LoadFailure::NotLocal`].
pub fn materialize(
    repos: &Repos,
    store: &Store,
    id: &RepoId,
    commit: &str,
    cache: &Path,
) -> Result<PathBuf, LoadFailure> {
    let dir = cache.join(id.hub_id().replace('/', "--")).join(commit);
    if dir.is_dir() {
        return Ok(dir);
    }
    let other = |e: hub_repo::RepoError| LoadFailure::Model(e.into());
    let files = model_files(repos, id, commit).map_err(other)?;
    // Unique per process and call: two loads of one model (a text and an embedding request,
    // or two processes sharing a data dir's cache by mistake) never write into one directory;
    // the first rename wins and the other copy is dropped.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let partial = dir.with_extension(format!(
        "partial-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    for entry in &files {
        let dest = partial.join(&entry.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match &entry.lfs {
            Some(lfs) => {
                let sha: Sha256 = lfs
                    .sha256
                    .parse()
                    .map_err(|_| LoadFailure::NotLocal(entry.path.clone()))?;
                // Only the repo's own objects (stored for another repo is not here).
                if !hub_core::lfs_objects::belongs(repos, store, id, &sha).unwrap_or(false) {
                    return Err(LoadFailure::NotLocal(entry.path.clone()));
                }
                store
                    .export(&sha, &dest)
                    .map_err(|e| LoadFailure::Model(e.into()))?;
            }
            None => {
                let (_, blob) = repos.file(id, commit, &entry.path).map_err(other)?;
                std::fs::write(&dest, blob)?;
            }
        }
    }
    if let Err(e) = std::fs::rename(&partial, &dir) {
        let _ = std::fs::remove_dir_all(&partial);
        if !dir.is_dir() {
            return Err(e.into());
        }
    }
    Ok(dir)
}

/// Blocking: the LFS files among a model's files ([`model_files`]) that this node lacks, as
/// `(sha256, size)`. `None` when the revision cannot be read.
pub fn missing_weights(
    repos: &Repos,
    store: &Store,
    id: &RepoId,
    revision: &str,
) -> Option<Vec<(Sha256, u64)>> {
    let commit = repos.resolve(id, revision).ok()?;
    let files = model_files(repos, id, &commit).ok()?;
    Some(
        files
            .into_iter()
            .filter_map(|e| {
                let lfs = e.lfs?;
                let sha: Sha256 = lfs.sha256.parse().ok()?;
                let here = hub_core::lfs_objects::belongs(repos, store, id, &sha).unwrap_or(false);
                (!here).then_some((sha, lfs.size))
            })
            .collect(),
    )
}

/// Cold start: brings `revision` of a model's repo and the weights it needs here from the
/// mesh, by `deadline`.
pub async fn fetch_model(
    mesh: &dyn MeshPort,
    repos: Arc<Repos>,
    store: Store,
    id: &RepoId,
    revision: &str,
    deadline: Instant,
) -> Result<(), FetchError> {
    let started = Instant::now();
    mesh.ensure_repo(id, deadline.into()).await?;
    let missing = {
        let (id, revision) = (id.clone(), revision.to_owned());
        tokio::task::spawn_blocking(move || missing_weights(&repos, &store, &id, &revision))
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    for (sha, size) in missing {
        mesh.ensure_lfs(id, sha, size, deadline.into()).await?;
    }
    tracing::info!(model = %id, elapsed = ?started.elapsed(), "model fetched from the mesh");
    Ok(())
}
