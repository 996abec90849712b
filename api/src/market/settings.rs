//! A market's admin settings: its decay curve, fee, buyback terms and the provider's list
//! price for emergency credits. The listing window's opening is kept beside them (a column of
//! the market), the cycle's end is fixed by the cycle.

use credex_matching::{Fee, FeeError, FeePayer, MarketRules, ASK_MAX};
use credex_pricing::{BuybackSettings, DecayCurve, DecayError, DecayWindow};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The default listing window: the last 7 days of the cycle.
pub const DEFAULT_WINDOW_MICROS: i64 = 7 * 24 * 60 * 60 * 1_000_000;

/// Why settings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Fee(#[from] FeeError),
    #[error("a provider list price must be 1 to {ASK_MAX} µCR per 1M tokens (got {0})")]
    ListPrice(u64),
    #[error("the listing window must open before the cycle ends: {0}")]
    Window(#[from] DecayError),
}

/// The JSON shape of [`MarketSettings`], before validation:
///
/// ```json
/// {"curve": {"kind": "linear", "floor": "0"}, "fee_rate": "0.03", "fee_payer": "seller",
///  "buyback": {"rate": "0.9"}, "provider_list_price_per_1m_micro_cr": 4000000,
///  "provider_fill": true}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketSettingsInput {
    pub curve: DecayCurve,
    #[serde(with = "rust_decimal::serde::str")]
    pub fee_rate: Decimal,
    pub fee_payer: FeePayer,
    pub buyback: BuybackSettings,
    pub provider_list_price_per_1m_micro_cr: u64,
    /// Whether the provider sells emergency credits when listings run out.
    pub provider_fill: bool,
}

/// A market's validated settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MarketSettingsInput", into = "MarketSettingsInput")]
pub struct MarketSettings {
    curve: DecayCurve,
    fee: Fee,
    buyback: BuybackSettings,
    provider_list_price_per_1m_micro_cr: u64,
    provider_fill: bool,
}

impl TryFrom<MarketSettingsInput> for MarketSettings {
    type Error = SettingsError;
    fn try_from(input: MarketSettingsInput) -> Result<Self, SettingsError> {
        let fee = Fee::new(input.fee_rate, input.fee_payer)?;
        let price = input.provider_list_price_per_1m_micro_cr;
        if !(1..=ASK_MAX).contains(&price) {
            return Err(SettingsError::ListPrice(price));
        }
        Ok(Self {
            curve: input.curve,
            fee,
            buyback: input.buyback,
            provider_list_price_per_1m_micro_cr: price,
            provider_fill: input.provider_fill,
        })
    }
}

impl From<MarketSettings> for MarketSettingsInput {
    fn from(settings: MarketSettings) -> Self {
        Self {
            curve: settings.curve,
            fee_rate: settings.fee.rate(),
            fee_payer: settings.fee.payer(),
            buyback: settings.buyback,
            provider_list_price_per_1m_micro_cr: settings.provider_list_price_per_1m_micro_cr,
            provider_fill: settings.provider_fill,
        }
    }
}

impl MarketSettings {
    /// The spec's defaults for a class of this face value: linear decay to 0, a 3% fee paid
    /// by the seller, buybacks at 90% of face value without caps, emergency credits at face
    /// value.
    pub fn defaults(face_value_per_1m_micro_cr: u64) -> Result<Self, SettingsError> {
        let curve = DecayCurve::linear(Decimal::ZERO)?;
        Self::try_from(MarketSettingsInput {
            curve,
            fee_rate: Fee::standard().rate(),
            fee_payer: Fee::standard().payer(),
            buyback: BuybackSettings::default(),
            provider_list_price_per_1m_micro_cr: face_value_per_1m_micro_cr.clamp(1, ASK_MAX),
            provider_fill: true,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("settings serialize")
    }

    pub fn curve(&self) -> DecayCurve {
        self.curve
    }
    pub fn fee(&self) -> Fee {
        self.fee
    }
    pub fn buyback(&self) -> BuybackSettings {
        self.buyback
    }
    pub fn provider_list_price_per_1m_micro_cr(&self) -> u64 {
        self.provider_list_price_per_1m_micro_cr
    }
    pub fn provider_fill(&self) -> bool {
        self.provider_fill
    }

    /// The rules the matching engine applies over this window.
    pub fn rules(&self, window: DecayWindow) -> MarketRules {
        MarketRules::new(self.curve, window, self.fee)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_validate() {
        let defaults = MarketSettings::defaults(4_000_000).expect("defaults");
        let json = defaults.to_json();
        assert_eq!(MarketSettings::from_json(&json).expect("parse"), defaults);
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value["fee_rate"], "0.03");
        assert_eq!(value["fee_payer"], "seller");
        assert_eq!(value["buyback"]["rate"], "0.9");
        let bad_fee = json.replace("\"0.03\"", "\"1.5\"");
        assert!(MarketSettings::from_json(&bad_fee).is_err());
        let bad_price = json.replace("4000000", "0");
        assert!(MarketSettings::from_json(&bad_price).is_err());
    }
}
