//! Statements: what an org held and what moved it in one billing cycle, read back from the
//! ledger, classified, and proven to add up.
//!
//! A statement of cycle `C` covers two kinds of asset, each over its own window:
//!
//! - `CR`, from the cycle's start to its end (to the statement's instant while the cycle is
//!   open): the wallet's balance at both ends and every movement between;
//! - the token assets of cycle `C` (`TOK.<class>.C`) over their whole life, from the asset's
//!   creation (its allotments, even one issued before the cycle started) to the statement's
//!   instant, so the expiry at the cycle's close — which happens after the cycle has ended —
//!   is on the statement of the cycle it ends.
//!
//! So every posted transfer of an org appears on exactly one statement: a `CR` one on the
//! statement of the month it happened in, a token one on the statement of its asset's cycle.
//!
//! Balances are posted balances (`credits − debits`); holds (pending debits) are shown beside
//! them. A balance "at" an instant counts every transfer strictly before it. Every account's
//! figures must reconcile — opening + credits − debits = closing, where the credits and debits
//! are the movements listed and the closing balance is the ledger's own (spec rule 10) — or
//! [`build`] answers [`StatementError::Unreconciled`] instead of a wrong statement.
//!
//! Architecture invariant: [`assemble`] is pure (no I/O, no clock); [`build`] only gathers
//! what it needs from the store in one snapshot read
//! ([`credex_store::StatementStore::statement_rows`]).

pub mod csv;
pub mod pdf;

use std::collections::BTreeMap;

use credex_ledger::{
    Account, AccountKind, AssetClass, AssetCode, Balance, OrgId, Owner, Timestamp, TransferCode,
};
use credex_store::{
    Attribution, Flow, Org, Side, StatementRows, StatementWindow, Store, StoreError,
    STATEMENT_ACCOUNTS_MAX,
};

use crate::cycles::CycleId;

/// The most cycles a list of an org's statements names.
pub const STATEMENT_LIST_MAX: usize = 120;

/// Where a cycle stands when its statement is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleState {
    /// The cycle has not ended: figures run to the statement's instant.
    Open,
    /// The cycle has ended but has not been closed: its tokens have not expired yet.
    Ended,
    /// The cycle has been closed: its tokens have expired.
    Closed,
}

impl CycleState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Ended => "ended",
            Self::Closed => "closed",
        }
    }
}

/// The unit an asset is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    MicroCr,
    Tokens,
}

impl Unit {
    pub fn of(asset: &AssetCode) -> Self {
        match asset.class() {
            AssetClass::Credit => Self::MicroCr,
            AssetClass::Token => Self::Tokens,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::MicroCr => "micro_cr",
            Self::Tokens => "tokens",
        }
    }

    /// An amount as text: µCR as CR with six decimals (`-1.250000`), tokens as they are.
    /// Exact: integer arithmetic only.
    pub fn text(self, amount: i128) -> String {
        match self {
            Self::Tokens => amount.to_string(),
            Self::MicroCr => {
                let sign = if amount < 0 { "-" } else { "" };
                let magnitude = amount.unsigned_abs();
                format!(
                    "{sign}{}.{:06}",
                    magnitude / 1_000_000,
                    magnitude % 1_000_000
                )
            }
        }
    }
}

/// The kinds of movement a statement groups its lines by, in the order it shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SectionKind {
    Allotments,
    Credits,
    Usage,
    Trades,
    Fees,
    ProviderSales,
    Buybacks,
    Listings,
    Expiry,
    Corrections,
}

