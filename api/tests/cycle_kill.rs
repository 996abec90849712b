//! A cycle's close cut off by killing the `credex` process, then run again, ends in exactly the
//! state of an uninterrupted close — on SQLite and on PostgreSQL.
//!
//! **Fixture.** A fresh database is set up as `credex serve` would set it up (`assemble`: the
//! credit asset, the catalog, the first admin), then given two classes (`pro`, `std`) with
//! plan allotments and [`ORGS`] orgs on the three plans (their accounts made ahead in bulk, only
//! to build the fixture faster), and the *previous* month by the real clock is opened by
//! `open_cycle` (so the server, on its system clock, finds it ended and closes it). In that
//! cycle orgs spend, hold tokens (pending reservations: some without a timeout, some whose
//! timeout has run out, which the server's expiry job releases), list tokens in both markets
//! (some listings amended, some cancelled by their sellers, some with a due automatic sale), buy
//! (fills leave tokens in `acquired` and CR moves with fees; a few orders take emergency
//! credits), and sell some back to the provider (`treasury`). So `alloc`, `escrow`, `acquired`
//! and `treasury` all hold tokens of the cycle's assets when the close runs, and the close has
//! hundreds of open listings to cancel and thousands of accounts to expire.
//!
//! **Copies.** The database is copied twice (SQLite: `VACUUM INTO`; PostgreSQL: `CREATE
//! DATABASE … TEMPLATE`), so both runs start from the same data.
//!
//! **Reference (copy A).** The real binary serves on A until the cycle is marked closed, then
//! stops on SIGTERM.
//!
//! **Interrupted (copy B).** The binary serves on B and is killed (SIGKILL) as soon as the test,
//! polling the journal every millisecond, sees the close's first step: the first platform
//! cancel of a listing (kill 1, while listings are being cancelled), then, restarted, the first
//! expiry of the first asset (kill 2, while that asset's accounts are being expired), then,
//! restarted, the first expiry of the last asset (kill 3). Each kill is checked to have cut the
//! close half-way: some of its work in the journal, the cycle not closed. A last run finishes.
//!
//! **Comparison.** Every row of every table of A and B, except what a run may legitimately do
//! differently: the current cycle (each pass of the job opens it right after closing the old
//! one, and the reference and the last interrupted run are stopped at different points of that
//! open, so its cycle row, assets, accounts and transfers are left out), the journal's `seq`
//! (a PostgreSQL sequence may skip numbers after a crash), instants written by the runs (any
//! timestamp later than the fixture's clock compares as "during the run", earlier ones
//! exactly), and the split of a provider account's balance over its stripes (balances compare
//! as per-account sums). Accounts are keyed by (asset, owner, kind) rather than id, since an
//! account made by the close (`expired`) gets a fresh id in each run; transfers are keyed by id
//! (the close derives every id from what the transfer is for) and name their accounts by that
//! key. Both books balance (`check`), and the reference is checked to have done the work:
//! no listing open, nothing left to expire but the held tokens.
//!
//! `usage_versions` is left out: it counts changes (the accounts made among them) so that
//! usage charging may keep what it reads in memory; it is no part of the books.
//!
//! A close that expired an account twice after a restart, skipped one, cancelled a listing
//! twice, lost a listing's state, or failed to mark the cycle closed makes the two dumps differ.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credex_api::config::{Config, Secret};
use credex_api::cycles::{open_cycle, CycleId};
use credex_api::market::{BuyRequest, BuybackRequest, ListRequest, Market, Withdrawer};
use credex_api::startup::assemble;
use credex_ledger::{
    Account, AccountId, AccountKind, Action, Amount, AssetCode, Clock, ManualClock, Metadata,
    Movement, OrgId, Owner, Timestamp, Transfer, TransferCode, TransferId,
};
use credex_matching::Limit;
use credex_store::{Allotment, Backend, ClassRecord, Ledger, OrgName, Plan, VerificationLevel};
use credex_tests::{audit, on_both_backends, TestDb};
use futures::StreamExt;
use sqlx::{Connection, Row};
use uuid::Uuid;

/// Orgs in the fixture: enough that the close takes seconds (hundreds of listings to cancel,
/// thousands of accounts to expire) in a debug build.
const ORGS: usize = 1_200;
const DAY: i64 = 86_400_000_000;
const ADMIN: &str = "ops@provider.example";
const PASSWORD: &str = "a long and careful password";
const JWT_SECRET: &str = "a signing key of at least thirty-two bytes, for tests";
/// How long one `credex serve` may take to do what the test waits for.
const PATIENCE: Duration = Duration::from_secs(120);

/// The month before `cycle`.
fn previous(cycle: CycleId) -> CycleId {
    let text = cycle.to_string();
    let year: u16 = text[..4].parse().expect("a year");
    let month: u8 = text[5..].parse().expect("a month");
    let (year, month) = if month == 1 {
        (year - 1, 12)
    } else {
        (year, month - 1)
    };
    CycleId::parse(&format!("{year:04}-{month:02}")).expect("a cycle")
}

fn plan_of(i: usize) -> Plan {
    match i % 20 {
        0..=4 => Plan::Free,
        5..=16 => Plan::Teams,
        _ => Plan::Enterprise,
    }
}

fn transfer(action: Action, metadata: &str) -> Transfer {
    Transfer::new(
        TransferId::generate(),
        action,
        Metadata::new(metadata).expect("metadata"),
        false,
    )
    .expect("a transfer")
}

