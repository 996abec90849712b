//! The ledger over HTTP: an org's balances (now or as of an instant) and an account's history;
//! for admins, CR top-ups and grants (the only way CR enters), raw transfer batches, a
//! transfer by id, and the books check.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use credex_ledger::{
    AccountId, AccountKind, Action, Amount, AssetCode, Metadata, Movement, OrgId, Owner, Timestamp,
    Transfer, TransferCode, TransferError, TransferId, BATCH_MAX,
};
use credex_store::{AccountView, AuditAction, AuditEntry, HistoryCursor, JournalEntry, Ledger};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::access::{Admin, OrgAccess, Read};
use crate::idempotency::{self, Answer, IdempotencyKey};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::startup::AppState;
use crate::views::rfc3339;

/// A JSON body from raw bytes (kept raw for the idempotency fingerprint).
pub(crate) fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    body: &[u8],
) -> Result<T, actix_web::Error> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !json {
        return Err(ApiError::bare(ProblemKind::UnsupportedMediaType).into());
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::new(ProblemKind::MalformedJson, error.to_string()).into())
}

/// A client-chosen id in the body: a hyphenated UUID, never the nil or the max one.
fn body_id<T>(
    field: &str,
    text: &str,
    make: impl Fn(uuid::Uuid) -> Result<T, credex_ledger::IdError>,
) -> Result<T, actix_web::Error> {
    let uuid = input::uuid(text).ok_or_else(|| invalid(field, "not a UUID"))?;
    make(uuid).map_err(|error| invalid(field, error))
}

/// An account's four totals and what they mean, in the asset's smallest unit.
#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceView {
    pub debits_pending: u64,
    pub debits_posted: u64,
    pub credits_pending: u64,
    pub credits_posted: u64,
    /// Posted credits minus posted debits.
    pub balance: i64,
    /// What can still be spent: the balance minus pending debits.
    pub available: i64,
}

impl From<credex_ledger::Balance> for BalanceView {
    fn from(balance: credex_ledger::Balance) -> Self {
        let narrow = |value: i128| {
            i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
        };
        Self {
            debits_pending: balance.debits_pending,
            debits_posted: balance.debits_posted,
            credits_pending: balance.credits_pending,
            credits_posted: balance.credits_posted,
            balance: narrow(balance.net_posted()),
            available: narrow(balance.available()),
        }
    }
}

/// An account and its balance.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountBalanceView {
    #[schema(value_type = String, format = Uuid)]
    pub account_id: String,
    /// `CR` (µCR) or `TOK.<class>.<cycle>` (tokens).
    pub asset: String,
    #[schema(value_type = OrgAccountKind)]
    pub kind: String,
    pub balance: BalanceView,
}

/// The kinds of account an org has: its CR `wallet`, token allotments (`alloc`), tokens bought
/// (`acquired`), and what it has listed for sale (`escrow`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrgAccountKind {
    Wallet,
    Alloc,
    Acquired,
    Escrow,
}

/// The four kinds of journal entry.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferKindName {
    Single,
    Pending,
    Post,
    Void,
}

/// Why value moved.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferCodeName {
    Allotment,
    Grant,
    TopUp,
    Spend,
    List,
    Unlist,
    Trade,
    Fee,
    Buyback,
    EmergencySale,
    Expiry,
    Reversal,
}

/// Why value is reserved: any code but `expiry`, which is single-phase.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PendingCodeName {
    Allotment,
    Grant,
    TopUp,
    Spend,
    List,
    Unlist,
    Trade,
    Fee,
    Buyback,
    EmergencySale,
    Reversal,
}

/// How CR enters: paid for outside Credex (`top_up`) or given (`grant`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    TopUp,
    Grant,
}

/// Balances as of an instant.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BalancesQuery {
    /// An instant (RFC 3339); default: now.
    #[param(format = DateTime)]
    as_of: Option<String>,
}

