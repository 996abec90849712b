#!/usr/bin/env python3
"""Prints what Beancount itself makes of a ledger file, as one JSON object on stdout.

    python3 scripts/bean_balances.py FILE.beancount

The file is loaded with `beancount.loader.load_file` (parsing, booking, validation and the
balance assertions, as `bean-check` does) and realized with `beancount.core.realization`:

    {
      "balances": {"<account>": {"<currency>": "<units, plain decimal>", ...}, ...},
      "transactions": [{"date": "YYYY-MM-DD", "payee": ..., "narration": ...,
                        "meta": {"transfer": ..., "kind": ...}}, ...],
      "errors": ["<message>", ...]
    }

Balances list only non-zero positions. Used by Credex's integration tests to compare the
balances Beancount computes from an export with the ledger's own.
"""

import json
import sys

from beancount import loader
from beancount.core import data, realization


def main(argv):
    if len(argv) != 2:
        print(f"usage: {argv[0]} FILE.beancount", file=sys.stderr)
        return 2
    entries, errors, _options = loader.load_file(argv[1])

    balances = {}
    root = realization.realize(entries)
    for real_account in realization.iter_children(root):
        for position in real_account.balance:
            units = position.units
            if units.number == 0:
                continue
            per_currency = balances.setdefault(real_account.account, {})
            per_currency[units.currency] = format(units.number, "f")

    transactions = []
    for entry in entries:
        if isinstance(entry, data.Transaction):
            meta = {
                key: value
                for key, value in (entry.meta or {}).items()
                if key in ("transfer", "kind")
            }
            transactions.append(
                {
                    "date": entry.date.isoformat(),
                    "payee": entry.payee,
                    "narration": entry.narration,
                    "meta": meta,
                }
            )

    json.dump(
        {
            "balances": balances,
            "transactions": transactions,
            "errors": [str(error.message) for error in errors],
        },
        sys.stdout,
        sort_keys=True,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
