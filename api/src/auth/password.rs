//! Passwords: argon2id with OWASP's parameters (19 MiB, 2 passes, 1 lane), hashed and verified
//! on the blocking pool, never on the async runtime. An unknown user is checked against a dummy
//! hash, so the time an answer takes tells nothing about whether the e-mail exists.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::config::Secret;

/// The longest password accepted, in bytes: argon2 takes any length, but a limit keeps a
/// request from buying seconds of CPU.
pub const PASSWORD_MAX_BYTES: usize = 1_024;
/// The shortest password accepted, in characters.
pub const PASSWORD_MIN_CHARS: usize = 12;
/// The longest new password accepted, in characters (as the API document counts them): at
/// four bytes each at most, within [`PASSWORD_MAX_BYTES`].
pub const PASSWORD_MAX_CHARS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("a password has at least {PASSWORD_MIN_CHARS} characters")]
    TooShort,
    #[error("a password has at most {PASSWORD_MAX_CHARS} characters")]
    TooLong,
    #[error("the password could not be hashed")]
    Hashing,
}

/// Checks a new password's length.
pub fn acceptable(password: &str) -> Result<(), PasswordError> {
    if password.chars().count() > PASSWORD_MAX_CHARS {
        Err(PasswordError::TooLong)
    } else if password.chars().count() < PASSWORD_MIN_CHARS {
        Err(PasswordError::TooShort)
    } else {
        Ok(())
    }
}

fn hasher() -> Argon2<'static> {
    Argon2::default()
}

fn hash_now(password: &[u8]) -> Result<String, PasswordError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|_| PasswordError::Hashing)?;
    hasher()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| PasswordError::Hashing)
}

/// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) for a new password.
pub async fn hash(password: Secret) -> Result<String, PasswordError> {
    acceptable(password.expose())?;
    tokio::task::spawn_blocking(move || hash_now(password.expose().as_bytes()))
        .await
        .map_err(|_| PasswordError::Hashing)?
}

/// The hash unknown users are checked against.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        hash_now(b"credex dummy password, never anybody's").expect("hashing a constant works")
    })
}

/// Whether `candidate` matches `stored`; with no stored hash (an unknown user) the same work
/// is done against a dummy hash and the answer is `false`.
pub async fn verify(candidate: Secret, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let phc = stored.unwrap_or_else(|| dummy_hash().to_owned());
        let Ok(parsed) = PasswordHash::new(&phc) else {
            return false;
        };
        let candidate = candidate.expose();
        let fits = candidate.len() <= PASSWORD_MAX_BYTES;
        let matches = fits && {
            #[cfg(test)]
            tests::ARGON2_VERIFICATIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            hasher()
                .verify_password(candidate.as_bytes(), &parsed)
                .is_ok()
        };
        known && matches
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> Secret {
        Secret::new(text)
    }

    #[tokio::test]
    async fn hashes_verify_and_differ_by_salt() {
        let first = hash(secret("correct horse battery")).await.expect("hash");
        let second = hash(secret("correct horse battery")).await.expect("hash");
        assert!(
            first.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{first}"
        );
        assert_ne!(first, second, "each hash has its own salt");
        assert!(verify(secret("correct horse battery"), Some(first.clone())).await);
        assert!(!verify(secret("correct horse battery!"), Some(first)).await);
        assert!(!verify(secret("correct horse battery"), None).await);
        assert!(!verify(secret("x"), Some("not a PHC string".to_owned())).await);
    }

    #[tokio::test]
    async fn lengths_are_bounded() {
        assert_eq!(hash(secret("short")).await, Err(PasswordError::TooShort));
        let long = "x".repeat(PASSWORD_MAX_CHARS + 1);
        assert_eq!(hash(secret(&long)).await, Err(PasswordError::TooLong));
        let wide = "日".repeat(PASSWORD_MAX_CHARS);
        assert!(wide.len() <= PASSWORD_MAX_BYTES);
        assert!(acceptable(&wide).is_ok());
    }

    /// Argon2 verifications run, for the test below (the only test that reads it).
    pub(super) static ARGON2_VERIFICATIONS: std::sync::atomic::AtomicU64 =
        std::sync::atomic::AtomicU64::new(0);

    /// An unknown user costs as much as a wrong password: the same Argon2 verification, with
    /// the same parameters, is run for both (counted, not timed: a timing would depend on the
    /// machine's load).
    #[tokio::test]
    async fn an_unknown_user_costs_as_much_as_a_wrong_password() {
        use std::sync::atomic::Ordering;
        let stored = hash(secret("correct horse battery")).await.expect("hash");
        let parameters = |phc: &str| phc.rsplitn(3, '$').nth(2).map(str::to_owned);
        assert_eq!(parameters(dummy_hash()), parameters(&stored));
        assert_eq!(
            parameters(&stored).as_deref(),
            Some("$argon2id$v=19$m=19456,t=2,p=1")
        );
        let before = ARGON2_VERIFICATIONS.load(Ordering::SeqCst);
        assert!(!verify(secret("wrong password here"), Some(stored)).await);
        let after_wrong = ARGON2_VERIFICATIONS.load(Ordering::SeqCst);
        assert!(!verify(secret("wrong password here"), None).await);
        let after_unknown = ARGON2_VERIFICATIONS.load(Ordering::SeqCst);
        // At least: other tests in the same process (under `cargo test`) may verify too.
        assert!(after_wrong > before, "a wrong password is verified");
        assert!(
            after_unknown > after_wrong,
            "an unknown user is verified too"
        );
    }
}
