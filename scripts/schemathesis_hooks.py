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

Without help, the positive-data check would count those documented 422s as valid requests
refused. So before each call, and only where the generated value already fits its schema:
a well-formed key is replaced by a fresh well-formed one, and a second id equal to the first is
replaced by a fresh UUID. Values that do not fit their schema, and missing ones, are left as
generated, so every negative case still runs. No check is disabled, no failure filtered.
"""

import re
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


@schemathesis.hook
def before_call(context, case, kwargs):
    _fresh_key(case.headers)
    if case.method.upper() == "POST" and case.path == "/v1/admin/transfers":
        _distinct_ids(case.body)
