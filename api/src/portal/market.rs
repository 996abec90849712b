//! The portal's market pages: every market's price now and its decay curve over the cycle,
//! depth and recent fills; listing tokens, amending and cancelling listings; buying with the
//! exact cost previewed before confirming (the confirmed order carries the previewed total as
//! its limit, so it can never cost more than was shown); selling to the provider at the
//! current buyback price.

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use credex_ledger::Timestamp;
use credex_pricing::{DecayCurve, DecayWindow};
use maud::{html, Markup};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::charts;
use super::session::Session;
use super::{
    check_form, count, cr, csrf_input, field, idempotency_input, int_at, layout, page,
    problem_banner, problem_page, see_other, str_at, text, when, Fields, FormErrors, OrgPage,
    Section,
};
use crate::startup::AppState;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/portal/o/{org}/market").route(web::get().to(markets)))
        .service(web::resource("/portal/o/{org}/market/{asset}").route(web::get().to(market)))
        .service(web::resource("/portal/o/{org}/market/{asset}/list").route(web::post().to(list)))
        .service(
            web::resource("/portal/o/{org}/market/{asset}/preview").route(web::post().to(preview)),
        )
        .service(web::resource("/portal/o/{org}/market/{asset}/buy").route(web::post().to(buy)))
        .service(web::resource("/portal/o/{org}/market/{asset}/sell").route(web::post().to(sell)))
        .service(
            web::resource("/portal/o/{org}/listings/{listing}/cancel")
                .route(web::post().to(cancel)),
        )
        .service(
            web::resource("/portal/o/{org}/listings/{listing}/amend").route(web::post().to(amend)),
        );
}

/// A whole number typed in a form (thousands separators allowed).
fn parse_count(text: &str) -> Option<u64> {
    let cleaned: String = text
        .trim()
        .chars()
        .filter(|c| *c != ',' && *c != '_')
        .collect();
    cleaned.parse().ok()
}

fn now(req: &HttpRequest) -> Timestamp {
    req.app_data::<web::Data<AppState>>()
        .map_or(Timestamp::from_micros(0), |state| {
            state.ledger.store().clock().now()
        })
}

fn instant(raw: &str) -> Option<Timestamp> {
    crate::input::instant("at", raw).ok()
}

/// The market's decay curve from its settings (as the API shows them).
fn curve_of(settings: &Value) -> Option<DecayCurve> {
    let curve = settings.get("curve")?;
    let floor: Decimal = curve.get("floor")?.as_str()?.parse().ok()?;
    match curve.get("kind")?.as_str()? {
        "linear" => DecayCurve::linear(floor).ok(),
        "half_life" => DecayCurve::half_life(curve.get("half_life_seconds")?.as_u64()?, floor).ok(),
        "stairstep" => {
            DecayCurve::stairstep(u32::try_from(curve.get("steps")?.as_u64()?).ok()?, floor).ok()
        }
        _ => None,
    }
}

/// The decay factor (in billionths) over the window, sampled at 48 points, x in hours.
pub fn curve_points(curve: &DecayCurve, open: Timestamp, end: Timestamp) -> Vec<(i128, i128)> {
    let Ok(window) = DecayWindow::new(open, end) else {
        return Vec::new();
    };
    let span = i128::from(end.as_micros()) - i128::from(open.as_micros());
    (0..=48i128)
        .map(|i| {
            let micros = i128::from(open.as_micros()) + span * i / 48;
            let at = Timestamp::from_micros(i64::try_from(micros).unwrap_or(i64::MAX));
            let hours = (micros - i128::from(open.as_micros())) / 3_600_000_000;
            (hours, i128::from(curve.factor(window, at).billionths()))
        })
        .collect()
}

fn percent_of_billionths(value: i128) -> String {
    format!("{}%", value / 10_000_000)
}

