#!/usr/bin/env bash
# Runs the whole test suite (unit, integration with a real mosquitto, the
# dashboard tests) for an ARM target under qemu-user, without Docker.
# Usage: cross/test.sh aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf
set -euo pipefail
cd "$(dirname "$0")/.."
. cross/env.sh "$1"

# Tests that spawn the edgepush binary run it through the same emulator; the
# deadlines (never the assertions) stretch for emulation.
export EDGEPUSH_TEST_RUNNER="$RUNNER"
export EDGEPUSH_TEST_TIME_SCALE=${EDGEPUSH_TEST_TIME_SCALE:-8}
# The storm and the soak, sized for an emulated CPU (the host run does 1,000 clients).
export EDGEPUSH_TEST_SCALE_CLIENTS=${EDGEPUSH_TEST_SCALE_CLIENTS:-200}
export EDGEPUSH_SOAK_SECS=${EDGEPUSH_SOAK_SECS:-45}

# The gateway's packages: the server (as a gateway builds it, so no demo), the
# protocol and the client. The load tool is not for gateways (crates/bench).
# The package test packages the host build; the ARM packages come from cross/deb.sh.
"$CARGO" test "${BUILD_STD[@]}" --target "$TARGET" -p edgepush -p edgepush-protocol -p edgepush-client -- --test-threads 2 \
    --skip deb_package_installs_every_file
