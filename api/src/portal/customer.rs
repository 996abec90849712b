//! The portal's customer pages: an org's overview, usage and cost, budgets, API keys, webhooks
//! and the cost preview. Each page asks the API what it shows (concurrently when the calls
//! are independent) and sends it what its forms say; the API has the last word on every rule.

use std::collections::HashMap;

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde_json::{json, Value};

use super::api::{Answer, Call, Problem};
use super::charts::{bars, Datum};
use super::session::{url_encode, Session};
use super::{
    bool_at, check_form, count, cr, csrf_input, field, form_banner, idempotency_input, int_at,
    items_at, layout, page, problem_page, see_other, select, str_at, text, when, Fields,
    FormErrors, OrgPage, Section,
};

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/portal/o/{org}").route(web::get().to(overview)))
        .service(web::resource("/portal/o/{org}/usage").route(web::get().to(usage)))
        .service(web::resource("/portal/o/{org}/usage.csv").route(web::get().to(usage_csv)))
        .service(
            web::resource("/portal/o/{org}/budgets")
                .route(web::get().to(budgets))
                .route(web::post().to(create_budget)),
        )
        .service(
            web::resource("/portal/o/{org}/budgets/{id}/delete")
                .route(web::post().to(delete_budget)),
        )
        .service(
            web::resource("/portal/o/{org}/keys")
                .route(web::get().to(keys))
                .route(web::post().to(create_key)),
        )
        .service(
            web::resource("/portal/o/{org}/keys/{id}/revoke").route(web::post().to(revoke_key)),
        )
        .service(
            web::resource("/portal/o/{org}/webhooks")
                .route(web::get().to(webhooks))
                .route(web::post().to(create_webhook)),
        )
        .service(web::resource("/portal/o/{org}/webhooks/{id}").route(web::get().to(webhook)))
        .service(
            web::resource("/portal/o/{org}/webhooks/{id}/delete")
                .route(web::post().to(delete_webhook)),
        )
        .service(
            web::resource("/portal/o/{org}/estimate")
                .route(web::get().to(estimate_page))
                .route(web::post().to(estimate)),
        );
}

// ---------------------------------------------------------------------------------------------
// Helpers

const DAY_SECONDS: i64 = 86_400;

/// Now by the API's clock (which tests may move), to the second.
fn now(req: &HttpRequest) -> jiff::Timestamp {
    let seconds = req
        .app_data::<web::Data<crate::startup::AppState>>()
        .map_or_else(
            || jiff::Timestamp::now().as_second(),
            |state| {
                state
                    .ledger
                    .store()
                    .clock()
                    .now()
                    .as_micros()
                    .div_euclid(1_000_000)
            },
        );
    jiff::Timestamp::from_second(seconds).unwrap_or_else(|_| jiff::Timestamp::now())
}

/// `days` days before `at`, to the second, as RFC 3339.
fn days_before(at: jiff::Timestamp, days: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(
        at.as_second()
            .saturating_sub(days.saturating_mul(DAY_SECONDS)),
    )
    .unwrap_or(at)
}

fn parse_time(text: &str) -> Option<jiff::Timestamp> {
    text.parse().ok()
}

/// The elements of the array at `pointer` (none when absent).
/// The answer if it is 2xx, its problem otherwise.
fn success(answer: Result<Answer, Problem>) -> Result<Answer, Problem> {
    let answer = answer?;
    if answer.is_success() {
        Ok(answer)
    } else {
        Err(answer.problem())
    }
}

/// The form's idempotency key, if it has one.
fn key_of(fields: &Fields) -> Option<&str> {
    Some(text(fields, "idempotency_key")).filter(|key| !key.is_empty())
}

/// A form error of the portal's own (before the API is asked).
fn local_error(name: &str, detail: &str) -> FormErrors {
    FormErrors {
        field: Some((name.to_owned(), detail.to_owned())),
        banner: None,
    }
}

/// `part` of `whole` in percent (0 when `whole` is not positive), rounded down.
fn percent(part: i128, whole: i128) -> i128 {
    if whole <= 0 {
        if part > 0 {
            100
        } else {
            0
        }
    } else {
        part.max(0).saturating_mul(100) / whole
    }
}

/// A progress bar: `used` of `limit`; amber from 75 %, red from 100 %.
fn progress(label: &str, used: i128, limit: i128) -> Markup {
    let pct = percent(used, limit);
    let width = pct.clamp(0, 100);
    let warn = (75..100).contains(&pct);
    let over = pct >= 100;
    html! {
        div.bar.warn[warn].over[over] role="progressbar" aria-label=(label)
            aria-valuemin="0" aria-valuemax="100" aria-valuenow=(width)
            aria-valuetext=(format!("{pct}%")) {
            span style=(format!("width:{width}%")) {}
        }
    }
}

/// The `done` banner of a page a form redirected to.
fn done_banner(query: &Fields, messages: &[(&str, &str)]) -> Markup {
    let done = text(query, "done");
    let message = messages
        .iter()
        .find(|(key, _)| *key == done)
        .map(|(_, message)| *message);
    html! {
        @if let Some(message) = message {
            div.banner.ok role="status" { (message) }
        }
    }
}

/// The banner of a form's problem, unless it is shown at a field.
fn value<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields.get(name).map_or("", String::as_str)
}

fn checked(fields: &Fields, name: &str) -> bool {
    !text(fields, name).is_empty()
}

/// A labelled checkbox.
fn checkbox(label: &str, name: &str, on: bool) -> Markup {
    let id = format!("f-{name}");
    html! {
        label for=(id) style="display:flex;gap:.4rem;align-items:center;font-weight:400" {
            input id=(id) type="checkbox" name=(name) value="on" checked[on];
            (label)
        }
    }
}

/// A positive CR amount written by a person, in µCR.
fn parse_cr(input: &str) -> Result<i64, &'static str> {
    let micro = super::parse_cr(input)?;
    if micro == 0 {
        return Err("the amount must be more than zero");
    }
    i64::try_from(micro).map_err(|_| "that amount is too large")
}

/// A part of a page the API would not give (a plan without the feature, say): a quiet note,
/// not an error, so the rest of the page stands.
fn unavailable(problem: &Problem) -> Markup {
    html! {
        p.muted role="note" {
            "Not available: " (problem.title)
            @if !problem.detail.is_empty() { " — " (problem.detail) }
        }
    }
}

fn nothing_yet(what: &str) -> Markup {
    html! { p.muted { (what) } }
}

fn token_or_cr(asset: &str, amount: i128) -> String {
    if asset == "CR" {
        cr(amount)
    } else {
        format!("{} tokens", count(amount))
    }
}

fn cr_unit(micro: i128) -> String {
    cr(micro)
}

fn org_of(session: &Session, org: &str) -> OrgPage {
    OrgPage::of(session, org)
}

// ---------------------------------------------------------------------------------------------
// Overview

