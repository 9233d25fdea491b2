//! Uploads: README front-matter validation, preupload (which files a client should send
//! through the LFS batch API), and NDJSON commits: the body is read as it arrives
//! ([`super::ndjson`]), its lines parsed into pending operations, and `hub-core` plans and
//! writes the commit ([`hub_core::Hub::commit`]).

use super::{RevPath, repo_url, writable};
use crate::AppState;
use crate::error::AppError;
use crate::util::{parse_json, truthy};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hub_core::preupload::Announced;
use hub_core::{Need, Pending};
use hub_protocol::repo::validate_repo_path;
use hub_repo::{CommitRequest, Operation};
use hub_store::Sha256;
use serde::Deserialize;
use serde_json::{Value, json};

/// Largest NDJSON commit body (inline content is base64 in it; big lines stream to the store).
pub const MAX_COMMIT_BODY: u64 = 64 * 1024 * 1024 * 1024;
/// Most lines (operations) in one commit.
const MAX_COMMIT_LINES: usize = 100_000;

/// `POST /api/validate-yaml`: parses the README's YAML front matter (delimiters, YAML syntax,
/// a mapping at the top) and reports what is wrong.
pub(super) async fn validate_yaml(body: Bytes) -> Result<Response, AppError> {
    let body: Value = parse_json(&body)?;
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let checked = hub_core::card_rules::validate_metadata(content);
    let listed = |items: Vec<String>| -> Vec<Value> {
        items
            .into_iter()
            .map(|message| json!({ "message": message }))
            .collect()
    };
    let status = if checked.errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let body = json!({ "errors": listed(checked.errors), "warnings": listed(checked.warnings) });
    Ok((status, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
struct PreuploadBody {
    files: Vec<PreuploadFile>,
    /// The `.gitignore` of the commit being prepared, when it adds one.
    #[serde(rename = "gitIgnore")]
    git_ignore: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PreuploadFile {
    path: String,
    #[serde(default)]
    sample: String,
    #[serde(default)]
    size: u64,
}

/// `POST …/preupload/{rev}`: per file, `uploadMode`, `shouldIgnore` (the `.gitignore` sent
/// as `gitIgnore`, else the revision's) and `oid` when the revision holds that path (so the
/// client skips unchanged files); `hub_core::preupload` decides.
pub(super) async fn preupload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    Query(q): Query<CommitQuery>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    // Preparing a pull request (`create_pr=1`) needs read access only, as opening one does.
    let need = if truthy(q.create_pr.as_deref()) {
        Need::Read
    } else {
        Need::Write
    };
    let (id, _) = writable(&state, &headers, &p.repo(), need).await?;
    let body: PreuploadBody = parse_json(&body)?;
    if body.files.len() > 1000 {
        return Err(AppError::BadRequest(
            "at most 1000 files per preupload call".into(),
        ));
    }
    let mut files = Vec::with_capacity(body.files.len());
    for f in body.files {
        validate_repo_path(&f.path)
            .map_err(|e| AppError::BadRequest(format!("invalid path {:?}: {e}", f.path)))?;
        let sample = base64::engine::general_purpose::STANDARD
            .decode(f.sample.as_bytes())
            .unwrap_or_default();
        files.push(Announced {
            path: f.path,
            size: f.size,
            sample,
        });
    }
    let plans = state
        .hub()
        .plan_upload(
            &id,
            &p.rev,
            files,
            body.git_ignore,
            // Every client gets the Hub's answer (ADR 0010): 2.x clients with hf_xet upload
            // `lfs` files through Xet, others through the LFS batch API.
            true,
        )
        .await?;
    let files: Vec<Value> = plans
        .into_iter()
        .map(|plan| {
            let mut v = json!({
                "path": plan.path,
                "uploadMode": if plan.lfs { "lfs" } else { "regular" },
                "shouldIgnore": plan.should_ignore,
            });
            if let Some(oid) = plan.oid {
                v["oid"] = json!(oid);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "files": files })))
}

#[derive(Debug, Deserialize)]
struct CommitLine {
    key: String,
    value: Value,
}

#[derive(Debug, Deserialize)]
struct HeaderValueJson {
    summary: Option<String>,
    description: Option<String>,
    #[serde(rename = "parentCommit")]
    parent_commit: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FileLine {
    path: String,
    content: String,
    encoding: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LfsFileLine {
    path: String,
    oid: String,
    algo: Option<String>,
    size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PathLine {
    path: String,
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct CommitQuery {
    create_pr: Option<String>,
}

pub(super) async fn commit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    Query(q): Query<CommitQuery>,
    body: Body,
) -> Result<Json<Value>, AppError> {
    let create_pr = truthy(q.create_pr.as_deref());
    // A pull request is open to whoever may read the repo (`open_discussion` checks); a
    // commit to a branch needs write access.
    let (id, principal) = if create_pr {
        let principal = crate::extract::require_auth(&state, &headers).await?;
        let id = p.repo().id()?;
        // Before the body is read: who may not read the repo sends nothing into the store.
        crate::access::access(&state, Some(&principal), &id, Need::Read).await?;
        (id, principal)
    } else {
        writable(&state, &headers, &p.repo(), Need::Write).await?
    };
    let lines = super::ndjson::read_lines(
        body,
        state.store().clone(),
        MAX_COMMIT_BODY,
        MAX_COMMIT_LINES,
    )
    .await?;
    let (header_line, pending) = parse_commit_lines(lines)?;
    let message = hub_core::commit::message(header_line.summary, header_line.description);
    let mut branch = p.rev.clone();
    let mut pr = None;
    if create_pr {
        let title = message.lines().next().unwrap_or("Update").to_owned();
        let d = state
            .hub()
            .open_discussion(&principal, &id, &title, &message, Some(&p.rev))
            .await?;
        branch = hub_core::discussions::pr_ref(d.num);
        pr = Some(d.num);
    }
    let request = CommitRequest {
        branch,
        message,
        author: hub_core::author_of(&principal),
        parent: header_line.parent_commit,
        operations: Vec::new(),
    };
    let info = state.hub().commit(&id, request, pending).await?;
    // A commit to a pull request's head shows in its thread.
    let pr = pr.or_else(|| {
        p.rev
            .strip_prefix("refs/pr/")
            .and_then(|n| n.parse::<u64>().ok())
    });
    if let Some(num) = pr {
        state
            .hub()
            .record_pr_commit(&principal, &id, num, &info.id, &info.title)
            .await?;
    }
    let url = format!("{}/commit/{}", repo_url(&headers, &id), info.id);
    Ok(Json(json!({
        "success": true,
        "commitOid": info.id,
        "commitUrl": url,
        "pullRequestUrl": pr.map(|num| super::discussions::discussion_url(&headers, &id, num)),
    })))
}

/// Parses the lines of an NDJSON commit body: a header line, then file operations. Every line
/// is checked before anything is committed.
fn parse_commit_lines(
    lines: Vec<super::ndjson::Line>,
) -> Result<(HeaderValueJson, Vec<Pending>), AppError> {
    let bad = |msg: String| AppError::BadRequest(msg);
    let mut header_line = None;
    let mut pending = Vec::new();
    for (n, raw) in lines.into_iter().enumerate() {
        let raw = match raw {
            super::ndjson::Line::Small(raw) => raw,
            super::ndjson::Line::StoredFile { path, info } => {
                if header_line.is_none() {
                    return Err(bad("commit body must start with a header line".into()));
                }
                pending.push(Pending::Stored { path, info });
                continue;
            }
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(&raw);
        let line: CommitLine = serde_json::from_slice(raw)
            .map_err(|e| bad(format!("commit body line {}: invalid JSON: {e}", n + 1)))?;
        let field =
            |e: serde_json::Error| bad(format!("commit body line {} ({}): {e}", n + 1, line.key));
        match line.key.as_str() {
            "header" if header_line.is_none() && pending.is_empty() => {
                header_line = Some(
                    serde_json::from_value::<HeaderValueJson>(line.value.clone()).map_err(field)?,
                );
            }
            "header" => {
                return Err(bad(format!(
                    "commit body line {}: unexpected header",
                    n + 1
                )));
            }
            "file" => {
                let f: FileLine = serde_json::from_value(line.value.clone()).map_err(field)?;
                let bytes = match f.encoding.as_deref() {
                    Some("base64") => base64::engine::general_purpose::STANDARD
                        .decode(f.content.as_bytes())
                        .map_err(|e| {
                            bad(format!("commit body line {}: invalid base64: {e}", n + 1))
                        })?,
                    None | Some("utf-8") => f.content.into_bytes(),
                    Some(other) => return Err(bad(format!("unsupported encoding {other:?}"))),
                };
                pending.push(Pending::Inline {
                    path: f.path,
                    bytes,
                });
            }
            "lfsFile" => {
                let f: LfsFileLine = serde_json::from_value(line.value.clone()).map_err(field)?;
                if f.algo.as_deref().is_some_and(|a| a != "sha256") {
                    return Err(bad(format!("unsupported LFS hash algorithm {:?}", f.algo)));
                }
                validate_repo_path(&f.path).map_err(|e| {
                    AppError::Unprocessable(format!("invalid path {:?}: {e}", f.path))
                })?;
                let sha256: Sha256 = f
                    .oid
                    .parse()
                    .map_err(|_| bad(format!("invalid LFS oid {:?}", f.oid)))?;
                pending.push(Pending::Lfs {
                    path: f.path,
                    sha256,
                    size: f.size,
                });
            }
            "deletedFile" => {
                let f: PathLine = serde_json::from_value(line.value.clone()).map_err(field)?;
                pending.push(Pending::Other(Operation::Delete { path: f.path }));
            }
            "deletedFolder" => {
                let f: PathLine = serde_json::from_value(line.value.clone()).map_err(field)?;
                pending.push(Pending::Other(Operation::DeleteFolder { path: f.path }));
            }
            other => {
                return Err(bad(format!(
                    "commit body line {}: unknown key {other:?}",
                    n + 1
                )));
            }
        }
    }
    let header_line = header_line.ok_or_else(|| bad("commit body has no header line".into()))?;
    if pending.is_empty() {
        return Err(bad("commit has no operations".into()));
    }
    Ok((header_line, pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_commit_body(body: &[u8]) -> Result<(HeaderValueJson, Vec<Pending>), AppError> {
        let lines = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| super::super::ndjson::Line::Small(l.to_vec()))
            .collect();
        parse_commit_lines(lines)
    }

    #[test]
    fn commit_bodies() {
        let ok = b"{\"key\":\"header\",\"value\":{\"summary\":\"s\"}}\n{\"key\":\"file\",\"value\":{\"path\":\"a.txt\",\"content\":\"aGk=\",\"encoding\":\"base64\"}}\n";
        let (h, ops) = parse_commit_body(ok).unwrap();
        assert_eq!(h.summary.as_deref(), Some("s"));
        assert!(matches!(&ops[0], Pending::Inline { bytes, .. } if bytes == b"hi"));
        for bad in [
            &b""[..],
            b"{\"key\":\"header\",\"value\":{}}\n",
            b"{\"key\":\"file\",\"value\":{\"path\":\"a\",\"content\":\"\"}}\n",
            b"{\"key\":\"header\",\"value\":{}}\n{\"key\":\"file\",\"value\":{\"path\":\"a\",\"cont",
            b"{\"key\":\"header\",\"value\":{}}\n{\"key\":\"file\",\"value\":{\"path\":\"a\",\"content\":\"!!\",\"encoding\":\"base64\"}}\n",
            b"{\"key\":\"header\",\"value\":{}}\n{\"key\":\"nope\",\"value\":{}}\n",
        ] {
            assert!(matches!(parse_commit_body(bad), Err(AppError::BadRequest(_))), "{}", String::from_utf8_lossy(bad));
        }
        // A path the Hub refuses is 422, not a malformed body.
        let bad_path = b"{\"key\":\"header\",\"value\":{}}\n{\"key\":\"lfsFile\",\"value\":{\"path\":\"../x\",\"oid\":\"00\"}}\n";
        assert!(matches!(
            parse_commit_body(bad_path),
            Err(AppError::Unprocessable(_))
        ));
    }
}
