//! The audit: every invariant of the spec checked over the whole database.
//!
//! [`crate::Store::audit_invariants`] reads everything at one instant and hands the rows to the checks
//! here; each breach names its invariant and the rows (transfer, fill, budget ids) that break
//! it. The books check ([`CheckReport`]) covers rules 1 and 2 and the stored balances; the
//! audit adds one hop (rule 7), the closed loop (rule 8), closed cycles (rule 9), the market's
//! fills and buybacks against their ledger chains, and hard budgets.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use credex_ledger::{AccountKind, AssetCode, TransferCode};
use serde::Serialize;
use uuid::Uuid;

use crate::CheckReport;

/// The columns every leg query reads: a journal row with its accounts' kinds and owners.
/// `{filter}` is replaced by a condition (the assets table is joined as `s`).
pub(crate) const LEG_SQL: &str = "SELECT t.seq, t.id, CAST(t.kind AS BIGINT) AS kind, \
     CAST(t.code AS BIGINT) AS code, t.asset, t.amount, t.timestamp, \
     t.debit_account_id, CAST(d.kind AS BIGINT) AS debit_kind, d.owner_org AS debit_org, \
     t.credit_account_id, CAST(c.kind AS BIGINT) AS credit_kind, c.owner_org AS credit_org \
     FROM transfers t \
     JOIN accounts d ON d.id = t.debit_account_id \
     JOIN accounts c ON c.id = t.credit_account_id \
     JOIN assets s ON s.code = t.asset \
     WHERE {filter} ORDER BY t.seq";

/// Rule 7: value leaves `acquired` (12) only for `spent` (4) or `expired` (5).
pub(crate) const ONE_HOP_FILTER: &str = "d.kind = 12 AND c.kind NOT IN (4, 5)";

/// Rule 8: CR (class 0) moves only between issuance, fees, spent, expired and wallet; tokens
/// (class 1) never enter the CR-only fees and wallet.
pub(crate) const CLOSED_LOOP_FILTER: &str = "(s.class = 0 AND (d.kind NOT IN (1, 3, 4, 5, 14) \
     OR c.kind NOT IN (1, 3, 4, 5, 14))) OR (s.class = 1 AND (d.kind IN (3, 14) OR c.kind IN (3, 14)))";

/// Accounts of a kind that may not hold their asset's class (the same table as above).
pub(crate) const MISPLACED_ACCOUNTS_SQL: &str =
    "SELECT a.id, a.asset, CAST(a.kind AS BIGINT) AS kind \
     FROM accounts a JOIN assets s ON s.code = a.asset \
     WHERE (s.class = 0 AND a.kind NOT IN (1, 3, 4, 5, 14)) \
        OR (s.class = 1 AND a.kind IN (3, 14)) ORDER BY a.id";

/// Rule 9: after its asset closed, only expiry (11) moves a cycle's tokens; voids (kind 3)
/// only release holds.
pub(crate) const CLOSED_CYCLE_FILTER: &str =
    "s.closed_at IS NOT NULL AND t.timestamp > s.closed_at AND t.code <> 11 AND t.kind <> 3";

/// Cycles marked closed whose token assets are still open in the ledger.
pub(crate) const OPEN_ASSETS_OF_CLOSED_CYCLES_SQL: &str = "SELECT y.cycle, s.code \
     FROM cycles y JOIN cycle_classes k ON k.cycle = y.cycle \
     JOIN assets s ON s.code = 'TOK.' || k.class || '.' || y.cycle \
     WHERE y.closed_at IS NOT NULL AND s.closed_at IS NULL ORDER BY y.cycle, s.code";

pub(crate) const FILLS_SQL: &str =
    "SELECT id, order_id, asset, listing_id, buyer_org, seller_org, \
     quantity, cost_micro_cr, fee_micro_cr, fee_payer, transfer_ids \
     FROM fills ORDER BY at, order_id, position";

pub(crate) const BUYBACKS_SQL: &str = "SELECT id, org_id, asset, quantity, payout_micro_cr, \
     transfer_ids FROM buybacks ORDER BY at, id";

/// Hard budgets whose recorded spend in a period passed their limit.
pub(crate) const BUDGETS_SQL: &str = "SELECT b.id, b.org_id, b.name, b.period, s.period_start, \
     s.spent_micro_cr, b.limit_micro_cr \
     FROM budget_spend s JOIN budgets b ON b.id = s.budget_id \
     WHERE b.hard AND s.spent_micro_cr > b.limit_micro_cr ORDER BY b.id, s.period_start";

