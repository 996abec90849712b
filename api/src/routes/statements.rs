//! Statements over HTTP: the cycles an org has statements of, and each statement as JSON, CSV
//! or PDF (members; API keys need `read`; platform admins for any org). See
//! [`crate::statements`] for what a statement covers and how it is proven to add up.
//!
//! One statement, three addresses: `/statements/{cycle}` answers JSON (or CSV or PDF when the
//! `Accept` header asks for `text/csv` or `application/pdf` and not JSON), `{cycle}.csv` and
//! `{cycle}.pdf` always answer their format, as attachments.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::access::{OrgAccess, Read};
use crate::cycles::CycleId;
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::startup::AppState;
use crate::statements::{self, CycleState, Statement, StatementError, Unit};
use crate::views::rfc3339;

fn statement_error(error: StatementError) -> actix_web::Error {
    match error {
        StatementError::NotFound(detail) => ApiError::new(ProblemKind::NotFound, detail).into(),
        // A statement that does not add up is a bug: it is logged and never sent.
        other => internal(&other),
    }
}

/// Where a cycle stands: `open` (figures to now), `ended` (not yet closed: its tokens have not
/// expired yet), `closed`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CycleStateName {
    Open,
    Ended,
    Closed,
}

impl From<CycleState> for CycleStateName {
    fn from(state: CycleState) -> Self {
        match state {
            CycleState::Open => Self::Open,
            CycleState::Ended => Self::Ended,
            CycleState::Closed => Self::Closed,
        }
    }
}

/// The unit of an amount: µCR for `CR`, tokens for token assets.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnitName {
    MicroCr,
    Tokens,
}

impl From<Unit> for UnitName {
    fn from(unit: Unit) -> Self {
        match unit {
            Unit::MicroCr => Self::MicroCr,
            Unit::Tokens => Self::Tokens,
        }
    }
}

/// The kinds of movement a statement groups its lines by.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SectionName {
    Allotments,
    Credits,
    Usage,
    Trades,
    Fees,
    ProviderSales,
    Buybacks,
    Listings,
    Expiry,
    Corrections,
}

impl From<statements::SectionKind> for SectionName {
    fn from(kind: statements::SectionKind) -> Self {
        use statements::SectionKind as K;
        match kind {
            K::Allotments => Self::Allotments,
            K::Credits => Self::Credits,
            K::Usage => Self::Usage,
            K::Trades => Self::Trades,
            K::Fees => Self::Fees,
            K::ProviderSales => Self::ProviderSales,
            K::Buybacks => Self::Buybacks,
            K::Listings => Self::Listings,
            K::Expiry => Self::Expiry,
            K::Corrections => Self::Corrections,
        }
    }
}

/// A cycle the org has a statement of, with its addresses.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementLinkView {
    /// `YYYY-MM`.
    pub cycle: String,
    #[schema(format = DateTime)]
    pub period_start: String,
    #[schema(format = DateTime)]
    pub period_end: String,
    /// The statement as JSON.
    pub href: String,
    pub csv_href: String,
    pub pdf_href: String,
}

/// The cycles an org has statements of, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementListView {
    /// From the current cycle back to the org's first, at most 120.
    #[schema(max_items = 120)]
    pub statements: Vec<StatementLinkView>,
}

/// One account of the org over its window: opening + credits − debits = closing.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementAccountView {
    /// `CR` or a token asset of the cycle.
    pub asset: String,
    pub unit: UnitName,
    #[schema(value_type = crate::routes::ledger::OrgAccountKind)]
    pub account: String,
    /// The opening balance is the balance at this instant (every transfer before it).
    #[schema(format = DateTime)]
    pub opening_at: String,
    /// The closing balance is the balance at this instant.
    #[schema(format = DateTime)]
    pub closing_at: String,
    pub opening: i64,
    /// Posted credits in the window.
    pub credits: u64,
    /// Posted debits in the window.
    pub debits: u64,
    pub closing: i64,
    /// Holds (pending debits) at `closing_at`.
    pub held: u64,
}

/// Movements of one kind on one account, summed.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementLineView {
    pub asset: String,
    pub unit: UnitName,
    #[schema(value_type = crate::routes::ledger::OrgAccountKind)]
    pub account: String,
    /// What moved: `allotment`, `grant`, `top-up`, a model id (usage; `(no usage event)` for a
    /// spend no recorded call names), `bought`, `sold`, `on sales`, `on purchases`, `fee`,
    /// `sold to the provider`, `bought from the provider`, `listed`, `unlisted`, `expired`,
    /// `reversal in`, `reversal out`.
    pub item: String,
    /// How many transfers.
    pub count: u64,
    /// Into the account positive, out of it negative, in `unit`.
    pub amount: i64,
}

