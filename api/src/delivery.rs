//! Delivering an org's notifications: budget alerts by e-mail (to the org's owners) and by
//! signed webhook (to every webhook the org registered for the event), and scheduled usage
//! reports by e-mail (a summary with the period's calls as a CSV attachment).
//!
//! Nothing is sent from a request. A job ([`spawn`]) runs three steps every few seconds, each
//! safe in any number of processes at once (see [`credex_store::delivery`]):
//!
//! 1. **Dispatch**: budget alerts the usage transaction recorded and nobody dispatched yet are
//!    turned into deliveries — one e-mail per owner, one post per webhook — queued in the same
//!    transaction that marks the alert dispatched (a transactional outbox: an alert is queued
//!    once, never lost between the charge and the queue).
//! 2. **Reports**: each subscription whose period has ended queues its report for the period
//!    just ended (the previous day, ISO week or month in the subscription's time zone), once
//!    per period whatever the processes; a period missed while no process ran is skipped, the
//!    latest one is sent.
//! 3. **Delivery**: due deliveries are leased, attempted, and their outcome and the attempt's
//!    log row written together. A failure is tried again after [`retry_delay_micros`]
//!    (30 s, doubling, at most 6 h) until [`MAX_ATTEMPTS`]; then the delivery fails with its
//!    last error (still listed). A permanent refusal (an SMTP 5xx, an address that cannot take
//!    mail, a deleted webhook) fails at once. Delivery is at least once: a process that dies
//!    mid-attempt lets its lease run out and the next one tries again; webhook receivers drop
//!    repeats by `Credex-Event-Id`.
//!
//! **E-mail** goes through the configured SMTP relay with `lettre` (plain SMTP), or, without
//! one, is written as `<delivery id>.eml` into the outbox directory, which counts as delivered:
//! nothing is dropped. **Webhooks** use [`crate::notify::Webhooks`] (its signature scheme,
//! timeouts and caps), to public addresses only unless `webhooks_allow_private`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use credex_ledger::Timestamp;
use credex_store::{
    AlertDispatch, AttemptOutcome, AttemptRecord, DeliveryChannel, DeliveryRecord, IdentityError,
    NewDelivery, ReportBatch, ReportFrequency, ReportSubscription, Store, StoreError, UsageFilter,
    UsageGroup,
};
use futures::StreamExt as _;
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::budgets::{period_bounds, Period};
use crate::notify::{NotifyError, Webhooks, WebhooksConfig};
use crate::views::rfc3339;

/// The event type of a crossed budget threshold.
pub const EVENT_BUDGET_ALERT: &str = "budget_alert.crossed";
/// Every event type a webhook may subscribe to.
pub const EVENT_TYPES: [&str; 1] = [EVENT_BUDGET_ALERT];
/// The most attempts at one delivery.
pub const MAX_ATTEMPTS: u32 = 10;
/// The wait after the first failed attempt; it doubles after each further one.
pub const FIRST_RETRY_MICROS: i64 = 30_000_000;
/// The longest wait between two attempts.
pub const RETRY_CAP_MICROS: i64 = 6 * 3_600_000_000;
/// The most webhooks an org may have.
pub const WEBHOOKS_MAX: usize = 20;
/// The most recipients of one report subscription.
pub const RECIPIENTS_MAX: usize = 10;
/// The most calls a report's CSV attachment lists (the export endpoint has them all).
pub const REPORT_ROWS_MAX: usize = 10_000;
/// How many models a report's summary names.
const TOP_MODELS: u32 = 5;
/// How long a claim lasts: longer than any attempt's timeouts.
const LEASE_MICROS: i64 = 120_000_000;
/// The most deliveries one claim takes, and how many claims one pass makes at most.
const CLAIM_BATCH: u32 = 50;
const CLAIMS_PER_PASS: u32 = 20;
/// How many deliveries are attempted at once.
const CONCURRENCY: usize = 8;
/// The most budget alerts one dispatch transaction takes, and reports one pass queues.
const DISPATCH_BATCH: u32 = 100;
const REPORT_BATCH: u32 = 50;
/// Timeouts of one SMTP exchange and one webhook post.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait after the `attempt`-th failed attempt (1 for the first): 30 s doubling,
/// at most [`RETRY_CAP_MICROS`].
pub fn retry_delay_micros(attempt: u32) -> i64 {
    let doublings = attempt.saturating_sub(1).min(30);
    FIRST_RETRY_MICROS
        .saturating_mul(1_i64 << doublings)
        .min(RETRY_CAP_MICROS)
}

