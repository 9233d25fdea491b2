//! Crash safety: kill -9 an importing process at random moments, then reopen and check.
//!
//! The test re-executes this test binary as a child running [`child_importer`], which imports
//! generated files in a loop and prints `ACK <sha256> <seed> <i>` after each import returns.
//! The parent SIGKILLs it after a random delay, reopens the store, runs `fsck`, and checks
//! that every acknowledged file reads back byte for byte and that every visible file is
//! complete (an import is visible entirely or not at all).
//!
//! `HUBMESH_CRASH_ITERS` raises the iteration count for longer runs (default 50).

use crate::util::{noise, sha256};
use hub_store::{Sha256, Store};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "HUBMESH_CRASH_CHILD_DIR";

/// A generated file: 1–3 MiB, half of it drawn from a small pool of shared segments so that
/// imports deduplicate against each other (and against blocks of killed imports).
fn file_bytes(seed: u64, i: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let parts = 4 + (seed ^ i) % 8;
    for p in 0..parts {
        let key = seed.wrapping_mul(31).wrapping_add(i * 17 + p);
        if key.is_multiple_of(2) {
            out.extend_from_slice(&noise(key % 6, 256 * 1024)); // shared pool
        } else {
            out.extend_from_slice(&noise(key, 256 * 1024 + (key % 1000) as usize));
        }
    }
    out
}

/// The child process body. Does nothing unless started by [`kill9_during_imports`].
#[test]
fn child_importer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("HUBMESH_CRASH_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let store = Store::open(&dir).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0.. {
        let data = file_bytes(seed, i);
        let info = store.import_reader(&data[..]).unwrap();
        writeln!(out, "ACK {} {seed} {i}", info.sha256).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn kill9_during_imports() {
    let iters: u64 = std::env::var("HUBMESH_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked = BTreeMap::<Sha256, (u64, u64)>::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut killed_mid_import = 0;
    let mut unacked = std::collections::BTreeSet::new();
    for iter in 0..iters {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(rng % 300);
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::child_importer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("HUBMESH_CRASH_SEED", iter.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                // A line cut by the kill is not an acknowledgement. libtest may print
                // "test crash::child_importer ... " before the first line: skip past it.
                if line.ends_with('\n')
                    && let Some(at) = line.find("ACK ")
                {
                    lines.push(line[at..].trim_end().to_string());
                }
                line.clear();
            }
            lines
        });
        std::thread::sleep(delay);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "child exited on its own: {status}");
        let lines = reader.join().unwrap();
        let mut new = Vec::new();
        for l in &lines {
            let f: Vec<&str> = l.split(' ').collect();
            let sha: Sha256 = f[1].parse().unwrap();
            acked.insert(sha, (f[2].parse().unwrap(), f[3].parse().unwrap()));
            new.push(sha);
        }

        let store = Store::open(dir.path()).unwrap();
        let report = store.fsck(|_| {}).unwrap();
        assert!(report.is_clean(), "iteration {iter}: {report:?}");
        // fsck re-verified every block; compare the new files each time and all of them
        // every tenth iteration and at the end.
        let check_all = iter % 10 == 9 || iter + 1 == iters;
        for (sha, &(seed, i)) in acked.iter().filter(|(s, _)| check_all || new.contains(s)) {
            let mut back = Vec::new();
            store
                .open_file(sha)
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert!(
                back == file_bytes(seed, i),
                "iteration {iter}: file {sha} differs"
            );
        }
        // Nothing half-imported is ever visible. At most the import in flight when the kill
        // came may be visible without an acknowledgement (committed, not yet printed).
        for sha in store.files().unwrap() {
            if !acked.contains_key(&sha) {
                if !unacked.insert(sha) {
                    continue; // seen and checked in an earlier iteration
                }
                killed_mid_import += 1;
                // Only this iteration's import in flight can be the unacknowledged one.
                assert_eq!(
                    sha,
                    sha256(&file_bytes(iter, new.len() as u64)),
                    "iteration {iter}: a file that was never imported to completion is visible"
                );
                let mut back = Vec::new();
                store
                    .open_file(&sha)
                    .unwrap()
                    .read_to_end(&mut back)
                    .unwrap();
                assert_eq!(sha256(&back), sha, "iteration {iter}: partial file visible");
            }
        }
    }
    assert!(
        acked.len() as u64 >= iters / 2,
        "too few imports acknowledged: {}",
        acked.len()
    );
    eprintln!(
        "{iters} kills, {} acknowledged files, {killed_mid_import} imports committed but killed before their acknowledgement",
        acked.len()
    );
}
