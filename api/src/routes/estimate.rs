//! Cost previews (`POST /v1/estimate`): what a call to a model would cost an org, before it is
//! made — its tokens counted with the model's tokenizer, the price that applies (the org's
//! custom one or the catalog's, in force at the call's instant), the exact cost, and which of
//! the org's balances would pay.
//!
//! Nothing is written: a preview reserves nothing and moves nothing.

use actix_web::{web, HttpResponse};
use credex_ledger::{AccountKind, AssetCode, OrgId, Timestamp};
use credex_pricing::cost::{usd_text, MAX_TOKENS_PER_KIND};
use credex_pricing::date::{format_date, FIRST_INSTANT, LAST_INSTANT};
use credex_pricing::tokens::{ModelTokenizer, TokenError, MAX_CHAT_MESSAGES, MAX_INPUT_BYTES};
use credex_pricing::{cost, ChatMessage, CostError, TokenCount, TokenKind, TokenUsage};
use credex_store::AccountView;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::auth::access::{Authenticator, Caller, OrgAccess, Read};
use crate::catalog::{self, ResolvedModelPrice};
use crate::input::{self, integer, invalid};
use crate::problem::internal;
use crate::problem::{ApiError, Problem, ProblemKind};
use crate::routes::models::{price_source_name, PriceSourceName};
use crate::startup::AppState;
use crate::views::rfc3339;

/// The longest role or name of a chat message, in characters.
pub(crate) const CHAT_LABEL_MAX_CHARS: usize = 64;

/// One chat message, as sent to a chat-completions API.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessageRequest {
    /// `system`, `user`, `assistant`, … (at most 64 characters).
    #[schema(max_length = 64)]
    role: String,
    /// The message's text.
    content: String,
    /// The participant's name, if any (at most 64 characters).
    #[schema(max_length = 64)]
    name: Option<String>,
}

/// A preview of a call whose prompt is text.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "org_id": "0192d1a4-8c3e-7b61-9a0f-2f4b5c6d7e8f", "model": "gpt-4o",
    "prompt": "Summarize the attached contract in five bullet points.",
    "expected_output_tokens": 400
}))]
pub struct PromptEstimate {
    /// The org that would pay. Required when signed in as a user; an API key acts in its own
    /// org (naming another answers 404).
    #[schema(value_type = Option<String>, format = Uuid)]
    org_id: Option<String>,
    /// A model id or alias, in any letter case.
    #[schema(
        max_length = 128,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:/@+-]{0,126}[A-Za-z0-9])?$"
    )]
    model: String,
    /// The prompt: at most 4 MiB (4,194,304 bytes) of UTF-8.
    #[schema(max_length = 4_194_304)]
    prompt: String,
    /// Tokens the model is expected to generate (0 to 10^12).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    expected_output_tokens: u64,
    /// How many of the prompt's tokens are expected to be read from the provider's cache: at
    /// most the prompt's tokens. Default 0.
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    cached_input_tokens: Option<u64>,
    /// When the call would happen (RFC 3339): its prices and billing cycle. Default: now.
    #[schema(value_type = Option<String>, format = DateTime)]
    at: Option<String>,
}

