"""Drives a live Credex with the client openapi-python-client generated from openapi/openapi.json.

Run by scripts/api-conformance, which generates the client (package `credex_client`), installs
it, starts `credex serve`, makes an org with an owner and credits the org's wallet, and passes:

    CREDEX_URL        the server, such as http://127.0.0.1:18080
    CREDEX_ORG_ID     the org
    CREDEX_EMAIL      an owner of the org
    CREDEX_PASSWORD   the owner's password
    CREDEX_WALLET_MICRO_CR  what the org's CR wallet holds

Signs in, reads the org's balances, makes an API key with the `read` scope, reads the org
with that key, and reads the org's current statement (JSON and PDF) with it: every call through the generated code, every answer parsed into its generated
model. Exits non-zero, saying why, when anything is not as expected.
"""

from __future__ import annotations

import os
import sys
import time
from http import HTTPStatus
from uuid import UUID

from credex_client import AuthenticatedClient, Client
from credex_client.api.auth import login
from credex_client.api.ledger import balances
from credex_client.api.orgs import create_api_key, get_org
from credex_client.api.usage import get_statement, get_statement_pdf, list_statements
from credex_client.models import (
    AccountBalanceView,
    CreatedApiKey,
    LoginRequest,
    NewApiKeyRequest,
    OrgAccountKind,
    OrgView,
    ScopeName,
    StatementListView,
    StatementView,
    TokenPair,
)


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"generated client: FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"generated client: ok: {what}")


def sign_in(client: Client, email: str, password: str) -> TokenPair:
    # The fuzzing before this may have spent the sign-in budget of 127.0.0.1: wait as told.
    deadline = time.monotonic() + 90
    while True:
        answer = login.sync_detailed(client=client, body=LoginRequest(email=email, password=password))
        if answer.status_code != HTTPStatus.TOO_MANY_REQUESTS or time.monotonic() > deadline:
            break
        wait = int(answer.headers.get("retry-after", "1"))
        print(f"generated client: sign-in limited; retrying in {wait} s")
        time.sleep(min(max(wait, 1), 30))
    check(answer.status_code == HTTPStatus.OK, f"sign in as {email} (HTTP {answer.status_code})")
    check(isinstance(answer.parsed, TokenPair), "the sign-in answer parses as TokenPair")
    return answer.parsed


def main() -> None:
    url = os.environ["CREDEX_URL"]
    org_id = UUID(os.environ["CREDEX_ORG_ID"])
    email = os.environ["CREDEX_EMAIL"]
    password = os.environ["CREDEX_PASSWORD"]
    wallet_micro_cr = int(os.environ["CREDEX_WALLET_MICRO_CR"])

    anonymous = Client(base_url=url, raise_on_unexpected_status=True)
    tokens = sign_in(anonymous, email, password)
    check(tokens.token_type == "Bearer" and tokens.expires_in > 0, "a Bearer access token")
    owner = AuthenticatedClient(base_url=url, token=tokens.access_token, raise_on_unexpected_status=True)

    answer = balances.sync_detailed(org_id, client=owner)
    check(answer.status_code == HTTPStatus.OK, f"GET /v1/orgs/{org_id}/balances (HTTP {answer.status_code})")
    accounts = answer.parsed
    check(
        isinstance(accounts, list) and all(isinstance(a, AccountBalanceView) for a in accounts),
        "the balances parse as a list of AccountBalanceView",
    )
    wallets = [a for a in accounts if a.kind == OrgAccountKind.WALLET and a.asset == "CR"]
    check(len(wallets) == 1, "the org has one CR wallet")
    check(
        wallets[0].balance.balance == wallet_micro_cr,
        f"the wallet holds {wallet_micro_cr} µCR (it holds {wallets[0].balance.balance})",
    )

    request = NewApiKeyRequest(name="generated client check", scopes=[ScopeName.READ])
    answer = create_api_key.sync_detailed(org_id, client=owner, body=request)
    check(answer.status_code == HTTPStatus.CREATED, f"POST /v1/orgs/{org_id}/api-keys (HTTP {answer.status_code})")
    created = answer.parsed
    check(isinstance(created, CreatedApiKey), "the new key parses as CreatedApiKey")
    check(created.key.startswith("cdx_"), "the key is shown once, as cdx_…")
    check(created.api_key.org_id == org_id, "the key belongs to the org")
    check(created.api_key.scopes == [ScopeName.READ], "the key has the read scope only")
    location = answer.headers.get("location", "")
    check(location == f"/v1/orgs/{org_id}/api-keys/{created.api_key.id}", f"Location names the key ({location})")

    program = AuthenticatedClient(base_url=url, token=created.key, raise_on_unexpected_status=True)
    answer = get_org.sync_detailed(org_id, client=program)
    check(answer.status_code == HTTPStatus.OK, f"GET /v1/orgs/{org_id} with the API key (HTTP {answer.status_code})")
    org = answer.parsed
    check(isinstance(org, OrgView), "the org parses as OrgView")
    check(org.id == org_id, "the API key reads its own org")

    answer = list_statements.sync_detailed(org_id, client=program)
    check(answer.status_code == HTTPStatus.OK, f"GET /v1/orgs/{org_id}/statements (HTTP {answer.status_code})")
    listed = answer.parsed
    check(isinstance(listed, StatementListView) and listed.statements, "the statements parse as StatementListView")
    cycle = listed.statements[0].cycle
    answer = get_statement.sync_detailed(org_id, cycle, client=program)
    check(answer.status_code == HTTPStatus.OK, f"GET the statement of {cycle} (HTTP {answer.status_code})")
    statement = answer.parsed
    check(isinstance(statement, StatementView), "the statement parses as StatementView")
    wallets = [a for a in statement.accounts if a.asset == "CR"]
    check(
        len(wallets) == 1 and wallets[0].closing == wallet_micro_cr,
        f"the statement's wallet closes at {wallet_micro_cr} µCR",
    )
    answer = get_statement_pdf.sync_detailed(org_id, cycle, client=program)
    check(
        answer.status_code == HTTPStatus.OK and answer.content.startswith(b"%PDF-"),
        f"GET the statement of {cycle} as a PDF (HTTP {answer.status_code})",
    )

    print("generated client: all checks passed")


if __name__ == "__main__":
    main()
