//! Rate limits: token buckets per key (a client address, a user, an API key), kept in the
//! process. Integer arithmetic throughout; time comes in as an argument so tests control it.
//!
//! Each `credex` process limits on its own: behind a load balancer spreading requests over `n`
//! processes, a caller may get up to `n` times a limit. That is the usual trade-off of
//! in-process limiters; the limits exist to stop floods and password guessing, not to meter.
//!
//! Memory is bounded: at most `max_keys` buckets. When full, buckets that have refilled
//! completely (indistinguishable from new ones) are dropped; if none has, the oldest half goes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bucket of `burst` requests, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub burst: u32,
    pub per_minute: u32,
}

impl Limit {
    pub const fn new(burst: u32, per_minute: u32) -> Self {
        Self { burst, per_minute }
    }
}

/// One token, in the micro-tokens buckets count in.
const TOKEN: u64 = 1_000_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    micro_tokens: u64,
    updated_us: u64,
}

/// Token buckets for one kind of key.
#[derive(Debug)]
pub struct RateLimiter {
    limit: Limit,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
    epoch: Instant,
}

impl RateLimiter {
    pub fn new(limit: Limit, max_keys: usize) -> Self {
        assert!(
            limit.burst >= 1 && limit.per_minute >= 1,
            "a limit lets something through"
        );
        Self {
            limit,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    /// Takes one request from `key`'s bucket now.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.check_at(key, now)
    }

    /// Takes one request from `key`'s bucket at `now_us` (microseconds on any monotonic clock).
    /// On refusal, says how long until one token is back.
    pub fn check_at(&self, key: &str, now_us: u64) -> Result<(), Duration> {
        let capacity = u64::from(self.limit.burst) * TOKEN;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            self.evict(&mut buckets, now_us, capacity);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            micro_tokens: capacity,
            updated_us: now_us,
        });
        let level = self.level(bucket, now_us, capacity);
        bucket.updated_us = bucket.updated_us.max(now_us);
        if level >= TOKEN {
            bucket.micro_tokens = level - TOKEN;
            Ok(())
        } else {
            bucket.micro_tokens = level;
            let missing = TOKEN - level;
            // µs until `missing` micro-tokens refill at per_minute tokens per 60 s.
            let wait_us = (missing * 60).div_ceil(u64::from(self.limit.per_minute));
            Err(Duration::from_micros(wait_us))
        }
    }

    /// A bucket's level at `now_us`: refilled since its last use, never above capacity.
    fn level(&self, bucket: &Bucket, now_us: u64, capacity: u64) -> u64 {
        let elapsed = now_us.saturating_sub(bucket.updated_us);
        let refill = elapsed.saturating_mul(u64::from(self.limit.per_minute)) / 60;
        bucket.micro_tokens.saturating_add(refill).min(capacity)
    }

    fn evict(&self, buckets: &mut HashMap<String, Bucket>, now_us: u64, capacity: u64) {
        buckets.retain(|_, bucket| self.level(bucket, now_us, capacity) < capacity);
        if buckets.len() >= self.max_keys {
            let mut ages: Vec<u64> = buckets.values().map(|b| b.updated_us).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            buckets.retain(|_, bucket| bucket.updated_us > cutoff);
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The limiters of a server. Only the per-address one applies to every request; the others
/// are for the routes that know who is calling.
#[derive(Debug)]
pub struct RateLimits {
    /// Every request, by client address. Generous: it stops floods, not users.
    pub per_address: RateLimiter,
    /// Sign-in attempts by client address: stricter, against password guessing.
    pub login_per_address: RateLimiter,
    /// Sign-in attempts by e-mail address, wherever they come from.
    pub login_per_email: RateLimiter,
    /// Authenticated requests by caller: each API key, each user.
    pub per_caller: RateLimiter,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_address: RateLimiter::new(Limit::new(2_000, 120_000), 100_000),
            login_per_address: RateLimiter::new(Limit::new(20, 20), 100_000),
            login_per_email: RateLimiter::new(Limit::new(10, 10), 100_000),
            per_caller: RateLimiter::new(Limit::new(1_000, 60_000), 100_000),
        }
    }
}

