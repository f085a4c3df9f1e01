#!/usr/bin/env bash
# Build an image tier: the `base` tree (build-debian-rootfs.sh) plus Debian's
# packages for one job, installed with apt-get in a chroot, packed into
# ext4 like the base. The daemon registers <data_dir>/images/rootfs-<tier>.ext4
# as the admin image <tier> (`bhatti create --image docker`).
#
#   docker    docker.io (bookworm's: dockerd, containerd, runc), iptables,
#             ca-certificates; docker and containerd enabled at boot, the
#             user lohar in group docker
#   browser   chromium, chromium-driver, nodejs, npm, a small set of fonts
#   services  nginx-light and redis-server, both enabled at boot (the test
#             tier of lohar's systemd substitute; not offered to users)
#
# Host safety: maintainer scripts run in a chroot that shares the host's
# network namespace, so nothing they start may keep running. During the
# install /usr/sbin/policy-rc.d answers 101 (invoke-rc.d starts nothing), no
# /run/systemd/system exists (deb-systemd-invoke does nothing), /proc, /sys
# and /dev are not mounted, and afterwards any process whose root is the tree
# is reported, killed and fails the build. The base's `exit 0` policy is put
# back, so services installed later inside a running sandbox do start.
#
# Caching:
#   $CACHE/staging/tier-<tier>-<key>/ (+ .complete)  the tree; key over this
#       recipe (version and the tier's functions), the base tree's key and
#       the package list
#   <out> + <out>.stamp   the image; rebuilt when the tree, lohar's sha256 or
#                         the size changes (the base's scheme)
#   <out>.info            key=value: build time and sizes
set -euo pipefail

BHATTI_LOG_TAG=build-tier
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RECIPE_VERSION=1
GUEST_USER=lohar
SUITE=bookworm
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    cat <<USAGE
usage: $(basename "$0") --tier docker|browser|services --lohar <path-to-static-lohar> [--out <file>] [--size-mb N] [--force]

  --tier NAME    docker, browser or services
  --lohar PATH   static lohar binary (becomes /usr/local/bin/lohar)
  --out FILE     image path (default \$BHATTI_GUEST_CACHE/rootfs-<tier>.ext4)
  --size-mb N    image size in MiB, sparse (default: docker 6144, browser 6144,
                 services 4096)
  --force        reinstall the tier's packages and rebuild the image (the
                 base tree is reused)

environment:
  BHATTI_GUEST_CACHE     cache dir (default /var/cache/bhatti/guest; now: $BHATTI_GUEST_CACHE)
  BHATTI_DEBIAN_MIRROR   mirror for the base tree (see build-debian-rootfs.sh)
USAGE
}

TIER=""
LOHAR=""
OUT=""
SIZE_MB=""
FORCE=0
parse_args() {
    while (($#)); do
        case "$1" in
            --tier) TIER="${2:?--tier needs a name}"; shift ;;
            --lohar) LOHAR="${2:?--lohar needs a path}"; shift ;;
            --out) OUT="${2:?--out needs a path}"; shift ;;
            --size-mb) SIZE_MB="${2:?--size-mb needs a number}"; shift ;;
            --force) FORCE=1 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    [[ -n "$TIER" ]] || { usage >&2; die "--tier is required"; }
    [[ -n "$LOHAR" ]] || { usage >&2; die "--lohar is required"; }
    [[ -f "$LOHAR" && -x "$LOHAR" ]] || die "--lohar: not an executable file: $LOHAR"
    case "$TIER" in
        docker)
            PACKAGES="docker.io iptables ca-certificates"
            ENABLE="containerd.service docker.service"
            : "${SIZE_MB:=6144}" ;;
        browser)
            PACKAGES="chromium chromium-driver nodejs npm fonts-liberation fonts-dejavu-core"
            ENABLE=""
            : "${SIZE_MB:=6144}" ;;
        services)
            PACKAGES="nginx-light redis-server"
            ENABLE="nginx.service redis-server.service"
            : "${SIZE_MB:=4096}" ;;
        *) usage >&2; die "--tier: unknown tier: $TIER" ;;
    esac
    [[ "$SIZE_MB" =~ ^[0-9]+$ && "$SIZE_MB" -ge 256 ]] || die "--size-mb must be an integer >= 256"
    OUT="${OUT:-$BHATTI_GUEST_CACHE/rootfs-$TIER.ext4}"
}

