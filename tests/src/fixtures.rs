//! Small fixtures shared by test suites outside this crate.

use credex_ledger::{
    AccountKind, Action, Amount, AssetCode, Metadata, Movement, OrgId, Owner, Timestamp, Transfer,
    TransferCode, TransferId,
};
use credex_store::{AuditAction, AuditEntry, Ledger};

/// An audit entry for `action` (which must parse), at the epoch, by `test`, with no details.
pub fn audit(action: &str) -> AuditEntry {
    AuditEntry::new(
        Timestamp::EPOCH,
        AuditAction::parse(action).expect("an action"),
        "test",
        serde_json::json!({}),
    )
    .expect("an entry")
}

/// Gives `org` `amount` µCR: a top-up from the provider's CR `issuance` to the org's `wallet`
/// (making the CR asset and both accounts when missing), which must commit.
pub async fn top_up(ledger: &Ledger, org: OrgId, amount: u64) {
    let credit = AssetCode::credit();
    ledger.ensure_asset(&credit).await.expect("CR");
    let issuance = ledger
        .ensure_account(&credit, Owner::Provider, AccountKind::Issuance)
        .await
        .expect("issuance");
    let wallet = ledger
        .ensure_account(&credit, Owner::Org(org), AccountKind::Wallet)
        .await
        .expect("wallet");
    let movement = Movement::new(
        issuance.account.id(),
        wallet.account.id(),
        credit,
        Amount::new(amount).expect("an amount"),
        TransferCode::TopUp,
    )
    .expect("a movement");
    let transfer = Transfer::new(
        TransferId::generate(),
        Action::Move(movement),
        Metadata::new("top-up").expect("metadata"),
        false,
    )
    .expect("a transfer");
    let results = ledger
        .create_transfers(vec![transfer])
        .await
        .expect("commit");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}
