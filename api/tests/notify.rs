//! Notification delivery against real servers: e-mail to aiosmtpd (a real SMTP server, from the
//! project's Python venv) whose maildir is then read back and parsed by Python's `email`
//! package; webhooks to a real actix-web server that records what it parsed. The servers are
//! in `common::servers`.
//!
//! The venv's Python is `CREDEX_TEST_PYTHON`, or `<workspace>/.venv/bin/python` (`.ci/run`
//! installs aiosmtpd there). Without it these tests fail; they never skip.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::servers::{free_port, parse_with_python, SmtpServer, WebhookServer, FROM};
use credex_api::notify::{Mailer, MailerConfig, NotifyError, Step, Webhooks, WebhooksConfig};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

const TO: &str = "ops@org.example";

// ---------------------------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_email_arrives_intact() {
    let server = SmtpServer::start();
    let mailer = server.mailer(Duration::from_secs(10));
    let subject = "Price alert: TOK.pro.2025-06 below 1200";
    let text = "The price fell below your level.\r\n\
                .starts with a dot\n\
                ..two dots\n\
                .\n\
                Zürich — 5 € ✓ 価格\n\
                last line";
    mailer.send(TO, subject, text).await.expect("sent");

    let files = server.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let raw = std::fs::read(&files[0]).expect("the message");
    let raw = String::from_utf8(raw).expect("UTF-8 (8bit body)");
    // The maildir stores what arrived, dot-unstuffed, with the system's line endings.
    assert!(raw.contains(&format!("\nSubject: {subject}\n")), "{raw}");
    assert!(raw.contains("\nContent-Transfer-Encoding: 8bit\n"), "{raw}");
    assert!(
        raw.contains("\n.starts with a dot\n..two dots\n.\nZürich — 5 € ✓ 価格\nlast line"),
        "{raw}"
    );
    assert!(!raw.contains("\n...two dots"), "{raw}");

    let parsed = parse_with_python(&files[0]);
    let headers = &parsed["headers"];
    assert_eq!(headers["From"], FROM);
    assert_eq!(headers["To"], TO);
    assert_eq!(headers["Subject"], subject);
    assert_eq!(headers["MIME-Version"], "1.0");
    // aiosmtpd records the envelope.
    assert_eq!(headers["X-MailFrom"], FROM);
    assert_eq!(headers["X-RcptTo"], TO);
    let message_id = headers["Message-ID"].as_str().expect("a Message-ID");
    assert!(
        message_id.starts_with('<') && message_id.ends_with("@credex.example>"),
        "{message_id}"
    );
    assert_eq!(parsed["date_parses"], true);
    assert_eq!(parsed["content_type"], "text/plain");
    assert_eq!(parsed["charset"], "utf-8");
    assert_eq!(parsed["defects"], json!([]));
    let expected = "The price fell below your level.\n.starts with a dot\n..two dots\n.\n\
                    Zürich — 5 € ✓ 価格\nlast line\n";
    assert_eq!(parsed["text"], expected);
}

#[tokio::test]
async fn a_unicode_subject_and_a_long_line_are_encoded() {
    let server = SmtpServer::start();
    let mailer = server.mailer(Duration::from_secs(10));
    let subject = "Preisalarm: TOK.pro unter 12 € — Zürich, São Paulo, 東京 und mehr Märkte =?";
    let long_line = format!(".{}é {}", "x".repeat(1500), "y".repeat(10));
    let text = format!("first\n{long_line}\nlast =\n");
    mailer.send(TO, subject, &text).await.expect("sent");

    let files = server.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let raw = std::fs::read_to_string(&files[0]).expect("an ASCII message");
    assert!(raw.is_ascii(), "{raw}");
    assert!(raw.contains("\nSubject: =?utf-8?B?"), "{raw}");
    assert!(
        raw.contains("\nContent-Transfer-Encoding: quoted-printable\n"),
        "{raw}"
    );
    let parsed = parse_with_python(&files[0]);
    assert_eq!(parsed["headers"]["Subject"], subject);
    assert_eq!(parsed["cte"], "quoted-printable");
    assert_eq!(parsed["text"], text);
    assert_eq!(parsed["defects"], json!([]));
}

