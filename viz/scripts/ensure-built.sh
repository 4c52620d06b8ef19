#!/usr/bin/env sh
# Builds the dashboard into viz/dist when it is missing or older than its sources,
# installing the locked npm dependencies first when needed. Cheap when up to date,
# so the repository's run command can call it every time:
#   sh viz/scripts/ensure-built.sh && cargo run --release -- serve
set -eu
cd "$(dirname "$0")/.."

if ! command -v npm >/dev/null 2>&1; then
  echo "viz: npm (Node 20+) is needed to build the dashboard" >&2
  exit 1
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "viz: installing npm dependencies (npm ci)" >&2
  npm ci --no-audit --no-fund >&2
fi

stale=0
if [ ! -f dist/index.html ]; then
  stale=1
elif [ -n "$(find src index.html package-lock.json vite.config.ts -newer dist/index.html -print -quit)" ]; then
  stale=1
fi
if [ "$stale" = 1 ]; then
  echo "viz: building the dashboard (npm run build)" >&2
  npm run build >&2
fi
