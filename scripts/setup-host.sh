#!/usr/bin/env bash
# Installs what building and testing bhatti needs on a Debian 12 host, and nothing
# when it is all there already. Run as root. Idempotent.
#
#   QEMU 10 from bookworm-backports  (the microVM engine's VMM here; -M microvm)
#   kernel build deps + linux-source-6.1 (the guest kernel, scripts/guest)
#   busybox-static, bash-static, e2fsprogs (guest root filesystem, config drives)
#   iproute2, iptables (per-sandbox network namespaces)
#   debootstrap (the optional Debian guest image)
#   docker.io, curl (the Docker engine; dockerd is started by scripts/start-dockerd.sh)
#   python3-venv (schemathesis for the API contract suite, in a venv scripts/test.sh makes)
#   docker-registry, skopeo (the image suite: a registry on loopback, images pushed to it)
#   protobuf-compiler (protoc: crates/e2b generates the envd services at build time)
set -euo pipefail

PACKAGES=(
    build-essential bc bison flex libelf-dev libssl-dev dwarves linux-source-6.1
    busybox-static bash-static e2fsprogs iproute2 iptables debootstrap tmux file
    docker.io curl python3-venv docker-registry skopeo protobuf-compiler
    systemd
)
BACKPORTS_PACKAGES=(qemu-system-x86)
BACKPORTS_SOURCE=/etc/apt/sources.list.d/bookworm-backports.sources

log() { printf '[setup-host] %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-host.sh must run as root (it installs packages)" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}" "${BACKPORTS_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# QEMU must be 10.x (microvm + mapped-ram migration); bookworm's own is 7.2.
qemu_ok=0
if command -v qemu-system-x86_64 >/dev/null; then
    major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
    [[ ${major:-0} -ge 9 ]] && qemu_ok=1
fi

if [[ ${#missing[@]} -eq 0 && $qemu_ok -eq 1 ]]; then
    log "all packages present"
    exit 0
fi

if [[ ! -f $BACKPORTS_SOURCE ]]; then
    log "adding bookworm-backports"
    cat >"$BACKPORTS_SOURCE" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
apt-get update -q
log "installing: ${missing[*]:-} (QEMU from backports)"
apt-get install -y -q -t bookworm-backports "${BACKPORTS_PACKAGES[@]}"
apt-get install -y -q "${PACKAGES[@]}"
# The package's own registry service would listen on every interface; the
# tests start private ones on loopback.
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now docker-registry 2>/dev/null || true
fi
qemu-system-x86_64 --version | head -1
