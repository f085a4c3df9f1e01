#!/usr/bin/env bash
# Build the bhatti guest kernel (vmlinux for Firecracker / QEMU microvm, plus
# bzImage) from the distribution's kernel source: the kernel's x86_64
# defconfig with the project's fragment (kernel.fragment, beside this script)
# on top.
#
# Idempotent: the result is cached under $BHATTI_GUEST_CACHE with a stamp
# holding a key over every input, so a second run with the same inputs is a
# no-op that returns immediately.
set -euo pipefail

BHATTI_LOG_TAG=build-kernel
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bump when the recipe below changes in a way that changes the output.
RECIPE_VERSION=2

# The options the guest needs, each with its reason (lohar is PID 1 and there
# is no initramfs and no modules, so anything needed to reach the rootfs, the
# console, the network or the agent must be built in). Every line of it is
# checked after olddefconfig.
FRAGMENT_DEFAULT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kernel.fragment"

usage() {
    cat <<USAGE
usage: $(basename "$0") [--force] [-h|--help]

Builds \$BHATTI_GUEST_CACHE/vmlinux and \$BHATTI_GUEST_CACHE/bzImage.

  --force     rebuild even if the cache stamp matches

environment:
  BHATTI_GUEST_CACHE          cache dir (default /var/cache/bhatti/guest; now: $BHATTI_GUEST_CACHE)
  BHATTI_KERNEL_FRAGMENT      options applied on top of the base (default: $FRAGMENT_DEFAULT)
  BHATTI_KERNEL_CONFIG        a full config to start from instead of the kernel's x86_64 defconfig
                              (the fragment is still applied and checked on top of it)
  BHATTI_KERNEL_SRC           source tarball (default /usr/src/linux-source-6.1.tar.xz, else the newest
                              /usr/src/linux-source-* the distribution installed)
  BHATTI_KERNEL_EXTRA_CONFIG  extra options, space separated, e.g. "CONFIG_OVERLAY_FS=y CONFIG_TUN=y"
                              (every one set to y/m must survive olddefconfig, else the build fails)
  BHATTI_KERNEL_JOBS          make -j value (default: nproc)
USAGE
}

FORCE=0
parse_args() {
    while (($#)); do
        case "$1" in
            --force) FORCE=1 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
}

check_tools() {
    require_cmds tar:tar xz:xz-utils make:make gcc:gcc bc:bc bison:bison \
        flex:flex pahole:dwarves perl:perl-base sha256sum:coreutils \
        flock:util-linux dpkg-query:dpkg
    # Headers the kernel's host tools (objtool, sign-file) compile against.
    require_files /usr/include/libelf.h:libelf-dev /usr/include/openssl/ssl.h:libssl-dev
}

# A short identifier for the source tarball that is cheap to compute (hashing
# 138 MB every run would blow the "no-op in under a second" budget): the
# owning Debian package and its version when dpkg knows the file, else its
# size and mtime.
source_version() {
    local src="$1" pkg ver
    pkg="$(dpkg-query -S "$src" 2>/dev/null | head -n1 | cut -d: -f1 || true)"
    if [[ -n "$pkg" ]]; then
        ver="$(deb_version "$pkg")"
        echo "deb:$pkg=$ver"
    else
        echo "file:$(stat -c '%s:%Y' "$src"):$(basename "$src")"
    fi
}

# The cache key covers: the base config (defconfig or a given file), the
# fragment, the extra options, the source version, and the recipe version.
cache_key() {
    {
        echo "recipe=$RECIPE_VERSION"
        echo "--- base"
        if [[ -n $KCONFIG ]]; then cat "$KCONFIG"; else echo defconfig; fi
        echo "--- fragment"
        cat "$FRAGMENT"
        echo "--- extra"
        printf '%s\n' "${EXTRA_CONFIG[@]}"
        echo "--- source"
        echo "$SRC_VERSION"
    } | sha256sum | cut -d' ' -f1
}

# Apply NAME=VALUE options with the kernel's own scripts/config so that an
# option already present in the file is replaced rather than duplicated.
apply_extra_config() {
    local opt name val
    for opt in "${EXTRA_CONFIG[@]}"; do
        [[ "$opt" == CONFIG_*=* ]] || die "extra option must look like CONFIG_FOO=y: $opt"
        name="${opt%%=*}"; name="${name#CONFIG_}"; val="${opt#*=}"
        case "$val" in
            y) ./scripts/config --file .config --enable "$name" ;;
            n) ./scripts/config --file .config --disable "$name" ;;
            m) ./scripts/config --file .config --module "$name" ;;
            \"*) ./scripts/config --file .config --set-str "$name" "$(eval "echo $val")" ;;
            *) ./scripts/config --file .config --set-val "$name" "$val" ;;
        esac
    done
}

