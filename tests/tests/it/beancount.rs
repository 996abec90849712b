//! The Beancount export, proven with an independent tool: `bean-check` from PyPI's `beancount`.
//!
//! A ledger with every kind of entry is exported; `bean-check` must accept the file, and the
//! balances Beancount computes from it (`scripts/bean_balances.py`, which loads the file with
//! `beancount.loader` and realizes it) must equal the ledger's own, account by account and
//! asset by asset; so must every transaction's payee, narration and metadata. Then a stored
//! balance is corrupted: `bean-check` must refuse the export (its balance assertions come from
//! the stored balances) and the books check must name the account.
//!
//! Finding the tools: `CREDEX_BEAN_CHECK` (the `bean-check` executable; the Python for the
//! script is the `python3` beside it), else `<repo>/.venv/bin/bean-check`, else `bean-check` on
//! `PATH`. Without any, the test says it did not run and passes, except under `CI=true`, where
//! it fails. To install: `python3 -m venv .venv && .venv/bin/pip install beancount`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use credex_ledger::{
    Account, AccountId, AccountKind, AssetClass, AssetCode, Balance, ManualClock, Metadata, Owner,
    Timestamp, Transfer, TransferCode, TransferError, TransferKind,
};
use credex_store::{AccountView, Backend, CloseOutcome, Ledger, Store};
use credex_tests::books::{pending, post, single, void};
use credex_tests::{on_both_backends, Books, TestDb};
use sqlx::Connection;

/// 2026-11-26T00:00:00Z.
const NOV_26: Timestamp = Timestamp::from_micros(1_795_651_200_000_000);
const DAY_SECONDS: u32 = 86_400;
const DATES: [&str; 5] = [
    "2026-11-26",
    "2026-11-27",
    "2026-11-28",
    "2026-11-29",
    "2026-11-30",
];

const QUOTED: &str = r#"{"memo":"top \"up\" from C:\\credex\\grants","by":"ops"}"#;
const TRAILING_BACKSLASH: &str = r#"order o-1 \ said: \"buy\" \\"#;

