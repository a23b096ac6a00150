"""python -m aigateway.demo [--port N] [--fast]: see the package's docstring."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .run import main as run_demo
    except ModuleNotFoundError as exc:  # a checkout without its dependencies installed
        sys.stderr.write(
            f"aigateway demo: the Python package {exc.name!r} is missing: start the demo with"
            " ./run.sh demo, which installs what the gateway needs\n"
        )
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C before the demo could start
        sys.exit(130)
    try:
        sys.exit(run_demo(sys.argv[1:]))
    except KeyboardInterrupt:  # (the same, in the moment before it handles Ctrl-C)
        sys.exit(130)


if __name__ == "__main__":
    main()