/// The decay curve of a market as a chart, with "now" marked.
fn curve_chart(req: &HttpRequest, market: &Value) -> Markup {
    let curve = curve_of(market.get("settings").unwrap_or(&Value::Null));
    let open = instant(&str_at(market, "/window_opens_at"));
    let end = instant(&str_at(market, "/cycle_ends_at"));
    let (Some(curve), Some(open), Some(end)) = (curve, open, end) else {
        return html! { p.muted { "No curve to draw." } };
    };
    let points = curve_points(&curve, open, end);
    let total_hours = points.last().map_or(1, |p| p.0.max(1));
    let now_hours =
        (i128::from(now(req).as_micros()) - i128::from(open.as_micros())) / 3_600_000_000;
    let labels = vec![
        (
            0,
            when(&str_at(market, "/window_opens_at"))
                .get(..10)
                .unwrap_or("")
                .to_owned(),
        ),
        (
            total_hours,
            when(&str_at(market, "/cycle_ends_at"))
                .get(..10)
                .unwrap_or("")
                .to_owned(),
        ),
    ];
    let marker = (0..=total_hours).contains(&now_hours).then_some(now_hours);
    let title = format!(
        "Decay curve of {}: share of the ask paid, from the window's opening to the cycle's end",
        str_at(market, "/asset")
    );
    charts::line(
        &title,
        &points,
        total_hours,
        &labels,
        marker,
        &percent_of_billionths,
    )
}

async fn markets(
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let org = OrgPage::of(&session, &path);
    let (listings_path, buybacks_path) = (org.api("/listings?limit=50"), org.api("/buybacks"));
    let (markets, listings, buybacks) = tokio::join!(
        session.get(&req, "/v1/markets"),
        session.get(&req, &listings_path),
        session.get(&req, &buybacks_path),
    );
    let (markets, listings) = match (markets, listings) {
        (Ok(m), Ok(l)) => (m, l),
        (Err(problem), _) | (_, Err(problem)) => {
            return Ok(problem_page(
                &req,
                &session,
                Some(&org),
                Section::Market,
                &problem,
            ));
        }
    };
    let done = req.uri().query().and_then(|q| q.strip_prefix("done="));
    let empty = Vec::new();
    let body = html! {
        h1 { "Market" }
        @if let Some(done) = done { div.banner.ok role="status" { (done_text(done)) } }
        p.muted { "Unused tokens of this cycle can be listed for other orgs to buy (you are paid in CR) or sold to the provider at its buyback price. Prices decay toward the cycle's end. Tokens bought here can only be spent, never resold." }
        div.table-wrap { table {
            thead { tr { th { "Market" } th { "Cycle" } th.num { "Best price now (per 1M)" } th.num { "Available at best" } th.num { "Buyback price (per 1M)" } th.num { "Decay factor" } th { "Window opens" } } }
            tbody {
                @for m in markets.as_array().unwrap_or(&empty) {
                    tr {
                        td { a href=(org.path(&format!("/market/{}", str_at(m, "/asset")))) { (str_at(m, "/asset")) } }
                        td { (str_at(m, "/cycle")) }
                        td.num { @match m.pointer("/best_price_now_per_1m_micro_cr").and_then(Value::as_i64) { Some(p) => (cr(i128::from(p))), None => span.muted { "no listings" } } }
                        td.num { (count(int_at(m, "/best_quantity_now"))) }
                        td.num { (cr(int_at(m, "/buyback_price_now_per_1m_micro_cr"))) }
                        td.num { (str_at(m, "/decay_factor_now")) }
                        td { (when(&str_at(m, "/window_opens_at"))) }
                    }
                }
            }
        } }
        h2 { "My listings" }
        (listings_table(&session, &org, &listings))
        @if let Ok(buybacks) = &buybacks {
            @if buybacks.as_array().is_some_and(|b| !b.is_empty()) {
                h2 { "Sold to the provider" }
                div.table-wrap { table {
                    thead { tr { th { "When" } th { "Market" } th.num { "Tokens" } th.num { "Price per 1M" } th.num { "Paid" } } }
                    tbody { @for b in buybacks.as_array().unwrap_or(&empty).iter().take(20) {
                        tr { td { (when(&str_at(b, "/at"))) } td { (str_at(b, "/asset")) } td.num { (count(int_at(b, "/quantity"))) } td.num { (cr(int_at(b, "/price_per_1m_micro_cr"))) } td.num { (cr(int_at(b, "/payout_micro_cr"))) } }
                    } }
                } }
            }
        }
    };
    Ok(page(
        &req,
        &session,
        StatusCode::OK,
        layout(&session, Some(&org), Section::Market, "Market", body),
    ))
}