fn movement(
    from: AccountId,
    to: AccountId,
    asset: &AssetCode,
    amount: u64,
    code: TransferCode,
) -> Movement {
    Movement::new(
        from,
        to,
        asset.clone(),
        Amount::new(amount).expect("an amount"),
        code,
    )
    .expect("a movement")
}

async fn commit_all(ledger: &Ledger, transfers: Vec<Transfer>) {
    for chunk in transfers.chunks(2_000) {
        let results = ledger
            .create_transfers(chunk.to_vec())
            .await
            .expect("commit");
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
}

/// What the test knows of the fixture.
#[derive(Debug)]
struct Fixture {
    cycle: CycleId,
    /// The cycle's token assets, in the order the close handles them (by class).
    assets: Vec<AssetCode>,
    /// The fixture clock's last instant: later timestamps were written by the runs.
    until: Timestamp,
    /// The journal's last `seq` before any run.
    last_seq: i64,
    listings_open: u64,
}

/// Sets up the database as `credex serve` would, then the previous month's cycle with its
/// allotments, spending, holds, listings, fills and buybacks (see the module's comment).
async fn build_fixture(db: &TestDb) -> Fixture {
    let started = Instant::now();
    let cycle = previous(CycleId::of(credex_store::SystemClock.now()));
    let start = cycle.starts_at();
    let clock = Arc::new(ManualClock::new(start.plus_micros(-31 * DAY)));
    let dir = tempfile::tempdir().expect("a directory");
    let mut config = Config::new("127.0.0.1:0", dir.path()).with_database_url(db.url());
    config.admin_email = Some(ADMIN.to_owned());
    config.admin_password = Some(Secret::new(PASSWORD));
    config.jwt_secret = Some(Secret::new(JWT_SECRET));
    let assembled = assemble(&config, clock.clone()).await.expect("assemble");
    let ledger = assembled.ledger.clone();
    let store = assembled.store.clone();
    let market: Arc<Market> = assembled.market.clone();

    for (class, face) in [("std", 500_000), ("pro", 4_000_000)] {
        let record = ClassRecord {
            class: class.to_owned(),
            face_value_per_1m_micro_cr: face,
            description: format!("{class} models"),
            created_at: clock.now(),
            updated_at: clock.now(),
        };
        store
            .put_class(&record, &audit("classes.put"))
            .await
            .expect("a class");
    }
    for (class, plan, tokens) in [
        ("std", Plan::Free, 1_000_000),
        ("std", Plan::Teams, 5_000_000),
        ("std", Plan::Enterprise, 10_000_000),
        ("pro", Plan::Free, 0),
        ("pro", Plan::Teams, 2_000_000),
        ("pro", Plan::Enterprise, 5_000_000),
    ] {
        let allotment = Allotment {
            plan,
            tokens_per_cycle: tokens,
        };
        store
            .put_allotment(class, allotment, clock.now(), &audit("allotments.put"))
            .await
            .expect("an allotment");
    }

    // Orgs 30 days old at the cycle's start; every paid one verified (so it may sell).
    let created = clock.now();
    let orgs: Vec<OrgId> = futures::stream::iter(0..ORGS)
        .map(|i| {
            let store = store.clone();
            async move {
                let name = OrgName::parse(&format!("Org {i}")).expect("a name");
                let org = store
                    .create_org(&name, plan_of(i), created)
                    .await
                    .expect("an org")
                    .id;
                if plan_of(i) != Plan::Free {
                    let level = VerificationLevel::new(1).expect("a level");
                    store.set_verification(org, level).await.expect("verify");
                }
                org
            }
        })
        .buffered(8)
        .collect()
        .await;
    eprintln!("fixture: {ORGS} orgs in {:?}", started.elapsed());

    // The orgs' accounts are made ahead in bulk (the open would make them one by one: the
    // fixture's slowest part), then the cycle is opened by the job itself.
    clock.set(start.plus_micros(3_600_000_000));
    let pro = cycle.asset("pro").expect("an asset");
    let std = cycle.asset("std").expect("an asset");
    let credit = AssetCode::credit();
    let paid: Vec<OrgId> = (0..ORGS)
        .filter(|i| plan_of(*i) != Plan::Free)
        .map(|i| orgs[i])
        .collect();
    let buyers: Vec<OrgId> = orgs.iter().copied().step_by(3).collect();
    for (asset, kind, owners) in [
        (&std, AccountKind::Alloc, &orgs),
        (&pro, AccountKind::Alloc, &paid),
        (&credit, AccountKind::Wallet, &buyers),
    ] {
        ledger.ensure_asset(asset).await.expect("an asset");
        let accounts: Vec<Account> = owners
            .iter()
            .map(|org| {
                Account::new(AccountId::generate(), asset.clone(), Owner::Org(*org), kind)
                    .expect("an account")
            })
            .collect();
        let made = store.create_accounts(&accounts).await.expect("accounts");
        assert!(made.iter().all(Result::is_ok), "{made:?}");
    }
    open_cycle(&ledger, cycle, clock.now()).await.expect("open");
    eprintln!("fixture: cycle {cycle} opened at {:?}", started.elapsed());

    // 1,000 CR for every third org (the buyers).
    let issuance = ledger
        .ensure_account(&credit, Owner::Provider, AccountKind::Issuance)
        .await
        .expect("issuance")
        .account
        .id();
    let mut top_ups = Vec::new();
    for org in &buyers {
        let wallet = ledger
            .ensure_account(&credit, Owner::Org(*org), AccountKind::Wallet)
            .await
            .expect("a wallet")
            .account
            .id();
        let moved = movement(
            issuance,
            wallet,
            &credit,
            1_000_000_000,
            TransferCode::TopUp,
        );
        top_ups.push(transfer(Action::Move(moved), "top-up"));
    }
    commit_all(&ledger, top_ups).await;

    // Spending from `alloc`, and holds: without a timeout (still pending at the close), and
    // with one that has run out by the time the server runs (its expiry job releases them).
    clock.set(start.plus_micros(10 * DAY));
    let spent = ledger
        .ensure_account(&std, Owner::Provider, AccountKind::Spent)
        .await
        .expect("spent")
        .account
        .id();
    let mut spending = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        if i % 4 != 2 && i % 25 != 7 {
            continue;
        }
        let alloc = ledger
            .ensure_account(&std, Owner::Org(*org), AccountKind::Alloc)
            .await
            .expect("alloc")
            .account
            .id();
        if i % 4 == 2 {
            let amount = 100_000 * (1 + u64::try_from(i % 5).expect("small"));
            let moved = movement(alloc, spent, &std, amount, TransferCode::Spend);
            spending.push(transfer(Action::Move(moved), "usage"));
        }
        if i % 25 == 7 {
            let timeout_seconds = if i % 50 == 7 { None } else { Some(3_600) };
            let movement = movement(alloc, spent, &std, 70_000, TransferCode::Spend);
            spending.push(transfer(
                Action::Reserve {
                    movement,
                    timeout_seconds,
                },
                "reservation",
            ));
        }
    }
    commit_all(&ledger, spending).await;

    // The markets, in their listing window (the cycle's last 7 days).
    let mut window_open = Timestamp::EPOCH;
    for asset in [&pro, &std] {
        let info = market.ensure_market(asset).await.expect("a market");
        window_open = info.record.window_open;
    }
    // Before anyone lists, a few buyers take emergency credits (`issuance → acquired`).
    clock.set(window_open.plus_micros(DAY / 2));
    for org in orgs.iter().step_by(120) {
        let request = BuyRequest {
            id: Uuid::new_v4(),
            buyer: *org,
            asset: pro.clone(),
            quantity: 200_000,
            limit: Limit::PricePer1m(5_000_000),
            allow_provider_fill: true,
        };
        let order = market.buy(&request).await.expect("an emergency buy");
        assert_eq!(order.summary.from_provider, 200_000, "{order:?}");
    }
    clock.set(window_open.plus_micros(DAY));

    // Listings by a quarter of the paid orgs in `std`, half of those in `pro` too; some with
    // an automatic sale due before the cycle ends (the server finds them due but the cycle
    // ended: it sells nothing).
    let sellers: Vec<(usize, OrgId)> = orgs
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| plan_of(*i) != Plan::Free && i % 4 == 1)
        .collect();
    let auto_sell_at = cycle.ends_at().plus_micros(-DAY);
    let listed: Vec<(usize, OrgId, Uuid, Option<Uuid>)> = futures::stream::iter(sellers)
        .map(|(i, org)| {
            let (market, std, pro) = (market.clone(), std.clone(), pro.clone());
            async move {
                let steps = u64::try_from(i % 7).expect("small");
                let id = Uuid::new_v4();
                let request = ListRequest {
                    id,
                    seller: org,
                    asset: std,
                    quantity: 1_000_000,
                    ask_per_1m_micro_cr: 300_000 + 50_000 * steps,
                    min_fill: None,
                    auto_sell_at: (i % 20 == 9).then_some(auto_sell_at),
                };
                market.list(&request).await.expect("a std listing");
                let pro_id = if i % 8 == 1 {
                    let id = Uuid::new_v4();
                    let request = ListRequest {
                        id,
                        seller: org,
                        asset: pro,
                        quantity: 500_000,
                        ask_per_1m_micro_cr: 3_000_000 + 150_000 * steps,
                        min_fill: Some(10_000),
                        auto_sell_at: None,
                    };
                    market.list(&request).await.expect("a pro listing");
                    Some(id)
                } else {
                    None
                };
                (i, org, id, pro_id)
            }
        })
        .buffered(4)
        .collect()
        .await;
    // Some sellers amend down, some cancel.
    for (i, org, id, _) in &listed {
        if i % 16 == 5 {
            market
                .amend_down(Uuid::new_v4(), *org, &std, *id, 600_000)
                .await
                .expect("an amendment");
        } else if i % 32 == 13 {
            market
                .cancel(Withdrawer::Seller(*org), &std, *id)
                .await
                .expect("a cancel");
        }
    }
    eprintln!(
        "fixture: {} std listings at {:?}",
        listed.len(),
        started.elapsed()
    );

    // Buys by half the orgs with credits; a few orders take emergency credits.
    clock.set(window_open.plus_micros(2 * DAY));
    let buyers: Vec<(usize, OrgId)> = orgs
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| i % 6 == 0)
        .collect();
    futures::stream::iter(buyers)
        .for_each_concurrent(4, |(i, org)| {
            let (market, std, pro) = (market.clone(), std.clone(), pro.clone());
            async move {
                let request = BuyRequest {
                    id: Uuid::new_v4(),
                    buyer: org,
                    asset: std,
                    quantity: 400_000,
                    limit: Limit::PricePer1m(450_000),
                    allow_provider_fill: false,
                };
                market.buy(&request).await.expect("a std buy");
                if i % 12 == 0 {
                    let request = BuyRequest {
                        id: Uuid::new_v4(),
                        buyer: org,
                        asset: pro,
                        quantity: 300_000,
                        limit: Limit::PricePer1m(3_500_000),
                        allow_provider_fill: false,
                    };
                    market.buy(&request).await.expect("a pro buy");
                }
            }
        })
        .await;

    // Buybacks (`alloc → treasury`), and some bought tokens spent (`acquired → spent`).
    let mut acquired_spending = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        if plan_of(i) != Plan::Free && i % 40 == 11 {
            let request = BuybackRequest {
                id: Uuid::new_v4(),
                org: *org,
                asset: std.clone(),
                quantity: 250_000,
            };
            market.buyback(&request).await.expect("a buyback");
        }
        if i % 24 == 0 {
            let view = store
                .find_account(&std, Owner::Org(*org), AccountKind::Acquired)
                .await
                .expect("find");
            if let Some(view) = view {
                let held = u64::try_from(view.balance.available()).expect("not negative");
                if held > 1 {
                    let moved = movement(
                        view.account.id(),
                        spent,
                        &std,
                        held / 2,
                        TransferCode::Spend,
                    );
                    acquired_spending.push(transfer(Action::Move(moved), "usage"));
                }
            }
        }
    }
    commit_all(&ledger, acquired_spending).await;

    let report = store.check().await.expect("check");
    assert!(report.is_ok(), "{report:?}");
    let until = clock.now();
    let assets = store
        .cycle_classes(&cycle.to_string())
        .await
        .expect("classes")
        .into_iter()
        .map(|(class, _)| cycle.asset(&class).expect("an asset"))
        .collect();
    ledger.close().await;
    store.close().await;
    drop(assembled);

    let mut conn = Db::open(db.backend(), db.url()).await;
    let last_seq = conn
        .int("SELECT COALESCE(MAX(seq), 0) FROM transfers")
        .await;
    let listings_open = conn
        .int("SELECT COUNT(*) FROM listings WHERE state = 'open'")
        .await;
    // Every kind of account the close expires holds tokens of the cycle.
    for kind in [
        AccountKind::Alloc,
        AccountKind::Escrow,
        AccountKind::Acquired,
        AccountKind::Treasury,
    ] {
        let holding = conn
            .int(&format!(
                "SELECT COUNT(*) FROM (SELECT a.id FROM accounts a \
                 JOIN account_balances b ON b.account_id = a.id \
                 WHERE a.asset = '{std}' AND a.kind = {} GROUP BY a.id \
                 HAVING SUM(b.credits_posted) - SUM(b.debits_posted) > 0) AS holding",
                kind.number()
            ))
            .await;
        assert!(holding > 0, "no {kind} account holds {std}");
    }
    let provider_fills = conn
        .int("SELECT COUNT(*) FROM fills WHERE listing_id IS NULL")
        .await;
    let pending = conn
        .int("SELECT COUNT(*) FROM pending_transfers WHERE state = 0")
        .await;
    assert!(provider_fills > 0, "no provider fills");
    assert!(pending > 0, "no pending holds");
    conn.close().await;
    eprintln!(
        "fixture: built in {:?}: {listings_open} open listings, {provider_fills} provider \
         fills, {pending} pending holds, {last_seq} journal entries",
        started.elapsed()
    );
    Fixture {
        cycle,
        assets,
        until,
        last_seq,
        listings_open: u64::try_from(listings_open).expect("a count"),
    }
}

