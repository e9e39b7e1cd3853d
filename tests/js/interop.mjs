// Drives a collab server with the official socket.io-client v4, as a browser app would.
//
//   COLLAB_URL=http://127.0.0.1:8000 COLLAB_TOKEN_ALICE=... COLLAB_TOKEN_BOB=... \
//   COLLAB_TOKEN_BAD=... node tests/js/interop.mjs
//
// Prints one JSON line {ok, passed: [name], failed: [{name, error}]} and exits 1 if any
// check failed (2 on a usage error or when everything hangs). Run by tests/test_js_interop.py.

import { deepStrictEqual as eq, ok as assert } from "node:assert/strict";
import { io } from "socket.io-client";

const TIMEOUT_MS = 5000;
const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`missing environment variable ${name}`);
    process.exit(2);
  }
  return value;
};
const url = env("COLLAB_URL");
const tokens = { alice: env("COLLAB_TOKEN_ALICE"), bob: env("COLLAB_TOKEN_BOB"), bad: env("COLLAB_TOKEN_BAD") };

const summary = { ok: false, passed: [], failed: [] };
const sockets = [];

function finish(code) {
  summary.ok = summary.failed.length === 0 && code === 0;
  console.log(JSON.stringify(summary));
  for (const socket of sockets) socket.disconnect();
  process.exit(code || (summary.ok ? 0 : 1));
}
setTimeout(() => {
  summary.failed.push({ name: "overall", error: "interop checks did not finish in 60 s" });
  finish(2);
}, 60_000).unref();

async function check(name, fn) {
  try {
    await fn();
    summary.passed.push(name);
  } catch (err) {
    summary.failed.push({ name, error: String(err && err.stack ? err.stack : err) });
  }
}

// -- connecting ------------------------------------------------------------------------

function options(token, extra = {}) {
  // forceNew: one Manager per socket, like separate browser tabs
  return { auth: token === undefined ? undefined : { token }, transports: ["websocket"],
           reconnection: false, forceNew: true, timeout: TIMEOUT_MS, ...extra };
}

function connect(token, extra) {
  const socket = io(url, options(token, extra));
  sockets.push(socket);
  const box = inbox(socket);
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve({ socket, box }));
    socket.once("connect_error", reject);
  });
}

function refused(token) {
  const socket = io(url, options(token));
  sockets.push(socket);
  return new Promise((resolve, reject) => {
    socket.once("connect", () => reject(new Error("connection was accepted")));
    socket.once("connect_error", resolve);
  });
}

// Every server event a socket receives, for checks to await (next) or inspect (pending).
function inbox(socket) {
  const queues = new Map();
  const waiters = new Map();
  const list = (map, event) => map.get(event) ?? map.set(event, []).get(event);
  socket.onAny((event, payload) => {
    const waiting = list(waiters, event);
    if (waiting.length) waiting.shift()(payload);
    else list(queues, event).push(payload);
  });
  return {
    next(event, ms = TIMEOUT_MS) {
      const queued = list(queues, event);
      if (queued.length) return Promise.resolve(queued.shift());
      return new Promise((resolve, reject) => {
        const waiting = list(waiters, event);
        const waiter = (payload) => { clearTimeout(timer); resolve(payload); };
        const timer = setTimeout(() => {
          waiting.splice(waiting.indexOf(waiter), 1);
          reject(new Error(`no ${event} event within ${ms} ms`));
        }, ms);
        waiting.push(waiter);
      });
    },
    pending(event) {
      return list(queues, event).splice(0);
    },
  };
}

// -- calling ---------------------------------------------------------------------------

const call = (socket, event, data) => socket.timeout(TIMEOUT_MS).emitWithAck(event, data);

async function ok(socket, event, data) {
  const ack = await call(socket, event, data);
  assert(ack && ack.ok === true, `${event} failed: ${JSON.stringify(ack)}`);
  return ack;
}

// `code` may be a list: any one of them
async function fails(client, event, data, code) {
  const ack = await call(client.socket, event, data);
  assert(ack && ack.ok === false, `${event} should fail: ${JSON.stringify(ack)}`);
  assert([code].flat().includes(ack.error.code), `${event}: ${JSON.stringify(ack.error)}`);
  assert(typeof ack.error.message === "string" && ack.error.message.length > 0);
  eq(await client.box.next("error"), ack.error); // the same SocketError, as an event
  return ack.error;
}

// -- the checks ------------------------------------------------------------------------

let alice, bob, documentId, chatId;

await check("connect_error carries {code: UNAUTHORIZED} for a bad token", async () => {
  const err = await refused(tokens.bad);
  assert(err.message.length > 0);
  eq(err.data, { code: "UNAUTHORIZED", message: err.message });
});

await check("connect_error carries {code: UNAUTHORIZED} without a token", async () => {
  const err = await refused(undefined);
  eq(err.data.code, "UNAUTHORIZED");
});

await check("connect with auth: {token}", async () => {
  alice = await connect(tokens.alice);
  bob = await connect(tokens.bob);
  assert(alice.socket.connected && bob.socket.connected);
});
if (!alice || !bob) finish(1);