/// 429 with `Retry-After`, as an error an extractor can return.
#[derive(Debug, thiserror::Error)]
#[error("too many requests")]
pub struct TooMany(pub Duration);

impl actix_web::ResponseError for TooMany {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::TOO_MANY_REQUESTS
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        too_many(self.0)
    }
}

/// A 429 answer, with `Retry-After`.
pub fn too_many(wait: Duration) -> actix_web::HttpResponse {
    actix_web::HttpResponse::TooManyRequests()
        .insert_header(("Retry-After", retry_after_seconds(wait).to_string()))
        .finish()
}

/// Middleware: refuses a client address over its limit with 429 and `Retry-After` (the
/// problem-details middleware around it turns the answer into problem details). The address
/// is the TCP peer's: behind a proxy every caller shares the proxy's, which only loosens the
/// limit per caller.
pub async fn per_address(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let limits = req.app_data::<actix_web::web::Data<RateLimits>>().cloned();
    if let (Some(limits), Some(peer)) = (limits, req.peer_addr()) {
        if let Err(wait) = limits.per_address.check(&peer.ip().to_string()) {
            return Ok(req.into_response(too_many(wait)));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_micros()
        .div_ceil(1_000_000)
        .max(1)
        .try_into()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    #[test]
    fn a_burst_then_the_refill_rate() {
        // 3 at once, then one every 20 s (3 a minute).
        let limiter = RateLimiter::new(Limit::new(3, 3), 100);
        for _ in 0..3 {
            assert_eq!(limiter.check_at("a", 0), Ok(()));
        }
        assert_eq!(limiter.check_at("a", 0), Err(Duration::from_secs(20)));
        assert_eq!(
            limiter.check_at("a", 10 * SECOND),
            Err(Duration::from_secs(10))
        );
        assert_eq!(limiter.check_at("a", 20 * SECOND), Ok(()));
        assert_eq!(
            limiter.check_at("a", 20 * SECOND),
            Err(Duration::from_secs(20))
        );
        // Other keys have their own buckets.
        assert_eq!(limiter.check_at("b", 20 * SECOND), Ok(()));
        // A long pause refills to the burst, not beyond.
        for _ in 0..3 {
            assert_eq!(limiter.check_at("a", 3_600 * SECOND), Ok(()));
        }
        assert!(limiter.check_at("a", 3_600 * SECOND).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let limiter = RateLimiter::new(Limit::new(1, 60), 10);
        for i in 0..1_000_u64 {
            let _ = limiter.check_at(&format!("client-{i}"), i * 1_000);
            assert!(limiter.len() <= 10, "{} buckets", limiter.len());
        }
        // A recent, emptied bucket survives eviction: its caller stays limited.
        assert!(limiter.check_at("client-999", 999_000).is_err());
    }

    #[actix_web::test]
    async fn a_flooding_address_gets_problem_details_with_retry_after() {
        use actix_web::{middleware::from_fn, test, web, App, HttpResponse};
        let limits = web::Data::new(RateLimits {
            per_address: RateLimiter::new(Limit::new(2, 1), 10),
            ..RateLimits::default()
        });
        let app = test::init_service(
            App::new()
                .app_data(limits)
                .wrap(from_fn(per_address))
                .wrap(from_fn(crate::problem::problem_details))
                .route("/", web::get().to(HttpResponse::Ok)),
        )
        .await;
        let peer: std::net::SocketAddr = "192.0.2.7:5555".parse().expect("an address");
        let mut statuses = Vec::new();
        let mut last = None;
        for _ in 0..3 {
            let req = test::TestRequest::get()
                .uri("/")
                .peer_addr(peer)
                .to_request();
            let response = test::call_service(&app, req).await;
            statuses.push(response.status().as_u16());
            last = Some(response);
        }
        assert_eq!(statuses, vec![200, 200, 429]);
        let response = last.expect("a response");
        assert_eq!(
            response.headers().get("retry-after").expect("Retry-After"),
            "60"
        );
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(
            body["type"],
            "https://credex.dev/problems/too-many-requests"
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::from_micros(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1_500)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(20)), 20);
    }
}
