//! Transfers: what a client asks the ledger to do, and what the journal keeps.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::account::AccountKind;
use crate::amount::Amount;
use crate::asset::{AssetClass, AssetCode};
use crate::clock::Timestamp;
use crate::error::TransferError;
use crate::ids::{AccountId, TransferId};

/// Why value moved. Every code admits only the flows listed in [`TransferCode::flow`], which is
/// how the ledger itself, not its callers, keeps the loop closed and the one-hop rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferCode {
    /// Tokens of a cycle issued to an org: `issuance → alloc`.
    Allotment,
    /// Free CR given by the provider: `issuance → wallet`.
    Grant,
    /// CR paid for outside Credex and recorded here: `issuance → wallet`.
    TopUp,
    /// Consumption: tokens `alloc | acquired → spent`, or CR `wallet → spent`.
    Spend,
    /// Tokens locked in a listing: `alloc → escrow`.
    List,
    /// Tokens released from a listing: `escrow → alloc`.
    Unlist,
    /// A market fill: tokens `escrow → acquired`, CR `wallet → wallet`.
    Trade,
    /// A market fee: CR `wallet → fees`.
    Fee,
    /// The provider buys tokens back: tokens `alloc | escrow → treasury`, CR `issuance → wallet`.
    Buyback,
    /// Emergency credits from the provider: tokens `treasury | issuance → acquired`, paid for
    /// with CR `wallet → spent`.
    EmergencySale,
    /// Value that lapses: tokens of a closed cycle `alloc | acquired | escrow | treasury →
    /// expired`, or CR `wallet → expired`.
    Expiry,
    /// A correction: the reverse of a flow of any code above but `expiry` and `reversal`.
    /// It can never take value out of `acquired` except to `spent` or `expired`.
    Reversal,
    /// CR advanced by the provider on an org's overdraft allowance, when its wallet cannot pay
    /// a charge: `issuance → wallet`, linked with the spend it pays for. The org owes it
    /// outside Credex (it is settled by invoice, not by moving CR back).
    Overdraft,
}

impl TransferCode {
    pub const ALL: [TransferCode; 13] = [
        Self::Allotment,
        Self::Grant,
        Self::TopUp,
        Self::Spend,
        Self::List,
        Self::Unlist,
        Self::Trade,
        Self::Fee,
        Self::Buyback,
        Self::EmergencySale,
        Self::Expiry,
        Self::Reversal,
        Self::Overdraft,
    ];

    /// The stable number storage keeps for this code.
    pub fn number(self) -> i16 {
        match self {
            Self::Allotment => 1,
            Self::Grant => 2,
            Self::TopUp => 3,
            Self::Spend => 4,
            Self::List => 5,
            Self::Unlist => 6,
            Self::Trade => 7,
            Self::Fee => 8,
            Self::Buyback => 9,
            Self::EmergencySale => 10,
            Self::Expiry => 11,
            Self::Reversal => 12,
            Self::Overdraft => 13,
        }
    }

