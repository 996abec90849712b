//! One precise result code per way a transfer can fail, in the manner of TigerBeetle.

use serde::{Deserialize, Serialize};

/// Why a transfer was not created. `Exists` is not a failure of the caller: it says a replay
/// found the transfer already committed with identical fields, and nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferError {
    #[error("another transfer of the same linked chain failed")]
    LinkedEventFailed,
    #[error("the last transfer of the request is linked to a transfer that is not there")]
    LinkedEventChainOpen,

    #[error("the transfer already exists with identical fields")]
    Exists,
    #[error("a transfer with this id exists as another kind (single, pending, post or void)")]
    ExistsWithDifferentKind,
    #[error("a transfer with this id exists with a different debit account")]
    ExistsWithDifferentDebitAccountId,
    #[error("a transfer with this id exists with a different credit account")]
    ExistsWithDifferentCreditAccountId,
    #[error("a transfer with this id exists with a different asset")]
    ExistsWithDifferentAsset,
    #[error("a transfer with this id exists with a different amount")]
    ExistsWithDifferentAmount,
    #[error("a transfer with this id exists with a different pending transfer")]
    ExistsWithDifferentPendingId,
    #[error("a transfer with this id exists with a different timeout")]
    ExistsWithDifferentTimeout,
    #[error("a transfer with this id exists with a different code")]
    ExistsWithDifferentCode,
    #[error("a transfer with this id exists with different metadata")]
    ExistsWithDifferentMetadata,
    #[error("a transfer with this id exists with a different linked flag")]
    ExistsWithDifferentLinked,
    #[error("a transfer with this id failed before; a failed id stays failed")]
    IdAlreadyFailed,

    #[error("the debit account does not exist")]
    DebitAccountNotFound,
    #[error("the credit account does not exist")]
    CreditAccountNotFound,
    #[error("the debit and credit accounts hold different assets")]
    AccountsHaveDifferentAssets,
    #[error("the transfer's asset is not the asset of its accounts")]
    AssetMustMatchAccounts,
    #[error("the cycle of this token asset has closed: it accepts only expiry transfers")]
    CycleClosed,
    #[error("tokens expire only once their cycle has closed")]
    CycleNotClosed,
    #[error("acquired tokens can only be spent or expire (one hop)")]
    OneHopViolation,
    #[error("this code does not allow value to move between these kinds of account")]
    FlowNotAllowed,
    #[error("this code moves value only between accounts of the same org")]
    OwnersMustMatch,
    #[error("this code moves value only between accounts of different orgs")]
    OwnersMustDiffer,
    #[error("the debit account's debits, counting pending ones, would exceed its credits")]
    ExceedsCredits,
    #[error("the debit account's debits would overflow")]
    OverflowsDebits,
    #[error("the credit account's credits would overflow")]
    OverflowsCredits,

    #[error("the pending transfer does not exist")]
    PendingTransferNotFound,
    #[error("the referenced transfer is not a pending transfer")]
    PendingTransferNotPending,
    #[error("the pending transfer was already posted")]
    PendingTransferAlreadyPosted,
    #[error("the pending transfer was already voided")]
    PendingTransferAlreadyVoided,
    #[error("the pending transfer expired at its timeout")]
    PendingTransferExpired,
    #[error("the amount exceeds the pending transfer's amount")]
    ExceedsPendingTransferAmount,
}

impl TransferError {
    pub const ALL: [TransferError; 33] = [
        Self::LinkedEventFailed,
        Self::LinkedEventChainOpen,
        Self::Exists,
        Self::ExistsWithDifferentKind,
        Self::ExistsWithDifferentDebitAccountId,
        Self::ExistsWithDifferentCreditAccountId,
        Self::ExistsWithDifferentAsset,
        Self::ExistsWithDifferentAmount,
        Self::ExistsWithDifferentPendingId,
        Self::ExistsWithDifferentTimeout,
        Self::ExistsWithDifferentCode,
        Self::ExistsWithDifferentMetadata,
        Self::ExistsWithDifferentLinked,
        Self::IdAlreadyFailed,
        Self::DebitAccountNotFound,
        Self::CreditAccountNotFound,
        Self::AccountsHaveDifferentAssets,
        Self::AssetMustMatchAccounts,
        Self::CycleClosed,
        Self::CycleNotClosed,
        Self::OneHopViolation,
        Self::FlowNotAllowed,
        Self::OwnersMustMatch,
        Self::OwnersMustDiffer,
        Self::ExceedsCredits,
        Self::OverflowsDebits,
        Self::OverflowsCredits,
        Self::PendingTransferNotFound,
        Self::PendingTransferNotPending,
        Self::PendingTransferAlreadyPosted,
        Self::PendingTransferAlreadyVoided,
        Self::PendingTransferExpired,
        Self::ExceedsPendingTransferAmount,
    ];