/// A preview of a call whose prompt is chat messages.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "org_id": "0192d1a4-8c3e-7b61-9a0f-2f4b5c6d7e8f", "model": "claude-sonnet-4-5",
    "messages": [
        {"role": "system", "content": "You are a careful lawyer."},
        {"role": "user", "content": "Is this clause enforceable?"}
    ],
    "expected_output_tokens": 800, "cached_input_tokens": 10
}))]
pub struct MessagesEstimate {
    /// The org that would pay. Required when signed in as a user; an API key acts in its own
    /// org (naming another answers 404).
    #[schema(value_type = Option<String>, format = Uuid)]
    org_id: Option<String>,
    /// A model id or alias, in any letter case.
    #[schema(
        max_length = 128,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9._:/@+-]{0,126}[A-Za-z0-9])?$"
    )]
    model: String,
    /// Up to 4,096 messages; all roles, contents and names together at most 4 MiB of UTF-8.
    /// Counted with OpenAI's chat overhead (3 tokens per message, 1 per name, 3 to prime the
    /// reply).
    #[schema(max_items = 4096)]
    messages: Vec<ChatMessageRequest>,
    /// Tokens the model is expected to generate (0 to 10^12).
    #[serde(deserialize_with = "integer::required")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    expected_output_tokens: u64,
    /// How many of the prompt's tokens are expected to be read from the provider's cache: at
    /// most the prompt's tokens. Default 0.
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    cached_input_tokens: Option<u64>,
    /// When the call would happen (RFC 3339): its prices and billing cycle. Default: now.
    #[schema(value_type = Option<String>, format = DateTime)]
    at: Option<String>,
}

/// A cost preview: the prompt as text (`prompt`) or as chat messages (`messages`), exactly one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EstimateRequest {
    Prompt(PromptEstimate),
    Messages(MessagesEstimate),
}

/// What is counted.
#[derive(Debug)]
pub(crate) enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
}

/// A request, parsed.
#[derive(Debug)]
pub(crate) struct Estimate {
    pub(crate) org_id: Option<String>,
    pub(crate) model: String,
    pub(crate) prompt: Prompt,
    pub(crate) expected_output_tokens: u64,
    pub(crate) cached_input_tokens: u64,
    pub(crate) at: Option<String>,
}

fn malformed(error: &serde_json::Error) -> actix_web::Error {
    ApiError::new(ProblemKind::MalformedJson, error.to_string()).into()
}

impl Estimate {
    /// The body's variant is chosen by which of `prompt` and `messages` it has.
    pub(crate) fn parse(body: Map<String, Value>) -> Result<Self, actix_web::Error> {
        let (prompt, messages) = (body.contains_key("prompt"), body.contains_key("messages"));
        let estimate = match (prompt, messages) {
            (true, true) => {
                return Err(invalid(
                    "prompt",
                    "send the prompt as `prompt` or as `messages`, not both",
                ))
            }
            (false, false) => {
                return Err(invalid(
                    "prompt",
                    "send the prompt as `prompt` (text) or `messages` (chat messages)",
                ))
            }
            (true, false) => {
                let request: PromptEstimate =
                    serde_json::from_value(Value::Object(body)).map_err(|e| malformed(&e))?;
                if request.prompt.len() > MAX_INPUT_BYTES {
                    return Err(invalid(
                        "prompt",
                        format!("at most {MAX_INPUT_BYTES} bytes of UTF-8 (4 MiB)"),
                    ));
                }
                Self {
                    org_id: request.org_id,
                    model: request.model,
                    prompt: Prompt::Text(request.prompt),
                    expected_output_tokens: request.expected_output_tokens,
                    cached_input_tokens: request.cached_input_tokens.unwrap_or(0),
                    at: request.at,
                }
            }
            (false, true) => {
                let request: MessagesEstimate =
                    serde_json::from_value(Value::Object(body)).map_err(|e| malformed(&e))?;
                Self {
                    org_id: request.org_id,
                    model: request.model,
                    prompt: Prompt::Chat(chat(request.messages)?),
                    expected_output_tokens: request.expected_output_tokens,
                    cached_input_tokens: request.cached_input_tokens.unwrap_or(0),
                    at: request.at,
                }
            }
        };
        for (field, tokens) in [
            ("expected_output_tokens", estimate.expected_output_tokens),
            ("cached_input_tokens", estimate.cached_input_tokens),
        ] {
            if tokens > MAX_TOKENS_PER_KIND {
                return Err(invalid(field, format!("at most {MAX_TOKENS_PER_KIND}")));
            }
        }
        if !input::is_model_id(&estimate.model) {
            return Err(invalid(
                "model",
                "a model id or alias: ASCII letters, digits and `-._:/@+`, at most 128",
            ));
        }
        Ok(estimate)
    }
}

