//! Usage in the database: every model call an org reports, priced and charged once.
//!
//! Like the market, this layer decides nothing: it gives the usage service one primitive,
//! [`UsageStore::usage_tx`], that makes an org's charges atomic and safe with any number of
//! processes on one database:
//!
//! 1. lock the org's row (`FOR NO KEY UPDATE` on PostgreSQL, so inserts elsewhere that check a
//!    foreign key to the org never wait; SQLite's `BEGIN IMMEDIATE` already serializes
//!    writers), so one org's charges are decided one batch at a time;
//! 2. read under that lock the events already recorded among those asked (replays) and the
//!    current balances of the accounts named;
//! 3. hand that [`UsageView`] to the caller's pure decision, which answers with the linked
//!    chains and rows to write, or stops;
//! 4. run every chain through the ledger in the same transaction, and when each is accepted
//!    (or answered `exists`) write the rows and commit; otherwise roll back and return the
//!    ledger's answers.
//!
//! Lock order: org row → (the ledger's) pending transfers → assets → balance stripes. Other
//! writers of the same balances (the market) do not hold the org's row: a balance may fall
//! between the read and the ledger's decision, which then refuses the chain and nothing is
//! written; the caller decides again.

use std::collections::HashMap;

use async_trait::async_trait;
use credex_ledger::{AccountId, Balance, OrgId, Timestamp, Transfer, TransferId, TransferResult};
use serde::Serialize;
use uuid::Uuid;

use crate::identity::AuditEntry;
use crate::StoreError;

/// The most events one usage transaction records.
pub const USAGE_BATCH_MAX: usize = 1_000;
/// The most events one page of an org's usage returns.
pub const USAGE_PAGE_MAX: u32 = 1_000;

/// A usage event as recorded, with its charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    pub org: OrgId,
    /// The org's own id for the event.
    pub id: Uuid,
    pub model: String,
    pub class: String,
    /// The token asset of the model's class in the event's cycle.
    pub asset: String,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    /// The whole call at the model's price.
    pub cost_micro_cr: u64,
    /// Tokens taken from `acquired`.
    pub from_acquired: u64,
    /// Tokens taken from `alloc`.
    pub from_alloc: u64,
    /// µCR taken from the wallet for the tokens no balance covered.
    pub from_wallet_micro_cr: u64,
    /// `catalog` or `org` (a custom price).
    pub price_source: String,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub task: Option<String>,
    pub conversation: Option<String>,
    /// A JSON object, as given.
    pub metadata: Option<String>,
    /// SHA-256 of the event as first asked.
    pub fingerprint: [u8; 32],
    pub transfer_ids: Vec<TransferId>,
}

/// A budget as stored (the service parses and checks it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetRecord {
    pub id: Uuid,
    pub org: OrgId,
    pub name: String,
    /// `org`, `user`, `api_key` or `task`.
    pub scope_kind: String,
    /// The user or key id, or the task label; none for the org.
    pub scope_value: Option<String>,
    /// `day`, `week`, `month` or `cycle`.
    pub period: String,
    /// An IANA time zone name.
    pub time_zone: String,
    pub limit_micro_cr: u64,
    /// Percents, ascending.
    pub thresholds: Vec<u32>,
    pub hard: bool,
    pub created_at: Timestamp,
}

/// A budget threshold crossed in a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetAlertRecord {
    pub id: Uuid,
    pub budget: Uuid,
    pub org: OrgId,
    pub period_start: Timestamp,
    /// The percent crossed.
    pub threshold: u32,
    pub spent_micro_cr: u64,
    pub limit_micro_cr: u64,
    pub at: Timestamp,
}

/// Where a reservation stands. A pending one past its `expires_at` is expired: the ledger's
/// expiry job voids its chain, and it holds nothing against any budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Pending,
    Settled,
    Released,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Settled => "settled",
            Self::Released => "released",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Settled, Self::Released]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// A reservation as recorded: the worst-case cost of a call, held by a chain of pending
/// transfers until it is settled, released or expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReservationRecord {
    pub org: OrgId,
    /// The org's own id for the reservation.
    pub id: Uuid,
    pub model: String,
    pub class: String,
    pub asset: String,
    /// The worst case the call may use.
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    /// The worst case at the model's price: what budgets count while it is held.
    pub cost_micro_cr: u64,
    /// Tokens held in `acquired`.
    pub from_acquired: u64,
    /// Tokens held in `alloc`.
    pub from_alloc: u64,
    /// µCR held in the wallet.
    pub from_wallet_micro_cr: u64,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub task: Option<String>,
    pub conversation: Option<String>,
    /// SHA-256 of the reservation as first asked.
    pub fingerprint: [u8; 32],
    /// The pending transfers (acquired, alloc, wallet legs that hold anything).
    pub transfer_ids: Vec<TransferId>,
    pub state: ReservationState,
    /// When it was settled or released.
    pub resolved_at: Option<Timestamp>,
    /// The usage event it was settled with.
    pub usage_event: Option<Uuid>,
}

impl ReservationRecord {
    /// Whether it holds anything at `now`: pending and not yet expired.
    pub fn holds_at(&self, now: Timestamp) -> bool {
        self.state == ReservationState::Pending && now < self.expires_at
    }
}

/// A new reservation and what it holds against each budget period it counts in.
#[derive(Debug, Clone)]
pub struct NewReservation {
    pub record: ReservationRecord,
    /// (budget, period start, µCR held).
    pub budgets: Vec<(Uuid, Timestamp, u64)>,
}

/// A pending reservation settled (with a usage event) or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReservationResolution {
    pub id: Uuid,
    pub state: ReservationState,
    pub usage_event: Option<Uuid>,
}

/// An org's overdraft allowance: how far past its wallet it may spend, and how much of it is
/// outstanding (advanced and not yet repaid).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Overdraft {
    pub limit_micro_cr: u64,
    pub used_micro_cr: u64,
}

impl Overdraft {
    /// What may still be advanced.
    pub fn headroom(self) -> u64 {
        self.limit_micro_cr.saturating_sub(self.used_micro_cr)
    }
}

/// What recording an overdraft repayment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepaymentOutcome {
    NoOrg,
    /// Recorded: the overdraft after it.
    Repaid(Overdraft),
    /// This repayment (same id and amount) was recorded before: the overdraft now.
    Replayed(Overdraft),
    /// The id was recorded with another amount.
    Conflict,
    /// More than is outstanding.
    TooMuch(Overdraft),
}

/// How usage totals are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Model,
    Class,
    User,
    ApiKey,
    Task,
    Conversation,
    /// The UTC day the call happened.
    Day,
    /// One group of every event: the totals.
    All,
}

/// Which events usage totals count (every field narrows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageFilter {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub model: Option<String>,
    pub class: Option<String>,
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub task: Option<String>,
    pub conversation: Option<String>,
}

/// One group's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotal {
    /// The group's key as text (a model id, a UUID, a label, a day `YYYY-MM-DD`), none for
    /// events without one (no user, say).
    pub key: Option<String>,
    pub events: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub cost_micro_cr: u64,
    pub from_acquired: u64,
    pub from_alloc: u64,
    pub from_wallet_micro_cr: u64,
}

/// What a usage transaction reads under the org's lock.
#[derive(Debug, Clone, Default)]
pub struct UsageReads {
    /// Events that may have been recorded already.
    pub events: Vec<Uuid>,
    /// Accounts whose current balances (sums of stripes) the decision needs.
    pub balances: Vec<AccountId>,
    /// Budget periods (budget, period start) whose spend the decision needs; their amounts
    /// held by reservations are read too.
    pub spend: Vec<(Uuid, Timestamp)>,
    /// Reservations that may exist (to create, replay, settle or release). What they hold is
    /// left out of [`UsageView::held`]: the decision replaces it.
    pub reservations: Vec<Uuid>,
    /// The versions at which what the decision was prepared from (prices, budgets, which
    /// accounts exist) was read before the transaction: when either has moved since, the
    /// decision is not run (`Stale`). `None`: not checked.
    pub versions: Option<UsageVersions>,
    /// The API key the request came with: the part is `KeyRevoked` (its decision not run) when
    /// the key is revoked, or gone, by the transaction. `None`: not checked.
    pub key: Option<Uuid>,
    /// The decision uses an event of `events` found recorded only to answer it as a replay,
    /// and writes every other one (plain recording, not a settle): the transaction may then
    /// assume none is recorded and read them only once an insert meets one
    /// ([`Recorded::AssumedNone`]). `false`: they are always read.
    pub replays_only: bool,
}

/// The versions of what usage charging may keep in memory (migration `0015`): the catalog's
/// (models, aliases, catalog prices) and the org's own (its custom prices, budgets and
/// accounts). Each only grows, bumped in the transaction of every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageVersions {
    pub catalog: i64,
    pub org: i64,
}

/// What a usage transaction read, handed to its decision.
#[derive(Debug, Clone)]
pub struct UsageView {
    /// The transaction's instant: its transfers and rows are stamped with it.
    pub now: Timestamp,
    /// The events asked for that are recorded already, by id.
    pub recorded: HashMap<Uuid, UsageRecord>,
    /// Every account asked for (an account with no stripes yet has a zero balance).
    pub balances: HashMap<AccountId, Balance>,
    /// What each budget period asked for has spent so far (0 when nothing yet).
    pub spent: HashMap<(Uuid, Timestamp), u64>,
    /// What the other reservations that hold at `now` hold against each budget period asked
    /// for (0 when nothing).
    pub held: HashMap<(Uuid, Timestamp), u64>,
    /// The reservations asked for that exist, by id.
    pub reservations: HashMap<Uuid, ReservationRecord>,
    /// The org's overdraft allowance.
    pub overdraft: Overdraft,
}

