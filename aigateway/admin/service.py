"""Every admin action, once, for the admin HTTP API (and so the dashboard, which calls
it) and both CLIs: create, change, revoke and purge keys; create and change users;
set and remove prices; set and remove model aliases; and self-service, a user-role
key making and revoking keys of its own (SELF_SERVICE_KEYS), with the rules of what it
may make.

Each action is one transaction in the store: its input is checked whole before anything
is written, and a change refused in any part (a bad flag beside a good email, a budget
beside a limit) changes nothing. The callers only translate: the API from JSON and to
its status codes, the CLIs from flags or prompts and to one line on a terminal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..access.allowlist import uncovered
from ..access.budgets import period_start
from ..access.limits import Limits
from ..records import (
    LIMIT_FIELDS,
    Alias,
    AliasScope,
    Budget,
    InvalidInputError,
    KeyLimits,
    KeyRecord,
    NotPermittedError,
    Price,
    Role,
    UserRecord,
    check_allow_list,
    check_expiry,
    check_limits,
    check_name,
    micro,
    money,
)

if TYPE_CHECKING:  # (the CLIs import this module; the store is loaded when used)
    from ..db.store import Store

log = logging.getLogger("aigateway.admin")


async def create_key(
    store: Store,
    user: str,
    name: str,
    role: Role = "user",
    expires_at: float | None = None,
    limits: KeyLimits = KeyLimits(),
    models: Sequence[str] | None = None,
    budget: Budget | None = None,
    priority: str | None = None,
) -> tuple[KeyRecord, str]:
    """A new key of `user` (made when missing) and its secret, shown once; `priority`
    its class where the gateway queues (None: its user's)."""
    return await store.create_key(
        user, name, role, expires_at, limits, models, budget, priority=priority
    )


async def change_key(store: Store, key_id: int, changes: Mapping[str, object]) -> KeyRecord:
    """Change an active key's role, expiry, limits, allow-list, priority or budget (`budget`: a
    Budget, or None to remove it); the fields not named keep their values."""
    return await store.update_key(key_id, changes)


async def change_active_key(
    store: Store, user: str, name: str, changes: Mapping[str, object]
) -> KeyRecord:
    """As change_key, for the active key `user`/`name`, found in the same transaction."""
    return await store.update_key((user, name), changes)


async def revoke_key(store: Store, key_id: int) -> KeyRecord:
    """Revoke a key (the row stays for history; revoking a revoked key is no change)."""
    return await store.revoke_key_id(key_id)


async def revoke_key_by_preview(store: Store, preview: str) -> KeyRecord:
    """Revoke the key shown as `preview` (its display prefix, `aig_` and 8 characters);
    AmbiguousKeyError when several keys not yet revoked show it."""
    return await store.revoke_key_by_prefix(preview)


async def revoke_active_key(store: Store, user: str, name: str) -> KeyRecord:
    return await store.revoke_key(user, name)


async def purge_revoked(store: Store, user: str, name: str) -> int:
    """Delete the revoked rows of `user`/`name` for good; how many went."""
    return await store.purge_revoked(user, name)


async def create_user(
    store: Store,
    name: str,
    email: str | None = None,
    note: str | None = None,
    budget: Budget | None = None,
    priority: str | None = None,
) -> UserRecord:
    return await store.create_user(name, email, note, budget, priority)


async def change_user(store: Store, name: str, changes: Mapping[str, object]) -> UserRecord:
    """Change a user's email, note, budget (a Budget or None), priority or `disabled` (every key
    of a disabled user stops working, its sessions end)."""
    return await store.update_user(name, changes)


async def set_price(store: Store, price: Price) -> Price:
    return await store.set_price(price)


async def remove_price(store: Store, pattern: str) -> None:
    await store.remove_price(pattern)


# --- Self-service: a user-role key makes keys of its own user ----------------------------

OWN_KEY_FIELDS = frozenset(
    {"user", "name", "role", "expires_at", "models", "budget", *LIMIT_FIELDS}
)


def may_make_keys(key: KeyRecord, cap: int) -> bool:
    """Whether `key` may make keys by self-service: the feature is on (`cap`, from
    SELF_SERVICE_KEYS, above 0), and it is a user-role key an admin made (a key made by
    self-service makes none: no chains of keys that outlive what an admin can see)."""
    return cap > 0 and key.role == "user" and key.created_by is None


async def create_own_key(
    store: Store, creator: KeyRecord, cap: int, defaults: Limits, asked: Mapping[str, Any]
) -> tuple[KeyRecord, str]:
    """A new key made by `creator` for its own user, and its secret (shown once). `asked`
    holds the fields given (OWN_KEY_FIELDS, values checked for type); a field not given
    is the creator's own (expiry, limits, allow-list; budget: what remains of the
    creator's). NotPermittedError when the key would be more than its creator: another
    user, an admin, a later expiry, a wider allow-list, a higher limit, a budget beyond
    the creator's remaining one; CapReachedError past `cap` active keys of its making."""
    from ..db.keyrows import Creator  # (here: the CLIs import this module, without the store)

    if not may_make_keys(creator, cap):
        raise NotPermittedError(_why_not(creator, cap))
    asked = _checked(asked)
    remaining = await _remaining_budget(store, creator)
    terms = own_key_terms(creator, asked, defaults, remaining)

    def still_within(now: KeyRecord) -> None:  # the creator as it is in the transaction
        if not may_make_keys(now, cap):
            raise NotPermittedError(_why_not(now, cap))
        own_key_terms(now, terms, defaults, remaining)

    record, secret = await store.create_key(
        creator.user,
        terms["name"],
        "user",
        terms["expires_at"],
        KeyLimits(**{field: terms[field] for field in LIMIT_FIELDS}),
        terms["models"],
        terms["budget"],
        creator=Creator(creator.id, cap, still_within),
    )
    log.info(
        "self-service: key %d (%s...) of user %r made key %d (%s..., %r)",
        creator.id, creator.prefix, creator.user, record.id, record.prefix, record.name,
    )  # fmt: skip
    return record, secret


async def revoke_own_key(store: Store, creator: KeyRecord, key_id: int) -> KeyRecord:
    """Revoke a key `creator` made (and no other); also once the feature is off or the
    creator may no longer make keys: taking a key away is always safe."""
    record = await store.revoke_key_made_by(creator.id, key_id)
    log.info(
        "self-service: key %d (%s...) of user %r revoked key %d (%s..., %r)",
        creator.id, creator.prefix, creator.user, record.id, record.prefix, record.name,
    )  # fmt: skip
    return record


async def own_keys(store: Store, creator: KeyRecord, cap: int) -> list[KeyRecord]:
    """The keys `creator` made, revoked ones too."""
    if not may_make_keys(creator, cap):
        raise NotPermittedError(_why_not(creator, cap))
    return await store.keys_made_by(creator.id)


def _checked(asked: Mapping[str, Any]) -> dict[str, Any]:
    """`asked` with each value checked as any key's is (InvalidInputError: 400), before
    it is compared with the creator's."""
    unknown = set(asked) - OWN_KEY_FIELDS
    if unknown:
        raise InvalidInputError(f"cannot set {', '.join(sorted(unknown))}")
    checked = dict(asked)
    check_name("key name", asked["name"])
    if "expires_at" in asked:
        checked["expires_at"] = check_expiry(asked["expires_at"])
    if "models" in asked:
        checked["models"] = check_allow_list(asked["models"])
    check_limits(KeyLimits(**{f: asked[f] for f in LIMIT_FIELDS if f in asked}))
    return checked


def _why_not(key: KeyRecord, cap: int) -> str:
    if cap <= 0:
        return "self-service keys are off on this gateway (SELF_SERVICE_KEYS=0)"
    if key.role != "user":
        return "an admin key makes keys with POST /admin/keys, not by self-service"
    return "a key made by self-service cannot make keys itself"


async def _remaining_budget(store: Store, creator: KeyRecord) -> int | None:
    """What remains of the creator's own budget in its current period (micro-units), by
    the usage records written so far; None when it has no budget of its own."""
    if creator.budget is None:
        return None
    since = period_start(creator.budget.period, time.time())
    spent = await store.spend_since(f"key:{creator.id}", since)
    return max(0, micro(creator.budget.nano - spent))


def own_key_terms(
    creator: KeyRecord, asked: Mapping[str, Any], defaults: Limits, remaining: int | None
) -> dict[str, Any]:
    """Every field of a key `creator` makes, from those `asked` and the creator's own;
    NotPermittedError naming the first that would make it more than its creator."""
    if asked.get("role", "user") != "user":
        raise NotPermittedError("a key made by self-service is a user key; role must be user")
    if asked.get("user", creator.user) != creator.user:
        raise NotPermittedError(f"this key may make keys of its own user ({creator.user!r}) only")
    terms: dict[str, Any] = {"name": asked["name"]}
    terms["expires_at"] = expires_at = asked.get("expires_at", creator.expires_at)
    if creator.expires_at is not None and (expires_at is None or expires_at > creator.expires_at):
        raise NotPermittedError(
            "expires_at must be no later than this key's own expiry"
            f" ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(creator.expires_at))})"
        )
    terms["models"] = models = asked.get("models", creator.models)
    if creator.models is not None:
        wider = list(creator.models) if models is None else uncovered(models, creator.models)
        if wider:
            raise NotPermittedError(
                f"models may allow no model this key may not use ({', '.join(creator.models)});"
                f" not within them: {', '.join(wider)}"
            )
    mine = Limits.resolve(creator.limits, defaults)
    for field in LIMIT_FIELDS:
        terms[field] = value = asked.get(field, getattr(creator.limits, field))
        ceiling = getattr(mine, field)
        wanted = getattr(Limits.resolve(KeyLimits(**{field: value}), defaults), field)
        if ceiling and not 0 < wanted <= ceiling:  # (0 is no limit: above any)
            raise NotPermittedError(f"{field} must be from 1 to this key's own, {ceiling}")
    terms["budget"] = _own_key_budget(creator, asked, remaining)
    return terms


def _amount(micro_units: int) -> str:
    return f"{money(micro_units)} ({micro_units} micro-units)"


def _own_key_budget(
    creator: KeyRecord, asked: Mapping[str, Any], remaining: int | None
) -> Budget | None:
    """A made key's own budget: any (or none) when its creator has none of its own (their
    user's budget binds both); else one of at most what remains of the creator's, for
    the creator's period or in total (by default exactly that remaining amount)."""
    mine = creator.budget
    if mine is None or remaining is None:
        return asked.get("budget")
    budget: Budget | None = asked.get("budget", Budget(remaining, mine.period, mine.alert))
    if budget is None:
        raise NotPermittedError(
            f"a budget must be set: this key has one, of which {_amount(remaining)} remains"
        )
    if budget.amount > remaining:
        raise NotPermittedError(
            f"a budget must be at most what remains of this key's own, {_amount(remaining)}"
        )
    if budget.period not in (mine.period, "total"):
        raise NotPermittedError(f"a budget's period must be {mine.period} (this key's) or total")
    return budget


def alias_owner(user: str | None = None, key_id: int | None = None) -> tuple[AliasScope, str]:
    """Whose an alias is: one user's keys, one key, or (neither named) everyone's."""
    if user is not None and key_id is not None:
        raise InvalidInputError("an alias is for a user or for a key, not both")
    if key_id is not None:
        return "key", str(key_id)
    if user is not None:
        return "user", user
    return "global", ""


async def list_aliases(store: Store) -> list[Alias]:
    return await store.list_aliases()


async def set_alias(
    store: Store, name: str, target: str, user: str | None = None, key_id: int | None = None
) -> Alias:
    """Make `name` run `target` for everyone, `user`'s keys or key `key_id` (the
    narrowest wins); the same name and owner again points it at another model."""
    return await store.set_alias(name, target, *alias_owner(user, key_id))


async def remove_alias(
    store: Store, name: str, user: str | None = None, key_id: int | None = None
) -> Alias:
    return await store.remove_alias(name, *alias_owner(user, key_id))
