// herald's Presence driven by the unmodified phoenix npm client and its
// `Presence` class, against `channels-test-server` (its `lobby:*` channel
// tracks each user, keyed by the `user` connect param).
//
// Run through `bash tests/run.sh`, or `npm test --prefix tests/js` after
// `cargo build -p herald-tests`.

import { test } from "node:test";
import assert from "node:assert/strict";
import { Presence, Socket } from "phoenix";
import WebSocket from "ws";
import { startServer, stopServer, until } from "./support.mjs";

/** A client of `topic` as `user`, with a phoenix.js Presence on it. */
function member(port, user, topic, device) {
  const socket = new Socket(`ws://127.0.0.1:${port}/socket`, {
    transport: WebSocket,
    params: { token: "secret", user },
    reconnectAfterMs: () => 50,
    rejoinAfterMs: () => 50,
    timeout: 2000,
  });
  socket.connect();
  const channel = socket.channel(topic, { device });
  const presence = new Presence(channel);
  const joined = new Promise((resolve, reject) =>
    channel.join().receive("ok", resolve).receive("error", reject),
  );
  return { socket, channel, presence, joined };
}

/** The Presence's list as {key: [meta fields without refs]}, sorted. */
function listed(presence) {
  const out = {};
  presence.list((key, { metas }) => {
    out[key] = metas.map(({ device, status }) => `${device}/${status}`).sort();
  });
  return out;
}

function push(channel, event, payload) {
  return new Promise((resolve, reject) =>
    channel.push(event, payload).receive("ok", resolve).receive("error", reject),
  );
}

test("two users see each other; tabs, updates, leaves and disconnects reach every list", async () => {
  const { child, port } = await startServer();
  const members = [];
  try {
    const ada = member(port, "ada", "lobby:1", "phone");
    members.push(ada);
    await ada.joined;
    await until(() => JSON.stringify(listed(ada.presence)) === JSON.stringify({ ada: ["phone/online"] }),
      "ada sees herself");
    const bob = member(port, "bob", "lobby:1", "laptop");
    members.push(bob);
    await bob.joined;
    const both = { ada: ["phone/online"], bob: ["laptop/online"] };
    await until(() => JSON.stringify(listed(ada.presence)) === JSON.stringify(both), "ada sees bob");
    await until(() => JSON.stringify(listed(bob.presence)) === JSON.stringify(both), "bob sees ada");

    // A second tab of ada's: one key, two metas, with distinct refs.
    const adaTab = member(port, "ada", "lobby:1", "tablet");
    members.push(adaTab);
    await adaTab.joined;
    const tabs = { ada: ["phone/online", "tablet/online"], bob: ["laptop/online"] };
    await until(() => JSON.stringify(listed(bob.presence)) === JSON.stringify(tabs), "bob sees two tabs");
    const refs = [];
    bob.presence.list((key, { metas }) => key === "ada" && refs.push(...metas.map((m) => m.phx_ref)));
    assert.equal(new Set(refs).size, 2);

    // An update: the meta changes in place for everyone.
    const reply = await push(adaTab.channel, "status", { device: "tablet", status: "away" });
    assert.deepEqual(reply, { updated: true });
    const away = { ada: ["phone/online", "tablet/away"], bob: ["laptop/online"] };
    await until(() => JSON.stringify(listed(bob.presence)) === JSON.stringify(away), "bob sees the update");
    await until(() => JSON.stringify(listed(ada.presence)) === JSON.stringify(away), "ada sees the update");

    // A leave of the channel, then a disconnect, each remove one meta.
    await new Promise((resolve) => adaTab.channel.leave().receive("ok", resolve));
    const oneTab = { ada: ["phone/online"], bob: ["laptop/online"] };
    await until(() => JSON.stringify(listed(bob.presence)) === JSON.stringify(oneTab), "bob sees the leave");
    ada.socket.disconnect();
    await until(() => JSON.stringify(listed(bob.presence)) === JSON.stringify({ bob: ["laptop/online"] }),
      "bob sees the disconnect");
  } finally {
    for (const m of members) m.socket.disconnect();
    await stopServer(child);
  }
});

test("after a server restart, a rejoin gets a fresh state with no ghosts", async () => {
  let server = await startServer();
  const port = server.port;
  const ada = member(port, "ada", "lobby:restart", "phone");
  const bob = member(port, "bob", "lobby:restart", "laptop");
  try {
    await Promise.all([ada.joined, bob.joined]);
    const both = { ada: ["phone/online"], bob: ["laptop/online"] };
    await until(() => JSON.stringify(listed(ada.presence)) === JSON.stringify(both), "before the restart");
    const refsBefore = [];
    ada.presence.list((_, { metas }) => refsBefore.push(...metas.map((m) => m.phx_ref)));

    await stopServer(server.child);
    // bob does not come back: nobody may still list him afterwards.
    bob.socket.disconnect();
    server = await startServer(port);
    await until(() => JSON.stringify(listed(ada.presence)) === JSON.stringify({ ada: ["phone/online"] }),
      "ada rejoined and sees only herself");
    const refsAfter = [];
    ada.presence.list((_, { metas }) => refsAfter.push(...metas.map((m) => m.phx_ref)));
    assert.ok(refsAfter.every((ref) => !refsBefore.includes(ref)), "fresh refs");
  } finally {
    ada.socket.disconnect();
    bob.socket.disconnect();
    await stopServer(server.child);
  }
});