/// What a usage decision writes: one linked chain per charged event, and the events' rows.
#[derive(Debug, Clone, Default)]
pub struct UsageWrite {
    pub chains: Vec<Vec<Transfer>>,
    pub records: Vec<UsageRecord>,
    /// Budget periods' new totals: (budget, period start, spent).
    pub spend: Vec<(Uuid, Timestamp, u64)>,
    /// Thresholds crossed (each recorded once per budget, period and threshold).
    pub alerts: Vec<BudgetAlertRecord>,
    /// Reservations to create.
    pub reservations: Vec<NewReservation>,
    /// Pending reservations to settle or release (each must still be pending).
    pub resolutions: Vec<ReservationResolution>,
    /// µCR advanced on the org's overdraft by the chains (added to what is outstanding).
    pub overdraft_drawn_micro_cr: u64,
}

/// A decision's answer.
#[derive(Debug, Clone)]
pub enum UsageStep {
    Write(Box<UsageWrite>),
    /// Write nothing: the decision refused, or every event was a replay.
    Stop,
}

/// What a usage transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageTxOutcome {
    /// No such org.
    NoOrg,
    /// The decision stopped; nothing was written.
    Stopped,
    /// Everything was written.
    Committed,
    /// The ledger refused a chain: nothing was written. Its answers, chain by chain.
    Refused { results: Vec<Vec<TransferResult>> },
    /// The decision was prepared at older [`UsageVersions`]; it was not run.
    Stale,
    /// The request's API key ([`UsageReads::key`]) is revoked; the decision was not run.
    KeyRevoked,
}

/// The decision of a usage transaction; called again from the start if the transaction is
/// retried.
pub type UsageDecision<'a> = dyn FnMut(&UsageView) -> UsageStep + Send + 'a;

/// What one org's part of a group usage transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageItemOutcome {
    /// No such org.
    NoOrg,
    /// Its decision stopped; nothing of it was written.
    Stopped,
    /// Its writes were committed with the group's.
    Written,
    /// It was prepared at older [`UsageVersions`]; its decision was not run.
    Stale,
    /// Its API key ([`UsageReads::key`]) is revoked; its decision was not run.
    KeyRevoked,
}

/// What a group usage transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageGroupOutcome {
    /// Committed (or rolled back when no part wrote anything): each part's outcome, in order.
    Done(Vec<UsageItemOutcome>),
    /// The ledger refused a chain: nothing of any part was written. The answers of every
    /// chain written, part after part.
    Refused { results: Vec<Vec<TransferResult>> },
}

/// The decision of one part (by its index) of a group usage transaction; called again from
/// the start if the transaction is retried.
pub type UsageGroupDecision<'a> = dyn FnMut(usize, &UsageView) -> UsageStep + Send + 'a;

/// The most parts (orgs) one group usage transaction decides.
pub const USAGE_GROUP_MAX: usize = 128;

/// Recorded usage, for either backend.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Decides and writes an org's charges atomically (see the module's documentation).
    async fn usage_tx(
        &self,
        org: OrgId,
        reads: &UsageReads,
        decide: &mut UsageDecision<'_>,
    ) -> Result<UsageTxOutcome, StoreError>;

    /// Decides and writes the charges of several orgs (each at most once) in one transaction:
    /// their rows locked in id order, everything read at once, each part decided by
    /// `decide(index, its view)`, every chain through the ledger together, one commit. All or
    /// nothing: a chain the ledger refuses refuses the group.
    async fn usage_group_tx(
        &self,
        items: &[(OrgId, UsageReads)],
        decide: &mut UsageGroupDecision<'_>,
    ) -> Result<UsageGroupOutcome, StoreError>;

    /// The catalog's and the org's [`UsageVersions`] now (read before what they version).
    async fn usage_versions(&self, org: OrgId) -> Result<UsageVersions, StoreError>;

    /// An org's overdraft allowance (none for no such org).
    async fn overdraft(&self, org: OrgId) -> Result<Option<Overdraft>, StoreError>;

    /// Sets how far past its wallet an org may spend (audited). None for no such org.
    async fn set_overdraft_limit(
        &self,
        org: OrgId,
        limit_micro_cr: u64,
        audit: &AuditEntry,
    ) -> Result<Option<Overdraft>, StoreError>;

    /// Records that the org repaid `amount_micro_cr` of its overdraft (outside Credex),
    /// idempotently by `id` (audited).
    async fn repay_overdraft(
        &self,
        org: OrgId,
        id: Uuid,
        amount_micro_cr: u64,
        reference: &str,
        audit: &AuditEntry,
    ) -> Result<RepaymentOutcome, StoreError>;

    /// Adds a budget.
    async fn put_budget(&self, budget: &BudgetRecord, audit: &AuditEntry)
        -> Result<(), StoreError>;

    /// An org's budgets (not deleted), oldest first.
    async fn budgets_of(&self, org: OrgId) -> Result<Vec<BudgetRecord>, StoreError>;

    /// Deletes an org's budget: it no longer counts or refuses. False when there is none.
    async fn delete_budget(
        &self,
        org: OrgId,
        id: Uuid,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;

    /// What a budget spent in the period that starts at `period_start`.
    async fn budget_spent(&self, id: Uuid, period_start: Timestamp) -> Result<u64, StoreError>;

    /// What reservations that hold at `now` hold against a budget's period.
    async fn budget_held(
        &self,
        id: Uuid,
        period_start: Timestamp,
        now: Timestamp,
    ) -> Result<u64, StoreError>;

    /// An org's budget alerts, newest first, at most `limit`.
    async fn budget_alerts(
        &self,
        org: OrgId,
        limit: u32,
    ) -> Result<Vec<BudgetAlertRecord>, StoreError>;

    /// Totals of an org's events that pass `filter`, per group, costliest first, at most
    /// `limit` groups ([`USAGE_PAGE_MAX`]).
    async fn usage_totals(
        &self,
        org: OrgId,
        filter: &UsageFilter,
        group: UsageGroup,
        limit: u32,
    ) -> Result<Vec<UsageTotal>, StoreError>;

    /// Deletes the recorded calls of the orgs on `plan` that occurred before `before` (their
    /// charges stay in the ledger: only the per-call history goes). Answers how many.
    async fn purge_usage(
        &self,
        plan: crate::identity::Plan,
        before: Timestamp,
    ) -> Result<u64, StoreError>;

    /// An org's reservation.
    async fn reservation(
        &self,
        org: OrgId,
        id: Uuid,
    ) -> Result<Option<ReservationRecord>, StoreError>;

    /// An org's reservations, newest first (by creation, then id) after the cursor, at most
    /// `limit` ([`USAGE_PAGE_MAX`]).
    async fn reservations_of(
        &self,
        org: OrgId,
        before: Option<(Timestamp, Uuid)>,
        limit: u32,
    ) -> Result<Vec<ReservationRecord>, StoreError>;

    /// An org's events that occurred in `[from, to)`, in (occurred, id) order after the cursor,
    /// at most `limit` ([`USAGE_PAGE_MAX`]).
    async fn usage_events(
        &self,
        org: OrgId,
        from: Timestamp,
        to: Timestamp,
        after: Option<(Timestamp, Uuid)>,
        limit: u32,
    ) -> Result<Vec<UsageRecord>, StoreError>;
}

/// A day in µs since the epoch: the UTC day's start.
pub const DAY_MICROS: i64 = 86_400_000_000;

/// The start of the UTC day of `at` (µs).
pub fn day_start(at: i64) -> i64 {
    at.div_euclid(DAY_MICROS) * DAY_MICROS
}

/// A UTC day start as `YYYY-MM-DD`, the key of the day groups.
pub fn day_key(day: i64) -> String {
    let nanos = i128::from(day) * 1_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(|at| {
            let date = at.date();
            format!(
                "{:04}-{:02}-{:02}",
                date.year(),
                u8::from(date.month()),
                date.day()
            )
        })
        .unwrap_or_default()
}

/// The rollup rows `records` add to, keyed by (org, dimension, day, key), in key order (the
/// order they are written in, so concurrent writers meet rows in the same order).
pub(crate) fn rollup_deltas(
    records: &[UsageRecord],
) -> std::collections::BTreeMap<(Uuid, &'static str, i64, String), UsageTotal> {
    let mut rows = std::collections::BTreeMap::new();
    for record in records {
        let day = day_start(record.occurred_at.as_micros());
        let uuid_text =
            |id: Option<Uuid>| id.map(|id| id.hyphenated().to_string()).unwrap_or_default();
        let keys: [(&'static str, String); 6] = [
            ("day", String::new()),
            ("model", record.model.clone()),
            ("class", record.class.clone()),
            ("user", uuid_text(record.user)),
            ("api_key", uuid_text(record.api_key)),
            ("task", record.task.clone().unwrap_or_default()),
        ];
        let call = UsageTotal::of_call(record);
        for (dimension, key) in keys {
            let sums: &mut UsageTotal = rows
                .entry((record.org.as_uuid(), dimension, day, key))
                .or_default();
            sums.add(&call);
        }
    }
    rows
}

/// Whether a usage transaction reads the calls its events may already be recorded as.
///
/// When every part's reads say [`UsageReads::replays_only`], it first assumes none is
/// ([`Recorded::AssumedNone`]): a new event, by far the common case, then costs no lookup
/// beyond the primary key's own check when its row is inserted. An event that was recorded
/// after all makes that insert fail with a unique violation, which rolls the whole transaction
/// back; it is then run again reading them ([`Recorded::Read`]), and the decision answers the
/// replay. Either way the rows are read or checked under the orgs' locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    AssumedNone,
    Read,
}

