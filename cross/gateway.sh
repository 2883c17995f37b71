#!/usr/bin/env bash
# A virtual gateway: boots Debian 12 under a real systemd (PID 1) in QEMU,
# installs the edgepush package as a user would (`apt install ./edgepush_*.deb`)
# and checks the service from the host, through forwarded ports and SSH:
# the unit active, its user, capabilities and hardening, the exposure score,
# a token added and reloaded, an MQTT value reaching `edgepush watch` and the
# dashboard in headless Chromium, a restart through the socket unit with a
# client reconnecting, the watchdog killing a stopped process, journald
# priorities, 500 idle dashboards under MemoryHigh=, a reboot, an upgrade
# keeping an edited config, and a purge.
#
# Usage (as root):
#   cross/gateway.sh amd64|arm64           build or reuse the image, boot, check
#   cross/gateway.sh amd64|arm64 shell     boot, install the package, leave it
#                                          running and print how to log in
#   cross/gateway.sh amd64|arm64 image     only build (or find) the cached image
#                                          (.ci/run starts these in the background)
#   cross/gateway.sh tools                 only install the host's packages
#
# The image (cross/gateway-image.sh) is cached in $GATEWAY_CACHE (default
# ~/.cache/edgepush-gateway) under the sha256 of that script, which holds the
# package list and the hooks; the VM runs with -snapshot, so the cached image
# stays pristine. Everything runs under TCG (software emulation: guests hang
# under KVM on the machines this was made on). Each phase prints its time;
# see the README "Try it on a virtual gateway" for what they cost.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${1:-}
MODE=${2:-check}
USAGE="usage: cross/gateway.sh amd64|arm64 [check|shell|image], or cross/gateway.sh tools"
case "$ARCH" in
    amd64)
        QEMU=(qemu-system-x86_64 -machine pc)
        CONSOLE=ttyS0
        TARGET=x86_64-unknown-linux-gnu
        ;;
    arm64)
        QEMU=(qemu-system-aarch64 -machine virt -cpu cortex-a72)
        CONSOLE=ttyAMA0
        TARGET=aarch64-unknown-linux-gnu
        ;;
    tools) ;;
    *)
        echo "$USAGE" >&2
        exit 64
        ;;
esac
case "$MODE" in check | shell | image) ;; *)
    echo "$USAGE" >&2
    exit 64
    ;;
esac
[ "$(id -u)" = 0 ] || { echo "cross/gateway.sh runs as root (mmdebstrap, binfmt_misc)" >&2; exit 1; }

CACHE=${GATEWAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgepush-gateway}
RUN=$(mktemp -d /var/tmp/edgepush-gateway.XXXXXX)
# Under TCG an arm64 guest is several times slower than amd64: every wait
# below is scaled by this.
SLOW=1
[ "$ARCH" = arm64 ] && SLOW=3
VM_PID=
BINFMT_ADDED=

START=$SECONDS
PHASE_START=$SECONDS
phase() {
    local now=$SECONDS
    [ -z "${PHASE:-}" ] || echo "=== $ARCH: $PHASE took $((now - PHASE_START)) s"
    PHASE=$1 PHASE_START=$now
    [ -z "$PHASE" ] || echo "=== $ARCH: $PHASE"
}
# Each check's line says how long it took (since the previous one).
LAST_OK=$SECONDS
ok() {
    echo "ok ($((SECONDS - LAST_OK)) s): $*"
    LAST_OK=$SECONDS
}
fail() {
    echo "FAILED ($ARCH): $*" >&2
    if [ -n "$VM_PID" ]; then
        echo "--- journalctl -u edgepush (last 40 lines)" >&2
        gw_timeout 60 journalctl -u edgepush -n 40 --no-pager >&2 || true
    fi
    exit 1
}

