"""Limits shared by several gateways on one PostgreSQL database, exactly.

A request of a key with limits is admitted by one call (one round trip) of the function
`aigateway_admit` (migrations 0005, 0012), which takes the key's row lock in
`limit_counters`, checks every limit and counts the request, its slot and its token
reservation only if all pass; calls from every gateway are serialised on the row, so 100
simultaneous requests over three gateways against 50 a minute admit exactly 50. Requests
of one key that arrive while its call is out go together in the next call. The windows
follow the database's clock, so gateways whose clocks differ share them.

What a request gives back when it ends (its slot, its reservation replaced by the tokens
it used, or its count when its body was then refused) is never waited for: it goes with
the key's next admission call, which takes it back before it admits (so a client that
waits for each answer of a key limited to one at a time is never refused), or with the
next batch, one call for every key, a moment later. Each gateway's ledger
(`instance_in_flight`) changes in the same transactions, so it always says exactly which
slots and reservations the gateway holds; a gateway that stops saying it is alive
(killed, its machine gone) has them given back by the others.

While the database cannot be reached, LIMITS_WHEN_DATABASE_AWAY decides: `local` admits
on this gateway's own counts (kept all along), `refuse` answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg

from ..db.notify import asyncpg_dsn
from ..db.url import Database
from ..errors import Refused
from ..records import DAY, StoreError
from .limits import HOUR, MINUTE, Limits, Verdict, rate_limit_headers, refusal_reasons

log = logging.getLogger("aigateway.limits")

ADMIT_TIMEOUT_S = 2.0  # then the database counts as away
AWAY_RECHECK_S = 1.0  # while away, one admission in this long tries the database again
HEARTBEAT_S = 2.0
GIVE_BACK_GATHER_S = 0.01
DEAD_AFTER_S = 15.0  # a gateway silent this long has its slots given back

_NOW = "extract(epoch FROM clock_timestamp())"

# Takes back what `$8` (six numbers, or NULL) returns of this gateway's ended requests of
# the key, then admits the first of the requests of the key that waited meanwhile (their
# token reservations in $7), as many as its limits allow: a function of the schema's
# (migration 0012), under the key's row lock. One call, one round trip, for them all.
_ADMIT = """
SELECT * FROM aigateway_admit($1::text, $2::bigint, $3::bigint, $4::bigint, $5::bigint,
    $6::bigint, $7::bigint[], $8::bigint[])
"""
MAX_BATCH = 256

# Keys' rows as they are now, and the clock (for the admin API's current use).
_STATE = f"""
SELECT key_id, minute_start, minute_used, hour_start, hour_used, day_start, day_tokens,
    day_reserved, in_flight, {_NOW}