/// When to try again after the `attempt`-th attempt failed at `at`; `None` after the last.
pub fn next_attempt_at(attempt: u32, at: Timestamp) -> Option<Timestamp> {
    (attempt < MAX_ATTEMPTS).then(|| at.plus_micros(retry_delay_micros(attempt)))
}

/// An e-mail as queued (the `payload` of an e-mail delivery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailPayload {
    pub subject: String,
    pub text: String,
    pub attachment: Option<AttachmentPayload>,
}

/// A file attached to an e-mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentPayload {
    pub filename: String,
    pub content_type: String,
    pub content: String,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    pub dispatched: u32,
    pub reports: u32,
    pub delivered: u32,
    pub retried: u32,
    pub failed: u32,
}

/// Deliveries attempted since this process started, by channel and outcome, for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct DeliveryCounts {
    pub email: BTreeMap<&'static str, u64>,
    pub webhook: BTreeMap<&'static str, u64>,
}

impl DeliveryCounts {
    /// Sets `credex_email_deliveries_total{outcome}` and
    /// `credex_webhook_deliveries_total{outcome}` (outcomes: `delivered`, `outbox` for e-mail
    /// written to the outbox, `retry`, `failed`).
    pub fn render(&self, metrics: &crate::metrics::Metrics) {
        for (outcome, total) in &self.email {
            metrics.set_counter(
                "credex_email_deliveries_total",
                "E-mail delivery attempts, by outcome (outbox: written to the outbox directory).",
                &[("outcome", outcome)],
                *total,
            );
        }
        for (outcome, total) in &self.webhook {
            metrics.set_counter(
                "credex_webhook_deliveries_total",
                "Webhook delivery attempts, by outcome.",
                &[("outcome", outcome)],
                *total,
            );
        }
    }
}

/// Where e-mail goes.
enum Mail {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Outbox(PathBuf),
}

/// What an attempt answered: success with the server's status and reply, or a failure.
struct Sent {
    status: Option<u16>,
    detail: Option<String>,
    outbox: bool,
}

struct Failure {
    /// No later attempt can succeed.
    permanent: bool,
    status: Option<u16>,
    error: String,
}

impl Failure {
    fn permanent(error: impl Into<String>) -> Self {
        Self {
            permanent: true,
            status: None,
            error: error.into(),
        }
    }

    fn transient(error: impl Into<String>) -> Self {
        Self {
            permanent: false,
            status: None,
            error: error.into(),
        }
    }
}

