//! `credex bench usage`: throughput and latency of usage ingestion (`POST
//! /v1/orgs/{org_id}/usage`), batches of `--batch` events sent by `--clients` concurrent
//! clients.
//!
//! A whole `credex` server ([`Application`]) runs on a fresh database — SQLite in a temporary
//! directory, and PostgreSQL too when `--postgres` names a server (a database is created there
//! and dropped after). The set-up is done in-process first, not measured, through the store and
//! the ledger the routes use ([`assemble`]): `--orgs` orgs (teams plan), each with 10^15 µCR
//! (a billion CR) in its wallet, and one API key with the `usage:write` scope per client,
//! client *i* reporting for org *i* mod `--orgs`. No org has token balances, so every event is
//! charged in µCR from its org's wallet. With the default `--orgs` equal to `--clients` each
//! client has an org of its own, the realistic case; `--orgs 1` puts every client on one org,
//! whose charges the store serializes (each batch holds the org's lock).
//!
//! The load is **closed-loop** by default (`--rate` makes it open-loop, below): each client
//! sends its next request as soon as the previous one is answered, over its own keep-alive connection, so the figures are the throughput the
//! server sustains with that many requests in flight and the latency each request saw from its
//! send to its answer (the server's share plus the loopback; there is no schedule and so no
//! queueing before the send). Every event has a fresh UUID v4 id (`gpt-4o-mini`, 1,200 input
//! and 300 output tokens, task `bench`). The first `--warmup-seconds` are not counted. Every
//! answer must be 201 with every event of the batch charged (a 402 would mean a wallet ran
//! dry), or the run fails.
//!
//! With `--rate R` the load is **open-loop**: R requests per second in all, client *i*'s
//! request *j* due at (i + j × clients) / R seconds, and each latency counted from the instant
//! the request was due (no coordinated omission): the measure of a latency target at a given
//! throughput, which closed-loop cannot give (its latency is about clients ÷ throughput).
//!
//! All clients connect from 127.0.0.1, so the server's per-address rate limit (a burst of
//! 2,000 requests, then 2,000 a second) applies to them together; `--spread-addresses` binds
//! each client to a loopback address of its own (127.0.0.2, 127.0.0.3, …), as clients on
//! different hosts would be.
//!
//! On PostgreSQL the database is `ANALYZE`d after the warm-up, as autovacuum would once the
//! usage tables have grown from empty (`--no-analyze` skips it; this machine's PostgreSQL runs
//! without autovacuum). After the run the books are checked (every balance recomputed from the
//! journal), each org's recorded events are counted and must equal the events it was answered
//! as charged, and each org's wallet must have lost exactly what its events took from it.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use credex_ledger::{AccountKind, AssetCode, OrgId, Owner};
use credex_store::{Scope, SystemClock, UsageFilter, UsageGroup};
use serde::de::IgnoredAny;
use serde::Deserialize;
use tokio::net::TcpSocket;
use uuid::Uuid;

use super::{millis, seconds, tenths};
use crate::bench::http::Connection;
use crate::config::Config;
use crate::startup::{assemble, Assembled};
use crate::Application;

