//! Budgets: a limit on what a scope of an org — the whole org, one user, one API key, one task —
//! may spend per period, counted at the model's price whatever paid for the call (tokens or
//! credits). Periods are the day, the ISO week (from Monday) or the month in the budget's time
//! zone, or the billing cycle (the UTC month). Each threshold (default 75, 90 and 100 % of the
//! limit) alerts once per period. A hard budget refuses a charge that would take its spend past
//! the limit; a soft one only alerts. A budget counts the charges made after it was set (its
//! first period starts from zero).
//!
//! Enforcement lives in the usage transaction ([`crate::usage`]): the spend of every budget
//! period a batch touches is read and written under the org's row lock, in the transaction
//! that charges, so no number of concurrent requests in any number of processes can spend past
//! a hard limit.

use credex_ledger::{OrgId, Timestamp};
use credex_store::BudgetRecord;
use jiff::tz::TimeZone;
use uuid::Uuid;

/// The most budgets an org may have.
pub const BUDGETS_MAX: usize = 100;
/// The most thresholds a budget may have.
pub const THRESHOLDS_MAX: usize = 10;
/// The highest threshold, in percent of the limit.
pub const THRESHOLD_MAX: u32 = 1_000;
/// The default thresholds.
pub const DEFAULT_THRESHOLDS: [u32; 3] = [75, 90, 100];
/// The longest budget name or task label.
pub const NAME_MAX: usize = 200;

/// Why a budget is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("name: 1 to {NAME_MAX} characters")]
    Name,
    #[error("scope: a task label is 1 to {NAME_MAX} characters")]
    Task,
    #[error("time_zone: {0:?} is not an IANA time zone")]
    TimeZone(String),
    #[error("limit_micro_cr: 1 to 10^15")]
    Limit,
    #[error("thresholds: 1 to {THRESHOLDS_MAX} percents, each 1 to {THRESHOLD_MAX}, ascending")]
    Thresholds,
    #[error("a stored budget is not valid: {0}")]
    Stored(String),
}

/// Whose calls a budget counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Org,
    User(Uuid),
    ApiKey(Uuid),
    Task(String),
}

/// How long a budget's period is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
    /// The billing cycle: the calendar month in UTC.
    Cycle,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Cycle => "cycle",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "day" => Self::Day,
            "week" => Self::Week,
            "month" => Self::Month,
            "cycle" => Self::Cycle,
            _ => return None,
        })
    }
}

/// A valid budget.
#[derive(Debug, Clone)]
pub struct Budget {
    id: Uuid,
    org: OrgId,
    name: String,
    scope: Scope,
    period: Period,
    zone_name: String,
    zone: TimeZone,
    limit_micro_cr: u64,
    thresholds: Vec<u32>,
    hard: bool,
    created_at: Timestamp,
}

/// What a new budget asks for.
#[derive(Debug, Clone)]
pub struct NewBudget {
    pub name: String,
    pub scope: Scope,
    pub period: Period,
    pub time_zone: String,
    pub limit_micro_cr: u64,
    pub thresholds: Vec<u32>,
    pub hard: bool,
}

/// The largest limit: 10^9 CR.
pub const LIMIT_MAX: u64 = 1_000_000_000_000_000;

/// The IANA time zone `name` names.
pub fn zone(name: &str) -> Result<TimeZone, BudgetError> {
    jiff::tz::db()
        .get(name)
        .map_err(|_| BudgetError::TimeZone(name.to_owned()))
}

fn check_thresholds(thresholds: &[u32]) -> Result<(), BudgetError> {
    let ascending = thresholds.windows(2).all(|pair| pair[0] < pair[1]);
    let in_range = thresholds
        .iter()
        .all(|percent| (1..=THRESHOLD_MAX).contains(percent));
    if thresholds.is_empty() || thresholds.len() > THRESHOLDS_MAX || !ascending || !in_range {
        return Err(BudgetError::Thresholds);
    }
    Ok(())
}

fn check_label(text: &str) -> bool {
    !text.is_empty() && text.chars().count() <= NAME_MAX
}

