//! Identity: orgs (tenants), users, memberships, refresh tokens, API keys and the audit log.
//!
//! Storage only. The API layer hashes passwords (argon2id), issues and checks JWTs, generates
//! tokens and keys, and hands this module hashes: a [`PasswordHash`] (a PHC string) or a
//! [`TokenHash`] (the SHA-256 of an opaque token or API key). No secret is ever stored.
//!
//! The types are the rules, as in `credex-ledger`: every value is parsed once by its
//! constructor, which refuses malformed input, so code downstream never re-validates.
//!
//! [`IdentityStore`] is implemented once, in SQL shared by both backends: the
//! [`shared_identity!`] macro expands it in `postgres.rs` and `sqlite.rs` with the same dialect
//! module the ledger uses (`begin_write`, `FOR_UPDATE`, `is_retryable`). Every method is one
//! transaction; every query about an org's rows is filtered by the org's id, so no row of
//! another org can be read by its id alone.
//!
//! Refresh tokens rotate with reuse detection. Each sign-in starts a *family*; rotating a live
//! token replaces it with a new one of the same family. Presenting a token that was already
//! rotated, or one of a revoked family, revokes the whole family for good. Rotation takes the
//! family's row lock and then the token's (the lock order everywhere), and marks the old token
//! with a conditional `UPDATE … WHERE replaced_by IS NULL` whose row count is checked, so of
//! two concurrent rotations of one token exactly one succeeds; the other is a reuse.

use std::collections::BTreeSet;
use std::fmt;

use async_trait::async_trait;
use credex_ledger::{IdError, OrgId, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::StoreError;

macro_rules! identity_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "Uuid", into = "Uuid")]
        pub struct $name(Uuid);

        impl $name {
            /// Accepts any UUID but the nil and the max one.
            pub fn new(uuid: Uuid) -> Result<Self, IdError> {
                if uuid.is_nil() {
                    Err(IdError::Nil)
                } else if uuid.is_max() {
                    Err(IdError::Max)
                } else {
                    Ok(Self(uuid))
                }
            }

            /// Parses the hyphenated or simple textual form of a UUID.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                Self::new(Uuid::parse_str(text).map_err(|_| IdError::Malformed)?)
            }

            /// A fresh time-ordered id (UUIDv7).
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(self) -> Uuid {
                self.0
            }
        }

        impl TryFrom<Uuid> for $name {
            type Error = IdError;
            fn try_from(uuid: Uuid) -> Result<Self, IdError> {
                Self::new(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

identity_id!(
    /// Identifies a user.
    UserId
);
identity_id!(
    /// Identifies an API key (not secret: the key's prefix finds it, its hash proves it).
    ApiKeyId
);
identity_id!(
    /// Identifies one refresh token.
    RefreshTokenId
);
identity_id!(
    /// Identifies a family of refresh tokens: one sign-in and every rotation since.
    TokenFamilyId
);
identity_id!(
    /// Identifies an audit-log entry.
    AuditId
);

/// Why a value is not a valid identity value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityParseError {
    #[error("invalid e-mail address: {0}")]
    Email(&'static str),
    #[error("an org name must be 1 to 100 characters (after trimming) without control characters")]
    OrgName,
    #[error(
        "an API key name must be 1 to 100 characters (after trimming) without control characters"
    )]
    ApiKeyName,
    #[error("an API key prefix must be 4 to 32 characters of A-Z, a-z, 0-9, '_' or '-'")]
    ApiKeyPrefix,
    #[error("unknown plan {0:?} (expected free, teams or enterprise)")]
    Plan(String),
    #[error("unknown role {0:?} (expected owner or member)")]
    Role(String),
    #[error("a verification level is 0 to 3, not {0}")]
    VerificationLevel(i64),
    #[error("unknown scope {0:?} (expected read, usage:write or market:trade)")]
    Scope(String),
    #[error("at least one scope is required")]
    NoScopes,
    #[error("a password hash must be a PHC string ($id$…) of at most 512 printable ASCII bytes")]
    PasswordHash,
    #[error("a token hash is 32 bytes (SHA-256), not {0}")]
    TokenHash(usize),
    #[error("an audit action must be 1 to 64 characters of a-z, 0-9, '_' or '.'")]
    AuditAction,
    #[error("an audit target must be at most 200 characters without control characters")]
    AuditTarget,
    #[error("audit details must serialize to at most 4096 bytes of JSON, not {0}")]
    AuditDetails(usize),
}

/// Text trimmed, of `1..=max` characters, without control characters.
fn bounded_text(text: &str, max: usize) -> Option<String> {
    let text = text.trim();
    let count = text.chars().count();
    ((1..=max).contains(&count) && !text.chars().any(char::is_control)).then(|| text.to_owned())
}

macro_rules! string_type {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdentityParseError;
            fn try_from(text: String) -> Result<Self, IdentityParseError> {
                Self::parse(&text)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdentityParseError;
            fn from_str(text: &str) -> Result<Self, IdentityParseError> {
                Self::parse(text)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// An e-mail address: trimmed, lowercased, at most 254 bytes, exactly one `@` between a
/// non-empty local part and a non-empty domain, no whitespace or control characters. Two
/// addresses that differ only in case are the same address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Email(String);

impl Email {
    pub const MAX_BYTES: usize = 254;

    pub fn parse(text: &str) -> Result<Self, IdentityParseError> {
        let email = text.trim().to_lowercase();
        if email.is_empty() {
            return Err(IdentityParseError::Email("it is empty"));
        }
        if email.len() > Self::MAX_BYTES {
            return Err(IdentityParseError::Email("it is longer than 254 bytes"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(IdentityParseError::Email(
                "it contains whitespace or a control character",
            ));
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err(IdentityParseError::Email("it has no @"));
        };
        if domain.contains('@') {
            return Err(IdentityParseError::Email("it has more than one @"));
        }
        if local.is_empty() || domain.is_empty() {
            return Err(IdentityParseError::Email(
                "the parts before and after the @ must not be empty",
            ));
        }
        Ok(Self(email))
    }
}

string_type!(Email);

/// An org's display name: 1 to 100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct OrgName(String);

impl OrgName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(text: &str) -> Result<Self, IdentityParseError> {
        bounded_text(text, Self::MAX_CHARS)
            .map(Self)
            .ok_or(IdentityParseError::OrgName)
    }
}

string_type!(OrgName);

/// An API key's display name: 1 to 100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct ApiKeyName(String);

impl ApiKeyName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(text: &str) -> Result<Self, IdentityParseError> {
        bounded_text(text, Self::MAX_CHARS)
            .map(Self)
            .ok_or(IdentityParseError::ApiKeyName)
    }
}

string_type!(ApiKeyName);

/// The public part of an API key, by which the key is found (unique): 4 to 32 characters of
/// ASCII letters, digits, `_` or `-`. The caller chooses it (say 12 random characters) and
/// shows the whole key once.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct ApiKeyPrefix(String);

impl ApiKeyPrefix {
    pub const MIN_CHARS: usize = 4;
    pub const MAX_CHARS: usize = 32;

    pub fn parse(text: &str) -> Result<Self, IdentityParseError> {
        let valid = (Self::MIN_CHARS..=Self::MAX_CHARS).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(IdentityParseError::ApiKeyPrefix)
        }
    }
}

string_type!(ApiKeyPrefix);

/// An org's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Free,
    Teams,
    Enterprise,
}

impl Plan {
    pub const ALL: [Plan; 3] = [Plan::Free, Plan::Teams, Plan::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Teams => "teams",
            Self::Enterprise => "enterprise",
        }
    }

    pub fn parse(text: &str) -> Result<Self, IdentityParseError> {
        Self::ALL
            .into_iter()
            .find(|plan| plan.as_str() == text)
            .ok_or_else(|| IdentityParseError::Plan(text.to_owned()))
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member's role in an org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages members, API keys, budgets and listings.
    Owner,
    Member,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Owner, Role::Member];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Member => "member",
        }
    }

    pub fn parse(text: &str) -> Result<Self, IdentityParseError> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| IdentityParseError::Role(text.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far an org's identity has been verified: 0 (not at all) to 3.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "u8")]
pub struct VerificationLevel(u8);

impl VerificationLevel {
    pub const NONE: VerificationLevel = VerificationLevel(0);
    pub const MAX: VerificationLevel = VerificationLevel(3);

    pub fn new(level: u8) -> Result<Self, IdentityParseError> {
        if level <= Self::MAX.0 {
            Ok(Self(level))
        } else {
            Err(IdentityParseError::VerificationLevel(i64::from(level)))
        }
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for VerificationLevel {
    type Error = IdentityParseError;
    fn try_from(level: u8) -> Result<Self, IdentityParseError> {
        Self::new(level)
    }
}

impl fmt::Display for VerificationLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "read")]
    Read,
    #[serde(rename = "usage:write")]
    UsageWrite,
    #[serde(rename = "market:trade")]
    MarketTrade,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::UsageWrite, Scope::MarketTrade];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::UsageWrite => "usage:write",
            Self::MarketTrade => "market:trade",
        }
    }

    pub fn parse(text: &str) -> Result<Self, IdentityParseError> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| IdentityParseError::Scope(text.to_owned()))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A non-empty set of scopes. Serialized as an array (`["read", "usage:write"]`); displayed