/// `items` sorted, each once.
pub(crate) fn distinct<T: Ord>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut items: Vec<T> = items.into_iter().collect();
    items.sort_unstable();
    items.dedup();
    items
}

/// The columns of `usage_events`, in the order every statement names them.
pub(crate) const USAGE_COLUMNS: &str = "org_id, id, model, class, asset, input_tokens, \
     cached_input_tokens, cache_write_tokens, output_tokens, cost_micro_cr, \
     from_acquired, from_alloc, from_wallet_micro_cr, price_source, occurred_at, \
     recorded_at, user_id, api_key_id, task, conversation, metadata, fingerprint, \
     transfer_ids";

/// The columns a rollup row is inserted with, and what a row already there adds.
pub(crate) const ROLLUP_COLUMNS: &str = "org_id, dimension, day, key, events, input_tokens, \
     cached_input_tokens, cache_write_tokens, output_tokens, cost_micro_cr, from_acquired, \
     from_alloc, from_wallet_micro_cr";
pub(crate) const ROLLUP_ON_CONFLICT: &str =
    " ON CONFLICT (org_id, dimension, day, key) DO UPDATE SET \
     events = usage_rollups.events + excluded.events, \
     input_tokens = usage_rollups.input_tokens + excluded.input_tokens, \
     cached_input_tokens = usage_rollups.cached_input_tokens + excluded.cached_input_tokens, \
     cache_write_tokens = usage_rollups.cache_write_tokens + excluded.cache_write_tokens, \
     output_tokens = usage_rollups.output_tokens + excluded.output_tokens, \
     cost_micro_cr = usage_rollups.cost_micro_cr + excluded.cost_micro_cr, \
     from_acquired = usage_rollups.from_acquired + excluded.from_acquired, \
     from_alloc = usage_rollups.from_alloc + excluded.from_alloc, \
     from_wallet_micro_cr = usage_rollups.from_wallet_micro_cr + excluded.from_wallet_micro_cr";

/// One rollup row to add: org, dimension, day, key, events and the stored counts.
pub(crate) type RollupRow = (Uuid, &'static str, i64, String, i64, [i64; 8]);

/// The rollup rows `records` add, in key order, as the database stores their counts.
pub(crate) fn rollup_rows(records: &[UsageRecord]) -> Result<Vec<RollupRow>, StoreError> {
    rollup_deltas(records)
        .into_iter()
        .map(|((org, dimension, day, key), sums)| {
            Ok((
                org,
                dimension,
                day,
                key,
                crate::market::signed(sums.events)?,
                sums.stored_counts()?,
            ))
        })
        .collect()
}

/// Which rollup dimension answers a grouping, when the filter allows rollups at all (only a
/// range: any other filter, or grouping by conversation, needs the calls themselves).
pub(crate) fn rollup_dimension(group: UsageGroup, filter: &UsageFilter) -> Option<&'static str> {
    let only_range = filter.model.is_none()
        && filter.class.is_none()
        && filter.user.is_none()
        && filter.api_key.is_none()
        && filter.task.is_none()
        && filter.conversation.is_none();
    if !only_range {
        return None;
    }
    match group {
        UsageGroup::Model => Some("model"),
        UsageGroup::Class => Some("class"),
        UsageGroup::User => Some("user"),
        UsageGroup::ApiKey => Some("api_key"),
        UsageGroup::Task => Some("task"),
        UsageGroup::Day | UsageGroup::All => Some("day"),
        UsageGroup::Conversation => None,
    }
}

impl UsageTotal {
    /// One call's counts, without a key.
    pub(crate) fn of_call(record: &UsageRecord) -> Self {
        Self {
            key: None,
            events: 1,
            input_tokens: record.input_tokens,
            cached_input_tokens: record.cached_input_tokens,
            cache_write_tokens: record.cache_write_tokens,
            output_tokens: record.output_tokens,
            cost_micro_cr: record.cost_micro_cr,
            from_acquired: record.from_acquired,
            from_alloc: record.from_alloc,
            from_wallet_micro_cr: record.from_wallet_micro_cr,
        }
    }

    /// Adds `other`'s counts to these.
    pub(crate) fn add(&mut self, other: &Self) {
        self.events += other.events;
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.cache_write_tokens += other.cache_write_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_micro_cr += other.cost_micro_cr;
        self.from_acquired += other.from_acquired;
        self.from_alloc += other.from_alloc;
        self.from_wallet_micro_cr += other.from_wallet_micro_cr;
    }

    /// The token and money counts as the database stores them (`BIGINT`), in column order
    /// from `input_tokens` to `from_wallet_micro_cr`; the event count is apart.
    pub(crate) fn stored_counts(&self) -> Result<[i64; 8], StoreError> {
        use crate::market::signed;
        Ok([
            signed(self.input_tokens)?,
            signed(self.cached_input_tokens)?,
            signed(self.cache_write_tokens)?,
            signed(self.output_tokens)?,
            signed(self.cost_micro_cr)?,
            signed(self.from_acquired)?,
            signed(self.from_alloc)?,
            signed(self.from_wallet_micro_cr)?,
        ])
    }
}

