#!/bin/sh
# Builds the C example plugin into a WebAssembly component.
# Usage: ./build.sh OUT.wasm
#        ./build.sh --check     (only checks that the toolchain is here; exit 1 and why if not)
#
# Needs clang-19, lld-19 (wasm-ld), wasi-libc and libclang-rt-19-dev-wasm32
# (Debian/Ubuntu: apt-get install clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32),
# and a Rust toolchain, which ships `wasm-component-ld`: a wasm-ld wrapper that turns
# the linked module into a component, using the WIT world embedded in
# gen/sinker_component_type.o. No wit-bindgen is needed: gen/ is checked in.
set -eu
out=${1:?usage: $0 OUT.wasm}
here=$(cd "$(dirname "$0")" && pwd)
sysroot=/usr  # Debian's wasi-libc: /usr/include/wasm32-wasi, /usr/lib/wasm32-wasi

die() { echo "error: $*" >&2; exit 1; }
command -v clang-19 >/dev/null 2>&1 || die "clang-19 not found (apt-get install clang-19 lld-19)"
[ -f "$sysroot/lib/wasm32-wasi/libc.a" ] || die "wasi-libc not found in $sysroot (apt-get install wasi-libc)"
command -v wasm-ld-19 >/dev/null 2>&1 || die "wasm-ld-19 not found (apt-get install lld-19)"
[ -f "$(clang-19 --target=wasm32-wasi -print-libgcc-file-name)" ] ||
    die "clang's wasm32 builtins not found (apt-get install libclang-rt-19-dev-wasm32)"
linker=${WASM_COMPONENT_LD:-$(dirname "$(rustc --print target-libdir 2>/dev/null || echo .)")/bin/wasm-component-ld}
[ -x "$linker" ] || die "wasm-component-ld not found at '$linker' (install Rust via rustup, or set WASM_COMPONENT_LD)"
[ "$out" = "--check" ] && exit 0

# -mexec-model=reactor: a library-like module (no main) whose exports the host calls.
# -fuse-ld: clang runs wasm-component-ld like wasm-ld (and tells it where wasm-ld is).
# -s: strip debug info and names; drop it to debug.
clang-19 --target=wasm32-wasi --sysroot="$sysroot" -mexec-model=reactor \
    -O2 -s -Wall -Wextra -I"$here/gen" -fuse-ld="$linker" -o "$out" \
    "$here/guest.c" "$here/gen/sinker.c" "$here/gen/sinker_component_type.o"
