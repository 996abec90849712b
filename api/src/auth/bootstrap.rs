//! The first start: an admin when there is none, and the key that signs access tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use credex_ledger::Timestamp;
use credex_store::{Email, IdentityError, PasswordHash, Store};

use super::password;
use crate::config::{Config, Secret};

/// The e-mail of the admin a first start makes up when none is configured.
pub const DEFAULT_ADMIN_EMAIL: &str = "admin@credex.local";

/// Creates the first admin if there is none: from `CREDEX_ADMIN_EMAIL` and
/// `CREDEX_ADMIN_PASSWORD`, or with a made-up password that is returned so the caller prints
/// it, once. Several processes starting together create one admin: the others find the e-mail
/// taken and say nothing.
pub async fn ensure_admin(
    store: &dyn Store,
    config: &Config,
    now: Timestamp,
) -> anyhow::Result<Option<(String, String)>> {
    if store.count_admins().await? > 0 {
        return Ok(None);
    }
    let email = config.admin_email.as_deref().unwrap_or(DEFAULT_ADMIN_EMAIL);
    let email =
        Email::parse(email).map_err(|error| anyhow::anyhow!("CREDEX_ADMIN_EMAIL: {error}"))?;
    let (secret, made_up) = match &config.admin_password {
        Some(secret) => (secret.clone(), false),
        None => {
            let bytes: [u8; 18] = rand::random();
            (Secret::new(URL_SAFE_NO_PAD.encode(bytes)), true)
        }
    };
    let hash = password::hash(secret.clone())
        .await
        .map_err(|error| anyhow::anyhow!("CREDEX_ADMIN_PASSWORD: {error}"))?;
    let hash = PasswordHash::new(hash).map_err(|error| anyhow::anyhow!("{error}"))?;
    match store.create_user(&email, &hash, true, now).await {
        Ok(user) => {
            tracing::info!(email = %user.email, "created the first admin");
            Ok(made_up.then(|| (user.email.to_string(), secret.expose().to_owned())))
        }
        Err(IdentityError::EmailTaken) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// The access-token signing key: the configured one, else the deployment's shared one.
pub async fn signing_secret(
    store: &dyn Store,
    config: &Config,
    now: Timestamp,
) -> anyhow::Result<Secret> {
    if let Some(secret) = &config.jwt_secret {
        return Ok(secret.clone());
    }
    let bytes: [u8; 32] = rand::random();
    let candidate = URL_SAFE_NO_PAD.encode(bytes);
    let value = store
        .server_secret("jwt_signing_key", &candidate, now)
        .await?;
    Ok(Secret::new(value))
}