/// Totals in the order the API answers them: costliest first, then by key (none first).
pub(crate) fn sort_totals(totals: &mut [UsageTotal]) {
    totals.sort_by(|a, b| {
        b.cost_micro_cr
            .cmp(&a.cost_micro_cr)
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// Expands the shared implementation of [`UsageStore`] for `$store`, with the backend's
/// dialect module `$dialect`.
macro_rules! shared_usage {
    ($store:ident, $db:ty, $dialect:ident) => {
        mod usage_shared {
            use std::collections::HashMap;

            use async_trait::async_trait;
            use credex_ledger::{AccountId, OrgId, Timestamp};
            use sqlx::Row;
            use uuid::Uuid;

            use super::$dialect as dialect;
            use super::$store;
            use crate::market::{signed, transfer_ids, transfer_ids_json, unsigned};
            use crate::sql::{Ids, Mode};
            use crate::identity::{AuditEntry, UserId};
            use crate::usage::{
                UsageFilter, UsageGroup, UsageTotal,
                BudgetAlertRecord, BudgetRecord, NewReservation, ReservationRecord,
                Overdraft, RepaymentOutcome,
                ReservationResolution, ReservationState, UsageDecision, UsageGroupDecision,
                UsageGroupOutcome, UsageItemOutcome, UsageReads, UsageRecord,
                USAGE_GROUP_MAX,
                UsageStep, UsageStore, UsageTxOutcome, UsageVersions, UsageView, INSERT_ROWS_MAX,
                distinct, Recorded,
                USAGE_BATCH_MAX, USAGE_PAGE_MAX,
            };
            use crate::StoreError;

            type Connection = <$db as sqlx::Database>::Connection;
            type DbRow = <$db as sqlx::Database>::Row;

            use crate::usage::USAGE_COLUMNS as COLUMNS;

            fn record(row: &DbRow) -> Result<UsageRecord, StoreError> {
                let count = |column: &str| -> Result<u64, StoreError> {
                    unsigned(row.try_get::<i64, _>(column)?)
                };
                let fingerprint: Vec<u8> = row.try_get("fingerprint")?;
                Ok(UsageRecord {
                    org: crate::market::org_id(row.try_get("org_id")?)?,
                    id: row.try_get("id")?,
                    model: row.try_get("model")?,
                    class: row.try_get("class")?,
                    asset: row.try_get("asset")?,
                    input_tokens: count("input_tokens")?,
                    cached_input_tokens: count("cached_input_tokens")?,
                    cache_write_tokens: count("cache_write_tokens")?,
                    output_tokens: count("output_tokens")?,
                    cost_micro_cr: count("cost_micro_cr")?,
                    from_acquired: count("from_acquired")?,
                    from_alloc: count("from_alloc")?,
                    from_wallet_micro_cr: count("from_wallet_micro_cr")?,
                    price_source: row.try_get("price_source")?,
                    occurred_at: Timestamp::from_micros(row.try_get("occurred_at")?),
                    recorded_at: Timestamp::from_micros(row.try_get("recorded_at")?),
                    user: row.try_get("user_id")?,
                    api_key: row.try_get("api_key_id")?,
                    task: row.try_get("task")?,
                    conversation: row.try_get("conversation")?,
                    metadata: row.try_get("metadata")?,
                    fingerprint: fingerprint
                        .try_into()
                        .map_err(|_| StoreError::corrupt("a usage fingerprint of the wrong length"))?,
                    transfer_ids: transfer_ids(&row.try_get::<String, _>("transfer_ids")?)?,
                })
            }

            /// The events among `ids` recorded by any of `orgs`, by (org, id).
            async fn read_recorded(
                conn: &mut Connection,
                pairs: &[(Uuid, Uuid)],
            ) -> Result<HashMap<(Uuid, Uuid), UsageRecord>, StoreError> {
                if pairs.is_empty() {
                    return Ok(HashMap::new());
                }
                let select = format!("SELECT {COLUMNS} FROM usage_events WHERE ");
                let rows = dialect::fetch_org_pairs(&mut *conn, &select, pairs).await?;
                rows.iter()
                    .map(|row| record(row).map(|record| ((record.org.as_uuid(), record.id), record)))
                    .collect()
            }

            /// The API keys among `keys` that exist and are not revoked.
            async fn live_keys(
                conn: &mut Connection,
                keys: &[Uuid],
            ) -> Result<std::collections::HashSet<Uuid>, StoreError> {
                if keys.is_empty() {
                    return Ok(std::collections::HashSet::new());
                }
                let sql = format!(
                    "SELECT id FROM api_keys WHERE {} AND revoked_at IS NULL",
                    dialect::in_uuids("id")
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(keys))
                    .fetch_all(&mut *conn)
                    .await?;
                rows.iter().map(|row| Ok(row.try_get::<Uuid, _>("id")?)).collect()
            }

            async fn balances(
                conn: &mut Connection,
                ids: &[AccountId],
            ) -> Result<HashMap<AccountId, credex_ledger::Balance>, StoreError> {
                let mut balances: HashMap<AccountId, credex_ledger::Balance> =
                    ids.iter().map(|id| (*id, credex_ledger::Balance::default())).collect();
                if ids.is_empty() {
                    return Ok(balances);
                }
                let uuids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
                let sql = format!(
                    "SELECT account_id, \
                     CAST(COALESCE(SUM(debits_pending), 0) AS BIGINT) AS debits_pending, \
                     CAST(COALESCE(SUM(debits_posted), 0) AS BIGINT) AS debits_posted, \
                     CAST(COALESCE(SUM(credits_pending), 0) AS BIGINT) AS credits_pending, \
                     CAST(COALESCE(SUM(credits_posted), 0) AS BIGINT) AS credits_posted \
                     FROM account_balances WHERE {} GROUP BY account_id",
                    dialect::in_uuids("account_id")
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(&uuids))
                    .fetch_all(&mut *conn)
                    .await?;
                for row in &rows {
                    let id = crate::sql::account_id(row.try_get("account_id")?)?;
                    let balance = crate::sql::balance([
                        row.try_get("debits_pending")?,
                        row.try_get("debits_posted")?,
                        row.try_get("credits_pending")?,
                        row.try_get("credits_posted")?,
                    ])?;
                    balances.insert(id, balance);
                }
                Ok(balances)
            }

            async fn insert_records(
                conn: &mut Connection,
                records: &[UsageRecord],
            ) -> Result<(), StoreError> {
                for chunk in records.chunks(INSERT_ROWS_MAX) {
                    dialect::insert_usage_events(&mut *conn, chunk).await?;
                }
                // Added in key order, so concurrent writers meet the rows in the same order.
                let rows = crate::usage::rollup_rows(records)?;
                for chunk in rows.chunks(ROLLUP_ROWS_MAX) {
                    dialect::add_usage_rollups(&mut *conn, chunk).await?;
                }
                Ok(())
            }

            /// How usage transactions run the ledger: where the backend has concurrent writers,
            /// speculatively (journal rows written before the balance stripes are locked, so
            /// the stripes of the provider's accounts, which every org's charges credit, are
            /// held only for the balance updates and the commit) when they carry at least
            /// [`USAGE_SPECULATE_MIN`] transfers. A missed guess runs again with locks first
            /// (`retrying`).
            const USAGE_MODE: Mode = if dialect::SPECULATE { Mode::Speculative } else { Mode::Locked };

            /// Fewer transfers than this are not worth speculation's extra reads. Measured
            /// (`bench usage`, PostgreSQL): batches of 100 events, 26,141 → 32,928 events/s
            /// speculating; groups of single events, 3,647 → 2,885 events/s when they did too.
            const USAGE_SPECULATE_MIN: usize = 64;

            /// Rollup rows per statement (13 binds each, within SQLite's 32,766).
            const ROLLUP_ROWS_MAX: usize = 1_000;


            const RESERVATION_COLUMNS: &str = "org_id, id, model, class, asset, input_tokens, \
                 cached_input_tokens, cache_write_tokens, output_tokens, cost_micro_cr, \
                 from_acquired, from_alloc, from_wallet_micro_cr, created_at, expires_at, \
                 user_id, api_key_id, task, conversation, fingerprint, transfer_ids, state, \
                 resolved_at, usage_event_id";

            fn reservation_record(row: &DbRow) -> Result<ReservationRecord, StoreError> {
                let count = |column: &str| -> Result<u64, StoreError> {
                    unsigned(row.try_get::<i64, _>(column)?)
                };
                let fingerprint: Vec<u8> = row.try_get("fingerprint")?;
                let state: String = row.try_get("state")?;
                Ok(ReservationRecord {
                    org: crate::market::org_id(row.try_get("org_id")?)?,
                    id: row.try_get("id")?,
                    model: row.try_get("model")?,
                    class: row.try_get("class")?,
                    asset: row.try_get("asset")?,
                    input_tokens: count("input_tokens")?,
                    cached_input_tokens: count("cached_input_tokens")?,
                    cache_write_tokens: count("cache_write_tokens")?,
                    output_tokens: count("output_tokens")?,
                    cost_micro_cr: count("cost_micro_cr")?,
                    from_acquired: count("from_acquired")?,
                    from_alloc: count("from_alloc")?,
                    from_wallet_micro_cr: count("from_wallet_micro_cr")?,
                    created_at: Timestamp::from_micros(row.try_get("created_at")?),
                    expires_at: Timestamp::from_micros(row.try_get("expires_at")?),
                    user: row.try_get("user_id")?,
                    api_key: row.try_get("api_key_id")?,
                    task: row.try_get("task")?,
                    conversation: row.try_get("conversation")?,
                    fingerprint: fingerprint.try_into().map_err(|_| {
                        StoreError::corrupt("a reservation fingerprint of the wrong length")
                    })?,
                    transfer_ids: transfer_ids(&row.try_get::<String, _>("transfer_ids")?)?,
                    state: ReservationState::parse(&state)
                        .ok_or_else(|| StoreError::corrupt("an unknown reservation state"))?,
                    resolved_at: row
                        .try_get::<Option<i64>, _>("resolved_at")?
                        .map(Timestamp::from_micros),
                    usage_event: row.try_get("usage_event_id")?,
                })
            }

            /// The reservations among `ids` of any of `orgs`, by (org, id).
            async fn reservations(
                conn: &mut Connection,
                pairs: &[(Uuid, Uuid)],
            ) -> Result<HashMap<(Uuid, Uuid), ReservationRecord>, StoreError> {
                if pairs.is_empty() {
                    return Ok(HashMap::new());
                }
                let select = format!("SELECT {RESERVATION_COLUMNS} FROM reservations WHERE ");
                let rows = dialect::fetch_org_pairs(&mut *conn, &select, pairs).await?;
                rows.iter()
                    .map(|row| {
                        reservation_record(row)
                            .map(|record| ((record.org.as_uuid(), record.id), record))
                    })
                    .collect()
            }

            /// What the reservations of `orgs` that hold at `now` (but those in `except`, by
            /// (org, id)) hold against each budget period in `keys`.
            async fn held(
                conn: &mut Connection,
                orgs: &[Uuid],
                keys: &[(Uuid, Timestamp)],
                except: &[(Uuid, Uuid)],
                now: Timestamp,
            ) -> Result<HashMap<(Uuid, Timestamp), u64>, StoreError> {
                let mut held: HashMap<(Uuid, Timestamp), u64> =
                    keys.iter().map(|key| (*key, 0)).collect();
                if keys.is_empty() {
                    return Ok(held);
                }
                let sql = format!(
                    "SELECT b.org_id, b.reservation_id, b.budget_id, b.period_start, \
                     b.amount_micro_cr FROM reservations r JOIN reservation_budgets b \
                     ON b.org_id = r.org_id AND b.reservation_id = r.id \
                     WHERE {} AND r.state = 'pending' AND r.expires_at > $2",
                    dialect::in_uuids_at("r.org_id", 1)
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(orgs))
                    .bind(now.as_micros())
                    .fetch_all(&mut *conn)
                    .await?;
                for row in &rows {
                    let reservation: (Uuid, Uuid) =
                        (row.try_get("org_id")?, row.try_get("reservation_id")?);
                    if except.contains(&reservation) {
                        continue;
                    }
                    let key = (
                        row.try_get::<Uuid, _>("budget_id")?,
                        Timestamp::from_micros(row.try_get("period_start")?),
                    );
                    if let Some(total) = held.get_mut(&key) {
                        *total = total.saturating_add(unsigned(row.try_get("amount_micro_cr")?)?);
                    }
                }
                Ok(held)
            }

            async fn write_reservations(
                conn: &mut Connection,
                org: OrgId,
                new: &[NewReservation],
                resolutions: &[ReservationResolution],
                now: Timestamp,
            ) -> Result<(), StoreError> {
                for reservation in new {
                    let r = &reservation.record;
                    let sql = format!(
                        "INSERT INTO reservations ({RESERVATION_COLUMNS}) VALUES ($1, $2, $3, \
                         $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
                         $19, $20, $21, $22, $23, $24)"
                    );
                    sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(r.id)
                        .bind(&r.model)
                        .bind(&r.class)
                        .bind(&r.asset)
                        .bind(signed(r.input_tokens)?)
                        .bind(signed(r.cached_input_tokens)?)
                        .bind(signed(r.cache_write_tokens)?)
                        .bind(signed(r.output_tokens)?)
                        .bind(signed(r.cost_micro_cr)?)
                        .bind(signed(r.from_acquired)?)
                        .bind(signed(r.from_alloc)?)
                        .bind(signed(r.from_wallet_micro_cr)?)
                        .bind(r.created_at.as_micros())
                        .bind(r.expires_at.as_micros())
                        .bind(r.user)
                        .bind(r.api_key)
                        .bind(&r.task)
                        .bind(&r.conversation)
                        .bind(r.fingerprint.to_vec())
                        .bind(transfer_ids_json(&r.transfer_ids))
                        .bind(r.state.as_str())
                        .bind(r.resolved_at.map(Timestamp::as_micros))
                        .bind(r.usage_event)
                        .execute(&mut *conn)
                        .await?;
                    for (budget, period_start, amount) in &reservation.budgets {
                        sqlx::query(
                            "INSERT INTO reservation_budgets (org_id, reservation_id, \
                             budget_id, period_start, amount_micro_cr) \
                             VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(org.as_uuid())
                        .bind(r.id)
                        .bind(*budget)
                        .bind(period_start.as_micros())
                        .bind(signed(*amount)?)
                        .execute(&mut *conn)
                        .await?;
                    }
                }
                for resolution in resolutions {
                    if resolution.state == ReservationState::Pending {
                        return Err(StoreError::corrupt("a reservation resolved to pending"));
                    }
                    let updated = sqlx::query(
                        "UPDATE reservations SET state = $3, resolved_at = $4, \
                         usage_event_id = $5 WHERE org_id = $1 AND id = $2 \
                         AND state = 'pending'",
                    )
                    .bind(org.as_uuid())
                    .bind(resolution.id)
                    .bind(resolution.state.as_str())
                    .bind(now.as_micros())
                    .bind(resolution.usage_event)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if updated != 1 {
                        return Err(StoreError::corrupt(
                            "a usage decision resolved a reservation that is not pending",
                        ));
                    }
                }
                Ok(())
            }

            crate::sql::append_audit_fn!(StoreError);

            fn overdraft_of(row: &DbRow) -> Result<Overdraft, StoreError> {
                Ok(Overdraft {
                    limit_micro_cr: unsigned(row.try_get("overdraft_limit_micro_cr")?)?,
                    used_micro_cr: unsigned(row.try_get("overdraft_used_micro_cr")?)?,
                })
            }

            const BUDGET_COLUMNS: &str = "id, org_id, name, scope_kind, scope_value, period, \
                 time_zone, limit_micro_cr, thresholds, hard, created_at";

            fn budget_record(row: &DbRow) -> Result<BudgetRecord, StoreError> {
                let thresholds: String = row.try_get("thresholds")?;
                Ok(BudgetRecord {
                    id: row.try_get("id")?,
                    org: crate::market::org_id(row.try_get("org_id")?)?,
                    name: row.try_get("name")?,
                    scope_kind: row.try_get("scope_kind")?,
                    scope_value: row.try_get("scope_value")?,
                    period: row.try_get("period")?,
                    time_zone: row.try_get("time_zone")?,
                    limit_micro_cr: unsigned(row.try_get("limit_micro_cr")?)?,
                    thresholds: serde_json::from_str(&thresholds).map_err(StoreError::corrupt)?,
                    hard: row.try_get("hard")?,
                    created_at: Timestamp::from_micros(row.try_get("created_at")?),
                })
            }

            fn alert_record(row: &DbRow) -> Result<BudgetAlertRecord, StoreError> {
                Ok(BudgetAlertRecord {
                    id: row.try_get("id")?,
                    budget: row.try_get("budget_id")?,
                    org: crate::market::org_id(row.try_get("org_id")?)?,
                    period_start: Timestamp::from_micros(row.try_get("period_start")?),
                    threshold: u32::try_from(row.try_get::<i32, _>("threshold")?)
                        .map_err(StoreError::corrupt)?,
                    spent_micro_cr: unsigned(row.try_get("spent_micro_cr")?)?,
                    limit_micro_cr: unsigned(row.try_get("limit_micro_cr")?)?,
                    at: Timestamp::from_micros(row.try_get("at")?),
                })
            }

            async fn spent(
                conn: &mut Connection,
                keys: &[(Uuid, Timestamp)],
            ) -> Result<HashMap<(Uuid, Timestamp), u64>, StoreError> {
                let mut spent: HashMap<(Uuid, Timestamp), u64> =
                    keys.iter().map(|key| (*key, 0)).collect();
                let budgets = distinct(keys.iter().map(|(id, _)| *id));
                if budgets.is_empty() {
                    return Ok(spent);
                }
                let sql = format!(
                    "SELECT budget_id, period_start, spent_micro_cr FROM budget_spend WHERE {}",
                    dialect::in_uuids("budget_id")
                );
                let rows = sqlx::query(&sql)
                    .bind(dialect::uuid_list(&budgets))
                    .fetch_all(&mut *conn)
                    .await?;
                for row in &rows {
                    let key = (
                        row.try_get::<Uuid, _>("budget_id")?,
                        Timestamp::from_micros(row.try_get("period_start")?),
                    );
                    if let Some(total) = spent.get_mut(&key) {
                        *total = unsigned(row.try_get("spent_micro_cr")?)?;
                    }
                }
                Ok(spent)
            }

            async fn write_spend(
                conn: &mut Connection,
                spend: &[(Uuid, Timestamp, u64)],
                alerts: &[BudgetAlertRecord],
            ) -> Result<(), StoreError> {
                for (budget, period_start, total) in spend {
                    sqlx::query(
                        "INSERT INTO budget_spend (budget_id, period_start, spent_micro_cr) \
                         VALUES ($1, $2, $3) ON CONFLICT (budget_id, period_start) \
                         DO UPDATE SET spent_micro_cr = excluded.spent_micro_cr",
                    )
                    .bind(*budget)
                    .bind(period_start.as_micros())
                    .bind(signed(*total)?)
                    .execute(&mut *conn)
                    .await?;
                }
                for alert in alerts {
                    sqlx::query(
                        "INSERT INTO budget_alerts (id, budget_id, org_id, period_start, \
                         threshold, spent_micro_cr, limit_micro_cr, at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (budget_id, period_start, threshold) DO NOTHING",
                    )
                    .bind(alert.id)
                    .bind(alert.budget)
                    .bind(alert.org.as_uuid())
                    .bind(alert.period_start.as_micros())
                    .bind(i32::try_from(alert.threshold).map_err(StoreError::corrupt)?)
                    .bind(signed(alert.spent_micro_cr)?)
                    .bind(signed(alert.limit_micro_cr)?)
                    .bind(alert.at.as_micros())
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            }

            impl $store {
                async fn usage_tx_once(
                    &self,
                    org: OrgId,
                    reads: &UsageReads,
                    decide: &mut UsageDecision<'_>,
                    mode: Mode,
                ) -> Result<UsageTxOutcome, StoreError> {
                    let items = [(org, reads.clone())];
                    let mut one = |_: usize, view: &UsageView| decide(view);
                    Ok(match self.usage_group_once(&items, &mut one, mode).await? {
                        UsageGroupOutcome::Refused { results } => UsageTxOutcome::Refused { results },
                        UsageGroupOutcome::Done(outcomes) => match outcomes.first() {
                            Some(UsageItemOutcome::NoOrg) => UsageTxOutcome::NoOrg,
                        Some(UsageItemOutcome::Stale) => UsageTxOutcome::Stale,
                        Some(UsageItemOutcome::KeyRevoked) => UsageTxOutcome::KeyRevoked,
                            Some(UsageItemOutcome::Written) => UsageTxOutcome::Committed,
                            Some(UsageItemOutcome::Stopped) | None => UsageTxOutcome::Stopped,
                        },
                    })
                }

                /// One try of the group's transaction: assuming no event recorded when every
                /// part allows it, and once more reading them if an insert met one
                /// ([`Recorded`]).
                async fn usage_group_once(
                    &self,
                    items: &[(OrgId, UsageReads)],
                    decide: &mut UsageGroupDecision<'_>,
                    mode: Mode,
                ) -> Result<UsageGroupOutcome, StoreError> {
                    if !items.iter().all(|(_, reads)| reads.replays_only) {
                        return self.usage_group_attempt(items, decide, mode, Recorded::Read).await;
                    }
                    match self.usage_group_attempt(items, decide, mode, Recorded::AssumedNone).await {
                        Err(error) if error.is_unique_violation() => {
                            self.usage_group_attempt(items, decide, mode, Recorded::Read).await
                        }
                        other => other,
                    }
                }

                async fn usage_group_attempt(
                    &self,
                    items: &[(OrgId, UsageReads)],
                    decide: &mut UsageGroupDecision<'_>,
                    mode: Mode,
                    recorded: Recorded,
                ) -> Result<UsageGroupOutcome, StoreError> {
                    let orgs = distinct(items.iter().map(|(org, _)| org.as_uuid()));
                    if orgs.len() != items.len() || items.len() > USAGE_GROUP_MAX {
                        return Err(StoreError::corrupt(
                            "a usage group names an org twice, or too many",
                        ));
                    }
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    // Locked in id order, so groups and lone charges never deadlock. The
                    // versions are read in the same statement (the same snapshot).
                    let sql = format!(
                        "SELECT id, overdraft_limit_micro_cr, overdraft_used_micro_cr, \
                         COALESCE((SELECT v.version FROM usage_versions v \
                           WHERE v.org_id = orgs.id), 0) AS org_version, \
                         COALESCE((SELECT v.version FROM usage_versions v \
                           WHERE v.org_id = $2), 0) AS catalog_version \
                         FROM orgs WHERE {} ORDER BY id{}",
                        dialect::in_uuids_at("id", 1),
                        dialect::FOR_NO_KEY_UPDATE
                    );
                    let rows = sqlx::query(&sql)
                        .bind(dialect::uuid_list(&orgs))
                        .bind(Uuid::nil())
                        .fetch_all(&mut *tx)
                        .await?;
                    let mut overdrafts: HashMap<Uuid, Overdraft> = HashMap::new();
                    let mut versions: HashMap<Uuid, UsageVersions> = HashMap::new();
                    for row in &rows {
                        let id: Uuid = row.try_get("id")?;
                        overdrafts.insert(
                            id,
                            Overdraft {
                                limit_micro_cr: unsigned(row.try_get("overdraft_limit_micro_cr")?)?,
                                used_micro_cr: unsigned(row.try_get("overdraft_used_micro_cr")?)?,
                            },
                        );
                        versions.insert(
                            id,
                            UsageVersions {
                                catalog: row.try_get("catalog_version")?,
                                org: row.try_get("org_version")?,
                            },
                        );
                    }
                    let locked: Vec<Uuid> = overdrafts.keys().copied().collect();
                    let now = self.clock.now();
                    let present: Vec<&(OrgId, UsageReads)> = items
                        .iter()
                        .filter(|(org, _)| locked.contains(&org.as_uuid()))
                        .collect();
                    // What the parts may read, each once, in order: the (org, id) of each
                    // event and reservation they may find recorded, the accounts, the budget
                    // periods and the API keys.
                    let event_pairs = distinct(present.iter().flat_map(|(org, reads)| {
                        reads.events.iter().map(|id| (org.as_uuid(), *id))
                    }));
                    let reservation_pairs = distinct(present.iter().flat_map(|(org, reads)| {
                        reads.reservations.iter().map(|id| (org.as_uuid(), *id))
                    }));
                    let accounts: Vec<AccountId> =
                        distinct(present.iter().flat_map(|(_, reads)| reads.balances.iter().copied()));
                    let keys: Vec<(Uuid, Timestamp)> =
                        distinct(present.iter().flat_map(|(_, reads)| reads.spend.iter().copied()));
                    let keys_used = distinct(present.iter().filter_map(|(_, reads)| reads.key));
                    let live = live_keys(&mut tx, &keys_used).await?;
                    let mut recorded_all = match recorded {
                        Recorded::Read => read_recorded(&mut tx, &event_pairs).await?,
                        Recorded::AssumedNone => HashMap::new(),
                    };
                    let balances_all = balances(&mut tx, &accounts).await?;
                    let spent_all = spent(&mut tx, &keys).await?;
                    let held_all = held(&mut tx, &locked, &keys, &reservation_pairs, now).await?;
                    let mut reservations_all =
                        reservations(&mut tx, &reservation_pairs).await?;
                    let mut outcomes = Vec::with_capacity(items.len());
                    let mut writes = Vec::new();
                    for (index, (org, reads)) in items.iter().enumerate() {
                        if !locked.contains(&org.as_uuid()) {
                            outcomes.push(UsageItemOutcome::NoOrg);
                            continue;
                        }
                        if reads
                            .versions
                            .is_some_and(|expected| versions.get(&org.as_uuid()) != Some(&expected))
                        {
                            outcomes.push(UsageItemOutcome::Stale);
                            continue;
                        }
                        if reads.key.is_some_and(|key| !live.contains(&key)) {
                            outcomes.push(UsageItemOutcome::KeyRevoked);
                            continue;
                        }
                        let pick = |map: &HashMap<(Uuid, Timestamp), u64>| {
                            reads
                                .spend
                                .iter()
                                .map(|key| (*key, map.get(key).copied().unwrap_or(0)))
                                .collect()
                        };
                        let view = UsageView {
                            now,
                            recorded: reads
                                .events
                                .iter()
                                .filter_map(|id| {
                                    recorded_all
                                        .remove(&(org.as_uuid(), *id))
                                        .map(|record| (*id, record))
                                })
                                .collect(),
                            balances: reads
                                .balances
                                .iter()
                                .map(|id| (*id, balances_all.get(id).cloned().unwrap_or_default()))
                                .collect(),
                            spent: pick(&spent_all),
                            held: pick(&held_all),
                            reservations: reads
                                .reservations
                                .iter()
                                .filter_map(|id| {
                                    reservations_all
                                        .remove(&(org.as_uuid(), *id))
                                        .map(|record| (*id, record))
                                })
                                .collect(),
                            overdraft: overdrafts.get(&org.as_uuid()).copied().unwrap_or_default(),
                        };
                        let UsageStep::Write(write) = decide(index, &view) else {
                            outcomes.push(UsageItemOutcome::Stopped);
                            continue;
                        };
                        if write.records.len() > USAGE_BATCH_MAX
                            || write.records.iter().any(|record| record.org != *org)
                            || write.reservations.iter().any(|new| new.record.org != *org)
                        {
                            return Err(StoreError::corrupt(
                                "a usage decision wrote too many events, or another org's",
                            ));
                        }
                        outcomes.push(UsageItemOutcome::Written);
                        writes.push((*org, write));
                    }
                    if writes.is_empty() {
                        tx.rollback().await?;
                        return Ok(UsageGroupOutcome::Done(outcomes));
                    }
                    // The rows first, the ledger last: its balance stripes (a provider's
                    // account is shared by every org) are then locked only for the
                    // ledger's own writes and the commit. A refusal rolls it all back.
                    let records: Vec<UsageRecord> = writes
                        .iter()
                        .flat_map(|(_, write)| write.records.iter().cloned())
                        .collect();
                    insert_records(&mut tx, &records).await?;
                    for (org, write) in &writes {
                        if write.overdraft_drawn_micro_cr > 0 {
                            sqlx::query(
                                "UPDATE orgs SET overdraft_used_micro_cr = \
                                 overdraft_used_micro_cr + $2 WHERE id = $1",
                            )
                            .bind(org.as_uuid())
                            .bind(signed(write.overdraft_drawn_micro_cr)?)
                            .execute(&mut *tx)
                            .await?;
                        }
                        write_spend(&mut tx, &write.spend, &write.alerts).await?;
                        write_reservations(
                            &mut tx,
                            *org,
                            &write.reservations,
                            &write.resolutions,
                            now,
                        )
                        .await?;
                    }
                    let chains: Vec<Vec<credex_ledger::Transfer>> = writes
                        .iter()
                        .flat_map(|(_, write)| write.chains.iter())
                        .filter(|chain| !chain.is_empty())
                        .cloned()
                        .collect();
                    if !chains.is_empty() {
                        let transfers: usize = chains.iter().map(Vec::len).sum();
                        let mode = if mode == Mode::Speculative && transfers < USAGE_SPECULATE_MIN {
                            Mode::Locked
                        } else {
                            mode
                        };
                        // Every chain here is new: a usage chain's ids are derived from its
                        // event's or reservation's id and are only ever committed with that
                        // event's or reservation's row (or its new state), which were read
                        // under the orgs' locks above; a refused chain rolls back everything.
                        let results = self
                            .apply_ids_in(&mut tx, &chains, mode, now, Ids::Fresh)
                            .await?;
                        let accepted = results.iter().flatten().all(|result| match result {
                            Ok(()) => true,
                            Err(error) => error.is_exists(),
                        });
                        if !accepted {
                            tx.rollback().await?;
                            return Ok(UsageGroupOutcome::Refused { results });
                        }
                    }
                    tx.commit().await?;
                    Ok(UsageGroupOutcome::Done(outcomes))
                }
            }

            /// One group's totals from a row of either totals query (the same columns).
            fn usage_total(row: &DbRow, key: Option<String>) -> Result<UsageTotal, StoreError> {
                let count = |column: &str| -> Result<u64, StoreError> {
                    unsigned(row.try_get::<i64, _>(column)?)
                };
                Ok(UsageTotal {
                    key,
                    events: count("events")?,
                    input_tokens: count("input_tokens")?,
                    cached_input_tokens: count("cached_input_tokens")?,
                    cache_write_tokens: count("cache_write_tokens")?,
                    output_tokens: count("output_tokens")?,
                    cost_micro_cr: count("cost_micro_cr")?,
                    from_acquired: count("from_acquired")?,
                    from_alloc: count("from_alloc")?,
                    from_wallet_micro_cr: count("from_wallet_micro_cr")?,
                })
            }

            impl $store {
                /// Totals read from the calls themselves (any filter, any grouping), at most
                /// `limit` groups.
                async fn usage_totals_of_calls(
                    &self,
                    org: OrgId,
                    filter: &UsageFilter,
                    group: UsageGroup,
                    limit: i64,
                ) -> Result<Vec<UsageTotal>, StoreError> {
                    // The grouping column is one of these fixed expressions, never the caller's
                    // text; the day is the UTC day of the call (micros since the epoch).
                    let key = match group {
                        UsageGroup::Model => "model",
                        UsageGroup::Class => "class",
                        UsageGroup::User => dialect::UUID_TEXT_USER,
                        UsageGroup::ApiKey => dialect::UUID_TEXT_API_KEY,
                        UsageGroup::Task => "task",
                        UsageGroup::Conversation => "conversation",
                        UsageGroup::Day => dialect::UTC_DAY_OF_OCCURRED_AT,
                        UsageGroup::All => "'all'",
                    };
                    let sum = |column: &str| {
                        format!("CAST(COALESCE(SUM({column}), 0) AS BIGINT) AS {column}")
                    };
                    let sql = format!(
                        "SELECT {key} AS group_key, COUNT(*) AS events, {}, {}, {}, {}, {}, {}, \
                         {}, {} FROM usage_events WHERE org_id = $1 \
                         AND occurred_at >= $2 AND occurred_at < $3 \
                         AND ($4 IS NULL OR model = $4) AND ($5 IS NULL OR class = $5) \
                         AND ($6 IS NULL OR user_id = $6) AND ($7 IS NULL OR api_key_id = $7) \
                         AND ($8 IS NULL OR task = $8) AND ($9 IS NULL OR conversation = $9) \
                         GROUP BY group_key \
                         ORDER BY cost_micro_cr DESC, MIN(CASE WHEN {key} IS NULL THEN 0 ELSE 1 END), \
                         group_key LIMIT $10",
                        sum("input_tokens"),
                        sum("cached_input_tokens"),
                        sum("cache_write_tokens"),
                        sum("output_tokens"),
                        sum("cost_micro_cr"),
                        sum("from_acquired"),
                        sum("from_alloc"),
                        sum("from_wallet_micro_cr"),
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(filter.from.map_or(i64::MIN, Timestamp::as_micros))
                        .bind(filter.to.map_or(i64::MAX, Timestamp::as_micros))
                        .bind(filter.model.as_deref())
                        .bind(filter.class.as_deref())
                        .bind(filter.user)
                        .bind(filter.api_key)
                        .bind(filter.task.as_deref())
                        .bind(filter.conversation.as_deref())
                        .bind(limit.max(1))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter()
                        .map(|row| usage_total(row, row.try_get("group_key")?))
                        .collect()
                }

                /// Totals of whole UTC days `[first_day, end_day)` from the rollups of
                /// `dimension`, by group (for days, keyed `YYYY-MM-DD`; for all, `all`).
                async fn usage_totals_of_rollups(
                    &self,
                    org: OrgId,
                    dimension: &str,
                    group: UsageGroup,
                    first_day: i64,
                    end_day: i64,
                ) -> Result<Vec<UsageTotal>, StoreError> {
                    let key = match group {
                        UsageGroup::Day => "CAST(day AS TEXT)",
                        UsageGroup::All => "'all'",
                        _ => "key",
                    };
                    let sql = format!(
                        "SELECT {key} AS group_key, \
                         CAST(SUM(events) AS BIGINT) AS events, \
                         CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
                         CAST(SUM(cached_input_tokens) AS BIGINT) AS cached_input_tokens, \
                         CAST(SUM(cache_write_tokens) AS BIGINT) AS cache_write_tokens, \
                         CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, \
                         CAST(SUM(cost_micro_cr) AS BIGINT) AS cost_micro_cr, \
                         CAST(SUM(from_acquired) AS BIGINT) AS from_acquired, \
                         CAST(SUM(from_alloc) AS BIGINT) AS from_alloc, \
                         CAST(SUM(from_wallet_micro_cr) AS BIGINT) AS from_wallet_micro_cr \
                         FROM usage_rollups WHERE org_id = $1 AND dimension = $2 \
                         AND day >= $3 AND day < $4 GROUP BY group_key"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(dimension)
                        .bind(first_day)
                        .bind(end_day)
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter()
                        .map(|row| {
                            let raw: String = row.try_get("group_key")?;
                            let key = match group {
                                UsageGroup::Day => Some(crate::usage::day_key(
                                    raw.parse().map_err(StoreError::corrupt)?,
                                )),
                                _ if raw.is_empty() => None,
                                _ => Some(raw),
                            };
                            usage_total(row, key)
                        })
                        .collect()
                }
            }

            #[async_trait]
            impl UsageStore for $store {
                async fn usage_tx(
                    &self,
                    org: OrgId,
                    reads: &UsageReads,
                    decide: &mut UsageDecision<'_>,
                ) -> Result<UsageTxOutcome, StoreError> {
                    let decide = tokio::sync::Mutex::new(decide);
                    let decide = &decide;
                    self.retrying(USAGE_MODE, |mode| async move {
                        let mut decide = decide.lock().await;
                        self.usage_tx_once(org, reads, &mut **decide, mode).await
                    })
                    .await
                }

                async fn usage_group_tx(
                    &self,
                    items: &[(OrgId, UsageReads)],
                    decide: &mut UsageGroupDecision<'_>,
                ) -> Result<UsageGroupOutcome, StoreError> {
                    let decide = tokio::sync::Mutex::new(decide);
                    let decide = &decide;
                    self.retrying(USAGE_MODE, |mode| async move {
                        let mut decide = decide.lock().await;
                        self.usage_group_once(items, &mut **decide, mode).await
                    })
                    .await
                }

                async fn usage_versions(&self, org: OrgId) -> Result<UsageVersions, StoreError> {
                    let row = sqlx::query(
                        "SELECT COALESCE((SELECT version FROM usage_versions \
                           WHERE org_id = $1), 0) AS org_version, \
                         COALESCE((SELECT version FROM usage_versions \
                           WHERE org_id = $2), 0) AS catalog_version",
                    )
                    .bind(org.as_uuid())
                    .bind(Uuid::nil())
                    .fetch_one(&self.pool)
                    .await?;
                    Ok(UsageVersions {
                        catalog: row.try_get("catalog_version")?,
                        org: row.try_get("org_version")?,
                    })
                }

                async fn overdraft(&self, org: OrgId) -> Result<Option<Overdraft>, StoreError> {
                    let row = sqlx::query(
                        "SELECT overdraft_limit_micro_cr, overdraft_used_micro_cr FROM orgs \
                         WHERE id = $1",
                    )
                    .bind(org.as_uuid())
                    .fetch_optional(&self.pool)
                    .await?;
                    row.map(|row| overdraft_of(&row)).transpose()
                }

                async fn set_overdraft_limit(
                    &self,
                    org: OrgId,
                    limit_micro_cr: u64,
                    audit: &AuditEntry,
                ) -> Result<Option<Overdraft>, StoreError> {
                    self.retrying(Mode::Locked, |_| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let row = sqlx::query(
                            "UPDATE orgs SET overdraft_limit_micro_cr = $2 WHERE id = $1 \
                             RETURNING overdraft_limit_micro_cr, overdraft_used_micro_cr",
                        )
                        .bind(org.as_uuid())
                        .bind(signed(limit_micro_cr)?)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let Some(row) = row else {
                            tx.rollback().await?;
                            return Ok(None);
                        };
                        let overdraft = overdraft_of(&row)?;
                        append_audit(&mut tx, audit).await?;
                        tx.commit().await?;
                        Ok(Some(overdraft))
                    })
                    .await
                }

                async fn repay_overdraft(
                    &self,
                    org: OrgId,
                    id: Uuid,
                    amount_micro_cr: u64,
                    reference: &str,
                    audit: &AuditEntry,
                ) -> Result<RepaymentOutcome, StoreError> {
                    self.retrying(Mode::Locked, |_| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let sql = format!(
                            "SELECT overdraft_limit_micro_cr, overdraft_used_micro_cr FROM orgs \
                             WHERE id = $1{}",
                            dialect::FOR_NO_KEY_UPDATE
                        );
                        let row = sqlx::query(&sql)
                            .bind(org.as_uuid())
                            .fetch_optional(&mut *tx)
                            .await?;
                        let Some(row) = row else {
                            tx.rollback().await?;
                            return Ok(RepaymentOutcome::NoOrg);
                        };
                        let now = overdraft_of(&row)?;
                        let earlier: Option<i64> = sqlx::query_scalar(
                            "SELECT amount_micro_cr FROM overdraft_repayments \
                             WHERE org_id = $1 AND id = $2",
                        )
                        .bind(org.as_uuid())
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some(earlier) = earlier {
                            tx.rollback().await?;
                            return Ok(if unsigned(earlier)? == amount_micro_cr {
                                RepaymentOutcome::Replayed(now)
                            } else {
                                RepaymentOutcome::Conflict
                            });
                        }
                        if amount_micro_cr > now.used_micro_cr {
                            tx.rollback().await?;
                            return Ok(RepaymentOutcome::TooMuch(now));
                        }
                        sqlx::query(
                            "INSERT INTO overdraft_repayments (org_id, id, amount_micro_cr, \
                             reference, at) VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(org.as_uuid())
                        .bind(id)
                        .bind(signed(amount_micro_cr)?)
                        .bind(reference)
                        .bind(audit.at().as_micros())
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(
                            "UPDATE orgs SET overdraft_used_micro_cr = \
                             overdraft_used_micro_cr - $2 WHERE id = $1",
                        )
                        .bind(org.as_uuid())
                        .bind(signed(amount_micro_cr)?)
                        .execute(&mut *tx)
                        .await?;
                        append_audit(&mut tx, audit).await?;
                        tx.commit().await?;
                        Ok(RepaymentOutcome::Repaid(Overdraft {
                            limit_micro_cr: now.limit_micro_cr,
                            used_micro_cr: now.used_micro_cr - amount_micro_cr,
                        }))
                    })
                    .await
                }

                async fn put_budget(
                    &self,
                    budget: &BudgetRecord,
                    audit: &AuditEntry,
                ) -> Result<(), StoreError> {
                    let thresholds =
                        serde_json::to_string(&budget.thresholds).map_err(StoreError::corrupt)?;
                    self.retrying(Mode::Locked, |_| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        sqlx::query(
                            "INSERT INTO budgets (id, org_id, name, scope_kind, scope_value, \
                             period, time_zone, limit_micro_cr, thresholds, hard, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                        )
                        .bind(budget.id)
                        .bind(budget.org.as_uuid())
                        .bind(&budget.name)
                        .bind(&budget.scope_kind)
                        .bind(&budget.scope_value)
                        .bind(&budget.period)
                        .bind(&budget.time_zone)
                        .bind(signed(budget.limit_micro_cr)?)
                        .bind(&thresholds)
                        .bind(budget.hard)
                        .bind(budget.created_at.as_micros())
                        .execute(&mut *tx)
                        .await?;
                        append_audit(&mut tx, audit).await?;
                        tx.commit().await?;
                        Ok(())
                    })
                    .await
                }

                async fn budgets_of(&self, org: OrgId) -> Result<Vec<BudgetRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {BUDGET_COLUMNS} FROM budgets WHERE org_id = $1 \
                         AND deleted_at IS NULL ORDER BY created_at, id"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(budget_record).collect()
                }

                async fn delete_budget(
                    &self,
                    org: OrgId,
                    id: Uuid,
                    audit: &AuditEntry,
                ) -> Result<bool, StoreError> {
                    self.retrying(Mode::Locked, |_| async {
                        let mut tx = dialect::begin_write(&self.pool).await?;
                        let deleted = sqlx::query(
                            "UPDATE budgets SET deleted_at = $3 WHERE id = $1 AND org_id = $2 \
                             AND deleted_at IS NULL",
                        )
                        .bind(id)
                        .bind(org.as_uuid())
                        .bind(audit.at().as_micros())
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

                async fn budget_spent(
                    &self,
                    id: Uuid,
                    period_start: Timestamp,
                ) -> Result<u64, StoreError> {
                    let spent: Option<i64> = sqlx::query_scalar(
                        "SELECT spent_micro_cr FROM budget_spend \
                         WHERE budget_id = $1 AND period_start = $2",
                    )
                    .bind(id)
                    .bind(period_start.as_micros())
                    .fetch_optional(&self.pool)
                    .await?;
                    spent.map_or(Ok(0), unsigned)
                }

                async fn budget_held(
                    &self,
                    id: Uuid,
                    period_start: Timestamp,
                    now: Timestamp,
                ) -> Result<u64, StoreError> {
                    let held: i64 = sqlx::query_scalar(
                        "SELECT CAST(COALESCE(SUM(b.amount_micro_cr), 0) AS BIGINT) \
                         FROM reservation_budgets b JOIN reservations r \
                         ON r.org_id = b.org_id AND r.id = b.reservation_id \
                         WHERE b.budget_id = $1 AND b.period_start = $2 \
                         AND r.state = 'pending' AND r.expires_at > $3",
                    )
                    .bind(id)
                    .bind(period_start.as_micros())
                    .bind(now.as_micros())
                    .fetch_one(&self.pool)
                    .await?;
                    unsigned(held)
                }

                async fn budget_alerts(
                    &self,
                    org: OrgId,
                    limit: u32,
                ) -> Result<Vec<BudgetAlertRecord>, StoreError> {
                    let rows = sqlx::query(
                        "SELECT id, budget_id, org_id, period_start, threshold, spent_micro_cr, \
                         limit_micro_cr, at FROM budget_alerts WHERE org_id = $1 \
                         ORDER BY at DESC, id DESC LIMIT $2",
                    )
                    .bind(org.as_uuid())
                    .bind(i64::from(limit.clamp(1, USAGE_PAGE_MAX)))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter().map(alert_record).collect()
                }

                async fn purge_usage(
                    &self,
                    plan: crate::identity::Plan,
                    before: Timestamp,
                ) -> Result<u64, StoreError> {
                    // Whole UTC days go, calls and rollups together, so the two always agree.
                    let before = crate::usage::day_start(before.as_micros());
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let deleted = sqlx::query(
                        "DELETE FROM usage_events WHERE occurred_at < $2 \
                         AND org_id IN (SELECT id FROM orgs WHERE plan = $1)",
                    )
                    .bind(plan.as_str())
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    sqlx::query(
                        "DELETE FROM usage_rollups WHERE day < $2 \
                         AND org_id IN (SELECT id FROM orgs WHERE plan = $1)",
                    )
                    .bind(plan.as_str())
                    .bind(before)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(deleted)
                }

                async fn usage_totals(
                    &self,
                    org: OrgId,
                    filter: &UsageFilter,
                    group: UsageGroup,
                    limit: u32,
                ) -> Result<Vec<UsageTotal>, StoreError> {
                    let limit = limit.clamp(1, USAGE_PAGE_MAX);
                    let from = filter.from.map_or(i64::MIN, Timestamp::as_micros);
                    let to = filter.to.map_or(i64::MAX, Timestamp::as_micros);
                    // Whole UTC days from the rollups, the partial days at the ends from the
                    // calls: the same totals, without reading every call.
                    let first_day = if from == i64::MIN {
                        i64::MIN
                    } else {
                        crate::usage::day_start(from.saturating_add(crate::usage::DAY_MICROS - 1))
                    };
                    let end_day = if to == i64::MAX {
                        i64::MAX
                    } else {
                        crate::usage::day_start(to)
                    };
                    let dimension = crate::usage::rollup_dimension(group, filter);
                    let (Some(dimension), true) = (dimension, first_day < end_day) else {
                        return self.usage_totals_of_calls(org, filter, group, i64::from(limit)).await;
                    };
                    let mut totals: HashMap<Option<String>, UsageTotal> = HashMap::new();
                    for total in self
                        .usage_totals_of_rollups(org, dimension, group, first_day, end_day)
                        .await?
                    {
                        totals.entry(total.key.clone()).or_default().add(&total);
                    }
                    for (edge_from, edge_to) in [(from, first_day), (end_day, to)] {
                        if edge_from >= edge_to {
                            continue;
                        }
                        let edge = UsageFilter {
                            from: Some(Timestamp::from_micros(edge_from)),
                            to: Some(Timestamp::from_micros(edge_to)),
                            ..UsageFilter::default()
                        };
                        for total in self.usage_totals_of_calls(org, &edge, group, i64::MAX).await? {
                            totals.entry(total.key.clone()).or_default().add(&total);
                        }
                    }
                    let mut totals: Vec<UsageTotal> = totals
                        .into_iter()
                        .map(|(key, mut total)| {
                            total.key = key;
                            total
                        })
                        .collect();
                    crate::usage::sort_totals(&mut totals);
                    totals.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                    Ok(totals)
                }

                async fn reservation(
                    &self,
                    org: OrgId,
                    id: Uuid,
                ) -> Result<Option<ReservationRecord>, StoreError> {
                    let sql = format!(
                        "SELECT {RESERVATION_COLUMNS} FROM reservations \
                         WHERE org_id = $1 AND id = $2"
                    );
                    let row = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(reservation_record).transpose()
                }

                async fn reservations_of(
                    &self,
                    org: OrgId,
                    before: Option<(Timestamp, Uuid)>,
                    limit: u32,
                ) -> Result<Vec<ReservationRecord>, StoreError> {
                    let (before_at, before_id) = match before {
                        Some((at, id)) => (at.as_micros(), id),
                        None => (i64::MAX, Uuid::max()),
                    };
                    let sql = format!(
                        "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE org_id = $1 \
                         AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
                         ORDER BY created_at DESC, id DESC LIMIT $4"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(before_at)
                        .bind(before_id)
                        .bind(i64::from(limit.clamp(1, USAGE_PAGE_MAX)))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(reservation_record).collect()
                }

                async fn usage_events(
                    &self,
                    org: OrgId,
                    from: Timestamp,
                    to: Timestamp,
                    after: Option<(Timestamp, Uuid)>,
                    limit: u32,
                ) -> Result<Vec<UsageRecord>, StoreError> {
                    let (after_at, after_id) = match after {
                        Some((at, id)) => (at.as_micros(), id),
                        None => (i64::MIN, Uuid::nil()),
                    };
                    let sql = format!(
                        "SELECT {COLUMNS} FROM usage_events WHERE org_id = $1 \
                         AND occurred_at >= $2 AND occurred_at < $3 \
                         AND (occurred_at > $4 OR (occurred_at = $4 AND id > $5)) \
                         ORDER BY occurred_at, id LIMIT $6"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .bind(from.as_micros())
                        .bind(to.as_micros())
                        .bind(after_at)
                        .bind(after_id)
                        .bind(i64::from(limit.clamp(1, USAGE_PAGE_MAX)))
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(record).collect()
                }
            }
        }
    };
}

pub(crate) use shared_usage;

pub(crate) use crate::market::INSERT_ROWS_MAX;
