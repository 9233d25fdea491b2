//! The audit log: an append-only file of JSON lines (`DATA/audit.jsonl`), one per event —
//! who read or wrote which repo, what was mirrored from the upstream, what a bundle imported,
//! which policy or rights changed — in the shape a compliance review exports (Hugging Face
//! Enterprise's audit logs: actor, action, time, target).
//!
//! Lines are written with one `write` each on a file opened for appending, under a mutex,
//! so lines never interleave; the log is never rewritten. A failed write is logged and does
//! not fail the request it records (the alternative, refusing service when the disk is full,
//! is a policy decision left to the operator). Reads of the same repo by the same actor are
//! recorded once per minute, so a snapshot download of a thousand files is one line, not a
//! thousand.

use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Reads by one actor of one repo within this window are one line.
const READ_WINDOW: Duration = Duration::from_secs(60);
/// At most this many (actor, repo) pairs are remembered for coalescing reads.
const READ_MEMORY: usize = 65_536;

/// The audit log of a node. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
    recent_reads: Mutex<HashMap<(String, String), u64>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AuditLog {
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self {
            path,
            file: Mutex::new(file),
            recent_reads: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event: `actor` (a user name, `anonymous`, `node`, `admin-cli`), `action`
    /// (`read`, `write`, `mirror`, `import`, `export`, `rights`, `policy`, …), `repo` when it
    /// concerns one, and `details`.
    pub fn record(&self, actor: &str, action: &str, repo: Option<&str>, details: Value) {
        let mut line = Map::new();
        line.insert("time".into(), json!(now()));
        line.insert("actor".into(), json!(actor));
        line.insert("action".into(), json!(action));
        if let Some(repo) = repo {
            line.insert("repo".into(), json!(repo));
        }
        if let Value::Object(details) = details {
            for (k, v) in details {
                line.entry(k).or_insert(v);
            }
        }
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = file.write_all(text.as_bytes()) {
            tracing::warn!(%error, path = %self.path.display(), "audit log write failed");
        }
    }

    /// A read of `repo` by `actor`, recorded once per window per pair.
    pub fn record_read(&self, actor: &str, repo: &str) {
        let t = now();
        {
            let mut recent = self
                .recent_reads
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let key = (actor.to_owned(), repo.to_owned());
            if recent
                .get(&key)
                .is_some_and(|last| t.saturating_sub(*last) < READ_WINDOW.as_secs())
            {
                return;
            }
            if recent.len() >= READ_MEMORY {
                recent.retain(|_, last| t.saturating_sub(*last) < READ_WINDOW.as_secs());
                if recent.len() >= READ_MEMORY {
                    recent.clear();
                }
            }
            recent.insert(key, t);
        }
        self.record(actor, "read", Some(repo), json!({}));
    }

    /// The whole log (for export).
    pub fn export(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_append_and_reads_coalesce() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path().join("audit.jsonl")).unwrap();
        log.record("admin", "policy", None, json!({"rule": "deny bob/*"}));
        log.record_read("alice", "models/a/b");
        log.record_read("alice", "models/a/b");
        log.record_read("bob", "models/a/b");
        log.record(
            "node",
            "mirror",
            Some("models/a/b"),
            json!({"commit": "abc", "actor": "x"}),
        );
        drop(log);
        let log = AuditLog::open(dir.path().join("audit.jsonl")).unwrap();
        log.record("alice", "write", Some("models/a/b"), json!({}));
        let text = String::from_utf8(log.export().unwrap()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let actions: Vec<_> = lines
            .iter()
            .map(|l| l["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["policy", "read", "read", "mirror", "write"]);
        assert_eq!(
            lines[3]["actor"], "node",
            "details never overwrite the actor"
        );
        assert_eq!(lines[3]["commit"], "abc");
        assert!(lines.iter().all(|l| l["time"].as_u64().unwrap() > 0));
    }
}
