//! The portal: the provider's web pages for its customers and admins, served by `credex serve`.
//!
//! Pages are rendered on the server ([`maud`]) and work without JavaScript; charts are SVG
//! drawn here ([`charts`]). A page gets what it shows from the HTTP API and sends it what its
//! forms say, in process ([`api`]), as the signed-in user ([`session`]): the portal holds no
//! rule of its own, so it cannot disagree with the API, and every problem the API answers is
//! shown next to the form field it concerns.
//!
//! The boundary: everything under `/portal`; cookies `__Host-credex_*`; every form POST checks
//! its CSRF token first ([`session::form_is_genuine`]) and carries an idempotency key made when
//! the form was drawn, so a form sent twice acts once.

pub mod admin;
pub mod api;
pub mod charts;
pub mod customer;
pub mod market;
pub mod session;

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup, PreEscaped, DOCTYPE};

pub use api::PortalApi;
use api::Problem;
use session::{Session, CSRF_FIELD};

/// The portal's style sheet.
const CSS: &str = include_str!("portal.css");

/// A submitted form: its fields by name (the last value of a repeated name).
pub type Fields = HashMap<String, String>;

/// The longest form body the portal reads.
const FORM_LIMIT_BYTES: usize = 64 * 1024;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .app_data(web::FormConfig::default().limit(FORM_LIMIT_BYTES))
        .service(web::resource("/").route(web::get().to(root)))
        .service(web::resource("/portal").route(web::get().to(home)))
        .service(web::resource("/portal/static/portal.css").route(web::get().to(css)))
        .service(
            web::resource("/portal/sign-in")
                .route(web::get().to(sign_in_page))
                .route(web::post().to(sign_in)),
        )
        .service(web::resource("/portal/sign-out").route(web::post().to(sign_out)))
        .service(
            web::resource("/portal/password")
                .route(web::get().to(password_page))
                .route(web::post().to(change_password)),
        )
        .configure(customer::configure)
        .configure(market::configure)
        .configure(admin::configure);
}

async fn root() -> HttpResponse {
    see_other("/portal")
}

/// A 303 to `location`.
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .finish()
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(CSS)
}

/// Where a signed-in user starts: their first org's overview, or the admin pages.
async fn home(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    let location = match session.memberships.first() {
        Some(first) if !session.is_admin => format!("/portal/o/{}", first.org_id),
        _ if session.is_admin => "/portal/admin".to_owned(),
        _ => "/portal/password".to_owned(),
    };
    Ok(session.finish(&req, see_other(&location)))
}

/// Which part of the portal a page belongs to (for the navigation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Usage,
    Budgets,
    Market,
    Keys,
    Webhooks,
    Estimate,
    Account,
    Admin,
    AdminOrgs,
    AdminFlags,
    AdminMarkets,
    AdminModels,
    AdminCycles,
    AdminAudit,
}

/// The org a customer page is about (from its path), with the user's role in it.
#[derive(Debug, Clone)]
pub struct OrgPage {
    pub id: String,
    pub name: String,
    pub role: String,
}

impl OrgPage {
    /// The page's org: one the user belongs to, or any for an admin (the API has the last
    /// word either way).
    pub fn of(session: &Session, org_id: &str) -> Self {
        match session.membership(org_id) {
            Some(m) => Self {
                id: m.org_id.clone(),
                name: m.name.clone(),
                role: m.role.clone(),
            },
            None => Self {
                id: org_id.to_owned(),
                name: org_id.to_owned(),
                role: if session.is_admin {
                    "admin".to_owned()
                } else {
                    String::new()
                },
            },
        }
    }

    pub fn path(&self, rest: &str) -> String {
        format!("/portal/o/{}{rest}", self.id)
    }

    pub fn api(&self, rest: &str) -> String {
        format!("/v1/orgs/{}{rest}", self.id)
    }
}