/// A section's total on one account.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementTotalView {
    pub asset: String,
    pub unit: UnitName,
    #[schema(value_type = crate::routes::ledger::OrgAccountKind)]
    pub account: String,
    pub amount: i64,
}

/// The lines of one kind of movement, and their totals per account.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementSectionView {
    pub section: SectionName,
    pub title: String,
    pub lines: Vec<StatementLineView>,
    pub totals: Vec<StatementTotalView>,
}

/// An org's statement of one cycle.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatementView {
    #[schema(format = Uuid)]
    pub org_id: String,
    pub org_name: String,
    /// `YYYY-MM`.
    pub cycle: String,
    #[schema(format = DateTime)]
    pub period_start: String,
    #[schema(format = DateTime)]
    pub period_end: String,
    pub state: CycleStateName,
    #[schema(format = DateTime)]
    pub generated_at: String,
    /// What the windows are.
    pub note: String,
    /// `CR` first, then the cycle's token assets; accounts that held and moved nothing are
    /// left out.
    pub accounts: Vec<StatementAccountView>,
    /// Only sections with lines.
    pub sections: Vec<StatementSectionView>,
}

fn narrow(value: i128) -> Result<i64, actix_web::Error> {
    i64::try_from(value).map_err(|_| internal(&"a statement amount beyond range"))
}

impl StatementView {
    fn new(statement: &Statement) -> Result<Self, actix_web::Error> {
        let mut accounts = Vec::with_capacity(statement.accounts.len());
        for account in &statement.accounts {
            accounts.push(StatementAccountView {
                asset: account.asset.to_string(),
                unit: account.unit().into(),
                account: account.kind.name().to_owned(),
                opening_at: rfc3339(account.opening_at),
                closing_at: rfc3339(account.closing_at),
                opening: narrow(account.opening)?,
                credits: account.credits,
                debits: account.debits,
                closing: narrow(account.closing)?,
                held: account.held,
            });
        }
        let mut sections = Vec::with_capacity(statement.sections.len());
        for section in &statement.sections {
            let mut lines = Vec::with_capacity(section.lines.len());
            for line in &section.lines {
                lines.push(StatementLineView {
                    asset: line.asset.to_string(),
                    unit: Unit::of(&line.asset).into(),
                    account: line.kind.name().to_owned(),
                    item: line.item.clone(),
                    count: line.count,
                    amount: narrow(line.amount)?,
                });
            }
            let mut totals = Vec::with_capacity(section.totals.len());
            for (asset, kind, amount) in &section.totals {
                totals.push(StatementTotalView {
                    asset: asset.to_string(),
                    unit: Unit::of(asset).into(),
                    account: kind.name().to_owned(),
                    amount: narrow(*amount)?,
                });
            }
            sections.push(StatementSectionView {
                section: section.kind.into(),
                title: section.kind.title().to_owned(),
                lines,
                totals,
            });
        }
        Ok(Self {
            org_id: statement.org.to_string(),
            org_name: statement.org_name.clone(),
            cycle: statement.cycle.to_string(),
            period_start: rfc3339(statement.period_start()),
            period_end: rfc3339(statement.period_end()),
            state: statement.state.into(),
            generated_at: rfc3339(statement.generated_at),
            note: statements::WINDOWS_NOTE.to_owned(),
            accounts,
            sections,
        })
    }
}

/// The cycles the org has statements of, newest first: from the current cycle back to the
/// one the org was made in (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/statements",
    tag = "usage",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    responses(
        (status = 200, description = "The cycles, newest first, with the statements' addresses", body = StatementListView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_statements(
    access: OrgAccess<Read>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let store = state.ledger.store();
    let org = store
        .org(access.org)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, "no such org"))?;
    let now = store.clock().now();
    let base = format!("/v1/orgs/{}/statements", org.id);
    let statements = statements::cycles_of(&org, now)
        .into_iter()
        .map(|cycle| StatementLinkView {
            cycle: cycle.to_string(),
            period_start: rfc3339(cycle.starts_at()),
            period_end: rfc3339(cycle.ends_at()),
            href: format!("{base}/{cycle}"),
            csv_href: format!("{base}/{cycle}.csv"),
            pdf_href: format!("{base}/{cycle}.pdf"),
        })
        .collect();
    Ok(HttpResponse::Ok().json(StatementListView { statements }))
}

