//! How long the portal's pages take on the server, on a database with a year of usage.
//!
//! Per backend, on a fresh database: one org on the teams plan, a year of usage by 100 users
//! (`--events-per-user-day` calls per user per day over the last 365 days, five models, tasks
//! and conversations; recorded through [`crate::usage::Usage::record`], so charged like any
//! other usage), a model class with its plan allotment, the current cycle opened and its market. Then the server starts, the benchmark's
//! admin signs in (admins see every org's pages), and every portal page is fetched
//! `--requests` times, one request at a time over one keep-alive connection after a few
//! uncounted ones, 10 ms apart (a page is several API calls by one user, and users are limited
//! to 1,000 calls a second); each page's p50, p99 and max are reported. Every answer must be `200 OK`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use credex_ledger::{AssetCode, OrgId, Timestamp};
use credex_pricing::TokenUsage;
use credex_store::{Allotment, AuditAction, AuditEntry, ClassRecord, Plan, SystemClock};
use uuid::Uuid;

use super::http::Connection;
use super::{millis, ADMIN_EMAIL, ADMIN_PASSWORD};
use crate::cycles::{open_cycle, CycleId};
use crate::startup::{assemble, Assembled};
use crate::usage::UsageEvent;
use crate::{Application, Config};

/// Options of `credex bench portal`.
#[derive(Debug, Clone, Args)]
pub struct PortalBenchArgs {
    /// Requests per page (after 5 uncounted ones).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Users whose usage fills the year.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Calls per user per day.
    #[arg(long, default_value_t = 8)]
    pub events_per_user_day: usize,
    /// Also measure on PostgreSQL: a server URL where the benchmark creates (and then drops)
    /// its own database.
    #[arg(long, hide_env_values = true)]
    pub postgres: Option<String>,
}

/// One page's latencies.
#[derive(Debug, Clone)]
pub struct PageMeasurement {
    pub backend: &'static str,
    pub page: String,
    pub requests: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

const TABLE_HEAD: &str =
    "| backend | page | events in the database | requests | p50 ms | p99 ms | max ms |";

/// Models priced for the whole past year in the bundled catalog.
const MODELS: [&str; 5] = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "o3"];
const ORG_CREDITS_MICRO_CR: u64 = 1_000_000_000_000_000;
const DAY_MICROS: i64 = 86_400_000_000;
/// The pause after each page request (not counted).
const PACE: Duration = Duration::from_millis(10);

pub async fn run(args: &PortalBenchArgs) -> anyhow::Result<Vec<Vec<PageMeasurement>>> {
    if args.requests == 0 || args.users == 0 || args.events_per_user_day == 0 {
        bail!("--requests, --users and --events-per-user-day must be positive");
    }
    super::on_fresh_databases(args.postgres.as_deref(), TABLE_HEAD, args, measure_backend).await
}

/// A small deterministic generator (xorshift64*): the same year of usage every run.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the pages are measured on.
struct Prepared {
    org: OrgId,
    events: u64,
    /// The current cycle's market of the `std` class.
    asset: AssetCode,
}

fn audit(now: Timestamp, action: &str) -> anyhow::Result<AuditEntry> {
    let action = AuditAction::parse(action).map_err(|error| anyhow::anyhow!("{error}"))?;
    AuditEntry::new(now, action, "bench portal", serde_json::json!({}))
        .map_err(|error| anyhow::anyhow!("{error}"))
}

async fn set_up(config: &Config, args: &PortalBenchArgs) -> anyhow::Result<Prepared> {
    let Assembled {
        parts,
        store,
        ledger,
        market,
        ..
    } = assemble(config, Arc::new(SystemClock)).await?;
    let set_up = async {
        let now = store.clock().now();
        let class = ClassRecord {
            class: "std".to_owned(),
            face_value_per_1m_micro_cr: 500_000,
            description: "small models".to_owned(),
            created_at: now,
            updated_at: now,
        };
        store.put_class(&class, &audit(now, "classes.put")?).await?;
        let allotment = Allotment {
            plan: Plan::Teams,
            tokens_per_cycle: 50_000_000,
        };
        store
            .put_allotment("std", allotment, now, &audit(now, "allotments.put")?)
            .await?;
        let allotment = Allotment {
            plan: Plan::Enterprise,
            tokens_per_cycle: 200_000_000,
        };
        store
            .put_allotment("std", allotment, now, &audit(now, "allotments.put")?)
            .await?;
        let org = super::create_orgs(store.as_ref(), "Bench Portal", 1, None, now).await?[0];
        // Enterprise keeps its whole history (teams keeps 90 days: the purge job would cut the
        // year short as soon as the server starts).
        store.set_org_plan(org, Plan::Enterprise).await?;
        let cycle = CycleId::of(now);
        open_cycle(&ledger, cycle, now).await?;
        let asset = cycle.asset("std")?;
        market.ensure_market(&asset).await?;
        super::fund(
            &ledger,
            &[org],
            ORG_CREDITS_MICRO_CR,
            "bench portal: credits",
        )
        .await?;
        let users: Vec<Uuid> = (0..args.users).map(|_| Uuid::new_v4()).collect();
        let mut draw = Draw(0x9E37_79B9_7F4A_7C15);
        let mut batch = Vec::with_capacity(credex_store::USAGE_BATCH_MAX);
        let mut recorded = 0u64;
        let days: i64 = 365;
        for day in (1..=days).rev() {
            let start = now.as_micros() - day * DAY_MICROS;
            for user in &users {
                for _ in 0..args.events_per_user_day {
                    let model = MODELS[usize::try_from(draw.below(5)).unwrap_or(0)];
                    let offset = i64::try_from(draw.below(86_400)).unwrap_or(0) * 1_000_000;
                    batch.push(UsageEvent {
                        id: Uuid::new_v4(),
                        model: model.to_owned(),
                        tokens: TokenUsage::new(
                            200 + draw.below(4_000),
                            0,
                            0,
                            50 + draw.below(1_000),
                        )?,
                        at: Timestamp::from_micros(start + offset),
                        at_given: true,
                        user: Some(*user),
                        api_key: None,
                        task: Some(format!("task-{}", draw.below(12))),
                        conversation: Some(format!("conv-{}", draw.below(500))),
                        metadata: None,
                    });
                    if batch.len() == credex_store::USAGE_BATCH_MAX {
                        recorded += flush(&parts, org, &mut batch).await?;
                    }
                }
            }
        }
        recorded += flush(&parts, org, &mut batch).await?;
        anyhow::Ok(Prepared {
            org,
            events: recorded,
            asset,
        })
    }
    .await;
    ledger.close().await;
    store.close().await;
    set_up
}

