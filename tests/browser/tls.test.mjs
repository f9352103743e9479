// The demo page over https:// and wss://, in headless Chromium: herald
// serves TLS itself (the test certificate in tests/fixtures/tls, which the
// browser context is told to accept). Two pages chat, and a broadcast from
// the HTTP API reaches both.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import path from "node:path";
import { WAIT, freePort, here, heraldBin, launchChromium } from "./support.mjs";

const fixtures = path.join(here, "../fixtures/tls");
let server;
let browser;
let base;
let apiBase;

before(async () => {
  const [port, apiPort] = [await freePort(), await freePort()];
  base = `https://127.0.0.1:${port}`;
  apiBase = `http://127.0.0.1:${apiPort}`;
  server = spawn(
    heraldBin,
    ["--listen", `127.0.0.1:${port}`, "--api-listen", `127.0.0.1:${apiPort}`, "--loops", "2", "--no-pin",
      "--tls-cert", path.join(fixtures, "cert.pem"), "--tls-key", path.join(fixtures, "key.pem")],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const exited = once(server, "exit");
  await new Promise((resolve, reject) => {
    let log = "";
    server.stderr.setEncoding("utf8");
    server.stderr.on("data", (chunk) => {
      log += chunk;
      if (log.includes("listening") && log.includes(`127.0.0.1:${port}`)) resolve();
    });
    exited.then(([code]) => reject(new Error(`herald exited with ${code} before listening:\n${log}`)));
  });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) server.kill("SIGKILL");
});

async function joinAs(name) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(base + "/");
  await page.fill("#join input[name=name]", name);
  await page.click("#join button");
  await page.getByText(`You joined as ${name}.`).waitFor(WAIT);
  return { context, page };
}

test("two pages chat through the demo page over https and wss", async () => {
  const alice = await joinAs("alice");
  const bob = await joinAs("bob");
  assert.equal(await alice.page.evaluate(() => location.protocol), "https:");
  await alice.page.locator("#who").getByText("alice, bob", { exact: true }).waitFor(WAIT);

  await alice.page.fill("#send input[name=body]", "hello over tls");
  await alice.page.click("#send button");
  await bob.page.getByText("alice: hello over tls").waitFor(WAIT);

  const response = await fetch(apiBase + "/api/broadcast", {
    method: "POST",
    body: JSON.stringify({ topic: "room:lobby", event: "new_msg", payload: { user: "api", body: "to wss pages" } }),
  });
  assert.equal(response.status, 200);
  await alice.page.getByText("api: to wss pages").waitFor(WAIT);
  await bob.page.getByText("api: to wss pages").waitFor(WAIT);
  await alice.context.close();
  await bob.context.close();
});
