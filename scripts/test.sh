#!/usr/bin/env bash
# Set up (once) and run the whole test suite: lint, types, unit, integration, engine and browser
# tests, under coverage (subprocesses included), then the coverage floors per package.
# Arguments go to pytest; with arguments (a subset of the tests) the floors are not checked.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
rm -rf .coverage-data && mkdir -p .coverage-data
status=0
if [ "$#" -eq 0 ]; then
  # the soak mostly waits on its faults: it runs alongside the rest (a minute saved);
  # its output follows the main run's
  soak_log="$(mktemp)"
  .venv/bin/coverage run -m pytest -m soak -p no:randomly >"$soak_log" 2>&1 &
  soak_pid=$!
  .venv/bin/coverage run -m pytest -m "not soak and not container" --durations=15 || status=$?
  soak_status=0
  wait "$soak_pid" || soak_status=$?
  echo "---- the soak (run alongside) ----"
  cat "$soak_log"
  rm -f "$soak_log"
  [ "$status" -ne 0 ] || status=$soak_status
else
  .venv/bin/coverage run -m pytest "$@" || status=$?
fi
.venv/bin/coverage combine -q >/dev/null 2>&1 || true
if [ "$status" -ne 0 ]; then
  exit "$status"
fi
if [ "$#" -eq 0 ]; then
  scripts/coverage_floors.sh
fi