/// The org's accounts with their balances, now or as they stood at `as_of`.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/balances",
    tag = "ledger",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org"), BalancesQuery),
    responses(
        (status = 200, description = "Every account of the org", body = Vec<AccountBalanceView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`as_of` is not an RFC 3339 date-time", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn balances(
    access: OrgAccess<Read>,
    query: web::Query<BalancesQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let as_of = query
        .as_of
        .as_deref()
        .map(|text| input::instant("as_of", text))
        .transpose()?;
    let store = state.ledger.store();
    let accounts = store
        .accounts_of(Owner::Org(access.org))
        .await
        .map_err(|error| internal(&error))?;
    let mut views = Vec::with_capacity(accounts.len());
    for AccountView { account, balance } in accounts {
        let balance = match as_of {
            None => balance,
            Some(at) => store
                .balance_as_of(account.id(), at)
                .await
                .map_err(|error| internal(&error))?
                .unwrap_or_default(),
        };
        views.push(AccountBalanceView {
            account_id: account.id().to_string(),
            asset: account.asset().to_string(),
            kind: account.kind().name().to_owned(),
            balance: balance.into(),
        });
    }
    Ok(HttpResponse::Ok().json(views))
}

/// A journal entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferView {
    /// The entry's position in the journal.
    pub seq: i64,
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    #[schema(value_type = TransferKindName)]
    pub kind: String,
    #[schema(value_type = String, format = Uuid)]
    pub debit_account_id: String,
    #[schema(value_type = String, format = Uuid)]
    pub credit_account_id: String,
    /// `CR` or `TOK.<class>.<cycle>`.
    pub asset: String,
    #[schema(minimum = 1)]
    pub amount: u64,
    #[schema(value_type = TransferCodeName)]
    pub code: String,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub pending_id: Option<String>,
    pub timeout_seconds: Option<u32>,
    pub metadata: String,
    pub linked: bool,
    #[schema(format = DateTime)]
    pub timestamp: String,
}

impl From<&JournalEntry> for TransferView {
    fn from(entry: &JournalEntry) -> Self {
        let record = &entry.record;
        Self {
            seq: entry.seq,
            id: record.id.to_string(),
            kind: record.kind.name().to_owned(),
            debit_account_id: record.debit_account_id.to_string(),
            credit_account_id: record.credit_account_id.to_string(),
            asset: record.asset.to_string(),
            amount: record.amount.get(),
            code: record.code.name().to_owned(),
            pending_id: record.pending_id.map(|id| id.to_string()),
            timeout_seconds: record.timeout_seconds,
            metadata: record.metadata.as_str().to_owned(),
            linked: record.linked,
            timestamp: rfc3339(record.timestamp),
        }
    }
}

