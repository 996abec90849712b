//! Opaque tokens: refresh tokens and API keys. Each is random, shown to its owner once, and
//! stored only as its SHA-256. An API key carries a public prefix that names it, so it can be
//! found without scanning: `cdx_<prefix>_<secret>`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The SHA-256 of a token: what storage keeps.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// 32 random bytes, URL-safe base64 (43 characters).
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new refresh token: `cdxr_` and 43 random characters.
pub fn refresh_token() -> String {
    format!("cdxr_{}", random_secret())
}

/// The length of an API key's public prefix.
pub const API_KEY_PREFIX_LEN: usize = 12;

/// A new API key and its public prefix.
pub fn api_key() -> (String, String) {
    let id: [u8; 9] = rand::random();
    let prefix = URL_SAFE_NO_PAD.encode(id).replace(['-', '_'], "x");
    debug_assert_eq!(prefix.len(), API_KEY_PREFIX_LEN);
    (format!("cdx_{prefix}_{}", random_secret()), prefix)
}

/// The prefix of a presented API key, if it has the shape of one.
pub fn api_key_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("cdx_")?;
    let (prefix, secret) = rest.split_once('_')?;
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (prefix.len() == API_KEY_PREFIX_LEN && secret.len() == 43 && plain(prefix) && plain(secret))
        .then_some(prefix)
}

/// Whether a presented token matches a stored digest, in constant time.
pub fn matches(token: &str, stored: &[u8; 32]) -> bool {
    let presented = digest(token);
    presented
        .iter()
        .zip(stored)
        .fold(0_u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_carry_their_prefix() {
        let (key, prefix) = api_key();
        assert_eq!(prefix.len(), API_KEY_PREFIX_LEN);
        assert_eq!(api_key_prefix(&key), Some(prefix.as_str()));
        assert!(matches(&key, &digest(&key)));
        assert!(!matches(&format!("{key}x"), &digest(&key)));
        let (other, _) = api_key();
        assert_ne!(key, other);
        assert_eq!(api_key_prefix("cdx_short_secret"), None);
        assert_eq!(api_key_prefix("Bearer cdx_"), None);
        assert_eq!(api_key_prefix(&key.replacen("cdx_", "cdy_", 1)), None);
    }

    #[test]
    fn refresh_tokens_are_long_and_distinct() {
        let (a, b) = (refresh_token(), refresh_token());
        assert_eq!(a.len(), 5 + 43);
        assert_ne!(a, b);
        assert_ne!(digest(&a), digest(&b));
    }
}