async fn overview(
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    let now = now(&req);
    let paths = [
        org.api("/balances"),
        org.api("/budget-alerts"),
        org.api("/budgets"),
    ];
    let (balances, cycles, alerts, budgets_list) = tokio::join!(
        session.get(&req, &paths[0]),
        session.get(&req, "/v1/cycles"),
        session.get(&req, &paths[1]),
        session.get(&req, &paths[2]),
    );
    let balances = match balances {
        Ok(v) => v,
        Err(problem) => {
            return Ok(problem_page(
                &req,
                &session,
                Some(&org),
                Section::Overview,
                &problem,
            ))
        }
    };
    let cycles = cycles.unwrap_or(Value::Null);
    let current = items_at(&cycles, "").iter().find(|c| {
        let starts = parse_time(&str_at(c, "/starts_at"));
        let ends = parse_time(&str_at(c, "/ends_at"));
        matches!((starts, ends), (Some(s), Some(e)) if s <= now && now < e)
    });
    let cycle_name = current.map(|c| str_at(c, "/cycle")).unwrap_or_default();
    let cycle_start = current.map(|c| str_at(c, "/starts_at")).unwrap_or_default();
    let days_left = current
        .and_then(|c| parse_time(&str_at(c, "/ends_at")))
        .map(|ends| {
            let secs = ends.as_second().saturating_sub(now.as_second()).max(0);
            secs.saturating_add(DAY_SECONDS - 1) / DAY_SECONDS
        });
    // What each class's allotment has paid this cycle.
    let by_class = if cycle_start.is_empty() {
        Value::Null
    } else {
        session
            .get(
                &req,
                &org.api(&format!(
                    "/usage/totals?group_by=class&from={}",
                    url_encode(&cycle_start)
                )),
            )
            .await
            .unwrap_or(Value::Null)
    };
    let used_of = |class: &str| {
        items_at(&by_class, "/groups")
            .iter()
            .find(|g| str_at(g, "/key") == class)
            .map_or(0, |g| int_at(g, "/from_alloc"))
    };
    let suffix = format!(".{cycle_name}");
    let mut allotments: Vec<(String, i128, i128)> = items_at(&balances, "")
        .iter()
        .filter(|b| str_at(b, "/kind") == "alloc")
        .filter_map(|b| {
            let asset = str_at(b, "/asset");
            let class = asset
                .strip_prefix("TOK.")?
                .strip_suffix(&suffix)?
                .to_owned();
            let left = int_at(b, "/balance/available");
            let used = used_of(&class);
            Some((class, used, left))
        })
        .collect();
    allotments.sort();
    let wallet = items_at(&balances, "")
        .iter()
        .filter(|b| str_at(b, "/kind") == "wallet" && str_at(b, "/asset") == "CR")
        .map(|b| {
            (
                int_at(b, "/balance/balance"),
                int_at(b, "/balance/available"),
            )
        })
        .next();
    let mut rows: Vec<&Value> = items_at(&balances, "").iter().collect();
    rows.sort_by_key(|b| (str_at(b, "/asset"), str_at(b, "/kind")));
    let budget_names: HashMap<String, String> = budgets_list
        .as_ref()
        .map(|b| {
            items_at(b, "")
                .iter()
                .map(|b| (str_at(b, "/id"), str_at(b, "/name")))
                .collect()
        })
        .unwrap_or_default();
    let body = html! {
        h1 { "Overview" }
        div.grid {
            section.card aria-labelledby="wallet-h" {
                h2 id="wallet-h" { "CR wallet" }
                @if let Some((balance, available)) = wallet {
                    p.figure { (cr(balance)) }
                    @if available != balance { p.muted { (cr(available)) " available (the rest is reserved)" } }
                } @else {
                    p.figure { (cr(0)) }
                }
            }
            section.card aria-labelledby="cycle-h" {
                h2 id="cycle-h" { "Billing cycle" }
                @if let Some(days) = days_left {
                    p.figure { (days) @if days == 1 { " day left" } @else { " days left" } }
                    p.muted { "Cycle " (cycle_name) " · ends "
                        (when(&current.map(|c| str_at(c, "/ends_at")).unwrap_or_default())) " UTC" }
                } @else {
                    p.muted { "No billing cycle is open now." }
                }
            }
        }
        h2 { "This cycle's allotment" }
        @if allotments.is_empty() {
            (nothing_yet("No allotment for this cycle."))
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Class" } th.num scope="col" { "Used" } th.num scope="col" { "Left" } th scope="col" { "Progress" } } }
                    tbody {
                        @for (class, used, left) in &allotments {
                            tr {
                                th scope="row" { (class) }
                                td.num { (count(*used)) }
                                td.num { (count(*left)) }
                                td { (progress(&format!("{class} allotment used"), *used, used.saturating_add(*left))) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Balances" }
        @if rows.is_empty() {
            (nothing_yet("No balances yet."))
        } @else {
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Asset" } th scope="col" { "Account" } th.num scope="col" { "Balance" } th.num scope="col" { "Available" } } }
                    tbody {
                        @for b in &rows {
                            @let asset = str_at(b, "/asset");
                            tr {
                                td { code { (asset) } }
                                td { (str_at(b, "/kind")) }
                                td.num { (token_or_cr(&asset, int_at(b, "/balance/balance"))) }
                                td.num { (token_or_cr(&asset, int_at(b, "/balance/available"))) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Recent budget alerts" }
        @match &alerts {
            Ok(alerts) if !items_at(alerts, "").is_empty() => {
                (alert_table(&items_at(alerts, "")[..items_at(alerts, "").len().min(5)], &budget_names))
                p { a href=(org.path("/budgets")) { "All budgets and alerts" } }
            }
            Ok(_) => { (nothing_yet("No budget alerts.")) }
            Err(problem) => { (unavailable(problem)) }
        }
    };
    Ok(page(
        &req,
        &session,
        StatusCode::OK,
        layout(&session, Some(&org), Section::Overview, "Overview", body),
    ))
}

fn alert_table(alerts: &[Value], names: &HashMap<String, String>) -> Markup {
    html! {
        div.table-wrap {
            table {
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Budget" } th.num scope="col" { "Threshold" }
                    th.num scope="col" { "Spent" } th.num scope="col" { "Limit" }
                } }
                tbody {
                    @for a in alerts {
                        @let id = str_at(a, "/budget_id");
                        tr {
                            td { (when(&str_at(a, "/at"))) }
                            td { (names.get(&id).cloned().unwrap_or(id)) }
                            td.num { (int_at(a, "/threshold")) "%" }
                            td.num { (cr(int_at(a, "/spent_micro_cr"))) }
                            td.num { (cr(int_at(a, "/limit_micro_cr"))) }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Usage and cost

fn range_days(query: &Fields) -> i64 {
    match text(query, "days") {
        "7" => 7,
        "90" => 90,
        _ => 30,
    }
}

fn group_data(totals: &Value, empty: &str) -> Vec<Datum> {
    items_at(totals, "/groups")
        .iter()
        .map(|g| {
            let key = str_at(g, "/key");
            Datum {
                label: if key.is_empty() {
                    empty.to_owned()
                } else {
                    key
                },
                value: int_at(g, "/cost_micro_cr"),
            }
        })
        .collect()
}

fn group_table(caption: &str, heading: &str, totals: &Value, empty: &str) -> Markup {
    let groups = items_at(totals, "/groups");
    html! {
        @if groups.is_empty() {
            (nothing_yet("No usage in this range."))
        } @else {
            div.table-wrap {
                table {
                    caption.muted style="text-align:left" { (caption) }
                    thead { tr {
                        th scope="col" { (heading) } th.num scope="col" { "Calls" }
                        th.num scope="col" { "Input tokens" } th.num scope="col" { "Output tokens" }
                        th.num scope="col" { "Cost" }
                    } }
                    tbody {
                        @for g in groups {
                            @let key = str_at(g, "/key");
                            tr {
                                th scope="row" { @if key.is_empty() { span.muted { (empty) } } @else { code { (key) } } }
                                td.num { (count(int_at(g, "/events"))) }
                                td.num { (count(int_at(g, "/input_tokens").saturating_add(int_at(g, "/cached_input_tokens")))) }
                                td.num { (count(int_at(g, "/output_tokens"))) }
                                td.num { (cr(int_at(g, "/cost_micro_cr"))) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn budget_bars(budgets: &[Value]) -> Markup {
    html! {
        @for b in budgets {
            @let name = str_at(b, "/name");
            @let spent = int_at(b, "/spent_micro_cr");
            @let held = int_at(b, "/held_micro_cr");
            @let limit = int_at(b, "/limit_micro_cr");
            @let used = spent.saturating_add(held);
            div style="margin:.5rem 0" {
                div.actions style="justify-content:space-between" {
                    strong { (name) }
                    span.muted {
                        (cr(spent)) " spent"
                        @if held > 0 { " + " (cr(held)) " held" }
                        " of " (cr(limit)) " (" (percent(used, limit)) "%) · " (str_at(b, "/period"))
                        @if bool_at(b, "/hard") { " · hard" } @else { " · soft" }
                    }
                }
                (progress(&format!("Budget {name}"), used, limit))
            }
        }
    }
}

async fn usage(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    let days = range_days(&query);
    let to = now(&req);
    let from = days_before(to, days);
    let range = format!(
        "from={}&to={}",
        url_encode(&from.to_string()),
        url_encode(&to.to_string())
    );
    let totals = |group: &str, top: u32| {
        org.api(&format!("/usage/totals?group_by={group}&top={top}&{range}"))
    };
    let paths = [
        totals("day", 100),
        totals("model", 10),
        totals("user", 10),
        totals("task", 10),
        org.api("/budgets"),
        org.api("/usage/forecast"),
        org.api(&format!("/usage/savings?{range}")),
    ];
    let (per_day, per_model, per_user, per_task, budgets_list, forecast, savings) = tokio::join!(
        session.get(&req, &paths[0]),
        session.get(&req, &paths[1]),
        session.get(&req, &paths[2]),
        session.get(&req, &paths[3]),
        session.get(&req, &paths[4]),
        session.get(&req, &paths[5]),
        session.get(&req, &paths[6]),
    );
    let per_day = match per_day {
        Ok(v) => v,
        Err(problem) => {
            return Ok(problem_page(
                &req,
                &session,
                Some(&org),
                Section::Usage,
                &problem,
            ))
        }
    };
    // Every day of the range, the ones without usage at zero.
    let costs: HashMap<String, i128> = items_at(&per_day, "/groups")
        .iter()
        .map(|g| (str_at(g, "/key"), int_at(g, "/cost_micro_cr")))
        .collect();
    let mut daily = Vec::new();
    let utc = jiff::tz::TimeZone::UTC;
    let last = to.to_zoned(utc.clone()).date();
    let mut day = from.to_zoned(utc).date();
    while day <= last {
        let key = day.to_string();
        daily.push(Datum {
            value: costs.get(&key).copied().unwrap_or(0),
            label: key.get(5..).unwrap_or(&key).to_owned(),
        });
        match day.tomorrow() {
            Ok(next) => day = next,
            Err(_) => break,
        }
    }
    let total_cost = int_at(&per_day, "/total/cost_micro_cr");
    let total_events = int_at(&per_day, "/total/events");
    let per_model = per_model.unwrap_or(Value::Null);
    let per_user = per_user.unwrap_or(Value::Null);
    let per_task = per_task.unwrap_or(Value::Null);
    let csv = org.path(&format!("/usage.csv?days={days}"));
    let body = html! {
        h1 { "Usage and cost" }
        form.actions method="get" action=(org.path("/usage")) {
            (select("Range", "days", &[
                ("7".to_owned(), "Last 7 days".to_owned()),
                ("30".to_owned(), "Last 30 days".to_owned()),
                ("90".to_owned(), "Last 90 days".to_owned()),
            ], &days.to_string(), None))
            button type="submit" { "Show" }
            a.button.secondary href=(csv) download { "Download CSV" }
        }
        div.grid {
            section.card aria-labelledby="spent-h" {
                h2 id="spent-h" { "Spent in the last " (days) " days" }
                p.figure { (cr(total_cost)) }
                p.muted { (count(total_events)) " calls · "
                    (count(int_at(&per_day, "/total/from_alloc"))) " allotment tokens · "
                    (count(int_at(&per_day, "/total/from_acquired"))) " bought tokens · "
                    (cr(int_at(&per_day, "/total/from_wallet_micro_cr"))) " from the wallet" }
            }
            section.card aria-labelledby="forecast-h" {
                h2 id="forecast-h" { "Forecast" }
                @match &forecast {
                    Ok(f) => {
                        p.figure { (cr(int_at(f, "/forecast_micro_cr"))) }
                        p.muted { "Expected spend this " (str_at(f, "/period")) " (ends " (when(&str_at(f, "/period_end"))) " UTC). "
                            (cr(int_at(f, "/spent_micro_cr"))) " spent so far; "
                            (cr(int_at(f, "/trailing_7_days_micro_cr"))) " in the last 7 days." }
                    }
                    Err(problem) => { (unavailable(problem)) }
                }
            }
        }
        h2 { "Spend per day" }
        (bars("Spend per day", &daily, &cr_unit))
        h2 { "By model" }
        (bars("Spend by model", &group_data(&per_model, "none"), &cr_unit))
        (group_table("Top 10 models by cost", "Model", &per_model, "none"))
        h2 { "By user" }
        (group_table("Top 10 users by cost", "User", &per_user, "no user"))
        h2 { "By task" }
        (group_table("Top 10 tasks by cost", "Task", &per_task, "no task"))
        h2 { "Budgets" }
        @match &budgets_list {
            Ok(list) if !items_at(list, "").is_empty() => { (budget_bars(items_at(list, ""))) }
            Ok(_) => { p.muted { "No budgets. " a href=(org.path("/budgets")) { "Set one" } } }
            Err(problem) => { (unavailable(problem)) }
        }
        h2 { "Savings" }
        @match &savings {
            Ok(list) if !items_at(list, "").is_empty() => {
                div.table-wrap {
                    table {
                        thead { tr {
                            th scope="col" { "Model" } th scope="col" { "Cheaper model of its class" }
                            th.num scope="col" { "Calls" } th.num scope="col" { "Cost" }
                            th.num scope="col" { "Would have cost" } th.num scope="col" { "Saving" }
                        } }
                        tbody {
                            @for s in items_at(list, "") {
                                tr {
                                    td { code { (str_at(s, "/model")) } }
                                    td { code { (str_at(s, "/alternative")) } }
                                    td.num { (count(int_at(s, "/events"))) }
                                    td.num { (cr(int_at(s, "/cost_micro_cr"))) }
                                    td.num { (cr(int_at(s, "/alternative_cost_micro_cr"))) }
                                    td.num { (cr(int_at(s, "/savings_micro_cr"))) }
                                }
                            }
                        }
                    }
                }
            }
            Ok(_) => { (nothing_yet("No cheaper model would have done the same work for less.")) }
            Err(problem) => { (unavailable(problem)) }
        }
    };
    Ok(page(
        &req,
        &session,
        StatusCode::OK,
        layout(&session, Some(&org), Section::Usage, "Usage and cost", body),
    ))
}

async fn usage_csv(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    let to = now(&req);
    let from = days_before(to, range_days(&query));
    let api_path = org.api(&format!(
        "/usage.csv?from={}&to={}",
        url_encode(&from.to_string()),
        url_encode(&to.to_string())
    ));
    let answer = match session.call(&req, Call::get(&api_path)).await {
        Ok(answer) => answer,
        Err(problem) => {
            return Ok(problem_page(
                &req,
                &session,
                Some(&org),
                Section::Usage,
                &problem,
            ))
        }
    };
    if !answer.is_success() {
        return Ok(problem_page(
            &req,
            &session,
            Some(&org),
            Section::Usage,
            &answer.problem(),
        ));
    }
    let mut response = HttpResponse::build(answer.status);
    response.insert_header((header::CACHE_CONTROL, "no-store"));
    response.insert_header((
        header::CONTENT_DISPOSITION,
        format!(
            "attachment; filename=\"usage-{}-{}.csv\"",
            from.to_zoned(jiff::tz::TimeZone::UTC).date(),
            to.to_zoned(jiff::tz::TimeZone::UTC).date()
        ),
    ));
    if let Some(content_type) = &answer.content_type {
        response.insert_header((header::CONTENT_TYPE, content_type.clone()));
    }
    Ok(session.finish(&req, response.body(answer.body)))
}

// ---------------------------------------------------------------------------------------------
// Budgets

const BUDGET_FIELDS: &[&str] = &[
    "name",
    "limit_micro_cr",
    "thresholds",
    "period",
    "time_zone",
    "user_id",
    "api_key_id",
    "task",
    "scope",
    "hard",
];

async fn budgets(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    Ok(budgets_page(
        &req,
        &session,
        &org,
        StatusCode::OK,
        &Fields::new(),
        &FormErrors::default(),
        &query,
    )
    .await)
}

async fn budgets_page(
    req: &HttpRequest,
    session: &Session,
    org: &OrgPage,
    status: StatusCode,
    form: &Fields,
    errors: &FormErrors,
    query: &Fields,
) -> HttpResponse {
    let paths = [org.api("/budgets"), org.api("/budget-alerts"), org.api("")];
    let (list, alerts, about) = tokio::join!(
        session.get(req, &paths[0]),
        session.get(req, &paths[1]),
        session.get(req, &paths[2]),
    );
    let plan = about.map(|o| str_at(&o, "/plan")).unwrap_or_default();
    let thresholds = match form.get("thresholds") {
        Some(given) => given.as_str(),
        None if plan == "enterprise" => "75,90,100",
        None => "75,100",
    };
    let list = match list {
        Ok(v) => v,
        Err(problem) => return problem_page(req, session, Some(org), Section::Budgets, &problem),
    };
    let names: HashMap<String, String> = items_at(&list, "")
        .iter()
        .map(|b| (str_at(b, "/id"), str_at(b, "/name")))
        .collect();
    let scope_value_error = errors
        .at("user_id")
        .or_else(|| errors.at("api_key_id"))
        .or_else(|| errors.at("task"))
        .or_else(|| errors.at("scope"))
        .or_else(|| errors.at("scope_value"));
    let scope_kind = if text(form, "scope_kind").is_empty() {
        "org"
    } else {
        text(form, "scope_kind")
    };
    let period = if text(form, "period").is_empty() {
        "month"
    } else {
        text(form, "period")
    };
    let opts = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(v, t)| ((*v).to_owned(), (*t).to_owned()))
            .collect()
    };
    let body = html! {
        h1 { "Budgets" }
        (done_banner(query, &[("created", "The budget was created."), ("deleted", "The budget was deleted.")]))
        @if items_at(&list, "").is_empty() {
            (nothing_yet("No budgets yet."))
        } @else {
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Budget" } th scope="col" { "Scope" } th scope="col" { "Period" }
                        th scope="col" { "Spent of limit" }
                        th scope="col" { "Kind" } th scope="col" { span.muted { "Actions" } }
                    } }
                    tbody {
                        @for b in items_at(&list, "") {
                            @let name = str_at(b, "/name");
                            @let spent = int_at(b, "/spent_micro_cr");
                            @let held = int_at(b, "/held_micro_cr");
                            @let limit = int_at(b, "/limit_micro_cr");
                            @let scope_value = str_at(b, "/scope_value");
                            tr {
                                th scope="row" { (name) }
                                td { (str_at(b, "/scope")) @if !scope_value.is_empty() { " " code { (scope_value) } } }
                                td { (str_at(b, "/period")) br; span.muted { "until " (when(&str_at(b, "/period_end"))) } }
                                td style="min-width:9rem" {
                                    (cr(spent)) " of " (cr(limit))
                                    @if held > 0 { " (+ " (cr(held)) " held)" }
                                    (progress(&format!("Budget {name}"), spent.saturating_add(held), limit))
                                    span.muted { (percent(spent.saturating_add(held), limit)) "% · alerts at "
                                        (items_at(b, "/thresholds").iter().map(|t| format!("{t}%")).collect::<Vec<_>>().join(", ")) }
                                }
                                td { @if bool_at(b, "/hard") { span.pill.bad { "hard" } } @else { span.pill { "soft" } } }
                                td {
                                    form.inline method="post" action=(org.path(&format!("/budgets/{}/delete", str_at(b, "/id")))) {
                                        (csrf_input(session))
                                        button.danger type="submit" aria-label=(format!("Delete budget {name}")) { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Recent alerts" }
        @match &alerts {
            Ok(a) if !items_at(a, "").is_empty() => {
                (alert_table(&items_at(a, "")[..items_at(a, "").len().min(20)], &names))
            }
            Ok(_) => { (nothing_yet("No budget alerts.")) }
            Err(problem) => { (unavailable(problem)) }
        }
        h2 id="new-budget" { "New budget" }
        @match plan.as_str() {
            "free" => { p.muted { "The Free plan has no budgets: upgrade to Teams to set them." } }
            "teams" => { p.muted { "On the Teams plan, budgets are monthly or per billing cycle, for the org, an API key or a task, with at most two alert thresholds." } }
            _ => {}
        }
        (form_banner(errors))
        form.stack method="post" action=(org.path("/budgets")) aria-labelledby="new-budget" {
            (csrf_input(session))
            (idempotency_input())
            (field("Name", "name", "text", value(form, "name"), None, errors.at("name")))
            (select("Scope", "scope_kind", &opts(&[("org", "The whole org"), ("user", "A user"), ("api_key", "An API key"), ("task", "A task")]), scope_kind, errors.at("scope_kind")))
            (field("Scope value", "scope_value", "text", value(form, "scope_value"),
                Some("the user id, API key id or task name; empty for the whole org"), scope_value_error))
            (select("Period", "period", &opts(&[("day", "Day"), ("week", "Week"), ("month", "Month"), ("cycle", "Billing cycle")]), period, errors.at("period")))
            (field("Limit (CR)", "limit", "text", value(form, "limit"), Some("for example 12.5"),
                errors.at("limit").or_else(|| errors.at("limit_micro_cr"))))
            (field("Alert thresholds (%)", "thresholds", "text", thresholds, Some("comma-separated percentages, for example 75,90,100; empty for the default"), errors.at("thresholds")))
            (checkbox("Hard limit: refuse calls beyond it (otherwise alert only)", "hard", checked(form, "hard")))
            button type="submit" { "Create budget" }
        }
    };
    page(
        req,
        session,
        status,
        layout(session, Some(org), Section::Budgets, "Budgets", body),
    )
}

/// The API's JSON for the budget form, or the field it cannot be made of.
fn budget_body(form: &Fields) -> Result<Value, FormErrors> {
    let limit = parse_cr(text(form, "limit")).map_err(|e| local_error("limit", e))?;
    let scope_value = text(form, "scope_value");
    let kind = text(form, "scope_kind");
    let scope = match kind {
        "" | "org" => json!({ "kind": "org" }),
        "user" | "api_key" | "task" if scope_value.is_empty() => {
            return Err(local_error(
                "scope_value",
                "enter the user id, API key id or task this budget is for",
            ))
        }
        "user" => json!({ "kind": "user", "user_id": scope_value }),
        "api_key" => json!({ "kind": "api_key", "api_key_id": scope_value }),
        "task" => json!({ "kind": "task", "task": scope_value }),
        _ => return Err(local_error("scope_kind", "choose a scope")),
    };
    let mut body = json!({
        "name": text(form, "name"),
        "scope": scope,
        "period": text(form, "period"),
        "limit_micro_cr": limit,
        "hard": checked(form, "hard"),
    });
    let thresholds = text(form, "thresholds");
    if !thresholds.is_empty() {
        let parsed: Result<Vec<u32>, _> = thresholds
            .split([',', ' ', ';'])
            .map(|t| t.trim().trim_end_matches('%'))
            .filter(|t| !t.is_empty())
            .map(str::parse::<u32>)
            .collect();
        match parsed {
            Ok(list) if !list.is_empty() => body["thresholds"] = json!(list),
            _ => {
                return Err(local_error(
                    "thresholds",
                    "write whole percentages separated by commas, for example 75,90,100",
                ))
            }
        }
    }
    Ok(body)
}

async fn create_budget(
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    let none = Fields::new();
    let body = match budget_body(&fields) {
        Ok(body) => body,
        Err(errors) => {
            return Ok(budgets_page(
                &req,
                &session,
                &org,
                StatusCode::UNPROCESSABLE_ENTITY,
                &fields,
                &errors,
                &none,
            )
            .await)
        }
    };
    let answer = session
        .send(
            &req,
            Method::POST,
            &org.api("/budgets"),
            &body,
            key_of(&fields),
        )
        .await;
    match success(answer) {
        Ok(_) => Ok(session.finish(&req, see_other(&org.path("/budgets?done=created")))),
        Err(problem) => {
            let status = problem.status;
            let errors = FormErrors::of(problem, BUDGET_FIELDS);
            Ok(budgets_page(&req, &session, &org, status, &fields, &errors, &none).await)
        }
    }
}

/// Deletes the org's `/{kind}/{id}` at the API (a form's button), then back to `back`; the
/// API's problem as a page otherwise.
async fn delete_then_back(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
    kind: &str,
    back: &str,
    section: Section,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let (org, id) = path.into_inner();
    let org = org_of(&session, &org);
    let target = org.api(&format!("/{kind}/{}", url_encode(&id)));
    let answer = session
        .call(&req, Call::get(&target).method(Method::DELETE))
        .await;
    match success(answer) {
        Ok(_) => Ok(session.finish(&req, see_other(&org.path(back)))),
        Err(problem) => Ok(problem_page(&req, &session, Some(&org), section, &problem)),
    }
}

async fn delete_budget(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    delete_then_back(
        req,
        path,
        form,
        "budgets",
        "/budgets?done=deleted",
        Section::Budgets,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// API keys

const SCOPES: &[(&str, &str, &str)] = &[
    ("read", "scope_read", "Read the org's data"),
    ("usage:write", "scope_usage_write", "Record usage"),
    ("market:trade", "scope_market_trade", "Trade on the market"),
];

async fn keys(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    let defaults: Fields = [("scope_read".to_owned(), "on".to_owned())]
        .into_iter()
        .collect();
    Ok(keys_page(
        &req,
        &session,
        &org,
        StatusCode::OK,
        &defaults,
        &FormErrors::default(),
        &query,
        None,
    )
    .await)
}

#[allow(clippy::too_many_arguments)]
async fn keys_page(
    req: &HttpRequest,
    session: &Session,
    org: &OrgPage,
    status: StatusCode,
    form: &Fields,
    errors: &FormErrors,
    query: &Fields,
    created: Option<&Value>,
) -> HttpResponse {
    let list = match session.get(req, &org.api("/api-keys")).await {
        Ok(v) => v,
        Err(problem) => return problem_page(req, session, Some(org), Section::Keys, &problem),
    };
    let body = html! {
        h1 { "API keys" }
        (done_banner(query, &[("revoked", "The key was revoked: it no longer works.")]))
        @if let Some(created) = created {
            div.banner.ok role="status" {
                strong { "Key “" (str_at(created, "/api_key/name")) "” was created." }
                p { "Copy it now: this is the only time it is shown." }
                p { label for="new-key" { "Your new API key" } }
                input.secret id="new-key" type="text" readonly value=(str_at(created, "/key"));
            }
        }
        @if items_at(&list, "").is_empty() {
            (nothing_yet("No API keys yet."))
        } @else {
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Prefix" } th scope="col" { "Scopes" }
                        th scope="col" { "Created" } th scope="col" { "Last used" } th scope="col" { "State" }
                        th scope="col" { span.muted { "Actions" } }
                    } }
                    tbody {
                        @for k in items_at(&list, "") {
                            @let name = str_at(k, "/name");
                            @let revoked = str_at(k, "/revoked_at");
                            @let last = str_at(k, "/last_used_at");
                            tr {
                                th scope="row" { (name) }
                                td { code { (str_at(k, "/prefix")) "…" } }
                                td { (items_at(k, "/scopes").iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")) }
                                td { (when(&str_at(k, "/created_at"))) }
                                td { @if last.is_empty() { span.muted { "never" } } @else { (when(&last)) } }
                                td { @if revoked.is_empty() { span.pill.ok { "active" } } @else { span.pill.bad { "revoked " (when(&revoked)) } } }
                                td {
                                    @if revoked.is_empty() {
                                        form.inline method="post" action=(org.path(&format!("/keys/{}/revoke", str_at(k, "/id")))) {
                                            (csrf_input(session))
                                            button.danger type="submit" aria-label=(format!("Revoke key {name}")) { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 id="new-key-h" { "New API key" }
        (form_banner(errors))
        form.stack method="post" action=(org.path("/keys")) aria-labelledby="new-key-h" {
            (csrf_input(session))
            (idempotency_input())
            (field("Name", "name", "text", value(form, "name"), None, errors.at("name")))
            fieldset {
                legend { "Scopes" }
                @for (_, name, label) in SCOPES {
                    (checkbox(label, name, checked(form, name)))
                }
                @if let Some(error) = errors.at("scopes") { span.field-error role="alert" { (error) } }
            }
            button type="submit" { "Create key" }
        }
    };
    page(
        req,
        session,
        status,
        layout(session, Some(org), Section::Keys, "API keys", body),
    )
}

async fn create_key(
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    let none = Fields::new();
    let scopes: Vec<&str> = SCOPES
        .iter()
        .filter(|(_, name, _)| checked(&fields, name))
        .map(|(scope, _, _)| *scope)
        .collect();
    if scopes.is_empty() {
        let errors = local_error("scopes", "choose at least one scope");
        return Ok(keys_page(
            &req,
            &session,
            &org,
            StatusCode::UNPROCESSABLE_ENTITY,
            &fields,
            &errors,
            &none,
            None,
        )
        .await);
    }
    let body = json!({ "name": text(&fields, "name"), "scopes": scopes });
    let answer = session
        .send(
            &req,
            Method::POST,
            &org.api("/api-keys"),
            &body,
            key_of(&fields),
        )
        .await;
    match success(answer).and_then(|answer| answer.json::<Value>()) {
        Ok(created) => {
            let fresh: Fields = [("scope_read".to_owned(), "on".to_owned())]
                .into_iter()
                .collect();
            Ok(keys_page(
                &req,
                &session,
                &org,
                StatusCode::CREATED,
                &fresh,
                &FormErrors::default(),
                &none,
                Some(&created),
            )
            .await)
        }
        Err(problem) => {
            let status = problem.status;
            let errors = FormErrors::of(problem, &["name", "scopes"]);
            Ok(keys_page(&req, &session, &org, status, &fields, &errors, &none, None).await)
        }
    }
}

async fn revoke_key(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    delete_then_back(
        req,
        path,
        form,
        "api-keys",
        "/keys?done=revoked",
        Section::Keys,
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Webhooks

async fn webhooks(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    Ok(webhooks_page(
        &req,
        &session,
        &org,
        StatusCode::OK,
        &Fields::new(),
        &FormErrors::default(),
        &query,
        None,
    )
    .await)
}

#[allow(clippy::too_many_arguments)]
async fn webhooks_page(
    req: &HttpRequest,
    session: &Session,
    org: &OrgPage,
    status: StatusCode,
    form: &Fields,
    errors: &FormErrors,
    query: &Fields,
    created: Option<&Value>,
) -> HttpResponse {
    let list = match session.get(req, &org.api("/webhooks?limit=100")).await {
        Ok(v) => v,
        Err(problem) => return problem_page(req, session, Some(org), Section::Webhooks, &problem),
    };
    let body = html! {
        h1 { "Webhooks" }
        (done_banner(query, &[("deleted", "The webhook was deleted.")]))
        @if let Some(created) = created {
            div.banner.ok role="status" {
                strong { "The webhook for " code { (str_at(created, "/url")) } " was created." }
                @let secret = str_at(created, "/secret");
                @if !secret.is_empty() {
                    p { "Its signing secret (HMAC-SHA256) is shown only now: copy it." }
                    p { label for="new-secret" { "Signing secret" } }
                    input.secret id="new-secret" type="text" readonly value=(secret);
                }
            }
        }
        p.muted { "Budget alerts are POSTed to each webhook, signed with its secret, and retried with backoff." }
        @if items_at(&list, "/webhooks").is_empty() {
            (nothing_yet("No webhooks yet."))
        } @else {
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "URL" } th scope="col" { "Description" } th scope="col" { "Events" }
                        th scope="col" { "Created" } th scope="col" { span.muted { "Actions" } }
                    } }
                    tbody {
                        @for w in items_at(&list, "/webhooks") {
                            @let id = str_at(w, "/id");
                            @let url = str_at(w, "/url");
                            tr {
                                th scope="row" { a href=(org.path(&format!("/webhooks/{id}"))) { code { (url) } } }
                                td { (str_at(w, "/description")) }
                                td { (items_at(w, "/events").iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")) }
                                td { (when(&str_at(w, "/created_at"))) }
                                td.actions {
                                    a href=(org.path(&format!("/webhooks/{id}"))) aria-label=(format!("Deliveries of {url}")) { "Deliveries" }
                                    form.inline method="post" action=(org.path(&format!("/webhooks/{id}/delete"))) {
                                        (csrf_input(session))
                                        button.danger type="submit" aria-label=(format!("Delete webhook {url}")) { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 id="new-webhook" { "New webhook" }
        (form_banner(errors))
        form.stack method="post" action=(org.path("/webhooks")) aria-labelledby="new-webhook" {
            (csrf_input(session))
            (idempotency_input())
            (field("URL", "url", "url", value(form, "url"), Some("an http:// URL where events are POSTed"), errors.at("url")))
            (field("Description", "description", "text", value(form, "description"), Some("optional"), errors.at("description")))
            button type="submit" { "Add webhook" }
        }
    };
    page(
        req,
        session,
        status,
        layout(session, Some(org), Section::Webhooks, "Webhooks", body),
    )
}

async fn create_webhook(
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    let none = Fields::new();
    let mut body = json!({ "url": text(&fields, "url") });
    let description = text(&fields, "description");
    if !description.is_empty() {
        body["description"] = json!(description);
    }
    let answer = session
        .send(
            &req,
            Method::POST,
            &org.api("/webhooks"),
            &body,
            key_of(&fields),
        )
        .await;
    match success(answer).and_then(|answer| answer.json::<Value>()) {
        Ok(created) => Ok(webhooks_page(
            &req,
            &session,
            &org,
            StatusCode::CREATED,
            &none,
            &FormErrors::default(),
            &none,
            Some(&created),
        )
        .await),
        Err(problem) => {
            let status = problem.status;
            let errors = FormErrors::of(problem, &["url", "description", "events"]);
            Ok(webhooks_page(&req, &session, &org, status, &fields, &errors, &none, None).await)
        }
    }
}

async fn delete_webhook(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    delete_then_back(
        req,
        path,
        form,
        "webhooks",
        "/webhooks?done=deleted",
        Section::Webhooks,
    )
    .await
}

async fn webhook(
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let (org, id) = path.into_inner();
    let org = org_of(&session, &org);
    let id = url_encode(&id);
    let paths = [
        org.api(&format!("/webhooks/{id}")),
        org.api(&format!("/webhooks/{id}/deliveries?limit=100")),
    ];
    let (hook, deliveries) =
        tokio::join!(session.get(&req, &paths[0]), session.get(&req, &paths[1]),);
    let (hook, deliveries) = match (hook, deliveries) {
        (Ok(hook), Ok(deliveries)) => (hook, deliveries),
        (Err(problem), _) | (_, Err(problem)) => {
            return Ok(problem_page(
                &req,
                &session,
                Some(&org),
                Section::Webhooks,
                &problem,
            ))
        }
    };
    let body = html! {
        h1 { "Webhooks" }
        p { a href=(org.path("/webhooks")) { "← All webhooks" } }
        h2 { "Deliveries to " code { (str_at(&hook, "/url")) } }
        @if !str_at(&hook, "/description").is_empty() { p.muted { (str_at(&hook, "/description")) } }
        @if items_at(&deliveries, "/deliveries").is_empty() {
            (nothing_yet("Nothing was sent to this webhook yet."))
        } @else {
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Created" } th scope="col" { "Event" } th scope="col" { "State" }
                        th.num scope="col" { "Attempts" } th scope="col" { "Delivered / next try" } th scope="col" { "Attempt log" }
                    } }
                    tbody {
                        @for d in items_at(&deliveries, "/deliveries") {
                            @let state = str_at(d, "/state");
                            tr {
                                td { (when(&str_at(d, "/created_at"))) }
                                td { (str_at(d, "/event_type")) br; code.muted { (str_at(d, "/event_id")) } }
                                td {
                                    @match state.as_str() {
                                        "delivered" => { span.pill.ok { (state) } }
                                        "failed" => { span.pill.bad { (state) } }
                                        _ => { span.pill { (state) } }
                                    }
                                    @let error = str_at(d, "/last_error");
                                    @if !error.is_empty() { br; span.muted { (error) } }
                                }
                                td.num { (int_at(d, "/attempts")) }
                                td {
                                    @let delivered = str_at(d, "/delivered_at");
                                    @let next = str_at(d, "/next_attempt_at");
                                    @if !delivered.is_empty() { (when(&delivered)) }
                                    @else if !next.is_empty() { "next " (when(&next)) }
                                }
                                td {
                                    @if !items_at(d, "/log").is_empty() {
                                        ol style="margin:0;padding-left:1.2rem" {
                                            @for a in items_at(d, "/log") {
                                                li {
                                                    (when(&str_at(a, "/started_at"))) " · " (str_at(a, "/outcome"))
                                                    @let status = str_at(a, "/status");
                                                    @if !status.is_empty() { " · HTTP " (status) }
                                                    " · " (count(int_at(a, "/duration_micros") / 1000)) " ms"
                                                    @let detail = str_at(a, "/detail");
                                                    @if !detail.is_empty() { br; span.muted { (detail) } }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        &req,
        &session,
        StatusCode::OK,
        layout(
            &session,
            Some(&org),
            Section::Webhooks,
            "Webhook deliveries",
            body,
        ),
    ))
}

// ---------------------------------------------------------------------------------------------
// Cost preview

const ESTIMATE_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "expected_output_tokens",
    "cached_input_tokens",
];

async fn estimate_page(
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    let defaults: Fields = [("expected_output_tokens".to_owned(), "500".to_owned())]
        .into_iter()
        .collect();
    Ok(estimate_view(
        &req,
        &session,
        &org,
        StatusCode::OK,
        &defaults,
        &FormErrors::default(),
        None,
    )
    .await)
}

async fn estimate_view(
    req: &HttpRequest,
    session: &Session,
    org: &OrgPage,
    status: StatusCode,
    form: &Fields,
    errors: &FormErrors,
    result: Option<&Value>,
) -> HttpResponse {
    let models = match session.get(req, "/v1/models?limit=1000").await {
        Ok(v) => v,
        Err(problem) => return problem_page(req, session, Some(org), Section::Estimate, &problem),
    };
    let mut options: Vec<(String, String)> = items_at(&models, "/models")
        .iter()
        .map(|m| {
            let id = str_at(m, "/id");
            let text = format!(
                "{id} · {} · {}",
                str_at(m, "/provider"),
                str_at(m, "/class")
            );
            (id, text)
        })
        .collect();
    options.sort();
    let model = match value(form, "model") {
        "" if options.iter().any(|(id, _)| id == "gpt-4o-mini") => "gpt-4o-mini",
        given => given,
    };
    let prompt_error = errors.at("prompt");
    let body = html! {
        h1 { "Cost preview" }
        p.muted { "Count a prompt's tokens with the model's tokenizer and see what the call would cost, what would pay for it, and whether your budgets allow it. Nothing is charged." }
        (form_banner(errors))
        form.stack method="post" action=(org.path("/estimate")) {
            (csrf_input(session))
            (select("Model", "model", &options, model, errors.at("model")))
            label for="f-prompt" {
                "Prompt"
                textarea id="f-prompt" name="prompt" rows="8"
                    aria-invalid=[prompt_error.map(|_| "true")]
                    aria-describedby=[prompt_error.map(|_| "f-prompt-error")] { (value(form, "prompt")) }
                @if let Some(error) = prompt_error { span.field-error id="f-prompt-error" role="alert" { (error) } }
            }
            (field("Expected output tokens", "expected_output_tokens", "number", value(form, "expected_output_tokens"), None, errors.at("expected_output_tokens")))
            (field("Cached input tokens", "cached_input_tokens", "number", value(form, "cached_input_tokens"), Some("optional: how many tokens of it the provider's cache would serve"), errors.at("cached_input_tokens")))
            button type="submit" { "Preview cost" }
        }
        @if let Some(e) = result { (estimate_result(e)) }
    };
    page(
        req,
        session,
        status,
        layout(session, Some(org), Section::Estimate, "Cost preview", body),
    )
}

fn estimate_result(e: &Value) -> Markup {
    let allowed = bool_at(e, "/budgets/allowed");
    let source = str_at(e, "/funding/source");
    let within = bool_at(e, "/prompt_limit/within");
    html! {
        section aria-labelledby="estimate-h" {
            h2 id="estimate-h" { "Estimate for " code { (str_at(e, "/model/id")) } }
            div.grid {
                div.card {
                    h3 { "Cost" }
                    p.figure { (cr(int_at(e, "/cost/total_micro_cr"))) }
                    p.muted { "$" (str_at(e, "/cost/total_usd")) " at $" (str_at(e, "/cost/cr_face_value_usd")) " per CR" }
                }
                div.card {
                    h3 { "Tokens" }
                    p.figure { (count(int_at(e, "/tokens/total"))) }
                    p.muted { (count(int_at(e, "/tokens/prompt"))) " prompt + " (count(int_at(e, "/tokens/output"))) " output · "
                        @if bool_at(e, "/tokens/estimated") { "estimated (the tokenizer is not public)" } @else { "counted with " code { (str_at(e, "/tokens/encoding")) } } }
                }
                div.card {
                    h3 { "Paid from" }
                    p.figure { @match source.as_str() {
                        "acquired" => { "Bought tokens" }
                        "alloc" => { "Allotment" }
                        "wallet" => { "CR wallet" }
                        _ => { span.pill.bad { "Insufficient funds" } }
                    } }
                    p.muted { code { (str_at(e, "/funding/token_asset")) } ": "
                        (count(int_at(e, "/funding/available/alloc_tokens"))) " allotted, "
                        (count(int_at(e, "/funding/available/acquired_tokens"))) " bought; wallet "
                        (cr(int_at(e, "/funding/available/wallet_micro_cr"))) }
                }
                div.card {
                    h3 { "Budgets" }
                    p.figure { @if allowed { span.pill.ok { "Allowed" } } @else { span.pill.bad { "Refused by a hard budget" } } }
                    p.muted { "Prompt limit on the " (str_at(e, "/prompt_limit/plan")) " plan: "
                        (count(int_at(e, "/prompt_limit/max_prompt_tokens"))) " tokens "
                        @if within { "(within)" } @else { strong { "(exceeded)" } } }
                }
            }
            h3 { "Cost breakdown" }
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Kind" } th.num scope="col" { "Tokens" } th.num scope="col" { "Price per 1M (USD)" } th.num scope="col" { "Cost (USD)" } } }
                    tbody {
                        tr { th scope="row" { "Input" } td.num { (count(int_at(e, "/tokens/input"))) } td.num { (str_at(e, "/price/input")) } td.num { (str_at(e, "/cost/input_usd")) } }
                        tr { th scope="row" { "Cached input" } td.num { (count(int_at(e, "/tokens/cached_input"))) } td.num { (str_at(e, "/price/cached_input")) } td.num { (str_at(e, "/cost/cached_input_usd")) } }
                        tr { th scope="row" { "Output" } td.num { (count(int_at(e, "/tokens/output"))) } td.num { (str_at(e, "/price/output")) } td.num { (str_at(e, "/cost/output_usd")) } }
                        tr { th scope="row" { "Total" } td.num { (count(int_at(e, "/tokens/total"))) } td {} td.num { strong { (str_at(e, "/cost/total_usd")) } } }
                    }
                }
            }
            p.muted { "Price source: " (str_at(e, "/price/source")) ", in force since " (when(&str_at(e, "/price/effective_from"))) " UTC." }
            @if !items_at(e, "/budgets/applying").is_empty() {
                h3 { "Budgets that apply" }
                div.table-wrap {
                    table {
                        thead { tr {
                            th scope="col" { "Budget" } th scope="col" { "Kind" } th.num scope="col" { "Spent" }
                            th.num scope="col" { "With this call" } th.num scope="col" { "Limit" } th scope="col" { "Allows" }
                        } }
                        tbody {
                            @for b in items_at(e, "/budgets/applying") {
                                tr {
                                    th scope="row" { (str_at(b, "/name")) }
                                    td { @if bool_at(b, "/hard") { "hard" } @else { "soft" } }
                                    td.num { (cr(int_at(b, "/spent_micro_cr").saturating_add(int_at(b, "/held_micro_cr")))) }
                                    td.num { (cr(int_at(b, "/after_micro_cr"))) }
                                    td.num { (cr(int_at(b, "/limit_micro_cr"))) }
                                    td { @if bool_at(b, "/allows") { span.pill.ok { "yes" } } @else { span.pill.bad { "no" } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn estimate(
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let org = org_of(&session, &path);
    let number = |name: &str| -> Result<Option<u64>, FormErrors> {
        let raw = text(&fields, name).replace([',', '_', ' '], "");
        if raw.is_empty() {
            return Ok(None);
        }
        raw.parse::<u64>()
            .map(Some)
            .map_err(|_| local_error(name, "enter a whole number of tokens, 0 or more"))
    };
    let parsed = number("expected_output_tokens").and_then(|output| {
        number("cached_input_tokens").map(|cached| (output.unwrap_or(0), cached))
    });
    let (output, cached) = match parsed {
        Ok(pair) => pair,
        Err(errors) => {
            return Ok(estimate_view(
                &req,
                &session,
                &org,
                StatusCode::UNPROCESSABLE_ENTITY,
                &fields,
                &errors,
                None,
            )
            .await)
        }
    };
    let mut body = json!({
        "org_id": org.id,
        "model": text(&fields, "model"),
        "prompt": value(&fields, "prompt"),
        "expected_output_tokens": output,
    });
    if let Some(cached) = cached {
        body["cached_input_tokens"] = json!(cached);
    }
    let answer = session
        .send(&req, Method::POST, "/v1/estimate", &body, None)
        .await;
    match success(answer).and_then(|answer| answer.json::<Value>()) {
        Ok(result) => Ok(estimate_view(
            &req,
            &session,
            &org,
            StatusCode::OK,
            &fields,
            &FormErrors::default(),
            Some(&result),
        )
        .await),
        Err(problem) => {
            let status = problem.status;
            let errors = FormErrors::of(problem, ESTIMATE_FIELDS);
            Ok(estimate_view(&req, &session, &org, status, &fields, &errors, None).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_cr, percent};

    #[test]
    fn cr_amounts_are_parsed_exactly() {
        assert_eq!(parse_cr("12.5"), Ok(12_500_000));
        assert_eq!(parse_cr("1,000"), Ok(1_000_000_000));
        assert_eq!(parse_cr("0.000001"), Ok(1));
        assert_eq!(parse_cr(".5"), Ok(500_000));
        assert_eq!(parse_cr("3 CR"), Ok(3_000_000));
        assert!(parse_cr("0").is_err());
        assert!(parse_cr("1.0000001").is_err());
        assert!(parse_cr("-1").is_err());
        assert!(parse_cr("1e3").is_err());
        assert!(parse_cr("").is_err());
        assert!(parse_cr(".").is_err());
        assert!(parse_cr("99999999999999999999").is_err());
    }

    #[test]
    fn percentages_round_down() {
        assert_eq!(percent(75, 100), 75);
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(5, 0), 100);
    }
}
