#!/usr/bin/env python3
"""Regenerates pricing/data/catalog.json, Credex's built-in model catalog, from LiteLLM's price map.

Credex ships the catalog as data; admins change prices through the API afterwards (dated
changes, never rewriting the past). This script is how the shipped snapshot was made, so that
every price in it can be traced to its source. The map it was made from is committed as
pricing/tests/fixtures/litellm_model_prices.json (see the README beside it):

    python3 pricing/data/make_catalog.py pricing/tests/fixtures/litellm_model_prices.json \
        --litellm-version 1.110.2 --as-of 2026-11-26 > pricing/data/catalog.json

A test (pricing/tests/litellm_reference.rs) checks that every price here equals what
credex_pricing::litellm imports from the same map, so the two rule sets cannot drift apart.

Prices are read from the JSON text as decimals (never through a binary float), converted from
USD per token to USD per 1M tokens, and rounded to 10 decimal places, which removes the float
artifacts of the map (2.0000000000000002e-07 per token becomes 0.2 per 1M).

Rules applied (the Rust side documents and tests the same ones):
- A missing cache-read or cache-write price is the input price (the provider bills those tokens
  as ordinary input). LiteLLM applies the same default, except for Fireworks AI, whose missing
  cache-read price is half the input price (LiteLLM's FIREWORKS_AI_DEFAULT_CACHE_READ_RATE_RATIO).
- `*_above_<N>k_tokens` keys become long-context tiers: above N*1000 prompt tokens (input plus
  cache reads plus cache writes) the tier's prices apply to every token of the call. xAI bills
  the tier from exactly N*1000 tokens on, so its tiers start above N*1000 - 1.
- Only standard prices are kept: service-tier variants (`_priority`, `_flex`, `_batches`, …),
  1-hour cache writes, and `off_peak_pricing` discounts (DeepSeek's V4 models) are not modelled;
  the standard (peak) price applies at all hours.
- The model class follows the blended price (3 parts input, 1 part output, per 1M tokens):
  `std` up to 2 USD, `pro` up to 15 USD, `max` above.
- `effective_from` is the date of the model's dated snapshot when the map names one, else the
  first day of the month the snapshot was taken. A few real price changes are kept as history.
"""

import argparse
import json
import re
import sys
from decimal import Decimal, ROUND_HALF_EVEN