async fn flush(
    parts: &crate::startup::Parts,
    org: OrgId,
    batch: &mut Vec<UsageEvent>,
) -> anyhow::Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let events = std::mem::take(batch);
    let count = u64::try_from(events.len())?;
    parts
        .state
        .usage
        .record(org, events)
        .await
        .map_err(|error| anyhow::anyhow!("record a year of usage: {error}"))?;
    Ok(count)
}

async fn measure_backend(
    backend: &'static str,
    config: Config,
    args: &PortalBenchArgs,
) -> anyhow::Result<Vec<PageMeasurement>> {
    let started = Instant::now();
    let Prepared { org, events, asset } = set_up(&config, args)
        .await
        .context("set up a year of usage")?;
    eprintln!(
        "bench portal: {backend}, {events} events by {} users over 365 days; set up in {:.1?}",
        args.users,
        started.elapsed()
    );
    if backend == "postgres" {
        super::admin_execute(&config.database_url()?, "VACUUM ANALYZE").await?;
    }
    let app = Application::build_with_clock(&config, Arc::new(SystemClock)).await?;
    let port = app.port();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let measured = measure_pages(backend, port, (org, &asset), args, events).await;
    handle.stop(true).await;
    server.await??;
    measured
}

async fn measure_pages(
    backend: &'static str,
    port: u16,
    (org, asset): (OrgId, &AssetCode),
    args: &PortalBenchArgs,
    events: u64,
) -> anyhow::Result<Vec<PageMeasurement>> {
    let mut connection = Connection::open(port).await?;
    let login = connection
        .json(
            "/v1/auth/login",
            None,
            None,
            &serde_json::json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }),
        )
        .await?;
    let text = |name: &str| {
        login
            .get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("the sign-in answer's {name}"))
    };
    let cookie = format!(
        "__Host-credex_access={}; __Host-credex_refresh={}; __Host-credex_csrf=benchmark-csrf-token",
        text("access_token")?,
        text("refresh_token")?
    );
    let o = format!("/portal/o/{org}");
    let pages = vec![
        o.clone(),
        format!("{o}/usage"),
        format!("{o}/usage?days=90"),
        format!("{o}/budgets"),
        format!("{o}/market"),
        format!("{o}/market/{asset}"),
        format!("{o}/keys"),
        format!("{o}/webhooks"),
        format!("{o}/estimate"),
        "/portal/password".to_owned(),
        "/portal/admin".to_owned(),
        "/portal/admin/orgs".to_owned(),
        format!("/portal/admin/orgs/{org}"),
        "/portal/admin/flags".to_owned(),
        "/portal/admin/markets".to_owned(),
        format!("/portal/admin/markets/{asset}"),
        "/portal/admin/models".to_owned(),
        "/portal/admin/cycles".to_owned(),
        "/portal/admin/audit".to_owned(),
    ];
    let mut results = Vec::with_capacity(pages.len());
    for page in pages {
        let mut samples = Vec::with_capacity(args.requests);
        for i in 0..args.requests + 5 {
            let sent = Instant::now();
            let answer = connection.get_with_cookie(&page, &cookie).await?;
            let took = sent.elapsed();
            if answer.status != 200 {
                bail!(
                    "GET {page} answered {}: {}",
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                        .chars()
                        .take(400)
                        .collect::<String>()
                );
            }
            if i >= 5 {
                samples.push(took);
            }
            // One page view is several API calls as the same user: paced, the run stays under
            // the per-user limit (1,000 calls a second) that a person never reaches.
            tokio::time::sleep(PACE).await;
        }
        samples.sort();
        let at =
            |permille: usize| samples[(samples.len() * permille / 1000).min(samples.len() - 1)];
        let measurement = PageMeasurement {
            backend,
            page: page.replace(&org.to_string(), "{org}"),
            requests: samples.len(),
            p50: at(500),
            p99: at(990),
            max: samples[samples.len() - 1],
        };
        println!(
            "| {} | `{}` | {} | {} | {} | {} | {} |",
            measurement.backend,
            measurement.page,
            events,
            measurement.requests,
            millis(measurement.p50),
            millis(measurement.p99),
            millis(measurement.max)
        );
        results.push(measurement);
    }
    Ok(results)
}
