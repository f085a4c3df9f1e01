#!/usr/bin/env bash
# Runs every benchmark of the project and collects their reports (each figure
# beside a baseline measured in the same run) into docs/performance.md.
# Run as root after scripts/setup-host.sh (VM and Docker benchmarks need it;
# the ones that cannot run say why and are left out).
# `--collect` only rebuilds docs/performance.md from the existing reports.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
if [[ ${1:-} != --collect ]]; then
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p lohar --target x86_64-unknown-linux-gnu
LOHAR="$REPO/target/x86_64-unknown-linux-gnu/release/lohar"
if [[ $(id -u) -eq 0 ]]; then
    scripts/guest/build-kernel.sh
    cache=${BHATTI_GUEST_CACHE:-/var/cache/bhatti/guest}
    scripts/guest/build-rootfs.sh --lohar "$LOHAR" --out "$cache/rootfs-minimal.ext4"
    scripts/guest/build-debian-rootfs.sh --lohar "$LOHAR" --out "$cache/rootfs-base.ext4"
    export BHATTI_LOHAR_STATIC="$LOHAR"
    scripts/start-dockerd.sh && scripts/docker-image.sh --lohar "$LOHAR" || echo "!! no dockerd: Docker benchmarks will skip"
fi
cargo bench -p lohar --bench agent
cargo bench -p bhatti-engine --bench microvm
cargo bench -p bhatti-engine --bench docker
cargo bench -p bhatti-server --bench api
cargo bench -p bhatti-server --bench images
cargo bench -p bhatti --bench restart
cargo bench -p bhatti-server --bench publish
# E2B's SDK, pinned, in the venv the tests use.
source scripts/venv.sh
# Volume backups against moto's S3 server, from the tests' pinned venv.
pinned_venv "$REPO/target/venv-moto" "$REPO/scripts/moto-requirements.txt"
BHATTI_MOTO_SERVER="$REPO/target/venv-moto/bin/moto_server" cargo bench -p bhatti-server --bench backups
pinned_venv "$REPO/target/venv-e2b" "$REPO/scripts/e2b-requirements.txt"
BHATTI_E2B_PYTHON="$REPO/target/venv-e2b/bin/python" cargo bench -p bhatti-server --bench e2b
BHATTI_E2B_PYTHON="$REPO/target/venv-e2b/bin/python" BHATTI_BENCH_ENGINE=qemu BHATTI_BENCH_N=50 \
    cargo bench -p bhatti-server --bench e2b
fi
{
    echo "# Performance"
    echo
    echo "Collected by \`scripts/bench.sh\` from \`bench/results/\`; each figure is beside a baseline"
    echo "measured in the same run on the same machine (2 cores; QEMU under TCG here, no KVM for"
    echo "ordinary guests — see docs/engine.md, \"The machines this project is built on\"). Regenerate (as root) with \`bash scripts/bench.sh\`."
    # kernel-boot: scripts/guest/kernel-boot-cost.sh, run when the kernel
    # changes (it needs the old kernel beside the new one).
    for s in agent microvm docker api images restart e2b e2b-qemu publish backups kernel-boot; do
        f="bench/results/$s.md"
        [[ -f $f ]] || continue
        echo
        sed 's/^# /## /' "$f"
    done
} > docs/performance.md
echo "wrote docs/performance.md"
