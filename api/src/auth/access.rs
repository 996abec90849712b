//! Who is calling, and what they may do: authorization in the types.
//!
//! A handler names what it needs by the extractor it takes:
//! - [`Caller`]: any authenticated caller (a user's access token or an API key);
//! - [`OrgAccess<P>`]: a caller acting in the org of the path's `{org_id}`, with permission `P`
//!   ([`Read`], [`Owner`], [`UsageWrite`], [`MarketTrade`]);
//! - [`Admin`]: a platform admin.
//!
//! An operation whose org is named in its body takes a [`Caller`] and asks
//! [`OrgAccess::check`], which applies the same rules.
//!
//! No token → 401 (with `WWW-Authenticate: Bearer`). An org the caller does not belong to → 404,
//! exactly as for an org that does not exist, so ids leak nothing. A member without the role or
//! an API key without the scope → 403.

use std::marker::PhantomData;
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use credex_ledger::{OrgId, Timestamp};
use credex_store::{
    ApiKey, ApiKeyPrefix, Role, Scope, Store, TokenFamilyId, TokenHash, User, UserId,
};
use futures::future::LocalBoxFuture;

use super::session::Sessions;
use super::tokens;
use crate::problem::{ApiError, Problem, ProblemKind, PROBLEM_JSON};
use crate::ratelimit::{RateLimits, TooMany};

/// What the access extractors need from the application.
#[derive(Debug, Clone)]
pub struct Authenticator {
    pub store: Arc<dyn Store>,
    pub sessions: Sessions,
    /// API keys lately found, for the operations that check the key again themselves.
    pub keys: Arc<KeyMemory>,
}

/// API keys, by prefix, with their hashes, kept and read only by operations whose permission
/// says they check, in their own transaction, that the key is not revoked
/// ([`Permission::KEY_RECHECKED`]), so a key revoked meanwhile is refused there, exactly, by
/// every process. Each is kept for at most [`KeyMemory::KEPT_SECONDS`], and at most
/// [`KeyMemory::MAX`] of them (all dropped when full).
#[derive(Debug, Default)]
pub struct KeyMemory {
    keys: std::sync::Mutex<KeptKeys>,
}

/// Each key with its hash and when it was found.
type KeptKeys = std::collections::HashMap<ApiKeyPrefix, (ApiKey, TokenHash, Timestamp)>;

impl KeyMemory {
    pub const KEPT_SECONDS: u32 = 60;
    pub const MAX: usize = 10_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, KeptKeys> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, prefix: &ApiKeyPrefix, now: Timestamp) -> Option<(ApiKey, TokenHash)> {
        let keys = self.lock();
        let (key, hash, found_at) = keys.get(prefix)?;
        (found_at.plus_seconds(Self::KEPT_SECONDS) > now).then(|| (key.clone(), *hash))
    }

    fn keep(&self, key: &ApiKey, hash: TokenHash, now: Timestamp) {
        let mut keys = self.lock();
        if keys.len() >= Self::MAX {
            keys.clear();
        }
        keys.insert(key.prefix.clone(), (key.clone(), hash, now));
    }

    fn used(&self, prefix: &ApiKeyPrefix, now: Timestamp) {
        if let Some((key, _, _)) = self.lock().get_mut(prefix) {
            key.last_used_at = Some(now);
        }
    }
}

/// 401 with `WWW-Authenticate: Bearer`, as problem details.
#[derive(Debug, thiserror::Error)]
#[error("unauthenticated: {0}")]
pub struct Unauthenticated(pub &'static str);

impl ResponseError for Unauthenticated {
    fn status_code(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"credex\""))
            .content_type(PROBLEM_JSON)
            .json(Problem::new(
                ProblemKind::Unauthorized,
                Some(self.0.to_owned()),
            ))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A user, by an access token of sign-in `session`.
    User {
        user: User,
        session: Option<TokenFamilyId>,
    },
    /// A program, by an API key of one org.
    Key(ApiKey),
}

