//! Delivering notifications (price alerts): e-mail over SMTP and signed webhooks over HTTP.
//!
//! Both clients are deliberately small and speak the protocols directly over a tokio
//! [`TcpStream`]: plain SMTP to the provider's local relay (no TLS, no AUTH) and plain HTTP/1.1
//! (`http://` only; `https://` is refused, there is no TLS stack in this build). Everything is
//! bounded: every step has a timeout, and reply lines, replies, responses, subjects, bodies and
//! URLs have size caps. Every failure is a [`NotifyError`] naming the [`Step`] it happened in
//! and, when the peer answered, what it answered.
//!
//! # E-mail ([`Mailer`])
//!
//! One message per connection: greeting `220`, `EHLO` (falling back to `HELO` when `EHLO` is
//! answered with a 5xx code), `MAIL FROM`, `RCPT TO`, `DATA`, the message, `QUIT`. Multi-line
//! replies (`250-…` … `250 …`) are read whole.
//!
//! * **Headers**: `Date` (RFC 5322, UTC), `From`, `To`, `Subject`, `Message-ID`
//!   (`<uuid@domain-of-from>`), `MIME-Version: 1.0`, `Content-Type: text/plain; charset=utf-8`
//!   and `Content-Transfer-Encoding`.
//! * **Header injection is impossible**: addresses must be plain ASCII `local@domain`
//!   addr-specs (dot-atom local part, hostname or address-literal domain; no spaces, angle
//!   brackets, quotes or control characters), and a subject with any control character (CR, LF,
//!   TAB, NUL, …) is refused before anything is sent.
//! * **Subjects** may be any Unicode text of at most [`MAX_SUBJECT_BYTES`] bytes. A subject that
//!   is not plain ASCII (or that contains `=?`, which decoders would take for an encoded word)
//!   is sent as RFC 2047 encoded words (`=?utf-8?B?…?=`, folded), so every mail reader shows
//!   the original text.
//! * **Body**: line endings (`\n`, `\r\n`, lone `\r`) become CRLF; lines starting with `.` are
//!   dot-stuffed. An ASCII body goes as `7bit`; a UTF-8 body as `8bit` with `BODY=8BITMIME`
//!   when the server advertises `8BITMIME`; otherwise (no `8BITMIME`, or a line longer than the
//!   998 octets SMTP allows) as `quoted-printable`. NUL characters are refused.
//! * Once the server has accepted the message (`250` after the final `.`), the mail is
//!   delivered: a failing `QUIT` is logged, not returned, so a caller that retries on error
//!   does not send the alert twice.
//!
//! # Webhooks ([`Webhooks`])
//!
//! `POST`s the JSON event to the org's `http://` URL with the headers `Host`, `User-Agent:
//! credex`, `Content-Type: application/json`, `Content-Length`, `Connection: close`,
//! `Credex-Event-Id: <uuid>` (the same id on every retry of one event, so receivers can drop
//! duplicates) and `Credex-Signature`. Any `2xx` answer is success; any other status, a
//! timeout (one deadline for connect, request and response head) or a connection error is a
//! [`NotifyError`]. URLs with user info, without a host, or with an invalid port are refused.
//!
//! ## Verifying a webhook (for receivers)
//!
//! ```text
//! Credex-Signature: t=<unix seconds>,v1=<lowercase hex HMAC-SHA256>
//! ```
//!
//! `v1` is `HMAC-SHA256(key = the org's webhook secret, message = "<t>.<raw body>")`, where
//! `<t>` is the decimal `t` value exactly as sent and `<raw body>` the request body bytes
//! exactly as received (do not re-serialize the JSON). A receiver should:
//!
//! 1. split the header on `,` and each part on the first `=`; take `t` and every `v1`
//!    (unknown keys are for future schemes and are ignored);
//! 2. compute the HMAC over `t`, `.` and the raw body, hex-encode it, and compare it with a
//!    `v1` value in constant time;
//! 3. refuse the request when `t` is more than a few minutes from its own clock (replays);
//! 4. remember `Credex-Event-Id` to drop retried duplicates.
//!
//! [`signature`] computes the header value.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use uuid::Uuid;

