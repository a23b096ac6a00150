"""The tables, once, for both databases. Alembic's revisions (alembic/versions) make
them; this module is what the queries are written against. Times are seconds since the
epoch as floats; flags are 0/1 integers, as the first SQLite-only releases stored them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    text,
)

from .daily import DAILY_SUMS
from .rollups import SUM_COLUMNS

metadata = MetaData()

# SQLite's rowid alias must be spelled INTEGER; PostgreSQL gets 64-bit ids.
Id = BigInteger().with_variant(Integer(), "sqlite")


def rollup_counts() -> tuple[str, ...]:
    """The count columns of usage_hourly: every sum but duration_sum."""
    return tuple(name for name in SUM_COLUMNS if name != "duration_sum")


def budget_columns() -> list[Column[object]]:
    """A budget (see budgets.py): NULL amount means none; micro-units of CURRENCY."""
    return [
        Column("budget", BigInteger),
        Column("budget_period", Text),  # total, daily, weekly, monthly
        Column("budget_alert", Integer),  # percent
    ]


# Users (customers): a record of their own, which their keys refer to. `name` is what
# keys, usage records and the CLIs call the user; a disabled user's keys stop working.
users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("email", Text),
    Column("note", Text),
    Column(
        "disabled",
        Integer,
        CheckConstraint("disabled IN (0, 1)"),
        nullable=False,
        server_default="0",
    ),
    Column("created_at", Double, nullable=False),
    Column("disabled_at", Double),
    *budget_columns(),
    # The priority class of its keys that have none (revision 0024): records.PRIORITIES;
    # NULL: normal.
    Column("priority", SmallInteger),
)

keys = Table(
    "keys",
    metadata,
    Column("id", Id, primary_key=True),
    Column("user", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("prefix", Text, nullable=False),
    Column("role", Text, CheckConstraint("role IN ('admin', 'user')"), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double),
    Column("last_used_at", Double),
    Column(
        "revoked", Integer, CheckConstraint("revoked IN (0, 1)"), nullable=False, server_default="0"
    ),
    Column("revoked_at", Double),
    # Per-key limits: NULL means "the gateway's default", 0 means "no limit".
    Column("rpm", BigInteger),
    Column("rph", BigInteger),
    Column("tokens_per_day", BigInteger),
    Column("max_concurrent", BigInteger),
    Column("models", Text),  # a JSON list of model patterns; NULL means every model
    # The user's record (its name is also in `user`, which usage records and queries use).
    Column("user_id", BigInteger),
    *budget_columns(),  # the key's own budget, besides its user's
    # The key that made this one by self-service (revision 0019); NULL: an admin did.
    Column("created_by", BigInteger),
    # Its priority class where the gateway queues (revision 0024); NULL: its user's.
    Column("priority", SmallInteger),
    # An id is never given out twice, even after a purge (revision 0017): a new key must
    # not inherit an old one's usage, spend, counters or sessions.
    sqlite_autoincrement=True,
)
Index("keys_user_id", keys.c.user_id)
Index("keys_created_by", keys.c.created_by)
# Revoked rows stay for history, so only one *active* key may carry a user + name.
Index(
    "keys_active_user_name",
    keys.c.user,
    keys.c.name,
    unique=True,
    sqlite_where=text("revoked = 0"),
    postgresql_where=text("revoked = 0"),
)

usage = Table(
    "usage",
    metadata,
    Column("id", Id, primary_key=True),
    Column("ts", Double, nullable=False),
    Column("key_id", BigInteger, nullable=False),
    Column("user", Text, nullable=False),
    Column("key_name", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("route", Text, nullable=False),
    Column("model", Text),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", BigInteger),
    Column("completion_tokens", BigInteger),
    Column("duration_ms", Double, nullable=False),
    Column("ttfb_ms", Double),
    Column("bytes_in", BigInteger, nullable=False),
    Column("bytes_out", BigInteger, nullable=False),
    Column("client_gone", Integer, nullable=False, server_default="0"),
    # 1 when the counts were counted or estimated by the gateway (a stream cut short).
    Column("estimated", Integer, nullable=False, server_default="0"),
    # What the request cost, in nano-units of CURRENCY (micro-units until revision 0014),
    # by the price in force when it started (0: free; at most pricing.MAX_COST_NANO);
    # NULL for records made before prices existed.
    Column("cost", BigInteger),
    # Model time as Ollama reported it (total_duration, nanoseconds), when it did.
    Column("model_ns", BigInteger),
    # The model as the request named it; `model` is its one identity (protocol/names.py).
    Column("model_sent", Text),
    # Who stopped it from the dashboard's Now ("user/key name" of an admin); NULL: nobody.
    Column("stopped_by", Text),
    # 1 when it was answered from the response cache, not by an upstream.
    Column("cached", Integer, nullable=False, server_default="0"),
)
Index("usage_ts", usage.c.ts)
Index("usage_key_ts", usage.c.key_id, usage.c.ts)

# Hourly sums of `usage`, of all records and per user, key, model and route (see
# rollups.py), written in the same transaction as the records: what stats and charts read.
usage_hourly = Table(
    "usage_hourly",
    metadata,
    # all, user, key, model, route, or key_model:ID (one key's per model, revision 0019)
    Column("dim", Text, primary_key=True),
    Column("hour", BigInteger, primary_key=True),  # its start, seconds since the epoch
    # "" (all), the user, the key's id, the model ("": none; key_model too) or the route
    Column("value", Text, primary_key=True),
    Column("user", Text),  # of the key (dims key and key_model only), as its records name it
    Column("key_name", Text),
    *(Column(name, BigInteger, nullable=False) for name in rollup_counts()),
    Column("duration_sum", Double, nullable=False),
)

# The records summed per UTC day and combination of key, model, route and status (see
# daily.py; revision 0024), written with them: what summaries of long periods read, for
# any filter. `model` is "" for records without one; no histograms (no percentiles).
usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", BigInteger, primary_key=True),  # its start, seconds since the epoch
    Column("key_id", BigInteger, primary_key=True),
    Column("user", Text, primary_key=True),
    Column("key_name", Text, primary_key=True),
    Column("model", Text, primary_key=True),
    Column("route", Text, primary_key=True),
    Column("status", Integer, primary_key=True),
    Column("cached", Integer, primary_key=True),  # 1: answered from the response cache
    *(Column(name, BigInteger, nullable=False) for name in DAILY_SUMS[:-1]),
    Column("duration_sum", Double, nullable=False),
)

# Requests the gateway refused (errors.Refused), per hour, reason and key (revision
# 0018): key_id -1 (user and key_name "") for those refused before a key was known, so
# made-up keys add to one row per hour and reason. Written by the usage writer with its
# batches (db/refusals.py), read by /admin/stats and the key and user views.
refusals_hourly = Table(
    "refusals_hourly",
    metadata,
    Column("hour", BigInteger, primary_key=True),  # its start, seconds since the epoch
    Column("reason", Text, primary_key=True),
    Column("key_id", BigInteger, primary_key=True),
    Column("user", Text, nullable=False),
    Column("key_name", Text, nullable=False),
    Column("requests", BigInteger, nullable=False),
)
Index("refusals_hourly_user", refusals_hourly.c.user, refusals_hourly.c.hour)

# The journal segments whose records are in `usage`: replaying one is then a no-op.
usage_segments = Table(
    "usage_segments",
    metadata,
    Column("name", Text, primary_key=True),
    Column("written_at", Double, nullable=False),
)

# Alerts waiting for their webhook, and those sent or given up (see alerts/outbox.py).
# `dedupe` (kind|subject|period) is unique: the same event raised twice, or by two
# gateways, is one row. `due_at` is when a sender may next take it: a claim moves it a
# lease ahead, so a row whose gateway died mid-send is taken again after the lease.
alerts_outbox = Table(
    "alerts_outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("dedupe", Text, nullable=False, unique=True),
    Column("kind", Text, nullable=False),
    Column("body", Text, nullable=False),  # the alert as JSON (kind, subject, text, details)
    Column("created_at", Double, nullable=False),
    Column("state", Text, nullable=False),  # due, sent, dropped
    Column("due_at", Double, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("done_at", Double),  # when sent or given up
    Column("last_error", Text),
)
Index("alerts_outbox_due", alerts_outbox.c.state, alerts_outbox.c.due_at)

# Each gateway's requests in flight as it last published them (PostgreSQL, several
# gateways, only while an admin watches Now: now.py): one row a gateway, replaced.
now_gateways = Table(
    "now_gateways",
    metadata,
    Column("gateway", Text, primary_key=True),
    Column("published_at", Double, nullable=False),  # Unix time
    Column("snapshot", Text, nullable=False),  # JSON: {"requests": [...], "queued": {...}}
)

# One row whose version goes up in the transaction of every change to `keys`: what
# other gateways poll (PostgreSQL has no PRAGMA data_version).
key_changes = Table(
    "key_changes",
    metadata,
    Column("id", Integer, CheckConstraint("id = 1"), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

# Shared limit counters, one row per key (PostgreSQL, several gateways): the windows
# start at whole minutes, hours and UTC days (Unix seconds), read off the database's
# clock so that gateways whose clocks differ still share one window.
limit_counters = Table(
    "limit_counters",
    metadata,
    Column("key_id", BigInteger, primary_key=True),
    Column("minute_start", BigInteger, nullable=False),
    Column("minute_used", BigInteger, nullable=False),
    Column("hour_start", BigInteger, nullable=False),
    Column("hour_used", BigInteger, nullable=False),
    Column("day_start", BigInteger, nullable=False),
    Column("day_tokens", BigInteger, nullable=False),
    Column("day_reserved", BigInteger, nullable=False),  # by requests still running
    Column("in_flight", BigInteger, nullable=False),
)

# Gateways sharing the counters, and the requests each holds per key as it last said: a
# gateway that stops saying (killed, its machine gone) has its slots given back.
gateway_instances = Table(
    "gateway_instances",
    metadata,
    Column("instance", Text, primary_key=True),
    Column("seen_at", Double, nullable=False),
)
instance_in_flight = Table(
    "instance_in_flight",
    metadata,
    Column("instance", Text, primary_key=True),
    Column("key_id", BigInteger, primary_key=True),
    Column("requests", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),  # tokens those requests reserved
)

# Prices per model pattern, in micro-units of CURRENCY (see pricing.py).
prices = Table(
    "prices",
    metadata,
    Column("pattern", Text, primary_key=True),
    Column("per_request", BigInteger, nullable=False),
    Column("per_million_input", BigInteger, nullable=False),
    Column("per_million_output", BigInteger, nullable=False),
    Column("per_second", BigInteger, nullable=False),
    Column("updated_at", Double, nullable=False),
)

# What each budget's owner ("user:ID", "key:ID") has spent in its current period and what
# requests still running have reserved, in nano-units (each at most pricing.MAX_SUM_NANO):
# shared by gateways on one PostgreSQL database (on SQLite the one gateway holds this in
# memory). Made by aigateway_budget_row() (revision 0014).
budget_spend = Table(
    "budget_spend",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("period", Text, nullable=False),
    Column("period_start", BigInteger, nullable=False),
    Column("spent", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
)
# The reservations each gateway holds (nano-units; given back when it goes silent).
instance_budget_held = Table(
    "instance_budget_held",
    metadata,
    Column("instance", Text, primary_key=True),
    Column("owner", Text, primary_key=True),
    Column("reserved", BigInteger, nullable=False),
)

# What Ollama said of each model at the last sync-models (/api/tags and /api/show).
models = Table(
    "models",
    metadata,
    Column("name", Text, primary_key=True),
    Column("family", Text),
    Column("parameter_size", Text),  # as Ollama writes it: "3.2B"
    Column("quantization", Text),  # "Q4_K_M"
    Column("context_length", BigInteger),
    Column("size", BigInteger),  # bytes on disk
    Column("digest", Text),
    Column("synced_at", Double, nullable=False),
)

# Model aliases (records.Alias): a name that runs another model, for everyone (scope
# "global", owner ""), a user's keys ("user", the user's name) or one key ("key", its id
# as text); the narrowest wins. `canonical` is the name's identity, unique per owner.
model_aliases = Table(
    "model_aliases",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", Text, nullable=False),
    Column("canonical", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("scope", Text, CheckConstraint("scope IN ('global', 'user', 'key')"), nullable=False),
    Column("owner", Text, nullable=False),
    Column("created_at", Double, nullable=False),
)
Index("model_aliases_owner", model_aliases.c.scope, model_aliases.c.owner,
      model_aliases.c.canonical, unique=True)  # fmt: skip

# Dashboard sessions: a key exchanged once for a random id, which the browser holds in an
# HttpOnly cookie; only its SHA-256 is stored. A session ends idle (seen_at), at
# expires_at, at sign-out, and when its key stops working.
sessions = Table(
    "sessions",
    metadata,
    Column("id_hash", Text, primary_key=True),
    Column("key_id", BigInteger, nullable=False),
    Column("created_at", Double, nullable=False),
    Column("seen_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)
Index("sessions_key_id", sessions.c.key_id)
