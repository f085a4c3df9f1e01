"""E2B's official Python SDK against a bhatti daemon: envd (commands, PTY,
files) and pause/resume with state surviving.

Run by crates/server/tests/e2b.rs with E2B_API_URL pointing at the
daemon's /e2b, E2B_SANDBOX_URL at its /e2b/envd, E2B_API_KEY (alice, e2b_
form), E2B_TEST_OTHER_KEY (bob), E2B_TEST_TEMPLATE and E2B_TEST_ENGINE. Every check raises
on failure; the last line printed is "ok" when all passed.
"""

import asyncio
import hashlib
import io
import os
import threading
import time

import httpx

from e2b import (
    AsyncSandbox,
    CommandExitException,
    FilesystemEventType,
    FileType,
    PtySize,
    Sandbox,
)
from e2b.exceptions import (
    FileNotFoundException,
    InvalidArgumentException,
    NotFoundException,
)

from checks import check, finish, raises  # beside this script

TEMPLATE = os.environ["E2B_TEST_TEMPLATE"]
SANDBOX_URL = os.environ["E2B_SANDBOX_URL"]
ENGINE = os.environ["E2B_TEST_ENGINE"]



def wait_for(f, what, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = f()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {what}")


def commands(sbx):
    r = sbx.commands.run("echo hello; echo oops >&2")
    check(r.exit_code == 0 and r.stdout == "hello\n" and r.stderr == "oops\n", "run: stdout and stderr apart")

    out, err = [], []
    sbx.commands.run("for i in 1 2 3; do echo o$i; echo e$i >&2; done", on_stdout=out.append, on_stderr=err.append)
    check("".join(out) == "o1\no2\no3\n" and "".join(err) == "e1\ne2\ne3\n", "on_stdout and on_stderr callbacks")

    e = raises(CommandExitException, lambda: sbx.commands.run("echo partial; exit 7"), "a non-zero exit raises")
    check(e.exit_code == 7 and e.stdout == "partial\n", "the exception carries the exit code and output")

    r = sbx.commands.run('echo "$FOO-$BAR"', envs={"FOO": "x"})
    check(r.stdout == "x-\n", "per-command env")
    r = sbx.commands.run("echo $SBXENV")
    check(r.stdout == "from-create\n", "the sandbox's env from create reaches commands")

    sbx.files.make_dir("/tmp/cwd-test")
    r = sbx.commands.run("pwd", cwd="/tmp/cwd-test")
    check(r.stdout == "/tmp/cwd-test\n", "cwd")

    # Background: wait, list, connect, kill.
    h = sbx.commands.run("sleep 0.5; echo done", background=True)
    check(h.pid > 0, "background start returns a pid")
    r = h.wait()
    check(r.exit_code == 0 and r.stdout == "done\n", "wait on a background command")

    long = sbx.commands.run("echo started; sleep 300", background=True)
    listed = sbx.commands.list()
    mine = [p for p in listed if p.pid == long.pid]
    check(len(mine) == 1 and mine[0].cmd == "/bin/bash", "list shows the running command")
    again = sbx.commands.connect(long.pid)
    check(again.pid == long.pid, "connect re-attaches by pid")
    check(sbx.commands.kill(long.pid), "kill a running command")
    e = raises(CommandExitException, again.wait, "a killed command ends with an error exit")
    check(e.exit_code != 0, "killed: non-zero exit")
    wait_for(lambda: all(p.pid != long.pid for p in sbx.commands.list()), "the killed command leaves the list")
    check(not sbx.commands.kill(long.pid), "killing it again finds nothing")
    raises(NotFoundException, lambda: sbx.commands.connect(999999), "connect to an unknown pid")

    # stdin
    h = sbx.commands.run("head -n 2", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "line one\n")
    h.send_stdin("line two\n")
    r = h.wait()
    check(r.stdout == "line one\nline two\n", "send_stdin reaches the command")
    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, b"bytes in\n")
    sbx.commands.close_stdin(h.pid)
    check(h.wait().stdout == "bytes in\n", "close_stdin ends input")
    r = sbx.commands.run("cat; echo after")
    check(r.stdout == "after\n", "without stdin a command reads EOF")