config_value() { grep -E "^CONFIG_$1=" .config | head -n1 | cut -d= -f2- || true; }

# The options a fragment file sets, one `NAME=VALUE` per line (`n` for
# "is not set"), comments and blank lines skipped.
fragment_options() {
    sed -nE -e 's/^(CONFIG_[A-Za-z0-9_]+)=(.*)$/\1=\2/p' \
        -e 's/^# (CONFIG_[A-Za-z0-9_]+) is not set$/\1=n/p' "$1"
}

verify_config() {
    local bad=() opt name val got
    # Every option of the fragment and every explicitly requested one must
    # have survived olddefconfig (it silently drops options whose
    # dependencies are missing, and turns off what nothing selects).
    local wanted=()
    mapfile -t wanted < <(fragment_options "$FRAGMENT")
    wanted+=("${EXTRA_CONFIG[@]}")
    for opt in "${wanted[@]}"; do
        name="${opt%%=*}"; name="${name#CONFIG_}"; val="${opt#*=}"
        got="$(config_value "$name")"
        case "$val" in
            n) [[ -z "$got" || "$got" == n ]] ||
                    bad+=("CONFIG_$name (wanted off, got '$got': something selects it)") ;;
            *) [[ "$got" == "$val" ]] ||
                    bad+=("CONFIG_$name (wanted $val, got '$got' after olddefconfig: missing dependency?)") ;;
        esac
    done
    if ((${#bad[@]})); then
        printf '[%s] error: kernel config check failed:\n' "$BHATTI_LOG_TAG" >&2
        printf '  - %s\n' "${bad[@]}" >&2
        exit 1
    fi
}

main() {
    parse_args "$@"
    check_tools

    KCONFIG="${BHATTI_KERNEL_CONFIG:-}"
    FRAGMENT="${BHATTI_KERNEL_FRAGMENT:-$FRAGMENT_DEFAULT}"
    # The distribution's kernel source: Debian 12's 6.1 (what the project
    # tests with), else the newest one installed (Debian 13's
    # linux-source, Ubuntu's linux-source-<v>/ directory).
    SRC="${BHATTI_KERNEL_SRC:-}"
    if [[ -z $SRC ]]; then
        SRC=/usr/src/linux-source-6.1.tar.xz
        if [[ ! -r $SRC ]]; then
            SRC=$(ls -1 /usr/src/linux-source-*.tar.* /usr/src/linux-source-*/linux-source-*.tar.* 2>/dev/null | sort -V | tail -1)
            SRC=${SRC:-/usr/src/linux-source-6.1.tar.xz}
        fi
    fi
    if [[ -n $KCONFIG ]]; then
        [[ -r "$KCONFIG" ]] || die "kernel config not found: $KCONFIG (BHATTI_KERNEL_CONFIG)"
        KCONFIG="$(readlink -f "$KCONFIG")"
    fi
    [[ -r "$FRAGMENT" ]] || die "kernel config fragment not found: $FRAGMENT (BHATTI_KERNEL_FRAGMENT)"
    FRAGMENT="$(readlink -f "$FRAGMENT")"
    [[ -r "$SRC" ]] || die "kernel source not found: $SRC (apt-get install linux-source, or set BHATTI_KERNEL_SRC)"

    EXTRA_CONFIG=()
    read -r -a EXTRA_CONFIG <<<"${BHATTI_KERNEL_EXTRA_CONFIG:-}"
    SRC_VERSION="$(source_version "$SRC")"

    local cache="$BHATTI_GUEST_CACHE" key stamp
    mkdir -p "$cache"
    key="$(cache_key)"
    stamp="$cache/kernel.stamp"

    if ((!FORCE)) && [[ -f "$stamp" && "$(cat "$stamp")" == "$key" && -s "$cache/vmlinux" && -s "$cache/bzImage" ]]; then
        log "up to date (key ${key:0:12}): $cache/vmlinux"
        echo "$cache/vmlinux"
        return 0
    fi

    # Serialise concurrent builds (two CI jobs on one machine) on one lock.
    exec 9>"$cache/.kernel.lock"
    flock 9
    # Another process may have finished the same build while we waited.
    if ((!FORCE)) && [[ -f "$stamp" && "$(cat "$stamp")" == "$key" && -s "$cache/vmlinux" && -s "$cache/bzImage" ]]; then
        log "up to date after waiting for lock: $cache/vmlinux"
        echo "$cache/vmlinux"
        return 0
    fi

    local builds="$cache/build" work
    work="$builds/linux-${SRC_VERSION##*=}-${key:0:12}"
    work="${work//[^A-Za-z0-9._\/-]/_}"
    mkdir -p "$builds"
    # Old work trees (other keys) are ~2 GB each and never reused: drop them.
    local d
    for d in "$builds"/linux-*; do
        [[ -e "$d" && "$d" != "$work" ]] || continue
        log "removing stale work tree $d"
        rm -rf "$d"
    done

    if [[ ! -f "$work/.bhatti-extracted" ]]; then
        log "extracting $SRC -> $work"
        rm -rf "$work"
        mkdir -p "$work"
        tar -xf "$SRC" -C "$work" --strip-components=1
        touch "$work/.bhatti-extracted"
    else
        log "reusing extracted tree $work"
    fi

    cd "$work"
    # Reproducible-ish banner; no host/user names leak into the guest.
    export KBUILD_BUILD_USER=bhatti KBUILD_BUILD_HOST=bhatti
    if [[ -n $KCONFIG ]]; then
        cp "$KCONFIG" .config
    else
        make defconfig
    fi
    # The kernel's own merger: later lines win, "is not set" turns off.
    ./scripts/kconfig/merge_config.sh -m .config "$FRAGMENT"
    apply_extra_config
    make olddefconfig
    verify_config
    cp .config "$cache/kernel.config.tmp" && mv -f "$cache/kernel.config.tmp" "$cache/kernel.config"

    local jobs="${BHATTI_KERNEL_JOBS:-$(nproc)}" t0=$SECONDS
    log "make -j$jobs vmlinux bzImage (about 8 minutes on 2 cores)"
    make -j"$jobs" vmlinux bzImage
    log "kernel built in $((SECONDS - t0)) s"

    # Publish atomically: readers never see a half-copied kernel, and the
    # stamp is written last so an interrupted run is rebuilt next time.
    rm -f "$stamp"
    cp vmlinux "$cache/vmlinux.tmp" && mv -f "$cache/vmlinux.tmp" "$cache/vmlinux"
    cp arch/x86/boot/bzImage "$cache/bzImage.tmp" && mv -f "$cache/bzImage.tmp" "$cache/bzImage"
    echo "$key" >"$stamp.tmp" && mv -f "$stamp.tmp" "$stamp"
    log "done: $cache/vmlinux $cache/bzImage (key ${key:0:12})"
    echo "$cache/vmlinux"
}

main "$@"
