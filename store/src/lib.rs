//! Credex's storage: the ledger kept in SQLite or PostgreSQL.
//!
//! Architecture invariant: every rule of the ledger is decided by `credex-ledger`'s pure engine;
//! this crate only loads what a batch needs, under locks taken in one fixed order, hands it to
//! the engine, and writes the outcome in the same transaction. The SQL is shared by both
//! backends ([`sql`]); each backend module supplies only its connection setup, its migrator, the
//! few statements whose dialects differ (bulk reads and writes, row locks) and its reading of
//! errors.
//!
//! Lock order, everywhere: a market's row (market writes only, [`market`]), then that market's
//! listing rows, then pending transfers (by id), then assets (shared; advisory locks on
//! PostgreSQL), then balance stripes (by account id and slot). A cycle close takes its asset
//! alone, exclusively. A market write runs its ledger chain inside its own transaction
//! (`apply_in` in [`sql`]), so its rows and its transfers commit or roll back together.

mod audit;
mod beancount;
mod check;
pub mod cycles;
pub mod delivery;
mod group_commit;
pub mod idempotency;
pub mod identity;
mod ledger;
pub mod market;
mod postgres;
pub mod pricing;
pub mod review;
mod sql;
mod sqlite;
pub mod statements;
pub mod usage;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use credex_ledger::{
    Account, AccountError, AccountId, AccountKind, AssetCode, Balance, Clock, EngineError, Owner,
    PendingRecord, Timestamp, Transfer, TransferId, TransferRecord, TransferResult,
};
use serde::Serialize;

pub use audit::{
    AuditReport, BudgetBreach, ChainBreach, FlowBreach, MisplacedAccount, OpenAssetOfClosedCycle,
};
pub use beancount::{export_beancount, ExportSummary};
pub use check::{CheckReport, Discrepancy};
pub use cycles::{Allotment, ClassRecord, CycleError, CycleRecord, CycleStore, Put};
pub use delivery::{
    AlertDispatch, AttemptOutcome, AttemptRecord, DeliveryChannel, DeliveryFilter, DeliveryRecord,
    DeliveryState, DeliveryStore, NewDelivery, ReportBatch, ReportFrequency, ReportSubscription,
    WebhookRecord,
};
pub use group_commit::GroupCommitConfig;
pub use idempotency::{Begin, IdempotencyStore};
pub use identity::{
    ApiKey, ApiKeyId, ApiKeyName, ApiKeyPrefix, AuditAction, AuditCursor, AuditEntry, AuditFilter,
    AuditId, Email, IdentityError, IdentityParseError, IdentityStore, IssuedRefreshToken,
    NewApiKey, Org, OrgFilter, OrgName, PasswordHash, Plan, RefreshTokenId, Role, RotateOutcome,
    Scope, Scopes, TokenFamilyId, TokenHash, User, UserId, VerificationLevel,
};
pub use ledger::Ledger;
pub use market::{
    BuybackRecord, FillFeePayer, FillRecord, ListingChange, ListingRecord, ListingState,
    MarketBatchDecision, MarketBatchOutcome, MarketDecision, MarketReads, MarketRecord, MarketStep,
    MarketStore, MarketTxOutcome, MarketView, MarketWrite, NewListing, OrderRecord, SellUsage,
    SettingsChange,
};
pub use postgres::PostgresStore;
pub use pricing::{
    ImportChange, ImportCounts, ModelFilter, ModelPrices, ModelRecord, ModelSource, PriceRecord,
    PriceScope, PricingError, PricingStore, PutPrice,
};
pub use review::{
    AlertChannel, AlertOutcome, AlertRecord, AlertState, FlagKind, FlagRecord, NewFlag, OpenFlag,
    PairTrades, ReviewStore, SellerFigures,
};
pub use sqlite::SqliteStore;
pub use statements::{
    Attribution, Flow, Side, StatementRows, StatementStore, StatementWindow, WindowBalances,
    STATEMENT_ACCOUNTS_MAX,
};
pub use usage::{
    day_key, day_start, BudgetAlertRecord, BudgetRecord, NewReservation, Overdraft,
    RepaymentOutcome, ReservationRecord, ReservationResolution, ReservationState, UsageDecision,
    UsageFilter, UsageGroup, UsageGroupDecision, UsageGroupOutcome, UsageItemOutcome, UsageReads,
    UsageRecord, UsageStep, UsageStore, UsageTotal, UsageTxOutcome, UsageVersions, UsageView,
    UsageWrite, DAY_MICROS, USAGE_BATCH_MAX, USAGE_GROUP_MAX, USAGE_PAGE_MAX,
};

/// How many stripes a hot (provider) account's balance is split into.
pub const HOT_ACCOUNT_STRIPES: i16 = 16;

