#!/usr/bin/env bash
# Installs Azurite, Microsoft's local Azure Storage emulator, for the
# azblob:// blob driver's tests (server/blobstore, and the audit checkpoint
# anchor's end-to-end test in server/app start it on a loopback port). The
# version is pinned in tools/azurite/package.json and package-lock.json;
# `npm ci` fetches exactly that from the npm registry into
# tools/azurite/node_modules (git-ignored). Cheap when already installed.
# Without npm it installs Debian's nodejs and npm as root, and otherwise
# says how (the Azure tests then skip, or fail with REQUIRE_API_TOOLS=1).
set -euo pipefail
cd "$(dirname "$0")/../tools/azurite"
want=$(sed -n 's/.*"azurite": *"\([^"]*\)".*/\1/p' package.json | head -1)
have=$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' node_modules/azurite/package.json 2>/dev/null | head -1 || true)
if [ -n "$want" ] && [ "$have" = "$want" ] && [ -x node_modules/.bin/azurite-blob ]; then exit 0; fi
if ! command -v npm >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "npm not found: installing nodejs and npm with apt-get" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >&2
		apt-get install -y -qq nodejs npm >&2
	else
		echo "npm not found; the azblob:// driver's tests need it for Azurite. Install it, e.g.:" >&2
		echo "  sudo apt-get install -y nodejs npm" >&2
		exit 1
	fi
fi
echo "installing Azurite $want into tools/azurite (npm ci)" >&2
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
