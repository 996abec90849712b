//! Names: a model's id, its provider and its model class. Each is parsed once and then trusted.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The longest model id (or alias) accepted.
pub const MAX_MODEL_ID_LEN: usize = 128;
/// The longest provider name accepted.
pub const MAX_PROVIDER_LEN: usize = 40;
/// The longest model class name: a class is part of a token asset code (`TOK.<class>.<cycle>`),
/// so it follows the ledger's rule for that part.
pub const MAX_CLASS_LEN: usize = 8;

/// A model's id or alias, as callers name it: `gpt-5.4`, `claude-opus-4-7`,
/// `deepinfra/meta-llama/llama-4-scout-17b-16e-instruct`.
///
/// Ids are case-insensitive, so they are stored lowercased; 1 to 128 characters among ASCII
/// letters, digits and `-._:/@+`, starting and ending with a letter or digit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelId(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ModelIdError {
    #[error("a model id must not be empty")]
    Empty,
    #[error("a model id is at most {MAX_MODEL_ID_LEN} characters")]
    TooLong,
    #[error("a model id is ASCII letters, digits and `-._:/@+`, starting and ending with a letter or digit")]
    Characters,
}

impl ModelId {
    pub fn parse(text: &str) -> Result<Self, ModelIdError> {
        if text.is_empty() {
            return Err(ModelIdError::Empty);
        }
        if text.len() > MAX_MODEL_ID_LEN {
            return Err(ModelIdError::TooLong);
        }
        let edge = |c: char| c.is_ascii_alphanumeric();
        let ok = text.starts_with(edge)
            && text.ends_with(edge)
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:/@+".contains(c));
        if !ok {
            return Err(ModelIdError::Characters);
        }
        Ok(Self(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The model's own name without a host or vendor prefix: the part after the last `/`
    /// (`groq/openai/gpt-oss-120b` → `gpt-oss-120b`).
    pub fn base_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl TryFrom<String> for ModelId {
    type Error = ModelIdError;
    fn try_from(text: String) -> Result<Self, ModelIdError> {
        Self::parse(&text)
    }
}

impl From<ModelId> for String {
    fn from(id: ModelId) -> String {
        id.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelId({})", self.0)
    }
}

/// Who bills for a model: `openai`, `anthropic`, `google`, or the host that serves an open
/// model (`deepinfra`, `groq`, …). 1 to 40 lowercase letters, digits, `_` or `-`, starting with a
/// letter; parsed case-insensitively.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Provider(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a provider is 1 to {MAX_PROVIDER_LEN} letters, digits, `_` or `-`, starting with a letter"
)]
pub struct ProviderError;

impl Provider {
    pub fn parse(text: &str) -> Result<Self, ProviderError> {
        let ok = (1..=MAX_PROVIDER_LEN).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_alphabetic())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if ok {
            Ok(Self(text.to_ascii_lowercase()))
        } else {
            Err(ProviderError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Provider {
    type Error = ProviderError;
    fn try_from(text: String) -> Result<Self, ProviderError> {
        Self::parse(&text)
    }
}

impl From<Provider> for String {
    fn from(provider: Provider) -> String {
        provider.0
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Provider({})", self.0)
    }
}

/// A model class: models of similar cost whose tokens are one asset per cycle
/// (`TOK.<class>.<cycle>`). Admins define classes; the built-in catalog uses three, assigned by
/// [`ModelClass::for_rates`]: `std`, `pro` and `max`.
///
/// 1 to 8 lowercase letters or digits, starting with a letter (the ledger's rule for the class
/// part of a token asset code).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelClass(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a model class is 1 to {MAX_CLASS_LEN} lowercase letters or digits, starting with a letter"
)]
pub struct ModelClassError;

impl ModelClass {
    pub fn parse(text: &str) -> Result<Self, ModelClassError> {
        let ok = (1..=MAX_CLASS_LEN).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(ModelClassError)
        }
    }

    /// Small, cheap models.
    pub fn std() -> Self {
        Self("std".to_owned())
    }

    /// Large models.
    pub fn pro() -> Self {
        Self("pro".to_owned())
    }

    /// The most expensive models (the "pro" tiers of reasoning models and the like).
    pub fn max() -> Self {
        Self("max".to_owned())
    }

    /// The built-in catalog's class for a model priced `input` and `output` USD per 1M tokens:
    /// by the blended price `(3 × input + output) / 4`, [`std`](Self::std) up to 2 USD,
    /// [`pro`](Self::pro) up to 15 USD, [`max`](Self::max) above. The same rule as
    /// `pricing/data/make_catalog.py`. Prices beyond `Decimal`'s range count as `max`.
    pub fn for_rates(input: Decimal, output: Decimal) -> Self {
        // 4 × blended = 3 × input + output, compared without a division.
        let four_blended = Decimal::from(3)
            .checked_mul(input)
            .and_then(|three_input| three_input.checked_add(output));
        match four_blended {
            Some(b) if b <= Decimal::from(8) => Self::std(),
            Some(b) if b <= Decimal::from(60) => Self::pro(),
            _ => Self::max(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ModelClass {
    type Error = ModelClassError;
    fn try_from(text: String) -> Result<Self, ModelClassError> {
        Self::parse(&text)
    }
}

impl From<ModelClass> for String {
    fn from(class: ModelClass) -> String {
        class.0
    }
}

impl fmt::Display for ModelClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ModelClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelClass({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids() {
        let cases: &[(&str, Result<&str, ModelIdError>)] = &[
            ("gpt-5.4", Ok("gpt-5.4")),
            ("Claude-Opus-4-7", Ok("claude-opus-4-7")),
            (
                "bedrock/meta.llama4-maverick-17b-instruct-v1:0",
                Ok("bedrock/meta.llama4-maverick-17b-instruct-v1:0"),
            ),
            ("", Err(ModelIdError::Empty)),
            ("-gpt", Err(ModelIdError::Characters)),
            ("gpt-", Err(ModelIdError::Characters)),
            ("gpt 5", Err(ModelIdError::Characters)),
            ("gpt\u{e9}", Err(ModelIdError::Characters)),
        ];
        for (text, expected) in cases {
            assert_eq!(
                ModelId::parse(text).as_ref().map(ModelId::as_str),
                expected.as_ref().map(|s| *s),
                "{text}"
            );
        }
        assert_eq!(
            ModelId::parse(&"a".repeat(MAX_MODEL_ID_LEN + 1)),
            Err(ModelIdError::TooLong)
        );
        let id = ModelId::parse("groq/openai/gpt-oss-120b").unwrap();
        assert_eq!(id.base_name(), "gpt-oss-120b");
    }

    #[test]
    fn providers_and_classes() {
        assert_eq!(Provider::parse("OpenAI").unwrap().as_str(), "openai");
        assert_eq!(
            Provider::parse("together_ai").unwrap().as_str(),
            "together_ai"
        );
        for bad in ["", "1ai", "open ai", &"a".repeat(MAX_PROVIDER_LEN + 1)] {
            assert_eq!(Provider::parse(bad), Err(ProviderError), "{bad}");
        }
        for good in ["std", "pro", "max", "pro2", "abcdefgh"] {
            assert!(ModelClass::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "Pro", "2pro", "abcdefghi", "pro-x"] {
            assert_eq!(ModelClass::parse(bad), Err(ModelClassError), "{bad}");
        }
        let class = |input: &str, output: &str| {
            ModelClass::for_rates(input.parse().unwrap(), output.parse().unwrap())
        };
        assert_eq!(class("0.15", "0.6"), ModelClass::std());
        assert_eq!(class("2", "2"), ModelClass::std()); // blended exactly 2
        assert_eq!(class("2", "2.0000001"), ModelClass::pro());
        assert_eq!(class("5", "25"), ModelClass::pro()); // blended 10
        assert_eq!(class("15", "15"), ModelClass::pro()); // blended exactly 15
        assert_eq!(class("15", "75"), ModelClass::max());
        // Every valid class names a valid token asset.
        for class in [ModelClass::std(), ModelClass::pro(), ModelClass::max()] {
            assert!(credex_ledger::AssetCode::token(class.as_str(), "2026-11").is_ok());
        }
    }
}
