"""Schemathesis hooks for scripts/api-conformance (loaded through SCHEMATHESIS_HOOKS).

The OpenAPI document states some rules in words that no JSON Schema can state, because they
relate two values rather than constrain one:

- A new request needs a new `Idempotency-Key`. The document gives the key's shape (1 to 255
  visible ASCII characters); reusing a key for a different request is answered 422 by design
  (documented). Hypothesis draws few distinct short strings, so generated keys collide across
  different bodies.
- In a raw transfer batch (`POST /v1/admin/transfers`), a movement's `credit_account_id` is not
  its `debit_account_id`, and a `post` or `void` names another transfer than itself as
  `pending_id` (422 otherwise, documented). Hypothesis likes to draw the same value twice.
- A price takes effect now or later (`effective_from` of the price and import operations; 422
  for a past instant, documented): past costs never change. The rule relates the value to the
  server's clock. Likewise a cost preview's `at` must fall where the model has a price (422
  otherwise, documented): the built-in models' prices start in the past, and a model added by
  the run (or imported) has no price before its first one takes effect.
- A price's long-context tiers start above different numbers of prompt tokens (422 otherwise).
- A listing's `min_fill` is at most its `quantity` (422 otherwise).
- A price alert's webhook URL parses as `http://host[:port]/path` and names a public host (422
  otherwise); e-mail addresses that the SMTP client cannot take are refused likewise, but the
  conformance server has no SMTP relay, so e-mail alerts answer 409 first.
- A webhook's URL (`POST /v1/orgs/{org_id}/webhooks`) likewise, and a report subscription's
  recipients must be addresses the mailer takes (plain ASCII `local@domain`, not just the
  documented shape) and its time zone an IANA name (422 otherwise).
- A usage batch's event ids are distinct and neither the nil nor the max UUID, an event
  happened by now, when its model has a price, and its metadata is at most 4,096 bytes of JSON
  (422 otherwise). A reservation and a settling call are fitted the same way.
- A budget's (and a forecast's) time zone is an IANA name, and a budget's thresholds are
  distinct percents of 1 to 1,000 in ascending order (422 otherwise).
- A preview's `cached_input_tokens` are part of the prompt, so at most its token count (422
  otherwise); a user (not an API key) names the org it previews for (422 otherwise).

Without help, the positive-data check would count those documented 422s as valid requests
refused. So before each call, and only where the generated value already fits its schema:
a well-formed key is replaced by a fresh well-formed one, and a second id equal to the first is
replaced by a fresh UUID; a well-formed instant in the past (or past 9999) becomes one in the
future, except that a new model's first price and an import take effect at once (the instant is
dropped, which means now), so that every model has a price from its creation on; a tier threshold equal to an earlier one moves to a free number; a cached-token count is
lowered to what the prompt surely has (1 token for non-empty text, 3 + 3 per message for chat);
a preview without `org_id` names the run's org (CREDEX_CONFORMANCE_ORG). Values that do not fit
their schema, and missing ones, are left as generated, so every negative case still runs. No
check is disabled, no failure filtered.
"""

import datetime
import json
import os
import random
import re
import time
import uuid

import schemathesis

HEADER = "idempotency-key"
VALID_KEY = re.compile(r"[!-~]{1,255}")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _fresh_key(headers):
    for name in list(headers or {}):
        value = headers[name]
        if name.lower() == HEADER and isinstance(value, str) and VALID_KEY.fullmatch(value):
            headers[name] = f"conformance-{uuid.uuid4()}"


def _same_id(transfer, first, second):
    a, b = transfer.get(first), transfer.get(second)
    return isinstance(a, str) and a == b and UUID.fullmatch(b) is not None


def _distinct_ids(body):
    transfers = body.get("transfers") if isinstance(body, dict) else None
    for transfer in transfers if isinstance(transfers, list) else []:
        if not isinstance(transfer, dict):
            continue
        if _same_id(transfer, "debit_account_id", "credit_account_id"):
            transfer["credit_account_id"] = str(uuid.uuid4())
        if _same_id(transfer, "id", "pending_id"):
            transfer["pending_id"] = str(uuid.uuid4())


DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
EPOCH = datetime.date(1970, 1, 1).toordinal()
LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z
PRICE_TIERS_MAX_THRESHOLD = 100_000_000


