#!/usr/bin/env bash
# Creates .venv (if needed) and installs fastq in editable mode with its test, lint and bench tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip 2>&1 | grep -v 'is ignored' || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,lint,bench]' 2>&1 | grep -v 'is ignored' || true
.venv/bin/python -c 'import fastq._core, fastq._ipc, fastq._amqp; print("fastq", fastq._core.__version__, fastq._core.build_profile, "built")'
