# shellcheck shell=bash
# Shared helpers for the guest-artifact scripts in scripts/guest/.
# Sourced, never executed: the callers own `set -euo pipefail`.

# Repository root = two levels above this file (scripts/guest/lib.sh).
# shellcheck disable=SC2034  # used by the scripts that source this file
BHATTI_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Everything built here lives outside the work tree so that a reused CI
# machine (or a second checkout) does not rebuild the kernel every time.
BHATTI_GUEST_CACHE="${BHATTI_GUEST_CACHE:-/var/cache/bhatti/guest}"

log() { printf '[%s] %s\n' "${BHATTI_LOG_TAG:-guest}" "$*" >&2; }
die() { printf '[%s] error: %s\n' "${BHATTI_LOG_TAG:-guest}" "$*" >&2; exit 1; }

# require_cmds "cmd:debian-package" ...
# Checks every tool up front and reports ALL missing ones at once, with the
# Debian package that provides each, instead of failing half-way through a
# 10-minute build.
require_cmds() {
    local spec cmd pkg missing=()
    for spec in "$@"; do
        cmd="${spec%%:*}"
        pkg="${spec#*:}"
        if ! command -v "$cmd" >/dev/null 2>&1; then
            missing+=("$cmd (apt-get install $pkg)")
        fi
    done
    if ((${#missing[@]})); then
        printf '[%s] error: missing required tools:\n' "${BHATTI_LOG_TAG:-guest}" >&2
        printf '  - %s\n' "${missing[@]}" >&2
        exit 1
    fi
}

# require_files "path:debian-package" ...  (headers and the like)
require_files() {
    local spec f pkg missing=()
    for spec in "$@"; do
        f="${spec%%:*}"
        pkg="${spec#*:}"
        [[ -e "$f" ]] || missing+=("$f (apt-get install $pkg)")
    done
    if ((${#missing[@]})); then
        printf '[%s] error: missing required files:\n' "${BHATTI_LOG_TAG:-guest}" >&2
        printf '  - %s\n' "${missing[@]}" >&2
        exit 1
    fi
}

sha256_of_file() { sha256sum "$1" | cut -d' ' -f1; }

# Installed version of a Debian package, or empty.
deb_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

# host_tsc_khz: the host's TSC frequency in kHz, for the guest's
# `tsc_early_khz=` (without it a TCG guest on a loaded host can hang while
# calibrating the TSC). Under both TCG and KVM the guest's TSC ticks at the
# host's TSC rate, so the host's own value is the right one.
#
# Order (first hit wins), mirrored by the Rust engine:
#   1. $BHATTI_TSC_KHZ                      explicit override
#   2. /sys/devices/system/cpu/cpu0/tsc_freq_khz   (exists on some kernels)
#   3. kernel log: last "tsc: Refined TSC clocksource calibration: X MHz",
#      else "tsc: Detected X MHz processor" -- this is the value the host
#      kernel itself uses for its TSC (needs root or dmesg_restrict=0, and
#      the boot messages still in the ring buffer; falls back to journalctl -k -b)
#   4. /proc/cpuinfo "cpu MHz" of cpu0, ONLY if the CPU advertises
#      constant_tsc and no cpufreq driver is active (otherwise "cpu MHz" is the
#      current core clock, not the TSC rate)
# MHz values are converted to kHz by dropping the decimal point (the kernel
# prints kHz as MHz with three decimals, e.g. 2599.998 MHz = 2599998 kHz).
host_tsc_khz() {
    local v line
    if [[ -n "${BHATTI_TSC_KHZ:-}" ]]; then
        [[ "$BHATTI_TSC_KHZ" =~ ^[0-9]+$ ]] || die "BHATTI_TSC_KHZ must be an integer (kHz)"
        echo "$BHATTI_TSC_KHZ"; return 0
    fi
    if [[ -r /sys/devices/system/cpu/cpu0/tsc_freq_khz ]]; then
        v="$(cat /sys/devices/system/cpu/cpu0/tsc_freq_khz)"
        if [[ "$v" =~ ^[0-9]+$ ]]; then echo "$v"; return 0; fi
    fi
    local klog=""
    klog="$(dmesg 2>/dev/null || true)"
    if ! grep -q 'tsc: ' <<<"$klog" && command -v journalctl >/dev/null 2>&1; then
        klog="$(journalctl -k -b -q --no-pager 2>/dev/null || true)"
    fi
    line="$(grep -o 'Refined TSC clocksource calibration: [0-9]*\.[0-9]* MHz' <<<"$klog" | tail -n1 || true)"
    [[ -n "$line" ]] || line="$(grep -o 'tsc: Detected [0-9]*\.[0-9]* MHz' <<<"$klog" | tail -n1 || true)"
    if [[ -n "$line" ]]; then
        _mhz_to_khz "$(grep -o '[0-9]*\.[0-9]*' <<<"$line")"; return 0
    fi
    if grep -qw constant_tsc /proc/cpuinfo && [[ ! -e /sys/devices/system/cpu/cpu0/cpufreq ]]; then
        v="$(awk -F': *' '/^cpu MHz/ {print $2; exit}' /proc/cpuinfo)"
        if [[ -n "$v" ]]; then _mhz_to_khz "$v"; return 0; fi
    fi
    return 1
}

# "2599.998" -> 2599998 ; "2600" -> 2600000 (integer arithmetic only).
_mhz_to_khz() {
    local mhz="$1" int frac
    int="${mhz%%.*}"
    if [[ "$mhz" == *.* ]]; then frac="${mhz#*.}"; else frac=""; fi
    frac="${frac}000"; frac="${frac:0:3}"
    echo $((10#$int * 1000 + 10#$frac))
}

# --- root-filesystem trees (build-debian-rootfs.sh, build-tier.sh) -----------

# on_exit CMD: run CMD (a string, eval'd) when the script exits, after the
# ones registered before it, whatever the others did. One EXIT trap for all,
# so a helper's clean-up does not replace its caller's.
_BHATTI_ON_EXIT=()
on_exit() {
    _BHATTI_ON_EXIT+=("$1")
    trap _bhatti_run_on_exit EXIT
    # A signal ends the script through exit, so the EXIT trap runs then too.
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
_bhatti_run_on_exit() {
    local c
    for c in "${_BHATTI_ON_EXIT[@]}"; do eval "$c" || true; done
}

# in_root CMD...: run CMD chrooted into $ROOT. Commands inside the tree run
# with a clean environment: nothing from the caller's shell (locale,
# proxies, PATH) leaks into the image.
in_root() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C \
        DEBIAN_FRONTEND=noninteractive chroot "$ROOT" "$@"
}

# remove_tree DIR: a debootstrap killed hard (no exit trap) leaves proc/sys
# mounted inside its target: unmount whatever is under a tree before
# deleting it, and never let rm cross into another file system.
remove_tree() {
    local t="$1" m
    [[ -e "$t" ]] || return 0
    t="$(realpath "$t")"
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v p="$t/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r)
    rm -rf --one-file-system "$t"
}

# tree_pids DIR: pids of the processes whose root directory is DIR or below
# it (what a chroot into DIR started and left running).
tree_pids() {
    local t p r
    t="$(realpath "$1")"
    for p in /proc/[0-9]*; do
        r="$(readlink "$p/root" 2>/dev/null)" || continue
        [[ "$r" == "$t" || "$r" == "$t"/* ]] && echo "${p#/proc/}"
    done
    return 0
}

# pack_rootfs TREE TREE_KEY LOHAR OUT SIZE_MB FORCE
# Packs TREE into the sparse ext4 image OUT (SIZE_MB MiB) with `mke2fs -d`,
# after putting LOHAR in as /usr/local/bin/lohar (+ the systemctl and
# journalctl links). OUT.stamp holds "tree=KEY lohar=SHA size=NM": when it
# matches and FORCE is 0, nothing is done. The caller holds the tree's lock:
# lohar goes into the cached tree itself (the tree never holds another one).
# Sets PACK_BUILT (0: up to date, 1: packed), PACK_USED_MB (the tree's size)
# and PACK_SECONDS.
pack_rootfs() {
    local tree="$1" key="$2" lohar="$3" out="$4" size_mb="$5" force="$6"
    local lohar_sha img_key stamp t0=$SECONDS
    lohar_sha="$(sha256_of_file "$lohar")"
    img_key="tree=$key lohar=$lohar_sha size=${size_mb}M"
    stamp="$out.stamp"
    PACK_BUILT=0 PACK_USED_MB="" PACK_SECONDS=0
    if ((!force)) && [[ -s "$out" && -f "$stamp" && "$(cat "$stamp")" == "$img_key" ]]; then
        log "up to date: $out"
        return 0
    fi

    install -m 0755 -o 0 -g 0 "$lohar" "$tree/usr/local/bin/lohar"
    ln -sf lohar "$tree/usr/local/bin/systemctl"
    ln -sf lohar "$tree/usr/local/bin/journalctl"

    PACK_USED_MB="$(du -sm "$tree" | cut -f1)"
    ((PACK_USED_MB * 120 / 100 < size_mb)) ||
        die "tree is ${PACK_USED_MB} MiB; --size-mb $size_mb leaves too little room"

    local tmpimg="$out.tmp.$$"
    on_exit "rm -f '$tmpimg'"
    rm -f "$tmpimg"
    mke2fs -t ext4 -d "$tree" -F -q -L bhatti-root "$tmpimg" "${size_mb}M" >&2
    rm -f "$stamp"
    mv -f "$tmpimg" "$out"
    echo "$img_key" >"$stamp"
    PACK_BUILT=1 PACK_SECONDS=$((SECONDS - t0))
    log "built $out (${size_mb} MiB sparse, content ${PACK_USED_MB} MiB, lohar sha256 ${lohar_sha:0:12})"
}
