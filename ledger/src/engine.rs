//! The batch engine: applies requests of transfers to an in-memory view of the ledger and says
//! what storage must write. Pure and deterministic: the same input gives the same output.
//!
//! Storage drives it in three steps, inside one database transaction:
//! 1. [`Requirements::of`] names the transfers, pending transfers, accounts and assets the
//!    requests touch; storage loads and locks them, and [`full_balance_accounts`] says which
//!    balances it must read whole (the rest it may update blindly, by delta).
//! 2. [`apply`] decides every transfer's result and the effects of the successful ones.
//! 3. Storage writes the [`BatchOutcome`] and commits.

use std::collections::{BTreeSet, HashMap};

use crate::account::{Account, AccountKind, Balance};
use crate::amount::Amount;
use crate::asset::{AssetCode, AssetState};
use crate::clock::Timestamp;
use crate::error::{TransferError, TransferResult};
use crate::ids::{AccountId, TransferId};
use crate::transfer::{
    Action, Movement, PendingRecord, PendingState, Transfer, TransferCode, TransferKind,
    TransferRecord,
};

/// The most transfers one request may carry.
pub const BATCH_MAX: usize = 8_190;

/// What a set of requests touches, for storage to load before calling [`apply`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// Ids of every transfer in the requests and of every pending transfer they post or void:
    /// storage loads the committed journal entries and recorded failures with these ids.
    pub transfer_ids: BTreeSet<TransferId>,
    /// Pending transfers that the requests post or void: storage loads and locks them.
    pub pending_ids: BTreeSet<TransferId>,
    /// Accounts named by new movements. Storage adds the accounts of the pending transfers.
    pub account_ids: BTreeSet<AccountId>,
}

impl Requirements {
    pub fn of(requests: &[Vec<Transfer>]) -> Self {
        let mut needs = Self::default();
        for transfer in requests.iter().flatten() {
            needs.transfer_ids.insert(transfer.id());
            match transfer.action() {
                Action::Move(movement) | Action::Reserve { movement, .. } => {
                    needs.account_ids.insert(movement.debit_account_id());
                    needs.account_ids.insert(movement.credit_account_id());
                }
                Action::Post { pending_id, .. } | Action::Void { pending_id } => {
                    needs.transfer_ids.insert(*pending_id);
                    needs.pending_ids.insert(*pending_id);
                }
            }
        }
        needs
    }
}

/// The accounts whose whole balance [`apply`] needs: those that new movements debit and that
/// may not go negative. Every other touched account can be updated by delta, without reading
/// it, which is what lets hot provider accounts take many concurrent transactions.
pub fn full_balance_accounts(
    requests: &[Vec<Transfer>],
    kind_of: impl Fn(AccountId) -> Option<AccountKind>,
) -> BTreeSet<AccountId> {
    requests
        .iter()
        .flatten()
        .filter_map(|transfer| match transfer.action() {
            Action::Move(movement) | Action::Reserve { movement, .. } => {
                Some(movement.debit_account_id())
            }
            Action::Post { .. } | Action::Void { .. } => None,
        })
        .filter(|id| kind_of(*id).is_some_and(|kind| !kind.may_go_negative()))
        .collect()
}

/// An account as loaded for a batch: its balance is known when it was read whole.
/// `max_total` bounds each of its four totals: storage's limit for this account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedAccount {
    pub account: Account,
    pub balance: Option<Balance>,
    pub max_total: u64,
}

/// The ledger's state as far as a batch needs it, loaded by storage under locks.
#[derive(Debug, Clone, Default)]
pub struct BatchInput {
    pub now: Timestamp,
    pub assets: HashMap<AssetCode, AssetState>,
    pub accounts: HashMap<AccountId, LoadedAccount>,
    /// Committed journal entries with any id of [`Requirements::transfer_ids`].
    pub committed: HashMap<TransferId, TransferRecord>,
    /// Recorded failures with any id of [`Requirements::transfer_ids`].
    pub failed: HashMap<TransferId, TransferError>,
    /// Pending transfers of [`Requirements::pending_ids`] that exist.
    pub pendings: HashMap<TransferId, PendingRecord>,
}

/// A signed change to an account's four totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalanceDelta {
    pub debits_pending: i128,
    pub debits_posted: i128,
    pub credits_pending: i128,
    pub credits_posted: i128,
}

