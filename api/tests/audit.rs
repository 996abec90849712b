//! `credex audit` on both backends: a healthy world (a trade, an emergency sale, a buyback,
//! usage under a hard budget, then a closed cycle) passes every invariant; each corruption
//! written straight into the database (a journal row out of `acquired`, CR in a token-only
//! account, a transfer into a closed cycle, a fill its chain does not back, a hard budget
//! overspent) is reported as exactly that breach, with its ids.

mod common;

use common::usage_world::{add_budget, budget, event, world, World, DAY};
use credex_api::budgets::Scope;
use credex_api::cycles::{close_cycle, CycleId};
use credex_api::market::{BuyRequest, BuybackRequest, FraudPolicy, ListRequest, Market};
use credex_matching::Limit;
use credex_store::{AuditReport, Backend};
use credex_tests::{on_both_backends, TestDb};
use sqlx::Connection;
use uuid::Uuid;

const ASSET: &str = "TOK.pro.2026-11";
const HARD_LIMIT: i64 = 5_000_000;

struct Healthy {
    w: World,
    seller: Uuid,
    buyer: Uuid,
    order: Uuid,
    budget: Uuid,
}

/// Org 0 lists 500,000 tokens; org 1 buys 600,000 (the listing, then the provider); org 0
/// sells 100,000 back; org 1 spends under a hard budget.
async fn healthy(db: &TestDb) -> Healthy {
    let w = world(db, 2).await;
    let (seller, buyer) = (w.orgs[0], w.orgs[1]);
    let market = Market::new(w.ledger.clone(), FraudPolicy::default());
    market
        .list(&ListRequest {
            id: Uuid::new_v4(),
            seller,
            asset: w.asset.clone(),
            quantity: 500_000,
            ask_per_1m_micro_cr: 3_000_000,
            min_fill: None,
            auto_sell_at: None,
        })
        .await
        .expect("a listing");
    let order = market
        .buy(&BuyRequest {
            id: Uuid::new_v4(),
            buyer,
            asset: w.asset.clone(),
            quantity: 600_000,
            limit: Limit::PricePer1m(10_000_000),
            allow_provider_fill: true,
        })
        .await
        .expect("a buy");
    assert_eq!(
        order.fills.len(),
        2,
        "a fill from the listing, one from the provider"
    );
    market
        .buyback(&BuybackRequest {
            id: Uuid::new_v4(),
            org: seller,
            asset: w.asset.clone(),
            quantity: 100_000,
        })
        .await
        .expect("a buyback");
    let hard = add_budget(
        &w,
        buyer,
        budget(
            "org",
            Scope::Org,
            u64::try_from(HARD_LIMIT).expect("a limit"),
            true,
        ),
    )
    .await;
    w.record(buyer, vec![event(100_000, 0, w.now())])
        .await
        .expect("usage");
    let report = audit(&w).await;
    assert!(report.is_ok(), "a healthy world passes: {report:#?}");
    assert_eq!(
        (report.fills, report.buybacks, report.budget_periods),
        (2, 1, 1)
    );
    Healthy {
        seller: seller.as_uuid(),
        buyer: buyer.as_uuid(),
        order: order.order_id,
        budget: hard.id(),
        w,
    }
}

async fn audit(w: &World) -> AuditReport {
    w.store().audit_invariants().await.expect("an audit")
}

/// Runs `sql` straight on the database, with `ids` bound as `$1`, `$2`, ….
async fn exec(db: &TestDb, sql: &str, ids: &[Uuid]) {
    match db.backend() {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(db.url())
                .await
                .expect("connect");
            let mut query = sqlx::query(sql);
            for id in ids {
                query = query.bind(*id);
            }
            let done = query.execute(&mut conn).await.expect(sql);
            assert_eq!(done.rows_affected(), 1, "{sql}");
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(db.url())
                .await
                .expect("connect");
            let mut query = sqlx::query(sql);
            for id in ids {
                query = query.bind(*id);
            }
            let done = query.execute(&mut conn).await.expect(sql);
            assert_eq!(done.rows_affected(), 1, "{sql}");
        }
    }
}

/// An account by its asset, kind (the ledger's stable number) and owner (`None`: the
/// provider).
#[derive(Debug, Clone, Copy)]
struct Acct<'a> {
    asset: &'a str,
    kind: i16,
    org: Option<Uuid>,
}

impl Acct<'_> {
    /// A subquery for its id; the org, if any, bound as `$n`.
    fn select(&self, n: usize) -> String {
        let owner = match self.org {
            Some(_) => format!("owner_org = ${n}"),
            None => "owner_org IS NULL".to_owned(),
        };
        format!(
            "(SELECT id FROM accounts WHERE asset = '{}' AND kind = {} AND {owner})",
            self.asset, self.kind
        )
    }
}

