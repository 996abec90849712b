//! Token counting for cost previews: the model's real tokenizer where it is public, a documented
//! estimate where it is not.
//!
//! Pure: no I/O. The BPE vocabularies are compiled into `tiktoken-rs` and loaded once per
//! process, on first use, into its singletons ([`preload`] loads them eagerly).
//!
//! # Which encoding
//!
//! A model id is lowercased and reduced to the part after its last `/` (`azure/gpt-4o` →
//! `gpt-4o`); a fine-tuned id `ft:<base>:…` counts as its base, and an `openai.` prefix (Bedrock)
//! is dropped. Then:
//!
//! | encoding | models |
//! |---|---|
//! | [`Encoding::O200k`] | `gpt-4o*`, `chatgpt-4o*`, `gpt-4.1*`, `gpt-4.5*`, `gpt-5*`, `gpt-6*`, `o1`, `o3`, `o4` and their `-…` variants, `codex-mini*` |
//! | [`Encoding::O200kHarmony`] | `gpt-oss*` |
//! | [`Encoding::Cl100k`] | `gpt-4`, `gpt-4-*` (not `gpt-4o`), `gpt-3.5*`, `gpt-35*` (Azure), `text-embedding-3*`, `text-embedding-ada-002`, `davinci-002`, `babbage-002` |
//! | [`Encoding::Estimated`] | everything else: Claude, Gemini, Mistral, Llama, DeepSeek, Grok, Command, Qwen, unknown ids |
//!
//! This agrees with Python `tiktoken.encoding_for_model` for every OpenAI id it knows (the
//! reference fixture checks it), and extends it to newer ids of the same families (`gpt-6*`).
//!
//! # Special tokens are text
//!
//! Text is counted as Python tiktoken's `encode_ordinary(text)`, which equals
//! `len(enc.encode(text, disallowed_special=()))`: a string such as `<|endoftext|>` in user text
//! is counted as the ordinary text it is (7 tokens in `cl100k_base`), never as one special token
//! and never as an error. A user cannot shrink their count by writing special-token names.
//!
//! # Chat messages
//!
//! [`count_chat`] follows `num_tokens_from_messages` of OpenAI's cookbook ("How to count tokens
//! with tiktoken"): every message costs `tokens_per_message` = 3 plus the tokens of its role, its
//! content and its name (if any); a name costs `tokens_per_name` = 1 more; the reply is primed with
//! 3 tokens. The `gpt-3.5-turbo-0301` snapshot (and its Azure name `gpt-35-turbo-0301`) used 4 per
//! message and −1 per name. The strings are counted as text (special tokens are text, as above),
//! where the cookbook's `enc.encode(value)` would raise on them. The same rules apply to
//! `gpt-oss` and to estimated models, whose real chat framing is not public or differs: they are
//! the best public approximation, and for estimated models they are scaled with everything else.
//!
//! # Estimate for non-public tokenizers
//!
//! For a model whose tokenizer is not public, the count is **`o200k_base` tokens × a per-family
//! ratio, rounded up** ([`EstimateFamily::ratio`]); for chat, the whole `o200k_base` cookbook
//! total (overhead included) is scaled once. The result carries `estimated: true`. Why this rule
//! rather than "characters ÷ 4": an o200k count follows the kind of text (prose, code, CJK,
//! numbers) far better than a character count, and the other vendors' vocabularies are BPE or
//! SentencePiece vocabularies of similar construction.
//!
//! The ratios are deliberate over-estimates (a preview that reserves too much is released at
//! settlement; one that reserves too little lets spend pass a budget), chosen from vendors'
//! published vocabulary sizes and commonly reported English token ratios against OpenAI's
//! tokenizers; they were **not measured here**. Recorded usage events carry the providers' real
//! counts, so the ratios can be calibrated from them later. Text in scripts a vendor's vocabulary
//! covers poorly (CJK, Arabic, …) can exceed them.
//!
//! | family | ratio | basis |
//! |---|---|---|
//! | Anthropic (`claude`) | 4/3 | vocabulary not published; commonly reported to need clearly more tokens than OpenAI's tokenizers for the same English text |
//! | Mistral (`mistral`, `mixtral`, `codestral`, …) | 5/4 | older models use a 32k SentencePiece vocabulary (newer ones a 131k one) |
//! | Google (`gemini`, `gemma`), Meta (`llama`), DeepSeek, xAI (`grok`), Cohere (`command`, `aya`), Qwen | 6/5 | 128k–256k vocabularies, close to o200k on English |
//! | anything else | 5/4 | unknown: the more cautious ratio |
//!
//! # Limits
//!
//! One call counts at most [`MAX_INPUT_BYTES`] of text (for chat: the sum of all roles, contents
//! and names) and at most [`MAX_CHAT_MESSAGES`] messages; a model id has at most
//! [`MAX_MODEL_ID_BYTES`]. Beyond them the call returns a [`TokenError`]; nothing here panics on
//! input. Counting is CPU-bound, about 5–25 MB/s (`docs/PERFORMANCE.md`, "Token counting"), and
//! a 4 MiB run of one repeated character can take several seconds: callers in async code run it
//! on a blocking thread.
//!
//! The tokenizer's regex engine (fancy-regex) gives up on a run of about a million whitespace
//! characters (its backtracking stack is bounded; Python tiktoken raises a `PanicException` on
//! such input). Then the text is counted in chunks of [`FALLBACK_CHUNK_BYTES`] cut at character
//! boundaries and the sum is returned with `estimated: true`: a cut can change the count only
//! by a few tokens around it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tiktoken_rs::CoreBPE;