/// A page of an account's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub entries: Vec<TransferView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// Where a page starts and how long it is.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// `next` of the previous page.
    #[param(pattern = r"^[0-9]{1,18}_[0-9]{1,18}$")]
    cursor: Option<String>,
    /// At most this many entries (1 to 1,000; default 100).
    #[serde(default, deserialize_with = "integer::optional_in_query")]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// An account's journal entries in time order, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/accounts/{account_id}/history",
    tag = "ledger",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("account_id" = String, Path, format = Uuid, description = "One of the org's accounts"),
        PageQuery,
    ),
    responses(
        (status = 200, description = "A page of entries", body = HistoryPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such account in the org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn history(
    access: OrgAccess<Read>,
    path: web::Path<(String, String)>,
    query: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let not_found =
        || -> actix_web::Error { ApiError::new(ProblemKind::NotFound, "no such account").into() };
    let account = AccountId::parse(&path.1).map_err(|_| not_found())?;
    let store = state.ledger.store();
    let owned = store
        .accounts(&[account])
        .await
        .map_err(|error| internal(&error))?
        .into_iter()
        .any(|view| view.account.owner() == Owner::Org(access.org));
    if !owned {
        return Err(not_found());
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(invalid("limit", "between 1 and 1000"));
    }
    let after = query
        .cursor
        .as_deref()
        .map(|text| {
            let (at, seq) = input::history_cursor(text).ok_or_else(|| {
                invalid("cursor", "not a cursor: pass `next` of the previous page")
            })?;
            Ok::<_, actix_web::Error>(HistoryCursor {
                timestamp: Timestamp::from_micros(at),
                seq,
            })
        })
        .transpose()?;
    let entries = store
        .history(account, after, limit)
        .await
        .map_err(|error| internal(&error))?;
    let next = (entries.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| {
            entries.last().map(|entry| {
                let cursor = entry.cursor();
                format!("{}_{}", cursor.timestamp.as_micros(), cursor.seq)
            })
        })
        .flatten();
    let entries = entries.iter().map(TransferView::from).collect();
    Ok(HttpResponse::Ok().json(HistoryPage { entries, next }))
}

/// CR paid for outside Credex (`top_up`) or given (`grant`), into an org's wallet.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "top_up", "amount_micro_cr": 25000000, "reason": "invoice 2026-118"}))]
pub struct CreditRequest {
    #[schema(value_type = CreditKind)]
    kind: String,
    /// In µCR (1 CR = 1,000,000 µCR); positive.
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
    amount_micro_cr: u64,
    /// Why: an invoice, a promotion. At most 120 characters, not blank, no control characters;
    /// kept without surrounding white space.
    #[schema(
        max_length = 120,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    reason: String,
}

/// The longest credit reason, in characters: four bytes each at most, it fits the ledger's
/// 512 bytes of metadata with its JSON around it.
const REASON_MAX_CHARS: usize = 120;

/// Credits an org's wallet with CR (admins only; the only way CR enters Credex). Needs an
/// `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/v1/admin/orgs/{org_id}/credits",
    tag = "ledger",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters, new for each new request; a retry with the same key answers the first answer"),
    ),
    request_body = CreditRequest,
    responses(
        (status = 201, description = "Credited; `Location` names the transfer", body = TransferView,
            headers(("Location" = String, description = "The transfer: `/v1/admin/transfers/{transfer_id}`"))),
        (status = 400, description = "No Idempotency-Key, or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The first request with this key is still running, or the ledger refused the credit (such as a wallet that would overflow); the detail names the ledger's result", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid, or the key was used for another request", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn credit(
    admin: Admin,
    req: HttpRequest,
    path: web::Path<String>,
    key: IdempotencyKey,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let not_found =
        || -> actix_web::Error { ApiError::new(ProblemKind::NotFound, "no such org").into() };
    let org = OrgId::parse(&path).map_err(|_| not_found())?;
    let request: CreditRequest = json_body(&req, &body)?;
    let code = match request.kind.as_str() {
        "top_up" => TransferCode::TopUp,
        "grant" => TransferCode::Grant,
        other => {
            return Err(invalid(
                "kind",
                format!("`top_up` or `grant`, not `{other}`"),
            ))
        }
    };
    let amount =
        Amount::new(request.amount_micro_cr).map_err(|error| invalid("amount_micro_cr", error))?;
    let reason = input::text("reason", &request.reason, REASON_MAX_CHARS)?.trim();
    let metadata = Metadata::new(serde_json::json!({ "reason": reason }).to_string())
        .map_err(|error| invalid("reason", error))?;
    let ledger = state.ledger.clone();
    let store = ledger.store().clone();
    if store
        .org(org)
        .await
        .map_err(|error| internal(&error))?
        .is_none()
    {
        return Err(not_found());
    }
    let scope = org.to_string();
    let fingerprint = idempotency::fingerprint(&req, &body);
    let id = key.transfer_id(&scope, 0);
    idempotency::once(store.as_ref(), &scope, &key, fingerprint, || async move {
        let transfer = credit_transfer(&ledger, org, id, amount, code, metadata).await?;
        let results = ledger
            .create_transfers(vec![transfer])
            .await
            .map_err(|error| internal(&error))?;
        match results.first() {
            Some(Ok(()) | Err(TransferError::Exists)) => {}
            Some(Err(error)) => {
                let detail = format!("the ledger refused the credit: {}", error.name());
                return Err(ApiError::new(ProblemKind::Conflict, detail).into());
            }
            None => return Err(internal(&"no result")),
        }
        let entry = ledger
            .store()
            .transfers(&[id])
            .await
            .map_err(|error| internal(&error))?
            .pop()
            .ok_or_else(|| internal(&"the credit is not in the journal"))?;
        let action = AuditAction::parse(code.name()).map_err(|error| internal(&error))?;
        let details = serde_json::json!({ "amount_micro_cr": amount.get(), "reason": reason });
        let audit = AuditEntry::new(
            ledger.store().clock().now(),
            action,
            id.to_string(),
            details,
        )
        .map_err(|error| internal(&error))?
        .by(admin.0.id)
        .in_org(org);
        ledger
            .store()
            .append_audit(&audit)
            .await
            .map_err(|error| internal(&error))?;
        Ok(Answer {
            status: StatusCode::CREATED,
            location: Some(format!("/v1/admin/transfers/{id}")),
            body: serde_json::to_value(TransferView::from(&entry))
                .map_err(|error| internal(&error))?,
        })
    })
    .await
}

async fn credit_transfer(
    ledger: &Ledger,
    org: OrgId,
    id: TransferId,
    amount: Amount,
    code: TransferCode,
    metadata: Metadata,
) -> Result<Transfer, actix_web::Error> {
    let credit = AssetCode::credit();
    let wallet = ledger
        .ensure_account(&credit, Owner::Org(org), AccountKind::Wallet)
        .await
        .map_err(|error| internal(&error))?;
    let issuance = ledger
        .ensure_account(&credit, Owner::Provider, AccountKind::Issuance)
        .await
        .map_err(|error| internal(&error))?;
    let movement = Movement::new(
        issuance.account.id(),
        wallet.account.id(),
        credit,
        amount,
        code,
    )
    .map_err(|error| internal(&error))?;
    Transfer::new(id, Action::Move(movement), metadata, false).map_err(|error| internal(&error))
}

/// A journal entry by id (admins only).
#[utoipa::path(
    get,
    path = "/v1/admin/transfers/{transfer_id}",
    tag = "ledger",
    security(("bearer" = [])),
    params(("transfer_id" = String, Path, format = Uuid, description = "The transfer")),
    responses(
        (status = 200, description = "The entry", body = TransferView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such transfer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn transfer(
    _admin: Admin,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let not_found =
        || -> actix_web::Error { ApiError::new(ProblemKind::NotFound, "no such transfer").into() };
    let id = TransferId::parse(&path).map_err(|_| not_found())?;
    let entry = state
        .ledger
        .store()
        .transfers(&[id])
        .await
        .map_err(|error| internal(&error))?
        .pop()
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(TransferView::from(&entry)))
}

/// One transfer of a raw batch; `kind` says which fields it takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[schema(example = json!({
    "id": "0192d1a4-8c3e-7b61-9a0f-2f4b5c6d7e8f", "kind": "single",
    "debit_account_id": "0192d1a4-0000-7000-8000-000000000001",
    "credit_account_id": "0192d1a4-0000-7000-8000-000000000002",
    "asset": "CR", "amount": 1000000, "code": "grant"
}))]
pub enum TransferRequest {
    /// Moves value at once.
    Single {
        /// Chosen by the client; a replay answers `exists`.
        #[schema(format = Uuid)]
        id: String,
        #[schema(format = Uuid)]
        debit_account_id: String,
        /// Another account than the debit account.
        #[schema(format = Uuid)]
        credit_account_id: String,
        #[schema(
            pattern = r"^(CR|TOK\.[a-z][a-z0-9]{0,7}\.[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?)$"
        )]
        asset: String,
        #[serde(deserialize_with = "integer::required")]
        #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
        amount: u64,
        #[schema(value_type = TransferCodeName)]
        code: String,
        /// At most 128 characters, no control characters.
        #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
        metadata: Option<String>,
        /// Chains this transfer with the next: they commit or fail as one.
        #[serde(default)]
        linked: bool,
    },
    /// Reserves value until posted, voided or expired.
    Pending {
        #[schema(format = Uuid)]
        id: String,
        #[schema(format = Uuid)]
        debit_account_id: String,
        #[schema(format = Uuid)]
        credit_account_id: String,
        #[schema(
            pattern = r"^(CR|TOK\.[a-z][a-z0-9]{0,7}\.[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?)$"
        )]
        asset: String,
        #[serde(deserialize_with = "integer::required")]
        #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
        amount: u64,
        #[schema(value_type = PendingCodeName)]
        code: String,
        /// Seconds until the reservation expires; default: never.
        #[serde(default, deserialize_with = "integer::optional")]
        #[schema(minimum = 1, maximum = 4_294_967_295_u64, format = Int64)]
        timeout_seconds: Option<u32>,
        #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
        metadata: Option<String>,
        #[serde(default)]
        linked: bool,
    },
    /// Posts a pending transfer, for all of it or less.
    Post {
        #[schema(format = Uuid)]
        id: String,
        /// The pending transfer; not this transfer's own id.
        #[schema(format = Uuid)]
        pending_id: String,
        /// Default: the whole pending amount.
        #[serde(default, deserialize_with = "integer::optional")]
        #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_u64)]
        amount: Option<u64>,
        #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
        metadata: Option<String>,
        #[serde(default)]
        linked: bool,
    },
    /// Voids a pending transfer.
    Void {
        #[schema(format = Uuid)]
        id: String,
        /// The pending transfer; not this transfer's own id.
        #[schema(format = Uuid)]
        pending_id: String,
        #[schema(max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
        metadata: Option<String>,
        #[serde(default)]
        linked: bool,
    },
}

