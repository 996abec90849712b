//! Who may sell (list tokens, or sell them back to the provider) and how much, and who may
//! trade at all. Checked by the market service inside the market's transaction, on the org's
//! row as it is then.

use credex_ledger::Timestamp;
use credex_store::{FlagKind, OpenFlag, Org, Plan, SellUsage};
use serde::{Deserialize, Serialize};

/// Microseconds in a day.
const DAY_MICROS: i64 = 24 * 60 * 60 * 1_000_000;

/// The selling rules an admin tunes. Defaults: verification level 1, 14 days of org age, a
/// paid plan (teams or enterprise), and a per-cycle cap of 100% of the cycle's allotment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudPolicy {
    /// The lowest identity verification level an org needs to sell.
    pub min_verification_level: u8,
    /// How long an org must have existed before it sells.
    pub min_org_age_days: u32,
    /// Whether only orgs on a paid plan (teams, enterprise) may sell.
    pub paid_plan_required: bool,
    /// How much of its allotment of a cycle an org may sell (listed, bought, or sold back),
    /// in basis points of the allotment: 10,000 is 100%.
    pub sell_cap_basis_points: u32,
}

impl Default for FraudPolicy {
    fn default() -> Self {
        Self {
            min_verification_level: 1,
            min_org_age_days: 14,
            paid_plan_required: true,
            sell_cap_basis_points: 10_000,
        }
    }
}

/// Why an org may not sell or trade now; each case says what would change the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Refusal {
    #[error("the org is frozen pending an admin's review; it cannot trade until cleared")]
    Frozen,
    #[error("the org is flagged for review ({}): {explanation}; it cannot trade until an admin clears the flag", kind.as_str())]
    UnderReview { kind: FlagKind, explanation: String },
    #[error("selling needs identity verification level {required}; the org has {level}")]
    Unverified { level: u8, required: u8 },
    #[error(
        "selling needs an org at least {required_days} days old; this one is {age_days} days old"
    )]
    TooNew { age_days: i64, required_days: u32 },
    #[error("selling needs a paid plan (teams or enterprise); the org is on the free plan")]
    FreePlan,
    #[error(
        "this would take the org's sales of the cycle to {would_be} tokens, over its cap of \
         {cap} tokens ({committed} listed, bought or sold back so far)"
    )]
    SellCap {
        cap: u64,
        committed: u64,
        would_be: u64,
    },
}

/// The most a sell cap may be: 100% of the allotment.
pub const SELL_CAP_MAX_BASIS_POINTS: u32 = 10_000;
/// The oldest an org may be required to be to sell: ten years.
pub const ORG_AGE_MAX_DAYS: u32 = 3_650;
/// The highest verification level.
pub const VERIFICATION_MAX: u8 = 3;

impl FraudPolicy {
    /// Whether the values are in range: a cap of at most 100%, an age of at most ten years, a
    /// verification level of at most 3.
    pub fn validate(&self) -> Result<(), String> {
        if self.sell_cap_basis_points > SELL_CAP_MAX_BASIS_POINTS {
            return Err(format!(
                "sell_cap_basis_points: at most {SELL_CAP_MAX_BASIS_POINTS} (100%)"
            ));
        }
        if self.min_org_age_days > ORG_AGE_MAX_DAYS {
            return Err(format!("min_org_age_days: at most {ORG_AGE_MAX_DAYS}"));
        }
        if self.min_verification_level > VERIFICATION_MAX {
            return Err(format!(
                "min_verification_level: at most {VERIFICATION_MAX}"
            ));
        }
        Ok(())
    }

