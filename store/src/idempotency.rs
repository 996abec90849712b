//! Idempotency keys: the first answer to a request that moves value, kept so that a retry
//! gets the same answer instead of moving value twice.

use async_trait::async_trait;
use credex_ledger::Timestamp;

use crate::StoreError;

/// What a request with an idempotency key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key is new (or its first request died long ago): run the request, then finish.
    Started,
    /// The request ran before: answer this.
    Replay { status: u16, body: String },
    /// The first request with this key is still running.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

/// Idempotency keys, per scope (the org a request acts on, or the platform).
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` in `scope` for a request with `fingerprint`. A claim still in progress
    /// that began before `stale_before` is taken over (its request died: the ledger's
    /// client-chosen transfer ids make running it again safe).
    async fn idempotency_begin(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8; 32],
        now: Timestamp,
        stale_before: Timestamp,
    ) -> Result<Begin, StoreError>;

    /// Records the answer of a claimed key.
    async fn idempotency_finish(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError>;

    /// Releases a claim whose request failed before answering, so a retry may run.
    async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError>;

    /// Removes keys older than `before`; returns how many.
    async fn idempotency_purge(&self, before: Timestamp) -> Result<u64, StoreError>;
}

macro_rules! shared_idempotency {
    ($store:ident) => {
        mod idempotency_shared {
            use async_trait::async_trait;
            use credex_ledger::Timestamp;
            use sqlx::Row;

            use super::$store;
            use crate::idempotency::{Begin, IdempotencyStore};
            use crate::StoreError;

            #[async_trait]
            impl IdempotencyStore for $store {
                async fn idempotency_begin(
                    &self,
                    scope: &str,
                    key: &str,
                    fingerprint: &[u8; 32],
                    now: Timestamp,
                    stale_before: Timestamp,
                ) -> Result<Begin, StoreError> {
                    // Three rounds at most: a claim can vanish (purged) or be taken over
                    // between our statements, never more often than that in a row.
                    for _ in 0..3 {
                        let inserted = sqlx::query(
                            "INSERT INTO idempotency_keys (scope, key, fingerprint, state, created_at) \
                             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (scope, key) DO NOTHING",
                        )
                        .bind(scope)
                        .bind(key)
                        .bind(fingerprint.as_slice())
                        .bind(now.as_micros())
                        .execute(&self.pool)
                        .await?;
                        if inserted.rows_affected() == 1 {
                            return Ok(Begin::Started);
                        }
                        let row = sqlx::query(
                            "SELECT fingerprint, state, status, body, created_at FROM idempotency_keys \
                             WHERE scope = $1 AND key = $2",
                        )
                        .bind(scope)
                        .bind(key)
                        .fetch_optional(&self.pool)
                        .await?;
                        let Some(row) = row else { continue };
                        let stored: Vec<u8> = row.try_get("fingerprint")?;
                        if stored.as_slice() != fingerprint.as_slice() {
                            return Ok(Begin::Mismatch);
                        }
                        let state: i16 = row.try_get("state")?;
                        if state == 1 {
                            let status: i32 = row.try_get::<Option<i32>, _>("status")?.unwrap_or(500);
                            let body: String = row.try_get::<Option<String>, _>("body")?.unwrap_or_default();
                            let status = u16::try_from(status).map_err(StoreError::corrupt)?;
                            return Ok(Begin::Replay { status, body });
                        }
                        let created_at: i64 = row.try_get("created_at")?;
                        if created_at >= stale_before.as_micros() {
                            return Ok(Begin::InProgress);
                        }
                        let taken = sqlx::query(
                            "UPDATE idempotency_keys SET created_at = $3 \
                             WHERE scope = $1 AND key = $2 AND state = 0 AND created_at = $4",
                        )
                        .bind(scope)
                        .bind(key)
                        .bind(now.as_micros())
                        .bind(created_at)
                        .execute(&self.pool)
                        .await?;
                        if taken.rows_affected() == 1 {
                            return Ok(Begin::Started);
                        }
                    }
                    Ok(Begin::InProgress)
                }

                async fn idempotency_finish(
                    &self,
                    scope: &str,
                    key: &str,
                    status: u16,
                    body: &str,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "UPDATE idempotency_keys SET state = 1, status = $3, body = $4 \
                         WHERE scope = $1 AND key = $2",
                    )
                    .bind(scope)
                    .bind(key)
                    .bind(i32::from(status))
                    .bind(body)
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn idempotency_abandon(&self, scope: &str, key: &str) -> Result<(), StoreError> {
                    sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND state = 0")
                        .bind(scope)
                        .bind(key)
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn idempotency_purge(&self, before: Timestamp) -> Result<u64, StoreError> {
                    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                        .bind(before.as_micros())
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected())
                }
            }
        }
    };
}

pub(crate) use shared_idempotency;
