"""Each setting is declared once; docs/settings.md and .env.example follow the declarations."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
from dotenv import dotenv_values

from aigateway.settings import Declared, Settings, declaration_of, declarations
from aigateway.settings_reference import REFERENCE_COMMAND, markdown_reference

ROOT = Path(__file__).resolve().parent.parent


def test_docs_settings_md_is_what_the_declarations_generate() -> None:
    page = ROOT / "docs" / "settings.md"
    written = page.read_text() if page.is_file() else ""
    assert written == markdown_reference(), (
        f"docs/settings.md is stale: regenerate it with `{REFERENCE_COMMAND}`"
    )


def test_every_field_but_the_read_upstreams_is_one_declared_variable() -> None:
    undeclared = [f.name for f in fields(Settings) if declaration_of(f) is None]
    assert undeclared == ["upstreams"]  # read from the file UPSTREAMS_FILE names
    variables = [d.variable for d in declarations()]
    assert len(variables) == len(set(variables))
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", v) for v in variables)


@pytest.mark.parametrize("how", declarations(), ids=lambda d: d.variable)
def test_each_declaration_has_help_and_a_default_its_parser_reads_back(how: Declared) -> None:
    assert how.help.strip() and "\n" not in how.help
    assert how.parse.accepts.strip()
    default = Settings.__dataclass_fields__[_field_name(how)].default
    shown = how.parse.show(default)
    if how.shown_default is None and shown != "unset":
        # The default the reference shows is one a person could write, meaning the same.
        assert how.parse(how.variable, shown) == default


def test_env_example_sets_only_declared_settings_to_their_defaults() -> None:
    """.env.example is copied to .env by run.sh: a value there that differs from the
    declared default would quietly outlive a change of the default."""
    example = ROOT / ".env.example"
    by_variable = {d.variable: d for d in declarations()}
    commented = re.findall(r"^#([A-Z][A-Z0-9_]*)=", example.read_text(), re.MULTILINE)
    assert set(commented) <= set(by_variable), "unknown settings in .env.example"
    for variable, raw in dotenv_values(example).items():
        assert variable in by_variable, f".env.example sets unknown {variable}"
        how = by_variable[variable]
        default = Settings.__dataclass_fields__[_field_name(how)].default
        assert raw is not None
        assert how.parse(variable, raw) == default, f".env.example: {variable}={raw}"


def _field_name(how: Declared) -> str:
    return next(f.name for f in fields(Settings) if declaration_of(f) is how)


def test_the_deploy_files_set_only_declared_settings() -> None:
    """compose.yaml's gateway environment and the systemd unit's Environment= lines."""
    compose = (ROOT / "compose.yaml").read_text()
    gateway = compose[compose.index("x-gateway:") : compose.index("\nservices:")]
    environment = gateway[gateway.index("  environment:") :]
    named = set(re.findall(r"^    ([A-Z][A-Z0-9_]*):", environment, re.MULTILINE))
    unit = (ROOT / "deploy" / "aigateway.service").read_text()
    named |= set(re.findall(r"^Environment=([A-Z][A-Z0-9_]*)=", unit, re.MULTILINE))
    assert named >= {"DATABASE_URL", "HOST", "PORT", "TOKEN_DB_PATH"}  # the files were read
    assert named <= {d.variable for d in declarations()}
