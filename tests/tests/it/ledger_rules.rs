//! The ten ledger rules of the spec, each shown on both backends.
//!
//! Every test is data-driven where it can be: a case is one line of (what it shows, the transfer,
//! the exact result expected), sent as a request of its own through [`Fx::check`], and every
//! mismatch is reported at once. Balances are asserted exactly, never just "no panic".

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use credex_ledger::{
    Account, AccountError, AccountId, AccountKind, Action, AssetCode, Balance, Clock, ManualClock,
    Metadata, OrgId, Owner, PendingState, Timestamp, Transfer, TransferCode, TransferError,
    TransferId, TransferKind, TransferResult, BATCH_MAX,
};
use credex_store::{
    AccountView, CloseOutcome, CreateAccountError, HistoryCursor, JournalEntry, Ledger, Store,
    StoreError,
};
use credex_tests::books::{chain, movement, pending, post, single, void, OrgAccounts};
use credex_tests::{on_both_backends, Books, TestDb};
use tokio::task::JoinSet;

use AccountKind as K;
use TransferCode as C;
use TransferError as E;

const NOV_26: Timestamp = Timestamp::from_micros(1_795_651_200_000_000);
const OK: TransferResult = Ok(());
fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(NOV_26))
}

// ---------------------------------------------------------------------------------------------
// Fixture and helpers
// ---------------------------------------------------------------------------------------------

/// A ledger on a fresh database with [`Books`]: CR, one token asset, the provider's accounts and
/// some orgs.
struct Fx {
    clock: Arc<ManualClock>,
    ledger: Arc<Ledger>,
    books: Books,
}

