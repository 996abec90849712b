//! The books check: balances recomputed from the journal against the stored ones.

use std::collections::{BTreeMap, HashSet};

use credex_ledger::{AccountId, AssetCode, Balance};
use serde::Serialize;

use crate::{AccountView, JournalTotals};

/// An account whose stored balance differs from what its journal implies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    pub account_id: AccountId,
    pub stored: Balance,
    pub journal: Balance,
}

/// What the books check found. [`CheckReport::is_ok`] holds when nothing is wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub accounts: usize,
    pub journal_entries: i64,
    /// Stored balances that differ from the journal's.
    pub discrepancies: Vec<Discrepancy>,
    /// Assets whose balances do not sum to zero: (asset, posted sum, pending sum). Rule 1.
    pub unbalanced_assets: Vec<(AssetCode, i128, i128)>,
    /// Accounts that may not go negative but are, counting pending debits. Rule 2.
    pub negative_accounts: Vec<AccountId>,
    /// Journal rows that break the pending bookkeeping: pending entries without their state,
    /// resolutions without their entry.
    pub broken_pending_links: i64,
    /// Journal rows naming an account that does not exist or holds another asset.
    pub orphan_entries: i64,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.discrepancies.is_empty()
            && self.unbalanced_assets.is_empty()
            && self.negative_accounts.is_empty()
            && self.broken_pending_links == 0
            && self.orphan_entries == 0
    }

    pub(crate) fn build(
        stored: &[AccountView],
        journal: &JournalTotals,
        journal_entries: i64,
        broken_pending_links: i64,
        orphan_entries: i64,
    ) -> Self {
        let mut report = CheckReport {
            accounts: stored.len(),
            journal_entries,
            broken_pending_links,
            orphan_entries,
            ..CheckReport::default()
        };
        let mut sums: BTreeMap<&AssetCode, (i128, i128)> = BTreeMap::new();
        for view in stored {
            let id = view.account.id();
            let recomputed = journal.get(&id).copied().unwrap_or_default();
            if recomputed != view.balance {
                report.discrepancies.push(Discrepancy {
                    account_id: id,
                    stored: view.balance,
                    journal: recomputed,
                });
            }
            let sum = sums.entry(view.account.asset()).or_default();
            sum.0 += view.balance.net_posted();
            sum.1 += view.balance.net_pending();
            if !view.account.kind().may_go_negative() && !view.balance.debits_within_credits() {
                report.negative_accounts.push(id);
            }
        }
        let stored_ids: HashSet<AccountId> = stored.iter().map(|view| view.account.id()).collect();
        for id in journal.keys() {
            if !stored_ids.contains(id) {
                report.discrepancies.push(Discrepancy {
                    account_id: *id,
                    stored: Balance::default(),
                    journal: journal[id],
                });
            }
        }
        report.unbalanced_assets = sums
            .into_iter()
            .filter(|(_, (posted, pending))| *posted != 0 || *pending != 0)
            .map(|(asset, (posted, pending))| (asset.clone(), posted, pending))
            .collect();
        report
    }
}
