// permessage-deflate with the unmodified phoenix client on Node's `ws`
// (which offers the extension, as browsers do): herald answers without
// context takeover either way; a broadcast arrives whole at a compressing
// and a plain client, in fewer bytes for the first; and a large push the
// client compresses is rebroadcast to both.
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
import { startHerald, stopServer, until } from "./support.mjs";

/** `ws` (offering permessage-deflate), keeping the server's answer. */
class CompressingWebSocket extends WebSocket {
  constructor(url, protocols, options) {
    super(url, protocols, options);
    this.on("upgrade", (response) => {
      this.answered = response.headers["sec-websocket-extensions"] ?? null;
    });
  }
}

/** `ws` without permessage-deflate. */
class PlainWebSocket extends CompressingWebSocket {
  constructor(url, protocols) {
    super(url, protocols, { perMessageDeflate: false });
  }
}

/** A phoenix client on `room:z`, keeping what it receives. */
async function member(port, transport) {
  const socket = new Socket(`ws://127.0.0.1:${port}/socket`, { transport, params: {} });
  socket.connect();
  const channel = socket.channel("room:z", {});
  const received = [];
  channel.on("quotes", (payload) => received.push(payload));
  channel.on("said", (payload) => received.push(payload));
  await new Promise((resolve, reject) =>
    channel.join().receive("ok", resolve).receive("error", reject).receive("timeout", reject));
  return { socket, channel, received, bytesRead: () => socket.conn._socket.bytesRead };
}

test("a broadcast reaches compressing and plain phoenix clients, in fewer bytes for the first", async () => {
  const dir = mkdtempSync(join(tmpdir(), "herald-deflate-"));
  const configPath = join(dir, "herald.toml");
  writeFileSync(configPath, "[server]\ncompression = true\n");
  const { child, port, api } = await startHerald(configPath, { api: true });
  const zipped = await member(port, CompressingWebSocket);
  const plain = await member(port, PlainWebSocket);
  try {
    assert.equal(
      zipped.socket.conn.answered,
      "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    );
    assert.equal(zipped.socket.conn.extensions, "permessage-deflate");
    assert.equal(plain.socket.conn.answered, null);

    const rows = Array.from({ length: 40 }, (_, i) => ({ symbol: `SYM${i}`, bid: 100 + i, ask: 101 + i }));
    const before = [zipped.bytesRead(), plain.bytesRead()];
    const answer = await fetch(`http://127.0.0.1:${api}/api/broadcast`, {
      method: "POST",
      body: JSON.stringify({ topic: "room:z", event: "quotes", payload: { rows } }),
    });
    assert.equal(answer.status, 200);
    await until(() => zipped.received.length === 1 && plain.received.length === 1, "the broadcast");
    assert.deepEqual(zipped.received[0], { rows });
    assert.deepEqual(plain.received[0], { rows });
    const [zippedBytes, plainBytes] = [zipped.bytesRead() - before[0], plain.bytesRead() - before[1]];
    console.log(`# compression: the broadcast took ${zippedBytes} bytes compressed, ${plainBytes} plain`);
    assert.ok(zippedBytes * 2 < plainBytes, `compressed ${zippedBytes} bytes vs plain ${plainBytes}`);

    // ws compresses what it sends above 1 KiB; herald inflates it.
    const body = "hello ".repeat(500);
    zipped.channel.push("said", { body });
    await until(() => zipped.received.length === 2 && plain.received.length === 2, "the rebroadcast");
    assert.equal(plain.received[1].body, body);
    assert.equal(zipped.received[1].body, body);
  } finally {
    zipped.socket.disconnect();
    plain.socket.disconnect();
    await stopServer(child);
  }
});