FROM limit_counters WHERE key_id = ANY($1::bigint[])
"""

# More tokens for a request whose body asks for more than admission reserved, on the
# key's row and this gateway's ledger: $1 key, $2 tokens per day, $3 tokens, $4 this gateway.
_TOP_UP = f"""
WITH c AS (
    UPDATE limit_counters SET day_reserved = day_reserved + $3::bigint
    WHERE key_id = $1::bigint AND (day_start < (floor({_NOW} / {DAY}) * {DAY})::bigint
        OR day_tokens + day_reserved < $2::bigint)
    RETURNING key_id
)
INSERT INTO instance_in_flight AS l (instance, key_id, requests, reserved)
SELECT $4::text, key_id, 0, $3::bigint FROM c
ON CONFLICT (instance, key_id) DO UPDATE SET reserved = l.reserved + excluded.reserved
RETURNING reserved
"""

# What ended requests give back, for every key at once: $1 this gateway, $2 the keys, $3
# six numbers a key (see _Return.numbers). One call, one transaction.
_SETTLE = "SELECT aigateway_settle($1::text, $2::bigint[], $3::bigint[])"

# The register of live gateways: this one is alive; those silent for $1 seconds, or this
# one as it stops ($2), are not. Then what gateways no longer registered hold is given
# back (in a transaction of its own, after the register's: see migration 0012).
_ALIVE = f"""
INSERT INTO gateway_instances (instance, seen_at) VALUES ($1, {_NOW})
ON CONFLICT (instance) DO UPDATE SET seen_at = excluded.seen_at
"""
_GONE = f"DELETE FROM gateway_instances WHERE seen_at < {_NOW} - $1::float8 OR instance = $2"
_REAP = "SELECT aigateway_reap()"


class Ticket(NamedTuple):
    """A request admitted by the database: what it must give back when it ends."""

    key_id: int
    reserved: int  # tokens reserved at admission (more may be added: see top_up)
    minute_start: int
    hour_start: int
    # The key has a limit of requests at once: its slot is given back before the answer
    # ends (see returned), since the client may send its next request to another gateway.
    at_once: bool = False

    def with_more(self, tokens: int) -> Ticket:
        """The ticket once `tokens` more are reserved (a top-up)."""
        return self._replace(reserved=self.reserved + tokens)


class Admission(NamedTuple):
    verdict: Verdict
    ticket: Ticket | None = None  # None: refused
    away: bool = False  # refused because the database is away (503, not 429)


# A request waiting for its key's next admission call: its token reservation, its answer.
_Waiter = tuple[int, "asyncio.Future[Admission | None]"]


@dataclass(slots=True)
class _Return:
    """What ended requests of one key give back, gathered until the next batch."""

    released: int = 0
    reserved: int = 0
    tokens: int = 0
    refunds: int = 0
    minute: int = 0
    hour: int = 0

    def numbers(self) -> list[int]:
        """As the functions of the schema take them (p_back)."""
        return [self.released, self.reserved, self.tokens, self.refunds, self.minute, self.hour]

    def add(self, other: _Return) -> None:
        self.released += other.released
        self.reserved += other.reserved
        self.tokens += other.tokens
        # Counts are taken back only in the minute (and hour) they were made in: an
        # older minute's refunds are dropped (they no longer count against anything).
        if other.minute > self.minute:
            self.refunds, self.minute, self.hour = other.refunds, other.minute, other.hour
        elif other.minute == self.minute:
            self.refunds += other.refunds


class SharedLimits:
    def __init__(
        self,
        database: Database,
        when_away: str = "local",
        heartbeat_s: float = HEARTBEAT_S,
        dead_after_s: float = DEAD_AFTER_S,
    ) -> None:
        self._database = database
        self.when_away = when_away
        # How often this gateway says it is alive, and how long one may be silent before
        # its slots are given back (shorter in tests that kill a gateway).
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.instance = uuid.uuid4().hex
        self._pool: asyncpg.Pool | None = None
        self._returns: dict[int, _Return] = {}
        # Keys whose returns a statement is writing, and its end: the key's next
        # admission waits for it, so that a slot given back a moment ago is free by then.
        self._writing: dict[int, asyncio.Event] = {}
        # Requests waiting for their key's next admission call, and the calls' tasks.
        self._waiting: dict[tuple[int, Limits], list[_Waiter]] = {}
        self._senders: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one batch at a time
        self._tasks: list[asyncio.Task[None]] = []
        self._away_until = 0.0
        self._away_reason = ""

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                asyncpg_dsn(self._database),
                min_size=0,  # no floor kept up: asyncpg would log tracebacks while away
                max_size=10,
                timeout=ADMIT_TIMEOUT_S,
                command_timeout=30,
                # Nothing to reset: these connections take no locks, hold no cursors, set
                # nothing. asyncpg's default reset would be a second round trip a request
                # waits for, on every admission.
                reset=_no_reset,
            )
        except DATABASE_AWAY as exc:
            raise StoreError(
                f"{self._database.display}: cannot reach the database: {_error_line(exc)}"
            ) from None
        try:
            async with self.connection(ADMIT_TIMEOUT_S) as conn:  # alive before admitting
                await conn.execute(_ALIVE, self.instance, timeout=ADMIT_TIMEOUT_S)
        except DATABASE_AWAY as exc:
            await self._pool.close()
            raise StoreError(
                f"{self._database.display}: cannot reach the database: {_error_line(exc)}"
            ) from None
        self._tasks = [
            asyncio.create_task(self._write_returns(), name="aigateway-limit-returns"),
            asyncio.create_task(self._heartbeat(), name="aigateway-limit-heartbeat"),
        ]

    async def close(self) -> None:
        await stop(self._tasks)
        if self._pool is None:
            return
        try:
            await self._flush(everything=True)
            async with self.connection() as conn:
                await conn.execute(_GONE, self.dead_after_s, self.instance)
                await conn.execute(_REAP)
        except DATABASE_AWAY as exc:
            log.warning("could not give back this gateway's limit slots: %s", _error_line(exc))
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """A pooled connection; one an error left in an unknown state (a query cut by the
        server going away) is closed, not given to the next caller: with no reset on
        release, nothing else would notice."""
        assert self._pool is not None
        async with self._pool.acquire(timeout=timeout) as conn:
            try:
                yield conn
            except BaseException:
                conn.terminate()
                raise

    async def admit(self, key_id: int, limits: Limits, reserve: int) -> Admission | None:
        """Check and count one request of a key with limits; None when the database
        cannot be reached and LIMITS_WHEN_DATABASE_AWAY is `local`. Requests of one key
        that arrive while its previous call is out wait for the next call together (one
        round trip for all of them: a busy key costs the database less, not more). A
        request cancelled meanwhile is taken out, or given back if it was admitted."""
        if time.monotonic() < self._away_until:
            return self._while_away()
        reserve = reserve if limits.tokens_per_day else 0
        batch = (key_id, limits)
        future: asyncio.Future[Admission | None] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(batch)
        if waiting is None:
            waiting = self._waiting[batch] = []
            sender = asyncio.create_task(self._send(batch), name="aigateway-admit")
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        waiting.append((reserve, future))
        return await future

    async def _send(self, batch: tuple[int, Limits]) -> None:
        """Send what waits for one key, call after call, until nothing does."""
        key_id, limits = batch
        waiting = self._waiting[batch]
        while True:
            taken = [(r, f) for r, f in waiting[:MAX_BATCH] if not f.cancelled()]
            del waiting[:MAX_BATCH]
            if not taken:
                if not waiting:
                    del self._waiting[batch]  # no await since the check: a newcomer sends
                    return
                continue
            if time.monotonic() < self._away_until:
                _resolve(taken, self._while_away())
                continue
            await self._written(key_id)
            back = self._returns.pop(key_id, None)
            written = self._writes([key_id]) if back is not None else None
            try:
                row = await self._call_admit(key_id, limits, [r for r, _ in taken], back)
            except BaseException as exc:
                if back is not None:
                    self._give(key_id, back)  # with the next batch, then
                if isinstance(exc, DATABASE_AWAY):
                    self.went_away(exc)
                    _resolve(taken, self._while_away())
                    continue
                for _, future in taken:  # a fault of ours: the requests must not hang
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            finally:
                if written is not None:
                    written()
            self._admitted(key_id, limits, taken, row)

    async def _call_admit(
        self, key_id: int, limits: Limits, reserves: list[int], back: _Return | None
    ) -> Any:
        assert self._pool is not None
        async with self.connection(ADMIT_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                _ADMIT,
                self.instance,
                key_id,
                limits.rpm,
                limits.rph,
                limits.tokens_per_day,
                limits.max_concurrent,
                reserves,
                None if back is None else back.numbers(),
                timeout=ADMIT_TIMEOUT_S,
            )
        if self._away_reason:
            self._away_reason = ""
            log.warning("limits are shared through the database again")
        return row

    def _admitted(
        self,
        key_id: int,
        limits: Limits,
        taken: list[_Waiter],
        row: Any,
    ) -> None:
        """Hand each waiting request its answer: the first `admitted` are in, each with
        the headers of the count as it stood after it; the rest are refused."""
        admitted, state = row[0], tuple(row)[1:]
        refusal: Verdict | None = None
        later_reserved = sum(r for r, _ in taken[:admitted])
        for n, (reserve, future) in enumerate(taken):
            if n >= admitted:
                if not future.done():
                    refusal = refusal or _refusal(limits, state)
                    future.set_result(Admission(refusal))
                continue
            later_reserved -= reserve
            ticket = Ticket(key_id, reserve, state[0], state[2], limits.max_concurrent > 0)
            if future.done():  # its request was cancelled meanwhile
                self.give_back(ticket, 0, relayed=False)
                continue
            behind = admitted - 1 - n  # requests counted after this one
            at_the_time = _before(state, behind, later_reserved)
            future.set_result(
                Admission(Verdict(True, "", 0, _headers(limits, at_the_time)), ticket)
            )

    async def top_up(self, ticket: Ticket, limits: Limits, tokens: int) -> Ticket | Verdict:
        """Reserve `tokens` more for an admitted request (its body asks for more output
        than admission reserved): the ticket with them, or the refusal. (A request that
        also counts against budgets takes them with its budgets' reservation instead, in
        one call: SharedBudgets.reserve.)"""
        if tokens <= 0 or not limits.tokens_per_day:
            return ticket
        assert self._pool is not None
        try:
            async with self.connection(ADMIT_TIMEOUT_S) as conn:
                row = await conn.fetchrow(
                    _TOP_UP,
                    ticket.key_id,
                    limits.tokens_per_day,
                    tokens,
                    self.instance,
                    timeout=ADMIT_TIMEOUT_S,
                )
        except DATABASE_AWAY as exc:
            self.went_away(exc)
            return ticket  # admitted already; the reservation it has stands
        if row is None:
            return day_refusal(limits)
        return ticket.with_more(tokens)

    def give_back(self, ticket: Ticket, tokens: int, relayed: bool) -> None:
        """A request admitted by the database ended: free its slot, replace its
        reservation with the tokens it used, and take back its count if it was refused
        after admission (its body). Written with the next batch, never waited for."""
        back = _Return(released=1, reserved=ticket.reserved, tokens=tokens)
        if not relayed:
            back.refunds, back.minute, back.hour = 1, ticket.minute_start, ticket.hour_start
        self._give(ticket.key_id, back)

    async def returned(self, ticket: Ticket) -> None:
        """Write now what ended requests of the ticket's key give back, and wait until it
        is written (or the database found away): for a key with a limit of requests at
        once, before its answer ends, so that the next request of a client that waits for
        each answer finds the slot free on any gateway. Not cut short by a cancelled
        request: a statement cut midway would leave unknown what it gave back."""
        if not ticket.at_once or self.away():  # (away: with the batch, once it is back)
            return
        await self._written(ticket.key_id)
        back = self._returns.pop(ticket.key_id, None)
        if back is None:
            return

        async def write() -> None:
            try:
                await self._settle({ticket.key_id: back}, ADMIT_TIMEOUT_S)
            except DATABASE_AWAY as exc:  # (kept: with the batch, once it is back)
                self.went_away(exc)

        await asyncio.shield(asyncio.ensure_future(write()))

    async def _written(self, key_id: int) -> None:
        """Wait while a statement writes what the key's ended requests gave back."""
        while (event := self._writing.get(key_id)) is not None:
            await event.wait()

    def _writes(self, key_ids: list[int]) -> Callable[[], None]:
        """Mark the keys' returns as on their way; the function to call when written."""
        event = asyncio.Event()
        for key_id in key_ids:
            self._writing[key_id] = event

        def done() -> None:
            for key_id in key_ids:
                if self._writing.get(key_id) is event:
                    del self._writing[key_id]
            event.set()

        return done

    def give_back_tokens(self, key_id: int, tokens: int) -> None:
        """Return a reservation made for a request that then went away before its
        ticket could carry it (a top-up finishing after a cancel)."""
        self._give(key_id, _Return(reserved=tokens))

    def _give(self, key_id: int, back: _Return) -> None:
        gathered = self._returns.get(key_id)
        if gathered is None:
            self._returns[key_id] = back
        else:
            gathered.add(back)
        self._wake.set()

    async def current(self, key_ids: list[int]) -> dict[int, dict[str, int]]:
        """Each key's use across all gateways, as the limits see it now (the same fields
        as Limiter.usage_of); keys never admitted here are left out."""
        assert self._pool is not None
        async with self.connection(ADMIT_TIMEOUT_S) as conn:
            rows = await conn.fetch(_STATE, key_ids, timeout=ADMIT_TIMEOUT_S)
        current = {}
        for row in rows:
            use = _Use.of(tuple(row)[1:])
            current[int(row[0])] = {
                "requests_this_minute": use.minute,
                "requests_this_hour": use.hour,
                "tokens_today": use.tokens,
                "tokens_reserved": use.reserved,
                "in_flight": use.in_flight,
            }
        return current

    def away(self) -> bool:
        """Whether the database was found away a moment ago (not tried again yet)."""
        return time.monotonic() < self._away_until

    def maybe_away(self) -> bool:
        """Whether the database was found away and has not answered an admission since
        (what is given back now may wait in memory for it)."""
        return bool(self._away_reason) or time.monotonic() < self._away_until

    def _while_away(self) -> Admission | None:
        if self.when_away == "local":
            return None
        reason = "limits cannot be checked: the database is unreachable"
        return Admission(Verdict(False, reason, 5), None, away=True)

    def went_away(self, exc: BaseException) -> None:
        self._away_until = time.monotonic() + AWAY_RECHECK_S
        reason = _error_line(exc)
        if not self._away_reason:
            log.error(
                "cannot check shared limits on %s (%s); %s until it is back",
                self._database.display,
                reason,
                "admitting on this gateway's own counts"
                if self.when_away == "local"
                else "refusing requests of keys with limits",
            )
        self._away_reason = reason

    async def _write_returns(self) -> None:
        await write_batches(self._wake, self._flush, self.went_away, "limit returns")

    async def _flush(self, everything: bool = False) -> None:
        """Write what ended requests give back, but for keys with an admission call
        waiting or out (theirs goes with the next call: one round trip fewer)."""
        async with self._lock:
            self._wake.clear()
            if not self._returns or self._pool is None:
                return
            batch, self._returns = self._returns, {}
            busy = () if everything else [key_id for key_id, _ in self._waiting]
            for key_id in busy:
                back = batch.pop(key_id, None)
                if back is not None:
                    self._give(key_id, back)  # and the writer looks again in a moment
            if batch:
                await self._settle(batch)

    async def _settle(self, batch: dict[int, _Return], timeout: float | None = None) -> None:
        """Write what `batch` gives back, every key in one statement; if it cannot be
        written, it is kept for the next try."""
        written = self._writes(list(batch))
        try:
            numbers = [n for back in batch.values() for n in back.numbers()]
            async with self.connection(timeout) as conn:
                await conn.execute(_SETTLE, self.instance, list(batch), numbers, timeout=timeout)
        except BaseException:
            for key_id, back in batch.items():
                self._give(key_id, back)
            raise
        finally:
            written()

    async def _heartbeat(self) -> None:
        """Say that this gateway is alive, and give back what silent ones held."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                assert self._pool is not None
                async with self.connection() as conn:
                    await conn.execute(_ALIVE, self.instance)
                    await conn.execute(_GONE, self.dead_after_s, None)
                    await conn.execute(_REAP)
                if self._away_reason:  # back, though no admission has asked it yet
                    self._away_reason = ""
                    log.warning("limits are shared through the database again")
            except DATABASE_AWAY as exc:
                self.went_away(exc)
            except Exception:
                log.exception("could not say that this gateway is alive; trying again")


async def write_batches(
    wake: asyncio.Event,
    flush: Callable[[], Awaitable[None]],
    went_away: Callable[[BaseException], None],
    what: str,
) -> None:
    """Run `flush` whenever `wake` is set, gathering for a moment first (under load one
    statement then writes for many requests); while the database is away, try again
    after a growing pause. Never dies: a fault of ours is logged and tried again."""
    pause = 0.0
    while True:
        await wake.wait()
        await asyncio.sleep(pause or GIVE_BACK_GATHER_S)
        try:
            await flush()
            pause = 0.0
        except DATABASE_AWAY as exc:
            went_away(exc)
            pause = min(max(pause * 2, 0.1), 2.0)
        except Exception:
            log.exception("could not write %s; trying again", what)
            pause = 1.0


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _no_reset(_conn: asyncpg.Connection) -> None:
    return None


DATABASE_AWAY: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection left mid-query by a server going away
)


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _resolve(taken: list[_Waiter], answer: Admission | None) -> None:
    for _, future in taken:
        if not future.done():
            future.set_result(answer)


def _before(state: tuple[Any, ...], requests: int, reserved: int) -> tuple[Any, ...]:
    """A key's row as it stood before the last `requests` admissions (with `reserved`
    tokens) of a call: what an earlier request of the call is told it has left."""
    if not requests and not reserved:
        return state
    row = list(state)
    row[1] -= requests
    row[3] -= requests
    row[6] -= reserved
    row[7] -= requests
    return tuple(row)


def day_refusal(limits: Limits) -> Verdict:
    """A request refused more tokens for its body: the day's quota is used up."""
    return Verdict(False, refusal_reasons(limits)["day"], _until_next(DAY), (), Refused.TOKEN_QUOTA)


