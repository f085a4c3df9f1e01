#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, the guest artifacts the
# VM tests boot, a short fuzzing pass (scripts/fuzz.sh; BHATTI_SKIP_FUZZ=1 skips
# it), then every test. Needs root for the VM and network tests (they
# report themselves as skipped without it). Run scripts/setup-host.sh first on a
# fresh machine (.ci/run does).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "the web shell's terminal (xterm.js from npm, embedded at build time)"
bash scripts/web-shell.sh

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "static lohar for the guest image"
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p lohar --target x86_64-unknown-linux-gnu
LOHAR_STATIC="$REPO/target/x86_64-unknown-linux-gnu/release/lohar"
export BHATTI_LOHAR_STATIC="$LOHAR_STATIC"

if [[ $(id -u) -eq 0 && -z ${BHATTI_SKIP_VM:-} ]]; then
    step "guest kernel (cached after the first build) and minimal rootfs"
    scripts/guest/build-kernel.sh
    cache=${BHATTI_GUEST_CACHE:-/var/cache/bhatti/guest}
    scripts/guest/build-rootfs.sh --lohar "$LOHAR_STATIC" --out "$cache/rootfs-minimal.ext4"
    # Every guest the suites boot gets tsc_early_khz (a TCG guest on a loaded
    # host can hang calibrating its TSC): looked up once here, where the
    # kernel log and /proc/cpuinfo fallbacks are all tried.
    if [[ -z ${BHATTI_TSC_KHZ:-} ]] && tsc=$(source scripts/guest/lib.sh && host_tsc_khz 2>/dev/null); then
        export BHATTI_TSC_KHZ="$tsc"
    fi
    export BHATTI_GUEST_KERNEL="$cache/vmlinux"
    export BHATTI_GUEST_ROOTFS="$cache/rootfs-minimal.ext4"
    step "base image (Debian + python3, git, build-essential; cached)"
    scripts/guest/build-debian-rootfs.sh --lohar "$LOHAR_STATIC" --out "$cache/rootfs-base.ext4"
    export BHATTI_GUEST_BASE_ROOTFS="$cache/rootfs-base.ext4"
    # The image tiers the tier suites boot (crates/server/tests/tiers.rs):
    # Debian's packages on the base tree; about a minute the first time, then
    # cached (each ~0.1 s while the base tree and lohar are unchanged).
    step "image tiers: services (nginx, redis), docker, browser (cached)"
    for tier in services docker browser; do
        scripts/guest/build-tier.sh --tier "$tier" --lohar "$LOHAR_STATIC" --out "$cache/rootfs-$tier.ext4"
    done
    # The package test (crates/bhatti/tests/package.rs) installs the .deb in
    # a clean Debian 12 root; both are made here, where downloads are setup.
    step "the Debian package (cargo-deb) and a clean Debian 12 root to install it in"
    BHATTI_DEB=$(scripts/build-deb.sh | tail -1)
    BHATTI_DIST_ROOT=$(scripts/dist-root.sh | tail -1)
    export BHATTI_DEB BHATTI_DIST_ROOT
else
    echo "not root or BHATTI_SKIP_VM set: VM tests will be reported as ignored"
fi

if [[ $(id -u) -eq 0 && -z ${BHATTI_SKIP_DOCKER:-} ]]; then
    step "dockerd and the local sandbox image"
    if scripts/start-dockerd.sh && scripts/docker-image.sh --lohar "$LOHAR_STATIC"; then
        export BHATTI_DOCKER_TESTS=1
    else
        echo "!! dockerd could not be started: the Docker engine tests will be reported as ignored"
        export BHATTI_DOCKER_TESTS=0
    fi
else
    export BHATTI_DOCKER_TESTS=0
fi

# pinned_venv: a venv holding exactly a pins file's packages.
source scripts/venv.sh

if [[ $BHATTI_DOCKER_TESTS == 1 ]]; then
    # The API contract suite (crates/server/tests/contract.rs) runs
    # schemathesis against a daemon on the Docker engine. From PyPI, every
    # package pinned, in a venv of its own, rebuilt when the pins change; a
    # failed install fails the run rather than skipping the suite.
    step "schemathesis for the API contract suite"
    venv="$REPO/target/venv-schemathesis"
    pinned_venv "$venv" "$REPO/scripts/schemathesis-requirements.txt"
    "$venv/bin/st" --version
    export BHATTI_SCHEMATHESIS="$venv/bin/st"
fi

# The volume backup suite (crates/server/tests/backups.rs) backs up to a
# real S3-compatible server on loopback: moto's server mode, from PyPI,
# pinned, in its own venv (docs/decisions.md, "Volume backups").
step "moto's S3 server for the volume backup suite"
venv="$REPO/target/venv-moto"
pinned_venv "$venv" "$REPO/scripts/moto-requirements.txt"
"$venv/bin/python" -c 'import importlib.metadata as m; print("moto", m.version("moto"))'
export BHATTI_MOTO_SERVER="$venv/bin/moto_server"

# The E2B compatibility suite (crates/server/tests/e2b.rs) drives the daemon
# with E2B's official Python SDK: from PyPI, pinned, in its own venv.
step "E2B's Python SDK for the E2B suite"
venv="$REPO/target/venv-e2b"
pinned_venv "$venv" "$REPO/scripts/e2b-requirements.txt"
"$venv/bin/python" -c 'import e2b, importlib.metadata as m; print("e2b", m.version("e2b"))'
export BHATTI_E2B_PYTHON="$venv/bin/python"

# And its JavaScript SDK, from npm, pinned by scripts/e2b-js's lock file;
# it needs Node.js 20.18 or newer (without it the JS test is reported as
# ignored, with the reason).
step "E2B's JavaScript SDK for the E2B suite"
js="$REPO/target/js-e2b"
if node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=18)?0:1)' 2>/dev/null; then
    if ! cmp -s scripts/e2b-js/package-lock.json "$js/package-lock.json"; then
        rm -rf "$js" && mkdir -p "$js"
        cp scripts/e2b-js/package.json scripts/e2b-js/package-lock.json "$js/"
        (cd "$js" && npm ci --no-audit --no-fund)
    fi
    export BHATTI_E2B_JS="$js"
else
    echo "no Node.js 20.18+: the E2B JavaScript SDK test will be reported as ignored"
fi

if [[ -z ${BHATTI_SKIP_FUZZ:-} ]]; then
    step "fuzz the parsers (${FUZZ_SECONDS:-30} s per target)"
    bash scripts/fuzz.sh
else
    echo "BHATTI_SKIP_FUZZ set: fuzzing skipped"
fi

step "cargo test"
# One test thread per binary for the VM suites keeps two TCG guests from
# starving each other on a 2-core machine; the rest run in parallel.
cargo test --workspace --no-fail-fast -- --test-threads="${BHATTI_TEST_THREADS:-2}"
