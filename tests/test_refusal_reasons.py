"""The one list of refusal reasons is the one the README gives."""

from __future__ import annotations

import re
from pathlib import Path

from aigateway.errors import Refused

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_names_every_refusal_reason_and_no_other() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("**Refusal reasons.**")
    paragraph = text[start : text.index("The counters are", start)]
    listed = re.findall(r"`([a-z_]+)`", paragraph.split("aigateway_refusals_total", 1)[1])
    assert listed == [reason.value for reason in Refused]
