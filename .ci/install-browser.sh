#!/usr/bin/env bash
# Debian's Chromium, driven by Playwright in the web-page tests. Installed only where missing and only
# when we may use apt (root); otherwise the browser tests say how to install it and skip nothing else.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing Debian chromium for the browser tests"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "!! chromium is missing and this user cannot apt-get it: run 'sudo apt-get install chromium'" >&2
  exit 1
fi
