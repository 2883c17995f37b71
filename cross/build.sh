#!/usr/bin/env bash
# Builds the gateway release binary (the server package alone: no demo) for an ARM target and checks it
# against the size budget in cross/size-budget-bytes.
# Usage: cross/build.sh aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh "$1"

# std is built from source (rust-web-src) for the release binary of either
# target, so that it is optimized for size with the rest under LTO and, like
# the rest, carries no unwind tables: with panic = "abort" nothing unwinds,
# and the tables (most of them std's prebuilt ones) were a tenth of the
# aarch64 binary. A panic still prints its message; a backtrace, if asked for
# with RUST_BACKTRACE, has no frames. (README "Building for a board".)
apt_install rust-web-src
export RUSTC_BOOTSTRAP=1
export "CARGO_TARGET_${TRIPLE_ENV}_RUSTFLAGS=-C force-unwind-tables=no"
"$CARGO" build -Zbuild-std=std,panic_abort --release --target "$TARGET" -p edgepush --bin edgepush
BIN="$CARGO_TARGET_DIR/$TARGET/release/edgepush"
SIZE=$(stat -c %s "$BIN")
BUDGET=$(grep -v '^#' cross/size-budget-bytes | tr -d '[:space:]')
echo "$TARGET: $BIN is $SIZE bytes (budget $BUDGET)"
if [ "$SIZE" -gt "$BUDGET" ]; then
    echo "error: the $TARGET binary grew past its size budget of $BUDGET bytes" >&2
    exit 1
fi
