#!/usr/bin/env bash
# Starts dockerd in the background if it is not already answering, waits up to
# 60 s for its socket, and prints the storage driver in use.
#
# Installs nothing: Docker comes from Debian's `docker.io` package
# (`apt-get install -y docker.io`). Idempotent: a running dockerd is left alone.
#
# The storage driver is overlay2 where the kernel and backing filesystem allow
# it; otherwise (overlay on overlay, some CI sandboxes) it falls back to vfs.
# Override with DOCKERD_STORAGE_DRIVER=<driver>. Log: DOCKERD_LOG
# (default /var/log/bhatti-dockerd.log).
#
# Networks come from 172.16.0.0/12 in /24s (DOCKERD_ADDRESS_POOL overrides):
# the Docker engine makes one bridge per owner, and Docker's default pools
# hold only about 30 networks.
set -euo pipefail

SOCK=/var/run/docker.sock
LOG=${DOCKERD_LOG:-/var/log/bhatti-dockerd.log}
WAIT=${DOCKERD_WAIT_SECS:-60}
POOL=${DOCKERD_ADDRESS_POOL:-base=172.16.0.0/12,size=24}

die() { echo "start-dockerd: $*" >&2; exit 1; }

command -v dockerd >/dev/null || die "dockerd not found (apt-get install -y docker.io)"
[ "$(id -u)" = 0 ] || die "must run as root"

ping_docker() {
    # dockerd answers GET /_ping with OK.
    [ -S "$SOCK" ] && curl -fsS --max-time 2 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1
}

driver() {
    curl -fsS --max-time 5 --unix-socket "$SOCK" http://localhost/info 2>/dev/null |
        sed -n 's/.*"Driver":"\([^"]*\)".*/\1/p' | head -n1
}

start() {
    local drv=$1
    echo "start-dockerd: starting dockerd (storage driver ${drv}), log ${LOG}" >&2
    # setsid: dockerd survives the caller's shell and job control.
    setsid dockerd --storage-driver="$drv" --host="unix://$SOCK" \
        --default-address-pool="$POOL" \
        >>"$LOG" 2>&1 </dev/null &
    local pid=$!
    local i
    for ((i = 0; i < WAIT * 4; i++)); do
        if ping_docker; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.25
    done
    kill "$pid" 2>/dev/null || true
    return 1
}

if ! ping_docker; then
    if pgrep -x dockerd >/dev/null; then
        # Another dockerd is starting (or hung): wait for it rather than race it.
        for ((i = 0; i < WAIT * 4; i++)); do ping_docker && break; sleep 0.25; done
        ping_docker || die "a dockerd process exists but $SOCK does not answer (see $LOG)"
    elif [ -n "${DOCKERD_STORAGE_DRIVER:-}" ]; then
        start "$DOCKERD_STORAGE_DRIVER" || die "dockerd did not come up (see $LOG)"
    else
        if ! start overlay2; then
            echo "start-dockerd: overlay2 failed; retrying with vfs" >&2
            sleep 1
            start vfs || die "dockerd did not come up with overlay2 or vfs (see $LOG)"
        fi
    fi
fi
echo "dockerd ready on $SOCK, storage driver: $(driver)"
