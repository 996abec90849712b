//! `GET /metrics`: the server's metrics in the Prometheus text exposition format 0.0.4.
//!
//! Written by hand, with integer arithmetic only: counters are `u64`, latencies are kept in
//! nanoseconds and rendered as seconds with exact decimals (`1_234_567_000` ns → `1.234567`).
//!
//! | family | type | labels |
//! |---|---|---|
//! | `credex_http_requests_total` | counter | `method`, `route`, `status` |
//! | `credex_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `credex_ledger_transfers_total` | counter | `code`, `result` |
//! | `credex_db_pool_connections` | gauge | `backend`, `state` (`idle`, `in_use`) |
//!
//! **Bounded cardinality.** `route` is the route *template* the request matched
//! (`/v1/accounts/{id}`), never the raw path; a request that matches no route is counted under
//! `route="unmatched"`. A method other than the nine of RFC 9110 and RFC 5789 is counted as
//! `method="other"`. On top of that every family holds at most [`MAX_SERIES`] label sets (see
//! [`Metrics::with_series_limit`]): an observation for a label set beyond the cap is counted in
//! one overflow series whose every label is `"other"`, so a family never renders more than
//! `MAX_SERIES + 1` series. Gauges cannot be summed into an overflow series, so a pool gauge
//! for a backend beyond the cap is dropped instead.
//!
//! **Wiring.** Create one `web::Data<Metrics>` outside the `HttpServer::new` closure (so every
//! worker shares it), add it with `App::app_data`, wrap the app with
//! `actix_web::middleware::from_fn(metrics::http_metrics)` *last* (outermost, so it also sees
//! the problem details and panics that `problem::problem_details` renders), and route
//! `GET /metrics` to [`metrics_handler`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

/// The media type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The most label sets one family holds; further ones are counted in the `"other"` series.
pub const MAX_SERIES: usize = 1_000;

/// The `route` of a request that matched no route (a 404, or a scope's default service).
pub const UNMATCHED: &str = "unmatched";

/// The label value of the overflow series, and of a non-standard method.
pub const OTHER: &str = "other";

/// The upper bounds (`le`) of the latency histogram's buckets, in nanoseconds: 1 ms … 10 s.
pub const LATENCY_BUCKETS_NANOS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

const NANOS_PER_SECOND: u128 = 1_000_000_000;

const HTTP_REQUESTS: &str = "credex_http_requests_total";
const HTTP_DURATION: &str = "credex_http_request_duration_seconds";
const LEDGER_TRANSFERS: &str = "credex_ledger_transfers_total";
const DB_POOL: &str = "credex_db_pool_connections";

/// A callback run at the start of every [`Metrics::render`], to sample gauges at scrape time.
type Collector = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// The server's metrics. `Send + Sync`: share one behind `Arc` or `web::Data`.
pub struct Metrics {
    limit: usize,
    http: Mutex<HttpSeries>,
    transfers: Mutex<Family<u64>>,
    pools: Mutex<Family<PoolGauge>>,
    /// Counters whose totals are kept elsewhere and set at each scrape, by name.
    counters: Mutex<BTreeMap<&'static str, Counter>>,
    collectors: Mutex<Vec<Collector>>,
}

/// A counter family set from totals kept elsewhere ([`Metrics::set_counter`]).
#[derive(Debug, Default)]
struct Counter {
    help: &'static str,
    labels: Vec<&'static str>,
    family: Family<u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Default)]
struct HttpSeries {
    /// Keyed by (method, route, status).
    requests: Family<u64>,
    /// Keyed by (method, route).
    durations: Family<Histogram>,
}

/// A family's series by label values, plus the overflow series (every label `"other"`).
#[derive(Debug)]
struct Family<V> {
    series: BTreeMap<Vec<String>, V>,
    overflow: Option<V>,
}

impl<V> Default for Family<V> {
    fn default() -> Self {
        Self {
            series: BTreeMap::new(),
            overflow: None,
        }
    }
}

