//! `credex bench ledger`: transfers per second on both backends.
//!
//! Each backend gets a fresh database with durable commits (PostgreSQL `synchronous_commit =
//! on`; SQLite WAL with `synchronous = FULL`), one provider and `--accounts` org wallets,
//! funded up front. Then, for every mix, batch size and number of concurrent submitters,
//! submitters send batches through one [`Ledger`] (group commit) for `--seconds` and the
//! transfers acknowledged are counted. Every transfer must succeed; a failure aborts the run.
//!
//! Mixes:
//! - `uniform`: CR trades between two random org wallets (each debit reads a whole balance);
//! - `hot`: every transfer touches a hot provider account: grants `issuance → wallet` and
//!   spends `wallet → spent`, half each.
//!
//! This module also holds what the benchmarks that run a whole server (`buy`, `estimate`,
//! `usage`) share: [`on_fresh_databases`] runs a measurement on SQLite and on a fresh PostgreSQL
//! database, [`fund`] and [`api_keys`] prepare orgs through the ledger and the store,
//! [`create_orgs`] makes them, and [`millis`], [`seconds`] and [`tenths`] format the tables'
//! figures.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use credex_ledger::{
    Account, AccountId, AccountKind, Action, Amount, AssetCode, Metadata, Movement, OrgId, Owner,
    Timestamp, Transfer, TransferCode, TransferId,
};
use credex_store::{
    ApiKeyName, ApiKeyPrefix, Email, GroupCommitConfig, Ledger, NewApiKey, OrgName, Plan, Scope,
    Scopes, Store, SystemClock, TokenHash, VerificationLevel,
};
use sqlx::Connection;

use crate::auth::tokens;
use crate::config::{Config, Secret};

