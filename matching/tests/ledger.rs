//! Settlement against the ledger's pure engine (invariant 9): listings, amends, cancels and
//! orders are all carried out as ledger transfers through `credex_ledger::engine::apply`,
//! every request must be accepted whole, every asset's balances must sum to zero, and the
//! ledger must agree with the book (each seller's `escrow` is its open listings).

mod common;

use std::collections::HashMap;

use common::*;
use credex_ledger::engine::{self, BatchInput, LoadedAccount};
use credex_ledger::{
    Account, AccountId, AccountKind, Action, Amount, AssetCode, AssetState, Balance, Movement,
    OrgId, Owner, Timestamp, Transfer, TransferCode, TransferId, AMOUNT_MAX,
};
use credex_matching::{
    settle_fill, settle_order, BuyOrder, BuyerAccounts, Fee, FeePayer, Limit, MarketAccounts,
    OrderBook, ProviderFill, SellerAccounts,
};
use proptest::prelude::*;
use rust_decimal::Decimal;
use uuid::Uuid;

const ORGS: u128 = 4;
const ALLOTMENT: u64 = 1_000_000;
const GRANT_MICRO_CR: u64 = 1_000_000_000_000;

struct Ledger {
    token: AssetCode,
    accounts: HashMap<AccountId, Account>,
    balances: HashMap<AccountId, Balance>,
    next_id: u128,
    market: MarketAccounts,
    issuance_credit: AccountId,
    orgs: Vec<OrgAccounts>,
}

#[derive(Debug, Clone, Copy)]
struct OrgAccounts {
    alloc: AccountId,
    escrow: AccountId,
    acquired: AccountId,
    wallet: AccountId,
}

impl Ledger {
    fn new() -> Self {
        let token = AssetCode::token("pro", "2026-11").expect("a valid asset");
        let mut ledger = Self {
            market: MarketAccounts {
                token: token.clone(),
                fees: AccountId::generate(),
                spent: AccountId::generate(),
                treasury: AccountId::generate(),
                issuance: AccountId::generate(),
            },
            token,
            accounts: HashMap::new(),
            balances: HashMap::new(),
            next_id: 0,
            issuance_credit: AccountId::generate(),
            orgs: Vec::new(),
        };
        let credit = AssetCode::credit();
        let token = ledger.token.clone();
        let market = ledger.market.clone();
        ledger.open(market.fees, &credit, Owner::Provider, AccountKind::Fees);
        ledger.open(market.spent, &credit, Owner::Provider, AccountKind::Spent);
        ledger.open(
            market.treasury,
            &token,
            Owner::Provider,
            AccountKind::Treasury,
        );
        ledger.open(
            market.issuance,
            &token,
            Owner::Provider,
            AccountKind::Issuance,
        );
        ledger.open(
            ledger.issuance_credit,
            &credit,
            Owner::Provider,
            AccountKind::Issuance,
        );
        for n in 0..ORGS {
            let owner = Owner::Org(org(n));
            let accounts = OrgAccounts {
                alloc: AccountId::generate(),
                escrow: AccountId::generate(),
                acquired: AccountId::generate(),
                wallet: AccountId::generate(),
            };
            ledger.open(accounts.alloc, &token, owner, AccountKind::Alloc);
            ledger.open(accounts.escrow, &token, owner, AccountKind::Escrow);
            ledger.open(accounts.acquired, &token, owner, AccountKind::Acquired);
            ledger.open(accounts.wallet, &credit, owner, AccountKind::Wallet);
            ledger.orgs.push(accounts);
            let allot = ledger.movement(
                market.issuance,
                accounts.alloc,
                &token,
                ALLOTMENT,
                TransferCode::Allotment,
            );
            let grant = ledger.movement(
                ledger.issuance_credit,
                accounts.wallet,
                &credit,
                GRANT_MICRO_CR,
                TransferCode::Grant,
            );
            ledger.commit(vec![allot, grant]);
        }
        // The provider bought 300 tokens back from org 0: its treasury can sell them.
        let back = ledger.movement(
            ledger.orgs[0].alloc,
            market.treasury,
            &token,
            300,
            TransferCode::Buyback,
        );
        let paid = ledger.movement(
            ledger.issuance_credit,
            ledger.orgs[0].wallet,
            &credit,
            270,
            TransferCode::Buyback,
        );
        ledger.commit(vec![back.with_linked(true), paid]);
        ledger
    }

    fn open(&mut self, id: AccountId, asset: &AssetCode, owner: Owner, kind: AccountKind) {
        let account = Account::new(id, asset.clone(), owner, kind).expect("a valid account");
        self.accounts.insert(id, account);
        self.balances.insert(id, Balance::default());
    }