impl<V: Default> Family<V> {
    /// The series of `labels`, or the overflow series when the family is full (or when
    /// `labels` are the overflow series' own, so that it is never rendered twice).
    fn series_or_overflow(&mut self, labels: Vec<String>, limit: usize) -> &mut V {
        let is_overflow_key = labels.iter().all(|value| value == OTHER);
        if !is_overflow_key && (self.series.len() < limit || self.series.contains_key(&labels)) {
            self.series.entry(labels).or_default()
        } else {
            self.overflow.get_or_insert_with(V::default)
        }
    }

    /// The series of `labels`, or nothing when the family is full.
    fn series_within_limit(&mut self, labels: Vec<String>, limit: usize) -> Option<&mut V> {
        if self.series.len() < limit || self.series.contains_key(&labels) {
            Some(self.series.entry(labels).or_default())
        } else {
            None
        }
    }

    /// Every series in label order, the overflow series last.
    fn each(&self, arity: usize) -> impl Iterator<Item = (Vec<&str>, &V)> {
        self.series
            .iter()
            .map(|(labels, value)| (labels.iter().map(String::as_str).collect(), value))
            .chain(
                self.overflow
                    .iter()
                    .map(move |value| (vec![OTHER; arity], value)),
            )
    }
}

/// Counts per bucket (not cumulative; rendering accumulates), over `+Inf`, and the sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS_NANOS.len()],
    count: u64,
    sum_nanos: u128,
}

