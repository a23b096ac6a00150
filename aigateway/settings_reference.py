"""docs/settings.md, generated from the declarations in settings.py (a test fails when
the page is stale): `python -m aigateway.settings_reference --markdown > docs/settings.md`."""

from __future__ import annotations

import sys
from dataclasses import fields

from .settings import GROUPS, Settings, declaration_of

REFERENCE_COMMAND = "python -m aigateway.settings_reference --markdown > docs/settings.md"

_ABOUT = """\
Read from the environment, then `.env` (created from `.env.example` by `./run.sh`), then
the defaults. A bad value stops start-up with one line naming the variable and what was
expected. The `.env` read is the one in the current folder, else the one in the project
folder (where `run.sh` is), so the server and both CLIs find the same settings and
database wherever they are started from; a CLI reads only the settings it uses, so a bad
server setting does not stop it. A blank value is the same as unset.

The server also takes `--host`, `--port`, `--env-file FILE` and `--init-db` (create and
migrate the database, then exit)."""


def markdown_reference() -> str:
    """docs/settings.md, from the declarations."""
    lines = [
        "# Settings reference",
        "",
        f"<!-- Generated from aigateway/settings.py by `{REFERENCE_COMMAND}`;",
        "     edit the declarations there, not this page (a test fails when it is stale). -->",
        "",
        _ABOUT,
    ]
    for group in GROUPS:
        lines += ["", f"## {group}", "", "| Variable | Default | Accepts | Meaning |"]
        lines.append("|---|---|---|---|")
        for each in fields(Settings):
            how = declaration_of(each)
            if how is None or how.group != group:
                continue
            shown = how.shown_default or f"`{how.parse.show(each.default)}`"
            if shown == "`unset`":
                shown = "unset"
            cells = (f"`{how.variable}`", shown, how.parse.accepts, how.help)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        sys.stderr.write(f"usage: {REFERENCE_COMMAND}\n")
        return 2
    sys.stdout.write(markdown_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
