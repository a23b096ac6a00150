#!/usr/bin/env bash
# ./run.sh            serve in the foreground (extra arguments go to the server)
# ./run.sh test       lint, type-check, build the docs and run the whole test suite on two
#                     workers (as root, it first installs what the tests need: PostgreSQL,
#                     Chromium, nginx, node; otherwise it says what is missing)
#                     (TEST_WORKERS=N for another number; extra arguments go to pytest)
# ./run.sh bench      run the benchmark (extra arguments go to it)
# ./run.sh demo       the gateway on a simulated Ollama with throw-away data, keys and a
#                     little traffic; Ctrl-C removes it all (extra arguments go to it:
#                     --port N, --fast); neither .env nor the key database is touched
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
NEEDS='import sys; sys.exit(sys.version_info < (3, 11))'

# The Python to make .venv with: $PYTHON if set, else the first of python3, python3.13,
# python3.12, python3.11 on PATH that is 3.11 or newer.
find_python() {
    local candidate found=""
    for candidate in ${PYTHON:-python3 python3.13 python3.12 python3.11}; do
        if ! command -v "$candidate" >/dev/null 2>&1; then
            continue
        fi
        if "$candidate" -c "$NEEDS" 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
        found="$found $candidate ($("$candidate" --version 2>&1 | head -n1))"
    done
    echo "run.sh: aigateway needs Python 3.11 or newer; found:${found:- no python3 on PATH}." >&2
    echo "run.sh: install one, or point PYTHON= at it: PYTHON=/usr/bin/python3.12 ./run.sh" >&2
    return 1
}

ensure_venv() {
    # A .venv made by a Python that is too old, or no longer there, is made again.
    if [ -e "$VENV" ] && ! "$VENV/bin/python" -c "$NEEDS" 2>/dev/null; then
        echo "run.sh: $VENV was made by $("$VENV/bin/python" --version 2>&1 | head -n1 ||
            echo 'a Python that is gone'), not 3.11+; making it again" >&2
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        local python
        python=$(find_python) || exit 1
        echo "run.sh: creating $VENV with $python ($("$python" --version 2>&1))" >&2
        "$python" -m venv "$VENV"
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

# What the tests need besides Python: PostgreSQL (the store's tests start a server of their
# own), Chromium (the dashboard's), nginx and openssl (the reverse-proxy recipe), node and
# npm (the JavaScript clients). As root, install the missing ones with apt-get (as CI
# does); otherwise stop at once with one line saying what to install.
test_needs() {
    local missing=() packages=()
    if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
        missing+=(PostgreSQL) packages+=(postgresql)
    fi
    if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
        missing+=(Chromium) packages+=(chromium)
    fi
    if ! command -v nginx >/dev/null 2>&1 && ! [ -x /usr/sbin/nginx ]; then
        missing+=(nginx) packages+=(nginx)
    fi
    if ! command -v openssl >/dev/null 2>&1; then
        missing+=(openssl) packages+=(openssl)
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        missing+=(node) packages+=(nodejs npm)
    fi
    if [ ${#packages[@]} -eq 0 ]; then
        return
    fi
    if [ "$EUID" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "run.sh: installing what the tests need: ${packages[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
        return
    fi
    echo "run.sh: the tests need ${missing[*]}: install them (sudo apt-get install -y ${packages[*]}), or run ./run.sh test as root to have them installed" >&2
    exit 1
}

case "${1:-}" in
    test)
        shift
        test_needs
        ensure_venv
        install dev
        echo "run.sh: ruff" >&2
        "$VENV/bin/ruff" check .
        echo "run.sh: mypy" >&2
        "$VENV/bin/mypy"
        echo "run.sh: import layers" >&2
        "$VENV/bin/lint-imports" --no-cache
        echo "run.sh: mkdocs build --strict" >&2
        site=$(mktemp -d)  # built and thrown away: the gateway does not serve it
        NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --quiet --site-dir "$site" || { rm -rf "$site"; exit 1; }
        rm -rf "$site"
        echo "run.sh: pytest" >&2
        # Two workers (CI has two cores; most tests wait on servers more than they
        # compute), each given the next tests in order as it finishes some, so that the
        # tests that run alone, collected last, come last (tests/turns.py; work stealing
        # would take them from the end at once). `-n 0` after it runs them in one process.
        exec "$VENV/bin/python" -m pytest -n "${TEST_WORKERS:-2}" --dist load "$@"
        ;;
    bench)
        shift
        ensure_venv
        install dev
        exec "$VENV/bin/python" -m aigateway.bench "$@"
        ;;
    demo)
        shift
        ensure_venv
        install ""
        exec "$VENV/bin/python" -m aigateway.demo "$@"
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
