//! Orgs, their members and API keys; users; for admins, the audit log.
//!
//! Every change here is written to the audit log, with who did it.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use credex_ledger::OrgId;
use credex_store::{
    ApiKeyId, ApiKeyName, ApiKeyPrefix, AuditAction, AuditCursor, AuditEntry, AuditFilter, AuditId,
    IdentityError, NewApiKey, OrgFilter, OrgName, PasswordHash, Plan, Role, Scope, Scopes, Store,
    TokenHash, UserId, VerificationLevel,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::access::{Admin, Authenticator, Caller, OrgAccess, Owner, Read};
use crate::auth::{password, tokens};
use crate::config::Secret;
use crate::input::{self, integer, invalid};
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::views::{rfc3339, ApiKeyView, OrgView, PlanName, RoleName, ScopeName, UserView};

fn internal(error: &IdentityError) -> actix_web::Error {
    ApiError::internal(error).into()
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
    /// At most 100 characters, not blank, no control characters; kept without surrounding
    /// white space.
    #[schema(
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    #[schema(value_type = PlanName)]
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
        (status = 201, description = "Created; `Location` names it", body = OrgView,
            headers(("Location" = String, description = "The new org: `/v1/orgs/{org_id}`"))),
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
    let name = input::text("name", &body.name, OrgName::MAX_CHARS)?;
    let name = OrgName::parse(name).map_err(|error| invalid("name", error))?;
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

/// Which orgs to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrgsQuery {
    /// Only orgs whose name contains this text: 1 to 100 characters, ASCII letters matching in
    /// either case, every other character exactly.
    #[param(
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: Option<String>,
    /// Only orgs on this plan.
    #[param(value_type = Option<PlanName>)]
    plan: Option<String>,
    /// Only frozen orgs (`true`), or only the others (`false`).
    frozen: Option<bool>,
    /// `next` of the previous page.
    #[param(format = Uuid)]
    cursor: Option<String>,
    /// At most this many orgs (1 to 1,000; default 100).
    #[serde(default, deserialize_with = "integer::optional_in_query")]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page of orgs.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgPage {
    pub orgs: Vec<OrgView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next: Option<String>,
}

/// Every org, filtered and paged in id order, which is about creation order (admins only).
#[utoipa::path(
    get,
    path = "/v1/admin/orgs",
    tag = "orgs",
    security(("bearer" = [])),
    params(OrgsQuery),
    responses(
        (status = 200, description = "A page of orgs", body = OrgPage),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A parameter is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_orgs(
    _admin: Admin,
    query: web::Query<OrgsQuery>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let query = query.into_inner();
    let mut filter = OrgFilter::default();
    if let Some(plan) = &query.plan {
        let plan = Plan::parse(plan).map_err(|error| invalid("plan", error))?;
        filter = filter.on_plan(plan);
    }
    if let Some(frozen) = query.frozen {
        filter = filter.frozen_is(frozen);
    }
    if let Some(name) = &query.name {
        let name = input::text("name", name, OrgName::MAX_CHARS)?;
        filter = filter.name_containing(name);
    }
    let after = query
        .cursor
        .as_deref()
        .map(|text| {
            input::uuid(text)
                .ok_or_else(|| invalid("cursor", "not a cursor: pass `next` of the previous page"))
        })
        .transpose()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(invalid("limit", "between 1 and 1000"));
    }
    // No org has the nil or the max UUID: after the nil one every org comes, after the max
    // one none.
    if after == Some(uuid::Uuid::max()) {
        return Ok(HttpResponse::Ok().json(OrgPage {
            orgs: Vec::new(),
            next: None,
        }));
    }
    let after = after.and_then(|uuid| OrgId::new(uuid).ok());
    let orgs = auth
        .store
        .orgs(&filter, after, limit)
        .await
        .map_err(|error| internal(&error))?;
    let next = (orgs.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| orgs.last().map(|org| org.id.to_string()))
        .flatten();
    let orgs = orgs.iter().map(OrgView::from).collect();
    Ok(HttpResponse::Ok().json(OrgPage { orgs, next }))
}

/// Changes to an org's standing (admins only); absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"verification_level": 2, "frozen": false}))]
pub struct OrgChange {
    #[schema(value_type = Option<PlanName>)]
    plan: Option<String>,
    /// 0 (none) to 3.
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, maximum = 3)]
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
    /// Visible ASCII characters with one `@`; stored in lowercase.
    #[schema(max_length = 254, pattern = r"^[!-?A-~]+@[!-?A-~]+$")]
    email: String,
    /// 12 to 256 characters.
    #[schema(min_length = 12, max_length = 256)]
    password: String,
    #[serde(default)]
    is_admin: bool,
    /// An org to make the user a member of.
    #[schema(value_type = Option<String>, format = Uuid)]
    org_id: Option<String>,
    /// The role in the org of `org_id` (default `member`); without `org_id` it has no effect.
    #[schema(value_type = Option<RoleName>)]
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
        (status = 201, description = "Created; `Location` names the user", body = UserView,
            headers(("Location" = String, description = "The new user: `/v1/admin/users/{user_id}`"))),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No org has the id `org_id`", body = Problem, content_type = "application/problem+json"),
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
    let email = input::email("email", &email)?;
    let no_such_org = || -> actix_web::Error {
        ApiError::new(ProblemKind::NotFound, "org_id: no such org").into()
    };
    let role = role
        .as_deref()
        .map(Role::parse)
        .transpose()
        .map_err(|error| invalid("role", error))?
        .unwrap_or(Role::Member);
    let membership = match org_id {
        None => None,
        Some(org) => {
            let org = input::uuid(&org).ok_or_else(|| invalid("org_id", "not a UUID"))?;
            // The nil and the max UUID are never an org's id.
            let org = OrgId::new(org).map_err(|_| no_such_org())?;
            Some((org, role))
        }
    };
    let store = auth.store.as_ref();
    if let Some((org, _)) = membership {
        if store
            .org(org)
            .await
            .map_err(|error| internal(&error))?
            .is_none()
        {
            return Err(no_such_org());
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

/// A user (admins only).
#[utoipa::path(
    get,
    path = "/v1/admin/users/{user_id}",
    tag = "orgs",
    security(("bearer" = [])),
    params(("user_id" = String, Path, format = Uuid, description = "The user")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_user(
    _admin: Admin,
    path: web::Path<String>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let not_found =
        || -> actix_web::Error { ApiError::new(ProblemKind::NotFound, "no such user").into() };
    let user_id = UserId::parse(&path).map_err(|_| not_found())?;
    let user = auth
        .store
        .user(user_id)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(UserView::from(&user)))
}

/// A member of an org.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub user: UserView,
    #[schema(value_type = RoleName)]
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
    /// A user's e-mail address: visible ASCII characters with one `@`.
    #[schema(max_length = 254, pattern = r"^[!-?A-~]+@[!-?A-~]+$")]
    email: String,
    #[schema(value_type = RoleName)]
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
        (status = 404, description = "No such org, or not the caller's; or no user has the e-mail address", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn add_member(
    access: OrgAccess<Owner>,
    body: web::Json<NewMember>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let email = input::email("email", &body.email)?;
    let role = Role::parse(&body.role).map_err(|error| invalid("role", error))?;
    let store = auth.store.as_ref();
    let (user, _) = store
        .user_by_email(&email)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| {
            ApiError::new(
                ProblemKind::NotFound,
                "email: no user has this e-mail address",
            )
        })?;
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
    /// At most 100 characters, not blank, no control characters.
    #[schema(
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// At least one; a scope named twice counts once.
    #[schema(value_type = Vec<ScopeName>, min_items = 1)]
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
        (status = 201, description = "Created; the key is in the body, once", body = CreatedApiKey,
            headers(("Location" = String, description = "The new key: `/v1/orgs/{org_id}/api-keys/{key_id}`"))),
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
    let name = input::text("name", &body.name, ApiKeyName::MAX_CHARS)?;
    let name = ApiKeyName::parse(name).map_err(|error| invalid("name", error))?;
    let scopes = body
        .scopes
        .iter()
        .map(|scope| Scope::parse(scope))
        .collect::<Result<Vec<_>, _>>()
        .and_then(Scopes::new)
        .map_err(|error| invalid("scopes", error))?;
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

/// An API key of the org, without its secret (owners).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org_id}/api-keys/{key_id}",
    tag = "orgs",
    security(("bearer" = [])),
    params(
        ("org_id" = String, Path, format = Uuid, description = "The org"),
        ("key_id" = String, Path, format = Uuid, description = "The key"),
    ),
    responses(
        (status = 200, description = "The key, without its secret", body = ApiKeyView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an owner of the org", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such key in the org, or the key was revoked (`DELETE`; the org's list of keys still shows it, with `revoked_at`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_api_key(
    access: OrgAccess<Owner>,
    path: web::Path<(String, String)>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let not_found =
        || -> actix_web::Error { ApiError::new(ProblemKind::NotFound, "no such API key").into() };
    let key_id = ApiKeyId::parse(&path.1).map_err(|_| not_found())?;
    let key = auth
        .store
        .api_keys(access.org)
        .await
        .map_err(|error| internal(&error))?
        .into_iter()
        .find(|key| key.id == key_id)
        .ok_or_else(not_found)?;
    if let Some(at) = key.revoked_at {
        let detail = format!("this API key was revoked at {}", rfc3339(at));
        return Err(ApiError::new(ProblemKind::NotFound, detail).into());
    }
    Ok(HttpResponse::Ok().json(ApiKeyView::from(&key)))
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
    #[param(pattern = r"^[a-z0-9_.]{1,64}$")]
    action: Option<String>,
    /// Only what this user did.
    #[param(format = Uuid)]
    actor: Option<String>,
    /// Only what concerned this org.
    #[param(format = Uuid)]
    org: Option<String>,
    /// From this instant on (RFC 3339), inclusive.
    #[param(format = DateTime)]
    since: Option<String>,
    /// Before this instant (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// `next` of the previous page.
    #[param(
        pattern = r"^[0-9]{1,18}_[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
    )]
    cursor: Option<String>,
    /// At most this many entries (1 to 1,000; default 100).
    #[serde(default, deserialize_with = "integer::optional_in_query")]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// An audit entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntryView {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    #[schema(format = DateTime)]
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

fn cursor(text: &str) -> Result<AuditCursor, actix_web::Error> {
    let not_a_cursor = || invalid("cursor", "not a cursor: pass `next` of the previous page");
    let (at, id) = input::audit_cursor(text).ok_or_else(not_a_cursor)?;
    Ok(AuditCursor {
        at: credex_ledger::Timestamp::from_micros(at),
        id: AuditId::new(id).map_err(|_| not_a_cursor())?,
    })
}

/// A filter by id: `Ok(None)` for an id nothing can have (the nil or the max UUID).
fn id_filter<T>(
    field: &str,
    text: Option<&str>,
    make: impl Fn(uuid::Uuid) -> Result<T, credex_ledger::IdError>,
) -> Result<Option<Option<T>>, actix_web::Error> {
    text.map(|text| {
        let uuid = input::uuid(text).ok_or_else(|| invalid(field, "not a UUID"))?;
        Ok(make(uuid).ok())
    })
    .transpose()
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
    let actor = id_filter("actor", query.actor.as_deref(), UserId::new)?;
    let org = id_filter("org", query.org.as_deref(), OrgId::new)?;
    let filter = AuditFilter {
        action: query
            .action
            .as_deref()
            .map(AuditAction::parse)
            .transpose()
            .map_err(|error| invalid("action", error))?,
        actor: actor.flatten(),
        org: org.flatten(),
        since: query
            .since
            .as_deref()
            .map(|text| input::instant("since", text))
            .transpose()?,
        until: query
            .until
            .as_deref()
            .map(|text| input::instant("until", text))
            .transpose()?,
    };
    let after = query.cursor.as_deref().map(cursor).transpose()?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1_000).contains(&limit) {
        return Err(invalid("limit", "between 1 and 1000"));
    }
    if actor == Some(None) || org == Some(None) {
        // Filtered by an id no user or org can have: nothing matches.
        return Ok(HttpResponse::Ok().json(AuditPage {
            entries: Vec::new(),
            next: None,
        }));
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
        .service(
            web::resource("/v1/admin/orgs")
                .route(web::get().to(list_orgs))
                .route(web::post().to(create_org)),
        )
        .service(web::resource("/v1/admin/orgs/{org_id}").route(web::patch().to(change_org)))
        .service(web::resource("/v1/admin/users").route(web::post().to(create_user)))
        .service(web::resource("/v1/admin/users/{user_id}").route(web::get().to(get_user)))
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
                .route(web::get().to(get_api_key))
                .route(web::delete().to(revoke_api_key)),
        );
}
