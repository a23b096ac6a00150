"""What both command lines share: errors as one line and exit status 1."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..settings import SettingsError


class OneLineErrors(click.Command):
    """A click command whose every user error, usage errors included, is one line on
    stderr and exit status 1, so scripts and people get the same short answer."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(1)
        except SettingsError as exc:  # a setting this command reads (CURRENCY, DATABASE_URL)
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)
