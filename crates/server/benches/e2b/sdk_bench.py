"""Timings for crates/server/benches/e2b.rs, all from one Python process so
that both sides pay the same client costs: E2B's SDK against bhatti's E2B
API, and the native API through httpx (the baseline), interleaved.

Prints one JSON object of sample lists (seconds) as its last line.
"""

import json
import os
import time

import httpx

from e2b import Sandbox

N = int(os.environ.get("BENCH_N", "100"))
CREATES = int(os.environ.get("BENCH_CREATES", "10"))
NATIVE = os.environ["BENCH_NATIVE_URL"]
KEY = os.environ["BENCH_NATIVE_KEY"]


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main():
    native = httpx.Client(base_url=NATIVE, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    sbx = Sandbox.create("base", timeout=3600)
    native_id = sbx.sandbox_id

    def sdk_run():
        r = sbx.commands.run("true")
        assert r.exit_code == 0

    def native_exec():
        r = native.post(f"/sandboxes/{native_id}/exec", json={"cmd": ["true"]})
        assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text

    for _ in range(10):
        sdk_run()
        native_exec()
    sdk, base = [], []
    for _ in range(N):
        sdk.append(timed(sdk_run))
        base.append(timed(native_exec))
    sbx.kill()

    def sdk_create_first():
        s = Sandbox.create("base", timeout=600)
        s.commands.run("true")
        return s

    def native_create_first():
        r = native.post("/sandboxes", json={})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        r = native.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]})
        assert r.status_code == 200, r.text
        return sid

    create_sdk, create_native = [], []
    for _ in range(CREATES):
        t = time.perf_counter()
        s = sdk_create_first()
        create_sdk.append(time.perf_counter() - t)
        s.kill()
        t = time.perf_counter()
        sid = native_create_first()
        create_native.append(time.perf_counter() - t)
        native.delete(f"/sandboxes/{sid}")
    print(json.dumps({
        "sdk_run": sdk,
        "native_exec": base,
        "sdk_create_first": create_sdk,
        "native_create_first": create_native,
    }), flush=True)


if __name__ == "__main__":
    main()
    # The SDK's native Connect transport can abort during interpreter
    # teardown (tests/e2b/checks.py: finish); the report is out by now.
    os._exit(0)
