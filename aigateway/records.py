"""The plain records every layer passes around, and the checks that make them: keys,
users, limits, budgets, prices and money, usage records, models.

This module imports nothing from the package, so that any layer may use the records
without pulling in the database or the server (the CLIs, the in-memory limiter, the
tests). A check raises the error named beside it, with one line a person can act on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from typing import Literal, NamedTuple

DAY = 86400  # seconds; days, quotas and budget periods begin at 00:00 UTC


# --- What a record's check, or the database, refuses ----------------------------------


class StoreError(Exception):
    """A database problem worth one clear line to a person (never holds a key)."""


class DuplicateKeyError(StoreError):
    pass


class KeyNotFoundError(StoreError):
    pass


class AmbiguousKeyError(StoreError):
    """What names a key (its display prefix) names several."""


class InvalidInputError(StoreError):
    pass


class NotPermittedError(StoreError):
    """The caller may not do this to this key (self-service: a key not its own)."""


class CapReachedError(StoreError):
    """A key already has as many active keys of its own making as it may."""


# --- Money: micro-units as entered and shown, nano-units as costs are counted -----------

MICRO = 1_000_000
NANO_PER_MICRO = 1000
MAX_PRICE = 10**15  # micro-units: a thousand million currency units, per anything
# A request never costs more than the largest price (10^9 currency units), in nano-units.
MAX_COST_NANO = MAX_PRICE * NANO_PER_MICRO
# Sums of costs (a budget's spend, an hour's rollup, a report's total) stop here: 4 * 10^9
# currency units, under 2^63, and exactly representable as a double (SQLite, JavaScript).
MAX_SUM_NANO = 4 * 10**18
PRICE_FIELDS = ("per_request", "per_million_input", "per_million_output", "per_second")


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


# --- Budgets --------------------------------------------------------------------------

PERIODS = ("total", "daily", "weekly", "monthly")


class BudgetError(ValueError):
    """A budget that cannot be stored; the message says why."""


@dataclass(frozen=True, slots=True)
class Budget:
    amount: int  # micro-units of CURRENCY
    period: str = "monthly"
    alert: int | None = None  # percent of the amount; logged once per period when reached

    @property
    def nano(self) -> int:
        """The amount in nano-units, as costs and spend are counted."""
        return self.amount * NANO_PER_MICRO


def check_budget(amount: object, period: object, alert: object = None) -> Budget:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= 10**15:
        raise BudgetError("a budget must be a whole number of micro-units from 0 to 10^15")
    if period not in PERIODS:
        raise BudgetError(f"a budget's period must be one of {', '.join(PERIODS)}, not {period!r}")
    if alert is not None and (
        isinstance(alert, bool) or not isinstance(alert, int) or not 1 <= alert <= 100
    ):
        raise BudgetError("a budget's alert must be a whole percentage from 1 to 100")
    return Budget(amount, str(period), alert)


class BudgetLine(NamedTuple):
    """One budget a key's requests count against: the key's own, or its user's."""

    owner: str  # "key:12" or "user:3": the spend's name in memory and in the database
    label: str  # what messages call it: user 'alice', key 'alice/laptop'
    budget: Budget


def budget_lines(
    key_id: int,
    user: str,
    key_name: str,
    user_id: int | None,
    key_budget: Budget | None,
    user_budget: Budget | None,
) -> tuple[BudgetLine, ...]:
    lines = []
    if key_budget is not None:
        lines.append(BudgetLine(f"key:{key_id}", f"key '{user}/{key_name}'", key_budget))
    if user_budget is not None and user_id is not None:
        lines.append(BudgetLine(f"user:{user_id}", f"user '{user}'", user_budget))
    return tuple(lines)


# --- Keys and users -------------------------------------------------------------------

Role = Literal["admin", "user"]
ROLES: tuple[Role, ...] = ("admin", "user")
LIMIT_FIELDS = ("rpm", "rph", "tokens_per_day", "max_concurrent")