/// Adds one to `column` of one stripe of `account`, so the stored balances keep up with a
/// journal row written by hand.
async fn shift(db: &TestDb, account: Acct<'_>, column: &str) {
    let id = account.select(1);
    let sql = format!(
        "UPDATE account_balances SET {column} = {column} + 1 WHERE account_id = {id} \
         AND slot = (SELECT MIN(slot) FROM account_balances WHERE account_id = {id})"
    );
    let ids: Vec<Uuid> = account.org.into_iter().collect();
    exec(db, &sql, &ids).await;
}

/// Writes a posted journal row `id` of 1 unit from `debit` to `credit` with `code`, at
/// `timestamp` (an SQL expression), and moves the stored balances with it.
async fn journal_row(
    db: &TestDb,
    id: Uuid,
    (debit, credit): (Acct<'_>, Acct<'_>),
    code: i16,
    timestamp: &str,
) {
    let mut ids = vec![id];
    let debit_id = debit.select(ids.len() + 1);
    ids.extend(debit.org);
    let credit_id = credit.select(ids.len() + 1);
    ids.extend(credit.org);
    let sql = format!(
        "INSERT INTO transfers (id, kind, debit_account_id, credit_account_id, asset, amount, \
         pending_id, code, timeout_seconds, metadata, linked, timestamp) \
         SELECT $1, 0, {debit_id}, {credit_id}, '{}', 1, NULL, {code}, NULL, t.metadata, \
         t.linked, {timestamp} FROM transfers t WHERE t.seq = (SELECT MAX(seq) FROM transfers)",
        debit.asset
    );
    exec(db, &sql, &ids).await;
    shift(db, debit, "debits_posted").await;
    shift(db, credit, "credits_posted").await;
}

fn only(report: &AuditReport, what: &str) {
    let empty = [
        ("one_hop", report.one_hop.is_empty()),
        ("closed_loop", report.closed_loop.is_empty()),
        ("misplaced_accounts", report.misplaced_accounts.is_empty()),
        ("closed_cycles", report.closed_cycles.is_empty()),
        (
            "open_assets_of_closed_cycles",
            report.open_assets_of_closed_cycles.is_empty(),
        ),
        ("market_chains", report.market_chains.is_empty()),
        ("budgets", report.budgets.is_empty()),
    ];
    for (name, is_empty) in empty {
        assert!(
            name == what || is_empty,
            "only {what} should be reported, not {name}: {report:#?}"
        );
    }
    assert!(!report.is_ok());
}

async fn a_healthy_world_passes(db: &TestDb) {
    let h = healthy(db).await;
    // The cycle closed (listings cancelled, balances expired) still passes.
    let cycle = CycleId::parse("2026-11").expect("a cycle");
    h.w.clock.set(cycle.ends_at().plus_micros(DAY));
    close_cycle(&h.w.ledger, cycle, h.w.now())
        .await
        .expect("closed");
    let report = audit(&h.w).await;
    assert!(report.is_ok(), "{report:#?}");
    assert!(report.breaches().is_empty());
}

/// Rule 7: a row moving tokens `acquired → alloc`.
async fn value_out_of_acquired_breaks_one_hop(db: &TestDb) {
    let h = healthy(db).await;
    let id = Uuid::new_v4();
    let acquired = Acct {
        asset: ASSET,
        kind: 12,
        org: Some(h.buyer),
    };
    let alloc = Acct {
        asset: ASSET,
        kind: 11,
        org: Some(h.buyer),
    };
    journal_row(db, id, (acquired, alloc), 4, "t.timestamp").await;
    let report = audit(&h.w).await;
    only(&report, "one_hop");
    assert!(report.books.is_ok(), "{report:#?}");
    assert_eq!(report.one_hop.len(), 1, "{report:#?}");
    let breach = &report.one_hop[0];
    assert_eq!(
        (
            breach.transfer_id,
            breach.debit_kind.as_str(),
            breach.credit_kind.as_str()
        ),
        (id, "acquired", "alloc")
    );
    assert!(report.breaches()[0].starts_with("one-hop (rule 7): transfer "));
}

/// Rule 8: CR moved into an `acquired` account of CR.
async fn credits_in_a_token_account_break_the_closed_loop(db: &TestDb) {
    let h = healthy(db).await;
    let (id, account_id) = (Uuid::new_v4(), Uuid::new_v4());
    exec(
        db,
        "INSERT INTO accounts (id, asset, owner_org, kind, stripes, created_at) \
         VALUES ($1, 'CR', $2, 12, 1, 0)",
        &[account_id, h.buyer],
    )
    .await;
    exec(
        db,
        "INSERT INTO account_balances (account_id, slot) VALUES ($1, 0)",
        &[account_id],
    )
    .await;
    let wallet = Acct {
        asset: "CR",
        kind: 14,
        org: Some(h.buyer),
    };
    let misplaced = Acct {
        asset: "CR",
        kind: 12,
        org: Some(h.buyer),
    };
    journal_row(db, id, (wallet, misplaced), 4, "t.timestamp").await;
    let report = audit(&h.w).await;
    assert_eq!(report.closed_loop.len(), 1, "{report:#?}");
    let breach = &report.closed_loop[0];
    assert_eq!(
        (
            breach.transfer_id,
            breach.asset.as_str(),
            breach.debit_kind.as_str()
        ),
        (id, "CR", "wallet")
    );
    assert_eq!(
        (breach.credit_account, breach.credit_kind.as_str()),
        (account_id, "acquired")
    );
    assert_eq!(report.misplaced_accounts.len(), 1);
    assert_eq!(report.misplaced_accounts[0].account_id, account_id);
    // The ledger itself refuses to read such an account: the books check says so.
    assert!(report.books_unreadable.is_some(), "{report:#?}");
    for list in [
        report.one_hop.is_empty(),
        report.closed_cycles.is_empty(),
        report.market_chains.is_empty(),
        report.budgets.is_empty(),
    ] {
        assert!(list, "{report:#?}");
    }
}

