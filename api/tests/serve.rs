//! `credex serve` as a process: it starts with nothing configured (SQLite under the data
//! directory) or on PostgreSQL, answers `/healthz` and `/readyz`, and stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    /// A failing test must not leave a server behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `credex serve` on a free port and waits until it says where it listens.
fn start(data_dir: &std::path::Path, database_url: Option<&str>) -> Server {
    start_with(data_dir, database_url, &[])
}

/// As [`start`], with more environment variables.
fn start_with(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    envs: &[(&str, &str)],
) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_credex"));
    command.envs(envs.iter().copied());
    command
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    let mut child = command.spawn().expect("start credex serve");
    let stderr = child.stderr.take().expect("stderr is piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("port=") {
                let digits: String = line[at + 5..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let _ = sender.send(digits.parse::<u16>().expect("a port number"));
            }
        }
    });
    let port = receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("credex serve reports its port");
    Server { child, port }
}

fn get(port: u16, path: &str) -> (u16, String) {
    let (status, _, body) = request(port, "GET", path);
    (status, body)
}

/// One HTTP/1.1 request; the status, the head (lower-cased) and the body.
fn request(port: u16, method: &str, path: &str) -> (u16, String, String) {
    send(port, method, path, &[], "").expect("an answer")
}

/// One HTTP/1.1 request with headers and a JSON body; `None` when the connection fails (a
/// server stopping refuses new connections).
fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    if response.is_empty() {
        return None;
    }
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Some((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// Sends SIGTERM and waits for a clean exit.
fn stop(mut server: Server) {
    let pid = server.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            assert!(status.success(), "credex serve exited with {status}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "credex serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check_health(server: &Server, backend: &str) {
    let (status, body) = get(server.port, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ok\""), "{body}");
    let (status, body) = get(server.port, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\"{backend}\"")), "{body}");
    // Errors are problem details with the request's id, in the body and in a header.
    let (status, head, body) = request(server.port, "GET", "/nowhere");
    assert_eq!(status, 404, "{body}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    assert!(
        body.contains("https://credex.dev/problems/not-found"),
        "{body}"
    );
    assert!(head.contains("x-request-id: "), "{head}");
    assert!(body.contains("\"request_id\""), "{body}");
    let (status, head, body) = request(server.port, "POST", "/healthz");
    assert_eq!(status, 405, "{body}");
    assert!(head.contains("allow: get"), "{head}");
    assert!(
        body.contains("https://credex.dev/problems/method-not-allowed"),
        "{body}"
    );
    // The served OpenAPI document is the committed one; the reference page renders it.
    let (status, served) = get(server.port, "/openapi.json");
    assert_eq!(status, 200);
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../openapi/openapi.json"
    ))
    .expect("the committed document");
    assert_eq!(served, committed);
    let (status, page) = get(server.port, "/docs");
    assert_eq!(status, 200);
    assert!(page.contains("<code>/readyz</code>"), "{page}");
    // Metrics count the requests above by route template, and see the database pool.
    let (status, text) = get(server.port, "/metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains(
            "credex_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("route=\"unmatched\",status=\"404\""),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "credex_db_pool_connections{{backend=\"{backend}\""
        )),
        "{text}"
    );
}

#[test]
fn serves_on_embedded_sqlite_with_nothing_configured() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    let server = start(&data, None);
    check_health(&server, "sqlite");
    stop(server);
    assert!(
        data.join("credex.db").exists(),
        "the SQLite database lives in the data directory"
    );

    // The operator commands read the same data directory.
    let check = Command::new(env!("CARGO_BIN_EXE_credex"))
        .args(["check", "--data-dir"])
        .arg(&data)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run credex check");
    assert!(check.status.success(), "{check:?}");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains("\"discrepancies\": []"), "{report}");
    let books = dir.path().join("books.beancount");
    let export = Command::new(env!("CARGO_BIN_EXE_credex"))
        .args(["export", "beancount", "--data-dir"])
        .arg(&data)
        .arg("--output")
        .arg(&books)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run credex export beancount");
    assert!(export.status.success(), "{export:?}");
    let text = std::fs::read_to_string(&books).expect("the export file");
    // The provider's four CR accounts exist from the first start, each opened and asserted.
    assert_eq!(text.matches(" open ").count(), 4, "{text}");
    assert_eq!(text.matches(" balance ").count(), 4, "{text}");
    assert!(
        text.contains("balance Equity:Provider:Issuance  0.000000 ~ 0 CR"),
        "{text}"
    );
}

