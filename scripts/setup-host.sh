#!/usr/bin/env bash
# Installs what building and testing bhatti needs, and nothing when it is all
# there already. Run as root. Idempotent.
#
#   scripts/setup-host.sh           install what is missing
#   scripts/setup-host.sh --plan    print what it would do and exit (no root,
#                                   no changes; BHATTI_OS_RELEASE names another
#                                   os-release file, for the tests)
#
# Supported: Debian 12 (bookworm), Debian 13 (trixie), Ubuntu 24.04 (noble).
# Anything else is refused with the reason, before anything is changed.
#
#   QEMU >= 9 (the microVM engine's VMM here; -M microvm, mapped-ram migration):
#     bookworm-backports on Debian 12, the release's own on Debian 13; Ubuntu
#     24.04 ships 8.2, so there the QEMU engine is unavailable (Docker is the
#     default engine) unless a newer QEMU is installed by hand
#   kernel build deps + the distribution's kernel source (the guest kernel)
#   busybox-static, bash-static, e2fsprogs (guest root filesystem, config drives)
#   iproute2, iptables (per-sandbox network namespaces)
#   debootstrap (the Debian base image)
#   docker.io, unless a Docker (CE or docker.io) is already installed
#   python3-venv (the test tools' venvs), docker-registry + skopeo (image suite)
#   protobuf-compiler (protoc: crates/e2b generates the envd services)
#   systemd (systemd-analyze verifies the shipped unit)
#   chromium + chromium-driver (the web shell's browser test), pebble (the
#   ACME test server), npm when missing (the web shell's terminal)
#   a Rust toolchain at the version in rust-toolchain.toml, when cargo is
#   missing or older: through rustup (the distribution's package where there
#   is one, else rustup's installer)
set -euo pipefail
cd "$(dirname "$0")/.."

PLAN=0
[[ ${1:-} == --plan ]] && PLAN=1
OS_RELEASE=${BHATTI_OS_RELEASE:-/etc/os-release}
CARGO=${BHATTI_CARGO:-cargo}
DOCKERD=${BHATTI_DOCKERD:-dockerd}

log() { printf '[setup-host] %s\n' "$*"; }
refuse() {
    echo "setup-host.sh: $*" >&2
    echo "setup-host.sh: supported: Debian 12, Debian 13, Ubuntu 24.04" >&2
    exit 2
}

# --- which distribution ------------------------------------------------------
[[ -r $OS_RELEASE ]] || refuse "cannot read $OS_RELEASE: not a systemd-era Linux distribution"
ID=$(. "$OS_RELEASE" && echo "${ID:-}")
VERSION_ID=$(. "$OS_RELEASE" && echo "${VERSION_ID:-}")
CODENAME=$(. "$OS_RELEASE" && echo "${VERSION_CODENAME:-}")
QEMU_FROM=""          # a suite to take QEMU from, when not the release's own
QEMU_ENGINE=1         # 0: no QEMU >= 9 in this release's archive
case "$ID:$VERSION_ID" in
debian:12)
    KERNEL_SRC_PKG=linux-source-6.1
    QEMU_FROM=bookworm-backports
    ;;
debian:13)
    KERNEL_SRC_PKG=linux-source
    ;;
ubuntu:24.04)
    KERNEL_SRC_PKG=linux-source
    QEMU_ENGINE=0
    ;;
debian:*)
    refuse "Debian $VERSION_ID is not supported (its kernel, QEMU and Rust are too old or untested); use Debian 12 or 13"
    ;;
ubuntu:*)
    refuse "Ubuntu $VERSION_ID is not supported (only the 24.04 LTS is tested)"
    ;;
*)
    refuse "${ID:-this distribution} is not supported: the setup uses apt and Debian's package names"
    ;;
esac
log "distribution: $ID $VERSION_ID ($CODENAME)"

# --- the Rust toolchain --------------------------------------------------------
want_rust=$(sed -n 's/^channel *= *"\([0-9.]*\)".*/\1/p' rust-toolchain.toml)
[[ -n $want_rust ]] || refuse "rust-toolchain.toml names no channel"
have_rust=$("$CARGO" --version 2>/dev/null | sed -n 's/^cargo \([0-9.]*\).*/\1/p' || true)
# Version order, not string order: 1.100 is newer than 1.95.
newest=$(printf '%s\n%s\n' "$want_rust" "${have_rust:-0}" | sort -V | tail -1)
if [[ -n $have_rust && $newest == "$have_rust" ]]; then
    RUST_ACTION="present (cargo $have_rust; rust-toolchain.toml asks for $want_rust)"
