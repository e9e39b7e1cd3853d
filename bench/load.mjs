// Load generator: socket.io-client v4 connections against one server, one workload.
// usage: node load.mjs CONFIG.json   -> prints one JSON line with the results
// Every wait is bounded; the process exits by itself.
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";
import WebSocket from "ws";
import { cpuSeconds, pct, rssKiB, selfCpu } from "./procstat.mjs";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const tokens = JSON.parse(readFileSync(cfg.tokens, "utf8"));
const HARD_LIMIT_MS = (cfg.hard_limit_s || 120) * 1000;
setTimeout(() => { console.log(JSON.stringify({ error: "hard time limit" })); process.exit(2); }, HARD_LIMIT_MS).unref();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// member i of a room connects to urls[i % urls.length] (cfg.urls: members split over
// several nodes); everything else, and the posters, to cfg.url
// token i + cfg.offset: a second load generator runs as other users
const OFFSET = cfg.offset || 0;
const urlOf = (i) => (cfg.urls && cfg.urls.length ? cfg.urls[i % cfg.urls.length] : cfg.url);

function connectOne(i) {
  return new Promise((resolve, reject) => {
    const s = io(urlOf(i), {
      transports: ["websocket"], auth: { token: tokens[OFFSET + i] }, forceNew: true,
      reconnection: false, timeout: 20000,
    });
    s.once("connect", () => resolve(s));
    s.once("connect_error", (e) => { s.close(); reject(e); });
  });
}

// A minimal Socket.IO v5 client over the same `ws` library socket.io-client uses: it
// answers pings, sends CONNECT with the token, makes ack'ed calls and hands raw event
// packets to onEvent without decoding them. socket.io-client spends ~10 us of CPU per
// received event, which made the load generator the bottleneck before the Node server.
class RawClient {
  constructor(ws) { this.ws = ws; this.acks = new Map(); this.nextId = 1; this.onEvent = null; }
  call(event, data) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.acks.delete(id); reject(new Error("ack timeout")); }, 20000);
      this.acks.set(id, (args) => { clearTimeout(timer); resolve(args[0]); });
      this.ws.send("42" + id + JSON.stringify([event, data]));
    });
  }
  close() { this.ws.terminate(); }
}

function connectRaw(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(urlOf(i).replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket",
                             { perMessageDeflate: false });
    const client = new RawClient(ws);
    const fail = (e) => { ws.terminate(); reject(e instanceof Error ? e : new Error(String(e))); };
    ws.on("error", fail);
    ws.on("message", (buf) => {
      const s = buf.toString();
      if (s.startsWith("42")) { if (client.onEvent) client.onEvent(s); return; }
      if (s === "2") { ws.send("3"); return; }
      if (s.startsWith("43")) {
        const j = s.indexOf("[");
        const id = Number(s.slice(2, j));
        const cb = client.acks.get(id);
        if (cb) { client.acks.delete(id); cb(JSON.parse(s.slice(j))); }
        return;
      }
      if (s.startsWith("40")) { ws.off("error", fail); ws.on("error", () => {}); resolve(client); return; }
      if (s.startsWith("44")) { fail(new Error("connect_error " + s)); return; }
      if (s.startsWith("0")) { ws.send("40" + JSON.stringify({ token: tokens[OFFSET + i] })); return; }
    });
  });
}

async function connectMany(n, concurrency, raw = false) {
  const sockets = new Array(n);
  let next = 0, failed = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      try { sockets[i] = await (raw ? connectRaw(i) : connectOne(i)); } catch (e) { failed += 1; }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  if (failed) throw new Error(`${failed} connections failed`);
  return sockets;
}

const call = (s, ev, data) => (s instanceof RawClient ? s.call(ev, data) : s.timeout(20000).emitWithAck(ev, data));
const RAW = cfg.client !== "sio";
function closeAll(sockets) { for (const s of sockets) if (s) s.close(); }

