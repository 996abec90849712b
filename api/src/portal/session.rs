//! Portal sessions: the API's own sign-in, kept in cookies.
//!
//! Signing in calls `POST /v1/auth/login`; the access token (15 minutes) and the refresh token
//! (30 days, rotated on use) live in `Secure`, `HttpOnly`, `SameSite=Strict` cookies with the
//! `__Host-` prefix, never in a page. When the access token has expired the portal refreshes it
//! with `POST /v1/auth/refresh` and sets the new pair on its answer. Signing out revokes the
//! session with `POST /v1/auth/logout`.
//!
//! Every form carries a CSRF token: a random value in its own cookie, repeated in a hidden
//! field (double submit); a form whose field does not match, or whose `Origin` is foreign, is
//! refused before anything happens. `SameSite=Strict` already keeps other sites' forms from
//! carrying the session.

use std::net::SocketAddr;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{header, Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::api::{Answer, Call, PortalApi, Problem};

pub const ACCESS_COOKIE: &str = "__Host-credex_access";
pub const REFRESH_COOKIE: &str = "__Host-credex_refresh";
pub const CSRF_COOKIE: &str = "__Host-credex_csrf";
/// The hidden field every portal form repeats the CSRF token in.
pub const CSRF_FIELD: &str = "csrf";

/// One org the signed-in user belongs to.
#[derive(Debug, Clone)]
pub struct Membership {
    pub org_id: String,
    pub name: String,
    pub role: String,
}

/// A signed-in user, for the length of one portal request.
#[derive(Debug)]
pub struct Session {
    access: String,
    refresh: String,
    pub csrf: String,
    pub email: String,
    pub is_admin: bool,
    pub memberships: Vec<Membership>,
    rotated: bool,
    peer: Option<SocketAddr>,
}

/// Why a portal request has no session: the browser goes to the sign-in page.
#[derive(Debug)]
pub struct SignInFirst {
    next: String,
}

impl std::fmt::Display for SignInFirst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sign in first")
    }
}

impl ResponseError for SignInFirst {
    fn status_code(&self) -> StatusCode {
        StatusCode::SEE_OTHER
    }

    fn error_response(&self) -> HttpResponse {
        let next = url_encode(&self.next);
        let mut response = HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/portal/sign-in?next={next}")))
            .finish();
        for name in [ACCESS_COOKIE, REFRESH_COOKIE] {
            let _ = response.add_removal_cookie(&cookie(name, String::new()));
        }
        response
    }
}

