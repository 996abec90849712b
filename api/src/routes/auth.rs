//! Sign-in, refresh, sign-out, and who am I.

use actix_web::{web, HttpRequest, HttpResponse};
use credex_store::{Email, Role, Store};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::access::{Authenticator, Caller, Unauthenticated};
use crate::auth::password;
use crate::auth::session::{SessionError, TokenPair};
use crate::config::Secret;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::ratelimit::{too_many, RateLimits};
use crate::views::{ApiKeyView, MembershipView, UserView};

/// An e-mail address and a password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "ada@example.com", "password": "correct horse battery staple"}))]
pub struct LoginRequest {
    #[schema(max_length = 254)]
    email: String,
    #[schema(max_length = 1024)]
    password: String,
}

/// A refresh token from a sign-in or an earlier refresh.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(max_length = 256)]
    refresh_token: String,
}

/// A password change: the current password, and the new one (12 to 256 characters).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"current_password": "correct horse battery staple", "new_password": "a longer and newer passphrase"}))]
pub struct PasswordChange {
    #[schema(max_length = 1024)]
    current_password: String,
    #[schema(min_length = 12, max_length = 256)]
    new_password: String,
}

fn invalid_credentials() -> actix_web::Error {
    Unauthenticated("the e-mail address or the password is wrong").into()
}

/// Signs in with an e-mail address and a password. Wrong or unknown, the answer is the same,
/// and takes as long.
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenPair),
        (status = 400, description = "The body is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The e-mail address or the password is wrong", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many attempts; see Retry-After", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    req: HttpRequest,
    body: web::Json<LoginRequest>,
    auth: web::Data<Authenticator>,
    limits: web::Data<RateLimits>,
) -> Result<HttpResponse, actix_web::Error> {
    let LoginRequest { email, password } = body.into_inner();
    let address = req
        .peer_addr()
        .map(|peer| peer.ip().to_string())
        .unwrap_or_default();
    if let Err(wait) = limits.login_per_address.check(&address) {
        return Ok(too_many(wait));
    }
    let email = Email::parse(&email).map_err(|_| invalid_credentials())?;
    if let Err(wait) = limits.login_per_email.check(email.as_str()) {
        return Ok(too_many(wait));
    }
    let found = auth
        .store
        .user_by_email(&email)
        .await
        .map_err(|error| ApiError::internal(&error))?;
    let (user, stored) = match found {
        Some((user, hash)) => (Some(user), Some(hash.as_str().to_owned())),
        None => (None, None),
    };
    if !password::verify(Secret::new(password), stored).await {
        return Err(invalid_credentials());
    }
    let user = user.ok_or_else(invalid_credentials)?;
    let pair = auth
        .sessions
        .start(auth.store.as_ref(), &user)
        .await
        .map_err(|error| ApiError::internal(&error))?;
    // Where the org's people sign in from, for fraud review (clusters of new orgs).
    if let Some(peer) = req.peer_addr() {
        let block = crate::review::address_block(peer.ip());
        let now = auth.store.clock().now();
        let orgs = auth
            .store
            .memberships_of(user.id)
            .await
            .map_err(|error| ApiError::internal(&error))?;
        for (org, _) in orgs {
            auth.store
                .record_address(org.id, &block, now)
                .await
                .map_err(|error| ApiError::internal(&error))?;
        }
    }
    Ok(HttpResponse::Ok().json(pair))
}

