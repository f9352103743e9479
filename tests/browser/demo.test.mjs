// Drives herald's demo chat page (served at `/` by the standalone server)
// in two headless Chromium pages with the unmodified phoenix client: both
// join, each sees the other's join notice and messages, a broadcast from
// the HTTP API reaches both, a dropped connection recovers what it missed, a closed page shows up as a leave notice, and
// SIGTERM stops the server with exit code 0. A screenshot is saved to
// tests/browser/artifacts/demo.png.
//
// Needs Debian's chromium (/usr/bin/chromium, or CHROMIUM_PATH) and the
// herald binary (HERALD_BIN, default target/debug/herald).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { WAIT, artifacts, freePort, heraldBin, launchChromium } from "./support.mjs";


let server;
let serverExit;
let browser;
let base;
let apiBase;

// Resolves once the server logs that it listens; rejects if it exits first.
function startHerald(port, apiPort) {
  const child = spawn(
    heraldBin,
    // With permessage-deflate, which Chromium negotiates on every socket.
    ["--listen", `127.0.0.1:${port}`, "--api-listen", `127.0.0.1:${apiPort}`, "--loops", "2", "--no-pin",
      "--compression"],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const exited = once(child, "exit");
  const ready = new Promise((resolve, reject) => {
    let log = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      log += chunk;
      if (log.includes("listening") && log.includes(`127.0.0.1:${port}`)) resolve();
    });
    exited.then(([code]) => reject(new Error(`herald exited with ${code} before listening:\n${log}`)));
  });
  return { child, ready, exited };
}

before(async () => {
  const [port, apiPort] = [await freePort(), await freePort()];
  base = `http://127.0.0.1:${port}`;
  apiBase = `http://127.0.0.1:${apiPort}`;
  const started = startHerald(port, apiPort);
  server = started.child;
  serverExit = started.exited;
  await started.ready;
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) server.kill("SIGKILL");
});

async function joinAs(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base + "/");
  await page.fill("#join input[name=name]", name);
  await page.click("#join button");
  await page.getByText(`You joined as ${name}.`).waitFor(WAIT);
  return { context, page };
}

async function say(page, body) {
  await page.fill("#send input[name=body]", body);
  await page.click("#send button");
}

test("two pages chat through the demo page", async () => {
  const alice = await joinAs("alice");
  const bob = await joinAs("bob");
  await alice.page.getByText("bob joined").waitFor(WAIT);
  // The online list, from the phoenix client's Presence class.
  const online = (page) => page.locator("#who");
  await online(alice.page).getByText("alice, bob", { exact: true }).waitFor(WAIT);
  await online(bob.page).getByText("alice, bob", { exact: true }).waitFor(WAIT);

  await say(alice.page, "hello from alice");
  await bob.page.getByText("alice: hello from alice").waitFor(WAIT);
  await alice.page.getByText("alice: hello from alice").waitFor(WAIT);

  await say(bob.page, "hi alice");
  await alice.page.getByText("bob: hi alice").waitFor(WAIT);

  // Chromium offers permessage-deflate; herald answers without context
  // takeover, and a long broadcast reaches both pages compressed.
  const extensions = await alice.page.evaluate(() => new Promise((resolve) => {
    const ws = new WebSocket(`ws://${location.host}/socket/websocket?vsn=2.0.0`);
    ws.onopen = () => { resolve(ws.extensions); ws.close(); };
  }));
  assert.equal(extensions, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
  const body = "from the backend, " + "and a long story ".repeat(30);
  const response = await fetch(apiBase + "/api/broadcast", {
    method: "POST",
    body: JSON.stringify({ topic: "room:lobby", event: "new_msg", payload: { user: "api", body } }),
  });
  assert.equal(response.status, 200);
  await alice.page.getByText("api: from the backend").waitFor(WAIT);
  await bob.page.getByText("api: from the backend").waitFor(WAIT);

  // Bob's connection drops while alice writes; his channel joins again
  // from its last offset (engine/assets/history.mjs) and gets the message.
  await bob.page.evaluate(() => window.demo.socket.disconnect());
  await bob.page.waitForFunction(() => !window.demo.socket.isConnected());
  await say(alice.page, "while you were away");
  await alice.page.getByText("alice: while you were away").waitFor(WAIT);
  await bob.page.evaluate(() => window.demo.socket.connect());
  await bob.page.getByText("Reconnected and caught up.").waitFor(WAIT);
  await bob.page.getByText("alice: while you were away").waitFor(WAIT);

  mkdirSync(artifacts, { recursive: true });
  await alice.page.screenshot({ path: path.join(artifacts, "demo.png"), fullPage: true });

  await bob.context.close();
  // (The first "bob left" was the dropped connection.)
  await alice.page.getByText("bob left").nth(1).waitFor(WAIT);
  await online(alice.page).getByText("alice", { exact: true }).waitFor(WAIT);
  await alice.context.close();
});

test("SIGTERM stops the server with exit code 0", async () => {
  server.kill("SIGTERM");
  const [code, signal] = await serverExit;
  assert.equal(signal, null);
  assert.equal(code, 0);
});
