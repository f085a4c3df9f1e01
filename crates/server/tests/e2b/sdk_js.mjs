// E2B's official JavaScript SDK against a bhatti daemon: the same
// environment as the Python scripts (E2B_API_URL, E2B_SANDBOX_URL,
// E2B_API_KEY, E2B_TEST_OTHER_KEY, E2B_TEST_TEMPLATE). Run by
// crates/server/tests/e2b.rs with Node.js and the SDK pinned in
// scripts/e2b-js/package.json; every check throws on failure, and the last
// line printed is "ok" when all passed.

import { randomUUID } from "node:crypto";
import {
  AuthenticationError,
  CommandExitError,
  FileNotFoundError,
  FilesystemEventType,
  NotFoundError,
  Sandbox,
} from "e2b";

const TEMPLATE = process.env.E2B_TEST_TEMPLATE;
const OTHER_KEY = process.env.E2B_TEST_OTHER_KEY;
const RUN = randomUUID().slice(0, 8);

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`pass: ${what}`);
}

async function raises(cls, f, what) {
  try {
    await f();
  } catch (e) {
    if (e instanceof cls) {
      console.log(`pass: ${what} -> ${e.name}: ${e.message}`);
      return e;
    }
    throw new Error(`${what}: threw ${e?.name}: ${e?.message}, wanted ${cls.name}`);
  }
  throw new Error(`${what}: nothing thrown, wanted ${cls.name}`);
}

async function waitFor(cond, what) {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const sbx = await Sandbox.create(TEMPLATE, { timeoutMs: 120_000, metadata: { run: RUN, sdk: "js" } });
const info = await sbx.getInfo();
check(info.sandboxId === sbx.sandboxId && info.metadata.sdk === "js", "create and getInfo");
const listed = await Sandbox.list({ query: { metadata: { run: RUN } } }).nextItems();
check(listed.length === 1 && listed[0].sandboxId === sbx.sandboxId, "list filters by metadata");

const r = await sbx.commands.run("echo out; echo err >&2", { envs: { X: "1" } });
check(r.exitCode === 0 && r.stdout === "out\n" && r.stderr === "err\n", "commands.run gives stdout and stderr");
const e = await raises(CommandExitError, () => sbx.commands.run("exit 3"), "a non-zero exit throws");
check(e.exitCode === 3, "with the exit code");
const env = await sbx.commands.run("echo $GREETING", { envs: { GREETING: "hi" }, cwd: "/tmp" });
check(env.stdout === "hi\n", "envs reach the command");
const h = await sbx.commands.run("sleep 300", { background: true });
check((await sbx.commands.list()).some((p) => p.pid === h.pid), "a background command is listed");
check(await h.kill(), "and killed");

await sbx.files.makeDir("/tmp/js");
const events = [];
const watcher = await sbx.files.watchDir("/tmp/js", (ev) => events.push(ev));
await sbx.files.write("/tmp/js/a.txt", "hello from js");
check((await sbx.files.read("/tmp/js/a.txt")) === "hello from js", "files.write and read");
check(await sbx.files.exists("/tmp/js/a.txt"), "files.exists");
const entries = await sbx.files.list("/tmp/js");
check(entries.map((x) => x.name).includes("a.txt"), "files.list");
await waitFor(() => events.some((ev) => ev.name === "a.txt" && ev.type === FilesystemEventType.CREATE), "a watch event");
check(true, "watchDir reports the create");
await watcher.stop();
await sbx.files.remove("/tmp/js/a.txt");
await raises(FileNotFoundError, () => sbx.files.read("/tmp/js/a.txt"), "a removed file is not found");

await sbx.setTimeout(300_000);
const left = (new Date((await sbx.getInfo()).endAt) - Date.now()) / 1000;
check(left > 200 && left <= 301, `setTimeout moves the end (${left.toFixed(0)}s)`);

await raises(AuthenticationError, () => Sandbox.create(TEMPLATE, { apiKey: "e2b_" + "0".repeat(64) }), "a wrong key is refused");
await raises(NotFoundError, () => Sandbox.getInfo(sbx.sandboxId, { apiKey: OTHER_KEY }), "another user's sandbox is not found");

check(await sbx.kill(), "kill");
const gone = await Sandbox.list({ query: { metadata: { run: RUN } } }).nextItems();
check(gone.length === 0, "nothing is left behind");
console.log("ok");