def _seconds(value, dates=True):
    """Seconds since the epoch (UTC) of an RFC 3339 date-time (or, with `dates`, a date); None
    if not one."""
    if not isinstance(value, str):
        return None
    match = DATE_TIME.fullmatch(value)
    if match:
        year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
        offset = match.group(7)
    else:
        match = DATE.fullmatch(value) if dates else None
        if not match:
            return None
        year, month, day = (int(part) for part in match.groups())
        hour = minute = second = 0
        offset = "Z"
    if hour > 23 or minute > 59 or second > 60:
        return None
    try:
        # Year 0 is a leap year of the proleptic calendar, as 2000 is; it is long past anyway.
        date = datetime.date(year or 2000, month, day)
    except ValueError:
        return None
    if offset in ("Z", "z"):
        shift = 0
    else:
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            return None
        shift = (hours * 60 + minutes) * 60 * (1 if offset[0] == "+" else -1)
    if second == 60 and (hour * 3_600 + minute * 60 - shift) % 86_400 != 86_340:
        return None  # a leap second only at 23:59:60 UTC
    if year == 0:
        return -(10**12)
    days = date.toordinal() - EPOCH
    return days * 86_400 + hour * 3_600 + minute * 60 + min(second, 59) - shift


def _future_instant():
    at = time.time() + random.randint(120, 3 * 365 * 86_400)
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_in_the_past(container, key, dates=True):
    """An instant under `key` that is well formed but past (or past 9999) becomes a future one."""
    if not isinstance(container, dict):
        return
    seconds = _seconds(container.get(key), dates)
    if seconds is not None and not (time.time() + 60 < seconds <= LAST_SECOND):
        container[key] = _future_instant()


def _at_once(container, key="effective_from"):
    """A well-formed instant under `key` is dropped: the price takes effect now."""
    if isinstance(container, dict) and _seconds(container.get(key)) is not None:
        del container[key]


def _whole(value):
    """A JSON Schema integer (`3`, or a float with no fraction such as `3.0`) as an int."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _distinct_thresholds(price):
    tiers = price.get("tiers") if isinstance(price, dict) else None
    if not isinstance(tiers, list):
        return
    thresholds = [_whole(tier.get("above_prompt_tokens")) if isinstance(tier, dict) else None for tier in tiers]
    if not all(t is not None and 1 <= t <= PRICE_TIERS_MAX_THRESHOLD for t in thresholds):
        return
    seen = set()
    for tier, threshold in zip(tiers, thresholds):
        if threshold in seen:
            while threshold in seen:
                threshold = random.randint(1, PRICE_TIERS_MAX_THRESHOLD)
            tier["above_prompt_tokens"] = threshold
        seen.add(threshold)


def _fit_preview(body):
    if not isinstance(body, dict):
        return
    if body.get("org_id") is None and os.environ.get("CREDEX_CONFORMANCE_ORG"):
        body["org_id"] = os.environ["CREDEX_CONFORMANCE_ORG"]
    _not_in_the_past(body, "at", dates=False)
    cached = _whole(body.get("cached_input_tokens"))
    if cached is None or cached < 0:
        return
    prompt, messages = body.get("prompt"), body.get("messages")
    if isinstance(prompt, str) and messages is None:
        surely = 1 if prompt else 0
    elif isinstance(messages, list) and "prompt" not in body:
        surely = 3 + 3 * len(messages)
    else:
        return
    body["cached_input_tokens"] = min(cached, surely)


PRICE_PATHS = (
    "/v1/admin/models/{model_id}/prices",
    "/v1/admin/orgs/{org_id}/models/{model_id}/prices",
)


def _public_webhook(body):
    """A webhook URL must parse as a plain http:// URL and name a public host (422 otherwise,
    documented); generated text rarely does, so a well-formed one is swapped for one that does."""
    notify = body.get("notify") if isinstance(body, dict) else None
    if isinstance(notify, dict) and notify.get("channel") == "webhook":
        url = notify.get("url")
        if isinstance(url, str) and re.fullmatch(r"http://[!-~]+", url) and len(url) <= 2048:
            notify["url"] = "http://hooks.example.com/credex"


def _public_webhook_url(body):
    """The same for a registered webhook's `url`."""
    url = body.get("url") if isinstance(body, dict) else None
    if isinstance(url, str) and re.fullmatch(r"http://[!-~]+", url) and len(url) <= 2048:
        body["url"] = "http://hooks.example.com/credex"