    fn id(&mut self) -> TransferId {
        self.next_id += 1;
        TransferId::new(Uuid::from_u128(self.next_id)).expect("a valid id")
    }

    fn movement(
        &mut self,
        debit: AccountId,
        credit: AccountId,
        asset: &AssetCode,
        amount: u64,
        code: TransferCode,
    ) -> Transfer {
        let amount = Amount::new(amount).expect("a positive amount");
        let movement =
            Movement::new(debit, credit, asset.clone(), amount, code).expect("a movement");
        Transfer::movement(self.id(), movement)
    }

    /// Applies one request through the engine; every transfer must be accepted.
    fn commit(&mut self, request: Vec<Transfer>) {
        let assets = [self.token.clone(), AssetCode::credit()]
            .into_iter()
            .map(|code| {
                (
                    code.clone(),
                    AssetState {
                        code,
                        closed: false,
                    },
                )
            })
            .collect();
        let accounts = self
            .accounts
            .iter()
            .map(|(id, account)| {
                let loaded = LoadedAccount {
                    account: account.clone(),
                    balance: Some(self.balances[id]),
                    max_total: AMOUNT_MAX,
                };
                (*id, loaded)
            })
            .collect();
        let input = BatchInput {
            now: Timestamp::from_micros(OPEN_MICROS),
            assets,
            accounts,
            ..BatchInput::default()
        };
        let requests = [request];
        let outcome = engine::apply(input, &requests).expect("the engine's contract holds");
        for (transfer, result) in requests[0].iter().zip(&outcome.results[0]) {
            assert_eq!(*result, Ok(()), "{transfer:?}");
        }
        for (id, delta) in outcome.deltas {
            let balance = self.balances[&id];
            let updated = delta
                .applied_to(balance, AMOUNT_MAX)
                .expect("within bounds");
            self.balances.insert(id, updated);
        }
    }

    fn balance(&self, id: AccountId) -> i128 {
        self.balances[&id].net_posted()
    }

    fn buyer(&self, n: usize) -> BuyerAccounts {
        BuyerAccounts {
            acquired: self.orgs[n].acquired,
            wallet: self.orgs[n].wallet,
        }
    }

    fn seller_of(&self, org_id: OrgId) -> Option<SellerAccounts> {
        let n = (0..ORGS).position(|n| org(n) == org_id)?;
        Some(SellerAccounts {
            escrow: self.orgs[n].escrow,
            wallet: self.orgs[n].wallet,
        })
    }

    /// Rule 1 per asset, and rule 2 for every account that may not go negative.
    fn check_conservation(&self) {
        let mut sums: HashMap<&AssetCode, i128> = HashMap::new();
        for (id, account) in &self.accounts {
            let balance = self.balances[id];
            *sums.entry(account.asset()).or_default() += balance.net_posted();
            if !account.kind().may_go_negative() {
                assert!(balance.debits_within_credits(), "{account:?}: {balance:?}");
            }
        }
        assert!(sums.values().all(|sum| *sum == 0), "{sums:?}");
    }
}

fn fee(rate: &str, payer: FeePayer) -> Fee {
    Fee::new(rate.parse::<Decimal>().expect("a decimal"), payer).expect("a valid fee")
}