impl SectionKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Allotments => "allotments",
            Self::Credits => "credits",
            Self::Usage => "usage",
            Self::Trades => "trades",
            Self::Fees => "fees",
            Self::ProviderSales => "provider_sales",
            Self::Buybacks => "buybacks",
            Self::Listings => "listings",
            Self::Expiry => "expiry",
            Self::Corrections => "corrections",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Allotments => "Allotments received",
            Self::Credits => "Grants and top-ups",
            Self::Usage => "Usage by model",
            Self::Trades => "Market trades",
            Self::Fees => "Market fees",
            Self::ProviderSales => "Emergency credits bought from the provider",
            Self::Buybacks => "Buybacks (sold to the provider)",
            Self::Listings => "Listings (tokens moved in and out of escrow)",
            Self::Expiry => "Expiry at the cycle's close",
            Self::Corrections => "Corrections and other transfers",
        }
    }
}

/// One account of the org over its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountStatement {
    pub asset: AssetCode,
    pub kind: AccountKind,
    /// The balance at this instant (every transfer before it) opens the window…
    pub opening_at: Timestamp,
    /// …and the balance at this one closes it.
    pub closing_at: Timestamp,
    pub opening: i128,
    /// Posted credits in the window.
    pub credits: u64,
    /// Posted debits in the window.
    pub debits: u64,
    pub closing: i128,
    /// Holds (pending debits) at `closing_at`.
    pub held: u64,
}

impl AccountStatement {
    pub fn unit(&self) -> Unit {
        Unit::of(&self.asset)
    }
}

/// Movements of one kind on one account, summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub asset: AssetCode,
    pub kind: AccountKind,
    /// What moved: `allotment`, a model id, `bought`, `sold`, `on sales`, …
    pub item: String,
    /// How many transfers.
    pub count: u64,
    /// Signed: into the account positive, out of it negative.
    pub amount: i128,
}

/// A section's lines and its total per account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: SectionKind,
    pub lines: Vec<Line>,
    /// (asset, account kind) → the sum of the section's lines on that account.
    pub totals: Vec<(AssetCode, AccountKind, i128)>,
}

/// An org's statement of one cycle; see the module's documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub org: OrgId,
    pub org_name: String,
    pub cycle: CycleId,
    pub state: CycleState,
    pub generated_at: Timestamp,
    pub accounts: Vec<AccountStatement>,
    /// Only sections with lines, in [`SectionKind`] order.
    pub sections: Vec<Section>,
}

impl Statement {
    /// The cycle's start.
    pub fn period_start(&self) -> Timestamp {
        self.cycle.starts_at()
    }

    /// The cycle's end (the next one's start).
    pub fn period_end(&self) -> Timestamp {
        self.cycle.ends_at()
    }

    /// A filename for the statement: ASCII letters, digits and hyphens only.
    pub fn file_stem(&self) -> String {
        format!("credex-statement-{}-{}", self.org, self.cycle)
    }
}

/// One sentence on what the windows are, for every rendering.
pub const WINDOWS_NOTE: &str = "CR: from the cycle's start to its end (to the statement's \
    instant while the cycle is open). Tokens of the cycle: their whole life, from issuance to \
    expiry at the cycle's close. A balance at an instant counts every transfer before it.";

#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the org or the cycle failed.
    #[error("reading the statement's org or cycle failed: {0}")]
    Read(String),
    #[error("the statement does not reconcile: {0}")]
    Unreconciled(String),
}

/// Whether the org has a statement of `cycle` at `now`: the cycle has started, and it had not
/// ended when the org was made.
pub fn exists(org: &Org, cycle: CycleId, now: Timestamp) -> bool {
    cycle.starts_at() <= now && cycle.ends_at() > org.created_at
}

/// The cycles the org has statements of at `now`, newest first, at most
/// [`STATEMENT_LIST_MAX`].
pub fn cycles_of(org: &Org, now: Timestamp) -> Vec<CycleId> {
    let first = CycleId::of(org.created_at);
    let mut cycles = Vec::new();
    let mut cycle = first;
    while cycle.starts_at() <= now {
        cycles.push(cycle);
        let next = cycle.next();
        if next == cycle {
            break;
        }
        cycle = next;
    }
    cycles.reverse();
    cycles.truncate(STATEMENT_LIST_MAX);
    cycles
}

