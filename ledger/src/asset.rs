//! Assets: platform credits (`CR`, counted in µCR) and one token asset per model class and
//! billing cycle (`TOK.<class>.<cycle>`, counted in tokens).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The two kinds of asset the ledger knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetClass {
    /// Platform credits, in micro-credits (1 CR = 1,000,000 µCR). They never expire with a cycle.
    Credit,
    /// Tokens of one model class for one billing cycle.
    Token,
}

pub const MAX_CLASS_LEN: usize = 8;
pub const MAX_CYCLE_LEN: usize = 10;

/// The code of an asset: `CR`, or `TOK.<class>.<cycle>` where the class is 1 to 8 lowercase
/// letters and digits starting with a letter, and the cycle is 1 to 10 ASCII letters, digits or
/// hyphens starting and ending with a letter or digit (for example `TOK.pro.2026-11`).
///
/// The bounds keep every code a valid Beancount commodity once upper-cased (at most 24
/// characters) and keep codes unique after upper-casing.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AssetCode(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssetCodeError {
    #[error("an asset code is `CR` or `TOK.<class>.<cycle>`, such as `TOK.pro.2026-11`")]
    Shape,
    #[error(
        "a model class is 1 to {MAX_CLASS_LEN} lowercase letters or digits, starting with a letter"
    )]
    Class,
    #[error("a cycle is 1 to {MAX_CYCLE_LEN} letters, digits or hyphens, starting and ending with a letter or digit")]
    Cycle,
}

impl AssetCode {
    pub const CREDIT: &'static str = "CR";

    /// The platform credit asset.
    pub fn credit() -> Self {
        Self(Self::CREDIT.to_owned())
    }

    /// The token asset of one model class for one cycle.
    pub fn token(class: &str, cycle: &str) -> Result<Self, AssetCodeError> {
        Self::parse(&format!("TOK.{class}.{cycle}"))
    }

    pub fn parse(text: &str) -> Result<Self, AssetCodeError> {
        if text == Self::CREDIT {
            return Ok(Self::credit());
        }
        let mut parts = text.splitn(3, '.');
        let (Some("TOK"), Some(class), Some(cycle)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(AssetCodeError::Shape);
        };
        let class_ok = (1..=MAX_CLASS_LEN).contains(&class.len())
            && class.starts_with(|c: char| c.is_ascii_lowercase())
            && class
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !class_ok {
            return Err(AssetCodeError::Class);
        }
        let edge_ok = |c: char| c.is_ascii_alphanumeric();
        let cycle_ok = (1..=MAX_CYCLE_LEN).contains(&cycle.len())
            && cycle.starts_with(edge_ok)
            && cycle.ends_with(edge_ok)
            && cycle.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !cycle_ok {
            return Err(AssetCodeError::Cycle);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn class(&self) -> AssetClass {
        if self.0 == Self::CREDIT {
            AssetClass::Credit
        } else {
            AssetClass::Token
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AssetCode {
    type Error = AssetCodeError;
    fn try_from(text: String) -> Result<Self, AssetCodeError> {
        Self::parse(&text)
    }
}

impl From<AssetCode> for String {
    fn from(code: AssetCode) -> String {
        code.0
    }
}

impl fmt::Display for AssetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AssetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An asset as the ledger tracks it: its code and whether its cycle has closed.
///
/// Rule 9: once a token asset's cycle has closed, it accepts only expiry transfers (and voids of
/// pending transfers, which move nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssetState {
    pub code: AssetCode,
    pub closed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_codes() {
        let check = |text: &str, expected: Result<AssetClass, AssetCodeError>| {
            assert_eq!(
                AssetCode::parse(text).map(|c| c.class()),
                expected,
                "{text}"
            );
        };
        check("CR", Ok(AssetClass::Credit));
        check("TOK.pro.2026-11", Ok(AssetClass::Token));
        check("TOK.std4.2026-W48", Ok(AssetClass::Token));
        check("cr", Err(AssetCodeError::Shape));
        check("TOK.pro", Err(AssetCodeError::Shape));
        check("TOK.Pro.2026-11", Err(AssetCodeError::Class));
        check("TOK.4pro.2026-11", Err(AssetCodeError::Class));
        check("TOK.verylongc.2026-11", Err(AssetCodeError::Class));
        check("TOK.pro.-2026", Err(AssetCodeError::Cycle));
        check("TOK.pro.2026.11", Err(AssetCodeError::Cycle));
        check("TOK.pro.", Err(AssetCodeError::Cycle));
    }
}
