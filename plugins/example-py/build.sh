#!/bin/sh
# Builds the Python example plugin into a WebAssembly component.
# Usage: ./build.sh OUT.wasm      (needs: pip install componentize-py==0.25.1)
#        ./build.sh --check        (only checks that componentize-py is here)
set -eu
out=${1:?usage: $0 OUT.wasm}
here=$(cd "$(dirname "$0")" && pwd)
# The console script, or the module behind it when the script is not on PATH (e.g. pyenv
# shims not yet rehashed after pip install).
if command -v componentize-py >/dev/null 2>&1; then
    cpy() { componentize-py "$@"; }
elif python3 -c 'import componentize_py' >/dev/null 2>&1; then
    cpy() { python3 -c 'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' "$@"; }
else
    echo "error: componentize-py not found; install it with: pip install componentize-py==0.25.1" >&2
    exit 1
fi
[ "$out" = "--check" ] && exit 0
# --stub-wasi: the daemon offers no WASI, so every WASI import becomes a trapping stub.
# The bindings (wit_world, componentize_py_types) are generated on the fly.
cpy -d "$here/../../wit" -w sinker componentize -p "$here" app --stub-wasi -o "$out"
