"""gen_api_key_cli.py: manage keys with flags, for people and for scripts.

Every action goes through `Store`, the same code the server uses. User errors end
with one line on stderr and exit status 1; the database is left as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..settings import token_db_path
from ..store import Role
from .admin import (
    FORMATS,
    AdminError,
    Format,
    expiry_from_date,
    expiry_from_days,
    export_format,
    render,
    with_store,
    write_export,
)
from .common import OneLineErrors

HELP = """Create, list, revoke and export aigateway API keys.

\b
Examples:
  gen_api_key_cli.py -g alice laptop                 print a new key for alice
  KEY=$(gen_api_key_cli.py -g ci runner --expires-days 30)
  gen_api_key_cli.py -g root ops --role admin --expires 2027-12-31
  gen_api_key_cli.py -l                              table of all keys
  gen_api_key_cli.py -l --format json | jq '.[] | select(.status == "active")'
  gen_api_key_cli.py -d alice laptop                 revoke alice's key "laptop"
  gen_api_key_cli.py -e keys.csv                     export users and key metadata
  gen_api_key_cli.py --purge alice laptop            delete a revoked key's row for good

\b
Revoking (-d) keeps the row, so usage history stays meaningful and the name can be
reused. To delete revoked rows for good, use --purge USER KEY_NAME.

The database is --db, else TOKEN_DB_PATH from the environment or .env, else
tokens.db, exactly as the server finds it. A new key is printed once, alone on
stdout; it cannot be shown again. Exports never contain keys or their hashes.
"""


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
    "--purge", nargs=2, metavar="USER KEY_NAME", help="Delete a revoked key's row for good."
)
@click.option(
    "--role",
    type=click.Choice(["user", "admin"]),
    default="user",
    show_default=True,
    help="Role of a new key.",
)
@click.option("--expires-days", metavar="N", help="A new key expires after N days.")
@click.option(
    "--expires", metavar="YYYY-MM-DD", help="A new key stops working at 00:00 UTC on this day."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Output of -l (default table) or -e (default: from the file name).",
)
@click.option("--force", is_flag=True, help="Let -e overwrite an existing file.")
@click.option("--db", "db_path", metavar="PATH", help="Key database (default: TOKEN_DB_PATH).")
def cli(
    generate: tuple[str, str] | None,
    list_: bool,
    delete: tuple[str, str] | None,
    export: str | None,
    purge: tuple[str, str] | None,
    role: Role,
    expires_days: str | None,
    expires: str | None,
    fmt: Format | None,
    force: bool,
    db_path: str | None,
) -> None:
    chosen = [
        flag
        for flag, value in (
            ("-g", generate),
            ("-l", list_),
            ("-d", delete),
            ("-e", export),
            ("--purge", purge),
        )
        if value
    ]
    if len(chosen) != 1:
        raise click.UsageError(
            "choose one action: -g USER KEY_NAME, -l, -d USER KEY_NAME, -e FILE or --purge"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    if (expires_days or expires) and not generate:
        raise click.UsageError("--expires-days and --expires go with -g")
    path = db_path or token_db_path()
    with _clear_errors():
        if generate:
            _generate(path, *generate, role, expires_days, expires)
        elif list_:
            records = with_store(path, lambda store: store.list_keys())
            click.echo(render(records, fmt or "table"))
        elif delete:
            user, name = delete
            record = with_store(path, lambda store: store.revoke_key(user, name))
            click.echo(f"Revoked key {record.prefix}... of {record.user}/{record.name}.", err=True)
        elif export:
            count = write_export(path, export, export_format(export, fmt), force=force)
            click.echo(f"Exported {count} keys to {export}.", err=True)
        elif purge:
            user, name = purge
            count = with_store(path, lambda store: store.purge_revoked(user, name))
            click.echo(f"Purged {count} revoked key(s) of {user}/{name}.", err=True)


def _generate(
    path: str, user: str, name: str, role: Role, days: str | None, date: str | None
) -> None:
    if days is not None and date is not None:
        raise AdminError("give --expires-days or --expires, not both")
    expires_at = None
    if days is not None:
        expires_at = expiry_from_days(days)
    elif date is not None:
        expires_at = expiry_from_date(date)
    record, secret = with_store(path, lambda store: store.create_key(user, name, role, expires_at))
    click.echo(secret)
    click.echo(
        f"Created {record.role} key {record.prefix}... for {record.user}/{record.name}."
        " Store it now: it will not be shown again.",
        err=True,
    )


def main() -> None:
    cli(prog_name="gen_api_key_cli.py")


if __name__ == "__main__":
    main()
