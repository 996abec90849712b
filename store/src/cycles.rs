//! Model classes, plans' allotments and billing cycles in the database.
//!
//! The jobs that open and close cycles (in `credex-api`) move value only through the ledger,
//! with transfer ids derived from what each transfer is for; this layer keeps what they need to
//! find their place again: which cycles exist and how far each got, the face value of each
//! class as the cycle opened, and which orgs have had their allotments.

use async_trait::async_trait;
use credex_ledger::{AccountId, OrgId, Timestamp};

use crate::identity::{AuditEntry, Plan};
use crate::StoreError;

/// The most orgs one page of [`CycleStore::orgs_to_allot`] returns.
pub const ALLOT_PAGE_MAX: u32 = 1_000;

/// A model class as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRecord {
    pub class: String,
    pub face_value_per_1m_micro_cr: u64,
    pub description: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A plan's allotment of one class per cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allotment {
    pub plan: Plan,
    pub tokens_per_cycle: u64,
}

/// A cycle and how far its jobs got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleRecord {
    pub cycle: String,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    pub opened_at: Option<Timestamp>,
    pub closed_at: Option<Timestamp>,
}

/// Whether a put created or changed a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    Updated,
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no model class is named {0:?}")]
    NoSuchClass(String),
    #[error("a value is out of range")]
    OutOfRange,
}

impl From<sqlx::Error> for CycleError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::from(error))
    }
}

/// Classes, allotments and cycles, for either backend.
#[async_trait]
pub trait CycleStore: Send + Sync {
    /// Creates or changes a class (its face value applies to cycles opened afterwards), with
    /// an audit entry.
    async fn put_class(&self, class: &ClassRecord, audit: &AuditEntry) -> Result<Put, CycleError>;

    async fn classes(&self) -> Result<Vec<ClassRecord>, CycleError>;

    /// Sets a plan's allotment of a class per cycle, with an audit entry.
    async fn put_allotment(
        &self,
        class: &str,
        allotment: Allotment,
        now: Timestamp,
        audit: &AuditEntry,
    ) -> Result<Put, CycleError>;

    /// Every plan's allotments: (class, allotment), by class then plan.
    async fn allotments(&self) -> Result<Vec<(String, Allotment)>, CycleError>;

    /// The cycle, made if it does not exist; the face values of classes it does not know yet
    /// are recorded for it.
    async fn ensure_cycle(
        &self,
        cycle: &str,
        starts_at: Timestamp,
        ends_at: Timestamp,
    ) -> Result<CycleRecord, CycleError>;

    async fn cycle(&self, cycle: &str) -> Result<Option<CycleRecord>, CycleError>;

    /// The most recent cycles first, at most `limit`.
    async fn cycles(&self, limit: u32) -> Result<Vec<CycleRecord>, CycleError>;

    /// The cycle's classes and their face values: (class, µCR per 1M tokens).
    async fn cycle_classes(&self, cycle: &str) -> Result<Vec<(String, u64)>, CycleError>;

    /// Orgs created before `created_before` without their allotments of `cycle` yet, in id
    /// order after `after`.
    async fn orgs_to_allot(
        &self,
        cycle: &str,
        created_before: Timestamp,
        after: Option<OrgId>,
        limit: u32,
    ) -> Result<Vec<(OrgId, Plan)>, CycleError>;

    /// The accounts that hold `asset`, in id order after `after`.
    async fn asset_accounts(
        &self,
        asset: &str,
        after: Option<AccountId>,
        limit: u32,
    ) -> Result<Vec<AccountId>, CycleError>;

    /// Records that the org's allotments of the cycle are in the ledger.
    async fn mark_allotted(
        &self,
        cycle: &str,
        org: OrgId,
        now: Timestamp,
    ) -> Result<(), CycleError>;

    /// Records that every org present when the open job ran was allotted (kept once set).
    async fn mark_opened(&self, cycle: &str, now: Timestamp) -> Result<(), CycleError>;

    /// Records that the cycle is closed (kept once set).
    async fn mark_closed(&self, cycle: &str, now: Timestamp) -> Result<(), CycleError>;
}