#[derive(Debug, Clone, clap::Args)]
pub struct UsageBenchArgs {
    /// Events per request (1 to 1,000).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent clients, each on its own keep-alive connection with its own API key.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Orgs the clients report for (client i for org i mod orgs).
    #[arg(long, default_value_t = 32)]
    pub orgs: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 60)]
    pub seconds: u32,
    /// Seconds of the same load first, not counted.
    #[arg(long, default_value_t = 5)]
    pub warmup_seconds: u32,
    /// Also measure on PostgreSQL: a server URL where the benchmark creates (and then drops)
    /// its own database.
    #[arg(long, hide_env_values = true)]
    pub postgres: Option<String>,
    /// On PostgreSQL, do not `ANALYZE` the database after the warm-up.
    #[arg(long)]
    pub no_analyze: bool,
    /// Connect each client from a loopback address of its own (127.0.0.2, 127.0.0.3, …), so
    /// that the server's per-address rate limit applies to each client alone.
    #[arg(long)]
    pub spread_addresses: bool,
    /// Open-loop at this many requests per second in all (spread evenly over the clients),
    /// each request's latency counted from the instant it was due; without it, closed-loop.
    #[arg(long)]
    pub rate: Option<u32>,
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct UsageMeasurement {
    pub backend: &'static str,
    pub batch: usize,
    pub clients: usize,
    pub orgs: usize,
    /// Requests answered in the measured window.
    pub requests: usize,
    /// Events recorded by those requests.
    pub events: u64,
    /// From the first send to the last answer.
    pub elapsed: Duration,
    /// Request latency, from the send to the answer.
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl UsageMeasurement {
    /// Events per second, in thousandths.
    pub fn events_milli_per_second(&self) -> u128 {
        u128::from(self.events).saturating_mul(1_000_000_000) / self.elapsed.as_micros().max(1)
    }

    /// Requests per second, in thousandths.
    pub fn requests_milli_per_second(&self) -> u128 {
        let requests = u128::try_from(self.requests).unwrap_or(u128::MAX);
        requests.saturating_mul(1_000_000_000) / self.elapsed.as_micros().max(1)
    }
}

/// Every org's credits: 10^15 µCR (a billion CR), far more than a run spends.
const ORG_CREDITS_MICRO_CR: u64 = 1_000_000_000_000_000;
/// The model of every event, and its token counts.
const MODEL: &str = "gpt-4o-mini";
const INPUT_TOKENS: u64 = 1_200;
const OUTPUT_TOKENS: u64 = 300;
/// The most events in one request (the route's limit).
const BATCH_MAX: usize = credex_store::USAGE_BATCH_MAX;

/// The head of the results' table.
const TABLE_HEAD: &str =
    "| backend | batch | clients | orgs | rate/s | seconds | requests | events | events/s | requests/s | p50 ms | p90 ms | p99 ms | max ms |";

pub async fn run(args: &UsageBenchArgs) -> anyhow::Result<Vec<UsageMeasurement>> {
    if args.clients == 0 || args.orgs == 0 || args.seconds == 0 {
        bail!("--clients, --orgs and --seconds must be positive");
    }
    if !(1..=BATCH_MAX).contains(&args.batch) {
        bail!("--batch must be 1 to {BATCH_MAX}");
    }
    if args.orgs > args.clients {
        bail!("--orgs must not exceed --clients (every org has a client)");
    }
    if args.rate == Some(0) {
        bail!("--rate must be positive");
    }
    if args.spread_addresses && args.clients > 250 {
        bail!("--spread-addresses gives at most 250 clients an address of their own");
    }
    super::on_fresh_databases(args.postgres.as_deref(), TABLE_HEAD, args, measure_backend).await
}

async fn measure_backend(
    backend: &'static str,
    config: Config,
    args: &UsageBenchArgs,
) -> anyhow::Result<UsageMeasurement> {
    let started = Instant::now();
    let world = set_up(&config, args).await.context("set up the orgs")?;
    eprintln!(
        "bench usage: {backend}, {} orgs, {} API keys; set up in {:.1?}",
        world.orgs.len(),
        world.clients.len(),
        started.elapsed(),
    );
    let analyze = (backend == "postgres" && !args.no_analyze)
        .then(|| config.database_url())
        .transpose()?;
    let app = Application::build_with_clock(&config, Arc::new(SystemClock)).await?;
    let port = app.port();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let load = Load {
        port,
        world: Arc::new(world),
        batch: args.batch,
        clients: args.clients,
        spread_addresses: args.spread_addresses,
        rate: args.rate,
    };
    let measured = async {
        // One request on its own first: a route that does not answer as expected fails here,
        // once.
        let mut sent = load.one().await?;
        eprintln!(
            "bench usage: {backend}, {} events per request, {} clients {} for {} s after {} s of warm-up",
            args.batch,
            args.clients,
            args.rate.map_or_else(
                || "closed-loop".to_owned(),
                |rate| format!("open-loop at {rate} requests/s")
            ),
            args.seconds,
            args.warmup_seconds
        );
        let warm = load.drive(args.warmup_seconds).await?;
        add(&mut sent, &warm.charged);
        // The warm-up filled the usage tables from empty; a server's autovacuum analyzes a
        // table once it has grown by a tenth (this one's is off).
        if let Some(url) = &analyze {
            super::admin_execute(url, "ANALYZE")
                .await
                .context("analyze the benchmark database after the warm-up")?;
        }
        let run = load.drive(args.seconds).await?;
        add(&mut sent, &run.charged);
        anyhow::Ok((summarize(backend, args, &run), sent))
    }
    .await;
    handle.stop(true).await;
    server.await??;
    let (measurement, sent) = measured?;
    check(&config, &load.world, &sent).await?;
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        measurement.backend,
        measurement.batch,
        measurement.clients,
        measurement.orgs,
        args.rate
            .map_or_else(|| "closed".to_owned(), |rate| rate.to_string()),
        seconds(measurement.elapsed),
        measurement.requests,
        measurement.events,
        tenths(measurement.events_milli_per_second()),
        tenths(measurement.requests_milli_per_second()),
        millis(measurement.p50),
        millis(measurement.p90),
        millis(measurement.p99),
        millis(measurement.max),
    );
    Ok(measurement)
}