/// The delivery service. See the [module documentation](self).
pub struct Delivery {
    store: Arc<dyn Store>,
    mail: Mail,
    from: Mailbox,
    /// The domain of `from`, for Message-IDs.
    from_domain: String,
    webhooks: Webhooks,
    allow_private: bool,
    /// This process's lease holder id.
    holder: Uuid,
    counts: Mutex<DeliveryCounts>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mail = match &self.mail {
            Mail::Smtp(_) => "smtp".to_owned(),
            Mail::Outbox(dir) => format!("outbox {}", dir.display()),
        };
        f.debug_struct("Delivery")
            .field("mail", &mail)
            .field("from", &self.from.to_string())
            .field("allow_private", &self.allow_private)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Delivers e-mail through `smtp` (host, port) when given, else into `outbox`, from
    /// `from`; webhooks to public addresses unless `allow_private`.
    pub fn new(
        store: Arc<dyn Store>,
        smtp: Option<(&str, u16)>,
        outbox: PathBuf,
        from: &str,
        allow_private: bool,
    ) -> anyhow::Result<Self> {
        let from: Mailbox = from
            .parse()
            .map_err(|error| anyhow::anyhow!("the e-mail sender {from:?}: {error}"))?;
        let from_domain = from.email.domain().to_owned();
        let mail = match smtp {
            Some((host, port)) => Mail::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
                    .port(port)
                    .timeout(Some(SMTP_TIMEOUT))
                    .build(),
            ),
            None => Mail::Outbox(outbox),
        };
        let webhooks = Webhooks::new(WebhooksConfig {
            timeout: WEBHOOK_TIMEOUT,
        })?;
        Ok(Self {
            store,
            mail,
            from,
            from_domain,
            webhooks,
            allow_private,
            holder: Uuid::new_v4(),
            counts: Mutex::default(),
        })
    }

    /// What this process attempted since it started.
    pub fn counters(&self) -> DeliveryCounts {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One pass: dispatch alerts, queue due reports, attempt due deliveries. Every step runs
    /// even when one before it failed; the first error is answered.
    pub async fn run(&self) -> Result<PassReport, DeliveryError> {
        let mut report = PassReport::default();
        let dispatched = self.dispatch().await;
        let reports = self.enqueue_reports().await;
        let delivered = self.deliver_due(&mut report).await;
        report.dispatched = dispatched?;
        report.reports = reports?;
        delivered?;
        Ok(report)
    }

    /// Dispatches every budget alert not dispatched yet.
    pub async fn dispatch(&self) -> Result<u32, DeliveryError> {
        let mut total = 0;
        loop {
            let mut compose = |dispatch: &AlertDispatch| compose_alert(dispatch);
            let count = self
                .store
                .dispatch_budget_alerts(DISPATCH_BATCH, &mut compose)
                .await?;
            total += count;
            if count < DISPATCH_BATCH {
                return Ok(total);
            }
        }
    }

    /// Queues the reports that are due.
    pub async fn enqueue_reports(&self) -> Result<u32, DeliveryError> {
        let now = self.store.clock().now();
        let mut queued = 0;
        for subscription in self.store.due_reports(now, REPORT_BATCH).await? {
            let batch = self.report(&subscription, now).await?;
            if self.store.enqueue_report(&batch).await? {
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Claims and attempts due deliveries until none is due (or a bounded number of claims).
    async fn deliver_due(&self, report: &mut PassReport) -> Result<(), DeliveryError> {
        for _ in 0..CLAIMS_PER_PASS {
            let now = self.store.clock().now();
            let claimed = self
                .store
                .claim_deliveries(now, now.plus_micros(LEASE_MICROS), self.holder, CLAIM_BATCH)
                .await?;
            let count = claimed.len();
            let outcomes: Vec<Result<Option<AttemptOutcome>, StoreError>> =
                futures::stream::iter(claimed)
                    .map(|delivery| self.attempt(delivery))
                    .buffer_unordered(CONCURRENCY)
                    .collect()
                    .await;
            for outcome in outcomes {
                match outcome? {
                    Some(AttemptOutcome::Delivered) => report.delivered += 1,
                    Some(AttemptOutcome::Retry) => report.retried += 1,
                    Some(AttemptOutcome::Failed) => report.failed += 1,
                    None => {}
                }
            }
            if count < usize::try_from(CLAIM_BATCH).unwrap_or(usize::MAX) {
                break;
            }
        }
        Ok(())
    }

    /// Attempts one leased delivery and records the attempt; `None` when the lease was lost.
    async fn attempt(
        &self,
        delivery: DeliveryRecord,
    ) -> Result<Option<AttemptOutcome>, StoreError> {
        let started_at = self.store.clock().now();
        let clock = std::time::Instant::now();
        let result = match delivery.channel {
            DeliveryChannel::Email => self.email(&delivery, started_at).await,
            DeliveryChannel::Webhook => self.webhook(&delivery, started_at).await,
        };
        let duration_micros = u64::try_from(clock.elapsed().as_micros()).unwrap_or(u64::MAX);
        let attempt = delivery.attempts.saturating_add(1);
        let (outcome, next, status, detail, error, label) = match result {
            Ok(sent) => (
                AttemptOutcome::Delivered,
                None,
                sent.status,
                sent.detail,
                None,
                if sent.outbox { "outbox" } else { "delivered" },
            ),
            Err(failure) => {
                let next = if failure.permanent {
                    None
                } else {
                    next_attempt_at(attempt, started_at)
                };
                let (outcome, label) = match next {
                    Some(_) => (AttemptOutcome::Retry, "retry"),
                    None => (AttemptOutcome::Failed, "failed"),
                };
                tracing::warn!(
                    delivery = %delivery.id, attempt, error = %failure.error,
                    "a delivery attempt failed"
                );
                let error = Some(failure.error.clone());
                (
                    outcome,
                    next,
                    failure.status,
                    Some(failure.error),
                    error,
                    label,
                )
            }
        };
        let record = AttemptRecord {
            delivery: delivery.id,
            attempt,
            started_at,
            duration_micros,
            outcome,
            status,
            detail,
        };
        let finished = self
            .store
            .finish_delivery(self.holder, &record, next, error.as_deref())
            .await?;
        {
            let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
            let family = match delivery.channel {
                DeliveryChannel::Email => &mut counts.email,
                DeliveryChannel::Webhook => &mut counts.webhook,
            };
            *family.entry(label).or_default() += 1;
        }
        if !finished {
            tracing::warn!(delivery = %delivery.id, "a delivery's lease ran out during its attempt");
            return Ok(None);
        }
        Ok(Some(outcome))
    }

    async fn email(&self, delivery: &DeliveryRecord, at: Timestamp) -> Result<Sent, Failure> {
        let payload: EmailPayload = serde_json::from_str(&delivery.payload).map_err(|error| {
            Failure::permanent(format!("a stored e-mail is not valid: {error}"))
        })?;
        let message = self.message(delivery, &payload, at)?;
        match &self.mail {
            Mail::Smtp(transport) => match transport.send(message).await {
                Ok(response) => Ok(Sent {
                    status: Some(u16::from(response.code())),
                    detail: Some(response.message().collect::<Vec<_>>().join(" ")),
                    outbox: false,
                }),
                Err(error) => Err(Failure {
                    permanent: error.is_permanent(),
                    status: error.status().map(u16::from),
                    error: format!("SMTP: {error}"),
                }),
            },
            Mail::Outbox(dir) => {
                let path = dir.join(format!("{}.eml", delivery.id));
                let bytes = message.formatted();
                let (dir, target) = (dir.clone(), path.clone());
                tokio::task::spawn_blocking(move || write_atomically(&dir, &target, &bytes))
                    .await
                    .map_err(|error| Failure::transient(format!("the outbox writer: {error}")))?
                    .map_err(|error| {
                        Failure::transient(format!("writing {}: {error}", path.display()))
                    })?;
                Ok(Sent {
                    status: None,
                    detail: Some(format!("written to the outbox: {}", path.display())),
                    outbox: true,
                })
            }
        }
    }

    /// The message of an e-mail delivery: a text body, or a text body and an attachment.
    fn message(
        &self,
        delivery: &DeliveryRecord,
        payload: &EmailPayload,
        at: Timestamp,
    ) -> Result<Message, Failure> {
        let to: Mailbox = delivery.target.parse().map_err(|error| {
            Failure::permanent(format!("{:?} cannot take mail: {error}", delivery.target))
        })?;
        let date = SystemTime::UNIX_EPOCH
            + Duration::from_micros(u64::try_from(at.as_micros()).unwrap_or(0));
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(payload.subject.clone())
            .date(date)
            .message_id(Some(format!(
                "<{}@{}>",
                delivery.id.simple(),
                self.from_domain
            )));
        let built = match &payload.attachment {
            None => builder
                .header(ContentType::TEXT_PLAIN)
                .body(payload.text.clone()),
            Some(attachment) => {
                let content_type = ContentType::parse(&attachment.content_type).map_err(|_| {
                    Failure::permanent(format!(
                        "an attachment's content type {:?}",
                        attachment.content_type
                    ))
                })?;
                builder.multipart(
                    MultiPart::mixed()
                        .singlepart(SinglePart::plain(payload.text.clone()))
                        .singlepart(
                            Attachment::new(attachment.filename.clone())
                                .body(attachment.content.clone(), content_type),
                        ),
                )
            }
        };
        built.map_err(|error| Failure::permanent(format!("the message: {error}")))
    }

    async fn webhook(&self, delivery: &DeliveryRecord, at: Timestamp) -> Result<Sent, Failure> {
        let id = delivery
            .webhook
            .ok_or_else(|| Failure::permanent("a webhook delivery without its webhook"))?;
        let hook = self
            .store
            .webhook(id)
            .await
            .map_err(|error| Failure::transient(error.to_string()))?
            .filter(|hook| hook.deleted_at.is_none() && hook.org == delivery.org)
            .ok_or_else(|| Failure::permanent("the webhook was deleted"))?;
        if !self.allow_private {
            crate::alerts::refuse_internal(&hook.url)
                .await
                .map_err(Failure::transient)?;
        }
        let body: serde_json::Value = serde_json::from_str(&delivery.payload)
            .map_err(|error| Failure::permanent(format!("a stored event is not valid: {error}")))?;
        let unix = at.as_micros().div_euclid(1_000_000);
        match self
            .webhooks
            .post(
                &hook.url,
                hook.secret.as_bytes(),
                delivery.event_id,
                &body,
                unix,
            )
            .await
        {
            Ok(status) => Ok(Sent {
                status: Some(status),
                detail: None,
                outbox: false,
            }),
            Err(NotifyError::Status { status, body }) => Err(Failure {
                permanent: false,
                status: Some(status),
                error: format!("the webhook answered HTTP {status}: {body}"),
            }),
            Err(error @ NotifyError::Invalid { .. }) => Err(Failure::permanent(error.to_string())),
            Err(error) => Err(Failure::transient(error.to_string())),
        }
    }

    /// The report of the period before `now`'s for a subscription, ready to queue.
    async fn report(
        &self,
        subscription: &ReportSubscription,
        now: Timestamp,
    ) -> Result<ReportBatch, DeliveryError> {
        let period = match subscription.frequency {
            ReportFrequency::Daily => Period::Day,
            ReportFrequency::Weekly => Period::Week,
            ReportFrequency::Monthly => Period::Month,
        };
        let zone = crate::budgets::zone(&subscription.time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
        let (current, next_due) = period_bounds(period, &zone, now);
        let (start, end) = period_bounds(period, &zone, current.plus_micros(-1));
        let org = subscription.org;
        let name = self
            .store
            .org(org)
            .await?
            .map_or_else(|| org.to_string(), |org| org.name.to_string());
        let filter = UsageFilter {
            from: Some(start),
            to: Some(end),
            ..UsageFilter::default()
        };
        let total = self
            .store
            .usage_totals(org, &filter, UsageGroup::All, 1)
            .await?
            .pop()
            .unwrap_or_default();
        let models = self
            .store
            .usage_totals(org, &filter, UsageGroup::Model, TOP_MODELS)
            .await?;
        let (csv, rows, complete) = self.csv(org, start, end).await?;
        let local_start = jiff::Timestamp::from_microsecond(start.as_micros())
            .map(|at| at.to_zoned(zone.clone()).date().to_string())
            .unwrap_or_else(|_| rfc3339(start));
        let frequency = subscription.frequency.as_str();
        let subject = format!("Credex {frequency} report for {name}: {local_start}");
        let mut text = format!(
            "Credex {frequency} usage report for {name}\n\
             Period: {} to {} ({}, from {local_start})\n\n\
             Total cost: {} CR ({} µCR)\nCalls: {}\n\
             Tokens: {} input, {} cached input, {} cache write, {} output\n",
            rfc3339(start),
            rfc3339(end),
            subscription.time_zone,
            credits(total.cost_micro_cr),
            total.cost_micro_cr,
            total.events,
            total.input_tokens,
            total.cached_input_tokens,
            total.cache_write_tokens,
            total.output_tokens,
        );
        if !models.is_empty() {
            text.push_str("\nTop models by cost:\n");
            for model in &models {
                text.push_str(&format!(
                    "  {}: {} CR, {} calls\n",
                    model.key.as_deref().unwrap_or("-"),
                    credits(model.cost_micro_cr),
                    model.events
                ));
            }
        }
        text.push_str(&if complete {
            format!("\nThe attached usage.csv lists the period's {rows} calls.\n")
        } else {
            format!(
                "\nThe attached usage.csv lists the period's first {rows} calls; \
                 GET /v1/orgs/{org}/usage.csv exports them all.\n"
            )
        });
        let email = EmailPayload {
            subject,
            text,
            attachment: Some(AttachmentPayload {
                filename: "usage.csv".to_owned(),
                content_type: "text/csv; charset=utf-8".to_owned(),
                content: csv,
            }),
        };
        let payload = serde_json::to_string(&email).expect("an e-mail serializes");
        let event_id = Uuid::now_v7();
        let event_type = format!("report.{frequency}");
        let deliveries = subscription
            .recipients
            .iter()
            .map(|to| NewDelivery {
                id: Uuid::now_v7(),
                org,
                channel: DeliveryChannel::Email,
                target: to.clone(),
                webhook: None,
                event_type: event_type.clone(),
                event_id,
                payload: payload.clone(),
            })
            .collect();
        Ok(ReportBatch {
            org,
            frequency: subscription.frequency,
            period_start: start,
            period_end: end,
            event_id,
            next_due_at: next_due,
            deliveries,
        })
    }

    /// The period's calls as CSV (the export's format), at most [`REPORT_ROWS_MAX`] of them:
    /// (the text, the rows, whether every call is in).
    async fn csv(
        &self,
        org: credex_ledger::OrgId,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<(String, usize, bool), DeliveryError> {
        let mut out = String::from(crate::routes::usage::CSV_HEADER);
        let mut rows = 0;
        let mut after = None;
        loop {
            let room = REPORT_ROWS_MAX - rows;
            let page = u32::try_from(room.min(1_000)).unwrap_or(1_000);
            let records = self.store.usage_events(org, from, to, after, page).await?;
            for record in &records {
                crate::routes::usage::csv_row(&mut out, record);
            }
            rows += records.len();
            let full = records.len() == usize::try_from(page).unwrap_or(usize::MAX);
            if !full {
                return Ok((out, rows, true));
            }
            if rows >= REPORT_ROWS_MAX {
                let last = records.last().map(|last| (last.occurred_at, last.id));
                let beyond = self.store.usage_events(org, from, to, last, 1).await?;
                return Ok((out, rows, beyond.is_empty()));
            }
            after = records.last().map(|last| (last.occurred_at, last.id));
        }
    }
}

/// µCR as CR with six decimals: `1234567` → `1.234567`.
fn credits(micro_cr: u64) -> String {
    format!("{}.{:06}", micro_cr / 1_000_000, micro_cr % 1_000_000)
}

/// Writes `bytes` to `path` whole or not at all (a temporary file, then a rename).
fn write_atomically(
    dir: &std::path::Path,
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = path.with_extension("eml.partial");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// The messages of a budget alert: one e-mail per owner, one post per webhook receiving
/// budget alerts. The event id is the alert's, the same for every target and attempt.
pub fn compose_alert(dispatch: &AlertDispatch) -> Vec<NewDelivery> {
    let alert = &dispatch.alert;
    let name = if dispatch.budget_name.is_empty() {
        alert.budget.to_string()
    } else {
        dispatch.budget_name.clone()
    };
    let event = json!({
        "type": EVENT_BUDGET_ALERT,
        "event_id": alert.id.to_string(),
        "org_id": alert.org.to_string(),
        "alert_id": alert.id.to_string(),
        "budget_id": alert.budget.to_string(),
        "budget_name": name,
        "threshold_percent": alert.threshold,
        "spent_micro_cr": alert.spent_micro_cr,
        "limit_micro_cr": alert.limit_micro_cr,
        "period_start": rfc3339(alert.period_start),
        "at": rfc3339(alert.at),
    });
    let email = EmailPayload {
        subject: format!(
            "Credex budget alert: {name} reached {}% of its limit",
            alert.threshold
        ),
        text: format!(
            "The budget {name} of org {} has spent {} CR of its {} CR limit in the period \
             that started {}: it crossed its {}% threshold at {}.\n\n\
             Budget {}, alert {}.\n",
            alert.org,
            credits(alert.spent_micro_cr),
            credits(alert.limit_micro_cr),
            rfc3339(alert.period_start),
            alert.threshold,
            rfc3339(alert.at),
            alert.budget,
            alert.id,
        ),
        attachment: None,
    };
    let email = serde_json::to_string(&email).expect("an e-mail serializes");
    let mut deliveries: Vec<NewDelivery> = dispatch
        .owners
        .iter()
        .map(|owner| NewDelivery {
            id: Uuid::now_v7(),
            org: alert.org,
            channel: DeliveryChannel::Email,
            target: owner.clone(),
            webhook: None,
            event_type: EVENT_BUDGET_ALERT.to_owned(),
            event_id: alert.id,
            payload: email.clone(),
        })
        .collect();
    deliveries.extend(
        dispatch
            .webhooks
            .iter()
            .filter(|hook| hook.org == alert.org && hook.receives(EVENT_BUDGET_ALERT))
            .map(|hook| NewDelivery {
                id: Uuid::now_v7(),
                org: alert.org,
                channel: DeliveryChannel::Webhook,
                target: hook.id.to_string(),
                webhook: Some(hook.id),
                event_type: EVENT_BUDGET_ALERT.to_owned(),
                event_id: alert.id,
                payload: event.to_string(),
            }),
    );
    deliveries
}

/// Runs a delivery pass every `period` until `stop`.
pub fn spawn(
    delivery: Arc<Delivery>,
    period: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    crate::jobs::every(period, stop, move || {
        let delivery = delivery.clone();
        async move {
            match delivery.run().await {
                Ok(report) if report != PassReport::default() => {
                    tracing::info!(
                        dispatched = report.dispatched,
                        reports = report.reports,
                        delivered = report.delivered,
                        retried = report.retried,
                        failed = report.failed,
                        "deliveries"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "a delivery pass failed; the next pass retries");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_30_seconds_doubling_up_to_6_hours() {
        let expected_seconds = [
            30, 60, 120, 240, 480, 960, 1_920, 3_840, 7_680, 15_360, 21_600,
        ];
        for (attempt, seconds) in (1..).zip(expected_seconds) {
            assert_eq!(
                retry_delay_micros(attempt),
                seconds * 1_000_000,
                "after attempt {attempt}"
            );
        }
        assert_eq!(retry_delay_micros(0), FIRST_RETRY_MICROS);
        assert_eq!(retry_delay_micros(u32::MAX), RETRY_CAP_MICROS);
    }

    #[test]
    fn the_last_attempt_has_no_next() {
        let at = Timestamp::from_micros(1_000_000);
        assert_eq!(next_attempt_at(1, at), Some(at.plus_micros(30_000_000)));
        assert_eq!(
            next_attempt_at(MAX_ATTEMPTS - 1, at),
            Some(at.plus_micros(retry_delay_micros(MAX_ATTEMPTS - 1)))
        );
        assert_eq!(next_attempt_at(MAX_ATTEMPTS, at), None);
        assert_eq!(next_attempt_at(MAX_ATTEMPTS + 1, at), None);
    }

    #[test]
    fn credits_have_six_decimals() {
        assert_eq!(credits(0), "0.000000");
        assert_eq!(credits(1_234_567), "1.234567");
        assert_eq!(credits(5_000_000), "5.000000");
    }

    #[test]
    fn an_alert_goes_to_every_owner_and_each_subscribed_webhook() {
        let org = credex_ledger::OrgId::new(Uuid::now_v7()).expect("an org");
        let hook = |events: Vec<String>| credex_store::WebhookRecord {
            id: Uuid::now_v7(),
            org,
            url: "http://hooks.example/".to_owned(),
            secret: "s".to_owned(),
            description: String::new(),
            events,
            created_at: Timestamp::EPOCH,
            deleted_at: None,
        };
        let alert = credex_store::BudgetAlertRecord {
            id: Uuid::now_v7(),
            budget: Uuid::now_v7(),
            org,
            period_start: Timestamp::EPOCH,
            threshold: 90,
            spent_micro_cr: 9_000_000,
            limit_micro_cr: 10_000_000,
            at: Timestamp::EPOCH,
        };
        let all = hook(Vec::new());
        let subscribed = hook(vec![EVENT_BUDGET_ALERT.to_owned()]);
        let other = hook(vec!["something.else".to_owned()]);
        let deliveries = compose_alert(&AlertDispatch {
            alert: alert.clone(),
            budget_name: "Monthly".to_owned(),
            owners: vec!["a@x.example".to_owned(), "b@x.example".to_owned()],
            webhooks: vec![all.clone(), subscribed.clone(), other],
        });
        let targets: Vec<&str> = deliveries.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(
            targets,
            [
                "a@x.example",
                "b@x.example",
                all.id.to_string().as_str(),
                subscribed.id.to_string().as_str()
            ]
        );
        assert!(deliveries
            .iter()
            .all(|d| d.event_id == alert.id && d.org == org));
        let email: EmailPayload = serde_json::from_str(&deliveries[0].payload).expect("JSON");
        assert!(
            email.subject.contains("Monthly reached 90%"),
            "{}",
            email.subject
        );
        let event: serde_json::Value = serde_json::from_str(&deliveries[2].payload).expect("JSON");
        assert_eq!(event["type"], EVENT_BUDGET_ALERT);
        assert_eq!(event["threshold_percent"], 90);
    }
}