/// The most bytes of text one call counts (for chat: all roles, contents and names together).
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;
/// The most chat messages one call counts.
pub const MAX_CHAT_MESSAGES: usize = 4_096;
/// The longest model id accepted, in bytes.
pub const MAX_MODEL_ID_BYTES: usize = 256;
/// Chunk size of the fallback used when the regex engine gives up on a text (see module docs).
/// Far below the ~500k-character whitespace run the engine still handles.
pub const FALLBACK_CHUNK_BYTES: usize = 128 * 1024;

/// Why a count was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the model id is empty")]
    EmptyModelId,
    #[error("the model id is {bytes} bytes long; at most {max} are accepted")]
    ModelIdTooLong { bytes: usize, max: usize },
    #[error("the input is {bytes} bytes; at most {max} bytes can be counted at once")]
    InputTooLarge { bytes: usize, max: usize },
    #[error("{count} chat messages; at most {max} can be counted at once")]
    TooManyMessages { count: usize, max: usize },
    /// The tokenizer failed even on a fallback chunk. Not expected; carries its message.
    #[error("the tokenizer failed: {0}")]
    Tokenizer(String),
}

/// The encoding a count was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encoding {
    /// `o200k_base`: GPT-4o, GPT-4.1, GPT-4.5, GPT-5, o-series.
    #[serde(rename = "o200k_base")]
    O200k,
    /// `o200k_harmony`: gpt-oss (o200k_base plus the harmony special tokens).
    #[serde(rename = "o200k_harmony")]
    O200kHarmony,
    /// `cl100k_base`: GPT-4, GPT-3.5, text-embedding-3 and ada-002.
    #[serde(rename = "cl100k_base")]
    Cl100k,
    /// No public tokenizer: `o200k_base` scaled by a per-family ratio (see module docs).
    #[serde(rename = "estimated")]
    Estimated,
}

impl Encoding {
    /// The encoding used for `model` (see the module docs for the rules).
    pub fn for_model(model: &str) -> Result<Self, TokenError> {
        Ok(ModelTokenizer::for_model(model)?.encoding())
    }

    /// The name tiktoken uses (`"o200k_base"`, …), or `"estimated"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::O200k => "o200k_base",
            Self::O200kHarmony => "o200k_harmony",
            Self::Cl100k => "cl100k_base",
            Self::Estimated => "estimated",
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A vendor family whose tokenizer is not public; it selects the estimate's ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimateFamily {
    Anthropic,
    Google,
    Mistral,
    Meta,
    DeepSeek,
    Xai,
    Cohere,
    Qwen,
    Other,
}

/// An exact ratio `numerator / denominator`; no floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ratio {
    pub numerator: u64,
    pub denominator: u64,
}

