"""Per-key rate limits, token quotas and concurrency caps, held in memory.

Windows are fixed and aligned to UTC: the minute, the hour, the day. Admission checks
and counts in one step with no await in between, so on one event loop it is exact: with
a limit of 50, exactly 50 of 100 simultaneous requests pass.

Token quotas cannot be checked that way, because a request's tokens are known only when
its response ends. So a request to a key with a quota reserves an estimate once its body
is read (`reserve_tokens`: its own output cap, else a setting, plus its prompt guessed
from its size), and is admitted only while the tokens settled today plus those reserved
by requests still running are below the quota; when it ends, its reservation is replaced
by what it really used (`ended`, from relay/ledger.py). Parallel requests therefore
cannot overrun a quota many times over: the day's tokens end below the quota plus what
the requests admitted last used beyond their reservations. Today's tokens are reloaded
from the usage table at start-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import Refused
from ..records import DAY, KeyLimits, KeyRecord

MINUTE, HOUR = 60, 3600


@dataclass(frozen=True, slots=True)
class Limits:
    """Effective limits for one key; 0 means no limit."""

    rpm: int = 0
    rph: int = 0
    tokens_per_day: int = 0
    max_concurrent: int = 0

    @classmethod
    def resolve(cls, own: KeyLimits, defaults: Limits) -> Limits:
        return cls(
            rpm=defaults.rpm if own.rpm is None else own.rpm,
            rph=defaults.rph if own.rph is None else own.rph,
            tokens_per_day=defaults.tokens_per_day
            if own.tokens_per_day is None
            else own.tokens_per_day,
            max_concurrent=defaults.max_concurrent
            if own.max_concurrent is None
            else own.max_concurrent,
        )


UNLIMITED = Limits()


def refusal_reasons(limits: Limits) -> dict[str, str]:
    """What a refusal says for each limit: `concurrent`, `minute`, `hour`, `day`."""
    return {
        "concurrent": f"too many requests at once for this key (limit {limits.max_concurrent})",
        "minute": f"rate limit reached: {limits.rpm} requests per minute for this key",
        "hour": f"rate limit reached: {limits.rph} requests per hour for this key",
        "day": f"token quota reached: {limits.tokens_per_day} tokens per day for this key",
    }


# The headers every answer to a key with limits carries (of its tightest limit).
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def rate_limit_headers(limit: int, remaining: int, reset_in: int) -> tuple[tuple[str, str], ...]:
    name_limit, name_remaining, name_reset = RATE_LIMIT_HEADERS
    return (
        (name_limit, str(limit)),
        (name_remaining, str(remaining)),
        (name_reset, str(reset_in)),
    )


@dataclass(slots=True)
class _Window:
    length: int
    start: float = 0.0
    end: float = 0.0  # start + length: a new window begins once `now` reaches it
    used: int = 0
    # Tokens reserved by requests still running (the day's token window only). Not reset by
    # roll(): a request that began yesterday settles into today.
    reserved: int = 0

    def roll(self, now: float) -> None:
        if now >= self.end or now < self.start:  # the clock moved on (or back)
            self.start = now - now % self.length
            self.end = self.start + self.length
            self.used = 0

    def reset_in(self, now: float) -> int:
        seconds = math.ceil(self.end - now)
        return seconds if seconds > 1 else 1  # (max() costs five times this)


@dataclass(slots=True)
class _KeyState:
    minute: _Window
    hour: _Window
    day_tokens: _Window
    in_flight: int = 0
    # The key's effective limits, resolved from `source` (the record's own limits, a new
    # object whenever the key table reloads), so admit() need not hash them each time;
    # `windowed` holds the set ones among rpm, rph and tokens per day, with their window
    # and refusal, for both the checks and the X-RateLimit-* headers.
    source: KeyLimits | None = None
    limits: Limits = Limits()
    windowed: tuple[tuple[int, _Window, str, Refused], ...] = ()
    unlimited: bool = True


class Verdict(NamedTuple):
    """Whether a request may pass, and what to say in the X-RateLimit-* headers.
    (A tuple: one is made per request, and a tuple is the cheapest record to make.)"""

    allowed: bool
    reason: str = ""
    retry_after: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    refused: Refused = Refused.RATE_LIMIT  # which kind of refusal, when not allowed


ADMITTED = Verdict(True)


class Limiter:
    def __init__(self, defaults: Limits) -> None:
        self.defaults = defaults
        self._state: dict[int, _KeyState] = {}
        self._resolved: dict[KeyLimits, Limits] = {}  # few distinct limit sets: cache them

    def limits_for(self, record: KeyRecord) -> Limits:
        resolved = self._resolved.get(record.limits)
        if resolved is None:
            resolved = self._resolved[record.limits] = Limits.resolve(record.limits, self.defaults)
        return resolved

    def _state_for(self, key_id: int) -> _KeyState:
        state = self._state.get(key_id)
        if state is None:
            state = _KeyState(_Window(MINUTE), _Window(HOUR), _Window(DAY))
            self._state[key_id] = state
        return state

    def admit(self, record: KeyRecord, now: float) -> Verdict:
        """Check every limit, and if all pass, count the request and its slot."""
        state = self._state_for(record.id)
        if state.source is not record.limits:
            self._resolve(state, record)
        minute, hour = state.minute, state.hour
        minute.roll(now)
        hour.roll(now)
        if not state.unlimited:  # else only counted, for the statistics
            state.day_tokens.roll(now)
            refusal = self._refusal(state, now)
            if refusal is not None:
                return refusal
        minute.used += 1
        hour.used += 1
        state.in_flight += 1
        return ADMITTED if state.unlimited else Verdict(True, "", 0, self._headers(state, now))

    def _resolve(self, state: _KeyState, record: KeyRecord) -> None:
        limits = self.limits_for(record)
        reasons = refusal_reasons(limits)
        state.source, state.limits = record.limits, limits
        state.windowed = tuple(
            (limit, window, reasons[kind], refused)
            for limit, window, kind, refused in (
                (limits.rpm, state.minute, "minute", Refused.RATE_LIMIT),
                (limits.rph, state.hour, "hour", Refused.RATE_LIMIT),
                (limits.tokens_per_day, state.day_tokens, "day", Refused.TOKEN_QUOTA),
            )
            if limit
        )
        state.unlimited = not state.windowed and not limits.max_concurrent

    def limited(self, record: KeyRecord) -> bool:
        """Whether any limit applies to the key (else admission only counts)."""
        return self.limits_for(record) != UNLIMITED

    def count(self, record: KeyRecord, now: float) -> None:
        """Count a request admitted elsewhere (by the shared limits), so that this
        gateway's own counts stay right for when it must decide alone."""
        state = self._state_for(record.id)
        state.minute.roll(now)
        state.hour.roll(now)
        state.minute.used += 1
        state.hour.used += 1
        state.in_flight += 1

    def _refusal(self, state: _KeyState, now: float) -> Verdict | None:
        """The first limit the request would break, in the order concurrency, minute,
        hour, day; None when it breaks none."""
        cap = state.limits.max_concurrent
        if cap and state.in_flight >= cap:
            reason = refusal_reasons(state.limits)["concurrent"]
            return Verdict(False, reason, 1, self._headers(state, now))
        for limit, window, reason, refused in state.windowed:
            if window.used + window.reserved >= limit:
                return Verdict(
                    False, reason, window.reset_in(now), self._headers(state, now), refused
                )
        return None

    def ended(self, key_id: int, relayed: bool, tokens: int, reserved: int, now: float) -> None:
        """An admitted request ended: its slot is given back and the tokens it reserved
        (`reserved`) go; what it used is charged to the day. One that was not relayed
        (refused for its body: a model not allowed, too large, over the token quota) has
        its counts taken back too: limits count requests relayed, and admission had to
        come before the body was read. (One call, one look-up of the key's state: this
        runs for every request.)"""
        state = self._state_for(key_id)
        if state.in_flight > 0:
            state.in_flight -= 1
        day = state.day_tokens
        if reserved:
            left = day.reserved - reserved
            day.reserved = left if left > 0 else 0  # (max() costs five times this)
        if not relayed:
            minute, hour = state.minute, state.hour
            if minute.used > 0:
                minute.used -= 1
            if hour.used > 0:
                hour.used -= 1
        elif tokens:
            day.roll(now)
            day.used += tokens

    def reserve_tokens(self, record: KeyRecord, estimate: int, now: float) -> int | Verdict:
        """Reserve `estimate` tokens for an admitted request of a key with a token quota,
        if settled and reserved tokens leave any of the quota; return what was reserved
        (0 for a key without a quota), or the refusal. Checked and reserved with no await
        in between, so simultaneous requests see each other's reservations."""
        state = self._state_for(record.id)
        if state.source is not record.limits:
            self._resolve(state, record)
        quota = state.limits.tokens_per_day
        if not quota:
            return 0
        window = state.day_tokens
        window.roll(now)
        if window.used + window.reserved >= quota:
            reason = refusal_reasons(state.limits)["day"]
            return Verdict(
                False, reason, window.reset_in(now), self._headers(state, now), Refused.TOKEN_QUOTA
            )
        window.reserved += estimate
        return estimate

    def charge_tokens(self, key_id: int, tokens: int, now: float) -> None:
        window = self._state_for(key_id).day_tokens
        window.roll(now)
        window.used += tokens

    def preload_tokens(self, used_today: dict[int, int], now: float) -> None:
        for key_id, tokens in used_today.items():
            self.charge_tokens(key_id, tokens, now)

    def usage_of(self, record: KeyRecord, now: float) -> dict[str, object]:
        """Current use against each limit, for /admin/me and the statistics."""
        limits = self.limits_for(record)
        state = self._state_for(record.id)
        for window in (state.minute, state.hour, state.day_tokens):
            window.roll(now)
        return {
            "requests_this_minute": state.minute.used,
            "requests_this_hour": state.hour.used,
            "tokens_today": state.day_tokens.used,
            "tokens_reserved": state.day_tokens.reserved,
            "in_flight": state.in_flight,
            "limits": {
                "rpm": limits.rpm,
                "rph": limits.rph,
                "tokens_per_day": limits.tokens_per_day,
                "max_concurrent": limits.max_concurrent,
            },
        }

    @staticmethod
    def _headers(state: _KeyState, now: float) -> tuple[tuple[str, str], ...]:
        """X-RateLimit-* for the tightest limit: the one with the least share left."""
        best: tuple[int, int, _Window] | None = None
        best_share = 2.0
        for limit, window, _, _ in state.windowed:
            taken = window.used + window.reserved
            remaining = limit - taken if taken < limit else 0
            share = remaining / limit
            if share < best_share:
                best_share, best = share, (limit, remaining, window)
        if best is None:
            return ()
        limit, remaining, window = best
        return rate_limit_headers(limit, remaining, window.reset_in(now))
