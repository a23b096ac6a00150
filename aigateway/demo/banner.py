"""What the demo prints once it is ready: that it is a demo, where to look, the keys, and
the lines to paste into a second terminal."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..records import MICRO
from ..settings import Settings
from ..testing.fake_models import DEMO_MODELS
from .data import USER_BUDGET, DemoKeys

DEFAULT_PORT = 8000  # the README's examples say localhost:8000


def second_terminal(keys: DemoKeys, database: str, ollama_url: str, currency: str) -> list[str]:
    """`export` lines that point the README's examples ($KEY, $ADMIN, $ADMIN_KEY) and both
    CLIs at the demo. The environment wins over `.env`, so the CLIs then use the demo's
    database and Ollama, whatever the project's `.env` says."""
    cli = {
        "DATABASE_URL": f"sqlite:///{database}",  # also over a DATABASE_URL in .env
        "OLLAMA_BASE_URL": ollama_url,  # for --sync-models
        "UPSTREAMS_FILE": "",  # (blank: unset, over one that .env may name)
        "CURRENCY": currency,
    }
    return [
        f"export KEY={keys.user} ADMIN_KEY={keys.admin} ADMIN={keys.admin}",
        "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in cli.items()),
    ]


def banner(
    settings: Settings,
    port: int,
    keys: DemoKeys,
    folder: Path,
    ollama_url: str,
) -> str:
    base = settings.local_url(port)
    budget = f"{USER_BUDGET.amount / MICRO:.2f} {settings.currency}"
    models = ", ".join(card.name.removesuffix(":latest") for card in DEMO_MODELS)
    lines = [
        "",
        "aigateway demo: a throw-away gateway in front of a simulated Ollama (no GPU).",
        f"Its data lives in {folder} and is removed when you press Ctrl-C.",
        "",
        f"  Dashboard  {settings.dashboard_url(port)}   (sign in with the admin key)",
        f"  Swagger    {settings.docs_url(port)}",
        f"  API base   {base}{settings.base_path}   (OpenAI/Anthropic: {base}{settings.v1_path})",
        f"  Admin key  {keys.admin}   (admin/demo)",
        f"  User key   {keys.user}   (alice/laptop: {budget} a month for alice)",
        f"  Models     {models}",
        "",
        "In a second terminal, in the project folder, paste this for the README's examples"
        " and the CLIs:",
        "",
        *(
            f"  {line}"
            for line in second_terminal(keys, settings.token_db_path, ollama_url, settings.currency)
        ),
        "",
        "  then, for example:",
        f'  curl -H "Authorization: Bearer $KEY" {base}{settings.base_path}/chat \\',
        '       -d \'{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}\'',
        "  ./gen_api_key_cli.py --usage --by model",
    ]
    if port != DEFAULT_PORT:
        lines += [
            "",
            f"The gateway is on port {port}: where an example says localhost:{DEFAULT_PORT},"
            f" use localhost:{port}.",
        ]
    lines += ["", "The gateway's log follows (Ctrl-C stops the demo).", ""]
    return "\n".join(lines)