/// A connection of either backend that reads rows as text.
enum Db {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Db {
    async fn open(backend: Backend, url: &str) -> Self {
        match backend {
            Backend::Postgres => Self::Postgres(
                sqlx::PgConnection::connect(url)
                    .await
                    .expect("connect to PostgreSQL"),
            ),
            Backend::Sqlite => Self::Sqlite(
                sqlx::SqliteConnection::connect(url)
                    .await
                    .expect("connect to SQLite"),
            ),
        }
    }

    async fn close(self) {
        match self {
            Self::Postgres(conn) => conn.close().await.expect("close"),
            Self::Sqlite(conn) => conn.close().await.expect("close"),
        }
    }

    /// A UUID column as lower-case hex without dashes, on either backend.
    fn uuid(&self, column: &str) -> String {
        match self {
            Self::Postgres(_) => format!("replace(CAST({column} AS TEXT), '-', '')"),
            Self::Sqlite(_) => format!("lower(hex({column}))"),
        }
    }

    /// Any column as text (blobs as hex on SQLite).
    fn text(&self, column: &str) -> String {
        match self {
            Self::Postgres(_) => format!("CAST({column} AS TEXT)"),
            Self::Sqlite(_) => format!(
                "CASE WHEN typeof({column}) = 'blob' THEN hex({column}) ELSE CAST({column} AS TEXT) END"
            ),
        }
    }

