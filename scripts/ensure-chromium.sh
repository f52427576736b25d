#!/usr/bin/env bash
# Makes sure a Chromium (or Chrome) binary is on this machine: the dashboard's
# browser tests (server/ui) drive it headless over the DevTools protocol. They
# skip themselves when none is found, so CI must run this first.
set -euo pipefail
if [ -n "${CHROMIUM_PATH:-}" ] && [ -x "$CHROMIUM_PATH" ]; then exit 0; fi
for b in chromium chromium-browser google-chrome-stable google-chrome chrome headless-shell; do
	if command -v "$b" >/dev/null 2>&1; then exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	echo "Chromium not found: installing it with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq chromium >&2
	exit 0
fi
echo "Chromium not found; the browser tests (server/ui) will be skipped. Install it, e.g.:" >&2
echo "  sudo apt-get install -y chromium" >&2
exit 1
