//! The portal's admin pages: platform figures, orgs, review flags, markets (with a preview of
//! their decay curve), models and prices, cycles and the audit log.
//!
//! Like every portal page they hold no rule of their own: they read the API and send it what
//! the forms say, as the signed-in admin; the API refuses non-admins (its 403 is shown).

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use credex_ledger::Timestamp;
use credex_pricing::{DecayCurve, DecayWindow};
use maud::{html, Markup};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::api::Problem;
use super::charts::{self, Datum};
use super::session::{url_encode, Session};
use super::{
    bool_at, check_form, count, cr, csrf_input, field, form_banner, idempotency_input, int_at,
    items_at, layout, page, problem_page, see_other, select, str_at, text, when, Fields,
    FormErrors, Section,
};

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/portal/admin").route(web::get().to(platform)))
        .service(
            web::resource("/portal/admin/orgs")
                .route(web::get().to(orgs))
                .route(web::post().to(create_org)),
        )
        .service(web::resource("/portal/admin/orgs/{org}").route(web::get().to(org_page)))
        .service(
            web::resource("/portal/admin/orgs/{org}/{action}").route(web::post().to(org_action)),
        )
        .service(web::resource("/portal/admin/flags").route(web::get().to(flags)))
        .service(web::resource("/portal/admin/flags/scan").route(web::post().to(scan)))
        .service(web::resource("/portal/admin/flags/{id}/clear").route(web::post().to(clear_flag)))
        .service(web::resource("/portal/admin/markets").route(web::get().to(markets)))
        .service(
            web::resource("/portal/admin/markets/{asset}")
                .route(web::get().to(market_page))
                .route(web::post().to(save_market)),
        )
        .service(
            web::resource("/portal/admin/models")
                .route(web::get().to(models))
                .route(web::post().to(models_action)),
        )
        .service(web::resource("/portal/admin/cycles").route(web::get().to(cycles)))
        .service(
            web::resource("/portal/admin/cycles/{cycle}/{action}")
                .route(web::post().to(cycle_action)),
        )
        .service(web::resource("/portal/admin/audit").route(web::get().to(audit)));
}

// ---------------------------------------------------------------------------------------------
// Shared pieces.

/// A form the API refused: which one, its problem, and what was typed (to draw it again).
#[derive(Debug)]
struct Failed {
    form: &'static str,
    errors: FormErrors,
    fields: Fields,
    status: StatusCode,
}

static NO_ERRORS: FormErrors = FormErrors {
    field: None,
    banner: None,
};

impl Failed {
    fn new(form: &'static str, problem: Problem, names: &[&str], fields: Fields) -> Self {
        let status = problem.status;
        Self {
            form,
            errors: FormErrors::of(problem, names),
            fields,
            status,
        }
    }
}

/// The errors of `form`, if it is the one that failed.
fn errors_of<'a>(failed: Option<&'a Failed>, form: &str) -> &'a FormErrors {
    match failed {
        Some(f) if f.form == form => &f.errors,
        _ => &NO_ERRORS,
    }
}

/// What was typed in `name` of `form` when it failed, else `default`.
fn typed(failed: Option<&Failed>, form: &str, name: &str, default: &str) -> String {
    match failed {
        Some(f) if f.form == form => text(&f.fields, name).to_owned(),
        _ => default.to_owned(),
    }
}

fn status_of(failed: Option<&Failed>) -> StatusCode {
    failed.map_or(StatusCode::OK, |f| f.status)
}

/// The request's query parameters.
fn query(req: &HttpRequest) -> Fields {
    web::Query::<Fields>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default()
}

/// The success banner for `?done=…` (a known code only: the page never echoes free text).
fn done_banner(req: &HttpRequest) -> Markup {
    let q = query(req);
    let message = match q.get("done").map(String::as_str) {
        Some("org-created") => "The org was created.",
        Some("standing") => "The org's standing was changed.",
        Some("frozen") => "The org is frozen: it cannot trade until unfrozen.",
        Some("unfrozen") => "The org is no longer frozen.",
        Some("credited") => "The CR was credited to the org's wallet.",
        Some("linked") => "The orgs are linked: neither buys the other's listings.",
        Some("unlinked") => "The orgs are unlinked.",
        Some("overdraft") => "The overdraft allowance was set.",
        Some("cleared") => "The flag was cleared.",
        Some("scanned") => "The scan ran; new flags, if any, are listed below.",
        Some("saved") => "The market's settings were saved; they apply from now on.",
        Some("model-added") => "The model was added.",
        Some("price-added") => "The price was added to the model's schedule.",
        Some("opened") => "The cycle was opened: its allotments are issued.",
        Some("closed") => "The cycle was closed: its tokens expired.",
        _ => return html! {},
    };
    html! { div.banner.ok role="status" { (message) } }
}

/// A 303 back to `location`, with the session's cookies.
fn back(req: &HttpRequest, session: &Session, location: &str) -> HttpResponse {
    session.finish(req, see_other(location))
}

/// A page of the admin section, 200 or the status of the form that failed.
fn admin_page(
    req: &HttpRequest,
    session: &Session,
    status: StatusCode,
    section: Section,
    title: &str,
    body: Markup,
) -> HttpResponse {
    page(
        req,
        session,
        status,
        layout(session, None, section, title, body),
    )
}

/// Sends `body` to the API: its JSON on success, its problem otherwise.
async fn submit(
    req: &HttpRequest,
    session: &Session,
    method: Method,
    path: &str,
    body: &Value,
    key: Option<&str>,
) -> Result<Value, Problem> {
    let answer = session.send(req, method, path, body, key).await?;
    if answer.is_success() {
        Ok(serde_json::from_slice(&answer.body).unwrap_or(Value::Null))
    } else {
        Err(answer.problem())
    }
}

/// A problem the portal finds in a form before sending it (a number that is not one).
fn invalid(detail: String) -> Problem {
    Problem {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        title: "The form has an invalid value".to_owned(),
        detail,
    }
}

/// Admin pages whose data any signed-in user may read (markets, models, cycles) are still
/// shown to admins only; the API refuses every change of a non-admin anyway.
fn admins_only(req: &HttpRequest, session: &Session, section: Section) -> Option<HttpResponse> {
    (!session.is_admin).then(|| {
        let problem = Problem {
            status: StatusCode::FORBIDDEN,
            title: "Admins only".to_owned(),
            detail: "This page is for the provider's admins.".to_owned(),
        };
        problem_page(req, session, None, section, &problem)
    })
}

fn not_found(what: &str) -> Problem {
    Problem {
        status: StatusCode::NOT_FOUND,
        title: "Not found".to_owned(),
        detail: format!("There is no {what} by that name."),
    }
}

/// Whether `id` is a UUID (org, flag ids; checked before they go into an API path).
fn is_uuid(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

/// Whether `name` is safe in a path segment as it is (assets, cycles).
fn is_plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

/// A path segment, percent-encoded (model ids may hold `/`).
fn segment(name: &str) -> String {
    url_encode(name).replace('/', "%2F")
}

/// An optional integer field: `None` when blank, a problem naming `name` when not a number.
fn opt_int(fields: &Fields, name: &str) -> Result<Option<i64>, Problem> {
    let raw = text(fields, name);
    if raw.is_empty() {
        return Ok(None);
    }
    raw.replace(['_', ','], "")
        .parse::<i64>()
        .map(Some)
        .map_err(|_| invalid(format!("`{name}`: “{raw}” is not a whole number.")))
}

/// CR typed as a decimal (`12.5`) in µCR, exactly; a problem naming `name` otherwise.
fn micro_cr_of(fields: &Fields, name: &str) -> Result<i64, Problem> {
    super::parse_cr(text(fields, name))
        .and_then(|micro| i64::try_from(micro).map_err(|_| "that amount is too large"))
        .map_err(|why| invalid(format!("`{name}`: {why}.")))
}

/// µCR as CR typed back into a form (`12.5`).
fn cr_plain(micro: i128) -> String {
    let value = i64::try_from(micro).map_or(Decimal::ZERO, |m| Decimal::new(m, 6));
    value.normalize().to_string()
}

fn truncate(text: &str, max: usize) -> String {
    let mut chars = text.chars();
    let short: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        format!("{short}…")
    } else {
        short
    }
}