/// A journal row with its accounts, as [`LEG_SQL`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LegRow {
    pub seq: i64,
    pub id: Uuid,
    pub kind: i64,
    pub code: i64,
    pub asset: String,
    pub amount: i64,
    pub timestamp: i64,
    pub debit_account: Uuid,
    pub debit_kind: i64,
    pub debit_org: Option<Uuid>,
    pub credit_account: Uuid,
    pub credit_kind: i64,
    pub credit_org: Option<Uuid>,
}

/// A fill as [`FILLS_SQL`] reads it.
#[derive(Debug, Clone)]
pub(crate) struct FillRow {
    pub id: Uuid,
    pub order_id: Uuid,
    pub asset: String,
    pub listing_id: Option<Uuid>,
    pub buyer: Uuid,
    pub seller: Option<Uuid>,
    pub quantity: i64,
    pub cost: i64,
    pub fee: i64,
    pub fee_payer: Option<String>,
    pub transfer_ids: String,
}

/// A buyback as [`BUYBACKS_SQL`] reads it.
#[derive(Debug, Clone)]
pub(crate) struct BuybackRow {
    pub id: Uuid,
    pub org: Uuid,
    pub asset: String,
    pub quantity: i64,
    pub payout: i64,
    pub transfer_ids: String,
}

pub(crate) fn kind_name(number: i64) -> String {
    i16::try_from(number)
        .ok()
        .and_then(AccountKind::from_number)
        .map_or_else(|| format!("kind#{number}"), |kind| kind.name().to_owned())
}

fn code_name(number: i64) -> String {
    i16::try_from(number)
        .ok()
        .and_then(TransferCode::from_number)
        .map_or_else(|| format!("code#{number}"), |code| code.name().to_owned())
}

/// A journal row that breaks a flow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowBreach {
    pub seq: i64,
    pub transfer_id: Uuid,
    pub code: String,
    pub asset: String,
    pub amount: i64,
    pub timestamp: i64,
    pub debit_account: Uuid,
    pub debit_kind: String,
    pub credit_account: Uuid,
    pub credit_kind: String,
}

impl From<&LegRow> for FlowBreach {
    fn from(row: &LegRow) -> Self {
        Self {
            seq: row.seq,
            transfer_id: row.id,
            code: code_name(row.code),
            asset: row.asset.clone(),
            amount: row.amount,
            timestamp: row.timestamp,
            debit_account: row.debit_account,
            debit_kind: kind_name(row.debit_kind),
            credit_account: row.credit_account,
            credit_kind: kind_name(row.credit_kind),
        }
    }
}

impl fmt::Display for FlowBreach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "transfer {} (seq {}, {}, {} {} at {}): {} {} -> {} {}",
            self.transfer_id,
            self.seq,
            self.code,
            self.amount,
            self.asset,
            self.timestamp,
            self.debit_kind,
            self.debit_account,
            self.credit_kind,
            self.credit_account
        )
    }
}

/// An account of a kind that may not hold its asset (rule 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MisplacedAccount {
    pub account_id: Uuid,
    pub asset: String,
    pub kind: String,
}

/// A cycle marked closed whose token asset still takes transfers (rule 9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenAssetOfClosedCycle {
    pub cycle: String,
    pub asset: String,
}

/// A market record (fill or buyback) that its ledger chain does not back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreach {
    /// `fill` or `buyback`.
    pub record: &'static str,
    pub id: Uuid,
    /// The order of a fill; none for a buyback.
    pub order_id: Option<Uuid>,
    pub problem: String,
}

/// A hard budget whose recorded spend in a period passed its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetBreach {
    pub budget_id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub period: String,
    pub period_start: i64,
    pub spent_micro_cr: i64,
    pub limit_micro_cr: i64,
}

/// What the audit found. [`AuditReport::is_ok`] holds when no invariant is broken.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Rules 1 and 2, and stored balances against the journal.
    pub books: CheckReport,
    /// Why the books check could not run (an account or journal row the ledger cannot read);
    /// `books` is then empty.
    pub books_unreadable: Option<String>,
    /// Rule 7: value moved out of `acquired` elsewhere than to `spent` or `expired`.
    pub one_hop: Vec<FlowBreach>,
    /// Rule 8: transfers touching an account kind that may not hold their asset.
    pub closed_loop: Vec<FlowBreach>,
    /// Rule 8: accounts of a kind that may not hold their asset.
    pub misplaced_accounts: Vec<MisplacedAccount>,
    /// Rule 9: non-expiry transfers of a token asset after it closed.
    pub closed_cycles: Vec<FlowBreach>,
    /// Rule 9: cycles marked closed with a token asset still open.
    pub open_assets_of_closed_cycles: Vec<OpenAssetOfClosedCycle>,
    /// Fills and buybacks whose recorded legs are missing, not posted, or move other values
    /// between other accounts than the record says.
    pub market_chains: Vec<ChainBreach>,
    /// Hard budgets whose recorded spend passed their limit.
    pub budgets: Vec<BudgetBreach>,
    /// How many fills and buybacks were checked.
    pub fills: usize,
    pub buybacks: usize,
    /// How many budget periods were checked.
    pub budget_periods: i64,
}