cleanup() {
    local rc=$?
    # The host's watch client reconnects until it is stopped.
    [ -z "${WATCH_PID:-}" ] || kill "$WATCH_PID" 2>/dev/null || true
    if [ -n "$VM_PID" ] && kill -0 "$VM_PID" 2>/dev/null; then
        kill "$VM_PID" 2>/dev/null || true
        sleep 1
        kill -9 "$VM_PID" 2>/dev/null || true
    fi
    [ -z "$BINFMT_ADDED" ] || echo -1 >"/proc/sys/fs/binfmt_misc/$BINFMT_ADDED" 2>/dev/null || true
    if [ $rc -ne 0 ] && [ -f "$RUN/serial.log" ]; then
        echo "--- serial console (last 30 lines of $RUN/serial.log)" >&2
        tail -n 30 "$RUN/serial.log" >&2 || true
    else
        rm -rf "$RUN"
    fi
}
trap cleanup EXIT

apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# What this script needs on the host (not part of `cargo xtask setup`: the
# test suite does not need it).
install_tools() {
    apt_install mmdebstrap arch-test qemu-user-static qemu-system-x86 qemu-system-arm \
        ipxe-qemu e2fsprogs cpio openssh-client curl chromium python3
}

# Foreign maintainer scripts run under qemu-user through binfmt_misc; the
# entry added here is removed on exit.
binfmt_on() {
    [ "$ARCH" = arm64 ] && [ "$(uname -m)" != aarch64 ] || return 0
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && return 0
    # F: the interpreter is opened now, so it works inside the chroot.
    sed 's/:[A-Z]*$/:F/' /usr/lib/binfmt.d/qemu-aarch64.conf | sed 's#:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:#:/usr/bin/qemu-aarch64-static:#' \
        >/proc/sys/fs/binfmt_misc/register
    BINFMT_ADDED=qemu-aarch64
}

# The disk image, kernel and initramfs, built once per version of
# cross/gateway-image.sh.
image() {
    local key
    # Comments do not change the image.
    key=$( (echo "$ARCH"; grep -v '^[[:space:]]*#' cross/gateway-image.sh) | sha256sum | cut -c1-16)
    IMG=$CACHE/$ARCH-$key
    if [ -f "$IMG/disk.img" ]; then
        echo "cached: $IMG"
        return
    fi
    mkdir -p "$CACHE"
    rm -rf "$IMG.tmp"
    mkdir -p "$IMG.tmp"
    ssh-keygen -q -t ed25519 -N '' -C edgepush-gateway -f "$IMG.tmp/id_ed25519"
    binfmt_on
    cross/gateway-image.sh "$ARCH" "$IMG.tmp" "$IMG.tmp/id_ed25519.pub"
    rm -rf "$IMG"
    mv "$IMG.tmp" "$IMG"
    # Older images of this architecture are of no further use.
    find "$CACHE" -maxdepth 1 -name "$ARCH-*" ! -name "$ARCH-$key" -exec rm -rf {} +
}