    /// Every row, every column read as optional text (the query must cast to text).
    async fn rows(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self {
            Self::Postgres(conn) => sqlx::query(sql)
                .fetch_all(conn)
                .await
                .unwrap_or_else(|error| panic!("{sql}: {error}"))
                .iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| row.try_get::<Option<String>, _>(i).expect("text"))
                        .collect()
                })
                .collect(),
            Self::Sqlite(conn) => sqlx::query(sql)
                .fetch_all(conn)
                .await
                .unwrap_or_else(|error| panic!("{sql}: {error}"))
                .iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| row.try_get::<Option<String>, _>(i).expect("text"))
                        .collect()
                })
                .collect(),
        }
    }

    /// One integer (the query's first column of its first row, cast to text inside).
    async fn int(&mut self, sql: &str) -> i64 {
        let sql = format!("SELECT CAST(({sql}) AS TEXT)");
        let rows = self.rows(&sql).await;
        rows.first()
            .and_then(|row| row.first().cloned().flatten())
            .unwrap_or_default()
            .parse()
            .unwrap_or(0)
    }

    async fn tables(&mut self) -> Vec<String> {
        let sql = match self {
            Self::Postgres(_) => {
                "SELECT CAST(tablename AS TEXT) FROM pg_tables WHERE schemaname = 'public'"
            }
            Self::Sqlite(_) => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            }
        };
        let mut names: Vec<String> = self
            .rows(sql)
            .await
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .collect();
        names.sort();
        names
    }

    async fn columns(&mut self, table: &str) -> Vec<String> {
        let sql = match self {
            Self::Postgres(_) => format!(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY ordinal_position"
            ),
            Self::Sqlite(_) => {
                format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid")
            }
        };
        self.rows(&sql)
            .await
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .collect()
    }
}

