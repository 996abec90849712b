//! Delivery of budget alerts and scheduled reports on both backends, for real: e-mail through a
//! real SMTP server (aiosmtpd) or into the outbox directory, and signed posts to a real HTTP
//! receiver. A threshold crossed by usage reaches the owners and the org's webhooks once; a
//! failing receiver is retried on the backoff schedule, across a restart and a dead process's
//! lease, with every attempt logged; a report goes out once per period with its CSV, whatever
//! the processes; bad input is refused with problem details and stores nothing.

mod common;

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::test;
use common::servers::{parse_mime_with_python, Recorded, SmtpServer, WebhookServer, FROM};
use common::{bearer, call, sign_in, Answer, Fixture, ADMIN, NOV_26, PASSWORD};
use credex_api::config::Config;
use credex_api::startup::app;
use credex_ledger::{Clock, Timestamp};
use credex_tests::{on_both_backends, TestDb};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const OWNER: &str = "alice@acme.example";
const SECOND: i64 = 1_000_000;
const DAY: i64 = 86_400 * SECOND;

fn request(method: &str, uri: &str, token: &str, body: Option<Value>) -> test::TestRequest {
    let request = match method {
        "GET" => test::TestRequest::get(),
        "POST" => test::TestRequest::post(),
        "PUT" => test::TestRequest::put(),
        "DELETE" => test::TestRequest::delete(),
        other => panic!("{other}"),
    }
    .uri(uri);
    let request = bearer(request, token);
    match body {
        Some(body) => request.set_json(body),
        None => request,
    }
}

fn expect(answer: &Answer, status: StatusCode, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
}

fn expect_problem(answer: &Answer, what: &str) {
    expect(answer, StatusCode::UNPROCESSABLE_ENTITY, what);
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{what}"
    );
}

/// Acme (enterprise) with its owner Alice, a member Bob and 5 CR; answers (org, Alice's token).
async fn acme<S, B>(service: &S) -> (String, String)
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody + 'static,
{
    let admin = sign_in(service, ADMIN, PASSWORD).await;
    let made = call(
        service,
        request(
            "POST",
            "/v1/admin/orgs",
            &admin,
            Some(json!({"name": "Acme", "plan": "enterprise"})),
        ),
    )
    .await;
    expect(&made, StatusCode::CREATED, "an org");
    let org = made.body["id"].as_str().expect("an id").to_owned();
    for (email, role) in [(OWNER, "owner"), ("bob@acme.example", "member")] {
        let user = json!({"email": email, "password": PASSWORD, "org_id": org, "role": role});
        let made = call(
            service,
            request("POST", "/v1/admin/users", &admin, Some(user)),
        )
        .await;
        expect(&made, StatusCode::CREATED, "a user");
    }
    let credit = call(
        service,
        request(
            "POST",
            &format!("/v1/admin/orgs/{org}/credits"),
            &admin,
            Some(json!({"kind": "top_up", "amount_micro_cr": 5_000_000, "reason": "invoice"})),
        )
        .insert_header(("Idempotency-Key", "acme-top-up")),
    )
    .await;
    expect(&credit, StatusCode::CREATED, "credits");
    let alice = sign_in(service, OWNER, PASSWORD).await;
    (org, alice)
}

/// Records a call of `input_tokens` of gpt-6-sol now ($2 per 1M input tokens up to 200,000).
async fn spend<S, B>(service: &S, org: &str, token: &str, id: &str, input_tokens: u64)
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody + 'static,
{
    let batch = json!({"events": [{"id": id, "model": "gpt-6-sol",
        "input_tokens": input_tokens, "output_tokens": 0}]});
    let answer = call(
        service,
        request("POST", &format!("/v1/orgs/{org}/usage"), token, Some(batch)),
    )
    .await;
    expect(&answer, StatusCode::CREATED, "usage");
}

/// A monthly budget "Team" of 0.5 CR for the whole org, alerting at 50 % and 100 %.
async fn budget<S, B>(service: &S, org: &str, token: &str)
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody + 'static,
{
    let made = call(
        service,
        request(
            "POST",
            &format!("/v1/orgs/{org}/budgets"),
            token,
            Some(
                json!({"name": "Team", "scope": {"kind": "org"}, "period": "month",
                "limit_micro_cr": 500_000, "thresholds": [50, 100]}),
            ),
        ),
    )
    .await;
    expect(&made, StatusCode::CREATED, "a budget");
}

