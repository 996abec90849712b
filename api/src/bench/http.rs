//! The benchmarks' HTTP client: one keep-alive HTTP/1.1 connection to the server under test,
//! no more than they need — requests with JSON bodies, answers with `Content-Length`.

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// An HTTP answer: its status, `Location` and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// A keep-alive HTTP/1.1 connection: just enough client for the benchmark (requests with
/// sized JSON bodies; answers with `Content-Length`).
#[derive(Debug)]
pub struct Connection {
    stream: BufReader<TcpStream>,
}

/// The largest answer read.
const ANSWER_MAX_BYTES: usize = 1 << 20;

impl Connection {
    /// A connection to the server on `port` of 127.0.0.1.
    pub async fn open(port: u16) -> anyhow::Result<Self> {
        Self::from_stream(TcpStream::connect(("127.0.0.1", port)).await?)
    }

    /// A connection over `stream`, already connected to the server (from a source address of
    /// the caller's choosing, say).
    pub fn from_stream(stream: TcpStream) -> anyhow::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// POSTs `body`; answers the JSON of a 2xx answer.
    pub async fn json(
        &mut self,
        path: &str,
        token: Option<&str>,
        idempotency_key: Option<&str>,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let body = body.to_string().into_bytes();
        let answer = self
            .send("POST", path, token, idempotency_key, &body)
            .await?;
        let json: serde_json::Value = serde_json::from_slice(&answer.body)?;
        if !(200..300).contains(&answer.status) {
            bail!("POST {path} answered {}: {json}", answer.status);
        }
        Ok(json)
    }

    /// GETs `path` with a `Cookie` header (the portal's pages).
    pub async fn get_with_cookie(
        &mut self,
        path: &str,
        cookie: &str,
    ) -> anyhow::Result<HttpAnswer> {
        let head = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncookie: {cookie}\r\n\r\n");
        self.stream.get_mut().write_all(head.as_bytes()).await?;
        self.answer().await
    }

    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        idempotency_key: Option<&str>,
        body: &[u8],
    ) -> anyhow::Result<HttpAnswer> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n",
            body.len()
        );
        if let Some(token) = token {
            head.push_str(&format!("authorization: Bearer {token}\r\n"));
        }
        if let Some(key) = idempotency_key {
            head.push_str(&format!("idempotency-key: {key}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        self.answer().await
    }

    async fn answer(&mut self) -> anyhow::Result<HttpAnswer> {
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP answer: {line:?}"))?;
        let (mut length, mut location) = (None, None);
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("the connection closed mid-answer");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>()?);
                } else if name.eq_ignore_ascii_case("location") {
                    location = Some(value.trim().to_owned());
                }
            }
        }
        let length = length.context("an answer without Content-Length")?;
        if length > ANSWER_MAX_BYTES {
            bail!("an answer of {length} bytes");
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok(HttpAnswer {
            status,
            location,
            body,
        })
    }
}
