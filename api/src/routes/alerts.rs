//! Price alerts over HTTP: an org asks to be told by e-mail or webhook when a market's best
//! price falls to a level or below (see [`crate::alerts`]), lists its alerts and cancels them.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use credex_ledger::AssetCode;
use credex_store::{AlertChannel, AlertRecord, AlertState};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::access::{MarketTrade, OrgAccess, Read};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::startup::AppState;
use crate::views::rfc3339;

/// The most active alerts an org may have.
const ACTIVE_MAX: usize = 100;
/// The longest webhook URL.
const URL_MAX: usize = 2_048;

/// Where an alert goes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "channel", rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertTarget {
    /// An e-mail to this address (plain ASCII `local@domain`).
    Email {
        #[schema(max_length = 254, pattern = r"^[!-?A-~]+@[!-?A-~]+$")]
        email: String,
    },
    /// A signed `POST` to this `http://` URL (public addresses only). The body is JSON
    /// `{"type": "price_alert.triggered", "alert_id", "org_id", "asset",
    /// "below_per_1m_micro_cr", "price_per_1m_micro_cr", "at"}`; the header
    /// `Credex-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` is made with
    /// the alert's `webhook_secret`, and `Credex-Event-Id` is the alert's id.
    Webhook {
        #[schema(max_length = 2048, pattern = r"^http://[!-~]+$")]
        url: String,
    },
}

/// A new price alert.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertBody {
    /// The market's token asset, `TOK.<class>.<YYYY-MM>`.
    #[schema(
        pattern = r"^TOK\.[a-z][a-z0-9]{0,7}\.(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$"
    )]
    asset: String,
    /// Fires when the best decayed price is at or below this, µCR per 1M tokens (1 to 10^12).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    below_per_1m_micro_cr: u64,
    #[serde(deserialize_with = "input::object::required")]
    notify: AlertTarget,
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertStateName {
    /// Watching the market.
    Active,
    /// Fired and delivered: spent.
    Delivered,
    /// Cancelled by the org.
    Cancelled,
    /// Fired, but every delivery attempt failed (`last_error` says why).
    Failed,
}

/// How an alert is delivered.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelName {
    Email,
    Webhook,
}

/// A price alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    #[schema(format = Uuid)]
    pub id: String,
    pub asset: String,
    pub below_per_1m_micro_cr: u64,
    pub channel: ChannelName,
    /// The e-mail address or the URL.
    pub target: String,
    pub state: AlertStateName,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the price first met the level.
    #[schema(format = DateTime)]
    pub triggered_at: Option<String>,
    pub triggered_price_per_1m_micro_cr: Option<u64>,
    pub attempts: u32,
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// The key signing webhook deliveries: shown once, when the alert is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

impl From<&AlertRecord> for AlertView {
    fn from(alert: &AlertRecord) -> Self {
        Self {
            id: alert.id.to_string(),
            asset: alert.asset.to_string(),
            below_per_1m_micro_cr: alert.below_per_1m_micro_cr,
            channel: match alert.channel {
                AlertChannel::Email => ChannelName::Email,
                AlertChannel::Webhook => ChannelName::Webhook,
            },
            target: alert.target.clone(),
            state: match alert.state {
                AlertState::Active => AlertStateName::Active,
                AlertState::Delivered => AlertStateName::Delivered,
                AlertState::Cancelled => AlertStateName::Cancelled,
                AlertState::Failed => AlertStateName::Failed,
            },
            created_at: rfc3339(alert.created_at),
            triggered_at: alert.triggered_at.map(rfc3339),
            triggered_price_per_1m_micro_cr: alert.triggered_price,
            attempts: alert.attempts,
            last_error: alert.last_error.clone(),
            finished_at: alert.finished_at.map(rfc3339),
            webhook_secret: None,
        }
    }
}