fn chat(messages: Vec<ChatMessageRequest>) -> Result<Vec<ChatMessage>, actix_web::Error> {
    if messages.len() > MAX_CHAT_MESSAGES {
        return Err(invalid(
            "messages",
            format!("at most {MAX_CHAT_MESSAGES} messages"),
        ));
    }
    let mut bytes = 0_usize;
    let mut parsed = Vec::with_capacity(messages.len());
    for (index, message) in messages.into_iter().enumerate() {
        let label_ok = |text: &str| text.chars().count() <= CHAT_LABEL_MAX_CHARS;
        if !label_ok(&message.role) {
            return Err(invalid(
                &format!("messages[{index}].role"),
                format!("at most {CHAT_LABEL_MAX_CHARS} characters"),
            ));
        }
        if !message.name.as_deref().is_none_or(label_ok) {
            return Err(invalid(
                &format!("messages[{index}].name"),
                format!("at most {CHAT_LABEL_MAX_CHARS} characters"),
            ));
        }
        bytes = bytes
            .saturating_add(message.role.len())
            .saturating_add(message.content.len())
            .saturating_add(message.name.as_ref().map_or(0, String::len));
        parsed.push(ChatMessage {
            role: message.role,
            content: message.content,
            name: message.name,
        });
    }
    if bytes > MAX_INPUT_BYTES {
        return Err(invalid(
            "messages",
            format!("all roles, contents and names together at most {MAX_INPUT_BYTES} bytes of UTF-8 (4 MiB)"),
        ));
    }
    Ok(parsed)
}

/// The encoding tokens were counted with.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum EncodingName {
    #[serde(rename = "o200k_base")]
    O200kBase,
    #[serde(rename = "o200k_harmony")]
    O200kHarmony,
    #[serde(rename = "cl100k_base")]
    Cl100kBase,
    /// No public tokenizer: `o200k_base` tokens scaled by a per-family ratio, rounded up.
    #[serde(rename = "estimated")]
    Estimated,
}

/// Which balance would pay.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FundingSourceName {
    /// Tokens the org bought on the market, of the model's class and the call's cycle.
    Acquired,
    /// The org's own allotted tokens of that class and cycle.
    Alloc,
    /// The org's CR wallet, at the model's price.
    Wallet,
    /// None of them holds enough.
    Insufficient,
}

/// The model that would answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateModel {
    /// Its id (the request may have named an alias).
    pub id: String,
    pub provider: String,
    /// Its class: its tokens are the asset `TOK.<class>.<cycle>`.
    pub class: String,
}

/// The call's tokens by kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateTokens {
    /// Prompt tokens not read from the cache.
    pub input: u64,
    /// Prompt tokens read from the cache (`cached_input_tokens`).
    pub cached_input: u64,
    /// `expected_output_tokens`.
    pub output: u64,
    /// All prompt tokens: `input` + `cached_input` (chat overhead included).
    pub prompt: u64,
    /// Every token of the call: what a token allotment pays, one for one.
    pub total: u64,
    #[schema(value_type = EncodingName)]
    pub encoding: &'static str,
    /// True when the model's tokenizer is not public and the count is an estimate (see the
    /// encoding); false when it is exactly what the model's tokenizer counts.
    pub estimated: bool,
}

/// The price the call is charged at: USD per 1M tokens, decimal strings.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppliedPrice {
    #[schema(value_type = PriceSourceName)]
    pub source: &'static str,
    /// When this price took effect.
    #[schema(format = DateTime)]
    pub effective_from: String,
    /// The long-context tier that applies (the prompt exceeds this many tokens); absent for
    /// the base prices.
    pub tier_above_prompt_tokens: Option<u64>,
    pub input: String,
    pub cached_input: String,
    pub output: String,
}