impl BalanceDelta {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// The balance after this change, if every total stays within `0..=max_total`.
    pub fn applied_to(&self, balance: Balance, max_total: u64) -> Option<Balance> {
        let add = |total: u64, change: i128| -> Option<u64> {
            let sum = i128::from(total) + change;
            u64::try_from(sum).ok().filter(|value| *value <= max_total)
        };
        Some(Balance {
            debits_pending: add(balance.debits_pending, self.debits_pending)?,
            debits_posted: add(balance.debits_posted, self.debits_posted)?,
            credits_pending: add(balance.credits_pending, self.credits_pending)?,
            credits_posted: add(balance.credits_posted, self.credits_posted)?,
        })
    }
}

/// What storage must write for a batch, and what each transfer's result is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// One result per transfer, per request, in order.
    pub results: Vec<Vec<TransferResult>>,
    /// New journal entries, in the order they were accepted.
    pub inserts: Vec<TransferRecord>,
    /// New pending transfers, in their state at the end of the batch.
    pub pending_inserts: Vec<PendingRecord>,
    /// Existing pending transfers that were resolved.
    pub pending_updates: Vec<PendingRecord>,
    /// Transfers that failed against the ledger's state: their ids stay failed.
    pub failures: Vec<(TransferId, TransferError)>,
    /// Non-zero balance changes, by account, sorted by account id.
    pub deltas: Vec<(AccountId, BalanceDelta)>,
}

/// A broken contract between storage and the engine: the batch must abort, never be papered
/// over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("the balance of {0} is needed but was not loaded")]
    BalanceNotLoaded(AccountId),
    #[error("asset {0} of a loaded account was not loaded")]
    AssetNotLoaded(AssetCode),
    #[error("the pending totals of {0} would go negative: the pending transfers loaded disagree with its balance")]
    PendingUnderflow(AccountId),
}

/// Applies requests of transfers in order; see the module documentation.
pub fn apply(input: BatchInput, requests: &[Vec<Transfer>]) -> Result<BatchOutcome, EngineError> {
    let mut engine = Engine::new(input);
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        let mut request_results = vec![Ok(()); request.len()];
        let mut start = 0;
        while start < request.len() {
            let mut end = start;
            while end + 1 < request.len() && request[end].linked() {
                end += 1;
            }
            let open = request[end].linked();
            engine.chain(
                &request[start..=end],
                open,
                &mut request_results[start..=end],
            )?;
            start = end + 1;
        }
        results.push(request_results);
    }
    Ok(engine.finish(results))
}

/// The outcome of expiring pending transfers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiryOutcome {
    pub updates: Vec<PendingRecord>,
    pub deltas: Vec<(AccountId, BalanceDelta)>,
}

/// Expires every given pending transfer whose timeout has run out at `now`: each is resolved
/// as expired at the instant of its timeout, and its amount is released on both accounts.
pub fn expire(pendings: Vec<PendingRecord>, now: Timestamp) -> ExpiryOutcome {
    let mut deltas: HashMap<AccountId, BalanceDelta> = HashMap::new();
    let mut updates = Vec::new();
    for mut pending in pendings {
        if pending.state != PendingState::Pending || !pending.timed_out(now) {
            continue;
        }
        let amount = i128::from(pending.amount.get());
        deltas
            .entry(pending.debit_account_id)
            .or_default()
            .debits_pending -= amount;
        deltas
            .entry(pending.credit_account_id)
            .or_default()
            .credits_pending -= amount;
        pending.state = PendingState::Expired;
        pending.resolved_at = pending.expires_at;
        updates.push(pending);
    }
    updates.sort_by_key(|pending| pending.id);
    ExpiryOutcome {
        updates,
        deltas: sorted_deltas(deltas),
    }
}

fn sorted_deltas(deltas: HashMap<AccountId, BalanceDelta>) -> Vec<(AccountId, BalanceDelta)> {
    let mut deltas: Vec<_> = deltas.into_iter().filter(|(_, d)| !d.is_zero()).collect();
    deltas.sort_by_key(|(id, _)| *id);
    deltas
}

#[derive(Debug)]
struct Slot {
    account: Account,
    base: Option<Balance>,
    max_total: u64,
    delta: BalanceDelta,
}

#[derive(Debug, Clone)]
struct PendingEntry {
    record: PendingRecord,
    new: bool,
    dirty: bool,
}