async function fanout() {
  const n = cfg.clients, posters = cfg.posters, window = cfg.window || 1;
  // posters: socket.io-client; the other members: the raw client unless cfg.client = "sio"
  const others = await connectMany(n, 50, RAW);
  const sockets = [...await connectMany(posters, 50), ...others.slice(posters)];
  others.slice(0, posters).forEach((s) => s.close());
  const users = cfg.users.slice(0, n);
  const created = await call(sockets[0], "chat:create", { title: "bench", members: users.slice(1) });
  if (!created.ok) throw new Error(JSON.stringify(created));
  const chatId = created.chat.id;
  for (let i = 0; i < n; i += 50) {
    await Promise.all(sockets.slice(i, i + 50).map(async (s) => {
      const r = await call(s, "chat:join", { chat_id: chatId });
      if (!r.ok) throw new Error(JSON.stringify(r));
    }));
  }
  const run = { measuring: false, running: true };
  let deliveries = 0;
  const lat = [];
  const CONTENT = /"content":"([0-9.]+)"/;
  for (const s of sockets) {
    if (s instanceof RawClient) {
      s.onEvent = (text) => {
        if (!run.measuring || !text.startsWith('42["chat:message"')) return;
        deliveries += 1;
        if (deliveries % cfg.sample_every === 0) lat.push(performance.now() - parseFloat(CONTENT.exec(text)[1]));
      };
      continue;
    }
    s.on("chat:message", (d) => {
      if (!run.measuring) return;
      deliveries += 1;
      const sent = parseFloat(d.message.content);
      if (deliveries % cfg.sample_every === 0) lat.push(performance.now() - sent);
    });
  }
  let posted = 0, failures = 0;
  async function post(s) {
    while (run.running) {
      const r = await call(s, "chat:message", { chat_id: chatId, content: String(performance.now()) });
      if (!r.ok) { failures += 1; await sleep(10); } else if (run.measuring) posted += 1;
    }
  }
  const loops = [];
  if (cfg.rate) {
    // open loop: a steady total rate, round-robin over the posters, acks not awaited
    let sentCount = 0, k = 0;
    const start = performance.now();
    loops.push((async () => {
      while (run.running) {
        const due = Math.floor(((performance.now() - start) / 1000) * cfg.rate);
        while (sentCount < due) {
          const s = sockets[k++ % posters];
          sentCount += 1;
          call(s, "chat:message", { chat_id: chatId, content: String(performance.now()) })
            .then((r) => { if (!r.ok) failures += 1; else if (run.measuring) posted += 1; },
                  () => { failures += 1; });
        }
        await sleep(2);
      }
    })());
  } else {
    for (const s of sockets.slice(0, posters)) for (let w = 0; w < window; w++) loops.push(post(s));
  }
  const { dt, serverCpu, loadCpu, watchCpu } = await measure(run, loops, sockets);
  lat.sort((a, b) => a - b);
  return {
    deliveries_per_s: deliveries / dt, posts_per_s: posted / dt, failures,
    p50_ms: pct(lat, 0.5), p99_ms: pct(lat, 0.99),
    server_cpu: serverCpu, load_cpu: loadCpu, watch_cpu: watchCpu,
  };
}

async function docs() {
  const n = cfg.clients;
  const sockets = await connectMany(n, 50);
  const run = { measuring: false, running: true };
  let done = 0;
  const lat = [];
  async function loop(s, i) {
    const c = await call(s, "documents:create", { title: "bench", content: "" });
    if (!c.ok) throw new Error(JSON.stringify(c));
    let version = c.document.version;
    while (run.running) {
      const t = performance.now();
      const r = await call(s, "documents:update", {
        document_id: c.document.id, content: `update ${version + 1} from ${i}`, version: version + 1,
      });
      if (!r.ok) throw new Error(JSON.stringify(r));
      version = r.document.version;
      if (run.measuring) { done += 1; lat.push(performance.now() - t); }
    }
  }
  const loops = sockets.map(loop);
  const { dt, serverCpu, loadCpu } = await measure(run, loops, sockets);
  lat.sort((a, b) => a - b);
  return { updates_per_s: done / dt, p50_ms: pct(lat, 0.5), p99_ms: pct(lat, 0.99),
           server_cpu: serverCpu, load_cpu: loadCpu };
}

