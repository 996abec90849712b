//! Accounts and balances: the spec's account table, per asset.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::asset::{AssetClass, AssetCode};
use crate::ids::{AccountId, OrgId};

/// The kinds of account in the spec's table. Nothing else can hold value, which is what keeps
/// the loop closed (rule 8): an account of another kind cannot even be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountKind {
    /// Provider: the source of allotments, grants, top-ups and buyback payouts. May go negative.
    Issuance,
    /// Provider: tokens bought back; can be sold as emergency credits.
    Treasury,
    /// Provider: market fees, in CR.
    Fees,
    /// Provider: the sink for consumption.
    Spent,
    /// Provider: the sink for cycle-end (and credit) expiry.
    Expired,
    /// Org: its own allotted tokens; spendable, listable, sellable to the provider.
    Alloc,
    /// Org: tokens bought on the market; spendable only (one hop).
    Acquired,
    /// Org: tokens locked in open listings.
    Escrow,
    /// Org: its CR balance.
    Wallet,
}

impl AccountKind {
    pub const ALL: [AccountKind; 9] = [
        Self::Issuance,
        Self::Treasury,
        Self::Fees,
        Self::Spent,
        Self::Expired,
        Self::Alloc,
        Self::Acquired,
        Self::Escrow,
        Self::Wallet,
    ];

    /// The stable number storage keeps for this kind.
    pub fn number(self) -> i16 {
        match self {
            Self::Issuance => 1,
            Self::Treasury => 2,
            Self::Fees => 3,
            Self::Spent => 4,
            Self::Expired => 5,
            Self::Alloc => 11,
            Self::Acquired => 12,
            Self::Escrow => 13,
            Self::Wallet => 14,
        }
    }

    pub fn from_number(number: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.number() == number)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Issuance => "issuance",
            Self::Treasury => "treasury",
            Self::Fees => "fees",
            Self::Spent => "spent",
            Self::Expired => "expired",
            Self::Alloc => "alloc",
            Self::Acquired => "acquired",
            Self::Escrow => "escrow",
            Self::Wallet => "wallet",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// Provider accounts belong to the provider; the others to an org.
    pub fn is_provider(self) -> bool {
        matches!(
            self,
            Self::Issuance | Self::Treasury | Self::Fees | Self::Spent | Self::Expired
        )
    }

    /// Only `issuance` may go negative; every other account's debits, counting pending ones,
    /// never exceed its posted credits (rule 2).
    pub fn may_go_negative(self) -> bool {
        self == Self::Issuance
    }

    /// Whether an account of this kind may hold the given class of asset.
    pub fn allows(self, class: AssetClass) -> bool {
        match self {
            Self::Issuance | Self::Spent | Self::Expired => true,
            Self::Treasury | Self::Alloc | Self::Acquired | Self::Escrow => {
                class == AssetClass::Token
            }
            Self::Fees | Self::Wallet => class == AssetClass::Credit,
        }
    }
}

impl fmt::Display for AccountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who owns an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "org_id")]
pub enum Owner {
    Provider,
    Org(OrgId),
}

impl Owner {
    pub fn org(self) -> Option<OrgId> {
        match self {
            Self::Provider => None,
            Self::Org(org) => Some(org),
        }
    }
}

/// Why an account cannot exist as described.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountError {
    #[error("this kind of account cannot hold this class of asset")]
    KindNotAllowedForAsset,
    #[error("provider accounts belong to the provider")]
    ProviderKindNeedsProvider,
    #[error("org accounts belong to an org")]
    OrgKindNeedsOrg,
}

/// An account: immutable once created. Its balance lives beside it, in [`Balance`].
/// Deserializing goes through [`Account::new`], so no account outside the table can exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AccountFields")]
pub struct Account {
    id: AccountId,
    asset: AssetCode,
    owner: Owner,
    kind: AccountKind,
}

#[derive(Deserialize)]
struct AccountFields {
    id: AccountId,
    asset: AssetCode,
    owner: Owner,
    kind: AccountKind,
}

