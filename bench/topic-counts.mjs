// How fresh cluster-wide topic counts are: the time from a join on node B
// to its count in node A's API (GET /api/topics/TOPIC), over Redis and over
// NATS, with the default census round (broker.topic_counts_ms = 1000) or
// another (TOPIC_COUNTS_MS).
//
//   node bench/topic-counts.mjs [JOINS]
//
// Starts redis-server and nats-server on free ports and two standalone
// `herald` nodes per broker (target/release/herald; build it first), then
// JOINS times: an unmodified phoenix client joins a fresh topic on B, and
// A's API is polled every 2 ms until it counts the subscriber. Prints the
// delays' min, median, p90 and max per broker. Uses the npm packages of
// tests/js (`npm ci --prefix tests/js` first).

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(new URL("../tests/js/package.json", import.meta.url));
const { Socket } = require("phoenix");
const WebSocket = require("ws");

const joins = Number(process.argv[2] ?? 20);
const roundMs = Number(process.env.TOPIC_COUNTS_MS ?? 1000);
const herald = process.env.HERALD ?? "target/release/herald";
const config = join(mkdtempSync(join(tmpdir(), "herald-counts-")), "herald.toml");
writeFileSync(config, `[broker]\ntopic_counts_ms = ${roundMs}\n`);

const freePort = () =>
  new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForPort(port) {
  for (let i = 0; i < 100; i++) {
    const open = await new Promise((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.on("connect", () => { socket.destroy(); resolve(true); });
      socket.on("error", () => resolve(false));
    });
    if (open) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on ${port}`);
}

async function node(broker, url) {
  const [ws, api] = [await freePort(), await freePort()];
  const child = spawn(herald, [
    "--config", config, "--listen", `127.0.0.1:${ws}`, "--api-listen", `127.0.0.1:${api}`,
    "--no-demo", "--broker", broker, "--broker-url", url, "--loops", "1", "--no-pin",
  ], { stdio: "ignore" });
  await waitForPort(ws);
  await waitForPort(api);
  return { child, ws, api };
}

async function measure(broker, url) {
  const [a, b] = [await node(broker, url), await node(broker, url)];
  await sleep(3 * roundMs); // past the nodes' warm-up
  const socket = new Socket(`ws://127.0.0.1:${b.ws}/socket`, { transport: WebSocket });
  socket.connect();
  const delays = [];
  for (let i = 0; i < joins; i++) {
    const topic = `count:${Date.now()}-${i}`;
    const channel = socket.channel(topic, {});
    const joined = await new Promise((resolve, reject) =>
      channel.join().receive("ok", () => resolve(performance.now())).receive("error", reject));
    for (;;) {
      const answer = await fetch(`http://127.0.0.1:${a.api}/api/topics/${encodeURIComponent(topic)}`);
      const { subscribers } = await answer.json();
      if (subscribers >= 1) break;
      await sleep(2);
    }
    delays.push(performance.now() - joined);
    channel.leave();
    await sleep(Math.random() * roundMs); // joins land anywhere in a round
  }
  socket.disconnect();
  a.child.kill();
  b.child.kill();
  delays.sort((x, y) => x - y);
  const at = (q) => delays[Math.min(delays.length - 1, Math.floor(q * delays.length))].toFixed(0);
  console.log(`${broker}: ${joins} joins, round ${roundMs} ms: join on B to its count at A's API ` +
    `min ${delays[0].toFixed(0)} ms, median ${at(0.5)} ms, p90 ${at(0.9)} ms, max ${at(1)} ms`);
}

const redisPort = await freePort();
const redis = spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", ""], { stdio: "ignore" });
const natsPort = await freePort();
const nats = spawn(process.env.NATS_SERVER ?? "nats-server", ["-a", "127.0.0.1", "-p", String(natsPort)], { stdio: "ignore" });
try {
  await waitForPort(redisPort);
  await waitForPort(natsPort);
  await measure("redis", `redis://127.0.0.1:${redisPort}/`);
  await measure("nats", `nats://127.0.0.1:${natsPort}`);
} finally {
  redis.kill();
  nats.kill();
}
