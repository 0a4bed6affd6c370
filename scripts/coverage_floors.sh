#!/usr/bin/env bash
# Branch coverage per package against its floor; exits non-zero when one is below.
# Run after the suite ran under coverage (scripts/test.sh does both).
set -uo pipefail
cd "$(dirname "$0")/.."
COV=.venv/bin/coverage
status=0
report() {  # name floor include-pattern
  local name=$1 floor=$2 include=$3
  local pct
  pct=$($COV report --include="$include" --format=total 2>/dev/null) || pct=0
  if awk -v p="$pct" -v f="$floor" 'BEGIN { exit !(p + 0 >= f + 0) }'; then
    printf '  %-12s %6s %%   (floor %s %%)\n' "$name" "$pct" "$floor"
  else
    printf '  %-12s %6s %%   BELOW the floor of %s %%\n' "$name" "$pct" "$floor"
    status=1
  fi
}
echo "branch coverage (statements and branches):"
report core 95 "src/linguamesh/core/*"
report protocol 95 "src/linguamesh/protocol/*"
report state 85 "src/linguamesh/state/*"
report scheduler 85 "src/linguamesh/scheduler/*"
report node 0 "src/linguamesh/node/*"
report engines 0 "src/linguamesh/engines/*"
report overall 80 "src/linguamesh/*"
exit $status
