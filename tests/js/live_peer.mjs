// A live member of one document for the Python tests (tests/harness.py LivePeer):
// socket.io-client v4, a Y.Doc and a y-protocols Awareness, speaking PROTOCOL v2
// "Live documents" to a running server, as an editor binding's provider would.
//
// One JSON request per stdin line, {id, op, ...fields}; one JSON answer per stdout
// line, {id, ok: true, ...result} or {id, ok: false, error}. Requests run
// concurrently, so a test can wait on one peer while it drives another. Binary
// fields travel as base64. A refusal by the server is a result (the ack is returned
// as it came), not an error; an error is this peer failing (a timeout, a bug).
//
// Nothing here sleeps: every wait is for an ack or an event, bounded by a timeout.

import { createInterface } from 'node:readline'
import { isDeepStrictEqual } from 'node:util'
import { io } from 'socket.io-client'
import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'

const TIMEOUT_MS = 10000
// a Yjs update (format v1) with nothing in it
const EMPTY_UPDATE = new Uint8Array([0, 0])

const bin = (text) => new Uint8Array(Buffer.from(text, 'base64'))
// Node's socket.io-client hands binary attachments over as Buffers
const bytes = (value) => new Uint8Array(value)

let ydoc, ytext, awareness
// a fresh Y.Doc (a new client id) and its Awareness
function fresh () {
  if (awareness !== undefined) awareness.destroy()
  ydoc = new Y.Doc()
  ytext = ydoc.getText('content')
  awareness = new awarenessProtocol.Awareness(ydoc)
  // no 15-second renewals and no 30-second expiry during a test: a removal seen here
  // came from the server
  clearInterval(awareness._checkInterval)
}
fresh()

let socket = null
let documentId = null
/** joined live on the current connection (false while offline or before a join) */
let live = false

// what the test reads back (report): every version this peer saw, in arrival order
const received = [] // documents:yupdate versions from the room
const acks = [] // {kind, version} per own update the server acknowledged
const joins = [] // the document version each join's ack carried
const refused = [] // {kind, error} per own update the server refused
const errors = [] // `error` events
// what arrived, in order: ['join', version] at each join's ack, ['yupdate', version],
// ['ack', version, kind] for an own update acknowledged
const timeline = []
let pending = 0 // own updates sent and not acknowledged yet

// -- waiting for events ----------------------------------------------------------

const waiters = new Set()

function notify () {
  for (const waiter of [...waiters]) {
    if (waiter.done()) {
      waiters.delete(waiter)
      clearTimeout(waiter.timer)
      waiter.resolve()
    }
  }
}