/// The cycle a token asset belongs to (`TOK.<class>.<cycle>`); none for `CR`.
fn cycle_of_asset(asset: &AssetCode) -> Option<&str> {
    match asset.class() {
        AssetClass::Credit => None,
        AssetClass::Token => asset.as_str().splitn(3, '.').nth(2),
    }
}

/// Reads and assembles the org's statement of `cycle` as of `now`.
pub async fn build(
    store: &dyn Store,
    org_id: OrgId,
    cycle: CycleId,
    now: Timestamp,
) -> Result<Statement, StatementError> {
    let org = store
        .org(org_id)
        .await
        .map_err(|error| StatementError::Read(error.to_string()))?
        .ok_or_else(|| StatementError::NotFound("no such org".to_owned()))?;
    if !exists(&org, cycle, now) {
        return Err(StatementError::NotFound(format!(
            "the org has no statement of cycle {cycle}: it has not started, or ended before the org was made"
        )));
    }
    let closed = store
        .cycle(&cycle.to_string())
        .await
        .map_err(|error| StatementError::Read(error.to_string()))?
        .and_then(|record| record.closed_at);
    let state = match closed {
        Some(_) => CycleState::Closed,
        None if now >= cycle.ends_at() => CycleState::Ended,
        None => CycleState::Open,
    };
    let created: BTreeMap<AssetCode, Timestamp> = store
        .assets()
        .await?
        .into_iter()
        .map(|asset| (asset.code, asset.created_at))
        .collect();
    let name = cycle.to_string();
    let credit_until = now.min(cycle.ends_at());
    let mut windows = Vec::new();
    let mut accounts = Vec::new();
    for view in store.accounts_of(Owner::Org(org_id)).await? {
        let asset = view.account.asset();
        let (from, until) = match cycle_of_asset(asset) {
            None => (cycle.starts_at(), credit_until),
            Some(of) if of == name => {
                let from = created.get(asset).copied().unwrap_or(cycle.starts_at());
                (from, now.max(from))
            }
            Some(_) => continue,
        };
        windows.push(StatementWindow {
            account: view.account.id(),
            from,
            // Inclusive: a balance "at `until`" counts what came before it.
            to: until.plus_micros(-1),
        });
        accounts.push(view.account);
    }
    if windows.len() > STATEMENT_ACCOUNTS_MAX {
        return Err(StoreError::Corrupt(format!(
            "the org has more than {STATEMENT_ACCOUNTS_MAX} accounts in one cycle"
        ))
        .into());
    }
    let rows = store.statement_rows(org_id, &windows).await?;
    assemble(&org, cycle, state, now, &accounts, &rows)
}

/// The section and item of a flow on an account of `kind`.
fn classify(flow: &Flow, token: bool) -> (SectionKind, String) {
    let item = |text: &str| text.to_owned();
    match (flow.code, flow.side) {
        (TransferCode::Allotment, _) => (SectionKind::Allotments, item("allotment")),
        (TransferCode::Grant, _) => (SectionKind::Credits, item("grant")),
        (TransferCode::TopUp, _) => (SectionKind::Credits, item("top-up")),
        (TransferCode::Overdraft, _) => (SectionKind::Credits, item("overdraft advance")),
        (TransferCode::Spend, _) => match &flow.attribution {
            Some(Attribution::Model(model)) => (SectionKind::Usage, model.clone()),
            _ => (SectionKind::Usage, item("(no usage event)")),
        },
        (TransferCode::List, _) => (SectionKind::Listings, item("listed")),
        (TransferCode::Unlist, _) => (SectionKind::Listings, item("unlisted")),
        // Tokens leave the seller's escrow and reach the buyer's `acquired`; CR go the
        // other way.
        (TransferCode::Trade, Side::Debit) if token => (SectionKind::Trades, item("sold")),
        (TransferCode::Trade, Side::Credit) if token => (SectionKind::Trades, item("bought")),
        (TransferCode::Trade, Side::Debit) => (SectionKind::Trades, item("bought")),
        (TransferCode::Trade, Side::Credit) => (SectionKind::Trades, item("sold")),
        (TransferCode::Fee, _) => match flow.attribution {
            Some(Attribution::Sale) => (SectionKind::Fees, item("on sales")),
            Some(Attribution::Purchase) => (SectionKind::Fees, item("on purchases")),
            _ => (SectionKind::Fees, item("fee")),
        },
        (TransferCode::Buyback, _) => (SectionKind::Buybacks, item("sold to the provider")),
        (TransferCode::EmergencySale, _) => {
            (SectionKind::ProviderSales, item("bought from the provider"))
        }
        (TransferCode::Expiry, _) => (SectionKind::Expiry, item("expired")),
        (TransferCode::Reversal, Side::Credit) => (SectionKind::Corrections, item("reversal in")),
        (TransferCode::Reversal, Side::Debit) => (SectionKind::Corrections, item("reversal out")),
    }
}

