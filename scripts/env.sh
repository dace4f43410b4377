#!/usr/bin/env bash
# Prints the path of a ready Python environment for MAEAnomaly, creating it on first use.
# The environment is cached outside the checkout, keyed by requirements.txt, so fresh clones
# (and CI) reuse it instead of downloading torch again.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then py="$cand"; break; fi
  done
fi
[ -n "$py" ] || { echo "env.sh: no python3 found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
key="$( (cat "$root/requirements.txt"; echo "$pyver") | sha256sum | cut -c1-12)"
venv="${MAEANOMALY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/maeanomaly/venv-py$pyver-$key}"
if [ ! -f "$venv/.complete" ]; then
  echo "env.sh: creating the environment in $venv (first run only; torch is large)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$venv/bin/python" -m pip install --quiet -r "$root/requirements.txt" >&2
  touch "$venv/.complete"
fi
echo "$venv"