/// The longest reply line accepted from an SMTP server, CRLF included (RFC 5321 says 512).
pub const MAX_REPLY_LINE_BYTES: u64 = 2048;
/// The most lines one SMTP reply may have.
pub const MAX_REPLY_LINES: usize = 64;
/// The longest subject, in UTF-8 bytes.
pub const MAX_SUBJECT_BYTES: usize = 512;
/// The longest e-mail body, in UTF-8 bytes.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// The longest address (RFC 5321's path limit, without the angle brackets).
pub const MAX_ADDRESS_BYTES: usize = 254;
/// The longest webhook URL.
pub const MAX_URL_BYTES: usize = 2048;
/// The largest serialized webhook event.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// The most bytes of a webhook response read before giving up on finding its head.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The longest line SMTP allows, CRLF excluded (RFC 5321 4.5.3.1.6).
const MAX_SMTP_LINE_BYTES: usize = 998;
/// How much of an error response's body a [`NotifyError::Status`] keeps.
const MAX_ERROR_BODY_BYTES: usize = 512;

/// Where in an exchange something failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    SmtpConnect,
    SmtpGreeting,
    SmtpEhlo,
    SmtpHelo,
    SmtpMailFrom,
    SmtpRcptTo,
    SmtpData,
    /// Sending the message and its final `.`, and the server's answer to it.
    SmtpMessage,
    SmtpQuit,
    HttpConnect,
    HttpRequest,
    HttpResponse,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SmtpConnect => "SMTP connect",
            Self::SmtpGreeting => "SMTP greeting",
            Self::SmtpEhlo => "SMTP EHLO",
            Self::SmtpHelo => "SMTP HELO",
            Self::SmtpMailFrom => "SMTP MAIL FROM",
            Self::SmtpRcptTo => "SMTP RCPT TO",
            Self::SmtpData => "SMTP DATA",
            Self::SmtpMessage => "SMTP message",
            Self::SmtpQuit => "SMTP QUIT",
            Self::HttpConnect => "HTTP connect",
            Self::HttpRequest => "HTTP request",
            Self::HttpResponse => "HTTP response",
        })
    }
}

/// Why a notification was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// An argument or setting was refused before anything was sent.
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// The TCP connection could not be made.
    #[error("{step} to {address}: {source}")]
    Connect {
        step: Step,
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The peer did not finish the step in time.
    #[error("{step}: no answer within {} ms", .timeout.as_millis())]
    Timeout { step: Step, timeout: Duration },
    /// Reading or writing failed, or the peer closed the connection.
    #[error("{step}: {source}")]
    Io {
        step: Step,
        #[source]
        source: std::io::Error,
    },
    /// The SMTP server answered with a code the step does not accept; `text` is its reply.
    #[error("{step}: the server answered {code} {text}")]
    Rejected { step: Step, code: u16, text: String },
    /// The peer's answer is not the protocol's (or exceeds a cap).
    #[error("{step}: malformed answer: {reason}")]
    Protocol { step: Step, reason: &'static str },
    /// The webhook answered with a status other than 2xx. `body` is the start of its body.
    #[error("the webhook answered HTTP {status}")]
    Status { status: u16, body: String },
}

impl NotifyError {
    fn invalid(field: &'static str, reason: &'static str) -> Self {
        Self::Invalid { field, reason }
    }
}

// ---------------------------------------------------------------------------------------------
// E-mail
// ---------------------------------------------------------------------------------------------

/// Where and as whom to send e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailerConfig {
    /// The SMTP relay's host name or IP address.
    pub host: String,
    pub port: u16,
    /// The sender address, a plain `local@domain`.
    pub from: String,
    /// The limit on each SMTP step (connecting, each command and its reply, the message).
    pub timeout: Duration,
}

/// A plain-SMTP client for one relay. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Mailer {
    config: MailerConfig,
    /// The domain of `config.from`, for Message-IDs.
    from_domain: String,
}

/// An SMTP body, encoded for the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    SevenBit,
    EightBit,
    QuotedPrintable,
}

impl Mailer {
    /// Checks the configuration: a host without spaces or control characters, a valid `from`
    /// address and a non-zero timeout.
    pub fn new(config: MailerConfig) -> Result<Self, NotifyError> {
        check_host("host", &config.host)?;
        let from_domain = check_address("from", &config.from)?.to_owned();
        if config.timeout.is_zero() {
            return Err(NotifyError::invalid("timeout", "must be more than zero"));
        }
        Ok(Self {
            config,
            from_domain,
        })
    }

