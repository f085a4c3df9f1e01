#!/usr/bin/env bash
# From a fresh Debian 12 machine to a command running in a microVM sandbox:
# installs packages, builds everything, builds the guest kernel (cached) and the
# minimal image, then creates a sandbox, runs a command in it, and destroys it.
# Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-host.sh
echo "==> building (release)"
cargo build --release -p bhatti-engine --example sandbox
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p lohar --target x86_64-unknown-linux-gnu
echo "==> guest kernel (about 8 minutes the first time, then cached) and image"
scripts/guest/build-kernel.sh
cache=${BHATTI_GUEST_CACHE:-/var/cache/bhatti/guest}
scripts/guest/build-rootfs.sh --lohar target/x86_64-unknown-linux-gnu/release/lohar \
    --out "$cache/rootfs-minimal.ext4"

echo "==> creating a sandbox and running a command in it"
BHATTI_GUEST_KERNEL="$cache/vmlinux" BHATTI_GUEST_ROOTFS="$cache/rootfs-minimal.ext4" \
    target/release/examples/sandbox "$@"

cat <<'NEXT'

Next:
  sudo target/release/examples/sandbox -- sh -c 'echo hello from $(hostname)'
  sudo bash scripts/test.sh        # the whole test suite
  cargo bench -p lohar --bench agent; sudo cargo bench -p bhatti-engine --bench microvm
NEXT
