"""A relayed request's one ledger of what it took, each take beside its release.

A request takes things at different moments: its admission (a rate-limit count and a
slot of the key's requests at once) and its place among the requests in flight before
its body is read, body memory while reading it, token and budget reservations once its
body says what it asks for, an upstream's slot when it is sent on. Each is registered
here, with how to give it back, at the moment it is taken (or added to the take it
belongs with: the tokens to the admission's hold); the ledger is unwound once,
in reverse order, from the handler's `finally` (settle.py): with what the request used,
or with nothing used when it was refused after admission. So no path can take without
giving back, or give back twice: a refusal raised between two takes unwinds the first,
and whatever is added later has its own release already. What was taken is known by
the takes themselves (no flag beside them says so), also whether one was decided on this
gateway's own reckoning while PostgreSQL was away (`by_record`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:
    from ..access.budgets import Budgets
    from ..access.budgets_shared import SharedBudgets
    from ..access.limits import Limiter, Verdict
    from ..access.limits_shared import SharedLimits, Ticket
    from ..records import BudgetLine, KeyRecord
    from ..upstreams.pool import Pool, Upstream
    from .bodybudget import BodyBudget

log = logging.getLogger("aigateway.relay")


class Outcome(NamedTuple):
    """What a request ended with, as every release needs it."""

    sent: bool  # it was sent on: its counts stand, it is charged what it used
    tokens: int  # prompt and completion tokens it used (or is charged)
    cost: int  # what it cost, in the currency's smallest unit (pricing.py)
    now: float  # Unix time it ended
    # Decided on this gateway's own reckoning while PostgreSQL was away: its usage record
    # (a LocalUsageRecord) brings its tokens and cost to the shared rows, not the holds.
    by_record: bool = False


class Take(Protocol):
    @property
    def by_record(self) -> bool:
        """Decided on this gateway's own reckoning while PostgreSQL was away."""

    def release(self, outcome: Outcome) -> None: ...


T = TypeVar("T", bound=Take)


class Ledger:
    __slots__ = ("_takes",)

    def __init__(self) -> None:
        self._takes: list[Take] = []

    def take(self, take: T) -> T:
        """Register what was just taken; it is given back when the ledger unwinds."""
        self._takes.append(take)
        return take

    def by_record(self) -> bool:
        """Whether a take was decided on this gateway's own reckoning while PostgreSQL was
        away: the request's record, not its holds, brings its use to the shared rows."""
        for take in self._takes:  # noqa: SIM110 (any() of a generator costs twice this)
            if take.by_record:
                return True
        return False

    def __len__(self) -> int:
        return len(self._takes)

    def unwind(self, outcome: Outcome) -> None:
        """Give back every take, the last first; a second unwind finds nothing left."""
        takes, self._takes = self._takes, []
        for take in reversed(takes):
            try:
                take.release(outcome)
            except Exception:  # one release failing must not keep the others
                log.exception("could not give back %r", take)


class AdmissionHold:
    """A request admitted by the key's limits: one count in its rate windows, one of its
    requests at once and, once its body says what it asks for, the tokens it reserves
    against the key's daily quota (on this gateway's limiter, also when the shared
    limits decided). Given back together, in one call to the limiter: the slot and the
    reservation always; the counts when it was not sent on (limits count requests
    relayed); what it used is charged to the key's day."""

    __slots__ = ("by_record", "key_id", "limiter", "reserved")

    def __init__(self, limiter: Limiter, key_id: int, by_record: bool = False) -> None:
        self.limiter = limiter
        self.key_id = key_id
        # Admitted here by the key's limits although they are shared: PostgreSQL is away.
        self.by_record = by_record
        self.reserved = 0  # tokens reserved against the key's daily quota

    def reserve_tokens(self, record: KeyRecord, estimate: int, now: float) -> Verdict | None:
        """Reserve `estimate` tokens against the key's daily quota (none reserved for a
        key without one), given back with the rest; the refusal when the quota is spent."""
        reserved = self.limiter.reserve_tokens(record, estimate, now)
        if isinstance(reserved, int):
            self.reserved = reserved
            return None
        return reserved

    def release(self, outcome: Outcome) -> None:
        self.limiter.ended(self.key_id, outcome.sent, outcome.tokens, self.reserved, outcome.now)


class TicketHold:
    """What the limits shared across gateways (PostgreSQL) admitted: the ticket, which a
    top-up replaces with one holding more tokens."""

    __slots__ = ("shared", "ticket")
    by_record = False

    def __init__(self, shared: SharedLimits, ticket: Ticket) -> None:
        self.shared = shared
        self.ticket = ticket

    def release(self, outcome: Outcome) -> None:
        tokens = 0 if outcome.by_record else outcome.tokens
        self.shared.give_back(self.ticket, tokens, relayed=outcome.sent)


class BodyHold:
    """The body memory (MAX_BODY_MEMORY) the request's body holds, and the part of its
    key's share (MAX_BODY_MEMORY_PER_KEY) it holds or has committed; given back early, as
    soon as the upstream has the body, and whatever is left at the end."""

    __slots__ = ("budget", "committed", "deadline", "held", "key")
    by_record = False

    def __init__(self, budget: BodyBudget, key: int) -> None:
        self.budget = budget
        self.key = key
        self.held = 0
        self.committed = 0
        self.deadline = 0.0  # (time.monotonic()) when its waits for memory must end; 0: none yet

    def give_back_now(self) -> None:
        if self.held or self.committed:
            self.budget.give_back(self.key, self.held, self.committed)
            self.held = self.committed = 0

    def release(self, outcome: Outcome) -> None:
        self.give_back_now()


class BudgetHold:
    """A request's reserved cost against the budgets it counts against: in the shared
    reckoning (PostgreSQL, `shared`) or this gateway's. Its cost is spent in both, so that
    this gateway's view stays right for when the database is away."""

    __slots__ = ("lines", "local", "reserved", "shared", "shared_held")

    def __init__(
        self,
        local: Budgets,
        shared: SharedBudgets | None,
        lines: tuple[BudgetLine, ...],
        reserved: int,
        shared_held: bool,
    ) -> None:
        self.local = local
        self.shared = shared
        self.lines = lines
        self.reserved = reserved
        self.shared_held = shared_held  # reserved in the database, not on this gateway

    @property
    def by_record(self) -> bool:
        """Reserved on this gateway's reckoning although budgets are shared: the
        database was away."""
        return self.shared is not None and not self.shared_held

    def release(self, outcome: Outcome) -> None:
        lines, reserved, now = self.lines, self.reserved, outcome.now
        cost = outcome.cost if outcome.sent else 0
        shared_cost = 0 if outcome.by_record else cost
        shared = self.shared
        if self.shared_held:
            assert shared is not None
            shared.give_back(lines, reserved, shared_cost, now)
            self.local.settle(lines, 0, cost, now)
        else:
            self.local.settle(lines, reserved, cost, now)
            if shared is not None:
                shared.give_back(lines, 0, shared_cost, now)


class UpstreamSlot:
    """A slot at the upstream the request was sent to (its in-flight count, which a
    MAX_CONCURRENT upstream's queue waits on); given back early when the request fails
    over to another upstream, and else when it ends."""

    __slots__ = ("held", "pool", "upstream")
    by_record = False

    def __init__(self, pool: Pool, upstream: Upstream) -> None:
        self.pool = pool
        self.upstream = upstream
        self.held = 1

    def give_back_now(self) -> None:
        if self.held:
            self.held = 0
            self.pool.release(self.upstream)

    def release(self, outcome: Outcome) -> None:
        self.give_back_now()
