#!/usr/bin/env bash
# Builds the container image (Containerfile) with podman: static secretsd and
# secretctl built here, the host's CA bundle, a passwd entry for the
# unprivileged user, on an empty base (FROM scratch: nothing is pulled).
#
#   IMAGE=orient-secrets:dev VERSION=v1.2.3 scripts/build-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-orient-secrets:dev}
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain 2>/dev/null)" ]; then REVISION="$REVISION-dirty"; fi
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -r "$CA_BUNDLE" ] || { echo "no CA bundle at $CA_BUNDLE (apt-get install ca-certificates)" >&2; exit 1; }

ctx=.build/image
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"

CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$VERSION" \
	-o "$ctx/rootfs/usr/local/bin/" ./cmd/secretsd ./cmd/secretctl
cp "$CA_BUNDLE" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nsecretsd:x:65532:65532:secretsd:/nonexistent:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nsecretsd:x:65532:\n' >"$ctx/rootfs/etc/group"
cp Containerfile "$ctx/Containerfile"

podman build --quiet --pull=never -f "$ctx/Containerfile" \
	--build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg CREATED="$CREATED" \
	-t "$IMAGE" "$ctx" >/dev/null
echo "built $IMAGE (version $VERSION, revision $REVISION)"