/// Each table's rows, normalised (see the module's comment) and sorted.
type Dump = BTreeMap<String, Vec<Vec<Option<String>>>>;

/// Tables compared by a query of their own; every other table is compared whole.
const SPECIAL: [&str; 9] = [
    "accounts",
    "account_balances",
    "transfers",
    "pending_transfers",
    "transfer_failures",
    "assets",
    "cycles",
    "cycle_classes",
    "cycle_allotments",
];

/// Tables not compared: `usage_versions` counts changes for the usage memos' sake (one per
/// account made, among others), and the current cycle's accounts are left out above.
const LEFT_OUT: [&str; 1] = ["usage_versions"];

async fn dump(backend: Backend, url: &str, fixture: &Fixture) -> Dump {
    let mut db = Db::open(backend, url).await;
    let cycle = fixture.cycle;
    let until = fixture.until.as_micros();
    // The closed cycle's assets and CR; not the current cycle's (see the module's comment).
    let ours = |column: &str| format!("({column} = 'CR' OR {column} LIKE 'TOK.%.{cycle}')");
    // An instant: exact if the fixture wrote it, else only that a run did.
    let at = |column: &str| {
        format!(
            "CASE WHEN {column} IS NULL THEN NULL WHEN {column} <= {until} \
             THEN CAST({column} AS TEXT) ELSE 'during the run' END"
        )
    };
    let account = |alias: &str, db: &Db| {
        format!(
            "{alias}.asset, {}, CAST({alias}.kind AS TEXT)",
            db.uuid(&format!("{alias}.owner_org"))
        )
    };
    let mut queries: Vec<(String, String)> = Vec::new();
    queries.push((
        "accounts".to_owned(),
        format!(
            "SELECT {}, CAST(a.stripes AS TEXT), {}, \
             CAST(COALESCE(SUM(b.debits_pending), 0) AS TEXT), \
             CAST(COALESCE(SUM(b.debits_posted), 0) AS TEXT), \
             CAST(COALESCE(SUM(b.credits_pending), 0) AS TEXT), \
             CAST(COALESCE(SUM(b.credits_posted), 0) AS TEXT) \
             FROM accounts a LEFT JOIN account_balances b ON b.account_id = a.id \
             WHERE {} GROUP BY a.id, a.asset, a.owner_org, a.kind, a.stripes, a.created_at",
            account("a", &db),
            at("a.created_at"),
            ours("a.asset")
        ),
    ));
    queries.push((
        "transfers".to_owned(),
        format!(
            "SELECT {}, CAST(t.kind AS TEXT), {}, {}, t.asset, CAST(t.amount AS TEXT), {}, \
             CAST(t.code AS TEXT), CAST(t.timeout_seconds AS TEXT), t.metadata, \
             CAST(t.linked AS TEXT), {} \
             FROM transfers t JOIN accounts d ON d.id = t.debit_account_id \
             JOIN accounts c ON c.id = t.credit_account_id WHERE {}",
            db.uuid("t.id"),
            account("d", &db),
            account("c", &db),
            db.uuid("t.pending_id"),
            at("t.timestamp"),
            ours("t.asset")
        ),
    ));
    queries.push((
        "pending_transfers".to_owned(),
        format!(
            "SELECT {}, {}, {}, p.asset, CAST(p.amount AS TEXT), CAST(p.code AS TEXT), {}, {}, \
             CAST(p.state AS TEXT), {}, {} \
             FROM pending_transfers p JOIN accounts d ON d.id = p.debit_account_id \
             JOIN accounts c ON c.id = p.credit_account_id WHERE {}",
            db.uuid("p.id"),
            account("d", &db),
            account("c", &db),
            at("p.timestamp"),
            at("p.expires_at"),
            at("p.resolved_at"),
            db.uuid("p.resolved_by"),
            ours("p.asset")
        ),
    ));
    queries.push((
        "transfer_failures".to_owned(),
        format!(
            "SELECT {}, error, {} FROM transfer_failures",
            db.uuid("id"),
            at("timestamp")
        ),
    ));
    queries.push((
        "assets".to_owned(),
        format!(
            "SELECT code, CAST(class AS TEXT), {}, {} FROM assets WHERE {}",
            at("closed_at"),
            at("created_at"),
            ours("code")
        ),
    ));
    queries.push((
        "cycles".to_owned(),
        format!(
            "SELECT cycle, CAST(starts_at AS TEXT), CAST(ends_at AS TEXT), {}, {} \
             FROM cycles WHERE cycle = '{cycle}'",
            at("opened_at"),
            at("closed_at")
        ),
    ));
    queries.push((
        "cycle_classes".to_owned(),
        format!(
            "SELECT cycle, class, CAST(face_value_per_1m_micro_cr AS TEXT) FROM cycle_classes \
             WHERE cycle = '{cycle}'"
        ),
    ));
    queries.push((
        "cycle_allotments".to_owned(),
        format!(
            "SELECT cycle, {}, {} FROM cycle_allotments WHERE cycle = '{cycle}'",
            db.uuid("org_id"),
            at("allotted_at")
        ),
    ));
    for table in db.tables().await {
        if SPECIAL.contains(&table.as_str()) || LEFT_OUT.contains(&table.as_str()) {
            continue;
        }
        let columns = db.columns(&table).await;
        assert!(!columns.is_empty(), "{table} has columns");
        let list: Vec<String> = columns
            .iter()
            .map(|column| {
                // Listings are the one market table the close changes, and it stamps them.
                if table == "listings" && column.ends_with("_at") {
                    at(&format!("\"{column}\""))
                } else {
                    db.text(&format!("\"{column}\""))
                }
            })
            .collect();
        queries.push((
            table.clone(),
            format!("SELECT {} FROM \"{table}\"", list.join(", ")),
        ));
    }
    let mut dump = Dump::new();
    for (table, sql) in queries {
        let mut rows = db.rows(&sql).await;
        rows.sort();
        dump.insert(table, rows);
    }
    db.close().await;
    dump
}

