//! Real servers for the notification tests: aiosmtpd (a real SMTP server, from the project's
//! Python venv) writing a maildir whose messages Python's `email` package parses, and an
//! actix-web server that records the webhook requests it received.
//!
//! The venv's Python is `CREDEX_TEST_PYTHON`, or `<workspace>/.venv/bin/python` (`.ci/run`
//! installs aiosmtpd there). Without it the tests using these fail; they never skip.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use credex_api::notify::{Mailer, MailerConfig};
use serde_json::Value;

/// The sender of the mailers `SmtpServer::mailer` makes.
pub const FROM: &str = "alerts@credex.example";

/// How often the `wait_for_*` methods look again.
const POLL: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------------------------

/// The venv's Python, checked to import aiosmtpd (panics with how to install it otherwise).
pub fn python() -> PathBuf {
    let path = std::env::var_os("CREDEX_TEST_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "the notify tests need Python with aiosmtpd: {} does not exist. Set CREDEX_TEST_PYTHON, \
         or run `python3 -m venv .venv && .venv/bin/pip install aiosmtpd==1.4.6` in the \
         workspace (.ci/run does this)",
        path.display()
    );
    let check = Command::new(&path)
        .args(["-c", "import aiosmtpd"])
        .output()
        .expect("run Python");
    assert!(
        check.status.success(),
        "{} cannot import aiosmtpd: run `{} -m pip install aiosmtpd==1.4.6`\n{}",
        path.display(),
        path.display(),
        String::from_utf8_lossy(&check.stderr)
    );
    path
}