pub mod buy;
pub mod estimate;
pub mod http;
pub mod portal;
pub mod usage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    Uniform,
    Hot,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Backends to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    pub backends: Vec<BackendArg>,
    /// A PostgreSQL server URL; the benchmark creates and drops its own database there.
    #[arg(
        long,
        env = "CREDEX_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub postgres_url: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Transfers per request.
    #[arg(long, value_delimiter = ',', default_value = "1,100,8190")]
    pub batch_sizes: Vec<usize>,
    /// Concurrent submitters.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub submitters: Vec<usize>,
    /// Workload mixes.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "uniform,hot")]
    pub mixes: Vec<Mix>,
    /// Org wallets to spread transfers over.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// Transactions that may commit at once (default: the backend's).
    #[arg(long)]
    pub flushers: Option<usize>,
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub backend: &'static str,
    pub mix: Mix,
    pub batch: usize,
    pub submitters: usize,
    pub transfers: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl Measurement {
    pub fn per_second(&self) -> u64 {
        let micros = u64::try_from(self.elapsed.as_micros().max(1)).unwrap_or(u64::MAX);
        self.transfers.saturating_mul(1_000_000) / micros
    }
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<Vec<Measurement>> {
    let mut all = Vec::new();
    println!("| backend | mix | batch | submitters | transfers | seconds | transfers/s | p50 ms | p99 ms |");
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|");
    for backend in &args.backends {
        let template = Template::prepare(*backend, &args.postgres_url, args.accounts).await?;
        let result = measure_backend(&template, args).await;
        template.remove().await?;
        all.extend(result?);
    }
    Ok(all)
}

/// Every configuration runs on a fresh copy of one prepared database, so no figure depends on
/// what ran before it.
async fn measure_backend(
    template: &Template,
    args: &BenchArgs,
) -> anyhow::Result<Vec<Measurement>> {
    let mut results = Vec::new();
    for mix in &args.mixes {
        for batch in &args.batch_sizes {
            for submitters in &args.submitters {
                let copy = template.copy().await?;
                let measured = measure_copy(&copy, template, args, *mix, *batch, *submitters).await;
                template.drop_copy(copy).await?;
                let measurement =
                    measured.with_context(|| format!("{mix:?} batch {batch} × {submitters}"))?;
                println!(
                    "| {} | {:?} | {} | {} | {} | {} | {} | {} | {} |",
                    measurement.backend,
                    measurement.mix,
                    measurement.batch,
                    measurement.submitters,
                    measurement.transfers,
                    seconds(measurement.elapsed),
                    measurement.per_second(),
                    millis(measurement.p50),
                    millis(measurement.p99),
                );
                results.push(measurement);
            }
        }
    }
    Ok(results)
}

async fn measure_copy(
    url: &str,
    template: &Template,
    args: &BenchArgs,
    mix: Mix,
    batch: usize,
    submitters: usize,
) -> anyhow::Result<Measurement> {
    let store = credex_store::connect(url, Arc::new(SystemClock)).await?;
    let mut config = GroupCommitConfig::for_backend(store.backend());
    if let Some(flushers) = args.flushers {
        config.flushers = flushers;
    }
    let ledger = Arc::new(Ledger::new(store.clone(), config));
    // One second of the same load first, not counted: caches and connections warm up.
    let warm = measure(&ledger, &template.world, mix, batch, submitters, 1).await;
    let measured = match warm {
        Ok(_) => {
            measure(
                &ledger,
                &template.world,
                mix,
                batch,
                submitters,
                args.seconds,
            )
            .await
        }
        Err(error) => Err(error),
    };
    ledger.close().await;
    let report = store.check().await;
    store.close().await;
    let report = report?;
    if !report.is_ok() {
        bail!("the books do not balance after the benchmark: {report:?}");
    }
    measured
}

/// The provider's CR accounts and the org wallets.
struct World {
    credit: AssetCode,
    issuance: AccountId,
    spent: AccountId,
    wallets: Vec<AccountId>,
}

impl World {
    async fn open(ledger: &Ledger, wallets: usize) -> anyhow::Result<Self> {
        let credit = AssetCode::credit();
        ledger.ensure_asset(&credit).await?;
        let provider = |kind| ledger.ensure_account(&credit, Owner::Provider, kind);
        let issuance = provider(AccountKind::Issuance).await?.account.id();
        let spent = provider(AccountKind::Spent).await?.account.id();
        let mut ids = Vec::with_capacity(wallets);
        for chunk in 0..wallets.div_ceil(1_000) {
            let count = (wallets - chunk * 1_000).min(1_000);
            let accounts: Vec<Account> = (0..count)
                .map(|_| {
                    let owner = Owner::Org(OrgId::generate());
                    Account::new(
                        AccountId::generate(),
                        credit.clone(),
                        owner,
                        AccountKind::Wallet,
                    )
                })
                .collect::<Result<_, _>>()?;
            for result in ledger.store().create_accounts(&accounts).await? {
                result?;
            }
            ids.extend(accounts.iter().map(Account::id));
        }
        let world = Self {
            credit,
            issuance,
            spent,
            wallets: ids,
        };
        for chunk in world.wallets.chunks(credex_ledger::BATCH_MAX) {
            let grants = chunk
                .iter()
                .map(|wallet| world.transfer(world.issuance, *wallet, 1 << 40, TransferCode::Grant))
                .collect();
            expect_all_ok(ledger.create_transfers(grants).await?)?;
        }
        Ok(world)
    }

    fn transfer(
        &self,
        debit: AccountId,
        credit: AccountId,
        amount: u64,
        code: TransferCode,
    ) -> Transfer {
        let amount = Amount::new(amount).expect("a positive amount");
        let movement = Movement::new(debit, credit, self.credit.clone(), amount, code)
            .expect("distinct accounts");
        Transfer::movement(TransferId::generate(), movement)
    }

    fn random_wallet(&self) -> AccountId {
        self.wallets[rand::random_range(0..self.wallets.len())]
    }

    fn batch(&self, mix: Mix, size: usize) -> Vec<Transfer> {
        (0..size)
            .map(|_| match mix {
                Mix::Uniform => {
                    let debit = self.random_wallet();
                    let mut credit = self.random_wallet();
                    while credit == debit {
                        credit = self.random_wallet();
                    }
                    self.transfer(debit, credit, 1, TransferCode::Trade)
                }
                Mix::Hot if rand::random::<bool>() => {
                    self.transfer(self.issuance, self.random_wallet(), 1, TransferCode::Grant)
                }
                Mix::Hot => self.transfer(self.random_wallet(), self.spent, 1, TransferCode::Spend),
            })
            .collect()
    }
}

fn expect_all_ok(results: Vec<credex_ledger::TransferResult>) -> anyhow::Result<()> {
    match results.into_iter().find_map(Result::err) {
        None => Ok(()),
        Some(error) => bail!("a benchmark transfer failed: {error}"),
    }
}

async fn measure(
    ledger: &Arc<Ledger>,
    world: &Arc<World>,
    mix: Mix,
    batch: usize,
    submitters: usize,
    seconds: u64,
) -> anyhow::Result<Measurement> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(submitters);
    for _ in 0..submitters {
        let ledger = ledger.clone();
        let world = world.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut transfers = 0_u64;
            while Instant::now() < deadline {
                let transfers_batch = world.batch(mix, batch);
                let sent = Instant::now();
                let results = ledger.create_transfers(transfers_batch).await?;
                latencies.push(sent.elapsed());
                expect_all_ok(results)?;
                transfers += u64::try_from(batch).unwrap_or(u64::MAX);
            }
            anyhow::Ok((transfers, latencies))
        }));
    }
    let mut transfers = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (count, mut times) = task.await??;
        transfers += count;
        latencies.append(&mut times);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    Ok(Measurement {
        backend: match ledger.store().backend() {
            credex_store::Backend::Sqlite => "sqlite",
            credex_store::Backend::Postgres => "postgres",
        },
        mix,
        batch,
        submitters,
        transfers,
        elapsed,
        p50: percentile(50),
        p99: percentile(99),
    })
}