/// The exact cost in USD by kind (decimal strings), and the charge in µCR.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateCost {
    pub input_usd: String,
    pub cached_input_usd: String,
    pub output_usd: String,
    /// The exact sum of the kinds.
    pub total_usd: String,
    /// The charge: `total_usd` in µCR at `cr_face_value_usd`, rounded up once, on the total,
    /// to a whole µCR (never less than the exact cost, less than 1 µCR more).
    pub total_micro_cr: u64,
    /// What one CR is worth in USD.
    pub cr_face_value_usd: String,
}

/// What the org holds to pay with, available now (pending debits counted).
#[derive(Debug, Serialize, ToSchema)]
pub struct FundingAvailable {
    /// Tokens of `token_asset` in the org's `acquired` account.
    pub acquired_tokens: i64,
    /// Tokens of `token_asset` in the org's `alloc` account.
    pub alloc_tokens: i64,
    /// µCR in the org's wallet.
    pub wallet_micro_cr: i64,
}

/// Which balance would pay: in order, `acquired` then `alloc` tokens of the model's class and
/// the call's cycle (all of the call's tokens, one for one), then the CR wallet (the charge in
/// µCR); the first that covers the whole call.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateFunding {
    #[schema(value_type = FundingSourceName)]
    pub source: &'static str,
    /// `TOK.<class>.<cycle>`, the cycle being the UTC calendar month of `at`.
    pub token_asset: String,
    pub available: FundingAvailable,
}

/// The org's plan's limit on one prompt.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimatePromptLimit {
    /// `free`, `teams` or `enterprise`.
    pub plan: String,
    /// The most tokens one prompt may carry on the plan (1,000, 10,000, 100,000).
    pub max_prompt_tokens: u64,
    /// Whether this prompt is within it.
    pub within: bool,
}

/// Whether budgets allow the call.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateBudgets {
    /// Whether every hard budget that applies would allow the call at `at` (soft budgets only
    /// alert).
    pub allowed: bool,
    /// The budgets that apply to the caller's calls: the org's, and those of the calling user
    /// or API key (task budgets apply to calls that carry the task, which a preview does not).
    pub applying: Vec<EstimateBudget>,
}

/// One budget that applies to the call.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateBudget {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    pub hard: bool,
    pub limit_micro_cr: u64,
    /// Spent in the period `at` falls in.
    pub spent_micro_cr: u64,
    /// Held by pending reservations in that period (counted against a hard limit).
    pub held_micro_cr: u64,
    /// Spent with this call too.
    pub after_micro_cr: u64,
    /// Whether it allows the call (always for a soft budget).
    pub allows: bool,
}

/// The budgets that apply to a call by `caller` in `org` costing `micro_cr` at `at`.
async fn budgets(
    store: &dyn credex_store::Store,
    org: OrgId,
    caller: (Option<uuid::Uuid>, Option<uuid::Uuid>),
    at: Timestamp,
    micro_cr: u64,
) -> Result<EstimateBudgets, actix_web::Error> {
    let (user, key) = caller;
    let mut applying = Vec::new();
    for record in store
        .budgets_of(org)
        .await
        .map_err(|error| internal(&error))?
    {
        let budget = crate::budgets::Budget::parse(&record).map_err(|error| internal(&error))?;
        if !budget.applies(user, key, None) {
            continue;
        }
        let spent = store
            .budget_spent(budget.id(), budget.period_start(at))
            .await
            .map_err(|error| internal(&error))?;
        let held = store
            .budget_held(budget.id(), budget.period_start(at), at)
            .await
            .map_err(|error| internal(&error))?;
        let after = spent.saturating_add(micro_cr);
        applying.push(EstimateBudget {
            id: budget.id().to_string(),
            name: budget.name().to_owned(),
            hard: budget.is_hard(),
            limit_micro_cr: budget.limit_micro_cr(),
            spent_micro_cr: spent,
            held_micro_cr: held,
            after_micro_cr: after,
            allows: !budget.is_hard() || after.saturating_add(held) <= budget.limit_micro_cr(),
        });
    }
    Ok(EstimateBudgets {
        allowed: applying.iter().all(|budget| budget.allows),
        applying,
    })
}