/// One case of a table: what it shows, the transfer, the exact result expected.
type Case = (&'static str, Transfer, TransferResult);

impl Fx {
    async fn new(db: &TestDb, orgs: usize) -> Self {
        let clock = clock();
        let ledger = Arc::new(db.ledger(clock.clone()).await);
        let books = Books::open(&ledger, orgs).await;
        Self {
            clock,
            ledger,
            books,
        }
    }

    fn store(&self) -> &Arc<dyn Store> {
        self.ledger.store()
    }

    fn cr(&self) -> AssetCode {
        self.books.credit.clone()
    }

    fn tok(&self) -> AssetCode {
        self.books.token.clone()
    }

    /// The provider's CR account of this kind.
    fn p_cr(&self, kind: AccountKind) -> AccountId {
        self.books.provider(&self.books.credit, kind)
    }

    /// The provider's token account of this kind.
    fn p_tok(&self, kind: AccountKind) -> AccountId {
        self.books.provider(&self.books.token, kind)
    }

    fn org(&self, i: usize) -> OrgAccounts {
        self.books.orgs[i]
    }

    /// One request through the ledger (group commit); panics on a storage error.
    async fn submit(&self, transfers: Vec<Transfer>) -> Vec<TransferResult> {
        self.ledger
            .create_transfers(transfers)
            .await
            .expect("the request commits")
    }

    /// One request whose every transfer must succeed.
    async fn ok(&self, transfers: Vec<Transfer>) {
        let n = transfers.len();
        assert_eq!(self.submit(transfers).await, vec![OK; n]);
    }

    /// Sends each case as a request of its own, in order, and reports every mismatch at once.
    async fn check(&self, cases: Vec<Case>) {
        let mut wrong = Vec::new();
        for (what, transfer, expected) in cases {
            let got = self.submit(vec![transfer]).await;
            if got != vec![expected] {
                wrong.push(format!("{what}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(wrong.is_empty(), "mismatches:\n{}", wrong.join("\n"));
    }

    async fn balance(&self, id: AccountId) -> Balance {
        let mut views = self.store().accounts(&[id]).await.expect("read an account");
        assert_eq!(views.len(), 1, "account {id} exists");
        views.pop().expect("one view").balance
    }

    /// (net posted, net pending) of an account.
    async fn nets(&self, id: AccountId) -> (i128, i128) {
        let balance = self.balance(id).await;
        (balance.net_posted(), balance.net_pending())
    }

    async fn snapshot(&self) -> Vec<AccountView> {
        self.store().snapshot().await.expect("a snapshot")
    }

    async fn journal(&self) -> Vec<JournalEntry> {
        journal_of(self.store().as_ref()).await
    }

    /// Rule 1 and the books check: every asset sums to zero, posted and pending, and the stored
    /// balances agree with the journal.
    async fn assert_books_ok(&self) {
        let report = self.store().check().await.expect("the books check runs");
        assert!(report.is_ok(), "{report:?}");
        let journal = self.journal().await;
        assert_eq!(
            report.journal_entries,
            i64::try_from(journal.len()).expect("few entries")
        );
        for (asset, (posted, pending)) in sums_per_asset(&self.snapshot().await) {
            assert_eq!((posted, pending), (0, 0), "{asset} sums to zero");
        }
    }

    async fn close(self) {
        self.ledger.close().await;
    }
}

/// The whole journal, paged.
async fn journal_of(store: &dyn Store) -> Vec<JournalEntry> {
    let mut all = Vec::new();
    let mut after = i64::MIN;
    loop {
        let page = store.journal(after, 1_000).await.expect("read the journal");
        let Some(last) = page.last() else {
            return all;
        };
        after = last.seq;
        all.extend(page);
    }
}

/// Per asset: (sum of net posted, sum of net pending) over every account.
fn sums_per_asset(views: &[AccountView]) -> BTreeMap<AssetCode, (i128, i128)> {
    let mut sums: BTreeMap<AssetCode, (i128, i128)> = BTreeMap::new();
    for view in views {
        let sum = sums.entry(view.account.asset().clone()).or_default();
        sum.0 += view.balance.net_posted();
        sum.1 += view.balance.net_pending();
    }
    sums
}

fn bal(
    debits_pending: u64,
    debits_posted: u64,
    credits_pending: u64,
    credits_posted: u64,
) -> Balance {
    Balance {
        debits_pending,
        debits_posted,
        credits_pending,
        credits_posted,
    }
}

fn tid() -> TransferId {
    TransferId::generate()
}

/// A single-phase transfer with a chosen id.
fn mv(
    id: TransferId,
    debit: AccountId,
    credit: AccountId,
    asset: &AssetCode,
    value: u64,
    code: TransferCode,
) -> Transfer {
    Transfer::movement(id, movement(debit, credit, asset, value, code))
}

/// A pending transfer with a chosen id.
fn reserve(
    id: TransferId,
    debit: AccountId,
    credit: AccountId,
    asset: &AssetCode,
    value: u64,
    code: TransferCode,
    timeout_seconds: Option<u32>,
) -> Transfer {
    Transfer::new(
        id,
        Action::Reserve {
            movement: movement(debit, credit, asset, value, code),
            timeout_seconds,
        },
        Metadata::default(),
        false,
    )
    .expect("a well-formed pending transfer")
}

/// A post with a chosen id.
fn post_as(id: TransferId, pending_id: TransferId, value: Option<u64>) -> Transfer {
    Transfer::new(
        id,
        Action::Post {
            pending_id,
            amount: value.map(credex_tests::books::amount),
        },
        Metadata::default(),
        false,
    )
    .expect("a well-formed post")
}

/// A void with a chosen id.
fn void_as(id: TransferId, pending_id: TransferId) -> Transfer {
    Transfer::new(id, Action::Void { pending_id }, Metadata::default(), false)
        .expect("a well-formed void")
}

fn meta(transfer: Transfer, text: &str) -> Transfer {
    transfer.with_metadata(Metadata::new(text).expect("valid metadata"))
}

// ---------------------------------------------------------------------------------------------
// The example
// ---------------------------------------------------------------------------------------------

async fn smoke(db: &TestDb) {
    let clock = clock();
    let ledger = db.ledger(clock.clone()).await;
    let books = Books::open(&ledger, 2).await;
    let issuance = books.provider(&books.credit, AccountKind::Issuance);
    let a = books.orgs[0];
    let b = books.orgs[1];
    let results = ledger
        .create_transfers(vec![
            single(
                issuance,
                a.wallet,
                &books.credit,
                1_000,
                TransferCode::Grant,
            ),
            single(a.wallet, b.wallet, &books.credit, 400, TransferCode::Trade),
            single(a.wallet, b.wallet, &books.credit, 601, TransferCode::Trade),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![Ok(()), Ok(()), Err(TransferError::ExceedsCredits)]
    );
    let views = ledger
        .store()
        .accounts(&[a.wallet, b.wallet])
        .await
        .unwrap();
    assert_eq!(views[0].balance.net_posted(), 600);
    assert_eq!(views[1].balance.net_posted(), 400);
    let report = ledger.store().check().await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    // The ledger counts what it answered, for metrics.
    assert_eq!(
        ledger.transfer_counts(),
        vec![
            ("grant", "ok", 1),
            ("trade", "exceeds_credits", 1),
            ("trade", "ok", 1)
        ]
    );
    ledger.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rule 1: balanced double entry
// ---------------------------------------------------------------------------------------------

/// Rule 1: after a mix of every kind of transfer (grants, top-ups, allotments, a trade chain
/// with its fee, spends, a buyback, an emergency sale, posted, voided and open pending
/// transfers, a refused transfer, a reversal), each asset's balances sum to zero, posted and
/// pending, every account holds exactly what its transfers imply, and the books check is ok.
async fn rule1_every_asset_sums_to_zero(db: &TestDb) {
    let fx = Fx::new(db, 3).await;
    let (cr, tok) = (fx.cr(), fx.tok());
    let (a, b, c) = (fx.org(0), fx.org(1), fx.org(2));
    let (iss, spent, fees) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent), fx.p_cr(K::Fees));
    let (t_iss, t_spent, treasury) = (
        fx.p_tok(K::Issuance),
        fx.p_tok(K::Spent),
        fx.p_tok(K::Treasury),
    );

    fx.ok(vec![
        single(iss, a.wallet, &cr, 10_000, C::Grant),
        single(iss, b.wallet, &cr, 5_000, C::TopUp),
        single(iss, c.wallet, &cr, 700, C::Grant),
        single(t_iss, a.alloc, &tok, 1_000, C::Allotment),
        single(t_iss, b.alloc, &tok, 2_000, C::Allotment),
    ])
    .await;
    // A trade: a lists 300 tokens, b buys 250 of them for 2,500 µCR, a pays a 25 µCR fee.
    fx.ok(chain(vec![
        single(a.alloc, a.escrow, &tok, 300, C::List),
        single(a.escrow, b.acquired, &tok, 250, C::Trade),
        single(b.wallet, a.wallet, &cr, 2_500, C::Trade),
        single(a.wallet, fees, &cr, 25, C::Fee),
    ]))
    .await;
    fx.ok(vec![
        single(b.acquired, t_spent, &tok, 100, C::Spend),
        single(a.alloc, t_spent, &tok, 50, C::Spend),
        single(c.wallet, spent, &cr, 200, C::Spend),
        single(a.escrow, a.alloc, &tok, 50, C::Unlist),
    ])
    .await;
    // A buyback and an emergency sale, each a chain.
    fx.ok(chain(vec![
        single(b.alloc, treasury, &tok, 500, C::Buyback),
        single(iss, b.wallet, &cr, 400, C::Buyback),
    ]))
    .await;
    fx.ok(chain(vec![
        single(treasury, c.acquired, &tok, 120, C::EmergencySale),
        single(c.wallet, spent, &cr, 300, C::EmergencySale),
    ]))
    .await;
    // Two-phase: one posted in part, one voided, two left open.
    let posted = pending(a.wallet, spent, &cr, 200, C::Spend, None);
    let voided = pending(b.wallet, spent, &cr, 100, C::Spend, Some(3_600));
    let open_cr = pending(c.wallet, spent, &cr, 50, C::Spend, None);
    let open_tok = pending(a.alloc, t_spent, &tok, 70, C::Spend, None);
    let (posted_id, voided_id) = (posted.id(), voided.id());
    fx.ok(vec![posted, voided, open_cr, open_tok]).await;
    fx.ok(vec![post(posted_id, Some(150)), void(voided_id)])
        .await;
    // A refused transfer moves nothing; a correction is a reversal.
    assert_eq!(
        fx.submit(vec![single(c.wallet, spent, &cr, 1_000_000, C::Spend)])
            .await,
        vec![Err(E::ExceedsCredits)]
    );
    fx.ok(vec![single(a.wallet, iss, &cr, 1_000, C::Reversal)])
        .await;

    // Every account, exactly: (net posted, net pending).
    let expected: Vec<(&str, AccountId, (i128, i128))> = vec![
        ("CR issuance", iss, (-15_100, 0)),
        ("a.wallet", a.wallet, (11_325, 0)),
        ("b.wallet", b.wallet, (2_900, 0)),
        ("c.wallet", c.wallet, (200, -50)),
        ("CR spent", spent, (650, 50)),
        ("fees", fees, (25, 0)),
        ("token issuance", t_iss, (-3_000, 0)),
        ("a.alloc", a.alloc, (700, -70)),
        ("a.escrow", a.escrow, (0, 0)),
        ("b.alloc", b.alloc, (1_500, 0)),
        ("b.acquired", b.acquired, (150, 0)),
        ("c.acquired", c.acquired, (120, 0)),
        ("treasury", treasury, (380, 0)),
        ("token spent", t_spent, (150, 70)),
    ];
    for (name, id, nets) in expected {
        assert_eq!(fx.nets(id).await, nets, "{name}");
    }
    let snapshot = fx.snapshot().await;
    assert_eq!(snapshot.len(), fx.books.accounts().len());
    let sums = sums_per_asset(&snapshot);
    assert_eq!(
        sums,
        BTreeMap::from([(cr.clone(), (0, 0)), (tok.clone(), (0, 0))])
    );
    assert_eq!(fx.journal().await.len(), 24);
    fx.assert_books_ok().await;
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rule 2: restricted accounts never go negative, counting pending amounts
// ---------------------------------------------------------------------------------------------

/// Rule 2: every account but `issuance` keeps debits (posted and pending) within its posted
/// credits: a pending debit reduces what later transfers can take, pending credits cannot be
/// spent before they are posted, the second of two debits in one request is refused, and
/// provider sinks are restricted too; `issuance` may go negative, pending included.
async fn rule2_restricted_accounts_never_go_negative(db: &TestDb) {
    let fx = Fx::new(db, 2).await;
    let (cr, tok) = (fx.cr(), fx.tok());
    let (a, b) = (fx.org(0), fx.org(1));
    let (iss, spent) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent));
    let (t_iss, t_spent) = (fx.p_tok(K::Issuance), fx.p_tok(K::Spent));
    fx.ok(vec![single(iss, a.wallet, &cr, 1_000, C::Grant)])
        .await;

    let hold = tid();
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("hold 700", reserve(hold, a.wallet, spent, &cr, 700, C::Spend, None), OK),
        ("301 more, counting the pending 700", single(a.wallet, spent, &cr, 301, C::Spend), Err(E::ExceedsCredits)),
        ("a pending 301 more", pending(a.wallet, spent, &cr, 301, C::Spend, None), Err(E::ExceedsCredits)),
        ("exactly the 300 left", single(a.wallet, spent, &cr, 300, C::Spend), OK),
        ("nothing is left", single(a.wallet, b.wallet, &cr, 1, C::Trade), Err(E::ExceedsCredits)),
    ];
    fx.check(cases).await;
    let held = fx.balance(a.wallet).await;
    assert_eq!(held, bal(700, 300, 0, 1_000));
    assert_eq!(held.available(), 0);

    let incoming = tid();
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("voiding the hold frees 700", void(hold), OK),
        ("the 700 may go now", single(a.wallet, b.wallet, &cr, 700, C::Trade), OK),
        ("and not one more", single(a.wallet, spent, &cr, 1, C::Spend), Err(E::ExceedsCredits)),
        ("a pending grant of 500", reserve(incoming, iss, a.wallet, &cr, 500, C::Grant, None), OK),
        ("pending credits cannot be spent", single(a.wallet, spent, &cr, 1, C::Spend), Err(E::ExceedsCredits)),
        ("post the grant", post(incoming, None), OK),
        ("now they can", single(a.wallet, spent, &cr, 500, C::Spend), OK),
    ];
    fx.check(cases).await;
    assert_eq!(fx.balance(a.wallet).await, bal(0, 1_500, 0, 1_500));

    // Within one request: b holds 700; 400 then 301 more.
    assert_eq!(
        fx.submit(vec![
            single(b.wallet, spent, &cr, 400, C::Spend),
            single(b.wallet, spent, &cr, 301, C::Spend),
            single(b.wallet, spent, &cr, 300, C::Spend),
        ])
        .await,
        vec![OK, Err(E::ExceedsCredits), OK]
    );
    assert_eq!(fx.balance(b.wallet).await, bal(0, 700, 0, 700));

    // Tokens obey the same rule, and so do the provider's sinks.
    fx.ok(vec![single(t_iss, a.alloc, &tok, 100, C::Allotment)])
        .await;
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("reserve 60 tokens", pending(a.alloc, t_spent, &tok, 60, C::Spend, None), OK),
        ("list 41 of the 40 free", single(a.alloc, a.escrow, &tok, 41, C::List), Err(E::ExceedsCredits)),
        ("list the 40 free", single(a.alloc, a.escrow, &tok, 40, C::List), OK),
        ("spent gives back more than it got", single(spent, a.wallet, &cr, 1_501, C::Reversal), Err(E::ExceedsCredits)),
        ("spent gives back some", single(spent, a.wallet, &cr, 200, C::Reversal), OK),
        ("issuance goes negative", single(iss, b.wallet, &cr, 1_000_000_000_000_000, C::Grant), OK),
        ("and reserves beyond that", pending(iss, b.wallet, &cr, 1_000_000_000_000_000, C::Grant, None), OK),
    ];
    fx.check(cases).await;
    assert_eq!(fx.balance(a.alloc).await, bal(60, 40, 0, 100));
    assert_eq!(fx.balance(spent).await, bal(0, 200, 0, 1_500));
    assert_eq!(
        fx.balance(iss).await,
        bal(1_000_000_000_000_000, 1_000_000_000_001_500, 0, 0)
    );
    assert_eq!(fx.balance(t_iss).await, bal(0, 100, 0, 0));
    for view in fx.snapshot().await {
        if view.account.kind() != K::Issuance {
            assert!(view.balance.available() >= 0, "{view:?}");
        }
    }
    fx.assert_books_ok().await;
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rule 3: immutable transfers, corrections by reversal
// ---------------------------------------------------------------------------------------------

/// Rule 3: a committed transfer never changes. A replay with identical fields answers `exists`
/// and changes nothing; a replay differing in one field answers that field's precise
/// `exists_with_different_*` code (debit, credit, asset, amount, code, timeout, pending_id,
/// kind, metadata, linked); the first difference wins; refused replays do not burn the id.
async fn rule3_replays_never_change_a_transfer(db: &TestDb) {
    let fx = Fx::new(db, 3).await;
    let (cr, tok) = (fx.cr(), fx.tok());
    let (a, b, c) = (fx.org(0), fx.org(1), fx.org(2));
    let (iss, spent) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent));
    fx.ok(vec![single(iss, a.wallet, &cr, 1_000, C::Grant)])
        .await;

    let (t, p, p2, p3, q, v) = (tid(), tid(), tid(), tid(), tid(), tid());
    let trade = |id, debit, credit, asset: &AssetCode, value, code| {
        meta(mv(id, debit, credit, asset, value, code), "order-1")
    };
    let original = trade(t, a.wallet, b.wallet, &cr, 100, C::Trade);
    let hold = |id, value, timeout| reserve(id, a.wallet, spent, &cr, value, C::Spend, timeout);
    fx.ok(vec![
        original.clone(),
        hold(p, 50, Some(3_600)),
        hold(p2, 40, None),
        hold(p3, 30, None),
    ])
    .await;
    let the_post = post_as(q, p, Some(20));
    let the_void = void_as(v, p2);
    fx.ok(vec![the_post.clone(), the_void.clone()]).await;
    let snapshot = fx.snapshot().await;
    let journal = fx.journal().await;

    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // A single-phase transfer.
        ("identical", original.clone(), Err(E::Exists)),
        ("debit", trade(t, c.wallet, b.wallet, &cr, 100, C::Trade), Err(E::ExistsWithDifferentDebitAccountId)),
        ("credit", trade(t, a.wallet, c.wallet, &cr, 100, C::Trade), Err(E::ExistsWithDifferentCreditAccountId)),
        ("asset", trade(t, a.wallet, b.wallet, &tok, 100, C::Trade), Err(E::ExistsWithDifferentAsset)),
        ("amount", trade(t, a.wallet, b.wallet, &cr, 101, C::Trade), Err(E::ExistsWithDifferentAmount)),
        ("code", trade(t, a.wallet, b.wallet, &cr, 100, C::Fee), Err(E::ExistsWithDifferentCode)),
        ("metadata", meta(original.clone(), "order-2"), Err(E::ExistsWithDifferentMetadata)),
        ("metadata dropped", mv(t, a.wallet, b.wallet, &cr, 100, C::Trade), Err(E::ExistsWithDifferentMetadata)),
        ("linked", original.clone().with_linked(true), Err(E::ExistsWithDifferentLinked)),
        ("kind: as pending", meta(reserve(t, a.wallet, b.wallet, &cr, 100, C::Trade, None), "order-1"), Err(E::ExistsWithDifferentKind)),
        ("kind: as post", post_as(t, p3, None), Err(E::ExistsWithDifferentKind)),
        ("kind: as void", void_as(t, p3), Err(E::ExistsWithDifferentKind)),
        ("debit is compared before amount", trade(t, c.wallet, b.wallet, &cr, 999, C::Trade), Err(E::ExistsWithDifferentDebitAccountId)),
        ("kind is compared first", post_as(t, p3, Some(1)), Err(E::ExistsWithDifferentKind)),
        // A pending transfer.
        ("identical pending", hold(p, 50, Some(3_600)), Err(E::Exists)),
        ("timeout", hold(p, 50, Some(60)), Err(E::ExistsWithDifferentTimeout)),
        ("timeout dropped", hold(p, 50, None), Err(E::ExistsWithDifferentTimeout)),
        ("timeout added", hold(p2, 40, Some(60)), Err(E::ExistsWithDifferentTimeout)),
        ("pending amount", hold(p, 51, Some(3_600)), Err(E::ExistsWithDifferentAmount)),
        ("kind: as single", mv(p, a.wallet, spent, &cr, 50, C::Spend), Err(E::ExistsWithDifferentKind)),
        // A post.
        ("identical post", the_post.clone(), Err(E::Exists)),
        ("pending_id", post_as(q, p3, Some(20)), Err(E::ExistsWithDifferentPendingId)),
        ("post amount", post_as(q, p, Some(21)), Err(E::ExistsWithDifferentAmount)),
        ("post amount omitted (the whole 50)", post_as(q, p, None), Err(E::ExistsWithDifferentAmount)),
        ("post metadata", meta(the_post.clone(), "late"), Err(E::ExistsWithDifferentMetadata)),
        ("kind: post as void", void_as(q, p), Err(E::ExistsWithDifferentKind)),
        // A void.
        ("identical void", the_void.clone(), Err(E::Exists)),
        ("void pending_id", void_as(v, p3), Err(E::ExistsWithDifferentPendingId)),
        ("void linked", the_void.clone().with_linked(true), Err(E::ExistsWithDifferentLinked)),
        ("kind: void as post", post_as(v, p2, None), Err(E::ExistsWithDifferentKind)),
        // Refused replays burn nothing: the identical ones still answer `exists`.
        ("identical, again", original.clone(), Err(E::Exists)),
        ("identical post, again", the_post.clone(), Err(E::Exists)),
    ];
    fx.check(cases).await;

    assert_eq!(fx.snapshot().await, snapshot, "replays changed no balance");
    assert_eq!(fx.journal().await, journal, "replays changed no entry");
    let stored = fx.store().transfers(&[t]).await.expect("read a transfer");
    assert_eq!(stored.len(), 1);
    let record = &stored[0].record;
    assert_eq!(
        (
            record.kind,
            record.debit_account_id,
            record.credit_account_id,
            record.amount.get(),
            record.code,
            record.metadata.as_str(),
            record.linked,
        ),
        (
            TransferKind::Single,
            a.wallet,
            b.wallet,
            100,
            C::Trade,
            "order-1",
            false
        )
    );
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Rule 3: a transfer that failed against the ledger's state burns its id for good: a retry
/// answers `id_already_failed` even after the cause is fixed, whatever its fields, also from
/// another process; the failed ids never reach the journal.
async fn rule3_failed_ids_stay_failed(db: &TestDb) {
    let fx = Fx::new(db, 1).await;
    let cr = fx.cr();
    let a = fx.org(0);
    let (iss, spent) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent));
    let (x, y, z, later) = (tid(), tid(), tid(), tid());
    let nowhere = AccountId::generate();
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("spend from an empty wallet", mv(x, a.wallet, spent, &cr, 500, C::Spend), Err(E::ExceedsCredits)),
        ("grant from an unknown account", mv(y, nowhere, a.wallet, &cr, 1, C::Grant), Err(E::DebitAccountNotFound)),
        ("post a pending transfer not made yet", post_as(z, later, None), Err(E::PendingTransferNotFound)),
        // The causes are fixed...
        ("fund the wallet", single(iss, a.wallet, &cr, 1_000, C::Grant), OK),
        ("make the pending transfer", reserve(later, a.wallet, spent, &cr, 100, C::Spend, None), OK),
        // ...but the ids stay failed.
        ("retry the spend", mv(x, a.wallet, spent, &cr, 500, C::Spend), Err(E::IdAlreadyFailed)),
        ("retry it smaller", mv(x, a.wallet, spent, &cr, 10, C::Spend), Err(E::IdAlreadyFailed)),
        ("retry it as a pending transfer", reserve(x, a.wallet, spent, &cr, 10, C::Spend, None), Err(E::IdAlreadyFailed)),
        ("retry the grant with real accounts", mv(y, iss, a.wallet, &cr, 1, C::Grant), Err(E::IdAlreadyFailed)),
        ("retry the post", post_as(z, later, None), Err(E::IdAlreadyFailed)),
        ("a new id posts it", post(later, None), OK),
    ];
    fx.check(cases).await;
    assert_eq!(fx.balance(a.wallet).await, bal(0, 100, 0, 1_000));
    let burned = fx.store().transfers(&[x, y, z]).await.expect("read");
    assert!(burned.is_empty(), "{burned:?}");
    // Another process (its own pool) sees the same.
    let other = db.store(fx.clock.clone()).await;
    let again = other
        .commit(&[vec![mv(x, a.wallet, spent, &cr, 500, C::Spend)]])
        .await
        .expect("commit");
    assert_eq!(again, vec![vec![Err(E::IdAlreadyFailed)]]);
    assert_eq!(fx.balance(a.wallet).await, bal(0, 100, 0, 1_000));
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Rule 3: corrections are new `reversal` transfers: a grant is reversed (in part, and never
/// beyond what the wallet holds), a spend is reversed, the originals stay in the journal as
/// they were; a reversal cannot itself be reversed nor undo an expiry.
async fn rule3_corrections_are_reversals(db: &TestDb) {
    let fx = Fx::new(db, 1).await;
    let (cr, tok) = (fx.cr(), fx.tok());
    let a = fx.org(0);
    let (iss, spent, expired, fees) = (
        fx.p_cr(K::Issuance),
        fx.p_cr(K::Spent),
        fx.p_cr(K::Expired),
        fx.p_cr(K::Fees),
    );
    let t_iss = fx.p_tok(K::Issuance);
    let (grant, spend) = (tid(), tid());
    fx.ok(vec![
        mv(grant, iss, a.wallet, &cr, 1_000, C::Grant),
        mv(spend, a.wallet, spent, &cr, 300, C::Spend),
        single(t_iss, a.alloc, &tok, 80, C::Allotment),
    ])
    .await;
    let originals = fx.store().transfers(&[grant, spend]).await.expect("read");
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("reverse more of the grant than is left", single(a.wallet, iss, &cr, 701, C::Reversal), Err(E::ExceedsCredits)),
        ("reverse the rest of the grant", single(a.wallet, iss, &cr, 700, C::Reversal), OK),
        ("reverse the spend", single(spent, a.wallet, &cr, 300, C::Reversal), OK),
        ("reverse an allotment", single(a.alloc, t_iss, &tok, 80, C::Reversal), OK),
        ("reverse a reversal", single(iss, a.wallet, &cr, 1, C::Reversal), Err(E::FlowNotAllowed)),
        ("reverse an expiry", single(expired, a.wallet, &cr, 1, C::Reversal), Err(E::FlowNotAllowed)),
        ("reverse into fees", single(a.wallet, fees, &cr, 1, C::Reversal), Err(E::FlowNotAllowed)),
    ];
    fx.check(cases).await;
    assert_eq!(fx.balance(a.wallet).await, bal(0, 1_000, 0, 1_300));
    assert_eq!(fx.nets(iss).await, (-300, 0));
    assert_eq!(fx.nets(spent).await, (0, 0));
    assert_eq!(fx.nets(a.alloc).await, (0, 0));
    assert_eq!(
        fx.store().transfers(&[grant, spend]).await.expect("read"),
        originals,
        "the corrected transfers are unchanged"
    );
    let codes: Vec<TransferCode> = fx.journal().await.iter().map(|e| e.record.code).collect();
    assert_eq!(
        codes,
        vec![
            C::Grant,
            C::Spend,
            C::Allotment,
            C::Reversal,
            C::Reversal,
            C::Reversal
        ]
    );
    fx.assert_books_ok().await;
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rule 4: linked chains
// ---------------------------------------------------------------------------------------------

/// Rule 4: a linked chain commits or fails as one: the failing member (last or in the middle)
/// gets its own code, every other member `linked_event_failed`, and nothing moves; a request
/// whose last transfer is linked gets `linked_event_chain_open`; transfers outside the chain
/// are unaffected; only the failing member's id is burned, so the others can be retried.
async fn rule4_chains_commit_or_fail_as_one(db: &TestDb) {
    let fx = Fx::new(db, 3).await;
    let cr = fx.cr();
    let (a, b, c) = (fx.org(0), fx.org(1), fx.org(2));
    let (iss, spent, fees) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent), fx.p_cr(K::Fees));
    fx.ok(vec![single(iss, a.wallet, &cr, 100, C::Grant)]).await;
    let snapshot = fx.snapshot().await;
    let journal = fx.journal().await;

    // The last member fails.
    let (t1, t2, t3) = (tid(), tid(), tid());
    let chained = chain(vec![
        mv(t1, a.wallet, b.wallet, &cr, 60, C::Trade),
        mv(t2, a.wallet, fees, &cr, 10, C::Fee),
        mv(t3, b.wallet, c.wallet, &cr, 1_000, C::Trade),
    ]);
    assert_eq!(
        fx.submit(chained).await,
        vec![
            Err(E::LinkedEventFailed),
            Err(E::LinkedEventFailed),
            Err(E::ExceedsCredits)
        ]
    );
    // A middle member fails: the ones after it are not tried.
    assert_eq!(
        fx.submit(chain(vec![
            single(a.wallet, b.wallet, &cr, 10, C::Trade),
            single(a.wallet, spent, &cr, 1_000, C::Spend),
            single(a.wallet, c.wallet, &cr, 10, C::Trade),
        ]))
        .await,
        vec![
            Err(E::LinkedEventFailed),
            Err(E::ExceedsCredits),
            Err(E::LinkedEventFailed)
        ]
    );
    // A failed chain then an independent transfer in the same request.
    let mut request = chain(vec![
        single(a.wallet, b.wallet, &cr, 1, C::Trade),
        single(a.wallet, b.wallet, &cr, 100, C::Trade),
    ]);
    request.push(single(iss, c.wallet, &cr, 5, C::Grant));
    assert_eq!(
        fx.submit(request).await,
        vec![Err(E::LinkedEventFailed), Err(E::ExceedsCredits), OK]
    );
    // Open chains.
    let open = tid();
    assert_eq!(
        fx.submit(vec![
            single(iss, b.wallet, &cr, 1, C::Grant).with_linked(true)
        ])
        .await,
        vec![Err(E::LinkedEventChainOpen)]
    );
    assert_eq!(
        fx.submit(vec![
            single(iss, b.wallet, &cr, 1, C::Grant).with_linked(true),
            mv(open, iss, b.wallet, &cr, 1, C::Grant).with_linked(true),
        ])
        .await,
        vec![Err(E::LinkedEventFailed), Err(E::LinkedEventChainOpen)]
    );
    assert_eq!(
        fx.submit(vec![
            single(iss, c.wallet, &cr, 7, C::Grant),
            single(iss, b.wallet, &cr, 1, C::Grant).with_linked(true),
        ])
        .await,
        vec![OK, Err(E::LinkedEventChainOpen)]
    );
    // Only the two independent grants to c moved value.
    let mut expected = snapshot.clone();
    for view in &mut expected {
        if view.account.id() == c.wallet {
            view.balance.credits_posted += 12;
        }
        if view.account.id() == iss {
            view.balance.debits_posted += 12;
        }
    }
    let mut now = fx.snapshot().await;
    // Provider balances are striped, but the views sum them: compare whole.
    now.sort_by_key(|v| v.account.id());
    expected.sort_by_key(|v| v.account.id());
    assert_eq!(now, expected);
    assert_eq!(fx.journal().await.len(), journal.len() + 2);

    // Retrying: the failing member's id is burned, the others' are not.
    assert_eq!(
        fx.submit(chain(vec![
            mv(t1, a.wallet, b.wallet, &cr, 60, C::Trade),
            mv(t2, a.wallet, fees, &cr, 10, C::Fee),
            single(b.wallet, c.wallet, &cr, 50, C::Trade),
        ]))
        .await,
        vec![OK, OK, OK]
    );
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("the failing member's id", mv(t3, b.wallet, c.wallet, &cr, 1, C::Trade), Err(E::IdAlreadyFailed)),
        ("an open chain's id", mv(open, iss, b.wallet, &cr, 1, C::Grant), OK),
    ];
    fx.check(cases).await;
    assert_eq!(fx.nets(a.wallet).await, (30, 0));
    assert_eq!(fx.nets(b.wallet).await, (11, 0));
    assert_eq!(fx.nets(c.wallet).await, (62, 0));
    assert_eq!(fx.nets(fees).await, (10, 0));
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Rule 4: a chain's later members see the effects of the earlier ones: a whole trade (list
/// alloc→escrow, escrow→acquired, payment, fee paid out of the proceeds) with exactly enough
/// funds commits; one token more fails the whole chain; a pending transfer can be made and
/// posted in one chain.
async fn rule4_chain_members_see_earlier_members(db: &TestDb) {
    let fx = Fx::new(db, 2).await;
    let (cr, tok) = (fx.cr(), fx.tok());
    let (a, b) = (fx.org(0), fx.org(1));
    let (iss, spent, fees) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent), fx.p_cr(K::Fees));
    let t_iss = fx.p_tok(K::Issuance);
    fx.ok(vec![
        single(t_iss, a.alloc, &tok, 100, C::Allotment),
        single(iss, b.wallet, &cr, 500, C::Grant),
    ])
    .await;
    // One token too many: the escrow holds only what the list put there.
    assert_eq!(
        fx.submit(chain(vec![
            single(a.alloc, a.escrow, &tok, 100, C::List),
            single(a.escrow, b.acquired, &tok, 101, C::Trade),
        ]))
        .await,
        vec![Err(E::LinkedEventFailed), Err(E::ExceedsCredits)]
    );
    // Exactly enough, each step funded by the one before.
    fx.ok(chain(vec![
        single(a.alloc, a.escrow, &tok, 100, C::List),
        single(a.escrow, b.acquired, &tok, 100, C::Trade),
        single(b.wallet, a.wallet, &cr, 500, C::Trade),
        single(a.wallet, fees, &cr, 25, C::Fee),
    ]))
    .await;
    assert_eq!(fx.nets(a.alloc).await, (0, 0));
    assert_eq!(fx.nets(a.escrow).await, (0, 0));
    assert_eq!(fx.nets(b.acquired).await, (100, 0));
    assert_eq!(fx.nets(b.wallet).await, (0, 0));
    assert_eq!(fx.nets(a.wallet).await, (475, 0));
    assert_eq!(fx.nets(fees).await, (25, 0));
    // Reserve and post in one chain; the post sees the pending transfer.
    let hold = tid();
    fx.ok(chain(vec![
        reserve(hold, a.wallet, spent, &cr, 475, C::Spend, Some(60)),
        post_as(tid(), hold, Some(400)),
        single(a.wallet, spent, &cr, 75, C::Spend),
    ]))
    .await;
    assert_eq!(fx.balance(a.wallet).await, bal(0, 500, 0, 500));
    assert_eq!(fx.balance(spent).await, bal(0, 0, 0, 475));
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Rule 4: chains in separate requests of one group commit do not interfere: a request's
/// failed chain is rolled back before the next request runs, a request's open chain does not
/// swallow the next request's first transfer, and each request sees the ones before it. Shown
/// on `Store::commit` (one transaction, several requests) and through concurrent requests on
/// the ledger.
async fn rule4_chains_in_one_group_commit_do_not_interfere(db: &TestDb) {
    let fx = Fx::new(db, 4).await;
    let cr = fx.cr();
    let (a, b, c, d) = (fx.org(0), fx.org(1), fx.org(2), fx.org(3));
    let (iss, fees) = (fx.p_cr(K::Issuance), fx.p_cr(K::Fees));
    fx.ok(vec![single(iss, a.wallet, &cr, 100, C::Grant)]).await;
    let results = fx
        .store()
        .commit(&[
            // Fails: rolled back, so a still holds 100 for the next request.
            chain(vec![
                single(a.wallet, b.wallet, &cr, 100, C::Trade),
                single(b.wallet, c.wallet, &cr, 1_000, C::Trade),
            ]),
            // Succeeds with all of a's 100.
            chain(vec![
                single(a.wallet, c.wallet, &cr, 90, C::Trade),
                single(a.wallet, fees, &cr, 10, C::Fee),
            ]),
            // Sees the request before it: nothing left.
            vec![single(a.wallet, b.wallet, &cr, 1, C::Trade)],
            // An open chain ends with its request...
            vec![single(iss, d.wallet, &cr, 3, C::Grant).with_linked(true)],
            // ...and does not swallow this one.
            vec![single(iss, d.wallet, &cr, 4, C::Grant)],
        ])
        .await
        .expect("one transaction");
    assert_eq!(
        results,
        vec![
            vec![Err(E::LinkedEventFailed), Err(E::ExceedsCredits)],
            vec![OK, OK],
            vec![Err(E::ExceedsCredits)],
            vec![Err(E::LinkedEventChainOpen)],
            vec![OK],
        ]
    );
    assert_eq!(fx.nets(a.wallet).await, (0, 0));
    assert_eq!(fx.nets(b.wallet).await, (0, 0));
    assert_eq!(fx.nets(c.wallet).await, (90, 0));
    assert_eq!(fx.nets(d.wallet).await, (4, 0));

    // The same through the group committer: 40 concurrent requests, half of them failing
    // chains, on eight wallets.
    let mut orgs = Vec::new();
    for i in 0..8_u64 {
        let owner = Owner::Org(OrgId::generate());
        let view = fx
            .ledger
            .ensure_account(&cr, owner, K::Wallet)
            .await
            .expect("a wallet");
        let wallet = view.account.id();
        fx.ok(vec![single(iss, wallet, &cr, 100 + i, C::Grant)])
            .await;
        orgs.push((wallet, 100 + i));
    }
    let mut tasks = JoinSet::new();
    for (n, (wallet, funds)) in orgs.iter().copied().cycle().take(40).enumerate() {
        let ledger = fx.ledger.clone();
        let cr = cr.clone();
        tasks.spawn(async move {
            let request = if n % 2 == 0 {
                // Would take everything, then fails: must leave no trace.
                chain(vec![
                    single(wallet, fees, &cr, funds, C::Fee),
                    single(wallet, fees, &cr, 1, C::Fee),
                ])
            } else {
                chain(vec![
                    single(wallet, fees, &cr, 1, C::Fee),
                    single(iss, wallet, &cr, 1, C::Grant),
                ])
            };
            let results = ledger.create_transfers(request).await.expect("commit");
            (n, results)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (n, results) = joined.expect("the task finishes");
        let expected = if n % 2 == 0 {
            vec![Err(E::LinkedEventFailed), Err(E::ExceedsCredits)]
        } else {
            vec![OK, OK]
        };
        assert_eq!(results, expected, "request {n}");
    }
    for (wallet, funds) in orgs {
        assert_eq!(fx.nets(wallet).await, (i128::from(funds), 0));
    }
    assert_eq!(fx.nets(fees).await, (10 + 20, 0));
    fx.assert_books_ok().await;
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rule 5: two-phase transfers
// ---------------------------------------------------------------------------------------------

/// Rule 5: a pending transfer holds its amount on both accounts; posting it in full or in part
/// moves the posted amount and releases the rest; voiding releases all of it; the pending
/// record says how and when it was resolved.
async fn rule5_reserve_then_post_or_void(db: &TestDb) {
    let fx = Fx::new(db, 1).await;
    let cr = fx.cr();
    let a = fx.org(0);
    let (iss, spent) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent));
    fx.ok(vec![single(iss, a.wallet, &cr, 1_000, C::Grant)])
        .await;
    let (p1, p2, p3) = (tid(), tid(), tid());
    let (full, part, cancel) = (tid(), tid(), tid());

    fx.ok(vec![reserve(p1, a.wallet, spent, &cr, 300, C::Spend, None)])
        .await;
    assert_eq!(fx.balance(a.wallet).await, bal(300, 0, 0, 1_000));
    assert_eq!(fx.balance(spent).await, bal(0, 0, 300, 0));
    fx.clock.advance_seconds(5);
    fx.ok(vec![post_as(full, p1, None)]).await;
    assert_eq!(fx.balance(a.wallet).await, bal(0, 300, 0, 1_000));
    assert_eq!(fx.balance(spent).await, bal(0, 0, 0, 300));

    fx.ok(vec![reserve(
        p2,
        a.wallet,
        spent,
        &cr,
        200,
        C::Spend,
        Some(600),
    )])
    .await;
    fx.ok(vec![post_as(part, p2, Some(50))]).await;
    assert_eq!(fx.balance(a.wallet).await, bal(0, 350, 0, 1_000));
    assert_eq!(fx.balance(spent).await, bal(0, 0, 0, 350));

    fx.ok(vec![reserve(p3, a.wallet, spent, &cr, 100, C::Spend, None)])
        .await;
    assert_eq!(fx.balance(a.wallet).await, bal(100, 350, 0, 1_000));
    fx.ok(vec![void_as(cancel, p3)]).await;
    assert_eq!(fx.balance(a.wallet).await, bal(0, 350, 0, 1_000));
    assert_eq!(fx.balance(spent).await, bal(0, 0, 0, 350));

    let now = fx.clock.now();
    let records = fx.store().pendings(&[p1, p2, p3]).await.expect("read");
    let by_id: BTreeMap<TransferId, _> = records.into_iter().map(|p| (p.id, p)).collect();
    let summary = |id: TransferId| {
        let p = &by_id[&id];
        (p.state, p.amount.get(), p.resolved_by, p.resolved_at)
    };
    assert_eq!(
        summary(p1),
        (PendingState::Posted, 300, Some(full), Some(now))
    );
    assert_eq!(
        summary(p2),
        (PendingState::Posted, 200, Some(part), Some(now))
    );
    assert_eq!(
        summary(p3),
        (PendingState::Voided, 100, Some(cancel), Some(now))
    );
    assert_eq!(by_id[&p2].expires_at, Some(NOV_26.plus_seconds(5 + 600)));
    // The journal keeps what each resolution did: a void records what it released.
    let entries = fx
        .store()
        .transfers(&[full, part, cancel])
        .await
        .expect("read");
    let kinds: Vec<_> = entries
        .iter()
        .map(|e| {
            let r = &e.record;
            (
                r.kind,
                r.amount.get(),
                r.pending_id,
                r.debit_account_id,
                r.code,
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (TransferKind::Post, 300, Some(p1), a.wallet, C::Spend),
            (TransferKind::Post, 50, Some(p2), a.wallet, C::Spend),
            (TransferKind::Void, 100, Some(p3), a.wallet, C::Spend),
        ]
    );
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Rule 5: every way a post or void can be refused, with its precise code; a refused post
/// burns its own id.
async fn rule5_post_and_void_errors(db: &TestDb) {
    let fx = Fx::new(db, 1).await;
    let cr = fx.cr();
    let a = fx.org(0);
    let (iss, spent) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent));
    let (grant, p1, p2, p3, p4, posted, refused) =
        (tid(), tid(), tid(), tid(), tid(), tid(), tid());
    let hold = |id| reserve(id, a.wallet, spent, &cr, 100, C::Spend, None);
    fx.ok(vec![
        mv(grant, iss, a.wallet, &cr, 1_000, C::Grant),
        hold(p1),
        hold(p2),
        hold(p3),
        hold(p4),
    ])
    .await;
    fx.ok(vec![post_as(posted, p1, None), void(p2)]).await;
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("post twice", post(p1, None), Err(E::PendingTransferAlreadyPosted)),
        ("void after post", void(p1), Err(E::PendingTransferAlreadyPosted)),
        ("post after void", post(p2, Some(10)), Err(E::PendingTransferAlreadyVoided)),
        ("void twice", void(p2), Err(E::PendingTransferAlreadyVoided)),
        ("post more than pending", post(p3, Some(101)), Err(E::ExceedsPendingTransferAmount)),
        ("post a single-phase transfer", post(grant, None), Err(E::PendingTransferNotPending)),
        ("void a single-phase transfer", void(grant), Err(E::PendingTransferNotPending)),
        ("post a post", post(posted, None), Err(E::PendingTransferNotPending)),
        ("post an unknown transfer", post(tid(), None), Err(E::PendingTransferNotFound)),
        ("void an unknown transfer", void(tid()), Err(E::PendingTransferNotFound)),
        ("post the exact amount", post(p3, Some(100)), OK),
        ("a refused post", post_as(refused, p4, Some(101)), Err(E::ExceedsPendingTransferAmount)),
        ("burns its id", post_as(refused, p4, Some(100)), Err(E::IdAlreadyFailed)),
        ("p4 is still pending", void(p4), OK),
    ];
    fx.check(cases).await;
    assert_eq!(fx.balance(a.wallet).await, bal(0, 200, 0, 1_000));
    assert_eq!(fx.balance(spent).await, bal(0, 0, 0, 200));
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Rule 5: a pending transfer times out at its timestamp plus its timeout (read from the
/// injected clock): a post a microsecond before succeeds, at the instant it answers
/// `pending_transfer_expired`, as does a void; `expire_pending` releases the amounts, in
/// batches of its limit, and records the state `expired` with `resolved_at == expires_at`;
/// transfers without a timeout never expire.
async fn rule5_pending_transfers_expire_at_their_timeout(db: &TestDb) {
    let fx = Fx::new(db, 1).await;
    let cr = fx.cr();
    let a = fx.org(0);
    let (iss, spent) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent));
    fx.ok(vec![single(iss, a.wallet, &cr, 1_000, C::Grant)])
        .await;
    let (p1, p2, p3, p4) = (tid(), tid(), tid(), tid());
    let hold = |id, timeout| reserve(id, a.wallet, spent, &cr, 100, C::Spend, timeout);
    let t0 = fx.clock.now();
    fx.ok(vec![
        hold(p1, Some(60)),
        hold(p2, Some(60)),
        hold(p3, Some(120)),
        hold(p4, None),
    ])
    .await;
    assert_eq!(fx.store().expire_pending(100).await.expect("expire"), 0);

    fx.clock.set(t0.plus_seconds(60).plus_micros(-1));
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("post a microsecond before the timeout", post(p2, None), OK),
    ];
    fx.check(cases).await;
    fx.clock.set(t0.plus_seconds(60));
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("post at the timeout", post(p1, None), Err(E::PendingTransferExpired)),
        ("void at the timeout", void(p1), Err(E::PendingTransferExpired)),
    ];
    fx.check(cases).await;
    // Not yet released: the expiry job has not run.
    assert_eq!(fx.balance(a.wallet).await, bal(300, 100, 0, 1_000));
    assert_eq!(fx.store().expire_pending(100).await.expect("expire"), 1);
    assert_eq!(fx.balance(a.wallet).await, bal(200, 100, 0, 1_000));
    assert_eq!(fx.balance(spent).await, bal(0, 0, 200, 100));
    let expired = fx.store().pendings(&[p1]).await.expect("read");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].state, PendingState::Expired);
    assert_eq!(expired[0].expires_at, Some(t0.plus_seconds(60)));
    assert_eq!(expired[0].resolved_at, expired[0].expires_at);
    assert_eq!(expired[0].resolved_by, None);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("post after expiry", post(p1, Some(1)), Err(E::PendingTransferExpired)),
    ];
    fx.check(cases).await;

    fx.clock.set(t0.plus_seconds(10_000));
    assert_eq!(fx.store().expire_pending(100).await.expect("expire"), 1);
    assert_eq!(fx.store().expire_pending(100).await.expect("expire"), 0);
    let p3_record = fx.store().pendings(&[p3]).await.expect("read");
    assert_eq!(
        (p3_record[0].state, p3_record[0].resolved_at),
        (PendingState::Expired, Some(t0.plus_seconds(120)))
    );
    // p4 has no timeout: still pending, still voidable.
    assert_eq!(fx.balance(a.wallet).await, bal(100, 100, 0, 1_000));
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("void the one without timeout", void(p4), OK),
    ];
    fx.check(cases).await;
    assert_eq!(fx.balance(a.wallet).await, bal(0, 100, 0, 1_000));

    // The limit bounds one run.
    let (p5, p6) = (tid(), tid());
    fx.ok(vec![hold(p5, Some(1)), hold(p6, Some(1))]).await;
    fx.clock.advance_seconds(1);
    assert_eq!(fx.store().expire_pending(1).await.expect("expire"), 1);
    assert_eq!(fx.store().expire_pending(1).await.expect("expire"), 1);
    assert_eq!(fx.store().expire_pending(1).await.expect("expire"), 0);
    assert_eq!(fx.balance(a.wallet).await, bal(0, 100, 0, 1_000));
    assert_eq!(fx.balance(spent).await, bal(0, 0, 0, 100));
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Rule 5: a pending transfer can be created and resolved in the same request (posted,
/// voided, or refused for posting more than it holds, which leaves it pending).
async fn rule5_pending_created_and_resolved_in_one_request(db: &TestDb) {
    let fx = Fx::new(db, 1).await;
    let cr = fx.cr();
    let a = fx.org(0);
    let (iss, spent) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent));
    fx.ok(vec![single(iss, a.wallet, &cr, 1_000, C::Grant)])
        .await;
    let (p, q, r) = (tid(), tid(), tid());
    let hold = |id, value| reserve(id, a.wallet, spent, &cr, value, C::Spend, Some(60));
    assert_eq!(
        fx.submit(vec![hold(p, 300), post(p, Some(200)), post(p, None)])
            .await,
        vec![OK, OK, Err(E::PendingTransferAlreadyPosted)]
    );
    assert_eq!(fx.submit(vec![hold(q, 100), void(q)]).await, vec![OK, OK]);
    assert_eq!(
        fx.submit(vec![hold(r, 300), post(r, Some(301))]).await,
        vec![OK, Err(E::ExceedsPendingTransferAmount)]
    );
    assert_eq!(fx.balance(a.wallet).await, bal(300, 200, 0, 1_000));
    let states: Vec<_> = fx
        .store()
        .pendings(&[p, q, r])
        .await
        .expect("read")
        .into_iter()
        .map(|x| (x.id, x.state))
        .collect();
    let mut expected = vec![
        (p, PendingState::Posted),
        (q, PendingState::Voided),
        (r, PendingState::Pending),
    ];
    expected.sort_by_key(|(id, _)| *id);
    assert_eq!(states, expected);
    fx.assert_books_ok().await;
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rule 6: idempotent replays
// ---------------------------------------------------------------------------------------------