/// A database prepared once per backend (the provider and its funded wallets), and the
/// copies made of it for each configuration.
struct Template {
    world: Arc<World>,
    place: Place,
}

enum Place {
    Sqlite {
        dir: tempfile::TempDir,
    },
    Postgres {
        admin: String,
        base: String,
        name: String,
    },
}

static COPIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Template {
    async fn prepare(
        backend: BackendArg,
        postgres_url: &str,
        accounts: usize,
    ) -> anyhow::Result<Self> {
        let (place, url) = match backend {
            BackendArg::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}/template.db", dir.path().display());
                (Place::Sqlite { dir }, url)
            }
            BackendArg::Postgres => {
                let name = format!("credex_bench_{}", uuid::Uuid::new_v4().simple());
                admin_execute(postgres_url, &format!("CREATE DATABASE {name}"))
                    .await
                    .context("create the benchmark database on PostgreSQL")?;
                let url = database_url(postgres_url, &name);
                let place = Place::Postgres {
                    admin: postgres_url.to_owned(),
                    base: server_base(postgres_url).to_owned(),
                    name,
                };
                (place, url)
            }
        };
        let store = credex_store::connect(&url, Arc::new(SystemClock)).await?;
        let ledger = Ledger::with_defaults(store.clone());
        let world = World::open(&ledger, accounts).await;
        ledger.close().await;
        store.close().await;
        Ok(Self {
            world: Arc::new(world?),
            place,
        })
    }

    /// A fresh copy of the prepared database; returns its URL.
    async fn copy(&self) -> anyhow::Result<String> {
        let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.place {
            Place::Sqlite { dir } => {
                // The template's write-ahead log goes with it: closing the pool need not have
                // checkpointed it (a copy of the main file alone then misses committed pages,
                // and the copy's books do not balance).
                let to = dir.path().join(format!("copy{n}.db"));
                for suffix in ["", "-wal"] {
                    let from = dir.path().join(format!("template.db{suffix}"));
                    if suffix.is_empty() || from.exists() {
                        std::fs::copy(&from, dir.path().join(format!("copy{n}.db{suffix}")))
                            .context("copy the benchmark database")?;
                    }
                }
                Ok(format!("sqlite://{}", to.display()))
            }
            Place::Postgres { admin, base, name } => {
                let copy = format!("{name}_{n}");
                // FILE_COPY checkpoints before copying, so no checkpoint of the copy lands
                // inside the measurement.
                let sql = format!("CREATE DATABASE {copy} TEMPLATE {name} STRATEGY FILE_COPY");
                admin_execute(admin, &sql).await?;
                Ok(format!("{base}/{copy}"))
            }
        }
    }

    async fn drop_copy(&self, url: String) -> anyhow::Result<()> {
        match &self.place {
            Place::Sqlite { .. } => {
                let path = url.trim_start_matches("sqlite://");
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
                Ok(())
            }
            Place::Postgres { admin, .. } => {
                let name = url.rsplit('/').next().unwrap_or_default();
                admin_execute(
                    admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )
                .await
            }
        }
    }

    async fn remove(self) -> anyhow::Result<()> {
        match self.place {
            Place::Sqlite { dir } => drop(dir),
            Place::Postgres { admin, name, .. } => {
                admin_execute(
                    &admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )
                .await?;
            }
        }
        Ok(())
    }
}