# The package as users build it, and one with a higher version for the
# upgrade check; the host's own edgepush for `watch` and `hash-token`.
package() {
    if [ "$ARCH" = amd64 ]; then
        nice cargo deb -- -p edgepush
    else
        nice cross/deb.sh "$TARGET"
    fi
    local built
    built=$(ls -t target/debian/edgepush_*_"$ARCH".deb | head -n1)
    # cargo-deb empties target/debian when it makes the second package below.
    mkdir -p "$RUN/upgrade"
    cp "$built" "$RUN/"
    DEB=$RUN/$(basename "$built")
    VERSION=$(dpkg-deb -f "$DEB" Version)
    UPGRADE_VERSION="${VERSION}+gw1"
    mkdir -p target/gateway
    if [ "$ARCH" = amd64 ]; then
        cargo deb --no-build --deb-version "$UPGRADE_VERSION" --output target/gateway
    else
        (. cross/env.sh "$TARGET" && cargo-deb --target "$TARGET" --no-build --no-strip --deb-version "$UPGRADE_VERSION" --output target/gateway)
    fi
    DEB_UPGRADE=$RUN/upgrade/$(basename "$(ls target/gateway/edgepush_*_"$ARCH".deb)")
    mv target/gateway/edgepush_*_"$ARCH".deb "$DEB_UPGRADE"
    cp "$DEB" "$built"
    UPGRADE_VERSION=$(dpkg-deb -f "$DEB_UPGRADE" Version)
    dpkg --compare-versions "$UPGRADE_VERSION" gt "$VERSION" || fail "upgrade version $UPGRADE_VERSION is not above $VERSION"
    nice cargo build --release -p edgepush
    HOST_EDGEPUSH=target/release/edgepush
    echo "$built ($VERSION), upgrade $(basename "$DEB_UPGRADE")"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

boot() {
    SSH_PORT=$(free_port)
    WEB_PORT=$(free_port)
    MQTT_PORT=$(free_port)
    KEY=$IMG/id_ed25519
    "${QEMU[@]}" -accel tcg,thread=multi -smp 2 -m 1024 \
        -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
        -append "root=/dev/vda rw console=$CONSOLE panic=10" \
        -drive "file=$IMG/disk.img,format=raw,if=none,id=disk" -device virtio-blk-pci,drive=disk -snapshot \
        -netdev "user,id=net,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22,hostfwd=tcp:127.0.0.1:$WEB_PORT-:8080,hostfwd=tcp:127.0.0.1:$MQTT_PORT-:1883" \
        -device virtio-net-pci,netdev=net -device virtio-rng-pci \
        -display none -monitor none -serial "file:$RUN/serial.log" &
    VM_PID=$!
    wait_ssh $((240 * SLOW))
}

gw_timeout() {
    local t=$1
    shift
    timeout "$t" ssh -p "$SSH_PORT" -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=6 \
        root@127.0.0.1 "$@"
}
# A command in the guest, bounded in time.
gw() { gw_timeout $((120 * SLOW)) "$@"; }

wait_ssh() {
    local deadline=$((SECONDS + $1))
    until gw_timeout 20 true 2>/dev/null; do
        kill -0 "$VM_PID" 2>/dev/null || fail "QEMU exited"
        [ $SECONDS -lt $deadline ] || fail "no SSH within $1 s"
        sleep 3
    done
}

# Polls a command until it succeeds: until_ok SECONDS WHAT CMD...
until_ok() {
    local limit=$1 what=$2
    local deadline=$((SECONDS + limit))
    shift 2
    until "$@"; do
        [ $SECONDS -lt $deadline ] || fail "$what: not within $limit s"
        sleep 1
    done
}

main_pid() { gw systemctl show -P MainPID edgepush; }

# `systemctl reload` only sends SIGHUP (ExecReload=kill -HUP): waits until the
# server logs one more applied reload than before.
reloads() { gw "journalctl -u edgepush --no-pager -o cat | grep -c 'reload: config applied'" || true; }
reload_and_wait() {
    local before
    before=$(reloads)
    gw systemctl reload edgepush || fail "systemctl reload"
    until_ok $((30 * SLOW)) "reload applied (logged)" eval '[ "$(reloads)" -gt "$before" ]'
}

install_package() {
    scp -P "$SSH_PORT" -i "$KEY" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
        -o BatchMode=yes "$DEB" "$DEB_UPGRADE" root@127.0.0.1:/root/
    gw "mkdir -p /root/upgrade && mv /root/$(basename "$DEB_UPGRADE") /root/upgrade/"
    gw "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/$(basename "$DEB")" || fail "apt install of the package"
    until_ok $((60 * SLOW)) "edgepush.service active" gw systemctl is-active -q edgepush.service
}

check_confinement() {
    gw systemctl is-active -q edgepush.socket || fail "edgepush.socket not active"
    gw systemctl is-enabled -q edgepush.service edgepush.socket || fail "units not enabled"
    local pid status
    pid=$(main_pid)
    status=$(gw cat "/proc/$pid/status")
    local uid
    uid=$(gw id -u edgepush)
    grep -Eq "^Uid:\s+$uid\s+$uid\s+$uid\s+$uid$" <<<"$status" || fail "not running as edgepush ($uid): $(grep ^Uid <<<"$status")"
    local cap
    for cap in CapInh CapPrm CapEff CapBnd CapAmb; do
        grep -Eq "^$cap:\s+0+$" <<<"$status" || fail "$(grep "^$cap" <<<"$status")"
    done
    grep -Eq '^NoNewPrivs:\s+1$' <<<"$status" || fail "NoNewPrivs not set"
    grep -Eq '^Seccomp:\s+2$' <<<"$status" || fail "no seccomp filter"
    ok "runs as edgepush (uid $uid), no capabilities, NoNewPrivs, seccomp filter"
    local show want
    show=$(gw systemctl show edgepush -p User -p NoNewPrivileges -p ProtectSystem -p ProtectHome -p PrivateTmp \
        -p PrivateDevices -p PrivateUsers -p ProtectKernelTunables -p ProtectKernelModules -p ProtectControlGroups \
        -p MemoryDenyWriteExecute -p RestrictNamespaces -p RestrictRealtime -p LockPersonality -p ProtectProc \
        -p CapabilityBoundingSet -p SystemCallArchitectures -p MemoryHigh -p WatchdogUSec)
    for want in User=edgepush NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
        PrivateDevices=yes PrivateUsers=yes ProtectKernelTunables=yes ProtectKernelModules=yes \
        ProtectControlGroups=yes MemoryDenyWriteExecute=yes RestrictNamespaces=yes RestrictRealtime=yes \
        LockPersonality=yes ProtectProc=invisible CapabilityBoundingSet= SystemCallArchitectures=native \
        WatchdogUSec=30s; do
        grep -qx "$want" <<<"$show" || fail "systemctl show: want $want, have: $(grep "^${want%%=*}=" <<<"$show")"
    done
    ok "hardening in force (systemctl show)"
    local score
    score=$(gw systemd-analyze security edgepush | sed -n 's/.*Overall exposure level for edgepush.service: \([0-9.]*\).*/\1/p')
    [ -n "$score" ] || fail "systemd-analyze security printed no score"
    awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $score above 2.0"
    ok "systemd-analyze security edgepush: $score"
}

TOKEN=
add_token() {
    TOKEN=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
    local hash
    hash=$(printf '%s\n' "$TOKEN" | "$HOST_EDGEPUSH" hash-token)
    gw "cat >>/etc/edgepush/edgepush.toml" <<EOF

# Added by cross/gateway.sh.
[[auth.tokens]]
name = "gateway-check"
sha256 = "$hash"
subscribe = ["#"]
EOF
    gw edgepush check-config --config /etc/edgepush/edgepush.toml >/dev/null || fail "check-config refuses the edited file"
    local pid
    pid=$(main_pid)
    reload_and_wait
    [ "$(main_pid)" = "$pid" ] || fail "reload restarted the service"
    ok "token added, reloaded (same PID $pid)"
}

WATCH_PID=
start_watch() {
    EDGEPUSH_TOKEN=$TOKEN "$HOST_EDGEPUSH" watch "ws://127.0.0.1:$WEB_PORT/ws" 'sensors/#' \
        >"$RUN/watch.out" 2>"$RUN/watch.err" &
    WATCH_PID=$!
}
stop_watch() { [ -z "$WATCH_PID" ] || { kill "$WATCH_PID" 2>/dev/null || true; wait "$WATCH_PID" 2>/dev/null || true; WATCH_PID=; }; }

# Publishes VALUE in the guest and waits for `edgepush watch` on the host to print it.
publish_seen() {
    local value=$1
    gw mosquitto_pub -q 1 -r -t sensors/gateway/check -m "$value" || fail "mosquitto_pub"
    until_ok $((30 * SLOW)) "value $value reaching edgepush watch" grep -q " $value\$" "$RUN/watch.out"
}

check_delivery() {
    start_watch
    publish_seen 21.5
    ok "mosquitto_pub in the guest reached edgepush watch on the host: $(grep ' 21.5$' "$RUN/watch.out" | head -n1)"
    # The page in headless Chromium, driven over the DevTools protocol (as
    # tests/dashboard_browser.rs does): its text is read every half second
    # until the value is there, within a deadline. (A virtual-time budget with
    # --dump-dom does not wait for the WebSocket: under load it missed.)
    cat >"$RUN/page.py" <<'EOF'
import base64, json, os, socket, subprocess, sys, time, urllib.request
url, profile, limit, wants = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
deadline = time.monotonic() + limit
chromium = subprocess.Popen(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def left():
    t = deadline - time.monotonic()
    if t <= 0:
        sys.exit(f"not within {limit:.0f} s")
    return t
def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("DevTools closed the connection")
        b += c
    return b
def send(s, msg):
    data, mask = json.dumps(msg).encode(), os.urandom(4)
    n = len(data)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big"))
    s.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
def recv(s):
    h = recv_exact(s, 2)
    n = h[1] & 127
    if n == 126: n = int.from_bytes(recv_exact(s, 2), "big")
    elif n == 127: n = int.from_bytes(recv_exact(s, 8), "big")
    return json.loads(recv_exact(s, n))
try:
    active = os.path.join(profile, "DevToolsActivePort")
    while not os.path.exists(active) or not open(active).read().strip():
        left()
        time.sleep(0.2)
    port = int(open(active).read().split()[0])
    page = next(t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=left()))
                if t["type"] == "page")
    s = socket.create_connection(("127.0.0.1", port), timeout=left())
    s.sendall((f"GET /devtools/page/{page['id']} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode() +
               "\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += recv_exact(s, 1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        sys.exit("DevTools refused: " + head.split(b"\r\n")[0].decode())
    send(s, {"id": 1, "method": "Page.navigate", "params": {"url": url}})
    n, text = 1, ""
    while True:
        s.settimeout(left())
        n += 1
        send(s, {"id": n, "method": "Runtime.evaluate",
                 "params": {"expression": "document.body ? document.body.innerText : ''", "returnByValue": True}})
        while True:
            m = recv(s)
            if m.get("id") == n:
                break
        text = m.get("result", {}).get("result", {}).get("value") or ""
        if all(w in text for w in wants):
            print(" ".join(text.split())[:200])
            break
        time.sleep(0.5)
except SystemExit as e:
    print(f"{e}; the page read: {' '.join(text.split())[:300] if 'text' in dir() else ''}", file=sys.stderr)
    raise SystemExit(1)
finally:
    chromium.kill()
    chromium.wait()
EOF
    local seen
    seen=$(timeout $((120 * SLOW + 30)) python3 "$RUN/page.py" "http://127.0.0.1:$WEB_PORT/?token=$TOKEN" \
        "$RUN/chromium" $((120 * SLOW)) sensors/gateway/check 21.5 2>"$RUN/page.err") ||
        fail "the dashboard in headless Chromium did not show sensors/gateway/check = 21.5: $(tail -n 3 "$RUN/page.err")"
    ok "the dashboard in headless Chromium shows sensors/gateway/check = 21.5 (the page: ${seen:0:120})"
}

check_journal() {
    local warn info
    warn=$(gw journalctl -u edgepush -p warning -o cat --no-pager)
    info=$(gw journalctl -u edgepush -p info..info -o cat --no-pager | grep -v '^Start\|^Stop\|^Reload\|Deactivated\|Consumed' || true)
    [ -n "$info" ] || fail "no info lines in the journal"
    [ -n "$warn" ] || fail "no warnings in the journal (a token without TLS on 0.0.0.0 is one)"
    local line
    while IFS= read -r line; do
        grep -qxF "$line" <<<"$warn" && fail "info line under -p warning: $line"
    done <<<"$info"
    ok "journalctl -p warning: $(wc -l <<<"$warn") warning lines, none of the $(wc -l <<<"$info") info lines; e.g. $(head -n1 <<<"$warn")"
}

# `systemctl restart` while a watch client is connected and curl keeps
# opening connections: none refused or reset, the client resumes.
check_socket_restart() {
    local pid failures=0 n=0 code
    pid=$(main_pid)
    gw systemctl restart --no-block edgepush
    local deadline=$((SECONDS + 30 * SLOW))
    while [ $SECONDS -lt $deadline ]; do
        code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time $((20 * SLOW)) "http://127.0.0.1:$WEB_PORT/" 2>"$RUN/curl.err" || true)
        n=$((n + 1))
        if [ "$code" != 200 ]; then
            failures=$((failures + 1))
            echo "request $n during the restart: HTTP $code $(cat "$RUN/curl.err")"
        fi
        if [ "$(main_pid)" != "$pid" ] && gw systemctl is-active -q edgepush && [ $n -ge 5 ]; then break; fi
    done
    [ "$(main_pid)" != "$pid" ] || fail "restart: the PID did not change"
    [ $failures = 0 ] || fail "restart: $failures of $n requests failed (refused or reset)"
    grep -qi refused "$RUN/watch.err" && fail "watch saw a refusal: $(grep -i refused "$RUN/watch.err" | head -n1)"
    publish_seen 22.5
    ok "restart through the socket unit: $n requests during it, none failed; watch resumed ($(grep -c 'connection lost' "$RUN/watch.err" || true) reconnect)"
}

check_watchdog() {
    local pid t0 usec newpid
    pid=$(main_pid)
    usec=$(gw systemctl show -P WatchdogUSec edgepush)
    t0=$SECONDS
    gw kill -STOP "$pid"
    # WatchdogSec, then RestartSec=2s and the start; margin for TCG.
    until_ok $((30 + 30 * SLOW)) "restart after the watchdog" \
        eval '[ "$(main_pid)" != "$pid" ] && gw systemctl is-active -q edgepush'
    newpid=$(main_pid)
    gw "journalctl -u edgepush --no-pager -o cat | grep -i 'watchdog timeout'" >/dev/null ||
        fail "journalctl shows no watchdog timeout"
    publish_seen 23.5
    ok "watchdog ($usec): PID $pid stopped, restarted as $newpid after $((SECONDS - t0)) s; journal: watchdog timeout; watch resumed"
}

# 500 idle WebSocket clients (answering pings) from the host; the unit's
# cgroup memory.current must stay under MemoryHigh=. All of them come from
# the NAT address, so the per-address caps are raised for the test.
check_memory() {
    gw "sed -i '/^\[limits\]/a max-connections-per-ip = 1024\nconnections-per-second-per-ip = 1000' /etc/edgepush/edgepush.toml"
    reload_and_wait
    cat >"$RUN/idle.py" <<'EOF'
import asyncio, base64, os, sys, time
port, token, n, hold = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
open_now = 0
async def connect():
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write((f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    return r, w
async def idle(r, w):
    global open_now
    open_now += 1
    try:
        while True:
            h = await r.readexactly(2)
            op, ln = h[0] & 15, h[1] & 127
            if ln == 126: ln = int.from_bytes(await r.readexactly(2), "big")
            elif ln == 127: ln = int.from_bytes(await r.readexactly(8), "big")
            data = await r.readexactly(ln)
            if op == 9:  # ping -> masked pong
                mask = os.urandom(4)
                w.write(bytes([0x8A, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
            elif op == 8:
                break
    except Exception:
        pass
    finally:
        open_now -= 1
async def main():
    # One handshake at a time: QEMU's user-mode networking listens on the
    # forwarded port with a backlog of 1, so a burst of connects stalls there.
    tasks = []
    for i in range(n):
        try:
            r, w = await connect()
        except Exception as e:
            print(f"client {i} failed: {e!r}", flush=True)
            os._exit(1)
        tasks.append(asyncio.create_task(idle(r, w)))
    await asyncio.sleep(0.5)
    print("open", open_now, flush=True)
    await asyncio.sleep(hold)
    print("still open", open_now, flush=True)
    os._exit(0)
asyncio.run(main())
EOF
    # Longer than a heartbeat interval plus its timeout (15 + 10 s).
    local hold=40
    timeout $((hold + 150 * SLOW + 60)) python3 "$RUN/idle.py" "$WEB_PORT" "$TOKEN" 500 "$hold" >"$RUN/idle.out" 2>&1 &
    local py=$!
    until_ok $((150 * SLOW)) "500 idle clients connected" grep -q '^open\|failed' "$RUN/idle.out"
    grep -qx 'open 500' "$RUN/idle.out" || fail "idle clients: $(cat "$RUN/idle.out")"
    local conns
    conns=$(curl -s --max-time 30 "http://127.0.0.1:$WEB_PORT/metrics" | grep '^edgepush_connections ' || true)
    [ "${conns#* }" -ge 500 ] || fail "the server counts ${conns:-no} connections"
    local high cur peak=0 i
    high=$(gw systemctl show -P MemoryHigh edgepush)
    for i in 1 2 3 4; do
        sleep $((hold / 5))
        cur=$(gw cat /sys/fs/cgroup/system.slice/edgepush.service/memory.current)
        [ "$cur" -gt "$peak" ] && peak=$cur
    done
    wait "$py" || fail "idle clients: $(cat "$RUN/idle.out")"
    grep -qx 'still open 500' "$RUN/idle.out" || fail "idle clients dropped: $(cat "$RUN/idle.out")"
    [ "$peak" -lt "$high" ] || fail "memory.current $peak not under MemoryHigh=$high"
    ok "500 idle dashboards ($conns, held $hold s, pings answered): memory.current peak $((peak / 1024)) KiB < MemoryHigh $((high / 1024)) KiB"
}

boot_id() { gw_timeout 20 cat /proc/sys/kernel/random/boot_id 2>/dev/null; }
check_reboot() {
    stop_watch
    local old
    old=$(boot_id)
    gw systemctl reboot || true
    # Until SSH answers from the new boot (the old one may answer for a while).
    until_ok $((240 * SLOW)) "SSH after the reboot" eval '[ -n "$(boot_id)" ] && [ "$(boot_id)" != "$old" ]'
    until_ok $((60 * SLOW)) "edgepush active after the reboot" gw systemctl is-active -q edgepush.service
    ok "after a reboot edgepush is back (PID $(main_pid))"
}

check_upgrade() {
    local pid
    pid=$(main_pid)
    gw "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/upgrade/$(basename "$DEB_UPGRADE")" || fail "apt install of the upgrade"
    [ "$(gw "dpkg-query -W -f='\${Version}' edgepush")" = "$UPGRADE_VERSION" ] || fail "upgrade: version not $UPGRADE_VERSION"
    gw grep -q 'name = "gateway-check"' /etc/edgepush/edgepush.toml || fail "upgrade lost the edited config"
    until_ok $((60 * SLOW)) "service active after the upgrade" gw systemctl is-active -q edgepush.service
    [ "$(main_pid)" != "$pid" ] || fail "upgrade did not restart the service"
    ok "upgrade to $UPGRADE_VERSION kept the edited config and restarted the service ($pid -> $(main_pid))"
}

check_purge() {
    gw "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q edgepush" || fail "apt purge"
    gw '! ls /lib/systemd/system/edgepush.* /usr/lib/systemd/system/edgepush.* /etc/systemd/system/*/edgepush.* 2>/dev/null' ||
        fail "units left after purge"
    gw '[ ! -e /etc/edgepush ]' || fail "/etc/edgepush left after purge"
    gw '! systemctl is-active -q edgepush.socket' || fail "socket still active after purge"
    ok "purge removed the units and /etc/edgepush"
}

interactive() {
    cat <<EOF

The gateway runs (QEMU PID $VM_PID, serial console in $RUN/serial.log):
  ssh -p $SSH_PORT -i $KEY -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1
  dashboard: http://127.0.0.1:$WEB_PORT/?token=$TOKEN    MQTT: 127.0.0.1:$MQTT_PORT
Stop it with: kill $VM_PID
EOF
    VM_PID= # left running
    trap - EXIT
}

# The whole body is one function, so bash has read all of it before it runs.
main() {
    install_tools
    [ "$ARCH" != tools ] || exit 0
    phase "image"
    image
    if [ "$MODE" = image ]; then
        phase ""
        exit 0
    fi
    phase "package"
    package
    phase "boot"
    boot
    echo "booted; SSH on 127.0.0.1:$SSH_PORT, dashboard on $WEB_PORT, MQTT on $MQTT_PORT"
    phase "checks"
    LAST_OK=$SECONDS
    install_package
    ok "apt install ./$(basename "$DEB"): edgepush.service active"
    if [ "$MODE" = shell ]; then
        add_token
        interactive
        exit 0
    fi
    check_confinement
    add_token
    check_delivery
    check_journal
    check_socket_restart
    check_watchdog
    check_memory
    check_reboot
    check_upgrade
    check_purge
    phase ""
    echo "=== $ARCH: all checks passed in $((SECONDS - START)) s"
}

# On one line: bash reads the next line only after main returns, from a file
# that may have been edited meanwhile.
main; exit