/// Rule 9: an allotment into a cycle after it closed.
async fn a_transfer_after_the_close_breaks_the_closed_cycle(db: &TestDb) {
    let h = healthy(db).await;
    let cycle = CycleId::parse("2026-11").expect("a cycle");
    h.w.clock.set(cycle.ends_at().plus_micros(DAY));
    close_cycle(&h.w.ledger, cycle, h.w.now())
        .await
        .expect("closed");
    assert!(audit(&h.w).await.is_ok());
    let id = Uuid::new_v4();
    let issuance = Acct {
        asset: ASSET,
        kind: 1,
        org: None,
    };
    let alloc = Acct {
        asset: ASSET,
        kind: 11,
        org: Some(h.seller),
    };
    let after = format!("(SELECT closed_at + 1 FROM assets WHERE code = '{ASSET}')");
    journal_row(db, id, (issuance, alloc), 1, &after).await;
    let report = audit(&h.w).await;
    only(&report, "closed_cycles");
    assert!(report.books.is_ok(), "{report:#?}");
    assert_eq!(report.closed_cycles.len(), 1, "{report:#?}");
    let breach = &report.closed_cycles[0];
    assert_eq!(
        (
            breach.transfer_id,
            breach.code.as_str(),
            breach.asset.as_str()
        ),
        (id, "allotment", ASSET)
    );
}

/// Fills: one records more tokens than its chain moved, one names a transfer that is not in
/// the journal.
async fn fills_not_backed_by_their_chain_are_reported(db: &TestDb) {
    let h = healthy(db).await;
    exec(
        db,
        "UPDATE fills SET quantity = quantity + 1 WHERE order_id = $1 AND listing_id IS NOT NULL",
        &[h.order],
    )
    .await;
    let missing = Uuid::new_v4();
    let sql = format!(
        "UPDATE fills SET transfer_ids = '[\"{missing}\"]' WHERE order_id = $1 AND listing_id IS NULL"
    );
    exec(db, &sql, &[h.order]).await;
    let report = audit(&h.w).await;
    only(&report, "market_chains");
    assert!(report.books.is_ok(), "{report:#?}");
    assert_eq!(report.market_chains.len(), 2, "{report:#?}");
    let mut problems: Vec<&str> = report
        .market_chains
        .iter()
        .map(|breach| {
            assert_eq!((breach.record, breach.order_id), ("fill", Some(h.order)));
            breach.problem.as_str()
        })
        .collect();
    problems.sort_unstable();
    assert!(
        problems[0].starts_with("listing ") && problems[0].contains("but it records"),
        "{problems:?}"
    );
    assert_eq!(
        problems[1],
        format!("provider sale: transfer {missing} is not in the journal")
    );
}

/// A hard budget's recorded spend raised over its limit.
async fn an_overspent_hard_budget_is_reported(db: &TestDb) {
    let h = healthy(db).await;
    let sql = format!(
        "UPDATE budget_spend SET spent_micro_cr = {} WHERE budget_id = $1",
        HARD_LIMIT + 1
    );
    exec(db, &sql, &[h.budget]).await;
    let report = audit(&h.w).await;
    only(&report, "budgets");
    assert!(report.books.is_ok(), "{report:#?}");
    assert_eq!(report.budgets.len(), 1, "{report:#?}");
    let breach = &report.budgets[0];
    assert_eq!(
        (
            breach.budget_id,
            breach.org_id,
            breach.spent_micro_cr,
            breach.limit_micro_cr
        ),
        (h.budget, h.buyer, HARD_LIMIT + 1, HARD_LIMIT)
    );
    assert!(report.breaches()[0].starts_with("hard-budget: budget "));
}

on_both_backends!(
    a_healthy_world_passes,
    value_out_of_acquired_breaks_one_hop,
    credits_in_a_token_account_break_the_closed_loop,
    a_transfer_after_the_close_breaks_the_closed_cycle,
    fills_not_backed_by_their_chain_are_reported,
    an_overspent_hard_budget_is_reported,
);