    /// Sends one plain-text message to `to`. Everything is checked before connecting.
    pub async fn send(&self, to: &str, subject: &str, text: &str) -> Result<(), NotifyError> {
        check_address("to", to)?;
        let subject = encode_subject(subject)?;
        check_text(text)?;
        let mut smtp = Smtp::connect(&self.config).await?;
        match self.deliver(&mut smtp, to, &subject, text).await {
            Ok(()) => {
                if let Err(error) = smtp.quit().await {
                    tracing::warn!(%error, "the SMTP server accepted the message; QUIT failed");
                }
                Ok(())
            }
            Err(error) => {
                smtp.abandon().await;
                Err(error)
            }
        }
    }

    async fn deliver(
        &self,
        smtp: &mut Smtp,
        to: &str,
        subject: &str,
        text: &str,
    ) -> Result<(), NotifyError> {
        smtp.expect(Step::SmtpGreeting, None, &[220]).await?;
        let eight_bit = smtp.hello().await?;
        let encoding = choose_encoding(text, eight_bit);
        let body_parameter = if encoding == Encoding::EightBit {
            " BODY=8BITMIME"
        } else {
            ""
        };
        let from = &self.config.from;
        let mail = format!("MAIL FROM:<{from}>{body_parameter}\r\n");
        smtp.expect(Step::SmtpMailFrom, Some(&mail), &[250]).await?;
        let rcpt = format!("RCPT TO:<{to}>\r\n");
        smtp.expect(Step::SmtpRcptTo, Some(&rcpt), &[250, 251])
            .await?;
        smtp.expect(Step::SmtpData, Some("DATA\r\n"), &[354])
            .await?;
        let date = OffsetDateTime::now_utc()
            .format(&Rfc2822)
            .map_err(|_| NotifyError::invalid("date", "the clock is out of RFC 5322's range"))?;
        let message_id = format!("<{}@{}>", Uuid::new_v4().simple(), self.from_domain);
        let headers = Headers {
            date: &date,
            from,
            to,
            subject,
            message_id: &message_id,
        };
        let data = message(&headers, text, encoding);
        smtp.expect(Step::SmtpMessage, Some(&data), &[250]).await?;
        Ok(())
    }
}

/// One SMTP conversation.
struct Smtp {
    stream: BufReader<TcpStream>,
    /// `[address]` of our end, for EHLO.
    client: String,
    timeout: Duration,
}