/// Rule 6 at the ledger level: a transfer id replayed in a later request, in the same request,
/// in another request of the same group commit, from another process at the same moment, or by
/// many concurrent callers, moves value once and answers `exists` to every replay; a replayed
/// chain answers `exists` for each member; a failed id answers `id_already_failed`.
async fn rule6_replays_answer_the_first_result(db: &TestDb) {
    let fx = Fx::new(db, 2).await;
    let cr = fx.cr();
    let (a, b) = (fx.org(0), fx.org(1));
    let (iss, spent, fees) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent), fx.p_cr(K::Fees));
    let grant = |value| single(iss, a.wallet, &cr, value, C::Grant);

    let first = grant(500);
    assert_eq!(fx.submit(vec![first.clone()]).await, vec![OK]);
    assert_eq!(fx.submit(vec![first.clone()]).await, vec![Err(E::Exists)]);
    let twice = grant(500);
    assert_eq!(
        fx.submit(vec![twice.clone(), twice.clone()]).await,
        vec![OK, Err(E::Exists)]
    );
    let changed = grant(500);
    let changed_id = changed.id();
    assert_eq!(
        fx.submit(vec![
            changed,
            mv(changed_id, iss, a.wallet, &cr, 1, C::Grant)
        ])
        .await,
        vec![OK, Err(E::ExistsWithDifferentAmount)]
    );
    assert_eq!(fx.nets(a.wallet).await, (1_500, 0));

    let failing = single(b.wallet, spent, &cr, 1, C::Spend);
    assert_eq!(
        fx.submit(vec![failing.clone(), failing.clone()]).await,
        vec![Err(E::ExceedsCredits), Err(E::IdAlreadyFailed)]
    );
    assert_eq!(
        fx.submit(vec![failing]).await,
        vec![Err(E::IdAlreadyFailed)]
    );

    // A replayed chain: every member exists, nothing moves; a chain mixing a replayed member
    // with a new one commits nothing new.
    let trade = chain(vec![
        single(a.wallet, b.wallet, &cr, 100, C::Trade),
        single(a.wallet, fees, &cr, 5, C::Fee),
    ]);
    assert_eq!(fx.submit(trade.clone()).await, vec![OK, OK]);
    assert_eq!(
        fx.submit(trade.clone()).await,
        vec![Err(E::Exists), Err(E::Exists)]
    );
    let extra = single(a.wallet, fees, &cr, 5, C::Fee);
    assert_eq!(
        fx.submit(vec![trade[0].clone(), extra.clone()]).await,
        vec![Err(E::Exists), Err(E::LinkedEventFailed)]
    );
    assert_eq!(fx.nets(a.wallet).await, (1_395, 0));
    assert_eq!(fx.nets(fees).await, (5, 0));

    // Two requests of one group commit.
    let grouped = grant(7);
    let results = fx
        .store()
        .commit(&[vec![grouped.clone()], vec![grouped.clone()]])
        .await
        .expect("commit");
    assert_eq!(results, vec![vec![OK], vec![Err(E::Exists)]]);

    // Two processes at once.
    let racing = grant(11);
    let (one, other) = (
        db.store(fx.clock.clone()).await,
        db.store(fx.clock.clone()).await,
    );
    let (request_one, request_other) = ([vec![racing.clone()]], [vec![racing]]);
    let (x, y) = tokio::join!(one.commit(&request_one), other.commit(&request_other));
    let mut answers = vec![x.expect("commit")[0][0], y.expect("commit")[0][0]];
    answers.sort_by_key(|r| r.is_err());
    assert_eq!(answers, vec![OK, Err(E::Exists)]);

    // Many callers at once on one ledger.
    let crowded = grant(13);
    let mut tasks = JoinSet::new();
    for _ in 0..16 {
        let ledger = fx.ledger.clone();
        let transfer = crowded.clone();
        tasks.spawn(async move { ledger.create_transfers(vec![transfer]).await });
    }
    let mut oks = 0;
    let mut exists = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("the task finishes").expect("commit")[..] {
            [Ok(())] => oks += 1,
            [Err(E::Exists)] => exists += 1,
            ref other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((oks, exists), (1, 15));
    assert_eq!(fx.nets(a.wallet).await, (1_395 + 7 + 11 + 13, 0));

    let journal = fx.journal().await;
    let ids: HashSet<TransferId> = journal.iter().map(|e| e.record.id).collect();
    assert_eq!(ids.len(), journal.len(), "no id is journaled twice");
    assert_eq!(journal.len(), 8);
    fx.assert_books_ok().await;
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rule 7: one hop
// ---------------------------------------------------------------------------------------------

/// Rule 7: tokens in an `acquired` account move only to `spent` (or `expired`, once the cycle
/// closes): trading, listing, selling back, unlisting or reversing them out of `acquired`
/// answers `one_hop_violation`, single-phase or pending; spending them works.
async fn rule7_acquired_tokens_only_go_to_spent_or_expired(db: &TestDb) {
    let fx = Fx::new(db, 3).await;
    let tok = fx.tok();
    let (a, b, c) = (fx.org(0), fx.org(1), fx.org(2));
    let (t_iss, t_spent, t_expired, treasury) = (
        fx.p_tok(K::Issuance),
        fx.p_tok(K::Spent),
        fx.p_tok(K::Expired),
        fx.p_tok(K::Treasury),
    );
    fx.ok(vec![single(t_iss, a.alloc, &tok, 1_000, C::Allotment)])
        .await;
    fx.ok(chain(vec![
        single(a.alloc, a.escrow, &tok, 600, C::List),
        single(a.escrow, b.acquired, &tok, 500, C::Trade),
        single(a.alloc, treasury, &tok, 100, C::Buyback),
    ]))
    .await;
    let hop = Err(E::OneHopViolation);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("trade onward", single(b.acquired, c.acquired, &tok, 1, C::Trade), hop),
        ("list for resale", single(b.acquired, b.escrow, &tok, 1, C::List), hop),
        ("sell back to the provider", single(b.acquired, treasury, &tok, 1, C::Buyback), hop),
        ("move to the org's own alloc", single(b.acquired, b.alloc, &tok, 1, C::Unlist), hop),
        ("reverse the trade", single(b.acquired, a.escrow, &tok, 1, C::Reversal), hop),
        ("reverse to issuance", single(b.acquired, t_iss, &tok, 1, C::Reversal), hop),
        ("reserve a resale", pending(b.acquired, b.escrow, &tok, 1, C::List, Some(60)), hop),
        ("to spent under another code", single(b.acquired, t_spent, &tok, 1, C::Trade), Err(E::FlowNotAllowed)),
        ("expire before the cycle closes", single(b.acquired, t_expired, &tok, 1, C::Expiry), Err(E::CycleNotClosed)),
        ("spend", single(b.acquired, t_spent, &tok, 100, C::Spend), OK),
        ("reserve a spend", pending(b.acquired, t_spent, &tok, 100, C::Spend, None), OK),
        ("emergency credits land in acquired", single(treasury, c.acquired, &tok, 50, C::EmergencySale), OK),
        ("and cannot go back", single(c.acquired, treasury, &tok, 50, C::Reversal), hop),
    ];
    fx.check(cases).await;
    assert_eq!(fx.balance(b.acquired).await, bal(100, 100, 0, 500));
    assert_eq!(fx.balance(c.acquired).await, bal(0, 0, 0, 50));
    assert_eq!(
        fx.store().close_asset(&tok).await.expect("close"),
        CloseOutcome::Closed
    );
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("still no onward trade", single(b.acquired, c.acquired, &tok, 1, C::Trade), Err(E::CycleClosed)),
        ("expire after the cycle closed", single(b.acquired, t_expired, &tok, 300, C::Expiry), OK),
        ("expire into the wrong sink", single(c.acquired, t_spent, &tok, 50, C::Expiry), Err(E::FlowNotAllowed)),
    ];
    fx.check(cases).await;
    assert_eq!(fx.balance(b.acquired).await, bal(100, 400, 0, 500));
    fx.assert_books_ok().await;
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rules 7 and 8: the flow tables, exhaustively
// ---------------------------------------------------------------------------------------------

