//! `hubmesh bundle export|import`: air-gap bundles (`hub-mirror`'s `bundle`) against a
//! stopped node's data directory, whose lock they take first, or, when a node runs on that
//! directory (it holds the lock and wrote `node.json`), against that node over HTTP
//! (`/api/bundles/…`, the gateway's `mirror` module): the import is visible at once, no
//! restart. The export is signed with the node's key (`DATA/node.key`); the import verifies
//! everything before anything is visible and records itself in the node's audit log.

use crate::cli::BundleCommand;
use crate::datadir::{self, DataDir};
use anyhow::{Context, bail};
use hub_mirror::bundle::{self, Since};
use hub_protocol::repo::{RepoId, RepoType};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub fn run(command: BundleCommand) -> anyhow::Result<()> {
    match command {
        BundleCommand::Export {
            repo,
            kind,
            since,
            output,
            data,
            json,
        } => {
            let kind: RepoType = kind.parse().context("--type is model, dataset or space")?;
            let id = RepoId::parse(kind, &repo).context("--repo is ns/name")?;
            if running(&data) {
                // The running node's commit to start from: an earlier bundle's `main`.
                let since = match since {
                    Some(s) if Path::new(&s).is_file() => Some(
                        bundle::read_header(Path::new(&s))?
                            .refs
                            .get("refs/heads/main")
                            .cloned()
                            .context("the earlier bundle has no main")?,
                    ),
                    other => other,
                };
                let started = Instant::now();
                let report = crate::client::bundle_export(
                    &data,
                    &repo,
                    kind.as_str(),
                    since.as_deref(),
                    &output,
                )?;
                return print(&serde_json::from_value(report)?, json, "exported", started);
            }
            let (data, repos, store) = open(&data)?;
            let since = match since {
                None => Since::Nothing,
                Some(s) if Path::new(&s).is_file() => Since::Bundle(s.into()),
                Some(s) if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Since::Commit(s.to_ascii_lowercase())
                }
                Some(s) => bail!("--since {s:?} is neither a bundle file nor a commit id"),
            };
            let key = data.load_or_create_key()?;
            let secret: [u8; 32] = key
                .try_into_ed25519()
                .context("the node key is ed25519")?
                .secret()
                .as_ref()
                .try_into()
                .context("an ed25519 secret is 32 bytes")?;
            let started = Instant::now();
            let report = bundle::export(&repos, &store, &id, &since, &secret, &output)
                .with_context(|| format!("export {}", id.hub_id()))?;
            audit(&data)?.record(
                "admin-cli",
                "export",
                Some(&report.repo),
                serde_json::json!({"bundle_bytes": report.bundle_bytes, "chunks": report.chunks}),
            );
            print(&report, json, "exported", started)
        }
        BundleCommand::Import {
            file,
            trust,
            data,
            json,
        } => {
            let trusted = trust
                .map(|t| -> anyhow::Result<[u8; 32]> {
                    let mut out = [0u8; 32];
                    if t.len() != 64 {
                        bail!("--trust is a 64-digit hex public key");
                    }
                    for (i, b) in out.iter_mut().enumerate() {
                        *b = u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
                            .context("--trust is a 64-digit hex public key")?;
                    }
                    Ok(out)
                })
                .transpose()?;
            if running(&data) {
                let started = Instant::now();
                let report = crate::client::bundle_import(
                    &data,
                    &file,
                    trusted
                        .map(|k| k.iter().map(|b| format!("{b:02x}")).collect::<String>())
                        .as_deref(),
                )
                .with_context(|| format!("import {}", file.display()))?;
                return print(&serde_json::from_value(report)?, json, "imported", started);
            }
            let (data, repos, store) = open(&data)?;
            let started = Instant::now();
            let spool = data.join("mirror").join("spool");
            let report = bundle::import(&repos, &store, &file, trusted.as_ref(), &spool)
                .with_context(|| format!("import {}", file.display()))?;
            audit(&data)?.record(
                "admin-cli",
                "import",
                Some(&report.repo),
                serde_json::json!({"signer": report.signer, "bundle_bytes": report.bundle_bytes, "refs": report.refs}),
            );
            print(&report, json, "imported", started)
        }
    }
}

/// Whether a node runs on `data` (it holds the lock and said where it listens).
fn running(data: &Path) -> bool {
    data.join(hub_protocol::node_info::NODE_INFO_FILE).is_file() && DataDir::open(data).is_err()
}

fn open(data: &Path) -> anyhow::Result<(DataDir, Arc<hub_repo::Repos>, hub_store::Store)> {
    let data = DataDir::open(data).context("the node must be stopped first")?;
    let repos = Arc::new(
        hub_repo::Repos::open(data.join(datadir::REPOS_DIR)).context("open the repositories")?,
    );
    let store =
        hub_store::Store::open(data.join(datadir::STORE_DIR)).context("open the chunk store")?;
    Ok((data, repos, store))
}

fn audit(data: &DataDir) -> anyhow::Result<hub_mirror::AuditLog> {
    hub_mirror::AuditLog::open(data.join(crate::up::AUDIT_FILE)).context("open the audit log")
}

fn print(report: &bundle::Report, json: bool, verb: &str, started: Instant) -> anyhow::Result<()> {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{verb} {} in {secs:.2}s ({:.1} MiB/s)",
        report.repo,
        report.bundle_bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
    );
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!(
            "{verb} {}: {} ref(s), {} LFS file(s), {} chunk(s) ({} bytes), git {} bytes, bundle {} bytes, signed by {}",
            report.repo,
            report.refs,
            report.files,
            report.chunks,
            report.chunk_bytes,
            report.git_bytes,
            report.bundle_bytes,
            report.signer
        );
    }
    Ok(())
}