def _fit_report(body):
    """A report's recipients are addresses that can take mail and its time zone an IANA name
    (422 otherwise, documented): each well-formed address becomes a plain one, and a well-formed
    time zone becomes `Europe/Paris`."""
    if not isinstance(body, dict):
        return
    recipients = body.get("recipients")
    if isinstance(recipients, list) and 1 <= len(recipients) <= 10:
        for index, address in enumerate(recipients):
            if isinstance(address, str) and len(address) <= 254 and re.fullmatch(r"[!-?A-~]+@[!-?A-~]+", address):
                recipients[index] = f"ops{index}@example.com"
    zone = body.get("time_zone")
    if isinstance(zone, str) and 1 <= len(zone) <= 64:
        body["time_zone"] = "Europe/Paris"


def _min_fill_within(body):
    """A listing's minimum fill is at most its quantity (422 otherwise, documented)."""
    if not isinstance(body, dict):
        return
    quantity, min_fill = _whole(body.get("quantity")), _whole(body.get("min_fill"))
    if quantity is not None and min_fill is not None and quantity >= 1 and min_fill > quantity:
        body["min_fill"] = body["quantity"]


NIL_OR_MAX = {"00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"}


def _fit_usage(body):
    """A usage batch's event ids are distinct, neither nil nor max, an event happened by now,
    where its model has a price, and its metadata is at most 4,096 bytes of JSON (422
    otherwise, documented): a well-formed id that repeats or is nil/max becomes a fresh one, a
    well-formed instant is dropped (the event happened now), and larger metadata becomes
    `{}`."""
    events = body.get("events") if isinstance(body, dict) else None
    seen = set()
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict):
            continue
        event_id = event.get("id")
        if isinstance(event_id, str) and UUID.fullmatch(event_id):
            if event_id.lower() in seen or event_id.lower() in NIL_OR_MAX:
                event_id = str(uuid.uuid4())
                event["id"] = event_id
            seen.add(event_id.lower())
        if _seconds(event.get("at"), dates=False) is not None:
            del event["at"]
        metadata = event.get("metadata")
        if isinstance(metadata, dict) and len(json.dumps(metadata, separators=(",", ":")).encode()) > 4096:
            event["metadata"] = {}


def _fit_budget(body):
    """A budget's time zone is an IANA name and its thresholds are distinct percents of 1 to
    1,000 in ascending order (422 otherwise, documented): a well-formed time zone becomes
    `Europe/Paris`, and a list of whole numbers becomes those numbers, clamped, sorted, once
    each."""
    if not isinstance(body, dict):
        return
    zone = body.get("time_zone")
    if isinstance(zone, str) and 1 <= len(zone) <= 64:
        body["time_zone"] = "Europe/Paris"
    thresholds = body.get("thresholds")
    if isinstance(thresholds, list) and 1 <= len(thresholds) <= 10:
        whole = [_whole(t) for t in thresholds]
        if all(w is not None and w >= 0 for w in whole):
            body["thresholds"] = sorted({min(max(w, 1), 1000) for w in whole})


@schemathesis.hook
def before_call(context, case, kwargs):
    _fresh_key(case.headers)
    if case.method.upper() == "GET" and case.path == "/v1/orgs/{org_id}/usage/forecast":
        _fit_budget(case.query)
    if case.method.upper() == "PUT" and case.path == "/v1/orgs/{org_id}/reports/{frequency}":
        _fit_report(case.body)
    if case.method.upper() != "POST":
        return
    if case.path == "/v1/admin/transfers":
        _distinct_ids(case.body)
    elif case.path == "/v1/admin/models" and isinstance(case.body, dict):
        _at_once(case.body.get("price"))
        _distinct_thresholds(case.body.get("price"))
    elif case.path in PRICE_PATHS:
        _not_in_the_past(case.body, "effective_from")
        _distinct_thresholds(case.body)
    elif case.path == "/v1/admin/prices/import":
        _at_once(case.query)
    elif case.path == "/v1/estimate":
        _fit_preview(case.body)
    elif case.path == "/v1/orgs/{org_id}/listings":
        _min_fill_within(case.body)
    elif case.path == "/v1/orgs/{org_id}/price-alerts":
        _public_webhook(case.body)
    elif case.path == "/v1/orgs/{org_id}/usage":
        _fit_usage(case.body)
    elif case.path == "/v1/orgs/{org_id}/webhooks":
        _public_webhook_url(case.body)
    elif case.path == "/v1/orgs/{org_id}/budgets":
        _fit_budget(case.body)
    elif case.path in (
        "/v1/orgs/{org_id}/reservations",
        "/v1/orgs/{org_id}/reservations/{reservation_id}/settle",
    ) and isinstance(case.body, dict):
        _fit_usage({"events": [case.body]})