/// An SMTP reply: its code and the text of each line.
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Smtp {
    async fn connect(config: &MailerConfig) -> Result<Self, NotifyError> {
        let address = host_port(&config.host, config.port);
        let deadline = Instant::now() + config.timeout;
        let connect = TcpStream::connect((config.host.as_str(), config.port));
        let stream = timeout_at(deadline, connect)
            .await
            .map_err(|_| NotifyError::Timeout {
                step: Step::SmtpConnect,
                timeout: config.timeout,
            })?
            .map_err(|source| NotifyError::Connect {
                step: Step::SmtpConnect,
                address,
                source,
            })?;
        let client = match stream.local_addr().map(|local| local.ip()) {
            Ok(IpAddr::V4(ip)) => format!("[{ip}]"),
            Ok(IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
            Err(source) => {
                let step = Step::SmtpConnect;
                return Err(NotifyError::Io { step, source });
            }
        };
        Ok(Self {
            stream: BufReader::new(stream),
            client,
            timeout: config.timeout,
        })
    }

    /// Says EHLO (or HELO, when EHLO is refused with a 5xx code); answers whether the server
    /// takes 8-bit bodies.
    async fn hello(&mut self) -> Result<bool, NotifyError> {
        let ehlo = format!("EHLO {}\r\n", self.client);
        let reply = self.command(Step::SmtpEhlo, Some(&ehlo)).await?;
        match reply.code {
            250 => Ok(reply.lines.iter().skip(1).any(|line| {
                let keyword = line.split_ascii_whitespace().next().unwrap_or("");
                keyword.eq_ignore_ascii_case("8BITMIME")
            })),
            500..=599 => {
                let helo = format!("HELO {}\r\n", self.client);
                self.expect(Step::SmtpHelo, Some(&helo), &[250]).await?;
                Ok(false)
            }
            code => Err(rejected(Step::SmtpEhlo, code, &reply.lines)),
        }
    }

    async fn quit(&mut self) -> Result<(), NotifyError> {
        self.expect(Step::SmtpQuit, Some("QUIT\r\n"), &[221])
            .await?;
        Ok(())
    }

    /// After a failure: a courtesy QUIT, not waited for.
    async fn abandon(&mut self) {
        let write = self.stream.get_mut().write_all(b"QUIT\r\n");
        let _ = tokio::time::timeout(Duration::from_millis(100), write).await;
    }

    /// Sends `line` (if any) and reads the reply, which must carry one of `accepted`.
    async fn expect(
        &mut self,
        step: Step,
        line: Option<&str>,
        accepted: &[u16],
    ) -> Result<Reply, NotifyError> {
        let reply = self.command(step, line).await?;
        if accepted.contains(&reply.code) {
            Ok(reply)
        } else {
            Err(rejected(step, reply.code, &reply.lines))
        }
    }

    /// Sends `line` (if any) and reads the reply, all before one deadline.
    async fn command(&mut self, step: Step, line: Option<&str>) -> Result<Reply, NotifyError> {
        let deadline = Instant::now() + self.timeout;
        let limit = self.timeout;
        let exchange = async {
            if let Some(line) = line {
                let stream = self.stream.get_mut();
                stream.write_all(line.as_bytes()).await.map_err(io(step))?;
                stream.flush().await.map_err(io(step))?;
            }
            self.read_reply(step).await
        };
        timeout_at(deadline, exchange)
            .await
            .map_err(|_| NotifyError::Timeout {
                step,
                timeout: limit,
            })?
    }

    async fn read_reply(&mut self, step: Step) -> Result<Reply, NotifyError> {
        let mut lines = Vec::new();
        let mut first_code = None;
        loop {
            if lines.len() >= MAX_REPLY_LINES {
                let reason = "the reply has too many lines";
                return Err(NotifyError::Protocol { step, reason });
            }
            let line = self.read_line(step).await?;
            let Some((code, more, text)) = parse_reply_line(&line) else {
                let reason = "not an SMTP reply line";
                return Err(NotifyError::Protocol { step, reason });
            };
            if *first_code.get_or_insert(code) != code {
                let reason = "the reply's lines carry different codes";
                return Err(NotifyError::Protocol { step, reason });
            }
            lines.push(text);
            if !more {
                return Ok(Reply { code, lines });
            }
        }
    }

    async fn read_line(&mut self, step: Step) -> Result<Vec<u8>, NotifyError> {
        let mut line = Vec::new();
        let mut capped = (&mut self.stream).take(MAX_REPLY_LINE_BYTES);
        capped
            .read_until(b'\n', &mut line)
            .await
            .map_err(io(step))?;
        if line.last() != Some(&b'\n') {
            let reason = if line.is_empty() {
                "the server closed the connection"
            } else if capped.limit() == 0 {
                "a reply line is too long"
            } else {
                "the server closed the connection mid-line"
            };
            return Err(NotifyError::Protocol { step, reason });
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }
}

fn io(step: Step) -> impl FnOnce(std::io::Error) -> NotifyError {
    move |source| NotifyError::Io { step, source }
}

fn rejected(step: Step, code: u16, lines: &[String]) -> NotifyError {
    let text = lines.join(" / ");
    NotifyError::Rejected { step, code, text }
}

/// `250-text` → (250, more, "text"); `250 text` and `250` → (250, last, …).
fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, String)> {
    let digits = line.get(..3)?;
    let mut code = 0_u16;
    for digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        code = code * 10 + u16::from(digit - b'0');
    }
    if !(200..=599).contains(&code) {
        return None;
    }
    let more = match line.get(3) {
        None | Some(b' ') => false,
        Some(b'-') => true,
        Some(_) => return None,
    };
    let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned();
    Some((code, more, text))
}

/// `host:port`, with IPv6 addresses bracketed.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn check_host(field: &'static str, host: &str) -> Result<(), NotifyError> {
    if host.is_empty() || host.len() > 253 {
        return Err(NotifyError::invalid(field, "must be 1 to 253 bytes"));
    }
    if !host.bytes().all(|byte| byte.is_ascii_graphic()) {
        let reason = "must be ASCII without spaces or control characters";
        return Err(NotifyError::invalid(field, reason));
    }
    Ok(())
}