/// The longest transfer metadata the API takes, in characters: at four bytes each at most,
/// within the ledger's 512 bytes.
pub(crate) const METADATA_MAX_CHARS: usize = 128;

/// The parts of a movement as a request names them.
struct MovementText<'a> {
    debit_account_id: &'a str,
    credit_account_id: &'a str,
    asset: &'a str,
    amount: u64,
    code: &'a str,
}

impl TransferRequest {
    pub(crate) fn parse(&self, index: usize) -> Result<Transfer, actix_web::Error> {
        let field = |name: &str| format!("transfers[{index}].{name}");
        let movement = |m: MovementText<'_>| -> Result<Movement, actix_web::Error> {
            let debit = body_id(
                &field("debit_account_id"),
                m.debit_account_id,
                AccountId::new,
            )?;
            let credit = body_id(
                &field("credit_account_id"),
                m.credit_account_id,
                AccountId::new,
            )?;
            let asset =
                AssetCode::parse(m.asset).map_err(|error| invalid(&field("asset"), error))?;
            let amount = Amount::new(m.amount).map_err(|error| invalid(&field("amount"), error))?;
            let code = TransferCode::parse(m.code)
                .ok_or_else(|| invalid(&field("code"), format!("unknown code `{}`", m.code)))?;
            Movement::new(debit, credit, asset, amount, code)
                .map_err(|error| invalid(&field("credit_account_id"), error))
        };
        let (id, metadata, linked, action) = match self {
            Self::Single {
                id,
                debit_account_id,
                credit_account_id,
                asset,
                amount,
                code,
                metadata,
                linked,
            } => {
                let movement = movement(MovementText {
                    debit_account_id,
                    credit_account_id,
                    asset,
                    amount: *amount,
                    code,
                })?;
                (id, metadata, linked, Action::Move(movement))
            }
            Self::Pending {
                id,
                debit_account_id,
                credit_account_id,
                asset,
                amount,
                code,
                timeout_seconds,
                metadata,
                linked,
            } => {
                let movement = movement(MovementText {
                    debit_account_id,
                    credit_account_id,
                    asset,
                    amount: *amount,
                    code,
                })?;
                let action = Action::Reserve {
                    movement,
                    timeout_seconds: *timeout_seconds,
                };
                (id, metadata, linked, action)
            }
            Self::Post {
                id,
                pending_id,
                amount,
                metadata,
                linked,
            } => {
                let action = Action::Post {
                    pending_id: body_id(&field("pending_id"), pending_id, TransferId::new)?,
                    amount: amount
                        .map(Amount::new)
                        .transpose()
                        .map_err(|error| invalid(&field("amount"), error))?,
                };
                (id, metadata, linked, action)
            }
            Self::Void {
                id,
                pending_id,
                metadata,
                linked,
            } => {
                let action = Action::Void {
                    pending_id: body_id(&field("pending_id"), pending_id, TransferId::new)?,
                };
                (id, metadata, linked, action)
            }
        };
        let id = body_id(&field("id"), id, TransferId::new)?;
        let metadata = metadata.as_deref().unwrap_or_default();
        if !input::is_plain_text(metadata, METADATA_MAX_CHARS) {
            return Err(invalid(
                &field("metadata"),
                "at most 128 characters, no control characters",
            ));
        }
        let metadata =
            Metadata::new(metadata).map_err(|error| invalid(&field("metadata"), error))?;
        Transfer::new(id, action, metadata, *linked).map_err(|error| invalid(&field("kind"), error))
    }
}