#[tokio::test]
async fn header_injection_is_refused_before_connecting() {
    // A real listener that must see no connection.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let mailer = Mailer::new(MailerConfig {
        host: "127.0.0.1".to_owned(),
        port: listener.local_addr().expect("address").port(),
        from: FROM.to_owned(),
        timeout: Duration::from_secs(5),
    })
    .expect("a mailer");
    let refused = [
        (TO, "Alert\r\nBcc: everyone@example.com", "subject"),
        (TO, "Alert\nBcc: everyone@example.com", "subject"),
        (TO, "Alert\rX: y", "subject"),
        ("ops@org.example\r\nRCPT TO:<x@evil.example>", "Alert", "to"),
        ("Ops <ops@org.example>", "Alert", "to"),
        ("ops@org.example>", "Alert", "to"),
    ];
    for (to, subject, field) in refused {
        let error = mailer.send(to, subject, "body").await.expect_err(subject);
        assert!(
            matches!(error, NotifyError::Invalid { field: f, .. } if f == field),
            "{to:?} {subject:?}: {error:?}"
        );
    }
    let text = "a NUL \0 here";
    let error = mailer.send(TO, "Alert", text).await.expect_err("NUL");
    assert!(matches!(error, NotifyError::Invalid { field: "text", .. }));
    let bad_from = Mailer::new(MailerConfig {
        host: "127.0.0.1".to_owned(),
        port: 25,
        from: "alerts@credex.example\r\nBcc: x@y.z".to_owned(),
        timeout: Duration::from_secs(5),
    });
    assert!(matches!(
        bad_from,
        Err(NotifyError::Invalid { field: "from", .. })
    ));
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{accepted:?}"
    );
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let port = free_port(); // bound, then released: nothing listens
    let mailer = Mailer::new(MailerConfig {
        host: "127.0.0.1".to_owned(),
        port,
        from: FROM.to_owned(),
        timeout: Duration::from_secs(5),
    })
    .expect("a mailer");
    let error = mailer.send(TO, "Alert", "body").await.expect_err("refused");
    match &error {
        NotifyError::Connect {
            step: Step::SmtpConnect,
            address,
            source,
        } => {
            assert_eq!(address, &format!("127.0.0.1:{port}"));
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().starts_with("SMTP connect to 127.0.0.1:"));
}

