#!/usr/bin/env bash
# Installs the outside tools that check the API as real clients use it, at
# pinned versions (CI runs this; the tests that need them skip without them
# unless REQUIRE_API_TOOLS is set):
#   - grpc-health-probe (Kubernetes-style gRPC health checks) and grpcurl,
#     with go install;
#   - Redocly CLI, Spectral, openapi-typescript and TypeScript, from
#     tools/api-check/package.json and its lock file, with npm ci.
set -euo pipefail
cd "$(dirname "$0")/.."

# go install, unless the pinned version is there already.
install_go_tool() { # name module@version
	local bin version=${2##*@}
	bin=$(go env GOPATH)/bin/$1
	if ! [ -x "$bin" ] || ! go version -m "$bin" 2>/dev/null | grep -q "$version"; then
		echo "installing $2" >&2
		go install "$2"
	fi
}
install_go_tool grpc-health-probe github.com/grpc-ecosystem/grpc-health-probe@v0.4.63
# The README's grpcurl commands are run as written (cmd/secretsd's README test).
install_go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3

if ! command -v npm >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "npm not found: installing Node.js with apt-get" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >&2
		apt-get install -y -qq nodejs npm >&2
	else
		echo "npm not found; install Node.js (20.19+) and npm" >&2
		exit 1
	fi
fi
dir=tools/api-check
stamp=$dir/node_modules/.package-lock.json
# npm writes node_modules/.package-lock.json on install: a lock file newer
# than it means the pins changed since.
if ! [ -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
	echo "installing the OpenAPI tools (npm ci in $dir)" >&2
	(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
fi
