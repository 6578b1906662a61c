#!/bin/sh
# Set up a development / CI environment: tvbridge with its test tools, plus the sample broker plugin from
# plugins/, installed as its own distribution so it is found through its entry point the way any third-party
# plugin is (issue 7: the tests must fail, not skip, when it is missing).
# Usage: scripts/install-dev.sh [python]   (default: .venv/bin/python, created with python3 if missing)
set -eu
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    python3 -m venv .venv
    PY=.venv/bin/python
fi
"$PY" -m pip install -q -e '.[test]'
"$PY" -m pip install -q -e 'plugins/tvbridge-samplebroker[test]'