#[derive(Debug)]
enum Undo {
    Delta(AccountId, BalanceDelta),
    Pending(TransferId, Option<PendingEntry>),
    Created(TransferId),
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    undo: usize,
    inserts: usize,
}

/// A transfer's failure, or a broken engine contract.
#[derive(Debug)]
enum Fail {
    Transfer(TransferError),
    Engine(EngineError),
}

impl From<TransferError> for Fail {
    fn from(error: TransferError) -> Self {
        Self::Transfer(error)
    }
}

impl From<EngineError> for Fail {
    fn from(error: EngineError) -> Self {
        Self::Engine(error)
    }
}

#[derive(Debug)]
struct Engine {
    now: Timestamp,
    assets: HashMap<AssetCode, AssetState>,
    accounts: HashMap<AccountId, Slot>,
    committed: HashMap<TransferId, TransferRecord>,
    failed: HashMap<TransferId, TransferError>,
    pendings: HashMap<TransferId, PendingEntry>,
    created: HashMap<TransferId, TransferRecord>,
    inserts: Vec<TransferRecord>,
    failures: Vec<(TransferId, TransferError)>,
    undo: Vec<Undo>,
}

impl Engine {
    fn new(input: BatchInput) -> Self {
        let accounts = input
            .accounts
            .into_iter()
            .map(|(id, loaded)| {
                let slot = Slot {
                    account: loaded.account,
                    base: loaded.balance,
                    max_total: loaded.max_total,
                    delta: BalanceDelta::default(),
                };
                (id, slot)
            })
            .collect();
        let pendings = input
            .pendings
            .into_iter()
            .map(|(id, record)| {
                let entry = PendingEntry {
                    record,
                    new: false,
                    dirty: false,
                };
                (id, entry)
            })
            .collect();
        Self {
            now: input.now,
            assets: input.assets,
            accounts,
            committed: input.committed,
            failed: input.failed,
            pendings,
            created: HashMap::new(),
            inserts: Vec::new(),
            failures: Vec::new(),
            undo: Vec::new(),
        }
    }

    fn mark(&self) -> Mark {
        Mark {
            undo: self.undo.len(),
            inserts: self.inserts.len(),
        }
    }

    fn rollback(&mut self, mark: Mark) {
        while self.undo.len() > mark.undo {
            match self.undo.pop().expect("undo log is longer than the mark") {
                Undo::Delta(id, delta) => {
                    self.accounts
                        .get_mut(&id)
                        .expect("undone account exists")
                        .delta = delta;
                }
                Undo::Pending(id, Some(entry)) => {
                    self.pendings.insert(id, entry);
                }
                Undo::Pending(id, None) => {
                    self.pendings.remove(&id);
                }
                Undo::Created(id) => {
                    self.created.remove(&id);
                }
            }
        }
        self.inserts.truncate(mark.inserts);
    }

    /// Processes one linked chain (or one unlinked transfer): all of it commits, or none.
    fn chain(
        &mut self,
        transfers: &[Transfer],
        open: bool,
        results: &mut [TransferResult],
    ) -> Result<(), EngineError> {
        let mark = self.mark();
        let mut failed_at = None;
        for (index, transfer) in transfers.iter().enumerate() {
            match self.process(transfer) {
                Ok(()) => results[index] = Ok(()),
                Err(Fail::Transfer(TransferError::Exists)) => {
                    results[index] = Err(TransferError::Exists);
                }
                Err(Fail::Transfer(error)) => {
                    failed_at = Some((index, error));
                    break;
                }
                Err(Fail::Engine(error)) => return Err(error),
            }
        }
        if open && failed_at.is_none() {
            failed_at = Some((transfers.len() - 1, TransferError::LinkedEventChainOpen));
        }
        let exists = results
            .iter()
            .filter(|r| **r == Err(TransferError::Exists))
            .count();
        let mixed_replay = exists > 0 && exists < transfers.len();
        if failed_at.is_none() && !mixed_replay {
            return Ok(());
        }
        self.rollback(mark);
        for result in results.iter_mut() {
            if *result != Err(TransferError::Exists) {
                *result = Err(TransferError::LinkedEventFailed);
            }
        }
        if let Some((index, error)) = failed_at {
            results[index] = Err(error);
            if error.burns_id() {
                let id = transfers[index].id();
                self.failed.insert(id, error);
                self.failures.push((id, error));
            }
        }
        Ok(())
    }

