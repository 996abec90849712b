//! The Credex ledger core: a double-entry, multi-asset ledger as pure functions over domain
//! types.
//!
//! Architecture invariant: this crate does no I/O. It reads no clock (time comes in as a
//! [`Timestamp`]), no randomness, no database. Storage (`credex-store`) loads the state a batch
//! needs, calls [`engine::apply`], and writes what it returns.
//!
//! The types are the rules: an [`Account`] can only be one of the spec's kinds for an asset class
//! that kind may hold; an [`Amount`] is positive; a [`Transfer`] is well-formed whatever the
//! ledger's state. What depends on state is decided by the engine and answered with one precise
//! [`TransferError`] per failure.

pub mod account;
pub mod amount;
pub mod asset;
pub mod clock;
pub mod engine;
pub mod error;
pub mod ids;
pub mod transfer;

pub use account::{Account, AccountError, AccountKind, Balance, Owner};
pub use amount::{Amount, AmountError, AMOUNT_MAX};
pub use asset::{AssetClass, AssetCode, AssetCodeError, AssetState};
pub use clock::{Clock, ManualClock, Timestamp};
pub use engine::{
    BalanceDelta, BatchInput, BatchOutcome, EngineError, LoadedAccount, Requirements, BATCH_MAX,
};
pub use error::{TransferError, TransferResult};
pub use ids::{AccountId, IdError, OrgId, TransferId};
pub use transfer::{
    Action, Metadata, MetadataError, Movement, PendingRecord, PendingState, ShapeError, Transfer,
    TransferCode, TransferKind, TransferRecord,
};
