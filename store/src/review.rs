//! Fraud review and price alerts in the database.
//!
//! **Review flags** say why an org's trading needs an admin's look; the detection (which
//! figures make a flag) lives in `credex-api`, over the reads here. A flag is raised once per
//! (org, kind, subject), with its audit entry, in one transaction; while an org has an open
//! flag the market refuses its trades (the market transaction reads its open flags with the
//! org's row). Clearing is an admin's act, audited, and final for that subject.
//!
//! **Sign-in address blocks** (IPv4 /24, IPv6 /48) are kept per org, for clusters of new orgs.
//!
//! **Price alerts** are claimed before delivery (a lease in `next_attempt_at`), so several
//! processes never deliver one alert at once; delivery is at least once (a process that dies
//! between sending and recording lets the lease run out and another sends again).

use async_trait::async_trait;
use credex_ledger::{AssetCode, OrgId, Timestamp};
use serde::Serialize;
use uuid::Uuid;

use crate::identity::{AuditEntry, UserId};
use crate::StoreError;

/// The most flags or alerts one read answers.
pub const REVIEW_PAGE_MAX: u32 = 1_000;

/// Why an org was flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    /// It sold most of its allotment cycle after cycle and used little of it.
    SellsAllotment,
    /// It traded with the same org again and again.
    RepeatedCounterparty,
    /// It is one of several new orgs whose owners share an e-mail domain.
    SharedEmailDomain,
    /// It is one of several new orgs signing in from one address block.
    SharedAddressBlock,
}

impl FlagKind {
    pub const ALL: [Self; 4] = [
        Self::SellsAllotment,
        Self::RepeatedCounterparty,
        Self::SharedEmailDomain,
        Self::SharedAddressBlock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SellsAllotment => "sells_allotment",
            Self::RepeatedCounterparty => "repeated_counterparty",
            Self::SharedEmailDomain => "shared_email_domain",
            Self::SharedAddressBlock => "shared_address_block",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// A flag to raise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFlag {
    pub id: Uuid,
    pub org: OrgId,
    pub kind: FlagKind,
    /// What it is about (a cycle, the other org, a domain, a block): one flag per subject.
    pub subject: String,
    /// The explanation, for the admin and for the org's refusals.
    pub reason: String,
    /// The figures behind it, as JSON.
    pub details: serde_json::Value,
    pub raised_at: Timestamp,
}

/// A flag as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagRecord {
    pub id: Uuid,
    pub org: OrgId,
    pub kind: FlagKind,
    pub subject: String,
    pub reason: String,
    pub details: String,
    pub raised_at: Timestamp,
    pub cleared_at: Option<Timestamp>,
    pub cleared_by: Option<UserId>,
    pub note: Option<String>,
}

/// An open flag as the market sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenFlag {
    pub kind: FlagKind,
    pub reason: String,
}

/// Trades between two orgs (in either direction) since an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairTrades {
    pub buyer: OrgId,
    pub seller: OrgId,
    pub trades: u64,
    pub tokens: u64,
}

/// What an org did with its allotment of one token asset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SellerFigures {
    pub allotted: u64,
    /// Bought by other orgs from its listings, plus sold back to the provider.
    pub sold: u64,
    /// Spent on model calls (from `alloc` or `acquired`).
    pub spent: u64,
}

/// How a price alert is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertChannel {
    Email,
    Webhook,
}

impl AlertChannel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Webhook => "webhook",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Email, Self::Webhook]
            .into_iter()
            .find(|channel| channel.as_str() == text)
    }
}