def pty(sbx):
    got = []
    lock = threading.Lock()

    def on_data(d):
        with lock:
            got.append(d)

    def seen():
        with lock:
            return b"".join(got)

    def follow(handle, on_pty):
        try:
            handle.wait(on_pty=on_pty)
        except CommandExitException:
            pass  # killed below: the end this test waits for

    term = sbx.pty.create(PtySize(rows=24, cols=80))
    reader = threading.Thread(target=follow, args=(term, on_data), daemon=True)
    reader.start()
    sbx.pty.send_stdin(term.pid, b"echo pty-$((6*7))\n")
    wait_for(lambda: b"pty-42" in seen(), "pty output")
    check(True, "send_stdin to a pty, output comes back")

    sbx.pty.resize(term.pid, PtySize(rows=40, cols=120))
    sbx.pty.send_stdin(term.pid, b"stty size\n")
    wait_for(lambda: b"40 120" in seen(), "the resized size")
    check(True, "resize reaches the terminal")

    # Reconnect: a second handle on the same terminal (as a client that
    # lost its connection makes) sees new output.
    again = sbx.pty.connect(term.pid)
    got2 = []
    t2 = threading.Thread(target=follow, args=(again, got2.append), daemon=True)
    t2.start()
    sbx.pty.send_stdin(term.pid, b"echo back-$((1+1))\n")
    wait_for(lambda: b"back-2" in b"".join(got2), "output after reconnect")
    check(True, "pty reconnect")

    check(sbx.pty.kill(term.pid), "kill the pty")
    t2.join(timeout=30)
    reader.join(timeout=30)
    check(not t2.is_alive() and not reader.is_alive(), "every stream of the pty ends when it is killed")


