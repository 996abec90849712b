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
    let mut command = Command::new(env!("CARGO_BIN_EXE_credex"));
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
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
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
