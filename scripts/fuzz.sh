#!/usr/bin/env bash
# Fuzzes the parsers that read bytes from outside the daemon (docs/decisions.md,
# "Fuzzing"): the frame codec, the config drive's JSON, QMP and the Firecracker
# API responses. Each target runs for FUZZ_SECONDS (default 30) on top of its
# corpus in fuzz/corpus/<target>. New interesting inputs go to a scratch
# corpus under target/fuzz/corpus/ (a run never dirties the checkout);
# FUZZ_KEEP=1 writes them into fuzz/corpus/ instead, to commit them.
# Exits non-zero if any target crashes, naming the input that did it.
#
#   bash scripts/fuzz.sh                  # every target
#   bash scripts/fuzz.sh frame qmp        # some targets
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh # longer
#   FUZZ_KEEP=1 bash scripts/fuzz.sh      # keep new inputs in fuzz/corpus
#   FUZZ_CMIN=1 bash scripts/fuzz.sh      # then minimize each corpus in place
#
# cargo-fuzz needs unstable rustc flags (sanitizer coverage); the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1, set here for cargo-fuzz only.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export CARGO_TERM_COLOR=never
export RUSTC_BOOTSTRAP=1

seconds=${FUZZ_SECONDS:-30}
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(frame guest_config qmp firecracker)
fi
# The build lives under the main target directory. No sanitizer: the code
# under test is safe Rust (panics, overflows, aborts and hangs are what we
# look for), and it keeps the build and the runs fast. The frame target caps
# allocations itself.
fuzz_args=(--sanitizer none --target-dir "$REPO/target/fuzz")

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

start=$(date +%s)
cargo fuzz build "${fuzz_args[@]}"
echo "fuzz build: $(($(date +%s) - start)) s"

failed=()
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    # libFuzzer adds new inputs to the first corpus directory only.
    if [[ -n ${FUZZ_KEEP:-} ]]; then
        dirs=("$corpus")
    else
        dirs=("$REPO/target/fuzz/corpus/$t" "$corpus")
        mkdir -p "${dirs[0]}"
    fi
    before=$(ls "$artifacts")
    echo "--- $t: ${seconds} s, corpus $corpus ($(ls "$corpus" | wc -l) inputs)"
    # -timeout: one input running 10 s is a hang; -rss_limit_mb: a runaway
    # allocation is a crash, not a swapping CI machine.
    if cargo fuzz run "${fuzz_args[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$REPO/target/fuzz/$t.log" 2>&1; then
        grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$REPO/target/fuzz/$t.log" || true
    else
        failed+=("$t")
        tail -n 40 "$REPO/target/fuzz/$t.log"
        for f in $(ls "$artifacts"); do
            if ! grep -qxF "$f" <<<"$before"; then
                echo "!! $t crashed on input: $REPO/$artifacts/$f"
                echo "   reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${fuzz_args[*]} $t $REPO/$artifacts/$f"
            fi
        done
    fi
    if [[ -n ${FUZZ_CMIN:-} ]]; then
        cargo fuzz cmin "${fuzz_args[@]}" "$t" "$corpus" >"$REPO/target/fuzz/$t.cmin.log" 2>&1
        echo "$t corpus minimized: $(ls "$corpus" | wc -l) inputs"
    fi
done

echo "fuzzing took $(($(date +%s) - start)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "!! fuzz targets that crashed: ${failed[*]} (full logs in target/fuzz/<target>.log)"
    exit 1
fi