/// The credit flows the spec allows, written out independently of `TransferCode::admits`.
const CREDIT_FLOWS: &[(TransferCode, AccountKind, AccountKind)] = &[
    (C::Grant, K::Issuance, K::Wallet),
    (C::TopUp, K::Issuance, K::Wallet),
    (C::Spend, K::Wallet, K::Spent),
    (C::Trade, K::Wallet, K::Wallet),
    (C::Fee, K::Wallet, K::Fees),
    (C::Buyback, K::Issuance, K::Wallet),
    (C::EmergencySale, K::Wallet, K::Spent),
    (C::Expiry, K::Wallet, K::Expired),
    (C::Overdraft, K::Issuance, K::Wallet),
    // Reversals: each of the above backwards, but expiry.
    (C::Reversal, K::Wallet, K::Issuance),
    (C::Reversal, K::Spent, K::Wallet),
    (C::Reversal, K::Wallet, K::Wallet),
    (C::Reversal, K::Fees, K::Wallet),
];

/// The token flows the spec allows (before the cycle closes), likewise.
const TOKEN_FLOWS: &[(TransferCode, AccountKind, AccountKind)] = &[
    (C::Allotment, K::Issuance, K::Alloc),
    (C::Spend, K::Alloc, K::Spent),
    (C::Spend, K::Acquired, K::Spent),
    (C::List, K::Alloc, K::Escrow),
    (C::Unlist, K::Escrow, K::Alloc),
    (C::Trade, K::Escrow, K::Acquired),
    (C::Buyback, K::Alloc, K::Treasury),
    (C::Buyback, K::Escrow, K::Treasury),
    (C::EmergencySale, K::Treasury, K::Acquired),
    (C::EmergencySale, K::Issuance, K::Acquired),
    (C::Reversal, K::Alloc, K::Issuance),
    (C::Reversal, K::Spent, K::Alloc),
    (C::Reversal, K::Spent, K::Acquired),
    (C::Reversal, K::Alloc, K::Escrow),
    (C::Reversal, K::Escrow, K::Alloc),
    (C::Reversal, K::Treasury, K::Alloc),
    (C::Reversal, K::Treasury, K::Escrow),
];