/// A cost preview.
#[derive(Debug, Serialize, ToSchema)]
pub struct EstimateView {
    #[schema(format = Uuid)]
    pub org_id: String,
    pub model: EstimateModel,
    /// The instant the call was priced at.
    #[schema(format = DateTime)]
    pub at: String,
    pub tokens: EstimateTokens,
    pub price: AppliedPrice,
    pub cost: EstimateCost,
    pub funding: EstimateFunding,
    pub budgets: EstimateBudgets,
    pub prompt_limit: EstimatePromptLimit,
}

/// The org a preview is for, with the caller allowed to read it: the body's `org_id`, or an
/// API key's own org.
async fn org_of(
    auth: &Authenticator,
    caller: Caller,
    org_id: Option<&str>,
) -> Result<OrgAccess<Read>, actix_web::Error> {
    let not_found =
        || -> actix_web::Error { ApiError::new(ProblemKind::NotFound, "no such org").into() };
    let org = match (org_id, &caller) {
        (Some(text), _) => {
            let uuid = input::uuid(text).ok_or_else(|| invalid("org_id", "not a UUID"))?;
            OrgId::new(uuid).map_err(|_| not_found())?
        }
        (None, Caller::Key(key)) => key.org,
        (None, Caller::User { .. }) => {
            return Err(invalid(
                "org_id",
                "required when signed in as a user (an API key acts in its own org)",
            ))
        }
    };
    let admin = caller.is_admin();
    let access = OrgAccess::<Read>::check(auth, caller, org).await?;
    // Platform admins act in any org, so for them the org must exist.
    if admin
        && auth
            .store
            .org(org)
            .await
            .map_err(|error| internal(&error))?
            .is_none()
    {
        return Err(not_found());
    }
    Ok(access)
}

/// Starts counting `prompt`'s tokens with `tokenizer` on the blocking pool at once; the future
/// answers the count and gives the prompt back.
fn count_tokens(
    tokenizer: ModelTokenizer,
    prompt: Prompt,
) -> impl std::future::Future<Output = Result<(Result<TokenCount, TokenError>, Prompt), actix_web::Error>>
{
    let counting = web::block(move || {
        let counted = match &prompt {
            Prompt::Text(text) => tokenizer.count_text(text),
            Prompt::Chat(messages) => tokenizer.count_chat(messages),
        };
        (counted, prompt)
    });
    async move { counting.await.map_err(|error| internal(&error)) }
}

fn token_error(error: TokenError) -> actix_web::Error {
    match error {
        TokenError::InputTooLarge { .. } | TokenError::TooManyMessages { .. } => {
            invalid("prompt", error)
        }
        other => internal(&other),
    }
}

/// The prompt's tokens for `model`: the count made with the tokenizer of the name the request
/// gave (`counting`, started before the model was looked up) when the model's own id resolves
/// to the same tokenizer — as it does unless an alias names another family — else counted
/// again with the id's.
async fn model_tokens(
    model: &str,
    requested: ModelTokenizer,
    counting: impl std::future::Future<
        Output = Result<(Result<TokenCount, TokenError>, Prompt), actix_web::Error>,
    >,
) -> Result<TokenCount, actix_web::Error> {
    let (counted, prompt) = counting.await?;
    let own = ModelTokenizer::for_model(model).map_err(|error| internal(&error))?;
    let counted = if own == requested {
        counted
    } else {
        count_tokens(own, prompt).await?.0
    };
    counted.map_err(token_error)
}