impl Caller {
    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Self::User { user, .. } => Some(user.id),
            Self::Key(_) => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Self::User { user, .. } if user.is_admin)
    }

    /// The API key calling, if a key is.
    pub fn api_key_id(&self) -> Option<uuid::Uuid> {
        match self {
            Self::Key(key) => Some(key.id.as_uuid()),
            Self::User { .. } => None,
        }
    }
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The caller presenting `token`. With `remembered`, an API key may come from
/// [`KeyMemory`] (the operation checks the key again itself).
async fn authenticate(
    auth: &Authenticator,
    token: &str,
    remembered: bool,
) -> Result<Caller, actix_web::Error> {
    if token.starts_with("cdx_") {
        let prefix = tokens::api_key_prefix(token)
            .and_then(|prefix| ApiKeyPrefix::parse(prefix).ok())
            .ok_or(Unauthenticated("the API key is not valid"))?;
        let now = auth.sessions.now();
        let kept = if remembered {
            auth.keys.get(&prefix, now)
        } else {
            None
        };
        let (key, hash) = match kept {
            Some(kept) => kept,
            None => {
                let found = auth
                    .store
                    .api_key_by_prefix(&prefix)
                    .await
                    .map_err(|error| ApiError::internal(&error))?;
                let Some((key, hash)) = found else {
                    return Err(Unauthenticated("the API key is not valid").into());
                };
                if remembered && key.revoked_at.is_none() {
                    auth.keys.keep(&key, hash, now);
                }
                (key, hash)
            }
        };
        if !tokens::matches(token, hash.as_bytes()) || key.revoked_at.is_some() {
            return Err(Unauthenticated("the API key is not valid").into());
        }
        if key.last_used_at.is_none_or(|at| at.plus_seconds(60) <= now) {
            // At most once a minute per key: a hint, not an audit trail.
            let _ = auth.store.touch_api_key(key.id, now).await;
            auth.keys.used(&prefix, now);
        }
        return Ok(Caller::Key(key));
    }
    let now = auth.sessions.now().as_micros().div_euclid(1_000_000);
    let claims = auth
        .sessions
        .keys()
        .verify(token, now)
        .map_err(|_| Unauthenticated("the access token is not valid or has expired"))?;
    let user_id = UserId::parse(&claims.sub)
        .map_err(|_| Unauthenticated("the access token is not valid or has expired"))?;
    let user = auth
        .store
        .user(user_id)
        .await
        .map_err(|error| ApiError::internal(&error))?
        .ok_or(Unauthenticated(
            "the access token is not valid or has expired",
        ))?;
    let session = claims
        .sid
        .as_deref()
        .and_then(|sid| TokenFamilyId::parse(sid).ok());
    Ok(Caller::User { user, session })
}

fn authenticator(req: &HttpRequest) -> Result<Authenticator, actix_web::Error> {
    req.app_data::<web::Data<Authenticator>>()
        .map(|data| data.get_ref().clone())
        .ok_or_else(|| ApiError::internal(&"no authenticator configured").into())
}

impl FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        caller(req, false)
    }
}

/// The request's caller, rate-limited; see [`authenticate`] for `remembered`.
fn caller(
    req: &HttpRequest,
    remembered: bool,
) -> LocalBoxFuture<'static, Result<Caller, actix_web::Error>> {
    let token = bearer(req);
    let auth = authenticator(req);
    let limits = req.app_data::<web::Data<RateLimits>>().cloned();
    Box::pin(async move {
        let auth = auth?;
        let token = token.ok_or(Unauthenticated("send `Authorization: Bearer <token>`"))?;
        let caller = authenticate(&auth, &token, remembered).await?;
        if let Some(limits) = limits {
            let key = match &caller {
                Caller::User { user, .. } => format!("user:{}", user.id),
                Caller::Key(key) => format!("key:{}", key.id),
            };
            limits.per_caller.check(&key).map_err(TooMany)?;
        }
        Ok(caller)
    })
}

/// A permission an org-scoped operation needs.
pub trait Permission: 'static {
    /// The role a member needs (owners have every role's rights).
    const ROLE: Role;
    /// The scope an API key needs; `None`: API keys may not do it.
    const SCOPE: Option<Scope>;
    /// Every operation that needs it checks again, in its own transaction, that the calling
    /// API key is not revoked, so the key may be authenticated from [`KeyMemory`].
    const KEY_RECHECKED: bool = false;
}

