#!/usr/bin/env bash
# Builds libckpt (release) and installs the shared and static libraries, the C header, the
# Fortran module source and a pkg-config file under PREFIX (default /usr/local).
#   scripts/install-c.sh [PREFIX]
#   cc prog.c $(PKG_CONFIG_PATH=PREFIX/lib/pkgconfig pkg-config --cflags --libs ckpt)
# PROFILE=debug installs the debug build instead (the tests do).
set -euo pipefail
prefix=${1:-/usr/local}
profile=${PROFILE:-release}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ "$profile" = release ]; then cargo build --release -p ckpt; else cargo build -p ckpt; fi
target=${CARGO_TARGET_DIR:-$root/target}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' libckpt/Cargo.toml | head -1)
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$target/$profile/libckpt.so" "$prefix/lib/libckpt.so"
install -m 0644 "$target/$profile/libckpt.a" "$prefix/lib/libckpt.a"
install -m 0644 libckpt/include/ckpt.h libckpt/include/ckpt.f90 "$prefix/include/"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" libckpt/ckpt.pc.in > "$prefix/lib/pkgconfig/ckpt.pc"
echo "installed ckpt $version under $prefix"
