//! The git-lfs standalone custom transfer agent (`git-remote-hubmesh lfs-agent`).
//!
//! git-lfs starts it (configured by the helper in every repository it clones, see
//! [`crate::helper`]) and speaks JSON lines on its stdin/stdout (git-lfs
//! `docs/custom-transfers.md`): `init`, then `download`/`upload` events, each answered by
//! `progress` events and one `complete`, then `terminate`. Each object goes through the
//! local node's LFS batch API for the repository of the remote's `hubmesh://` URL, with the
//! caller's token: the node fetches what it does not hold from the mesh (verified chunk by
//! chunk, deduplicated against its store) and uploads import into its store. Downloads are
//! checked here too: the file handed to git-lfs has the object's size and SHA-256.

use crate::node::{Node, refusal_message};
use crate::target::Target;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How often (in bytes) progress is reported to git-lfs.
const PROGRESS_EVERY: u64 = 256 * 1024;

/// Most bytes of a batch answer.
const MAX_BATCH_ANSWER: u64 = 1 << 20;

const LFS_JSON: &str = "application/vnd.git-lfs+json";

/// Where git-lfs reads the agent's messages; shared so an upload's reader can report
/// progress while ureq pulls it.
type Out = Arc<Mutex<std::io::Stdout>>;

fn send(out: &Out, msg: &Value) -> anyhow::Result<()> {
    let mut o = out
        .lock()
        .map_err(|_| anyhow::anyhow!("stdout lock poisoned"))?;
    writeln!(o, "{msg}")?;
    o.flush()?;
    Ok(())
}

/// Runs the agent until git-lfs sends `terminate` or closes its stdin.
pub fn run() -> anyhow::Result<()> {
    let out: Out = Arc::new(Mutex::new(std::io::stdout()));
    let stdin = std::io::stdin();
    let mut node: Option<Node> = None;
    for line in stdin.lock().lines() {
        let line = line.context("read from git-lfs")?;
        if line.trim().is_empty() {
            continue;
        }
        let msg: Value = serde_json::from_str(&line).context("a message from git-lfs")?;
        match msg["event"].as_str().unwrap_or("") {
            "init" => match init(&msg) {
                Ok(n) => {
                    node = Some(n);
                    send(&out, &json!({}))?;
                }
                Err(e) => send(
                    &out,
                    &json!({ "error": { "code": 2, "message": format!("{e:#}") } }),
                )?,
            },
            event @ ("download" | "upload") => {
                let oid = msg["oid"].as_str().unwrap_or("").to_owned();
                let Some(node) = node.as_mut() else {
                    bail!("git-lfs sent {event} before init");
                };
                let result = if event == "download" {
                    download(node, &out, &msg)
                        .map(|path| json!({ "event": "complete", "oid": oid, "path": path }))
                } else {
                    upload(node, &out, &msg).map(|()| json!({ "event": "complete", "oid": oid }))
                };
                let answer = result.unwrap_or_else(|e| {
                    json!({ "event": "complete", "oid": oid, "error": { "code": e.code, "message": e.message } })
                });
                send(&out, &answer)?;
            }
            "terminate" => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

/// The repository of the remote git-lfs names (a remote's name, or a URL).
fn init(msg: &Value) -> anyhow::Result<Node> {
    let remote = msg["remote"].as_str().unwrap_or("origin");
    let url = if remote.contains("://") {
        remote.to_owned()
    } else {
        crate::node::git_config(&format!("remote.{remote}.url"))
            .with_context(|| format!("remote {remote:?} has no URL"))?
    };
    Node::new(Target::parse(&url)?)
}

/// A failed transfer, as git-lfs reports it.
#[derive(Debug)]
struct Failure {
    code: u16,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: 2,
            message: format!("{e:#}"),
        }
    }
}

/// One object's batch answer: the action to take, with its URL and headers, and all of the
/// object's actions (an upload's `verify`).
#[derive(Debug)]
struct Action {
    href: String,
    headers: Vec<(String, String)>,
    all: Value,
}

/// Asks the node's batch API about one object; `None`: nothing to do (an upload of an object
/// the node has).
fn batch(
    node: &mut Node,
    operation: &str,
    oid: &str,
    size: u64,
) -> Result<Option<Action>, Failure> {
    let url = format!("{}.git/info/lfs/objects/batch", node.repo_url());
    let body = json!({
        "operation": operation,
        "transfers": ["basic"],
        "objects": [{ "oid": oid, "size": size }],
        "hash_algo": "sha256",
    });
    let mut resp = node
        .request("POST", &url)
        .header("Accept", LFS_JSON)
        .header("Content-Type", LFS_JSON)
        .send(body.to_string())
        .map_err(|e| node.unreachable(e))?;
    match resp.status().as_u16() {
        200 => {}
        401 => {
            return Err(Failure {
                code: 401,
                message: format!("{:#}", node.unauthorized()),
            });
        }
        404 => {
            return Err(Failure {
                code: 404,
                message: format!("{:#}", node.not_found()),
            });
        }
        status => {
            return Err(Failure {
                code: status,
                message: refusal_message(&mut resp),
            });
        }
    }
    let answer: Value = serde_json::from_slice(
        &resp
            .body_mut()
            .with_config()
            .limit(MAX_BATCH_ANSWER)
            .read_to_vec()
            .context("read the batch answer")?,
    )
    .context("parse the batch answer")?;
    let obj = &answer["objects"][0];
    if let Some(err) = obj.get("error") {
        let code = err["code"].as_u64().unwrap_or(500) as u16;
        let message = match code {
            404 => format!(
                "LFS object {oid} ({size} bytes) of {} is not on the node at {} and none of its \
                 peers had it",
                node.target.path(),
                node.base
            ),
            _ => err["message"].as_str().unwrap_or("refused").to_owned(),
        };
        return Err(Failure { code, message });
    }
    let Some(action) = obj["actions"].get(operation) else {
        return Ok(None);
    };
    let href = action["href"]
        .as_str()
        .context("a batch action without href")?
        .to_owned();
    let headers = action["header"]
        .as_object()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(Action {
        href,
        headers,
        all: obj["actions"].clone(),
    }))
}