/// See the org's data.
#[derive(Debug)]
pub struct Read;
/// Manage the org: members, API keys, budgets, listings.
#[derive(Debug)]
pub struct Owner;
/// Record usage.
#[derive(Debug)]
pub struct UsageWrite;
/// Trade on the market.
#[derive(Debug)]
pub struct MarketTrade;

impl Permission for Read {
    const ROLE: Role = Role::Member;
    const SCOPE: Option<Scope> = Some(Scope::Read);
}
impl Permission for Owner {
    const ROLE: Role = Role::Owner;
    const SCOPE: Option<Scope> = None;
}
/// Usage recording and reservations pass the key to the usage service, whose transaction
/// refuses a revoked one (`UsageReads::key`).
impl Permission for UsageWrite {
    const ROLE: Role = Role::Member;
    const SCOPE: Option<Scope> = Some(Scope::UsageWrite);
    const KEY_RECHECKED: bool = true;
}
impl Permission for MarketTrade {
    const ROLE: Role = Role::Member;
    const SCOPE: Option<Scope> = Some(Scope::MarketTrade);
}

/// A caller allowed `P` in the org of the path's `{org_id}`.
#[derive(Debug)]
pub struct OrgAccess<P: Permission> {
    pub org: OrgId,
    pub caller: Caller,
    permission: PhantomData<P>,
}

fn not_found() -> actix_web::Error {
    ApiError::new(ProblemKind::NotFound, "no such org").into()
}

async fn org_access<P: Permission>(
    auth: &Authenticator,
    caller: Caller,
    org: Option<OrgId>,
) -> Result<OrgAccess<P>, actix_web::Error> {
    let org = org.ok_or_else(not_found)?;
    match &caller {
        Caller::Key(key) => {
            if key.org != org {
                return Err(not_found());
            }
            match P::SCOPE {
                Some(scope) if key.scopes.contains(scope) => {}
                Some(scope) => {
                    let detail = format!("this API key lacks the `{scope}` scope");
                    return Err(ApiError::new(ProblemKind::Forbidden, detail).into());
                }
                None => {
                    let detail = "API keys may not do this; sign in as an owner";
                    return Err(ApiError::new(ProblemKind::Forbidden, detail).into());
                }
            }
        }
        Caller::User { user, .. } => {
            let role = auth
                .store
                .membership(org, user.id)
                .await
                .map_err(|error| ApiError::internal(&error))?;
            match (role, user.is_admin) {
                // Platform admins act in any org.
                (_, true) => {}
                (None, false) => return Err(not_found()),
                (Some(Role::Member), false) if P::ROLE == Role::Owner => {
                    let detail = "only the org's owners may do this";
                    return Err(ApiError::new(ProblemKind::Forbidden, detail).into());
                }
                (Some(_), false) => {}
            }
        }
    }
    Ok(OrgAccess {
        org,
        caller,
        permission: PhantomData,
    })
}

impl<P: Permission> OrgAccess<P> {
    /// `caller` allowed `P` in `org`, by the extractor's rules, for an operation that names its
    /// org elsewhere than in the path (such as in its body). The only other way to an
    /// `OrgAccess` is the extractor itself.
    pub async fn check(
        auth: &Authenticator,
        caller: Caller,
        org: OrgId,
    ) -> Result<Self, actix_web::Error> {
        org_access::<P>(auth, caller, Some(org)).await
    }
}

impl<P: Permission> FromRequest for OrgAccess<P> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let org = req
            .match_info()
            .get("org_id")
            .and_then(|id| OrgId::parse(id).ok());
        let caller = caller(req, P::KEY_RECHECKED);
        let auth = authenticator(req);
        Box::pin(async move {
            let auth = auth?;
            let caller = caller.await?;
            org_access::<P>(&auth, caller, org).await
        })
    }
}

/// A platform admin.
#[derive(Debug)]
pub struct Admin(pub User);

impl FromRequest for Admin {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = Caller::from_request(req, payload);
        Box::pin(async move {
            match caller.await? {
                Caller::User { user, .. } if user.is_admin => Ok(Admin(user)),
                _ => Err(
                    ApiError::new(ProblemKind::Forbidden, "only platform admins may do this")
                        .into(),
                ),
            }
        })
    }
}