/// Registers a webhook to `url`; answers (its id, its secret).
async fn webhook<S, B>(service: &S, org: &str, token: &str, url: &str) -> (String, String)
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody + 'static,
{
    let made = call(
        service,
        request(
            "POST",
            &format!("/v1/orgs/{org}/webhooks"),
            token,
            Some(json!({"url": url, "description": "ops pager"})),
        ),
    )
    .await;
    expect(&made, StatusCode::CREATED, "a webhook");
    let id = made.body["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        made.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/orgs/{org}/webhooks/{id}").as_str())
    );
    let secret = made.body["secret"].as_str().expect("the secret, once");
    assert!(
        secret.starts_with("whsec_") && secret.len() == 70,
        "{secret}"
    );
    (id, secret.to_owned())
}

/// Checks the post's signature as a receiver would (module docs of `notify`); answers its body.
fn verified(post: &Recorded, secret: &str, event_id: &str) -> Value {
    assert_eq!(post.method, "POST");
    assert_eq!(post.header("content-type"), "application/json");
    assert_eq!(post.header("credex-event-id"), event_id);
    let signature = post.header("credex-signature");
    let (t, v1) = signature
        .split_once(',')
        .and_then(|(t, v1)| Some((t.strip_prefix("t=")?, v1.strip_prefix("v1=")?)))
        .unwrap_or_else(|| panic!("a signature t=…,v1=…: {signature}"));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("a key");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&post.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected, "the HMAC-SHA256 of t.body with the secret");
    serde_json::from_slice(&post.body).expect("a JSON body")
}

/// The newest delivery of a log.
async fn first_delivery<S, B>(service: &S, log: &str, token: &str) -> Value
where
    S: actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    B: actix_web::body::MessageBody + 'static,
{
    let answer = call(service, request("GET", log, token, None)).await;
    expect(&answer, StatusCode::OK, "the log");
    answer.body["deliveries"][0].clone()
}

fn at(answer: &Value) -> Timestamp {
    let text = answer.as_str().expect("an instant");
    let parsed: jiff::Timestamp = text.parse().expect("RFC 3339");
    Timestamp::from_micros(parsed.as_microsecond())
}

