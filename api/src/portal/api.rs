//! The portal's way to the HTTP API: in process, through the very service that answers the
//! API's own clients.
//!
//! A portal page asks the API what it shows and sends it what its forms say, with the signed-in
//! user's access token, exactly as a program would over HTTP; only the socket is missing. So
//! the portal can never disagree with the API on a rule, a permission or an error, and every
//! problem+json the API answers reaches the form that caused it. The client address of the
//! browser's request is passed on, so the API's per-address limits see the real caller.
//!
//! Each worker thread builds its own copy of the application (actix services are
//! single-threaded) the first time one of its pages needs the API.

use std::cell::OnceCell;
use std::net::SocketAddr;
use std::rc::Rc;

use actix_service::{IntoServiceFactory, Service, ServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::http::{header, Method, StatusCode};
use actix_web::web::Bytes;
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::startup::Parts;

/// What the API answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub location: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// An API answer the page did not expect: a problem the API reported, or a failure to reach it.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub title: String,
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.title)
        } else {
            write!(f, "{}: {}", self.title, self.detail)
        }
    }
}

impl Problem {
    pub fn internal(what: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            title: "The portal could not reach the API".to_owned(),
            detail: what.to_string(),
        }
    }

    /// The form field this problem concerns, among `fields`, if its detail names one (the
    /// API's details name the field first, or quote it in backticks).
    pub fn field<'a>(&self, fields: &[&'a str]) -> Option<&'a str> {
        let detail = self.detail.as_str();
        fields.iter().copied().find(|field| {
            let quoted = format!("`{field}`");
            detail.contains(&quoted)
                || detail
                    .strip_prefix(field)
                    .is_some_and(|rest| rest.starts_with([':', ' ', '.']))
        })
    }
}

impl Answer {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The body as `T`, if the API answered 2xx; its problem otherwise.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        if !self.is_success() {
            return Err(self.problem());
        }
        serde_json::from_slice(&self.body).map_err(Problem::internal)
    }

    /// The answer as a problem (for an answer that is not 2xx).
    pub fn problem(&self) -> Problem {
        #[derive(serde::Deserialize)]
        struct Body {
            title: Option<String>,
            detail: Option<String>,
        }
        let body: Option<Body> = serde_json::from_slice(&self.body).ok();
        let (title, detail) = match body {
            Some(body) => (body.title, body.detail),
            None => (None, None),
        };
        Problem {
            status: self.status,
            title: title
                .unwrap_or_else(|| self.status.canonical_reason().unwrap_or("error").to_owned()),
            detail: detail.unwrap_or_default(),
        }
    }
}

type Dispatch = Rc<dyn Fn(actix_http::Request) -> LocalBoxFuture<'static, Result<Answer, Problem>>>;

/// The API, as the portal reaches it (one per worker; see the module).
pub struct PortalApi {
    parts: Parts,
    dispatch: OnceCell<Dispatch>,
}

impl std::fmt::Debug for PortalApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalApi").finish_non_exhaustive()
    }
}

/// One request to the API.
#[derive(Debug)]
pub struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub body: Option<Vec<u8>>,
    pub idempotency_key: Option<String>,
    pub peer: Option<SocketAddr>,
}

impl<'a> Call<'a> {
    pub fn get(path: &'a str) -> Self {
        Self {
            method: Method::GET,
            path,
            token: None,
            body: None,
            idempotency_key: None,
            peer: None,
        }
    }

    pub fn send(method: Method, path: &'a str, body: &serde_json::Value) -> Self {
        Self {
            body: Some(body.to_string().into_bytes()),
            ..Self::get(path).method(method)
        }
    }

    #[must_use]
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    #[must_use]
    pub fn token(mut self, token: &'a str) -> Self {
        self.token = Some(token);
        self
    }

    #[must_use]
    pub fn idempotent(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    #[must_use]
    pub fn from_peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = peer;
        self
    }
}

impl PortalApi {
    pub fn new(parts: Parts) -> Self {
        Self {
            parts,
            dispatch: OnceCell::new(),
        }
    }

    async fn dispatcher(&self) -> Result<Dispatch, Problem> {
        if let Some(dispatch) = self.dispatch.get() {
            return Ok(Rc::clone(dispatch));
        }
        let factory = crate::startup::app(self.parts.clone()).into_factory();
        let service = factory
            .new_service(AppConfig::default())
            .await
            .map_err(|()| Problem::internal("the application did not start"))?;
        let service = Rc::new(service);
        let dispatch: Dispatch = Rc::new(move |request| {
            let service = Rc::clone(&service);
            Box::pin(async move {
                let response = service.call(request).await.map_err(Problem::internal)?;
                let status = response.status();
                let headers = response.headers();
                let text = |name| {
                    headers
                        .get(name)
                        .and_then(|value: &header::HeaderValue| value.to_str().ok())
                        .map(str::to_owned)
                };
                let location = text(header::LOCATION);
                let content_type = text(header::CONTENT_TYPE);
                let body = actix_web::body::to_bytes(response.into_body())
                    .await
                    .map_err(|_| Problem::internal("the API's answer could not be read"))?;
                Ok(Answer {
                    status,
                    location,
                    content_type,
                    body,
                })
            })
        });
        Ok(Rc::clone(self.dispatch.get_or_init(|| dispatch)))
    }

    /// Sends `call` to the API and answers what it answered (2xx or not).
    pub async fn call(&self, call: Call<'_>) -> Result<Answer, Problem> {
        let dispatch = self.dispatcher().await?;
        let body = call.body.unwrap_or_default();
        let length = body.len();
        let payload = actix_http::Payload::from(Bytes::from(body));
        let mut request = actix_http::Request::with_payload(payload);
        let head = request.head_mut();
        head.method = call.method;
        head.uri = call
            .path
            .parse()
            .map_err(|_| Problem::internal(format!("not a path: {}", call.path)))?;
        head.peer_addr = call.peer;
        let headers = &mut head.headers;
        let value = |text: &str| {
            header::HeaderValue::from_str(text).map_err(|_| Problem::internal("a header value"))
        };
        headers.insert(header::HOST, header::HeaderValue::from_static("portal"));
        if length > 0 {
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
        }
        headers.insert(header::CONTENT_LENGTH, value(&length.to_string())?);
        if let Some(token) = call.token {
            headers.insert(header::AUTHORIZATION, value(&format!("Bearer {token}"))?);
        }
        if let Some(key) = &call.idempotency_key {
            headers.insert(
                header::HeaderName::from_static("idempotency-key"),
                value(key)?,
            );
        }
        let started = std::time::Instant::now();
        let answer = dispatch(request).await;
        tracing::debug!(
            path = call.path,
            elapsed_us = started.elapsed().as_micros(),
            "portal: API call"
        );
        answer
    }
}