    /// The stable snake_case name used in storage and over HTTP.
    pub fn name(self) -> &'static str {
        macro_rules! names {
            ($($variant:ident => $name:literal),* $(,)?) => {
                match self { $(Self::$variant => $name),* }
            };
        }
        names! {
            LinkedEventFailed => "linked_event_failed",
            LinkedEventChainOpen => "linked_event_chain_open",
            Exists => "exists",
            ExistsWithDifferentKind => "exists_with_different_kind",
            ExistsWithDifferentDebitAccountId => "exists_with_different_debit_account_id",
            ExistsWithDifferentCreditAccountId => "exists_with_different_credit_account_id",
            ExistsWithDifferentAsset => "exists_with_different_asset",
            ExistsWithDifferentAmount => "exists_with_different_amount",
            ExistsWithDifferentPendingId => "exists_with_different_pending_id",
            ExistsWithDifferentTimeout => "exists_with_different_timeout",
            ExistsWithDifferentCode => "exists_with_different_code",
            ExistsWithDifferentMetadata => "exists_with_different_metadata",
            ExistsWithDifferentLinked => "exists_with_different_linked",
            IdAlreadyFailed => "id_already_failed",
            DebitAccountNotFound => "debit_account_not_found",
            CreditAccountNotFound => "credit_account_not_found",
            AccountsHaveDifferentAssets => "accounts_have_different_assets",
            AssetMustMatchAccounts => "asset_must_match_accounts",
            CycleClosed => "cycle_closed",
            CycleNotClosed => "cycle_not_closed",
            OneHopViolation => "one_hop_violation",
            FlowNotAllowed => "flow_not_allowed",
            OwnersMustMatch => "owners_must_match",
            OwnersMustDiffer => "owners_must_differ",
            ExceedsCredits => "exceeds_credits",
            OverflowsDebits => "overflows_debits",
            OverflowsCredits => "overflows_credits",
            PendingTransferNotFound => "pending_transfer_not_found",
            PendingTransferNotPending => "pending_transfer_not_pending",
            PendingTransferAlreadyPosted => "pending_transfer_already_posted",
            PendingTransferAlreadyVoided => "pending_transfer_already_voided",
            PendingTransferExpired => "pending_transfer_expired",
            ExceedsPendingTransferAmount => "exceeds_pending_transfer_amount",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|error| error.name() == name)
    }

    /// Replays of a committed transfer: the id is taken by a success.
    pub fn is_exists(self) -> bool {
        matches!(
            self,
            Self::Exists
                | Self::ExistsWithDifferentKind
                | Self::ExistsWithDifferentDebitAccountId
                | Self::ExistsWithDifferentCreditAccountId
                | Self::ExistsWithDifferentAsset
                | Self::ExistsWithDifferentAmount
                | Self::ExistsWithDifferentPendingId
                | Self::ExistsWithDifferentTimeout
                | Self::ExistsWithDifferentCode
                | Self::ExistsWithDifferentMetadata
                | Self::ExistsWithDifferentLinked
        )
    }

    /// Whether the failure is the transfer's own, against the ledger's state; such an id is
    /// remembered as failed so that a retry can never succeed later with another outcome.
    pub fn burns_id(self) -> bool {
        !self.is_exists()
            && !matches!(
                self,
                Self::IdAlreadyFailed | Self::LinkedEventFailed | Self::LinkedEventChainOpen
            )
    }
}

/// The outcome of one transfer: created, or why not.
pub type TransferResult = Result<(), TransferError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for error in TransferError::ALL {
            assert_eq!(TransferError::parse(error.name()), Some(error));
            let json = serde_json_like(error);
            assert_eq!(json, error.name());
        }
    }

    fn serde_json_like(error: TransferError) -> String {
        // serde's snake_case renaming must agree with `name`; checked through the Debug name.
        let debug = format!("{error:?}");
        let mut out = String::new();
        for (i, c) in debug.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}
