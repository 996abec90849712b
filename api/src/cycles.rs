//! Billing cycles: opening one issues every org its plan's allotments; closing one expires
//! every remaining balance of the cycle's token assets.
//!
//! Both are jobs that may run in several processes at once, again after a crash half-way, or
//! twice in a row, and end in the same state as one uninterrupted run. Every transfer they
//! make has an id derived from what it is for — an allotment from (cycle, org, class), an
//! expiry from (asset, account, the account's posted debits when it was read) — so a second
//! run's transfers are answered `exists` by the ledger instead of moving value twice. The
//! store's bookkeeping (`cycle_allotments`, `opened_at`, `closed_at`) only saves work; the
//! ledger is the truth.
//!
//! Closing first cancels each token asset's open listings (`escrow → alloc`, as the sellers'
//! own cancels would, with the same derived ids), then closes the asset (rule 9: from then on
//! it takes only expiry transfers, and the close waits for every transaction touching it),
//! marks any listing still open as expired, then expires, account by account,
//! what each org account and the treasury could still give. Pending debits are not expired
//! with the rest: a hold voided later frees tokens that the next run expires (with a new id,
//! as the posted debits differ); `credex serve` closes the cycles of the last 40 days again
//! every hour for this.

use std::collections::BTreeMap;
use std::fmt;

use credex_ledger::{
    AccountId, AccountKind, Action, Amount, AssetCode, Metadata, Movement, OrgId, Owner, Timestamp,
    Transfer, TransferCode, TransferId,
};
use credex_store::{CycleError, CycleRecord, Ledger, Plan, StoreError};
use sha2::{Digest, Sha256};

/// How many orgs or accounts one step of a job handles.
const PAGE: u32 = 500;

/// A billing cycle: a calendar month in UTC, written `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CycleId {
    year: u16,
    month: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a cycle is a month written YYYY-MM, from 1970-01 to 9998-12")]
pub struct CycleIdError;

impl CycleId {
    pub fn parse(text: &str) -> Result<Self, CycleIdError> {
        let bytes = text.as_bytes();
        if bytes.len() != 7 || bytes[4] != b'-' {
            return Err(CycleIdError);
        }
        let digits = |range: std::ops::Range<usize>| -> Option<u16> {
            text.get(range.clone())
                .filter(|part| part.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|part| part.parse().ok())
        };
        let year = digits(0..4).ok_or(CycleIdError)?;
        let month = digits(5..7).ok_or(CycleIdError)?;
        let month = u8::try_from(month).map_err(|_| CycleIdError)?;
        if !(1970..=9998).contains(&year) || !(1..=12).contains(&month) {
            return Err(CycleIdError);
        }
        Ok(Self { year, month })
    }

    /// The cycle an instant falls in.
    pub fn of(at: Timestamp) -> Self {
        let date = credex_pricing::date::format_date(at);
        Self::parse(date.get(..7).unwrap_or("1970-01")).unwrap_or(Self {
            year: 1970,
            month: 1,
        })
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year.saturating_add(1).min(9998),
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Midnight UTC of the month's first day.
    pub fn starts_at(self) -> Timestamp {
        let text = format!("{:04}-{:02}-01", self.year, self.month);
        credex_pricing::date::parse_date(&text).unwrap_or(Timestamp::EPOCH)
    }

    /// The next cycle's start: the first instant after this cycle.
    pub fn ends_at(self) -> Timestamp {
        if self.year == 9998 && self.month == 12 {
            return credex_pricing::date::parse_date("9999-01-01").unwrap_or(Timestamp::EPOCH);
        }
        self.next().starts_at()
    }

    /// The token asset of a class in this cycle.
    pub fn asset(self, class: &str) -> Result<AssetCode, CycleJobError> {
        AssetCode::token(class, &self.to_string())
            .map_err(|error| CycleJobError::Invalid(format!("class {class:?}: {error}")))
    }
}

impl fmt::Display for CycleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CycleJobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cycle(#[from] CycleError),
    #[error("the cycle {0} has ended: its allotments can no longer be issued")]
    Ended(CycleId),
    #[error("the cycle {0} has not ended yet: it closes at its end")]
    NotEnded(CycleId),
    #[error("the ledger refused a transfer of the job: {0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
}

/// What an open run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct OpenReport {
    /// Orgs whose allotments this run recorded.
    pub orgs: u64,
    /// Allotment transfers this run made (replays of an earlier run's are not counted).
    pub transfers: u64,
}

