#!/usr/bin/env bash
# Set up everything LinguaMesh needs on a fresh Debian/Ubuntu machine, idempotently:
#   system packages (apt-get, only those missing), a virtualenv in .venv, pip packages.
# Usage: scripts/setup.sh [run|test|container]   ("test" adds redis-server, chromium and the test
# tools; "container" adds podman, runc and mmdebstrap for the container image's test as well)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*" >&2; }

# ---------------------------------------------------------------- system packages
apt_pkgs=(espeak-ng apertium apertium-eng-spa libsndfile1 redis-server)
if [ "$mode" = "container" ]; then
  # the dnsname CNI plugin: containers of a compose project find each other by service
  # name (podman 4 with CNI networks, as on Debian 12; not a dependency of podman there)
  apt_pkgs+=(podman runc mmdebstrap golang-github-containernetworking-plugin-dnsname)
  mode=test
fi
if [ "$mode" = "test" ]; then
  # prometheus: a real server and promtool for the dashboard and alert-rule tests;
  # nginx: the shipped load-balancer example runs in front of two schedulers
  apt_pkgs+=(chromium prometheus nginx libzbar0)
  command -v npm >/dev/null || apt_pkgs+=(npm)
fi
missing=()
for pkg in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root or sudo to install: ${missing[*]}"; exit 1; }
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# ---------------------------------------------------------------- python
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { say "Python 3.11 or newer is needed"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  "$PY" -m venv .venv || { say "python venv module missing: apt-get install python3-venv"; exit 1; }
fi

extras="engines"
[ "$mode" = "test" ] && extras="engines,test"
hash="$(sha256sum pyproject.toml | cut -c1-16)"
stamp=".venv/.linguamesh-$hash-$extras"
# the test set includes the run set: after the test set-up, running needs no install
if [ "$extras" = "engines" ] && [ -f ".venv/.linguamesh-$hash-engines,test" ]; then
  stamp=".venv/.linguamesh-$hash-engines,test"
fi
if [ ! -f "$stamp" ]; then
  say "installing Python packages ($extras)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[$extras]"
  rm -f .venv/.linguamesh-*
  touch "$stamp"
fi

# ---------------------------------------------------------------- test tools from npm
# axe-core (accessibility checks run inside the pages by the browser tests)
AXE_VERSION=4.14.1
if [ "$mode" = "test" ] && [ ! -f ".venv/npm/node_modules/axe-core/axe.min.js" ]; then
  say "installing axe-core $AXE_VERSION (npm)"
  npm install --prefix .venv/npm --no-audit --no-fund --silent "axe-core@$AXE_VERSION" >/dev/null
fi
# the JavaScript SDK's test dependency (ws: node 20 has no WebSocket), from its lock file
if [ "$mode" = "test" ] && [ ! -d clients/js/node_modules/ws ]; then
  say "installing the JavaScript SDK's test dependencies (npm ci in clients/js)"
  npm ci --prefix clients/js --no-audit --no-fund --silent >/dev/null
fi
say "ready"