/// A port that was free a moment ago (bound, then released: nothing listens on it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// aiosmtpd on 127.0.0.1, storing what it receives in a maildir; killed on drop.
pub struct SmtpServer {
    child: Child,
    /// The port it listens on, at 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts aiosmtpd on a free port and waits until it accepts connections.
    pub fn start() -> Self {
        let python = python();
        // The port is picked free and then handed over, so another process may take it in
        // between: try a few.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("a directory");
            let port = free_port();
            let stderr = std::fs::File::create(dir.path().join("stderr")).expect("a log");
            let child = Command::new(&python)
                .args(["-m", "aiosmtpd", "-n", "-l"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-c", "aiosmtpd.handlers.Mailbox"])
                .arg(dir.path().join("maildir"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("start aiosmtpd");
            let mut server = Self { child, port, dir };
            if server.wait_until_listening() {
                return server;
            }
        }
        panic!("aiosmtpd did not start three times");
    }

    /// True once the port accepts; false if aiosmtpd exited (the port was taken).
    fn wait_until_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = ([127, 0, 0, 1], self.port).into();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("aiosmtpd's status") {
                let log = std::fs::read_to_string(self.dir.path().join("stderr"));
                eprintln!("aiosmtpd exited ({status}): {}", log.unwrap_or_default());
                return false;
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("aiosmtpd did not listen on port {} within 30 s", self.port);
    }

    /// A mailer sending from `FROM` to this server.
    pub fn mailer(&self, timeout: Duration) -> Mailer {
        Mailer::new(MailerConfig {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            from: FROM.to_owned(),
            timeout,
        })
        .expect("a mailer")
    }

    /// The raw files of the maildir's new messages, oldest first.
    pub fn files(&self) -> Vec<PathBuf> {
        let new = self.dir.path().join("maildir").join("new");
        let mut files: Vec<_> = std::fs::read_dir(new)
            .expect("the maildir")
            .map(|entry| entry.expect("an entry").path())
            .collect();
        files.sort();
        files
    }

    /// The messages received so far, each as `parse_with_python` gives it, oldest first.
    pub fn messages(&self) -> Vec<Value> {
        self.files()
            .iter()
            .map(|file| parse_with_python(file))
            .collect()
    }

    /// Waits until at least `n` messages arrived and returns their files, oldest first; panics
    /// after `timeout`. Sleeps asynchronously, so the sender may run on the same runtime.
    pub async fn wait_for_files(&self, n: usize, timeout: Duration) -> Vec<PathBuf> {
        let deadline = Instant::now() + timeout;
        loop {
            let files = self.files();
            if files.len() >= n {
                return files;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages arrived within {timeout:?}: {files:?}",
                files.len()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until at least `n` messages arrived and returns them all, parsed (as `messages`);
    /// panics after `timeout`. Sleeps asynchronously, so the sender may run on the same runtime.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let files = self.files();
            if files.len() >= n {
                return files.iter().map(|file| parse_with_python(file)).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages arrived within {timeout:?}: {files:?}",
                files.len()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The message parsed by Python's `email` package (policy `default`, which decodes RFC 2047
/// words and transfer encodings): `{"headers": {name: value}, "content_type", "charset",
/// "cte", "date_parses", "text", "defects"}`.
pub fn parse_with_python(file: &Path) -> Value {
    const SCRIPT: &str = r#"
import email, email.policy, json, sys
with open(sys.argv[1], "rb") as f:
    m = email.message_from_binary_file(f, policy=email.policy.default)
print(json.dumps({
    "headers": {k: str(v) for k, v in m.items()},
    "content_type": m.get_content_type(),
    "charset": m.get_content_charset(),
    "cte": m.get("Content-Transfer-Encoding"),
    "date_parses": m["Date"].datetime is not None,
    "text": m.get_content(),
    "defects": [repr(d) for d in m.defects],
}))
"#;
    let output = Command::new(python())
        .args(["-c", SCRIPT])
        .arg(file)
        .output()
        .expect("run Python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

/// A message, multipart or not, parsed by Python's `email` package (policy `default`):
/// `{"headers": {name: value}, "content_type", "text" (the plain-text body), "attachments":
/// [{"filename", "content_type", "content"}], "date_parses", "defects"}`.
pub fn parse_mime_with_python(file: &Path) -> Value {
    const SCRIPT: &str = r#"
import email, email.policy, json, sys
with open(sys.argv[1], "rb") as f:
    m = email.message_from_binary_file(f, policy=email.policy.default)
body = m.get_body(preferencelist=("plain",))
print(json.dumps({
    "headers": {k: str(v) for k, v in m.items()},
    "content_type": m.get_content_type(),
    "text": body.get_content() if body is not None else None,
    "attachments": [
        {"filename": a.get_filename(), "content_type": a.get_content_type(),
         "content": a.get_content() if a.get_content_maintype() == "text" else None}
        for a in m.iter_attachments()
    ],
    "date_parses": m["Date"].datetime is not None,
    "defects": [repr(d) for d in m.defects] + [repr(d) for p in m.walk() for d in p.defects],
}))
"#;
    let output = Command::new(python())
        .args(["-c", SCRIPT])
        .arg(file)
        .output()
        .expect("run Python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}

// ---------------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------------

/// A request as the webhook server parsed it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Lower-case names, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The value of the header `name` (lower case); panics unless there is exactly one.
    pub fn header(&self, name: &str) -> &str {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let (_, value) = values
            .next()
            .unwrap_or_else(|| panic!("no {name}: {self:?}"));
        assert!(values.next().is_none(), "two {name} headers");
        value
    }
}

/// A real actix-web server on a free port: `/fail` answers 500; `/flaky/<n>` answers 500 to
/// its first `n` requests and 204 after; everything else 204.
/// Started on the current runtime; stop it with `handle.stop(true).await`.
pub struct WebhookServer {
    /// The port it listens on, at 127.0.0.1.
    pub port: u16,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    pub handle: actix_web::dev::ServerHandle,
}

impl WebhookServer {
    /// Starts the server on a thread of its own (with its own actix system), so it serves
    /// whatever runtime the test runs on.
    pub fn start() -> Self {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let shared = recorded.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(web::Data::new(shared.clone()))
                        .default_service(web::to(record))
                })
                .workers(1)
                .listen(listener)
                .expect("listen")
                .run();
                sender.send(server.handle()).expect("the handle");
                let _ = server.await;
            });
        });
        let handle = receiver.recv().expect("the server started");
        Self {
            port,
            recorded,
            handle,
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The requests received so far, in order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("the record").clone()
    }

    /// Waits until at least `n` requests arrived and returns them all; panics after `timeout`.
    /// Sleeps asynchronously, so the sender may run on the same runtime.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let recorded = self.recorded();
            if recorded.len() >= n {
                return recorded;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} webhook requests arrived within {timeout:?}: {recorded:?}",
                recorded.len()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Records the request; answers 500 on `/fail` and the first `n` requests to `/flaky/<n>`,
/// 204 otherwise.
async fn record(
    request: HttpRequest,
    body: web::Bytes,
    recorded: web::Data<Arc<Mutex<Vec<Recorded>>>>,
) -> HttpResponse {
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = value.to_str().expect("an ASCII header").to_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let mut recorded = recorded.lock().expect("the record");
    let before = recorded
        .iter()
        .filter(|earlier| earlier.path == request.path())
        .count();
    let flaky = request
        .path()
        .strip_prefix("/flaky/")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| before < n);
    recorded.push(Recorded {
        method: request.method().as_str().to_owned(),
        path: request.path().to_owned(),
        query: request.query_string().to_owned(),
        headers,
        body: body.to_vec(),
    });
    drop(recorded);
    if request.path() == "/fail" || flaky {
        HttpResponse::InternalServerError().body("the receiver broke")
    } else {
        HttpResponse::NoContent().finish()
    }
}
