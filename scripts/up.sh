#!/usr/bin/env bash
# Set up (once) and run LinguaMesh: scheduler + local node + web page on http://127.0.0.1:5010
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh run
exec .venv/bin/linguamesh up "$@"
