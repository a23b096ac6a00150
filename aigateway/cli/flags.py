"""gen_api_key_cli.py: manage keys with flags, for people and for scripts.

Every action goes through `Store`, the same code the server uses. User errors end
with one line on stderr and exit status 1; the database is left as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import click

from ..access.budgets import period_start
from ..admin import service
from ..admin.reports import user_budget_report, user_invoice
from ..records import (
    PERIODS,
    PRICE_FIELDS,
    Budget,
    BudgetError,
    KeyLimits,
    KeyRecord,
    ModelInfo,
    Price,
    PriceError,
    Role,
    UsageQuery,
    UserRecord,
    check_budget,
    parse_money,
)
from ..settings import currency_setting, database_target, ollama_setting
from .admin import (
    FORMATS,
    USAGE_GROUPS,
    AdminError,
    expiry_from_date,
    expiry_from_days,
    export_format,
    parse_limit,
    parse_models,
    parse_moment,
    render,
    render_aliases,
    render_budget_report,
    render_invoice,
    render_models,
    render_prices,
    render_usage,
    render_users,
    shown,
    sync_models,
    with_store,
    write_export,
    write_usage_export,
)
from .common import OneLineErrors

if TYPE_CHECKING:  # (cli/admin.py opens it when an action runs)
    from ..db.store import Store

HELP = """Create, list, change, revoke and export aigateway API keys; report usage.

\b
Examples:
  gen_api_key_cli.py -g alice laptop                 print a new key for alice
  KEY=$(gen_api_key_cli.py -g ci runner --expires-days 30)
  gen_api_key_cli.py -g root ops --role admin --expires 2027-12-31
  gen_api_key_cli.py -g bob phone --rpm 20 --tokens-per-day 100000 --models 'llama3*,qwen2.5:0.5b'
  gen_api_key_cli.py --set bob phone --rpm none --max-concurrent 2 --models all
  gen_api_key_cli.py -l                              table of all keys, limits, models
  gen_api_key_cli.py -l --format json | jq '.[] | select(.status == "active")'
  gen_api_key_cli.py -d alice laptop                 revoke alice's key "laptop"
  gen_api_key_cli.py -e keys.csv                     export users and key metadata
  gen_api_key_cli.py --usage --by model --since 2026-11-01
  gen_api_key_cli.py --usage-export nov.csv --since 2026-11-01 --until 2026-12-01
  gen_api_key_cli.py --purge alice laptop            delete a revoked key's row for good
  gen_api_key_cli.py --add-user acme --email ops@acme.example --note 'invoice monthly'
  gen_api_key_cli.py --users                          users (customers), status, keys
  gen_api_key_cli.py --disable-user acme              every key of acme stops working
  gen_api_key_cli.py --set-price 'llama3*' --per-million-input 0.10 --per-million-output 0.40
  gen_api_key_cli.py --set-price '*' --per-second 0.0005      a GPU's time, for every model
  gen_api_key_cli.py --prices                         prices in CURRENCY (default USD)
  gen_api_key_cli.py --set-alias gpt-4o-mini llama3.2  clients asking gpt-4o-mini run llama3.2
  gen_api_key_cli.py --set-alias gpt-4o qwen3:8b --user bob   only for bob's keys
  gen_api_key_cli.py --aliases                        aliases: name, target, whose
  gen_api_key_cli.py --set-user acme --budget 50 --period monthly --alert 80
  gen_api_key_cli.py --set bob phone --budget 2.50 --period daily   a key's own budget
  gen_api_key_cli.py --check-budget acme              spent, remaining, reset, per key
  gen_api_key_cli.py --set-user batch --priority low  batch's keys queue behind others
  gen_api_key_cli.py --set ann chat --priority high   this key's requests queue first
  gen_api_key_cli.py --sync-models                    store what Ollama says of its models
  gen_api_key_cli.py --list-models                    those models, with their prices
  gen_api_key_cli.py --invoice acme --since 2026-11-01 --until 2026-12-01 --format csv
                                                      per model: requests, tokens, cost; total
  gen_api_key_cli.py --usage-export acme-nov.csv --user acme --since 2026-11-01 --until 2026-12-01

\b
Limits (--rpm, --rph, --tokens-per-day, --max-concurrent) take a number, 'none'
(or 0) for no limit, or 'default' to follow the gateway's DEFAULT_* settings.
--models takes comma-separated patterns ('llama3*'); 'all' lifts the allow-list.