/// What moving one unit from `debit` to `credit` under `code` must answer, with every account
/// funded: rule 9 (tokens expire only once closed), then rule 7, then rule 8.
fn expected_flow(
    token: bool,
    code: TransferCode,
    (debit, debit_org): (AccountKind, Option<usize>),
    (credit, credit_org): (AccountKind, Option<usize>),
) -> TransferResult {
    if token && code == C::Expiry {
        return Err(E::CycleNotClosed);
    }
    if debit == K::Acquired && !matches!(credit, K::Spent | K::Expired) {
        return Err(E::OneHopViolation);
    }
    let table = if token { TOKEN_FLOWS } else { CREDIT_FLOWS };
    if !table.contains(&(code, debit, credit)) {
        return Err(E::FlowNotAllowed);
    }
    // Listings move tokens within one org; trades go between two (so do their reversals).
    let within = matches!(
        (code, debit, credit),
        (C::List | C::Unlist, ..)
            | (C::Reversal, K::Alloc, K::Escrow)
            | (C::Reversal, K::Escrow, K::Alloc)
    );
    let between = matches!(
        (code, debit, credit),
        (C::Trade, ..) | (C::Reversal, K::Wallet, K::Wallet)
    );
    match (debit_org, credit_org) {
        (Some(d), Some(c)) if within && d != c => Err(E::OwnersMustMatch),
        (Some(d), Some(c)) if between && d == c => Err(E::OwnersMustDiffer),
        _ => OK,
    }
}

/// Which of the fixture's orgs owns an account, if any.
fn org_of(fx: &Fx, id: AccountId) -> Option<usize> {
    (0..fx.books.orgs.len()).find(|i| {
        let org = fx.org(*i);
        [org.wallet, org.alloc, org.acquired, org.escrow].contains(&id)
    })
}