/// The most any of the four totals of an org's account may reach: one stripe's range,
/// `(2^63 - 1) / 16` (about 5.8 × 10^17: 576 billion CR in µCR). A transfer that would take a
/// total beyond it is refused with `overflows_debits` or `overflows_credits`.
pub const BALANCE_MAX: u64 = 576_460_752_303_423_487;

/// The same bound for a hot (provider) account: all its stripes together.
pub const HOT_BALANCE_MAX: u64 = 16 * BALANCE_MAX;

/// The most rows one page of history or journal may return.
pub const PAGE_MAX: u32 = 1_000;

/// A connection pool's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    pub size: u32,
    pub idle: u32,
}

/// Which database a store keeps its data in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        })
    }
}

/// What went wrong below the ledger's rules: the request may be retried, nothing was committed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("the ledger engine refused the batch: {0}")]
    Engine(#[from] EngineError),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("a request may carry at most {max} transfers, this one has {got}")]
    BatchTooLarge { max: usize, got: usize },
    #[error("the database stayed busy through {attempts} attempts")]
    Busy { attempts: u32 },
    #[error("the ledger is shutting down")]
    ShuttingDown,
    #[error("the ledger is overloaded: no room in its queue after {waited:?}")]
    Overloaded { waited: std::time::Duration },
    #[error("unsupported database URL (expected sqlite:… or postgres://…)")]
    UnsupportedUrl,
    #[error("the account cannot be created: {0}")]
    Account(#[from] CreateAccountError),
    #[error(transparent)]
    Shared(Arc<StoreError>),
    /// Internal: a speculative batch decided differently under its locks; it is tried again
    /// with locks first and never reaches callers.
    #[error("a speculative batch must be tried again")]
    SpeculationMissed,
}

impl StoreError {
    pub(crate) fn corrupt(what: impl fmt::Display) -> Self {
        Self::Corrupt(what.to_string())
    }

    /// Whether a write met a row already there under a unique key (SQLSTATE 23505 on
    /// PostgreSQL, a primary key or unique constraint on SQLite).
    pub(crate) fn is_unique_violation(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => db.is_unique_violation(),
            _ => false,
        }
    }

    /// Whether the failure is the database's being out of reach or over capacity for now,
    /// not anything about the request or the data: the connection broke or could not be had
    /// (a restart, a failover, a full pool), the server is shutting down or refusing
    /// connections, or cancelled the statement (SQLSTATE classes 08 and 57), or the store
    /// stayed busy or overloaded. Worth trying again later; a commit cut off by a broken
    /// connection may or may not have happened, which idempotent requests make harmless.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(error) => database_unavailable(error),
            Self::Busy { .. } | Self::Overloaded { .. } | Self::ShuttingDown => true,
            Self::Shared(inner) => inner.is_unavailable(),
            Self::Migration(_)
            | Self::Engine(_)
            | Self::Corrupt(_)
            | Self::BatchTooLarge { .. }
            | Self::UnsupportedUrl
            | Self::Account(_)
            | Self::SpeculationMissed => false,
        }
    }
}

/// See [`StoreError::is_unavailable`].
pub fn database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        _ => false,
    }
}

/// Why an account could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateAccountError {
    #[error("the account already exists with identical fields")]
    Exists,
    #[error("an account with this id exists with a different asset")]
    ExistsWithDifferentAsset,
    #[error("an account with this id exists with a different owner")]
    ExistsWithDifferentOwner,
    #[error("an account with this id exists with a different kind")]
    ExistsWithDifferentKind,
    #[error("the owner already has an account of this kind for this asset")]
    DuplicateOwnerKindAsset,
    #[error("the asset does not exist")]
    AssetNotFound,
    #[error(transparent)]
    Invalid(#[from] AccountError),
}

/// An asset and whether its cycle has closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AssetView {
    pub code: AssetCode,
    pub closed_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// An account with its current balance (the sum of its stripes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountView {
    pub account: Account,
    pub balance: Balance,
}

/// A journal entry with its position in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEntry {
    pub seq: i64,
    #[serde(flatten)]
    pub record: TransferRecord,
}

/// Where a page of an account's history starts: after this entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HistoryCursor {
    pub timestamp: Timestamp,
    pub seq: i64,
}

impl JournalEntry {
    pub fn cursor(&self) -> HistoryCursor {
        HistoryCursor {
            timestamp: self.record.timestamp,
            seq: self.seq,
        }
    }
}

/// The outcome of closing a cycle's asset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseOutcome {
    Closed,
    /// Credits have no cycle: only token assets close.
    NotACycle,
    AlreadyClosed,
    NotFound,
}

