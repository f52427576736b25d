#!/usr/bin/env bash
# Makes sure the external load tools of `make bench` are on this machine:
# wrk (REST load) and pgbench (PostgreSQL's point-read ceiling, shipped with
# the PostgreSQL server package). Installs them with apt-get when run as root
# on Debian; otherwise only says what is missing. Never fails: the bench tool
# skips the figures of a missing tool with a note.
set -uo pipefail

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
have_pgbench=false
for d in $(pg_config --bindir 2>/dev/null) /usr/lib/postgresql/*/bin; do
	if [ -x "$d/pgbench" ]; then have_pgbench=true; break; fi
done
command -v pgbench >/dev/null 2>&1 && have_pgbench=true
$have_pgbench || missing+=(postgresql)

if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "bench tools missing (${missing[*]}): installing them with apt-get" >&2
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -qq "${missing[@]}" >&2; then
		apt-get update -qq >&2 || true
		apt-get install -y -qq "${missing[@]}" >&2 ||
			echo "warning: could not install ${missing[*]}; their figures will be skipped" >&2
	fi
	exit 0
fi
echo "warning: bench tools missing (${missing[*]}); install them with:" >&2
echo "  sudo apt-get install -y ${missing[*]}" >&2
echo "their figures will be skipped" >&2
exit 0
