#!/usr/bin/env bash
# Builds the Docker engine's default sandbox image locally (Docker Hub is not
# needed): a busybox + bash root filesystem with lohar as the entrypoint
# (`lohar container`), imported with `docker import`.
#
# The base tree is the one scripts/guest/build-rootfs.sh caches
# ($BHATTI_GUEST_CACHE/staging/minimal-*), so the container and the microVM
# images share their userland; without it a tree is built here from
# busybox-static (+ bash-static when installed), with the same accounts
# (root, lohar uid/gid 1000) and a /workspace owned by 1000.
#
# Idempotent: the image carries the label bhatti.lohar-sha256 (and
# bhatti.base); when both match, nothing is rebuilt.
set -euo pipefail

# shellcheck disable=SC2034  # read by guest/lib.sh
BHATTI_LOG_TAG=docker-image
# shellcheck source-path=SCRIPTDIR source=guest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/guest/lib.sh"

RECIPE_VERSION=1
TAG=bhatti/minimal:latest
LOHAR=""
FORCE=0

usage() {
    cat <<USAGE
usage: $(basename "$0") --lohar <static lohar> [--tag NAME:TAG] [--force]

Builds (or keeps, if current) the Docker sandbox image NAME:TAG
(default $TAG) with lohar at /usr/local/bin/lohar as its entrypoint.
USAGE
}

while (($#)); do
    case "$1" in
        --lohar) LOHAR="${2:?--lohar needs a path}"; shift ;;
        --tag) TAG="${2:?--tag needs a name}"; shift ;;
        --force) FORCE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
[[ -n "$LOHAR" ]] || { usage >&2; die "--lohar is required"; }
[[ -f "$LOHAR" && -x "$LOHAR" ]] || die "--lohar: not an executable file: $LOHAR"
require_cmds docker:docker.io tar:tar sha256sum:coreutils readelf:binutils
[[ "$(id -u)" == 0 ]] || die "must run as root (chown 1000 in the tree, docker socket)"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "dockerd is not reachable (scripts/start-dockerd.sh)"
if readelf -l "$LOHAR" 2>/dev/null | grep -q 'Requesting program interpreter'; then
    die "$LOHAR is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static'"
fi

# A fallback base tree when build-rootfs.sh's cache is absent.
own_tree() {
    local t="$1" applet
    if [[ ! -x /bin/busybox ]] || readelf -l /bin/busybox | grep -q 'program interpreter'; then
        die "static busybox needed (apt-get install busybox-static)"
    fi
    (cd "$t" && mkdir -p bin sbin usr/bin usr/sbin usr/local/bin usr/local/sbin etc \
        proc sys dev tmp var/tmp var/log run root home/lohar workspace)
    chmod 1777 "$t/tmp" "$t/var/tmp"
    chmod 0700 "$t/root"
    chown 1000:1000 "$t/home/lohar" "$t/workspace"
    install -m 0755 /bin/busybox "$t/bin/busybox"
    while IFS= read -r applet; do
        case "$applet" in sbin/init|linuxrc|bin/bash) continue ;; esac
        [[ -e "$t/$applet" || -L "$t/$applet" ]] || ln -s /bin/busybox "$t/$applet"
    done < <(/bin/busybox --list-full)
    if [[ -x /bin/bash-static ]]; then
        install -m 0755 /bin/bash-static "$t/bin/bash"
    else
        ln -s /bin/busybox "$t/bin/bash"
    fi
    printf 'root:x:0:0:root:/root:/bin/sh\nlohar:x:1000:1000:lohar:/home/lohar:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$t/etc/passwd"
    printf 'root:x:0:\ntty:x:5:\nusers:x:100:lohar\nlohar:x:1000:\nnogroup:x:65534:\n' >"$t/etc/group"
    printf 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' >"$t/etc/profile"
}

base=""
for d in "$BHATTI_GUEST_CACHE"/staging/minimal-*; do
    [[ -d "$d" && "$d" != *.tmp.* ]] && base="$d"
done
base_key="${base:+$(basename "$base")}"
base_key="recipe=$RECIPE_VERSION ${base_key:-own-busybox-$(deb_version busybox-static)}"
lohar_sha="$(sha256_of_file "$LOHAR")"

if ((!FORCE)); then
    have_sha="$(docker image inspect -f '{{index .Config.Labels "bhatti.lohar-sha256"}}' "$TAG" 2>/dev/null || true)"
    have_base="$(docker image inspect -f '{{index .Config.Labels "bhatti.base"}}' "$TAG" 2>/dev/null || true)"
    if [[ "$have_sha" == "$lohar_sha" && "$have_base" == "$base_key" ]]; then
        log "$TAG is current (lohar $lohar_sha)"
        exit 0
    fi
fi

tree="$(mktemp -d /tmp/bhatti-docker-image.XXXXXX)"
trap 'rm -rf "$tree"' EXIT
if [[ -n "$base" ]]; then
    log "base tree $base"
    cp -a "$base/." "$tree/"
    # Docker provides /dev; the VM image's static nodes are not wanted.
    rm -rf "${tree:?}/dev"
    mkdir -p "$tree/dev"
else
    log "no cached base tree; building one from busybox-static"
    own_tree "$tree"
fi
mkdir -p "$tree/usr/local/bin" "$tree/run/bhatti" "$tree/workspace"
chown 1000:1000 "$tree/workspace"
chmod 0700 "$tree/run/bhatti"
install -m 0755 "$LOHAR" "$tree/usr/local/bin/lohar"

log "importing $TAG (lohar $lohar_sha)"
tar --numeric-owner -C "$tree" -c . | docker import \
    --change 'ENTRYPOINT ["/usr/local/bin/lohar","container"]' \
    --change 'WORKDIR /' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL bhatti.lohar-sha256=$lohar_sha" \
    --change "LABEL bhatti.base=\"$base_key\"" \
    --change 'LABEL bhatti.image=minimal' \
    - "$TAG" >/dev/null
log "built $TAG"
