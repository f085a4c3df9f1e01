#!/usr/bin/env bash
# Boot smoke test for the guest artifacts under QEMU microvm with TCG.
#
# Builds a throw-away rootfs from the `minimal` recipe whose
# /usr/local/bin/lohar is a tiny busybox script (mount /proc, print
# "bhatti-smoke: ok" and the guest uptime, power off), boots it N times and
# reports the wall time from QEMU start to that line. Then one boot with a
# virtio-net device and a kernel `ip=` parameter checks that the kernel
# configures eth0 by itself. User-mode networking with restrict=on is used
# only so the device has a backend: the guest sends nothing anywhere.
set -euo pipefail

BHATTI_LOG_TAG=boot-smoke
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export LC_ALL=C   # EPOCHREALTIME must use '.' as decimal point

# Fixed guest address used for the ip= check (a /30 that is only ever seen
# inside the VM).
GUEST_IP=172.31.255.2
GATEWAY_IP=172.31.255.1
NETMASK=255.255.255.252

usage() {
    cat <<USAGE
usage: $(basename "$0") [--kernel <vmlinux>] [--runs N] [--timeout SECS] [--no-net] [--debian] [--keep-logs] [--append STR]

  --kernel PATH    kernel to boot (default \$BHATTI_GUEST_CACHE/vmlinux, see build-kernel.sh)
  --runs N         timed boots without network (default 3)
  --timeout SECS   watchdog per boot (default 60)
  --no-net         skip the virtio-net / ip= boot
  --debian         boot the Debian image recipe (build-debian-rootfs.sh) instead of
                   the busybox one (runs debootstrap first if its tree is not cached)
  --keep-logs      keep the per-boot console logs (printed paths)
  --append STR     extra kernel command line for every boot (e.g. "quiet")

environment:
  BHATTI_GUEST_CACHE  cache dir (default /var/cache/bhatti/guest; now: $BHATTI_GUEST_CACHE)
  BHATTI_TSC_KHZ      override the host TSC frequency passed as tsc_early_khz=
  BHATTI_QEMU         QEMU binary (default qemu-system-x86_64)
USAGE
}

KERNEL=""
RUNS=3
TIMEOUT=60
NET=1
DEBIAN=0
KEEP_LOGS=0
EXTRA_APPEND=""
parse_args() {
    while (($#)); do
        case "$1" in
            --kernel) KERNEL="${2:?--kernel needs a path}"; shift ;;
            --runs) RUNS="${2:?--runs needs a number}"; shift ;;
            --timeout) TIMEOUT="${2:?--timeout needs a number}"; shift ;;
            --no-net) NET=0 ;;
            --debian) DEBIAN=1 ;;
            --keep-logs) KEEP_LOGS=1 ;;
            --append) EXTRA_APPEND="${2?--append needs a string}"; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    KERNEL="${KERNEL:-$BHATTI_GUEST_CACHE/vmlinux}"
    [[ -s "$KERNEL" ]] || die "kernel not found: $KERNEL (run scripts/guest/build-kernel.sh)"
    [[ "$RUNS" =~ ^[0-9]+$ ]] || die "--runs must be a number"
    [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a number"
}

QEMU="${BHATTI_QEMU:-qemu-system-x86_64}"
check_tools() {
    require_cmds "$QEMU:qemu-system-x86" timeout:coreutils mkfifo:coreutils
}

write_smoke_init() {
    # Plain POSIX sh (busybox sh, or dash in the Debian image): this stands
    # in for lohar as PID 1. PID 1 must never exit (the kernel panics), hence
    # `poweroff -f` (reboot(2) directly); images without a poweroff command
    # (Debian without systemd-sysv) use sysrq instead.
    cat >"$1" <<'INIT'
#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
read -r up _ </proc/uptime
echo "bhatti-smoke: ok uptime=${up}s kernel=$(uname -r)"
if grep -q ' ip=' /proc/cmdline; then
    echo "bhatti-smoke: net-begin"
    ip addr show dev eth0
    ip route
    cat /proc/net/fib_trie
    echo "bhatti-smoke: net-end"
fi
echo "bhatti-smoke: bash=$(/bin/bash -c 'echo $BASH_VERSION' 2>&1) user=$(grep '^lohar:' /etc/passwd)"
ls -ld /workspace /home/lohar /tmp
sync
poweroff -f 2>/dev/null
echo o >/proc/sysrq-trigger
sleep 10
INIT
    chmod 0755 "$1"
}

