//! Fraud review: finds the patterns the spec asks admins to look at and raises a flag on each
//! org involved, with the figures behind it. While an org has an open flag the market refuses
//! its trades (see [`crate::market::FraudPolicy::check_trader`]); an admin clears the flag.
//!
//! The patterns, over the database as it is (the thresholds are [`ReviewPolicy`]'s):
//! - **sells_allotment**: in each of the last two closed cycles the org sold (to other orgs or
//!   back to the provider) at least 80% of its allotment and spent at most 10% of it;
//! - **repeated_counterparty**: two orgs traded with each other (either way) at least 5 times
//!   in the last 30 days (one flag per org, other org and calendar month);
//! - **shared_email_domain**: at least 3 orgs created in the last 30 days have owners at one
//!   e-mail domain (public webmail domains aside);
//! - **shared_address_block**: at least 3 orgs created in the last 30 days had members sign in
//!   from one address block (IPv4 /24, IPv6 /48).
//!
//! A scan is idempotent (a flag exists once per org, kind and subject) and safe in every
//! process at once; `credex serve` scans every five minutes and admins on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use credex_ledger::{OrgId, Timestamp};
use credex_store::{AuditAction, AuditEntry, FlagKind, NewFlag, SellerFigures, Store, StoreError};
use serde::Serialize;
use uuid::Uuid;

use crate::cycles::CycleId;

const DAY_MICROS: i64 = 86_400_000_000;

/// Webmail domains anyone can sign up at: sharing one says nothing.
const PUBLIC_DOMAINS: [&str; 14] = [
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "yahoo.com",
    "icloud.com",
    "me.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.de",
    "gmx.net",
    "mail.ru",
];

/// The thresholds of the patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReviewPolicy {
    /// Sold at least this share of the allotment (percent) …
    pub sold_percent: u64,
    /// … and spent at most this share (percent), in each of `cycles` closed cycles in a row.
    pub spent_percent: u64,
    pub cycles: usize,
    /// Trades between two orgs within `window_days` that make a pattern.
    pub pair_trades: u64,
    /// New orgs (created within `window_days`) sharing a domain or block that make a cluster.
    pub cluster_orgs: usize,
    pub window_days: i64,
}

impl Default for ReviewPolicy {
    fn default() -> Self {
        Self {
            sold_percent: 80,
            spent_percent: 10,
            cycles: 2,
            pair_trades: 5,
            cluster_orgs: 3,
            window_days: 30,
        }
    }
}

/// What a scan found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ScanReport {
    /// Flags this scan raised (flags raised before are not counted again).
    pub raised: u64,
    pub sells_allotment: u64,
    pub repeated_counterparty: u64,
    pub shared_email_domain: u64,
    pub shared_address_block: u64,
}

/// The address block of a sign-in: `203.0.113.0/24`, `2001:db8:1::/48`.
pub fn address_block(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => address_block(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
            }
        },
    }
}

/// A candidate flag before it is raised.
struct Finding {
    org: OrgId,
    kind: FlagKind,
    subject: String,
    reason: String,
    details: serde_json::Value,
}

