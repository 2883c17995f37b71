#!/usr/bin/env bash
# Builds the virtual gateway's disk for cross/gateway.sh: a Debian 12 root
# filesystem made by mmdebstrap (systemd as PID 1, the Debian kernel,
# mosquitto, openssh-server), an ext4 image of it made without loop mounts
# (mke2fs -d), the kernel, and a small initramfs assembled here on the host.
# The sha256 of this file (packages, hooks, initramfs) and the architecture
# name the cache entry: an unchanged file is built once.
#
# Costs, measured on a 2-core machine shared with other builds: amd64 about
# 4 minutes, mostly downloads; arm64 about 25 minutes, nearly all of it dpkg
# and the maintainer scripts under qemu-user (the essential set alone is most
# of it). What is kept out of the arm64 build: initramfs-tools (a dummy
# package provides linux-initramfs-tool; the initramfs is a busybox shell
# script plus the few modules the root disk needs, packed here on the host),
# SSH host key generation (the keys are made on the host), documentation,
# recommends.
#
# Usage (as root): cross/gateway-image.sh ARCH OUTDIR PUBKEY
#   writes OUTDIR/{disk.img,vmlinuz,initrd.img}; PUBKEY is root's authorized key.
# Mirror: $GATEWAY_MIRROR, else the first Debian URI of this machine's apt sources.
set -euo pipefail

# The hooks below run as separate invocations of this file, from mmdebstrap:
# gateway-image.sh --hook setup|customize WORK PUBKEY ROOT.
if [ "${1:-}" = --hook ]; then
    HOOK=$2 WORK=$3 PUBKEY=$4 ROOT=$5
else
    HOOK=
    ARCH=${1:?usage: gateway-image.sh ARCH OUTDIR PUBKEY}
    OUT=${2:?usage: gateway-image.sh ARCH OUTDIR PUBKEY}
    PUBKEY=$(realpath "${3:?usage: gateway-image.sh ARCH OUTDIR PUBKEY}")
fi

# What a small gateway has, and what the checks need. busybox-static is for
# the initramfs only.
packages() {
    echo "systemd systemd-sysv udev linux-image-$ARCH mosquitto mosquitto-clients"
    echo "openssh-server adduser netbase iproute2 procps busybox-static"
}

# The modules the initramfs loads (with what modules.dep says they need) to
# mount the root disk: virtio-blk on virtio-pci, ext4.
INITRAMFS_MODULES="virtio_pci virtio_blk crc32c_generic ext4"
DISK_SIZE=2G

mirror() {
    if [ -n "${GATEWAY_MIRROR:-}" ]; then
        echo "$GATEWAY_MIRROR"
        return
    fi
    # deb822 (URIs:) or one-line (deb URI suite ...) sources, the first Debian
    # archive that is not the security one.
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' | grep -v security | head -n1 || true)
    [ -n "$uri" ] || { echo "no Debian mirror in the apt sources: set GATEWAY_MIRROR" >&2; exit 1; }
    echo "$uri"
}

# A package that satisfies the kernel's "initramfs-tools | linux-initramfs-tool"
# without running anything: initramfs-tools under qemu-user was most of the
# arm64 build time, and the initramfs is made below instead.
dummy_initramfs_tool() {
    local dir=$1/pkg
    mkdir -p "$dir/DEBIAN"
    cat >"$dir/DEBIAN/control" <<'EOF'
Package: gateway-no-initramfs-tool
Version: 1
Architecture: all
Maintainer: edgepush developers
Provides: linux-initramfs-tool
Description: the virtual gateway's initramfs is built outside the image
EOF
    dpkg-deb --build "$dir" "$1/gateway-no-initramfs-tool_1_all.deb" >/dev/null
}

# Runs on the host before any package is installed ($1: the root directory).
setup_hook() {
    local root=$1
    mkdir -p "$root/etc/ssh" "$root$WORK"
    cp "$WORK/gateway-no-initramfs-tool_1_all.deb" "$root$WORK/"
    # openssh-server's postinst keeps existing host keys: making them here
    # saves an emulated RSA key generation.
    ssh-keygen -q -A -f "$root"
}

