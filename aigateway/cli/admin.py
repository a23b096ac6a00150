"""What both key CLIs do, written once: store access, expiry rules, tables and exports.

The flag CLI and the interactive menu only ask and print; every change goes through
`Store`, the same code the server uses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO, TypeVar

import orjson
from tabulate import tabulate

from .. import __version__
from ..access.budgets import describe
from ..access.pricing import PriceList
from ..admin.exports import UsageText, csv_text
from ..admin.views import key_view, user_view, utc_text
from ..records import (
    LIMIT_FIELDS,
    MODEL_FIELDS,
    PRICE_FIELDS,
    Alias,
    Budget,
    KeyRecord,
    ModelInfo,
    Price,
    StoreError,
    UsageQuery,
    UserRecord,
    money,
)

if TYPE_CHECKING:  # (imported where used, so that --help is quick)
    from ..db.store import Store

T = TypeVar("T")
Format = Literal["table", "csv", "json"]
FORMATS: tuple[Format, ...] = ("table", "csv", "json")
EXPORT_FORMATS: tuple[Format, ...] = ("csv", "json")
BUSY_TIMEOUT_S = 2.0  # how long a CLI waits for a database locked by a long write
COLUMNS = (
    ("id", "ID"),
    ("user", "User"),
    ("key_name", "Key name"),
    ("prefix", "Prefix"),
    ("role", "Role"),
    ("created", "Created"),
    ("expires", "Expires"),
    ("last_used", "Last used"),
    ("status", "Status"),
    ("rpm", "Req/min"),
    ("rph", "Req/hour"),
    ("tokens_per_day", "Tokens/day"),
    ("max_concurrent", "Parallel"),
    ("models", "Models"),
    ("budget", "Budget"),
    ("queue_class", "Priority"),  # the class it queues in (its own, else its user's)
)


class AdminError(Exception):
    """A user mistake or an unusable database: one line for the person at the terminal."""


def with_store(db_path: str, action: Callable[[Store], Awaitable[T]], *, create: bool = False) -> T:
    """Open the store, run one action, close it. StoreError becomes AdminError.
    Only actions that make a key pass `create`: listing or exporting a mistyped path
    must say so, not leave an empty database there."""

    from ..db.store import Store  # (loaded when used: `--help` need not wait for it)

    async def go() -> T:
        store = await Store.open(db_path, create=create, busy_timeout_s=BUSY_TIMEOUT_S)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreError as exc:
        raise AdminError(str(exc)) from None


def shown(target: str) -> str:
    """The database as a person should see it: a SQLite file's full path, or the URL with
    its password masked (never the password, on a terminal or in a log)."""
    if "://" in target:
        from ..db.url import DatabaseURLError, database_from

        try:
            return database_from(target).display
        except DatabaseURLError as exc:
            raise AdminError(str(exc)) from None
    return str(Path(target).resolve())


# --- expiry ----------------------------------------------------------------------------


def expiry_from_days(text: str) -> float:
    """`N` days from now; N a whole number above 0."""
    try:
        days = int(text.strip())
    except ValueError:
        raise AdminError(f"expiry days must be a whole number, got {text!r}") from None
    if days <= 0:
        raise AdminError(f"expiry days must be above 0, got {days}")
    if days > 36500:
        raise AdminError("expiry days must be at most 36500 (100 years)")
    return time.time() + days * 86400


def expiry_from_date(text: str) -> float:
    """00:00 UTC on `YYYY-MM-DD`: the key stops working as that day begins."""
    try:
        date = dt.date.fromisoformat(text.strip())
    except ValueError:
        raise AdminError(f"expiry date must be YYYY-MM-DD, got {text!r}") from None
    start = dt.datetime.combine(date, dt.time(), tzinfo=dt.UTC)
    if start.timestamp() <= time.time():
        raise AdminError(f"expiry date must be after today (UTC), got {text}")
    return start.timestamp()


def parse_expiry(text: str) -> float | None:
    """What the menu accepts: empty (never), a number of days, or a date."""
    text = text.strip()
    if not text or text.lower() == "never":
        return None
    if text.lstrip("-").isdigit():
        return expiry_from_days(text)
    return expiry_from_date(text)


def parse_moment(text: str, what: str) -> float:
    """`YYYY-MM-DD` (00:00 UTC) or an ISO 8601 date and time (UTC unless it says)."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise AdminError(
            f"{what} must be YYYY-MM-DD or an ISO date and time, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def parse_limit(text: str, what: str) -> int | None:
    """A limit as typed: a whole number (0 for none), or `default` to follow the settings."""
    text = text.strip().lower()
    if text == "default":
        return None
    if text == "none":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise AdminError(f"{what} must be a whole number, 0 or 'none', or 'default'") from None
    if value < 0:
        raise AdminError(f"{what} must be 0 (no limit) or more, got {value}")
    return value