/// Trades a refresh token for a new pair. A refresh token works once: using one again revokes
/// the whole sign-in.
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair; the old refresh token is spent", body = TokenPair),
        (status = 400, description = "The body is not valid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The refresh token is not valid, has expired, or was used before", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn refresh(
    body: web::Json<RefreshRequest>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    match auth
        .sessions
        .refresh(auth.store.as_ref(), &body.refresh_token)
        .await
    {
        Ok(pair) => Ok(HttpResponse::Ok().json(pair)),
        Err(SessionError::Invalid) => {
            Err(Unauthenticated("the refresh token is not valid or has expired").into())
        }
        Err(SessionError::Reused) => Err(Unauthenticated(
            "the refresh token was used before; the sign-in is revoked: sign in again",
        )
        .into()),
        Err(SessionError::Store(error)) => Err(ApiError::internal(&error).into()),
    }
}

/// Signs out: revokes the sign-in of the access token, so its refresh tokens stop working.
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "API keys do not sign out", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn logout(
    caller: Caller,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let Caller::User { session, .. } = caller else {
        return Err(
            ApiError::new(ProblemKind::Forbidden, "API keys have no sign-in to end").into(),
        );
    };
    if let Some(session) = session {
        auth.store
            .revoke_family(session, auth.sessions.now())
            .await
            .map_err(|error| ApiError::internal(&error))?;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// The caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The signed-in user; absent for an API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserView>,
    /// The orgs the user belongs to; for an API key, its org (as a member).
    pub memberships: Vec<MembershipView>,
    /// For an API key: the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyView>,
}

/// Who is calling: the user and their orgs, or the API key and its org.
#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn me(
    caller: Caller,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let store: &dyn Store = auth.store.as_ref();
    let me = match caller {
        Caller::User { user, .. } => {
            let memberships = store
                .memberships_of(user.id)
                .await
                .map_err(|error| ApiError::internal(&error))?
                .iter()
                .map(|(org, role)| MembershipView::new(org, *role))
                .collect();
            Me {
                user: Some(UserView::from(&user)),
                memberships,
                api_key: None,
            }
        }
        Caller::Key(key) => {
            let org = store
                .org(key.org)
                .await
                .map_err(|error| ApiError::internal(&error))?;
            Me {
                user: None,
                memberships: org
                    .iter()
                    .map(|org| MembershipView::new(org, Role::Member))
                    .collect(),
                api_key: Some(ApiKeyView::from(&key)),
            }
        }
    };
    Ok(HttpResponse::Ok().json(me))
}

/// Changes the signed-in user's password. Every sign-in of the user ends, this one included;
/// the answer is a fresh pair for the caller, so only the caller stays signed in.
#[utoipa::path(
    post,
    path = "/v1/me/password",
    tag = "auth",
    security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed; the caller's new pair (every other sign-in has ended)", body = TokenPair),
        (status = 400, description = "The body is not valid, or the new password is too short or too long", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The current password is wrong, or the caller is an API key (which has no password)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many tries; wait as `Retry-After` says", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn change_password(
    caller: Caller,
    body: web::Json<PasswordChange>,
    auth: web::Data<Authenticator>,
    limits: web::Data<RateLimits>,
) -> Result<HttpResponse, actix_web::Error> {
    let Caller::User { user, .. } = caller else {
        return Err(ApiError::new(ProblemKind::Forbidden, "API keys have no password").into());
    };
    let PasswordChange {
        current_password,
        new_password,
    } = body.into_inner();
    if let Err(wait) = limits.login_per_email.check(user.email.as_str()) {
        return Ok(too_many(wait));
    }
    password::acceptable(&new_password).map_err(|error| {
        ApiError::new(ProblemKind::BadRequest, format!("new_password: {error}"))
    })?;
    let stored = auth
        .store
        .user_by_email(&user.email)
        .await
        .map_err(|error| ApiError::internal(&error))?
        .map(|(_, hash)| hash.as_str().to_owned());
    if !password::verify(Secret::new(current_password), stored).await {
        let detail = "current_password: the current password is wrong";
        return Err(ApiError::new(ProblemKind::Forbidden, detail).into());
    }
    let hash = password::hash(Secret::new(new_password))
        .await
        .map_err(|error| {
            ApiError::new(ProblemKind::BadRequest, format!("new_password: {error}"))
        })?;
    let hash = credex_store::PasswordHash::new(hash).map_err(|error| ApiError::internal(&error))?;
    auth.store
        .set_password(user.id, &hash)
        .await
        .map_err(|error| ApiError::internal(&error))?;
    auth.store
        .revoke_user_tokens(user.id, auth.sessions.now())
        .await
        .map_err(|error| ApiError::internal(&error))?;
    let pair = auth
        .sessions
        .start(auth.store.as_ref(), &user)
        .await
        .map_err(|error| ApiError::internal(&error))?;
    Ok(HttpResponse::Ok().json(pair))
}

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(web::resource("/v1/me/password").route(web::post().to(change_password)))
        .service(web::resource("/v1/auth/login").route(web::post().to(login)))
        .service(web::resource("/v1/auth/refresh").route(web::post().to(refresh)))
        .service(web::resource("/v1/auth/logout").route(web::post().to(logout)))
        .service(web::resource("/v1/me").route(web::get().to(me)));
}