/// Finds every pattern now and raises the flags not raised before.
pub async fn scan(
    store: &dyn Store,
    policy: &ReviewPolicy,
    now: Timestamp,
) -> Result<ScanReport, StoreError> {
    let mut findings = Vec::new();
    findings.extend(sells_allotment(store, policy).await?);
    findings.extend(repeated_counterparty(store, policy, now).await?);
    let since = now.plus_micros(-policy.window_days.saturating_mul(DAY_MICROS));
    let owners = store.new_org_owners(since).await?;
    let domains = owners.into_iter().filter_map(|(org, email)| {
        let domain = email.rsplit_once('@')?.1.to_ascii_lowercase();
        (!PUBLIC_DOMAINS.contains(&domain.as_str())).then_some((org, domain))
    });
    findings.extend(clusters(
        domains,
        policy,
        FlagKind::SharedEmailDomain,
        "owners' e-mail domain",
    ));
    let blocks = store.new_org_blocks(since).await?;
    findings.extend(clusters(
        blocks.into_iter(),
        policy,
        FlagKind::SharedAddressBlock,
        "sign-in address block",
    ));

    let mut report = ScanReport::default();
    for finding in findings {
        let action = AuditAction::parse("review.flag").map_err(corrupt)?;
        let audit = AuditEntry::new(
            now,
            action,
            finding.org.to_string(),
            serde_json::json!({
                "kind": finding.kind.as_str(),
                "subject": finding.subject,
                "reason": finding.reason,
            }),
        )
        .map_err(corrupt)?
        .in_org(finding.org);
        let flag = NewFlag {
            id: Uuid::now_v7(),
            org: finding.org,
            kind: finding.kind,
            subject: finding.subject,
            reason: finding.reason,
            details: finding.details,
            raised_at: now,
        };
        if store.raise_flag(&flag, &audit).await? {
            tracing::warn!(org = %flag.org, kind = flag.kind.as_str(), reason = %flag.reason, "review flag raised");
            report.raised += 1;
            match flag.kind {
                FlagKind::SellsAllotment => report.sells_allotment += 1,
                FlagKind::RepeatedCounterparty => report.repeated_counterparty += 1,
                FlagKind::SharedEmailDomain => report.shared_email_domain += 1,
                FlagKind::SharedAddressBlock => report.shared_address_block += 1,
            }
        }
    }
    Ok(report)
}

