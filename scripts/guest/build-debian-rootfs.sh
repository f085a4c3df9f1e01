#!/usr/bin/env bash
# Build the `base` image, the daemon's default root filesystem where it is
# installed: Debian 12 from debootstrap (minbase) plus what agents and CI
# jobs expect (ca-certificates, curl, git, python3 with pip and venv,
# build-essential, iproute2, procps, locales, sudo …), user lohar (uid 1000)
# with passwordless sudo, /workspace, systemd pinned out (lohar is init),
# lohar as /usr/local/bin/lohar, packed into ext4 with `mke2fs -d` (no loop
# mount). docs/decisions.md ("Images: base and minimal") says what is in it.
#
# Downloads ~250 MB from the Debian mirror the first time; cached after.
#
# Caching:
#   $CACHE/staging/debian-<suite>-<key>/  the debootstrapped + customised tree,
#                                         keyed by suite, package list, mirror, recipe
#   <out> + <out>.stamp                   the image; rebuilt when lohar's
#                                         sha256, the tree or the size changes
set -euo pipefail

BHATTI_LOG_TAG=build-debian-rootfs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RECIPE_VERSION=2
GUEST_UID=1000
GUEST_GID=1000
GUEST_USER=lohar
GUEST_HOSTNAME=bhatti
INCLUDE=iproute2,ca-certificates,sudo,curl,procps,bash,less,nano,locales,git,openssh-client,xz-utils,unzip,python3,python3-pip,python3-venv,build-essential

usage() {
    cat <<USAGE
usage: $(basename "$0") --lohar <path-to-static-lohar> [--out <file>] [--suite bookworm] [--size-mb 4096] [--force]
       $(basename "$0") --tree-only [--suite bookworm] [--force]

  --lohar PATH   static lohar binary (becomes /usr/local/bin/lohar)
  --out FILE     image path (default \$BHATTI_GUEST_CACHE/rootfs-base.ext4)
  --suite NAME   Debian suite for debootstrap (default bookworm)
  --size-mb N    image size in MiB, sparse (default 4096)
  --force        re-run debootstrap and rebuild the image
  --tree-only    make sure the cached tree exists, print its path and stop
                 (no image, no lohar; what build-tier.sh builds on)

environment:
  BHATTI_GUEST_CACHE     cache dir (default /var/cache/bhatti/guest; now: $BHATTI_GUEST_CACHE)
  BHATTI_DEBIAN_MIRROR   mirror (default http://deb.debian.org/debian)
USAGE
}

LOHAR=""
OUT=""
SUITE=bookworm
SIZE_MB=4096
FORCE=0
TREE_ONLY=0
MIRROR="${BHATTI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
parse_args() {
    while (($#)); do
        case "$1" in
            --lohar) LOHAR="${2:?--lohar needs a path}"; shift ;;
            --out) OUT="${2:?--out needs a path}"; shift ;;
            --suite) SUITE="${2:?--suite needs a name}"; shift ;;
            --size-mb) SIZE_MB="${2:?--size-mb needs a number}"; shift ;;
            --force) FORCE=1 ;;
            --tree-only) TREE_ONLY=1 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    if ((!TREE_ONLY)); then
        [[ -n "$LOHAR" ]] || { usage >&2; die "--lohar is required"; }
        [[ -f "$LOHAR" && -x "$LOHAR" ]] || die "--lohar: not an executable file: $LOHAR"
    fi
    [[ "$SIZE_MB" =~ ^[0-9]+$ && "$SIZE_MB" -ge 256 ]] || die "--size-mb must be an integer >= 256"
    [[ "$SUITE" =~ ^[a-z]+$ ]] || die "--suite: unexpected name: $SUITE"
    OUT="${OUT:-$BHATTI_GUEST_CACHE/rootfs-base.ext4}"
}

check_tools() {
    require_cmds debootstrap:debootstrap mke2fs:e2fsprogs chroot:coreutils umount:mount \
        sha256sum:coreutils flock:util-linux du:coreutils
    [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]] ||
        die "missing Debian archive keyring (apt-get install debian-archive-keyring)"
    [[ "$(id -u)" == 0 ]] || die "must run as root (debootstrap and chroot need it)"
}