/// Asks to be told when a market's best price falls to a level or below (members; API keys
/// need `market:trade`). The alert fires once. E-mail needs the server's SMTP relay
/// configured; webhooks go to public `http://` URLs, signed with a secret shown only here.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/price-alerts",
    tag = "market",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    request_body = AlertBody,
    responses(
        (status = 201, description = "The alert; `Location` names it", body = AlertView,
            headers(("Location" = String, description = "The alert: `/v1/orgs/{org_id}/price-alerts/{alert_id}`"))),
        (status = 400, description = "A malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without `market:trade`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no market for the asset", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "E-mail delivery is not configured, the market has ended, or the org has 100 active alerts", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid (such as an address that cannot take mail, or a URL that is not public `http://`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_price_alert(
    access: OrgAccess<MarketTrade>,
    body: web::Json<AlertBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let org = access.org;
    let body = body.into_inner();
    if !input::is_market_asset(&body.asset) {
        return Err(invalid("asset", "a token asset TOK.<class>.<YYYY-MM>"));
    }
    let asset = AssetCode::parse(&body.asset).map_err(|error| invalid("asset", error))?;
    if !(1..=credex_matching::ASK_MAX).contains(&body.below_per_1m_micro_cr) {
        return Err(invalid("below_per_1m_micro_cr", "1 to 10^12"));
    }
    let alerts = &state.alerts;
    let (channel, target, secret) = match body.notify {
        AlertTarget::Email { email } => {
            if !alerts.sends_email() {
                return Err(ApiError::new(
                    ProblemKind::Conflict,
                    "e-mail delivery is not configured on this server: use a webhook",
                )
                .into());
            }
            if !crate::notify::is_deliverable_address(&email) {
                return Err(invalid(
                    "notify.email",
                    "a plain ASCII address local@domain",
                ));
            }
            (AlertChannel::Email, email, None)
        }
        AlertTarget::Webhook { url } => {
            if url.len() > URL_MAX {
                return Err(invalid("notify.url", "at most 2048 characters"));
            }
            alerts
                .check_webhook_url(&url)
                .map_err(|reason| invalid("notify.url", reason))?;
            let bytes: [u8; 32] = rand::random();
            let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            (AlertChannel::Webhook, url, Some(format!("whsec_{secret}")))
        }
    };
    let store = state.ledger.store();
    let now = store.clock().now();
    let market = store
        .market(&asset)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, format!("no market trades {asset}")))?;
    if market.cycle_end <= now {
        return Err(ApiError::new(
            ProblemKind::Conflict,
            format!("the market {asset} has ended"),
        )
        .into());
    }
    let active = store
        .alerts_of(org, credex_store::review::REVIEW_PAGE_MAX)
        .await
        .map_err(|error| internal(&error))?
        .iter()
        .filter(|alert| alert.state == AlertState::Active)
        .count();
    if active >= ACTIVE_MAX {
        return Err(ApiError::new(
            ProblemKind::Conflict,
            format!("the org has {ACTIVE_MAX} active alerts; cancel one first"),
        )
        .into());
    }
    let record = AlertRecord {
        id: Uuid::now_v7(),
        org,
        asset,
        below_per_1m_micro_cr: body.below_per_1m_micro_cr,
        channel,
        target,
        secret: secret.clone(),
        created_at: now,
        state: AlertState::Active,
        triggered_at: None,
        triggered_price: None,
        attempts: 0,
        last_error: None,
        next_attempt_at: None,
        finished_at: None,
    };
    store
        .create_alert(&record)
        .await
        .map_err(|error| internal(&error))?;
    let mut view = AlertView::from(&record);
    view.webhook_secret = secret;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/orgs/{org}/price-alerts/{}", record.id),
        ))
        .json(view))
}

/// The org's price alerts, newest first (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/price-alerts",
    tag = "market",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    responses(
        (status = 200, description = "Up to 1,000 alerts, newest first", body = Vec<AlertView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn price_alerts(
    access: OrgAccess<Read>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let alerts = state
        .ledger
        .store()
        .alerts_of(access.org, credex_store::review::REVIEW_PAGE_MAX)
        .await
        .map_err(|error| internal(&error))?;
    let views: Vec<AlertView> = alerts.iter().map(AlertView::from).collect();
    Ok(HttpResponse::Ok().json(views))
}

async fn own_alert(
    state: &AppState,
    org: credex_ledger::OrgId,
    raw: &str,
) -> Result<AlertRecord, actix_web::Error> {
    let not_found = || -> actix_web::Error {
        ApiError::new(ProblemKind::NotFound, "no such alert in this org").into()
    };
    let id = input::uuid(raw).ok_or_else(not_found)?;
    state
        .ledger
        .store()
        .alert(id)
        .await
        .map_err(|error| internal(&error))?
        // A cancelled alert is deleted as far as its address goes (the list keeps it as
        // history, with its state).
        .filter(|alert| alert.org == org && alert.state != AlertState::Cancelled)
        .ok_or_else(not_found)
}

/// One of the org's price alerts (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/price-alerts/{alert_id}",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("alert_id" = String, Path, format = Uuid, description = "The alert"),
    ),
    responses(
        (status = 200, description = "The alert", body = AlertView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org or alert, or the alert was cancelled", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_price_alert(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let alert = own_alert(&state, access.org, &path.1).await?;
    Ok(HttpResponse::Ok().json(AlertView::from(&alert)))
}

/// Cancels a price alert (members; API keys need `market:trade`): it never fires, and its
/// address answers 404 from then on (the list keeps it, `cancelled`). An alert that already
/// fired is answered as it is.
#[utoipa::path(
    delete,
    path = "/v1/orgs/{org_id}/price-alerts/{alert_id}",
    tag = "market",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("alert_id" = String, Path, format = Uuid, description = "The alert"),
    ),
    responses(
        (status = 200, description = "The alert as it is now", body = AlertView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without `market:trade`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org or alert, or the alert was cancelled", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_price_alert(
    access: OrgAccess<MarketTrade>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let alert = own_alert(&state, access.org, &path.1).await?;
    let store = state.ledger.store();
    let cancelled = store
        .cancel_alert(alert.id, store.clock().now())
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| internal(&"an alert vanished"))?;
    Ok(HttpResponse::Ok().json(AlertView::from(&cancelled)))
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource("/v1/orgs/{org_id}/price-alerts")
                .app_data(
                    web::JsonConfig::default()
                        .limit(16 << 10)
                        .error_handler(crate::problem::json_error),
                )
                .route(web::get().to(price_alerts))
                .route(web::post().to(create_price_alert)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/price-alerts/{alert_id}")
                .route(web::get().to(get_price_alert))
                .route(web::delete().to(cancel_price_alert)),
        );
}