/// The page around `body`: navigation, the user, sign-out.
pub fn layout(
    session: &Session,
    org: Option<&OrgPage>,
    section: Section,
    title: &str,
    body: Markup,
) -> Markup {
    let current = |s: Section| if s == section { Some("page") } else { None };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Credex" }
                link rel="stylesheet" href="/portal/static/portal.css";
            }
            body {
                a href="#main" class="muted" style="position:absolute;left:-999px" { "Skip to content" }
                header.top {
                    a.brand href="/portal" { "Credex" }
                    nav aria-label="Main" {
                        @if let Some(org) = org {
                            a href=(org.path("")) aria-current=[current(Section::Overview)] { "Overview" }
                            a href=(org.path("/usage")) aria-current=[current(Section::Usage)] { "Usage" }
                            a href=(org.path("/budgets")) aria-current=[current(Section::Budgets)] { "Budgets" }
                            a href=(org.path("/market")) aria-current=[current(Section::Market)] { "Market" }
                            a href=(org.path("/keys")) aria-current=[current(Section::Keys)] { "API keys" }
                            a href=(org.path("/webhooks")) aria-current=[current(Section::Webhooks)] { "Webhooks" }
                            a href=(org.path("/estimate")) aria-current=[current(Section::Estimate)] { "Cost preview" }
                        }
                        @if session.is_admin {
                            a href="/portal/admin" aria-current=[current(Section::Admin)] { "Platform" }
                            a href="/portal/admin/orgs" aria-current=[current(Section::AdminOrgs)] { "Orgs" }
                            a href="/portal/admin/flags" aria-current=[current(Section::AdminFlags)] { "Flags" }
                            a href="/portal/admin/markets" aria-current=[current(Section::AdminMarkets)] { "Markets" }
                            a href="/portal/admin/models" aria-current=[current(Section::AdminModels)] { "Models" }
                            a href="/portal/admin/cycles" aria-current=[current(Section::AdminCycles)] { "Cycles" }
                            a href="/portal/admin/audit" aria-current=[current(Section::AdminAudit)] { "Audit" }
                        }
                    }
                    div.who {
                        @if session.memberships.len() > 1 || (session.is_admin && !session.memberships.is_empty()) {
                            @for m in &session.memberships {
                                @if org.is_none_or(|o| o.id != m.org_id) {
                                    a href=(format!("/portal/o/{}", m.org_id)) { (m.name) }
                                }
                            }
                        }
                        a href="/portal/password" aria-current=[current(Section::Account)] { (session.email) }
                        form method="post" action="/portal/sign-out" {
                            (csrf_input(session))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" {
                    @if let Some(org) = org {
                        p.muted { (org.name) @if !org.role.is_empty() { " · " (org.role) } }
                    }
                    (PreEscaped(body.0))
                }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf_input(session: &Session) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(session.csrf); }
}

/// A hidden idempotency key, made when the form is drawn.
pub fn idempotency_input() -> Markup {
    html! { input type="hidden" name="idempotency_key" value=(uuid::Uuid::new_v4().to_string()); }
}

/// A labelled input with the problem that concerns it, if any.
pub fn field(
    label: &str,
    name: &str,
    kind: &str,
    value: &str,
    hint: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let id = format!("f-{name}");
    let error_id = format!("{id}-error");
    html! {
        label for=(id) {
            (label)
            @if let Some(hint) = hint { span.hint { (hint) } }
            input id=(id) name=(name) type=(kind) value=(value)
                aria-invalid=[error.map(|_| "true")]
                aria-describedby=[error.map(|_| error_id.as_str())];
            @if let Some(error) = error {
                span.field-error id=(error_id) role="alert" { (error) }
            }
        }
    }
}

/// A labelled select of `(value, text)` options.
pub fn select(
    label: &str,
    name: &str,
    options: &[(String, String)],
    selected: &str,
    error: Option<&str>,
) -> Markup {
    let id = format!("f-{name}");
    html! {
        label for=(id) {
            (label)
            select id=(id) name=(name) aria-invalid=[error.map(|_| "true")] {
                @for (value, text) in options {
                    option value=(value) selected[value == selected] { (text) }
                }
            }
            @if let Some(error) = error {
                span.field-error role="alert" { (error) }
            }
        }
    }
}

/// A problem not tied to a field, as a banner.
pub fn problem_banner(problem: Option<&Problem>) -> Markup {
    html! {
        @if let Some(problem) = problem {
            div.banner.error role="alert" {
                strong { (problem.title) }
                @if !problem.detail.is_empty() { br; (problem.detail) }
            }
        }
    }
}

/// The problem of a form, split into the field it concerns (if one of `fields`) and the rest.
#[derive(Debug, Default)]
pub struct FormErrors {
    pub field: Option<(String, String)>,
    pub banner: Option<Problem>,
}

impl FormErrors {
    pub fn of(problem: Problem, fields: &[&str]) -> Self {
        match problem.field(fields) {
            Some(name) => Self {
                field: Some((name.to_owned(), problem.detail.clone())),
                banner: Some(problem),
            },
            None => Self {
                field: None,
                banner: Some(problem),
            },
        }
    }

    /// The error shown at `name`, if it concerns it.
    pub fn at(&self, name: &str) -> Option<&str> {
        self.field
            .as_ref()
            .filter(|(field, _)| field == name)
            .map(|(_, detail)| detail.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.field.is_none() && self.banner.is_none()
    }
}

/// A rendered page, `200 OK` or the status of the problem it shows.
pub fn page(
    req: &HttpRequest,
    session: &Session,
    status: StatusCode,
    markup: Markup,
) -> HttpResponse {
    let response = HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-frame-options", "DENY"))
        .insert_header(("content-security-policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'"))
        .body(markup.into_string());
    session.finish(req, response)
}

/// The status of a page that shows `problem` (400 for the API's 5xx is never used: they stay).
pub fn status_of(problem: &Problem) -> StatusCode {
    problem.status
}

/// A page that could not be drawn because the API refused or failed: its problem, plainly.
pub fn problem_page(
    req: &HttpRequest,
    session: &Session,
    org: Option<&OrgPage>,
    section: Section,
    problem: &Problem,
) -> HttpResponse {
    let body = html! {
        h1 { (problem.title) }
        (problem_banner(Some(problem)))
        p { a href="/portal" { "Back to the start" } }
    };
    page(
        req,
        session,
        problem.status,
        layout(session, org, section, &problem.title, body),
    )
}

/// The form's CSRF check: `Err` with a 403 page when it fails. (The refusal is the answer
/// itself, returned at once by every form handler; boxing it would buy nothing.)
#[allow(clippy::result_large_err)]
pub fn check_form(req: &HttpRequest, fields: &Fields) -> Result<(), HttpResponse> {
    if session::form_is_genuine(req, fields.get(CSRF_FIELD).map(String::as_str)) {
        Ok(())
    } else {
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "Form expired · Credex" } link rel="stylesheet" href="/portal/static/portal.css"; }
                body { main {
                    h1 { "This form has expired" }
                    div.banner.error role="alert" { "The form could not be verified (its security token is missing or stale). Nothing was changed. Go back, reload the page and try again." }
                    p { a href="/portal" { "Back to the portal" } }
                } }
            }
        };
        Err(HttpResponse::Forbidden()
            .content_type("text/html; charset=utf-8")
            .body(body.into_string()))
    }
}