    pub fn from_number(number: i16) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.number() == number)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Allotment => "allotment",
            Self::Grant => "grant",
            Self::TopUp => "top_up",
            Self::Spend => "spend",
            Self::List => "list",
            Self::Unlist => "unlist",
            Self::Trade => "trade",
            Self::Fee => "fee",
            Self::Buyback => "buyback",
            Self::EmergencySale => "emergency_sale",
            Self::Expiry => "expiry",
            Self::Reversal => "reversal",
            Self::Overdraft => "overdraft",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.name() == name)
    }

    /// Whether this code admits a movement from `debit` to `credit` of an asset of `class`.
    fn admits(self, class: AssetClass, debit: AccountKind, credit: AccountKind) -> bool {
        use AccountKind::*;
        use AssetClass::*;
        match (self, class) {
            (Self::Allotment, Token) => (debit, credit) == (Issuance, Alloc),
            (Self::Grant | Self::TopUp | Self::Overdraft, Credit) => {
                (debit, credit) == (Issuance, Wallet)
            }
            (Self::Spend, Token) => matches!(debit, Alloc | Acquired) && credit == Spent,
            (Self::Spend, Credit) => (debit, credit) == (Wallet, Spent),
            (Self::List, Token) => (debit, credit) == (Alloc, Escrow),
            (Self::Unlist, Token) => (debit, credit) == (Escrow, Alloc),
            (Self::Trade, Token) => (debit, credit) == (Escrow, Acquired),
            (Self::Trade, Credit) => (debit, credit) == (Wallet, Wallet),
            (Self::Fee, Credit) => (debit, credit) == (Wallet, Fees),
            (Self::Buyback, Token) => matches!(debit, Alloc | Escrow) && credit == Treasury,
            (Self::Buyback, Credit) => (debit, credit) == (Issuance, Wallet),
            (Self::EmergencySale, Token) => {
                matches!(debit, Treasury | Issuance) && credit == Acquired
            }
            (Self::EmergencySale, Credit) => (debit, credit) == (Wallet, Spent),
            (Self::Expiry, Token) => {
                matches!(debit, Alloc | Acquired | Escrow | Treasury) && credit == Expired
            }
            (Self::Expiry, Credit) => (debit, credit) == (Wallet, Expired),
            (Self::Reversal, _) => Self::ALL
                .into_iter()
                .filter(|code| !matches!(code, Self::Expiry | Self::Reversal))
                .any(|code| code.admits(class, credit, debit)),
            _ => false,
        }
    }

    /// Whether the two accounts of a movement between orgs must belong to the same org (tokens
    /// in and out of one org's listings) or to different orgs (a trade).
    fn owners(self, class: AssetClass, debit: AccountKind, credit: AccountKind) -> Owners {
        match self {
            Self::List | Self::Unlist => Owners::Same,
            Self::Trade => Owners::Different,
            Self::Reversal => Self::ALL
                .into_iter()
                .filter(|code| !matches!(code, Self::Expiry | Self::Reversal))
                .find(|code| code.admits(class, credit, debit))
                .map_or(Owners::Any, |code| code.owners(class, credit, debit)),
            _ => Owners::Any,
        }
    }

    /// Checks that a movement between two orgs' accounts keeps value where this code says:
    /// listings move tokens within one org, trades between two.
    pub fn owners_rule(
        self,
        class: AssetClass,
        debit: (AccountKind, Option<crate::ids::OrgId>),
        credit: (AccountKind, Option<crate::ids::OrgId>),
    ) -> Result<(), TransferError> {
        let (Some(debit_org), Some(credit_org)) = (debit.1, credit.1) else {
            return Ok(());
        };
        match self.owners(class, debit.0, credit.0) {
            Owners::Same if debit_org != credit_org => Err(TransferError::OwnersMustMatch),
            Owners::Different if debit_org == credit_org => Err(TransferError::OwnersMustDiffer),
            _ => Ok(()),
        }
    }

    /// Checks a movement against the one-hop rule (7) and this code's flows (rule 8).
    pub fn flow(
        self,
        class: AssetClass,
        debit: AccountKind,
        credit: AccountKind,
    ) -> Result<(), TransferError> {
        if debit == AccountKind::Acquired
            && !matches!(credit, AccountKind::Spent | AccountKind::Expired)
        {
            return Err(TransferError::OneHopViolation);
        }
        if self.admits(class, debit, credit) {
            Ok(())
        } else {
            Err(TransferError::FlowNotAllowed)
        }
    }
}

impl fmt::Display for TransferCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owners {
    Same,
    Different,
    Any,
}

pub const METADATA_MAX_BYTES: usize = 512;

/// Free text a caller attaches to a transfer (often a JSON object naming the order, listing or
/// usage event behind it). At most 512 bytes of UTF-8 without control characters.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Metadata(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata must be at most {METADATA_MAX_BYTES} bytes")]
    TooLong,
    #[error("metadata must not contain control characters")]
    ControlCharacter,
}

