//! Logs: `tracing` to standard error, filtered by `RUST_LOG` (default `info`). Every line
//! logged while a request is handled carries its `request_id` (a span around the request).
//! `CREDEX_LOG_FORMAT=json` writes one JSON object per line, for log pipelines; the default is
//! human-readable text. Secrets never reach logs: configuration prints them as `***`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CREDEX_LOG_FORMAT").is_ok_and(|format| format == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
