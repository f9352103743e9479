// Drives the admin page the standalone server serves at its API address
// (/admin), in headless Chromium next to a demo page: a wrong key is
// refused, the right one opens the live view, a member shows up in the
// connection count and the topic list, a publish from the page reaches the
// member, and unsubscribing the member (by its token's sub) takes its topic
// off the list. A screenshot is saved to tests/browser/artifacts/admin.png.
//
// Needs Debian's chromium (/usr/bin/chromium, or CHROMIUM_PATH) and the
// herald binary (HERALD_BIN, default target/debug/herald).

import { test, before, after } from "node:test";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { WAIT, artifacts, freePort, heraldBin, launchChromium } from "./support.mjs";

const SECRET = "admin-test-secret";
const KEY = "admin-test-key";

let server;
let browser;
let base;
let apiBase;

/** An HS256 JWT for `sub`, valid for an hour. */
function jwt(sub) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

before(async () => {
  const [port, apiPort] = [await freePort(), await freePort()];
  base = `http://127.0.0.1:${port}`;
  apiBase = `http://127.0.0.1:${apiPort}`;
  server = spawn(
    heraldBin,
    ["--listen", `127.0.0.1:${port}`, "--api-listen", `127.0.0.1:${apiPort}`, "--api-key", KEY,
      "--jwt-secret", SECRET, "--loops", "2", "--no-pin"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  await new Promise((resolve, reject) => {
    let log = "";
    server.on("exit", (code) => reject(new Error(`herald exited with ${code}:\n${log}`)));
    server.stderr.setEncoding("utf8");
    server.stderr.on("data", (chunk) => {
      log += chunk;
      if (log.includes(`127.0.0.1:${apiPort}`)) resolve();
    });
  });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  server?.kill("SIGKILL");
});

test("the admin page shows the node live, publishes, and unsubscribes a user", async () => {
  const admin = await (await browser.newContext()).newPage();
  await admin.goto(`${apiBase}/admin`);
  await admin.fill("#login input[name=key]", "wrong");
  await admin.click("#login button");
  await admin.getByText("refused: missing or wrong API key", { exact: false }).waitFor(WAIT);
  await admin.fill("#login input[name=key]", KEY);
  await admin.click("#login button");
  await admin.locator("body[data-connections='0']").waitFor(WAIT);

  // A member on the demo page, named by its token.
  const member = await (await browser.newContext()).newPage();
  await member.goto(`${base}/?token=${jwt("alice")}`);
  await member.fill("#join input[name=name]", "alice");
  await member.click("#join button");
  await member.getByText("You joined as alice.").waitFor(WAIT);
  await admin.locator("body[data-connections='1']").waitFor(WAIT);
  await admin.locator("#topics td", { hasText: "room:lobby" }).waitFor(WAIT);

  await admin.fill("#publish input[name=topic]", "room:lobby");
  await admin.click("#publish button");
  await member.getByText("admin: hello").waitFor(WAIT);

  mkdirSync(artifacts, { recursive: true });
  await admin.screenshot({ path: path.join(artifacts, "admin.png"), fullPage: true });

  await admin.fill("#user input[name=socket_id]", "alice");
  await admin.fill("#user input[name=topic]", "room:lobby");
  await admin.click("#user button[value=unsubscribe]");
  await admin.getByText("unsubscribe: alice").waitFor(WAIT);
  await admin.locator("#topics td", { hasText: "room:lobby" }).waitFor({ state: "detached", ...WAIT });
});
