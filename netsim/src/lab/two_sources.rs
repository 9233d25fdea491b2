//! The **two-sources** scenario (issue #17): does a fetch from two holders, each behind an
//! upload capped at the same rate, run twice as fast as from one?
//!
//! The origin (node 0) publishes one file and nobody else holds it. Then, for each of
//! `nodes / 2` rounds, the nodes of the round before are SIGKILLed (so the origin is again
//! the only holder) and two fresh seeders of `alice/*` are spawned one after the other:
//! - node `a`, bootstrapped from the origin alone: **one source**;
//! - once `a` stored the object, node `b`, bootstrapped from the origin and `a`: **two
//!   sources**, both holding the whole object.
//!
//! Every node's upload is capped at `rate_mbit` (tc tbf, as in every scenario); the two
//! fetchers' downloads are unshaped, so only the sources' caps bound a fetch. Each time runs
//! from spawning the fetcher until its counters show the object fetched and verified
//! (`lfs_objects_fetched`, polled every 50 ms): node start-up, connecting and the git sync
//! are inside both, so they lower the ratio, never raise it. The *LFS phase* starts at the
//! first poll that finds the repo's commit on the fetcher (git sync done) and is the part
//! the sources' caps bound. Per fetch, the chunk bytes each
//! source served (`chunk_bytes_sent`), and at the end every fetcher's copy is downloaded
//! through its gateway and hashed.

use super::{Lab, POLL, upload};
use crate::report::{round3, table};
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Instant;

const REPO: &str = "alice/two-sources";

/// One fetch: which node, from which sources, how long, and what each source served.
struct Fetch {
    node: usize,
    sources: Vec<usize>,
    /// Spawn → stored.
    seconds: f64,
    /// The LFS phase: from the first poll that saw the repo's commit on the fetcher (start-up,
    /// connecting and the git sync done) until stored.
    lfs_seconds: f64,
    served: Vec<u64>,
}