// resolves once done() holds (checked now and after every event), rejects after timeout
function until (done, what, timeoutMs = TIMEOUT_MS) {
  if (done()) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const waiter = { done, resolve }
    waiter.timer = setTimeout(() => {
      waiters.delete(waiter)
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what()}`))
    }, timeoutMs)
    waiters.add(waiter)
  })
}

function version () {
  return Math.max(-1, ...joins, ...received, ...acks.map((a) => a.version))
}

// -- the connection ----------------------------------------------------------------

function connect ({ url, token, transports = ['websocket'] }) {
  // forceNew: a Manager of its own, like a browser tab; no automatic reconnection,
  // the test says when (reconnect)
  socket = io(url, { auth: { token }, transports, reconnection: false, forceNew: true, timeout: TIMEOUT_MS })
  socket.on('documents:yupdate', (data) => {
    if (data.document_id !== documentId) return
    Y.applyUpdate(ydoc, bytes(data.update), 'remote')
    received.push(data.version)
    timeline.push(['yupdate', data.version])
    notify()
  })
  socket.on('documents:awareness', (data) => {
    if (data.document_id !== documentId) return
    awarenessProtocol.applyAwarenessUpdate(awareness, bytes(data.update), 'remote')
    notify()
  })
  socket.on('error', (error) => { errors.push(error); notify() })
  socket.on('disconnect', () => {
    live = false
    // the others' cursors are unknown while offline (y-websocket's provider removes them
    // too). Their clocks are forgotten as well: the rejoin's ack brings their states at
    // the clocks we knew, which y-protocols' clock rule would refuse as not newer (the
    // stock provider keeps the clocks and so shows nobody's cursor after a reconnect
    // until each one's 15-second renewal: yjs/y-websocket#122)
    const others = [...awareness.getStates().keys()].filter((id) => id !== ydoc.clientID)
    awarenessProtocol.removeAwarenessStates(awareness, others, 'offline')
    for (const id of others) awareness.meta.delete(id)
    notify()
  })
  return opened()
}

function opened () {
  return new Promise((resolve) => {
    const done = (result) => {
      socket.off('connect', onConnect)
      socket.off('connect_error', onError)
      resolve(result)
    }
    const onConnect = () => done({ connected: true })
    const onError = (err) => done({ connected: false, message: err.message, data: err.data ?? null })
    socket.on('connect', onConnect)
    socket.on('connect_error', onError)
  })
}

// emit with an ack; `onAck` runs as the ack arrives, before any packet after it
function call (event, payload, onAck = () => {}) {
  return new Promise((resolve, reject) => {
    socket.timeout(TIMEOUT_MS).emit(event, payload, (err, ack) => {
      if (err) {
        reject(err)
        return
      }
      onAck(ack)
      resolve(ack)
    })
  })
}

// -- joining -----------------------------------------------------------------------

// PROTOCOL v2 live join: our state vector; apply what we lack; send what it lacks
async function join () {
  const ack = await call('documents:join', { document_id: documentId, state_vector: Y.encodeStateVector(ydoc) }, (ack) => {
    if (!ack.ok) return
    Y.applyUpdate(ydoc, bytes(ack.update), 'remote')
    awarenessProtocol.applyAwarenessUpdate(awareness, bytes(ack.awareness), 'remote')
    joins.push(ack.document.version)
    timeline.push(['join', ack.document.version])
    live = true
    notify()
  })
  if (!ack.ok) return { ack }
  // (never empty once anything was deleted: a Yjs diff carries the whole delete set)
  const missing = Y.encodeStateAsUpdate(ydoc, bytes(ack.state_vector))
  const sent = isDeepStrictEqual(missing, EMPTY_UPDATE) ? null : await send(missing, 'rejoin')
  return {
    ack: { ok: true, role: ack.role, users: ack.users, document: ack.document },
    sent,
    ...described()
  }
}

// -- editing -----------------------------------------------------------------------

// the update one local transaction made, as a provider's doc.on('update') sees it
function edit (change) {
  let update = null
  const capture = (u, origin) => { if (origin === 'local') update = u }
  ydoc.on('update', capture)
  try {
    ydoc.transact(change, 'local')
  } finally {
    ydoc.off('update', capture)
  }
  return update
}

// send one update (when live; offline edits wait for the rejoin's state vectors)
function send (update, kind) {
  if (update === null || !live) return Promise.resolve(null)
  pending += 1
  return call('documents:yupdate', { document_id: documentId, update }, (ack) => {
    if (ack.ok) {
      acks.push({ kind, version: ack.version })
      timeline.push(['ack', ack.version, kind])
    } else {
      refused.push({ kind, error: ack.error })
    }
  }).finally(() => { pending -= 1; notify() })
}

function described () {
  return { text: ytext.toString(), utf16_length: ytext.length }
}

// A seeded generator (mulberry32), so a failing run can be replayed.
function random (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const isHigh = (unit) => unit >= 0xd800 && unit <= 0xdbff
const isLow = (unit) => unit >= 0xdc00 && unit <= 0xdfff

// UTF-16 offsets where a cursor may stand: never between the halves of a surrogate pair
function boundaries (s) {
  const out = [0]
  for (let i = 1; i <= s.length; i++) {
    if (!(i < s.length && isHigh(s.charCodeAt(i - 1)) && isLow(s.charCodeAt(i)))) out.push(i)
  }
  return out
}

// the UTF-16 length of `count` code points from `start`
function codePointsLength (s, start, count) {
  let end = start
  for (let n = 0; n < count && end < s.length; n++) {
    end += isHigh(s.charCodeAt(end)) && end + 1 < s.length && isLow(s.charCodeAt(end + 1)) ? 2 : 1
  }
  return end - start
}

const ALPHABET = ['a', 'b', 'c', 'x', 'y', 'z', ' ', 'é', '日本', '😀', '👍🏽', 'e\u0301', '👨‍👩‍👧', 'ß']

// n random inserts and deletes, each update sent at once without waiting for the
// others' (some acks awaited, which lets the room's updates in between; otherwise a
// turn of the event loop): the room's updates interleave with ours
async function randomEdits ({ n, seed, delete_ratio: deleteRatio = 0.3, alphabet = ALPHABET }) {
  const rng = random(seed)
  const pick = (items) => items[Math.floor(rng() * items.length)]
  const sent = []
  const edits = { insert: 0, delete: 0 }
  const inserted = []
  for (let i = 0; i < n; i++) {
    const s = ytext.toString()
    let update
    if (s.length > 0 && rng() < deleteRatio) {
      const starts = boundaries(s).slice(0, -1)
      const start = pick(starts)
      const length = codePointsLength(s, start, 1 + Math.floor(rng() * 3))
      update = edit(() => ytext.delete(start, length))
      edits.delete += 1
      sent.push(send(update, 'delete'))
    } else {
      const at = pick(boundaries(s))
      const text = pick(alphabet)
      update = edit(() => ytext.insert(at, text))
      inserted.push(text)
      edits.insert += 1
      sent.push(send(update, 'insert'))
    }
    if (rng() < 0.3) await sent[sent.length - 1]
    else await new Promise((resolve) => setImmediate(resolve))
  }
  await Promise.all(sent)
  return { edits, inserted, ...described() }
}

// -- the commands ------------------------------------------------------------------

const ops = {
  connect,
  async join ({ document_id: id }) {
    documentId = id
    return join()
  },
  async insert ({ index, text }) {
    const ack = await send(edit(() => ytext.insert(index, text)), 'insert')
    return { ack, ...described() }
  },
  async delete ({ index, length }) {
    const ack = await send(edit(() => ytext.delete(index, length)), 'delete')
    return { ack, ...described() }
  },
  random_edits: randomEdits,
  // other shared types, which the server keeps and relays without interpreting
  async map_set ({ name, key, value }) {
    const ack = await send(edit(() => ydoc.getMap(name).set(key, value)), 'map')
    return { ack }
  },
  async xml_append ({ name, tag, text }) {
    const ack = await send(edit(() => {
      const element = new Y.XmlElement(tag)
      element.insert(0, [new Y.XmlText(text)])
      ydoc.getXmlFragment(name).push([element])
    }), 'xml')
    return { ack }
  },
  // `types`: {name: 'map' | 'xml' | 'text'}; each one's JSON (XML as a string)
  async shared ({ types }) {
    const get = { map: (n) => ydoc.getMap(n).toJSON(), xml: (n) => ydoc.getXmlFragment(n).toString(), text: (n) => ydoc.getText(n).toString() }
    return { shared: Object.fromEntries(Object.entries(types).map(([name, type]) => [name, get[type](name)])) }
  },
  async text () {
    return { ...described(), version: version() }
  },
  // the room's updates (or own acks) up to `version` arrived
  async wait_version ({ version: wanted, timeout_ms: timeoutMs }) {
    await until(() => version() >= wanted, () => `version ${wanted} (at ${version()})`, timeoutMs)
    return { version: version() }
  },
  // every own update acknowledged and the room's updates up to `version` applied
  async settled ({ version: wanted, timeout_ms: timeoutMs }) {
    await until(() => pending === 0 && version() >= wanted,
      () => `version ${wanted} (at ${version()}, ${pending} acks pending)`, timeoutMs)
    return { ...described(), version: version() }
  },
  async wait_text ({ text, timeout_ms: timeoutMs }) {
    await until(() => ytext.toString() === text,
      () => `text ${JSON.stringify(text)} (have ${JSON.stringify(ytext.toString())})`, timeoutMs)
    return described()
  },
  async report () {
    return { received, acks, joins, refused, errors, timeline, client_id: ydoc.clientID, version: version() }
  },
  async awareness_set ({ state }) {
    awareness.setLocalState(state)
    if (!live) return { client_id: ydoc.clientID, ack: null }
    const update = awarenessProtocol.encodeAwarenessUpdate(awareness, [ydoc.clientID])
    const ack = await call('documents:awareness', { document_id: documentId, update })
    return { client_id: ydoc.clientID, ack }
  },
  async awareness_states () {
    return { states: Object.fromEntries(awareness.getStates()) }
  },
  // until client_id's state is `state` (null: until it is gone); how long that took
  async wait_awareness ({ client_id: clientId, state, timeout_ms: timeoutMs }) {
    const started = performance.now()
    const current = () => awareness.getStates().get(clientId) ?? null
    await until(() => isDeepStrictEqual(current(), state),
      () => `awareness of ${clientId} to be ${JSON.stringify(state)} (is ${JSON.stringify(current())})`,
      timeoutMs)
    return { waited_ms: performance.now() - started }
  },
  async disconnect () {
    socket.disconnect()
    return { connected: socket.connected }
  },
  // connect again and rejoin by state vectors; our cursor is announced anew with a
  // newer clock (the server removed it at the clock it had)
  async reconnect () {
    socket.connect()
    const result = await opened()
    if (!result.connected || documentId === null) return { ...result }
    const rejoined = await join()
    const state = awareness.getLocalState()
    if (state !== null && live) {
      awareness.setLocalState(state)
      await call('documents:awareness', {
        document_id: documentId,
        update: awarenessProtocol.encodeAwarenessUpdate(awareness, [ydoc.clientID])
      })
    }
    return { ...result, ...rejoined }
  },
  // sync again on this connection (the join's state vectors): the way back after an
  // update was refused for a passing reason (UNAVAILABLE), and after the later ones
  // refused for building on it; everything the server lacks goes as one update
  async resync () {
    return join()
  },
  // drop the Y.Doc and join again with a fresh one (and an empty state vector): the
  // way back after a refusal, since a refused update stays in the Y.Doc that made it
  // and every later update of that client id depends on it
  async reload () {
    fresh()
    return { client_id: ydoc.clientID, ...await join() }
  },
  // any event, for refusals: `binary` fields (base64) go as Uint8Array attachments
  async send ({ event, payload, binary = {} }) {
    const data = { ...payload }
    for (const [key, value] of Object.entries(binary)) data[key] = bin(value)
    return { ack: await call(event, data) }
  }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
lines.on('line', (line) => {
  if (!line.trim()) return
  let request
  try {
    request = JSON.parse(line)
  } catch (err) {
    process.stdout.write(JSON.stringify({ id: null, ok: false, error: String(err) }) + '\n')
    return
  }
  const op = ops[request.op]
  Promise.resolve()
    .then(() => {
      if (op === undefined) throw new Error(`no op ${request.op}`)
      return op(request)
    })
    .then((result) => ({ id: request.id, ok: true, ...result }),
      (err) => ({ id: request.id, ok: false, error: String(err && err.stack ? err.stack : err) }))
    .then((answer) => process.stdout.write(JSON.stringify(answer) + '\n'))
})
lines.on('close', () => {
  if (socket !== null) socket.disconnect()
  process.exit(0)
})