/// Adds a drive's events, org by org, to the totals.
fn add(total: &mut [u64], charged: &[u64]) {
    for (total, charged) in total.iter_mut().zip(charged) {
        *total += charged;
    }
}

/// After the run: the books balance, every org recorded exactly the events it was answered as
/// charged, and its wallet lost exactly what they took from it. `sent`: events charged per org
/// (in the order of `world.orgs`).
async fn check(config: &Config, world: &World, sent: &[u64]) -> anyhow::Result<()> {
    let store = credex_store::connect(&config.database_url()?, Arc::new(SystemClock)).await?;
    let checked = async {
        let report = store.check().await?;
        if !report.is_ok() {
            bail!("the books do not balance after the benchmark: {report:?}");
        }
        let credit = AssetCode::credit();
        let (mut recorded, mut expected) = (0, 0);
        for (org, sent) in world.orgs.iter().zip(sent) {
            let totals = store
                .usage_totals(*org, &UsageFilter::default(), UsageGroup::All, 1)
                .await?;
            let (events, from_wallet) = totals
                .first()
                .map_or((0, 0), |total| (total.events, total.from_wallet_micro_cr));
            if events != *sent {
                bail!("org {org} recorded {events} events, but {sent} were answered as charged");
            }
            let wallet = store
                .find_account(&credit, Owner::Org(*org), AccountKind::Wallet)
                .await?
                .with_context(|| format!("org {org}'s wallet"))?;
            let left = i128::from(ORG_CREDITS_MICRO_CR) - i128::from(from_wallet);
            if wallet.balance.net_posted() != left || wallet.balance.net_pending() != 0 {
                bail!(
                    "org {org}'s wallet holds {:?}, not {left} µCR ({from_wallet} µCR spent)",
                    wallet.balance
                );
            }
            recorded += events;
            expected += sent;
        }
        eprintln!(
            "bench usage: the books balance; {recorded} events recorded, as many as charged ({expected})"
        );
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    checked
}

/// What the load needs to know of the prepared orgs.
#[derive(Debug)]
struct World {
    orgs: Vec<OrgId>,
    /// Each client's org (its index in `orgs`) and `usage:write` API key.
    clients: Vec<(usize, String)>,
}

/// Prepares the orgs in-process (see the module's documentation), then closes the store so that
/// the server opens it afresh.
async fn set_up(config: &Config, args: &UsageBenchArgs) -> anyhow::Result<World> {
    let Assembled { store, ledger, .. } = assemble(config, Arc::new(SystemClock)).await?;
    let world = async {
        let now = store.clock().now();
        let orgs = super::create_orgs(store.as_ref(), "Bench Usage", args.orgs, None, now).await?;
        super::fund(&ledger, &orgs, ORG_CREDITS_MICRO_CR, "bench usage: credits").await?;
        let owners: Vec<usize> = (0..args.clients).map(|i| i % args.orgs).collect();
        let owner_orgs: Vec<OrgId> = owners.iter().map(|owner| orgs[*owner]).collect();
        let keys = super::api_keys(
            store.as_ref(),
            &owner_orgs,
            Scope::UsageWrite,
            "bench usage",
            now,
        )
        .await?;
        anyhow::Ok(World {
            orgs,
            clients: owners.into_iter().zip(keys).collect(),
        })
    }
    .await;
    ledger.close().await;
    store.close().await;
    world
}

/// The load: batches of events by the clients' keys, closed-loop or at a rate.
#[derive(Debug)]
struct Load {
    port: u16,
    world: Arc<World>,
    batch: usize,
    clients: usize,
    spread_addresses: bool,
    /// Requests per second in all (open-loop), or none (closed-loop).
    rate: Option<u32>,
}

/// What a drive did: its requests' latencies, how long it took, and the events charged per
/// org.
#[derive(Debug)]
struct Run {
    latencies: Vec<Duration>,
    elapsed: Duration,
    charged: Vec<u64>,
}

/// The parts of a 201 answer the benchmark checks.
#[derive(Debug, Deserialize)]
struct Answer {
    events: Vec<IgnoredAny>,
    charged: Charged,
}

#[derive(Debug, Deserialize)]
struct Charged {
    events: u64,
}

/// One client's side of the load.
#[derive(Debug, Clone)]
struct Client {
    org: usize,
    path: String,
    key: String,
    batch: usize,
}

impl Client {
    fn new(load: &Load, index: usize) -> Self {
        let (org, key) = &load.world.clients[index];
        Self {
            org: *org,
            path: format!("/v1/orgs/{}/usage", load.world.orgs[*org]),
            key: key.clone(),
            batch: load.batch,
        }
    }

    /// A batch of events with fresh ids.
    fn body(&self) -> Vec<u8> {
        let mut body = String::with_capacity(16 + self.batch * 128);
        body.push_str(r#"{"events":["#);
        for i in 0..self.batch {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"id":"{}","model":"{MODEL}","input_tokens":{INPUT_TOKENS},"output_tokens":{OUTPUT_TOKENS},"task":"bench"}}"#,
                Uuid::new_v4()
            ));
        }
        body.push_str("]}");
        body.into_bytes()
    }

    /// Sends one batch; answers its latency, or why the answer is not every event charged.
    async fn send(&self, connection: &mut Connection) -> anyhow::Result<Duration> {
        let body = self.body();
        let sent = Instant::now();
        let answer = connection
            .send("POST", &self.path, Some(&self.key), None, &body)
            .await?;
        let latency = sent.elapsed();
        if answer.status != 201 {
            bail!(
                "a usage batch answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
        }
        let parsed: Answer = serde_json::from_slice(&answer.body).with_context(|| {
            format!(
                "an implausible answer to a usage batch: {}",
                String::from_utf8_lossy(&answer.body)
            )
        })?;
        let batch = u64::try_from(self.batch)?;
        if parsed.events.len() != self.batch || parsed.charged.events != batch {
            bail!(
                "a usage batch of {} events answered {} events, {} charged",
                self.batch,
                parsed.events.len(),
                parsed.charged.events
            );
        }
        Ok(latency)
    }
}