def _until_next(length: int, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return max(1, math.ceil(length - now % length))


class _Use(NamedTuple):
    """A key's row read as its use now: counts of windows that have ended are 0."""

    minute: int
    hour: int
    tokens: int  # settled today
    reserved: int  # by requests still running
    in_flight: int
    now: float

    @classmethod
    def of(cls, state: tuple[Any, ...]) -> _Use:
        """From (minute_start, minute_used, hour_start, hour_used, day_start, day_tokens,
        day_reserved, in_flight, now), as the admission function and _STATE give it."""
        now = float(state[8])
        return cls(
            state[1] if state[0] == _start(now, MINUTE) else 0,
            state[3] if state[2] == _start(now, HOUR) else 0,
            state[5] if state[4] == _start(now, DAY) else 0,
            state[6],
            state[7],
            now,
        )


def _refusal(limits: Limits, state: tuple[Any, ...]) -> Verdict:
    """Which limit a refused request broke (in the order concurrency, minute, hour, day),
    from the row as the admission call left it."""
    reasons = refusal_reasons(limits)
    use = _Use.of(state)
    headers = _headers(limits, state)
    if limits.max_concurrent and use.in_flight >= limits.max_concurrent:
        return Verdict(False, reasons["concurrent"], 1, headers)
    if limits.rpm and use.minute >= limits.rpm:
        return Verdict(False, reasons["minute"], _until_next(MINUTE, use.now), headers)
    if limits.rph and use.hour >= limits.rph:
        return Verdict(False, reasons["hour"], _until_next(HOUR, use.now), headers)
    return Verdict(False, reasons["day"], _until_next(DAY, use.now), headers, Refused.TOKEN_QUOTA)


def _start(now: float, length: int) -> int:
    return int(now // length * length)


def _headers(limits: Limits, row: Any) -> tuple[tuple[str, str], ...]:
    """X-RateLimit-* for the tightest limit (the least share left), as the local
    limiter sends them."""
    use = _Use.of(row)
    now = use.now
    best: tuple[int, int, int] | None = None
    best_share = 2.0
    for limit, taken, length in (
        (limits.rpm, use.minute, MINUTE),
        (limits.rph, use.hour, HOUR),
        (limits.tokens_per_day, use.tokens + use.reserved, DAY),
    ):
        if not limit:
            continue
        remaining = max(0, limit - taken)
        if remaining / limit < best_share:
            best_share, best = remaining / limit, (limit, remaining, length)
    if best is None:
        return ()
    limit, remaining, length = best
    return rate_limit_headers(limit, remaining, _until_next(length, now))
