#!/usr/bin/env bash
# Set up (once) and run the whole test suite: lint, types, unit, integration, engine and browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