#[test]
fn serves_on_postgres() {
    let admin = std::env::var("CREDEX_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if std::env::var("CREDEX_TEST_POSTGRES").as_deref() == Ok("skip") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PostgreSQL is required under CI"
        );
        eprintln!("PostgreSQL test skipped");
        return;
    }
    let name = format!("credex_test_{}", uuid::Uuid::new_v4().simple());
    let psql = |sql: &str| {
        let status = Command::new("psql")
            .args([admin.as_str(), "-q", "-c", sql])
            .status();
        match status {
            Ok(status) => status.success(),
            Err(_) => false,
        }
    };
    if !psql(&format!("CREATE DATABASE {name}")) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PostgreSQL is required under CI"
        );
        eprintln!("PostgreSQL unreachable (or psql missing): test skipped");
        return;
    }
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    let url = format!("{base}/{name}");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = start(dir.path(), Some(&url));
    check_health(&server, "postgres");
    stop(server);
    assert!(psql(&format!("DROP DATABASE {name} WITH (FORCE)")));
}

const ADMIN: &str = "ops@provider.example";
const PASSWORD: &str = "a long and careful password";

fn sign_in(port: u16) -> String {
    let body = format!(r#"{{"email": "{ADMIN}", "password": "{PASSWORD}"}}"#);
    let (status, _, answer) = send(port, "POST", "/v1/auth/login", &[], &body).expect("an answer");
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    answer["access_token"].as_str().expect("a token").to_owned()
}

/// SIGTERM while credits pour in: the process exits cleanly, and after a restart every credit
/// that was answered 201 is in the journal and the books balance.
#[test]
fn nothing_acknowledged_is_lost_when_stopped_mid_stream() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let envs = [
        ("CREDEX_ADMIN_EMAIL", ADMIN),
        ("CREDEX_ADMIN_PASSWORD", PASSWORD),
    ];
    let server = start_with(dir.path(), None, &envs);
    let port = server.port;
    let token = sign_in(port);
    let auth = format!("Bearer {token}");
    let (status, _, org) = send(
        port,
        "POST",
        "/v1/admin/orgs",
        &[("Authorization", &auth)],
        r#"{"name": "Acme", "plan": "teams"}"#,
    )
    .expect("an answer");
    assert_eq!(status, 201, "{org}");
    let org: serde_json::Value = serde_json::from_str(&org).expect("JSON");
    let credits = format!(
        "/v1/admin/orgs/{}/credits",
        org["id"].as_str().expect("an id")
    );

    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let (acknowledged, credits, auth) = (acknowledged.clone(), credits.clone(), auth.clone());
        workers.push(std::thread::spawn(move || {
            for n in 0..200 {
                let key = format!("w{worker}-{n}");
                let body = r#"{"kind": "grant", "amount_micro_cr": 1000, "reason": "load"}"#;
                let headers = [
                    ("Authorization", auth.as_str()),
                    ("Idempotency-Key", key.as_str()),
                ];
                match send(port, "POST", &credits, &headers, body) {
                    Some((201, _, answer)) => {
                        let answer: serde_json::Value =
                            serde_json::from_str(&answer).expect("JSON");
                        let id = answer["id"].as_str().expect("an id").to_owned();
                        acknowledged.lock().expect("a lock").push(id);
                    }
                    Some((status, _, answer)) if status == 503 || status >= 500 => {
                        panic!("an error while stopping must not be a 5xx: {status} {answer}")
                    }
                    // Refused connections or answers cut short: nothing acknowledged.
                    _ => return,
                }
            }
        }));
    }
    // Let some credits through, then stop mid-stream.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().expect("a lock").len() < 50 {
        assert!(Instant::now() < deadline, "credits do not go through");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop(server);
    for worker in workers {
        worker.join().expect("a worker");
    }
    let acknowledged = acknowledged.lock().expect("a lock").clone();
    assert!(acknowledged.len() >= 50);

    let server = start_with(dir.path(), None, &envs);
    let token = sign_in(server.port);
    let auth = format!("Bearer {token}");
    for id in &acknowledged {
        let (status, _, answer) = send(
            server.port,
            "GET",
            &format!("/v1/admin/transfers/{id}"),
            &[("Authorization", &auth)],
            "",
        )
        .expect("an answer");
        assert_eq!(status, 200, "acknowledged credit {id} is missing: {answer}");
    }
    let (status, _, check) = send(
        server.port,
        "GET",
        "/v1/admin/books/check",
        &[("Authorization", &auth)],
        "",
    )
    .expect("an answer");
    assert_eq!(status, 200);
    assert!(check.contains("\"ok\":true"), "{check}");
    eprintln!(
        "{} credits acknowledged before SIGTERM, all in the journal after restart",
        acknowledged.len()
    );
    stop(server);
}
