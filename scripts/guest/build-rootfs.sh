#!/usr/bin/env bash
# Build the `minimal` guest root filesystem: busybox (static) + bash (static)
# + lohar as /usr/local/bin/lohar, as an ext4 image made with `mke2fs -d`
# (no loop mount, so it works in containers and without extra privileges
# beyond chown/mknod in the staging tree).
#
# Caching:
#   $CACHE/staging/minimal-<key>/   the base tree (everything except lohar),
#                                    keyed by the busybox/bash package versions
#   <out> + <out>.stamp              the image; rebuilt when lohar's sha256,
#                                    the base tree or the size changes
set -euo pipefail

BHATTI_LOG_TAG=build-rootfs
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bump when the base tree recipe changes.
RECIPE_VERSION=1
GUEST_UID=1000
GUEST_GID=1000
GUEST_USER=lohar
GUEST_HOSTNAME=bhatti

usage() {
    cat <<USAGE
usage: $(basename "$0") --lohar <path-to-static-lohar> [--out <file>] [--size-mb N] [--force]

Builds the 'minimal' (busybox) guest rootfs as an ext4 image.

  --lohar PATH   static lohar binary (or any executable: it becomes /usr/local/bin/lohar)
  --out FILE     image path (default \$BHATTI_GUEST_CACHE/rootfs-minimal.ext4)
  --size-mb N    image size in MiB, sparse (default 256)
  --force        rebuild base tree and image even if cached

environment:
  BHATTI_GUEST_CACHE  cache dir (default /var/cache/bhatti/guest; now: $BHATTI_GUEST_CACHE)
USAGE
}

LOHAR=""
OUT=""
SIZE_MB=256
FORCE=0
parse_args() {
    while (($#)); do
        case "$1" in
            --lohar) LOHAR="${2:?--lohar needs a path}"; shift ;;
            --out) OUT="${2:?--out needs a path}"; shift ;;
            --size-mb) SIZE_MB="${2:?--size-mb needs a number}"; shift ;;
            --force) FORCE=1 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    [[ -n "$LOHAR" ]] || { usage >&2; die "--lohar is required"; }
    [[ -f "$LOHAR" && -x "$LOHAR" ]] || die "--lohar: not an executable file: $LOHAR"
    [[ "$SIZE_MB" =~ ^[0-9]+$ && "$SIZE_MB" -ge 16 ]] || die "--size-mb must be an integer >= 16"
    OUT="${OUT:-$BHATTI_GUEST_CACHE/rootfs-minimal.ext4}"
}

check_tools() {
    require_cmds mke2fs:e2fsprogs sha256sum:coreutils dpkg-query:dpkg flock:util-linux \
        mknod:coreutils readelf:binutils
    # Debian's dynamic `busybox` package also ships /bin/busybox; only the
    # static one runs in an image without a libc.
    [[ -n "$(deb_version busybox-static)" && -x /bin/busybox ]] ||
        die "busybox-static is not installed (apt-get install busybox-static)"
    is_static /bin/busybox || die "/bin/busybox is dynamically linked (apt-get install busybox-static)"
    [[ "$(id -u)" == 0 ]] || die "must run as root: the staging tree needs chown 1000:1000 and device nodes"
}

is_static() { ! readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; }

# bash from Debian's bash-static if present; otherwise /bin/bash becomes a
# symlink to busybox sh so that `#!/bin/bash` scripts at least start.
bash_source() {
    if [[ -n "$(deb_version bash-static)" && -x /bin/bash-static ]] && is_static /bin/bash-static; then
        echo /bin/bash-static
    fi
}

write_etc() {
    local root="$1"
    # Fixed, small account database: root, the sandbox user (uid/gid 1000,
    # the uid every lohar code path assumes), and the usual system groups
    # that devpts/tty handling expects.
    cat >"$root/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/bin/sh
$GUEST_USER:x:$GUEST_UID:$GUEST_GID:$GUEST_USER:/home/$GUEST_USER:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
    cat >"$root/etc/group" <<GROUP
root:x:0:
tty:x:5:
users:x:100:$GUEST_USER
$GUEST_USER:x:$GUEST_GID:
nogroup:x:65534:
GROUP
    # Passwords locked: access is only through lohar's authenticated protocol.
    cat >"$root/etc/shadow" <<SHADOW
root:*:19000:0:99999:7:::
$GUEST_USER:!:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
SHADOW
    chmod 0640 "$root/etc/shadow"
    echo "$GUEST_HOSTNAME" >"$root/etc/hostname"
    cat >"$root/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	$GUEST_HOSTNAME
::1		localhost ip6-localhost ip6-loopback
HOSTS
    # Placeholder: lohar rewrites DNS from the config drive at boot.
    echo "nameserver 127.0.0.1" >"$root/etc/resolv.conf"
    cat >"$root/etc/profile" <<'PROFILE'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PROFILE
    cat >"$root/etc/os-release" <<OSREL
NAME="bhatti minimal"
ID=bhatti-minimal
PRETTY_NAME="bhatti minimal (busybox)"
VERSION_ID=$RECIPE_VERSION
OSREL
    echo "/bin/sh" >"$root/etc/shells"
    [[ -e "$root/bin/bash" ]] && echo "/bin/bash" >>"$root/etc/shells"
    return 0
}