/// A cookie of the portal's: `__Host-` rules (Secure, Path=/, no Domain), HttpOnly, Strict.
pub fn cookie(name: &'static str, value: String) -> Cookie<'static> {
    let mut cookie = Cookie::new(name, value);
    cookie.set_secure(true);
    cookie.set_http_only(true);
    cookie.set_same_site(SameSite::Strict);
    cookie.set_path("/");
    cookie
}

pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(char::from(byte));
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A fresh random token (CSRF values, idempotency keys of forms).
pub fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The CSRF token of the browser: its cookie's, or a new one (set by [`with_csrf_cookie`]).
pub fn csrf_of(req: &HttpRequest) -> (String, bool) {
    match req.cookie(CSRF_COOKIE) {
        Some(cookie) if cookie.value().len() >= 16 => (cookie.value().to_owned(), false),
        _ => (random_token(), true),
    }
}

/// Sets the CSRF cookie on `response` when it is new.
pub fn with_csrf_cookie(response: &mut HttpResponse, csrf: &str, new: bool) {
    if new {
        let _ = response.add_cookie(&cookie(CSRF_COOKIE, csrf.to_owned()));
    }
}

/// Whether a submitted form may be acted on: its CSRF field matches the cookie, and its origin
/// (when the browser names one) is this site.
pub fn form_is_genuine(req: &HttpRequest, submitted: Option<&str>) -> bool {
    let Some(cookie) = req.cookie(CSRF_COOKIE) else {
        return false;
    };
    let Some(submitted) = submitted else {
        return false;
    };
    if !constant_time_eq(cookie.value().as_bytes(), submitted.as_bytes()) {
        return false;
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok());
    match origin {
        None => true,
        Some(origin) => {
            let host = req.connection_info().host().to_owned();
            origin
                .split_once("://")
                .is_some_and(|(_, rest)| rest == host)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn api_of(req: &HttpRequest) -> Result<&PortalApi, Problem> {
    req.app_data::<PortalApi>()
        .ok_or_else(|| Problem::internal("the portal is not configured"))
}

/// Signs in with the API; the tokens, or the API's problem (wrong password, too many tries).
pub async fn sign_in(
    req: &HttpRequest,
    email: &str,
    password: &str,
) -> Result<(String, String), Problem> {
    let api = api_of(req)?;
    let body = json!({ "email": email, "password": password });
    let answer = api
        .call(Call::send(Method::POST, "/v1/auth/login", &body).from_peer(req.peer_addr()))
        .await?;
    tokens_of(&answer)
}

fn tokens_of(answer: &Answer) -> Result<(String, String), Problem> {
    let body: Value = answer.json()?;
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Problem::internal(format!("the sign-in answer lacks {name}")))
    };
    Ok((text("access_token")?, text("refresh_token")?))
}

/// Sets the session's cookies on `response`.
pub fn set_session_cookies(response: &mut HttpResponse, access: &str, refresh: &str) {
    let _ = response.add_cookie(&cookie(ACCESS_COOKIE, access.to_owned()));
    let mut refresh = cookie(REFRESH_COOKIE, refresh.to_owned());
    refresh.set_max_age(actix_web::cookie::time::Duration::seconds(i64::from(
        crate::auth::session::REFRESH_TTL_SECONDS,
    )));
    let _ = response.add_cookie(&refresh);
}

/// Removes the session's cookies.
pub fn clear_session_cookies(response: &mut HttpResponse) {
    for name in [ACCESS_COOKIE, REFRESH_COOKIE] {
        let _ = response.add_removal_cookie(&cookie(name, String::new()));
    }
}

impl Session {
    /// The session of the request's cookies (refreshed if its access token expired), or
    /// [`SignInFirst`].
    pub async fn of(req: &HttpRequest) -> Result<Self, actix_web::Error> {
        let next = req
            .uri()
            .path_and_query()
            .map_or("/portal", |path| path.as_str())
            .to_owned();
        let sign_in_first = || SignInFirst { next: next.clone() };
        let access = req.cookie(ACCESS_COOKIE).map(|c| c.value().to_owned());
        let refresh = req.cookie(REFRESH_COOKIE).map(|c| c.value().to_owned());
        let Some(refresh) = refresh else {
            return Err(sign_in_first().into());
        };
        let api = api_of(req).map_err(|_| sign_in_first())?;
        let (csrf, _) = csrf_of(req);
        let mut session = Self {
            access: access.unwrap_or_default(),
            refresh,
            csrf,
            email: String::new(),
            is_admin: false,
            memberships: Vec::new(),
            rotated: false,
            peer: req.peer_addr(),
        };
        let mut me = session.me(api).await;
        if matches!(&me, Err(problem) if problem.status == StatusCode::UNAUTHORIZED) {
            let body = json!({ "refresh_token": session.refresh });
            let answer = api
                .call(Call::send(Method::POST, "/v1/auth/refresh", &body).from_peer(session.peer))
                .await
                .map_err(|_| sign_in_first())?;
            let (access, refresh) = tokens_of(&answer).map_err(|_| sign_in_first())?;
            session.access = access;
            session.refresh = refresh;
            session.rotated = true;
            me = session.me(api).await;
        }
        let me = me.map_err(|_| sign_in_first())?;
        let user = me.get("user").cloned().unwrap_or(Value::Null);
        session.email = user
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        session.is_admin = user
            .get("is_admin")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        session.memberships = me
            .get("memberships")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .map(|m| Membership {
                        org_id: str_at(m, "/org/id"),
                        name: str_at(m, "/org/name"),
                        role: str_at(m, "/role"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(session)
    }

    async fn me(&self, api: &PortalApi) -> Result<Value, Problem> {
        api.call(Call::get("/v1/me").token(&self.access).from_peer(self.peer))
            .await?
            .json()
    }

    /// Calls the API as the signed-in user.
    pub async fn call(&self, req: &HttpRequest, call: Call<'_>) -> Result<Answer, Problem> {
        api_of(req)?
            .call(call.token(&self.access).from_peer(self.peer))
            .await
    }

    /// GETs `path` as the signed-in user: its JSON, or the API's problem.
    pub async fn get(&self, req: &HttpRequest, path: &str) -> Result<Value, Problem> {
        self.call(req, Call::get(path)).await?.json()
    }

    /// Sends `body` to `path` with `method` as the signed-in user, with an idempotency key.
    pub async fn send(
        &self,
        req: &HttpRequest,
        method: Method,
        path: &str,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, Problem> {
        let mut call = Call::send(method, path, body);
        if let Some(key) = idempotency_key {
            call = call.idempotent(key);
        }
        self.call(req, call).await
    }

    /// Revokes the session at the API.
    pub async fn sign_out(&self, req: &HttpRequest) -> Result<(), Problem> {
        let answer = self
            .call(req, Call::get("/v1/auth/logout").method(Method::POST))
            .await?;
        if answer.is_success() {
            Ok(())
        } else {
            Err(answer.problem())
        }
    }

    /// The membership of `org_id`, if the user has one (admins may look at any org).
    pub fn membership(&self, org_id: &str) -> Option<&Membership> {
        self.memberships.iter().find(|m| m.org_id == org_id)
    }

    /// Finishes `response`: the session's cookies when they were refreshed, and the CSRF
    /// cookie when it is new.
    pub fn finish(&self, req: &HttpRequest, mut response: HttpResponse) -> HttpResponse {
        if self.rotated {
            set_session_cookies(&mut response, &self.access, &self.refresh);
        }
        if req.cookie(CSRF_COOKIE).is_none() {
            with_csrf_cookie(&mut response, &self.csrf, true);
        }
        response
    }
}

/// The string at a JSON pointer (empty when absent).
pub fn str_at(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}