    fn process(&mut self, transfer: &Transfer) -> Result<(), Fail> {
        let id = transfer.id();
        if let Some(record) = self.created.get(&id).or_else(|| self.committed.get(&id)) {
            return Err(self.compare(transfer, record).into());
        }
        if self.failed.contains_key(&id) {
            return Err(TransferError::IdAlreadyFailed.into());
        }
        match transfer.action() {
            Action::Move(movement) => self.movement(transfer, movement, None),
            Action::Reserve {
                movement,
                timeout_seconds,
            } => self.movement(transfer, movement, Some(*timeout_seconds)),
            Action::Post { pending_id, amount } => {
                self.resolve(transfer, *pending_id, Some(*amount))
            }
            Action::Void { pending_id } => self.resolve(transfer, *pending_id, None),
        }
    }

    /// The precise answer to a transfer whose id is taken by a committed one.
    fn compare(&self, transfer: &Transfer, record: &TransferRecord) -> TransferError {
        use TransferError::*;
        let kind = match transfer.action() {
            Action::Move(_) => TransferKind::Single,
            Action::Reserve { .. } => TransferKind::Pending,
            Action::Post { .. } => TransferKind::Post,
            Action::Void { .. } => TransferKind::Void,
        };
        if kind != record.kind {
            return ExistsWithDifferentKind;
        }
        match transfer.action() {
            Action::Move(movement) | Action::Reserve { movement, .. } => {
                if movement.debit_account_id() != record.debit_account_id {
                    return ExistsWithDifferentDebitAccountId;
                }
                if movement.credit_account_id() != record.credit_account_id {
                    return ExistsWithDifferentCreditAccountId;
                }
                if movement.asset() != &record.asset {
                    return ExistsWithDifferentAsset;
                }
                if movement.amount() != record.amount {
                    return ExistsWithDifferentAmount;
                }
                if movement.code() != record.code {
                    return ExistsWithDifferentCode;
                }
            }
            Action::Post { pending_id, .. } | Action::Void { pending_id } => {
                if Some(*pending_id) != record.pending_id {
                    return ExistsWithDifferentPendingId;
                }
            }
        }
        match transfer.action() {
            Action::Reserve {
                timeout_seconds, ..
            } if *timeout_seconds != record.timeout_seconds => return ExistsWithDifferentTimeout,
            Action::Post { pending_id, amount } => {
                let expected =
                    amount.or_else(|| self.pendings.get(pending_id).map(|p| p.record.amount));
                if expected.is_some_and(|amount| amount != record.amount) {
                    return ExistsWithDifferentAmount;
                }
            }
            _ => {}
        }
        if transfer.metadata() != &record.metadata {
            return ExistsWithDifferentMetadata;
        }
        if transfer.linked() != record.linked {
            return ExistsWithDifferentLinked;
        }
        Exists
    }

    /// A new single-phase (`timeout` is `None`) or pending movement.
    fn movement(
        &mut self,
        transfer: &Transfer,
        movement: &Movement,
        timeout: Option<Option<u32>>,
    ) -> Result<(), Fail> {
        let debit_id = movement.debit_account_id();
        let credit_id = movement.credit_account_id();
        let debit = self
            .accounts
            .get(&debit_id)
            .ok_or(TransferError::DebitAccountNotFound)?;
        let credit = self
            .accounts
            .get(&credit_id)
            .ok_or(TransferError::CreditAccountNotFound)?;
        let (debit_kind, credit_kind) = (debit.account.kind(), credit.account.kind());
        if debit.account.asset() != credit.account.asset() {
            return Err(TransferError::AccountsHaveDifferentAssets.into());
        }
        let asset = movement.asset();
        if asset != debit.account.asset() {
            return Err(TransferError::AssetMustMatchAccounts.into());
        }
        self.check_cycle(asset, movement.code())?;
        movement
            .code()
            .flow(asset.class(), debit_kind, credit_kind)?;
        movement.code().owners_rule(
            asset.class(),
            (debit_kind, debit.account.owner().org()),
            (credit_kind, credit.account.owner().org()),
        )?;

        let amount = movement.amount();
        let pending = timeout.is_some();
        if !debit_kind.may_go_negative() {
            let balance = self.current(debit_id)?;
            let debits = u128::from(balance.debits_pending)
                + u128::from(balance.debits_posted)
                + u128::from(amount.get());
            if debits > u128::from(balance.credits_posted) {
                return Err(TransferError::ExceedsCredits.into());
            }
        }
        let (debit_change, credit_change) = movement_deltas(amount, pending);
        self.check_overflow(debit_id, &debit_change, TransferError::OverflowsDebits)?;
        self.check_overflow(credit_id, &credit_change, TransferError::OverflowsCredits)?;
        self.change(debit_id, &debit_change);
        self.change(credit_id, &credit_change);

        let timeout_seconds = timeout.flatten();
        let record = TransferRecord {
            id: transfer.id(),
            kind: if pending {
                TransferKind::Pending
            } else {
                TransferKind::Single
            },
            debit_account_id: debit_id,
            credit_account_id: credit_id,
            asset: asset.clone(),
            amount,
            pending_id: None,
            code: movement.code(),
            timeout_seconds,
            metadata: transfer.metadata().clone(),
            linked: transfer.linked(),
            timestamp: self.now,
        };
        if pending {
            let pending = PendingRecord {
                id: record.id,
                debit_account_id: debit_id,
                credit_account_id: credit_id,
                asset: asset.clone(),
                amount,
                code: movement.code(),
                timestamp: self.now,
                expires_at: timeout_seconds.map(|seconds| self.now.plus_seconds(seconds)),
                state: PendingState::Pending,
                resolved_at: None,
                resolved_by: None,
            };
            self.set_pending(PendingEntry {
                record: pending,
                new: true,
                dirty: true,
            });
        }
        self.record(record);
        Ok(())
    }