/// A raw batch of transfers.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBatch {
    #[schema(min_items = 1, max_items = 8190)]
    pub(crate) transfers: Vec<TransferRequest>,
}

/// One transfer's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferOutcome {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    /// `ok`, or the ledger's result code (`exists`, `exceeds_credits`, `linked_event_failed`, …).
    pub result: String,
}

/// Submits a raw batch of transfers to the ledger (admins only); one outcome per transfer.
/// Needs an `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/v1/admin/transfers",
    tag = "ledger",
    security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = r"^[!-~]{1,255}$", description = "1 to 255 visible ASCII characters, new for each new request; a retry with the same key answers the first answer")),
    request_body = TransferBatch,
    responses(
        (status = 200, description = "One outcome per transfer, in order", body = Vec<TransferOutcome>),
        (status = 400, description = "No Idempotency-Key, or a malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The first request with this key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A transfer is not valid, or the key was used for another request", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn transfers(
    admin: Admin,
    req: HttpRequest,
    key: IdempotencyKey,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let batch: TransferBatch = json_body(&req, &body)?;
    if batch.transfers.is_empty() || batch.transfers.len() > BATCH_MAX {
        return Err(invalid("transfers", format!("1 to {BATCH_MAX} transfers")));
    }
    let transfers = batch
        .transfers
        .iter()
        .enumerate()
        .map(|(index, transfer)| transfer.parse(index))
        .collect::<Result<Vec<_>, _>>()?;
    let ledger = state.ledger.clone();
    let store = ledger.store().clone();
    let fingerprint = idempotency::fingerprint(&req, &body);
    idempotency::once(
        store.as_ref(),
        "platform",
        &key,
        fingerprint,
        || async move {
            let ids: Vec<TransferId> = transfers.iter().map(Transfer::id).collect();
            let results = ledger
                .create_transfers(transfers)
                .await
                .map_err(|error| internal(&error))?;
            let outcomes: Vec<TransferOutcome> = ids
                .iter()
                .zip(&results)
                .map(|(id, result)| TransferOutcome {
                    id: id.to_string(),
                    result: result.err().map_or("ok", TransferError::name).to_owned(),
                })
                .collect();
            let ok = results.iter().filter(|result| result.is_ok()).count();
            let action =
                AuditAction::parse("transfers.create").map_err(|error| internal(&error))?;
            let details = serde_json::json!({ "submitted": results.len(), "committed": ok });
            let audit = AuditEntry::new(
                ledger.store().clock().now(),
                action,
                format!("{} transfers", results.len()),
                details,
            )
            .map_err(|error| internal(&error))?
            .by(admin.0.id);
            ledger
                .store()
                .append_audit(&audit)
                .await
                .map_err(|error| internal(&error))?;
            Ok(Answer {
                status: StatusCode::OK,
                location: None,
                body: serde_json::to_value(outcomes).map_err(|error| internal(&error))?,
            })
        },
    )
    .await
}

/// The books check's findings.
#[derive(Debug, Serialize, ToSchema)]
pub struct BooksCheck {
    /// Whether everything balances.
    pub ok: bool,
    pub accounts: usize,
    pub journal_entries: i64,
    /// Accounts whose stored balance differs from their journal.
    pub discrepancies: usize,
    /// Assets whose balances do not sum to zero.
    pub unbalanced_assets: Vec<String>,
    /// Accounts that may not go negative but are.
    pub negative_accounts: usize,
    pub broken_pending_links: i64,
    pub orphan_entries: i64,
}

/// The kinds of account the provider has: the source of everything issued (`issuance`), tokens
/// bought back (`treasury`), market fees (`fees`), what was consumed (`spent`) and what expired
/// unused (`expired`).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderAccountKind {
    Issuance,
    Treasury,
    Fees,
    Spent,
    Expired,
}

/// One of the provider's accounts and its balance.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderBalanceView {
    #[schema(value_type = String, format = Uuid)]
    pub account_id: String,
    /// `CR` (µCR) or `TOK.<class>.<cycle>` (tokens).
    pub asset: String,
    #[schema(value_type = ProviderAccountKind)]
    pub kind: String,
    pub balance: BalanceView,
}