/// Sends one unit under every code between every ordered pair of `accounts` in one request and
/// compares each answer with [`expected_flow`]; returns how many succeeded.
async fn flow_matrix(fx: &Fx, asset: &AssetCode, accounts: &[(AccountKind, AccountId)]) -> usize {
    let token = asset != &fx.cr();
    let mut transfers = Vec::new();
    let mut expected = Vec::new();
    for code in C::ALL {
        for (debit_kind, debit) in accounts {
            for (credit_kind, credit) in accounts {
                if debit == credit {
                    continue;
                }
                transfers.push(single(*debit, *credit, asset, 1, code));
                expected.push((
                    code,
                    *debit_kind,
                    *credit_kind,
                    expected_flow(
                        token,
                        code,
                        (*debit_kind, org_of(fx, *debit)),
                        (*credit_kind, org_of(fx, *credit)),
                    ),
                ));
            }
        }
    }
    let results = fx.submit(transfers).await;
    let wrong: Vec<String> = expected
        .iter()
        .zip(&results)
        .filter(|((.., want), got)| want != *got)
        .map(|((code, d, c, want), got)| {
            format!("{code} {d} → {c}: expected {want:?}, got {got:?}")
        })
        .collect();
    assert!(wrong.is_empty(), "{asset} flows:\n{}", wrong.join("\n"));
    results.iter().filter(|r| r.is_ok()).count()
}

/// Rule 8 (closed loop): CR moves only along its code's flows between the table's accounts:
/// every code between every ordered pair of CR accounts (issuance, fees, spent, expired, two
/// wallets) answers exactly as the spec's flow table says (e.g. `trade` wallet→spent, `fee`
/// wallet→wallet, `grant` to fees: `flow_not_allowed`).
async fn rule8_credits_move_only_along_their_flows(db: &TestDb) {
    let fx = Fx::new(db, 2).await;
    let cr = fx.cr();
    let (a, b) = (fx.org(0), fx.org(1));
    let (iss, spent, fees) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent), fx.p_cr(K::Fees));
    fx.ok(vec![
        single(iss, a.wallet, &cr, 1_000_000, C::Grant),
        single(iss, b.wallet, &cr, 1_000_000, C::Grant),
        single(a.wallet, spent, &cr, 1_000, C::Spend),
        single(a.wallet, fees, &cr, 1_000, C::Fee),
    ])
    .await;
    let before = fx.journal().await.len();
    let accounts = [
        (K::Issuance, iss),
        (K::Fees, fees),
        (K::Spent, spent),
        (K::Expired, fx.p_cr(K::Expired)),
        (K::Wallet, a.wallet),
        (K::Wallet, b.wallet),
    ];
    let committed = flow_matrix(&fx, &cr, &accounts).await;
    // 13 allowed (code, kinds) flows; wallet→wallet ones run both ways, the others once per
    // wallet: grant, top-up, overdraft, buyback, spend, emergency sale, expiry, fee and three
    // reversals twice each, trade and its reversal twice each.
    assert_eq!(committed, 26);
    assert_eq!(fx.journal().await.len(), before + committed);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("trade wallet→spent", single(a.wallet, spent, &cr, 1, C::Trade), Err(E::FlowNotAllowed)),
        ("fee wallet→wallet", single(a.wallet, b.wallet, &cr, 1, C::Fee), Err(E::FlowNotAllowed)),
        ("grant to fees", single(iss, fees, &cr, 1, C::Grant), Err(E::FlowNotAllowed)),
    ];
    fx.check(cases).await;
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Rules 7 and 8 for tokens: every code between every ordered pair of token accounts (the
/// provider's four, two orgs' alloc, acquired and escrow) answers exactly as the spec's flow
/// table says; anything out of `acquired` but to spent/expired is a `one_hop_violation`; no
/// expiry before the cycle closes.
async fn rule8_tokens_move_only_along_their_flows(db: &TestDb) {
    let fx = Fx::new(db, 2).await;
    let tok = fx.tok();
    let (a, b) = (fx.org(0), fx.org(1));
    let (t_iss, t_spent, treasury) = (
        fx.p_tok(K::Issuance),
        fx.p_tok(K::Spent),
        fx.p_tok(K::Treasury),
    );
    fx.ok(vec![
        single(t_iss, a.alloc, &tok, 1_000_000, C::Allotment),
        single(t_iss, b.alloc, &tok, 1_000_000, C::Allotment),
        single(a.alloc, a.escrow, &tok, 2_000, C::List),
        single(b.alloc, b.escrow, &tok, 2_000, C::List),
        single(a.escrow, b.acquired, &tok, 1_000, C::Trade),
        single(b.escrow, a.acquired, &tok, 1_000, C::Trade),
        single(a.alloc, treasury, &tok, 1_000, C::Buyback),
        single(a.alloc, t_spent, &tok, 1_000, C::Spend),
    ])
    .await;
    let accounts = [
        (K::Issuance, t_iss),
        (K::Treasury, treasury),
        (K::Spent, t_spent),
        (K::Expired, fx.p_tok(K::Expired)),
        (K::Alloc, a.alloc),
        (K::Acquired, a.acquired),
        (K::Escrow, a.escrow),
        (K::Alloc, b.alloc),
        (K::Acquired, b.acquired),
        (K::Escrow, b.escrow),
    ];
    let committed = flow_matrix(&fx, &tok, &accounts).await;
    assert!(committed > 0);
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Rule 8: an account outside the spec's table cannot exist: `Account::new` refuses a kind
/// that cannot hold the asset (treasury, alloc, acquired or escrow of CR; fees or wallet of a
/// token) or the wrong owner, and so does `Store::create_accounts` when handed such an account
/// (it can still arrive deserialized, past `Account::new`).
async fn rule8_accounts_outside_the_table_cannot_be_created(db: &TestDb) {
    let fx = Fx::new(db, 1).await;
    let (cr, tok) = (fx.cr(), fx.tok());
    let org = Owner::Org(OrgId::generate());
    #[rustfmt::skip]
    let cases = [
        (&cr, org, K::Alloc, AccountError::KindNotAllowedForAsset),
        (&cr, org, K::Acquired, AccountError::KindNotAllowedForAsset),
        (&cr, org, K::Escrow, AccountError::KindNotAllowedForAsset),
        (&cr, Owner::Provider, K::Treasury, AccountError::KindNotAllowedForAsset),
        (&tok, Owner::Provider, K::Fees, AccountError::KindNotAllowedForAsset),
        (&tok, org, K::Wallet, AccountError::KindNotAllowedForAsset),
        (&cr, org, K::Issuance, AccountError::ProviderKindNeedsProvider),
        (&cr, Owner::Provider, K::Wallet, AccountError::OrgKindNeedsOrg),
    ];
    for (asset, owner, kind, error) in cases {
        let id = AccountId::generate();
        assert_eq!(
            Account::new(id, asset.clone(), owner, kind),
            Err(error),
            "{kind} of {asset}"
        );
        // Deserializing goes through the same constructor: no account outside the table can
        // be smuggled in as JSON either.
        let json = serde_json::json!({
            "id": id.as_uuid(),
            "asset": asset.as_str(),
            "owner": owner,
            "kind": kind.name(),
        });
        let refused = serde_json::from_value::<Account>(json).expect_err("refused");
        assert!(
            refused.to_string().contains(&error.to_string()),
            "{refused}"
        );
    }
    let snapshot = fx.store().snapshot().await.expect("the books read whole");
    assert_eq!(snapshot.len(), fx.books.accounts().len());
    fx.close().await;
}

/// Rule 8: a transfer names existing accounts of one asset, and that asset:
/// `accounts_have_different_assets`, `asset_must_match_accounts`, `debit_account_not_found`,
/// `credit_account_not_found`.
async fn rule8_accounts_and_asset_must_match(db: &TestDb) {
    let fx = Fx::new(db, 1).await;
    let (cr, tok) = (fx.cr(), fx.tok());
    let a = fx.org(0);
    let iss = fx.p_cr(K::Issuance);
    let t_iss = fx.p_tok(K::Issuance);
    let other = Books::open(&fx.ledger, 1).await;
    let o = other.orgs[0];
    let unknown_asset = AssetCode::token("pro", "nowhere").expect("a code");
    let nowhere = AccountId::generate();
    fx.ok(vec![single(t_iss, a.alloc, &tok, 100, C::Allotment)])
        .await;
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("CR from a wallet to an alloc", single(a.wallet, a.alloc, &cr, 1, C::Trade), Err(E::AccountsHaveDifferentAssets)),
        ("tokens from an alloc to a wallet", single(a.alloc, a.wallet, &tok, 1, C::Trade), Err(E::AccountsHaveDifferentAssets)),
        ("tokens across two cycles", single(a.alloc, o.escrow, &tok, 1, C::List), Err(E::AccountsHaveDifferentAssets)),
        ("CR named between token accounts", single(a.alloc, a.escrow, &cr, 1, C::List), Err(E::AssetMustMatchAccounts)),
        ("another cycle named", single(a.alloc, a.escrow, &other.token, 1, C::List), Err(E::AssetMustMatchAccounts)),
        ("an unknown asset named", single(a.alloc, a.escrow, &unknown_asset, 1, C::List), Err(E::AssetMustMatchAccounts)),
        ("tokens named between CR accounts", single(iss, a.wallet, &tok, 1, C::Grant), Err(E::AssetMustMatchAccounts)),
        ("unknown debit account", single(nowhere, a.wallet, &cr, 1, C::Grant), Err(E::DebitAccountNotFound)),
        ("unknown credit account", single(iss, nowhere, &cr, 1, C::Grant), Err(E::CreditAccountNotFound)),
        ("both unknown", single(nowhere, AccountId::generate(), &cr, 1, C::Grant), Err(E::DebitAccountNotFound)),
        ("pending to an unknown account", pending(iss, nowhere, &cr, 1, C::Grant, None), Err(E::CreditAccountNotFound)),
        ("the well-formed one", single(a.alloc, a.escrow, &tok, 1, C::List), OK),
    ];
    fx.check(cases).await;
    assert_eq!(fx.nets(a.alloc).await, (99, 0));
    assert_eq!(fx.journal().await.len(), 2);
    fx.assert_books_ok().await;
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rule 9: closed cycles
// ---------------------------------------------------------------------------------------------

/// Rule 9: token expiry needs a closed cycle (`cycle_not_closed`); `close_asset` closes a token
/// asset once (`already_closed` after, `not_a_cycle` for CR, `not_found` for an unknown one);
/// afterwards every non-expiry transfer and every post answers `cycle_closed` while voids and
/// the expiry job still work, and `expiry` transfers move every remaining balance to
/// `expired`, never more than is there; credits carry on.
async fn rule9_closed_cycles_accept_only_expiry(db: &TestDb) {
    let fx = Fx::new(db, 2).await;
    let (cr, tok) = (fx.cr(), fx.tok());
    let (a, b) = (fx.org(0), fx.org(1));
    let (iss, expired_cr) = (fx.p_cr(K::Issuance), fx.p_cr(K::Expired));
    let (t_iss, t_spent, t_expired, treasury) = (
        fx.p_tok(K::Issuance),
        fx.p_tok(K::Spent),
        fx.p_tok(K::Expired),
        fx.p_tok(K::Treasury),
    );
    let (p1, p2, p3) = (tid(), tid(), tid());
    fx.ok(vec![
        single(t_iss, a.alloc, &tok, 1_000, C::Allotment),
        single(a.alloc, a.escrow, &tok, 300, C::List),
        single(a.escrow, b.acquired, &tok, 100, C::Trade),
        single(a.escrow, treasury, &tok, 50, C::Buyback),
        reserve(p1, a.alloc, t_spent, &tok, 100, C::Spend, None),
        reserve(p2, a.alloc, t_spent, &tok, 50, C::Spend, None),
        reserve(p3, b.acquired, t_spent, &tok, 10, C::Spend, Some(60)),
        single(iss, a.wallet, &cr, 100, C::Grant),
    ])
    .await;
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("token expiry before the close", single(a.alloc, t_expired, &tok, 10, C::Expiry), Err(E::CycleNotClosed)),
        ("credits have no cycle", single(a.wallet, expired_cr, &cr, 10, C::Expiry), OK),
    ];
    fx.check(cases).await;

    let store = fx.store();
    assert_eq!(
        store.close_asset(&tok).await.expect("close"),
        CloseOutcome::Closed
    );
    let closed_at = fx.clock.now();
    assert_eq!(
        store.close_asset(&tok).await.expect("close"),
        CloseOutcome::AlreadyClosed
    );
    assert_eq!(
        store.close_asset(&cr).await.expect("close"),
        CloseOutcome::NotACycle
    );
    let unknown = AssetCode::token("pro", "nowhere").expect("a code");
    assert_eq!(
        store.close_asset(&unknown).await.expect("close"),
        CloseOutcome::NotFound
    );
    let assets = store.assets().await.expect("assets");
    let closing: Vec<_> = assets
        .iter()
        .map(|v| (v.code.clone(), v.closed_at))
        .collect();
    assert!(
        closing.contains(&(tok.clone(), Some(closed_at))),
        "{closing:?}"
    );
    assert!(closing.contains(&(cr.clone(), None)), "{closing:?}");

    let closed = Err(E::CycleClosed);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("allotment", single(t_iss, a.alloc, &tok, 1, C::Allotment), closed),
        ("spend", single(a.alloc, t_spent, &tok, 1, C::Spend), closed),
        ("spend acquired", single(b.acquired, t_spent, &tok, 1, C::Spend), closed),
        ("list", single(a.alloc, a.escrow, &tok, 1, C::List), closed),
        ("unlist", single(a.escrow, a.alloc, &tok, 1, C::Unlist), closed),
        ("trade", single(a.escrow, b.acquired, &tok, 1, C::Trade), closed),
        ("buyback", single(a.escrow, treasury, &tok, 1, C::Buyback), closed),
        ("emergency sale", single(treasury, b.acquired, &tok, 1, C::EmergencySale), closed),
        ("reversal", single(a.alloc, t_iss, &tok, 1, C::Reversal), closed),
        ("a new pending transfer", pending(a.alloc, t_spent, &tok, 1, C::Spend, None), closed),
        ("posting a pending one", post(p1, None), closed),
        ("posting part of it", post(p1, Some(1)), closed),
        ("voiding it", void(p1), OK),
        ("voiding another", void(p2), OK),
        ("expiring more than there is", single(a.alloc, t_expired, &tok, 701, C::Expiry), Err(E::ExceedsCredits)),
        ("expiring the alloc", single(a.alloc, t_expired, &tok, 700, C::Expiry), OK),
        ("expiring the escrow", single(a.escrow, t_expired, &tok, 150, C::Expiry), OK),
        ("expiring the treasury", single(treasury, t_expired, &tok, 50, C::Expiry), OK),
        ("acquired still holds a pending 10", single(b.acquired, t_expired, &tok, 100, C::Expiry), Err(E::ExceedsCredits)),
        ("expiry from issuance", single(t_iss, t_expired, &tok, 1, C::Expiry), Err(E::FlowNotAllowed)),
        ("expiry to spent", single(b.acquired, t_spent, &tok, 1, C::Expiry), Err(E::FlowNotAllowed)),
        ("CR carries on", single(iss, a.wallet, &cr, 5, C::Grant), OK),
    ];
    fx.check(cases).await;
    // The expiry job still releases the closed asset's pending transfers.
    fx.clock.advance_seconds(60);
    assert_eq!(store.expire_pending(100).await.expect("expire"), 1);
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("expiring the acquired", single(b.acquired, t_expired, &tok, 100, C::Expiry), OK),
        ("nothing is left", single(a.alloc, t_expired, &tok, 1, C::Expiry), Err(E::ExceedsCredits)),
    ];
    fx.check(cases).await;
    let p3_state = store.pendings(&[p3]).await.expect("read")[0].state;
    assert_eq!(p3_state, PendingState::Expired);
    for (name, id) in [
        ("alloc", a.alloc),
        ("escrow", a.escrow),
        ("acquired", b.acquired),
        ("treasury", treasury),
        ("spent", t_spent),
    ] {
        assert_eq!(fx.nets(id).await, (0, 0), "{name}");
    }
    assert_eq!(fx.balance(t_expired).await, bal(0, 0, 0, 1_000));
    assert_eq!(fx.balance(t_iss).await, bal(0, 1_000, 0, 0));
    assert_eq!(fx.nets(a.wallet).await, (95, 0));
    fx.assert_books_ok().await;
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------
// Rule 10: balances at past instants, history
// ---------------------------------------------------------------------------------------------