impl Metadata {
    pub fn new(text: impl Into<String>) -> Result<Self, MetadataError> {
        let text = text.into();
        if text.len() > METADATA_MAX_BYTES {
            return Err(MetadataError::TooLong);
        }
        if text.chars().any(char::is_control) {
            return Err(MetadataError::ControlCharacter);
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<String> for Metadata {
    type Error = MetadataError;
    fn try_from(text: String) -> Result<Self, MetadataError> {
        Self::new(text)
    }
}

impl From<Metadata> for String {
    fn from(metadata: Metadata) -> String {
        metadata.0
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Value moving from one account to another: the part of a transfer that names accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MovementFields")]
pub struct Movement {
    debit_account_id: AccountId,
    credit_account_id: AccountId,
    asset: AssetCode,
    amount: Amount,
    code: TransferCode,
}

/// Why a transfer is malformed, whatever the state of the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("debit and credit accounts must be different")]
    AccountsMustBeDifferent,
    #[error("a pending transfer's id must differ from its own id")]
    PendingIdMustBeDifferent,
    #[error("expiry transfers are single-phase")]
    ExpiryMustBeSinglePhase,
    #[error("a timeout must be positive")]
    TimeoutMustBePositive,
}

#[derive(Deserialize)]
struct MovementFields {
    debit_account_id: AccountId,
    credit_account_id: AccountId,
    asset: AssetCode,
    amount: Amount,
    code: TransferCode,
}

impl TryFrom<MovementFields> for Movement {
    type Error = ShapeError;
    fn try_from(f: MovementFields) -> Result<Self, ShapeError> {
        Self::new(
            f.debit_account_id,
            f.credit_account_id,
            f.asset,
            f.amount,
            f.code,
        )
    }
}

impl Movement {
    pub fn new(
        debit_account_id: AccountId,
        credit_account_id: AccountId,
        asset: AssetCode,
        amount: Amount,
        code: TransferCode,
    ) -> Result<Self, ShapeError> {
        if debit_account_id == credit_account_id {
            return Err(ShapeError::AccountsMustBeDifferent);
        }
        Ok(Self {
            debit_account_id,
            credit_account_id,
            asset,
            amount,
            code,
        })
    }

    pub fn debit_account_id(&self) -> AccountId {
        self.debit_account_id
    }
    pub fn credit_account_id(&self) -> AccountId {
        self.credit_account_id
    }
    pub fn asset(&self) -> &AssetCode {
        &self.asset
    }
    pub fn amount(&self) -> Amount {
        self.amount
    }
    pub fn code(&self) -> TransferCode {
        self.code
    }
}

/// What a transfer does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Action {
    /// Moves value now (single-phase).
    Move(Movement),
    /// Reserves value: it counts against the debit account until posted, voided or expired.
    /// Without a timeout it never expires.
    Reserve {
        movement: Movement,
        timeout_seconds: Option<u32>,
    },
    /// Posts a pending transfer, for its whole amount or less; the rest is released.
    Post {
        pending_id: TransferId,
        amount: Option<Amount>,
    },
    /// Voids a pending transfer, releasing all of it.
    Void { pending_id: TransferId },
}

/// A transfer request. `linked` chains it with the next transfer of the same request: a chain
/// commits or fails as one (rule 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TransferFields")]
pub struct Transfer {
    id: TransferId,
    action: Action,
    metadata: Metadata,
    linked: bool,
}

#[derive(Deserialize)]
struct TransferFields {
    id: TransferId,
    action: Action,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    linked: bool,
}

impl TryFrom<TransferFields> for Transfer {
    type Error = ShapeError;
    fn try_from(f: TransferFields) -> Result<Self, ShapeError> {
        Self::new(f.id, f.action, f.metadata, f.linked)
    }
}

impl Transfer {
    pub fn new(
        id: TransferId,
        action: Action,
        metadata: Metadata,
        linked: bool,
    ) -> Result<Self, ShapeError> {
        match &action {
            Action::Reserve {
                movement,
                timeout_seconds,
            } => {
                if movement.code == TransferCode::Expiry {
                    return Err(ShapeError::ExpiryMustBeSinglePhase);
                }
                if *timeout_seconds == Some(0) {
                    return Err(ShapeError::TimeoutMustBePositive);
                }
            }
            Action::Post { pending_id, .. } | Action::Void { pending_id } => {
                if *pending_id == id {
                    return Err(ShapeError::PendingIdMustBeDifferent);
                }
            }
            Action::Move(_) => {}
        }
        Ok(Self {
            id,
            action,
            metadata,
            linked,
        })
    }

    /// A single-phase transfer without metadata, unlinked: the common case.
    pub fn movement(id: TransferId, movement: Movement) -> Self {
        Self {
            id,
            action: Action::Move(movement),
            metadata: Metadata::default(),
            linked: false,
        }
    }

    pub fn id(&self) -> TransferId {
        self.id
    }
    pub fn action(&self) -> &Action {
        &self.action
    }
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    pub fn linked(&self) -> bool {
        self.linked
    }

    /// The same transfer, chained to the next one (or not).
    pub fn with_linked(mut self, linked: bool) -> Self {
        self.linked = linked;
        self
    }

    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// The four kinds of journal entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    Single,
    Pending,
    Post,
    Void,
}

impl TransferKind {
    pub fn number(self) -> i16 {
        match self {
            Self::Single => 0,
            Self::Pending => 1,
            Self::Post => 2,
            Self::Void => 3,
        }
    }

    pub fn from_number(number: i16) -> Option<Self> {
        [Self::Single, Self::Pending, Self::Post, Self::Void]
            .into_iter()
            .find(|kind| kind.number() == number)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Pending => "pending",
            Self::Post => "post",
            Self::Void => "void",
        }
    }

    /// Whether entries of this kind change posted balances.
    pub fn moves_posted(self) -> bool {
        matches!(self, Self::Single | Self::Post)
    }
}

/// A journal entry: an immutable record of a transfer that committed (rule 3).
///
/// Posts and voids carry the accounts, asset and code of the pending transfer they resolve; a
/// void's amount is the amount it released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    pub id: TransferId,
    pub kind: TransferKind,
    pub debit_account_id: AccountId,
    pub credit_account_id: AccountId,
    pub asset: AssetCode,
    pub amount: Amount,
    pub pending_id: Option<TransferId>,
    pub code: TransferCode,
    pub timeout_seconds: Option<u32>,
    pub metadata: Metadata,
    pub linked: bool,
    pub timestamp: Timestamp,
}

/// Where a pending transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingState {
    Pending,
    Posted,
    Voided,
    Expired,
}

