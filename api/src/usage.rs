//! Usage recording: every model call an org reports is priced with the price in force when it
//! happened (the org's custom price first) and charged once, in the spec's order — tokens from
//! `acquired`, then from `alloc` of the model's class for the event's cycle, then µCR from the
//! wallet for the tokens no balance covered, at the model's price — as one linked ledger chain
//! per event (`acquired → spent`, `alloc → spent`, `wallet → spent`, code `spend`).
//!
//! A batch (up to [`USAGE_BATCH_MAX`] events) is all or nothing: it is decided under the org's
//! lock ([`credex_store::UsageStore::usage_tx`]), event after event against the balances the
//! events before it left, and when one event cannot be paid nothing is written and the error
//! names it ([`UsageError::InsufficientFunds`], HTTP 402). An event is identified by the org's
//! own id for it: recorded once, a replay answers the recorded charge; the same id with other
//! values is refused.
//!
//! The wallet's share is the call's cost in proportion to the tokens no balance covered,
//! rounded up to a whole µCR: `ceil(cost × uncovered / tokens)`.

use std::collections::HashMap;
use std::sync::Arc;

use credex_ledger::{
    AccountId, AccountKind, AssetCode, Movement, OrgId, Owner, Timestamp, Transfer, TransferCode,
    TransferError, TransferId,
};
use credex_pricing::{CostError, CrFaceValue, TokenUsage};
use credex_store::{
    BudgetAlertRecord, Ledger, Store, StoreError, UsageReads, UsageRecord, UsageStep,
    UsageTxOutcome, UsageView, UsageWrite, USAGE_BATCH_MAX,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::budgets::Budget;
use crate::catalog::{self, ModelPrices};
use crate::cycles::{derived_id_at, CycleId};
use crate::market::AccountBook;
use crate::problem::ApiError;

mod group;
mod memo;
pub mod reservations;

/// How long each plan keeps its per-call history (the seed's tiers: 7 days on Free, 90 on
/// Teams, unlimited on Enterprise). The ledger keeps every charge whatever the plan.
pub fn history_retention_days(plan: credex_store::Plan) -> Option<u32> {
    match plan {
        credex_store::Plan::Free => Some(7),
        credex_store::Plan::Teams => Some(90),
        credex_store::Plan::Enterprise => None,
    }
}

/// Deletes the per-call history each plan no longer keeps; answers how many calls went.
pub async fn purge_history(store: &dyn Store) -> Result<u64, StoreError> {
    let now = store.clock().now();
    let mut purged = 0;
    for plan in credex_store::Plan::ALL {
        if let Some(days) = history_retention_days(plan) {
            let before = now.plus_micros(-i64::from(days) * 86_400_000_000);
            purged += store.purge_usage(plan, before).await?;
        }
    }
    Ok(purged)
}

/// The longest task or conversation label.
pub const LABEL_MAX: usize = 200;
/// The largest metadata object, as JSON text.
pub const METADATA_MAX: usize = 4_096;
/// How many times a batch is decided again when a balance fell under it (another writer spent
/// it between the read and the ledger's decision).
const REFUSED_RETRIES: u32 = 3;
/// How many times a request is prepared again from fresh reads when what it was prepared from
/// changed before its decision (see `memo`).
const STALE_RETRIES: u32 = 3;

/// One model call, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// The org's own id for the event: the same id is recorded once.
    pub id: Uuid,
    /// A model id or alias.
    pub model: String,
    pub tokens: TokenUsage,
    /// When the call happened: it is priced at this instant, and charged to this cycle.
    pub at: Timestamp,
    /// Whether the caller named `at` (else it is the server's clock on arrival, which a
    /// replay of the same event cannot repeat, so it is left out of the fingerprint).
    pub at_given: bool,
    pub user: Option<Uuid>,
    pub api_key: Option<Uuid>,
    pub task: Option<String>,
    pub conversation: Option<String>,
    /// A JSON object, at most [`METADATA_MAX`] bytes.
    pub metadata: Option<String>,
}

impl UsageEvent {
    /// SHA-256 of the event: what a replay must match.
    fn fingerprint(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        let mut part = |bytes: &[u8]| {
            hash.update(u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
            hash.update(bytes);
        };
        part(self.id.as_bytes());
        part(self.model.as_bytes());
        for count in [
            self.tokens.input(),
            self.tokens.cached_input(),
            self.tokens.cache_write(),
            self.tokens.output(),
        ] {
            part(&count.to_be_bytes());
        }
        if self.at_given {
            part(&self.at.as_micros().to_be_bytes());
        } else {
            part(&[]);
        }
        let optional = |value: Option<&[u8]>| value.map(<[u8]>::to_vec).unwrap_or_default();
        part(&optional(
            self.user.as_ref().map(|id| id.as_bytes().as_slice()),
        ));
        part(&optional(
            self.api_key.as_ref().map(|id| id.as_bytes().as_slice()),
        ));
        part(&optional(self.task.as_deref().map(str::as_bytes)));
        part(&optional(self.conversation.as_deref().map(str::as_bytes)));
        part(&optional(self.metadata.as_deref().map(str::as_bytes)));
        hash.finalize().into()
    }

    fn total_tokens(&self) -> u64 {
        self.tokens
            .prompt_tokens()
            .saturating_add(self.tokens.output())
    }
}

/// An event as recorded; `replayed` when it had been recorded before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedUsage {
    pub record: UsageRecord,
    pub replayed: bool,
}

