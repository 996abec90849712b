//! `Idempotency-Key` on every request that moves value.
//!
//! The key is stored per scope (the org a request acts on, or the platform for platform-wide
//! operations) with a fingerprint of the request (SHA-256 of method, path and body). A replay
//! answers the stored status, `Location` and body; the same key with a different request
//! answers 422; while the first request still runs, 409. Keys are kept for
//! [`RETENTION_HOURS`] hours (at least 24), then purged. A request that died half-way leaves a
//! claim that is taken over after [`STALE_AFTER_SECONDS`]: running it again is safe because the
//! ledger transfers it makes have ids derived from the key.

use actix_web::http::{header, StatusCode};
use actix_web::{dev::Payload, FromRequest, HttpRequest, HttpResponse};
use credex_ledger::TransferId;
use credex_store::{Begin, Store};
use futures::future::{ready, Ready};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::problem::{ApiError, ProblemKind};

pub const HEADER: &str = "Idempotency-Key";
pub const KEY_MAX_LEN: usize = 255;
pub const RETENTION_HOURS: u32 = 48;
pub const STALE_AFTER_SECONDS: u32 = 300;

/// The `Idempotency-Key` of a request: 1 to 255 visible ASCII characters. Required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the `index`-th transfer a request with this key makes in `scope`: the same on
    /// every retry, so the ledger answers `exists` instead of moving value twice.
    pub fn transfer_id(&self, scope: &str, index: u32) -> TransferId {
        let digest = Sha256::new()
            .chain_update(scope.as_bytes())
            .chain_update([0])
            .chain_update(self.0.as_bytes())
            .chain_update(index.to_be_bytes())
            .finalize();
        let mut bytes = [0_u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8: custom
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
        TransferId::new(uuid::Uuid::from_bytes(bytes)).expect("never nil or max")
    }
}

impl IdempotencyKey {
    /// The key a header value holds, if it is 1 to 255 visible ASCII characters.
    fn parse(value: &header::HeaderValue) -> Option<Self> {
        let key = value.to_str().ok()?;
        let valid = (1..=KEY_MAX_LEN).contains(&key.len())
            && key.bytes().all(|b| (0x21..=0x7e).contains(&b));
        valid.then(|| IdempotencyKey(key.to_owned()))
    }
}

impl FromRequest for IdempotencyKey {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let key = req.headers().get(HEADER).and_then(IdempotencyKey::parse);
        ready(key.ok_or_else(|| {
            ApiError::new(
                ProblemKind::BadRequest,
                "this request moves value: send an Idempotency-Key header of 1 to 255 visible ASCII characters",
            )
            .into()
        }))
    }
}

/// An optional `Idempotency-Key`, for requests that create something without moving value: a
/// retry with the key answers the first answer instead of creating a second one. Absent, the
/// request simply runs; present but malformed, it is refused (400) before anything happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionalIdempotencyKey(pub Option<IdempotencyKey>);

impl FromRequest for OptionalIdempotencyKey {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match req.headers().get(HEADER) {
            None => Ok(Self(None)),
            Some(value) => IdempotencyKey::parse(value)
                .map(Some)
                .map(Self)
                .ok_or_else(|| {
                    ApiError::new(
                        ProblemKind::BadRequest,
                        "an Idempotency-Key is 1 to 255 visible ASCII characters",
                    )
                    .into()
                }),
        })
    }
}

/// The fingerprint of a request: method, path and query, body.
pub fn fingerprint(req: &HttpRequest, body: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(req.method().as_str())
        .chain_update([0])
        .chain_update(req.uri().to_string())
        .chain_update([0])
        .chain_update(body)
        .finalize()
        .into()
}

/// An answer as stored for replay.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    location: Option<String>,
    body: serde_json::Value,
}

/// A JSON answer, with its `Location` when it created something.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: serde_json::Value,
}

impl Answer {
    fn response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(location) = &self.location {
            response.insert_header((header::LOCATION, location.clone()));
        }
        response.json(&self.body)
    }
}

/// Runs `work` once per key: the first time for real, afterwards as a replay of its answer.
/// An error from `work` releases the key (nothing was done that a retry could repeat wrongly).
pub async fn once<F, Fut>(
    store: &dyn Store,
    scope: &str,
    key: &IdempotencyKey,
    fingerprint: [u8; 32],
    work: F,
) -> Result<HttpResponse, actix_web::Error>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Answer, actix_web::Error>>,
{
    let now = store.clock().now();
    let stale_before = now.plus_micros(-i64::from(STALE_AFTER_SECONDS) * 1_000_000);
    let begin = store
        .idempotency_begin(scope, key.as_str(), &fingerprint, now, stale_before)
        .await
        .map_err(|error| ApiError::internal(&error))?;
    match begin {
        Begin::Replay { status, body } => {
            let stored: Stored =
                serde_json::from_str(&body).map_err(|error| ApiError::internal(&error))?;
            let status =
                StatusCode::from_u16(status).map_err(|error| ApiError::internal(&error))?;
            let answer = Answer {
                status,
                location: stored.location,
                body: stored.body,
            };
            let mut response = answer.response();
            response.headers_mut().insert(
                header::HeaderName::from_static("idempotent-replayed"),
                header::HeaderValue::from_static("true"),
            );
            Ok(response)
        }
        Begin::InProgress => Err(ApiError::new(
            ProblemKind::Conflict,
            "a request with this Idempotency-Key is still running; retry later",
        )
        .into()),
        Begin::Mismatch => Err(ApiError::new(
            ProblemKind::Unprocessable,
            "this Idempotency-Key was used for a different request",
        )
        .into()),
        Begin::Started => match work().await {
            Ok(answer) => {
                let stored = Stored {
                    location: answer.location.clone(),
                    body: answer.body.clone(),
                };
                let text =
                    serde_json::to_string(&stored).map_err(|error| ApiError::internal(&error))?;
                store
                    .idempotency_finish(scope, key.as_str(), answer.status.as_u16(), &text)
                    .await
                    .map_err(|error| ApiError::internal(&error))?;
                Ok(answer.response())
            }
            Err(error) => {
                let _ = store.idempotency_abandon(scope, key.as_str()).await;
                Err(error)
            }
        },
    }
}

/// [`once`] when the request has a key; otherwise `work`, run as it is.
pub async fn maybe_once<F, Fut>(
    store: &dyn Store,
    scope: &str,
    key: &OptionalIdempotencyKey,
    fingerprint: [u8; 32],
    work: F,
) -> Result<HttpResponse, actix_web::Error>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Answer, actix_web::Error>>,
{
    match &key.0 {
        Some(key) => once(store, scope, key, fingerprint, work).await,
        None => work().await.map(|answer| answer.response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_ids_are_stable_per_key_scope_and_index() {
        let key = IdempotencyKey("top-up-2026-11-26".to_owned());
        let id = key.transfer_id("org-a", 0);
        assert_eq!(id, key.transfer_id("org-a", 0));
        assert_ne!(id, key.transfer_id("org-b", 0));
        assert_ne!(id, key.transfer_id("org-a", 1));
        assert_eq!(id.as_uuid().get_version_num(), 8);
    }
}