impl Histogram {
    fn observe(&mut self, nanos: u128) {
        if let Some(index) = LATENCY_BUCKETS_NANOS
            .iter()
            .position(|&bound| nanos <= u128::from(bound))
        {
            self.buckets[index] = self.buckets[index].saturating_add(1);
        }
        self.count = self.count.saturating_add(1);
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PoolGauge {
    idle: u32,
    in_use: u32,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data are plain counters, consistent after any panic: keep counting.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Metrics {
    /// Metrics with the default cap of [`MAX_SERIES`] label sets per family.
    pub fn new() -> Self {
        Self::with_series_limit(MAX_SERIES)
    }

    /// Metrics holding at most `limit` label sets per family (plus the overflow series).
    pub fn with_series_limit(limit: usize) -> Self {
        Self {
            limit,
            http: Mutex::default(),
            transfers: Mutex::default(),
            pools: Mutex::default(),
            counters: Mutex::default(),
            collectors: Mutex::default(),
        }
    }

    /// Records one answered HTTP request: `route` is the matched route template (`None` when
    /// nothing matched), `elapsed` the time until the response head was ready.
    pub fn observe_http(
        &self,
        method: &Method,
        route: Option<&str>,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        let route = route.unwrap_or(UNMATCHED);
        let requests_key = vec![
            method.to_owned(),
            route.to_owned(),
            status.as_u16().to_string(),
        ];
        let durations_key = vec![method.to_owned(), route.to_owned()];
        let nanos = elapsed.as_nanos();
        let mut http = lock(&self.http);
        let count = http.requests.series_or_overflow(requests_key, self.limit);
        *count = count.saturating_add(1);
        http.durations
            .series_or_overflow(durations_key, self.limit)
            .observe(nanos);
    }

    /// Counts `count` transfers of transfer code `code` (`"grant"`, …) that ended in `result`
    /// (`"ok"` or a result code such as `"exceeds_credits"`).
    pub fn record_transfers(&self, code: &str, result: &str, count: u64) {
        let key = vec![code.to_owned(), result.to_owned()];
        let mut transfers = lock(&self.transfers);
        let total = transfers.series_or_overflow(key, self.limit);
        *total = total.saturating_add(count);
    }

    /// Sets `credex_ledger_transfers_total{code, result}` to a total counted elsewhere (the
    /// ledger's own counters, read at each scrape).
    pub fn set_transfers_total(&self, code: &str, result: &str, total: u64) {
        let key = vec![code.to_owned(), result.to_owned()];
        let mut transfers = lock(&self.transfers);
        *transfers.series_or_overflow(key, self.limit) = total;
    }

    /// Sets the connection pool gauges of `backend`: `size` connections open, `idle` of them
    /// idle (so `size - idle` in use).
    pub fn set_pool(&self, backend: &str, size: u32, idle: u32) {
        let mut pools = lock(&self.pools);
        if let Some(gauge) = pools.series_within_limit(vec![backend.to_owned()], self.limit) {
            *gauge = PoolGauge {
                idle,
                in_use: size.saturating_sub(idle),
            };
        }
    }

    /// Sets the counter `name{labels}` to a total counted elsewhere (read at each scrape). The
    /// first call names the family's help text and label names; label values beyond the
    /// series limit fall into the overflow series.
    pub fn set_counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        total: u64,
    ) {
        let mut counters = lock(&self.counters);
        let counter = counters.entry(name).or_insert_with(|| Counter {
            help,
            labels: labels.iter().map(|(label, _)| *label).collect(),
            family: Family::default(),
        });
        let key = labels
            .iter()
            .map(|(_, value)| (*value).to_owned())
            .collect();
        *counter.family.series_or_overflow(key, self.limit) = total;
    }

    /// Runs `collector` at the start of every [`render`](Self::render), so that gauges such as
    /// the pool's are sampled when Prometheus scrapes (e.g. `move |m| m.set_pool(…)`).
    pub fn on_render(&self, collector: impl Fn(&Metrics) + Send + Sync + 'static) {
        lock(&self.collectors).push(Arc::new(collector));
    }

    /// Every metric in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        // Run the collectors without holding their lock, so one may register another.
        let collectors = lock(&self.collectors).clone();
        for collector in &collectors {
            collector(self);
        }

        let mut out = String::new();
        {
            let http = lock(&self.http);
            header(
                &mut out,
                HTTP_REQUESTS,
                "counter",
                "HTTP requests answered, by method, route template and status.",
            );
            for (labels, count) in http.requests.each(3) {
                sample(
                    &mut out,
                    HTTP_REQUESTS,
                    &[
                        ("method", labels[0]),
                        ("route", labels[1]),
                        ("status", labels[2]),
                    ],
                    &count.to_string(),
                );
            }
            header(
                &mut out,
                HTTP_DURATION,
                "histogram",
                "Time until the response head was ready, by method and route template.",
            );
            for (labels, histogram) in http.durations.each(2) {
                render_histogram(
                    &mut out,
                    &[("method", labels[0]), ("route", labels[1])],
                    histogram,
                );
            }
        }
        {
            let transfers = lock(&self.transfers);
            header(
                &mut out,
                LEDGER_TRANSFERS,
                "counter",
                "Ledger transfers decided, by transfer code and result.",
            );
            for (labels, count) in transfers.each(2) {
                sample(
                    &mut out,
                    LEDGER_TRANSFERS,
                    &[("code", labels[0]), ("result", labels[1])],
                    &count.to_string(),
                );
            }
        }
        {
            let pools = lock(&self.pools);
            header(
                &mut out,
                DB_POOL,
                "gauge",
                "Database pool connections, by backend and state (idle or in use).",
            );
            for (labels, gauge) in pools.each(1) {
                for (state, value) in [("idle", gauge.idle), ("in_use", gauge.in_use)] {
                    sample(
                        &mut out,
                        DB_POOL,
                        &[("backend", labels[0]), ("state", state)],
                        &value.to_string(),
                    );
                }
            }
        }
        {
            let counters = lock(&self.counters);
            for (name, counter) in counters.iter() {
                header(&mut out, name, "counter", counter.help);
                for (values, total) in counter.family.each(counter.labels.len()) {
                    let labels: Vec<(&str, &str)> =
                        counter.labels.iter().copied().zip(values).collect();
                    sample(&mut out, name, &labels, &total.to_string());
                }
            }
        }
        out
    }
}

fn render_histogram(out: &mut String, labels: &[(&str, &str)], histogram: &Histogram) {
    let bucket_name = format!("{HTTP_DURATION}_bucket");
    let mut cumulative = 0_u64;
    for (bound, count) in LATENCY_BUCKETS_NANOS.iter().zip(histogram.buckets) {
        cumulative = cumulative.saturating_add(count);
        let le = seconds(u128::from(*bound));
        let mut with_le = labels.to_vec();
        with_le.push(("le", &le));
        sample(out, &bucket_name, &with_le, &cumulative.to_string());
    }
    let mut with_le = labels.to_vec();
    with_le.push(("le", "+Inf"));
    sample(out, &bucket_name, &with_le, &histogram.count.to_string());
    sample(
        out,
        &format!("{HTTP_DURATION}_sum"),
        labels,
        &seconds(histogram.sum_nanos),
    );
    sample(
        out,
        &format!("{HTTP_DURATION}_count"),
        labels,
        &histogram.count.to_string(),
    );
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (index, (label, value)) in labels.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// A label value as the text format wants it: `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Nanoseconds as seconds in exact decimal, without trailing zeros: `2_500_000` → `0.0025`.
fn seconds(nanos: u128) -> String {
    let whole = nanos / NANOS_PER_SECOND;
    let fraction = nanos % NANOS_PER_SECOND;
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// The method as a label: one of the nine standard methods, else `"other"` (methods are
/// open-ended tokens, so they would make cardinality unbounded).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => OTHER,
    }
}

/// Middleware for `actix_web::middleware::from_fn`: records both HTTP metrics for every
/// request into the `web::Data<Metrics>` of the app. Without that app data it passes requests
/// through and warns once.
///
/// The route template is read before the request goes down the chain (the request does not
/// come back with an error), from the app's resource map by path; a path that no resource
/// matches is `"unmatched"`. An error leaving the chain (e.g. the problem details of a panic)
/// is counted with its status. Latency is measured until the response head is ready, not
/// until the body is sent.
pub async fn http_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(metrics) = req.app_data::<web::Data<Metrics>>().cloned() else {
        static MISSING: Once = Once::new();
        MISSING.call_once(|| {
            tracing::warn!("no web::Data<Metrics> in the app: HTTP requests are not counted");
        });
        return next.call(req).await;
    };
    let started = Instant::now();
    let method = req.method().clone();
    let route = req.match_pattern();
    let outcome = next.call(req).await;
    let status = match &outcome {
        Ok(response) => response.status(),
        Err(error) => error.as_response_error().status_code(),
    };
    metrics.observe_http(&method, route.as_deref(), status, started.elapsed());
    outcome
}