await check("documents:create answers {ok, document} by emitWithAck", async () => {
  const { document } = await ok(alice.socket, "documents:create", { title: "Plan", content: "v0" });
  eq([document.version, document.content, document.created_by], [0, "v0", "alice"]);
  documentId = document.id;
});

await check("documents:share and documents:join announce user:joined", async () => {
  const { acl } = await ok(alice.socket, "documents:share",
                           { document_id: documentId, user_id: "bob", role: "editor" });
  eq(acl, { alice: "owner", bob: "editor" });
  eq((await ok(alice.socket, "documents:join", { document_id: documentId })).users, ["alice"]);
  const joined = await ok(bob.socket, "documents:join", { document_id: documentId });
  eq(joined.document.content, "v0");
  eq([...joined.users].sort(), ["alice", "bob"]);
  eq(await alice.box.next("user:joined"), { user_id: "bob", document_id: documentId });
});

await check("documents:update is acked and broadcast to the others as documents:updated", async () => {
  const { document } = await ok(bob.socket, "documents:update",
                                { document_id: documentId, content: "v1", version: 1 });
  eq([document.version, document.updated_by], [1, "bob"]);
  eq(await alice.box.next("documents:updated"), { document, user_id: "bob" });
  eq(bob.box.pending("documents:updated"), []); // not to the sender
});

await check("a stale documents:update fails with VERSION_CONFLICT and an error event", async () => {
  const error = await fails(alice, "documents:update",
                            { document_id: documentId, content: "mine", version: 1 },
                            "VERSION_CONFLICT");
  eq(error.details.current_version, 1);
  eq(error.details.document.content, "v1");
});

await check("chat:create and chat:join", async () => {
  const { chat } = await ok(alice.socket, "chat:create", { title: "General", members: ["bob"] });
  eq(chat.members, ["alice", "bob"]);
  chatId = chat.id;
  const joined = await ok(alice.socket, "chat:join", { chat_id: chatId });
  eq(joined.messages, []);
  await ok(bob.socket, "chat:join", { chat_id: chatId });
  eq(await alice.box.next("user:joined"), { user_id: "bob", chat_id: chatId });
});

await check("chat:message is broadcast to the whole room, sender included", async () => {
  const { message } = await ok(alice.socket, "chat:message", { chat_id: chatId, content: "hello" });
  eq([message.seq, message.user_id, message.content], [1, "alice", "hello"]);
  eq(await alice.box.next("chat:message"), { message });
  eq(await bob.box.next("chat:message"), { message });
});

await check("a repeated client_id returns the stored message and is not broadcast again", async () => {
  const first = await ok(bob.socket, "chat:message", { chat_id: chatId, content: "hi", client_id: "c-1" });
  const again = await ok(bob.socket, "chat:message", { chat_id: chatId, content: "hi", client_id: "c-1" });
  eq(again.message, first.message);
  eq(first.message.client_id, "c-1");
  eq(await alice.box.next("chat:message"), { message: first.message });
  await ok(alice.socket, "chat:typing", { chat_id: chatId, typing: false }); // a round trip
  eq(alice.box.pending("chat:message"), []);
});

await check("chat:history and chat:join with since_seq", async () => {
  const history = await ok(alice.socket, "chat:history", { chat_id: chatId });
  eq(history.messages.map((m) => [m.seq, m.content]), [[1, "hello"], [2, "hi"]]);
  eq(history.has_more, false);
  const rejoined = await ok(bob.socket, "chat:join", { chat_id: chatId, since_seq: 1 });
  eq(rejoined.messages.map((m) => m.seq), [2]);
});

await check("chat:typing reaches the others", async () => {
  await ok(bob.socket, "chat:typing", { chat_id: chatId, typing: true });
  eq(await alice.box.next("chat:typing"), { chat_id: chatId, user_id: "bob", typing: true });
});

await check("invalid payloads and unknown events fail with INVALID_INPUT and an error event", async () => {
  const invalid = await fails(alice, "chat:message", { chat_id: chatId, content: "" }, "INVALID_INPUT");
  assert(invalid.details && invalid.details.content, JSON.stringify(invalid));
  await fails(alice, "no:such:event", {}, "INVALID_INPUT");
});

await check("a chat the user is not in is refused", async () => {
  const { chat } = await ok(bob.socket, "chat:create", { title: "private" });
  // either code, consistently, so that ids cannot be probed
  await fails(alice, "chat:join", { chat_id: chat.id }, ["NOT_FOUND", "PERMISSION_DENIED"]);
});

await check("user:left when the other user disconnects", async () => {
  bob.socket.disconnect();
  const left = [await alice.box.next("user:left"), await alice.box.next("user:left")];
  eq(left.map((e) => e.user_id), ["bob", "bob"]);
  eq(left.map((e) => e.document_id ?? e.chat_id).sort(), [chatId, documentId].sort());
});

await check("HTTP long-polling works too", async () => {
  const polling = await connect(tokens.alice, { transports: ["polling"] });
  eq(polling.socket.io.engine.transport.name, "polling");
  const { document } = await ok(polling.socket, "documents:create", { content: "by polling" });
  eq(document.content, "by polling");
});

finish(0);