/// Where two dumps differ: per table, the rows only one has (a few of them).
fn differences(a: &Dump, b: &Dump) -> Vec<String> {
    let tables: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = Vec::new();
    for table in tables {
        let (left, right) = (a.get(table), b.get(table));
        if left == right {
            continue;
        }
        let empty = Vec::new();
        let (left, right) = (left.unwrap_or(&empty), right.unwrap_or(&empty));
        let only_left: Vec<_> = left.iter().filter(|row| !right.contains(row)).collect();
        let only_right: Vec<_> = right.iter().filter(|row| !left.contains(row)).collect();
        out.push(format!(
            "{table}: {} rows vs {}; {} only in the first, e.g. {:?}; {} only in the second, e.g. {:?}",
            left.len(),
            right.len(),
            only_left.len(),
            only_left.iter().take(3).collect::<Vec<_>>(),
            only_right.len(),
            only_right.iter().take(3).collect::<Vec<_>>(),
        ));
    }
    out
}

/// A copy of the fixture's database, removed when done (SQLite: with its directory; PostgreSQL:
/// by [`DbCopy::finish`] after a passing test, as [`TestDb`] does).
struct DbCopy {
    url: String,
    postgres: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

fn postgres_admin() -> String {
    std::env::var("CREDEX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| credex_tests::DEFAULT_POSTGRES_URL.to_owned())
}

async fn copy_of(db: &TestDb, suffix: &str) -> DbCopy {
    match db.backend() {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("a directory");
            let path = dir.path().join("credex.db");
            let mut conn = sqlx::SqliteConnection::connect(db.url())
                .await
                .expect("connect");
            sqlx::query(&format!("VACUUM INTO '{}'", path.display()))
                .execute(&mut conn)
                .await
                .expect("copy the database");
            conn.close().await.expect("close");
            DbCopy {
                url: format!("sqlite://{}", path.display()),
                postgres: None,
                _dir: Some(dir),
            }
        }
        Backend::Postgres => {
            let (base, source) = db.url().rsplit_once('/').expect("a database name");
            let name = format!("{source}_{suffix}");
            let admin = postgres_admin();
            let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect");
            // The fixture's connections may take a moment to leave the server.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let made = sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {source}"))
                    .execute(&mut conn)
                    .await;
                match made {
                    Ok(_) => break,
                    Err(error) if Instant::now() < deadline => {
                        eprintln!("copy {name}: {error}; again");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(error) => panic!("copy {name}: {error}"),
                }
            }
            conn.close().await.expect("close");
            DbCopy {
                url: format!("{base}/{name}"),
                postgres: Some((admin, name)),
                _dir: None,
            }
        }
    }
}

impl DbCopy {
    async fn finish(self) {
        if let Some((admin, name)) = &self.postgres {
            let mut conn = sqlx::PgConnection::connect(admin).await.expect("connect");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .expect("drop a copy");
        }
    }
}

/// `credex serve` on a database, its log kept for a failing test's message.
struct Serve {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    started: Instant,
    _dir: tempfile::TempDir,
}

impl Drop for Serve {
    /// A failing test must not leave a server behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Serve {
    fn start(url: &str) -> Self {
        let dir = tempfile::tempdir().expect("a directory");
        let mut child = Command::new(env!("CARGO_BIN_EXE_credex"))
            .arg("serve")
            .env_remove("CREDEX_CONFIG")
            .env("DATABASE_URL", url)
            .env("CREDEX_BIND", "127.0.0.1:0")
            .env("CREDEX_DATA_DIR", dir.path())
            .env("CREDEX_ADMIN_EMAIL", ADMIN)
            .env("CREDEX_ADMIN_PASSWORD", PASSWORD)
            .env("CREDEX_JWT_SECRET", JWT_SECRET)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start credex serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().expect("the log").push(line);
            }
        });
        Self {
            child,
            log,
            started: Instant::now(),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        let log = self.log.lock().expect("the log");
        let from = log.len().saturating_sub(30);
        log[from..].join("\n")
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!("credex serve exited with {status}:\n{}", self.log());
        }
    }

    /// SIGKILL: the process stops at once, whatever it was doing.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, and the exit status once it stopped.
    fn stop(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "credex serve did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the close has done so far, as the journal and the cycle's rows show it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Progress {
    /// New transfers since the fixture, by (asset, code).
    made: BTreeMap<(String, i16), i64>,
    closed: bool,
}