# (id, LiteLLM key, provider, aliases). Aliases that are dated snapshots also date the price.
SELECTION = [
    # OpenAI
    ("gpt-6-astra", "gpt-6-astra", "openai", []),
    ("gpt-6-sol", "gpt-6-sol", "openai", []),
    ("gpt-6-luna", "gpt-6-luna", "openai", []),
    ("gpt-5.5", "gpt-5.5", "openai", ["gpt-5.5-2026-04-23"]),
    ("gpt-5.5-pro", "gpt-5.5-pro", "openai", ["gpt-5.5-pro-2026-04-23"]),
    ("gpt-5.4", "gpt-5.4", "openai", ["gpt-5.4-2026-03-05"]),
    ("gpt-5.4-pro", "gpt-5.4-pro", "openai", ["gpt-5.4-pro-2026-03-05"]),
    ("gpt-5.4-mini", "gpt-5.4-mini", "openai", ["gpt-5.4-mini-2026-03-17"]),
    ("gpt-5.4-nano", "gpt-5.4-nano", "openai", ["gpt-5.4-nano-2026-03-17"]),
    ("gpt-5.3-codex", "gpt-5.3-codex", "openai", []),
    ("gpt-5.2", "gpt-5.2", "openai", ["gpt-5.2-2025-12-11"]),
    ("gpt-5.2-pro", "gpt-5.2-pro", "openai", ["gpt-5.2-pro-2025-12-11"]),
    ("gpt-5.1", "gpt-5.1", "openai", ["gpt-5.1-2025-11-13"]),
    ("gpt-5", "gpt-5", "openai", ["gpt-5-2025-08-07"]),
    ("gpt-5-mini", "gpt-5-mini", "openai", ["gpt-5-mini-2025-08-07"]),
    ("gpt-5-nano", "gpt-5-nano", "openai", ["gpt-5-nano-2025-08-07"]),
    ("gpt-4.1", "gpt-4.1", "openai", ["gpt-4.1-2025-04-14"]),
    ("gpt-4.1-mini", "gpt-4.1-mini", "openai", ["gpt-4.1-mini-2025-04-14"]),
    ("gpt-4o", "gpt-4o", "openai", []),
    ("gpt-4o-mini", "gpt-4o-mini", "openai", ["gpt-4o-mini-2024-07-18"]),
    ("o3", "o3", "openai", ["o3-2025-04-16"]),
    ("o3-pro", "o3-pro", "openai", ["o3-pro-2025-06-10"]),
    # Anthropic
    ("claude-mythos-5", "claude-mythos-5", "anthropic", []),
    ("claude-fable-5", "claude-fable-5", "anthropic", []),
    ("claude-opus-5-5", "claude-opus-5-5", "anthropic", []),
    ("claude-opus-5", "claude-opus-5", "anthropic", []),
    ("claude-opus-4-8", "claude-opus-4-8", "anthropic", []),
    ("claude-opus-4-7", "claude-opus-4-7", "anthropic", ["claude-opus-4-7-20260416"]),
    ("claude-opus-4-6", "claude-opus-4-6", "anthropic", ["claude-opus-4-6-20260205"]),
    ("claude-opus-4-5", "claude-opus-4-5", "anthropic", ["claude-opus-4-5-20251101"]),
    ("claude-sonnet-5-5", "claude-sonnet-5-5", "anthropic", []),
    ("claude-sonnet-5", "claude-sonnet-5", "anthropic", []),
    ("claude-sonnet-4-6", "claude-sonnet-4-6", "anthropic", []),
    ("claude-sonnet-4-5", "claude-sonnet-4-5", "anthropic", ["claude-sonnet-4-5-20250929"]),
    ("claude-haiku-5-5", "claude-haiku-5-5", "anthropic", []),
    ("claude-haiku-4-5", "claude-haiku-4-5", "anthropic", ["claude-haiku-4-5-20251001"]),
    # Google
    ("gemini-3.1-pro-preview", "gemini/gemini-3.1-pro-preview", "google", ["gemini-pro-latest"]),
    ("gemini-3.5-flash", "gemini/gemini-3.5-flash", "google", []),
    ("gemini-3.5-flash-lite", "gemini/gemini-3.5-flash-lite", "google", []),
    ("gemini-3.1-flash-lite", "gemini/gemini-3.1-flash-lite", "google", []),
    ("gemini-3-flash-preview", "gemini/gemini-3-flash-preview", "google", []),
    ("gemini-2.5-pro", "gemini/gemini-2.5-pro", "google", []),
    ("gemini-2.5-flash", "gemini/gemini-2.5-flash", "google", []),
    ("gemini-2.5-flash-lite", "gemini/gemini-2.5-flash-lite", "google", []),
    # Mistral
    ("mistral-large-4", "mistral/mistral-large-4", "mistral", ["mistral-large-4-0"]),
    ("mistral-large-3", "mistral/mistral-large-3", "mistral", ["mistral-large-2512"]),
    ("mistral-medium-3.5", "mistral/mistral-medium-3.5", "mistral", ["mistral-medium-3-5"]),
    ("mistral-small-latest", "mistral/mistral-small-latest", "mistral", []),
    ("ministral-14b-latest", "mistral/ministral-14b-latest", "mistral", ["ministral-14b-2512"]),
    ("ministral-8b-latest", "mistral/ministral-8b-latest", "mistral", ["ministral-8b-2512"]),
    ("ministral-3b-latest", "mistral/ministral-3b-latest", "mistral", ["ministral-3b-2512"]),
    ("codestral-latest", "mistral/codestral-latest", "mistral", ["codestral-2508"]),
    ("devstral-latest", "mistral/devstral-latest", "mistral", []),
    ("devstral-small-latest", "mistral/devstral-small-latest", "mistral", []),
    ("magistral-medium-latest", "mistral/magistral-medium-latest", "mistral", []),
    # DeepSeek
    ("deepseek-v4-pro", "deepseek/deepseek-v4-pro", "deepseek", []),
    ("deepseek-v4-flash", "deepseek/deepseek-v4-flash", "deepseek", []),
    ("deepseek-v3.2", "deepseek/deepseek-v3.2", "deepseek", []),
    # xAI
    ("grok-4.7", "xai/grok-4.7", "xai", []),
    ("grok-4.5", "xai/grok-4.5", "xai", []),
    ("grok-4.3", "xai/grok-4.3", "xai", []),
    ("grok-4.20", "xai/grok-4.20", "xai", ["grok-4.20-0309"]),
    ("grok-build-0.1", "xai/grok-build-0.1", "xai", []),
    # Cohere
    ("command-a-03-2025", "command-a-03-2025", "cohere", []),
    ("command-r-plus-08-2024", "command-r-plus-08-2024", "cohere", []),
    ("command-r-08-2024", "command-r-08-2024", "cohere", []),
    ("command-r7b-12-2024", "command-r7b-12-2024", "cohere", []),
    # Meta's Llama models on common hosts (the host bills, so the host is the provider)
    ("deepinfra/meta-llama/llama-4-maverick-17b-128e-instruct-fp8",
     "deepinfra/meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8", "deepinfra", []),
    ("deepinfra/meta-llama/llama-4-scout-17b-16e-instruct",
     "deepinfra/meta-llama/Llama-4-Scout-17B-16E-Instruct", "deepinfra", []),
    ("deepinfra/meta-llama/llama-3.3-70b-instruct-turbo",
     "deepinfra/meta-llama/Llama-3.3-70B-Instruct-Turbo", "deepinfra", []),
    ("deepinfra/meta-llama/meta-llama-3.1-8b-instruct-turbo",
     "deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo", "deepinfra", []),
    ("bedrock/meta.llama4-maverick-17b-instruct-v1:0",
     "meta.llama4-maverick-17b-instruct-v1:0", "bedrock", []),
    ("vertex_ai/meta/llama-4-maverick-17b-128e-instruct-maas",
     "vertex_ai/meta/llama-4-maverick-17b-128e-instruct-maas", "vertex_ai", []),
    ("fireworks_ai/llama4-maverick-instruct-basic",
     "fireworks_ai/accounts/fireworks/models/llama4-maverick-instruct-basic", "fireworks_ai", []),
    # OpenAI's open-weight gpt-oss on common hosts (harmony tokenizer)
    ("groq/openai/gpt-oss-120b", "groq/openai/gpt-oss-120b", "groq", []),
    ("groq/openai/gpt-oss-20b", "groq/openai/gpt-oss-20b", "groq", []),
    ("together_ai/openai/gpt-oss-120b", "together_ai/openai/gpt-oss-120b", "together_ai", []),
    ("fireworks_ai/gpt-oss-20b", "fireworks_ai/gpt-oss-20b", "fireworks_ai", []),
]

