//! Orgs, their members and API keys; users; for admins, the audit log.
//!
//! Every change here is written to the audit log, with who did it.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use credex_ledger::OrgId;
use credex_store::{
    ApiKeyId, ApiKeyName, ApiKeyPrefix, AuditAction, AuditCursor, AuditEntry, AuditFilter, AuditId,
    Email, IdentityError, NewApiKey, OrgName, PasswordHash, Plan, Role, Scopes, Store, TokenHash,
    UserId, VerificationLevel,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::access::{Admin, Authenticator, Caller, OrgAccess, Owner, Read};
use crate::auth::{password, tokens};
use crate::config::Secret;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::views::{rfc3339, ApiKeyView, OrgView, UserView};

fn internal(error: &IdentityError) -> actix_web::Error {
    ApiError::internal(error).into()
}

/// A refusal naming the field at fault.
fn invalid(field: &str, error: impl std::fmt::Display) -> actix_web::Error {
    ApiError::new(ProblemKind::Unprocessable, format!("{field}: {error}")).into()
}

/// Appends to the audit log; a failure to record fails the request.
async fn audit(
    store: &dyn Store,
    caller: &Caller,
    org: Option<OrgId>,
    action: &str,
    target: String,
    details: serde_json::Value,
) -> Result<(), actix_web::Error> {
    let action = AuditAction::parse(action).map_err(|error| ApiError::internal(&error))?;
    let mut entry = AuditEntry::new(store.clock().now(), action, target, details)
        .map_err(|error| ApiError::internal(&error))?;
    if let Some(user) = caller.user_id() {
        entry = entry.by(user);
    }
    if let Some(org) = org {
        entry = entry.in_org(org);
    }
    store
        .append_audit(&entry)
        .await
        .map_err(|error| internal(&error))
}

fn created(location: String, body: impl Serialize) -> HttpResponse {
    HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(body)
}

/// A new org.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "Acme Robotics", "plan": "teams"}))]
pub struct NewOrg {
    /// 1 to 100 characters.
    #[schema(max_length = 100)]
    name: String,
    /// `free`, `teams` or `enterprise`.
    plan: String,
}

/// Creates an org (admins only).
#[utoipa::path(
    post,
    path = "/v1/admin/orgs",
    tag = "orgs",
    security(("bearer" = [])),
    request_body = NewOrg,
    responses(
        (status = 201, description = "Created; `Location` names it", body = OrgView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_org(
    admin: Admin,
    body: web::Json<NewOrg>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let name = OrgName::parse(&body.name).map_err(|error| invalid("name", error))?;
    let plan = Plan::parse(&body.plan).map_err(|error| invalid("plan", error))?;
    let store = auth.store.as_ref();
    let org = store
        .create_org(&name, plan, store.clock().now())
        .await
        .map_err(|error| internal(&error))?;
    let caller = Caller::User {
        user: admin.0,
        session: None,
    };
    let details = serde_json::json!({ "name": org.name.as_str(), "plan": plan.as_str() });
    audit(
        store,
        &caller,
        Some(org.id),
        "org.create",
        org.id.to_string(),
        details,
    )
    .await?;
    Ok(created(format!("/v1/orgs/{}", org.id), OrgView::from(&org)))
}

/// Changes to an org's standing (admins only); absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"verification_level": 2, "frozen": false}))]
pub struct OrgChange {
    plan: Option<String>,
    /// 0 to 3.
    verification_level: Option<u8>,
    frozen: Option<bool>,
}

/// Changes an org's plan, verification level or freeze (admins only).
#[utoipa::path(
    patch,
    path = "/v1/admin/orgs/{org_id}",
    tag = "orgs",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    request_body = OrgChange,
    responses(
        (status = 200, description = "The org as changed", body = OrgView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn change_org(
    admin: Admin,
    path: web::Path<String>,
    body: web::Json<OrgChange>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let not_found =
        || -> actix_web::Error { ApiError::new(ProblemKind::NotFound, "no such org").into() };
    let org_id = OrgId::parse(&path).map_err(|_| not_found())?;
    let plan = body
        .plan
        .as_deref()
        .map(Plan::parse)
        .transpose()
        .map_err(|error| invalid("plan", error))?;
    let level = body
        .verification_level
        .map(VerificationLevel::new)
        .transpose()
        .map_err(|error| invalid("verification_level", error))?;
    let store = auth.store.as_ref();
    let mut org = store
        .org(org_id)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(not_found)?;
    if let Some(plan) = plan {
        org = store
            .set_org_plan(org_id, plan)
            .await
            .map_err(|error| internal(&error))?
            .ok_or_else(not_found)?;
    }
    if let Some(level) = level {
        org = store
            .set_verification(org_id, level)
            .await
            .map_err(|error| internal(&error))?
            .ok_or_else(not_found)?;
    }
    if let Some(frozen) = body.frozen {
        org = store
            .set_frozen(org_id, frozen)
            .await
            .map_err(|error| internal(&error))?
            .ok_or_else(not_found)?;
    }
    let caller = Caller::User {
        user: admin.0,
        session: None,
    };
    let details = serde_json::json!({
        "plan": body.plan, "verification_level": body.verification_level, "frozen": body.frozen,
    });
    audit(
        store,
        &caller,
        Some(org_id),
        "org.change",
        org_id.to_string(),
        details,
    )
    .await?;
    Ok(HttpResponse::Ok().json(OrgView::from(&org)))
}

/// An org.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}",
    tag = "orgs",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    responses(
        (status = 200, description = "The org", body = OrgView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or not the caller's", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_org(
    access: OrgAccess<Read>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let org = auth
        .store
        .org(access.org)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, "no such org"))?;
    Ok(HttpResponse::Ok().json(OrgView::from(&org)))
}

/// A new user (admins only), optionally made a member of an org.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@acme.example", "password": "a long and careful password", "org_id": "0192d1a4-8c3e-7b61-9a0f-2f4b5c6d7e8f", "role": "owner"}))]
pub struct NewUser {
    #[schema(max_length = 254)]
    email: String,
    /// At least 12 characters.
    #[schema(min_length = 12, max_length = 1024)]
    password: String,
    #[serde(default)]
    is_admin: bool,
    #[schema(value_type = Option<String>, format = Uuid)]
    org_id: Option<String>,
    /// `owner` or `member`; with `org_id`.
    role: Option<String>,
}

/// Creates a user (admins only).
#[utoipa::path(
    post,
    path = "/v1/admin/users",
    tag = "orgs",
    security(("bearer" = [])),
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The e-mail address is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_user(
    admin: Admin,
    body: web::Json<NewUser>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let NewUser {
        email,
        password: secret,
        is_admin,
        org_id,
        role,
    } = body.into_inner();
    let email = Email::parse(&email).map_err(|error| invalid("email", error))?;
    let membership = match (org_id, role) {
        (None, None) => None,
        (Some(org), Some(role)) => {
            let org = OrgId::parse(&org).map_err(|error| invalid("org_id", error))?;
            let role = Role::parse(&role).map_err(|error| invalid("role", error))?;
            Some((org, role))
        }
        _ => return Err(invalid("role", "org_id and role go together")),
    };
    let store = auth.store.as_ref();
    if let Some((org, _)) = membership {
        if store
            .org(org)
            .await
            .map_err(|error| internal(&error))?
            .is_none()
        {
            return Err(invalid("org_id", "no such org"));
        }
    }
    let hash = password::hash(Secret::new(secret))
        .await
        .map_err(|error| invalid("password", error))?;
    let hash = PasswordHash::new(hash).map_err(|error| ApiError::internal(&error))?;
    let user = match store
        .create_user(&email, &hash, is_admin, store.clock().now())
        .await
    {
        Ok(user) => user,
        Err(IdentityError::EmailTaken) => {
            return Err(ApiError::new(
                ProblemKind::Conflict,
                "a user with this e-mail address exists",
            )
            .into())
        }
        Err(error) => return Err(internal(&error)),
    };
    if let Some((org, role)) = membership {
        store
            .add_member(org, user.id, role)
            .await
            .map_err(|error| internal(&error))?;
    }
    let caller = Caller::User {
        user: admin.0,
        session: None,
    };
    let details = serde_json::json!({ "email": user.email.as_str(), "is_admin": is_admin });
    audit(
        store,
        &caller,
        membership.map(|(org, _)| org),
        "user.create",
        user.id.to_string(),
        details,
    )
    .await?;
    Ok(created(
        format!("/v1/admin/users/{}", user.id),
        UserView::from(&user),
    ))
}

/// A member of an org.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub user: UserView,
    /// `owner` or `member`.
    pub role: String,
}

/// An org's members.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/members",
    tag = "orgs",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    responses(
        (status = 200, description = "The members", body = Vec<MemberView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or not the caller's", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn members(
    access: OrgAccess<Read>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let members: Vec<MemberView> = auth
        .store
        .members(access.org)
        .await
        .map_err(|error| internal(&error))?
        .iter()
        .map(|(user, role)| MemberView {
            user: user.into(),
            role: role.as_str().to_owned(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(members))
}

/// A user to add to an org, or whose role to change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "grace@acme.example", "role": "member"}))]
pub struct NewMember {
    #[schema(max_length = 254)]
    email: String,
    /// `owner` or `member`.
    role: String,
}

/// Adds an existing user to the org, or changes a member's role (owners).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/members",
    tag = "orgs",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    request_body = NewMember,
    responses(
        (status = 200, description = "The member", body = MemberView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid, or no user has the e-mail address", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_member(
    access: OrgAccess<Owner>,
    body: web::Json<NewMember>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let email = Email::parse(&body.email).map_err(|error| invalid("email", error))?;
    let role = Role::parse(&body.role).map_err(|error| invalid("role", error))?;
    let store = auth.store.as_ref();
    let (user, _) = store
        .user_by_email(&email)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| invalid("email", "no user has this e-mail address"))?;
    store
        .add_member(access.org, user.id, role)
        .await
        .map_err(|error| internal(&error))?;
    let details = serde_json::json!({ "user": user.id.to_string(), "role": role.as_str() });
    audit(
        store,
        &access.caller,
        Some(access.org),
        "member.set",
        user.id.to_string(),
        details,
    )
    .await?;
    Ok(HttpResponse::Ok().json(MemberView {
        user: (&user).into(),
        role: role.as_str().to_owned(),
    }))
}

/// A new API key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "billing worker", "scopes": ["read", "usage:write"]}))]
pub struct NewApiKeyRequest {
    #[schema(max_length = 100)]
    name: String,
    /// Any of `read`, `usage:write`, `market:trade`; at least one.
    scopes: Vec<String>,
}

/// A key just created: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The whole key, for `Authorization: Bearer …`. Shown once; store it now.
    pub key: String,
    pub api_key: ApiKeyView,
}

/// Creates an API key for programs (owners). The key is shown once.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org_id}/api-keys",
    tag = "orgs",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    request_body = NewApiKeyRequest,
    responses(
        (status = 201, description = "Created; the key is in the body, once", body = CreatedApiKey),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org (API keys cannot make keys)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_api_key(
    access: OrgAccess<Owner>,
    body: web::Json<NewApiKeyRequest>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let name = ApiKeyName::parse(&body.name).map_err(|error| invalid("name", error))?;
    let scopes = Scopes::parse(&body.scopes.join(" ")).map_err(|error| invalid("scopes", error))?;
    let created_by = access
        .caller
        .user_id()
        .ok_or_else(|| ApiError::new(ProblemKind::Forbidden, "API keys cannot make keys"))?;
    let store = auth.store.as_ref();
    let (key, prefix) = tokens::api_key();
    let new = NewApiKey {
        org: access.org,
        name,
        prefix: ApiKeyPrefix::parse(&prefix).map_err(|error| ApiError::internal(&error))?,
        secret_hash: TokenHash::from_bytes(tokens::digest(&key)),
        scopes,
        created_by,
    };
    let api_key = store
        .create_api_key(&new, store.clock().now())
        .await
        .map_err(|error| internal(&error))?;
    let details =
        serde_json::json!({ "name": api_key.name.as_str(), "scopes": api_key.scopes.to_string() });
    audit(
        store,
        &access.caller,
        Some(access.org),
        "api_key.create",
        api_key.id.to_string(),
        details,
    )
    .await?;
    let location = format!("/v1/orgs/{}/api-keys/{}", access.org, api_key.id);
    Ok(created(
        location,
        CreatedApiKey {
            key,
            api_key: (&api_key).into(),
        },
    ))
}

/// An org's API keys, revoked ones included (owners).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/api-keys",
    tag = "orgs",
    security(("bearer" = [])),
    params(("org_id" = String, Path, format = Uuid, description = "The org")),
    responses(
        (status = 200, description = "The keys, without secrets", body = Vec<ApiKeyView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or not the caller's", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn api_keys(
    access: OrgAccess<Owner>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let keys: Vec<ApiKeyView> = auth
        .store
        .api_keys(access.org)
        .await
        .map_err(|error| internal(&error))?
        .iter()
        .map(ApiKeyView::from)
        .collect();
    Ok(HttpResponse::Ok().json(keys))
}

/// Revokes an API key (owners): it stops working at once.
#[utoipa::path(
    delete,
    path = "/v1/orgs/{org_id}/api-keys/{key_id}",
    tag = "orgs",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("key_id" = String, Path, format = Uuid, description = "The key"),
    ),
    responses(
        (status = 204, description = "Revoked (or already revoked)"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key in the org", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn revoke_api_key(
    access: OrgAccess<Owner>,
    path: web::Path<(String, String)>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let not_found =
        || -> actix_web::Error { ApiError::new(ProblemKind::NotFound, "no such API key").into() };
    let key_id = ApiKeyId::parse(&path.1).map_err(|_| not_found())?;
    let store = auth.store.as_ref();
    let revoked = store
        .revoke_api_key(access.org, key_id, store.clock().now())
        .await
        .map_err(|error| internal(&error))?;
    if !revoked {
        return Err(not_found());
    }
    audit(
        store,
        &access.caller,
        Some(access.org),
        "api_key.revoke",
        key_id.to_string(),
        serde_json::json!({}),
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Which audit entries to read.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this action, such as `api_key.create`.
    action: Option<String>,
    /// Only what this user did.
    #[param(format = Uuid)]
    actor: Option<String>,
    /// Only what concerned this org.
    #[param(format = Uuid)]
    org: Option<String>,
    /// From this instant on (RFC 3339), inclusive.
    since: Option<String>,
    /// Before this instant (RFC 3339).
    until: Option<String>,
    /// `next` of the previous page.
    cursor: Option<String>,
    /// At most this many entries (1 to 1,000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// An audit entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub at: String,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub actor: Option<String>,
    #[schema(value_type = Option<String>, format = Uuid)]
    pub org: Option<String>,
    pub action: String,
    pub target: String,
    pub details: serde_json::Value,
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntryView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next: Option<String>,
}

fn instant(field: &str, text: &str) -> Result<credex_ledger::Timestamp, actix_web::Error> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|error| invalid(field, error))?;
    let micros =
        i64::try_from(at.unix_timestamp_nanos() / 1_000).map_err(|error| invalid(field, error))?;
    Ok(credex_ledger::Timestamp::from_micros(micros))
}

fn cursor(text: &str) -> Result<AuditCursor, actix_web::Error> {
    let (at, id) = text
        .split_once('_')
        .ok_or_else(|| invalid("cursor", "not a cursor"))?;
    let at = at
        .parse::<i64>()
        .map_err(|_| invalid("cursor", "not a cursor"))?;
    let id = AuditId::parse(id).map_err(|_| invalid("cursor", "not a cursor"))?;
    Ok(AuditCursor {
        at: credex_ledger::Timestamp::from_micros(at),
        id,
    })
}

/// The audit log, oldest first, filtered and paged (admins only).
#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    tag = "orgs",
    security(("bearer" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of entries", body = AuditPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn audit_log(
    _admin: Admin,
    query: web::Query<AuditQuery>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let query = query.into_inner();
    let filter = AuditFilter {
        action: query
            .action
            .as_deref()
            .map(AuditAction::parse)
            .transpose()
            .map_err(|error| invalid("action", error))?,
        actor: query
            .actor
            .as_deref()
            .map(UserId::parse)
            .transpose()
            .map_err(|error| invalid("actor", error))?,
        org: query
            .org
            .as_deref()
            .map(OrgId::parse)
            .transpose()
            .map_err(|error| invalid("org", error))?,
        since: query
            .since
            .as_deref()
            .map(|text| instant("since", text))
            .transpose()?,
        until: query
            .until
            .as_deref()
            .map(|text| instant("until", text))
            .transpose()?,
    };
    let after = query.cursor.as_deref().map(cursor).transpose()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(invalid("limit", "between 1 and 1000"));
    }
    let entries = auth
        .store
        .audit(&filter, after, limit)
        .await
        .map_err(|error| internal(&error))?;
    let next = (entries.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| {
            entries
                .last()
                .map(|e| format!("{}_{}", e.at().as_micros(), e.id()))
        })
        .flatten();
    let entries = entries
        .iter()
        .map(|entry| AuditEntryView {
            id: entry.id().to_string(),
            at: rfc3339(entry.at()),
            actor: entry.actor().map(|user| user.to_string()),
            org: entry.org().map(|org| org.to_string()),
            action: entry.action().to_string(),
            target: entry.target().to_owned(),
            details: entry.details().clone(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(AuditPage { entries, next }))
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/v1/admin/orgs").route(web::post().to(create_org)))
        .service(web::resource("/v1/admin/orgs/{org_id}").route(web::patch().to(change_org)))
        .service(web::resource("/v1/admin/users").route(web::post().to(create_user)))
        .service(web::resource("/v1/admin/audit").route(web::get().to(audit_log)))
        .service(web::resource("/v1/orgs/{org_id}").route(web::get().to(get_org)))
        .service(
            web::resource("/v1/orgs/{org_id}/members")
                .route(web::get().to(members))
                .route(web::post().to(add_member)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/api-keys")
                .route(web::get().to(api_keys))
                .route(web::post().to(create_api_key)),
        )
        .service(
            web::resource("/v1/orgs/{org_id}/api-keys/{key_id}")
                .route(web::delete().to(revoke_api_key)),
        );
}
