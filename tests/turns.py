"""Turns for tests run side by side by pytest-xdist: a test that measures time or memory
runs alone (another test beside it would be part of what it measures, on two cores),
every other test beside any other.

A readers-writer lock on a file all workers share: a test takes it shared, one that runs
alone takes it whole. A turnstile in front gives the one waiting to run alone the next
turn, so that the other worker's tests, one after another, cannot keep it out for good."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def taking_turns(folder: Path, alone: bool) -> Iterator[None]:
    """Hold a turn, in `folder` (one for all workers), for as long as the block runs."""
    with (
        (folder / "turnstile.lock").open("a") as turnstile,
        (folder / "turns.lock").open("a") as turns,
    ):
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # behind any test waiting to run alone
        try:
            fcntl.flock(turns, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(turns, fcntl.LOCK_UN)
