//! Price alerts: an org asks to be told, by e-mail or by a signed webhook, when a market's best
//! decayed price falls to a level or below. An alert fires once (then it is spent).
//!
//! A job checks every few seconds: for each market still trading, the best price now; the
//! active alerts that price triggers are claimed one by one (a lease, so several processes
//! never deliver one alert at once), delivered, and recorded. A failed delivery is retried
//! after 1, 5, 30 and 120 minutes, then the alert fails with the last error. Delivery is at
//! least once: a process that dies after sending and before recording lets the lease run out,
//! and the alert is sent again (the webhook's `Credex-Event-Id` is the alert's id, the same on
//! every attempt, so receivers can drop repeats).
//!
//! Webhooks go to `http://` URLs only, and by default never to loopback, private, link-local
//! or otherwise internal addresses (checked on the resolved addresses before each delivery),
//! so an org cannot make Credex call into the provider's network.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use credex_ledger::{AssetCode, Timestamp};
use credex_store::{AlertChannel, AlertOutcome, AlertRecord, Store, StoreError};
use serde_json::json;

use crate::market::Market;
use crate::notify::{Mailer, MailerConfig, NotifyError, Webhooks, WebhooksConfig};
use crate::views::rfc3339;

/// How long a claim lasts: longer than any delivery's timeouts.
const LEASE_MICROS: i64 = 120_000_000;
/// Delays before the 2nd, 3rd, … delivery attempt, in minutes; then the alert fails.
const RETRY_MINUTES: [i64; 4] = [1, 5, 30, 120];
/// The most alerts one pass delivers per market.
const PASS_MAX: u32 = 200;

/// Where alerts are delivered.
#[derive(Debug)]
pub struct Alerts {
    mailer: Option<Mailer>,
    webhooks: Webhooks,
    allow_private: bool,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertReport {
    pub delivered: u64,
    pub failed: u64,
}

impl Alerts {
    /// Alerts delivering through `smtp` (host, port, sender) if given, and webhooks.
    pub fn new(
        smtp: Option<&(String, u16, String)>,
        allow_private: bool,
    ) -> Result<Self, NotifyError> {
        let mailer = smtp
            .map(|(host, port, from)| {
                Mailer::new(MailerConfig {
                    host: host.clone(),
                    port: *port,
                    from: from.clone(),
                    timeout: Duration::from_secs(20),
                })
            })
            .transpose()?;
        let webhooks = Webhooks::new(WebhooksConfig {
            timeout: Duration::from_secs(10),
        })?;
        Ok(Self {
            mailer,
            webhooks,
            allow_private,
        })
    }

    /// Whether e-mail can be sent at all.
    pub fn sends_email(&self) -> bool {
        self.mailer.is_some()
    }

    /// Why a webhook URL is refused, if it is: not `http://`, or (unless allowed) naming an
    /// internal address literally. Host names are checked again, resolved, at delivery.
    pub fn check_webhook_url(&self, url: &str) -> Result<(), String> {
        let (host, _) = crate::notify::webhook_target(url).map_err(|error| error.to_string())?;
        if self.allow_private {
            return Ok(());
        }
        if host.eq_ignore_ascii_case("localhost")
            || host.to_ascii_lowercase().ends_with(".localhost")
        {
            return Err(format!("{host} is not a public address"));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            if !is_public(ip) {
                return Err(format!("{ip} is not a public address"));
            }
        }
        Ok(())
    }

    /// Checks every market still trading and delivers what its best price triggers.
    pub async fn run(&self, market: &Market) -> Result<AlertReport, StoreError> {
        let store = market.ledger().store().clone();
        let now = store.clock().now();
        let mut report = AlertReport::default();
        for record in store.markets(None).await? {
            if record.cycle_end <= now {
                continue;
            }
            let Ok(info) = crate::market::MarketInfo::parse(record) else {
                continue;
            };
            let Ok(Some((price, _))) = market.best(&info).await else {
                continue;
            };
            let record = &info.record;
            let alerts = store
                .triggered_alerts(&record.asset, price, now, PASS_MAX)
                .await?;
            for alert in alerts {
                let lease = now.plus_micros(LEASE_MICROS);
                if !store.claim_alert(alert.id, now, lease).await? {
                    continue;
                }
                let outcome = self
                    .deliver(store.as_ref(), &alert, &record.asset, price)
                    .await;
                match &outcome {
                    AlertOutcome::Delivered { .. } => report.delivered += 1,
                    AlertOutcome::Failed { error, .. } => {
                        tracing::warn!(alert = %alert.id, %error, "a price alert's delivery failed");
                        report.failed += 1;
                    }
                }
                store.finish_alert(alert.id, &outcome).await?;
            }
        }
        Ok(report)
    }