    /// Posts (`post` is `Some(amount)`) or voids (`post` is `None`) a pending transfer.
    fn resolve(
        &mut self,
        transfer: &Transfer,
        pending_id: TransferId,
        post: Option<Option<Amount>>,
    ) -> Result<(), Fail> {
        let Some(entry) = self.pendings.get(&pending_id) else {
            let exists =
                self.created.contains_key(&pending_id) || self.committed.contains_key(&pending_id);
            return Err(if exists {
                TransferError::PendingTransferNotPending
            } else {
                TransferError::PendingTransferNotFound
            }
            .into());
        };
        let pending = &entry.record;
        match pending.state {
            PendingState::Posted => return Err(TransferError::PendingTransferAlreadyPosted.into()),
            PendingState::Voided => return Err(TransferError::PendingTransferAlreadyVoided.into()),
            PendingState::Expired => return Err(TransferError::PendingTransferExpired.into()),
            PendingState::Pending if pending.timed_out(self.now) => {
                return Err(TransferError::PendingTransferExpired.into())
            }
            PendingState::Pending => {}
        }
        let released = i128::from(pending.amount.get());
        let (kind, amount, posted) = match post {
            Some(amount) => {
                let amount = amount.unwrap_or(pending.amount);
                if amount > pending.amount {
                    return Err(TransferError::ExceedsPendingTransferAmount.into());
                }
                (TransferKind::Post, amount, i128::from(amount.get()))
            }
            None => (TransferKind::Void, pending.amount, 0),
        };
        if kind == TransferKind::Post {
            self.check_cycle(&pending.asset, pending.code)?;
        }
        let debit_change = BalanceDelta {
            debits_pending: -released,
            debits_posted: posted,
            ..BalanceDelta::default()
        };
        let credit_change = BalanceDelta {
            credits_pending: -released,
            credits_posted: posted,
            ..BalanceDelta::default()
        };
        let (debit_id, credit_id) = (pending.debit_account_id, pending.credit_account_id);
        self.check_overflow(debit_id, &debit_change, TransferError::OverflowsDebits)?;
        self.check_overflow(credit_id, &credit_change, TransferError::OverflowsCredits)?;

        let mut resolved = entry.clone();
        resolved.record.state = if kind == TransferKind::Post {
            PendingState::Posted
        } else {
            PendingState::Voided
        };
        resolved.record.resolved_at = Some(self.now);
        resolved.record.resolved_by = Some(transfer.id());
        resolved.dirty = true;
        let record = TransferRecord {
            id: transfer.id(),
            kind,
            debit_account_id: debit_id,
            credit_account_id: credit_id,
            asset: resolved.record.asset.clone(),
            amount,
            pending_id: Some(pending_id),
            code: resolved.record.code,
            timeout_seconds: None,
            metadata: transfer.metadata().clone(),
            linked: transfer.linked(),
            timestamp: self.now,
        };
        self.change(debit_id, &debit_change);
        self.change(credit_id, &credit_change);
        self.set_pending(resolved);
        self.record(record);
        Ok(())
    }