impl EstimateFamily {
    /// Estimated tokens = ⌈o200k tokens × ratio⌉ (see the module docs for the basis).
    pub fn ratio(self) -> Ratio {
        let (numerator, denominator) = match self {
            Self::Anthropic => (4, 3),
            Self::Mistral | Self::Other => (5, 4),
            Self::Google | Self::Meta | Self::DeepSeek | Self::Xai | Self::Cohere | Self::Qwen => {
                (6, 5)
            }
        };
        Ratio {
            numerator,
            denominator,
        }
    }

    /// Scales an o200k count, rounding up. Counts are bounded by [`MAX_INPUT_BYTES`] plus chat
    /// overhead, so the product cannot come near `u64::MAX`; it saturates rather than wraps.
    fn scale(self, o200k_tokens: u64) -> u64 {
        let Ratio {
            numerator,
            denominator,
        } = self.ratio();
        o200k_tokens.saturating_mul(numerator).div_ceil(denominator)
    }
}

/// The chat-message overhead rules of OpenAI's cookbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatRules {
    /// 3 tokens per message, 1 per name.
    Standard,
    /// `gpt-3.5-turbo-0301`: 4 tokens per message, −1 per name.
    Gpt35Turbo0301,
}

impl ChatRules {
    /// Tokens added for every message.
    pub fn tokens_per_message(self) -> u64 {
        match self {
            Self::Standard => 3,
            Self::Gpt35Turbo0301 => 4,
        }
    }

    /// Tokens added for a message that has a name (on top of the name's own tokens).
    pub fn tokens_per_name(self) -> i64 {
        match self {
            Self::Standard => 1,
            Self::Gpt35Turbo0301 => -1,
        }
    }
}

/// Tokens added once per request: the primed reply `<|start|>assistant<|message|>`.
pub const REPLY_PRIMING_TOKENS: u64 = 3;

/// One chat message, as sent to a chat-completions API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A count of tokens and how it was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct TokenCount {
    tokens: u64,
    encoding: Encoding,
    estimated: bool,
}

impl TokenCount {
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// True for [`Encoding::Estimated`], and for a real encoding counted by the chunked
    /// fallback (see the module docs). False means: exactly what Python tiktoken counts.
    pub fn is_estimated(&self) -> bool {
        self.estimated
    }
}

/// How a model's tokens are counted: resolved once from its id, then reusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelTokenizer {
    method: Method,
    chat_rules: ChatRules,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Method {
    Exact(Bpe),
    Estimate(EstimateFamily),
}

/// The public BPE encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bpe {
    O200k,
    O200kHarmony,
    Cl100k,
}

impl Bpe {
    fn encoding(self) -> Encoding {
        match self {
            Self::O200k => Encoding::O200k,
            Self::O200kHarmony => Encoding::O200kHarmony,
            Self::Cl100k => Encoding::Cl100k,
        }
    }

    fn core(self) -> &'static CoreBPE {
        match self {
            Self::O200k => tiktoken_rs::o200k_base_singleton(),
            Self::O200kHarmony => tiktoken_rs::o200k_harmony_singleton(),
            Self::Cl100k => tiktoken_rs::cl100k_base_singleton(),
        }
    }
}

impl ModelTokenizer {
    /// Resolves `model` (see the module docs for the rules).
    pub fn for_model(model: &str) -> Result<Self, TokenError> {
        if model.is_empty() {
            return Err(TokenError::EmptyModelId);
        }
        if model.len() > MAX_MODEL_ID_BYTES {
            return Err(TokenError::ModelIdTooLong {
                bytes: model.len(),
                max: MAX_MODEL_ID_BYTES,
            });
        }
        let id = normalize_model_id(model);
        let chat_rules = if id == "gpt-3.5-turbo-0301" || id == "gpt-35-turbo-0301" {
            ChatRules::Gpt35Turbo0301
        } else {
            ChatRules::Standard
        };
        let method = match bpe_for(&id) {
            Some(bpe) => Method::Exact(bpe),
            None => Method::Estimate(family_for(&id)),
        };
        Ok(Self { method, chat_rules })
    }

    pub fn encoding(&self) -> Encoding {
        match self.method {
            Method::Exact(bpe) => bpe.encoding(),
            Method::Estimate(_) => Encoding::Estimated,
        }
    }

