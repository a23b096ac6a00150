#!/usr/bin/env bash
# ./run.sh            serve in the foreground (extra arguments go to the server)
# ./run.sh test       lint, type-check and run the whole test suite (extra arguments go to pytest)
# ./run.sh bench      run the benchmark (extra arguments go to it)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        echo "run.sh: creating $VENV" >&2
        "$PYTHON" -m venv "$VENV"
    fi
}

# Install the project (with extras $1) unless pyproject.toml is unchanged since the last install.
# An install with the dev extras also serves, so switching between serve and test is free.
install() {
    local extras=$1 stamp="$VENV/.aigateway-install" want hash
    hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    want="$hash [$extras]"
    if [ -f "$stamp" ] && { grep -qxF "$want" "$stamp" || grep -qxF "$hash [dev]" "$stamp"; }; then
        return
    fi
    echo "run.sh: installing aigateway${extras:+[$extras]} into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
    echo "$want" >"$stamp"
}

case "${1:-}" in
    test)
        shift
        ensure_venv
        install dev
        echo "run.sh: ruff" >&2
        "$VENV/bin/ruff" check .
        echo "run.sh: mypy" >&2
        "$VENV/bin/mypy"
        echo "run.sh: pytest" >&2
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    bench)
        shift
        ensure_venv
        install dev
        exec "$VENV/bin/python" -m aigateway.bench "$@"
        ;;
    *)
        ensure_venv
        install ""
        if [ ! -f .env ]; then
            cp .env.example .env && chmod 600 .env  # it may come to hold UPSTREAM_API_KEY
            echo "run.sh: created .env from .env.example; edit it to change settings" >&2
        fi
        "$VENV/bin/python" -m aigateway --init-db
        exec "$VENV/bin/python" -m aigateway "$@"
        ;;
esac