/// Where a price alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Watching the market.
    Active,
    /// Triggered and delivered: spent.
    Delivered,
    /// Withdrawn by the org.
    Cancelled,
    /// Triggered, but every delivery attempt failed.
    Failed,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Active, Self::Delivered, Self::Cancelled, Self::Failed]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// A price alert as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    pub id: Uuid,
    pub org: OrgId,
    pub asset: AssetCode,
    /// Triggers when the best decayed price is at or below this, µCR per 1M tokens.
    pub below_per_1m_micro_cr: u64,
    pub channel: AlertChannel,
    /// An e-mail address or an `http://` URL.
    pub target: String,
    /// Signs webhook deliveries (webhooks only).
    pub secret: Option<String>,
    pub created_at: Timestamp,
    pub state: AlertState,
    pub triggered_at: Option<Timestamp>,
    pub triggered_price: Option<u64>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// While active: when the next check may run (a claim's lease, or a retry's delay).
    pub next_attempt_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// What became of a delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertOutcome {
    Delivered {
        at: Timestamp,
        price: u64,
    },
    /// Try again at `retry_at`, or give up (`None`): the alert fails.
    Failed {
        at: Timestamp,
        price: u64,
        error: String,
        retry_at: Option<Timestamp>,
    },
}

/// Review flags, sign-in address blocks and price alerts, for either backend.
#[async_trait]
pub trait ReviewStore: Send + Sync {
    /// Raises a flag with its audit entry; `false` when the org already has (or had) one of the
    /// kind for the subject.
    async fn raise_flag(&self, flag: &NewFlag, audit: &AuditEntry) -> Result<bool, StoreError>;

    /// Flags newest first, of one org or all, open ones only or all, at most `limit`.
    async fn flags(
        &self,
        org: Option<OrgId>,
        open_only: bool,
        limit: u32,
    ) -> Result<Vec<FlagRecord>, StoreError>;

    async fn flag(&self, id: Uuid) -> Result<Option<FlagRecord>, StoreError>;

    /// Clears an open flag with the admin's note and an audit entry; a cleared flag is
    /// answered as it is. `None` when there is no such flag.
    async fn clear_flag(
        &self,
        id: Uuid,
        by: UserId,
        note: &str,
        audit: &AuditEntry,
    ) -> Result<Option<FlagRecord>, StoreError>;