check_tools() {
    require_cmds mke2fs:e2fsprogs chroot:coreutils umount:mount sha256sum:coreutils \
        flock:util-linux du:coreutils cp:coreutils
    [[ "$(id -u)" == 0 ]] || die "must run as root (chroot and apt-get need it)"
}

# --- per-tier steps (their text is part of the tree's key) -------------------

tier_docker() {
    # dockerd programs NAT and filtering through `iptables`. The guest
    # kernel has both back ends (scripts/guest/kernel.fragment: nf_tables
    # with nft_compat, and the legacy x_tables tables); we pin Debian's
    # default, iptables-nft, explicitly so that a later alternatives change
    # cannot flip it, and so docker's rules and `nft list ruleset` agree.
    in_root update-alternatives --set iptables /usr/sbin/iptables-nft
    in_root update-alternatives --set ip6tables /usr/sbin/ip6tables-nft
    # The sandbox user runs docker without sudo.
    in_root usermod -a -G docker "$GUEST_USER"
    # Debian's docker.service is socket-activated (`-H fd://`,
    # Requires=docker.socket); lohar's substitute has no socket activation,
    # so dockerd listens on its socket itself (docs/decisions.md,
    # "No socket activation"). The socket is root:docker 0660 either way.
    # The drop-in keeps Debian's command line and swaps only `-H fd://`.
    local unit="$ROOT/lib/systemd/system/docker.service" exec_start
    exec_start="$(grep -m1 '^ExecStart=' "$unit")" || die "no ExecStart= in $unit"
    [[ "$exec_start" == *" -H fd://"* ]] ||
        die "docker.service no longer uses -H fd:// ($exec_start): check the drop-in"
    exec_start="${exec_start/ -H fd:\/\// -H unix:///run/docker.sock}"
    mkdir -p "$ROOT/etc/systemd/system/docker.service.d"
    cat >"$ROOT/etc/systemd/system/docker.service.d/bhatti.conf" <<UNIT
# bhatti (scripts/guest/build-tier.sh): lohar has no socket activation, so
# dockerd opens /run/docker.sock itself instead of taking it from
# docker.socket (Debian's line, -H fd:// replaced).
[Unit]
Requires=

[Service]
ExecStart=
$exec_start
UNIT
    # runc picks the systemd cgroup driver when /run/systemd/system exists
    # (lohar makes it, for packages' scripts) and then needs systemd's D-Bus
    # API to make each container's scope. lohar is not systemd: containers
    # get plain cgroupfs cgroups under /sys/fs/cgroup/docker instead.
    mkdir -p "$ROOT/etc/docker"
    cat >"$ROOT/etc/docker/daemon.json" <<'JSON'
{
  "exec-opts": ["native.cgroupdriver=cgroupfs"]
}
JSON
}

tier_browser() {
    # Nothing beyond the packages: Chromium runs headless (no display
    # server in a guest) and the caller passes its flags.
    :
}

tier_services() {
    :
}

# --- the build ----------------------------------------------------------------

# Fails the build (after killing them) when processes started in the chroot
# are still running: a daemon left by a maintainer script would be running in
# the host's network namespace.
check_no_tree_procs() {
    local t="$1" pids p
    pids="$(tree_pids "$t")"
    [[ -z "$pids" ]] && return 0
    for p in $pids; do
        log "process left running in the chroot: pid $p: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)"
    done
    # shellcheck disable=SC2086  # a list of pids
    kill -9 $pids 2>/dev/null || true
    die "maintainer scripts left processes running in $t (killed); refusing the tree"
}