    /// The family whose ratio scales the count, for [`Encoding::Estimated`] models.
    pub fn estimate_family(&self) -> Option<EstimateFamily> {
        match self.method {
            Method::Exact(_) => None,
            Method::Estimate(family) => Some(family),
        }
    }

    pub fn chat_rules(&self) -> ChatRules {
        self.chat_rules
    }

    /// Counts `text` as Python tiktoken's `encode_ordinary` would (or estimates it).
    pub fn count_text(&self, text: &str) -> Result<TokenCount, TokenError> {
        check_input_bytes(text.len())?;
        let counted = count_ordinary(self.bpe(), text)?;
        Ok(self.finish(counted))
    }

    /// Counts a chat request with the cookbook's overhead rules (see the module docs).
    pub fn count_chat(&self, messages: &[ChatMessage]) -> Result<TokenCount, TokenError> {
        if messages.len() > MAX_CHAT_MESSAGES {
            return Err(TokenError::TooManyMessages {
                count: messages.len(),
                max: MAX_CHAT_MESSAGES,
            });
        }
        check_input_bytes(messages.iter().fold(0, |bytes: usize, message| {
            bytes
                .saturating_add(message.role.len())
                .saturating_add(message.content.len())
                .saturating_add(message.name.as_ref().map_or(0, String::len))
        }))?;
        let bpe = self.bpe();
        let mut total = Counted::exact(REPLY_PRIMING_TOKENS);
        for message in messages {
            total = total.plus(Counted::exact(self.chat_rules.tokens_per_message()));
            total = total.plus(count_ordinary(bpe, &message.role)?);
            total = total.plus(count_ordinary(bpe, &message.content)?);
            if let Some(name) = &message.name {
                total = total.plus(count_ordinary(bpe, name)?);
                // Never below zero: this message already added `tokens_per_message` ≥ 1.
                total.tokens = total
                    .tokens
                    .saturating_add_signed(self.chat_rules.tokens_per_name());
            }
        }
        Ok(self.finish(total))
    }

    /// The BPE that counts this model's text: its own, or o200k for an estimate.
    fn bpe(&self) -> Bpe {
        match self.method {
            Method::Exact(bpe) => bpe,
            Method::Estimate(_) => Bpe::O200k,
        }
    }

    fn finish(&self, counted: Counted) -> TokenCount {
        match self.method {
            Method::Exact(bpe) => TokenCount {
                tokens: counted.tokens,
                encoding: bpe.encoding(),
                estimated: !counted.exact,
            },
            Method::Estimate(family) => TokenCount {
                tokens: family.scale(counted.tokens),
                encoding: Encoding::Estimated,
                estimated: true,
            },
        }
    }
}

/// Counts `text` for `model`: [`ModelTokenizer::for_model`] then [`ModelTokenizer::count_text`].
pub fn count_text(model: &str, text: &str) -> Result<TokenCount, TokenError> {
    ModelTokenizer::for_model(model)?.count_text(text)
}

/// Counts chat `messages` for `model`: [`ModelTokenizer::for_model`] then
/// [`ModelTokenizer::count_chat`].
pub fn count_chat(model: &str, messages: &[ChatMessage]) -> Result<TokenCount, TokenError> {
    ModelTokenizer::for_model(model)?.count_chat(messages)
}

/// Loads the three vocabularies now rather than on the first count (about 0.6 s of CPU in all,
/// release build). Call it once at start-up, off any async executor thread.
pub fn preload() {
    for bpe in [Bpe::O200k, Bpe::O200kHarmony, Bpe::Cl100k] {
        let _ = bpe.core();
    }
}

/// Lowercased; the part after the last `/`; `ft:<base>:…` → `<base>`; `openai.` dropped.
fn normalize_model_id(model: &str) -> String {
    let lower = model.to_lowercase();
    let last = lower.rsplit('/').next().unwrap_or(&lower);
    let base = match last.strip_prefix("ft:") {
        Some(rest) => rest.split(':').next().unwrap_or(rest),
        None => last,
    };
    base.strip_prefix("openai.").unwrap_or(base).to_owned()
}

