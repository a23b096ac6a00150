"""docs/cli.md is what the two commands' click definitions generate, and lists every option."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from aigateway.cli.reference import COMMANDS, REFERENCE_COMMAND, main, markdown_reference

ROOT = Path(__file__).resolve().parent.parent


def test_docs_cli_md_is_what_the_commands_generate() -> None:
    page = ROOT / "docs" / "cli.md"
    written = page.read_text() if page.is_file() else ""
    assert written == markdown_reference(), (
        f"docs/cli.md is stale: regenerate it with `{REFERENCE_COMMAND}`"
    )


@pytest.mark.parametrize("script, command", [(s, c) for s, _, c in COMMANDS], ids=str)
def test_every_option_of_each_command_has_its_row(script: str, command: click.Command) -> None:
    page = markdown_reference()
    section = page[page.index(f"## `{script}`") :]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    options = [p for p in command.params if isinstance(p, click.Option)]
    assert options
    for option in options:
        assert any(f"`{option.opts[0]}`" in row.split(" | ")[0] for row in rows), option.opts


def test_the_command_refuses_anything_but_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert REFERENCE_COMMAND in capsys.readouterr().err
    assert main(["--markdown"]) == 0
    assert capsys.readouterr().out == markdown_reference()