# Makes sure each unit in $ENABLE is linked from multi-user.target.wants
# (deb-systemd-helper normally did it in the postinst).
ensure_enabled() {
    local u wants="$ROOT/etc/systemd/system/multi-user.target.wants" f
    mkdir -p "$wants"
    for u in $ENABLE; do
        f=""
        for d in etc/systemd/system lib/systemd/system usr/lib/systemd/system; do
            [[ -f "$ROOT/$d/$u" ]] && { f="/$d/$u"; break; }
        done
        [[ -n "$f" ]] || die "$TIER: unit $u is not installed"
        if [[ -L "$wants/$u" ]]; then
            log "$u: enabled by its package"
        else
            ln -sfn "$f" "$wants/$u"
            log "$u: enabled here (its package did not)"
        fi
    done
}

build_tree() {
    local base="$1" tmp="$2" cache="$BHATTI_GUEST_CACHE" n0 n1
    ROOT="$tmp"
    remove_tree "$tmp"
    mkdir -p "$(dirname "$tmp")"
    # The base tree is copied under its own lock (shared), so a base rebuild
    # cannot replace it half-way through the copy.
    exec 8>"$cache/.rootfs-debian-$SUITE.lock"
    flock -s 8
    [[ -f "$base.complete" ]] || die "base tree vanished: $base"
    log "copying the base tree $(basename "$base")"
    cp -a --reflink=auto "$base" "$tmp"
    flock -u 8
    exec 8>&-

    # From here on a failure must not leave anything running.
    on_exit "check_tree_procs_on_exit '$tmp'"
    local policy resolv
    policy="$(cat "$ROOT/usr/sbin/policy-rc.d")"
    printf '#!/bin/sh\n# bhatti build-tier.sh: start nothing during the image build\nexit 101\n' \
        >"$ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    [[ ! -e "$ROOT/run/systemd/system" ]] ||
        die "base tree has /run/systemd/system: maintainer scripts would call systemctl"
    # Name resolution for apt: the host's resolver (same network namespace),
    # the base's placeholder put back afterwards.
    resolv="$(cat "$ROOT/etc/resolv.conf")"
    rm -f "$ROOT/etc/resolv.conf"
    cat -- /etc/resolv.conf >"$ROOT/etc/resolv.conf"

    n0="$(in_root dpkg-query -W -f='.\n' | wc -l)"
    log "apt-get update"
    in_root apt-get -q update >&2
    log "apt-get install --no-install-recommends $PACKAGES"
    # shellcheck disable=SC2086  # a word list
    # Use-Pty=0: no /dev/pts in the chroot (nothing is mounted into it).
    in_root apt-get -q -y --no-install-recommends -o Dpkg::Use-Pty=0 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        install $PACKAGES >&2
    n1="$(in_root dpkg-query -W -f='.\n' | wc -l)"
    PACKAGES_ADDED=$((n1 - n0))
    check_no_tree_procs "$tmp"

    "tier_$TIER"
    # The base enables e2fsprogs' e2scrub_reap.service (a boot-time oneshot
    # that removes stale LVM snapshots of e2scrub): a sandbox has no LVM, and
    # a tier boots its own services and nothing else.
    rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service"
    ensure_enabled
    log "enabled at boot (multi-user.target.wants): $(find "$ROOT/etc/systemd/system/multi-user.target.wants" -mindepth 1 -printf '%f ')"

    # Back to the base's state: services installed later, in a running
    # sandbox, may start (exit 0); lohar writes resolv.conf at boot.
    printf '%s\n' "$policy" >"$ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    rm -f "$ROOT/etc/resolv.conf"
    printf '%s\n' "$resolv" >"$ROOT/etc/resolv.conf"
    # Left by package scripts, and per-machine state.
    rm -rf "$ROOT/run/systemd"
    : >"$ROOT/etc/machine-id"
    # Shrink: package caches and lists are re-fetched by `apt-get update`.
    in_root apt-get clean
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log \
        "$ROOT"/var/log/apt/* "$ROOT"/var/cache/debconf/*-old "$ROOT"/root/.npm
    mkdir -p "$ROOT/var/lib/apt/lists/partial"

    check_no_tree_procs "$tmp"
    local m
    m="$(awk -v p="$(realpath "$tmp")/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts)"
    [[ -z "$m" ]] || die "something is mounted in the tree: $m"
}

# on_exit hook: whatever happened, nothing of the chroot keeps running.
check_tree_procs_on_exit() {
    local pids
    [[ -d "$1" ]] || return 0
    pids="$(tree_pids "$1")"
    [[ -z "$pids" ]] && return 0
    log "killing processes left in the chroot: $pids"
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
}

info_line() { printf '%s=%s\n' "$1" "$2"; }

main() {
    parse_args "$@"
    check_tools
    local t_start=$SECONDS cache="$BHATTI_GUEST_CACHE" base base_key key tree
    mkdir -p "$cache/staging" "$(dirname "$OUT")"

    # The base tree, built or reused (the lock is the base script's own).
    base="$("$HERE/build-debian-rootfs.sh" --tree-only --suite "$SUITE" | tail -n1)"
    [[ -d "$base" && -f "$base.complete" ]] || die "no base tree from build-debian-rootfs.sh: $base"
    base_key="$(basename "$base")"

    exec 9>"$cache/.rootfs-tier-$TIER.lock"
    flock 9

    key="$(
        {
            printf 'recipe=%s\ntier=%s\nbase=%s\npackages=%s\nenable=%s\n' \
                "$RECIPE_VERSION" "$TIER" "$base_key" "$PACKAGES" "$ENABLE"
            declare -f "tier_$TIER" build_tree ensure_enabled
        } | sha256sum | cut -c1-16
    )"
    tree="$cache/staging/tier-$TIER-$key"
    if ((FORCE)) || [[ ! -f "$tree.complete" || ! -d "$tree" ]]; then
        local tmp="$tree.tmp" t0=$SECONDS
        rm -f "$tree.complete"
        build_tree "$base" "$tmp"
        remove_tree "$tree"
        mv "$tmp" "$tree"
        printf 'build_seconds=%s\npackages_added=%s\n' "$((SECONDS - t0))" "$PACKAGES_ADDED" \
            >"$tree.complete"
        log "tree ready in $((SECONDS - t0)) s: $tree"
        local d
        for d in "$cache"/staging/tier-"$TIER"-*; do
            [[ "$d" == "$tree" || "$d" == "$tree.complete" ]] || remove_tree "$d"
        done
    fi

    pack_rootfs "$tree" "$key" "$LOHAR" "$OUT" "$SIZE_MB" "$FORCE"

    local info="$OUT.info"
    if ((PACK_BUILT)) || [[ ! -s "$info" ]]; then
        local tree_mb image_alloc_mb image_mb pack_s
        tree_mb="${PACK_USED_MB:-$(du -sm "$tree" | cut -f1)}"
        image_mb=$(($(stat -c %s "$OUT") >> 20))
        image_alloc_mb="$(du -m "$OUT" | cut -f1)"
        pack_s="$PACK_SECONDS"
        ((PACK_BUILT)) || pack_s=""
        {
            info_line tier "$TIER"
            info_line packages "$PACKAGES"
            info_line enabled "$ENABLE"
            info_line base_tree "$base_key"
            info_line tree_key "$key"
            # build_seconds: copy of the base tree + apt (the cached tree's);
            # pack_seconds: mke2fs.
            sed -n 's/^build_seconds=/tree_build_seconds=/p; s/^packages_added=/packages_added=/p' "$tree.complete"
            info_line pack_seconds "$pack_s"
            info_line base_tree_mb "$(du -sm "$base" | cut -f1)"
            info_line tree_mb "$tree_mb"
            info_line image_size_mb "$image_mb"
            info_line image_allocated_mb "$image_alloc_mb"
            info_line built_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        } >"$info.tmp"
        mv -f "$info.tmp" "$info"
    fi
    log "$TIER tier ($((SECONDS - t_start)) s this run):"
    sed 's/^/    /' "$info" >&2
    echo "$OUT"
}

main "$@"
