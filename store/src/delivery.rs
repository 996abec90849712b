//! Delivery in the database: the webhooks orgs register, a persistent queue of messages (e-mails
//! and webhook posts), a log of every attempt, budget alerts' outbox mark and scheduled reports.
//!
//! Like the other modules, this layer decides nothing (what to send, when to try again, when to
//! give up: the delivery service does); it gives the service primitives that stay correct with
//! any number of processes on one database:
//!
//! * **Dispatching budget alerts** ([`DeliveryStore::dispatch_budget_alerts`]) is the
//!   transactional outbox: the usage transaction only records an alert; this takes alerts not
//!   yet dispatched (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so two processes take different
//!   alerts; SQLite has one writer), queues what the caller composes for each, and marks the
//!   alert dispatched, all in one transaction. An alert is queued exactly once; a delivery is
//!   queued at most once per (event, channel, target) (a UNIQUE key), whatever happens.
//! * **Claiming** ([`DeliveryStore::claim_deliveries`]) leases due pending deliveries to one
//!   holder until a deadline (`FOR UPDATE SKIP LOCKED` again). A holder that dies lets its
//!   lease run out and another process takes the delivery: delivery is at least once, and
//!   receivers drop repeats by event id.
//! * **Finishing** ([`DeliveryStore::finish_delivery`]) writes the outcome and its attempt's
//!   log row in one transaction, only while the holder still holds the lease.
//! * **Reports** ([`DeliveryStore::enqueue_report`]) record the (org, frequency, period) they
//!   queue under a UNIQUE key in the same transaction as the e-mails, so a period's report is
//!   queued once even when several processes find it due at once.

use async_trait::async_trait;
use credex_ledger::{OrgId, Timestamp};
use serde::Serialize;
use uuid::Uuid;

use crate::identity::AuditEntry;
use crate::usage::BudgetAlertRecord;
use crate::StoreError;

/// The most rows one read of deliveries, webhooks or subscriptions answers.
pub const DELIVERY_PAGE_MAX: u32 = 1_000;
/// The longest attempt detail (an error or a server's reply) kept, in bytes.
pub const DETAIL_MAX_BYTES: usize = 1_024;

/// How a delivery travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryChannel {
    Email,
    Webhook,
}

impl DeliveryChannel {
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

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// Accepted by the SMTP server, written to the outbox, or answered 2xx by the webhook.
    Delivered,
    /// Given up on (its last error says why); still listed.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; another attempt is scheduled.
    Retry,
    /// Failed; no attempt follows.
    Failed,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry => "retry",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Delivered, Self::Retry, Self::Failed]
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }

    /// The state a delivery is in after an attempt with this outcome.
    pub fn state(self) -> DeliveryState {
        match self {
            Self::Delivered => DeliveryState::Delivered,
            Self::Retry => DeliveryState::Pending,
            Self::Failed => DeliveryState::Failed,
        }
    }
}

/// How often a report is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportFrequency {
    Daily,
    Weekly,
    Monthly,
}

impl ReportFrequency {
    pub const ALL: [Self; 3] = [Self::Daily, Self::Weekly, Self::Monthly];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|frequency| frequency.as_str() == text)
    }
}

/// A webhook as stored (the service checks its URL and makes its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub id: Uuid,
    pub org: OrgId,
    /// An `http://` URL.
    pub url: String,
    /// Signs every post; shown to the org once.
    pub secret: String,
    pub description: String,
    /// The event types it receives; empty for every type.
    pub events: Vec<String>,
    pub created_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
}

impl WebhookRecord {
    /// Whether the webhook receives events of `event_type` (and is not deleted).
    pub fn receives(&self, event_type: &str) -> bool {
        self.deleted_at.is_none()
            && (self.events.is_empty() || self.events.iter().any(|e| e == event_type))
    }
}

/// A message to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub id: Uuid,
    pub org: OrgId,
    pub channel: DeliveryChannel,
    /// The e-mail address, or the webhook's id as text.
    pub target: String,
    /// The webhook, for the webhook channel (none for e-mail).
    pub webhook: Option<Uuid>,
    pub event_type: String,
    pub event_id: Uuid,
    /// JSON: the webhook's body, or the e-mail's parts.
    pub payload: String,
}

