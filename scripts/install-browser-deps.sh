#!/usr/bin/env bash
# Installs what the web app's browser test (tests/test_serve_browser.py) needs: Debian's chromium
# and playwright-core from npm (into tests/e2e/node_modules). No browser is downloaded by a test
# tool: playwright-core drives /usr/bin/chromium. Without these the browser test skips loudly, or
# fails under CI (CI=true); exits non-zero when it cannot install them (.ci/run stops there).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium missing and cannot apt-get install it (not root): the browser test cannot run" >&2; exit 1
  fi
fi
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  echo "node/npm missing: the browser test cannot run (apt-get install nodejs npm)" >&2; exit 1
fi
cd tests/e2e
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --silent
else
  npm install --no-audit --no-fund --silent
fi
