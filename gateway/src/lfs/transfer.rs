//! The transfers the batch API signs: `PUT /lfs-objects/{oid}` streams an upload into the store
//! (kept only if it hashes to the signed oid and size, then recorded for its repository) and
//! `GET /lfs-objects/{oid}` streams a download.

use super::signed::{Signed, check_signed, signed_repo};
use crate::AppState;
use crate::error::AppError;
use crate::import::StreamImport;
use crate::util::{blocking, stream_from_store};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hub_store::Sha256;

/// `PUT /lfs-objects/{oid}`: streams the body into the store; accepted only if the content
/// hashes to `oid` and has the signed size.
pub(super) async fn upload(
    State(state): State<AppState>,
    Path(oid): Path<String>,
    Query(q): Query<Signed>,
    body: Body,
) -> Response {
    let result = async {
        let sha: Sha256 = oid
            .parse()
            .map_err(|_| AppError::BadRequest("invalid oid".into()))?;
        check_signed(&q, "upload", &sha)?;
        let mut import = StreamImport::start_expecting(
            state.store().clone(),
            hub_store::Expected {
                sha256: sha,
                size: q.size,
            },
        );
        let mut stream = body.into_data_stream();
        let mut received: u64 = 0;
        while let Some(frame) = stream.next().await {
            let frame =
                frame.map_err(|e| AppError::BadRequest(format!("upload interrupted: {e}")))?;
            received += frame.len() as u64;
            if received > q.size {
                return Err(AppError::BadRequest(format!(
                    "more than the {} bytes announced",
                    q.size
                )));
            }
            import.send(frame.to_vec()).await?;
        }
        if received != q.size {
            return Err(AppError::BadRequest(format!(
                "got {received} bytes, expected {}",
                q.size
            )));
        }
        // The store refuses (and deletes) content other than `sha`: a rejected upload
        // leaves nothing behind.
        let info = import.finish().await?;
        let repo = signed_repo(&q)?;
        let hub = state.hub().clone();
        blocking(move || Ok(hub.record_upload(&repo, &sha)?)).await?;
        tracing::info!(%sha, size = info.size, new_bytes = info.new_bytes, "LFS object stored");
        Ok(StatusCode::OK)
    }
    .await;
    match result {
        Ok(status) => status.into_response(),
        Err(e) => e.into_lfs_response(),
    }
}

/// `GET /lfs-objects/{oid}`: the object's bytes, for a signed download URL.
pub(super) async fn download(
    State(state): State<AppState>,
    Path(oid): Path<String>,
    Query(q): Query<Signed>,
) -> Response {
    let result = async {
        let sha: Sha256 = oid
            .parse()
            .map_err(|_| AppError::BadRequest("invalid oid".into()))?;
        check_signed(&q, "download", &sha)?;
        let body = stream_from_store(state.store().clone(), sha, 0, q.size).await?;
        Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, q.size.to_string())
            .body(body)
            .map_err(AppError::internal)
    }
    .await;
    result.unwrap_or_else(AppError::into_lfs_response)
}