/// Checks a plain `local@domain` address and answers its domain.
fn check_address<'a>(field: &'static str, address: &'a str) -> Result<&'a str, NotifyError> {
    const REASON: &str = "must be a plain ASCII address local@domain (no spaces, angle brackets, \
                          quotes or control characters)";
    if address.is_empty() || address.len() > MAX_ADDRESS_BYTES {
        return Err(NotifyError::invalid(field, "must be 1 to 254 bytes"));
    }
    let Some((local, domain)) = address.split_once('@') else {
        return Err(NotifyError::invalid(field, REASON));
    };
    if local.len() > 64 || !is_dot_atom(local) || !is_domain(domain) {
        return Err(NotifyError::invalid(field, REASON));
    }
    Ok(domain)
}

/// RFC 5322 dot-atom: atext runs separated by single dots.
fn is_dot_atom(text: &str) -> bool {
    let atext = |byte: u8| byte.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&byte);
    !text.is_empty()
        && text
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(atext))
}

/// A host name (letters, digits, hyphens, dots) or an address literal such as `[127.0.0.1]`.
fn is_domain(domain: &str) -> bool {
    if let Some(literal) = domain
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
    {
        let allowed = |byte: u8| byte.is_ascii_alphanumeric() || b".:".contains(&byte);
        return !literal.is_empty() && literal.bytes().all(allowed);
    }
    let label_byte = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'-';
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(label_byte)
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The Subject header's value: the subject as is, or RFC 2047 encoded words, folded.
fn encode_subject(subject: &str) -> Result<String, NotifyError> {
    if subject.len() > MAX_SUBJECT_BYTES {
        return Err(NotifyError::invalid("subject", "is longer than 512 bytes"));
    }
    if subject.chars().any(char::is_control) {
        let reason = "must not contain control characters such as CR or LF";
        return Err(NotifyError::invalid("subject", reason));
    }
    if subject.is_ascii() && !subject.contains("=?") {
        return Ok(subject.to_owned());
    }
    // An encoded word is at most 75 characters: "=?utf-8?B?" and "?=" leave 63 for base64,
    // which is 15 groups of 4 characters, 45 bytes of UTF-8. Words never split a character.
    const WORD_BYTES: usize = 45;
    let mut words = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for (index, character) in subject.char_indices() {
        let next = index + character.len_utf8();
        if next - start > WORD_BYTES {
            words.push(encoded_word(&subject[start..end]));
            start = end;
        }
        end = next;
    }
    words.push(encoded_word(&subject[start..end]));
    Ok(words.join("\r\n "))
}

fn encoded_word(text: &str) -> String {
    format!("=?utf-8?B?{}?=", STANDARD.encode(text))
}

fn check_text(text: &str) -> Result<(), NotifyError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(NotifyError::invalid("text", "is longer than 256 KiB"));
    }
    if text.contains('\0') {
        return Err(NotifyError::invalid("text", "must not contain NUL"));
    }
    Ok(())
}

/// The text's lines, whatever its line endings; a final line ending ends the last line.
fn text_lines(text: &str) -> impl Iterator<Item = &str> {
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .or_else(|| text.strip_suffix('\r'))
        .unwrap_or(text);
    text.split('\n').flat_map(|line| {
        let line = line.strip_suffix('\r').unwrap_or(line);
        line.split('\r')
    })
}

fn choose_encoding(text: &str, eight_bit: bool) -> Encoding {
    let long = text_lines(text).any(|line| line.len() > MAX_SMTP_LINE_BYTES);
    if long {
        Encoding::QuotedPrintable
    } else if text.is_ascii() {
        Encoding::SevenBit
    } else if eight_bit {
        Encoding::EightBit
    } else {
        Encoding::QuotedPrintable
    }
}

/// Header values of one message, already checked.
struct Headers<'a> {
    date: &'a str,
    from: &'a str,
    to: &'a str,
    subject: &'a str,
    message_id: &'a str,
}

/// The DATA payload: headers, body, dot-stuffed, CRLF line endings, ending in `.`.
fn message(headers: &Headers<'_>, text: &str, encoding: Encoding) -> String {
    let transfer_encoding = match encoding {
        Encoding::SevenBit => "7bit",
        Encoding::EightBit => "8bit",
        Encoding::QuotedPrintable => "quoted-printable",
    };
    let mut data = format!(
        "Date: {}\r\nFrom: {}\r\nTo: {}\r\nSubject: {}\r\nMessage-ID: {}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: {transfer_encoding}\r\n\r\n",
        headers.date, headers.from, headers.to, headers.subject, headers.message_id,
    );
    let mut push = |line: &str| {
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
        data.push_str("\r\n");
    };
    for line in text_lines(text) {
        if encoding == Encoding::QuotedPrintable {
            quoted_printable(line, &mut push);
        } else {
            push(line);
        }
    }
    data.push_str(".\r\n");
    data
}

