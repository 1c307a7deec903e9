#!/usr/bin/env bash
# Installs what the web app's browser test needs: Debian's chromium and playwright-core from npm
# (into serve-e2e/node_modules). No browser is downloaded by a test tool.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium missing and not root: skipping" >&2; exit 1
  fi
fi
if [ -f tests/e2e/package.json ] && command -v npm >/dev/null 2>&1; then
  (cd tests/e2e && npm install --no-audit --no-fund --silent)
fi