# Real price changes kept as history before the map's current price (USD per 1M tokens).
HISTORY = {
    # GPT-4o launched at 5/15; the `gpt-4o` alias moved to the cheaper 2024-08-06 snapshot on
    # 2024-10-02.
    "gpt-4o": [("2024-05-13", {"input": "5", "cached_input": "5", "cache_write": "5", "output": "15"})],
    # o3 launched at 10/40 and was cut by 80% on 2025-06-10.
    "o3": [("2025-04-16", {"input": "10", "cached_input": "2.5", "cache_write": "10", "output": "40"})],
}
CURRENT_FROM = {"gpt-4o": "2024-10-02", "o3": "2025-06-10"}

KINDS = [
    ("input", "input_cost_per_token"),
    ("cached_input", "cache_read_input_token_cost"),
    ("cache_write", "cache_creation_input_token_cost"),
    ("output", "output_cost_per_token"),
]
INCLUSIVE_THRESHOLD_PROVIDERS = {"xai"}
HALF_PRICE_CACHE_READ_PROVIDERS = {"fireworks_ai"}
TIER_KEY = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost"
    r"|cache_creation_input_token_cost)_above_(\d+)(k?)_tokens$"
)
DATED = re.compile(r"-(\d{4})-?(\d{2})-?(\d{2})$")


def per_million(value):
    if not isinstance(value, (Decimal, int)) or isinstance(value, bool):
        raise SystemExit(f"not a number: {value!r}")
    d = (Decimal(value) * 1_000_000).quantize(Decimal("1e-10"), rounding=ROUND_HALF_EVEN)
    text = format(d.normalize(), "f")
    return text