/// A queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: Uuid,
    pub org: OrgId,
    pub channel: DeliveryChannel,
    pub target: String,
    pub webhook: Option<Uuid>,
    pub event_type: String,
    pub event_id: Uuid,
    pub payload: String,
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When a pending delivery is tried next.
    pub next_attempt_at: Timestamp,
    pub created_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// One attempt at a delivery, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub delivery: Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub started_at: Timestamp,
    pub duration_micros: u64,
    pub outcome: AttemptOutcome,
    /// The HTTP status, or the SMTP server's reply code.
    pub status: Option<u16>,
    /// The error, or the server's reply (at most [`DETAIL_MAX_BYTES`]).
    pub detail: Option<String>,
}

/// Which of an org's deliveries to list (every field narrows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub state: Option<DeliveryState>,
    pub webhook: Option<Uuid>,
}

/// A budget alert to dispatch, with what composing its messages needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertDispatch {
    pub alert: BudgetAlertRecord,
    /// The budget's name (the budget may have been deleted since).
    pub budget_name: String,
    /// The e-mail addresses of the org's owners.
    pub owners: Vec<String>,
    /// The org's webhooks that are not deleted.
    pub webhooks: Vec<WebhookRecord>,
}

/// Composes the messages of one budget alert.
pub type ComposeAlert<'a> = dyn FnMut(&AlertDispatch) -> Vec<NewDelivery> + Send + 'a;

/// A scheduled report subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSubscription {
    pub org: OrgId,
    pub frequency: ReportFrequency,
    pub recipients: Vec<String>,
    /// An IANA time zone name.
    pub time_zone: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The end of the next period to report: the report is due from then on.
    pub next_due_at: Timestamp,
}

/// A report period to queue, with its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportBatch {
    pub org: OrgId,
    pub frequency: ReportFrequency,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub event_id: Uuid,
    /// When the report after this one is due.
    pub next_due_at: Timestamp,
    pub deliveries: Vec<NewDelivery>,
}

