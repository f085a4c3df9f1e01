#!/usr/bin/env bash
# Builds target/debian/bhatti_<version>_amd64.deb with cargo-deb (installed
# at a pinned version into target/tools when missing): the release binary,
# the systemd unit, a default /etc/bhatti/config.yaml, and the guest kernel
# and minimal image from the guest cache (scripts/guest/ builds them).
#
#   scripts/build-deb.sh    prints the .deb's path on its last line
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
CARGO_DEB_VERSION=3.8.0
cache=${BHATTI_GUEST_CACHE:-/var/cache/bhatti/guest}

tools="$REPO/target/tools"
if ! "$tools/bin/cargo-deb" --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --root "$tools" >&2
fi
for f in vmlinux rootfs-minimal.ext4; do
    [[ -s $cache/$f ]] || { echo "build-deb: $cache/$f missing (scripts/guest/build-kernel.sh, build-rootfs.sh)" >&2; exit 1; }
done
mkdir -p target/deb-guest
cp --reflink=auto --sparse=always "$cache/vmlinux" "$cache/rootfs-minimal.ext4" target/deb-guest/
bash "$(dirname "$0")/web-shell.sh" || echo "no npm: the web shell will answer 501" >&2
cargo build --release -p bhatti >&2
PATH="$tools/bin:$PATH" cargo deb -p bhatti --no-build --no-strip -o target/debian/ >&2
ls -1t "$REPO"/target/debian/bhatti_*.deb | head -1