impl PendingState {
    pub fn number(self) -> i16 {
        match self {
            Self::Pending => 0,
            Self::Posted => 1,
            Self::Voided => 2,
            Self::Expired => 3,
        }
    }

    pub fn from_number(number: i16) -> Option<Self> {
        [Self::Pending, Self::Posted, Self::Voided, Self::Expired]
            .into_iter()
            .find(|state| state.number() == number)
    }
}

/// A pending transfer and its resolution. The resolution is written once: when it is posted,
/// voided, or expires (at `expires_at`, the instant its timeout ran out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    pub id: TransferId,
    pub debit_account_id: AccountId,
    pub credit_account_id: AccountId,
    pub asset: AssetCode,
    pub amount: Amount,
    pub code: TransferCode,
    pub timestamp: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub state: PendingState,
    pub resolved_at: Option<Timestamp>,
    pub resolved_by: Option<TransferId>,
}

impl PendingRecord {
    /// Whether its timeout has run out at `now`, resolved or not.
    pub fn timed_out(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AccountKind::*;
    use AssetClass::*;

    #[test]
    fn flows() {
        let check =
            |code: TransferCode, class, debit, credit, expected: Result<(), TransferError>| {
                assert_eq!(
                    code.flow(class, debit, credit),
                    expected,
                    "{code} {class:?} {debit} → {credit}"
                );
            };
        check(TransferCode::Allotment, Token, Issuance, Alloc, Ok(()));
        check(
            TransferCode::Allotment,
            Credit,
            Issuance,
            Wallet,
            Err(TransferError::FlowNotAllowed),
        );
        check(TransferCode::Spend, Token, Acquired, Spent, Ok(()));
        check(
            TransferCode::Trade,
            Token,
            Acquired,
            Acquired,
            Err(TransferError::OneHopViolation),
        );
        check(
            TransferCode::List,
            Token,
            Acquired,
            Escrow,
            Err(TransferError::OneHopViolation),
        );
        check(
            TransferCode::Buyback,
            Token,
            Acquired,
            Treasury,
            Err(TransferError::OneHopViolation),
        );
        check(TransferCode::Expiry, Token, Acquired, Expired, Ok(()));
        check(TransferCode::Reversal, Token, Spent, Acquired, Ok(()));
        check(
            TransferCode::Reversal,
            Token,
            Acquired,
            Treasury,
            Err(TransferError::OneHopViolation),
        );
        check(TransferCode::Reversal, Credit, Wallet, Issuance, Ok(()));
        check(
            TransferCode::Reversal,
            Token,
            Expired,
            Alloc,
            Err(TransferError::FlowNotAllowed),
        );
        check(
            TransferCode::Trade,
            Credit,
            Wallet,
            Spent,
            Err(TransferError::FlowNotAllowed),
        );
        check(TransferCode::Fee, Credit, Wallet, Fees, Ok(()));
        for code in TransferCode::ALL {
            assert_eq!(TransferCode::from_number(code.number()), Some(code));
            assert_eq!(TransferCode::parse(code.name()), Some(code));
        }
    }

    #[test]
    fn shapes() {
        let a = AccountId::generate();
        let asset = AssetCode::credit();
        let one = Amount::new(1).unwrap();
        assert_eq!(
            Movement::new(a, a, asset.clone(), one, TransferCode::Grant),
            Err(ShapeError::AccountsMustBeDifferent)
        );
        let id = TransferId::generate();
        assert_eq!(
            Transfer::new(
                id,
                Action::Void { pending_id: id },
                Metadata::default(),
                false
            ),
            Err(ShapeError::PendingIdMustBeDifferent)
        );
        let m = Movement::new(a, AccountId::generate(), asset, one, TransferCode::Expiry).unwrap();
        assert_eq!(
            Transfer::new(
                id,
                Action::Reserve {
                    movement: m,
                    timeout_seconds: None
                },
                Metadata::default(),
                false
            ),
            Err(ShapeError::ExpiryMustBeSinglePhase)
        );
        assert_eq!(Metadata::new("x".repeat(513)), Err(MetadataError::TooLong));
        assert_eq!(Metadata::new("a\0b"), Err(MetadataError::ControlCharacter));
    }
}
