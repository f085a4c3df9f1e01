"""E2B's official Python SDK against a bhatti daemon: the control API.

Run by crates/server/tests/e2b.rs with E2B_API_URL pointing at the
daemon's /e2b, E2B_API_KEY (alice, e2b_ form), E2B_TEST_OTHER_KEY (bob) and
E2B_TEST_TEMPLATE. Every check raises on failure; the last line printed is
"ok" when all passed.
"""

import asyncio
import datetime
import os
import time
import uuid

from e2b import AsyncSandbox, Sandbox, SandboxQuery, SandboxState
from e2b.exceptions import (
    AuthenticationException,
    NotFoundException,
    SandboxException,
)

from checks import check, finish, raises  # beside this script

TEMPLATE = os.environ["E2B_TEST_TEMPLATE"]
OTHER_KEY = os.environ["E2B_TEST_OTHER_KEY"]
ENGINE = os.environ["E2B_TEST_ENGINE"]
RUN = uuid.uuid4().hex[:8]

def seconds_left(info):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (info.end_at - now).total_seconds()


def lifecycle():
    sbx = Sandbox.create(
        TEMPLATE, timeout=120, metadata={"suite": "e2b", "run": RUN}, envs={"A": "1"}
    )
    info = sbx.get_info()
    check(info.sandbox_id == sbx.sandbox_id, "get_info names the sandbox")
    check(info.metadata == {"suite": "e2b", "run": RUN}, "metadata comes back as given")
    check(info.state == SandboxState.RUNNING, "a new sandbox is running")
    check(60 < seconds_left(info) <= 121, f"create's timeout is the lifetime ({seconds_left(info):.0f}s)")
    check(info.cpu_count >= 1 and info.memory_mb >= 128, "cpu and memory are reported")

    sbx.set_timeout(600)
    check(500 < seconds_left(sbx.get_info()) <= 601, "set_timeout moves the end")

    other = Sandbox.create(TEMPLATE, timeout=120, metadata={"run": RUN, "n": "2"})
    found = Sandbox.list(query=SandboxQuery(metadata={"run": RUN})).next_items()
    check({s.sandbox_id for s in found} == {sbx.sandbox_id, other.sandbox_id}, "list filters by metadata")
    found = Sandbox.list(query=SandboxQuery(metadata={"run": RUN, "n": "2"})).next_items()
    check([s.sandbox_id for s in found] == [other.sandbox_id], "every metadata pair must match")
    pages = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}), limit=1)
    first = pages.next_items()
    check(len(first) == 1 and pages.has_next, "limit=1 gives a page and a next token")
    second = pages.next_items()
    check(len(second) == 1 and second[0].sandbox_id != first[0].sandbox_id, "the next page is the other one")
    check(not pages.has_next, "and then no more")

    # Another tenant sees none of it.
    raises(NotFoundException, lambda: Sandbox.get_info(sbx.sandbox_id, api_key=OTHER_KEY), "another user's sandbox is not found")
    check(not Sandbox.kill(sbx.sandbox_id, api_key=OTHER_KEY), "another user cannot kill it")
    theirs = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}), api_key=OTHER_KEY).next_items()
    check(theirs == [], "another user's list is empty")

    # Pause and connect: paused, then running again, its lifetime restarted.
    sbx.pause()
    check(Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED, "pause leaves it paused")
    paused = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}, state=[SandboxState.PAUSED])).next_items()
    check([s.sandbox_id for s in paused] == [sbx.sandbox_id], "list filters by state")
    again = Sandbox.connect(sbx.sandbox_id, timeout=300)
    info = again.get_info()
    check(info.state == SandboxState.RUNNING, "connect wakes a paused sandbox")
    check(200 < seconds_left(info) <= 301, "connect sets the lifetime")

    check(other.kill(), "kill answers true")
    check(not Sandbox.kill(other.sandbox_id), "a second kill answers false")
    raises(NotFoundException, lambda: Sandbox.get_info(other.sandbox_id), "a killed sandbox is gone")
    return sbx


