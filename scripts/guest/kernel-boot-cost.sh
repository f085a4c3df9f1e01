#!/usr/bin/env bash
# What a kernel change costs at boot: boots two guest kernels in the same run,
# interleaved in pairs of alternating order (old new, new old, ...) so that
# load on the host and the position in a pair hit both alike, under QEMU
# microvm with TCG the way the engine boots a sandbox (same machine, command
# line and devices, minus the NIC: this VM has no network), with the real
# lohar of the minimal image as PID 1, and times each boot from QEMU's launch
# to lohar's `lohar: ready` console line. Writes a markdown report
# (p50/p95/p99 per kernel, the ratio, host, date, the two configs' option
# delta).
set -euo pipefail

BHATTI_LOG_TAG=kernel-boot-cost
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export LC_ALL=C   # EPOCHREALTIME must use '.' as decimal point

usage() {
    cat <<USAGE
usage: $(basename "$0") --old <vmlinux> --new <vmlinux> [--runs N] [--out FILE]
       [--old-config FILE] [--new-config FILE] [--rootfs FILE] [--warmup N] [--timeout SECS]
       [--keep-logs]

  --old, --new     the two kernels (vmlinux) to compare
  --runs N         timed boots per kernel (default 10)
  --out FILE       the markdown report (default bench/results/kernel-boot.md)
  --old-config, --new-config
                   the kernels' .config files, for the option delta (default: beside
                   the vmlinux, kernel.config for vmlinux, kernel.config.X for vmlinux.X)
  --rootfs FILE    the image to boot (default \$BHATTI_GUEST_CACHE/rootfs-minimal.ext4,
                   see build-rootfs.sh); it must have lohar as /usr/local/bin/lohar
  --warmup N       untimed boots per kernel first (page cache; default 1)
  --timeout SECS   watchdog per boot (default 120)
  --keep-logs      keep the per-boot console logs (the directory is printed)

environment:
  BHATTI_GUEST_CACHE  cache dir (default /var/cache/bhatti/guest; now: $BHATTI_GUEST_CACHE)
  BHATTI_TSC_KHZ      override the host TSC frequency passed as tsc_early_khz=
  BHATTI_QEMU         QEMU binary (default qemu-system-x86_64)
USAGE
}

OLD="" NEW="" OLD_CONFIG="" NEW_CONFIG="" ROOTFS="" OUT=""
RUNS=10 WARMUP=1 TIMEOUT=120 KEEP_LOGS=0
parse_args() {
    while (($#)); do
        case "$1" in
            --old) OLD="${2:?--old needs a path}"; shift ;;
            --new) NEW="${2:?--new needs a path}"; shift ;;
            --old-config) OLD_CONFIG="${2:?--old-config needs a path}"; shift ;;
            --new-config) NEW_CONFIG="${2:?--new-config needs a path}"; shift ;;
            --rootfs) ROOTFS="${2:?--rootfs needs a path}"; shift ;;
            --runs) RUNS="${2:?--runs needs a number}"; shift ;;
            --warmup) WARMUP="${2:?--warmup needs a number}"; shift ;;
            --timeout) TIMEOUT="${2:?--timeout needs a number}"; shift ;;
            --out) OUT="${2:?--out needs a path}"; shift ;;
            --keep-logs) KEEP_LOGS=1 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    [[ -n $OLD && -n $NEW ]] || { usage >&2; die "--old and --new are required"; }
    [[ -s $OLD ]] || die "kernel not found: $OLD"
    [[ -s $NEW ]] || die "kernel not found: $NEW"
    ROOTFS="${ROOTFS:-$BHATTI_GUEST_CACHE/rootfs-minimal.ext4}"
    [[ -s $ROOTFS ]] || die "image not found: $ROOTFS (run scripts/guest/build-rootfs.sh)"
    OUT="${OUT:-$BHATTI_REPO/bench/results/kernel-boot.md}"
    local n
    for n in "$RUNS" "$WARMUP" "$TIMEOUT"; do
        [[ "$n" =~ ^[0-9]+$ ]] || die "--runs, --warmup and --timeout take whole numbers"
    done
    ((RUNS > 0)) || die "--runs must be at least 1"
    OLD_CONFIG="${OLD_CONFIG:-$(config_beside "$OLD")}"
    NEW_CONFIG="${NEW_CONFIG:-$(config_beside "$NEW")}"
}

# build-kernel.sh leaves kernel.config beside vmlinux; a kept copy
# vmlinux.<tag> goes with kernel.config.<tag>.
config_beside() {
    local dir base
    dir="$(dirname "$1")"; base="$(basename "$1")"
    if [[ "$base" == vmlinux.* ]]; then
        echo "$dir/kernel.config.${base#vmlinux.}"
    else
        echo "$dir/kernel.config"
    fi
}

QEMU="${BHATTI_QEMU:-qemu-system-x86_64}"
check_tools() {
    require_cmds "$QEMU:qemu-system-x86" timeout:coreutils mkfifo:coreutils join:coreutils
}

