//! A usage world for the usage and reservation tests: class `pro`, the built-in catalog, teams
//! orgs with credits, the November cycle open, and a clock the test moves.

use std::sync::Arc;

use credex_api::budgets::{Budget, NewBudget, Period, Scope};
use credex_api::catalog::seed_builtin;
use credex_api::cycles::{open_cycle, CycleId};
use credex_api::usage::{RecordedUsage, Usage, UsageError, UsageEvent};
use credex_ledger::{AccountKind, AssetCode, ManualClock, OrgId, Owner, Timestamp};
use credex_pricing::{CrFaceValue, TokenUsage};
use credex_store::{Allotment, ClassRecord, Ledger, OrgName, Plan, Store, VerificationLevel};
use credex_tests::{audit, top_up, TestDb};
use rust_decimal::Decimal;
use uuid::Uuid;

/// A `pro` model: $2 per 1M input tokens, $10 per 1M output, from 2026-11-01.
pub const MODEL: &str = "gpt-6-sol";
/// Tokens of `pro` a teams org gets per cycle.
pub const ALLOT: u64 = 2_000_000;
/// Every org's credits: 10 CR.
pub const CREDITS: u64 = 10_000_000;
pub const DAY: i64 = 86_400_000_000;

pub struct World {
    pub ledger: Arc<Ledger>,
    pub clock: Arc<ManualClock>,
    pub usage: Usage,
    pub asset: AssetCode,
    pub orgs: Vec<OrgId>,
}

pub fn face() -> CrFaceValue {
    CrFaceValue::new(Decimal::ONE).expect("a face value")
}

/// Class `pro` (teams: 2M tokens per cycle), the built-in catalog, teams orgs with 10 CR each,
/// the November cycle opened, and the clock on 25 November (inside its market's window).
pub async fn world(db: &TestDb, orgs: usize) -> World {
    let cycle = CycleId::parse("2026-11").expect("a cycle");
    let start = cycle.starts_at();
    let clock = Arc::new(ManualClock::new(start));
    let ledger = Arc::new(db.ledger(clock.clone()).await);
    let store = ledger.store().clone();
    seed_builtin(store.as_ref()).await.expect("the catalog");
    let class = ClassRecord {
        class: "pro".to_owned(),
        face_value_per_1m_micro_cr: 4_000_000,
        description: "pro models".to_owned(),
        created_at: start,
        updated_at: start,
    };
    store
        .put_class(&class, &audit("classes.put"))
        .await
        .expect("a class");
    let allotment = Allotment {
        plan: Plan::Teams,
        tokens_per_cycle: ALLOT,
    };
    store
        .put_allotment("pro", allotment, start, &audit("allotments.put"))
        .await
        .expect("an allotment");
    let mut ids = Vec::new();
    for i in 0..orgs {
        let name = OrgName::parse(&format!("Org {i}")).expect("a name");
        let org = store
            .create_org(&name, Plan::Teams, start.plus_micros(-30 * DAY))
            .await
            .expect("an org")
            .id;
        let level = VerificationLevel::new(1).expect("a level");
        store.set_verification(org, level).await.expect("verify");
        ids.push(org);
    }
    open_cycle(&ledger, cycle, start).await.expect("open");
    for org in &ids {
        top_up(&ledger, *org, CREDITS).await;
    }
    clock.set(start.plus_micros(24 * DAY));
    World {
        usage: Usage::new(ledger.clone(), face()),
        ledger,
        clock,
        asset: cycle.asset("pro").expect("an asset"),
        orgs: ids,
    }
}

impl World {
    pub fn store(&self) -> &Arc<dyn Store> {
        self.ledger.store()
    }

    pub async fn net(&self, asset: &AssetCode, owner: Owner, kind: AccountKind) -> i128 {
        self.store()
            .find_account(asset, owner, kind)
            .await
            .expect("find")
            .map_or(0, |view| view.balance.net_posted())
    }

    /// (acquired, alloc, wallet) of an org.
    pub async fn balances(&self, org: OrgId) -> (i128, i128, i128) {
        (
            self.net(&self.asset, Owner::Org(org), AccountKind::Acquired)
                .await,
            self.net(&self.asset, Owner::Org(org), AccountKind::Alloc)
                .await,
            self.net(&AssetCode::credit(), Owner::Org(org), AccountKind::Wallet)
                .await,
        )
    }

    pub fn now(&self) -> Timestamp {
        credex_ledger::Clock::now(self.clock.as_ref())
    }

    pub async fn record(
        &self,
        org: OrgId,
        events: Vec<UsageEvent>,
    ) -> Result<Vec<RecordedUsage>, UsageError> {
        self.usage.record(org, events).await
    }

    pub async fn recorded(&self, org: OrgId) -> usize {
        self.store()
            .usage_events(
                org,
                Timestamp::EPOCH,
                Timestamp::from_micros(i64::MAX),
                None,
                1_000,
            )
            .await
            .expect("events")
            .len()
    }
}

pub fn event(input: u64, output: u64, at: Timestamp) -> UsageEvent {
    UsageEvent {
        id: Uuid::new_v4(),
        model: MODEL.to_owned(),
        tokens: TokenUsage::new(input, 0, 0, output).expect("tokens"),
        at,
        at_given: true,
        user: None,
        api_key: None,
        task: Some("summaries".to_owned()),
        conversation: None,
        metadata: Some(r#"{"team":"research"}"#.to_owned()),
    }
}

pub async fn add_budget(w: &World, org: OrgId, new: NewBudget) -> Budget {
    let budget = Budget::new(Uuid::now_v7(), org, new, w.now()).expect("a budget");
    w.store()
        .put_budget(&budget.record(), &audit("budgets.create"))
        .await
        .expect("stored");
    budget
}

pub fn budget(name: &str, scope: Scope, limit_micro_cr: u64, hard: bool) -> NewBudget {
    NewBudget {
        name: name.to_owned(),
        scope,
        period: Period::Month,
        time_zone: "Europe/Paris".to_owned(),
        limit_micro_cr,
        thresholds: vec![75, 90, 100],
        hard,
    }
}
