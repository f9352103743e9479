// A deploy, as the unmodified phoenix client sees it: two `herald` nodes
// behind a TCP balancer (the way a load balancer fronts a cluster), every
// client on the first node; SIGTERM drains that node with 1012 in batches
// spread over its drain period, and each client reconnects and rejoins
// through the balancer, which now reaches only the second node. No client
// may be without a joined channel for longer than the drain period, and the
// closes must be spread over it (not a reconnect storm).
//
// Run through `bash tests/run.sh` (which builds `herald` first), or
// `npm test --prefix tests/js` after `cargo build -p herald`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { writeFileSync, mkdtempSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { startHerald, until } from "./support.mjs";

const CLIENTS = 40;
const DRAIN_SECS = 2;

/** A TCP balancer on a free port: each connection goes to the first
 * backend that accepts it, as a health-checked load balancer would. */
async function startBalancer(backends) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => client.destroy());
    client.pause();
    const tryBackend = (index) => {
      if (index >= backends.length) return client.destroy();
      const upstream = net.connect(backends[index], "127.0.0.1");
      upstream.once("error", () => {
        upstream.destroy();
        tryBackend(index + 1);
      });
      upstream.once("connect", () => {
        upstream.removeAllListeners("error");
        sockets.add(upstream);
        upstream.on("close", () => sockets.delete(upstream));
        upstream.on("error", () => client.destroy());
        client.on("close", () => upstream.destroy());
        upstream.on("close", () => client.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    tryBackend(0);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: server.address().port,
    close() {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

test("a draining node's phoenix clients rejoin through the balancer within the drain period", async () => {
  const dir = mkdtempSync(join(tmpdir(), "herald-drain-"));
  const configPath = join(dir, "herald.toml");
  writeFileSync(configPath, `[server]\ndrain_secs = ${DRAIN_SECS}\nshutdown_timeout_secs = 1\n`);
  const first = await startHerald(configPath);
  const second = await startHerald(configPath);
  const balancer = await startBalancer([first.port, second.port]);
  const clients = [];
  try {
    for (let i = 0; i < CLIENTS; i++) {
      const client = { joins: 0, closeCodes: [], lostAt: null, gaps: [] };
      const socket = new Socket(`ws://127.0.0.1:${balancer.port}/socket`, {
        transport: WebSocket,
        params: { name: `user${i}` },
        reconnectAfterMs: () => 50,
        rejoinAfterMs: () => 50,
        timeout: 2000,
      });
      socket.onClose((event) => {
        client.closeCodes.push({ code: event.code, at: Date.now() });
        client.lostAt ??= Date.now();
      });
      socket.connect();
      const channel = socket.channel("room:lobby", {});
      channel.onError(() => {
        client.lostAt ??= Date.now();
      });
      channel.on("phx_reply", () => {});
      channel.join().receive("ok", () => {
        client.joins += 1;
        if (client.lostAt !== null) {
          client.gaps.push(Date.now() - client.lostAt);
          client.lostAt = null;
        }
      });
      client.socket = socket;
      clients.push(client);
    }
    await until(() => clients.every((c) => c.joins === 1), "every first join", 10_000);

    const exited = once(first.child, "exit");
    const drainStarted = Date.now();
    first.child.kill("SIGTERM");
    await until(() => clients.every((c) => c.joins === 2), "every rejoin", (DRAIN_SECS + 5) * 1000);
    const [code] = await exited;
    assert.equal(code, 0, "the drained node exits 0");

    const closes = clients.flatMap((c) => c.closeCodes);
    assert.equal(closes.length, CLIENTS, "each client lost its connection once");
    assert.ok(closes.every((c) => c.code === 1012), `close codes: ${closes.map((c) => c.code)}`);
    const spread = Math.max(...closes.map((c) => c.at)) - Math.min(...closes.map((c) => c.at));
    assert.ok(spread >= DRAIN_SECS * 1000 * 0.5, `closes spread over ${spread} ms`);
    const gaps = clients.flatMap((c) => c.gaps);
    const longest = Math.max(...gaps);
    assert.ok(longest < DRAIN_SECS * 1000, `longest time without a joined channel: ${longest} ms`);
    assert.ok(Date.now() - drainStarted < (DRAIN_SECS + 5) * 1000);
    console.log(
      `drain: ${CLIENTS} clients, closes spread over ${spread} ms, longest gap ${longest} ms, ` +
        `median gap ${gaps.sort((a, b) => a - b)[gaps.length >> 1]} ms`,
    );
  } finally {
    for (const client of clients) client.socket?.disconnect();
    balancer.close();
    first.child.kill("SIGKILL");
    second.child.kill("SIGKILL");
  }
});