# The VM this script has running (boot_once runs in a subshell, hence a
# file) is killed on any exit.
cleanup() {
    [[ -n "${WORK:-}" ]] || return 0
    if [[ -s "$WORK/qemu.pid" ]]; then kill "$(cat "$WORK/qemu.pid")" 2>/dev/null || true; fi
    rm -f "$WORK/qemu.pid" "$WORK/disk.ext4" "$WORK/rootfs.ext4" "$WORK/console.fifo"
    if ((KEEP_LOGS)); then log "logs kept in $WORK"; else rm -rf "$WORK"; fi
}

# boot_once <kernel> <log>: prints the milliseconds from launch to
# `lohar: ready`, or `-` when the guest did not get there before the watchdog.
boot_once() {
    local kernel="$1" log="$2" disk fifo qpid t0 now line t_ready="-"
    # A sparse copy per boot: the guest mounts its root read-write.
    disk="$WORK/disk.ext4"
    cp --sparse=always "$WORK/rootfs.ext4" "$disk"
    fifo="$WORK/console.fifo"
    rm -f "$fifo"; mkfifo "$fifo"

    # The engine's machine and command line (crates/engine: vmm/qemu/launch.rs,
    # microvm cmdline) without `ip=` and the NIC: -nic none, no network at all.
    local append="console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/usr/local/bin/lohar quiet loglevel=1 tsc_early_khz=$TSC_KHZ"
    local cmd=("$QEMU" -M "microvm,pic=off,rtc=on,acpi=on" -accel tcg -cpu max -m 512M -smp 1
        -nodefaults -no-user-config -display none -serial stdio -nic none
        -kernel "$kernel" -append "$append"
        -drive "id=root,file=$disk,format=raw,if=none,discard=unmap"
        -device "virtio-blk-device,drive=root,serial=root"
        -object "rng-random,id=rng0,filename=/dev/urandom" -device "virtio-rng-device,rng=rng0"
        -no-reboot)
    printf '%q ' "${cmd[@]}" >"$log.cmd"; echo >>"$log.cmd"

    t0="${EPOCHREALTIME/./}"
    # `timeout` is the watchdog, and passes our kill on to QEMU.
    timeout --kill-after=5 "$TIMEOUT" "${cmd[@]}" </dev/null >"$fifo" 2>&1 &
    qpid=$!
    echo "$qpid" >"$WORK/qemu.pid"
    : >"$log"
    while IFS= read -r line; do
        now="${EPOCHREALTIME/./}"
        line="${line%$'\r'}"
        printf '%9.3f %s\n' "$(( (now - t0) / 1000 ))e-3" "$line" >>"$log"
        if [[ "$line" == *"lohar: ready"* ]]; then
            t_ready=$(( (now - t0) / 1000 ))
            break
        fi
    done <"$fifo"
    # lohar never powers off by itself: stop the VM once it is ready.
    kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
    rm -f "$disk" "$fifo" "$WORK/qemu.pid"
    echo "$t_ready"
}

# pct <p> <sorted values...>: nearest-rank percentile (with 10 runs p95 and
# p99 are both the slowest boot).
pct() {
    local p="$1"; shift
    local n=$# rank
    rank=$(( (p * n + 99) / 100 ))
    ((rank >= 1)) || rank=1
    echo "${!rank}"
}

fmt_ms() { printf '%d.%03d s' $(( $1 / 1000 )) $(( $1 % 1000 )); }

# The options whose values differ between two .config files ("is not set"
# and absent count as n), one NAME per line.
config_delta() {
    local a="$1" b="$2"
    norm() { sed -nE -e 's/^(CONFIG_[A-Za-z0-9_]+)=(.*)$/\1=\2/p' \
        -e 's/^# (CONFIG_[A-Za-z0-9_]+) is not set$/\1=n/p' "$1" | sort -t= -k1,1; }
    join -t= -a1 -a2 -e n -o 0,1.2,2.2 <(norm "$a") <(norm "$b") |
        awk -F= '$2 != $3 { print $1 }'
}