impl Budget {
    pub fn new(
        id: Uuid,
        org: OrgId,
        new: NewBudget,
        created_at: Timestamp,
    ) -> Result<Self, BudgetError> {
        if !check_label(&new.name) {
            return Err(BudgetError::Name);
        }
        if let Scope::Task(task) = &new.scope {
            if !check_label(task) {
                return Err(BudgetError::Task);
            }
        }
        if !(1..=LIMIT_MAX).contains(&new.limit_micro_cr) {
            return Err(BudgetError::Limit);
        }
        check_thresholds(&new.thresholds)?;
        Ok(Self {
            id,
            org,
            name: new.name,
            scope: new.scope,
            period: new.period,
            zone: zone(&new.time_zone)?,
            zone_name: new.time_zone,
            limit_micro_cr: new.limit_micro_cr,
            thresholds: new.thresholds,
            hard: new.hard,
            created_at,
        })
    }

    /// A stored budget, checked again.
    pub fn parse(record: &BudgetRecord) -> Result<Self, BudgetError> {
        let stored = |what: &str| BudgetError::Stored(format!("{what} of budget {}", record.id));
        let uuid = |value: &Option<String>| {
            value
                .as_deref()
                .and_then(|text| Uuid::parse_str(text).ok())
                .ok_or_else(|| stored("the scope"))
        };
        let scope = match record.scope_kind.as_str() {
            "org" => Scope::Org,
            "user" => Scope::User(uuid(&record.scope_value)?),
            "api_key" => Scope::ApiKey(uuid(&record.scope_value)?),
            "task" => Scope::Task(
                record
                    .scope_value
                    .clone()
                    .ok_or_else(|| stored("the task"))?,
            ),
            _ => return Err(stored("the scope")),
        };
        let period = Period::parse(&record.period).ok_or_else(|| stored("the period"))?;
        let new = NewBudget {
            name: record.name.clone(),
            scope,
            period,
            time_zone: record.time_zone.clone(),
            limit_micro_cr: record.limit_micro_cr,
            thresholds: record.thresholds.clone(),
            hard: record.hard,
        };
        Self::new(record.id, record.org, new, record.created_at)
    }