/// What a close run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct CloseReport {
    /// Token assets closed by this run.
    pub assets_closed: u64,
    /// Expiry transfers this run made.
    pub expiries: u64,
    /// Tokens they expired.
    pub tokens_expired: u64,
}

/// A transfer id derived from what the transfer is for: the same purpose, the same id.
pub fn derived_id(parts: &[&str]) -> TransferId {
    let digest = digest_of(parts);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    version_8(bytes)
}

/// [`derived_id`] for a transfer that belongs to an instant: the id starts with that instant's
/// milliseconds since the epoch (as a UUID v7's does) and goes on with the purpose's hash.
///
/// The same purpose and instant still give the same id, and ids made close in time sort close
/// together: the journal's primary-key index takes them near its right edge instead of on a
/// random leaf page each, which after every checkpoint would first write that page whole to the
/// write-ahead log. Usage charges, the journal's busiest writer, take their ids from this.
pub fn derived_id_at(at: Timestamp, parts: &[&str]) -> TransferId {
    let digest = digest_of(parts);
    let millis = u64::try_from(at.as_micros().div_euclid(1_000)).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&digest[..10]);
    version_8(bytes)
}

fn digest_of(parts: &[&str]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().into()
}

fn version_8(bytes: [u8; 16]) -> TransferId {
    let uuid = uuid::Uuid::new_v8(bytes);
    // A version-8 UUID is never the nil or the max UUID.
    TransferId::new(uuid).unwrap_or_else(|_| TransferId::generate())
}

fn market_error(error: crate::market::MarketError) -> CycleJobError {
    match error {
        crate::market::MarketError::Store(error) => CycleJobError::Store(error),
        other => CycleJobError::Refused(other.to_string()),
    }
}

fn metadata(text: String) -> Result<Metadata, CycleJobError> {
    Metadata::new(text).map_err(|error| CycleJobError::Invalid(error.to_string()))
}

/// Answers whether every result is a success or a replay; the first refusal otherwise.
fn count_new(results: &[credex_ledger::TransferResult]) -> Result<u64, CycleJobError> {
    let mut made = 0;
    for result in results {
        match result {
            Ok(()) => made += 1,
            Err(error) if error.is_exists() => {}
            Err(error) => return Err(CycleJobError::Refused(error.to_string())),
        }
    }
    Ok(made)
}

/// Issues the cycle's allotments to every org created before the cycle ends that has not had
/// them, then marks the cycle opened. Refuses a cycle that has ended.
pub async fn open_cycle(
    ledger: &Ledger,
    cycle: CycleId,
    now: Timestamp,
) -> Result<OpenReport, CycleJobError> {
    let store = ledger.store();
    if now >= cycle.ends_at() {
        return Err(CycleJobError::Ended(cycle));
    }
    let name = cycle.to_string();
    let record = store
        .ensure_cycle(&name, cycle.starts_at(), cycle.ends_at())
        .await?;
    if record.closed_at.is_some() {
        return Err(CycleJobError::Ended(cycle));
    }
    // Per plan: (class, tokens) of the classes the cycle knows.
    let classes: BTreeMap<String, u64> = store.cycle_classes(&name).await?.into_iter().collect();
    let mut per_plan: BTreeMap<&'static str, Vec<(String, u64)>> = BTreeMap::new();
    for (class, allotment) in store.allotments().await? {
        if allotment.tokens_per_cycle > 0 && classes.contains_key(&class) {
            per_plan
                .entry(allotment.plan.as_str())
                .or_default()
                .push((class, allotment.tokens_per_cycle));
        }
    }
    // The provider's side of every asset: made once per run.
    let mut issuance: BTreeMap<String, (AssetCode, AccountId)> = BTreeMap::new();
    for class in classes.keys() {
        let asset = cycle.asset(class)?;
        ledger.ensure_asset(&asset).await?;
        let account = ledger
            .ensure_account(&asset, Owner::Provider, AccountKind::Issuance)
            .await?;
        issuance.insert(class.clone(), (asset, account.account.id()));
    }

    let mut report = OpenReport::default();
    let mut after = None;
    loop {
        let orgs = store
            .orgs_to_allot(&name, cycle.ends_at(), after, PAGE)
            .await?;
        let Some(&(last, _)) = orgs.last() else { break };
        for (org, plan) in orgs {
            report.transfers += allot(ledger, cycle, org, plan, &per_plan, &issuance).await?;
            store.mark_allotted(&name, org, now).await?;
            report.orgs += 1;
        }
        after = Some(last);
    }
    store.mark_opened(&name, now).await?;
    tracing::info!(cycle = %name, orgs = report.orgs, transfers = report.transfers, "cycle opened");
    Ok(report)
}