/// Why a batch was not recorded. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("a batch carries 1 to {max} events, this one {got}")]
    BatchSize { max: usize, got: usize },
    #[error("event {index}: an event id must not be the nil or max UUID")]
    InvalidId { index: usize },
    #[error("event {index}: id {id} appears earlier in the batch")]
    Duplicate { index: usize, id: Uuid },
    #[error("event {index}: {what}")]
    Invalid { index: usize, what: String },
    #[error("event {index}: {error}")]
    Price { index: usize, error: ApiError },
    #[error("event {index}: the call costs more than one charge can carry")]
    TooCostly { index: usize },
    #[error("event {index}: id {id} was recorded before with other values")]
    Conflict { index: usize, id: Uuid },
    #[error(
        "event {index} ({id}) cannot be paid: it needs {needed_micro_cr} µCR from the wallet \
         after the token balances, and {available_micro_cr} µCR are available"
    )]
    InsufficientFunds {
        index: usize,
        id: Uuid,
        needed_micro_cr: u64,
        available_micro_cr: u64,
    },
    #[error(
        "event {index} ({id}) would take the hard budget {name:?} ({budget}) to \
         {would_spend_micro_cr} µCR, past its limit of {limit_micro_cr} µCR this period"
    )]
    BudgetExceeded {
        index: usize,
        id: Uuid,
        budget: Uuid,
        name: String,
        limit_micro_cr: u64,
        would_spend_micro_cr: u64,
    },
    #[error("no reservation {id}")]
    NoReservation { id: Uuid },
    #[error("reservation {id} is {state}: it holds nothing any more")]
    ReservationClosed { id: Uuid, state: &'static str },
    #[error("reservation {id} is for another call: {what}")]
    ReservationMismatch { id: Uuid, what: String },
    #[error("no such org")]
    NoOrg,
    /// The request's API key was revoked before its charge was decided.
    #[error("the API key is not valid")]
    KeyRevoked,
    /// The prices, budgets or accounts the charge was prepared from changed before it was
    /// decided (see `memo`); the service prepares it again, [`STALE_RETRIES`] times.
    #[error("prices, budgets or accounts kept changing while the charge was decided; try again")]
    Stale,
    #[error("the ledger refused a charge: {0:?}")]
    Ledger(TransferError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn corrupt(what: impl std::fmt::Display) -> UsageError {
    UsageError::Store(StoreError::Corrupt(what.to_string()))
}

/// The accounts one event may draw on.
#[derive(Debug, Clone, Copy)]
struct EventAccounts {
    /// The org's `acquired` and `alloc` of the event's token asset, when they exist.
    acquired: Option<AccountId>,
    alloc: Option<AccountId>,
    /// The provider's `spent` of the token asset (only with a token account).
    token_spent: Option<AccountId>,
    wallet: Option<AccountId>,
    credit_spent: AccountId,
    /// The provider's CR `issuance`: where overdraft advances come from.
    credit_issuance: AccountId,
}

/// One event, priced, with its accounts and the budget periods it counts in.
#[derive(Debug, Clone)]
struct Priced {
    /// (index into the batch's budgets, the period's start).
    budgets: Vec<(usize, Timestamp)>,
    event: UsageEvent,
    fingerprint: [u8; 32],
    model: String,
    class: String,
    asset: AssetCode,
    cost_micro_cr: u64,
    source: &'static str,
    accounts: EventAccounts,
}

impl Priced {
    /// The event as recorded at `now`, charged by the transfers `transfer_ids`, which took
    /// `[acquired tokens, alloc tokens, wallet µCR]` for it.
    fn record(
        &self,
        org: OrgId,
        now: Timestamp,
        took: [u64; 3],
        transfer_ids: Vec<TransferId>,
    ) -> UsageRecord {
        let [from_acquired, from_alloc, from_wallet_micro_cr] = took;
        let tokens = &self.event.tokens;
        UsageRecord {
            org,
            id: self.event.id,
            model: self.model.clone(),
            class: self.class.clone(),
            asset: self.asset.to_string(),
            input_tokens: tokens.input(),
            cached_input_tokens: tokens.cached_input(),
            cache_write_tokens: tokens.cache_write(),
            output_tokens: tokens.output(),
            cost_micro_cr: self.cost_micro_cr,
            from_acquired,
            from_alloc,
            from_wallet_micro_cr,
            price_source: self.source.to_owned(),
            occurred_at: self.event.at,
            recorded_at: now,
            user: self.event.user,
            api_key: self.event.api_key,
            task: self.event.task.clone(),
            conversation: self.event.conversation.clone(),
            metadata: self.event.metadata.clone(),
            fingerprint: self.fingerprint,
            transfer_ids,
        }
    }
}

/// What this process recorded since it started, for `/metrics`: per model class, calls and
/// tokens and cost charged; refusals by reason; budget thresholds crossed.
#[derive(Debug, Default, Clone)]
pub struct UsageCounts {
    /// By class: (calls, [input, cached input, cache write, output] tokens, µCR).
    pub by_class: std::collections::BTreeMap<String, (u64, [u64; 4], u64)>,
    /// By reason (`insufficient_funds`, `budget_exceeded`, `conflict`, `invalid`,
    /// `unauthenticated`, `error`).
    pub refused: std::collections::BTreeMap<&'static str, u64>,
    pub budget_alerts: u64,
}

impl UsageCounts {
    /// Sets the usage counters of `metrics` (labels of bounded cardinality: classes are an
    /// admin's short list, reasons and token kinds fixed).
    pub fn render(&self, metrics: &crate::metrics::Metrics) {
        for (class, (calls, tokens, micro_cr)) in &self.by_class {
            metrics.set_counter(
                "credex_usage_events_total",
                "Model calls charged, by model class.",
                &[("class", class)],
                *calls,
            );
            let kinds = ["input", "cached_input", "cache_write", "output"];
            for (kind, count) in kinds.iter().zip(tokens) {
                metrics.set_counter(
                    "credex_usage_tokens_total",
                    "Tokens of model calls charged, by model class and kind.",
                    &[("class", class), ("kind", kind)],
                    *count,
                );
            }
            metrics.set_counter(
                "credex_usage_cost_micro_cr_total",
                "The cost of model calls charged at the model's price, µCR, by model class.",
                &[("class", class)],
                *micro_cr,
            );
        }
        for (reason, count) in &self.refused {
            metrics.set_counter(
                "credex_usage_refused_total",
                "Usage batches refused, by reason.",
                &[("reason", reason)],
                *count,
            );
        }
        metrics.set_counter(
            "credex_budget_alerts_total",
            "Budget thresholds crossed.",
            &[],
            self.budget_alerts,
        );
    }
}

/// The usage service.
#[derive(Debug)]
pub struct Usage {
    ledger: Arc<Ledger>,
    face: CrFaceValue,
    accounts: AccountBook,
    counts: std::sync::Mutex<UsageCounts>,
    groups: group::Groups,
    memos: memo::Memos,
}

impl Usage {
    pub fn new(ledger: Arc<Ledger>, face: CrFaceValue) -> Self {
        Self {
            ledger,
            face,
            accounts: AccountBook::default(),
            counts: std::sync::Mutex::default(),
            memos: memo::Memos::default(),
            groups: group::Groups::default(),
        }
    }

    /// What this process recorded since it started.
    pub fn counters(&self) -> UsageCounts {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Counts a batch's outcome.
    fn count(&self, outcome: Result<&[RecordedUsage], &UsageError>, alerts: u64) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match outcome {
            Ok(recorded) => {
                for usage in recorded.iter().filter(|usage| !usage.replayed) {
                    let record = &usage.record;
                    if !counts.by_class.contains_key(&record.class)
                        && counts.by_class.len() >= 1_000
                    {
                        continue;
                    }
                    let entry = counts.by_class.entry(record.class.clone()).or_default();
                    entry.0 += 1;
                    let tokens = [
                        record.input_tokens,
                        record.cached_input_tokens,
                        record.cache_write_tokens,
                        record.output_tokens,
                    ];
                    for (total, count) in entry.1.iter_mut().zip(tokens) {
                        *total = total.saturating_add(count);
                    }
                    entry.2 = entry.2.saturating_add(record.cost_micro_cr);
                }
                counts.budget_alerts = counts.budget_alerts.saturating_add(alerts);
            }
            Err(error) => {
                let reason = match error {
                    UsageError::InsufficientFunds { .. } | UsageError::TooCostly { .. } => {
                        "insufficient_funds"
                    }
                    UsageError::BudgetExceeded { .. } => "budget_exceeded",
                    UsageError::Conflict { .. } | UsageError::Ledger(_) => "conflict",
                    UsageError::Store(_) | UsageError::Stale => "error",
                    UsageError::KeyRevoked => "unauthenticated",
                    _ => "invalid",
                };
                *counts.refused.entry(reason).or_default() += 1;
            }
        }
    }

    fn store(&self) -> &dyn Store {
        self.ledger.store().as_ref()
    }

    /// Records a batch of events for `org`: all of them, charged, or none (see the module).
    pub async fn record(
        &self,
        org: OrgId,
        events: Vec<UsageEvent>,
    ) -> Result<Vec<RecordedUsage>, UsageError> {
        self.record_as(org, None, events).await
    }

    /// [`Usage::record`] for a request made with API key `key` (when `Some`), refused
    /// ([`UsageError::KeyRevoked`]) if the key is revoked by the charge's transaction.
    pub async fn record_as(
        &self,
        org: OrgId,
        key: Option<Uuid>,
        events: Vec<UsageEvent>,
    ) -> Result<Vec<RecordedUsage>, UsageError> {
        let mut alerts = 0;
        let mut fresh = false;
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            match self
                .record_batch(org, key, events.clone(), fresh, &mut alerts)
                .await
            {
                Err(UsageError::Stale) if tries <= STALE_RETRIES => fresh = true,
                outcome => break outcome,
            }
        };
        self.count(outcome.as_deref(), alerts);
        outcome
    }

    async fn record_batch(
        &self,
        org: OrgId,
        key: Option<Uuid>,
        events: Vec<UsageEvent>,
        fresh: bool,
        alerts: &mut u64,
    ) -> Result<Vec<RecordedUsage>, UsageError> {
        check_batch(&events)?;
        let memo = self.memos.of(self.store(), org, fresh).await?;
        // The org's budgets and the events' prices are read side by side (when not in memory).
        let (budgets, priced) =
            tokio::join!(self.budgets(&memo, org), self.price(&memo, org, events));
        let (budgets, mut priced) = (budgets?, priced?);
        count_in(&budgets, &mut priced);
        let ids = priced.iter().map(|p| p.event.id).collect();
        let reads = UsageReads {
            // A recorded event is only answered as a replay here; every other one is written.
            replays_only: true,
            ..reads_for(&memo, key, &priced, &budgets, ids, Vec::new())
        };
        let prepared = group::Prepared {
            org,
            priced,
            budgets,
            reads,
        };
        let (recorded, crossed) = self.groups.submit(&self.ledger, prepared).await?;
        *alerts = crossed;
        Ok(recorded)
    }

    /// The org's budgets, parsed (from its memo when there).
    async fn budgets(
        &self,
        memo: &memo::OrgMemo,
        org: OrgId,
    ) -> Result<Arc<Vec<Budget>>, UsageError> {
        if let Some(budgets) = memo.budgets() {
            return Ok(budgets);
        }
        let budgets = Arc::new(
            self.store()
                .budgets_of(org)
                .await?
                .iter()
                .map(Budget::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(corrupt)?,
        );
        memo.keep_budgets(Arc::clone(&budgets));
        Ok(budgets)
    }

    /// How this process's small usage requests were committed, since it started.
    pub fn group_stats(&self) -> group::GroupStats {
        self.groups.stats()
    }

    /// Runs a decision under the org's lock (see [`run`]).
    async fn run<T: Send>(
        &self,
        org: OrgId,
        reads: &UsageReads,
        decide: impl FnMut(&UsageView) -> Result<(Option<UsageWrite>, T), UsageError> + Send,
    ) -> Result<T, UsageError> {
        run(self.store(), org, reads, decide).await
    }

    /// Prices every event at its instant (each model's schedules read once per batch) and
    /// finds the accounts it may draw on.
    async fn price(
        &self,
        memo: &memo::OrgMemo,
        org: OrgId,
        events: Vec<UsageEvent>,
    ) -> Result<Vec<Priced>, UsageError> {
        let mut models: HashMap<String, Arc<ModelPrices>> = HashMap::new();
        let mut token_accounts: HashMap<AssetCode, EventAccounts> = HashMap::new();
        let credit = AssetCode::credit();
        let wallet = self.find(memo, &credit, org, AccountKind::Wallet).await?;
        let credit_spent = self
            .accounts
            .get(&self.ledger, &credit, Owner::Provider, AccountKind::Spent)
            .await?;
        let credit_issuance = self
            .accounts
            .get(
                &self.ledger,
                &credit,
                Owner::Provider,
                AccountKind::Issuance,
            )
            .await?;
        let credit_accounts = (credit_spent, credit_issuance);
        let mut priced = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            let prices = match models.get(&event.model) {
                Some(prices) => prices,
                None => {
                    let prices = match memo.prices(&event.model) {
                        Some(prices) => prices,
                        None => {
                            let prices = Arc::new(
                                catalog::model_prices(self.store(), Some(org), &event.model)
                                    .await
                                    .map_err(|error| UsageError::Price { index, error })?,
                            );
                            memo.keep_prices(&event.model, Arc::clone(&prices));
                            prices
                        }
                    };
                    models.entry(event.model.clone()).or_insert(prices)
                }
            };
            let resolved = prices
                .at(event.at)
                .map_err(|error| UsageError::Price { index, error })?;
            let cost_micro_cr = credex_pricing::charge(&resolved.price, &event.tokens, self.face)
                .map_err(|error| match error {
                    CostError::ChargeTooLarge => UsageError::TooCostly { index },
                    other => corrupt(other),
                })?
                .micro_cr;
            let class = resolved.class.to_string();
            let asset = CycleId::of(event.at).asset(&class).map_err(corrupt)?;
            let accounts = match token_accounts.get(&asset) {
                Some(accounts) => *accounts,
                None => {
                    let accounts = self
                        .event_accounts(memo, org, &asset, wallet, credit_accounts)
                        .await?;
                    token_accounts.insert(asset.clone(), accounts);
                    accounts
                }
            };
            priced.push(Priced {
                budgets: Vec::new(),
                fingerprint: event.fingerprint(),
                model: resolved.model.id.clone(),
                class,
                asset,
                cost_micro_cr,
                source: crate::routes::models::price_source_name(resolved.source),
                accounts,
                event,
            });
        }
        Ok(priced)
    }

    /// The org's account if it exists: found ones are remembered for good, missing ones in
    /// the org's memo (checked by version in the charge's transaction).
    async fn find(
        &self,
        memo: &memo::OrgMemo,
        asset: &AssetCode,
        org: OrgId,
        kind: AccountKind,
    ) -> Result<Option<AccountId>, UsageError> {
        if memo.is_absent(asset, kind) {
            return Ok(None);
        }
        let found = self
            .accounts
            .find(&self.ledger, asset, Owner::Org(org), kind)
            .await?;
        if found.is_none() {
            memo.keep_absent(asset, kind);
        }
        Ok(found)
    }

    async fn event_accounts(
        &self,
        memo: &memo::OrgMemo,
        org: OrgId,
        asset: &AssetCode,
        wallet: Option<AccountId>,
        (credit_spent, credit_issuance): (AccountId, AccountId),
    ) -> Result<EventAccounts, UsageError> {
        let acquired = self.find(memo, asset, org, AccountKind::Acquired).await?;
        let alloc = self.find(memo, asset, org, AccountKind::Alloc).await?;
        let token_spent = if acquired.is_some() || alloc.is_some() {
            Some(
                self.accounts
                    .get(&self.ledger, asset, Owner::Provider, AccountKind::Spent)
                    .await?,
            )
        } else {
            None
        };
        Ok(EventAccounts {
            acquired,
            alloc,
            token_spent,
            wallet,
            credit_spent,
            credit_issuance,
        })
    }
}

fn check_batch(events: &[UsageEvent]) -> Result<(), UsageError> {
    if events.is_empty() || events.len() > USAGE_BATCH_MAX {
        return Err(UsageError::BatchSize {
            max: USAGE_BATCH_MAX,
            got: events.len(),
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        if event.id.is_nil() || event.id.is_max() {
            return Err(UsageError::InvalidId { index });
        }
        if !seen.insert(event.id) {
            return Err(UsageError::Duplicate {
                index,
                id: event.id,
            });
        }
        let label_too_long = [&event.task, &event.conversation]
            .into_iter()
            .flatten()
            .any(|label| label.is_empty() || label.chars().count() > LABEL_MAX);
        if label_too_long {
            return Err(UsageError::Invalid {
                index,
                what: format!("a task or conversation is 1 to {LABEL_MAX} characters"),
            });
        }
        if event
            .metadata
            .as_ref()
            .is_some_and(|m| m.len() > METADATA_MAX)
        {
            return Err(UsageError::Invalid {
                index,
                what: format!("metadata is at most {METADATA_MAX} bytes of JSON"),
            });
        }
    }
    Ok(())
}

/// Where a period's spend is heading: `spent` so far plus the rate of the trailing window
/// (`trailing` µCR over `window_micros`) over the `left_micros` of the period, rounded up.
pub fn forecast(spent: u64, trailing: u64, window_micros: u64, left_micros: u64) -> u64 {
    if window_micros == 0 {
        return spent;
    }
    let ahead =
        (u128::from(trailing) * u128::from(left_micros)).div_ceil(u128::from(window_micros));
    spent.saturating_add(u64::try_from(ahead).unwrap_or(u64::MAX))
}

/// The wallet's share of a call: its cost in proportion to the tokens no balance covered,
/// rounded up.
pub fn wallet_share(cost_micro_cr: u64, tokens: u64, uncovered: u64) -> u64 {
    if uncovered == 0 {
        return 0;
    }
    if tokens == 0 || uncovered >= tokens {
        return cost_micro_cr;
    }
    let numerator = u128::from(cost_micro_cr) * u128::from(uncovered);
    let share = numerator.div_ceil(u128::from(tokens));
    u64::try_from(share).unwrap_or(cost_micro_cr)
}

/// Decides a batch against the balances read under the org's lock.
fn plan(
    org: OrgId,
    view: &UsageView,
    priced: &[Priced],
    budgets: &[Budget],
) -> Result<(UsageWrite, Vec<RecordedUsage>), UsageError> {
    let mut spent = view.spent.clone();
    let mut touched: Vec<(Uuid, Timestamp)> = Vec::new();
    let mut available: HashMap<AccountId, u64> = view
        .balances
        .iter()
        .map(|(id, balance)| (*id, u64::try_from(balance.available()).unwrap_or(0)))
        .collect();
    let mut write = UsageWrite::default();
    let mut answers = Vec::with_capacity(priced.len());
    // µCR advanced on the org's overdraft by the events so far.
    let mut drawn = 0_u64;
    let mut charge = BatchCharge::new(org);
    for (index, p) in priced.iter().enumerate() {
        let id = p.event.id;
        if let Some(record) = view.recorded.get(&id) {
            if record.fingerprint != p.fingerprint {
                return Err(UsageError::Conflict { index, id });
            }
            answers.push(RecordedUsage {
                record: record.clone(),
                replayed: true,
            });
            continue;
        }
        // Budgets first: a hard one refuses the event (and so the batch) before any balance
        // is looked at; every one that applies counts the call's whole cost.
        count_budgets(
            org,
            view,
            p,
            index,
            budgets,
            &mut spent,
            &mut touched,
            &mut write.alerts,
        )?;
        let mut take = |account: Option<AccountId>, wanted: u64| -> u64 {
            let Some(balance) = account.and_then(|id| available.get_mut(&id)) else {
                return 0;
            };
            let taken = wanted.min(*balance);
            *balance -= taken;
            taken
        };
        let tokens = p.event.total_tokens();
        let from_acquired = take(p.accounts.acquired, tokens);
        let from_alloc = take(p.accounts.alloc, tokens - from_acquired);
        let uncovered = tokens - from_acquired - from_alloc;
        let needed = wallet_share(p.cost_micro_cr, tokens, uncovered);
        let in_wallet = take(p.accounts.wallet, needed);
        // What the wallet lacks is advanced on the org's overdraft allowance, if it has one
        // (and a wallet to advance into) and enough of it is left.
        let short = needed - in_wallet;
        let headroom = view.overdraft.headroom().saturating_sub(drawn);
        if short > 0 && (p.accounts.wallet.is_none() || short > headroom) {
            return Err(UsageError::InsufficientFunds {
                index,
                id,
                needed_micro_cr: needed,
                available_micro_cr: in_wallet.saturating_add(headroom),
            });
        }
        drawn += short;
        let from_wallet = needed;
        let transfer_ids = charge.add(p, from_acquired, from_alloc, from_wallet, short)?;
        let record = p.record(
            org,
            view.now,
            [from_acquired, from_alloc, from_wallet],
            transfer_ids,
        );
        write.records.push(record.clone());
        answers.push(RecordedUsage {
            record,
            replayed: false,
        });
    }
    let chain = charge.chain()?;
    if !chain.is_empty() {
        write.chains.push(chain);
    }
    write.spend = touched
        .into_iter()
        .map(|key| (key.0, key.1, spent.get(&key).copied().unwrap_or(0)))
        .collect();
    write.overdraft_drawn_micro_cr = drawn;
    Ok((write, answers))
}

/// Notes on each priced event the budgets that apply to it, with their periods at its instant.
fn count_in(budgets: &[Budget], priced: &mut [Priced]) {
    for p in priced {
        let event = &p.event;
        p.budgets = budgets
            .iter()
            .enumerate()
            .filter(|(_, budget)| budget.applies(event.user, event.api_key, event.task.as_deref()))
            .map(|(index, budget)| (index, budget.period_start(event.at)))
            .collect();
    }
}

/// What deciding `priced` reads under the org's lock: the accounts its events may draw on, the
/// periods of the budgets they count in, the `events` that may be recorded already and the
/// `reservations` that may exist.
fn reads_for(
    memo: &memo::OrgMemo,
    key: Option<Uuid>,
    priced: &[Priced],
    budgets: &[Budget],
    events: Vec<Uuid>,
    reservations: Vec<Uuid>,
) -> UsageReads {
    let mut balances: Vec<AccountId> = priced
        .iter()
        .flat_map(|p| [p.accounts.acquired, p.accounts.alloc, p.accounts.wallet])
        .flatten()
        .collect();
    balances.sort_unstable();
    balances.dedup();
    let mut spend: Vec<(Uuid, Timestamp)> = priced
        .iter()
        .flat_map(|p| p.budgets.iter())
        .map(|(index, start)| (budgets[*index].id(), *start))
        .collect();
    spend.sort_unstable();
    spend.dedup();
    UsageReads {
        events,
        balances,
        spend,
        reservations,
        versions: Some(memo.versions()),
        key,
        replays_only: false,
    }
}

/// Runs a decision under the org's lock ([`credex_store::UsageStore::usage_tx`]) and
/// writes what it answers (nothing for `None`); when the ledger refuses a chain (a balance
/// fell between the read and the write: another writer spent it), decides again from a
/// fresh read, at most [`REFUSED_RETRIES`] more times.
async fn run<T: Send>(
    store: &dyn Store,
    org: OrgId,
    reads: &UsageReads,
    mut decide: impl FnMut(&UsageView) -> Result<(Option<UsageWrite>, T), UsageError> + Send,
) -> Result<T, UsageError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let mut decided: Option<Result<T, UsageError>> = None;
        let outcome = {
            let mut step = |view: &UsageView| match decide(view) {
                Ok((write, answer)) => {
                    decided = Some(Ok(answer));
                    match write {
                        Some(write) => UsageStep::Write(Box::new(write)),
                        None => UsageStep::Stop,
                    }
                }
                Err(error) => {
                    decided = Some(Err(error));
                    UsageStep::Stop
                }
            };
            store.usage_tx(org, reads, &mut step).await?
        };
        match outcome {
            UsageTxOutcome::NoOrg => return Err(UsageError::NoOrg),
            UsageTxOutcome::Stale => return Err(UsageError::Stale),
            UsageTxOutcome::KeyRevoked => return Err(UsageError::KeyRevoked),
            UsageTxOutcome::Stopped | UsageTxOutcome::Committed => {
                return decided.unwrap_or_else(|| Err(corrupt("a usage decision ended undecided")))
            }
            UsageTxOutcome::Refused { results } => {
                if tries > REFUSED_RETRIES {
                    let error = results
                        .iter()
                        .flatten()
                        .find_map(|result| match result {
                            Err(error)
                                if !error.is_exists()
                                    && *error != TransferError::LinkedEventFailed =>
                            {
                                Some(*error)
                            }
                            _ => None,
                        })
                        .unwrap_or(TransferError::LinkedEventFailed);
                    return Err(UsageError::Ledger(error));
                }
                tracing::debug!(
                    tries,
                    "a balance fell under a usage decision; deciding again"
                );
            }
        }
    }
}

/// Counts an event's cost in every budget that applies to it (`spent`, `touched`), refusing it
/// when a hard budget's spend plus what reservations hold against it would pass the limit, and
/// noting every threshold the spend crosses.
#[allow(clippy::too_many_arguments)]
fn count_budgets(
    org: OrgId,
    view: &UsageView,
    p: &Priced,
    index: usize,
    budgets: &[Budget],
    spent: &mut HashMap<(Uuid, Timestamp), u64>,
    touched: &mut Vec<(Uuid, Timestamp)>,
    alerts: &mut Vec<BudgetAlertRecord>,
) -> Result<(), UsageError> {
    let id = p.event.id;
    for (budget_index, start) in &p.budgets {
        let budget = budgets
            .get(*budget_index)
            .ok_or_else(|| corrupt("an event counted in a budget that is not there"))?;
        let key = (budget.id(), *start);
        let before = spent.get(&key).copied().unwrap_or(0);
        let after = before.saturating_add(p.cost_micro_cr);
        let held = view.held.get(&key).copied().unwrap_or(0);
        if budget.is_hard() && after.saturating_add(held) > budget.limit_micro_cr() {
            return Err(UsageError::BudgetExceeded {
                index,
                id,
                budget: budget.id(),
                name: budget.name().to_owned(),
                limit_micro_cr: budget.limit_micro_cr(),
                would_spend_micro_cr: after.saturating_add(held),
            });
        }
        for threshold in budget.crossed(before, after) {
            alerts.push(BudgetAlertRecord {
                id: Uuid::now_v7(),
                budget: budget.id(),
                org,
                period_start: *start,
                threshold,
                spent_micro_cr: after,
                limit_micro_cr: budget.limit_micro_cr(),
                at: view.now,
            });
        }
        spent.insert(key, after);
        if !touched.contains(&key) {
            touched.push(key);
        }
    }
    Ok(())
}

/// An event's movements: each non-zero leg (`acquired`, `alloc`, `wallet`) into `spent`, code
/// `spend`, named.
fn movements(
    p: &Priced,
    from_acquired: u64,
    from_alloc: u64,
    from_wallet: u64,
) -> Result<Vec<(&'static str, Movement)>, UsageError> {
    let credit = AssetCode::credit();
    let legs = [
        (
            "acquired",
            p.accounts.acquired,
            p.accounts.token_spent,
            &p.asset,
            from_acquired,
        ),
        (
            "alloc",
            p.accounts.alloc,
            p.accounts.token_spent,
            &p.asset,
            from_alloc,
        ),
        (
            "wallet",
            p.accounts.wallet,
            Some(p.accounts.credit_spent),
            &credit,
            from_wallet,
        ),
    ];
    let mut out = Vec::new();
    for (leg, debit, credit_account, asset, amount) in legs {
        if amount == 0 {
            continue;
        }
        let (Some(debit), Some(credit_account)) = (debit, credit_account) else {
            return Err(corrupt("a charge from an account that does not exist"));
        };
        let amount = credex_ledger::Amount::new(amount).map_err(corrupt)?;
        let movement = Movement::new(
            debit,
            credit_account,
            asset.clone(),
            amount,
            TransferCode::Spend,
        )
        .map_err(corrupt)?;
        out.push((leg, movement));
    }
    Ok(out)
}

/// Links a chain: every transfer but the last carries the flag, so it commits or fails whole.
fn linked(chain: Vec<Transfer>) -> Vec<Transfer> {
    let last = chain.len().saturating_sub(1);
    chain
        .into_iter()
        .enumerate()
        .map(|(i, transfer)| transfer.with_linked(i < last))
        .collect()
}

/// A batch's charge: its new events' legs summed into one transfer per leg, model and pair of
/// accounts, and the µCR advanced on the org's overdraft into one advance, all in one linked
/// chain (the batch is charged whole or refused whole anyway). Each transfer's id is derived
/// from the first event it charges (for a batch of one event, exactly that event's ids), and its
/// metadata names that event, so a statement attributes it to that event's model; every event
/// records the ids of the transfers its legs went into.
///
/// One transfer per batch instead of one per event: the journal's rows and index entries were
/// half of PostgreSQL's work in recording a batch of 100.
struct BatchCharge {
    org_text: String,
    /// The overdraft advance, when an event needed one.
    advance: Option<Summed>,
    /// The legs in the order first met, each with its leg's name and model.
    legs: Vec<(&'static str, String, Summed)>,
}

/// One transfer of a batch's charge, summed over the events it charges.
struct Summed {
    id: TransferId,
    /// The first event it charges: its metadata names it.
    first: Uuid,
    events: u64,
    debit: AccountId,
    credit: AccountId,
    asset: AssetCode,
    code: TransferCode,
    amount: u64,
}

impl Summed {
    fn add(&mut self, amount: u64) -> Result<TransferId, UsageError> {
        self.amount = self
            .amount
            .checked_add(amount)
            .ok_or_else(|| corrupt("a charge beyond range"))?;
        self.events += 1;
        Ok(self.id)
    }

    fn transfer(self) -> Result<Transfer, UsageError> {
        let amount = credex_ledger::Amount::new(self.amount).map_err(corrupt)?;
        let movement = Movement::new(self.debit, self.credit, self.asset, amount, self.code)
            .map_err(corrupt)?;
        Ok(Transfer::movement(self.id, movement)
            .with_metadata(usage_metadata(self.first, self.events)?))
    }
}

impl BatchCharge {
    fn new(org: OrgId) -> Self {
        Self {
            org_text: org.to_string(),
            advance: None,
            legs: Vec::new(),
        }
    }

    /// Adds one event's legs, and the `advance` µCR its wallet lacks; answers the ids of the
    /// transfers they went into, the advance first.
    fn add(
        &mut self,
        p: &Priced,
        from_acquired: u64,
        from_alloc: u64,
        from_wallet: u64,
        advance: u64,
    ) -> Result<Vec<TransferId>, UsageError> {
        let mut ids = Vec::new();
        if advance > 0 {
            let summed = match &mut self.advance {
                Some(summed) => summed,
                None => {
                    let wallet = p
                        .accounts
                        .wallet
                        .ok_or_else(|| corrupt("an overdraft advance without a wallet"))?;
                    self.advance.insert(Summed {
                        id: usage_transfer_id(&self.org_text, &p.event, "overdraft"),
                        first: p.event.id,
                        events: 0,
                        debit: p.accounts.credit_issuance,
                        credit: wallet,
                        asset: AssetCode::credit(),
                        code: TransferCode::Overdraft,
                        amount: 0,
                    })
                }
            };
            ids.push(summed.add(advance)?);
        }
        for (leg, movement) in movements(p, from_acquired, from_alloc, from_wallet)? {
            let found = self.legs.iter_mut().find(|(name, model, summed)| {
                *name == leg
                    && *model == p.model
                    && summed.debit == movement.debit_account_id()
                    && summed.credit == movement.credit_account_id()
                    && summed.asset == *movement.asset()
            });
            let summed = match found {
                Some((_, _, summed)) => summed,
                None => {
                    self.legs.push((
                        leg,
                        p.model.clone(),
                        Summed {
                            id: usage_transfer_id(&self.org_text, &p.event, leg),
                            first: p.event.id,
                            events: 0,
                            debit: movement.debit_account_id(),
                            credit: movement.credit_account_id(),
                            asset: movement.asset().clone(),
                            code: TransferCode::Spend,
                            amount: 0,
                        },
                    ));
                    let (_, _, summed) = self.legs.last_mut().expect("just pushed");
                    summed
                }
            };
            ids.push(summed.add(movement.amount().get())?);
        }
        Ok(ids)
    }

    /// The batch's linked chain: the advance first (the wallet must hold it before it pays),
    /// then each leg; empty when nothing was charged.
    fn chain(self) -> Result<Vec<Transfer>, UsageError> {
        let mut chain = Vec::with_capacity(self.legs.len() + 1);
        if let Some(advance) = self.advance {
            chain.push(advance.transfer()?);
        }
        for (_, _, summed) in self.legs {
            chain.push(summed.transfer()?);
        }
        Ok(linked(chain))
    }
}

/// The id of an event's transfer for one leg: derived from the org, the event and the leg,
/// and time-ordered by the event's instant (the journal's busiest writer appends its ids).
fn usage_transfer_id(org_text: &str, event: &UsageEvent, leg: &str) -> TransferId {
    derived_id_at(event.at, &["usage", org_text, &event.id.to_string(), leg])
}

/// A usage transfer's metadata: the first event it charges and, when it charges more than one
/// (a batch's summed leg), how many.
fn usage_metadata(event: Uuid, events: u64) -> Result<credex_ledger::Metadata, UsageError> {
    let text = if events > 1 {
        format!(r#"{{"usage_event_id":"{event}","usage_events":{events}}}"#)
    } else {
        format!(r#"{{"usage_event_id":"{event}"}}"#)
    };
    credex_ledger::Metadata::new(text).map_err(corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forecast_extends_the_trailing_rate_over_the_time_left() {
        // 7,000 µCR over 7 days, 3 days left: 3,000 more.
        let day = 86_400_000_000;
        assert_eq!(forecast(10_000, 7_000, 7 * day, 3 * day), 13_000);
        assert_eq!(forecast(10_000, 7_000, 7 * day, 0), 10_000);
        assert_eq!(forecast(5, 1, 3, 1), 6, "rounded up");
        assert_eq!(forecast(5, 9, 0, 1), 5);
    }

    #[test]
    fn the_wallet_pays_the_uncovered_share_rounded_up() {
        assert_eq!(wallet_share(1_000, 100, 0), 0);
        assert_eq!(wallet_share(1_000, 100, 100), 1_000);
        assert_eq!(wallet_share(1_000, 100, 30), 300);
        assert_eq!(wallet_share(1_000, 3, 1), 334);
        assert_eq!(wallet_share(7, 0, 0), 0);
        assert_eq!(wallet_share(u64::MAX, u64::MAX, u64::MAX - 1), u64::MAX - 1);
    }
}