#[tokio::test]
async fn a_silent_smtp_server_times_out_at_the_greeting() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mailer = Mailer::new(MailerConfig {
        host: "127.0.0.1".to_owned(),
        port: listener.local_addr().expect("address").port(),
        from: FROM.to_owned(),
        timeout: Duration::from_millis(300),
    })
    .expect("a mailer");
    let started = Instant::now();
    let error = mailer.send(TO, "Alert", "body").await.expect_err("silent");
    let elapsed = started.elapsed();
    assert!(
        matches!(
            error,
            NotifyError::Timeout {
                step: Step::SmtpGreeting,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------------

fn webhooks(timeout: Duration) -> Webhooks {
    Webhooks::new(WebhooksConfig { timeout }).expect("webhooks")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[actix_web::test]
async fn a_webhook_is_posted_signed() {
    let server = WebhookServer::start();
    let secret = b"whsec_0123456789abcdef";
    let event_id = Uuid::new_v4();
    let now = 1_750_000_000;
    let event = json!({
        "type": "price_alert",
        "market": "TOK.pro.2025-06",
        "price_micro_cr": 1_150_000,
        "level_micro_cr": 1_200_000,
        "note": "Zürich ✓",
    });
    let url = server.url("/hooks/alerts?org=7");
    let status = webhooks(Duration::from_secs(10))
        .post(&url, secret, event_id, &event, now)
        .await
        .expect("delivered");
    assert_eq!(status, 204);

    let recorded = server.recorded();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let request = &recorded[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/alerts");
    assert_eq!(request.query, "org=7");
    assert_eq!(request.header("host"), format!("127.0.0.1:{}", server.port));
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(
        request.header("content-length"),
        request.body.len().to_string()
    );
    assert_eq!(request.header("connection"), "close");
    assert_eq!(request.header("user-agent"), "credex");
    assert_eq!(request.header("credex-event-id"), event_id.to_string());
    let body: Value = serde_json::from_slice(&request.body).expect("JSON");
    assert_eq!(body, event);

    // The signature, verified as a receiver would: over "<t>.<raw body>".
    let signature = request.header("credex-signature");
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("{signature}"));
    assert_eq!(t, now.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("a key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(&request.body);
    assert_eq!(v1, hex(&mac.finalize().into_bytes()));
    let mut wrong = Hmac::<Sha256>::new_from_slice(b"another secret").expect("a key");
    wrong.update(format!("{t}.").as_bytes());
    wrong.update(&request.body);
    assert_ne!(v1, hex(&wrong.finalize().into_bytes()));
    assert_eq!(
        signature,
        credex_api::notify::signature(secret, now, &request.body)
    );

    server.handle.stop(true).await;
}

#[actix_web::test]
async fn a_failing_webhook_is_an_error_with_its_status() {
    let server = WebhookServer::start();
    let error = webhooks(Duration::from_secs(10))
        .post(
            &server.url("/fail"),
            b"secret",
            Uuid::new_v4(),
            &json!({"type": "price_alert"}),
            1_750_000_000,
        )
        .await
        .expect_err("500");
    match &error {
        NotifyError::Status { status, body } => {
            assert_eq!(*status, 500);
            assert!(
                body.contains("the receiver broke") || body.is_empty(),
                "{body}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error.to_string(), "the webhook answered HTTP 500");
    assert_eq!(server.recorded().len(), 1);

    // Nothing listening: a connect error.
    let port = free_port();
    let error = webhooks(Duration::from_secs(10))
        .post(
            &format!("http://127.0.0.1:{port}/"),
            b"secret",
            Uuid::new_v4(),
            &json!({}),
            1_750_000_000,
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, NotifyError::Connect { step: Step::HttpConnect, source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "{error:?}"
    );
    server.handle.stop(true).await;
}

#[actix_web::test]
async fn bad_urls_are_refused() {
    let server = WebhookServer::start();
    let port = server.port;
    let hooks = webhooks(Duration::from_secs(10));
    for url in [
        format!("https://127.0.0.1:{port}/hooks"),
        format!("ftp://127.0.0.1:{port}/hooks"),
        "http:///hooks".to_owned(),
        format!("http://:{port}/hooks"),
        "http://127.0.0.1:0/hooks".to_owned(),
        "http://127.0.0.1:65536/hooks".to_owned(),
        "http://127.0.0.1:8o/hooks".to_owned(),
        format!("http://user:pass@127.0.0.1:{port}/hooks"),
        format!("http://127.0.0.1:{port}/hooks a"),
        format!("http://127.0.0.1:{port}/hooks\r\nX-Injected: 1"),
    ] {
        let error = hooks
            .post(&url, b"secret", Uuid::new_v4(), &json!({}), 1_750_000_000)
            .await
            .expect_err(&url);
        assert!(
            matches!(error, NotifyError::Invalid { field: "url", .. }),
            "{url}: {error:?}"
        );
        if url.starts_with("https") {
            assert!(error.to_string().contains("https"), "{error}");
        }
    }
    assert!(server.recorded().is_empty());
    server.handle.stop(true).await;
}

#[tokio::test]
async fn a_webhook_that_never_answers_times_out() {
    // A real listener that takes the connection (the kernel completes it) and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let timeout = Duration::from_millis(400);
    let started = Instant::now();
    let error = webhooks(timeout)
        .post(
            &format!("http://127.0.0.1:{port}/hooks"),
            b"secret",
            Uuid::new_v4(),
            &json!({"type": "price_alert"}),
            1_750_000_000,
        )
        .await
        .expect_err("timeout");
    let elapsed = started.elapsed();
    assert!(
        matches!(
            error,
            NotifyError::Timeout {
                step: Step::HttpResponse,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        elapsed >= timeout && elapsed < timeout + Duration::from_secs(2),
        "{elapsed:?}"
    );
    // The request did arrive, whole.
    let (mut connection, _) = listener.accept().expect("the connection");
    connection
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    let mut received = Vec::new();
    let _ = connection.read_to_end(&mut received);
    let received = String::from_utf8(received).expect("UTF-8");
    assert!(
        received.starts_with("POST /hooks HTTP/1.1\r\n"),
        "{received}"
    );
    assert!(
        received.ends_with(r#"{"type":"price_alert"}"#),
        "{received}"
    );
}