fn bpe_for(id: &str) -> Option<Bpe> {
    const O200K_PREFIXES: [&str; 7] = [
        "gpt-4o",
        "chatgpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "gpt-6",
        "codex-mini",
    ];
    const O_SERIES: [&str; 3] = ["o1", "o3", "o4"];
    const CL100K_PREFIXES: [&str; 4] = ["gpt-4-", "gpt-3.5", "gpt-35", "text-embedding-3"];
    const CL100K_EXACT: [&str; 4] = [
        "gpt-4",
        "text-embedding-ada-002",
        "davinci-002",
        "babbage-002",
    ];

    let o_series = O_SERIES.iter().any(|family| {
        id == *family
            || id
                .strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('-'))
    });
    if o_series || O200K_PREFIXES.iter().any(|prefix| id.starts_with(prefix)) {
        return Some(Bpe::O200k);
    }
    if id.starts_with("gpt-oss") {
        return Some(Bpe::O200kHarmony);
    }
    if CL100K_EXACT.contains(&id) || CL100K_PREFIXES.iter().any(|prefix| id.starts_with(prefix)) {
        return Some(Bpe::Cl100k);
    }
    None
}

fn family_for(id: &str) -> EstimateFamily {
    const FAMILIES: [(&str, EstimateFamily); 16] = [
        ("claude", EstimateFamily::Anthropic),
        ("gemini", EstimateFamily::Google),
        ("gemma", EstimateFamily::Google),
        ("mistral", EstimateFamily::Mistral),
        ("mixtral", EstimateFamily::Mistral),
        ("stral", EstimateFamily::Mistral), // codestral, ministral, magistral, devstral
        ("pixtral", EstimateFamily::Mistral),
        ("llama", EstimateFamily::Meta),
        ("deepseek", EstimateFamily::DeepSeek),
        ("grok", EstimateFamily::Xai),
        ("command", EstimateFamily::Cohere),
        ("cohere", EstimateFamily::Cohere),
        ("aya-", EstimateFamily::Cohere),
        ("qwen", EstimateFamily::Qwen),
        ("qwq", EstimateFamily::Qwen),
        ("c4ai-", EstimateFamily::Cohere),
    ];
    FAMILIES
        .iter()
        .find(|(needle, _)| id.contains(needle))
        .map_or(EstimateFamily::Other, |&(_, family)| family)
}

fn check_input_bytes(bytes: usize) -> Result<(), TokenError> {
    if bytes > MAX_INPUT_BYTES {
        return Err(TokenError::InputTooLarge {
            bytes,
            max: MAX_INPUT_BYTES,
        });
    }
    Ok(())
}

/// A partial count, and whether every part of it was exact.
#[derive(Debug, Clone, Copy)]
struct Counted {
    tokens: u64,
    exact: bool,
}

impl Counted {
    fn exact(tokens: u64) -> Self {
        Self {
            tokens,
            exact: true,
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            tokens: self.tokens.saturating_add(other.tokens),
            exact: self.exact && other.exact,
        }
    }
}

/// `len(encode_ordinary(text))`, through `encode` with no special token allowed: the same
/// tokens, but a regex failure comes back as an error where `encode_ordinary` would panic.
fn count_ordinary(bpe: Bpe, text: &str) -> Result<Counted, TokenError> {
    let no_special = HashSet::new();
    let core = bpe.core();
    if let Ok((tokens, _)) = core.encode(text, &no_special) {
        return Ok(Counted::exact(len_u64(tokens.len())));
    }
    let mut tokens = 0_u64;
    for chunk in chunks(text, FALLBACK_CHUNK_BYTES) {
        let (chunk_tokens, _) = core
            .encode(chunk, &no_special)
            .map_err(|error| TokenError::Tokenizer(error.message))?;
        tokens = tokens.saturating_add(len_u64(chunk_tokens.len()));
    }
    Ok(Counted {
        tokens,
        exact: false,
    })
}