async function idle() {
  const warm = await connectMany(50, 25, RAW);   // load code paths before the baseline
  closeAll(warm);
  await sleep(1500);
  const before = rssKiB(cfg.server_pid);
  const sockets = await connectMany(cfg.clients, 100, RAW);
  await sleep(2000);
  const after = rssKiB(cfg.server_pid);
  closeAll(sockets);
  return { connections: cfg.clients, rss_before_mib: before / 1024, rss_after_mib: after / 1024,
           kib_per_connection: (after - before) / cfg.clients };
}

async function storm() {
  const warm = await connectMany(20, 20, RAW);
  closeAll(warm);
  await sleep(500);
  const { dt, value: sockets, serverCpu, loadCpu } = await cpuWindow(
    () => connectMany(cfg.clients, cfg.concurrency, RAW));
  closeAll(sockets);
  return { connections_per_s: cfg.clients / dt, server_cpu: serverCpu, load_cpu: loadCpu };
}

// Warm up, count for duration_s (run.measuring), then stop the loops and close.
async function measure(run, loops, sockets) {
  await sleep(cfg.warmup_s * 1000);
  const window = await cpuWindow(async () => {
    run.measuring = true;
    await sleep(cfg.duration_s * 1000);
    run.measuring = false;
  });
  run.running = false;
  await Promise.race([Promise.all(loops), sleep(5000)]);
  closeAll(sockets);
  return window;
}

// Await ``during`` and measure its wall time and the CPU the server and we spent (and
// the processes of cfg.watch_pids: the other nodes of a scale-out run).
async function cpuWindow(during) {
  const watch = cfg.watch_pids || [];
  const c0 = cpuSeconds(cfg.server_pid), l0 = selfCpu(), t0 = performance.now();
  const w0 = watch.map(cpuSeconds);
  const value = await during();
  const dt = (performance.now() - t0) / 1000;
  return {
    dt, value, serverCpu: (cpuSeconds(cfg.server_pid) - c0) / dt, loadCpu: (selfCpu() - l0) / dt,
    watchCpu: watch.map((pid, i) => (cpuSeconds(pid) - w0[i]) / dt),
  };
}

// Hold cfg.clients members in cfg.rooms chats of their own (on cfg.url) until stdin
// closes: the rooms a node hosts beside somebody else's busy one (bench/scaleout.py).
async function hold() {
  const sockets = await connectMany(cfg.clients, 50, RAW);
  const per = Math.ceil(cfg.clients / cfg.rooms);
  for (let r = 0; r < cfg.rooms; r++) {
    const members = sockets.slice(r * per, (r + 1) * per);
    if (!members.length) break;
    const created = await call(members[0], "chat:create", {
      title: `held ${r}`,
      members: cfg.users.slice(OFFSET + r * per + 1, OFFSET + (r + 1) * per),
    });
    if (!created.ok) throw new Error(JSON.stringify(created));
    for (const s of members) {
      const j = await call(s, "chat:join", { chat_id: created.chat.id });
      if (!j.ok) throw new Error(JSON.stringify(j));
    }
  }
  console.log("READY");
  await new Promise((resolve) => { process.stdin.on("end", resolve); process.stdin.resume(); });
  closeAll(sockets);
  return { held: sockets.length };
}

// Hold cfg.clients idle authenticated connections until stdin closes (bench/memory.py
// takes its snapshots meanwhile).
async function holdIdle() {
  const sockets = await connectMany(cfg.clients, 100, RAW);
  console.log("READY");
  await new Promise((resolve) => { process.stdin.on("end", resolve); process.stdin.resume(); });
  closeAll(sockets);
  return { held: sockets.length };
}

const workloads = { fanout, docs, idle, storm, hold, hold_idle: holdIdle };
try {
  const result = await workloads[cfg.workload]();
  console.log(JSON.stringify(result));
  await sleep(200);
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ error: String(e && e.message || e) }));
  process.exit(1);
}
