//! What the API answers: views of the domain, shaped for JSON and described in OpenAPI.
//! Times are RFC 3339 in UTC; ids are UUIDs; the domain's types stay out of the wire format.

use credex_ledger::Timestamp;
use credex_store::{ApiKey, Org, Role, User};
use serde::Serialize;
use utoipa::ToSchema;

/// An instant as RFC 3339 in UTC with microseconds (`2026-11-26T14:35:05.123456Z`).
pub fn rfc3339(at: Timestamp) -> String {
    let nanos = i128::from(at.as_micros()) * 1_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A CSV field: quoted when it holds a comma, quote or line break; a text that a spreadsheet
/// would run as a formula (`=`, `+`, `-`, `@`, tab, carriage return first) gets a leading `'`.
pub fn csv_field(out: &mut String, text: &str) {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || text.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quote {
        out.push('"');
    }
}

/// An org's plan.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanName {
    Free,
    Teams,
    Enterprise,
}

/// A member's role in an org: owners manage members and API keys.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    Owner,
    Member,
}

/// What an API key may do: `read` the org's data, write usage, trade on the market.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum ScopeName {
    #[serde(rename = "read")]
    Read,
    #[serde(rename = "usage:write")]
    UsageWrite,
    #[serde(rename = "market:trade")]
    MarketTrade,
}

/// An org (tenant).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrgView {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub name: String,
    #[schema(value_type = PlanName)]
    pub plan: String,
    /// 0 (none) to 3, set by admins.
    #[schema(minimum = 0, maximum = 3)]
    pub verification_level: u8,
    /// A frozen org cannot trade until an admin clears it.
    pub frozen: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&Org> for OrgView {
    fn from(org: &Org) -> Self {
        Self {
            id: org.id.to_string(),
            name: org.name.to_string(),
            plan: org.plan.as_str().to_owned(),
            verification_level: org.verification_level.get(),
            frozen: org.frozen,
            created_at: rfc3339(org.created_at),
        }
    }
}

/// A user.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    pub email: String,
    /// A platform (provider) admin.
    pub is_admin: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id.to_string(),
            email: user.email.to_string(),
            is_admin: user.is_admin,
            created_at: rfc3339(user.created_at),
        }
    }
}

/// A user's place in an org.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MembershipView {
    pub org: OrgView,
    #[schema(value_type = RoleName)]
    pub role: String,
}

impl MembershipView {
    pub fn new(org: &Org, role: Role) -> Self {
        Self {
            org: org.into(),
            role: role.as_str().to_owned(),
        }
    }
}

/// An API key, without its secret (shown once, when created).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApiKeyView {
    #[schema(value_type = String, format = Uuid)]
    pub id: String,
    #[schema(value_type = String, format = Uuid)]
    pub org_id: String,
    pub name: String,
    /// The key's public part: keys read `cdx_<prefix>_<secret>`.
    pub prefix: String,
    #[schema(value_type = Vec<ScopeName>)]
    pub scopes: Vec<String>,
    #[schema(value_type = String, format = Uuid)]
    pub created_by: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the key was last used (updated at most once a minute).
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

impl From<&ApiKey> for ApiKeyView {
    fn from(key: &ApiKey) -> Self {
        Self {
            id: key.id.to_string(),
            org_id: key.org.to_string(),
            name: key.name.to_string(),
            prefix: key.prefix.to_string(),
            scopes: key
                .scopes
                .iter()
                .map(|scope| scope.as_str().to_owned())
                .collect(),
            created_by: key.created_by.to_string(),
            created_at: rfc3339(key.created_at),
            last_used_at: key.last_used_at.map(rfc3339),
            revoked_at: key.revoked_at.map(rfc3339),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339_utc() {
        assert_eq!(rfc3339(Timestamp::from_micros(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(Timestamp::from_micros(1_795_651_200_123_456)),
            "2026-11-26T00:00:00.123456Z"
        );
    }
}
