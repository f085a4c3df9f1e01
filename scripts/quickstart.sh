#!/usr/bin/env bash
# From a fresh Debian 12 machine to a command running in a sandbox:
# installs packages, builds everything, builds the guest kernel (cached), the
# minimal image and the `base` image (Debian with python3, git, a compiler;
# the default for new sandboxes), starts the daemon (`bhatti serve`, default engine for this
# host) with a first user, creates a sandbox, runs a command in it, and prints
# what to try next. Run as root. Re-running it reuses what is already there.
#
#   bash scripts/quickstart.sh [command…]  (as root)     (default: uname -a; id; python3 -c 'print(1)')
#
# The API listens on 127.0.0.1:8080; another port (when 8080 is taken):
#   BHATTI_LISTEN=127.0.0.1:9090 bash scripts/quickstart.sh
# Image tiers as well (Debian's docker.io, or chromium + node, on the base;
# `bhatti create --image docker`), built by scripts/guest/build-tier.sh:
#   BHATTI_TIERS="docker browser" bash scripts/quickstart.sh
# Members of the `bhatti` group (the sudo user is added) use the CLI without
# root through /run/bhatti/api.sock.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
DATA=${BHATTI_DATA_DIR:-/var/lib/bhatti}
SOCK="$DATA/api.sock"
BHATTI="$REPO/target/release/bhatti"
LOG=${BHATTI_LOG:-/var/log/bhatti.log}
LISTEN=${BHATTI_LISTEN:-127.0.0.1:8080}

bash scripts/setup-host.sh
echo "==> building (release)"
bash "$(dirname "$0")/web-shell.sh" || echo "no npm: the web shell will answer 501" >&2
cargo build --release -p bhatti
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p lohar --target x86_64-unknown-linux-gnu
LOHAR="$REPO/target/x86_64-unknown-linux-gnu/release/lohar"
echo "==> guest kernel (about 8 minutes the first time, then cached) and image"
scripts/guest/build-kernel.sh
cache=${BHATTI_GUEST_CACHE:-/var/cache/bhatti/guest}
scripts/guest/build-rootfs.sh --lohar "$LOHAR" --out "$cache/rootfs-minimal.ext4"
echo "==> base image (Debian 12 + python3, git, build-essential; about a minute the first time)"
scripts/guest/build-debian-rootfs.sh --lohar "$LOHAR" --out "$cache/rootfs-base.ext4"
# Installed in the data dir, rootfs-<name>.ext4 is the admin image <name>
# (registered when the daemon starts); `base` is the default.
install_image() {
    local f="rootfs-$1.ext4"
    mkdir -p "$DATA/images"
    if ! cmp -s "$cache/$f.stamp" "$DATA/images/$f.stamp" 2>/dev/null; then
        cp --reflink=auto --sparse=always "$cache/$f" "$DATA/images/.$f.tmp"
        mv -f "$DATA/images/.$f.tmp" "$DATA/images/$f"
        cp "$cache/$f.stamp" "$DATA/images/$f.stamp"
    fi
}
install_image base
for tier in ${BHATTI_TIERS:-}; do
    echo "==> image tier $tier (Debian packages on the base image; a minute or two the first time)"
    scripts/guest/build-tier.sh --tier "$tier" --lohar "$LOHAR" --out "$cache/rootfs-$tier.ext4"
    install_image "$tier"
done
install -m 0755 "$BHATTI" /usr/local/bin/bhatti

# The CLI without root: the daemon serves a group socket for `bhatti`.
if ! getent group bhatti >/dev/null; then
    groupadd --system bhatti
fi
if [[ -n ${SUDO_USER:-} && $SUDO_USER != root ]] && ! id -nG "$SUDO_USER" | grep -qw bhatti; then
    usermod -aG bhatti "$SUDO_USER"
    echo "==> $SUDO_USER joined the group bhatti (log in again, or run newgrp bhatti, to use bhatti without sudo)"
fi

health() { curl -sf --unix-socket "$SOCK" http://localhost/health >/dev/null 2>&1; }
if health; then
    echo "==> a daemon is already serving on $SOCK (restart it to pick up a new build: kill it and re-run)"
else
    echo "==> starting the daemon: bhatti serve --data-dir $DATA --listen $LISTEN (log: $LOG)"
    BHATTI_GUEST_KERNEL="$cache/vmlinux" BHATTI_GUEST_ROOTFS="$cache/rootfs-minimal.ext4" \
        nohup "$BHATTI" serve --data-dir "$DATA" --listen "$LISTEN" >>"$LOG" 2>&1 &
    for _ in $(seq 1 100); do health && break; sleep 0.1; done
    health || { echo "the daemon did not come up; last log lines:" >&2; tail -20 "$LOG" >&2; exit 1; }
fi
grep -m1 '"engine selected"' "$LOG" 2>/dev/null | sed 's/.*"engine":"\([a-z]*\)".*"reason":"\([^"]*\)".*/    engine: \1 (\2)/' || true

# A first user, and the CLI configured for it (~/.bhatti/config.yaml).
if ! "$BHATTI" --data-dir "$DATA" list >/dev/null 2>&1; then
    if "$BHATTI" --data-dir "$DATA" --json user list | grep -q '"name": *"admin"'; then
        key=$("$BHATTI" --data-dir "$DATA" --json user rotate-key admin | sed -n 's/.*"api_key": *"\([^"]*\)".*/\1/p')
    else
        key=$("$BHATTI" --data-dir "$DATA" --json user create --name admin --max-sandboxes 50 | sed -n 's/.*"api_key": *"\([^"]*\)".*/\1/p')
    fi
    # The group socket when this is the default data dir, so the sudo
    # user's saved config works without sudo too.
    url="unix://$SOCK"
    [[ $DATA == /var/lib/bhatti && -S /run/bhatti/api.sock ]] && url=unix:///run/bhatti/api.sock
    "$BHATTI" setup --url "$url" --token "$key" >/dev/null
    echo "==> user admin created; its key is in ~/.bhatti/config.yaml"
fi

echo "==> creating a sandbox and running a command in it"
"$BHATTI" create --name quickstart --memory 512
if [[ $# -gt 0 ]]; then
    "$BHATTI" exec quickstart -- "$@"
else
    "$BHATTI" exec quickstart -- sh -c "uname -a; id; python3 -c 'print(1)'"
fi

cat <<'NEXT'

It works. Try next:
  bhatti ls                                   # your sandboxes
  bhatti exec quickstart -- ls -la /workspace
  bhatti exec quickstart -- sh -c 'sudo apt-get update && sudo apt-get install -y jq'   # a real Debian
  bhatti image pull python:3.12 --name py && bhatti create --name py --image py   # any OCI image
  bhatti shell quickstart                     # interactive; Ctrl+\ detaches, run again to reattach
  echo hi | bhatti file write quickstart /workspace/hi.txt && bhatti file read quickstart /workspace/hi.txt
  bhatti stop quickstart && bhatti start quickstart    # snapshot to disk and back
  bhatti snapshot create quickstart --name snap1 && bhatti create --name copy --from quickstart
  bhatti destroy quickstart -y
  bash .ci/run                                # the whole test suite
NEXT