/// One line of text as quoted-printable lines (RFC 2045 6.7) of at most 76 characters.
fn quoted_printable(line: &str, push: &mut impl FnMut(&str)) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = line.as_bytes();
    let mut current = String::new();
    for (index, &byte) in bytes.iter().enumerate() {
        let last = index + 1 == bytes.len();
        let literal =
            (byte.is_ascii_graphic() && byte != b'=') || (matches!(byte, b' ' | b'\t') && !last);
        let width = if literal { 1 } else { 3 };
        if current.len() + width > 75 {
            current.push('=');
            push(&current);
            current.clear();
        }
        if literal {
            current.push(char::from(byte));
        } else {
            current.push('=');
            current.push(char::from(HEX[usize::from(byte >> 4)]));
            current.push(char::from(HEX[usize::from(byte & 0x0F)]));
        }
    }
    push(&current);
}

// ---------------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------------

/// How webhooks are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// The limit on one delivery: connecting, sending, and reading the response's head.
    pub timeout: Duration,
}

/// A minimal HTTP/1.1 client posting signed JSON events. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Webhooks {
    config: WebhooksConfig,
}

/// The parts of an `http://` URL a request needs.
#[derive(Debug, PartialEq, Eq)]
struct HttpUrl<'a> {
    /// The host to connect to (an IPv6 address without its brackets).
    host: &'a str,
    port: u16,
    /// The authority as written, for the Host header.
    authority: &'a str,
    /// Path and query; `/` when the URL has none.
    target: String,
}

impl Webhooks {
    pub fn new(config: WebhooksConfig) -> Result<Self, NotifyError> {
        if config.timeout.is_zero() {
            return Err(NotifyError::invalid("timeout", "must be more than zero"));
        }
        Ok(Self { config })
    }

    /// POSTs `body` to `url`, signed with `secret` at `now_unix` (see the module documentation).
    /// Answers the 2xx status; any other status is [`NotifyError::Status`].
    pub async fn post(
        &self,
        url: &str,
        secret: &[u8],
        event_id: Uuid,
        body: &serde_json::Value,
        now_unix: i64,
    ) -> Result<u16, NotifyError> {
        let url = parse_url(url)?;
        if secret.is_empty() {
            return Err(NotifyError::invalid("secret", "must not be empty"));
        }
        if now_unix < 0 {
            return Err(NotifyError::invalid("now_unix", "must not be before 1970"));
        }
        let body = serde_json::to_vec(body)
            .map_err(|_| NotifyError::invalid("body", "cannot be serialized"))?;
        if body.len() > MAX_EVENT_BYTES {
            return Err(NotifyError::invalid("body", "is larger than 256 KiB"));
        }
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: credex\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Credex-Event-Id: {}\r\nCredex-Signature: {}\r\nConnection: close\r\n\r\n",
            url.target,
            url.authority,
            body.len(),
            event_id.hyphenated(),
            signature(secret, now_unix, &body),
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let deadline = Instant::now() + self.config.timeout;
        let (status, rest) = self.exchange(&url, &request, deadline).await?;
        if (200..=299).contains(&status) {
            return Ok(status);
        }
        let rest = &rest[..rest.len().min(MAX_ERROR_BODY_BYTES)];
        let body = String::from_utf8_lossy(rest).into_owned();
        Err(NotifyError::Status { status, body })
    }

    /// Connects, writes the request and reads the response head: (status, bytes after the
    /// head).
    async fn exchange(
        &self,
        url: &HttpUrl<'_>,
        request: &[u8],
        deadline: Instant,
    ) -> Result<(u16, Vec<u8>), NotifyError> {
        let timeout = self.config.timeout;
        let timed_out =
            |step| move |_: tokio::time::error::Elapsed| NotifyError::Timeout { step, timeout };
        let connect = TcpStream::connect((url.host, url.port));
        let mut stream = timeout_at(deadline, connect)
            .await
            .map_err(timed_out(Step::HttpConnect))?
            .map_err(|source| NotifyError::Connect {
                step: Step::HttpConnect,
                address: host_port(url.host, url.port),
                source,
            })?;
        let step = Step::HttpRequest;
        let write = async {
            stream.write_all(request).await?;
            stream.flush().await
        };
        timeout_at(deadline, write)
            .await
            .map_err(timed_out(step))?
            .map_err(io(step))?;
        let step = Step::HttpResponse;
        timeout_at(deadline, read_response_head(&mut stream))
            .await
            .map_err(timed_out(step))?
    }
}

