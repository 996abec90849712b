//! Amounts: positive integers in an asset's smallest unit, never floating point.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The largest amount a single transfer may carry. Balances are stored as signed 64-bit
/// integers, so one amount must fit in one.
pub const AMOUNT_MAX: u64 = i64::MAX as u64;

/// A positive quantity of an asset in its smallest unit (µCR for credits, tokens for tokens).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Amount(u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount must be positive")]
    Zero,
    #[error("amount must not exceed {AMOUNT_MAX}")]
    TooLarge,
}

impl Amount {
    pub fn new(value: u64) -> Result<Self, AmountError> {
        match value {
            0 => Err(AmountError::Zero),
            v if v > AMOUNT_MAX => Err(AmountError::TooLarge),
            v => Ok(Self(v)),
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The amount as the signed integer that storage keeps. Lossless by construction.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).expect("Amount is bounded by i64::MAX")
    }
}

impl TryFrom<u64> for Amount {
    type Error = AmountError;
    fn try_from(value: u64) -> Result<Self, AmountError> {
        Self::new(value)
    }
}

impl TryFrom<i64> for Amount {
    type Error = AmountError;
    fn try_from(value: i64) -> Result<Self, AmountError> {
        Self::new(u64::try_from(value).map_err(|_| AmountError::Zero)?)
    }
}

impl From<Amount> for u64 {
    fn from(amount: Amount) -> u64 {
        amount.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_positive_and_fit_storage() {
        assert_eq!(Amount::new(0), Err(AmountError::Zero));
        assert_eq!(Amount::new(AMOUNT_MAX + 1), Err(AmountError::TooLarge));
        assert_eq!(Amount::new(AMOUNT_MAX).unwrap().as_i64(), i64::MAX);
        assert_eq!(Amount::try_from(-5_i64), Err(AmountError::Zero));
    }
}
