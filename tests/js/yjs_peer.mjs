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

// Named edits that make every kind of struct content a client can write (and a
// GC struct, a deletion), for the update decoder's tests (tests/test_yupdate.py).
// Each runs inside one transaction.
const scenarios = {
  text (ydoc) { ydoc.getText('content').insert(0, 'hi 😀 there') },
  format (ydoc) {
    const text = ydoc.getText('content')
    text.insert(0, 'bold 😀', { bold: true })
    text.format(0, 2, { italic: true })
  },
  embed (ydoc) { ydoc.getText('content').insertEmbed(0, { image: 'cat.png' }) },
  any (ydoc) {
    const map = ydoc.getMap('meta')
    const values = {
      int: 42, negative: -7, large: 2 ** 40, float: 1.5, tiny: -1e-300, bigint: 12n ** 15n,
      yes: true, no: false, nothing: null, missing: undefined, string: 'str 😀',
      object: { nested: { deeper: [1, 'two', null] } }, array: [1, [2, [3]]],
      bytes: new Uint8Array([0, 255, 7])
    }
    for (const [key, value] of Object.entries(values)) map.set(key, value)
    ydoc.getArray('list').insert(0, [1, 'two', { three: 3 }])
  },
  json (ydoc, transaction) {
    // the legacy content Yjs still reads (documents written before ContentAny)
    const map = ydoc.getMap('legacy')
    const id = Y.createID(ydoc.clientID, Y.getState(ydoc.store, ydoc.clientID))
    new Y.Item(id, null, null, null, null, map, 'k', new Y.ContentJSON([{ a: 1 }, 'two', undefined]))
      .integrate(transaction, 0)
  },
  binary (ydoc) { ydoc.getMap('meta').set('blob', new Uint8Array([1, 2, 3, 250])) },
  xml (ydoc) {
    const fragment = ydoc.getXmlFragment('prosemirror')
    const paragraph = new Y.XmlElement('paragraph')
    paragraph.setAttribute('class', 'lead')
    paragraph.insert(0, [new Y.XmlText('hello 😀 xml')])
    fragment.insert(0, [paragraph, new Y.XmlText('tail')])
  },
  hook (ydoc) { ydoc.getXmlFragment('prosemirror').insert(0, [new Y.XmlHook('widget')]) },
  nested (ydoc) {
    const map = ydoc.getMap('meta')
    map.set('text', new Y.Text('nested 😀'))
    const list = new Y.Array()
    map.set('list', list)
    list.insert(0, [new Y.Map()])
  },
  unnest (ydoc) { ydoc.getMap('meta').set('text', 'replaced') }, // deletes the nested Y.Text
  subdoc (ydoc) { ydoc.getMap('meta').set('sub', new Y.Doc({ guid: 'sub-guid', meta: { a: 1 } })) },
  deleted (ydoc) {
    const text = ydoc.getText('content')
    text.insert(0, 'abc 😀 def')
    text.delete(2, 4)
  },
  gc (ydoc) {
    // a nested type replaced: its children are garbage collected (GC structs)
    const map = ydoc.getMap('meta')
    map.set('gone', new Y.Text('collected'))
    map.set('gone', 1)
  }
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
  // several steps in one transaction: one update, as an editor's compound change makes
  transact ({ doc: name, steps }) {
    const ydoc = doc(name)
    const text = ydoc.getText('content')
    const update = edit(ydoc, () => {
      for (const step of steps) {
        if (step.op === 'insert') text.insert(step.index, step.text)
        else text.delete(step.index, step.length)
      }
    })
    return { update, ...described(ydoc) }
  },
  // an item of 'content' with the origins given ([client, clock] or null), integrated the
  // way Yjs integrates a remote one: how a hostile client writes any origins it likes
  raw_insert ({ doc: name, origin, right_origin: rightOrigin, text }) {
    const ydoc = doc(name)
    const update = edit(ydoc, (transaction) => {
      const store = ydoc.store
      const id = Y.createID(ydoc.clientID, Y.getState(store, ydoc.clientID))
      const item = new Y.Item(id, null, origin && Y.createID(...origin), null,
        rightOrigin && Y.createID(...rightOrigin), ydoc.getText('content'), null,
        new Y.ContentString(text))
      item.getMissing(transaction, store)
      item.integrate(transaction, 0)
    })
    return { update, ...described(ydoc) }
  },
  scenario ({ doc: name, name: scenario }) {
    const ydoc = doc(name)
    return { update: edit(ydoc, (transaction) => scenarios[scenario](ydoc, transaction)) }
  },
  merge ({ updates }) {
    return { update: b64(Y.mergeUpdates(updates.map(bin))) }
  },
  // Yjs's own reading of an update, to hold the Python decoder against
  decode ({ update }) {
    const { structs, ds } = Y.decodeUpdate(bin(update))
    const id = (i) => i === null ? null : [i.client, i.clock]
    return {
      structs: structs.map((s) => {
        const kind = s instanceof Y.GC ? 0 : s instanceof Y.Skip ? 10 : s.content.getRef()
        return {
          kind,
          client: s.id.client,
          clock: s.id.clock,
          length: s.length,
          origin: kind === 0 || kind === 10 ? null : id(s.origin),
          right_origin: kind === 0 || kind === 10 ? null : id(s.rightOrigin),
          text: kind === 4 ? s.content.str : null,
          // written out: a root type's name or a type item's id; else null
          parent: kind === 0 || kind === 10 || s.parent === null ? null
            : typeof s.parent === 'string' ? s.parent : id(s.parent)
        }
      }),
      deletes: [...ds.clients].flatMap(([client, items]) => items.map((d) => [client, d.clock, d.len]))
    }
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