fn done_text(done: &str) -> &'static str {
    match done {
        "listed" => "Your tokens are listed.",
        "sold" => "Sold to the provider; the CR is in your wallet.",
        "cancelled" => "The listing is cancelled; its open tokens are back in your allotment.",
        "amended" => "The listing is amended.",
        _ => "Done.",
    }
}

fn listings_table(session: &Session, org: &OrgPage, listings: &Value) -> Markup {
    let empty = Vec::new();
    let listings = listings.as_array().unwrap_or(&empty);
    html! {
        @if listings.is_empty() {
            p.muted { "No listings yet." }
        } @else {
            div.table-wrap { table {
                thead { tr { th { "Market" } th.num { "Ask (per 1M)" } th.num { "Price now" } th.num { "Listed" } th.num { "Filled" } th.num { "Open" } th { "State" } th { "Actions" } } }
                tbody {
                    @for l in listings {
                        @let id = str_at(l, "/id");
                        @let open = int_at(l, "/quantity_open");
                        tr data-listing=(id) {
                            td { (str_at(l, "/asset")) }
                            td.num { (cr(int_at(l, "/ask_per_1m_micro_cr"))) }
                            td.num { @if l.pointer("/price_now_per_1m_micro_cr").and_then(Value::as_i64).is_some() { (cr(int_at(l, "/price_now_per_1m_micro_cr"))) } }
                            td.num { (count(int_at(l, "/quantity_listed"))) }
                            td.num { (count(int_at(l, "/quantity_filled"))) }
                            td.num { (count(open)) }
                            td { span.pill { (str_at(l, "/state")) } }
                            td {
                                @if str_at(l, "/state") == "open" {
                                    div.actions {
                                        form.inline method="post" action=(org.path(&format!("/listings/{id}/amend"))) {
                                            (csrf_input(session)) (idempotency_input())
                                            label { span.hint { "New open quantity" } input name="quantity_open" inputmode="numeric" size="8" value=(open - 1); }
                                            button.secondary type="submit" { "Amend" }
                                        }
                                        form.inline method="post" action=(org.path(&format!("/listings/{id}/cancel"))) {
                                            (csrf_input(session)) (idempotency_input())
                                            button.danger type="submit" { "Cancel" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
        }
    }
}

/// What a market page's forms were sent with, and what went wrong, to draw them again.
#[derive(Debug, Default)]
struct Forms {
    values: Fields,
    list: FormErrors,
    buy: FormErrors,
    sell: FormErrors,
}

async fn market(
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let (org_id, asset) = path.into_inner();
    let org = OrgPage::of(&session, &org_id);
    Ok(market_page(
        &req,
        &session,
        &org,
        &asset,
        StatusCode::OK,
        &Forms::default(),
    )
    .await)
}

async fn market_page(
    req: &HttpRequest,
    session: &Session,
    org: &OrgPage,
    asset: &str,
    status: StatusCode,
    forms: &Forms,
) -> HttpResponse {
    let asset_path = super::session::url_encode(asset);
    let paths = [
        format!("/v1/markets/{asset_path}"),
        format!("/v1/markets/{asset_path}/depth?levels=10"),
        format!("/v1/markets/{asset_path}/fills?limit=10"),
        org.api("/balances"),
        org.api(&format!("/listings?asset={asset_path}&limit=20")),
    ];
    let (market, depth, fills, balances, listings) = tokio::join!(
        session.get(req, &paths[0]),
        session.get(req, &paths[1]),
        session.get(req, &paths[2]),
        session.get(req, &paths[3]),
        session.get(req, &paths[4]),
    );
    let market = match market {
        Ok(market) => market,
        Err(problem) => return problem_page(req, session, Some(org), Section::Market, &problem),
    };
    let empty = Vec::new();
    let available = |kind: &str| -> i128 {
        balances
            .as_ref()
            .ok()
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|b| str_at(b, "/asset") == asset && str_at(b, "/kind") == kind)
            .map(|b| int_at(b, "/balance/available"))
            .sum()
    };
    let wallet: i128 = balances
        .as_ref()
        .ok()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|b| str_at(b, "/asset") == "CR" && str_at(b, "/kind") == "wallet")
        .map(|b| int_at(b, "/balance/available"))
        .sum();
    let alloc = available("alloc");
    let buyback = int_at(&market, "/buyback_price_now_per_1m_micro_cr");
    let value = |name: &str| forms.values.get(name).cloned().unwrap_or_default();
    let sell_quantity = parse_count(&value("quantity")).unwrap_or(0);
    let done = req.uri().query().and_then(|q| q.strip_prefix("done="));
    let body = html! {
        h1 { (asset) }
        @if let Some(done) = done { div.banner.ok role="status" { (done_text(done)) } }
        div.grid {
            div.card { h2 { "Best price now" } div.figure { @match market.pointer("/best_price_now_per_1m_micro_cr").and_then(Value::as_i64) { Some(p) => (cr(i128::from(p))), None => "no listings" } } p.muted { "per 1M tokens · decay factor " (str_at(&market, "/decay_factor_now")) } }
            div.card { h2 { "Buyback price" } div.figure id="buyback-price" { (cr(buyback)) } p.muted { "per 1M tokens, paid by the provider now" } }
            div.card { h2 { "Your tokens" } div.figure { (count(alloc)) } p.muted { "in your allotment (listable) · " (count(available("acquired"))) " bought · " (count(available("escrow"))) " listed" } }
            div.card { h2 { "Your CR" } div.figure id="wallet" { (cr(wallet)) } p.muted { "available in your wallet" } }
        }
        h2 { "Decay over the cycle" }
        div.card { (curve_chart(req, &market)) p.muted { "Window opens " (when(&str_at(&market, "/window_opens_at"))) " UTC · cycle ends " (when(&str_at(&market, "/cycle_ends_at"))) " UTC · fee " (str_at(&market, "/settings/fee_rate")) " paid by the " (str_at(&market, "/settings/fee_payer")) } }
        div.grid {
            div.card {
                h2 { "Buy tokens" }
                @if forms.buy.field.is_none() { (problem_banner(forms.buy.banner.as_ref())) }
                form.stack method="post" action=(org.path(&format!("/market/{asset_path}/preview"))) {
                    (csrf_input(session))
                    (field("Quantity (tokens)", "buy_quantity", "text", &value("buy_quantity"), None, forms.buy.at("buy_quantity").or(forms.buy.at("quantity"))))
                    label { span { input type="checkbox" name="allow_provider_fill" value="true" checked[value("allow_provider_fill") == "true"]; " Fill the rest with emergency credits from the provider" } }
                    button type="submit" { "Preview cost" }
                }
            }
            div.card {
                h2 { "List tokens for sale" }
                @if forms.list.field.is_none() { (problem_banner(forms.list.banner.as_ref())) }
                form.stack method="post" action=(org.path(&format!("/market/{asset_path}/list"))) {
                    (csrf_input(session)) (idempotency_input())
                    (field("Quantity (tokens)", "list_quantity", "text", &value("list_quantity"), Some(&format!("up to {} in your allotment", count(alloc))), forms.list.at("list_quantity").or(forms.list.at("quantity"))))
                    (field("Ask per 1M tokens (CR)", "ask", "text", &value("ask"), Some("before decay"), forms.list.at("ask").or(forms.list.at("ask_per_1m_micro_cr"))))
                    (field("Minimum fill (tokens, optional)", "min_fill", "text", &value("min_fill"), None, forms.list.at("min_fill")))
                    button type="submit" { "List tokens" }
                }
            }
            div.card {
                h2 { "Sell to the provider" }
                p { "The provider pays " strong { (cr(buyback)) } " per 1M tokens now." }
                @if sell_quantity > 0 {
                    p id="buyback-quote" { "For " (count(i128::from(sell_quantity))) " tokens: about " strong { (cr(i128::from(sell_quantity) * buyback / 1_000_000)) } "." }
                }
                @if forms.sell.field.is_none() { (problem_banner(forms.sell.banner.as_ref())) }
                form.stack method="post" action=(org.path(&format!("/market/{asset_path}/sell"))) {
                    (csrf_input(session)) (idempotency_input())
                    (field("Quantity (tokens)", "quantity", "text", &value("quantity"), None, forms.sell.at("quantity")))
                    button type="submit" { "Sell to the provider" }
                }
            }
        }
        div.grid {
            div.card {
                h2 { "Depth" }
                @match &depth {
                    Ok(depth) if depth.as_array().is_some_and(|d| !d.is_empty()) => {
                        table { thead { tr { th.num { "Price now (per 1M)" } th.num { "Tokens" } th.num { "Listings" } } }
                            tbody { @for level in depth.as_array().unwrap_or(&empty) {
                                tr { td.num { (cr(int_at(level, "/price_per_1m_micro_cr"))) } td.num { (count(int_at(level, "/quantity"))) } td.num { (int_at(level, "/listings")) } }
                            } } }
                    }
                    _ => { p.muted { "No open listings." } }
                }
            }
            div.card {
                h2 { "Recent fills" }
                @match &fills {
                    Ok(fills) if fills.as_array().is_some_and(|f| !f.is_empty()) => {
                        table { thead { tr { th { "When" } th.num { "Tokens" } th.num { "Price (per 1M)" } th.num { "Cost" } } }
                            tbody { @for fill in fills.as_array().unwrap_or(&empty) {
                                tr { td { (when(&str_at(fill, "/at"))) @if fill.get("from_provider").and_then(Value::as_bool) == Some(true) { " " span.pill { "provider" } } } td.num { (count(int_at(fill, "/quantity"))) } td.num { (cr(int_at(fill, "/price_per_1m_micro_cr"))) } td.num { (cr(int_at(fill, "/cost_micro_cr"))) } }
                            } } }
                    }
                    _ => { p.muted { "No fills yet." } }
                }
            }
        }
        h2 { "My listings in this market" }
        @match &listings { Ok(listings) => { (listings_table(session, org, listings)) } Err(problem) => { (problem_banner(Some(problem))) } }
    };
    page(
        req,
        session,
        status,
        layout(session, Some(org), Section::Market, asset, body),
    )
}

/// A form's problem, drawn again on the market page.
/// The page a form was sent from.
struct Here<'a> {
    req: &'a HttpRequest,
    session: &'a Session,
    org: &'a OrgPage,
    asset: &'a str,
}

async fn again(
    here: &Here<'_>,
    fields: Fields,
    problem: super::api::Problem,
    which: &str,
    names: &[&str],
) -> HttpResponse {
    let status = problem.status;
    let errors = FormErrors::of(problem, names);
    let mut forms = Forms {
        values: fields,
        ..Forms::default()
    };
    match which {
        "list" => forms.list = errors,
        "buy" => forms.buy = errors,
        _ => forms.sell = errors,
    }
    market_page(here.req, here.session, here.org, here.asset, status, &forms).await
}

fn invalid(detail: &str) -> super::api::Problem {
    super::api::Problem {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        title: "The request is not valid".to_owned(),
        detail: detail.to_owned(),
    }
}

async fn list(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let (org_id, asset) = path.into_inner();
    let org = OrgPage::of(&session, &org_id);
    let here = Here {
        req: &req,
        session: &session,
        org: &org,
        asset: &asset,
    };
    let names = ["list_quantity", "ask", "min_fill"];
    let Some(quantity) = parse_count(text(&fields, "list_quantity")) else {
        let problem = invalid("list_quantity: a whole number of tokens, such as 250000");
        return Ok(again(&here, fields, problem, "list", &names).await);
    };
    let Ok(ask) = super::parse_cr(text(&fields, "ask")) else {
        let problem =
            invalid("ask: an amount of CR per 1M tokens, such as 2.5 (at most six decimals)");
        return Ok(again(&here, fields, problem, "list", &names).await);
    };
    let min_fill = match text(&fields, "min_fill") {
        "" => None,
        raw => match parse_count(raw) {
            Some(n) => Some(n),
            None => {
                let problem = invalid("min_fill: a whole number of tokens, or nothing");
                return Ok(again(&here, fields, problem, "list", &names).await);
            }
        },
    };
    let body = json!({ "asset": asset, "quantity": quantity, "ask_per_1m_micro_cr": ask, "min_fill": min_fill });
    let key = text(&fields, "idempotency_key").to_owned();
    let answer = session
        .send(&req, Method::POST, &org.api("/listings"), &body, Some(&key))
        .await;
    Ok(match answer {
        Ok(answer) if answer.is_success() => see_other(&format!(
            "{}?done=listed",
            org.path(&format!("/market/{}", super::session::url_encode(&asset)))
        )),
        Ok(answer) => {
            let problem = renamed(
                answer.problem(),
                &[
                    ("quantity", "list_quantity"),
                    ("ask_per_1m_micro_cr", "ask"),
                ],
            );
            again(&here, fields, problem, "list", &names).await
        }
        Err(problem) => again(&here, fields, problem, "list", &names).await,
    })
}

/// The problem with the API's field names put in the form's words.
fn renamed(mut problem: super::api::Problem, names: &[(&str, &str)]) -> super::api::Problem {
    for (api, form) in names {
        if let Some(rest) = problem.detail.strip_prefix(api) {
            if rest.starts_with([':', ' ']) {
                problem.detail = format!("{form}{rest}");
                break;
            }
        }
        let quoted = format!("`{api}`");
        if problem.detail.contains(&quoted) {
            problem.detail = problem.detail.replace(&quoted, &format!("`{form}`"));
            break;
        }
    }
    problem
}

async fn preview(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let (org_id, asset) = path.into_inner();
    let org = OrgPage::of(&session, &org_id);
    let here = Here {
        req: &req,
        session: &session,
        org: &org,
        asset: &asset,
    };
    let names = ["buy_quantity"];
    let Some(quantity) = parse_count(text(&fields, "buy_quantity")).filter(|q| *q > 0) else {
        let problem = invalid("buy_quantity: a whole number of tokens, such as 100000");
        return Ok(again(&here, fields, problem, "buy", &names).await);
    };
    let allow_provider = text(&fields, "allow_provider_fill") == "true";
    let asset_path = super::session::url_encode(&asset);
    let quote = session
        .get(
            &req,
            &format!("/v1/markets/{asset_path}/quote?quantity={quantity}"),
        )
        .await;
    let quote = match quote {
        Ok(quote) => quote,
        Err(problem) => {
            let problem = renamed(problem, &[("quantity", "buy_quantity")]);
            return Ok(again(&here, fields, problem, "buy", &names).await);
        }
    };
    let available = int_at(&quote, "/available");
    let from_listings = int_at(&quote, "/buyer_pays_micro_cr");
    let provider_rest = if allow_provider {
        quote
            .pointer("/provider_rest_micro_cr")
            .and_then(Value::as_i64)
            .map(i128::from)
    } else {
        None
    };
    let covered = available == i128::from(quantity) || provider_rest.is_some();
    let total = from_listings + provider_rest.unwrap_or(0);
    let body = html! {
        h1 { "Confirm your purchase" }
        div.card id="cost-preview" {
            h2 { "Cost preview" }
            table {
                tbody {
                    tr { th { "Market" } td { (asset) } }
                    tr { th { "Tokens asked for" } td.num { (count(i128::from(quantity))) } }
                    tr { th { "Available from listings" } td.num { (count(available)) } }
                    tr { th { "Cost of the listed tokens" } td.num { (cr(int_at(&quote, "/cost_micro_cr"))) } }
                    tr { th { "Fee" } td.num { (cr(int_at(&quote, "/fee_micro_cr"))) } }
                    @if let Some(rest) = provider_rest { tr { th { "Emergency credits from the provider" } td.num { (cr(rest)) } } }
                    tr { th { "You pay at most" } td.num { strong id="preview-total" { (cr(total)) } } }
                }
            }
            p.muted { "Quoted at " (when(&str_at(&quote, "/at"))) " UTC. Prices only fall as the cycle ends; the order will not spend more than this total." }
            @if !covered {
                div.banner.note role="status" { "Only " (count(available)) " tokens are listed now: the order buys what is there (immediate or cancel)." }
            }
        }
        @if total > 0 {
            form.stack method="post" action=(org.path(&format!("/market/{asset_path}/buy"))) {
                (csrf_input(&session)) (idempotency_input())
                input type="hidden" name="buy_quantity" value=(quantity);
                input type="hidden" name="max_total" value=(total);
                @if allow_provider { input type="hidden" name="allow_provider_fill" value="true"; }
                div.actions {
                    button type="submit" { "Confirm purchase" }
                    a.button.secondary href=(org.path(&format!("/market/{asset_path}"))) { "Back" }
                }
            }
        } @else {
            p { "Nothing can be bought now. " a href=(org.path(&format!("/market/{asset_path}"))) { "Back to the market" } }
        }
    };
    Ok(page(
        &req,
        &session,
        StatusCode::OK,
        layout(
            &session,
            Some(&org),
            Section::Market,
            "Confirm your purchase",
            body,
        ),
    ))
}

async fn buy(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let (org_id, asset) = path.into_inner();
    let org = OrgPage::of(&session, &org_id);
    let here = Here {
        req: &req,
        session: &session,
        org: &org,
        asset: &asset,
    };
    let names = ["buy_quantity"];
    let (Some(quantity), Some(max_total)) = (
        parse_count(text(&fields, "buy_quantity")),
        parse_count(text(&fields, "max_total")),
    ) else {
        let problem = invalid("buy_quantity: preview the purchase again");
        return Ok(again(&here, fields, problem, "buy", &names).await);
    };
    let body = json!({
        "asset": asset,
        "quantity": quantity,
        "limit": { "kind": "total", "micro_cr": max_total },
        "allow_provider_fill": text(&fields, "allow_provider_fill") == "true",
    });
    let key = text(&fields, "idempotency_key").to_owned();
    let answer = session
        .send(&req, Method::POST, &org.api("/orders"), &body, Some(&key))
        .await;
    let order = match answer.and_then(|answer| answer.json::<Value>()) {
        Ok(order) => order,
        Err(problem) => {
            let problem = renamed(problem, &[("quantity", "buy_quantity")]);
            return Ok(again(&here, fields, problem, "buy", &names).await);
        }
    };
    let asset_path = super::session::url_encode(&asset);
    let empty = Vec::new();
    let body = html! {
        h1 { "Purchase done" }
        div.banner.ok role="status" id="order-result" {
            "Bought " strong { (count(int_at(&order, "/filled"))) } " tokens of " (asset) " for " strong { (cr(int_at(&order, "/buyer_paid_micro_cr"))) } "."
            @if int_at(&order, "/unfilled") > 0 { " " (count(int_at(&order, "/unfilled"))) " could not be filled (" (str_at(&order, "/stop_reason")) ")." }
        }
        div.table-wrap { table {
            thead { tr { th.num { "Tokens" } th.num { "Price (per 1M)" } th.num { "Cost" } th.num { "Fee" } th { "From" } } }
            tbody { @for fill in order.get("fills").and_then(Value::as_array).unwrap_or(&empty) {
                tr { td.num { (count(int_at(fill, "/quantity"))) } td.num { (cr(int_at(fill, "/price_per_1m_micro_cr"))) } td.num { (cr(int_at(fill, "/cost_micro_cr"))) } td.num { (cr(int_at(fill, "/fee_micro_cr"))) } td { @if str_at(fill, "/listing_id").is_empty() { "provider" } @else { "a listing" } } }
            } }
        } }
        p { "Bought tokens are spent by your usage before your allotment; they cannot be resold. " a href=(org.path(&format!("/market/{asset_path}"))) { "Back to the market" } }
    };
    Ok(page(
        &req,
        &session,
        StatusCode::OK,
        layout(&session, Some(&org), Section::Market, "Purchase done", body),
    ))
}

async fn sell(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let (org_id, asset) = path.into_inner();
    let org = OrgPage::of(&session, &org_id);
    let here = Here {
        req: &req,
        session: &session,
        org: &org,
        asset: &asset,
    };
    let names = ["quantity"];
    let Some(quantity) = parse_count(text(&fields, "quantity")) else {
        let problem = invalid("quantity: a whole number of tokens, such as 100000");
        return Ok(again(&here, fields, problem, "sell", &names).await);
    };
    let body = json!({ "asset": asset, "quantity": quantity });
    let key = text(&fields, "idempotency_key").to_owned();
    let answer = session
        .send(&req, Method::POST, &org.api("/buybacks"), &body, Some(&key))
        .await;
    Ok(match answer {
        Ok(answer) if answer.is_success() => see_other(&format!(
            "{}?done=sold",
            org.path(&format!("/market/{}", super::session::url_encode(&asset)))
        )),
        Ok(answer) => again(&here, fields, answer.problem(), "sell", &names).await,
        Err(problem) => again(&here, fields, problem, "sell", &names).await,
    })
}

async fn listing_action(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    fields: Fields,
    amend: bool,
) -> Result<HttpResponse, actix_web::Error> {
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let (org_id, listing) = path.into_inner();
    let org = OrgPage::of(&session, &org_id);
    let key = text(&fields, "idempotency_key").to_owned();
    let api_path = org.api(&format!(
        "/listings/{}",
        super::session::url_encode(&listing)
    ));
    let answer = if amend {
        let Some(quantity) = parse_count(text(&fields, "quantity_open")) else {
            let problem = invalid("quantity_open: a whole number of tokens");
            return Ok(problem_page(
                &req,
                &session,
                Some(&org),
                Section::Market,
                &problem,
            ));
        };
        session
            .send(
                &req,
                Method::PATCH,
                &api_path,
                &json!({ "quantity_open": quantity }),
                Some(&key),
            )
            .await
    } else {
        session
            .call(
                &req,
                super::api::Call::get(&api_path)
                    .method(Method::DELETE)
                    .idempotent(key),
            )
            .await
    };
    Ok(match answer {
        Ok(answer) if answer.is_success() => see_other(&format!(
            "{}?done={}",
            org.path("/market"),
            if amend { "amended" } else { "cancelled" }
        )),
        Ok(answer) => problem_page(
            &req,
            &session,
            Some(&org),
            Section::Market,
            &answer.problem(),
        ),
        Err(problem) => problem_page(&req, &session, Some(&org), Section::Market, &problem),
    })
}

async fn cancel(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    listing_action(req, path, form.into_inner(), false).await
}

async fn amend(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    listing_action(req, path, form.into_inner(), true).await
}

#[cfg(test)]
mod tests {
    use crate::portal::parse_cr;

    #[test]
    fn cr_amounts_are_read_exactly() {
        assert_eq!(parse_cr("2.5"), Ok(2_500_000));
        assert_eq!(parse_cr("1,000"), Ok(1_000_000_000));
        assert_eq!(parse_cr("0.000001"), Ok(1));
        assert_eq!(parse_cr(".5"), Ok(500_000));
        assert_eq!(parse_cr("3 CR"), Ok(3_000_000));
        assert!(parse_cr("0.0000001").is_err());
        assert!(parse_cr("-1").is_err());
        assert!(parse_cr("1e3").is_err());
        assert!(parse_cr("").is_err());
        assert!(parse_cr("99999999999999999999").is_err());
    }
}
