"""gen_api_key_cli.py: manage keys with flags, for people and for scripts.

Every action goes through `Store`, the same code the server uses. User errors end
with one line on stderr and exit status 1; the database is left as it was.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from ..settings import token_db_path
from ..store import Role, Store, StoreError
from .common import OneLineErrors

T = TypeVar("T")
CLI_BUSY_TIMEOUT_S = 2.0  # how long to wait for a database locked by a long write


def run_with_store(db_path: str, action: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store, run one action, close it; StoreError becomes a one-line exit 1."""

    async def go() -> T:
        store = await Store.open(db_path, busy_timeout_s=CLI_BUSY_TIMEOUT_S)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def expiry_timestamp(days: int | None, date_text: str | None) -> float | None:
    if days is not None and date_text is not None:
        raise click.UsageError("give --expires-days or --expires, not both")
    now = dt.datetime.now(dt.UTC)
    if days is not None:
        if days <= 0:
            raise click.BadParameter(
                "must be a whole number of days above 0", param_hint="--expires-days"
            )
        return (now + dt.timedelta(days=days)).timestamp()
    if date_text is not None:
        try:
            date = dt.date.fromisoformat(date_text)
        except ValueError:
            raise click.BadParameter(
                f"expected a date as YYYY-MM-DD, got {date_text!r}", param_hint="--expires"
            ) from None
        # A key "expiring on" a date works through that whole day (UTC).
        end = dt.datetime.combine(date + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        if end <= now:
            raise click.BadParameter("must be today or a later date", param_hint="--expires")
        return end.timestamp()
    return None


HELP = """Create and revoke aigateway API keys.

\b
Examples:
  gen_api_key_cli.py -g alice laptop                 print a new key for alice
  KEY=$(gen_api_key_cli.py -g ci runner --expires-days 30)
  gen_api_key_cli.py -g root ops --role admin --expires 2027-12-31
  gen_api_key_cli.py -d alice laptop                 revoke alice's key "laptop"

The database is --db, else TOKEN_DB_PATH from the environment or .env, else
tokens.db, exactly as the server finds it.
"""


@click.command(
    cls=OneLineErrors, help=HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "-g", "--generate", nargs=2, metavar="USER KEY_NAME", help="Create a key and print it once."
)
@click.option(
    "-d",
    "--delete",
    nargs=2,
    metavar="USER KEY_NAME",
    help="Revoke a key (the row is kept for history).",
)
@click.option(
    "--role",
    type=click.Choice(["user", "admin"]),
    default="user",
    show_default=True,
    help="Role of a new key.",
)
@click.option("--expires-days", type=int, metavar="N", help="A new key expires after N days.")
@click.option(
    "--expires",
    metavar="YYYY-MM-DD",
    help="A new key expires after this day (UTC).",
)
@click.option(
    "--db", "db_path", metavar="PATH", help="Key database (default: TOKEN_DB_PATH or tokens.db)."
)
def cli(
    generate: tuple[str, str] | None,
    delete: tuple[str, str] | None,
    role: Role,
    expires_days: int | None,
    expires: str | None,
    db_path: str | None,
) -> None:
    actions = [a for a in (generate, delete) if a]
    if len(actions) != 1:
        raise click.UsageError("choose one action: -g USER KEY_NAME or -d USER KEY_NAME")
    path = db_path or token_db_path()
    if generate:
        user, name = generate
        expires_at = expiry_timestamp(expires_days, expires)
        record, secret = run_with_store(
            path, lambda store: store.create_key(user, name, role, expires_at)
        )
        click.echo(secret)
        click.echo(
            f"Created {record.role} key {record.prefix}... for {record.user}/{record.name}."
            " Store it now: it will not be shown again.",
            err=True,
        )
    elif delete:
        user, name = delete
        record = run_with_store(path, lambda store: store.revoke_key(user, name))
        click.echo(f"Revoked key {record.prefix}... of {record.user}/{record.name}.", err=True)


def main() -> None:
    cli(prog_name="gen_api_key_cli.py")


if __name__ == "__main__":
    main()