/// and stored space-separated, in a fixed order (`read usage:write`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<Scope>", into = "Vec<Scope>")]
pub struct Scopes(BTreeSet<Scope>);

impl Scopes {
    /// The scopes given; duplicates count once. Refuses none.
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Result<Self, IdentityParseError> {
        let set: BTreeSet<Scope> = scopes.into_iter().collect();
        if set.is_empty() {
            Err(IdentityParseError::NoScopes)
        } else {
            Ok(Self(set))
        }
    }

    /// Every scope there is.
    pub fn all() -> Self {
        Self(Scope::ALL.into_iter().collect())
    }

    /// Parses scope names separated by whitespace or commas: `"read usage:write"`.
    pub fn parse(text: &str) -> Result<Self, IdentityParseError> {
        let scopes = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|part| !part.is_empty())
            .map(Scope::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(scopes)
    }

    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }
}

impl TryFrom<Vec<Scope>> for Scopes {
    type Error = IdentityParseError;
    fn try_from(scopes: Vec<Scope>) -> Result<Self, IdentityParseError> {
        Self::new(scopes)
    }
}

impl From<Scopes> for Vec<Scope> {
    fn from(scopes: Scopes) -> Self {
        scopes.0.into_iter().collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, scope) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

/// A password hash as a PHC string (`$argon2id$v=19$m=…$salt$hash`): starts with `$`, at most
/// 512 bytes of printable ASCII. Opaque here: the API layer makes and checks it. Its `Debug`
/// shows nothing of it, and it does not implement `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub const MAX_BYTES: usize = 512;

    pub fn new(phc: String) -> Result<Self, IdentityParseError> {
        let valid = phc.len() > 1
            && phc.len() <= Self::MAX_BYTES
            && phc.starts_with('$')
            && phc.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(Self(phc))
        } else {
            Err(IdentityParseError::PasswordHash)
        }
    }

    /// The PHC string, to verify a password against.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(***)")
    }
}

/// The SHA-256 of an opaque token (a refresh token or an API key). Its `Debug` shows none of
/// its bytes, equality takes the same time whatever the bytes, and it does not implement
/// `Serialize`.
#[derive(Clone, Copy)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdentityParseError> {
        <[u8; 32]>::try_from(bytes)
            .map(Self)
            .map_err(|_| IdentityParseError::TokenHash(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for TokenHash {
    /// Compares every byte, so the time taken says nothing about where two hashes differ.
    fn eq(&self, other: &Self) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for TokenHash {}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(***)")
    }
}

/// What an audit entry records was done: 1 to 64 characters of `a-z`, `0-9`, `_` and `.`,
/// such as `org.plan_changed` or `ledger.top_up`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct AuditAction(String);

impl AuditAction {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(text: &str) -> Result<Self, IdentityParseError> {
        let valid = (1..=Self::MAX_CHARS).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(IdentityParseError::AuditAction)
        }
    }
}

string_type!(AuditAction);

/// An org (tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Org {
    pub id: OrgId,
    pub name: OrgName,
    pub plan: Plan,
    pub verification_level: VerificationLevel,
    /// A frozen org's requests are refused by the API (fraud review); its data stays.
    pub frozen: bool,
    pub created_at: Timestamp,
}

/// A user (a person signing in to the portal). The password hash is returned only by
/// [`IdentityStore::user_by_email`], next to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    /// A platform (provider) admin.
    pub is_admin: bool,
    pub created_at: Timestamp,
}

/// A new API key, as [`IdentityStore::create_api_key`] takes it.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub org: OrgId,
    pub name: ApiKeyName,
    pub prefix: ApiKeyPrefix,
    /// The SHA-256 of the whole key, which the caller shows once and forgets.
    pub secret_hash: TokenHash,
    pub scopes: Scopes,
    pub created_by: UserId,
}

/// An API key, without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub org: OrgId,
    pub name: ApiKeyName,
    pub prefix: ApiKeyPrefix,
    pub scopes: Scopes,
    pub created_by: UserId,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
    /// Set once the key is revoked; a revoked key must be refused.
    pub revoked_at: Option<Timestamp>,
}

/// A refresh token just issued, and the family it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IssuedRefreshToken {
    pub id: RefreshTokenId,
    pub family: TokenFamilyId,
}

/// What presenting a refresh token for rotation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum RotateOutcome {
    /// The token was live: it is replaced by the new one, in the same family.
    Rotated { user: UserId, family: TokenFamilyId },
    /// The token had already been rotated, or its family revoked: the whole family is now
    /// revoked, for good. Nothing was issued.
    Reused { user: UserId, family: TokenFamilyId },
    /// The token was live but has expired. Nothing changed.
    Expired,
    /// No token has this hash.
    Unknown,
}

/// One entry of the audit log. Entries are never updated or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    id: AuditId,
    at: Timestamp,
    actor: Option<UserId>,
    org: Option<OrgId>,
    action: AuditAction,
    target: String,
    details: serde_json::Value,
}

