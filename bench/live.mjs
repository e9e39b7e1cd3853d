// Load generator of bench/live.py: one live Yjs document, E editors each typing R
// keystrokes a second (one character, one Yjs update each, open loop) and V viewers,
// against collab (socket.io-client + yjs: documents:join with state_vector,
// documents:yupdate) or Hocuspocus (its own @hocuspocus/provider).
// usage: node live.mjs CONFIG.json   -> prints one JSON line with the results
// Every wait is bounded; the process exits by itself.
//
// Latency: an editor notes performance.now() under the keystroke's Yjs id (its client
// id and the clock of the inserted character) just before the insert; a viewer takes
// the ids of what each received update integrated into its Y.Doc (Y.parseUpdateMeta
// of the doc's "update" event) and subtracts. One process, so one clock.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { HocuspocusProvider } from "@hocuspocus/provider";
import { io } from "socket.io-client";
import WebSocket from "ws";
import * as Y from "yjs";
import { cpuSeconds, pct, selfCpu } from "./procstat.mjs";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const tokens = JSON.parse(readFileSync(cfg.tokens, "utf8"));
const HARD_LIMIT_MS = (cfg.hard_limit_s || 120) * 1000;
setTimeout(() => { console.log(JSON.stringify({ error: "hard time limit" })); process.exit(2); }, HARD_LIMIT_MS).unref();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const E = cfg.editors, V = cfg.viewers, RATE = cfg.rate;
const REMOTE = Symbol("remote"); // the origin of updates that came from the server

