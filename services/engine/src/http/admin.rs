//! Administration routes: `GET /api/v1/admin/backup`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

use super::{ApiError, AppState};

/// `Content-Type` of a backup (a zstd-compressed tar).
pub const BACKUP_CONTENT_TYPE: &str = "application/zstd";

/// A consistent backup of the running store, streamed as it is written;
/// writes go on meanwhile. A failure mid-stream aborts the connection, so a
/// cut-short backup never looks complete.
pub async fn backup(
    State(state): State<AppState>,
    _: super::auth::Caller,
) -> Result<Response, ApiError> {
    let stream = state.storage.backup()?;
    let name = format!(
        "attachment; filename=\"engine-backup-{}.tar.zst\"",
        jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
    );
    let disposition =
        HeaderValue::from_str(&name).unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(BACKUP_CONTENT_TYPE),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from_stream(stream.map_err(std::io::Error::other)),
    )
        .into_response())
}
