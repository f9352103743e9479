// Recovery after a dropped connection with the unmodified phoenix client
// and herald's history helper (engine/assets/history.mjs): a client whose
// socket is cut while 50 messages are published joins again from its last
// offset and gets exactly those 50, in order, then live ones; a client too
// far behind is told it cannot recover.
//
// Run through `bash tests/run.sh` (which builds `herald` first), or
// `npm test --prefix tests/js` after `cargo build -p herald`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { offsetOf, recoverableChannel } from "../../engine/assets/history.mjs";
import { startHerald, stopServer, until } from "./support.mjs";

const CONFIG = `
[[channels]]
pattern = "news:*"
history_size = 100
history_ttl_ms = 60000
`;

function connect(port, reconnectAfterMs = 50) {
  const socket = new Socket(`ws://127.0.0.1:${port}/socket`, {
    transport: WebSocket,
    reconnectAfterMs: () => reconnectAfterMs,
    rejoinAfterMs: () => 50,
    timeout: 2000,
  });
  socket.connect();
  return socket;
}

async function publish(api, topic, from, to) {
  const broadcasts = [];
  for (let n = from; n <= to; n++) broadcasts.push({ topic, event: "story", payload: { n } });
  const response = await fetch(`http://127.0.0.1:${api}/api/broadcast`, {
    method: "POST",
    body: JSON.stringify({ broadcasts }),
  });
  assert.equal(response.status, 200, await response.text());
}

async function startNewsServer() {
  const dir = mkdtempSync(join(tmpdir(), "herald-history-"));
  const configPath = join(dir, "herald.toml");
  writeFileSync(configPath, CONFIG);
  return startHerald(configPath, { api: true });
}

test("a rejoin after a dropped connection recovers exactly what was missed", async () => {
  const { child, port, api } = await startNewsServer();
  // The client reconnects by itself, half a second after its TCP
  // connection drops.
  const socket = connect(port, 500);
  try {
    const seen = [];
    const recoveries = [];
    const channel = recoverableChannel(socket, "news:world", {}, {
      onRecovery: (history, { asked }) => recoveries.push({ ...history, asked }),
    });
    channel.on("story", (payload, ref) => seen.push({ n: payload.n, offset: offsetOf(ref) }));
    channel.join();
    await until(() => recoveries.length === 1, "the first join");
    assert.equal(recoveries[0].asked, false);
    await publish(api, "news:world", 1, 3);
    await until(() => seen.length === 3, "the first three stories");

    // The TCP connection drops (no close handshake); 50 stories are
    // published before the client reconnects.
    socket.conn.terminate();
    await until(() => !socket.isConnected(), "the drop");
    await publish(api, "news:world", 4, 53);
    await until(() => recoveries.length === 2, "the reconnect and rejoin");
    assert.equal(recoveries[1].asked, true);
    assert.equal(recoveries[1].recovered, true, JSON.stringify(recoveries[1]));
    await until(() => seen.length === 53, "the missed stories");
    await publish(api, "news:world", 54, 54);
    await until(() => seen.length === 54, "a live story");
    assert.deepEqual(seen.map((s) => s.n), Array.from({ length: 54 }, (_, i) => i + 1));
    assert.deepEqual(seen.map((s) => s.offset), Array.from({ length: 54 }, (_, i) => i + 1));
    assert.equal(channel.position().offset, 54);
  } finally {
    socket.disconnect();
    await stopServer(child);
  }
});

test("a client too far behind is told, and starts again from the top", async () => {
  const { child, port, api } = await startNewsServer();
  const socket = connect(port);
  try {
    const seen = [];
    const recoveries = [];
    const channel = recoverableChannel(socket, "news:sport", {}, {
      onRecovery: (history, { asked }) => recoveries.push({ ...history, asked }),
    });
    channel.on("story", ({ n }) => seen.push(n));
    channel.join();
    await until(() => recoveries.length === 1, "the first join");
    socket.disconnect();
    await until(() => !socket.isConnected(), "the disconnect");
    // More than the topic keeps (100).
    await publish(api, "news:sport", 1, 150);
    socket.connect();
    await until(() => recoveries.length === 2, "the rejoin");
    assert.equal(recoveries[1].recovered, false);
    assert.equal(recoveries[1].reason, "gone");
    assert.equal(channel.position().offset, 150);
    await publish(api, "news:sport", 151, 151);
    await until(() => seen.length === 1, "the live story");
    assert.deepEqual(seen, [151]);
  } finally {
    socket.disconnect();
    await stopServer(child);
  }
});
