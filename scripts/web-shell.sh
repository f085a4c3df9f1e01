#!/usr/bin/env bash
# The web shell's browser terminal (xterm.js and its fit addon), from the
# npm registry, pinned with integrity hashes by scripts/web-shell's lock
# file, into target/web-shell/node_modules. crates/server/build.rs embeds
# it into the daemon; it is never committed. Without it the daemon builds
# and `/_shell/…` answers 501 saying to run this script.
#
# Needs npm (Node.js's package manager). Re-run only when the lock changes.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
dest="${BHATTI_WEB_SHELL_DIR:-$REPO/target/web-shell}"
if cmp -s "$REPO/scripts/web-shell/package-lock.json" "$dest/package-lock.json" \
    && [[ -f $dest/node_modules/@xterm/xterm/lib/xterm.js ]]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "web-shell.sh: npm is not installed; the web shell will answer 501" >&2
    exit 1
fi
rm -rf "$dest" && mkdir -p "$dest"
cp "$REPO/scripts/web-shell/package.json" "$REPO/scripts/web-shell/package-lock.json" "$dest/"
(cd "$dest" && npm ci --no-audit --no-fund --ignore-scripts)
echo "web shell terminal: $(ls "$dest/node_modules/@xterm")"
