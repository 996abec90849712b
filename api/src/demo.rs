//! `credex serve --demo`: fills an empty database with a living provider — model classes and
//! allotments, five customer orgs with owners and members, two billing cycles of usage, top-ups,
//! an open market with listings, fills and a buyback, budgets whose thresholds fired — and
//! prints how to sign in.
//!
//! Everything goes through the HTTP API, in process ([`PortalApi`]), exactly as an admin and the
//! customers' programs would send it: the demo can break no rule the API keeps. Its data is
//! deterministic (a seeded xorshift; no floating point). On a database that already holds an
//! org, it adds nothing and only prints the sign-in hint.
//!
//! The market's default minimum org age (14 days) would keep freshly made orgs from selling:
//! the demo sets the market policy's minimum age to 0 days through the admin API (an audited
//! admin action, visible in the portal) and says so.

use std::fmt;
use std::time::{Duration, Instant};

use actix_web::http::Method;
use anyhow::{anyhow, bail, Context};
use credex_ledger::Timestamp;
use serde_json::{json, Value};

use crate::config::{Config, Secret};
use crate::cycles::CycleId;
use crate::portal::api::{Call, PortalApi};
use crate::startup::Parts;
use crate::views::rfc3339;

/// The admin a demo database gets unless `CREDEX_ADMIN_EMAIL` names another.
pub const DEMO_ADMIN_EMAIL: &str = "admin@demo.credex.dev";
/// The demo admin's password unless `CREDEX_ADMIN_PASSWORD` gives another.
pub const DEMO_ADMIN_PASSWORD: &str = "demo-admin-password";
/// Every demo customer's password.
pub const DEMO_PASSWORD: &str = "demo-password-123";

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;
const CR: u64 = 1_000_000;

/// Events per usage request (the API takes up to 1,000).
const BATCH: usize = 500;

/// The configuration a demo start uses: the demo admin's e-mail and password unless
/// configured (they only take effect when the database has no admin yet).
pub fn with_demo_admin(config: &Config) -> Config {
    let mut config = config.clone();
    if config.admin_email.is_none() {
        config.admin_email = Some(DEMO_ADMIN_EMAIL.to_owned());
    }
    if config.admin_password.is_none() {
        config.admin_password = Some(Secret::new(DEMO_ADMIN_PASSWORD));
    }
    config
}

/// The portal's address for a server configured to bind `bind` and listening on `port`.
pub fn portal_url(bind: &str, port: u16) -> String {
    let host = bind.rsplit_once(':').map_or(bind, |(host, _)| host);
    let host = match host {
        "" | "0.0.0.0" => "127.0.0.1",
        "[::]" => "[::1]",
        other => other,
    };
    format!("http://{host}:{port}/portal")
}

/// What the demo did, and how to sign in.
#[derive(Debug, Clone, Default)]
pub struct DemoSummary {
    /// Whether this start filled the database (false: it held data already).
    pub filled: bool,
    pub portal_url: String,
    pub admin_email: String,
    /// The admin's password, when the demo knows it.
    pub admin_password: Option<String>,
    pub customers: Vec<String>,
    pub orgs: usize,
    pub users: usize,
    pub usage_events: usize,
    pub listings: usize,
    pub fills: usize,
    pub buybacks: usize,
    pub budgets: usize,
    pub alerts: usize,
    pub cycles: Vec<String>,
    pub elapsed: Duration,
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        writeln!(f, "================ Credex demo ================")?;
        if self.filled {
            writeln!(
                f,
                "Filled in {} ms: {} orgs, {} users, {} usage events over cycles {}, \
                 {} listings, {} fills, {} buyback(s), {} budgets, {} budget alerts.",
                self.elapsed.as_millis(),
                self.orgs,
                self.users,
                self.usage_events,
                self.cycles.join(" and "),
                self.listings,
                self.fills,
                self.buybacks,
                self.budgets,
                self.alerts,
            )?;
            writeln!(
                f,
                "The market policy's minimum org age was set to 0 days (default 14) so the new \
                 demo orgs may sell; the listing window of this cycle is open now."
            )?;
        } else {
            writeln!(
                f,
                "The database already holds data: the demo added nothing. If --demo filled it \
                 earlier, these sign-ins work:"
            )?;
        }
        writeln!(f, "Portal:    {}", self.portal_url)?;
        match &self.admin_password {
            Some(password) => writeln!(f, "Admin:     {}  /  {password}", self.admin_email)?,
            None => writeln!(
                f,
                "Admin:     {}  (the password configured in CREDEX_ADMIN_PASSWORD)",
                self.admin_email
            )?,
        }
        for email in &self.customers {
            writeln!(f, "Customer:  {email}  /  {DEMO_PASSWORD}")?;
        }
        write!(f, "=============================================")
    }
}

