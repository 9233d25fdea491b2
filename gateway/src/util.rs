//! Small helpers every surface of the gateway uses: blocking work off the executor, the
//! endpoint the client addressed, the Hub's date format, JSON bodies, streaming stored files.

use crate::error::AppError;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use hub_store::Sha256;
use std::io::{Seek, SeekFrom};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes per piece when streaming a stored file.
const STREAM_CHUNK: usize = 1024 * 1024;

/// A random key that lives only in this process's memory, drawn from the OS generator on
/// first use and kept in `cell`. Each use (LFS transfer URLs, Xet tokens) has its own cell, so
/// a MAC made for one is never valid for the other; a restart invalidates them all.
pub(crate) fn process_key(
    cell: &'static OnceLock<[u8; 32]>,
) -> Result<&'static [u8; 32], AppError> {
    if let Some(k) = cell.get() {
        return Ok(k);
    }
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| AppError::internal(format!("no OS randomness: {e}")))?;
    Ok(cell.get_or_init(|| k))
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs blocking repository or store work off the async executor.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AppError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(AppError::internal)?
}

/// `http://host` as the client addressed us, for the absolute URLs the Hub returns;
/// `https://host` behind a TLS-terminating proxy that says so (`X-Forwarded-Proto: https`,
/// the only other value honoured), so that a client (a mirror's upstream client, say) reached
/// over TLS is not sent to plain HTTP.
pub(crate) fn endpoint(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    format!("{}://{host}", if https { "https" } else { "http" })
}

/// RFC 3339 with milliseconds and a `Z`, as the Hub writes dates.
pub(crate) fn format_date(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(body)
        .map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))
}

/// A query flag: `true` or `1`.
pub(crate) fn truthy(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Streams `len` bytes from `start` of a stored file: a blocking reader feeds a bounded
/// channel, so memory stays at a few chunks whatever the file size, and a client that goes
/// away stops the reader.
pub(crate) async fn stream_from_store(
    store: hub_store::Store,
    sha256: Sha256,
    start: u64,
    len: u64,
) -> Result<Body, AppError> {
    let mut reader = blocking(move || {
        let mut r = store.open_file(&sha256).map_err(|e| match e {
            hub_store::StoreError::NotFound { .. } => {
                AppError::internal(format!("LFS object {sha256} is missing from the store"))
            }
            other => other.into(),
        })?;
        r.seek(SeekFrom::Start(start)).map_err(AppError::internal)?;
        Ok(r)
    })
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let mut left = len;
        while left > 0 {
            let n = STREAM_CHUNK.min(usize::try_from(left).unwrap_or(STREAM_CHUNK));
            let item = match reader.read_owned(n) {
                Ok(buf) if buf.is_empty() => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the stored file ended early",
                )),
                Ok(buf) => Ok(buf),
                Err(e) => Err(e),
            };
            let n = item.as_ref().map_or(0, Vec::len);
            let item = item.map(Bytes::from);
            let failed = item.is_err();
            if let Err(e) = &item {
                tracing::error!(%sha256, error = %e, "reading a stored file failed");
            }
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
            left -= n as u64;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_hub_style() {
        assert_eq!(format_date(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_date(1_714_564_800), "2024-05-01T12:00:00.000Z");
        assert_eq!(format_date(951_782_400), "2000-02-29T00:00:00.000Z");
    }
}