async fn alerts_reach_owners_by_email_and_webhooks_signed(db: &TestDb) {
    let smtp = SmtpServer::start();
    let hooks = WebhookServer::start();
    let port = smtp.port;
    let fixture = Fixture::configured(db, |config| {
        config.smtp = Some(("127.0.0.1".to_owned(), port, FROM.to_owned()));
        config.mail_from = FROM.to_owned();
        config.webhooks_allow_private = true;
    })
    .await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let delivery = fixture.assembled.delivery.clone();
    let (org, alice) = acme(&service).await;
    budget(&service, &org, &alice).await;
    let (hook, secret) = webhook(&service, &org, &alice, &hooks.url("/credex")).await;
    // A second webhook for budget alerts only, and the list shows both without secrets.
    let made = call(
        &service,
        request(
            "POST",
            &format!("/v1/orgs/{org}/webhooks"),
            &alice,
            Some(json!({"url": hooks.url("/other"), "events": ["budget_alert.crossed"]})),
        ),
    )
    .await;
    expect(&made, StatusCode::CREATED, "a second webhook");
    let listed = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{org}/webhooks?limit=1"),
            &alice,
            None,
        ),
    )
    .await;
    expect(&listed, StatusCode::OK, "the first page");
    assert_eq!(listed.body["webhooks"][0]["id"], hook.as_str());
    assert!(listed.body["webhooks"][0].get("secret").is_none());
    let next = listed.body["next"].as_str().expect("a next page");
    let page = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{org}/webhooks?limit=1&after={next}"),
            &alice,
            None,
        ),
    )
    .await;
    assert_eq!(
        page.body["webhooks"][0]["events"],
        json!(["budget_alert.crossed"])
    );

    // 0.3 CR of a 0.5 CR budget: the 50 % threshold is crossed, once.
    spend(
        &service,
        &org,
        &alice,
        "0193a000-0000-7000-8000-000000000001",
        150_000,
    )
    .await;
    let alerts = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{org}/budget-alerts"),
            &alice,
            None,
        ),
    )
    .await;
    let alert = alerts.body[0]["id"].as_str().expect("an alert").to_owned();
    assert_eq!(alerts.body[0]["threshold"], 50, "{}", alerts.body);

    let report = delivery.run().await.expect("a pass");
    assert_eq!(
        (
            report.dispatched,
            report.delivered,
            report.retried,
            report.failed
        ),
        (1, 3, 0, 0),
        "{report:?}"
    );
    let messages = smtp.wait_for_messages(1, Duration::from_secs(10)).await;
    let mail = &messages[0];
    assert_eq!(mail["headers"]["To"], OWNER);
    assert_eq!(mail["headers"]["From"], FROM);
    let subject = mail["headers"]["Subject"].as_str().expect("a subject");
    assert!(subject.contains("Team reached 50%"), "{subject}");
    let text = mail["text"].as_str().expect("a text");
    assert!(
        text.contains("0.300000 CR of its 0.500000 CR limit") && text.contains(&alert),
        "{text}"
    );
    assert_eq!(mail["defects"], json!([]));

    let posts = hooks.wait_for_requests(2, Duration::from_secs(10)).await;
    let post = posts
        .iter()
        .find(|post| post.path == "/credex")
        .expect("a post");
    let body = verified(post, &secret, &alert);
    assert_eq!(body["type"], "budget_alert.crossed");
    assert_eq!(body["org_id"], org.as_str());
    assert_eq!(body["threshold_percent"], 50);
    assert_eq!(body["spent_micro_cr"], 300_000);
    assert_eq!(body["budget_name"], "Team");

    // Another pass dispatches and sends nothing more.
    let again = delivery.run().await.expect("a pass");
    assert_eq!((again.dispatched, again.delivered), (0, 0));
    assert_eq!(smtp.files().len(), 1);
    assert_eq!(hooks.recorded().len(), 2);

    // The log: every delivery with its one attempt, the SMTP server's and receiver's answers.
    let log = call(
        &service,
        request("GET", &format!("/v1/orgs/{org}/deliveries"), &alice, None),
    )
    .await;
    expect(&log, StatusCode::OK, "the log");
    let deliveries = log.body["deliveries"].as_array().expect("a list");
    assert_eq!(deliveries.len(), 3, "{}", log.body);
    for delivery in deliveries {
        assert_eq!(delivery["state"], "delivered", "{delivery}");
        assert_eq!(delivery["event_id"], alert.as_str());
        assert_eq!(delivery["attempts"], 1);
        let attempt = &delivery["log"][0];
        assert_eq!(attempt["outcome"], "delivered");
        let status = if delivery["channel"] == "email" {
            250
        } else {
            204
        };
        assert_eq!(attempt["status"], status, "{delivery}");
    }
    let email = deliveries
        .iter()
        .find(|d| d["channel"] == "email")
        .expect("an e-mail");
    assert_eq!(email["target"], OWNER);
    let mine = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{org}/webhooks/{hook}/deliveries?state=delivered"),
            &alice,
            None,
        ),
    )
    .await;
    expect(&mine, StatusCode::OK, "the webhook's log");
    assert_eq!(mine.body["deliveries"].as_array().map(Vec::len), Some(1));
    assert_eq!(mine.body["deliveries"][0]["webhook_id"], hook.as_str());
    let pending = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{org}/deliveries?state=pending"),
            &alice,
            None,
        ),
    )
    .await;
    assert_eq!(pending.body["deliveries"], json!([]));

    let response = test::call_service(
        &service,
        test::TestRequest::get()
            .uri("/metrics")
            .peer_addr("198.51.100.9:40000".parse().expect("an address"))
            .to_request(),
    )
    .await;
    let text = String::from_utf8(test::read_body(response).await.to_vec()).expect("UTF-8");
    for line in [
        "credex_email_deliveries_total{outcome=\"delivered\"} 1",
        "credex_webhook_deliveries_total{outcome=\"delivered\"} 2",
        "credex_budget_alerts_total 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }

    // A deleted webhook answers 404 and receives nothing more; Bob (a member) cannot delete.
    let path = format!("/v1/orgs/{org}/webhooks/{hook}");
    let bob = sign_in(&service, "bob@acme.example", PASSWORD).await;
    let refused = call(&service, request("DELETE", &path, &bob, None)).await;
    expect(&refused, StatusCode::FORBIDDEN, "a member deletes");
    let deleted = call(&service, request("DELETE", &path, &alice, None)).await;
    expect(&deleted, StatusCode::NO_CONTENT, "deleted");
    let gone = call(&service, request("GET", &path, &alice, None)).await;
    expect(&gone, StatusCode::NOT_FOUND, "gone");
    spend(
        &service,
        &org,
        &alice,
        "0193a000-0000-7000-8000-000000000002",
        125_000,
    )
    .await;
    let report = delivery.run().await.expect("a pass");
    assert_eq!((report.dispatched, report.delivered), (1, 2), "{report:?}");
    let posts = hooks.wait_for_requests(3, Duration::from_secs(10)).await;
    assert!(posts.iter().filter(|post| post.path == "/credex").count() == 1);
    fixture.close().await;
}