/// Expands the shared implementation of [`CycleStore`] for `$store` (whose field `pool` is a
/// `sqlx::Pool<$db>`), with the backend's dialect module `$dialect`.
macro_rules! shared_cycles {
    ($store:ident, $db:ty, $dialect:ident) => {
        mod cycles_shared {
            use async_trait::async_trait;
            use credex_ledger::{AccountId, OrgId, Timestamp};
            use sqlx::Row;
            use uuid::Uuid;

            use super::$dialect as dialect;
            use super::$store;
            use crate::cycles::{
                Allotment, ClassRecord, CycleError, CycleRecord, CycleStore, Put,
            };
            use crate::identity::{AuditEntry, Plan, UserId};
            use crate::StoreError;

            type Connection = <$db as sqlx::Database>::Connection;
            type DbRow = <$db as sqlx::Database>::Row;

            const CYCLE_COLUMNS: &str = "cycle, starts_at, ends_at, opened_at, closed_at";

            fn unsigned(value: i64) -> Result<u64, CycleError> {
                u64::try_from(value).map_err(|_| StoreError::corrupt("a negative amount").into())
            }

            fn signed(value: u64) -> Result<i64, CycleError> {
                i64::try_from(value).map_err(|_| CycleError::OutOfRange)
            }

            fn plan(text: &str) -> Result<Plan, CycleError> {
                Plan::parse(text).map_err(|error| StoreError::corrupt(error).into())
            }

            fn cycle_record(row: &DbRow) -> Result<CycleRecord, CycleError> {
                let instant =
                    |value: Option<i64>| value.map(Timestamp::from_micros);
                Ok(CycleRecord {
                    cycle: row.try_get("cycle")?,
                    starts_at: Timestamp::from_micros(row.try_get("starts_at")?),
                    ends_at: Timestamp::from_micros(row.try_get("ends_at")?),
                    opened_at: instant(row.try_get("opened_at")?),
                    closed_at: instant(row.try_get("closed_at")?),
                })
            }

            async fn retrying<T, F, Fut>(attempt: F) -> Result<T, CycleError>
            where
                F: Fn() -> Fut,
                Fut: std::future::Future<Output = Result<T, CycleError>>,
            {
                crate::sql::retry(dialect::is_retryable, attempt).await
            }

            crate::sql::append_audit_fn!(CycleError);

            #[async_trait]
            impl CycleStore for $store {
                async fn put_class(
                    &self,
                    class: &ClassRecord,
                    audit: &AuditEntry,
                ) -> Result<Put, CycleError> {
                    let face = signed(class.face_value_per_1m_micro_cr)?;
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let updated = sqlx::query(
                            "UPDATE model_classes SET face_value_per_1m_micro_cr = $2, \
                             description = $3, updated_at = $4 WHERE class = $1",
                        )
                        .bind(&class.class)
                        .bind(face)
                        .bind(&class.description)
                        .bind(class.updated_at.as_micros())
                        .execute(&mut *tx)
                        .await?;
                        let put = if updated.rows_affected() == 1 {
                            Put::Updated
                        } else {
                            sqlx::query(
                                "INSERT INTO model_classes (class, face_value_per_1m_micro_cr, \
                                 description, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
                            )
                            .bind(&class.class)
                            .bind(face)
                            .bind(&class.description)
                            .bind(class.created_at.as_micros())
                            .bind(class.updated_at.as_micros())
                            .execute(&mut *tx)
                            .await?;
                            Put::Created
                        };
                        append_audit(&mut tx, audit).await?;
                        tx.commit().await?;
                        Ok(put)
                    })
                    .await
                }

                async fn classes(&self) -> Result<Vec<ClassRecord>, CycleError> {
                    let rows = sqlx::query(
                        "SELECT class, face_value_per_1m_micro_cr, description, created_at, \
                         updated_at FROM model_classes ORDER BY class",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok(ClassRecord {
                                class: row.try_get("class")?,
                                face_value_per_1m_micro_cr: unsigned(
                                    row.try_get("face_value_per_1m_micro_cr")?,
                                )?,
                                description: row.try_get("description")?,
                                created_at: Timestamp::from_micros(row.try_get("created_at")?),
                                updated_at: Timestamp::from_micros(row.try_get("updated_at")?),
                            })
                        })
                        .collect()
                }

                async fn put_allotment(
                    &self,
                    class: &str,
                    allotment: Allotment,
                    now: Timestamp,
                    audit: &AuditEntry,
                ) -> Result<Put, CycleError> {
                    let tokens = signed(allotment.tokens_per_cycle)?;
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let known = sqlx::query("SELECT 1 AS found FROM model_classes WHERE class = $1")
                            .bind(class)
                            .fetch_optional(&mut *tx)
                            .await?;
                        if known.is_none() {
                            return Err(CycleError::NoSuchClass(class.to_owned()));
                        }
                        let updated = sqlx::query(
                            "UPDATE plan_allotments SET tokens_per_cycle = $3, updated_at = $4 \
                             WHERE plan = $1 AND class = $2",
                        )
                        .bind(allotment.plan.as_str())
                        .bind(class)
                        .bind(tokens)
                        .bind(now.as_micros())
                        .execute(&mut *tx)
                        .await?;
                        let put = if updated.rows_affected() == 1 {
                            Put::Updated
                        } else {
                            sqlx::query(
                                "INSERT INTO plan_allotments (plan, class, tokens_per_cycle, \
                                 updated_at) VALUES ($1, $2, $3, $4)",
                            )
                            .bind(allotment.plan.as_str())
                            .bind(class)
                            .bind(tokens)
                            .bind(now.as_micros())
                            .execute(&mut *tx)
                            .await?;
                            Put::Created
                        };
                        append_audit(&mut tx, audit).await?;
                        tx.commit().await?;
                        Ok(put)
                    })
                    .await
                }

                async fn allotments(&self) -> Result<Vec<(String, Allotment)>, CycleError> {
                    let rows = sqlx::query(
                        "SELECT plan, class, tokens_per_cycle FROM plan_allotments \
                         ORDER BY class, plan",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok((
                                row.try_get("class")?,
                                Allotment {
                                    plan: plan(&row.try_get::<String, _>("plan")?)?,
                                    tokens_per_cycle: unsigned(row.try_get("tokens_per_cycle")?)?,
                                },
                            ))
                        })
                        .collect()
                }

                async fn ensure_cycle(
                    &self,
                    cycle: &str,
                    starts_at: Timestamp,
                    ends_at: Timestamp,
                ) -> Result<CycleRecord, CycleError> {
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        sqlx::query(
                            "INSERT INTO cycles (cycle, starts_at, ends_at) VALUES ($1, $2, $3) \
                             ON CONFLICT (cycle) DO NOTHING",
                        )
                        .bind(cycle)
                        .bind(starts_at.as_micros())
                        .bind(ends_at.as_micros())
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(
                            "INSERT INTO cycle_classes (cycle, class, face_value_per_1m_micro_cr) \
                             SELECT $1, class, face_value_per_1m_micro_cr FROM model_classes \
                             WHERE true ON CONFLICT (cycle, class) DO NOTHING",
                        )
                        .bind(cycle)
                        .execute(&mut *tx)
                        .await?;
                        let sql = format!("SELECT {CYCLE_COLUMNS} FROM cycles WHERE cycle = $1");
                        let row = sqlx::query(&sql).bind(cycle).fetch_one(&mut *tx).await?;
                        let record = cycle_record(&row)?;
                        tx.commit().await?;
                        Ok(record)
                    })
                    .await
                }

                async fn cycle(&self, cycle: &str) -> Result<Option<CycleRecord>, CycleError> {
                    let sql = format!("SELECT {CYCLE_COLUMNS} FROM cycles WHERE cycle = $1");
                    let row = sqlx::query(&sql).bind(cycle).fetch_optional(&self.pool).await?;
                    row.as_ref().map(cycle_record).transpose()
                }

                async fn cycles(&self, limit: u32) -> Result<Vec<CycleRecord>, CycleError> {
                    let sql = format!(
                        "SELECT {CYCLE_COLUMNS} FROM cycles ORDER BY starts_at DESC LIMIT $1"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(cycle_record).collect()
                }

                async fn cycle_classes(
                    &self,
                    cycle: &str,
                ) -> Result<Vec<(String, u64)>, CycleError> {
                    let rows = sqlx::query(
                        "SELECT class, face_value_per_1m_micro_cr FROM cycle_classes \
                         WHERE cycle = $1 ORDER BY class",
                    )
                    .bind(cycle)
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok((
                                row.try_get("class")?,
                                unsigned(row.try_get("face_value_per_1m_micro_cr")?)?,
                            ))
                        })
                        .collect()
                }

                async fn orgs_to_allot(
                    &self,
                    cycle: &str,
                    created_before: Timestamp,
                    after: Option<OrgId>,
                    limit: u32,
                ) -> Result<Vec<(OrgId, Plan)>, CycleError> {
                    let limit = limit.min(crate::cycles::ALLOT_PAGE_MAX);
                    let after = after.map_or(Uuid::nil(), OrgId::as_uuid);
                    let rows = sqlx::query(
                        "SELECT id, plan FROM orgs WHERE id > $2 AND created_at < $3 \
                         AND NOT EXISTS (SELECT 1 FROM cycle_allotments \
                             WHERE cycle_allotments.cycle = $1 AND cycle_allotments.org_id = orgs.id) \
                         ORDER BY id LIMIT $4",
                    )
                    .bind(cycle)
                    .bind(after)
                    .bind(created_before.as_micros())
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            let id: Uuid = row.try_get("id")?;
                            let id = OrgId::new(id).map_err(StoreError::corrupt)?;
                            Ok((id, plan(&row.try_get::<String, _>("plan")?)?))
                        })
                        .collect()
                }

                async fn asset_accounts(
                    &self,
                    asset: &str,
                    after: Option<AccountId>,
                    limit: u32,
                ) -> Result<Vec<AccountId>, CycleError> {
                    let limit = limit.min(crate::cycles::ALLOT_PAGE_MAX);
                    let after = after.map_or(Uuid::nil(), AccountId::as_uuid);
                    let rows = sqlx::query(
                        "SELECT id FROM accounts WHERE asset = $1 AND id > $2 ORDER BY id LIMIT $3",
                    )
                    .bind(asset)
                    .bind(after)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            let id: Uuid = row.try_get("id")?;
                            Ok(AccountId::new(id).map_err(StoreError::corrupt)?)
                        })
                        .collect()
                }

                async fn mark_allotted(
                    &self,
                    cycle: &str,
                    org: OrgId,
                    now: Timestamp,
                ) -> Result<(), CycleError> {
                    retrying(|| async {
                        sqlx::query(
                            "INSERT INTO cycle_allotments (cycle, org_id, allotted_at) \
                             VALUES ($1, $2, $3) ON CONFLICT (cycle, org_id) DO NOTHING",
                        )
                        .bind(cycle)
                        .bind(org.as_uuid())
                        .bind(now.as_micros())
                        .execute(&self.pool)
                        .await?;
                        Ok(())
                    })
                    .await
                }

                async fn mark_opened(&self, cycle: &str, now: Timestamp) -> Result<(), CycleError> {
                    sqlx::query(
                        "UPDATE cycles SET opened_at = $2 WHERE cycle = $1 AND opened_at IS NULL",
                    )
                    .bind(cycle)
                    .bind(now.as_micros())
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }

                async fn mark_closed(&self, cycle: &str, now: Timestamp) -> Result<(), CycleError> {
                    sqlx::query(
                        "UPDATE cycles SET closed_at = $2 WHERE cycle = $1 AND closed_at IS NULL",
                    )
                    .bind(cycle)
                    .bind(now.as_micros())
                    .execute(&self.pool)
                    .await?;
                    Ok(())
                }
            }
        }
    };
}

pub(crate) use shared_cycles;

impl crate::sql::MayRetry for CycleError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Store(StoreError::Database(error)) => Some(error),
            _ => None,
        }
    }
}
