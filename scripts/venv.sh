#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/bench.sh.
#
# pinned_venv VENV PINS: a venv at VENV holding exactly the pins of PINS
# (every package pinned, no resolver), rebuilt when the pins change; a
# failed install fails the caller.
pinned_venv() {
    local venv=$1 pins=$2
    if ! cmp -s "$pins" "$venv/requirements.txt"; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$pins"
        cp "$pins" "$venv/requirements.txt"
    fi
}