/// The order accounts are shown in: `CR` first, then token assets by code; per asset
/// `alloc`, `acquired`, `escrow`, `wallet`.
fn account_order(asset: &AssetCode, kind: AccountKind) -> (bool, AssetCode, i16) {
    (
        asset.class() == AssetClass::Token,
        asset.clone(),
        kind.number(),
    )
}

fn net(balance: &Balance) -> i128 {
    balance.net_posted()
}

/// Classifies the rows and checks that every account reconciles. Pure.
pub fn assemble(
    org: &Org,
    cycle: CycleId,
    state: CycleState,
    now: Timestamp,
    accounts: &[Account],
    rows: &StatementRows,
) -> Result<Statement, StatementError> {
    let by_id: BTreeMap<_, _> = accounts.iter().map(|a| (a.id(), a)).collect();
    // (section, asset order, item) → (count, amount)
    type LineKey = (SectionKind, (bool, AssetCode, i16), String);
    let mut lines: BTreeMap<LineKey, (AccountKind, u64, i128)> = BTreeMap::new();
    let mut moved: BTreeMap<_, (u64, u64)> = BTreeMap::new();
    for flow in &rows.flows {
        let account = by_id.get(&flow.account).ok_or_else(|| {
            StatementError::Unreconciled(format!("a movement of unknown account {}", flow.account))
        })?;
        let token = account.asset().class() == AssetClass::Token;
        let (section, item) = classify(flow, token);
        let amount = i128::from(flow.amount);
        let signed = match flow.side {
            Side::Credit => amount,
            Side::Debit => -amount,
        };
        let order = account_order(account.asset(), account.kind());
        let entry = lines
            .entry((section, order, item))
            .or_insert((account.kind(), 0, 0));
        entry.1 += flow.count;
        entry.2 += signed;
        let totals = moved.entry(flow.account).or_default();
        match flow.side {
            Side::Credit => totals.0 += flow.amount,
            Side::Debit => totals.1 += flow.amount,
        }
    }

    let mut statements = Vec::new();
    for window in &rows.balances {
        let account = by_id.get(&window.window.account).ok_or_else(|| {
            StatementError::Unreconciled(format!(
                "a balance of unknown account {}",
                window.window.account
            ))
        })?;
        let (credits, debits) = moved.get(&account.id()).copied().unwrap_or_default();
        let statement = AccountStatement {
            asset: account.asset().clone(),
            kind: account.kind(),
            opening_at: window.window.from,
            closing_at: window.window.to.plus_micros(1),
            opening: net(&window.opening),
            credits,
            debits,
            closing: net(&window.closing),
            held: window.closing.debits_pending,
        };
        reconcile(&statement, &window.opening, &window.closing)?;
        let quiet = statement.opening == 0
            && statement.closing == 0
            && credits == 0
            && debits == 0
            && statement.held == 0;
        if !quiet {
            statements.push(statement);
        }
    }
    statements.sort_by_key(|s| account_order(&s.asset, s.kind));

    let mut sections: Vec<Section> = Vec::new();
    for ((kind, (_, asset, _), item), (account, count, amount)) in lines {
        if sections.last().is_none_or(|s| s.kind != kind) {
            sections.push(Section {
                kind,
                lines: Vec::new(),
                totals: Vec::new(),
            });
        }
        let section = sections.last_mut().expect("just pushed");
        match section.totals.last_mut() {
            Some((a, k, total)) if *a == asset && *k == account => *total += amount,
            _ => section.totals.push((asset.clone(), account, amount)),
        }
        section.lines.push(Line {
            asset,
            kind: account,
            item,
            count,
            amount,
        });
    }
    let statement = Statement {
        org: org.id,
        org_name: org.name.as_str().to_owned(),
        cycle,
        state,
        generated_at: now,
        accounts: statements,
        sections,
    };
    check_lines(&statement)?;
    Ok(statement)
}

