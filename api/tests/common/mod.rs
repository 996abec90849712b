//! Shared by the in-process API tests: the application on a test database, and requests.

#![allow(dead_code)]

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::test;
use credex_api::config::{Config, Secret};
use credex_api::startup::{assemble, Assembled};
use credex_ledger::{ManualClock, Timestamp};
use credex_tests::TestDb;
use serde_json::{json, Value};

pub mod process;
pub mod servers;
pub mod usage_world;

pub const ADMIN: &str = "ops@provider.example";
pub const PASSWORD: &str = "a long and careful password";
pub const NOV_26: Timestamp = Timestamp::from_micros(1_795_651_200_000_000);

/// The assembled application on a test database, with a clock the test moves.
pub struct Fixture {
    pub assembled: Assembled,
    pub clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn new(db: &TestDb) -> Self {
        Self::configured(db, |_| {}).await
    }

    /// The application with the test's changes to its configuration.
    pub async fn configured(db: &TestDb, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::configured_on(db.url(), adjust).await
    }

    /// The application on the database at `url` (a test's database reached another way).
    pub async fn on_url(url: &str) -> Self {
        Self::configured_on(url, |_| {}).await
    }

    async fn configured_on(url: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("a directory");
        let mut config = Config::new("127.0.0.1:0", dir.path()).with_database_url(url);
        config.admin_email = Some(ADMIN.to_owned());
        config.admin_password = Some(Secret::new(PASSWORD));
        adjust(&mut config);
        let clock = Arc::new(ManualClock::new(NOV_26));
        let assembled = assemble(&config, clock.clone()).await.expect("assemble");
        Self {
            assembled,
            clock,
            _dir: dir,
        }
    }

    pub async fn close(self) {
        self.assembled.ledger.close().await;
    }
}

/// A response: status, headers, JSON body (`Null` when not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: actix_web::http::header::HeaderMap,
    pub body: Value,
}

pub async fn call<S, B>(service: &S, request: test::TestRequest) -> Answer
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody + 'static,
{
    let peer: std::net::SocketAddr = "198.51.100.9:40000".parse().expect("an address");
    let response = match test::try_call_service(service, request.peer_addr(peer).to_request()).await
    {
        Ok(response) => response.into_parts().1.map_into_boxed_body(),
        Err(error) => error.error_response(),
    };
    let status = response.status();
    let headers = response.headers().clone();
    let body = actix_web::body::to_bytes(response.into_body())
        .await
        .unwrap_or_default();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    }
}

pub fn login(email: &str, password: &str) -> test::TestRequest {
    test::TestRequest::post()
        .uri("/v1/auth/login")
        .set_json(json!({ "email": email, "password": password }))
}

pub fn bearer(request: test::TestRequest, token: &str) -> test::TestRequest {
    request.insert_header(("Authorization", format!("Bearer {token}")))
}

/// Signs in and returns the access token.
pub async fn sign_in<S, B>(service: &S, email: &str, password: &str) -> String
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody + 'static,
{
    let answer = call(service, login(email, password)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["access_token"]
        .as_str()
        .expect("a token")
        .to_owned()
}
