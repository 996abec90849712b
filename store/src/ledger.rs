//! [`Ledger`]: the store behind a group committer, with the conveniences every feature needs.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use credex_ledger::{
    Account, AccountId, AccountKind, Action, AssetClass, AssetCode, Owner, Transfer,
    TransferResult, BATCH_MAX,
};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};
use tokio::task::JoinHandle;

use crate::group_commit::{flusher, GroupCommitConfig, InFlight, Job, Queue};
use crate::{AccountView, CreateAccountError, Store, StoreError};

/// The ledger as the rest of Credex uses it.
#[derive(Debug)]
pub struct Ledger {
    store: Arc<dyn Store>,
    sender: RwLock<Option<mpsc::UnboundedSender<Job>>>,
    room: Arc<Semaphore>,
    max_queue_wait: std::time::Duration,
    flushers: Mutex<Vec<JoinHandle<()>>>,
    /// Transfers answered, by code (or `post`/`void`) and result (`ok` or the error's name).
    counts: std::sync::Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} transfers)", self.transfers.len())
    }
}

/// The label a transfer is counted under: its code, or `post`/`void` for a resolution (whose
/// code is its pending transfer's).
fn code_label(transfer: &Transfer) -> &'static str {
    match transfer.action() {
        Action::Move(movement) | Action::Reserve { movement, .. } => movement.code().name(),
        Action::Post { .. } => "post",
        Action::Void { .. } => "void",
    }
}

impl Ledger {
    /// Starts the group committer's flushers on the current Tokio runtime.
    pub fn new(store: Arc<dyn Store>, config: GroupCommitConfig) -> Self {
        assert!(
            config.max_group_transfers >= BATCH_MAX,
            "a group must fit one request"
        );
        assert!(
            config.max_queued_transfers >= BATCH_MAX,
            "the queue must fit one request"
        );
        assert!(config.flushers >= 1);
        let (sender, receiver) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(Queue::new(receiver)));
        let in_flight = Arc::new(InFlight::default());
        let flushers = (0..config.flushers)
            .map(|_| {
                tokio::spawn(flusher(
                    store.clone(),
                    queue.clone(),
                    in_flight.clone(),
                    config.max_group_transfers,
                ))
            })
            .collect();
        Self {
            store,
            sender: RwLock::new(Some(sender)),
            room: Arc::new(Semaphore::new(config.max_queued_transfers)),
            max_queue_wait: config.max_queue_wait,
            counts: std::sync::Mutex::default(),
            flushers: Mutex::new(flushers),
        }
    }

    /// With the backend's default group-commit bounds.
    pub fn with_defaults(store: Arc<dyn Store>) -> Self {
        let config = GroupCommitConfig::for_backend(store.backend());
        Self::new(store, config)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Creates up to [`BATCH_MAX`] transfers; one result per transfer, in order. Returns once
    /// the batch that carried them has committed durably.
    pub async fn create_transfers(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<TransferResult>, StoreError> {
        if transfers.is_empty() {
            return Ok(Vec::new());
        }
        if transfers.len() > BATCH_MAX {
            return Err(StoreError::BatchTooLarge {
                max: BATCH_MAX,
                got: transfers.len(),
            });
        }
        let count = u32::try_from(transfers.len()).expect("bounded by BATCH_MAX");
        let room = self.room.clone().acquire_many_owned(count);
        let permit = tokio::time::timeout(self.max_queue_wait, room)
            .await
            .map_err(|_| StoreError::Overloaded {
                waited: self.max_queue_wait,
            })?
            .map_err(|_| StoreError::ShuttingDown)?;
        let sender = self
            .sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::ShuttingDown)?;
        let labels: Vec<&'static str> = transfers.iter().map(code_label).collect();
        let (reply, answer) = oneshot::channel();
        sender
            .send(Job {
                transfers,
                reply,
                permit,
            })
            .map_err(|_| StoreError::ShuttingDown)?;
        drop(sender);
        let results = answer.await.map_err(|_| StoreError::ShuttingDown)??;
        self.count(&labels, &results);
        Ok(results)
    }

    /// Transfers answered so far, by code label and result: for metrics.
    pub fn transfer_counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((code, result), n)| (*code, *result, *n))
            .collect()
    }

    fn count(&self, labels: &[&'static str], results: &[TransferResult]) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (label, result) in labels.iter().zip(results) {
            let outcome = match result {
                Ok(()) => "ok",
                Err(error) => error.name(),
            };
            *counts.entry((label, outcome)).or_default() += 1;
        }
    }

    /// Stops taking requests, commits every request already taken, and waits for the
    /// flushers to finish. Nothing acknowledged or queued is lost.
    pub async fn close(&self) {
        self.sender
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let flushers = std::mem::take(&mut *self.flushers.lock().await);
        for flusher in flushers {
            if let Err(error) = flusher.await {
                tracing::error!(%error, "a group-commit flusher failed");
            }
        }
    }

    /// Creates an asset (if missing) with the provider's accounts for it: `issuance`,
    /// `spent` and `expired`, plus `fees` for credits or `treasury` for tokens.
    pub async fn ensure_asset(&self, code: &AssetCode) -> Result<(), StoreError> {
        self.store.create_asset(code).await?;
        let extra = match code.class() {
            AssetClass::Credit => AccountKind::Fees,
            AssetClass::Token => AccountKind::Treasury,
        };
        for kind in [
            AccountKind::Issuance,
            AccountKind::Spent,
            AccountKind::Expired,
            extra,
        ] {
            self.ensure_account(code, Owner::Provider, kind).await?;
        }
        Ok(())
    }

    /// The account of this owner, kind and asset, created if missing.
    pub async fn ensure_account(
        &self,
        asset: &AssetCode,
        owner: Owner,
        kind: AccountKind,
    ) -> Result<AccountView, StoreError> {
        if let Some(view) = self.store.find_account(asset, owner, kind).await? {
            return Ok(view);
        }
        let account = Account::new(AccountId::generate(), asset.clone(), owner, kind)
            .map_err(CreateAccountError::Invalid)?;
        match self.store.create_accounts(&[account]).await?.pop() {
            // A concurrent caller may have created it meanwhile: then it is found below.
            Some(Ok(()) | Err(CreateAccountError::DuplicateOwnerKindAsset)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => return Err(StoreError::corrupt("no result for a created account")),
        }
        self.store
            .find_account(asset, owner, kind)
            .await?
            .ok_or_else(|| StoreError::corrupt("a created account is missing"))
    }
}
