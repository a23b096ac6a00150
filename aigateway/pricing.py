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

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .modelaccess import matches

MICRO = 1_000_000
NANO_PER_MICRO = 1000
MAX_PRICE = 10**15  # micro-units: a thousand million currency units, per anything
# A request never costs more than the largest price (10^9 currency units), in nano-units.
MAX_COST_NANO = MAX_PRICE * NANO_PER_MICRO
# Sums of costs (a budget's spend, an hour's rollup, a report's total) stop here: 4 * 10^9
# currency units, under 2^63, and exactly representable as a double (SQLite, JavaScript).
MAX_SUM_NANO = 4 * 10**18
PRICE_FIELDS = ("per_request", "per_million_input", "per_million_output", "per_second")
_WILDCARDS = "*?["


class PriceError(ValueError):
    """A price that cannot be stored; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Price:
    """What a model costs, in micro-units: per request, per million input (prompt) and
    output (completion) tokens, and per second of model time (Ollama's total_duration)."""

    pattern: str
    per_request: int = 0
    per_million_input: int = 0
    per_million_output: int = 0
    per_second: int = 0

    @property
    def per_request_nano(self) -> int:
        return self.per_request * NANO_PER_MICRO

    def cost(self, prompt: int, completion: int, model_ns: int) -> int:
        """The cost of one request in nano-units: rounded up to the nano-unit (anything
        priced that was used costs at least 1), at most MAX_COST_NANO."""
        # In units of 10^-6 nano (10^-9 micro): tokens x (micro per 10^6 tokens) x 10^3,
        # and nanoseconds x (micro per 10^9 ns).
        exact = (
            prompt * self.per_million_input * 1000
            + completion * self.per_million_output * 1000
            + model_ns * self.per_second
        )
        nano = self.per_request * NANO_PER_MICRO + -(-exact // 1_000_000)
        return nano if nano < MAX_COST_NANO else MAX_COST_NANO

    def reserve(self, prompt_estimate: int, output_tokens: int, seconds: int) -> int:
        """What a request reserves against budgets while it runs, in nano-units: its
        per-request price, its prompt estimate and output reservation (the token quota's)
        at the token prices, and `seconds` (BUDGET_TIME_RESERVE) at the per-second price."""
        return self.cost(prompt_estimate, output_tokens, seconds * 1_000_000_000)


def micro(nano: int) -> int:
    """Nano-units (a cost, or a sum of them) as micro-units, rounded half up: once, where
    an amount is shown."""
    return (nano + 500) // NANO_PER_MICRO


def saturated(total: object) -> int:
    """A sum a database gave (an int, a float or Decimal past 2^63, None for no rows) as
    an int no greater than MAX_SUM_NANO."""
    value = int(total or 0)  # type: ignore[call-overload]
    return value if value < MAX_SUM_NANO else MAX_SUM_NANO


def add_saturated(total: int, more: int) -> int:
    """`total + more`, stopping at MAX_SUM_NANO."""
    total += more
    return total if total < MAX_SUM_NANO else MAX_SUM_NANO


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


def parse_money(text: str, what: str) -> int:
    """`0.15`, `2`, `0.000001` in currency units -> micro-units; at most six decimals."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise PriceError(f"{what} must be an amount such as 0.15, not {text!r}") from None
    if not value.is_finite() or value < 0:
        raise PriceError(f"{what} must be 0 or more, not {text!r}")
    micro = value * MICRO
    if micro != micro.to_integral_value():
        raise PriceError(f"{what} has more than six decimals: {text!r}")
    if micro > MAX_PRICE:
        raise PriceError(f"{what} is too large: {text!r}")
    return int(micro)


def money(amount: int | None) -> str:
    """Micro-units as an amount with six decimals (`0.001234`)."""
    if amount is None:
        return "-"
    sign = "-" if amount < 0 else ""
    units, rest = divmod(abs(amount), MICRO)
    return f"{sign}{units}.{rest:06d}"


def check_price(price: Price) -> Price:
    pattern = price.pattern.strip()
    if not pattern or len(pattern) > 200 or not pattern.isprintable() or " " in pattern:
        raise PriceError(f"not a model name or pattern: {price.pattern!r}")
    for field in PRICE_FIELDS:
        value = getattr(price, field)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_PRICE:
            raise PriceError(f"{field} must be a whole number of micro-units from 0 to {MAX_PRICE}")
    return price