# Runs on the host after the packages are installed ($1: the root directory).
customize_hook() {
    local root=$1
    rm -rf "${root:?}$WORK" "$root/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
    echo gateway >"$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 gateway\n::1 localhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
    echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$root/etc/fstab"
    # The console logs in as root without a password (a throwaway VM); SSH with the key.
    sed -i 's/^root:[^:]*:/root::/' "$root/etc/shadow"
    install -d -m 700 "$root/root/.ssh"
    install -m 600 "$PUBKEY" "$root/root/.ssh/authorized_keys"
    cat >"$root/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
    # The host reaches the broker through a port forward.
    cat >"$root/etc/mosquitto/conf.d/gateway.conf" <<'EOF'
listener 1883
allow_anonymous true
EOF
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants" "$root/etc/systemd/system/sockets.target.wants"
    ln -sf /lib/systemd/system/systemd-networkd.service "$root/etc/systemd/system/multi-user.target.wants/"
    ln -sf /lib/systemd/system/systemd-networkd.socket "$root/etc/systemd/system/sockets.target.wants/"
    # No apt lists are needed: `apt install ./edgepush_*.deb` finds its
    # dependencies installed.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
}

# The initramfs: busybox, the modules, and an init that loads them, mounts
# /dev/vda and hands over to systemd.
initramfs() {
    local root=$1 dest=$2 ir=$WORK/initramfs kver moddir
    kver=$(basename "$(ls -d "$root"/lib/modules/*/ | head -n1)")
    moddir=$root/lib/modules/$kver
    mkdir -p "$ir/bin" "$ir/lib/modules" "$ir/dev" "$ir/proc" "$ir/sys" "$ir/newroot"
    cp "$root/bin/busybox" "$ir/bin/busybox"
    : >"$ir/modules"
    local m path dep
    for m in $INITRAMFS_MODULES; do
        # modules.dep: "path: dep1 dep2" (deps of deps listed too, the deepest last).
        path=$(grep -E "/${m//_/[_-]}\.ko(\.xz|\.zst)?:" "$moddir/modules.dep" || true)
        [ -n "$path" ] || continue # built in
        for dep in $(echo "${path#*:}" | tr ' ' '\n' | tac) "${path%%:*}"; do
            grep -qx "$dep" "$ir/modules" && continue
            echo "$dep" >>"$ir/modules"
            mkdir -p "$ir/lib/modules/$(dirname "$dep")"
            case "$dep" in
                *.xz) xz -dc "$moddir/$dep" >"$ir/lib/modules/${dep%.xz}" ;;
                *.zst) zstd -qdc "$moddir/$dep" >"$ir/lib/modules/${dep%.zst}" ;;
                *) cp "$moddir/$dep" "$ir/lib/modules/$dep" ;;
            esac
        done
    done
    sed -i -E 's/\.(xz|zst)$//' "$ir/modules"
    cat >"$ir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in $(cat /modules); do insmod "/lib/modules/$m" 2>/dev/null || echo "initramfs: insmod $m failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; exec sh; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
EOF
    chmod 755 "$ir/init"
    (cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) >"$dest"
}

build() {
    local root=$WORK/root mirror
    mirror=$(mirror)
    dummy_initramfs_tool "$WORK"
    local self
    self=$(realpath "$0")
    # shellcheck disable=SC2046 # the package list is words
    nice mmdebstrap --mode=root --variant=minbase --architectures="$ARCH" \
        --include="$(packages | tr ' \n' ',,' | sed 's/,*$//'),$WORK/gateway-no-initramfs-tool_1_all.deb" \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --setup-hook="bash '$self' --hook setup '$WORK' '$PUBKEY' \"\$1\"" \
        --customize-hook="bash '$self' --hook customize '$WORK' '$PUBKEY' \"\$1\"" \
        bookworm "$root" "$mirror"
    mkdir -p "$OUT"
    cp "$(ls "$root"/boot/vmlinuz-* | head -n1)" "$OUT/vmlinuz"
    initramfs "$root" "$OUT/initrd.img"
    rm -f "$OUT/disk.img"
    mke2fs -q -t ext4 -L gateway -d "$root" "$OUT/disk.img" "$DISK_SIZE"
}

case "$HOOK" in
    setup) setup_hook "$ROOT" ;;
    customize) customize_hook "$ROOT" ;;
    *)
        WORK=$(mktemp -d /var/tmp/edgepush-gateway-image.XXXXXX)
        trap 'rm -rf "$WORK"' EXIT
        build
        ;;
esac