async fn allot(
    ledger: &Ledger,
    cycle: CycleId,
    org: OrgId,
    plan: Plan,
    per_plan: &BTreeMap<&'static str, Vec<(String, u64)>>,
    issuance: &BTreeMap<String, (AssetCode, AccountId)>,
) -> Result<u64, CycleJobError> {
    let Some(grants) = per_plan.get(plan.as_str()) else {
        return Ok(0);
    };
    let mut transfers = Vec::new();
    for (class, tokens) in grants {
        let Some((asset, from)) = issuance.get(class) else {
            continue;
        };
        let alloc = ledger
            .ensure_account(asset, Owner::Org(org), AccountKind::Alloc)
            .await?;
        let amount = Amount::new(*tokens)
            .map_err(|error| CycleJobError::Invalid(format!("allotment of {class}: {error}")))?;
        let movement = Movement::new(
            *from,
            alloc.account.id(),
            asset.clone(),
            amount,
            TransferCode::Allotment,
        )
        .map_err(|error| CycleJobError::Invalid(error.to_string()))?;
        let cycle_name = cycle.to_string();
        let org_name = org.to_string();
        let id = derived_id(&["allotment", &cycle_name, &org_name, class]);
        let transfer = Transfer::new(
            id,
            Action::Move(movement),
            metadata(format!(
                "allotment {cycle_name} {class} ({})",
                plan.as_str()
            ))?,
            false,
        )
        .map_err(|error| CycleJobError::Invalid(error.to_string()))?;
        transfers.push(transfer);
    }
    let results = ledger.create_transfers(transfers).await?;
    count_new(&results)
}

