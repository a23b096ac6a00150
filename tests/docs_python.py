"""The one Python interpreter of a docs page (tests/docs_examples.py starts it).

Each line on stdin names a request file (JSON: the block's file, the page, the
environment and folder to run it in, and where to write the outcome). The blocks of a
page share one namespace, as in one interactive session; each runs with the environment
the page's shell had exported by then. Its output goes to this process's stdout and
stderr; the outcome (JSON: ok, and the page's line where it failed) goes to the named file,
written whole (a rename) so the runner never reads half of one.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def run_block(request: dict[str, Any], namespace: dict[str, Any]) -> dict[str, Any]:
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    # Blank lines before the block: the page's line numbers in every traceback.
    source = Path(request["code"]).read_text()
    try:
        exec(compile(source, request["page"], "exec"), namespace)
    except SystemExit as exc:
        if exc.code in (None, 0):
            return {"ok": True, "line": None}
        return _failed(exc, request["page"])
    except BaseException as exc:
        return _failed(exc, request["page"])
    return {"ok": True, "line": None}


def _failed(exc: BaseException, page: str) -> dict[str, Any]:
    """Print the traceback from the block's own frames on (not this file's exec)."""
    below = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    traceback.print_exception(type(exc), exc, below)
    return {"ok": False, "line": _page_line(exc, page)}


def _page_line(exc: BaseException, page: str) -> int | None:
    """The last line of the page that the traceback passes through."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == page:
            line = frame.lineno
    if line is None and isinstance(exc, SyntaxError) and exc.filename == page:
        line = exc.lineno
    return line


def main() -> None:
    # The requests on a descriptor of their own; stdin (0, which child processes inherit)
    # is /dev/null, so a block that reads stdin reads nothing, not the next request.
    requests = os.fdopen(os.dup(0))
    nothing = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nothing, 0)
    os.close(nothing)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for line in requests:
        request = json.loads(Path(line.strip()).read_text())
        outcome = run_block(request, namespace)
        sys.stdout.flush()
        sys.stderr.flush()
        written = Path(request["outcome"] + ".part")
        written.write_text(json.dumps(outcome))
        written.rename(request["outcome"])


if __name__ == "__main__":
    main()