# Priority classes where the gateway queues (an upstream at its max_concurrent), stored
# as small ints, higher served first. Three because three answers cover what people ask
# for: "someone is waiting for this" (high), "as usual" (normal) and "batch work, when
# there is room" (low); and the queue's hand-over looks at each class, so few stay cheap.
PRIORITIES: dict[str, int] = {"low": 0, "normal": 1, "high": 2}
PRIORITY_NAMES: tuple[str, ...] = ("low", "normal", "high")  # by stored int
NORMAL_PRIORITY = PRIORITIES["normal"]


def check_priority(value: object) -> int | None:
    """A priority class given by name ("high", "normal", "low"), as its stored int;
    None or "" for none of its own (a key then takes its user's; a user is normal)."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value in PRIORITIES:
        return PRIORITIES[value]
    raise InvalidInputError(f"priority must be one of high, normal, low, not {value!r}")


def priority_name(value: int | None) -> str | None:
    """A stored priority as its name; None for none (or a value no release wrote)."""
    if isinstance(value, int) and 0 <= value < len(PRIORITY_NAMES):
        return PRIORITY_NAMES[value]
    return None


MAX_LIMIT = 10**12
MAX_MODEL_PATTERNS = 100


MAX_NAME_CHARS = 64
MAX_EXPIRES_AT = 253402300800.0  # 10000-01-01T00:00:00Z: every time before it can be shown


def check_expiry(expires_at: object) -> float | None:
    """None (never), or a finite Unix time before the year 10000."""
    if expires_at is None:
        return None
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise InvalidInputError("expires_at must be a Unix time or null")
    if not 0 <= expires_at < MAX_EXPIRES_AT:  # also refuses NaN
        raise InvalidInputError("expires_at must be a Unix time before the year 10000")
    return float(expires_at)


def check_limits(limits: KeyLimits) -> KeyLimits:
    for field in LIMIT_FIELDS:
        value = getattr(limits, field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"{field} must be a whole number, not {value!r}")
        if not 0 <= value <= MAX_LIMIT:
            raise InvalidInputError(f"{field} must be 0 (no limit) or more, not {value}")
    return limits


def check_allow_list(models: Sequence[str] | None) -> tuple[str, ...] | None:
    """Model patterns such as `llama3*` or `qwen2.5:0.5b`; None allows every model. An
    empty list is refused: read as "every model" it would open what it means to close."""
    if models is None:
        return None
    if (
        isinstance(models, str)
        or not isinstance(models, list | tuple)
        or not all(isinstance(m, str) for m in models)
    ):
        raise InvalidInputError("models must be a list of model names or patterns")
    cleaned = tuple(dict.fromkeys(m.strip() for m in models if m.strip()))
    if not cleaned:
        raise InvalidInputError(
            "models must name at least one model or pattern (null, or 'all' in the CLIs,"
            " allows every model)"
        )
    if len(cleaned) > MAX_MODEL_PATTERNS:
        raise InvalidInputError(f"at most {MAX_MODEL_PATTERNS} model patterns")
    for pattern in cleaned:
        if len(pattern) > 200 or not pattern.isprintable() or " " in pattern:
            raise InvalidInputError(f"not a model name or pattern: {pattern!r}")
    return cleaned


def check_name(what: str, value: str) -> str:
    """User and key names: 1 to 64 printable characters, no surrounding blanks."""
    if not value or not value.strip():
        raise InvalidInputError(f"{what} must not be empty")
    if value != value.strip():
        raise InvalidInputError(f"{what} must not start or end with blanks")
    if len(value) > MAX_NAME_CHARS:
        raise InvalidInputError(f"{what} must be at most {MAX_NAME_CHARS} characters")
    if not value.isprintable():
        raise InvalidInputError(f"{what} must not contain control characters")
    return value


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Per-key limits; None means "the gateway's default", 0 means "no limit"."""

    rpm: int | None = None
    rph: int | None = None
    tokens_per_day: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    user: str
    name: str
    key_hash: str
    prefix: str
    role: Role
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked: bool
    revoked_at: float | None
    limits: KeyLimits = KeyLimits()
    models: tuple[str, ...] | None = None  # allow-list patterns; None: every model
    user_disabled: bool = False  # its user is disabled: the key does not work
    user_id: int | None = None
    budget: Budget | None = None  # the key's own budget
    user_budget: Budget | None = None  # its user's, for all the user's keys together
    budgets: tuple[BudgetLine, ...] = ()  # the two above, as admission checks them
    created_by: int | None = None  # the key that made it (self-service); None: an admin
    priority: int | None = None  # its own priority class; None: its user's
    # The class its requests queue in (its own, else its user's, else normal): decided
    # once, when the record is read, so the relay does no lookup per request.
    queue_class: int = NORMAL_PRIORITY

    def status(self, now: float | None = None) -> str:
        if self.revoked:
            return "revoked"
        if self.user_disabled:
            return "user disabled"
        if self.expires_at is not None and self.expires_at <= (now or time.time()):
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    email: str | None
    note: str | None
    disabled: bool
    created_at: float
    disabled_at: float | None
    active_keys: int = 0
    budget: Budget | None = None
    priority: int | None = None  # the class of its keys that have none; None: normal


