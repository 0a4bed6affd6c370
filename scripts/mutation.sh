#!/usr/bin/env bash
# Mutation testing (mutmut) of the core, the protocol and the memory store against the unit
# and contract tests; prints the score per module. Not part of CI: it takes about ten minutes
# on two cores. Configuration: [tool.mutmut] in pyproject.toml; what survives and why is in
# docs/testing.md.  Usage: scripts/mutation.sh [--fresh]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/python -m pip show mutmut >/dev/null 2>&1 || .venv/bin/python -m pip install -q "mutmut>=3.8"
if [ "${1:-}" = "--fresh" ]; then rm -rf mutants; fi
.venv/bin/mutmut run --max-children "$(nproc)" > /dev/null 2>&1 || true
.venv/bin/mutmut results --all true 2>/dev/null | .venv/bin/python scripts/mutation_score.py