#[test]
fn a_fill_settles_as_one_linked_chain() {
    let check = |payer: FeePayer, fee_debit: fn(&Ledger) -> AccountId| {
        let mut ledger = Ledger::new();
        let mut book = OrderBook::new(rules(linear("0"), fee("0.03", payer)));
        let list = ledger.movement(
            ledger.orgs[1].alloc,
            ledger.orgs[1].escrow,
            &ledger.token.clone(),
            1_000,
            TransferCode::List,
        );
        ledger.commit(vec![list]);
        book.insert(listing(1, 1, 1_000, None, 3_000_000, 1))
            .expect("inserted");
        let order = order(2, 700, Limit::PricePer1m(u64::MAX));
        let outcome = book
            .match_order(&order, at(0, 1), &unlinked)
            .expect("matched");
        let fill = outcome.fills()[0];
        // 700 tokens at 3 CR per 1M: 2,100 µCR; 3% is 63 µCR.
        assert_eq!((fill.cost_micro_cr(), fill.fee_micro_cr()), (2_100, 63));
        let seller = ledger.seller_of(org(1)).expect("known");
        let buyer = ledger.buyer(2);
        let market = ledger.market.clone();
        let chain = settle_fill(&fill, &buyer, &seller, &market, || ledger.id()).expect("settled");
        let legs: Vec<_> = chain
            .iter()
            .map(|t| match t.action() {
                Action::Move(m) => (
                    m.debit_account_id(),
                    m.credit_account_id(),
                    m.amount().get(),
                    m.code(),
                    t.linked(),
                ),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            legs,
            vec![
                (
                    seller.escrow,
                    buyer.acquired,
                    700,
                    TransferCode::Trade,
                    true
                ),
                (
                    buyer.wallet,
                    seller.wallet,
                    2_100,
                    TransferCode::Trade,
                    true
                ),
                (
                    fee_debit(&ledger),
                    market.fees,
                    63,
                    TransferCode::Fee,
                    false
                ),
            ]
        );
        let before = (ledger.balance(buyer.wallet), ledger.balance(seller.wallet));
        ledger.commit(chain);
        ledger.check_conservation();
        let paid = before.0 - ledger.balance(buyer.wallet);
        let received = ledger.balance(seller.wallet) - before.1;
        assert_eq!(paid, received + 63, "buyer pays = seller receives + fee");
        assert_eq!(ledger.balance(market.fees), 63);
        assert_eq!(ledger.balance(buyer.acquired), 700);
        assert_eq!(ledger.balance(seller.escrow), 300);
    };
    check(FeePayer::Seller, |l| l.orgs[1].wallet);
    check(FeePayer::Buyer, |l| l.orgs[2].wallet);
}

#[test]
fn a_provider_sale_draws_on_the_treasury_first() {
    let mut ledger = Ledger::new();
    let mut book = OrderBook::new(standard_rules());
    let offer = ProviderFill::new(2_000_000, 10_000).expect("valid offer");
    let order = BuyOrder::new(org(2), 1_000, Limit::PricePer1m(u64::MAX), Some(offer))
        .expect("valid order");
    let outcome = book
        .match_order(&order, at(0, 1), &unlinked)
        .expect("matched");
    let sale = outcome.provider_sale().expect("a provider sale");
    assert_eq!((sale.quantity(), sale.cost_micro_cr()), (1_000, 2_000));
    let treasury = u64::try_from(ledger.balance(ledger.market.treasury)).expect("positive");
    assert_eq!(treasury, 300);
    let buyer = ledger.buyer(2);
    let market = ledger.market.clone();
    let mut next = ledger.next_id;
    let request = settle_order(
        &outcome,
        &buyer,
        &market,
        |o| ledger.seller_of(o),
        treasury,
        || {
            next += 1;
            TransferId::new(Uuid::from_u128(next)).expect("valid")
        },
    )
    .expect("settled");
    ledger.next_id = next;
    assert_eq!(request.len(), 3);
    ledger.commit(request);
    ledger.check_conservation();
    assert_eq!(ledger.balance(market.treasury), 0);
    assert_eq!(ledger.balance(buyer.acquired), 1_000);
    assert_eq!(ledger.balance(market.spent), 2_000);
}

#[derive(Debug, Clone)]
enum Op {
    List {
        seller: usize,
        quantity: u64,
        min: Option<u64>,
        ask: u64,
    },
    Amend {
        pick: usize,
        percent: u64,
    },
    Cancel {
        pick: usize,
    },
    Buy {
        buyer: usize,
        quantity: u64,
        price: u64,
        total: Option<u64>,
        provider: Option<u64>,
        permille: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4_usize, 1_u64..=5_000, prop::option::of(1_u64..=2_000), 1_u64..=5_000_000)
            .prop_map(|(seller, quantity, min, ask)| Op::List { seller, quantity, min: min.map(|m| m.min(quantity)), ask }),
        1 => (any::<usize>(), 1_u64..=99).prop_map(|(pick, percent)| Op::Amend { pick, percent }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        3 => (0..4_usize, 1_u64..=12_000, 0_u64..=6_000_000, prop::option::of(1_u64..=40), prop::option::of(0_u64..=2_000), 0_i64..1_000)
            .prop_map(|(buyer, quantity, price, total, provider, permille)| Op::Buy { buyer, quantity, price, total, provider, permille }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_outcome_settles_and_the_ledger_agrees_with_the_book(
        rate in 0_i64..=100_000_000,
        buyer_pays in any::<bool>(),
        linked_pair in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let payer = if buyer_pays { FeePayer::Buyer } else { FeePayer::Seller };
        let market_fee = Fee::new(Decimal::new(rate, 9), payer).expect("valid");
        let mut ledger = Ledger::new();
        let mut book = OrderBook::new(rules(linear("0.1"), market_fee));
        // Orgs 0 and 1 are admin-linked in half the runs.
        let linked = move |a: OrgId, b: OrgId| linked_pair && [a, b].iter().all(|o| *o == org(0) || *o == org(1));
        let token = ledger.token.clone();
        let mut listed: Vec<(credex_matching::ListingId, credex_matching::ListingKey, usize)> = Vec::new();
        let mut bought = [0_u64; 4];
        let mut fees = 0_u64;
        for (n, op) in ops.iter().enumerate() {
            match *op {
                Op::List { seller, quantity, min, ask } => {
                    let id = listing_id(u128::try_from(n).expect("small"));
                    let accounts = ledger.orgs[seller];
                    let list = ledger.movement(accounts.alloc, accounts.escrow, &token, quantity, TransferCode::List);
                    ledger.commit(vec![list]);
                    let seq = u64::try_from(n).expect("small");
                    let fields = credex_matching::ListingFields {
                        id,
                        seller: org(u128::try_from(seller).expect("small")),
                        quantity,
                        min_fill: min,
                        ask_per_1m_micro_cr: ask,
                        seq,
                        created_at: Timestamp::from_micros(OPEN_MICROS),
                    };
                    book.insert(credex_matching::Listing::new(fields).expect("valid")).expect("inserted");
                    listed.push((id, credex_matching::ListingKey { ask_per_1m_micro_cr: ask, seq }, seller));
                }
                Op::Amend { pick, .. } | Op::Cancel { pick } if !listed.is_empty() => {
                    let (id, listing_key, seller) = listed[pick % listed.len()];
                    let Some(current) = book.get(listing_key) else { continue };
                    let released = match *op {
                        Op::Amend { percent, .. } => {
                            let wanted = current.quantity() * percent / 100;
                            if wanted == 0 {
                                continue;
                            }
                            book.amend_down(listing_key, id, wanted).expect("amended")
                        }
                        _ => book.cancel(listing_key, id).expect("cancelled"),
                    };
                    let accounts = ledger.orgs[seller];
                    let unlist = ledger.movement(accounts.escrow, accounts.alloc, &token, released.quantity, TransferCode::Unlist);
                    ledger.commit(vec![unlist]);
                }
                Op::Amend { .. } | Op::Cancel { .. } => {}
                Op::Buy { buyer, quantity, price, total, provider, permille } => {
                    let limit = total.map_or(Limit::PricePer1m(price), Limit::MaxTotal);
                    let offer = provider.map(|available| ProviderFill::new(4_000_000, available).expect("valid"));
                    let order = BuyOrder::new(org(u128::try_from(buyer).expect("small")), quantity, limit, offer).expect("valid");
                    let at = Timestamp::from_micros(OPEN_MICROS + WINDOW_MICROS / 1_000 * permille);
                    let outcome = book.match_order(&order, at, &linked).expect("matched");
                    bought[buyer] += outcome.filled();
                    fees += outcome.fees_micro_cr();
                    let treasury = u64::try_from(ledger.balance(ledger.market.treasury)).expect("never negative");
                    let wallet_before = ledger.balance(ledger.orgs[buyer].wallet);
                    let buyer_accounts = ledger.buyer(buyer);
                    let market = ledger.market.clone();
                    let sellers = |o: OrgId| ledger.seller_of(o);
                    let mut next = ledger.next_id;
                    let request = settle_order(&outcome, &buyer_accounts, &market, sellers, treasury, || {
                        next += 1;
                        TransferId::new(Uuid::from_u128(next)).expect("valid")
                    })
                    .expect("settled");
                    ledger.next_id = next;
                    prop_assert!(request.iter().rev().skip(1).all(Transfer::linked), "one chain");
                    if !request.is_empty() {
                        prop_assert!(!request[request.len() - 1].linked());
                        ledger.commit(request);
                    }
                    // What leaves the buyer's wallet is exactly what the outcome says it pays
                    // (it also receives proceeds of nothing: it never sells to itself).
                    let paid = wallet_before - ledger.balance(ledger.orgs[buyer].wallet);
                    prop_assert_eq!(paid, i128::from(outcome.buyer_pays_micro_cr()));
                }
            }
            ledger.check_conservation();
            for (n, accounts) in ledger.orgs.iter().enumerate() {
                let seller = org(u128::try_from(n).expect("small"));
                let open: u64 = book.listings().filter(|l| l.seller() == seller).map(|l| l.quantity()).sum();
                prop_assert_eq!(ledger.balance(accounts.escrow), i128::from(open), "escrow = open listings");
                prop_assert_eq!(ledger.balance(accounts.acquired), i128::from(bought[n]), "acquired = bought");
            }
            prop_assert_eq!(ledger.balance(ledger.market.fees), i128::from(fees), "fees");
        }
    }
}