def files(sbx):
    info = sbx.files.write("/tmp/f/hello.txt", "hello world")
    check(info.path == "/tmp/f/hello.txt" and info.name == "hello.txt", "write text (parents made)")
    check(sbx.files.read("/tmp/f/hello.txt") == "hello world", "read text")
    data = bytes(range(256)) * 4
    sbx.files.write("/tmp/f/bin", data)
    check(sbx.files.read("/tmp/f/bin", format="bytes") == bytearray(data), "bytes round trip")
    sbx.files.write("/tmp/f/stream", io.BytesIO(b"streamed in"))
    chunks = b"".join(sbx.files.read("/tmp/f/stream", format="stream"))
    check(chunks == b"streamed in", "stream write and read")
    sbx.files.write_files([{"path": "/tmp/f/m1", "data": "one"}, {"path": "/tmp/f/m2", "data": b"two"}])
    check(sbx.files.read("/tmp/f/m2") == "two", "write_files writes each file")

    rel = sbx.files.write("rel.txt", "relative")
    check(rel.path.endswith("/rel.txt") and rel.path.startswith("/"), "a relative path is under home")
    check(sbx.commands.run("cat ~/rel.txt").stdout == "relative", "the same file the user's shell sees")

    check(sbx.files.exists("/tmp/f/hello.txt"), "exists: yes")
    check(not sbx.files.exists("/tmp/f/nope"), "exists: no")
    raises(FileNotFoundException, lambda: sbx.files.read("/tmp/f/nope"), "read a missing file")
    raises(FileNotFoundException, lambda: sbx.files.get_info("/tmp/f/nope"), "get_info a missing file")

    i = sbx.files.get_info("/tmp/f/hello.txt")
    check(i.type == FileType.FILE and i.size == 11 and i.name == "hello.txt", "get_info of a file")
    check(sbx.files.get_info("/tmp/f").type == FileType.DIR, "get_info of a directory")

    check(sbx.files.make_dir("/tmp/f/d1/d2"), "make_dir with parents")
    check(not sbx.files.make_dir("/tmp/f/d1/d2"), "make_dir of an existing directory is False")
    sbx.files.write("/tmp/f/d1/d2/deep.txt", "deep")
    names = {e.name for e in sbx.files.list("/tmp/f")}
    check({"hello.txt", "bin", "d1"} <= names and "deep.txt" not in names, "list, depth 1")
    deep = {e.path for e in sbx.files.list("/tmp/f", depth=3)}
    check("/tmp/f/d1/d2/deep.txt" in deep, "list, depth 3")
    raises(InvalidArgumentException, lambda: sbx.files.list("/tmp/f", depth=0), "depth 0 is refused")

    moved = sbx.files.rename("/tmp/f/hello.txt", "/tmp/f/renamed.txt")
    check(moved.path == "/tmp/f/renamed.txt", "rename answers the new entry")
    check(not sbx.files.exists("/tmp/f/hello.txt") and sbx.files.read("/tmp/f/renamed.txt") == "hello world", "rename moves")
    raises(FileNotFoundException, lambda: sbx.files.rename("/tmp/f/nope", "/tmp/f/x"), "rename a missing file")
    sbx.files.remove("/tmp/f/d1")
    check(not sbx.files.exists("/tmp/f/d1"), "remove a directory tree")
    raises(FileNotFoundException, lambda: sbx.files.remove("/tmp/f/d1"), "remove a missing path")

    # Watch: changes made after the watch started come back as events.
    sbx.files.make_dir("/tmp/w")
    handle = sbx.files.watch_dir("/tmp/w")
    sbx.files.write("/tmp/w/new.txt", "x")
    seen = []

    def got(kind, name):
        seen.extend(handle.get_new_events())
        return any(e.type == kind and e.name == name for e in seen)

    wait_for(lambda: got(FilesystemEventType.CREATE, "new.txt"), "a create event")
    check(True, "watch_dir: create")
    sbx.files.write("/tmp/w/new.txt", "longer content")
    wait_for(lambda: got(FilesystemEventType.WRITE, "new.txt"), "a write event")
    check(True, "watch_dir: write")
    sbx.files.remove("/tmp/w/new.txt")
    wait_for(lambda: got(FilesystemEventType.REMOVE, "new.txt"), "a remove event")
    check(True, "watch_dir: remove")
    handle.stop()

    # 50 MB each way, compared by hash.
    big = os.urandom(1 << 20) * 50
    sbx.files.write("/tmp/big.bin", big)
    r = sbx.commands.run("sha256sum /tmp/big.bin")
    check(r.stdout.split()[0] == hashlib.sha256(big).hexdigest(), "50 MB upload arrives intact")
    back = sbx.files.read("/tmp/big.bin", format="bytes")
    check(hashlib.sha256(back).hexdigest() == hashlib.sha256(big).hexdigest(), "50 MB download arrives intact")


def bad_input(sbx):
    # Without the access token envd refuses.
    r = httpx.get(
        SANDBOX_URL + "/files",
        params={"path": "/etc/hostname"},
        headers={"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": "00" * 32},
    )
    check(r.status_code == 401, f"a wrong access token is 401 ({r.status_code})")
    # A malformed Connect envelope on a streaming call is refused, not a hang.
    r = httpx.post(
        SANDBOX_URL + "/process.Process/Start",
        content=b"\x00\x00\x00\x00\xffnot json",
        headers={
            "E2b-Sandbox-Id": sbx.sandbox_id,
            "X-Access-Token": sbx._envd_access_token,
            "Content-Type": "application/connect+json",
            "Connect-Protocol-Version": "1",
        },
        timeout=30,
    )
    check(r.status_code != 200 or b'"error"' in r.content, f"a malformed envelope is an error ({r.status_code})")