async fn admin_execute(admin: &str, sql: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query(sql).execute(&mut conn).await?;
    Ok(())
}

/// `duration` in seconds, to the millisecond (`3.001`), for the results' tables.
pub(crate) fn seconds(duration: Duration) -> String {
    format!("{}.{:03}", duration.as_secs(), duration.subsec_millis())
}

/// `duration` in milliseconds, to the microsecond (`12.345`), for the results' tables.
pub(crate) fn millis(duration: Duration) -> String {
    format!(
        "{}.{:03}",
        duration.as_millis(),
        duration.as_micros() % 1_000
    )
}

/// A rate given in thousandths, to the tenth (`1234.5`), for the results' tables.
pub(crate) fn tenths(milli: u128) -> String {
    format!("{}.{}", milli / 1_000, milli % 1_000 / 100)
}

/// `server` (a PostgreSQL URL) without its database: scheme, credentials, host and port.
fn server_base(server: &str) -> &str {
    let host_start = server.find("://").map_or(0, |i| i + 3);
    match server[host_start..].find('/') {
        Some(slash) => &server[..host_start + slash],
        None => server,
    }
}

/// `server` with its database replaced by `name`.
pub(crate) fn database_url(server: &str, name: &str) -> String {
    format!("{}/{name}", server_base(server))
}

/// The admin the server-level benchmarks (`buy`, `estimate`, `usage`) configure their server
/// with, and sign in or make API keys as.
pub(crate) const ADMIN_EMAIL: &str = "bench@credex.local";
pub(crate) const ADMIN_PASSWORD: &str = "a long benchmark password";