/// Rule 10: `balance_as_of` at past instants (the clock advanced between batches) equals the
/// balance the ledger held then, pending amounts included (later posted, voided or expired: an
/// expired one counts until its timeout ran out, not until the job ran); before the first
/// transfer it is zero; an unknown account has none.
async fn rule10_balances_at_past_instants(db: &TestDb) {
    let fx = Fx::new(db, 2).await;
    let cr = fx.cr();
    let (a, b) = (fx.org(0), fx.org(1));
    let (iss, spent) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent));
    let watched = [a.wallet, b.wallet, spent, iss];
    let mut seen: Vec<(Timestamp, Vec<Balance>)> = Vec::new();
    async fn balances(fx: &Fx, ids: &[AccountId]) -> Vec<Balance> {
        let views = fx.store().accounts(ids).await.expect("read");
        views.into_iter().map(|v| v.balance).collect()
    }

    let t0 = fx.clock.now();
    fx.ok(vec![single(iss, a.wallet, &cr, 1_000, C::Grant)])
        .await;
    seen.push((t0, balances(&fx, &watched).await));

    fx.clock.advance_seconds(10);
    let t1 = fx.clock.now();
    let (p1, p2, p3) = (tid(), tid(), tid());
    fx.ok(vec![
        single(a.wallet, b.wallet, &cr, 300, C::Trade),
        reserve(p1, a.wallet, spent, &cr, 200, C::Spend, Some(100)),
        reserve(p2, a.wallet, spent, &cr, 100, C::Spend, None),
        reserve(p3, a.wallet, spent, &cr, 50, C::Spend, Some(30)),
    ])
    .await;
    seen.push((t1, balances(&fx, &watched).await));

    fx.clock.advance_seconds(10);
    let t2 = fx.clock.now();
    fx.ok(vec![post(p1, Some(150)), void(p2)]).await;
    seen.push((t2, balances(&fx, &watched).await));

    fx.clock.set(t1.plus_seconds(40));
    let t3 = fx.clock.now();
    assert_eq!(fx.store().expire_pending(100).await.expect("expire"), 1);
    fx.ok(vec![single(a.wallet, spent, &cr, 100, C::Spend)])
        .await;
    seen.push((t3, balances(&fx, &watched).await));
    fx.clock.advance_seconds(3_600);

    // What the ledger held then is what it says it held then.
    for (at, held) in &seen {
        for (id, balance) in watched.iter().zip(held) {
            let then = fx.store().balance_as_of(*id, *at).await.expect("read");
            assert_eq!(then, Some(*balance), "{id} at {at:?}");
        }
    }
    // And, explicitly, for a's wallet between and at the instants.
    let expected = [
        (t0.plus_micros(-1), bal(0, 0, 0, 0)),
        (t0, bal(0, 0, 0, 1_000)),
        (t1.plus_micros(-1), bal(0, 0, 0, 1_000)),
        (t1, bal(350, 300, 0, 1_000)),
        (t1.plus_seconds(5), bal(350, 300, 0, 1_000)),
        (t2, bal(50, 450, 0, 1_000)),
        (t1.plus_seconds(30).plus_micros(-1), bal(50, 450, 0, 1_000)),
        (t1.plus_seconds(30), bal(0, 450, 0, 1_000)),
        (t3, bal(0, 550, 0, 1_000)),
        (Timestamp::MAX, bal(0, 550, 0, 1_000)),
    ];
    for (at, balance) in expected {
        let then = fx.store().balance_as_of(a.wallet, at).await.expect("read");
        assert_eq!(then, Some(balance), "a.wallet at {at:?}");
    }
    assert_eq!(
        fx.store()
            .balance_as_of(spent, t1.plus_seconds(30))
            .await
            .expect("read"),
        Some(bal(0, 0, 0, 150))
    );
    assert_eq!(
        fx.store()
            .balance_as_of(AccountId::generate(), t3)
            .await
            .expect("read"),
        None
    );
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Every entry of an account's history, paged with the cursor.
async fn full_history(store: &dyn Store, id: AccountId, page: u32) -> Vec<JournalEntry> {
    let mut all: Vec<JournalEntry> = Vec::new();
    let mut cursor: Option<HistoryCursor> = None;
    loop {
        let entries = store.history(id, cursor, page).await.expect("history");
        assert!(entries.len() <= usize::try_from(page).expect("small"));
        let Some(last) = entries.last() else {
            return all;
        };
        cursor = Some(last.cursor());
        all.extend(entries);
    }
}

/// Rule 10: `history` pages through an account's journal entries (page size 2, ties in time
/// spanning page boundaries) in time order and finds each of them exactly once, and only
/// those touching the account: single, pending, post and void entries alike.
async fn rule10_history_pages_in_time_order(db: &TestDb) {
    let fx = Fx::new(db, 2).await;
    let cr = fx.cr();
    let (a, b) = (fx.org(0), fx.org(1));
    let (iss, spent) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent));
    let ids: Vec<TransferId> = (0..8).map(|_| tid()).collect();
    fx.ok(vec![mv(ids[0], iss, a.wallet, &cr, 1_000, C::Grant)])
        .await;
    fx.clock.advance_seconds(10);
    fx.ok(vec![
        mv(ids[1], a.wallet, b.wallet, &cr, 300, C::Trade),
        reserve(ids[2], a.wallet, spent, &cr, 200, C::Spend, Some(100)),
        single(iss, b.wallet, &cr, 5, C::Grant),
        reserve(ids[3], a.wallet, spent, &cr, 100, C::Spend, None),
        reserve(ids[4], a.wallet, spent, &cr, 50, C::Spend, Some(30)),
    ])
    .await;
    fx.clock.advance_seconds(10);
    fx.ok(vec![
        post_as(ids[5], ids[2], Some(150)),
        void_as(ids[6], ids[3]),
    ])
    .await;
    fx.clock.advance_seconds(40);
    fx.store().expire_pending(10).await.expect("expire");
    fx.ok(vec![mv(ids[7], a.wallet, spent, &cr, 100, C::Spend)])
        .await;

    let history = full_history(fx.store().as_ref(), a.wallet, 2).await;
    let got: Vec<TransferId> = history.iter().map(|e| e.record.id).collect();
    assert_eq!(got, ids, "a's history, in order, each once");
    for pair in history.windows(2) {
        assert!(pair[0].cursor().timestamp <= pair[1].cursor().timestamp);
        assert!((pair[0].record.timestamp, pair[0].seq) < (pair[1].record.timestamp, pair[1].seq));
    }
    for entry in &history {
        let r = &entry.record;
        assert!(r.debit_account_id == a.wallet || r.credit_account_id == a.wallet);
    }
    let spent_history = full_history(fx.store().as_ref(), spent, 2).await;
    let got: Vec<TransferId> = spent_history.iter().map(|e| e.record.id).collect();
    assert_eq!(got, ids[2..].to_vec());
    let b_history = full_history(fx.store().as_ref(), b.wallet, 2).await;
    assert_eq!(b_history.len(), 2);
    assert_eq!(b_history[0].record.id, ids[1]);
    // One big page holds the same entries.
    let whole = fx
        .store()
        .history(a.wallet, None, 100)
        .await
        .expect("history");
    assert_eq!(whole, history);
    assert!(fx
        .store()
        .history(AccountId::generate(), None, 2)
        .await
        .expect("history")
        .is_empty());
    fx.close().await;
}

// ---------------------------------------------------------------------------------------------
// Accounts, batch bounds, concurrency, overflow
// ---------------------------------------------------------------------------------------------

/// `create_accounts` answers each account in order: created, `exists`,
/// `exists_with_different_{asset,owner,kind}` (compared in that order),
/// `duplicate_owner_kind_asset`, `asset_not_found`; refused accounts are not created.
async fn create_accounts_answers(db: &TestDb) {
    let fx = Fx::new(db, 2).await;
    let (cr, tok) = (fx.cr(), fx.tok());
    let (a, b) = (fx.org(0), fx.org(1));
    let fresh = Owner::Org(OrgId::generate());
    let account = |id, asset: &AssetCode, owner, kind| {
        Account::new(id, asset.clone(), owner, kind).expect("a valid account")
    };
    let id = AccountId::generate();
    let new_alloc = account(id, &tok, fresh, K::Alloc);
    let other_cycle = AssetCode::token("std", "2026-11").expect("a code");
    let missing = AssetCode::token("pro", "missing").expect("a code");
    let (dup, lost) = (AccountId::generate(), AccountId::generate());
    #[rustfmt::skip]
    let cases: Vec<(&str, Account, Result<(), CreateAccountError>)> = vec![
        ("new", new_alloc.clone(), Ok(())),
        ("again", new_alloc.clone(), Err(CreateAccountError::Exists)),
        ("other asset", account(id, &other_cycle, fresh, K::Alloc), Err(CreateAccountError::ExistsWithDifferentAsset)),
        ("other owner", account(id, &tok, Owner::Org(a.org), K::Alloc), Err(CreateAccountError::ExistsWithDifferentOwner)),
        ("other kind", account(id, &tok, fresh, K::Escrow), Err(CreateAccountError::ExistsWithDifferentKind)),
        ("asset before kind", account(id, &cr, fresh, K::Wallet), Err(CreateAccountError::ExistsWithDifferentAsset)),
        ("owner before kind", account(id, &tok, Owner::Org(b.org), K::Acquired), Err(CreateAccountError::ExistsWithDifferentOwner)),
        ("a second alloc for the owner", account(dup, &tok, fresh, K::Alloc), Err(CreateAccountError::DuplicateOwnerKindAsset)),
        ("a second CR issuance", account(AccountId::generate(), &cr, Owner::Provider, K::Issuance), Err(CreateAccountError::DuplicateOwnerKindAsset)),
        ("an unknown asset", account(lost, &missing, fresh, K::Alloc), Err(CreateAccountError::AssetNotFound)),
        ("an existing wallet", account(a.wallet, &cr, Owner::Org(a.org), K::Wallet), Err(CreateAccountError::Exists)),
        ("another kind for the owner", account(AccountId::generate(), &tok, fresh, K::Escrow), Ok(())),
    ];
    let accounts: Vec<Account> = cases
        .iter()
        .map(|(_, account, _)| account.clone())
        .collect();
    let results = fx
        .store()
        .create_accounts(&accounts)
        .await
        .expect("create accounts");
    let wrong: Vec<String> = cases
        .iter()
        .zip(&results)
        .filter(|((.., want), got)| want != *got)
        .map(|((what, _, want), got)| format!("{what}: expected {want:?}, got {got:?}"))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let views = fx.store().accounts(&[id, dup, lost]).await.expect("read");
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].account, new_alloc);
    assert_eq!(views[0].balance, Balance::default());
    // The new account works.
    fx.ok(vec![single(
        fx.p_tok(K::Issuance),
        id,
        &tok,
        10,
        C::Allotment,
    )])
    .await;
    assert_eq!(fx.nets(id).await, (10, 0));
    fx.assert_books_ok().await;
    fx.close().await;
}