def parse_models(text: str) -> list[str] | None:
    """Comma-separated model patterns; `all` allows every model. Nothing at all is an
    empty list, which the store refuses: it must not quietly mean every model."""
    patterns = [p.strip() for p in text.split(",") if p.strip()]
    return None if patterns == ["all"] else patterns


# --- usage ---------------------------------------------------------------------------

USAGE_GROUPS = {
    "user": ("user",),
    "key": ("user", "key_name"),
    "model": ("model",),
    "route": ("route",),
}
USAGE_COLUMNS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "avg_ms",
    "p95_ms",
    "errors",
    "client_gone",
    "cost",
    "currency",
)


def render_usage(rows: list[dict[str, Any]], group: str, fmt: Format, currency: str) -> str:
    """Usage rows; costs as amounts of `currency` with six decimals (never floats)."""
    columns = [*USAGE_GROUPS[group], *USAGE_COLUMNS]
    shown_rows = [
        {**row, "cost": None if row["cost"] is None else money(row["cost"]), "currency": currency}
        for row in rows
    ]
    return render_rows(shown_rows, columns, fmt, "No usage in this period.")


PRICE_COLUMNS = ("pattern", *PRICE_FIELDS, "currency")


def render_prices(prices: Sequence[Price], fmt: Format, currency: str) -> str:
    """Prices as amounts of `currency` (per request, per million input and output
    tokens, per second of model time)."""
    rows = [
        {
            "pattern": p.pattern,
            **{field: money(getattr(p, field)) for field in PRICE_FIELDS},
            "currency": currency,
        }
        for p in prices
    ]
    empty = "No prices: every model is free. Set one with --set-price PATTERN --per-request ..."
    return render_rows(rows, PRICE_COLUMNS, fmt, empty)


ALIAS_COLUMNS = ("name", "target", "scope", "owner")


def render_aliases(aliases: Sequence[Alias], fmt: Format) -> str:
    """Aliases: the name clients ask for, the model it runs, and whose it is."""
    rows = [
        {"name": a.name, "target": a.target, "scope": a.scope, "owner": a.owner or None}
        for a in aliases
    ]
    empty = "No aliases. Set one with --set-alias gpt-4o-mini llama3.2"
    return render_rows(rows, ALIAS_COLUMNS, fmt, empty)


def render_rows(rows: list[dict[str, Any]], columns: Sequence[str], fmt: Format, empty: str) -> str:
    """Rows as JSON (every field), CSV or a table (`columns`, a missing value as -)."""
    if fmt == "json":
        return orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        return csv_text(rows, columns).rstrip("\n")
    if not rows:
        return empty
    table = [[row[c] if row[c] is not None else "-" for c in columns] for row in rows]
    # Amounts are text with six decimals: shown as written (tabulate would make 0.000001
    # a float, 1e-06), aligned right like the numbers.
    amounts = [n for n, c in enumerate(columns) if c in MONEY_COLUMNS]
    align = [
        "right" if n in amounts or isinstance(table[0][n], int | float) else "left"
        for n in range(len(columns))
    ]
    return tabulate(
        table,
        headers=[c.replace("_", " ") for c in columns],
        tablefmt="simple",
        disable_numparse=amounts or False,
        colalign=align,
    )


MONEY_COLUMNS = frozenset({"cost", "spent", "budget_spent", "remaining", *PRICE_FIELDS})


def write_usage_export(
    db_path: str,
    path: str,
    fmt: Format,
    since: float | None,
    until: float | None,
    *,
    force: bool,
    user: str | None = None,
) -> int:
    """Every usage record in the period (of one user, with `user`), one row (CSV) or
    object (JSON) each, oldest first. Written a chunk at a time as it is read, so any
    number of records takes little memory; the file appears, whole, only at the end."""
    _check_target(path, force)
    where = UsageQuery(since=since, until=until, user=user)

    async def export(store: Store) -> int:
        text = UsageText(fmt)
        with _staged(path) as out:
            out.write(text.head())
            async for records in store.usage_chunks(where, newest_first=False):
                out.write(text.rows(records))
            out.write(text.tail())
        return text.count

    return with_store(db_path, export)


# --- rendering -------------------------------------------------------------------------


def _flat(view: dict[str, Any]) -> dict[str, Any]:
    """A key view for CSV: the model list as one space-separated cell."""
    models = view["models"]
    return {**view, "models": " ".join(models) if models else "", "budget": _budget_cell(view)}