/// The provider's accounts with their balances (admins only): the platform's figures as the
/// ledger keeps them — CR and tokens spent, fees earned, tokens bought back, tokens expired,
/// and everything issued (negative).
#[utoipa::path(
    get,
    path = "/v1/admin/provider/balances",
    tag = "ledger",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every account of the provider", body = Vec<ProviderBalanceView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn provider_balances(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let accounts = state
        .ledger
        .store()
        .accounts_of(Owner::Provider)
        .await
        .map_err(|error| internal(&error))?;
    let views: Vec<ProviderBalanceView> = accounts
        .into_iter()
        .map(|AccountView { account, balance }| ProviderBalanceView {
            account_id: account.id().to_string(),
            asset: account.asset().to_string(),
            kind: account.kind().name().to_owned(),
            balance: balance.into(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

/// Recomputes every balance from the journal and compares (admins only).
#[utoipa::path(
    get,
    path = "/v1/admin/books/check",
    tag = "ledger",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The findings; `ok` says whether the books balance", body = BooksCheck),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn books_check(
    _admin: Admin,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let report = state
        .ledger
        .store()
        .check()
        .await
        .map_err(|error| internal(&error))?;
    Ok(HttpResponse::Ok().json(BooksCheck {
        ok: report.is_ok(),
        accounts: report.accounts,
        journal_entries: report.journal_entries,
        discrepancies: report.discrepancies.len(),
        unbalanced_assets: report
            .unbalanced_assets
            .iter()
            .map(|(asset, ..)| asset.to_string())
            .collect(),
        negative_accounts: report.negative_accounts.len(),
        broken_pending_links: report.broken_pending_links,
        orphan_entries: report.orphan_entries,
    }))
}

/// The largest raw batch body accepted: 8,190 transfers of JSON.
const BATCH_BODY_MAX: usize = 8 << 20;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/v1/orgs/{org_id}/balances").route(web::get().to(balances)))
        .service(
            web::resource("/v1/orgs/{org_id}/accounts/{account_id}/history")
                .route(web::get().to(history)),
        )
        .service(
            web::resource("/v1/admin/orgs/{org_id}/credits")
                .app_data(web::PayloadConfig::new(64 << 10))
                .route(web::post().to(credit)),
        )
        .service(
            web::resource("/v1/admin/transfers")
                .app_data(web::PayloadConfig::new(BATCH_BODY_MAX))
                .route(web::post().to(transfers)),
        )
        .service(web::resource("/v1/admin/transfers/{transfer_id}").route(web::get().to(transfer)))
        .service(web::resource("/v1/admin/books/check").route(web::get().to(books_check)))
        .service(
            web::resource("/v1/admin/provider/balances").route(web::get().to(provider_balances)),
        );
}