/// Progress events for one object.
struct Progress {
    out: Out,
    oid: String,
    so_far: u64,
    reported: u64,
}

impl Progress {
    fn add(&mut self, n: u64, force: bool) {
        self.so_far += n;
        if force || self.so_far - self.reported >= PROGRESS_EVERY {
            let since = self.so_far - self.reported;
            self.reported = self.so_far;
            let _ = send(
                &self.out,
                &json!({ "event": "progress", "oid": self.oid, "bytesSoFar": self.so_far, "bytesSinceLast": since }),
            );
        }
    }
}

fn download(node: &mut Node, out: &Out, msg: &Value) -> Result<String, Failure> {
    let oid = msg["oid"].as_str().unwrap_or("");
    let size = msg["size"].as_u64().unwrap_or(0);
    if oid.len() != 64 || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure {
            code: 422,
            message: format!("bad oid {oid:?}"),
        });
    }
    let Some(Action { href, headers, .. }) = batch(node, "download", oid, size)? else {
        return Err(Failure {
            code: 500,
            message: "the node gave no download action".into(),
        });
    };
    let mut resp = node
        .get_action(&href, &headers)
        .call()
        .map_err(|e| node.unreachable(e))?;
    if resp.status().as_u16() != 200 {
        return Err(Failure {
            code: resp.status().as_u16(),
            message: refusal_message(&mut resp),
        });
    }
    let dir = lfs_tmp_dir()?;
    let path = dir.join(format!("hubmesh-{oid}.part"));
    let mut file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut body = resp.into_body().into_reader();
    let mut hasher = Sha256::new();
    let mut progress = Progress {
        out: out.clone(),
        oid: oid.to_owned(),
        so_far: 0,
        reported: 0,
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = body
            .read(&mut buf)
            .context("read the object from the node")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).context("write the object")?;
        progress.add(n as u64, false);
        if progress.so_far > size {
            break;
        }
    }
    file.sync_all().ok();
    let got = hex(&hasher.finalize());
    if progress.so_far != size || got != oid {
        let _ = std::fs::remove_file(&path);
        return Err(Failure {
            code: 500,
            message: format!(
                "the node sent {} bytes hashing to {got}, not {oid} ({size} bytes)",
                progress.so_far
            ),
        });
    }
    progress.add(0, true);
    Ok(path.to_string_lossy().into_owned())
}

fn upload(node: &mut Node, out: &Out, msg: &Value) -> Result<(), Failure> {
    let oid = msg["oid"].as_str().unwrap_or("");
    let size = msg["size"].as_u64().unwrap_or(0);
    let path = msg["path"].as_str().context("an upload without path")?;
    let Some(Action {
        href,
        headers,
        all: actions,
    }) = batch(node, "upload", oid, size)?
    else {
        // The node has it already.
        let mut p = Progress {
            out: out.clone(),
            oid: oid.to_owned(),
            so_far: 0,
            reported: 0,
        };
        p.add(size, true);
        return Ok(());
    };
    let file = File::open(path).with_context(|| format!("open {path}"))?;
    let progress = Arc::new(Mutex::new(Progress {
        out: out.clone(),
        oid: oid.to_owned(),
        so_far: 0,
        reported: 0,
    }));
    let reader = Counting {
        inner: file,
        progress: progress.clone(),
    };
    let mut resp = node
        .send_action("PUT", &href, &headers)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", size.to_string())
        .send(ureq::SendBody::from_owned_reader(reader))
        .map_err(|e| node.unreachable(e))?;
    if !resp.status().is_success() {
        return Err(Failure {
            code: resp.status().as_u16(),
            message: refusal_message(&mut resp),
        });
    }
    if let Ok(mut p) = progress.lock() {
        p.add(0, true);
    }
    if let Some(verify) = actions.get("verify") {
        let href = verify["href"]
            .as_str()
            .context("a verify action without href")?;
        let headers: Vec<(String, String)> = verify["header"]
            .as_object()
            .map(|h| {
                h.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let mut resp = node
            .send_action("POST", href, &headers)
            .header("Accept", LFS_JSON)
            .header("Content-Type", LFS_JSON)
            .send(json!({ "oid": oid, "size": size }).to_string())
            .map_err(|e| node.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(Failure {
                code: resp.status().as_u16(),
                message: refusal_message(&mut resp),
            });
        }
    }
    Ok(())
}

/// A reader that reports what has been read as upload progress.
struct Counting {
    inner: File,
    progress: Arc<Mutex<Progress>>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut p) = self.progress.lock() {
            p.add(n as u64, false);
        }
        Ok(n)
    }
}

/// `.git/lfs/tmp` of the repository git-lfs runs in (so git-lfs can rename the file into
/// its object store).
fn lfs_tmp_dir() -> anyhow::Result<PathBuf> {
    let git_dir = std::process::Command::new("git")
        .args(["rev-parse", "--absolute-git-dir"])
        .output()
        .context("run git rev-parse")?;
    if !git_dir.status.success() {
        bail!("not in a git repository");
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&git_dir.stdout).trim()).join("lfs/tmp");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
