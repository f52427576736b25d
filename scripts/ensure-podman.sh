#!/usr/bin/env bash
# Makes sure podman is on this machine: `make image` builds the container
# image with it (no Docker daemon here). Debian's package, pinned by the
# distribution release.
set -euo pipefail
if command -v podman >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	echo "podman not found: installing it with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
	apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends podman >&2
	exit 0
fi
echo "podman not found. Install it, e.g.:" >&2
echo "  sudo apt-get install -y --no-install-recommends podman" >&2
exit 1
