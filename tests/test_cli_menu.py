"""The interactive menu, driven for real: keys typed into prompt_toolkit's pipe input
from another thread, and once through a pseudo-terminal with the real script."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from aigateway.cli.menu import Menu
from aigateway.db.keys import looks_like_key
from aigateway.records import KeyLimits

from .test_cli_flags import dump, keys_in, run

ROOT = Path(__file__).resolve().parent.parent
DOWN, UP, ENTER, CTRL_C, ESC, BACKSPACE = "\x1b[B", "\x1b[A", "\r", "\x03", "\x1b", "\x7f"
# Menu positions: Generate, List, Change, Revoke, Export, Usage, Export usage, Users,
# Prices, Exit.
TO_EXIT = [DOWN] * 9 + [ENTER]
TO_CHANGE, TO_REVOKE, TO_EXPORT = [DOWN] * 2, [DOWN] * 3, [DOWN] * 4
TO_USAGE, TO_USAGE_EXPORT, TO_USERS, TO_PRICES = [DOWN] * 5, [DOWN] * 6, [DOWN] * 7, [DOWN] * 8


class Session:
    def __init__(self, pipe: PipeInput, said: list[str], thread: threading.Thread) -> None:
        self.pipe, self.said, self.thread = pipe, said, thread

    def type(self, *keys: str) -> None:
        for key in keys:
            self.pipe.send_text(key)
            # A lone Esc is only taken for Esc once nothing follows it for a moment.
            time.sleep(0.8 if key == ESC else 0.05)

    def output(self) -> str:
        return "\n".join(self.said)


@contextmanager
def menu(db_path: str) -> Iterator[Session]:
    said: list[str] = []
    with create_pipe_input() as pipe:
        runner = Menu(db_path, input=pipe, output=DummyOutput(), echo=said.append)
        failures: list[BaseException] = []

        def target() -> None:
            try:
                runner.run()
            except BaseException as exc:  # surfaced by the test, never swallowed
                failures.append(exc)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        session = Session(pipe, said, thread)
        yield session
        thread.join(timeout=15)
        assert not thread.is_alive(), "the menu did not finish:\n" + session.output()
        assert failures == []


@pytest.fixture
def seeded(db_path: str) -> str:
    assert run("-g", "alice", "laptop", "--db", db_path)[0] == 0
    return db_path


def test_generate_asks_validates_and_shows_the_key_once(seeded: str) -> None:
    with menu(seeded) as session:
        session.type(ENTER)  # Generate a key
        session.type("", ENTER)  # an empty user is refused, the prompt stays
        session.type("alice", ENTER)
        session.type("laptop", ENTER)  # alice already has an active "laptop": refused
        session.type(*[BACKSPACE] * 6, "x" * 65, ENTER)  # too long: refused
        session.type(*[BACKSPACE] * 65, "desktop", ENTER)
        session.type(DOWN, ENTER)  # role: admin
        session.type("-3", ENTER)  # refused
        session.type(BACKSPACE, BACKSPACE, "2999-01-01", ENTER)
        session.type(ENTER)  # no limits or allow-list now
        session.type(*TO_EXIT)
    secrets = [line for line in session.said if looks_like_key(line)]
    assert len(secrets) == 1
    assert "will not be shown again" in session.output()
    _, desktop = keys_in(seeded)
    assert (desktop.user, desktop.name, desktop.role) == ("alice", "desktop", "admin")
    assert desktop.expires_at == 32472144000.0  # 2999-01-01T00:00:00Z
    assert desktop.limits == KeyLimits() and desktop.models is None


def test_generate_with_limits_and_an_allow_list(seeded: str) -> None:
    with menu(seeded) as session:
        session.type(ENTER, "bob", ENTER, "phone", ENTER, ENTER, ENTER)  # user role, never
        session.type("y")  # set limits and models now
        session.type(*[BACKSPACE] * 7, "20", ENTER)  # requests per minute
        session.type(*[BACKSPACE] * 7, "-1", ENTER, *[BACKSPACE] * 2, "none", ENTER)
        session.type(ENTER)  # tokens per day: default
        session.type(*[BACKSPACE] * 7, "3", ENTER)  # at once
        session.type(*[BACKSPACE] * 3, "llama3*,qwen2.5:0.5b", ENTER)
        session.type(*TO_EXIT)
    assert len([line for line in session.said if looks_like_key(line)]) == 1
    _, phone = keys_in(seeded)
    assert (phone.user, phone.name, phone.role) == ("bob", "phone", "user")
    assert phone.limits == KeyLimits(rpm=20, rph=0, tokens_per_day=None, max_concurrent=3)
    assert phone.models == ("llama3*", "qwen2.5:0.5b")


def test_list_shows_the_same_table_as_the_flag(seeded: str) -> None:
    with menu(seeded) as session:
        session.type(DOWN, ENTER, *TO_EXIT)
    assert run("-l", "--db", seeded)[1].strip() in session.output()


def test_revoke_picks_an_active_key_and_asks_first(seeded: str) -> None:
    with menu(seeded) as session:
        session.type(*TO_REVOKE, ENTER, ENTER, "n")  # declined
        session.type(*TO_REVOKE, ENTER, ENTER, "y")  # confirmed
        session.type(*TO_EXIT)
    assert "Nothing revoked." in session.output()
    assert "Revoked alice/laptop." in session.output()
    (record,) = keys_in(seeded)
    assert record.revoked


def test_export_asks_for_a_file_and_a_format(seeded: str, tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with menu(seeded) as session:
        session.type(*TO_EXPORT, ENTER, str(target), ENTER, ENTER)  # json, from the name
        session.type(*TO_EXPORT, ENTER, str(target), ENTER, ENTER, "n")  # exists: keep it
        session.type(*TO_EXIT)
    doc = json.loads(target.read_text())
    assert [k["user"] for k in doc["keys"]] == ["alice"]
    assert "Exported 1 keys" in session.output()
    assert "Nothing exported." in session.output()


@pytest.mark.parametrize("cancel", [CTRL_C, ESC], ids=["ctrl-c", "esc"])
def test_cancel_in_a_prompt_goes_back_to_the_menu(seeded: str, cancel: str) -> None:
    before = dump(seeded)
    with menu(seeded) as session:
        session.type(ENTER, "bob", ENTER, cancel)  # Generate, then cancel at the key name
        session.type(*TO_REVOKE, ENTER, cancel)  # Revoke, then cancel the choice
        session.type(*TO_EXIT)
    assert session.output().count("Cancelled.") == 2
    assert dump(seeded) == before


@pytest.mark.parametrize("cancel", [CTRL_C, ESC], ids=["ctrl-c", "esc"])
def test_cancel_in_the_menu_leaves(seeded: str, cancel: str) -> None:
    with menu(seeded) as session:
        session.type(cancel)
    assert session.said == []


def test_the_real_script_in_a_terminal(seeded: str) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real script, as a person starts it
        os.execv(
            sys.executable, [sys.executable, str(ROOT / "gen_api_key_cli_inter.py"), "--db", seeded]
        )
    screen = b""

    def read_until(text: bytes, timeout: float = 20) -> None:
        nonlocal screen
        deadline = time.monotonic() + timeout
        while text not in screen:
            assert time.monotonic() < deadline, screen.decode(errors="replace")
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(fd, 65536)
                except OSError:
                    break

    try:
        read_until(b"What do you want to do?")
        os.write(fd, DOWN.encode())
        time.sleep(0.2)
        os.write(fd, ENTER.encode())
        read_until(b"aig_")  # the list, with alice's display prefix
        read_until(b"What do you want to do?")
        time.sleep(0.3)  # let the prompt take the terminal
        screen = b""
        os.write(fd, CTRL_C.encode())
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"Traceback" not in screen


def test_the_real_script_refuses_a_bad_database_in_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    result = subprocess.run(
        [sys.executable, str(ROOT / "gen_api_key_cli_inter.py"), "--db", str(junk)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {junk}: not an aigateway database (not an SQLite file)"
    ]


def test_change_limits_models_and_role(seeded: str) -> None:
    with menu(seeded) as session:
        # Limits: rpm 30, rph "lots" (refused, then none), tokens default, concurrency 2
        session.type(*TO_CHANGE, ENTER, ENTER, DOWN, ENTER)
        session.type(*[BACKSPACE] * 7, "30", ENTER)
        session.type(*[BACKSPACE] * 7, "lots", ENTER, *[BACKSPACE] * 4, "none", ENTER)
        session.type(ENTER, *[BACKSPACE] * 7, "2", ENTER)
        # Models, then role
        session.type(*TO_CHANGE, ENTER, ENTER, DOWN, DOWN, ENTER)
        session.type(*[BACKSPACE] * 3, "llama3*, qwen3", ENTER)
        session.type(*TO_CHANGE, ENTER, ENTER, ENTER, DOWN, ENTER)
        session.type(*TO_EXIT)
    (record,) = keys_in(seeded)
    assert (
        record.limits.rpm,
        record.limits.rph,
        record.limits.tokens_per_day,
        record.limits.max_concurrent,
    ) == (30, 0, None, 2)
    assert record.models == ("llama3*", "qwen3")
    assert record.role == "admin"
    assert "must be a whole number" not in session.output()  # refused while typing, not after


def test_usage_report_and_export(seeded: str, tmp_path: Path) -> None:
    from .test_cli_flags import _seed_usage

    _seed_usage(seeded)
    target = tmp_path / "usage.csv"
    with menu(seeded) as session:
        session.type(*TO_USAGE, ENTER, DOWN, DOWN, ENTER, ENTER, ENTER)  # by model, all time
        session.type(*TO_USAGE, ENTER, ENTER, "2026-09-22", ENTER, ENTER)  # by user, since
        session.type(*TO_USAGE_EXPORT, ENTER, str(target), ENTER, "2026-09-21", ENTER, ENTER, ENTER)
        session.type(*TO_EXIT)
    assert "llama3.2" in session.output() and "all-minilm" in session.output()
    by_user_since = session.said[1]
    assert "ben" in by_user_since and "ann" not in by_user_since
    assert "Exported 3 usage records" in session.output()
    assert target.read_text().count("\n") == 4


def test_users_are_listed_added_disabled_and_enabled(seeded: str) -> None:
    with menu(seeded) as session:
        # Add: name, email, note.
        session.type(*TO_USERS, ENTER, DOWN, ENTER, "acme", ENTER, "ops@acme.example", ENTER)
        session.type("net 30", ENTER)
        # Disable: the only enabled users are acme and alice, in name order.
        session.type(*TO_USERS, ENTER, DOWN, DOWN, DOWN, ENTER, DOWN, ENTER)
        # List.
        session.type(*TO_USERS, ENTER, ENTER)
        # Enable: alice is the only disabled one.
        session.type(*TO_USERS, ENTER, DOWN, DOWN, DOWN, DOWN, ENTER, ENTER)
        session.type(*TO_EXIT)
    said = session.output()
    assert "Created user acme." in said
    assert "Disabled alice: its keys stop within a second." in said
    assert "Enabled alice: its keys work again within a second." in said
    assert "ops@acme.example" in said and "disabled" in said
    assert run("--users", "--format", "json", "--db", seeded)[1].count('"active"') == 2


def test_a_users_budget_is_set_and_checked(seeded: str) -> None:
    clear = [BACKSPACE] * 12
    with menu(seeded) as session:
        # Set: alice (the first user), 25 a week, alert at 80%.
        session.type(*TO_USERS, ENTER, *[DOWN] * 5, ENTER, ENTER, *clear, "25", ENTER)
        session.type(UP, ENTER, "80", ENTER)  # (from monthly, the default)
        # Check.
        session.type(*TO_USERS, ENTER, *[DOWN] * 6, ENTER, ENTER)
        # A bad amount is refused where it is typed, and Esc leaves it unchanged.
        session.type(*TO_USERS, ENTER, *[DOWN] * 5, ENTER, ENTER, *clear, "-3", ENTER, ESC)
        session.type(*TO_EXIT)
    said = session.output()
    assert "Set the budget of alice: 25.000000 weekly, alert 80%." in said
    assert "User alice: weekly budget 25.000000 USD, spent 0.000000" in said
    assert said.endswith("Cancelled.")
    listed = run("--users", "--format", "json", "--db", seeded)[1]
    assert '"period": "weekly"' in listed and '"amount": 25000000' in listed


def test_a_users_invoice_for_a_period(seeded: str) -> None:
    from .test_cli_flags import _seed_usage

    _seed_usage(seeded)
    assert run("--add-user", "ann", "--db", seeded)[0] == 0  # (the seeded records' user)
    with menu(seeded) as session:
        # alice, ann: the second; since 2026-09-01, until 2026-10-01.
        session.type(*TO_USERS, ENTER, *[DOWN] * 7, ENTER, DOWN, ENTER)
        session.type("2026-09-01", ENTER, "2026-10-01", ENTER)
        session.type(*TO_EXIT)
    said = session.output()
    assert "Invoice for ann, from 2026-09-01T00:00:00Z until 2026-10-01T00:00:00Z" in said
    assert "llama3.2" in said and "TOTAL" in said and "ben" not in said


def test_prices_are_set_listed_and_removed(seeded: str) -> None:
    clear = [BACKSPACE] * 12
    with menu(seeded) as session:
        # Set: pattern, then the four amounts (each shown as 0.000000 to start with).
        session.type(*TO_PRICES, ENTER, DOWN, ENTER, "llama3*", ENTER)
        session.type(*clear, "0.001", ENTER, *clear, "0.10", ENTER)
        session.type(*clear, "0.40", ENTER, ENTER)
        # A bad amount is refused as typed: fixed, then accepted.
        session.type(*TO_PRICES, ENTER, DOWN, ENTER, "*", ENTER, ENTER, ENTER, ENTER)
        session.type(*clear, "-1", ENTER, *clear, "0.0005", ENTER)
        session.type(*TO_PRICES, ENTER, ENTER)  # list
        session.type(*TO_PRICES, ENTER, DOWN, DOWN, ENTER, DOWN, ENTER)  # remove llama3*
        session.type(*TO_EXIT)
    said = session.output()
    assert "0.001000" in said and "0.400000" in said and "0.000500" in said
    assert "Removed the price of llama3*." in said
    listed = run("--prices", "--format", "json", "--db", seeded)[1]
    assert '"pattern": "*"' in listed and "llama3" not in listed


def test_models_are_synced_from_ollama_and_listed(
    seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sync asks OLLAMA_BASE_URL, as the server would; here nothing answers there: one
    clear line, and the menu goes on to list what was synced before (nothing)."""
    monkeypatch.setenv("OLLAMA_BASE_URL", "http://127.0.0.1:1")
    with menu(seeded) as session:
        session.type(*TO_PRICES, ENTER, *[DOWN] * 4, ENTER)  # sync
        session.type(*TO_PRICES, ENTER, *[DOWN] * 3, ENTER)  # list
        session.type(*TO_EXIT)
    said = session.output()
    assert "Error: cannot reach Ollama at http://127.0.0.1:1/api/tags" in said
    assert said.endswith("No models yet: --sync-models asks Ollama for them.")