/// Fills the database behind `parts` unless it holds an org already, on a thread of its own
/// (the in-process API is single-threaded, like an actix worker's), and prints the summary.
pub async fn run(parts: &Parts, config: &Config, portal_url: &str) -> anyhow::Result<DemoSummary> {
    let parts = parts.clone();
    let config = config.clone();
    let url = portal_url.to_owned();
    // On a blocking thread of this runtime, so the database connections the demo opens stay
    // with the runtime that serves (a runtime of its own would take them down when it ends).
    let summary = tokio::task::spawn_blocking(move || {
        let local = tokio::task::LocalSet::new();
        tokio::runtime::Handle::current()
            .block_on(local.run_until(Box::pin(fill(&parts, &config, &url))))
    })
    .await
    .map_err(|error| anyhow!("the demo failed: {error}"))??;
    println!("{summary}");
    Ok(summary)
}

/// Fills an empty database through the API; on one that holds an org, only answers the
/// sign-in hint.
pub async fn fill(parts: &Parts, config: &Config, portal_url: &str) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let admin_email = config
        .admin_email
        .clone()
        .unwrap_or_else(|| DEMO_ADMIN_EMAIL.to_owned());
    let admin_password = config
        .admin_password
        .as_ref()
        .map(|secret| secret.expose().to_owned());
    let mut summary = DemoSummary {
        portal_url: portal_url.to_owned(),
        admin_email: admin_email.clone(),
        admin_password: if admin_password.as_deref() == Some(DEMO_ADMIN_PASSWORD) {
            admin_password.clone()
        } else {
            None
        },
        customers: ORGS
            .iter()
            .take(2)
            .map(|org| format!("owner@{}.example", org.slug))
            .collect(),
        ..DemoSummary::default()
    };
    let store = parts.state.ledger.store().clone();
    let some_org = store
        .orgs_to_allot("demo-probe", Timestamp::MAX, None, 1)
        .await
        .context("demo: look for an existing org")?;
    if !some_org.is_empty() {
        tracing::info!("demo: the database holds orgs already; adding nothing");
        return Ok(summary);
    }
    let Some(password) = admin_password else {
        bail!("demo: the admin's password is not known (set CREDEX_ADMIN_PASSWORD)");
    };
    let now = store.clock().now();
    let mut demo = Demo::new(parts.clone(), now);
    demo.run(&admin_email, &password, &mut summary).await?;
    summary.filled = true;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// A demo customer.
struct OrgSpec {
    name: &'static str,
    slug: &'static str,
    plan: &'static str,
    verification: u8,
    members: &'static [&'static str],
    tasks: &'static [&'static str],
    /// Current-cycle events per day so far.
    per_day: u64,
    /// Percent of calls to std / pro models (the rest: max).
    std_percent: u64,
    pro_percent: u64,
    /// µCR topped up.
    top_up: u64,
}

