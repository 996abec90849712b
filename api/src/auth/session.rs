//! Sign-in sessions: a short-lived access token (JWT, 15 minutes) and a refresh token (opaque,
//! 30 days, rotated on every use; a second use of a rotated token revokes the whole sign-in).

use std::sync::Arc;

use credex_ledger::{Clock, Timestamp};
use credex_store::{IdentityError, RotateOutcome, Store, TokenFamilyId, TokenHash, User, UserId};
use serde::Serialize;
use utoipa::ToSchema;

use super::jwt::Keys;
use super::tokens;

pub const ACCESS_TTL_SECONDS: i64 = 15 * 60;
pub const REFRESH_TTL_SECONDS: u32 = 30 * 24 * 60 * 60;
pub const ISSUER: &str = "credex";
pub const AUDIENCE: &str = "credex-api";

/// What a sign-in or a refresh answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjNmMmEuLi4ifQ.eyJ….sig",
    "token_type": "Bearer",
    "expires_in": 900,
    "refresh_token": "cdxr_q3B1…",
    "refresh_expires_in": 2592000
}))]
pub struct TokenPair {
    /// A JWT for `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds the access token stays valid.
    pub expires_in: i64,
    /// An opaque token for `POST /v1/auth/refresh`; usable once.
    pub refresh_token: String,
    /// Seconds the refresh token stays valid.
    pub refresh_expires_in: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the refresh token is not valid")]
    Invalid,
    #[error("the refresh token was used before: the sign-in is revoked")]
    Reused,
    #[error(transparent)]
    Store(#[from] IdentityError),
}

/// Issues and refreshes sign-ins.
#[derive(Debug, Clone)]
pub struct Sessions {
    keys: Keys,
    clock: Arc<dyn Clock>,
}

fn seconds(at: Timestamp) -> i64 {
    at.as_micros().div_euclid(1_000_000)
}

impl Sessions {
    pub fn new(keys: Keys, clock: Arc<dyn Clock>) -> Self {
        Self { keys, clock }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn pair(&self, user: UserId, family: TokenFamilyId, refresh_token: String) -> TokenPair {
        let now = seconds(self.now());
        let session = family.to_string();
        TokenPair {
            access_token: self.keys.issue(
                &user.to_string(),
                Some(&session),
                now,
                ACCESS_TTL_SECONDS,
            ),
            token_type: "Bearer",
            expires_in: ACCESS_TTL_SECONDS,
            refresh_token,
            refresh_expires_in: REFRESH_TTL_SECONDS,
        }
    }

    /// A new sign-in for `user`.
    pub async fn start(&self, store: &dyn Store, user: &User) -> Result<TokenPair, SessionError> {
        let now = self.now();
        let token = tokens::refresh_token();
        let hash = TokenHash::from_bytes(tokens::digest(&token));
        let issued = store
            .issue_refresh_token(
                user.id,
                None,
                &hash,
                now.plus_seconds(REFRESH_TTL_SECONDS),
                now,
            )
            .await?;
        Ok(self.pair(user.id, issued.family, token))
    }

    /// Trades a refresh token for a new pair; the old token is spent.
    pub async fn refresh(&self, store: &dyn Store, token: &str) -> Result<TokenPair, SessionError> {
        if token.len() > 256 {
            return Err(SessionError::Invalid);
        }
        let now = self.now();
        let old = TokenHash::from_bytes(tokens::digest(token));
        let fresh = tokens::refresh_token();
        let new = TokenHash::from_bytes(tokens::digest(&fresh));
        match store
            .rotate_refresh_token(&old, &new, now.plus_seconds(REFRESH_TTL_SECONDS), now)
            .await?
        {
            RotateOutcome::Rotated { user, family } => Ok(self.pair(user, family, fresh)),
            RotateOutcome::Reused { user, family } => {
                tracing::warn!(%user, %family, "a rotated refresh token was used again; sign-in revoked");
                Err(SessionError::Reused)
            }
            RotateOutcome::Expired | RotateOutcome::Unknown => Err(SessionError::Invalid),
        }
    }
}
