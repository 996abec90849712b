//! [`Application`]: binds its listener, opens the ledger, starts jobs, serves until stopped.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use credex_ledger::{AssetCode, Clock};
use credex_pricing::CrFaceValue;
use credex_store::{Ledger, Store, SystemClock};
use tokio::sync::watch;

use crate::alerts::Alerts;
use crate::auth::access::Authenticator;
use crate::auth::session::{self, Sessions};
use crate::auth::{bootstrap, jwt};
use crate::config::{redacted, Config};
use crate::delivery::Delivery;
use crate::market::Market;
use crate::metrics::Metrics;
use crate::ratelimit::{Limit, RateLimiter, RateLimits};
use crate::{catalog, jobs, metrics, openapi, problem, ratelimit, routes};

/// The metrics registry, sampling the ledger's counters and its database pool at each scrape.
fn observed(
    ledger: &Arc<Ledger>,
    usage: &Arc<crate::usage::Usage>,
    delivery: &Arc<Delivery>,
) -> Metrics {
    let metrics = Metrics::new();
    let ledger = ledger.clone();
    let usage = usage.clone();
    let delivery = delivery.clone();
    metrics.on_render(move |metrics| {
        usage.counters().render(metrics);
        delivery.counters().render(metrics);
        for (code, result, total) in ledger.transfer_counts() {
            metrics.set_transfers_total(code, result, total);
        }
        let store = ledger.store();
        let pool = store.pool_status();
        metrics.set_pool(&store.backend().to_string(), pool.size, pool.idle);
    });
    metrics
}

/// What [`assemble`] opens: the parts for [`app`], and the store and ledger behind them.
#[derive(Debug)]
pub struct Assembled {
    pub parts: Parts,
    pub store: Arc<dyn Store>,
    pub ledger: Arc<Ledger>,
    pub market: Arc<Market>,
    pub alerts: Arc<Alerts>,
    pub delivery: Arc<Delivery>,
}

/// Opens the database (running migrations), the ledger, the first admin and the signing key:
/// everything but the listener.
pub async fn assemble(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Assembled> {
    let url = config.database_url()?;
    tracing::info!(database = %redacted(&url), "opening the ledger");
    let store = credex_store::connect(&url, clock)
        .await
        .with_context(|| format!("open the database {}", redacted(&url)))?;
    let ledger = Arc::new(Ledger::with_defaults(store.clone()));
    ledger
        .ensure_asset(&AssetCode::credit())
        .await
        .context("create the credit asset and the provider's accounts")?;
    let seeded = catalog::seed_builtin(store.as_ref())
        .await
        .context("seed the built-in model catalog")?;
    if seeded > 0 {
        tracing::info!(models = seeded, "added built-in models to the catalog");
    }
    let now = store.clock().now();
    if let Some((email, password)) = bootstrap::ensure_admin(store.as_ref(), config, now).await? {
        // Printed once, to standard output, never logged.
        println!("credex: created the first admin {email} with password {password}");
        println!("credex: sign in and change it; it is not shown again");
    }
    let secret = bootstrap::signing_secret(store.as_ref(), config, now).await?;
    let retired = config.jwt_previous_secrets.clone();
    let keys = jwt::Keys::from_secrets(session::ISSUER, session::AUDIENCE, secret, retired)
        .map_err(|error| anyhow::anyhow!("CREDEX_JWT_SECRET: {error}"))?;
    let market = Arc::new(Market::new(ledger.clone(), config.market_policy));
    let alerts = Arc::new(
        Alerts::new(config.smtp.as_ref(), config.webhooks_allow_private)
            .map_err(|error| anyhow::anyhow!("the SMTP configuration: {error}"))?,
    );
    let usage = Arc::new(crate::usage::Usage::new(
        ledger.clone(),
        config.cr_face_value,
    ));
    let delivery = Arc::new(
        Delivery::new(
            store.clone(),
            config
                .smtp
                .as_ref()
                .map(|(host, port, _)| (host.as_str(), *port)),
            config.outbox_dir.clone(),
            &config.mail_from,
            config.webhooks_allow_private,
        )
        .context("the e-mail configuration")?,
    );
    let parts = Parts {
        state: web::Data::new(AppState {
            ledger: ledger.clone(),
            cr_face_value: config.cr_face_value,
            market: market.clone(),
            alerts: alerts.clone(),
            delivery: delivery.clone(),
            usage: usage.clone(),
            market_velocity: Arc::new(RateLimiter::new(
                Limit::new(
                    config.market_orders_per_minute,
                    config.market_orders_per_minute,
                ),
                100_000,
            )),
        }),
        auth: web::Data::new(Authenticator {
            store: store.clone(),
            sessions: Sessions::new(keys, store.clock().clone()),
            keys: Arc::default(),
        }),
        metrics: web::Data::new(observed(&ledger, &usage, &delivery)),
        limits: web::Data::new(RateLimits::default()),
    };
    Ok(Assembled {
        parts,
        store,
        ledger,
        market,
        alerts,
        delivery,
    })
}

/// Everything the application's handlers reach, shared by all workers.
#[derive(Debug, Clone)]
pub struct Parts {
    pub state: web::Data<AppState>,
    pub auth: web::Data<Authenticator>,
    pub metrics: web::Data<Metrics>,
    pub limits: web::Data<RateLimits>,
}

/// The application: every route and middleware, for the server and for in-process tests.
pub fn app(
    parts: Parts,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    // The last `wrap` is the outermost: metrics see every answer, problem details shape every
    // error, rate limits come before any work.
    let portal = crate::portal::PortalApi::new(parts.clone());
    App::new()
        .wrap(from_fn(ratelimit::per_address))
        .wrap(from_fn(problem::problem_details))
        .wrap(from_fn(metrics::http_metrics))
        .app_data(parts.state)
        .app_data(parts.auth)
        .app_data(parts.metrics)
        .app_data(parts.limits)
        .app_data(portal)
        .app_data(
            web::JsonConfig::default()
                .limit(1 << 20)
                .error_handler(problem::json_error),
        )
        .app_data(web::QueryConfig::default().error_handler(problem::query_error))
        .configure(routes::health::configure)
        .configure(routes::auth::configure)
        .configure(routes::orgs::configure)
        .configure(routes::ledger::configure)
        .configure(routes::models::configure)
        .configure(routes::estimate::configure)
        .configure(routes::cycles::configure)
        .configure(routes::market::configure)
        .configure(routes::review::configure)
        .configure(routes::alerts::configure)
        .configure(routes::usage::configure)
        .configure(routes::statements::configure)
        .configure(routes::budgets::configure)
        .configure(routes::reservations::configure)
        .configure(routes::overdraft::configure)
        .configure(routes::webhooks::configure)
        .configure(routes::reports::configure)
        .configure(openapi::configure)
        .configure(crate::portal::configure)
        .service(web::resource("/metrics").route(web::get().to(metrics::metrics_handler)))
}

/// What every request handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub ledger: Arc<Ledger>,
    /// What one CR is worth in USD.
    pub cr_face_value: CrFaceValue,
    /// The market service.
    pub market: Arc<Market>,
    /// Price alerts' delivery.
    pub alerts: Arc<Alerts>,
    /// Budget alerts' and reports' delivery.
    pub delivery: Arc<Delivery>,
    /// How many market writes each org may send per minute.
    pub market_velocity: Arc<RateLimiter>,
    /// Usage recording.
    pub usage: Arc<crate::usage::Usage>,
}

