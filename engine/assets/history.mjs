// herald's history helper for the unmodified phoenix client: a channel that
// remembers its place in the topic's stream and asks for what it missed
// every time it joins again (after a dropped connection, a sleeping
// laptop, a deploy).
//
// The contract (README, "History and recovery"):
// - each broadcast of a topic with history carries its offset in the
//   message ref, "@<offset>", which phoenix hands to `channel.on`
//   callbacks as their second argument;
// - the join payload may carry `recover: {epoch, offset}`; the join reply
//   then holds `history: {epoch, offset, recovered, reason?}`, and the
//   missed broadcasts follow the reply, in order, before any live one;
// - `recovered: false` after asking means what was missed is gone (too
//   many, expired, or the stream's storage was lost): refetch.
//
//   import { Socket } from "/phoenix.mjs";
//   import { recoverableChannel } from "/history.mjs";
//   const channel = recoverableChannel(socket, "room:lobby", { name }, {
//     onRecovery: ({ recovered }, { asked }) => { if (asked && !recovered) refetch(); },
//   });
//   channel.on("new_msg", render);
//   channel.join();

/** The offset a message ref carries ("@17" -> 17), or null. */
export function offsetOf(ref) {
  if (typeof ref !== "string" || !ref.startsWith("@")) return null;
  const offset = Number(ref.slice(1));
  return Number.isSafeInteger(offset) && offset >= 0 ? offset : null;
}

/**
 * A phoenix channel on `topic` that keeps its position in the topic's
 * history and recovers from it whenever it (re)joins.
 *
 * `params`: the join payload, or a function returning it (called on every
 * join, as phoenix does). `onRecovery(history, { asked })` is called after
 * each successful join with the reply's `history` summary; `asked` says
 * whether this join asked to recover.
 *
 * The returned channel is the phoenix one; `channel.position()` gives the
 * last `{epoch, offset}` seen (null before the first join).
 */
export function recoverableChannel(socket, topic, params = {}, { onRecovery } = {}) {
  let position = null;
  let asked = false;
  const payload = () => {
    const base = typeof params === "function" ? params() : params;
    asked = position !== null;
    return asked ? { ...base, recover: { ...position } } : base;
  };
  const channel = socket.channel(topic, payload);

  // Every message passes here before its `on` callbacks: track offsets.
  const passOn = channel.onMessage.bind(channel);
  channel.onMessage = (event, message, ref, joinRef) => {
    const offset = offsetOf(ref);
    if (offset !== null && position !== null && offset > position.offset) {
      position = { epoch: position.epoch, offset };
    }
    return passOn(event, message, ref, joinRef);
  };

  channel.joinPush.receive("ok", (response) => {
    const history = response && response.history;
    if (!history) return;
    if (typeof history.epoch !== "string") {
      // The store did not answer: no position to keep; the next join
      // starts afresh, and the app is told to refetch.
      position = null;
    } else if (!(asked && history.recovered === true && position !== null
      && position.epoch === history.epoch)) {
      // Not recovered: the stream starts again from where it is now.
      // (Recovered: the missed messages follow and move the position on.)
      position = { epoch: history.epoch, offset: history.offset };
    }
    if (onRecovery) onRecovery(history, { asked });
  });

  channel.position = () => (position ? { ...position } : null);
  return channel;
}