/// Orgs that sold most of their allotment and used little of it, in each of the last
/// `policy.cycles` closed cycles.
async fn sells_allotment(
    store: &dyn Store,
    policy: &ReviewPolicy,
) -> Result<Vec<Finding>, StoreError> {
    let cycles = store.cycles(24).await.map_err(cycle_error)?;
    let closed: Vec<String> = cycles
        .into_iter()
        .filter(|cycle| cycle.closed_at.is_some())
        .map(|cycle| cycle.cycle)
        .take(policy.cycles)
        .collect();
    if policy.cycles == 0 || closed.len() < policy.cycles {
        return Ok(Vec::new());
    }
    // Per cycle: the orgs that sold most and used little, with their figures.
    let mut per_cycle: Vec<BTreeMap<OrgId, SellerFigures>> = Vec::new();
    for cycle in &closed {
        let mut totals: BTreeMap<OrgId, SellerFigures> = BTreeMap::new();
        let id = CycleId::parse(cycle).map_err(corrupt)?;
        let classes = store.cycle_classes(cycle).await.map_err(cycle_error)?;
        for (class, _) in classes {
            let Ok(asset) = id.asset(&class) else {
                continue;
            };
            for (org, figures) in store.seller_figures(&asset).await? {
                let total = totals.entry(org).or_default();
                total.allotted = total.allotted.saturating_add(figures.allotted);
                total.sold = total.sold.saturating_add(figures.sold);
                total.spent = total.spent.saturating_add(figures.spent);
            }
        }
        totals.retain(|_, f| {
            let allotted = u128::from(f.allotted);
            f.allotted > 0
                && u128::from(f.sold) * 100 >= allotted * u128::from(policy.sold_percent)
                && u128::from(f.spent) * 100 <= allotted * u128::from(policy.spent_percent)
        });
        per_cycle.push(totals);
    }
    let Some((latest, earlier)) = per_cycle.split_first() else {
        return Ok(Vec::new());
    };
    let mut findings = Vec::new();
    for (org, figures) in latest {
        if !earlier.iter().all(|cycle| cycle.contains_key(org)) {
            continue;
        }
        let history: Vec<serde_json::Value> = closed
            .iter()
            .zip(&per_cycle)
            .filter_map(|(cycle, totals)| {
                totals.get(org).map(|f| {
                    serde_json::json!({"cycle": cycle, "allotted": f.allotted, "sold": f.sold,
                                       "spent": f.spent})
                })
            })
            .collect();
        findings.push(Finding {
            org: *org,
            kind: FlagKind::SellsAllotment,
            subject: closed[0].clone(),
            reason: format!(
                "sold at least {}% of its allotment and spent at most {}% of it in each of the \
                 last {} cycles (in {}: {} of {} tokens sold, {} spent)",
                policy.sold_percent,
                policy.spent_percent,
                policy.cycles,
                closed[0],
                figures.sold,
                figures.allotted,
                figures.spent
            ),
            details: serde_json::json!({ "cycles": history }),
        });
    }
    Ok(findings)
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn cycle_error(error: credex_store::CycleError) -> StoreError {
    match error {
        credex_store::CycleError::Store(error) => error,
        other => corrupt(other),
    }
}

/// Pairs of orgs that traded with each other at least `policy.pair_trades` times lately.
async fn repeated_counterparty(
    store: &dyn Store,
    policy: &ReviewPolicy,
    now: Timestamp,
) -> Result<Vec<Finding>, StoreError> {
    let since = now.plus_micros(-policy.window_days.saturating_mul(DAY_MICROS));
    let month = CycleId::of(now).to_string();
    let mut pairs: BTreeMap<(OrgId, OrgId), (u64, u64)> = BTreeMap::new();
    for trades in store.pair_trades(since).await? {
        let key = if trades.buyer < trades.seller {
            (trades.buyer, trades.seller)
        } else {
            (trades.seller, trades.buyer)
        };
        let entry = pairs.entry(key).or_default();
        entry.0 = entry.0.saturating_add(trades.trades);
        entry.1 = entry.1.saturating_add(trades.tokens);
    }
    let mut findings = Vec::new();
    for ((a, b), (trades, tokens)) in pairs {
        if trades < policy.pair_trades {
            continue;
        }
        for (org, other) in [(a, b), (b, a)] {
            findings.push(Finding {
                org,
                kind: FlagKind::RepeatedCounterparty,
                subject: format!("{other}/{month}"),
                reason: format!(
                    "{trades} trades ({tokens} tokens) with org {other} in the last {} days",
                    policy.window_days
                ),
                details: serde_json::json!({"other_org_id": other.to_string(), "trades": trades,
                                            "tokens": tokens, "since": crate::views::rfc3339(since)}),
            });
        }
    }
    Ok(findings)
}

/// New orgs sharing a value (a domain, a block) in groups of at least `policy.cluster_orgs`.
fn clusters(
    values: impl Iterator<Item = (OrgId, String)>,
    policy: &ReviewPolicy,
    kind: FlagKind,
    what: &str,
) -> Vec<Finding> {
    let mut groups: BTreeMap<String, BTreeSet<OrgId>> = BTreeMap::new();
    for (org, value) in values {
        groups.entry(value).or_default().insert(org);
    }
    let mut findings = Vec::new();
    for (value, orgs) in groups {
        if orgs.len() < policy.cluster_orgs.max(2) {
            continue;
        }
        let members: Vec<String> = orgs.iter().map(ToString::to_string).collect();
        for org in &orgs {
            findings.push(Finding {
                org: *org,
                kind,
                subject: value.clone(),
                reason: format!(
                    "one of {} orgs created in the last {} days sharing the {what} {value}",
                    orgs.len(),
                    policy.window_days
                ),
                details: serde_json::json!({ "value": value, "orgs": members }),
            });
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_blocks() {
        let block = |text: &str| address_block(text.parse().expect("an address"));
        assert_eq!(block("203.0.113.77"), "203.0.113.0/24");
        assert_eq!(block("::ffff:203.0.113.77"), "203.0.113.0/24");
        assert_eq!(block("2001:db8:1:2::5"), "2001:db8:1::/48");
    }

    #[test]
    fn clusters_need_enough_orgs_and_name_every_one() {
        let policy = ReviewPolicy::default();
        let a = OrgId::generate();
        let b = OrgId::generate();
        let c = OrgId::generate();
        let values = vec![
            (a, "shell.example".to_owned()),
            (b, "shell.example".to_owned()),
            (c, "other.example".to_owned()),
        ];
        assert!(clusters(
            values.clone().into_iter(),
            &policy,
            FlagKind::SharedEmailDomain,
            "d"
        )
        .is_empty());
        let mut three = values;
        three.push((c, "shell.example".to_owned()));
        let found = clusters(three.into_iter(), &policy, FlagKind::SharedEmailDomain, "d");
        let orgs: BTreeSet<OrgId> = found.iter().map(|f| f.org).collect();
        assert_eq!(orgs, BTreeSet::from([a, b, c]));
        assert!(found.iter().all(|f| f.subject == "shell.example"));
    }
}