def _budget_cell(view: dict[str, Any]) -> str:
    budget = view["budget"]
    if budget is None:
        return ""
    return describe(Budget(budget["amount"], budget["period"], budget["alert_percent"]))


def _table_row(record: KeyRecord) -> list[Any]:
    view = key_view(record)
    view["created"] = utc_text(record.created_at, iso=False)
    view["expires"] = utc_text(record.expires_at, iso=False) or "-"
    view["last_used"] = utc_text(record.last_used_at, iso=False) or "-"
    for field in LIMIT_FIELDS:
        view[field] = {None: "default", 0: "none"}.get(view[field], view[field])
    view["models"] = ", ".join(view["models"]) if view["models"] else "all"
    view["budget"] = _budget_cell(view) or "-"
    return [view[name] for name, _ in COLUMNS]


def render(records: Sequence[KeyRecord], fmt: Format) -> str:
    if fmt == "json":
        views = [key_view(r) for r in records]
        return orjson.dumps(views, option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        return _csv([_flat(key_view(r)) for r in records])
    if not records:
        return "No keys."
    rows = [_table_row(r) for r in records]
    return tabulate(rows, headers=[title for _, title in COLUMNS], tablefmt="simple")


USER_COLUMNS = (
    "user", "email", "note", "status", "created", "disabled", "active_keys", "budget",
    "priority",
)  # fmt: skip


def render_users(records: Sequence[UserRecord], fmt: Format) -> str:
    empty = "No users yet: -g USER KEY_NAME makes one with its first key, --add-user alone."
    views = [user_view(r) for r in records]
    if fmt != "json":
        views = [{**view, "budget": _budget_cell(view) or None} for view in views]
    return render_rows(views, USER_COLUMNS, fmt, empty)


def sync_models(db_path: str, targets: Sequence[tuple[str, dict[str, str]]]) -> int:
    """Ask each Ollama (URL, headers) for its models and store what they say, a model
    two of them have as the first says; how many there were. One that cannot be asked
    stops the sync with one line (nothing is replaced)."""
    from ..upstreams.modelsync import ModelSyncError, fetch_models

    found: dict[str, ModelInfo] = {}
    for url, headers in targets:
        try:
            listed = asyncio.run(fetch_models(url, headers))
        except ModelSyncError as exc:
            raise AdminError(str(exc)) from None
        for info in listed:
            found.setdefault(info.name, info)
    models = list(found.values())
    with_store(db_path, lambda store: store.replace_models(models), create=True)
    return len(models)


MODEL_COLUMNS = (
    "name", "family", "parameter_size", "quantization", "context_length", "size_gb",
    *PRICE_FIELDS, "currency",
)  # fmt: skip


def render_models(
    found: Sequence[ModelInfo], prices: Sequence[Price], fmt: Format, currency: str
) -> str:
    """Models as the last sync-models found them, each with the price it pays (the most
    specific pattern; empty when free)."""
    price_list = PriceList(list(prices))
    rows = []
    for info in found:
        price = price_list.for_model(info.name)
        rows.append(
            {
                **{field: getattr(info, field) for field in MODEL_FIELDS},
                "size_gb": None if info.size is None else round(info.size / 1e9, 2),
                **{
                    field: None if price is None else money(getattr(price, field))
                    for field in PRICE_FIELDS
                },
                "price_pattern": None if price is None else price.pattern,
                "currency": currency,
            }
        )
    empty = "No models yet: --sync-models asks Ollama for them."
    return render_rows(rows, MODEL_COLUMNS, fmt, empty)


INVOICE_COLUMNS = ("model", "requests", "prompt_tokens", "completion_tokens", "cost")


def render_invoice(invoice: dict[str, Any], fmt: Format) -> str:
    """An invoice: JSON as built (costs in micro-units); CSV its lines and a TOTAL row;
    a table under a heading naming the user, the period and the currency."""
    if fmt == "json":
        return orjson.dumps(invoice, option=orjson.OPT_INDENT_2).decode()
    rows = [{**line, "cost": money(line["cost"])} for line in invoice["lines"]]
    total = invoice["total"]
    rows.append({"model": "TOTAL", **total, "cost": money(total["cost"])})
    if fmt == "csv":
        return render_rows(rows, INVOICE_COLUMNS, fmt, "")
    email = f" <{invoice['email']}>" if invoice["email"] else ""
    head = (
        f"Invoice for {invoice['user']}{email}, from {invoice['since']}"
        f" until {invoice['until'] or 'now'}, in {invoice['currency']}"
    )
    if total["unpriced_requests"]:
        head += f" ({total['unpriced_requests']} requests made before prices have no cost)"
    return f"{head}\n{render_rows(rows, INVOICE_COLUMNS, 'table', '')}"


BUDGET_KEY_COLUMNS = (
    "key_name", "spent", "budget", "budget_spent", "remaining", "resets_at",
)  # fmt: skip


def render_budget_report(report: dict[str, Any], fmt: Format) -> str:
    """check-budget: the user's budget line, then one row per active key (its spend in
    the user's period, and its own budget where it has one)."""
    if fmt == "json":
        return orjson.dumps(report, option=orjson.OPT_INDENT_2).decode()
    currency = report["currency"]
    rows = []
    for key in report["keys"]:
        own = key["budget"]
        rows.append(
            {
                "key_name": key["key_name"],
                "spent": money(key["spent"]),
                "budget": _budget_cell(key) or None,
                "budget_spent": None if own is None else money(own["spent"]),
                "remaining": None if own is None else money(own["remaining"]),
                "resets_at": None if own is None else own["resets_at"] or "never",
            }
        )
    if fmt == "csv":
        return render_rows(rows, BUDGET_KEY_COLUMNS, fmt, "")
    budget = report["budget"]
    if budget is None:
        head = (
            f"User {report['user']} has no budget; spent {money(report['spent'])} {currency}"
            f" this {report['period'].removesuffix('ly')} (since {report['period_start']})."
        )
    else:
        state = "EXHAUSTED" if budget["exhausted"] else "ok"
        alert = "" if budget["alert_percent"] is None else f", alert at {budget['alert_percent']}%"
        head = (
            f"User {report['user']}: {budget['period']} budget {money(budget['amount'])}"
            f" {currency}, spent {money(budget['spent'])}, remaining"
            f" {money(budget['remaining'])}, resets {budget['resets_at'] or 'never'}"
            f"{alert} [{state}]"
        )
    table = render_rows(rows, BUDGET_KEY_COLUMNS, "table", "(no active keys)")
    return f"{head}\n{table}"


def _csv(rows: list[dict[str, Any]]) -> str:
    return csv_text(rows, [name for name, _ in COLUMNS]).rstrip("\n")


# --- export ----------------------------------------------------------------------------


def export_format(path: str, requested: str | None) -> Format:
    """`requested`, else the file's extension (.csv or .json)."""
    if requested is not None:
        if requested not in EXPORT_FORMATS:
            raise AdminError(f"export format must be csv or json, got {requested!r}")
        return requested
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in EXPORT_FORMATS:
        return suffix
    raise AdminError(f"cannot tell the format of {path!r}: name it .csv or .json, or give a format")


def export_document(records: Sequence[KeyRecord], fmt: Format) -> str:
    """Users and key metadata. JSON also summarises each user; CSV is one row per key."""
    views = [key_view(r) for r in records]
    if fmt == "csv":
        return _csv([_flat(v) for v in views]) + "\n"
    users: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = users.setdefault(record.user, {"user": record.user, "keys": 0, "active_keys": 0})
        entry["keys"] += 1
        entry["active_keys"] += record.status() == "active"
    from ..db.migrate import head_revision

    document = {
        "exported_at": utc_text(time.time()),
        "aigateway_version": __version__,
        "schema_version": int(head_revision()),
        "users": sorted(users.values(), key=lambda u: u["user"]),
        "keys": views,
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"


def write_export(db_path: str, path: str, fmt: Format, *, force: bool) -> int:
    """Write the export to `path`; return how many keys it holds."""
    _check_target(path, force)
    records = with_store(db_path, lambda store: store.list_keys())
    _write(path, export_document(records, fmt))
    return len(records)


def _check_target(path: str, force: bool) -> None:
    target = Path(path)
    if target.is_dir():
        raise AdminError(f"{path}: is a folder")
    if not target.parent.is_dir():
        raise AdminError(f"{path}: the folder {str(target.parent)!r} does not exist")
    if target.exists() and not force:
        raise AdminError(f"{path} exists; choose another name or pass --force to overwrite it")


def _write(path: str, text: str) -> None:
    with _staged(path) as out:
        out.write(text)


@contextmanager
def _staged(path: str) -> Iterator[TextIO]:
    """A file written beside `path` and renamed to it when the block ends well, removed
    when it does not: an export cut midway (the database failing, a full disk, Ctrl-C)
    never leaves a file that looks complete, nor spoils one `--force` would replace."""
    target = Path(path)
    part = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with part.open("x", encoding="utf-8", newline="") as out:
            yield out
        os.replace(part, target)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise AdminError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