    async fn deliver(
        &self,
        store: &dyn Store,
        alert: &AlertRecord,
        asset: &AssetCode,
        price: u64,
    ) -> AlertOutcome {
        let at = store.clock().now();
        let result = match alert.channel {
            AlertChannel::Email => self.email(alert, asset, price, at).await,
            AlertChannel::Webhook => self.webhook(alert, asset, price, at).await,
        };
        match result {
            Ok(()) => AlertOutcome::Delivered { at, price },
            Err(error) => {
                let attempt = usize::try_from(alert.attempts).unwrap_or(usize::MAX);
                let retry_at = RETRY_MINUTES
                    .get(attempt)
                    .map(|minutes| at.plus_micros(minutes * 60_000_000));
                AlertOutcome::Failed {
                    at,
                    price,
                    error,
                    retry_at,
                }
            }
        }
    }

    async fn email(
        &self,
        alert: &AlertRecord,
        asset: &AssetCode,
        price: u64,
        at: Timestamp,
    ) -> Result<(), String> {
        let mailer = self
            .mailer
            .as_ref()
            .ok_or_else(|| "e-mail delivery is not configured".to_owned())?;
        let subject = format!("Credex price alert: {asset} at {price} µCR per 1M tokens");
        let text = format!(
            "The best price in the market {asset} is {price} µCR per 1M tokens as of {}, at or \
             below your alert's level of {} µCR.\n\nAlert {} of org {} is now spent; create a \
             new one to be told again.\n",
            rfc3339(at),
            alert.below_per_1m_micro_cr,
            alert.id,
            alert.org
        );
        mailer
            .send(&alert.target, &subject, &text)
            .await
            .map_err(|error| error.to_string())
    }

    async fn webhook(
        &self,
        alert: &AlertRecord,
        asset: &AssetCode,
        price: u64,
        at: Timestamp,
    ) -> Result<(), String> {
        if !self.allow_private {
            refuse_internal(&alert.target).await?;
        }
        let secret = alert
            .secret
            .as_deref()
            .ok_or_else(|| "a webhook alert without a secret".to_owned())?;
        let event = json!({
            "type": "price_alert.triggered",
            "alert_id": alert.id.to_string(),
            "org_id": alert.org.to_string(),
            "asset": asset.as_str(),
            "below_per_1m_micro_cr": alert.below_per_1m_micro_cr,
            "price_per_1m_micro_cr": price,
            "at": rfc3339(at),
        });
        let unix = at.as_micros().div_euclid(1_000_000);
        self.webhooks
            .post(&alert.target, secret.as_bytes(), alert.id, &event, unix)
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

/// Why a webhook URL may not be posted to now: not `http://`, or its host resolves to an
/// address that is not public ([`is_public`]). Checked before each delivery, so a name that
/// later resolves inward is refused too.
pub async fn refuse_internal(url: &str) -> Result<(), String> {
    let (host, port) = crate::notify::webhook_target(url).map_err(|error| error.to_string())?;
    let addresses = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|error| format!("{host}: {error}"))?;
    for address in addresses {
        if !is_public(address.ip()) {
            return Err(format!(
                "{host} resolves to {}, not a public address",
                address.ip()
            ));
        }
    }
    Ok(())
}

/// Whether an address is on the public internet (not loopback, private, link-local, shared,
/// documentation, multicast, unspecified or otherwise reserved).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// Runs the alert checks every `period` until `stop`.
pub fn spawn(
    alerts: Arc<Alerts>,
    market: Arc<Market>,
    period: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    crate::jobs::every(period, stop, move || {
        let (alerts, market) = (alerts.clone(), market.clone());
        async move {
            match alerts.run(&market).await {
                Ok(report) if report.delivered > 0 || report.failed > 0 => {
                    tracing::info!(
                        delivered = report.delivered,
                        failed = report.failed,
                        "price alerts"
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "checking price alerts failed; the next pass retries");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(
                !is_public(internal.parse().expect("an address")),
                "{internal}"
            );
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(public.parse().expect("an address")), "{public}");
        }
    }

    #[test]
    fn webhook_urls_are_checked() {
        let alerts = Alerts::new(None, false).expect("alerts");
        assert!(alerts
            .check_webhook_url("http://hooks.example.com/credex")
            .is_ok());
        for refused in [
            "https://hooks.example.com/",
            "http://127.0.0.1:8080/",
            "http://localhost/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
        ] {
            assert!(alerts.check_webhook_url(refused).is_err(), "{refused}");
        }
        let open = Alerts::new(None, true).expect("alerts");
        assert!(open.check_webhook_url("http://127.0.0.1:8080/").is_ok());
    }
}