/// `GET /metrics`: the text exposition format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every metric, in the Prometheus text format 0.0.4", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 405, description = "Only GET is allowed", body = crate::problem::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn metrics_handler(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(metrics.render())
}

#[cfg(test)]
mod tests {
    use actix_web::http::header;
    use actix_web::middleware::from_fn;
    use actix_web::test::{call_service, init_service, read_body, try_call_service, TestRequest};
    use actix_web::App;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The header lines of every family, in order, for outputs with nothing else in a family.
    fn headers_of(family: &str) -> &'static str {
        match family {
            HTTP_REQUESTS => "# HELP credex_http_requests_total HTTP requests answered, by method, route template and status.\n# TYPE credex_http_requests_total counter\n",
            HTTP_DURATION => "# HELP credex_http_request_duration_seconds Time until the response head was ready, by method and route template.\n# TYPE credex_http_request_duration_seconds histogram\n",
            LEDGER_TRANSFERS => "# HELP credex_ledger_transfers_total Ledger transfers decided, by transfer code and result.\n# TYPE credex_ledger_transfers_total counter\n",
            DB_POOL => "# HELP credex_db_pool_connections Database pool connections, by backend and state (idle or in use).\n# TYPE credex_db_pool_connections gauge\n",
            _ => unreachable!(),
        }
    }

    fn buckets(labels: &str, cumulative: [u64; 14], sum: &str) -> String {
        let les = [
            "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
            "5", "10", "+Inf",
        ];
        let mut out = String::new();
        for (le, count) in les.iter().zip(cumulative) {
            out.push_str(&format!(
                "credex_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}\n"
            ));
        }
        out.push_str(&format!(
            "credex_http_request_duration_seconds_sum{{{labels}}} {sum}\n"
        ));
        out.push_str(&format!(
            "credex_http_request_duration_seconds_count{{{labels}}} {}\n",
            cumulative[13]
        ));
        out
    }

    #[test]
    fn an_empty_registry_renders_every_family_header() {
        let expected = [HTTP_REQUESTS, HTTP_DURATION, LEDGER_TRANSFERS, DB_POOL]
            .map(headers_of)
            .concat();
        assert_eq!(Metrics::new().render(), expected);
    }

    #[test]
    fn renders_exact_counters_histograms_and_gauges() {
        let metrics = Metrics::new();
        let route = Some("/v1/accounts/{id}");
        // Bucket edges: an observation equal to a bound counts in that bucket (`le`), one
        // nanosecond more in the next; above the last bound only in `+Inf`.
        metrics.observe_http(&Method::GET, route, StatusCode::OK, MS);
        metrics.observe_http(
            &Method::GET,
            route,
            StatusCode::OK,
            MS + Duration::from_nanos(1),
        );
        metrics.observe_http(
            &Method::GET,
            route,
            StatusCode::NOT_FOUND,
            Duration::from_secs(10),
        );
        metrics.observe_http(
            &Method::GET,
            route,
            StatusCode::OK,
            Duration::from_micros(10_234_567),
        );
        metrics.observe_http(&Method::POST, None, StatusCode::NOT_FOUND, Duration::ZERO);
        metrics.record_transfers("grant", "ok", 3);
        metrics.record_transfers("grant", "ok", 2);
        metrics.record_transfers("spend", "exceeds_credits", 1);
        metrics.set_pool("sqlite", 4, 1);
        metrics.set_pool("sqlite", 5, 2);
        metrics.set_pool("postgres", 1, 3); // idle above size: nothing in use, no underflow

        let account = r#"method="GET",route="/v1/accounts/{id}""#;
        let expected = [
            headers_of(HTTP_REQUESTS),
            "credex_http_requests_total{method=\"GET\",route=\"/v1/accounts/{id}\",status=\"200\"} 3\n",
            "credex_http_requests_total{method=\"GET\",route=\"/v1/accounts/{id}\",status=\"404\"} 1\n",
            "credex_http_requests_total{method=\"POST\",route=\"unmatched\",status=\"404\"} 1\n",
            headers_of(HTTP_DURATION),
            // 1 ms + (1 ms + 1 ns) + 10 s + 10.234567 s = 20.236567001 s
            &buckets(
                account,
                [1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 4],
                "20.236567001",
            ),
            &buckets(
                r#"method="POST",route="unmatched""#,
                [1; 14],
                "0",
            ),
            headers_of(LEDGER_TRANSFERS),
            "credex_ledger_transfers_total{code=\"grant\",result=\"ok\"} 5\n",
            "credex_ledger_transfers_total{code=\"spend\",result=\"exceeds_credits\"} 1\n",
            headers_of(DB_POOL),
            "credex_db_pool_connections{backend=\"postgres\",state=\"idle\"} 3\n",
            "credex_db_pool_connections{backend=\"postgres\",state=\"in_use\"} 0\n",
            "credex_db_pool_connections{backend=\"sqlite\",state=\"idle\"} 2\n",
            "credex_db_pool_connections{backend=\"sqlite\",state=\"in_use\"} 3\n",
        ]
        .concat();
        assert_eq!(metrics.render(), expected);
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        metrics.record_transfers("a\"b\\c\nd", "ok", 1);
        let rendered = metrics.render();
        assert!(
            rendered.contains(
                "credex_ledger_transfers_total{code=\"a\\\"b\\\\c\\nd\",result=\"ok\"} 1\n"
            ),
            "{rendered}"
        );
        // Nothing but the escaped form: every line is one sample or one comment.
        assert_eq!(rendered.lines().count(), 8 + 1);
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(1), "0.000000001");
        assert_eq!(seconds(1_234_567_000), "1.234567");
        assert_eq!(seconds(2_500_000), "0.0025");
        assert_eq!(seconds(10_000_000_000), "10");
        assert_eq!(
            seconds(u128::MAX),
            format!("{}.768211455", u128::MAX / 1_000_000_000)
        );
    }

    #[test]
    fn non_standard_methods_are_other() {
        let metrics = Metrics::new();
        let custom = Method::from_bytes(b"BREW").unwrap();
        metrics.observe_http(&custom, Some("/pot"), StatusCode::OK, MS);
        let rendered = metrics.render();
        assert!(
            rendered.contains(
                "credex_http_requests_total{method=\"other\",route=\"/pot\",status=\"200\"} 1\n"
            ),
            "{rendered}"
        );
        assert!(!rendered.contains("BREW"));
    }

    #[test]
    fn label_sets_beyond_the_cap_count_in_the_other_series() {
        let metrics = Metrics::with_series_limit(2);
        for route in ["/a", "/b", "/c", "/d", "/a"] {
            metrics.observe_http(&Method::GET, Some(route), StatusCode::OK, MS);
        }
        // A label set that is the overflow series' own is counted there, never twice.
        metrics.record_transfers("other", "other", 7);
        for code in ["grant", "spend", "buyback"] {
            metrics.record_transfers(code, "ok", 1);
        }
        for backend in ["sqlite", "postgres", "mysql"] {
            metrics.set_pool(backend, 2, 1);
        }
        let rendered = metrics.render();
        let samples: Vec<&str> = rendered
            .lines()
            .filter(|line| {
                !line.starts_with('#') && !line.contains("_bucket") && !line.contains("_sum")
            })
            .collect();
        assert_eq!(
            samples,
            [
                "credex_http_requests_total{method=\"GET\",route=\"/a\",status=\"200\"} 2",
                "credex_http_requests_total{method=\"GET\",route=\"/b\",status=\"200\"} 1",
                "credex_http_requests_total{method=\"other\",route=\"other\",status=\"other\"} 2",
                "credex_http_request_duration_seconds_count{method=\"GET\",route=\"/a\"} 2",
                "credex_http_request_duration_seconds_count{method=\"GET\",route=\"/b\"} 1",
                "credex_http_request_duration_seconds_count{method=\"other\",route=\"other\"} 2",
                "credex_ledger_transfers_total{code=\"grant\",result=\"ok\"} 1",
                "credex_ledger_transfers_total{code=\"spend\",result=\"ok\"} 1",
                "credex_ledger_transfers_total{code=\"other\",result=\"other\"} 8",
                // Gauges beyond the cap are dropped: they cannot be summed.
                "credex_db_pool_connections{backend=\"postgres\",state=\"idle\"} 1",
                "credex_db_pool_connections{backend=\"postgres\",state=\"in_use\"} 1",
                "credex_db_pool_connections{backend=\"sqlite\",state=\"idle\"} 1",
                "credex_db_pool_connections{backend=\"sqlite\",state=\"in_use\"} 1",
            ]
        );
    }

    #[test]
    fn collectors_sample_gauges_at_render_time() {
        let metrics = Metrics::new();
        let size = Arc::new(std::sync::atomic::AtomicU32::new(3));
        let seen = size.clone();
        metrics.on_render(move |m| {
            m.set_pool("sqlite", seen.load(std::sync::atomic::Ordering::Relaxed), 1);
        });
        assert!(metrics
            .render()
            .contains("credex_db_pool_connections{backend=\"sqlite\",state=\"in_use\"} 2\n"));
        size.store(9, std::sync::atomic::Ordering::Relaxed);
        assert!(metrics
            .render()
            .contains("credex_db_pool_connections{backend=\"sqlite\",state=\"in_use\"} 8\n"));
    }

    #[test]
    fn metrics_are_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Metrics>();
        let metrics = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        metrics.observe_http(&Method::GET, Some("/x"), StatusCode::OK, MS);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(metrics.render().contains(
            "credex_http_requests_total{method=\"GET\",route=\"/x\",status=\"200\"} 4000\n"
        ));
    }

    #[actix_web::test]
    async fn the_middleware_counts_route_templates_and_unmatched_requests() {
        let metrics = web::Data::new(Metrics::new());
        let app = init_service(
            App::new()
                .wrap(from_fn(crate::problem::problem_details))
                .wrap(from_fn(http_metrics))
                .app_data(metrics.clone())
                .service(
                    web::resource("/v1/accounts/{id}")
                        .route(web::get().to(|| async { HttpResponse::Ok().finish() })),
                )
                .service(
                    web::scope("/v1/orgs/{org}").service(
                        web::resource("/members/{user}")
                            .route(web::get().to(|| async { HttpResponse::NoContent().finish() })),
                    ),
                )
                .service(web::resource("/panic").route(web::get().to(|| async {
                    if std::hint::black_box(true) {
                        panic!("boom");
                    }
                    HttpResponse::Ok().finish()
                })))
                .service(web::resource("/metrics").route(web::get().to(metrics_handler))),
        )
        .await;
        let requests = [
            (Method::GET, "/v1/accounts/0190c8a2-1111"),
            (Method::GET, "/v1/accounts/42"),
            (Method::GET, "/v1/orgs/acme/members/bob"),
            (Method::DELETE, "/v1/accounts/42"),
            (Method::GET, "/v1/accounts/42/nowhere"),
            (Method::GET, "/v1/orgs/acme/unknown"),
            (Method::GET, "/panic"),
        ];
        let mut statuses = Vec::new();
        for (method, uri) in requests {
            let req = TestRequest::default().method(method).uri(uri).to_request();
            let status = match try_call_service(&app, req).await {
                Ok(response) => response.status(),
                Err(error) => error.error_response().status(),
            };
            statuses.push(status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 204, 405, 404, 404, 500]);

        let response = call_service(&app, TestRequest::get().uri("/metrics").to_request()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).unwrap(),
            CONTENT_TYPE
        );
        let body = read_body(response).await;
        let rendered = std::str::from_utf8(&body).unwrap();
        let counters: Vec<&str> = rendered
            .lines()
            .filter(|line| {
                line.starts_with("credex_http_requests_total")
                    || line.starts_with("credex_http_request_duration_seconds_count")
            })
            .collect();
        assert_eq!(
            counters,
            [
                "credex_http_requests_total{method=\"DELETE\",route=\"/v1/accounts/{id}\",status=\"405\"} 1",
                "credex_http_requests_total{method=\"GET\",route=\"/panic\",status=\"500\"} 1",
                "credex_http_requests_total{method=\"GET\",route=\"/v1/accounts/{id}\",status=\"200\"} 2",
                "credex_http_requests_total{method=\"GET\",route=\"/v1/orgs/{org}/members/{user}\",status=\"204\"} 1",
                "credex_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 2",
                "credex_http_request_duration_seconds_count{method=\"DELETE\",route=\"/v1/accounts/{id}\"} 1",
                "credex_http_request_duration_seconds_count{method=\"GET\",route=\"/panic\"} 1",
                "credex_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/accounts/{id}\"} 2",
                "credex_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/orgs/{org}/members/{user}\"} 1",
                "credex_http_request_duration_seconds_count{method=\"GET\",route=\"unmatched\"} 2",
            ],
            "{rendered}"
        );
        assert!(
            !rendered.contains("/v1/accounts/42"),
            "no raw path: {rendered}"
        );
        assert!(!rendered.contains("acme"), "no raw path: {rendered}");
        // The scrape itself was counted after it rendered.
        assert!(metrics.render().contains(
            "credex_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"} 1\n"
        ));
    }

    #[actix_web::test]
    async fn without_metrics_app_data_requests_pass_through() {
        let app = init_service(App::new().wrap(from_fn(http_metrics)).route(
            "/ok",
            web::get().to(|| async { HttpResponse::Ok().finish() }),
        ))
        .await;
        let response = call_service(&app, TestRequest::get().uri("/ok").to_request()).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}