impl AuditReport {
    pub fn is_ok(&self) -> bool {
        self.books_unreadable.is_none() && self.books.is_ok() && self.breaches().is_empty()
    }

    /// One line per breach (the books' findings excepted: see [`AuditReport::books`]), each
    /// naming its invariant first, in a stable order.
    pub fn breaches(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for breach in &self.one_hop {
            lines.push(format!("one-hop (rule 7): {breach}"));
        }
        for breach in &self.closed_loop {
            lines.push(format!("closed-loop (rule 8): {breach}"));
        }
        for account in &self.misplaced_accounts {
            lines.push(format!(
                "closed-loop (rule 8): account {} is a {} account of {}",
                account.account_id, account.kind, account.asset
            ));
        }
        for breach in &self.closed_cycles {
            lines.push(format!("closed-cycle (rule 9): {breach}"));
        }
        for open in &self.open_assets_of_closed_cycles {
            lines.push(format!(
                "closed-cycle (rule 9): cycle {} is closed but its asset {} is open",
                open.cycle, open.asset
            ));
        }
        for breach in &self.market_chains {
            let order = breach
                .order_id
                .map(|order| format!(" (order {order})"))
                .unwrap_or_default();
            lines.push(format!(
                "market-chain: {} {}{order}: {}",
                breach.record, breach.id, breach.problem
            ));
        }
        for budget in &self.budgets {
            lines.push(format!(
                "hard-budget: budget {} ({:?}, org {}, {}) spent {} µCR in the period from {} \
                 over its limit of {} µCR",
                budget.budget_id,
                budget.name,
                budget.org_id,
                budget.period,
                budget.spent_micro_cr,
                budget.period_start,
                budget.limit_micro_cr
            ));
        }
        lines
    }
}

/// What one leg of a market chain is: asset, code, and both accounts' kinds and owners.
type Signature = (String, i64, i64, Option<Uuid>, i64, Option<Uuid>);

fn parse_ids(text: &str) -> Result<Vec<Uuid>, String> {
    let texts: Vec<String> =
        serde_json::from_str(text).map_err(|error| format!("unreadable transfer_ids: {error}"))?;
    texts
        .iter()
        .map(|text| {
            Uuid::parse_str(text).map_err(|error| format!("bad transfer id {text}: {error}"))
        })
        .collect()
}

