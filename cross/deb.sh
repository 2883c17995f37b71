#!/usr/bin/env bash
# Builds the Debian package for an ARM target: the release binary from
# cross/build.sh (size budget checked), packaged by cargo-deb without
# rebuilding. Writes target/debian/edgepush_<version>_<arch>.deb (arm64, armhf).
# Usage: cross/deb.sh aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf
set -euo pipefail
cd "$(dirname "$0")/.."
cross/build.sh "$1"
. cross/env.sh "$1"
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
# The binary is already stripped by the release profile (the host strip
# cannot read ARM objects).
cargo-deb --target "$TARGET" --no-build --no-strip --output target/debian