\b
Aliases (--set-alias NAME MODEL, --remove-alias NAME) are for everyone, or with --user
USER for one user's keys, or with --key-id ID for one key; the narrowest wins. Names
match without regard to case; an alias may not point to an alias.

\b
Budgets (--budget AMOUNT in CURRENCY, or 'none') go on a user (--add-user, --set-user:
all its keys together) or on one key (-g, --set). --period is total, daily, weekly or
monthly (default), starting at 00:00 UTC; --alert PCT logs a warning once per period.

\b
Priorities (--priority high, normal or low) order the requests that wait for a busy
upstream (one at its max_concurrent): higher first, keys in turn within a class, and
none waits more than 30 s behind others. On a user (--add-user, --set-user) for its keys;
on a key (-g, --set) for it alone ('none': its user's).

\b
The billing seed's commands: create-customer = --add-user, list-customers = --users,
generate-key = -g, revoke-key = -d, list-keys = -l, usage-report = --usage,
check-budget = --check-budget, export-usage = --usage-export, set-pricing = --set-price,
list-models = --list-models, sync-models = --sync-models.

\b
Revoking (-d) keeps the row, so usage history stays meaningful and the name can be
reused. To delete revoked rows for good, use --purge USER KEY_NAME.

The database is --db, else DATABASE_URL, else TOKEN_DB_PATH, from the environment
or .env (here, else in the project folder), else tokens.db beside that .env or in
the project folder, exactly as the server finds it. A new key is printed once, alone on
stdout; it cannot be shown again. Exports never contain keys or their hashes.
"""

# Each action's flag, and the name of its option in click's keyword arguments.
ACTIONS = {
    "-g": "generate", "-l": "list_", "-d": "delete", "-e": "export", "--set": "set_",
    "--usage": "usage", "--usage-export": "usage_export", "--purge": "purge",
    "--add-user": "add_user", "--users": "users", "--set-user": "set_user",
    "--disable-user": "disable_user", "--enable-user": "enable_user",
    "--set-price": "set_price", "--prices": "prices", "--remove-price": "remove_price",
    "--check-budget": "check_budget", "--sync-models": "sync_models",
    "--list-models": "list_models", "--invoice": "invoice",
    "--set-alias": "set_alias", "--aliases": "aliases", "--remove-alias": "remove_alias",
}  # fmt: skip
_ALIAS_ACTIONS = ("--set-alias", "--aliases", "--remove-alias")


@contextmanager
def _clear_errors() -> Iterator[None]:
    try:
        yield
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None


@click.command(
    cls=OneLineErrors, help=HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "-g", "--generate", nargs=2, metavar="USER KEY_NAME", help="Create a key and print it once."
)
@click.option("-l", "--list", "list_", is_flag=True, help="List keys (see --format).")
@click.option(
    "-d", "--delete", nargs=2, metavar="USER KEY_NAME", help="Revoke a key (the row is kept)."
)
@click.option("-e", "--export", metavar="FILE", help="Export users and key metadata to FILE.")
@click.option(
    "--set",
    "set_",
    nargs=2,
    metavar="USER KEY_NAME",
    help="Change a key's role, limits, models, expiry.",
)
@click.option("--usage", is_flag=True, help="Usage report (see --by, --since, --until).")
@click.option("--usage-export", metavar="FILE", help="Export usage records to FILE.")
@click.option(
    "--purge", nargs=2, metavar="USER KEY_NAME", help="Delete a revoked key's row for good."
)
@click.option(
    "--add-user", metavar="USER", help="Create a user (customer) with no key yet (see --email)."
)
@click.option("--users", is_flag=True, help="List users, their status and keys (see --format).")
@click.option("--set-user", metavar="USER", help="Change a user's --email, --note or --budget.")
@click.option("--disable-user", metavar="USER", help="Disable a user: all its keys stop working.")
@click.option("--enable-user", metavar="USER", help="Enable a disabled user again.")
@click.option(
    "--set-price",
    metavar="PATTERN",
    help="Set the price of models matching PATTERN ('llama3*', 'qwen2.5:0.5b', '*').",
)
@click.option("--prices", is_flag=True, help="List prices (see --format).")
@click.option("--remove-price", metavar="PATTERN", help="Remove a price.")
@click.option(
    "--set-alias",
    nargs=2,
    metavar="NAME MODEL",
    help="Make requests for NAME run MODEL (see --user, --key-id).",
)
@click.option("--aliases", is_flag=True, help="List model aliases (see --format).")
@click.option("--remove-alias", metavar="NAME", help="Remove an alias (see --user, --key-id).")
@click.option(
    "--key-id", metavar="ID", type=int, help="With --set-alias or --remove-alias: one key's."
)
@click.option("--per-request", metavar="AMOUNT", help="With --set-price: per request.")
@click.option(
    "--per-million-input", metavar="AMOUNT", help="With --set-price: per 1M prompt tokens."
)
@click.option(
    "--per-million-output", metavar="AMOUNT", help="With --set-price: per 1M output tokens."
)
@click.option("--per-second", metavar="AMOUNT", help="With --set-price: per second of model time.")
@click.option(
    "--check-budget", metavar="USER", help="A user's budget: spent, remaining, reset, per key."
)
@click.option(
    "--sync-models",
    is_flag=True,
    help="Store what Ollama says of each of its models (family, size, context length).",
)
@click.option("--list-models", is_flag=True, help="The synced models with their prices.")
@click.option(
    "--ollama",
    metavar="URL",
    help="With --sync-models: Ollama's address (default: OLLAMA_BASE_URL, as the server).",
)
@click.option(
    "--invoice",
    metavar="USER",
    help="A user's usage per model and the total cost, for --since/--until (default: this month).",
)
@click.option("--budget", metavar="AMOUNT", help="A budget in CURRENCY, or 'none' (see below).")
@click.option(
    "--period",
    type=click.Choice(list(PERIODS)),
    help="With --budget: when it resets (default monthly).",
)
@click.option("--alert", metavar="PCT", help="With --budget: log when this % is spent.")
@click.option("--email", metavar="ADDRESS", help="With --add-user or --set-user ('' clears).")
@click.option("--note", metavar="TEXT", help="With --add-user or --set-user ('' clears).")
@click.option("--role", type=click.Choice(["user", "admin"]), help="Role (new keys: user).")
@click.option(
    "--priority",
    type=click.Choice(["high", "normal", "low", "none"]),
    help="Queue class, where upstreams are full (key: none = its user's; user: default normal).",
)
@click.option("--expires-days", metavar="N", help="Expires after N days.")
@click.option("--expires", metavar="YYYY-MM-DD", help="Stops working at 00:00 UTC on this day.")
@click.option("--no-expiry", is_flag=True, help="With --set: never expires.")
@click.option("--rpm", metavar="N", help="Requests per minute.")
@click.option("--rph", metavar="N", help="Requests per hour.")
@click.option("--tokens-per-day", metavar="N", help="Prompt + completion tokens per day (UTC).")
@click.option("--max-concurrent", metavar="N", help="Requests at once.")
@click.option("--models", metavar="PATTERNS", help="Allowed models, comma-separated; 'all'.")
@click.option(
    "--by",
    type=click.Choice(list(USAGE_GROUPS)),
    default="key",
    show_default=True,
    help="Grouping of --usage.",
)
@click.option(
    "--user",
    metavar="USER",
    help="With --usage or --usage-export: one user's usage; with an alias: one user's alias.",
)
@click.option("--since", metavar="DATE", help="Usage from this UTC date or time.")
@click.option("--until", metavar="DATE", help="Usage before this UTC date or time.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Output of -l and --usage (default table), or of exports (default: file name).",
)
@click.option("--force", is_flag=True, help="Let exports overwrite an existing file.")
@click.option(
    "--db",
    "db_path",
    metavar="PATH|URL",
    help="Key database: a SQLite file or DATABASE_URL (default: DATABASE_URL, else TOKEN_DB_PATH).",
)
def cli(**options: Any) -> None:
    o = options
    chosen = [flag for flag, name in ACTIONS.items() if o[name]]
    if len(chosen) != 1:
        raise click.UsageError(
            f"choose one action: {', '.join(ACTIONS)}"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    action = chosen[0]
    key_options = (
        "role",
        "expires_days",
        "expires",
        "rpm",
        "rph",
        "tokens_per_day",
        "max_concurrent",
        "models",
    )
    if action not in ("-g", "--set") and any(o[k] is not None for k in key_options):
        raise click.UsageError("--role, --expires*, limits and --models go with -g or --set")
    if action not in ("--add-user", "--set-user") and (
        o["email"] is not None or o["note"] is not None
    ):
        raise click.UsageError("--email and --note go with --add-user or --set-user")
    if action != "--set-price" and any(o[field] is not None for field in PRICE_FIELDS):
        raise click.UsageError("--per-* amounts go with --set-price")
    if (o["period"] is not None or o["alert"] is not None) and o["budget"] is None:
        raise click.UsageError("--period and --alert go with --budget")
    if o["budget"] is not None and action not in ("-g", "--set", "--add-user", "--set-user"):
        raise click.UsageError("--budget goes with -g, --set, --add-user or --set-user")
    if o["priority"] is not None and action not in ("-g", "--set", "--add-user", "--set-user"):
        raise click.UsageError("--priority goes with -g, --set, --add-user or --set-user")
    if o["ollama"] is not None and action != "--sync-models":
        raise click.UsageError("--ollama goes with --sync-models")
    if o["no_expiry"] and action != "--set":
        raise click.UsageError("--no-expiry goes with --set")
    if action not in ("--usage", "--usage-export", "--invoice") and (o["since"] or o["until"]):
        raise click.UsageError("--since and --until go with --usage, --usage-export or --invoice")
    if action not in ("--usage", "--usage-export", "--set-alias", "--remove-alias") and o["user"]:
        raise click.UsageError(
            "--user goes with --usage or --usage-export (or --set-alias, --remove-alias)"
        )
    if action not in ("--set-alias", "--remove-alias") and o["key_id"] is not None:
        raise click.UsageError("--key-id goes with --set-alias or --remove-alias")
    path = o["db_path"] or database_target()
    with _clear_errors():
        if action == "-g":
            user, name = o["generate"]
            _generate(path, user, name, o)
        elif action == "--set":
            user, name = o["set_"]
            _set(path, user, name, o)
        elif action == "-l":
            records = with_store(path, lambda store: store.list_keys())
            click.echo(render(records, o["fmt"] or "table"))
        elif action == "-d":
            user, name = o["delete"]
            record = with_store(path, lambda store: service.revoke_active_key(store, user, name))
            click.echo(f"Revoked key {record.prefix}... of {record.user}/{record.name}.", err=True)
        elif action == "-e":
            target = o["export"]
            count = write_export(path, target, export_format(target, o["fmt"]), force=o["force"])
            click.echo(f"Exported {count} keys to {target}.", err=True)
        elif action == "--usage":
            since, until = _period(o)
            rows = with_store(
                path,
                lambda store: store.usage_summary(
                    USAGE_GROUPS[o["by"]], UsageQuery(since, until, user=o["user"]), exact=True
                ),
            )
            click.echo(render_usage(rows, o["by"], o["fmt"] or "table", currency_setting()))
        elif action == "--usage-export":
            target = o["usage_export"]
            since, until = _period(o)
            count = write_usage_export(
                path,
                target,
                export_format(target, o["fmt"]),
                since,
                until,
                force=o["force"],
                user=o["user"],
            )
            click.echo(f"Exported {count} usage records to {target}.", err=True)
        elif action in ("--add-user", "--users", "--set-user", "--disable-user", "--enable-user"):
            _users(path, action, o)
        elif action in ("--set-price", "--prices", "--remove-price"):
            _prices(path, action, o)
        elif action in _ALIAS_ACTIONS:
            _aliases(path, action, o)
        elif action in ("--sync-models", "--list-models"):
            _models(path, action, o)
        elif action == "--invoice":
            since, until = _period(o)
            if since is None:  # this month so far
                since = float(period_start("monthly", until or time.time()))
            name, currency = o["invoice"], currency_setting()
            invoice = with_store(
                path, lambda store: user_invoice(store, name, currency, since, until)
            )
            click.echo(render_invoice(invoice, o["fmt"] or "table"))
        elif action == "--check-budget":
            name, currency = o["check_budget"], currency_setting()
            report = with_store(path, lambda store: user_budget_report(store, name, currency))
            click.echo(render_budget_report(report, o["fmt"] or "table"))
        elif action == "--purge":
            user, name = o["purge"]
            count = with_store(path, lambda store: service.purge_revoked(store, user, name))
            click.echo(f"Purged {count} revoked key(s) of {user}/{name}.", err=True)


def _users(path: str, action: str, o: dict[str, Any]) -> None:
    if action == "--users":
        users = with_store(path, lambda store: store.list_users())
        click.echo(render_users(users, o["fmt"] or "table"))
        return
    budget = _budget(o)
    if action == "--add-user":
        name = o["add_user"]

        given = budget.value if budget is not None else None

        async def add(store: Store) -> UserRecord:
            return await service.create_user(
                store, name, o["email"], o["note"], given, _priority(o)
            )

        user = with_store(path, add, create=True)
        click.echo(f"Created user {user.name} in {shown(path)}.", err=True)
    elif action == "--set-user":
        name = o["set_user"]
        changes: dict[str, object] = {k: o[k] for k in ("email", "note") if o[k] is not None}
        if budget is not None:
            changes["budget"] = budget.value
        if o["priority"] is not None:
            changes["priority"] = _priority(o)
        if not changes:
            raise AdminError(
                "--set-user needs something to change: --email, --note, --budget or --priority"
            )
        user = with_store(path, lambda store: service.change_user(store, name, changes))
    else:
        disable = action == "--disable-user"
        name = o["disable_user"] if disable else o["enable_user"]
        user = with_store(
            path, lambda store: service.change_user(store, name, {"disabled": disable})
        )
        click.echo(
            f"{'Disabled' if disable else 'Enabled'} user {user.name}: its"
            f" {user.active_keys} active key(s) {'stop' if disable else 'work again'}"
            " on every gateway within a second.",
            err=True,
        )
    click.echo(render_users([user], "table"))


def _models(path: str, action: str, o: dict[str, Any]) -> None:
    currency = currency_setting()
    if action == "--sync-models":
        targets = ollama_setting()
        if o["ollama"] is not None:  # this one instead, with the first one's key
            targets = [(o["ollama"].rstrip("/"), targets[0][1] if targets else {})]
        count = sync_models(path, targets)
        click.echo(f"Synced {count} models from {', '.join(u for u, _ in targets)}.", err=True)

    async def listing(store: Store) -> tuple[list[ModelInfo], list[Price]]:
        found, _ = await store.list_models()
        return found, await store.list_prices()

    found, prices = with_store(path, listing)
    click.echo(render_models(found, prices, o["fmt"] or "table", currency))


def _prices(path: str, action: str, o: dict[str, Any]) -> None:
    currency = currency_setting()
    if action == "--prices":
        prices = with_store(path, lambda store: store.list_prices())
        click.echo(render_prices(prices, o["fmt"] or "table", currency))
        return
    if action == "--remove-price":
        pattern = o["remove_price"]
        with_store(path, lambda store: service.remove_price(store, pattern))
        click.echo(f"Removed the price of {pattern}; requests from now on are free.", err=True)
        return
    amounts = {field: o[field] for field in PRICE_FIELDS if o[field] is not None}
    if not amounts:
        raise AdminError("--set-price needs an amount: --per-request, --per-million-input,"
                         " --per-million-output or --per-second")  # fmt: skip
    try:
        micro = {
            field: parse_money(text, "--" + field.replace("_", "-"))
            for field, text in amounts.items()
        }
    except PriceError as exc:
        raise AdminError(str(exc)) from None
    price = with_store(
        path, lambda store: service.set_price(store, Price(o["set_price"], **micro)), create=True
    )
    click.echo(render_prices([price], "table", currency))
    click.echo(
        f"Requests to models matching {price.pattern} that start from now on pay this;"
        " what was recorded keeps its cost.",
        err=True,
    )


def _aliases(path: str, action: str, o: dict[str, Any]) -> None:
    if action == "--aliases":
        aliases = with_store(path, service.list_aliases)
        click.echo(render_aliases(aliases, o["fmt"] or "table"))
        return
    user, key_id = o["user"], o["key_id"]
    if action == "--remove-alias":
        name = o["remove_alias"]
        gone = with_store(path, lambda store: service.remove_alias(store, name, user, key_id))
        click.echo(f"Removed the alias {gone.name} (it ran {gone.target}).", err=True)
        return
    name, target = o["set_alias"]
    alias = with_store(
        path, lambda store: service.set_alias(store, name, target, user, key_id), create=True
    )
    click.echo(render_aliases([alias], "table"))
    click.echo(
        f"Requests for {alias.name} run {alias.target} on every gateway within a second.",
        err=True,
    )


class _NewBudget(NamedTuple):
    value: Budget | None  # None: remove the budget


def _budget(o: dict[str, Any]) -> _NewBudget | None:
    """--budget with its --period and --alert, parsed; None when --budget is absent."""
    text = o["budget"]
    if text is None:
        return None
    if text.strip().lower() == "none":
        if o["period"] is not None or o["alert"] is not None:
            raise AdminError("--budget none takes no --period or --alert")
        return _NewBudget(None)
    try:
        amount = parse_money(text, "--budget")
    except PriceError as exc:
        raise AdminError(str(exc)) from None
    alert = None
    if o["alert"] is not None:
        try:
            alert = int(o["alert"].strip().rstrip("%"))
        except ValueError:
            raise AdminError(
                f"--alert must be a percentage such as 80, not {o['alert']!r}"
            ) from None
    try:
        return _NewBudget(check_budget(amount, o["period"] or "monthly", alert))
    except BudgetError as exc:
        raise AdminError(str(exc)) from None


def _period(o: dict[str, Any]) -> tuple[float | None, float | None]:
    since = parse_moment(o["since"], "--since") if o["since"] else None
    until = parse_moment(o["until"], "--until") if o["until"] else None
    if since is not None and until is not None and until <= since:
        raise AdminError("--until must be after --since")
    return since, until


def _expiry(o: dict[str, Any]) -> float | None:
    if o["expires_days"] is not None and o["expires"] is not None:
        raise AdminError("give --expires-days or --expires, not both")
    if o["expires_days"] is not None:
        return expiry_from_days(o["expires_days"])
    if o["expires"] is not None:
        return expiry_from_date(o["expires"])
    return None


def _limits(o: dict[str, Any]) -> dict[str, int | None]:
    """The limit options given, parsed; absent ones are left out."""
    names = {
        "rpm": "--rpm",
        "rph": "--rph",
        "tokens_per_day": "--tokens-per-day",
        "max_concurrent": "--max-concurrent",
    }
    return {
        field: parse_limit(o[field], flag) for field, flag in names.items() if o[field] is not None
    }


def _generate(path: str, user: str, name: str, o: dict[str, Any]) -> None:
    expires_at = _expiry(o)
    limits = KeyLimits(**_limits(o))
    models = parse_models(o["models"]) if o["models"] is not None else None
    budget = _budget(o)

    given = budget.value if budget is not None else None

    async def make(store: Store) -> tuple[KeyRecord, str]:
        role: Role = o["role"] or "user"
        return await service.create_key(
            store, user, name, role, expires_at, limits, models, given, _priority(o)
        )

    record, secret = with_store(path, make, create=True)
    click.echo(secret)
    click.echo(
        f"Created {record.role} key {record.prefix}... for {record.user}/{record.name}"
        f" in {shown(path)}. Store it now: it will not be shown again.",
        err=True,
    )


def _set(path: str, user: str, name: str, o: dict[str, Any]) -> None:
    changes: dict[str, object] = dict(_limits(o))
    if o["role"] is not None:
        changes["role"] = o["role"]
    if o["models"] is not None:
        changes["models"] = parse_models(o["models"])
    if o["no_expiry"]:
        if o["expires_days"] is not None or o["expires"] is not None:
            raise AdminError("give --no-expiry or a new expiry, not both")
        changes["expires_at"] = None
    elif o["expires_days"] is not None or o["expires"] is not None:
        changes["expires_at"] = _expiry(o)
    budget = _budget(o)
    if budget is not None:
        changes["budget"] = budget.value
    if o["priority"] is not None:
        changes["priority"] = _priority(o)
    if not changes:
        raise AdminError(
            "--set needs something to change: --role, limits, --models, expiry, --budget"
            " or --priority"
        )
    record = with_store(path, lambda store: service.change_active_key(store, user, name, changes))
    click.echo(render([record], "table"))


def _priority(o: dict[str, Any]) -> str | None:
    """--priority as the store takes it: a class's name, or None ('none', or not given)."""
    given: str | None = o["priority"]
    return None if given == "none" else given


def main() -> None:
    cli(prog_name="gen_api_key_cli.py")


if __name__ == "__main__":
    main()
