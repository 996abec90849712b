//! `credex bench estimate`: the latency of cost previews (`POST /v1/estimate`) under a fixed
//! request rate.
//!
//! A whole `credex` server ([`Application`]) starts on a fresh database — SQLite in a temporary
//! directory, and PostgreSQL too when `--postgres` names a server (a database is created there
//! and dropped after). Through its HTTP API the benchmark signs in as the admin, creates an org,
//! credits its wallet and makes an API key with the `read` scope. Then it previews calls of
//! `--model` with a prompt of about `--prompt-tokens` tokens, by that key, **open-loop**: request
//! *i* is due at `start + i / rate` whether or not earlier ones have been answered, and its
//! latency is measured from the instant it was due, so a slow answer delays nothing and hides
//! nothing (no coordinated omission). A pool of `--clients` keep-alive connections sends the
//! requests; a request due while every connection is busy waits for one, and the wait counts.
//! The first `--warmup-seconds` are not counted. Every answer must be 200 with the expected
//! token count, or the run fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use credex_store::SystemClock;
use tokio::sync::{mpsc, Mutex};

use super::{ADMIN_EMAIL, ADMIN_PASSWORD};
use crate::bench::http::{Connection, HttpAnswer};
use crate::config::Config;
use crate::Application;

#[derive(Debug, Clone, clap::Args)]
pub struct EstimateBenchArgs {
    /// Requests per second, issued on schedule.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Seconds of the same load first, not counted.
    #[arg(long, default_value_t = 2)]
    pub warmup_seconds: u32,
    /// Keep-alive connections sending the requests.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// The model previewed.
    #[arg(long, default_value = "gpt-4o")]
    pub model: String,
    /// The prompt's size in tokens (English prose, at least this many tokens).
    #[arg(long, default_value_t = 4_000)]
    pub prompt_tokens: u64,
    /// Also measure on PostgreSQL: a server URL where the benchmark creates (and then drops)
    /// its own database.
    #[arg(long, hide_env_values = true)]
    pub postgres: Option<String>,
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct EstimateMeasurement {
    pub backend: &'static str,
    pub rate: u32,
    pub clients: usize,
    pub requests: usize,
    /// From the first request's due instant to the last answer.
    pub elapsed: Duration,
    /// Latency from the due instant (what a caller on schedule sees).
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Latency from the instant the request was written (the server's share).
    pub service_p50: Duration,
    pub service_p99: Duration,
}

impl EstimateMeasurement {
    /// Answers per second, in thousandths.
    pub fn achieved_milli_per_second(&self) -> u128 {
        let requests = u128::try_from(self.requests).unwrap_or(u128::MAX);
        requests.saturating_mul(1_000_000_000) / self.elapsed.as_micros().max(1)
    }
}

/// English prose, repeated until the prompt has enough tokens.
const PROSE: &str = "The quarterly report shows that the logistics team reduced average \
    delivery times by eleven percent while keeping costs flat. Most of the gain came from \
    rerouting shipments around the northern warehouse, which had been running at capacity \
    since the spring. The finance group asks whether the savings will hold through the \
    holiday season, when volumes usually double and temporary staff need training. ";

/// The head of the results' table.
const TABLE_HEAD: &str =
    "| backend | rate/s | clients | requests | achieved/s | p50 ms | p90 ms | p99 ms | max ms | server p50 ms | server p99 ms |";

pub async fn run(args: &EstimateBenchArgs) -> anyhow::Result<Vec<EstimateMeasurement>> {
    if args.rate == 0 || args.clients == 0 || args.seconds == 0 {
        bail!("--rate, --clients and --seconds must be positive");
    }
    let prompt = prompt(&args.model, args.prompt_tokens)?;
    super::on_fresh_databases(
        args.postgres.as_deref(),
        TABLE_HEAD,
        args,
        |backend, config, args| measure_backend(backend, config, args, &prompt),
    )
    .await
}

/// Prose of at least `tokens` tokens for `model`.
fn prompt(model: &str, tokens: u64) -> anyhow::Result<String> {
    let mut text = String::new();
    loop {
        let counted = credex_pricing::count_text(model, &text)?.tokens();
        if counted >= tokens {
            return Ok(text);
        }
        text.push_str(PROSE);
    }
}

async fn measure_backend(
    backend: &'static str,
    config: Config,
    args: &EstimateBenchArgs,
    prompt: &str,
) -> anyhow::Result<EstimateMeasurement> {
    let app = Application::build_with_clock(&config, Arc::new(SystemClock)).await?;
    let port = app.port();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let measured = async {
        let key = set_up(port).await?;
        let body = serde_json::to_vec(&serde_json::json!({
            "model": args.model, "prompt": prompt, "expected_output_tokens": 500
        }))?;
        let expected_tokens = {
            let mut connection = Connection::open(port).await?;
            let HttpAnswer {
                status,
                body: answer,
                ..
            } = connection
                .send("POST", "/v1/estimate", Some(&key), None, &body)
                .await?;
            if status != 200 {
                bail!("a preview answered {status}: {}", String::from_utf8_lossy(&answer));
            }
            let answer: serde_json::Value = serde_json::from_slice(&answer)?;
            answer["tokens"]["prompt"]
                .as_u64()
                .context("a preview without its token count")?
        };
        eprintln!(
            "bench estimate: {backend}, {} prompt tokens of {}, {} requests/s for {} s after {} s of warm-up",
            expected_tokens, args.model, args.rate, args.seconds, args.warmup_seconds
        );
        let load = Load {
            port,
            key: Arc::new(key),
            body: Arc::new(body),
            expected_tokens,
            rate: args.rate,
            clients: args.clients,
        };
        load.drive(args.warmup_seconds).await?;
        let samples = load.drive(args.seconds).await?;
        Ok(summarize(backend, args, &samples))
    }
    .await;
    handle.stop(true).await;
    server.await??;
    let measurement: EstimateMeasurement = measured?;
    let ms = |d: Duration| format!("{}.{:03}", d.as_millis(), d.as_micros() % 1_000);
    println!(
        "| {} | {} | {} | {} | {}.{} | {} | {} | {} | {} | {} | {} |",
        measurement.backend,
        measurement.rate,
        measurement.clients,
        measurement.requests,
        measurement.achieved_milli_per_second() / 1_000,
        measurement.achieved_milli_per_second() % 1_000 / 100,
        ms(measurement.p50),
        ms(measurement.p90),
        ms(measurement.p99),
        ms(measurement.max),
        ms(measurement.service_p50),
        ms(measurement.service_p99),
    );
    Ok(measurement)
}

/// Signs in as the admin, creates an org, credits its wallet and makes an API key; answers
/// the key.
async fn set_up(port: u16) -> anyhow::Result<String> {
    let mut connection = Connection::open(port).await?;
    let login = serde_json::json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD});
    let admin = connection
        .json("/v1/auth/login", None, None, &login)
        .await?;
    let admin = admin["access_token"]
        .as_str()
        .context("a token")?
        .to_owned();
    let org = serde_json::json!({"name": "Bench Robotics", "plan": "teams"});
    let org = connection
        .json("/v1/admin/orgs", Some(&admin), None, &org)
        .await?;
    let org = org["id"].as_str().context("an org")?.to_owned();
    let credit = serde_json::json!({
        "kind": "top_up", "amount_micro_cr": 1_000_000_000_000_u64, "reason": "bench"
    });
    let path = format!("/v1/admin/orgs/{org}/credits");
    connection
        .json(&path, Some(&admin), Some("bench-credit"), &credit)
        .await?;
    let key = serde_json::json!({"name": "bench", "scopes": ["read"]});
    let path = format!("/v1/orgs/{org}/api-keys");
    let key = connection.json(&path, Some(&admin), None, &key).await?;
    Ok(key["key"].as_str().context("a key")?.to_owned())
}

