#!/usr/bin/env bash
# Fails when a full clone of this repository (work tree and .git, every commit's history) exceeds a limit:
# the Slicer Extensions Index refuses repositories over 100 MB, CI stops at 90 MB (models/README.md).
#   bash scripts/clone_size.sh [LIMIT_MB]      (default 90; MB = 10^6 bytes)
# It clones HEAD's history with `git clone --no-local` (objects copied and packed as a remote clone
# gets them, no hard links) into a temporary folder and measures it with du; uncommitted files do not count.
set -euo pipefail
limit_mb="${1:-90}"
[[ "$limit_mb" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "clone_size.sh: the limit must be a number of MB, not '$limit_mb'" >&2; exit 2; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$(git -C "$root" rev-parse --is-shallow-repository)" = "true" ]; then
  echo "clone_size.sh: warning: this checkout is shallow, so the size below leaves out history (a lower bound)" >&2
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
git clone --quiet --no-local "$root" "$tmp/clone" 2>"$tmp/err" || { echo "clone_size.sh: git clone failed: $(head -c 300 "$tmp/err")" >&2; exit 2; }
bytes="$(du -sb "$tmp/clone" | cut -f1)"
size_mb="$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')"
if awk -v b="$bytes" -v l="$limit_mb" 'BEGIN { exit !(b > l * 1e6) }'; then
  echo "clone_size.sh: a full clone is $size_mb MB, over the limit of $limit_mb MB (the Extensions Index refuses 100 MB); see models/README.md" >&2
  exit 1
fi
echo "clone_size.sh: a full clone is $size_mb MB (limit $limit_mb MB)"