customise() {
    ROOT="$1"
    # Sandbox user: uid/gid 1000 (what lohar and the volume/chown logic
    # assume), passwordless sudo, fuse group for FUSE mounts (docs/guest.md,
    # "Guest images").
    in_root groupadd -f -g "$GUEST_GID" "$GUEST_USER"
    in_root groupadd -f fuse
    in_root useradd -m -u "$GUEST_UID" -g "$GUEST_GID" -G sudo,fuse -s /bin/bash "$GUEST_USER"
    in_root passwd -l "$GUEST_USER" >/dev/null
    echo "$GUEST_USER ALL=(ALL) NOPASSWD:ALL" >"$ROOT/etc/sudoers.d/90-$GUEST_USER"
    chmod 0440 "$ROOT/etc/sudoers.d/90-$GUEST_USER"
    echo user_allow_other >"$ROOT/etc/fuse.conf"

    # One UTF-8 locale, the one lohar exports (LANG=en_US.UTF-8).
    echo "en_US.UTF-8 UTF-8" >"$ROOT/etc/locale.gen"
    in_root locale-gen >/dev/null
    echo "LANG=en_US.UTF-8" >"$ROOT/etc/default/locale"
    # pip installs work without --break-system-packages: a sandbox is
    # disposable, and agents run `pip install` as they would anywhere
    # (python3 -m venv stays the tidy way).
    printf '[global]\nbreak-system-packages = true\n' >"$ROOT/etc/pip.conf"
    # apt with updates and security, like a stock install.
    cat >"$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://security.debian.org/debian-security $SUITE-security main
SOURCES

    mkdir -p "$ROOT/workspace"
    chown "$GUEST_UID:$GUEST_GID" "$ROOT/workspace"
    chmod 1777 "$ROOT/tmp"

    # lohar is the init and the systemd substitute: keep real systemd out.
    cat >"$ROOT/etc/apt/preferences.d/bhatti-no-systemd" <<'PIN'
Package: systemd systemd-sysv systemd-resolved
Pin: release *
Pin-Priority: -1
PIN
    # Maintainer scripts call invoke-rc.d/runlevel; without systemd these
    # shims keep package installs working (docs/guest.md, "Guest images").
    printf '#!/bin/sh\nexit 0\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
    printf '#!/bin/sh\necho "N 5"\n' >"$ROOT/usr/sbin/runlevel"
    chmod 0755 "$ROOT/usr/sbin/runlevel"

    echo "$GUEST_HOSTNAME" >"$ROOT/etc/hostname"
    cat >"$ROOT/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	$GUEST_HOSTNAME
::1		localhost ip6-localhost ip6-loopback
HOSTS
    # debootstrap copied the BUILD host's resolv.conf; lohar writes the real
    # one from the config drive at boot.
    rm -f "$ROOT/etc/resolv.conf"
    echo "nameserver 127.0.0.1" >"$ROOT/etc/resolv.conf"
    # Per-machine identity must not be baked into a shared image.
    : >"$ROOT/etc/machine-id"
    rm -f "$ROOT/var/lib/dbus/machine-id"

    # Shrink: package caches and lists are re-fetched by `apt-get update`.
    in_root apt-get clean
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log \
        "$ROOT"/var/cache/debconf/*-old
}

main() {
    parse_args "$@"
    check_tools

    local cache="$BHATTI_GUEST_CACHE" key tree
    mkdir -p "$cache/staging" "$(dirname "$OUT")"
    exec 9>"$cache/.rootfs-debian-$SUITE.lock"
    flock 9

    key="$(printf 'recipe=%s\nsuite=%s\ninclude=%s\nmirror=%s\n' \
        "$RECIPE_VERSION" "$SUITE" "$INCLUDE" "$MIRROR" | sha256sum | cut -c1-16)"
    tree="$cache/staging/debian-$SUITE-$key"
    # Completion marker lives beside the tree, not in it (it must not end up
    # in the image); the tree is built under .tmp and renamed.
    if ((FORCE)) || [[ ! -f "$tree.complete" || ! -d "$tree" ]]; then
        local tmp="$tree.tmp"
        remove_tree "$tmp"
        rm -f "$tree.complete"
        mkdir -p "$tmp"
        log "debootstrap --variant=minbase $SUITE from $MIRROR (~250 MB download)"
        local t0=$SECONDS
        debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp" "$MIRROR" ||
            die "debootstrap failed (see $tmp/debootstrap/debootstrap.log)"
        customise "$tmp"
        remove_tree "$tree"
        mv "$tmp" "$tree"
        touch "$tree.complete"
        log "tree ready in $((SECONDS - t0)) s: $tree"
        local d
        for d in "$cache"/staging/debian-"$SUITE"-*; do
            [[ "$d" == "$tree" || "$d" == "$tree.complete" ]] || remove_tree "$d"
        done
    fi

    # --tree-only (build-tier.sh): the tree is all the caller wants.
    if ((TREE_ONLY)); then
        echo "$tree"
        return 0
    fi

    # The tree is big, so lohar is put into the cached tree itself rather than
    # into a copy (we hold the lock, and the tree never holds any other lohar).
    pack_rootfs "$tree" "$key" "$LOHAR" "$OUT" "$SIZE_MB" "$FORCE"
    echo "$OUT"
}

main "$@"