/// A field of a form, trimmed ("" when absent).
pub fn text<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields.get(name).map_or("", |value| value.trim())
}

/// µCR as CR with six decimals, grouped: `1,234.500000 CR`.
pub fn cr(micro: i128) -> String {
    let negative = micro < 0;
    let abs = micro.unsigned_abs();
    let whole = group(abs / 1_000_000);
    let frac = abs % 1_000_000;
    let mut out = format!("{}{whole}.{frac:06}", if negative { "−" } else { "" });
    // Trim to two decimals when the rest is zero, for legibility.
    if frac % 10_000 == 0 {
        out.truncate(out.len() - 4);
    }
    out.push_str(" CR");
    out
}

/// A count with thousands separators.
pub fn group(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A signed count with thousands separators.
pub fn count(n: i128) -> String {
    if n < 0 {
        format!("−{}", group(n.unsigned_abs()))
    } else {
        group(n.unsigned_abs())
    }
}

/// An integer at a JSON pointer (0 when absent).
pub fn int_at(value: &serde_json::Value, pointer: &str) -> i128 {
    match value.pointer(pointer) {
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .unwrap_or(0),
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

pub use session::str_at;

/// The array at a JSON pointer (empty when absent).
pub fn items_at<'a>(value: &'a serde_json::Value, pointer: &str) -> &'a [serde_json::Value] {
    value
        .pointer(pointer)
        .and_then(serde_json::Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The boolean at a JSON pointer (false when absent).
pub fn bool_at(value: &serde_json::Value, pointer: &str) -> bool {
    value.pointer(pointer).and_then(serde_json::Value::as_bool) == Some(true)
}

/// A form's banner: its problem, when no field of the form carries it.
pub fn form_banner(errors: &FormErrors) -> Markup {
    html! {
        @if errors.field.is_none() { (problem_banner(errors.banner.as_ref())) }
    }
}

/// A CR amount written by a person (`12.5`, `1,000`, `0.000001`, `3 CR`) in µCR, exactly; or
/// what is wrong with it.
pub fn parse_cr(input: &str) -> Result<u64, &'static str> {
    let cleaned: String = input
        .trim()
        .trim_end_matches("CR")
        .trim()
        .chars()
        .filter(|c| *c != ',' && *c != '_' && *c != ' ')
        .collect();
    if cleaned.is_empty() {
        return Err("enter an amount of CR, such as 12.5");
    }
    let (whole, frac) = cleaned.split_once('.').unwrap_or((cleaned.as_str(), ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !digits(whole) || !digits(frac) || (whole.is_empty() && frac.is_empty()) {
        return Err("write the amount with digits and at most one decimal point, such as 12.5");
    }
    if frac.len() > 6 {
        return Err("at most six decimals (1 µCR is 0.000001 CR)");
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| "that amount is too large")?
    };
    let frac: u64 = format!("{frac:0<6}").parse().map_err(|_| "not an amount")?;
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac))
        .filter(|micro| i64::try_from(*micro).is_ok())
        .ok_or("that amount is too large")
}

/// The first 16 characters of an RFC 3339 instant, readable: `2026-11-27 06:12`.
pub fn when(rfc3339: &str) -> String {
    rfc3339.get(..16).unwrap_or(rfc3339).replace('T', " ")
}

/// Raw HTML (for the SVG charts, built here and escaped where they hold text).
pub fn raw(text: String) -> PreEscaped<String> {
    PreEscaped(text)
}

async fn sign_in_page(req: HttpRequest) -> HttpResponse {
    let next = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("next="))
        .unwrap_or("/portal")
        .to_owned();
    sign_in_form(&req, StatusCode::OK, "", &next, None)
}

