#!/usr/bin/env bash
# Makes sure local-kms (a local stand-in for AWS KMS, used by the awskms://
# KEK driver's tests in server/seal/kmsdrivers) is built into .build/bin.
# Pinned: the module has no release tags, so a commit's pseudo-version.
# Builds from the Go module proxy; takes ~1 minute the first time.
set -euo pipefail

LOCAL_KMS_VERSION=v0.0.0-20260228092603-2a5e92d09ab6
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/.build/bin"
stamp="$bin/local-kms.version"

if [ -x "$bin/local-kms" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$LOCAL_KMS_VERSION" ]; then
	exit 0
fi
mkdir -p "$bin"
echo "building local-kms $LOCAL_KMS_VERSION into .build/bin (AWS KMS stand-in for tests)" >&2
# pkg@version builds in its own module graph: local-kms is not a requirement of this project's go.mod.
GOBIN="$bin" go install "github.com/nsmithuk/local-kms@$LOCAL_KMS_VERSION"
echo "$LOCAL_KMS_VERSION" >"$stamp"
