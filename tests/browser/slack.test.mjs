// Drives the Slack clone example (engine/examples/slack, the seeds' 003
// app) in two headless Chromium pages with the unmodified phoenix client:
// both are online (Presence), a message in a room the other user is not
// looking at raises that room's unread badge (through the user channel's
// server-side subscription, while the client is joined to another room), a
// mention reaches the mentioned user, and a closed page leaves the online
// list. A screenshot is saved to tests/browser/artifacts/slack.png.
//
// Needs Debian's chromium (/usr/bin/chromium, or CHROMIUM_PATH) and the
// example (SLACK_BIN, default target/debug/examples/slack).

import { test, before, after } from "node:test";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { WAIT, artifacts, here, launchChromium } from "./support.mjs";

const slackBin = process.env.SLACK_BIN ?? path.join(here, "../../target/debug/examples/slack");

let server;
let browser;
let base;

before(async () => {
  server = spawn(slackBin, ["--port", "0"], { stdio: ["ignore", "pipe", "inherit"] });
  base = await new Promise((resolve, reject) => {
    let out = "";
    server.on("exit", (code) => reject(new Error(`slack example exited with ${code}`)));
    server.stdout.setEncoding("utf8");
    server.stdout.on("data", (chunk) => {
      out += chunk;
      const match = out.match(/open (http:\/\/127\.0\.0\.1:\d+)\//);
      if (match) resolve(match[1]);
    });
  });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  server?.kill("SIGKILL");
});

async function open(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/?name=${name}`);
  await page.locator("body[data-room=general]").waitFor(WAIT);
  return { context, page };
}

async function say(page, body) {
  await page.fill("#send input[name=body]", body);
  await page.click("#send button");
}

test("rooms, unread badges, mentions and who is online", async () => {
  const ada = await open("ada");
  const bob = await open("bob");
  for (const { page } of [ada, bob]) {
    await page.locator("body[data-online='ada,bob']").waitFor(WAIT);
  }
  // bob looks at #random; ada stays in #general.
  await bob.page.click("button[data-room=random]");
  await bob.page.locator("body[data-room=random]").waitFor(WAIT);
  await say(bob.page, "hello random");
  await bob.page.getByText("bob: hello random").waitFor(WAIT);
  // ada is not looking at #random: its badge shows one unread message.
  await ada.page.locator("button[data-room=random] .badge").getByText("1", { exact: true }).waitFor(WAIT);
  // A mention reaches bob (and #general's badge rises on his side).
  await say(ada.page, "hi @bob");
  await ada.page.getByText("ada: hi @bob").waitFor(WAIT);
  await bob.page.getByText("@ ada in #general: hi @bob").waitFor(WAIT);
  await bob.page.locator("button[data-room=general] .badge").getByText("1", { exact: true }).waitFor(WAIT);
  // Opening #random clears ada's badge and shows what is said there next.
  await ada.page.click("button[data-room=random]");
  await ada.page.locator("body[data-room=random]").waitFor(WAIT);
  await say(bob.page, "welcome ada");
  await ada.page.getByText("bob: welcome ada").waitFor(WAIT);
  mkdirSync(artifacts, { recursive: true });
  await ada.page.screenshot({ path: path.join(artifacts, "slack.png") });
  // A closed page leaves the online list.
  await bob.context.close();
  await ada.page.locator("body[data-online='ada']").waitFor(WAIT);
  await ada.context.close();
});