/// The load: previews by one API key, on schedule.
struct Load {
    port: u16,
    key: Arc<String>,
    body: Arc<Vec<u8>>,
    expected_tokens: u64,
    rate: u32,
    clients: usize,
}

/// One answered request: latency from its due instant, and from its send.
#[derive(Debug, Clone, Copy)]
struct Sample {
    due: Instant,
    from_due: Duration,
    from_send: Duration,
    answered: Instant,
}

impl Load {
    /// `seconds` of requests at `rate`, due on schedule.
    async fn drive(&self, seconds: u32) -> anyhow::Result<Vec<Sample>> {
        let total = u64::from(self.rate) * u64::from(seconds);
        let (due_tx, due_rx) = mpsc::unbounded_channel::<Instant>();
        let due_rx = Arc::new(Mutex::new(due_rx));
        let mut clients = Vec::with_capacity(self.clients);
        for _ in 0..self.clients {
            let mut connection = Connection::open(self.port).await?;
            let (due_rx, key, body) = (due_rx.clone(), self.key.clone(), self.body.clone());
            let expected = self.expected_tokens;
            clients.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let next = due_rx.lock().await.recv().await;
                    let Some(due) = next else {
                        return anyhow::Ok(samples);
                    };
                    let sent = Instant::now();
                    let HttpAnswer {
                        status,
                        body: answer,
                        ..
                    } = connection
                        .send("POST", "/v1/estimate", Some(&key), None, &body)
                        .await?;
                    let answered = Instant::now();
                    if status != 200 {
                        bail!(
                            "a preview answered {status}: {}",
                            String::from_utf8_lossy(&answer)
                        );
                    }
                    let answer: serde_json::Value = serde_json::from_slice(&answer)?;
                    if answer["tokens"]["prompt"].as_u64() != Some(expected) {
                        bail!(
                            "a preview counted {} tokens, not {expected}",
                            answer["tokens"]["prompt"]
                        );
                    }
                    samples.push(Sample {
                        due,
                        from_due: answered - due,
                        from_send: answered - sent,
                        answered,
                    });
                }
            }));
        }
        // The schedule runs on a thread of its own: its sleeps are precise to tens of
        // microseconds, where the async runtime's timer has a granularity of a millisecond.
        let rate = self.rate;
        let schedule = std::thread::spawn(move || {
            let start = Instant::now() + Duration::from_millis(10);
            let nanos_per_second = 1_000_000_000_u128;
            for i in 0..total {
                let offset = u128::from(i) * nanos_per_second / u128::from(rate);
                let due = start + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if due_tx.send(due).is_err() {
                    break;
                }
            }
        });
        let mut samples = Vec::new();
        for client in clients {
            samples.extend(client.await??);
        }
        // Every client has seen the channel close: the schedule has ended.
        schedule
            .join()
            .map_err(|_| anyhow::anyhow!("the schedule thread panicked"))?;
        if samples.len() != usize::try_from(total).unwrap_or(usize::MAX) {
            bail!("{} of {total} previews answered", samples.len());
        }
        Ok(samples)
    }
}

fn summarize(
    backend: &'static str,
    args: &EstimateBenchArgs,
    samples: &[Sample],
) -> EstimateMeasurement {
    let percentile = |sorted: &[Duration], p: usize| {
        sorted
            .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let mut from_due: Vec<Duration> = samples.iter().map(|s| s.from_due).collect();
    let mut from_send: Vec<Duration> = samples.iter().map(|s| s.from_send).collect();
    from_due.sort_unstable();
    from_send.sort_unstable();
    let first_due = samples.iter().map(|s| s.due).min();
    let last_answer = samples.iter().map(|s| s.answered).max();
    let elapsed = match (first_due, last_answer) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    EstimateMeasurement {
        backend,
        rate: args.rate,
        clients: args.clients,
        requests: samples.len(),
        elapsed,
        p50: percentile(&from_due, 50),
        p90: percentile(&from_due, 90),
        p99: percentile(&from_due, 99),
        max: from_due.last().copied().unwrap_or_default(),
        service_p50: percentile(&from_send, 50),
        service_p99: percentile(&from_send, 99),
    }
}
