//! `credex`: the Credex server and its operator commands.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use credex_api::bench::buy::BuyBenchArgs;
use credex_api::bench::estimate::EstimateBenchArgs;
use credex_api::bench::portal::PortalBenchArgs;
use credex_api::bench::usage::UsageBenchArgs;
use credex_api::bench::BenchArgs;
use credex_api::config::{redacted, ConfigArgs};
use credex_api::{telemetry, Application, Config};
use credex_store::SystemClock;

/// mimalloc: glibc's allocator was a quarter of the server's CPU under usage ingestion
/// (`perf`: `_int_malloc`, `_int_free`, `unlink_chunk`, `malloc_consolidate`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Credex: the credit exchange and ledger of an AI API provider.
#[derive(Debug, Parser)]
#[command(name = "credex", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (SQLite under ./data unless DATABASE_URL names PostgreSQL).
    Serve(ConfigArgs),
    /// Recompute every balance from the journal and report any difference; exits 1 on any.
    Check(ConfigArgs),
    /// Check every invariant of the spec over the whole database (the books, one hop, the
    /// closed loop, closed cycles, the market's chains, hard budgets); exits 1 on any breach.
    Audit(ConfigArgs),
    /// Export the books.
    Export {
        #[command(subcommand)]
        format: ExportFormat,
    },
    /// Print the OpenAPI document (as committed at openapi/openapi.json).
    Openapi,
    /// Measure throughput and latency.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Debug, Subcommand)]
enum ExportFormat {
    /// The journal in Beancount syntax, with the stored balances as balance assertions.
    Beancount {
        #[command(flatten)]
        config: ConfigArgs,
        /// File to write (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Transfers per second on SQLite and PostgreSQL, by batch size, submitters and mix.
    Ledger(BenchArgs),
    /// Latency of cost previews (POST /v1/estimate) at a fixed request rate, open-loop.
    Estimate(EstimateBenchArgs),
    /// Latency of emergency-credit buys (POST /v1/orgs/{org_id}/orders) against a book of
    /// listings, at a fixed request rate, open-loop.
    Buy(BuyBenchArgs),
    /// Throughput and latency of usage ingestion (POST /v1/orgs/{org_id}/usage) in batches,
    /// by concurrent clients, closed-loop.
    Usage(UsageBenchArgs),
    /// Server-side latency of every portal page on a database with a year of usage.
    Portal(PortalBenchArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("credex: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(args)?;
            let app = Application::build(&config).await?;
            app.run_until_stopped().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => check(&Config::load(args)?).await,
        Command::Audit(args) => audit(&Config::load(args)?).await,
        Command::Export {
            format: ExportFormat::Beancount { config, output },
        } => {
            let store = open(&Config::load(config)?).await?;
            let summary = match output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("create {}", path.display()))?;
                    let mut out = std::io::BufWriter::new(file);
                    let summary = credex_store::export_beancount(store.as_ref(), &mut out).await?;
                    out.flush()?;
                    summary
                }
                None => {
                    let mut out = std::io::BufWriter::new(std::io::stdout());
                    let summary = credex_store::export_beancount(store.as_ref(), &mut out).await?;
                    out.flush()?;
                    summary
                }
            };
            eprintln!(
                "exported {} accounts, {} transactions, {} balance assertions",
                summary.accounts, summary.transactions, summary.assertions
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            print!("{}", credex_api::openapi::document_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Ledger(args),
        } => {
            credex_api::bench::run(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Estimate(args),
        } => {
            credex_api::bench::estimate::run(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Buy(args),
        } => {
            credex_api::bench::buy::run(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Portal(args),
        } => {
            credex_api::bench::portal::run(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            what: BenchWhat::Usage(args),
        } => {
            credex_api::bench::usage::run(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn open(config: &Config) -> anyhow::Result<Arc<dyn credex_store::Store>> {
    let url = config.database_url()?;
    credex_store::connect(&url, Arc::new(SystemClock))
        .await
        .with_context(|| format!("open the database {}", redacted(&url)))
}

async fn audit(config: &Config) -> anyhow::Result<ExitCode> {
    let store = open(config).await?;
    let report = store.audit_invariants().await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.is_ok() {
        eprintln!(
            "audit passed: {} accounts, {} journal entries, {} fills, {} buybacks, {} budget \
             periods; every invariant holds",
            report.books.accounts,
            report.books.journal_entries,
            report.fills,
            report.buybacks,
            report.budget_periods
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(why) = &report.books_unreadable {
        eprintln!("books (rules 1, 2): the books check could not read the books: {why}");
    }
    if !report.books.is_ok() {
        eprintln!(
            "books (rules 1, 2): the books do NOT balance: see \"books\" in the report above"
        );
    }
    for line in report.breaches() {
        eprintln!("{line}");
    }
    eprintln!("audit FAILED: see the breaches above");
    Ok(ExitCode::from(1))
}

async fn check(config: &Config) -> anyhow::Result<ExitCode> {
    let store = open(config).await?;
    let report = store.check().await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report.is_ok() {
        eprintln!(
            "the books balance: {} accounts, {} journal entries, every balance equals its journal",
            report.accounts, report.journal_entries
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("the books do NOT balance: see the report above");
        Ok(ExitCode::from(1))
    }
}