impl Progress {
    fn count(&self, asset: &AssetCode, code: TransferCode) -> i64 {
        self.made
            .get(&(asset.as_str().to_owned(), code.number()))
            .copied()
            .unwrap_or(0)
    }
}

async fn progress(db: &mut Db, fixture: &Fixture) -> Progress {
    let rows = db
        .rows(&format!(
            "SELECT asset, CAST(code AS TEXT), CAST(COUNT(*) AS TEXT) FROM transfers \
             WHERE seq > {} GROUP BY asset, code",
            fixture.last_seq
        ))
        .await;
    let made = rows
        .into_iter()
        .map(|row| {
            let value = |i: usize| row[i].clone().expect("a value");
            (
                (value(0), value(1).parse().expect("a code")),
                value(2).parse().expect("a count"),
            )
        })
        .collect();
    let closed = db
        .int(&format!(
            "SELECT COUNT(*) FROM cycles WHERE cycle = '{}' AND closed_at IS NOT NULL",
            fixture.cycle
        ))
        .await
        == 1;
    Progress { made, closed }
}

/// Polls (every millisecond) until `done` holds; panics if the server exits first.
async fn wait_for(
    server: &mut Serve,
    db: &mut Db,
    fixture: &Fixture,
    what: &str,
    done: impl Fn(&Progress) -> bool,
) -> Progress {
    let deadline = Instant::now() + PATIENCE;
    loop {
        server.assert_running();
        let seen = progress(db, fixture).await;
        if done(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}; saw {seen:?}:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What is left to do of the close, per asset: open listings, and accounts the close would
/// still expire something of.
async fn left_to_do(db: &mut Db, fixture: &Fixture) -> Vec<(String, i64, i64)> {
    let kinds = [
        AccountKind::Alloc,
        AccountKind::Acquired,
        AccountKind::Escrow,
        AccountKind::Treasury,
    ]
    .map(|kind| kind.number().to_string())
    .join(", ");
    let mut out = Vec::new();
    for asset in &fixture.assets {
        let open = db
            .int(&format!(
                "SELECT COUNT(*) FROM listings WHERE asset = '{asset}' AND state = 'open'"
            ))
            .await;
        let holding = db
            .int(&format!(
                "SELECT COUNT(*) FROM (SELECT a.id FROM accounts a \
                 JOIN account_balances b ON b.account_id = a.id \
                 WHERE a.asset = '{asset}' AND a.kind IN ({kinds}) GROUP BY a.id \
                 HAVING SUM(b.credits_posted) - SUM(b.debits_posted) - SUM(b.debits_pending) > 0) \
                 AS holding"
            ))
            .await;
        out.push((asset.to_string(), open, holding));
    }
    out
}

/// The reference: one uninterrupted run, until the cycle is closed; then SIGTERM.
async fn run_uninterrupted(backend: Backend, url: &str, fixture: &Fixture) -> Duration {
    let mut db = Db::open(backend, url).await;
    let mut server = Serve::start(url);
    let done = wait_for(&mut server, &mut db, fixture, "the close", |p| p.closed).await;
    let took = server.started.elapsed();
    let log = server.log();
    let status = server.stop();
    assert!(
        status.success(),
        "credex serve exited with {status}:\n{log}"
    );
    eprintln!("reference: closed in {took:?} (from the process's start): {done:?}");
    db.close().await;
    took
}

/// Kills the server at the first sign of each step of the close, restarting it each time,
/// then lets one run finish. Returns how many kills cut the close half-way through expiring
/// an asset's accounts.
async fn run_interrupted(backend: Backend, url: &str, fixture: &Fixture) -> usize {
    let (first, last) = (
        fixture.assets.first().expect("an asset").clone(),
        fixture.assets.last().expect("an asset").clone(),
    );
    type Trigger = Box<dyn Fn(&Progress) -> bool>;
    let (unlist_first, expiry_first, expiry_last) = (first.clone(), first.clone(), last.clone());
    let triggers: Vec<(String, Trigger)> = vec![
        (
            format!("the first platform cancel in {first}"),
            Box::new(move |p: &Progress| p.count(&unlist_first, TransferCode::Unlist) > 0),
        ),
        (
            format!("the first expiry in {first}"),
            Box::new(move |p: &Progress| p.count(&expiry_first, TransferCode::Expiry) > 0),
        ),
        (
            format!("the first expiry in {last}"),
            Box::new(move |p: &Progress| p.count(&expiry_last, TransferCode::Expiry) > 0),
        ),
    ];
    let mut db = Db::open(backend, url).await;
    let mut mid_expiry = 0;
    for (n, (what, trigger)) in triggers.iter().enumerate() {
        let mut server = Serve::start(url);
        let seen = wait_for(&mut server, &mut db, fixture, what, |p| {
            p.closed || trigger(p)
        })
        .await;
        let took = server.started.elapsed();
        server.kill();
        let after = progress(&mut db, fixture).await;
        let left = left_to_do(&mut db, fixture).await;
        eprintln!(
            "kill {}: at {what}, {took:?} after the start; then {after:?}; left per asset \
             (open listings, accounts holding tokens): {left:?}",
            n + 1
        );
        assert!(
            !seen.closed && !after.closed,
            "the close finished before kill {} ({what}); make it longer (more orgs)",
            n + 1
        );
        assert!(
            after.made.values().sum::<i64>() > 0,
            "kill {}: the close made nothing yet",
            n + 1
        );
        let total: i64 = left.iter().map(|(_, open, holding)| open + holding).sum();
        assert!(total > 0, "kill {}: nothing left to do", n + 1);
        if n == 0 {
            // Some listings cancelled, some not: cut in the middle of the cancels.
            assert!(after.count(&first, TransferCode::Unlist) > 0);
            assert!(left[0].1 > 0, "kill 1 came after every cancel of {first}");
        } else {
            let asset = if n == 1 { &first } else { &last };
            let index = usize::from(n != 1) * (fixture.assets.len() - 1);
            if after.count(asset, TransferCode::Expiry) > 0 && left[index].2 > 0 {
                mid_expiry += 1;
            }
        }
    }
    let mut server = Serve::start(url);
    let done = wait_for(&mut server, &mut db, fixture, "the close", |p| p.closed).await;
    let took = server.started.elapsed();
    let log = server.log();
    let status = server.stop();
    assert!(
        status.success(),
        "credex serve exited with {status}:\n{log}"
    );
    eprintln!("interrupted: the last run closed in {took:?}: {done:?}");
    db.close().await;
    mid_expiry
}

/// The reference did the close's work: no listing of the cycle open, nothing left to expire
/// (held tokens stay held), the cycle and its assets closed, and the books balance.
async fn assert_closed(backend: Backend, url: &str, fixture: &Fixture) {
    let mut db = Db::open(backend, url).await;
    for (asset, open, holding) in left_to_do(&mut db, fixture).await {
        assert_eq!((open, holding), (0, 0), "{asset}: left undone");
        let closed = db
            .int(&format!(
                "SELECT COUNT(*) FROM assets WHERE code = '{asset}' AND closed_at IS NOT NULL"
            ))
            .await;
        assert_eq!(closed, 1, "{asset} is closed");
    }
    let done = progress(&mut db, fixture).await;
    assert!(done.closed);
    for asset in &fixture.assets {
        assert!(
            done.count(asset, TransferCode::Expiry) > 0,
            "{asset}: {done:?}"
        );
    }
    let first = &fixture.assets[0];
    assert!(done.count(first, TransferCode::Unlist) > 0, "{done:?}");
    db.close().await;
    let store = credex_store::connect(url, Arc::new(credex_store::SystemClock))
        .await
        .expect("connect");
    let report = store.check().await.expect("check");
    assert!(report.is_ok(), "the books do not balance: {report:?}");
    assert!(report.unbalanced_assets.is_empty());
    store.close().await;
}

async fn a_killed_close_ends_as_an_uninterrupted_one(db: &TestDb) {
    let started = Instant::now();
    let fixture = build_fixture(db).await;
    assert!(fixture.listings_open > 100, "{fixture:?}");
    let before = dump(db.backend(), db.url(), &fixture).await;
    let reference = copy_of(db, "a").await;
    let interrupted = copy_of(db, "b").await;
    assert!(
        differences(
            &before,
            &dump(db.backend(), &interrupted.url, &fixture).await
        )
        .is_empty(),
        "a copy is the fixture"
    );

    let reference_took = run_uninterrupted(db.backend(), &reference.url, &fixture).await;
    assert_closed(db.backend(), &reference.url, &fixture).await;
    let mid_expiry = run_interrupted(db.backend(), &interrupted.url, &fixture).await;
    assert!(
        mid_expiry >= 1,
        "no kill landed while an asset's accounts were being expired"
    );
    assert_closed(db.backend(), &interrupted.url, &fixture).await;

    let expected = dump(db.backend(), &reference.url, &fixture).await;
    let actual = dump(db.backend(), &interrupted.url, &fixture).await;
    // The comparison sees the close's work at all: the reference is not the fixture.
    assert!(!differences(&before, &expected).is_empty());
    let differ = differences(&expected, &actual);
    assert!(
        differ.is_empty(),
        "the interrupted close ended elsewhere than the uninterrupted one:\n{}",
        differ.join("\n")
    );
    let rows: usize = expected.values().map(Vec::len).sum();
    eprintln!(
        "{:?}: {rows} rows in {} tables equal; reference close {reference_took:?}; \
         {mid_expiry} of 2 later kills cut an expiry half-way; {:?} in all",
        db.backend(),
        expected.len(),
        started.elapsed()
    );
    reference.finish().await;
    interrupted.finish().await;
}

on_both_backends!(a_killed_close_ends_as_an_uninterrupted_one);