/// The `Credex-Signature` header value for `body` sent at `now_unix`:
/// `t=<now_unix>,v1=<hex HMAC-SHA256(secret, "<now_unix>.<body>")>`.
/// Whether [`Mailer::send`] takes `address` as a recipient (plain ASCII `local@domain`).
pub fn is_deliverable_address(address: &str) -> bool {
    check_address("to", address).is_ok()
}

/// The host and port of a URL [`Webhooks::post`] takes (`http://` only), or why not.
pub fn webhook_target(url: &str) -> Result<(String, u16), NotifyError> {
    let parsed = parse_url(url)?;
    Ok((parsed.host.to_owned(), parsed.port))
}

pub fn signature(secret: &[u8], now_unix: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(now_unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("t={now_unix},v1={hex}")
}

/// Reads until the end of a final (non-1xx) response head; answers its status and whatever
/// followed the head in what was read.
async fn read_response_head(stream: &mut TcpStream) -> Result<(u16, Vec<u8>), NotifyError> {
    let step = Step::HttpResponse;
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        while let Some(end) = find(&buffer, b"\r\n\r\n") {
            let status = parse_status_line(&buffer[..end]).ok_or(NotifyError::Protocol {
                step,
                reason: "not an HTTP/1.x status line",
            })?;
            let rest = buffer.split_off(end + 4);
            match status {
                101 => {
                    let reason = "the server switched protocols";
                    return Err(NotifyError::Protocol { step, reason });
                }
                100..=199 => buffer = rest,
                _ => return Ok((status, rest)),
            }
        }
        if buffer.len() >= MAX_RESPONSE_BYTES {
            let reason = "the response head is larger than 64 KiB";
            return Err(NotifyError::Protocol { step, reason });
        }
        let room = chunk.len().min(MAX_RESPONSE_BYTES - buffer.len());
        let read = stream.read(&mut chunk[..room]).await.map_err(io(step))?;
        if read == 0 {
            let reason = "the server closed the connection before a full response head";
            return Err(NotifyError::Protocol { step, reason });
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// `HTTP/1.1 204 No Content\r\n…` → 204.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|&byte| byte == b'\r').next()?;
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (version, rest) = rest.split_first()?;
    if !version.is_ascii_digit() {
        return None;
    }
    let rest = rest.strip_prefix(b" ")?;
    let digits = rest.get(..3)?;
    if !matches!(rest.get(3), None | Some(b' ')) {
        return None;
    }
    let mut status = 0_u16;
    for digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        status = status * 10 + u16::from(digit - b'0');
    }
    (100..=599).contains(&status).then_some(status)
}

/// Splits an `http://` URL; refuses other schemes, user info, a missing host or a bad port.
fn parse_url(url: &str) -> Result<HttpUrl<'_>, NotifyError> {
    let invalid = |reason| NotifyError::invalid("url", reason);
    if url.len() > MAX_URL_BYTES {
        return Err(invalid("is longer than 2048 bytes"));
    }
    if !url.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(invalid(
            "must be ASCII without spaces or control characters",
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid("must start with http://"));
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err(invalid(
            "https:// is not supported (this build has no TLS); use an http:// URL",
        ));
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(invalid("only http:// URLs are supported"));
    }
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    let target = match target.chars().next() {
        None => "/".to_owned(),
        Some('?') => format!("/{target}"),
        Some(_) => target.to_owned(),
    };
    if authority.contains('@') {
        return Err(invalid("must not contain user info"));
    }
    let (host, port) = split_authority(authority).ok_or(invalid("has no valid host"))?;
    let port = match port {
        None | Some("") => 80,
        Some(port) => parse_port(port).ok_or(invalid("has an invalid port"))?,
    };
    Ok(HttpUrl {
        host,
        port,
        authority,
        target,
    })
}

/// `host[:port]` or `[v6]` with an optional `:port` → (host, port as written).
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            after => Some(after.strip_prefix(':')?),
        };
        let v6 = |byte: u8| byte.is_ascii_hexdigit() || b":.".contains(&byte);
        (!host.is_empty() && host.bytes().all(v6)).then_some((host, port))?
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let name = |byte: u8| byte.is_ascii_alphanumeric() || b"-._".contains(&byte);
        (!host.is_empty() && host.bytes().all(name)).then_some((host, port))?
    };
    Some((host, port))
}

