//! Authentication primitives: password hashing, opaque tokens (refresh tokens, API keys) and
//! signed access tokens (JWT). No storage here: callers keep hashes, never secrets.

pub mod jwt;
pub mod password;
pub mod tokens;