fn outbox_config(outbox: &std::path::Path) -> impl FnOnce(&mut Config) + '_ {
    move |config: &mut Config| {
        config.outbox_dir = outbox.to_path_buf();
        config.webhooks_allow_private = true;
    }
}

async fn a_failing_receiver_is_retried_across_a_restart(db: &TestDb) {
    let hooks = WebhookServer::start();
    let outbox = tempfile::tempdir().expect("a directory");
    let first = Fixture::configured(db, outbox_config(outbox.path())).await;
    let service = test::init_service(app(first.assembled.parts.clone())).await;
    let (org, alice) = acme(&service).await;
    budget(&service, &org, &alice).await;
    // The receiver fails its first three requests.
    let (hook, secret) = webhook(&service, &org, &alice, &hooks.url("/flaky/3")).await;
    spend(
        &service,
        &org,
        &alice,
        "0193a000-0000-7000-8000-000000000011",
        150_000,
    )
    .await;
    let t0 = first.clock.now();

    // Without SMTP the e-mail lands in the outbox, delivered; the post fails and waits 30 s.
    let report = first.assembled.delivery.run().await.expect("a pass");
    assert_eq!(
        (report.dispatched, report.delivered, report.retried),
        (1, 1, 1),
        "{report:?}"
    );
    let files: Vec<_> = std::fs::read_dir(outbox.path())
        .expect("the outbox")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("eml"));
    let mail = parse_mime_with_python(&files[0]);
    assert_eq!(mail["headers"]["To"], OWNER);
    assert!(mail["headers"]["Subject"]
        .as_str()
        .is_some_and(|s| s.contains("reached 50%")));
    assert!(mail["date_parses"].as_bool().unwrap_or(false));
    assert_eq!(mail["defects"], json!([]));
    let log = format!("/v1/orgs/{org}/webhooks/{hook}/deliveries");
    let pending = first_delivery(&service, &log, &alice).await;
    assert_eq!(pending["state"], "pending", "{pending}");
    assert_eq!(at(&pending["next_attempt_at"]), t0.plus_micros(30 * SECOND));
    let email = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{org}/deliveries?state=delivered"),
            &alice,
            None,
        ),
    )
    .await;
    let detail = email.body["deliveries"][0]["log"][0]["detail"]
        .as_str()
        .expect("where it went");
    assert!(detail.contains("outbox"), "{detail}");

    // Not due yet: nothing is tried. 30 s on: the second attempt fails, and waits 60 s.
    let idle = first.assembled.delivery.run().await.expect("a pass");
    assert_eq!(idle.retried, 0);
    first.clock.set(t0.plus_micros(30 * SECOND));
    let report = first.assembled.delivery.run().await.expect("a pass");
    assert_eq!(report.retried, 1, "{report:?}");

    // A process claims the delivery when it is due and dies mid-attempt: its lease (2 min)
    // holds the delivery, then runs out.
    let due = t0.plus_micros(90 * SECOND);
    first.clock.set(due);
    let claimed = first
        .assembled
        .store
        .claim_deliveries(due, due.plus_micros(120 * SECOND), uuid::Uuid::new_v4(), 10)
        .await
        .expect("a claim");
    assert_eq!(claimed.len(), 1);
    drop(service);
    first.close().await;

    // The restart: a new process on the same database.
    let second = Fixture::configured(db, outbox_config(outbox.path())).await;
    let service = test::init_service(app(second.assembled.parts.clone())).await;
    second.clock.set(due);
    let report = second.assembled.delivery.run().await.expect("a pass");
    assert_eq!(report.retried + report.delivered, 0, "leased: {report:?}");
    second.clock.set(due.plus_micros(120 * SECOND));
    let report = second.assembled.delivery.run().await.expect("a pass");
    assert_eq!(report.retried, 1, "the third attempt fails: {report:?}");
    second.clock.set(due.plus_micros(240 * SECOND));
    let report = second.assembled.delivery.run().await.expect("a pass");
    assert_eq!(report.delivered, 1, "the fourth attempt lands: {report:?}");

    let delivered = first_delivery(&service, &log, &alice).await;
    assert_eq!(delivered["state"], "delivered", "{delivered}");
    assert_eq!(delivered["attempts"], 4);
    assert_eq!(delivered["last_error"], Value::Null);
    let attempts = delivered["log"].as_array().expect("the log");
    let outcomes: Vec<&str> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().expect("an outcome"))
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "retry", "delivered"]);
    let statuses: Vec<i64> = attempts
        .iter()
        .map(|a| a["status"].as_i64().expect("a status"))
        .collect();
    assert_eq!(statuses, [500, 500, 500, 204]);
    let started: Vec<Timestamp> = attempts.iter().map(|a| at(&a["started_at"])).collect();
    assert_eq!(
        started,
        [
            t0,
            t0.plus_micros(30 * SECOND),
            due.plus_micros(120 * SECOND),
            due.plus_micros(240 * SECOND)
        ]
    );
    assert!(attempts[0]["detail"]
        .as_str()
        .is_some_and(|d| d.contains("HTTP 500")));
    // Four requests reached the receiver (the dead process's attempt never did), every one
    // signed for the same event.
    let posts = hooks.recorded();
    assert_eq!(posts.len(), 4);
    let alert = delivered["event_id"].as_str().expect("the event");
    for post in &posts {
        verified(post, &secret, alert);
    }
    second.close().await;
}