    /// Rule 9: a closed cycle's asset takes only expiry transfers; tokens expire only then.
    fn check_cycle(&self, asset: &AssetCode, code: TransferCode) -> Result<(), Fail> {
        let state = self
            .assets
            .get(asset)
            .ok_or_else(|| EngineError::AssetNotLoaded(asset.clone()))?;
        let expiry = code == TransferCode::Expiry;
        if state.closed && !expiry {
            return Err(TransferError::CycleClosed.into());
        }
        let token = asset.class() == crate::asset::AssetClass::Token;
        if expiry && token && !state.closed {
            return Err(TransferError::CycleNotClosed.into());
        }
        Ok(())
    }

    /// The whole current balance of an account that was read whole.
    fn current(&self, id: AccountId) -> Result<Balance, EngineError> {
        let slot = &self.accounts[&id];
        let base = slot.base.ok_or(EngineError::BalanceNotLoaded(id))?;
        slot.delta
            .applied_to(base, slot.max_total)
            .ok_or(EngineError::BalanceNotLoaded(id))
    }

    /// Refuses a change that would take a known total out of storage's range. Balances that
    /// were not read are bounded by storage itself, which aborts the batch on overflow.
    fn check_overflow(
        &self,
        id: AccountId,
        change: &BalanceDelta,
        error: TransferError,
    ) -> Result<(), Fail> {
        let slot = &self.accounts[&id];
        let Some(base) = slot.base else {
            return Ok(());
        };
        let mut delta = slot.delta;
        delta.debits_pending += change.debits_pending;
        delta.debits_posted += change.debits_posted;
        delta.credits_pending += change.credits_pending;
        delta.credits_posted += change.credits_posted;
        match delta.applied_to(base, slot.max_total) {
            Some(_) => Ok(()),
            None if change.debits_pending < 0 || change.credits_pending < 0 => {
                Err(Fail::Engine(EngineError::PendingUnderflow(id)))
            }
            None => Err(error.into()),
        }
    }

    fn change(&mut self, id: AccountId, change: &BalanceDelta) {
        let slot = self
            .accounts
            .get_mut(&id)
            .expect("changed account is loaded");
        self.undo.push(Undo::Delta(id, slot.delta));
        slot.delta.debits_pending += change.debits_pending;
        slot.delta.debits_posted += change.debits_posted;
        slot.delta.credits_pending += change.credits_pending;
        slot.delta.credits_posted += change.credits_posted;
    }

    fn set_pending(&mut self, entry: PendingEntry) {
        let id = entry.record.id;
        let previous = self.pendings.insert(id, entry);
        self.undo.push(Undo::Pending(id, previous));
    }

    fn record(&mut self, record: TransferRecord) {
        self.undo.push(Undo::Created(record.id));
        self.created.insert(record.id, record.clone());
        self.inserts.push(record);
    }

    fn finish(self, results: Vec<Vec<TransferResult>>) -> BatchOutcome {
        let mut pending_inserts = Vec::new();
        let mut pending_updates = Vec::new();
        for entry in self.pendings.into_values() {
            match (entry.new, entry.dirty) {
                (true, _) => pending_inserts.push(entry.record),
                (false, true) => pending_updates.push(entry.record),
                (false, false) => {}
            }
        }
        pending_inserts.sort_by_key(|pending| pending.id);
        pending_updates.sort_by_key(|pending| pending.id);
        let deltas = self
            .accounts
            .into_iter()
            .map(|(id, slot)| (id, slot.delta))
            .collect();
        BatchOutcome {
            results,
            inserts: self.inserts,
            pending_inserts,
            pending_updates,
            failures: self.failures,
            deltas: sorted_deltas(deltas),
        }
    }
}

fn movement_deltas(amount: Amount, pending: bool) -> (BalanceDelta, BalanceDelta) {
    let amount = i128::from(amount.get());
    if pending {
        (
            BalanceDelta {
                debits_pending: amount,
                ..BalanceDelta::default()
            },
            BalanceDelta {
                credits_pending: amount,
                ..BalanceDelta::default()
            },
        )
    } else {
        (
            BalanceDelta {
                debits_posted: amount,
                ..BalanceDelta::default()
            },
            BalanceDelta {
                credits_posted: amount,
                ..BalanceDelta::default()
            },
        )
    }
}