main() {
    parse_args "$@"
    check_tools
    TSC_KHZ="$(host_tsc_khz)" || die "cannot determine the host TSC frequency; set BHATTI_TSC_KHZ (kHz)"
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/bhatti-kboot.XXXXXX")"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    # Every boot starts from the same bytes even if the image is rebuilt
    # meanwhile (build-rootfs.sh replaces it on a new lohar).
    cp --sparse=always "$ROOTFS" "$WORK/rootfs.ext4"

    local qver load0
    qver="$("$QEMU" --version | head -n1)"
    load0="$(cut -d' ' -f1-3 /proc/loadavg)"
    log "old: $OLD; new: $NEW; $RUNS runs each (+$WARMUP warm-up), interleaved; $qver"

    local i k ms kernel tag order old_ms=() new_ms=() fails=0
    for ((i = 1; i <= WARMUP + RUNS; i++)); do
        # Pairs alternate old-new / new-old: with a fixed order the second
        # boot of a pair came out about 5 % faster whichever kernel it was,
        # which a fixed order credits to one kernel.
        if ((i % 2)); then order="old new"; else order="new old"; fi
        for k in $order; do
            if [[ $k == old ]]; then kernel="$OLD"; else kernel="$NEW"; fi
            ms="$(boot_once "$kernel" "$WORK/$k-$i.log")"
            if ((i <= WARMUP)); then tag="warm-up"; else tag="run $((i - WARMUP))"; fi
            if [[ "$ms" == - ]]; then
                log "$k $tag: FAILED (no 'lohar: ready' within ${TIMEOUT}s); console tail:"
                tail -n 30 "$WORK/$k-$i.log" | sed 's/^/    /' >&2
                log "command line: $(cat "$WORK/$k-$i.log.cmd")"
                fails=$((fails + 1))
                continue
            fi
            log "$k $tag: lohar: ready after $ms ms"
            ((i <= WARMUP)) && continue
            if [[ $k == old ]]; then old_ms+=("$ms"); else new_ms+=("$ms"); fi
        done
    done
    ((fails == 0)) || die "$fails boot(s) failed; no report written"

    local so sn
    mapfile -t so < <(printf '%s\n' "${old_ms[@]}" | sort -n)
    mapfile -t sn < <(printf '%s\n' "${new_ms[@]}" | sort -n)
    local o50 o95 o99 n50 n95 n99
    o50=$(pct 50 "${so[@]}"); o95=$(pct 95 "${so[@]}"); o99=$(pct 99 "${so[@]}")
    n50=$(pct 50 "${sn[@]}"); n95=$(pct 95 "${sn[@]}"); n99=$(pct 99 "${sn[@]}")
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "×%.2f", b / a }'; }

    local delta="" ndelta="unknown (config not found)"
    if [[ -r "$OLD_CONFIG" && -r "$NEW_CONFIG" ]]; then
        delta="$(config_delta "$OLD_CONFIG" "$NEW_CONFIG")"
        ndelta="$(grep -c . <<<"$delta" || true)"
    fi
    local size_old size_new
    size_old="$(awk -v b="$(stat -c %s "$OLD")" 'BEGIN { printf "%.1f MiB", b / 1048576 }')"
    size_new="$(awk -v b="$(stat -c %s "$NEW")" 'BEGIN { printf "%.1f MiB", b / 1048576 }')"

    mkdir -p "$(dirname "$OUT")"
    {
        echo "# Benchmark: guest kernel boot cost"
        echo
        echo "Generated by \`scripts/guest/kernel-boot-cost.sh\` on $(date -u +%Y-%m-%dT%H:%MZ)."
        echo "Host: $(nproc) cpus, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo);" \
            "load average at start $load0; $qver, TCG."
        echo
        echo "Each boot: \`-M microvm,pic=off,rtc=on,acpi=on -accel tcg -cpu max -m 512M -smp 1\`," \
            "no NIC, \`$(basename "$ROOTFS")\` (a sparse copy per boot) with lohar as PID 1," \
            "the engine's command line without \`ip=\`; timed from QEMU's launch to the" \
            "\`lohar: ready\` console line. $RUNS boots per kernel, interleaved in pairs of" \
            "alternating order (old new, new old, …) after $WARMUP untimed warm-up boot(s) each;" \
            "nearest-rank percentiles."
        [[ ! -r "$ROOTFS.stamp" ]] || echo "Image stamp: \`$(cat "$ROOTFS.stamp")\`."
        echo
        echo "| kernel | vmlinux | n | p50 | p95 | p99 |"
        echo "|---|---|---|---|---|---|"
        echo "| old: \`$OLD\` | $size_old | ${#so[@]} | $(fmt_ms "$o50") | $(fmt_ms "$o95") | $(fmt_ms "$o99") |"
        echo "| new: \`$NEW\` | $size_new | ${#sn[@]} | $(fmt_ms "$n50") | $(fmt_ms "$n95") | $(fmt_ms "$n99") |"
        echo "| new / old | | | $(ratio "$o50" "$n50") | $(ratio "$o95" "$n95") | $(ratio "$o99" "$n99") |"
        echo
        echo "Boot times (ms), in run order: old ${old_ms[*]}; new ${new_ms[*]}."
        echo
        echo "Config delta: $ndelta options differ between \`$OLD_CONFIG\` and \`$NEW_CONFIG\`."
        if [[ -n "$delta" ]]; then
            echo
            echo "$delta" | sed 's/^CONFIG_//' | paste -sd' ' | fold -s -w 78 | sed 's/ *$//'
        fi
    } >"$OUT"
    log "p50 old $o50 ms, new $n50 ms ($(ratio "$o50" "$n50")); report: $OUT"
    cat "$OUT"
}

main "$@"