MAX_EMAIL_CHARS = 254
MAX_NOTE_CHARS = 1000


def check_email(email: str | None) -> str | None:
    if email is None or email == "":
        return None
    if (
        len(email) > MAX_EMAIL_CHARS
        or not email.isprintable()
        or " " in email
        or email.count("@") != 1
        or email.startswith("@")
        or email.endswith("@")
    ):
        raise InvalidInputError(f"not an email address: {email!r}")
    return email


def check_note(note: str | None) -> str | None:
    if note is None or note == "":
        return None
    if len(note) > MAX_NOTE_CHARS or not note.isprintable():
        raise InvalidInputError(
            f"a note is at most {MAX_NOTE_CHARS} printable characters, on one line"
        )
    return note


# --- Usage ----------------------------------------------------------------------------


class UsageRecord(NamedTuple):
    """One relayed request. Tokens are None when Ollama reported no counts.
    (A tuple: one is made per request, and a tuple is the cheapest record to make.)"""

    ts: float
    key_id: int
    user: str
    key_name: str
    method: str
    route: str
    model: str | None
    status: int
    prompt_tokens: int | None
    completion_tokens: int | None
    duration_ms: float
    ttfb_ms: float | None
    bytes_in: int
    bytes_out: int
    client_gone: bool
    # The counts were counted or estimated by the gateway (a stream cut before its
    # final counts), not reported by the upstream.
    estimated: bool = False
    # What it cost, in nano-units (0: free; None: made before prices existed; records read
    # back for display, usage_rows and usage_page, show micro-units), and the model time
    # Ollama reported (total_duration, ns), when it did.
    cost: int | None = None
    model_ns: int | None = None
    # The model as the request named it (`model` is its one identity, as Ollama resolves
    # the name: lower case, the default host and namespace left out, the tag written).
    model_sent: str | None = None
    # Who ended it from the dashboard's Now (an admin's "user/key name"); None: nobody.
    stopped_by: str | None = None
    # Answered from the response cache (CACHE_SIZE), not by an upstream.
    cached: bool = False


class LocalUsageRecord(UsageRecord):
    """A record of a request decided on this gateway's own reckoning while PostgreSQL was
    away (LIMITS_WHEN_DATABASE_AWAY=local): its tokens and cost reach the shared rows
    (`limit_counters`, `budget_spend`) with the record, in the transaction that inserts
    it, not by the live give-back, so that they count once and outlive the process. (A
    subclass, not a field: the record's fields are the usage table's columns.)"""

    __slots__ = ()


USAGE_COLUMNS = UsageRecord._fields


MAX_INT = 2**63 - 1  # SQLite's INTEGER
_MAX_TEXT = 1024


