"""`python -m aigateway` and the `aigateway` console script: start the server."""

from __future__ import annotations

import asyncio
import os
import sys

import click

from . import __version__
from .db.store import Store
from .records import StoreError
from .settings import AUTO, Settings, SettingsError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", help="Listen address (overrides HOST).")
@click.option("--port", help="Listen port (overrides PORT).")
@click.option(
    "--env-file",
    help="Settings file read after the environment (default: .env here, else in the"
    " project folder).",
)
@click.option("--init-db", is_flag=True, help="Create and migrate the key database, then exit.")
@click.version_option(__version__, prog_name="aigateway")
def cli(host: str | None, port: str | None, env_file: str | None, init_db: bool) -> None:
    """Serve the gateway in the foreground (settings: environment, then .env, then defaults)."""
    from .server import serve

    overrides = {k: v for k, v in {"HOST": host, "PORT": port}.items() if v is not None}
    try:
        settings = Settings.from_env({**os.environ, **overrides}, env_file=env_file or AUTO)
        if init_db:
            asyncio.run(_init_db(settings.database))
            return
        serve(settings)
    except (SettingsError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc.strerror or exc}") from None


async def _init_db(path: str) -> None:
    store = await Store.open(path)
    await store.close()


def main() -> None:
    try:
        cli(prog_name="aigateway")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