def get_host(sbx):
    api = httpx.URL(os.environ["E2B_API_URL"])
    daemon = f"http://{api.host}:{api.port}"
    sbx.files.write("/tmp/www/hello.txt", "served from the guest")
    sbx.commands.run("busybox httpd -p 127.0.0.1:8000 -h /tmp/www", background=True)
    host = sbx.get_host(8000)
    check(host.startswith(f"8000-{sbx.sandbox_id}."), f"get_host names the port and sandbox ({host})")
    token = {"X-Access-Token": sbx._envd_access_token}

    def fetch():
        try:
            r = httpx.get(daemon + "/hello.txt", headers={"Host": host, **token}, timeout=10)
        except httpx.HTTPError:
            return None
        return r if r.status_code == 200 else None

    r = wait_for(fetch, "the guest's server through the host address")
    check(r.text == "served from the guest", "HTTP to a server in the guest by get_host")
    r = httpx.get(daemon + "/hello.txt", headers={"Host": host}, timeout=10)
    check(r.status_code == 401, f"without a token or key the port is closed ({r.status_code})")
    r = httpx.get(daemon + "/hello.txt", headers={"Host": host, "X-Access-Token": "ab" * 32}, timeout=10)
    check(r.status_code == 401, f"another sandbox's token does not open it ({r.status_code})")
    envd = sbx.get_host(49983)
    r = httpx.get(daemon + "/health", headers={"Host": envd, **token}, timeout=10)
    check(r.status_code == 204, f"envd by host address ({r.status_code})")


def metrics(sbx):
    m = sbx.get_metrics()
    check(len(m) == 1, "get_metrics answers the current reading")
    m = m[0]
    check(m.cpu_count >= 1 and 0 <= m.cpu_used_pct <= 100, f"cpu ({m.cpu_count}, {m.cpu_used_pct:.1f}%)")
    check(0 < m.mem_used < m.mem_total, f"memory ({m.mem_used} of {m.mem_total})")
    check(0 < m.disk_used <= m.disk_total, f"disk ({m.disk_used} of {m.disk_total})")


def pause_resume(sbx):
    sbx.files.write("/tmp/keep.txt", "still here")
    sbx.commands.run("sleep 1000", background=True)
    check(sbx.pause(), "pause")
    check(not sbx.is_running(), "a paused sandbox is not running")
    sbx.connect()
    check(sbx.is_running(), "connect resumes it")
    check(sbx.files.read("/tmp/keep.txt") == "still here", "files survive pause and resume")
    if ENGINE == "docker":
        # Docker's stop ends the container's processes: only a microVM's
        # pause keeps memory (docs/e2b.md).
        return
    r = sbx.commands.run("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | grep -q 'sleep 1000' && echo alive")
    check(r.stdout == "alive\n", "a process survives pause and resume")


async def async_subset():
    sbx = await AsyncSandbox.create(TEMPLATE, timeout=300)
    try:
        r = await sbx.commands.run("echo async-$((2+3))")
        check(r.stdout == "async-5\n", "async: run")
        await sbx.files.write("/tmp/a.txt", "async file")
        check(await sbx.files.read("/tmp/a.txt") == "async file", "async: write and read")
        check(await sbx.files.exists("/tmp/a.txt"), "async: exists")
        h = await sbx.commands.run("sleep 300", background=True)
        check(await sbx.commands.kill(h.pid), "async: kill a background command")
    finally:
        await sbx.kill()


def main():
    sbx = Sandbox.create(TEMPLATE, timeout=600, envs={"SBXENV": "from-create"})
    try:
        commands(sbx)
        pty(sbx)
        files(sbx)
        bad_input(sbx)
        get_host(sbx)
        metrics(sbx)
        pause_resume(sbx)
    finally:
        sbx.kill()
    asyncio.run(async_subset())
    finish()


if __name__ == "__main__":
    main()
