//! `credex serve` as a child process on a test database, and a bare HTTP/1.1 client: for the
//! tests that run several server processes on one PostgreSQL database.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ADMIN, PASSWORD};

/// How long a server may take to start or stop.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// The signing key every server process of a test shares (a token one signs, another accepts).
pub const JWT_SECRET: &str = "a signing key of at least thirty-two bytes, shared by both";

/// `credex serve` on the test database, its log kept for a failing test's message.
pub struct Server {
    child: Child,
    /// Known once the process says it (see [`Server::wait_port`]).
    pub port: u16,
    said_port: std::sync::mpsc::Receiver<u16>,
    log: Arc<Mutex<Vec<String>>>,
    /// Reads the process's standard error into `log` until the process closes it.
    reader: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
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

impl Server {
    /// Starts `credex serve` on port 0; [`Server::wait_port`] learns the port.
    pub fn spawn(url: &str) -> Self {
        Self::spawn_with(url, &[])
    }

    /// Starts `credex serve` on port 0 with more environment variables.
    pub fn spawn_with(url: &str, environment: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a directory");
        let mut command = Command::new(env!("CARGO_BIN_EXE_credex"));
        command.envs(environment.iter().copied());
        let mut child = command
            .arg("serve")
            .env_remove("CREDEX_CONFIG")
            .env("DATABASE_URL", url)
            .env("CREDEX_BIND", "127.0.0.1:0")
            .env("CREDEX_DATA_DIR", dir.path())
            .env("CREDEX_ADMIN_EMAIL", ADMIN)
            .env("CREDEX_ADMIN_PASSWORD", PASSWORD)
            .env("CREDEX_JWT_SECRET", JWT_SECRET)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start credex serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let (sender, said_port) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("port=") {
                    let digits: String = line[at + 5..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    if let Ok(port) = digits.parse::<u16>() {
                        let _ = sender.send(port);
                    }
                }
                lines.lock().expect("the log").push(line);
            }
        });
        Self {
            child,
            port: 0,
            said_port,
            log,
            reader: Some(reader),
            _dir: dir,
        }
    }

    /// Waits until the process says where it listens.
    pub fn wait_port(&mut self) {
        match self.said_port.recv_timeout(PATIENCE) {
            Ok(port) => self.port = port,
            Err(error) => {
                let status = self.child.try_wait().expect("wait");
                panic!(
                    "credex serve did not say its port ({error}; exited: {status:?}):\n{}",
                    self.log()
                );
            }
        }
    }

    /// The last lines the process logged.
    pub fn log(&self) -> String {
        let log = self.log.lock().expect("the log");
        let from = log.len().saturating_sub(30);
        log[from..].join("\n")
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("wait") {
            panic!("credex serve exited with {status}:\n{}", self.log());
        }
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
    }

    /// Waits for the process to exit after SIGTERM, and for its last log lines to be read (so
    /// that [`Server::log`] holds all it said).
    pub fn wait_stopped(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "credex serve did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An HTTP answer: status, head (lower-cased), body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut raw: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = raw.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .expect("a hexadecimal chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        raw = rest[size..].strip_prefix("\r\n").expect("a chunk's end");
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), read to its end.
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|error| panic!("connect to port {port}: {error}"));
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|error| panic!("{method} {path} on port {port}: {error}"));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .unwrap_or_else(|error| panic!("{method} {path} on port {port}: {error}"));
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a whole answer");
    let head = head.to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status");
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Reply { status, head, body }
}
