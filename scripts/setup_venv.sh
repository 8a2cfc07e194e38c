#!/usr/bin/env bash
# Create .venv (when missing or stale) with the pinned requirements and this package installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt setup.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv (Python $(python3 --version | cut -d' ' -f2))"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo ".venv is ready"