impl TryFrom<AccountFields> for Account {
    type Error = AccountError;
    fn try_from(fields: AccountFields) -> Result<Self, AccountError> {
        Self::new(fields.id, fields.asset, fields.owner, fields.kind)
    }
}

impl Account {
    pub fn new(
        id: AccountId,
        asset: AssetCode,
        owner: Owner,
        kind: AccountKind,
    ) -> Result<Self, AccountError> {
        if !kind.allows(asset.class()) {
            return Err(AccountError::KindNotAllowedForAsset);
        }
        match (kind.is_provider(), owner) {
            (true, Owner::Org(_)) => return Err(AccountError::ProviderKindNeedsProvider),
            (false, Owner::Provider) => return Err(AccountError::OrgKindNeedsOrg),
            _ => {}
        }
        Ok(Self {
            id,
            asset,
            owner,
            kind,
        })
    }

    pub fn id(&self) -> AccountId {
        self.id
    }
    pub fn asset(&self) -> &AssetCode {
        &self.asset
    }
    pub fn owner(&self) -> Owner {
        self.owner
    }
    pub fn kind(&self) -> AccountKind {
        self.kind
    }

    /// Hot accounts (every provider account) keep their balance in several stripes so that
    /// concurrent transactions crediting them, or debiting `issuance`, do not queue on one row.
    pub fn is_striped(&self) -> bool {
        self.kind.is_provider()
    }
}

/// An account's four running totals, each a sum of positive amounts.
///
/// The balance of an account is `credits_posted - debits_posted`; what it can still give is
/// that minus `debits_pending`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Balance {
    pub debits_pending: u64,
    pub debits_posted: u64,
    pub credits_pending: u64,
    pub credits_posted: u64,
}

impl Balance {
    /// Posted credits minus posted debits.
    pub fn net_posted(&self) -> i128 {
        i128::from(self.credits_posted) - i128::from(self.debits_posted)
    }

    /// Pending credits minus pending debits.
    pub fn net_pending(&self) -> i128 {
        i128::from(self.credits_pending) - i128::from(self.debits_pending)
    }

    /// What a restricted account could still give: posted credits minus all debits.
    pub fn available(&self) -> i128 {
        self.net_posted() - i128::from(self.debits_pending)
    }

    /// Rule 2 for accounts that may not go negative.
    pub fn debits_within_credits(&self) -> bool {
        self.available() >= 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_table() {
        let credit = AssetCode::credit();
        let token = AssetCode::token("pro", "2026-11").unwrap();
        let org = Owner::Org(OrgId::generate());
        let check = |asset: &AssetCode, owner, kind, expected: Result<(), AccountError>| {
            let got = Account::new(AccountId::generate(), asset.clone(), owner, kind).map(|_| ());
            assert_eq!(got, expected, "{kind} of {asset}");
        };
        check(&credit, org, AccountKind::Wallet, Ok(()));
        check(
            &credit,
            org,
            AccountKind::Alloc,
            Err(AccountError::KindNotAllowedForAsset),
        );
        check(
            &credit,
            Owner::Provider,
            AccountKind::Treasury,
            Err(AccountError::KindNotAllowedForAsset),
        );
        check(
            &token,
            Owner::Provider,
            AccountKind::Fees,
            Err(AccountError::KindNotAllowedForAsset),
        );
        check(&token, Owner::Provider, AccountKind::Issuance, Ok(()));
        check(
            &token,
            org,
            AccountKind::Issuance,
            Err(AccountError::ProviderKindNeedsProvider),
        );
        check(
            &token,
            Owner::Provider,
            AccountKind::Acquired,
            Err(AccountError::OrgKindNeedsOrg),
        );
        for kind in AccountKind::ALL {
            assert_eq!(AccountKind::from_number(kind.number()), Some(kind));
            assert_eq!(AccountKind::parse(kind.name()), Some(kind));
        }
    }
}
