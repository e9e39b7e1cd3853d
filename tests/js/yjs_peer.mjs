// Real Yjs and y-protocols for the Python tests (tests/harness.py YjsPeer).
//
// One JSON request per stdin line, one JSON answer per stdout line. Binary fields
// travel as base64; strings as JSON strings, so lone surrogates survive the trip
// (JSON.stringify escapes them). Documents and awareness instances are named, so
// one process can play several clients.

import { createInterface } from 'node:readline'
import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'

const docs = new Map()
const awarenesses = new Map()

const b64 = (bytes) => Buffer.from(bytes).toString('base64')
const bin = (text) => new Uint8Array(Buffer.from(text, 'base64'))

function doc (name) {
  const found = docs.get(name)
  if (found === undefined) throw new Error(`no document ${name}`)
  return found
}

function awareness (name) {
  const found = awarenesses.get(name)
  if (found === undefined) throw new Error(`no awareness ${name}`)
  return found
}

// the update one local transaction made, as the y-websocket provider would send it
function edit (ydoc, change) {
  let update = null
  const capture = (u, origin) => { if (origin === 'local') update = u }
  ydoc.on('update', capture)
  try {
    ydoc.transact(change, 'local')
  } finally {
    ydoc.off('update', capture)
  }
  return update === null ? null : b64(update)
}

function described (ydoc) {
  const text = ydoc.getText('content').toString()
  return { text, utf16_length: ydoc.getText('content').length }
}

function states (aw) {
  const out = {}
  for (const [id, meta] of aw.meta) {
    out[id] = { clock: meta.clock, state: aw.states.has(id) ? aw.states.get(id) : null }
  }
  return out
}

const ops = {
  new ({ doc: name, client_id: clientID }) {
    const ydoc = new Y.Doc()
    if (clientID !== undefined) ydoc.clientID = clientID
    docs.set(name, ydoc)
    return {}
  },
  apply ({ doc: name, update }) {
    Y.applyUpdate(doc(name), bin(update), 'remote')
    return described(doc(name))
  },
  insert ({ doc: name, index, text }) {
    const ydoc = doc(name)
    return { update: edit(ydoc, () => ydoc.getText('content').insert(index, text)), ...described(ydoc) }
  },
  delete ({ doc: name, index, length }) {
    const ydoc = doc(name)
    return { update: edit(ydoc, () => ydoc.getText('content').delete(index, length)), ...described(ydoc) }
  },
  text ({ doc: name }) {
    return described(doc(name))
  },
  state_vector ({ doc: name }) {
    return { state_vector: b64(Y.encodeStateVector(doc(name))) }
  },
  diff ({ doc: name, state_vector: sv }) {
    return { update: b64(Y.encodeStateAsUpdate(doc(name), bin(sv))) }
  },
  aw_new ({ name, client_id: clientID }) {
    const ydoc = new Y.Doc()
    ydoc.clientID = clientID
    const aw = new awarenessProtocol.Awareness(ydoc)
    clearInterval(aw._checkInterval) // no 30-second timeout during a test
    awarenesses.set(name, aw)
    return { states: states(aw) }
  },
  // sets the local state and returns what the provider would send for it
  aw_set ({ name, state }) {
    const aw = awareness(name)
    aw.setLocalState(state)
    return { update: b64(awarenessProtocol.encodeAwarenessUpdate(aw, [aw.clientID])), states: states(aw) }
  },
  aw_apply ({ name, update }) {
    const aw = awareness(name)
    awarenessProtocol.applyAwarenessUpdate(aw, bin(update), 'remote')
    return { states: states(aw) }
  },
  aw_encode ({ name, clients }) {
    const aw = awareness(name)
    return { update: b64(awarenessProtocol.encodeAwarenessUpdate(aw, clients)) }
  }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
for await (const line of lines) {
  if (!line.trim()) continue
  let answer
  try {
    const request = JSON.parse(line)
    answer = { ok: true, ...ops[request.op](request) }
  } catch (err) {
    answer = { ok: false, error: String(err && err.stack ? err.stack : err) }
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
}
