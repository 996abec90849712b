//! Access tokens: JWTs signed with HMAC-SHA256, the one algorithm accepted (a token naming any
//! other, `none` included, is refused before its signature is looked at). Every token carries
//! `iss`, `aud`, `sub`, `iat`, `exp` and `jti`, and its header names the key (`kid`) that signed
//! it, so keys can rotate: new tokens are signed with the current key, and tokens signed with a
//! retired key stay valid until they expire as long as that key is still listed.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::Secret;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user's id.
    pub sub: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// The token's own id.
    pub jti: String,
    /// The sign-in (refresh-token family) the token belongs to, which logout revokes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token uses an algorithm other than HS256")]
    Algorithm,
    #[error("the token was signed with an unknown key")]
    UnknownKey,
    #[error("the token's signature does not match")]
    Signature,
    #[error("the token lacks a required claim or has an invalid one")]
    Claims,
    #[error("the token was issued by someone else or for someone else")]
    Audience,
    #[error("the token has expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
    kid: Option<String>,
}

/// The signing keys: one current, any number of retired ones still accepted.
#[derive(Debug, Clone)]
pub struct Keys {
    issuer: String,
    audience: String,
    current: String,
    keys: BTreeMap<String, Secret>,
}

/// The least key material accepted, in bytes.
pub const KEY_MIN_BYTES: usize = 32;

impl Keys {
    /// `current` signs; `retired` only verify. Every key has at least 32 bytes.
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        current: (String, Secret),
        retired: Vec<(String, Secret)>,
    ) -> Result<Self, &'static str> {
        let mut keys = BTreeMap::new();
        for (kid, secret) in std::iter::once(current.clone()).chain(retired) {
            if secret.expose().len() < KEY_MIN_BYTES {
                return Err("a signing key has at least 32 bytes");
            }
            keys.insert(kid, secret);
        }
        Ok(Self {
            issuer: issuer.into(),
            audience: audience.into(),
            current: current.0,
            keys,
        })
    }

    /// One key, named by the first 16 hex digits of its SHA-256, so every process that holds
    /// it names it alike.
    pub fn from_secret(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        secret: Secret,
    ) -> Result<Self, &'static str> {
        Self::from_secrets(issuer, audience, secret, Vec::new())
    }

    /// The current key and retired ones, each named by its hash.
    pub fn from_secrets(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        current: Secret,
        retired: Vec<Secret>,
    ) -> Result<Self, &'static str> {
        let named = |secret: Secret| {
            let digest = <Sha256 as sha2::Digest>::digest(secret.expose().as_bytes());
            let kid: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
            (kid, secret)
        };
        Self::new(
            issuer,
            audience,
            named(current),
            retired.into_iter().map(named).collect(),
        )
    }

    fn mac(secret: &Secret) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).expect("HMAC takes any key")
    }

    /// A token for `subject` in sign-in `session`, valid for `ttl_seconds` from `now` (seconds
    /// since the epoch).
    pub fn issue(
        &self,
        subject: &str,
        session: Option<&str>,
        now: i64,
        ttl_seconds: i64,
    ) -> String {
        let header = Header {
            alg: "HS256".to_owned(),
            typ: Some("JWT".to_owned()),
            kid: Some(self.current.clone()),
        };
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_owned(),
            iat: now,
            exp: now + ttl_seconds,
            jti: uuid::Uuid::now_v7().to_string(),
            sid: session.map(str::to_owned),
        };
        let encode = |value: &dyn erased::Json| URL_SAFE_NO_PAD.encode(value.json());
        let signing_input = format!("{}.{}", encode(&header), encode(&claims));
        let mut mac = Self::mac(&self.keys[&self.current]);
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// The claims of a valid token at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, JwtError> {
        if token.len() > 4_096 {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let decode = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| JwtError::Malformed)
        };
        let parsed: Header =
            serde_json::from_slice(&decode(header)?).map_err(|_| JwtError::Malformed)?;
        if parsed.alg != "HS256" {
            return Err(JwtError::Algorithm);
        }
        let secret = parsed
            .kid
            .as_ref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(JwtError::UnknownKey)?;
        let mut mac = Self::mac(secret);
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&decode(signature)?)
            .map_err(|_| JwtError::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(payload)?).map_err(|_| JwtError::Claims)?;
        if claims.sub.is_empty() || claims.jti.is_empty() || claims.iat > claims.exp {
            return Err(JwtError::Claims);
        }
        if claims.iss != self.issuer || claims.aud != self.audience {
            return Err(JwtError::Audience);
        }
        if claims.exp <= now {
            return Err(JwtError::Expired);
        }
        Ok(claims)
    }
}