# Build the base tree into a temp dir and rename it into place, so a killed
# run never leaves a half-populated tree that looks cached.
build_base_tree() {
    local dest="$1" tmp="$1.tmp.$$" bash_bin applet
    rm -rf "$tmp"
    mkdir -p "$tmp"
    # Directories the kernel/lohar mount over or write to at boot.
    (cd "$tmp" && mkdir -p bin sbin usr/bin usr/sbin usr/local/bin usr/local/sbin etc \
        proc sys dev/pts tmp var/tmp var/log run root mnt home/"$GUEST_USER" workspace)
    chmod 1777 "$tmp/tmp" "$tmp/var/tmp"
    chmod 0700 "$tmp/root"
    chown "$GUEST_UID:$GUEST_GID" "$tmp/home/$GUEST_USER" "$tmp/workspace"
    # /dev is normally devtmpfs (CONFIG_DEVTMPFS_MOUNT), but the kernel opens
    # /dev/console for init's stdio before anything is mounted when that is
    # off; these two nodes make that case still work.
    mknod -m 0600 "$tmp/dev/console" c 5 1
    mknod -m 0666 "$tmp/dev/null" c 1 3

    install -m 0755 /bin/busybox "$tmp/bin/busybox"
    # One absolute symlink per applet at its canonical path. `busybox
    # --install` is avoided: without a DIR it writes into the HOST's /bin.
    # `init`/`linuxrc` are left out on purpose: if init= is wrong the kernel
    # must fail loudly, not fall back to busybox init.
    while IFS= read -r applet; do
        case "$applet" in
            sbin/init|linuxrc|bin/bash) continue ;;
        esac
        [[ -e "$tmp/$applet" || -L "$tmp/$applet" ]] && continue
        ln -s /bin/busybox "$tmp/$applet"
    done < <(/bin/busybox --list-full)

    bash_bin="$(bash_source)"
    if [[ -n "$bash_bin" ]]; then
        install -m 0755 "$bash_bin" "$tmp/bin/bash"
    else
        log "WARNING: bash-static not installed (apt-get install bash-static); /bin/bash -> busybox sh"
        ln -s /bin/busybox "$tmp/bin/bash"
    fi
    write_etc "$tmp"
    rm -rf "$dest"
    mv "$tmp" "$dest"
}

main() {
    parse_args "$@"
    check_tools

    local cache="$BHATTI_GUEST_CACHE" base_key base lohar_sha img_key stamp bash_bin
    mkdir -p "$cache/staging" "$(dirname "$OUT")"
    exec 9>"$cache/.rootfs-minimal.lock"
    flock 9

    bash_bin="$(bash_source)"
    base_key="$(printf 'recipe=%s\nbusybox=%s\nbash=%s\n' "$RECIPE_VERSION" \
        "$(deb_version busybox-static)" "${bash_bin:+$(deb_version bash-static)}" |
        sha256sum | cut -c1-16)"
    base="$cache/staging/minimal-$base_key"
    if ((FORCE)) || [[ ! -d "$base" ]]; then
        log "building base tree $base (busybox-static $(deb_version busybox-static), bash-static ${bash_bin:+$(deb_version bash-static)}${bash_bin:-not installed})"
        build_base_tree "$base"
        # Trees for other keys are stale.
        local d
        for d in "$cache"/staging/minimal-*; do
            [[ "$d" == "$base" || ! -d "$d" ]] || rm -rf "$d"
        done
    fi

    lohar_sha="$(sha256_of_file "$LOHAR")"
    img_key="base=$base_key lohar=$lohar_sha size=${SIZE_MB}M"
    stamp="$OUT.stamp"
    if ((!FORCE)) && [[ -s "$OUT" && -f "$stamp" && "$(cat "$stamp")" == "$img_key" ]]; then
        log "up to date: $OUT"
        echo "$OUT"
        return 0
    fi

    # Per-image staging = base tree + lohar; the base stays pristine.
    # Globals, not locals: the EXIT trap runs after main's scope is gone.
    STAGE="$OUT.staging.$$" TMPIMG="$OUT.tmp.$$"
    trap 'rm -rf "$STAGE" "$TMPIMG"' EXIT
    local stage="$STAGE" tmpimg="$TMPIMG"
    rm -rf "$stage"
    cp -a "$base" "$stage"
    install -m 0755 -o 0 -g 0 "$LOHAR" "$stage/usr/local/bin/lohar"
    # The names a systemd substitute in lohar would answer to; lohar does not
    # implement one yet (docs/guest.md, "Guest images").
    ln -sf lohar "$stage/usr/local/bin/systemctl"
    ln -sf lohar "$stage/usr/local/bin/journalctl"

    rm -f "$tmpimg"
    # -d populates the fs from the tree (owners, modes, device nodes kept);
    # mke2fs creates the file sparse at the given size.
    # (its chatter goes to stderr: stdout carries only the image path)
    mke2fs -t ext4 -d "$stage" -F -q -L bhatti-root "$tmpimg" "${SIZE_MB}M" >&2
    rm -f "$stamp"
    mv -f "$tmpimg" "$OUT"
    echo "$img_key" >"$stamp"
    log "built $OUT (${SIZE_MB} MiB, lohar sha256 ${lohar_sha:0:12})"
    echo "$OUT"
}

main "$@"
