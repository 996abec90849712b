//! What charging reads before its transaction, kept in memory per org and checked inside it.
//!
//! Every usage request needs its org's budgets, its models' price schedules (the catalog's
//! and the org's custom ones) and which of the org's accounts exist — three to five reads,
//! more than the charge's share of its transaction. They change rarely, so each process keeps
//! them per org ([`OrgMemo`]), tagged with the [`UsageVersions`] read just before them. Every
//! change to what they hold bumps a version in its own transaction (triggers of migration
//! `0015`, so no writer can forget), and the usage transaction reads the versions with the
//! org's row lock: a decision prepared at older versions is not run (`Stale`), the org's memo
//! is dropped and the request is prepared again from fresh reads. So a memo is never trusted
//! past a change, in this process or any other: caching changes how often things are read,
//! never what is charged.
//!
//! Only facts that a version covers are kept: found accounts live in the
//! [`AccountBook`](crate::market::AccountBook) (an account, once made, never changes), missing
//! ones here (one may be made at any time: the version says when). Unknown models are not
//! kept. Sizes are bounded: at most [`ORGS_MAX`] orgs (all dropped when full, then refilled
//! as requests come) and [`MODELS_MAX`] models per org.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use credex_ledger::{AccountKind, AssetCode, OrgId};
use credex_store::{Store, UsageVersions};

use crate::budgets::Budget;
use crate::catalog::ModelPrices;

/// The most orgs kept; past it every memo is dropped.
const ORGS_MAX: usize = 10_000;
/// The most models' prices kept per org.
const MODELS_MAX: usize = 256;
/// The most missing accounts kept per org.
const ABSENT_MAX: usize = 256;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one org's charges were last prepared from, valid at `versions`.
#[derive(Debug)]
pub(super) struct OrgMemo {
    versions: UsageVersions,
    budgets: Mutex<Option<Arc<Vec<Budget>>>>,
    /// By the model's name as events give it.
    prices: Mutex<HashMap<String, Arc<ModelPrices>>>,
    /// The org's accounts known not to exist, by asset and kind.
    absent: Mutex<HashSet<(AssetCode, AccountKind)>>,
}

impl OrgMemo {
    fn new(versions: UsageVersions) -> Self {
        Self {
            versions,
            budgets: Mutex::default(),
            prices: Mutex::default(),
            absent: Mutex::default(),
        }
    }

    /// The versions its contents were read at (or after).
    pub(super) fn versions(&self) -> UsageVersions {
        self.versions
    }

    pub(super) fn budgets(&self) -> Option<Arc<Vec<Budget>>> {
        lock(&self.budgets).clone()
    }

    pub(super) fn keep_budgets(&self, budgets: Arc<Vec<Budget>>) {
        *lock(&self.budgets) = Some(budgets);
    }

    pub(super) fn prices(&self, model: &str) -> Option<Arc<ModelPrices>> {
        lock(&self.prices).get(model).cloned()
    }

    pub(super) fn keep_prices(&self, model: &str, prices: Arc<ModelPrices>) {
        let mut kept = lock(&self.prices);
        if kept.len() < MODELS_MAX {
            kept.insert(model.to_owned(), prices);
        }
    }

    pub(super) fn is_absent(&self, asset: &AssetCode, kind: AccountKind) -> bool {
        lock(&self.absent).contains(&(asset.clone(), kind))
    }

    pub(super) fn keep_absent(&self, asset: &AssetCode, kind: AccountKind) {
        let mut kept = lock(&self.absent);
        if kept.len() < ABSENT_MAX {
            kept.insert((asset.clone(), kind));
        }
    }
}

/// The memos of this process, by org.
#[derive(Debug, Default)]
pub(super) struct Memos {
    orgs: Mutex<HashMap<OrgId, Arc<OrgMemo>>>,
    /// The newest catalog version seen: a memo of an older one is not used.
    catalog: AtomicI64,
}

impl Memos {
    /// The org's memo; a new empty one (its versions read now) when there is none, when it
    /// predates the newest catalog version seen, or when `fresh` asks for one.
    pub(super) async fn of(
        &self,
        store: &dyn Store,
        org: OrgId,
        fresh: bool,
    ) -> Result<Arc<OrgMemo>, credex_store::StoreError> {
        if !fresh {
            let catalog = self.catalog.load(Ordering::Relaxed);
            if let Some(memo) = lock(&self.orgs).get(&org) {
                if memo.versions.catalog >= catalog {
                    return Ok(Arc::clone(memo));
                }
            }
        }
        let versions = store.usage_versions(org).await?;
        self.catalog.fetch_max(versions.catalog, Ordering::Relaxed);
        let memo = Arc::new(OrgMemo::new(versions));
        let mut orgs = lock(&self.orgs);
        if orgs.len() >= ORGS_MAX {
            orgs.clear();
        }
        // A request that read its versions before another's does not put back older ones.
        let key = |v: UsageVersions| (v.catalog, v.org);
        if orgs
            .get(&org)
            .is_none_or(|kept| key(kept.versions) <= key(versions))
        {
            orgs.insert(org, Arc::clone(&memo));
        }
        Ok(memo)
    }
}
