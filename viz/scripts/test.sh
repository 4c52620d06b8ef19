#!/usr/bin/env sh
# Every dashboard check, for the repository's one test command:
#   sh viz/scripts/test.sh            lint (ESLint + tsc), unit tests, build
#   ENGINE_BIN=target/release/engine sh viz/scripts/test.sh
#                                     ... and the end-to-end run in headless Chromium
# Installs the locked npm dependencies when needed, and Debian's chromium for the
# end-to-end run when it is missing and we are root.
set -eu
cd "$(dirname "$0")/.."

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run lint
npm test
npm run build

if [ -n "${ENGINE_BIN:-}" ]; then
  if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  # pyarrow reads the Parquet the dialog downloads.
  E2E_PYTHON="$(../scripts/python-test-env)" npm run e2e
fi
