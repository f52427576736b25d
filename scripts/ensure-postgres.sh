#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (initdb, postgres) are on this
# machine: tests and the embedded default start a private cluster from them.
set -euo pipefail
for d in $(pg_config --bindir 2>/dev/null) /usr/lib/postgresql/*/bin; do
	if [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	echo "PostgreSQL server binaries not found: installing them with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq postgresql >&2
	exit 0
fi
echo "PostgreSQL server binaries (initdb, postgres) not found. Install them, e.g.:" >&2
echo "  sudo apt-get install -y postgresql" >&2
exit 1