/// Opening + credits − debits = closing, and the credits and debits listed are the ledger's
/// own change of the account's totals over the window.
fn reconcile(
    statement: &AccountStatement,
    opening: &Balance,
    closing: &Balance,
) -> Result<(), StatementError> {
    let what = format!("{} {}", statement.asset, statement.kind);
    let credited = i128::from(closing.credits_posted) - i128::from(opening.credits_posted);
    let debited = i128::from(closing.debits_posted) - i128::from(opening.debits_posted);
    if credited != i128::from(statement.credits) || debited != i128::from(statement.debits) {
        return Err(StatementError::Unreconciled(format!(
            "{what}: the ledger's totals moved by +{credited}/-{debited}, the movements listed add up to +{}/-{}",
            statement.credits, statement.debits
        )));
    }
    let computed = statement.opening + i128::from(statement.credits) - i128::from(statement.debits);
    if computed != statement.closing {
        return Err(StatementError::Unreconciled(format!(
            "{what}: opening {} + movements = {computed}, not the closing {}",
            statement.opening, statement.closing
        )));
    }
    Ok(())
}

/// Every account's lines, across sections, add up to its closing minus its opening; and no
/// line is on an account the statement does not show.
fn check_lines(statement: &Statement) -> Result<(), StatementError> {
    let mut sums: BTreeMap<(AssetCode, i16), i128> = BTreeMap::new();
    for section in &statement.sections {
        for line in &section.lines {
            *sums
                .entry((line.asset.clone(), line.kind.number()))
                .or_default() += line.amount;
        }
    }
    for account in &statement.accounts {
        let sum = sums
            .remove(&(account.asset.clone(), account.kind.number()))
            .unwrap_or(0);
        if account.opening + sum != account.closing {
            return Err(StatementError::Unreconciled(format!(
                "{} {}: the lines add up to {sum}, the balance moved by {}",
                account.asset,
                account.kind,
                account.closing - account.opening
            )));
        }
    }
    if let Some(((asset, kind), _)) = sums.into_iter().next() {
        return Err(StatementError::Unreconciled(format!(
            "lines on an account not on the statement ({asset}, kind {kind})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use credex_ledger::AccountId;
    use credex_store::{OrgName, Plan, VerificationLevel, WindowBalances};

    fn org(created_at: Timestamp) -> Org {
        Org {
            id: OrgId::generate(),
            name: OrgName::parse("Acme").expect("a name"),
            plan: Plan::Teams,
            verification_level: VerificationLevel::NONE,
            frozen: false,
            created_at,
        }
    }

    #[test]
    fn credits_render_exactly() {
        let check = |amount: i128, text: &str| assert_eq!(Unit::MicroCr.text(amount), text);
        check(0, "0.000000");
        check(1, "0.000001");
        check(-1_250_000, "-1.250000");
        check(123_456_789_012, "123456.789012");
        check(i128::from(i64::MIN), "-9223372036854.775808");
        assert_eq!(Unit::Tokens.text(-42), "-42");
    }

    #[test]
    fn statements_exist_from_the_org_s_first_cycle_to_the_current_one() {
        let november = CycleId::parse("2026-11").expect("a cycle");
        let made = november.starts_at().plus_micros(86_400_000_000);
        let acme = org(made);
        let now = november.next().next().starts_at().plus_micros(5);
        let names: Vec<String> = cycles_of(&acme, now)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["2027-01", "2026-12", "2026-11"]);
        assert!(exists(&acme, november, now));
        assert!(!exists(
            &acme,
            CycleId::parse("2026-10").expect("a cycle"),
            now
        ));
        assert!(!exists(
            &acme,
            CycleId::parse("2027-02").expect("a cycle"),
            now
        ));
    }

    fn account(asset: &AssetCode, owner: OrgId, kind: AccountKind) -> Account {
        Account::new(
            AccountId::generate(),
            asset.clone(),
            Owner::Org(owner),
            kind,
        )
        .expect("an account")
    }

    fn flow(account: &Account, side: Side, code: TransferCode, amount: u64) -> Flow {
        Flow {
            account: account.id(),
            side,
            code,
            counterparty: AccountId::generate(),
            attribution: None,
            count: 1,
            amount,
        }
    }

    fn window(account: &Account, opening: (u64, u64), closing: (u64, u64)) -> WindowBalances {
        let balance = |(credits, debits): (u64, u64)| Balance {
            credits_posted: credits,
            debits_posted: debits,
            ..Balance::default()
        };
        WindowBalances {
            window: StatementWindow {
                account: account.id(),
                from: Timestamp::EPOCH,
                to: Timestamp::from_micros(9),
            },
            opening: balance(opening),
            closing: balance(closing),
        }
    }

    #[test]
    fn a_statement_reconciles_or_is_refused() {
        let november = CycleId::parse("2026-11").expect("a cycle");
        let acme = org(november.starts_at());
        let token = november.asset("pro").expect("an asset");
        let alloc = account(&token, acme.id, AccountKind::Alloc);
        let wallet = account(&AssetCode::credit(), acme.id, AccountKind::Wallet);
        let accounts = [alloc.clone(), wallet.clone()];
        let rows = StatementRows {
            balances: vec![
                window(&alloc, (0, 0), (1_000, 300)),
                window(&wallet, (5_000, 0), (6_000, 2_000)),
            ],
            flows: vec![
                flow(&alloc, Side::Credit, TransferCode::Allotment, 1_000),
                flow(&alloc, Side::Debit, TransferCode::Spend, 300),
                flow(&wallet, Side::Credit, TransferCode::Grant, 1_000),
                flow(&wallet, Side::Debit, TransferCode::Spend, 2_000),
            ],
        };
        let at = november.ends_at();
        let statement = assemble(&acme, november, CycleState::Ended, at, &accounts, &rows)
            .expect("a statement");
        assert_eq!(statement.accounts.len(), 2);
        assert_eq!(statement.accounts[0].asset, AssetCode::credit(), "CR first");
        assert_eq!(statement.accounts[0].opening, 5_000);
        assert_eq!(statement.accounts[0].closing, 4_000);
        let kinds: Vec<SectionKind> = statement.sections.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                SectionKind::Allotments,
                SectionKind::Credits,
                SectionKind::Usage
            ]
        );
        let usage = &statement.sections[2];
        assert_eq!(usage.lines[0].item, "(no usage event)");
        assert_eq!(
            usage.totals,
            [
                (AssetCode::credit(), AccountKind::Wallet, -2_000),
                (token.clone(), AccountKind::Alloc, -300)
            ]
        );

        // A movement missing from the rows: the ledger's totals say otherwise.
        let mut short = rows.clone();
        short.flows.pop();
        let refused = assemble(&acme, november, CycleState::Ended, at, &accounts, &short);
        assert!(
            matches!(refused, Err(StatementError::Unreconciled(_))),
            "{refused:?}"
        );
    }
}
