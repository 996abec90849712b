//! Builders for test ledgers: a provider, a few orgs with their accounts, transfers.

use std::collections::HashMap;

use credex_ledger::{
    AccountId, AccountKind, Action, Amount, AssetCode, Metadata, Movement, OrgId, Owner, Transfer,
    TransferCode, TransferId,
};
use credex_store::Ledger;

/// One org's accounts.
#[derive(Debug, Clone, Copy)]
pub struct OrgAccounts {
    pub org: OrgId,
    pub wallet: AccountId,
    pub alloc: AccountId,
    pub acquired: AccountId,
    pub escrow: AccountId,
}

/// A provider with credits and one token asset of its own, and some orgs.
#[derive(Debug, Clone)]
pub struct Books {
    pub credit: AssetCode,
    pub token: AssetCode,
    provider: HashMap<(AssetCode, AccountKind), AccountId>,
    pub orgs: Vec<OrgAccounts>,
}

impl Books {
    /// Opens `CR` and a fresh token asset (its own cycle label, so several books can share
    /// one database) with the provider's accounts, and `orgs` orgs with all their accounts.
    pub async fn open(ledger: &Ledger, orgs: usize) -> Self {
        let credit = AssetCode::credit();
        let cycle = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let token = AssetCode::token("pro", cycle).expect("a valid token asset");
        let mut provider = HashMap::new();
        for asset in [&credit, &token] {
            ledger.ensure_asset(asset).await.expect("create an asset");
            for kind in AccountKind::ALL.into_iter().filter(|k| k.is_provider()) {
                if kind.allows(asset.class()) {
                    let view = ledger
                        .ensure_account(asset, Owner::Provider, kind)
                        .await
                        .expect("create a provider account");
                    provider.insert((asset.clone(), kind), view.account.id());
                }
            }
        }
        let mut accounts = Vec::with_capacity(orgs);
        for _ in 0..orgs {
            let org = OrgId::generate();
            let owner = Owner::Org(org);
            let mut ids = Vec::with_capacity(4);
            for (asset, kind) in [
                (&credit, AccountKind::Wallet),
                (&token, AccountKind::Alloc),
                (&token, AccountKind::Acquired),
                (&token, AccountKind::Escrow),
            ] {
                let view = ledger
                    .ensure_account(asset, owner, kind)
                    .await
                    .expect("create an org account");
                ids.push(view.account.id());
            }
            accounts.push(OrgAccounts {
                org,
                wallet: ids[0],
                alloc: ids[1],
                acquired: ids[2],
                escrow: ids[3],
            });
        }
        Self {
            credit,
            token,
            provider,
            orgs: accounts,
        }
    }

    /// The provider's account of this kind for this asset.
    pub fn provider(&self, asset: &AssetCode, kind: AccountKind) -> AccountId {
        self.provider[&(asset.clone(), kind)]
    }

    /// Every account of these books.
    pub fn accounts(&self) -> Vec<AccountId> {
        let mut all: Vec<AccountId> = self.provider.values().copied().collect();
        for org in &self.orgs {
            all.extend([org.wallet, org.alloc, org.acquired, org.escrow]);
        }
        all.sort();
        all
    }
}

pub fn amount(value: u64) -> Amount {
    Amount::new(value).expect("a positive amount")
}

/// A movement, panicking on a malformed one.
pub fn movement(
    debit: AccountId,
    credit: AccountId,
    asset: &AssetCode,
    value: u64,
    code: TransferCode,
) -> Movement {
    Movement::new(debit, credit, asset.clone(), amount(value), code)
        .expect("a well-formed movement")
}

/// A single-phase transfer with a fresh id.
pub fn single(
    debit: AccountId,
    credit: AccountId,
    asset: &AssetCode,
    value: u64,
    code: TransferCode,
) -> Transfer {
    Transfer::movement(
        TransferId::generate(),
        movement(debit, credit, asset, value, code),
    )
}

/// A pending transfer with a fresh id.
pub fn pending(
    debit: AccountId,
    credit: AccountId,
    asset: &AssetCode,
    value: u64,
    code: TransferCode,
    timeout_seconds: Option<u32>,
) -> Transfer {
    Transfer::new(
        TransferId::generate(),
        Action::Reserve {
            movement: movement(debit, credit, asset, value, code),
            timeout_seconds,
        },
        Metadata::default(),
        false,
    )
    .expect("a well-formed pending transfer")
}

/// Posts (some of) a pending transfer.
pub fn post(pending_id: TransferId, value: Option<u64>) -> Transfer {
    Transfer::new(
        TransferId::generate(),
        Action::Post {
            pending_id,
            amount: value.map(amount),
        },
        Metadata::default(),
        false,
    )
    .expect("a well-formed post")
}

/// Voids a pending transfer.
pub fn void(pending_id: TransferId) -> Transfer {
    Transfer::new(
        TransferId::generate(),
        Action::Void { pending_id },
        Metadata::default(),
        false,
    )
    .expect("a well-formed void")
}

/// Links every transfer but the last to the next one.
pub fn chain(transfers: Vec<Transfer>) -> Vec<Transfer> {
    let last = transfers.len().saturating_sub(1);
    transfers
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.with_linked(i < last))
        .collect()
}
