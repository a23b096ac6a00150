"""docs/cli.md, written from the two commands' click definitions, so the page cannot
drift from the flags (tests/test_cli_reference.py fails when it is stale).

    python -m aigateway.cli.reference --markdown > docs/cli.md
"""

from __future__ import annotations

import sys

import click

from . import flags, menu

REFERENCE_COMMAND = "python -m aigateway.cli.reference --markdown > docs/cli.md"

# Each command: the script a checkout runs, the console script .venv installs, the command.
COMMANDS: tuple[tuple[str, str, click.Command], ...] = (
    ("gen_api_key_cli.py", "gen-api-key", flags.cli),
    ("gen_api_key_cli_inter.py", "gen-api-key-menu", menu.cli),
)

_ABOUT = """\
Both tools call the same code as the server, work while it runs, and reach the database the
server uses (`--db`, else `DATABASE_URL`, else `TOKEN_DB_PATH`, from the environment or
`.env`). What they are for, with examples:
[Keys, limits and usage](keys-limits-usage.md#the-command-line-tools). This page lists
every option, as `--help` prints them."""


def _takes(option: click.Option) -> str:
    """What the option takes: its choices, its metavar, or nothing for a flag."""
    if option.is_flag:
        return ""
    if isinstance(option.type, click.Choice):
        return " \\| ".join(f"`{choice}`" for choice in option.type.choices)
    metavar = option.metavar or option.type.name.upper()
    return "`" + metavar.replace("|", "\\|") + "`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _description(command: click.Command) -> list[str]:
    """The command's help text as click shows it: \\b marks a block click leaves unwrapped."""
    text = (command.help or "").replace("\b\n", "")
    return ["```text", *text.strip().splitlines(), "```"]


def _options_table(command: click.Command) -> list[str]:
    lines = ["| Option | Takes | What it does |", "|---|---|---|"]
    for param in command.params:
        if not isinstance(param, click.Option):
            continue
        names = ", ".join(f"`{name}`" for name in (*param.opts, *param.secondary_opts))
        help_text = param.help or ""
        if param.show_default and param.default is not None:
            help_text += f" Default: `{param.default}`."
        lines.append(f"| {names} | {_takes(param)} | {_cell(help_text)} |")
    lines.append("| `-h`, `--help` | | Show the help and exit. |")
    return lines


def markdown_reference() -> str:
    """docs/cli.md, from the click commands."""
    lines = [
        "# Command-line reference",
        "",
        f"<!-- Generated from aigateway/cli/ by `{REFERENCE_COMMAND}`;",
        "     edit the click options there, not this page (a test fails when it is stale). -->",
        "",
        _ABOUT,
    ]
    for script, console_script, command in COMMANDS:
        lines += [
            "",
            f"## `{script}`",
            "",
            f"`./{script} [OPTIONS]`; installed in `.venv` as `{console_script}` too.",
            "",
            *_description(command),
            "",
            *_options_table(command),
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        sys.stderr.write(f"usage: {REFERENCE_COMMAND}\n")
        return 2
    sys.stdout.write(markdown_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