async fn reports_go_out_once_per_period_with_their_csv(db: &TestDb) {
    let smtp = SmtpServer::start();
    let port = smtp.port;
    let relay = move |config: &mut Config| {
        config.smtp = Some(("127.0.0.1".to_owned(), port, FROM.to_owned()));
        config.mail_from = FROM.to_owned();
    };
    let first = Fixture::configured(db, relay).await;
    let service = test::init_service(app(first.assembled.parts.clone())).await;
    let (org, alice) = acme(&service).await;
    let path = format!("/v1/orgs/{org}/reports/daily");
    let put = call(
        &service,
        request(
            "PUT",
            &path,
            &alice,
            Some(
                json!({"recipients": ["ops@acme.example", "cfo@acme.example",
                "ops@acme.example"]}),
            ),
        ),
    )
    .await;
    expect(&put, StatusCode::CREATED, "a subscription");
    assert_eq!(
        put.body["recipients"],
        json!(["ops@acme.example", "cfo@acme.example"])
    );
    assert_eq!(at(&put.body["next_report_at"]), NOV_26.plus_micros(DAY));
    let again = call(
        &service,
        request(
            "PUT",
            &path,
            &alice,
            Some(
                json!({"recipients": ["ops@acme.example", "cfo@acme.example"],
                "time_zone": "UTC"}),
            ),
        ),
    )
    .await;
    expect(&again, StatusCode::OK, "replaced");
    let read = call(&service, request("GET", &path, &alice, None)).await;
    expect(&read, StatusCode::OK, "read");
    assert_eq!(read.body["time_zone"], "UTC");

    // Two calls on the 26th (0.55 CR): nothing is due until the day ends.
    first.clock.set(NOV_26.plus_micros(600 * SECOND));
    spend(
        &service,
        &org,
        &alice,
        "0193a000-0000-7000-8000-000000000021",
        150_000,
    )
    .await;
    spend(
        &service,
        &org,
        &alice,
        "0193a000-0000-7000-8000-000000000022",
        125_000,
    )
    .await;
    let report = first.assembled.delivery.run().await.expect("a pass");
    assert_eq!(report.reports, 0);

    first.clock.set(NOV_26.plus_micros(DAY + 5 * SECOND));
    let report = first.assembled.delivery.run().await.expect("a pass");
    assert_eq!((report.reports, report.delivered), (1, 2), "{report:?}");
    let mut recipients = Vec::new();
    for file in smtp.wait_for_files(2, Duration::from_secs(10)).await {
        let mail = parse_mime_with_python(&file);
        assert_eq!(mail["content_type"], "multipart/mixed");
        assert_eq!(mail["defects"], json!([]));
        recipients.push(mail["headers"]["To"].as_str().expect("To").to_owned());
        let subject = mail["headers"]["Subject"].as_str().expect("a subject");
        assert_eq!(subject, "Credex daily report for Acme: 2026-11-26");
        let text = mail["text"].as_str().expect("a summary");
        for part in [
            "Total cost: 0.550000 CR (550000 µCR)",
            "Calls: 2",
            "Tokens: 275000 input",
            "gpt-6-sol: 0.550000 CR, 2 calls",
            "2026-11-26T00:00:00Z to 2026-11-27T00:00:00Z",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        let attachment = &mail["attachments"][0];
        assert_eq!(attachment["filename"], "usage.csv");
        assert_eq!(attachment["content_type"], "text/csv");
        let csv = attachment["content"].as_str().expect("the CSV");
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        assert!(lines[0].starts_with("id,occurred_at,"));
        assert!(lines[1].starts_with("0193a000-0000-7000-8000-000000000021,"));
        assert!(lines[2].starts_with("0193a000-0000-7000-8000-000000000022,"));
    }
    recipients.sort();
    assert_eq!(recipients, ["cfo@acme.example", "ops@acme.example"]);

    // Later passes, and another process on the same database, send that day's report no more.
    let second = Fixture::configured(db, relay).await;
    second.clock.set(NOV_26.plus_micros(DAY + 60 * SECOND));
    first.clock.set(NOV_26.plus_micros(DAY + 60 * SECOND));
    let report = first.assembled.delivery.run().await.expect("a pass");
    assert_eq!(report.reports, 0);
    let report = second.assembled.delivery.run().await.expect("a pass");
    assert_eq!(report.reports, 0);

    // The next day's report, found due by both processes at once: queued once.
    let next_day = NOV_26.plus_micros(2 * DAY + 5 * SECOND);
    first.clock.set(next_day);
    second.clock.set(next_day);
    let (a, b) = tokio::join!(
        first.assembled.delivery.enqueue_reports(),
        second.assembled.delivery.enqueue_reports()
    );
    assert_eq!(a.expect("a") + b.expect("b"), 1);
    let report = second.assembled.delivery.run().await.expect("a pass");
    assert_eq!(report.delivered, 2, "{report:?}");
    let files = smtp.wait_for_files(4, Duration::from_secs(10)).await;
    assert_eq!(files.len(), 4);
    let alice = sign_in(&service, OWNER, PASSWORD).await;
    let log = call(
        &service,
        request("GET", &format!("/v1/orgs/{org}/deliveries"), &alice, None),
    )
    .await;
    let types: Vec<&str> = log.body["deliveries"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|d| d["event_type"].as_str().expect("a type"))
        .collect();
    assert_eq!(types, ["report.daily"; 4]);

    let ended = call(&service, request("DELETE", &path, &alice, None)).await;
    expect(&ended, StatusCode::NO_CONTENT, "unsubscribed");
    let gone = call(&service, request("GET", &path, &alice, None)).await;
    expect(&gone, StatusCode::NOT_FOUND, "gone");
    first.clock.set(NOV_26.plus_micros(3 * DAY + 5 * SECOND));
    let report = first.assembled.delivery.run().await.expect("a pass");
    assert_eq!(report.reports, 0);
    second.close().await;
    first.close().await;
}

async fn bad_input_is_refused_and_nothing_is_stored(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let (org, alice) = acme(&service).await;
    let hooks = format!("/v1/orgs/{org}/webhooks");
    for (body, what) in [
        (json!({"url": "https://hooks.example.com/"}), "https"),
        (
            json!({"url": "http://127.0.0.1:9/hook"}),
            "a loopback address",
        ),
        (json!({"url": "http://10.0.0.7/hook"}), "a private address"),
        (json!({"url": "http://localhost/hook"}), "localhost"),
        (json!({"url": "ftp://hooks.example.com/"}), "another scheme"),
        (
            json!({"url": format!("http://hooks.example.com/{}", "a".repeat(2_100))}),
            "a long URL",
        ),
        (
            json!({"url": "http://hooks.example.com/", "description": "a\u{7}b"}),
            "a control character",
        ),
        (
            json!({"url": "http://hooks.example.com/", "events": []}),
            "no event types",
        ),
    ] {
        let answer = call(&service, request("POST", &hooks, &alice, Some(body))).await;
        expect_problem(&answer, what);
    }
    let unknown = call(
        &service,
        request(
            "POST",
            &hooks,
            &alice,
            Some(json!({"url": "http://hooks.example.com/", "events": ["usage.recorded"]})),
        ),
    )
    .await;
    expect(&unknown, StatusCode::BAD_REQUEST, "an unknown event type");
    let listed = call(&service, request("GET", &hooks, &alice, None)).await;
    assert_eq!(listed.body["webhooks"], json!([]), "nothing stored");

    let eleven: Vec<String> = (0..11).map(|i| format!("r{i}@acme.example")).collect();
    for (path, body, what) in [
        (
            "hourly",
            json!({"recipients": ["ops@acme.example"]}),
            "an unknown frequency",
        ),
        (
            "daily",
            json!({"recipients": eleven}),
            "too many recipients",
        ),
        ("daily", json!({"recipients": []}), "no recipients"),
        (
            "daily",
            json!({"recipients": ["ops at acme"]}),
            "not an address",
        ),
        (
            "daily",
            json!({"recipients": ["\"o\"@acme.example"]}),
            "a quoted address",
        ),
        (
            "weekly",
            json!({"recipients": ["ops@acme.example"], "time_zone": "Mars/Olympus"}),
            "an unknown time zone",
        ),
    ] {
        let uri = format!("/v1/orgs/{org}/reports/{path}");
        let answer = call(&service, request("PUT", &uri, &alice, Some(body))).await;
        expect_problem(&answer, what);
    }
    for frequency in ["daily", "weekly", "monthly", "hourly"] {
        let uri = format!("/v1/orgs/{org}/reports/{frequency}");
        let answer = call(&service, request("GET", &uri, &alice, None)).await;
        expect(&answer, StatusCode::NOT_FOUND, "nothing stored");
    }
    let bad_cursor = call(
        &service,
        request(
            "GET",
            &format!("/v1/orgs/{org}/deliveries?after=yesterday"),
            &alice,
            None,
        ),
    )
    .await;
    expect_problem(&bad_cursor, "a bad cursor");
    fixture.close().await;
}

/// `credex serve` runs the delivery job: an alert recorded while no server ran is e-mailed
/// through the relay of `CREDEX_SMTP_URL` and posted to the webhook once a server starts.
async fn credex_serve_delivers_what_is_queued(db: &TestDb) {
    let smtp = SmtpServer::start();
    let hooks = WebhookServer::start();
    let fixture = Fixture::new(db).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let (org, alice) = acme(&service).await;
    budget(&service, &org, &alice).await;
    let made = call(
        &service,
        request(
            "POST",
            &format!("/v1/orgs/{org}/webhooks"),
            &alice,
            Some(json!({"url": hooks.url("/serve")})),
        ),
    )
    .await;
    // The fixture refuses loopback URLs: the hook is registered by the store directly.
    expect_problem(&made, "a loopback URL without webhooks_allow_private");
    let store = fixture.assembled.store.clone();
    let org_id = credex_ledger::OrgId::parse(&org).expect("an org id");
    store
        .create_webhook(
            &credex_store::WebhookRecord {
                id: uuid::Uuid::now_v7(),
                org: org_id,
                url: hooks.url("/serve"),
                secret: "whsec_test".to_owned(),
                description: String::new(),
                events: Vec::new(),
                created_at: fixture.clock.now(),
                deleted_at: None,
            },
            &credex_tests::audit("webhooks.create"),
        )
        .await
        .expect("a webhook");
    spend(
        &service,
        &org,
        &alice,
        "0193a000-0000-7000-8000-000000000031",
        150_000,
    )
    .await;
    drop(service);
    fixture.close().await;

    let relay = format!("smtp://127.0.0.1:{}", smtp.port);
    let mut server = common::process::Server::spawn_with(
        db.url(),
        &[
            ("CREDEX_SMTP_URL", relay.as_str()),
            ("CREDEX_SMTP_FROM", FROM),
            ("CREDEX_WEBHOOKS_ALLOW_PRIVATE", "true"),
        ],
    );
    server.wait_port();
    let messages = smtp.wait_for_messages(1, Duration::from_secs(30)).await;
    assert_eq!(messages[0]["headers"]["To"], OWNER);
    let posts = hooks.wait_for_requests(1, Duration::from_secs(30)).await;
    let body = verified(&posts[0], "whsec_test", posts[0].header("credex-event-id"));
    assert_eq!(body["threshold_percent"], 50);
    server.assert_running();
    server.sigterm();
    let status = server.wait_stopped();
    assert!(status.success(), "exited with {status}:\n{}", server.log());
}

/// A budget or webhook created with an `Idempotency-Key` is created once: a retry answers the
/// first answer (the same id, and for a webhook the same secret), the key with another body is
/// refused, and a malformed key is refused before anything is stored.
async fn creations_with_a_key_happen_once(db: &TestDb) {
    let fixture = Fixture::new(db).await;
    let service = test::init_service(app(fixture.assembled.parts.clone())).await;
    let (org, alice) = acme(&service).await;
    let budgets = format!("/v1/orgs/{org}/budgets");
    let hooks = format!("/v1/orgs/{org}/webhooks");
    let team = json!({"name": "Team", "scope": {"kind": "org"}, "period": "month",
        "limit_micro_cr": 500_000, "thresholds": [50, 100]});
    let hook = json!({"url": "http://hooks.example.com/credex", "description": "ops pager"});
    let keyed = |uri: &str, body: &Value, key: &str| {
        request("POST", uri, &alice, Some(body.clone())).insert_header(("Idempotency-Key", key))
    };
    // An org's keys are one namespace: each creation here has its own.
    for (uri, body, list, key) in [
        (&budgets, &team, None, "budget-once"),
        (&hooks, &hook, Some("/webhooks"), "webhook-once"),
    ] {
        let first = call(&service, keyed(uri, body, key)).await;
        expect(&first, StatusCode::CREATED, uri);
        assert!(!first.headers.contains_key("idempotent-replayed"));
        let again = call(&service, keyed(uri, body, key)).await;
        expect(&again, StatusCode::CREATED, uri);
        assert_eq!(
            again
                .headers
                .get("idempotent-replayed")
                .and_then(|v| v.to_str().ok()),
            Some("true")
        );
        assert_eq!(again.body, first.body, "the first answer, secret and all");
        assert_eq!(again.headers.get("location"), first.headers.get("location"));
        let mut other = body.clone();
        let field = if list.is_some() {
            "description"
        } else {
            "name"
        };
        other[field] = json!("Other");
        let reused = call(&service, keyed(uri, &other, key)).await;
        expect_problem(&reused, "the key with another body");
        for bad in ["", "with space", &"k".repeat(256)] {
            let refused = call(&service, keyed(uri, body, bad)).await;
            expect(&refused, StatusCode::BAD_REQUEST, "a malformed key");
        }
        // Without a key, each request creates.
        let plain = call(&service, request("POST", uri, &alice, Some(body.clone()))).await;
        expect(&plain, StatusCode::CREATED, uri);
        assert_ne!(plain.body["id"], first.body["id"]);
        let listed = call(&service, request("GET", uri, &alice, None)).await;
        expect(&listed, StatusCode::OK, uri);
        let items = match list {
            Some(_) => listed.body["webhooks"].clone(),
            None => listed.body.clone(),
        };
        let ids: Vec<&Value> = items
            .as_array()
            .unwrap_or_else(|| panic!("a list: {}", listed.body))
            .iter()
            .map(|item| &item["id"])
            .collect();
        assert_eq!(
            ids,
            [&first.body["id"], &plain.body["id"]],
            "{uri}: two, not six"
        );
    }
    fixture.close().await;
}

on_both_backends!(
    creations_with_a_key_happen_once,
    credex_serve_delivers_what_is_queued,
    alerts_reach_owners_by_email_and_webhooks_signed,
    a_failing_receiver_is_retried_across_a_restart,
    reports_go_out_once_per_period_with_their_csv,
    bad_input_is_refused_and_nothing_is_stored,
);