    /// Records that a member of the org signed in from the block.
    async fn record_address(
        &self,
        org: OrgId,
        block: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Trades between orgs (provider sales aside) since `since`, per (buyer, seller).
    async fn pair_trades(&self, since: Timestamp) -> Result<Vec<PairTrades>, StoreError>;

    /// Every org's allotment, sales and spending of a token asset.
    async fn seller_figures(
        &self,
        asset: &AssetCode,
    ) -> Result<Vec<(OrgId, SellerFigures)>, StoreError>;

    /// The owners' e-mail addresses of orgs created at `since` or later.
    async fn new_org_owners(&self, since: Timestamp) -> Result<Vec<(OrgId, String)>, StoreError>;

    /// The sign-in address blocks of orgs created at `since` or later.
    async fn new_org_blocks(&self, since: Timestamp) -> Result<Vec<(OrgId, String)>, StoreError>;

    /// The market's selling policy as admins last set it (JSON), when, and by whom.
    async fn market_policy(
        &self,
    ) -> Result<Option<(String, Timestamp, Option<UserId>)>, StoreError>;

    /// Sets the market's selling policy (JSON), with its audit entry.
    async fn put_market_policy(&self, policy: &str, audit: &AuditEntry) -> Result<(), StoreError>;

    async fn create_alert(&self, alert: &AlertRecord) -> Result<(), StoreError>;

    async fn alert(&self, id: Uuid) -> Result<Option<AlertRecord>, StoreError>;

    /// An org's alerts, newest first, at most `limit`.
    async fn alerts_of(&self, org: OrgId, limit: u32) -> Result<Vec<AlertRecord>, StoreError>;

    /// Cancels an active alert; answers it as it is now (`None`: no such alert).
    async fn cancel_alert(
        &self,
        id: Uuid,
        now: Timestamp,
    ) -> Result<Option<AlertRecord>, StoreError>;

    /// Active alerts of a market that a best price of `price` triggers and that are due at
    /// `now` (not claimed, not waiting for a retry), at most `limit`.
    async fn triggered_alerts(
        &self,
        asset: &AssetCode,
        price: u64,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<AlertRecord>, StoreError>;

    /// Claims an active, due alert until `lease_until`; `false` when another process has it.
    async fn claim_alert(
        &self,
        id: Uuid,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Records a delivery attempt of a claimed alert.
    async fn finish_alert(&self, id: Uuid, outcome: &AlertOutcome) -> Result<(), StoreError>;
}

/// Expands the shared implementation of [`ReviewStore`] for `$store` (whose field `pool` is a
/// `sqlx::Pool<$db>`), with the backend's dialect module `$dialect`.
macro_rules! shared_review {
    ($store:ident, $db:ty, $dialect:ident) => {
        mod review_shared {
            use std::collections::HashMap;

            use async_trait::async_trait;
            use credex_ledger::{AccountKind, AssetCode, OrgId, Timestamp, TransferCode};
            use sqlx::Row;
            use uuid::Uuid;

            use super::$dialect as dialect;
            use super::$store;
            use crate::identity::{AuditEntry, UserId};
            use crate::review::{
                AlertChannel, AlertOutcome, AlertRecord, AlertState, FlagKind, FlagRecord,
                NewFlag, PairTrades, ReviewStore, SellerFigures,
            };
            use crate::StoreError;

            type Connection = <$db as sqlx::Database>::Connection;
            type DbRow = <$db as sqlx::Database>::Row;

            const FLAG_COLUMNS: &str = "id, org_id, kind, subject, reason, details, raised_at, \
                                        cleared_at, cleared_by, note";
            const ALERT_COLUMNS: &str = "id, org_id, asset, below_per_1m_micro_cr, channel, \
                                         target, secret, created_at, state, triggered_at, \
                                         triggered_price, attempts, last_error, \
                                         next_attempt_at, finished_at";

            fn unsigned(value: i64) -> Result<u64, StoreError> {
                u64::try_from(value).map_err(|_| StoreError::corrupt("a negative amount"))
            }

            fn signed(value: u64) -> Result<i64, StoreError> {
                i64::try_from(value).map_err(|_| StoreError::corrupt("an amount out of range"))
            }

            fn instant(value: Option<i64>) -> Option<Timestamp> {
                value.map(Timestamp::from_micros)
            }

            fn flag_record(row: &DbRow) -> Result<FlagRecord, StoreError> {
                let kind: String = row.try_get("kind")?;
                Ok(FlagRecord {
                    id: row.try_get("id")?,
                    org: OrgId::new(row.try_get("org_id")?).map_err(StoreError::corrupt)?,
                    kind: FlagKind::parse(&kind)
                        .ok_or_else(|| StoreError::corrupt(format!("a flag kind {kind:?}")))?,
                    subject: row.try_get("subject")?,
                    reason: row.try_get("reason")?,
                    details: row.try_get("details")?,
                    raised_at: Timestamp::from_micros(row.try_get("raised_at")?),
                    cleared_at: instant(row.try_get("cleared_at")?),
                    cleared_by: row
                        .try_get::<Option<Uuid>, _>("cleared_by")?
                        .map(UserId::new)
                        .transpose()
                        .map_err(StoreError::corrupt)?,
                    note: row.try_get("note")?,
                })
            }

            fn alert_record(row: &DbRow) -> Result<AlertRecord, StoreError> {
                let asset: String = row.try_get("asset")?;
                let channel: String = row.try_get("channel")?;
                let state: String = row.try_get("state")?;
                let attempts: i64 = row.try_get("attempts")?;
                Ok(AlertRecord {
                    id: row.try_get("id")?,
                    org: OrgId::new(row.try_get("org_id")?).map_err(StoreError::corrupt)?,
                    asset: AssetCode::parse(&asset).map_err(StoreError::corrupt)?,
                    below_per_1m_micro_cr: unsigned(row.try_get("below_per_1m_micro_cr")?)?,
                    channel: AlertChannel::parse(&channel)
                        .ok_or_else(|| StoreError::corrupt(format!("a channel {channel:?}")))?,
                    target: row.try_get("target")?,
                    secret: row.try_get("secret")?,
                    created_at: Timestamp::from_micros(row.try_get("created_at")?),
                    state: AlertState::parse(&state)
                        .ok_or_else(|| StoreError::corrupt(format!("an alert state {state:?}")))?,
                    triggered_at: instant(row.try_get("triggered_at")?),
                    triggered_price: row
                        .try_get::<Option<i64>, _>("triggered_price")?
                        .map(unsigned)
                        .transpose()?,
                    attempts: u32::try_from(attempts)
                        .map_err(|_| StoreError::corrupt("an attempt count"))?,
                    last_error: row.try_get("last_error")?,
                    next_attempt_at: instant(row.try_get("next_attempt_at")?),
                    finished_at: instant(row.try_get("finished_at")?),
                })
            }

            async fn retrying<T, F, Fut>(attempt: F) -> Result<T, StoreError>
            where
                F: Fn() -> Fut,
                Fut: std::future::Future<Output = Result<T, StoreError>>,
            {
                crate::sql::retry(dialect::is_retryable, attempt).await
            }

            crate::sql::append_audit_fn!(StoreError);

            async fn fetch_flag(
                conn: &mut Connection,
                id: Uuid,
            ) -> Result<Option<FlagRecord>, StoreError> {
                let sql = format!("SELECT {FLAG_COLUMNS} FROM review_flags WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *conn).await?;
                row.as_ref().map(flag_record).transpose()
            }

            async fn fetch_alert(
                conn: &mut Connection,
                id: Uuid,
            ) -> Result<Option<AlertRecord>, StoreError> {
                let sql = format!("SELECT {ALERT_COLUMNS} FROM price_alerts WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *conn).await?;
                row.as_ref().map(alert_record).transpose()
            }

            fn org_texts(rows: &[DbRow]) -> Result<Vec<(OrgId, String)>, StoreError> {
                rows.iter()
                    .map(|row| {
                        let org = OrgId::new(row.try_get("org_id")?).map_err(StoreError::corrupt)?;
                        Ok((org, row.try_get::<String, _>("value")?))
                    })
                    .collect()
            }

            #[async_trait]
            impl ReviewStore for $store {
                async fn raise_flag(
                    &self,
                    flag: &NewFlag,
                    audit: &AuditEntry,
                ) -> Result<bool, StoreError> {
                    let details = flag.details.to_string();
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let inserted = sqlx::query(
                            "INSERT INTO review_flags (id, org_id, kind, subject, reason, \
                             details, raised_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                             ON CONFLICT (org_id, kind, subject) DO NOTHING",
                        )
                        .bind(flag.id)
                        .bind(flag.org.as_uuid())
                        .bind(flag.kind.as_str())
                        .bind(&flag.subject)
                        .bind(&flag.reason)
                        .bind(&details)
                        .bind(flag.raised_at.as_micros())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1;
                        if inserted {
                            append_audit(&mut tx, audit).await?;
                        }
                        tx.commit().await?;
                        Ok(inserted)
                    })
                    .await
                }

                async fn flags(
                    &self,
                    org: Option<OrgId>,
                    open_only: bool,
                    limit: u32,
                ) -> Result<Vec<FlagRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {FLAG_COLUMNS} FROM review_flags \
                         WHERE ($1 IS NULL OR org_id = $1) AND ($2 = 0 OR cleared_at IS NULL) \
                         ORDER BY raised_at DESC, id LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.map(OrgId::as_uuid))
                        .bind(i64::from(open_only))
                        .bind(i64::from(limit.min(crate::review::REVIEW_PAGE_MAX)))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(flag_record).collect()
                }

                async fn flag(&self, id: Uuid) -> Result<Option<FlagRecord>, StoreError> {
                    let mut conn = self.pool.acquire().await?;
                    fetch_flag(&mut conn, id).await
                }

                async fn clear_flag(
                    &self,
                    id: Uuid,
                    by: UserId,
                    note: &str,
                    audit: &AuditEntry,
                ) -> Result<Option<FlagRecord>, StoreError> {
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let cleared = sqlx::query(
                            "UPDATE review_flags SET cleared_at = $2, cleared_by = $3, note = $4 \
                             WHERE id = $1 AND cleared_at IS NULL",
                        )
                        .bind(id)
                        .bind(audit.at().as_micros())
                        .bind(by.as_uuid())
                        .bind(note)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1;
                        if cleared {
                            append_audit(&mut tx, audit).await?;
                        }
                        let flag = fetch_flag(&mut tx, id).await?;
                        tx.commit().await?;
                        Ok(flag)
                    })
                    .await
                }

                async fn record_address(
                    &self,
                    org: OrgId,
                    block: &str,
                    now: Timestamp,
                ) -> Result<(), StoreError> {
                    retrying(|| async {
                        sqlx::query(
                            "INSERT INTO org_addresses (org_id, block, first_seen, last_seen) \
                             VALUES ($1, $2, $3, $3) ON CONFLICT (org_id, block) \
                             DO UPDATE SET last_seen = excluded.last_seen",
                        )
                        .bind(org.as_uuid())
                        .bind(block)
                        .bind(now.as_micros())
                        .execute(&self.pool)
                        .await?;
                        Ok(())
                    })
                    .await
                }

                async fn pair_trades(
                    &self,
                    since: Timestamp,
                ) -> Result<Vec<PairTrades>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT buyer_org, seller_org, COUNT(*) AS trades, \
                         CAST(SUM(quantity) AS BIGINT) AS tokens FROM fills \
                         WHERE seller_org IS NOT NULL AND at >= $1 \
                         GROUP BY buyer_org, seller_org",
                    )
                    .bind(since.as_micros())
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            let org = |column: &str| -> Result<OrgId, StoreError> {
                                OrgId::new(row.try_get(column)?).map_err(StoreError::corrupt)
                            };
                            Ok(PairTrades {
                                buyer: org("buyer_org")?,
                                seller: org("seller_org")?,
                                trades: unsigned(row.try_get("trades")?)?,
                                tokens: unsigned(row.try_get("tokens")?)?,
                            })
                        })
                        .collect()
                }

                async fn seller_figures(
                    &self,
                    asset: &AssetCode,
                ) -> Result<Vec<(OrgId, SellerFigures)>, StoreError> {
                    let ledger_rows = sqlx::query(
                        "SELECT a.owner_org AS org_id, \
                         CAST(COALESCE(SUM(CASE WHEN t.code = $2 AND t.credit_account_id = a.id \
                           THEN t.amount ELSE 0 END), 0) AS BIGINT) AS allotted, \
                         CAST(COALESCE(SUM(CASE WHEN t.code = $3 AND t.debit_account_id = a.id \
                           THEN t.amount ELSE 0 END), 0) AS BIGINT) AS spent \
                         FROM accounts a JOIN transfers t \
                           ON t.credit_account_id = a.id OR t.debit_account_id = a.id \
                         WHERE a.asset = $1 AND a.owner_org IS NOT NULL AND a.kind IN ($4, $5) \
                         GROUP BY a.owner_org",
                    )
                    .bind(asset.as_str())
                    .bind(TransferCode::Allotment.number())
                    .bind(TransferCode::Spend.number())
                    .bind(AccountKind::Alloc.number())
                    .bind(AccountKind::Acquired.number())
                    .fetch_all(&self.pool)
                    .await?;
                    let sold_rows = sqlx::query(
                        "SELECT org_id, CAST(SUM(sold) AS BIGINT) AS sold FROM ( \
                           SELECT seller_org AS org_id, quantity_filled AS sold FROM listings \
                             WHERE asset = $1 \
                           UNION ALL \
                           SELECT org_id, quantity AS sold FROM buybacks \
                             WHERE asset = $1 AND listing_id IS NULL) s \
                         GROUP BY org_id",
                    )
                    .bind(asset.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                    let mut figures: HashMap<OrgId, SellerFigures> = HashMap::new();
                    let org_of = |row: &DbRow| -> Result<OrgId, StoreError> {
                        OrgId::new(row.try_get("org_id")?).map_err(StoreError::corrupt)
                    };
                    for row in &ledger_rows {
                        let entry = figures.entry(org_of(row)?).or_default();
                        entry.allotted = unsigned(row.try_get("allotted")?)?;
                        entry.spent = unsigned(row.try_get("spent")?)?;
                    }
                    for row in &sold_rows {
                        figures.entry(org_of(row)?).or_default().sold =
                            unsigned(row.try_get("sold")?)?;
                    }
                    let mut figures: Vec<(OrgId, SellerFigures)> = figures.into_iter().collect();
                    figures.sort_by_key(|(org, _)| *org);
                    Ok(figures)
                }

                async fn new_org_owners(
                    &self,
                    since: Timestamp,
                ) -> Result<Vec<(OrgId, String)>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT o.id AS org_id, u.email AS value FROM orgs o \
                         JOIN memberships m ON m.org_id = o.id \
                         JOIN users u ON u.id = m.user_id \
                         WHERE o.created_at >= $1 AND m.role = 'owner' ORDER BY o.id",
                    )
                    .bind(since.as_micros())
                    .fetch_all(&self.pool)
                    .await?;
                    org_texts(&rows)
                }

                async fn new_org_blocks(
                    &self,
                    since: Timestamp,
                ) -> Result<Vec<(OrgId, String)>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT a.org_id AS org_id, a.block AS value FROM org_addresses a \
                         JOIN orgs o ON o.id = a.org_id WHERE o.created_at >= $1 \
                         ORDER BY a.org_id",
                    )
                    .bind(since.as_micros())
                    .fetch_all(&self.pool)
                    .await?;
                    org_texts(&rows)
                }

                async fn market_policy(
                    &self,
                ) -> Result<Option<(String, Timestamp, Option<UserId>)>, StoreError> {
                    let row = sqlx::query(
                        "SELECT policy, updated_at, updated_by FROM market_policy WHERE id = 1",
                    )
                    .fetch_optional(&self.pool)
                    .await?;
                    let Some(row) = row else { return Ok(None) };
                    let by = row
                        .try_get::<Option<Uuid>, _>("updated_by")?
                        .map(UserId::new)
                        .transpose()
                        .map_err(StoreError::corrupt)?;
                    Ok(Some((
                        row.try_get("policy")?,
                        Timestamp::from_micros(row.try_get("updated_at")?),
                        by,
                    )))
                }

                async fn put_market_policy(
                    &self,
                    policy: &str,
                    audit: &AuditEntry,
                ) -> Result<(), StoreError> {
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        sqlx::query(
                            "INSERT INTO market_policy (id, policy, updated_at, updated_by) \
                             VALUES (1, $1, $2, $3) ON CONFLICT (id) DO UPDATE SET \
                             policy = excluded.policy, updated_at = excluded.updated_at, \
                             updated_by = excluded.updated_by",
                        )
                        .bind(policy)
                        .bind(audit.at().as_micros())
                        .bind(audit.actor().map(UserId::as_uuid))
                        .execute(&mut *tx)
                        .await?;
                        append_audit(&mut tx, audit).await?;
                        tx.commit().await?;
                        Ok(())
                    })
                    .await
                }

                async fn create_alert(&self, alert: &AlertRecord) -> Result<(), StoreError> {
                    let below = signed(alert.below_per_1m_micro_cr)?;
                    retrying(|| async {
                        sqlx::query(
                            "INSERT INTO price_alerts (id, org_id, asset, below_per_1m_micro_cr, \
                             channel, target, secret, created_at, state) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                             ON CONFLICT (id) DO NOTHING",
                        )
                        .bind(alert.id)
                        .bind(alert.org.as_uuid())
                        .bind(alert.asset.as_str())
                        .bind(below)
                        .bind(alert.channel.as_str())
                        .bind(&alert.target)
                        .bind(alert.secret.as_deref())
                        .bind(alert.created_at.as_micros())
                        .bind(alert.state.as_str())
                        .execute(&self.pool)
                        .await?;
                        Ok(())
                    })
                    .await
                }

                async fn alert(&self, id: Uuid) -> Result<Option<AlertRecord>, StoreError> {
                    let mut conn = self.pool.acquire().await?;
                    fetch_alert(&mut conn, id).await
                }

                async fn alerts_of(
                    &self,
                    org: OrgId,
                    limit: u32,
                ) -> Result<Vec<AlertRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {ALERT_COLUMNS} FROM price_alerts WHERE org_id = $1 \
                         ORDER BY created_at DESC, id LIMIT $2"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(i64::from(limit.min(crate::review::REVIEW_PAGE_MAX)))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(alert_record).collect()
                }

                async fn cancel_alert(
                    &self,
                    id: Uuid,
                    now: Timestamp,
                ) -> Result<Option<AlertRecord>, StoreError> {
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        sqlx::query(
                            "UPDATE price_alerts SET state = 'cancelled', finished_at = $2 \
                             WHERE id = $1 AND state = 'active'",
                        )
                        .bind(id)
                        .bind(now.as_micros())
                        .execute(&mut *tx)
                        .await?;
                        let alert = fetch_alert(&mut tx, id).await?;
                        tx.commit().await?;
                        Ok(alert)
                    })
                    .await
                }

                async fn triggered_alerts(
                    &self,
                    asset: &AssetCode,
                    price: u64,
                    now: Timestamp,
                    limit: u32,
                ) -> Result<Vec<AlertRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {ALERT_COLUMNS} FROM price_alerts WHERE state = 'active' \
                         AND asset = $1 AND below_per_1m_micro_cr >= $2 \
                         AND (next_attempt_at IS NULL OR next_attempt_at <= $3) \
                         ORDER BY created_at, id LIMIT $4"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(asset.as_str())
                        .bind(signed(price)?)
                        .bind(now.as_micros())
                        .bind(i64::from(limit.min(crate::review::REVIEW_PAGE_MAX)))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(alert_record).collect()
                }

                async fn claim_alert(
                    &self,
                    id: Uuid,
                    now: Timestamp,
                    lease_until: Timestamp,
                ) -> Result<bool, StoreError> {
                    retrying(|| async {
                        let claimed = sqlx::query(
                            "UPDATE price_alerts SET next_attempt_at = $3 WHERE id = $1 \
                             AND state = 'active' \
                             AND (next_attempt_at IS NULL OR next_attempt_at <= $2)",
                        )
                        .bind(id)
                        .bind(now.as_micros())
                        .bind(lease_until.as_micros())
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                        Ok(claimed == 1)
                    })
                    .await
                }

                async fn finish_alert(
                    &self,
                    id: Uuid,
                    outcome: &AlertOutcome,
                ) -> Result<(), StoreError> {
                    let (state, at, price, error, retry_at) = match outcome {
                        AlertOutcome::Delivered { at, price } => {
                            (AlertState::Delivered, *at, *price, None, None)
                        }
                        AlertOutcome::Failed {
                            at,
                            price,
                            error,
                            retry_at: Some(retry),
                        } => (AlertState::Active, *at, *price, Some(error.as_str()), Some(*retry)),
                        AlertOutcome::Failed {
                            at,
                            price,
                            error,
                            retry_at: None,
                        } => (AlertState::Failed, *at, *price, Some(error.as_str()), None),
                    };
                    let price = signed(price)?;
                    let finished = (state != AlertState::Active).then_some(at.as_micros());
                    retrying(|| async {
                        sqlx::query(
                            "UPDATE price_alerts SET state = $2, \
                             triggered_at = COALESCE(triggered_at, $3), \
                             triggered_price = COALESCE(triggered_price, $4), \
                             attempts = attempts + 1, last_error = $5, next_attempt_at = $6, \
                             finished_at = $7 WHERE id = $1 AND state = 'active'",
                        )
                        .bind(id)
                        .bind(state.as_str())
                        .bind(at.as_micros())
                        .bind(price)
                        .bind(error)
                        .bind(retry_at.map(Timestamp::as_micros))
                        .bind(finished)
                        .execute(&self.pool)
                        .await?;
                        Ok(())
                    })
                    .await
                }
            }
        }
    };
}

pub(crate) use shared_review;
