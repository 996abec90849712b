//! Authentication primitives: password hashing, opaque tokens (refresh tokens, API keys) and
//! signed access tokens (JWT). No storage here: callers keep hashes, never secrets.

pub mod access;
pub mod bootstrap;
pub mod jwt;
pub mod password;
pub mod session;
pub mod tokens;
