#!/usr/bin/env bash
# The binary to ship to a fleet: the release build with its debug info and symbols split off
# into `dataway.debug` beside it (linked by `.gnu_debuglink`). Keep the two together (or put
# the .debug file under /usr/lib/debug/.build-id/) and a panic's backtrace still names
# functions, files and lines; without it the binary runs the same, backtraces are bare.
#   bash build/dist.sh            -> target/dist/dataway, target/dist/dataway.debug
# Fails if the binary is over 30 MB (issue 13: DataKit's is 130 MB; be the small one).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --bin dataway
out="$target/dist"
mkdir -p "$out"
cp "$target/release/dataway" "$out/dataway"
objcopy --only-keep-debug "$out/dataway" "$out/dataway.debug"
# --add-gnu-debuglink records the .debug file's name and checksum: a mismatched one is ignored.
(cd "$out" && objcopy --strip-all --add-gnu-debuglink=dataway.debug dataway)
size=$(stat -c %s "$out/dataway")
echo "$out/dataway: $((size / 1024 / 1024)) MiB ($size bytes); symbols: $out/dataway.debug"
limit=$((30 * 1000 * 1000))
if [ "$size" -gt "$limit" ]; then
  echo "error: the binary is over 30 MB" >&2
  exit 1
fi