/// Consecutive pieces of `text` of at most `max_bytes` (≥ 4) each, cut at char boundaries.
fn chunks(text: &str, max_bytes: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = max_bytes.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut -= 1; // A char is at most 4 bytes and max_bytes ≥ 4: stops above zero.
        }
        let (chunk, tail) = rest.split_at(cut);
        rest = tail;
        Some(chunk)
    })
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_encoding(model: &str, expected: Encoding) {
        assert_eq!(Encoding::for_model(model), Ok(expected), "{model}");
    }

    #[test]
    fn openai_models_use_their_encoding() {
        for model in [
            "gpt-4o",
            "gpt-4o-mini",
            "GPT-4o-2024-08-06",
            "azure/gpt-4o",
            "openai/gpt-4.1-nano",
            "gpt-4.5-preview",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5.1-codex",
            "gpt-6",
            "o1",
            "o1-mini",
            "o3",
            "o3-pro",
            "o4-mini",
            "chatgpt-4o-latest",
            "codex-mini-latest",
            "ft:gpt-4o-mini-2024-07-18:acme::abc123",
        ] {
            check_encoding(model, Encoding::O200k);
        }
        for model in [
            "gpt-oss-120b",
            "openai/gpt-oss-20b",
            "openai.gpt-oss-120b-1:0",
        ] {
            check_encoding(model, Encoding::O200kHarmony);
        }
        for model in [
            "gpt-4",
            "gpt-4-turbo",
            "gpt-4-0613",
            "gpt-4-32k",
            "gpt-3.5-turbo",
            "gpt-3.5-turbo-0301",
            "azure/gpt-35-turbo",
            "text-embedding-3-small",
            "text-embedding-3-large",
            "text-embedding-ada-002",
            "ft:gpt-3.5-turbo-0125:acme::x",
        ] {
            check_encoding(model, Encoding::Cl100k);
        }
    }

    #[test]
    fn other_models_are_estimated_by_family() {
        for (model, family) in [
            ("claude-sonnet-4-5", EstimateFamily::Anthropic),
            (
                "anthropic/claude-3-5-haiku-20241022",
                EstimateFamily::Anthropic,
            ),
            (
                "anthropic.claude-3-5-sonnet-20240620-v1:0",
                EstimateFamily::Anthropic,
            ),
            ("gemini-2.5-pro", EstimateFamily::Google),
            ("vertex_ai/gemma-3-27b-it", EstimateFamily::Google),
            ("mistral-large-latest", EstimateFamily::Mistral),
            ("codestral-2501", EstimateFamily::Mistral),
            ("meta-llama/Llama-3.3-70B-Instruct", EstimateFamily::Meta),
            ("deepseek-chat", EstimateFamily::DeepSeek),
            ("xai/grok-4", EstimateFamily::Xai),
            ("command-r-plus", EstimateFamily::Cohere),
            ("qwen3-235b-a22b", EstimateFamily::Qwen),
            ("o2-something", EstimateFamily::Other),
            ("gpt-image-1", EstimateFamily::Other),
            ("omni", EstimateFamily::Other),
        ] {
            let tokenizer = ModelTokenizer::for_model(model);
            assert_eq!(
                tokenizer.map(|t| t.estimate_family()),
                Ok(Some(family)),
                "{model}"
            );
            assert_eq!(
                Encoding::for_model(model),
                Ok(Encoding::Estimated),
                "{model}"
            );
        }
    }

    #[test]
    fn model_ids_are_bounded() {
        assert_eq!(Encoding::for_model(""), Err(TokenError::EmptyModelId));
        let long = "x".repeat(MAX_MODEL_ID_BYTES + 1);
        assert_eq!(
            Encoding::for_model(&long),
            Err(TokenError::ModelIdTooLong {
                bytes: MAX_MODEL_ID_BYTES + 1,
                max: MAX_MODEL_ID_BYTES
            })
        );
        assert!(Encoding::for_model(&"x".repeat(MAX_MODEL_ID_BYTES)).is_ok());
    }

    #[test]
    fn special_tokens_count_as_text() {
        let count = count_text("gpt-4", "<|endoftext|>").ok();
        assert_eq!(
            count.map(|c| (c.tokens(), c.is_estimated())),
            Some((7, false))
        );
        let harmony = count_text("gpt-oss-20b", "<|start|>user<|message|>hi<|end|>").ok();
        assert!(harmony.is_some_and(|c| c.tokens() > 5));
    }

    #[test]
    fn estimates_scale_o200k_and_round_up() {
        let o200k = count_text("gpt-4o", "Hello, world! How are you today?").map(|c| c.tokens());
        let claude = count_text("claude-opus-4-1", "Hello, world! How are you today?");
        let expected = o200k.map(|t| (t * 4).div_ceil(3));
        assert_eq!(claude.clone().map(|c| c.tokens()), expected);
        assert_eq!(
            claude.as_ref().map(TokenCount::encoding),
            Ok(Encoding::Estimated)
        );
        assert_eq!(claude.map(|c| c.is_estimated()), Ok(true));
        assert_eq!(count_text("claude-3-opus", "").map(|c| c.tokens()), Ok(0));
        assert_eq!(EstimateFamily::Anthropic.scale(1), 2);
        assert_eq!(EstimateFamily::Google.scale(5), 6);
        assert_eq!(EstimateFamily::Google.scale(6), 8);
    }

    #[test]
    fn chat_overhead_follows_the_cookbook() {
        let message = |role: &str, content: &str, name: Option<&str>| ChatMessage {
            role: role.to_owned(),
            content: content.to_owned(),
            name: name.map(str::to_owned),
        };
        // "system"/"user" are one token each; "hi" one; "bob" one (cl100k and o200k).
        let plain = [message("system", "hi", None)];
        let named = [message("user", "hi", Some("bob"))];
        assert_eq!(count_chat("gpt-4o", &[]).map(|c| c.tokens()), Ok(3));
        assert_eq!(
            count_chat("gpt-4o", &plain).map(|c| c.tokens()),
            Ok(3 + 1 + 1 + 3)
        );
        assert_eq!(
            count_chat("gpt-4", &named).map(|c| c.tokens()),
            Ok(3 + 1 + 1 + 1 + 1 + 3)
        );
        assert_eq!(
            count_chat("gpt-3.5-turbo-0301", &named).map(|c| c.tokens()),
            Ok(4 + 1 + 1 + 1 - 1 + 3)
        );
        // Estimated: the whole o200k total (8) scaled once: ⌈8 × 4/3⌉ = 11.
        assert_eq!(
            count_chat("claude-sonnet-4", &plain).map(|c| c.tokens()),
            Ok(11)
        );
    }

    #[test]
    fn inputs_are_bounded() {
        let big = "a".repeat(MAX_INPUT_BYTES + 1);
        assert_eq!(
            count_text("gpt-4o", &big),
            Err(TokenError::InputTooLarge {
                bytes: MAX_INPUT_BYTES + 1,
                max: MAX_INPUT_BYTES
            })
        );
        let half = "a".repeat(MAX_INPUT_BYTES / 2);
        let two = [
            ChatMessage {
                role: "user".into(),
                content: half.clone(),
                name: None,
            },
            ChatMessage {
                role: "user".into(),
                content: half,
                name: None,
            },
        ];
        assert!(matches!(
            count_chat("gpt-4o", &two),
            Err(TokenError::InputTooLarge { .. })
        ));
        let many = vec![
            ChatMessage {
                role: "user".into(),
                content: String::new(),
                name: None,
            };
            MAX_CHAT_MESSAGES + 1
        ];
        assert_eq!(
            count_chat("gpt-4o", &many),
            Err(TokenError::TooManyMessages {
                count: MAX_CHAT_MESSAGES + 1,
                max: MAX_CHAT_MESSAGES
            })
        );
        assert!(count_chat("gpt-4o", &many[..MAX_CHAT_MESSAGES]).is_ok());
    }

    #[test]
    fn chunks_cut_at_char_boundaries() {
        let text = "aé中😀".repeat(10);
        let pieces: Vec<&str> = chunks(&text, 5).collect();
        assert_eq!(pieces.concat(), text);
        assert!(pieces
            .iter()
            .all(|piece| !piece.is_empty() && piece.len() <= 5));
        assert_eq!(chunks("", 5).count(), 0);
    }

    #[test]
    fn encoding_names_match_tiktoken() {
        assert_eq!(Encoding::O200k.to_string(), "o200k_base");
        assert_eq!(
            serde_json::to_string(&Encoding::Cl100k).ok().as_deref(),
            Some("\"cl100k_base\"")
        );
    }
}
