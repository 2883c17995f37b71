# Sourced by cross/test.sh and cross/build.sh: the toolchain for one ARM target
# without Docker or rustup targets. Debian's rustc-web has a prebuilt aarch64
# std (libstd-rust-web-dev:arm64); armv7 builds std from rust-web-src.
# Usage: . cross/env.sh TARGET

set -euo pipefail
TARGET=${1:?usage: TARGET is aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf}

apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

apt_install rustc-web cargo-web qemu-user-static
RUST_VERSION=$(dpkg-query -W -f='${Version}' rustc-web)

case "$TARGET" in
    aarch64-unknown-linux-gnu)
        if ! dpkg --print-foreign-architectures | grep -qx arm64; then
            dpkg --add-architecture arm64
            apt-get update -q
        fi
        apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
        # The prebuilt std must match rustc-web exactly.
        dpkg-query -W -f='${Version}' libstd-rust-web-dev:arm64 2>/dev/null | grep -qx "$RUST_VERSION" ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "libstd-rust-web-dev:arm64=$RUST_VERSION"
        GNU=aarch64-linux-gnu
        QEMU=qemu-aarch64-static
        BUILD_STD=()
        ;;
    armv7-unknown-linux-gnueabihf)
        # Never add the armhf architecture here: build std from source instead.
        apt_install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross rust-web-src
        GNU=arm-linux-gnueabihf
        QEMU=qemu-arm-static
        export RUSTC_BOOTSTRAP=1
        BUILD_STD=(-Zbuild-std=std,panic_abort,panic_unwind)
        ;;
    *)
        echo "unsupported target $TARGET" >&2
        exit 64
        ;;
esac

# Debian's toolchain, not rustup's: its rustc knows these targets.
export CARGO=/usr/bin/cargo RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
# Separate from the host build: another compiler, other artifacts.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cross}
TRIPLE_ENV=$(echo "$TARGET" | tr 'a-z-' 'A-Z_')
export "CARGO_TARGET_${TRIPLE_ENV}_LINKER=${GNU}-gcc"
# Without -E LD_LIBRARY_PATH the emulated program loads a mismatched glibc and
# every thread spawn hangs.
RUNNER="$QEMU -L /usr/$GNU -E LD_LIBRARY_PATH=/usr/$GNU/lib"
export "CARGO_TARGET_${TRIPLE_ENV}_RUNNER=$RUNNER"
