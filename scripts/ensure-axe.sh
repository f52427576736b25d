#!/usr/bin/env bash
# Installs axe-core for the dashboard's accessibility checks (server/ui's
# browser tests inject it into each view). The version is pinned in
# tools/axe/package.json and package-lock.json (with its integrity hash);
# `npm ci` fetches exactly that from the npm registry into
# tools/axe/node_modules (git-ignored: axe's source is never committed).
# Cheap when already installed. Without npm it installs Debian's nodejs and
# npm as root, and otherwise says how (the tests then skip their axe checks,
# or fail with REQUIRE_BROWSER_TESTS=1).
set -euo pipefail
cd "$(dirname "$0")/../tools/axe"
want=$(sed -n 's/.*"axe-core": *"\([^"]*\)".*/\1/p' package.json | head -1)
have=$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' node_modules/axe-core/package.json 2>/dev/null | head -1 || true)
if [ -n "$want" ] && [ "$have" = "$want" ] && [ -f node_modules/axe-core/axe.min.js ]; then exit 0; fi
if ! command -v npm >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "npm not found: installing nodejs and npm with apt-get" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >&2
		apt-get install -y -qq nodejs npm >&2
	else
		echo "npm not found; the dashboard's axe checks need it. Install it, e.g.:" >&2
		echo "  sudo apt-get install -y nodejs npm" >&2
		exit 1
	fi
fi
echo "installing axe-core $want into tools/axe (npm ci)" >&2
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