const ORGS: [OrgSpec; 5] = [
    OrgSpec {
        name: "Acme Robotics",
        slug: "acme",
        plan: "enterprise",
        verification: 2,
        members: &["ada", "grace"],
        tasks: &["motion-planning", "support-bot", "code-review"],
        per_day: 30,
        std_percent: 60,
        pro_percent: 32,
        top_up: 2_000 * CR,
    },
    OrgSpec {
        name: "Globex Analytics",
        slug: "globex",
        plan: "teams",
        verification: 2,
        members: &["hank"],
        tasks: &["report-writer", "sql-assistant"],
        per_day: 26,
        std_percent: 45,
        pro_percent: 45,
        top_up: 500 * CR,
    },
    OrgSpec {
        name: "Initech Labs",
        slug: "initech",
        plan: "teams",
        verification: 2,
        members: &["peter", "milton"],
        tasks: &["tps-reports", "ticket-summaries"],
        per_day: 14,
        std_percent: 80,
        pro_percent: 18,
        top_up: 400 * CR,
    },
    OrgSpec {
        name: "Umbrella Health",
        slug: "umbrella",
        plan: "enterprise",
        verification: 3,
        members: &["alice"],
        tasks: &["triage-notes", "literature-search", "coding-assist"],
        per_day: 22,
        std_percent: 50,
        pro_percent: 40,
        top_up: 1_500 * CR,
    },
    OrgSpec {
        name: "Hooli Search",
        slug: "hooli",
        plan: "teams",
        verification: 1,
        members: &["gavin", "denpok"],
        tasks: &["query-rewrite", "ranking-eval"],
        per_day: 28,
        std_percent: 40,
        pro_percent: 48,
        top_up: 600 * CR,
    },
];

/// Models priced since 2025 (usable in any cycle from then on), by class.
const STD_MODELS: [&str; 5] = [
    "gpt-5-mini",
    "gpt-4.1-mini",
    "gpt-4o-mini",
    "claude-haiku-4-5",
    "gpt-5-nano",
];
const PRO_MODELS: [&str; 4] = ["gpt-5", "gpt-4.1", "claude-sonnet-4-5", "gpt-5.1"];
const MAX_MODELS: [&str; 1] = ["o3-pro"];
/// Models priced from 2026-11-01, used for calls from then on.
const NEW_STD_MODELS: [&str; 3] = ["gemini-2.5-flash", "deepseek-v3.2", "claude-haiku-5-5"];
const NEW_PRO_MODELS: [&str; 3] = ["claude-sonnet-5", "gpt-6-sol", "gemini-2.5-pro"];
const NEW_MODELS_FROM: &str = "2026-11-01";

/// The two call shapes of today's traffic, whose costs the demo learns from one call each
/// before it sets budgets (a budget counts the charges made after it was set).
const SHAPE_EVAL: (&str, u64, u64) = ("gpt-5.1", 8_000, 1_500);
const SHAPE_CHAT: (&str, u64, u64) = ("claude-sonnet-4-5", 3_000, 600);
const EVAL_TASK: &str = "nightly-eval";