fn sign_in_form(
    req: &HttpRequest,
    status: StatusCode,
    email: &str,
    next: &str,
    problem: Option<&Problem>,
) -> HttpResponse {
    let (csrf, new) = session::csrf_of(req);
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Credex" }
                link rel="stylesheet" href="/portal/static/portal.css";
            }
            body {
                header.top { span.brand { "Credex" } }
                main.sign-in {
                    h1 { "Sign in" }
                    form.stack method="post" action="/portal/sign-in" {
                        input type="hidden" name=(CSRF_FIELD) value=(csrf);
                        input type="hidden" name="next" value=(next);
                        @if let Some(problem) = problem {
                            div.banner.error role="alert" id="sign-in-error" {
                                strong { (problem.title) } br; (problem.detail)
                            }
                        }
                        (field("E-mail address", "email", "email", email, None, None))
                        label for="f-password" {
                            "Password"
                            input id="f-password" name="password" type="password" autocomplete="current-password"
                                aria-invalid=[problem.map(|_| "true")]
                                aria-describedby=[problem.map(|_| "sign-in-error")];
                        }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    };
    let mut response = HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-frame-options", "DENY"))
        .body(body.into_string());
    session::with_csrf_cookie(&mut response, &csrf, new);
    response
}

/// Only paths within the portal may be gone to after signing in.
fn safe_next(next: &str) -> &str {
    let decoded_ok = next.starts_with("/portal") && !next.contains("//") && !next.contains('\\');
    if decoded_ok {
        next
    } else {
        "/portal"
    }
}

async fn sign_in(req: HttpRequest, form: web::Form<Fields>) -> HttpResponse {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return refused;
    }
    let email = text(&fields, "email");
    let password = fields.get("password").map_or("", String::as_str);
    let next = safe_next(text(&fields, "next")).to_owned();
    match session::sign_in(&req, email, password).await {
        Ok((access, refresh)) => {
            let mut response = see_other(&next);
            session::set_session_cookies(&mut response, &access, &refresh);
            response
        }
        Err(problem) => {
            let status = if problem.status.is_server_error() {
                problem.status
            } else {
                StatusCode::UNAUTHORIZED
            };
            sign_in_form(&req, status, email, &next, Some(&problem))
        }
    }
}