/// The end of an id (UUIDv7s begin with their time, so their starts look alike).
fn short_id(id: &str) -> String {
    id.get(id.len().saturating_sub(8)..)
        .unwrap_or(id)
        .to_owned()
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn options(values: &[&str]) -> Vec<(String, String)> {
    values
        .iter()
        .map(|v| ((*v).to_owned(), (*v).to_owned()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Platform.

async fn platform(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let provider = match session.get(&req, "/v1/admin/provider/balances").await {
        Ok(v) => v,
        Err(p) => return Ok(problem_page(&req, &session, None, Section::Admin, &p)),
    };
    // The books check reads the whole journal: on demand only (`?check=1`).
    let books = if query(&req).contains_key("check") {
        match session.get(&req, "/v1/admin/books/check").await {
            Ok(v) => Some(v),
            Err(p) => return Ok(problem_page(&req, &session, None, Section::Admin, &p)),
        }
    } else {
        None
    };
    let cycles = session.get(&req, "/v1/cycles").await.unwrap_or_default();
    let markets = session.get(&req, "/v1/markets").await.unwrap_or_default();
    // The provider's balances by asset: (asset, kind) → balance.
    let mut figures: std::collections::BTreeMap<String, [i128; 5]> =
        std::collections::BTreeMap::new();
    for account in items(&provider) {
        let slot = match str_at(account, "/kind").as_str() {
            "spent" => 0,
            "fees" => 1,
            "treasury" => 2,
            "expired" => 3,
            "issuance" => 4,
            _ => continue,
        };
        figures.entry(str_at(account, "/asset")).or_default()[slot] +=
            int_at(account, "/balance/balance");
    }
    let amount = |asset: &str, value: i128| {
        if asset == "CR" {
            cr(value)
        } else {
            format!("{} tokens", count(value))
        }
    };
    let cr_figures = figures.get("CR").copied().unwrap_or_default();
    // Recent fills of the three most recent markets (the API has no platform-wide totals).
    let mut sampled: Vec<&Value> = items(&markets).iter().collect();
    sampled.sort_by_key(|m| std::cmp::Reverse(str_at(m, "/cycle")));
    sampled.truncate(3);
    let mut volume = Vec::new();
    for market in &sampled {
        let asset = str_at(market, "/asset");
        if !is_plain(&asset) {
            continue;
        }
        let fills = session
            .get(&req, &format!("/v1/markets/{asset}/fills?limit=1000"))
            .await
            .unwrap_or_default();
        let (mut trades, mut tokens, mut cost, mut provider) = (0i128, 0i128, 0i128, 0i128);
        for fill in items(&fills) {
            trades += 1;
            tokens += int_at(fill, "/quantity");
            let c = int_at(fill, "/cost_micro_cr");
            cost += c;
            if bool_at(fill, "/from_provider") {
                provider += c;
            }
        }
        let fee_rate: Decimal = str_at(market, "/settings/fee_rate")
            .parse()
            .unwrap_or(Decimal::ZERO);
        let fees = Decimal::from(cost.saturating_sub(provider))
            .checked_mul(fee_rate)
            .and_then(|f| f.floor().to_i128())
            .unwrap_or(0);
        volume.push((asset, trades, tokens, cost, provider, fees));
    }
    let data: Vec<Datum> = volume
        .iter()
        .map(|v| Datum {
            label: v.0.clone(),
            value: v.3,
        })
        .collect();
    let body = html! {
        h1 { "Platform" }
        div.grid {
            div.card {
                h2 { "CR spent" }
                p.figure { (cr(cr_figures[0])) }
                p.muted { "usage paid from wallets, all time" }
            }
            div.card {
                h2 { "Fees earned" }
                p.figure { (cr(cr_figures[1])) }
                p.muted { "market fees, all time" }
            }
            div.card {
                h2 { "CR issued" }
                p.figure { (cr(-cr_figures[4])) }
                p.muted { "top-ups, grants, sale proceeds and buyback payouts" }
            }
            div.card {
                h2 { "Markets" }
                p.figure { (items(&markets).len()) }
                p.muted { "with a market set up or traded" }
            }
        }
        h2 { "Tokens by cycle" }
        p.muted { "The provider's accounts as the ledger keeps them: what was consumed, bought back (still in the treasury), expired unused, and issued." }
        div.table-wrap { table {
            thead { tr { th { "Asset" } th.num { "Spent" } th.num { "Bought back (treasury)" } th.num { "Expired" } th.num { "Issued" } } }
            tbody { @for (asset, f) in &figures { @if asset != "CR" { tr {
                td { (asset) } td.num { (amount(asset, f[0])) } td.num { (amount(asset, f[2])) }
                td.num { (amount(asset, f[3])) } td.num { (amount(asset, -f[4])) }
            } } } }
        } }
        h2 { "Books" }
        @match &books {
            None => {
                p { "The check recomputes every balance from the journal (it reads all of it). "
                    a.button.secondary href="/portal/admin?check=1" { "Check the books now" } }
            }
            Some(books) => {
                @let ok = bool_at(books, "/ok");
                div.grid {
                    div.card {
                        h2 { "Ledger check" }
                        p.figure { @if ok { span.pill.ok { "balanced" } } @else { span.pill.bad { "NOT balanced" } } }
                        p.muted { (count(int_at(books, "/accounts"))) " accounts · " (count(int_at(books, "/journal_entries"))) " journal entries" }
                    }
                    div.card {
                        h2 { "Discrepancies" }
                        p.figure { (count(int_at(books, "/discrepancies"))) }
                        p.muted { (count(int_at(books, "/negative_accounts"))) " negative · "
                            (count(int_at(books, "/orphan_entries"))) " orphan entries · "
                            (count(int_at(books, "/broken_pending_links"))) " broken pending links" }
                    }
                }
                @let unbalanced = items_at(books, "/unbalanced_assets");
                @if !unbalanced.is_empty() {
                    div.banner.error role="alert" { "Unbalanced assets: "
                        @for a in unbalanced { code { (a.as_str().unwrap_or_default()) } " " } }
                }
            }
        }
        h2 { "Market volume" }
        p.muted { "From each market's most recent trades (up to 1,000), for the three most recent markets. "
            "Fees are estimated at the market's current fee rate on trades between orgs." }
        @if volume.is_empty() {
            p { "No market has traded yet." }
        } @else {
            (charts::bars("Traded CR by market", &data, &|v| cr(v)))
            div.table-wrap { table {
                thead { tr { th { "Market" } th.num { "Trades" } th.num { "Tokens" } th.num { "Traded" }
                    th.num { "Emergency credits" } th.num { "Fees (est.)" } } }
                tbody { @for (asset, trades, tokens, cost, provider, fees) in &volume { tr {
                    td { a href=(format!("/portal/admin/markets/{asset}")) { (asset) } }
                    td.num { (count(*trades)) } td.num { (count(*tokens)) } td.num { (cr(*cost)) }
                    td.num { (cr(*provider)) } td.num { (cr(*fees)) }
                } } }
            } }
        }
        h2 { "Buyback prices now" }
        (market_table(&markets))
        h2 { "Cycles" }
        (cycle_table(&session, &cycles, false))
    };
    Ok(admin_page(
        &req,
        &session,
        StatusCode::OK,
        Section::Admin,
        "Platform",
        body,
    ))
}

/// A filtered, paged list an admin page reads from the API.
struct Listed {
    /// The page's own filters as a query string, for the next page's link.
    filter_query: String,
    /// The API's answer (`Null` when it refused the filters).
    answer: Value,
    /// Why the API refused the filters, at the form's fields.
    errors: FormErrors,
    /// The page's status: the API's refusal, or 200.
    status: StatusCode,
}

/// Reads `api` filtered by the page's query: each `(field, parameter)` of `filters` that is set
/// in the page's query becomes `parameter` of the API's, and so does `cursor`. A refused filter
/// is shown at its field (the page still drawn); any other problem is the whole page.
async fn list_for(
    req: &HttpRequest,
    session: &Session,
    section: Section,
    api: &str,
    filters: &[(&str, &str)],
) -> Result<Listed, HttpResponse> {
    let q = query(req);
    let (mut own, mut api_query) = (Vec::new(), Vec::new());
    for (field, parameter) in filters {
        let value = q.get(*field).map_or("", |v| v.trim());
        if !value.is_empty() {
            own.push(format!("{field}={}", url_encode(value)));
            api_query.push(format!("{parameter}={}", url_encode(value)));
        }
    }
    if let Some(cursor) = q.get("cursor").filter(|c| !c.trim().is_empty()) {
        api_query.push(format!("cursor={}", url_encode(cursor.trim())));
    }
    let path = format!("{api}?{}", api_query.join("&"));
    let filter_query = own.join("&");
    match session.get(req, &path).await {
        Ok(answer) => Ok(Listed {
            filter_query,
            answer,
            errors: FormErrors::default(),
            status: StatusCode::OK,
        }),
        Err(p) if p.status.is_client_error() && p.status != StatusCode::FORBIDDEN => {
            let parameters: Vec<&str> = filters.iter().map(|(_, parameter)| *parameter).collect();
            Ok(Listed {
                filter_query,
                answer: Value::Null,
                status: p.status,
                errors: FormErrors::of(p, &parameters),
            })
        }
        Err(p) => Err(problem_page(req, session, None, section, &p)),
    }
}

// ---------------------------------------------------------------------------------------------
// Orgs.

const PLANS: [&str; 3] = ["free", "teams", "enterprise"];

async fn orgs(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let q = query(&req);
    let go = q.get("go").map_or("", |s| s.trim());
    if !go.is_empty() {
        if is_uuid(go) {
            return Ok(back(&req, &session, &format!("/portal/admin/orgs/{go}")));
        }
        let failed = Failed::new(
            "go",
            invalid("`go`: an org id is a UUID such as 0190…-….".to_owned()),
            &["go"],
            q.clone(),
        );
        return orgs_page(&req, &session, Some(&failed)).await;
    }
    orgs_page(&req, &session, None).await
}

/// The filters of the orgs page (named apart from the create form's fields) and the
/// parameters of `GET /v1/admin/orgs` they become.
const ORG_FILTERS: [(&str, &str); 3] = [
    ("search", "name"),
    ("on_plan", "plan"),
    ("standing", "frozen"),
];

async fn orgs_page(
    req: &HttpRequest,
    session: &Session,
    failed: Option<&Failed>,
) -> Result<HttpResponse, actix_web::Error> {
    let listed = match list_for(
        req,
        session,
        Section::AdminOrgs,
        "/v1/admin/orgs",
        &ORG_FILTERS,
    )
    .await
    {
        Ok(listed) => listed,
        Err(page) => return Ok(page),
    };
    let status = if failed.is_some() {
        status_of(failed)
    } else {
        listed.status
    };
    let filter_errors = &listed.errors;
    let filter_query = &listed.filter_query;
    let plans: Vec<(String, String)> = [("", "any plan")]
        .into_iter()
        .chain(PLANS.map(|plan| (plan, plan)))
        .map(|(value, text)| (value.to_owned(), text.to_owned()))
        .collect();
    let standings: Vec<(String, String)> = [("", "any"), ("false", "active"), ("true", "frozen")]
        .map(|(value, text)| (value.to_owned(), text.to_owned()))
        .to_vec();
    let orgs = items_at(&listed.answer, "/orgs");
    let next = str_at(&listed.answer, "/next");
    let q = query(req);
    let value = |name: &str| q.get(name).map_or(String::new(), |v| v.trim().to_owned());
    let create = errors_of(failed, "create");
    let go = errors_of(failed, "go");
    let body = html! {
        h1 { "Orgs" }
        (done_banner(req))
        form.stack method="get" action="/portal/admin/orgs" {
            (form_banner(go))
            (field("Go to an org by id", "go", "text", &typed(failed, "go", "go", ""), Some("its UUID"), go.at("go")))
            button type="submit" { "Open org" }
        }
        h2 { "All orgs" }
        form.stack method="get" action="/portal/admin/orgs" {
            (form_banner(filter_errors))
            (field("Name contains", "search", "text", &value("search"), Some("letters match in either case"), filter_errors.at("name")))
            (select("Plan", "on_plan", &plans, &value("on_plan"), filter_errors.at("plan")))
            (select("Standing", "standing", &standings, &value("standing"), filter_errors.at("frozen")))
            button type="submit" { "Filter" }
        }
        @if orgs.is_empty() { p { "No orgs." } } @else {
            div.table-wrap { table {
                thead { tr { th { "Name" } th { "Plan" } th { "Standing" } th { "Created" } th { "Id" } } }
                tbody { @for o in orgs {
                    @let id = str_at(o, "/id");
                    tr {
                        td { a href=(format!("/portal/admin/orgs/{id}")) { (str_at(o, "/name")) } }
                        td { (str_at(o, "/plan")) }
                        td { @if o.pointer("/frozen").and_then(Value::as_bool) == Some(true) { "frozen" } @else { "active" } }
                        td { (when(&str_at(o, "/created_at"))) }
                        td { code { (id) } }
                    }
                } }
            } }
        }
        @if !next.is_empty() {
            @let sep = if filter_query.is_empty() { "" } else { "&" };
            p { a href=(format!("/portal/admin/orgs?{filter_query}{sep}cursor={}", url_encode(&next))) { "Next page →" } }
        }
        h2 { "Create an org" }
        form.stack method="post" action="/portal/admin/orgs" {
            (csrf_input(session))
            (form_banner(create))
            (field("Name", "name", "text", &typed(failed, "create", "name", ""), None, create.at("name")))
            (select("Plan", "plan", &options(&PLANS), &typed(failed, "create", "plan", "teams"), create.at("plan")))
            button type="submit" { "Create org" }
        }
    };
    Ok(admin_page(
        req,
        session,
        status,
        Section::AdminOrgs,
        "Orgs",
        body,
    ))
}

async fn create_org(
    req: HttpRequest,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(r) = check_form(&req, &fields) {
        return Ok(r);
    }
    let session = Session::of(&req).await?;
    let body = json!({ "name": text(&fields, "name"), "plan": text(&fields, "plan") });
    match submit(&req, &session, Method::POST, "/v1/admin/orgs", &body, None).await {
        Ok(org) => {
            let id = str_at(&org, "/id");
            let location = if is_uuid(&id) {
                format!("/portal/admin/orgs/{id}?done=org-created")
            } else {
                "/portal/admin/orgs?done=org-created".to_owned()
            };
            Ok(back(&req, &session, &location))
        }
        Err(p) => {
            let failed = Failed::new("create", p, &["name", "plan"], fields);
            orgs_page(&req, &session, Some(&failed)).await
        }
    }
}

async fn org_page(
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let org = path.into_inner();
    org_view(&req, &session, &org, None).await
}

async fn org_view(
    req: &HttpRequest,
    session: &Session,
    org: &str,
    failed: Option<&Failed>,
) -> Result<HttpResponse, actix_web::Error> {
    if let Some(refused) = admins_only(req, session, Section::AdminOrgs) {
        return Ok(refused);
    }
    if !is_uuid(org) {
        return Ok(problem_page(
            req,
            session,
            None,
            Section::AdminOrgs,
            &not_found("org"),
        ));
    }
    let view = match session.get(req, &format!("/v1/orgs/{org}")).await {
        Ok(v) => v,
        Err(p) => return Ok(problem_page(req, session, None, Section::AdminOrgs, &p)),
    };
    let balances = session
        .get(req, &format!("/v1/orgs/{org}/balances"))
        .await
        .unwrap_or_default();
    let links = session
        .get(req, &format!("/v1/admin/orgs/{org}/links"))
        .await
        .unwrap_or_default();
    let overdraft = session
        .get(req, &format!("/v1/orgs/{org}/overdraft"))
        .await
        .unwrap_or_default();
    let flags = session
        .get(
            req,
            &format!("/v1/admin/review/flags?org_id={org}&all=true&limit=50"),
        )
        .await
        .unwrap_or_default();
    let name = str_at(&view, "/name");
    let frozen = bool_at(&view, "/frozen");
    let level = int_at(&view, "/verification_level").to_string();
    let plan = str_at(&view, "/plan");
    let base = format!("/portal/admin/orgs/{org}");
    let standing = errors_of(failed, "standing");
    let credits = errors_of(failed, "credits");
    let link = errors_of(failed, "link");
    let limit = errors_of(failed, "overdraft");
    let freeze = errors_of(failed, "freeze");
    let levels: Vec<(String, String)> = [
        ("0", "0 · none"),
        ("1", "1 · e-mail"),
        ("2", "2 · business"),
        ("3", "3 · full"),
    ]
    .iter()
    .map(|(v, t)| ((*v).to_owned(), (*t).to_owned()))
    .collect();
    let body = html! {
        h1 { (name) }
        p.muted { code { (org) } " · plan " (plan) " · verification level " (level) " · created " (when(&str_at(&view, "/created_at")))
            @if frozen { " · " span.pill.bad { "frozen" } }
            " · " a href=(format!("/portal/o/{org}")) { "Customer view" } }
        (done_banner(req))
        h2 { "Balances" }
        @if items(&balances).is_empty() { p { "No accounts yet." } } @else {
            div.table-wrap { table {
                thead { tr { th { "Asset" } th { "Account" } th.num { "Balance" } th.num { "Available" } } }
                tbody { @for b in items(&balances) {
                    @let asset = str_at(b, "/asset");
                    @let show = |v: i128| if asset == "CR" { cr(v) } else { count(v) };
                    tr { td { (asset) } td { (str_at(b, "/kind")) }
                        td.num { (show(int_at(b, "/balance/balance"))) } td.num { (show(int_at(b, "/balance/available"))) } }
                } }
            } }
        }
        div.grid {
            div.card {
                h2 { "Standing" }
                form.stack method="post" action=(format!("{base}/standing")) {
                    (csrf_input(session))
                    (form_banner(standing))
                    (select("Verification level", "verification_level", &levels, &typed(failed, "standing", "verification_level", &level), standing.at("verification_level")))
                    (select("Plan", "plan", &options(&PLANS), &typed(failed, "standing", "plan", &plan), standing.at("plan")))
                    button type="submit" { "Save standing" }
                }
                form.stack method="post" action=(format!("{base}/freeze")) {
                    (csrf_input(session))
                    (form_banner(freeze))
                    @if frozen {
                        input type="hidden" name="frozen" value="false";
                        button type="submit" { "Unfreeze org" }
                    } @else {
                        input type="hidden" name="frozen" value="true";
                        button.danger type="submit" { "Freeze org" }
                    }
                }
            }
            div.card {
                h2 { "Credit CR" }
                form.stack method="post" action=(format!("{base}/credits")) {
                    (csrf_input(session))
                    (idempotency_input())
                    (form_banner(credits))
                    (select("Kind", "kind", &[("top_up".to_owned(), "Top-up (paid outside Credex)".to_owned()), ("grant".to_owned(), "Grant (given)".to_owned())], &typed(failed, "credits", "kind", "top_up"), credits.at("kind")))
                    (field("Amount, CR", "amount_cr", "text", &typed(failed, "credits", "amount_cr", ""), Some("e.g. 25 or 12.5"), credits.at("amount_cr").or(credits.at("amount_micro_cr"))))
                    (field("Reason", "reason", "text", &typed(failed, "credits", "reason", ""), Some("an invoice, a promotion"), credits.at("reason")))
                    button type="submit" { "Credit CR" }
                }
            }
            div.card {
                h2 { "Overdraft" }
                p.muted { "Limit " (cr(int_at(&overdraft, "/limit_micro_cr"))) " · used " (cr(int_at(&overdraft, "/used_micro_cr")))
                    " · available " (cr(int_at(&overdraft, "/available_micro_cr"))) }
                form.stack method="post" action=(format!("{base}/overdraft")) {
                    (csrf_input(session))
                    (form_banner(limit))
                    (field("Limit, CR", "limit_cr", "text", &typed(failed, "overdraft", "limit_cr", &cr_plain(int_at(&overdraft, "/limit_micro_cr"))), Some("0 ends the allowance"), limit.at("limit_cr").or(limit.at("limit_micro_cr"))))
                    button type="submit" { "Set overdraft limit" }
                }
            }
        }
        h2 { "Linked orgs" }
        p.muted { "Linked orgs count as one owner in the market: neither buys the other's listings." }
        @let linked = items_at(&links, "/linked");
        @if linked.is_empty() { p { "None." } } @else {
            ul { @for other in linked {
                @let other = other.as_str().unwrap_or_default();
                li { a href=(format!("/portal/admin/orgs/{other}")) { code { (other) } } " "
                    form.inline method="post" action=(format!("{base}/unlink")) {
                        (csrf_input(session))
                        input type="hidden" name="other" value=(other);
                        button.secondary type="submit" { "Unlink" }
                    } }
            } }
        }
        form.stack method="post" action=(format!("{base}/link")) {
            (csrf_input(session))
            (form_banner(link))
            (field("Link to org id", "other", "text", &typed(failed, "link", "other", ""), None, link.at("other")))
            button type="submit" { "Link orgs" }
        }
        h2 { "Review flags" }
        (flag_table(session, &flags, None))
    };
    Ok(admin_page(
        req,
        session,
        status_of(failed),
        Section::AdminOrgs,
        &name,
        body,
    ))
}

async fn org_action(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(r) = check_form(&req, &fields) {
        return Ok(r);
    }
    let session = Session::of(&req).await?;
    let (org, action) = path.into_inner();
    if !is_uuid(&org) {
        return Ok(problem_page(
            &req,
            &session,
            None,
            Section::AdminOrgs,
            &not_found("org"),
        ));
    }
    let admin_path = format!("/v1/admin/orgs/{org}");
    let (form_name, names, outcome, done): (&'static str, &[&str], Result<Value, Problem>, &str) =
        match action.as_str() {
            "standing" => {
                let level = opt_int(&fields, "verification_level");
                let outcome = match level {
                    Ok(level) => {
                        let body =
                            json!({ "verification_level": level, "plan": text(&fields, "plan") });
                        submit(&req, &session, Method::PATCH, &admin_path, &body, None).await
                    }
                    Err(p) => Err(p),
                };
                (
                    "standing",
                    &["verification_level", "plan"],
                    outcome,
                    "standing",
                )
            }
            "freeze" => {
                let frozen = text(&fields, "frozen") == "true";
                let body = json!({ "frozen": frozen });
                let outcome = submit(&req, &session, Method::PATCH, &admin_path, &body, None).await;
                (
                    "freeze",
                    &["frozen"],
                    outcome,
                    if frozen { "frozen" } else { "unfrozen" },
                )
            }
            "credits" => {
                let outcome = match micro_cr_of(&fields, "amount_cr") {
                    Ok(amount) => {
                        let body = json!({
                            "kind": text(&fields, "kind"),
                            "amount_micro_cr": amount,
                            "reason": text(&fields, "reason"),
                        });
                        let key = text(&fields, "idempotency_key");
                        let key = (!key.is_empty()).then_some(key);
                        submit(
                            &req,
                            &session,
                            Method::POST,
                            &format!("{admin_path}/credits"),
                            &body,
                            key,
                        )
                        .await
                    }
                    Err(p) => Err(p),
                };
                (
                    "credits",
                    &["amount_cr", "amount_micro_cr", "kind", "reason"],
                    outcome,
                    "credited",
                )
            }
            "overdraft" => {
                let outcome = match micro_cr_of(&fields, "limit_cr") {
                    Ok(limit) => {
                        let body = json!({ "limit_micro_cr": limit });
                        submit(
                            &req,
                            &session,
                            Method::PUT,
                            &format!("{admin_path}/overdraft"),
                            &body,
                            None,
                        )
                        .await
                    }
                    Err(p) => Err(p),
                };
                (
                    "overdraft",
                    &["limit_cr", "limit_micro_cr"],
                    outcome,
                    "overdraft",
                )
            }
            "link" | "unlink" => {
                let other = text(&fields, "other");
                let outcome = if is_uuid(other) {
                    let method = if action == "link" {
                        Method::PUT
                    } else {
                        Method::DELETE
                    };
                    submit(
                        &req,
                        &session,
                        method,
                        &format!("{admin_path}/links/{other}"),
                        &Value::Null,
                        None,
                    )
                    .await
                } else {
                    Err(invalid(
                        "`other`: an org id is a UUID (see the org's page).".to_owned(),
                    ))
                };
                let done = if action == "link" {
                    "linked"
                } else {
                    "unlinked"
                };
                ("link", &["other"], outcome, done)
            }
            _ => {
                return Ok(problem_page(
                    &req,
                    &session,
                    None,
                    Section::AdminOrgs,
                    &not_found("action"),
                ))
            }
        };
    match outcome {
        Ok(_) => Ok(back(
            &req,
            &session,
            &format!("/portal/admin/orgs/{org}?done={done}"),
        )),
        Err(p) => {
            let failed = Failed::new(form_name, p, names, fields);
            org_view(&req, &session, &org, Some(&failed)).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Review flags.

async fn flags(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    flags_page(&req, &session, None).await
}

async fn flags_page(
    req: &HttpRequest,
    session: &Session,
    failed: Option<&Failed>,
) -> Result<HttpResponse, actix_web::Error> {
    let all = query(req)
        .get("all")
        .is_some_and(|v| v == "1" || v == "true");
    let path = if all {
        "/v1/admin/review/flags?all=true&limit=500"
    } else {
        "/v1/admin/review/flags?limit=500"
    };
    let list = match session.get(req, path).await {
        Ok(v) => v,
        Err(p) => return Ok(problem_page(req, session, None, Section::AdminFlags, &p)),
    };
    let scan = errors_of(failed, "scan");
    let body = html! {
        h1 { "Review flags" }
        (done_banner(req))
        @if let Some(raised) = query(req).get("raised") {
            p { "Flags raised by the scan: " strong { (raised.parse::<u64>().unwrap_or(0)) } }
        }
        p.muted {
            "A flagged org cannot trade until every open flag is cleared. "
            @if all { "Showing every flag. " a href="/portal/admin/flags" { "Show open flags only" } }
            @else { "Showing open flags. " a href="/portal/admin/flags?all=1" { "Show cleared flags too" } }
        }
        form.inline method="post" action="/portal/admin/flags/scan" {
            (csrf_input(session))
            (form_banner(scan))
            button type="submit" { "Scan now" }
        }
        (flag_table(session, &list, failed))
    };
    Ok(admin_page(
        req,
        session,
        status_of(failed),
        Section::AdminFlags,
        "Review flags",
        body,
    ))
}

/// Flags, each open one with a form to clear it.
fn flag_table(session: &Session, list: &Value, failed: Option<&Failed>) -> Markup {
    html! {
        @if items(list).is_empty() { p { "No flags." } } @else {
            div.table-wrap { table {
                thead { tr { th { "Raised" } th { "Org" } th { "Kind" } th { "Subject" } th { "Reason" } th { "Status" } } }
                tbody { @for f in items(list) {
                    @let id = str_at(f, "/id");
                    @let org = str_at(f, "/org_id");
                    @let form = format!("clear-{id}");
                    @let failed_here = failed.filter(|x| x.fields.get("flag").is_some_and(|v| *v == id));
                    @let errors = failed_here.map_or(&NO_ERRORS, |x| &x.errors);
                    tr {
                        td { (when(&str_at(f, "/raised_at"))) }
                        td { a href=(format!("/portal/admin/orgs/{org}")) { code { (short_id(&org)) } } }
                        td { (str_at(f, "/kind")) }
                        td { (str_at(f, "/subject")) }
                        td { (str_at(f, "/reason")) }
                        td {
                            @if f.pointer("/cleared_at").is_some_and(|c| !c.is_null()) {
                                span.pill.ok { "cleared" } " " (when(&str_at(f, "/cleared_at")))
                                @let note = str_at(f, "/note");
                                @if !note.is_empty() { br; span.muted { (note) } }
                            } @else {
                                form.stack method="post" action=(format!("/portal/admin/flags/{id}/clear")) id=(form) {
                                    (csrf_input(session))
                                    input type="hidden" name="flag" value=(id);
                                    (form_banner(errors))
                                    @let note = failed_here.map_or(String::new(), |x| text(&x.fields, "note").to_owned());
                                    (field("Why it is fine", &format!("note-{id}"), "text", &note, None, errors.at("note")))
                                    button type="submit" { "Clear flag" }
                                }
                            }
                        }
                    }
                } }
            } }
        }
    }
}

async fn clear_flag(
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let mut fields = form.into_inner();
    if let Err(r) = check_form(&req, &fields) {
        return Ok(r);
    }
    let session = Session::of(&req).await?;
    let id = path.into_inner();
    if !is_uuid(&id) {
        return Ok(problem_page(
            &req,
            &session,
            None,
            Section::AdminFlags,
            &not_found("flag"),
        ));
    }
    let note = text(&fields, &format!("note-{id}")).to_owned();
    fields.insert("note".to_owned(), note.clone());
    fields.insert("flag".to_owned(), id.clone());
    let body = json!({ "note": note });
    let outcome = submit(
        &req,
        &session,
        Method::POST,
        &format!("/v1/admin/review/flags/{id}/clear"),
        &body,
        None,
    )
    .await;
    match outcome {
        Ok(_) => Ok(back(&req, &session, "/portal/admin/flags?done=cleared")),
        Err(p) => {
            let failed = Failed::new("clear", p, &["note"], fields);
            flags_page(&req, &session, Some(&failed)).await
        }
    }
}

async fn scan(req: HttpRequest, form: web::Form<Fields>) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(r) = check_form(&req, &fields) {
        return Ok(r);
    }
    let session = Session::of(&req).await?;
    match submit(
        &req,
        &session,
        Method::POST,
        "/v1/admin/review/scan",
        &Value::Null,
        None,
    )
    .await
    {
        Ok(report) => {
            let raised = int_at(&report, "/raised");
            Ok(back(
                &req,
                &session,
                &format!("/portal/admin/flags?done=scanned&raised={raised}"),
            ))
        }
        Err(p) => {
            let failed = Failed::new("scan", p, &[], fields);
            flags_page(&req, &session, Some(&failed)).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Markets.

/// A market's buyback rate and caps, readable.
fn buyback_summary(settings: &Value) -> String {
    let rate = str_at(settings, "/buyback/rate");
    let mut out = format!("rate {}", if rate.is_empty() { "0.9" } else { &rate });
    if settings
        .pointer("/buyback/cycle_cap_micro_cr")
        .is_some_and(|v| !v.is_null())
    {
        out.push_str(&format!(
            " · cycle cap {}",
            cr(int_at(settings, "/buyback/cycle_cap_micro_cr"))
        ));
    }
    if settings
        .pointer("/buyback/org_cap_micro_cr")
        .is_some_and(|v| !v.is_null())
    {
        out.push_str(&format!(
            " · org cap {}",
            cr(int_at(settings, "/buyback/org_cap_micro_cr"))
        ));
    }
    if settings
        .pointer("/buyback/schedule")
        .is_some_and(|v| !v.is_null())
    {
        out.push_str(" · with schedule");
    }
    out
}

fn curve_summary(curve: &Value) -> String {
    let kind = str_at(curve, "/kind");
    let floor = str_at(curve, "/floor");
    match kind.as_str() {
        "half_life" => format!(
            "half-life {} s, floor {floor}",
            int_at(curve, "/half_life_seconds")
        ),
        "stairstep" => format!("{} steps, floor {floor}", int_at(curve, "/steps")),
        _ => format!("{kind}, floor {floor}"),
    }
}

fn market_table(markets: &Value) -> Markup {
    html! {
        @if items(markets).is_empty() { p { "No markets yet." } } @else {
            div.table-wrap { table {
                thead { tr { th { "Market" } th { "Cycle" } th { "Curve" } th.num { "Decay now" } th.num { "Best price / 1M" }
                    th.num { "Buyback price / 1M" } th { "Buyback" } th { "Fee" } th.num { "Provider list price / 1M" } } }
                tbody { @for m in items(markets) {
                    @let asset = str_at(m, "/asset");
                    tr {
                        td { a href=(format!("/portal/admin/markets/{}", segment(&asset))) { (asset) } }
                        td { (str_at(m, "/cycle")) }
                        td { (curve_summary(m.pointer("/settings/curve").unwrap_or(&Value::Null))) }
                        td.num { (str_at(m, "/decay_factor_now")) }
                        td.num { @if m.pointer("/best_price_now_per_1m_micro_cr").is_some_and(|v| !v.is_null()) {
                            (cr(int_at(m, "/best_price_now_per_1m_micro_cr"))) } @else { "—" } }
                        td.num { (cr(int_at(m, "/buyback_price_now_per_1m_micro_cr"))) }
                        td { (buyback_summary(m.pointer("/settings").unwrap_or(&Value::Null))) }
                        td { (str_at(m, "/settings/fee_rate")) " · " (str_at(m, "/settings/fee_payer")) " pays" }
                        td.num { (cr(int_at(m, "/settings/provider_list_price_per_1m_micro_cr")))
                            @if !bool_at(m, "/settings/provider_fill") { " (off)" } }
                    }
                } }
            } }
        }
    }
}

async fn markets(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    if let Some(refused) = admins_only(&req, &session, Section::AdminMarkets) {
        return Ok(refused);
    }
    let q = query(&req);
    let asset = q.get("asset").map_or("", |s| s.trim());
    if !asset.is_empty() && is_plain(asset) {
        return Ok(back(
            &req,
            &session,
            &format!("/portal/admin/markets/{asset}"),
        ));
    }
    let cycle = q.get("cycle").map_or("", |s| s.trim()).to_owned();
    let path = if !cycle.is_empty() && is_plain(&cycle) {
        format!("/v1/markets?cycle={cycle}")
    } else {
        "/v1/markets".to_owned()
    };
    let list = match session.get(&req, &path).await {
        Ok(v) => v,
        Err(p) => {
            return Ok(problem_page(
                &req,
                &session,
                None,
                Section::AdminMarkets,
                &p,
            ))
        }
    };
    let body = html! {
        h1 { "Markets" }
        form.inline method="get" action="/portal/admin/markets" {
            label for="f-cycle" { "Cycle" input id="f-cycle" name="cycle" type="text" value=(cycle) placeholder="2026-11"; }
            " " button.secondary type="submit" { "Filter" }
        }
        (market_table(&list))
        h2 { "Set up a market" }
        p.muted { "A market is made for a token asset of an opened cycle, TOK.<class>.<cycle>, when first set up or traded." }
        form.stack method="get" action="/portal/admin/markets" {
            (field("Asset", "asset", "text", "", Some("e.g. TOK.pro.2026-11"), None))
            button type="submit" { "Open market settings" }
        }
    };
    Ok(admin_page(
        &req,
        &session,
        StatusCode::OK,
        Section::AdminMarkets,
        "Markets",
        body,
    ))
}

/// The market form's values: from what was typed (a failed save, a preview) or the settings.
#[derive(Debug, Clone)]
struct MarketForm {
    curve_kind: String,
    floor: String,
    half_life_seconds: String,
    steps: String,
    fee_rate: String,
    fee_payer: String,
    buyback_rate: String,
    cycle_cap: String,
    org_cap: String,
    list_price: String,
    provider_fill: String,
    window_opens_at: String,
}

impl MarketForm {
    fn of_market(market: &Value) -> Self {
        let opt = |p: &str| {
            if market.pointer(p).is_some_and(|v| !v.is_null()) {
                int_at(market, p).to_string()
            } else {
                String::new()
            }
        };
        let rate = str_at(market, "/settings/buyback/rate");
        Self {
            curve_kind: str_at(market, "/settings/curve/kind"),
            floor: str_at(market, "/settings/curve/floor"),
            half_life_seconds: opt("/settings/curve/half_life_seconds"),
            steps: opt("/settings/curve/steps"),
            fee_rate: str_at(market, "/settings/fee_rate"),
            fee_payer: str_at(market, "/settings/fee_payer"),
            buyback_rate: if rate.is_empty() {
                "0.9".to_owned()
            } else {
                rate
            },
            cycle_cap: opt("/settings/buyback/cycle_cap_micro_cr"),
            org_cap: opt("/settings/buyback/org_cap_micro_cr"),
            list_price: opt("/settings/provider_list_price_per_1m_micro_cr"),
            provider_fill: if bool_at(market, "/settings/provider_fill") {
                "true".to_owned()
            } else {
                "false".to_owned()
            },
            window_opens_at: str_at(market, "/window_opens_at"),
        }
    }

    /// The typed values over `base` (a field left out of `fields` keeps its base value).
    fn typed(base: &Self, fields: &Fields) -> Self {
        let pick = |name: &str, b: &str| match fields.get(name) {
            Some(v) => v.trim().to_owned(),
            None => b.to_owned(),
        };
        Self {
            curve_kind: pick("curve_kind", &base.curve_kind),
            floor: pick("floor", &base.floor),
            half_life_seconds: pick("half_life_seconds", &base.half_life_seconds),
            steps: pick("steps", &base.steps),
            fee_rate: pick("fee_rate", &base.fee_rate),
            fee_payer: pick("fee_payer", &base.fee_payer),
            buyback_rate: pick("buyback_rate", &base.buyback_rate),
            cycle_cap: pick("cycle_cap_micro_cr", &base.cycle_cap),
            org_cap: pick("org_cap_micro_cr", &base.org_cap),
            list_price: pick("provider_list_price_per_1m_micro_cr", &base.list_price),
            provider_fill: pick("provider_fill", &base.provider_fill),
            window_opens_at: pick("window_opens_at", &base.window_opens_at),
        }
    }

    /// The curve these values describe, as the pricing crate checks it.
    fn curve(&self) -> Result<DecayCurve, String> {
        let floor: Decimal = self
            .floor
            .parse()
            .map_err(|_| "the floor is not a decimal such as 0.1".to_owned())?;
        let curve = match self.curve_kind.as_str() {
            "linear" => DecayCurve::linear(floor),
            "half_life" => {
                let seconds: u64 = self
                    .half_life_seconds
                    .parse()
                    .map_err(|_| "the half-life is not a whole number of seconds".to_owned())?;
                DecayCurve::half_life(seconds, floor)
            }
            "stairstep" => {
                let steps: u32 = self
                    .steps
                    .parse()
                    .map_err(|_| "the steps are not a whole number".to_owned())?;
                DecayCurve::stairstep(steps, floor)
            }
            other => return Err(format!("unknown curve kind “{other}”")),
        };
        curve.map_err(|e| e.to_string())
    }

    /// The `MarketPatch` these values make, or the problem of the field that is wrong.
    fn patch(&self, schedule: &Value) -> Result<Value, Problem> {
        let int = |name: &str, raw: &str| -> Result<Option<i64>, Problem> {
            if raw.is_empty() {
                return Ok(None);
            }
            raw.replace(['_', ','], "")
                .parse::<i64>()
                .map(Some)
                .map_err(|_| invalid(format!("`{name}`: “{raw}” is not a whole number.")))
        };
        let mut curve = json!({ "kind": self.curve_kind, "floor": self.floor });
        match self.curve_kind.as_str() {
            "half_life" => {
                curve["half_life_seconds"] =
                    json!(int("half_life_seconds", &self.half_life_seconds)?);
            }
            "stairstep" => {
                curve["steps"] = json!(int("steps", &self.steps)?);
            }
            _ => {}
        }
        let mut patch = json!({
            "curve": curve,
            "fee_rate": self.fee_rate,
            "fee_payer": self.fee_payer,
            "buyback": {
                "rate": self.buyback_rate,
                "cycle_cap_micro_cr": int("cycle_cap_micro_cr", &self.cycle_cap)?,
                "org_cap_micro_cr": int("org_cap_micro_cr", &self.org_cap)?,
                "schedule": schedule.clone(),
            },
            "provider_fill": self.provider_fill == "true",
        });
        if let Some(price) = int("provider_list_price_per_1m_micro_cr", &self.list_price)? {
            patch["provider_list_price_per_1m_micro_cr"] = json!(price);
        }
        if !self.window_opens_at.is_empty() {
            patch["window_opens_at"] = json!(self.window_opens_at);
        }
        Ok(patch)
    }
}

/// The fields a market's problems may name.
const MARKET_FIELDS: [&str; 13] = [
    "buyback_rate",
    "fee_rate",
    "fee_payer",
    "half_life_seconds",
    "steps",
    "floor",
    "curve",
    "cycle_cap_micro_cr",
    "org_cap_micro_cr",
    "provider_list_price_per_1m_micro_cr",
    "provider_fill",
    "window_opens_at",
    "rate",
];

fn micros_of(rfc3339: &str) -> Option<i64> {
    rfc3339
        .parse::<jiff::Timestamp>()
        .ok()
        .map(jiff::Timestamp::as_microsecond)
}

/// The decay factor over the window for `form`'s curve, as a chart (or why it cannot be drawn).
fn curve_preview(form: &MarketForm, cycle_ends_at: &str) -> Markup {
    let curve = match form.curve() {
        Ok(c) => c,
        Err(why) => return html! { p.muted { "No preview: " (why) "." } },
    };
    let (Some(open), Some(end)) = (micros_of(&form.window_opens_at), micros_of(cycle_ends_at))
    else {
        return html! { p.muted { "No preview: the window's opening is not an RFC 3339 instant." } };
    };
    let Ok(window) = DecayWindow::new(Timestamp::from_micros(open), Timestamp::from_micros(end))
    else {
        return html! { p.muted { "No preview: the window must open before the cycle ends." } };
    };
    const POINTS: i128 = 120;
    let length = i128::from(end) - i128::from(open);
    let mut points = Vec::new();
    for i in 0..=POINTS {
        let offset = length * i / POINTS;
        let Ok(at) = i64::try_from(i128::from(open) + offset) else {
            continue;
        };
        // Just inside the window at its ends (the factor is 1 before it opens, the floor after).
        let at = at.clamp(open.saturating_add(1), end.saturating_sub(1));
        let factor = curve.factor(window, Timestamp::from_micros(at));
        points.push((offset, i128::from(factor.billionths())));
    }
    let label = |micros: i128| {
        i64::try_from(micros)
            .ok()
            .and_then(|m| jiff::Timestamp::from_microsecond(m).ok())
            .map(|t| t.strftime("%b %d %H:%M").to_string())
            .unwrap_or_default()
    };
    let labels = vec![
        (0, label(i128::from(open))),
        (length / 2, label(i128::from(open) + length / 2)),
        (length, label(i128::from(end))),
    ];
    let now = i128::from(jiff::Timestamp::now().as_microsecond()) - i128::from(open);
    let marker = (0..=length).contains(&now).then_some(now);
    let unit = |v: i128| {
        let whole = v / 1_000_000_000;
        let frac = (v % 1_000_000_000) / 10_000_000;
        format!("{whole}.{frac:02}")
    };
    let at_end = curve.factor(window, Timestamp::from_micros(end));
    html! {
        (charts::line("Decay factor D(t) over the listing window", &points, length, &labels, marker, &unit))
        p.muted { "D(t) falls from 1 when the window opens to " (at_end.as_decimal().normalize().to_string())
            " at the cycle's end; every ask is multiplied by it. Curve: " (curve.kind()) "." }
    }
}

async fn market_page(
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    if let Some(refused) = admins_only(&req, &session, Section::AdminMarkets) {
        return Ok(refused);
    }
    let asset = path.into_inner();
    let q = query(&req);
    // `?preview=1&curve_kind=…` draws the form and its curve with those values.
    let typed = q.contains_key("preview").then_some(q);
    market_view(&req, &session, &asset, typed.as_ref(), None).await
}

async fn market_view(
    req: &HttpRequest,
    session: &Session,
    asset: &str,
    typed: Option<&Fields>,
    failed: Option<&Failed>,
) -> Result<HttpResponse, actix_web::Error> {
    if !is_plain(asset) {
        return Ok(problem_page(
            req,
            session,
            None,
            Section::AdminMarkets,
            &not_found("market"),
        ));
    }
    let (market, missing) = match session.get(req, &format!("/v1/markets/{asset}")).await {
        Ok(v) => (v, None),
        Err(p) if p.status == StatusCode::NOT_FOUND => (Value::Null, Some(p)),
        Err(p) => return Ok(problem_page(req, session, None, Section::AdminMarkets, &p)),
    };
    let history = if missing.is_none() {
        session
            .get(req, &format!("/v1/admin/markets/{asset}/settings-history"))
            .await
            .unwrap_or_default()
    } else {
        Value::Null
    };
    let mut base = MarketForm::of_market(&market);
    if missing.is_some() {
        base = MarketForm {
            curve_kind: "linear".to_owned(),
            floor: "0".to_owned(),
            fee_rate: "0.03".to_owned(),
            fee_payer: "seller".to_owned(),
            provider_fill: "true".to_owned(),
            ..base
        };
    }
    let form = match (failed, typed) {
        (Some(f), _) => MarketForm::typed(&base, &f.fields),
        (None, Some(t)) => MarketForm::typed(&base, t),
        (None, None) => base,
    };
    let errors = errors_of(failed, "market");
    let at = |name: &str| errors.at(name);
    let kinds: Vec<(String, String)> = [
        ("linear", "Linear"),
        ("half_life", "Half-life (exponential)"),
        ("stairstep", "Stairstep"),
    ]
    .iter()
    .map(|(v, t)| ((*v).to_owned(), (*t).to_owned()))
    .collect();
    let yes_no = vec![
        ("true".to_owned(), "yes".to_owned()),
        ("false".to_owned(), "no".to_owned()),
    ];
    let action = format!("/portal/admin/markets/{asset}");
    let cycle_ends_at = str_at(&market, "/cycle_ends_at");
    let body = html! {
        h1 { (asset) }
        (done_banner(req))
        @if let Some(p) = &missing {
            div.banner.note { "This market does not exist yet (" (p.detail) "). Saving settings sets it up, "
                "if its cycle is open." }
        } @else {
            p.muted { "Cycle " (str_at(&market, "/cycle")) " · window opens " (when(&str_at(&market, "/window_opens_at")))
                " · cycle ends " (when(&cycle_ends_at)) " · decay now " (str_at(&market, "/decay_factor_now"))
                " · buyback price now " (cr(int_at(&market, "/buyback_price_now_per_1m_micro_cr"))) " / 1M tokens"
                " · settings of " (when(&str_at(&market, "/settings_updated_at"))) }
        }
        @if missing.is_none() {
            h2 { "Price curve" }
            @if typed.is_some() { p.muted { "Preview of the values in the form below (not saved)." } }
            (curve_preview(&form, &cycle_ends_at))
        }
        h2 { "Settings" }
        form.stack method="post" action=(action) {
            (csrf_input(session))
            (form_banner(errors))
            (select("Decay curve", "curve_kind", &kinds, &form.curve_kind, at("curve").or(at("curve_kind"))))
            (field("Floor", "floor", "text", &form.floor, Some("D at the cycle's end, 0 to below 1, e.g. 0.1"), at("floor")))
            (field("Half-life, seconds", "half_life_seconds", "text", &form.half_life_seconds, Some("half-life curve only"), at("half_life_seconds")))
            (field("Steps", "steps", "text", &form.steps, Some("stairstep curve only, 1 to 100"), at("steps")))
            (field("Listings open at", "window_opens_at", "text", &form.window_opens_at, Some("RFC 3339, before the cycle's end; the decay runs from here"), at("window_opens_at")))
            (field("Fee rate", "fee_rate", "text", &form.fee_rate, Some("a fraction of each fill's cost, e.g. 0.03"), at("fee_rate")))
            (select("Fee paid by", "fee_payer", &options(&["seller", "buyer"]), &form.fee_payer, at("fee_payer")))
            (field("Buyback rate", "buyback_rate", "text", &form.buyback_rate, Some("of face value, more than 0 and at most 1, e.g. 0.9"), at("buyback_rate").or(at("rate"))))
            (field("Buyback cap per cycle, µCR", "cycle_cap_micro_cr", "text", &form.cycle_cap, Some("all orgs together; empty: no cap; 0 stops buybacks"), at("cycle_cap_micro_cr")))
            (field("Buyback cap per org, µCR", "org_cap_micro_cr", "text", &form.org_cap, Some("per cycle; empty: no cap"), at("org_cap_micro_cr")))
            (field("Provider list price, µCR per 1M tokens", "provider_list_price_per_1m_micro_cr", "text", &form.list_price, Some("emergency credits"), at("provider_list_price_per_1m_micro_cr")))
            (select("Provider sells emergency credits", "provider_fill", &yes_no, &form.provider_fill, at("provider_fill")))
            @if market.pointer("/settings/buyback/schedule").is_some_and(|v| !v.is_null()) {
                p.muted { "The buyback schedule (" (curve_summary(market.pointer("/settings/buyback/schedule").unwrap_or(&Value::Null))) ") is kept as it is." }
            }
            div.actions {
                button type="submit" name="action" value="save" { "Save market settings" }
                " "
                button.secondary type="submit" name="action" value="preview" { "Preview curve" }
            }
        }
        @if missing.is_none() {
            h2 { "Settings history" }
            @if items(&history).is_empty() { p { "No changes yet." } } @else {
                div.table-wrap { table {
                    thead { tr { th { "Changed" } th { "By" } th { "Window opens" } th { "Curve" } th { "Fee" } th { "Buyback" } th.num { "List price / 1M" } } }
                    tbody { @for h in items(&history).iter().rev() {
                        @let by = str_at(h, "/changed_by");
                        tr {
                            td { (when(&str_at(h, "/changed_at"))) }
                            td { @if by.is_empty() { "defaults" } @else { code { (short_id(&by)) } } }
                            td { (when(&str_at(h, "/window_opens_at"))) }
                            td { (curve_summary(h.pointer("/settings/curve").unwrap_or(&Value::Null))) }
                            td { (str_at(h, "/settings/fee_rate")) " · " (str_at(h, "/settings/fee_payer")) }
                            td { (buyback_summary(h.pointer("/settings").unwrap_or(&Value::Null))) }
                            td.num { (cr(int_at(h, "/settings/provider_list_price_per_1m_micro_cr"))) }
                        }
                    } }
                } }
            }
        }
    };
    Ok(admin_page(
        req,
        session,
        status_of(failed),
        Section::AdminMarkets,
        asset,
        body,
    ))
}

async fn save_market(
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(r) = check_form(&req, &fields) {
        return Ok(r);
    }
    let session = Session::of(&req).await?;
    let asset = path.into_inner();
    if text(&fields, "action") == "preview" {
        return market_view(&req, &session, &asset, Some(&fields), None).await;
    }
    if !is_plain(&asset) {
        return Ok(problem_page(
            &req,
            &session,
            None,
            Section::AdminMarkets,
            &not_found("market"),
        ));
    }
    // The buyback terms are replaced whole: keep the schedule the form does not edit.
    let current = session
        .get(&req, &format!("/v1/markets/{asset}"))
        .await
        .unwrap_or_default();
    let schedule = current
        .pointer("/settings/buyback/schedule")
        .cloned()
        .unwrap_or(Value::Null);
    let typed = MarketForm::typed(&MarketForm::of_market(&current), &fields);
    let outcome = match typed.patch(&schedule) {
        Ok(patch) => {
            submit(
                &req,
                &session,
                Method::PATCH,
                &format!("/v1/admin/markets/{asset}"),
                &patch,
                None,
            )
            .await
        }
        Err(p) => Err(p),
    };
    match outcome {
        Ok(_) => Ok(back(
            &req,
            &session,
            &format!("/portal/admin/markets/{asset}?done=saved"),
        )),
        Err(mut p) => {
            // The API names nested fields by their JSON name (`rate` of `buyback`).
            if p.detail.contains("`buyback.rate`") || p.detail.starts_with("buyback.rate") {
                p.detail = p.detail.replace("buyback.rate", "buyback_rate");
            }
            let failed = Failed::new("market", p, &MARKET_FIELDS, fields);
            market_view(&req, &session, &asset, None, Some(&failed)).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Models and prices.

async fn models(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    if let Some(refused) = admins_only(&req, &session, Section::AdminModels) {
        return Ok(refused);
    }
    models_page(&req, &session, None).await
}

async fn models_page(
    req: &HttpRequest,
    session: &Session,
    failed: Option<&Failed>,
) -> Result<HttpResponse, actix_web::Error> {
    let q = query(req);
    let after = q.get("after").map_or("", |s| s.trim()).to_owned();
    let path = if after.is_empty() {
        "/v1/models?limit=200".to_owned()
    } else {
        format!("/v1/models?limit=200&after={}", url_encode(&after))
    };
    let list = match session.get(req, &path).await {
        Ok(v) => v,
        Err(p) => return Ok(problem_page(req, session, None, Section::AdminModels, &p)),
    };
    let add = errors_of(failed, "add");
    let price = errors_of(failed, "price");
    let next = str_at(&list, "/next");
    let model_ids: Vec<(String, String)> = items_at(&list, "/models")
        .iter()
        .map(|m| (str_at(m, "/id"), str_at(m, "/id")))
        .collect();
    let t = |form: &str, name: &str| typed(failed, form, name, "");
    let body = html! {
        h1 { "Models and prices" }
        (done_banner(req))
        p.muted { "List prices in USD per 1M tokens, in force now." }
        div.table-wrap { table {
            thead { tr { th { "Model" } th { "Provider" } th { "Class" } th.num { "Input" } th.num { "Cached input" }
                th.num { "Cache write" } th.num { "Output" } th { "Since" } th { "Source" } } }
            tbody { @for m in items_at(&list, "/models") { tr {
                td { code { (str_at(m, "/id")) } }
                td { (str_at(m, "/provider")) } td { (str_at(m, "/class")) }
                @if m.pointer("/price").is_some_and(|p| !p.is_null()) {
                    td.num { (str_at(m, "/price/input")) } td.num { (str_at(m, "/price/cached_input")) }
                    td.num { (str_at(m, "/price/cache_write")) } td.num { (str_at(m, "/price/output")) }
                    td { (when(&str_at(m, "/price/effective_from"))) }
                } @else {
                    td.num colspan="5" { "no price in force yet" }
                }
                td { (str_at(m, "/source")) }
            } } }
        } }
        @if !next.is_empty() {
            p { a href=(format!("/portal/admin/models?after={}", url_encode(&next))) { "Next page →" } }
        }
        div.grid {
            div.card {
                h2 { "Change a price" }
                form.stack method="post" action="/portal/admin/models" {
                    (csrf_input(session))
                    input type="hidden" name="form" value="price";
                    (form_banner(price))
                    (select("Model", "model_id", &model_ids, &t("price", "model_id"), price.at("model_id")))
                    (field("Input", "input", "text", &t("price", "input"), Some("USD per 1M"), price.at("input")))
                    (field("Cached input", "cached_input", "text", &t("price", "cached_input"), Some("empty: the input price"), price.at("cached_input")))
                    (field("Cache write", "cache_write", "text", &t("price", "cache_write"), Some("empty: the input price"), price.at("cache_write")))
                    (field("Output", "output", "text", &t("price", "output"), Some("USD per 1M"), price.at("output")))
                    (field("Effective from", "effective_from", "text", &t("price", "effective_from"), Some("YYYY-MM-DD or RFC 3339, now or later; empty: now"), price.at("effective_from")))
                    button type="submit" { "Add price" }
                }
            }
            div.card {
                h2 { "Add a model" }
                form.stack method="post" action="/portal/admin/models" {
                    (csrf_input(session))
                    input type="hidden" name="form" value="add";
                    (form_banner(add))
                    (field("Id", "id", "text", &t("add", "id"), Some("e.g. acme-large-2"), add.at("id")))
                    (field("Provider", "provider", "text", &t("add", "provider"), Some("e.g. openai"), add.at("provider")))
                    (field("Class", "class", "text", &t("add", "class"), Some("e.g. std, pro, max"), add.at("class")))
                    (field("Aliases", "aliases", "text", &t("add", "aliases"), Some("comma-separated, optional"), add.at("aliases")))
                    (field("Context window, tokens", "context_window_tokens", "text", &t("add", "context_window_tokens"), Some("optional"), add.at("context_window_tokens")))
                    (field("Input", "new_input", "text", &t("add", "new_input"), Some("USD per 1M"), add.at("new_input").or(add.at("input"))))
                    (field("Cached input", "new_cached_input", "text", &t("add", "new_cached_input"), Some("empty: the input price"), add.at("new_cached_input").or(add.at("cached_input"))))
                    (field("Output", "new_output", "text", &t("add", "new_output"), Some("USD per 1M"), add.at("new_output").or(add.at("output"))))
                    (field("Effective from", "new_effective_from", "text", &t("add", "new_effective_from"), Some("empty: now"), add.at("new_effective_from").or(add.at("effective_from"))))
                    button type="submit" { "Add model" }
                }
            }
        }
    };
    Ok(admin_page(
        req,
        session,
        status_of(failed),
        Section::AdminModels,
        "Models and prices",
        body,
    ))
}

/// A `PriceRequest` from a form's fields named `prefix` + the request's names (blank optional
/// fields left out).
fn price_request(fields: &Fields, prefix: &str) -> Value {
    let at = |name: &str| text(fields, &format!("{prefix}{name}")).to_owned();
    let mut price = json!({ "input": at("input"), "output": at("output") });
    for name in ["cached_input", "cache_write", "effective_from"] {
        let value = at(name);
        if !value.is_empty() {
            price[name] = json!(value);
        }
    }
    price
}

async fn models_action(
    req: HttpRequest,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(r) = check_form(&req, &fields) {
        return Ok(r);
    }
    let session = Session::of(&req).await?;
    let price_names = [
        "input",
        "cached_input",
        "cache_write",
        "output",
        "effective_from",
    ];
    let (form_name, outcome, done): (&'static str, Result<Value, Problem>, &str) =
        if text(&fields, "form") == "add" {
            let outcome = match opt_int(&fields, "context_window_tokens") {
                Ok(window) => {
                    let aliases: Vec<&str> = text(&fields, "aliases")
                        .split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .collect();
                    let mut body = json!({
                        "id": text(&fields, "id"),
                        "provider": text(&fields, "provider"),
                        "class": text(&fields, "class"),
                        "aliases": aliases,
                        "price": price_request(&fields, "new_"),
                    });
                    if let Some(window) = window {
                        body["context_window_tokens"] = json!(window);
                    }
                    submit(
                        &req,
                        &session,
                        Method::POST,
                        "/v1/admin/models",
                        &body,
                        None,
                    )
                    .await
                }
                Err(p) => Err(p),
            };
            ("add", outcome, "model-added")
        } else {
            let model = text(&fields, "model_id");
            let outcome = if model.is_empty() {
                Err(invalid("`model_id`: choose a model.".to_owned()))
            } else {
                submit(
                    &req,
                    &session,
                    Method::POST,
                    &format!("/v1/admin/models/{}/prices", segment(model)),
                    &price_request(&fields, ""),
                    None,
                )
                .await
            };
            ("price", outcome, "price-added")
        };
    match outcome {
        Ok(_) => Ok(back(
            &req,
            &session,
            &format!("/portal/admin/models?done={done}"),
        )),
        Err(mut p) => {
            // The API names the new model's price fields `price.…`: the form calls them `new_…`.
            if form_name == "add" {
                if let Some(rest) = p.detail.strip_prefix("price.") {
                    p.detail = format!("new_{rest}");
                }
            }
            let mut names = vec![
                "id",
                "provider",
                "class",
                "aliases",
                "context_window_tokens",
                "model_id",
            ];
            names.extend(price_names);
            names.extend([
                "new_input",
                "new_cached_input",
                "new_output",
                "new_effective_from",
            ]);
            let failed = Failed::new(form_name, p, &names, fields);
            models_page(&req, &session, Some(&failed)).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cycles.

/// The cycles, with open/close buttons when `actions`.
fn cycle_table(session: &Session, cycles: &Value, actions: bool) -> Markup {
    html! {
        @if items(cycles).is_empty() { p { "No cycles yet." } } @else {
            div.table-wrap { table {
                thead { tr { th { "Cycle" } th { "Starts" } th { "Ends" } th { "Status" } @if actions { th { "Actions" } } } }
                tbody { @for c in items(cycles) {
                    @let cycle = str_at(c, "/cycle");
                    @let opened = !str_at(c, "/opened_at").is_empty();
                    @let closed = !str_at(c, "/closed_at").is_empty();
                    tr {
                        td { (cycle) }
                        td { (when(&str_at(c, "/starts_at"))) }
                        td { (when(&str_at(c, "/ends_at"))) }
                        td {
                            @if closed { span.pill { "closed " (when(&str_at(c, "/closed_at"))) } }
                            @else if opened { span.pill.ok { "open since " (when(&str_at(c, "/opened_at"))) } }
                            @else { span.pill { "not opened" } }
                        }
                        @if actions { td.actions {
                            @if !closed {
                                @if !opened {
                                    form.inline method="post" action=(format!("/portal/admin/cycles/{cycle}/open")) {
                                        (csrf_input(session))
                                        button type="submit" { "Open " (cycle) }
                                    }
                                }
                                " "
                                form.inline method="post" action=(format!("/portal/admin/cycles/{cycle}/close")) {
                                    (csrf_input(session))
                                    button.danger type="submit" { "Close " (cycle) }
                                }
                            }
                        } }
                    }
                } }
            } }
        }
    }
}

async fn cycles(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    if let Some(refused) = admins_only(&req, &session, Section::AdminCycles) {
        return Ok(refused);
    }
    cycles_page(&req, &session, None).await
}

async fn cycles_page(
    req: &HttpRequest,
    session: &Session,
    failed: Option<&Failed>,
) -> Result<HttpResponse, actix_web::Error> {
    let list = match session.get(req, "/v1/cycles").await {
        Ok(v) => v,
        Err(p) => return Ok(problem_page(req, session, None, Section::AdminCycles, &p)),
    };
    let body = html! {
        h1 { "Cycles" }
        (done_banner(req))
        (form_banner(errors_of(failed, "cycle")))
        p.muted { "The server opens the current cycle and closes ended ones by itself every minute; "
            "these buttons do it now. Opening issues allotments; closing an ended cycle cancels its listings "
            "and expires its tokens. Both are idempotent." }
        (cycle_table(session, &list, true))
    };
    Ok(admin_page(
        req,
        session,
        status_of(failed),
        Section::AdminCycles,
        "Cycles",
        body,
    ))
}

async fn cycle_action(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(r) = check_form(&req, &fields) {
        return Ok(r);
    }
    let session = Session::of(&req).await?;
    let (cycle, action) = path.into_inner();
    if !is_plain(&cycle) || !(action == "open" || action == "close") {
        return Ok(problem_page(
            &req,
            &session,
            None,
            Section::AdminCycles,
            &not_found("cycle"),
        ));
    }
    let outcome = submit(
        &req,
        &session,
        Method::POST,
        &format!("/v1/admin/cycles/{cycle}/{action}"),
        &Value::Null,
        None,
    )
    .await;
    match outcome {
        Ok(_) => {
            let done = if action == "open" { "opened" } else { "closed" };
            Ok(back(
                &req,
                &session,
                &format!("/portal/admin/cycles?done={done}"),
            ))
        }
        Err(p) => {
            let failed = Failed::new("cycle", p, &[], fields);
            cycles_page(&req, &session, Some(&failed)).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Audit log.

const AUDIT_FILTERS: [&str; 6] = ["action", "actor", "org", "since", "until", "limit"];

async fn audit(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let filters = AUDIT_FILTERS.map(|name| (name, name));
    let listed = match list_for(
        &req,
        &session,
        Section::AdminAudit,
        "/v1/admin/audit",
        &filters,
    )
    .await
    {
        Ok(listed) => listed,
        Err(page) => return Ok(page),
    };
    let (log, status, errors, filter_query) = (
        &listed.answer,
        listed.status,
        &listed.errors,
        &listed.filter_query,
    );
    let next = str_at(log, "/next");
    let q = query(&req);
    let value = |name: &str| q.get(name).map_or(String::new(), |v| v.trim().to_owned());
    let body = html! {
        h1 { "Audit log" }
        p.muted { "Every admin action, oldest first." }
        form.stack method="get" action="/portal/admin/audit" {
            (form_banner(errors))
            (field("Action", "action", "text", &value("action"), Some("e.g. org.create, org.link, review.clear"), errors.at("action")))
            (field("Actor", "actor", "text", &value("actor"), Some("user id"), errors.at("actor")))
            (field("Org", "org", "text", &value("org"), Some("org id"), errors.at("org")))
            (field("Since", "since", "text", &value("since"), Some("RFC 3339"), errors.at("since")))
            (field("Until", "until", "text", &value("until"), Some("RFC 3339"), errors.at("until")))
            (field("Per page", "limit", "text", &value("limit"), Some("1 to 1,000; default 100"), errors.at("limit")))
            button type="submit" { "Filter" }
        }
        @let entries = items_at(log, "/entries");
        @if entries.is_empty() { p { "No entries." } } @else {
            div.table-wrap { table {
                thead { tr { th { "At" } th { "Action" } th { "Actor" } th { "Org" } th { "Target" } th { "Details" } } }
                tbody { @for e in entries {
                    @let org = str_at(e, "/org");
                    @let actor = str_at(e, "/actor");
                    tr {
                        td { (when(&str_at(e, "/at"))) }
                        td { code { (str_at(e, "/action")) } }
                        td { @if actor.is_empty() { "system" } @else {
                            a href=(format!("/portal/admin/audit?actor={actor}")) { code { (short_id(&actor)) } } } }
                        td { @if !org.is_empty() { a href=(format!("/portal/admin/orgs/{org}")) { code { (short_id(&org)) } } } }
                        td { (truncate(&str_at(e, "/target"), 40)) }
                        td { code { (truncate(&e.pointer("/details").map(Value::to_string).unwrap_or_default(), 160)) } }
                    }
                } }
            } }
        }
        @if !next.is_empty() {
            @let sep = if filter_query.is_empty() { "" } else { "&" };
            p { a href=(format!("/portal/admin/audit?{filter_query}{sep}cursor={}", url_encode(&next))) { "Next page →" } }
        }
    };
    Ok(admin_page(
        &req,
        &session,
        status,
        Section::AdminAudit,
        "Audit log",
        body,
    ))
}