# boot_once <image> <log> <extra-append> [extra qemu args...]
# Prints "<ms-to-ok> <exit-status>" and leaves the console log in <log>.
boot_once() {
    local img="$1" log="$2" extra_append="$3"; shift 3
    local disk fifo qpid killer="" t0 now line t_ok="" rc=0 powered=0
    # Boot a sparse copy so the cached image stays pristine (the guest
    # mounts root rw).
    disk="$WORK/disk.$RANDOM.ext4"
    cp --sparse=always "$img" "$disk"
    fifo="$WORK/console.fifo"
    rm -f "$fifo"; mkfifo "$fifo"

    local append="console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/usr/local/bin/lohar tsc_early_khz=$TSC_KHZ"
    [[ -z "$EXTRA_APPEND" ]] || append+=" $EXTRA_APPEND"
    [[ -z "$extra_append" ]] || append+=" $extra_append"
    local cmd=("$QEMU" -M "microvm,pic=off,rtc=on" -accel tcg -cpu max -m 512 -smp 1
        -nodefaults -no-user-config -nographic -serial stdio
        -kernel "$KERNEL" -append "$append"
        -drive "id=root,file=$disk,format=raw,if=none" -device "virtio-blk-device,drive=root"
        "$@" -no-reboot)
    printf '%q ' "${cmd[@]}" >"$log.cmd"; echo >>"$log.cmd"

    t0="${EPOCHREALTIME/./}"
    # The watchdog: a guest that hangs (e.g. in TSC calibration) is killed.
    timeout --kill-after=5 "$TIMEOUT" "${cmd[@]}" <"/dev/null" >"$fifo" 2>&1 &
    qpid=$!
    : >"$log"
    while IFS= read -r line; do
        now="${EPOCHREALTIME/./}"
        line="${line%$'\r'}"
        printf '%9.3f %s\n' "$(( (now - t0) / 1000 ))e-3" "$line" >>"$log"
        case "$line" in
            *"bhatti-smoke: ok"*) [[ -n "$t_ok" ]] || t_ok=$(( (now - t0) / 1000 )) ;;
            # QEMU microvm exits by itself on ACPI power-off; belt and braces
            # in case a VMM does not: stop it (by its pid) after 2 s instead
            # of waiting for the watchdog. The killer must not hold our
            # stdout, or the caller's $(...) would wait for it.
            *"reboot: Power down"*|*"reboot: Restarting system"*)
                if ((!powered)); then
                    powered=1
                    ( sleep 2; kill "$qpid" 2>/dev/null ) >/dev/null 2>&1 &
                    killer=$!
                fi ;;
        esac
    done <"$fifo"
    wait "$qpid" || rc=$?
    [[ -z "$killer" ]] || kill "$killer" 2>/dev/null || true
    rm -f "$disk" "$fifo"
    ((powered)) && [[ "$rc" != 124 ]] && rc=0
    echo "${t_ok:--} $rc"
}

main() {
    parse_args "$@"
    check_tools

    TSC_KHZ="$(host_tsc_khz)" || die "cannot determine the host TSC frequency; set BHATTI_TSC_KHZ (kHz)"
    log "host TSC: $TSC_KHZ kHz; kernel: $KERNEL; $("$QEMU" --version | head -n1)"

    local cache="$BHATTI_GUEST_CACHE" init img
    mkdir -p "$cache/smoke"
    init="$cache/smoke/smoke-init.sh"
    write_smoke_init "$init"
    # Same recipe as the real minimal image, only lohar is replaced; cached
    # by the init script's sha256 like any lohar.
    if ((DEBIAN)); then
        img="$("$HERE/build-debian-rootfs.sh" --lohar "$init" --out "$cache/smoke/rootfs-debian-smoke.ext4")"
    else
        img="$("$HERE/build-rootfs.sh" --lohar "$init" --out "$cache/smoke/rootfs-smoke.ext4")"
    fi

    WORK="$(mktemp -d "${TMPDIR:-/tmp}/bhatti-smoke.XXXXXX")"
    ((KEEP_LOGS)) || trap 'rm -rf "$WORK"' EXIT

    local i res ms rc fail=0 times=()
    for ((i = 1; i <= RUNS; i++)); do
        res="$(boot_once "$img" "$WORK/boot-$i.log" "")"
        read -r ms rc <<<"$res"
        if [[ "$ms" == - ]]; then
            log "boot $i: FAILED (exit $rc, no 'bhatti-smoke: ok'); console log:"
            sed 's/^/    /' "$WORK/boot-$i.log" | tail -n 40 >&2
            fail=1
        else
            log "boot $i: bhatti-smoke: ok after ${ms} ms wall ($(grep -o 'uptime=[0-9.]*s' "$WORK/boot-$i.log") guest), qemu exit $rc"
            times+=("$ms")
        fi
    done
    ((RUNS == 0)) || log "command line: $(cat "$WORK/boot-1.log.cmd")"

    if ((NET)); then
        local iparg="ip=$GUEST_IP::$GATEWAY_IP:$NETMASK::eth0:off"
        res="$(boot_once "$img" "$WORK/boot-net.log" "$iparg" \
            -netdev user,id=n0,restrict=on -device virtio-net-device,netdev=n0)"
        read -r ms rc <<<"$res"
        if grep -q "inet $GUEST_IP/30" "$WORK/boot-net.log"; then
            log "net boot: eth0 has $GUEST_IP/30 from '$iparg' (ok after ${ms} ms)"
            sed -n '/bhatti-smoke: net-begin/,/bhatti-smoke: net-end/p' "$WORK/boot-net.log" |
                grep -E 'eth0|inet |default|via' | sed 's/^/    /' >&2
        else
            log "net boot: FAILED, eth0 did not get $GUEST_IP (exit $rc); console log:"
            sed 's/^/    /' "$WORK/boot-net.log" | tail -n 60 >&2
            fail=1
        fi
    fi
    ((KEEP_LOGS)) && log "logs kept in $WORK"
    ((${#times[@]})) && echo "boot-ms: ${times[*]}"
    return "$fail"
}

main "$@"