fn funding(
    accounts: &[AccountView],
    token_asset: &AssetCode,
    tokens: u64,
    micro_cr: u64,
) -> EstimateFunding {
    let available = |asset: &AssetCode, kind: AccountKind| {
        accounts
            .iter()
            .find(|view| view.account.asset() == asset && view.account.kind() == kind)
            .map_or(0, |view| view.balance.available())
    };
    let credit = AssetCode::credit();
    let acquired = available(token_asset, AccountKind::Acquired);
    let alloc = available(token_asset, AccountKind::Alloc);
    let wallet = available(&credit, AccountKind::Wallet);
    let source = if acquired >= i128::from(tokens) {
        "acquired"
    } else if alloc >= i128::from(tokens) {
        "alloc"
    } else if wallet >= i128::from(micro_cr) {
        "wallet"
    } else {
        "insufficient"
    };
    let narrow =
        |value: i128| i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX });
    EstimateFunding {
        source,
        token_asset: token_asset.to_string(),
        available: FundingAvailable {
            acquired_tokens: narrow(acquired),
            alloc_tokens: narrow(alloc),
            wallet_micro_cr: narrow(wallet),
        },
    }
}

/// The instant a preview prices: `at`, or now; within 1970 to 9999 (the catalog's range).
fn instant(at: Option<&str>, now: Timestamp) -> Result<Timestamp, actix_web::Error> {
    let Some(text) = at else {
        return Ok(now);
    };
    let at = input::instant("at", text)?;
    if !(FIRST_INSTANT..=LAST_INSTANT).contains(&at) {
        return Err(invalid(
            "at",
            "between 1970-01-01 and 9999-12-31: no price is in force outside",
        ));
    }
    Ok(at)
}

