#!/usr/bin/env bash
# buf breaking (FILE rules) of proto/ against main. The google/api protos
# are fetched into a git-ignored folder, so the old revision is checked out
# into a temporary worktree and given the same folder before it is built.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
BUF=(go tool -modfile=tools/go.mod buf)
against=""
for ref in origin/main main; do
	if git rev-parse --verify -q "$ref" >/dev/null; then against=$ref; break; fi
done
if [ -z "$against" ]; then
	echo "buf breaking: no main branch to compare against"
	exit 0
fi
if ! git cat-file -e "$against:proto" 2>/dev/null; then
	echo "buf breaking: $against has no proto/ yet"
	exit 0
fi
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/old" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git worktree add --detach -q "$tmp/old" "$against"
mkdir -p "$tmp/old/.build"
cp -r .build/googleapis "$tmp/old/.build/"
(cd "$tmp/old" && "${BUF[@]}" build -o "$tmp/against.binpb")
"${BUF[@]}" build -o "$tmp/current.binpb"
"${BUF[@]}" breaking "$tmp/current.binpb" --against "$tmp/against.binpb" --config '{"version":"v2","breaking":{"use":["FILE"]}}'
echo "buf breaking: no breaking change against $against"
