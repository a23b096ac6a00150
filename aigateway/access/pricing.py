"""Prices per model, and the cost of a request, in whole units of one currency.

Money is never a float. Prices (and budgets) are entered and stored in micro-units (1.5 USD
is 1500000); a cost is computed with integers only and kept in nano-units (10^-9), rounded
up to the nano-unit once per request, so that a request that used anything priced never
costs 0 (1,000 embeddings of 0.4 micro-units each cost 400 micro-units, not 0). Sums of
costs are rounded half up to the micro-unit once, when shown (`micro`). A request's cost
saturates at MAX_COST_NANO, and every sum at MAX_SUM_NANO: below the 2^63 of a database
integer, so no price an admin may set can make a sum overflow.

A price is found by model pattern as allow-lists are (`llama3*`, `qwen2.5:0.5b`, `llama3`
and `llama3:latest` alike): an exact name wins, then the pattern with the most characters
before its first wildcard, then the longer pattern; `*` is the fallback. A model no price
matches is free.
"""

from __future__ import annotations

from ..records import Price
from .allowlist import matches

_WILDCARDS = "*?["


def specificity(pattern: str) -> tuple[int, int, int]:
    """How strongly a pattern claims a model: exact names first, then the longest
    literal start, then the longest pattern."""
    literal = len(pattern)
    for n, char in enumerate(pattern):
        if char in _WILDCARDS:
            literal = n
            break
    exact = literal == len(pattern)
    return (1 if exact else 0, literal, len(pattern))


class PriceList:
    """The prices in force, most specific first, with each model's price remembered (a
    request looks its model up once, not its pattern list)."""

    CACHE_SIZE = 4096

    def __init__(self, prices: list[Price] | None = None) -> None:
        self._prices = sorted(prices or [], key=lambda p: specificity(p.pattern), reverse=True)
        self._by_model: dict[str, Price | None] = {}

    def __len__(self) -> int:
        return len(self._prices)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._prices)

    def for_model(self, model: str | None) -> Price | None:
        """The price of `model`; None (free) for a model no price matches, and for a
        request that names no model (listing models, a blob upload)."""
        if model is None:
            return None
        try:
            return self._by_model[model]
        except KeyError:
            pass
        found = next((p for p in self._prices if matches(model, (p.pattern,))), None)
        if len(self._by_model) >= self.CACHE_SIZE:  # model names come from clients
            self._by_model.clear()
        self._by_model[model] = found
        return found