/// Every transfer id the fills and buybacks name (unreadable lists are reported later).
pub(crate) fn chain_ids(fills: &[FillRow], buybacks: &[BuybackRow]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = fills
        .iter()
        .map(|fill| fill.transfer_ids.as_str())
        .chain(buybacks.iter().map(|buyback| buyback.transfer_ids.as_str()))
        .filter_map(|text| parse_ids(text).ok())
        .flatten()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

const TRANSFER_SINGLE: i64 = 0;
const TRANSFER_POST: i64 = 2;

fn kind(kind: AccountKind) -> i64 {
    i64::from(kind.number())
}

fn code(code: TransferCode) -> i64 {
    i64::from(code.number())
}

fn show(legs: &BTreeMap<Signature, i128>) -> String {
    let parts: Vec<String> = legs
        .iter()
        .map(
            |((asset, code, debit, debit_org, credit, credit_org), amount)| {
                let owner = |org: &Option<Uuid>| {
                    org.map_or_else(|| "provider".to_owned(), |org| org.to_string())
                };
                format!(
                    "{amount} {asset} {} {}({}) -> {}({})",
                    code_name(*code),
                    kind_name(*debit),
                    owner(debit_org),
                    kind_name(*credit),
                    owner(credit_org)
                )
            },
        )
        .collect();
    format!("[{}]", parts.join("; "))
}

/// Compares the legs a record names with what it says they move. `normalize` maps a leg's
/// signature onto the expected one where the record allows a choice (the provider's tokens
/// from treasury or issuance; a buyback from alloc or escrow).
fn check_chain(
    text: &str,
    legs: &HashMap<Uuid, LegRow>,
    expected: &BTreeMap<Signature, i128>,
    normalize: impl Fn(Signature) -> Signature,
) -> Result<(), String> {
    let ids = parse_ids(text)?;
    let mut problems = Vec::new();
    let mut actual: BTreeMap<Signature, i128> = BTreeMap::new();
    for id in &ids {
        let Some(leg) = legs.get(id) else {
            problems.push(format!("transfer {id} is not in the journal"));
            continue;
        };
        if leg.kind != TRANSFER_SINGLE && leg.kind != TRANSFER_POST {
            problems.push(format!("transfer {id} is not posted (kind {})", leg.kind));
            continue;
        }
        let signature = normalize((
            leg.asset.clone(),
            leg.code,
            leg.debit_kind,
            leg.debit_org,
            leg.credit_kind,
            leg.credit_org,
        ));
        *actual.entry(signature).or_default() += i128::from(leg.amount);
    }
    if problems.is_empty() && &actual != expected {
        problems.push(format!(
            "its legs move {} but it records {}",
            show(&actual),
            show(expected)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Checks every fill against its chain: tokens `escrow(seller) → acquired(buyer)`, the cost
/// `wallet(buyer) → wallet(seller)`, the fee `wallet(payer) → fees`; from the provider, tokens
/// `treasury | issuance → acquired(buyer)` and the cost `wallet(buyer) → spent`.
pub(crate) fn check_fills(fills: &[FillRow], legs: &HashMap<Uuid, LegRow>) -> Vec<ChainBreach> {
    use AccountKind::*;
    let credit = AssetCode::credit().as_str().to_owned();
    let mut breaches = Vec::new();
    for fill in fills {
        let mut expected: BTreeMap<Signature, i128> = BTreeMap::new();
        let mut put = |signature: Signature, amount: i64| {
            if amount > 0 {
                *expected.entry(signature).or_default() += i128::from(amount);
            }
        };
        let buyer = Some(fill.buyer);
        match fill.seller {
            Some(seller) => {
                let seller = Some(seller);
                let trade = code(TransferCode::Trade);
                put(
                    (
                        fill.asset.clone(),
                        trade,
                        kind(Escrow),
                        seller,
                        kind(Acquired),
                        buyer,
                    ),
                    fill.quantity,
                );
                put(
                    (
                        credit.clone(),
                        trade,
                        kind(Wallet),
                        buyer,
                        kind(Wallet),
                        seller,
                    ),
                    fill.cost,
                );
                let payer = match fill.fee_payer.as_deref() {
                    Some("buyer") => buyer,
                    _ => seller,
                };
                put(
                    (
                        credit.clone(),
                        code(TransferCode::Fee),
                        kind(Wallet),
                        payer,
                        kind(Fees),
                        None,
                    ),
                    fill.fee,
                );
            }
            None => {
                let sale = code(TransferCode::EmergencySale);
                put(
                    (
                        fill.asset.clone(),
                        sale,
                        kind(Treasury),
                        None,
                        kind(Acquired),
                        buyer,
                    ),
                    fill.quantity,
                );
                put(
                    (credit.clone(), sale, kind(Wallet), buyer, kind(Spent), None),
                    fill.cost,
                );
            }
        }
        let provider = fill.seller.is_none();
        let normalize = |mut signature: Signature| {
            if provider && signature.2 == kind(Issuance) && signature.3.is_none() {
                signature.2 = kind(Treasury);
            }
            signature
        };
        if let Err(problem) = check_chain(&fill.transfer_ids, legs, &expected, normalize) {
            breaches.push(ChainBreach {
                record: "fill",
                id: fill.id,
                order_id: Some(fill.order_id),
                problem: match fill.listing_id {
                    Some(listing) => format!("listing {listing}: {problem}"),
                    None => format!("provider sale: {problem}"),
                },
            });
        }
    }
    breaches
}

/// Checks every buyback against its chain: tokens `alloc | escrow(org) → treasury`, the payout
/// `issuance → wallet(org)`.
pub(crate) fn check_buybacks(
    buybacks: &[BuybackRow],
    legs: &HashMap<Uuid, LegRow>,
) -> Vec<ChainBreach> {
    use AccountKind::*;
    let credit = AssetCode::credit().as_str().to_owned();
    let buyback = code(TransferCode::Buyback);
    let mut breaches = Vec::new();
    for record in buybacks {
        let org = Some(record.org);
        let mut expected: BTreeMap<Signature, i128> = BTreeMap::new();
        expected.insert(
            (
                record.asset.clone(),
                buyback,
                kind(Alloc),
                org,
                kind(Treasury),
                None,
            ),
            i128::from(record.quantity),
        );
        expected.insert(
            (
                credit.clone(),
                buyback,
                kind(Issuance),
                None,
                kind(Wallet),
                org,
            ),
            i128::from(record.payout),
        );
        let normalize = |mut signature: Signature| {
            if signature.2 == kind(Escrow) && signature.1 == buyback {
                signature.2 = kind(Alloc);
            }
            signature
        };
        if let Err(problem) = check_chain(&record.transfer_ids, legs, &expected, normalize) {
            breaches.push(ChainBreach {
                record: "buyback",
                id: record.id,
                order_id: None,
                problem,
            });
        }
    }
    breaches
}
