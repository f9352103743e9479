// herald driven by the unmodified `phoenix` npm client under Node.js, with
// `ws` as its transport, against `channels-test-server` (tests/src/bin).
//
// Run through `bash tests/run.sh`, which builds the server first; or
// `npm test --prefix tests/js` after `cargo build -p herald-tests`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Socket } from "phoenix";
import WebSocket from "ws";
import { startServer, stopServer, until } from "./support.mjs";

function connect(port, params, options = {}) {
  const socket = new Socket(`ws://127.0.0.1:${port}/socket`, {
    transport: WebSocket,
    params,
    reconnectAfterMs: () => 50,
    rejoinAfterMs: () => 50,
    // Bounds how long a pending push keeps Node running after a test.
    timeout: 2000,
    ...options,
  });
  socket.connect();
  return socket;
}

/** Resolves with the first reply of `push` with `status`. */
function receive(push, status) {
  return new Promise((resolve, reject) => {
    push.receive(status, resolve);
    for (const other of ["ok", "error", "timeout"].filter((s) => s !== status)) {
      push.receive(other, (response) => reject(new Error(`${other}: ${JSON.stringify(response)}`)));
    }
  });
}

test("connect with params, join ok and error, push with reply", async () => {
  const { child, port } = await startServer();
  const socket = connect(port, { token: "secret", user: "ada" });
  try {
    const lobby = socket.channel("room:lobby", {});
    assert.deepEqual(await receive(lobby.join(), "ok"), { user: "ada" });
    const forbidden = socket.channel("room:forbidden", {});
    assert.deepEqual(await receive(forbidden.join(), "error"), { reason: "unauthorized" });
    const unmatched = socket.channel("nowhere", {});
    assert.deepEqual(await receive(unmatched.join(), "error"), { reason: "unmatched topic" });
    assert.deepEqual(await receive(lobby.push("ping", {}), "ok"), { pong: true });
  } finally {
    socket.disconnect();
    await stopServer(child);
  }
});

test("a refused connect never opens", async () => {
  const { child, port } = await startServer();
  const socket = connect(port, { token: "wrong" }, { reconnectAfterMs: () => 60_000 });
  try {
    let errors = 0;
    socket.onError(() => errors++);
    await until(() => errors > 0);
    assert.equal(socket.isConnected(), false);
  } finally {
    socket.disconnect();
    await stopServer(child);
  }
});

test("broadcasts reach the other clients, and leave works", async () => {
  const { child, port } = await startServer();
  const ada = connect(port, { token: "secret", user: "ada" });
  const bob = connect(port, { token: "secret", user: "bob" });
  try {
    const adaRoom = ada.channel("room:chat", {});
    const bobRoom = bob.channel("room:chat", {});
    await receive(adaRoom.join(), "ok");
    await receive(bobRoom.join(), "ok");
    const seen = { ada: [], bob: [] };
    adaRoom.on("new_msg", (payload) => seen.ada.push(payload));
    bobRoom.on("new_msg", (payload) => seen.bob.push(payload));
    adaRoom.push("new_msg", { body: "hello" });
    await until(() => seen.ada.length === 1 && seen.bob.length === 1);
    assert.deepEqual(seen.bob[0], { body: "hello" });

    await receive(bobRoom.leave(), "ok");
    adaRoom.push("new_msg", { body: "bob has gone" });
    await until(() => seen.ada.length === 2);
    // Bob's socket answers a heartbeat round trip without the message.
    assert.deepEqual(seen.bob.length, 1);
  } finally {
    ada.disconnect();
    bob.disconnect();
    await stopServer(child);
  }
});

test("heartbeats are answered and keep the socket open", async () => {
  const { child, port } = await startServer();
  // phoenix.js closes the socket when a heartbeat is still unanswered at
  // the next one: 200 ms leaves room for a busy CI machine.
  const socket = connect(port, { token: "secret" }, { heartbeatIntervalMs: 200 });
  try {
    let heartbeatReplies = 0;
    socket.onMessage(({ topic, event }) => {
      if (topic === "phoenix" && event === "phx_reply") heartbeatReplies++;
    });
    let closes = 0;
    socket.onClose(() => closes++);
    await until(() => heartbeatReplies >= 4);
    assert.equal(closes, 0);
    assert.equal(socket.isConnected(), true);
  } finally {
    socket.disconnect();
    await stopServer(child);
  }
});

test("the client reconnects and rejoins after the server restarts", async () => {
  let { child, port } = await startServer();
  const socket = connect(port, { token: "secret", user: "ada" });
  try {
    const room = socket.channel("room:restart", {});
    let joins = 0;
    room.join().receive("ok", () => joins++);
    await until(() => joins === 1);

    let closes = 0;
    socket.onClose(() => closes++);
    await stopServer(child);
    await until(() => closes > 0);
    ({ child } = await startServer(port));
    await until(() => joins === 2);

    const received = [];
    room.on("new_msg", (payload) => received.push(payload));
    room.push("new_msg", { body: "back again" });
    await until(() => received.length === 1);
    assert.deepEqual(received[0], { body: "back again" });
  } finally {
    socket.disconnect();
    await stopServer(child);
  }
});