/// Previews a call: its tokens, the price and cost, which balance would pay, whether the
/// budgets that apply allow it, and whether the prompt is within the org's plan's limit. A member of the org, or an API key with the `read` scope.
#[utoipa::path(
    post,
    path = "/v1/estimate",
    tag = "models",
    security(("bearer" = [])),
    request_body = EstimateRequest,
    responses(
        (status = 200, description = "The preview", body = EstimateView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "An API key without the `read` scope", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such org, or not the caller's (an API key names only its own); or no model has this name", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is larger than 16 MiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is not valid: both or neither of `prompt` and `messages`; a prompt over 4 MiB; more cached tokens than the prompt has; no `org_id` from a user; or the model has no price in force at `at`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn estimate(
    caller: Caller,
    body: web::Json<Map<String, Value>>,
    state: web::Data<AppState>,
    auth: web::Data<Authenticator>,
) -> Result<HttpResponse, actix_web::Error> {
    let request = Estimate::parse(body.into_inner())?;
    let access = org_of(&auth, caller, request.org_id.as_deref()).await?;
    let store = state.ledger.store().as_ref();
    let at = instant(request.at.as_deref(), store.clock().now())?;
    // The tokens are counted on the blocking pool while the price (one statement) and the
    // balances are read.
    let requested = ModelTokenizer::for_model(&request.model).map_err(|error| internal(&error))?;
    let counting = count_tokens(requested, request.prompt);
    let accounts = async {
        store
            .accounts_of(credex_ledger::Owner::Org(access.org))
            .await
            .map_err(|error| ApiError::internal(&error))
    };
    let (resolved, accounts) = tokio::try_join!(
        catalog::resolve_price(store, Some(access.org), &request.model, at),
        accounts
    )?;
    let counted = model_tokens(&resolved.model.id, requested, counting).await?;
    let prompt_tokens = counted.tokens();
    let usage = TokenUsage::from_prompt_total(
        prompt_tokens,
        request.cached_input_tokens,
        0,
        request.expected_output_tokens,
    )
    .map_err(|_| {
        invalid(
            "cached_input_tokens",
            format!("at most the prompt's {prompt_tokens} tokens"),
        )
    })?;
    let caller = match &access.caller {
        Caller::Key(key) => (None, Some(key.id.as_uuid())),
        Caller::User { user, .. } => (Some(user.id.as_uuid()), None),
    };
    let mut view = preview(&state, access.org, at, &resolved, counted, usage, &accounts)?;
    view.budgets = budgets(store, access.org, caller, at, view.cost.total_micro_cr).await?;
    let plan = store
        .org(access.org)
        .await
        .map_err(|error| internal(&error))?
        .ok_or_else(|| ApiError::new(ProblemKind::NotFound, "no such org"))?
        .plan;
    let max_prompt_tokens = crate::budgets::max_prompt_tokens(plan);
    view.prompt_limit = EstimatePromptLimit {
        plan: plan.as_str().to_owned(),
        max_prompt_tokens,
        within: view.tokens.prompt <= max_prompt_tokens,
    };
    Ok(HttpResponse::Ok().json(view))
}

fn preview(
    state: &AppState,
    org: OrgId,
    at: Timestamp,
    resolved: &ResolvedModelPrice,
    counted: TokenCount,
    usage: TokenUsage,
    accounts: &[AccountView],
) -> Result<EstimateView, actix_web::Error> {
    let breakdown = cost(&resolved.price, &usage).map_err(|error| internal(&error))?;
    let micro_cr = breakdown
        .micro_cr(state.cr_face_value)
        .map_err(|error| match error {
            CostError::ChargeTooLarge => invalid(
                "expected_output_tokens",
                "the call would cost more than one charge can carry",
            ),
            other => internal(&other),
        })?;
    let (_, rates) = resolved.price.rates_for(usage.prompt_tokens());
    let cycle = format_date(at);
    let cycle = cycle.get(..7).unwrap_or_default();
    let token_asset =
        AssetCode::token(resolved.class.as_str(), cycle).map_err(|error| internal(&error))?;
    let total_tokens = usage.prompt_tokens().saturating_add(usage.output());
    let usd = |kind: TokenKind| usd_text(breakdown.usd(kind));
    Ok(EstimateView {
        org_id: org.to_string(),
        model: EstimateModel {
            id: resolved.model.id.clone(),
            provider: resolved.model.provider.clone(),
            class: resolved.class.to_string(),
        },
        at: rfc3339(at),
        tokens: EstimateTokens {
            input: usage.input(),
            cached_input: usage.cached_input(),
            output: usage.output(),
            prompt: usage.prompt_tokens(),
            total: total_tokens,
            encoding: counted.encoding().as_str(),
            estimated: counted.is_estimated(),
        },
        price: AppliedPrice {
            source: price_source_name(resolved.source),
            effective_from: rfc3339(resolved.effective_from),
            tier_above_prompt_tokens: breakdown.tier_above_prompt_tokens(),
            input: usd_text(rates.input()),
            cached_input: usd_text(rates.cached_input()),
            output: usd_text(rates.output()),
        },
        cost: EstimateCost {
            input_usd: usd(TokenKind::Input),
            cached_input_usd: usd(TokenKind::CachedInput),
            output_usd: usd(TokenKind::Output),
            total_usd: breakdown.total_usd_text(),
            total_micro_cr: micro_cr,
            cr_face_value_usd: usd_text(state.cr_face_value.usd_per_cr()),
        },
        funding: funding(accounts, &token_asset, total_tokens, micro_cr),
        budgets: EstimateBudgets {
            allowed: true,
            applying: Vec::new(),
        },
        prompt_limit: EstimatePromptLimit {
            plan: String::new(),
            max_prompt_tokens: 0,
            within: true,
        },
    })
}

/// The largest preview body: a 4 MiB prompt, escaped.
pub const ESTIMATE_BODY_MAX: usize = 16 << 20;

pub fn configure(config: &mut web::ServiceConfig) {
    config.service(
        web::resource("/v1/estimate")
            .app_data(
                web::JsonConfig::default()
                    .limit(ESTIMATE_BODY_MAX)
                    .error_handler(crate::problem::json_error),
            )
            .route(web::post().to(estimate)),
    );
}
