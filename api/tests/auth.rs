//! Sessions over HTTP, on both backends: sign-in, who am I, refresh with rotation and reuse
//! detection, sign-out, and the limits on guessing.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::test;
use credex_api::config::Config;
use credex_api::startup::{app, assemble};
use credex_ledger::ManualClock;
use credex_tests::TestDb;
use serde_json::{json, Value};

mod common;

use common::{bearer, login, ADMIN, PASSWORD};

/// `common::call`, answering (status, headers, body).
async fn call<S, B>(
    service: &S,
    request: test::TestRequest,
) -> (StatusCode, actix_web::http::header::HeaderMap, Value)
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody + 'static,
{
    let answer = common::call(service, request).await;
    (answer.status, answer.headers, answer.body)
}

async fn sessions(db: &TestDb) {
    let dir = tempfile::tempdir().expect("a directory");
    let mut config = Config::new("127.0.0.1:0", dir.path()).with_database_url(db.url());
    config.admin_email = Some(ADMIN.to_owned());
    config.admin_password = Some(credex_api::config::Secret::new(PASSWORD));
    let clock = Arc::new(ManualClock::new(credex_ledger::Timestamp::from_micros(
        1_795_651_200_000_000,
    )));
    let assembled = assemble(&config, clock.clone()).await.expect("assemble");
    let service = test::init_service(app(assembled.parts.clone())).await;

    // Wrong password and unknown user: the same 401, with WWW-Authenticate.
    let (status, headers, wrong) = call(&service, login(ADMIN, "not the password at all")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers.get("www-authenticate").expect("WWW-Authenticate"),
        "Bearer realm=\"credex\""
    );
    let (status, _, unknown) = call(&service, login("nobody@example.com", PASSWORD)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong["detail"], unknown["detail"]);
    assert_eq!(wrong["type"], "https://credex.dev/problems/unauthorized");

    // Sign in; who am I.
    let (status, _, pair) = call(&service, login(&ADMIN.to_uppercase(), PASSWORD)).await;
    assert_eq!(status, StatusCode::OK, "{pair}");
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(pair["expires_in"], 900);
    let access = pair["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned();
    let refresh = pair["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_owned();
    let (status, _, me) = call(
        &service,
        bearer(test::TestRequest::get().uri("/v1/me"), &access),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user"]["email"], ADMIN);
    assert_eq!(me["user"]["is_admin"], true);
    let (status, _, _) = call(&service, test::TestRequest::get().uri("/v1/me")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        &service,
        bearer(test::TestRequest::get().uri("/v1/me"), "garbage"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The access token expires after 15 minutes.
    clock.advance_seconds(15 * 60);
    let (status, _, _) = call(
        &service,
        bearer(test::TestRequest::get().uri("/v1/me"), &access),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Refresh rotates; a second use of the old token revokes the sign-in, new token included.
    let refresh_with = |token: &str| {
        test::TestRequest::post()
            .uri("/v1/auth/refresh")
            .set_json(json!({ "refresh_token": token }))
    };
    let (status, _, second) = call(&service, refresh_with(&refresh)).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second_refresh = second["refresh_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let second_access = second["access_token"].as_str().expect("a token").to_owned();
    assert_ne!(second_refresh, refresh);
    let (status, _, reused) = call(&service, refresh_with(&refresh)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{reused}");
    let (status, _, _) = call(&service, refresh_with(&second_refresh)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the whole sign-in is revoked"
    );

    // A fresh sign-in, then sign out: its refresh token stops working.
    let (_, _, pair) = call(&service, login(ADMIN, PASSWORD)).await;
    let access = pair["access_token"].as_str().expect("a token").to_owned();
    let refresh = pair["refresh_token"].as_str().expect("a token").to_owned();
    let (status, _, _) = call(
        &service,
        bearer(test::TestRequest::post().uri("/v1/auth/logout"), &access),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = call(&service, refresh_with(&refresh)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The access token itself lives out its 15 minutes (it is not a session lookup).
    let (status, _, _) = call(
        &service,
        bearer(test::TestRequest::get().uri("/v1/me"), &access),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let _ = second_access;

    // Guessing is limited: from one address, after 20 attempts, 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..25 {
        let (status, headers, _) = call(&service, login(ADMIN, "wrong guess number x")).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(headers.get("retry-after").is_some());
        }
        statuses.push(status.as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assembled.ledger.close().await;
}

/// Without configured credentials, the first start makes up an admin password; a second start
/// makes none.
async fn first_admin_is_made_up_once(db: &TestDb) {
    let dir = tempfile::tempdir().expect("a directory");
    let config = Config::new("127.0.0.1:0", dir.path()).with_database_url(db.url());
    let store = db.store(Arc::new(credex_store::SystemClock)).await;
    let now = store.clock().now();
    let first = credex_api::auth::bootstrap::ensure_admin(store.as_ref(), &config, now)
        .await
        .expect("bootstrap");
    let (email, password) = first.expect("a made-up admin");
    assert_eq!(email, credex_api::auth::bootstrap::DEFAULT_ADMIN_EMAIL);
    assert!(password.len() >= 24, "{password}");
    let again = credex_api::auth::bootstrap::ensure_admin(store.as_ref(), &config, now)
        .await
        .expect("bootstrap");
    assert!(again.is_none());
    let admin = credex_store::Email::parse(&email).expect("an e-mail");
    let (_, hash) = store
        .user_by_email(&admin)
        .await
        .expect("read")
        .expect("the admin");
    assert!(
        credex_api::auth::password::verify(
            credex_api::config::Secret::new(password),
            Some(hash.as_str().to_owned())
        )
        .await
    );
}

/// Each caller (user or API key) has its own bucket: past it, 429 with Retry-After.
async fn callers_are_limited(db: &TestDb) {
    use credex_api::ratelimit::{Limit, RateLimiter, RateLimits};
    let fixture = common::Fixture::new(db).await;
    let mut parts = fixture.assembled.parts.clone();
    parts.limits = actix_web::web::Data::new(RateLimits {
        per_caller: RateLimiter::new(Limit::new(3, 1), 10),
        ..RateLimits::default()
    });
    let service = test::init_service(app(parts)).await;
    let token = common::sign_in(&service, ADMIN, PASSWORD).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, headers, _) = call(
            &service,
            bearer(test::TestRequest::get().uri("/v1/me"), &token),
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(headers.get("retry-after").is_some());
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    fixture.close().await;
}

credex_tests::on_both_backends!(sessions, first_admin_is_made_up_once, callers_are_limited);