impl Load {
    /// Client `index`'s connection.
    async fn connect(&self, index: usize) -> anyhow::Result<Connection> {
        if !self.spread_addresses {
            return Connection::open(self.port).await;
        }
        // 127.0.0.2, 127.0.0.3, …: every 127.0.0.0/8 address is the loopback's.
        let last = u8::try_from(index + 2).context("too many clients for their own addresses")?;
        let socket = TcpSocket::new_v4()?;
        socket.bind((Ipv4Addr::new(127, 0, 0, last), 0).into())?;
        let stream = socket
            .connect((Ipv4Addr::LOCALHOST, self.port).into())
            .await
            .with_context(|| format!("connect from 127.0.0.{last}"))?;
        Connection::from_stream(stream)
    }

    /// One batch by the first client; answers the events charged per org.
    async fn one(&self) -> anyhow::Result<Vec<u64>> {
        let mut connection = self.connect(0).await?;
        let client = Client::new(self, 0);
        client.send(&mut connection).await?;
        let mut charged = vec![0; self.world.orgs.len()];
        charged[client.org] += u64::try_from(self.batch)?;
        Ok(charged)
    }

    /// `seconds` of batches: closed-loop, each client sends its next as soon as the previous
    /// is answered; open-loop (`rate`), client `i`'s request `j` is due at `(i + j × clients) /
    /// rate` seconds from the start, sent then (or at once when the client is behind), and its
    /// latency runs from that instant, so a slow answer delays the next and is counted.
    async fn drive(&self, seconds: u32) -> anyhow::Result<Run> {
        let mut connections = Vec::with_capacity(self.clients);
        for index in 0..self.clients {
            connections.push(self.connect(index).await?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(u64::from(seconds));
        let mut tasks = Vec::with_capacity(self.clients);
        let clients = u128::try_from(self.clients)?;
        let rate = self.rate;
        for (index, mut connection) in connections.into_iter().enumerate() {
            let client = Client::new(self, index);
            let stop = stop.clone();
            let index = u128::try_from(index)?;
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut sent: u128 = 0;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    let due = rate.map(|rate| {
                        let nanos = (index + sent * clients) * 1_000_000_000 / u128::from(rate);
                        started + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
                    });
                    if let Some(due) = due {
                        if due >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                    }
                    sent += 1;
                    match client.send(&mut connection).await {
                        Ok(latency) => latencies.push(due.map_or(latency, |due| due.elapsed())),
                        Err(error) => {
                            // The others stop too: the run has failed.
                            stop.store(true, Ordering::Relaxed);
                            return Err(error);
                        }
                    }
                }
                anyhow::Ok((client.org, latencies))
            }));
        }
        let mut run = Run {
            latencies: Vec::new(),
            elapsed: Duration::ZERO,
            charged: vec![0; self.world.orgs.len()],
        };
        let mut failure = None;
        for task in tasks {
            match task.await? {
                Ok((org, mut latencies)) => {
                    let batches = u64::try_from(latencies.len())?;
                    run.charged[org] += batches * u64::try_from(self.batch)?;
                    run.latencies.append(&mut latencies);
                }
                // The first failure is the one to tell; the others follow from it.
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        run.elapsed = started.elapsed();
        match failure {
            Some(error) => Err(error),
            None => Ok(run),
        }
    }
}

fn summarize(backend: &'static str, args: &UsageBenchArgs, run: &Run) -> UsageMeasurement {
    let mut latencies = run.latencies.clone();
    latencies.sort_unstable();
    let percentile = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    UsageMeasurement {
        backend,
        batch: args.batch,
        clients: args.clients,
        orgs: args.orgs,
        requests: latencies.len(),
        events: run.charged.iter().sum(),
        elapsed: run.elapsed,
        p50: percentile(50),
        p90: percentile(90),
        p99: percentile(99),
        max: latencies.last().copied().unwrap_or_default(),
    }
}