/// Receives the books, read at one instant: every account first, then the journal in order.
pub trait BooksSink: Send {
    fn account(&mut self, view: &AccountView);
    fn entry(&mut self, entry: &JournalEntry);
}

/// Per-account totals recomputed from the journal alone, for [`CheckReport`].
pub type JournalTotals = BTreeMap<AccountId, Balance>;

/// The ledger's storage, for either backend. Every method is one transaction.
///
/// `commit` is the raw write path: callers normally go through [`Ledger`], which coalesces
/// concurrent requests into few calls (group commit).
#[async_trait]
pub trait Store:
    IdentityStore
    + IdempotencyStore
    + PricingStore
    + CycleStore
    + MarketStore
    + ReviewStore
    + UsageStore
    + DeliveryStore
    + StatementStore
    + Send
    + Sync
    + fmt::Debug
    + 'static
{
    fn backend(&self) -> Backend;

    /// The clock that stamps transfers and decides expiry.
    fn clock(&self) -> &Arc<dyn Clock>;

    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes every connection; the store answers nothing afterwards.
    async fn close(&self);

    /// How many connections the pool holds, and how many of them are idle.
    fn pool_status(&self) -> PoolStatus;

    /// Creates an asset; `Ok(false)` when it existed already.
    async fn create_asset(&self, code: &AssetCode) -> Result<bool, StoreError>;

    /// Closes a token asset's cycle (rule 9). Waits for every transaction touching it.
    async fn close_asset(&self, code: &AssetCode) -> Result<CloseOutcome, StoreError>;

    async fn assets(&self) -> Result<Vec<AssetView>, StoreError>;

    /// Creates accounts; one result per account, in order.
    async fn create_accounts(
        &self,
        accounts: &[Account],
    ) -> Result<Vec<Result<(), CreateAccountError>>, StoreError>;

    /// Applies requests of transfers in one database transaction; one result per transfer.
    async fn commit(
        &self,
        requests: &[Vec<Transfer>],
    ) -> Result<Vec<Vec<TransferResult>>, StoreError>;

    /// Expires up to `limit` pending transfers whose timeout ran out; returns how many.
    async fn expire_pending(&self, limit: u32) -> Result<u32, StoreError>;

    /// Accounts with their current balances, in the order of `ids`; unknown ids are skipped.
    async fn accounts(&self, ids: &[AccountId]) -> Result<Vec<AccountView>, StoreError>;

    async fn find_account(
        &self,
        asset: &AssetCode,
        owner: Owner,
        kind: AccountKind,
    ) -> Result<Option<AccountView>, StoreError>;

    /// Every account of an owner with its current balance, in account-id order.
    async fn accounts_of(&self, owner: Owner) -> Result<Vec<AccountView>, StoreError>;

    /// An account's totals as they stood at `at` (rule 10); `None` for an unknown account.
    async fn balance_as_of(
        &self,
        id: AccountId,
        at: Timestamp,
    ) -> Result<Option<Balance>, StoreError>;

    /// An account's journal entries in time order, after `after`, at most `limit`.
    async fn history(
        &self,
        id: AccountId,
        after: Option<HistoryCursor>,
        limit: u32,
    ) -> Result<Vec<JournalEntry>, StoreError>;

    /// Journal entries with these ids, in journal order.
    async fn transfers(&self, ids: &[TransferId]) -> Result<Vec<JournalEntry>, StoreError>;

    /// Pending transfers with these ids, in id order.
    async fn pendings(&self, ids: &[TransferId]) -> Result<Vec<PendingRecord>, StoreError>;

    /// The journal in order, after position `after_seq`, at most `limit` entries.
    async fn journal(&self, after_seq: i64, limit: u32) -> Result<Vec<JournalEntry>, StoreError>;

    /// Every account and its balance, read at one instant.
    async fn snapshot(&self) -> Result<Vec<AccountView>, StoreError>;

    /// Hands every account with its balance, then every journal entry in journal order, to
    /// `sink`, all read at one instant.
    async fn read_books(&self, sink: &mut dyn BooksSink) -> Result<(), StoreError>;

    /// Recomputes every balance from the journal and compares it with the stored balances,
    /// both read at one instant.
    async fn check(&self) -> Result<CheckReport, StoreError>;

    /// Checks every invariant of the spec over the whole database: the books check, then one
    /// hop, the closed loop, closed cycles, the market's chains and hard budgets.
    async fn audit_invariants(&self) -> Result<AuditReport, StoreError>;
}

/// Opens the store a database URL names, running migrations: `sqlite:` paths (created when
/// missing) or `postgres://` URLs.
pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url, clock).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url, clock).await?))
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

/// The system's clock, in microseconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp::from_micros(micros)
    }
}
