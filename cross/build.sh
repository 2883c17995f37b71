#!/usr/bin/env bash
# Builds the gateway release binary (the server package alone: no demo) for an ARM target and checks it
# against the size budget in cross/size-budget-bytes.
# Usage: cross/build.sh aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh "$1"

if [ ${#BUILD_STD[@]} -gt 0 ]; then
    BUILD_STD=(-Zbuild-std=std,panic_abort)
fi
"$CARGO" build "${BUILD_STD[@]}" --release --target "$TARGET" -p edgepush --bin edgepush
BIN="$CARGO_TARGET_DIR/$TARGET/release/edgepush"
SIZE=$(stat -c %s "$BIN")
BUDGET=$(grep -v '^#' cross/size-budget-bytes | tr -d '[:space:]')
echo "$TARGET: $BIN is $SIZE bytes (budget $BUDGET)"
if [ "$SIZE" -gt "$BUDGET" ]; then
    echo "error: the $TARGET binary grew past its size budget of $BUDGET bytes" >&2
    exit 1
fi
