//! The upload-a-file form of a repo (`GET|POST …/upload`): a signed-in viewer with write
//! access sends one file (`multipart/form-data`, at most [`MAX_UPLOAD`]) to a path on `main`.
//! The post carries the session's CSRF token and passes the same-`Origin` check; the file is
//! committed through `hub-core` (`Hub::commit` with an inline file), so the repo's
//! `.gitattributes` decide, as for the API, whether it is stored as LFS.

use super::render::{PageError, ctx, page};
use super::repo::{RepoParams, encode_path, open, open_form};
use super::session::{Viewer, check_origin, check_post};
use crate::AppState;
use crate::error::AppError;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hub_core::{Need, Pending};
use hub_protocol::repo::{RepoType, validate_repo_path};
use hub_repo::CommitRequest;

/// The largest file the form takes (larger ones go through the client or git).
pub(crate) const MAX_UPLOAD: usize = 64 * 1024 * 1024;
/// The largest request body: the file and the form's few small fields.
pub(crate) const MAX_BODY: usize = MAX_UPLOAD + 64 * 1024;
/// Parts a form may have.
const MAX_PARTS: usize = 8;
/// The largest part header block.
const MAX_PART_HEADERS: usize = 4096;

/// One part of a `multipart/form-data` body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub data: &'a [u8],
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = from;
    while i + needle.len() <= haystack.len() {
        match haystack[i..=haystack.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(at) => {
                i += at;
                if &haystack[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// A quoted or bare parameter of a header value (`name="x"`).
fn param(value: &str, key: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case(key) {
            return None;
        }
        let v = v.trim();
        Some(
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
                .to_owned(),
        )
    })
}

/// Parses a `multipart/form-data` body (RFC 7578) whose `Content-Type` is `content_type`.
/// Bounded: at most [`MAX_PARTS`] parts with [`MAX_PART_HEADERS`] bytes of headers each; a
/// body that does not follow the format is an error, never a guess.
pub(crate) fn multipart<'a>(content_type: &str, body: &'a [u8]) -> Result<Vec<Part<'a>>, String> {
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err("expected a multipart/form-data body".into());
    }
    let boundary = param(content_type, "boundary")
        .filter(|b| (1..=70).contains(&b.len()))
        .ok_or("missing or invalid multipart boundary")?;
    let delimiter = format!("--{boundary}");
    let mut at = find(body, delimiter.as_bytes(), 0).ok_or("no multipart boundary in the body")?;
    let next_delimiter = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    loop {
        at += delimiter.len();
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        if !rest.starts_with(b"\r\n") {
            return Err("malformed multipart boundary line".into());
        }
        at += 2;
        if parts.len() == MAX_PARTS {
            return Err(format!("more than {MAX_PARTS} form fields"));
        }
        let headers_end = find(body, b"\r\n\r\n", at)
            .filter(|end| end - at <= MAX_PART_HEADERS)
            .ok_or("malformed or too large multipart part headers")?;
        let headers = std::str::from_utf8(&body[at..headers_end])
            .map_err(|_| "multipart part headers are not UTF-8")?;
        let disposition = headers
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-disposition"))
            .map(|(_, v)| v.trim().to_owned())
            .ok_or("a multipart part without Content-Disposition")?;
        let name = param(&disposition, "name").ok_or("a multipart part without a name")?;
        let filename = param(&disposition, "filename");
        let start = headers_end + 4;
        let end = find(body, next_delimiter.as_bytes(), start)
            .ok_or("a multipart part without its closing boundary")?;
        parts.push(Part {
            name,
            filename,
            data: &body[start..end],
        });
        at = end + 2;
    }
}

/// `GET …/upload`: the form, for a signed-in viewer who may write.
pub(crate) async fn upload_form(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    Path(p): Path<RepoParams>,
) -> Result<Response, PageError> {
    let Some((_, repo)) = open_form(&state, &viewer, kind, &p, Need::Write).await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    Ok(page(
        "upload.html",
        &viewer,
        ctx! { repo, max => super::render::human_size(MAX_UPLOAD as u64) },
    )?)
}