fn parse_port(port: &str) -> Option<u16> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    port.parse::<u16>().ok().filter(|&port| port != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        let check = |line: &str, expected: Option<(u16, bool, &str)>| {
            let parsed = parse_reply_line(line.as_bytes());
            let parsed = parsed.as_ref().map(|(c, m, t)| (*c, *m, t.as_str()));
            assert_eq!(parsed, expected, "{line:?}");
        };
        check("250-SIZE 1000", Some((250, true, "SIZE 1000")));
        check("250 OK", Some((250, false, "OK")));
        check("354", Some((354, false, "")));
        check("25", None);
        check("2500 x", None);
        check("abc ok", None);
        check("199 nope", None);
    }

    #[test]
    fn subjects() {
        assert_eq!(encode_subject("Price alert").unwrap(), "Price alert");
        assert!(encode_subject("a\r\nBcc: x@y.z").is_err());
        assert!(encode_subject("a\tb").is_err());
        assert_eq!(encode_subject("€").unwrap(), "=?utf-8?B?4oKs?=");
        let long = "é".repeat(100);
        let encoded = encode_subject(&long).unwrap();
        for word in encoded.split("\r\n ") {
            assert!(word.len() <= 75, "{word}");
        }
        let decoded: String = encoded
            .split("\r\n ")
            .map(|word| {
                let b64 = word.strip_prefix("=?utf-8?B?").unwrap().strip_suffix("?=");
                String::from_utf8(STANDARD.decode(b64.unwrap()).unwrap()).unwrap()
            })
            .collect();
        assert_eq!(decoded, long);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            check_address("to", "a.b+c@ex-ample.com").unwrap(),
            "ex-ample.com"
        );
        assert_eq!(check_address("to", "x@[127.0.0.1]").unwrap(), "[127.0.0.1]");
        for bad in [
            "",
            "a",
            "@b.c",
            "a@",
            "a@b..c",
            ".a@b.c",
            "a b@c.d",
            "a@b.c>",
            "<a@b.c>",
            "a@b.c\r\nRCPT TO:<x@y.z>",
            "ä@b.c",
            "a@-b.c",
            "\"a\"@b.c",
        ] {
            assert!(check_address("to", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lines_and_stuffing() {
        let lines: Vec<_> = text_lines("a\r\nb\nc\rd\n").collect();
        assert_eq!(lines, ["a", "b", "c", "d"]);
        let headers = Headers {
            date: "D",
            from: "f@x.y",
            to: "t@x.y",
            subject: "S",
            message_id: "<m@x.y>",
        };
        let data = message(&headers, ".a\n..b\n.\nc", Encoding::SevenBit);
        assert!(
            data.ends_with("\r\n\r\n..a\r\n...b\r\n..\r\nc\r\n.\r\n"),
            "{data}"
        );
    }

    #[test]
    fn quoted_printable_lines() {
        let mut out = Vec::new();
        let line = format!("{}é= end ", "x".repeat(80));
        quoted_printable(&line, &mut |l: &str| out.push(l.to_owned()));
        assert!(out.iter().all(|l| l.len() <= 76), "{out:?}");
        let expected = [
            format!("{}=", "x".repeat(75)),
            format!("{}=C3=A9=3D end=20", "x".repeat(5)),
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn urls() {
        let url = parse_url("http://127.0.0.1:8080/hooks?x=1#frag").unwrap();
        assert_eq!(
            (url.host, url.port, url.authority, url.target.as_str()),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "/hooks?x=1")
        );
        let url = parse_url("HTTP://[::1]?a").unwrap();
        assert_eq!(
            (url.host, url.port, url.target.as_str()),
            ("::1", 80, "/?a")
        );
        for bad in [
            "https://example.com/",
            "ftp://example.com/",
            "example.com",
            "http:///x",
            "http://:80/",
            "http://h:0/",
            "http://h:65536/",
            "http://h:8x/",
            "http://u:p@h/",
            "http://h/a b",
            "http://h/\r\nX: y",
            "http://[::1/",
            "http://h:1:2/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500"), Some(500));
        assert_eq!(parse_status_line(b"HTTP/2 200 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK"), None);
    }
}
