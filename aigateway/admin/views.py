"""How a key and a user are shown to people, in tables, exports and the admin API: a
key's metadata only, never the key or its hash."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ..access.budgets import budget_json
from ..records import LIMIT_FIELDS, PRIORITY_NAMES, KeyRecord, UserRecord, priority_name


def utc_text(timestamp: float | None, iso: bool = True) -> str | None:
    """ISO 8601 UTC (`2026-11-23T12:00:00Z`) or, for tables, `2026-11-23 12:00`."""
    if timestamp is None:
        return None
    try:
        moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    except (OverflowError, OSError, ValueError):  # a time no calendar holds (old rows)
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ" if iso else "%Y-%m-%d %H:%M")


def key_view(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "user": record.user,
        "key_name": record.name,
        "prefix": record.prefix,
        "role": record.role,
        "created": utc_text(record.created_at),
        "expires": utc_text(record.expires_at),
        "last_used": utc_text(record.last_used_at),
        "status": record.status(),
        # None: the gateway's default applies; 0: no limit.
        **{field: getattr(record.limits, field) for field in LIMIT_FIELDS},
        "models": list(record.models) if record.models is not None else None,
        "budget": budget_json(record.budget),  # the key's own; its user's is on the user
        "created_by": record.created_by,  # the key that made it (self-service); null: an admin
        "priority": priority_name(record.priority),  # its own class; null: its user's
        "queue_class": PRIORITY_NAMES[record.queue_class],  # the class it queues in
    }


def user_view(record: UserRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "user": record.name,
        "email": record.email,
        "note": record.note,
        "status": "disabled" if record.disabled else "active",
        "created": utc_text(record.created_at),
        "disabled": utc_text(record.disabled_at),
        "active_keys": record.active_keys,
        "budget": budget_json(record.budget),
        "priority": priority_name(record.priority) or "normal",
    }