/// A request carries at most `BATCH_MAX` (8,190) transfers: one more is refused whole with
/// `StoreError::BatchTooLarge` and moves nothing; exactly that many commit.
async fn batch_too_large(db: &TestDb) {
    assert_eq!(BATCH_MAX, 8_190);
    let fx = Fx::new(db, 1).await;
    let cr = fx.cr();
    let a = fx.org(0);
    let iss = fx.p_cr(K::Issuance);
    let grants = |n: usize| -> Vec<Transfer> {
        (0..n)
            .map(|_| single(iss, a.wallet, &cr, 1, C::Grant))
            .collect()
    };
    let refused = fx.ledger.create_transfers(grants(BATCH_MAX + 1)).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::BatchTooLarge {
                max: 8_190,
                got: 8_191
            })
        ),
        "{refused:?}"
    );
    assert!(fx.journal().await.is_empty());
    assert_eq!(fx.nets(a.wallet).await, (0, 0));
    let results = fx.submit(grants(BATCH_MAX)).await;
    assert_eq!(results, vec![OK; BATCH_MAX]);
    assert_eq!(fx.nets(a.wallet).await, (8_190, 0));
    assert_eq!(fx.journal().await.len(), BATCH_MAX);
    assert_eq!(
        fx.ledger.create_transfers(Vec::new()).await.expect("empty"),
        Vec::<TransferResult>::new()
    );
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Many concurrent `create_transfers` calls on one ledger each get their own, correct
/// results, however the group committer batches them: 64 independent requests (each with a
/// success, a refusal, a replay, a trade chain and a failed chain) and 12 requests racing for
/// one wallet, of which exactly as many succeed as its funds allow.
async fn concurrent_requests_get_their_own_results(db: &TestDb) {
    let fx = Fx::new(db, 16).await;
    let (cr, tok) = (fx.cr(), fx.tok());
    let (iss, spent, fees) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent), fx.p_cr(K::Fees));
    let (t_iss, t_spent) = (fx.p_tok(K::Issuance), fx.p_tok(K::Spent));
    // The contested wallet: 100 µCR, 12 requests of 30.
    let contested = fx.org(15).wallet;
    fx.ok(vec![single(iss, contested, &cr, 100, C::Grant)])
        .await;

    let mut tasks = JoinSet::new();
    for round in 0..4_u64 {
        for i in 0..15_usize {
            let org = fx.org(i);
            let partner = fx.org((i + 1) % 15);
            let (cr, tok, ledger) = (cr.clone(), tok.clone(), fx.ledger.clone());
            let n = u64::try_from(i).expect("small") + 1;
            tasks.spawn(async move {
                let grant = single(iss, org.wallet, &cr, 100 * n, C::Grant);
                let mut request = vec![
                    grant.clone(),
                    single(org.wallet, spent, &cr, 10 * n, C::Spend),
                    // More than the wallet can ever hold: refused.
                    single(org.wallet, spent, &cr, 1_000 * n, C::Spend),
                    grant,
                    single(t_iss, org.alloc, &tok, 10, C::Allotment),
                ];
                // A trade goes to another org (never to oneself): the next org's acquired.
                request.extend(chain(vec![
                    single(org.alloc, org.escrow, &tok, 10, C::List),
                    single(org.escrow, partner.acquired, &tok, 10, C::Trade),
                    single(partner.acquired, t_spent, &tok, 4, C::Spend),
                ]));
                request.extend(chain(vec![
                    single(org.wallet, fees, &cr, 1, C::Fee),
                    single(org.acquired, org.escrow, &tok, 1, C::List),
                ]));
                let results = ledger.create_transfers(request).await.expect("commit");
                (Some((round, i)), results)
            });
        }
    }
    for _ in 0..12 {
        let (cr, ledger) = (cr.clone(), fx.ledger.clone());
        tasks.spawn(async move {
            let results = ledger
                .create_transfers(vec![single(contested, spent, &cr, 30, C::Spend)])
                .await
                .expect("commit");
            (None, results)
        });
    }
    let independent = vec![
        OK,
        OK,
        Err(E::ExceedsCredits),
        Err(E::Exists),
        OK,
        OK,
        OK,
        OK,
        Err(E::LinkedEventFailed),
        Err(E::OneHopViolation),
    ];
    let (mut won, mut lost) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("the task finishes") {
            (Some(which), results) => assert_eq!(results, independent, "{which:?}"),
            (None, results) if results == vec![OK] => won += 1,
            (None, results) if results == vec![Err(E::ExceedsCredits)] => lost += 1,
            (None, results) => panic!("unexpected {results:?}"),
        }
    }
    assert_eq!((won, lost), (3, 9));
    assert_eq!(fx.nets(contested).await, (10, 0));
    let mut spent_total = 90;
    for i in 0..15_usize {
        let org = fx.org(i);
        let n = i128::from(u8::try_from(i).expect("small")) + 1;
        // Four rounds of: +100n, -10n.
        assert_eq!(fx.nets(org.wallet).await, (4 * 90 * n, 0), "org {i}");
        assert_eq!(fx.nets(org.acquired).await, (4 * 6, 0), "org {i}");
        assert_eq!(fx.nets(org.alloc).await, (0, 0), "org {i}");
        spent_total += 4 * 10 * n;
    }
    assert_eq!(fx.nets(spent).await, (spent_total, 0));
    assert_eq!(fx.nets(fees).await, (0, 0));
    assert_eq!(fx.nets(t_spent).await, (60 * 4, 0));
    // 1 grant + 60 × (grant, spend, allotment, 3 chained) + 3 contested spends.
    assert_eq!(fx.journal().await.len(), 1 + 60 * 6 + 3);
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Overflow: a transfer that would take an account's credits beyond what storage holds
/// (`credex_store::BALANCE_MAX`) is refused with `overflows_credits`, whether or not the rest
/// of its batch happened to debit that account, and the books stay readable.
async fn overflowing_credits_are_refused(db: &TestDb) {
    let fx = Fx::new(db, 1).await;
    let cr = fx.cr();
    let a = fx.org(0);
    let (iss, spent) = (fx.p_cr(K::Issuance), fx.p_cr(K::Spent));
    let limit = credex_store::BALANCE_MAX;
    fx.ok(vec![single(iss, a.wallet, &cr, 10, C::Grant)]).await;
    // The wallet is debited in the same request, so its whole balance is read.
    assert_eq!(
        fx.submit(vec![
            single(a.wallet, spent, &cr, 1, C::Spend),
            single(iss, a.wallet, &cr, limit - 5, C::Grant),
        ])
        .await,
        vec![OK, Err(E::OverflowsCredits)]
    );
    // Alone, the same grant is a blind update: the stripe's range stops it, and the retry
    // with whole balances gives the same answer, not a storage error.
    let lone = fx
        .ledger
        .create_transfers(vec![single(iss, a.wallet, &cr, limit - 5, C::Grant)])
        .await;
    assert!(
        matches!(&lone, Ok(results) if results == &vec![Err(E::OverflowsCredits)]),
        "{lone:?}"
    );
    assert_eq!(fx.balance(a.wallet).await, bal(0, 1, 0, 10));
    // Up to the limit exactly is fine.
    fx.ok(vec![single(iss, a.wallet, &cr, limit - 10, C::Grant)])
        .await;
    assert_eq!(fx.balance(a.wallet).await, bal(0, 1, 0, limit));
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Overflow: `issuance`, which may go negative and whose balance is striped, can never have
/// more debits than its stripes hold together (`credex_store::HOT_BALANCE_MAX`): the grant
/// that would cross it is refused with `overflows_debits`, and the books stay readable.
async fn overflowing_issuance_debits_are_refused(db: &TestDb) {
    let fx = Fx::new(db, 17).await;
    let cr = fx.cr();
    let iss = fx.p_cr(K::Issuance);
    let limit = credex_store::BALANCE_MAX;
    for i in 0..16 {
        fx.ok(vec![single(iss, fx.org(i).wallet, &cr, limit, C::Grant)])
            .await;
    }
    let answer = fx
        .ledger
        .create_transfers(vec![single(iss, fx.org(16).wallet, &cr, 1, C::Grant)])
        .await;
    assert!(
        matches!(&answer, Ok(results) if results == &vec![Err(E::OverflowsDebits)]),
        "{answer:?}"
    );
    assert_eq!(
        fx.balance(iss).await,
        bal(0, credex_store::HOT_BALANCE_MAX, 0, 0)
    );
    fx.assert_books_ok().await;
    fx.close().await;
}

/// Limits: the group committer's queue is bounded in transfers and in wait. With room for one
/// 8,190-transfer request and 1 ms of patience, a request arriving while a full one commits is
/// refused as `Overloaded` and moves nothing; the full one commits.
async fn queue_wait_is_bounded(db: &TestDb) {
    let fx = Fx::new(db, 2).await;
    let cr = fx.cr();
    let iss = fx.p_cr(K::Issuance);
    let (a, b) = (fx.org(0), fx.org(1));
    let config = credex_store::GroupCommitConfig {
        max_group_transfers: BATCH_MAX,
        max_queued_transfers: BATCH_MAX,
        flushers: 1,
        max_queue_wait: std::time::Duration::from_millis(1),
    };
    let ledger = std::sync::Arc::new(credex_store::Ledger::new(fx.store().clone(), config));
    let full: Vec<Transfer> = (0..BATCH_MAX)
        .map(|_| single(iss, a.wallet, &cr, 1, C::Grant))
        .collect();
    let first = tokio::spawn({
        let ledger = ledger.clone();
        async move { ledger.create_transfers(full).await }
    });
    // The first request takes the whole queue; committing 8,190 transfers takes far longer
    // than this pause.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let refused = ledger
        .create_transfers(vec![single(iss, b.wallet, &cr, 1, C::Grant)])
        .await;
    assert!(
        matches!(refused, Err(StoreError::Overloaded { .. })),
        "{refused:?}"
    );
    let first = first
        .await
        .expect("the first request finishes")
        .expect("it commits");
    assert_eq!(first, vec![OK; BATCH_MAX]);
    ledger.close().await;
    assert_eq!(fx.nets(a.wallet).await, (8_190, 0));
    assert_eq!(fx.nets(b.wallet).await, (0, 0));
    fx.assert_books_ok().await;
    fx.close().await;
}

on_both_backends!(
    queue_wait_is_bounded,
    smoke,
    rule1_every_asset_sums_to_zero,
    rule2_restricted_accounts_never_go_negative,
    rule3_replays_never_change_a_transfer,
    rule3_failed_ids_stay_failed,
    rule3_corrections_are_reversals,
    rule4_chains_commit_or_fail_as_one,
    rule4_chain_members_see_earlier_members,
    rule4_chains_in_one_group_commit_do_not_interfere,
    rule5_reserve_then_post_or_void,
    rule5_post_and_void_errors,
    rule5_pending_transfers_expire_at_their_timeout,
    rule5_pending_created_and_resolved_in_one_request,
    rule6_replays_answer_the_first_result,
    rule7_acquired_tokens_only_go_to_spent_or_expired,
    rule8_credits_move_only_along_their_flows,
    rule8_tokens_move_only_along_their_flows,
    rule8_accounts_outside_the_table_cannot_be_created,
    rule8_accounts_and_asset_must_match,
    rule9_closed_cycles_accept_only_expiry,
    rule10_balances_at_past_instants,
    rule10_history_pages_in_time_order,
    create_accounts_answers,
    batch_too_large,
    concurrent_requests_get_their_own_results,
    overflowing_credits_are_refused,
    overflowing_issuance_debits_are_refused,
);