/// A running server: its port is known before it serves (bind to port 0 in tests).
pub struct Application {
    port: u16,
    server: Server,
    ledger: Arc<Ledger>,
    stop_jobs: watch::Sender<bool>,
    jobs: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let demo_config;
        let config = if config.demo {
            demo_config = crate::demo::with_demo_admin(config);
            &demo_config
        } else {
            config
        };
        let Assembled {
            parts,
            store,
            ledger,
            market,
            alerts,
            delivery,
        } = assemble(config, clock).await?;

        let listener = TcpListener::bind(&config.bind)
            .with_context(|| format!("listen on {}", config.bind))?;
        let port = listener.local_addr()?.port();
        if config.demo {
            let url = crate::demo::portal_url(&config.bind, port);
            crate::demo::run(&parts, config, &url).await?;
        }
        let server = HttpServer::new(move || app(parts.clone()))
            .shutdown_timeout(30)
            .listen(listener)?
            .run();

        let (stop_jobs, stopped) = watch::channel(false);
        let jobs = vec![
            jobs::spawn_expiry(store.clone(), Duration::from_secs(1), stopped.clone()),
            jobs::spawn_cycles(ledger.clone(), Duration::from_secs(60), stopped.clone()),
            jobs::spawn_auto_sales(market.clone(), Duration::from_secs(10), stopped.clone()),
            crate::alerts::spawn(alerts, market, Duration::from_secs(10), stopped.clone()),
            crate::delivery::spawn(delivery, Duration::from_secs(2), stopped.clone()),
            jobs::spawn_review(store.clone(), Duration::from_secs(300), stopped.clone()),
            jobs::spawn_history_purge(store.clone(), Duration::from_secs(3_600), stopped.clone()),
            jobs::spawn_idempotency_purge(store, Duration::from_secs(3_600), stopped),
        ];
        tracing::info!(port, "credex is listening");
        Ok(Self {
            port,
            server,
            ledger,
            stop_jobs,
            jobs,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that stops the server as SIGTERM would (with `graceful`), for in-process use.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT or SIGTERM: then in-flight requests finish, every transfer already
    /// taken commits, and the jobs stop.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self.server.await;
        tracing::info!("server stopped; committing what was taken");
        self.ledger.close().await;
        let _ = self.stop_jobs.send(true);
        for job in self.jobs {
            let _ = job.await;
        }
        self.ledger.store().close().await;
        served.context("the HTTP server failed")
    }
}
