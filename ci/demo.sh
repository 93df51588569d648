#!/usr/bin/env bash
# README.md's first command: set up, then run the quickstart app on the embedded SQLite broker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/install-deps.sh >/dev/null
bash ci/setup-venv.sh >/dev/null
exec .venv/bin/python examples/demo.py "$@"