/// Closes every token asset of the cycle and expires what its accounts could still give,
/// then marks the cycle closed. Refuses a cycle that has not ended. Running it again after it
/// finished changes nothing; after a crash it finishes the work.
pub async fn close_cycle(
    ledger: &Ledger,
    cycle: CycleId,
    now: Timestamp,
) -> Result<CloseReport, CycleJobError> {
    let store = ledger.store();
    if now < cycle.ends_at() {
        return Err(CycleJobError::NotEnded(cycle));
    }
    let name = cycle.to_string();
    let record: CycleRecord = store
        .ensure_cycle(&name, cycle.starts_at(), cycle.ends_at())
        .await?;
    let mut report = CloseReport::default();
    for (class, _) in store.cycle_classes(&name).await? {
        let asset = cycle.asset(&class)?;
        // Open listings go back to their sellers' `alloc` while the asset still takes them.
        crate::market::cancel_open_listings(ledger, &asset)
            .await
            .map_err(market_error)?;
        match store.close_asset(&asset).await? {
            credex_store::CloseOutcome::Closed => report.assets_closed += 1,
            credex_store::CloseOutcome::NotFound => continue,
            credex_store::CloseOutcome::AlreadyClosed | credex_store::CloseOutcome::NotACycle => {}
        }
        // A listing made between the cancellations and the close (a clock behind the
        // others') leaves its tokens in `escrow`, which the expiry below takes.
        store.expire_open_listings(&asset, now).await?;
        let expired = ledger
            .ensure_account(&asset, Owner::Provider, AccountKind::Expired)
            .await?
            .account
            .id();
        let mut after = None;
        loop {
            let ids = store.asset_accounts(asset.as_str(), after, PAGE).await?;
            let Some(&last) = ids.last() else { break };
            let views = store.accounts(&ids).await?;
            let mut transfers = Vec::new();
            let mut tokens = Vec::new();
            for view in views {
                let kind = view.account.kind();
                if !matches!(
                    kind,
                    AccountKind::Alloc
                        | AccountKind::Acquired
                        | AccountKind::Escrow
                        | AccountKind::Treasury
                ) {
                    continue;
                }
                let available = view.balance.available();
                let Ok(available) = u64::try_from(available) else {
                    continue;
                };
                if available == 0 {
                    continue;
                }
                let amount = Amount::new(available)
                    .map_err(|error| CycleJobError::Invalid(error.to_string()))?;
                let movement = Movement::new(
                    view.account.id(),
                    expired,
                    asset.clone(),
                    amount,
                    TransferCode::Expiry,
                )
                .map_err(|error| CycleJobError::Invalid(error.to_string()))?;
                let posted = view.balance.debits_posted.to_string();
                let account = view.account.id().to_string();
                let id = derived_id(&["expiry", asset.as_str(), &account, &posted]);
                transfers.push(
                    Transfer::new(
                        id,
                        Action::Move(movement),
                        metadata(format!("cycle {name} closed: {kind} expires"))?,
                        false,
                    )
                    .map_err(|error| CycleJobError::Invalid(error.to_string()))?,
                );
                tokens.push(available);
            }
            let results = ledger.create_transfers(transfers).await?;
            for (result, amount) in results.iter().zip(tokens) {
                match result {
                    Ok(()) => {
                        report.expiries += 1;
                        report.tokens_expired = report.tokens_expired.saturating_add(amount);
                    }
                    Err(error) if error.is_exists() => {}
                    Err(error) => return Err(CycleJobError::Refused(error.to_string())),
                }
            }
            after = Some(last);
        }
    }
    if record.closed_at.is_none() {
        store.mark_closed(&name, now).await?;
    }
    tracing::info!(cycle = %name, ?report, "cycle closed");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_months() {
        let november = CycleId::parse("2026-11").expect("a cycle");
        assert_eq!(november.to_string(), "2026-11");
        assert_eq!(november.next().to_string(), "2026-12");
        assert_eq!(november.next().next().to_string(), "2027-01");
        assert_eq!(november.ends_at(), november.next().starts_at());
        assert_eq!(CycleId::of(november.starts_at()), november);
        assert_eq!(CycleId::of(november.ends_at().plus_micros(-1)), november);
        for bad in [
            "2026-13",
            "2026-00",
            "26-11",
            "2026/11",
            "2026-1",
            "1969-12",
            "２026-11",
        ] {
            assert!(CycleId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derived_id(&["allotment", "2026-11", "org", "pro"]);
        assert_eq!(a, derived_id(&["allotment", "2026-11", "org", "pro"]));
        assert_ne!(a, derived_id(&["allotment", "2026-11", "org", "std"]));
        // Parts are length-prefixed: moving a boundary changes the id.
        assert_ne!(derived_id(&["ab", "c"]), derived_id(&["a", "bc"]));
    }

    #[test]
    fn ids_derived_at_an_instant_are_stable_distinct_and_sort_by_it() {
        let at = Timestamp::from_micros(1_795_000_000_123_456);
        let a = derived_id_at(at, &["usage", "org", "event", "wallet"]);
        assert_eq!(a, derived_id_at(at, &["usage", "org", "event", "wallet"]));
        assert_ne!(a, derived_id_at(at, &["usage", "org", "event", "alloc"]));
        assert_ne!(a, derived_id(&["usage", "org", "event", "wallet"]));
        let uuid = a.as_uuid();
        assert_eq!(uuid.get_version_num(), 8);
        assert_eq!(
            &uuid.as_bytes()[..6],
            &1_795_000_000_123u64.to_be_bytes()[2..]
        );
        // A millisecond later sorts after, whatever the purpose.
        let later = Timestamp::from_micros(1_795_000_000_124_000);
        for purpose in ["a", "b", "c", "d"] {
            assert!(derived_id_at(later, &[purpose]).as_uuid() > uuid);
        }
        // Before the epoch: the smallest prefix, still a valid id.
        let early = derived_id_at(Timestamp::from_micros(-5), &["x"]);
        assert_eq!(&early.as_uuid().as_bytes()[..6], &[0; 6]);
    }
}