    /// A policy as stored.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let policy: Self = serde_json::from_str(json).map_err(|error| error.to_string())?;
        policy.validate()?;
        Ok(policy)
    }

    /// Whether the org may trade at all (buy or sell): not frozen, and no open review flag.
    pub fn check_trader(&self, org: &Org, flags: &[OpenFlag]) -> Result<(), Refusal> {
        if org.frozen {
            return Err(Refusal::Frozen);
        }
        if let Some(flag) = flags.first() {
            return Err(Refusal::UnderReview {
                kind: flag.kind,
                explanation: flag.reason.clone(),
            });
        }
        Ok(())
    }

    /// Whether the org may sell now (list, or sell back to the provider).
    pub fn check_seller(
        &self,
        org: &Org,
        flags: &[OpenFlag],
        now: Timestamp,
    ) -> Result<(), Refusal> {
        self.check_trader(org, flags)?;
        let level = org.verification_level.get();
        if level < self.min_verification_level {
            return Err(Refusal::Unverified {
                level,
                required: self.min_verification_level,
            });
        }
        let age_micros = now.as_micros().saturating_sub(org.created_at.as_micros());
        let required_micros = i64::from(self.min_org_age_days).saturating_mul(DAY_MICROS);
        if age_micros < required_micros {
            return Err(Refusal::TooNew {
                age_days: age_micros / DAY_MICROS,
                required_days: self.min_org_age_days,
            });
        }
        if self.paid_plan_required && org.plan == Plan::Free {
            return Err(Refusal::FreePlan);
        }
        Ok(())
    }

    /// The most tokens of a cycle the org may sell in all, given its allotment.
    pub fn sell_cap(&self, allotted: u64) -> u64 {
        let cap = u128::from(allotted) * u128::from(self.sell_cap_basis_points) / 10_000;
        u64::try_from(cap).unwrap_or(u64::MAX)
    }

    /// Whether selling `quantity` more tokens keeps the org within its cap.
    pub fn check_sell_cap(&self, usage: &SellUsage, quantity: u64) -> Result<(), Refusal> {
        let cap = self.sell_cap(usage.allotted);
        let committed = usage.committed();
        let would_be = committed.saturating_add(quantity);
        if would_be > cap {
            return Err(Refusal::SellCap {
                cap,
                committed,
                would_be,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credex_ledger::OrgId;
    use credex_store::{OrgName, VerificationLevel};

    fn org(plan: Plan, level: u8, frozen: bool, created_days_ago: i64) -> Org {
        Org {
            id: OrgId::generate(),
            name: OrgName::parse("Acme").expect("a name"),
            plan,
            verification_level: VerificationLevel::new(level).expect("a level"),
            frozen,
            created_at: Timestamp::from_micros(100 * DAY_MICROS - created_days_ago * DAY_MICROS),
        }
    }

    #[test]
    fn sellers_need_every_condition() {
        let policy = FraudPolicy::default();
        let now = Timestamp::from_micros(100 * DAY_MICROS);
        let check = |org: Org, expected: Result<(), Refusal>| {
            assert_eq!(policy.check_seller(&org, &[], now), expected, "{org:?}");
        };
        check(org(Plan::Teams, 1, false, 14), Ok(()));
        check(org(Plan::Enterprise, 3, false, 90), Ok(()));
        check(org(Plan::Teams, 1, true, 30), Err(Refusal::Frozen));
        check(
            org(Plan::Teams, 0, false, 30),
            Err(Refusal::Unverified {
                level: 0,
                required: 1,
            }),
        );
        check(
            org(Plan::Teams, 1, false, 13),
            Err(Refusal::TooNew {
                age_days: 13,
                required_days: 14,
            }),
        );
        check(org(Plan::Free, 1, false, 30), Err(Refusal::FreePlan));
        let flag = OpenFlag {
            kind: FlagKind::RepeatedCounterparty,
            reason: "12 trades with one org".to_owned(),
        };
        assert_eq!(
            policy.check_seller(
                &org(Plan::Teams, 1, false, 30),
                std::slice::from_ref(&flag),
                now
            ),
            Err(Refusal::UnderReview {
                kind: flag.kind,
                explanation: flag.reason.clone(),
            })
        );
        assert!(policy
            .check_trader(&org(Plan::Free, 0, false, 0), &[flag])
            .is_err());
    }

    #[test]
    fn the_sell_cap_counts_everything_sold() {
        let policy = FraudPolicy {
            sell_cap_basis_points: 5_000,
            ..FraudPolicy::default()
        };
        let usage = SellUsage {
            allotted: 1_000,
            listed_open: 200,
            filled: 100,
            bought_back: 150,
            ..SellUsage::default()
        };
        assert_eq!(policy.check_sell_cap(&usage, 50), Ok(()));
        assert_eq!(
            policy.check_sell_cap(&usage, 51),
            Err(Refusal::SellCap {
                cap: 500,
                committed: 450,
                would_be: 501
            })
        );
    }
}
