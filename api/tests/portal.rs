//! The portal's doors, in process, on both backends: sign-in with the API's own check, cookies
//! with the `__Host-` rules, every form refused without its CSRF token (and nothing changed),
//! a wrong password shown plainly, the password changed through the portal, sign-out ending the
//! session at the API. (The browser tests in e2e/ walk the pages themselves.)

mod common;

use actix_web::http::{header, StatusCode};
use actix_web::test;
use common::{bearer, call, sign_in, Fixture, ADMIN, PASSWORD};
use credex_api::startup::app;
use credex_tests::TestDb;

/// The cookies a response sets, as `name=value` pairs, and their attributes checked.
fn cookies<B>(response: &actix_web::dev::ServiceResponse<B>) -> Vec<(String, String)> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .map(|value| {
            let text = value.to_str().expect("ASCII");
            assert!(text.contains("Secure"), "{text}");
            assert!(text.contains("HttpOnly"), "{text}");
            assert!(text.contains("SameSite=Strict"), "{text}");
            assert!(text.contains("Path=/"), "{text}");
            let pair = text.split(';').next().expect("a pair");
            let (name, value) = pair.split_once('=').expect("name=value");
            assert!(name.starts_with("__Host-credex_"), "{name}");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

fn cookie_header(jar: &[(String, String)]) -> String {
    jar.iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn merge(jar: &mut Vec<(String, String)>, set: Vec<(String, String)>) {
    for (name, value) in set {
        jar.retain(|(n, _)| *n != name);
        jar.push((name, value));
    }
}

fn csrf(jar: &[(String, String)]) -> String {
    jar.iter()
        .find(|(name, _)| name == "__Host-credex_csrf")
        .map(|(_, value)| value.clone())
        .expect("a CSRF cookie")
}

async fn body_text<B: actix_web::body::MessageBody>(
    response: actix_web::dev::ServiceResponse<B>,
) -> String {
    let bytes = actix_web::body::to_bytes(response.into_body())
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn form(uri: &str, jar: &[(String, String)], body: &str) -> test::TestRequest {
    test::TestRequest::post()
        .uri(uri)
        .insert_header((header::COOKIE, cookie_header(jar)))
        .insert_header((header::CONTENT_TYPE, "application/x-www-form-urlencoded"))
        .set_payload(body.to_owned())
}

fn page(uri: &str, jar: &[(String, String)]) -> test::TestRequest {
    test::TestRequest::get()
        .uri(uri)
        .insert_header((header::COOKIE, cookie_header(jar)))
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn the_portal_door(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let mut jar = Vec::new();

    // Unsigned, a page sends the browser to sign in, remembering where it was going.
    let response = test::call_service(&service, page("/portal", &jar).to_request()).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers().get(header::LOCATION).expect("Location"),
        "/portal/sign-in?next=/portal"
    );

    // The sign-in page sets the CSRF cookie and repeats it in the form.
    let response = test::call_service(&service, page("/portal/sign-in", &jar).to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    merge(&mut jar, cookies(&response));
    let token = csrf(&jar);
    assert!(body_text(response).await.contains(&token));

    // Without the token (or with another), the form is refused before anything happens.
    let credentials = format!("email={}&password={}", encode(ADMIN), encode(PASSWORD));
    for body in [
        credentials.clone(),
        format!("csrf=forged-token-value-123&{credentials}"),
    ] {
        let response =
            test::call_service(&service, form("/portal/sign-in", &jar, &body).to_request()).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().get(header::SET_COOKIE).is_none());
        assert!(body_text(response).await.contains("Nothing was changed"));
    }

    // A wrong password: the form again, with the API's words, and no session.
    let body = format!(
        "csrf={token}&email={}&password=wrong-password&next=/portal",
        encode(ADMIN)
    );
    let response =
        test::call_service(&service, form("/portal/sign-in", &jar, &body).to_request()).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/html")));
    assert!(body_text(response)
        .await
        .contains("the e-mail address or the password is wrong"));

    // The right one: session cookies, and on to where the browser was going.
    let body = format!("csrf={token}&{credentials}&next=/portal/password");
    let response =
        test::call_service(&service, form("/portal/sign-in", &jar, &body).to_request()).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers().get(header::LOCATION).expect("Location"),
        "/portal/password"
    );
    merge(&mut jar, cookies(&response));
    let response = test::call_service(&service, page("/portal/password", &jar).to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(body_text(response).await.contains(ADMIN));

    // The admin's orgs page lists every org, filtered by the API's list; a bad filter is
    // shown at its field.
    let admin = sign_in(&service, ADMIN, PASSWORD).await;
    for (name, plan) in [("Acme Robotics", "teams"), ("Globex", "free")] {
        let created = call(
            &service,
            bearer(
                test::TestRequest::post()
                    .uri("/v1/admin/orgs")
                    .set_json(serde_json::json!({"name": name, "plan": plan})),
                &admin,
            ),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    }
    let response = test::call_service(
        &service,
        page("/portal/admin/orgs?search=ROBOT&standing=false", &jar).to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_text(response).await;
    assert!(text.contains("Acme Robotics"), "{text}");
    assert!(!text.contains("Globex"), "{text}");
    let response =
        test::call_service(&service, page("/portal/admin/orgs", &jar).to_request()).await;
    let text = body_text(response).await;
    assert!(
        text.contains("Acme Robotics") && text.contains("Globex"),
        "{text}"
    );
    let response = test::call_service(
        &service,
        page("/portal/admin/orgs?on_plan=gold", &jar).to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = body_text(response).await;
    assert!(
        text.contains(r#"id="f-on_plan" name="on_plan" aria-invalid="true""#),
        "{text}"
    );

    // The audit log page reads its list the same way: entries, or a bad filter at its field.
    let response = test::call_service(
        &service,
        page("/portal/admin/audit?action=org.create", &jar).to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_text(response).await;
    assert!(
        text.contains("org.create") && text.contains("Globex"),
        "{text}"
    );
    let response = test::call_service(
        &service,
        page("/portal/admin/audit?since=yesterday", &jar).to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = body_text(response).await;
    assert!(text.contains(r#"aria-invalid="true""#), "{text}");

    // An offsite `next` is not followed.
    let body = format!("csrf={token}&{credentials}&next=//evil.example/");
    let response =
        test::call_service(&service, form("/portal/sign-in", &jar, &body).to_request()).await;
    assert_eq!(
        response.headers().get(header::LOCATION).expect("Location"),
        "/portal"
    );

    // A password change with a wrong current password: the error at its field, nothing changed.
    let new = "a brand new portal password";
    let body = format!(
        "csrf={token}&current_password=not-it&new_password={}",
        encode(new)
    );
    let response =
        test::call_service(&service, form("/portal/password", &jar, &body).to_request()).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let text = body_text(response).await;
    assert!(text.contains("f-current_password-error"), "{text}");
    assert_eq!(
        call(&service, common::login(ADMIN, PASSWORD)).await.status,
        StatusCode::OK
    );

    // The right one: the new password works, the old one does not, the portal stays signed in.
    let body = format!(
        "csrf={token}&current_password={}&new_password={}",
        encode(PASSWORD),
        encode(new)
    );
    let response =
        test::call_service(&service, form("/portal/password", &jar, &body).to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    merge(&mut jar, cookies(&response));
    assert_eq!(
        call(&service, common::login(ADMIN, PASSWORD)).await.status,
        StatusCode::UNAUTHORIZED
    );
    sign_in(&service, ADMIN, new).await;
    let response = test::call_service(&service, page("/portal/password", &jar).to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);

    // Signing out ends the session at the API: the old cookies no longer open a page.
    let signed_in = jar.clone();
    let response = test::call_service(
        &service,
        form("/portal/sign-out", &jar, &format!("csrf={token}")).to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let response =
        test::call_service(&service, page("/portal/password", &signed_in).to_request()).await;
    // The access token (a JWT) lives on for its 15 minutes, but the refresh token is revoked:
    // once the clock passes the access token's life, the page sends the browser to sign in.
    assert_eq!(response.status(), StatusCode::OK);
    fixture.clock.advance_seconds(16 * 60);
    let response =
        test::call_service(&service, page("/portal/password", &signed_in).to_request()).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);

    fixture.close().await;
}

credex_tests::on_both_backends!(the_portal_door);