impl AuditEntry {
    pub const TARGET_MAX_CHARS: usize = 200;
    pub const DETAILS_MAX_BYTES: usize = 4096;

    /// A new entry with a fresh id, no actor and no org (see [`AuditEntry::by`] and
    /// [`AuditEntry::in_org`]). `target` names what was acted on (at most 200 characters, no
    /// control characters); `details` must serialize to at most 4 KiB of JSON.
    pub fn new(
        at: Timestamp,
        action: AuditAction,
        target: impl Into<String>,
        details: serde_json::Value,
    ) -> Result<Self, IdentityParseError> {
        Self::from_parts(
            AuditId::generate(),
            at,
            None,
            None,
            action,
            target.into(),
            details,
        )
    }

    fn from_parts(
        id: AuditId,
        at: Timestamp,
        actor: Option<UserId>,
        org: Option<OrgId>,
        action: AuditAction,
        target: String,
        details: serde_json::Value,
    ) -> Result<Self, IdentityParseError> {
        if target.chars().count() > Self::TARGET_MAX_CHARS || target.chars().any(char::is_control) {
            return Err(IdentityParseError::AuditTarget);
        }
        let size = details.to_string().len();
        if size > Self::DETAILS_MAX_BYTES {
            return Err(IdentityParseError::AuditDetails(size));
        }
        Ok(Self {
            id,
            at,
            actor,
            org,
            action,
            target,
            details,
        })
    }

    /// The user who acted.
    #[must_use]
    pub fn by(mut self, actor: UserId) -> Self {
        self.actor = Some(actor);
        self
    }

    /// The org acted on or in.
    #[must_use]
    pub fn in_org(mut self, org: OrgId) -> Self {
        self.org = Some(org);
        self
    }

    pub fn id(&self) -> AuditId {
        self.id
    }

    pub fn at(&self) -> Timestamp {
        self.at
    }

    pub fn actor(&self) -> Option<UserId> {
        self.actor
    }

    pub fn org(&self) -> Option<OrgId> {
        self.org
    }

    pub fn action(&self) -> &AuditAction {
        &self.action
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn details(&self) -> &serde_json::Value {
        &self.details
    }

    /// Where the next page starts when this entry is the last of a page.
    pub fn cursor(&self) -> AuditCursor {
        AuditCursor {
            at: self.at,
            id: self.id,
        }
    }
}

/// Which audit entries to read; every field that is set must match. `since` is inclusive,
/// `until` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<AuditAction>,
    pub actor: Option<UserId>,
    pub org: Option<OrgId>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

/// Which orgs to list; every condition that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgFilter {
    /// Lower-case text the org's name contains: ASCII letters match in either case, every
    /// other character exactly.
    name: Option<String>,
    plan: Option<Plan>,
    frozen: Option<bool>,
}

impl OrgFilter {
    /// Orgs whose name contains `text`, ASCII letters in either case.
    pub fn name_containing(mut self, text: &str) -> Self {
        self.name = Some(text.to_ascii_lowercase());
        self
    }

    /// Orgs on `plan`.
    pub fn on_plan(mut self, plan: Plan) -> Self {
        self.plan = Some(plan);
        self
    }

    /// Frozen orgs (`true`) or the others (`false`).
    pub fn frozen_is(mut self, frozen: bool) -> Self {
        self.frozen = Some(frozen);
        self
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn plan(&self) -> Option<Plan> {
        self.plan
    }

    pub fn frozen(&self) -> Option<bool> {
        self.frozen
    }
}

/// Where a page of the audit log starts: after this entry, in (at, id) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCursor {
    pub at: Timestamp,
    pub id: AuditId,
}

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The database failed; nothing was committed and the call may be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a user with this e-mail address exists already")]
    EmailTaken,
    #[error("an API key with this prefix exists already")]
    PrefixTaken,
    #[error("the org does not exist")]
    OrgNotFound,
    #[error("the user does not exist")]
    UserNotFound,
    #[error("the refresh-token family does not exist or belongs to another user")]
    FamilyNotFound,
    #[error("the refresh-token family has been revoked")]
    FamilyRevoked,
}

impl From<sqlx::Error> for IdentityError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(error))
    }
}

/// Orgs, users, memberships, refresh tokens, API keys and the audit log, for either backend.
/// Every method is one transaction. Every [`crate::Store`] is one: `store.identity()`.
#[async_trait]
pub trait IdentityStore: Send + Sync {
    /// This store, as an identity store.
    fn identity(&self) -> &dyn IdentityStore;

    // Orgs.

    /// Creates an org with a fresh id, verification level 0, not frozen.
    async fn create_org(
        &self,
        name: &OrgName,
        plan: Plan,
        now: Timestamp,
    ) -> Result<Org, IdentityError>;

    async fn org(&self, id: OrgId) -> Result<Option<Org>, IdentityError>;

    /// Orgs matching `filter` in id order (ids are UUID v7, so about creation order), after
    /// `after`, at most `limit` (clamped to 1..=1000).
    async fn orgs(
        &self,
        filter: &OrgFilter,
        after: Option<OrgId>,
        limit: u32,
    ) -> Result<Vec<Org>, IdentityError>;

    /// The org as changed; `None` when it does not exist.
    async fn set_org_plan(&self, id: OrgId, plan: Plan) -> Result<Option<Org>, IdentityError>;

    /// The org as changed; `None` when it does not exist.
    async fn set_verification(
        &self,
        id: OrgId,
        level: VerificationLevel,
    ) -> Result<Option<Org>, IdentityError>;

    /// The org as changed; `None` when it does not exist.
    async fn set_frozen(&self, id: OrgId, frozen: bool) -> Result<Option<Org>, IdentityError>;

    // Users.

    /// Creates a user with a fresh id; [`IdentityError::EmailTaken`] when the address (in any
    /// case) is taken.
    async fn create_user(
        &self,
        email: &Email,
        password_hash: &PasswordHash,
        is_admin: bool,
        now: Timestamp,
    ) -> Result<User, IdentityError>;

    /// The user with this address and the hash to check a password against.
    async fn user_by_email(
        &self,
        email: &Email,
    ) -> Result<Option<(User, PasswordHash)>, IdentityError>;

    async fn user(&self, id: UserId) -> Result<Option<User>, IdentityError>;

    /// Replaces a user's password hash; `false` when the user does not exist. (Revoking the
    /// user's refresh tokens is the caller's decision: [`IdentityStore::revoke_user_tokens`].)
    async fn set_password(&self, user: UserId, hash: &PasswordHash) -> Result<bool, IdentityError>;

    /// How many platform admins there are.
    async fn count_admins(&self) -> Result<u64, IdentityError>;

    /// The deployment's secret named `name`: `candidate` when this call is the first to ask,
    /// the value stored by the first caller otherwise, so every process agrees.
    async fn server_secret(
        &self,
        name: &str,
        candidate: &str,
        now: Timestamp,
    ) -> Result<String, IdentityError>;

    // Memberships.

    /// Makes `user` a member of `org` with `role`, or changes the role of a member.
    async fn add_member(&self, org: OrgId, user: UserId, role: Role) -> Result<(), IdentityError>;

