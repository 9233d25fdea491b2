//! Publishing a file on the origin through the Hub API, as `huggingface_hub` does with the
//! LFS transfer: create the repo, `objects/batch`, `PUT` the bytes, verify, commit an
//! `lfsFile` line.

use super::node::Node;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn check(what: &str, mut response: ureq::http::Response<ureq::Body>) -> Result<Value> {
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("read the answer to {what}"))?;
    let exists = what == "create repo" && status == 409;
    if !(200..300).contains(&status) && !exists {
        bail!("{what}: {status} {}", &text[..text.len().min(300)]);
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Creates model repo `repo` (`ns/name`) on `node` if needed and commits `bytes` as LFS
/// file `path`; returns the commit sha.
pub fn publish_file(
    agent: &ureq::Agent,
    node: &Node,
    token: &str,
    repo: &str,
    path: &str,
    bytes: &[u8],
) -> Result<String> {
    let auth = format!("Bearer {token}");
    let (ns, name) = repo.split_once('/').context("repo is ns/name")?;
    let url = &node.url;
    check(
        "create repo",
        agent
            .post(&format!("{url}/api/repos/create"))
            .header("Authorization", &auth)
            .send_json(json!({ "name": name, "organization": ns }))?,
    )?;
    let oid = hex::encode(Sha256::digest(bytes));
    let size = bytes.len() as u64;
    let batch = check(
        "lfs batch",
        agent
            .post(&format!("{url}/{repo}.git/info/lfs/objects/batch"))
            .header("Authorization", &auth)
            .header("Accept", "application/vnd.git-lfs+json")
            .header("Content-Type", "application/vnd.git-lfs+json")
            .send(
                json!({
                    "operation": "upload",
                    "transfers": ["basic"],
                    "objects": [{ "oid": oid, "size": size }],
                    "hash_algo": "sha256",
                    "ref": { "name": "main" },
                })
                .to_string(),
            )?,
    )?;
    let actions = &batch["objects"][0]["actions"];
    if let Some(href) = actions["upload"]["href"].as_str() {
        check("lfs upload", agent.put(href).send(bytes)?)?;
        if let Some(verify) = actions["verify"]["href"].as_str() {
            check(
                "lfs verify",
                agent
                    .post(verify)
                    .header("Authorization", &auth)
                    .send_json(json!({ "oid": oid, "size": size }))?,
            )?;
        }
    }
    let body = [
        json!({ "key": "header", "value": { "summary": format!("add {path}") } }),
        json!({ "key": "lfsFile", "value": { "path": path, "algo": "sha256", "oid": oid, "size": size } }),
    ]
    .iter()
    .map(|line| format!("{line}\n"))
    .collect::<String>();
    let commit = check(
        "commit",
        agent
            .post(&format!("{url}/api/models/{repo}/commit/main"))
            .header("Authorization", &auth)
            .header("Content-Type", "application/x-ndjson")
            .send(body)?,
    )?;
    commit["commitOid"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("commit answered no commitOid: {commit}"))
}

/// Downloads `path` of `repo` from `node` and returns its SHA-256 (hex).
pub fn download_sha256(agent: &ureq::Agent, node: &Node, repo: &str, path: &str) -> Result<String> {
    let url = format!("{}/{repo}/resolve/main/{path}", node.url);
    let mut response = agent
        .get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    if response.status().as_u16() != 200 {
        bail!("GET {url}: {}", response.status());
    }
    let mut reader = response.body_mut().as_reader();
    let mut hasher = Sha256::new();
    std::io::copy(&mut reader, &mut hasher).with_context(|| format!("read {url}"))?;
    Ok(hex::encode(hasher.finalize()))
}
