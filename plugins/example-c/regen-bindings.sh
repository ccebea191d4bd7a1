#!/bin/sh
# Regenerates gen/ (the C bindings) after wit/sinker.wit changes. Only needed then:
# gen/ is checked in so that building needs no wit-bindgen.
#
# Needs: cargo install wit-bindgen-cli@0.63.0 --locked --no-default-features --features c
#
# --autodrop-borrows yes: the generated glue drops the borrowed `batch` handle after
# `matches` returns, as the component model requires.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$root/plugins/example-c/gen"
wit-bindgen c --autodrop-borrows yes --out-dir "$root/plugins/example-c/gen" -w sinker "$root/wit"