    pub fn record(&self) -> BudgetRecord {
        let (scope_kind, scope_value) = match &self.scope {
            Scope::Org => ("org", None),
            Scope::User(id) => ("user", Some(id.to_string())),
            Scope::ApiKey(id) => ("api_key", Some(id.to_string())),
            Scope::Task(task) => ("task", Some(task.clone())),
        };
        BudgetRecord {
            id: self.id,
            org: self.org,
            name: self.name.clone(),
            scope_kind: scope_kind.to_owned(),
            scope_value,
            period: self.period.as_str().to_owned(),
            time_zone: self.zone_name.clone(),
            limit_micro_cr: self.limit_micro_cr,
            thresholds: self.thresholds.clone(),
            hard: self.hard,
            created_at: self.created_at,
        }
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn period(&self) -> Period {
        self.period
    }

    pub fn limit_micro_cr(&self) -> u64 {
        self.limit_micro_cr
    }

    pub fn thresholds(&self) -> &[u32] {
        &self.thresholds
    }

    pub fn is_hard(&self) -> bool {
        self.hard
    }

    /// Whether a call with this attribution counts against the budget.
    pub fn applies(&self, user: Option<Uuid>, api_key: Option<Uuid>, task: Option<&str>) -> bool {
        match &self.scope {
            Scope::Org => true,
            Scope::User(id) => user == Some(*id),
            Scope::ApiKey(id) => api_key == Some(*id),
            Scope::Task(label) => task == Some(label.as_str()),
        }
    }

    /// The start of the period `at` falls in.
    pub fn period_start(&self, at: Timestamp) -> Timestamp {
        self.bounds(at).0
    }

    /// The period `at` falls in: its start and the next one's.
    pub fn bounds(&self, at: Timestamp) -> (Timestamp, Timestamp) {
        period_bounds(self.period, &self.zone, at)
    }

    /// The thresholds crossed going from `before` to `after` µCR spent.
    pub fn crossed(&self, before: u64, after: u64) -> Vec<u32> {
        let reached = |spent: u64, percent: u32| {
            u128::from(spent) * 100 >= u128::from(self.limit_micro_cr) * u128::from(percent)
        };
        self.thresholds
            .iter()
            .copied()
            .filter(|percent| !reached(before, *percent) && reached(after, *percent))
            .collect()
    }
}

/// What a plan allows of budgets, as the seed's tiers say: Free has no budget management;
/// Teams has monthly (and per-cycle) limits with two alert thresholds, on the org, an API key
/// or a task; Enterprise adds daily and weekly limits, three or more thresholds, and per-user
/// budgets.
pub fn plan_allows(plan: credex_store::Plan, new: &NewBudget) -> Result<(), String> {
    use credex_store::Plan;
    match plan {
        Plan::Free => Err("the free plan has no budgets: upgrade to Teams".to_owned()),
        Plan::Teams => {
            if matches!(new.period, Period::Day | Period::Week) {
                return Err(format!(
                    "{} budgets need the Enterprise plan (Teams has monthly and per-cycle ones)",
                    new.period.as_str()
                ));
            }
            if matches!(new.scope, Scope::User(_)) {
                return Err("per-user budgets need the Enterprise plan".to_owned());
            }
            if new.thresholds.len() > 2 {
                return Err(
                    "Teams budgets have at most two alert thresholds (Enterprise: more)".to_owned(),
                );
            }
            Ok(())
        }
        Plan::Enterprise => Ok(()),
    }
}

/// The most tokens one prompt may carry on a plan (the seed's tiers).
pub fn max_prompt_tokens(plan: credex_store::Plan) -> u64 {
    match plan {
        credex_store::Plan::Free => 1_000,
        credex_store::Plan::Teams => 10_000,
        credex_store::Plan::Enterprise => 100_000,
    }
}

fn to_jiff(at: Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_microsecond(at.as_micros()).unwrap_or(if at.as_micros() < 0 {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    })
}

fn from_jiff(at: &jiff::Zoned) -> Timestamp {
    let micros = at.timestamp().as_microsecond();
    Timestamp::from_micros(micros)
}

/// A period's start and the next one's, for the instant `at`, in `zone` (the cycle in UTC).
/// Days start at local midnight (or the first instant after it when a clock change skips it),
/// weeks on Monday, months on the 1st.
pub fn period_bounds(period: Period, zone: &TimeZone, at: Timestamp) -> (Timestamp, Timestamp) {
    let zone = match period {
        Period::Cycle => TimeZone::UTC,
        _ => zone.clone(),
    };
    let local = to_jiff(at).to_zoned(zone.clone());
    let date = local.date();
    let (start, next) = match period {
        Period::Day => (Some(date), date.tomorrow().ok()),
        Period::Week => {
            let back = i64::from(date.weekday().to_monday_zero_offset());
            let monday = date.checked_sub(jiff::Span::new().days(back)).ok();
            let next = monday.and_then(|d| d.checked_add(jiff::Span::new().days(7)).ok());
            (monday, next)
        }
        Period::Month | Period::Cycle => {
            let first = date.first_of_month();
            (
                Some(first),
                first.checked_add(jiff::Span::new().months(1)).ok(),
            )
        }
    };
    let instant = |date: Option<jiff::civil::Date>, fallback: Timestamp| {
        date.and_then(|d| d.to_zoned(zone.clone()).ok())
            .map_or(fallback, |zoned| from_jiff(&zoned))
    };
    (
        instant(start, Timestamp::from_micros(i64::MIN)),
        instant(next, Timestamp::from_micros(i64::MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        let parsed: jiff::Timestamp = text.parse().expect("an instant");
        Timestamp::from_micros(parsed.as_microsecond())
    }

    #[test]
    fn periods_start_where_the_zone_says() {
        let paris = zone("Europe/Paris").expect("a zone");
        // 2026-11-26 23:30 UTC is already the 27th in Paris (UTC+1).
        let instant = at("2026-11-26T23:30:00Z");
        assert_eq!(
            period_bounds(Period::Day, &paris, instant),
            (at("2026-11-26T23:00:00Z"), at("2026-11-27T23:00:00Z"))
        );
        // The 27th is a Friday: the week started on Monday the 23rd.
        assert_eq!(
            period_bounds(Period::Week, &paris, instant),
            (at("2026-11-22T23:00:00Z"), at("2026-11-29T23:00:00Z"))
        );
        assert_eq!(
            period_bounds(Period::Month, &paris, instant),
            (at("2026-10-31T23:00:00Z"), at("2026-11-30T23:00:00Z"))
        );
        // The cycle is the UTC month whatever the zone.
        assert_eq!(
            period_bounds(Period::Cycle, &paris, instant),
            (at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"))
        );
        // A day across the spring clock change in New York is 23 hours long.
        let new_york = zone("America/New_York").expect("a zone");
        let (start, end) = period_bounds(Period::Day, &new_york, at("2026-03-08T12:00:00Z"));
        assert_eq!(
            (start, end),
            (at("2026-03-08T05:00:00Z"), at("2026-03-09T04:00:00Z"))
        );
    }

    #[test]
    fn plans_have_the_budgets_their_tier_says() {
        use credex_store::Plan;
        let new = |period, scope, thresholds: &[u32]| NewBudget {
            name: "b".to_owned(),
            scope,
            period,
            time_zone: "UTC".to_owned(),
            limit_micro_cr: 1,
            thresholds: thresholds.to_vec(),
            hard: true,
        };
        let monthly = new(Period::Month, Scope::Org, &[75, 90]);
        assert!(plan_allows(Plan::Free, &monthly).is_err());
        assert!(plan_allows(Plan::Teams, &monthly).is_ok());
        assert!(plan_allows(
            Plan::Teams,
            &new(Period::Cycle, Scope::Task("t".into()), &[90])
        )
        .is_ok());
        for refused in [
            new(Period::Day, Scope::Org, &[75]),
            new(Period::Week, Scope::Org, &[75]),
            new(Period::Month, Scope::User(Uuid::nil()), &[75]),
            new(Period::Month, Scope::Org, &[75, 90, 100]),
        ] {
            assert!(plan_allows(Plan::Teams, &refused).is_err(), "{refused:?}");
            assert!(
                plan_allows(Plan::Enterprise, &refused).is_ok(),
                "{refused:?}"
            );
        }
        assert_eq!(
            [Plan::Free, Plan::Teams, Plan::Enterprise].map(max_prompt_tokens),
            [1_000, 10_000, 100_000]
        );
    }

    #[test]
    fn thresholds_are_crossed_once() {
        let new = NewBudget {
            name: "team".to_owned(),
            scope: Scope::Org,
            period: Period::Month,
            time_zone: "UTC".to_owned(),
            limit_micro_cr: 1_000,
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
            hard: true,
        };
        let org = OrgId::new(Uuid::now_v7()).expect("an org");
        let budget = Budget::new(Uuid::now_v7(), org, new.clone(), Timestamp::EPOCH).expect("ok");
        assert_eq!(budget.crossed(0, 749), Vec::<u32>::new());
        assert_eq!(budget.crossed(0, 750), vec![75]);
        assert_eq!(budget.crossed(750, 1_000), vec![90, 100]);
        assert_eq!(budget.crossed(1_000, 1_000), Vec::<u32>::new());
        let bad = |thresholds: Vec<u32>| NewBudget {
            thresholds,
            ..new.clone()
        };
        for thresholds in [vec![], vec![90, 75], vec![0], vec![1_001], vec![50, 50]] {
            let refused = Budget::new(Uuid::now_v7(), org, bad(thresholds), Timestamp::EPOCH);
            assert_eq!(refused.err(), Some(BudgetError::Thresholds));
        }
        let zone = NewBudget {
            time_zone: "Mars/Olympus".to_owned(),
            ..new
        };
        assert!(matches!(
            Budget::new(Uuid::now_v7(), org, zone, Timestamp::EPOCH),
            Err(BudgetError::TimeZone(_))
        ));
    }
}
