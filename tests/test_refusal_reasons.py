"""The one list of refusal reasons is the one the docs give (docs/logs-metrics.md)."""

from __future__ import annotations

import re
from pathlib import Path

from aigateway.errors import Refused

PAGE = Path(__file__).resolve().parent.parent / "docs" / "logs-metrics.md"


def test_the_docs_name_every_refusal_reason_and_no_other() -> None:
    text = PAGE.read_text(encoding="utf-8")
    start = text.index("## Refusal reasons")
    paragraph = text[start : text.index("The counters are", start)]
    listed = re.findall(r"`([a-z_]+)`", paragraph.split("aigateway_refusals_total", 1)[1])
    assert listed == [reason.value for reason in Refused]