/// Runs `measure` on a fresh database of each backend, for the benchmarks that run a whole
/// server: SQLite first, in a temporary directory, and then, when `postgres` names a server, a
/// database `credex_bench_<uuid>` created there and dropped after (even when the measurement
/// failed). First prints the head of the results' Markdown table: `table_head` (the columns'
/// names, `| backend | … |`) and its alignment line (the first column left, the others right).
/// `measure` gets the backend's name (`"sqlite"` or `"postgres"`), a [`Config`] binding
/// `127.0.0.1:0` on that database, with the benchmark's admin ([`ADMIN_EMAIL`],
/// [`ADMIN_PASSWORD`]), and `args`; the first error, the measurement's or the drop's, ends the
/// run. Answers the measurements in that order.
pub(crate) async fn on_fresh_databases<'a, A, M, F, Fut>(
    postgres: Option<&str>,
    table_head: &str,
    args: &'a A,
    mut measure: F,
) -> anyhow::Result<Vec<M>>
where
    A: ?Sized,
    F: FnMut(&'static str, Config, &'a A) -> Fut,
    Fut: Future<Output = anyhow::Result<M>>,
{
    let columns = table_head.matches('|').count().saturating_sub(1);
    println!("{table_head}");
    println!("|---|{}", "--:|".repeat(columns.saturating_sub(1)));
    let config = |data_dir: std::path::PathBuf| {
        let mut config = Config::new("127.0.0.1:0", data_dir);
        config.admin_email = Some(ADMIN_EMAIL.to_owned());
        config.admin_password = Some(Secret::new(ADMIN_PASSWORD));
        config
    };
    let mut results = Vec::new();
    let dir = tempfile::tempdir()?;
    results.push(measure("sqlite", config(dir.path().join("sqlite")), args).await?);
    if let Some(server) = postgres {
        let name = format!("credex_bench_{}", uuid::Uuid::new_v4().simple());
        admin_execute(server, &format!("CREATE DATABASE {name}"))
            .await
            .context("create the benchmark database on PostgreSQL")?;
        let url = database_url(server, &name);
        let postgres = config(dir.path().join("postgres")).with_database_url(url);
        let measured = measure("postgres", postgres, args).await;
        admin_execute(
            server,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await?;
        results.push(measured?);
    }
    Ok(results)
}

/// Tops up every org's CR wallet with `amount` µCR from the provider's issuance account,
/// through the ledger in requests of up to [`credex_ledger::BATCH_MAX`] transfers, each
/// described by `reason`. Any transfer that fails fails the whole.
pub(crate) async fn fund(
    ledger: &Ledger,
    orgs: &[OrgId],
    amount: u64,
    reason: &str,
) -> anyhow::Result<()> {
    let credit = AssetCode::credit();
    let issuance = ledger
        .ensure_account(&credit, Owner::Provider, AccountKind::Issuance)
        .await?
        .account
        .id();
    let amount = Amount::new(amount)?;
    let metadata = Metadata::new(reason)?;
    let mut transfers = Vec::with_capacity(orgs.len());
    for org in orgs {
        let wallet = ledger
            .ensure_account(&credit, Owner::Org(*org), AccountKind::Wallet)
            .await?
            .account
            .id();
        let movement = Movement::new(
            issuance,
            wallet,
            credit.clone(),
            amount,
            TransferCode::TopUp,
        )?;
        let transfer = Transfer::new(
            TransferId::generate(),
            Action::Move(movement),
            metadata.clone(),
            false,
        )?;
        transfers.push(transfer);
    }
    for chunk in transfers.chunks(credex_ledger::BATCH_MAX) {
        for result in ledger.create_transfers(chunk.to_vec()).await? {
            if let Err(error) = result {
                bail!("a top-up failed: {error}");
            }
        }
    }
    Ok(())
}

/// `count` orgs on the teams plan, named `prefix 0`, `prefix 1`, …, each at the verification
/// level `verification` when given.
pub(crate) async fn create_orgs(
    store: &dyn Store,
    prefix: &str,
    count: usize,
    verification: Option<VerificationLevel>,
    now: Timestamp,
) -> anyhow::Result<Vec<OrgId>> {
    let mut orgs = Vec::with_capacity(count);
    for i in 0..count {
        let name =
            OrgName::parse(&format!("{prefix} {i}")).map_err(|error| anyhow::anyhow!("{error}"))?;
        let org = store.create_org(&name, Plan::Teams, now).await?.id;
        if let Some(level) = verification {
            store.set_verification(org, level).await?;
        }
        orgs.push(org);
    }
    Ok(orgs)
}

/// An API key named `name` with the one scope `scope` for each entry of `orgs` (an org listed
/// twice gets two keys), made by the benchmark's admin ([`ADMIN_EMAIL`]) as `POST
/// /v1/orgs/{org_id}/api-keys` would; answers the keys, in the order of `orgs`.
pub(crate) async fn api_keys(
    store: &dyn Store,
    orgs: &[OrgId],
    scope: Scope,
    name: &str,
    now: Timestamp,
) -> anyhow::Result<Vec<String>> {
    let email = Email::parse(ADMIN_EMAIL).map_err(|error| anyhow::anyhow!("{error}"))?;
    let (admin, _) = store
        .user_by_email(&email)
        .await?
        .context("the benchmark's admin")?;
    let scopes = Scopes::new(vec![scope]).map_err(|error| anyhow::anyhow!("{error}"))?;
    let name = ApiKeyName::parse(name).map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut keys = Vec::with_capacity(orgs.len());
    for org in orgs {
        let (key, prefix) = tokens::api_key();
        let new = NewApiKey {
            org: *org,
            name: name.clone(),
            prefix: ApiKeyPrefix::parse(&prefix).map_err(|error| anyhow::anyhow!("{error}"))?,
            secret_hash: TokenHash::from_bytes(tokens::digest(&key)),
            scopes: scopes.clone(),
            created_by: admin.id,
        };
        store.create_api_key(&new, now).await?;
        keys.push(key);
    }
    Ok(keys)
}
