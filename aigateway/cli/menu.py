"""gen_api_key_cli_inter.py: the same key administration as a menu, for people who
don't remember the flags. Ctrl-C or Esc in a prompt goes back to the menu; in the menu
itself it leaves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import click
import questionary
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, merge_key_bindings
from prompt_toolkit.output import Output

from ..access.budgets import describe, period_start
from ..admin import service
from ..admin.reports import user_budget_report, user_invoice
from ..protocol.aliasnames import alias_identity, target_identity
from ..records import (
    PERIODS,
    PRIORITY_NAMES,
    Alias,
    BudgetError,
    InvalidInputError,
    KeyLimits,
    KeyRecord,
    Price,
    PriceError,
    UsageQuery,
    UserRecord,
    check_allow_list,
    check_budget,
    check_email,
    check_name,
    check_note,
    check_price,
    money,
    parse_money,
    priority_name,
)
from ..settings import currency_setting, database_target, ollama_setting
from .admin import (
    USAGE_GROUPS,
    AdminError,
    Format,
    export_format,
    parse_expiry,
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
    sync_models,
    with_store,
    write_export,
    write_usage_export,
)
from .common import OneLineErrors

GENERATE, LIST, CHANGE, REVOKE, EXPORT, USAGE, USAGE_EXPORT, USERS, PRICES, EXIT = (
    "Generate a key",
    "List keys",
    "Change a key (role, limits, models, expiry)",
    "Revoke a key",
    "Export to file",
    "Usage report",
    "Export usage to file",
    "Users: list, add, change, disable, enable, budgets",
    "Prices, models and aliases: list, set, remove; models from Ollama",
    "Exit",
)
LIST_PRICES, SET_PRICE, REMOVE_PRICE, LIST_MODELS, SYNC_MODELS = (
    "List prices",
    "Set a price",
    "Remove a price",
    "List models with their prices",
    "Sync models from Ollama (family, size, context length)",
)
LIST_ALIASES, SET_ALIAS, REMOVE_ALIAS = (
    "List model aliases",
    "Set an alias (a name that runs another model)",
    "Remove an alias",
)
ALIAS_OWNERS = ("Everyone", "One user's keys", "One key")
PRICE_PROMPTS = (
    ("per_request", "Per request"),
    ("per_million_input", "Per million input (prompt) tokens"),
    ("per_million_output", "Per million output tokens"),
    ("per_second", "Per second of model time"),
)
LIST_USERS, ADD_USER, CHANGE_USER, DISABLE_USER, ENABLE_USER = (
    "List users",
    "Add a user",
    "Change a user's email or note",
    "Disable a user (all its keys stop working)",
    "Enable a user",
)
SET_BUDGET, CHECK_BUDGET, INVOICE = (
    "Set a user's budget",
    "Check a user's budget (spent, remaining, reset, per key)",
    "A user's invoice (usage per model and total cost for a period)",
)
USER_CHOICES = [
    LIST_USERS, ADD_USER, CHANGE_USER, DISABLE_USER, ENABLE_USER, SET_BUDGET, CHECK_BUDGET,
    INVOICE,
]  # fmt: skip
LIMIT_PROMPTS = (
    ("rpm", "Requests per minute"),
    ("rph", "Requests per hour"),
    ("tokens_per_day", "Tokens per day"),
    ("max_concurrent", "Requests at once"),
)


class Cancelled(Exception):
    """Ctrl-C or Esc in a prompt, or the input ended."""


def _escape_cancels() -> KeyBindings:
    bindings = KeyBindings()

    # eager: act on Esc at once instead of waiting to see if it starts a sequence
    @bindings.add("escape", eager=True)
    def _(event: Any) -> None:
        event.app.exit(exception=KeyboardInterrupt, style="class:aborting")

    return bindings


class Menu:
    def __init__(
        self,
        db_path: str,
        *,
        input: Input | None = None,
        output: Output | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.db_path = db_path
        self._io: dict[str, Any] = {}
        if input is not None:
            self._io["input"] = input
        if output is not None:
            self._io["output"] = output
        self.echo = echo

    def run(self) -> None:
        actions = {
            GENERATE: self.generate,
            LIST: self.list_keys,
            CHANGE: self.change,
            REVOKE: self.revoke,
            EXPORT: self.export,
            USAGE: self.usage,
            USAGE_EXPORT: self.usage_export,
            USERS: self.users,
            PRICES: self.prices,
        }
        while True:
            try:
                choice = self._ask(
                    questionary.select, "What do you want to do?", choices=[*actions, EXIT]
                )
            except (Cancelled, KeyboardInterrupt):
                return
            if choice == EXIT:
                return
            try:
                actions[choice]()
            # KeyboardInterrupt: Ctrl-C that lands between prompts, outside raw mode
            except (Cancelled, KeyboardInterrupt):
                self.echo("Cancelled.")
            except AdminError as exc:
                self.echo(f"Error: {exc}")

    # --- the four actions -------------------------------------------------------------

    def generate(self) -> None:
        active = {(k.user, k.name) for k in self._keys() if k.status() == "active"}
        user = self._ask(questionary.text, "User:", validate=_valid_name("user"))
        name = self._ask(questionary.text, "Key name:", validate=_valid_key_name(user, active))
        role = self._ask(questionary.select, "Role:", choices=["user", "admin"], default="user")
        expiry_text = self._ask(
            questionary.text,
            "Expires (days, YYYY-MM-DD, or empty for never):",
            validate=_valid_expiry,
        )
        expires_at = parse_expiry(expiry_text)
        limits, models = KeyLimits(), None
        if self._ask(
            questionary.confirm,
            "Set limits or a model allow-list now? (later too, with Change a key)",
            default=False,
        ):
            limits = KeyLimits(**self._ask_limits(limits))
            models = self._ask_models(None)
        record, secret = with_store(
            self.db_path,
            lambda store: service.create_key(store, user, name, role, expires_at, limits, models),
        )
        self.echo(f"New {record.role} key for {record.user}/{record.name}:")
        self.echo(secret)
        self.echo("Store it now: it will not be shown again.")

    def list_keys(self) -> None:
        self.echo(render(self._keys(), "table"))

    def change(self) -> None:
        key = self._pick_active("Change which key?")
        if key is None:
            return
        what = self._ask(
            questionary.select,
            "Change what?",
            choices=["Role", "Limits", "Models", "Expiry", "Priority"],
        )
        changes: dict[str, object] = {}
        if what == "Role":
            changes["role"] = self._ask(
                questionary.select, "Role:", choices=["user", "admin"], default=key.role
            )
        elif what == "Limits":
            changes.update(self._ask_limits(key.limits))
        elif what == "Models":
            changes["models"] = self._ask_models(key.models)
        elif what == "Priority":
            changes["priority"] = self._ask_priority(priority_name(key.priority), "its user's")
        else:
            text = self._ask(
                questionary.text,
                "Expires (days, YYYY-MM-DD, or empty for never):",
                validate=_valid_expiry,
            )
            changes["expires_at"] = parse_expiry(text)
        record = with_store(self.db_path, lambda store: service.change_key(store, key.id, changes))
        self.echo(render([record], "table"))

    def _ask_priority(self, current: str | None, unset: str) -> str | None:
        """A queue class (high, normal, low), or None: `unset` says what that means."""
        none = f"none ({unset})"
        picked = self._ask(
            questionary.select,
            "Priority, where upstreams are full:",
            choices=[*PRIORITY_NAMES[::-1], none],
            default=current or none,
        )
        return None if picked == none else str(picked)

    def _ask_limits(self, current: KeyLimits) -> dict[str, int | None]:
        """Each limit, offering the current one; None follows the DEFAULT_* setting."""
        limits: dict[str, int | None] = {}
        for field, title in LIMIT_PROMPTS:
            now = getattr(current, field)
            text = self._ask(
                questionary.text,
                f"{title} (number, none, or default):",
                default="default" if now is None else str(now),
                validate=_valid(partial(parse_limit, what=title)),
            )
            limits[field] = parse_limit(text, title)
        return limits

    def _ask_models(self, current: tuple[str, ...] | None) -> list[str] | None:
        text = self._ask(
            questionary.text,
            "Allowed models, comma-separated patterns (all: every model):",
            default=",".join(current) if current else "all",
            validate=_valid(lambda t: check_allow_list(parse_models(t))),
        )
        return parse_models(text)

    def usage(self) -> None:
        group = self._ask(questionary.select, "Group by:", choices=list(USAGE_GROUPS))
        since, until = self._ask_period()
        rows = with_store(
            self.db_path,
            lambda store: store.usage_summary(
                USAGE_GROUPS[group], UsageQuery(since, until), exact=True
            ),
        )
        self.echo(render_usage(rows, group, "table", currency_setting()))

    def _ask_period(self) -> tuple[float | None, float | None]:
        def moment(what: str) -> float | None:
            text = self._ask(
                questionary.text,
                f"{what.capitalize()} (YYYY-MM-DD or ISO time, UTC; empty: no bound):",
                validate=_valid(lambda t: parse_moment(t, what) if t.strip() else None),
            )
            return parse_moment(text, what) if text.strip() else None

        since, until = moment("since"), moment("until")
        if since is not None and until is not None and until <= since:
            raise AdminError("until must be after since")
        return since, until

    def usage_export(self) -> None:
        path = self._ask(questionary.text, "Export usage to file:", validate=_valid_export_path)
        since, until = self._ask_period()
        fmt, force = self._export_format_and_force(path)
        if fmt is None:
            return
        count = write_usage_export(self.db_path, path, fmt, since, until, force=force)
        self.echo(f"Exported {count} usage records to {path} ({fmt}).")

    def revoke(self) -> None:
        key = self._pick_active("Revoke which key?")
        if key is None:
            return
        if not self._ask(
            questionary.confirm,
            f"Revoke {key.user}/{key.name}? Clients using it stop working.",
            default=False,
        ):
            self.echo("Nothing revoked.")
            return
        with_store(self.db_path, lambda store: service.revoke_key(store, key.id))
        self.echo(f"Revoked {key.user}/{key.name}.")

    def export(self) -> None:
        path = self._ask(questionary.text, "Export to file:", validate=_valid_export_path)
        fmt, force = self._export_format_and_force(path)
        if fmt is None:
            return
        count = write_export(self.db_path, path, fmt, force=force)
        self.echo(f"Exported {count} keys to {path} ({fmt}).")

    def users(self) -> None:
        choice = self._ask(
            questionary.select,
            "Users:",
            choices=USER_CHOICES,
        )
        if choice == LIST_USERS:
            users = with_store(self.db_path, lambda store: store.list_users())
            self.echo(render_users(users, "table"))
        elif choice == ADD_USER:
            name = self._ask(questionary.text, "User:", validate=_valid_name("user"))
            email = self._ask(questionary.text, "Email (or empty):", validate=_valid(check_email))
            note = self._ask(questionary.text, "Note (or empty):", validate=_valid(check_note))
            made = with_store(
                self.db_path,
                lambda store: service.create_user(store, name, email or None, note or None),
            )
            self.echo(f"Created user {made.name}.")
        else:
            wanted = {DISABLE_USER: False, ENABLE_USER: True}.get(choice)
            user = self._pick_user(wanted)
            if user is None:
                return
            if choice in (SET_BUDGET, CHECK_BUDGET):
                self._budget(user, choice)
                return
            if choice == INVOICE:
                self._invoice(user)
                return
            if choice == CHANGE_USER:
                changes = {
                    "email": self._ask(
                        questionary.text,
                        "Email (or empty):",
                        default=user.email or "",
                        validate=_valid(check_email),
                    ),
                    "note": self._ask(
                        questionary.text,
                        "Note (or empty):",
                        default=user.note or "",
                        validate=_valid(check_note),
                    ),
                    "priority": self._ask_priority(priority_name(user.priority), "normal"),
                }
                with_store(
                    self.db_path, lambda store: service.change_user(store, user.name, changes)
                )
                self.echo(f"Changed user {user.name}.")
                return
            disable = choice == DISABLE_USER
            with_store(
                self.db_path,
                lambda store: service.change_user(store, user.name, {"disabled": disable}),
            )
            self.echo(
                f"{'Disabled' if disable else 'Enabled'} {user.name}: its keys"
                f" {'stop' if disable else 'work again'} within a second."
            )

    def _models(self, sync: bool, prices: list[Price], currency: str) -> None:
        if sync:
            targets = ollama_setting()
            count = sync_models(self.db_path, targets)
            self.echo(f"Synced {count} models from {', '.join(u for u, _ in targets)}.")
        stored, _ = with_store(self.db_path, lambda store: store.list_models())
        self.echo(render_models(stored, prices, "table", currency))

    def _invoice(self, user: UserRecord) -> None:
        since, until = self._ask_period()
        if since is None:  # this month so far
            since = float(period_start("monthly", until or time.time()))
        currency = currency_setting()
        invoice = with_store(
            self.db_path, lambda store: user_invoice(store, user.name, currency, since, until)
        )
        self.echo(render_invoice(invoice, "table"))

    def _budget(self, user: UserRecord, choice: str) -> None:
        currency = currency_setting()
        if choice == SET_BUDGET:
            current = user.budget
            text = self._ask(
                questionary.text,
                f"Budget in {currency}, for all the user's keys together ('none': no budget):",
                default=money(current.amount) if current is not None else "none",
                validate=_valid(_budget_amount),
            )
            budget = None
            amount = _budget_amount(text)
            if amount is not None:
                period = self._ask(
                    questionary.select,
                    "Resets (at 00:00 UTC):",
                    choices=list(PERIODS),
                    default=current.period if current is not None else "monthly",
                )
                alert = self._ask(
                    questionary.text,
                    "Alert at this % spent (or empty):",
                    default=str(current.alert) if current and current.alert else "",
                    validate=_valid(lambda t: check_budget(0, "total", _percent(t))),
                )
                budget = check_budget(amount, period, _percent(alert))
            with_store(
                self.db_path,
                lambda store: service.change_user(store, user.name, {"budget": budget}),
            )
            self.echo(f"Set the budget of {user.name}: {describe(budget) or 'none'}.")
            return
        report = with_store(
            self.db_path, lambda store: user_budget_report(store, user.name, currency)
        )
        self.echo(render_budget_report(report, "table"))

    def prices(self) -> None:
        currency = currency_setting()
        choice = self._ask(
            questionary.select,
            "Prices:",
            choices=[
                LIST_PRICES, SET_PRICE, REMOVE_PRICE, LIST_MODELS, SYNC_MODELS,
                LIST_ALIASES, SET_ALIAS, REMOVE_ALIAS,
            ],
        )  # fmt: skip
        if choice in (LIST_ALIASES, SET_ALIAS, REMOVE_ALIAS):
            self._aliases(choice)
            return
        known = with_store(self.db_path, lambda store: store.list_prices())
        if choice in (LIST_MODELS, SYNC_MODELS):
            self._models(choice == SYNC_MODELS, known, currency)
        elif choice == LIST_PRICES:
            self.echo(render_prices(known, "table", currency))
        elif choice == SET_PRICE:
            pattern = self._ask(
                questionary.text,
                "Model or pattern (llama3*, qwen2.5:0.5b, * for every other model):",
                validate=_valid(lambda t: check_price(Price(t))),
            )
            current = next((p for p in known if p.pattern == pattern), Price(pattern))
            amounts = {
                field: parse_money(
                    self._ask(
                        questionary.text,
                        f"{title} ({currency}):",
                        default=money(getattr(current, field)),
                        validate=_valid(partial(parse_money, what=title)),
                    ),
                    title,
                )
                for field, title in PRICE_PROMPTS
            }
            price = with_store(
                self.db_path, lambda store: service.set_price(store, Price(pattern, **amounts))
            )
            self.echo(render_prices([price], "table", currency))
        else:
            if not known:
                self.echo("No prices: every model is free.")
                return
            choices = [questionary.Choice(p.pattern, value=p.pattern) for p in known]
            pattern = self._ask(questionary.select, "Remove which price?", choices=choices)
            with_store(self.db_path, lambda store: service.remove_price(store, pattern))
            self.echo(f"Removed the price of {pattern}.")

    def _aliases(self, choice: str) -> None:
        known = with_store(self.db_path, service.list_aliases)
        if choice == LIST_ALIASES:
            self.echo(render_aliases(known, "table"))
        elif choice == SET_ALIAS:
            name = self._ask(
                questionary.text,
                "Name clients ask for (gpt-4o-mini):",
                validate=_valid(alias_identity),
            )
            target = self._ask(
                questionary.text, "Model it runs (llama3.2):", validate=_valid(target_identity)
            )
            owner = self._ask(questionary.select, "For:", choices=list(ALIAS_OWNERS))
            user, key_id = None, None
            if owner == ALIAS_OWNERS[1]:
                picked = self._pick_user(None)
                if picked is None:
                    return
                user = picked.name
            elif owner == ALIAS_OWNERS[2]:
                key = self._pick_active("For which key?")
                if key is None:
                    return
                key_id = key.id
            alias = with_store(
                self.db_path,
                lambda store: service.set_alias(store, name, target, user, key_id),
            )
            self.echo(render_aliases([alias], "table"))
        elif not known:
            self.echo("No aliases.")
        else:
            choices = [
                questionary.Choice(
                    f"{a.name} -> {a.target}  ({a.scope}{' ' + a.owner if a.owner else ''})",
                    value=a,
                )
                for a in known
            ]
            gone: Alias = self._ask(questionary.select, "Remove which alias?", choices=choices)
            owner_user = gone.owner if gone.scope == "user" else None
            owner_key = int(gone.owner) if gone.scope == "key" else None
            with_store(
                self.db_path,
                lambda store: service.remove_alias(store, gone.name, owner_user, owner_key),
            )
            self.echo(f"Removed the alias {gone.name}.")

    def _pick_user(self, disabled: bool | None) -> UserRecord | None:
        """A user to act on: any (None), or only enabled (False) or disabled (True) ones."""
        users = with_store(self.db_path, lambda store: store.list_users())
        users = [u for u in users if disabled is None or u.disabled == disabled]
        if not users:
            self.echo("No such users.")
            return None
        choices = [
            questionary.Choice(f"{u.name}  ({u.active_keys} active keys)", value=u) for u in users
        ]
        user: UserRecord = self._ask(questionary.select, "Which user?", choices=choices)
        return user

    def _export_format_and_force(self, path: str) -> tuple[Format | None, bool]:
        """Ask for the format (guessed from the name) and, for an existing file, whether
        to overwrite it; (None, False) when the person declines."""
        try:
            guessed = export_format(path, None)
        except AdminError:
            guessed = "json"
        fmt = self._ask(questionary.select, "Format:", choices=["csv", "json"], default=guessed)
        if not Path(path).exists():
            return fmt, False
        if self._ask(questionary.confirm, f"{path} exists. Overwrite it?", default=False):
            return fmt, True
        self.echo("Nothing exported.")
        return None, False

    def _pick_active(self, question: str) -> KeyRecord | None:
        active = [k for k in self._keys() if k.status() == "active"]
        if not active:
            self.echo("No active keys.")
            return None
        choices = [
            questionary.Choice(f"{k.user} / {k.name}  ({k.prefix}..., {k.role})", value=k)
            for k in active
        ]
        key: KeyRecord = self._ask(questionary.select, question, choices=choices)
        return key

    # --- plumbing ---------------------------------------------------------------------

    def _keys(self) -> list[KeyRecord]:
        return with_store(self.db_path, lambda store: store.list_keys())

    def _ask(self, kind: Callable[..., questionary.Question], *args: Any, **kwargs: Any) -> Any:
        """Ask one question; Ctrl-C, Esc or the end of input raise Cancelled."""
        question = kind(*args, **kwargs, **self._io)
        app = question.application
        app.key_bindings = merge_key_bindings(
            [b for b in (app.key_bindings, _escape_cancels()) if b is not None]
        )
        try:
            answer = question.unsafe_ask()
        except (KeyboardInterrupt, EOFError):
            raise Cancelled from None
        if answer is None:
            raise Cancelled
        return answer


def _valid_name(what: str) -> Callable[[str], bool | str]:
    return _valid(partial(check_name, what))


def _valid_key_name(user: str, active: set[tuple[str, str]]) -> Callable[[str], bool | str]:
    def validate(text: str) -> bool | str:
        verdict = _valid_name("key name")(text)
        if verdict is True and (user, text) in active:
            return f"{user} already has an active key named {text!r}"
        return verdict

    return validate


def _budget_amount(text: str) -> int | None:
    """An amount of CURRENCY in micro-units; None for 'none'."""
    if text.strip().lower() == "none":
        return None
    return parse_money(text, "the budget")


def _percent(text: str) -> int | None:
    if not text.strip():
        return None
    try:
        return int(text.strip().rstrip("%"))
    except ValueError:
        raise AdminError(f"a percentage such as 80, not {text!r}") from None


def _valid(parse: Callable[[str], object]) -> Callable[[str], bool | str]:
    """A questionary validator from a parser that raises AdminError, InvalidInputError or
    PriceError."""

    def validate(text: str) -> bool | str:
        try:
            parse(text)
        except (AdminError, InvalidInputError, PriceError, BudgetError) as exc:
            return str(exc)
        return True

    return validate


_valid_expiry = _valid(parse_expiry)


def _valid_export_path(text: str) -> bool | str:
    if not text.strip():
        return "give a file name, such as keys.csv or keys.json"
    target = Path(text)
    if target.is_dir():
        return f"{text} is a folder"
    if not target.parent.is_dir():
        return f"the folder {str(target.parent)!r} does not exist"
    return True


@click.command(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "db_path",
    metavar="PATH|URL",
    help="Key database: a SQLite file or DATABASE_URL (default: DATABASE_URL, else TOKEN_DB_PATH).",
)
def cli(db_path: str | None) -> None:
    """An interactive menu to generate, list, revoke and export aigateway API keys."""
    path = db_path or database_target()
    if "://" not in path and not Path(path).exists():
        click.echo(f"{path} does not exist yet: making a new key database there.", err=True)
    try:
        # Refuse a bad database up front; make a missing one, to generate the first key in.
        with_store(path, lambda store: store.list_keys(), create=True)
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None
    Menu(path).run()


def main() -> None:
    cli(prog_name="gen_api_key_cli_inter.py")


if __name__ == "__main__":
    main()
