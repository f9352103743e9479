// The unmodified phoenix client over wss:// (Node's `ws`, trusting the test
// certificate in tests/fixtures/tls): herald serves TLS in its event loops;
// a join, a broadcast from the HTTP API and a rebroadcast push all travel
// encrypted.
//
// Run through `bash tests/run.sh` (which builds `herald` first), or
// `npm test --prefix tests/js` after `cargo build -p herald`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { startHerald, stopServer, until } from "./support.mjs";

const fixtures = fileURLToPath(new URL("../fixtures/tls/", import.meta.url));
const ca = readFileSync(join(fixtures, "cert.pem"));

/** `ws` trusting the test certificate. */
class TrustingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { ca });
  }
}

test("phoenix clients join, receive and push over wss", async () => {
  const dir = mkdtempSync(join(tmpdir(), "herald-tls-"));
  const configPath = join(dir, "herald.toml");
  writeFileSync(
    configPath,
    `[server]\ntls_cert = "${join(fixtures, "cert.pem")}"\ntls_key = "${join(fixtures, "key.pem")}"\n`,
  );
  const { child, port, api } = await startHerald(configPath, { api: true });
  const sockets = [];
  try {
    const received = [];
    for (const name of ["ada", "bob"]) {
      const socket = new Socket(`wss://127.0.0.1:${port}/socket`, { transport: TrustingWebSocket });
      socket.connect();
      sockets.push(socket);
      const channel = socket.channel("room:tls", { name });
      channel.on("new_msg", (payload) => received.push([name, payload.body]));
      await new Promise((resolve, reject) =>
        channel.join().receive("ok", resolve).receive("error", reject).receive("timeout", reject));
      if (name === "ada") sockets.ada = channel;
    }
    const answer = await fetch(`http://127.0.0.1:${api}/api/broadcast`, {
      method: "POST",
      body: JSON.stringify({ topic: "room:tls", event: "new_msg", payload: { body: "from the API" } }),
    });
    assert.equal(answer.status, 200);
    sockets.ada.push("new_msg", { body: "from ada" });
    await until(() => received.length === 4, "two messages at two clients");
    assert.deepEqual(
      received.map(([name, body]) => `${name}: ${body}`).sort(),
      ["ada: from ada", "ada: from the API", "bob: from ada", "bob: from the API"],
    );
  } finally {
    for (const socket of sockets) socket.disconnect();
    await stopServer(child);
  }
});
