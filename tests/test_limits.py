"""The limiter with a clock we control: windows, refusals, the tightest limit's headers."""

from __future__ import annotations

from aigateway.access.limits import Limiter, Limits
from aigateway.records import KeyLimits, KeyRecord

T0 = 20_833 * 86_400.0  # midnight UTC: a whole minute, hour and day


def _key(key_id: int = 1, **limits: int | None) -> KeyRecord:
    return KeyRecord(
        key_id, "u", "k", "hash", "aig_x", "user", T0, None, None, False, None, KeyLimits(**limits)
    )


def test_a_minute_window_refuses_then_resets_on_the_next_minute() -> None:
    limiter, key = Limiter(Limits()), _key(rpm=2)
    assert limiter.admit(key, T0 + 10).allowed
    assert limiter.admit(key, T0 + 20).allowed
    refused = limiter.admit(key, T0 + 45.5)
    assert not refused.allowed
    assert refused.reason == "rate limit reached: 2 requests per minute for this key"
    assert refused.retry_after == 15  # until T0 + 60, rounded up
    assert dict(refused.headers)["X-RateLimit-Remaining"] == "0"
    assert limiter.admit(key, T0 + 60).allowed


def test_headers_name_the_tightest_limit() -> None:
    limiter, key = Limiter(Limits()), _key(rpm=100, rph=10)
    headers = dict(limiter.admit(key, T0 + 1).headers)
    assert headers == {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "9",
        "X-RateLimit-Reset": "3599",
    }
    limiter.charge_tokens(key.id, 0, T0 + 1)
    assert limiter.admit(_key(2), T0 + 1).headers == ()  # no limits: no headers


def test_token_quota_and_concurrency() -> None:
    limiter, key = Limiter(Limits(tokens_per_day=100)), _key(max_concurrent=1)
    assert limiter.admit(key, T0).allowed
    busy = limiter.admit(key, T0)
    assert not busy.allowed and busy.retry_after == 1
    limiter.ended(key.id, True, 150, 0, T0 + 5)  # its slot back, its tokens charged
    over = limiter.admit(key, T0 + 6)
    assert not over.allowed and "100 tokens per day" in over.reason
    assert over.retry_after == 86400 - 6
    assert limiter.admit(key, T0 + 86400).allowed  # a new UTC day


def test_a_clock_stepping_back_starts_a_fresh_window() -> None:
    limiter, key = Limiter(Limits()), _key(rpm=1)
    assert limiter.admit(key, T0 + 30).allowed
    assert not limiter.admit(key, T0 + 31).allowed
    assert limiter.admit(key, T0 - 30).allowed  # NTP moved the clock back a minute


def test_defaults_apply_where_a_key_has_none_and_zero_means_no_limit() -> None:
    limiter = Limiter(Limits(rpm=1))
    default, unlimited = _key(1), _key(2, rpm=0)
    assert limiter.admit(default, T0).allowed and not limiter.admit(default, T0).allowed
    assert all(limiter.admit(unlimited, T0).allowed for _ in range(100))


def test_a_request_ended_gives_back_its_slot_and_reservation_and_charges_its_use() -> None:
    limiter, key = Limiter(Limits()), _key(rpm=10, tokens_per_day=1000, max_concurrent=5)
    for _ in range(2):
        assert limiter.admit(key, T0).allowed
        assert limiter.reserve_tokens(key, 300, T0) == 300
    limiter.ended(key.id, True, 120, 300, T0 + 1)  # relayed: counts stand, use charged
    limiter.ended(key.id, False, 0, 300, T0 + 1)  # refused for its body: counts back
    use = limiter.usage_of(key, T0 + 2)
    assert use["in_flight"] == 0 and use["tokens_reserved"] == 0
    assert use["requests_this_minute"] == 1 and use["requests_this_hour"] == 1
    assert use["tokens_today"] == 120
    limiter.ended(key.id, False, 0, 5000, T0 + 3)  # nothing goes below zero
    use = limiter.usage_of(key, T0 + 3)
    assert use["in_flight"] == 0 and use["tokens_reserved"] == 0
    assert use["requests_this_minute"] == 0