def clean_usage_record(record: UsageRecord) -> UsageRecord:
    """A record whose every value the database takes: whole numbers within 64 bits and
    not negative, finite times, bounded text. Raises TypeError or ValueError for one that
    cannot be made so (a journal line edited by hand, or torn)."""

    def count(value: object, optional: bool = False) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected a whole number, got {value!r}")
        return min(max(value, 0), MAX_INT)

    def seconds(value: object, optional: bool = False) -> float | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)

    def text(value: object, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise TypeError(f"expected text, got {value!r}")
        return value[:_MAX_TEXT]

    return record.__class__(  # (a LocalUsageRecord stays one)
        seconds(record.ts),  # type: ignore[arg-type]
        count(record.key_id),  # type: ignore[arg-type]
        text(record.user),  # type: ignore[arg-type]
        text(record.key_name),  # type: ignore[arg-type]
        text(record.method),  # type: ignore[arg-type]
        text(record.route),  # type: ignore[arg-type]
        text(record.model, optional=True),
        count(record.status),  # type: ignore[arg-type]
        count(record.prompt_tokens, optional=True),
        count(record.completion_tokens, optional=True),
        seconds(record.duration_ms),  # type: ignore[arg-type]
        seconds(record.ttfb_ms, optional=True),
        count(record.bytes_in),  # type: ignore[arg-type]
        count(record.bytes_out),  # type: ignore[arg-type]
        bool(record.client_gone),
        bool(record.estimated),
        count(record.cost, optional=True),
        count(record.model_ns, optional=True),
        text(record.model_sent, optional=True),
        text(record.stopped_by, optional=True),
        bool(record.cached),
    )


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which usage records a listing shows; None: any."""

    since: float | None = None
    until: float | None = None
    key_id: int | None = None
    user: str | None = None
    model: str | None = None
    route: str | None = None
    status: int | None = None
    cached: bool | None = None  # answered from the response cache (True) or not


# --- Models ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    family: str | None = None
    parameter_size: str | None = None
    quantization: str | None = None
    context_length: int | None = None
    size: int | None = None  # bytes
    digest: str | None = None


MODEL_FIELDS = tuple(f.name for f in fields(ModelInfo))


# --- Alerts: what an event tells the webhooks (alerts/ sends them) -----------------------

# The kinds, as the webhook body and the per-kind URL settings name them.
ALERT_KINDS = (
    "budget_alert",  # a budget's alert percentage was reached in its period
    "budget_exhausted",  # a budget was used up in its period
    "upstream_down",
    "upstream_up",
    "key_expiring",  # a working key expires within ALERT_KEY_EXPIRY_DAYS
    "key_refusals",  # ALERT_REFUSALS: N refusals of one key within M minutes
)


class Alert(NamedTuple):
    """One event for the webhooks. The same kind, subject and period is one alert, however
    often and on however many gateways it is raised (the outbox's `dedupe` column)."""

    kind: str  # one of ALERT_KINDS
    subject: str  # what it is about: "key:12", "user:3", "upstream:gpu1"
    period: str  # what repeats it: a budget's period start, an expiry date, a time window
    text: str  # one line for people (the Slack form's whole message)
    details: Mapping[str, object]  # plain JSON values for programs

    @property
    def dedupe(self) -> str:
        return f"{self.kind}|{self.subject}|{self.period}"


# What an event's source is given to raise one: it must not block or fail (it queues).
AlertSink = Callable[[Alert], None]


# --- Aliases --------------------------------------------------------------------------

AliasScope = Literal["global", "user", "key"]
ALIAS_SCOPES: tuple[AliasScope, ...] = ("global", "user", "key")


@dataclass(frozen=True, slots=True)
class Alias:
    """A model name that stands for another (`gpt-4o-mini` -> `llama3.2:latest`), for
    everyone, one user's keys or one key. `name` is as the admin wrote it (model lists show
    it so), `canonical` its identity (requests match it whatever their case or tag
    spelling), `target` the identity of the model it runs. `owner` is "" (global), the
    user's name or the key's id as text."""

    name: str
    canonical: str
    target: str
    scope: AliasScope = "global"
    owner: str = ""
    created_at: float = 0.0