/// Serializing two different types through one closure.
mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("claims serialize")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_651_200;

    fn keys() -> Keys {
        Keys::new(
            "credex",
            "credex-api",
            (
                "k2".to_owned(),
                Secret::new("k2-secret-k2-secret-k2-secret-k2-secret"),
            ),
            vec![(
                "k1".to_owned(),
                Secret::new("k1-secret-k1-secret-k1-secret-k1-secret"),
            )],
        )
        .expect("valid keys")
    }

    fn forge(header: &str, claims: &str, key: &str) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("a key");
        mac.update(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let keys = keys();
        let token = keys.issue("user-1", Some("s"), NOW, 900);
        let claims = keys.verify(&token, NOW + 899).expect("valid");
        assert_eq!((claims.sub.as_str(), claims.exp), ("user-1", NOW + 900));
        assert_eq!(claims.sid.as_deref(), Some("s"));
        assert_eq!(keys.verify(&token, NOW + 900), Err(JwtError::Expired));
    }

    #[test]
    fn everything_else_is_refused() {
        let keys = keys();
        let token = keys.issue("user-1", Some("s"), NOW, 900);
        let claims = format!(
            r#"{{"iss":"credex","aud":"credex-api","sub":"user-1","iat":{NOW},"exp":{},"jti":"j"}}"#,
            NOW + 900
        );
        let check = |token: &str, expected: JwtError| {
            assert_eq!(keys.verify(token, NOW), Err(expected), "{token}");
        };
        check("", JwtError::Malformed);
        check("a.b", JwtError::Malformed);
        check(&format!("{token}.x"), JwtError::Malformed);
        // The last character of a 32-byte signature carries 4 bits and 2 zero bits: swap it for
        // another canonical one (`A` ↔ `E`), or the base64 would be malformed, not forged.
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'E' } else { 'A' });
        check(&tampered, JwtError::Signature);
        check(
            &forge(r#"{"alg":"none","kid":"k2"}"#, &claims, ""),
            JwtError::Algorithm,
        );
        check(
            &forge(
                r#"{"alg":"HS512","kid":"k2"}"#,
                &claims,
                "k2-secret-k2-secret-k2-secret-k2-secret",
            ),
            JwtError::Algorithm,
        );
        check(
            &forge(
                r#"{"alg":"HS256","kid":"k9"}"#,
                &claims,
                "k2-secret-k2-secret-k2-secret-k2-secret",
            ),
            JwtError::UnknownKey,
        );
        check(
            &forge(
                r#"{"alg":"HS256"}"#,
                &claims,
                "k2-secret-k2-secret-k2-secret-k2-secret",
            ),
            JwtError::UnknownKey,
        );
        check(
            &forge(
                r#"{"alg":"HS256","kid":"k2"}"#,
                &claims,
                "a-different-secret-of-enough-length",
            ),
            JwtError::Signature,
        );
        // Signed with the retired key: still accepted.
        let retired = forge(
            r#"{"alg":"HS256","kid":"k1"}"#,
            &claims,
            "k1-secret-k1-secret-k1-secret-k1-secret",
        );
        assert!(keys.verify(&retired, NOW).is_ok());
        let missing = format!(
            r#"{{"iss":"credex","aud":"credex-api","iat":{NOW},"exp":{}}}"#,
            NOW + 900
        );
        check(
            &forge(
                r#"{"alg":"HS256","kid":"k2"}"#,
                &missing,
                "k2-secret-k2-secret-k2-secret-k2-secret",
            ),
            JwtError::Claims,
        );
        let elsewhere = claims.replace("credex-api", "another-api");
        check(
            &forge(
                r#"{"alg":"HS256","kid":"k2"}"#,
                &elsewhere,
                "k2-secret-k2-secret-k2-secret-k2-secret",
            ),
            JwtError::Audience,
        );
    }

    #[test]
    fn a_rotated_key_still_verifies_what_it_signed() {
        let old = Secret::new("the old key, at least thirty-two bytes");
        let new = Secret::new("the new key, at least thirty-two bytes");
        let before = Keys::from_secret("credex", "credex-api", old.clone()).expect("keys");
        let token = before.issue("user-1", None, NOW, 900);
        let after =
            Keys::from_secrets("credex", "credex-api", new.clone(), vec![old]).expect("keys");
        assert!(after.verify(&token, NOW).is_ok());
        let forgotten = Keys::from_secret("credex", "credex-api", new).expect("keys");
        assert_eq!(forgotten.verify(&token, NOW), Err(JwtError::UnknownKey));
    }

    #[test]
    fn short_keys_are_refused() {
        let short = Keys::new("i", "a", ("k".to_owned(), Secret::new("short")), vec![]);
        assert!(short.is_err());
    }
}