async fn sign_out(req: HttpRequest, form: web::Form<Fields>) -> HttpResponse {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return refused;
    }
    if let Ok(session) = Session::of(&req).await {
        if let Err(problem) = session.sign_out(&req).await {
            tracing::warn!(%problem, "signing out at the API failed");
        }
    }
    let mut response = see_other("/portal/sign-in");
    session::clear_session_cookies(&mut response);
    response
}

async fn password_page(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    let session = Session::of(&req).await?;
    Ok(password_form(
        &req,
        &session,
        StatusCode::OK,
        &FormErrors::default(),
        false,
    ))
}

fn password_form(
    req: &HttpRequest,
    session: &Session,
    status: StatusCode,
    errors: &FormErrors,
    changed: bool,
) -> HttpResponse {
    let body = html! {
        h1 { "Your account" }
        p { "Signed in as " strong { (session.email) } @if session.is_admin { " (platform admin)" } "." }
        @if !session.memberships.is_empty() {
            h2 { "Your orgs" }
            ul { @for m in &session.memberships { li { a href=(format!("/portal/o/{}", m.org_id)) { (m.name) } " · " (m.role) } } }
        }
        h2 { "Change your password" }
        @if changed { div.banner.ok role="status" { "Your password was changed. Every other sign-in has ended." } }
        @if errors.field.is_none() { (problem_banner(errors.banner.as_ref())) }
        form.stack method="post" action="/portal/password" {
            (csrf_input(session))
            (field("Current password", "current_password", "password", "", None, errors.at("current_password")))
            (field("New password", "new_password", "password", "", Some("at least 12 characters"), errors.at("new_password")))
            button type="submit" { "Change password" }
        }
    };
    page(
        req,
        session,
        status,
        layout(session, None, Section::Account, "Your account", body),
    )
}

async fn change_password(
    req: HttpRequest,
    form: web::Form<Fields>,
) -> Result<HttpResponse, actix_web::Error> {
    let fields = form.into_inner();
    if let Err(refused) = check_form(&req, &fields) {
        return Ok(refused);
    }
    let session = Session::of(&req).await?;
    let body = serde_json::json!({
        "current_password": fields.get("current_password").cloned().unwrap_or_default(),
        "new_password": fields.get("new_password").cloned().unwrap_or_default(),
    });
    let answer = session
        .send(
            &req,
            actix_web::http::Method::POST,
            "/v1/me/password",
            &body,
            None,
        )
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(problem) => {
            return Ok(problem_page(
                &req,
                &session,
                None,
                Section::Account,
                &problem,
            ))
        }
    };
    if answer.is_success() {
        let pair: serde_json::Value = answer.json().unwrap_or_default();
        let mut response =
            password_form(&req, &session, StatusCode::OK, &FormErrors::default(), true);
        session::set_session_cookies(
            &mut response,
            &str_at(&pair, "/access_token"),
            &str_at(&pair, "/refresh_token"),
        );
        Ok(response)
    } else {
        let problem = answer.problem();
        let status = problem.status;
        let errors = FormErrors::of(problem, &["current_password", "new_password"]);
        Ok(password_form(&req, &session, status, &errors, false))
    }
}