impl Lab {
    pub(super) fn two_sources_scenario(&mut self) -> Result<Value> {
        let rounds = self.config.nodes / 2;
        ensure!(
            rounds >= 1 && self.config.nodes.is_multiple_of(2),
            "two-sources needs an even number of nodes besides the origin (two per round)"
        );
        ensure!(
            self.config.rate_mbit > 0,
            "two-sources compares capped sources: rate_mbit must be positive"
        );
        let repo = REPO;
        let bytes = self.file(17);
        let want = hex::encode(Sha256::digest(&bytes));
        self.start(0, &["--admin", "alice"], &[], &[])?;
        let token = self.node(0)?.admin_token()?;
        upload::publish_file(
            &self.agent,
            self.node(0)?,
            &token,
            repo,
            "model.bin",
            &bytes,
        )
        .context("publish on the origin")?;
        let size = bytes.len() as u64;
        drop(bytes);
        let mut one = Vec::new();
        let mut two = Vec::new();
        let mut verified = 0;
        for round in 0..rounds {
            let a = 2 * round + 1;
            let b = a + 1;
            // The origin is the only holder again.
            for i in 1..a {
                self.nodes[i] = None;
            }
            one.push(self.timed_fetch(a, &[0])?);
            two.push(self.timed_fetch(b, &[0, a])?);
            for i in [a, b] {
                let got = upload::download_sha256(&self.agent, self.node(i)?, repo, "model.bin")?;
                if got == want {
                    verified += 1;
                } else {
                    eprintln!("lab: node {i} served {repo} with SHA-256 {got}, not {want}");
                }
            }
        }
        // The middle value, or the mean of the two middle ones.
        let median = |f: &[Fetch], lfs: bool| {
            let mut s: Vec<f64> = f
                .iter()
                .map(|f| if lfs { f.lfs_seconds } else { f.seconds })
                .collect();
            s.sort_by(f64::total_cmp);
            round3((s[(s.len() - 1) / 2] + s[s.len() / 2]) / 2.0)
        };
        let (t1, t2) = (median(&one, false), median(&two, false));
        let (l1, l2) = (median(&one, true), median(&two, true));
        let mib = size as f64 / f64::from(1 << 20);
        let rows: Vec<Vec<String>> = one
            .iter()
            .chain(&two)
            .map(|f| {
                vec![
                    f.node.to_string(),
                    format!("{:?}", f.sources),
                    format!("{:.2}", f.seconds),
                    format!("{:.2}", f.lfs_seconds),
                    format!("{:.1}", mib / f.lfs_seconds),
                    f.served
                        .iter()
                        .map(|b| format!("{:.1}", *b as f64 / f64::from(1 << 20)))
                        .collect::<Vec<_>>()
                        .join(" + "),
                ]
            })
            .collect();
        table(
            "two sources vs one",
            &[
                "node",
                "sources",
                "s",
                "LFS phase s",
                "MiB/s",
                "MiB served by each source",
            ],
            &rows,
        );
        let cap = self.config.rate_mbit as f64 * 1e6 / 8.0 / f64::from(1 << 20);
        eprintln!(
            "median one source {t1:.2} s, two sources {t2:.2} s: {:.2}x; LFS phase {l1:.2} s vs {l2:.2} s: {:.2}x (cap {cap:.2} MiB/s per source); verified {verified}",
            t1 / t2,
            l1 / l2
        );
        let fetch_json = |f: &Fetch| {
            json!({
                "node": f.node,
                "sources": f.sources,
                "seconds": f.seconds,
                "lfs_phase_seconds": f.lfs_seconds,
                "chunk_bytes_served_by_source": f.served,
            })
        };
        Ok(json!({
            "scenario": "two-sources",
            "rounds": rounds,
            "file_bytes": size,
            "rate_mbit": self.config.rate_mbit,
            "optimum_one_source_s": self.optimum_s(size),
            "one_source": one.iter().map(fetch_json).collect::<Vec<_>>(),
            "two_sources": two.iter().map(fetch_json).collect::<Vec<_>>(),
            "median_one_source_s": t1,
            "median_two_sources_s": t2,
            "speedup": round3(t1 / t2),
            "median_one_source_lfs_phase_s": l1,
            "median_two_sources_lfs_phase_s": l2,
            "speedup_lfs_phase": round3(l1 / l2),
            "nodes_verified": verified,
        }))
    }

    /// Spawns seeder `i` (download unshaped) bootstrapped from `sources`, and times it from
    /// the spawn until it stored the object.
    fn timed_fetch(&mut self, i: usize, sources: &[usize]) -> Result<Fetch> {
        self.net.unshape_download(i)?;
        let before: Vec<u64> = sources
            .iter()
            .map(|&s| self.node(s)?.counter(&self.agent, "chunk_bytes_sent"))
            .collect::<Result<_>>()?;
        let started = Instant::now();
        let deadline = started + std::time::Duration::from_secs(self.config.deadline_s);
        self.start(i, &["--seed", "alice/*"], sources, &[])?;
        let mut synced = None;
        while self.node(i)?.counter(&self.agent, "lfs_objects_fetched")? == 0 {
            if synced.is_none() && self.node(i)?.repo_sha(&self.agent, REPO)?.is_some() {
                synced = Some(started.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                bail!("node {i} did not fetch the object from {sources:?} within the deadline");
            }
            std::thread::sleep(POLL);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let seconds = round3(elapsed);
        let lfs_seconds = round3(elapsed - synced.unwrap_or(0.0));
        let mut served = Vec::new();
        for (&s, before) in sources.iter().zip(before) {
            served.push(self.node(s)?.counter(&self.agent, "chunk_bytes_sent")? - before);
        }
        Ok(Fetch {
            node: i,
            sources: sources.to_vec(),
            seconds,
            lfs_seconds,
            served,
        })
    }
}