/// The formats a statement is rendered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Pdf,
}

/// The format an `Accept` header asks for: JSON unless it names CSV or PDF and not JSON.
fn negotiated(request: &HttpRequest) -> Format {
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if accept.contains("application/json") {
        Format::Json
    } else if accept.contains("text/csv") {
        Format::Csv
    } else if accept.contains("application/pdf") {
        Format::Pdf
    } else {
        Format::Json
    }
}

async fn answer(
    access: &OrgAccess<Read>,
    raw_cycle: &str,
    format: Format,
    state: &AppState,
) -> Result<HttpResponse, actix_web::Error> {
    let cycle = CycleId::parse(raw_cycle).map_err(|error| crate::input::invalid("cycle", error))?;
    let store = state.ledger.store();
    let now = store.clock().now();
    let statement = statements::build(store.as_ref(), access.org, cycle, now)
        .await
        .map_err(statement_error)?;
    // The stem holds only the org's id (hex and hyphens) and the cycle (digits and a hyphen).
    let attachment = |extension: &str| {
        format!(
            "attachment; filename=\"{}.{extension}\"",
            statement.file_stem()
        )
    };
    Ok(match format {
        Format::Json => HttpResponse::Ok().json(StatementView::new(&statement)?),
        Format::Csv => HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((header::CONTENT_DISPOSITION, attachment("csv")))
            .body(statements::csv::render(&statement)),
        Format::Pdf => HttpResponse::Ok()
            .content_type("application/pdf")
            .insert_header((header::CONTENT_DISPOSITION, attachment("pdf")))
            .body(statements::pdf::render(&statement)),
    })
}

/// A PDF document: bytes, not text.
#[derive(Debug)]
pub struct PdfDocument;

impl utoipa::PartialSchema for PdfDocument {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("A PDF document"))
            .into()
    }
}

impl ToSchema for PdfDocument {}

/// The org's statement of a cycle: opening and closing balances of each of its accounts, and
/// what moved them — allotments, grants and top-ups, usage by model, trades, fees, emergency
/// credits, buybacks, listings, expiry, corrections — each account proven to reconcile
/// (members; API keys need `read`). JSON, or CSV or PDF when `Accept` asks for
/// `text/csv` or `application/pdf` (and not JSON).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/statements/{cycle}",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("cycle" = String, Path, pattern = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The cycle, `YYYY-MM`"),
    ),
    responses(
        (status = 200, description = "The statement", content(
            (StatementView = "application/json"),
            (String = "text/csv"),
            (PdfDocument = "application/pdf"),
        )),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no statement of the cycle: it has not started, or it ended before the org was made", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The cycle is not a month written `YYYY-MM`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_statement(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    answer(&access, &path.1, negotiated(&request), &state).await
}

/// The org's statement of a cycle as CSV (RFC 4180): one header line
/// (`section,asset,unit,account,item,count,amount,value`), the statement's facts, every
/// account's balances, then each section's lines and totals (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/statements/{cycle}.csv",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("cycle" = String, Path, pattern = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The cycle, `YYYY-MM`"),
    ),
    responses(
        (status = 200, description = "The statement as CSV, an attachment", body = String, content_type = "text/csv"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no statement of the cycle", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The cycle is not a month written `YYYY-MM`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_statement_csv(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    answer(&access, &path.1, Format::Csv, &state).await
}

/// The org's statement of a cycle as a PDF (A4): a title block, the balances, and a table per
/// section (members; API keys need `read`).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/statements/{cycle}.pdf",
    tag = "usage",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("cycle" = String, Path, pattern = r"^(19[7-9][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-(0[1-9]|1[0-2])$", description = "The cycle, `YYYY-MM`"),
    ),
    responses(
        (status = 200, description = "The statement as a PDF, an attachment", body = PdfDocument, content_type = "application/pdf"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or no statement of the cycle", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The cycle is not a month written `YYYY-MM`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_statement_pdf(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    answer(&access, &path.1, Format::Pdf, &state).await
}

pub fn configure(config: &mut web::ServiceConfig) {
    // The suffixed addresses first: the plain one would take `2026-11.csv` as its cycle.
    config
        .service(
            web::resource("/v1/orgs/{org_id}/statements").route(web::get().to(list_statements)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/statements/{cycle}.csv")
                .route(web::get().to(get_statement_csv)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/statements/{cycle}.pdf")
                .route(web::get().to(get_statement_pdf)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/statements/{cycle}")
                .route(web::get().to(get_statement)),
        );
}