function within(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what}: timeout`)), ms); }),
  ]);
}

async function inBatches(n, size, fn) {
  const out = [];
  for (let i = 0; i < n; i += size) {
    out.push(...await Promise.all(Array.from({ length: Math.min(size, n - i) }, (_, k) => fn(i + k))));
  }
  return out;
}

// -- the measurement, the same for both servers -------------------------------

const run = { measuring: false, windowStart: 0, windowEnd: Infinity };
//: Yjs client id -> (clock -> send time) of the keystrokes typed in the window
const sent = new Map();
//: "client:clock" -> viewers that have it, and the latest of their latencies
const reached = new Map();
let keystrokes = 0, typed = 0, acked = 0, failures = 0, deliveries = 0;
const latencies = [], ackLatencies = [];

function noteKeystroke(doc) {
  const t = performance.now();
  if (!run.measuring) return;
  let times = sent.get(doc.clientID);
  if (!times) sent.set(doc.clientID, times = new Map());
  times.set(Y.getState(doc.store, doc.clientID), t);
  typed += 1;
}

// what a viewer's doc integrated: each keystroke in it is one delivery
function viewerUpdate(update) {
  const t = performance.now();
  const { from, to } = Y.parseUpdateMeta(update);
  for (const [client, start] of from) {
    const times = sent.get(client);
    const end = to.get(client);
    for (let clock = start; clock < end; clock++) {
      if (run.measuring) deliveries += 1;
      const t0 = times && times.get(clock);
      if (t0 === undefined) continue;
      const lat = t - t0;
      latencies.push(lat);
      const key = client + ":" + clock;
      const r = reached.get(key);
      if (r) { r.n += 1; if (lat > r.max) r.max = lat; } else reached.set(key, { n: 1, max: lat });
    }
  }
}

function keystroke(doc) {
  keystrokes += 1;
  noteKeystroke(doc);
  const text = doc.getText("content");
  text.insert(text.length, "x");
}

// -- collab: socket.io-client + yjs ---------------------------------------------

function connectSio(i) {
  return new Promise((resolve, reject) => {
    const s = io(cfg.url, {
      transports: ["websocket"], auth: { token: tokens[i] }, forceNew: true,
      reconnection: false, timeout: 20000,
    });
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => { s.close(); reject(e); });
  });
}

const call = async (s, ev, data) => {
  const r = await s.timeout(20000).emitWithAck(ev, data);
  if (!r.ok) throw new Error(`${ev}: ${JSON.stringify(r.error)}`);
  return r;
};

async function collab() {
  const owner = await connectSio(0);
  const { document } = await call(owner, "documents:create", { title: "live bench", content: "" });
  await inBatches(E + V - 1, 50, (k) => call(owner, "documents:share", {
    document_id: document.id, user_id: cfg.users[k + 1], role: k + 1 < E ? "editor" : "viewer",
  }));
  const clients = await inBatches(E + V, 50, async (i) => {
    const s = i === 0 ? owner : await connectSio(i);
    const doc = new Y.Doc();
    s.on("documents:yupdate", (d) => Y.applyUpdate(doc, new Uint8Array(d.update), REMOTE));
    const joined = await call(s, "documents:join", {
      document_id: document.id, state_vector: Y.encodeStateVector(doc),
    });
    Y.applyUpdate(doc, new Uint8Array(joined.update), REMOTE);
    return { s, doc };
  });
  let outstanding = 0, maxVersion = 0;
  for (const { s, doc } of clients.slice(0, E)) {
    doc.on("update", (update, origin) => {
      if (origin === REMOTE) return;
      const t = performance.now();
      outstanding += 1;
      s.timeout(20000).emitWithAck("documents:yupdate", { document_id: document.id, update })
        .then((r) => {
          if (!r.ok) { failures += 1; return; }
          if (run.measuring) { acked += 1; ackLatencies.push(performance.now() - t); }
          maxVersion = Math.max(maxVersion, r.version);
        }, () => { failures += 1; })
        .finally(() => { outstanding -= 1; });
    });
  }
  for (const { doc } of clients.slice(E)) doc.on("update", (u) => viewerUpdate(u));
  const result = await drive(clients.map((c) => c.doc), () => outstanding === 0);
  // one version per keystroke, each stored before its ack
  result.versions = maxVersion - document.version;
  for (const { s } of clients) s.close();
  return result;
}

// -- Hocuspocus: its own provider -------------------------------------------------

async function hocuspocus() {
  const name = `live-bench-${process.pid}-${Date.now()}`;
  const url = cfg.url.replace("http", "ws");
  const clients = await inBatches(E + V, 50, (i) => within(new Promise((resolve, reject) => {
    const doc = new Y.Doc();
    const provider = new HocuspocusProvider({
      url, name, document: doc, token: tokens[i], WebSocketPolyfill: WebSocket,
      // neither side exchanges awareness here: the document's updates are the load
      awareness: null,
      onAuthenticationFailed: ({ reason }) => reject(new Error(`authentication failed: ${reason}`)),
    });
    provider.on("synced", ({ state }) => { if (state) resolve({ provider, doc }); });
  }), 20000, `provider ${i}`));
  // the server answers every update it applied with a SyncStatus message, which the
  // provider counts down as unsyncedChanges: that is its ack (in memory, nothing stored)
  const waits = clients.slice(0, E).map(({ provider }) => {
    const inFlight = [];
    let last = provider.unsyncedChanges;
    provider.on("unsyncedChanges", ({ number }) => {
      const t = performance.now();
      for (; number < last && inFlight.length; last--) {
        const t0 = inFlight.shift();
        if (run.measuring) { acked += 1; ackLatencies.push(t - t0); }
      }
      last = number;
    });
    provider.document.on("update", (update, origin) => {
      if (origin !== provider) inFlight.push(performance.now());
    });
    return inFlight;
  });
  for (const { provider, doc } of clients.slice(E)) {
    doc.on("update", (u, origin) => { if (origin === provider) viewerUpdate(u); });
  }
  const result = await drive(clients.map((c) => c.doc), () => waits.every((q) => !q.length));
  for (const { provider } of clients) provider.destroy();
  return result;
}

// -- the common part: type, measure, drain, check -----------------------------------

async function drive(docs, allAcked) {
  const editors = docs.slice(0, E), viewers = docs.slice(E);
  const start = performance.now();
  const due = new Array(E).fill(0);
  let typing = true;
  // open loop: editor i types keystroke k at start + (k + i / E) / RATE seconds
  const typist = (async () => {
    while (typing) {
      const elapsed = (performance.now() - start) / 1000;
      for (let i = 0; i < E; i++) {
        const want = Math.floor(elapsed * RATE - i / E) + 1;
        while (due[i] < want) { due[i] += 1; keystroke(editors[i]); }
      }
      await sleep(2);
    }
  })();
  await sleep(cfg.warmup_s * 1000);
  const c0 = cpuSeconds(cfg.server_pid), l0 = selfCpu(), t0 = performance.now();
  run.measuring = true;
  await sleep(cfg.duration_s * 1000);
  run.measuring = false;
  const dt = (performance.now() - t0) / 1000;
  const serverCpu = (cpuSeconds(cfg.server_pid) - c0) / dt, loadCpu = (selfCpu() - l0) / dt;
  typing = false;
  await typist;
  // drain: every keystroke of the window to every viewer, every update acked, and the
  // few typed after the window everywhere too (every copy as long as the first editor's)
  const all = [...editors, ...viewers];
  const sameLength = () => {
    const n = editors[0].getText("content").length;
    return all.every((d) => d.getText("content").length === n);
  };
  const drainUntil = performance.now() + (cfg.drain_s || 10) * 1000;
  while (performance.now() < drainUntil) {
    let complete = 0;
    for (const r of reached.values()) if (r.n === V) complete += 1;
    if (complete === typed && allAcked() && sameLength()) break;
    await sleep(20);
  }
  const text = editors[0].getText("content").toString();
  const converged = all.every((d) => d.getText("content").toString() === text);
  latencies.sort((a, b) => a - b);
  ackLatencies.sort((a, b) => a - b);
  const everyViewer = [...reached.values()].filter((r) => r.n === V).map((r) => r.max).sort((a, b) => a - b);
  return {
    typed_per_s: typed / dt, acked_per_s: acked / dt, deliveries_per_s: deliveries / dt,
    p50_ms: pct(latencies, 0.5), p99_ms: pct(latencies, 0.99),
    all_p50_ms: pct(everyViewer, 0.5), all_p99_ms: pct(everyViewer, 0.99),
    ack_p50_ms: pct(ackLatencies, 0.5), ack_p99_ms: pct(ackLatencies, 0.99),
    keystrokes, typed, not_everywhere: typed - everyViewer.length, failures, converged,
    length: text.length, server_cpu: serverCpu, load_cpu: loadCpu,
  };
}

try {
  const result = await (cfg.server === "hocuspocus" ? hocuspocus() : collab());
  console.log(JSON.stringify(result));
  await sleep(200);
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.message || e) }));
  process.exit(1);
}
