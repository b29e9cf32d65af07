#!/usr/bin/env bash
# test_install: install the built tree into a temporary prefix, then build
# and run a consumer through find_package(gdn) (shared and static) and
# through pkg-config. Args: BUILD_DIR SOURCE_DIR.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" > "$tmp/install.log"
cmake -S "$src/tests/install" -B "$tmp/consumer" -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  -DCMAKE_BUILD_TYPE=Release > "$tmp/configure.log"
cmake --build "$tmp/consumer" > "$tmp/build.log"
LD_LIBRARY_PATH="$tmp/prefix/lib:${LD_LIBRARY_PATH:-}" "$tmp/consumer/use_shared"
"$tmp/consumer/use_static"
if command -v pkg-config > /dev/null; then
  pcdir=$(dirname "$(find "$tmp/prefix" -name gdn.pc | head -n1)")
  # pkg-config writes the prefix it was configured with; point it here
  sed "s|^prefix=.*|prefix=$tmp/prefix|" "$pcdir/gdn.pc" > "$tmp/gdn.pc"
  export PKG_CONFIG_PATH=$tmp
  cc "$src/tests/install/consumer.c" $(pkg-config --cflags --libs gdn) -o "$tmp/pc_shared"
  LD_LIBRARY_PATH="$tmp/prefix/lib:${LD_LIBRARY_PATH:-}" "$tmp/pc_shared"
  echo "pkg-config: ok"
else
  echo "pkg-config: not installed, skipped that part"
fi
echo "test_install: 1 passed, 0 failed"
