#!/usr/bin/env bash
# A clean Debian 12 root filesystem for the package test (crates/bhatti/tests/
# package.rs): debootstrap minbase plus the .deb's Depends, so that installing
# the package in it needs no download. Cached as a tarball keyed by the suite
# and the package list; prints the tarball's path on its last line. Root.
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=bookworm
INCLUDE=e2fsprogs,iproute2,iptables
MIRROR=${BHATTI_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${BHATTI_GUEST_CACHE:-/var/cache/bhatti/guest}/dist
key=$(printf '%s %s %s' "$SUITE" "$INCLUDE" "$MIRROR" | sha256sum | cut -c1-16)
tar="$cache/$SUITE-minbase-$key.tar"
if [[ -s $tar ]]; then
    echo "$tar"
    exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d /var/tmp/bhatti-dist-root.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
echo "dist-root: debootstrap --variant=minbase $SUITE (+ $INCLUDE)" >&2
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$tmp/root" "$MIRROR" >&2
# Nothing of the build host's lists or caches: a clean install's state.
rm -rf "$tmp/root/var/cache/apt/archives/"*.deb
tar -C "$tmp/root" -cf "$tar.tmp" .
mv "$tar.tmp" "$tar"
echo "$tar"