def rates(entry, suffix=""):
    out = {}
    for kind, key in KINDS:
        if key + suffix in entry:
            out[kind] = per_million(entry[key + suffix])
    return out


def blended(r):
    return (3 * Decimal(r["input"]) + Decimal(r["output"])) / 4


def classify(r):
    b = blended(r)
    if b <= 2:
        return "std"
    if b <= 15:
        return "pro"
    return "max"


def prices_of(entry, provider):
    base = rates(entry)
    if "input" not in base or "output" not in base:
        raise SystemExit("missing input or output price")
    if provider in HALF_PRICE_CACHE_READ_PROVIDERS and "cached_input" not in base:
        base["cached_input"] = format((Decimal(base["input"]) / 2).normalize(), "f")
    base.setdefault("cached_input", base["input"])
    base.setdefault("cache_write", base["input"])
    base = {k: base[k] for k, _ in KINDS}
    labels = {}
    for k in entry:
        if m := TIER_KEY.match(k):
            labels[int(m.group(2)) * (1000 if m.group(3) else 1)] = m.group(2) + m.group(3)
    tiers = []
    previous = dict(base)
    explicit_cache = {k: k in rates(entry) for k in ("cached_input", "cache_write")}
    if provider in HALF_PRICE_CACHE_READ_PROVIDERS:
        explicit_cache["cached_input"] = True
    for n, label in sorted(labels.items()):
        tier_rates = rates(entry, f"_above_{label}_tokens")
        resolved = {}
        for kind in ("input", "output"):
            resolved[kind] = tier_rates.get(kind, previous[kind])
        for kind in ("cached_input", "cache_write"):
            if kind in tier_rates:
                resolved[kind] = tier_rates[kind]
                explicit_cache[kind] = True  # a named cache price carries to the tiers above
            elif explicit_cache[kind]:
                resolved[kind] = previous[kind]
            else:
                resolved[kind] = resolved["input"]
        above = n - 1 if provider in INCLUSIVE_THRESHOLD_PROVIDERS else n
        tiers.append({"above_prompt_tokens": above, **{k: resolved[k] for k, _ in KINDS}})
        previous = resolved
    return base, tiers


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("litellm_map")
    parser.add_argument("--litellm-version", required=True)
    parser.add_argument("--as-of", required=True, help="the date the prices were taken, YYYY-MM-DD")
    args = parser.parse_args()
    with open(args.litellm_map) as f:
        source = json.load(f, parse_float=Decimal)
    month_start = args.as_of[:8] + "01"
    models = []
    for model_id, key, provider, aliases in SELECTION:
        entry = source[key]
        deprecated = entry.get("deprecation_date")
        if deprecated and deprecated < args.as_of:
            raise SystemExit(f"{key} was retired on {deprecated}")
        base, tiers = prices_of(entry, entry["litellm_provider"])
        dated = [m for a in aliases if (m := DATED.search(a))]
        current_from = CURRENT_FROM.get(model_id) or (
            "-".join(dated[0].groups()) if dated else month_start
        )
        schedule = []
        for date, old in HISTORY.get(model_id, []):
            schedule.append({"effective_from": date, **old, "tiers": []})
        schedule.append({"effective_from": current_from, **base, "tiers": tiers})
        context = entry.get("max_input_tokens") or entry.get("max_tokens")
        models.append({
            "id": model_id,
            "provider": provider,
            "aliases": aliases,
            "class": classify(base),
            "context_window_tokens": int(context),
            "litellm_key": key,
            "prices": schedule,
        })
    catalog = {
        "about": (
            "Credex's built-in model catalog. Prices are list prices in USD per 1M tokens, "
            f"taken on {args.as_of} from LiteLLM's model_prices_and_context_window.json "
            f"(litellm {args.litellm_version} on PyPI) by pricing/data/make_catalog.py. "
            "Admins change prices through the API, from a present or future date; past prices "
            "never change."
        ),
        "prices_as_of": args.as_of,
        "source": f"litellm {args.litellm_version} model_prices_and_context_window.json",
        "class_rule": (
            "blended = (3 x input + output) / 4 per 1M tokens; std if blended <= 2 USD, "
            "pro if <= 15 USD, max above"
        ),
        "models": models,
    }
    json.dump(catalog, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