/// `POST …/upload`: commits the file to `main` and opens its page.
pub(crate) async fn upload(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(p): Path<RepoParams>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, PageError> {
    check_origin(&headers)?;
    // Past the route's body limit (or a body cut short): a Hub error, not axum's plain text.
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge(format!(
            "the form takes files up to {}; use the client or git for larger ones",
            super::render::human_size(MAX_UPLOAD as u64)
        )),
        _ => AppError::BadRequest(e.body_text()),
    })?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let parts = multipart(content_type, &body).map_err(AppError::BadRequest)?;
    let field = |name: &str| {
        parts
            .iter()
            .find(|p| p.name == name && p.filename.is_none())
            .map(|p| String::from_utf8_lossy(p.data).trim().to_owned())
    };
    let principal = check_post(&viewer, &headers, field("csrf").as_deref())?;
    let (id, repo) = open(&state, &viewer, kind, &p.ns, &p.name).await?;
    state
        .hub()
        .access(Some(&principal), &id, Need::Write)
        .await
        .map_err(AppError::from)?;
    let Some(file) = parts
        .iter()
        .find(|p| p.name == "file" && p.filename.is_some())
    else {
        return Err(AppError::BadRequest("choose a file to upload".into()).into());
    };
    if file.data.len() > MAX_UPLOAD {
        return Err(AppError::PayloadTooLarge(format!(
            "the form takes files up to {}; use the client or git for larger ones",
            super::render::human_size(MAX_UPLOAD as u64)
        ))
        .into());
    }
    // The path: the form's, else the file's own name (browsers send the name only).
    let filename = file.filename.clone().unwrap_or_default();
    let base = filename.rsplit(['/', '\\']).next().unwrap_or_default();
    let path = field("path")
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.ends_with('/') {
                format!("{p}{base}")
            } else {
                p
            }
        })
        .unwrap_or_else(|| base.to_owned());
    let path = path.trim_matches('/').to_owned();
    if let Err(e) = validate_repo_path(&path) {
        let error = format!("Invalid path {path:?}: {e}");
        let max = super::render::human_size(MAX_UPLOAD as u64);
        return Ok((
            StatusCode::BAD_REQUEST,
            page("upload.html", &viewer, ctx! { repo, max, error })?,
        )
            .into_response());
    }
    let summary = field("message")
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("Upload {path}"));
    let request = CommitRequest {
        branch: "main".into(),
        message: hub_core::commit::message(Some(summary), None),
        author: hub_core::author_of(&principal),
        parent: None,
        operations: Vec::new(),
    };
    let pending = vec![Pending::Inline {
        path: path.clone(),
        bytes: file.data.to_vec(),
    }];
    state
        .hub()
        .commit(&id, request, pending)
        .await
        .map_err(AppError::from)?;
    tracing::info!(repo = %id, path, "uploaded through the pages");
    Ok(Redirect::to(&format!("{}/blob/main/{}", repo.url, encode_path(&path))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=----X1";

    #[test]
    fn parts_with_fields_and_a_file() {
        let body = b"------X1\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\nabc\r\n\
------X1\r\nContent-Disposition: form-data; name=\"file\"; filename=\"w.bin\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\x00\r\n--\r\n------X\r\n------X1--\r\n";
        let parts = multipart(CT, body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "csrf");
        assert_eq!(parts[0].data, b"abc");
        assert_eq!(parts[1].filename.as_deref(), Some("w.bin"));
        // The file's bytes are kept as they are, boundary look-alikes included.
        assert_eq!(parts[1].data, b"\x00\r\n--\r\n------X");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let ok_part = "------X1\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n";
        for (ct, body) in [
            ("text/plain", format!("{ok_part}------X1--")),
            ("multipart/form-data", format!("{ok_part}------X1--")),
            (CT, "no boundary at all".to_owned()),
            (CT, ok_part.to_owned()),
            (
                CT,
                "------X1\r\nContent-Disposition: form-data\r\n\r\n1\r\n------X1--".to_owned(),
            ),
            (
                CT,
                "------X1\r\nX-Other: 1\r\n\r\n1\r\n------X1--".to_owned(),
            ),
            (CT, format!("------X1\r\n{}", "h".repeat(10_000))),
            (CT, "------X1garbage".to_owned()),
            (CT, format!("{}------X1--", ok_part.repeat(MAX_PARTS + 1))),
        ] {
            assert!(multipart(ct, body.as_bytes()).is_err(), "{ct} {body:.80}");
        }
        assert!(
            multipart(
                CT,
                format!("{}------X1--", ok_part.repeat(MAX_PARTS)).as_bytes()
            )
            .is_ok()
        );
    }
}
