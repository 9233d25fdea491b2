//! `hubmesh store fsck|stats|gc`: the chunk store of a stopped node, checked, summarised and
//! cleared of what no repository references.
//!
//! Both take the data directory's lock first, so they never run beside a node that writes
//! the same store (the node holds the lock while it runs; the store's redb index would refuse
//! a second writer anyway, with a less helpful message).

use crate::cli::{StoreArgs, StoreCommand};
use crate::datadir::{self, DataDir};
use anyhow::{Context, bail};
use hub_store::{FsckReport, GcReport, Progress, Sha256, Stats, Store};
use std::time::{Duration, Instant};

pub fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Fsck(args) => fsck(&args),
        StoreCommand::Stats(args) => stats(&args),
        StoreCommand::Gc(args) => gc(&args),
    }
}

fn open(args: &StoreArgs) -> anyhow::Result<(DataDir, Store)> {
    if !args.data.join(datadir::STORE_DIR).is_dir() {
        bail!(
            "no chunk store in {} (expected {}/{})",
            args.data.display(),
            args.data.display(),
            datadir::STORE_DIR
        );
    }
    let data = DataDir::open(&args.data).context("the node must be stopped first")?;
    let store = Store::open(data.join(datadir::STORE_DIR)).context("open the chunk store")?;
    Ok((data, store))
}

fn fsck(args: &StoreArgs) -> anyhow::Result<()> {
    let (_data, store) = open(args)?;
    let started = Instant::now();
    let mut last = Instant::now() - Duration::from_secs(1);
    let mut phase = "";
    let report = store
        .fsck(|p: Progress| {
            // A line per phase change and at most a few per second: progress, not noise.
            if p.phase != phase || last.elapsed() >= Duration::from_millis(250) || p.done == p.total
            {
                eprintln!(
                    "fsck: {} {}/{} ({})",
                    p.phase,
                    p.done,
                    p.total,
                    human_bytes(p.bytes)
                );
                phase = p.phase;
                last = Instant::now();
            }
        })
        .context("check the chunk store")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_fsck(&report, started.elapsed());
    }
    if !report.is_clean() {
        bail!(
            "the store had corruption: {} block(s) quarantined, {} file(s) damaged, {} bad index row(s)",
            report.corrupt_blocks.len(),
            report.damaged_files.len(),
            report.bad_chunk_entries
        );
    }
    Ok(())
}

fn print_fsck(r: &FsckReport, elapsed: Duration) {
    println!(
        "checked {} blocks ({}), {} chunks, {} files in {:.1?}",
        r.blocks_checked,
        human_bytes(r.bytes_checked),
        r.chunks_checked,
        r.files_checked,
        elapsed
    );
    if r.orphans_removed > 0 {
        println!(
            "removed {} unreferenced block file(s) left by interrupted imports",
            r.orphans_removed
        );
    }
    for b in &r.corrupt_blocks {
        println!("corrupt block {} (quarantined): {}", b.id, b.reason);
    }
    for f in &r.damaged_files {
        println!("damaged file sha256:{f} (dropped; fetch it again)");
    }
    if r.is_clean() {
        println!("clean");
    }
}

fn gc(args: &StoreArgs) -> anyhow::Result<()> {
    let (data, store) = open(args)?;
    let repos =
        hub_repo::Repos::open(data.join(datadir::REPOS_DIR)).context("open the repositories")?;
    let roots: Vec<Sha256> = repos
        .referenced_lfs_objects()
        .context("list the LFS objects the repositories reference")?
        .into_iter()
        .map(Sha256)
        .collect();
    let report: GcReport = store
        .gc(&roots)
        .context("collect the chunk store's garbage")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "kept {} file(s); removed {} file(s) and {} block(s), {} freed",
            report.files_kept,
            report.files_removed,
            report.blocks_removed,
            human_bytes(report.bytes_freed)
        );
    }
    Ok(())
}

fn stats(args: &StoreArgs) -> anyhow::Result<()> {
    let (_data, store) = open(args)?;
    let s: Stats = store.stats().context("read the store statistics")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("files          {}", s.files);
        println!(
            "logical bytes  {} ({})",
            s.logical_bytes,
            human_bytes(s.logical_bytes)
        );
        println!(
            "stored bytes   {} ({})",
            s.stored_bytes,
            human_bytes(s.stored_bytes)
        );
        println!("blocks         {}", s.blocks);
        println!("chunks         {}", s.chunks);
        println!("dedup ratio    {:.2}", s.dedup_ratio);
    }
    Ok(())
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
