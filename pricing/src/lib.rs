//! Credex's price catalog, cost arithmetic, token counting, decay curves and buyback pricing.
//!
//! Pure and deterministic: no I/O, no clock, no randomness. Time comes in as an argument (a
//! ledger [`credex_ledger::Timestamp`]); the built-in catalog is compiled in.

pub mod buyback;
pub mod catalog;
pub mod cost;
pub mod date;
pub mod decay;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod litellm;
pub mod tokens;

pub use buyback::{
    BuybackContext, BuybackError, BuybackPrice, BuybackQuote, BuybackSettings,
    BuybackSettingsError, BuybackSettingsInput, CapKind,
};
pub use decay::{DecayCurve, DecayError, DecayFactor, DecayWindow, PurchaseCostError};

pub use catalog::{
    resolve, Catalog, CatalogError, DatedPrice, ModelEntry, ModelEntryError, OrgPrices, Price,
    PriceLookupError, PriceSchedule, PriceSource, Rates, ResolvedPrice, ScheduleError, Tier,
    TokenKind,
};
pub use cost::{
    charge, cost, Charge, CostBreakdown, CostError, CrFaceValue, TokenUsage, UsageError,
};
pub use ids::{ModelClass, ModelId, Provider};
pub use tokens::{
    count_chat, count_text, ChatMessage, Encoding, EstimateFamily, ModelTokenizer, TokenCount,
    TokenError,
};