elif command -v rustup >/dev/null; then
    RUST_ACTION="rustup toolchain install $want_rust"
elif [[ $ID:$VERSION_ID == debian:13 || $ID == ubuntu ]]; then
    RUST_ACTION="apt-get install rustup, then rustup toolchain install $want_rust"
else
    RUST_ACTION="rustup's installer (https://sh.rustup.rs) with --default-toolchain $want_rust"
fi
log "rust: $RUST_ACTION"

# --- Docker ----------------------------------------------------------------------
DOCKER_PKG=docker.io
if command -v "$DOCKERD" >/dev/null 2>&1; then
    # Docker CE (docker-ce) or Debian's docker.io: either serves; replacing
    # one with the other would break the host's own containers.
    DOCKER_PKG=""
    log "docker: using the installed $(command -v "$DOCKERD")"
else
    log "docker: installing docker.io"
fi

# --- packages ----------------------------------------------------------------------
PACKAGES=(
    build-essential bc bison flex libelf-dev libssl-dev dwarves "$KERNEL_SRC_PKG"
    busybox-static bash-static e2fsprogs iproute2 iptables debootstrap tmux file
    curl python3-venv docker-registry skopeo protobuf-compiler systemd
    chromium chromium-driver pebble
)
# npm fetches the web shell's terminal (scripts/web-shell.sh); a Node.js
# from elsewhere (NodeSource) brings its own, which Debian's would conflict with.
command -v npm >/dev/null || PACKAGES+=(npm)
[[ -n $DOCKER_PKG ]] && PACKAGES+=("$DOCKER_PKG")
if [[ $QEMU_ENGINE == 1 ]]; then
    log "qemu: qemu-system-x86 from ${QEMU_FROM:-$CODENAME}"
else
    log "qemu: $CODENAME has no QEMU >= 9: the QEMU engine is unavailable (the Docker engine is the default); install QEMU 9+ by hand to use it"
fi
log "kernel source: $KERNEL_SRC_PKG"
log "packages: ${PACKAGES[*]}"

if [[ $PLAN == 1 ]]; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-host.sh must run as root (it installs packages)" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
qemu_ok=1
if [[ $QEMU_ENGINE == 1 ]]; then
    qemu_ok=0
    if command -v qemu-system-x86_64 >/dev/null; then
        major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
        [[ ${major:-0} -ge 9 ]] && qemu_ok=1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
if [[ ${#missing[@]} -gt 0 || $qemu_ok -eq 0 ]]; then
    if [[ -n $QEMU_FROM ]]; then
        source_file=/etc/apt/sources.list.d/$QEMU_FROM.sources
        if ! grep -rqs "$QEMU_FROM" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            log "adding $QEMU_FROM"
            cat >"$source_file" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $QEMU_FROM
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        fi
    fi
    log "apt-get update"
    apt-get update -q
    if [[ $qemu_ok -eq 0 ]]; then
        log "installing QEMU${QEMU_FROM:+ from $QEMU_FROM}"
        apt-get install -y -q ${QEMU_FROM:+-t "$QEMU_FROM"} qemu-system-x86
    fi
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing: ${missing[*]}"
        apt-get install -y -q "${PACKAGES[@]}"
    fi
    # The package's own registry service would listen on every interface;
    # the tests start private ones on loopback.
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        systemctl disable --now docker-registry 2>/dev/null || true
    fi
else
    log "all packages present"
fi

case $RUST_ACTION in
present*) ;;
"rustup toolchain install"*)
    rustup toolchain install "$want_rust" --profile minimal -c rustfmt -c clippy
    ;;
"apt-get install rustup"*)
    apt-get install -y -q rustup
    rustup toolchain install "$want_rust" --profile minimal -c rustfmt -c clippy
    ;;
*)
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --default-toolchain "$want_rust" -c rustfmt -c clippy
    log "cargo is in ~/.cargo/bin: open a new shell, or source ~/.cargo/env"
    ;;
esac
if [[ $QEMU_ENGINE == 1 ]]; then
    qemu-system-x86_64 --version | head -1
fi