def expiry():
    short = Sandbox.create(TEMPLATE, timeout=2, metadata={"run": RUN, "short": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            Sandbox.get_info(short.sandbox_id)
        except NotFoundException:
            print("pass: a sandbox is killed when its lifetime ends", flush=True)
            return
        time.sleep(1)
    raise AssertionError("a 2 s sandbox was still there after 60 s")


def bad_input():
    raises(AuthenticationException, lambda: Sandbox.create(TEMPLATE, api_key="e2b_" + "0" * 64), "a wrong key is refused")
    # E2B's SDK raises its base SandboxException for a create's 404, as it
    # does against E2B itself.
    e = raises(SandboxException, lambda: Sandbox.create("no-such-template-" + RUN), "an unknown template is refused")
    check(getattr(e, "status_code", None) == 404 and "no-such-template" in str(e), "with 404 and the name")
    raises(SandboxException, lambda: Sandbox.create(TEMPLATE, timeout=10**9), "an absurd timeout is refused")


def forks_and_snapshots():
    src = Sandbox.create(TEMPLATE, timeout=300, metadata={"run": RUN, "role": "src"})
    if ENGINE == "docker":
        # Containers cannot be checkpointed: the API says so (501), and the
        # SDK raises its base exception.
        raises(SandboxException, lambda: src.fork(count=1), "docker: fork is refused")
        raises(SandboxException, lambda: src.create_snapshot(), "docker: create_snapshot is refused")
        src.kill()
        return
    # State in memory and on disk, to find again in the forks.
    h = src.commands.run("sleep 600", background=True)
    src.files.write("/tmp/fork-marker", "before the fork")
    forks = src.fork(count=2, timeout=120)
    check(len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks), f"fork(count=2) gives two sandboxes: {forks}")
    ids = {f.sandbox_id for f in forks}
    check(len(ids) == 2 and src.sandbox_id not in ids, "each fork is a new sandbox")
    for f in forks:
        check(f.files.read("/tmp/fork-marker") == "before the fork", "a fork has the source's files")
        procs = f.commands.run("cat /proc/[0-9]*/comm 2>/dev/null; true").stdout.split()
        check("sleep" in procs, "a fork has the source's processes")
        info = f.get_info()
        check(info.metadata.get("role") == "src", "a fork keeps the source's metadata")
        check(60 < seconds_left(info) <= 121, f"a fork has the timeout it was given ({seconds_left(info):.0f}s, ends {info.end_at})")
    forks[0].files.write("/tmp/fork-marker", "changed in a fork")
    check(src.files.read("/tmp/fork-marker") == "before the fork", "a fork's writes stay in the fork")
    check(src.get_info().state == SandboxState.RUNNING, "the source keeps running")
    h.kill()

    name = "snap-" + RUN
    snap = src.create_snapshot(name=name)
    check(snap.snapshot_id == name and snap.names == [name], "create_snapshot names the snapshot")
    unnamed = Sandbox.create_snapshot(src.sandbox_id)
    check(unnamed.snapshot_id.startswith("snap-"), "an unnamed snapshot gets a name")
    listed = [s.snapshot_id for s in src.list_snapshots().next_items()]
    check(set(listed) == {name, unnamed.snapshot_id}, f"list_snapshots filters by sandbox: {listed}")
    by_name = [s.snapshot_id for s in Sandbox.list_snapshots(name="team/" + name + ":default").next_items()]
    check(by_name == [name], "list_snapshots filters by a qualified name")
    check(list(Sandbox.list_snapshots(api_key=OTHER_KEY).next_items()) == [], "another user sees no snapshots")
    raises(SandboxException, lambda: src.create_snapshot(name=name), "a taken snapshot name is refused")

    restored = Sandbox.create(name, timeout=120, metadata={"run": RUN, "role": "restored"})
    check(restored.files.read("/tmp/fork-marker") == "before the fork", "create from a snapshot has its files")
    info = restored.get_info()
    check(info.metadata.get("role") == "restored" and info.template_id == name, "create from a snapshot takes metadata and reports the snapshot")
    check(60 < seconds_left(info) <= 121, "and the lifetime it was given")

    check(Sandbox.delete_snapshot(unnamed.snapshot_id), "delete_snapshot answers true")
    check(not Sandbox.delete_snapshot(unnamed.snapshot_id), "a second delete answers false")
    check(not Sandbox.delete_snapshot(name, api_key=OTHER_KEY), "another user cannot delete it")
    check(Sandbox.delete_snapshot(name), "delete the named one")
    for s in [src, restored, *forks]:
        s.kill()


async def async_subset():
    sbx = await AsyncSandbox.create(TEMPLATE, timeout=60, metadata={"run": RUN, "async": "1"})
    info = await sbx.get_info()
    check(info.metadata.get("async") == "1", "async: create and get_info")
    await sbx.set_timeout(90)
    check(60 < seconds_left(await sbx.get_info()) <= 91, "async: set_timeout")
    check(await sbx.kill(), "async: kill")


keep = lifecycle()
expiry()
bad_input()
forks_and_snapshots()
asyncio.run(async_subset())
keep.kill()
left = Sandbox.list(query=SandboxQuery(metadata={"run": RUN})).next_items()
check(left == [], "nothing is left behind")
finish()