/// Webhooks, the delivery queue and its log, and report subscriptions, for either backend.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    async fn create_webhook(
        &self,
        webhook: &WebhookRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// An org's webhooks that are not deleted, in id (creation) order after `after`.
    async fn webhooks_of(
        &self,
        org: OrgId,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<WebhookRecord>, StoreError>;

    /// A webhook, deleted or not.
    async fn webhook(&self, id: Uuid) -> Result<Option<WebhookRecord>, StoreError>;

    /// Deletes an org's webhook; its pending deliveries fail. False when there is none.
    async fn delete_webhook(
        &self,
        org: OrgId,
        id: Uuid,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;

    /// Dispatches up to `limit` budget alerts not yet dispatched, oldest first, in one
    /// transaction: queues what `compose` answers for each (skipping a delivery queued before
    /// for the same event, channel and target) and marks each dispatched. Answers how many.
    async fn dispatch_budget_alerts(
        &self,
        limit: u32,
        compose: &mut ComposeAlert<'_>,
    ) -> Result<u32, StoreError>;

    /// Leases up to `limit` pending deliveries due at `now` (and not leased) to `holder` until
    /// `lease_until`; answers them, oldest due first.
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        holder: Uuid,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// Records an attempt of a delivery `holder` leased: its log row, and the delivery's new
    /// state (`next_attempt_at` for a retry), in one transaction, releasing the lease. False
    /// (and nothing written) when the holder no longer holds it.
    async fn finish_delivery(
        &self,
        holder: Uuid,
        attempt: &AttemptRecord,
        next_attempt_at: Option<Timestamp>,
        error: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// An org's deliveries that pass `filter`, newest first, after the cursor (created, id).
    async fn deliveries_of(
        &self,
        org: OrgId,
        filter: DeliveryFilter,
        after: Option<(Timestamp, Uuid)>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// The attempts of these deliveries, by delivery then attempt.
    async fn delivery_attempts(&self, ids: &[Uuid]) -> Result<Vec<AttemptRecord>, StoreError>;

    /// Adds or replaces (recipients, time zone) an org's subscription of a frequency; a
    /// replaced one keeps its creation time and its next due time. Answers it as stored.
    async fn put_report(
        &self,
        subscription: &ReportSubscription,
        audit: &AuditEntry,
    ) -> Result<ReportSubscription, StoreError>;

    async fn report(
        &self,
        org: OrgId,
        frequency: ReportFrequency,
    ) -> Result<Option<ReportSubscription>, StoreError>;

    /// An org's subscriptions, by frequency.
    async fn reports_of(&self, org: OrgId) -> Result<Vec<ReportSubscription>, StoreError>;

    /// Deletes a subscription; false when there is none.
    async fn delete_report(
        &self,
        org: OrgId,
        frequency: ReportFrequency,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;

    /// Subscriptions whose report is due at `now`, the longest due first.
    async fn due_reports(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<ReportSubscription>, StoreError>;

    /// Queues a period's report once: records the period and queues its deliveries, unless the
    /// period was recorded before; moves the subscription's next due time on either way.
    /// Answers whether this call queued it.
    async fn enqueue_report(&self, batch: &ReportBatch) -> Result<bool, StoreError>;
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn bounded(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Expands the shared implementation of [`DeliveryStore`] for `$store` (whose fields are
/// `pool` and `clock`), with the backend's dialect module `$dialect`.
macro_rules! shared_delivery {
    ($store:ident, $db:ty, $dialect:ident) => {
        mod delivery_shared {
            use async_trait::async_trait;
            use credex_ledger::{OrgId, Timestamp};
            use sqlx::Row;
            use uuid::Uuid;

            use super::$dialect as dialect;
            use super::$store;
            use crate::delivery::{
                bounded, AlertDispatch, AttemptOutcome, AttemptRecord, ComposeAlert,
                DeliveryChannel, DeliveryFilter, DeliveryRecord, DeliveryState, DeliveryStore,
                NewDelivery, ReportBatch, ReportFrequency, ReportSubscription, WebhookRecord,
                DELIVERY_PAGE_MAX, DETAIL_MAX_BYTES,
            };
            use crate::identity::{AuditEntry, UserId};
            use crate::market::{org_id, signed, unsigned};
            use crate::usage::BudgetAlertRecord;
            use crate::StoreError;

            type Connection = <$db as sqlx::Database>::Connection;
            type DbRow = <$db as sqlx::Database>::Row;

            const WEBHOOK_COLUMNS: &str =
                "id, org_id, url, secret, description, events, created_at, deleted_at";
            const DELIVERY_COLUMNS: &str = "id, org_id, channel, target, webhook_id, \
                 event_type, event_id, payload, state, attempts, next_attempt_at, created_at, \
                 delivered_at, last_error";
            const REPORT_COLUMNS: &str =
                "org_id, frequency, recipients, time_zone, created_at, updated_at, next_due_at";

            fn instant(value: Option<i64>) -> Option<Timestamp> {
                value.map(Timestamp::from_micros)
            }

            fn limit_of(limit: u32) -> i64 {
                i64::from(limit.clamp(1, DELIVERY_PAGE_MAX))
            }

            fn webhook_record(row: &DbRow) -> Result<WebhookRecord, StoreError> {
                let events: String = row.try_get("events")?;
                Ok(WebhookRecord {
                    id: row.try_get("id")?,
                    org: org_id(row.try_get("org_id")?)?,
                    url: row.try_get("url")?,
                    secret: row.try_get("secret")?,
                    description: row.try_get("description")?,
                    events: serde_json::from_str(&events).map_err(StoreError::corrupt)?,
                    created_at: Timestamp::from_micros(row.try_get("created_at")?),
                    deleted_at: instant(row.try_get("deleted_at")?),
                })
            }

            fn delivery_record(row: &DbRow) -> Result<DeliveryRecord, StoreError> {
                let channel: String = row.try_get("channel")?;
                let state: String = row.try_get("state")?;
                Ok(DeliveryRecord {
                    id: row.try_get("id")?,
                    org: org_id(row.try_get("org_id")?)?,
                    channel: DeliveryChannel::parse(&channel)
                        .ok_or_else(|| StoreError::corrupt(format!("a channel {channel:?}")))?,
                    target: row.try_get("target")?,
                    webhook: row.try_get("webhook_id")?,
                    event_type: row.try_get("event_type")?,
                    event_id: row.try_get("event_id")?,
                    payload: row.try_get("payload")?,
                    state: DeliveryState::parse(&state)
                        .ok_or_else(|| StoreError::corrupt(format!("a delivery state {state:?}")))?,
                    attempts: u32::try_from(row.try_get::<i64, _>("attempts")?)
                        .map_err(StoreError::corrupt)?,
                    next_attempt_at: Timestamp::from_micros(row.try_get("next_attempt_at")?),
                    created_at: Timestamp::from_micros(row.try_get("created_at")?),
                    delivered_at: instant(row.try_get("delivered_at")?),
                    last_error: row.try_get("last_error")?,
                })
            }

            fn attempt_record(row: &DbRow) -> Result<AttemptRecord, StoreError> {
                let outcome: String = row.try_get("outcome")?;
                Ok(AttemptRecord {
                    delivery: row.try_get("delivery_id")?,
                    attempt: u32::try_from(row.try_get::<i32, _>("attempt")?)
                        .map_err(StoreError::corrupt)?,
                    started_at: Timestamp::from_micros(row.try_get("started_at")?),
                    duration_micros: unsigned(row.try_get("duration_us")?)?,
                    outcome: AttemptOutcome::parse(&outcome)
                        .ok_or_else(|| StoreError::corrupt(format!("an outcome {outcome:?}")))?,
                    status: row
                        .try_get::<Option<i32>, _>("status")?
                        .map(u16::try_from)
                        .transpose()
                        .map_err(StoreError::corrupt)?,
                    detail: row.try_get("detail")?,
                })
            }

            fn report_record(row: &DbRow) -> Result<ReportSubscription, StoreError> {
                let frequency: String = row.try_get("frequency")?;
                let recipients: String = row.try_get("recipients")?;
                Ok(ReportSubscription {
                    org: org_id(row.try_get("org_id")?)?,
                    frequency: ReportFrequency::parse(&frequency)
                        .ok_or_else(|| StoreError::corrupt(format!("a frequency {frequency:?}")))?,
                    recipients: serde_json::from_str(&recipients).map_err(StoreError::corrupt)?,
                    time_zone: row.try_get("time_zone")?,
                    created_at: Timestamp::from_micros(row.try_get("created_at")?),
                    updated_at: Timestamp::from_micros(row.try_get("updated_at")?),
                    next_due_at: Timestamp::from_micros(row.try_get("next_due_at")?),
                })
            }

            fn budget_alert(row: &DbRow) -> Result<BudgetAlertRecord, StoreError> {
                Ok(BudgetAlertRecord {
                    id: row.try_get("id")?,
                    budget: row.try_get("budget_id")?,
                    org: org_id(row.try_get("org_id")?)?,
                    period_start: Timestamp::from_micros(row.try_get("period_start")?),
                    threshold: u32::try_from(row.try_get::<i32, _>("threshold")?)
                        .map_err(StoreError::corrupt)?,
                    spent_micro_cr: unsigned(row.try_get("spent_micro_cr")?)?,
                    limit_micro_cr: unsigned(row.try_get("limit_micro_cr")?)?,
                    at: Timestamp::from_micros(row.try_get("at")?),
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

            /// Queues deliveries; one already queued for the same event, channel and target
            /// is left as it is.
            async fn insert_deliveries(
                conn: &mut Connection,
                deliveries: &[NewDelivery],
                now: Timestamp,
            ) -> Result<(), StoreError> {
                for delivery in deliveries {
                    sqlx::query(
                        "INSERT INTO deliveries (id, org_id, channel, target, webhook_id, \
                         event_type, event_id, payload, state, attempts, next_attempt_at, \
                         created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, \
                         $9) ON CONFLICT (event_id, channel, target) DO NOTHING",
                    )
                    .bind(delivery.id)
                    .bind(delivery.org.as_uuid())
                    .bind(delivery.channel.as_str())
                    .bind(&delivery.target)
                    .bind(delivery.webhook)
                    .bind(&delivery.event_type)
                    .bind(delivery.event_id)
                    .bind(&delivery.payload)
                    .bind(now.as_micros())
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            }

            async fn active_webhooks(
                conn: &mut Connection,
                org: OrgId,
            ) -> Result<Vec<WebhookRecord>, StoreError> {
                let sql = format!(
                    "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE org_id = $1 \
                     AND deleted_at IS NULL ORDER BY id LIMIT $2"
                );
                let rows = sqlx::query(&sql)
                    .bind(org.as_uuid())
                    .bind(i64::from(DELIVERY_PAGE_MAX))
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter().map(webhook_record).collect()
            }

            async fn owners(conn: &mut Connection, org: OrgId) -> Result<Vec<String>, StoreError> {
                let emails: Vec<String> = sqlx::query_scalar(
                    "SELECT u.email FROM memberships m JOIN users u ON u.id = m.user_id \
                     WHERE m.org_id = $1 AND m.role = 'owner' ORDER BY u.email LIMIT $2",
                )
                .bind(org.as_uuid())
                .bind(i64::from(DELIVERY_PAGE_MAX))
                .fetch_all(&mut *conn)
                .await?;
                Ok(emails)
            }

            async fn fetch_report(
                conn: &mut Connection,
                org: OrgId,
                frequency: ReportFrequency,
            ) -> Result<Option<ReportSubscription>, StoreError> {
                let sql = format!(
                    "SELECT {REPORT_COLUMNS} FROM report_subscriptions \
                     WHERE org_id = $1 AND frequency = $2"
                );
                let row = sqlx::query(&sql)
                    .bind(org.as_uuid())
                    .bind(frequency.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                row.as_ref().map(report_record).transpose()
            }

            impl $store {
                async fn dispatch_once(
                    &self,
                    limit: u32,
                    compose: &mut ComposeAlert<'_>,
                ) -> Result<u32, StoreError> {
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let sql = format!(
                        "SELECT id, budget_id, org_id, period_start, threshold, \
                         spent_micro_cr, limit_micro_cr, at FROM budget_alerts \
                         WHERE dispatched_at IS NULL ORDER BY at, id LIMIT $1{}",
                        dialect::FOR_UPDATE_SKIP_LOCKED
                    );
                    let rows = sqlx::query(&sql)
                        .bind(limit_of(limit))
                        .fetch_all(&mut *tx)
                        .await?;
                    let alerts: Vec<BudgetAlertRecord> =
                        rows.iter().map(budget_alert).collect::<Result<_, _>>()?;
                    let now = self.clock.now();
                    for alert in &alerts {
                        let budget_name: Option<String> =
                            sqlx::query_scalar("SELECT name FROM budgets WHERE id = $1")
                                .bind(alert.budget)
                                .fetch_optional(&mut *tx)
                                .await?;
                        let dispatch = AlertDispatch {
                            alert: alert.clone(),
                            budget_name: budget_name.unwrap_or_default(),
                            owners: owners(&mut tx, alert.org).await?,
                            webhooks: active_webhooks(&mut tx, alert.org).await?,
                        };
                        let deliveries = compose(&dispatch);
                        if deliveries.iter().any(|delivery| delivery.org != alert.org) {
                            return Err(StoreError::corrupt(
                                "an alert's deliveries were composed for another org",
                            ));
                        }
                        insert_deliveries(&mut tx, &deliveries, now).await?;
                        sqlx::query(
                            "UPDATE budget_alerts SET dispatched_at = $2 WHERE id = $1 \
                             AND dispatched_at IS NULL",
                        )
                        .bind(alert.id)
                        .bind(now.as_micros())
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    u32::try_from(alerts.len()).map_err(StoreError::corrupt)
                }

                async fn finish_once(
                    &self,
                    holder: Uuid,
                    attempt: &AttemptRecord,
                    next_attempt_at: Option<Timestamp>,
                    error: Option<&str>,
                ) -> Result<bool, StoreError> {
                    let state = attempt.outcome.state();
                    let delivered_at = (state == DeliveryState::Delivered)
                        .then(|| attempt.started_at.as_micros());
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let updated = sqlx::query(
                        "UPDATE deliveries SET state = $3, attempts = $4, \
                         next_attempt_at = COALESCE($5, next_attempt_at), \
                         delivered_at = $6, last_error = $7, lease_until = NULL, \
                         lease_holder = NULL WHERE id = $1 AND lease_holder = $2 \
                         AND state = 'pending' AND attempts = $4 - 1",
                    )
                    .bind(attempt.delivery)
                    .bind(holder)
                    .bind(state.as_str())
                    .bind(i64::from(attempt.attempt))
                    .bind(next_attempt_at.map(Timestamp::as_micros))
                    .bind(delivered_at)
                    .bind(error.map(|error| bounded(error, DETAIL_MAX_BYTES)))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if updated != 1 {
                        tx.rollback().await?;
                        return Ok(false);
                    }
                    sqlx::query(
                        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, \
                         duration_us, outcome, status, detail) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(attempt.delivery)
                    .bind(i32::try_from(attempt.attempt).map_err(StoreError::corrupt)?)
                    .bind(attempt.started_at.as_micros())
                    .bind(signed(attempt.duration_micros)?)
                    .bind(attempt.outcome.as_str())
                    .bind(attempt.status.map(i32::from))
                    .bind(
                        attempt
                            .detail
                            .as_deref()
                            .map(|detail| bounded(detail, DETAIL_MAX_BYTES)),
                    )
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(true)
                }

                async fn enqueue_report_once(
                    &self,
                    batch: &ReportBatch,
                ) -> Result<bool, StoreError> {
                    let now = self.clock.now();
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let recorded = sqlx::query(
                        "INSERT INTO reports_sent (org_id, frequency, period_start, \
                         period_end, event_id, enqueued_at) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (org_id, frequency, period_start) DO NOTHING",
                    )
                    .bind(batch.org.as_uuid())
                    .bind(batch.frequency.as_str())
                    .bind(batch.period_start.as_micros())
                    .bind(batch.period_end.as_micros())
                    .bind(batch.event_id)
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if recorded {
                        if batch.deliveries.iter().any(|delivery| delivery.org != batch.org) {
                            return Err(StoreError::corrupt(
                                "a report's deliveries were composed for another org",
                            ));
                        }
                        insert_deliveries(&mut tx, &batch.deliveries, now).await?;
                    }
                    sqlx::query(
                        "UPDATE report_subscriptions SET next_due_at = $3 \
                         WHERE org_id = $1 AND frequency = $2 AND next_due_at < $3",
                    )
                    .bind(batch.org.as_uuid())
                    .bind(batch.frequency.as_str())
                    .bind(batch.next_due_at.as_micros())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(recorded)
                }
            }

            #[async_trait]
            impl DeliveryStore for $store {
                async fn create_webhook(
                    &self,
                    webhook: &WebhookRecord,
                    audit: &AuditEntry,
                ) -> Result<(), StoreError> {
                    let events =
                        serde_json::to_string(&webhook.events).map_err(StoreError::corrupt)?;
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        sqlx::query(
                            "INSERT INTO webhooks (id, org_id, url, secret, description, \
                             events, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                        )
                        .bind(webhook.id)
                        .bind(webhook.org.as_uuid())
                        .bind(&webhook.url)
                        .bind(&webhook.secret)
                        .bind(&webhook.description)
                        .bind(&events)
                        .bind(webhook.created_at.as_micros())
                        .execute(&mut *tx)
                        .await?;
                        append_audit(&mut tx, audit).await?;
                        tx.commit().await?;
                        Ok(())
                    })
                    .await
                }

                async fn webhooks_of(
                    &self,
                    org: OrgId,
                    after: Option<Uuid>,
                    limit: u32,
                ) -> Result<Vec<WebhookRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE org_id = $1 \
                         AND deleted_at IS NULL AND id > $2 ORDER BY id LIMIT $3"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(after.unwrap_or(Uuid::nil()))
                        .bind(limit_of(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(webhook_record).collect()
                }

                async fn webhook(&self, id: Uuid) -> Result<Option<WebhookRecord>, StoreError> {
                    let sql = format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1");
                    let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
                    row.as_ref().map(webhook_record).transpose()
                }

                async fn delete_webhook(
                    &self,
                    org: OrgId,
                    id: Uuid,
                    audit: &AuditEntry,
                ) -> Result<bool, StoreError> {
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let at = audit.at().as_micros();
                        let deleted = sqlx::query(
                            "UPDATE webhooks SET deleted_at = $3 WHERE id = $1 AND org_id = $2 \
                             AND deleted_at IS NULL",
                        )
                        .bind(id)
                        .bind(org.as_uuid())
                        .bind(at)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1;
                        if deleted {
                            sqlx::query(
                                "UPDATE deliveries SET state = 'failed', \
                                 last_error = 'the webhook was deleted', lease_until = NULL, \
                                 lease_holder = NULL WHERE webhook_id = $1 AND state = 'pending'",
                            )
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                            append_audit(&mut tx, audit).await?;
                        }
                        tx.commit().await?;
                        Ok(deleted)
                    })
                    .await
                }

                async fn dispatch_budget_alerts(
                    &self,
                    limit: u32,
                    compose: &mut ComposeAlert<'_>,
                ) -> Result<u32, StoreError> {
                    let compose = tokio::sync::Mutex::new(compose);
                    let compose = &compose;
                    retrying(|| async move {
                        let mut compose = compose.lock().await;
                        self.dispatch_once(limit, &mut **compose).await
                    })
                    .await
                }

                async fn claim_deliveries(
                    &self,
                    now: Timestamp,
                    lease_until: Timestamp,
                    holder: Uuid,
                    limit: u32,
                ) -> Result<Vec<DeliveryRecord>, StoreError> {
                    let sql = format!(
                        "UPDATE deliveries SET lease_until = $2, lease_holder = $3 \
                         WHERE id IN (SELECT id FROM deliveries WHERE state = 'pending' \
                         AND next_attempt_at <= $1 \
                         AND (lease_until IS NULL OR lease_until <= $1) \
                         ORDER BY next_attempt_at, id LIMIT $4{}) \
                         RETURNING {DELIVERY_COLUMNS}",
                        dialect::FOR_UPDATE_SKIP_LOCKED
                    );
                    let rows = retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let rows = sqlx::query(&sql)
                            .bind(now.as_micros())
                            .bind(lease_until.as_micros())
                            .bind(holder)
                            .bind(limit_of(limit))
                            .fetch_all(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        Ok(rows)
                    })
                    .await?;
                    let mut claimed: Vec<DeliveryRecord> =
                        rows.iter().map(delivery_record).collect::<Result<_, _>>()?;
                    claimed.sort_by_key(|delivery| (delivery.next_attempt_at, delivery.id));
                    Ok(claimed)
                }

                async fn finish_delivery(
                    &self,
                    holder: Uuid,
                    attempt: &AttemptRecord,
                    next_attempt_at: Option<Timestamp>,
                    error: Option<&str>,
                ) -> Result<bool, StoreError> {
                    retrying(|| self.finish_once(holder, attempt, next_attempt_at, error)).await
                }

                async fn deliveries_of(
                    &self,
                    org: OrgId,
                    filter: DeliveryFilter,
                    after: Option<(Timestamp, Uuid)>,
                    limit: u32,
                ) -> Result<Vec<DeliveryRecord>, StoreError> {
                    let (after_at, after_id) = match after {
                        Some((at, id)) => (at.as_micros(), id),
                        None => (i64::MAX, Uuid::max()),
                    };
                    let sql = format!(
                        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE org_id = $1 \
                         AND ($2 IS NULL OR state = $2) AND ($3 IS NULL OR webhook_id = $3) \
                         AND (created_at < $4 OR (created_at = $4 AND id < $5)) \
                         ORDER BY created_at DESC, id DESC LIMIT $6"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(filter.state.map(DeliveryState::as_str))
                        .bind(filter.webhook)
                        .bind(after_at)
                        .bind(after_id)
                        .bind(limit_of(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(delivery_record).collect()
                }

                async fn delivery_attempts(
                    &self,
                    ids: &[Uuid],
                ) -> Result<Vec<AttemptRecord>, StoreError> {
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    let sql = format!(
                        "SELECT delivery_id, attempt, started_at, duration_us, outcome, status, \
                         detail FROM delivery_attempts WHERE {} \
                         ORDER BY delivery_id, attempt",
                        dialect::in_uuids("delivery_id")
                    );
                    let rows = sqlx::query(&sql)
                        .bind(dialect::uuid_list(ids))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(attempt_record).collect()
                }

                async fn put_report(
                    &self,
                    subscription: &ReportSubscription,
                    audit: &AuditEntry,
                ) -> Result<ReportSubscription, StoreError> {
                    let recipients = serde_json::to_string(&subscription.recipients)
                        .map_err(StoreError::corrupt)?;
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        sqlx::query(
                            "INSERT INTO report_subscriptions (org_id, frequency, recipients, \
                             time_zone, created_at, updated_at, next_due_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7) \
                             ON CONFLICT (org_id, frequency) DO UPDATE SET \
                             recipients = excluded.recipients, time_zone = excluded.time_zone, \
                             updated_at = excluded.updated_at",
                        )
                        .bind(subscription.org.as_uuid())
                        .bind(subscription.frequency.as_str())
                        .bind(&recipients)
                        .bind(&subscription.time_zone)
                        .bind(subscription.created_at.as_micros())
                        .bind(subscription.updated_at.as_micros())
                        .bind(subscription.next_due_at.as_micros())
                        .execute(&mut *tx)
                        .await?;
                        append_audit(&mut tx, audit).await?;
                        let stored =
                            fetch_report(&mut tx, subscription.org, subscription.frequency)
                                .await?
                                .ok_or_else(|| StoreError::corrupt("a subscription vanished"))?;
                        tx.commit().await?;
                        Ok(stored)
                    })
                    .await
                }

                async fn report(
                    &self,
                    org: OrgId,
                    frequency: ReportFrequency,
                ) -> Result<Option<ReportSubscription>, StoreError> {
                    let mut conn = self.pool.acquire().await?;
                    fetch_report(&mut conn, org, frequency).await
                }

                async fn reports_of(
                    &self,
                    org: OrgId,
                ) -> Result<Vec<ReportSubscription>, StoreError> {
                    let sql = format!(
                        "SELECT {REPORT_COLUMNS} FROM report_subscriptions WHERE org_id = $1"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .fetch_all(&self.pool)
                        .await?;
                    let mut reports: Vec<ReportSubscription> =
                        rows.iter().map(report_record).collect::<Result<_, _>>()?;
                    reports.sort_by_key(|report| report.frequency);
                    Ok(reports)
                }

                async fn delete_report(
                    &self,
                    org: OrgId,
                    frequency: ReportFrequency,
                    audit: &AuditEntry,
                ) -> Result<bool, StoreError> {
                    retrying(|| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let deleted = sqlx::query(
                            "DELETE FROM report_subscriptions WHERE org_id = $1 \
                             AND frequency = $2",
                        )
                        .bind(org.as_uuid())
                        .bind(frequency.as_str())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1;
                        if deleted {
                            append_audit(&mut tx, audit).await?;
                        }
                        tx.commit().await?;
                        Ok(deleted)
                    })
                    .await
                }

                async fn due_reports(
                    &self,
                    now: Timestamp,
                    limit: u32,
                ) -> Result<Vec<ReportSubscription>, StoreError> {
                    let sql = format!(
                        "SELECT {REPORT_COLUMNS} FROM report_subscriptions \
                         WHERE next_due_at <= $1 ORDER BY next_due_at, org_id, frequency \
                         LIMIT $2"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(now.as_micros())
                        .bind(limit_of(limit))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(report_record).collect()
                }

                async fn enqueue_report(&self, batch: &ReportBatch) -> Result<bool, StoreError> {
                    retrying(|| self.enqueue_report_once(batch)).await
                }
            }
        }
    };
}

pub(crate) use shared_delivery;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_cuts_on_a_character_boundary() {
        assert_eq!(bounded("abc", 5), "abc");
        assert_eq!(bounded("abcdef", 3), "abc");
        assert_eq!(bounded("aé", 2), "a");
        assert_eq!(bounded("", 0), "");
    }

    #[test]
    fn names_round_trip() {
        for channel in [DeliveryChannel::Email, DeliveryChannel::Webhook] {
            assert_eq!(DeliveryChannel::parse(channel.as_str()), Some(channel));
        }
        for state in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
        ] {
            assert_eq!(DeliveryState::parse(state.as_str()), Some(state));
        }
        for frequency in ReportFrequency::ALL {
            assert_eq!(ReportFrequency::parse(frequency.as_str()), Some(frequency));
        }
        assert_eq!(ReportFrequency::parse("hourly"), None);
    }
}