/// Where `bean-check` and the Python that runs the balance script are.
#[derive(Debug)]
struct BeanTools {
    bean_check: PathBuf,
    python: PathBuf,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python_beside(bean_check: &Path) -> PathBuf {
    bean_check
        .parent()
        .map(|dir| dir.join("python3"))
        .filter(|python| python.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Finds the tools, or says the check did not run (and fails under `CI=true`).
fn bean_tools() -> Option<BeanTools> {
    let found = if let Some(path) = std::env::var_os("CREDEX_BEAN_CHECK") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "CREDEX_BEAN_CHECK names {}, which is not a file",
            path.display()
        );
        Some(path)
    } else {
        let venv = repo().join(".venv/bin/bean-check");
        if venv.is_file() {
            Some(venv)
        } else {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("bean-check"))
                    .find(|candidate| candidate.is_file())
            })
        }
    };
    match found {
        Some(bean_check) => Some(BeanTools {
            python: python_beside(&bean_check),
            bean_check,
        }),
        None => {
            let how = "set CREDEX_BEAN_CHECK, or run `python3 -m venv .venv && \
                       .venv/bin/pip install beancount` in the repository";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "bean-check is required under CI=true but was not found: {how}"
            );
            eprintln!("bean-check not found: the Beancount check did not run ({how})");
            None
        }
    }
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn bean_check(tools: &BeanTools, file: &Path) -> Output {
    run(Command::new(&tools.bean_check).arg(file))
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What Beancount computed from a file: see `scripts/bean_balances.py`.
#[derive(Debug)]
struct BeanView {
    /// (account, currency) → units, in the asset's smallest unit.
    balances: BTreeMap<(String, String), i128>,
    /// transfer id → (date, payee, narration, kind).
    transactions: HashMap<String, (String, String, String, String)>,
    transaction_count: usize,
    errors: Vec<String>,
}

fn bean_view(tools: &BeanTools, file: &Path) -> BeanView {
    let script = repo().join("scripts/bean_balances.py");
    let output = run(Command::new(&tools.python).arg(&script).arg(file));
    assert!(
        output.status.success(),
        "bean_balances.py failed: {}",
        describe(&output)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the script prints JSON");
    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_owned();
    let mut balances = BTreeMap::new();
    for (account, per_currency) in json["balances"].as_object().expect("balances") {
        for (currency, units) in per_currency.as_object().expect("currencies") {
            let units = minor_units(units.as_str().expect("a decimal string"), currency)
                .unwrap_or_else(|| panic!("{account}: {units} {currency} is not exact"));
            balances.insert((account.clone(), currency.clone()), units);
        }
    }
    let list = json["transactions"].as_array().expect("transactions");
    let transactions = list
        .iter()
        .map(|t| {
            (
                text(&t["meta"]["transfer"]),
                (
                    text(&t["date"]),
                    text(&t["payee"]),
                    text(&t["narration"]),
                    text(&t["meta"]["kind"]),
                ),
            )
        })
        .collect();
    let errors = json["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(text)
        .collect();
    BeanView {
        balances,
        transactions,
        transaction_count: list.len(),
        errors,
    }
}

/// A plain decimal in the unit Beancount shows (CR, tokens) as the asset's smallest unit
/// (µCR, tokens); `None` unless exact.
fn minor_units(text: &str, currency: &str) -> Option<i128> {
    let scale = if currency == "CR" { 6 } else { 0 };
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let fraction = fraction.trim_end_matches('0');
    let digits_only = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits_only(whole) || !digits_only(fraction) {
        return None;
    }
    if fraction.len() > scale {
        return None;
    }
    let padded = format!("{whole}{fraction:0<scale$}");
    let value: i128 = padded.parse().ok()?;
    Some(if negative { -value } else { value })
}

/// The Beancount account of a ledger account, as the export names it: one per owner and kind.
fn bean_account(account: &Account) -> String {
    let kind = account.kind().name();
    let title = format!("{}{}", kind[..1].to_ascii_uppercase(), &kind[1..]);
    match account.owner() {
        Owner::Provider => {
            let root = match account.kind() {
                AccountKind::Issuance => "Equity",
                AccountKind::Treasury => "Assets",
                _ => "Income",
            };
            format!("{root}:Provider:{title}")
        }
        Owner::Org(org) => format!("Assets:Org:O{}:{title}", org.as_uuid().simple()),
    }
}

fn bean_currency(asset: &AssetCode) -> String {
    asset.as_str().to_ascii_uppercase()
}

/// The ledger's net posted balances keyed as Beancount keys them, zeros left out.
fn ledger_balances(views: &[AccountView]) -> BTreeMap<(String, String), i128> {
    let mut balances = BTreeMap::new();
    for view in views {
        let net = view.balance.net_posted();
        if net != 0 {
            let key = (
                bean_account(&view.account),
                bean_currency(view.account.asset()),
            );
            let previous = balances.insert(key.clone(), net);
            assert!(previous.is_none(), "two ledger accounts map to {key:?}");
        }
    }
    balances
}

fn metadata(text: &str) -> Metadata {
    Metadata::new(text).expect("valid metadata")
}

async fn commit_ok(ledger: &Ledger, transfers: Vec<Transfer>) {
    let results = ledger
        .create_transfers(transfers.clone())
        .await
        .expect("commit");
    assert_eq!(results, vec![Ok(()); transfers.len()], "{transfers:?}");
}

/// Available balances of accounts, by id.
async fn balances(store: &dyn Store, ids: &[AccountId]) -> Vec<Balance> {
    let views = store.accounts(ids).await.expect("accounts");
    assert_eq!(views.len(), ids.len());
    views.into_iter().map(|v| v.balance).collect()
}

/// Builds books with every kind of entry, over four days: grants and a top-up, allotments,
/// a listing, a market fill with its fee, spends, a partially posted pending transfer, a voided
/// one, one left open, an unlisting, then the token cycle closed and its remaining tokens
/// (and some credits) expired. Metadata carries quotes and backslashes.
async fn build(clock: &ManualClock, ledger: &Ledger) -> Books {
    use TransferCode::*;
    let books = Books::open(ledger, 3).await;
    let store = ledger.store().as_ref();
    let (cr, tok) = (&books.credit, &books.token);
    let provider = |asset: &AssetCode, kind| books.provider(asset, kind);
    let [o0, o1, o2] = [books.orgs[0], books.orgs[1], books.orgs[2]];

    // Day 0: credits and tokens enter.
    let mut funding = Vec::new();
    for org in &books.orgs {
        funding.push(single(
            provider(cr, AccountKind::Issuance),
            org.wallet,
            cr,
            1_000_000_000,
            Grant,
        ));
        funding.push(single(
            provider(tok, AccountKind::Issuance),
            org.alloc,
            tok,
            1_000_000,
            Allotment,
        ));
    }
    funding[0] = funding[0].clone().with_metadata(metadata(QUOTED));
    funding.push(single(
        provider(cr, AccountKind::Issuance),
        o2.wallet,
        cr,
        250_000_001,
        TopUp,
    ));
    commit_ok(ledger, funding).await;

    // Day 1: a listing and a market fill (tokens, price, fee as one chain).
    clock.advance_seconds(DAY_SECONDS + 3_600);
    commit_ok(
        ledger,
        vec![single(o0.alloc, o0.escrow, tok, 300_000, List)],
    )
    .await;
    let fill = credex_tests::books::chain(vec![
        single(o0.escrow, o1.acquired, tok, 100_000, Trade)
            .with_metadata(metadata(TRAILING_BACKSLASH)),
        single(o1.wallet, o0.wallet, cr, 12_345_678, Trade),
        single(o1.wallet, provider(cr, AccountKind::Fees), cr, 123_457, Fee),
    ]);
    commit_ok(ledger, fill).await;

    // Day 2: consumption, two-phase transfers, an unlisting.
    clock.advance_seconds(DAY_SECONDS);
    let spent_cr = provider(cr, AccountKind::Spent);
    let spent_tok = provider(tok, AccountKind::Spent);
    commit_ok(
        ledger,
        vec![
            single(o1.acquired, spent_tok, tok, 40_000, Spend),
            single(o2.wallet, spent_cr, cr, 1_500_000, Spend),
            single(o2.alloc, spent_tok, tok, 10_000, Spend),
        ],
    )
    .await;
    let partial = pending(o2.wallet, spent_cr, cr, 5_000_000, Spend, Some(3_600));
    let voided = pending(o1.alloc, spent_tok, tok, 20_000, Spend, None);
    let open = pending(o0.wallet, spent_cr, cr, 7, Spend, None);
    commit_ok(ledger, vec![partial.clone(), voided.clone(), open]).await;
    clock.advance_seconds(600);
    commit_ok(
        ledger,
        vec![
            post(partial.id(), Some(3_000_000)).with_metadata(metadata(r#"usage "batch" \7"#)),
            void(voided.id()),
            single(o0.escrow, o0.alloc, tok, 50_000, Unlist),
        ],
    )
    .await;

    // Day 3: the cycle closes; what is left of its tokens expires, and so do some credits.
    clock.advance_seconds(DAY_SECONDS);
    assert_eq!(
        store.close_asset(tok).await.expect("close"),
        CloseOutcome::Closed
    );
    let refused = ledger
        .create_transfers(vec![single(o0.alloc, spent_tok, tok, 1, Spend)])
        .await
        .expect("commit");
    assert_eq!(refused, vec![Err(TransferError::CycleClosed)]);
    let expired_tok = provider(tok, AccountKind::Expired);
    let mut expiry = Vec::new();
    for org in &books.orgs {
        let ids = [org.alloc, org.acquired, org.escrow];
        for (id, balance) in ids.iter().zip(balances(store, &ids).await) {
            let left = u64::try_from(balance.available()).expect("not negative");
            if left > 0 {
                expiry.push(single(*id, expired_tok, tok, left, Expiry));
            }
        }
    }
    assert_eq!(
        expiry.len(),
        5,
        "allocs of all three, o0's escrow, o1's acquired"
    );
    expiry.push(single(
        o1.wallet,
        provider(cr, AccountKind::Expired),
        cr,
        1_000_001,
        Expiry,
    ));
    commit_ok(ledger, expiry).await;
    books
}

/// Exports the store to a file in `dir`.
async fn export(
    store: &dyn Store,
    dir: &Path,
    name: &str,
) -> (PathBuf, credex_store::ExportSummary) {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("create the export file");
    let mut out = std::io::BufWriter::new(file);
    let summary = credex_store::export_beancount(store, &mut out)
        .await
        .expect("export");
    out.flush().expect("write the export file");
    (path, summary)
}

async fn beancount_export(db: &TestDb) {
    let Some(tools) = bean_tools() else { return };
    let clock = Arc::new(ManualClock::new(NOV_26));
    let ledger = db.ledger(clock.clone()).await;
    let books = build(&clock, &ledger).await;
    ledger.close().await;
    let store = ledger.store().as_ref();

    let dir = tempfile::tempdir().expect("a temporary directory");
    let (path, summary) = export(store, dir.path(), "credex.beancount").await;
    let snapshot = store.snapshot().await.expect("snapshot");
    let mut journal = store.journal(i64::MIN, 1_000).await.expect("journal");
    assert!(journal.len() < 1_000);
    journal.retain(|entry| entry.record.kind.moves_posted());
    assert_eq!(summary.accounts, snapshot.len());
    assert_eq!(summary.assertions, snapshot.len());
    assert_eq!(
        summary.transactions,
        u64::try_from(journal.len()).expect("small")
    );

    // Beancount's balances are the ledger's, for every account and asset.
    let view = bean_view(&tools, &path);
    let ours = ledger_balances(&snapshot);
    assert_eq!(
        view.balances, ours,
        "Beancount's balances (left) differ from the ledger's (right)"
    );
    // A CR amount at µCR precision and a token amount were carried exactly.
    let o2 = books.orgs[2];
    let wallet = store.accounts(&[o2.wallet]).await.expect("wallet")[0].clone();
    let key = |view: &AccountView| {
        (
            bean_account(&view.account),
            bean_currency(view.account.asset()),
        )
    };
    assert_eq!(view.balances[&key(&wallet)], 1_245_500_001);
    let expired = store
        .accounts(&[books.provider(&books.token, AccountKind::Expired)])
        .await
        .expect("expired")[0]
        .clone();
    assert_eq!(
        view.balances[&key(&expired)],
        750_000 + 1_000_000 + 990_000 + 150_000 + 60_000
    );

    // Every posted movement is one transaction carrying its id, code, metadata and day.
    assert_eq!(view.transaction_count, journal.len());
    for entry in &journal {
        let record = &entry.record;
        let Some((date, payee, narration, kind)) = view.transactions.get(&record.id.to_string())
        else {
            panic!("transfer {} is not in the export", record.id);
        };
        let day = (record.timestamp.as_micros() - NOV_26.as_micros()) / 86_400_000_000;
        let expected_date = DATES[usize::try_from(day).expect("after Nov 26")];
        assert_eq!(date, expected_date, "{record:?}");
        assert_eq!(payee, record.code.name(), "{record:?}");
        assert_eq!(narration, record.metadata.as_str(), "{record:?}");
        assert_eq!(kind, record.kind.name(), "{record:?}");
    }
    let narrations: Vec<&str> = view
        .transactions
        .values()
        .map(|(_, _, n, _)| n.as_str())
        .collect();
    for text in [QUOTED, TRAILING_BACKSLASH, r#"usage "batch" \7"#] {
        assert!(narrations.contains(&text), "{text} did not survive");
    }
    let posts = journal
        .iter()
        .filter(|e| e.record.kind == TransferKind::Post)
        .count();
    assert_eq!(posts, 1);

    // And Beancount accepts the file: every balance assertion holds.
    assert_eq!(view.errors, Vec::<String>::new(), "Beancount's errors");
    let checked = bean_check(&tools, &path);
    assert!(
        checked.status.success(),
        "bean-check refused the export {}: {}",
        path.display(),
        describe(&checked)
    );
    let report = store.check().await.expect("check");
    assert!(report.is_ok(), "{report:?}");
}

/// Adds `delta` to the posted credits of one stripe of an account, behind the ledger's back.
async fn corrupt(db: &TestDb, account: AccountId, delta: i64) {
    const SQL: &str = "UPDATE account_balances SET credits_posted = credits_posted + $1 \
                       WHERE account_id = $2 AND slot = 0";
    let id = account.as_uuid();
    let changed = match db.backend() {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(db.url())
                .await
                .expect("connect to SQLite");
            let query = sqlx::query(SQL).bind(delta).bind(id);
            query
                .execute(&mut conn)
                .await
                .expect("corrupt")
                .rows_affected()
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(db.url())
                .await
                .expect("connect to PostgreSQL");
            let query = sqlx::query(SQL).bind(delta).bind(id);
            query
                .execute(&mut conn)
                .await
                .expect("corrupt")
                .rows_affected()
        }
    };
    assert_eq!(changed, 1);
}

/// A corrupted stored balance makes `bean-check` refuse the export, naming the account, and
/// the books check report it; both for a token balance and for one µCR.
async fn beancount_detects_corruption(db: &TestDb) {
    let Some(tools) = bean_tools() else { return };
    let clock = Arc::new(ManualClock::new(NOV_26));
    let ledger = db.ledger(clock.clone()).await;
    let books = build(&clock, &ledger).await;
    ledger.close().await;
    let store = ledger.store().as_ref();
    let dir = tempfile::tempdir().expect("a temporary directory");

    let (clean, _) = export(store, dir.path(), "clean.beancount").await;
    let checked = bean_check(&tools, &clean);
    assert!(
        checked.status.success(),
        "bean-check refused the uncorrupted export: {}",
        describe(&checked)
    );

    let o0 = books.orgs[0];
    let targets = [
        (o0.escrow, "escrow, +1 token"),
        (o0.wallet, "wallet, +1 µCR"),
    ];
    for (round, (account, what)) in targets.into_iter().enumerate() {
        let before = balances(store, &[account]).await[0];
        corrupt(db, account, 1).await;

        let report = store.check().await.expect("check");
        assert!(!report.is_ok());
        assert_eq!(report.discrepancies.len(), 1, "{report:?}");
        let found = &report.discrepancies[0];
        assert_eq!(found.account_id, account);
        assert_eq!(found.journal, before);
        assert_eq!(
            found.stored,
            Balance {
                credits_posted: before.credits_posted + 1,
                ..before
            }
        );
        let asset = store.accounts(&[account]).await.expect("account")[0]
            .account
            .asset()
            .clone();
        assert_eq!(report.unbalanced_assets, vec![(asset, 1, 0)]);
        assert!(report.negative_accounts.is_empty());

        let (path, _) = export(store, dir.path(), &format!("corrupt-{round}.beancount")).await;
        let checked = bean_check(&tools, &path);
        let view = store.accounts(&[account]).await.expect("account");
        let name = bean_account(&view[0].account);
        assert!(
            !checked.status.success(),
            "bean-check accepted an export whose {what} balance was corrupted: {}",
            describe(&checked)
        );
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
        assert!(
            said.contains(&format!("Balance failed for '{name}'")),
            "bean-check failed, but not on {name}: {said}"
        );

        corrupt(db, account, -1).await;
        assert!(store.check().await.expect("check").is_ok());
    }
    let (again, _) = export(store, dir.path(), "restored.beancount").await;
    assert!(bean_check(&tools, &again).status.success());
    assert_eq!(bean_currency(&books.credit), "CR");
    assert_eq!(books.token.class(), AssetClass::Token);
}

on_both_backends!(beancount_export, beancount_detects_corruption);

#[test]
fn minor_units_are_exact() {
    assert_eq!(minor_units("12.345678", "CR"), Some(12_345_678));
    assert_eq!(minor_units("-0.000007", "CR"), Some(-7));
    assert_eq!(minor_units("3", "CR"), Some(3_000_000));
    assert_eq!(minor_units("1.0000001", "CR"), None);
    assert_eq!(minor_units("-100000", "TOK.PRO.X"), Some(-100_000));
    assert_eq!(minor_units("1.5", "TOK.PRO.X"), None);
    assert_eq!(minor_units("1E+3", "CR"), None);
}