/// A seeded xorshift64: the demo's data is the same on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let len = u64::try_from(items.len()).unwrap_or(1).max(1);
        let index = usize::try_from(self.next() % len).unwrap_or(0);
        &items[index]
    }

    fn uuid(&mut self) -> uuid::Uuid {
        let mut bytes = [0_u8; 16];
        bytes[..8].copy_from_slice(&self.next().to_be_bytes());
        bytes[8..].copy_from_slice(&self.next().to_be_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// One org as made.
struct OrgMade {
    spec: &'static OrgSpec,
    id: String,
    owner_token: String,
    /// User ids: the owner first.
    users: Vec<String>,
    api_key: String,
}

struct Demo {
    api: PortalApi,
    now: Timestamp,
    rng: Rng,
    admin: String,
    keys: u64,
}

fn micros(at: Timestamp) -> i64 {
    at.as_micros()
}

impl Demo {
    fn new(parts: Parts, now: Timestamp) -> Self {
        Self {
            api: PortalApi::new(parts),
            now,
            rng: Rng::new(0x00C0_FFEE_D15E_A5E5),
            admin: String::new(),
            keys: 0,
        }
    }

    /// Sends `call`; a non-2xx answer is an error naming `step` and the API's problem.
    async fn send(&self, step: &str, call: Call<'_>) -> anyhow::Result<Value> {
        let answer = self
            .api
            .call(call)
            .await
            .map_err(|problem| anyhow!("demo: {step}: {problem}"))?;
        if !answer.is_success() {
            bail!(
                "demo: {step}: HTTP {}: {}",
                answer.status.as_u16(),
                answer.problem()
            );
        }
        if answer.body.is_empty() {
            return Ok(Value::Null);
        }
        answer
            .json::<Value>()
            .map_err(|problem| anyhow!("demo: {step}: {problem}"))
    }

    async fn admin_send(
        &self,
        step: &str,
        method: Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let call = Call::send(method, path, body).token(&self.admin);
        self.send(step, call).await
    }

    fn key(&mut self, what: &str) -> String {
        self.keys += 1;
        format!("demo-{what}-{}", self.keys)
    }

    async fn login(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let pair = self
            .send(
                &format!("sign in as {email}"),
                Call::send(
                    Method::POST,
                    "/v1/auth/login",
                    &json!({ "email": email, "password": password }),
                ),
            )
            .await?;
        text(&pair, "access_token")
    }

    async fn run(
        &mut self,
        admin_email: &str,
        admin_password: &str,
        summary: &mut DemoSummary,
    ) -> anyhow::Result<()> {
        self.admin = self.login(admin_email, admin_password).await?;
        self.catalog().await?;
        self.policy().await?;
        let cycle = CycleId::of(self.now);
        let previous = CycleId::of(cycle.starts_at().plus_micros(-1));
        summary.cycles = vec![previous.to_string(), cycle.to_string()];

        let mut orgs = Vec::new();
        for spec in &ORGS {
            orgs.push(self.org(spec, summary).await?);
        }
        summary.orgs = orgs.len();

        let opened = self
            .admin_send(
                &format!("open the cycle {cycle}"),
                Method::POST,
                &format!("/v1/admin/cycles/{cycle}/open"),
                &json!({}),
            )
            .await?;
        tracing::info!(report = %opened, "demo: cycle opened");

        // Last cycle's calls: before these orgs had allotments, so paid from the wallet.
        for (index, org) in orgs.iter().enumerate() {
            let from = previous.starts_at();
            let to = previous.ends_at().plus_micros(-MICROS_PER_MINUTE);
            let count = org.spec.per_day * 30 / 2;
            let events = self.events(org, index, count, from, to);
            summary.usage_events += self.record(org, &events).await?.len();
        }

        // This cycle so far, up to a few hours ago; then one call of each of today's shapes.
        let start = cycle.starts_at();
        let span = (micros(self.now) - micros(start) - 5 * MICROS_PER_MINUTE).max(MICROS_PER_HOUR);
        let cutoff = start.plus_micros(span * 9 / 10);
        let days = u64::try_from(span / MICROS_PER_DAY).unwrap_or(0).max(1);
        let mut shape_costs = Vec::new();
        for (index, org) in orgs.iter().enumerate() {
            let count = (org.spec.per_day * days).max(60);
            let mut events = self.events(org, index + 10, count, start, cutoff);
            let eval = self.shaped(org, SHAPE_EVAL, Some(EVAL_TASK), cutoff);
            let chat = self.shaped(org, SHAPE_CHAT, None, cutoff);
            let (eval_id, chat_id) = (eval["id"].clone(), chat["id"].clone());
            events.push(eval);
            events.push(chat);
            let recorded = self.record(org, &events).await?;
            summary.usage_events += recorded.len();
            let cost_of = |id: &Value| {
                recorded
                    .iter()
                    .find(|event| &event["id"] == id)
                    .and_then(|event| event["cost_micro_cr"].as_u64())
                    .ok_or_else(|| anyhow!("demo: the answer lacks the cost of event {id}"))
            };
            shape_costs.push((cost_of(&eval_id)?, cost_of(&chat_id)?));
        }

        self.market(&orgs, cycle, summary).await?;

        // Budgets set now, then today's traffic: costs known, so the thresholds that fire are
        // known too.
        for (index, org) in orgs.iter().enumerate() {
            let (eval_cost, chat_cost) = shape_costs[index];
            let evals = 20 + u64::try_from(index).unwrap_or(0);
            let chats = 80 + 10 * u64::try_from(index).unwrap_or(0);
            let total = evals * eval_cost + chats * chat_cost;
            // Org-wide: the first two orgs reach 92% (75 and 90 fire), the others 80%.
            let reach = if index < 2 { 92 } else { 80 };
            let org_limit = (total * 100).div_ceil(reach);
            let task_limit = (evals * eval_cost * 100).div_ceil(78);
            let owner = &org.owner_token;
            let budgets = format!("/v1/orgs/{}/budgets", org.id);
            // Teams budgets: monthly or per cycle, two thresholds at most, no per-user ones.
            let enterprise = org.spec.plan == "enterprise";
            let (org_thresholds, task_thresholds) = if enterprise {
                (json!([75, 90, 100]), json!([50, 75, 90]))
            } else {
                (json!([75, 90]), json!([50, 75]))
            };
            let third = if enterprise {
                json!({
                    "name": "Owner's daily spend",
                    "scope": { "kind": "user", "user_id": org.users[0] },
                    "period": "day",
                    "limit_micro_cr": 50 * CR,
                    "time_zone": "Europe/Berlin",
                })
            } else {
                json!({
                    "name": "Production backend key",
                    "scope": { "kind": "api_key", "api_key_id": org.api_key },
                    "period": "month",
                    "limit_micro_cr": 300 * CR,
                    "thresholds": [80, 100],
                })
            };
            for body in [
                json!({
                    "name": "Org spend this cycle",
                    "scope": { "kind": "org" },
                    "period": "cycle",
                    "limit_micro_cr": org_limit,
                    "thresholds": org_thresholds,
                }),
                json!({
                    "name": "Nightly evaluation (hard cap)",
                    "scope": { "kind": "task", "task": EVAL_TASK },
                    "period": "cycle",
                    "limit_micro_cr": task_limit,
                    "hard": true,
                    "thresholds": task_thresholds,
                }),
                third,
            ] {
                let call = Call::send(Method::POST, &budgets, &body).token(owner);
                self.send(&format!("create a budget for {}", org.spec.name), call)
                    .await?;
                summary.budgets += 1;
            }
            let mut today = Vec::new();
            let from = cutoff.plus_micros(MICROS_PER_MINUTE);
            let to = self.now.plus_micros(-MICROS_PER_MINUTE);
            let step = ((micros(to) - micros(from)) / 100).max(1);
            for n in 0..(evals + chats) {
                let offset = i64::try_from(n).unwrap_or(0) * step;
                let at = from.plus_micros(offset.min(micros(to) - micros(from)));
                let event = if n < evals {
                    self.shaped(org, SHAPE_EVAL, Some(EVAL_TASK), at)
                } else {
                    self.shaped(org, SHAPE_CHAT, None, at)
                };
                today.push(event);
            }
            summary.usage_events += self.record(org, &today).await?.len();
            let alerts = self
                .send(
                    &format!("read {}'s budget alerts", org.spec.name),
                    Call::get(&format!("/v1/orgs/{}/budget-alerts", org.id)).token(owner),
                )
                .await?;
            summary.alerts += items(&alerts).len();
        }
        Ok(())
    }

    /// Classes, allotments, and a look at the price catalog.
    async fn catalog(&mut self) -> anyhow::Result<()> {
        for (class, face, description) in [
            ("std", 400_000_u64, "Small and fast models"),
            ("pro", 4_000_000, "Large general models"),
            ("max", 20_000_000, "Frontier and reasoning models"),
        ] {
            self.admin_send(
                &format!("create the model class {class}"),
                Method::PUT,
                &format!("/v1/admin/classes/{class}"),
                &json!({ "face_value_per_1m_micro_cr": face, "description": description }),
            )
            .await?;
        }
        for (plan, class, tokens) in [
            ("free", "std", 2_000_000_u64),
            ("teams", "std", 20_000_000),
            ("teams", "pro", 3_000_000),
            ("teams", "max", 250_000),
            ("enterprise", "std", 100_000_000),
            ("enterprise", "pro", 20_000_000),
            ("enterprise", "max", 3_000_000),
        ] {
            self.admin_send(
                &format!("set the {plan} plan's allotment of {class}"),
                Method::PUT,
                &format!("/v1/admin/plans/{plan}/allotments/{class}"),
                &json!({ "tokens_per_cycle": tokens }),
            )
            .await?;
        }
        let page = self
            .send(
                "list the price catalog",
                Call::get("/v1/models?limit=1000").token(&self.admin),
            )
            .await?;
        let count = page["models"].as_array().map_or(0, Vec::len);
        tracing::info!(models = count, "demo: the price catalog");
        if count < 50 {
            bail!("demo: the price catalog holds {count} models, fewer than the 50 built in");
        }
        Ok(())
    }

    /// The market policy, with the minimum org age lifted so new demo orgs may sell.
    async fn policy(&self) -> anyhow::Result<()> {
        let policy = self
            .send(
                "read the market policy",
                Call::get("/v1/admin/market-policy").token(&self.admin),
            )
            .await?;
        self.admin_send(
            "set the market policy's minimum org age to 0 days",
            Method::PUT,
            "/v1/admin/market-policy",
            &json!({
                "min_verification_level": policy["min_verification_level"],
                "min_org_age_days": 0,
                "paid_plan_required": policy["paid_plan_required"],
                "sell_cap_basis_points": policy["sell_cap_basis_points"],
            }),
        )
        .await?;
        Ok(())
    }

    /// An org: created, verified, topped up, with its owner, members and an API key.
    async fn org(
        &mut self,
        spec: &'static OrgSpec,
        summary: &mut DemoSummary,
    ) -> anyhow::Result<OrgMade> {
        let org = self
            .admin_send(
                &format!("create the org {}", spec.name),
                Method::POST,
                "/v1/admin/orgs",
                &json!({ "name": spec.name, "plan": spec.plan }),
            )
            .await?;
        let id = text(&org, "id")?;
        self.admin_send(
            &format!("verify {}", spec.name),
            Method::PATCH,
            &format!("/v1/admin/orgs/{id}"),
            &json!({ "verification_level": spec.verification }),
        )
        .await?;
        let owner_email = format!("owner@{}.example", spec.slug);
        let owner = self
            .admin_send(
                &format!("create the user {owner_email}"),
                Method::POST,
                "/v1/admin/users",
                &json!({
                    "email": owner_email,
                    "password": DEMO_PASSWORD,
                    "org_id": id,
                    "role": "owner",
                }),
            )
            .await?;
        let mut users = vec![text(&owner, "id")?];
        summary.users += 1;
        let owner_token = self.login(&owner_email, DEMO_PASSWORD).await?;
        for member in spec.members {
            let email = format!("{member}@{}.example", spec.slug);
            let user = self
                .admin_send(
                    &format!("create the user {email}"),
                    Method::POST,
                    "/v1/admin/users",
                    &json!({ "email": email, "password": DEMO_PASSWORD }),
                )
                .await?;
            users.push(text(&user, "id")?);
            summary.users += 1;
            let path = format!("/v1/orgs/{id}/members");
            let call = Call::send(
                Method::POST,
                &path,
                &json!({ "email": email, "role": "member" }),
            )
            .token(&owner_token);
            self.send(&format!("add {email} to {}", spec.name), call)
                .await?;
        }
        let key = self.key("top-up");
        let credits = format!("/v1/admin/orgs/{id}/credits");
        let call = Call::send(
            Method::POST,
            &credits,
            &json!({
                "kind": "top_up",
                "amount_micro_cr": spec.top_up,
                "reason": format!("invoice DEMO-{}-001", spec.slug.to_uppercase()),
            }),
        )
        .token(&self.admin)
        .idempotent(key);
        self.send(&format!("top up {}", spec.name), call).await?;
        let key = self.key("grant");
        let call = Call::send(
            Method::POST,
            &credits,
            &json!({ "kind": "grant", "amount_micro_cr": 25 * CR, "reason": "welcome credits" }),
        )
        .token(&self.admin)
        .idempotent(key);
        self.send(&format!("grant {} welcome credits", spec.name), call)
            .await?;
        let path = format!("/v1/orgs/{id}/api-keys");
        let call = Call::send(
            Method::POST,
            &path,
            &json!({ "name": "production backend", "scopes": ["read", "usage:write"] }),
        )
        .token(&owner_token);
        let created = self
            .send(&format!("create an API key for {}", spec.name), call)
            .await?;
        let api_key = text(&created["api_key"], "id")?;
        Ok(OrgMade {
            spec,
            id,
            owner_token,
            users,
            api_key,
        })
    }

    /// `count` calls of `org` spread over `from..to`, in time order.
    fn events(
        &mut self,
        org: &OrgMade,
        stream: usize,
        count: u64,
        from: Timestamp,
        to: Timestamp,
    ) -> Vec<Value> {
        let span = u64::try_from((micros(to) - micros(from)).max(1)).unwrap_or(1);
        let new_from = credex_pricing::date::parse_date(NEW_MODELS_FROM).unwrap_or(Timestamp::MAX);
        let mut offsets: Vec<u64> = (0..count).map(|_| self.rng.next() % span).collect();
        offsets.sort_unstable();
        let conversations = 12 + u64::try_from(stream).unwrap_or(0) % 7;
        offsets
            .into_iter()
            .map(|offset| {
                let at = from.plus_micros(i64::try_from(offset).unwrap_or(0));
                let roll = self.rng.between(0, 99);
                let new = at >= new_from && self.rng.between(0, 1) == 0;
                let (model, input, output) = if roll < org.spec.std_percent {
                    let model = if new {
                        *self.rng.pick(&NEW_STD_MODELS)
                    } else {
                        *self.rng.pick(&STD_MODELS)
                    };
                    (
                        model,
                        self.rng.between(300, 9_000),
                        self.rng.between(50, 1_500),
                    )
                } else if roll < org.spec.std_percent + org.spec.pro_percent {
                    let model = if new {
                        *self.rng.pick(&NEW_PRO_MODELS)
                    } else {
                        *self.rng.pick(&PRO_MODELS)
                    };
                    (
                        model,
                        self.rng.between(500, 9_000),
                        self.rng.between(100, 2_000),
                    )
                } else {
                    (
                        *self.rng.pick(&MAX_MODELS),
                        self.rng.between(1_000, 6_000),
                        self.rng.between(200, 3_000),
                    )
                };
                let cached = if self.rng.between(0, 2) == 0 {
                    self.rng.between(0, input / 2)
                } else {
                    0
                };
                let user = self.rng.pick(&org.users).clone();
                let task = *self.rng.pick(org.spec.tasks);
                let conversation = self.rng.between(1, conversations);
                let mut event = json!({
                    "id": self.rng.uuid().to_string(),
                    "model": model,
                    "input_tokens": input,
                    "cached_input_tokens": cached,
                    "output_tokens": output,
                    "at": rfc3339(at),
                    "user_id": user,
                    "task": task,
                    "conversation": format!("{task}-{conversation:03}"),
                    "metadata": { "env": "production", "region": "eu-west-1" },
                });
                if self.rng.between(0, 1) == 0 {
                    event["api_key_id"] = json!(org.api_key);
                }
                event
            })
            .collect()
    }

    /// One call of a fixed shape (its cost is the same every time).
    fn shaped(
        &mut self,
        org: &OrgMade,
        (model, input, output): (&str, u64, u64),
        task: Option<&str>,
        at: Timestamp,
    ) -> Value {
        let user = self.rng.pick(&org.users).clone();
        let conversation = self.rng.between(1, 20);
        let task = task.unwrap_or("chat-assistant");
        json!({
            "id": self.rng.uuid().to_string(),
            "model": model,
            "input_tokens": input,
            "output_tokens": output,
            "at": rfc3339(at),
            "user_id": user,
            "task": task,
            "conversation": format!("{task}-{conversation:03}"),
        })
    }

    /// Records `events` in batches; answers the recorded events.
    async fn record(&self, org: &OrgMade, events: &[Value]) -> anyhow::Result<Vec<Value>> {
        let mut recorded = Vec::with_capacity(events.len());
        let path = format!("/v1/orgs/{}/usage", org.id);
        for batch in events.chunks(BATCH) {
            let call = Call::send(Method::POST, &path, &json!({ "events": batch }))
                .token(&org.owner_token);
            let answer = self
                .send(&format!("record usage of {}", org.spec.name), call)
                .await?;
            recorded.extend(items(&answer["events"]).iter().cloned());
        }
        Ok(recorded)
    }

    /// The cycle's markets opened now; listings, fills and buybacks.
    async fn market(
        &mut self,
        orgs: &[OrgMade],
        cycle: CycleId,
        summary: &mut DemoSummary,
    ) -> anyhow::Result<()> {
        let start = micros(cycle.starts_at());
        let default_open = micros(cycle.ends_at()) - 7 * MICROS_PER_DAY;
        let opens = default_open
            .min(micros(self.now) - 2 * MICROS_PER_HOUR)
            .max(start);
        let opens = Timestamp::from_micros(opens);
        for class in ["std", "pro", "max"] {
            let asset = format!("TOK.{class}.{cycle}");
            self.admin_send(
                &format!("open the listing window of {asset}"),
                Method::PATCH,
                &format!("/v1/admin/markets/{asset}"),
                &json!({ "window_opens_at": rfc3339(opens), "provider_fill": true }),
            )
            .await?;
        }
        let asset = |class: &str| format!("TOK.{class}.{cycle}");
        // (seller, class, quantity, ask per 1M µCR, min fill)
        let listings: [(usize, &str, u64, u64, Option<u64>); 5] = [
            (0, "std", 8_000_000, 360_000, None),
            (0, "std", 4_000_000, 385_000, Some(1_000_000)),
            (2, "std", 2_000_000, 340_000, None),
            (3, "pro", 1_500_000, 3_600_000, None),
            (3, "max", 200_000, 18_500_000, None),
        ];
        for (seller, class, quantity, ask, min_fill) in listings {
            let org = &orgs[seller];
            let mut body = json!({
                "asset": asset(class),
                "quantity": quantity,
                "ask_per_1m_micro_cr": ask,
            });
            if let Some(min_fill) = min_fill {
                body["min_fill"] = json!(min_fill);
            }
            let key = self.key("listing");
            let path = format!("/v1/orgs/{}/listings", org.id);
            let call = Call::send(Method::POST, &path, &body)
                .token(&org.owner_token)
                .idempotent(key);
            self.send(&format!("list {class} tokens of {}", org.spec.name), call)
                .await?;
            summary.listings += 1;
        }
        // (buyer, class, quantity)
        let orders: [(usize, &str, u64); 4] = [
            (1, "std", 3_000_000),
            (4, "pro", 600_000),
            (4, "std", 1_500_000),
            (1, "max", 50_000),
        ];
        for (buyer, class, quantity) in orders {
            let org = &orgs[buyer];
            let key = self.key("order");
            let path = format!("/v1/orgs/{}/orders", org.id);
            let call = Call::send(
                Method::POST,
                &path,
                &json!({ "asset": asset(class), "quantity": quantity }),
            )
            .token(&org.owner_token)
            .idempotent(key);
            let order = self
                .send(&format!("buy {class} tokens for {}", org.spec.name), call)
                .await?;
            summary.fills += items(&order["fills"]).len();
        }
        for (seller, class, quantity) in [(2_usize, "std", 1_000_000_u64), (3, "pro", 300_000)] {
            let org = &orgs[seller];
            let key = self.key("buyback");
            let path = format!("/v1/orgs/{}/buybacks", org.id);
            let call = Call::send(
                Method::POST,
                &path,
                &json!({ "asset": asset(class), "quantity": quantity }),
            )
            .token(&org.owner_token)
            .idempotent(key);
            self.send(
                &format!("sell {class} tokens of {} back", org.spec.name),
                call,
            )
            .await?;
            summary.buybacks += 1;
        }
        Ok(())
    }
}

fn text(value: &Value, field: &str) -> anyhow::Result<String> {
    value[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("demo: the API's answer lacks `{field}`: {value}"))
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}