    /// `false` when the user was not a member of the org.
    async fn remove_member(&self, org: OrgId, user: UserId) -> Result<bool, IdentityError>;

    /// The user's role in the org; `None` when not a member.
    async fn membership(&self, org: OrgId, user: UserId) -> Result<Option<Role>, IdentityError>;

    /// The orgs a user belongs to, oldest first.
    async fn memberships_of(&self, user: UserId) -> Result<Vec<(Org, Role)>, IdentityError>;

    /// An org's members, by e-mail address.
    async fn members(&self, org: OrgId) -> Result<Vec<(User, Role)>, IdentityError>;

    // Refresh tokens.

    /// Stores a refresh token by its hash: in a new family when `family` is `None` (a sign-in),
    /// else in that family of the same user ([`IdentityError::FamilyNotFound`],
    /// [`IdentityError::FamilyRevoked`]).
    async fn issue_refresh_token(
        &self,
        user: UserId,
        family: Option<TokenFamilyId>,
        hash: &TokenHash,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<IssuedRefreshToken, IdentityError>;

    /// Rotates the token whose hash is `old` into a new one whose hash is `new`; see
    /// [`RotateOutcome`]. Reuse — an already rotated token, or one of a revoked family —
    /// revokes the whole family in the same transaction. Of concurrent rotations of one token,
    /// exactly one is `Rotated`.
    async fn rotate_refresh_token(
        &self,
        old: &TokenHash,
        new: &TokenHash,
        new_expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<RotateOutcome, IdentityError>;

    /// Revokes a family for good; `false` when it does not exist. Revoking twice keeps the
    /// first time.
    async fn revoke_family(
        &self,
        family: TokenFamilyId,
        now: Timestamp,
    ) -> Result<bool, IdentityError>;

    /// Revokes every family of a user (sign out everywhere); returns how many were live.
    async fn revoke_user_tokens(&self, user: UserId, now: Timestamp) -> Result<u64, IdentityError>;

    // API keys.

    /// Stores a key by its prefix and hash: [`IdentityError::PrefixTaken`],
    /// [`IdentityError::OrgNotFound`], [`IdentityError::UserNotFound`] (`created_by`).
    async fn create_api_key(
        &self,
        key: &NewApiKey,
        now: Timestamp,
    ) -> Result<ApiKey, IdentityError>;

    /// The key with this prefix and its hash, to authenticate a request. Revoked keys are
    /// returned too, with `revoked_at` set: the caller refuses them.
    async fn api_key_by_prefix(
        &self,
        prefix: &ApiKeyPrefix,
    ) -> Result<Option<(ApiKey, TokenHash)>, IdentityError>;

    /// An org's keys, revoked ones included, oldest first.
    async fn api_keys(&self, org: OrgId) -> Result<Vec<ApiKey>, IdentityError>;

    /// Revokes a key of `org`; `false` when `org` has no such key. Revoking twice keeps the
    /// first time.
    async fn revoke_api_key(
        &self,
        org: OrgId,
        id: ApiKeyId,
        now: Timestamp,
    ) -> Result<bool, IdentityError>;

    /// Records that a key was used at `now` (never moves `last_used_at` back). The caller
    /// throttles how often it calls this.
    async fn touch_api_key(&self, id: ApiKeyId, now: Timestamp) -> Result<(), IdentityError>;

    // The audit log.

    /// Appends an entry. Appending the same entry again (same id) changes nothing, so a
    /// retried call is safe.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), IdentityError>;

    /// Entries matching `filter` in (at, id) order, after `after`, at most `limit` (clamped to
    /// 1..=1000).
    async fn audit(
        &self,
        filter: &AuditFilter,
        after: Option<AuditCursor>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, IdentityError>;
}

// Rows as stored, turned into domain values by the backends' shared implementation. A value
// that does not parse is corrupt data.

fn corrupt(what: impl fmt::Display) -> IdentityError {
    IdentityError::Store(StoreError::corrupt(what))
}

pub(crate) fn user_id(uuid: Uuid) -> Result<UserId, IdentityError> {
    UserId::new(uuid).map_err(corrupt)
}

pub(crate) fn org_id(uuid: Uuid) -> Result<OrgId, IdentityError> {
    OrgId::new(uuid).map_err(corrupt)
}

pub(crate) fn family_id(uuid: Uuid) -> Result<TokenFamilyId, IdentityError> {
    TokenFamilyId::new(uuid).map_err(corrupt)
}

pub(crate) fn role(text: &str) -> Result<Role, IdentityError> {
    Role::parse(text).map_err(corrupt)
}

pub(crate) fn token_hash(bytes: &[u8]) -> Result<TokenHash, IdentityError> {
    TokenHash::from_slice(bytes).map_err(corrupt)
}

pub(crate) fn password_hash(text: String) -> Result<PasswordHash, IdentityError> {
    PasswordHash::new(text).map_err(corrupt)
}

pub(crate) struct RawOrg {
    pub id: Uuid,
    pub name: String,
    pub plan: String,
    pub verification_level: i16,
    pub frozen: bool,
    pub created_at: i64,
}

impl RawOrg {
    pub fn into_org(self) -> Result<Org, IdentityError> {
        let level = u8::try_from(self.verification_level)
            .map_err(|_| IdentityParseError::VerificationLevel(i64::from(self.verification_level)))
            .and_then(VerificationLevel::new)
            .map_err(corrupt)?;
        Ok(Org {
            id: org_id(self.id)?,
            name: OrgName::parse(&self.name).map_err(corrupt)?,
            plan: Plan::parse(&self.plan).map_err(corrupt)?,
            verification_level: level,
            frozen: self.frozen,
            created_at: Timestamp::from_micros(self.created_at),
        })
    }
}

pub(crate) struct RawUser {
    pub id: Uuid,
    pub email: String,
    pub is_admin: bool,
    pub created_at: i64,
}

impl RawUser {
    pub fn into_user(self) -> Result<User, IdentityError> {
        Ok(User {
            id: user_id(self.id)?,
            email: Email::parse(&self.email).map_err(corrupt)?,
            is_admin: self.is_admin,
            created_at: Timestamp::from_micros(self.created_at),
        })
    }
}

pub(crate) struct RawApiKey {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: String,
    pub created_by: Uuid,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl RawApiKey {
    pub fn into_key(self) -> Result<ApiKey, IdentityError> {
        Ok(ApiKey {
            id: ApiKeyId::new(self.id).map_err(corrupt)?,
            org: org_id(self.org_id)?,
            name: ApiKeyName::parse(&self.name).map_err(corrupt)?,
            prefix: ApiKeyPrefix::parse(&self.prefix).map_err(corrupt)?,
            scopes: Scopes::parse(&self.scopes).map_err(corrupt)?,
            created_by: user_id(self.created_by)?,
            created_at: Timestamp::from_micros(self.created_at),
            last_used_at: self.last_used_at.map(Timestamp::from_micros),
            revoked_at: self.revoked_at.map(Timestamp::from_micros),
        })
    }
}

pub(crate) struct RawAudit {
    pub id: Uuid,
    pub at: i64,
    pub actor_id: Option<Uuid>,
    pub org_id: Option<Uuid>,
    pub action: String,
    pub target: String,
    pub details: String,
}

impl RawAudit {
    pub fn into_entry(self) -> Result<AuditEntry, IdentityError> {
        let details = serde_json::from_str(&self.details).map_err(corrupt)?;
        AuditEntry::from_parts(
            AuditId::new(self.id).map_err(corrupt)?,
            Timestamp::from_micros(self.at),
            self.actor_id.map(user_id).transpose()?,
            self.org_id.map(org_id).transpose()?,
            AuditAction::parse(&self.action).map_err(corrupt)?,
            self.target,
            details,
        )
        .map_err(corrupt)
    }
}

/// Expands the shared implementation of [`IdentityStore`] for `$store` (whose field `pool` is
/// a `sqlx::Pool<$db>`), with the backend's dialect module `$dialect`: `begin_write`,
/// `FOR_UPDATE` and `is_retryable`.
macro_rules! shared_identity {
    ($store:ident, $db:ty, $dialect:ident) => {
        mod identity_shared {
            use async_trait::async_trait;
            use credex_ledger::{OrgId, Timestamp};
            use sqlx::Row;
            use uuid::Uuid;

            use super::$dialect as dialect;
            use super::$store;
            use crate::identity::{
                family_id, password_hash, role, token_hash, user_id, ApiKey, ApiKeyId,
                ApiKeyPrefix, AuditCursor, AuditEntry, AuditFilter, Email, IdentityError,
                IdentityStore, IssuedRefreshToken, NewApiKey, Org, OrgFilter, OrgName, PasswordHash,
                Plan, RawApiKey, RawAudit, RawOrg, RawUser, RefreshTokenId, Role, RotateOutcome,
                TokenFamilyId, TokenHash, User, UserId, VerificationLevel,
            };

            type Connection = <$db as sqlx::Database>::Connection;
            type DbRow = <$db as sqlx::Database>::Row;

            const ORG_COLUMNS: &str = "id, name, plan, verification_level, frozen, created_at";
            const USER_COLUMNS: &str = "id, email, is_admin, created_at";
            const API_KEY_COLUMNS: &str = "id, org_id, name, prefix, scopes, created_by, \
                created_at, last_used_at, revoked_at";
            const AUDIT_COLUMNS: &str = "id, at, actor_id, org_id, action, target, details";

            fn org(row: &DbRow) -> Result<Org, IdentityError> {
                RawOrg {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    plan: row.try_get("plan")?,
                    verification_level: row.try_get("verification_level")?,
                    frozen: row.try_get("frozen")?,
                    created_at: row.try_get("created_at")?,
                }
                .into_org()
            }

            fn user(row: &DbRow) -> Result<User, IdentityError> {
                RawUser {
                    id: row.try_get("id")?,
                    email: row.try_get("email")?,
                    is_admin: row.try_get("is_admin")?,
                    created_at: row.try_get("created_at")?,
                }
                .into_user()
            }

            fn api_key(row: &DbRow) -> Result<ApiKey, IdentityError> {
                RawApiKey {
                    id: row.try_get("id")?,
                    org_id: row.try_get("org_id")?,
                    name: row.try_get("name")?,
                    prefix: row.try_get("prefix")?,
                    scopes: row.try_get("scopes")?,
                    created_by: row.try_get("created_by")?,
                    created_at: row.try_get("created_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                }
                .into_key()
            }

            fn audit_entry(row: &DbRow) -> Result<AuditEntry, IdentityError> {
                RawAudit {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    actor_id: row.try_get("actor_id")?,
                    org_id: row.try_get("org_id")?,
                    action: row.try_get("action")?,
                    target: row.try_get("target")?,
                    details: row.try_get("details")?,
                }
                .into_entry()
            }

            /// Runs `attempt` again while it fails with an error worth a retry (a deadlock, a
            /// busy database, …), with backoff, at most `MAX_ATTEMPTS` times.
            async fn retrying<T, F, Fut>(attempt: F) -> Result<T, IdentityError>
            where
                F: Fn() -> Fut,
                Fut: std::future::Future<Output = Result<T, IdentityError>>,
            {
                crate::sql::retry(dialect::is_retryable, attempt).await
            }

            async fn exists(
                conn: &mut Connection,
                table: &str,
                id: Uuid,
            ) -> Result<bool, IdentityError> {
                let sql = format!("SELECT 1 AS found FROM {table} WHERE id = $1");
                let row = sqlx::query(&sql).bind(id).fetch_optional(&mut *conn).await?;
                Ok(row.is_some())
            }

            /// Revokes a family and returns whether it exists; keeps an earlier revocation.
            async fn revoke_family_in(
                conn: &mut Connection,
                family: Uuid,
                now: Timestamp,
            ) -> Result<bool, IdentityError> {
                let done = sqlx::query(
                    "UPDATE refresh_token_families SET revoked_at = COALESCE(revoked_at, $2) \
                     WHERE id = $1",
                )
                .bind(family)
                .bind(now.as_micros())
                .execute(&mut *conn)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            impl $store {
                async fn issue_once(
                    &self,
                    user: UserId,
                    family: Option<TokenFamilyId>,
                    hash: &TokenHash,
                    expires_at: Timestamp,
                    now: Timestamp,
                ) -> Result<IssuedRefreshToken, IdentityError> {
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let family = match family {
                        None => {
                            if !exists(&mut tx, "users", user.as_uuid()).await? {
                                return Err(IdentityError::UserNotFound);
                            }
                            let family = TokenFamilyId::generate();
                            sqlx::query(
                                "INSERT INTO refresh_token_families (id, user_id, created_at, \
                                 revoked_at) VALUES ($1, $2, $3, NULL)",
                            )
                            .bind(family.as_uuid())
                            .bind(user.as_uuid())
                            .bind(now.as_micros())
                            .execute(&mut *tx)
                            .await?;
                            family
                        }
                        Some(family) => {
                            let sql = format!(
                                "SELECT user_id, revoked_at FROM refresh_token_families \
                                 WHERE id = $1{}",
                                dialect::FOR_UPDATE
                            );
                            let row = sqlx::query(&sql)
                                .bind(family.as_uuid())
                                .fetch_optional(&mut *tx)
                                .await?;
                            let Some(row) = row else {
                                return Err(IdentityError::FamilyNotFound);
                            };
                            if row.try_get::<Uuid, _>("user_id")? != user.as_uuid() {
                                return Err(IdentityError::FamilyNotFound);
                            }
                            if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() {
                                return Err(IdentityError::FamilyRevoked);
                            }
                            family
                        }
                    };
                    let id = RefreshTokenId::generate();
                    sqlx::query(
                        "INSERT INTO refresh_tokens (id, family_id, token_hash, issued_at, \
                         expires_at, replaced_by) VALUES ($1, $2, $3, $4, $5, NULL)",
                    )
                    .bind(id.as_uuid())
                    .bind(family.as_uuid())
                    .bind(hash.as_bytes().as_slice())
                    .bind(now.as_micros())
                    .bind(expires_at.as_micros())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(IssuedRefreshToken { id, family })
                }

                async fn rotate_once(
                    &self,
                    old: &TokenHash,
                    new: &TokenHash,
                    new_expires_at: Timestamp,
                    now: Timestamp,
                ) -> Result<RotateOutcome, IdentityError> {
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    let found = sqlx::query("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                        .bind(old.as_bytes().as_slice())
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(found) = found else {
                        return Ok(RotateOutcome::Unknown);
                    };
                    let family: Uuid = found.try_get("family_id")?;
                    // Lock order: the family, then the token. Every rotation of the family
                    // waits here for the one before it to commit, then reads its outcome.
                    let sql = format!(
                        "SELECT user_id, revoked_at FROM refresh_token_families WHERE id = $1{}",
                        dialect::FOR_UPDATE
                    );
                    let family_row = sqlx::query(&sql).bind(family).fetch_one(&mut *tx).await?;
                    let user = user_id(family_row.try_get("user_id")?)?;
                    let revoked = family_row.try_get::<Option<i64>, _>("revoked_at")?.is_some();
                    let sql = format!(
                        "SELECT id, expires_at, replaced_by FROM refresh_tokens \
                         WHERE token_hash = $1{}",
                        dialect::FOR_UPDATE
                    );
                    let token = sqlx::query(&sql)
                        .bind(old.as_bytes().as_slice())
                        .fetch_one(&mut *tx)
                        .await?;
                    let token_id: Uuid = token.try_get("id")?;
                    let replaced = token.try_get::<Option<Uuid>, _>("replaced_by")?.is_some();
                    let reused = RotateOutcome::Reused {
                        user,
                        family: family_id(family)?,
                    };
                    if revoked || replaced {
                        revoke_family_in(&mut tx, family, now).await?;
                        tx.commit().await?;
                        return Ok(reused);
                    }
                    if token.try_get::<i64, _>("expires_at")? <= now.as_micros() {
                        tx.rollback().await?;
                        return Ok(RotateOutcome::Expired);
                    }
                    let new_id = RefreshTokenId::generate();
                    let marked = sqlx::query(
                        "UPDATE refresh_tokens SET replaced_by = $1 \
                         WHERE id = $2 AND replaced_by IS NULL",
                    )
                    .bind(new_id.as_uuid())
                    .bind(token_id)
                    .execute(&mut *tx)
                    .await?;
                    if marked.rows_affected() != 1 {
                        // Another rotation got there first (impossible under the locks above,
                        // but the row count is the proof): this one is a reuse.
                        revoke_family_in(&mut tx, family, now).await?;
                        tx.commit().await?;
                        return Ok(reused);
                    }
                    sqlx::query(
                        "INSERT INTO refresh_tokens (id, family_id, token_hash, issued_at, \
                         expires_at, replaced_by) VALUES ($1, $2, $3, $4, $5, NULL)",
                    )
                    .bind(new_id.as_uuid())
                    .bind(family)
                    .bind(new.as_bytes().as_slice())
                    .bind(now.as_micros())
                    .bind(new_expires_at.as_micros())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(RotateOutcome::Rotated {
                        user,
                        family: family_id(family)?,
                    })
                }

                async fn create_api_key_once(
                    &self,
                    key: &NewApiKey,
                    now: Timestamp,
                ) -> Result<ApiKey, IdentityError> {
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    if !exists(&mut tx, "orgs", key.org.as_uuid()).await? {
                        return Err(IdentityError::OrgNotFound);
                    }
                    if !exists(&mut tx, "users", key.created_by.as_uuid()).await? {
                        return Err(IdentityError::UserNotFound);
                    }
                    let stored = ApiKey {
                        id: ApiKeyId::generate(),
                        org: key.org,
                        name: key.name.clone(),
                        prefix: key.prefix.clone(),
                        scopes: key.scopes.clone(),
                        created_by: key.created_by,
                        created_at: now,
                        last_used_at: None,
                        revoked_at: None,
                    };
                    let done = sqlx::query(
                        "INSERT INTO api_keys (id, org_id, name, prefix, secret_hash, scopes, \
                         created_by, created_at, last_used_at, revoked_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL) \
                         ON CONFLICT (prefix) DO NOTHING",
                    )
                    .bind(stored.id.as_uuid())
                    .bind(stored.org.as_uuid())
                    .bind(stored.name.as_str())
                    .bind(stored.prefix.as_str())
                    .bind(key.secret_hash.as_bytes().as_slice())
                    .bind(stored.scopes.to_string())
                    .bind(stored.created_by.as_uuid())
                    .bind(now.as_micros())
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() != 1 {
                        return Err(IdentityError::PrefixTaken);
                    }
                    tx.commit().await?;
                    Ok(stored)
                }

                async fn add_member_once(
                    &self,
                    org: OrgId,
                    user: UserId,
                    role: Role,
                ) -> Result<(), IdentityError> {
                    let mut tx = dialect::begin_write(&self.pool).await?;
                    if !exists(&mut tx, "orgs", org.as_uuid()).await? {
                        return Err(IdentityError::OrgNotFound);
                    }
                    if !exists(&mut tx, "users", user.as_uuid()).await? {
                        return Err(IdentityError::UserNotFound);
                    }
                    sqlx::query(
                        "INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3) \
                         ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
                    )
                    .bind(org.as_uuid())
                    .bind(user.as_uuid())
                    .bind(role.as_str())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }
            }

            #[async_trait]
            impl IdentityStore for $store {
                fn identity(&self) -> &dyn IdentityStore {
                    self
                }

                async fn create_org(
                    &self,
                    name: &OrgName,
                    plan: Plan,
                    now: Timestamp,
                ) -> Result<Org, IdentityError> {
                    let org = Org {
                        id: OrgId::generate(),
                        name: name.clone(),
                        plan,
                        verification_level: VerificationLevel::NONE,
                        frozen: false,
                        created_at: now,
                    };
                    retrying(|| async {
                        sqlx::query(
                            "INSERT INTO orgs (id, name, plan, verification_level, frozen, \
                             created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(org.id.as_uuid())
                        .bind(org.name.as_str())
                        .bind(org.plan.as_str())
                        .bind(i16::from(org.verification_level.get()))
                        .bind(org.frozen)
                        .bind(now.as_micros())
                        .execute(&self.pool)
                        .await?;
                        Ok(())
                    })
                    .await?;
                    Ok(org)
                }

                async fn org(&self, id: OrgId) -> Result<Option<Org>, IdentityError> {
                    let sql = format!("SELECT {ORG_COLUMNS} FROM orgs WHERE id = $1");
                    let row = sqlx::query(&sql)
                        .bind(id.as_uuid())
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(org).transpose()
                }

                async fn orgs(
                    &self,
                    filter: &OrgFilter,
                    after: Option<OrgId>,
                    limit: u32,
                ) -> Result<Vec<Org>, IdentityError> {
                    // Only the conditions that are set, numbered in the order they are bound.
                    let mut sql = format!("SELECT {ORG_COLUMNS} FROM orgs WHERE 1 = 1");
                    let mut n = 0;
                    let mut condition = |text: &str| {
                        n += 1;
                        sql.push_str(&text.replace('#', &format!("${n}")));
                    };
                    if filter.name().is_some() {
                        condition(dialect::ORG_NAME_CONTAINS);
                    }
                    if filter.plan().is_some() {
                        condition(" AND plan = #");
                    }
                    if filter.frozen().is_some() {
                        condition(" AND frozen = #");
                    }
                    if after.is_some() {
                        condition(" AND id > #");
                    }
                    condition(" ORDER BY id LIMIT #");
                    let mut query = sqlx::query(&sql);
                    if let Some(name) = filter.name() {
                        query = query.bind(name);
                    }
                    if let Some(plan) = filter.plan() {
                        query = query.bind(plan.as_str());
                    }
                    if let Some(frozen) = filter.frozen() {
                        query = query.bind(frozen);
                    }
                    if let Some(after) = after {
                        query = query.bind(after.as_uuid());
                    }
                    let query = query.bind(i64::from(limit.clamp(1, crate::PAGE_MAX)));
                    let rows = query.fetch_all(&self.pool).await?;
                    rows.iter().map(org).collect()
                }

                async fn set_org_plan(
                    &self,
                    id: OrgId,
                    plan: Plan,
                ) -> Result<Option<Org>, IdentityError> {
                    let sql =
                        format!("UPDATE orgs SET plan = $2 WHERE id = $1 RETURNING {ORG_COLUMNS}");
                    retrying(|| async {
                        let row = sqlx::query(&sql)
                            .bind(id.as_uuid())
                            .bind(plan.as_str())
                            .fetch_optional(&self.pool)
                            .await?;
                        row.as_ref().map(org).transpose()
                    })
                    .await
                }

                async fn set_verification(
                    &self,
                    id: OrgId,
                    level: VerificationLevel,
                ) -> Result<Option<Org>, IdentityError> {
                    let sql = format!(
                        "UPDATE orgs SET verification_level = $2 WHERE id = $1 \
                         RETURNING {ORG_COLUMNS}"
                    );
                    retrying(|| async {
                        let row = sqlx::query(&sql)
                            .bind(id.as_uuid())
                            .bind(i16::from(level.get()))
                            .fetch_optional(&self.pool)
                            .await?;
                        row.as_ref().map(org).transpose()
                    })
                    .await
                }

                async fn set_frozen(
                    &self,
                    id: OrgId,
                    frozen: bool,
                ) -> Result<Option<Org>, IdentityError> {
                    let sql =
                        format!("UPDATE orgs SET frozen = $2 WHERE id = $1 RETURNING {ORG_COLUMNS}");
                    retrying(|| async {
                        let row = sqlx::query(&sql)
                            .bind(id.as_uuid())
                            .bind(frozen)
                            .fetch_optional(&self.pool)
                            .await?;
                        row.as_ref().map(org).transpose()
                    })
                    .await
                }

                async fn create_user(
                    &self,
                    email: &Email,
                    password_hash: &PasswordHash,
                    is_admin: bool,
                    now: Timestamp,
                ) -> Result<User, IdentityError> {
                    let user = User {
                        id: UserId::generate(),
                        email: email.clone(),
                        is_admin,
                        created_at: now,
                    };
                    let inserted = retrying(|| async {
                        let done = sqlx::query(
                            "INSERT INTO users (id, email, password_hash, is_admin, created_at) \
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (email) DO NOTHING",
                        )
                        .bind(user.id.as_uuid())
                        .bind(user.email.as_str())
                        .bind(password_hash.as_str())
                        .bind(is_admin)
                        .bind(now.as_micros())
                        .execute(&self.pool)
                        .await?;
                        Ok(done.rows_affected() == 1)
                    })
                    .await?;
                    if inserted {
                        Ok(user)
                    } else {
                        Err(IdentityError::EmailTaken)
                    }
                }

                async fn user_by_email(
                    &self,
                    email: &Email,
                ) -> Result<Option<(User, PasswordHash)>, IdentityError> {
                    let sql = format!(
                        "SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"
                    );
                    let row = sqlx::query(&sql)
                        .bind(email.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                    let Some(row) = row else {
                        return Ok(None);
                    };
                    let hash = password_hash(row.try_get("password_hash")?)?;
                    Ok(Some((user(&row)?, hash)))
                }

                async fn user(&self, id: UserId) -> Result<Option<User>, IdentityError> {
                    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
                    let row = sqlx::query(&sql)
                        .bind(id.as_uuid())
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(user).transpose()
                }

                async fn set_password(
                    &self,
                    user: UserId,
                    hash: &PasswordHash,
                ) -> Result<bool, IdentityError> {
                    retrying(|| async {
                        let done = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                            .bind(user.as_uuid())
                            .bind(hash.as_str())
                            .execute(&self.pool)
                            .await?;
                        Ok(done.rows_affected() == 1)
                    })
                    .await
                }

                async fn server_secret(
                    &self,
                    name: &str,
                    candidate: &str,
                    now: Timestamp,
                ) -> Result<String, IdentityError> {
                    sqlx::query(
                        "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) \
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(name)
                    .bind(candidate)
                    .bind(now.as_micros())
                    .execute(&self.pool)
                    .await?;
                    let value: String = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
                        .bind(name)
                        .fetch_one(&self.pool)
                        .await?
                        .try_get("value")?;
                    Ok(value)
                }

                async fn count_admins(&self) -> Result<u64, IdentityError> {
                    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users WHERE is_admin")
                        .fetch_one(&self.pool)
                        .await?
                        .try_get("n")?;
                    Ok(u64::try_from(count).unwrap_or(0))
                }

                async fn add_member(
                    &self,
                    org: OrgId,
                    user: UserId,
                    role: Role,
                ) -> Result<(), IdentityError> {
                    retrying(|| self.add_member_once(org, user, role)).await
                }

                async fn remove_member(
                    &self,
                    org: OrgId,
                    user: UserId,
                ) -> Result<bool, IdentityError> {
                    retrying(|| async {
                        let done = sqlx::query(
                            "DELETE FROM memberships WHERE org_id = $1 AND user_id = $2",
                        )
                        .bind(org.as_uuid())
                        .bind(user.as_uuid())
                        .execute(&self.pool)
                        .await?;
                        Ok(done.rows_affected() == 1)
                    })
                    .await
                }

                async fn membership(
                    &self,
                    org: OrgId,
                    user: UserId,
                ) -> Result<Option<Role>, IdentityError> {
                    let row = sqlx::query(
                        "SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2",
                    )
                    .bind(org.as_uuid())
                    .bind(user.as_uuid())
                    .fetch_optional(&self.pool)
                    .await?;
                    row.map(|row| role(&row.try_get::<String, _>("role")?))
                        .transpose()
                }

                async fn memberships_of(
                    &self,
                    user: UserId,
                ) -> Result<Vec<(Org, Role)>, IdentityError> {
                    let rows = sqlx::query(
                        "SELECT o.id, o.name, o.plan, o.verification_level, o.frozen, \
                         o.created_at, m.role FROM memberships m JOIN orgs o ON o.id = m.org_id \
                         WHERE m.user_id = $1 ORDER BY o.created_at, o.id",
                    )
                    .bind(user.as_uuid())
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| Ok((org(row)?, role(&row.try_get::<String, _>("role")?)?)))
                        .collect()
                }

                async fn members(&self, org: OrgId) -> Result<Vec<(User, Role)>, IdentityError> {
                    let rows = sqlx::query(
                        "SELECT u.id, u.email, u.is_admin, u.created_at, m.role \
                         FROM memberships m JOIN users u ON u.id = m.user_id \
                         WHERE m.org_id = $1 ORDER BY u.email",
                    )
                    .bind(org.as_uuid())
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| Ok((user(row)?, role(&row.try_get::<String, _>("role")?)?)))
                        .collect()
                }

                async fn issue_refresh_token(
                    &self,
                    user: UserId,
                    family: Option<TokenFamilyId>,
                    hash: &TokenHash,
                    expires_at: Timestamp,
                    now: Timestamp,
                ) -> Result<IssuedRefreshToken, IdentityError> {
                    retrying(|| self.issue_once(user, family, hash, expires_at, now)).await
                }

                async fn rotate_refresh_token(
                    &self,
                    old: &TokenHash,
                    new: &TokenHash,
                    new_expires_at: Timestamp,
                    now: Timestamp,
                ) -> Result<RotateOutcome, IdentityError> {
                    retrying(|| self.rotate_once(old, new, new_expires_at, now)).await
                }

                async fn revoke_family(
                    &self,
                    family: TokenFamilyId,
                    now: Timestamp,
                ) -> Result<bool, IdentityError> {
                    retrying(|| async {
                        let mut conn = self.pool.acquire().await?;
                        revoke_family_in(&mut conn, family.as_uuid(), now).await
                    })
                    .await
                }

                async fn revoke_user_tokens(
                    &self,
                    user: UserId,
                    now: Timestamp,
                ) -> Result<u64, IdentityError> {
                    retrying(|| async {
                        let done = sqlx::query(
                            "UPDATE refresh_token_families SET revoked_at = $2 \
                             WHERE user_id = $1 AND revoked_at IS NULL",
                        )
                        .bind(user.as_uuid())
                        .bind(now.as_micros())
                        .execute(&self.pool)
                        .await?;
                        Ok(done.rows_affected())
                    })
                    .await
                }

                async fn create_api_key(
                    &self,
                    key: &NewApiKey,
                    now: Timestamp,
                ) -> Result<ApiKey, IdentityError> {
                    retrying(|| self.create_api_key_once(key, now)).await
                }

                async fn api_key_by_prefix(
                    &self,
                    prefix: &ApiKeyPrefix,
                ) -> Result<Option<(ApiKey, TokenHash)>, IdentityError> {
                    let sql = format!(
                        "SELECT {API_KEY_COLUMNS}, secret_hash FROM api_keys WHERE prefix = $1"
                    );
                    let row = sqlx::query(&sql)
                        .bind(prefix.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                    let Some(row) = row else {
                        return Ok(None);
                    };
                    let hash = token_hash(&row.try_get::<Vec<u8>, _>("secret_hash")?)?;
                    Ok(Some((api_key(&row)?, hash)))
                }

                async fn api_keys(&self, org: OrgId) -> Result<Vec<ApiKey>, IdentityError> {
                    let sql = format!(
                        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE org_id = $1 \
                         ORDER BY created_at, id"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(org.as_uuid())
                        .fetch_all(&self.pool)
                        .await?;
                    rows.iter().map(api_key).collect()
                }

                async fn revoke_api_key(
                    &self,
                    org: OrgId,
                    id: ApiKeyId,
                    now: Timestamp,
                ) -> Result<bool, IdentityError> {
                    retrying(|| async {
                        let done = sqlx::query(
                            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) \
                             WHERE org_id = $1 AND id = $2",
                        )
                        .bind(org.as_uuid())
                        .bind(id.as_uuid())
                        .bind(now.as_micros())
                        .execute(&self.pool)
                        .await?;
                        Ok(done.rows_affected() == 1)
                    })
                    .await
                }

                async fn touch_api_key(
                    &self,
                    id: ApiKeyId,
                    now: Timestamp,
                ) -> Result<(), IdentityError> {
                    retrying(|| async {
                        sqlx::query(
                            "UPDATE api_keys SET last_used_at = $2 \
                             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
                        )
                        .bind(id.as_uuid())
                        .bind(now.as_micros())
                        .execute(&self.pool)
                        .await?;
                        Ok(())
                    })
                    .await
                }

                async fn append_audit(&self, entry: &AuditEntry) -> Result<(), IdentityError> {
                    let details = entry.details().to_string();
                    retrying(|| async {
                        sqlx::query(
                            "INSERT INTO audit_log (id, at, actor_id, org_id, action, target, \
                             details) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                             ON CONFLICT (id) DO NOTHING",
                        )
                        .bind(entry.id().as_uuid())
                        .bind(entry.at().as_micros())
                        .bind(entry.actor().map(UserId::as_uuid))
                        .bind(entry.org().map(OrgId::as_uuid))
                        .bind(entry.action().as_str())
                        .bind(entry.target())
                        .bind(details.as_str())
                        .execute(&self.pool)
                        .await?;
                        Ok(())
                    })
                    .await
                }

                async fn audit(
                    &self,
                    filter: &AuditFilter,
                    after: Option<AuditCursor>,
                    limit: u32,
                ) -> Result<Vec<AuditEntry>, IdentityError> {
                    // Only the conditions that are set, numbered in the order they are bound.
                    let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1");
                    let mut n = 0;
                    let mut condition = |text: &str| {
                        n += 1;
                        sql.push_str(&text.replace('#', &format!("${n}")));
                    };
                    if filter.action.is_some() {
                        condition(" AND action = #");
                    }
                    if filter.actor.is_some() {
                        condition(" AND actor_id = #");
                    }
                    if filter.org.is_some() {
                        condition(" AND org_id = #");
                    }
                    if filter.since.is_some() {
                        condition(" AND at >= #");
                    }
                    if filter.until.is_some() {
                        condition(" AND at < #");
                    }
                    if after.is_some() {
                        condition(" AND (at, id) > (#");
                        condition(", #)");
                    }
                    condition(" ORDER BY at, id LIMIT #");
                    let mut query = sqlx::query(&sql);
                    if let Some(action) = &filter.action {
                        query = query.bind(action.as_str());
                    }
                    if let Some(actor) = filter.actor {
                        query = query.bind(actor.as_uuid());
                    }
                    if let Some(org) = filter.org {
                        query = query.bind(org.as_uuid());
                    }
                    if let Some(since) = filter.since {
                        query = query.bind(since.as_micros());
                    }
                    if let Some(until) = filter.until {
                        query = query.bind(until.as_micros());
                    }
                    if let Some(cursor) = after {
                        query = query.bind(cursor.at.as_micros()).bind(cursor.id.as_uuid());
                    }
                    let query = query.bind(i64::from(limit.clamp(1, crate::PAGE_MAX)));
                    let rows = query.fetch_all(&self.pool).await?;
                    rows.iter().map(audit_entry).collect()
                }
            }
        }
    };
}

pub(crate) use shared_identity;

impl crate::sql::MayRetry for IdentityError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Store(StoreError::Database(error)) => Some(error),
            _ => None,
        }
    }
}
